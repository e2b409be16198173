//! Accounts across nodes: every connection of one user — its agents and its clients — is
//! served by one node, the user's *home*, so `list_machines`, `attach`, `data`, session
//! events, `machine_status`, ownership and agent replacement are exactly those of one node.
//!
//! `<prefix>:user:<id>` names the home. The first node to authenticate a connection of the
//! user claims it (`SET NX`); a home that is no longer a live node is taken over by the next
//! one to ask (an atomic compare-and-set, so two nodes asking at once agree). A connection
//! that authenticates on another node is tunnelled to the home (`relay::tunnel`), where a
//! virtual connection of its endpoint stands for it. The record has no expiry: while it
//! names a live node, that node may hold the user's connections; one record per user who
//! ever connected to the cluster (bounded by the users table).
//!
//! A home that goes away cuts its users' tunnels: their connections reconnect, and the
//! first to authenticate makes its node the new home.
//!
//! The REST API answers on any node: `GET /api/machines` asks the user's node for the live
//! state of the user's machines ([`STATUS`]); `DELETE /api/machines/{id}` bumps the admin
//! generation, on which every node's admin watch drops the machine's agent.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use actix::Addr;
use bytes::Bytes;
use tokio::sync::oneshot;

use super::registry::{MachineRegistry, MachineStatus};
use super::table::Live;
use super::REGISTRY_TIMEOUT;

use crate::cluster::{Cluster, ClusterError, ClusterEvent, Envelope, Inbound, SendError};
use crate::ids::{Departure, Endpoint, HashMap, MachineId, NodeId, Outcome, UserId};
use crate::relay::delivery::lock;
use crate::relay::socket::{Connection, Ctx, Protocol};
use crate::relay::tunnel::{Gateway, RemoteEvent, Sink, Tunnels};

/// How often a home lookup retries when other nodes change the record under it.
const CLAIM_TRIES: usize = 3;

/// Node → the user's node: the live state of machines; body: their ids, as a JSON array.
pub const STATUS: &str = "acct.status";
/// The user's node → the asking node: the answer, as a JSON array of [`Live`].
pub const STATUS_REPLY: &str = "acct.status_reply";
/// Most status questions waiting for an answer at once; past it, the REST call is refused
/// as unavailable.
const MAX_ASKS: usize = 1024;

type Asks = Mutex<HashMap<String, oneshot::Sender<Vec<Live>>>>;

/// This node's side of accounts across nodes; cheap to clone.
#[derive(Clone)]
pub struct Remote {
    tunnels: Tunnels,
    /// Status questions this node asked, by route.
    asks: Arc<Asks>,
}

impl Remote {
    /// Accounts across nodes over `tunnels`; answers other nodes' status questions from
    /// `machines`, on a thread of its own.
    pub fn start(tunnels: Tunnels, machines: Addr<MachineRegistry>) -> Option<Self> {
        let inbox = tunnels.cluster().inbox("acct")?;
        let remote = Self {
            tunnels,
            asks: Arc::default(),
        };
        let dispatcher = remote.clone();
        actix::Arbiter::new().spawn(async move {
            loop {
                match inbox.recv().await {
                    Inbound::Message(envelope) => dispatcher.dispatch(envelope, &machines).await,
                    // A question whose answer cannot come is given up at once.
                    Inbound::Lost(Some(routes)) => {
                        let mut asks = lock(&dispatcher.asks);
                        for route in routes {
                            asks.remove(&route);
                        }
                    }
                    Inbound::Lost(None) | Inbound::Event(ClusterEvent::Lost) => {
                        lock(&dispatcher.asks).clear()
                    }
                    Inbound::Event(_) => {}
                }
            }
        });
        Some(remote)
    }

    async fn dispatch(&self, envelope: Envelope, machines: &Addr<MachineRegistry>) {
        match envelope.kind.as_str() {
            STATUS => {
                let Ok(ids) = serde_json::from_slice::<Vec<MachineId>>(&envelope.body) else {
                    return;
                };
                let asked = machines.send(MachineStatus { machines: ids });
                let Ok(live) = asked.timeout(REGISTRY_TIMEOUT).await else {
                    return;
                };
                // unwrap: a vector of plain structs.
                let body = Bytes::from(serde_json::to_vec(&live).unwrap());
                if let Ok(reply) = Envelope::new(STATUS_REPLY, &envelope.route, body) {
                    let _ = self.tunnels.cluster().send(&envelope.from, reply);
                }
            }
            STATUS_REPLY => {
                let answer = lock(&self.asks).remove(&envelope.route);
                if let (Some(answer), Ok(live)) = (answer, serde_json::from_slice(&envelope.body)) {
                    let _ = answer.send(live);
                }
            }
            _ => {}
        }
    }

