//! Tunnels between nodes: a connection on one node (the *gateway*) that belongs on another
//! (its *home*: where its code, pairing or user lives) is relayed there as is.
//!
//! The gateway sends the side's first message ([`OPEN`]) and then each text message
//! ([`UP`]) to the home, where a virtual connection stands for it — a real connection actor
//! of its endpoint with no socket of its own (see `home.rs`), so every rule, error code and
//! close code is the one of a single node. What the virtual connection writes comes back
//! ([`DOWN`]), and so does its close frame ([`CLOSE`]); when the side leaves, the gateway
//! says so ([`GONE`]): a close frame then reaches the virtual connection, a lost connection
//! cuts it (any resume grace applies there). Either end that cuts a tunnel (its link broke,
//! what it sent was lost, its virtual connection could not keep up) tells the other.
//!
//! A home that goes away (down, or left) takes what it held with it: its gateways are told
//! [`RemoteEvent::HomeLost`]. This node cut from Redis cuts its tunnels both ways.
//!
//! Both products use it (quick pairing: `relay::pairing::remote`; accounts:
//! `relay::account::remote`); it knows neither — what a virtual connection is, is the
//! [`Starter`] the node gives it.

mod home;

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::delivery::lock;
use super::socket::{Connection, Ctx, Opened, Protocol};
use crate::cluster::{Cluster, ClusterEvent, Envelope, Inbound as ClusterInbound, SendError};
use crate::config::Live;
use crate::connections::Connections;
use crate::ids::{ConnId, Departure, Endpoint, HashMap, NodeId, Outcome};
use crate::metrics::cluster::TunnelEnd;
use crate::metrics::METRICS;
use crate::transport::{Intake, Refused};
use crate::workers::Workers;

/// Gateway → home: open a virtual connection; body: [`Open`] as JSON.
pub const OPEN: &str = "tun.open";
/// Gateway → home: one text message of the side, as is.
pub const UP: &str = "tun.up";
/// Home → gateway: one text message for the side, as is.
pub const DOWN: &str = "tun.down";
/// Home → gateway: the virtual connection closed; body: `<code> <reason>`, or empty when
/// it was cut without a close frame.
pub const CLOSE: &str = "tun.close";
/// Gateway → home: the side left; body `clean` (it sent a close frame), `lost`, or `moved`
/// (the gateway is leaving: the side comes back on another node). See [`Departure`].
pub const GONE: &str = "tun.gone";

/// Messages waiting for one virtual connection; past it, its tunnel is cut.
const TUNNEL_QUEUE: usize = 1024;

/// What the home of a tunnelled side sent it.
#[derive(Debug)]
pub enum RemoteEvent {
    /// A text message for the side, as is.
    Text(Bytes),
    /// The home closed the connection: with this close code and reason, or (`None`) cut.
    Closed(Option<(u16, String)>),
    /// The home itself went away (down, or left): what it held is gone with it.
    HomeLost,
}

/// How a gateway hands a tunnelled side what its home sent.
pub type Sink = Box<dyn Fn(RemoteEvent) + Send>;

/// Starts the connection actor of a virtual connection for `endpoint`; it must not tunnel
/// further (its gateway applied the attempt limits and looked its home up).
pub type Starter = Arc<dyn Fn(Endpoint, Opened, &Tunnels) + Send + Sync>;

/// The first message of a tunnel.
#[derive(Debug, Serialize, Deserialize)]
struct Open {
    /// The side's address (its limits and logs on the home node).
    ip: IpAddr,
    /// Its endpoint, as its path (`/mac`, `/browser`, `/ws/agent`, `/ws/client`).
    endpoint: String,
    /// The side's message that opened the tunnel, as it sent it (or re-encoded).
    first: String,
}

/// The home's end of one tunnel, as its gateway's messages reach it.
struct Tunnel {
    /// The side's node.
    gateway: NodeId,
    /// When it was opened (see [`ClusterEvent::Broken`]).
    opened: Instant,
    /// The virtual connection's way in: the side's messages go straight into it.
    queue: Intake,
    /// The side's departure, for the tunnel's task (it closes the virtual connection).
    control: mpsc::Sender<Departure>,
}

/// The gateway's end of one tunnel.
struct Gate {
    /// The side's home node.
    home: NodeId,
    /// When it was opened (see [`ClusterEvent::Broken`]).
    opened: Instant,
    /// Where what the home sends goes.
    sink: Sink,
}

