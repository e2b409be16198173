//! `DbFault`: what went wrong with the database, told apart so that an outage answers 503
//! with a clear text and only a real bug answers 500.
//!
//! diesel reports most failures as `DatabaseErrorKind::Unknown` with the backend's message
//! (SQLite's `sqlite3_errstr` texts, PostgreSQL's primary message), so beyond the kinds
//! diesel names, the class is read from those messages; they are stable across versions.

use std::time::Duration;

use diesel::result::{DatabaseErrorKind, Error};

/// A failed database round trip, by what the operator and the client should hear.
///
/// `Display` is the log line (with the backend's reason, one line); [`DbFault::client_text`]
/// is what a client is told, without any database detail.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DbFault {
    /// No connection could be made, or the one in use broke.
    #[error("{0}")]
    Unreachable(String),
    /// Nothing came back before the deadline (a partition looks like this).
    #[error("the database did not answer within {} s", .0.as_secs_f32())]
    NoAnswer(Duration),
    /// The disk (or SQLite's `max_page_count`) is full: writes that need room fail.
    #[error("the database is full: {0}")]
    Full(String),
    /// The database refuses writes (a read-only file, a standby, a read-only transaction).
    #[error("the database is read-only: {0}")]
    ReadOnly(String),
    /// Locked, or a statement ran past its timeout: worth retrying soon.
    #[error("the database is busy: {0}")]
    Busy(String),
    /// The transaction lost a deadlock or a serialization check and was rolled back at
    /// once: worth retrying now (see [`DbFault::is_conflict`]).
    #[error("a database transaction conflicted with another: {0}")]
    Conflict(String),
    /// The schema is older than this relay (`run_migrations = false` and nobody migrated).
    #[error("the database schema is not up to date: {0}")]
    SchemaOutdated(String),
    /// Anything else: a bug in a query or a broken invariant. The only 500.
    #[error("database error: {0}")]
    Bug(String),
}

impl DbFault {
    /// What a client is told (the `error` of a 503, or a WebSocket's `UNAVAILABLE`).
    pub fn client_text(&self) -> &'static str {
        match self {
            Self::Unreachable(_) => "the database is unavailable; try again shortly",
            Self::NoAnswer(_) => "the database did not answer in time; try again shortly",
            Self::Full(_) => "the database is full; try again later",
            Self::ReadOnly(_) => "the database is read-only; try again later",
            Self::Busy(_) | Self::Conflict(_) => "the database is busy; try again shortly",
            Self::SchemaOutdated(_) => "the database needs migrations (hermit-relay migrate)",
            Self::Bug(_) => "Internal server error",
        }
    }

    /// A bug (500) rather than an outage (503).
    pub fn is_bug(&self) -> bool {
        matches!(self, Self::Bug(_))
    }

    /// The database cannot be reached at all: requests fail fast until a check succeeds.
    pub fn is_outage(&self) -> bool {
        matches!(self, Self::Unreachable(_) | Self::NoAnswer(_))
    }

    /// The relay cannot do its work (an outage, or writes failing): `/ready` answers 503
    /// and the database counts as down until a check succeeds. Busy is contention, not this.
    pub fn makes_unready(&self) -> bool {
        matches!(
            self,
            Self::Unreachable(_)
                | Self::NoAnswer(_)
                | Self::Full(_)
                | Self::ReadOnly(_)
                | Self::SchemaOutdated(_)
        )
    }

    /// The transaction was rolled back at once for a conflict with another, so running it
    /// again right away is the remedy (unlike busy, which already waited).
    pub fn is_conflict(&self) -> bool {
        matches!(self, Self::Conflict(_))
    }

    /// The connection it happened on must not be reused.
    pub fn breaks_connection(&self) -> bool {
        self.is_outage()
    }

    /// Classifies a diesel error.
    pub fn classify(err: &Error) -> Self {
        match err {
            Error::DatabaseError(kind, info) => {
                let message = one_line(info.message());
                match kind {
                    DatabaseErrorKind::ClosedConnection
                    | DatabaseErrorKind::UnableToSendCommand => Self::Unreachable(message),
                    DatabaseErrorKind::ReadOnlyTransaction => Self::ReadOnly(message),
                    DatabaseErrorKind::SerializationFailure => Self::Conflict(message),
                    _ => Self::from_message(message),
                }
            }
            Error::RollbackErrorOnCommit { commit_error, .. } => Self::classify(commit_error),
            Error::BrokenTransactionManager => {
                Self::Unreachable("the connection broke inside a transaction".into())
            }
            other => Self::Bug(one_line(&other.to_string())),
        }
    }

    /// Classifies by the backend's message alone (connection errors, `DatabaseErrorKind::Unknown`).
    pub fn from_message(message: String) -> Self {
        let lower = message.to_lowercase();
        let has = |needles: &[&str]| needles.iter().any(|n| lower.contains(n));
        if has(&[
            "database or disk is full",
            "no space left on device",
            "could not extend file",
            "disk quota exceeded",
        ]) {
            Self::Full(message)
        } else if has(&["readonly database", "read-only", "read only"]) {
            Self::ReadOnly(message)
        } else if has(&["deadlock detected", "could not serialize access"]) {
            Self::Conflict(message)
        } else if has(&[
            // SQLite rolled the transaction back by itself (a full disk, an I/O error, a
            // lock), so the ROLLBACK after it fails; diesel then reports only that.
            "no transaction is active",
            "database is locked",
            "database table is locked",
            "statement timeout",
            "lock timeout",
            "could not obtain lock",
            "canceling statement",
            "too many connections",
            "too many clients",
        ]) {
            Self::Busy(message)
        } else if has(&["no such table", "no such column", "does not exist"]) {
            Self::SchemaOutdated(message)
        } else if has(&[
            "server closed the connection",
            "no connection to the server",
            "could not receive data",
            "could not send data",
            "terminating connection",
            "connection to server",
            "the database system is",
            "connection refused",
            "connection reset",
            "broken pipe",
            "timeout expired",
            "ssl syscall",
            "eof detected",
            "disk i/o error",
            "unable to open database file",
        ]) {
            Self::Unreachable(message)
        } else {
            Self::Bug(message)
        }
    }
}

