//! The registry's account-mode messages and handlers: agents and clients register here,
//! and the effects of [`MachineTable`](super::machines::MachineTable) are carried out.

use actix::prelude::*;

use super::machines::{Effect, ToAgentWire, ToClientWire};
use super::pairings::ConnId;
use super::{Peer, SessionRegistry};
use crate::relay::protocol::{AgentEvent, ClientEvent, Common, ErrorCode, SessionInfo};
use crate::relay::socket::Outcome;
use crate::transport::text_frame;

/// Registry (or a client) → agent actor.
#[derive(Message)]
#[rtype(result = "()")]
pub enum ToAgent {
    /// Fan this session's output out to `client` too; queue `attach` to the agent and
    /// `attached` to the client, then give the client this agent's outbox.
    Link {
        /// The session.
        session_id: String,
        /// The client connection.
        client: ConnId,
        /// How to reach it.
        peer: Peer<ToClient>,
    },
    /// Stop sending this session's output to `client`.
    Unlink {
        /// The session.
        session_id: String,
        /// The client connection.
        client: ConnId,
        /// Queue `detach` to the agent.
        detach_agent: bool,
        /// The client asked: queue `detached` to it and unlink it, after the last output.
        reply_to: Option<Peer<ToClient>>,
    },
    /// Close the connection.
    Drop(Outcome),
}

/// Registry (or an agent) → client actor.
#[derive(Message)]
#[rtype(result = "()")]
pub enum ToClient {
    /// Input for this session goes to `agent`.
    Link {
        /// The session.
        session_id: String,
        /// The agent.
        agent: Peer<ToAgent>,
    },
    /// The client is no longer attached to this session.
    Unlink {
        /// The session.
        session_id: String,
    },
    /// Close the connection.
    Drop(Outcome),
}

/// Agent actor → registry: authenticated for a machine.
#[derive(Message)]
#[rtype(result = "()")]
pub struct AgentOnline {
    /// The agent connection.
    pub conn: ConnId,
    /// Its machine.
    pub machine_id: String,
    /// The machine's owner.
    pub user_id: String,
    /// How to reach it.
    pub peer: Peer<ToAgent>,
}

/// Agent actor → registry: what the agent reported.
#[derive(Message)]
#[rtype(result = "()")]
pub enum AgentReport {
    /// `sessions`: the full list.
    Sessions {
        /// The agent connection.
        conn: ConnId,
        /// Every session.
        sessions: Vec<SessionInfo>,
    },
    /// `session_started`.
    Started {
        /// The agent connection.
        conn: ConnId,
        /// The session.
        session: SessionInfo,
    },
    /// `session_ended`.
    Ended {
        /// The agent connection.
        conn: ConnId,
        /// The session.
        session_id: String,
    },
}

/// Agent actor → registry, from `stopping()` (only if it had authenticated).
#[derive(Message)]
#[rtype(result = "()")]
pub struct AgentOffline {
    /// The agent connection.
    pub conn: ConnId,
}

/// Client actor → registry: authenticated as a user.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ClientOnline {
    /// The client connection.
    pub conn: ConnId,
    /// Its user.
    pub user_id: String,
    /// How to reach it.
    pub peer: Peer<ToClient>,
}

/// Client actor → registry, from `stopping()` (only if it had authenticated).
#[derive(Message)]
#[rtype(result = "()")]
pub struct ClientOffline {
    /// The client connection.
    pub conn: ConnId,
}

/// A client request that the registry answers (ownership is checked there).
#[derive(Debug)]
pub enum ClientCommand {
    /// `list_sessions`.
    ListSessions {
        /// The machine.
        machine_id: String,
    },
    /// `attach`.
    Attach {
        /// The machine.
        machine_id: String,
        /// The session.
        session_id: String,
    },
    /// `detach`.
    Detach {
        /// The session.
        session_id: String,
    },
    /// `create_session`.
    CreateSession {
        /// The machine.
        machine_id: String,
        /// Its name.
        name: String,
        /// What to run.
        command: String,
    },
}

/// Client actor → registry: one [`ClientCommand`].
#[derive(Message)]
#[rtype(result = "()")]
pub struct ClientRequest {
    /// The client connection.
    pub conn: ConnId,
    /// What it asks.
    pub command: ClientCommand,
}

impl SessionRegistry {
    /// Carries out account-mode effects, in order.
    pub(super) fn apply_account(&mut self, effects: Vec<Effect>) {
        for effect in effects {
            match effect {
                Effect::ToAgent { conn, wire } => {
                    if let Some(peer) = self.agents.get(&conn) {
                        if peer.outbox.push(agent_frame(&wire)).is_err() {
                            peer.addr.do_send(ToAgent::Drop(Outcome::SlowConsumer));
                        }
                    }
                }
                Effect::ToClient { conn, wire } => {
                    if let Some(peer) = self.clients.get(&conn) {
                        if peer.outbox.push(client_frame(&wire)).is_err() {
                            peer.addr.do_send(ToClient::Drop(Outcome::SlowConsumer));
                        }
                    }
                }
                Effect::Link {
                    agent,
                    client,
                    session_id,
                } => {
                    let (Some(a), Some(c)) = (self.agents.get(&agent), self.clients.get(&client))
                    else {
                        continue;
                    };
                    let link = ToAgent::Link {
                        session_id,
                        client,
                        peer: c.clone(),
                    };
                    if deliver(&a.addr, link).is_err() {
                        // The agent is on its way out; its departure will end the session.
                        let _ = c.outbox.push(text_frame(&Common::error(
                            ErrorCode::MachineNotFound,
                            "no such machine online",
                        )));
                    }
                }
                Effect::Unlink {
                    agent,
                    client,
                    session_id,
                    detach_agent,
                    reply,
                } => {
                    let client_peer = self.clients.get(&client).cloned();
                    let unlink = ToAgent::Unlink {
                        session_id: session_id.clone(),
                        client,
                        detach_agent,
                        reply_to: if reply { client_peer.clone() } else { None },
                    };
                    let via_agent = self
                        .agents
                        .get(&agent)
                        .is_some_and(|a| deliver(&a.addr, unlink).is_ok());
                    // Unless the agent's actor answers the client itself (a detach it asked
                    // for, so `detached` follows the last output), unlink the client here.
                    if !(reply && via_agent) {
                        if let Some(c) = client_peer {
                            let detached = text_frame(&ClientEvent::Detached {
                                session_id: &session_id,
                            });
                            c.addr.do_send(ToClient::Unlink { session_id });
                            if reply {
                                let _ = c.outbox.push(detached);
                            }
                        }
                    }
                }
                Effect::DropAgent { conn, revoked } => {
                    if let Some(peer) = self.agents.remove(&conn) {
                        let outcome = if revoked {
                            Outcome::Refused
                        } else {
                            Outcome::Replaced
                        };
                        peer.addr.do_send(ToAgent::Drop(outcome));
                    }
                }
            }
        }
    }
}

