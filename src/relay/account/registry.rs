//! The `MachineRegistry` actor: owns which agent holds which machine, the sessions agents
//! report and which clients are attached to them. It routes requests and links agents to
//! clients; it never carries terminal data.
//!
//! The rules live in [`MachineTable`]; the handlers delegate and carry out its [`Effect`]s.
//! A client's own requests are answered once everything they cause for that client is
//! queued, so the client reads its next frame only after the answer (see
//! [`ClientReply`]).

use std::collections::HashMap;
use std::time::Instant;

use actix::prelude::*;
use tokio::sync::oneshot;

use super::table::{Effect, Live, MachineDeleted, MachineTable};
use crate::ids::{ConnId, MachineId, Outcome, SessionId, UserId};
use crate::relay::delivery::{Command, Peer};
use crate::relay::protocol::account::ClientEvent;
use crate::relay::protocol::{Common, ErrorCode, SessionInfo};

/// Registry (or a client) → agent actor.
#[derive(Message)]
#[rtype(result = "()")]
pub enum ToAgent {
    /// Fan this session's output out to `client` too: queue `attach` to the agent, then
    /// (unless `relink`) `attached` to the client, then hand the client this agent — through
    /// `done` if it is waiting for it, else through its mailbox.
    Link {
        /// The session.
        session: SessionId,
        /// The client.
        client: Peer<ToClient>,
        /// A replacement agent takes over an attachment: the client is told nothing.
        relink: bool,
        /// Where the waiting client takes this agent's peer.
        done: Option<oneshot::Sender<Peer<ToAgent>>>,
    },
    /// Stop sending this session's output to `client`.
    Unlink {
        /// The session.
        session: SessionId,
        /// The client connection.
        client: ConnId,
        /// Queue `detach` to the agent.
        detach_agent: bool,
        /// The client asked: queue `detached` to it, after the last output.
        reply_to: Option<Peer<ToClient>>,
    },
    /// Close the connection.
    Close(Outcome),
}

impl Command for ToAgent {
    fn close(outcome: Outcome) -> Self {
        Self::Close(outcome)
    }
}

/// Registry (or an agent) → client actor.
#[derive(Message)]
#[rtype(result = "()")]
pub enum ToClient {
    /// Input for this session now goes to `agent` (a replacement agent took over).
    Link {
        /// The session.
        session: SessionId,
        /// The agent.
        agent: Peer<ToAgent>,
    },
    /// The client is no longer attached to this session (it ended).
    Unlink {
        /// The session.
        session: SessionId,
    },
    /// Close the connection.
    Close(Outcome),
}

impl Command for ToClient {
    fn close(outcome: Outcome) -> Self {
        Self::Close(outcome)
    }
}

/// Agent actor → registry: its token checked out for a machine. Answered with whether it
/// may come online (a machine deleted meanwhile may not).
#[derive(Message)]
#[rtype(result = "Result<(), MachineDeleted>")]
pub struct AgentOnline {
    /// Its machine.
    pub machine: MachineId,
    /// The machine's owner.
    pub user: UserId,
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
        session: SessionId,
    },
}

/// Agent actor → registry, from `stopping()` (only if it had come online).
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
    /// Its user.
    pub user: UserId,
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
        machine: MachineId,
    },
    /// `attach`.
    Attach {
        /// The machine.
        machine: MachineId,
        /// The session.
        session: SessionId,
    },
    /// `detach`.
    Detach {
        /// The session.
        session: SessionId,
    },
    /// `create_session`.
    CreateSession {
        /// The machine.
        machine: MachineId,
        /// Its name.
        name: String,
        /// What to run.
        command: String,
    },
}

/// Client actor → registry: one [`ClientCommand`], answered with a [`ClientReply`].
#[derive(Message)]
#[rtype(result = "ClientReply")]
pub struct ClientAsk {
    /// The client connection.
    pub conn: ConnId,
    /// What it asks.
    pub command: ClientCommand,
}

/// What a client's request leaves it to wait for.
#[derive(MessageResponse)]
pub enum ClientReply {
    /// Everything is queued: read on.
    Done,
    /// An attach is being linked by the agent's actor: wait for the agent's peer, which
    /// arrives once `attach` and `attached` are queued.
    Linking(oneshot::Receiver<Peer<ToAgent>>),
}

