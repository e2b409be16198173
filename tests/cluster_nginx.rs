//! Three relay node *processes* — the built binary, configured from the environment as an
//! operator would — behind a real nginx running `deploy/nginx.conf` (round robin, no sticky
//! sessions), sharing one PostgreSQL database, one Redis and one biscuit root key: macs and
//! browsers connect through nginx, land on different nodes, pair by code and exchange data
//! both ways in order; an access token signed by one node is accepted by every node.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::cluster::{prefix, redis_url};
use common::nginx::{nginx_binary, start_round_robin};
use common::*;
use serde_json::json;

/// Time for a node process to start: migrations (the first node runs them, the others wait
/// for its advisory lock), Redis, its first heartbeats.
const START: Duration = Duration::from_secs(60);
/// Macs (and as many browsers) connected through nginx.
const PAIRS: usize = 6;
/// `data` messages each way per pairing.
const MESSAGES: usize = 100;

/// One relay process, killed when dropped (also when the test panics: then its log is
/// printed, so a failure shows what each node said).
struct NodeProcess {
    id: String,
    port: u16,
    child: Child,
    log: PathBuf,
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            eprintln!("--- log of {} ---\n{log}", self.id);
        }
    }
}

/// What every node of the test's cluster shares.
struct Shared<'a> {
    db: &'a TestDb,
    redis: &'a str,
    prefix: &'a str,
    key_file: &'a Path,
    dir: &'a Path,
}

