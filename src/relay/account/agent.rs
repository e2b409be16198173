//! `AgentSocket`: the protocol of one `/ws/agent` connection (a Mac agent).
//!
//! It authenticates with the machine token, reports its sessions to the `MachineRegistry`,
//! and fans each session's output straight into the outboxes of the clients attached to it:
//! the registry decides who is attached, but never carries the data.

use crate::ids::HashMap;
use std::borrow::Cow;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use actix::prelude::*;
use bytes::Bytes;

use super::node::AccountNode;
use super::registry::{AgentOffline, AgentOnline, AgentReport, ToAgent};
use super::remote;
use super::streams::{SharedAttachment, SharedMachinePipes};
use super::REGISTRY_TIMEOUT;
use crate::accounts;
use crate::audit;
use crate::auth::opaque;
use crate::db;
use crate::error::ApiError;
use crate::ids::{ConnId, DropReason, Endpoint, MachineId, NodeId, Outcome, SessionId, UserId};
use crate::limits::Attempt;
use crate::metrics::METRICS;
use crate::models::{machine, now};
use crate::relay::delivery::{accept, lock, Accepted, Delivery};
use crate::relay::protocol::account::{self, AgentEvent, AgentRequest, ClientEvent};
use crate::relay::protocol::json::Text;
use crate::relay::protocol::{Common, ErrorCode};
use crate::relay::socket::{Connection, Ctx, Opened, Protocol};
use crate::relay::tunnel::Gateway;

/// Where an agent is in its life.
enum State {
    /// Connected; nothing but `register` is accepted.
    Waiting,
    /// The token is being checked (nothing else is read meanwhile).
    Verifying,
    /// Registered for a machine of `user`, whose sessions' data paths it shares.
    Online {
        machine: MachineId,
        user: UserId,
        pipes: SharedMachinePipes,
    },
}

/// The state of one `/ws/agent` connection.
pub struct AgentSocket {
    /// What every account connection of this node shares.
    node: Arc<AccountNode>,
    state: State,
    /// Lossless mode: asked for in `register`.
    lossless: bool,
    /// The attachments of each session: its output is pushed to all of them.
    watchers: HashMap<SessionId, Vec<SharedAttachment>>,
    /// Lossless mode: the last `ack` sent for each session's output.
    acked: HashMap<SessionId, u64>,
    /// A virtual connection for an agent on another node, whose node already applied the
    /// attempt limits.
    relayed: bool,
    /// Tunnelled to its user's node: everything it sends goes there.
    gateway: Option<Box<Gateway>>,
}

impl AgentSocket {
    /// Starts the actor of a freshly upgraded connection.
    pub fn start(opened: Opened, node: Arc<AccountNode>) -> Addr<Connection<Self>> {
        Connection::start(opened, Self::new(node, false))
    }

    /// Starts a virtual connection for one on another node (see `super::remote`).
    pub fn start_relayed(opened: Opened, node: Arc<AccountNode>) -> Addr<Connection<Self>> {
        Connection::start(opened, Self::new(node, true))
    }

    fn new(node: Arc<AccountNode>, relayed: bool) -> Self {
        Self {
            node,
            state: State::Waiting,
            lossless: false,
            watchers: HashMap::default(),
            acked: HashMap::default(),
            relayed,
            gateway: None,
        }
    }
}

impl Protocol for AgentSocket {
    type Command = ToAgent;
    const JSON_PING: bool = true;

    fn started(conn: &mut Connection<Self>, ctx: &mut Ctx<Self>) {
        ctx.run_later(conn.settings.auth.deadline(), |conn, ctx| {
            if !matches!(conn.proto.state, State::Online { .. }) && conn.proto.gateway.is_none() {
                conn.finish(Outcome::Idle, ctx);
            }
        });
    }

