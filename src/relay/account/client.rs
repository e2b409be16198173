//! `ClientSocket`: the protocol of one `/ws/client` connection (a browser tab of a
//! signed-in user).
//!
//! It authenticates with an access token; requests that name a machine go to the
//! `MachineRegistry`, which checks ownership. Input for an attached session is pushed
//! straight into the agent's outbox. Every request is answered before the next frame is
//! read, so a client may send `auth`, `attach` and `data` back to back.

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use actix::prelude::*;
use actix_web::web;
use bytes::Bytes;

use super::directory;
use super::registry::{
    ClientAsk, ClientCommand, ClientOffline, ClientOnline, ClientReply, MachineRegistry, ToAgent,
    ToClient,
};
use super::REGISTRY_TIMEOUT;
use crate::accounts::{self, Accounts};
use crate::audit;
use crate::db;
use crate::error::ApiError;
use crate::ids::{MachineId, Outcome, SessionId, UserId};
use crate::limits::Limiters;
use crate::metrics::METRICS;
use crate::relay::delivery::{Delivery, Peer};
use crate::relay::protocol::account::{self, AgentEvent, ClientEvent, ClientRequest};
use crate::relay::protocol::{Common, ErrorCode, UserInfo};
use crate::relay::socket::{Connection, Ctx, Opened, Protocol};
use crate::transport::text_frame;

/// The answer when the relay cannot reach its database.
const UNAVAILABLE: &str = "the relay cannot reach its database; try again";

/// The state of one `/ws/client` connection.
pub struct ClientSocket {
    registry: Addr<MachineRegistry>,
    accounts: web::Data<Accounts>,
    limiters: Arc<Limiters>,
    user: Option<UserInfo>,
    /// The agent of each attached session, where input goes.
    attached: HashMap<SessionId, Peer<ToAgent>>,
}

impl ClientSocket {
    /// Starts the actor of a freshly upgraded `/ws/client` connection.
    pub fn start(
        opened: Opened,
        registry: Addr<MachineRegistry>,
        accounts: web::Data<Accounts>,
        limiters: Arc<Limiters>,
    ) -> Addr<Connection<Self>> {
        Connection::start(
            opened,
            Self {
                registry,
                accounts,
                limiters,
                user: None,
                attached: HashMap::new(),
            },
        )
    }
}

impl Protocol for ClientSocket {
    type Command = ToClient;
    const JSON_PING: bool = true;

    fn started(conn: &mut Connection<Self>, ctx: &mut Ctx<Self>) {
        ctx.run_later(conn.settings.auth.deadline(), |conn, ctx| {
            if conn.proto.user.is_none() {
                conn.finish(Outcome::Idle, ctx);
            }
        });
    }

    fn on_text(conn: &mut Connection<Self>, text: Bytes, ctx: &mut Ctx<Self>) {
        conn.on_request(&text, ctx);
    }

    fn on_command(conn: &mut Connection<Self>, command: ToClient, ctx: &mut Ctx<Self>) {
        match command {
            ToClient::Link { session, agent } => {
                conn.proto.attached.insert(session, agent);
            }
            ToClient::Unlink { session } => {
                conn.proto.attached.remove(&session);
            }
            ToClient::Close(outcome) => conn.finish(outcome, ctx),
        }
    }

