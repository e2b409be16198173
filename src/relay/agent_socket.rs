//! `AgentSocket`: the actor of one `/ws/agent` connection (a Mac agent).
//!
//! It authenticates with the machine token, reports its sessions to the `SessionRegistry`,
//! and fans each session's output straight into the outboxes of the clients attached to it:
//! the registry decides who is attached, but never carries the data.

use std::collections::HashMap;
use std::sync::Arc;

use actix::prelude::*;
use actix_web::web;

use crate::accounts::Accounts;
use crate::auth::opaque;
use crate::config::Settings;
use crate::db;
use crate::error::ApiError;
use crate::limits::Limiters;
use crate::metrics::METRICS;
use crate::models::{machine, now};
use crate::relay::protocol::{
    parse, AgentEvent, AgentRequest, ClientEvent, Common, ErrorCode, SessionInfo,
};
use crate::relay::registry::pairings::ConnId;
use crate::relay::registry::{
    AgentOffline, AgentOnline, AgentReport, Peer, SessionRegistry, ToAgent, ToClient,
};
use crate::relay::socket::{self, Outcome, Socket, SocketActor};
use crate::relay::Opened;
use crate::transport::{text_frame, Inbound, PushError};
use std::sync::atomic::Ordering::Relaxed;

/// Longest session id, name and command an agent may report.
const MAX_SESSION_ID: usize = 128;
const MAX_SESSION_NAME: usize = 256;
const MAX_SESSION_COMMAND: usize = 4096;

enum State {
    /// Connected; nothing but `register` is accepted.
    Waiting,
    /// The token is being looked up.
    Verifying,
    /// Registered for a machine.
    Online { machine_id: String },
}

/// One `/ws/agent` connection.
pub struct AgentSocket {
    socket: Socket,
    registry: Addr<SessionRegistry>,
    accounts: web::Data<Accounts>,
    settings: Arc<Settings>,
    limiters: Arc<Limiters>,
    state: State,
    /// Clients attached to each session: output is pushed to all of them.
    watchers: HashMap<String, Vec<(ConnId, Peer<ToClient>)>>,
}

impl AgentSocket {
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
                state: State::Waiting,
                watchers: HashMap::new(),
            }
        })
    }

    fn handle_text(&mut self, text: &[u8], ctx: &mut Context<Self>) {
        let request = match parse::<AgentRequest>(text) {
            Ok(request) => request,
            Err(err) => {
                let (code, message) = err.account_error();
                return self.error(code, message, ctx);
            }
        };
        let conn = self.socket.conn;
        match (request, &self.state) {
            (AgentRequest::Ping { ts }, _) => self.send(&Common::Pong { ts: &ts }, ctx),
            (AgentRequest::Pong { .. }, _) => {}
            (AgentRequest::Register { .. }, State::Waiting)
                if !self.limiters.auth.check(self.socket.client_ip()) =>
            {
                self.error(
                    ErrorCode::RateLimited,
                    "too many attempts; wait a minute",
                    ctx,
                )
            }
            (AgentRequest::Register { token, .. }, State::Waiting) => self.verify(token, ctx),
            (AgentRequest::Register { .. }, _) => {
                self.error(ErrorCode::InvalidMessage, "already registered", ctx)
            }
            (_, State::Waiting | State::Verifying) => self.error(
                ErrorCode::NotAuthenticated,
                "send register with the machine token first",
                ctx,
            ),
            (AgentRequest::Sessions { sessions }, State::Online { .. }) => {
                if sessions.iter().all(valid_session) {
                    self.registry
                        .do_send(AgentReport::Sessions { conn, sessions });
                } else {
                    self.error(
                        ErrorCode::InvalidMessage,
                        "a session field is too long",
                        ctx,
                    );
                }
            }
            (AgentRequest::SessionStarted { session }, State::Online { .. }) => {
                if valid_session(&session) {
                    self.registry
                        .do_send(AgentReport::Started { conn, session });
                } else {
                    self.error(
                        ErrorCode::InvalidMessage,
                        "a session field is too long",
                        ctx,
                    );
                }
            }
            (AgentRequest::SessionEnded { session_id }, State::Online { .. }) => {
                self.registry
                    .do_send(AgentReport::Ended { conn, session_id });
            }
            (AgentRequest::Data { session_id, data }, State::Online { .. }) => {
                self.fan_out(&session_id, &data);
            }
        }
    }

    /// Pushes one output message to every attached client. The frame is encoded once and
    /// shared; a client too slow to take it is dropped without slowing the others.
    fn fan_out(&mut self, session_id: &str, data: &str) {
        let Some(watchers) = self.watchers.get_mut(session_id) else {
            return;
        };
        let frame = text_frame(&ClientEvent::Data { session_id, data });
        watchers.retain(|(_, peer)| match peer.outbox.push(frame.clone()) {
            Ok(()) => {
                METRICS.relayed(data.len());
                true
            }
            Err(PushError::Full) => {
                peer.addr.do_send(ToClient::Drop(Outcome::SlowConsumer));
                false
            }
            Err(PushError::Closed) => false,
        });
    }

    fn verify(&mut self, token: String, ctx: &mut Context<Self>) {
        self.state = State::Verifying;
        let hash = opaque::hash(&token);
        let pool = self.accounts.pool.clone();
        let lookup = async move {
            db::run(&pool, move |conn| {
                let found = machine::find_by_token_hash(conn, &hash)?
                    .filter(|m| opaque::hashes_match(&m.token_hash, &hash));
                if let Some(m) = &found {
                    machine::touch(conn, &m.id, now())?;
                }
                Ok(found)
            })
            .await
        };
        ctx.spawn(
            lookup
                .into_actor(self)
                .map(|found, agent, ctx| match found {
                    Ok(Some(machine)) => agent.online(machine.id, machine.user_id, ctx),
                    Ok(None) => agent.refuse("invalid machine token", ctx),
                    Err(ApiError::Unavailable(why)) => agent.refuse(why, ctx),
                    Err(_) => agent.refuse("the relay could not check the token", ctx),
                }),
        );
    }

    fn online(&mut self, machine_id: String, user_id: String, ctx: &mut Context<Self>) {
        self.send(
            &AgentEvent::Registered {
                success: true,
                machine_id: Some(&machine_id),
                error: None,
            },
            ctx,
        );
        self.send(&AgentEvent::ListSessions, ctx);
        self.registry.do_send(AgentOnline {
            conn: self.socket.conn,
            machine_id: machine_id.clone(),
            user_id,
            peer: Peer {
                addr: ctx.address().recipient(),
                outbox: Arc::clone(&self.socket.link.outbox),
            },
        });
        tracing::info!(conn = self.socket.conn, %machine_id, "agent registered");
        self.state = State::Online { machine_id };
    }

    fn refuse(&mut self, why: &str, ctx: &mut Context<Self>) {
        METRICS.auth_failures.fetch_add(1, Relaxed);
        self.send(
            &AgentEvent::Registered {
                success: false,
                machine_id: None,
                error: Some(why),
            },
            ctx,
        );
        self.finish(Outcome::Refused, ctx);
    }
}

