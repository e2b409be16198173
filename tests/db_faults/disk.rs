//! SQLite that is full, locked or read-only.

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::common::*;
use crate::support::*;

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
