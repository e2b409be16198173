//! The `SessionRegistry` actor: owns pairing codes, their expiry timers, the pairing
//! table and teardown. It pairs; it does not carry data — once paired, connection actors
//! write straight into each other's outbox.
//!
//! The rules live in [`pairings::PairingTable`] as plain methods; the handlers here only
//! delegate and then carry out the returned [`Effect`]s.

mod account;
pub mod machines;
pub mod pairings;

pub use account::{
    AgentOffline, AgentOnline, AgentReport, ClientCommand, ClientOffline, ClientOnline,
    ClientRequest, ToAgent, ToClient,
};

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use std::sync::atomic::Ordering::Relaxed;

use actix::prelude::*;
use uuid::Uuid;

use crate::metrics::METRICS;
use crate::relay::protocol::{ErrorCode, PairingEvent};
use crate::relay::socket::Outcome;
use crate::transport::{text_frame, Outbox};
use machines::{Live, MachineTable};
use pairings::{ConnId, Effect, PairingRules, PairingTable, Role};

/// How often retired codes are swept from memory.
const SWEEP_INTERVAL: Duration = Duration::from_secs(30);

/// How to reach one connection: its actor for events, its outbox for data.
pub struct Peer<M: Message<Result = ()> + Send = ToConn> {
    /// The connection actor.
    pub addr: Recipient<M>,
    /// Its outbox, which a partner writes data into directly.
    pub outbox: Arc<Outbox>,
}

impl<M: Message<Result = ()> + Send> Clone for Peer<M> {
    fn clone(&self) -> Self {
        Self {
            addr: self.addr.clone(),
            outbox: Arc::clone(&self.outbox),
        }
    }
}

/// Registry (or partner) → connection actor.
#[derive(Message)]
#[rtype(result = "()")]
pub enum ToConn {
    /// A mac's fresh code; `expires_at` in ms since the Unix epoch.
    Registered {
        /// The code.
        code: String,
        /// Expiry, ms since the epoch.
        expires_at: u64,
    },
    /// Send an `error`; the connection stays open.
    Error {
        /// The code.
        code: ErrorCode,
        /// Text for humans.
        message: &'static str,
    },
    /// Paired (or re-paired on resume): take the pairing from the connection's
    /// [`PairingSlot`]. The registry fills the slot before it queues `joined`, so a
    /// connection whose client answers `joined` at once finds its partner even if this
    /// message has not been handled yet.
    Paired,
    /// The partner lost its connection; hold messages for it.
    PartnerAway,
    /// The pairing ended; send the `error` `code` and become unpaired.
    PartnerGone {
        /// `MAC_DISCONNECTED` or `BROWSER_DISCONNECTED`.
        code: ErrorCode,
    },
    /// Close this connection.
    Drop(Outcome),
}

/// A pairing handed to a connection: its id and the partner (`None` while away).
pub struct Pairing {
    /// The pairing id (`sessionId`).
    pub session: Uuid,
    /// The partner, if connected; while `None`, hold its messages.
    pub partner: Option<Peer>,
}

/// Where the registry leaves a connection's new pairing for it to take, synchronously.
pub type PairingSlot = Arc<std::sync::Mutex<Option<Pairing>>>;

/// Connection actor → registry, from `started()`.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Connect {
    /// The new connection.
    pub conn: ConnId,
    /// Mac or browser.
    pub role: Role,
    /// How to reach it.
    pub peer: Peer,
    /// Where its pairings are handed over.
    pub slot: PairingSlot,
}

/// Connection actor → registry, from `stopping()`.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Disconnect {
    /// The leaving connection.
    pub conn: ConnId,
    /// Mac or browser.
    pub role: Role,
    /// True for a close frame or a drop the relay chose; false for a lost connection.
    pub clean: bool,
}

/// Mac → registry: `register`.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Register {
    /// The mac.
    pub conn: ConnId,
    /// Its `clientId`.
    pub client_id: String,
}

/// Browser → registry: `join`.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Join {
    /// The browser.
    pub conn: ConnId,
    /// The code as typed.
    pub code: String,
}

/// Browser → registry: `resume`.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Resume {
    /// The browser.
    pub conn: ConnId,
    /// The `sessionId` it was given.
    pub session_id: String,
}

/// Connection actor → registry: end my pairing now (my partner was too slow, or the
/// messages held for it overflowed). I am told `PartnerGone`.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Unpair {
    /// The connection that stays.
    pub conn: ConnId,
    /// Its role.
    pub role: Role,
}

