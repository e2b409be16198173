//! The data paths of account mode, shared by the registry and the connection actors.
//!
//! - [`Attachment`]: one client attached to one session — the [`Stream`] of output to the
//!   client, and the count of the client's own input. It outlives the client's connection
//!   when the client is in lossless mode and lost its link: the output it misses is kept
//!   for it until it resumes (or the grace period ends).
//! - [`MachinePipes`]: one machine's sessions — per session, the [`Stream`] of input to the
//!   agent and the count of the agent's own output. It outlives the agent's connection
//!   across a replacement, and across a lossless agent's lost link within the grace period.
//!
//! The commands the agent and client actors take, [`ToAgent`] and [`ToClient`], live here
//! too: they carry these shared paths, and the streams are typed by them.
//!
//! Locks are never nested: a path takes one, does its work, releases it, then takes the
//! next, so the agent's output path (machine, then each attachment) and a client's input
//! path (attachment, then machine) cannot deadlock.

use crate::ids::HashMap;
use std::sync::{Arc, Mutex};

use actix::Message;
use tokio::sync::oneshot;

use serde::{Deserialize, Serialize};

use crate::ids::{ConnId, Outcome, SessionId};
use crate::relay::delivery::{Command, Peer, Stream, StreamLimits, StreamState};
use crate::relay::tunnel::RemoteEvent;

/// Registry (or a client) → agent actor.
#[derive(Message)]
#[rtype(result = "()")]
pub enum ToAgent {
    /// Fan this session's output out to one more attachment: queue `attach` to the agent,
    /// then (unless `relink`) `attached` to the client, then tell `done`, on which the
    /// client waits before it reads on.
    Link {
        /// The session.
        session: SessionId,
        /// The attachment (its client, and the stream of its output).
        attachment: SharedAttachment,
        /// A replacement agent takes over an attachment: the client is told nothing.
        relink: bool,
        /// Told once `attach` and `attached` are queued.
        done: Option<oneshot::Sender<()>>,
    },
    /// Stop sending this session's output to `client`.
    Unlink {
        /// The session.
        session: SessionId,
        /// The client (as the agent knows it).
        client: ConnId,
        /// Queue `detach` to the agent.
        detach_agent: bool,
        /// The client asked: queue `detached` to it, after the last output.
        reply: bool,
    },
    /// Close the connection.
    Close(Outcome),
    /// For an agent tunnelled to its user's node: what that node sent.
    Remote(RemoteEvent),
}

impl From<RemoteEvent> for ToAgent {
    fn from(event: RemoteEvent) -> Self {
        Self::Remote(event)
    }
}

impl Command for ToAgent {
    fn close(outcome: Outcome) -> Self {
        Self::Close(outcome)
    }
}

/// Registry → client actor.
#[derive(Message)]
#[rtype(result = "()")]
pub enum ToClient {
    /// The client is no longer attached to this session (it ended).
    Unlink {
        /// The session.
        session: SessionId,
    },
    /// Close the connection.
    Close(Outcome),
    /// For a client tunnelled to its user's node: what that node sent.
    Remote(RemoteEvent),
}

impl From<RemoteEvent> for ToClient {
    fn from(event: RemoteEvent) -> Self {
        Self::Remote(event)
    }
}

impl Command for ToClient {
    fn close(outcome: Outcome) -> Self {
        Self::Close(outcome)
    }
}

/// One client attached to one session.
#[derive(Debug)]
pub struct Attachment {
    /// The session.
    pub session: SessionId,
    /// The id the agent knows this client by (its first connection's id, kept across a
    /// lossless client's resumes).
    pub client: ConnId,
    /// Output for the client.
    pub to_client: Stream<ToClient>,
    /// The last of the client's input messages for this session the relay accepted.
    pub from_client: u64,
}

/// An attachment, shared.
pub type SharedAttachment = Arc<Mutex<Attachment>>;

impl Attachment {
    /// A new attachment of `client` to `session`, output going to `peer`; numbered
    /// (lossless) within `window` bytes if `lossless`, else holding at most `hold`.
    pub fn shared(
        session: SessionId,
        client: ConnId,
        peer: Peer<ToClient>,
        limits: StreamLimits,
        lossless: bool,
    ) -> SharedAttachment {
        let mut to_client = Stream::new(limits.hold);
        if lossless {
            to_client.number(limits.window);
        }
        to_client.connect(peer, None);
        Arc::new(Mutex::new(Self {
            session,
            client,
            to_client,
            from_client: 0,
        }))
    }
}

/// An [`Attachment`] as another node takes it over.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachmentState {
    /// The session.
    pub session: SessionId,
    /// The client, as the agent knows it.
    pub client: ConnId,
    /// Output for the client.
    pub to_client: StreamState,
    /// The last of the client's input the relay accepted.
    pub from_client: u64,
}

impl Attachment {
    /// What another node needs to carry this attachment on.
    pub fn export(&self) -> AttachmentState {
        AttachmentState {
            session: self.session.clone(),
            client: self.client,
            to_client: self.to_client.export(),
            from_client: self.from_client,
        }
    }

    /// An attachment handed over by another node, its client away.
    pub fn import(state: AttachmentState) -> SharedAttachment {
        Arc::new(Mutex::new(Self {
            session: state.session,
            client: state.client,
            to_client: Stream::import(state.to_client),
            from_client: state.from_client,
        }))
    }
}

