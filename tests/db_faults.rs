//! Database faults: the real relay against PostgreSQL through a proxy that cuts, blackholes
//! and restores the link, and against SQLite that is full, locked or read-only. Every
//! database path must answer 503 / `UNAVAILABLE` within `connect_timeout_secs` + 1 s (never
//! 500, never a hang), pairing and live sockets must not notice, `/ready` must tell the
//! truth, and everything must work again once the database is back.
//!
//! Times are measured and printed (`cargo test --test db_faults -- --nocapture`); the
//! assertions use a generous outer limit so a loaded CI machine does not make them flaky.

#[macro_use]
mod common;
#[path = "db_faults/proxy.rs"]
mod proxy;

use std::time::{Duration, Instant};

use common::*;
use futures_util::future::join_all;
use hermit_relay::config::Settings;
use proxy::{Mode, Proxy};
use reqwest::{Client, Method, StatusCode};
use serde_json::{json, Value};

on_both_backends!(
    a_refresh_retried_after_a_lost_reply_keeps_the_user_signed_in,
    a_retry_after_the_grace_or_after_the_next_token_was_used_revokes_the_family,
    simultaneous_refreshes_of_one_token_all_get_the_same_next_token,
    without_a_grace_exactly_one_of_simultaneous_refreshes_wins_and_the_family_is_revoked,
    pending_migrations_make_the_relay_unready_and_answer_503_until_applied,
);

/// `database.connect_timeout_secs` in these tests: the relay promises answers within this
/// plus one second.
const TIMEOUT_SECS: u64 = 2;
/// The outer limit a request must answer within: the promise plus slack for a busy machine.
const OUTER: Duration = Duration::from_secs(TIMEOUT_SECS + 1 + 4);
const PASSWORD: &str = "correct horse battery";

fn fault_settings() -> Settings {
    let mut s = settings();
    s.database.connect_timeout_secs = TIMEOUT_SECS;
    s.database.health_check_interval_ms = 200;
    s
}

