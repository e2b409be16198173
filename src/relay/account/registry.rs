//! The `MachineRegistry` actor: owns which agent holds which machine, the sessions agents
//! report and which clients are attached to them. It routes requests and links agents to
//! clients; it never carries terminal data.
//!
//! The rules live in [`MachineTable`]; the handlers delegate and carry out its [`Effect`]s.
//! A client's own requests are answered once everything they cause for that client is
//! queued, so the client reads its next frame only after the answer (see
//! [`ClientReply`]). The data paths — attachments and each machine's session pipes (see
//! [`super::streams`]) — are made here and handed to the connections, which push data
//! through them directly.
//!
//! Lossless mode: a lost lossless client or agent is not forgotten at once; for
//! `pairing.resume_grace_secs` its attachments (or its machine's sessions) keep what is
//! sent to it, and a new connection of the same client (same `clientId`) or agent (same
//! machine) takes its place.

use crate::ids::HashMap;
use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use tokio::sync::oneshot;

use serde::{Deserialize, Serialize};

use super::streams::{
    Attachment, AttachmentState, MachinePipes, MachinePipesState, SharedAttachment,
    SharedMachinePipes,
};
pub use super::streams::{ToAgent, ToClient};
use super::table::{Effect, Live, MachineDeleted, MachineTable, UserRecord};
use crate::ids::{ClientKey, ConnId, Departure, HashSet, MachineId, Outcome, SessionId, UserId};
use crate::relay::deadlines::Deadlines;
use crate::relay::delivery::{lock, Peer, StreamLimits};
use crate::relay::protocol::account::ClientEvent;
use crate::relay::protocol::{Common, ErrorCode, SessionInfo};

/// Agent actor → registry: its token checked out for a machine. Answered with the
/// machine's pipes, or refused if the machine was deleted meanwhile.
#[derive(Message)]
#[rtype(result = "Result<SharedMachinePipes, MachineDeleted>")]
pub struct AgentOnline {
    /// Its machine.
    pub machine: MachineId,
    /// The machine's owner.
    pub user: UserId,
    /// How to reach it.
    pub peer: Peer<ToAgent>,
    /// It asked for lossless mode.
    pub lossless: bool,
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
    /// How it left: a lossless agent may come back from a lost connection within the
    /// grace period, and any agent that moved (its node left: it reconnects elsewhere).
    pub departure: Departure,
}

/// Client actor → registry: authenticated as a user. Answered with the id the client is
/// known by, and — when a lossless client takes its own earlier connection's place — the
/// attachments it had.
#[derive(Message)]
#[rtype(result = "ClientWelcome")]
pub struct ClientOnline {
    /// Its user.
    pub user: UserId,
    /// How to reach it.
    pub peer: Peer<ToClient>,
    /// Lossless mode, with the key it resumes by.
    pub lossless: Option<ClientKey>,
}

/// What [`ClientOnline`] answers.
#[derive(MessageResponse)]
pub struct ClientWelcome {
    /// The id the registry and agents know this client by (an earlier connection's, when
    /// it took that one's place).
    pub client: ConnId,
    /// Attachments it resumes: each waits for `attach` with `lastSeq`.
    pub attachments: Vec<(SessionId, SharedAttachment, SharedMachinePipes)>,
}

/// Client actor → registry, from `stopping()` (only if it had authenticated).
#[derive(Message)]
#[rtype(result = "()")]
pub struct ClientOffline {
    /// The id the registry knows the client by.
    pub client: ConnId,
    /// The connection that ended (a newer one may have taken its place).
    pub conn: ConnId,
    /// How it left: a lossless client may resume from anything but a clean close within
    /// the grace period.
    pub departure: Departure,
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
    /// The client.
    pub client: ConnId,
    /// What it asks.
    pub command: ClientCommand,
    /// Lossless mode, re-attaching: the last output `seq` it received.
    pub last_seq: Option<u64>,
}