impl NodeProcess {
    /// Starts node `id` on a free port, configured only through `HERMIT__…` variables.
    fn spawn(id: &str, shared: &Shared<'_>) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log = shared.dir.join(format!("{id}.log"));
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_hermit-relay"))
            .env_remove("RUST_LOG")
            .env("HERMIT__SERVER__BIND", format!("127.0.0.1:{port}"))
            .env("HERMIT__SERVER__WORKERS", "2")
            // nginx, on loopback, says who the client is.
            .env("HERMIT__SERVER__TRUSTED_PROXIES", "127.0.0.1/32")
            .env("HERMIT__DATABASE__URL", &shared.db.url)
            .env("HERMIT__AUTH__PRIVATE_KEY_FILE", shared.key_file)
            .env("HERMIT__CLUSTER__REDIS_URL", shared.redis)
            .env("HERMIT__CLUSTER__KEY_PREFIX", shared.prefix)
            .env("HERMIT__CLUSTER__NODE_ID", id)
            .env("HERMIT__CLUSTER__HEARTBEAT_MS", "200")
            .env("HERMIT__CLUSTER__NODE_TIMEOUT_SECS", "2")
            // Every test client comes from 127.0.0.1.
            .env("HERMIT__LIMITS__JOIN_ATTEMPTS_PER_MINUTE", "100000")
            .env("HERMIT__LIMITS__AUTH_ATTEMPTS_PER_MINUTE", "100000")
            .env("HERMIT__LIMITS__FAILED_JOINS_PER_MINUTE", "100000")
            .env(
                "HERMIT__LIMITS__FAILED_JOINS_PER_NETWORK_PER_MINUTE",
                "100000",
            )
            .env("HERMIT__LOG__LEVEL", "info")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("the relay binary starts");
        Self {
            id: id.to_owned(),
            port,
            child,
            log,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until `/ready` answers 200 (the database is migrated and Redis reached).
    async fn ready(&mut self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("{} exited at start ({status})", self.id);
            }
            if let Ok(response) = reqwest::get(self.url("/ready")).await {
                if response.status().as_u16() == 200 {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "{} never became ready", self.id);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The value of the series `name` (exactly as written, labels included) in `/metrics`.
    async fn metric(&self, name: &str) -> f64 {
        let text = reqwest::get(self.url("/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("{} has no series {name}", self.id))
            .trim()
            .parse()
            .unwrap()
    }
}

/// A biscuit root key file, made as the README says (one for every node), mode 0600.
fn write_root_key(path: &Path) {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let hex: String = rand::random::<[u8; 32]>()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .unwrap();
    writeln!(file, "ed25519-private/{hex}").unwrap();
}

/// Opens a WebSocket through nginx.
async fn through(nginx_port: u16, path: &str) -> Ws {
    let url = format!("ws://127.0.0.1:{nginx_port}{path}");
    let (ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("websocket connects through nginx");
    ws
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn macs_and_browsers_behind_round_robin_nginx_pair_across_three_node_processes() {
    let Some(binary) = nginx_binary() else { return };
    let Some(redis) = redis_url() else { return };
    let Some(db) = TestDb::postgres() else { return };
    let prefix = prefix();
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("biscuit-root.key");
    write_root_key(&key_file);
    let shared = Shared {
        db: &db,
        redis: &redis,
        prefix: &prefix,
        key_file: &key_file,
        dir: dir.path(),
    };
    let ids = ["relay-1", "relay-2", "relay-3"];
    let mut nodes = ids.map(|id| NodeProcess::spawn(id, &shared));
    for node in &mut nodes {
        node.ready(START).await;
    }
    // Each node must know the two others before a browser on it can reach a mac on them.
    let deadline = Instant::now() + START;
    for node in &nodes {
        for other in ids.iter().filter(|other| **other != node.id) {
            let up = format!(r#"NodeUp(NodeId("{other}"))"#);
            while !node.log().contains(&up) {
                assert!(Instant::now() < deadline, "{} never saw {other}", node.id);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    let nginx = start_round_robin(&binary, nodes.each_ref().map(|node| node.port));

    // Macs and browsers alternate, so round robin puts each browser on another node than
    // its mac; which node got what is read from the nodes themselves below.
    let mut pairs = Vec::new();
    for _ in 0..PAIRS {
        let mut mac = through(nginx.port, "/mac").await;
        let registered = recv(&mut mac).await;
        assert_eq!(registered["type"], "registered", "{registered}");
        let code = registered["code"].as_str().unwrap().to_owned();
        let mut browser = through(nginx.port, "/browser").await;
        send(&mut browser, json!({"type": "join", "code": code})).await;
        let joined = recv(&mut browser).await;
        assert_eq!(joined["type"], "joined", "{joined}");
        assert_eq!(
            recv(&mut mac).await,
            joined,
            "both sides hear the same joined"
        );
        pairs.push((mac, browser));
    }

    let mut macs_per_node = Vec::new();
    for node in &nodes {
        macs_per_node.push(node.metric(r#"hermit_connections{endpoint="/mac"}"#).await);
    }
    eprintln!("macs per node: {macs_per_node:?}");
    assert_eq!(
        macs_per_node.iter().sum::<f64>(),
        PAIRS as f64,
        "every mac is on some node: {macs_per_node:?}"
    );
    assert!(
        macs_per_node.iter().all(|&macs| macs >= 1.0),
        "round robin spread the macs over all three nodes: {macs_per_node:?}"
    );

    for n in 0..MESSAGES {
        for (i, (mac, browser)) in pairs.iter_mut().enumerate() {
            send_data(mac, &format!("pair {i}: to browser {n}")).await;
            send_data(browser, &format!("pair {i}: to mac {n}")).await;
        }
    }
    for n in 0..MESSAGES {
        for (i, (mac, browser)) in pairs.iter_mut().enumerate() {
            expect_data(browser, &format!("pair {i}: to browser {n}")).await;
            expect_data(mac, &format!("pair {i}: to mac {n}")).await;
        }
    }
    // The data crossed nodes: through Redis, not within one process.
    for node in &nodes {
        let sent = node.metric("hermit_cluster_sent_total").await;
        eprintln!("{} sent {sent} envelopes to other nodes", node.id);
        assert!(sent > 0.0, "{} relayed nothing to other nodes", node.id);
    }

    // One root key: a token signed by the node that registered the account works on all.
    let http = reqwest::Client::new();
    let account: serde_json::Value = http
        .post(format!("http://127.0.0.1:{}/auth/register", nginx.port))
        .json(&json!({"email": "ops@example.com", "password": "a long passphrase 1"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = account["accessToken"]
        .as_str()
        .expect("registered")
        .to_owned();
    for node in &nodes {
        let status = http
            .get(node.url("/api/machines"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status.as_u16(), 200, "{} refused the token", node.id);
    }
    drop(nginx);
}
