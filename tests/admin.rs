//! The admin commands, run as the real binary against the database a running relay uses,
//! on SQLite and on PostgreSQL; and who may register.

#[macro_use]
mod common;

use std::io::Write;
use std::process::{Command, Output, Stdio};

use common::account::{self, Owner};
use common::*;
use hermit_relay::config::{Registration, Settings};
use reqwest::{Client, StatusCode};
use serde_json::{json, Value};

on_both_backends!(
    user_commands_work_on_the_database_of_a_running_relay,
    a_disabled_user_loses_rest_and_websocket_access_until_enabled,
    a_deleted_user_loses_rest_and_websocket_access,
    revoking_a_machine_drops_its_live_agent,
    revoking_sessions_refuses_every_refresh_token_of_the_user,
    registration_follows_the_allowlist,
);

const PASSWORD: &str = "correct horse battery";

/// Test settings with a quick admin watcher.
fn quick() -> Settings {
    let mut s = settings();
    s.admin.poll_interval_ms = 100;
    s
}

/// Runs `hermit-relay ARGS` on `db`, with `stdin` piped in.
fn cli(db: &TestDb, args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_hermit-relay"))
        .args(args)
        .env("HERMIT__DATABASE__URL", &db.url)
        .env("HERMIT__AUTH__PRIVATE_KEY_FILE", db.key_path())
        .env("HERMIT__DATABASE__CONNECT_TIMEOUT_SECS", "2")
        .env_remove("RUST_LOG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// Runs a command that must succeed; its standard output.
fn ok(db: &TestDb, args: &[&str], stdin: &str) -> String {
    let out = cli(db, args, stdin);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{args:?} failed: {stderr}");
    String::from_utf8(out.stdout).unwrap()
}

/// Runs a command that must fail; its standard error (one `error:` line).
fn fails(db: &TestDb, args: &[&str], stdin: &str) -> String {
    let out = cli(db, args, stdin);
    assert!(!out.status.success(), "{args:?} succeeded");
    assert_eq!(out.status.code(), Some(1), "{args:?}");
    let stderr = String::from_utf8(out.stderr).unwrap();
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "one error line: {stderr}");
    errors[0].to_owned()
}

fn json_of(text: &str) -> Value {
    serde_json::from_str(text.trim()).unwrap_or_else(|_| panic!("not JSON: {text}"))
}

async fn post(server: &TestServer, path: &str, body: Value) -> (StatusCode, Value) {
    let response = Client::new()
        .post(server.url(path))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn login(server: &TestServer, email: &str, password: &str) -> (StatusCode, Value) {
    post(
        server,
        "/auth/login",
        json!({"email": email, "password": password}),
    )
    .await
}

async fn machines_status(server: &TestServer, access: &str) -> StatusCode {
    Client::new()
        .get(server.url("/api/machines"))
        .bearer_auth(access)
        .send()
        .await
        .unwrap()
        .status()
}

/// A user with a machine, its agent online and a client attached to its session.
async fn online_owner(server: &TestServer, email: &str) -> (Owner, Ws, Ws) {
    let owner = account::owner(server, email).await;
    let agent = account::agent(server, &owner, &["s1"]).await;
    let mut client = account::client(server, &owner.access).await;
    account::attach(&mut client, &owner, "s1").await;
    (owner, agent, client)
}

async fn user_commands_work_on_the_database_of_a_running_relay(db: TestDb) {
    let mut s = quick();
    s.auth.registration = Registration::Closed;
    let server = TestServer::start_on(&db, s);

    // The first account of a closed relay.
    let (status, _) = post(
        &server,
        "/auth/register",
        json!({"email": "ada@example.com", "password": PASSWORD}),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let added = ok(
        &db,
        &["users", "add", "Ada@Example.com"],
        &format!("{PASSWORD}\n"),
    );
    assert!(added.starts_with("added ada@example.com ("), "{added}");
    let (status, body) = login(&server, "ada@example.com", PASSWORD).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let refresh = body["refreshToken"].as_str().unwrap().to_owned();

    let listed = json_of(&ok(&db, &["users", "list", "--json"], ""));
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(listed[0]["email"], "ada@example.com");
    assert_eq!(listed[0]["status"], "active");
    assert_eq!(listed[0]["machines"], 0);
    let table = ok(&db, &["users", "list"], "");
    assert!(table.starts_with("EMAIL"), "{table}");
    assert!(table.contains("ada@example.com  active"), "{table}");

    // A new password: the old one and the old sessions stop working.
    let set = json_of(&ok(
        &db,
        &["users", "set-password", "ada@example.com", "--json"],
        "a brand new password\n",
    ));
    assert_eq!(set["user"]["email"], "ada@example.com");
    assert_eq!(set["revokedSessions"], 1);
    assert_eq!(
        login(&server, "ada@example.com", PASSWORD).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        login(&server, "ada@example.com", "a brand new password")
            .await
            .0,
        StatusCode::OK
    );
    let (status, _) = post(&server, "/auth/refresh", json!({"refreshToken": refresh})).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // Bad input and unknown users: one clear line, exit 1.
    let err = fails(
        &db,
        &["users", "add", "ada@example.com"],
        "another password\n",
    );
    assert!(err.contains("already exists"), "{err}");
    let err = fails(&db, &["users", "add", "not-an-email"], "another password\n");
    assert!(err.contains("not an email address"), "{err}");
    let err = fails(&db, &["users", "add", "bob@example.com"], "short\n");
    assert!(err.contains("at least 8 characters"), "{err}");
    let err = fails(&db, &["users", "disable", "nobody@example.com"], "");
    assert_eq!(err, "error: no user with the email nobody@example.com");
    let err = fails(
        &db,
        &["users", "set-password", "nobody@example.com"],
        "long enough!\n",
    );
    assert!(err.contains("no user with the email"), "{err}");
}

async fn a_disabled_user_loses_rest_and_websocket_access_until_enabled(db: TestDb) {
    let server = TestServer::start_on(&db, quick());
    let (owner, mut agent, mut client) = online_owner(&server, "ada@example.com").await;
    let (_, signed_in) = login(&server, "ada@example.com", PASSWORD).await;
    let refresh = signed_in["refreshToken"].as_str().unwrap().to_owned();

    let disabled = json_of(&ok(
        &db,
        &["users", "disable", "ada@example.com", "--json"],
        "",
    ));
    assert_eq!(disabled["user"]["status"], "disabled");

    // Its open sockets are closed within a few polls.
    let told = account::recv_type(&mut client, "error").await;
    assert_eq!(told["code"], "USER_NOT_FOUND", "{told}");
    assert_eq!(expect_closed(&mut client, WAIT).await, Some(1008));
    assert_eq!(expect_closed(&mut agent, WAIT).await, Some(1008));
    // Its unexpired access token, its refresh token, its password: all refused.
    assert_eq!(
        machines_status(&server, &owner.access).await,
        StatusCode::UNAUTHORIZED
    );
    let (status, _) = post(&server, "/auth/refresh", json!({"refreshToken": refresh})).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, body) = login(&server, "ada@example.com", PASSWORD).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(body["error"], "This account is disabled");
    // A new client socket and a new agent are refused.
    let mut again = server.connect("/ws/client").await;
    send(&mut again, json!({"type": "auth", "token": owner.access})).await;
    expect_error(&mut again, "USER_NOT_FOUND").await;
    let mut mac = server.connect("/ws/agent").await;
    send(
        &mut mac,
        json!({"type": "register", "token": owner.machine_token}),
    )
    .await;
    assert_eq!(recv(&mut mac).await["success"], false);

    let enabled = ok(&db, &["users", "enable", "ada@example.com"], "");
    assert!(enabled.starts_with("enabled ada@example.com"), "{enabled}");
    let (status, body) = login(&server, "ada@example.com", PASSWORD).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        machines_status(&server, &owner.access).await,
        StatusCode::OK
    );
    account::agent(&server, &owner, &[]).await;
}

async fn a_deleted_user_loses_rest_and_websocket_access(db: TestDb) {
    let server = TestServer::start_on(&db, quick());
    let (owner, mut agent, mut client) = online_owner(&server, "ada@example.com").await;
    let (bob, _bobs_agent, mut bobs_client) = online_owner(&server, "bob@example.com").await;

    ok(&db, &["users", "delete", "ada@example.com"], "");
    let told = account::recv_type(&mut client, "error").await;
    assert_eq!(told["code"], "USER_NOT_FOUND", "{told}");
    assert_eq!(expect_closed(&mut client, WAIT).await, Some(1008));
    assert_eq!(expect_closed(&mut agent, WAIT).await, Some(1008));
    assert_eq!(
        machines_status(&server, &owner.access).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        login(&server, "ada@example.com", PASSWORD).await.0,
        StatusCode::UNAUTHORIZED
    );
    let mut again = server.connect("/ws/client").await;
    send(&mut again, json!({"type": "auth", "token": owner.access})).await;
    expect_error(&mut again, "USER_NOT_FOUND").await;

    let users = json_of(&ok(&db, &["users", "list", "--json"], ""));
    assert_eq!(users.as_array().unwrap().len(), 1);
    assert_eq!(users[0]["email"], "bob@example.com");
    let machines = json_of(&ok(&db, &["machines", "list", "--json"], ""));
    assert_eq!(machines.as_array().unwrap().len(), 1, "{machines}");
    // Everyone else is untouched.
    assert_usable(&mut bobs_client).await;
    assert_eq!(machines_status(&server, &bob.access).await, StatusCode::OK);
    let err = fails(&db, &["users", "delete", "ada@example.com"], "");
    assert!(
        err.contains("no user with the email ada@example.com"),
        "{err}"
    );
}

async fn revoking_a_machine_drops_its_live_agent(db: TestDb) {
    let server = TestServer::start_on(&db, quick());
    let (owner, mut agent, mut client) = online_owner(&server, "ada@example.com").await;
    let other = account::owner(&server, "bob@example.com").await;

    let all = json_of(&ok(&db, &["machines", "list", "--json"], ""));
    assert_eq!(all.as_array().unwrap().len(), 2, "{all}");
    let mine = json_of(&ok(
        &db,
        &["machines", "list", "--user", "ada@example.com", "--json"],
        "",
    ));
    assert_eq!(mine.as_array().unwrap().len(), 1);
    assert_eq!(mine[0]["id"], owner.machine_id.as_str());
    assert_eq!(mine[0]["email"], "ada@example.com");
    assert!(ok(&db, &["machines", "list"], "").contains(&owner.machine_id));

    let revoked = ok(&db, &["machines", "revoke", &owner.machine_id], "");
    assert!(
        revoked.starts_with(&format!("revoked {}", owner.machine_id)),
        "{revoked}"
    );
    assert_eq!(expect_closed(&mut agent, WAIT).await, Some(1008));
    let ended = account::recv_type(&mut client, "session_ended").await;
    assert_eq!(ended["sessionId"], "s1");
    assert_eq!(
        account::machines_of(&server, &owner.access).await,
        json!([])
    );
    let mut mac = server.connect("/ws/agent").await;
    send(
        &mut mac,
        json!({"type": "register", "token": owner.machine_token}),
    )
    .await;
    assert_eq!(recv(&mut mac).await["success"], false);
    // The other user's machine stays.
    assert_eq!(
        account::machines_of(&server, &other.access).await[0]["id"],
        other.machine_id.as_str()
    );
    let err = fails(&db, &["machines", "revoke", "no-such-machine"], "");
    assert_eq!(err, "error: no machine with the id no-such-machine");
    let err = fails(
        &db,
        &["machines", "list", "--user", "nobody@example.com"],
        "",
    );
    assert!(err.contains("no user with the email"), "{err}");
}

async fn revoking_sessions_refuses_every_refresh_token_of_the_user(db: TestDb) {
    let server = TestServer::start_on(&db, quick());
    account::owner(&server, "ada@example.com").await;
    let (_, first) = login(&server, "ada@example.com", PASSWORD).await;
    let (_, second) = login(&server, "ada@example.com", PASSWORD).await;

    let out = ok(
        &db,
        &["sessions", "revoke", "--user", "ada@example.com"],
        "",
    );
    // Register's session and the two logins.
    assert_eq!(out, "ada@example.com: 3 session(s) revoked\n");
    for body in [first, second] {
        let (status, _) = post(
            &server,
            "/auth/refresh",
            json!({"refreshToken": body["refreshToken"]}),
        )
        .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    // Signing in again works.
    assert_eq!(
        login(&server, "ada@example.com", PASSWORD).await.0,
        StatusCode::OK
    );
    let json = json_of(&ok(
        &db,
        &["sessions", "revoke", "--user", "ada@example.com", "--json"],
        "",
    ));
    assert_eq!(json["revokedSessions"], 1);
    let err = fails(
        &db,
        &["sessions", "revoke", "--user", "nobody@example.com"],
        "",
    );
    assert!(err.contains("no user with the email"), "{err}");
}

async fn registration_follows_the_allowlist(db: TestDb) {
    let mut s = quick();
    s.auth.registration = Registration::Allowlist;
    s.auth.allowed_emails = vec!["ada@example.com".into(), "*@team.example".into()];
    let server = TestServer::start_on(&db, s);
    let register = |email: &'static str| {
        post(
            &server,
            "/auth/register",
            json!({"email": email, "password": PASSWORD}),
        )
    };
    assert_eq!(register("Ada@Example.com").await.0, StatusCode::OK);
    assert_eq!(register("bob@team.example").await.0, StatusCode::OK);
    for refused in [
        "eve@example.com",
        "eve@evil-team.example",
        "bob@team.example.org",
    ] {
        let (status, body) = register(refused).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{refused}");
        assert!(
            body["error"]
                .as_str()
                .unwrap()
                .contains("invited addresses"),
            "{body}"
        );
    }
}

#[test]
fn an_unreachable_database_is_a_clear_error_and_exit_1() {
    let out = Command::new(env!("CARGO_BIN_EXE_hermit-relay"))
        .args(["users", "list"])
        .env(
            "HERMIT__DATABASE__URL",
            "postgres://relay:s3cret@127.0.0.1:1/hermit",
        )
        .env("HERMIT__DATABASE__CONNECT_TIMEOUT_SECS", "1")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.contains(
            "error: cannot reach the database at postgres://relay:***@127.0.0.1:1/hermit"
        ),
        "{stderr}"
    );
    assert!(!stderr.contains("s3cret"), "{stderr}");
    assert!(out.stdout.is_empty());
}

#[test]
fn a_usage_error_exits_2() {
    let out = Command::new(env!("CARGO_BIN_EXE_hermit-relay"))
        .args(["users", "frobnicate"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}
