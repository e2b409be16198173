//! The skeleton every connection actor shares: one generic actor, [`Connection`], over a
//! [`Protocol`] that holds only its endpoint's state and decisions.
//!
//! Why a generic actor rather than a macro or three copies: the skeleton (register in
//! `started`, heartbeat by deadline, frames in through a stream, commands in through
//! the mailbox, unregister in `stopping`, close with the right code in `stopped`) is written
//! and type-checked once, and a protocol cannot forget a step. Each protocol is a plain
//! struct; the trait says exactly what it decides.
//!
//! [`Socket`] is the per-connection state the skeleton owns: the outbox it writes to (under
//! the delivery policy of [`super::delivery`]), liveness, and the one closing log line.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use actix_http::ws::CloseCode;
use bytes::Bytes;
use serde::Serialize;

use super::delivery::{Command, Delivery, Peer};
use super::protocol::{Common, ErrorBody, ErrorCode, Refusal};
use crate::config::{HeartbeatSettings, Settings};
use crate::connections::Admission;
use crate::ids::{ConnId, Departure, DropReason, Endpoint, Outcome};
use crate::metrics::METRICS;
use crate::transport::{ping_frame, pong_frame, text_frame, Inbound, InboundStream, Link};

/// How early a heartbeat ping may go out, so timer jitter never skips one.
const PING_SLACK: Duration = Duration::from_millis(250);
/// The shortest wait between two heartbeat checks (a deadline just passed never spins).
const MIN_WAKE: Duration = Duration::from_millis(50);

/// What a connection actor starts from: its admitted, upgraded socket and the settings.
pub struct Opened {
    /// The socket (admission, outbox, kill switch).
    pub socket: Socket,
    /// What the peer sends.
    pub inbound: InboundStream,
    /// The effective settings.
    pub settings: Arc<Settings>,
}

/// One endpoint's protocol: its state, and what it does with each event.
pub trait Protocol: Sized + Unpin + 'static {
    /// What registries and partners tell this connection.
    type Command: Command;
    /// Whether the relay also sends JSON `{"type":"ping"}` heartbeats on this endpoint.
    const JSON_PING: bool;

    /// The actor started: register, arm deadlines.
    fn started(conn: &mut Connection<Self>, ctx: &mut Ctx<Self>);
    /// One whole text message from the peer.
    fn on_text(conn: &mut Connection<Self>, text: Bytes, ctx: &mut Ctx<Self>);
    /// One command from a registry or a partner.
    fn on_command(conn: &mut Connection<Self>, command: Self::Command, ctx: &mut Ctx<Self>);
    /// A deadline of the protocol's own (e.g. idle unpaired): when it passes, the connection
    /// ends for the outcome. A protocol that moves it earlier calls [`Connection::rearm`].
    fn deadline(_conn: &Connection<Self>) -> Option<(Instant, Outcome)> {
        None
    }
    /// The actor is stopping: unregister.
    fn stopping(conn: &mut Connection<Self>);
}

/// The actor context of a connection speaking `P`.
pub type Ctx<P> = Context<Connection<P>>;

/// One WebSocket connection: the shared skeleton around a protocol's state.
pub struct Connection<P> {
    /// The socket.
    pub socket: Socket,
    /// The effective settings.
    pub settings: Arc<Settings>,
    /// The protocol's own state.
    pub proto: P,
    /// When the next heartbeat check is due, and its timer.
    wake: Option<(Instant, SpawnHandle)>,
}

impl<P: Protocol> Connection<P> {
    /// Starts the actor for a freshly upgraded connection.
    pub fn start(opened: Opened, proto: P) -> Addr<Self> {
        let Opened {
            socket,
            inbound,
            settings,
        } = opened;
        Self::create(move |ctx| {
            ctx.add_stream(inbound);
            Self {
                socket,
                settings,
                proto,
                wake: None,
            }
        })
    }

    /// Ends the connection for `outcome` (the first reason recorded wins).
    pub fn finish(&mut self, outcome: Outcome, ctx: &mut Ctx<P>) {
        self.socket.end(outcome);
        ctx.stop();
    }

    /// Queues a message for this peer; a peer too slow to take it is dropped.
    pub fn send<T: Serialize + ?Sized>(&mut self, message: &T, ctx: &mut Ctx<P>) {
        if let Err(outcome) = self.socket.send(message) {
            self.finish(outcome, ctx);
        }
    }

    /// Queues an `error` for this peer.
    pub fn error(&mut self, code: ErrorCode, message: &str, ctx: &mut Ctx<P>) {
        if let Err(outcome) = self.socket.error(code, message) {
            self.finish(outcome, ctx);
        }
    }

    /// Queues the `error` of a refused request.
    pub fn refuse(&mut self, (code, message): Refusal, ctx: &mut Ctx<P>) {
        self.error(code, message, ctx);
    }

    /// How others reach this connection.
    pub fn peer(&self, ctx: &Ctx<P>) -> Peer<P::Command> {
        Peer::new(
            self.socket.conn,
            ctx.address().recipient(),
            Arc::clone(&self.socket.link.outbox),
        )
    }