/// The backend's message on one line: libpq adds hints on indented lines ("Is the server
/// running…?") that turn one failure into three log lines; the first line says what failed
/// and, after "failed: ", why.
pub fn one_line(message: &str) -> String {
    let first = message
        .lines()
        .map(str::trim)
        .find(|line| !line.is_empty())
        .unwrap_or("no reason given");
    first.to_owned()
}

/// Just the reason of a libpq connection error: `connection to server at "h", port p
/// failed: Connection refused` → `Connection refused`.
pub fn reason(message: &str) -> String {
    let line = one_line(message);
    match line.rsplit_once("failed: ") {
        Some((_, why)) if !why.trim().is_empty() => why.trim().to_owned(),
        _ => line,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unknown(message: &str) -> Error {
        Error::DatabaseError(DatabaseErrorKind::Unknown, Box::new(message.to_owned()))
    }

    #[test]
    fn sqlite_full_readonly_locked_and_io_errors_are_outages_not_bugs() {
        for (message, expected) in [
            ("database or disk is full", "full"),
            ("attempt to write a readonly database", "read-only"),
            ("database is locked", "busy"),
            ("cannot rollback - no transaction is active", "busy"),
            ("disk I/O error", "unreachable"),
            ("no such table: users", "schema"),
        ] {
            let fault = DbFault::classify(&unknown(message));
            assert!(!fault.is_bug(), "{message}: {fault:?}");
            let label = match fault {
                DbFault::Full(_) => "full",
                DbFault::ReadOnly(_) => "read-only",
                DbFault::Busy(_) => "busy",
                DbFault::Unreachable(_) => "unreachable",
                DbFault::SchemaOutdated(_) => "schema",
                _ => "other",
            };
            assert_eq!(label, expected, "{message}");
        }
    }

    #[test]
    fn postgres_connection_timeouts_and_disk_errors_are_outages_not_bugs() {
        assert!(DbFault::classify(&Error::DatabaseError(
            DatabaseErrorKind::ClosedConnection,
            Box::new("server closed the connection unexpectedly".to_owned())
        ))
        .is_outage());
        assert!(matches!(
            DbFault::classify(&unknown("canceling statement due to statement timeout")),
            DbFault::Busy(_)
        ));
        assert!(DbFault::classify(&unknown("deadlock detected")).is_conflict());
        assert!(matches!(
            DbFault::classify(&unknown(
                "could not extend file \"base/1/2\": No space left on device"
            )),
            DbFault::Full(_)
        ));
        assert!(matches!(
            DbFault::classify(&Error::DatabaseError(
                DatabaseErrorKind::ReadOnlyTransaction,
                Box::new("cannot execute UPDATE in a read-only transaction".to_owned())
            )),
            DbFault::ReadOnly(_)
        ));
    }

    #[test]
    fn constraint_violations_and_unknown_messages_are_bugs() {
        assert!(DbFault::classify(&Error::DatabaseError(
            DatabaseErrorKind::UniqueViolation,
            Box::new("UNIQUE constraint failed: users.email".to_owned())
        ))
        .is_bug());
        assert!(DbFault::classify(&unknown("syntax error near SELEC")).is_bug());
        assert!(DbFault::classify(&Error::NotFound).is_bug());
    }

    #[test]
    fn multi_line_libpq_messages_become_one_line_and_a_reason() {
        let message =
            "connection to server at \"127.0.0.1\", port 5499 failed: Connection refused\n\
                       \tIs the server running on that host and accepting TCP/IP connections?\n";
        assert_eq!(
            one_line(message),
            "connection to server at \"127.0.0.1\", port 5499 failed: Connection refused"
        );
        assert_eq!(reason(message), "Connection refused");
        assert_eq!(reason("timeout expired\n"), "timeout expired");
        assert_eq!(reason(""), "no reason given");
    }
}
