//! Each connection's messages are handled in the order it sent them, even when it does not
//! wait for an answer: what follows `join`, `resume`, `register`, `auth` or `attach` is
//! handled after that request's outcome.

#[macro_use]
mod common;

use std::time::Duration;

use common::account::*;
use common::*;
use futures_util::SinkExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

/// How many times each race is run: the bug this guards against lost the message in most
/// runs, so a handful of runs would catch it; twenty make a pass convincing.
const TRIES: usize = 20;

/// Sends several JSON messages in one write, as a client flushing what it queued would.
async fn send_all(ws: &mut Ws, messages: &[serde_json::Value]) {
    for message in messages {
        ws.feed(Message::text(message.to_string())).await.unwrap();
    }
    ws.flush().await.unwrap();
}

#[tokio::test]
async fn data_sent_right_after_join_reaches_the_mac() {
    let server = TestServer::start(settings());
    for i in 0..TRIES {
        let (mut mac, code) = mac(&server).await;
        let mut browser = server.connect("/browser").await;
        let data = format!("typed before joined {i}");
        send_all(
            &mut browser,
            &[
                json!({"type": "join", "code": code}),
                json!({"type": "data", "payload": data}),
            ],
        )
        .await;
        assert_eq!(recv(&mut browser).await["type"], "joined");
        assert_eq!(recv(&mut mac).await["type"], "joined");
        expect_data(&mut mac, &data).await;
    }
}

#[tokio::test]
async fn data_sent_right_after_resume_reaches_the_mac() {
    let mut s = settings();
    s.pairing.resume_grace_secs = 30;
    let server = TestServer::start(s);
    for i in 0..TRIES {
        let (mut mac, browser, session) = pair(&server).await;
        drop(browser);
        expect_silence(&mut mac, Duration::from_millis(50)).await;
        let mut browser = server.connect("/browser").await;
        let data = format!("typed while away {i}");
        send_all(
            &mut browser,
            &[
                json!({"type": "resume", "sessionId": session}),
                json!({"type": "data", "payload": data}),
            ],
        )
        .await;
        assert_eq!(recv(&mut browser).await["type"], "joined");
        assert_eq!(recv(&mut mac).await["type"], "joined");
        expect_data(&mut mac, &data).await;
    }
}

#[tokio::test]
async fn data_sent_right_after_a_mac_resumes_reaches_the_browser() {
    let mut s = settings();
    s.pairing.resume_grace_secs = 30;
    let server = TestServer::start(s);
    for i in 0..TRIES {
        let client_id = uuid::Uuid::new_v4().to_string();
        let (mut mac, _) = mac(&server).await;
        send(&mut mac, json!({"type": "register", "clientId": client_id})).await;
        let code = recv(&mut mac).await["code"].as_str().unwrap().to_owned();
        let mut browser = server.connect("/browser").await;
        send(&mut browser, json!({"type": "join", "code": code})).await;
        assert_eq!(recv(&mut browser).await["type"], "joined");
        assert_eq!(recv(&mut mac).await["type"], "joined");
        drop(mac);
        expect_silence(&mut browser, Duration::from_millis(50)).await;

        let mut mac = server.connect("/mac").await;
        let data = format!("flushed on return {i}");
        send_all(
            &mut mac,
            &[
                json!({"type": "register", "clientId": client_id}),
                json!({"type": "data", "payload": data}),
            ],
        )
        .await;
        assert_eq!(recv(&mut mac).await["type"], "registered");
        assert_eq!(recv(&mut mac).await["type"], "joined");
        assert_eq!(recv(&mut browser).await["type"], "joined");
        expect_data(&mut browser, &data).await;
    }
}

#[tokio::test]
async fn a_register_sent_at_once_is_answered_after_the_first_code() {
    let server = TestServer::start(settings());
    for _ in 0..TRIES {
        let mut mac = server.connect("/mac").await;
        let client_id = uuid::Uuid::new_v4().to_string();
        send(&mut mac, json!({"type": "register", "clientId": client_id})).await;
        let first = recv(&mut mac).await;
        let second = recv(&mut mac).await;
        assert_eq!(first["type"], "registered");
        assert_eq!(second["type"], "registered");
        // The code the mac ends up showing is the live one: a browser can join it.
        let mut browser = server.connect("/browser").await;
        send(
            &mut browser,
            json!({"type": "join", "code": second["code"]}),
        )
        .await;
        assert_eq!(recv(&mut browser).await["type"], "joined");
    }
}

on_both_backends!(
    a_client_may_send_auth_and_requests_without_waiting,
    input_sent_right_after_attach_reaches_the_agent,
);

async fn a_client_may_send_auth_and_requests_without_waiting(db: TestDb) {
    let server = TestServer::start_on(&db, settings());
    let ada = owner(&server, "ada@example.com").await;
    let _agent = agent(&server, &ada, &["s1"]).await;
    for _ in 0..TRIES / 4 {
        let mut web = server.connect("/ws/client").await;
        send_all(
            &mut web,
            &[
                json!({"type": "auth", "token": ada.access}),
                json!({"type": "list_machines"}),
                json!({"type": "list_sessions", "machineId": ada.machine_id}),
            ],
        )
        .await;
        assert_eq!(recv(&mut web).await["type"], "authenticated");
        assert_eq!(recv(&mut web).await["type"], "machines");
        assert_eq!(recv(&mut web).await["type"], "sessions");
    }
}

async fn input_sent_right_after_attach_reaches_the_agent(db: TestDb) {
    let server = TestServer::start_on(&db, settings());
    let ada = owner(&server, "ada@example.com").await;
    let mut agent = agent(&server, &ada, &["s1"]).await;
    for i in 0..TRIES / 2 {
        let mut web = client(&server, &ada.access).await;
        let keys = format!("keys {i}");
        send_all(
            &mut web,
            &[
                json!({"type": "attach", "machineId": ada.machine_id, "sessionId": "s1"}),
                json!({"type": "data", "sessionId": "s1", "data": keys}),
            ],
        )
        .await;
        assert_eq!(recv_type(&mut web, "attached").await["sessionId"], "s1");
        assert_eq!(recv_type(&mut agent, "attach").await["sessionId"], "s1");
        let input = recv_type(&mut agent, "data").await;
        assert_eq!(
            input,
            json!({"type": "data", "sessionId": "s1", "data": keys})
        );
        drop(web);
        assert_eq!(recv_type(&mut agent, "detach").await["sessionId"], "s1");
    }
}
