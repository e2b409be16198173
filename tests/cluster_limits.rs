//! The failed-join budget across nodes (issue 11): `limits.failed_joins_per_minute` and its
//! per-network share are the cluster's, not each node's, with the rules of one node (see
//! `tests/hardening_edge.rs`). Real nodes, Redis and PostgreSQL.

mod common;

use std::time::{Duration, Instant};

use common::cluster::*;
use common::*;
use futures_util::future::join_all;
use hermit_relay::config::Settings;
use serde_json::json;

/// Longer than a node timeout (2 s) plus a heartbeat, with room for a loaded machine.
const NOTICE: Duration = Duration::from_secs(8);

/// Two healthy nodes of one cluster that know each other, or `None` when Redis or
/// PostgreSQL is not configured (never under CI).
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
    while !(a.cluster.healthy()
        && b.cluster.healthy()
        && a.cluster.nodes().contains(b.cluster.node_id())
        && b.cluster.nodes().contains(a.cluster.node_id()))
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

/// A mac on `home` and a browser on `via`, paired by its code.
async fn pair(home: &TestNode, via: &TestNode) -> (Ws, Ws) {
    let (mut mac, code) = mac_on(home).await;
    let mut browser = via.connect("/browser").await;
    send(&mut browser, json!({"type": "join", "code": code})).await;
    let joined = recv(&mut browser).await;
    assert_eq!(joined["type"], "joined", "{joined}");
    assert_eq!(recv(&mut mac).await, joined);
    (mac, browser)
}

/// The error code a `join` of `code` from `from` through `node` is answered with.
async fn guess(node: &TestNode, from: &str, code: &str) -> String {
    let mut ws = connect_from(node.port, "/browser", from, &[])
        .await
        .unwrap();
    send(&mut ws, json!({"type": "join", "code": code})).await;
    recv(&mut ws).await["code"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_joins_are_bounded_cluster_wide_however_the_guesses_are_spread_over_nodes() {
    let Some((_db, a, b)) = two_nodes(|s| s.limits.failed_joins_per_minute = 3).await else {
        return;
    };
    // Twelve addresses guess at once, half of them through each node: each node alone
    // would allow 3, but the cluster allows 3 in all — not 6.
    let mut guessers = Vec::new();
    for host in 2..14 {
        let node = if host % 2 == 0 { &a } else { &b };
        let from = format!("127.0.0.{host}");
        let ws = connect_from(node.port, "/browser", &from, &[])
            .await
            .unwrap();
        guessers.push(ws);
    }
    join_all(guessers.iter_mut().map(|ws| async move {
        send(ws, json!({"type": "join", "code": "AAAAAA"})).await;
    }))
    .await;
    let (mut invalid, mut limited) = (0, 0);
    for ws in &mut guessers {
        match recv(ws).await["code"].as_str().unwrap() {
            "INVALID_CODE" => invalid += 1,
            "RATE_LIMITED" => limited += 1,
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!((invalid, limited), (3, 9));

    // While the budget is spent every join is refused on every node, even one with a live
    // code: whether the code is on the browser's node or another's.
    let (_mac_a, code_a) = mac_on(&a).await;
    let (_mac_b, code_b) = mac_on(&b).await;
    for (node, code) in [(&b, &code_a), (&b, &code_b), (&a, &code_a), (&a, &code_b)] {
        let mut browser = connect_from(node.port, "/browser", "127.0.0.99", &[])
            .await
            .unwrap();
        send(&mut browser, json!({"type": "join", "code": code})).await;
        let text = expect_error(&mut browser, "RATE_LIMITED").await;
        assert!(text.contains("wrong codes"), "{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_network_cannot_spend_the_cluster_budget_alone_through_several_nodes() {
    let Some((_db, a, b)) = two_nodes(|s| {
        s.limits.failed_joins_per_minute = 100;
        s.limits.failed_joins_per_network_per_minute = 2;
    })
    .await
    else {
        return;
    };
    // 127.0.0.2 and 127.0.0.3 are one /24: they share two failures, whichever node they
    // guess through.
    let mut outcomes = Vec::new();
    for (node, from) in [(&a, "127.0.0.2"), (&b, "127.0.0.3"), (&a, "127.0.0.2")] {
        outcomes.push(guess(node, from, "AAAAAA").await);
    }
    outcomes.push(guess(&b, "127.0.0.3", "AAAAAA").await);
    assert_eq!(
        outcomes,
        [
            "INVALID_CODE",
            "INVALID_CODE",
            "RATE_LIMITED",
            "RATE_LIMITED"
        ]
    );
    // Another network still has the rest of the cluster's budget.
    assert_eq!(guess(&b, "127.0.1.2", "AAAAAA").await, "INVALID_CODE");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn good_joins_across_nodes_do_not_spend_the_cluster_budget_for_failed_joins() {
    let Some((_db, a, b)) = two_nodes(|s| {
        s.limits.failed_joins_per_minute = 1;
        s.limits.failed_joins_per_network_per_minute = 1;
    })
    .await
    else {
        return;
    };
    // Joins across nodes (reserved on the code's node) and within each: none fails, so
    // each gives its failure back, however many there are.
    let mut pairs = Vec::new();
    for _ in 0..2 {
        for (home, via) in [(&a, &b), (&b, &a), (&a, &a), (&b, &b)] {
            pairs.push(pair(home, via).await);
        }
    }
    // The budget is whole: one wrong code is told so, and spends it for the cluster...
    assert_eq!(guess(&a, "127.0.0.2", "AAAAAA").await, "INVALID_CODE");
    // ...so the other node, which has seen no failure itself, refuses the next guess.
    assert_eq!(guess(&b, "127.0.1.2", "AAAAAA").await, "RATE_LIMITED");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_off_from_redis_keeps_its_own_failed_join_budget() {
    let (Some(_), Some(db)) = (redis_url(), TestDb::postgres()) else {
        return;
    };
    // Nothing listens on this port (the listener is gone): the node never reaches Redis.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dead = format!("redis://127.0.0.1:{port}");
    let mut s = node_settings(&db, &dead, &prefix());
    s.limits.failed_joins_per_minute = 2;
    let node = TestNode::start(s);
    assert!(!node.cluster.healthy());
    // A code that cannot be anyone's needs no lookup: it is judged here, on this node's
    // budget alone, without waiting for Redis.
    let mut outcomes = Vec::new();
    for host in 2..5 {
        outcomes.push(guess(&node, &format!("127.0.0.{host}"), "NOT-A-CODE").await);
    }
    assert_eq!(outcomes, ["INVALID_CODE", "INVALID_CODE", "RATE_LIMITED"]);
}
