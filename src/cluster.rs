//! The Redis backplane of a cluster of relays: which nodes are alive, envelopes from one
//! node to another, and limits counted cluster-wide. Only started when `cluster.redis_url`
//! is set; without it the relay never touches this module.
//!
//! What lives in Redis (every key and channel starts with `cluster.key_prefix`):
//! - `<p>:node:<id>` — a node's heartbeat (`up <link address> <link secret>`, or `left`
//!   after a graceful shutdown), expiring after `cluster.node_timeout_secs` unless
//!   refreshed; `<p>:nodes` — the set of node ids, to find them (see [`membership`]).
//! - `<p>:ch:node:<id>` — each node's channel, on which it only hears its own probe: that
//!   it reaches Redis both ways (pub/sub: what a node misses while cut off is lost, which
//!   it learns as [`ClusterEvent::Lost`]).
//!
//! What nodes send each other goes over direct links, not through Redis (see [`link`]).
//! - `<p>:rate:<limit>:<address>` — the attempt limits' buckets; `<p>:rate:failed:all` and
//!   `<p>:rate:failed:net:<network>` — the failed-join budget's (see [`bucket`]).
//!
//! Everything else — sockets, queues, pairings — stays in each node. Every Redis call is
//! bounded by `cluster.redis_timeout_ms`. The tasks run on an arbiter (thread) of their own.

pub mod envelope;
pub mod inbox;

mod bucket;
mod channels;
mod link;
mod membership;
mod outbox;
mod peers;
mod topics;

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use actix::Arbiter;
use fred::clients::SubscriberClient;
use fred::prelude::*;

pub use envelope::Envelope;
pub use inbox::{ClusterEvent, Inbound, Inbox};

use crate::config::ClusterSettings;
use crate::ids::NodeId;
use crate::metrics::METRICS;
use crate::workers::Workers;
use outbox::{Destination, Outbox, Outgoing};
use peers::{lock, Links};

/// What takes a topic's envelopes straight from the lanes (see [`Cluster::direct`]).
pub type Direct = Arc<dyn Fn(Inbound) + Send + Sync>;

/// Envelopes taken at once by the publishing task (in order, grouped per node).
const PUBLISH_BATCH: usize = 256;
/// Messages fred may hold for the reading task; past it they are lost (and reported).
const SUBSCRIBER_BUFFER: usize = 8192;
/// The envelope kind of the heartbeat a node sends itself, to know its channel works.
const PROBE: &str = "cluster.probe";

/// Why a cluster call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClusterError {
    /// `cluster.redis_url` could not be read.
    #[error("cluster.redis_url is not a usable Redis URL: {0}")]
    Url(String),
    /// Redis did not answer within `cluster.redis_timeout_ms`.
    #[error("Redis did not answer in time")]
    Timeout,
    /// Redis answered with an error, or the connection failed.
    #[error("Redis: {0}")]
    Redis(String),
    /// This node cannot take links from the other nodes.
    #[error("links between nodes: {0}")]
    Link(String),
}

/// Why an envelope was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// This node does not reach Redis now.
    #[error("the cluster is unreachable")]
    Unavailable,
    /// `cluster.max_queued_bytes` are already waiting.
    #[error("the cluster's send queue is full")]
    Full,
}

/// This node's handle on the cluster; shared by everything that needs it.
pub struct Cluster {
    node: NodeId,
    settings: ClusterSettings,
    client: Client,
    subscriber: SubscriberClient,
    /// The last heartbeat reached Redis and this node's channel delivered to it.
    healthy: AtomicBool,
    /// Healthy at least once: a later recovery is a rejoin, the first one a join.
    ever_healthy: AtomicBool,
    /// Set when the subscriber (re)connects: its channels must be subscribed again.
    resubscribe: AtomicBool,
    /// When this node last heard its own probe, and when it last subscribed.
    probe: Mutex<(Option<Instant>, Option<Instant>)>,
    /// The other nodes seen alive, as of the last heartbeat.
    known: Mutex<BTreeSet<NodeId>>,
    outbox: Outbox,
    /// The direct links to and from the other nodes.
    links: Links,
    /// One inbox per topic (the part of an envelope's kind before its first `.`), each
    /// with one reader; envelopes of a topic no one reads are dropped.
    inboxes: Mutex<Vec<(String, Arc<Inbox>)>>,
    /// The topics that take what arrives on lanes other than 0 straight from them.
    direct: Mutex<Vec<(String, Direct)>>,
    /// The server's workers: where the lanes other than 0 are written and read.
    workers: Workers,
    stopped: AtomicBool,
    arbiter: Mutex<Option<Arbiter>>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("node", &self.node)
            .field("healthy", &self.healthy())
            .finish_non_exhaustive()
    }
}

