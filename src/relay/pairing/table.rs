//! The rules of quick pairing, as plain state and methods with no actix in them.
//!
//! Every method takes the current time and returns the [`Effect`]s the registry actor must
//! carry out (send, pair, close). The table also keeps every deadline it depends on (code
//! expiry, resume grace, retired-code memory) in one ordered structure: the actor arms a
//! single timer for [`PairingTable::next_deadline`] and calls [`PairingTable::fire`] when
//! it rings. That keeps every rule unit-testable, and the actor a thin layer that maps
//! connection ids to addresses.

use std::collections::VecDeque;

use crate::ids::HashMap;
use std::time::{Duration, Instant};

use super::code::CodeFormat;
use crate::ids::{ClientKey, ConnId, Departure, PairingId, Role};
use crate::relay::deadlines::Deadlines;
use crate::relay::protocol::ErrorCode;

/// The durations and limits the rules need, from `Settings`.
#[derive(Debug, Clone)]
pub struct PairingRules {
    /// Codes, their length and alphabet.
    pub format: CodeFormat,
    /// How long a code may be joined.
    pub code_ttl: Duration,
    /// How long a side lost without a close may resume.
    pub resume_grace: Duration,
    /// How long retired codes are remembered.
    pub retired_code_memory: Duration,
    /// Most unpaired codes at once.
    pub max_pending_codes: usize,
}

/// Something the registry actor must do because a rule said so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Tell a mac its new code (`registered`).
    Registered {
        /// The mac.
        to: ConnId,
        /// Its code.
        code: String,
        /// How long from now the code may be joined (the actor adds wall-clock time).
        ttl: Duration,
    },
    /// Send an `error` to one connection; it stays open.
    Error {
        /// The recipient.
        to: ConnId,
        /// The code.
        code: ErrorCode,
        /// Text for humans.
        message: &'static str,
    },
    /// Connect `mac` and `browser` to each other, and tell both `joined`. Either may be
    /// `None` when that side is away: the other side is then told only `joined`.
    Pair {
        /// The pairing id (the `sessionId`).
        session: PairingId,
        /// The mac connection, if present.
        mac: Option<ConnId>,
        /// The browser connection, if present.
        browser: Option<ConnId>,
        /// `None` for a new pairing; the side that came back, for a resume.
        resumed: Option<Role>,
    },
    /// A side lost its connection without a close: hold what is sent to it until it
    /// resumes (its partner is not told).
    Away {
        /// The pairing.
        session: PairingId,
        /// The side that is away.
        role: Role,
    },
    /// The pairing is over: forget its pipes.
    Ended {
        /// The pairing.
        session: PairingId,
    },
    /// The pairing of `to` ended; it is unpaired and told `code`.
    PartnerGone {
        /// The side that stays.
        to: ConnId,
        /// `MAC_DISCONNECTED` or `BROWSER_DISCONNECTED`.
        code: ErrorCode,
    },
    /// Close a connection that a newer one replaced by resuming its pairing.
    Replaced {
        /// The old connection.
        conn: ConnId,
    },
}

/// What became of a code. Kept after it stops being joinable, for `retired_code_memory`,
/// so late joins get the precise error and no new code repeats a recent one.
#[derive(Debug, Clone, PartialEq, Eq)]
enum CodeState {
    /// Joinable by a browser until `expires_at`.
    Pending { mac: ConnId, expires_at: Instant },
    /// A browser used it: single-use, so it is spent.
    Joined,
    /// Expired unjoined, or withdrawn by its mac.
    Expired,
}

/// A deadline the table keeps.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Timer {
    /// A pending code stops being joinable.
    Code(String),
    /// An away side's grace period ends.
    Grace(PairingId, Role),
}

#[derive(Debug, Default)]
struct MacEntry {
    client_id: Option<ClientKey>,
    code: Option<String>,
    session: Option<PairingId>,
}

/// One end of a pairing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Here(ConnId),
    /// Lost without a close; may resume until its grace deadline.
    Away,
}

