//! Login floods from many addresses, each inside its own rate limit (issue 15, items 2 and
//! 7): memory stays bounded and comes back, and a real user's login is served in its turn.
//! The relay runs in this process, so its memory is this process's VmRSS; the tests take
//! turns so that one flood's memory is not counted against the other.

#[macro_use]
mod common;

use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use reqwest::{Client, StatusCode};
use serde_json::json;
use tokio::task::JoinHandle;

on_both_backends!(
    a_login_flood_keeps_memory_bounded_and_gives_it_back,
    a_real_login_is_served_in_its_turn_during_a_flood,
);

/// One flood at a time in this process.
static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const MIB: usize = 1 << 20;

fn client_from(from: &str) -> Client {
    Client::builder()
        .local_address(from.parse::<IpAddr>().unwrap())
        .build()
        .unwrap()
}

/// Settings of a small relay under a real per-address limit.
fn flood_settings() -> hermit_relay::config::Settings {
    let mut s = settings();
    s.auth.max_concurrent_hashes = 2;
    s.auth.max_queued_hashes = 64;
    s.auth.max_queued_hashes_per_address = 4;
    // Generous: only the queue bounds refuse in these tests, never the clock.
    s.auth.hash_queue_timeout_secs = 120;
    s.auth.hash_memory_release_secs = 1;
    s.limits.auth_attempts_per_minute = 30;
    s
}

/// `per_address` wrong logins at once from each of `addresses` addresses 127.0.1.x, each
/// inside the per-address limit; every answer's status.
fn flood(server: &Arc<TestServer>, addresses: u8, per_address: usize) -> Vec<JoinHandle<u16>> {
    let mut tasks = Vec::new();
    for a in 1..=addresses {
        let client = client_from(&format!("127.0.1.{a}"));
        for i in 0..per_address {
            let (client, url) = (client.clone(), server.url("/auth/login"));
            tasks.push(tokio::spawn(async move {
                let body = json!({"email": format!("guess{a}-{i}@flood.example"), "password": "wrong password"});
                let response = client.post(url).json(&body).send().await.unwrap();
                response.status().as_u16()
            }));
        }
    }
    tasks
}

async fn statuses(tasks: Vec<JoinHandle<u16>>) -> std::collections::BTreeMap<u16, usize> {
    let mut counts = std::collections::BTreeMap::new();
    for task in tasks {
        *counts.entry(task.await.unwrap()).or_default() += 1;
    }
    counts
}

async fn register(server: &TestServer, email: &str) {
    let response = Client::new()
        .post(server.url("/auth/register"))
        .json(&json!({"email": email, "password": "correct horse battery"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

async fn a_login_flood_keeps_memory_bounded_and_gives_it_back(db: TestDb) {
    let _turn = TURN.lock().await;
    let mut s = flood_settings();
    // Room for the whole flood: every login is hashed, so it is the hashing threads, not
    // the queue's refusals, that bound memory here.
    s.auth.max_queued_hashes = 1000;
    s.auth.max_queued_hashes_per_address = 30;
    let server = Arc::new(TestServer::start_on(&db, s));
    register(&server, "ada@example.com").await;
    // Let the hashing threads give back what the registration used.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let base = rss_bytes();
    let peak = Arc::new(AtomicUsize::new(base));
    let sampler = {
        let peak = Arc::clone(&peak);
        tokio::spawn(async move {
            loop {
                peak.fetch_max(rss_bytes(), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    // 20 addresses × 6 logins. Before hashing had its own threads and memory, 20 × 29
    // took the relay from 34 MiB to 1,845 MiB and left it at 1,332 MiB.
    let counts = statuses(flood(&server, 20, 6)).await;
    sampler.abort();
    let peak = peak.load(Ordering::Relaxed);
    eprintln!(
        "flood answers {counts:?}; RSS base {} MiB, peak {} MiB",
        base / MIB,
        peak / MIB
    );
    assert_eq!(
        counts.get(&401),
        Some(&120),
        "every login was hashed: {counts:?}"
    );
    // Two threads × 19 MiB of argon2 memory, plus the requests and their connections.
    assert!(
        peak < base + 120 * MIB,
        "RSS grew from {} to {} MiB",
        base / MIB,
        peak / MIB
    );
    // The hashing threads free their memory after a second idle; the rest is allocator
    // slack of the request threads.
    let mut after = rss_bytes();
    for _ in 0..100 {
        if after < base + 40 * MIB {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        after = rss_bytes();
    }
    eprintln!("RSS after the flood {} MiB", after / MIB);
    assert!(
        after < base + 40 * MIB,
        "RSS stayed at {} MiB (base {} MiB)",
        after / MIB,
        base / MIB
    );
}

async fn a_real_login_is_served_in_its_turn_during_a_flood(db: TestDb) {
    let _turn = TURN.lock().await;
    let server = Arc::new(TestServer::start_on(&db, flood_settings()));
    register(&server, "ada@example.com").await;
    let addresses = 20;
    let tasks = flood(&server, addresses, 10);
    // Wait until the flood fills the queue (it holds far more than the threads can take).
    for _ in 0..600 {
        if server.hash_stats.queued() >= 32 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(server.hash_stats.queued() >= 32, "the flood never queued");
    let before = server.hash_stats.total();
    let response = client_from("127.0.2.1")
        .post(server.url("/auth/login"))
        .json(&json!({"email": "ada@example.com", "password": "correct horse battery"}))
        .send()
        .await
        .unwrap();
    let hashed_meanwhile = server.hash_stats.total() - before;
    eprintln!("{hashed_meanwhile} hashes ran between the real login's request and its answer");
    assert_eq!(response.status(), StatusCode::OK);
    // Served in its address's turn: behind at most one job per flooding address, those
    // already running and those that ran while the request reached the queue (at most 25
    // on an idle machine; twice the addresses leaves room for a loaded one), not behind
    // the whole queue of 64.
    let bound = 2 * usize::from(addresses);
    assert!(
        hashed_meanwhile <= bound,
        "{hashed_meanwhile} hashes ran before the real login's (at most {bound} expected)"
    );
    let counts = statuses(tasks).await;
    eprintln!("flood answers {counts:?}");
    // The excess was refused at once rather than queued for long.
    assert!(counts.get(&503).copied().unwrap_or(0) > 0, "{counts:?}");
    assert!(server.hash_stats.refused() > 0);
}
