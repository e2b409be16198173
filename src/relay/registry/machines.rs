//! Account mode's routing table: which agent holds which machine, the sessions it reports,
//! which clients are attached to which session, and whose they are.
//!
//! Plain state and methods returning [`Effect`]s, like the pairing table. Ownership is
//! checked here on every request that names a machine: a client only ever reaches machines
//! of its own user, and hears `MACHINE_NOT_FOUND` for anything else — whether the machine
//! is someone else's, offline or unknown.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use super::pairings::ConnId;
use crate::relay::protocol::{ErrorCode, SessionInfo};

/// Most sessions one agent may report; more are ignored (and logged).
pub const MAX_SESSIONS_PER_AGENT: usize = 256;
/// Most sessions one client may be attached to at once.
pub const MAX_ATTACHMENTS_PER_CLIENT: usize = 64;

/// Live state of one machine, as the REST API and clients see it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Live {
    /// An agent is connected for it.
    pub online: bool,
    /// Sessions that agent reports.
    pub session_count: usize,
}

/// A wire message the registry sends to an agent.
// Fields carry the names of the wire fields they fill (see `protocol.rs`).
#[allow(missing_docs)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToAgentWire {
    /// `start_session`.
    StartSession { name: String, command: String },
}

/// A wire message the registry sends to a client.
// Fields carry the names of the wire fields they fill (see `protocol.rs`).
#[allow(missing_docs)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToClientWire {
    /// `sessions`.
    Sessions {
        machine_id: String,
        sessions: Vec<SessionInfo>,
    },
    /// `attached` (to a repeated `attach`; the first one is sent by the agent's actor).
    Attached { session_id: String },
    /// `session_started`.
    SessionStarted {
        machine_id: String,
        session: SessionInfo,
    },
    /// `session_ended`.
    SessionEnded {
        machine_id: String,
        session_id: String,
    },
    /// `machine_status`.
    MachineStatus { machine_id: String, online: bool },
    /// `error`.
    Error {
        code: ErrorCode,
        message: &'static str,
    },
}

/// Something the registry actor must do.
// Fields carry the names of the wire fields they fill (see `protocol.rs`).
#[allow(missing_docs)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Queue a message on an agent's socket.
    ToAgent { conn: ConnId, wire: ToAgentWire },
    /// Queue a message on a client's socket.
    ToClient { conn: ConnId, wire: ToClientWire },
    /// Connect agent and client for one session: the agent fans its output out to the
    /// client, and the client writes input straight to the agent. The agent's actor then
    /// queues `attach` to the agent and `attached` to the client, in that order, before
    /// any output can reach the client.
    Link {
        agent: ConnId,
        client: ConnId,
        session_id: String,
    },
    /// Undo a [`Effect::Link`]. `detach_agent`: the agent hears `detach` (the client left
    /// or detached, rather than the session ending). `reply`: the client asked, and hears
    /// `detached` once no more output can reach it.
    Unlink {
        agent: ConnId,
        client: ConnId,
        session_id: String,
        detach_agent: bool,
        reply: bool,
    },
    /// Close an agent connection: replaced by a newer one, or (`revoked`) its machine
    /// was deleted.
    DropAgent { conn: ConnId, revoked: bool },
}

#[derive(Debug)]
struct Agent {
    conn: ConnId,
    user_id: String,
    /// Ordered by id, so listings are stable.
    sessions: BTreeMap<String, SessionInfo>,
}

#[derive(Debug)]
struct Client {
    user_id: String,
    /// Session id → machine id of each attachment.
    attached: HashMap<String, String>,
}

/// Agents, clients and attachments.
#[derive(Debug, Default)]
pub struct MachineTable {
    agents: HashMap<String, Agent>,
    /// Agent connection → its machine.
    agent_machines: HashMap<ConnId, String>,
    clients: HashMap<ConnId, Client>,
    /// User → its authenticated clients, for `machine_status` and `session_started`.
    users: HashMap<String, HashSet<ConnId>>,
    /// (machine, session) → attached clients.
    watchers: HashMap<(String, String), BTreeSet<ConnId>>,
}