/// Sends a message to a live actor whatever its mailbox holds; `Err` if it has stopped.
fn deliver(addr: &Recipient<ToAgent>, msg: ToAgent) -> Result<(), ()> {
    match addr.try_send(msg) {
        Ok(()) => Ok(()),
        Err(SendError::Full(msg)) => {
            addr.do_send(msg);
            Ok(())
        }
        Err(SendError::Closed(_)) => Err(()),
    }
}

fn agent_frame(wire: &ToAgentWire) -> bytes::Bytes {
    match wire {
        ToAgentWire::StartSession { name, command } => {
            text_frame(&AgentEvent::StartSession { name, command })
        }
    }
}

fn client_frame(wire: &ToClientWire) -> bytes::Bytes {
    match wire {
        ToClientWire::Sessions {
            machine_id,
            sessions,
        } => text_frame(&ClientEvent::Sessions {
            machine_id,
            sessions,
        }),
        ToClientWire::Attached { session_id } => text_frame(&ClientEvent::Attached { session_id }),
        ToClientWire::SessionStarted {
            machine_id,
            session,
        } => text_frame(&ClientEvent::SessionStarted {
            machine_id,
            session,
        }),
        ToClientWire::SessionEnded {
            machine_id,
            session_id,
        } => text_frame(&ClientEvent::SessionEnded {
            machine_id,
            session_id,
        }),
        ToClientWire::MachineStatus { machine_id, online } => {
            text_frame(&ClientEvent::MachineStatus {
                machine_id,
                online: *online,
            })
        }
        ToClientWire::Error { code, message } => text_frame(&Common::error(*code, *message)),
    }
}

impl Handler<AgentOnline> for SessionRegistry {
    type Result = ();

    fn handle(&mut self, msg: AgentOnline, _: &mut Context<Self>) {
        let effects = self
            .machines
            .agent_online(msg.conn, &msg.machine_id, &msg.user_id);
        // Apply first: a replaced agent is still in `agents` to receive its Drop.
        self.apply_account(effects);
        self.agents.insert(msg.conn, msg.peer);
    }
}

impl Handler<AgentReport> for SessionRegistry {
    type Result = ();

    fn handle(&mut self, msg: AgentReport, _: &mut Context<Self>) {
        let effects = match msg {
            AgentReport::Sessions { conn, sessions } => {
                self.machines.agent_sessions(conn, sessions)
            }
            AgentReport::Started { conn, session } => self.machines.session_started(conn, session),
            AgentReport::Ended { conn, session_id } => {
                self.machines.session_ended(conn, &session_id)
            }
        };
        self.apply_account(effects);
    }
}

impl Handler<AgentOffline> for SessionRegistry {
    type Result = ();

    fn handle(&mut self, msg: AgentOffline, _: &mut Context<Self>) {
        let effects = self.machines.agent_offline(msg.conn);
        self.apply_account(effects);
        self.agents.remove(&msg.conn);
    }
}

impl Handler<ClientOnline> for SessionRegistry {
    type Result = ();

    fn handle(&mut self, msg: ClientOnline, _: &mut Context<Self>) {
        self.machines.client_online(msg.conn, &msg.user_id);
        self.clients.insert(msg.conn, msg.peer);
    }
}

impl Handler<ClientOffline> for SessionRegistry {
    type Result = ();

    fn handle(&mut self, msg: ClientOffline, _: &mut Context<Self>) {
        let effects = self.machines.client_offline(msg.conn);
        self.apply_account(effects);
        self.clients.remove(&msg.conn);
    }
}

impl Handler<ClientRequest> for SessionRegistry {
    type Result = ();

    fn handle(&mut self, msg: ClientRequest, _: &mut Context<Self>) {
        let conn = msg.conn;
        let effects = match msg.command {
            ClientCommand::ListSessions { machine_id } => {
                self.machines.list_sessions(conn, &machine_id)
            }
            ClientCommand::Attach {
                machine_id,
                session_id,
            } => self.machines.attach(conn, &machine_id, &session_id),
            ClientCommand::Detach { session_id } => self.machines.detach(conn, &session_id),
            ClientCommand::CreateSession {
                machine_id,
                name,
                command,
            } => self
                .machines
                .create_session(conn, &machine_id, &name, &command),
        };
        self.apply_account(effects);
    }
}
