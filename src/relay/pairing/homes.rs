//! Where a pairing lives, recorded in a cluster's Redis so that its sides can come back on
//! any node: `<prefix>:pairing:<key>` (by the `sessionId`, for a browser's `resume`) and
//! `<prefix>:client:<key>` (by the mac's resumable `clientId`, for its `register`), each
//! naming the pairing's *home* node. Keys are a hash of the secret (see
//! [`PairingId::cluster_key`]): what Redis holds cannot resume anything.
//!
//! The home writes both when the pairing is made, again when a side goes away or comes back
//! (refreshing their lifetime, [`RECORD_TTL`]); a side that comes back to another node finds
//! its home there and is tunnelled to it (`super::remote`). A record outliving its pairing
//! is harmless: the home answers as one node would (`INVALID_CODE`, a fresh code).
//!
//! The registry's records are fire-and-forget from its thread, each Redis write bounded by
//! `cluster.redis_timeout_ms`, at most [`MAX_WRITES`] records at once (past it, a record is
//! skipped and counted: the side can still resume on its home node). A hand-off records
//! at once ([`record_now`]), before it says the pairing is adopted.

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use crate::cluster::{Cluster, ClusterError};
use crate::ids::{ClientKey, NodeId, PairingId};
use crate::metrics::METRICS;

/// How long a record lives after its last write. A pairing older than this whose sides
/// never went away has no record until one does (the write at that moment renews it).
pub const RECORD_TTL: Duration = Duration::from_secs(24 * 3600);

/// Most records being written at once.
const MAX_WRITES: usize = 1024;

/// What kind of id a record is found by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A pairing's `sessionId` (a browser's `resume`).
    Pairing,
    /// A mac's `clientId` (its `register`).
    Client,
}

impl Kind {
    /// Its part of the record's key.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pairing => "pairing",
            Self::Client => "client",
        }
    }
}

/// Records this node as the home of its pairings; cheap to clone.
#[derive(Clone)]
pub struct Homes {
    cluster: Arc<Cluster>,
    writes: Arc<AtomicUsize>,
}

impl Homes {
    /// Records through `cluster`.
    pub fn new(cluster: Arc<Cluster>) -> Self {
        Self {
            cluster,
            writes: Arc::default(),
        }
    }

    /// Records this node as the home of `session` (and of its mac's `client`, if any).
    /// Returns at once; the writes run on the current thread's runtime.
    pub fn record(&self, session: &PairingId, client: Option<&ClientKey>) {
        if self.writes.fetch_add(1, Relaxed) >= MAX_WRITES {
            self.writes.fetch_sub(1, Relaxed);
            METRICS.cluster.dropped("home_record");
            return;
        }
        let (cluster, writes) = (Arc::clone(&self.cluster), Arc::clone(&self.writes));
        let (session, client) = (*session, client.cloned());
        actix_rt::spawn(async move {
            if let Err(err) = record_now(&cluster, &session, client.as_ref()).await {
                tracing::debug!(%err, "could not record a pairing's home");
            }
            writes.fetch_sub(1, Relaxed);
        });
    }
}

/// Records this node as the home of `session` (and of its mac's `client`, if any), now.
pub async fn record_now(
    cluster: &Cluster,
    session: &PairingId,
    client: Option<&ClientKey>,
) -> Result<(), ClusterError> {
    let me = cluster.node_id().as_str();
    let pairing = cluster.key(&[Kind::Pairing.as_str(), &session.cluster_key()]);
    cluster.set(&pairing, me, RECORD_TTL).await?;
    if let Some(client) = client {
        let client = cluster.key(&[Kind::Client.as_str(), &client.cluster_key()]);
        cluster.set(&client, me, RECORD_TTL).await?;
    }
    Ok(())
}

/// The home of the pairing a `kind` id names, if it is another live node; an error if
/// Redis could not be asked.
pub async fn find(
    cluster: &Cluster,
    kind: Kind,
    key: &str,
) -> Result<Option<NodeId>, ClusterError> {
    cluster.node_at(&cluster.key(&[kind.as_str(), key])).await
}
