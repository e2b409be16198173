//! The reference model of quick pairing: the rules of PROTOCOL.md §1 over plain maps, with
//! no deadline structure — every deadline is a field, found by scanning. What the table
//! draws at random (codes, session ids) the model reads from the table's own effects, and
//! checks it is well-formed and fresh.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use hermit_relay::ids::{ClientKey, ConnId, PairingId, Role};
use hermit_relay::relay::pairing::code::CodeFormat;
use hermit_relay::relay::pairing::table::{Effect, PairingRules};
use hermit_relay::relay::protocol::ErrorCode;

#[derive(Debug, Clone, PartialEq)]
pub enum Code {
    Pending { mac: ConnId, expires: Instant },
    Joined,
    Expired,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum End {
    Here(ConnId),
    /// Lost; may come back until then.
    Away(Instant),
}

#[derive(Debug, Default)]
pub struct Mac {
    pub client: Option<ClientKey>,
    pub code: Option<String>,
    pub session: Option<PairingId>,
}

#[derive(Debug)]
pub struct Pairing {
    pub mac: End,
    pub browser: End,
    pub client: Option<ClientKey>,
}

/// The model. `out` collects the expected effects of one step; `actual` is the table's
/// answer to the same step, consulted only for the random values it drew.
pub struct Model {
    pub rules: PairingRules,
    /// How many distinct codes the format has.
    pub space: usize,
    pub codes: BTreeMap<String, Code>,
    /// Retired codes in retirement order, with when they are forgotten.
    pub retired: VecDeque<(Instant, String)>,
    pub macs: BTreeMap<ConnId, Mac>,
    pub browsers: BTreeMap<ConnId, PairingId>,
    pub pairings: BTreeMap<PairingId, Pairing>,
    pub by_client: BTreeMap<ClientKey, PairingId>,
    /// Every code and session ever drawn, for picking old ones and checking freshness.
    pub seen_codes: Vec<String>,
    pub seen_sessions: Vec<PairingId>,
    seen: HashSet<PairingId>,
}

/// A deadline due: when, 0 for a code and 1 for a grace period, the code, the pairing.
type Due = (Instant, u8, String, Option<(PairingId, Role)>);

fn error(to: ConnId, code: ErrorCode, message: &'static str) -> Effect {
    Effect::Error { to, code, message }
}

impl Model {
    pub fn new(rules: PairingRules, space: usize) -> Self {
        Self {
            rules,
            space,
            codes: BTreeMap::new(),
            retired: VecDeque::new(),
            macs: BTreeMap::new(),
            browsers: BTreeMap::new(),
            pairings: BTreeMap::new(),
            by_client: BTreeMap::new(),
            seen_codes: Vec::new(),
            seen_sessions: Vec::new(),
            seen: HashSet::new(),
        }
    }

    pub fn pending(&self) -> usize {
        self.codes
            .values()
            .filter(|c| matches!(c, Code::Pending { .. }))
            .count()
    }

    pub fn away(&self) -> usize {
        let away = |end: &End| matches!(end, End::Away(_));
        self.pairings
            .values()
            .filter(|p| away(&p.mac) || away(&p.browser))
            .count()
    }

    pub fn mac_connected(&mut self, conn: ConnId, now: Instant, actual: &[Effect]) -> Vec<Effect> {
        self.macs.insert(conn, Mac::default());
        let mut out = Vec::new();
        self.issue(conn, now, actual, &mut out);
        out
    }

