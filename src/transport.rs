//! WebSocket plumbing shared by every connection actor.
//!
//! Why not `actix-web-actors` or `actix-ws`: in both, what the actor writes goes through
//! a queue that the HTTP response body drains, and nothing bounds it while a peer stops
//! reading (actix-web #2441; in `actix-web-actors` the actor itself is frozen as well). Here
//! the actor is an ordinary `actix::Actor` with its own timers; it writes to a byte-bounded
//! [`Outbox`] that the body drains; and it can cut its TCP stream through a [`KillSwitch`]
//! even when the dispatcher is stuck on a full socket. A slow peer therefore costs at most
//! `limits.max_outbound_bytes` and is dropped, and its actor never stops ticking.

mod frame;
mod inbound;
mod kill;
mod outbox;

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_http::body::BodyStream;
use actix_http::ws::{CloseCode, CloseReason};
use actix_web::web::Payload;
use actix_web::{HttpRequest, HttpResponse};

pub use frame::{header_len, ping_frame, pong_frame, text_frame, text_frame_of};
pub use inbound::{Inbound, InboundStream};
pub use kill::{KillSwitch, Killable, Linger};
pub use outbox::{Outbox, OutboxBody, PushError};

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
        let kill = Arc::clone(&self.kill);
        actix_rt::spawn(async move {
            actix_rt::time::sleep(CLOSE_LINGER).await;
            kill.kill();
        });
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

/// Completes a WebSocket handshake: the 101 response to return, the [`Link`] to write
/// with, and the stream of what the peer sends.
pub fn upgrade(
    req: &HttpRequest,
    payload: Payload,
    max_message_bytes: usize,
    max_outbound_bytes: usize,
) -> Result<(HttpResponse, Link, InboundStream), actix_web::Error> {
    let mut response = actix_http::ws::handshake(req.head()).map_err(handshake_error)?;
    let outbox = Outbox::new(max_outbound_bytes);
    let response = response
        .message_body(BodyStream::new(OutboxBody(Arc::clone(&outbox))))?
        .map_into_boxed_body();
    let kill = req
        .conn_data::<Arc<KillSwitch>>()
        .cloned()
        // Only absent if the server was built without `Killable` streams: still correct,
        // merely unable to cut a stuck socket early.
        .unwrap_or_default();
    let link = Link {
        outbox,
        kill,
        last_heard: Instant::now(),
    };
    Ok((
        HttpResponse::from(response),
        link,
        InboundStream::new(payload, max_message_bytes),
    ))
}

fn handshake_error(err: actix_http::ws::HandshakeError) -> actix_web::Error {
    actix_web::error::ErrorBadRequest(format!("WebSocket upgrade required: {err}"))
}
