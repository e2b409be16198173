//! The `SessionRegistry` actor: owns pairing codes, their expiry, the pairing table and
//! teardown. It pairs; it does not carry data — once paired, connection actors write
//! straight into each other's outbox.
//!
//! The rules live in [`PairingTable`] as plain methods; the handlers here only delegate and
//! carry out the returned [`Effect`]s. A connection's own requests (`Connect`, `Register`,
//! `Join`, `Resume`, `Unpair`) are answered with a [`Reply`] holding what that connection
//! must do, which it handles before reading its next frame; everything for *other*
//! connections goes to their mailboxes.

use crate::ids::HashMap;
use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Poll;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use actix::prelude::*;

pub use super::command::ToConn;
use super::homes::Homes;
use super::pipes::{Handoff, Pipes, SharedPipes};
use super::table::{Effect, PairingRules, PairingTable};
use crate::audit;
use crate::ids::{ClientKey, ConnId, Departure, Outcome, PairingId, Role};
use crate::limits::FailedJoin;
use crate::metrics::METRICS;
use crate::relay::delivery::{lock as lock_pipes, StreamLimits};
use crate::relay::delivery::{Delivery, Peer};
use crate::relay::protocol::pairing::PairingEvent;
use crate::relay::protocol::ErrorCode;

/// What the registry answers a connection's own request with: what it must do, in order.
#[derive(Debug, Default, MessageResponse)]
pub struct Reply(pub Vec<ToConn>);

/// A pairing handed to a connection: its id and its pipes.
pub struct Pairing {
    /// The pairing id (`sessionId`).
    pub session: PairingId,
    /// Both directions; the partner's is where this side's data goes.
    pub pipes: SharedPipes,
}

/// Where the registry leaves a connection's new pairing for it to take, synchronously.
pub type PairingSlot = Arc<Mutex<Option<Pairing>>>;

/// Locks a pairing slot; a poisoned one still holds a valid `Option`.
pub fn lock(slot: &PairingSlot) -> MutexGuard<'_, Option<Pairing>> {
    slot.lock().unwrap_or_else(|poison| poison.into_inner())
}

/// Connection actor → registry, from `started()`: a mac gets its code in the reply.
#[derive(Message)]
#[rtype(result = "Reply")]
pub struct Connect {
    /// Mac or browser.
    pub role: Role,
    /// How to reach it.
    pub peer: Peer<ToConn>,
    /// Where its pairings are handed over.
    pub slot: PairingSlot,
    /// A mac gets a code at once; `false` for a virtual mac whose first message is the
    /// `register` its own node passed on (see `super::remote`).
    pub code: bool,
}

/// Shutdown → registry: this node is leaving. Nothing more is delivered to any side (what
/// comes is held), and a side that closes from now on is away, not gone: every pairing can
/// be handed to another node whole ([`Export`]).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Leave;

/// Shutdown → registry: every pairing taken out, to hand over.
#[derive(Message)]
#[rtype(result = "Vec<Handoff>")]
pub struct Export;

/// A pairing of a node that left, to carry on here (both sides away, a full grace each).
#[derive(Message)]
#[rtype(result = "bool")]
pub struct Adopt(pub Handoff);

/// Connection actor → registry: a mac leaves this node's registry (withdrawing its code)
/// to be tunnelled to the home of its lost pairing — unless it is in a pairing here by now:
/// answered `true` if it left.
#[derive(Message)]
#[rtype(result = "bool")]
pub struct Release {
    /// The mac.
    pub conn: ConnId,
}

/// Connection actor → registry, from `stopping()`.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Disconnect {
    /// The leaving connection.
    pub conn: ConnId,
    /// Mac or browser.
    pub role: Role,
    /// How it left.
    pub departure: Departure,
}

/// Lossless mode, as a request asks for it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Lossless {
    /// The side opts in (`"ack": true`).
    pub ack: bool,
    /// Resuming: the last `seq` the side received (`lastSeq`).
    pub last_seq: Option<u64>,
}