/// One HTTP request; panics if it takes longer than [`OUTER`] (a hang).
async fn request(
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

async fn post(server: &TestServer, path: &str, body: Value) -> (StatusCode, Value) {
    let (status, body, _) = request(server, Method::POST, path, None, Some(body)).await;
    (status, body)
}

async fn refresh(server: &TestServer, token: &str) -> (StatusCode, Value) {
    post(server, "/auth/refresh", json!({ "refreshToken": token })).await
}

async fn ready(server: &TestServer) -> StatusCode {
    request(server, Method::GET, "/ready", None, None).await.0
}

/// Polls `/ready` until it answers `want`; returns how long that took.
async fn ready_becomes(server: &TestServer, want: StatusCode, within: Duration) -> Duration {
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
struct Owner {
    email: String,
    access: String,
    refresh: String,
    machine_id: String,
    machine_token: String,
}

async fn owner(server: &TestServer, email: &str) -> Owner {
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
async fn recv_type(ws: &mut Ws, kind: &str) -> Value {
    loop {
        let msg = recv(ws).await;
        if msg["type"] == kind {
            return msg;
        }
    }
}

/// An agent online for the owner's machine with one session `s1`.
async fn agent(server: &TestServer, owner: &Owner) -> Ws {
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
async fn client(server: &TestServer, owner: &Owner) -> Ws {
    let mut ws = server.connect("/ws/client").await;
    send(&mut ws, json!({"type": "auth", "token": owner.access})).await;
    let msg = recv(&mut ws).await;
    assert_eq!(msg["type"], "authenticated", "{msg}");
    ws
}

/// A client attached to the agent's `s1`, with the agent told.
async fn attached(server: &TestServer, owner: &Owner, agent: &mut Ws) -> Ws {
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
async fn live_sockets_work(
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

/// What one database path answered, and how long it took.
#[derive(Debug)]
struct Answer {
    path: &'static str,
    outcome: String,
    took: Duration,
}

/// Tries every database path at once; each answer is described as `503: text`,
/// `UNAVAILABLE: text`, `200`… so the caller can check them all alike.
async fn every_database_path(server: &TestServer, who: &Owner, web: &mut Ws) -> Vec<Answer> {
    let http =
        |path: &'static str, method: Method, url: String, token: bool, body: Option<Value>| {
            let access = who.access.clone();
            async move {
                let (status, body, took) =
                    request(server, method, &url, token.then_some(access.as_str()), body).await;
                let text = body["error"].as_str().unwrap_or_default().to_owned();
                Answer {
                    path,
                    outcome: format!("{}: {text}", status.as_u16()),
                    took,
                }
            }
        };
    let login = http(
        "POST /auth/login",
        Method::POST,
        "/auth/login".into(),
        false,
        Some(json!({"email": who.email, "password": PASSWORD})),
    );
    let register = http(
        "POST /auth/register",
        Method::POST,
        "/auth/register".into(),
        false,
        Some(json!({"email": format!("new-{}", who.email), "password": PASSWORD})),
    );
    let refresh = http(
        "POST /auth/refresh",
        Method::POST,
        "/auth/refresh".into(),
        false,
        Some(json!({"refreshToken": who.refresh})),
    );
    let list = http(
        "GET /api/machines",
        Method::GET,
        "/api/machines".into(),
        true,
        None,
    );
    let create = http(
        "POST /api/machines",
        Method::POST,
        "/api/machines".into(),
        true,
        Some(json!({"name": "another mac"})),
    );
    let delete = http(
        "DELETE /api/machines/{id}",
        Method::DELETE,
        format!("/api/machines/{}", who.machine_id),
        true,
        None,
    );
    let new_client = async {
        let started = Instant::now();
        let mut ws = server.connect("/ws/client").await;
        send(&mut ws, json!({"type": "auth", "token": who.access})).await;
        let msg = tokio::time::timeout(OUTER, recv(&mut ws))
            .await
            .expect("/ws/client auth hung");
        Answer {
            path: "/ws/client auth",
            outcome: ws_outcome(&msg),
            took: started.elapsed(),
        }
    };
    let list_machines = async {
        let started = Instant::now();
        send(web, json!({"type": "list_machines"})).await;
        let msg = tokio::time::timeout(OUTER, recv(web))
            .await
            .expect("list_machines hung");
        Answer {
            path: "/ws/client list_machines",
            outcome: ws_outcome(&msg),
            took: started.elapsed(),
        }
    };
    let new_agent = async {
        let started = Instant::now();
        let mut ws = server.connect("/ws/agent").await;
        send(
            &mut ws,
            json!({"type": "register", "token": who.machine_token, "machineName": "mac"}),
        )
        .await;
        let msg = tokio::time::timeout(OUTER, recv(&mut ws))
            .await
            .expect("/ws/agent register hung");
        Answer {
            path: "/ws/agent register",
            outcome: ws_outcome(&msg),
            took: started.elapsed(),
        }
    };
    let (http_answers, new_client, list_machines, new_agent) = tokio::join!(
        join_all([
            Box::pin(login) as std::pin::Pin<Box<dyn std::future::Future<Output = Answer>>>,
            Box::pin(register),
            Box::pin(refresh),
            Box::pin(list),
            Box::pin(create),
            Box::pin(delete),
        ]),
        new_client,
        list_machines,
        new_agent
    );
    let mut answers = http_answers;
    answers.extend([new_client, list_machines, new_agent]);
    answers
}

/// `UNAVAILABLE: text` for an error, `registered false: text` for a refused agent, else
/// the message type.
fn ws_outcome(msg: &Value) -> String {
    match msg["type"].as_str() {
        Some("error") => format!(
            "{}: {}",
            msg["code"].as_str().unwrap_or_default(),
            msg["message"].as_str().unwrap_or_default()
        ),
        Some("registered") if msg["success"] == false => {
            format!("UNAVAILABLE: {}", msg["error"].as_str().unwrap_or_default())
        }
        Some(other) => other.to_owned(),
        None => msg.to_string(),
    }
}

/// Asserts every answer is a 503 / `UNAVAILABLE` with a text, and prints the times.
fn all_unavailable(answers: &[Answer], what: &str) {
    for answer in answers {
        eprintln!(
            "{what}: {:<26} {:>6.2} s  {}",
            answer.path,
            answer.took.as_secs_f64(),
            answer.outcome
        );
    }
    for answer in answers {
        // HTTP texts name the database; the WebSocket side words its own.
        let http = answer.outcome.starts_with("503: ") && answer.outcome.contains("database");
        let websocket = answer.outcome.starts_with("UNAVAILABLE: ");
        assert!(
            http || websocket,
            "{what}: {} answered {:?}",
            answer.path,
            answer.outcome
        );
    }
}

/// The whole outage scenario on PostgreSQL through the proxy, for a cut or a blackhole.
async fn outage(mode: Mode) {
    let Some(db) = TestDb::postgres() else {
        return;
    };
    let proxy = Proxy::start(proxy::upstream_of(&db.url)).await;
    let mut s = db.settings(fault_settings());
    s.database.url = proxy::through(&db.url, proxy.port);
    let server = TestServer::start_with(s);
    ready_becomes(&server, StatusCode::OK, OUTER).await;

    let ada = owner(&server, "ada@example.com").await;
    let mut mac_agent = agent(&server, &ada).await;
    let mut web = attached(&server, &ada, &mut mac_agent).await;
    let (mut mac, mut browser, _) = pair(&server).await;
    live_sockets_work(
        &server,
        &mut mac_agent,
        &mut web,
        &mut mac,
        &mut browser,
        "before",
    )
    .await;

    proxy.set(mode);
    let label = format!("{mode:?}");
    // All at once, before the relay knows anything is wrong: each must still answer in time.
    let answers = every_database_path(&server, &ada, &mut web).await;
    all_unavailable(&answers, &format!("{label}, first contact"));
    for answer in &answers {
        assert!(answer.took < OUTER, "{answer:?}");
    }
    // Again, now that the relay knows: it answers at once.
    let answers = every_database_path(&server, &ada, &mut web).await;
    all_unavailable(&answers, &format!("{label}, known"));
    assert_eq!(ready(&server).await, StatusCode::SERVICE_UNAVAILABLE);
    let (status, _, _) = request(&server, Method::GET, "/health", None, None).await;
    assert_eq!(status, StatusCode::OK);
    live_sockets_work(
        &server,
        &mut mac_agent,
        &mut web,
        &mut mac,
        &mut browser,
        "during",
    )
    .await;

    proxy.restore();
    let back = ready_becomes(&server, StatusCode::OK, Duration::from_secs(10)).await;
    eprintln!(
        "{label}: /ready answered 200 {:.2} s after the restore",
        back.as_secs_f64()
    );

    // Everything works again, at the first try.
    let (status, body) = post(
        &server,
        "/auth/login",
        json!({"email": ada.email, "password": PASSWORD}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = refresh(&server, &ada.refresh).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let bob = owner(&server, "bob@example.com").await;
    let (status, body, _) = request(
        &server,
        Method::GET,
        "/api/machines",
        Some(&bob.access),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let mut bob_agent = agent(&server, &bob).await;
    let _bob_web = attached(&server, &bob, &mut bob_agent).await;
    send(&mut web, json!({"type": "list_machines"})).await;
    assert_eq!(
        recv_type(&mut web, "machines").await["machines"][0]["id"],
        ada.machine_id.as_str()
    );
    let (status, body, _) = request(
        &server,
        Method::DELETE,
        &format!("/api/machines/{}", bob.machine_id),
        Some(&bob.access),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    live_sockets_work(
        &server,
        &mut mac_agent,
        &mut web,
        &mut mac,
        &mut browser,
        "after",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_link_answers_503_on_every_path_in_time_and_recovers_by_itself() {
    outage(Mode::Cut).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blackholed_link_answers_503_on_every_path_in_time_and_recovers_by_itself() {
    outage(Mode::Blackhole).await;
}

// ---- Refresh tokens: lost replies and races (item 3 of issue 16, item 14 of issue 15) ----

/// The default deadline: these tests race requests on a loaded machine, and a request past
/// the short one of [`fault_settings`] would be an outage, not what they test.
fn grace(secs: u64) -> Settings {
    let mut s = settings();
    s.auth.refresh_retry_grace_secs = secs;
    s
}

/// Sends a refresh over a raw connection and waits until the relay has spent the token,
/// then hangs up without reading: the answer is lost, as on a dropped mobile connection.
async fn refresh_and_lose_the_reply(server: &TestServer, db: &TestDb, token: &str) {
    use tokio::io::AsyncWriteExt;
    let body = json!({ "refreshToken": token }).to_string();
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", server.port))
        .await
        .unwrap();
    let head = format!(
        "POST /auth/refresh HTTP/1.1\r\nHost: relay\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(body.as_bytes()).await.unwrap();
    let hash = hermit_relay::auth::opaque::hash(token);
    let mut conn = open(db);
    let started = Instant::now();
    while !spent(&mut conn, &hash) {
        assert!(started.elapsed() < WAIT, "the relay never spent the token");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(stream);
}

/// A connection of the test's own to the relay's database.
fn open(db: &TestDb) -> hermit_relay::db::DbConnection {
    use diesel::{Connection, PgConnection, SqliteConnection};
    use hermit_relay::db::DbConnection;
    match db.url.strip_prefix("sqlite://") {
        Some(path) => DbConnection::Sqlite(SqliteConnection::establish(path).unwrap()),
        None => DbConnection::Postgresql(PgConnection::establish(&db.url).unwrap()),
    }
}

/// Whether the refresh token with this hash is spent, read straight from the database.
fn spent(conn: &mut hermit_relay::db::DbConnection, hash: &str) -> bool {
    use diesel::prelude::*;
    use hermit_relay::schema::refresh_tokens::dsl::*;
    refresh_tokens
        .filter(token_hash.eq(hash))
        .select(spent_at.is_not_null())
        .first::<bool>(conn)
        .unwrap_or(false)
}

async fn a_refresh_retried_after_a_lost_reply_keeps_the_user_signed_in(db: TestDb) {
    let server = TestServer::start_on(&db, grace(30));
    let ada = owner(&server, "ada@example.com").await;
    refresh_and_lose_the_reply(&server, &db, &ada.refresh).await;

    // The client retries with the token it still has.
    let (status, first) = refresh(&server, &ada.refresh).await;
    assert_eq!(status, StatusCode::OK, "{first}");
    let (status, again) = refresh(&server, &ada.refresh).await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(
        again["refreshToken"], first["refreshToken"],
        "a retry gets the same next token"
    );
    let access = first["accessToken"].as_str().unwrap();
    let (status, _, _) = request(&server, Method::GET, "/api/machines", Some(access), None).await;
    assert_eq!(status, StatusCode::OK);
    // The family lives on: the next token works, and so does the one after it.
    let (status, next) = refresh(&server, first["refreshToken"].as_str().unwrap()).await;
    assert_eq!(status, StatusCode::OK, "{next}");
    let (status, body) = refresh(&server, next["refreshToken"].as_str().unwrap()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

async fn a_retry_after_the_grace_or_after_the_next_token_was_used_revokes_the_family(db: TestDb) {
    let server = TestServer::start_on(&db, grace(1));
    let ada = owner(&server, "ada@example.com").await;
    // After the grace: reuse.
    let (status, next) = refresh(&server, &ada.refresh).await;
    assert_eq!(status, StatusCode::OK, "{next}");
    tokio::time::sleep(Duration::from_millis(1_300)).await;
    let (status, _) = refresh(&server, &ada.refresh).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = refresh(&server, next["refreshToken"].as_str().unwrap()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "the family is revoked");

    // Within the grace, but the next token was already used: reuse too.
    let (status, login) = post(
        &server,
        "/auth/login",
        json!({"email": ada.email, "password": PASSWORD}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{login}");
    let first = login["refreshToken"].as_str().unwrap();
    let (_, second) = refresh(&server, first).await;
    let (status, third) = refresh(&server, second["refreshToken"].as_str().unwrap()).await;
    assert_eq!(status, StatusCode::OK, "{third}");
    let (status, _) = refresh(&server, first).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = refresh(&server, third["refreshToken"].as_str().unwrap()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "the family is revoked");
}

/// Presents `token` `n` times at once; returns each answer's status and refresh token.
async fn at_once(server: &TestServer, token: &str, n: usize) -> Vec<(StatusCode, Value)> {
    join_all((0..n).map(|_| refresh(server, token))).await
}

async fn simultaneous_refreshes_of_one_token_all_get_the_same_next_token(db: TestDb) {
    let server = TestServer::start_on(&db, grace(30));
    let ada = owner(&server, "ada@example.com").await;
    let mut token = ada.refresh.clone();
    for round in 0..10 {
        let answers = at_once(&server, &token, 12).await;
        let next = answers[0].1["refreshToken"].clone();
        for (status, body) in &answers {
            assert_eq!(*status, StatusCode::OK, "round {round}: {body}");
            assert_eq!(body["refreshToken"], next, "round {round}");
        }
        token = next.as_str().unwrap().to_owned();
    }
    let (status, body) = refresh(&server, &token).await;
    assert_eq!(status, StatusCode::OK, "the family lives on: {body}");
}

async fn without_a_grace_exactly_one_of_simultaneous_refreshes_wins_and_the_family_is_revoked(
    db: TestDb,
) {
    let server = TestServer::start_on(&db, grace(0));
    let ada = owner(&server, "ada@example.com").await;
    for round in 0..10 {
        let (status, login) = post(
            &server,
            "/auth/login",
            json!({"email": ada.email, "password": PASSWORD}),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{login}");
        let answers = at_once(&server, login["refreshToken"].as_str().unwrap(), 12).await;
        let winners: Vec<&Value> = answers
            .iter()
            .filter(|(status, _)| *status == StatusCode::OK)
            .map(|(_, body)| body)
            .collect();
        for (status, body) in &answers {
            assert!(
                *status == StatusCode::OK || *status == StatusCode::UNAUTHORIZED,
                "round {round}: {status} {body}"
            );
        }
        assert_eq!(winners.len(), 1, "round {round}: {answers:?}");
        let (status, _) = refresh(&server, winners[0]["refreshToken"].as_str().unwrap()).await;
        assert_eq!(
            status,
            StatusCode::UNAUTHORIZED,
            "round {round}: the losers were reuse, so the family is revoked"
        );
    }
}

// ---- Readiness ----

async fn pending_migrations_make_the_relay_unready_and_answer_503_until_applied(db: TestDb) {
    let mut s = db.settings(fault_settings());
    s.database.run_migrations = false;
    let server = TestServer::start_with(s.clone());
    let (status, body, _) = request(&server, Method::GET, "/ready", None, None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        body["error"].as_str().unwrap().contains("migrations"),
        "{body}"
    );
    let (status, body) = post(
        &server,
        "/auth/register",
        json!({"email": "ada@example.com", "password": PASSWORD}),
    )
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");

    let pool = hermit_relay::db::Pool::new(&s.database).unwrap();
    hermit_relay::startup::migrate(&pool).unwrap();
    let took = ready_becomes(&server, StatusCode::OK, Duration::from_secs(5)).await;
    eprintln!("ready {:.2} s after the migrations", took.as_secs_f64());
    owner(&server, "ada@example.com").await;
}

// ---- SQLite: full, locked, read-only ----

/// The test's own SQLite connection to the relay's database.
fn sqlite(db: &TestDb) -> diesel::SqliteConnection {
    use diesel::connection::SimpleConnection;
    use diesel::Connection;
    let mut conn =
        diesel::SqliteConnection::establish(db.url.strip_prefix("sqlite://").unwrap()).unwrap();
    conn.batch_execute("PRAGMA busy_timeout = 5000;").unwrap();
    conn
}

/// Asserts a 503 whose text contains `word`.
fn unavailable(answer: (StatusCode, Value), word: &str, what: &str) {
    let (status, body) = answer;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{what}: {body}");
    let text = body["error"].as_str().unwrap_or_default();
    assert!(text.contains(word), "{what}: {text:?} should say {word:?}");
}

async fn create_machine(server: &TestServer, owner: &Owner, name: &str) -> (StatusCode, Value) {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_sqlite_database_answers_503_never_500_and_recovers_when_room_is_made() {
    use diesel::connection::SimpleConnection;
    let db = TestDb::sqlite();
    let mut s = db.settings(fault_settings());
    // 256 pages of 4 KiB: what "the disk" holds in this test.
    s.database.sqlite_max_bytes = 1 << 20;
    s.limits.max_machines_per_user = 100_000;
    let server = TestServer::start_with(s);
    let ada = owner(&server, "ada@example.com").await;
    let mut mac_agent = agent(&server, &ada).await;
    let mut web = attached(&server, &ada, &mut mac_agent).await;
    let (mut mac, mut browser, _) = pair(&server).await;

    // Something else takes every page left, as a full filesystem would.
    let mut other = sqlite(&db);
    other
        .batch_execute("PRAGMA max_page_count = 256; CREATE TABLE filler (b BLOB);")
        .unwrap();
    let mut filled = false;
    for _ in 0..1_000 {
        if let Err(err) = other.batch_execute("INSERT INTO filler VALUES (zeroblob(3000));") {
            assert!(err.to_string().contains("full"), "{err}");
            filled = true;
            break;
        }
    }
    assert!(filled, "the database never filled up");

    // The relay's tables use up the room their pages still have; then writes get 503.
    let mut token = ada.refresh.clone();
    let mut answer = None;
    for _ in 0..1_000 {
        let (status, body) = refresh(&server, &token).await;
        if status != StatusCode::OK {
            answer = Some((status, body));
            break;
        }
        token = body["refreshToken"].as_str().unwrap().to_owned();
    }
    unavailable(answer.expect("refreshes never failed"), "full", "refresh");
    let mut answer = None;
    for i in 0..1_000 {
        let (status, body) = create_machine(&server, &ada, &format!("mac {i}")).await;
        if status != StatusCode::OK {
            answer = Some((status, body));
            break;
        }
    }
    // Machines are created in the relay's own transaction, which SQLite may roll back by
    // itself on a full disk: 503 either way, its text "full" or "busy".
    unavailable(
        answer.expect("machines were always created"),
        "database",
        "create",
    );

    unavailable(refresh(&server, &token).await, "full", "refresh again");
    let credentials = json!({"email": ada.email, "password": PASSWORD});
    unavailable(
        post(&server, "/auth/login", credentials.clone()).await,
        "full",
        "login",
    );
    let newcomer = json!({"email": "bob@example.com", "password": PASSWORD});
    unavailable(
        post(&server, "/auth/register", newcomer.clone()).await,
        "full",
        "register",
    );
    ready_becomes(
        &server,
        StatusCode::SERVICE_UNAVAILABLE,
        Duration::from_secs(5),
    )
    .await;
    // Reads and live sockets carry on.
    let (status, body, _) = request(
        &server,
        Method::GET,
        "/api/machines",
        Some(&ada.access),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    send(&mut web, json!({"type": "list_machines"})).await;
    recv_type(&mut web, "machines").await;
    live_sockets_work(
        &server,
        &mut mac_agent,
        &mut web,
        &mut mac,
        &mut browser,
        "full",
    )
    .await;

    // Room is made.
    other.batch_execute("DROP TABLE filler;").unwrap();
    let back = ready_becomes(&server, StatusCode::OK, Duration::from_secs(10)).await;
    eprintln!(
        "full disk: /ready answered 200 {:.2} s after room was made",
        back.as_secs_f64()
    );
    let (status, body) = refresh(&server, &token).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = post(&server, "/auth/login", credentials).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = post(&server, "/auth/register", newcomer).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = create_machine(&server, &ada, "one more mac").await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_locked_sqlite_database_answers_503_busy_and_not_500() {
    use diesel::connection::SimpleConnection;
    let db = TestDb::sqlite();
    let server = TestServer::start_on(&db, fault_settings());
    let ada = owner(&server, "ada@example.com").await;
    let mut other = sqlite(&db);
    // Another process holds the write lock (a backup, a stuck migration...).
    other.batch_execute("BEGIN IMMEDIATE;").unwrap();
    let started = Instant::now();
    unavailable(refresh(&server, &ada.refresh).await, "busy", "refresh");
    eprintln!(
        "locked: refresh answered in {:.2} s",
        started.elapsed().as_secs_f64()
    );
    unavailable(
        create_machine(&server, &ada, "mac 2").await,
        "busy",
        "create",
    );
    let credentials = json!({"email": ada.email, "password": PASSWORD});
    unavailable(
        post(&server, "/auth/login", credentials.clone()).await,
        "busy",
        "login",
    );
    let (status, body, _) = request(
        &server,
        Method::GET,
        "/api/machines",
        Some(&ada.access),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "reads do not need the lock: {body}");
    assert_eq!(ready(&server).await, StatusCode::SERVICE_UNAVAILABLE);

    other.batch_execute("ROLLBACK;").unwrap();
    ready_becomes(&server, StatusCode::OK, Duration::from_secs(10)).await;
    let (status, body) = refresh(&server, &ada.refresh).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = post(&server, "/auth/login", credentials).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_sqlite_database_serves_reads_and_answers_503_to_writes() {
    let db = TestDb::sqlite();
    let writable = TestServer::start_on(&db, fault_settings());
    let ada = owner(&writable, "ada@example.com").await;
    drop(writable);

    let mut s = db.settings(fault_settings());
    let path = db.url.strip_prefix("sqlite://").unwrap();
    s.database.url = format!("sqlite://file:{path}?mode=ro");
    s.database.run_migrations = false;
    let server = TestServer::start_with(s);
    let (status, body, _) = request(
        &server,
        Method::GET,
        "/api/machines",
        Some(&ada.access),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    unavailable(refresh(&server, &ada.refresh).await, "read-only", "refresh");
    unavailable(
        create_machine(&server, &ada, "mac 2").await,
        "read-only",
        "create",
    );
    let credentials = json!({"email": ada.email, "password": PASSWORD});
    unavailable(
        post(&server, "/auth/login", credentials).await,
        "read-only",
        "login",
    );
    let (status, body, _) = request(&server, Method::GET, "/ready", None, None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("read-only"),
        "{body}"
    );
}

// ---- The real binary: the start-up message and the outage log lines ----

/// The relay binary in `dir`, configured only by `env` (and a port chosen by the kernel).
fn binary(dir: &std::path::Path, env: &[(&str, String)]) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_hermit-relay"));
    command
        .current_dir(dir)
        .env_clear()
        .env("HERMIT__SERVER__BIND", "127.0.0.1:0")
        .env(
            "HERMIT__AUTH__PRIVATE_KEY_FILE",
            dir.join("root.key").display().to_string(),
        )
        .env(
            "HERMIT__DATABASE__CONNECT_TIMEOUT_SECS",
            TIMEOUT_SECS.to_string(),
        )
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    for (key, value) in env {
        command.env(key, value);
    }
    command
}

/// Runs the relay against `url` until it exits; returns whether it succeeded and every
/// line it wrote (standard output, then standard error).
async fn start_up(url: &str, format: &str) -> (bool, Vec<String>) {
    let dir = tempfile::tempdir().unwrap();
    let output = binary(
        dir.path(),
        &[
            ("HERMIT__DATABASE__URL", url.to_owned()),
            ("HERMIT__LOG__FORMAT", format.to_owned()),
        ],
    )
    .output();
    let output = tokio::time::timeout(Duration::from_secs(30), output)
        .await
        .expect("the relay exits")
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout).to_string()
        + &String::from_utf8_lossy(&output.stderr);
    (
        output.status.success(),
        text.lines().map(str::to_owned).collect(),
    )
}

/// A port nothing listens on (bound, then released).
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// Asserts the lines hold exactly one about the database, with `headline` as its message,
/// in `format`; and nothing about listening or the password.
fn one_headline(lines: &[String], format: &str, headline: &str) {
    let about: Vec<&String> = lines.iter().filter(|l| l.contains("database")).collect();
    assert_eq!(about.len(), 1, "one line about the database: {lines:#?}");
    if format == "json" {
        let line: Value = serde_json::from_str(about[0]).expect("a JSON log line");
        assert_eq!(line["level"], "ERROR", "{line}");
        assert_eq!(line["message"], headline, "{line}");
    } else {
        assert!(about[0].contains("ERROR"), "{}", about[0]);
        assert!(about[0].ends_with(headline), "{}", about[0]);
        assert!(!about[0].contains('\u{1b}'), "no colour codes in a pipe");
    }
    for line in lines {
        assert!(!line.contains("cannot listen"), "{line}");
        assert!(!line.contains("s3cret"), "{line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_database_at_start_is_named_once_in_the_configured_log_format() {
    let port = closed_port();
    let url = format!("postgres://relay:s3cret@127.0.0.1:{port}/hermit");
    let headline = format!("the database at 127.0.0.1:{port} is unreachable (Connection refused)");
    for format in ["json", "text"] {
        let (succeeded, lines) = start_up(&url, format).await;
        assert!(!succeeded);
        one_headline(&lines, format, &headline);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_database_at_start_is_named_with_the_timeout() {
    let proxy = Proxy::start(([127, 0, 0, 1], closed_port()).into()).await;
    proxy.set(Mode::Blackhole);
    let url = format!("postgres://relay:s3cret@127.0.0.1:{}/hermit", proxy.port);
    let started = Instant::now();
    let (succeeded, lines) = start_up(&url, "json").await;
    eprintln!(
        "partitioned at start: exited after {:.2} s",
        started.elapsed().as_secs_f64()
    );
    assert!(!succeeded);
    let headline = format!(
        "the database at 127.0.0.1:{} is unreachable (timeout expired)",
        proxy.port
    );
    one_headline(&lines, "json", &headline);
}

/// Every line a child process writes, as it writes them.
fn collect_lines(reader: impl tokio::io::AsyncRead + Unpin + Send + 'static, into: Lines) {
    use tokio::io::AsyncBufReadExt;
    tokio::spawn(async move {
        let mut lines = tokio::io::BufReader::new(reader).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            into.lock().unwrap().push(line);
        }
    });
}

/// `hermit_database_up` from the relay's `/metrics`.
async fn database_up(base: &str) -> String {
    let text = Client::new()
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("hermit_database_up "))
        .expect("the gauge is exported")
        .to_owned()
}

async fn gauge_becomes(base: &str, want: &str) {
    let started = Instant::now();
    while database_up(base).await != want {
        assert!(
            started.elapsed() < WAIT,
            "hermit_database_up never became {want}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Every line a running relay has written so far.
type Lines = std::sync::Arc<std::sync::Mutex<Vec<String>>>;

/// Starts the relay binary with JSON logs and waits until it listens; returns it, its
/// port, and the lines it writes.
async fn spawn_relay(
    dir: &std::path::Path,
    env: &[(&str, String)],
) -> (tokio::process::Child, u16, Lines) {
    let mut child = binary(dir, env).spawn().unwrap();
    let lines = Lines::default();
    collect_lines(child.stdout.take().unwrap(), std::sync::Arc::clone(&lines));
    collect_lines(child.stderr.take().unwrap(), std::sync::Arc::clone(&lines));
    let started = Instant::now();
    loop {
        let listening = lines
            .lock()
            .unwrap()
            .iter()
            .find(|l| l.contains("hermit-relay listening"))
            .cloned();
        if let Some(line) = listening {
            let line: Value = serde_json::from_str(&line).unwrap();
            let port = u16::try_from(line["port"].as_u64().unwrap()).unwrap();
            return (child, port, lines);
        }
        assert!(
            started.elapsed() < WAIT,
            "the relay never listened: {lines:?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_is_logged_once_as_it_starts_and_once_as_it_ends_and_shown_in_metrics() {
    let Some(db) = TestDb::postgres() else {
        return;
    };
    let proxy = Proxy::start(proxy::upstream_of(&db.url)).await;
    let dir = tempfile::tempdir().unwrap();
    let (mut child, port, lines) = spawn_relay(
        dir.path(),
        &[
            ("HERMIT__DATABASE__URL", proxy::through(&db.url, proxy.port)),
            ("HERMIT__LOG__FORMAT", "json".into()),
            ("HERMIT__DATABASE__HEALTH_CHECK_INTERVAL_MS", "200".into()),
        ],
    )
    .await;
    let base = format!("http://127.0.0.1:{port}");
    gauge_becomes(&base, "1").await;

    for mode in [Mode::Cut, Mode::Blackhole] {
        proxy.set(mode);
        // Requests keep coming through the outage (and the relay keeps checking).
        for _ in 0..15 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let login = Client::new()
                .post(format!("{base}/auth/login"))
                .json(&json!({"email": "nobody@example.com", "password": PASSWORD}))
                .send();
            let response = tokio::time::timeout(OUTER, login)
                .await
                .expect("login hung");
            assert_eq!(response.unwrap().status(), StatusCode::SERVICE_UNAVAILABLE);
        }
        gauge_becomes(&base, "0").await;
        proxy.restore();
        let started = Instant::now();
        while reqwest::get(format!("{base}/ready"))
            .await
            .unwrap()
            .status()
            != StatusCode::OK
        {
            assert!(
                started.elapsed() < WAIT,
                "/ready never came back after {mode:?}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        gauge_becomes(&base, "1").await;
    }
    child.start_kill().unwrap();
    child.wait().await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;

    let lines = lines.lock().unwrap().clone();
    let mut down = 0;
    let mut back = 0;
    for line in &lines {
        let json: Value = serde_json::from_str(line)
            .unwrap_or_else(|_| panic!("every line is one JSON object: {line:?}"));
        let message = json["message"].as_str().unwrap_or_default();
        if message.starts_with("database down: ") {
            down += 1;
            assert_eq!(json["level"], "ERROR", "{line}");
        } else if message.starts_with("database back after ") {
            back += 1;
        } else {
            assert!(
                json["level"] != "ERROR" && json["level"] != "WARN",
                "only the state changes are logged: {line}"
            );
        }
    }
    eprintln!("{}", lines.join("\n"));
    assert_eq!(
        (down, back),
        (2, 2),
        "one line per state change: {lines:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_killed_mid_write_loses_no_acknowledged_registration() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("relay.db").display());
    let (mut child, port, _) = spawn_relay(
        dir.path(),
        &[
            ("HERMIT__DATABASE__URL", url.clone()),
            ("HERMIT__LOG__FORMAT", "json".into()),
            ("HERMIT__LIMITS__AUTH_ATTEMPTS_PER_MINUTE", "100000".into()),
        ],
    )
    .await;
    let acknowledged = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let tries = 40;
    // A few at a time, within what the hashing queue takes from one address, so every one
    // is written unless the kill comes first.
    let in_flight = std::sync::Arc::new(tokio::sync::Semaphore::new(4));
    let registrations: Vec<_> = (0..tries)
        .map(|i| {
            let acknowledged = std::sync::Arc::clone(&acknowledged);
            let in_flight = std::sync::Arc::clone(&in_flight);
            tokio::spawn(async move {
                let _turn = in_flight.acquire().await.unwrap();
                let email = format!("user{i}@example.com");
                let answer = Client::new()
                    .post(format!("http://127.0.0.1:{port}/auth/register"))
                    .json(&json!({"email": email, "password": PASSWORD}))
                    .send()
                    .await;
                if answer.is_ok_and(|r| r.status() == StatusCode::OK) {
                    acknowledged.lock().unwrap().push(email);
                }
            })
        })
        .collect();
    let started = Instant::now();
    while acknowledged.lock().unwrap().len() < 10 {
        assert!(started.elapsed() < WAIT, "no registration was acknowledged");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    child.start_kill().unwrap(); // SIGKILL: no shutdown, no flush
    child.wait().await.unwrap();
    join_all(registrations).await;
    let acknowledged = acknowledged.lock().unwrap().clone();
    eprintln!(
        "killed after {} of {tries} registrations were acknowledged",
        acknowledged.len()
    );
    assert!(
        acknowledged.len() < tries,
        "the kill came too late to test anything"
    );

    let mut s = settings();
    s.database.url = url;
    s.auth.private_key_file = dir.path().join("root.key");
    let server = TestServer::start_with(s);
    for email in acknowledged {
        let (status, body) = post(
            &server,
            "/auth/login",
            json!({"email": email, "password": PASSWORD}),
        )
        .await;
        assert_eq!(
            status,
            StatusCode::OK,
            "{email} was acknowledged, then lost: {body}"
        );
    }
}
