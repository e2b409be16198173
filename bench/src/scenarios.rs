//! The rate scenarios of issue 6, each measured on one running server; `run.rs` runs them
//! on every server in turn and tabulates them.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::Message;

use crate::cost::{Cost, CpuMark};
use crate::load::{connect, data, echo, next_json, pair, pair_across, Ends};
use crate::target::Target;

/// Latency percentiles in µs, and what the window cost.
pub struct Latency {
    /// Median.
    pub p50: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p999: u64,
    /// Slowest round trip.
    pub max: u64,
    /// Round trips measured.
    pub samples: usize,
    /// Echoes that did not carry the number after the previous one's (lost, duplicated or
    /// reordered messages).
    pub out_of_sequence: u64,
    /// CPU time over the sending window (two relayed messages per sample).
    pub cost: Cost,
}

/// Scenario 1: `pairs` pairs, 64-byte payloads at `rate` per second each, round trip
/// mac → relay → browser → relay → mac, measured from the *intended* send time.
/// Every pair is made before the clock starts (a pairing across nodes takes longer, and a
/// late start would count as latency).
pub async fn latency(ends: &Ends, pairs: u32, rate: u32, secs: u64) -> anyhow::Result<Latency> {
    let period = Duration::from_secs(1) / rate;
    let count = rate as u64 * secs;
    let mut tasks = Vec::new();
    let mut pairs_ready = Vec::new();
    for p in 0..pairs {
        pairs_ready.push(pair_across(ends.mac, ends.browser, p * 2).await?);
    }
    let start = Instant::now() + Duration::from_millis(500);
    for (p, (mac, browser)) in (0..pairs).zip(pairs_ready) {
        let _echo = echo(browser);
        tasks.push(tokio::spawn(async move {
            let (mut tx, mut rx) = mac.split();
            // Stagger pairs across the period so they do not all send at once.
            let offset = period * p / pairs.max(1);
            let sender = tokio::spawn(async move {
                for k in 0..count {
                    let intended = start + offset + period * k as u32;
                    tokio::time::sleep_until(intended.into()).await;
                    let payload = format!("{k:020}{}", "x".repeat(44));
                    if tx.send(data(&payload)).await.is_err() {
                        break;
                    }
                }
            });
            let mut samples = Vec::with_capacity(count as usize);
            // Each echo should carry the number after the last one's: any other is a
            // message lost, duplicated or reordered on the way.
            let (mut next, mut out_of_sequence) = (0, 0);
            while (samples.len() as u64) < count {
                let Ok(Ok(msg)) =
                    tokio::time::timeout(Duration::from_secs(10), next_json(&mut rx)).await
                else {
                    break;
                };
                let Some(k) = msg["payload"]
                    .as_str()
                    .and_then(|p| p[..20].parse::<u64>().ok())
                else {
                    continue;
                };
                if k != next {
                    out_of_sequence += 1;
                }
                next = k + 1;
                let intended = start + offset + period * k as u32;
                samples.push(intended.elapsed().as_micros() as u64);
            }
            sender.abort();
            (samples, out_of_sequence)
        }));
    }
    tokio::time::sleep_until(start.into()).await;
    let mark = CpuMark::of(&ends.pids);
    let (mut all, mut out_of_sequence) = (Vec::new(), 0);
    for task in tasks {
        let (samples, wrong) = task.await?;
        all.extend(samples);
        out_of_sequence += wrong;
    }
    let cost = mark.cost(all.len() as u64 * 2);
    all.sort_unstable();
    let at = |q: f64| {
        all.get(((all.len() as f64 * q) as usize).min(all.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    Ok(Latency {
        p50: at(0.5),
        p90: at(0.9),
        p99: at(0.99),
        p999: at(0.999),
        max: all.last().copied().unwrap_or(0),
        samples: all.len(),
        out_of_sequence,
        cost,
    })
}

/// Relayed messages per second, and what the window cost.
pub struct Throughput {
    /// Messages relayed per second (each direction counts one).
    pub per_second: f64,
    /// CPU time over the window.
    pub cost: Cost,
}

/// Scenario 2: 1 KiB payloads echoed as fast as `window` in-flight messages per pair
/// allow, for `secs`; two relayed messages per round trip.
pub async fn throughput(
    ends: &Ends,
    pairs: u32,
    window: usize,
    secs: u64,
) -> anyhow::Result<Throughput> {
    let payload = "t".repeat(1024);
    let done = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    let mut pairs_ready = Vec::new();
    for p in 0..pairs {
        pairs_ready.push(pair_across(ends.mac, ends.browser, p * 2).await?);
    }
    let started = Instant::now();
    let mark = CpuMark::of(&ends.pids);
    let deadline = started + Duration::from_secs(secs);
    for (mac, browser) in pairs_ready {
        let _echo = echo(browser);
        let (done, payload) = (Arc::clone(&done), payload.clone());
        tasks.push(tokio::spawn(async move {
            let (mut tx, mut rx) = mac.split();
            let permits = Arc::new(Semaphore::new(window));
            let sender_permits = Arc::clone(&permits);
            let sender = tokio::spawn(async move {
                while Instant::now() < deadline {
                    let Ok(permit) = sender_permits.acquire().await else {
                        break;
                    };
                    permit.forget();
                    if tx.send(data(&payload)).await.is_err() {
                        break;
                    }
                }
            });
            while Instant::now() < deadline {
                match tokio::time::timeout_at(deadline.into(), next_json(&mut rx)).await {
                    Ok(Ok(_)) => {
                        done.fetch_add(1, Relaxed);
                        permits.add_permits(1);
                    }
                    _ => break,
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

/// Scenario 3: server RSS per idle pair, and errors, with `pairs` pairs open.
pub async fn idle_memory(target: &Target, pairs: u32) -> (f64, u32) {
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = target.rss();
    let held = Arc::new(tokio::sync::Mutex::new(Vec::new()));
    let errors = Arc::new(AtomicU64::new(0));
    let next = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for _ in 0..32 {
        let (held, errors, next, port) = (
            Arc::clone(&held),
            Arc::clone(&errors),
            Arc::clone(&next),
            target.port,
        );
        workers.push(tokio::spawn(async move {
            loop {
                let n = next.fetch_add(1, Relaxed);
                if n >= pairs as u64 {
                    break;
                }
                match pair(port, n as u32 * 2).await {
                    Ok(p) => held.lock().await.push(p),
                    Err(_) => {
                        errors.fetch_add(1, Relaxed);
                    }
                }
            }
        }));
    }
    for worker in workers {
        let _ = worker.await;
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let after = target.rss();
    let opened = held.lock().await.len().max(1) as f64;
    drop(held);
    (
        after.saturating_sub(before) as f64 / opened,
        errors.load(Relaxed) as u32,
    )
}

/// Scenario 4: `n` pairings, `concurrency` at a time; pairings per second.
pub async fn pairing_rate(port: u16, n: u32, concurrency: u32) -> anyhow::Result<f64> {
    let started = Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let next = Arc::clone(&next);
        workers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Relaxed);
                if i >= n as u64 {
                    return Ok::<_, anyhow::Error>(());
                }
                let (mut mac, mut browser) = pair(port, i as u32 * 2).await?;
                let _ = mac.close(None).await;
                let _ = browser.close(None).await;
            }
        }));
    }
    for worker in workers {
        worker.await??;
    }
    Ok(n as f64 / started.elapsed().as_secs_f64())
}

/// Scenario 5: the browser never reads while its mac floods for `secs`. Returns the peak
/// server RSS growth and when (if) the mac was told the browser was dropped.
pub async fn slow_consumer(target: &Target, secs: u64) -> anyhow::Result<(u64, Option<Duration>)> {
    let (mac, _browser) = pair(target.port, 0).await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = target.rss();
    let (mut tx, mut rx) = mac.split();
    let started = Instant::now();
    let deadline = started + Duration::from_secs(secs);
    let flood = tokio::spawn(async move {
        let chunk = data(&"f".repeat(16 * 1024));
        let mut sent = 0u64;
        // Bounded: at most 1 GiB, so an unbounded server cannot take the machine down.
        while Instant::now() < deadline && sent < 1 << 30 {
            if tx.send(chunk.clone()).await.is_err() {
                break;
            }
            sent += 16 * 1024;
        }
    });
    let told = tokio::spawn(async move {
        while let Ok(msg) = next_json(&mut rx).await {
            if msg["code"] == "BROWSER_DISCONNECTED" {
                return Some(started.elapsed());
            }
        }
        None
    });
    let mut peak = 0;
    while Instant::now() < deadline {
        peak = peak.max(target.rss().saturating_sub(before));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    flood.abort();
    let told = tokio::time::timeout(Duration::from_millis(100), told)
        .await
        .ok()
        .and_then(|r| r.ok())
        .flatten();
    Ok((peak, told))
}

/// Scenario 6 (relay only): one agent session fanned out to `clients`; deliveries/s.
pub async fn fan_out(target: &Target, clients: u32, messages: u32) -> anyhow::Result<f64> {
    let base = format!("http://127.0.0.1:{}", target.port);
    let http = reqwest::Client::new();
    let email = format!("bench{}@example.com", nanoid::nanoid!(8));
    let body: Value = http
        .post(format!("{base}/auth/register"))
        .json(&json!({"email": email, "password": "benchmark password"}))
        .send()
        .await?
        .json()
        .await?;
    let access = body["accessToken"].as_str().unwrap_or_default().to_owned();
    let machine: Value = http
        .post(format!("{base}/api/machines"))
        .bearer_auth(&access)
        .json(&json!({"name": "bench"}))
        .send()
        .await?
        .json()
        .await?;
    let machine_id = machine["machine"]["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let mut agent = connect(target.port, "/ws/agent", 0).await?;
    agent
        .send(Message::text(
            json!({"type": "register", "token": machine["token"]}).to_string(),
        ))
        .await?;
    next_json(&mut agent).await?;
    next_json(&mut agent).await?;
    let session =
        json!({"id": "s1", "name": "bench", "command": "cat", "createdAt": "2026-11-22T00:00:00Z"});
    agent
        .send(Message::text(
            json!({"type": "sessions", "sessions": [session]}).to_string(),
        ))
        .await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut readers = Vec::new();
    for c in 0..clients {
        let mut ws = connect(target.port, "/ws/client", c + 1).await?;
        ws.send(Message::text(
            json!({"type": "auth", "token": access}).to_string(),
        ))
        .await?;
        next_json(&mut ws).await?;
        ws.send(Message::text(
            json!({"type": "attach", "machineId": machine_id, "sessionId": "s1"}).to_string(),
        ))
        .await?;
        loop {
            if next_json(&mut ws).await?["type"] == "attached" {
                break;
            }
        }
        readers.push(ws);
    }
    // The agent hears one `attach` per client; drain them in the background.
    let (mut agent_tx, mut agent_rx) = agent.split();
    tokio::spawn(async move { while agent_rx.next().await.is_some() {} });
    let started = Instant::now();
    let mut tasks = Vec::new();
    for mut ws in readers {
        tasks.push(tokio::spawn(async move {
            let mut got = 0;
            while got < messages {
                match tokio::time::timeout(Duration::from_secs(30), next_json(&mut ws)).await {
                    Ok(Ok(msg)) if msg["type"] == "data" => got += 1,
                    Ok(Ok(_)) => {}
                    _ => break,
                }
            }
            got
        }));
    }
    let line = "o".repeat(1024);
    for _ in 0..messages {
        agent_tx
            .send(Message::text(
                json!({"type": "data", "sessionId": "s1", "data": line}).to_string(),
            ))
            .await?;
    }
    let mut delivered = 0u64;
    for task in tasks {
        delivered += task.await? as u64;
    }
    Ok(delivered as f64 / started.elapsed().as_secs_f64())
}
