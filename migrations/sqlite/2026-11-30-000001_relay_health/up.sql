-- One row the relay rewrites to prove that a write commits: its readiness check (/ready).
-- A rolled-back write never reaches the disk, so only a committed one can tell a full disk,
-- a read-only file or a standby from a healthy database.
CREATE TABLE relay_health (
    id INTEGER PRIMARY KEY NOT NULL,
    checked_at TIMESTAMP NOT NULL
);

INSERT INTO relay_health (id, checked_at) VALUES (1, CURRENT_TIMESTAMP);