fn valid_session(session: &SessionInfo) -> bool {
    session.id.len() <= MAX_SESSION_ID
        && session.name.len() <= MAX_SESSION_NAME
        && session.command.len() <= MAX_SESSION_COMMAND
        && session.created_at.len() <= 64
}

impl Actor for AgentSocket {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(socket::tick(&self.settings.heartbeat), |agent, ctx| {
            if let Some(outcome) = agent.socket.heartbeat(&agent.settings.heartbeat, true) {
                agent.finish(outcome, ctx);
            }
        });
        ctx.run_later(self.settings.auth.deadline(), |agent, ctx| {
            if !matches!(agent.state, State::Online { .. }) {
                agent.finish(Outcome::Idle, ctx);
            }
        });
    }

    fn stopping(&mut self, _: &mut Self::Context) -> Running {
        if let State::Online { machine_id } = &self.state {
            self.registry.do_send(AgentOffline {
                conn: self.socket.conn,
            });
            let (pool, id) = (self.accounts.pool.clone(), machine_id.clone());
            actix_rt::spawn(async move {
                let _ = db::run(&pool, move |conn| Ok(machine::touch(conn, &id, now())?)).await;
            });
        }
        Running::Stop
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        self.socket.close();
    }
}

impl SocketActor for AgentSocket {
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

impl StreamHandler<Inbound> for AgentSocket {
    fn handle(&mut self, item: Inbound, ctx: &mut Self::Context) {
        self.receive(item, ctx);
    }

    fn finished(&mut self, ctx: &mut Self::Context) {
        self.finish(Outcome::Lost, ctx);
    }
}

impl Handler<ToAgent> for AgentSocket {
    type Result = ();

    fn handle(&mut self, msg: ToAgent, ctx: &mut Context<Self>) {
        match msg {
            ToAgent::Link {
                session_id,
                client,
                peer,
            } => {
                // In this order: the agent hears `attach`, the client hears `attached`, and
                // only then can output (pushed after this handler) or input reach either.
                let client_id = client.to_string();
                self.send(
                    &AgentEvent::Attach {
                        session_id: &session_id,
                        client_id: &client_id,
                    },
                    ctx,
                );
                // The client's actor gets the link before its client can read `attached`,
                // so input sent right after `attached` finds the session.
                peer.addr.do_send(ToClient::Link {
                    session_id: session_id.clone(),
                    agent: Peer {
                        addr: ctx.address().recipient(),
                        outbox: Arc::clone(&self.socket.link.outbox),
                    },
                });
                let attached = text_frame(&ClientEvent::Attached {
                    session_id: &session_id,
                });
                if peer.outbox.push(attached).is_err() {
                    peer.addr.do_send(ToClient::Drop(Outcome::SlowConsumer));
                }
                let watchers = self.watchers.entry(session_id).or_default();
                watchers.retain(|(c, _)| *c != client);
                watchers.push((client, peer));
            }
            ToAgent::Unlink {
                session_id,
                client,
                detach_agent,
                reply_to,
            } => {
                if let Some(watchers) = self.watchers.get_mut(&session_id) {
                    watchers.retain(|(c, _)| *c != client);
                    if watchers.is_empty() {
                        self.watchers.remove(&session_id);
                    }
                }
                if detach_agent {
                    let client_id = client.to_string();
                    self.send(
                        &AgentEvent::Detach {
                            session_id: &session_id,
                            client_id: &client_id,
                        },
                        ctx,
                    );
                }
                if let Some(peer) = reply_to {
                    let detached = text_frame(&ClientEvent::Detached {
                        session_id: &session_id,
                    });
                    peer.addr.do_send(ToClient::Unlink { session_id });
                    let _ = peer.outbox.push(detached);
                }
            }
            ToAgent::Drop(outcome) => self.finish(outcome, ctx),
        }
    }
}
