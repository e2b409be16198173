//! What every connection actor shares: reading frames, heartbeats, sending under the
//! outbox bound, and closing with the right code and one log line.
//!
//! `PairSocket`, `AgentSocket` and `ClientSocket` each own a [`Socket`] and keep only their
//! protocol's logic.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::{Actor, ActorContext, Context};
use actix_http::ws::CloseCode;
use bytes::Bytes;
use serde::Serialize;

use crate::config::HeartbeatSettings;
use crate::connections::Admission;
use crate::metrics::METRICS;
use crate::relay::protocol::{Common, ErrorBody, ErrorCode};
use crate::relay::registry::pairings::ConnId;
use crate::transport::{ping_frame, pong_frame, text_frame, Inbound, Link, PushError};

/// The four WebSocket endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `/mac`
    Mac,
    /// `/browser`
    Browser,
    /// `/ws/agent`
    Agent,
    /// `/ws/client`
    Client,
}

impl Endpoint {
    /// Every endpoint, in index order.
    pub const ALL: [Endpoint; 4] = [Self::Mac, Self::Browser, Self::Agent, Self::Client];

    /// Its path.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Mac => "/mac",
            Self::Browser => "/browser",
            Self::Agent => "/ws/agent",
            Self::Client => "/ws/client",
        }
    }

    /// The endpoint served at `route`, if it is a WebSocket route.
    pub fn from_route(route: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|e| e.as_str() == route)
    }

    /// Whether web pages open it (so `server.allowed_origins` applies).
    pub fn browser_facing(self) -> bool {
        matches!(self, Self::Browser | Self::Client)
    }
}

/// How early a heartbeat ping may go out, so tick jitter never skips one.
const PING_SLACK: Duration = Duration::from_millis(250);

/// Why a connection ends; decides the close frame, and whether a partner may wait for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The peer sent a close frame.
    PeerClosed,
    /// The socket ended without a close frame.
    Lost,
    /// Nothing arrived for interval + timeout.
    HeartbeatTimeout,
    /// It read slower than it was written to, past `limits.max_outbound_bytes`.
    SlowConsumer,
    /// A message over `limits.max_message_bytes`.
    TooLarge,
    /// Broken WebSocket framing.
    ProtocolError,
    /// Never paired, or never authenticated, in time.
    Idle,
    /// A newer connection took its place (resume, or a second agent with the same token).
    Replaced,
    /// Its agent's machine was deleted, or its credentials were refused.
    Refused,
}

impl Outcome {
    /// Every outcome, in index order (for metrics).
    pub const ALL: [Outcome; 9] = [
        Self::PeerClosed,
        Self::Lost,
        Self::HeartbeatTimeout,
        Self::SlowConsumer,
        Self::TooLarge,
        Self::ProtocolError,
        Self::Idle,
        Self::Replaced,
        Self::Refused,
    ];

    /// A metric label.
    pub fn label(self) -> &'static str {
        match self {
            Self::PeerClosed => "peer_closed",
            Self::Lost => "lost",
            Self::HeartbeatTimeout => "heartbeat_timeout",
            Self::SlowConsumer => "slow_consumer",
            Self::TooLarge => "message_too_large",
            Self::ProtocolError => "protocol_error",
            Self::Idle => "idle",
            Self::Replaced => "replaced",
            Self::Refused => "refused",
        }
    }

    /// Only a connection that vanished may be resumed; every other end is final at once.
    pub fn clean(self) -> bool {
        !matches!(self, Self::Lost | Self::HeartbeatTimeout)
    }

    /// For logs and close frames.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PeerClosed => "peer closed",
            Self::Lost => "connection lost",
            Self::HeartbeatTimeout => "heartbeat timeout",
            Self::SlowConsumer => "too slow: outbound buffer full",
            Self::TooLarge => "message too large",
            Self::ProtocolError => "protocol error",
            Self::Idle => "not paired or authenticated in time",
            Self::Replaced => "replaced by a newer connection",
            Self::Refused => "access revoked",
        }
    }
}

