//! Refresh-token rotation: one conditional write spends a token, so exactly one of any
//! number of simultaneous requests wins; a retry of a just-spent token within the grace
//! gets the same next token, so a client whose answer was lost stays signed in.
//!
//! The next token is derived, not drawn: `hrt_` + base64url(HMAC-SHA256(key, presented
//! token)), with a key derived from the biscuit root key file. A retry recomputes the same
//! next token from the token it presents, so nothing but hashes is ever stored, and nobody
//! without the key file can compute a successor from a stolen spent token.

use std::path::Path;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::auth::opaque::{self, Minted, REFRESH_PREFIX};
use crate::auth::token::KeyFileError;
use crate::db::DbConnection;
use crate::error::ApiError;
use crate::models::now;
use crate::models::refresh_token::{self, NewRefreshToken};

/// Separates this use of the root key file from any other derived from it.
const KEY_CONTEXT: &[u8] = b"hermit-relay refresh successor v1\n";

/// The secret that derives a token's successor. Its `Debug` shows nothing.
pub struct SuccessorKey([u8; 32]);

impl std::fmt::Debug for SuccessorKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SuccessorKey(***)")
    }
}

impl SuccessorKey {
    /// Derived from the biscuit root key file (already the relay's secret; replacing it
    /// signs everyone out anyway).
    pub fn from_key_file(path: &Path) -> Result<Self, KeyFileError> {
        let secret = std::fs::read(path).map_err(|source| KeyFileError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Ok(Self::from_secret(&secret))
    }

    /// Derived from any secret bytes.
    pub fn from_secret(secret: &[u8]) -> Self {
        Self(
            Sha256::new()
                .chain_update(KEY_CONTEXT)
                .chain_update(secret)
                .finalize()
                .into(),
        )
    }

    /// The token that follows `presented`, always the same for the same token.
    pub fn successor(&self, presented: &str) -> Minted {
        let mac = hmac_sha256(&self.0, presented.as_bytes());
        let secret = format!("{REFRESH_PREFIX}{}", URL_SAFE_NO_PAD.encode(mac));
        Minted {
            hash: opaque::hash(&secret),
            secret,
        }
    }
}

/// HMAC-SHA256 (RFC 2104) for a key of at most one block, which ours always is.
fn hmac_sha256(key: &[u8; 32], message: &[u8]) -> [u8; 32] {
    let mut inner_pad = [0x36u8; 64];
    let mut outer_pad = [0x5cu8; 64];
    for (i, byte) in key.iter().enumerate() {
        inner_pad[i] ^= byte;
        outer_pad[i] ^= byte;
    }
    let inner = Sha256::new()
        .chain_update(inner_pad)
        .chain_update(message)
        .finalize();
    Sha256::new()
        .chain_update(outer_pad)
        .chain_update(inner)
        .finalize()
        .into()
}

/// The result of presenting a refresh token.
pub enum Rotation {
    /// Spent now; its successor is stored.
    Rotated {
        /// The owner.
        user_id: String,
    },
    /// Spent moments ago and its successor never used: the first answer was lost, so this
    /// one carries the same successor.
    Retried {
        /// The owner.
        user_id: String,
    },
    /// A spent token came back after the grace, or after its successor was used: the
    /// family was revoked (and that revocation commits).
    Reused {
        /// Whose family it was (for the audit trail).
        user_id: String,
    },
    /// Unknown, expired or revoked.
    Refused,
}

/// Presents the token hashed `presented`, whose successor hashes to `successor`. Run it in
/// one transaction: its first statement is the conditional write, so on SQLite the
/// transaction takes the write lock before reading anything (a read first would make the
/// loser of a race fail with "database is locked" instead of waiting its turn).
pub fn rotate(
    conn: &mut DbConnection,
    presented: &str,
    successor: &str,
    ttl: Duration,
    grace: Duration,
) -> Result<Rotation, ApiError> {
    let at = now();
    if refresh_token::spend(conn, presented, at)? {
        let Some(token) = refresh_token::find_by_hash(conn, presented)? else {
            return Err(ApiError::internal(
                "a refresh token vanished as it was spent",
            ));
        };
        // A disabled or deleted account gets nothing more (the spent token stays spent).
        if crate::models::user::find_active(conn, &token.user_id)?.is_none() {
            return Ok(Rotation::Refused);
        }
        insert_token(conn, &token.user_id, &token.family_id, successor, ttl)?;
        return Ok(Rotation::Rotated {
            user_id: token.user_id,
        });
    }
    let Some(token) = refresh_token::find_by_hash(conn, presented)? else {
        return Ok(Rotation::Refused);
    };
    let Some(spent_at) = token.spent_at else {
        // Not spendable yet not spent: revoked or expired.
        return Ok(Rotation::Refused);
    };
    if token.revoked_at.is_some() || token.expires_at <= at {
        return Ok(Rotation::Refused);
    }
    // Read the clock again: `at` was taken before the write above waited for the lock,
    // so it may be older than the `spent_at` of the request that won.
    let grace = chrono::Duration::from_std(grace).map_err(ApiError::internal)?;
    if grace > chrono::Duration::zero() && now() < spent_at + grace {
        let next = refresh_token::find_by_hash(conn, successor)?;
        let unused = next.is_some_and(|next| {
            next.family_id == token.family_id
                && next.spent_at.is_none()
                && next.revoked_at.is_none()
        });
        if unused && crate::models::user::find_active(conn, &token.user_id)?.is_some() {
            return Ok(Rotation::Retried {
                user_id: token.user_id,
            });
        }
    }
    refresh_token::revoke_family_of(conn, &token, at)?;
    Ok(Rotation::Reused {
        user_id: token.user_id,
    })
}

/// Stores the first refresh token of a new family (a login).
pub fn start_family(
    conn: &mut DbConnection,
    user_id: &str,
    hash: &str,
    ttl: Duration,
) -> Result<(), ApiError> {
    insert_token(conn, user_id, &Uuid::new_v4().to_string(), hash, ttl)
}

fn insert_token(
    conn: &mut DbConnection,
    user_id: &str,
    family_id: &str,
    hash: &str,
    ttl: Duration,
) -> Result<(), ApiError> {
    let created_at = now();
    let ttl = chrono::Duration::from_std(ttl).map_err(ApiError::internal)?;
    refresh_token::insert(
        conn,
        &NewRefreshToken {
            id: &Uuid::new_v4().to_string(),
            user_id,
            family_id,
            token_hash: hash,
            created_at,
            expires_at: created_at + ttl,
        },
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_rfc_4231_test_case_2() {
        // Key "Jefe", zero-padded to our key size: HMAC pads short keys with zeros anyway.
        let mut key = [0u8; 32];
        key[..4].copy_from_slice(b"Jefe");
        let mac = hmac_sha256(&key, b"what do ya want for nothing?");
        let hex: String = mac.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn a_token_always_has_the_same_successor_and_only_under_the_same_key() {
        let key = SuccessorKey::from_secret(b"root key");
        let first = key.successor("hrt_abc");
        assert_eq!(first.secret, key.successor("hrt_abc").secret);
        assert!(first.secret.starts_with("hrt_"));
        assert_eq!(first.secret.len(), 4 + 43);
        assert_eq!(first.hash, opaque::hash(&first.secret));
        assert_ne!(first.secret, key.successor("hrt_abd").secret);
        let other = SuccessorKey::from_secret(b"another root key");
        assert_ne!(first.secret, other.successor("hrt_abc").secret);
        assert_eq!(format!("{key:?}"), "SuccessorKey(***)");
    }
}