/// What a client's request leaves it to take or wait for.
#[derive(MessageResponse)]
pub enum ClientReply {
    /// Everything is queued: read on.
    Done,
    /// A new attachment, being linked by the agent's actor: wait for `linked`, which comes
    /// once `attach` and `attached` are queued; then input goes through `pipes`.
    Linking {
        /// The session.
        session: SessionId,
        /// Told when linked.
        linked: oneshot::Receiver<()>,
        /// The attachment.
        attachment: SharedAttachment,
        /// Its machine's pipes.
        pipes: SharedMachinePipes,
    },
    /// An attachment the client already had is connected again (after `attached`, its
    /// `ack`, and what it missed).
    Resumed {
        /// The session.
        session: SessionId,
        /// The attachment.
        attachment: SharedAttachment,
        /// Its machine's pipes.
        pipes: SharedMachinePipes,
    },
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

/// Leaving node → registry: take out every user's agents and lossless clients that are
/// away (after the node closed its connections, all of them), for another node.
#[derive(Message)]
#[rtype(result = "Vec<UserHandoff>")]
pub struct ExportUsers;

/// Registry of the node adopting → itself: install a user handed over, its agents and
/// clients away for a full grace period. Answers whether anything was installed.
#[derive(Message)]
#[rtype(result = "bool")]
pub struct AdoptUser(pub UserHandoff);

/// One user's agents and lossless clients, handed from a node that leaves to another (see
/// `super::handoff`): the table's part, each agent's machine pipes, each client's key and
/// attachments.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UserHandoff {
    /// Agents, clients, sessions and who is attached where.
    pub table: UserRecord,
    /// Each agent's machine: its sessions' input streams.
    pub machines: Vec<(MachineId, MachinePipesState)>,
    /// Each client.
    pub clients: Vec<ClientHandoff>,
}

/// A lossless client handed over.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClientHandoff {
    /// The id it is known by.
    pub client: ConnId,
    /// The key it resumes by.
    pub key: ClientKey,
    /// Its attachments: machine, and the attachment's streams.
    pub attachments: Vec<(MachineId, AttachmentState)>,
}

/// An agent connection the registry knows.
struct AgentEntry {
    peer: Peer<ToAgent>,
    machine: MachineId,
    lossless: bool,
}

/// A client the registry knows, by the id it was first known by.
struct ClientEntry {
    peer: Peer<ToClient>,
    user: UserId,
    /// Lossless mode: the key it may resume by.
    key: Option<ClientKey>,
    attachments: HashMap<SessionId, (SharedAttachment, MachineId)>,
}

/// A lost connection that may come back within the grace period.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Away {
    Client(ConnId),
    Agent(ConnId),
}

/// The account-mode registry actor.
pub struct MachineRegistry {
    table: MachineTable,
    limits: StreamLimits,
    /// How long a lost lossless side may come back (`pairing.resume_grace_secs`).
    grace: Duration,
    agents: HashMap<ConnId, AgentEntry>,
    /// Each online (or briefly away) machine's data paths.
    machines: HashMap<MachineId, SharedMachinePipes>,
    clients: HashMap<ConnId, ClientEntry>,
    /// Lossless clients by their key, to take their own place on a new connection.
    keys: HashMap<(UserId, ClientKey), ConnId>,
    away: Deadlines<Away>,
    armed: Option<(Instant, SpawnHandle)>,
}

impl MachineRegistry {
    /// A registry whose streams are bounded by `limits`, and whose lost lossless sides may
    /// come back within `grace`.
    pub fn new(limits: StreamLimits, grace: Duration) -> Self {
        Self {
            table: MachineTable::default(),
            limits,
            grace,
            agents: HashMap::default(),
            machines: HashMap::default(),
            clients: HashMap::default(),
            keys: HashMap::default(),
            away: Deadlines::default(),
            armed: None,
        }
    }

    fn pipes(&self, machine: &MachineId) -> Option<SharedMachinePipes> {
        self.machines.get(machine).cloned()
    }

