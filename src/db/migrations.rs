//! Migrations: embedded in the binary, one folder per backend.

use diesel::connection::SimpleConnection;
use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};

use super::connection::DbConnection;
use super::fault::{self, DbFault};
use crate::error::ApiError;

/// Migrations for each backend, compiled into the binary.
const SQLITE_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/sqlite");
const POSTGRES_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/postgres");

/// Key of the PostgreSQL advisory lock held while migrating, so replicas starting together
/// do not migrate at once.
const MIGRATION_LOCK_KEY: i64 = 0x6865_726d_6974; // "hermit"

/// Whether a migration of this binary is not applied yet.
pub fn has_pending_migrations(conn: &mut DbConnection) -> Result<bool, ApiError> {
    let pending = match conn {
        DbConnection::Sqlite(conn) => conn.has_pending_migration(SQLITE_MIGRATIONS),
        DbConnection::Postgresql(conn) => conn.has_pending_migration(POSTGRES_MIGRATIONS),
    };
    pending
        .map_err(|err| ApiError::Database(DbFault::from_message(fault::one_line(&err.to_string()))))
}

/// Applies pending migrations of the connection's backend; returns the versions applied.
pub fn run_migrations(
    conn: &mut DbConnection,
) -> Result<Vec<String>, Box<dyn std::error::Error + Send + Sync>> {
    let applied = match conn {
        DbConnection::Sqlite(conn) => conn
            .run_pending_migrations(SQLITE_MIGRATIONS)?
            .iter()
            .map(ToString::to_string)
            .collect(),
        DbConnection::Postgresql(conn) => {
            // A migration may rightly take longer than a request's bounds, and may wait for
            // another replica's lock.
            conn.batch_execute(
                "SET statement_timeout = 0; SET idle_in_transaction_session_timeout = 0",
            )?;
            conn.batch_execute(&format!("SELECT pg_advisory_lock({MIGRATION_LOCK_KEY})"))?;
            let result = conn
                .run_pending_migrations(POSTGRES_MIGRATIONS)
                .map(|versions| versions.iter().map(ToString::to_string).collect());
            conn.batch_execute(&format!("SELECT pg_advisory_unlock({MIGRATION_LOCK_KEY})"))?;
            result?
        }
    };
    Ok(applied)
}
