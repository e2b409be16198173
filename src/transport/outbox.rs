//! The bounded queue of encoded frames waiting to be written to one WebSocket.
//!
//! Anyone holding the `Arc<Outbox>` may push — the connection's own actor, and its paired
//! partner, which forwards data straight here without a mailbox hop. The connection's
//! writer drains it ([`Outbox::poll_take`]). The byte bound is what makes a slow reader cost the
//! relay bounded memory: a push past it fails and the pusher drops the slow side.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use actix_http::ws::{CloseReason, Parser};
use bytes::{Bytes, BytesMut};

/// Why a frame was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushError {
    /// The queue would pass its byte limit: the reader is too slow.
    Full,
    /// The connection is closing or gone.
    Closed,
}

/// Frames for one connection, bounded in bytes.
#[derive(Debug)]
pub struct Outbox {
    state: Mutex<State>,
    limit: usize,
}

#[derive(Debug, Default)]
struct State {
    frames: VecDeque<Bytes>,
    /// Sum of `frames` lengths, checked against `Outbox::limit` on every push.
    queued: usize,
    /// The dispatcher task waiting for a frame; woken by the next push or by `finish`.
    waker: Option<Waker>,
    /// Set by `finish` (after a close frame) or when the body is dropped: no more pushes.
    closed: bool,
}

impl Outbox {
    /// A new, empty queue holding at most `limit` bytes.
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::default(),
            limit,
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock leaves only a queue of frames behind; keep going.
        self.state
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// Queues one encoded frame.
    pub fn push(&self, frame: Bytes) -> Result<(), PushError> {
        self.offer(frame).map_err(|(error, _)| error)
    }

    /// Queues one encoded frame, or gives it back with the reason it was refused (so a
    /// caller that may hold it elsewhere need not keep a second reference to it).
    pub fn offer(&self, frame: Bytes) -> Result<(), (PushError, Bytes)> {
        let mut state = self.lock();
        if state.closed {
            return Err((PushError::Closed, frame));
        }
        if state.queued + frame.len() > self.limit {
            return Err((PushError::Full, frame));
        }
        state.queued += frame.len();
        state.frames.push_back(frame);
        if let Some(waker) = state.waker.take() {
            drop(state);
            waker.wake();
        }
        Ok(())
    }

    /// Queues `frames` in order, all or none: `Full` if together they pass the limit. A
    /// resumed side gets everything held for it, or nothing and is dropped — never a stream
    /// with a hole in it.
    pub fn push_all(&self, frames: impl IntoIterator<Item = Bytes>) -> Result<(), PushError> {
        let frames: Vec<Bytes> = frames.into_iter().collect();
        let bytes: usize = frames.iter().map(Bytes::len).sum();
        let mut state = self.lock();
        if state.closed {
            return Err(PushError::Closed);
        }
        if state.queued + bytes > self.limit {
            return Err(PushError::Full);
        }
        state.queued += bytes;
        state.frames.extend(frames);
        if let Some(waker) = state.waker.take() {
            drop(state);
            waker.wake();
        }
        Ok(())
    }

    /// Queues a close frame, even past the byte limit, and accepts nothing after it: the
    /// body ends once everything before it is written.
    pub fn close(&self, reason: Option<CloseReason>) {
        let mut frame = BytesMut::new();
        Parser::write_close(&mut frame, reason, false);
        let mut state = self.lock();
        if state.closed {
            return;
        }
        state.queued += frame.len();
        state.frames.push_back(frame.freeze());
        state.closed = true;
        let waker = state.waker.take();
        drop(state);
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// Bytes queued and not yet handed to the dispatcher.
    pub fn queued_bytes(&self) -> usize {
        self.lock().queued
    }

    /// Whether the connection accepts no more frames.
    pub fn is_closed(&self) -> bool {
        self.lock().closed
    }
}

impl Outbox {
    /// Moves up to `max` frames (all of them, in order) into `batch` for the writer:
    /// `Ready(true)` if it took some, `Ready(false)` once the outbox is closed and empty,
    /// `Pending` (waking the writer on the next push or close) otherwise. Taken frames no
    /// longer count against the bound: the writer holds them until the kernel has them.
    pub fn poll_take(
        &self,
        cx: &mut Context<'_>,
        batch: &mut VecDeque<Bytes>,
        max: usize,
    ) -> Poll<bool> {
        let mut guard = self.lock();
        let state = &mut *guard;
        if state.frames.is_empty() {
            if state.closed {
                return Poll::Ready(false);
            }
            match &state.waker {
                Some(waker) if waker.will_wake(cx.waker()) => {}
                _ => state.waker = Some(cx.waker().clone()),
            }
            return Poll::Pending;
        }
        let take = state.frames.len().min(max);
        for frame in state.frames.drain(..take) {
            state.queued -= frame.len();
            batch.push_back(frame);
        }
        // An idle connection keeps no queue capacity.
        if state.frames.is_empty() && state.frames.capacity() > 16 {
            state.frames = VecDeque::new();
        }
        Poll::Ready(true)
    }

    /// The writer is gone: free what was queued and refuse later pushes, so a partner
    /// still forwarding here learns the socket is closed.
    pub fn abandon(&self) {
        let mut state = self.lock();
        state.closed = true;
        state.frames = VecDeque::new();
        state.queued = 0;
        state.waker = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_push_past_the_limit_is_refused_and_nothing_is_queued() {
        let outbox = Outbox::new(100);
        outbox.push(Bytes::from(vec![0; 60])).unwrap();
        assert_eq!(outbox.push(Bytes::from(vec![0; 60])), Err(PushError::Full));
        assert_eq!(outbox.queued_bytes(), 60);
    }

    #[test]
    fn a_batch_is_queued_whole_or_not_at_all() {
        let outbox = Outbox::new(100);
        outbox.push(Bytes::from(vec![0; 30])).unwrap();
        let batch = || [Bytes::from(vec![1; 40]), Bytes::from(vec![2; 40])];
        assert_eq!(outbox.push_all(batch()), Err(PushError::Full));
        assert_eq!(outbox.queued_bytes(), 30);
        let outbox = Outbox::new(100);
        outbox.push_all(batch()).unwrap();
        assert_eq!(outbox.queued_bytes(), 80);
    }

    #[test]
    fn nothing_is_accepted_after_close() {
        let outbox = Outbox::new(100);
        outbox.close(None);
        assert_eq!(
            outbox.push(Bytes::from_static(b"x")),
            Err(PushError::Closed)
        );
        assert!(outbox.is_closed());
    }

    #[test]
    fn an_abandoned_outbox_frees_its_queue_and_refuses_pushes() {
        let outbox = Outbox::new(100);
        outbox.push(Bytes::from(vec![0; 60])).unwrap();
        outbox.abandon();
        assert_eq!(outbox.queued_bytes(), 0);
        assert_eq!(
            outbox.push(Bytes::from_static(b"x")),
            Err(PushError::Closed)
        );
    }
}
