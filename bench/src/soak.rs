//! `soak`: churn of every kind at once against one release relay for a long while — quick
//! pairs made and dropped, agents and clients attaching and exchanging data, login floods
//! and join guesses — sampling the relay's resident memory and open descriptors before,
//! during and after, and failing if they do not come back near where they started.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use futures_util::SinkExt;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use crate::load::{close, connect, data, next_json, pair};
use crate::target::{Server, Target};

/// Accounts in the churn: one user, one machine and one agent/client loop each.
const ACCOUNTS: usize = 6;
/// Quick-pair loops, login-flood loops and join-guess loops running at once.
const PAIR_LOOPS: u32 = 16;
const LOGIN_LOOPS: u32 = 6;
const GUESS_LOOPS: u32 = 4;
/// How far memory and descriptors may stay above the baseline once the churn is over:
/// allocators keep some freed memory, and the relay keeps a few pooled connections.
const RSS_SLACK: f64 = 1.5;
const RSS_SLACK_BYTES: u64 = 24 << 20;
const FD_SLACK: u64 = 16;
/// Every wait for a message; a loop that waits longer counts an error and starts over.
const WAIT: Duration = Duration::from_secs(10);

/// Operations and failures per kind of churn.
#[derive(Default)]
struct Counts {
    pairs: AtomicU64,
    sessions: AtomicU64,
    logins: AtomicU64,
    guesses: AtomicU64,
    errors: AtomicU64,
}

/// One sample of the relay process.
struct Sample {
    at: Duration,
    phase: &'static str,
    rss: u64,
    fds: u64,
    ops: u64,
}

fn fds(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |dir| dir.count() as u64)
}

/// Runs the soak for `secs` of churn; the report, or an error if the relay did not return
/// near its baseline.
pub async fn soak(relay: &std::path::Path, secs: u64) -> anyhow::Result<String> {
    let target = Server::relay(relay).start()?;
    let port = target.port;
    let accounts = setup(port).await?;
    let counts = Arc::new(Counts::default());
    let started = Instant::now();
    let mut samples = Vec::new();
    let sample = |phase, samples: &mut Vec<Sample>, target: &Target, counts: &Counts| {
        let ops = [
            &counts.pairs,
            &counts.sessions,
            &counts.logins,
            &counts.guesses,
        ]
        .iter()
        .map(|c| c.load(Relaxed))
        .sum();
        samples.push(Sample {
            at: started.elapsed(),
            phase,
            rss: target.rss(),
            fds: fds(target.pid()),
            ops,
        });
    };
    // Warm up (thread pools, database connections, per-thread buffers), then settle.
    churn(port, &accounts, &counts, Duration::from_secs(20)).await;
    tokio::time::sleep(Duration::from_secs(15)).await;
    sample("baseline", &mut samples, &target, &counts);
    let (base_rss, base_fds) = (samples[0].rss, samples[0].fds);

    let deadline = Instant::now() + Duration::from_secs(secs);
    let churning = {
        let (accounts, counts) = (accounts.clone(), Arc::clone(&counts));
        tokio::spawn(
            async move { churn(port, &accounts, &counts, Duration::from_secs(secs)).await },
        )
    };
    while Instant::now() < deadline {
        tokio::time::sleep(
            Duration::from_secs(secs.clamp(1, 300) / 10).max(Duration::from_secs(1)),
        )
        .await;
        sample("churn", &mut samples, &target, &counts);
    }
    churning.await?;
    // Every client is gone; give the relay its timeouts (heartbeat, lingering closes,
    // argon2's buffer release) to let go.
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_secs(10)).await;
        sample("after", &mut samples, &target, &counts);
    }
    let last = samples.last().context("no sample")?;
    let peak = samples.iter().map(|s| s.rss).max().unwrap_or(0);
    let peak_fds = samples.iter().map(|s| s.fds).max().unwrap_or(0);
    let mut report = String::from(
        "| t (s) | phase | RSS (MiB) | open fds | operations |\n|---|---|---|---|---|\n",
    );
    for s in &samples {
        report.push_str(&format!(
            "| {} | {} | {:.1} | {} | {} |\n",
            s.at.as_secs(),
            s.phase,
            mib(s.rss),
            s.fds,
            s.ops
        ));
    }
    report.push_str(&format!(
        "\n{secs} s of churn: {} pairs, {} account sessions, {} logins, {} join guesses, {} errors. \
         RSS baseline {:.1} MiB, peak {:.1}, after {:.1}; fds baseline {base_fds}, peak {peak_fds}, after {}.\n",
        counts.pairs.load(Relaxed), counts.sessions.load(Relaxed), counts.logins.load(Relaxed),
        counts.guesses.load(Relaxed), counts.errors.load(Relaxed), mib(base_rss), mib(peak), mib(last.rss), last.fds,
    ));
    let rss_bound = ((base_rss as f64 * RSS_SLACK) as u64).max(base_rss + RSS_SLACK_BYTES);
    ensure!(
        last.rss <= rss_bound,
        "RSS stayed up: {:.1} MiB after, bound {:.1}\n{report}",
        mib(last.rss),
        mib(rss_bound)
    );
    ensure!(
        last.fds <= base_fds + FD_SLACK,
        "descriptors stayed open: {} after, baseline {base_fds}\n{report}",
        last.fds
    );
    Ok(report)
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// One account: its access token, machine id and machine token.
#[derive(Clone)]
struct Account {
    email: String,
    access: String,
    machine: String,
    machine_token: String,
}