/// What starts a virtual connection on this node.
pub struct Home {
    /// The settings a new connection takes.
    pub settings: Live,
    /// Admission and shutdown.
    pub connections: Arc<Connections>,
    /// The connection actors, by endpoint.
    pub start: Starter,
    /// Where they run.
    pub workers: Workers,
}

/// The most lanes a route names (see [`lane_of`]).
const MAX_LANE: usize = crate::workers::MAX_LANES;

/// This node's tunnels, both ends; cheap to clone.
#[derive(Clone)]
pub struct Tunnels(Arc<Inner>);

struct Inner {
    cluster: Arc<Cluster>,
    /// Sides here tunnelled to a home elsewhere, by route.
    gateways: Mutex<Held<Gate>>,
    /// Virtual connections here for sides elsewhere, by route.
    tunnels: Mutex<Held<Tunnel>>,
}

/// One end's tunnels by route, counted in `hermit_cluster_tunnels` as they come and go.
struct Held<T> {
    by_route: HashMap<String, T>,
    end: TunnelEnd,
}

impl<T> Held<T> {
    fn new(end: TunnelEnd) -> Self {
        Self {
            by_route: HashMap::default(),
            end,
        }
    }

    /// Moves the gauge by `by` tunnels.
    fn counted(&self, by: i64) {
        METRICS.cluster.tunnels_changed(self.end, by);
    }

    fn insert(&mut self, route: String, end: T) {
        if self.by_route.insert(route, end).is_none() {
            self.counted(1);
        }
    }

    fn remove(&mut self, route: &str) -> Option<T> {
        let end = self.by_route.remove(route);
        self.counted(-i64::from(end.is_some()));
        end
    }

    fn get(&self, route: &str) -> Option<&T> {
        self.by_route.get(route)
    }

    fn retain(&mut self, keep: impl FnMut(&String, &mut T) -> bool) {
        let before = self.by_route.len();
        self.by_route.retain(keep);
        self.counted(self.by_route.len() as i64 - before as i64);
    }
}

impl<T> Drop for Held<T> {
    fn drop(&mut self) {
        self.counted(-(self.by_route.len() as i64));
    }
}

impl Tunnels {
    /// Starts handling tunnels: what arrives on a lane other than 0 (a tunnel whose
    /// gateway side runs on a worker: nearly all) is handled on the worker that reads the
    /// lane, where the tunnel's other end runs too (see `crate::workers`); the rest — lane
    /// 0, the cluster's events, lost routes — is read from the inbox on the cluster's own
    /// thread, where lane 0 is read and written.
    pub fn start(cluster: Arc<Cluster>, home: Home) -> Option<Self> {
        let inbox = cluster.inbox("tun")?;
        let tunnels = Self(Arc::new(Inner {
            cluster: Arc::clone(&cluster),
            gateways: Mutex::new(Held::new(TunnelEnd::Gateway)),
            tunnels: Mutex::new(Held::new(TunnelEnd::Home)),
        }));
        let home = Arc::new(home);
        let (dispatcher, at_home) = (tunnels.clone(), Arc::clone(&home));
        if !cluster.direct(
            "tun",
            Arc::new(move |item| dispatcher.dispatch(item, &at_home)),
        ) {
            return None;
        }
        let dispatcher = tunnels.clone();
        let dispatching = cluster.spawn(async move {
            loop {
                let item = inbox.recv().await;
                dispatcher.dispatch(item, &home);
            }
        });
        dispatching.then_some(tunnels)
    }

    /// The cluster they run through.
    pub fn cluster(&self) -> &Arc<Cluster> {
        &self.0.cluster
    }

    /// This node's id.
    pub fn node(&self) -> &NodeId {
        self.0.cluster.node_id()
    }

    /// Opens a tunnel for connection `conn` on `endpoint` to `home`, starting with its
    /// message `first`; what the home sends reaches `sink`. Returns the tunnel's route.
    pub fn open(
        &self,
        home: &NodeId,
        endpoint: Endpoint,
        conn: ConnId,
        sink: Sink,
        ip: IpAddr,
        first: &[u8],
    ) -> Result<String, SendError> {
        let route = route(self.node(), conn);
        let open = Open {
            ip,
            endpoint: endpoint.as_str().to_owned(),
            first: String::from_utf8_lossy(first).into_owned(),
        };
        // unwrap: an `Open` is a plain struct of strings.
        let body = serde_json::to_vec(&open).unwrap();
        let gate = Gate {
            home: home.clone(),
            opened: Instant::now(),
            sink,
        };
        lock(&self.0.gateways).insert(route.clone(), gate);
        let sent = self.send(home, OPEN, &route, Bytes::from(body));
        if sent.is_err() {
            lock(&self.0.gateways).remove(&route);
        }
        sent.map(|()| route)
    }

