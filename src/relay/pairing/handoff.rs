//! Quick pairing's part in a rolling restart (see `relay::handoff`): a node that leaves
//! stops delivering to its sides (what comes is held), takes a side that closes from then
//! on for away, and hands every pairing — held frames, replay windows, sequence numbers —
//! to another node, which installs it with both sides away and a full resume grace and
//! records itself as its home (`super::homes`).

use std::sync::Arc;

use actix::Addr;

use super::homes;
use super::pipes::Handoff;
use super::registry::{Adopt, Export, Leave, SessionRegistry};
use super::REGISTRY_TIMEOUT;
use crate::cluster::Cluster;
use crate::ids::{NodeId, PairingId};
use crate::relay::handoff::Product;

/// This node's pairings, as a rolling restart hands them over.
pub struct Pairings {
    /// The cluster, where the adopting node records itself as each pairing's home.
    pub cluster: Arc<Cluster>,
    /// The registry that holds them.
    pub registry: Addr<SessionRegistry>,
}

impl Product for Pairings {
    const TOPIC: &'static str = "pair";
    type Unit = Handoff;

    async fn leave(&self) {
        let _ = self.registry.send(Leave).timeout(REGISTRY_TIMEOUT).await;
    }

    async fn export(&self) -> Vec<Handoff> {
        let exported = self.registry.send(Export).timeout(REGISTRY_TIMEOUT).await;
        exported.unwrap_or_default()
    }

    async fn adopt(&self, handoff: Handoff, from: &NodeId) -> bool {
        let Some(session) = PairingId::parse(&handoff.session) else {
            return false;
        };
        let client = handoff.client.clone();
        let adopted = self.registry.send(Adopt(handoff)).timeout(REGISTRY_TIMEOUT);
        if !matches!(adopted.await, Ok(true)) {
            return false;
        }
        let recorded = homes::record_now(&self.cluster, &session, client.as_ref())
            .await
            .is_ok();
        tracing::info!(pairing = %session.fingerprint(), %from, recorded, "pairing adopted");
        recorded
    }
}
