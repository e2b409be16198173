//! Running in production: limits, origins, metrics, graceful shutdown, the container's
//! runtime settings.

mod common;

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use reqwest::StatusCode;
use serde_json::{json, Value};

fn status_of(err: tokio_tungstenite::tungstenite::Error) -> u16 {
    match err {
        tokio_tungstenite::tungstenite::Error::Http(response) => response.status().as_u16(),
        other => panic!("expected an HTTP refusal, got {other}"),
    }
}

#[tokio::test]
async fn join_attempts_are_rate_limited_per_client_address() {
    let mut s = settings();
    s.limits.join_attempts_per_minute = 3;
    let server = TestServer::start(s);
    let mut greedy = connect_from(server.port, "/browser", "127.0.0.2", &[])
        .await
        .unwrap();
    for _ in 0..3 {
        send(&mut greedy, json!({"type": "join", "code": "AAAAAA"})).await;
        expect_error(&mut greedy, "INVALID_CODE").await;
    }
    send(&mut greedy, json!({"type": "join", "code": "AAAAAA"})).await;
    expect_error(&mut greedy, "RATE_LIMITED").await;
    send(&mut greedy, json!({"type": "resume", "sessionId": "x"})).await;
    expect_error(&mut greedy, "RATE_LIMITED").await;

    // Another address is unaffected, and pairs normally.
    let (_mac, code) = mac(&server).await;
    let mut other = connect_from(server.port, "/browser", "127.0.0.3", &[])
        .await
        .unwrap();
    send(&mut other, json!({"type": "join", "code": code})).await;
    assert_eq!(recv(&mut other).await["type"], "joined");
}

#[tokio::test]
async fn a_spoofed_forwarded_for_from_an_untrusted_peer_is_ignored() {
    let mut s = settings();
    s.limits.join_attempts_per_minute = 2;
    s.server.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
    let server = TestServer::start(s);
    // 127.0.0.4 is not a trusted proxy: a fresh X-Forwarded-For each time buys nothing.
    for (i, expected) in ["INVALID_CODE", "INVALID_CODE", "RATE_LIMITED"]
        .iter()
        .enumerate()
    {
        let spoof = format!("198.51.100.{i}");
        let mut ws = connect_from(
            server.port,
            "/browser",
            "127.0.0.4",
            &[("x-forwarded-for", &spoof)],
        )
        .await
        .unwrap();
        send(&mut ws, json!({"type": "join", "code": "AAAAAA"})).await;
        expect_error(&mut ws, expected).await;
    }
}

#[tokio::test]
async fn connections_per_address_are_capped_and_others_still_served() {
    let mut s = settings();
    s.limits.max_connections_per_ip = 2;
    let server = TestServer::start(s);
    let _a = connect_from(server.port, "/mac", "127.0.0.5", &[])
        .await
        .unwrap();
    let _b = connect_from(server.port, "/browser", "127.0.0.5", &[])
        .await
        .unwrap();
    let refused = connect_from(server.port, "/mac", "127.0.0.5", &[])
        .await
        .unwrap_err();
    assert_eq!(status_of(refused), 429);
    let mut other = connect_from(server.port, "/mac", "127.0.0.6", &[])
        .await
        .unwrap();
    assert_eq!(recv(&mut other).await["type"], "registered");
    // A closed connection frees its place.
    drop(_a);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(connect_from(server.port, "/mac", "127.0.0.5", &[])
        .await
        .is_ok());
}

