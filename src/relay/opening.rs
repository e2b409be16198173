//! A connection's first request, read before the HTTP layer sees the connection. A plain
//! WebSocket upgrade — nearly every connection the relay gets — is answered and served
//! here, without actix-http's dispatcher; anything else goes to the HTTP layer with the
//! bytes read replayed, and is answered there exactly as before (see
//! [`crate::transport::handshake`] for what counts as plain).
//!
//! What the HTTP layer held a connection to while its head arrived holds here too: a head
//! not all in after `deadline` is answered `408` and the connection closed, as actix-http
//! does. A page from an origin not allowed is left to the HTTP layer's upgrade handler
//! (its 1008 close and its log line); a refused admission is answered here with the
//! response the HTTP layer's handler writes, through its own encoder.

use std::future::{poll_fn, Future};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::Poll;
use std::time::{Duration, Instant};

use actix_codec::{Decoder, Framed, FramedParts};
use actix_http::h1;
use actix_rt::net::TcpStream;
use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWriteExt, ReadBuf};

use super::{answer, serve, Relay};
use crate::connections::Admission;
use crate::error::ApiError;
use crate::ids::Endpoint;
use crate::metrics::METRICS;
use crate::transport::handshake::{self, Head, MAX_HEAD_BYTES, SWITCHING_MAX};
use crate::transport::{self, with_scratch, Killable};

/// How long writing an answer to the first request may take (a 101, a refusal, a 408):
/// a peer that does not read it is dropped, with its admission and HTTP slot.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// What became of a connection's first request.
pub enum First {
    /// Served here: the WebSocket is over, or the connection was answered and closed.
    Done,
    /// For the HTTP layer, with what was read replayed.
    Http(Killable<TcpStream>),
}

/// Reads the first request of a connection from `peer` and, if it is a plain WebSocket
/// upgrade, serves the WebSocket (the future ends with it).
pub async fn first_request(
    relay: &Relay,
    mut io: Killable<TcpStream>,
    peer: Option<SocketAddr>,
    deadline: Instant,
) -> First {
    match read_head(relay, &mut io, peer, deadline).await {
        Read::Upgrade(taken) => upgrade(relay, io, taken).await,
        Read::Refused {
            endpoint,
            refusal,
            head,
        } => refuse(io, peer, endpoint, refusal, head).await,
        Read::Other(read) => return First::Http(io.replaying(read)),
        Read::Closed => {}
        Read::TimedOut => {
            let _ = tokio::time::timeout(WRITE_TIMEOUT, async {
                let _ = io.write_all(&handshake::request_timeout()).await;
                let _ = io.shutdown().await;
            })
            .await;
        }
    }
    First::Done
}

/// An upgrade taken here, admitted.
struct Taken {
    endpoint: Endpoint,
    admission: Admission,
    key: [u8; 24],
    /// What the peer sent behind the head.
    early: Vec<u8>,
}

enum Read {
    Upgrade(Taken),
    /// A plain upgrade whose admission was refused.
    Refused {
        endpoint: Endpoint,
        refusal: ApiError,
        /// Everything read.
        head: BytesMut,
    },
    /// Anything else: everything read.
    Other(Bytes),
    /// The peer went away (or the socket failed) before a whole head.
    Closed,
    /// The head was not all in by the deadline.
    TimedOut,
}

enum Step {
    Wait,
    More,
    Done(Read),
}