    /// Carries out `effects`, in order. `asking` is the client whose request this is (its
    /// new or resumed attachment comes back in the reply), with its `lastSeq`.
    fn apply(
        &mut self,
        effects: Vec<Effect>,
        asking: Option<(ConnId, Option<u64>)>,
    ) -> ClientReply {
        let mut reply = ClientReply::Done;
        for effect in effects {
            match effect {
                Effect::ToAgent { conn, event } => {
                    if let Some(agent) = self.agents.get(&conn) {
                        agent.peer.send(&event);
                    }
                }
                Effect::ToClient {
                    conn,
                    event: ClientEvent::Attached { session_id, .. },
                } => {
                    // Attached already: a repeated `attach`, or a resumed client's.
                    let last_seq = asking.and_then(|(c, last)| last.filter(|_| c == conn));
                    if let Some(resumed) = self.reattach(conn, session_id.into_owned(), last_seq) {
                        reply = resumed;
                    }
                }
                Effect::ToClient { conn, event } => {
                    if let Some(client) = self.clients.get(&conn) {
                        client.peer.send(&event);
                    }
                }
                Effect::ClientError {
                    conn,
                    code,
                    message,
                } => {
                    if let Some(client) = self.clients.get(&conn) {
                        client.peer.send(&Common::error(code, message));
                    }
                }
                Effect::Link {
                    agent,
                    client,
                    machine,
                    session,
                    relink,
                } => {
                    if let Some(linking) = self.link(agent, client, machine, session, relink) {
                        if asking.is_some_and(|(c, _)| c == client) {
                            reply = linking;
                        }
                    }
                }
                Effect::Unlink {
                    agent,
                    client,
                    session,
                    detach_agent,
                    reply: wants_reply,
                } => self.unlink(agent, client, session, detach_agent, wants_reply),
                Effect::EndSession { machine, session } => {
                    if let Some(pipes) = self.machines.get(&machine) {
                        lock(pipes).end(&session);
                    }
                }
                Effect::DropAgent { conn, outcome } => {
                    self.away.cancel(&Away::Agent(conn));
                    if let Some(agent) = self.agents.remove(&conn) {
                        agent.peer.close(outcome);
                    }
                }
            }
        }
        reply
    }

    /// Links an attachment: a new one (made here, output going to the client now) or, for
    /// a replacement agent, the one the client has. Returns the reply for a waiting client.
    fn link(
        &mut self,
        agent: ConnId,
        client: ConnId,
        machine: MachineId,
        session: SessionId,
        relink: bool,
    ) -> Option<ClientReply> {
        let agent_peer = self.agents.get(&agent)?.peer.clone();
        let pipes = self.pipes(&machine)?;
        let limits = self.limits;
        let entry = self.clients.get_mut(&client)?;
        if relink {
            let (attachment, _) = entry.attachments.get(&session)?;
            agent_peer.tell(ToAgent::Link {
                session,
                attachment: Arc::clone(attachment),
                relink: true,
                done: None,
            });
            return None;
        }
        let lossless = entry.key.is_some();
        let attachment = Attachment::shared(
            session.clone(),
            client,
            entry.peer.clone(),
            limits,
            lossless,
        );
        entry
            .attachments
            .insert(session.clone(), (Arc::clone(&attachment), machine));
        let (done, linked) = oneshot::channel();
        // An agent on its way out drops this, and with it `done`: the waiting client then
        // hears MACHINE_NOT_FOUND; its departure ends the session.
        agent_peer.tell(ToAgent::Link {
            session: session.clone(),
            attachment: Arc::clone(&attachment),
            relink: false,
            done: Some(done),
        });
        Some(ClientReply::Linking {
            session,
            linked,
            attachment,
            pipes,
        })
    }

    /// `attach` for a session the client is attached to already. An attachment waiting for
    /// its resumed client is connected again — `attached`, its `ack`, then what it missed
    /// after `last_seq` — and returned; otherwise the client just hears `attached`.
    fn reattach(
        &mut self,
        client: ConnId,
        session: SessionId,
        last_seq: Option<u64>,
    ) -> Option<ClientReply> {
        let entry = self.clients.get(&client)?;
        let Some((attachment, machine)) = entry.attachments.get(&session) else {
            entry.peer.send(&ClientEvent::Attached {
                session_id: Cow::Borrowed(&session),
                resumed: None,
            });
            return None;
        };
        let mut shared = lock(attachment);
        let lossless = shared.to_client.is_numbered();
        entry.peer.send(&ClientEvent::Attached {
            session_id: Cow::Borrowed(&session),
            resumed: lossless.then_some(true),
        });
        if shared.to_client.peer().is_some() {
            return None;
        }
        if lossless {
            entry.peer.send(&ClientEvent::Ack {
                session_id: Cow::Borrowed(&session),
                seq: shared.from_client,
            });
        }
        shared.to_client.connect(entry.peer.clone(), last_seq);
        drop(shared);
        Some(ClientReply::Resumed {
            session,
            attachment: Arc::clone(attachment),
            pipes: self.pipes(machine)?,
        })
    }

