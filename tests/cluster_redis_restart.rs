//! Redis stopped and started again under two live nodes (a `redis-server` of the test's
//! own, without persistence, so it comes back empty): while it is down each node keeps the
//! pairings whose two ends it holds, refuses at once what needs the cluster, and says so on
//! `/ready` and in `/metrics`; when it is back they recover by themselves (and a code
//! issued before, which the empty Redis forgot, is joinable from its own node only).
//!
//! One test in this file: `hermit_cluster_up` is a gauge of the process, and the two nodes
//! here are the only ones in it.

mod common;

use std::time::{Duration, Instant};

use common::cluster::*;
use common::redis::{redis_server_binary, RedisServer};
use common::*;
use serde_json::json;

/// How long a node may take to notice Redis went away or came back: a heartbeat (200 ms)
/// plus a Redis timeout (500 ms) and a reconnection (200 ms), with room for a loaded machine.
const NOTICE: Duration = Duration::from_secs(8);
/// How long a request that needs the cluster may take to be refused while Redis is down:
/// two Redis timeouts (a `join` asks Redis for the cluster-wide attempt count, then for
/// the code's node: 500 ms each), with room.
const REFUSED_WITHIN: Duration = Duration::from_secs(3);

/// Waits until `/metrics` says `hermit_cluster_up {up}`.
async fn cluster_up_becomes(node: &TestNode, up: u8) {
    let deadline = Instant::now() + NOTICE;
    loop {
        let text = reqwest::get(node.url("/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if text
            .lines()
            .any(|line| line == format!("hermit_cluster_up {up}"))
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "hermit_cluster_up did not become {up}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn know_each_other(a: &TestNode, b: &TestNode) {
    eventually(NOTICE, "the nodes to know each other", || {
        a.cluster.nodes().contains(b.cluster.node_id())
            && b.cluster.nodes().contains(a.cluster.node_id())
            && a.cluster.healthy()
            && b.cluster.healthy()
    })
    .await;
}

/// A mac on `node`, with its code.
async fn mac_on(node: &TestNode) -> (Ws, String) {
    let mut ws = node.connect("/mac").await;
    let msg = recv(&mut ws).await;
    assert_eq!(msg["type"], "registered", "{msg}");
    (ws, msg["code"].as_str().unwrap().to_owned())
}

/// `browser` joins `code`, and it and `mac` hear `joined`; returns the `sessionId`.
async fn join(browser: &mut Ws, mac: &mut Ws, code: &str) -> String {
    send(browser, json!({"type": "join", "code": code})).await;
    let joined = recv(browser).await;
    assert_eq!(joined["type"], "joined", "{joined}");
    assert_eq!(recv(mac).await, joined);
    joined["sessionId"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_ride_out_a_redis_restart_and_recover_by_themselves() {
    let Some(binary) = redis_server_binary() else {
        return;
    };
    let Some(db) = TestDb::postgres() else {
        return;
    };
    let mut redis = RedisServer::start(binary);
    let prefix = prefix();
    let node = || {
        let mut s = node_settings(&db, &redis.url(), &prefix);
        // Two wrong codes a minute: the two refusals for want of Redis below must not
        // count as such (or the last wrong code would be RATE_LIMITED), and the budget
        // is the cluster's, so one is left for the last join on A.
        s.limits.failed_joins_per_minute = 2;
        s.limits.failed_joins_per_network_per_minute = 2;
        TestNode::start(s)
    };
    let (a, b) = (node(), node());
    know_each_other(&a, &b).await;
    ready_becomes(&a, 200, NOTICE).await;
    ready_becomes(&b, 200, NOTICE).await;
    cluster_up_becomes(&a, 1).await;

    // Before: a pairing within node A, and a mac on A waiting for a browser.
    let (mut local_mac, code) = mac_on(&a).await;
    let mut local_browser = a.connect("/browser").await;
    join(&mut local_browser, &mut local_mac, &code).await;
    exchange(&mut local_mac, &mut local_browser, "before", 20).await;
    let (mut waiting_mac, waiting_code) = mac_on(&a).await;
    // Two pairings whose browsers will try to resume during the outage: one across nodes
    // (mac on A, browser on B), one within A.
    let (mut far_mac, far_code) = mac_on(&a).await;
    let mut far_paired = b.connect("/browser").await;
    let far_session = join(&mut far_paired, &mut far_mac, &far_code).await;
    let (mut near_mac, near_code) = mac_on(&a).await;
    let mut near_paired = a.connect("/browser").await;
    let near_session = join(&mut near_paired, &mut near_mac, &near_code).await;

    redis.stop();
    ready_becomes(&a, 503, NOTICE).await;
    ready_becomes(&b, 503, NOTICE).await;
    cluster_up_becomes(&a, 0).await;
    let said = reqwest::get(a.url("/ready"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(said.contains("Redis"), "{said}");

    // The pairing whose two ends node A holds goes on.
    exchange(&mut local_mac, &mut local_browser, "during", 20).await;

    // A browser on B cannot reach the code's node: told so at once, not left hanging, and
    // not told the code is wrong (it is not; its node is out of reach) — nor charged for a
    // wrong code: the second refusal is the same, not RATE_LIMITED.
    let mut far_browser = b.connect("/browser").await;
    for _ in 0..2 {
        let asked = Instant::now();
        let join = json!({"type": "join", "code": waiting_code});
        send(&mut far_browser, join).await;
        let text = expect_error(&mut far_browser, "UNAVAILABLE").await;
        let took = asked.elapsed();
        eprintln!("join refused after {took:?}: {text}");
        assert!(took < REFUSED_WITHIN, "{took:?}");
        assert!(text.contains("try again"), "{text}");
    }
    assert_usable(&mut far_browser).await;

    // A browser lost from a pairing of node A tries to resume on B: B cannot ask where the
    // pairing lives, and says so rather than that it does not exist. One that resumes a
    // pairing of its own node needs no cluster.
    drop((far_paired, near_paired));
    expect_silence(&mut near_mac, Duration::from_millis(300)).await;
    let mut far_again = b.connect("/browser").await;
    let resume = json!({"type": "resume", "sessionId": far_session});
    send(&mut far_again, resume).await;
    let text = expect_error(&mut far_again, "UNAVAILABLE").await;
    assert!(text.contains("try again"), "{text}");
    let mut near_again = a.connect("/browser").await;
    send(
        &mut near_again,
        json!({"type": "resume", "sessionId": near_session}),
    )
    .await;
    assert_eq!(recv(&mut near_again).await["type"], "joined");
    assert_eq!(recv(&mut near_mac).await["type"], "joined");
    exchange(&mut near_mac, &mut near_again, "resumed", 5).await;

    // A new mac gets no code it could not make known cluster-wide: it is told to retry.
    let mut new_mac = a.connect("/mac").await;
    let connected = Instant::now();
    let text = expect_error(&mut new_mac, "UNAVAILABLE").await;
    let took = connected.elapsed();
    eprintln!("new mac told to retry after {took:?}: {text}");
    assert!(took < REFUSED_WITHIN, "{took:?}");
    assert!(text.contains("register"), "{text}");

    // Redis comes back (empty): the nodes rejoin by themselves.
    redis.restart();
    let restarted = Instant::now();
    ready_becomes(&a, 200, NOTICE).await;
    ready_becomes(&b, 200, NOTICE).await;
    cluster_up_becomes(&a, 1).await;
    know_each_other(&a, &b).await;

    // The mac told to retry gets a code, and the browser on B pairs with it across nodes.
    send(
        &mut new_mac,
        json!({"type": "register", "clientId": "retry"}),
    )
    .await;
    let registered = recv(&mut new_mac).await;
    assert_eq!(registered["type"], "registered", "{registered}");
    let code = registered["code"].as_str().unwrap().to_owned();
    join(&mut far_browser, &mut new_mac, &code).await;
    exchange(&mut new_mac, &mut far_browser, "across", 50).await;
    let took = restarted.elapsed();
    eprintln!("paired across nodes {took:?} after Redis came back");
    assert!(took < NOTICE * 2, "{took:?}");

    // And the local pairing never noticed.
    exchange(&mut local_mac, &mut local_browser, "after", 20).await;

    // Redis came back empty: a code issued before is known to its own node only (this
    // spends one of the cluster's two failed joins).
    let mut late = b.connect("/browser").await;
    send(&mut late, json!({"type": "join", "code": waiting_code})).await;
    expect_error(&mut late, "INVALID_CODE").await;
    let mut near = a.connect("/browser").await;
    join(&mut near, &mut waiting_mac, &waiting_code).await;
    exchange(&mut waiting_mac, &mut near, "waited", 5).await;
}
