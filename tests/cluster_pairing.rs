//! Quick pairing across nodes (issue 11, stage 2): a mac on one node, a browser on
//! another, with every answer the same as on one node. Real nodes, Redis and PostgreSQL.

mod common;

use std::time::{Duration, Instant};

use common::cluster::*;
use common::*;
use hermit_relay::config::Settings;
use serde_json::json;

const NOTICE: Duration = Duration::from_secs(8);

/// Two nodes of one cluster (each knowing the other), or `None` when Redis or PostgreSQL
/// is not configured (never under CI).
async fn two_nodes(adjust: impl Fn(&mut Settings)) -> Option<(TestDb, TestNode, TestNode)> {
    let redis = redis_url()?;
    let db = TestDb::postgres()?;
    let prefix = prefix();
    let node = || {
        let mut s = node_settings(&db, &redis, &prefix);
        adjust(&mut s);
        TestNode::start(s)
    };
    let (a, b) = (node(), node());
    let deadline = Instant::now() + NOTICE;
    while !(a.cluster.nodes().contains(b.cluster.node_id())
        && b.cluster.nodes().contains(a.cluster.node_id())
        && a.cluster.healthy()
        && b.cluster.healthy())
    {
        assert!(
            Instant::now() < deadline,
            "the nodes did not find each other"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Some((db, a, b))
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
    for n in 0..200 {
        send_data(&mut mac, &format!("to browser {n}")).await;
        send_data(&mut browser, &format!("to mac {n}")).await;
    }
    for n in 0..200 {
        expect_data(&mut browser, &format!("to browser {n}")).await;
        expect_data(&mut mac, &format!("to mac {n}")).await;
    }
    // Pings are answered wherever the side is connected.
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
