//! Agents and clients (PROTOCOL.md §3) over real sockets, on SQLite and PostgreSQL.

#[macro_use]
mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::account::*;
use common::*;
use futures_util::StreamExt;
use reqwest::{Client, StatusCode};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

on_both_backends!(
    an_agent_registers_reports_sessions_and_shows_online,
    a_bad_machine_token_is_refused_and_closed,
    messages_before_authentication_get_not_authenticated,
    client_auth_answers_authenticated_invalid_token_or_user_not_found,
    two_clients_attached_to_one_session_both_get_its_output_in_order,
    client_input_and_resize_reach_the_agent_of_an_attached_session,
    detach_and_disconnect_stop_delivery_and_tell_the_agent,
    create_session_starts_one_and_the_client_hears_when_it_runs,
    an_ended_session_and_a_departed_agent_are_reported_to_clients,
    another_user_can_neither_see_nor_reach_a_machine,
    a_second_agent_with_the_same_token_replaces_the_first,
    a_replacement_agent_keeps_clients_attached_to_the_sessions_it_still_runs,
    an_over_long_session_id_in_detach_is_not_attached,
    deleting_a_machine_drops_its_agent_and_voids_its_token,
    unauthenticated_sockets_are_closed_after_the_deadline,
    a_slow_client_is_dropped_while_a_fast_one_keeps_receiving,
    bad_json_and_bad_messages_get_distinct_codes,
);

async fn an_agent_registers_reports_sessions_and_shows_online(db: TestDb) {
    let server = TestServer::start_on(&db, settings());
    let ada = owner(&server, "ada@example.com").await;
    let before = machines_of(&server, &ada.access).await[0].clone();
    assert_eq!(before["online"], false);

    let _agent = agent(&server, &ada, &["s1", "s2"]).await;
    let machine = eventually_machine(&server, &ada, |m| m["sessionCount"] == 2).await;
    assert_eq!(machine["online"], true);

    let mut web = client(&server, &ada.access).await;
    send(&mut web, json!({"type": "list_machines"})).await;
    let machines = recv_type(&mut web, "machines").await;
    assert_eq!(machines["machines"][0]["id"], ada.machine_id.as_str());
    assert_eq!(machines["machines"][0]["online"], true);
    send(
        &mut web,
        json!({"type": "list_sessions", "machineId": ada.machine_id}),
    )
    .await;
    let sessions = recv_type(&mut web, "sessions").await;
    assert_eq!(sessions["machineId"], ada.machine_id.as_str());
    assert_eq!(sessions["sessions"], json!([session("s1"), session("s2")]));
}

async fn a_bad_machine_token_is_refused_and_closed(db: TestDb) {
    let server = TestServer::start_on(&db, settings());
    let mut ws = server.connect("/ws/agent").await;
    send(&mut ws, json!({"type": "register", "token": "hmt_forged"})).await;
    let msg = recv(&mut ws).await;
    assert_eq!(msg["type"], "registered");
    assert_eq!(msg["success"], false);
    assert!(msg["error"].is_string());
    assert!(msg.get("machineId").is_none());
    assert_eq!(expect_closed(&mut ws, WAIT).await, Some(1008));
}

async fn messages_before_authentication_get_not_authenticated(db: TestDb) {
    let server = TestServer::start_on(&db, settings());
    let mut agent = server.connect("/ws/agent").await;
    send(&mut agent, json!({"type": "sessions", "sessions": []})).await;
    expect_error(&mut agent, "NOT_AUTHENTICATED").await;
    send(
        &mut agent,
        json!({"type": "data", "sessionId": "s", "data": "x"}),
    )
    .await;
    expect_error(&mut agent, "NOT_AUTHENTICATED").await;

    let mut web = server.connect("/ws/client").await;
    for msg in [
        json!({"type": "list_machines"}),
        json!({"type": "attach", "machineId": "m", "sessionId": "s"}),
        json!({"type": "data", "sessionId": "s", "data": "x"}),
    ] {
        send(&mut web, msg).await;
        expect_error(&mut web, "NOT_AUTHENTICATED").await;
    }
    assert_usable(&mut web).await;
}

