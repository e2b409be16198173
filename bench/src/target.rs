//! The servers under test — hermit-relay builds and the baseline — each started fresh in
//! its own process, optionally under a profiler (valgrind) and on one worker thread.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// Which program a [`Server`] runs.
#[derive(Clone)]
enum Program {
    /// A hermit-relay binary.
    Relay(PathBuf),
    /// This binary's `baseline` subcommand.
    Baseline,
}

/// A server to measure, and the column it is reported in.
#[derive(Clone)]
pub struct Server {
    /// "relay", "before" or "baseline".
    pub name: &'static str,
    program: Program,
}

impl Server {
    /// The relay build under test.
    pub fn relay(binary: &Path) -> Self {
        Self {
            name: "relay",
            program: Program::Relay(binary.to_owned()),
        }
    }

    /// An older relay build, run beside the one under test.
    pub fn before(binary: &Path) -> Self {
        Self {
            name: "before",
            program: Program::Relay(binary.to_owned()),
        }
    }

    /// The minimal tokio-tungstenite relay (`baseline.rs`).
    pub fn baseline() -> Self {
        Self {
            name: "baseline",
            program: Program::Baseline,
        }
    }

    /// Whether this is a hermit-relay build (which has the account endpoints).
    pub fn is_relay(&self) -> bool {
        matches!(self.program, Program::Relay(_))
    }

    /// The servers of one run, in column order: relay, before (if given), baseline.
    pub fn all(relay: &Path, before: Option<&Path>) -> Vec<Self> {
        let mut servers = vec![Self::relay(relay)];
        servers.extend(before.map(Self::before));
        servers.push(Self::baseline());
        servers
    }

    /// Starts the server as it runs for the rate scenarios: its default workers, no wrapper.
    pub fn start(&self) -> anyhow::Result<Target> {
        self.launch(&[], false)
    }

    /// Starts the server behind `wrapper` (a command prefix such as
    /// `valgrind --tool=callgrind …`). `counted`: one worker thread, and the relay's
    /// heartbeat pings and code expiry pushed past the run so no timer does extra work.
    pub fn launch(&self, wrapper: &[String], counted: bool) -> anyhow::Result<Target> {
        self.launch_with(wrapper, counted, &[])
    }

    /// [`Server::launch`] with `env` set last, over the benchmark's own settings (a
    /// cluster node's database, Redis and shared key).
    pub fn launch_with(
        &self,
        wrapper: &[String],
        counted: bool,
        env: &[(&str, String)],
    ) -> anyhow::Result<Target> {
        let port = free_port();
        let mut argv = wrapper.to_vec();
        let mut dir = None;
        match &self.program {
            Program::Relay(binary) => {
                argv.push(binary.display().to_string());
                let path = std::env::temp_dir()
                    .join(format!("hermit-bench-{}-{port}", std::process::id()));
                std::fs::create_dir_all(&path)?;
                dir = Some(TempDir(path));
            }
            Program::Baseline => {
                argv.push(std::env::current_exe()?.display().to_string());
                let workers = if counted { "1" } else { "2" };
                let port = port.to_string();
                argv.extend(["baseline", "--port", &port, "--workers", workers].map(String::from));
            }
        }
        let mut command = Command::new(&argv[0]);
        command.args(&argv[1..]);
        if let (Some(TempDir(path)), Program::Relay(binary)) = (&dir, &self.program) {
            relay_env(&mut command, port, path, counted);
            // Limits newer builds have (older ones refuse unknown keys), opened up too.
            for (key, value) in NEWER_LIMITS {
                if accepts(binary, key, value) {
                    command.env(key, value);
                }
            }
            // Lossless sides get JSON pings by the clock: in counted mode none falls due.
            let ping = ("HERMIT__PAIRING__ACK_PING_INTERVAL_SECS", "3600");
            if counted && accepts(binary, ping.0, ping.1) {
                command.env(ping.0, ping.1);
            }
            command.envs(env.iter().map(|(key, value)| (*key, value.as_str())));
        }
        let child = command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("cannot start the {} ({})", self.name, argv.join(" ")))?;
        // Under valgrind start-up and shutdown are tens of times slower.
        let patience = if wrapper.is_empty() { 30 } else { 600 };
        let target = Target {
            port,
            child,
            patience: Duration::from_secs(patience),
            _dir: dir,
        };
        wait_listening(port, target.patience)?;
        Ok(target)
    }
}

