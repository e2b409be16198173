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
//! Writes are fire-and-forget from the registry's thread, each bounded by
//! `cluster.redis_timeout_ms`, at most [`MAX_WRITES`] at once (past it, a write is skipped
//! and counted: the side can still resume on its home node).

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use crate::cluster::{Cluster, ClusterError};
use crate::ids::{ClientKey, NodeId, PairingId};
use crate::metrics::METRICS;

/// How long a record lives after its last write. A pairing older than this whose sides
/// never went away has no record until one does (the write at that moment renews it).
pub const RECORD_TTL: Duration = Duration::from_secs(24 * 3600);

/// Most record writes in flight at once.
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
        self.write(Kind::Pairing, session.cluster_key());
        if let Some(client) = client {
            self.write(Kind::Client, client.cluster_key());
        }
    }

    fn write(&self, kind: Kind, id: String) {
        if self.writes.fetch_add(1, Relaxed) >= MAX_WRITES {
            self.writes.fetch_sub(1, Relaxed);
            METRICS.cluster.dropped("home_record");
            return;
        }
        let (cluster, writes) = (Arc::clone(&self.cluster), Arc::clone(&self.writes));
        actix_rt::spawn(async move {
            let key = cluster.key(&[kind.as_str(), &id]);
            if let Err(err) = cluster
                .set(&key, cluster.node_id().as_str(), RECORD_TTL)
                .await
            {
                tracing::debug!(%err, "could not record a pairing's home");
            }
            writes.fetch_sub(1, Relaxed);
        });
    }
}

/// The home of the pairing a `kind` id names, if it is another live node; an error if
/// Redis could not be asked.
pub async fn find(
    cluster: &Cluster,
    kind: Kind,
    key: &str,
) -> Result<Option<NodeId>, ClusterError> {
    let Some(home) = cluster.get(&cluster.key(&[kind.as_str(), key])).await? else {
        return Ok(None);
    };
    Ok(NodeId::parse(&home)
        .filter(|home| home != cluster.node_id() && cluster.nodes().contains(home)))
}
