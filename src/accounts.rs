//! Accounts: registration, login, refresh-token rotation and logout.
//!
//! The HTTP handlers in `routes::auth` only parse and delegate here. Passwords are hashed
//! under the bound of [`Passwords`]; every database step runs through [`db::run`], off the
//! async threads.
//!
//! Who may register is read from the live settings on each attempt (`auth.registration`,
//! `auth.allowed_emails`), so a reload changes it at once. A disabled or deleted user is
//! out everywhere through one check, [`active_user`]: an indexed primary-key read, done
//! at login, refresh, each API request and each WebSocket `auth`.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use diesel::Connection;
use serde::Serialize;
use uuid::Uuid;

use crate::audit;
use crate::auth::opaque::{self, REFRESH_PREFIX};
use crate::auth::password::{Passwords, MAX_PASSWORD_BYTES, MIN_PASSWORD_CHARS};
use crate::auth::token::AccessTokens;
use crate::config::{Live, Registration};
use crate::db::{self, DbConnection, Pool};
use crate::error::ApiError;
use crate::ids::UserId;
use crate::models::refresh_token::{self, NewRefreshToken};
use crate::models::user::{self, NewUser, User};
use crate::models::{is_unique_violation, now};
use crate::relay::protocol::UserInfo;

/// Longest email accepted (RFC 5321 path limit).
const MAX_EMAIL_BYTES: usize = 254;

/// A signed-in session: what register and login answer.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SignedIn {
    /// The user.
    pub user: UserInfo,
    /// A biscuit access token.
    pub access_token: String,
    /// An opaque refresh token, shown only here.
    pub refresh_token: String,
}

/// What `/auth/refresh` answers.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Refreshed {
    /// A new access token.
    pub access_token: String,
    /// The next refresh token; the one presented is spent.
    pub refresh_token: String,
}

/// The accounts service, shared by all workers.
pub struct Accounts {
    /// The database pool.
    pub pool: Pool,
    /// Access token issuer and verifier.
    pub tokens: Arc<AccessTokens>,
    /// Bounded password hashing.
    pub passwords: Passwords,
    /// The running settings: registration mode and allowlist are read from here each time.
    settings: Live,
    refresh_ttl: Duration,
}

impl Accounts {
    /// The service over `pool`, with the `[auth]` settings of `settings`.
    pub fn new(pool: Pool, tokens: Arc<AccessTokens>, settings: Live) -> Self {
        let auth = settings.snapshot().auth.clone();
        Self {
            pool,
            tokens,
            passwords: Passwords::new(auth.max_concurrent_hashes, auth.hash_queue_timeout()),
            settings,
            refresh_ttl: auth.refresh_token_ttl(),
        }
    }

    /// Creates an account and signs it in, if the registration mode lets this email in.
    pub async fn register(&self, email: &str, password: String) -> Result<SignedIn, ApiError> {
        let auth = &self.settings.get().auth;
        if auth.registration == Registration::Closed {
            return Err(ApiError::RegistrationClosed);
        }
        let email = normalise_email(email)
            .ok_or_else(|| ApiError::BadRequest("Invalid email address".into()))?;
        if !auth.may_register(&email) {
            return Err(ApiError::Forbidden(
                "Registration on this relay is limited to invited addresses",
            ));
        }
        check_password(&password).map_err(ApiError::BadRequest)?;
        let password_hash = self.passwords.hash(password).await?;
        let user_id = Uuid::new_v4().to_string();
        let refresh = opaque::mint(REFRESH_PREFIX);
        let refresh_hash = refresh.hash.clone();
        let refresh_ttl = self.refresh_ttl;
        let (id, stored_email) = (user_id.clone(), email.clone());
        db::run(&self.pool, move |conn| {
            conn.transaction(|conn| {
                match insert_user(conn, &id, &stored_email, &password_hash) {
                    Err(err) if is_unique_violation(&err) => {
                        return Err(ApiError::BadRequest("Email is already registered".into()))
                    }
                    other => other?,
                }
                start_family(conn, &id, &refresh_hash, refresh_ttl)?;
                Ok(())
            })
        })
        .await?;
        Ok(SignedIn {
            access_token: self.tokens.issue(&user_id),
            user: UserInfo {
                id: UserId::from(user_id),
                email,
            },
            refresh_token: refresh.secret,
        })
    }

    /// Signs a user in. An unknown email and a wrong password get the same answer and
    /// cost the same (both verify one argon2 hash).
    pub async fn login(&self, email: &str, password: String) -> Result<SignedIn, ApiError> {
        let email = normalise_email(email).unwrap_or_default();
        let lookup = email.clone();
        let user = db::run(&self.pool, move |conn| {
            Ok(user::find_by_email(conn, &lookup)?)
        })
        .await?;
        let password = if password.len() > MAX_PASSWORD_BYTES {
            String::new()
        } else {
            password
        };
        let stored = user.as_ref().map(|u| u.password_hash.clone());
        if !self.passwords.verify(password, stored).await? {
            return Err(ApiError::InvalidCredentials);
        }
        let user = user.ok_or(ApiError::InvalidCredentials)?;
        // Told only to whoever knows the password: the account exists but is switched off.
        if user.disabled_at.is_some() {
            return Err(ApiError::Forbidden("This account is disabled"));
        }
        let refresh = opaque::mint(REFRESH_PREFIX);
        let (user_id, hash, ttl) = (user.id.clone(), refresh.hash.clone(), self.refresh_ttl);
        db::run(&self.pool, move |conn| {
            start_family(conn, &user_id, &hash, ttl)
        })
        .await?;
        Ok(SignedIn {
            access_token: self.tokens.issue(&user.id),
            user: UserInfo {
                id: UserId::from(user.id),
                email: user.email,
            },
            refresh_token: refresh.secret,
        })
    }