    /// Relays one message of a tunnelled side to its home.
    pub fn up(&self, home: &NodeId, route: &str, text: Bytes) -> Result<(), SendError> {
        self.send(home, UP, route, text)
    }

    /// The tunnelled side left (or its tunnel is given up: [`Departure::Clean`]).
    pub fn close(&self, home: &NodeId, route: &str, departure: Departure) {
        lock(&self.0.gateways).remove(route);
        let body = Bytes::from_static(departure.as_str().as_bytes());
        let _ = self.send(home, GONE, route, body);
    }

    /// Sends one envelope of the tunnel of `route`, on the route's lane: every envelope of
    /// one tunnel, either way, goes on one lane, in order.
    fn send(&self, to: &NodeId, kind: &str, route: &str, body: Bytes) -> Result<(), SendError> {
        let envelope = Envelope::new(kind, route, body).map_err(|_| SendError::Full)?;
        self.0.cluster.send_on(lane_of(route), to, envelope)
    }

    /// Handles one item of the inbox.
    fn dispatch(&self, item: ClusterInbound, home: &Home) {
        match item {
            ClusterInbound::Message(envelope) => match envelope.kind.as_str() {
                OPEN => home::open(self, envelope, home),
                UP => self.up_to_tunnel(&envelope.from, &envelope.route, envelope.body),
                GONE => {
                    let departure = Departure::parse(&envelope.body);
                    self.gone_to_tunnel(&envelope.from, &envelope.route, departure);
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
            // A node that is gone is not told.
            ClusterInbound::Event(ClusterEvent::NodeDown(node) | ClusterEvent::NodeLeft(node)) => {
                drop(self.cut(|other, _| *other == node, || RemoteEvent::HomeLost));
            }
            // Only what stood when the link broke can have lost anything on it.
            ClusterInbound::Event(ClusterEvent::Broken(node, at)) => {
                let cut = self.cut(
                    |other, opened| *other == node && opened <= at,
                    || RemoteEvent::Closed(None),
                );
                self.tell_cut(cut);
            }
            ClusterInbound::Event(ClusterEvent::Lost) => {
                self.tell_cut(self.cut(|_, _| true, || RemoteEvent::Closed(None)))
            }
            ClusterInbound::Event(_) => {}
            ClusterInbound::Lost(Some(routes)) => {
                for route in routes {
                    self.cut_route(&route);
                }
            }
            ClusterInbound::Lost(None) => {
                self.tell_cut(self.cut(|_, _| true, || RemoteEvent::Closed(None)))
            }
        }
    }

    /// One message of a tunnelled side, straight into its virtual connection's queue.
    fn up_to_tunnel(&self, gateway: &NodeId, route: &str, text: Bytes) {
        let keeps_up = |tunnel: &Tunnel| tunnel.queue.text(text) != Err(Refused::Full);
        // A virtual connection that cannot keep up is cut, and its side told. (One that is
        // gone closes its tunnel itself.)
        if !self.to_tunnel(gateway, route, keeps_up) {
            let _ = self.send(gateway, CLOSE, route, Bytes::new());
        }
    }

    /// The side left: its tunnel's task closes the virtual connection.
    fn gone_to_tunnel(&self, gateway: &NodeId, route: &str, departure: Departure) {
        self.to_tunnel(gateway, route, |tunnel| {
            tunnel.control.try_send(departure).is_ok()
        });
    }

    /// Hands the tunnel of `route`, if `gateway` opened it, what its side did; `hand` says
    /// whether the tunnel took it. One that did not is cut (letting go of it ends its
    /// task): returns false then.
    fn to_tunnel(&self, gateway: &NodeId, route: &str, hand: impl FnOnce(&Tunnel) -> bool) -> bool {
        let mut tunnels = lock(&self.0.tunnels);
        let taken = match tunnels.get(route) {
            Some(tunnel) if tunnel.gateway == *gateway => hand(tunnel),
            _ => return true,
        };
        if !taken {
            tunnels.remove(route);
        }
        taken
    }

    fn to_gateway(&self, route: &str, event: RemoteEvent) {
        if let Some(gate) = lock(&self.0.gateways).get(route) {
            (gate.sink)(event);
        }
    }

    /// Cuts every tunnel through a node for which `lost` holds (given the node and when
    /// the tunnel was opened), telling each tunnelled side here `event`. Returns the other
    /// ends, for [`Self::tell_cut`].
    fn cut(
        &self,
        lost: impl Fn(&NodeId, Instant) -> bool,
        event: impl Fn() -> RemoteEvent,
    ) -> Vec<(NodeId, &'static str, String)> {
        let mut told = Vec::new();
        lock(&self.0.tunnels).retain(|route, tunnel| {
            let lost = lost(&tunnel.gateway, tunnel.opened);
            if lost {
                told.push((tunnel.gateway.clone(), CLOSE, route.clone()));
            }
            !lost
        });
        lock(&self.0.gateways).retain(|route, gate| {
            let lost = lost(&gate.home, gate.opened);
            if lost {
                (gate.sink)(event());
                told.push((gate.home.clone(), GONE, route.clone()));
            }
            !lost
        });
        told
    }

    /// Cuts one tunnel, either end, telling its tunnelled side it was cut.
    fn cut_route(&self, route: &str) {
        let mut told = Vec::new();
        if let Some(tunnel) = lock(&self.0.tunnels).remove(route) {
            told.push((tunnel.gateway, CLOSE, route.to_owned()));
        }
        if let Some(gate) = lock(&self.0.gateways).remove(route) {
            (gate.sink)(RemoteEvent::Closed(None));
            told.push((gate.home, GONE, route.to_owned()));
        }
        self.tell_cut(told);
    }

    /// Tells the other end of each tunnel cut here, so that neither end goes on alone: a
    /// gateway that its side's virtual connection was cut (`CLOSE`, empty), a home that the
    /// side is lost (`GONE lost`; its resume grace applies there). Best effort: a node this
    /// one cannot reach cuts its ends itself when it sees the link break or this node go.
    fn tell_cut(&self, told: Vec<(NodeId, &'static str, String)>) {
        let lost = Bytes::from_static(Departure::Lost.as_str().as_bytes());
        for (node, kind, route) in told {
            let body = match kind {
                GONE => lost.clone(),
                _ => Bytes::new(),
            };
            let _ = self.send(&node, kind, &route, body);
        }
    }
}

/// A tunnel's name, unique in the cluster: the gateway node, the side's connection, the
/// tunnel's number (one connection may open several tunnels, one after the other) and its
/// lane: that of the worker the side runs on (see `crate::workers`).
fn route(node: &NodeId, conn: ConnId) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let n = NEXT.fetch_add(1, Relaxed);
    let lane = Workers::lane();
    format!("{node}/{conn}/{n}/{lane}")
}

/// The lane a route names (0 if it names none it may).
fn lane_of(route: &str) -> usize {
    route
        .rsplit_once('/')
        .and_then(|(_, lane)| lane.parse().ok())
        .filter(|lane| *lane <= MAX_LANE)
        .unwrap_or(0)
}

/// What a gateway needs of one tunnelled side: where it goes and by which route.
#[derive(Debug)]
pub struct Gateway {
    /// The home node.
    pub home: NodeId,
    /// The tunnel's route.
    pub route: String,
    /// The home answered the first message with success (what counts as success is the
    /// endpoint's: `joined`, `authenticated`, `registered`) and it has not been undone.
    pub joined: bool,
}

impl<P: Protocol> Connection<P> {
    /// Passes a message from the home of this tunnelled connection to its peer, as is.
    pub fn pass_down(&mut self, text: &[u8], ctx: &mut Ctx<P>) {
        let frame = crate::transport::text_frame_of(text.len(), |buf| buf.extend_from_slice(text));
        if let Err(outcome) = self.socket.push(frame) {
            self.finish(outcome, ctx);
        }
    }

    /// The home closed this tunnelled connection's virtual one: with its close code and
    /// reason, which this connection closes with too — relaying on what the peer sends until
    /// it answers, as a connection of the home would (returns `true`: the tunnel stays);
    /// or (`None`) cut, as this one is.
    pub fn closed_by_home(&mut self, close: Option<(u16, String)>, ctx: &mut Ctx<P>) -> bool {
        let Some((code, reason)) = close else {
            self.finish(Outcome::Lost, ctx);
            return false;
        };
        let outcome = Outcome::ALL
            .into_iter()
            .find(|outcome| outcome.as_str() == reason)
            .unwrap_or(Outcome::PeerClosed);
        self.socket.end(outcome);
        self.socket.link.close(code.into(), &reason);
        true
    }
}