    fn on_text(conn: &mut Connection<Self>, text: Bytes, ctx: &mut Ctx<Self>) {
        match (&conn.proto.gateway, &conn.proto.node.remote) {
            (Some(gateway), Some(remote)) => {
                if remote.up(gateway, text).is_err() {
                    conn.finish(Outcome::Unavailable, ctx);
                }
            }
            _ => conn.on_request(&text, ctx),
        }
    }

    fn on_command(conn: &mut Connection<Self>, command: ToAgent, ctx: &mut Ctx<Self>) {
        conn.on_command(command, ctx);
    }

    fn stopping(conn: &mut Connection<Self>) {
        let departure = conn.socket.departure();
        if let (Some(gateway), Some(remote)) = (conn.proto.gateway.take(), &conn.proto.node.remote)
        {
            remote.close(&gateway, departure);
        }
        let State::Online { machine, user, .. } = &conn.proto.state else {
            return;
        };
        let outcome = conn.socket.outcome();
        let name = match outcome {
            Outcome::Replaced => "agent_replaced",
            _ => "agent_offline",
        };
        audit::event(name)
            .user(user.as_str())
            .machine(machine.as_str())
            .client(conn.socket.client_ip())
            .conn(conn.socket.conn)
            .reason(outcome.as_str())
            .record();
        conn.proto.node.registry.do_send(AgentOffline {
            conn: conn.socket.conn,
            departure,
        });
        let (pool, id) = (conn.proto.node.accounts.pool.clone(), machine.clone());
        actix_rt::spawn(async move {
            let touched = db::run(&pool, move |db| Ok(machine::touch(db, id.as_str(), now())?));
            let _ = touched.await;
        });
    }
}

impl Connection<AgentSocket> {
    fn on_request(&mut self, text: &[u8], ctx: &mut Ctx<AgentSocket>) {
        let request = match account::parse_agent(text) {
            Ok(request) => request,
            Err(err) => {
                let (code, message) = err.account_error();
                return self.error(code, message, ctx);
            }
        };
        if let Err(refusal) = request.check() {
            return self.refuse(refusal, ctx);
        }
        let conn = self.socket.conn;
        let pipes = match &self.proto.state {
            State::Online { pipes, .. } => Some(Arc::clone(pipes)),
            _ => None,
        };
        match (request, pipes) {
            (AgentRequest::Ping { ts }, _) => self.send(&Common::Pong { ts: &ts }, ctx),
            (AgentRequest::Pong { .. }, _) => {}
            (
                AgentRequest::Register {
                    token,
                    ack,
                    machine_name,
                },
                None,
            ) if matches!(self.proto.state, State::Waiting) => {
                let ip = self.socket.client_ip();
                self.proto.lossless = ack;
                if self.proto.relayed {
                    // Its own node applied the limits.
                    return self.verify(token, machine_name, ctx);
                }
                if !self.proto.node.limiters.auth.check(ip) {
                    let message = "too many attempts; wait a minute";
                    return self.error(ErrorCode::RateLimited, message, ctx);
                }
                match self.proto.node.limiters.cluster_check(Attempt::Auth, ip) {
                    None => self.verify(token, machine_name, ctx),
                    Some(check) => self.wait_for(
                        check,
                        move |agent, allowed, ctx| match allowed {
                            true => agent.verify(token, machine_name, ctx),
                            false => agent.error(
                                ErrorCode::RateLimited,
                                "too many attempts; wait a minute",
                                ctx,
                            ),
                        },
                        ctx,
                    ),
                }
            }
            (AgentRequest::Register { .. }, Some(_)) => {
                self.error(ErrorCode::InvalidMessage, "already registered", ctx)
            }
            (_, None) => self.error(
                ErrorCode::NotAuthenticated,
                "send register with the machine token first",
                ctx,
            ),
            (AgentRequest::Sessions { sessions }, Some(_)) => {
                let report = AgentReport::Sessions { conn, sessions };
                self.proto.node.registry.do_send(report);
            }
            (AgentRequest::SessionStarted { session }, Some(_)) => {
                let report = AgentReport::Started { conn, session };
                self.proto.node.registry.do_send(report);
            }
            (AgentRequest::SessionEnded { session_id }, Some(_)) => {
                let report = AgentReport::Ended {
                    conn,
                    session: session_id,
                };
                self.proto.node.registry.do_send(report);
            }
            (
                AgentRequest::Data {
                    session_id,
                    data,
                    seq,
                },
                Some(pipes),
            ) => {
                let session = SessionId::from(session_id.value().into_owned());
                let accepted = accept(&mut lock(&pipes).session(&session).from_agent, seq);
                match accepted {
                    Accepted::New => self.fan_out(&session, &session_id, &data),
                    Accepted::Again => {}
                    Accepted::Skips { expected } => {
                        let message = format!("seq skips ahead: the relay expected {expected}");
                        self.error(ErrorCode::InvalidMessage, &message, ctx);
                    }
                }
            }
            (AgentRequest::Ack { session_id, seq }, Some(pipes)) => {
                lock(&pipes).session(&session_id).to_agent.ack(seq);
            }
            (
                AgentRequest::Resume {
                    session_id,
                    last_seq,
                },
                Some(pipes),
            ) => {
                // The ack goes first, then what the agent missed, all under the pipes' lock:
                // no client input can come between.
                let mut pipes = lock(&pipes);
                pipes.resume(&session_id, last_seq, |seq| {
                    let ack = AgentEvent::Ack {
                        session_id: &session_id,
                        seq,
                    };
                    let _ = self.socket.send(&ack);
                });
            }
        }
    }

