//! The real `hermit-relay` binary as a child process: for signals (SIGHUP, SIGTERM), its own log
//! on standard output, and admin commands run beside it with the same configuration.
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A relay process, killed when dropped.
pub struct Relay {
    child: Child,
    pub port: u16,
    /// Its configuration file (rewrite it, then [`Relay::hup`]).
    pub config: PathBuf,
    /// Where its standard output (the log) goes.
    pub log: PathBuf,
    env: Vec<(String, String)>,
}

/// A free port on loopback (bound and released; the relay binds it right after).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Relay {
    /// Starts the relay in `dir` with `config` as its file and `env` on top (the database
    /// and key file are set there); waits until `/health` answers.
    pub async fn start(dir: &Path, config: &str, env: &[(&str, &str)]) -> Self {
        let port = free_port();
        let path = dir.join("relay.toml");
        std::fs::write(&path, config).unwrap();
        let log = dir.join("relay.log");
        let mut env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        env.push(("HERMIT__SERVER__BIND".into(), format!("127.0.0.1:{port}")));
        env.push((
            "HERMIT__AUTH__PRIVATE_KEY_FILE".into(),
            dir.join("root.key").display().to_string(),
        ));
        let child = Command::new(env!("CARGO_BIN_EXE_hermit-relay"))
            .arg("--config")
            .arg(&path)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .env_remove("RUST_LOG")
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let relay = Self {
            child,
            port,
            config: path,
            log,
            env,
        };
        let started = Instant::now();
        while reqwest::get(relay.url("/health")).await.is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "relay did not start: {}",
                relay.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        relay
    }

    /// `http://127.0.0.1:PORT{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// `ws://127.0.0.1:PORT{path}`.
    pub fn ws_url(&self, path: &str) -> String {
        format!("ws://127.0.0.1:{}{path}", self.port)
    }

    /// Sends SIGHUP.
    pub fn hup(&self) {
        let status = Command::new("kill")
            .args(["-HUP", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Sends SIGTERM (the graceful stop an orchestrator asks for).
    pub fn term(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Everything logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the log has `count` lines containing `needle`; returns the log.
    pub async fn wait_for_log(&self, needle: &str, count: usize) -> String {
        let started = Instant::now();
        loop {
            let text = self.log_text();
            if text.lines().filter(|l| l.contains(needle)).count() >= count {
                return text;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "{needle:?} never logged {count} time(s):\n{text}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Runs `hermit-relay ARGS` with the relay's configuration, `stdin` piped in.
    pub fn cli(&self, args: &[&str], stdin: &str) -> Output {
        let mut child = Command::new(env!("CARGO_BIN_EXE_hermit-relay"))
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
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
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