async fn client_auth_answers_authenticated_invalid_token_or_user_not_found(db: TestDb) {
    let server = TestServer::start_on(&db, settings());
    let ada = owner(&server, "ada@example.com").await;
    let mut web = server.connect("/ws/client").await;
    send(&mut web, json!({"type": "auth", "token": "garbage"})).await;
    expect_error(&mut web, "INVALID_TOKEN").await;

    // Well signed, but for a user that does not exist.
    let tokens = hermit_relay::auth::token::AccessTokens::load_or_create(
        &db.key_path(),
        Duration::from_secs(60),
    )
    .unwrap();
    let ghost = tokens.issue(&uuid::Uuid::new_v4().to_string());
    send(&mut web, json!({"type": "auth", "token": ghost})).await;
    expect_error(&mut web, "USER_NOT_FOUND").await;

    send(&mut web, json!({"type": "auth", "token": ada.access})).await;
    let msg = recv(&mut web).await;
    assert_eq!(msg["type"], "authenticated");
    assert_eq!(msg["user"]["email"], "ada@example.com");
    assert!(msg["user"]["id"].is_string());
}

async fn two_clients_attached_to_one_session_both_get_its_output_in_order(db: TestDb) {
    let server = TestServer::start_on(&db, settings());
    let ada = owner(&server, "ada@example.com").await;
    let mut mac = agent(&server, &ada, &["s1"]).await;
    let mut first = client(&server, &ada.access).await;
    let mut second = client(&server, &ada.access).await;
    attach(&mut first, &ada, "s1").await;
    let att1 = recv_type(&mut mac, "attach").await;
    attach(&mut second, &ada, "s1").await;
    let att2 = recv_type(&mut mac, "attach").await;
    assert_eq!(att1["sessionId"], "s1");
    assert_ne!(att1["clientId"], att2["clientId"]);

    for i in 0..200 {
        send(
            &mut mac,
            json!({"type": "data", "sessionId": "s1", "data": format!("out {i}\u{1b}[0m")}),
        )
        .await;
    }
    for web in [&mut first, &mut second] {
        for i in 0..200 {
            let msg = recv_type(web, "data").await;
            assert_eq!(
                msg,
                json!({"type": "data", "sessionId": "s1", "data": format!("out {i}\u{1b}[0m")})
            );
        }
    }
    send(
        &mut first,
        json!({"type": "list_sessions", "machineId": ada.machine_id}),
    )
    .await;
    let sessions = recv_type(&mut first, "sessions").await;
    assert_eq!(sessions["sessions"][0]["attachedClients"], 2);
}

async fn client_input_and_resize_reach_the_agent_of_an_attached_session(db: TestDb) {
    let server = TestServer::start_on(&db, settings());
    let ada = owner(&server, "ada@example.com").await;
    let mut mac = agent(&server, &ada, &["s1"]).await;
    let mut web = client(&server, &ada.access).await;
    send(
        &mut web,
        json!({"type": "data", "sessionId": "s1", "data": "ls\r"}),
    )
    .await;
    expect_error(&mut web, "NOT_ATTACHED").await;
    attach(&mut web, &ada, "s1").await;
    send(
        &mut web,
        json!({"type": "data", "sessionId": "s1", "data": "ls\r"}),
    )
    .await;
    send(
        &mut web,
        json!({"type": "resize", "sessionId": "s1", "cols": 120, "rows": 40}),
    )
    .await;
    recv_type(&mut mac, "attach").await;
    assert_eq!(
        recv_type(&mut mac, "data").await,
        json!({"type": "data", "sessionId": "s1", "data": "ls\r"})
    );
    assert_eq!(
        recv_type(&mut mac, "resize").await,
        json!({"type": "resize", "sessionId": "s1", "cols": 120, "rows": 40})
    );
}