impl Cluster {
    /// Joins the cluster of `settings` on a thread of its own, with the lanes of the
    /// server's `workers` (see [`link`]). Returns at once: the node is [`Self::healthy`]
    /// once Redis answers (it retries for as long as it runs).
    pub fn start(settings: &ClusterSettings, workers: Workers) -> Result<Arc<Self>, ClusterError> {
        let node = NodeId::parse(&settings.node_id).unwrap_or_else(NodeId::random);
        let config = Config::from_url(&settings.redis_url)
            .map_err(|err| ClusterError::Url(err.details().to_owned()))?;
        let timeout = settings.redis_timeout();
        let mut builder = Builder::from_config(config);
        builder
            .with_performance_config(|perf| {
                // Publishes are bounded by this alone (see `publish_one`), the other
                // calls by `timed` too.
                perf.default_command_timeout = timeout;
                perf.broadcast_channel_capacity = SUBSCRIBER_BUFFER;
            })
            .with_connection_config(|conn| {
                conn.connection_timeout = timeout;
                conn.internal_command_timeout = timeout;
                // A command is never sent twice: a publish retried after a reconnect
                // could be delivered twice.
                conn.max_command_attempts = 1;
                // A link that dies silently is noticed and replaced.
                conn.unresponsive.max_timeout = Some(timeout);
                conn.unresponsive.interval = (timeout / 4).max(Duration::from_millis(10));
            })
            .set_policy(ReconnectPolicy::new_constant(0, 200));
        let client = builder
            .build()
            .map_err(|err| ClusterError::Url(err.details().to_owned()))?;
        let subscriber = builder
            .build_subscriber_client()
            .map_err(|err| ClusterError::Url(err.details().to_owned()))?;
        let links = Links::bind(
            &settings.link_listen,
            &settings.link_advertise,
            &settings.redis_url,
            settings.max_links,
        )
        .map_err(ClusterError::Link)?;
        let arbiter = Arbiter::new();
        let cluster = Arc::new(Self {
            node,
            settings: settings.clone(),
            client,
            subscriber,
            healthy: AtomicBool::new(false),
            ever_healthy: AtomicBool::new(false),
            resubscribe: AtomicBool::new(true),
            probe: Mutex::new((None, None)),
            known: Mutex::default(),
            outbox: Outbox::new(settings.max_queued_bytes),
            links,
            inboxes: Mutex::default(),
            direct: Mutex::default(),
            workers,
            stopped: AtomicBool::new(false),
            arbiter: Mutex::new(None),
        });
        let running = Arc::clone(&cluster);
        arbiter.spawn(async move { running.run().await });
        *lock(&cluster.arbiter) = Some(arbiter);
        tracing::info!(
            node = %cluster.node,
            prefix = %settings.key_prefix,
            link = %cluster.links.bound,
            "joining the cluster"
        );
        Ok(cluster)
    }

