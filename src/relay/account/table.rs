//! Account mode's routing table: which agent holds which machine, the sessions it reports,
//! which clients are attached to which session, and whose they are.
//!
//! Plain state and methods returning [`Effect`]s, like the pairing table. Ownership is
//! checked here on every request that names a machine: a client only ever reaches machines
//! of its own user, and hears `MACHINE_NOT_FOUND` for anything else — whether the machine
//! is someone else's, offline or unknown.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

use crate::ids::{HashMap, HashSet};
use std::time::{Duration, Instant};

use crate::ids::{ConnId, MachineId, Outcome, SessionId, UserId};
use crate::relay::protocol::account::{AgentEvent, ClientEvent};
use crate::relay::protocol::{ErrorCode, SessionInfo};

/// Most sessions one agent may report; more are ignored (and logged).
pub const MAX_SESSIONS_PER_AGENT: usize = 256;
/// Most sessions one client may be attached to at once.
pub const MAX_ATTACHMENTS_PER_CLIENT: usize = 64;
/// How long a deleted machine is remembered, so an agent whose token was checked just
/// before the deletion cannot bring it online after. Far longer than any token check
/// (bounded by the database timeouts).
const DELETED_MEMORY: Duration = Duration::from_secs(600);
/// Most deleted machines remembered at once; past it the oldest are forgotten early.
const MAX_DELETED: usize = 10_000;

/// Live state of one machine, as the REST API and clients see it (and as a user's node
/// tells the others, in a cluster).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Live {
    /// An agent is connected for it.
    pub online: bool,
    /// Sessions that agent reports.
    pub session_count: usize,
}

/// Something the registry actor must do.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Queue a message on an agent's socket.
    ToAgent {
        /// The agent connection.
        conn: ConnId,
        /// What to send.
        event: AgentEvent<'static>,
    },
    /// Queue a message on a client's socket.
    ToClient {
        /// The client connection.
        conn: ConnId,
        /// What to send.
        event: ClientEvent<'static>,
    },
    /// Queue an `error` on a client's socket.
    ClientError {
        /// The client connection.
        conn: ConnId,
        /// The code.
        code: ErrorCode,
        /// Text for humans.
        message: &'static str,
    },
    /// Connect agent and client for one session: the agent fans its output out to the
    /// client, and the client writes input straight to the agent. The agent's actor
    /// queues `attach` to the agent and then (unless `relink`) `attached` to the client,
    /// before any output can reach the client. `relink`: the client was attached to the
    /// agent this one replaced, and stays attached without being told anything.
    Link {
        /// The agent connection.
        agent: ConnId,
        /// The client connection.
        client: ConnId,
        /// The session's machine.
        machine: MachineId,
        /// The session.
        session: SessionId,
        /// A replacement agent takes over an attachment.
        relink: bool,
    },
    /// Undo a [`Effect::Link`]. `detach_agent`: the agent hears `detach` (the client left
    /// or detached, rather than the session ending). `reply`: the client asked, and hears
    /// `detached` once no more output can reach it.
    Unlink {
        /// The agent connection.
        agent: ConnId,
        /// The client connection.
        client: ConnId,
        /// The session.
        session: SessionId,
        /// Tell the agent `detach`.
        detach_agent: bool,
        /// Tell the client `detached`.
        reply: bool,
    },
    /// A session ended: its data paths go.
    EndSession {
        /// Its machine.
        machine: MachineId,
        /// The session.
        session: SessionId,
    },
    /// Close an agent connection: `Replaced` by a newer one, or `Refused` (its machine
    /// was deleted).
    DropAgent {
        /// The agent connection.
        conn: ConnId,
        /// Why.
        outcome: Outcome,
    },
}

/// Why an agent may not come online.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MachineDeleted;

#[derive(Debug)]
struct Agent {
    conn: ConnId,
    user: UserId,
    /// Ordered by id, so listings are stable.
    sessions: BTreeMap<SessionId, SessionInfo>,
    /// False from the moment this agent replaced another until it reports its sessions:
    /// until then `sessions` are the old agent's, kept so their clients stay attached.
    confirmed: bool,
    /// Attachments made to this agent before it confirmed: linked already, so its first
    /// list must not link them again (the agent would hear `attach` twice; found by the
    /// model-based tests).
    linked_early: HashSet<(SessionId, ConnId)>,
}