    /// Ends one attachment.
    fn unlink(
        &mut self,
        agent: ConnId,
        client: ConnId,
        session: SessionId,
        detach_agent: bool,
        reply: bool,
    ) {
        let Some(entry) = self.clients.get_mut(&client) else {
            return;
        };
        entry.attachments.remove(&session);
        let client_peer = entry.peer.clone();
        if !reply {
            client_peer.tell(ToClient::Unlink {
                session: session.clone(),
            });
        }
        match self.agents.get(&agent).filter(|a| a.peer.is_live()) {
            Some(agent) => agent.peer.tell(ToAgent::Unlink {
                session,
                client,
                detach_agent,
                reply,
            }),
            // No agent actor to answer after the last output: answer here.
            None if reply => {
                client_peer.send(&ClientEvent::Detached {
                    session_id: Cow::Borrowed(&session),
                });
            }
            None => {}
        }
    }

    /// The client is gone for good: detached everywhere.
    fn client_gone(&mut self, client: ConnId) {
        self.away.cancel(&Away::Client(client));
        let effects = self.table.client_offline(client);
        self.apply(effects, None);
        if let Some(entry) = self.clients.remove(&client) {
            if let Some(key) = entry.key {
                self.keys.remove(&(entry.user, key));
            }
        }
    }

    /// The agent is gone for good: its machine goes offline, its sessions end.
    fn agent_gone(&mut self, conn: ConnId) {
        self.away.cancel(&Away::Agent(conn));
        let effects = self.table.agent_offline(conn);
        self.apply(effects, None);
        if let Some(agent) = self.agents.remove(&conn) {
            let still_online = self.agents.values().any(|a| a.machine == agent.machine);
            if !still_online {
                self.machines.remove(&agent.machine);
            }
        }
    }

    /// A user's part of the table with the streams that go with it, for another node.
    fn handoff(&self, table: UserRecord) -> UserHandoff {
        let machines = table
            .agents
            .iter()
            .filter_map(|agent| {
                let pipes = self.machines.get(&agent.machine)?;
                Some((agent.machine.clone(), lock(pipes).export()))
            })
            .collect();
        let clients = table
            .clients
            .iter()
            .filter_map(|record| {
                let entry = self.clients.get(&record.conn)?;
                let attachments = record
                    .attached
                    .iter()
                    .filter_map(|(session, machine)| {
                        let (attachment, _) = entry.attachments.get(session)?;
                        Some((machine.clone(), lock(attachment).export()))
                    })
                    .collect();
                Some(ClientHandoff {
                    client: record.conn,
                    key: entry.key.clone()?,
                    attachments,
                })
            })
            .collect();
        UserHandoff {
            table,
            machines,
            clients,
        }
    }

    /// Arms the one timer for the earliest grace period, if that changed.
    fn rearm(&mut self, ctx: &mut Context<Self>) {
        let next = self.away.next();
        if next == self.armed.as_ref().map(|(at, _)| *at) {
            return;
        }
        if let Some((_, handle)) = self.armed.take() {
            ctx.cancel_future(handle);
        }
        if let Some(at) = next {
            let after = at.saturating_duration_since(Instant::now());
            let handle = ctx.run_later(after, |registry, ctx| {
                registry.armed = None;
                while let Some(away) = registry.away.pop_due(Instant::now()) {
                    match away {
                        Away::Client(client) => registry.client_gone(client),
                        Away::Agent(conn) => registry.agent_gone(conn),
                    }
                }
                registry.rearm(ctx);
            });
            self.armed = Some((at, handle));
        }
    }
}

impl Actor for MachineRegistry {
    type Context = Context<Self>;
}

impl Handler<AgentOnline> for MachineRegistry {
    type Result = Result<SharedMachinePipes, MachineDeleted>;