    /// Exchanges a refresh token for a new pair. A token presented twice revokes its family
    /// (an audit event, with `client`, the address that presented it).
    pub async fn refresh(&self, presented: &str, client: IpAddr) -> Result<Refreshed, ApiError> {
        let hash = opaque::hash(presented);
        let next = opaque::mint(REFRESH_PREFIX);
        let next_hash = next.hash.clone();
        let ttl = self.refresh_ttl;
        let outcome = db::run(&self.pool, move |conn| {
            conn.transaction(|conn| rotate(conn, &hash, &next_hash, ttl))
        })
        .await?;
        match outcome {
            Rotation::Rotated { user_id } => Ok(Refreshed {
                access_token: self.tokens.issue(&user_id),
                refresh_token: next.secret,
            }),
            Rotation::Reused { user_id } => {
                tracing::warn!("a spent refresh token was presented again; its family is revoked");
                audit::event("refresh_reuse")
                    .user(&user_id)
                    .client(client)
                    .reason("family_revoked")
                    .record();
                Err(ApiError::Unauthorized("Invalid refresh token"))
            }
            Rotation::Refused => Err(ApiError::Unauthorized("Invalid refresh token")),
        }
    }

    /// Revokes the family of a refresh token. Unknown tokens are ignored: logout always works.
    pub async fn logout(&self, presented: &str) -> Result<(), ApiError> {
        let hash = opaque::hash(presented);
        db::run(&self.pool, move |conn| {
            if let Some(token) = refresh_token::find_by_hash(conn, &hash)? {
                refresh_token::revoke_family(conn, &token.family_id, now())?;
            }
            Ok(())
        })
        .await
    }
}

/// The result of presenting a refresh token.
enum Rotation {
    Rotated {
        user_id: String,
    },
    /// A spent token came back: the family was revoked (and that revocation committed).
    Reused {
        user_id: String,
    },
    Refused,
}

fn rotate(
    conn: &mut DbConnection,
    hash: &str,
    next_hash: &str,
    ttl: Duration,
) -> Result<Rotation, ApiError> {
    let Some(token) = refresh_token::find_by_hash(conn, hash)? else {
        return Ok(Rotation::Refused);
    };
    let at = now();
    if token.revoked_at.is_some() || token.expires_at <= at {
        return Ok(Rotation::Refused);
    }
    if token.spent_at.is_some() || !refresh_token::spend(conn, &token.id, at)? {
        refresh_token::revoke_family(conn, &token.family_id, at)?;
        return Ok(Rotation::Reused {
            user_id: token.user_id,
        });
    }
    if active_user(conn, &token.user_id)?.is_none() {
        return Ok(Rotation::Refused);
    }
    insert_token(conn, &token.user_id, &token.family_id, next_hash, ttl)?;
    Ok(Rotation::Rotated {
        user_id: token.user_id,
    })
}

/// Stores the first refresh token of a new family (a login).
fn start_family(
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

/// The user with this id if it exists and is not disabled: the one check that keeps a
/// disabled or deleted user out (one primary-key read).
pub fn active_user(conn: &mut DbConnection, user_id: &str) -> diesel::QueryResult<Option<User>> {
    Ok(user::find(conn, user_id)?.filter(|user| user.disabled_at.is_none()))
}

impl Accounts {
    /// [`active_user`] off the async threads.
    pub async fn active_user(&self, user_id: &str) -> Result<Option<User>, ApiError> {
        let id = user_id.to_owned();
        db::run(&self.pool, move |conn| Ok(active_user(conn, &id)?)).await
    }
}

/// Why `password` may not be used, if it may not (shared by `/auth/register` and
/// `hermit-relay users add` / `set-password`).
pub fn check_password(password: &str) -> Result<(), String> {
    if password.chars().count() < MIN_PASSWORD_CHARS {
        return Err(format!(
            "Password must be at least {MIN_PASSWORD_CHARS} characters"
        ));
    }
    if password.len() > MAX_PASSWORD_BYTES {
        return Err(format!(
            "Password must be at most {MAX_PASSWORD_BYTES} bytes"
        ));
    }
    Ok(())
}

/// Inserts a user with a new id (`id`), its normalised email and password hash.
pub fn insert_user(
    conn: &mut DbConnection,
    id: &str,
    email: &str,
    password_hash: &str,
) -> diesel::QueryResult<()> {
    user::insert(
        conn,
        &NewUser {
            id,
            email,
            password_hash,
            created_at: now(),
        },
    )
}

/// Trimmed, lower-cased email if it looks like one: `local@domain.tld`, no spaces.
pub fn normalise_email(input: &str) -> Option<String> {
    let email = input.trim().to_lowercase();
    if email.len() > MAX_EMAIL_BYTES || email.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return None;
    }
    let (local, domain) = email.rsplit_once('@')?;
    let valid = !local.is_empty()
        && !local.contains('@')
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !domain.contains("..");
    valid.then_some(email)
}

#[cfg(test)]
mod tests {
    use super::normalise_email;

    #[test]
    fn emails_are_trimmed_and_lower_cased() {
        assert_eq!(
            normalise_email("  Ada@Example.COM "),
            Some("ada@example.com".into())
        );
    }

    #[test]
    fn things_that_are_not_emails_are_refused() {
        for bad in [
            "",
            "ada",
            "ada@",
            "@example.com",
            "ada@example",
            "a b@example.com",
            "ada@@example.com",
            "ada@.example.com",
            "ada@example.com.",
            "ada@exa..mple.com",
        ] {
            assert_eq!(normalise_email(bad), None, "{bad:?}");
        }
        assert_eq!(
            normalise_email(&format!("{}@example.com", "a".repeat(250))),
            None
        );
    }
}