#[derive(Debug)]
struct Pairing {
    mac: End,
    browser: End,
    /// The mac's `clientId`, if it is secret enough to resume by.
    client_id: Option<ClientKey>,
}

impl Pairing {
    fn end(&mut self, role: Role) -> &mut End {
        match role {
            Role::Mac => &mut self.mac,
            Role::Browser => &mut self.browser,
        }
    }
}

/// Codes, macs, browsers and pairings.
#[derive(Debug)]
pub struct PairingTable {
    rules: PairingRules,
    codes: HashMap<String, CodeState>,
    /// Codes in `Pending`, counted against `max_pending_codes`.
    pending: usize,
    /// Retired codes in the order they retired, with when to forget them: all retire with
    /// the same memory, so this is sorted by time and the front is forgotten first. Also
    /// bounded by `max_pending_codes`, so a mac that re-registers in a loop cannot grow the
    /// table; past the bound the oldest are forgotten early.
    retired: VecDeque<(Instant, String)>,
    /// Code expiries and grace periods, earliest first.
    deadlines: Deadlines<Timer>,
    macs: HashMap<ConnId, MacEntry>,
    /// Browsers that are paired, with their pairing. Unpaired browsers need no state here.
    browsers: HashMap<ConnId, PairingId>,
    pairings: HashMap<PairingId, Pairing>,
    /// Pairings by their mac's (resumable) `clientId`, for mac resume.
    by_client_id: HashMap<ClientKey, PairingId>,
    /// The node is leaving: a side that goes, even with a close frame and even after its
    /// partner, is away (its pairing is to be handed to another node), not gone.
    leaving: bool,
}

impl PairingTable {
    /// An empty table.
    pub fn new(rules: PairingRules) -> Self {
        Self {
            rules,
            codes: HashMap::default(),
            pending: 0,
            retired: VecDeque::new(),
            deadlines: Deadlines::default(),
            macs: HashMap::default(),
            browsers: HashMap::default(),
            pairings: HashMap::default(),
            by_client_id: HashMap::default(),
            leaving: false,
        }
    }

    /// The node is leaving: from now on a side that goes is away, whatever the way it goes
    /// and even if its partner is away too, so every pairing can be handed over.
    pub fn leave(&mut self) {
        self.leaving = true;
    }

    /// Whether [`Self::leave`] was called.
    pub fn is_leaving(&self) -> bool {
        self.leaving
    }

    /// Takes every pairing out of the table (the node is leaving: they go on on another),
    /// with its mac's resumable `clientId`. Their sides' connections stay, unpaired.
    pub fn take_pairings(&mut self) -> Vec<(PairingId, Option<ClientKey>)> {
        let taken: Vec<_> = self
            .pairings
            .drain()
            .map(|(session, pairing)| (session, pairing.client_id))
            .collect();
        for (session, _) in &taken {
            for role in [Role::Mac, Role::Browser] {
                self.deadlines.cancel(&Timer::Grace(*session, role));
            }
        }
        self.by_client_id.clear();
        self.browsers.clear();
        for mac in self.macs.values_mut() {
            mac.session = None;
        }
        taken
    }

    /// Takes over a pairing from a node that left: both its sides are away, each with a
    /// full resume grace from `now`.
    pub fn adopt(&mut self, session: PairingId, client_id: Option<ClientKey>, now: Instant) {
        if let Some(client_id) = &client_id {
            self.by_client_id.insert(client_id.clone(), session);
        }
        let pairing = Pairing {
            mac: End::Away,
            browser: End::Away,
            client_id,
        };
        self.pairings.insert(session, pairing);
        for role in [Role::Mac, Role::Browser] {
            let until = now + self.rules.resume_grace;
            self.deadlines.set(Timer::Grace(session, role), until);
        }
    }

    /// Whether `session_id` names a live pairing here.
    pub fn knows_session(&self, session_id: &str) -> bool {
        PairingId::parse(session_id).is_some_and(|session| self.pairings.contains_key(&session))
    }