/// REST or client → registry: the live state of these machines, in order.
#[derive(Message)]
#[rtype(result = "Vec<Live>")]
pub struct MachineStatus {
    /// Machines to look up.
    pub machine_ids: Vec<String>,
}

/// REST → registry: a machine was deleted; drop its agent.
#[derive(Message)]
#[rtype(result = "()")]
pub struct DropMachine {
    /// The deleted machine.
    pub machine_id: String,
}

/// The registry actor.
pub struct SessionRegistry {
    table: PairingTable,
    machines: MachineTable,
    /// Pairing connections: how to reach each, and where its pairings are handed over.
    pair_conns: HashMap<ConnId, (Peer, PairingSlot)>,
    agents: HashMap<ConnId, Peer<ToAgent>>,
    clients: HashMap<ConnId, Peer<ToClient>>,
    /// One timer per pending code, cancelled when it is joined or withdrawn.
    expiry_timers: HashMap<String, SpawnHandle>,
    /// One timer per away side of a pairing.
    grace_timers: HashMap<(Uuid, Role), SpawnHandle>,
}

impl SessionRegistry {
    /// A registry applying `rules`.
    pub fn new(rules: PairingRules) -> Self {
        Self {
            table: PairingTable::new(rules),
            machines: MachineTable::default(),
            pair_conns: HashMap::new(),
            agents: HashMap::new(),
            clients: HashMap::new(),
            expiry_timers: HashMap::new(),
            grace_timers: HashMap::new(),
        }
    }

    fn tell(&self, conn: ConnId, message: ToConn) {
        if let Some((peer, _)) = self.pair_conns.get(&conn) {
            peer.addr.do_send(message);
        }
    }

    fn apply(&mut self, effects: Vec<Effect>, ctx: &mut Context<Self>) {
        for effect in effects {
            match effect {
                Effect::Registered { to, code, ttl } => {
                    METRICS.codes_issued.fetch_add(1, Relaxed);
                    let expires_at = SystemTime::now() + ttl;
                    let expires_at = expires_at
                        .duration_since(UNIX_EPOCH)
                        .unwrap_or_default()
                        .as_millis() as u64;
                    self.tell(to, ToConn::Registered { code, expires_at });
                }
                Effect::Error { to, code, message } => {
                    self.tell(to, ToConn::Error { code, message })
                }
                Effect::Pair {
                    session,
                    mac,
                    browser,
                } => {
                    let peer = |conn: Option<ConnId>| {
                        conn.and_then(|c| self.pair_conns.get(&c))
                            .map(|(peer, _)| peer.clone())
                    };
                    let (mac_peer, browser_peer) = (peer(mac), peer(browser));
                    // Both slots stay locked while `joined` is queued, so a side can take its
                    // partner only after its `joined` and the partner's are both queued:
                    // nothing it forwards can overtake the partner's `joined`, and data its
                    // client sends after `joined` finds the partner in the slot. (Actors only
                    // ever lock their own slot, so taking two here cannot deadlock.)
                    let slot = |conn: Option<ConnId>| {
                        conn.and_then(|c| self.pair_conns.get(&c))
                            .map(|(_, slot)| slot)
                    };
                    let mut guards: Vec<_> =
                        [(slot(mac), &browser_peer), (slot(browser), &mac_peer)]
                            .into_iter()
                            .filter_map(|(slot, partner)| slot.map(|slot| (lock(slot), partner)))
                            .collect();
                    for (guard, partner) in &mut guards {
                        **guard = Some(Pairing {
                            session,
                            partner: (*partner).clone(),
                        });
                    }
                    let joined = text_frame(&PairingEvent::Joined {
                        session_id: &session.to_string(),
                    });
                    for peer in [&mac_peer, &browser_peer].into_iter().flatten() {
                        let _ = peer.outbox.push(joined.clone());
                    }
                    drop(guards);
                    for conn in [mac, browser].into_iter().flatten() {
                        self.tell(conn, ToConn::Paired);
                    }
                }
                Effect::PartnerAway { to } => self.tell(to, ToConn::PartnerAway),
                Effect::PartnerGone { to, code } => {
                    // A pairing handed over but not yet taken is void now.
                    if let Some((_, slot)) = self.pair_conns.get(&to) {
                        lock(slot).take();
                    }
                    self.tell(to, ToConn::PartnerGone { code });
                }
                Effect::Replaced { conn } => {
                    self.tell(conn, ToConn::Drop(Outcome::Replaced));
                    self.pair_conns.remove(&conn);
                }
                Effect::ScheduleExpiry { code, after } => {
                    let key = code.clone();
                    let handle = ctx.run_later(after, move |registry, ctx| {
                        registry.expiry_timers.remove(&code);
                        let effects = registry.table.code_expired(&code, Instant::now());
                        if !effects.is_empty() {
                            METRICS.codes_expired.fetch_add(1, Relaxed);
                        }
                        registry.apply(effects, ctx);
                    });
                    self.expiry_timers.insert(key, handle);
                }
                Effect::CancelExpiry { code } => {
                    if let Some(handle) = self.expiry_timers.remove(&code) {
                        ctx.cancel_future(handle);
                    }
                }
                Effect::ScheduleGrace {
                    session,
                    role,
                    after,
                } => {
                    let handle = ctx.run_later(after, move |registry, ctx| {
                        registry.grace_timers.remove(&(session, role));
                        let effects = registry.table.grace_expired(session, role, Instant::now());
                        registry.apply(effects, ctx);
                    });
                    if let Some(old) = self.grace_timers.insert((session, role), handle) {
                        ctx.cancel_future(old);
                    }
                }
            }
        }
    }
}

