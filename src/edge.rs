//! What every plain HTTP connection is held to before the routes see it: a cap on open
//! connections per socket peer, a deadline for receiving a request body, and CORS.
//!
//! Without them one address holding slow request bodies (a byte a second) kept each of its
//! connections for as long as it liked, and enough of them starved every other client. The
//! cap refuses a peer's connections past `limits.max_http_connections_per_ip` at accept
//! (a `429` written straight to the socket, then a lingering close); the deadline answers
//! `408` to a request whose body has not all arrived `server.body_timeout_secs` after its
//! head. A WebSocket counts against the cap only until it is upgraded; from then on
//! `limits.max_connections_per_ip` counts it ([`crate::connections`]).

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use actix_web::dev::{Payload, ServiceRequest};
use actix_web::error::PayloadError;
use actix_web::http::header;
use actix_web::HttpMessage;
use bytes::Bytes;
use futures_util::Stream;

use crate::limits::AddressKey;
use crate::metrics::METRICS;
use crate::proxy::ClientAddr;

/// CORS for the HTTP API (`/auth/*`, `/api/*`), for exactly the origins in
/// `server.allowed_origins` (compared as the WebSocket origin check does, ignoring case).
/// Empty allows no cross-origin call: opening the API to any page would let any web site use
/// its visitors' browsers to guess passwords from thousands of addresses. Preflights are
/// answered; `Authorization` and `Content-Type` may be sent; `Retry-After` and
/// `WWW-Authenticate` may be read. Other routes never get CORS headers. Tokens travel in
/// headers, never cookies, so credentials mode is not enabled.
pub fn cors(allowed_origins: &[String]) -> actix_cors::Cors {
    let allowed = allowed_origins.to_vec();
    actix_cors::Cors::default()
        .allowed_origin_fn(move |origin, head| {
            let path = head.uri.path();
            let api = path.starts_with("/auth/") || path.starts_with("/api/");
            api && origin.to_str().is_ok_and(|origin| {
                allowed
                    .iter()
                    .any(|allowed| allowed.eq_ignore_ascii_case(origin))
            })
        })
        .allowed_methods(["GET", "POST", "DELETE"])
        .allowed_headers([header::AUTHORIZATION, header::CONTENT_TYPE])
        .expose_headers([header::RETRY_AFTER, header::WWW_AUTHENTICATE])
        .max_age(3600)
}

/// Written to a connection refused at accept, before its request is even read. The
/// connection then closes (lingering, so the client reads this rather than a reset).
pub const TOO_MANY_CONNECTIONS: &[u8] = b"HTTP/1.1 429 Too Many Requests\r\n\
content-type: application/json\r\nretry-after: 60\r\nconnection: close\r\ncontent-length: 50\r\n\r\n\
{\"error\":\"Too many connections from this address\"}";

/// A peer has `limits.max_http_connections_per_ip` connections open already.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("too many connections from this address")]
pub struct TooManyConnections;

/// Open plain HTTP connections, counted per socket peer.
#[derive(Debug)]
pub struct HttpConnections {
    max_per_address: usize,
    /// Peers not counted: proxies carry many clients (and limit their own).
    proxies: ClientAddr,
    open: Mutex<HashMap<AddressKey, usize>>,
}

/// One admitted connection's place in its peer's count; given back when dropped (with the
/// connection) or released (when it becomes a WebSocket).
#[derive(Debug)]
pub struct HttpSlot {
    connections: Arc<HttpConnections>,
    key: AddressKey,
    held: AtomicBool,
}

