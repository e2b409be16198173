//! Accounts and tokens under a hostile client (issue 15): each test failed before its fix.
//! Real HTTP and WebSockets, on SQLite and on PostgreSQL.

#[macro_use]
mod common;

use std::net::IpAddr;

use biscuit_auth::builder::BlockBuilder;
use biscuit_auth::UnverifiedBiscuit;
use common::*;
use reqwest::{Client, StatusCode};
use serde_json::{json, Value};

on_both_backends!(
    logout_is_rate_limited_like_the_other_auth_routes,
    guesses_at_one_account_are_throttled_from_any_address_but_not_from_its_known_browser,
    tokens_with_appended_blocks_are_refused_on_rest_and_websocket,
    a_device_token_is_no_access_token,
    tokens_of_an_accepted_previous_key_keep_working_after_a_rotation,
    a_deleted_users_token_is_refused_everywhere_with_401,
    trivially_weak_passwords_are_refused_with_a_clear_400,
    machines_per_user_are_capped_even_when_created_at_once,
    machine_names_refuse_invisible_characters_and_are_unique_once_normalised,
    nul_bytes_anywhere_get_400_or_404_never_500,
    the_machine_cap_holds_for_creations_racing_on_separate_connections,
);

const PASSWORD: &str = "correct horse battery";

/// A client whose requests come from `from` (any 127.0.0.x).
fn client_from(from: &str) -> Client {
    Client::builder()
        .local_address(from.parse::<IpAddr>().unwrap())
        .build()
        .unwrap()
}

