//! Every database path through a cut and a blackholed link to PostgreSQL, and back.

use std::time::{Duration, Instant};

use futures_util::future::join_all;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::common::*;
use crate::proxy::{self, Mode, Proxy};
use crate::support::*;

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
