//! `ClientSocket`: the protocol of one `/ws/client` connection (a browser tab of a
//! signed-in user).
//!
//! It authenticates with an access token; requests that name a machine go to the
//! `MachineRegistry`, which checks ownership. Input for an attached session is pushed
//! straight into the session's pipe to its agent. Every request is answered before the
//! next frame is read, so a client may send `auth`, `attach` and `data` back to back.

use crate::ids::HashMap;
use std::borrow::Cow;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use actix::prelude::*;
use bytes::Bytes;

use super::directory;
use super::node::AccountNode;
use super::registry::{
    ClientAsk, ClientCommand, ClientOffline, ClientOnline, ClientReply, ClientWelcome, ToClient,
};
use super::remote;
use super::streams::{SharedAttachment, SharedMachinePipes};
use super::REGISTRY_TIMEOUT;
use crate::audit;
use crate::error::ApiError;
use crate::ids::{
    ClientKey, ConnId, DropReason, Endpoint, MachineId, NodeId, Outcome, SessionId, UserId,
};
use crate::limits::Attempt;
use crate::metrics::METRICS;
use crate::relay::delivery::{accept, lock, Accepted, Delivery};
use crate::relay::protocol::account::{self, AgentEvent, ClientEvent, ClientRequest};
use crate::relay::protocol::json::Text;
use crate::relay::protocol::{Common, ErrorCode, UserInfo};
use crate::relay::socket::{Connection, Ctx, Opened, Protocol};
use crate::relay::tunnel::Gateway;
use crate::transport::text_frame;

/// The answer when the relay cannot reach its database.
const UNAVAILABLE: &str = "the relay cannot reach its database; try again";

/// One attached session, as the client's actor uses it.
struct Attached {
    /// Output to the client, and the count of its input.
    attachment: SharedAttachment,
    /// The machine's pipes, where input goes.
    pipes: SharedMachinePipes,
}

/// The state of one `/ws/client` connection.
pub struct ClientSocket {
    /// What every account connection of this node shares.
    node: Arc<AccountNode>,
    user: Option<UserInfo>,
    /// The id the registry and agents know this client by.
    known_as: Option<ConnId>,
    /// Lossless mode: the key it resumes by.
    lossless: Option<ClientKey>,
    attached: HashMap<SessionId, Attached>,
    /// Lossless mode: the last `ack` sent for each session's input.
    acked: HashMap<SessionId, u64>,
    /// A virtual connection for a client on another node, whose node already applied the
    /// attempt limits.
    relayed: bool,
    /// Tunnelled to its user's node: everything it sends goes there.
    gateway: Option<Box<Gateway>>,
}

impl ClientSocket {
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
            user: None,
            known_as: None,
            lossless: None,
            attached: HashMap::default(),
            acked: HashMap::default(),
            relayed,
            gateway: None,
        }
    }
}

impl Protocol for ClientSocket {
    type Command = ToClient;
    const JSON_PING: bool = true;