/// Mac → registry: `register`.
#[derive(Message)]
#[rtype(result = "Reply")]
pub struct Register {
    /// The mac.
    pub conn: ConnId,
    /// Its `clientId`.
    pub client_id: ClientKey,
    /// Lossless mode.
    pub lossless: Lossless,
    /// The cluster could not be asked whether a pairing of this `clientId` lives on
    /// another node: unless it lives here, the mac is told to try again (keeping its code).
    pub cut_off: bool,
}

/// Browser → registry: `join`.
#[derive(Message)]
#[rtype(result = "Reply")]
pub struct Join {
    /// The browser.
    pub conn: ConnId,
    /// The code as typed.
    pub code: String,
    /// Lossless mode.
    pub lossless: Lossless,
    /// The failed join reserved for it: spent if the code is not live, else given back
    /// here, before anyone hears `joined` (so the next join cannot find it still taken; in
    /// a cluster, the cluster's token is sent back from here and lands a round trip later).
    pub failure: Option<FailedJoin>,
    /// In a cluster, Redis could not be asked where the code lives: a well-formed code
    /// unknown here may be another node's, so it is answered `UNAVAILABLE` (try again),
    /// not `INVALID_CODE`, and no failed join is spent.
    pub cut_off: bool,
}

/// Browser → registry: `resume`.
#[derive(Message)]
#[rtype(result = "Reply")]
pub struct Resume {
    /// The browser.
    pub conn: ConnId,
    /// The `sessionId` it was given.
    pub session_id: String,
    /// Lossless mode.
    pub lossless: Lossless,
    /// The cluster could not be asked whether this pairing lives on another node: unless
    /// it lives here, the browser is told to try again.
    pub cut_off: bool,
}

/// Mac → registry: the code I was given is held by another node of the cluster; give me
/// another (the reply holds it).
#[derive(Message)]
#[rtype(result = "Reply")]
pub struct Reissue {
    /// The mac.
    pub conn: ConnId,
}

/// Connection actor → registry: end my pairing now (my partner was too slow, or the
/// messages held for it overflowed). The reply tells me `PartnerGone`.
#[derive(Message)]
#[rtype(result = "Reply")]
pub struct Unpair {
    /// The connection that stays.
    pub conn: ConnId,
    /// Its role.
    pub role: Role,
}

/// Anyone → registry: how much work its timers cost (tests and metrics).
#[derive(Message)]
#[rtype(result = "RegistryStats")]
pub struct Stats;

/// What [`Stats`] answers.
#[derive(Debug, Clone, Copy, MessageResponse)]
pub struct RegistryStats {
    /// Timers armed now: never more than one, however many deadlines are pending.
    pub timers_armed: usize,
    /// Times a timer future was polled, over the registry's life.
    pub timer_polls: u64,
    /// Messages handled, over the registry's life.
    pub messages: u64,
    /// Deadlines pending (codes waiting to expire, away sides in their grace period).
    pub deadlines: usize,
}

/// One pairing connection, as the registry knows it.
struct Conn {
    peer: Peer<ToConn>,
    /// Where its pairings are handed over.
    slot: PairingSlot,
    /// It opted in to lossless mode.
    ack: bool,
}

/// The quick-pairing registry actor.
pub struct SessionRegistry {
    table: PairingTable,
    limits: StreamLimits,
    conns: HashMap<ConnId, Conn>,
    /// Each live pairing's two directions.
    pipes: HashMap<PairingId, SharedPipes>,
    /// The one timer, armed for the table's earliest deadline.
    armed: Option<(Instant, SpawnHandle)>,
    /// Polls of that timer, counted by [`Polled`].
    timer_polls: Rc<Cell<u64>>,
    messages: u64,
    /// In a cluster: where this node records itself as its pairings' home.
    homes: Option<Homes>,
}

