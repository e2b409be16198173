//! `hermit-relay-bench`: measures hermit-relay against a minimal tokio-tungstenite relay of
//! the same pairing protocol, over real sockets, in one run, so every figure is a ratio.
//!
//! ```text
//! hermit-relay-bench run --relay target/release/hermit-relay [--quick] [--out results.md]
//!                        [--only latency|throughput|idle|pairing|slow|fanout]
//! hermit-relay-bench baseline --port 9000 [--workers N]   # the baseline server alone
//! ```

mod baseline;
mod scenarios;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// A server under test, in its own process so its memory can be read.
pub struct Target {
    /// "relay" or "baseline".
    pub name: &'static str,
    /// Its port on 127.0.0.1.
    pub port: u16,
    child: Child,
    _dir: Option<TempDir>,
}

impl Target {
    /// Resident memory of the server process, in bytes.
    pub fn rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kib| kib.parse::<u64>().ok())
            .map_or(0, |kib| kib * 1024)
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        // SIGTERM first, so a server run under a profiler (callgrind) writes its output.
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(15) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A temporary directory removed on drop (no extra dependency for one use).
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

fn wait_listening(port: u16) -> anyhow::Result<()> {
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if started.elapsed() > Duration::from_secs(30) {
            bail!("server on port {port} did not start");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// Starts hermit-relay with limits opened up for load from one machine.
pub fn start_relay(binary: &PathBuf) -> anyhow::Result<Target> {
    let port = free_port();
    let dir = std::env::temp_dir().join(format!("hermit-bench-{}-{port}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let child = Command::new(binary)
        .env("HERMIT__SERVER__BIND", format!("127.0.0.1:{port}"))
        .env(
            "HERMIT__DATABASE__URL",
            format!("sqlite://{}/relay.db", dir.display()),
        )
        .env("HERMIT__AUTH__PRIVATE_KEY_FILE", dir.join("root.key"))
        .env("HERMIT__LIMITS__MAX_CONNECTIONS_PER_IP", "1000000")
        .env("HERMIT__LIMITS__JOIN_ATTEMPTS_PER_MINUTE", "100000000")
        .env("HERMIT__LIMITS__AUTH_ATTEMPTS_PER_MINUTE", "100000000")
        .env("HERMIT__LOG__LEVEL", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("cannot start {}", binary.display()))?;
    wait_listening(port)?;
    Ok(Target {
        name: "relay",
        port,
        child,
        _dir: Some(TempDir(dir)),
    })
}

/// Starts the baseline relay (this binary, `baseline` subcommand).
pub fn start_baseline() -> anyhow::Result<Target> {
    let port = free_port();
    let child = Command::new(std::env::current_exe()?)
        .args(["baseline", "--port", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    wait_listening(port)?;
    Ok(Target {
        name: "baseline",
        port,
        child,
        _dir: None,
    })
}

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("baseline") => {
            let port: u16 = arg(&args, "--port").context("--port")?.parse()?;
            let workers = arg(&args, "--workers").map_or(Ok(2), |w| w.parse())?;
            baseline::run(port, workers)
        }
        Some("run") => {
            let relay = PathBuf::from(arg(&args, "--relay").context("--relay PATH")?);
            let quick = args.iter().any(|a| a == "--quick");
            let out = arg(&args, "--out");
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            let only = arg(&args, "--only");
            let table = runtime.block_on(scenarios::run_all(&relay, quick, only.as_deref()))?;
            println!("{table}");
            if let Some(out) = out {
                std::fs::write(out, &table)?;
            }
            Ok(())
        }
        _ => bail!("usage: hermit-relay-bench run --relay PATH [--quick] [--out FILE] | baseline --port PORT [--workers N]"),
    }
}