    /// Whether a live pairing here was made under `client_id`.
    pub fn knows_client(&self, client_id: &ClientKey) -> bool {
        self.by_client_id.contains_key(client_id)
    }

    /// The resumable `clientId` of a live pairing's mac, if it has one.
    pub fn client_of(&self, session: &PairingId) -> Option<&ClientKey> {
        self.pairings.get(session)?.client_id.as_ref()
    }

    /// Live pairings (for metrics and tests).
    pub fn pairing_count(&self) -> usize {
        self.pairings.len()
    }

    /// Codes remembered, pending or retired (for tests of the bound).
    pub fn code_count(&self) -> usize {
        self.codes.len()
    }

    /// Deadlines held (for tests of the timer structure).
    pub fn deadline_count(&self) -> usize {
        self.deadlines.len()
    }

    /// When [`Self::fire`] next has work to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        let forget = self.retired.front().map(|(at, _)| *at);
        match (self.deadlines.next(), forget) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Carries out every deadline due at `now`: expired codes, ended grace periods,
    /// retired codes to forget. Visits only what is due.
    pub fn fire(&mut self, now: Instant) -> Vec<Effect> {
        let mut effects = Vec::new();
        while let Some(timer) = self.deadlines.pop_due(now) {
            match timer {
                Timer::Code(code) => self.code_expired(&code, now, &mut effects),
                Timer::Grace(session, role) => self.grace_expired(session, role, &mut effects),
            }
        }
        self.sweep(now);
        effects
    }

    /// A mac connected: it gets a code at once.
    pub fn mac_connected(&mut self, conn: ConnId, now: Instant) -> Vec<Effect> {
        self.macs.insert(conn, MacEntry::default());
        let mut effects = Vec::new();
        self.issue_code(conn, now, &mut effects);
        effects
    }

    /// A mac whose first message will be `register` (a virtual connection for a mac on
    /// another node, see `super::remote`): it gets its code, or its pairing, then.
    pub fn mac_waiting(&mut self, conn: ConnId) {
        self.macs.insert(conn, MacEntry::default());
    }

    /// Whether a mac is in a pairing (or resuming one).
    pub fn mac_paired(&self, conn: ConnId) -> bool {
        self.macs
            .get(&conn)
            .is_some_and(|mac| mac.session.is_some())
    }

    /// A mac's code turned out to be held by another node: it gets a fresh one (the old one
    /// is remembered as withdrawn, so this node never issues it again while it lives).
    pub fn reissue(&mut self, conn: ConnId, now: Instant) -> Vec<Effect> {
        let mut effects = Vec::new();
        if self.macs.get(&conn).is_some_and(|mac| mac.code.is_some()) {
            self.withdraw_code(conn, now);
            self.issue_code(conn, now, &mut effects);
        }
        effects
    }

    /// A mac sent `register`: resume its lost pairing, or swap its code for a fresh one.
    pub fn mac_register(
        &mut self,
        conn: ConnId,
        client_id: ClientKey,
        now: Instant,
    ) -> Vec<Effect> {
        let mut effects = Vec::new();
        let Some(mac) = self.macs.get_mut(&conn) else {
            return effects;
        };
        if mac.session.is_some() {
            effects.push(Effect::Error {
                to: conn,
                code: ErrorCode::InvalidMessage,
                message: "register is only allowed while unpaired",
            });
            return effects;
        }
        // Only a secret clientId may take a pairing over; any other is kept for logs.
        let resumable = client_id.resumable();
        mac.client_id = resumable.then(|| client_id.clone());
        self.withdraw_code(conn, now);

        let lost = match resumable {
            true => self.by_client_id.get(&client_id).copied(),
            false => None,
        };
        let found = lost.and_then(|session| Some(session).zip(self.pairings.get_mut(&session)));
        if let Some((session, pairing)) = found {
            // Newest connection wins: whether the old mac socket is already known lost or
            // only looks alive (a half-open TCP after sleep), this one takes its place.
            let old = std::mem::replace(&mut pairing.mac, End::Here(conn));
            let browser = here(pairing.browser);
            match old {
                End::Here(old) => {
                    self.macs.remove(&old);
                    effects.push(Effect::Replaced { conn: old });
                }
                End::Away => self.deadlines.cancel(&Timer::Grace(session, Role::Mac)),
            }
            if let Some(mac) = self.macs.get_mut(&conn) {
                mac.session = Some(session);
            }
            effects.push(Effect::Pair {
                session,
                mac: Some(conn),
                browser,
                resumed: Some(Role::Mac),
            });
            return effects;
        }
        self.issue_code(conn, now, &mut effects);
        effects
    }

