//! A quick-pairing client that speaks lossless mode as a careful app would: it numbers its
//! `data`, keeps each until the relay acknowledges it, acknowledges what it receives,
//! notices a dead link when even the relay's JSON pings stop, and resumes with `lastSeq`,
//! re-sending what the relay does not have. It records every payload it receives and
//! fails the test on a duplicate or a gap.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::sync::{oneshot, watch};
use tokio_tungstenite::tungstenite::Message;

use super::Ws;

/// Which side, and how it pairs.
pub enum Pairing {
    /// A mac: registers with a secret `clientId`, tells the browser its code.
    Mac {
        /// Where the code goes.
        code: oneshot::Sender<String>,
    },
    /// A browser: joins with the code the mac got.
    Browser {
        /// Where the code comes from.
        code: oneshot::Receiver<String>,
    },
}

/// How a side behaves.
pub struct Plan {
    /// The relay (or a proxy in front of it).
    pub port: u16,
    /// How it pairs.
    pub pairing: Pairing,
    /// Its payloads are `"{name}-{n}"`.
    pub name: &'static str,
    /// How many it sends, one every `every`.
    pub messages: u64,
    /// Pace of sending.
    pub every: Duration,
    /// How many the partner sends.
    pub expect: u64,
    /// Silence after which the link is taken for dead (a few relay JSON pings).
    pub dead_after: Duration,
    /// Told once this side has sent everything, had it all acknowledged, and received
    /// everything the partner sends.
    pub done: oneshot::Sender<()>,
    /// Set by the test when both sides may stop.
    pub finish: watch::Receiver<bool>,
}

struct State {
    /// Own messages not yet acknowledged by the relay: (seq, payload).
    unacked: VecDeque<(u64, String)>,
    sent: u64,
    /// Payloads received, in order.
    received: Vec<String>,
    last_seq: u64,
    acked_to_relay: u64,
    session: Option<String>,
    client_id: String,
    resumes: u32,
}

/// Connects to `path` on `port`, or `None` while the link is down (within a second).
pub(super) async fn open(port: u16, path: &str) -> Option<Ws> {
    let url = format!("ws://127.0.0.1:{port}{path}");
    match tokio::time::timeout(
        Duration::from_secs(1),
        tokio_tungstenite::connect_async(url),
    )
    .await
    {
        Ok(Ok((ws, _))) => Some(ws),
        _ => None,
    }
}

/// The next JSON message within `within`, skipping ping and pong frames; `None` on
/// silence, a close or an error.
pub(super) async fn next_json(ws: &mut Ws, within: Duration) -> Option<Value> {
    loop {
        match tokio::time::timeout(within, ws.next()).await {
            Ok(Some(Ok(Message::Text(text)))) => return serde_json::from_str(&text).ok(),
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
            _ => return None,
        }
    }
}

impl State {
    /// Handles one message from the relay; panics on a gap or duplicate.
    fn absorb(&mut self, name: &str, msg: &Value) {
        match msg["type"].as_str() {
            Some("data") => {
                let seq = msg["seq"].as_u64().expect("lossless data carries seq");
                assert_eq!(seq, self.last_seq + 1, "{name}: seq out of order: {msg}");
                self.last_seq = seq;
                self.received
                    .push(msg["payload"].as_str().unwrap().to_owned());
            }
            Some("ack") => {
                let seq = msg["seq"].as_u64().unwrap();
                while self.unacked.front().is_some_and(|(s, _)| *s <= seq) {
                    self.unacked.pop_front();
                }
            }
            Some("ping") | Some("joined") | Some("registered") => {}
            _ => panic!("{name}: unexpected {msg}"),
        }
    }
}

/// Runs one side until the test says `finish`; returns what it received, and how many
/// times it had to resume.
pub async fn run(mut plan: Plan) -> (Vec<String>, u32) {
    let path = match plan.pairing {
        Pairing::Mac { .. } => "/mac",
        Pairing::Browser { .. } => "/browser",
    };
    let mut state = State {
        unacked: VecDeque::new(),
        sent: 0,
        received: Vec::new(),
        last_seq: 0,
        acked_to_relay: 0,
        session: None,
        client_id: uuid::Uuid::new_v4().to_string(),
        resumes: 0,
    };
    let mut ws = pair(&mut plan.pairing, plan.port, &mut state, path).await;
    let mut next_send = Instant::now();
    let mut heard = Instant::now();
    let mut dead = false;
    let mut done = Some(plan.done);
    let mut ack_tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        if *plan.finish.borrow() {
            return (state.received, state.resumes);
        }
        let complete = state.sent == plan.messages
            && state.unacked.is_empty()
            && state.received.len() as u64 == plan.expect;
        if complete {
            if let Some(done) = done.take() {
                let _ = done.send(());
            }
        }
        if dead || heard.elapsed() > plan.dead_after {
            dead = false;
            // Nothing at all, not even the relay's pings: the link is dead. Abandon it
            // (no close frame could get through) and resume on a new connection.
            drop(ws);
            ws = resume(plan.port, plan.name, &mut state, path).await;
            heard = Instant::now();
            continue;
        }
        tokio::select! {
            msg = ws.next() => match msg {
                Some(Ok(Message::Text(text))) => {
                    heard = Instant::now();
                    let msg: Value = serde_json::from_str(&text).unwrap();
                    state.absorb(plan.name, &msg);
                }
                Some(Ok(_)) => heard = Instant::now(),
                // The relay closed or reset: resume at once.
                Some(Err(_)) | None => dead = true,
            },
            _ = ack_tick.tick() => {
                if state.last_seq > state.acked_to_relay {
                    state.acked_to_relay = state.last_seq;
                    let ack = json!({"type": "ack", "seq": state.last_seq});
                    let _ = ws.send(Message::text(ack.to_string())).await;
                }
            }
            _ = tokio::time::sleep_until(next_send.into()), if state.sent < plan.messages => {
                state.sent += 1;
                let payload = format!("{}-{}", plan.name, state.sent);
                state.unacked.push_back((state.sent, payload.clone()));
                let data = json!({"type": "data", "payload": payload, "seq": state.sent});
                // Into a dead link this vanishes; it stays unacked and is sent again.
                let _ = ws.send(Message::text(data.to_string())).await;
                next_send += plan.every;
            }
            _ = plan.finish.changed() => {}
        }
    }
}

