//! Reloading a running relay's configuration with SIGHUP (the real binary), and what the
//! binary says about its configuration: live keys, errors once, look-alike variables.

#[path = "support/process.rs"]
mod process;

use std::process::{Command, Stdio};

use process::Relay;
use reqwest::StatusCode;

/// The relay's base configuration for these tests: JSON logs, a body limit to change.
fn config(max_body_bytes: usize, extra: &str) -> String {
    format!("[log]\nformat = \"json\"\n\n[limits]\nmax_body_bytes = {max_body_bytes}\n{extra}")
}

/// A login whose body is about `bytes` long: 401 if read, 413 if over the limit.
async fn login_of_size(relay: &Relay, bytes: usize) -> StatusCode {
    let password = "x".repeat(bytes);
    reqwest::Client::new()
        .post(relay.url("/auth/login"))
        .json(&serde_json::json!({"email": "ada@example.com", "password": password}))
        .send()
        .await
        .unwrap()
        .status()
}

async fn eventually(relay: &Relay, bytes: usize, expected: StatusCode) {
    for _ in 0..100 {
        if login_of_size(relay, bytes).await == expected {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("never {expected}:\n{}", relay.log_text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_applies_live_keys_reports_restart_only_ones_and_ignores_an_invalid_file() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("relay.db").display());
    let relay = Relay::start(
        dir.path(),
        &config(16384, ""),
        &[("HERMIT__DATABASE__URL", &db)],
    )
    .await;
    assert_eq!(login_of_size(&relay, 2000).await, StatusCode::UNAUTHORIZED);
    assert_eq!(
        reqwest::get(relay.url("/metrics")).await.unwrap().status(),
        StatusCode::OK
    );

    // A live limit, a live token, and a key that needs a restart.
    std::fs::write(
        &relay.config,
        config(
            1024,
            "\n[metrics]\ntoken = \"scrape-me\"\n\n[server]\nworkers = 3\n",
        ),
    )
    .unwrap();
    relay.hup();
    relay.wait_for_log("configuration reloaded", 1).await;
    assert_eq!(
        login_of_size(&relay, 2000).await,
        StatusCode::PAYLOAD_TOO_LARGE
    );
    assert_eq!(login_of_size(&relay, 500).await, StatusCode::UNAUTHORIZED);
    assert_eq!(
        reqwest::get(relay.url("/metrics")).await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
    let log = relay.log_text();
    assert!(
        log.contains("`server.workers` changed but needs a restart"),
        "{log}"
    );
    assert!(!log.contains("scrape-me"), "the token is never logged");

    // An invalid value: nothing changes, and the reason is logged.
    std::fs::write(
        &relay.config,
        config(16384, "\n[heartbeat]\ntimeout_secs = 0\n"),
    )
    .unwrap();
    relay.hup();
    let log = relay
        .wait_for_log("configuration reload failed; nothing changed", 1)
        .await;
    assert!(log.contains("heartbeat.timeout_secs"), "{log}");
    assert_eq!(
        login_of_size(&relay, 2000).await,
        StatusCode::PAYLOAD_TOO_LARGE
    );

    // A file that is not TOML: the same.
    std::fs::write(&relay.config, "[limits\nmax_body_bytes = 16384\n").unwrap();
    relay.hup();
    relay
        .wait_for_log("configuration reload failed; nothing changed", 2)
        .await;
    assert_eq!(
        login_of_size(&relay, 2000).await,
        StatusCode::PAYLOAD_TOO_LARGE
    );

    // A good file again: the limit goes back up.
    std::fs::write(&relay.config, config(16384, "")).unwrap();
    relay.hup();
    relay.wait_for_log("configuration reloaded", 2).await;
    eventually(&relay, 2000, StatusCode::UNAUTHORIZED).await;
}

#[test]
fn check_config_says_which_keys_reload_live() {
    let out = Command::new(env!("CARGO_BIN_EXE_hermit-relay"))
        .arg("check-config")
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let (live, restart) = text
        .split_once("# Need a restart:")
        .expect("a restart section");
    let live = live
        .split_once("# Reloaded live on SIGHUP")
        .expect("a live section")
        .1;
    for key in [
        "limits.max_body_bytes",
        "heartbeat.timeout_secs",
        "log.level",
        "metrics.token",
    ] {
        assert!(
            live.contains(&format!("#   {key}\n")),
            "{key} live:\n{text}"
        );
    }
    for key in ["server.bind", "database.url", "server.workers"] {
        assert!(
            restart.contains(&format!("#   {key}\n")),
            "{key} restart:\n{text}"
        );
    }
}

/// Runs the binary with `env`; (exit code, standard error).
fn run(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let (code, _, stderr) = run_both(args, env);
    (code, stderr)
}

/// The exit code, standard output and standard error of the binary.
fn run_both(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_hermit-relay"))
        .args(args)
        .envs(env.iter().copied())
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[test]
fn a_configuration_error_is_printed_once_naming_key_and_origin() {
    let (code, stderr) = run(&["serve"], &[("HERMIT__HEARTBEAT__TIMEOUT_SECS", "0")]);
    assert_eq!(code, Some(1));
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("error: configuration error: `heartbeat.timeout_secs` is 0"),
        "{stderr}"
    );
    assert!(
        stderr.contains("environment variable HERMIT__HEARTBEAT__TIMEOUT_SECS"),
        "{stderr}"
    );
    let (code, stderr) = run(&["check-config"], &[("HERMIT__LOG__LEVEL", "warning")]);
    assert_eq!(code, Some(1));
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("`log.level`"), "{stderr}");
}

#[test]
fn a_port_in_use_is_reported_once() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let bind = taken.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("relay.db").display());
    let key = dir.path().join("root.key").display().to_string();
    let (code, stdout, stderr) = run_both(
        &["serve"],
        &[
            ("HERMIT__SERVER__BIND", &bind),
            ("HERMIT__DATABASE__URL", &db),
            ("HERMIT__AUTH__PRIVATE_KEY_FILE", &key),
        ],
    );
    assert_eq!(code, Some(1));
    // A failure of the running relay is one line of its log (standard output, in
    // `log.format`), not a second line on standard error.
    assert!(stderr.is_empty(), "{stderr}");
    let errors: Vec<&str> = stdout.lines().filter(|l| l.contains("ERROR")).collect();
    assert_eq!(errors.len(), 1, "{stdout}");
    assert_eq!(errors[0].matches("cannot listen on").count(), 1, "{stdout}");
    assert_eq!(errors[0].matches("in use").count(), 1, "{stderr}");
}

