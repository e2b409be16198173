//! Rolling restarts (issue 11): a node shut down gracefully hands its pairings to another;
//! their sides, closed with 1001, resume on any node with nothing lost, duplicated or
//! reordered. Real nodes, Redis and PostgreSQL.

mod common;

use std::time::Duration;

use common::account::{self, attach, client, owner, recv_type};
use common::cluster::*;
use common::lossless::exchange_through;
use common::proxy::Proxy;
use common::*;
use futures_util::{SinkExt, StreamExt};
use hermit_relay::config::Settings;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

/// Lossless-friendly timings: a dead link is noticed in seconds.
fn quick(s: &mut Settings) {
    s.heartbeat.interval_secs = 1;
    s.heartbeat.timeout_secs = 2;
    s.pairing.resume_grace_secs = 30;
    s.pairing.ack_interval_ms = 100;
    s.pairing.ack_ping_interval_secs = 1;
}

/// Reads `ws` until the relay's close frame; returns the `data` payloads before it and
/// the close code.
async fn until_closed(ws: &mut Ws) -> (Vec<String>, Option<u16>) {
    let mut payloads = Vec::new();
    let close = tokio::time::timeout(WAIT, async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(text))) => {
                    let msg: Value = serde_json::from_str(&text).unwrap();
                    if msg["type"] == "data" {
                        payloads.push(msg["payload"].as_str().unwrap().to_owned());
                    }
                }
                Some(Ok(Message::Close(frame))) => return frame.map(|f| u16::from(f.code)),
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return None,
            }
        }
    })
    .await
    .expect("the relay closes the connection in time");
    (payloads, close)
}

/// Reads `data` payloads from `ws` until `want` of them arrived in all (counting `got`).
async fn data_until(ws: &mut Ws, got: &mut Vec<String>, want: usize) {
    while got.len() < want {
        let msg = recv(ws).await;
        if msg["type"] == "data" {
            got.push(msg["payload"].as_str().unwrap().to_owned());
        }
    }
}

fn numbered(tag: &str, count: usize) -> Vec<String> {
    (0..count).map(|n| format!("{tag} {n}")).collect()
}

