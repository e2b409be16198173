//! The relay binary: its start-up message, its outage log lines and gauge, and kill -9.

use std::time::{Duration, Instant};

use futures_util::future::join_all;
use reqwest::{Client, StatusCode};
use serde_json::{json, Value};

use crate::common::*;
use crate::proxy::{self, Mode, Proxy};
use crate::support::*;

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
