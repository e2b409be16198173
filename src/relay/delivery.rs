//! The one delivery policy: how a frame reaches a connection, or why it does not.
//!
//! Every site that sends to a connection goes through [`Peer::deliver`] (another
//! connection), [`Held`] (a pairing partner that is away) or the connection's own
//! [`Socket`](super::socket::Socket) (which applies the same rule to itself). The rule:
//! - queued in the outbox → [`Delivery::Delivered`];
//! - the outbox is full → the *recipient* is too slow: it is told to close
//!   (`SlowConsumer`), and the frame is dropped;
//! - the outbox is closed → the recipient is gone: dropped;
//! - the recipient is away but may come back → [`Delivery::Held`], bounded in bytes; past
//!   the bound the frame is dropped and the holder ends the pairing rather than deliver a
//!   stream with a hole in it.
//!
//! Every drop is counted by reason in `hermit_messages_dropped_total`.

use std::collections::VecDeque;
use std::sync::Arc;

use actix::{Message, Recipient};
use bytes::Bytes;
use serde::Serialize;

use crate::ids::{ConnId, DropReason, Outcome};
use crate::metrics::METRICS;
use crate::transport::{text_frame, Outbox, PushError};

/// A message every connection actor accepts: the one that closes it.
pub trait Command: Message<Result = ()> + Send + 'static {
    /// The command that makes the connection close for `outcome`.
    fn close(outcome: Outcome) -> Self;
}

/// What became of one frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Queued for the recipient's socket.
    Delivered,
    /// Kept for a recipient that is away, to be delivered when it resumes.
    Held,
    /// Not delivered, and never will be.
    Dropped(DropReason),
}

impl Delivery {
    /// Applies the policy to the result of pushing into an outbox; counts a drop.
    pub fn of(pushed: Result<(), PushError>) -> Self {
        match pushed {
            Ok(()) => Self::Delivered,
            Err(PushError::Full) => Self::dropped(DropReason::SlowConsumer),
            Err(PushError::Closed) => Self::dropped(DropReason::PeerGone),
        }
    }

    /// A drop for `reason`, counted.
    pub fn dropped(reason: DropReason) -> Self {
        METRICS.message_dropped(reason);
        Self::Dropped(reason)
    }
}

/// How to reach one connection: its actor for commands, its outbox for frames.
pub struct Peer<M: Command> {
    /// Which connection.
    pub conn: ConnId,
    addr: Recipient<M>,
    outbox: Arc<Outbox>,
}

impl<M: Command> Clone for Peer<M> {
    fn clone(&self) -> Self {
        Self {
            conn: self.conn,
            addr: self.addr.clone(),
            outbox: Arc::clone(&self.outbox),
        }
    }
}

impl<M: Command> std::fmt::Debug for Peer<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peer").field("conn", &self.conn).finish()
    }
}

impl<M: Command> Peer<M> {
    /// A way to reach connection `conn`.
    pub fn new(conn: ConnId, addr: Recipient<M>, outbox: Arc<Outbox>) -> Self {
        Self { conn, addr, outbox }
    }

    /// Queues an encoded frame for this connection, under the policy above.
    pub fn deliver(&self, frame: Bytes) -> Delivery {
        let delivery = Delivery::of(self.outbox.push(frame));
        self.on_slow(delivery)
    }

    /// Queues frames in order, all or none (a resume's held messages).
    pub fn deliver_all(&self, frames: impl IntoIterator<Item = Bytes>) -> Delivery {
        let delivery = Delivery::of(self.outbox.push_all(frames));
        self.on_slow(delivery)
    }

    /// Encodes and queues one protocol message.
    pub fn send<T: Serialize + ?Sized>(&self, message: &T) -> Delivery {
        self.deliver(text_frame(message))
    }

    fn on_slow(&self, delivery: Delivery) -> Delivery {
        if delivery == Delivery::Dropped(DropReason::SlowConsumer) {
            self.close(Outcome::SlowConsumer);
        }
        delivery
    }

