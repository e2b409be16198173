//! The `SessionRegistry` actor: owns pairing codes, their expiry, the pairing table and
//! teardown. It pairs; it does not carry data — once paired, connection actors write
//! straight into each other's outbox.
//!
//! The rules live in [`PairingTable`] as plain methods; the handlers here only delegate and
//! carry out the returned [`Effect`]s. A connection's own requests (`Connect`, `Register`,
//! `Join`, `Resume`, `Unpair`) are answered with a [`Reply`] holding what that connection
//! must do, which it handles before reading its next frame; everything for *other*
//! connections goes to their mailboxes.

use std::cell::Cell;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Poll;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use actix::prelude::*;

use super::table::{Effect, PairingRules, PairingTable};
use crate::ids::{ConnId, MacClientId, Outcome, PairingId, Role};
use crate::metrics::METRICS;
use crate::relay::delivery::{Command, Delivery, Peer};
use crate::relay::protocol::pairing::PairingEvent;
use crate::relay::protocol::ErrorCode;

/// Registry (or partner) → connection actor.
#[derive(Debug, Message)]
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
    Close(Outcome),
}

impl Command for ToConn {
    fn close(outcome: Outcome) -> Self {
        Self::Close(outcome)
    }
}

/// What the registry answers a connection's own request with: what it must do, in order.
#[derive(Debug, Default, MessageResponse)]
pub struct Reply(pub Vec<ToConn>);

/// A pairing handed to a connection: its id and the partner (`None` while away).
pub struct Pairing {
    /// The pairing id (`sessionId`).
    pub session: PairingId,
    /// The partner, if connected; while `None`, hold its messages.
    pub partner: Option<Peer<ToConn>>,
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
#[rtype(result = "Reply")]
pub struct Register {
    /// The mac.
    pub conn: ConnId,
    /// Its `clientId`.
    pub client_id: MacClientId,
}

/// Browser → registry: `join`.
#[derive(Message)]
#[rtype(result = "Reply")]
pub struct Join {
    /// The browser.
    pub conn: ConnId,
    /// The code as typed.
    pub code: String,
}

/// Browser → registry: `resume`.
#[derive(Message)]
#[rtype(result = "Reply")]
pub struct Resume {
    /// The browser.
    pub conn: ConnId,
    /// The `sessionId` it was given.
    pub session_id: String,
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

/// The quick-pairing registry actor.
pub struct SessionRegistry {
    table: PairingTable,
    /// Pairing connections: how to reach each, and where its pairings are handed over.
    conns: HashMap<ConnId, (Peer<ToConn>, PairingSlot)>,
    /// The one timer, armed for the table's earliest deadline.
    armed: Option<(Instant, SpawnHandle)>,
    /// Polls of that timer, counted by [`Polled`].
    timer_polls: Rc<Cell<u64>>,
    messages: u64,
}

impl SessionRegistry {
    /// A registry applying `rules`.
    pub fn new(rules: PairingRules) -> Self {
        Self {
            table: PairingTable::new(rules),
            conns: HashMap::new(),
            armed: None,
            timer_polls: Rc::default(),
            messages: 0,
        }
    }

    /// Carries out `effects`. What is meant for `requester` is returned for its [`Reply`];
    /// everything else goes to mailboxes and outboxes.
    fn apply(&mut self, effects: Vec<Effect>, requester: Option<ConnId>) -> Reply {
        let mut reply = Reply::default();
        let mut tell = |conns: &HashMap<ConnId, (Peer<ToConn>, PairingSlot)>, to, msg| {
            if Some(to) == requester {
                reply.0.push(msg);
            } else if let Some((peer, _)) = conns.get(&to) {
                peer.tell(msg);
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
                } => {
                    self.pair(session, mac, browser);
                    for conn in [mac, browser].into_iter().flatten() {
                        tell(&self.conns, conn, ToConn::Paired);
                    }
                }
                Effect::PartnerAway { to } => tell(&self.conns, to, ToConn::PartnerAway),
                Effect::PartnerGone { to, code } => {
                    // A pairing handed over but not yet taken is void now.
                    if let Some((_, slot)) = self.conns.get(&to) {
                        lock(slot).take();
                    }
                    tell(&self.conns, to, ToConn::PartnerGone { code });
                }
                Effect::Replaced { conn } => {
                    if let Some((peer, _)) = self.conns.remove(&conn) {
                        peer.close(Outcome::Replaced);
                    }
                }
            }
        }
        reply
    }