    pub fn mac_register(
        &mut self,
        conn: ConnId,
        key: ClientKey,
        now: Instant,
        actual: &[Effect],
    ) -> Vec<Effect> {
        let mut out = Vec::new();
        let Some(mac) = self.macs.get_mut(&conn) else {
            return out;
        };
        if mac.session.is_some() {
            out.push(error(
                conn,
                ErrorCode::InvalidMessage,
                "register is only allowed while unpaired",
            ));
            return out;
        }
        let resumable = key.resumable();
        mac.client = resumable.then(|| key.clone());
        self.withdraw(conn, now);
        let lost = if resumable {
            self.by_client.get(&key).copied()
        } else {
            None
        };
        if let Some(session) = lost.filter(|s| self.pairings.contains_key(s)) {
            let pairing = self.pairings.get_mut(&session).unwrap();
            let old = std::mem::replace(&mut pairing.mac, End::Here(conn));
            let browser = here(pairing.browser);
            if let End::Here(old) = old {
                self.macs.remove(&old);
                out.push(Effect::Replaced { conn: old });
            }
            self.macs.get_mut(&conn).unwrap().session = Some(session);
            out.push(Effect::Pair {
                session,
                mac: Some(conn),
                browser,
                resumed: Some(Role::Mac),
            });
            return out;
        }
        self.issue(conn, now, actual, &mut out);
        out
    }

