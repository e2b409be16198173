//! The admin commands (`hermit-relay users …`, `machines …`, `sessions revoke`): plain,
//! blocking operations on the configured database, safe while the relay runs on it.
//!
//! Each change is one transaction. Those a running relay must act on (a user disabled or
//! deleted, a machine revoked) also bump `admin_generation` in that transaction; the relay
//! polls it (see [`crate::watch`]) and closes what is no longer allowed within
//! `admin.poll_interval_ms`. Every change is recorded in the audit log, `by: "cli"`.
//! Passwords are read by [`password`], never taken from the command line.

pub mod output;
pub mod password;

use chrono::{NaiveDateTime, SecondsFormat};
use diesel::Connection;
use serde::Serialize;
use uuid::Uuid;

use crate::accounts::{insert_user, normalise_email};
use crate::audit;
use crate::auth::password::check_new as check_password;
use crate::auth::password::hash_now;
use crate::config::{mask_url_password, Settings};
use crate::db::{self, DbConnection, Pool};
use crate::models::machine::{self, Machine};
use crate::models::user::{self, User};
use crate::models::{admin_generation, is_unique_violation, now, refresh_token};

/// Why an admin command failed; printed as one line, and the command exits non-zero.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// No user has this email.
    #[error("no user with the email {0}")]
    UnknownUser(String),
    /// No machine has this id.
    #[error("no machine with the id {0}")]
    UnknownMachine(String),
    /// The input cannot be used (bad email, weak password, duplicate).
    #[error("{0}")]
    Invalid(String),
    /// The database does not answer.
    #[error("cannot reach the database at {url}: {reason}")]
    Unreachable {
        /// `database.url`, password masked.
        url: String,
        /// Why.
        reason: String,
    },
    /// A query failed.
    #[error("database error: {0}")]
    Database(String),
}

impl From<diesel::result::Error> for AdminError {
    fn from(err: diesel::result::Error) -> Self {
        let text = err.to_string();
        let hint = if text.contains("no such table")
            || text.contains("does not exist")
            || text.contains("no such column")
        {
            " (is the database migrated? run `hermit-relay migrate`)"
        } else {
            ""
        };
        Self::Database(format!("{text}{hint}"))
    }
}

/// A user as the commands show it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UserRow {
    /// Its id.
    pub id: String,
    /// Its email.
    pub email: String,
    /// `active` or `disabled`.
    pub status: &'static str,
    /// When it registered (RFC 3339).
    pub created_at: String,
    /// When it was disabled, if it is.
    pub disabled_at: Option<String>,
    /// How many machines it has.
    pub machines: usize,
}

/// A machine as the commands show it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MachineRow {
    /// Its id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// The owner's id.
    pub user_id: String,
    /// The owner's email.
    pub email: String,
    /// When it was registered (RFC 3339).
    pub created_at: String,
    /// When its agent was last connected, if ever.
    pub last_seen: Option<String>,
}

fn rfc3339(at: NaiveDateTime) -> String {
    at.and_utc().to_rfc3339_opts(SecondsFormat::Secs, true)
}

impl UserRow {
    fn new(user: User, machines: usize) -> Self {
        Self {
            status: if user.disabled_at.is_some() {
                "disabled"
            } else {
                "active"
            },
            created_at: rfc3339(user.created_at),
            disabled_at: user.disabled_at.map(rfc3339),
            id: user.id,
            email: user.email,
            machines,
        }
    }
}

impl MachineRow {
    fn new(machine: Machine, email: String) -> Self {
        Self {
            created_at: rfc3339(machine.created_at),
            last_seen: machine.last_seen.map(rfc3339),
            id: machine.id,
            name: machine.name,
            user_id: machine.user_id,
            email,
        }
    }
}

/// The admin commands' connection to the configured database.
pub struct Admin {
    pool: Pool,
    url: String,
}

impl Admin {
    /// Connects (and applies pending migrations when `database.run_migrations` is on, as
    /// the relay would at start — so the first account can be made before the first start).
    pub fn connect(settings: &Settings) -> Result<Self, AdminError> {
        let database = &settings.database;
        let url = mask_url_password(&database.url);
        let unreachable = |reason: String| AdminError::Unreachable {
            url: url.clone(),
            reason,
        };
        let pool = db::pool(&database.url, 1, database.connect_timeout())
            .map_err(|err| unreachable(err.to_string()))?;
        let admin = Self {
            pool,
            url: url.clone(),
        };
        let mut conn = admin.conn()?;
        if database.run_migrations {
            db::run_migrations(&mut conn).map_err(|err| AdminError::Database(err.to_string()))?;
        }
        Ok(admin)
    }

    fn conn(&self) -> Result<db::Checkout, AdminError> {
        self.pool.get().map_err(|err| AdminError::Unreachable {
            url: self.url.clone(),
            reason: err.to_string(),
        })
    }

    /// Every user, by email, with its number of machines.
    pub fn users(&self) -> Result<Vec<UserRow>, AdminError> {
        let mut conn = self.conn()?;
        let users = user::list(&mut conn)?;
        let machines = machine::list(&mut conn, None)?;
        Ok(users
            .into_iter()
            .map(|u| {
                let count = machines.iter().filter(|m| m.user_id == u.id).count();
                UserRow::new(u, count)
            })
            .collect())
    }

    /// Creates a user (whatever `auth.registration` says: this is the operator).
    pub fn add_user(&self, email: &str, password: &str) -> Result<UserRow, AdminError> {
        let email = valid_email(email)?;
        check_password(password).map_err(AdminError::Invalid)?;
        let hash = hash_now(password).map_err(|err| AdminError::Invalid(err.to_string()))?;
        let id = Uuid::new_v4().to_string();
        let mut conn = self.conn()?;
        match insert_user(&mut conn, &id, &email, &hash) {
            Err(err) if is_unique_violation(&err) => {
                return Err(AdminError::Invalid(format!(
                    "a user with the email {email} already exists"
                )))
            }
            other => other?,
        }
        let user = user::find(&mut conn, &id)?.ok_or(AdminError::UnknownUser(email))?;
        record("user_added", &user);
        Ok(UserRow::new(user, 0))
    }