impl SessionRegistry {
    /// A registry applying `rules`, its pairings' streams bounded by `limits`.
    pub fn new(rules: PairingRules, limits: StreamLimits) -> Self {
        Self {
            table: PairingTable::new(rules),
            limits,
            conns: HashMap::default(),
            pipes: HashMap::default(),
            armed: None,
            timer_polls: Rc::default(),
            messages: 0,
            homes: None,
        }
    }

    /// In a cluster: records this node as the home of each pairing it makes or resumes, and
    /// of each whose side goes away, so the side can come back on any node.
    pub fn with_homes(mut self, homes: Option<Homes>) -> Self {
        self.homes = homes;
        self
    }

    fn record_home(&self, session: &PairingId) {
        // A leaving node's pairings are recorded by the node that adopts them.
        if let (Some(homes), false) = (&self.homes, self.table.is_leaving()) {
            homes.record(session, self.table.client_of(session));
        }
    }

    /// Carries out `effects`. What is meant for `requester` is returned for its [`Reply`];
    /// everything else goes to mailboxes and outboxes. `last_seq` is what a resuming
    /// requester says it received.
    fn apply(
        &mut self,
        effects: Vec<Effect>,
        requester: Option<ConnId>,
        last_seq: Option<u64>,
    ) -> Reply {
        let mut reply = Reply::default();
        let mut tell = |conns: &HashMap<ConnId, Conn>, to, msg| {
            if Some(to) == requester {
                reply.0.push(msg);
            } else if let Some(conn) = conns.get(&to) {
                conn.peer.tell(msg);
            }
        };
        for effect in effects {
            match effect {
                Effect::Registered { to, code, ttl } => {
                    METRICS.codes_issued.fetch_add(1, Relaxed);
                    let expires_at = (SystemTime::now() + ttl)
                        .duration_since(UNIX_EPOCH)
                        .unwrap_or_default()
                        .as_millis() as u64;
                    tell(&self.conns, to, ToConn::Registered { code, expires_at });
                }
                Effect::Error { to, code, message } => {
                    tell(&self.conns, to, ToConn::Error { code, message });
                }
                Effect::Pair {
                    session,
                    mac,
                    browser,
                    resumed,
                } => {
                    self.pair(session, [mac, browser], resumed, last_seq);
                    self.record_home(&session);
                    for conn in [mac, browser].into_iter().flatten() {
                        tell(&self.conns, conn, ToConn::Paired(session));
                    }
                }
                Effect::Away { session, role } => {
                    if let Some(pipes) = self.pipes.get(&session) {
                        lock_pipes(pipes).to(role).disconnect();
                    }
                    self.record_home(&session);
                }
                Effect::Ended { session } => {
                    let fingerprint = match self.pipes.remove(&session) {
                        Some(pipes) => {
                            let fingerprint = lock_pipes(&pipes).fingerprint().to_owned();
                            fingerprint
                        }
                        None => session.fingerprint(),
                    };
                    METRICS.pairings_ended.fetch_add(1, Relaxed);
                    audit::event("pairing_ended").pairing(fingerprint).record();
                }
                Effect::PartnerGone { to, code } => {
                    // A pairing handed over but not yet taken is void now.
                    if let Some(conn) = self.conns.get(&to) {
                        lock(&conn.slot).take();
                    }
                    tell(&self.conns, to, ToConn::PartnerGone { code });
                }
                Effect::Replaced { conn } => {
                    if let Some(old) = self.conns.remove(&conn) {
                        old.peer.close(Outcome::Replaced);
                    }
                }
            }
        }
        reply
    }