    fn handle(&mut self, msg: AgentOnline, _: &mut Context<Self>) -> Self::Result {
        let conn = msg.peer.conn;
        let effects = self
            .table
            .agent_online(conn, &msg.machine, &msg.user, Instant::now())?;
        // Apply first: a replaced agent is still in `agents` to receive its close.
        self.apply(effects, None);
        let limits = self.limits;
        let pipes = Arc::clone(
            self.machines
                .entry(msg.machine.clone())
                .or_insert_with(|| MachinePipes::shared(limits)),
        );
        lock(&pipes).agent_online(msg.peer.clone(), msg.lossless);
        let entry = AgentEntry {
            peer: msg.peer,
            machine: msg.machine,
            lossless: msg.lossless,
        };
        self.agents.insert(conn, entry);
        Ok(pipes)
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

    fn handle(&mut self, msg: AgentOffline, ctx: &mut Context<Self>) {
        let Some(agent) = self.agents.get(&msg.conn) else {
            // Replaced or dropped already: its late close changes nothing.
            self.agent_gone(msg.conn);
            return;
        };
        let comes_back = match msg.departure {
            Departure::Clean => false,
            Departure::Lost => agent.lossless,
            Departure::Moved => true,
        };
        if comes_back {
            // It may come back: its machine stays online, its sessions and their clients
            // stay attached, and input for it is held (a plain agent's, up to
            // `pairing.resume_buffer_bytes`, flushed once it is sent `attach` again).
            if let Some(pipes) = self.machines.get(&agent.machine) {
                lock(pipes).agent_away();
            }
            self.away
                .set(Away::Agent(msg.conn), Instant::now() + self.grace);
        } else {
            self.agent_gone(msg.conn);
        }
        self.rearm(ctx);
    }
}

impl Handler<ClientOnline> for MachineRegistry {
    type Result = ClientWelcome;

    fn handle(&mut self, msg: ClientOnline, ctx: &mut Context<Self>) -> ClientWelcome {
        let conn = msg.peer.conn;
        let known = msg
            .lossless
            .as_ref()
            .and_then(|key| self.keys.get(&(msg.user.clone(), key.clone())).copied());
        if let Some(client) = known {
            self.away.cancel(&Away::Client(client));
            self.rearm(ctx);
            if let Some(entry) = self.clients.get_mut(&client) {
                // The same client on a new connection: it takes the old one's place (a
                // newer connection wins, whether the old one is known lost or only looks
                // alive), and its attachments wait for it to say what it received.
                let old = std::mem::replace(&mut entry.peer, msg.peer);
                if old.conn != conn {
                    old.close(Outcome::Replaced);
                }
                let mut attachments = Vec::new();
                for (session, (attachment, machine)) in &entry.attachments {
                    lock(attachment).to_client.disconnect();
                    if let Some(pipes) = self.machines.get(machine) {
                        attachments.push((
                            session.clone(),
                            Arc::clone(attachment),
                            Arc::clone(pipes),
                        ));
                    }
                }
                return ClientWelcome {
                    client,
                    attachments,
                };
            }
        }
        self.table.client_online(conn, &msg.user);
        if let Some(key) = &msg.lossless {
            self.keys.insert((msg.user.clone(), key.clone()), conn);
        }
        let entry = ClientEntry {
            peer: msg.peer,
            user: msg.user,
            key: msg.lossless,
            attachments: HashMap::default(),
        };
        self.clients.insert(conn, entry);
        ClientWelcome {
            client: conn,
            attachments: Vec::new(),
        }
    }
}

impl Handler<ClientOffline> for MachineRegistry {
    type Result = ();

    fn handle(&mut self, msg: ClientOffline, ctx: &mut Context<Self>) {
        let Some(entry) = self.clients.get(&msg.client) else {
            return;
        };
        if entry.peer.conn != msg.conn {
            return; // a newer connection took its place
        }
        if entry.key.is_some() && msg.departure != Departure::Clean {
            for (attachment, _) in entry.attachments.values() {
                lock(attachment).to_client.disconnect();
            }
            self.away
                .set(Away::Client(msg.client), Instant::now() + self.grace);
            self.rearm(ctx);
        } else {
            self.client_gone(msg.client);
        }
    }
}

impl Handler<ClientAsk> for MachineRegistry {
    type Result = ClientReply;