async fn detach_and_disconnect_stop_delivery_and_tell_the_agent(db: TestDb) {
    let server = TestServer::start_on(&db, settings());
    let ada = owner(&server, "ada@example.com").await;
    let mut mac = agent(&server, &ada, &["s1"]).await;
    let mut web = client(&server, &ada.access).await;
    attach(&mut web, &ada, "s1").await;
    let attached = recv_type(&mut mac, "attach").await;

    send(&mut web, json!({"type": "detach", "sessionId": "s1"})).await;
    assert_eq!(
        recv_type(&mut web, "detached").await,
        json!({"type": "detached", "sessionId": "s1"})
    );
    let detached = recv_type(&mut mac, "detach").await;
    assert_eq!(detached["clientId"], attached["clientId"]);
    send(
        &mut mac,
        json!({"type": "data", "sessionId": "s1", "data": "after detach"}),
    )
    .await;
    send(
        &mut web,
        json!({"type": "data", "sessionId": "s1", "data": "typing"}),
    )
    .await;
    expect_error(&mut web, "NOT_ATTACHED").await;
    send(&mut web, json!({"type": "detach", "sessionId": "s1"})).await;
    expect_error(&mut web, "NOT_ATTACHED").await;

    // Attach again, then disconnect: the agent is told.
    attach(&mut web, &ada, "s1").await;
    let again = recv_type(&mut mac, "attach").await;
    drop(web);
    let gone = recv_type(&mut mac, "detach").await;
    assert_eq!(gone["clientId"], again["clientId"]);
}

async fn create_session_starts_one_and_the_client_hears_when_it_runs(db: TestDb) {
    let server = TestServer::start_on(&db, settings());
    let ada = owner(&server, "ada@example.com").await;
    let mut mac = agent(&server, &ada, &[]).await;
    let mut web = client(&server, &ada.access).await;
    send(
        &mut web,
        json!({"type": "create_session", "machineId": ada.machine_id, "name": "build", "command": "make"}),
    )
    .await;
    assert_eq!(
        recv_type(&mut mac, "start_session").await,
        json!({"type": "start_session", "name": "build", "command": "make"})
    );
    send(
        &mut mac,
        json!({"type": "session_started", "session": session("new")}),
    )
    .await;
    let started = recv_type(&mut web, "session_started").await;
    assert_eq!(
        started,
        json!({"type": "session_started", "machineId": ada.machine_id, "session": session("new")})
    );
    attach(&mut web, &ada, "new").await;
}

async fn an_ended_session_and_a_departed_agent_are_reported_to_clients(db: TestDb) {
    let server = TestServer::start_on(&db, settings());
    let ada = owner(&server, "ada@example.com").await;
    let mut mac = agent(&server, &ada, &["s1", "s2"]).await;
    let mut web = client(&server, &ada.access).await;
    attach(&mut web, &ada, "s1").await;
    attach(&mut web, &ada, "s2").await;

    send(
        &mut mac,
        json!({"type": "session_ended", "sessionId": "s1"}),
    )
    .await;
    assert_eq!(
        recv_type(&mut web, "session_ended").await,
        json!({"type": "session_ended", "machineId": ada.machine_id, "sessionId": "s1"})
    );
    send(
        &mut web,
        json!({"type": "data", "sessionId": "s1", "data": "x"}),
    )
    .await;
    expect_error(&mut web, "NOT_ATTACHED").await;

    let seen_before = machines_of(&server, &ada.access).await[0]["lastSeen"].clone();
    tokio::time::sleep(Duration::from_millis(20)).await;
    mac.close(None).await.unwrap();
    assert_eq!(
        recv_type(&mut web, "session_ended").await["sessionId"],
        "s2"
    );
    assert_eq!(
        recv_type(&mut web, "machine_status").await,
        json!({"type": "machine_status", "machineId": ada.machine_id, "online": false})
    );
    let machine = eventually_machine(&server, &ada, |m| {
        m["online"] == false && m["lastSeen"] != seen_before
    })
    .await;
    assert_eq!(machine["sessionCount"], 0);
}