    /// Connects the present sides (`[mac, browser]`) to the pairing's pipes: each is told
    /// `joined`; a side new to them is handed the pipes and given, whole, what it missed
    /// (after `ack` in lossless mode). On a resume only the side that came back is new.
    fn pair(
        &mut self,
        session: PairingId,
        sides: [Option<ConnId>; 2],
        resumed: Option<Role>,
        last_seq: Option<u64>,
    ) {
        let limits = self.limits;
        let pipes = Arc::clone(
            self.pipes
                .entry(session)
                .or_insert_with(|| Pipes::shared(limits.hold, session.fingerprint())),
        );
        let present: Vec<(Role, &Conn)> = [Role::Mac, Role::Browser]
            .into_iter()
            .zip(sides)
            .filter_map(|(role, conn)| Some((role, self.conns.get(&conn?)?)))
            .collect();
        let is_new = |role: Role| resumed.is_none_or(|r| r == role);
        // The new sides' slots stay locked until everything below is queued, so a side can
        // take its pipes only after its `joined` and the partner's are queued: nothing it
        // forwards can overtake them, and data its client sends after `joined` finds the
        // pipes in the slot. (Actors only ever lock their own slot: no deadlock.)
        let mut guards: Vec<_> = present
            .iter()
            .filter(|(role, _)| is_new(*role))
            .map(|(_, conn)| lock(&conn.slot))
            .collect();
        for guard in &mut guards {
            **guard = Some(Pairing {
                session,
                pipes: Arc::clone(&pipes),
            });
        }
        let joined = crate::transport::text_frame(&PairingEvent::Joined {
            session_id: &session.to_string(),
        });
        let mut pipes = lock_pipes(&pipes);
        for (role, conn) in &present {
            if conn.ack {
                // Lossless mode is for the life of the pairing once a side asks for it.
                pipes.to(*role).number(limits.window);
            }
            // A side that cannot take `joined` is dropped (the policy closes it); its
            // departure ends the pairing and tells the other side.
            if conn.peer.deliver(joined.clone()) != Delivery::Delivered || !is_new(*role) {
                continue;
            }
            if resumed.is_some() && pipes.to(*role).is_numbered() {
                let seq = pipes.received(*role);
                conn.peer.send(&PairingEvent::Ack { seq });
            }
            let last = last_seq.filter(|_| resumed == Some(*role));
            pipes.to(*role).connect(conn.peer.clone(), last);
        }
        drop(pipes);
        drop(guards);
    }

    /// Arms the one timer for the table's earliest deadline, if that changed.
    fn rearm(&mut self, ctx: &mut Context<Self>) {
        let next = self.table.next_deadline();
        if next == self.armed.as_ref().map(|(at, _)| *at) {
            return;
        }
        if let Some((_, handle)) = self.armed.take() {
            ctx.cancel_future(handle);
        }
        if let Some(at) = next {
            let sleep = Polled {
                inner: Box::pin(actix_rt::time::sleep_until(at.into())),
                polls: Rc::clone(&self.timer_polls),
            };
            let handle = ctx.spawn(sleep.into_actor(self).map(|(), registry, ctx| {
                registry.armed = None;
                let effects = registry.table.fire(Instant::now());
                let expired = effects.iter().filter(
                    |e| matches!(e, Effect::Error { code, .. } if *code == ErrorCode::ExpiredCode),
                );
                METRICS
                    .codes_expired
                    .fetch_add(expired.count() as u64, Relaxed);
                registry.apply(effects, None, None);
                registry.rearm(ctx);
            }));
            self.armed = Some((at, handle));
        }
    }

    /// A connection asked for lossless mode: from now on, and for the life of any pairing
    /// it joins or resumes.
    fn opt_in(&mut self, conn: ConnId, lossless: Lossless) {
        if let Some(entry) = self.conns.get_mut(&conn) {
            entry.ack |= lossless.ack;
        }
    }

    /// Every handler ends here: count, arm the timer, answer.
    /// Answers `conn`'s request with `UNAVAILABLE`: what it asked for may live on another
    /// node, and the cluster cannot be asked now.
    fn unavailable(
        &mut self,
        conn: ConnId,
        message: &'static str,
        ctx: &mut Context<Self>,
    ) -> Reply {
        let effects = vec![Effect::Error {
            to: conn,
            code: ErrorCode::Unavailable,
            message,
        }];
        let reply = self.apply(effects, Some(conn), None);
        self.done(reply, ctx)
    }