    fn handle(&mut self, msg: ClientAsk, _: &mut Context<Self>) -> ClientReply {
        let client = msg.client;
        let effects = match msg.command {
            ClientCommand::ListSessions { machine } => self.table.list_sessions(client, &machine),
            ClientCommand::Attach { machine, session } => {
                self.table.attach(client, &machine, &session)
            }
            ClientCommand::Detach { session } => self.table.detach(client, &session),
            ClientCommand::CreateSession {
                machine,
                name,
                command,
            } => self.table.create_session(client, &machine, name, command),
        };
        self.apply(effects, Some((client, msg.last_seq)))
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
        self.machines.remove(&msg.machine);
    }
}

impl Handler<ExportUsers> for MachineRegistry {
    type Result = MessageResult<ExportUsers>;

    fn handle(&mut self, _: ExportUsers, _: &mut Context<Self>) -> Self::Result {
        let agents: HashSet<ConnId> = self
            .agents
            .iter()
            .filter(|(conn, _)| self.away.contains(&Away::Agent(**conn)))
            .map(|(conn, _)| *conn)
            .collect();
        let clients: HashSet<ConnId> = self
            .clients
            .iter()
            .filter(|(id, entry)| entry.key.is_some() && self.away.contains(&Away::Client(**id)))
            .map(|(id, _)| *id)
            .collect();
        let handoffs = self
            .table
            .export(&agents, &clients)
            .into_iter()
            .map(|table| self.handoff(table))
            .collect();
        MessageResult(handoffs)
    }
}

impl Handler<AdoptUser> for MachineRegistry {
    type Result = bool;

    fn handle(&mut self, AdoptUser(handoff): AdoptUser, ctx: &mut Context<Self>) -> bool {
        let UserHandoff {
            mut table,
            mut machines,
            mut clients,
        } = handoff;
        let user = table.user.clone();
        // A client that came back here before its hand-over is served as it is now.
        clients.retain(|c| !self.keys.contains_key(&(user.clone(), c.key.clone())));
        table
            .clients
            .retain(|record| clients.iter().any(|c| c.client == record.conn));
        let installed = self.table.import(table, Instant::now());
        let away_until = Instant::now() + self.grace;
        for agent in &installed.agents {
            let state = machines
                .iter()
                .position(|(machine, _)| *machine == agent.machine)
                .map(|at| machines.swap_remove(at).1);
            let pipes = match state {
                Some(state) => MachinePipes::import(state, self.limits),
                None => MachinePipes::shared(self.limits),
            };
            let lossless = lock(&pipes).lossless();
            self.machines.insert(agent.machine.clone(), pipes);
            let entry = AgentEntry {
                peer: Peer::gone(agent.conn),
                machine: agent.machine.clone(),
                lossless,
            };
            self.agents.insert(agent.conn, entry);
            self.away.set(Away::Agent(agent.conn), away_until);
        }
        for record in &installed.clients {
            let Some(at) = clients.iter().position(|c| c.client == record.conn) else {
                continue;
            };
            let handed = clients.swap_remove(at);
            let attachments = handed
                .attachments
                .into_iter()
                .filter(|(machine, state)| {
                    record
                        .attached
                        .iter()
                        .any(|(s, m)| *s == state.session && m == machine)
                })
                .map(|(machine, state)| {
                    let session = state.session.clone();
                    (session, (Attachment::import(state), machine))
                })
                .collect();
            self.keys
                .insert((user.clone(), handed.key.clone()), record.conn);
            let entry = ClientEntry {
                peer: Peer::gone(record.conn),
                user: user.clone(),
                key: Some(handed.key),
                attachments,
            };
            self.clients.insert(record.conn, entry);
            self.away.set(Away::Client(record.conn), away_until);
        }
        self.rearm(ctx);
        !installed.agents.is_empty() || !installed.clients.is_empty()
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
                client.peer.send(&Common::error(
                    ErrorCode::UserNotFound,
                    "this account was disabled or deleted",
                ));
                client.peer.close(Outcome::Refused);
            }
        }
        self.apply(effects, None);
    }
}
