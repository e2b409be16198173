//! The machine directory: a user's machines from the database, with live status from the
//! `MachineRegistry`. Used by the REST API and by `/ws/client`.

use actix::Addr;
use chrono::{NaiveDateTime, SecondsFormat};
use uuid::Uuid;

use super::registry::{DropMachine, MachineRegistry, MachineStatus};
use super::REGISTRY_TIMEOUT;
use crate::auth::opaque::{self, MACHINE_PREFIX};
use crate::db::{self, Pool};
use crate::error::ApiError;
use crate::ids::{MachineId, UserId};
use crate::models::machine::{self, Machine, NewMachine};
use crate::models::{is_unique_violation, now};
use crate::relay::protocol::{MachineInfo, MAX_MACHINE_NAME_CHARS};

fn rfc3339(at: NaiveDateTime) -> String {
    at.and_utc().to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn info(machine: Machine, online: bool, session_count: usize) -> MachineInfo {
    MachineInfo {
        last_seen: rfc3339(machine.last_seen.unwrap_or(machine.created_at)),
        id: machine.id.into(),
        name: machine.name,
        online,
        session_count,
    }
}

/// The user's machines with live status.
pub async fn list(
    pool: &Pool,
    registry: &Addr<MachineRegistry>,
    user: &UserId,
) -> Result<Vec<MachineInfo>, ApiError> {
    let owner = user.clone();
    let machines = db::run(pool, move |conn| {
        Ok(machine::list_for_user(conn, owner.as_str())?)
    })
    .await?;
    let machine_ids = machines
        .iter()
        .map(|m| MachineId::from(m.id.as_str()))
        .collect();
    let live = registry
        .send(MachineStatus {
            machines: machine_ids,
        })
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
    user: &UserId,
    name: &str,
) -> Result<(MachineInfo, String), ApiError> {
    let name = name.trim().to_owned();
    let chars = name.chars().count();
    if chars == 0 || chars > MAX_MACHINE_NAME_CHARS || name.chars().any(char::is_control) {
        return Err(ApiError::BadRequest(format!(
            "Machine name must have 1 to {MAX_MACHINE_NAME_CHARS} characters"
        )));
    }
    let token = opaque::mint(MACHINE_PREFIX);
    let row = Machine {
        id: Uuid::new_v4().to_string(),
        user_id: user.to_string(),
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
    registry: &Addr<MachineRegistry>,
    user: &UserId,
    machine: &MachineId,
) -> Result<(), ApiError> {
    let (owner, id) = (user.clone(), machine.clone());
    let deleted = db::run(pool, move |conn| {
        Ok(machine::delete_for_user(conn, owner.as_str(), id.as_str())?)
    })
    .await?;
    if !deleted {
        return Err(ApiError::NotFound("Machine not found"));
    }
    registry.do_send(DropMachine {
        machine: machine.clone(),
    });
    Ok(())
}
