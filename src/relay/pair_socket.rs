//! `PairSocket`: the actor of one `/mac` or `/browser` connection.
//!
//! It registers with the `SessionRegistry` in `started()` and unregisters in `stopping()`.
//! Requests that change pairing go to the registry; once paired, `data` is encoded here and
//! pushed straight into the partner's outbox — the registry never sees it.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use actix::prelude::*;
use bytes::Bytes;
use uuid::Uuid;

use crate::config::Settings;
use crate::limits::Limiters;
use crate::metrics::METRICS;
use crate::relay::protocol::{parse_pairing, Common, ErrorCode, PairingEvent, PairingRequest};
use crate::relay::registry::pairings::Role;
use crate::relay::registry::{
    self, Connect, Disconnect, Join, Pairing, PairingSlot, Peer, Register, Resume, SessionRegistry,
    ToConn, Unpair,
};
use crate::relay::socket::{self, Outcome, Socket, SocketActor};
use crate::relay::Opened;
use crate::transport::{text_frame, Inbound, PushError};

/// Longest `clientId` accepted in `register`.
const MAX_CLIENT_ID_CHARS: usize = 128;
/// Longest `join` code or `resume` session id passed on to the registry; anything longer
/// cannot be valid and is refused here without bothering the registry.
const MAX_CODE_INPUT_BYTES: usize = 64;

/// Where this connection's data goes.
enum Partner {
    /// Not paired: `data` is refused.
    None,
    /// Paired and connected: data goes into its outbox.
    Live(Peer),
    /// Paired, but the partner lost its connection: data is held, bounded by
    /// `pairing.resume_buffer_bytes`, and flushed in order when it resumes.
    Away { held: VecDeque<Bytes>, bytes: usize },
    /// The pairing is ending (the partner was too slow); waiting for the registry to confirm.
    Leaving,
}

/// One `/mac` or `/browser` connection.
pub struct PairSocket {
    socket: Socket,
    role: Role,
    registry: Addr<SessionRegistry>,
    settings: Arc<Settings>,
    limiters: Arc<Limiters>,
    partner: Partner,
    /// Where the registry hands over a new pairing (see [`ToConn::Paired`]).
    slot: PairingSlot,
    session: Option<Uuid>,
    /// Since when it is unpaired; `None` while paired. Checked against the idle timeout.
    unpaired_since: Option<Instant>,
}

impl PairSocket {
    /// Starts the actor for a freshly upgraded connection.
    pub fn start(role: Role, opened: Opened) -> Addr<Self> {
        let Opened {
            socket,
            inbound,
            registry,
            settings,
            limiters,
        } = opened;
        Self::create(move |ctx| {
            ctx.add_stream(inbound);
            Self {
                socket,
                role,
                registry,
                settings,
                limiters,
                partner: Partner::None,
                slot: PairingSlot::default(),
                session: None,
                unpaired_since: Some(Instant::now()),
            }
        })
    }

    fn handle_text(&mut self, text: &[u8], ctx: &mut Context<Self>) {
        let request = match parse_pairing(text) {
            Ok(request) => request,
            Err(why) => return self.error(ErrorCode::InvalidMessage, &why, ctx),
        };
        match (request, self.role) {
            (PairingRequest::Data { payload }, _) => self.forward(&payload, ctx),
            (PairingRequest::Ping { ts }, _) => self.send(&Common::Pong { ts: &ts }, ctx),
            (PairingRequest::Register { client_id }, Role::Mac) => {
                let length = client_id.chars().count();
                if length == 0 || length > MAX_CLIENT_ID_CHARS {
                    return self.error(
                        ErrorCode::InvalidMessage,
                        "clientId must have 1 to 128 characters",
                        ctx,
                    );
                }
                self.registry.do_send(Register {
                    conn: self.socket.conn,
                    client_id,
                });
            }
            (PairingRequest::Join { .. } | PairingRequest::Resume { .. }, Role::Browser)
                if !self.limiters.join.check(self.socket.client_ip()) =>
            {
                self.error(
                    ErrorCode::RateLimited,
                    "too many join attempts; wait a minute",
                    ctx,
                );
            }
            (PairingRequest::Join { code }, Role::Browser) => {
                if code.len() > MAX_CODE_INPUT_BYTES {
                    return self.error(ErrorCode::InvalidCode, "that is not a pairing code", ctx);
                }
                self.registry.do_send(Join {
                    conn: self.socket.conn,
                    code,
                });
            }
            (PairingRequest::Resume { session_id }, Role::Browser) => {
                if session_id.len() > MAX_CODE_INPUT_BYTES {
                    return self.error(ErrorCode::InvalidCode, "no such session", ctx);
                }
                self.registry.do_send(Resume {
                    conn: self.socket.conn,
                    session_id,
                });
            }
            (request, _) => {
                let message = format!(
                    "`{}` is not allowed on {}",
                    request.kind(),
                    self.socket.endpoint.as_str()
                );
                self.error(ErrorCode::InvalidMessage, &message, ctx);
            }
        }
    }

