//! `PairSocket`: the protocol of one `/mac` or `/browser` connection.
//!
//! It registers with the `SessionRegistry` when it starts and unregisters when it stops.
//! Requests that change pairing go to the registry and are answered before the next frame
//! is read; once paired, `data` is encoded here and pushed straight into the partner's
//! outbox — the registry never sees it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use bytes::Bytes;

use super::registry::{
    self, Connect, Disconnect, Join, Pairing, PairingSlot, Register, Reply, Resume,
    SessionRegistry, ToConn, Unpair,
};
use crate::ids::{DropReason, Outcome, PairingId, Role};
use crate::limits::Limiters;
use crate::metrics::METRICS;
use crate::relay::delivery::{Delivery, Held, Route};
use crate::relay::protocol::pairing::{self, PairingEvent, PairingRequest};
use crate::relay::protocol::{Common, ErrorCode};
use crate::relay::socket::{Connection, Ctx, Opened, Protocol};
use crate::transport::text_frame;

/// How long a connection waits for the registry to answer one of its requests. The
/// registry answers in microseconds; this only bounds a wedged one.
const REGISTRY_TIMEOUT: Duration = Duration::from_secs(5);

/// Where this connection's data goes.
enum Partner {
    /// Not paired: `data` is refused.
    None,
    /// Paired: into the partner's outbox, or held while it is away.
    Paired(Route<ToConn>),
    /// The pairing is ending (the partner was too slow, or held data overflowed); data is
    /// dropped until the registry's answer arrives.
    Leaving,
}

/// The state of one `/mac` or `/browser` connection.
pub struct PairSocket {
    role: Role,
    registry: Addr<SessionRegistry>,
    limiters: Arc<Limiters>,
    partner: Partner,
    /// Where the registry hands over a new pairing (see [`ToConn::Paired`]).
    slot: PairingSlot,
    session: Option<PairingId>,
    /// Since when it is unpaired; `None` while paired. Checked against the idle timeout.
    unpaired_since: Option<Instant>,
}

impl PairSocket {
    /// Starts the actor of a freshly upgraded `/mac` or `/browser` connection.
    pub fn start(
        role: Role,
        opened: Opened,
        registry: Addr<SessionRegistry>,
        limiters: Arc<Limiters>,
    ) -> Addr<Connection<Self>> {
        Connection::start(
            opened,
            Self {
                role,
                registry,
                limiters,
                partner: Partner::None,
                slot: PairingSlot::default(),
                session: None,
                unpaired_since: Some(Instant::now()),
            },
        )
    }
}

impl Protocol for PairSocket {
    type Command = ToConn;
    const JSON_PING: bool = false;

    fn started(conn: &mut Connection<Self>, ctx: &mut Ctx<Self>) {
        let connect = Connect {
            role: conn.proto.role,
            peer: conn.peer(ctx),
            slot: Arc::clone(&conn.proto.slot),
        };
        conn.ask(connect, ctx);
    }

    fn on_text(conn: &mut Connection<Self>, text: Bytes, ctx: &mut Ctx<Self>) {
        conn.on_request(&text, ctx);
    }

    fn on_command(conn: &mut Connection<Self>, command: ToConn, ctx: &mut Ctx<Self>) {
        conn.on_command(command, ctx);
    }

    fn on_tick(conn: &mut Connection<Self>) -> Option<Outcome> {
        let idle = conn.settings.pairing.idle_unpaired_timeout();
        let since = conn.proto.unpaired_since?;
        (since.elapsed() >= idle).then_some(Outcome::Idle)
    }

    fn stopping(conn: &mut Connection<Self>) {
        conn.proto.registry.do_send(Disconnect {
            conn: conn.socket.conn,
            role: conn.proto.role,
            clean: conn.socket.outcome().clean(),
        });
    }
}

impl Connection<PairSocket> {
    fn on_request(&mut self, text: &[u8], ctx: &mut Ctx<PairSocket>) {
        let request = match pairing::parse(text) {
            Ok(request) => request,
            Err(why) => return self.error(ErrorCode::InvalidMessage, &why, ctx),
        };
        if !request.allowed_for(self.proto.role) {
            let message = format!(
                "`{}` is not allowed on {}",
                request.kind(),
                self.socket.endpoint.as_str()
            );
            return self.error(ErrorCode::InvalidMessage, &message, ctx);
        }
        let conn = self.socket.conn;
        match request {
            PairingRequest::Data { payload } => self.forward(&payload, ctx),
            PairingRequest::Ping { ts } => self.send(&Common::Pong { ts: &ts }, ctx),
            // Codes and resumes are guesses an attacker could make: each costs an attempt.
            _ if !self.proto.limiters.join.check(self.socket.client_ip()) => self.error(
                ErrorCode::RateLimited,
                "too many attempts; wait a minute",
                ctx,
            ),
            request => {
                if let Err(refusal) = request.check() {
                    return self.refuse(refusal, ctx);
                }
                match request {
                    PairingRequest::Register { client_id } => {
                        tracing::debug!(%conn, client = %client_id.fingerprint(), "register");
                        self.ask(Register { conn, client_id }, ctx);
                    }
                    PairingRequest::Join { code } => self.join(Join { conn, code }, ctx),
                    PairingRequest::Resume { session_id } => {
                        self.ask(Resume { conn, session_id }, ctx)
                    }
                    PairingRequest::Data { .. } | PairingRequest::Ping { .. } => {}
                }
            }
        }
    }

    /// Sends a request to the registry and handles its [`Reply`] before reading on.
    fn ask<M>(&mut self, request: M, ctx: &mut Ctx<PairSocket>)
    where
        M: Message<Result = Reply> + Send + 'static,
        SessionRegistry: Handler<M>,
    {
        self.ask_then(request, |_| {}, ctx);
    }