async fn another_user_can_neither_see_nor_reach_a_machine(db: TestDb) {
    let server = TestServer::start_on(&db, settings());
    let ada = owner(&server, "ada@example.com").await;
    let bob = owner(&server, "bob@example.com").await;
    let mut mac = agent(&server, &ada, &["s1"]).await;
    let mut ada_web = client(&server, &ada.access).await;
    attach(&mut ada_web, &ada, "s1").await;
    let mut bob_web = client(&server, &bob.access).await;

    send(&mut bob_web, json!({"type": "list_machines"})).await;
    let listed = recv_type(&mut bob_web, "machines").await;
    assert_eq!(listed["machines"].as_array().unwrap().len(), 1);
    assert_eq!(listed["machines"][0]["id"], bob.machine_id.as_str());

    for msg in [
        json!({"type": "list_sessions", "machineId": ada.machine_id}),
        json!({"type": "attach", "machineId": ada.machine_id, "sessionId": "s1"}),
        json!({"type": "create_session", "machineId": ada.machine_id, "name": "x", "command": "rm -rf /"}),
    ] {
        send(&mut bob_web, msg).await;
        let text = expect_error(&mut bob_web, "MACHINE_NOT_FOUND").await;
        // The same answer as for a machine that does not exist.
        send(
            &mut bob_web,
            json!({"type": "list_sessions", "machineId": "00000000-0000-4000-8000-000000000000"}),
        )
        .await;
        assert_eq!(expect_error(&mut bob_web, "MACHINE_NOT_FOUND").await, text);
    }
    send(
        &mut bob_web,
        json!({"type": "data", "sessionId": "s1", "data": "evil"}),
    )
    .await;
    expect_error(&mut bob_web, "NOT_ATTACHED").await;
    send(
        &mut bob_web,
        json!({"type": "resize", "sessionId": "s1", "cols": 1, "rows": 1}),
    )
    .await;
    expect_error(&mut bob_web, "NOT_ATTACHED").await;

    send(
        &mut mac,
        json!({"type": "data", "sessionId": "s1", "data": "ada's secret"}),
    )
    .await;
    assert_eq!(
        recv_type(&mut ada_web, "data").await["data"],
        "ada's secret"
    );
    // Bob hears nothing of it (only heartbeats could arrive).
    expect_silence(&mut bob_web, Duration::from_millis(500)).await;
    // And the agent never got a start_session or attach from Bob.
    let next = recv(&mut mac).await;
    assert_eq!(next["type"], "attach", "{next}");
    expect_silence(&mut mac, Duration::from_millis(300)).await;
}

async fn a_second_agent_with_the_same_token_replaces_the_first(db: TestDb) {
    let server = TestServer::start_on(&db, settings());
    let ada = owner(&server, "ada@example.com").await;
    let mut old = agent(&server, &ada, &["s1"]).await;
    let mut web = client(&server, &ada.access).await;
    attach(&mut web, &ada, "s1").await;

    let mut new = agent(&server, &ada, &["s9"]).await;
    assert_eq!(expect_closed(&mut old, WAIT).await, Some(1000));
    assert_eq!(
        recv_type(&mut web, "session_ended").await["sessionId"],
        "s1"
    );
    eventually_machine(&server, &ada, |m| {
        m["online"] == true && m["sessionCount"] == 1
    })
    .await;
    attach(&mut web, &ada, "s9").await;
    send(
        &mut new,
        json!({"type": "data", "sessionId": "s9", "data": "from the new agent"}),
    )
    .await;
    assert_eq!(
        recv_type(&mut web, "data").await["data"],
        "from the new agent"
    );
}