    /// Pushes one output message to every attachment of the session. Plain attachments
    /// share one encoded frame; a lossless one gets its own, numbered. A client too slow to
    /// take it is dropped without slowing the others.
    fn fan_out(&mut self, session: &SessionId, session_id: &Text<'_>, data: &Text<'_>) {
        let Some(watchers) = self.proto.watchers.get(session) else {
            return;
        };
        let mut plain: Option<Bytes> = None;
        let last = watchers.len().saturating_sub(1);
        for (i, attachment) in watchers.iter().enumerate() {
            let mut attachment = lock(attachment);
            let delivery = attachment.to_client.deliver(|seq| match seq {
                Some(_) => account::data_frame(session_id, data, seq),
                // The last plain attachment takes the shared frame itself (a clone of a
                // `Bytes` costs an allocation the first time).
                None if i == last => plain
                    .take()
                    .unwrap_or_else(|| account::data_frame(session_id, data, None)),
                None => plain
                    .get_or_insert_with(|| account::data_frame(session_id, data, None))
                    .clone(),
            });
            match delivery {
                Delivery::Delivered => METRICS.relayed(data.json_len()),
                Delivery::Dropped(DropReason::WindowFull) => {
                    if let Some(client) = attachment.to_client.peer() {
                        client.send(&Common::error(
                            ErrorCode::ReplayWindowFull,
                            "too much unacknowledged: send ack more often",
                        ));
                        client.close(Outcome::WindowFull);
                    }
                }
                Delivery::Held | Delivery::Dropped(_) => {}
            }
        }
    }

    /// Checks the token, then asks the registry to bring the machine online; reads
    /// nothing else from the agent until both are answered.
    fn verify(&mut self, token: String, name: Option<String>, ctx: &mut Ctx<AgentSocket>) {
        self.proto.state = State::Verifying;
        let hash = opaque::hash(&token);
        let pool = self.proto.node.accounts.pool.clone();
        let lookup = async move {
            db::run(&pool, move |conn| {
                let found = machine::find_by_token_hash(conn, &hash)?
                    .filter(|m| opaque::hashes_match(&m.token_hash, &hash));
                // A disabled or deleted owner's machines are out too.
                let found = match found {
                    Some(m) if accounts::active_user(conn, &m.user_id)?.is_some() => Some(m),
                    _ => None,
                };
                if let Some(m) = &found {
                    machine::touch(conn, &m.id, now())?;
                }
                Ok(found)
            })
            .await
        };
        self.wait_for(
            lookup,
            move |agent, found, ctx| match found {
                Ok(Some(m)) => {
                    let first =
                        account::register_text(&token, name.as_deref(), agent.proto.lossless);
                    agent.find_home(m.id.into(), m.user_id.into(), first, ctx)
                }
                Ok(None) => agent.refuse_token(Outcome::Refused, "invalid machine token", ctx),
                Err(ApiError::Unavailable(_)) => agent.refuse_token(
                    Outcome::Unavailable,
                    "the relay cannot check the token right now; try again",
                    ctx,
                ),
                Err(_) => {
                    agent.refuse_token(Outcome::Refused, "the relay could not check the token", ctx)
                }
            },
            ctx,
        );
    }

