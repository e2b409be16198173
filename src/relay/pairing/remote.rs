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
//! *tunnelled* there: their node (the *gateway*) relays their text messages, as they are,
//! to the home ([`UP`]), where a virtual connection stands for them — a real `PairSocket`
//! over a loopback socket, so every rule, error code and close code is the one of a single
//! node. What the home's socket writes comes back ([`DOWN`]), and so does its close frame
//! ([`CLOSE`]); when the side leaves, the gateway says so ([`GONE`]): a close frame then
//! reaches the virtual connection, a lost connection cuts it (the resume grace applies).
//!
//! A home that goes away (down or left) takes its pairings with it: its gateways treat the
//! partner as lost ([`RemoteEvent::HomeLost`]). This node cut from Redis cuts its tunnels.

mod tunnel;

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use actix::Addr;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::command::{RemoteEvent, ToConn};
use super::homes::{self, Kind};
use super::registry::SessionRegistry;
use crate::cluster::{Cluster, ClusterEvent, Envelope, Inbound, SendError};
use crate::config::Live;
use crate::connections::Connections;
use crate::ids::{ConnId, HashMap, NodeId, Role};
use crate::limits::Limiters;
use crate::relay::delivery::Peer;

/// Gateway → home: open a virtual connection for a browser; body: [`Open`] as JSON.
pub const OPEN: &str = "pair.open";
/// Gateway → home: one text message of the browser, as is.
pub const UP: &str = "pair.up";
/// Home → gateway: one text message for the browser, as is.
pub const DOWN: &str = "pair.down";
/// Home → gateway: the virtual connection closed; body: `<code> <reason>`, or empty when
/// it was cut without a close frame.
pub const CLOSE: &str = "pair.close";
/// Gateway → home: the browser left; body `clean` (it sent a close frame) or `lost`.
pub const GONE: &str = "pair.gone";

/// Messages waiting for one virtual connection's tunnel; past it, the tunnel is cut.
const TUNNEL_QUEUE: usize = 1024;

/// The first message of a tunnel.
#[derive(Debug, Serialize, Deserialize)]
pub struct Open {
    /// The side's address (its limits and logs on the home node).
    pub ip: IpAddr,
    /// A mac (on `/mac`); otherwise a browser.
    #[serde(default)]
    pub mac: bool,
    /// The side's message that opened the tunnel (`join`, `resume` or `register`).
    pub first: String,
}

/// What the home's tunnel task is told.
#[derive(Debug)]
pub enum TunnelIn {
    /// A message from the browser.
    Text(Bytes),
    /// The browser left: with a close frame, or lost.
    Gone {
        /// It sent a close frame.
        clean: bool,
    },
}

/// What starts a virtual connection on this node.
#[derive(Clone)]
pub struct Home {
    /// The settings a new connection takes.
    pub settings: Live,
    /// Admission and shutdown.
    pub connections: Arc<Connections>,
    /// The pairing registry.
    pub registry: Addr<SessionRegistry>,
    /// Attempt limits.
    pub limiters: Arc<Limiters>,
}

/// This node's side of cross-node pairing; cheap to clone.
#[derive(Clone)]
pub struct Remote(Arc<Inner>);

struct Inner {
    cluster: Arc<Cluster>,
    /// Browsers here tunnelled to a home elsewhere, by route.
    gateways: Mutex<HashMap<String, (NodeId, Peer<ToConn>)>>,
    /// Virtual connections here for browsers elsewhere, by route: the gateway, the tunnel.
    tunnels: Mutex<HashMap<String, (NodeId, mpsc::Sender<TunnelIn>)>>,
    /// Code lifetime plus retired-code memory: how long a code's home is remembered.
    code_memory: Duration,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poison| poison.into_inner())
}

impl Remote {
    /// Starts reading the cluster's inbox for cross-node pairing, on a thread of its own.
    pub fn start(cluster: Arc<Cluster>, home: Home) -> Option<Self> {
        let inbox = cluster.inbox("pair")?;
        let pairing = &home.settings.get().pairing;
        let code_memory = pairing.code_ttl() + pairing.retired_code_memory();
        let remote = Self(Arc::new(Inner {
            cluster,
            gateways: Mutex::default(),
            tunnels: Mutex::default(),
            code_memory,
        }));
        let dispatcher = remote.clone();
        actix::Arbiter::new().spawn(async move {
            loop {
                let item = inbox.recv().await;
                dispatcher.dispatch(item, &home).await;
            }
        });
        Some(remote)
    }

    /// This node's id.
    pub fn node(&self) -> &NodeId {
        self.0.cluster.node_id()
    }

    /// Records `code` as issued here, unless a live or remembered code is alike:
    /// `Ok(false)` then, and the mac needs another.
    pub async fn claim(&self, code: &str) -> Result<bool, crate::cluster::ClusterError> {
        let cluster = &self.0.cluster;
        let key = cluster.key(&["code", code]);
        cluster
            .set_nx(&key, cluster.node_id().as_str(), self.0.code_memory)
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
        let cluster = &self.0.cluster;
        let Some(home) = cluster.get(&cluster.key(&["code", &code])).await? else {
            return Ok(None);
        };
        Ok(NodeId::parse(&home)
            .filter(|home| home != cluster.node_id() && cluster.nodes().contains(home)))
    }

