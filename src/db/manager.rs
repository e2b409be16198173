//! `Manager`: the r2d2 manager that opens connections of the backend named by the URL,
//! each bounded in time, and reports failures quietly to the database's [`Health`].
//!
//! Bounds set on every PostgreSQL connection (a key already in the URL wins):
//! - libpq `connect_timeout` (libpq waits at least 2 s) covers TCP connect, TLS and start-up;
//! - TCP keepalives and `tcp_user_timeout`: a dead peer is noticed by the kernel, so a
//!   thread blocked on a lost link gets an error instead of waiting ~15 minutes;
//! - server-side `statement_timeout` and `idle_in_transaction_session_timeout`, so work the
//!   relay has given up on does not keep running or holding locks.
//!
//! On SQLite, `busy_timeout` (slightly below the deadline, so a locked database answers
//! "busy" before the relay gives up) and, if configured, `max_page_count`.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use diesel::connection::SimpleConnection;
use diesel::r2d2::{HandleError, ManageConnection, R2D2Connection};
use diesel::sql_types::BigInt;
use diesel::{Connection, PgConnection, QueryableByName, RunQueryDsl, SqliteConnection};

use super::connection::DbConnection;
use super::fault::{self, DbFault};
use super::health::Health;
use crate::config::DatabaseSettings;

/// SQLite's page size for new databases; only used to turn `sqlite_max_bytes` into pages
/// when the file does not say otherwise.
const SQLITE_DEFAULT_PAGE_BYTES: i64 = 4096;

/// Which backend a URL names.
#[derive(Debug, Clone)]
enum Target {
    /// A file path or a `file:` URI.
    Sqlite(String),
    /// The libpq URL with our client-side timeouts added.
    Postgres(String),
}

/// Opens connections of the backend named by the URL.
#[derive(Debug)]
pub struct Manager {
    target: Target,
    /// What log lines and start-up errors call the database: `HOST:PORT` or the file.
    at: String,
    timeout: Duration,
    sqlite_max_bytes: u64,
}

/// A pooled connection and whether it must be thrown away rather than reused.
pub struct Pooled {
    /// The connection.
    pub conn: DbConnection,
    /// Set when a round trip on it failed in a way that leaves it unusable, or finished
    /// after the caller gave up (it may be mid-transaction on a link that came back).
    pub broken: bool,
}

/// A connection could not be opened, or a pooled one failed its check.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// Opening or setting up a connection failed.
    #[error("cannot connect to the database at {at}: {reason}")]
    Connect {
        /// `HOST:PORT` or the SQLite file.
        at: String,
        /// Why, on one line (libpq's own words, e.g. `Connection refused`).
        reason: String,
    },
    /// A pooled connection failed the check made before lending it (it is replaced).
    #[error("a pooled database connection was dead: {0}")]
    Stale(String),
    /// The URL is not one we support, or its directory cannot be made.
    #[error("{0}")]
    Url(String),
}

impl Manager {
    /// A manager for `settings.url` (`sqlite://PATH` or `postgres://…`). Creates the SQLite
    /// file's directory if needed.
    pub fn new(settings: &DatabaseSettings) -> Result<Self, DbError> {
        let url = settings.url.as_str();
        let (target, at) = if let Some(path) = url.strip_prefix("sqlite://") {
            // A `file:` URI (e.g. `?mode=ro`) names its own path; only plain paths get a
            // directory made for them.
            if !path.starts_with("file:") {
                if let Some(dir) = Path::new(path)
                    .parent()
                    .filter(|d| !d.as_os_str().is_empty())
                {
                    std::fs::create_dir_all(dir).map_err(|err| {
                        DbError::Url(format!("cannot create {}: {err}", dir.display()))
                    })?;
                }
            }
            (Target::Sqlite(path.to_owned()), path.to_owned())
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let url_with_bounds = with_client_timeouts(url, settings.connect_timeout_secs);
            (Target::Postgres(url_with_bounds), postgres_address(url))
        } else {
            return Err(DbError::Url(
                "database.url must be sqlite://PATH or postgres://…".into(),
            ));
        };
        Ok(Self {
            target,
            at,
            timeout: settings.connect_timeout(),
            sqlite_max_bytes: settings.sqlite_max_bytes,
        })
    }

    /// `HOST:PORT` of a PostgreSQL database, or the SQLite file.
    pub fn address(&self) -> &str {
        &self.at
    }

    /// Opens one connection, set up with its bounds.
    pub fn open(&self) -> Result<DbConnection, DbError> {
        let failed = |reason: String| DbError::Connect {
            at: self.at.clone(),
            reason,
        };
        let millis = self.timeout.as_millis();
        match &self.target {
            Target::Sqlite(path) => {
                let mut conn = SqliteConnection::establish(path)
                    .map_err(|err| failed(fault::reason(&err.to_string())))?;
                let busy_ms = millis * 4 / 5;
                // The busy timeout first: the pragmas after it may wait for a lock too (a
                // relay that is still stopping, or another process, writing).
                conn.batch_execute(&format!(
                    "PRAGMA busy_timeout = {busy_ms}; PRAGMA journal_mode = WAL; \
                     PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;"
                ))
                .map_err(|err| failed(fault::one_line(&err.to_string())))?;
                if self.sqlite_max_bytes > 0 {
                    let page = sqlite_pragma(&mut conn, "page_size")
                        .unwrap_or(SQLITE_DEFAULT_PAGE_BYTES)
                        .max(512);
                    let pages = i64::try_from(self.sqlite_max_bytes).unwrap_or(i64::MAX) / page;
                    conn.batch_execute(&format!("PRAGMA max_page_count = {};", pages.max(1)))
                        .map_err(|err| failed(fault::one_line(&err.to_string())))?;
                }
                Ok(DbConnection::Sqlite(conn))
            }
            Target::Postgres(url) => {
                let mut conn = PgConnection::establish(url)
                    .map_err(|err| failed(fault::reason(&err.to_string())))?;
                // SET rather than the `options` start-up parameter, which connection
                // poolers such as PgBouncer refuse.
                conn.batch_execute(&format!(
                    "SET statement_timeout = {millis}; \
                     SET idle_in_transaction_session_timeout = {millis};"
                ))
                .map_err(|err| failed(fault::one_line(&err.to_string())))?;
                Ok(DbConnection::Postgresql(conn))
            }
        }
    }
}