impl MachineTable {
    /// Live state of each of `machine_ids`, in order.
    pub fn status(&self, machine_ids: &[String]) -> Vec<Live> {
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

    /// An agent authenticated for `machine_id`. A previous agent of the machine is dropped.
    pub fn agent_online(&mut self, conn: ConnId, machine_id: &str, user_id: &str) -> Vec<Effect> {
        let mut effects = Vec::new();
        let was_online = if let Some(old) = self.agents.get(machine_id).map(|a| a.conn) {
            self.remove_agent(machine_id, &mut effects);
            effects.push(Effect::DropAgent {
                conn: old,
                revoked: false,
            });
            true
        } else {
            false
        };
        self.agents.insert(
            machine_id.to_owned(),
            Agent {
                conn,
                user_id: user_id.to_owned(),
                sessions: BTreeMap::new(),
            },
        );
        self.agent_machines.insert(conn, machine_id.to_owned());
        if !was_online {
            self.tell_user(user_id, &mut effects, |_| ToClientWire::MachineStatus {
                machine_id: machine_id.to_owned(),
                online: true,
            });
        }
        effects
    }

    /// An agent's connection ended. Ignored if a newer agent already replaced it.
    pub fn agent_offline(&mut self, conn: ConnId) -> Vec<Effect> {
        let mut effects = Vec::new();
        let Some(machine_id) = self.agent_machines.remove(&conn) else {
            return effects;
        };
        if self.agents.get(&machine_id).is_some_and(|a| a.conn == conn) {
            if let Some(user_id) = self.remove_agent(&machine_id, &mut effects) {
                self.tell_user(&user_id, &mut effects, |_| ToClientWire::MachineStatus {
                    machine_id: machine_id.clone(),
                    online: false,
                });
            }
        }
        effects
    }

    /// A machine was deleted: its agent is dropped and the user's clients see it go offline.
    pub fn machine_deleted(&mut self, machine_id: &str) -> Vec<Effect> {
        let conn = self.agents.get(machine_id).map(|a| a.conn);
        let mut effects = conn
            .map(|conn| self.agent_offline(conn))
            .unwrap_or_default();
        if let Some(conn) = conn {
            effects.push(Effect::DropAgent {
                conn,
                revoked: true,
            });
        }
        effects
    }

    /// The agent's full session list: sessions that vanished end for their watchers.
    pub fn agent_sessions(&mut self, conn: ConnId, sessions: Vec<SessionInfo>) -> Vec<Effect> {
        let mut effects = Vec::new();
        let Some(machine_id) = self.agent_machines.get(&conn).cloned() else {
            return effects;
        };
        let fresh: BTreeMap<String, SessionInfo> = sessions
            .into_iter()
            .take(MAX_SESSIONS_PER_AGENT)
            .map(|s| (s.id.clone(), s))
            .collect();
        let gone: Vec<String> = self.agents[&machine_id]
            .sessions
            .keys()
            .filter(|id| !fresh.contains_key(*id))
            .cloned()
            .collect();
        for session_id in gone {
            self.end_session(&machine_id, &session_id, &mut effects);
        }
        if let Some(agent) = self.agents.get_mut(&machine_id) {
            agent.sessions = fresh;
        }
        effects
    }

    /// The agent started a session: every client of the user hears of it.
    pub fn session_started(&mut self, conn: ConnId, session: SessionInfo) -> Vec<Effect> {
        let mut effects = Vec::new();
        let Some(machine_id) = self.agent_machines.get(&conn).cloned() else {
            return effects;
        };
        let Some(agent) = self.agents.get_mut(&machine_id) else {
            return effects;
        };
        if agent.sessions.len() >= MAX_SESSIONS_PER_AGENT
            && !agent.sessions.contains_key(&session.id)
        {
            tracing::warn!(machine_id, "agent reports too many sessions; ignoring one");
            return effects;
        }
        agent.sessions.insert(session.id.clone(), session.clone());
        let user_id = agent.user_id.clone();
        let session = self.with_count(&machine_id, session);
        self.tell_user(&user_id, &mut effects, |_| ToClientWire::SessionStarted {
            machine_id: machine_id.clone(),
            session: session.clone(),
        });
        effects
    }

    /// The agent ended a session: its watchers are detached, every client of the user told.
    pub fn session_ended(&mut self, conn: ConnId, session_id: &str) -> Vec<Effect> {
        let mut effects = Vec::new();
        if let Some(machine_id) = self.agent_machines.get(&conn).cloned() {
            self.end_session(&machine_id, session_id, &mut effects);
        }
        effects
    }

    /// A client authenticated as `user_id`.
    pub fn client_online(&mut self, conn: ConnId, user_id: &str) {
        self.clients.insert(
            conn,
            Client {
                user_id: user_id.to_owned(),
                attached: HashMap::new(),
            },
        );
        self.users
            .entry(user_id.to_owned())
            .or_default()
            .insert(conn);
    }

    /// A client's connection ended: detached everywhere, each agent told.
    pub fn client_offline(&mut self, conn: ConnId) -> Vec<Effect> {
        let mut effects = Vec::new();
        let Some(client) = self.clients.remove(&conn) else {
            return effects;
        };
        if let Some(conns) = self.users.get_mut(&client.user_id) {
            conns.remove(&conn);
            if conns.is_empty() {
                self.users.remove(&client.user_id);
            }
        }
        for (session_id, machine_id) in client.attached {
            self.unwatch(&machine_id, &session_id, conn, false, &mut effects);
        }
        effects
    }

    /// `list_sessions` from a client.
    pub fn list_sessions(&self, conn: ConnId, machine_id: &str) -> Vec<Effect> {
        let Some(agent) = self.owned_agent(conn, machine_id) else {
            return not_found(conn);
        };
        let sessions = agent
            .sessions
            .values()
            .map(|s| self.with_count(machine_id, s.clone()))
            .collect();
        vec![Effect::ToClient {
            conn,
            wire: ToClientWire::Sessions {
                machine_id: machine_id.to_owned(),
                sessions,
            },
        }]
    }

    /// `attach` from a client.
    pub fn attach(&mut self, conn: ConnId, machine_id: &str, session_id: &str) -> Vec<Effect> {
        let Some(agent) = self.owned_agent(conn, machine_id) else {
            return not_found(conn);
        };
        let error = |code, message| {
            vec![Effect::ToClient {
                conn,
                wire: ToClientWire::Error { code, message },
            }]
        };
        if !agent.sessions.contains_key(session_id) {
            return error(
                ErrorCode::SessionNotFound,
                "no such session on that machine",
            );
        }
        let agent_conn = agent.conn;
        let Some(client) = self.clients.get_mut(&conn) else {
            return Vec::new();
        };
        let attached = |session_id: &str| {
            vec![Effect::ToClient {
                conn,
                wire: ToClientWire::Attached {
                    session_id: session_id.to_owned(),
                },
            }]
        };
        match client.attached.get(session_id) {
            Some(machine) if machine == machine_id => return attached(session_id),
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
        client
            .attached
            .insert(session_id.to_owned(), machine_id.to_owned());
        self.watchers
            .entry((machine_id.to_owned(), session_id.to_owned()))
            .or_default()
            .insert(conn);
        vec![Effect::Link {
            agent: agent_conn,
            client: conn,
            session_id: session_id.to_owned(),
        }]
    }

    /// `detach` from a client.
    pub fn detach(&mut self, conn: ConnId, session_id: &str) -> Vec<Effect> {
        let machine_id = self
            .clients
            .get_mut(&conn)
            .and_then(|client| client.attached.remove(session_id));
        let Some(machine_id) = machine_id else {
            return vec![Effect::ToClient {
                conn,
                wire: ToClientWire::Error {
                    code: ErrorCode::NotAttached,
                    message: "not attached to that session",
                },
            }];
        };
        let mut effects = Vec::new();
        self.unwatch(&machine_id, session_id, conn, true, &mut effects);
        effects
    }

    /// `create_session` from a client.
    pub fn create_session(
        &self,
        conn: ConnId,
        machine_id: &str,
        name: &str,
        command: &str,
    ) -> Vec<Effect> {
        let Some(agent) = self.owned_agent(conn, machine_id) else {
            return not_found(conn);
        };
        vec![Effect::ToAgent {
            conn: agent.conn,
            wire: ToAgentWire::StartSession {
                name: name.to_owned(),
                command: command.to_owned(),
            },
        }]
    }

    /// The agent of `machine_id` if it is online and belongs to the client's user.
    fn owned_agent(&self, conn: ConnId, machine_id: &str) -> Option<&Agent> {
        let client = self.clients.get(&conn)?;
        self.agents
            .get(machine_id)
            .filter(|agent| agent.user_id == client.user_id)
    }

    fn with_count(&self, machine_id: &str, mut session: SessionInfo) -> SessionInfo {
        session.attached_clients = self
            .watchers
            .get(&(machine_id.to_owned(), session.id.clone()))
            .map_or(0, |w| w.len() as u32);
        session
    }

    fn tell_user(
        &self,
        user_id: &str,
        effects: &mut Vec<Effect>,
        wire: impl Fn(ConnId) -> ToClientWire,
    ) {
        for &conn in self.users.get(user_id).into_iter().flatten() {
            effects.push(Effect::ToClient {
                conn,
                wire: wire(conn),
            });
        }
    }

    /// Removes one client from one session's watchers; the agent hears `detach`, and the
    /// client `detached` if it asked (`reply`).
    fn unwatch(
        &mut self,
        machine_id: &str,
        session_id: &str,
        client: ConnId,
        reply: bool,
        effects: &mut Vec<Effect>,
    ) {
        let key = (machine_id.to_owned(), session_id.to_owned());
        if let Some(watchers) = self.watchers.get_mut(&key) {
            watchers.remove(&client);
            if watchers.is_empty() {
                self.watchers.remove(&key);
            }
        }
        if let Some(agent) = self.agents.get(machine_id) {
            effects.push(Effect::Unlink {
                agent: agent.conn,
                client,
                session_id: session_id.to_owned(),
                detach_agent: true,
                reply,
            });
        }
    }

    /// A session ends: its watchers are unlinked and detached; the user's clients are told.
    fn end_session(&mut self, machine_id: &str, session_id: &str, effects: &mut Vec<Effect>) {
        let Some(agent) = self.agents.get_mut(machine_id) else {
            return;
        };
        if agent.sessions.remove(session_id).is_none() {
            return;
        }
        let (agent_conn, user_id) = (agent.conn, agent.user_id.clone());
        let watchers = self
            .watchers
            .remove(&(machine_id.to_owned(), session_id.to_owned()))
            .unwrap_or_default();
        for client in watchers {
            if let Some(c) = self.clients.get_mut(&client) {
                c.attached.remove(session_id);
            }
            effects.push(Effect::Unlink {
                agent: agent_conn,
                client,
                session_id: session_id.to_owned(),
                detach_agent: false,
                reply: false,
            });
        }
        self.tell_user(&user_id, effects, |_| ToClientWire::SessionEnded {
            machine_id: machine_id.to_owned(),
            session_id: session_id.to_owned(),
        });
    }

    /// Removes an agent and every session of it; returns its user.
    fn remove_agent(&mut self, machine_id: &str, effects: &mut Vec<Effect>) -> Option<String> {
        let session_ids: Vec<String> = self
            .agents
            .get(machine_id)?
            .sessions
            .keys()
            .cloned()
            .collect();
        for session_id in session_ids {
            self.end_session(machine_id, &session_id, effects);
        }
        let agent = self.agents.remove(machine_id)?;
        self.agent_machines.remove(&agent.conn);
        Some(agent.user_id)
    }
}

fn not_found(conn: ConnId) -> Vec<Effect> {
    vec![Effect::ToClient {
        conn,
        wire: ToClientWire::Error {
            code: ErrorCode::MachineNotFound,
            message: "no such machine online",
        },
    }]
}

#[cfg(test)]
#[path = "machines_tests.rs"]
mod tests;
