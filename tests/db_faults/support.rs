//! What every fault test needs: short bounds, requests that must not hang, a user with a
//! machine, an agent and an attached client, and the test's own database connections.

use std::time::{Duration, Instant};

use hermit_relay::config::Settings;
use reqwest::{Client, Method, StatusCode};
use serde_json::{json, Value};

use crate::common::*;

pub const TIMEOUT_SECS: u64 = 2;
/// The outer limit a request must answer within: the promise plus slack for a busy machine.
pub const OUTER: Duration = Duration::from_secs(TIMEOUT_SECS + 1 + 4);
pub const PASSWORD: &str = "correct horse battery";

pub fn fault_settings() -> Settings {
    let mut s = settings();
    s.database.connect_timeout_secs = TIMEOUT_SECS;
    s.database.health_check_interval_ms = 200;
    s
}

/// One HTTP request; panics if it takes longer than [`OUTER`] (a hang).
pub async fn request(
    server: &TestServer,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (StatusCode, Value, Duration) {
    let started = Instant::now();
    let mut builder = Client::new().request(method.clone(), server.url(path));
    if let Some(token) = token {
        builder = builder.bearer_auth(token);
    }
    if let Some(body) = body {
        builder = builder.json(&body);
    }
    let response = tokio::time::timeout(OUTER, builder.send())
        .await
        .unwrap_or_else(|_| panic!("{method} {path} hung for {OUTER:?}"))
        .unwrap();
    let status = response.status();
    let body = response.json().await.unwrap_or(Value::Null);
    (status, body, started.elapsed())
}

pub async fn post(server: &TestServer, path: &str, body: Value) -> (StatusCode, Value) {
    let (status, body, _) = request(server, Method::POST, path, None, Some(body)).await;
    (status, body)
}

pub async fn refresh(server: &TestServer, token: &str) -> (StatusCode, Value) {
    post(server, "/auth/refresh", json!({ "refreshToken": token })).await
}

pub async fn ready(server: &TestServer) -> StatusCode {
    request(server, Method::GET, "/ready", None, None).await.0
}

/// Polls `/ready` until it answers `want`; returns how long that took.
pub async fn ready_becomes(server: &TestServer, want: StatusCode, within: Duration) -> Duration {
    let started = Instant::now();
    while ready(server).await != want {
        assert!(
            started.elapsed() < within,
            "/ready did not answer {want} within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    started.elapsed()
}

/// A signed-up user with one machine.
pub struct Owner {
    pub email: String,
    pub access: String,
    pub refresh: String,
    pub machine_id: String,
    pub machine_token: String,
}

pub async fn owner(server: &TestServer, email: &str) -> Owner {
    let (status, body) = post(
        server,
        "/auth/register",
        json!({"email": email, "password": PASSWORD}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let access = body["accessToken"].as_str().unwrap().to_owned();
    let (status, created, _) = request(
        server,
        Method::POST,
        "/api/machines",
        Some(&access),
        Some(json!({"name": format!("{email}'s mac")})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{created}");
    Owner {
        email: email.to_owned(),
        access,
        refresh: body["refreshToken"].as_str().unwrap().to_owned(),
        machine_id: created["machine"]["id"].as_str().unwrap().to_owned(),
        machine_token: created["token"].as_str().unwrap().to_owned(),
    }
}

/// Receives until a message of `kind`, skipping others.
pub async fn recv_type(ws: &mut Ws, kind: &str) -> Value {
    loop {
        let msg = recv(ws).await;
        if msg["type"] == kind {
            return msg;
        }
    }
}

/// An agent online for the owner's machine with one session `s1`.
pub async fn agent(server: &TestServer, owner: &Owner) -> Ws {
    let mut ws = server.connect("/ws/agent").await;
    send(
        &mut ws,
        json!({"type": "register", "token": owner.machine_token, "machineName": "mac"}),
    )
    .await;
    let registered = recv(&mut ws).await;
    assert_eq!(registered["success"], true, "{registered}");
    recv_type(&mut ws, "list_sessions").await;
    let session = json!({"id": "s1", "name": "shell", "command": "/bin/zsh",
                         "createdAt": "2026-11-30T10:00:00Z", "attachedClients": 0});
    send(&mut ws, json!({"type": "sessions", "sessions": [session]})).await;
    ws
}

/// A `/ws/client` authenticated as the owner.
pub async fn client(server: &TestServer, owner: &Owner) -> Ws {
    let mut ws = server.connect("/ws/client").await;
    send(&mut ws, json!({"type": "auth", "token": owner.access})).await;
    let msg = recv(&mut ws).await;
    assert_eq!(msg["type"], "authenticated", "{msg}");
    ws
}

/// A client attached to the agent's `s1`, with the agent told.
pub async fn attached(server: &TestServer, owner: &Owner, agent: &mut Ws) -> Ws {
    // The session report reaches the registry through the agent's actor: retry the attach
    // until the registry knows it, as a real client would after listing.
    for _ in 0..100 {
        let mut web = client(server, owner).await;
        send(
            &mut web,
            json!({"type": "attach", "machineId": owner.machine_id, "sessionId": "s1"}),
        )
        .await;
        let answer = recv(&mut web).await;
        if answer["type"] == "attached" {
            recv_type(agent, "attach").await;
            return web;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the client never attached");
}

/// Live sockets and pairing work: the attached session carries output and input both
/// ways, the paired mac and browser exchange data, and a new pairing can be made.
pub async fn live_sockets_work(
    server: &TestServer,
    agent: &mut Ws,
    web: &mut Ws,
    mac: &mut Ws,
    browser: &mut Ws,
    tag: &str,
) {
    send(
        agent,
        json!({"type": "data", "sessionId": "s1", "data": format!("out {tag}")}),
    )
    .await;
    assert_eq!(
        recv_type(web, "data").await["data"],
        format!("out {tag}").as_str()
    );
    send(
        web,
        json!({"type": "data", "sessionId": "s1", "data": format!("in {tag}")}),
    )
    .await;
    assert_eq!(
        recv_type(agent, "data").await["data"],
        format!("in {tag}").as_str()
    );
    send_data(mac, &format!("to browser {tag}")).await;
    expect_data(browser, &format!("to browser {tag}")).await;
    send_data(browser, &format!("to mac {tag}")).await;
    expect_data(mac, &format!("to mac {tag}")).await;
    let (mut new_mac, mut new_browser, _) = pair(server).await;
    send_data(&mut new_mac, "fresh pairing").await;
    expect_data(&mut new_browser, "fresh pairing").await;
}

/// A connection of the test's own to the relay's database.
pub fn open(db: &TestDb) -> hermit_relay::db::DbConnection {
    use diesel::{Connection, PgConnection, SqliteConnection};
    use hermit_relay::db::DbConnection;
    match db.url.strip_prefix("sqlite://") {
        Some(path) => DbConnection::Sqlite(SqliteConnection::establish(path).unwrap()),
        None => DbConnection::Postgresql(PgConnection::establish(&db.url).unwrap()),
    }
}

/// The test's own SQLite connection to the relay's database.
pub fn sqlite(db: &TestDb) -> diesel::SqliteConnection {
    use diesel::connection::SimpleConnection;
    use diesel::Connection;
    let mut conn =
        diesel::SqliteConnection::establish(db.url.strip_prefix("sqlite://").unwrap()).unwrap();
    conn.batch_execute("PRAGMA busy_timeout = 5000;").unwrap();
    conn
}

/// Asserts a 503 whose text contains `word`.
pub fn unavailable(answer: (StatusCode, Value), word: &str, what: &str) {
    let (status, body) = answer;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{what}: {body}");
    let text = body["error"].as_str().unwrap_or_default();
    assert!(text.contains(word), "{what}: {text:?} should say {word:?}");
}

pub async fn create_machine(server: &TestServer, owner: &Owner, name: &str) -> (StatusCode, Value) {
    let (status, body, _) = request(
        server,
        Method::POST,
        "/api/machines",
        Some(&owner.access),
        Some(json!({ "name": name })),
    )
    .await;
    (status, body)
}
