//! Random sequences of account-mode events against `MachineTable` and a reference model:
//! agents (new, replacing, reporting, leaving), clients (attaching, detaching, asking),
//! machine and user deletion. Attachments live only in the model's clients; watchers are
//! derived from them. Effects are compared as multisets (the table walks hash sets), and
//! every effect is checked for ownership on its own.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use hermit_relay::ids::{ConnId, MachineId, Outcome, SessionId, UserId};
use hermit_relay::relay::account::table::{Effect, Live, MachineTable};
use hermit_relay::relay::protocol::account::{AgentEvent, ClientEvent};
use hermit_relay::relay::protocol::{ErrorCode, SessionInfo};
use proptest::prelude::*;
use proptest::sample::Index;

/// Machines and their owners; `m9` is nobody's and never comes online.
const MACHINES: [(&str, &str); 4] = [("m0", "ada"), ("m1", "ada"), ("m2", "bob"), ("m9", "")];
const USERS: [&str; 2] = ["ada", "bob"];
/// Session ids, shared across machines on purpose (ids are unique per machine only).
const SESSIONS: [&str; 3] = ["s0", "s1", "s2"];

fn owner(machine: &MachineId) -> UserId {
    let (_, user) = MACHINES
        .iter()
        .find(|(m, _)| *m == machine.as_str())
        .unwrap();
    UserId::from(*user)
}

fn info(id: usize, count: u32) -> SessionInfo {
    SessionInfo {
        id: SESSIONS[id].into(),
        name: format!("n{id}"),
        command: "sh".into(),
        created_at: "t".into(),
        attached_clients: count,
    }
}

#[derive(Debug)]
struct Agent {
    conn: ConnId,
    sessions: BTreeMap<SessionId, SessionInfo>,
    confirmed: bool,
    /// Attached while unconfirmed: linked already, not linked again on confirm.
    early: BTreeSet<(SessionId, ConnId)>,
}

#[derive(Default)]
struct Model {
    agents: BTreeMap<MachineId, Agent>,
    agent_conns: BTreeMap<ConnId, MachineId>,
    /// Online clients: user, and session → machine of each attachment.
    clients: BTreeMap<ConnId, (UserId, BTreeMap<SessionId, MachineId>)>,
    deleted: BTreeMap<MachineId, Instant>,
}

impl Model {
    fn watchers(&self, m: &MachineId, s: &SessionId) -> Vec<ConnId> {
        self.clients
            .iter()
            .filter(|(_, (_, att))| att.get(s) == Some(m))
            .map(|(c, _)| *c)
            .collect()
    }

    fn tell(&self, user: &UserId, out: &mut Vec<Effect>, event: ClientEvent<'static>) {
        for (conn, _) in self.clients.iter().filter(|(_, (u, _))| u == user) {
            out.push(Effect::ToClient {
                conn: *conn,
                event: event.clone(),
            });
        }
    }

    fn counted(&self, m: &MachineId, mut s: SessionInfo) -> SessionInfo {
        s.attached_clients = self.watchers(m, &s.id).len() as u32;
        s
    }

    fn end_session(&mut self, m: &MachineId, s: &SessionId, out: &mut Vec<Effect>) {
        let Some(agent) = self.agents.get_mut(m) else {
            return;
        };
        if agent.sessions.remove(s).is_none() {
            return;
        }
        let agent_conn = agent.conn;
        for client in self.watchers(m, s) {
            self.clients.get_mut(&client).unwrap().1.remove(s);
            out.push(Effect::Unlink {
                agent: agent_conn,
                client,
                session: s.clone(),
                detach_agent: false,
                reply: false,
            });
        }
        out.push(Effect::EndSession {
            machine: m.clone(),
            session: s.clone(),
        });
        self.tell(
            &owner(m),
            out,
            ClientEvent::SessionEnded {
                machine_id: Cow::Owned(m.clone()),
                session_id: Cow::Owned(s.clone()),
            },
        );
    }

    fn agent_offline(&mut self, conn: ConnId, out: &mut Vec<Effect>) {
        let Some(m) = self.agent_conns.remove(&conn) else {
            return;
        };
        if self.agents.get(&m).is_some_and(|a| a.conn == conn) {
            let sessions: Vec<SessionId> = self.agents[&m].sessions.keys().cloned().collect();
            for s in sessions {
                self.end_session(&m, &s, out);
            }
            self.agents.remove(&m);
            self.tell(
                &owner(&m),
                out,
                ClientEvent::MachineStatus {
                    machine_id: Cow::Owned(m.clone()),
                    online: false,
                },
            );
        }
    }