    /// The live state of `machines` as `home` (their user's node) has it; `None` if it
    /// could not be asked or did not answer within `cluster.redis_timeout_ms`.
    pub async fn status(&self, home: &NodeId, machines: &[MachineId]) -> Option<Vec<Live>> {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let route = format!(
            "{}/status/{}",
            self.tunnels.node(),
            NEXT.fetch_add(1, Relaxed)
        );
        let (tx, rx) = oneshot::channel();
        {
            let mut asks = lock(&self.asks);
            if asks.len() >= MAX_ASKS {
                return None;
            }
            asks.insert(route.clone(), tx);
        }
        // unwrap: a vector of strings.
        let body = Bytes::from(serde_json::to_vec(machines).unwrap());
        let sent = Envelope::new(STATUS, &route, body)
            .ok()
            .and_then(|ask| self.tunnels.cluster().send(home, ask).ok());
        let timeout = self.tunnels.cluster().settings().redis_timeout();
        let answer = match sent {
            Some(()) => tokio::time::timeout(timeout, rx)
                .await
                .ok()
                .and_then(Result::ok),
            None => None,
        };
        lock(&self.asks).remove(&route);
        answer.filter(|live| live.len() == machines.len())
    }

    /// The home of `user` if it is another live node; `Ok(None)` if it is this one (made
    /// so now if no live node was). An error when Redis cannot be asked.
    pub async fn home_of(&self, user: &UserId) -> Result<Option<NodeId>, ClusterError> {
        let cluster = self.tunnels.cluster();
        let key = home_key(cluster, user);
        let me = cluster.node_id().as_str();
        for _ in 0..CLAIM_TRIES {
            let claimed = match cluster.get(&key).await? {
                Some(home) if home == me => return Ok(None),
                Some(home) => match cluster.other_live(&home) {
                    Some(node) => return Ok(Some(node)),
                    // Its home is gone: take it over, unless another node just did.
                    None => cluster.replace(&key, &home, me).await?,
                },
                None => cluster.set_nx_persistent(&key, me).await?,
            };
            if claimed {
                return Ok(None);
            }
        }
        Err(ClusterError::Redis(
            "the user's home kept changing".to_owned(),
        ))
    }

    /// Opens the tunnel of connection `conn` (an agent or a client, on `endpoint`) to its
    /// user's node `home`, starting with its message `first` (see [`Tunnels::open`]); what
    /// the home sends reaches `conn` as its command. Returns the gateway it keeps.
    pub fn tunnel<P>(
        &self,
        conn: &Connection<P>,
        home: NodeId,
        endpoint: Endpoint,
        first: &[u8],
        ctx: &Ctx<P>,
    ) -> Result<Box<Gateway>, SendError>
    where
        P: Protocol,
        P::Command: From<RemoteEvent>,
    {
        let peer = conn.peer(ctx);
        let id = peer.conn;
        let sink: Sink = Box::new(move |event| peer.tell(P::Command::from(event)));
        let ip = conn.socket.client_ip();
        let route = self.tunnels.open(&home, endpoint, id, sink, ip, first)?;
        Ok(Box::new(Gateway {
            home,
            route,
            joined: true,
        }))
    }

    /// Relays one message of a tunnelled connection to its user's node.
    pub fn up(&self, gateway: &Gateway, text: Bytes) -> Result<(), SendError> {
        self.tunnels.up(&gateway.home, &gateway.route, text)
    }

    /// The tunnelled connection left.
    pub fn close(&self, gateway: &Gateway, departure: Departure) {
        self.tunnels.close(&gateway.home, &gateway.route, departure)
    }
}

/// The key naming `user`'s home node.
pub fn home_key(cluster: &Cluster, user: &UserId) -> String {
    cluster.key(&["user", user.as_str()])
}

/// What the user's node sent a tunnelled agent or client: passed on as is; its close is
/// this connection's close; a lost home cuts this connection (it reconnects, and its user
/// gets a new home). Returns whether the tunnel goes on.
pub fn from_home<P: Protocol>(
    conn: &mut Connection<P>,
    event: RemoteEvent,
    ctx: &mut Ctx<P>,
) -> bool {
    match event {
        RemoteEvent::Text(text) => {
            conn.pass_down(&text, ctx);
            true
        }
        RemoteEvent::Closed(close) => conn.closed_by_home(close, ctx),
        RemoteEvent::HomeLost => {
            conn.finish(Outcome::Lost, ctx);
            false
        }
    }
}