    /// The home of the pairing a `sessionId` or `clientId` (as its cluster key) names, if
    /// it is another live node.
    pub async fn find(&self, kind: Kind, key: &str) -> Option<NodeId> {
        homes::find(&self.0.cluster, kind, key).await
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
        let route = route(self.node(), peer.conn);
        let open = Open {
            ip,
            mac: role == Role::Mac,
            first: String::from_utf8_lossy(first).into_owned(),
        };
        // unwrap: an `Open` is a plain struct of strings.
        let body = serde_json::to_vec(&open).unwrap();
        lock(&self.0.gateways).insert(route.clone(), (home.clone(), peer));
        let sent = self.send(home, OPEN, &route, Bytes::from(body));
        if sent.is_err() {
            lock(&self.0.gateways).remove(&route);
        }
        sent.map(|()| route)
    }

    /// Relays one message of a tunnelled browser to its home.
    pub fn up(&self, home: &NodeId, route: &str, text: Bytes) -> Result<(), SendError> {
        self.send(home, UP, route, text)
    }

    /// The tunnelled browser left (or its tunnel is given up: `clean`).
    pub fn close(&self, home: &NodeId, route: &str, clean: bool) {
        lock(&self.0.gateways).remove(route);
        let body = if clean { "clean" } else { "lost" };
        let _ = self.send(home, GONE, route, Bytes::from_static(body.as_bytes()));
    }

    fn send(&self, to: &NodeId, kind: &str, route: &str, body: Bytes) -> Result<(), SendError> {
        let envelope = Envelope::new(kind, route, body).map_err(|_| SendError::Full)?;
        self.0.cluster.send(to, envelope)
    }

    /// Handles one item of the inbox.
    async fn dispatch(&self, item: Inbound, home: &Home) {
        match item {
            Inbound::Message(envelope) => match envelope.kind.as_str() {
                OPEN => tunnel::open(self, envelope, home).await,
                UP => self.to_tunnel(&envelope.route, TunnelIn::Text(envelope.body)),
                GONE => {
                    let clean = envelope.body.as_ref() == b"clean";
                    self.to_tunnel(&envelope.route, TunnelIn::Gone { clean });
                }
                DOWN => self.to_gateway(&envelope.route, RemoteEvent::Text(envelope.body)),
                CLOSE => {
                    let close = std::str::from_utf8(&envelope.body)
                        .ok()
                        .and_then(|text| text.split_once(' '))
                        .and_then(|(code, reason)| Some((code.parse().ok()?, reason.to_owned())));
                    self.to_gateway(&envelope.route, RemoteEvent::Closed(close));
                    lock(&self.0.gateways).remove(&envelope.route);
                }
                _ => {}
            },
            Inbound::Event(ClusterEvent::NodeDown(node) | ClusterEvent::NodeLeft(node)) => {
                self.cut(|other| *other == node, || RemoteEvent::HomeLost)
            }
            Inbound::Event(ClusterEvent::Lost) => self.cut(|_| true, || RemoteEvent::Closed(None)),
            Inbound::Event(_) => {}
            Inbound::Lost(Some(routes)) => {
                for route in routes {
                    self.cut_route(&route);
                }
            }
            Inbound::Lost(None) => self.cut(|_| true, || RemoteEvent::Closed(None)),
        }
    }

    fn to_tunnel(&self, route: &str, message: TunnelIn) {
        let mut tunnels = lock(&self.0.tunnels);
        let Some((_, tunnel)) = tunnels.get(route) else {
            return;
        };
        if tunnel.try_send(message).is_err() {
            // Its virtual connection cannot keep up: dropping the sender cuts it.
            tunnels.remove(route);
        }
    }

    fn to_gateway(&self, route: &str, event: RemoteEvent) {
        if let Some((_, peer)) = lock(&self.0.gateways).get(route) {
            peer.tell(ToConn::Remote(event));
        }
    }

    /// Cuts every tunnel through a node for which `lost` holds, telling each tunnelled side
    /// `event`.
    fn cut(&self, lost: impl Fn(&NodeId) -> bool, event: impl Fn() -> RemoteEvent) {
        lock(&self.0.tunnels).retain(|_, (gateway, _)| !lost(gateway));
        let mut gateways = lock(&self.0.gateways);
        gateways.retain(|_, (home, peer)| {
            if lost(home) {
                peer.tell(ToConn::Remote(event()));
            }
            !lost(home)
        });
    }

    fn cut_route(&self, route: &str) {
        lock(&self.0.tunnels).remove(route);
        if let Some((_, peer)) = lock(&self.0.gateways).remove(route) {
            peer.tell(ToConn::Remote(RemoteEvent::Closed(None)));
        }
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

/// A tunnel's name, unique in the cluster: the gateway node, the browser's connection and
/// the tunnel's number (one browser may open several tunnels, one after the other).
fn route(node: &NodeId, conn: ConnId) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let n = NEXT.fetch_add(1, Relaxed);
    format!("{node}/{conn}/{n}")
}
