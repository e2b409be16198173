//! Rolling restarts: a node that shuts down hands what its products keep for sides that
//! may come back — pairings, users' lossless agents and clients — to another node, so the
//! sides resume there, on any node, with nothing lost, duplicated or reordered.
//!
//! On `SIGTERM` the leaving node ([`leave`]):
//! 1. tells each product it leaves ([`Product::leave`]: quick pairing stops delivering to
//!    its sides and holds what comes); from now on a side that closes is away, not gone
//!    (`Socket::ended_cleanly`);
//! 2. closes every connection with 1001 and waits for each closing handshake (at most
//!    `CLOSE_LINGER`): what a side sent before it saw the close frame is read and kept for
//!    its partner, and what the relay had queued for it reached it before the close frame;
//! 3. takes each product's units out ([`Product::export`]) and sends each to a live node,
//!    the nodes in turn (`<topic>.adopt`), which installs it with its sides away for a full resume grace,
//!    records itself as its home ([`Product::adopt`]) and says so (`<topic>.adopted`), all
//!    within `cluster.redis_timeout_ms` × 2.
//!
//! A side that reconnects meanwhile is tunnelled to the leaving node, which admits nothing:
//! it is cut and retries, and finds the new home once it is recorded.
//!
//! The products implement [`Product`] (`relay::pairing::handoff`,
//! `relay::account::handoff`); this module knows neither.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::oneshot;

use super::delivery::lock;
use crate::cluster::{Cluster, Envelope, Inbound, SendError};
use crate::connections::Connections;
use crate::ids::{HashMap, NodeId};
use crate::transport::CLOSE_LINGER;

/// What one product hands over when its node leaves.
pub trait Product: Send + Sync + 'static {
    /// The topic of its envelopes: `<topic>.adopt` and `<topic>.adopted`.
    const TOPIC: &'static str;
    /// What it hands over (one pairing, one user), as JSON on the wire.
    type Unit: Serialize + DeserializeOwned + Send + 'static;
    /// Before the connections close.
    fn leave(&self) -> impl Future<Output = ()> + Send;
    /// After they closed: every unit to hand over.
    fn export(&self) -> impl Future<Output = Vec<Self::Unit>> + Send;
    /// On the node adopting: installs `unit` handed over by `from` and records this node
    /// as its home; whether both were done.
    fn adopt(&self, unit: Self::Unit, from: &NodeId) -> impl Future<Output = bool> + Send;
}

/// A product's hand-offs, both ways.
pub struct Handoffs<P> {
    cluster: Arc<Cluster>,
    product: P,
    /// Units sent, waiting for their `<topic>.adopted`, by route.
    waiting: Mutex<HashMap<String, oneshot::Sender<()>>>,
}

impl<P: Product> Handoffs<P> {
    /// Starts adopting what other nodes hand over, on a thread of its own.
    pub fn start(cluster: Arc<Cluster>, product: P) -> Option<Arc<Self>> {
        let inbox = cluster.inbox(P::TOPIC)?;
        let handoffs = Arc::new(Self {
            cluster,
            product,
            waiting: Mutex::default(),
        });
        let dispatcher = Arc::clone(&handoffs);
        actix::Arbiter::new().spawn(async move {
            loop {
                if let Inbound::Message(envelope) = inbox.recv().await {
                    dispatcher.dispatch(envelope).await;
                }
            }
        });
        Some(handoffs)
    }

    fn kind(suffix: &str) -> String {
        format!("{}.{suffix}", P::TOPIC)
    }

    async fn dispatch(&self, envelope: Envelope) {
        let Some(suffix) = envelope.kind.strip_prefix(P::TOPIC) else {
            return;
        };
        match suffix {
            ".adopt" => {
                let Ok(unit) = serde_json::from_slice::<P::Unit>(&envelope.body) else {
                    return;
                };
                let adopted = self.product.adopt(unit, &envelope.from).await;
                if adopted {
                    let reply = Envelope::new(Self::kind("adopted"), &envelope.route, Bytes::new());
                    if let Ok(reply) = reply {
                        let _ = self.cluster.send(&envelope.from, reply);
                    }
                }
                tracing::info!(topic = P::TOPIC, from = %envelope.from, adopted, "adopted a hand-over");
            }
            ".adopted" => {
                if let Some(done) = lock(&self.waiting).remove(&envelope.route) {
                    let _ = done.send(());
                }
            }
            _ => {}
        }
    }