#[tokio::test]
async fn auth_attempts_are_rate_limited_with_429() {
    let mut s = settings();
    s.limits.auth_attempts_per_minute = 3;
    let server = TestServer::start(s);
    let client = reqwest::Client::builder()
        .local_address("127.0.0.7".parse::<std::net::IpAddr>().unwrap())
        .build()
        .unwrap();
    let login = || {
        client
            .post(server.url("/auth/login"))
            .json(&json!({"email": "a@example.com", "password": "whatever1"}))
            .send()
    };
    for _ in 0..3 {
        assert_eq!(login().await.unwrap().status(), StatusCode::UNAUTHORIZED);
    }
    let response = login().await.unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(response.json::<Value>().await.unwrap()["error"].is_string());
    // The relay keeps serving everyone else.
    let response = reqwest::get(server.url("/health")).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn pending_codes_are_bounded() {
    let mut s = settings();
    s.limits.max_pending_codes = 2;
    let server = TestServer::start(s);
    let (_a, _) = mac(&server).await;
    let (_b, _) = mac(&server).await;
    let mut third = server.connect("/mac").await;
    expect_error(&mut third, "RATE_LIMITED").await;
}

#[tokio::test]
async fn browser_endpoints_refuse_origins_not_allowed() {
    let mut s = settings();
    s.server.allowed_origins = vec!["https://app.example.com".into()];
    let server = TestServer::start(s);
    let evil = [("origin", "https://evil.example")];
    for path in ["/browser", "/ws/client"] {
        // Let in, then closed with 1008 and a reason the page can read (a refused upgrade
        // would look like a network drop, 1006).
        let mut refused = connect_from(server.port, path, "127.0.0.1", &evil)
            .await
            .unwrap();
        assert_eq!(
            expect_closed(&mut refused, WAIT).await,
            Some(1008),
            "{path}"
        );
        let good = [("origin", "https://app.example.com")];
        assert!(connect_from(server.port, path, "127.0.0.1", &good)
            .await
            .is_ok());
        // Native clients send no Origin.
        assert!(connect_from(server.port, path, "127.0.0.1", &[])
            .await
            .is_ok());
    }
    // The Mac side is not a web page; its endpoint does not check origins.
    assert!(connect_from(server.port, "/mac", "127.0.0.1", &evil)
        .await
        .is_ok());
}

/// Parses Prometheus text into `series → value`, failing on any malformed line.
fn parse_metrics(text: &str) -> HashMap<String, f64> {
    let mut series = HashMap::new();
    for line in text.lines() {
        if line.is_empty() || line.starts_with("# HELP ") || line.starts_with("# TYPE ") {
            continue;
        }
        let (name, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad line {line:?}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line:?}"));
        let bare = name.split('{').next().unwrap();
        assert!(
            bare.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "bad name in {line:?}"
        );
        if let Some(labels) = name.strip_prefix(bare) {
            assert!(labels.is_empty() || (labels.starts_with('{') && labels.ends_with('}')));
        }
        series.insert(name.to_owned(), value);
    }
    series
}

#[tokio::test]
async fn metrics_parse_as_prometheus_text_and_move_with_traffic() {
    let server = TestServer::start(settings());
    let scrape = || async {
        let response = reqwest::get(server.url("/metrics")).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert!(response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain"));
        parse_metrics(&response.text().await.unwrap())
    };
    let before = scrape().await;
    let (mut mac, mut browser, _) = pair(&server).await;
    send_data(&mut mac, "hello").await;
    expect_data(&mut browser, "hello").await;
    let during = scrape().await;
    let delta = |name: &str| {
        during.get(name).copied().unwrap_or(0.0) - before.get(name).copied().unwrap_or(0.0)
    };
    assert!(delta("hermit_pairings_total") >= 1.0);
    assert!(delta("hermit_codes_issued_total") >= 1.0);
    assert!(delta("hermit_codes_joined_total") >= 1.0);
    assert!(delta("hermit_messages_relayed_total") >= 1.0);
    assert!(delta("hermit_bytes_relayed_total") >= 5.0);
    assert!(during[r#"hermit_connections{endpoint="/mac"}"#] >= 1.0);
    assert!(during[r#"hermit_connections{endpoint="/browser"}"#] >= 1.0);
    assert!(delta(r#"hermit_http_requests_total{route="/metrics",status="200"}"#) >= 1.0);
    assert!(during.contains_key(r#"hermit_drops_total{reason="slow_consumer"}"#));
    assert!(during.contains_key(r#"hermit_http_request_duration_seconds_count{route="/metrics"}"#));
    // WebSocket upgrades are counted, but not timed.
    assert!(during.contains_key(r#"hermit_http_requests_total{route="/mac",status="101"}"#));
    assert!(!during.contains_key(r#"hermit_http_request_duration_seconds_count{route="/mac"}"#));
}

#[tokio::test]
async fn metrics_can_require_a_token() {
    let mut s = settings();
    s.metrics.token = "scrape-secret".into();
    let server = TestServer::start(s);
    let response = reqwest::get(server.url("/metrics")).await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let response = reqwest::Client::new()
        .get(server.url("/metrics"))
        .bearer_auth("scrape-secret")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_every_websocket_with_1001_and_exits_0_in_time() {
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_hermit-relay"))
        .env("HERMIT__SERVER__BIND", format!("127.0.0.1:{port}"))
        .env("HERMIT__SERVER__SHUTDOWN_TIMEOUT_SECS", "3")
        .env(
            "HERMIT__DATABASE__URL",
            format!("sqlite://{}", dir.path().join("relay.db").display()),
        )
        .env(
            "HERMIT__AUTH__PRIVATE_KEY_FILE",
            dir.path().join("root.key"),
        )
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}/health");
    let started = Instant::now();
    while reqwest::get(&url).await.is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "relay did not start"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (mut mac, _) = tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{port}/mac"))
        .await
        .unwrap();
    assert_eq!(recv(&mut mac).await["type"], "registered");
    let (mut client, _) =
        tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{port}/ws/client"))
            .await
            .unwrap();

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let stopping = Instant::now();
    assert_eq!(expect_closed(&mut mac, WAIT).await, Some(1001));
    assert_eq!(expect_closed(&mut client, WAIT).await, Some(1001));
    let code = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            stopping.elapsed() < Duration::from_secs(6),
            "the relay did not exit within its shutdown timeout"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(code.code(), Some(0));
}

/// `KEY=value` pairs of the Dockerfile's `ENV` lines.
fn dockerfile_env() -> Vec<(String, String)> {
    let dockerfile =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Dockerfile")).unwrap();
    dockerfile
        .lines()
        .filter_map(|line| line.strip_prefix("ENV "))
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

#[test]
fn the_container_runs_with_the_settings_its_dockerfile_gives_it() {
    let dockerfile =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Dockerfile")).unwrap();
    let env: HashMap<String, String> = dockerfile_env().into_iter().collect();
    // The config file the image copies is the one HERMIT_CONFIG names.
    let config_path = &env["HERMIT_CONFIG"];
    assert!(dockerfile.contains(&format!("COPY config/production.toml {config_path}")));
    // The image builds the way CI does (the dependency layer and the sources alike).
    assert!(dockerfile.contains("&& cargo build --release --locked"));
    assert!(dockerfile.contains("USER hermit"));
    assert!(dockerfile.contains("HEALTHCHECK"));

    let overrides: HashMap<String, String> = env
        .into_iter()
        .filter(|(k, _)| k.starts_with("HERMIT__"))
        .collect();
    let settings = hermit_relay::config::Settings::load_from(
        Some(std::path::Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/config/production.toml"
        ))),
        config::Environment::with_prefix("HERMIT").source(Some(overrides)),
    )
    .unwrap();
    assert_eq!(settings.server.bind.to_string(), "0.0.0.0:8080");
    assert!(
        settings.server.shutdown_timeout_secs < 10,
        "below Docker's stop timeout"
    );
    assert!(settings
        .database
        .url
        .starts_with("sqlite:///var/lib/hermit-relay/"));
    assert!(settings
        .auth
        .private_key_file
        .starts_with("/var/lib/hermit-relay"));
    assert!(dockerfile.contains("VOLUME /var/lib/hermit-relay"));
    // No proxy is trusted until the operator names theirs: a trusted range lets anyone
    // inside it write their own address in the forwarding header.
    assert!(settings.server.trusted_proxies.is_empty());

    // And a PostgreSQL URL and proxies from the environment, as an operator would set them.
    let overrides: HashMap<String, String> = [
        (
            "HERMIT__DATABASE__URL",
            "postgres://relay:pw@db:5432/hermit",
        ),
        (
            "HERMIT__SERVER__TRUSTED_PROXIES",
            "10.1.0.0/16,127.0.0.1/32",
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let settings = hermit_relay::config::Settings::load_from(
        Some(std::path::Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/config/production.toml"
        ))),
        config::Environment::with_prefix("HERMIT").source(Some(overrides)),
    )
    .unwrap();
    assert!(settings.database.url.starts_with("postgres://"));
    assert_eq!(settings.server.trusted_proxies.len(), 2);
}

#[tokio::test]
async fn the_healthcheck_command_reports_the_relay_alive_or_not() {
    let server = TestServer::start(settings());
    let run = |port: u16| {
        Command::new(env!("CARGO_BIN_EXE_hermit-relay"))
            .arg("healthcheck")
            .env("HERMIT__SERVER__BIND", format!("0.0.0.0:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap()
    };
    assert!(run(server.port).success());
    assert!(!run(common::free_port()).success());
}
