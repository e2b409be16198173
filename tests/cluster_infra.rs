//! The cluster's backplane (issue 11, stage 1) with real nodes, a real Redis and a real
//! PostgreSQL: nodes find each other, envelopes arrive in order, a node that dies or leaves
//! is reported, `/ready` tells when Redis is gone, attempt limits hold cluster-wide, and a
//! cluster on SQLite is refused.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::cluster::*;
use common::proxy::Proxy;
use common::*;
use hermit_relay::cluster::{ClusterEvent, Envelope, Inbound, Inbox};
use hermit_relay::ids::NodeId;
use serde_json::json;

/// Longer than a node timeout (2 s) plus a heartbeat, with room for a loaded machine.
const NOTICE: Duration = Duration::from_secs(8);

/// A PostgreSQL database and a Redis prefix for one test, or `None` when either is not
/// configured (never under CI: there both are mandatory).
fn backends() -> Option<(TestDb, String, String)> {
    let redis = redis_url()?;
    let db = TestDb::postgres()?;
    Some((db, redis, prefix()))
}

fn nodes_know(nodes: &[&TestNode]) -> bool {
    nodes.iter().all(|node| {
        let known = node.cluster.nodes();
        nodes
            .iter()
            .filter(|other| other.cluster.node_id() != node.cluster.node_id())
            .all(|other| known.contains(other.cluster.node_id()))
    })
}