    /// Hands the units to the live nodes `successors`, in turn (so no one node takes a
    /// leaving node's whole load), and waits for each to be adopted.
    async fn hand_over(&self, successors: &[NodeId]) {
        let units = self.product.export().await;
        let count = units.len();
        let bodies: Vec<Bytes> = units
            .iter()
            .filter_map(|unit| serde_json::to_vec(unit).ok().map(Bytes::from))
            .collect();
        drop(units);
        let wait = self.cluster.settings().redis_timeout() * 2;
        let sending_until = Instant::now() + wait;
        let mut answers = Vec::with_capacity(count);
        for (body, successor) in bodies.into_iter().zip(successors.iter().cycle()) {
            if let Some(answer) = self.send(successor, body, sending_until).await {
                answers.push(answer);
            }
        }
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
        let topic = P::TOPIC;
        match adopted {
            Ok(adopted) if adopted == count => {
                tracing::info!(
                    topic,
                    units = count,
                    nodes = successors.len(),
                    "handed over"
                )
            }
            Ok(adopted) => {
                tracing::warn!(topic, units = count, adopted, "some were not handed over")
            }
            Err(_) => {
                tracing::warn!(
                    topic,
                    units = count,
                    "the hand-over was not confirmed in time"
                )
            }
        }
    }

    /// Sends one unit to `successor` — waiting, until `until`, while the cluster's send
    /// queue is full; the receiver hears when it is adopted.
    async fn send(
        &self,
        successor: &NodeId,
        body: Bytes,
        until: Instant,
    ) -> Option<oneshot::Receiver<()>> {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let route = format!(
            "{}/handoff/{}",
            self.cluster.node_id(),
            NEXT.fetch_add(1, Relaxed)
        );
        let envelope = Envelope::new(Self::kind("adopt"), &route, body).ok()?;
        let (tx, rx) = oneshot::channel();
        lock(&self.waiting).insert(route, tx);
        loop {
            match self.cluster.send(successor, envelope.clone()) {
                Ok(()) => return Some(rx),
                Err(SendError::Full) if Instant::now() < until => {
                    actix_rt::time::sleep(Duration::from_millis(10)).await;
                }
                Err(_) => return None,
            }
        }
    }
}

/// One product's part in a node's leaving, whatever the product.
pub trait Leaving: Send + Sync {
    /// See [`Product::leave`].
    fn prepare(&self) -> BoxFuture<'_, ()>;
    /// Exports and hands over to `successors` (live nodes, at least one).
    fn hand_over<'a>(&'a self, successors: &'a [NodeId]) -> BoxFuture<'a, ()>;
}

impl<P: Product> Leaving for Handoffs<P> {
    fn prepare(&self) -> BoxFuture<'_, ()> {
        Box::pin(self.product.leave())
    }

    fn hand_over<'a>(&'a self, successors: &'a [NodeId]) -> BoxFuture<'a, ()> {
        Box::pin(Handoffs::hand_over(self, successors))
    }
}

/// Leaves: closes every connection (1001) and hands what `products` keep to the other
/// live nodes, as the module says. Without another live node, the connections are only
/// closed.
pub async fn leave(cluster: &Cluster, connections: &Connections, products: &[Arc<dyn Leaving>]) {
    let successors = cluster.nodes();
    if successors.is_empty() {
        connections.close_all();
        return;
    }
    futures_util::future::join_all(products.iter().map(|p| p.prepare())).await;
    connections.close_all();
    let deadline = Instant::now() + CLOSE_LINGER + Duration::from_millis(200);
    while connections.open_count() > 0 && Instant::now() < deadline {
        actix_rt::time::sleep(Duration::from_millis(10)).await;
    }
    futures_util::future::join_all(products.iter().map(|p| p.hand_over(&successors))).await;
}