async fn a_replacement_agent_keeps_clients_attached_to_the_sessions_it_still_runs(db: TestDb) {
    let server = TestServer::start_on(&db, settings());
    let ada = owner(&server, "ada@example.com").await;
    let mut old = agent(&server, &ada, &["s1", "s2"]).await;
    let mut web = client(&server, &ada.access).await;
    attach(&mut web, &ada, "s1").await;
    attach(&mut web, &ada, "s2").await;

    // The Mac app reconnects (its old socket only looked alive) and still runs s1 only.
    let mut new = server.connect("/ws/agent").await;
    send(
        &mut new,
        json!({"type": "register", "token": ada.machine_token}),
    )
    .await;
    assert_eq!(recv(&mut new).await["success"], true);
    assert_eq!(recv(&mut new).await["type"], "list_sessions");
    assert_eq!(expect_closed(&mut old, WAIT).await, Some(1000));
    send(
        &mut new,
        json!({"type": "sessions", "sessions": [session("s1")]}),
    )
    .await;
    // The new agent hears `attach` for the client that stays attached to s1...
    let attach = recv_type(&mut new, "attach").await;
    assert_eq!(attach["sessionId"], "s1");
    // ...the client hears that s2 ended, and nothing about s1.
    let ended = recv_type(&mut web, "session_ended").await;
    assert_eq!(ended["sessionId"], "s2");

    // Output and input keep flowing on s1 without a re-attach.
    send(
        &mut new,
        json!({"type": "data", "sessionId": "s1", "data": "still here"}),
    )
    .await;
    assert_eq!(
        recv_type(&mut web, "data").await,
        json!({"type": "data", "sessionId": "s1", "data": "still here"})
    );
    send(
        &mut web,
        json!({"type": "data", "sessionId": "s1", "data": "ls\r"}),
    )
    .await;
    assert_eq!(
        recv_type(&mut new, "data").await,
        json!({"type": "data", "sessionId": "s1", "data": "ls\r"})
    );
    send(&mut web, json!({"type": "detach", "sessionId": "s2"})).await;
    assert_eq!(
        recv(&mut web).await["code"],
        "NOT_ATTACHED",
        "s2 ended, so the client is no longer attached to it"
    );
}

async fn an_over_long_session_id_in_detach_is_not_attached(db: TestDb) {
    let server = TestServer::start_on(&db, settings());
    let ada = owner(&server, "ada@example.com").await;
    let mut web = client(&server, &ada.access).await;
    let long = "s".repeat(500);
    for message in [
        json!({"type": "detach", "sessionId": long}),
        json!({"type": "data", "sessionId": long, "data": "x"}),
        json!({"type": "resize", "sessionId": long, "cols": 80, "rows": 24}),
    ] {
        send(&mut web, message).await;
        expect_error(&mut web, "NOT_ATTACHED").await;
    }
    send(
        &mut web,
        json!({"type": "list_sessions", "machineId": long}),
    )
    .await;
    expect_error(&mut web, "MACHINE_NOT_FOUND").await;
}

async fn deleting_a_machine_drops_its_agent_and_voids_its_token(db: TestDb) {
    let server = TestServer::start_on(&db, settings());
    let ada = owner(&server, "ada@example.com").await;
    let mut mac = agent(&server, &ada, &[]).await;
    let response = Client::new()
        .delete(server.url(&format!("/api/machines/{}", ada.machine_id)))
        .bearer_auth(&ada.access)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert_eq!(expect_closed(&mut mac, WAIT).await, Some(1008));

    let mut again = server.connect("/ws/agent").await;
    send(
        &mut again,
        json!({"type": "register", "token": ada.machine_token}),
    )
    .await;
    let msg = recv(&mut again).await;
    assert_eq!(msg["success"], false);
}

async fn unauthenticated_sockets_are_closed_after_the_deadline(db: TestDb) {
    let mut s = settings();
    s.auth.deadline_secs = 1;
    let server = TestServer::start_on(&db, s);
    let mut agent = server.connect("/ws/agent").await;
    let mut web = server.connect("/ws/client").await;
    assert_eq!(expect_closed(&mut agent, WAIT).await, Some(1000));
    assert_eq!(expect_closed(&mut web, WAIT).await, Some(1000));
}