#[test]
fn a_look_alike_environment_variable_is_warned_about() {
    let (code, stderr) = run(&["check-config"], &[("HERMIT_SERVER__BIND", "0.0.0.0:9")]);
    assert_eq!(code, Some(0));
    assert!(
        stderr.contains("warning: environment variable HERMIT_SERVER__BIND is not a setting"),
        "{stderr}"
    );
}

#[test]
fn the_image_binds_through_its_config_file_so_a_mounted_file_wins() {
    let root = env!("CARGO_MANIFEST_DIR");
    let dockerfile = std::fs::read_to_string(format!("{root}/Dockerfile")).unwrap();
    let env: std::collections::HashMap<String, String> = dockerfile
        .lines()
        .filter_map(|line| line.strip_prefix("ENV "))
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .filter(|(k, _)| k.starts_with("HERMIT__"))
        .collect();
    assert!(!env.contains_key("HERMIT__SERVER__BIND"), "{env:?}");
    let dir = tempfile::tempdir().unwrap();
    let mounted = dir.path().join("config.toml");
    std::fs::write(&mounted, "[server]\nbind = \"0.0.0.0:9000\"\n").unwrap();
    let settings = hermit_relay::config::Settings::load_from(
        Some(&mounted),
        config::Environment::with_prefix("HERMIT").source(Some(env.clone())),
    )
    .unwrap();
    assert_eq!(settings.server.bind.to_string(), "0.0.0.0:9000");

    // The shipped file has no metrics token, and says so at start.
    let shipped = hermit_relay::config::Settings::load_from(
        Some(std::path::Path::new(&format!(
            "{root}/config/production.toml"
        ))),
        config::Environment::with_prefix("HERMIT").source(Some(env)),
    )
    .unwrap();
    let warnings = hermit_relay::config::check::warnings(&shipped);
    assert!(
        warnings[0].contains("/metrics has no token"),
        "{warnings:?}"
    );
}