/// What the actor should do with one inbound event.
pub enum Step {
    /// A whole text message for the protocol to parse.
    Text(Bytes),
    /// Handled here (control frame, or an error was sent).
    Done,
    /// The connection must end.
    Stop(Outcome),
}

/// One WebSocket's shared state.
pub struct Socket {
    /// Process-unique id.
    pub conn: ConnId,
    /// Which endpoint, for logs and metrics.
    pub endpoint: Endpoint,
    /// The writing half.
    pub link: Link,
    /// Its place among the open connections; released when the actor is dropped.
    admission: Admission,
    opened: Instant,
    last_ping: Instant,
    outcome: Option<Outcome>,
}

impl Socket {
    /// State for a freshly upgraded, admitted connection.
    pub fn new(admission: Admission, link: Link) -> Self {
        let now = Instant::now();
        admission.track(Arc::clone(&link.outbox), link.kill_switch());
        tracing::info!(
            conn = admission.conn,
            endpoint = admission.endpoint.as_str(),
            client = %admission.ip,
            "connection opened"
        );
        Self {
            conn: admission.conn,
            endpoint: admission.endpoint,
            link,
            admission,
            opened: now,
            last_ping: now,
            outcome: None,
        }
    }

    /// The client's address (through trusted proxies).
    pub fn client_ip(&self) -> std::net::IpAddr {
        self.admission.ip
    }

    /// Records why the connection ends (the first reason wins).
    pub fn end(&mut self, outcome: Outcome) {
        self.outcome.get_or_insert(outcome);
    }

    /// Why it ends; a connection that just stopped without a reason was lost.
    pub fn outcome(&mut self) -> Outcome {
        *self.outcome.get_or_insert(Outcome::Lost)
    }

    /// Queues a frame; `Err` means this peer is too slow and must be dropped.
    pub fn push(&mut self, frame: Bytes) -> Result<(), Outcome> {
        match self.link.outbox.push(frame) {
            Ok(()) | Err(PushError::Closed) => Ok(()),
            Err(PushError::Full) => Err(Outcome::SlowConsumer),
        }
    }

    /// Queues one protocol message.
    pub fn send<T: Serialize + ?Sized>(&mut self, message: &T) -> Result<(), Outcome> {
        self.push(text_frame(message))
    }

    /// Queues `{"type":"error","code","message"}`.
    pub fn error(&mut self, code: ErrorCode, message: &str) -> Result<(), Outcome> {
        self.send(&Common::Error(ErrorBody {
            code,
            message: message.into(),
        }))
    }

    /// Handles what is common to every endpoint; returns text messages to the caller.
    pub fn receive(&mut self, item: Inbound, max_message_bytes: usize) -> Step {
        self.link.heard();
        let sent = match item {
            Inbound::Text(text) => return Step::Text(text),
            Inbound::Binary => self.error(
                ErrorCode::InvalidMessage,
                "binary frames are not part of the protocol; send JSON text",
            ),
            Inbound::Ping(payload) => self.push(pong_frame(&payload)),
            Inbound::Pong => Ok(()),
            Inbound::Close(_) => return Step::Stop(Outcome::PeerClosed),
            Inbound::TooLarge => {
                let message = format!("messages are limited to {max_message_bytes} bytes");
                let _ = self.error(ErrorCode::MessageTooLarge, &message);
                return Step::Stop(Outcome::TooLarge);
            }
            Inbound::Protocol(err) => {
                tracing::debug!(conn = self.conn, %err, "websocket protocol error");
                return Step::Stop(Outcome::ProtocolError);
            }
        };
        match sent {
            Ok(()) => Step::Done,
            Err(outcome) => Step::Stop(outcome),
        }
    }