/// The relay's settings for the benchmark: per-address limits opened up (to the most the
/// relay accepts), since all load comes from one machine; in counted mode one worker and
/// no timer due during the run (an hour, the longest heartbeat the relay accepts, outlasts
/// every counted run).
fn relay_env(command: &mut Command, port: u16, dir: &Path, counted: bool) {
    command
        .env("HERMIT__SERVER__BIND", format!("127.0.0.1:{port}"))
        .env(
            "HERMIT__DATABASE__URL",
            format!("sqlite://{}/relay.db", dir.display()),
        )
        .env("HERMIT__AUTH__PRIVATE_KEY_FILE", dir.join("root.key"))
        .env("HERMIT__LIMITS__MAX_CONNECTIONS_PER_IP", "1000000")
        .env("HERMIT__LIMITS__JOIN_ATTEMPTS_PER_MINUTE", "1000000")
        .env("HERMIT__LIMITS__AUTH_ATTEMPTS_PER_MINUTE", "1000000")
        .env("HERMIT__LOG__LEVEL", "error");
    if counted {
        command
            .env("HERMIT__SERVER__WORKERS", "1")
            .env("HERMIT__HEARTBEAT__INTERVAL_SECS", "3600")
            .env("HERMIT__HEARTBEAT__TIMEOUT_SECS", "3600")
            .env("HERMIT__PAIRING__CODE_TTL_SECS", "86400")
            .env("HERMIT__PAIRING__IDLE_UNPAIRED_TIMEOUT_SECS", "86400");
    }
}

/// Limits added after the first builds, opened up like the others where a build has them.
const NEWER_LIMITS: [(&str, &str); 5] = [
    ("HERMIT__LIMITS__MAX_HTTP_CONNECTIONS_PER_IP", "1000000"),
    ("HERMIT__LIMITS__FAILED_JOINS_PER_MINUTE", "100000000"),
    (
        "HERMIT__LIMITS__FAILED_JOINS_PER_NETWORK_PER_MINUTE",
        "100000000",
    ),
    ("HERMIT__AUTH__MAX_QUEUED_HASHES", "100000"),
    ("HERMIT__AUTH__MAX_QUEUED_HASHES_PER_ADDRESS", "100000"),
];

/// Whether `binary` knows setting `key` (a build refuses keys it does not know).
fn accepts(binary: &Path, key: &str, value: &str) -> bool {
    Command::new(binary)
        .arg("check-config")
        .env(key, value)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// A running server; stopped with SIGTERM when dropped (or by [`Target::stop`]).
pub struct Target {
    /// Its port on 127.0.0.1.
    pub port: u16,
    child: Child,
    patience: Duration,
    _dir: Option<TempDir>,
}

impl Target {
    /// The server's process id (valgrind runs its guest in the same process).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident memory of the server process, in bytes.
    pub fn rss(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kib| kib.parse::<u64>().ok())
            .map_or(0, |kib| kib * 1024)
    }

    /// Sends SIGTERM and waits for the process to exit, so a profiler writes its output;
    /// kills it if it has not exited in time. True if it exited by itself.
    pub fn stop(&mut self) -> bool {
        if let Ok(Some(_)) = self.child.try_wait() {
            return true;
        }
        // SAFETY: kill(2) on our own child's pid, which we have not yet reaped.
        unsafe { libc::kill(self.pid() as libc::pid_t, libc::SIGTERM) };
        let started = Instant::now();
        while started.elapsed() < self.patience {
            if let Ok(Some(_)) = self.child.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        false
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A temporary directory removed on drop (no extra dependency for a few uses).
pub struct TempDir(pub PathBuf);

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

/// Waits until the port accepts a connection. Exactly one probe connection reaches the
/// server (refused attempts cost it nothing), so counted runs stay comparable.
fn wait_listening(port: u16, patience: Duration) -> anyhow::Result<()> {
    let started = Instant::now();
    loop {
        match std::net::TcpStream::connect(("127.0.0.1", port)) {
            // The port is an ephemeral one, so a probe can be given it as its own source
            // port and connect to itself (TCP simultaneous open): that is not the server.
            Ok(probe) if probe.local_addr().ok() != probe.peer_addr().ok() => return Ok(()),
            _ if started.elapsed() > patience => bail!("server on port {port} did not start"),
            _ => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}
