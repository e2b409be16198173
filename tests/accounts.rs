//! The account API (PROTOCOL.md §2) over real HTTP, on SQLite and on PostgreSQL.

#[macro_use]
mod common;

use std::time::Duration;

use common::*;
use reqwest::{Client, StatusCode};
use serde_json::{json, Value};

on_both_backends!(
    register_answers_the_user_and_both_tokens,
    register_refuses_bad_emails_short_passwords_and_duplicates,
    register_is_forbidden_when_registration_is_closed,
    login_answers_the_same_for_unknown_email_and_wrong_password,
    refresh_rotates_and_the_old_token_is_spent,
    reusing_a_spent_refresh_token_revokes_its_family,
    logout_revokes_the_refresh_token,
    expired_and_revoked_refresh_tokens_are_purged_but_spent_ones_kept,
    expired_refresh_tokens_are_purged,
    machines_are_created_listed_and_deleted_by_their_owner_only,
    machine_names_are_validated_and_unique_per_user,
    api_routes_refuse_missing_forged_tampered_and_expired_tokens,
    bad_bodies_get_400_or_413_and_unknown_routes_404,
    concurrent_registrations_and_logins_stay_within_the_hashing_bound,
    ready_answers_200_when_the_database_is_reachable,
);

async fn post(server: &TestServer, path: &str, body: Value) -> (StatusCode, Value) {
    let response = Client::new()
        .post(server.url(path))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

async fn get_authed(server: &TestServer, path: &str, token: &str) -> (StatusCode, Value) {
    let response = Client::new()
        .get(server.url(path))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Registers `email` and returns the whole answer.
async fn register(server: &TestServer, email: &str) -> Value {
    let (status, body) = post(
        server,
        "/auth/register",
        json!({"email": email, "password": "correct horse battery"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

fn access(body: &Value) -> String {
    body["accessToken"].as_str().unwrap().to_owned()
}

async fn create_machine(server: &TestServer, token: &str, name: &str) -> (StatusCode, Value) {
    let response = Client::new()
        .post(server.url("/api/machines"))
        .bearer_auth(token)
        .json(&json!({"name": name}))
        .send()
        .await
        .unwrap();
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn register_answers_the_user_and_both_tokens(db: TestDb) {
    let server = TestServer::start_on(&db, settings());
    let body = register(&server, "  Ada@Example.com ").await;
    assert_eq!(body["user"]["email"], "ada@example.com");
    assert!(uuid::Uuid::parse_str(body["user"]["id"].as_str().unwrap()).is_ok());
    assert!(!access(&body).is_empty());
    assert!(body["refreshToken"].as_str().unwrap().len() > 40);
    // The access token works at once.
    let (status, machines) = get_authed(&server, "/api/machines", &access(&body)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(machines, json!({"machines": []}));
}

async fn register_refuses_bad_emails_short_passwords_and_duplicates(db: TestDb) {
    let server = TestServer::start_on(&db, settings());
    for (email, password) in [
        ("not-an-email", "long enough password"),
        ("", "long enough password"),
        ("ada@example.com", "short"),
        ("ada@example.com", "1234567"),
    ] {
        let (status, body) = post(
            &server,
            "/auth/register",
            json!({"email": email, "password": password}),
        )
        .await;
        assert_eq!(
            status,
            StatusCode::BAD_REQUEST,
            "{email} {password}: {body}"
        );
        assert!(body["error"].is_string(), "{body}");
    }
    register(&server, "ada@example.com").await;
    let (status, body) = post(
        &server,
        "/auth/register",
        json!({"email": "ADA@example.com", "password": "another password"}),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "Email is already registered");
}

async fn register_is_forbidden_when_registration_is_closed(db: TestDb) {
    let mut s = settings();
    s.auth.registration = hermit_relay::config::Registration::Closed;
    let server = TestServer::start_on(&db, s);
    let (status, body) = post(
        &server,
        "/auth/register",
        json!({"email": "ada@example.com", "password": "correct horse battery"}),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(body["error"].is_string());
}

async fn login_answers_the_same_for_unknown_email_and_wrong_password(db: TestDb) {
    let server = TestServer::start_on(&db, settings());
    let registered = register(&server, "ada@example.com").await;

    let (status, body) = post(
        &server,
        "/auth/login",
        json!({"email": "ADA@example.com", "password": "correct horse battery"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["user"], registered["user"]);
    assert_ne!(body["refreshToken"], registered["refreshToken"]);

    let hashes = server.hash_stats.total();
    let (wrong_status, wrong) = post(
        &server,
        "/auth/login",
        json!({"email": "ada@example.com", "password": "wrong password"}),
    )
    .await;
    let (unknown_status, unknown) = post(
        &server,
        "/auth/login",
        json!({"email": "nobody@example.com", "password": "wrong password"}),
    )
    .await;
    assert_eq!(wrong_status, StatusCode::UNAUTHORIZED);
    assert_eq!(unknown_status, StatusCode::UNAUTHORIZED);
    assert_eq!(wrong, json!({"error": "Invalid credentials"}));
    assert_eq!(unknown, wrong);
    // Same cost: each answer verified exactly one argon2 hash.
    assert_eq!(server.hash_stats.total(), hashes + 2);
}

async fn refresh_rotates_and_the_old_token_is_spent(db: TestDb) {
    let server = TestServer::start_on(&db, settings());
    let first = register(&server, "ada@example.com").await;
    let (status, second) = post(
        &server,
        "/auth/refresh",
        json!({"refreshToken": first["refreshToken"]}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{second}");
    assert_ne!(second["refreshToken"], first["refreshToken"]);
    let (status, _) = get_authed(&server, "/api/machines", &access(&second)).await;
    assert_eq!(status, StatusCode::OK);

    let (status, _) = post(
        &server,
        "/auth/refresh",
        json!({"refreshToken": "hrt_not-a-real-token"}),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

async fn reusing_a_spent_refresh_token_revokes_its_family(db: TestDb) {
    // Without the retry grace (tests/db_faults.rs covers retries within it).
    let mut s = settings();
    s.auth.refresh_retry_grace_secs = 0;
    let server = TestServer::start_on(&db, s);
    let first = register(&server, "ada@example.com").await;
    let (_, second) = post(
        &server,
        "/auth/refresh",
        json!({"refreshToken": first["refreshToken"]}),
    )
    .await;
    // The spent token comes back (stolen, or replayed):
    let (status, body) = post(
        &server,
        "/auth/refresh",
        json!({"refreshToken": first["refreshToken"]}),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(body["error"].is_string());
    // ...and the whole family is revoked, including the legitimate newest token.
    let (status, _) = post(
        &server,
        "/auth/refresh",
        json!({"refreshToken": second["refreshToken"]}),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // Another login is a new family and works.
    let (status, _) = post(
        &server,
        "/auth/login",
        json!({"email": "ada@example.com", "password": "correct horse battery"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
}

async fn logout_revokes_the_refresh_token(db: TestDb) {
    let server = TestServer::start_on(&db, settings());
    let body = register(&server, "ada@example.com").await;
    let response = Client::new()
        .post(server.url("/auth/logout"))
        .json(&json!({"refreshToken": body["refreshToken"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    let (status, _) = post(
        &server,
        "/auth/refresh",
        json!({"refreshToken": body["refreshToken"]}),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // Logging out an unknown token is not an error.
    let response = Client::new()
        .post(server.url("/auth/logout"))
        .json(&json!({"refreshToken": "hrt_unknown"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
}

/// Refresh-token rows in the test's database.
fn refresh_rows(db: &TestDb) -> i64 {
    use diesel::prelude::*;
    use hermit_relay::schema::refresh_tokens;
    let pool = hermit_relay::db::Pool::new(&db.settings(settings()).database).unwrap();
    let mut conn = pool.open().unwrap();
    refresh_tokens::table.count().get_result(&mut conn).unwrap()
}

async fn expired_and_revoked_refresh_tokens_are_purged_but_spent_ones_kept(db: TestDb) {
    let mut s = settings();
    s.auth.token_purge_interval_secs = 1;
    let server = TestServer::start_on(&db, s);
    // One login's family: spent once, so two rows; the spent one must stay (reuse detection).
    let kept = register(&server, "ada@example.com").await;
    let (status, _) = post(
        &server,
        "/auth/refresh",
        json!({"refreshToken": kept["refreshToken"]}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    // Another login, logged out: revoked, so purged.
    let gone = register(&server, "bob@example.com").await;
    let response = Client::new()
        .post(server.url("/auth/logout"))
        .json(&json!({"refreshToken": gone["refreshToken"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert_eq!(refresh_rows(&db), 3);
    let mut rows = 3;
    for _ in 0..50 {
        rows = refresh_rows(&db);
        if rows == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        rows, 2,
        "the revoked token is purged, the family in use is kept"
    );
}

async fn expired_refresh_tokens_are_purged(db: TestDb) {
    let mut s = settings();
    s.auth.token_purge_interval_secs = 1;
    s.auth.refresh_token_ttl_secs = 1;
    let server = TestServer::start_on(&db, s);
    for email in ["ada@example.com", "bob@example.com"] {
        register(&server, email).await;
    }
    assert_eq!(refresh_rows(&db), 2);
    let mut rows = 2;
    for _ in 0..50 {
        rows = refresh_rows(&db);
        if rows == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(rows, 0, "expired tokens are deleted");
}

async fn machines_are_created_listed_and_deleted_by_their_owner_only(db: TestDb) {
    let server = TestServer::start_on(&db, settings());
    let ada = access(&register(&server, "ada@example.com").await);
    let bob = access(&register(&server, "bob@example.com").await);

    let (status, created) = create_machine(&server, &ada, "Ada's MacBook").await;
    assert_eq!(status, StatusCode::OK, "{created}");
    let token = created["token"].as_str().unwrap();
    assert!(
        token.starts_with("hmt_") && token.len() == 4 + 43,
        "{token}"
    );
    let machine = &created["machine"];
    assert_eq!(machine["name"], "Ada's MacBook");
    assert_eq!(machine["online"], false);
    assert_eq!(machine["sessionCount"], 0);
    let last_seen = machine["lastSeen"].as_str().unwrap();
    assert!(
        chrono::DateTime::parse_from_rfc3339(last_seen).is_ok(),
        "{last_seen}"
    );

    let (_, list) = get_authed(&server, "/api/machines", &ada).await;
    assert_eq!(list["machines"], json!([machine]));
    // Bob sees none of Ada's machines and cannot delete them.
    let (_, list) = get_authed(&server, "/api/machines", &bob).await;
    assert_eq!(list["machines"], json!([]));
    let id = machine["id"].as_str().unwrap();
    let delete = |token: String| {
        let url = server.url(&format!("/api/machines/{id}"));
        async move {
            Client::new()
                .delete(url)
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
        }
    };
    let response = delete(bob.clone()).await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    let body: Value = response.json().await.unwrap();
    assert!(body["error"].is_string());

    let response = delete(ada.clone()).await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    let response = delete(ada.clone()).await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    let (_, list) = get_authed(&server, "/api/machines", &ada).await;
    assert_eq!(list["machines"], json!([]));

    let response = Client::new()
        .delete(server.url("/api/machines/some-id"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
}

async fn machine_names_are_validated_and_unique_per_user(db: TestDb) {
    let server = TestServer::start_on(&db, settings());
    let ada = access(&register(&server, "ada@example.com").await);
    let bob = access(&register(&server, "bob@example.com").await);
    for bad in ["", "   ", &"x".repeat(65)] {
        let (status, body) = create_machine(&server, &ada, bad).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad:?}: {body}");
    }
    let (status, _) = create_machine(&server, &ada, &"é".repeat(64)).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = create_machine(&server, &ada, "studio").await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = create_machine(&server, &ada, "studio").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body["error"].is_string());
    // Names are unique per user, not globally.
    let (status, _) = create_machine(&server, &bob, "studio").await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = create_machine(&server, "not-a-token", "x").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

async fn api_routes_refuse_missing_forged_tampered_and_expired_tokens(db: TestDb) {
    let mut s = settings();
    s.auth.access_token_ttl_secs = 1;
    let server = TestServer::start_on(&db, s);
    let token = access(&register(&server, "ada@example.com").await);

    let response = Client::new()
        .get(server.url("/api/machines"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);

    // Signed by another root key.
    let stranger = hermit_relay::auth::token::AccessTokens::new(
        biscuit_auth::KeyPair::new(),
        Duration::from_secs(900),
    );
    let forged = stranger.issue(
        register(&server, "bob@example.com").await["user"]["id"]
            .as_str()
            .unwrap(),
    );
    let mut tampered = token.clone().into_bytes();
    let middle = tampered.len() / 2;
    tampered[middle] = if tampered[middle] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    for bad in [forged.as_str(), tampered.as_str(), "garbage", ""] {
        let (status, body) = get_authed(&server, "/api/machines", bad).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{bad}");
        assert!(body["error"].is_string());
    }

    let (status, _) = get_authed(&server, "/api/machines", &token).await;
    assert_eq!(status, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let (status, _) = get_authed(&server, "/api/machines", &token).await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "an expired token is refused"
    );
}

async fn bad_bodies_get_400_or_413_and_unknown_routes_404(db: TestDb) {
    let server = TestServer::start_on(&db, settings());
    let client = Client::new();
    let response = client
        .post(server.url("/auth/login"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert!(response.json::<Value>().await.unwrap()["error"].is_string());

    let (status, body) = post(&server, "/auth/login", json!({"email": "a@b.co"})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");

    let huge = json!({"email": "a@b.co", "password": "x".repeat(100_000)});
    let (status, body) = post(&server, "/auth/register", huge).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(body["error"].is_string());

    let response = client.get(server.url("/nope")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert!(response.json::<Value>().await.unwrap()["error"].is_string());

    let response = client.get(server.url("/health")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.json::<Value>().await.unwrap(),
        json!({"status": "ok"})
    );
}

async fn concurrent_registrations_and_logins_stay_within_the_hashing_bound(db: TestDb) {
    let mut s = settings();
    s.auth.max_concurrent_hashes = 2;
    s.auth.hash_queue_timeout_secs = 60;
    let server = std::sync::Arc::new(TestServer::start_on(&db, s));
    let mut tasks = Vec::new();
    for i in 0..50 {
        let server = std::sync::Arc::clone(&server);
        tasks.push(tokio::spawn(async move {
            let email = format!("user{i}@example.com");
            let password = "correct horse battery";
            let (status, body) = post(
                &server,
                "/auth/register",
                json!({"email": email, "password": password}),
            )
            .await;
            assert_eq!(status, StatusCode::OK, "{body}");
            let (status, body) = post(
                &server,
                "/auth/login",
                json!({"email": email, "password": password}),
            )
            .await;
            assert_eq!(status, StatusCode::OK, "{body}");
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(server.hash_stats.total(), 100);
    assert!(
        server.hash_stats.peak() <= 2,
        "peak {}",
        server.hash_stats.peak()
    );
    assert_eq!(
        server.hash_stats.peak(),
        2,
        "the bound was reached, so it was tested"
    );
}

async fn ready_answers_200_when_the_database_is_reachable(db: TestDb) {
    let server = TestServer::start_on(&db, settings());
    let response = reqwest::get(server.url("/ready")).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_answers_503_while_the_database_is_unreachable() {
    let db = TestDb::sqlite();
    let mut s = db.settings(settings());
    // Nothing listens on port 9; migrations are off so the relay starts anyway.
    s.database.url = "postgres://nobody@127.0.0.1:9/none".into();
    s.database.run_migrations = false;
    s.database.connect_timeout_secs = 1;
    let server = TestServer::start_with(s);
    let response = reqwest::get(server.url("/ready")).await.unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = response.json().await.unwrap();
    assert!(body["error"].is_string());
    let response = reqwest::get(server.url("/health")).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hashing_requests_past_the_bound_and_its_queue_timeout_get_503() {
    let db = TestDb::sqlite();
    let mut s = settings();
    s.auth.max_concurrent_hashes = 1;
    s.auth.hash_queue_timeout_secs = 0;
    let server = std::sync::Arc::new(TestServer::start_on(&db, s));
    let mut tasks = Vec::new();
    for i in 0..20 {
        let server = std::sync::Arc::clone(&server);
        tasks.push(tokio::spawn(async move {
            post(
                &server,
                "/auth/register",
                json!({"email": format!("u{i}@example.com"), "password": "correct horse battery"}),
            )
            .await
        }));
    }
    let mut statuses = Vec::new();
    for task in tasks {
        let (status, body) = task.await.unwrap();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            assert!(body["error"].is_string(), "{body}");
        }
        statuses.push(status);
    }
    assert!(statuses.contains(&StatusCode::OK), "{statuses:?}");
    assert!(
        statuses.contains(&StatusCode::SERVICE_UNAVAILABLE),
        "20 hashes at once with room for one and no queue: some must be refused: {statuses:?}"
    );
    assert!(server.hash_stats.peak() <= 1);
}
