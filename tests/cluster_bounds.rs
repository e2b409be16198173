//! What a node holds while Redis or another node does not answer is bounded (issue 11):
//! the pairing-home records being written to a stalled Redis (`homes::MAX_WRITES`), the
//! status questions waiting for a user's node that does not answer
//! (`account::remote::MAX_ASKS`), and a tunnel whose gateway never answers its virtual
//! connection's close. Past each bound the node refuses or lets go instead of holding
//! more. Real nodes, a real Redis and PostgreSQL; the stall is a proxy that swallows every
//! byte (`common::proxy`), or a node the test plays (`common::links::FakeNode`).
//!
//! `hermit_cluster_tunnels` is a gauge of the process: the tests here that open tunnels
//! take [`TUNNELS`] first, and no other test here opens any.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::account::{agent, machines_of, owner};
use common::cluster::*;
use common::links::{advert, link_to, write_frame, FakeNode};
use common::proxy::Proxy;
use common::*;
use hermit_relay::ids::PairingId;
use hermit_relay::metrics::cluster::TunnelEnd;
use hermit_relay::metrics::METRICS;
use hermit_relay::relay::pairing::homes::Homes;
use serde_json::{json, Value};

/// Longer than a node timeout (2 s) plus a heartbeat, with room for a loaded machine.
const NOTICE: Duration = Duration::from_secs(8);

/// Held by each test that opens tunnels, so that it alone moves the tunnel gauges.
static TUNNELS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The bounds under test (`homes::MAX_WRITES`, `remote::MAX_ASKS`).
const MAX_WRITES: usize = 1024;
const MAX_ASKS: usize = 1024;

fn port_of(url: &str) -> u16 {
    url.rsplit(':')
        .next()
        .and_then(|port| port.trim_end_matches('/').parse().ok())
        .expect("the URL ends with its port")
}

/// A node whose Redis stops answering holds at most `MAX_WRITES` home records waiting
/// for it: the next is skipped (counted) at once; when the waiting ones time out
/// (`cluster.redis_timeout_ms`), records are taken again.
#[actix_rt::test]
async fn records_waiting_for_a_stalled_redis_are_bounded() {
    let (Some(redis), Some(db)) = (redis_url(), TestDb::postgres()) else {
        return;
    };
    let proxy = Proxy::start(port_of(&redis)).await;
    let mut settings = node_settings(&db, &format!("redis://127.0.0.1:{}", proxy.port), &prefix());
    let timeout = Duration::from_secs(4);
    settings.cluster.redis_timeout_ms = timeout.as_millis() as u64;
    let node = TestNode::start(settings);
    ready_becomes(&node, 200, NOTICE).await;
    let homes = Homes::new(Arc::clone(&node.cluster));

    proxy.down();
    let stalled = Instant::now();
    let skipped = || METRICS.cluster.dropped_count("home_record");
    let before = skipped();
    for _ in 0..MAX_WRITES {
        homes.record(&PairingId::random(), None);
    }
    assert_eq!(skipped(), before, "the first {MAX_WRITES} are taken");
    // Let every write reach the Redis client and wait there.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for _ in 0..100 {
        homes.record(&PairingId::random(), None);
    }
    assert_eq!(
        skipped() - before,
        100,
        "past {MAX_WRITES} waiting, a record is skipped"
    );

    // The waiting writes give up within the Redis timeout; then records are taken again.
    let mut taken = false;
    while stalled.elapsed() < timeout + NOTICE {
        let was = skipped();
        homes.record(&PairingId::random(), None);
        if skipped() == was {
            taken = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        taken,
        "the writes waiting for Redis gave up within its timeout"
    );
    assert!(
        stalled.elapsed() >= timeout - Duration::from_millis(500),
        "records are refused for as long as the stalled writes wait ({:?})",
        stalled.elapsed()
    );
}

/// `GET /api/machines` on a node that is not the user's asks the user's node; while that
/// node does not answer, at most `MAX_ASKS` questions wait (each up to
/// `cluster.redis_timeout_ms`), and every request past them is refused with 503 at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn questions_waiting_for_a_user_s_node_that_does_not_answer_are_bounded() {
    let (Some(redis), Some(db)) = (redis_url(), TestDb::postgres()) else {
        return;
    };
    let prefix = prefix();
    let timeout = Duration::from_secs(20);
    // Node B reaches node A's link listener through a proxy that can swallow everything.
    let a_link = common::free_port();
    let a_proxy = Proxy::start(a_link).await;
    let mut a_settings = node_settings(&db, &redis, &prefix);
    a_settings.cluster.link_listen = format!("127.0.0.1:{a_link}");
    a_settings.cluster.link_advertise = format!("127.0.0.1:{}", a_proxy.port);
    let a = TestNode::start(a_settings);
    let mut b_settings = node_settings(&db, &redis, &prefix);
    b_settings.cluster.redis_timeout_ms = timeout.as_millis() as u64;
    // Every request passes the database, however long the queue for it on a busy machine.
    b_settings.database.connect_timeout_secs = 60;
    let b = TestNode::start(b_settings);
    ready_becomes(&a, 200, NOTICE).await;
    ready_becomes(&b, 200, NOTICE).await;
    eventually(NOTICE, "the nodes know each other", || {
        a.cluster.nodes().contains(b.cluster.node_id())
            && b.cluster.nodes().contains(a.cluster.node_id())
    })
    .await;

    // The user's agent makes A the user's node; B asks A for its status.
    let user = owner(&a, "asks@example.com").await;
    let _agent = agent(&a, &user, &[]).await;
    eventually_online_on(&b, &user.access).await;

    a_proxy.down();
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(timeout * 3)
        .build()
        .unwrap();
    const PAST: usize = 50;
    let requests: Vec<_> = (0..MAX_ASKS + PAST)
        .map(|_| {
            let request = http.get(b.url("/api/machines")).bearer_auth(&user.access);
            tokio::spawn(async move {
                let started = Instant::now();
                let status = request.send().await.unwrap().status().as_u16();
                (status, started.elapsed())
            })
        })
        .collect();
    let mut answers = Vec::new();
    for request in requests {
        answers.push(request.await.unwrap());
    }
    // Refused at once: those past the bound. The others waited for A until the timeout.
    let (at_once, waited): (Vec<_>, Vec<_>) = answers
        .into_iter()
        .partition(|(_, took)| *took < timeout / 2);
    assert_eq!(
        at_once.len(),
        PAST,
        "past {MAX_ASKS} waiting questions, a request is refused at once"
    );
    for (status, took) in at_once.iter().chain(&waited) {
        assert_eq!(*status, 503, "after {took:?}");
    }
    for (_, took) in waited {
        assert!(took >= timeout - Duration::from_secs(1), "{took:?}");
    }
}