async fn a_slow_client_is_dropped_while_a_fast_one_keeps_receiving(db: TestDb) {
    let mut s = settings();
    s.limits.max_outbound_bytes = 1024 * 1024;
    s.limits.max_message_bytes = 64 * 1024;
    let server = TestServer::start_on(&db, s);
    let ada = owner(&server, "ada@example.com").await;
    let mut mac = agent(&server, &ada, &["s1"]).await;
    let mut slow = client(&server, &ada.access).await;
    let mut fast = client(&server, &ada.access).await;
    attach(&mut slow, &ada, "s1").await;
    attach(&mut fast, &ada, "s1").await;
    recv_type(&mut mac, "attach").await;
    recv_type(&mut mac, "attach").await;

    // `slow` never reads from here on; `fast` reads everything, concurrently. The agent
    // writes like a busy terminal: bursts of 64 KiB, 1 ms apart — a rate a reading client
    // keeps up with, while the one that reads nothing falls 1 MiB behind and is dropped.
    let chunk = "y".repeat(8 * 1024);
    let total = 2400; // 19 MiB: past the kernel's loopback buffers (~10 MiB) and the outbox bound.
    let seen = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&seen);
    let reader = tokio::spawn(async move {
        let mut seen = 0;
        while seen < total {
            counter.store(seen, Ordering::Relaxed);
            match fast.next().await {
                Some(Ok(Message::Text(text))) => {
                    let msg: Value = serde_json::from_str(&text).unwrap();
                    if msg["type"] == "data" {
                        seen += 1;
                    }
                }
                Some(Ok(_)) => {}
                other => panic!("the fast client lost its connection: {other:?}"),
            }
        }
        seen
    });
    let (mut mac_tx, mut mac_rx) = mac.split();
    let drain = tokio::spawn(async move { while mac_rx.next().await.is_some() {} });
    use futures_util::SinkExt;
    let msg = json!({"type": "data", "sessionId": "s1", "data": chunk}).to_string();
    for i in 0..total {
        mac_tx.send(Message::text(msg.clone())).await.unwrap();
        if i % 8 == 7 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    let received = tokio::time::timeout(Duration::from_secs(60), reader)
        .await
        .unwrap_or_else(|_| {
            panic!(
                "the fast client received only {} of {total} messages in 60 s",
                seen.load(Ordering::Relaxed)
            )
        })
        .unwrap();
    assert_eq!(received, total);
    drain.abort();
    // The slow client's socket was closed by the relay.
    let ended = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match slow.next().await {
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return,
                Some(Ok(_)) => continue,
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the slow client was not dropped");
}

async fn bad_json_and_bad_messages_get_distinct_codes(db: TestDb) {
    let server = TestServer::start_on(&db, settings());
    let ada = owner(&server, "ada@example.com").await;
    let mut web = client(&server, &ada.access).await;
    web.send_text("{nope").await;
    expect_error(&mut web, "INVALID_JSON").await;
    web.send_text(r#"{"type":"teleport"}"#).await;
    expect_error(&mut web, "INVALID_MESSAGE").await;
    web.send_text(r#"{"type":"attach","machineId":1}"#).await;
    expect_error(&mut web, "INVALID_MESSAGE").await;
    assert_usable(&mut web).await;

    let mut mac = server.connect("/ws/agent").await;
    mac.send_text("[]").await;
    expect_error(&mut mac, "INVALID_MESSAGE").await;
    mac.send_text("{").await;
    expect_error(&mut mac, "INVALID_JSON").await;
}

#[tokio::test]
async fn the_relay_pings_account_sockets_in_json_too() {
    let mut s = settings();
    s.heartbeat.interval_secs = 1;
    let server = TestServer::start(s);
    let mut web = server.connect("/ws/client").await;
    let ping = tokio::time::timeout(WAIT, async {
        loop {
            if let Some(Ok(Message::Text(text))) = web.next().await {
                return serde_json::from_str::<Value>(&text).unwrap();
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(ping["type"], "ping");
    assert!(ping["ts"].is_u64());
    send(&mut web, json!({"type": "pong", "ts": ping["ts"]})).await;
    assert_usable(&mut web).await;
}

trait SendText {
    async fn send_text(&mut self, text: &str);
}

impl SendText for Ws {
    async fn send_text(&mut self, text: &str) {
        use futures_util::SinkExt;
        self.send(Message::text(text)).await.unwrap();
    }
}
