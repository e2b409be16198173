//! The two ends of the pub/sub link: the task publishing what [`super::Cluster::send`]
//! queued, the task reading this node's channels into the inbox, and the probe a node sends
//! itself so its health means "my channel delivers", not only "Redis answers".

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use fred::prelude::*;
use tokio::sync::broadcast::error::RecvError;

use super::{lock, Cluster, ClusterError, Envelope, PROBE, PUBLISH_BATCH};
use crate::metrics::METRICS;

impl Cluster {
    /// Publishes queued envelopes, a batch at a time and in order, until the queue closes.
    /// A batch's publishes are written back to back on one connection (fred pipelines
    /// them), so order holds without a round trip per envelope.
    pub(super) async fn publish(self: Arc<Self>) {
        loop {
            let batch = self.outbox.next_batch(PUBLISH_BATCH).await;
            if batch.is_empty() {
                return;
            }
            let bytes: usize = batch.iter().map(|item| item.bytes.len()).sum();
            let sends = batch.iter().map(|item| {
                self.timed(
                    self.client
                        .publish::<(), _, _>(item.channel.clone(), item.bytes.clone()),
                )
            });
            let results = futures_util::future::join_all(sends).await;
            for (item, result) in batch.into_iter().zip(results) {
                match result {
                    Ok(()) => {
                        METRICS.cluster.sent.fetch_add(1, Relaxed);
                        METRICS
                            .cluster
                            .sent_bytes
                            .fetch_add(item.bytes.len() as u64, Relaxed);
                    }
                    Err(err) => {
                        tracing::debug!(%err, route = %item.route, "an envelope was not published");
                        METRICS.cluster.dropped("publish_failed");
                        self.lost(Some((&item.kind, item.route)));
                    }
                }
            }
            self.outbox.release(bytes);
        }
    }

    /// Moves what arrives on this node's channels into the inbox, until the client quits.
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
            let bytes = match message.value.as_bytes() {
                Some(bytes) => Bytes::copy_from_slice(bytes),
                None => {
                    METRICS.cluster.dropped("undecodable");
                    continue;
                }
            };
            let Some(envelope) = Envelope::decode(bytes) else {
                METRICS.cluster.dropped("undecodable");
                continue;
            };
            if envelope.from == self.node {
                if envelope.kind == PROBE {
                    lock(&self.probe).0 = Some(Instant::now());
                }
                continue;
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
