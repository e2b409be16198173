//! What leaves and what arrives: the task handing what [`super::Cluster::send`] queued to
//! the links, the task reading this node's Redis channel, and the probe a node sends itself
//! there so its health means "my channel delivers", not only "Redis answers".

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use fred::prelude::*;
use tokio::sync::broadcast::error::RecvError;

use super::outbox::{Destination, Outgoing};
use super::{lock, Cluster, ClusterError, Envelope, Inbound, PROBE, PUBLISH_BATCH};
use crate::ids::NodeId;
use crate::metrics::METRICS;

impl Cluster {
    /// Takes queued envelopes, a batch at a time and in order, until the queue closes:
    /// each node's go to the writer of its link together (see [`super::link`]); this
    /// node's probe is published on its own channel. An envelope that cannot be handed
    /// over (no such node, its link stalled) is lost: its route is reported.
    pub(super) async fn publish(self: Arc<Self>) {
        loop {
            let batch = self.outbox.next_batch(PUBLISH_BATCH).await;
            if batch.is_empty() {
                return;
            }
            let mut per_node: Vec<(NodeId, Vec<Outgoing>)> = Vec::new();
            for item in batch {
                match &item.to {
                    Destination::Node(node) => {
                        match per_node.iter_mut().find(|(to, _)| to == node) {
                            Some((_, items)) => items.push(item),
                            None => per_node.push((node.clone(), vec![item])),
                        }
                    }
                    // Apart, so that a slow Redis never holds up the links.
                    Destination::Own => {
                        let this = Arc::clone(&self);
                        actix_rt::spawn(async move {
                            let channel = this.channel(&this.node);
                            let wire = item.envelope.encode();
                            if let Err(err) = this.publish_one(channel, wire).await {
                                tracing::debug!(%err, "this node's probe was not published");
                            }
                            this.outbox.release(item.size());
                        });
                    }
                }
            }
            for (node, items) in per_node {
                if let Err(items) = self.write_to(&node, 0, items) {
                    let size: usize = items.iter().map(Outgoing::size).sum();
                    self.lost_all(items);
                    self.outbox.release(size);
                }
            }
        }
    }

    /// Publishes one message, timed and counted as [`Cluster::timed`] does. Bounded by
    /// fred's own command timeout, which [`Cluster::start`] sets to
    /// `cluster.redis_timeout_ms`.
    async fn publish_one(&self, channel: String, wire: Bytes) -> Result<(), ClusterError> {
        let started = Instant::now();
        let publish = Box::pin(self.client.publish::<(), _, _>(channel, wire));
        Self::counted(started, publish.await.map_err(ClusterError::of))
    }

    /// Moves what arrives on this node's channel (its probe) into the inbox, until the
    /// client quits.
    pub(super) async fn read(self: Arc<Self>) {
        let mut messages = self.subscriber.message_rx();
        loop {
            let message = match messages.recv().await {
                Ok(message) => message,
                Err(RecvError::Lagged(missed)) => {
                    tracing::warn!(missed, "cluster messages lost: this node read too slowly");
                    continue;
                }
                Err(RecvError::Closed) => return,
            };
            let decoded = message
                .value
                .as_bytes()
                .and_then(|wire| Envelope::decode(Bytes::copy_from_slice(wire)));
            match decoded {
                Some(envelope) => self.receive(envelope),
                None => METRICS.cluster.dropped("undecodable"),
            }
        }
    }

    /// Hands one envelope that arrived to its topic's inbox (or, this node's probe, to
    /// the health check).
    pub(super) fn receive(&self, envelope: Envelope) {
        if envelope.from == self.node {
            if envelope.kind == PROBE {
                lock(&self.probe).0 = Some(Instant::now());
            }
            return;
        }
        Self::count_received(&envelope);
        match self.inbox_of(&envelope.kind) {
            Some(inbox) => inbox.push(envelope),
            None => METRICS.cluster.dropped("unrouted"),
        }
    }

    /// Hands one envelope that arrived on `lane` to its topic: on a lane other than 0, to
    /// the handler the topic reads its lanes with, if it has one, here and now (on the
    /// lane's worker: see [`super::link`]); else to its inbox.
    pub(super) fn receive_on(&self, lane: usize, envelope: Envelope) {
        let handler = match lane {
            0 => None,
            _ => self.direct_of(&envelope.kind),
        };
        match handler {
            Some(handler) => {
                Self::count_received(&envelope);
                handler(Inbound::Message(envelope));
            }
            None => self.receive(envelope),
        }
    }

    fn count_received(envelope: &Envelope) {
        METRICS.cluster.received.fetch_add(1, Relaxed);
        METRICS
            .cluster
            .received_bytes
            .fetch_add(envelope.encoded_len() as u64, Relaxed);
    }

    /// Subscribes to this node's channels if the subscriber (re)connected since, and says
    /// whether the channel delivered a probe recently (or was subscribed just now).
    pub(super) async fn ensure_subscribed(&self) -> Result<(), ClusterError> {
        if self.resubscribe.swap(false, Relaxed) {
            let channels = vec![self.channel(&self.node)];
            if let Err(err) = self.timed(self.subscriber.subscribe(channels)).await {
                self.resubscribe.store(true, Relaxed);
                return Err(err);
            }
            lock(&self.probe).1 = Some(Instant::now());
        }
        let window = 2 * self.settings.heartbeat() + self.settings.redis_timeout();
        let (heard, subscribed) = *lock(&self.probe);
        let fresh = |at: Option<Instant>| at.is_some_and(|at| at.elapsed() < window);
        if fresh(heard) || fresh(subscribed) {
            Ok(())
        } else {
            // The subscriber's link died without a word: replace it.
            self.resubscribe.store(true, Relaxed);
            let _ = self.timed(self.subscriber.force_reconnection()).await;
            Err(ClusterError::Redis(
                "this node's channel stopped delivering".into(),
            ))
        }
    }

    /// Sends this node a probe on its own channel (see [`Self::ensure_subscribed`]).
    pub(super) fn probe_self(&self) {
        if let Ok(envelope) = Envelope::new(PROBE, "-", Bytes::new()) {
            let _ = self.enqueue(Destination::Own, envelope);
        }
    }
}