    /// Connects and starts the tasks: heartbeat, reading, publishing.
    async fn run(self: Arc<Self>) {
        let mut client = self.client.connect();
        let mut subscriber = self.subscriber.connect();
        let this = Arc::clone(&self);
        let mut reconnects = self.subscriber.reconnect_rx();
        actix_rt::spawn(async move {
            while reconnects.recv().await.is_ok() {
                this.resubscribe.store(true, Relaxed);
            }
        });
        actix_rt::spawn(Arc::clone(&self).read());
        actix_rt::spawn(Arc::clone(&self).publish());
        actix_rt::spawn(Arc::clone(&self).listen());
        let mut ticks = actix_rt::time::interval(self.settings.heartbeat());
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while !self.stopped.load(Relaxed) {
            ticks.tick().await;
            if self.stopped.load(Relaxed) {
                break;
            }
            // A connection task that gave up (fred ends it when a first connection
            // fails) is started again: the node keeps trying for as long as it runs.
            if client.is_finished() {
                client = self.client.connect();
            }
            if subscriber.is_finished() {
                self.resubscribe.store(true, Relaxed);
                subscriber = self.subscriber.connect();
            }
            membership::beat(&self).await;
            self.probe_self();
        }
    }

    /// The settings it runs with.
    pub fn settings(&self) -> &ClusterSettings {
        &self.settings
    }

    /// This node's id.
    pub fn node_id(&self) -> &NodeId {
        &self.node
    }

    /// `parts` joined by `:` under the cluster's key prefix: every key this node uses.
    pub fn key(&self, parts: &[&str]) -> String {
        let mut key = self.settings.key_prefix.clone();
        for part in parts {
            key.push(':');
            key.push_str(part);
        }
        key
    }

    fn node_key(&self, node: &NodeId) -> String {
        self.key(&["node", node.as_str()])
    }

    fn channel(&self, node: &NodeId) -> String {
        self.key(&["ch", "node", node.as_str()])
    }

    /// Whether this node reaches Redis and hears its own channel now.
    pub fn healthy(&self) -> bool {
        self.healthy.load(Relaxed)
    }

    /// The other nodes alive as of the last heartbeat.
    pub fn nodes(&self) -> Vec<NodeId> {
        self.lock_known().iter().cloned().collect()
    }