async fn setup(port: u16) -> anyhow::Result<Arc<Vec<Account>>> {
    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    let mut accounts = Vec::new();
    for i in 0..ACCOUNTS {
        let email = format!("soak{i}@example.com");
        let body = json!({"email": email, "password": "soak test passphrase"});
        let reply: Value = http
            .post(format!("{base}/auth/register"))
            .json(&body)
            .send()
            .await?
            .json()
            .await?;
        let access = reply["accessToken"]
            .as_str()
            .context("no access token")?
            .to_owned();
        let reply: Value = http
            .post(format!("{base}/api/machines"))
            .bearer_auth(&access)
            .json(&json!({"name": format!("mac {i}")}))
            .send()
            .await?
            .json()
            .await?;
        accounts.push(Account {
            email,
            access,
            machine: reply["machine"]["id"]
                .as_str()
                .context("no machine id")?
                .to_owned(),
            machine_token: reply["token"]
                .as_str()
                .context("no machine token")?
                .to_owned(),
        });
    }
    Ok(Arc::new(accounts))
}

/// Every kind of churn at once for `length`.
async fn churn(port: u16, accounts: &Arc<Vec<Account>>, counts: &Arc<Counts>, length: Duration) {
    let until = Instant::now() + length;
    let mut tasks = Vec::new();
    for n in 0..PAIR_LOOPS {
        let counts = Arc::clone(counts);
        tasks.push(tokio::spawn(forever(until, counts.clone(), move |k| {
            pairs(port, n * 2 + (k % 2) as u32, k, counts.clone())
        })));
    }
    for (i, account) in accounts.iter().enumerate() {
        let (counts, account) = (Arc::clone(counts), account.clone());
        tasks.push(tokio::spawn(forever(until, counts.clone(), move |_| {
            session(port, i as u32, account.clone(), counts.clone())
        })));
    }
    for n in 0..LOGIN_LOOPS {
        let (counts, email) = (
            Arc::clone(counts),
            accounts[n as usize % accounts.len()].email.clone(),
        );
        tasks.push(tokio::spawn(forever(until, counts.clone(), move |k| {
            login(port, email.clone(), k, counts.clone())
        })));
    }
    for n in 0..GUESS_LOOPS {
        let counts = Arc::clone(counts);
        tasks.push(tokio::spawn(forever(until, counts.clone(), move |_| {
            guesses(port, 40 + n, counts.clone())
        })));
    }
    for task in tasks {
        let _ = task.await;
    }
}

