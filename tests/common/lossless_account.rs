//! An agent and a web client that speak lossless mode on one attached session as careful
//! apps would: numbered `data`, kept until acknowledged, `ack`s for what they receive, a
//! dead link noticed when even the relay's JSON pings stop, and a resume that re-sends
//! what the relay does not have. Each records every payload it receives and fails the test
//! on a duplicate or a gap.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::sync::{oneshot, watch};
use tokio_tungstenite::tungstenite::Message;

use super::account::{eventually_machine, owner};
use super::lossless::{next_json, open};
use super::proxy::Proxy;
use super::{RelayPort, Ws};

/// Which end of the session.
pub enum Role {
    /// The Mac agent, with its machine token.
    Agent {
        /// `hmt_…`.
        token: String,
    },
    /// A web client of the machine's owner.
    Client {
        /// Access token.
        access: String,
        /// The machine.
        machine_id: String,
    },
}

/// How one end behaves.
pub struct Plan {
    /// The relay, or a proxy in front of it.
    pub port: u16,
    /// Agent or client.
    pub role: Role,
    /// The one session both use.
    pub session: &'static str,
    /// Its payloads are `"{name}-{n}"`.
    pub name: &'static str,
    /// How many it sends, one every `every`.
    pub messages: u64,
    /// Pace of sending.
    pub every: Duration,
    /// How many the other end sends.
    pub expect: u64,
    /// Silence after which the link is taken for dead.
    pub dead_after: Duration,
    /// Told once it has sent everything, had it acknowledged, and received everything.
    pub done: Option<oneshot::Sender<()>>,
    /// Set by the test when both may stop.
    pub finish: watch::Receiver<bool>,
}

struct State {
    unacked: VecDeque<(u64, String)>,
    sent: u64,
    received: Vec<String>,
    last_seq: u64,
    acked_to_relay: u64,
    client_key: String,
    resumes: u32,
}

impl State {
    fn absorb(&mut self, name: &str, msg: &Value) {
        match msg["type"].as_str() {
            Some("data") => {
                let seq = msg["seq"].as_u64().expect("lossless data carries seq");
                assert_eq!(seq, self.last_seq + 1, "{name}: seq out of order: {msg}");
                self.last_seq = seq;
                self.received.push(msg["data"].as_str().unwrap().to_owned());
            }
            Some("ack") => {
                let seq = msg["seq"].as_u64().unwrap();
                while self.unacked.front().is_some_and(|(s, _)| *s <= seq) {
                    self.unacked.pop_front();
                }
            }
            Some("ping" | "attach" | "detach" | "attached" | "list_sessions" | "registered") => {}
            Some("authenticated" | "machine_status" | "session_started") => {}
            _ => panic!("{name}: unexpected {msg}"),
        }
    }
}

/// The next message of `kind`, handing everything before it to `state`.
async fn until(ws: &mut Ws, kind: &str, state: &mut State, name: &str) -> Option<Value> {
    loop {
        let msg = next_json(ws, Duration::from_secs(2)).await?;
        if msg["type"] == kind {
            return Some(msg);
        }
        state.absorb(name, &msg);
    }
}

async fn send(ws: &mut Ws, value: Value) -> bool {
    ws.send(Message::text(value.to_string())).await.is_ok()
}

/// (Re)connects and, when `resuming`, says what was received and re-sends what the relay
/// does not have. `None` if this attempt failed (a dead link, or too early).
async fn connect(plan: &Plan, state: &mut State, resuming: bool) -> Option<Ws> {
    let session = plan.session;
    match &plan.role {
        Role::Agent { token } => {
            let mut ws = open(plan.port, "/ws/agent").await?;
            let register = json!({"type": "register", "token": token, "ack": true});
            send(&mut ws, register).await.then_some(())?;
            let registered = until(&mut ws, "registered", state, plan.name).await?;
            assert_eq!(registered["success"], true, "{registered}");
            until(&mut ws, "list_sessions", state, plan.name).await?;
            let sessions = json!({"type": "sessions", "sessions": [{
                "id": session, "name": "zsh", "command": "/bin/zsh",
                "createdAt": "2026-11-30T10:00:00Z"}]});
            send(&mut ws, sessions).await.then_some(())?;
            if resuming {
                let resume = json!({"type": "resume", "sessionId": session,
                                    "lastSeq": state.last_seq});
                send(&mut ws, resume).await.then_some(())?;
                let ack = until(&mut ws, "ack", state, plan.name).await?;
                state.absorb(plan.name, &ack);
            }
            Some(ws)
        }
        Role::Client { access, machine_id } => {
            let mut ws = open(plan.port, "/ws/client").await?;
            let auth = json!({"type": "auth", "token": access, "ack": true,
                              "clientId": state.client_key});
            send(&mut ws, auth).await.then_some(())?;
            until(&mut ws, "authenticated", state, plan.name).await?;
            let mut attach = json!({"type": "attach", "machineId": machine_id,
                                    "sessionId": session});
            if resuming {
                attach["lastSeq"] = json!(state.last_seq);
            }
            send(&mut ws, attach).await.then_some(())?;
            let attached = until(&mut ws, "attached", state, plan.name).await?;
            assert_eq!(attached["resumed"], resuming, "{}: {attached}", plan.name);
            if resuming {
                let ack = until(&mut ws, "ack", state, plan.name).await?;
                state.absorb(plan.name, &ack);
            }
            Some(ws)
        }
    }
}