impl ManageConnection for Manager {
    type Connection = Pooled;
    type Error = DbError;

    fn connect(&self) -> Result<Pooled, DbError> {
        Ok(Pooled {
            conn: self.open()?,
            broken: false,
        })
    }

    fn is_valid(&self, pooled: &mut Pooled) -> Result<(), DbError> {
        pooled
            .conn
            .batch_execute("SELECT 1")
            .map_err(|err| DbError::Stale(fault::one_line(&err.to_string())))
    }

    fn has_broken(&self, pooled: &mut Pooled) -> bool {
        pooled.broken || pooled.conn.is_broken()
    }
}

/// r2d2's error handler: r2d2 logs every failed connection attempt (several multi-line
/// lines per request during an outage); ours tells [`Health`], which logs state changes.
#[derive(Debug)]
pub struct QuietErrors(pub Arc<Health>);

impl HandleError<DbError> for QuietErrors {
    fn handle_error(&self, err: DbError) {
        match err {
            // A pooled connection that died while idle (a restart, a cut): r2d2 replaces it.
            DbError::Stale(why) => tracing::debug!(%why, "replaced a dead pooled connection"),
            other => self.0.notice(&DbFault::Unreachable(other.to_string())),
        }
    }
}

/// `url` with libpq's client-side bounds added, unless the URL sets them itself.
pub fn with_client_timeouts(url: &str, timeout_secs: u64) -> String {
    let secs = timeout_secs.to_string();
    let bounds = [
        ("connect_timeout", secs.clone()),
        ("keepalives", "1".to_owned()),
        ("keepalives_idle", secs.clone()),
        ("keepalives_interval", "1".to_owned()),
        ("keepalives_count", secs),
        ("tcp_user_timeout", (timeout_secs * 1000).to_string()),
    ];
    let query = url.split_once('?').map_or("", |(_, query)| query);
    let present: Vec<&str> = query
        .split('&')
        .filter_map(|pair| pair.split('=').next())
        .collect();
    let mut out = url.to_owned();
    for (key, value) in bounds {
        if present.contains(&key) {
            continue;
        }
        if !out.contains('?') {
            out.push('?');
        } else if !out.ends_with('?') && !out.ends_with('&') {
            out.push('&');
        }
        out.push_str(key);
        out.push('=');
        out.push_str(&value);
    }
    out
}

/// `HOST:PORT` of a PostgreSQL URL, for messages (never the password).
pub fn postgres_address(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let authority = &rest[..end];
    let hosts = authority
        .rsplit_once('@')
        .map_or(authority, |(_, hosts)| hosts);
    let hosts = if hosts.is_empty() {
        // libpq's default: the `host` parameter, else the local socket.
        rest.split_once('?')
            .and_then(|(_, query)| query.split('&').find_map(|pair| pair.strip_prefix("host=")))
            .unwrap_or("localhost")
    } else {
        hosts
    };
    let has_port = match hosts.rfind(']') {
        Some(bracket) => hosts[bracket..].contains(':'),
        None => hosts.contains(':'),
    };
    if has_port || hosts.contains(',') || hosts.starts_with('/') {
        hosts.to_owned()
    } else {
        format!("{hosts}:5432")
    }
}

/// One integer `PRAGMA` of a SQLite connection.
pub fn sqlite_pragma(conn: &mut SqliteConnection, name: &str) -> diesel::QueryResult<i64> {
    #[derive(QueryableByName)]
    struct Value {
        #[diesel(sql_type = BigInt)]
        value: i64,
    }
    diesel::sql_query(format!("SELECT {name} AS value FROM pragma_{name}()"))
        .get_result::<Value>(conn)
        .map(|row| row.value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_side_bounds_are_added_to_postgres_urls_without_overriding_the_operator() {
        assert_eq!(
            with_client_timeouts("postgres://u@db:5432/hermit", 5),
            "postgres://u@db:5432/hermit?connect_timeout=5&keepalives=1&keepalives_idle=5\
             &keepalives_interval=1&keepalives_count=5&tcp_user_timeout=5000"
        );
        let url = with_client_timeouts("postgres://u@db/h?sslmode=require&connect_timeout=9", 2);
        assert!(url.starts_with("postgres://u@db/h?sslmode=require&connect_timeout=9&keepalives=1"));
        assert_eq!(url.matches("connect_timeout").count(), 1, "{url}");
    }

    #[test]
    fn messages_name_the_postgres_host_and_port_but_never_the_password() {
        assert_eq!(
            postgres_address("postgres://relay:s3cret@db.internal:6432/hermit"),
            "db.internal:6432"
        );
        assert_eq!(postgres_address("postgres://relay@db/hermit"), "db:5432");
        assert_eq!(postgres_address("postgresql://[::1]:5433/x"), "[::1]:5433");
        assert_eq!(postgres_address("postgres://[::1]/x"), "[::1]:5432");
        assert_eq!(postgres_address("postgres:///x"), "localhost:5432");
        assert_eq!(
            postgres_address("postgres:///x?host=/var/run/postgresql"),
            "/var/run/postgresql"
        );
    }
}
