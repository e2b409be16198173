//! The one delivery policy: how a frame reaches a connection, or why it does not.
//!
//! Every site that sends to a connection goes through [`Peer::deliver`] (another
//! connection), [`Stream::deliver`] (a side that may be away and come back, in lossless
//! mode or not) or the connection's own [`Socket`](super::socket::Socket) (which applies
//! the same rule to itself). The rule:
//! - queued in the outbox → [`Delivery::Delivered`];
//! - the outbox is full → the *recipient* is too slow: it is told to close
//!   (`SlowConsumer`), and the frame is dropped;
//! - the outbox is closed → the recipient is gone: dropped — unless it may come back, then
//!   [`Delivery::Held`];
//! - held (or, in lossless mode, unacknowledged) past the stream's bound in bytes → dropped,
//!   and the caller ends the pairing or attachment rather than deliver a stream with a
//!   hole in it.
//!
//! Every drop is counted by reason in `hermit_messages_dropped_total`.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use actix::{Message, Recipient};
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::ids::{ConnId, DropReason, Outcome};
use crate::metrics::METRICS;
use crate::transport::{text_frame, text_frame_of, Outbox, PushError};

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
    /// `None` for a connection that is gone and never was on this node (see [`Self::gone`]).
    addr: Option<Recipient<M>>,
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
        Self {
            conn,
            addr: Some(addr),
            outbox,
        }
    }

    /// Connection `conn`, gone: what is delivered to it is dropped (or held by a stream),
    /// what it is told goes nowhere. It stands for a side another node handed over while
    /// it was away, until the side comes back on a new connection.
    pub fn gone(conn: ConnId) -> Self {
        let outbox = Outbox::new(0);
        outbox.close(None);
        Self {
            conn,
            addr: None,
            outbox,
        }
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
        if let Some(addr) = &self.addr {
            addr.do_send(command);
        }
    }

    /// Tells the connection to close for `outcome`.
    pub fn close(&self, outcome: Outcome) {
        self.tell(M::close(outcome));
    }

    /// Whether its actor is still running.
    pub fn is_live(&self) -> bool {
        self.addr.as_ref().is_some_and(Recipient::connected)
    }
}

/// The bounds of every [`Stream`], from `[pairing]` (quick pairing and accounts alike).
#[derive(Debug, Clone, Copy)]
pub struct StreamLimits {
    /// Bytes held for a side that is away (`resume_buffer_bytes`).
    pub hold: usize,
    /// Bytes unacknowledged by a side in lossless mode (`replay_window_bytes`).
    pub window: usize,
}

/// What to do with one `data` message a side sent, by its `seq` (lossless mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accepted {
    /// New: forward it.
    New,
    /// Its `seq` was already accepted: a re-send, dropped.
    Again,
    /// Its `seq` skips some: refused; the relay expected this one.
    Skips {
        /// The `seq` the relay expected.
        expected: u64,
    },
}

/// Counts one message a side sent against `received` (the last it accepted from that
/// side), numbered `seq` if the side numbers them.
pub fn accept(received: &mut u64, seq: Option<u64>) -> Accepted {
    let expected = *received + 1;
    match seq {
        Some(seq) if seq < expected => Accepted::Again,
        Some(seq) if seq > expected => Accepted::Skips { expected },
        _ => {
            *received = expected;
            Accepted::New
        }
    }
}

/// Locks state shared between connections (pipes, attachments); a poisoned lock still
/// guards consistent streams, so carry on.
pub fn lock<T>(shared: &Mutex<T>) -> MutexGuard<'_, T> {
    shared.lock().unwrap_or_else(|poison| poison.into_inner())
}

/// Everything sent to one side of a pairing (or one attachment): its connection while it
/// has one, and the frames kept for it — held while it is away, and, once it opts in to
/// acknowledgements (lossless mode), every frame it has not acknowledged yet (its *replay
/// window*), each numbered with its `seq`.
///
/// It outlives the side's connections: a side that resumes is [`Stream::connect`]ed again
/// and given, in order and whole, what it missed.
pub struct Stream<M: Command> {
    peer: Option<Peer<M>>,
    /// Held or unacknowledged frames, oldest first, with their `seq` (0 when unnumbered).
    frames: VecDeque<(u64, Bytes)>,
    bytes: usize,
    /// Bound of `frames` in bytes: `pairing.resume_buffer_bytes` while unnumbered,
    /// `pairing.replay_window_bytes` once numbered.
    limit: usize,
    /// Lossless mode: frames are numbered and kept until acknowledged.
    numbered: bool,
    /// Last `seq` given out.
    sent: u64,
    /// Last `seq` the side acknowledged.
    acked: u64,
}

impl<M: Command> std::fmt::Debug for Stream<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stream")
            .field("peer", &self.peer)
            .field("frames", &self.frames.len())
            .field("bytes", &self.bytes)
            .field("numbered", &self.numbered)
            .field("sent", &self.sent)
            .field("acked", &self.acked)
            .finish()
    }
}

impl<M: Command> Stream<M> {
    /// A stream to a side that is not connected yet, holding at most `limit` bytes.
    pub fn new(limit: usize) -> Self {
        Self {
            peer: None,
            frames: VecDeque::new(),
            bytes: 0,
            limit,
            numbered: false,
            sent: 0,
            acked: 0,
        }
    }

    /// Lossless mode from now on: frames are numbered and kept until acknowledged, in at
    /// most `window` bytes. Never undone for the life of the stream.
    pub fn number(&mut self, window: usize) {
        self.numbered = true;
        self.limit = window;
    }

    /// Whether the side opted in to lossless mode.
    pub fn is_numbered(&self) -> bool {
        self.numbered
    }

