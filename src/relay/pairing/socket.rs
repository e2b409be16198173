//! `PairSocket`: the protocol of one `/mac` or `/browser` connection.
//!
//! It registers with the `SessionRegistry` when it starts and unregisters when it stops.
//! Requests that change pairing go to the registry and are answered before the next frame
//! is read; once paired, `data` is encoded here and pushed straight into the partner's
//! direction of the pairing's [`Pipes`](super::pipes::Pipes) — the registry never sees it.

use std::sync::Arc;
use std::time::Instant;

use actix::prelude::*;
use bytes::Bytes;

use super::homes::Kind;
use super::registry::{
    self, Connect, Disconnect, Join, Lossless, Pairing, PairingSlot, Register, Reply, Resume,
    SessionRegistry, ToConn, Unpair,
};
use super::remote::Remote;
use super::REGISTRY_TIMEOUT;
use crate::audit;
use crate::ids::{ClientKey, DropReason, Outcome, PairingId, Role};
use crate::limits::{Attempt, FailedJoin, Limiters, Reserved};
use crate::metrics::METRICS;
use crate::relay::delivery::{lock as lock_pipes, Accepted, Delivery};
use crate::relay::protocol::json::Text;
use crate::relay::protocol::pairing::{self, PairingEvent, PairingRequest};
use crate::relay::protocol::{Common, ErrorCode};
use crate::relay::socket::{Connection, Ctx, Opened, Protocol};
use crate::relay::tunnel::Gateway;

mod gateway;

/// The state of one `/mac` or `/browser` connection.
pub struct PairSocket {
    role: Role,
    /// What every pairing connection of this node shares.
    node: Arc<PairNode>,
    /// The pairing it is in, if any: where its data goes.
    pairing: Option<Pairing>,
    /// Where the registry hands over a new pairing (see [`ToConn::Paired`]).
    slot: PairingSlot,
    /// Since when it is unpaired; `None` while paired. Checked against the idle timeout.
    unpaired_since: Option<Instant>,
    /// Lossless mode, once the side asked for it on this connection (boxed: most sides
    /// never do, and every byte here is paid by each idle connection).
    lossless: Option<Box<Acks>>,
    /// A virtual connection for a browser on another node, whose node already applied
    /// the attempt limits.
    relayed: bool,
    /// A side tunnelled to the node of its code or pairing: everything it sends goes there.
    /// (Boxed: most connections are never tunnelled, and every byte here is paid by each
    /// idle connection.)
    gateway: Option<Box<Gateway>>,
    /// The home of its pairing went away: the partner is as lost, and what the side sends
    /// is dropped, until the resume grace ends (see `gateway.rs`).
    orphaned: bool,
}

/// What every pairing connection of a node shares: built once, one pointer per connection.
pub struct PairNode {
    /// The pairing registry.
    pub registry: Addr<SessionRegistry>,
    /// Attempt limits.
    pub limiters: Arc<Limiters>,
    /// In a cluster: codes and pairings homed on other nodes (see `super::remote`).
    pub remote: Option<Remote>,
}

/// Lossless mode's state of one connection.
struct Acks {
    /// The last `ack` the relay sent the side.
    acked: u64,
    /// When the relay last sent the side a JSON `ping`.
    last_ping: Instant,
}

impl PairSocket {
    /// Starts the actor of a freshly upgraded `/mac` or `/browser` connection.
    pub fn start(role: Role, opened: Opened, node: Arc<PairNode>) -> Addr<Connection<Self>> {
        Connection::start(opened, Self::new(role, node, false))
    }

    /// Starts a virtual connection for a side on another node (see `super::remote`); it
    /// never tunnels further, and records the codes it gets in the cluster.
    pub fn start_relayed(
        role: Role,
        opened: Opened,
        node: Arc<PairNode>,
    ) -> Addr<Connection<Self>> {
        Connection::start(opened, Self::new(role, node, true))
    }

    fn new(role: Role, node: Arc<PairNode>, relayed: bool) -> Self {
        Self {
            role,
            node,
            pairing: None,
            slot: PairingSlot::default(),
            unpaired_since: Some(Instant::now()),
            lossless: None,
            relayed,
            gateway: None,
            orphaned: false,
        }
    }
}

impl Protocol for PairSocket {
    type Command = ToConn;
    const JSON_PING: bool = false;

    fn started(conn: &mut Connection<Self>, ctx: &mut Ctx<Self>) {
        // A virtual mac's first message is the `register` its node passed on: no code before.
        let code = !(conn.proto.relayed && conn.proto.role == Role::Mac);
        conn.connect_here(code, ctx);
    }