#[derive(Debug)]
struct Client {
    user: UserId,
    /// Session → machine of each attachment.
    attached: HashMap<SessionId, MachineId>,
}

/// An agent's part of the table, as another node takes it over (see `super::handoff`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AgentRecord {
    /// Its connection (away).
    pub conn: ConnId,
    /// Its machine.
    pub machine: MachineId,
    /// The sessions it reported.
    pub sessions: Vec<SessionInfo>,
    /// Whether it reported its own list since it replaced another agent.
    pub confirmed: bool,
    /// Attachments linked to it before it confirmed.
    pub linked_early: Vec<(SessionId, ConnId)>,
}

/// A client's part of the table, as another node takes it over.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ClientRecord {
    /// The id it is known by (away).
    pub conn: ConnId,
    /// Its attachments: session and machine.
    pub attached: Vec<(SessionId, MachineId)>,
}

/// One user's agents and clients, as another node takes them over.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct UserRecord {
    /// The user.
    pub user: UserId,
    /// Its agents handed over.
    pub agents: Vec<AgentRecord>,
    /// Its clients handed over.
    pub clients: Vec<ClientRecord>,
}

/// Agents, clients and attachments.
#[derive(Debug, Default)]
pub struct MachineTable {
    agents: HashMap<MachineId, Agent>,
    /// Agent connection → its machine.
    agent_machines: HashMap<ConnId, MachineId>,
    clients: HashMap<ConnId, Client>,
    /// User → its authenticated clients, for `machine_status` and `session_started`.
    users: HashMap<UserId, HashSet<ConnId>>,
    /// (machine, session) → attached clients.
    watchers: HashMap<(MachineId, SessionId), BTreeSet<ConnId>>,
    /// Machines deleted lately, oldest first, with when they were deleted.
    deleted: VecDeque<(Instant, MachineId)>,
    deleted_set: HashSet<MachineId>,
}

impl MachineTable {
    /// Live state of each of `machine_ids`, in order.
    pub fn status(&self, machine_ids: &[MachineId]) -> Vec<Live> {
        machine_ids
            .iter()
            .map(|id| match self.agents.get(id) {
                Some(agent) => Live {
                    online: true,
                    session_count: agent.sessions.len(),
                },
                None => Live::default(),
            })
            .collect()
    }

    /// An agent authenticated for `machine`. A previous agent of the machine is dropped, and
    /// this one takes over its sessions until it reports its own. A machine deleted since
    /// its token was checked stays offline.
    pub fn agent_online(
        &mut self,
        conn: ConnId,
        machine: &MachineId,
        user: &UserId,
        now: Instant,
    ) -> Result<Vec<Effect>, MachineDeleted> {
        self.forget_deleted(now);
        if self.deleted_set.contains(machine) {
            return Err(MachineDeleted);
        }
        let mut effects = Vec::new();
        self.agent_machines.insert(conn, machine.clone());
        if let Some(agent) = self.agents.get_mut(machine) {
            let old = std::mem::replace(&mut agent.conn, conn);
            agent.confirmed = false;
            // What was linked to the agent replaced now is inherited: relinked on confirm.
            agent.linked_early.clear();
            self.agent_machines.remove(&old);
            effects.push(Effect::DropAgent {
                conn: old,
                outcome: Outcome::Replaced,
            });
            return Ok(effects);
        }
        self.agents.insert(
            machine.clone(),
            Agent {
                conn,
                user: user.clone(),
                sessions: BTreeMap::new(),
                confirmed: true,
                linked_early: HashSet::default(),
            },
        );
        self.tell_user(user, &mut effects, || ClientEvent::MachineStatus {
            machine_id: Cow::Owned(machine.clone()),
            online: true,
        });
        Ok(effects)
    }

    /// An agent's connection ended. Ignored if a newer agent already replaced it.
    pub fn agent_offline(&mut self, conn: ConnId) -> Vec<Effect> {
        let mut effects = Vec::new();
        let Some(machine) = self.agent_machines.remove(&conn) else {
            return effects;
        };
        if self.agents.get(&machine).is_some_and(|a| a.conn == conn) {
            if let Some(user) = self.remove_agent(&machine, &mut effects) {
                self.tell_user(&user, &mut effects, || ClientEvent::MachineStatus {
                    machine_id: Cow::Owned(machine.clone()),
                    online: false,
                });
            }
        }
        effects
    }