/// REST or client → registry: the live state of these machines, in order.
#[derive(Message)]
#[rtype(result = "Vec<Live>")]
pub struct MachineStatus {
    /// Machines to look up.
    pub machines: Vec<MachineId>,
}

/// REST → registry: a machine was deleted; drop its agent, and never let it back online.
#[derive(Message)]
#[rtype(result = "()")]
pub struct DropMachine {
    /// The deleted machine.
    pub machine: MachineId,
}

/// Admin watcher → registry: which users and machines are online now.
#[derive(Message)]
#[rtype(result = "Online")]
pub struct WhoIsOnline;

/// What [`WhoIsOnline`] answers.
#[derive(Debug, Default, MessageResponse)]
pub struct Online {
    /// Users with a client or an agent online.
    pub users: Vec<UserId>,
    /// Machines with an agent online.
    pub machines: Vec<MachineId>,
}

/// Admin watcher → registry: a user was disabled or deleted; close its clients (told
/// `USER_NOT_FOUND` first) and drop its agents.
#[derive(Message)]
#[rtype(result = "()")]
pub struct DropUser {
    /// The user.
    pub user: UserId,
}

/// The account-mode registry actor.
#[derive(Default)]
pub struct MachineRegistry {
    table: MachineTable,
    agents: HashMap<ConnId, Peer<ToAgent>>,
    clients: HashMap<ConnId, Peer<ToClient>>,
}

impl MachineRegistry {
    /// Carries out `effects`, in order. A link for `waiting` (the client whose request this
    /// is) hands it the agent through the returned receiver.
    fn apply(&mut self, effects: Vec<Effect>, waiting: Option<ConnId>) -> ClientReply {
        let mut reply = ClientReply::Done;
        for effect in effects {
            match effect {
                Effect::ToAgent { conn, event } => {
                    if let Some(agent) = self.agents.get(&conn) {
                        agent.send(&event);
                    }
                }
                Effect::ToClient { conn, event } => {
                    if let Some(client) = self.clients.get(&conn) {
                        client.send(&event);
                    }
                }
                Effect::ClientError {
                    conn,
                    code,
                    message,
                } => {
                    if let Some(client) = self.clients.get(&conn) {
                        client.send(&Common::error(code, message));
                    }
                }
                Effect::Link {
                    agent,
                    client,
                    session,
                    relink,
                } => {
                    let (Some(a), Some(c)) = (self.agents.get(&agent), self.clients.get(&client))
                    else {
                        continue;
                    };
                    let done = (Some(client) == waiting).then(|| {
                        let (tx, rx) = oneshot::channel();
                        reply = ClientReply::Linking(rx);
                        tx
                    });
                    // An agent on its way out drops this, and with it `done`: the waiting
                    // client then hears MACHINE_NOT_FOUND; its departure ends the session.
                    a.tell(ToAgent::Link {
                        session,
                        client: c.clone(),
                        relink,
                        done,
                    });
                }
                Effect::Unlink {
                    agent,
                    client,
                    session,
                    detach_agent,
                    reply: wants_reply,
                } => {
                    let client_peer = self.clients.get(&client).cloned();
                    match self.agents.get(&agent).filter(|a| a.is_live()) {
                        Some(a) => {
                            if !wants_reply {
                                if let Some(c) = &client_peer {
                                    c.tell(ToClient::Unlink {
                                        session: session.clone(),
                                    });
                                }
                            }
                            a.tell(ToAgent::Unlink {
                                session,
                                client,
                                detach_agent,
                                reply_to: client_peer.filter(|_| wants_reply),
                            });
                        }
                        // No agent actor to answer after the last output: answer here.
                        None => {
                            if let Some(c) = client_peer {
                                if wants_reply {
                                    c.send(&ClientEvent::Detached {
                                        session_id: std::borrow::Cow::Borrowed(&session),
                                    });
                                } else {
                                    c.tell(ToClient::Unlink { session });
                                }
                            }
                        }
                    }
                }
                Effect::DropAgent { conn, outcome } => {
                    if let Some(agent) = self.agents.remove(&conn) {
                        agent.close(outcome);
                    }
                }
            }
        }
        reply
    }
}