fn data(plan: &Plan, seq: u64, payload: &str) -> Value {
    json!({"type": "data", "sessionId": plan.session, "data": payload, "seq": seq})
}

/// Runs one end until the test says `finish`; returns what it received and how many
/// times it resumed.
pub async fn run(mut plan: Plan) -> (Vec<String>, u32) {
    let mut state = State {
        unacked: VecDeque::new(),
        sent: 0,
        received: Vec::new(),
        last_seq: 0,
        acked_to_relay: 0,
        client_key: uuid::Uuid::new_v4().to_string(),
        resumes: 0,
    };
    let mut ws = connect(&plan, &mut state, false)
        .await
        .expect("first connection");
    if let Role::Agent { .. } = plan.role {
        // Output is for attached clients: the agent starts once the client is attached.
        let attach = until(&mut ws, "attach", &mut state, plan.name);
        tokio::time::timeout(Duration::from_secs(10), attach)
            .await
            .expect("the client attaches")
            .expect("the client attaches");
    }
    let mut done = plan.done.take();
    let mut next_send = Instant::now();
    let mut heard = Instant::now();
    let mut dead = false;
    let mut ack_tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        if *plan.finish.borrow() {
            return (state.received, state.resumes);
        }
        let complete = state.sent == plan.messages
            && state.unacked.is_empty()
            && state.received.len() as u64 == plan.expect;
        if complete {
            if let Some(tx) = done.take() {
                let _ = tx.send(());
            }
        }
        if dead || heard.elapsed() > plan.dead_after {
            drop(ws);
            ws = loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                if let Some(ws) = connect(&plan, &mut state, true).await {
                    break ws;
                }
            };
            state.resumes += 1;
            for (seq, payload) in state.unacked.clone() {
                send(&mut ws, data(&plan, seq, &payload)).await;
            }
            (dead, heard) = (false, Instant::now());
            continue;
        }
        tokio::select! {
            msg = ws.next() => match msg {
                Some(Ok(Message::Text(text))) => {
                    heard = Instant::now();
                    let msg: Value = serde_json::from_str(&text).unwrap();
                    if msg["type"] == "ping" {
                        send(&mut ws, json!({"type": "pong", "ts": msg["ts"]})).await;
                    }
                    state.absorb(plan.name, &msg);
                }
                Some(Ok(_)) => heard = Instant::now(),
                Some(Err(_)) | None => dead = true,
            },
            _ = ack_tick.tick() => {
                if state.last_seq > state.acked_to_relay {
                    state.acked_to_relay = state.last_seq;
                    let ack = json!({"type": "ack", "sessionId": plan.session,
                                     "seq": state.last_seq});
                    send(&mut ws, ack).await;
                }
            }
            _ = tokio::time::sleep_until(next_send.into()), if state.sent < plan.messages => {
                state.sent += 1;
                let payload = format!("{}-{}", plan.name, state.sent);
                state.unacked.push_back((state.sent, payload.clone()));
                send(&mut ws, data(&plan, state.sent, &payload)).await;
                next_send += plan.every;
            }
            _ = plan.finish.changed() => {}
        }
    }
}

/// An agent and a client of its owner, each through its own proxy, on session `s1`, both
/// sending `count` numbered messages while `cut` runs; each must get every message of the
/// other exactly once, in order. Returns (agent resumes, client resumes).
pub async fn exchange_through(
    server: &impl RelayPort,
    count: u64,
    cut: impl std::future::Future<Output = ()>,
    agent_proxy: &Proxy,
    client_proxy: &Proxy,
) -> (u32, u32) {
    let ada = owner(server, "ada@example.com").await;
    let (finish_tx, finish) = watch::channel(false);
    let (agent_done, agent_finished) = oneshot::channel();
    let (client_done, client_finished) = oneshot::channel();
    let plan = |port, role, name, done| Plan {
        port,
        role,
        session: "s1",
        name,
        messages: count,
        every: Duration::from_millis(20),
        expect: count,
        dead_after: Duration::from_millis(2500),
        done: Some(done),
        finish: finish.clone(),
    };
    let agent = tokio::spawn(run(plan(
        agent_proxy.port,
        Role::Agent {
            token: ada.machine_token.clone(),
        },
        "agent",
        agent_done,
    )));
    // The client attaches once the relay knows the agent's session.
    eventually_machine(server, &ada, |m| m["sessionCount"] == 1).await;
    let client = tokio::spawn(run(plan(
        client_proxy.port,
        Role::Client {
            access: ada.access.clone(),
            machine_id: ada.machine_id.clone(),
        },
        "client",
        client_done,
    )));
    cut.await;
    let both = async {
        agent_finished.await.unwrap();
        client_finished.await.unwrap();
    };
    tokio::time::timeout(Duration::from_secs(60), both)
        .await
        .expect("both ends get everything");
    finish_tx.send(true).unwrap();
    let (agent_got, agent_resumes) = agent.await.unwrap();
    let (client_got, client_resumes) = client.await.unwrap();
    let expected = |name: &str| {
        (1..=count)
            .map(|i| format!("{name}-{i}"))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        agent_got,
        expected("client"),
        "every keystroke once, in order"
    );
    assert_eq!(client_got, expected("agent"), "every output once, in order");
    (agent_resumes, client_resumes)
}
