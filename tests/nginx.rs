//! The relay behind a real nginx, configured by the shipped `config/nginx.conf.example`.
//!
//! `.ci/run` installs nginx; elsewhere these tests are skipped (loudly) when it is missing,
//! and fail under CI.

mod common;

use std::time::{Duration, Instant};

use common::nginx::*;
use common::*;
use serde_json::{json, Value};

/// A WebSocket to nginx from source address `from`, with extra headers.
async fn via(nginx: &Nginx, path: &str, from: &str, headers: &[(&'static str, &str)]) -> Ws {
    connect_from(nginx.port, path, from, headers)
        .await
        .expect("websocket through nginx")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pairing_and_account_websockets_work_through_nginx() {
    let Some(binary) = nginx_binary() else { return };
    let server = TestServer::start(behind_nginx(settings()));
    let nginx = start_nginx(&binary, server.port, "75s");

    let mut mac = via(&nginx, "/mac", "127.0.0.1", &[]).await;
    let code = recv(&mut mac).await["code"].as_str().unwrap().to_owned();
    let mut browser = via(&nginx, "/browser", "127.0.0.1", &[]).await;
    send(&mut browser, json!({"type": "join", "code": code})).await;
    assert_eq!(recv(&mut browser).await["type"], "joined");
    assert_eq!(recv(&mut mac).await["type"], "joined");
    send_data(&mut mac, "through nginx \u{1b}[1m✓").await;
    expect_data(&mut browser, "through nginx \u{1b}[1m✓").await;
    send_data(&mut browser, "and back").await;
    expect_data(&mut mac, "and back").await;

    // Account mode: HTTP and both WebSocket endpoints through the same proxy.
    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{}", nginx.port);
    let body: Value = http
        .post(format!("{base}/auth/register"))
        .json(&json!({"email": "ada@example.com", "password": "correct horse battery"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let access = body["accessToken"].as_str().unwrap().to_owned();
    let created: Value = http
        .post(format!("{base}/api/machines"))
        .bearer_auth(&access)
        .json(&json!({"name": "studio"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut agent = via(&nginx, "/ws/agent", "127.0.0.1", &[]).await;
    send(
        &mut agent,
        json!({"type": "register", "token": created["token"]}),
    )
    .await;
    assert_eq!(recv(&mut agent).await["success"], true);
    assert_eq!(recv(&mut agent).await["type"], "list_sessions");
    send(
        &mut agent,
        json!({"type": "sessions", "sessions": [{"id": "s1", "name": "zsh", "command": "zsh", "createdAt": "2026-11-22T10:00:00Z"}]}),
    )
    .await;
    // Wait until the registry has the agent's report (it travels through the agent's actor).
    let started = Instant::now();
    loop {
        let machines: Value = http
            .get(format!("{base}/api/machines"))
            .bearer_auth(&access)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if machines["machines"][0]["sessionCount"] == 1 {
            break;
        }
        assert!(
            started.elapsed() < WAIT,
            "the agent's sessions never arrived"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut client = via(&nginx, "/ws/client", "127.0.0.1", &[]).await;
    send(&mut client, json!({"type": "auth", "token": access})).await;
    assert_eq!(recv(&mut client).await["type"], "authenticated");
    let machine_id = created["machine"]["id"].as_str().unwrap();
    send(
        &mut client,
        json!({"type": "attach", "machineId": machine_id, "sessionId": "s1"}),
    )
    .await;
    assert_eq!(recv(&mut client).await["type"], "attached");
    assert_eq!(recv(&mut agent).await["type"], "attach");
    send(
        &mut agent,
        json!({"type": "data", "sessionId": "s1", "data": "$ "}),
    )
    .await;
    assert_eq!(
        recv(&mut client).await,
        json!({"type": "data", "sessionId": "s1", "data": "$ "})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_forwarded_address_counts_only_through_the_trusted_proxy() {
    let Some(binary) = nginx_binary() else { return };
    let mut s = behind_nginx(settings());
    s.limits.join_attempts_per_minute = 2;
    let server = TestServer::start(s);
    let nginx = start_nginx(&binary, server.port, "75s");

    // 127.0.0.2 spends its budget through nginx, claiming to be someone else each time:
    // nginx appends the real address and the relay takes the rightmost untrusted hop.
    for (i, expected) in ["INVALID_CODE", "INVALID_CODE", "RATE_LIMITED"]
        .iter()
        .enumerate()
    {
        let spoof = format!("203.0.113.{i}");
        let mut ws = via(
            &nginx,
            "/browser",
            "127.0.0.2",
            &[("x-forwarded-for", &spoof)],
        )
        .await;
        send(&mut ws, json!({"type": "join", "code": "AAAAAA"})).await;
        expect_error(&mut ws, expected).await;
    }
    // 127.0.0.3, through the same nginx (same socket peer), has a budget of its own: the
    // relay keys on the forwarded address, not on the proxy.
    let mut other = via(&nginx, "/browser", "127.0.0.3", &[]).await;
    send(&mut other, json!({"type": "join", "code": "AAAAAA"})).await;
    expect_error(&mut other, "INVALID_CODE").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_paired_connections_outlive_the_proxy_read_timeout_thanks_to_heartbeats() {
    let Some(binary) = nginx_binary() else { return };
    let mut s = behind_nginx(settings());
    s.heartbeat.interval_secs = 1;
    s.heartbeat.timeout_secs = 4;
    let server = TestServer::start(s);
    let nginx = start_nginx(&binary, server.port, "2s");

    let mut mac = via(&nginx, "/mac", "127.0.0.1", &[]).await;
    let code = recv(&mut mac).await["code"].as_str().unwrap().to_owned();
    let mut browser = via(&nginx, "/browser", "127.0.0.1", &[]).await;
    send(&mut browser, json!({"type": "join", "code": code})).await;
    recv(&mut browser).await;
    recv(&mut mac).await;

    // Idle for 2.5 × nginx's read timeout; the clients only answer the relay's pings.
    tokio::join!(
        expect_silence(&mut mac, Duration::from_secs(5)),
        expect_silence(&mut browser, Duration::from_secs(5)),
    );
    send_data(&mut mac, "still here").await;
    expect_data(&mut browser, "still here").await;
}