/// The next `n` envelopes in `inbox`, skipping events.
async fn envelopes(inbox: &Inbox, n: usize) -> Vec<Envelope> {
    let mut got = Vec::new();
    tokio::time::timeout(NOTICE, async {
        while got.len() < n {
            match inbox.recv().await {
                Inbound::Message(envelope) => got.push(envelope),
                Inbound::Lost(routes) => panic!("envelopes were lost: {routes:?}"),
                Inbound::Event(_) => {}
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("only {} of {n} envelopes arrived", got.len()));
    got
}

/// The bodies of the envelopes of `kind`, in order.
fn bodies(envelopes: &[Envelope], kind: &str) -> Vec<Bytes> {
    envelopes
        .iter()
        .filter(|e| e.kind == kind)
        .map(|e| e.body.clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_find_each_other_and_envelopes_arrive_in_the_order_sent() {
    let Some((db, redis, prefix)) = backends() else {
        return;
    };
    let a = TestNode::start(node_settings(&db, &redis, &prefix));
    let b = TestNode::start(node_settings(&db, &redis, &prefix));
    let c = TestNode::start(node_settings(&db, &redis, &prefix));
    eventually(NOTICE, "every node to know the others", || {
        nodes_know(&[&a, &b, &c])
    })
    .await;
    for node in [&a, &b, &c] {
        ready_becomes(node, 200, NOTICE).await;
    }
    let (inbox_b, inbox_c) = (
        b.cluster.inbox("test").unwrap(),
        c.cluster.inbox("test").unwrap(),
    );
    assert!(b.cluster.inbox("test").is_none(), "an inbox has one reader");

    for n in 0..500u32 {
        let direct = Envelope::new("test.direct", "r1", n.to_string()).unwrap();
        a.cluster.send(b.cluster.node_id(), direct).unwrap();
        if n % 5 == 0 {
            let to_c = Envelope::new("test.other", "r2", n.to_string()).unwrap();
            a.cluster.send(c.cluster.node_id(), to_c).unwrap();
        }
    }
    let at_b = envelopes(&inbox_b, 500).await;
    let expected: Vec<Bytes> = (0..500u32).map(|n| Bytes::from(n.to_string())).collect();
    assert_eq!(
        bodies(&at_b, "test.direct"),
        expected,
        "in order, none lost, none twice"
    );
    assert!(at_b.iter().all(|e| &e.from == a.cluster.node_id()));
    let to_c: Vec<Bytes> = (0..500u32)
        .step_by(5)
        .map(|n| Bytes::from(n.to_string()))
        .collect();
    assert!(
        bodies(&at_b, "test.other").is_empty(),
        "what was sent to C reached B"
    );
    let at_c = envelopes(&inbox_c, 100).await;
    assert_eq!(
        bodies(&at_c, "test.other"),
        to_c,
        "in order, none lost, none twice"
    );
    while let Some(item) = inbox_c.try_recv() {
        assert!(
            !matches!(item, Inbound::Message(ref e) if e.kind == "test.direct"),
            "what was sent to B alone reached C"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_stops_heartbeating_is_down_and_one_that_shuts_down_has_left() {
    let Some((db, redis, prefix)) = backends() else {
        return;
    };
    let a = TestNode::start(node_settings(&db, &redis, &prefix));
    let inbox = a.cluster.inbox("test").unwrap();
    let b = TestNode::start(node_settings(&db, &redis, &prefix));
    let c = TestNode::start(node_settings(&db, &redis, &prefix));
    eventually(NOTICE, "every node to know the others", || {
        nodes_know(&[&a, &b, &c])
    })
    .await;
    let (b_id, c_id): (NodeId, NodeId) = (b.cluster.node_id().clone(), c.cluster.node_id().clone());
    let mut up = vec![
        next_event(&inbox, NOTICE).await,
        next_event(&inbox, NOTICE).await,
    ];
    up.sort_by_key(|event| format!("{event:?}"));
    let mut expected = vec![
        ClusterEvent::NodeUp(b_id.clone()),
        ClusterEvent::NodeUp(c_id.clone()),
    ];
    expected.sort_by_key(|event| format!("{event:?}"));
    assert_eq!(up, expected);

    // C dies without a word: its heartbeat expires.
    let died = Instant::now();
    drop(c);
    assert_eq!(
        next_event(&inbox, NOTICE).await,
        ClusterEvent::NodeDown(c_id.clone())
    );
    let noticed = died.elapsed();
    assert!(
        noticed >= Duration::from_millis(1500),
        "down only once its heartbeat expired, not before ({noticed:?})"
    );
    assert!(!a.cluster.nodes().contains(&c_id));

    // B shuts down gracefully: it leaves.
    b.shut_down().await;
    assert_eq!(
        next_event(&inbox, NOTICE).await,
        ClusterEvent::NodeLeft(b_id.clone())
    );
    assert!(a.cluster.nodes().is_empty());
    assert!(a.cluster.healthy());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_answers_503_while_redis_is_unreachable_and_200_when_it_is_back() {
    let Some((db, redis, prefix)) = backends() else {
        return;
    };
    let redis_port: u16 = redis
        .rsplit(':')
        .next()
        .and_then(|port| port.trim_end_matches('/').parse().ok())
        .expect("TEST_REDIS_URL ends with its port");
    let proxy = Proxy::start(redis_port).await;
    let through_proxy = format!("redis://127.0.0.1:{}", proxy.port);
    let node = TestNode::start(node_settings(&db, &through_proxy, &prefix));
    let inbox = node.cluster.inbox("test").unwrap();
    ready_becomes(&node, 200, NOTICE).await;
    assert!(node.cluster.healthy());

    proxy.down();
    ready_becomes(&node, 503, NOTICE).await;
    assert_eq!(next_event(&inbox, NOTICE).await, ClusterEvent::Lost);
    let refused = node.cluster.send(
        node.cluster.node_id(),
        Envelope::new("k", "r", "x").unwrap(),
    );
    assert!(
        refused.is_err(),
        "nothing is queued for a cluster it cannot reach"
    );
    let body = reqwest::get(node.url("/ready"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(body.contains("Redis"), "{body}");

    proxy.up();
    ready_becomes(&node, 200, Duration::from_secs(15)).await;
    assert_eq!(next_event(&inbox, NOTICE).await, ClusterEvent::Rejoined);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_redis_never_answers_starts_but_is_not_ready() {
    let Some((db, _redis, prefix)) = backends() else {
        return;
    };
    let dead = format!("redis://127.0.0.1:{}", common::free_port());
    let node = TestNode::start(node_settings(&db, &dead, &prefix));
    assert_eq!(
        reqwest::get(node.url("/health"))
            .await
            .unwrap()
            .status()
            .as_u16(),
        200
    );
    for _ in 0..3 {
        assert_eq!(ready_status(&node).await, 503);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(!node.cluster.healthy());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_attempts_are_counted_across_nodes() {
    let Some((db, redis, prefix)) = backends() else {
        return;
    };
    let limited = |db: &TestDb| {
        let mut s = node_settings(db, &redis, &prefix);
        s.limits.join_attempts_per_minute = 4;
        s
    };
    let a = TestNode::start(limited(&db));
    let b = TestNode::start(limited(&db));
    for node in [&a, &b] {
        ready_becomes(node, 200, NOTICE).await;
    }
    let mut on_a = a.connect("/browser").await;
    for _ in 0..3 {
        send(&mut on_a, json!({"type": "join", "code": "YYYYYY"})).await;
        expect_error(&mut on_a, "INVALID_CODE").await;
    }
    // Node B has seen no attempt from this address, but the cluster has seen three.
    let mut on_b = b.connect("/browser").await;
    send(&mut on_b, json!({"type": "join", "code": "YYYYYY"})).await;
    expect_error(&mut on_b, "INVALID_CODE").await;
    send(&mut on_b, json!({"type": "join", "code": "YYYYYY"})).await;
    expect_error(&mut on_b, "RATE_LIMITED").await;
    send(&mut on_a, json!({"type": "join", "code": "YYYYYY"})).await;
    expect_error(&mut on_a, "RATE_LIMITED").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_attempts_are_counted_across_nodes() {
    let Some((db, redis, prefix)) = backends() else {
        return;
    };
    let limited = |db: &TestDb| {
        let mut s = node_settings(db, &redis, &prefix);
        s.limits.auth_attempts_per_minute = 3;
        s
    };
    let a = TestNode::start(limited(&db));
    let b = TestNode::start(limited(&db));
    for node in [&a, &b] {
        ready_becomes(node, 200, NOTICE).await;
    }
    let http = reqwest::Client::new();
    let login = |node: &TestNode| {
        http.post(node.url("/auth/login"))
            .json(&json!({"email": "nobody@example.com", "password": "wrong password"}))
            .send()
    };
    for node in [&a, &b, &a] {
        assert_eq!(login(node).await.unwrap().status().as_u16(), 401);
    }
    assert_eq!(login(&b).await.unwrap().status().as_u16(), 429);
}

#[test]
fn a_cluster_on_a_sqlite_database_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("relay.db").display());
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_hermit-relay"))
        .env("HERMIT__DATABASE__URL", &db)
        .env("HERMIT__CLUSTER__REDIS_URL", "redis://127.0.0.1:6379")
        .env("HERMIT__SERVER__BIND", "127.0.0.1:0")
        .env(
            "HERMIT__AUTH__PRIVATE_KEY_FILE",
            dir.path().join("root.key").display().to_string(),
        )
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("a node with sqlite:// and Redis kept running");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let output = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(!status.success());
    assert!(said.contains("cluster.redis_url"), "{said}");
    assert!(said.contains("PostgreSQL"), "{said}");
    assert!(
        !dir.path().join("relay.db").exists(),
        "refused before touching the database"
    );
}