    /// One heartbeat tick: an outcome if the peer fell silent (or cannot take the ping).
    /// `json_ping` adds the `{"type":"ping","ts"}` of the account endpoints.
    pub fn heartbeat(&mut self, settings: &HeartbeatSettings, json_ping: bool) -> Option<Outcome> {
        if self.link.silence() > settings.deadline() {
            return Some(Outcome::HeartbeatTimeout);
        }
        // Ticks jitter by a few milliseconds; without slack, a tick landing just short of
        // the interval would postpone the ping by a whole tick.
        if self.last_ping.elapsed() + PING_SLACK < settings.interval() {
            return None;
        }
        self.last_ping = Instant::now();
        let mut sent = self.push(ping_frame());
        if json_ping && sent.is_ok() {
            let ts = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_millis() as u64;
            sent = self.send(&Common::Ping { ts: ts.into() });
        }
        sent.err()
    }

    /// Closes the socket as the outcome demands, and logs the one closing line.
    pub fn close(&mut self) {
        let outcome = self.outcome();
        match outcome {
            Outcome::PeerClosed => self.link.close(CloseCode::Normal, ""),
            Outcome::Idle | Outcome::Replaced => {
                self.link.close(CloseCode::Normal, outcome.as_str())
            }
            Outcome::Refused | Outcome::SlowConsumer => {
                self.link.close(CloseCode::Policy, outcome.as_str())
            }
            Outcome::TooLarge => self.link.close(CloseCode::Size, outcome.as_str()),
            Outcome::ProtocolError => self.link.close(CloseCode::Protocol, outcome.as_str()),
            Outcome::Lost | Outcome::HeartbeatTimeout => self.link.cut(),
        }
        if !matches!(outcome, Outcome::PeerClosed | Outcome::Lost) {
            METRICS.dropped(outcome);
        }
        tracing::info!(
            conn = self.conn,
            endpoint = self.endpoint.as_str(),
            reason = outcome.as_str(),
            duration_ms = self.opened.elapsed().as_millis() as u64,
            "connection closed"
        );
    }
}

/// A connection actor built on a [`Socket`]: the helpers every endpoint shares, and the
/// dispatch of inbound frames to its protocol.
pub trait SocketActor: Actor<Context = Context<Self>> {
    /// Its socket.
    fn socket(&mut self) -> &mut Socket;

    /// The largest message it accepts (for the `MESSAGE_TOO_LARGE` text).
    fn max_message_bytes(&self) -> usize;

    /// One whole text message of its protocol.
    fn on_text(&mut self, text: &[u8], ctx: &mut Context<Self>);

    /// Ends the connection for `outcome` (the first reason recorded wins).
    fn finish(&mut self, outcome: Outcome, ctx: &mut Context<Self>) {
        self.socket().end(outcome);
        ctx.stop();
    }

    /// Queues a message for this peer; a peer too slow to take it is dropped.
    fn send<T: Serialize + ?Sized>(&mut self, message: &T, ctx: &mut Context<Self>) {
        if let Err(outcome) = self.socket().send(message) {
            self.finish(outcome, ctx);
        }
    }

    /// Queues an `error` for this peer.
    fn error(&mut self, code: ErrorCode, message: &str, ctx: &mut Context<Self>) {
        if let Err(outcome) = self.socket().error(code, message) {
            self.finish(outcome, ctx);
        }
    }

    /// Handles one inbound event: control frames here, text via [`Self::on_text`].
    fn receive(&mut self, item: Inbound, ctx: &mut Context<Self>) {
        let max = self.max_message_bytes();
        match self.socket().receive(item, max) {
            Step::Text(text) => self.on_text(&text, ctx),
            Step::Done => {}
            Step::Stop(outcome) => self.finish(outcome, ctx),
        }
    }
}

/// How often connection actors run their heartbeat check: often enough to notice silence
/// within a second or so of the deadline, rarely enough to cost nothing when idle.
pub fn tick(settings: &HeartbeatSettings) -> Duration {
    Duration::from_secs(
        settings
            .interval_secs
            .min(settings.timeout_secs)
            .clamp(1, 5),
    )
}