    /// Whether `input` is a well-formed code this node has no record of: in a cluster, it
    /// may be another node's.
    pub fn is_foreign(&self, input: &str) -> bool {
        self.rules
            .format
            .normalise(input)
            .is_some_and(|code| !self.codes.contains_key(&code))
    }

    /// A browser sent `join` with what a person typed.
    pub fn browser_join(&mut self, conn: ConnId, input: &str, now: Instant) -> Vec<Effect> {
        let error = |code, message| {
            vec![Effect::Error {
                to: conn,
                code,
                message,
            }]
        };
        if self.browsers.contains_key(&conn) {
            return error(ErrorCode::AlreadyJoined, "this browser is already paired");
        }
        let Some(code) = self.rules.format.normalise(input) else {
            return error(ErrorCode::InvalidCode, "that is not a pairing code");
        };
        let Some(state) = self.codes.get(&code) else {
            return error(ErrorCode::InvalidCode, "no such pairing code");
        };
        let mac = match *state {
            CodeState::Joined => {
                return error(ErrorCode::AlreadyJoined, "that code was already used")
            }
            CodeState::Expired => return error(ErrorCode::ExpiredCode, "that code has expired"),
            CodeState::Pending { expires_at, .. } if now >= expires_at => {
                // Its deadline has not fired yet; the code is expired all the same.
                return error(ErrorCode::ExpiredCode, "that code has expired");
            }
            CodeState::Pending { mac, .. } => mac,
        };
        self.retire(&code, CodeState::Joined, now);

        let session = PairingId::random();
        let client_id = self.macs.get_mut(&mac).and_then(|entry| {
            entry.code = None;
            entry.session = Some(session);
            entry.client_id.clone()
        });
        if let Some(id) = &client_id {
            self.by_client_id.insert(id.clone(), session);
        }
        self.pairings.insert(
            session,
            Pairing {
                mac: End::Here(mac),
                browser: End::Here(conn),
                client_id,
            },
        );
        self.browsers.insert(conn, session);
        vec![Effect::Pair {
            session,
            mac: Some(mac),
            browser: Some(conn),
            resumed: None,
        }]
    }

    /// A browser sent `resume` with the `sessionId` of a pairing it lost.
    pub fn browser_resume(&mut self, conn: ConnId, session_id: &str) -> Vec<Effect> {
        let error = |code, message| {
            vec![Effect::Error {
                to: conn,
                code,
                message,
            }]
        };
        if self.browsers.contains_key(&conn) {
            return error(ErrorCode::AlreadyJoined, "this browser is already paired");
        }
        let found = PairingId::parse(session_id)
            .and_then(|session| Some(session).zip(self.pairings.get_mut(&session)));
        let Some((session, pairing)) = found else {
            return error(ErrorCode::InvalidCode, "no such session, or it has ended");
        };
        let mut effects = Vec::new();
        // The sessionId is a 122-bit secret: whoever holds it is that browser, so a newer
        // socket replaces one that only looks alive.
        match std::mem::replace(&mut pairing.browser, End::Here(conn)) {
            End::Here(old) => {
                self.browsers.remove(&old);
                effects.push(Effect::Replaced { conn: old });
            }
            End::Away => self.deadlines.cancel(&Timer::Grace(session, Role::Browser)),
        }
        let mac = here(pairing.mac);
        self.browsers.insert(conn, session);
        effects.push(Effect::Pair {
            session,
            mac,
            browser: Some(conn),
            resumed: Some(Role::Browser),
        });
        effects
    }