    /// In a cluster the user's connections are served by the user's node: an agent whose
    /// user's node is another is tunnelled there (with its `register`, `first`).
    fn find_home(
        &mut self,
        machine: MachineId,
        user: UserId,
        first: Vec<u8>,
        ctx: &mut Ctx<AgentSocket>,
    ) {
        let Some(remote) = self.proto.node.remote.clone() else {
            return self.come_online(machine, user, ctx);
        };
        let owner = user.clone();
        let lookup = async move { remote.home_of(&owner).await };
        self.wait_for(
            lookup,
            move |agent, home, ctx| match home {
                Ok(Some(home)) => agent.tunnel(home, &first, ctx),
                Ok(None) => agent.come_online(machine, user, ctx),
                Err(err) => {
                    tracing::warn!(conn = %agent.socket.conn, %err, "could not find the user's node");
                    let why = "the relay cannot reach its cluster; try again";
                    agent.refuse_token(Outcome::Unavailable, why, ctx)
                }
            },
            ctx,
        );
    }

    /// From now on this agent is its user's node's: everything it sends goes there.
    fn tunnel(&mut self, home: NodeId, first: &[u8], ctx: &mut Ctx<AgentSocket>) {
        let node = Arc::clone(&self.proto.node);
        let Some(remote) = &node.remote else {
            return;
        };
        match remote.tunnel(self, home, Endpoint::Agent, first, ctx) {
            Ok(gateway) => self.proto.gateway = Some(gateway),
            Err(err) => {
                tracing::debug!(conn = %self.socket.conn, %err, "could not reach the user's node");
                let why = "the relay cannot reach its cluster; try again";
                self.refuse_token(Outcome::Unavailable, why, ctx)
            }
        }
    }

    fn come_online(&mut self, machine: MachineId, user: UserId, ctx: &mut Ctx<AgentSocket>) {
        let online = AgentOnline {
            machine: machine.clone(),
            user: user.clone(),
            peer: self.peer(ctx),
            lossless: self.proto.lossless,
        };
        let answer = self
            .proto
            .node
            .registry
            .send(online)
            .timeout(REGISTRY_TIMEOUT);
        self.wait_for(
            answer,
            move |agent, answer, ctx| match answer {
                Ok(Ok(pipes)) => {
                    agent.send(
                        &AgentEvent::Registered {
                            success: true,
                            machine_id: Some(&machine),
                            error: None,
                        },
                        ctx,
                    );
                    agent.send(&AgentEvent::ListSessions, ctx);
                    tracing::info!(conn = %agent.socket.conn, %machine, "agent registered");
                    audit::event("agent_online")
                        .user(user.as_str())
                        .machine(machine.as_str())
                        .client(agent.socket.client_ip())
                        .conn(agent.socket.conn)
                        .record();
                    agent.proto.state = State::Online {
                        machine,
                        user,
                        pipes,
                    };
                    if agent.proto.lossless {
                        let every = agent.settings.pairing.ack_interval();
                        ctx.run_interval(every, |agent, ctx| agent.acknowledge(ctx));
                    }
                }
                // Deleted since its token was checked: the token is void now.
                Ok(Err(_)) => agent.refuse_token(Outcome::Refused, "invalid machine token", ctx),
                Err(_) => {
                    agent.refuse_token(Outcome::Unavailable, "the relay is busy; try again", ctx)
                }
            },
            ctx,
        );
    }