/// Runs `step` until `until`, each bounded by a timeout; failures are counted.
async fn forever<F, Fut>(until: Instant, counts: Arc<Counts>, mut step: F)
where
    F: FnMut(u64) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let mut k = 0;
    while Instant::now() < until {
        k += 1;
        match tokio::time::timeout(WAIT * 3, step(k)).await {
            Ok(Ok(())) => {}
            _ => {
                counts.errors.fetch_add(1, Relaxed);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// A pair made, 20 messages each way, then both leave: cleanly, or (every third time)
/// dropped without a close so the relay waits out the resume grace.
async fn pairs(port: u16, n: u32, k: u64, counts: Arc<Counts>) -> anyhow::Result<()> {
    let (mut mac, mut browser) = pair(port, n).await?;
    for i in 0..20 {
        mac.send(data(&format!("to browser {i}"))).await?;
        browser.send(data(&format!("to mac {i}"))).await?;
    }
    for _ in 0..20 {
        tokio::time::timeout(WAIT, next_json(&mut browser)).await??;
        tokio::time::timeout(WAIT, next_json(&mut mac)).await??;
    }
    if k.is_multiple_of(3) {
        drop((mac, browser));
    } else {
        close(browser).await;
        close(mac).await;
    }
    counts.pairs.fetch_add(1, Relaxed);
    Ok(())
}

/// An agent comes online, a client attaches to its session, output and input flow, both
/// leave.
async fn session(port: u16, n: u32, account: Account, counts: Arc<Counts>) -> anyhow::Result<()> {
    let text = |v: Value| Message::text(v.to_string());
    let mut agent = connect(port, "/ws/agent", 100 + n).await?;
    agent
        .send(text(
            json!({"type": "register", "token": account.machine_token}),
        ))
        .await?;
    expect(&mut agent, "registered").await?;
    expect(&mut agent, "list_sessions").await?;
    let info = json!({"id": "s1", "name": "zsh", "command": "/bin/zsh", "createdAt": "2026-11-30T12:00:00Z"});
    agent
        .send(text(json!({"type": "sessions", "sessions": [info]})))
        .await?;
    let mut client = connect(port, "/ws/client", 120 + n).await?;
    client
        .send(text(json!({"type": "auth", "token": account.access})))
        .await?;
    expect(&mut client, "authenticated").await?;
    client
        .send(text(
            json!({"type": "attach", "machineId": account.machine, "sessionId": "s1"}),
        ))
        .await?;
    expect(&mut agent, "attach").await?;
    expect(&mut client, "attached").await?;
    for i in 0..50 {
        agent
            .send(text(
                json!({"type": "data", "sessionId": "s1", "data": format!("output {i}\r\n")}),
            ))
            .await?;
        client
            .send(text(
                json!({"type": "data", "sessionId": "s1", "data": "k"}),
            ))
            .await?;
    }
    for _ in 0..50 {
        expect(&mut client, "data").await?;
        expect(&mut agent, "data").await?;
    }
    close(client).await;
    close(agent).await;
    counts.sessions.fetch_add(1, Relaxed);
    Ok(())
}

/// The next message of `kind` (others skipped: status pushes, detach).
async fn expect(ws: &mut crate::load::Ws, kind: &str) -> anyhow::Result<()> {
    loop {
        let msg = tokio::time::timeout(WAIT, next_json(ws)).await??;
        ensure!(msg["type"] != "error", "{msg}");
        if msg["type"] == kind {
            return Ok(());
        }
    }
}

/// A wrong password for a real account, or any password for an unknown one.
async fn login(port: u16, email: String, k: u64, counts: Arc<Counts>) -> anyhow::Result<()> {
    let email = if k.is_multiple_of(2) {
        email
    } else {
        format!("nobody{k}@example.com")
    };
    let body = json!({"email": email, "password": format!("guess number {k}")});
    let status = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{port}/auth/login"))
        .json(&body)
        .send()
        .await?
        .status();
    ensure!(
        status.as_u16() == 401 || status.as_u16() == 429 || status.as_u16() == 503,
        "login: {status}"
    );
    counts.logins.fetch_add(1, Relaxed);
    Ok(())
}

/// A browser guessing ten codes, then leaving.
async fn guesses(port: u16, n: u32, counts: Arc<Counts>) -> anyhow::Result<()> {
    let mut browser = connect(port, "/browser", n).await?;
    for _ in 0..10 {
        let code = nanoid::nanoid!(
            6,
            &"346789ABCDEFGHJKLMNPQRTUVWXY".chars().collect::<Vec<_>>()
        );
        browser
            .send(Message::text(
                json!({"type": "join", "code": code}).to_string(),
            ))
            .await?;
        let reply = tokio::time::timeout(WAIT, next_json(&mut browser)).await??;
        ensure!(reply["type"] == "error", "a guess joined: {reply}");
        counts.guesses.fetch_add(1, Relaxed);
    }
    close(browser).await;
    Ok(())
}