    /// A connection closed. `clean` is true for a close frame (or a close the relay chose);
    /// false for a connection lost, which its partner waits out for the grace period.
    pub fn disconnected(
        &mut self,
        conn: ConnId,
        role: Role,
        clean: bool,
        now: Instant,
    ) -> Vec<Effect> {
        let departure = if clean {
            Departure::Clean
        } else {
            Departure::Lost
        };
        self.departed(conn, role, departure, now)
    }

    /// A connection closed, as [`Self::disconnected`] — or (`Moved`) its side's own node
    /// left and it comes back on another: away for the grace period, whatever became of its
    /// partner (a pairing whose sides are both lost otherwise ends).
    pub fn departed(
        &mut self,
        conn: ConnId,
        role: Role,
        departure: Departure,
        now: Instant,
    ) -> Vec<Effect> {
        let mut effects = Vec::new();
        let session = match role {
            Role::Mac => {
                self.withdraw_code(conn, now);
                // A replaced connection was already removed: its late close changes nothing.
                self.macs.remove(&conn).and_then(|mac| mac.session)
            }
            Role::Browser => self.browsers.remove(&conn),
        };
        let Some(session) = session else {
            return effects;
        };
        let Some(pairing) = self.pairings.get_mut(&session) else {
            return effects;
        };
        if *pairing.end(role) != End::Here(conn) {
            return effects;
        }
        let partner_here = here(*pairing.end(role.other())).is_some();
        // A leaving node closes every side itself (1001): each may resume elsewhere. So
        // does a side whose own node (its gateway) left, whatever became of its partner.
        let away = match departure {
            Departure::Clean => false,
            Departure::Lost => partner_here,
            Departure::Moved => true,
        };
        if self.leaving || away {
            *pairing.end(role) = End::Away;
            effects.push(Effect::Away { session, role });
            self.deadlines
                .set(Timer::Grace(session, role), now + self.rules.resume_grace);
        } else {
            self.end_pairing(session, role, &mut effects);
        }
        effects
    }

    /// A connection asked to end its pairing now (its partner was too slow, or held
    /// messages overflowed): both sides are unpaired and the partner is closed by the caller.
    pub fn unpair(&mut self, conn: ConnId, role: Role) -> Vec<Effect> {
        let session = match role {
            Role::Mac => self.macs.get(&conn).and_then(|mac| mac.session),
            Role::Browser => self.browsers.get(&conn).copied(),
        };
        let mut effects = Vec::new();
        if let Some(session) = session {
            self.end_pairing(session, role.other(), &mut effects);
        }
        effects
    }

    /// A code's deadline fell due: the mac is told and may `register` for another.
    fn code_expired(&mut self, code: &str, now: Instant, effects: &mut Vec<Effect>) {
        let Some(&CodeState::Pending { mac, .. }) = self.codes.get(code) else {
            return;
        };
        self.retire(code, CodeState::Expired, now);
        if let Some(entry) = self.macs.get_mut(&mac) {
            entry.code = None;
        }
        effects.push(Effect::Error {
            to: mac,
            code: ErrorCode::ExpiredCode,
            message: "your code expired; send register for a new one",
        });
    }

    /// An away side's grace period ended without it coming back: the pairing ends.
    fn grace_expired(&mut self, session: PairingId, role: Role, effects: &mut Vec<Effect>) {
        let away = self
            .pairings
            .get_mut(&session)
            .is_some_and(|pairing| *pairing.end(role) == End::Away);
        if away {
            self.end_pairing(session, role, effects);
        }
    }

    /// Forgets retired codes whose memory ran out, and any past the bound.
    fn sweep(&mut self, now: Instant) {
        while let Some((forget_at, _)) = self.retired.front() {
            if *forget_at > now && self.retired.len() <= self.rules.max_pending_codes {
                break;
            }
            if let Some((_, code)) = self.retired.pop_front() {
                self.codes.remove(&code);
            }
        }
    }