    fn started(conn: &mut Connection<Self>, ctx: &mut Ctx<Self>) {
        ctx.run_later(conn.settings.auth.deadline(), |conn, ctx| {
            if conn.proto.user.is_none() && conn.proto.gateway.is_none() {
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

    fn on_command(conn: &mut Connection<Self>, command: ToClient, ctx: &mut Ctx<Self>) {
        match command {
            ToClient::Unlink { session } => {
                conn.proto.attached.remove(&session);
            }
            ToClient::Close(outcome) => conn.finish(outcome, ctx),
            ToClient::Remote(event) => {
                if !remote::from_home(conn, event, ctx) {
                    conn.proto.gateway = None;
                }
            }
        }
    }

    fn stopping(conn: &mut Connection<Self>) {
        let departure = conn.socket.departure();
        if let (Some(gateway), Some(remote)) = (conn.proto.gateway.take(), &conn.proto.node.remote)
        {
            remote.close(&gateway, departure);
        }
        if let Some(client) = conn.proto.known_as {
            conn.proto.node.registry.do_send(ClientOffline {
                client,
                conn: conn.socket.conn,
                departure,
            });
        }
    }
}

impl Connection<ClientSocket> {
    fn on_request(&mut self, text: &[u8], ctx: &mut Ctx<ClientSocket>) {
        let request = match account::parse_client(text) {
            Ok(request) => request,
            Err(err) => {
                let (code, message) = err.account_error();
                return self.error(code, message, ctx);
            }
        };
        if let Err(refusal) = request.check() {
            return self.refuse(refusal, ctx);
        }
        let Some(client) = self.proto.known_as else {
            return match request {
                ClientRequest::Auth {
                    token,
                    ack,
                    client_id,
                } => match (ack, client_id) {
                    (false, _) => self.authenticate(&token, None, ctx),
                    (true, Some(key)) if key.resumable() => {
                        self.authenticate(&token, Some(key), ctx)
                    }
                    (true, _) => self.error(
                        ErrorCode::InvalidMessage,
                        "lossless mode needs a clientId: a random (version 4) UUID",
                        ctx,
                    ),
                },
                ClientRequest::Ping { ts } => self.send(&Common::Pong { ts: &ts }, ctx),
                ClientRequest::Pong { .. } => {}
                _ => self.error(
                    ErrorCode::NotAuthenticated,
                    "send auth with an access token first",
                    ctx,
                ),
            };
        };
        let (command, last_seq) = match request {
            ClientRequest::Auth { .. } => {
                return self.error(ErrorCode::InvalidMessage, "already authenticated", ctx)
            }
            ClientRequest::Ping { ts } => return self.send(&Common::Pong { ts: &ts }, ctx),
            ClientRequest::Pong { .. } => return,
            ClientRequest::ListMachines => return self.list_machines(ctx),
            ClientRequest::Data {
                session_id,
                data,
                seq,
            } => return self.input(&session_id, &data, seq, ctx),
            ClientRequest::Resize {
                session_id,
                cols,
                rows,
            } => return self.resize(&session_id, cols, rows, ctx),
            ClientRequest::Ack { session_id, seq } => {
                if let Some(attached) = self.proto.attached.get(&session_id) {
                    lock(&attached.attachment).to_client.ack(seq);
                }
                return;
            }
            ClientRequest::ListSessions { machine_id } => (
                ClientCommand::ListSessions {
                    machine: machine_id,
                },
                None,
            ),
            ClientRequest::Attach {
                machine_id,
                session_id,
                last_seq,
            } => (
                ClientCommand::Attach {
                    machine: machine_id,
                    session: session_id,
                },
                last_seq,
            ),
            ClientRequest::Detach { session_id } => {
                // Input sent after `detach` is refused at once, whatever the agent does.
                if self.proto.attached.remove(&session_id).is_some() {
                    self.audit("client_detach", None, &session_id);
                }
                let detach = ClientCommand::Detach {
                    session: session_id,
                };
                (detach, None)
            }
            ClientRequest::CreateSession {
                machine_id,
                name,
                command,
            } => (
                ClientCommand::CreateSession {
                    machine: machine_id,
                    name,
                    command,
                },
                None,
            ),
        };
        self.ask(client, command, last_seq, ctx);
    }

    /// Sends keystrokes to the agent of an attached session (dropping a re-send).
    fn input(
        &mut self,
        session_id: &Text<'_>,
        data: &Text<'_>,
        seq: Option<u64>,
        ctx: &mut Ctx<ClientSocket>,
    ) {
        let session = session_id.value();
        let Some(attached) = self.proto.attached.get(&*session) else {
            return self.error(ErrorCode::NotAttached, "not attached to that session", ctx);
        };
        let accepted = accept(&mut lock(&attached.attachment).from_client, seq);
        match accepted {
            Accepted::New => {}
            Accepted::Again => return,
            Accepted::Skips { expected } => {
                let message = format!("seq skips ahead: the relay expected {expected}");
                return self.error(ErrorCode::InvalidMessage, &message, ctx);
            }
        }
        let mut pipes = lock(&attached.pipes);
        let to_agent = &mut pipes.session(&SessionId::from(&*session)).to_agent;
        let delivery = to_agent.deliver(|seq| account::data_frame(session_id, data, seq));
        match delivery {
            Delivery::Delivered => METRICS.relayed(data.json_len()),
            // The agent let too much go unacknowledged: it is told and dropped.
            Delivery::Dropped(DropReason::WindowFull) => {
                if let Some(agent) = to_agent.peer() {
                    agent.send(&Common::error(
                        ErrorCode::ReplayWindowFull,
                        "too much unacknowledged: send ack more often",
                    ));
                    agent.close(Outcome::WindowFull);
                }
            }
            // A full agent outbox means the agent reads slower than its clients type: the
            // policy drops the agent, not this client.
            Delivery::Held | Delivery::Dropped(_) => {}
        }
    }

    /// Sends a terminal size to the agent of an attached session. Not numbered: a resize
    /// lost with a dead link is made good by the next one.
    fn resize(&mut self, session: &SessionId, cols: u16, rows: u16, ctx: &mut Ctx<ClientSocket>) {
        let Some(attached) = self.proto.attached.get(session) else {
            return self.error(ErrorCode::NotAttached, "not attached to that session", ctx);
        };
        let resize = AgentEvent::Resize {
            session_id: session,
            cols,
            rows,
        };
        let mut pipes = lock(&attached.pipes);
        if let Some(agent) = pipes.session(session).to_agent.peer() {
            agent.deliver(text_frame(&resize));
        }
    }

    /// Asks the registry and handles its answer (and, for `attach`, the link) before
    /// reading on.
    fn ask(
        &mut self,
        client: ConnId,
        command: ClientCommand,
        last_seq: Option<u64>,
        ctx: &mut Ctx<ClientSocket>,
    ) {
        let attaching = match &command {
            ClientCommand::Attach { machine, .. } => Some(machine.clone()),
            _ => None,
        };
        let ask = ClientAsk {
            client,
            command,
            last_seq,
        };
        let answer = self.proto.node.registry.send(ask).timeout(REGISTRY_TIMEOUT);
        self.wait_for(
            answer,
            move |client, answer, ctx| match answer {
                Ok(ClientReply::Done) => {}
                Ok(ClientReply::Resumed {
                    session,
                    attachment,
                    pipes,
                }) => {
                    let attached = Attached { attachment, pipes };
                    client.proto.attached.insert(session, attached);
                }
                Ok(ClientReply::Linking {
                    session,
                    linked,
                    attachment,
                    pipes,
                }) => {
                    let linked = tokio::time::timeout(REGISTRY_TIMEOUT, linked);
                    client.wait_for(
                        linked,
                        move |client, linked, ctx| match linked {
                            Ok(Ok(())) => {
                                client.audit("client_attach", attaching.as_ref(), &session);
                                let attached = Attached { attachment, pipes };
                                client.proto.attached.insert(session, attached);
                            }
                            _ => client.error(
                                ErrorCode::MachineNotFound,
                                "no such machine online",
                                ctx,
                            ),
                        },
                        ctx,
                    );
                }
                Err(_) => client.error(ErrorCode::Unavailable, "the relay is busy; try again", ctx),
            },
            ctx,
        );
    }

    /// Lossless mode, every `pairing.ack_interval_ms`: acknowledges each session's input
    /// that arrived since the last time.
    fn acknowledge(&mut self, ctx: &mut Ctx<ClientSocket>) {
        let due: Vec<(SessionId, u64)> = self
            .proto
            .attached
            .iter()
            .map(|(session, a)| (session.clone(), lock(&a.attachment).from_client))
            .filter(|(session, seq)| self.proto.acked.get(session) < Some(seq))
            .collect();
        for (session, seq) in due {
            let ack = ClientEvent::Ack {
                session_id: Cow::Borrowed(&session),
                seq,
            };
            self.send(&ack, ctx);
            self.proto.acked.insert(session, seq);
        }
    }

    fn authenticate(
        &mut self,
        token: &str,
        lossless: Option<ClientKey>,
        ctx: &mut Ctx<ClientSocket>,
    ) {
        let ip = self.socket.client_ip();
        if self.proto.relayed {
            // Its own node applied the limits.
            return self.verify_token(token, lossless, ctx);
        }
        if !self.proto.node.limiters.auth.check(ip) {
            return self.error(
                ErrorCode::RateLimited,
                "too many attempts; wait a minute",
                ctx,
            );
        }
        if let Some(check) = self.proto.node.limiters.cluster_check(Attempt::Auth, ip) {
            let token = token.to_owned();
            return self.wait_for(
                check,
                move |client, allowed, ctx| match allowed {
                    true => client.verify_token(&token, lossless, ctx),
                    false => client.error(
                        ErrorCode::RateLimited,
                        "too many attempts; wait a minute",
                        ctx,
                    ),
                },
                ctx,
            );
        }
        self.verify_token(token, lossless, ctx);
    }

    /// Authentication past the attempt limits: the token, then the account.
    fn verify_token(
        &mut self,
        token: &str,
        lossless: Option<ClientKey>,
        ctx: &mut Ctx<ClientSocket>,
    ) {
        let user_id = match self.proto.node.accounts.tokens.verify(token) {
            Ok(user_id) => UserId::from(user_id),
            Err(err) => {
                METRICS.auth_failures.fetch_add(1, Relaxed);
                tracing::debug!(conn = %self.socket.conn, %err, "client token refused");
                return self.error(
                    ErrorCode::InvalidToken,
                    "invalid or expired access token",
                    ctx,
                );
            }
        };
        if let Some(remote) = self.proto.node.remote.clone() {
            // In a cluster the user's connections are served by the user's node.
            let first = account::auth_text(token, lossless.is_some(), lossless.as_ref());
            let user = user_id.clone();
            let lookup = async move { remote.home_of(&user).await };
            return self.wait_for(
                lookup,
                move |client, home, ctx| match home {
                    Ok(Some(home)) => client.tunnel(home, &first, ctx),
                    Ok(None) => client.find_user(user_id, lossless, ctx),
                    Err(err) => {
                        tracing::warn!(conn = %client.socket.conn, %err, "could not find the user's node");
                        let message = "the relay cannot reach its cluster; try again";
                        client.error(ErrorCode::Unavailable, message, ctx);
                    }
                },
                ctx,
            );
        }
        self.find_user(user_id, lossless, ctx);
    }

    /// From now on this client is its user's node's: everything it sends goes there.
    fn tunnel(&mut self, home: NodeId, first: &[u8], ctx: &mut Ctx<ClientSocket>) {
        let node = Arc::clone(&self.proto.node);
        let Some(remote) = &node.remote else {
            return;
        };
        match remote.tunnel(self, home, Endpoint::Client, first, ctx) {
            Ok(gateway) => self.proto.gateway = Some(gateway),
            Err(err) => {
                tracing::debug!(conn = %self.socket.conn, %err, "could not reach the user's node");
                let message = "the relay cannot reach its cluster; try again";
                self.error(ErrorCode::Unavailable, message, ctx);
            }
        }
    }

    /// The token is good: the account, then online.
    fn find_user(
        &mut self,
        user_id: UserId,
        lossless: Option<ClientKey>,
        ctx: &mut Ctx<ClientSocket>,
    ) {
        let accounts = self.proto.node.accounts.clone();
        let lookup = async move { accounts.active_user(&user_id).await };
        self.wait_for(
            lookup,
            |client, found, ctx| match found {
                Err(ApiError::Unauthorized(_)) => client.error(
                    ErrorCode::UserNotFound,
                    "that account no longer exists or is disabled",
                    ctx,
                ),
                Ok(found) => {
                    let user = UserInfo {
                        id: found.id.into(),
                        email: found.email,
                    };
                    client.online(user, lossless, ctx);
                }
                Err(err) => client.unavailable(err, ctx),
            },
            ctx,
        );
    }

    /// Authenticated: joins the registry (taking its own earlier connection's place in
    /// lossless mode) before reading on.
    fn online(&mut self, user: UserInfo, lossless: Option<ClientKey>, ctx: &mut Ctx<ClientSocket>) {
        let online = ClientOnline {
            user: user.id.clone(),
            peer: self.peer(ctx),
            lossless: lossless.clone(),
        };
        let answer = self
            .proto
            .node
            .registry
            .send(online)
            .timeout(REGISTRY_TIMEOUT);
        self.wait_for(
            answer,
            move |client, answer, ctx| {
                let Ok(ClientWelcome {
                    client: known_as,
                    attachments,
                }) = answer
                else {
                    let message = "the relay is busy; try again";
                    return client.error(ErrorCode::Unavailable, message, ctx);
                };
                client.send(&ClientEvent::Authenticated { user: &user }, ctx);
                client.proto.user = Some(user);
                client.proto.known_as = Some(known_as);
                for (session, attachment, pipes) in attachments {
                    let acked = lock(&attachment).from_client;
                    client.proto.acked.insert(session.clone(), acked);
                    let attached = Attached { attachment, pipes };
                    client.proto.attached.insert(session, attached);
                }
                if lossless.is_some() {
                    client.proto.lossless = lossless;
                    let every = client.settings.pairing.ack_interval();
                    ctx.run_interval(every, |client, ctx| client.acknowledge(ctx));
                }
            },
            ctx,
        );
    }

    fn list_machines(&mut self, ctx: &mut Ctx<ClientSocket>) {
        let Some(user) = &self.proto.user else {
            return;
        };
        let (pool, registry) = (
            self.proto.node.accounts.pool.clone(),
            self.proto.node.registry.clone(),
        );
        let user_id = user.id.clone();
        // A client's list is answered on its user's node: this one.
        let lookup = async move { directory::list(&pool, &registry, None, &user_id).await };
        self.wait_for(
            lookup,
            |client, machines, ctx| match machines {
                Ok(machines) => client.send(
                    &ClientEvent::Machines {
                        machines: &machines,
                    },
                    ctx,
                ),
                Err(err) => client.unavailable(err, ctx),
            },
            ctx,
        );
    }

    /// Records an attachment change in the audit log.
    fn audit(&self, name: &'static str, machine: Option<&MachineId>, session: &SessionId) {
        let mut event = audit::event(name)
            .session(session.as_str())
            .client(self.socket.client_ip())
            .conn(self.socket.conn);
        if let Some(user) = &self.proto.user {
            event = event.user(user.id.as_str());
        }
        if let Some(machine) = machine {
            event = event.machine(machine.as_str());
        }
        event.record();
    }

    fn unavailable(&mut self, err: ApiError, ctx: &mut Ctx<ClientSocket>) {
        tracing::debug!(conn = %self.socket.conn, %err, "client look-up failed");
        self.error(ErrorCode::Unavailable, UNAVAILABLE, ctx);
    }
}
