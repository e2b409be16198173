//! The two ends of the pub/sub link: the task publishing what [`super::Cluster::send`]
//! queued, the task reading this node's channels into the inbox, and the probe a node sends
//! itself so its health means "my channel delivers", not only "Redis answers".

use std::ops::Range;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use fred::prelude::*;
use tokio::sync::broadcast::error::RecvError;

use super::outbox::Outgoing;
use super::{lock, pack, Cluster, ClusterError, Envelope, PROBE, PUBLISH_BATCH};
use crate::metrics::METRICS;

impl Cluster {
    /// Publishes queued envelopes, a batch at a time and in order, until the queue closes.
    /// A batch's runs of envelopes bound for one channel go as one message each (see
    /// [`pack`]), written back to back on one connection (fred pipelines them), so order
    /// holds without a round trip per message. A message that is not published loses
    /// exactly the envelopes it carried: each one's route is reported.
    pub(super) async fn publish(self: Arc<Self>) {
        loop {
            let batch = self.outbox.next_batch(PUBLISH_BATCH).await;
            if batch.is_empty() {
                return;
            }
            let runs = pack::runs(&batch);
            let send = |run: &Range<usize>| {
                let run = &batch[run.clone()];
                self.publish_one(run[0].channel.clone(), pack::wire_of(run))
            };
            // One future per message, not per envelope; a lone one (every message at low
            // rates) is awaited as it is, without a join.
            let results = match runs.as_slice() {
                [run] => vec![send(run).await],
                _ => futures_util::future::join_all(runs.iter().map(send)).await,
            };
            let mut bytes = 0;
            for (run, result) in runs.into_iter().zip(results) {
                let run = &batch[run];
                let size: usize = run.iter().map(Outgoing::size).sum();
                bytes += size;
                match result {
                    Ok(()) => {
                        METRICS.cluster.sent.fetch_add(run.len() as u64, Relaxed);
                        METRICS.cluster.sent_bytes.fetch_add(size as u64, Relaxed);
                        if run.len() > 1 {
                            METRICS.cluster.packs.fetch_add(1, Relaxed);
                        }
                    }
                    Err(err) => {
                        tracing::debug!(%err, envelopes = run.len(), "a message was not published");
                        for item in run {
                            METRICS.cluster.dropped("publish_failed");
                            self.lost(Some((&item.envelope.kind, item.envelope.route.clone())));
                        }
                    }
                }
            }
            self.outbox.release(bytes);
        }
    }

    /// Publishes one message, timed and counted as [`Cluster::timed`] does. Bounded by
    /// fred's own command timeout, which [`Cluster::start`] sets to
    /// `cluster.redis_timeout_ms`: a second timer per message would bound nothing more.
    async fn publish_one(&self, channel: String, wire: Bytes) -> Result<(), ClusterError> {
        let started = Instant::now();
        // Boxed where it is made: fred's publish future is kilobytes, and a join would
        // otherwise copy it each time it moves it.
        let publish = Box::pin(self.client.publish::<(), _, _>(channel, wire));
        Self::counted(started, publish.await.map_err(ClusterError::of))
    }

    /// Moves what arrives on this node's channels into the inbox, until the client quits:
    /// a lone envelope, or each of a pack's in order.
    pub(super) async fn read(self: Arc<Self>) {
        let mut messages = self.subscriber.message_rx();
        loop {
            let message = match messages.recv().await {
                Ok(message) => message,
                Err(RecvError::Lagged(missed)) => {
                    tracing::warn!(missed, "cluster messages lost: this node read too slowly");
                    for _ in 0..missed {
                        METRICS.cluster.dropped("inbox_full");
                    }
                    self.lost(None);
                    continue;
                }
                Err(RecvError::Closed) => return,
            };
            let Some(wire) = message.value.as_bytes() else {
                METRICS.cluster.dropped("undecodable");
                continue;
            };
            if pack::is_pack(wire) {
                match pack::unpack(wire) {
                    Some(envelopes) => envelopes
                        .into_iter()
                        .for_each(|envelope| self.receive(envelope)),
                    None => METRICS.cluster.dropped("undecodable"),
                }
            } else {
                match Envelope::decode(Bytes::copy_from_slice(wire)) {
                    Some(envelope) => self.receive(envelope),
                    None => METRICS.cluster.dropped("undecodable"),
                }
            }
        }
    }

    /// Hands one envelope that arrived to its topic's inbox (or, this node's probe, to
    /// the health check).
    fn receive(&self, envelope: Envelope) {
        if envelope.from == self.node {
            if envelope.kind == PROBE {
                lock(&self.probe).0 = Some(Instant::now());
            }
            return;
        }
        METRICS.cluster.received.fetch_add(1, Relaxed);
        METRICS
            .cluster
            .received_bytes
            .fetch_add(envelope.encoded_len() as u64, Relaxed);
        match self.inbox_of(&envelope.kind) {
            Some(inbox) => inbox.push(envelope),
            None => METRICS.cluster.dropped("unrouted"),
        }
    }

    /// Subscribes to this node's channels if the subscriber (re)connected since, and says
    /// whether the channel delivered a probe recently (or was subscribed just now).
    pub(super) async fn ensure_subscribed(&self) -> Result<(), ClusterError> {
        if self.resubscribe.swap(false, Relaxed) {
            let channels = vec![self.channel(&self.node), self.broadcast_channel()];
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
            let _ = self.enqueue(self.channel(&self.node), envelope);
        }
    }
}
