//! Accounts: registration, login, refresh-token rotation and logout.
//!
//! The HTTP handlers in `routes::auth` only parse and delegate here. Passwords are hashed
//! under the bound of [`Passwords`]; every database step runs through [`db::run`], off the
//! async threads. The refresh-token rules are in [`refresh`].
//!
//! Who may register is read from the live settings on each attempt (`auth.registration`,
//! `auth.allowed_emails`), so a reload changes it at once. A disabled or deleted user is
//! out everywhere through one check, [`active_user`]: an indexed primary-key read, done
//! at login, refresh, each API request and each WebSocket `auth`.

pub mod refresh;

use std::net::IpAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use uuid::Uuid;

use crate::audit;
use crate::auth::opaque::{self, REFRESH_PREFIX};
use crate::auth::password::{self, Passwords, MAX_PASSWORD_BYTES};
use crate::auth::throttle::LoginThrottle;
use crate::auth::token::AccessTokens;
use crate::config::{Live, Registration};
use crate::db::{self, DbConnection, Pool};
use crate::error::ApiError;
use crate::ids::UserId;
use crate::metrics::METRICS;
use crate::models::refresh_token;
use crate::models::user::{self, NewUser, User};
use crate::models::{is_unique_violation, now};
use crate::relay::protocol::UserInfo;
use refresh::{start_family, Rotation, SuccessorKey};

/// Longest email accepted (RFC 5321 path limit).
const MAX_EMAIL_BYTES: usize = 254;

/// The answer for a valid token whose account is gone or disabled.
pub const ACCOUNT_GONE: &str = "This account is disabled or no longer exists";

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
    /// A biscuit device token: presented to a later `/auth/login` of this account, it skips
    /// the account's login throttle (an addition to PROTOCOL.md; clients may ignore it).
    pub device_token: String,
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
    /// Wrong passwords per account.
    pub throttle: LoginThrottle,
    /// The running settings: registration mode and allowlist are read from here each time.
    settings: Live,
    refresh_ttl: Duration,
    refresh_retry_grace: Duration,
    successors: SuccessorKey,
}

impl Accounts {
    /// The service over `pool` with the `[auth]` and `[limits]` settings; `successors`
    /// derives each refresh token's successor (see [`refresh`]).
    pub fn new(
        pool: Pool,
        tokens: Arc<AccessTokens>,
        successors: SuccessorKey,
        settings: Live,
    ) -> Self {
        let snapshot = settings.snapshot();
        let (auth, limits) = (&snapshot.auth, &snapshot.limits);
        Self {
            pool,
            tokens,
            passwords: Passwords::new(auth),
            throttle: LoginThrottle::new(
                limits.login_failures_per_account_per_hour,
                limits.max_tracked_accounts,
            ),
            refresh_ttl: auth.refresh_token_ttl(),
            refresh_retry_grace: auth.refresh_retry_grace(),
            successors,
            settings,
        }
    }

