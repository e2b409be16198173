//! `AgentSocket`: the protocol of one `/ws/agent` connection (a Mac agent).
//!
//! It authenticates with the machine token, reports its sessions to the `MachineRegistry`,
//! and fans each session's output straight into the outboxes of the clients attached to it:
//! the registry decides who is attached, but never carries the data.

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use actix::prelude::*;
use actix_web::web;
use bytes::Bytes;

use super::registry::{AgentOffline, AgentOnline, AgentReport, MachineRegistry, ToAgent, ToClient};
use super::REGISTRY_TIMEOUT;
use crate::accounts::{self, Accounts};
use crate::audit;
use crate::auth::opaque;
use crate::db;
use crate::error::ApiError;
use crate::ids::{ConnId, MachineId, Outcome, SessionId, UserId};
use crate::limits::Limiters;
use crate::metrics::METRICS;
use crate::models::{machine, now};
use crate::relay::delivery::{Delivery, Peer};
use crate::relay::protocol::account::{self, AgentEvent, AgentRequest, ClientEvent};
use crate::relay::protocol::json::Text;
use crate::relay::protocol::{Common, ErrorCode};
use crate::relay::socket::{Connection, Ctx, Opened, Protocol};

/// Where an agent is in its life.
enum State {
    /// Connected; nothing but `register` is accepted.
    Waiting,
    /// The token is being checked (nothing else is read meanwhile).
    Verifying,
    /// Registered for a machine.
    Online { machine: MachineId, user: UserId },
}

/// The state of one `/ws/agent` connection.
pub struct AgentSocket {
    registry: Addr<MachineRegistry>,
    accounts: web::Data<Accounts>,
    limiters: Arc<Limiters>,
    state: State,
    /// Clients attached to each session: output is pushed to all of them.
    watchers: HashMap<SessionId, Vec<Peer<ToClient>>>,
}

impl AgentSocket {
    /// Starts the actor of a freshly upgraded `/ws/agent` connection.
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
                state: State::Waiting,
                watchers: HashMap::new(),
            },
        )
    }
}

impl Protocol for AgentSocket {
    type Command = ToAgent;
    const JSON_PING: bool = true;

    fn started(conn: &mut Connection<Self>, ctx: &mut Ctx<Self>) {
        ctx.run_later(conn.settings.auth.deadline(), |conn, ctx| {
            if !matches!(conn.proto.state, State::Online { .. }) {
                conn.finish(Outcome::Idle, ctx);
            }
        });
    }

    fn on_text(conn: &mut Connection<Self>, text: Bytes, ctx: &mut Ctx<Self>) {
        conn.on_request(&text, ctx);
    }

    fn on_command(conn: &mut Connection<Self>, command: ToAgent, ctx: &mut Ctx<Self>) {
        conn.on_command(command, ctx);
    }

    fn stopping(conn: &mut Connection<Self>) {
        let State::Online { machine, user } = &conn.proto.state else {
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
        conn.proto.registry.do_send(AgentOffline {
            conn: conn.socket.conn,
        });
        let (pool, id) = (conn.proto.accounts.pool.clone(), machine.clone());
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
        match (request, &self.proto.state) {
            (AgentRequest::Ping { ts }, _) => self.send(&Common::Pong { ts: &ts }, ctx),
            (AgentRequest::Pong { .. }, _) => {}
            (AgentRequest::Register { .. }, State::Waiting)
                if !self.proto.limiters.auth.check(self.socket.client_ip()) =>
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
                let report = AgentReport::Sessions { conn, sessions };
                self.proto.registry.do_send(report);
            }
            (AgentRequest::SessionStarted { session }, State::Online { .. }) => {
                let report = AgentReport::Started { conn, session };
                self.proto.registry.do_send(report);
            }
            (AgentRequest::SessionEnded { session_id }, State::Online { .. }) => {
                let report = AgentReport::Ended {
                    conn,
                    session: session_id,
                };
                self.proto.registry.do_send(report);
            }
            (AgentRequest::Data { session_id, data }, State::Online { .. }) => {
                self.fan_out(&session_id, &data);
            }
        }
    }