    /// Hands each present side its partner, then queues `joined` to both.
    fn pair(&self, session: PairingId, mac: Option<ConnId>, browser: Option<ConnId>) {
        let entry = |conn: Option<ConnId>| conn.and_then(|c| self.conns.get(&c));
        let (mac, browser) = (entry(mac), entry(browser));
        let peer = |side: Option<&(Peer<ToConn>, PairingSlot)>| side.map(|(p, _)| p.clone());
        // Both slots stay locked while `joined` is queued, so a side can take its partner
        // only after its `joined` and the partner's are both queued: nothing it forwards can
        // overtake the partner's `joined`, and data its client sends after `joined` finds
        // the partner in the slot. (Actors only ever lock their own slot, so taking two here
        // cannot deadlock.)
        let mut guards: Vec<_> = [(mac, peer(browser)), (browser, peer(mac))]
            .into_iter()
            .filter_map(|(side, partner)| side.map(|(_, slot)| (lock(slot), partner)))
            .collect();
        for (guard, partner) in &mut guards {
            **guard = Some(Pairing {
                session,
                partner: partner.take(),
            });
        }
        let joined = crate::transport::text_frame(&PairingEvent::Joined {
            session_id: &session.to_string(),
        });
        for (side, _) in [mac, browser].into_iter().flatten() {
            // A side that cannot take `joined` is dropped (the policy closes it); its
            // departure ends the pairing and tells the other side.
            if side.deliver(joined.clone()) != Delivery::Delivered {
                tracing::debug!(conn = %side.conn, "could not queue joined");
            }
        }
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
                registry.apply(effects, None);
                registry.rearm(ctx);
            }));
            self.armed = Some((at, handle));
        }
    }

    /// Every handler ends here: count, arm the timer, answer.
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
        self.conns.insert(conn, (msg.peer, msg.slot));
        let effects = match msg.role {
            Role::Mac => self.table.mac_connected(conn, Instant::now()),
            Role::Browser => Vec::new(),
        };
        let reply = self.apply(effects, Some(conn));
        self.done(reply, ctx)
    }
}

impl Handler<Disconnect> for SessionRegistry {
    type Result = ();

    fn handle(&mut self, msg: Disconnect, ctx: &mut Context<Self>) {
        let effects = self
            .table
            .disconnected(msg.conn, msg.role, msg.clean, Instant::now());
        self.conns.remove(&msg.conn);
        let reply = self.apply(effects, None);
        self.done(reply, ctx);
    }
}

impl Handler<Register> for SessionRegistry {
    type Result = Reply;

    fn handle(&mut self, msg: Register, ctx: &mut Context<Self>) -> Reply {
        let effects = self
            .table
            .mac_register(msg.conn, msg.client_id, Instant::now());
        if effects.iter().any(|e| matches!(e, Effect::Pair { .. })) {
            METRICS.resumes.fetch_add(1, Relaxed);
        }
        let reply = self.apply(effects, Some(msg.conn));
        self.done(reply, ctx)
    }
}

impl Handler<Join> for SessionRegistry {
    type Result = Reply;

    fn handle(&mut self, msg: Join, ctx: &mut Context<Self>) -> Reply {
        let effects = self.table.browser_join(msg.conn, &msg.code, Instant::now());
        if effects.iter().any(|e| matches!(e, Effect::Pair { .. })) {
            METRICS.codes_joined.fetch_add(1, Relaxed);
            METRICS.pairings.fetch_add(1, Relaxed);
        }
        let reply = self.apply(effects, Some(msg.conn));
        self.done(reply, ctx)
    }
}

impl Handler<Resume> for SessionRegistry {
    type Result = Reply;

    fn handle(&mut self, msg: Resume, ctx: &mut Context<Self>) -> Reply {
        let effects = self.table.browser_resume(msg.conn, &msg.session_id);
        if effects.iter().any(|e| matches!(e, Effect::Pair { .. })) {
            METRICS.resumes.fetch_add(1, Relaxed);
        }
        let reply = self.apply(effects, Some(msg.conn));
        self.done(reply, ctx)
    }
}

impl Handler<Unpair> for SessionRegistry {
    type Result = Reply;

    fn handle(&mut self, msg: Unpair, ctx: &mut Context<Self>) -> Reply {
        let effects = self.table.unpair(msg.conn, msg.role);
        let reply = self.apply(effects, Some(msg.conn));
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
