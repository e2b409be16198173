//! The database: one binary for SQLite and PostgreSQL, chosen at runtime by the URL.
//!
//! diesel's `MultiConnection` derive gives one connection type over both backends; our
//! own r2d2 manager picks the backend from the URL scheme and reports real connection
//! errors (the derived `establish` tries each backend in turn and hides why one failed).

use std::path::Path;
use std::time::Duration;

use diesel::connection::SimpleConnection;
use diesel::r2d2::{self, ManageConnection};
use diesel::{Connection, ConnectionError, PgConnection, SqliteConnection};
use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};

use crate::error::ApiError;

/// Migrations for each backend, compiled into the binary.
const SQLITE_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/sqlite");
const POSTGRES_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/postgres");

/// How long SQLite waits on a locked database before reporting busy.
const SQLITE_BUSY_TIMEOUT_MS: u32 = 5_000;

/// Key of the PostgreSQL advisory lock held while migrating, so replicas starting together
/// do not migrate at once.
const MIGRATION_LOCK_KEY: i64 = 0x6865_726d_6974; // "hermit"

pub use multi::DbConnection;

// The derive generates a public backend type and methods that we do not document.
#[allow(missing_docs)]
mod multi {
    use diesel::{PgConnection, SqliteConnection};

    /// A connection to either backend.
    #[derive(diesel::MultiConnection)]
    pub enum DbConnection {
        /// `postgres://…`
        Postgresql(PgConnection),
        /// `sqlite://PATH`
        Sqlite(SqliteConnection),
    }
}

/// The pool every request borrows from.
pub type Pool = r2d2::Pool<Manager>;

/// Which backend a URL names.
#[derive(Debug, Clone)]
enum Target {
    Sqlite(String),
    Postgres(String),
}

/// An r2d2 manager that opens connections of the backend named by the URL.
#[derive(Debug)]
pub struct Manager {
    target: Target,
}

/// A connection could not be opened or set up.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// Opening failed.
    #[error("cannot connect to the database: {0}")]
    Connect(#[from] ConnectionError),
    /// Opened, but a setup statement failed.
    #[error("database setup failed: {0}")]
    Setup(#[from] diesel::result::Error),
    /// The URL is not one we support, or its directory cannot be made.
    #[error("{0}")]
    Url(String),
}

impl Manager {
    /// A manager for `url` (`sqlite://PATH` or `postgres://…`). Creates the SQLite file's
    /// directory if needed.
    pub fn new(url: &str) -> Result<Self, DbError> {
        let target = if let Some(path) = url.strip_prefix("sqlite://") {
            if let Some(dir) = Path::new(path)
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
            {
                std::fs::create_dir_all(dir).map_err(|err| {
                    DbError::Url(format!("cannot create {}: {err}", dir.display()))
                })?;
            }
            Target::Sqlite(path.to_owned())
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Target::Postgres(url.to_owned())
        } else {
            return Err(DbError::Url(
                "database.url must be sqlite://PATH or postgres://…".into(),
            ));
        };
        Ok(Self { target })
    }
}

impl ManageConnection for Manager {
    type Connection = DbConnection;
    type Error = DbError;

    fn connect(&self) -> Result<DbConnection, DbError> {
        match &self.target {
            Target::Sqlite(path) => {
                let mut conn = SqliteConnection::establish(path)?;
                conn.batch_execute(&format!(
                    "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; \
                     PRAGMA foreign_keys = ON; PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS};"
                ))?;
                Ok(DbConnection::Sqlite(conn))
            }
            Target::Postgres(url) => Ok(DbConnection::Postgresql(PgConnection::establish(url)?)),
        }
    }

    fn is_valid(&self, conn: &mut DbConnection) -> Result<(), DbError> {
        Ok(conn.batch_execute("SELECT 1")?)
    }

    fn has_broken(&self, _: &mut DbConnection) -> bool {
        false
    }
}

/// Builds the pool without connecting: a database that is down at start makes `/ready`
/// answer 503 rather than the process exit, unless migrations must run first.
pub fn pool(url: &str, size: u32, timeout: Duration) -> Result<Pool, DbError> {
    Ok(r2d2::Pool::builder()
        .max_size(size)
        .min_idle(Some(0))
        .connection_timeout(timeout)
        .test_on_check_out(true)
        .build_unchecked(Manager::new(url)?))
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

/// Runs blocking database work off the async threads, with a pooled connection.
pub async fn run<T, F>(pool: &Pool, work: F) -> Result<T, ApiError>
where
    F: FnOnce(&mut DbConnection) -> Result<T, ApiError> + Send + 'static,
    T: Send + 'static,
{
    let pool = pool.clone();
    actix_web::web::block(move || {
        let started = std::time::Instant::now();
        let mut conn = pool.get().map_err(|err| {
            tracing::warn!(%err, "no database connection");
            ApiError::Unavailable("the database is unavailable")
        })?;
        let result = work(&mut conn);
        crate::metrics::METRICS.db_time(started.elapsed());
        result
    })
    .await
    .map_err(|_| ApiError::internal("database task was cancelled"))?
}