    /// The side's connection, if it has one now.
    pub fn peer(&self) -> Option<&Peer<M>> {
        self.peer.as_ref()
    }

    /// Delivers one frame under the policy; `build` gets the frame's `seq` in lossless mode.
    /// A side whose socket turns out closed is taken to be away from this frame on (its
    /// registry decides whether it may come back), so nothing sent after its loss is lost.
    pub fn deliver(&mut self, build: impl FnOnce(Option<u64>) -> Bytes) -> Delivery {
        if !self.numbered {
            let frame = build(None);
            return match &self.peer {
                Some(peer) => match peer.outbox.offer(frame) {
                    Ok(()) => Delivery::Delivered,
                    Err((PushError::Full, _)) => {
                        peer.on_slow(Delivery::dropped(DropReason::SlowConsumer))
                    }
                    Err((PushError::Closed, frame)) => {
                        self.peer = None;
                        self.keep(0, frame)
                    }
                },
                None => self.keep(0, frame),
            };
        }
        let seq = self.sent + 1;
        let frame = build(Some(seq));
        if let Delivery::Dropped(reason) = self.keep(seq, frame.clone()) {
            return Delivery::Dropped(reason);
        }
        self.sent = seq;
        match &self.peer {
            Some(peer) => match peer.outbox.push(frame) {
                Ok(()) => Delivery::Delivered,
                Err(PushError::Full) => peer.on_slow(Delivery::dropped(DropReason::SlowConsumer)),
                Err(PushError::Closed) => {
                    self.peer = None;
                    Delivery::Held
                }
            },
            None => Delivery::Held,
        }
    }

    /// Keeps a frame for later, within the bound.
    fn keep(&mut self, seq: u64, frame: Bytes) -> Delivery {
        if self.bytes + frame.len() > self.limit {
            let reason = match self.numbered {
                true => DropReason::WindowFull,
                false => DropReason::HoldOverflow,
            };
            return Delivery::dropped(reason);
        }
        self.bytes += frame.len();
        self.frames.push_back((seq, frame));
        Delivery::Held
    }

    /// The side acknowledged everything up to `seq`: those frames are forgotten.
    pub fn ack(&mut self, seq: u64) {
        if !self.numbered || seq <= self.acked {
            return;
        }
        self.acked = seq.min(self.sent);
        while let Some((first, frame)) = self.frames.front() {
            if *first > self.acked {
                break;
            }
            self.bytes -= frame.len();
            self.frames.pop_front();
        }
    }

    /// The side lost its connection: hold from now on.
    pub fn disconnect(&mut self) {
        self.peer = None;
    }

    /// What the stream keeps, to carry on on another node ([`Self::import`]): its frames
    /// as their text (without the WebSocket header) and its numbering.
    pub fn export(&self) -> StreamState {
        let frames = self
            .frames
            .iter()
            .filter_map(|(seq, frame)| Some((*seq, frame_text(frame)?.to_owned())))
            .collect();
        StreamState {
            frames,
            limit: self.limit,
            numbered: self.numbered,
            sent: self.sent,
            acked: self.acked,
        }
    }

    /// A stream to a side that is away, keeping what `state` kept.
    pub fn import(state: StreamState) -> Self {
        let frames: VecDeque<(u64, Bytes)> = state
            .frames
            .into_iter()
            .map(|(seq, text)| {
                let frame = text_frame_of(text.len(), |buf| buf.extend_from_slice(text.as_bytes()));
                (seq, frame)
            })
            .collect();
        Self {
            peer: None,
            bytes: frames.iter().map(|(_, frame)| frame.len()).sum(),
            frames,
            limit: state.limit,
            numbered: state.numbered,
            sent: state.sent,
            acked: state.acked,
        }
    }

    /// The side is (back) on `peer`. It first gets, whole and in order, what it missed:
    /// everything held, or in lossless mode everything after `last_seq` (the side's word
    /// for what it received; its last acknowledgement if it does not say). If its outbox
    /// cannot take all of that, nothing is queued and the policy drops it as too slow.
    pub fn connect(&mut self, peer: Peer<M>, last_seq: Option<u64>) -> Delivery {
        if self.numbered {
            self.ack(last_seq.unwrap_or(self.acked));
        }
        let pushed = match self.frames.is_empty() {
            true => Ok(()),
            false => peer
                .outbox
                .push_all(self.frames.iter().map(|(_, frame)| frame.clone())),
        };
        match pushed {
            Ok(()) => {
                if !self.numbered {
                    self.frames.clear();
                    self.bytes = 0;
                }
                self.peer = Some(peer);
                Delivery::Delivered
            }
            Err(PushError::Full) => peer.on_slow(Delivery::dropped(DropReason::SlowConsumer)),
            // Gone again already: everything stays kept for its next return.
            Err(PushError::Closed) => Delivery::Held,
        }
    }
}

/// A [`Stream`] as another node takes it over.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamState {
    /// Kept frames' text, oldest first, with their `seq` (0 when unnumbered).
    pub frames: Vec<(u64, String)>,
    /// The bound of the frames, in bytes.
    pub limit: usize,
    /// Lossless mode.
    pub numbered: bool,
    /// Last `seq` given out.
    pub sent: u64,
    /// Last `seq` the side acknowledged.
    pub acked: u64,
}

/// The text of a server's (unmasked) text frame.
fn frame_text(frame: &[u8]) -> Option<&str> {
    let start = match frame.get(1)? & 0x7f {
        126 => 4,
        127 => 10,
        _ => 2,
    };
    std::str::from_utf8(frame.get(start..)?).ok()
}

#[cfg(test)]
#[path = "delivery_tests.rs"]
mod tests;