    /// A machine was deleted: its agent is dropped, the user's clients see it go offline,
    /// and no agent may bring it online again.
    pub fn machine_deleted(&mut self, machine: &MachineId, now: Instant) -> Vec<Effect> {
        self.forget_deleted(now);
        if self.deleted_set.insert(machine.clone()) {
            self.deleted.push_back((now, machine.clone()));
        }
        let conn = self.agents.get(machine).map(|a| a.conn);
        let mut effects = conn
            .map(|conn| self.agent_offline(conn))
            .unwrap_or_default();
        if let Some(conn) = conn {
            effects.push(Effect::DropAgent {
                conn,
                outcome: Outcome::Refused,
            });
        }
        effects
    }

    /// The agent's full session list: sessions that vanished end for their watchers. The
    /// first list of an agent that replaced another keeps the survivors' clients attached,
    /// linked to this agent.
    pub fn agent_sessions(&mut self, conn: ConnId, sessions: Vec<SessionInfo>) -> Vec<Effect> {
        let mut effects = Vec::new();
        let Some(machine) = self.agent_machines.get(&conn).cloned() else {
            return effects;
        };
        let fresh: BTreeMap<SessionId, SessionInfo> = sessions
            .into_iter()
            .take(MAX_SESSIONS_PER_AGENT)
            .map(|s| (s.id.clone(), s))
            .collect();
        let Some(agent) = self.agents.get(&machine) else {
            return effects;
        };
        let (gone, kept): (Vec<SessionId>, Vec<SessionId>) = agent
            .sessions
            .keys()
            .cloned()
            .partition(|id| !fresh.contains_key(id));
        for session in gone {
            self.end_session(&machine, &session, &mut effects);
        }
        if let Some(agent) = self.agents.get_mut(&machine) {
            if !std::mem::replace(&mut agent.confirmed, true) {
                let linked_early = std::mem::take(&mut agent.linked_early);
                for session in kept {
                    let key = (machine.clone(), session);
                    for &client in self.watchers.get(&key).into_iter().flatten() {
                        if linked_early.contains(&(key.1.clone(), client)) {
                            continue;
                        }
                        effects.push(Effect::Link {
                            agent: conn,
                            client,
                            machine: machine.clone(),
                            session: key.1.clone(),
                            relink: true,
                        });
                    }
                }
            }
            agent.sessions = fresh;
        }
        effects
    }

    /// The agent started a session: every client of the user hears of it.
    pub fn session_started(&mut self, conn: ConnId, session: SessionInfo) -> Vec<Effect> {
        let mut effects = Vec::new();
        let Some(machine) = self.agent_machines.get(&conn).cloned() else {
            return effects;
        };
        let Some(agent) = self.agents.get_mut(&machine) else {
            return effects;
        };
        if agent.sessions.len() >= MAX_SESSIONS_PER_AGENT
            && !agent.sessions.contains_key(&session.id)
        {
            tracing::warn!(%machine, "agent reports too many sessions; ignoring one");
            return effects;
        }
        agent.sessions.insert(session.id.clone(), session.clone());
        let user = agent.user.clone();
        let session = self.with_count(&machine, session);
        self.tell_user(&user, &mut effects, || ClientEvent::SessionStarted {
            machine_id: Cow::Owned(machine.clone()),
            session: Cow::Owned(session.clone()),
        });
        effects
    }

    /// The agent ended a session: its watchers are detached, every client of the user told.
    pub fn session_ended(&mut self, conn: ConnId, session: &SessionId) -> Vec<Effect> {
        let mut effects = Vec::new();
        if let Some(machine) = self.agent_machines.get(&conn).cloned() {
            self.end_session(&machine, session, &mut effects);
        }
        effects
    }

    /// A client authenticated as `user`.
    pub fn client_online(&mut self, conn: ConnId, user: &UserId) {
        self.clients.insert(
            conn,
            Client {
                user: user.clone(),
                attached: HashMap::default(),
            },
        );
        self.users.entry(user.clone()).or_default().insert(conn);
    }

    /// A client's connection ended: detached everywhere, each agent told.
    pub fn client_offline(&mut self, conn: ConnId) -> Vec<Effect> {
        let mut effects = Vec::new();
        let Some(client) = self.clients.remove(&conn) else {
            return effects;
        };
        if let Some(conns) = self.users.get_mut(&client.user) {
            conns.remove(&conn);
            if conns.is_empty() {
                self.users.remove(&client.user);
            }
        }
        for (session, machine) in client.attached {
            self.unwatch(&machine, &session, conn, false, &mut effects);
        }
        effects
    }