/// First connection: pair by code, in lossless mode.
async fn pair(pairing: &mut Pairing, port: u16, state: &mut State, path: &str) -> Ws {
    let mut ws = open(port, path).await.expect("first connection");
    let within = Duration::from_secs(10);
    let taken = Pairing::Browser {
        code: oneshot::channel().1,
    };
    match std::mem::replace(pairing, taken) {
        Pairing::Mac { code } => {
            assert_eq!(
                next_json(&mut ws, within).await.unwrap()["type"],
                "registered"
            );
            let register = json!({"type": "register", "clientId": state.client_id, "ack": true});
            ws.send(Message::text(register.to_string())).await.unwrap();
            let registered = next_json(&mut ws, within).await.unwrap();
            code.send(registered["code"].as_str().unwrap().to_owned())
                .unwrap();
        }
        Pairing::Browser { code } => {
            let code = code.await.unwrap();
            let join = json!({"type": "join", "code": code, "ack": true});
            ws.send(Message::text(join.to_string())).await.unwrap();
        }
    }
    let joined = next_json(&mut ws, within).await.unwrap();
    assert_eq!(joined["type"], "joined", "{joined}");
    state.session = Some(joined["sessionId"].as_str().unwrap().to_owned());
    ws
}

/// Resumes on a new connection until one works: `joined`, `ack M`, then re-sends what the
/// relay does not have.
async fn resume(port: u16, name: &str, state: &mut State, path: &str) -> Ws {
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let Some(mut ws) = open(port, path).await else {
            continue;
        };
        let within = Duration::from_secs(2);
        let request = if path == "/mac" {
            if next_json(&mut ws, within).await.is_none() {
                continue; // no `registered`: this link is dead too
            }
            json!({"type": "register", "clientId": state.client_id, "ack": true,
                   "lastSeq": state.last_seq})
        } else {
            json!({"type": "resume", "sessionId": state.session, "ack": true,
                   "lastSeq": state.last_seq})
        };
        if ws.send(Message::text(request.to_string())).await.is_err() {
            continue;
        }
        let Some(joined) = next_json(&mut ws, within).await else {
            continue;
        };
        assert_eq!(joined["type"], "joined", "{name}: {joined}");
        let Some(ack) = next_json(&mut ws, within).await else {
            continue;
        };
        assert_eq!(ack["type"], "ack", "{name}: {ack}");
        state.absorb(name, &ack);
        state.resumes += 1;
        for (seq, payload) in &state.unacked {
            let data = json!({"type": "data", "payload": payload, "seq": seq});
            let _ = ws.send(Message::text(data.to_string())).await;
        }
        return ws;
    }
}

/// Pairs a lossless mac and browser, each through its own proxy, both sending `count`
/// numbered messages; runs `cut` against the proxies meanwhile; checks that each side got
/// every message of the other exactly once, in order.
pub async fn exchange_through(
    count: u64,
    cut: impl std::future::Future<Output = ()>,
    mac_proxy: &super::proxy::Proxy,
    browser_proxy: &super::proxy::Proxy,
) -> (u32, u32) {
    let (code_tx, code_rx) = oneshot::channel();
    let (finish_tx, finish) = watch::channel(false);
    let (mac_done, mac_finished) = oneshot::channel();
    let (browser_done, browser_finished) = oneshot::channel();
    let plan = |port, pairing, name, done, finish| Plan {
        port,
        pairing,
        name,
        messages: count,
        every: Duration::from_millis(20),
        expect: count,
        dead_after: Duration::from_millis(2500),
        done,
        finish,
    };
    let mac = tokio::spawn(run(plan(
        mac_proxy.port,
        Pairing::Mac { code: code_tx },
        "mac",
        mac_done,
        finish.clone(),
    )));
    let browser = tokio::spawn(run(plan(
        browser_proxy.port,
        Pairing::Browser { code: code_rx },
        "browser",
        browser_done,
        finish,
    )));
    cut.await;
    let both = async {
        mac_finished.await.unwrap();
        browser_finished.await.unwrap();
    };
    tokio::time::timeout(Duration::from_secs(60), both)
        .await
        .expect("both sides get everything");
    finish_tx.send(true).unwrap();
    let (mac_got, mac_resumes) = mac.await.unwrap();
    let (browser_got, browser_resumes) = browser.await.unwrap();
    let expected = |name: &str| {
        (1..=count)
            .map(|i| format!("{name}-{i}"))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        mac_got,
        expected("browser"),
        "the mac got every message once, in order"
    );
    assert_eq!(
        browser_got,
        expected("mac"),
        "the browser got every message once, in order"
    );
    (mac_resumes, browser_resumes)
}
