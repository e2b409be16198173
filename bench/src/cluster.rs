//! A two-node hermit-relay cluster for the `cross` scenario: nodes A and B as processes of
//! their own, on a fresh PostgreSQL database and a key prefix of their own in a running
//! Redis, sharing one token key — what README "Running several nodes" asks of a cluster.
//!
//! The database is made with `psql` and dropped afterwards, and the prefix's Redis keys are
//! deleted with `redis-cli`, so the bench needs no database or Redis client of its own.
//! Where they are: `HERMIT_BENCH_POSTGRES` (a server URL, default
//! `postgres://postgres@127.0.0.1:5432`) and `HERMIT_BENCH_REDIS` (default
//! `redis://127.0.0.1:6379`). Redis's CPU time is part of the hop's cost, so its process
//! must be on this machine: found by name in `/proc`.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::load::Ends;
use crate::target::{Server, Target, TempDir};

/// How long a node may take to answer `/ready` with 200 (migrations on a fresh database
/// included); under valgrind, ten times longer.
const READY: Duration = Duration::from_secs(60);

/// Cluster timers of a counted run, pushed out so the few that still fall due (one Redis
/// heartbeat every 10 s, not every second) weigh little in the difference of two runs of
/// different lengths, and generous enough for a node slowed down by valgrind.
const COUNTED: [(&str, &str); 3] = [
    ("HERMIT__CLUSTER__HEARTBEAT_MS", "10000"),
    ("HERMIT__CLUSTER__NODE_TIMEOUT_SECS", "120"),
    ("HERMIT__CLUSTER__REDIS_TIMEOUT_MS", "30000"),
];

/// The PostgreSQL server the nodes share a database on.
fn postgres_server() -> String {
    std::env::var("HERMIT_BENCH_POSTGRES").unwrap_or("postgres://postgres@127.0.0.1:5432".into())
}

/// The Redis the nodes meet in.
fn redis_url() -> String {
    std::env::var("HERMIT_BENCH_REDIS").unwrap_or("redis://127.0.0.1:6379".into())
}

/// Two relay nodes of one cluster. Fields drop in order: the nodes stop first, then their
/// Redis keys and their database go.
pub struct Cluster {
    /// Node A: the macs' node.
    pub a: Target,
    /// Node B: the browsers' node in the cross-node scenario.
    pub b: Target,
    redis_pid: u32,
    _keys: RedisKeys,
    _database: Database,
    _dir: TempDir,
}

impl Cluster {
    /// Starts node A, waits until it is ready (it makes the shared token key and migrates
    /// the database), then node B, and waits until B is ready too.
    pub async fn start(relay: &Server) -> anyhow::Result<Self> {
        Self::launch(relay, [&[], &[]]).await
    }

    /// Starts the cluster with node A behind `wrappers[0]` and B behind `wrappers[1]`
    /// (valgrind command prefixes; empty: none). Wrapped nodes run as in the counted mode
    /// (one worker, no heartbeat or expiry due), with the cluster's timers of [`COUNTED`].
    pub async fn launch(relay: &Server, wrappers: [&[String]; 2]) -> anyhow::Result<Self> {
        let counted = wrappers.iter().any(|w| !w.is_empty());
        let ready = if counted { READY * 10 } else { READY };
        let redis_pid = redis_pid()?;
        let id = format!(
            "xbench_{}_{}",
            std::process::id(),
            nanoid::nanoid!(6, &ALNUM)
        );
        let dir = TempDir(std::env::temp_dir().join(&id));
        std::fs::create_dir_all(&dir.0)?;
        let database = Database::create(&id)?;
        let keys = RedisKeys(id.clone());
        let env = |node: &str| {
            let mut env = vec![
                ("HERMIT__DATABASE__URL", database.url.clone()),
                ("HERMIT__CLUSTER__REDIS_URL", redis_url()),
                ("HERMIT__CLUSTER__KEY_PREFIX", id.clone()),
                ("HERMIT__CLUSTER__NODE_ID", node.to_owned()),
                (
                    "HERMIT__AUTH__PRIVATE_KEY_FILE",
                    dir.0.join("root.key").display().to_string(),
                ),
            ];
            if counted {
                env.extend(COUNTED.map(|(key, value)| (key, value.to_owned())));
            }
            env
        };
        let a = relay.launch_with(wrappers[0], counted, &env("a"))?;
        wait_ready(a.port, ready).await.context("node A")?;
        let b = relay.launch_with(wrappers[1], counted, &env("b"))?;
        wait_ready(b.port, ready).await.context("node B")?;
        Ok(Self {
            a,
            b,
            redis_pid,
            _keys: keys,
            _database: database,
            _dir: dir,
        })
    }