/// Reads until the head is whole (or too large for this to read it), the peer goes, or
/// the deadline. Reads go into the thread's scratch buffer; only a head that takes more
/// than one read is copied out of it.
async fn read_head(
    relay: &Relay,
    io: &mut Killable<TcpStream>,
    peer: Option<SocketAddr>,
    deadline: Instant,
) -> Read {
    let mut held: Vec<u8> = Vec::new();
    let timeout = tokio::time::sleep_until(deadline.into());
    tokio::pin!(timeout);
    poll_fn(|cx| loop {
        let step = with_scratch(|scratch| {
            let mut buf = ReadBuf::new(scratch);
            match Pin::new(&mut *io).poll_read(cx, &mut buf) {
                Poll::Pending => Step::Wait,
                Poll::Ready(Err(_)) => Step::Done(Read::Closed),
                Poll::Ready(Ok(())) if buf.filled().is_empty() => {
                    Step::Done(match held.is_empty() {
                        true => Read::Closed,
                        false => Read::Other(std::mem::take(&mut held).into()),
                    })
                }
                Poll::Ready(Ok(())) => {
                    let fresh = buf.filled();
                    let read = match held.is_empty() {
                        true => decide(relay, peer, fresh),
                        false => {
                            held.extend_from_slice(fresh);
                            decide(relay, peer, &held)
                        }
                    };
                    match read {
                        Some(read) => Step::Done(read),
                        None => {
                            if held.is_empty() {
                                held.extend_from_slice(fresh);
                            }
                            match held.len() >= MAX_HEAD_BYTES {
                                true => Step::Done(Read::Other(std::mem::take(&mut held).into())),
                                false => Step::More,
                            }
                        }
                    }
                }
            }
        });
        match step {
            Step::Done(read) => return Poll::Ready(read),
            Step::More => continue,
            Step::Wait => {
                return match timeout.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Read::TimedOut),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    })
    .await
}

/// What `bytes`, the start of a connection, call for; `None` while the head is partial.
fn decide(relay: &Relay, peer: Option<SocketAddr>, bytes: &[u8]) -> Option<Read> {
    let upgrade = match handshake::parse(bytes, relay.client_addr.header_from(peer)) {
        Head::Partial => return None,
        Head::Other => return Some(Read::Other(Bytes::copy_from_slice(bytes))),
        Head::Upgrade(upgrade) => upgrade,
    };
    let endpoint = upgrade.endpoint;
    if !relay.origin_allowed_bytes(upgrade.origin, endpoint) {
        return Some(Read::Other(Bytes::copy_from_slice(bytes)));
    }
    let Ok(key) = <[u8; 24]>::try_from(upgrade.key) else {
        return Some(Read::Other(Bytes::copy_from_slice(bytes)));
    };
    let forwarded = upgrade.forwarded;
    let client = relay.client_addr.of_header(peer, move |_| forwarded);
    Some(match relay.admit_client(client, endpoint) {
        Ok(admission) => Read::Upgrade(Taken {
            endpoint,
            admission,
            key,
            early: bytes[upgrade.len..].to_vec(),
        }),
        Err(refusal) => Read::Refused {
            endpoint,
            refusal,
            head: BytesMut::from(bytes),
        },
    })
}

/// Answers 101 and serves the WebSocket until it is over.
async fn upgrade(relay: &Relay, mut io: Killable<TcpStream>, taken: Taken) {
    let Taken {
        endpoint,
        admission,
        key,
        early,
    } = taken;
    let unwritten = match switch_now(&io, &key) {
        Ok(unwritten) => unwritten,
        Err(_) => return,
    };
    if !unwritten.is_empty() {
        let written = tokio::time::timeout(WRITE_TIMEOUT, io.write_all(&unwritten)).await;
        if !matches!(written, Ok(Ok(()))) {
            return;
        }
    }
    drop(unwritten);
    METRICS.http(endpoint.as_str(), 101, None);
    let settings = relay.settings.snapshot();
    let limits = &settings.limits;
    // The socket leaves the HTTP cap here (counted by `max_connections_per_ip` now).
    let Some(upgraded) = transport::take(
        io,
        &early,
        limits.max_message_bytes,
        limits.max_outbound_bytes,
    ) else {
        return;
    };
    drop(early);
    serve(relay, endpoint, admission, upgraded, settings).await;
}

/// Writes the 101 for `key` as far as the socket takes it now; what it did not take.
fn switch_now(io: &Killable<TcpStream>, key: &[u8]) -> io::Result<Vec<u8>> {
    let mut answer = [0; SWITCHING_MAX];
    let len = handshake::switching_protocols(key, &mut answer);
    let tcp = io
        .get_ref()
        .ok_or_else(|| io::Error::from(io::ErrorKind::NotConnected))?;
    let written = match tcp.try_write(&answer[..len]) {
        Ok(written) => written,
        Err(err) if err.kind() == io::ErrorKind::WouldBlock => 0,
        Err(err) => return Err(err),
    };
    Ok(answer[written..len].to_vec())
}

/// Answers a refused upgrade as the HTTP layer's upgrade handler does: the request goes
/// through actix-http's codec (so the response is encoded for it, as there), then
/// [`answer`].
async fn refuse(
    io: Killable<TcpStream>,
    peer: Option<SocketAddr>,
    endpoint: Endpoint,
    refusal: ApiError,
    mut read: BytesMut,
) {
    let mut codec = h1::Codec::default();
    let Ok(Some(h1::Message::Item(mut req))) = codec.decode(&mut read) else {
        return;
    };
    req.head_mut().peer_addr = peer;
    let conn = Framed::from_parts(FramedParts::with_read_buf(io, codec, read));
    let _ = tokio::time::timeout(WRITE_TIMEOUT, answer(conn, endpoint.as_str(), refusal)).await;
}