    /// `list_sessions` from a client.
    pub fn list_sessions(&self, conn: ConnId, machine: &MachineId) -> Vec<Effect> {
        let Some(agent) = self.owned_agent(conn, machine) else {
            return not_found(conn);
        };
        let sessions: Vec<SessionInfo> = agent
            .sessions
            .values()
            .map(|s| self.with_count(machine, s.clone()))
            .collect();
        vec![Effect::ToClient {
            conn,
            event: ClientEvent::Sessions {
                machine_id: Cow::Owned(machine.clone()),
                sessions: Cow::Owned(sessions),
            },
        }]
    }

    /// `attach` from a client.
    pub fn attach(
        &mut self,
        conn: ConnId,
        machine: &MachineId,
        session: &SessionId,
    ) -> Vec<Effect> {
        let Some(agent) = self.owned_agent(conn, machine) else {
            return not_found(conn);
        };
        let error = |code, message| {
            vec![Effect::ClientError {
                conn,
                code,
                message,
            }]
        };
        if !agent.sessions.contains_key(session) {
            return error(
                ErrorCode::SessionNotFound,
                "no such session on that machine",
            );
        }
        let agent_conn = agent.conn;
        let Some(client) = self.clients.get_mut(&conn) else {
            return Vec::new();
        };
        match client.attached.get(session) {
            Some(attached_to) if attached_to == machine => {
                return vec![Effect::ToClient {
                    conn,
                    event: ClientEvent::Attached {
                        session_id: Cow::Owned(session.clone()),
                        resumed: None,
                    },
                }]
            }
            Some(_) => {
                return error(
                    ErrorCode::InvalidMessage,
                    "already attached to a session with this id on another machine",
                )
            }
            None if client.attached.len() >= MAX_ATTACHMENTS_PER_CLIENT => {
                return error(ErrorCode::InvalidMessage, "too many attached sessions")
            }
            None => {}
        }
        client.attached.insert(session.clone(), machine.clone());
        self.watchers
            .entry((machine.clone(), session.clone()))
            .or_default()
            .insert(conn);
        if let Some(agent) = self
            .agents
            .get_mut(machine)
            .filter(|agent| !agent.confirmed)
        {
            agent.linked_early.insert((session.clone(), conn));
        }
        vec![Effect::Link {
            agent: agent_conn,
            client: conn,
            machine: machine.clone(),
            session: session.clone(),
            relink: false,
        }]
    }

    /// `detach` from a client.
    pub fn detach(&mut self, conn: ConnId, session: &SessionId) -> Vec<Effect> {
        let machine = self
            .clients
            .get_mut(&conn)
            .and_then(|client| client.attached.remove(session));
        let Some(machine) = machine else {
            return vec![Effect::ClientError {
                conn,
                code: ErrorCode::NotAttached,
                message: "not attached to that session",
            }];
        };
        let mut effects = Vec::new();
        self.unwatch(&machine, session, conn, true, &mut effects);
        effects
    }

    /// `create_session` from a client.
    pub fn create_session(
        &self,
        conn: ConnId,
        machine: &MachineId,
        name: String,
        command: String,
    ) -> Vec<Effect> {
        let Some(agent) = self.owned_agent(conn, machine) else {
            return not_found(conn);
        };
        vec![Effect::ToAgent {
            conn: agent.conn,
            event: AgentEvent::StartSession {
                name: Cow::Owned(name),
                command: Cow::Owned(command),
            },
        }]
    }

    /// The agent of `machine` if it is online and belongs to the client's user.
    fn owned_agent(&self, conn: ConnId, machine: &MachineId) -> Option<&Agent> {
        let client = self.clients.get(&conn)?;
        self.agents
            .get(machine)
            .filter(|agent| agent.user == client.user)
    }

    fn with_count(&self, machine: &MachineId, mut session: SessionInfo) -> SessionInfo {
        session.attached_clients = self
            .watchers
            .get(&(machine.clone(), session.id.clone()))
            .map_or(0, |w| w.len() as u32);
        session
    }