    /// The agent of `m` if the client may reach it.
    fn owned(&self, conn: ConnId, m: &MachineId) -> Option<&Agent> {
        let (user, _) = self.clients.get(&conn)?;
        self.agents.get(m).filter(|_| owner(m) == *user)
    }

    fn unwatch(
        &self,
        m: &MachineId,
        s: &SessionId,
        client: ConnId,
        reply: bool,
        out: &mut Vec<Effect>,
    ) {
        match self.agents.get(m) {
            Some(a) => out.push(Effect::Unlink {
                agent: a.conn,
                client,
                session: s.clone(),
                detach_agent: true,
                reply,
            }),
            None if reply => out.push(Effect::ToClient {
                conn: client,
                event: ClientEvent::Detached {
                    session_id: Cow::Owned(s.clone()),
                },
            }),
            None => {}
        }
    }
}

fn client_error(conn: ConnId, code: ErrorCode, message: &'static str) -> Vec<Effect> {
    vec![Effect::ClientError {
        conn,
        code,
        message,
    }]
}

#[derive(Debug, Clone)]
enum Op {
    AgentOnline(usize),
    AgentOffline(Index),
    Sessions(Index, Vec<(usize, u32)>),
    Started(Index, usize, u32),
    Ended(Index, usize),
    ClientOnline(usize),
    ClientOffline(Index),
    List(Index, usize),
    Attach(Index, usize, usize),
    Detach(Index, usize),
    Create(Index, usize),
    Deleted(usize),
    UserRemoved(usize),
    Advance(u64),
}

fn op() -> impl Strategy<Value = Op> {
    let m = 0..MACHINES.len();
    let s = 0..SESSIONS.len();
    let i = any::<Index>;
    prop_oneof![
        3 => (0..3usize).prop_map(Op::AgentOnline),
        1 => i().prop_map(Op::AgentOffline),
        2 => (i(), prop::collection::vec((s.clone(), 0u32..3), 0..4)).prop_map(|(a, l)| Op::Sessions(a, l)),
        3 => (i(), s.clone(), 0u32..3).prop_map(|(a, s, n)| Op::Started(a, s, n)),
        1 => (i(), s.clone()).prop_map(|(a, s)| Op::Ended(a, s)),
        2 => (0..USERS.len()).prop_map(Op::ClientOnline),
        1 => i().prop_map(Op::ClientOffline),
        1 => (i(), m.clone()).prop_map(|(c, m)| Op::List(c, m)),
        5 => (i(), m.clone(), s.clone()).prop_map(|(c, m, s)| Op::Attach(c, m, s)),
        2 => (i(), s).prop_map(|(c, s)| Op::Detach(c, s)),
        1 => (i(), m).prop_map(|(c, m)| Op::Create(c, m)),
        1 => (0..3usize).prop_map(Op::Deleted),
        1 => (0..USERS.len()).prop_map(Op::UserRemoved),
        1 => (0u64..400).prop_map(Op::Advance),
    ]
}

fn same_set(actual: &[Effect], expected: &[Effect]) -> bool {
    let key = |effects: &[Effect]| {
        let mut v: Vec<String> = effects.iter().map(|e| format!("{e:?}")).collect();
        v.sort();
        v
    };
    key(actual) == key(expected)
}

/// No effect crosses users: a client hears only of its user's machines and is linked only
/// to them. (`create_session` reaching only the user's own agent is checked where it is
/// asked.)
fn check_ownership(
    effects: &[Effect],
    user_of: &BTreeMap<ConnId, UserId>,
) -> Result<(), TestCaseError> {
    for effect in effects {
        let (client, machine) = match effect {
            Effect::ToClient {
                conn,
                event:
                    ClientEvent::MachineStatus { machine_id, .. }
                    | ClientEvent::SessionStarted { machine_id, .. }
                    | ClientEvent::SessionEnded { machine_id, .. }
                    | ClientEvent::Sessions { machine_id, .. },
            } => (*conn, &**machine_id),
            Effect::Link {
                client, machine, ..
            } => (*client, machine),
            _ => continue,
        };
        prop_assert_eq!(
            user_of.get(&client),
            Some(&owner(machine)),
            "{:?} crossed users",
            effect
        );
    }
    Ok(())
}

