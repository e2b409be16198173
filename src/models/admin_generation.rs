//! `admin_generation`: the marker admin commands change, and the running relay polls, so
//! it learns within `admin.poll_interval_ms` that users or machines changed.

use chrono::NaiveDateTime;
use diesel::prelude::*;

use crate::db::DbConnection;
use crate::schema::admin_generation;

/// The row for changes to users and machines (the migration creates it).
pub const ACCOUNTS: &str = "accounts";

/// The current generation of `ACCOUNTS` (one primary-key read).
pub fn current(conn: &mut DbConnection) -> QueryResult<Option<String>> {
    admin_generation::table
        .find(ACCOUNTS)
        .select(admin_generation::generation)
        .first(conn)
        .optional()
}

/// Marks a change: a fresh random generation. Call it in the transaction that makes the
/// change, so a relay that sees the new generation also sees the change.
pub fn bump(conn: &mut DbConnection, at: NaiveDateTime) -> QueryResult<()> {
    diesel::update(admin_generation::table.find(ACCOUNTS))
        .set((
            admin_generation::generation.eq(uuid::Uuid::new_v4().to_string()),
            admin_generation::changed_at.eq(at),
        ))
        .execute(conn)
        .map(drop)
}