    /// `join` also spends the relay-wide budget for failed joins (guesses of live codes):
    /// one failure is reserved before asking, and given back unless the code was invalid.
    fn join(&mut self, join: Join, ctx: &mut Ctx<PairSocket>) {
        let ip = self.socket.client_ip();
        let limiters = Arc::clone(&self.proto.limiters);
        if !limiters.failed_joins.reserve(ip) {
            let message = "too many wrong codes were tried on this relay; wait a minute";
            return self.error(ErrorCode::RateLimited, message, ctx);
        }
        let settle = move |reply: &Result<Reply, MailboxError>| {
            let invalid = reply.as_ref().is_ok_and(|Reply(commands)| {
                commands.iter().any(|command| {
                    matches!(
                        command,
                        ToConn::Error {
                            code: ErrorCode::InvalidCode,
                            ..
                        }
                    )
                })
            });
            if !invalid {
                limiters.failed_joins.refund(ip);
            }
        };
        self.ask_then(join, settle, ctx);
    }

    /// [`Self::ask`], letting `inspect` see the answer first.
    fn ask_then<M>(
        &mut self,
        request: M,
        inspect: impl FnOnce(&Result<Reply, MailboxError>) + 'static,
        ctx: &mut Ctx<PairSocket>,
    ) where
        M: Message<Result = Reply> + Send + 'static,
        SessionRegistry: Handler<M>,
    {
        let answer = self.proto.registry.send(request).timeout(REGISTRY_TIMEOUT);
        self.wait_for(
            answer,
            |conn, answer, ctx| {
                inspect(&answer);
                match answer {
                    Ok(Reply(commands)) => {
                        for command in commands {
                            conn.on_command(command, ctx);
                        }
                    }
                    Err(err) => {
                        tracing::warn!(conn = %conn.socket.conn, %err, "pairing registry did not answer");
                        conn.error(
                            ErrorCode::RateLimited,
                            "the relay is busy; try again shortly",
                            ctx,
                        );
                    }
                }
            },
            ctx,
        );
    }

    fn on_command(&mut self, command: ToConn, ctx: &mut Ctx<PairSocket>) {
        match command {
            ToConn::Registered { code, expires_at } => self.send(
                &PairingEvent::Registered {
                    code: &code,
                    expires_at,
                },
                ctx,
            ),
            ToConn::Error { code, message } => self.error(code, message, ctx),
            ToConn::Paired => self.adopt(ctx),
            ToConn::PartnerAway => {
                let limit = self.hold_limit();
                if let Partner::Paired(route @ Route::Live(_)) = &mut self.proto.partner {
                    *route = Route::Away(Held::new(limit));
                }
            }
            ToConn::PartnerGone { code } => {
                self.proto.partner = Partner::None;
                self.proto.session = None;
                self.proto.unpaired_since = Some(Instant::now());
                let message = match code {
                    ErrorCode::MacDisconnected => "the mac disconnected",
                    _ => "the browser disconnected",
                };
                self.error(code, message, ctx);
            }
            ToConn::Close(outcome) => self.finish(outcome, ctx),
        }
    }

    fn hold_limit(&self) -> usize {
        self.settings.pairing.resume_buffer_bytes
    }

    /// Sends `payload` to the partner under the delivery policy.
    fn forward(&mut self, payload: &str, ctx: &mut Ctx<PairSocket>) {
        self.adopt(ctx);
        let limit = self.hold_limit();
        let delivery = match &mut self.proto.partner {
            Partner::None => {
                return self.error(ErrorCode::InvalidMessage, "not paired: join first", ctx)
            }
            Partner::Leaving => return,
            Partner::Paired(route) => {
                route.deliver(text_frame(&PairingEvent::Data { payload }), limit)
            }
        };
        match delivery {
            Delivery::Delivered => METRICS.relayed(payload.len()),
            Delivery::Held => {}
            // The partner reads slower than we write (the policy closes it), or cannot be
            // given everything it missed: end the pairing rather than leave a hole.
            Delivery::Dropped(DropReason::SlowConsumer | DropReason::HoldOverflow) => {
                self.leave(ctx)
            }
            Delivery::Dropped(DropReason::PeerGone) => {}
        }
    }

    /// Ends the pairing now; the registry's answer tells this side `PartnerGone`.
    fn leave(&mut self, ctx: &mut Ctx<PairSocket>) {
        self.proto.partner = Partner::Leaving;
        let unpair = Unpair {
            conn: self.socket.conn,
            role: self.proto.role,
        };
        self.ask(unpair, ctx);
    }

    /// Takes a pairing the registry handed over, if any. Called on `Paired` and before
    /// forwarding data, whichever comes first.
    fn adopt(&mut self, ctx: &mut Ctx<PairSocket>) {
        let Some(Pairing { session, partner }) = registry::lock(&self.proto.slot).take() else {
            return;
        };
        let limit = self.hold_limit();
        let mut held = match std::mem::replace(&mut self.proto.partner, Partner::None) {
            Partner::Paired(Route::Away(held)) => held,
            _ => Held::new(limit),
        };
        self.proto.session = Some(session);
        self.proto.unpaired_since = None;
        tracing::debug!(conn = %self.socket.conn, role = ?self.proto.role, "paired");
        let route = match partner {
            // Everything held goes first, whole, so the partner's stream has no hole.
            Some(peer) => match held.release_to(&peer) {
                Delivery::Delivered => Route::Live(peer),
                Delivery::Dropped(DropReason::PeerGone) => Route::Away(held),
                _ => return self.leave(ctx),
            },
            None => Route::Away(held),
        };
        self.proto.partner = Partner::Paired(route);
    }
}
