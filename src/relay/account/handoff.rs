//! Accounts' part in a rolling restart (see `relay::handoff`): a node that leaves hands
//! each user whose home it is — the user's agents and lossless clients, all away once the
//! node closed its connections (moved: sure to come back), with their sessions,
//! attachments and streams (what was held, the replay windows, the sequence numbers) — to
//! another node, which installs them away for a full resume grace and becomes the user's
//! home (`<prefix>:user:<id>`, taken over from the leaving node by compare-and-set). An
//! agent then comes back there as a replacement does (`register`, `sessions`; in lossless
//! mode `resume` with `lastSeq`), and each lossless client resumes (`auth` with its
//! `clientId`, `attach` with `lastSeq`), wherever they reconnect.
//!
//! Plain clients are not handed over (nothing names them on a new connection): as after a
//! lost link, their attachments end, and they attach again on the user's new home.

use std::sync::Arc;

use actix::Addr;

use super::registry::{AdoptUser, ExportUsers, MachineRegistry, UserHandoff};
use super::remote::home_key;
use super::REGISTRY_TIMEOUT;
use crate::cluster::Cluster;
use crate::ids::NodeId;
use crate::relay::handoff::Product;

/// This node's users, as a rolling restart hands them over.
pub struct Users {
    /// The cluster, where the adopting node records itself as each user's home.
    pub cluster: Arc<Cluster>,
    /// The registry that holds them.
    pub registry: Addr<MachineRegistry>,
}

impl Product for Users {
    const TOPIC: &'static str = "user";
    type Unit = UserHandoff;

    async fn leave(&self) {
        // Nothing to stop: a lossless side keeps what it is sent until it acknowledges it,
        // so delivering on until the close loses nothing.
    }

    async fn export(&self) -> Vec<UserHandoff> {
        let exported = self
            .registry
            .send(ExportUsers)
            .timeout(REGISTRY_TIMEOUT)
            .await;
        exported.unwrap_or_default()
    }

    async fn adopt(&self, handoff: UserHandoff, from: &NodeId) -> bool {
        let user = handoff.table.user.clone();
        let adopted = self
            .registry
            .send(AdoptUser(handoff))
            .timeout(REGISTRY_TIMEOUT);
        if !matches!(adopted.await, Ok(true)) {
            return false;
        }
        let key = home_key(&self.cluster, &user);
        let me = self.cluster.node_id().as_str();
        let recorded = self
            .cluster
            .replace(&key, from.as_str(), me)
            .await
            .unwrap_or(false);
        tracing::info!(%user, %from, recorded, "user adopted");
        recorded
    }
}