    /// Runs `work` (a registry request, a database look-up) and then `then`, reading
    /// nothing else from the peer meanwhile: its next frames wait in the socket (TCP pushes
    /// back, so the wait costs no memory here), and each connection's messages are handled
    /// in the order they were sent. `work` must be bounded in time.
    pub fn wait_for<T: 'static>(
        &mut self,
        work: impl Future<Output = T> + 'static,
        then: impl FnOnce(&mut Self, T, &mut Ctx<P>) + 'static,
        ctx: &mut Ctx<P>,
    ) {
        ctx.wait(
            work.into_actor(self)
                .map(|value, conn, ctx| then(conn, value, ctx)),
        );
    }

    /// The heartbeat check, when a deadline is due: the protocol's own, silence past the
    /// heartbeat deadline, or a ping to send. Then the next wake-up is armed.
    fn tick(&mut self, ctx: &mut Ctx<P>) {
        self.wake = None;
        let proto = P::deadline(self)
            .filter(|(at, _)| *at <= Instant::now())
            .map(|(_, outcome)| outcome);
        let outcome = proto.or_else(|| {
            self.socket
                .heartbeat(&self.settings.heartbeat, P::JSON_PING)
        });
        match outcome {
            Some(outcome) => self.finish(outcome, ctx),
            None => self.rearm(ctx),
        }
    }

    /// Arms the heartbeat check for the earliest deadline, unless one is armed already for
    /// no later. An idle connection wakes once per heartbeat interval (to ping), not on a
    /// fixed tick: with 10,000 idle sockets, a 5 s tick cost 4.4 million instructions a
    /// second doing nothing.
    pub fn rearm(&mut self, ctx: &mut Ctx<P>) {
        let now = Instant::now();
        let heartbeat = &self.settings.heartbeat;
        let ping = self.socket.last_ping + heartbeat.interval();
        let silent = now
            + heartbeat
                .deadline()
                .saturating_sub(self.socket.link.silence());
        let mut due = ping.min(silent);
        if let Some((at, _)) = P::deadline(self) {
            due = due.min(at);
        }
        let due = due.max(now + MIN_WAKE);
        if let Some((armed, handle)) = self.wake {
            if armed <= due {
                return;
            }
            ctx.cancel_future(handle);
        }
        let handle = ctx.run_later(due - now, Self::tick);
        self.wake = Some((due, handle));
    }
}

impl<P: Protocol> Actor for Connection<P> {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.rearm(ctx);
        P::started(self, ctx);
    }

    fn stopping(&mut self, _: &mut Self::Context) -> Running {
        P::stopping(self);
        Running::Stop
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        self.socket.close();
    }
}

impl<P: Protocol> StreamHandler<Inbound> for Connection<P> {
    fn handle(&mut self, item: Inbound, ctx: &mut Self::Context) {
        let max = self.settings.limits.max_message_bytes;
        match self.socket.receive(item, max) {
            Step::Text(text) => P::on_text(self, text, ctx),
            Step::Done => {}
            Step::Stop(outcome) => self.finish(outcome, ctx),
        }
    }

    fn finished(&mut self, ctx: &mut Self::Context) {
        self.finish(Outcome::Lost, ctx);
    }
}

impl<P: Protocol> Handler<P::Command> for Connection<P> {
    type Result = ();

    fn handle(&mut self, command: P::Command, ctx: &mut Self::Context) {
        P::on_command(self, command, ctx);
    }
}

/// What the skeleton should do with one inbound event.
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
    /// Whether this node is going away: a connection it closes for that (1001) may come
    /// back on another node, so its end is a loss, not a goodbye.
    pub fn node_leaving(&self) -> bool {
        self.admission.node_leaving()
    }

    /// How the side left: for good (a close frame, or a close the relay chose), lost, or
    /// moved — closed by its node as it leaves (this one, or for a virtual connection the
    /// side's own: see `relay::tunnel`), to come back on another.
    pub fn departure(&mut self) -> Departure {
        if self.node_leaving() || self.admission.side_moved() {
            Departure::Moved
        } else if self.outcome().clean() {
            Departure::Clean
        } else {
            Departure::Lost
        }
    }

    /// State for a freshly upgraded, admitted connection.
    pub fn new(admission: Admission, link: Link) -> Self {
        let now = Instant::now();
        admission.track(Arc::clone(&link.outbox), link.kill_switch());
        tracing::info!(
            conn = %admission.conn,
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

    /// Queues a frame under the delivery policy; `Err` means this peer is itself too slow
    /// to take it and must be dropped.
    pub fn push(&mut self, frame: Bytes) -> Result<(), Outcome> {
        match Delivery::of(self.link.outbox.push(frame)) {
            Delivery::Dropped(DropReason::SlowConsumer) => Err(Outcome::SlowConsumer),
            _ => Ok(()),
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
            Inbound::InvalidUtf8 => return Step::Stop(Outcome::InvalidUtf8),
            Inbound::Protocol(err) => {
                tracing::debug!(conn = %self.conn, %err, "websocket protocol error");
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
            Outcome::Refused | Outcome::SlowConsumer | Outcome::WindowFull => {
                self.link.close(CloseCode::Policy, outcome.as_str())
            }
            Outcome::TooLarge => self.link.close(CloseCode::Size, outcome.as_str()),
            Outcome::Unavailable => self.link.close(CloseCode::Again, outcome.as_str()),
            Outcome::ProtocolError => self.link.close(CloseCode::Protocol, outcome.as_str()),
            Outcome::InvalidUtf8 => self.link.close(CloseCode::Invalid, outcome.as_str()),
            Outcome::Lost | Outcome::HeartbeatTimeout => self.link.cut(),
        }
        if !matches!(outcome, Outcome::PeerClosed | Outcome::Lost) {
            METRICS.dropped(outcome);
        }
        tracing::info!(
            conn = %self.conn,
            endpoint = self.endpoint.as_str(),
            reason = outcome.as_str(),
            duration_ms = self.opened.elapsed().as_millis() as u64,
            "connection closed"
        );
    }
}
