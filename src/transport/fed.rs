//! A connection with no socket of its own: a tunnel's virtual connection (see
//! `relay::tunnel`). Its actor is the endpoint's ordinary connection actor with its
//! ordinary `Link`; what it reads comes from a bounded queue the tunnel fills, and the
//! frames it writes are taken from its outbox by the tunnel ([`Feed::next`]) rather than
//! by a writer task.
//!
//! Why not a loopback socket, as the first tunnels had: every message then crossed the
//! kernel twice on the home node (a write and a read, each with its wake-ups) and was
//! encoded and decoded as a WebSocket frame once more — about half of the home node's
//! instructions per relayed message (see BENCHMARKS.md, "Virtual connections without a
//! socket").

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::mpsc::{self, error::TrySendError};

use super::decode::Inbound;
use super::kill::KillSwitch;
use super::outbox::Outbox;

/// Most frames taken from the outbox at once.
const MAX_TAKE: usize = 64;

/// What a virtual connection wrote, decoded from its outbox.
#[derive(Debug, PartialEq, Eq)]
pub enum Sent {
    /// A text message.
    Text(Bytes),
    /// A heartbeat ping, to be answered.
    Ping,
    /// A close frame: its code and reason, if it has them.
    Close(Option<(u16, String)>),
}

/// The tunnel's way into a virtual connection: what the side sends waits here until the
/// actor reads it, bounded in messages and in bytes (a socket would push back; a tunnel
/// shares its link with others and cannot, so a side past either bound is cut). Clones
/// share the bounds.
#[derive(Debug, Clone)]
pub struct Intake {
    queue: mpsc::Sender<Inbound>,
    /// Bytes of the text messages waiting.
    queued: Arc<AtomicUsize>,
    max_bytes: usize,
    /// The size limit of one message, as on a socket.
    max_message_bytes: usize,
}

/// Why [`Intake::offer`] took nothing.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// The connection cannot keep up: past a bound.
    Full,
    /// The connection is gone.
    Gone,
}

impl Intake {
    pub(super) fn new(
        queue: mpsc::Sender<Inbound>,
        queued: Arc<AtomicUsize>,
        max_bytes: usize,
        max_message_bytes: usize,
    ) -> Self {
        Self {
            queue,
            queued,
            max_bytes,
            max_message_bytes,
        }
    }

    /// Queues one text message of the side, held to the size limit and to UTF-8 as a
    /// socket's reader would hold it (what passes neither reaches the actor as the event
    /// a socket would give it).
    pub fn text(&self, text: Bytes) -> Result<(), Refused> {
        self.offer(if text.len() > self.max_message_bytes {
            Inbound::TooLarge
        } else if std::str::from_utf8(&text).is_err() {
            Inbound::InvalidUtf8
        } else {
            Inbound::Text(text)
        })
    }

    /// Queues `item` for the actor, unless a bound would be passed or it is gone.
    pub fn offer(&self, item: Inbound) -> Result<(), Refused> {
        let len = match &item {
            Inbound::Text(text) => text.len(),
            _ => 0,
        };
        if self.queued.load(Ordering::Relaxed) + len > self.max_bytes {
            return Err(Refused::Full);
        }
        self.queued.fetch_add(len, Ordering::Relaxed);
        match self.queue.try_send(item) {
            Ok(()) => Ok(()),
            Err(refused) => {
                self.queued.fetch_sub(len, Ordering::Relaxed);
                Err(match refused {
                    TrySendError::Full(_) => Refused::Full,
                    TrySendError::Closed(_) => Refused::Gone,
                })
            }
        }
    }

    /// Queues `item` (no text), waiting while the queue is full; false if it is gone.
    pub async fn give(&self, item: Inbound) -> bool {
        self.queue.send(item).await.is_ok()
    }
}

/// The tunnel's end of a virtual connection. Dropping it frees what the outbox holds and
/// refuses later writes; the actor's stream ends once every [`Intake`] is dropped (after
/// what waits in it), or at once when the connection is cut ([`Feed::cut`]).
#[derive(Debug)]
pub struct Feed {
    outbox: Arc<Outbox>,
    kill: Arc<KillSwitch>,
    /// Frames taken from the outbox and not yet handed out.
    batch: VecDeque<Bytes>,
}

impl Feed {
    /// The tunnel's end of the connection writing to `outbox`, cut through `kill`.
    pub(super) fn new(outbox: Arc<Outbox>, kill: Arc<KillSwitch>) -> Self {
        Self {
            outbox,
            kill,
            batch: VecDeque::new(),
        }
    }

    /// The next thing the connection wrote, in order; `None` once it was cut, or closed
    /// and everything it wrote was taken. Cancel-safe.
    pub async fn next(&mut self) -> Option<Sent> {
        std::future::poll_fn(|cx| loop {
            if self.kill.watch_writer(cx) {
                return std::task::Poll::Ready(None);
            }
            if let Some(frame) = self.batch.pop_front() {
                match decode(frame) {
                    Some(sent) => return std::task::Poll::Ready(Some(sent)),
                    None => continue,
                }
            }
            match self.outbox.poll_take(cx, &mut self.batch, MAX_TAKE) {
                std::task::Poll::Ready(true) => continue,
                std::task::Poll::Ready(false) => return std::task::Poll::Ready(None),
                std::task::Poll::Pending => return std::task::Poll::Pending,
            }
        })
        .await
    }
}

impl Feed {
    /// Cuts the connection: its stream ends at once, whatever still waits in it.
    pub fn cut(&self) {
        self.kill.kill();
    }
}

impl Drop for Feed {
    fn drop(&mut self) {
        // Nothing will take these any more: free them, and refuse later pushes so a partner
        // still forwarding here learns the connection is gone.
        self.outbox.abandon();
    }
}

/// Decodes one frame the relay encoded (unmasked, unfragmented); `None` for what a tunnel
/// passes on nothing of (pongs, binary).
fn decode(frame: Bytes) -> Option<Sent> {
    let (&first, rest) = frame.split_first()?;
    let (&second, _) = rest.split_first()?;
    let start = match second & 0x7F {
        126 => 4,
        127 => 10,
        _ => 2,
    };
    let payload = frame.slice(start.min(frame.len())..);
    match first & 0x0F {
        0x1 => Some(Sent::Text(payload)),
        0x9 => Some(Sent::Ping),
        0x8 => {
            let reason = payload.split_first_chunk::<2>().map(|(code, text)| {
                let text = String::from_utf8_lossy(text).into_owned();
                (u16::from_be_bytes(*code), text)
            });
            Some(Sent::Close(reason))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::frame::{ping_frame, pong_frame, text_frame_of};

    #[test]
    fn every_frame_the_relay_writes_decodes_to_what_it_carries() {
        for len in [0usize, 125, 126, 65535, 65536] {
            let frame = text_frame_of(len, |out| out.resize(out.len() + len, b'a'));
            let Some(Sent::Text(body)) = decode(frame) else {
                panic!("a text frame of {len} bytes");
            };
            assert_eq!(body.len(), len);
            assert!(body.iter().all(|byte| *byte == b'a'));
        }
        assert_eq!(decode(ping_frame()), Some(Sent::Ping));
        assert_eq!(decode(pong_frame(b"x")), None);
        assert_eq!(decode(Bytes::new()), None);
    }
}