impl Actor for MachineRegistry {
    type Context = Context<Self>;
}

impl Handler<AgentOnline> for MachineRegistry {
    type Result = Result<(), MachineDeleted>;

    fn handle(&mut self, msg: AgentOnline, _: &mut Context<Self>) -> Self::Result {
        let conn = msg.peer.conn;
        let effects = self
            .table
            .agent_online(conn, &msg.machine, &msg.user, Instant::now())?;
        // Apply first: a replaced agent is still in `agents` to receive its close.
        self.apply(effects, None);
        self.agents.insert(conn, msg.peer);
        Ok(())
    }
}

impl Handler<AgentReport> for MachineRegistry {
    type Result = ();

    fn handle(&mut self, msg: AgentReport, _: &mut Context<Self>) {
        let effects = match msg {
            AgentReport::Sessions { conn, sessions } => self.table.agent_sessions(conn, sessions),
            AgentReport::Started { conn, session } => self.table.session_started(conn, session),
            AgentReport::Ended { conn, session } => self.table.session_ended(conn, &session),
        };
        self.apply(effects, None);
    }
}

impl Handler<AgentOffline> for MachineRegistry {
    type Result = ();

    fn handle(&mut self, msg: AgentOffline, _: &mut Context<Self>) {
        let effects = self.table.agent_offline(msg.conn);
        self.apply(effects, None);
        self.agents.remove(&msg.conn);
    }
}

impl Handler<ClientOnline> for MachineRegistry {
    type Result = ();

    fn handle(&mut self, msg: ClientOnline, _: &mut Context<Self>) {
        self.table.client_online(msg.peer.conn, &msg.user);
        self.clients.insert(msg.peer.conn, msg.peer);
    }
}

impl Handler<ClientOffline> for MachineRegistry {
    type Result = ();

    fn handle(&mut self, msg: ClientOffline, _: &mut Context<Self>) {
        let effects = self.table.client_offline(msg.conn);
        self.apply(effects, None);
        self.clients.remove(&msg.conn);
    }
}

impl Handler<ClientAsk> for MachineRegistry {
    type Result = ClientReply;

    fn handle(&mut self, msg: ClientAsk, _: &mut Context<Self>) -> ClientReply {
        let conn = msg.conn;
        let effects = match msg.command {
            ClientCommand::ListSessions { machine } => self.table.list_sessions(conn, &machine),
            ClientCommand::Attach { machine, session } => {
                self.table.attach(conn, &machine, &session)
            }
            ClientCommand::Detach { session } => self.table.detach(conn, &session),
            ClientCommand::CreateSession {
                machine,
                name,
                command,
            } => self.table.create_session(conn, &machine, name, command),
        };
        self.apply(effects, Some(conn))
    }
}

impl Handler<MachineStatus> for MachineRegistry {
    type Result = MessageResult<MachineStatus>;

    fn handle(&mut self, msg: MachineStatus, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.table.status(&msg.machines))
    }
}

impl Handler<DropMachine> for MachineRegistry {
    type Result = ();

    fn handle(&mut self, msg: DropMachine, _: &mut Context<Self>) {
        let effects = self.table.machine_deleted(&msg.machine, Instant::now());
        self.apply(effects, None);
    }
}

impl Handler<WhoIsOnline> for MachineRegistry {
    type Result = Online;

    fn handle(&mut self, _: WhoIsOnline, _: &mut Context<Self>) -> Online {
        let (users, machines) = self.table.online();
        Online { users, machines }
    }
}

impl Handler<DropUser> for MachineRegistry {
    type Result = ();

    fn handle(&mut self, msg: DropUser, _: &mut Context<Self>) {
        let (clients, effects) = self.table.user_removed(&msg.user);
        for conn in clients {
            if let Some(client) = self.clients.get(&conn) {
                client.send(&Common::error(
                    ErrorCode::UserNotFound,
                    "this account was disabled or deleted",
                ));
                client.close(Outcome::Refused);
            }
        }
        self.apply(effects, None);
    }
}