    fn lock_known(&self) -> MutexGuard<'_, BTreeSet<NodeId>> {
        lock(&self.known)
    }

    /// The links other nodes hold to this one now, by node and lane (see [`link`]), sorted.
    pub fn links_from(&self) -> Vec<(NodeId, usize)> {
        let mut links: Vec<(NodeId, usize)> = lock(&self.links.inbound).keys().cloned().collect();
        links.sort();
        links
    }

    /// Queues `envelope` for `node`, on lane 0 (see [`link`]). Envelopes to one node on lane
    /// 0 arrive in the order sent; one that is lost on the way is reported by its route in
    /// this node's inbox.
    pub fn send(&self, node: &NodeId, envelope: Envelope) -> Result<(), SendError> {
        if !self.healthy() {
            return Err(SendError::Unavailable);
        }
        self.enqueue(Destination::Node(node.clone()), envelope)
    }

    /// Sends `envelope` to `node` on `lane` (see [`link`]): lane 0 as [`Self::send`] does;
    /// another straight to the writer of its link, bounded by the same
    /// `cluster.max_queued_bytes`. Envelopes sent to one node on one lane arrive in the order
    /// sent; one lost on the way is reported by its route in this node's inbox.
    pub fn send_on(
        self: &Arc<Self>,
        lane: usize,
        node: &NodeId,
        mut envelope: Envelope,
    ) -> Result<(), SendError> {
        if lane == 0 {
            return self.send(node, envelope);
        }
        if !self.healthy() {
            return Err(SendError::Unavailable);
        }
        envelope.from = self.node.clone();
        let item = Outgoing {
            to: Destination::Node(node.clone()),
            envelope,
        };
        let size = item.size();
        if !self.outbox.reserve(size) {
            METRICS.cluster.dropped("queue_full");
            return Err(SendError::Full);
        }
        match self.write_to(node, lane, vec![item]) {
            Ok(()) => Ok(()),
            Err(items) => {
                // Its route is reported lost, as on lane 0, so both ends of it are cut.
                self.lost_all(items);
                self.outbox.release(size);
                Err(SendError::Full)
            }
        }
    }

    /// Queues without asking whether Redis is reachable (the probe that finds out).
    fn enqueue(&self, to: Destination, mut envelope: Envelope) -> Result<(), SendError> {
        envelope.from = self.node.clone();
        let item = Outgoing { to, envelope };
        if self.outbox.push(item) {
            Ok(())
        } else {
            METRICS.cluster.dropped("queue_full");
            Err(SendError::Full)
        }
    }

    /// Runs `task` on this node's cluster thread, beside the tasks that publish and read:
    /// what feeds them or is fed by them hands over there without waking another thread.
    /// False (and `task` dropped) once the node has halted; it stops with the node.
    pub fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) -> bool {
        lock(&self.arbiter)
            .as_ref()
            .is_some_and(|arbiter| arbiter.spawn(task))
    }

    /// Takes one attempt from the cluster-wide bucket `key` (`per_minute` tokens, refilled
    /// evenly): true if there was one.
    pub async fn take(&self, key: &str, per_minute: u32) -> Result<bool, ClusterError> {
        self.take_all(&[(key.to_owned(), per_minute)]).await
    }

    /// Takes one token from each of `buckets` (a key and its tokens per minute, refilled
    /// evenly), or from none if any is empty: true if they were taken.
    pub async fn take_all(&self, buckets: &[(String, u32)]) -> Result<bool, ClusterError> {
        Ok(self.buckets("take", buckets).await? == 1)
    }

    /// Gives back the tokens [`Self::take_all`] took from `buckets`, in the background (on
    /// this node's cluster thread, within `cluster.redis_timeout_ms`). A give-back that does
    /// not reach Redis is lost: the buckets refill as if the tokens had been spent.
    pub fn give_back(self: &Arc<Self>, buckets: Vec<(String, u32)>) {
        let this = Arc::clone(self);
        if let Some(arbiter) = lock(&self.arbiter).as_ref() {
            arbiter.spawn(async move {
                if let Err(err) = this.buckets("give", &buckets).await {
                    tracing::debug!(%err, "could not give tokens back to the cluster's buckets");
                }
            });
        }
    }

    /// Runs the bucket script (see [`bucket`]) on `buckets`.
    async fn buckets(&self, op: &str, buckets: &[(String, u32)]) -> Result<i64, ClusterError> {
        let keys: Vec<String> = buckets.iter().map(|(key, _)| key.clone()).collect();
        let args: Vec<String> = std::iter::once(op.to_owned())
            .chain(buckets.iter().map(|(_, per_minute)| per_minute.to_string()))
            .collect();
        self.timed(self.client.eval(bucket::SCRIPT, keys, args))
            .await
    }

    /// Sets `key` to `value` for `ttl` unless it exists: true if it was set.
    pub async fn set_nx(
        &self,
        key: &str,
        value: &str,
        ttl: Duration,
    ) -> Result<bool, ClusterError> {
        let expire = Expiration::PX(ttl.as_millis().max(1) as i64);
        let set: Option<String> = self
            .timed(self.client.set(
                key.to_owned(),
                value.to_owned(),
                Some(expire),
                Some(SetOptions::NX),
                false,
            ))
            .await?;
        Ok(set.is_some())
    }

    /// Sets `key` to `value`, with no expiry, unless it exists: true if it was set.
    pub async fn set_nx_persistent(&self, key: &str, value: &str) -> Result<bool, ClusterError> {
        let set: Option<String> = self
            .timed(self.client.set(
                key.to_owned(),
                value.to_owned(),
                None,
                Some(SetOptions::NX),
                false,
            ))
            .await?;
        Ok(set.is_some())
    }

    /// Sets `key` to `new` if it still holds `old` (one atomic step): true if it was set.
    pub async fn replace(&self, key: &str, old: &str, new: &str) -> Result<bool, ClusterError> {
        const REPLACE: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2])
  return 1
