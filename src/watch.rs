//! How a running relay learns, within a few seconds, what the admin commands changed —
//! and, on the way, whether its database answers.
//!
//! Every admin command that disables or deletes a user or revokes a machine writes a fresh
//! random generation into the one row of `admin_generation`, in the same transaction as
//! the change. Every `admin.poll_interval_ms` (2 s by default) the relay reads that row
//! (one primary-key read, whatever the size of the relay). Only when it differs from the
//! last one seen does the relay compare who is online — users with a client or an agent,
//! machines with an agent, as the `MachineRegistry` knows them — with the database, in
//! primary-key look-ups of at most [`CHUNK`] ids, and then close the clients and agents of
//! users who are disabled or gone, and drop the agents of machines that are gone (as
//! `DELETE /api/machines/{id}` does). Comparing states rather than replaying events means
//! nothing is missed if a poll fails or a change lands mid-comparison: the generation is
//! read *before* the comparison, so a change after it is seen on the next poll.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use actix::Addr;

use crate::config::Live;
use crate::db::{self, Pool};
use crate::models::{admin_generation, machine, user};
use crate::relay::account::registry::{DropMachine, DropUser, MachineRegistry, WhoIsOnline};

/// Ids per look-up: bounds each query's size whatever the number online.
const CHUNK: usize = 500;
/// How long the watcher waits for the registry.
const REGISTRY_TIMEOUT: Duration = Duration::from_secs(5);

/// Whether the database answered the last poll, and when that was (for `GET /`).
#[derive(Debug, Default)]
pub struct DatabaseHealth {
    reachable: AtomicBool,
    /// Milliseconds since the Unix epoch of the last poll; 0: none yet.
    checked_ms: AtomicU64,
}

impl DatabaseHealth {
    fn record(&self, reachable: bool) {
        self.reachable.store(reachable, Relaxed);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis() as u64;
        self.checked_ms.store(now, Relaxed);
    }

    /// `None` before the first poll; else whether it answered, and how long ago.
    pub fn last(&self) -> Option<(bool, Duration)> {
        let checked = self.checked_ms.load(Relaxed);
        if checked == 0 {
            return None;
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis() as u64;
        let ago = Duration::from_millis(now.saturating_sub(checked));
        Some((self.reachable.load(Relaxed), ago))
    }
}

/// Starts the watcher on the current actix system.
pub fn spawn(
    pool: Pool,
    registry: Addr<MachineRegistry>,
    settings: Live,
    health: Arc<DatabaseHealth>,
) {
    actix_rt::spawn(async move {
        let mut seen: Option<String> = None;
        loop {
            actix_rt::time::sleep(settings.get().admin.poll_interval()).await;
            let generation = db::run(&pool, |conn| Ok(admin_generation::current(conn)?)).await;
            health.record(generation.is_ok());
            let generation = match generation {
                Ok(Some(generation)) => generation,
                // Unreachable (logged by `db::run`), or not migrated yet: try again later.
                Ok(None) | Err(_) => continue,
            };
            if seen.as_ref() == Some(&generation) {
                continue;
            }
            match reconcile(&pool, &registry).await {
                Ok(()) => seen = Some(generation),
                Err(err) => tracing::warn!(%err, "could not apply admin changes; retrying"),
            }
        }
    });
}

/// Closes what the database no longer allows: clients and agents of users disabled or
/// deleted, agents of machines deleted.
async fn reconcile(pool: &Pool, registry: &Addr<MachineRegistry>) -> Result<(), String> {
    let online = registry
        .send(WhoIsOnline)
        .timeout(REGISTRY_TIMEOUT)
        .await
        .map_err(|err| err.to_string())?;
    if online.users.is_empty() && online.machines.is_empty() {
        return Ok(());
    }
    let users: Vec<String> = online.users.iter().map(ToString::to_string).collect();
    let machines: Vec<String> = online.machines.iter().map(ToString::to_string).collect();
    let (active, existing) = db::run(pool, move |conn| {
        let mut active = HashSet::new();
        for chunk in users.chunks(CHUNK) {
            active.extend(user::active_among(conn, chunk)?);
        }
        let mut existing = HashSet::new();
        for chunk in machines.chunks(CHUNK) {
            existing.extend(machine::existing_among(conn, chunk)?);
        }
        Ok((active, existing))
    })
    .await
    .map_err(|err| err.to_string())?;
    for user in online.users {
        if !active.contains(user.as_str()) {
            tracing::info!(%user, "user disabled or deleted: closing its connections");
            registry.do_send(DropUser { user });
        }
    }
    for machine in online.machines {
        if !existing.contains(machine.as_str()) {
            tracing::info!(%machine, "machine revoked: dropping its agent");
            registry.do_send(DropMachine { machine });
        }
    }
    Ok(())
}