    fn tell_user(
        &self,
        user: &UserId,
        effects: &mut Vec<Effect>,
        event: impl Fn() -> ClientEvent<'static>,
    ) {
        for &conn in self.users.get(user).into_iter().flatten() {
            effects.push(Effect::ToClient {
                conn,
                event: event(),
            });
        }
    }

    /// Removes one client from one session's watchers; the agent hears `detach`, and the
    /// client `detached` if it asked (`reply`) — from the agent's actor after the last
    /// output, or from here when there is no agent any more.
    fn unwatch(
        &mut self,
        machine: &MachineId,
        session: &SessionId,
        client: ConnId,
        reply: bool,
        effects: &mut Vec<Effect>,
    ) {
        let key = (machine.clone(), session.clone());
        if let Some(watchers) = self.watchers.get_mut(&key) {
            watchers.remove(&client);
            if watchers.is_empty() {
                self.watchers.remove(&key);
            }
        }
        match self.agents.get(machine) {
            Some(agent) => effects.push(Effect::Unlink {
                agent: agent.conn,
                client,
                session: session.clone(),
                detach_agent: true,
                reply,
            }),
            None if reply => effects.push(Effect::ToClient {
                conn: client,
                event: ClientEvent::Detached {
                    session_id: Cow::Owned(session.clone()),
                },
            }),
            None => {}
        }
    }

    /// A session ends: its watchers are unlinked and detached; the user's clients are told.
    fn end_session(&mut self, machine: &MachineId, session: &SessionId, effects: &mut Vec<Effect>) {
        let Some(agent) = self.agents.get_mut(machine) else {
            return;
        };
        if agent.sessions.remove(session).is_none() {
            return;
        }
        let (agent_conn, user) = (agent.conn, agent.user.clone());
        let watchers = self
            .watchers
            .remove(&(machine.clone(), session.clone()))
            .unwrap_or_default();
        for client in watchers {
            if let Some(c) = self.clients.get_mut(&client) {
                c.attached.remove(session);
            }
            effects.push(Effect::Unlink {
                agent: agent_conn,
                client,
                session: session.clone(),
                detach_agent: false,
                reply: false,
            });
        }
        effects.push(Effect::EndSession {
            machine: machine.clone(),
            session: session.clone(),
        });
        self.tell_user(&user, effects, || ClientEvent::SessionEnded {
            machine_id: Cow::Owned(machine.clone()),
            session_id: Cow::Owned(session.clone()),
        });
    }

    /// Removes an agent and every session of it; returns its user.
    fn remove_agent(&mut self, machine: &MachineId, effects: &mut Vec<Effect>) -> Option<UserId> {
        let sessions: Vec<SessionId> = self.agents.get(machine)?.sessions.keys().cloned().collect();
        for session in sessions {
            self.end_session(machine, &session, effects);
        }
        let agent = self.agents.remove(machine)?;
        self.agent_machines.remove(&agent.conn);
        Some(agent.user)
    }

    /// Forgets deletions older than [`DELETED_MEMORY`], and the oldest past [`MAX_DELETED`].
    fn forget_deleted(&mut self, now: Instant) {
        while let Some((at, machine)) = self.deleted.front() {
            if now < *at + DELETED_MEMORY && self.deleted.len() < MAX_DELETED {
                break;
            }
            self.deleted_set.remove(machine);
            self.deleted.pop_front();
        }
    }
}

