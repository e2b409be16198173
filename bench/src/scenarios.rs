//! The scenarios of issue 6, each run against the relay and the baseline in turn.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::{start_baseline, start_relay, Target};

type Ws = WebSocketStream<TcpStream>;

/// Source addresses the load is spread over (127.0.0.2 …), so no one address runs out of
/// ephemeral ports.
const SOURCES: u32 = 50;

async fn connect(port: u16, path: &str, n: u32) -> anyhow::Result<Ws> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(std::net::SocketAddr::from((
        [127, 0, 0, 2 + (n % SOURCES) as u8],
        0,
    )))?;
    let stream = socket.connect(([127, 0, 0, 1], port).into()).await?;
    stream.set_nodelay(true)?;
    let url = format!("ws://127.0.0.1:{port}{path}");
    let (ws, _) = tokio_tungstenite::client_async(url, stream).await?;
    Ok(ws)
}

/// The next JSON text message (control frames skipped).
async fn next_json<S>(ws: &mut S) -> anyhow::Result<Value>
where
    S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(text))) => return Ok(serde_json::from_str(&text)?),
            Some(Ok(_)) => continue,
            Some(Err(err)) => return Err(err.into()),
            None => anyhow::bail!("closed"),
        }
    }
}

/// A paired mac and browser.
async fn pair(port: u16, n: u32) -> anyhow::Result<(Ws, Ws)> {
    let mut mac = connect(port, "/mac", n).await?;
    let registered = next_json(&mut mac).await?;
    let code = registered["code"].as_str().unwrap_or_default().to_owned();
    let mut browser = connect(port, "/browser", n + 1).await?;
    browser
        .send(Message::text(
            json!({"type": "join", "code": code}).to_string(),
        ))
        .await?;
    anyhow::ensure!(
        next_json(&mut browser).await?["type"] == "joined",
        "join failed"
    );
    anyhow::ensure!(
        next_json(&mut mac).await?["type"] == "joined",
        "mac not told"
    );
    Ok((mac, browser))
}

fn data(payload: &str) -> Message {
    Message::text(json!({"type": "data", "payload": payload}).to_string())
}

/// The browser side of an echo: every `data` goes back to the mac.
fn echo(browser: Ws) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let (mut tx, mut rx) = browser.split();
        while let Ok(msg) = next_json(&mut rx).await {
            if let Some(payload) = msg["payload"].as_str() {
                if tx.send(data(payload)).await.is_err() {
                    break;
                }
            }
        }
    })
}

/// Latency percentiles in µs.
pub struct Latency {
    p50: u64,
    p90: u64,
    p99: u64,
    p999: u64,
    max: u64,
    samples: usize,
}

/// Scenario 1: `pairs` pairs, 64-byte payloads at `rate` per second each, round trip
/// mac → relay → browser → relay → mac, measured from the *intended* send time.
async fn latency(port: u16, pairs: u32, rate: u32, secs: u64) -> anyhow::Result<Latency> {
    let period = Duration::from_secs(1) / rate;
    let count = rate as u64 * secs;
    let mut tasks = Vec::new();
    let start = Instant::now() + Duration::from_millis(500 + pairs as u64 * 5);
    for p in 0..pairs {
        let (mac, browser) = pair(port, p * 2).await?;
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
                let intended = start + offset + period * k as u32;
                samples.push(intended.elapsed().as_micros() as u64);
            }
            sender.abort();
            samples
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await?);
    }
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
    })
}

/// Scenario 2: 1 KiB payloads echoed as fast as `window` in-flight messages per pair
/// allow. Returns relayed messages per second (two per round trip).
async fn throughput(port: u16, pairs: u32, window: usize, secs: u64) -> anyhow::Result<f64> {
    let payload = "t".repeat(1024);
    let done = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    let mut pairs_ready = Vec::new();
    for p in 0..pairs {
        pairs_ready.push(pair(port, p * 2).await?);
    }
    let started = Instant::now();
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
    Ok(done.load(Relaxed) as f64 * 2.0 / started.elapsed().as_secs_f64())
}

