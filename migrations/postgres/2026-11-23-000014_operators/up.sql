-- Operators (issue 14): users an operator disabled, and the marker the running relay polls
-- to learn that an admin command changed users or machines.

-- Set by `hermit-relay users disable`; a disabled user cannot sign in, refresh, call the
-- API or keep a socket open. NULL: active.
ALTER TABLE users ADD COLUMN disabled_at TIMESTAMP;

-- One row per kind of change (only 'accounts' today). Every admin command that disables,
-- deletes or revokes writes a fresh random `generation` in the same transaction; the relay
-- reads this one row every admin.poll_interval_ms and, when it differs from the last one
-- it saw, checks its live users and machines against the database.
CREATE TABLE admin_generation (
    id TEXT PRIMARY KEY NOT NULL,
    generation TEXT NOT NULL,
    changed_at TIMESTAMP NOT NULL
);

INSERT INTO admin_generation (id, generation, changed_at)
VALUES ('accounts', 'initial', CURRENT_TIMESTAMP);