/// An agent hears `attach` for a client once, until it hears `detach` for it or leaves:
/// `links` holds (agent, client, session) as the effects say.
fn check_links(
    effects: &[Effect],
    links: &mut BTreeSet<(ConnId, ConnId, SessionId)>,
    op: &Op,
) -> Result<(), TestCaseError> {
    for effect in effects {
        match effect {
            Effect::Link {
                agent,
                client,
                session,
                ..
            } => {
                prop_assert!(
                    links.insert((*agent, *client, session.clone())),
                    "{:?} linked twice by {:?}",
                    effect,
                    op
                );
            }
            Effect::Unlink {
                agent,
                client,
                session,
                ..
            } => {
                links.remove(&(*agent, *client, session.clone()));
            }
            Effect::DropAgent { conn, .. } => links.retain(|(agent, ..)| agent != conn),
            _ => {}
        }
    }
    Ok(())
}

fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let (mut table, mut model) = (MachineTable::default(), Model::default());
    let mut now = Instant::now();
    let (mut agents, mut clients) = (Vec::<ConnId>::new(), Vec::<ConnId>::new());
    let mut user_of: BTreeMap<ConnId, UserId> = BTreeMap::new();
    let mut agent_machine: BTreeMap<ConnId, MachineId> = BTreeMap::new();
    let mut next = 1u64;
    let mut links = BTreeSet::new();
    for (step, op) in ops.into_iter().enumerate() {
        let mid = |m: usize| MachineId::from(MACHINES[m].0);
        let sid = |s: usize| SessionId::from(SESSIONS[s]);
        let (actual, mut expected) = (Vec::new(), Vec::new());
        let actual = match &op {
            Op::AgentOnline(m) => {
                let (conn, m) = (ConnId::from(next), mid(*m));
                next += 1;
                agents.push(conn);
                agent_machine.insert(conn, m.clone());
                user_of.insert(conn, owner(&m));
                let got = table.agent_online(conn, &m, &owner(&m), now);
                model
                    .deleted
                    .retain(|_, at| now < *at + Duration::from_secs(600));
                if model.deleted.contains_key(&m) {
                    prop_assert!(got.is_err(), "a deleted machine came online");
                    continue;
                }
                model.agent_conns.insert(conn, m.clone());
                if let Some(agent) = model.agents.get_mut(&m) {
                    let old = std::mem::replace(&mut agent.conn, conn);
                    agent.confirmed = false;
                    agent.early.clear();
                    model.agent_conns.remove(&old);
                    expected.push(Effect::DropAgent {
                        conn: old,
                        outcome: Outcome::Replaced,
                    });
                } else {
                    model.agents.insert(
                        m.clone(),
                        Agent {
                            conn,
                            sessions: BTreeMap::new(),
                            confirmed: true,
                            early: BTreeSet::new(),
                        },
                    );
                    model.tell(
                        &owner(&m),
                        &mut expected,
                        ClientEvent::MachineStatus {
                            machine_id: Cow::Owned(m),
                            online: true,
                        },
                    );
                }
                got.map_err(|_| TestCaseError::fail("refused a machine that is not deleted"))?
            }
            Op::AgentOffline(i) if !agents.is_empty() => {
                let conn = *i.get(&agents);
                model.agent_offline(conn, &mut expected);
                table.agent_offline(conn)
            }
            Op::Sessions(i, list) if !agents.is_empty() => {
                let conn = *i.get(&agents);
                let list: Vec<SessionInfo> = list.iter().map(|(s, n)| info(*s, *n)).collect();
                if let Some(m) = model.agent_conns.get(&conn).cloned() {
                    let fresh: BTreeMap<SessionId, SessionInfo> =
                        list.iter().map(|s| (s.id.clone(), s.clone())).collect();
                    let gone: Vec<SessionId> = model.agents[&m]
                        .sessions
                        .keys()
                        .filter(|s| !fresh.contains_key(*s))
                        .cloned()
                        .collect();
                    for s in gone {
                        model.end_session(&m, &s, &mut expected);
                    }
                    if !std::mem::replace(&mut model.agents.get_mut(&m).unwrap().confirmed, true) {
                        let early = std::mem::take(&mut model.agents.get_mut(&m).unwrap().early);
                        for s in model.agents[&m].sessions.keys() {
                            for client in model
                                .watchers(&m, s)
                                .into_iter()
                                .filter(|c| !early.contains(&(s.clone(), *c)))
                            {
                                expected.push(Effect::Link {
                                    agent: conn,
                                    client,
                                    machine: m.clone(),
                                    session: s.clone(),
                                    relink: true,
                                });
                            }
                        }
                    }
                    model.agents.get_mut(&m).unwrap().sessions = fresh;
                }
                table.agent_sessions(conn, list)
            }
            Op::Started(i, s, n) if !agents.is_empty() => {
                let conn = *i.get(&agents);
                if let Some(m) = model.agent_conns.get(&conn).cloned() {
                    model
                        .agents
                        .get_mut(&m)
                        .unwrap()
                        .sessions
                        .insert(sid(*s), info(*s, *n));
                    let session = model.counted(&m, info(*s, *n));
                    model.tell(
                        &owner(&m),
                        &mut expected,
                        ClientEvent::SessionStarted {
                            machine_id: Cow::Owned(m),
                            session: Cow::Owned(session),
                        },
                    );
                }
                table.session_started(conn, info(*s, *n))
            }
            Op::Ended(i, s) if !agents.is_empty() => {
                let conn = *i.get(&agents);
                if let Some(m) = model.agent_conns.get(&conn).cloned() {
                    model.end_session(&m, &sid(*s), &mut expected);
                }
                table.session_ended(conn, &sid(*s))
            }
            Op::ClientOnline(u) => {
                let conn = ConnId::from(next);
                next += 1;
                clients.push(conn);
                user_of.insert(conn, UserId::from(USERS[*u]));
                model
                    .clients
                    .insert(conn, (UserId::from(USERS[*u]), BTreeMap::new()));
                table.client_online(conn, &UserId::from(USERS[*u]));
                actual
            }
            Op::ClientOffline(i) if !clients.is_empty() => {
                let conn = *i.get(&clients);
                if let Some((_, attached)) = model.clients.remove(&conn) {
                    for (s, m) in attached {
                        model.unwatch(&m, &s, conn, false, &mut expected);
                    }
                }
                table.client_offline(conn)
            }
            Op::List(i, m) if !clients.is_empty() => {
                let (conn, m) = (*i.get(&clients), mid(*m));
                expected = match model.owned(conn, &m) {
                    None => {
                        client_error(conn, ErrorCode::MachineNotFound, "no such machine online")
                    }
                    Some(agent) => {
                        let sessions = agent
                            .sessions
                            .values()
                            .map(|s| model.counted(&m, s.clone()))
                            .collect::<Vec<_>>();
                        vec![Effect::ToClient {
                            conn,
                            event: ClientEvent::Sessions {
                                machine_id: Cow::Owned(m.clone()),
                                sessions: Cow::Owned(sessions),
                            },
                        }]
                    }
                };
                table.list_sessions(conn, &m)
            }
            Op::Attach(i, m, s) if !clients.is_empty() => {
                let (conn, m, s) = (*i.get(&clients), mid(*m), sid(*s));
                expected = match model
                    .owned(conn, &m)
                    .map(|a| (a.conn, a.sessions.contains_key(&s)))
                {
                    None => {
                        client_error(conn, ErrorCode::MachineNotFound, "no such machine online")
                    }
                    Some((_, false)) => client_error(
                        conn,
                        ErrorCode::SessionNotFound,
                        "no such session on that machine",
                    ),
                    Some((agent, true)) => match model.clients[&conn].1.get(&s) {
                        Some(on) if *on == m => vec![Effect::ToClient {
                            conn,
                            event: ClientEvent::Attached {
                                session_id: Cow::Owned(s.clone()),
                                resumed: None,
                            },
                        }],
                        Some(_) => client_error(
                            conn,
                            ErrorCode::InvalidMessage,
                            "already attached to a session with this id on another machine",
                        ),
                        None => {
                            model
                                .clients
                                .get_mut(&conn)
                                .unwrap()
                                .1
                                .insert(s.clone(), m.clone());
                            let entry = model.agents.get_mut(&m).unwrap();
                            if !entry.confirmed {
                                entry.early.insert((s.clone(), conn));
                            }
                            vec![Effect::Link {
                                agent,
                                client: conn,
                                machine: m.clone(),
                                session: s.clone(),
                                relink: false,
                            }]
                        }
                    },
                };
                table.attach(conn, &m, &s)
            }
            Op::Detach(i, s) if !clients.is_empty() => {
                let (conn, s) = (*i.get(&clients), sid(*s));
                match model
                    .clients
                    .get_mut(&conn)
                    .and_then(|(_, att)| att.remove(&s))
                {
                    None => {
                        expected = client_error(
                            conn,
                            ErrorCode::NotAttached,
                            "not attached to that session",
                        )
                    }
                    Some(m) => model.unwatch(&m, &s, conn, true, &mut expected),
                }
                table.detach(conn, &s)
            }
            Op::Create(i, m) if !clients.is_empty() => {
                let (conn, m) = (*i.get(&clients), mid(*m));
                expected = match model.owned(conn, &m) {
                    None => {
                        client_error(conn, ErrorCode::MachineNotFound, "no such machine online")
                    }
                    Some(agent) => vec![Effect::ToAgent {
                        conn: agent.conn,
                        event: AgentEvent::StartSession {
                            name: "n".into(),
                            command: "c".into(),
                        },
                    }],
                };
                let got = table.create_session(conn, &m, "n".into(), "c".into());
                if let Some(Effect::ToAgent { conn: agent, .. }) = got.first() {
                    prop_assert_eq!(
                        user_of.get(agent),
                        user_of.get(&conn),
                        "a client reached another user's agent"
                    );
                    prop_assert_eq!(agent_machine.get(agent), Some(&m));
                }
                got
            }
            Op::Deleted(m) => {
                let m = mid(*m);
                model
                    .deleted
                    .retain(|_, at| now < *at + Duration::from_secs(600));
                model.deleted.entry(m.clone()).or_insert(now);
                if let Some(conn) = model.agents.get(&m).map(|a| a.conn) {
                    model.agent_offline(conn, &mut expected);
                    expected.push(Effect::DropAgent {
                        conn,
                        outcome: Outcome::Refused,
                    });
                }
                table.machine_deleted(&m, now)
            }
            Op::UserRemoved(u) => {
                let user = UserId::from(USERS[*u]);
                let (closing, got) = table.user_removed(&user);
                let mine: BTreeSet<ConnId> = model
                    .clients
                    .iter()
                    .filter(|(_, (u, _))| *u == user)
                    .map(|(c, _)| *c)
                    .collect();
                prop_assert_eq!(closing.into_iter().collect::<BTreeSet<_>>(), mine);
                let theirs: Vec<ConnId> = model
                    .agents
                    .iter()
                    .filter(|(m, _)| owner(m) == user)
                    .map(|(_, a)| a.conn)
                    .collect();
                for conn in theirs {
                    model.agent_offline(conn, &mut expected);
                    expected.push(Effect::DropAgent {
                        conn,
                        outcome: Outcome::Refused,
                    });
                }
                got
            }
            Op::Advance(secs) => {
                now += Duration::from_secs(*secs);
                continue;
            }
            _ => continue,
        };
        prop_assert!(
            same_set(&actual, &expected),
            "step {}: {:?}\n table: {:?}\n model: {:?}",
            step,
            op,
            actual,
            expected
        );
        check_ownership(&actual, &user_of)?;
        check_links(&actual, &mut links, &op)?;
        let ids: Vec<MachineId> = MACHINES.iter().map(|(m, _)| MachineId::from(*m)).collect();
        let live: Vec<Live> = ids
            .iter()
            .map(|m| {
                model.agents.get(m).map_or(Live::default(), |a| Live {
                    online: true,
                    session_count: a.sessions.len(),
                })
            })
            .collect();
        prop_assert_eq!(table.status(&ids), live, "status after step {}", step);
    }
    Ok(())
}

proptest! {
    #[test]
    fn the_machine_directory_agrees_with_the_model_and_never_crosses_users(
        ops in prop::collection::vec(op(), 1..60),
    ) {
        run(ops)?;
    }
}