    /// Pushes one output message to every attached client. The frame is encoded once and
    /// shared; a client too slow to take it is dropped without slowing the others.
    fn fan_out(&mut self, session_id: &Text<'_>, data: &Text<'_>) {
        let Some(watchers) = self.proto.watchers.get_mut(&*session_id.value()) else {
            return;
        };
        let frame = account::data_frame(session_id, data);
        // The last watcher takes the frame itself; the others share it (a `Bytes` clone).
        let (mut frame, mut left) = (Some(frame), watchers.len());
        watchers.retain(|client| {
            left -= 1;
            let frame = if left == 0 {
                frame.take()
            } else {
                frame.clone()
            };
            match frame.map(|frame| client.deliver(frame)) {
                Some(Delivery::Delivered) => {
                    METRICS.relayed(data.json_len());
                    true
                }
                _ => false,
            }
        });
    }

    /// Checks the token, then asks the registry to bring the machine online; reads
    /// nothing else from the agent until both are answered.
    fn verify(&mut self, token: String, ctx: &mut Ctx<AgentSocket>) {
        self.proto.state = State::Verifying;
        let hash = opaque::hash(&token);
        let pool = self.proto.accounts.pool.clone();
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
            |agent, found, ctx| match found {
                Ok(Some(m)) => agent.come_online(m.id.into(), m.user_id.into(), ctx),
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

    fn come_online(&mut self, machine: MachineId, user: UserId, ctx: &mut Ctx<AgentSocket>) {
        let online = AgentOnline {
            machine: machine.clone(),
            user: user.clone(),
            peer: self.peer(ctx),
        };
        let answer = self.proto.registry.send(online).timeout(REGISTRY_TIMEOUT);
        self.wait_for(
            answer,
            move |agent, answer, ctx| match answer {
                Ok(Ok(())) => {
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
                    agent.proto.state = State::Online { machine, user };
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
            ToAgent::Link {
                session,
                client,
                relink,
                done,
            } => {
                // In this order: the agent hears `attach`, the client hears `attached`, and
                // only then can output (pushed after this) or input (once the client holds
                // this agent) reach either.
                let attach = AgentEvent::Attach {
                    session_id: &session,
                    client_id: client.conn,
                };
                self.send(&attach, ctx);
                if !relink {
                    client.send(&ClientEvent::Attached {
                        session_id: std::borrow::Cow::Borrowed(&session),
                    });
                }
                let me = self.peer(ctx);
                match done {
                    Some(done) => {
                        let _ = done.send(me);
                    }
                    None => client.tell(ToClient::Link {
                        session: session.clone(),
                        agent: me,
                    }),
                }
                let watchers = self.proto.watchers.entry(session).or_default();
                watchers.retain(|c| c.conn != client.conn);
                watchers.push(client);
            }
            ToAgent::Unlink {
                session,
                client,
                detach_agent,
                reply_to,
            } => {
                self.unwatch(&session, client);
                if detach_agent {
                    let detach = AgentEvent::Detach {
                        session_id: &session,
                        client_id: client,
                    };
                    self.send(&detach, ctx);
                }
                if let Some(peer) = reply_to {
                    peer.send(&ClientEvent::Detached {
                        session_id: std::borrow::Cow::Borrowed(&session),
                    });
                }
            }
            ToAgent::Close(outcome) => self.finish(outcome, ctx),
        }
    }

    fn unwatch(&mut self, session: &SessionId, client: ConnId) {
        if let Some(watchers) = self.proto.watchers.get_mut(session) {
            watchers.retain(|c| c.conn != client);
            if watchers.is_empty() {
                self.proto.watchers.remove(session);
            }
        }
    }
}
