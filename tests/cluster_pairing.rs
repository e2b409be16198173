//! Quick pairing across nodes (issue 11, stage 2): a mac on one node, a browser on
//! another, with every answer the same as on one node. Real nodes, Redis and PostgreSQL.

mod common;

use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use common::cluster::*;
use common::lossless::exchange_through;
use common::proxy::Proxy;
use common::*;
use hermit_relay::config::Settings;
use hermit_relay::metrics::METRICS;
use serde_json::json;

/// Two nodes of one cluster (each knowing the other), or `None` when Redis or PostgreSQL
/// is not configured (never under CI).
async fn two_nodes(adjust: impl Fn(&mut Settings)) -> Option<(TestDb, TestNode, TestNode)> {
    let (db, mut nodes) = cluster_of(2, adjust).await?;
    let b = nodes.pop().unwrap();
    Some((db, nodes.pop().unwrap(), b))
}

/// A mac on `node`, with its code.
async fn mac_on(node: &TestNode) -> (Ws, String) {
    let mut ws = node.connect("/mac").await;
    let msg = recv(&mut ws).await;
    assert_eq!(msg["type"], "registered", "{msg}");
    (ws, msg["code"].as_str().unwrap().to_owned())
}

/// A mac on `a` and a browser on `b`, paired.
async fn pair_across(a: &TestNode, b: &TestNode) -> (Ws, Ws) {
    let (mut mac, code) = mac_on(a).await;
    let mut browser = b.connect("/browser").await;
    send(
        &mut browser,
        json!({"type": "join", "code": code.to_lowercase()}),
    )
    .await;
    let joined = recv(&mut browser).await;
    assert_eq!(joined["type"], "joined", "{joined}");
    assert_eq!(
        recv(&mut mac).await,
        joined,
        "both sides hear the same joined"
    );
    (mac, browser)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mac_and_a_browser_on_different_nodes_pair_and_exchange_data_in_order() {
    let Some((_db, a, b)) = two_nodes(|_| {}).await else {
        return;
    };
    let (mut mac, mut browser) = pair_across(&a, &b).await;
    exchange(&mut mac, &mut browser, "across", 200).await;
    // Both ways over a lane of the nodes' workers (src/workers.rs), not lane 0: the
    // tunnel's two ends run on workers, and its envelopes with them.
    let on_a_lane = |to: &TestNode, from: &TestNode| {
        let links = to.cluster.links_from();
        assert!(
            links
                .iter()
                .any(|(node, lane)| node == from.cluster.node_id() && *lane >= 1),
            "{links:?}"
        );
    };
    on_a_lane(&a, &b);
    on_a_lane(&b, &a);
    // Pings are answered wherever the side is connected.
    assert_usable(&mut browser).await;
    assert_usable(&mut mac).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_pairing_across_nodes_outlives_the_heartbeat_deadline() {
    let Some((_db, a, b)) = two_nodes(|s| {
        s.heartbeat.interval_secs = 1;
        s.heartbeat.timeout_secs = 2;
    })
    .await
    else {
        return;
    };
    let (mut mac, mut browser) = pair_across(&a, &b).await;
    // Each side answers its own node's pings; the browser's virtual connection on the
    // mac's node hears its tunnel answer: no one is taken for gone while the pair is quiet.
    let quiet = Duration::from_secs(5);
    tokio::join!(
        expect_silence(&mut mac, quiet),
        expect_silence(&mut browser, quiet)
    );
    exchange(&mut mac, &mut browser, "after the quiet", 20).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_across_nodes_goes_in_batches_and_arrives_whole_and_in_order() {
    let Some((_db, a, b)) = two_nodes(|_| {}).await else {
        return;
    };
    let (mut mac, mut browser) = pair_across(&a, &b).await;
    let batches_before = METRICS.cluster.batches.load(Relaxed);
    // From a few bytes to 3 KiB, and every 50th of 100 KB: big and small frames on one
    // link, read across many reads.
    let payload = |n: usize| {
        let len = if n % 50 == 25 {
            100_000
        } else {
            n * 997 % 3000
        };
        format!("{n}:{}", "x".repeat(len))
    };
    // All written before any is read: the links' writers find many waiting at once.
    for n in 0..500 {
        send_data(&mut mac, &payload(n)).await;
        send_data(&mut browser, &payload(n)).await;
    }
    for n in 0..500 {
        expect_data(&mut browser, &payload(n)).await;
        expect_data(&mut mac, &payload(n)).await;
    }
    assert!(
        METRICS.cluster.batches.load(Relaxed) > batches_before,
        "a burst of 1,000 tunnelled messages went one write each"
    );
    assert_usable(&mut browser).await;
    assert_usable(&mut mac).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mac_that_leaves_is_reported_to_its_browser_on_another_node() {
    let Some((_db, a, b)) = two_nodes(|s| s.pairing.resume_grace_secs = 60).await else {
        return;
    };
    let (mut mac, mut browser) = pair_across(&a, &b).await;
    mac.close(None).await.unwrap();
    expect_error(&mut browser, "MAC_DISCONNECTED").await;
    send_data(&mut browser, "anyone?").await;
    expect_error(&mut browser, "INVALID_MESSAGE").await;
    // The browser may pair again, here with a mac on its own node.
    let (mut local_mac, code) = mac_on(&b).await;
    send(&mut browser, json!({"type": "join", "code": code})).await;
    assert_eq!(recv(&mut browser).await["type"], "joined");
    assert_eq!(recv(&mut local_mac).await["type"], "joined");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_that_leaves_another_node_is_reported_to_its_mac() {
    let Some((_db, a, b)) = two_nodes(|s| s.pairing.resume_grace_secs = 60).await else {
        return;
    };
    let (mut mac, mut browser) = pair_across(&a, &b).await;
    browser.close(None).await.unwrap();
    expect_error(&mut mac, "BROWSER_DISCONNECTED").await;
    send(&mut mac, json!({"type": "register", "clientId": "m"})).await;
    assert_eq!(recv(&mut mac).await["type"], "registered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_lost_on_another_node_is_reported_after_the_grace() {
    let Some((_db, a, b)) = two_nodes(|s| s.pairing.resume_grace_secs = 1).await else {
        return;
    };
    let (mut mac, browser) = pair_across(&a, &b).await;
    drop(browser); // no close frame: lost, not closed
    expect_error(&mut mac, "BROWSER_DISCONNECTED").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_errors_across_nodes_are_those_of_one_node() {
    let Some((_db, a, b)) = two_nodes(|s| s.pairing.code_ttl_secs = 1).await else {
        return;
    };
    // A code no node issued.
    let mut browser = b.connect("/browser").await;
    send(&mut browser, json!({"type": "join", "code": "YYYYYY"})).await;
    expect_error(&mut browser, "INVALID_CODE").await;

    // A code of node A that expired.
    let (mut mac, code) = mac_on(&a).await;
    expect_error(&mut mac, "EXPIRED_CODE").await;
    send(&mut browser, json!({"type": "join", "code": code})).await;
    expect_error(&mut browser, "EXPIRED_CODE").await;

    // A code of node A already used by a browser on A.
    send(&mut mac, json!({"type": "register", "clientId": "m"})).await;
    let registered = recv(&mut mac).await;
    let code = registered["code"].as_str().unwrap().to_owned();
    let mut first = a.connect("/browser").await;
    send(&mut first, json!({"type": "join", "code": code})).await;
    assert_eq!(recv(&mut first).await["type"], "joined");
    send(&mut browser, json!({"type": "join", "code": code})).await;
    expect_error(&mut browser, "ALREADY_JOINED").await;

    // After those errors the same browser still pairs, across nodes.
    let (mut other_mac, other_code) = mac_on(&a).await;
    send(&mut browser, json!({"type": "join", "code": other_code})).await;
    assert_eq!(recv(&mut browser).await["type"], "joined");
    assert_eq!(recv(&mut other_mac).await["type"], "joined");
    send_data(&mut browser, "hello").await;
    expect_data(&mut other_mac, "hello").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn codes_are_unique_across_nodes() {
    // The smallest code space allowed: 16 characters, 4 long, 65,536 codes. Two nodes
    // drawing 600 codes each without asking the cluster would clash about 5.5 times
    // (birthday bound; no clash at all in fewer than 1 run in 200). A code stays taken
    // while it is remembered, after its mac left too.
    let Some((_db, a, b)) = two_nodes(|s| {
        s.pairing.code_alphabet = "346789ABCDEFGHJK".into();
        s.pairing.code_length = 4;
    })
    .await
    else {
        return;
    };
    let mut seen = std::collections::HashSet::new();
    for n in 0..1200 {
        let node = if n % 2 == 0 { &a } else { &b };
        let (mut ws, code) = mac_on(node).await;
        assert!(seen.insert(code.clone()), "{code} was issued twice");
        ws.close(None).await.unwrap();
    }
}

/// A mac on `a` that registered with a random `clientId` (so it may resume), paired with
/// a browser on `b`. Returns the mac, the browser, the clientId and the sessionId.
async fn resumable_pair_across(a: &TestNode, b: &TestNode) -> (Ws, Ws, String, String) {
    let (mut mac, _) = mac_on(a).await;
    let client_id = uuid::Uuid::new_v4().to_string();
    send(&mut mac, json!({"type": "register", "clientId": client_id})).await;
    let registered = recv(&mut mac).await;
    assert_eq!(registered["type"], "registered", "{registered}");
    let code = registered["code"].as_str().unwrap();
    let mut browser = b.connect("/browser").await;
    send(&mut browser, json!({"type": "join", "code": code})).await;
    let joined = recv(&mut browser).await;
    assert_eq!(joined["type"], "joined", "{joined}");
    assert_eq!(recv(&mut mac).await, joined);
    let session = joined["sessionId"].as_str().unwrap().to_owned();
    (mac, browser, client_id, session)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_resumes_on_a_third_node_and_gets_what_was_held_in_order() {
    let Some((_db, nodes)) = cluster_of(3, |s| s.pairing.resume_grace_secs = 60).await else {
        return;
    };
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
    let (mut mac, browser, _, session) = resumable_pair_across(a, b).await;
    // Lost, not closed: the pairing waits on A. The mac is not told; once A has noticed
    // (what was written before is lost, as on one node without lossless mode), what the
    // mac sends is held for the browser.
    drop(browser);
    expect_silence(&mut mac, Duration::from_millis(500)).await;
    for n in 0..50 {
        send_data(&mut mac, &format!("held {n}")).await;
    }
    let mut browser = c.connect("/browser").await;
    send(
        &mut browser,
        json!({"type": "resume", "sessionId": session}),
    )
    .await;
    let joined = recv(&mut browser).await;
    assert_eq!(joined["type"], "joined", "{joined}");
    assert_eq!(joined["sessionId"], session.as_str());
    assert_eq!(recv(&mut mac).await["type"], "joined");
    for n in 0..50 {
        expect_data(&mut browser, &format!("held {n}")).await;
    }
    exchange(&mut mac, &mut browser, "after resume", 100).await;
    // The pairing is still A's: a close frame from the browser on C reaches its mac.
    browser.close(None).await.unwrap();
    expect_error(&mut mac, "BROWSER_DISCONNECTED").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_errors_on_another_node_are_those_of_one_node() {
    let Some((_db, a, b)) = two_nodes(|_| {}).await else {
        return;
    };
    let (mut mac, mut browser, _, session) = resumable_pair_across(&a, &b).await;
    browser.close(None).await.unwrap();
    expect_error(&mut mac, "BROWSER_DISCONNECTED").await;
    // An ended pairing, resumed on the other node: as on one node.
    let mut again = b.connect("/browser").await;
    send(&mut again, json!({"type": "resume", "sessionId": session})).await;
    expect_error(&mut again, "INVALID_CODE").await;
    // A pairing no node ever had.
    let unknown = uuid::Uuid::new_v4().to_string();
    send(&mut again, json!({"type": "resume", "sessionId": unknown})).await;
    expect_error(&mut again, "INVALID_CODE").await;
    // The browser is its own node's again and pairs across nodes.
    let (mut other_mac, code) = mac_on(&a).await;
    send(&mut again, json!({"type": "join", "code": code})).await;
    assert_eq!(recv(&mut again).await["type"], "joined");
    assert_eq!(recv(&mut other_mac).await["type"], "joined");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mac_resumes_on_another_node_by_its_client_id() {
    let Some((_db, nodes)) = cluster_of(3, |s| s.pairing.resume_grace_secs = 60).await else {
        return;
    };
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
    let (mac, mut browser, client_id, session) = resumable_pair_across(a, b).await;
    drop(mac); // lost: the pairing waits on A for the mac
    expect_silence(&mut browser, Duration::from_millis(500)).await;
    for n in 0..50 {
        send_data(&mut browser, &format!("held {n}")).await;
    }
    // The mac comes back on C: a code from C first, as always, then its register.
    let (mut mac, code_on_c) = mac_on(c).await;
    send(&mut mac, json!({"type": "register", "clientId": client_id})).await;
    let joined = recv(&mut mac).await;
    assert_eq!(joined["type"], "joined", "{joined}");
    assert_eq!(joined["sessionId"], session.as_str());
    assert_eq!(recv(&mut browser).await["type"], "joined");
    for n in 0..50 {
        expect_data(&mut mac, &format!("held {n}")).await;
    }
    exchange(&mut mac, &mut browser, "after resume", 100).await;
    // The code C gave it first was withdrawn when it left for its pairing's home.
    let mut stranger = c.connect("/browser").await;
    send(&mut stranger, json!({"type": "join", "code": code_on_c})).await;
    expect_error(&mut stranger, "EXPIRED_CODE").await;
    // When the pairing ends the mac, still A's, gets its next code from A, and a browser
    // on any node can join it.
    browser.close(None).await.unwrap();
    expect_error(&mut mac, "BROWSER_DISCONNECTED").await;
    send(&mut mac, json!({"type": "register", "clientId": client_id})).await;
    let registered = recv(&mut mac).await;
    assert_eq!(registered["type"], "registered", "{registered}");
    let mut next = b.connect("/browser").await;
    let code = registered["code"].as_str().unwrap();
    send(&mut next, json!({"type": "join", "code": code})).await;
    assert_eq!(recv(&mut next).await["type"], "joined");
    assert_eq!(recv(&mut mac).await["type"], "joined");
    send_data(&mut next, "hello").await;
    expect_data(&mut mac, "hello").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mac_without_a_lost_pairing_registers_where_it_is() {
    let Some((_db, a, _b)) = two_nodes(|_| {}).await else {
        return;
    };
    let (mut mac, _) = mac_on(&a).await;
    let client_id = uuid::Uuid::new_v4().to_string();
    send(&mut mac, json!({"type": "register", "clientId": client_id})).await;
    assert_eq!(recv(&mut mac).await["type"], "registered");
    // Ask again: still no pairing anywhere, still a fresh code here.
    send(&mut mac, json!({"type": "register", "clientId": client_id})).await;
    assert_eq!(recv(&mut mac).await["type"], "registered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_a_pairing_s_home_dies_its_sides_elsewhere_hear_after_the_grace() {
    let grace = 2;
    let Some((_db, mut nodes)) = cluster_of(3, |s| s.pairing.resume_grace_secs = grace).await
    else {
        return;
    };
    let (first_mac, mut browser, client_id, _) = resumable_pair_across(&nodes[0], &nodes[1]).await;
    // Both its sides elsewhere: the mac comes back through C, the browser is on B.
    drop(first_mac);
    let (mut mac, _) = mac_on(&nodes[2]).await;
    send(&mut mac, json!({"type": "register", "clientId": client_id})).await;
    assert_eq!(recv(&mut mac).await["type"], "joined");
    assert_eq!(recv(&mut browser).await["type"], "joined");
    // And a code of A nobody joined yet.
    let (_waiting, code) = mac_on(&nodes[0]).await;

    let a = nodes.remove(0); // nodes = [B, C]
    let killed = Instant::now();
    drop(a); // SIGKILL: no word to anyone
             // Within the node timeout and the grace, each side hears its partner is gone — not
             // before the grace — and what it sends meanwhile goes nowhere.
    send_data(&mut browser, "into the void").await;
    expect_error(&mut browser, "MAC_DISCONNECTED").await;
    expect_error(&mut mac, "BROWSER_DISCONNECTED").await;
    let waited = killed.elapsed();
    assert!(
        waited >= Duration::from_secs(grace),
        "told after {waited:?}, before the grace"
    );
    // The mac is C's now, with a code from C; the browser is B's, and they pair again.
    let registered = recv(&mut mac).await;
    assert_eq!(registered["type"], "registered", "{registered}");
    let code_on_c = registered["code"].as_str().unwrap();
    send(&mut browser, json!({"type": "join", "code": code_on_c})).await;
    assert_eq!(recv(&mut browser).await["type"], "joined");
    assert_eq!(recv(&mut mac).await["type"], "joined");
    send_data(&mut browser, "again").await;
    expect_data(&mut mac, "again").await;
    // The dead node's unjoined code is no longer joinable anywhere.
    let mut late = nodes[0].connect("/browser").await;
    send(&mut late, json!({"type": "join", "code": code})).await;
    expect_error(&mut late, "INVALID_CODE").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lossless_sides_cut_silently_and_back_on_other_nodes_lose_nothing_either_way() {
    // As tests/lossless.rs, with each side behind a round-robin balancer over three nodes:
    // every reconnection lands on another node than the one before.
    let Some((_db, nodes)) = cluster_of(3, resumable).await else {
        return;
    };
    let ports: Vec<u16> = nodes.iter().map(|node| node.port).collect();
    let mac_proxy = Proxy::round_robin(ports.clone()).await;
    let browser_proxy = Proxy::round_robin(vec![ports[1], ports[2], ports[0]]).await;
    let cut = async {
        // The browser first (shorter than the relay's heartbeat deadline: it comes back
        // while its home still believes in the old connection), then the mac (longer).
        browser_proxy
            .cut(Duration::from_millis(800), Duration::from_millis(2000))
            .await;
        mac_proxy
            .cut(Duration::from_millis(1500), Duration::from_millis(4000))
            .await;
    };
    let (mac_resumes, browser_resumes) =
        exchange_through(250, cut, &mac_proxy, &browser_proxy).await;
    assert!(
        mac_resumes >= 1 && browser_resumes >= 1,
        "both cuts were resumed from"
    );
}
