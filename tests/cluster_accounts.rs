//! Accounts across nodes (issue 11): an agent on one node and its user's clients on others
//! see exactly what they would on one node. Real nodes, Redis and PostgreSQL.

mod common;

use std::time::{Duration, Instant};

use common::account::*;
use common::cluster::*;
use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

/// Admin changes (a machine deleted) are picked up within a few hundred milliseconds.
fn quick_watch(s: &mut hermit_relay::config::Settings) {
    s.admin.poll_interval_ms = 200;
}

/// Waits until `ws` is closed, with a close frame or cut; returns the close code, if any.
async fn closed(ws: &mut Ws, within: Duration) -> Option<u16> {
    tokio::time::timeout(within, async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(frame))) => return frame.map(|f| u16::from(f.code)),
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return None,
            }
        }
    })
    .await
    .expect("the connection is closed in time")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_and_its_clients_on_other_nodes_work_as_on_one_node() {
    let Some((_db, nodes)) = cluster_of(3, |_| {}).await else {
        return;
    };
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
    let ada = owner(b, "ada@example.com").await;
    let mut mac = agent(a, &ada, &["s1", "s2"]).await;
    let mut first = client(b, &ada.access).await;
    let mut second = client(c, &ada.access).await;

    // The list, on a client's socket and over REST, is the cluster's.
    send(&mut first, json!({"type": "list_machines"})).await;
    let machines = recv_type(&mut first, "machines").await;
    assert_eq!(machines["machines"][0]["online"], true, "{machines}");
    assert_eq!(machines["machines"][0]["sessionCount"], 2, "{machines}");
    for node in [a, b, c] {
        let listed = machines_of(node, &ada.access).await;
        assert_eq!(listed[0]["online"], true, "{listed}");
        assert_eq!(listed[0]["sessionCount"], 2, "{listed}");
    }
    send(
        &mut second,
        json!({"type": "list_sessions", "machineId": ada.machine_id}),
    )
    .await;
    let sessions = recv_type(&mut second, "sessions").await;
    assert_eq!(
        sessions["sessions"].as_array().unwrap().len(),
        2,
        "{sessions}"
    );

    // Both attach; the agent hears each attach first.
    attach(&mut first, &ada, "s1").await;
    assert_eq!(recv_type(&mut mac, "attach").await["sessionId"], "s1");
    attach(&mut second, &ada, "s1").await;
    assert_eq!(recv_type(&mut mac, "attach").await["sessionId"], "s1");

    // Output reaches both, in order; input and resizes reach the agent.
    for n in 0..50 {
        let data = json!({"type": "data", "sessionId": "s1", "data": format!("out {n}")});
        send(&mut mac, data).await;
    }
    for web in [&mut first, &mut second] {
        for n in 0..50 {
            let got = recv_type(web, "data").await;
            assert_eq!(
                got,
                json!({"type": "data", "sessionId": "s1", "data": format!("out {n}")})
            );
        }
    }
    send(
        &mut first,
        json!({"type": "data", "sessionId": "s1", "data": "ls\r"}),
    )
    .await;
    let typed = recv_type(&mut mac, "data").await;
    assert_eq!(
        typed,
        json!({"type": "data", "sessionId": "s1", "data": "ls\r"})
    );
    let resize = json!({"type": "resize", "sessionId": "s1", "cols": 120, "rows": 40});
    send(&mut second, resize.clone()).await;
    assert_eq!(recv_type(&mut mac, "resize").await, resize);

    // A session created from one client is announced to both.
    send(
        &mut second,
        json!({"type": "create_session", "machineId": ada.machine_id, "name": "build", "command": "make"}),
    )
    .await;
    let start = recv_type(&mut mac, "start_session").await;
    assert_eq!(
        start,
        json!({"type": "start_session", "name": "build", "command": "make"})
    );
    send(
        &mut mac,
        json!({"type": "session_started", "session": session("new")}),
    )
    .await;
    for web in [&mut first, &mut second] {
        let started = recv_type(web, "session_started").await;
        assert_eq!(started["session"]["id"], "new", "{started}");
    }
    send(
        &mut mac,
        json!({"type": "session_ended", "sessionId": "new"}),
    )
    .await;
    for web in [&mut first, &mut second] {
        let ended = recv_type(web, "session_ended").await;
        assert_eq!(ended["sessionId"], "new", "{ended}");
    }

    // Detach is answered, and the agent told.
    send(&mut first, json!({"type": "detach", "sessionId": "s1"})).await;
    assert_eq!(recv_type(&mut first, "detached").await["sessionId"], "s1");
    assert_eq!(recv_type(&mut mac, "detach").await["sessionId"], "s1");

    // The agent leaves: every client hears its machine is offline.
    mac.close(None).await.unwrap();
    for web in [&mut first, &mut second] {
        let status = recv_type(web, "machine_status").await;
        assert_eq!(status["online"], false, "{status}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ownership_is_enforced_across_nodes() {
    let Some((_db, nodes)) = cluster_of(2, |_| {}).await else {
        return;
    };
    let (a, b) = (&nodes[0], &nodes[1]);
    let ada = owner(a, "ada@example.com").await;
    let eve = owner(b, "eve@example.com").await;
    let _mac = agent(a, &ada, &["s1"]).await;
    for node in [a, b] {
        let mut web = client(node, &eve.access).await;
        send(&mut web, json!({"type": "list_machines"})).await;
        let machines = recv_type(&mut web, "machines").await;
        let ids: Vec<_> = machines["machines"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].clone())
            .collect();
        assert_eq!(ids, vec![json!(eve.machine_id)], "{machines}");
        let asks = [
            json!({"type": "list_sessions", "machineId": ada.machine_id}),
            json!({"type": "attach", "machineId": ada.machine_id, "sessionId": "s1"}),
            json!({"type": "create_session", "machineId": ada.machine_id, "name": "x", "command": "y"}),
        ];
        for ask in asks {
            send(&mut web, ask).await;
            expect_error(&mut web, "MACHINE_NOT_FOUND").await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_agent_on_another_node_replaces_the_first() {
    let Some((_db, nodes)) = cluster_of(2, |_| {}).await else {
        return;
    };
    let (a, b) = (&nodes[0], &nodes[1]);
    let ada = owner(a, "ada@example.com").await;
    let mut old = agent(a, &ada, &["s1"]).await;
    let mut web = client(a, &ada.access).await;
    attach(&mut web, &ada, "s1").await;
    assert_eq!(recv_type(&mut old, "attach").await["sessionId"], "s1");

    // The same token on the other node: the old agent is closed 1000, the client stays
    // attached, and the new agent hears of it.
    let mut new = connect_to(b, "/ws/agent").await;
    send(
        &mut new,
        json!({"type": "register", "token": ada.machine_token}),
    )
    .await;
    assert_eq!(recv(&mut new).await["success"], true);
    assert_eq!(recv(&mut new).await["type"], "list_sessions");
    assert_eq!(closed(&mut old, WAIT).await, Some(1000));
    send(
        &mut new,
        json!({"type": "sessions", "sessions": [session("s1")]}),
    )
    .await;
    assert_eq!(recv_type(&mut new, "attach").await["sessionId"], "s1");
    send(
        &mut new,
        json!({"type": "data", "sessionId": "s1", "data": "still here"}),
    )
    .await;
    let got = recv_type(&mut web, "data").await;
    assert_eq!(got["data"], "still here");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_machine_on_any_node_drops_its_agent_wherever_it_is() {
    let Some((_db, nodes)) = cluster_of(2, quick_watch).await else {
        return;
    };
    let (a, b) = (&nodes[0], &nodes[1]);
    let ada = owner(a, "ada@example.com").await;
    let mut mac = agent(a, &ada, &[]).await;
    let deleted = reqwest::Client::new()
        .delete(url_of(b, &format!("/api/machines/{}", ada.machine_id)))
        .bearer_auth(&ada.access)
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 204);
    assert_eq!(closed(&mut mac, Duration::from_secs(5)).await, Some(1008));
    // Its token is void on every node.
    for node in [a, b] {
        let mut again = connect_to(node, "/ws/agent").await;
        send(
            &mut again,
            json!({"type": "register", "token": ada.machine_token}),
        )
        .await;
        assert_eq!(recv(&mut again).await["success"], false);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_a_user_s_node_dies_its_connections_elsewhere_start_again_on_a_new_one() {
    let Some((_db, mut nodes)) = cluster_of(3, |_| {}).await else {
        return;
    };
    let ada = owner(&nodes[1], "ada@example.com").await;
    let _mac = agent(&nodes[0], &ada, &["s1"]).await; // node 0 is ada's node now
    let mut web = client(&nodes[1], &ada.access).await;
    attach(&mut web, &ada, "s1").await;

    let killed = Instant::now();
    let dead = nodes[0].cluster.node_id().clone();
    drop(nodes.remove(0)); // nodes = [1, 2]
                           // The client on node 1 is cut (as a client of a crashed relay is) within the bound.
    assert_eq!(closed(&mut web, Duration::from_secs(8)).await, None);
    assert!(killed.elapsed() < Duration::from_secs(8));
    // (A connection made before its node noticed would be tunnelled into the void and cut
    // when it does, like this one: clients reconnect. Wait until both know.)
    eventually(Duration::from_secs(8), "both nodes notice", || {
        nodes
            .iter()
            .all(|node| !node.cluster.nodes().contains(&dead))
    })
    .await;

    // The agent reconnects to node 2, the client to node 1: one of them makes its node
    // ada's node, the other is tunnelled there, and all works again.
    let mut mac = agent(&nodes[1], &ada, &["s1"]).await;
    works_again(&mut mac, &nodes[0], &ada).await;
}

/// Registers an agent for `owner` on `node`, retrying while its user's node is still
/// leaving (a connection tunnelled to a node that admits nothing is cut).
async fn agent_again(node: &TestNode, owner: &Owner, sessions: &[&str]) -> Ws {
    for _ in 0..50 {
        let mut ws = node.connect("/ws/agent").await;
        let register = json!({"type": "register", "token": owner.machine_token});
        send(&mut ws, register).await;
        if let Ok(Some(Ok(Message::Text(text)))) =
            tokio::time::timeout(Duration::from_secs(3), ws.next()).await
        {
            let msg: serde_json::Value = serde_json::from_str(&text).unwrap();
            if msg["success"] == true {
                assert_eq!(recv(&mut ws).await["type"], "list_sessions");
                let list: Vec<_> = sessions.iter().map(|id| session(id)).collect();
                send(&mut ws, json!({"type": "sessions", "sessions": list})).await;
                return ws;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("the agent could not register again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_a_user_s_node_shuts_down_its_connections_are_closed_1001_and_start_again() {
    let Some((_db, mut nodes)) = cluster_of(3, |_| {}).await else {
        return;
    };
    let ada = owner(&nodes[1], "ada@example.com").await;
    let mut mac = agent(&nodes[0], &ada, &["s1"]).await; // node 0 is ada's node now
    let mut web = client(&nodes[1], &ada.access).await;
    attach(&mut web, &ada, "s1").await;

    let leaving = tokio::spawn(nodes.remove(0).shut_down()); // nodes = [1, 2]
                                                             // Both hear the relay is going away — the client through its own node.
    assert_eq!(closed(&mut mac, WAIT).await, Some(1001));
    assert_eq!(closed(&mut web, WAIT).await, Some(1001));
    leaving.await.unwrap();

    let mut mac = agent_again(&nodes[1], &ada, &["s1"]).await;
    works_again(&mut mac, &nodes[0], &ada).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_machine_list_whose_users_node_does_not_answer_is_503_within_the_redis_timeout() {
    let Some((_db, mut nodes)) = cluster_of(2, |_| {}).await else {
        return;
    };
    let ada = owner(&nodes[1], "ada@example.com").await;
    let _mac = agent(&nodes[0], &ada, &["s1"]).await; // node 0 is ada's node now
                                                      // Killed: until its heartbeat expires (2 s here) the other node still takes it for
                                                      // alive and asks it, in vain. The answer is bounded by `cluster.redis_timeout_ms`
                                                      // (500 ms here), not left hanging.
    drop(nodes.remove(0));
    let asked = Instant::now();
    let listed = reqwest::Client::new()
        .get(url_of(&nodes[0], "/api/machines"))
        .bearer_auth(&ada.access)
        .send()
        .await
        .unwrap();
    let took = asked.elapsed();
    assert_eq!(listed.status(), 503, "{:?}", listed.text().await);
    assert!(
        took < Duration::from_millis(1500),
        "answered after {took:?}"
    );
}

/// A client of `owner` on `node` sees the machine of `mac` (an agent reporting `s1`)
/// online, attaches to `s1` and gets its output: the user's connections work again.
async fn works_again(mac: &mut Ws, node: &TestNode, owner: &Owner) {
    let mut web = client(node, &owner.access).await;
    send(&mut web, json!({"type": "list_machines"})).await;
    let machines = recv_type(&mut web, "machines").await;
    assert_eq!(machines["machines"][0]["online"], true, "{machines}");
    attach(&mut web, owner, "s1").await;
    assert_eq!(recv_type(mac, "attach").await["sessionId"], "s1");
    let output = json!({"type": "data", "sessionId": "s1", "data": "back"});
    send(mac, output).await;
    assert_eq!(recv_type(&mut web, "data").await["data"], "back");
}

/// `url` with its `host:port` replaced by `127.0.0.1:<port>`.
fn through_port(url: &str, port: u16) -> String {
    let (scheme, rest) = url.split_once("://").unwrap();
    let (credentials, rest) = rest.rsplit_once('@').map_or(("", rest), |(c, r)| (c, r));
    let path = rest.find('/').map_or("", |at| &rest[at..]);
    let at = if credentials.is_empty() { "" } else { "@" };
    format!("{scheme}://{credentials}{at}127.0.0.1:{port}{path}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_waits_for_a_virtual_connection_is_bounded_and_past_it_the_side_is_cut() {
    // A is the user's node and reaches its database through a proxy; B tunnels the user's
    // clients to A. With A's database silent, A's virtual connection of a new client waits
    // for it (up to `connect_timeout_secs`) and reads nothing meanwhile. One client floods
    // small messages (past the 1,024 a virtual connection may have waiting), another large
    // ones (past `max_outbound_bytes` waiting): each is cut well before the database would
    // have answered, instead of A holding whatever they send.
    let (Some(redis), Some(db)) = (redis_url(), TestDb::postgres()) else {
        return;
    };
    let pg_port: u16 = {
        let authority = db.url.split("://").nth(1).unwrap();
        let host_port = authority
            .rsplit('@')
            .next()
            .unwrap()
            .split('/')
            .next()
            .unwrap();
        host_port
            .rsplit(':')
            .next()
            .unwrap()
            .parse()
            .unwrap_or(5432)
    };
    let proxy = common::proxy::Proxy::start(pg_port).await;
    let prefix = prefix();
    let mut settings = node_settings(&db, &redis, &prefix);
    settings.database.url = through_port(&db.url, proxy.port);
    settings.database.connect_timeout_secs = 8;
    settings.limits.max_outbound_bytes = 128 * 1024;
    let nodes = [
        TestNode::start(settings),
        TestNode::start(node_settings(&db, &redis, &prefix)),
    ];
    all_know_each_other(&nodes).await;
    let [a, b] = &nodes;
    let ada = owner(a, "ada@example.com").await;
    // The user's first connection makes A the user's node.
    let _home = client(a, &ada.access).await;

    proxy.down();
    let started = Instant::now();
    let flood = |count: usize, pad: usize| {
        let access = ada.access.clone();
        async move {
            let mut ws = connect_to(b, "/ws/client").await;
            send(&mut ws, json!({"type": "auth", "token": access})).await;
            let ask = json!({"type": "list_machines", "pad": "x".repeat(pad)}).to_string();
            for _ in 0..count {
                // The relay may cut the socket while the flood is still being written.
                if ws.send(Message::Text(ask.clone().into())).await.is_err() {
                    break;
                }
            }
            closed(&mut ws, Duration::from_secs(6)).await
        }
    };
    // 1,100 messages of 60 B (66 KB, under the bytes); 200 of 2 KiB (400 KiB, under the count).
    let (many, large) = tokio::join!(flood(1100, 20), flood(200, 2048));
    let took = started.elapsed();
    eprintln!("both floods cut after {took:?}");
    assert_eq!(
        many, None,
        "cut, not closed: its node could not keep up with it"
    );
    assert_eq!(
        large, None,
        "cut, not closed: its node could not keep up with it"
    );
    assert!(
        took < Duration::from_secs(6),
        "cut at the bound, not when the database answered ({took:?})"
    );
    proxy.up();
}