/// Scenario 3: server RSS per idle pair, and errors, with `pairs` pairs open.
async fn idle_memory(target: &Target, pairs: u32) -> (f64, u32) {
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
async fn pairing_rate(port: u16, n: u32, concurrency: u32) -> anyhow::Result<f64> {
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
async fn slow_consumer(target: &Target, secs: u64) -> anyhow::Result<(u64, Option<Duration>)> {
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
async fn fan_out(target: &Target, clients: u32, messages: u32) -> anyhow::Result<f64> {
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

fn ratio(relay: f64, baseline: f64) -> String {
    if baseline > 0.0 {
        format!("{:.2}", relay / baseline)
    } else {
        "–".into()
    }
}

/// Runs every scenario on both servers and returns a Markdown table.
pub async fn run_all(
    relay_bin: &PathBuf,
    quick: bool,
    only: Option<&str>,
) -> anyhow::Result<String> {
    let scale = |full: u64, small: u64| if quick { small } else { full };
    let want = |name: &str| only.is_none_or(|o| o == name);
    let mut out = String::new();
    writeln!(
        out,
        "| scenario | relay | baseline | relay / baseline | target |"
    )?;
    writeln!(out, "|---|---|---|---|---|")?;

    // 1. Latency.
    if want("latency") {
        let secs = scale(10, 3);
        let mut lat = Vec::new();
        for start in [
            start_relay as fn(&PathBuf) -> anyhow::Result<Target>,
            |_: &PathBuf| start_baseline(),
        ] {
            let target = start(relay_bin)?;
            lat.push(latency(target.port, 100, 100, secs).await?);
        }
        for (name, pick) in [
            ("p50", (|l: &Latency| l.p50) as fn(&Latency) -> u64),
            ("p90", |l| l.p90),
            ("p99", |l| l.p99),
            ("p99.9", |l| l.p999),
            ("max", |l| l.max),
        ] {
            let (r, b) = (pick(&lat[0]), pick(&lat[1]));
            let target = if name == "p99" { "≤ 1.2" } else { "" };
            writeln!(
            out,
            "| latency {name}, 100 pairs × 100 msg/s × {secs} s (µs; {} / {} samples) | {r} | {b} | {} | {target} |",
            lat[0].samples, lat[1].samples,
            ratio(r as f64, b as f64)
        )?;
        }
    }

    // 2. Throughput.
    if want("throughput") {
        for (pairs, window) in [(1u32, 64usize), (100, 8)] {
            let secs = scale(5, 2);
            let relay = throughput(start_relay(relay_bin)?.port, pairs, window, secs).await?;
            let base = throughput(start_baseline()?.port, pairs, window, secs).await?;
            writeln!(
            out,
            "| throughput, {pairs} pair(s), 1 KiB, window {window} (msg/s; MB/s) | {relay:.0} ({:.1} MB/s) | {base:.0} ({:.1} MB/s) | {} | ≥ 0.8 |",
            relay * 1024.0 / 1e6,
            base * 1024.0 / 1e6,
            ratio(relay, base)
        )?;
        }
    }

    // 3. Idle memory.
    if want("idle") {
        for pairs in [scale(5000, 1000) as u32, scale(9000, 2000) as u32] {
            let relay = start_relay(relay_bin)?;
            let (r, r_err) = idle_memory(&relay, pairs).await;
            drop(relay);
            let baseline = start_baseline()?;
            let (b, b_err) = idle_memory(&baseline, pairs).await;
            drop(baseline);
            writeln!(
            out,
            "| idle memory, {pairs} pairs (KiB per pair; errors) | {:.1} ({r_err}) | {:.1} ({b_err}) | {} | ≤ 16 KiB |",
            r / 1024.0,
            b / 1024.0,
            ratio(r, b)
        )?;
        }
    }

    // 4. Pairing rate.
    if want("pairing") {
        let n = scale(2000, 500) as u32;
        let relay = pairing_rate(start_relay(relay_bin)?.port, n, 50).await?;
        let base = pairing_rate(start_baseline()?.port, n, 50).await?;
        writeln!(
        out,
        "| pairing rate, {n} pairings, 50 at a time (pairings/s) | {relay:.0} | {base:.0} | {} | ≥ 0.9 |",
        ratio(relay, base)
    )?;
    }

    // 5. Slow consumer.
    if want("slow") {
        let secs = scale(8, 4);
        let (r_peak, r_told) = slow_consumer(&start_relay(relay_bin)?, secs).await?;
        let (b_peak, b_told) = slow_consumer(&start_baseline()?, secs).await?;
        let told = |t: Option<Duration>| {
            t.map_or("never told".into(), |t| {
                format!("told after {:.1} s", t.as_secs_f64())
            })
        };
        writeln!(
        out,
        "| slow consumer, {secs} s flood (peak RSS growth MiB; mac told) | {:.1} ({}) | {:.1} ({}) | {} | bounded by max_outbound_bytes |",
        r_peak as f64 / 1048576.0,
        told(r_told),
        b_peak as f64 / 1048576.0,
        told(b_told),
        ratio(r_peak as f64, b_peak as f64)
    )?;
    }

    // 6. Fan-out (account mode exists only in the relay).
    if want("fanout") {
        for clients in [1u32, 10, 100] {
            let relay = start_relay(relay_bin)?;
            let rate = fan_out(&relay, clients, scale(2000, 500) as u32).await?;
            writeln!(
            out,
            "| fan-out, 1 session → {clients} client(s), 1 KiB (deliveries/s) | {rate:.0} | – | – | |"
        )?;
        }
    }

    Ok(out)
}