    /// Moves a pending code to a retired state, remembered for `retired_code_memory`.
    fn retire(&mut self, code: &str, state: CodeState, now: Instant) {
        if let Some(entry) = self.codes.get_mut(code) {
            if matches!(entry, CodeState::Pending { .. }) {
                self.pending -= 1;
                self.deadlines.cancel(&Timer::Code(code.to_owned()));
            }
            *entry = state;
            self.retired
                .push_back((now + self.rules.retired_code_memory, code.to_owned()));
            // Keep the bound even between sweeps.
            if self.retired.len() > self.rules.max_pending_codes {
                self.sweep(now);
            }
        }
    }

    /// Ends `session` because `leaver` left: the other side, if here, is told.
    fn end_pairing(&mut self, session: PairingId, leaver: Role, effects: &mut Vec<Effect>) {
        let Some(pairing) = self.pairings.remove(&session) else {
            return;
        };
        effects.push(Effect::Ended { session });
        if let Some(id) = &pairing.client_id {
            if self.by_client_id.get(id) == Some(&session) {
                self.by_client_id.remove(id);
            }
        }
        for (role, end) in [(Role::Mac, pairing.mac), (Role::Browser, pairing.browser)] {
            let End::Here(conn) = end else {
                self.deadlines.cancel(&Timer::Grace(session, role));
                continue;
            };
            match role {
                Role::Mac => {
                    if let Some(mac) = self.macs.get_mut(&conn) {
                        mac.session = None;
                    }
                }
                Role::Browser => {
                    self.browsers.remove(&conn);
                }
            }
            if role != leaver {
                effects.push(Effect::PartnerGone {
                    to: conn,
                    code: left_code(leaver),
                });
            }
        }
    }

    fn issue_code(&mut self, conn: ConnId, now: Instant, effects: &mut Vec<Effect>) {
        if self.pending >= self.rules.max_pending_codes {
            effects.push(Effect::Error {
                to: conn,
                code: ErrorCode::RateLimited,
                message: "the relay has too many open codes; send register again shortly",
            });
            return;
        }
        // Codes are unique among live and remembered ones. With 28^6 codes a clash is
        // rare; the bound on attempts keeps a nearly full space from spinning forever.
        let Some(code) = (0..64)
            .map(|_| self.rules.format.generate())
            .find(|code| !self.codes.contains_key(code))
        else {
            effects.push(Effect::Error {
                to: conn,
                code: ErrorCode::RateLimited,
                message: "no free pairing code; send register again shortly",
            });
            return;
        };
        let expires_at = now + self.rules.code_ttl;
        self.codes.insert(
            code.clone(),
            CodeState::Pending {
                mac: conn,
                expires_at,
            },
        );
        self.pending += 1;
        self.deadlines.set(Timer::Code(code.clone()), expires_at);
        if let Some(mac) = self.macs.get_mut(&conn) {
            mac.code = Some(code.clone());
        }
        effects.push(Effect::Registered {
            to: conn,
            code,
            ttl: self.rules.code_ttl,
        });
    }

    /// Retires the mac's pending code, if any: a late join gets `EXPIRED_CODE`.
    fn withdraw_code(&mut self, conn: ConnId, now: Instant) {
        let Some(code) = self.macs.get_mut(&conn).and_then(|mac| mac.code.take()) else {
            return;
        };
        if matches!(self.codes.get(&code), Some(CodeState::Pending { .. })) {
            self.retire(&code, CodeState::Expired, now);
        }
    }
}

/// The error the *other* side gets when `leaver` leaves.
fn left_code(leaver: Role) -> ErrorCode {
    match leaver {
        Role::Mac => ErrorCode::MacDisconnected,
        Role::Browser => ErrorCode::BrowserDisconnected,
    }
}

fn here(end: End) -> Option<ConnId> {
    match end {
        End::Here(conn) => Some(conn),
        End::Away => None,
    }
}

#[cfg(test)]
#[path = "table_tests.rs"]
mod tests;
