//! `users`: accounts, identified by a lower-cased email.

use chrono::NaiveDateTime;
use diesel::prelude::*;

use crate::db::DbConnection;
use crate::schema::users;

/// A stored user.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = users)]
pub struct User {
    /// UUID v4.
    pub id: String,
    /// Lower-cased, trimmed.
    pub email: String,
    /// argon2id PHC string. Never logged or returned.
    pub password_hash: String,
    /// When the account was made.
    pub created_at: NaiveDateTime,
    /// When an operator disabled it (`hermit-relay users disable`); `None`: active.
    pub disabled_at: Option<NaiveDateTime>,
}

/// A user to insert.
#[derive(Debug, Insertable)]
#[diesel(table_name = users)]
pub struct NewUser<'a> {
    /// UUID v4.
    pub id: &'a str,
    /// Normalised email.
    pub email: &'a str,
    /// argon2id PHC string.
    pub password_hash: &'a str,
    /// Now.
    pub created_at: NaiveDateTime,
}

/// Inserts a user; a duplicate email fails with a unique violation.
pub fn insert(conn: &mut DbConnection, user: &NewUser<'_>) -> QueryResult<()> {
    diesel::insert_into(users::table)
        .values(user)
        .execute(conn)
        .map(drop)
}

/// The user with this (normalised) email.
pub fn find_by_email(conn: &mut DbConnection, email: &str) -> QueryResult<Option<User>> {
    users::table
        .filter(users::email.eq(email))
        .select(User::as_select())
        .first(conn)
        .optional()
}

/// Locks the user's row until the transaction ends (PostgreSQL: a row lock; SQLite: the
/// database write lock), so that transactions of one user that count then insert take
/// turns. Returns whether the user exists.
pub fn lock(conn: &mut DbConnection, id: &str) -> QueryResult<bool> {
    diesel::update(users::table.find(id))
        .set(users::id.eq(users::id))
        .execute(conn)
        .map(|rows| rows > 0)
}

/// The user with this id.
pub fn find(conn: &mut DbConnection, id: &str) -> QueryResult<Option<User>> {
    users::table
        .find(id)
        .select(User::as_select())
        .first(conn)
        .optional()
}

/// The user with this id if it exists and is not disabled: the one check that keeps a
/// disabled or deleted user out (one primary-key read).
pub fn find_active(conn: &mut DbConnection, id: &str) -> QueryResult<Option<User>> {
    Ok(find(conn, id)?.filter(|user| user.disabled_at.is_none()))
}

/// Every user, by email.
pub fn list(conn: &mut DbConnection) -> QueryResult<Vec<User>> {
    users::table
        .order(users::email.asc())
        .select(User::as_select())
        .load(conn)
}

/// Sets or clears `disabled_at`; returns whether the user exists.
pub fn set_disabled(
    conn: &mut DbConnection,
    id: &str,
    at: Option<NaiveDateTime>,
) -> QueryResult<bool> {
    diesel::update(users::table.find(id))
        .set(users::disabled_at.eq(at))
        .execute(conn)
        .map(|rows| rows > 0)
}

/// Replaces the password hash; returns whether the user exists.
pub fn set_password_hash(conn: &mut DbConnection, id: &str, hash: &str) -> QueryResult<bool> {
    diesel::update(users::table.find(id))
        .set(users::password_hash.eq(hash))
        .execute(conn)
        .map(|rows| rows > 0)
}

/// Deletes a user; its machines and refresh tokens go with it (`ON DELETE CASCADE`).
pub fn delete(conn: &mut DbConnection, id: &str) -> QueryResult<bool> {
    diesel::delete(users::table.find(id))
        .execute(conn)
        .map(|rows| rows > 0)
}

/// Of `ids`, those that exist and are not disabled.
pub fn active_among(conn: &mut DbConnection, ids: &[String]) -> QueryResult<Vec<String>> {
    users::table
        .filter(users::id.eq_any(ids).and(users::disabled_at.is_null()))
        .select(users::id)
        .load(conn)
}
