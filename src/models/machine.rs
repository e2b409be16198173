//! `machines`: the Macs a user registered, each with a token its agent connects with.

use chrono::NaiveDateTime;
use diesel::prelude::*;

use crate::db::DbConnection;
use crate::schema::machines;

/// A stored machine.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = machines)]
pub struct Machine {
    /// UUID v4.
    pub id: String,
    /// Owner.
    pub user_id: String,
    /// 1–64 characters, unique per user.
    pub name: String,
    /// SHA-256 of the token, hex. Never returned.
    pub token_hash: String,
    /// When it was registered.
    pub created_at: NaiveDateTime,
    /// When its agent was last connected.
    pub last_seen: Option<NaiveDateTime>,
}

/// A machine to insert.
#[derive(Debug, Insertable)]
#[diesel(table_name = machines)]
pub struct NewMachine<'a> {
    /// UUID v4.
    pub id: &'a str,
    /// Owner.
    pub user_id: &'a str,
    /// Its name.
    pub name: &'a str,
    /// SHA-256 of the token, hex.
    pub token_hash: &'a str,
    /// Now.
    pub created_at: NaiveDateTime,
}

/// Inserts a machine; a duplicate name for the same user fails with a unique violation.
pub fn insert(conn: &mut DbConnection, machine: &NewMachine<'_>) -> QueryResult<()> {
    diesel::insert_into(machines::table)
        .values(machine)
        .execute(conn)
        .map(drop)
}

/// How many machines the user has.
pub fn count_for_user(conn: &mut DbConnection, user_id: &str) -> QueryResult<i64> {
    machines::table
        .filter(machines::user_id.eq(user_id))
        .count()
        .get_result(conn)
}

/// The user's machines, by name.
pub fn list_for_user(conn: &mut DbConnection, user_id: &str) -> QueryResult<Vec<Machine>> {
    machines::table
        .filter(machines::user_id.eq(user_id))
        .order(machines::name.asc())
        .select(Machine::as_select())
        .load(conn)
}

/// One machine of this user; `None` for a machine that is someone else's or does not exist.
pub fn find_for_user(
    conn: &mut DbConnection,
    user_id: &str,
    id: &str,
) -> QueryResult<Option<Machine>> {
    machines::table
        .filter(machines::id.eq(id).and(machines::user_id.eq(user_id)))
        .select(Machine::as_select())
        .first(conn)
        .optional()
}

/// The machine whose token hashes to `token_hash` (an index lookup, no scan).
pub fn find_by_token_hash(
    conn: &mut DbConnection,
    token_hash: &str,
) -> QueryResult<Option<Machine>> {
    machines::table
        .filter(machines::token_hash.eq(token_hash))
        .select(Machine::as_select())
        .first(conn)
        .optional()
}

/// Deletes one machine of this user; returns whether it existed.
pub fn delete_for_user(conn: &mut DbConnection, user_id: &str, id: &str) -> QueryResult<bool> {
    diesel::delete(machines::table.filter(machines::id.eq(id).and(machines::user_id.eq(user_id))))
        .execute(conn)
        .map(|rows| rows > 0)
}

/// Records that the machine's agent was connected at `at`.
pub fn touch(conn: &mut DbConnection, id: &str, at: NaiveDateTime) -> QueryResult<()> {
    diesel::update(machines::table.find(id))
        .set(machines::last_seen.eq(at))
        .execute(conn)
        .map(drop)
}

/// Every machine, or one user's, by owner and name.
pub fn list(conn: &mut DbConnection, user_id: Option<&str>) -> QueryResult<Vec<Machine>> {
    let mut query = machines::table
        .order((machines::user_id.asc(), machines::name.asc()))
        .select(Machine::as_select())
        .into_boxed();
    if let Some(user_id) = user_id {
        query = query.filter(machines::user_id.eq(user_id.to_owned()));
    }
    query.load(conn)
}

/// One machine by id.
pub fn find(conn: &mut DbConnection, id: &str) -> QueryResult<Option<Machine>> {
    machines::table
        .find(id)
        .select(Machine::as_select())
        .first(conn)
        .optional()
}

/// Deletes a machine whoever owns it (the operator's revoke); returns whether it existed.
pub fn delete(conn: &mut DbConnection, id: &str) -> QueryResult<bool> {
    diesel::delete(machines::table.find(id))
        .execute(conn)
        .map(|rows| rows > 0)
}

/// Of `ids`, those that still exist.
pub fn existing_among(conn: &mut DbConnection, ids: &[String]) -> QueryResult<Vec<String>> {
    machines::table
        .filter(machines::id.eq_any(ids))
        .select(machines::id)
        .load(conn)
}