    /// Sends its actor a command (never blocks; queued even past the mailbox capacity, so
    /// a busy connection still hears that it must close).
    pub fn tell(&self, command: M) {
        self.addr.do_send(command);
    }

    /// Tells the connection to close for `outcome`.
    pub fn close(&self, outcome: Outcome) {
        self.tell(M::close(outcome));
    }

    /// Whether its actor is still running.
    pub fn is_live(&self) -> bool {
        self.addr.connected()
    }
}

/// Frames held for a partner that is away, bounded in bytes, in order.
#[derive(Debug)]
pub struct Held {
    frames: VecDeque<Bytes>,
    bytes: usize,
    limit: usize,
}

impl Held {
    /// An empty hold of at most `limit` bytes (`pairing.resume_buffer_bytes`).
    pub fn new(limit: usize) -> Self {
        Self {
            frames: VecDeque::new(),
            bytes: 0,
            limit,
        }
    }

    /// Holds one frame, or drops it when the hold would pass its bound.
    pub fn hold(&mut self, frame: Bytes) -> Delivery {
        if self.bytes + frame.len() > self.limit {
            return Delivery::dropped(DropReason::HoldOverflow);
        }
        self.bytes += frame.len();
        self.frames.push_back(frame);
        Delivery::Held
    }

    /// Delivers everything held to the partner that came back: all of it, in order, or —
    /// if its outbox cannot take it all — nothing, and the frames stay held (a partner
    /// too slow for them is dropped by the policy; one already gone may come back again).
    pub fn release_to<M: Command>(&mut self, peer: &Peer<M>) -> Delivery {
        if self.frames.is_empty() {
            return Delivery::Delivered;
        }
        let delivery = peer.deliver_all(self.frames.iter().cloned());
        if delivery == Delivery::Delivered {
            self.frames.clear();
            self.bytes = 0;
        }
        delivery
    }
}

/// Where a pairing partner's frames go: straight into its outbox while it is connected,
/// into a [`Held`] while it is away (it may resume within the grace period).
#[derive(Debug)]
pub enum Route<M: Command> {
    /// Connected.
    Live(Peer<M>),
    /// Lost; its frames are held.
    Away(Held),
}

impl<M: Command> Route<M> {
    /// Delivers or holds one frame. A partner whose socket turns out closed is taken to be
    /// away from this frame on (the registry will say whether it may come back), so
    /// nothing written after its loss is dropped; `hold_limit` bounds what is then held.
    pub fn deliver(&mut self, frame: Bytes, hold_limit: usize) -> Delivery {
        match self {
            // `offer` hands a refused frame back, so the data path keeps one reference to
            // each frame (a second one would cost `Bytes` an allocation).
            Self::Live(peer) => match peer.outbox.offer(frame) {
                Ok(()) => Delivery::Delivered,
                Err((PushError::Full, _)) => {
                    peer.on_slow(Delivery::dropped(DropReason::SlowConsumer))
                }
                Err((PushError::Closed, frame)) => {
                    *self = Self::Away(Held::new(hold_limit));
                    self.deliver(frame, hold_limit)
                }
            },
            Self::Away(held) => held.hold(frame),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hold_keeps_frames_up_to_its_bound_then_drops() {
        let mut held = Held::new(10);
        assert_eq!(held.hold(Bytes::from_static(b"12345")), Delivery::Held);
        assert_eq!(held.hold(Bytes::from_static(b"12345")), Delivery::Held);
        assert_eq!(
            held.hold(Bytes::from_static(b"1")),
            Delivery::Dropped(DropReason::HoldOverflow)
        );
    }

    #[test]
    fn push_results_map_to_the_policy() {
        assert_eq!(Delivery::of(Ok(())), Delivery::Delivered);
        assert_eq!(
            Delivery::of(Err(PushError::Full)),
            Delivery::Dropped(DropReason::SlowConsumer)
        );
        assert_eq!(
            Delivery::of(Err(PushError::Closed)),
            Delivery::Dropped(DropReason::PeerGone)
        );
    }
}