async fn post_with(
    client: &Client,
    server: &TestServer,
    path: &str,
    body: Value,
) -> (StatusCode, Value) {
    let response = client
        .post(server.url(path))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

async fn post(server: &TestServer, path: &str, body: Value) -> (StatusCode, Value) {
    post_with(&Client::new(), server, path, body).await
}

/// Registers `email` and returns the whole answer.
async fn register(server: &TestServer, email: &str) -> Value {
    let (status, body) = post(
        server,
        "/auth/register",
        json!({"email": email, "password": PASSWORD}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

async fn logout_is_rate_limited_like_the_other_auth_routes(db: TestDb) {
    let mut s = settings();
    s.limits.auth_attempts_per_minute = 3;
    let server = TestServer::start_on(&db, s);
    let client = client_from("127.0.0.21");
    for _ in 0..3 {
        let (status, _) = post_with(
            &client,
            &server,
            "/auth/logout",
            json!({"refreshToken": "hrt_unknown"}),
        )
        .await;
        assert_eq!(status, StatusCode::NO_CONTENT);
    }
    let (status, body) = post_with(
        &client,
        &server,
        "/auth/logout",
        json!({"refreshToken": "hrt_unknown"}),
    )
    .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert!(body["error"].is_string(), "{body}");
    // Another address is not affected.
    let (status, _) = post_with(
        &client_from("127.0.0.22"),
        &server,
        "/auth/logout",
        json!({"refreshToken": "hrt_unknown"}),
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
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

async fn ws_auth(server: &TestServer, token: &str) -> Value {
    let mut web = server.connect("/ws/client").await;
    send(&mut web, json!({"type": "auth", "token": token})).await;
    recv(&mut web).await
}

fn login_body(email: &str, password: &str, device: Option<&Value>) -> Value {
    let mut body = json!({"email": email, "password": password});
    if let Some(device) = device {
        body["deviceToken"] = device.clone();
    }
    body
}

async fn guesses_at_one_account_are_throttled_from_any_address_but_not_from_its_known_browser(
    db: TestDb,
) {
    let mut s = settings();
    s.limits.login_failures_per_account_per_hour = 5;
    s.limits.auth_attempts_per_minute = 30;
    let server = TestServer::start_on(&db, s);
    let ada = register(&server, "ada@example.com").await;
    let device = &ada["deviceToken"];
    assert!(device.is_string(), "{ada}");
    register(&server, "bob@example.com").await;

    // Ten addresses, one guess each: far inside every per-address limit.
    let mut answers = Vec::new();
    for a in 1..=10 {
        let client = client_from(&format!("127.0.3.{a}"));
        let body = login_body("ADA@example.com", &format!("guess {a}"), None);
        answers.push(post_with(&client, &server, "/auth/login", body).await);
    }
    let statuses: Vec<u16> = answers.iter().map(|(s, _)| s.as_u16()).collect();
    assert_eq!(statuses, [401, 401, 401, 401, 401, 429, 429, 429, 429, 429]);
    assert!(answers[9].1["error"].is_string(), "{:?}", answers[9]);

    // The budget is spent: even the right password from a new browser waits...
    let stranger = client_from("127.0.3.11");
    let (status, _) = post_with(
        &stranger,
        &server,
        "/auth/login",
        login_body("ada@example.com", PASSWORD, None),
    )
    .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    // ...but the browser that signed in before is let through, from any address.
    let (status, body) = post_with(
        &stranger,
        &server,
        "/auth/login",
        login_body("ada@example.com", PASSWORD, Some(device)),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // A device token of another account does not help.
    let (status, _) = post_with(
        &stranger,
        &server,
        "/auth/login",
        login_body("bob@example.com", "wrong password", Some(device)),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // Other accounts are not affected, from the same addresses.
    let (status, _) = post_with(
        &client_from("127.0.3.1"),
        &server,
        "/auth/login",
        login_body("bob@example.com", PASSWORD, None),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
}

/// `token` with `blocks` empty blocks appended, as any holder can without a key.
fn bloated(token: &str, blocks: usize) -> String {
    let mut token = UnverifiedBiscuit::from_base64(token).unwrap();
    for _ in 0..blocks {
        token = token.append(BlockBuilder::new()).unwrap();
    }
    token.to_base64().unwrap()
}

async fn tokens_with_appended_blocks_are_refused_on_rest_and_websocket(db: TestDb) {
    let server = TestServer::start_on(&db, settings());
    let ada = register(&server, "ada@example.com").await;
    let access = ada["accessToken"].as_str().unwrap();
    let (status, _) = get_authed(&server, "/api/machines", access).await;
    assert_eq!(status, StatusCode::OK);
    for blocks in [1, 50] {
        let token = bloated(access, blocks);
        let (status, body) = get_authed(&server, "/api/machines", &token).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{blocks} blocks: {body}");
        assert!(body["error"].is_string());
        let answer = ws_auth(&server, &token).await;
        assert_eq!(answer["code"], "INVALID_TOKEN", "{blocks} blocks: {answer}");
    }
}

async fn a_device_token_is_no_access_token(db: TestDb) {
    let server = TestServer::start_on(&db, settings());
    let ada = register(&server, "ada@example.com").await;
    let device = ada["deviceToken"].as_str().unwrap();
    let (status, _) = get_authed(&server, "/api/machines", device).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let answer = ws_auth(&server, device).await;
    assert_eq!(answer["code"], "INVALID_TOKEN", "{answer}");
    // And an access token is no device token: it does not skip the throttle.
    let mut s = settings();
    s.limits.login_failures_per_account_per_hour = 1;
    drop(server);
    let server = TestServer::start_on(&db, s);
    let access = &ada["accessToken"];
    let (status, _) = post(
        &server,
        "/auth/login",
        login_body("ada@example.com", "wrong password", Some(access)),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = post(
        &server,
        "/auth/login",
        login_body("ada@example.com", PASSWORD, Some(access)),
    )
    .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
}

async fn tokens_of_an_accepted_previous_key_keep_working_after_a_rotation(db: TestDb) {
    let server = TestServer::start_on(&db, settings());
    let ada = register(&server, "ada@example.com").await;
    let access = ada["accessToken"].as_str().unwrap().to_owned();
    let old_key = hermit_relay::auth::token::public_key_of(&db.key_path())
        .unwrap()
        .unwrap();
    drop(server);

    // The operator points the relay at a new key file and lists the old public key.
    let new_key_file = db.key_path().with_file_name("next.key");
    let mut s = db.settings(settings());
    s.auth.private_key_file = new_key_file.clone();
    s.auth.accepted_public_keys = vec![old_key];
    let rotated = TestServer::start_with(s.clone());
    let (status, _) = get_authed(&rotated, "/api/machines", &access).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "a token of the previous key still works"
    );
    let (_, fresh) = post(
        &rotated,
        "/auth/login",
        login_body("ada@example.com", PASSWORD, None),
    )
    .await;
    let fresh = fresh["accessToken"].as_str().unwrap().to_owned();
    let (status, _) = get_authed(&rotated, "/api/machines", &fresh).await;
    assert_eq!(status, StatusCode::OK);
    drop(rotated);

    // After the overlap the old key is removed: its tokens are refused, the new ones work.
    s.auth.accepted_public_keys.clear();
    let retired = TestServer::start_with(s);
    let (status, _) = get_authed(&retired, "/api/machines", &access).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = get_authed(&retired, "/api/machines", &fresh).await;
    assert_eq!(status, StatusCode::OK);
}

/// Runs `sql` on the test's database, behind the relay's back.
fn execute(db: &TestDb, sql: &str) {
    use diesel::RunQueryDsl;
    let pool = hermit_relay::db::pool(&db.url, 1, std::time::Duration::from_secs(5)).unwrap();
    let mut conn = pool.get().unwrap();
    diesel::sql_query(sql).execute(&mut *conn).unwrap();
}

async fn a_deleted_users_token_is_refused_everywhere_with_401(db: TestDb) {
    let server = TestServer::start_on(&db, settings());
    let ada = register(&server, "ada@example.com").await;
    let access = ada["accessToken"].as_str().unwrap();
    let response = Client::new()
        .post(server.url("/api/machines"))
        .bearer_auth(access)
        .json(&json!({"name": "studio"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let machine: Value = response.json().await.unwrap();
    let machine_id = machine["machine"]["id"].as_str().unwrap();

    let id = ada["user"]["id"].as_str().unwrap();
    execute(&db, &format!("DELETE FROM users WHERE id = '{id}'"));

    let (status, body) = get_authed(&server, "/api/machines", access).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert!(body["error"].is_string());
    let response = Client::new()
        .post(server.url("/api/machines"))
        .bearer_auth(access)
        .json(&json!({"name": "laptop"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let response = Client::new()
        .delete(server.url(&format!("/api/machines/{machine_id}")))
        .bearer_auth(access)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let answer = ws_auth(&server, access).await;
    assert_eq!(answer["code"], "USER_NOT_FOUND", "{answer}");
    let (status, _) = post(
        &server,
        "/auth/refresh",
        json!({"refreshToken": ada["refreshToken"]}),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

async fn trivially_weak_passwords_are_refused_with_a_clear_400(db: TestDb) {
    let server = TestServer::start_on(&db, settings());
    for weak in [
        "12345678",
        "password",
        "        ",
        "correct\u{0}horse",
        "Iloveyou",
    ] {
        let (status, body) = post(
            &server,
            "/auth/register",
            json!({"email": "ada@example.com", "password": weak}),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{weak:?}: {body}");
        let text = body["error"].as_str().unwrap();
        assert!(
            text.contains("assword") || text.contains("common"),
            "{text}"
        );
    }
    register(&server, "ada@example.com").await;
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

async fn machines_per_user_are_capped_even_when_created_at_once(db: TestDb) {
    let mut s = settings();
    s.limits.max_machines_per_user = 3;
    let server = std::sync::Arc::new(TestServer::start_on(&db, s));
    let ada = register(&server, "ada@example.com").await;
    let access = ada["accessToken"].as_str().unwrap().to_owned();
    // Ten at once: exactly three may win.
    let mut tasks = Vec::new();
    for i in 0..10 {
        let (server, access) = (std::sync::Arc::clone(&server), access.clone());
        tasks.push(tokio::spawn(async move {
            create_machine(&server, &access, &format!("mac {i}")).await
        }));
    }
    let mut created = 0;
    for task in tasks {
        let (status, body) = task.await.unwrap();
        match status {
            StatusCode::OK => created += 1,
            StatusCode::BAD_REQUEST => {
                assert!(body["error"].as_str().unwrap().contains("most"), "{body}")
            }
            other => panic!("{other}: {body}"),
        }
    }
    assert_eq!(created, 3);
    let (status, _) = create_machine(&server, &access, "one more").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // Another user has a cap of their own.
    let bob = register(&server, "bob@example.com").await;
    let (status, _) = create_machine(&server, bob["accessToken"].as_str().unwrap(), "mac").await;
    assert_eq!(status, StatusCode::OK);
}

async fn machine_names_refuse_invisible_characters_and_are_unique_once_normalised(db: TestDb) {
    let server = TestServer::start_on(&db, settings());
    let ada = register(&server, "ada@example.com").await;
    let access = ada["accessToken"].as_str().unwrap();
    for bad in [
        "studio\u{202e}oiduts",
        "stu\u{200b}dio",
        "studio\u{7}",
        "\u{feff}studio",
    ] {
        let (status, body) = create_machine(&server, access, bad).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad:?}: {body}");
        assert!(body["error"].is_string());
    }
    // "Café" typed with a combining accent, then precomposed: one name.
    let (status, body) = create_machine(&server, access, "Cafe\u{301}").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["machine"]["name"], "Caf\u{e9}");
    let (status, body) = create_machine(&server, access, "Caf\u{e9}").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
}

async fn nul_bytes_anywhere_get_400_or_404_never_500(db: TestDb) {
    let server = TestServer::start_on(&db, settings());
    let ada = register(&server, "ada@example.com").await;
    let access = ada["accessToken"].as_str().unwrap();
    let client = Client::new();
    for path in [
        "/api/machines/%00",
        "/api/machines/a%00b",
        "/api/machines/%FF",
    ] {
        let response = client
            .delete(server.url(path))
            .bearer_auth(access)
            .send()
            .await
            .unwrap();
        let status = response.status();
        assert!(
            [StatusCode::BAD_REQUEST, StatusCode::NOT_FOUND].contains(&status),
            "{path}: {status}"
        );
        let body: Value = response.json().await.unwrap();
        assert!(body["error"].is_string(), "{path}: {body}");
    }
    let nul = "a\u{0}b";
    let (status, _) = create_machine(&server, access, nul).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = post(
        &server,
        "/auth/register",
        json!({"email": "b\u{0}b@example.com", "password": PASSWORD}),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    for (path, body, expected) in [
        (
            "/auth/login",
            json!({"email": "ada\u{0}@example.com", "password": PASSWORD}),
            StatusCode::UNAUTHORIZED,
        ),
        (
            "/auth/login",
            json!({"email": "ada@example.com", "password": "correct\u{0}horse"}),
            StatusCode::UNAUTHORIZED,
        ),
        (
            "/auth/refresh",
            json!({"refreshToken": "hrt_\u{0}"}),
            StatusCode::UNAUTHORIZED,
        ),
        (
            "/auth/logout",
            json!({"refreshToken": "hrt_\u{0}"}),
            StatusCode::NO_CONTENT,
        ),
    ] {
        let (status, answer) = post(&server, path, body.clone()).await;
        assert_eq!(status, expected, "{path} {body}: {answer}");
    }
    let mut web = server.connect("/ws/client").await;
    send(&mut web, json!({"type": "auth", "token": access})).await;
    assert_eq!(recv(&mut web).await["type"], "authenticated");
    send(
        &mut web,
        json!({"type": "list_sessions", "machineId": "\u{0}"}),
    )
    .await;
    expect_error(&mut web, "MACHINE_NOT_FOUND").await;
}

/// Below HTTP: twenty creations at once on eight pooled connections, so the count and the
/// insert of one really interleave with the others' unless the owner's row serialises them.
async fn the_machine_cap_holds_for_creations_racing_on_separate_connections(db: TestDb) {
    use hermit_relay::relay::account::directory;
    let pool = hermit_relay::db::pool(&db.url, 8, std::time::Duration::from_secs(10)).unwrap();
    hermit_relay::startup::migrate(&pool).unwrap();
    let user = uuid::Uuid::new_v4().to_string();
    execute(
        &db,
        &format!(
            "INSERT INTO users (id, email, password_hash, created_at) \
             VALUES ('{user}', 'ada@example.com', 'x', '2026-01-01 00:00:00')"
        ),
    );
    let user = hermit_relay::ids::UserId::from(user);
    let mut tasks = Vec::new();
    for i in 0..20 {
        let (pool, user) = (pool.clone(), user.clone());
        tasks.push(tokio::spawn(async move {
            directory::create(&pool, &user, &format!("mac {i}"), 3)
                .await
                .is_ok()
        }));
    }
    let mut created = 0;
    for task in tasks {
        created += usize::from(task.await.unwrap());
    }
    assert_eq!(created, 3);
}