/// Rolling restarts: a leaving node hands its users' away agents and clients to another.
impl MachineTable {
    /// The part of the table made of the agents `agents` and the clients `clients`, by
    /// user (attachments only between the two; the rest is not handed over).
    pub fn export(&self, agents: &HashSet<ConnId>, clients: &HashSet<ConnId>) -> Vec<UserRecord> {
        let mut users: BTreeMap<UserId, UserRecord> = BTreeMap::new();
        fn record<'a>(
            users: &'a mut BTreeMap<UserId, UserRecord>,
            user: &UserId,
        ) -> &'a mut UserRecord {
            users.entry(user.clone()).or_insert_with(|| UserRecord {
                user: user.clone(),
                agents: Vec::new(),
                clients: Vec::new(),
            })
        }
        let mut handed: HashSet<&MachineId> = HashSet::default();
        for (machine, agent) in &self.agents {
            if !agents.contains(&agent.conn) {
                continue;
            }
            handed.insert(machine);
            record(&mut users, &agent.user).agents.push(AgentRecord {
                conn: agent.conn,
                machine: machine.clone(),
                sessions: agent.sessions.values().cloned().collect(),
                confirmed: agent.confirmed,
                linked_early: agent.linked_early.iter().cloned().collect(),
            });
        }
        for (&conn, client) in &self.clients {
            if !clients.contains(&conn) {
                continue;
            }
            let attached = client
                .attached
                .iter()
                .filter(|(_, machine)| handed.contains(machine))
                .map(|(session, machine)| (session.clone(), machine.clone()))
                .collect();
            record(&mut users, &client.user)
                .clients
                .push(ClientRecord { conn, attached });
        }
        users.into_values().collect()
    }

    /// Installs a user's part handed over by another node, its agents and clients away;
    /// returns what was installed. Not installed: an agent whose machine is online here or
    /// was deleted, a connection id in use here, and attachments to what was not installed.
    pub fn import(&mut self, record: UserRecord, now: Instant) -> UserRecord {
        self.forget_deleted(now);
        let user = record.user;
        let mut agents = Vec::new();
        for agent in record.agents {
            let taken = self.agents.contains_key(&agent.machine)
                || self.deleted_set.contains(&agent.machine)
                || self.agent_machines.contains_key(&agent.conn)
                || self.clients.contains_key(&agent.conn);
            if taken {
                continue;
            }
            self.agent_machines
                .insert(agent.conn, agent.machine.clone());
            self.agents.insert(
                agent.machine.clone(),
                Agent {
                    conn: agent.conn,
                    user: user.clone(),
                    sessions: agent
                        .sessions
                        .iter()
                        .take(MAX_SESSIONS_PER_AGENT)
                        .map(|s| (s.id.clone(), s.clone()))
                        .collect(),
                    confirmed: agent.confirmed,
                    linked_early: agent.linked_early.iter().cloned().collect(),
                },
            );
            agents.push(agent);
        }
        let mut clients = Vec::new();
        for mut client in record.clients {
            if self.clients.contains_key(&client.conn)
                || self.agent_machines.contains_key(&client.conn)
            {
                continue;
            }
            client.attached.retain(|(session, machine)| {
                let installed = agents.iter().any(|a: &AgentRecord| &a.machine == machine);
                installed
                    && self
                        .agents
                        .get(machine)
                        .is_some_and(|a| a.sessions.contains_key(session))
            });
            client.attached.truncate(MAX_ATTACHMENTS_PER_CLIENT);
            self.client_online(client.conn, &user);
            for (session, machine) in &client.attached {
                if let Some(c) = self.clients.get_mut(&client.conn) {
                    c.attached.insert(session.clone(), machine.clone());
                }
                self.watchers
                    .entry((machine.clone(), session.clone()))
                    .or_default()
                    .insert(client.conn);
            }
            clients.push(client);
        }
        UserRecord {
            user,
            agents,
            clients,
        }
    }
}

/// What the operator's commands need (issue 14): who is online, and removing a user.
impl MachineTable {
    /// Users with a client or an agent online, and the machines online.
    pub fn online(&self) -> (Vec<UserId>, Vec<MachineId>) {
        let mut users: BTreeSet<UserId> = self.users.keys().cloned().collect();
        users.extend(self.agents.values().map(|agent| agent.user.clone()));
        (
            users.into_iter().collect(),
            self.agents.keys().cloned().collect(),
        )
    }

    /// A user was disabled or deleted: its clients, for the registry to close (their
    /// departure cleans up after them), and the effects of dropping its agents.
    pub fn user_removed(&mut self, user: &UserId) -> (Vec<ConnId>, Vec<Effect>) {
        let clients = self
            .users
            .get(user)
            .map(|conns| conns.iter().copied().collect())
            .unwrap_or_default();
        let agents: Vec<ConnId> = self
            .agents
            .values()
            .filter(|agent| &agent.user == user)
            .map(|agent| agent.conn)
            .collect();
        let mut effects = Vec::new();
        for conn in agents {
            effects.extend(self.agent_offline(conn));
            effects.push(Effect::DropAgent {
                conn,
                outcome: Outcome::Refused,
            });
        }
        (clients, effects)
    }
}

fn not_found(conn: ConnId) -> Vec<Effect> {
    vec![Effect::ClientError {
        conn,
        code: ErrorCode::MachineNotFound,
        message: "no such machine online",
    }]
}

#[cfg(test)]
#[path = "table_tests.rs"]
mod tests;