/// One session's input path to its agent.
#[derive(Debug)]
pub struct SessionPipe {
    /// Input for the agent.
    pub to_agent: Stream<ToAgent>,
    /// The last of the agent's output messages for this session the relay accepted.
    pub from_agent: u64,
}

/// One machine's sessions, as their input and output paths see them.
#[derive(Debug)]
pub struct MachinePipes {
    /// The agent connected now, if any.
    agent: Option<Peer<ToAgent>>,
    /// The agent is in lossless mode.
    lossless: bool,
    limits: StreamLimits,
    sessions: HashMap<SessionId, SessionPipe>,
}

/// A machine's pipes, shared.
pub type SharedMachinePipes = Arc<Mutex<MachinePipes>>;

impl MachinePipes {
    /// Pipes of a machine with no sessions yet.
    pub fn shared(limits: StreamLimits) -> SharedMachinePipes {
        Arc::new(Mutex::new(Self {
            agent: None,
            lossless: false,
            limits,
            sessions: HashMap::default(),
        }))
    }

    /// A (new) agent is online for the machine: input goes to it from now on — except
    /// input of sessions it already had, which waits: a plain agent's until it is sent
    /// `attach` again ([`Self::reconnect_plain`]), a lossless agent's until it says what
    /// it received ([`Self::resume`]).
    pub fn agent_online(&mut self, agent: Peer<ToAgent>, lossless: bool) {
        self.lossless = lossless;
        for pipe in self.sessions.values_mut() {
            pipe.to_agent.disconnect();
            if lossless {
                pipe.to_agent.number(self.limits.window);
            }
        }
        self.agent = Some(agent);
    }

    /// The agent's link is lost but it may come back: its input is held.
    pub fn agent_away(&mut self) {
        self.agent = None;
        for pipe in self.sessions.values_mut() {
            pipe.to_agent.disconnect();
        }
    }

    /// The agent in lossless mode.
    pub fn lossless(&self) -> bool {
        self.lossless
    }

    /// A session's pipe, made on first use, its input going to the agent now online. For
    /// a lossless agent, an existing pipe is left waiting for its resume.
    pub fn session(&mut self, session: &SessionId) -> &mut SessionPipe {
        let limits = self.limits;
        let (agent, lossless) = (self.agent.clone(), self.lossless);
        self.sessions.entry(session.clone()).or_insert_with(|| {
            let mut to_agent = Stream::new(limits.hold);
            if lossless {
                to_agent.number(limits.window);
            }
            if let Some(agent) = agent {
                to_agent.connect(agent, None);
            }
            SessionPipe {
                to_agent,
                from_agent: 0,
            }
        })
    }

    /// Connects a session's input to the agent if it is not, flushing what was held
    /// (a plain agent, after a replacement). A lossless agent's waits for [`Self::resume`].
    pub fn reconnect_plain(&mut self, session: &SessionId) {
        let Some(agent) = self.agent.clone() else {
            return;
        };
        let lossless = self.lossless;
        let pipe = self.session(session);
        if !lossless && pipe.to_agent.peer().is_none() {
            pipe.to_agent.connect(agent, None);
        }
    }

    /// A lossless agent says it received input of `session` up to `last_seq`: `ack_first`
    /// is given the last of its output the relay has (to queue as `ack` first), then the
    /// rest of the input is replayed to it and input flows again.
    pub fn resume(&mut self, session: &SessionId, last_seq: u64, ack_first: impl FnOnce(u64)) {
        let Some(agent) = self.agent.clone() else {
            return;
        };
        let pipe = self.session(session);
        ack_first(pipe.from_agent);
        pipe.to_agent.connect(agent, Some(last_seq));
    }

    /// The session ended: its pipe goes.
    pub fn end(&mut self, session: &SessionId) {
        self.sessions.remove(session);
    }

    /// What another node needs to carry these pipes on, the agent away: per session, its
    /// input stream and the count of the agent's output.
    pub fn export(&self) -> MachinePipesState {
        MachinePipesState {
            lossless: self.lossless,
            sessions: self
                .sessions
                .iter()
                .map(|(id, pipe)| (id.clone(), pipe.to_agent.export(), pipe.from_agent))
                .collect(),
        }
    }

    /// Pipes handed over by another node, their agent away, bounded by this node's
    /// `limits` from now on.
    pub fn import(state: MachinePipesState, limits: StreamLimits) -> SharedMachinePipes {
        let sessions = state
            .sessions
            .into_iter()
            .map(|(id, to_agent, from_agent)| {
                let to_agent = Stream::import(to_agent);
                (
                    id,
                    SessionPipe {
                        to_agent,
                        from_agent,
                    },
                )
            })
            .collect();
        Arc::new(Mutex::new(Self {
            agent: None,
            lossless: state.lossless,
            limits,
            sessions,
        }))
    }

    /// Every session's count of the agent's output (for its `ack`s).
    pub fn received(&self) -> impl Iterator<Item = (&SessionId, u64)> {
        self.sessions.iter().map(|(id, pipe)| (id, pipe.from_agent))
    }
}

/// [`MachinePipes`] as another node takes them over.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachinePipesState {
    /// The agent was in lossless mode.
    pub lossless: bool,
    /// Each session: its input stream, and the last of the agent's output accepted.
    pub sessions: Vec<(SessionId, StreamState, u64)>,
}