/// Waits until node `on` reports the user's one machine online.
async fn eventually_online_on(on: &TestNode, access: &str) {
    let deadline = Instant::now() + NOTICE;
    loop {
        let machines = machines_of(on, access).await;
        if machines[0]["online"] == true {
            return;
        }
        assert!(Instant::now() < deadline, "never online on B: {machines}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A tunnel's virtual connection that closed waits for its side's answer (the gateway's
/// `tun.gone`) for at most 4 s (`tunnel/home.rs`: twice `CLOSE_WAIT`): a gateway that never
/// answers does not keep the tunnel. The gateway here is the test, as a node of the cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tunnel_whose_gateway_never_answers_the_close_is_let_go() {
    let Some(redis) = redis_url() else {
        return;
    };
    let Some((_db, nodes)) = cluster_of(1, |_| {}).await else {
        return;
    };
    let _alone = TUNNELS.lock().await;
    let a = &nodes[0];
    let mut gateway = FakeNode::join(a, &redis, "fake-gateway").await;
    let (_, secret) = advert(a).await;
    let mut link = link_to(a, &gateway.id, &secret).await;
    let held = || METRICS.cluster.tunnels(TunnelEnd::Home);
    assert_eq!(held(), 0);

    // A browser "on the test's node" opens a tunnel to A: A's virtual browser answers it.
    let route = "fake-gateway/1/1/0";
    let join = json!({"type": "join", "code": "ZZZZZZ"}).to_string();
    let open = json!({"ip": "127.0.0.1", "endpoint": "/browser", "first": join});
    let open = open.to_string();
    write_frame(&mut link, &gateway.id, "tun.open", route, open.as_bytes()).await;
    let down = gateway
        .next(NOTICE)
        .await
        .expect("A's virtual browser answers");
    assert_eq!(
        (down.kind.as_str(), down.route.as_str()),
        ("tun.down", route)
    );
    let answer: Value = serde_json::from_slice(&down.body).unwrap();
    assert_eq!(answer["type"], "error", "{answer}");
    assert_eq!(held(), 1);

    // An OPEN for a route that is open, or for another node's route, is ignored.
    for route in [route, "another-node/1/1/0"] {
        write_frame(&mut link, &gateway.id, "tun.open", route, open.as_bytes()).await;
    }
    let answer = gateway.next(Duration::from_millis(500)).await;
    assert!(
        answer.is_none(),
        "no virtual connection answers: {answer:?}"
    );
    assert_eq!(held(), 1);

    // Not UTF-8: the virtual browser closes with 1007, as one with a socket would, and
    // waits for the side's answer, which never comes.
    write_frame(&mut link, &gateway.id, "tun.up", route, &[0xff, 0xfe]).await;
    let close = loop {
        let envelope = gateway.next(NOTICE).await.expect("its close frame");
        if envelope.kind == "tun.close" {
            break envelope;
        }
    };
    let closed = Instant::now();
    assert_eq!(close.route, route);
    assert!(close.body.starts_with(b"1007"), "{close:?}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(held(), 1, "the tunnel waits for the side's answer");
    eventually(Duration::from_secs(4) + NOTICE, "the tunnel let go", || {
        held() == 0
    })
    .await;
    assert!(
        closed.elapsed() >= Duration::from_secs(3),
        "not before it waited ({:?})",
        closed.elapsed()
    );
}

/// A tunnel is counted at both ends while it stands, and let go at both when its side
/// leaves: a pairing across nodes holds nothing once its browser closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tunnel_is_let_go_at_both_ends_when_its_side_leaves() {
    let Some((_db, nodes)) = cluster_of(2, |_| {}).await else {
        return;
    };
    let _alone = TUNNELS.lock().await;
    let held = || {
        (
            METRICS.cluster.tunnels(TunnelEnd::Home),
            METRICS.cluster.tunnels(TunnelEnd::Gateway),
        )
    };
    assert_eq!(held(), (0, 0));
    let (a, b) = (&nodes[0], &nodes[1]);
    let mut mac = a.connect("/mac").await;
    let registered = recv(&mut mac).await;
    let code = registered["code"].as_str().unwrap().to_owned();
    let mut browser = b.connect("/browser").await;
    send(&mut browser, json!({"type": "join", "code": code})).await;
    assert_eq!(recv(&mut browser).await["type"], "joined");
    assert_eq!(recv(&mut mac).await["type"], "joined");
    exchange(&mut mac, &mut browser, "across", 5).await;
    assert_eq!(
        held(),
        (1, 1),
        "the browser's tunnel: its home on A, its gateway on B"
    );

    browser.close(None).await.unwrap();
    eventually(NOTICE, "both ends let go", || held() == (0, 0)).await;
}
