//! The audit log of the real binary (`audit.target = "file"`), on SQLite and PostgreSQL:
//! each security-relevant action is one event, with ids and addresses and never a
//! password, token or payload; admin commands append to the same file; SIGHUP reopens it.

#[macro_use]
mod common;
#[path = "support/process.rs"]
mod process;

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use process::Relay;
use reqwest::{Client, StatusCode};
use serde_json::{json, Value};

on_both_backends!(every_security_event_is_audited_once_without_secrets);

const PASSWORD: &str = "ada's secret passphrase";
const BOB_PASSWORD: &str = "bob's secret passphrase";
const NEW_PASSWORD: &str = "bob's newer passphrase";

async fn post(relay: &Relay, path: &str, token: Option<&str>, body: Value) -> (StatusCode, Value) {
    let mut request = Client::new().post(relay.url(path)).json(&body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn ws(relay: &Relay, path: &str) -> Ws {
    tokio_tungstenite::connect_async(relay.ws_url(path))
        .await
        .unwrap()
        .0
}

async fn agent(relay: &Relay, token: &str) -> Ws {
    let mut agent = ws(relay, "/ws/agent").await;
    send(&mut agent, json!({"type": "register", "token": token})).await;
    assert_eq!(recv(&mut agent).await["success"], true);
    assert_eq!(recv(&mut agent).await["type"], "list_sessions");
    agent
}

/// The audit file's events, once it holds at least `count`.
async fn events(path: &Path, count: usize) -> Vec<Value> {
    let started = Instant::now();
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let events: Vec<Value> = text
            .lines()
            .map(|line| serde_json::from_str(line).unwrap_or_else(|_| panic!("not JSON: {line}")))
            .collect();
        if events.len() >= count {
            return events;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{} of {count} events:\n{text}",
            events.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn every_security_event_is_audited_once_without_secrets(db: TestDb) {
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit/audit.log");
    // No retry grace: the second use of a refresh token below is reuse at once.
    let config = "[audit]\ntarget = \"file\"\n\n[admin]\npoll_interval_ms = 100\n\n\
                  [limits]\njoin_attempts_per_minute = 3\n\n[log]\nformat = \"json\"\n\n\
                  [auth]\nrefresh_retry_grace_secs = 0\n";
    let relay = Relay::start(
        dir.path(),
        config,
        &[
            ("HERMIT__DATABASE__URL", &db.url),
            ("HERMIT__AUDIT__FILE", &audit.display().to_string()),
        ],
    )
    .await;
    let mut secrets = vec![
        PASSWORD.to_owned(),
        BOB_PASSWORD.to_owned(),
        NEW_PASSWORD.to_owned(),
    ];

    // Accounts: register, a refused and a good login, a refresh token used twice.
    let (status, ada) = post(
        &relay,
        "/auth/register",
        None,
        json!({"email": "ada@example.com", "password": PASSWORD}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let user_id = ada["user"]["id"].as_str().unwrap().to_owned();
    let (status, _) = post(
        &relay,
        "/auth/login",
        None,
        json!({"email": "ada@example.com", "password": "wrong password"}),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (_, login) = post(
        &relay,
        "/auth/login",
        None,
        json!({"email": "ada@example.com", "password": PASSWORD}),
    )
    .await;
    let access = login["accessToken"].as_str().unwrap().to_owned();
    let refresh = login["refreshToken"].as_str().unwrap().to_owned();
    let (_, rotated) = post(
        &relay,
        "/auth/refresh",
        None,
        json!({"refreshToken": refresh}),
    )
    .await;
    let (status, _) = post(
        &relay,
        "/auth/refresh",
        None,
        json!({"refreshToken": refresh}),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    for token in [
        &ada["accessToken"],
        &ada["refreshToken"],
        &rotated["accessToken"],
    ] {
        secrets.push(token.as_str().unwrap().to_owned());
    }
    secrets.extend([access.clone(), refresh]);
    secrets.push(rotated["refreshToken"].as_str().unwrap().to_owned());

    // Machines, agents (online, replaced, offline), a client attaching and detaching.
    let (_, created) = post(
        &relay,
        "/api/machines",
        Some(&access),
        json!({"name": "mac"}),
    )
    .await;
    let machine = created["machine"]["id"].as_str().unwrap().to_owned();
    let machine_token = created["token"].as_str().unwrap().to_owned();
    let (_, spare) = post(
        &relay,
        "/api/machines",
        Some(&access),
        json!({"name": "spare"}),
    )
    .await;
    let spare_id = spare["machine"]["id"].as_str().unwrap().to_owned();
    secrets.extend([
        machine_token.clone(),
        spare["token"].as_str().unwrap().to_owned(),
    ]);
    let mut first = agent(&relay, &machine_token).await;
    let mut second = agent(&relay, &machine_token).await;
    assert_eq!(expect_closed(&mut first, WAIT).await, Some(1000));
    let session = json!({"id": "s1", "name": "shell", "command": "/bin/zsh",
                         "createdAt": "2026-11-22T10:00:00Z", "attachedClients": 0});
    send(
        &mut second,
        json!({"type": "sessions", "sessions": [session]}),
    )
    .await;
    let mut client = ws(&relay, "/ws/client").await;
    send(&mut client, json!({"type": "auth", "token": access})).await;
    assert_eq!(recv(&mut client).await["type"], "authenticated");
    tokio::time::sleep(Duration::from_millis(200)).await;
    send(
        &mut client,
        json!({"type": "attach", "machineId": machine, "sessionId": "s1"}),
    )
    .await;
    assert_eq!(
        common::account::recv_type(&mut client, "attached").await["sessionId"],
        "s1"
    );
    send(
        &mut client,
        json!({"type": "data", "sessionId": "s1", "data": "typed secret"}),
    )
    .await;
    assert_eq!(
        common::account::recv_type(&mut second, "data").await["data"],
        "typed secret"
    );
    send(&mut client, json!({"type": "detach", "sessionId": "s1"})).await;
    common::account::recv_type(&mut client, "detached").await;
    second.close(None).await.unwrap();
    expect_closed(&mut second, WAIT).await;
    let response = Client::new()
        .delete(relay.url(&format!("/api/machines/{machine}")))
        .bearer_auth(&access)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    secrets.push("typed secret".into());

    // A quick pairing: made, resumed after a lost browser, ended by the mac.
    let mut mac = ws(&relay, "/mac").await;
    let code = recv(&mut mac).await["code"].as_str().unwrap().to_owned();
    let mut browser = ws(&relay, "/browser").await;
    send(&mut browser, json!({"type": "join", "code": code})).await;
    let joined = recv(&mut browser).await;
    let pairing = joined["sessionId"].as_str().unwrap().to_owned();
    recv(&mut mac).await;
    send(
        &mut mac,
        json!({"type": "data", "payload": "pairing payload"}),
    )
    .await;
    assert_eq!(recv(&mut browser).await["payload"], "pairing payload");
    drop(browser);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut browser = ws(&relay, "/browser").await;
    send(
        &mut browser,
        json!({"type": "resume", "sessionId": pairing}),
    )
    .await;
    assert_eq!(recv(&mut browser).await["type"], "joined");
    mac.close(None).await.unwrap();
    expect_error(&mut browser, "MAC_DISCONNECTED").await;
    secrets.extend([pairing, code, "pairing payload".into()]);

    // A rate limit trips (3 join attempts a minute: join and resume used two): recorded
    // once however often it refuses.
    let mut guesser = ws(&relay, "/browser").await;
    send(&mut guesser, json!({"type": "join", "code": "AAAAAA"})).await;
    expect_error(&mut guesser, "INVALID_CODE").await;
    for _ in 0..3 {
        send(&mut guesser, json!({"type": "join", "code": "AAAAAA"})).await;
        expect_error(&mut guesser, "RATE_LIMITED").await;
    }

    // The operator's commands, appending to the same file.
    relay.cli(&["users", "disable", "ada@example.com"], "");
    relay.cli(&["users", "enable", "ada@example.com"], "");
    relay.cli(&["machines", "revoke", &spare_id], "");
    relay.cli(
        &["users", "add", "bob@example.com"],
        &format!("{BOB_PASSWORD}\n"),
    );
    relay.cli(
        &["users", "set-password", "bob@example.com"],
        &format!("{NEW_PASSWORD}\n"),
    );
    relay.cli(&["sessions", "revoke", "--user", "bob@example.com"], "");
    relay.cli(&["users", "delete", "bob@example.com"], "");

    let expected: HashMap<&str, usize> = [
        ("register", 1),
        ("login_refused", 1),
        ("login", 1),
        ("refresh_reuse", 1),
        ("machine_created", 2),
        ("agent_online", 2),
        ("agent_replaced", 1),
        ("agent_offline", 1),
        ("client_attach", 1),
        ("client_detach", 1),
        ("machine_deleted", 1),
        ("pairing_made", 1),
        ("pairing_resumed", 1),
        ("pairing_ended", 1),
        ("rate_limited", 1),
        ("user_disabled", 1),
        ("user_enabled", 1),
        ("machine_revoked", 1),
        ("user_added", 1),
        ("password_set", 1),
        ("sessions_revoked", 1),
        ("user_deleted", 1),
    ]
    .into_iter()
    .collect();
    let total = expected.values().sum();
    let events = events(&audit, total).await;
    // Nothing else arrives late.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let events_again = self::events(&audit, total).await;
    assert_eq!(events_again.len(), events.len(), "{events_again:#?}");
    let mut counted: HashMap<String, usize> = HashMap::new();
    for event in &events {
        *counted
            .entry(event["event"].as_str().unwrap().to_owned())
            .or_default() += 1;
        assert!(event["time"].as_str().unwrap().ends_with('Z'), "{event}");
    }
    let counted: HashMap<&str, usize> = counted.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    assert_eq!(counted, expected, "{events:#?}");

    let text = std::fs::read_to_string(&audit).unwrap();
    for secret in &secrets {
        assert!(
            !text.contains(secret.as_str()),
            "{secret:?} is in the audit log"
        );
    }
    let find = |name: &str| events.iter().find(|e| e["event"] == name).unwrap().clone();
    let login = find("login");
    assert_eq!(login["user"], user_id.as_str());
    assert_eq!(login["email"], "ada@example.com");
    assert_eq!(login["client"], "127.0.0.1");
    assert_eq!(find("login_refused")["reason"], "invalid_credentials");
    assert_eq!(find("agent_online")["machine"], machine.as_str());
    assert_eq!(find("client_attach")["session"], "s1");
    assert_eq!(find("rate_limited")["reason"], "join");
    assert_eq!(find("machine_revoked")["by"], "cli");
    assert_eq!(find("pairing_made")["pairing"].as_str().unwrap().len(), 8);
    assert_eq!(
        find("pairing_made")["pairing"],
        find("pairing_ended")["pairing"]
    );

    // logrotate: the file is moved away, SIGHUP reopens the configured path.
    std::fs::rename(&audit, dir.path().join("audit/audit.log.1")).unwrap();
    relay.hup();
    relay.wait_for_log("configuration reloaded", 1).await;
    post(
        &relay,
        "/auth/login",
        None,
        json!({"email": "ada@example.com", "password": PASSWORD}),
    )
    .await;
    let reopened = self::events(&audit, 1).await;
    assert_eq!(reopened.len(), 1);
    assert_eq!(reopened[0]["event"], "login");
}