    pub fn browser_join(
        &mut self,
        conn: ConnId,
        input: &str,
        now: Instant,
        actual: &[Effect],
    ) -> Vec<Effect> {
        if self.browsers.contains_key(&conn) {
            return vec![error(
                conn,
                ErrorCode::AlreadyJoined,
                "this browser is already paired",
            )];
        }
        let Some(code) = self.rules.format.normalise(input) else {
            return vec![error(
                conn,
                ErrorCode::InvalidCode,
                "that is not a pairing code",
            )];
        };
        let mac = match self.codes.get(&code) {
            None => return vec![error(conn, ErrorCode::InvalidCode, "no such pairing code")],
            Some(Code::Joined) => {
                return vec![error(
                    conn,
                    ErrorCode::AlreadyJoined,
                    "that code was already used",
                )]
            }
            Some(Code::Pending { expires, .. }) if now >= *expires => {
                return vec![error(conn, ErrorCode::ExpiredCode, "that code has expired")]
            }
            Some(Code::Expired) => {
                return vec![error(conn, ErrorCode::ExpiredCode, "that code has expired")]
            }
            Some(Code::Pending { mac, .. }) => *mac,
        };
        self.retire(&code, Code::Joined, now);
        let session = match actual.first() {
            Some(Effect::Pair { session, .. }) => self.fresh_session(*session),
            _ => PairingId::random(),
        };
        let mac_entry = self
            .macs
            .get_mut(&mac)
            .expect("a pending code's mac is connected");
        mac_entry.code = None;
        mac_entry.session = Some(session);
        let client = mac_entry.client.clone();
        if let Some(key) = &client {
            self.by_client.insert(key.clone(), session);
        }
        self.pairings.insert(
            session,
            Pairing {
                mac: End::Here(mac),
                browser: End::Here(conn),
                client,
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

    pub fn browser_resume(&mut self, conn: ConnId, text: &str) -> Vec<Effect> {
        if self.browsers.contains_key(&conn) {
            return vec![error(
                conn,
                ErrorCode::AlreadyJoined,
                "this browser is already paired",
            )];
        }
        let found = PairingId::parse(text).filter(|s| self.pairings.contains_key(s));
        let Some(session) = found else {
            return vec![error(
                conn,
                ErrorCode::InvalidCode,
                "no such session, or it has ended",
            )];
        };
        let mut out = Vec::new();
        let pairing = self.pairings.get_mut(&session).unwrap();
        if let End::Here(old) = std::mem::replace(&mut pairing.browser, End::Here(conn)) {
            self.browsers.remove(&old);
            out.push(Effect::Replaced { conn: old });
        }
        let mac = here(pairing.mac);
        self.browsers.insert(conn, session);
        out.push(Effect::Pair {
            session,
            mac,
            browser: Some(conn),
            resumed: Some(Role::Browser),
        });
        out
    }

    pub fn disconnected(
        &mut self,
        conn: ConnId,
        role: Role,
        clean: bool,
        now: Instant,
    ) -> Vec<Effect> {
        let mut out = Vec::new();
        let session = match role {
            Role::Mac => {
                self.withdraw(conn, now);
                self.macs.remove(&conn).and_then(|mac| mac.session)
            }
            Role::Browser => self.browsers.remove(&conn),
        };
        let Some(pairing) = session.and_then(|s| self.pairings.get_mut(&s)) else {
            return out;
        };
        let session = session.unwrap();
        if *end(pairing, role) != End::Here(conn) {
            return out;
        }
        if here(*end(pairing, role.other())).is_some() && !clean {
            *end(pairing, role) = End::Away(now + self.rules.resume_grace);
            out.push(Effect::Away { session, role });
        } else {
            self.end_pairing(session, role, &mut out);
        }
        out
    }

    pub fn unpair(&mut self, conn: ConnId, role: Role) -> Vec<Effect> {
        let session = match role {
            Role::Mac => self.macs.get(&conn).and_then(|mac| mac.session),
            Role::Browser => self.browsers.get(&conn).copied(),
        };
        let mut out = Vec::new();
        if let Some(session) = session {
            self.end_pairing(session, role.other(), &mut out);
        }
        out
    }

    /// Time passes to `now`: every deadline due fires, earliest first (ties: codes before
    /// grace periods, then by key — the table's order).
    pub fn fire(&mut self, now: Instant) -> Vec<Effect> {
        // (when, codes before grace periods, the code, the grace period)
        let mut due: Vec<Due> = Vec::new();
        for (code, state) in &self.codes {
            if let Code::Pending { expires, .. } = state {
                if *expires <= now {
                    due.push((*expires, 0, code.clone(), None));
                }
            }
        }
        for (session, pairing) in &self.pairings {
            for role in [Role::Mac, Role::Browser] {
                let end = if role == Role::Mac {
                    pairing.mac
                } else {
                    pairing.browser
                };
                if let End::Away(at) = end {
                    if at <= now {
                        due.push((at, 1, String::new(), Some((*session, role))));
                    }
                }
            }
        }
        due.sort();
        let mut out = Vec::new();
        for (_, _, code, grace) in due {
            match grace {
                None => {
                    let Some(Code::Pending { mac, .. }) = self.codes.get(&code).cloned() else {
                        continue;
                    };
                    self.retire(&code, Code::Expired, now);
                    if let Some(entry) = self.macs.get_mut(&mac) {
                        entry.code = None;
                    }
                    out.push(error(
                        mac,
                        ErrorCode::ExpiredCode,
                        "your code expired; send register for a new one",
                    ));
                }
                Some((session, role)) => {
                    let away = self
                        .pairings
                        .get_mut(&session)
                        .is_some_and(|p| matches!(end(p, role), End::Away(_)));
                    if away {
                        self.end_pairing(session, role, &mut out);
                    }
                }
            }
        }
        self.sweep(now);
        out
    }

    /// When the table must next be woken.
    pub fn next_deadline(&self) -> Option<Instant> {
        let codes = self.codes.values().filter_map(|c| match c {
            Code::Pending { expires, .. } => Some(*expires),
            _ => None,
        });
        let away = self
            .pairings
            .values()
            .flat_map(|p| [p.mac, p.browser])
            .filter_map(|e| match e {
                End::Away(at) => Some(at),
                End::Here(_) => None,
            });
        codes
            .chain(away)
            .chain(self.retired.front().map(|(at, _)| *at))
            .min()
    }

    fn issue(&mut self, conn: ConnId, now: Instant, actual: &[Effect], out: &mut Vec<Effect>) {
        if self.pending() >= self.rules.max_pending_codes {
            out.push(error(
                conn,
                ErrorCode::RateLimited,
                "the relay has too many open codes; send register again shortly",
            ));
            return;
        }
        let no_free = error(
            conn,
            ErrorCode::RateLimited,
            "no free pairing code; send register again shortly",
        );
        // The table draws a bounded number of times: with three quarters of the space
        // taken it may (once in ~10^8) give up before the space is full.
        let nearly_full = self.codes.len() * 4 >= self.space * 3;
        if self.codes.len() >= self.space
            || (nearly_full && actual.get(out.len()) == Some(&no_free))
        {
            out.push(no_free);
            return;
        }
        // The table draws the code: take it from its answer if it is one, and check it.
        let code = match actual.get(out.len()) {
            Some(Effect::Registered { code, .. }) => code.clone(),
            _ => "(no code drawn)".to_owned(),
        };
        assert_eq!(
            self.rules.format.normalise(&code).as_deref(),
            Some(code.as_str()),
            "a malformed code"
        );
        assert!(
            !self.codes.contains_key(&code),
            "{code} was drawn while still remembered"
        );
        let expires = now + self.rules.code_ttl;
        self.codes
            .insert(code.clone(), Code::Pending { mac: conn, expires });
        self.seen_codes.push(code.clone());
        if let Some(mac) = self.macs.get_mut(&conn) {
            mac.code = Some(code.clone());
        }
        out.push(Effect::Registered {
            to: conn,
            code,
            ttl: self.rules.code_ttl,
        });
    }

    fn fresh_session(&mut self, session: PairingId) -> PairingId {
        assert!(self.seen.insert(session), "session {session} drawn twice");
        self.seen_sessions.push(session);
        session
    }

    fn withdraw(&mut self, conn: ConnId, now: Instant) {
        let Some(code) = self.macs.get_mut(&conn).and_then(|mac| mac.code.take()) else {
            return;
        };
        if matches!(self.codes.get(&code), Some(Code::Pending { .. })) {
            self.retire(&code, Code::Expired, now);
        }
    }

    fn retire(&mut self, code: &str, state: Code, now: Instant) {
        self.codes.insert(code.to_owned(), state);
        self.retired
            .push_back((now + self.rules.retired_code_memory, code.to_owned()));
        if self.retired.len() > self.rules.max_pending_codes {
            self.sweep(now);
        }
    }

    fn sweep(&mut self, now: Instant) {
        while let Some((at, _)) = self.retired.front() {
            if *at > now && self.retired.len() <= self.rules.max_pending_codes {
                break;
            }
            let (_, code) = self.retired.pop_front().unwrap();
            self.codes.remove(&code);
        }
    }

    fn end_pairing(&mut self, session: PairingId, leaver: Role, out: &mut Vec<Effect>) {
        let Some(pairing) = self.pairings.remove(&session) else {
            return;
        };
        out.push(Effect::Ended { session });
        if let Some(key) = &pairing.client {
            if self.by_client.get(key) == Some(&session) {
                self.by_client.remove(key);
            }
        }
        for (role, end) in [(Role::Mac, pairing.mac), (Role::Browser, pairing.browser)] {
            let End::Here(conn) = end else { continue };
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
                let code = match leaver {
                    Role::Mac => ErrorCode::MacDisconnected,
                    Role::Browser => ErrorCode::BrowserDisconnected,
                };
                out.push(Effect::PartnerGone { to: conn, code });
            }
        }
    }
}

fn end(pairing: &mut Pairing, role: Role) -> &mut End {
    match role {
        Role::Mac => &mut pairing.mac,
        Role::Browser => &mut pairing.browser,
    }
}

fn here(end: End) -> Option<ConnId> {
    match end {
        End::Here(conn) => Some(conn),
        End::Away(_) => None,
    }
}

/// The two code formats the properties run with: a tiny space (four codes, so clashes,
/// exhaustion and re-issue happen) and the real one.
pub fn formats() -> [(CodeFormat, usize); 2] {
    [
        (CodeFormat::new("AB", 2), 4),
        (
            CodeFormat::new("346789ABCDEFGHJKLMNPQRTUVWXY", 6),
            28usize.pow(6),
        ),
    ]
}

pub fn rules(format: CodeFormat, max_pending_codes: usize) -> PairingRules {
    PairingRules {
        format,
        code_ttl: Duration::from_secs(10),
        resume_grace: Duration::from_secs(5),
        retired_code_memory: Duration::from_secs(20),
        max_pending_codes,
    }
}
