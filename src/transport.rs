//! WebSocket plumbing shared by every connection actor.
//!
//! Why not `actix-web-actors` or `actix-ws`: in both, what the actor writes goes through
//! a queue that the HTTP response body drains, and nothing bounds it while a peer stops
//! reading (actix-web #2441; in `actix-web-actors` the actor itself is frozen as well).
//! Here an upgraded socket is taken out of the HTTP dispatcher altogether ([`take`]): the
//! actor is an ordinary `actix::Actor` with its own timers that polls the socket's reading
//! half as a stream; it writes to a byte-bounded [`Outbox`] that a small writer task drains
//! into the socket; and either can cut the socket through its [`KillSwitch`]. A slow peer
//! therefore costs at most `limits.max_outbound_bytes` and is dropped, its actor never stops
//! ticking, and an idle connection holds no read or write buffer.

mod decode;
mod fed;
mod frame;
pub mod handshake;
mod kill;
mod outbox;
mod reaper;
mod wire;

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_http::ws::{CloseCode, CloseReason};
use actix_rt::net::TcpStream;
use tokio::sync::mpsc;

pub use decode::Inbound;
pub use fed::{Feed, Intake, Refused, Sent};
pub use frame::{header_len, ping_frame, pong_frame, text_frame, text_frame_of};
pub use kill::{KillSwitch, Killable, Linger};
pub use outbox::{Outbox, PushError};
pub use wire::{with_scratch, InboundStream, Writer};

/// After a close frame is queued, how long the peer gets to read it before the socket is cut.
pub const CLOSE_LINGER: Duration = Duration::from_secs(2);

/// The writing half of one WebSocket, owned by its connection actor.
#[derive(Debug)]
pub struct Link {
    /// Frames for this peer; partners push here too.
    pub outbox: Arc<Outbox>,
    kill: Arc<KillSwitch>,
    /// When anything last arrived from the peer: the heartbeat's measure of life.
    last_heard: Instant,
}

impl Link {
    /// Records that a frame arrived.
    pub fn heard(&mut self) {
        self.last_heard = Instant::now();
    }

    /// How long the peer has been silent.
    pub fn silence(&self) -> Duration {
        self.last_heard.elapsed()
    }

    /// Queues a close frame; the socket is cut after [`CLOSE_LINGER`] if the peer has not
    /// read it by then.
    pub fn close(&self, code: CloseCode, description: &str) {
        self.outbox.close(Some(CloseReason {
            code,
            description: Some(description.to_owned()),
        }));
        reaper::cut_after_linger(Arc::clone(&self.kill));
    }

    /// The switch that cuts this socket.
    pub fn kill_switch(&self) -> Arc<KillSwitch> {
        Arc::clone(&self.kill)
    }

    /// Cuts the socket now, without a close frame.
    pub fn cut(&self) {
        self.kill.kill();
    }
}

/// An upgraded WebSocket, out of the HTTP layer: the writing half for its actor, the stream
/// of what the peer sends, and the writer task that drains the outbox into the socket.
pub struct Upgraded {
    /// The actor's writing half.
    pub link: Link,
    /// What the peer sends.
    pub inbound: InboundStream,
    /// Drains the outbox; ends when the connection is over.
    pub writer: Writer,
}

/// Takes an upgraded connection's socket out of the HTTP layer (after its 101 was
/// written). `early` holds what the peer sent right behind the upgrade request. `None` if
/// the socket is already gone.
pub fn take(
    io: Killable<TcpStream>,
    early: &[u8],
    max_message_bytes: usize,
    max_outbound_bytes: usize,
) -> Option<Upgraded> {
    let (tcp, kill, linger, unread) = io.into_parts()?;
    // What the HTTP layer read of the bytes replayed to it and left (`early`) comes first;
    // then what it never read of them.
    let joined;
    let early = match unread.is_empty() {
        true => early,
        false => {
            joined = [early, &unread[..]].concat();
            &joined[..]
        }
    };
    let outbox = Outbox::new(max_outbound_bytes);
    let (inbound, writer) = wire::open(
        tcp,
        early,
        Arc::clone(&outbox),
        Arc::clone(&kill),
        linger,
        max_message_bytes,
    );
    let link = Link {
        outbox,
        kill,
        last_heard: Instant::now(),
    };
    Some(Upgraded {
        link,
        inbound,
        writer,
    })
}

