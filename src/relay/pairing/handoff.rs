//! Rolling restarts: a node that shuts down hands its pairings to another, so their sides
//! resume there — on any node — with nothing lost, duplicated or reordered.
//!
//! On `SIGTERM` the leaving node (see [`Handoffs::leave`]):
//! 1. stops delivering to its sides (what comes is held) and takes a side that closes from
//!    now on for away, not gone (`Leave`);
//! 2. closes every connection with 1001 and waits for each closing handshake (at most
//!    `CLOSE_LINGER`): what a side sent before it saw the close frame is read and held for
//!    its partner, and what the relay had queued for it reached it before the close frame;
//! 3. takes its pairings out (`Export`) — held frames, replay windows, sequence numbers —
//!    and sends each to a live node ([`ADOPT`]), which installs it with both sides away and
//!    a full resume grace, records itself as its home (`super::homes`) and says so
//!    ([`ADOPTED`]), all within `cluster.redis_timeout_ms`.
//!
//! A side that reconnects meanwhile is tunnelled to the leaving node, which refuses it (it
//! admits nothing): it is cut and retries, and finds the new home once it is recorded.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix::Addr;
use bytes::Bytes;
use tokio::sync::oneshot;

use super::homes;
use super::pipes::Handoff;
use super::registry::{Adopt, Export, Leave, SessionRegistry};
use crate::cluster::{Cluster, Envelope, Inbound};
use crate::connections::Connections;
use crate::ids::{HashMap, NodeId, PairingId};
use crate::relay::delivery::lock;
use crate::transport::CLOSE_LINGER;

/// Leaving node → successor: one pairing; body: a [`Handoff`] as JSON.
pub const ADOPT: &str = "pair.adopt";
/// Successor → leaving node: the pairing of the route is installed and recorded.
pub const ADOPTED: &str = "pair.adopted";

/// How long the registry may take to answer during a hand-off.
const REGISTRY_TIMEOUT: Duration = Duration::from_secs(5);

type Waiting = Mutex<HashMap<String, oneshot::Sender<()>>>;

/// This node's hand-offs, both ways; cheap to clone.
#[derive(Clone)]
pub struct Handoffs {
    cluster: Arc<Cluster>,
    registry: Addr<SessionRegistry>,
    /// Pairings sent, waiting for their [`ADOPTED`], by route.
    waiting: Arc<Waiting>,
}

impl Handoffs {
    /// Starts adopting what other nodes hand over, on a thread of its own.
    pub fn start(cluster: Arc<Cluster>, registry: Addr<SessionRegistry>) -> Option<Self> {
        let inbox = cluster.inbox("pair")?;
        let handoffs = Self {
            cluster,
            registry,
            waiting: Arc::default(),
        };
        let dispatcher = handoffs.clone();
        actix::Arbiter::new().spawn(async move {
            loop {
                if let Inbound::Message(envelope) = inbox.recv().await {
                    match envelope.kind.as_str() {
                        ADOPT => dispatcher.adopt(envelope).await,
                        ADOPTED => {
                            if let Some(done) = lock(&dispatcher.waiting).remove(&envelope.route) {
                                let _ = done.send(());
                            }
                        }
                        _ => {}
                    }
                }
            }
        });
        Some(handoffs)
    }

    /// Installs a pairing another node hands over, records this node as its home, and
    /// tells the sender.
    async fn adopt(&self, envelope: Envelope) {
        let Ok(handoff) = serde_json::from_slice::<Handoff>(&envelope.body) else {
            return;
        };
        let Some(session) = PairingId::parse(&handoff.session) else {
            return;
        };
        let client = handoff.client.clone();
        let adopted = self.registry.send(Adopt(handoff)).timeout(REGISTRY_TIMEOUT);
        if !matches!(adopted.await, Ok(true)) {
            return;
        }
        let recorded = homes::record_now(&self.cluster, &session, client.as_ref())
            .await
            .is_ok();
        if recorded {
            if let Ok(reply) = Envelope::new(ADOPTED, &envelope.route, Bytes::new()) {
                let _ = self.cluster.send(&envelope.from, reply);
            }
        }
        tracing::info!(pairing = %session.fingerprint(), from = %envelope.from, recorded, "pairing adopted");
    }

    /// Leaves: closes every connection (1001) and hands every pairing to another node, as
    /// the module says. Without another live node, the connections are only closed.
    pub async fn leave(&self, connections: &Connections) {
        let mut nodes = self.cluster.nodes();
        nodes.sort();
        let Some(successor) = nodes.into_iter().next() else {
            connections.close_all();
            return;
        };
        let _ = self.registry.send(Leave).timeout(REGISTRY_TIMEOUT).await;
        connections.close_all();
        let deadline = Instant::now() + CLOSE_LINGER + Duration::from_millis(200);
        while connections.open_count() > 0 && Instant::now() < deadline {
            actix_rt::time::sleep(Duration::from_millis(10)).await;
        }
        let handoffs = self.registry.send(Export).timeout(REGISTRY_TIMEOUT).await;
        let handoffs = handoffs.unwrap_or_default();
        let count = handoffs.len();
        let mut answers = Vec::with_capacity(count);
        for handoff in handoffs {
            if let Some(answer) = self.send(&successor, &handoff) {
                answers.push(answer);
            }
        }
        let wait = self.cluster.settings().redis_timeout() * 2;
        let adopted = tokio::time::timeout(wait, async {
            let mut adopted = 0;
            for answer in answers {
                if answer.await.is_ok() {
                    adopted += 1;
                }
            }
            adopted
        })
        .await;
        lock(&self.waiting).clear();
        match adopted {
            Ok(adopted) if adopted == count => {
                tracing::info!(pairings = count, %successor, "pairings handed over")
            }
            Ok(adopted) => {
                tracing::warn!(pairings = count, adopted, %successor, "some pairings were not handed over")
            }
            Err(_) => {
                tracing::warn!(pairings = count, %successor, "the hand-over was not confirmed in time")
            }
        }
    }

    /// Sends one pairing to `successor`; the receiver hears when it is adopted.
    fn send(&self, successor: &NodeId, handoff: &Handoff) -> Option<oneshot::Receiver<()>> {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let route = format!(
            "{}/handoff/{}",
            self.cluster.node_id(),
            NEXT.fetch_add(1, Relaxed)
        );
        let body = serde_json::to_vec(handoff).ok()?;
        let envelope = Envelope::new(ADOPT, &route, Bytes::from(body)).ok()?;
        let (tx, rx) = oneshot::channel();
        lock(&self.waiting).insert(route, tx);
        self.cluster.send(successor, envelope).ok()?;
        Some(rx)
    }
}
