//! `DbConnection`: one connection type over SQLite and PostgreSQL, chosen at runtime.

// The derive generates a public backend type and methods that we do not document.
#![allow(missing_docs)]

use diesel::{PgConnection, SqliteConnection};

/// A connection to either backend.
#[derive(diesel::MultiConnection)]
pub enum DbConnection {
    /// `postgres://…`
    Postgresql(PgConnection),
    /// `sqlite://PATH`
    Sqlite(SqliteConnection),
}
