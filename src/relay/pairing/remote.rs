//! Quick pairing across nodes: a browser on one node pairs with a mac on another, and
//! either side comes back to its pairing on any node.
//!
//! A code lives on the node of its mac (its *home*); [`Remote::claim`] records it in Redis
//! (`<prefix>:code:<CODE>` → home) for its lifetime and the retired-code memory, so no two
//! live codes are alike cluster-wide and a late join still reaches the node that knows
//! whether the code expired or was used. A pairing lives on the home of its code, which
//! records itself by the pairing's `sessionId` and its mac's `clientId` (`super::homes`).
//!
//! A browser whose `join` names a code homed elsewhere, or whose `resume` names a pairing
//! homed elsewhere, and a mac whose `register` names a pairing homed elsewhere, are
//! *tunnelled* there (`relay::tunnel`), where a virtual `PairSocket` stands for them.
//! A home that goes away (down or left) takes its pairings with it: its gateways treat the
//! partner as lost (`RemoteEvent::HomeLost`, see `socket/gateway.rs`).

use std::net::IpAddr;
use std::time::Duration;

use bytes::Bytes;
use serde::Deserialize;

use super::command::ToConn;
use super::homes::{self, Kind};
use crate::cluster::SendError;
use crate::ids::{Departure, Endpoint, NodeId, Role};
use crate::relay::delivery::Peer;
use crate::relay::tunnel::{RemoteEvent, Tunnels};

/// This node's side of cross-node pairing; cheap to clone.
#[derive(Clone)]
pub struct Remote {
    tunnels: Tunnels,
    /// Code lifetime plus retired-code memory: how long a code's home is remembered.
    code_memory: Duration,
}

impl Remote {
    /// Cross-node pairing over `tunnels`; a code's home is remembered for `code_memory`.
    pub fn new(tunnels: Tunnels, code_memory: Duration) -> Self {
        Self {
            tunnels,
            code_memory,
        }
    }

    /// Records `code` as issued here, unless a live or remembered code is alike:
    /// `Ok(false)` then, and the mac needs another.
    pub async fn claim(&self, code: &str) -> Result<bool, crate::cluster::ClusterError> {
        let cluster = self.tunnels.cluster();
        let key = cluster.key(&["code", code]);
        cluster
            .set_nx(&key, cluster.node_id().as_str(), self.code_memory)
            .await
    }

    /// The node a code typed by a browser lives on, if it is another live node; an error
    /// if Redis could not be asked (then the code may well be another node's).
    pub async fn home_of(
        &self,
        typed: &str,
    ) -> Result<Option<NodeId>, crate::cluster::ClusterError> {
        let code = typed.trim().to_uppercase();
        if code.is_empty() || code.len() > 64 || !code.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Ok(None);
        }
        let cluster = self.tunnels.cluster();
        cluster.node_at(&cluster.key(&["code", &code])).await
    }

    /// The home of the pairing a `sessionId` or `clientId` (as its cluster key) names, if
    /// it is another live node; an error if Redis could not be asked.
    pub async fn find(
        &self,
        kind: Kind,
        key: &str,
    ) -> Result<Option<NodeId>, crate::cluster::ClusterError> {
        homes::find(self.tunnels.cluster(), kind, key).await
    }

    /// Opens a tunnel for the side `peer` (a `role`) to `home`, starting with its message
    /// `first`. Returns the tunnel's route.
    pub fn open(
        &self,
        home: &NodeId,
        peer: Peer<ToConn>,
        role: Role,
        ip: IpAddr,
        first: &[u8],
    ) -> Result<String, SendError> {
        let endpoint = match role {
            Role::Mac => Endpoint::Mac,
            Role::Browser => Endpoint::Browser,
        };
        let conn = peer.conn;
        let sink = Box::new(move |event: RemoteEvent| peer.tell(ToConn::Remote(event)));
        self.tunnels.open(home, endpoint, conn, sink, ip, first)
    }

    /// Relays one message of a tunnelled side to its home.
    pub fn up(&self, home: &NodeId, route: &str, text: Bytes) -> Result<(), SendError> {
        self.tunnels.up(home, route, text)
    }

    /// The tunnelled side left (or its tunnel is given up: [`Departure::Clean`]).
    pub fn close(&self, home: &NodeId, route: &str, departure: Departure) {
        self.tunnels.close(home, route, departure)
    }
}

/// Whether a message from the home is the `error` that ends a browser's pairing.
pub fn ends_pairing(text: &[u8]) -> bool {
    #[derive(Deserialize)]
    struct Error<'a> {
        #[serde(borrow)]
        code: &'a str,
    }
    serde_json::from_slice::<Error<'_>>(text)
        .is_ok_and(|error| matches!(error.code, "MAC_DISCONNECTED" | "BROWSER_DISCONNECTED"))
}