    /// Disables a user: sign-in refused, refresh tokens revoked, and the running relay
    /// closes its sockets and refuses its access tokens.
    pub fn disable_user(&self, email: &str) -> Result<(UserRow, usize), AdminError> {
        self.change_user(email, "user_disabled", |conn, user| {
            let at = now();
            user::set_disabled(conn, &user.id, Some(user.disabled_at.unwrap_or(at)))?;
            let revoked = refresh_token::revoke_user(conn, &user.id, at)?;
            admin_generation::bump(conn, at)?;
            Ok(revoked)
        })
    }

    /// Enables a disabled user again (it signs in anew: its sessions were revoked).
    pub fn enable_user(&self, email: &str) -> Result<UserRow, AdminError> {
        self.change_user(email, "user_enabled", |conn, user| {
            user::set_disabled(conn, &user.id, None)?;
            Ok(0)
        })
        .map(|(row, _)| row)
    }

    /// Deletes a user with its machines and refresh tokens; the running relay closes its
    /// sockets and drops its agents.
    pub fn delete_user(&self, email: &str) -> Result<UserRow, AdminError> {
        self.change_user(email, "user_deleted", |conn, user| {
            user::delete(conn, &user.id)?;
            admin_generation::bump(conn, now())?;
            Ok(0)
        })
        .map(|(row, _)| row)
    }

    /// Sets a user's password and revokes its refresh tokens (everyone signs in anew).
    pub fn set_password(
        &self,
        email: &str,
        password: &str,
    ) -> Result<(UserRow, usize), AdminError> {
        check_password(password).map_err(AdminError::Invalid)?;
        let hash = hash_now(password).map_err(|err| AdminError::Invalid(err.to_string()))?;
        self.change_user(email, "password_set", move |conn, user| {
            user::set_password_hash(conn, &user.id, &hash)?;
            refresh_token::revoke_user(conn, &user.id, now())
        })
    }

    /// Revokes every refresh token of a user: its sessions end when their access tokens
    /// expire (within `auth.access_token_ttl_secs`).
    pub fn revoke_sessions(&self, email: &str) -> Result<(UserRow, usize), AdminError> {
        self.change_user(email, "sessions_revoked", |conn, user| {
            refresh_token::revoke_user(conn, &user.id, now())
        })
    }

    /// Machines, all or one user's, by owner and name.
    pub fn machines(&self, owner: Option<&str>) -> Result<Vec<MachineRow>, AdminError> {
        let mut conn = self.conn()?;
        let owner = match owner {
            Some(email) => Some(find_user(&mut conn, email)?),
            None => None,
        };
        let machines = machine::list(&mut conn, owner.as_ref().map(|u| u.id.as_str()))?;
        let users = user::list(&mut conn)?;
        Ok(machines
            .into_iter()
            .map(|m| {
                let email = users
                    .iter()
                    .find(|u| u.id == m.user_id)
                    .map(|u| u.email.clone())
                    .unwrap_or_default();
                MachineRow::new(m, email)
            })
            .collect())
    }

    /// Revokes a machine: deleted (its token stops working) and its agent dropped by the
    /// running relay, as `DELETE /api/machines/{id}` does.
    pub fn revoke_machine(&self, id: &str) -> Result<MachineRow, AdminError> {
        let mut conn = self.conn()?;
        let id = id.trim();
        let row = conn.transaction(|conn| {
            let Some(found) = machine::find(conn, id)? else {
                return Ok(None);
            };
            let email = user::find(conn, &found.user_id)?
                .map(|u| u.email)
                .unwrap_or_default();
            machine::delete(conn, id)?;
            admin_generation::bump(conn, now())?;
            Ok::<_, diesel::result::Error>(Some(MachineRow::new(found, email)))
        })?;
        let row = row.ok_or_else(|| AdminError::UnknownMachine(id.to_owned()))?;
        audit::event("machine_revoked")
            .machine(&row.id)
            .user(&row.user_id)
            .by("cli")
            .record();
        Ok(row)
    }

    /// Finds the user by email, applies `change` in one transaction, records `event`.
    fn change_user(
        &self,
        email: &str,
        event: &'static str,
        change: impl FnOnce(&mut DbConnection, &User) -> Result<usize, diesel::result::Error>,
    ) -> Result<(UserRow, usize), AdminError> {
        let mut conn = self.conn()?;
        let (user, count, machines) = conn.transaction(|conn| {
            let user = find_user(conn, email)?;
            let count = change(conn, &user)?;
            let machines = machine::list_for_user(conn, &user.id)?.len();
            let after = user::find(conn, &user.id)?.unwrap_or(user);
            Ok::<_, AdminError>((after, count, machines))
        })?;
        record(event, &user);
        Ok((UserRow::new(user, machines), count))
    }
}

fn record(event: &'static str, user: &User) {
    audit::event(event)
        .user(&user.id)
        .email(&user.email)
        .by("cli")
        .record();
}

fn valid_email(email: &str) -> Result<String, AdminError> {
    normalise_email(email)
        .ok_or_else(|| AdminError::Invalid(format!("{email:?} is not an email address")))
}

fn find_user(conn: &mut DbConnection, email: &str) -> Result<User, AdminError> {
    let email = valid_email(email)?;
    user::find_by_email(conn, &email)?.ok_or(AdminError::UnknownUser(email))
}
