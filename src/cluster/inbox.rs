//! What a node receives from the cluster, waiting to be handled: envelopes from other nodes,
//! the cluster's events, and the routes whose messages were lost. Bounded in bytes: past
//! `cluster.max_inbox_bytes` an envelope is dropped (counted) and its route reported, so the
//! connections it was for are closed rather than left with a silent gap.

use std::collections::{BTreeSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use tokio::sync::Notify;

use super::envelope::Envelope;
use crate::ids::NodeId;
use crate::metrics::METRICS;

/// Most events waiting at once; they are few (nodes coming and going), but still bounded.
const MAX_EVENTS: usize = 4096;
/// Most lost routes remembered between two reads; past it, every route is reported lost.
const MAX_LOST_ROUTES: usize = 4096;

/// Something that happened to the cluster, as this node saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClusterEvent {
    /// A node was seen alive for the first time (or again, after it was down).
    NodeUp(NodeId),
    /// A node's heartbeat expired: it died or lost Redis. What it held is gone.
    NodeDown(NodeId),
    /// A node shut down gracefully.
    NodeLeft(NodeId),
    /// This node lost Redis: it is cut off from the cluster until [`Self::Rejoined`].
    Lost,
    /// This node reaches Redis again.
    Rejoined,
    /// The link between this node and that one broke (it may still be alive), at that
    /// instant: what was on it is lost, so every route through that node that stood then
    /// is broken. (One opened later never was on it: see `link.rs` for how the instant is
    /// chosen.)
    Broken(NodeId, Instant),
}

/// One item of the inbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inbound {
    /// An envelope from another node.
    Message(Envelope),
    /// A change in the cluster.
    Event(ClusterEvent),
    /// Messages of these routes were lost (a full queue, a broken link); `None`: of
    /// too many routes to list, so every cross-node route must be taken as broken.
    Lost(Option<Vec<String>>),
}

#[derive(Debug, Default)]
struct Queue {
    items: VecDeque<(Inbound, usize)>,
    bytes: usize,
    events: usize,
    lost: BTreeSet<String>,
    lost_all: bool,
}

/// The inbox shared by the cluster's tasks (which push) and its one reader.
#[derive(Debug)]
pub struct Inbox {
    queue: Mutex<Queue>,
    ready: Notify,
    max_bytes: usize,
}

impl Inbox {
    /// An empty inbox holding at most `max_bytes` of envelopes.
    pub fn new(max_bytes: usize) -> Arc<Self> {
        Arc::new(Self {
            queue: Mutex::default(),
            ready: Notify::new(),
            max_bytes,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// Queues an envelope; when it does not fit, it is dropped and its route lost.
    pub fn push(&self, envelope: Envelope) {
        let size = envelope.encoded_len();
        let mut queue = self.lock();
        if queue.bytes + size > self.max_bytes {
            METRICS.cluster.dropped("inbox_full");
            Self::lose(&mut queue, envelope.route);
        } else {
            queue.bytes += size;
            queue.items.push_back((Inbound::Message(envelope), size));
        }
        drop(queue);
        self.ready.notify_one();
    }

    /// Queues an event (dropped, counted, past [`MAX_EVENTS`]).
    pub fn event(&self, event: ClusterEvent) {
        let mut queue = self.lock();
        if queue.events >= MAX_EVENTS {
            METRICS.cluster.dropped("events_full");
            return;
        }
        queue.events += 1;
        queue.items.push_back((Inbound::Event(event), 0));
        drop(queue);
        self.ready.notify_one();
    }

    /// Reports that a message of `route` was lost on its way out.
    pub fn lost(&self, route: String) {
        Self::lose(&mut self.lock(), route);
        self.ready.notify_one();
    }

    /// Reports that messages of unknown routes were lost: every cross-node route is broken.
    pub fn lost_everything(&self) {
        let mut queue = self.lock();
        queue.lost_all = true;
        queue.lost.clear();
        drop(queue);
        self.ready.notify_one();
    }

    fn lose(queue: &mut Queue, route: String) {
        if queue.lost.len() >= MAX_LOST_ROUTES {
            queue.lost_all = true;
            queue.lost.clear();
        } else if !queue.lost_all {
            queue.lost.insert(route);
        }
    }

    /// The next item, if one is waiting: lost routes first (their connections must go
    /// before anything later is delivered to them), then in arrival order.
    pub fn try_recv(&self) -> Option<Inbound> {
        let mut queue = self.lock();
        if queue.lost_all {
            queue.lost_all = false;
            return Some(Inbound::Lost(None));
        }
        if !queue.lost.is_empty() {
            let routes = std::mem::take(&mut queue.lost).into_iter().collect();
            return Some(Inbound::Lost(Some(routes)));
        }
        let (item, size) = queue.items.pop_front()?;
        queue.bytes -= size;
        if matches!(item, Inbound::Event(_)) {
            queue.events -= 1;
        }
        Some(item)
    }

    /// Waits for the next item.
    pub async fn recv(&self) -> Inbound {
        loop {
            let notified = self.ready.notified();
            if let Some(item) = self.try_recv() {
                return item;
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope(route: &str, body: &'static [u8]) -> Envelope {
        Envelope::new("test", route, body).unwrap()
    }

    #[test]
    fn past_its_bound_an_envelope_is_dropped_and_its_route_reported_first() {
        let one = envelope("r1", b"0123456789").encoded_len();
        let inbox = Inbox::new(2 * one);
        inbox.push(envelope("r1", b"0123456789"));
        inbox.event(ClusterEvent::Lost);
        inbox.push(envelope("r2", b"0123456789"));
        inbox.push(envelope("r3", b"0123456789"));
        assert_eq!(
            inbox.try_recv(),
            Some(Inbound::Lost(Some(vec!["r3".into()])))
        );
        assert!(matches!(inbox.try_recv(), Some(Inbound::Message(e)) if e.route == "r1"));
        assert_eq!(inbox.try_recv(), Some(Inbound::Event(ClusterEvent::Lost)));
        assert!(matches!(inbox.try_recv(), Some(Inbound::Message(e)) if e.route == "r2"));
        assert_eq!(inbox.try_recv(), None);
        inbox.push(envelope("r4", b"0123456789"));
        assert!(matches!(inbox.try_recv(), Some(Inbound::Message(e)) if e.route == "r4"));
    }

    #[test]
    fn too_many_lost_routes_are_reported_as_all() {
        let inbox = Inbox::new(1024);
        for n in 0..=MAX_LOST_ROUTES {
            inbox.lost(format!("r{n}"));
        }
        assert_eq!(inbox.try_recv(), Some(Inbound::Lost(None)));
        assert_eq!(inbox.try_recv(), None);
    }
}