    /// Macs on A, browsers on B; the cost counts A, B and Redis, in that order.
    pub fn across(&self) -> Ends {
        Ends {
            mac: self.a.port,
            browser: self.b.port,
            pids: vec![self.a.pid(), self.b.pid(), self.redis_pid],
        }
    }

    /// Macs and browsers both on A (B idles in the cluster); the cost counts A, B and
    /// Redis, in that order.
    pub fn same_node(&self) -> Ends {
        Ends {
            browser: self.a.port,
            ..self.across()
        }
    }
}

/// Letters and digits, for names PostgreSQL and the relay's key prefix both take as is.
const ALNUM: [char; 36] = [
    'a', 'b', 'c', 'd', 'e', 'f', 'g', 'h', 'i', 'j', 'k', 'l', 'm', 'n', 'o', 'p', 'q', 'r', 's',
    't', 'u', 'v', 'w', 'x', 'y', 'z', '0', '1', '2', '3', '4', '5', '6', '7', '8', '9',
];

/// The pid of the local `redis-server` (the one whose command line names the port of
/// [`redis_url`], if there are several).
pub fn redis_pid() -> anyhow::Result<u32> {
    let url = redis_url();
    let port = url
        .rsplit(':')
        .next()
        .and_then(|rest| rest.split('/').next())
        .unwrap_or("6379")
        .to_owned();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc")?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
        if comm.trim() == "redis-server" {
            let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            found.push((pid, String::from_utf8_lossy(&cmdline).contains(&port)));
        }
    }
    match found.iter().find(|(_, on_port)| *on_port).or(found.first()) {
        Some(&(pid, _)) => Ok(pid),
        None => bail!("no redis-server process on this machine (for {url}): the cross scenario counts its CPU"),
    }
}

/// Polls `GET /ready` until it answers 200, for at most `patience`.
async fn wait_ready(port: u16, patience: Duration) -> anyhow::Result<()> {
    let http = reqwest::Client::new();
    let started = Instant::now();
    loop {
        let answer = http
            .get(format!("http://127.0.0.1:{port}/ready"))
            .send()
            .await;
        match answer {
            Ok(r) if r.status().is_success() => return Ok(()),
            _ if started.elapsed() > patience => {
                bail!("not ready after {} s ({answer:?})", patience.as_secs())
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// A fresh PostgreSQL database, dropped (connections and all) on drop.
struct Database {
    name: String,
    url: String,
}

impl Database {
    fn create(name: &str) -> anyhow::Result<Self> {
        psql(&format!("create database {name}")).context("creating the cluster's database")?;
        Ok(Self {
            name: name.to_owned(),
            url: format!("{}/{name}", postgres_server()),
        })
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        let _ = psql(&format!(
            "drop database if exists {} with (force)",
            self.name
        ));
    }
}

/// Runs one SQL statement on the server's `postgres` database.
fn psql(sql: &str) -> anyhow::Result<()> {
    let output = Command::new("psql")
        .arg(format!("{}/postgres", postgres_server()))
        .args(["-v", "ON_ERROR_STOP=1", "-qc", sql])
        .stdin(Stdio::null())
        .output()
        .context("cannot run psql")?;
    if !output.status.success() {
        bail!(
            "psql: {sql}: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

/// A key prefix whose Redis keys are deleted on drop (nodes that left keep a few, with
/// and without expiry).
struct RedisKeys(String);

impl Drop for RedisKeys {
    fn drop(&mut self) {
        let _ = delete_keys(&self.0);
    }
}

fn delete_keys(prefix: &str) -> anyhow::Result<()> {
    let url = redis_url();
    let scan = Command::new("redis-cli")
        .args(["-u", &url, "--scan", "--pattern", &format!("{prefix}:*")])
        .stdin(Stdio::null())
        .output()?;
    let keys: Vec<String> = String::from_utf8_lossy(&scan.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    for chunk in keys.chunks(500) {
        Command::new("redis-cli")
            .args(["-u", &url, "del"])
            .args(chunk)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .status()?;
    }
    Ok(())
}
