//! The machine directory: a user's machines from the database, with live status from the
//! `SessionRegistry`. Used by the REST API and by `/ws/client`.

use std::time::Duration;

use actix::Addr;
use chrono::{NaiveDateTime, SecondsFormat};
use serde::Serialize;
use uuid::Uuid;

use crate::auth::opaque::{self, MACHINE_PREFIX};
use crate::db::{self, Pool};
use crate::error::ApiError;
use crate::models::machine::{self, Machine, NewMachine};
use crate::models::{is_unique_violation, now};
use crate::relay::registry::{DropMachine, MachineStatus, SessionRegistry};

/// Longest machine name, in characters (PROTOCOL.md §2).
pub const MAX_NAME_CHARS: usize = 64;
/// How long a request waits for the registry's live status.
const REGISTRY_TIMEOUT: Duration = Duration::from_secs(5);

/// `MachineInfo` of PROTOCOL.md §2.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MachineInfo {
    /// The machine's id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// Whether its agent is connected now.
    pub online: bool,
    /// When its agent was last connected (its registration time if never), RFC 3339.
    pub last_seen: String,
    /// Sessions its agent reports now.
    pub session_count: usize,
}

fn rfc3339(at: NaiveDateTime) -> String {
    at.and_utc().to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn info(machine: Machine, online: bool, session_count: usize) -> MachineInfo {
    MachineInfo {
        last_seen: rfc3339(machine.last_seen.unwrap_or(machine.created_at)),
        id: machine.id,
        name: machine.name,
        online,
        session_count,
    }
}

/// The user's machines with live status.
pub async fn list(
    pool: &Pool,
    registry: &Addr<SessionRegistry>,
    user_id: &str,
) -> Result<Vec<MachineInfo>, ApiError> {
    let owner = user_id.to_owned();
    let machines = db::run(pool, move |conn| Ok(machine::list_for_user(conn, &owner)?)).await?;
    let ids = machines.iter().map(|m| m.id.clone()).collect();
    let live = registry
        .send(MachineStatus { machine_ids: ids })
        .timeout(REGISTRY_TIMEOUT)
        .await
        .map_err(|_| ApiError::Unavailable("the relay is busy; try again shortly"))?;
    Ok(machines
        .into_iter()
        .zip(live)
        .map(|(machine, live)| info(machine, live.online, live.session_count))
        .collect())
}

/// Registers a machine for the user; returns it and its token, shown only this once.
pub async fn create(
    pool: &Pool,
    user_id: &str,
    name: &str,
) -> Result<(MachineInfo, String), ApiError> {
    let name = name.trim().to_owned();
    let chars = name.chars().count();
    if chars == 0 || chars > MAX_NAME_CHARS || name.chars().any(char::is_control) {
        return Err(ApiError::BadRequest(format!(
            "Machine name must have 1 to {MAX_NAME_CHARS} characters"
        )));
    }
    let token = opaque::mint(MACHINE_PREFIX);
    let row = Machine {
        id: Uuid::new_v4().to_string(),
        user_id: user_id.to_owned(),
        name,
        token_hash: token.hash.clone(),
        created_at: now(),
        last_seen: None,
    };
    let stored = row.clone();
    db::run(pool, move |conn| {
        let new = NewMachine {
            id: &stored.id,
            user_id: &stored.user_id,
            name: &stored.name,
            token_hash: &stored.token_hash,
            created_at: stored.created_at,
        };
        match machine::insert(conn, &new) {
            Err(err) if is_unique_violation(&err) => Err(ApiError::BadRequest(
                "You already have a machine with this name".into(),
            )),
            other => Ok(other?),
        }
    })
    .await?;
    Ok((info(row, false, 0), token.secret))
}

/// Deletes one of the user's machines: its token stops working and its agent is dropped.
/// Someone else's machine is "not found", exactly like a missing one.
pub async fn delete(
    pool: &Pool,
    registry: &Addr<SessionRegistry>,
    user_id: &str,
    machine_id: &str,
) -> Result<(), ApiError> {
    let (owner, id) = (user_id.to_owned(), machine_id.to_owned());
    let deleted = db::run(pool, move |conn| {
        Ok(machine::delete_for_user(conn, &owner, &id)?)
    })
    .await?;
    if !deleted {
        return Err(ApiError::NotFound("Machine not found"));
    }
    registry.do_send(DropMachine {
        machine_id: machine_id.to_owned(),
    });
    Ok(())
}
