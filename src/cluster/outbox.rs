//! Envelopes waiting to be sent, in the order they were sent, bounded in bytes
//! (`cluster.max_queued_bytes`) until they are written. One task takes them and hands each
//! node's to the writer of its link, in order, so envelopes reach each node in the order
//! they were sent.

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard};

use tokio::sync::Notify;

use super::envelope::Envelope;
use crate::ids::NodeId;

/// Where an envelope goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Destination {
    /// Another node, over the link to it.
    Node(NodeId),
    /// This node's own Redis channel (its probe).
    Own,
}

/// One envelope on its way out.
#[derive(Debug)]
pub(super) struct Outgoing {
    /// Where it goes.
    pub to: Destination,
    /// The envelope, its `from` set; encoded by its link's writer, its kind and route
    /// reported if it is lost.
    pub envelope: Envelope,
}

impl Outgoing {
    /// Bytes it takes on the wire: what the queue counts.
    pub fn size(&self) -> usize {
        self.envelope.encoded_len()
    }
}

#[derive(Debug, Default)]
struct Queue {
    items: VecDeque<Outgoing>,
    /// Bytes queued or being published: released only once published (or lost).
    bytes: usize,
    closed: bool,
}

/// The queue shared by senders (any thread) and the publishing task.
#[derive(Debug)]
pub(super) struct Outbox {
    queue: Mutex<Queue>,
    ready: Notify,
    max_bytes: usize,
}

impl Outbox {
    /// An empty queue of at most `max_bytes`.
    pub fn new(max_bytes: usize) -> Self {
        Self {
            queue: Mutex::default(),
            ready: Notify::new(),
            max_bytes,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// Queues `item`; false (and nothing queued) when it does not fit or the queue closed.
    pub fn push(&self, item: Outgoing) -> bool {
        let mut queue = self.lock();
        let size = item.size();
        if queue.closed || queue.bytes + size > self.max_bytes {
            return false;
        }
        queue.bytes += size;
        queue.items.push_back(item);
        drop(queue);
        self.ready.notify_one();
        true
    }

    /// Counts `bytes` of an envelope that goes to its writer without the queue (a lane's,
    /// see `link.rs`): false (and nothing counted) when it does not fit or the queue
    /// closed. Released as [`Self::push`]'s are.
    pub fn reserve(&self, bytes: usize) -> bool {
        let mut queue = self.lock();
        if queue.closed || queue.bytes + bytes > self.max_bytes {
            return false;
        }
        queue.bytes += bytes;
        true
    }

    /// Waits for envelopes and takes up to `max` of them, oldest first; empty once closed
    /// and drained.
    pub async fn next_batch(&self, max: usize) -> Vec<Outgoing> {
        loop {
            let notified = self.ready.notified();
            {
                let mut queue = self.lock();
                if !queue.items.is_empty() {
                    let n = queue.items.len().min(max);
                    return queue.items.drain(..n).collect();
                }
                if queue.closed {
                    return Vec::new();
                }
            }
            notified.await;
        }
    }

    /// Releases `bytes` of envelopes that were published or lost.
    pub fn release(&self, bytes: usize) {
        let mut queue = self.lock();
        queue.bytes = queue.bytes.saturating_sub(bytes);
    }

    /// Takes no more envelopes; the publisher drains what is queued and stops.
    pub fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_one();
    }

    /// Bytes queued or in flight now.
    pub fn queued_bytes(&self) -> usize {
        self.lock().bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(n: u8) -> Outgoing {
        let envelope = Envelope::new("k", format!("r{n}"), vec![n; 10]).unwrap();
        Outgoing {
            to: Destination::Own,
            envelope,
        }
    }

    #[tokio::test]
    async fn the_queue_is_bounded_in_bytes_until_published() {
        let size = item(1).size();
        let outbox = Outbox::new(2 * size + size / 2);
        assert!(outbox.push(item(1)));
        assert!(outbox.push(item(2)));
        assert!(!outbox.push(item(3)), "three do not fit in two and a half");
        let batch = outbox.next_batch(10).await;
        assert_eq!(batch.len(), 2);
        assert_eq!(batch[0].envelope.route, "r1");
        assert!(!outbox.push(item(4)), "still in flight");
        outbox.release(2 * size);
        assert!(outbox.push(item(5)));
        assert!(outbox.reserve(size), "a lane's envelope counts alike");
        assert!(!outbox.reserve(size), "full");
        outbox.release(size);
        outbox.close();
        assert!(!outbox.push(item(6)));
        assert!(!outbox.reserve(1));
        assert_eq!(outbox.next_batch(10).await.len(), 1);
        assert!(outbox.next_batch(10).await.is_empty());
    }
}