impl HttpConnections {
    /// Admits at most `max_per_address` connections per peer, any number from `proxies`.
    pub fn new(max_per_address: usize, proxies: ClientAddr) -> Arc<Self> {
        Arc::new(Self {
            max_per_address,
            proxies,
            open: Mutex::default(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<AddressKey, usize>> {
        self.open
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// A place for a connection from `peer`: `Ok(None)` for a trusted proxy (not counted).
    pub fn admit(self: &Arc<Self>, peer: IpAddr) -> Result<Option<HttpSlot>, TooManyConnections> {
        if self.proxies.is_trusted(peer) {
            return Ok(None);
        }
        // A dual-stack listener sees IPv4 clients as ::ffff:a.b.c.d; each is its own peer.
        let key = AddressKey::address(peer.to_canonical());
        let mut open = self.lock();
        let count = open.entry(key).or_default();
        if *count >= self.max_per_address {
            METRICS.rate_limited.fetch_add(1, Ordering::Relaxed);
            return Err(TooManyConnections);
        }
        *count += 1;
        Ok(Some(HttpSlot {
            connections: Arc::clone(self),
            key,
            held: AtomicBool::new(true),
        }))
    }

    /// Connections counted for `peer` now.
    pub fn open_from(&self, peer: IpAddr) -> usize {
        let key = AddressKey::address(peer.to_canonical());
        self.lock().get(&key).copied().unwrap_or(0)
    }
}

impl HttpSlot {
    /// Gives the place back now (the connection became a WebSocket, counted elsewhere).
    pub fn release(&self) {
        if !self.held.swap(false, Ordering::AcqRel) {
            return;
        }
        let mut open = self.connections.lock();
        if let Some(count) = open.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.key);
            }
        }
    }
}

impl Drop for HttpSlot {
    fn drop(&mut self) {
        self.release();
    }
}

/// Makes `req`'s body fail with `TimedOut` unless all of it arrives within `within`. Requests
/// without a body, and WebSocket upgrades (whose "body" is the socket), are left alone.
pub fn limit_body(req: &mut ServiceRequest, within: Duration) {
    let headers = req.headers();
    let has_body = headers.contains_key(header::CONTENT_LENGTH)
        || headers.contains_key(header::TRANSFER_ENCODING);
    if !has_body || headers.contains_key(header::UPGRADE) {
        return;
    }
    let body = BodyDeadline {
        body: req.take_payload(),
        deadline: Box::pin(tokio::time::sleep(within)),
        expired: false,
    };
    req.set_payload(Payload::Stream {
        payload: Box::pin(body),
    });
}

/// Whether `err` is the body deadline passing (answered `408`).
pub fn is_body_timeout(err: &PayloadError) -> bool {
    matches!(err, PayloadError::Io(err) if err.kind() == io::ErrorKind::TimedOut)
}

/// A request body that fails once its deadline passes.
struct BodyDeadline {
    body: Payload,
    deadline: Pin<Box<tokio::time::Sleep>>,
    expired: bool,
}

impl Stream for BodyDeadline {
    type Item = Result<Bytes, PayloadError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.expired {
            return Poll::Ready(None);
        }
        if let Poll::Ready(next) = Pin::new(&mut self.body).poll_next(cx) {
            return Poll::Ready(next);
        }
        if self.deadline.as_mut().poll(cx).is_ready() {
            self.expired = true;
            let err = io::Error::new(io::ErrorKind::TimedOut, "request body too slow");
            return Poll::Ready(Some(Err(PayloadError::Io(err))));
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ForwardedHeader;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn connections_per_peer_are_capped_proxies_are_not_and_places_come_back() {
        let proxies = ClientAddr::new(
            vec!["10.0.0.1/32".parse().unwrap()],
            ForwardedHeader::XForwardedFor,
        );
        let connections = HttpConnections::new(2, proxies);
        let a = connections.admit(ip("192.0.2.1")).unwrap();
        let b = connections.admit(ip("192.0.2.1")).unwrap();
        assert!(a.is_some() && b.is_some());
        assert!(connections.admit(ip("192.0.2.1")).is_err());
        assert!(connections.admit(ip("192.0.2.2")).is_ok());
        for _ in 0..10 {
            assert!(connections.admit(ip("10.0.0.1")).unwrap().is_none());
        }
        // Released twice (upgrade, then drop) counts once.
        a.as_ref().unwrap().release();
        drop(a);
        assert_eq!(connections.open_from(ip("192.0.2.1")), 1);
        assert!(connections.admit(ip("192.0.2.1")).is_ok());
    }
}