    fn done(&mut self, reply: Reply, ctx: &mut Context<Self>) -> Reply {
        self.messages += 1;
        self.rearm(ctx);
        reply
    }
}

/// A future that counts how often it is polled: the registry's timer work, measured.
struct Polled<F> {
    inner: Pin<Box<F>>,
    polls: Rc<Cell<u64>>,
}

impl<F: Future> Future for Polled<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<F::Output> {
        self.polls.set(self.polls.get() + 1);
        self.inner.as_mut().poll(cx)
    }
}

impl Actor for SessionRegistry {
    type Context = Context<Self>;
}

impl Handler<Connect> for SessionRegistry {
    type Result = Reply;

    fn handle(&mut self, msg: Connect, ctx: &mut Context<Self>) -> Reply {
        let conn = msg.peer.conn;
        let entry = Conn {
            peer: msg.peer,
            slot: msg.slot,
            ack: false,
        };
        self.conns.insert(conn, entry);
        let effects = match msg.role {
            Role::Mac if msg.code => self.table.mac_connected(conn, Instant::now()),
            Role::Mac => {
                self.table.mac_waiting(conn);
                Vec::new()
            }
            Role::Browser => Vec::new(),
        };
        let reply = self.apply(effects, Some(conn), None);
        self.done(reply, ctx)
    }
}

impl Handler<Disconnect> for SessionRegistry {
    type Result = ();

    fn handle(&mut self, msg: Disconnect, ctx: &mut Context<Self>) {
        let effects = self
            .table
            .departed(msg.conn, msg.role, msg.departure, Instant::now());
        self.conns.remove(&msg.conn);
        let reply = self.apply(effects, None, None);
        self.done(reply, ctx);
    }
}

impl Handler<Leave> for SessionRegistry {
    type Result = ();

    fn handle(&mut self, _: Leave, _: &mut Context<Self>) {
        self.table.leave();
        for pipes in self.pipes.values() {
            let mut pipes = lock_pipes(pipes);
            pipes.to(Role::Mac).disconnect();
            pipes.to(Role::Browser).disconnect();
        }
    }
}

impl Handler<Export> for SessionRegistry {
    type Result = MessageResult<Export>;

    fn handle(&mut self, _: Export, ctx: &mut Context<Self>) -> Self::Result {
        let taken = self.table.take_pairings();
        let handoffs = taken
            .into_iter()
            .filter_map(|(session, client)| {
                let pipes = self.pipes.remove(&session)?;
                let state = lock_pipes(&pipes).export();
                Some(Handoff {
                    session: session.to_string(),
                    client,
                    pipes: state,
                })
            })
            .collect();
        self.rearm(ctx);
        MessageResult(handoffs)
    }
}

impl Handler<Adopt> for SessionRegistry {
    type Result = bool;

    fn handle(&mut self, Adopt(handoff): Adopt, ctx: &mut Context<Self>) -> bool {
        let Some(session) = PairingId::parse(&handoff.session) else {
            return false;
        };
        if self.pipes.contains_key(&session) {
            return true;
        }
        self.table.adopt(session, handoff.client, Instant::now());
        let pipes = Pipes::import(handoff.pipes, session.fingerprint());
        self.pipes.insert(session, pipes);
        self.done(Reply::default(), ctx);
        true
    }
}

impl Handler<Release> for SessionRegistry {
    type Result = bool;

    fn handle(&mut self, msg: Release, ctx: &mut Context<Self>) -> bool {
        if self.table.mac_paired(msg.conn) {
            return false;
        }
        let effects = self
            .table
            .disconnected(msg.conn, Role::Mac, true, Instant::now());
        self.conns.remove(&msg.conn);
        let reply = self.apply(effects, None, None);
        self.done(reply, ctx);
        true
    }
}