end
return 0
"#;
        let args = vec![old.to_owned(), new.to_owned()];
        let replaced: i64 = self
            .timed(self.client.eval(REPLACE, key.to_owned(), args))
            .await?;
        Ok(replaced == 1)
    }

    /// Sets `key` to `value` for `ttl`, whether or not it exists.
    pub async fn set(&self, key: &str, value: &str, ttl: Duration) -> Result<(), ClusterError> {
        let expire = Expiration::PX(ttl.as_millis().max(1) as i64);
        let _: Option<String> = self
            .timed(
                self.client
                    .set(key.to_owned(), value.to_owned(), Some(expire), None, false),
            )
            .await?;
        Ok(())
    }

    /// The node `key` names, if it is another node alive now (the home of a code, a
    /// pairing, a user). An error if Redis could not be asked.
    pub async fn node_at(&self, key: &str) -> Result<Option<NodeId>, ClusterError> {
        Ok(self.get(key).await?.and_then(|name| self.other_live(&name)))
    }

    /// `name` as a node, if it is another node alive now.
    pub fn other_live(&self, name: &str) -> Option<NodeId> {
        NodeId::parse(name).filter(|node| *node != self.node && self.lock_known().contains(node))
    }

    /// The value of `key`, if it exists.
    pub async fn get(&self, key: &str) -> Result<Option<String>, ClusterError> {
        self.timed(self.client.get(key.to_owned())).await
    }

    /// Leaves the cluster gracefully: what is queued is published, the heartbeat says
    /// `left` (the others report `NodeLeft`), and the tasks stop.
    pub async fn leave(&self) {
        if self.stopped.load(Relaxed) {
            return;
        }
        self.outbox.close();
        let deadline = Instant::now() + self.settings.redis_timeout();
        while self.outbox.queued_bytes() > 0 && Instant::now() < deadline {
            actix_rt::time::sleep(Duration::from_millis(5)).await;
        }
        // Every link ends with a goodbye: its reader knows it lost nothing.
        self.close_links(self.settings.redis_timeout()).await;
        if let Err(err) = membership::leave(self).await {
            tracing::warn!(%err, "could not tell the cluster this node leaves");
        }
        self.halt();
        tracing::info!(node = %self.node, "left the cluster");
    }

    /// Stops every task at once, telling no one, as a crash would (the heartbeat expires).
    pub fn halt(&self) {
        self.stopped.store(true, Relaxed);
        self.outbox.close();
        self.healthy.store(false, Relaxed);
        // The lanes on the workers, which the cluster's thread stopping does not stop.
        self.links.halt();
        let (client, subscriber) = (self.client.clone(), self.subscriber.clone());
        if let Some(arbiter) = lock(&self.arbiter).take() {
            arbiter.spawn(async move {
                let _ = client.quit().await;
                let _ = subscriber.quit().await;
                actix_rt::Arbiter::current().stop();
            });
        }
    }

    /// Runs one Redis call within `cluster.redis_timeout_ms`, timing and counting it.
    async fn timed<T>(
        &self,
        call: impl Future<Output = Result<T, fred::error::Error>>,
    ) -> Result<T, ClusterError> {
        let started = Instant::now();
        let result = match tokio::time::timeout(self.settings.redis_timeout(), call).await {
            Ok(result) => result.map_err(ClusterError::of),
            Err(_) => Err(ClusterError::Timeout),
        };
        Self::counted(started, result)
    }

    /// Counts a Redis call that `started` and ended with `result`: its round trip, or an
    /// error.
    fn counted<T>(started: Instant, result: Result<T, ClusterError>) -> Result<T, ClusterError> {
        match &result {
            Ok(_) => METRICS
                .cluster
                .redis_round_trip(started.elapsed().as_secs_f64()),
            Err(_) => {
                METRICS.cluster.errors.fetch_add(1, Relaxed);
            }
        }
        result
    }
}

impl ClusterError {
    /// What a failed fred call means here.
    fn of(err: fred::error::Error) -> Self {
        match err.kind() {
            fred::error::ErrorKind::Timeout => Self::Timeout,
            _ => Self::Redis(err.details().to_owned()),
        }
    }
}