/// Resumes `mac` (by its `clientId`) on `node`, retrying while the pairing's new home is
/// not recorded yet (a resume that reaches the leaving node is cut).
async fn resume_mac(node: &TestNode, client_id: &str) -> Ws {
    for _ in 0..50 {
        let mut ws = node.connect("/mac").await;
        assert_eq!(recv(&mut ws).await["type"], "registered");
        send(&mut ws, json!({"type": "register", "clientId": client_id})).await;
        if let Ok(Some(Ok(Message::Text(text)))) =
            tokio::time::timeout(Duration::from_secs(3), ws.next()).await
        {
            let msg: Value = serde_json::from_str(&text).unwrap();
            assert_eq!(msg["type"], "joined", "{msg}");
            return ws;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the mac could not resume");
}

/// Resumes `browser` (by its `sessionId`) on `node`, as [`resume_mac`].
async fn resume_browser(node: &TestNode, session: &str) -> Ws {
    for _ in 0..50 {
        let mut ws = node.connect("/browser").await;
        send(&mut ws, json!({"type": "resume", "sessionId": session})).await;
        if let Ok(Some(Ok(Message::Text(text)))) =
            tokio::time::timeout(Duration::from_secs(3), ws.next()).await
        {
            let msg: Value = serde_json::from_str(&text).unwrap();
            assert_eq!(msg["type"], "joined", "{msg}");
            return ws;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the browser could not resume");
}

/// A mac on `mac_node` with a resumable `clientId`, paired with a browser on `browser_node`:
/// both sockets, the `clientId` and the `sessionId`.
async fn pair_across(mac_node: &TestNode, browser_node: &TestNode) -> (Ws, Ws, String, String) {
    let mut mac = mac_node.connect("/mac").await;
    assert_eq!(recv(&mut mac).await["type"], "registered");
    let client_id = uuid::Uuid::new_v4().to_string();
    send(&mut mac, json!({"type": "register", "clientId": client_id})).await;
    let code = recv(&mut mac).await["code"].as_str().unwrap().to_owned();
    let mut browser = browser_node.connect("/browser").await;
    send(&mut browser, json!({"type": "join", "code": code})).await;
    let joined = recv(&mut browser).await;
    let session = joined["sessionId"].as_str().unwrap().to_owned();
    assert_eq!(recv(&mut mac).await["type"], "joined");
    (mac, browser, client_id, session)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_shut_down_hands_its_pairings_over_and_its_sides_resume_elsewhere() {
    let Some((_db, mut nodes)) = cluster_of(3, quick).await else {
        return;
    };
    // Without lossless mode: a mac on A (whose pairing A holds), its browser on B.
    let (mut mac, mut browser, client_id, session) = pair_across(&nodes[0], &nodes[1]).await;

    // Both sides write while A shuts down; each reads until its close frame.
    let to_browser = numbered("to browser", 100);
    let to_mac = numbered("to mac", 100);
    for n in 0..100 {
        let data = |p: &str| Message::text(json!({"type": "data", "payload": p}).to_string());
        mac.feed(data(&to_browser[n])).await.unwrap();
        browser.feed(data(&to_mac[n])).await.unwrap();
    }
    let a = nodes.remove(0);
    let a_ready = a.url("/ready");
    let shutdown = tokio::spawn(a.shut_down());
    mac.flush().await.unwrap();
    browser.flush().await.unwrap();
    let (mut mac_got, mac_close) = until_closed(&mut mac).await;
    let (mut browser_got, browser_close) = until_closed(&mut browser).await;
    assert_eq!(
        mac_close,
        Some(1001),
        "the mac is told the relay is going away"
    );
    assert_eq!(
        browser_close,
        Some(1001),
        "so is the browser, through its node"
    );
    // Meanwhile the leaving node tells load balancers it is not ready (or is gone).
    if let Ok(ready) = reqwest::get(&a_ready).await {
        assert_eq!(ready.status(), 503, "a leaving node is not ready");
    }
    shutdown.await.unwrap();

    // Each resumes on a node of its own (the mac where the browser was not): everything
    // sent reaches the other side once, in order, wherever it was held.
    let mut mac = resume_mac(&nodes[1], &client_id).await;
    let mut browser = resume_browser(&nodes[0], &session).await;
    data_until(&mut mac, &mut mac_got, 100).await;
    assert_eq!(
        recv(&mut mac).await["type"],
        "joined",
        "the browser is back too"
    );
    data_until(&mut browser, &mut browser_got, 100).await;
    assert_eq!(mac_got, to_mac, "the mac got every message once, in order");
    assert_eq!(
        browser_got, to_browser,
        "the browser got every message once, in order"
    );
    exchange(&mut mac, &mut browser, "after", 1).await;
}

/// Both sides of a pairing tunnelled through one node to the pairing's home: when that node
/// shuts down, both are closed with 1001 at once — moved, not lost — and the home keeps the
/// pairing for both (a pairing whose sides are both *lost* ends; these come back).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_leaving_with_both_sides_of_a_pairing_leaves_it_waiting_at_its_home() {
    let Some((_db, mut nodes)) = cluster_of(3, quick).await else {
        return;
    };
    // The pairing's home is A (the mac's code); the browser joins through B.
    let (mac, mut browser, client_id, session) = pair_across(&nodes[0], &nodes[1]).await;
    // The mac loses its link and comes back through B too.
    drop(mac);
    let mut mac = resume_mac(&nodes[1], &client_id).await;
    assert_eq!(recv(&mut browser).await["type"], "joined");
    exchange(&mut mac, &mut browser, "before", 1).await;

    // B shuts down: both sides are closed with 1001 at the same moment.
    let b = nodes.remove(1);
    let shutdown = tokio::spawn(b.shut_down());
    let (_, mac_close) = until_closed(&mut mac).await;
    let (_, browser_close) = until_closed(&mut browser).await;
    assert_eq!((mac_close, browser_close), (Some(1001), Some(1001)));
    shutdown.await.unwrap();

    // Both resume elsewhere: the pairing waited for them at A.
    let mut mac = resume_mac(&nodes[1], &client_id).await;
    let mut browser = resume_browser(&nodes[0], &session).await;
    assert_eq!(
        recv(&mut mac).await["type"],
        "joined",
        "the browser is back"
    );
    exchange(&mut mac, &mut browser, "after", 1).await;
}

/// A plain agent (the existing Mac app) tunnelled through a node that shuts down: closed
/// with 1001, it is sure to come back, so its machine stays online at the user's home, its
/// session goes on, the client attached to it stays attached and what the client types
/// meanwhile is held; the agent reconnects on another node, reports its sessions, hears
/// `attach` for the client again, then gets what was typed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_agent_whose_node_restarts_keeps_its_sessions_and_their_clients() {
    let Some((_db, mut nodes)) = cluster_of(3, quick).await else {
        return;
    };
    // A is the user's home (its client authenticated there first); the agent is on B.
    let ada = owner(&nodes[0], "ada@example.com").await;
    let mut client = client(&nodes[0], &ada.access).await;
    let mut agent = account::agent(&nodes[1], &ada, &["s1"]).await;
    attach(&mut client, &ada, "s1").await;
    assert_eq!(recv_type(&mut agent, "attach").await["sessionId"], "s1");
    let data = |text: &str| json!({"type": "data", "sessionId": "s1", "data": text});
    send(&mut agent, data("out before")).await;
    assert_eq!(recv_type(&mut client, "data").await["data"], "out before");

    // B shuts down; the client types while the agent is away.
    let b = nodes.remove(1);
    let shutdown = tokio::spawn(b.shut_down());
    let (_, agent_close) = until_closed(&mut agent).await;
    assert_eq!(agent_close, Some(1001));
    shutdown.await.unwrap();
    send(&mut client, data("typed while away")).await;

    // The agent comes back on C: the client's attachment is linked to it again, and the
    // input held for it follows.
    let mut agent = account::agent(&nodes[1], &ada, &["s1"]).await;
    assert_eq!(recv_type(&mut agent, "attach").await["sessionId"], "s1");
    assert_eq!(
        recv_type(&mut agent, "data").await["data"],
        "typed while away"
    );
    send(&mut agent, data("out after")).await;
    let mut heard = Vec::new();
    loop {
        let msg = recv(&mut client).await;
        if msg["type"] == "data" {
            assert_eq!(msg["data"], "out after");
            break;
        }
        heard.push(msg);
    }
    assert!(
        heard
            .iter()
            .all(|m| m["type"] != "session_ended" && m["online"] != false),
        "the client saw its session or machine go: {heard:?}"
    );
}

/// The node a leaving node hands its pairing to died a moment ago (not noticed yet):
/// nothing answers the hand-over, and the leaving node still leaves within its bound — the
/// closing handshakes (`CLOSE_LINGER`, 2 s: these sides do not answer), then
/// `cluster.redis_timeout_ms` × 2 (1 s here) for the answers; unbounded, it would hang.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hand_over_nobody_answers_does_not_hold_a_leaving_node_up() {
    let Some((_db, mut nodes)) = cluster_of(2, quick).await else {
        return;
    };
    let (_mac, _browser, _, _) = pair_across(&nodes[0], &nodes[0]).await;
    drop(nodes.remove(1)); // killed: it stops without a word
    let leaving = nodes.remove(0);
    let started = std::time::Instant::now();
    leaving.shut_down().await;
    let took = started.elapsed();
    eprintln!("left in {took:?}");
    assert!(
        took < Duration::from_secs(8),
        "the unanswered hand-over held the node up for {took:?}"
    );
}

/// Three nodes of one cluster behind two round-robin balancers (the second starts one
/// node further on), to restart one by one.
struct Rolling {
    settings: Settings,
    nodes: Vec<TestNode>,
}

impl Rolling {
    async fn start(db: &TestDb, redis: &str) -> (Self, Proxy, Proxy) {
        let mut settings = node_settings(db, redis, &prefix());
        quick(&mut settings);
        let nodes = (0..3).map(|_| TestNode::start(settings.clone())).collect();
        let rolling = Self { settings, nodes };
        all_know_each_other(&rolling.nodes).await;
        let first = Proxy::round_robin(rolling.ports()).await;
        let mut rotated = rolling.ports();
        rotated.rotate_left(1);
        let second = Proxy::round_robin(rotated).await;
        (rolling, first, second)
    }

    fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|n| n.port).collect()
    }

    /// Every node in turn, 1.5 s apart: taken out of the balancers, shut down (SIGTERM),
    /// replaced by a fresh one.
    async fn restart_each(&mut self, balancers: [&Proxy; 2]) {
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            let old = self.nodes.remove(0);
            for balancer in balancers {
                balancer.set_targets(self.ports());
            }
            old.shut_down().await;
            self.nodes.push(TestNode::start(self.settings.clone()));
            all_know_each_other(&self.nodes).await;
            for balancer in balancers {
                balancer.set_targets(self.ports());
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarting_every_node_one_by_one_under_traffic_keeps_the_pairing_whole() {
    let (Some(redis), Some(db)) = (redis_url(), TestDb::postgres()) else {
        return;
    };
    let (mut rolling, mac_proxy, browser_proxy) = Rolling::start(&db, &redis).await;
    // Both sides send a message every 20 ms each way while the nodes restart.
    let restarts = rolling.restart_each([&mac_proxy, &browser_proxy]);
    let (mac_resumes, browser_resumes) =
        exchange_through(800, restarts, &mac_proxy, &browser_proxy).await;
    eprintln!("resumed: mac {mac_resumes}, browser {browser_resumes}");
    assert!(
        mac_resumes >= 1 && browser_resumes >= 1,
        "the restarts were resumed from"
    );
}

/// A user's lossless agent and client, each through its own round-robin balancer, on a
/// 3-node cluster whose nodes are all restarted one by one (SIGTERM) while both send a
/// message every 20 ms: each node that leaves while it is the user's home hands the user
/// over; every keystroke and every output arrives once, in order, and each end resumes
/// its own state (the client's `attached` says `resumed`, the agent's streams go on from
/// where they were), wherever it reconnects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarting_every_node_one_by_one_keeps_a_lossless_account_session_whole() {
    let (Some(redis), Some(db)) = (redis_url(), TestDb::postgres()) else {
        return;
    };
    let (mut rolling, agent_proxy, client_proxy) = Rolling::start(&db, &redis).await;
    // The REST calls of the set-up go to the first node: they are made before it restarts.
    let rest = rolling.nodes[0].port;
    let restarts = rolling.restart_each([&agent_proxy, &client_proxy]);
    let (agent_resumes, client_resumes) = common::lossless_account::exchange_through(
        &rest,
        500,
        restarts,
        &agent_proxy,
        &client_proxy,
    )
    .await;
    eprintln!("resumed: agent {agent_resumes}, client {client_resumes}");
    assert!(
        agent_resumes >= 1 && client_resumes >= 1,
        "the restarts were resumed from"
    );
}