    /// Creates an account and signs it in, if the registration mode lets this email in;
    /// `from` is the client address (its turn to hash).
    pub async fn register(
        &self,
        from: IpAddr,
        email: &str,
        password: String,
    ) -> Result<SignedIn, ApiError> {
        let settings = self.settings.snapshot();
        let auth = &settings.auth;
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
        password::check_new(&password).map_err(ApiError::BadRequest)?;
        let password_hash = self.passwords.hash(from, password).await?;
        let user_id = Uuid::new_v4().to_string();
        let refresh = opaque::mint(REFRESH_PREFIX);
        let refresh_hash = refresh.hash.clone();
        let refresh_ttl = self.refresh_ttl;
        let (id, stored_email) = (user_id.clone(), email.clone());
        db::run(&self.pool, move |conn| {
            db::transaction(conn, |conn| {
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
            device_token: self.tokens.issue_device(&user_id),
            user: UserInfo {
                id: UserId::from(user_id),
                email,
            },
            refresh_token: refresh.secret,
        })
    }

    /// Signs a user in. An unknown email and a wrong password get the same answer and
    /// cost the same (both verify one argon2 hash). Unless `device` is a device token of
    /// this account, the attempt is paid for from the account's login throttle first.
    pub async fn login(
        &self,
        from: IpAddr,
        email: &str,
        password: String,
        device: Option<&str>,
    ) -> Result<SignedIn, ApiError> {
        let email = normalise_email(email).unwrap_or_default();
        let lookup = email.clone();
        let user = db::run(&self.pool, move |conn| {
            Ok(user::find_by_email(conn, &lookup)?)
        })
        .await?;
        // Checked whether or not the email is known, so both cost the same.
        let device_owner = device.and_then(|token| self.tokens.verify_device(token).ok());
        let known_device = matches!(
            (&user, &device_owner),
            (Some(user), Some(owner)) if *owner == user.id
        );
        if !known_device && !self.throttle.take(&email) {
            METRICS.rate_limited.fetch_add(1, Relaxed);
            return Err(ApiError::LoginThrottled);
        }
        let password = if password.len() > MAX_PASSWORD_BYTES {
            String::new()
        } else {
            password
        };
        let stored = user.as_ref().map(|u| u.password_hash.clone());
        let verified = self.passwords.verify(from, password, stored).await;
        // Only a wrong password keeps the guess it took; a right one or no answer at all
        // (the hashing queue was full) gives it back.
        if !known_device && !matches!(verified, Ok(false)) {
            self.throttle.refund(&email);
        }
        if !verified? {
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
            device_token: self.tokens.issue_device(&user.id),
            user: UserInfo {
                id: UserId::from(user.id),
                email: user.email,
            },
            refresh_token: refresh.secret,
        })
    }

    /// The account a valid access token names, if it is still active: it exists and is not
    /// disabled. Every `/api` request and `/ws/client` `auth` asks this, so a deleted or
    /// disabled account is refused at once everywhere with 401 (`USER_NOT_FOUND` on a
    /// socket). It is one primary-key lookup and deliberately not cached, so a change
    /// takes effect on the next request.
    pub async fn active_user(&self, user_id: &UserId) -> Result<User, ApiError> {
        // Ids are UUIDs; anything else (from a token of a future key, say) names nobody,
        // and never reaches the database.
        if Uuid::parse_str(user_id.as_str()).is_err() {
            return Err(ApiError::Unauthorized(ACCOUNT_GONE));
        }
        let id = user_id.clone();
        db::run(&self.pool, move |conn| Ok(active_user(conn, id.as_str())?))
            .await?
            .ok_or(ApiError::Unauthorized(ACCOUNT_GONE))
    }

    /// Exchanges a refresh token for a new pair. A token presented again within the retry
    /// grace, whose successor is still unused, gets that same successor (the first answer
    /// was lost); otherwise a token presented twice revokes its family (an audit event,
    /// with `client`, the address that presented it).
    pub async fn refresh(&self, presented: &str, client: IpAddr) -> Result<Refreshed, ApiError> {
        let hash = opaque::hash(presented);
        let next = self.successors.successor(presented);
        let next_hash = next.hash.clone();
        let (ttl, grace) = (self.refresh_ttl, self.refresh_retry_grace);
        let outcome = db::run(&self.pool, move |conn| {
            let rotate = |conn: &mut _| {
                db::transaction(conn, |conn| {
                    refresh::rotate(conn, &hash, &next_hash, ttl, grace)
                })
            };
            match rotate(conn) {
                // Lost a deadlock against a simultaneous request about the same family
                // (rolled back, nothing done): once more sees what that request did.
                Err(ApiError::Database(fault)) if fault.is_conflict() => rotate(conn),
                other => other,
            }
        })
        .await?;
        match outcome {
            Rotation::Rotated { user_id } => Ok(Refreshed {
                access_token: self.tokens.issue(&user_id),
                refresh_token: next.secret,
            }),
            Rotation::Retried { user_id } => {
                tracing::info!("a refresh was retried within the grace; same next token sent");
                Ok(Refreshed {
                    access_token: self.tokens.issue(&user_id),
                    refresh_token: next.secret,
                })
            }
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

/// The one check that keeps a disabled or deleted user out.
pub use crate::models::user::find_active as active_user;

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
