//! `ClientSocket`: the actor of one `/ws/client` connection (a browser tab of a signed-in
//! user).
//!
//! It authenticates with an access token; requests that name a machine go to the
//! `SessionRegistry`, which checks ownership. Input for an attached session is pushed
//! straight into the agent's outbox.

use std::collections::HashMap;
use std::sync::Arc;

use actix::prelude::*;
use actix_web::web;

use crate::accounts::{Accounts, UserInfo};
use crate::config::Settings;
use crate::db;
use crate::error::ApiError;
use crate::limits::Limiters;
use crate::machines;
use crate::metrics::METRICS;
use crate::models::user;
use crate::relay::protocol::{parse, AgentEvent, ClientEvent, ClientRequest, Common, ErrorCode};
use crate::relay::registry::{
    self, ClientCommand, ClientOffline, ClientOnline, Peer, SessionRegistry, ToAgent, ToClient,
};
use crate::relay::socket::{self, Outcome, Socket, SocketActor};
use crate::relay::Opened;
use crate::transport::{text_frame, Inbound, PushError};
use std::sync::atomic::Ordering::Relaxed;

/// Longest id, name or command a client may send.
const MAX_ID: usize = 128;
const MAX_NAME: usize = 256;
const MAX_COMMAND: usize = 4096;
/// Database look-ups one connection may have in flight; more are refused.
const MAX_PENDING_LOOKUPS: usize = 4;

/// One `/ws/client` connection.
pub struct ClientSocket {
    socket: Socket,
    registry: Addr<SessionRegistry>,
    accounts: web::Data<Accounts>,
    settings: Arc<Settings>,
    limiters: Arc<Limiters>,
    user: Option<UserInfo>,
    /// Look-ups (auth, list_machines) running now, bounded by `MAX_PENDING_LOOKUPS`.
    pending: usize,
    /// The agent of each attached session, where input goes.
    attached: HashMap<String, Peer<ToAgent>>,
}

impl ClientSocket {
    /// Starts the actor for a freshly upgraded connection.
    pub fn start(opened: Opened, accounts: web::Data<Accounts>) -> Addr<Self> {
        let Opened {
            socket,
            inbound,
            registry,
            settings,
            limiters,
        } = opened;
        Self::create(move |ctx| {
            ctx.add_stream(inbound);
            Self {
                socket,
                registry,
                accounts,
                settings,
                limiters,
                user: None,
                pending: 0,
                attached: HashMap::new(),
            }
        })
    }

    fn handle_text(&mut self, text: &[u8], ctx: &mut Context<Self>) {
        let request = match parse::<ClientRequest>(text) {
            Ok(request) => request,
            Err(err) => {
                let (code, message) = err.account_error();
                return self.error(code, message, ctx);
            }
        };
        let Some(user_id) = self.user.as_ref().map(|u| u.id.clone()) else {
            return match request {
                ClientRequest::Auth { token } => self.authenticate(&token, ctx),
                ClientRequest::Ping { ts } => self.send(&Common::Pong { ts: &ts }, ctx),
                ClientRequest::Pong { .. } => {}
                _ => self.error(
                    ErrorCode::NotAuthenticated,
                    "send auth with an access token first",
                    ctx,
                ),
            };
        };
        let command = match request {
            ClientRequest::Auth { .. } => {
                return self.error(ErrorCode::InvalidMessage, "already authenticated", ctx)
            }
            ClientRequest::Ping { ts } => return self.send(&Common::Pong { ts: &ts }, ctx),
            ClientRequest::Pong { .. } => return,
            ClientRequest::ListMachines => return self.list_machines(user_id, ctx),
            ClientRequest::Data { session_id, data } => {
                return self.forward_to_agent(
                    &session_id,
                    &AgentEvent::Data {
                        session_id: &session_id,
                        data: &data,
                    },
                    ctx,
                )
            }
            ClientRequest::Resize {
                session_id,
                cols,
                rows,
            } => {
                let resize = AgentEvent::Resize {
                    session_id: &session_id,
                    cols,
                    rows,
                };
                return self.forward_to_agent(&session_id, &resize, ctx);
            }
            ClientRequest::ListSessions { machine_id } => {
                ClientCommand::ListSessions { machine_id }
            }
            ClientRequest::Attach {
                machine_id,
                session_id,
            } => ClientCommand::Attach {
                machine_id,
                session_id,
            },
            ClientRequest::Detach { session_id } => ClientCommand::Detach { session_id },
            ClientRequest::CreateSession {
                machine_id,
                name,
                command,
            } => {
                if name.len() > MAX_NAME || command.len() > MAX_COMMAND {
                    return self.error(
                        ErrorCode::InvalidMessage,
                        "name or command is too long",
                        ctx,
                    );
                }
                ClientCommand::CreateSession {
                    machine_id,
                    name,
                    command,
                }
            }
        };
        if !ids_fit(&command) {
            // An id this long cannot exist; answer as the registry would for a stranger's.
            return self.error(ErrorCode::MachineNotFound, "no such machine online", ctx);
        }
        self.registry.do_send(registry::ClientRequest {
            conn: self.socket.conn,
            command,
        });
    }

    /// Sends input or a resize to the agent of an attached session.
    fn forward_to_agent(
        &mut self,
        session_id: &str,
        event: &AgentEvent<'_>,
        ctx: &mut Context<Self>,
    ) {
        let Some(agent) = self.attached.get(session_id) else {
            return self.error(ErrorCode::NotAttached, "not attached to that session", ctx);
        };
        match agent.outbox.push(text_frame(event)) {
            Ok(()) => {
                if let AgentEvent::Data { data, .. } = event {
                    METRICS.relayed(data.len());
                }
            }
            // The agent reads slower than its clients type: it is the slow one.
            Err(PushError::Full) => agent.addr.do_send(ToAgent::Drop(Outcome::SlowConsumer)),
            Err(PushError::Closed) => {}
        }
    }