impl Handler<Register> for SessionRegistry {
    type Result = Reply;

    fn handle(&mut self, msg: Register, ctx: &mut Context<Self>) -> Reply {
        if msg.cut_off && msg.client_id.resumable() && !self.table.knows_client(&msg.client_id) {
            let message = "the relay cannot reach its cluster to find that pairing; send register to try again";
            return self.unavailable(msg.conn, message, ctx);
        }
        self.opt_in(msg.conn, msg.lossless);
        let effects = self
            .table
            .mac_register(msg.conn, msg.client_id, Instant::now());
        if effects.iter().any(|e| matches!(e, Effect::Pair { .. })) {
            METRICS.resumes.fetch_add(1, Relaxed);
        }
        let reply = self.apply(effects, Some(msg.conn), msg.lossless.last_seq);
        self.done(reply, ctx)
    }
}

impl Handler<Join> for SessionRegistry {
    type Result = Reply;

    fn handle(&mut self, msg: Join, ctx: &mut Context<Self>) -> Reply {
        self.opt_in(msg.conn, msg.lossless);
        if msg.cut_off && self.table.is_foreign(&msg.code) {
            let message = "the relay cannot reach its cluster to find that code; try again";
            return self.unavailable(msg.conn, message, ctx);
        }
        let effects = self.table.browser_join(msg.conn, &msg.code, Instant::now());
        let invalid = effects.iter().any(|e| {
            matches!(
                e,
                Effect::Error {
                    code: ErrorCode::InvalidCode,
                    ..
                }
            )
        });
        match msg.failure {
            Some(failure) if invalid => failure.spend(),
            other => drop(other),
        }
        if effects.iter().any(|e| matches!(e, Effect::Pair { .. })) {
            METRICS.codes_joined.fetch_add(1, Relaxed);
            METRICS.pairings.fetch_add(1, Relaxed);
        }
        let reply = self.apply(effects, Some(msg.conn), None);
        self.done(reply, ctx)
    }
}

impl Handler<Resume> for SessionRegistry {
    type Result = Reply;

    fn handle(&mut self, msg: Resume, ctx: &mut Context<Self>) -> Reply {
        if msg.cut_off && !self.table.knows_session(&msg.session_id) {
            let message = "the relay cannot reach its cluster to find that pairing; try again";
            return self.unavailable(msg.conn, message, ctx);
        }
        self.opt_in(msg.conn, msg.lossless);
        let effects = self.table.browser_resume(msg.conn, &msg.session_id);
        if effects.iter().any(|e| matches!(e, Effect::Pair { .. })) {
            METRICS.resumes.fetch_add(1, Relaxed);
        }
        let reply = self.apply(effects, Some(msg.conn), msg.lossless.last_seq);
        self.done(reply, ctx)
    }
}

impl Handler<Reissue> for SessionRegistry {
    type Result = Reply;

    fn handle(&mut self, msg: Reissue, ctx: &mut Context<Self>) -> Reply {
        let effects = self.table.reissue(msg.conn, Instant::now());
        let reply = self.apply(effects, Some(msg.conn), None);
        self.done(reply, ctx)
    }
}

impl Handler<Unpair> for SessionRegistry {
    type Result = Reply;

    fn handle(&mut self, msg: Unpair, ctx: &mut Context<Self>) -> Reply {
        let effects = self.table.unpair(msg.conn, msg.role);
        let reply = self.apply(effects, Some(msg.conn), None);
        self.done(reply, ctx)
    }
}

impl Handler<Stats> for SessionRegistry {
    type Result = RegistryStats;

    fn handle(&mut self, _: Stats, _: &mut Context<Self>) -> RegistryStats {
        RegistryStats {
            timers_armed: usize::from(self.armed.is_some()),
            timer_polls: self.timer_polls.get(),
            messages: self.messages,
            deadlines: self.table.deadline_count(),
        }
    }
}

#[cfg(test)]
#[path = "registry_tests.rs"]
mod tests;