    fn on_text(conn: &mut Connection<Self>, text: Bytes, ctx: &mut Ctx<Self>) {
        match &conn.proto.gateway {
            Some(gateway) => conn.tunnel_up(gateway.home.clone(), text, ctx),
            None => conn.on_request(&text, ctx),
        }
    }

    fn on_command(conn: &mut Connection<Self>, command: ToConn, ctx: &mut Ctx<Self>) {
        conn.on_command(command, ctx);
    }

    fn deadline(conn: &Connection<Self>) -> Option<(Instant, Outcome)> {
        let idle = conn.settings.pairing.idle_unpaired_timeout();
        let since = conn.proto.unpaired_since?;
        Some((since + idle, Outcome::Idle))
    }

    fn stopping(conn: &mut Connection<Self>) {
        let departure = conn.socket.departure();
        if let (Some(gateway), Some(remote)) = (conn.proto.gateway.take(), &conn.proto.node.remote)
        {
            remote.close(&gateway.home, &gateway.route, departure);
        }
        conn.proto.node.registry.do_send(Disconnect {
            conn: conn.socket.conn,
            role: conn.proto.role,
            departure,
        });
    }
}

impl Connection<PairSocket> {
    /// Joins this node's registry (a mac gets a code at once if `code`).
    fn connect_here(&mut self, code: bool, ctx: &mut Ctx<PairSocket>) {
        let connect = Connect {
            role: self.proto.role,
            peer: self.peer(ctx),
            slot: Arc::clone(&self.proto.slot),
            code,
        };
        self.ask(connect, ctx);
    }

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
        match request {
            // Its partner went away with the pairing's home: nothing to deliver to.
            PairingRequest::Data { .. } if self.proto.orphaned => {}
            PairingRequest::Data { payload, seq } => self.forward(&payload, seq, ctx),
            PairingRequest::Ack { seq } => self.acknowledged(seq),
            PairingRequest::Ping { ts } => self.send(&Common::Pong { ts: &ts }, ctx),
            PairingRequest::Pong { .. } => {}
            // Codes and resumes are guesses an attacker could make: each costs an attempt
            // (a relayed browser's node counted it already).
            _ if !self.proto.relayed
                && !self.proto.node.limiters.join.check(self.socket.client_ip()) =>
            {
                self.error(
                    ErrorCode::RateLimited,
                    "too many attempts; wait a minute",
                    ctx,
                )
            }
            request => {
                let Some(request) = owned(request) else {
                    return;
                };
                let ip = self.socket.client_ip();
                let check = match self.proto.relayed {
                    true => None,
                    false => self.proto.node.limiters.cluster_check(Attempt::Join, ip),
                };
                match check {
                    None => self.attempt(request, ctx),
                    Some(check) => self.wait_for(
                        check,
                        move |conn, allowed, ctx| match allowed {
                            true => conn.attempt(request, ctx),
                            false => conn.error(
                                ErrorCode::RateLimited,
                                "too many attempts; wait a minute",
                                ctx,
                            ),
                        },
                        ctx,
                    ),
                }
            }
        }
    }

    /// A `register`, `join` or `resume` that passed the attempt limits. In a cluster, one
    /// that names a code or a pairing homed on another node is tunnelled there.
    fn attempt(&mut self, request: PairingRequest<'static>, ctx: &mut Ctx<PairSocket>) {
        if let Err(refusal) = request.check() {
            return self.refuse(refusal, ctx);
        }
        let first = match (
            &self.proto.node.remote,
            self.proto.relayed,
            &self.proto.pairing,
        ) {
            (Some(_), false, None) => pairing::attempt_text(&request),
            _ => None,
        };
        match request {
            PairingRequest::Register {
                client_id,
                ack,
                last_seq,
            } => {
                let conn = self.socket.conn;
                tracing::debug!(%conn, client = %client_id.fingerprint(), "register");
                match first {
                    Some(first) if client_id.resumable() => {
                        let key = client_id.cluster_key();
                        let here = move |conn: &mut Self, cut_off, ctx: &mut Ctx<PairSocket>| {
                            conn.register_here(client_id, ack, last_seq, cut_off, ctx)
                        };
                        self.find_home(Kind::Client, key, first, here, ctx);
                    }
                    _ => self.register_here(client_id, ack, last_seq, false, ctx),
                }
            }
            PairingRequest::Join { code, ack } => match (self.proto.node.remote.clone(), first) {
                (Some(remote), Some(first)) => {
                    let typed = code.clone();
                    let lookup = async move { remote.home_of(&typed).await };
                    self.wait_for(
                        lookup,
                        move |conn, home, ctx| match home {
                            Ok(Some(home)) => conn.tunnel(home, first, ctx),
                            Ok(None) => conn.join_here(code, ack, false, ctx),
                            Err(err) => {
                                tracing::debug!(conn = %conn.socket.conn, %err, "could not look a code up in the cluster");
                                conn.join_here(code, ack, true, ctx)
                            }
                        },
                        ctx,
                    );
                }
                _ => self.join_here(code, ack, false, ctx),
            },
            PairingRequest::Resume {
                session_id,
                ack,
                last_seq,
            } => match (first, PairingId::parse(&session_id)) {
                (Some(first), Some(id)) => {
                    let here = move |conn: &mut Self, cut_off, ctx: &mut Ctx<PairSocket>| {
                        conn.resume_here(session_id, ack, last_seq, cut_off, ctx)
                    };
                    self.find_home(Kind::Pairing, id.cluster_key(), first, here, ctx);
                }
                _ => self.resume_here(session_id, ack, last_seq, false, ctx),
            },
            _ => {}
        }
    }

    /// Looks up the home of the pairing a `kind` id names: another node's tunnels the side
    /// there (with its message `first`); otherwise `here` handles it on this node — told
    /// whether the cluster could not be asked (`cut_off`).
    fn find_home(
        &mut self,
        kind: Kind,
        key: String,
        first: Vec<u8>,
        here: impl FnOnce(&mut Self, bool, &mut Ctx<PairSocket>) + 'static,
        ctx: &mut Ctx<PairSocket>,
    ) {
        let Some(remote) = self.proto.node.remote.clone() else {
            return here(self, false, ctx);
        };
        let lookup = async move { remote.find(kind, &key).await };
        self.wait_for(
            lookup,
            move |conn, home, ctx| match home {
                Ok(Some(home)) => conn.tunnel(home, first, ctx),
                Ok(None) => here(conn, false, ctx),
                Err(err) => {
                    tracing::debug!(conn = %conn.socket.conn, %err, "could not look a pairing up in the cluster");
                    here(conn, true, ctx)
                }
            },
            ctx,
        );
    }

    /// A mac's `register` on this node.
    fn register_here(
        &mut self,
        client_id: ClientKey,
        ack: bool,
        last_seq: Option<u64>,
        cut_off: bool,
        ctx: &mut Ctx<PairSocket>,
    ) {
        let lossless = self.opt_in(ack, last_seq, ctx);
        let register = Register {
            conn: self.socket.conn,
            client_id,
            lossless,
            cut_off,
        };
        self.ask(register, ctx);
    }

    /// A browser's `resume` on this node.
    fn resume_here(
        &mut self,
        session_id: String,
        ack: bool,
        last_seq: Option<u64>,
        cut_off: bool,
        ctx: &mut Ctx<PairSocket>,
    ) {
        let lossless = self.opt_in(ack, last_seq, ctx);
        let resume = Resume {
            conn: self.socket.conn,
            session_id,
            lossless,
            cut_off,
        };
        self.ask(resume, ctx)
    }

    /// `join` a code of this node; `cut_off`: the cluster could not be asked whether the
    /// code is another node's.
    fn join_here(&mut self, code: String, ack: bool, cut_off: bool, ctx: &mut Ctx<PairSocket>) {
        let lossless = self.opt_in(ack, None, ctx);
        let join = Join {
            conn: self.socket.conn,
            code,
            lossless,
            failure: None,
            cut_off,
        };
        self.join(join, ctx)
    }

    /// Lossless mode, if the side asks for it: from now on it gets `ack`s and, so that a
    /// page can tell a dead link, JSON pings.
    fn opt_in(&mut self, ack: bool, last_seq: Option<u64>, ctx: &mut Ctx<PairSocket>) -> Lossless {
        if ack && self.proto.lossless.is_none() {
            self.proto.lossless = Some(Box::new(Acks {
                acked: 0,
                last_ping: Instant::now(),
            }));
            let every = self.settings.pairing.ack_interval();
            ctx.run_interval(every, |conn, ctx| conn.lossless_tick(ctx));
        }
        Lossless {
            ack: self.proto.lossless.is_some(),
            last_seq,
        }
    }

    /// Lossless mode, every `pairing.ack_interval_ms`: acknowledge the side's messages if
    /// more arrived, and ping it if it is time.
    fn lossless_tick(&mut self, ctx: &mut Ctx<PairSocket>) {
        let Some(acks) = &mut self.proto.lossless else {
            return;
        };
        let mut ack = None;
        if let Some(pairing) = &self.proto.pairing {
            let received = lock_pipes(&pairing.pipes).received(self.proto.role);
            if received > acks.acked {
                acks.acked = received;
                ack = Some(received);
            }
        }
        let ping = acks.last_ping.elapsed() >= self.settings.pairing.ack_ping_interval();
        if ping {
            acks.last_ping = Instant::now();
        }
        if let Some(seq) = ack {
            self.send(&PairingEvent::Ack { seq }, ctx);
        }
        if ping {
            let ts = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_millis() as u64;
            self.send(&Common::Ping { ts: ts.into() }, ctx);
        }
    }

    /// The side acknowledged what the relay sent it up to `seq`.
    fn acknowledged(&mut self, seq: u64) {
        if let Some(pairing) = &self.proto.pairing {
            lock_pipes(&pairing.pipes).to(self.proto.role).ack(seq);
        }
    }

    /// `join` also spends the relay-wide budget for failed joins (guesses of live codes):
    /// one failure is reserved before asking — in a cluster, cluster-wide — and the
    /// registry keeps it only if the code was not live.
    fn join(&mut self, join: Join, ctx: &mut Ctx<PairSocket>) {
        let ip = self.socket.client_ip();
        match self
            .proto
            .node
            .limiters
            .reserve_failed_join(ip, !join.cut_off)
        {
            Reserved::Now(failure) => self.ask_join(join, failure, ctx),
            Reserved::Asking(reserving) => self.wait_for(
                reserving,
                move |conn, failure, ctx| conn.ask_join(join, failure, ctx),
                ctx,
            ),
        }
    }

    /// Asks the registry to `join` with the failure reserved for it; `None`: the budget
    /// for failed joins is spent.
    fn ask_join(&mut self, mut join: Join, failure: Option<FailedJoin>, ctx: &mut Ctx<PairSocket>) {
        let Some(failure) = failure else {
            let message = "too many wrong codes were tried on this relay; wait a minute";
            return self.error(ErrorCode::RateLimited, message, ctx);
        };
        join.failure = Some(failure);
        self.ask(join, ctx);
    }

    /// Sends a request to the registry and handles its [`Reply`] before reading on.
    fn ask<M>(&mut self, request: M, ctx: &mut Ctx<PairSocket>)
    where
        M: Message<Result = Reply> + Send + 'static,
        SessionRegistry: Handler<M>,
    {
        let (asked, join) = (
            Instant::now(),
            std::any::TypeId::of::<M>() == std::any::TypeId::of::<Join>(),
        );
        let answer = self
            .proto
            .node
            .registry
            .send(request)
            .timeout(REGISTRY_TIMEOUT);
        self.wait_for(
            answer,
            move |conn, answer, ctx| {
                match answer {
                    Ok(Reply(commands)) => {
                        let paired = commands.iter().find_map(|c| match c {
                            ToConn::Paired(session) => Some(*session),
                            _ => None,
                        });
                        for command in commands {
                            conn.on_command(command, ctx);
                        }
                        if let Some(session) = paired {
                            conn.audit_paired(join, asked, session);
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
        if self.proto.gateway.is_some() && !matches!(command, ToConn::Remote(_) | ToConn::Close(_))
        {
            // Late news from this node's registry, which a tunnelled mac has left.
            return;
        }
        match command {
            ToConn::Registered { code, expires_at } => self.registered(code, expires_at, ctx),
            ToConn::Remote(event) => self.on_remote(event, ctx),
            ToConn::Error { code, message } => self.error(code, message, ctx),
            ToConn::Paired(_) => self.adopt(),
            ToConn::PartnerGone { code } => {
                self.proto.pairing = None;
                self.proto.unpaired_since = Some(Instant::now());
                self.rearm(ctx);
                if let Some(acks) = &mut self.proto.lossless {
                    acks.acked = 0;
                }
                let message = match code {
                    ErrorCode::MacDisconnected => "the mac disconnected",
                    _ => "the browser disconnected",
                };
                self.error(code, message, ctx);
            }
            ToConn::Close(outcome) => self.finish(outcome, ctx),
        }
    }

    /// Sends `payload` to the partner under the delivery policy.
    fn forward(&mut self, payload: &Text<'_>, seq: Option<u64>, ctx: &mut Ctx<PairSocket>) {
        self.adopt();
        let Some(pairing) = &self.proto.pairing else {
            return self.error(ErrorCode::InvalidMessage, "not paired: join first", ctx);
        };
        let me = self.proto.role;
        let mut pipes = lock_pipes(&pairing.pipes);
        match pipes.accept(me, seq) {
            Accepted::New => {}
            Accepted::Again => return,
            Accepted::Skips { expected } => {
                drop(pipes);
                let message = format!("seq skips ahead: the relay expected {expected}");
                return self.error(ErrorCode::InvalidMessage, &message, ctx);
            }
        }
        let partner = pipes.to(me.other());
        let delivery = partner.deliver(|seq| pairing::data_frame(payload, seq));
        if delivery == Delivery::Dropped(DropReason::WindowFull) {
            // The partner let too much go unacknowledged: it is told and dropped. (Its
            // peer is used in place: cloning one costs three allocations, on every message
            // if done before knowing it is needed.)
            if let Some(peer) = partner.peer() {
                peer.send(&Common::error(
                    ErrorCode::ReplayWindowFull,
                    "too much unacknowledged: send ack more often",
                ));
                peer.close(Outcome::WindowFull);
            }
        }
        drop(pipes);
        match delivery {
            Delivery::Delivered => METRICS.relayed(payload.json_len()),
            Delivery::Held | Delivery::Dropped(DropReason::PeerGone) => {}
            // The partner reads slower than we write (the policy closes it), or more was
            // held for it than allowed: end the pairing rather than leave a hole.
            Delivery::Dropped(DropReason::SlowConsumer | DropReason::HoldOverflow) => {
                self.leave(ctx)
            }
            // The partner let too much go unacknowledged (told and dropped above): the
            // pairing ends.
            Delivery::Dropped(DropReason::WindowFull) => self.leave(ctx),
        }
    }

    /// Ends the pairing now; the registry's answer tells this side `PartnerGone`.
    fn leave(&mut self, ctx: &mut Ctx<PairSocket>) {
        self.proto.pairing = None;
        let unpair = Unpair {
            conn: self.socket.conn,
            role: self.proto.role,
        };
        self.ask(unpair, ctx);
    }

    /// This side's own request paired it: a `join` makes a pairing, a `resume` or a mac's
    /// `register` resumes one (the partner hears of it through its mailbox, unrecorded, so
    /// each pairing event is recorded once). Recorded even if the pairing ended before this
    /// side took it (its partner left at once).
    fn audit_paired(&self, join: bool, asked: Instant, session: PairingId) {
        if join {
            METRICS.pairing_time(asked.elapsed());
        }
        let role = match self.proto.role {
            Role::Mac => "mac",
            Role::Browser => "browser",
        };
        let fingerprint = match &self.proto.pairing {
            // Copied out first: the partner's data waits on this lock, not on the log line.
            Some(pairing) => lock_pipes(&pairing.pipes).fingerprint().to_owned(),
            None => session.fingerprint(),
        };
        audit::event(if join {
            "pairing_made"
        } else {
            "pairing_resumed"
        })
        .pairing(fingerprint)
        .client(self.socket.client_ip())
        .conn(self.socket.conn)
        .reason(role)
        .record();
    }

    /// Takes a pairing the registry handed over, if any. Called on `Paired` and before
    /// forwarding data, whichever comes first.
    fn adopt(&mut self) {
        if let Some(pairing) = registry::lock(&self.proto.slot).take() {
            tracing::debug!(conn = %self.socket.conn, role = ?self.proto.role, "paired");
            self.proto.pairing = Some(pairing);
            self.proto.unpaired_since = None;
        }
    }
}

/// The attempts (`register`, `join`, `resume`) as requests that borrow nothing, so they can
/// wait for the cluster-wide limit; `None` for any other request.
fn owned(request: PairingRequest<'_>) -> Option<PairingRequest<'static>> {
    Some(match request {
        PairingRequest::Register {
            client_id,
            ack,
            last_seq,
        } => PairingRequest::Register {
            client_id,
            ack,
            last_seq,
        },
        PairingRequest::Join { code, ack } => PairingRequest::Join { code, ack },
        PairingRequest::Resume {
            session_id,
            ack,
            last_seq,
        } => PairingRequest::Resume {
            session_id,
            ack,
            last_seq,
        },
        _ => return None,
    })
}
