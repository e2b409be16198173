//! The readiness check: what `/ready` and the watcher ask of the database.

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};

use diesel::{RunQueryDsl, SqliteConnection};

use super::connection::DbConnection;
use super::fault::DbFault;
use super::manager::sqlite_pragma;
use super::migrations::has_pending_migrations;
use crate::error::ApiError;

/// Pages a SQLite database must still be able to grow by to count as writable: a register
/// inserts into two tables and five indexes, each of which may split a page.
const SQLITE_MIN_FREE_PAGES: i64 = 16;

/// The readiness check on one connection: see `Pool::readiness`.
pub fn check(conn: &mut DbConnection, migrated: &AtomicBool) -> Result<(), ApiError> {
    if !migrated.load(Relaxed) {
        if has_pending_migrations(conn)? {
            return Err(ApiError::Database(DbFault::SchemaOutdated(
                "migrations are pending".into(),
            )));
        }
        migrated.store(true, Relaxed);
    }
    // A committed write: a rolled-back one never reaches the disk, so it cannot tell a
    // full disk (or a read-only file or standby) from a healthy one.
    let rows =
        diesel::sql_query("UPDATE relay_health SET checked_at = CURRENT_TIMESTAMP WHERE id = 1")
            .execute(conn)?;
    if rows == 0 {
        diesel::sql_query(
            "INSERT INTO relay_health (id, checked_at) VALUES (1, CURRENT_TIMESTAMP)",
        )
        .execute(conn)?;
    }
    if let DbConnection::Sqlite(conn) = conn {
        sqlite_has_room(conn)?;
    }
    Ok(())
}

/// Whether SQLite can still grow by [`SQLITE_MIN_FREE_PAGES`]: the update above rewrites a
/// page it already has, so it passes at `max_page_count` while every insert would fail.
fn sqlite_has_room(conn: &mut SqliteConnection) -> Result<(), ApiError> {
    let pages = sqlite_pragma(conn, "page_count")?;
    let free = sqlite_pragma(conn, "freelist_count")?;
    let max = sqlite_pragma(conn, "max_page_count")?;
    if max - (pages - free) < SQLITE_MIN_FREE_PAGES {
        return Err(ApiError::Database(DbFault::Full(format!(
            "{} of at most {max} pages in use",
            pages - free
        ))));
    }
    Ok(())
}