/// A virtual connection, with no socket (see [`Feed`]): the actor's writing half and
/// stream, the tunnel's way in (at most `queue` messages and `max_outbound_bytes` of them
/// wait for the actor, each held to `max_message_bytes`), and its way out. What the actor
/// writes is bounded by `max_outbound_bytes`, as on a socket.
pub fn fed(
    max_message_bytes: usize,
    max_outbound_bytes: usize,
    queue: usize,
) -> (Link, InboundStream, Intake, Feed) {
    let outbox = Outbox::new(max_outbound_bytes);
    let kill = Arc::new(KillSwitch::default());
    let (sender, receiver) = mpsc::channel(queue);
    let queued = Arc::default();
    let inbound = InboundStream::fed(Arc::clone(&kill), receiver, Arc::clone(&queued));
    let sender = Intake::new(sender, queued, max_outbound_bytes, max_message_bytes);
    let feed = Feed::new(Arc::clone(&outbox), Arc::clone(&kill));
    let link = Link {
        outbox,
        kill,
        last_heard: Instant::now(),
    };
    (link, inbound, sender, feed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_http::ws::{CloseCode, CloseReason};
    use bytes::Bytes;
    use futures_util::StreamExt;

    fn text(len: usize) -> Bytes {
        text_frame_of(len, |out| out.resize(out.len() + len, b'a'))
    }

    #[tokio::test]
    async fn a_fed_connection_s_writes_come_out_in_order_then_its_close_then_the_end() {
        let (link, _inbound, _queue, mut feed) = fed(1 << 20, 1 << 20, 4);
        link.outbox.push(text(3)).unwrap();
        link.outbox.push(ping_frame()).unwrap();
        link.outbox.close(Some(CloseReason {
            code: CloseCode::Policy,
            description: Some("slow_consumer".into()),
        }));
        assert_eq!(
            feed.next().await,
            Some(Sent::Text(Bytes::from_static(b"aaa")))
        );
        assert_eq!(feed.next().await, Some(Sent::Ping));
        let close = Some((1008, "slow_consumer".to_owned()));
        assert_eq!(feed.next().await, Some(Sent::Close(close)));
        assert_eq!(feed.next().await, None);
    }

    #[tokio::test]
    async fn a_cut_ends_both_halves_of_a_fed_connection_and_a_dropped_feed_refuses_pushes() {
        let (link, mut inbound, intake, mut feed) = fed(1 << 20, 1 << 20, 4);
        assert!(intake.give(Inbound::Pong).await);
        assert!(matches!(inbound.next().await, Some(Inbound::Pong)));
        link.outbox.push(text(1)).unwrap();
        link.cut();
        assert_eq!(feed.next().await, None, "cut: nothing more is taken");
        assert!(inbound.next().await.is_none(), "cut: the stream ends");
        drop(feed);
        assert!(link.outbox.push(text(1)).is_err());
        assert_eq!(link.outbox.queued_bytes(), 0);
    }

    #[tokio::test]
    async fn a_fed_stream_ends_when_the_tunnel_lets_go_and_its_queue_is_bounded() {
        let (_link, mut inbound, intake, _feed) = fed(1 << 20, 1 << 20, 2);
        intake.offer(Inbound::Pong).unwrap();
        intake.offer(Inbound::Pong).unwrap();
        assert_eq!(
            intake.offer(Inbound::Pong),
            Err(Refused::Full),
            "bounded at 2"
        );
        drop(intake);
        assert!(inbound.next().await.is_some());
        assert!(inbound.next().await.is_some());
        assert!(inbound.next().await.is_none());
    }

    #[tokio::test]
    async fn a_fed_connection_holds_text_to_the_rules_of_a_socket_reader() {
        let (_link, mut inbound, intake, _feed) = fed(4, 1 << 20, 8);
        intake.text(Bytes::from_static(b"abcd")).unwrap();
        intake.text(Bytes::from_static(b"abcde")).unwrap();
        intake.text(Bytes::from_static(b"\xff")).unwrap();
        assert!(matches!(inbound.next().await, Some(Inbound::Text(t)) if &t[..] == b"abcd"));
        assert!(matches!(inbound.next().await, Some(Inbound::TooLarge)));
        assert!(matches!(inbound.next().await, Some(Inbound::InvalidUtf8)));
    }

    #[tokio::test]
    async fn what_waits_for_a_fed_connection_is_bounded_in_bytes_and_freed_as_it_is_read() {
        let (_link, mut inbound, intake, _feed) = fed(100, 100, 64);
        let text = |len| Inbound::Text(Bytes::from(vec![b'a'; len]));
        intake.offer(text(60)).unwrap();
        assert_eq!(intake.offer(text(41)), Err(Refused::Full), "60 + 41 > 100");
        intake.offer(text(40)).unwrap();
        assert!(matches!(inbound.next().await, Some(Inbound::Text(t)) if t.len() == 60));
        intake.offer(text(60)).unwrap();
        drop(inbound);
        assert_eq!(intake.offer(text(0)), Err(Refused::Gone));
    }
}
