//! The bounded queue of encoded frames waiting to be written to one WebSocket.
//!
//! Anyone holding the `Arc<Outbox>` may push — the connection's own actor, and its paired
//! partner, which forwards data straight here without a mailbox hop. The HTTP dispatcher
//! drains it through [`OutboxBody`]. The byte bound is what makes a slow reader cost the
//! relay bounded memory: a push past it fails and the pusher drops the slow side.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use actix_http::ws::{CloseReason, OpCode, Parser};
use bytes::{BufMut, Bytes, BytesMut};
use futures_util::Stream;
use serde::Serialize;

/// Room for the longest header of an unmasked server frame (2 + 8 bytes).
const MAX_HEADER: usize = 10;

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
        let mut state = self.lock();
        if state.closed {
            return Err(PushError::Closed);
        }
        if state.queued + frame.len() > self.limit {
            return Err(PushError::Full);
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

/// The response body of a WebSocket upgrade: yields the outbox's frames in order.
#[derive(Debug)]
pub struct OutboxBody(pub Arc<Outbox>);

impl Stream for OutboxBody {
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let mut state = self.0.lock();
        if let Some(frame) = state.frames.pop_front() {
            state.queued -= frame.len();
            return Poll::Ready(Some(Ok(frame)));
        }
        if state.closed {
            return Poll::Ready(None);
        }
        match &state.waker {
            Some(waker) if waker.will_wake(cx.waker()) => {}
            _ => state.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

impl Drop for OutboxBody {
    fn drop(&mut self) {
        // The dispatcher is gone: free what was queued and refuse later pushes, so a
        // partner still forwarding here learns the socket is closed.
        let mut state = self.0.lock();
        state.closed = true;
        state.frames.clear();
        state.queued = 0;
        state.waker = None;
    }
}

/// Encodes `message` as JSON in a single unmasked text frame, with one allocation and no copy.
pub fn text_frame<T: Serialize + ?Sized>(message: &T) -> Bytes {
    let mut buf = BytesMut::with_capacity(128);
    buf.put_bytes(0, MAX_HEADER);
    let mut writer = buf.writer();
    // unwrap: serialising our own protocol types to memory has no failure case (no maps with
    // non-string keys, no I/O).
    serde_json::to_writer(&mut writer, message).unwrap();
    let mut buf = writer.into_inner();
    let len = buf.len() - MAX_HEADER;
    // The header goes right-aligned into the room reserved in front of the payload.
    let mut header = BytesMut::with_capacity(MAX_HEADER);
    header.put_u8(0x80 | u8::from(OpCode::Text));
    if len < 126 {
        header.put_u8(len as u8);
    } else if len <= u16::MAX as usize {
        header.put_u8(126);
        header.put_u16(len as u16);
    } else {
        header.put_u8(127);
        header.put_u64(len as u64);
    }
    let start = MAX_HEADER - header.len();
    buf[start..MAX_HEADER].copy_from_slice(&header);
    let _ = buf.split_to(start);
    buf.freeze()
}

/// A ping control frame (the relay's heartbeat).
pub fn ping_frame() -> Bytes {
    control_frame(OpCode::Ping, b"")
}

/// A pong control frame answering a peer's ping with its payload.
pub fn pong_frame(payload: &[u8]) -> Bytes {
    control_frame(OpCode::Pong, payload)
}

fn control_frame(op: OpCode, payload: &[u8]) -> Bytes {
    let mut frame = BytesMut::with_capacity(2 + payload.len());
    Parser::write_message(&mut frame, payload, op, true, false);
    frame.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_codec::Decoder;
    use actix_http::ws::{Codec, Frame};

    fn decode(frame: &Bytes) -> Frame {
        let mut buf = BytesMut::from(&frame[..]);
        // A client-mode codec reads unmasked server frames.
        Codec::new()
            .client_mode()
            .max_size(1 << 24)
            .decode(&mut buf)
            .unwrap()
            .unwrap()
    }

    #[test]
    fn text_frames_of_every_length_form_decode_to_the_json() {
        for len in [0usize, 10, 125, 126, 1000, 65535, 65536, 200_000] {
            let payload = "x".repeat(len);
            let frame = text_frame(&serde_json::json!({ "p": payload }));
            match decode(&frame) {
                Frame::Text(text) => {
                    let value: serde_json::Value = serde_json::from_slice(&text).unwrap();
                    assert_eq!(value["p"].as_str().unwrap().len(), len);
                }
                other => panic!("not a text frame: {other:?}"),
            }
        }
    }

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
    fn dropping_the_body_frees_the_queue_and_refuses_pushes() {
        let outbox = Outbox::new(100);
        outbox.push(Bytes::from(vec![0; 60])).unwrap();
        drop(OutboxBody(Arc::clone(&outbox)));
        assert_eq!(outbox.queued_bytes(), 0);
        assert_eq!(
            outbox.push(Bytes::from_static(b"x")),
            Err(PushError::Closed)
        );
    }
}