    /// Sends `payload` to the partner: straight into its outbox, or held while it is away.
    fn forward(&mut self, payload: &str, ctx: &mut Context<Self>) {
        self.adopt();
        let frame = || text_frame(&PairingEvent::Data { payload });
        match &mut self.partner {
            Partner::None => {
                self.error(ErrorCode::InvalidMessage, "not paired: join first", ctx);
            }
            Partner::Leaving => {}
            Partner::Live(peer) => match peer.outbox.push(frame()) {
                Ok(()) => METRICS.relayed(payload.len()),
                Err(PushError::Full) => {
                    // The partner reads slower than we write: drop it, not us.
                    peer.addr.do_send(ToConn::Drop(Outcome::SlowConsumer));
                    self.partner = Partner::Leaving;
                    self.registry.do_send(Unpair {
                        conn: self.socket.conn,
                        role: self.role,
                    });
                }
                Err(PushError::Closed) => {
                    // Its socket just died; the registry will say whether it may resume.
                    let frame = frame();
                    let bytes = frame.len();
                    self.partner = Partner::Away {
                        held: VecDeque::from([frame]),
                        bytes,
                    };
                }
            },
            Partner::Away { held, bytes } => {
                let frame = frame();
                if *bytes + frame.len() > self.settings.pairing.resume_buffer_bytes {
                    // Cannot hold everything until it returns: end the pairing rather than
                    // deliver a stream with a hole in it.
                    self.partner = Partner::Leaving;
                    self.registry.do_send(Unpair {
                        conn: self.socket.conn,
                        role: self.role,
                    });
                } else {
                    *bytes += frame.len();
                    held.push_back(frame);
                }
            }
        }
    }

    /// Takes a pairing the registry handed over, if any. Called on `Paired` and before
    /// forwarding data, whichever comes first.
    fn adopt(&mut self) {
        let pairing = registry::lock(&self.slot).take();
        if let Some(Pairing { session, partner }) = pairing {
            self.on_paired(session, partner);
        }
    }

    fn on_paired(&mut self, session: Uuid, partner: Option<Peer>) {
        let held = match std::mem::replace(&mut self.partner, Partner::None) {
            Partner::Away { held, .. } => held,
            _ => VecDeque::new(),
        };
        self.partner = match partner {
            Some(peer) => {
                for frame in held {
                    if peer.outbox.push(frame).is_err() {
                        break;
                    }
                }
                Partner::Live(peer)
            }
            None => {
                let bytes = held.iter().map(Bytes::len).sum();
                Partner::Away { held, bytes }
            }
        };
        self.session = Some(session);
        self.unpaired_since = None;
        tracing::debug!(conn = self.socket.conn, role = ?self.role, "paired");
    }

    fn heartbeat(&mut self, ctx: &mut Context<Self>) {
        if let Some(since) = self.unpaired_since {
            if since.elapsed() >= self.settings.pairing.idle_unpaired_timeout() {
                return self.finish(Outcome::Idle, ctx);
            }
        }
        if let Some(outcome) = self.socket.heartbeat(&self.settings.heartbeat, false) {
            self.finish(outcome, ctx);
        }
    }
}

impl Actor for PairSocket {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.registry.do_send(Connect {
            conn: self.socket.conn,
            role: self.role,
            peer: Peer {
                addr: ctx.address().recipient(),
                outbox: Arc::clone(&self.socket.link.outbox),
            },
            slot: Arc::clone(&self.slot),
        });
        ctx.run_interval(socket::tick(&self.settings.heartbeat), Self::heartbeat);
    }

    fn stopping(&mut self, _: &mut Self::Context) -> Running {
        self.registry.do_send(Disconnect {
            conn: self.socket.conn,
            role: self.role,
            clean: self.socket.outcome().clean(),
        });
        Running::Stop
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        self.socket.close();
    }
}

impl SocketActor for PairSocket {
    fn socket(&mut self) -> &mut Socket {
        &mut self.socket
    }

    fn max_message_bytes(&self) -> usize {
        self.settings.limits.max_message_bytes
    }

    fn on_text(&mut self, text: &[u8], ctx: &mut Context<Self>) {
        self.handle_text(text, ctx);
    }
}

impl StreamHandler<Inbound> for PairSocket {
    fn handle(&mut self, item: Inbound, ctx: &mut Self::Context) {
        self.receive(item, ctx);
    }

    fn finished(&mut self, ctx: &mut Self::Context) {
        self.finish(Outcome::Lost, ctx);
    }
}

impl Handler<ToConn> for PairSocket {
    type Result = ();

    fn handle(&mut self, msg: ToConn, ctx: &mut Context<Self>) {
        match msg {
            ToConn::Registered { code, expires_at } => self.send(
                &PairingEvent::Registered {
                    code: &code,
                    expires_at,
                },
                ctx,
            ),
            ToConn::Error { code, message } => self.error(code, message, ctx),
            ToConn::Paired => self.adopt(),
            ToConn::PartnerAway => {
                if matches!(self.partner, Partner::Live(_)) {
                    self.partner = Partner::Away {
                        held: VecDeque::new(),
                        bytes: 0,
                    };
                }
            }
            ToConn::PartnerGone { code } => {
                self.partner = Partner::None;
                self.session = None;
                self.unpaired_since = Some(Instant::now());
                let message = match code {
                    ErrorCode::MacDisconnected => "the mac disconnected",
                    _ => "the browser disconnected",
                };
                self.error(code, message, ctx);
            }
            ToConn::Drop(outcome) => self.finish(outcome, ctx),
        }
    }
}