    /// Lossless mode, every `pairing.ack_interval_ms`: acknowledges each session's output
    /// that arrived since the last time.
    fn acknowledge(&mut self, ctx: &mut Ctx<AgentSocket>) {
        let State::Online { pipes, .. } = &self.proto.state else {
            return;
        };
        let due: Vec<(SessionId, u64)> = lock(pipes)
            .received()
            .filter(|(session, seq)| self.proto.acked.get(*session) < Some(seq))
            .map(|(session, seq)| (session.clone(), seq))
            .collect();
        for (session, seq) in due {
            let ack = AgentEvent::Ack {
                session_id: &session,
                seq,
            };
            self.send(&ack, ctx);
            self.proto.acked.insert(session, seq);
        }
    }

    fn refuse_token(&mut self, outcome: Outcome, why: &str, ctx: &mut Ctx<AgentSocket>) {
        if outcome == Outcome::Refused {
            METRICS.auth_failures.fetch_add(1, Relaxed);
        }
        self.send(
            &AgentEvent::Registered {
                success: false,
                machine_id: None,
                error: Some(why),
            },
            ctx,
        );
        self.finish(outcome, ctx);
    }

    fn on_command(&mut self, command: ToAgent, ctx: &mut Ctx<AgentSocket>) {
        match command {
            ToAgent::Remote(event) => {
                if !remote::from_home(self, event, ctx) {
                    self.proto.gateway = None;
                }
            }
            ToAgent::Link {
                session,
                attachment,
                relink,
                done,
            } => {
                let (client, peer, lossless) = {
                    let shared = lock(&attachment);
                    let numbered = shared.to_client.is_numbered();
                    (shared.client, shared.to_client.peer().cloned(), numbered)
                };
                // In this order: the agent hears `attach`, the client hears `attached`, and
                // only then can output (pushed once the attachment is a watcher) or input
                // (once the waiting client is told `done`) reach either.
                let attach = AgentEvent::Attach {
                    session_id: &session,
                    client_id: client,
                };
                self.send(&attach, ctx);
                if let (false, Some(peer)) = (relink, peer) {
                    peer.send(&ClientEvent::Attached {
                        session_id: Cow::Borrowed(&session),
                        resumed: lossless.then_some(false),
                    });
                }
                let watchers = self.proto.watchers.entry(session.clone()).or_default();
                watchers.retain(|a| lock(a).client != client);
                watchers.push(attachment);
                if let State::Online { pipes, .. } = &self.proto.state {
                    lock(pipes).reconnect_plain(&session);
                }
                if let Some(done) = done {
                    let _ = done.send(());
                }
            }
            ToAgent::Unlink {
                session,
                client,
                detach_agent,
                reply,
            } => {
                let gone = self.unwatch(&session, client);
                if detach_agent {
                    let detach = AgentEvent::Detach {
                        session_id: &session,
                        client_id: client,
                    };
                    self.send(&detach, ctx);
                }
                let peer = gone.and_then(|a| lock(&a).to_client.peer().cloned());
                if let (true, Some(peer)) = (reply, peer) {
                    peer.send(&ClientEvent::Detached {
                        session_id: Cow::Borrowed(&session),
                    });
                }
            }
            ToAgent::Close(outcome) => self.finish(outcome, ctx),
        }
    }

    /// Stops fanning a session's output out to `client`; returns its attachment.
    fn unwatch(&mut self, session: &SessionId, client: ConnId) -> Option<SharedAttachment> {
        let watchers = self.proto.watchers.get_mut(session)?;
        let at = watchers.iter().position(|a| lock(a).client == client)?;
        let gone = watchers.remove(at);
        if watchers.is_empty() {
            self.proto.watchers.remove(session);
        }
        Some(gone)
    }
}