    fn stopping(conn: &mut Connection<Self>) {
        if conn.proto.user.is_some() {
            conn.proto.registry.do_send(ClientOffline {
                conn: conn.socket.conn,
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
        if self.proto.user.is_none() {
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
        }
        let command = match request {
            ClientRequest::Auth { .. } => {
                return self.error(ErrorCode::InvalidMessage, "already authenticated", ctx)
            }
            ClientRequest::Ping { ts } => return self.send(&Common::Pong { ts: &ts }, ctx),
            ClientRequest::Pong { .. } => return,
            ClientRequest::ListMachines => return self.list_machines(ctx),
            ClientRequest::Data { session_id, data } => {
                let input = || account::data_frame(&session_id, &data);
                return self.forward_to_agent(&session_id.value(), input, data.json_len(), ctx);
            }
            ClientRequest::Resize {
                session_id,
                cols,
                rows,
            } => {
                let resize = || {
                    text_frame(&AgentEvent::Resize {
                        session_id: &session_id,
                        cols,
                        rows,
                    })
                };
                return self.forward_to_agent(session_id.as_str(), resize, 0, ctx);
            }
            ClientRequest::ListSessions { machine_id } => ClientCommand::ListSessions {
                machine: machine_id,
            },
            ClientRequest::Attach {
                machine_id,
                session_id,
            } => ClientCommand::Attach {
                machine: machine_id,
                session: session_id,
            },
            ClientRequest::Detach { session_id } => {
                // Input sent after `detach` is refused at once, whatever the agent does.
                if self.proto.attached.remove(&session_id).is_some() {
                    self.audit("client_detach", None, &session_id);
                }
                ClientCommand::Detach {
                    session: session_id,
                }
            }
            ClientRequest::CreateSession {
                machine_id,
                name,
                command,
            } => ClientCommand::CreateSession {
                machine: machine_id,
                name,
                command,
            },
        };
        self.ask(command, ctx);
    }

    /// Sends input or a resize (`frame`, encoded only if attached) to the agent of an
    /// attached session.
    fn forward_to_agent(
        &mut self,
        session: &str,
        frame: impl FnOnce() -> bytes::Bytes,
        payload_bytes: usize,
        ctx: &mut Ctx<ClientSocket>,
    ) {
        let Some(agent) = self.proto.attached.get(session) else {
            return self.error(ErrorCode::NotAttached, "not attached to that session", ctx);
        };
        // A full agent outbox means the agent reads slower than its clients type: the policy
        // drops the agent, not this client.
        if agent.deliver(frame()) == Delivery::Delivered && payload_bytes > 0 {
            METRICS.relayed(payload_bytes);
        }
    }

    /// Asks the registry and handles its answer (and, for `attach`, the link) before
    /// reading on.
    fn ask(&mut self, command: ClientCommand, ctx: &mut Ctx<ClientSocket>) {
        let attaching = match &command {
            ClientCommand::Attach { machine, session } => Some((machine.clone(), session.clone())),
            _ => None,
        };
        let ask = ClientAsk {
            conn: self.socket.conn,
            command,
        };
        let answer = self.proto.registry.send(ask).timeout(REGISTRY_TIMEOUT);
        self.wait_for(
            answer,
            move |client, answer, ctx| match (answer, attaching) {
                (Ok(ClientReply::Done), _) => {}
                (Ok(ClientReply::Linking(link)), Some((machine, session))) => {
                    let link = tokio::time::timeout(REGISTRY_TIMEOUT, link);
                    client.wait_for(
                        link,
                        move |client, agent, ctx| match agent {
                            Ok(Ok(agent)) => {
                                client.audit("client_attach", Some(&machine), &session);
                                client.proto.attached.insert(session, agent);
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
                (Ok(ClientReply::Linking(_)), None) => {}
                (Err(_), _) => {
                    client.error(ErrorCode::Unavailable, "the relay is busy; try again", ctx)
                }
            },
            ctx,
        );
    }

    fn authenticate(&mut self, token: &str, ctx: &mut Ctx<ClientSocket>) {
        if !self.proto.limiters.auth.check(self.socket.client_ip()) {
            return self.error(
                ErrorCode::RateLimited,
                "too many attempts; wait a minute",
                ctx,
            );
        }
        let user_id = match self.proto.accounts.tokens.verify(token) {
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
        let pool = self.proto.accounts.pool.clone();
        let lookup = async move {
            db::run(&pool, move |conn| {
                Ok(accounts::active_user(conn, user_id.as_str())?)
            })
            .await
        };
        self.wait_for(
            lookup,
            |client, found, ctx| match found {
                Ok(None) => client.error(
                    ErrorCode::UserNotFound,
                    "that account no longer exists or is disabled",
                    ctx,
                ),
                Ok(Some(found)) => {
                    let user = UserInfo {
                        id: found.id.into(),
                        email: found.email,
                    };
                    client.send(&ClientEvent::Authenticated { user: &user }, ctx);
                    client.proto.registry.do_send(ClientOnline {
                        user: user.id.clone(),
                        peer: client.peer(ctx),
                    });
                    client.proto.user = Some(user);
                }
                Err(err) => client.unavailable(err, ctx),
            },
            ctx,
        );
    }

    fn list_machines(&mut self, ctx: &mut Ctx<ClientSocket>) {
        let Some(user) = &self.proto.user else {
            return;
        };
        let (pool, registry) = (
            self.proto.accounts.pool.clone(),
            self.proto.registry.clone(),
        );
        let user_id = user.id.clone();
        let lookup = async move { directory::list(&pool, &registry, &user_id).await };
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