    /// Runs a database look-up off the actor, bounded per connection.
    fn look_up<T: 'static>(
        &mut self,
        work: impl std::future::Future<Output = Result<T, ApiError>> + 'static,
        then: impl FnOnce(&mut Self, T, &mut Context<Self>) + 'static,
        ctx: &mut Context<Self>,
    ) {
        if self.pending >= MAX_PENDING_LOOKUPS {
            return self.error(ErrorCode::RateLimited, "too many requests in flight", ctx);
        }
        self.pending += 1;
        ctx.spawn(work.into_actor(self).map(|result, client, ctx| {
            client.pending -= 1;
            match result {
                Ok(value) => then(client, value, ctx),
                Err(_) => client.error(
                    ErrorCode::Unavailable,
                    "the relay cannot reach its database; try again",
                    ctx,
                ),
            }
        }));
    }

    fn authenticate(&mut self, token: &str, ctx: &mut Context<Self>) {
        if !self.limiters.auth.check(self.socket.client_ip()) {
            return self.error(
                ErrorCode::RateLimited,
                "too many attempts; wait a minute",
                ctx,
            );
        }
        let user_id = match self.accounts.tokens.verify(token) {
            Ok(user_id) => user_id,
            Err(err) => {
                METRICS.auth_failures.fetch_add(1, Relaxed);
                tracing::debug!(conn = self.socket.conn, %err, "client token refused");
                return self.error(
                    ErrorCode::InvalidToken,
                    "invalid or expired access token",
                    ctx,
                );
            }
        };
        let pool = self.accounts.pool.clone();
        let lookup =
            async move { db::run(&pool, move |conn| Ok(user::find(conn, &user_id)?)).await };
        self.look_up(
            lookup,
            |client, found, ctx| match found {
                None => client.error(ErrorCode::UserNotFound, "that user no longer exists", ctx),
                Some(_) if client.user.is_some() => {}
                Some(found) => {
                    let user = UserInfo {
                        id: found.id,
                        email: found.email,
                    };
                    client.send(&ClientEvent::Authenticated { user: &user }, ctx);
                    client.registry.do_send(ClientOnline {
                        conn: client.socket.conn,
                        user_id: user.id.clone(),
                        peer: Peer {
                            addr: ctx.address().recipient(),
                            outbox: Arc::clone(&client.socket.link.outbox),
                        },
                    });
                    client.user = Some(user);
                }
            },
            ctx,
        );
    }

    fn list_machines(&mut self, user_id: String, ctx: &mut Context<Self>) {
        let (pool, registry) = (self.accounts.pool.clone(), self.registry.clone());
        let lookup = async move { machines::list(&pool, &registry, &user_id).await };
        self.look_up(
            lookup,
            |client, machines, ctx| {
                client.send(
                    &ClientEvent::Machines {
                        machines: &machines,
                    },
                    ctx,
                )
            },
            ctx,
        );
    }
}

/// Whether every id in a command is short enough to be real.
fn ids_fit(command: &ClientCommand) -> bool {
    match command {
        ClientCommand::ListSessions { machine_id }
        | ClientCommand::CreateSession { machine_id, .. } => machine_id.len() <= MAX_ID,
        ClientCommand::Attach {
            machine_id,
            session_id,
        } => machine_id.len() <= MAX_ID && session_id.len() <= MAX_ID,
        ClientCommand::Detach { session_id } => session_id.len() <= MAX_ID,
    }
}

impl Actor for ClientSocket {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(socket::tick(&self.settings.heartbeat), |client, ctx| {
            if let Some(outcome) = client.socket.heartbeat(&client.settings.heartbeat, true) {
                client.finish(outcome, ctx);
            }
        });
        ctx.run_later(self.settings.auth.deadline(), |client, ctx| {
            if client.user.is_none() {
                client.finish(Outcome::Idle, ctx);
            }
        });
    }

    fn stopping(&mut self, _: &mut Self::Context) -> Running {
        if self.user.is_some() {
            self.registry.do_send(ClientOffline {
                conn: self.socket.conn,
            });
        }
        Running::Stop
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        self.socket.close();
    }
}

impl SocketActor for ClientSocket {
    fn socket(&mut self) -> &mut Socket {
        &mut self.socket
    }

    fn max_message_bytes(&self) -> usize {
        self.settings.limits.max_message_bytes
    }

    fn on_text(&mut self, text: &[u8], ctx: &mut Context<Self>) {
        self.handle_text(text, ctx);
    }
}

impl StreamHandler<Inbound> for ClientSocket {
    fn handle(&mut self, item: Inbound, ctx: &mut Self::Context) {
        self.receive(item, ctx);
    }

    fn finished(&mut self, ctx: &mut Self::Context) {
        self.finish(Outcome::Lost, ctx);
    }
}

impl Handler<ToClient> for ClientSocket {
    type Result = ();

    fn handle(&mut self, msg: ToClient, ctx: &mut Context<Self>) {
        match msg {
            ToClient::Link { session_id, agent } => {
                self.attached.insert(session_id, agent);
            }
            ToClient::Unlink { session_id } => {
                self.attached.remove(&session_id);
            }
            ToClient::Drop(outcome) => self.finish(outcome, ctx),
        }
    }
}