/// Locks a pairing slot; a poisoned one still holds a valid `Option`.
pub fn lock(slot: &PairingSlot) -> std::sync::MutexGuard<'_, Option<Pairing>> {
    slot.lock().unwrap_or_else(|poison| poison.into_inner())
}

fn count_resume(effects: &[Effect]) {
    if effects.iter().any(|e| matches!(e, Effect::Pair { .. })) {
        METRICS.resumes.fetch_add(1, Relaxed);
    }
}

impl Actor for SessionRegistry {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(SWEEP_INTERVAL, |registry, _| {
            registry.table.sweep(Instant::now())
        });
    }
}

impl Handler<Connect> for SessionRegistry {
    type Result = ();

    fn handle(&mut self, msg: Connect, ctx: &mut Context<Self>) {
        self.pair_conns.insert(msg.conn, (msg.peer, msg.slot));
        if msg.role == Role::Mac {
            let effects = self.table.mac_connected(msg.conn, Instant::now());
            self.apply(effects, ctx);
        }
    }
}

impl Handler<Disconnect> for SessionRegistry {
    type Result = ();

    fn handle(&mut self, msg: Disconnect, ctx: &mut Context<Self>) {
        let effects = self
            .table
            .disconnected(msg.conn, msg.role, msg.clean, Instant::now());
        self.pair_conns.remove(&msg.conn);
        self.apply(effects, ctx);
    }
}

impl Handler<Register> for SessionRegistry {
    type Result = ();

    fn handle(&mut self, msg: Register, ctx: &mut Context<Self>) {
        let effects = self
            .table
            .mac_register(msg.conn, msg.client_id, Instant::now());
        count_resume(&effects);
        self.apply(effects, ctx);
    }
}

impl Handler<Join> for SessionRegistry {
    type Result = ();

    fn handle(&mut self, msg: Join, ctx: &mut Context<Self>) {
        let effects = self.table.browser_join(msg.conn, &msg.code, Instant::now());
        if effects.iter().any(|e| matches!(e, Effect::Pair { .. })) {
            METRICS.codes_joined.fetch_add(1, Relaxed);
            METRICS.pairings.fetch_add(1, Relaxed);
        }
        self.apply(effects, ctx);
    }
}

impl Handler<Resume> for SessionRegistry {
    type Result = ();

    fn handle(&mut self, msg: Resume, ctx: &mut Context<Self>) {
        let effects = self.table.browser_resume(msg.conn, &msg.session_id);
        count_resume(&effects);
        self.apply(effects, ctx);
    }
}

impl Handler<Unpair> for SessionRegistry {
    type Result = ();

    fn handle(&mut self, msg: Unpair, ctx: &mut Context<Self>) {
        let effects = self.table.unpair(msg.conn, msg.role);
        self.apply(effects, ctx);
    }
}

impl Handler<MachineStatus> for SessionRegistry {
    type Result = MessageResult<MachineStatus>;

    fn handle(&mut self, msg: MachineStatus, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.machines.status(&msg.machine_ids))
    }
}

impl Handler<DropMachine> for SessionRegistry {
    type Result = ();

    fn handle(&mut self, msg: DropMachine, _: &mut Context<Self>) {
        let effects = self.machines.machine_deleted(&msg.machine_id);
        self.apply_account(effects);
    }
}
