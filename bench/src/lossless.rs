//! Lossless mode (README, "Lossless mode") as the bench drives it: both sides opt in (the
//! mac's `register` and the browser's `join` carry `"ack": true`), number their own `data`
//! with `seq`, and acknowledge what they receive in batches — one `ack` per [`ACK_EVERY`]
//! messages, as the README asks of a real client — so the relay keeps a replay window per
//! side and sends its own acks. Only hermit-relay builds speak it (the baseline does not).

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::sync::{Mutex, Semaphore};
use tokio_tungstenite::tungstenite::Message;

use crate::cost::CpuMark;
use crate::load::{connect, next_json, Ws};
use crate::scenarios::Throughput;
use crate::target::Target;

/// A side acknowledges every this many `data` messages it receives.
pub const ACK_EVERY: u64 = 64;

/// One side's numbering: of its own `data` (sent) and of its partner's (received). With
/// `lossless` false it sends plain `data` and never acknowledges, as a plain client.
pub struct Side {
    lossless: bool,
    sent: u64,
    received: u64,
}

impl Side {
    /// A side that has sent and received nothing yet.
    pub fn new(lossless: bool) -> Self {
        Self {
            lossless,
            sent: 0,
            received: 0,
        }
    }

    /// The side's next `data` message, numbered in lossless mode.
    pub fn data(&mut self, payload: &str) -> Message {
        if !self.lossless {
            return crate::load::data(payload);
        }
        self.sent += 1;
        let data = json!({"type": "data", "payload": payload, "seq": self.sent});
        Message::text(data.to_string())
    }

    /// Notes a `data` message received; in lossless mode checks it is the next in order,
    /// and returns the batched `ack` when one is due.
    pub fn received(&mut self, msg: &Value) -> anyhow::Result<Option<Message>> {
        if !self.lossless {
            return Ok(None);
        }
        self.received += 1;
        let seq = msg["seq"].as_u64();
        anyhow::ensure!(seq == Some(self.received), "out of order: {msg}");
        Ok(self
            .received
            .is_multiple_of(ACK_EVERY)
            .then(|| Message::text(json!({"type": "ack", "seq": self.received}).to_string())))
    }
}

/// The next `data` message, skipping the relay's `ack`s and JSON `ping`s.
pub async fn next_data<S>(ws: &mut S) -> anyhow::Result<Value>
where
    S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    loop {
        let msg = next_json(ws).await?;
        match msg["type"].as_str() {
            Some("data") => return Ok(msg),
            Some("ack" | "ping") => continue,
            _ => anyhow::bail!("unexpected {msg}"),
        }
    }
}

/// A random version 4 UUID, the only `clientId` that opts a mac into lossless mode (no
/// uuid dependency for one use: std's per-map random keys are the randomness).
fn client_id() -> String {
    let word = |n: u8| std::collections::hash_map::RandomState::new().hash_one(n);
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&word(1).to_le_bytes());
    bytes[8..].copy_from_slice(&word(2).to_le_bytes());
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let part = |from: usize, to: usize| &hex[from..to];
    let parts = [
        part(0, 8),
        part(8, 12),
        part(12, 16),
        part(16, 20),
        part(20, 32),
    ];
    parts.join("-")
}

/// A mac and a browser paired in lossless mode, from source addresses `n` and `n + 1`:
/// the mac re-registers with `"ack": true` and a `clientId` right after its first code, as
/// the README tells a lossless mac to, and the browser joins the fresh code with `"ack": true`.
pub async fn pair(port: u16, n: u32) -> anyhow::Result<(Ws, Ws)> {
    let mut mac = connect(port, "/mac", n).await?;
    next_json(&mut mac).await?;
    let register = json!({"type": "register", "clientId": client_id(), "ack": true});
    mac.send(Message::text(register.to_string())).await?;
    let registered = next_json(&mut mac).await?;
    anyhow::ensure!(registered["type"] == "registered", "no code: {registered}");
    let code = registered["code"].as_str().unwrap_or_default();
    let mut browser = connect(port, "/browser", n + 1).await?;
    let join = json!({"type": "join", "code": code, "ack": true});
    browser.send(Message::text(join.to_string())).await?;
    for (side, ws) in [("browser", &mut browser), ("mac", &mut mac)] {
        let joined = next_json(ws).await?;
        anyhow::ensure!(joined["type"] == "joined", "{side} not joined: {joined}");
    }
    Ok((mac, browser))
}

/// The browser side of a lossless echo: every `data` goes back to the mac, numbered.
fn echo(browser: Ws) {
    tokio::spawn(async move {
        let (mut tx, mut rx) = browser.split();
        let mut side = Side::new(true);
        while let Ok(msg) = next_data(&mut rx).await {
            let Ok(ack) = side.received(&msg) else { break };
            if let Some(ack) = ack {
                if tx.send(ack).await.is_err() {
                    break;
                }
            }
            let payload = msg["payload"].as_str().unwrap_or_default();
            if tx.send(side.data(payload)).await.is_err() {
                break;
            }
        }
    });
}

/// Scenario 2 in lossless mode: 1 KiB payloads echoed as fast as `window` in-flight
/// messages per pair allow, for `secs`; two relayed messages per round trip.
pub async fn throughput(
    target: &Target,
    pairs: u32,
    window: usize,
    secs: u64,
) -> anyhow::Result<Throughput> {
    let payload = "t".repeat(1024);
    let done = Arc::new(AtomicU64::new(0));
    let mut ready = Vec::new();
    for p in 0..pairs {
        ready.push(pair(target.port, p * 2).await?);
    }
    let started = Instant::now();
    let mark = CpuMark::now(target.pid());
    let deadline = started + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for (mac, browser) in ready {
        echo(browser);
        let (done, payload) = (Arc::clone(&done), payload.clone());
        tasks.push(tokio::spawn(async move {
            let (tx, mut rx) = mac.split();
            // The receiving half sends the acks, the sending task the data.
            let tx = Arc::new(Mutex::new(tx));
            let permits = Arc::new(Semaphore::new(window));
            let (sender_tx, sender_permits) = (Arc::clone(&tx), Arc::clone(&permits));
            let sender = tokio::spawn(async move {
                let mut side = Side::new(true);
                while Instant::now() < deadline {
                    let Ok(permit) = sender_permits.acquire().await else {
                        break;
                    };
                    permit.forget();
                    if sender_tx
                        .lock()
                        .await
                        .send(side.data(&payload))
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
            });
            let mut side = Side::new(true);
            while Instant::now() < deadline {
                let Ok(Ok(msg)) =
                    tokio::time::timeout_at(deadline.into(), next_data(&mut rx)).await
                else {
                    break;
                };
                done.fetch_add(1, Relaxed);
                permits.add_permits(1);
                let Ok(ack) = side.received(&msg) else { break };
                if let Some(ack) = ack {
                    if tx.lock().await.send(ack).await.is_err() {
                        break;
                    }
                }
            }
            sender.abort();
        }));
    }
    for task in tasks {
        task.await?;
    }
    let messages = done.load(Relaxed) * 2;
    Ok(Throughput {
        per_second: messages as f64 / started.elapsed().as_secs_f64(),
        cost: mark.cost(messages),
    })
}
