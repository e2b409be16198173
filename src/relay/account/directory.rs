//! The machine directory: a user's machines from the database, with live status from the
//! `MachineRegistry`. Used by the REST API and by `/ws/client`.

use actix::Addr;
use chrono::{NaiveDateTime, SecondsFormat};
use diesel::Connection;
use uuid::Uuid;

use super::registry::{DropMachine, MachineRegistry, MachineStatus};
use super::remote::Remote;
use super::REGISTRY_TIMEOUT;
use crate::accounts::ACCOUNT_GONE;
use crate::auth::opaque::{self, MACHINE_PREFIX};
use crate::db::{self, DbConnection, Pool};
use crate::error::ApiError;
use crate::ids::{MachineId, UserId};
use crate::models::machine::{self, Machine, NewMachine};
use crate::models::{admin_generation, user};
use crate::models::{is_foreign_key_violation, is_unique_violation, now};
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

/// The user's machines with live status: from this node's registry, or, in a cluster,
/// from the user's node (`remote`; see `super::remote`).
pub async fn list(
    pool: &Pool,
    registry: &Addr<MachineRegistry>,
    remote: Option<&Remote>,
    user: &UserId,
) -> Result<Vec<MachineInfo>, ApiError> {
    let owner = user.clone();
    let machines = db::run(pool, move |conn| {
        Ok(machine::list_for_user(conn, owner.as_str())?)
    })
    .await?;
    let machine_ids: Vec<MachineId> = machines
        .iter()
        .map(|m| MachineId::from(m.id.as_str()))
        .collect();
    let home = match remote {
        Some(remote) => remote
            .home_of(user)
            .await
            .map_err(|_| ApiError::Unavailable("the relay cannot reach its cluster; try again"))?,
        None => None,
    };
    let live = match (home, remote) {
        (Some(home), Some(remote)) => {
            remote
                .status(&home, &machine_ids)
                .await
                .ok_or(ApiError::Unavailable(
                    "the relay cannot reach its cluster; try again",
                ))?
        }
        _ => registry
            .send(MachineStatus {
                machines: machine_ids,
            })
            .timeout(REGISTRY_TIMEOUT)
            .await
            .map_err(|_| ApiError::Unavailable("the relay is busy; try again shortly"))?,
    };
    Ok(machines
        .into_iter()
        .zip(live)
        .map(|(machine, live)| info(machine, live.online, live.session_count))
        .collect())
}

/// A machine name as stored: trimmed, in Unicode normal form C (so a name typed with
/// combining accents is the same name as one typed with precomposed letters), 1 to
/// [`MAX_MACHINE_NAME_CHARS`] characters, and no control, format or line-separator
/// characters: those are invisible (zero-width spaces, U+202E RIGHT-TO-LEFT OVERRIDE...)
/// and would let look-alike names sit side by side.
pub fn machine_name(input: &str) -> Result<String, ApiError> {
    use unicode_general_category::{get_general_category, GeneralCategory as Category};
    use unicode_normalization::UnicodeNormalization;
    let name: String = input.trim().nfc().collect();
    let chars = name.chars().count();
    if chars == 0 || chars > MAX_MACHINE_NAME_CHARS {
        return Err(ApiError::BadRequest(format!(
            "Machine name must have 1 to {MAX_MACHINE_NAME_CHARS} characters"
        )));
    }
    let invisible = |c: char| {
        matches!(
            get_general_category(c),
            Category::Control
                | Category::Format
                | Category::LineSeparator
                | Category::ParagraphSeparator
        )
    };
    if name.chars().any(invisible) {
        return Err(ApiError::BadRequest(
            "Machine name must not contain control or invisible formatting characters".into(),
        ));
    }
    Ok(name)
}

/// Registers a machine for the user, unless it has `most` already; returns it and its
/// token, shown only this once.
pub async fn create(
    pool: &Pool,
    user: &UserId,
    name: &str,
    most: usize,
) -> Result<(MachineInfo, String), ApiError> {
    let name = machine_name(name)?;
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
        // db::transaction, not diesel's: on a full SQLite disk the failed ROLLBACK must not
        // turn the 503 into a 500.
        db::transaction(conn, |conn| {
            // Taking the owner's row first makes this user's creations take turns, so
            // the count cannot go stale before the insert (on both backends).
            if !user::lock(conn, &stored.user_id)? {
                return Err(ApiError::Unauthorized(ACCOUNT_GONE));
            }
            let count = machine::count_for_user(conn, &stored.user_id)?;
            if usize::try_from(count).unwrap_or(usize::MAX) >= most {
                return Err(ApiError::BadRequest(format!(
                    "You already have {most} machines, the most allowed; delete one first"
                )));
            }
            insert(conn, &stored)
        })
    })
    .await?;
    Ok((info(row, false, 0), token.secret))
}

fn insert(conn: &mut DbConnection, stored: &Machine) -> Result<(), ApiError> {
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
        // The account was deleted after its token was checked (defence in depth: the
        // owner's row is locked before the insert).
        Err(err) if is_foreign_key_violation(&err) => Err(ApiError::Unauthorized(ACCOUNT_GONE)),
        other => Ok(other?),
    }
}

/// Deletes one of the user's machines: its token stops working and its agent is dropped.
/// Someone else's machine is "not found", exactly like a missing one.
pub async fn delete(
    pool: &Pool,
    registry: &Addr<MachineRegistry>,
    user: &UserId,
    machine: &MachineId,
) -> Result<(), ApiError> {
    // Machine ids are UUIDs. Anything else names no machine, and must not reach the
    // database: PostgreSQL cannot even compare text holding a NUL (that was a 500).
    if Uuid::parse_str(machine.as_str()).is_err() {
        return Err(ApiError::NotFound("Machine not found"));
    }
    let (owner, id) = (user.clone(), machine.clone());
    let deleted = db::run(pool, move |conn| {
        // The generation tells every node (its admin watch) to drop the agent, wherever in
        // a cluster it is; this node drops its own at once, below.
        Ok(conn.transaction(|conn| {
            let deleted = machine::delete_for_user(conn, owner.as_str(), id.as_str())?;
            if deleted {
                admin_generation::bump(conn, now())?;
            }
            Ok::<_, diesel::result::Error>(deleted)
        })?)
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

#[cfg(test)]
mod tests {
    use super::machine_name;

    #[test]
    fn names_are_trimmed_and_normalised_to_nfc() {
        assert_eq!(machine_name("  studio ").unwrap(), "studio");
        // "e" + COMBINING ACUTE ACCENT is stored as the precomposed "é".
        assert_eq!(machine_name("Cafe\u{301}").unwrap(), "Caf\u{e9}");
        assert_eq!(
            machine_name("Ada's MacBook \u{f8ff}").unwrap(),
            "Ada's MacBook \u{f8ff}"
        );
    }

    #[test]
    fn control_format_and_separator_characters_are_refused() {
        for bad in [
            "a\u{0}b",
            "bell\u{7}",
            "tab\tname",
            "mac\u{202e}koob",
            "zero\u{200b}width",
            "joiner\u{200d}",
            "bom\u{feff}",
            "iso\u{2066}late",
            "soft\u{ad}hyphen",
            "line\u{2028}sep",
        ] {
            assert!(machine_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn names_are_1_to_64_characters_after_normalising() {
        assert!(machine_name("").is_err());
        assert!(machine_name("   ").is_err());
        assert!(machine_name(&"é".repeat(64)).is_ok());
        assert!(
            machine_name(&"e\u{301}".repeat(64)).is_ok(),
            "64 once composed"
        );
        assert!(machine_name(&"x".repeat(65)).is_err());
    }
}
