//! `refresh_tokens`: opaque, rotated on use, stored only as hashes.
//!
//! Each login starts a family; every refresh spends one token and adds the next to the
//! same family. Presenting a spent token again means it was stolen (or replayed), so the
//! whole family is revoked and its holder must log in again — unless it is a retry within
//! the grace (see `accounts::refresh`).

use chrono::NaiveDateTime;
use diesel::prelude::*;

use crate::db::DbConnection;
use crate::schema::refresh_tokens;

/// A stored refresh token.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = refresh_tokens)]
pub struct RefreshToken {
    /// UUID v4.
    pub id: String,
    /// Owner.
    pub user_id: String,
    /// The login it descends from.
    pub family_id: String,
    /// SHA-256 of the token, hex.
    pub token_hash: String,
    /// Issued at.
    pub created_at: NaiveDateTime,
    /// Not valid after.
    pub expires_at: NaiveDateTime,
    /// Set when it was exchanged for the next one.
    pub spent_at: Option<NaiveDateTime>,
    /// Set when its family was revoked (logout or reuse).
    pub revoked_at: Option<NaiveDateTime>,
}

/// A refresh token to insert.
#[derive(Debug, Insertable)]
#[diesel(table_name = refresh_tokens)]
pub struct NewRefreshToken<'a> {
    /// UUID v4.
    pub id: &'a str,
    /// Owner.
    pub user_id: &'a str,
    /// Its family.
    pub family_id: &'a str,
    /// SHA-256 of the token, hex.
    pub token_hash: &'a str,
    /// Now.
    pub created_at: NaiveDateTime,
    /// Now + ttl.
    pub expires_at: NaiveDateTime,
}

/// Inserts a token.
pub fn insert(conn: &mut DbConnection, token: &NewRefreshToken<'_>) -> QueryResult<()> {
    diesel::insert_into(refresh_tokens::table)
        .values(token)
        .execute(conn)
        .map(drop)
}

/// The token with this hash.
pub fn find_by_hash(conn: &mut DbConnection, hash: &str) -> QueryResult<Option<RefreshToken>> {
    refresh_tokens::table
        .filter(refresh_tokens::token_hash.eq(hash))
        .select(RefreshToken::as_select())
        .first(conn)
        .optional()
}

/// Spends the token with this hash if it can be spent now (not spent, revoked or expired),
/// in one conditional write: of any number of concurrent calls, exactly one gets `true`.
pub fn spend(conn: &mut DbConnection, hash: &str, at: NaiveDateTime) -> QueryResult<bool> {
    diesel::update(
        refresh_tokens::table.filter(
            refresh_tokens::token_hash
                .eq(hash)
                .and(refresh_tokens::spent_at.is_null())
                .and(refresh_tokens::revoked_at.is_null())
                .and(refresh_tokens::expires_at.gt(at)),
        ),
    )
    .set(refresh_tokens::spent_at.eq(at))
    .execute(conn)
    .map(|rows| rows == 1)
}

/// Revokes the family of the token `first`, starting with that token: every request about
/// a token locks that token before any other of its family (spending it does too), so on
/// PostgreSQL concurrent requests about one token queue on it rather than each locking the
/// rest of the family in its own order and deadlocking.
pub fn revoke_family_of(
    conn: &mut DbConnection,
    first: &RefreshToken,
    at: NaiveDateTime,
) -> QueryResult<()> {
    diesel::update(
        refresh_tokens::table.filter(
            refresh_tokens::id
                .eq(&first.id)
                .and(refresh_tokens::revoked_at.is_null()),
        ),
    )
    .set(refresh_tokens::revoked_at.eq(at))
    .execute(conn)?;
    revoke_family(conn, &first.family_id, at)
}

/// Revokes every token of a family.
pub fn revoke_family(
    conn: &mut DbConnection,
    family_id: &str,
    at: NaiveDateTime,
) -> QueryResult<()> {
    diesel::update(
        refresh_tokens::table.filter(
            refresh_tokens::family_id
                .eq(family_id)
                .and(refresh_tokens::revoked_at.is_null()),
        ),
    )
    .set(refresh_tokens::revoked_at.eq(at))
    .execute(conn)
    .map(drop)
}

/// Deletes tokens that can never be used again: expired before `now`, or revoked
/// (housekeeping). Spent tokens stay until they expire, to recognise their reuse.
pub fn delete_dead(conn: &mut DbConnection, now: NaiveDateTime) -> QueryResult<usize> {
    diesel::delete(
        refresh_tokens::table.filter(
            refresh_tokens::expires_at
                .lt(now)
                .or(refresh_tokens::revoked_at.is_not_null()),
        ),
    )
    .execute(conn)
}

/// Revokes every live refresh token of a user (signs it out everywhere once its access
/// tokens expire); returns how many were live.
pub fn revoke_user(
    conn: &mut DbConnection,
    user_id: &str,
    at: NaiveDateTime,
) -> QueryResult<usize> {
    diesel::update(
        refresh_tokens::table.filter(
            refresh_tokens::user_id
                .eq(user_id)
                .and(refresh_tokens::revoked_at.is_null())
                .and(refresh_tokens::spent_at.is_null())
                .and(refresh_tokens::expires_at.gt(at)),
        ),
    )
    .set(refresh_tokens::revoked_at.eq(at))
    .execute(conn)
}
