//! Nodes of a cluster in one test: real relays on port 0 sharing one PostgreSQL database
//! and one Redis under a key prefix of the test's own, each with its [`Cluster`] handle.

use std::sync::Arc;
use std::time::{Duration, Instant};

use hermit_relay::cluster::{Cluster, ClusterEvent, Inbound, Inbox};
use hermit_relay::config::Settings;
use hermit_relay::startup::Application;

use super::TestDb;

/// The Redis the cluster tests use, or `None` (the test is not run) when `TEST_REDIS_URL`
/// is not set. CI sets it (see `.ci/run`): there a missing Redis fails the test.
pub fn redis_url() -> Option<String> {
    match std::env::var("TEST_REDIS_URL") {
        Ok(url) => Some(url),
        Err(_) => {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI must set TEST_REDIS_URL: the cluster tests are mandatory there"
            );
            eprintln!("TEST_REDIS_URL is not set: cluster test not run");
            None
        }
    }
}

/// A key prefix no other test uses.
pub fn prefix() -> String {
    format!("hermit-test-{}", uuid::Uuid::new_v4().simple())
}

/// Settings for a node of the test's cluster: its database, Redis and prefix, with short
/// heartbeats (a dead node is noticed within about two seconds).
pub fn node_settings(db: &TestDb, redis: &str, prefix: &str) -> Settings {
    let mut s = db.settings(super::settings());
    s.cluster.redis_url = redis.to_owned();
    s.cluster.key_prefix = prefix.to_owned();
    s.cluster.heartbeat_ms = 200;
    s.cluster.node_timeout_secs = 2;
    s.cluster.redis_timeout_ms = 500;
    s.cluster.link_listen = "127.0.0.1:0".to_owned();
    s
}

/// Settings for sides that lose a connection and come back: short relay heartbeats, a
/// long resume grace, acknowledgements every 100 ms (the lossless tests across nodes).
pub fn resumable(s: &mut Settings) {
    s.heartbeat.interval_secs = 1;
    s.heartbeat.timeout_secs = 2;
    s.pairing.resume_grace_secs = 30;
    s.pairing.ack_interval_ms = 100;
    s.pairing.ack_ping_interval_secs = 1;
}

/// One node, running until dropped (dropping it stops it as a crash would).
pub struct TestNode {
    pub port: u16,
    pub cluster: Arc<Cluster>,
    handle: actix_server::ServerHandle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    stopped: Option<std::sync::mpsc::Receiver<()>>,
}

impl TestNode {
    /// Starts a node with exactly `settings` (bound to 127.0.0.1:0).
    pub fn start(mut settings: Settings) -> Self {
        settings.server.bind = "127.0.0.1:0".parse().unwrap();
        settings.server.workers = 2;
        let (tx, rx) = std::sync::mpsc::channel();
        let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (done_tx, stopped) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            actix_rt::System::new().block_on(async move {
                let app = Application::build(settings).expect("node starts");
                let cluster = app.cluster().expect("a cluster is configured");
                tx.send((app.port(), app.handle(), cluster)).unwrap();
                let _ = app
                    .run_until(async move {
                        let _ = stop_rx.await;
                        "test"
                    })
                    .await;
                let _ = done_tx.send(());
            });
        });
        let (port, handle, cluster) = rx.recv().expect("node reports its port");
        Self {
            port,
            cluster,
            handle,
            stop: Some(stop),
            stopped: Some(stopped),
        }
    }

    /// `http://127.0.0.1:PORT{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Opens a WebSocket to `path`.
    pub async fn connect(&self, path: &str) -> super::Ws {
        let url = format!("ws://127.0.0.1:{}{path}", self.port);
        let (ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("websocket connects");
        ws
    }

    /// Shuts the node down gracefully (as on SIGTERM) and waits until it has left.
    pub async fn shut_down(mut self) {
        let _ = self.stop.take().unwrap().send(());
        let stopped = self.stopped.take().unwrap();
        tokio::task::spawn_blocking(move || stopped.recv_timeout(Duration::from_secs(20)))
            .await
            .unwrap()
            .expect("the node shuts down in time");
    }
}

impl super::RelayPort for TestNode {
    fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        // Stopped without a word, as a crash: its heartbeat simply expires.
        self.cluster.halt();
        drop(self.handle.stop(false));
    }
}

/// Waits until `check` holds, polling; panics with `what` after `within`.
pub async fn eventually(within: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The next event in `inbox`, skipping envelopes; panics after `within`.
pub async fn next_event(inbox: &Inbox, within: Duration) -> ClusterEvent {
    tokio::time::timeout(within, async {
        loop {
            if let Inbound::Event(event) = inbox.recv().await {
                return event;
            }
        }
    })
    .await
    .expect("a cluster event arrives in time")
}

/// `n` nodes of one cluster, each knowing every other.
pub async fn cluster_of(
    n: usize,
    adjust: impl Fn(&mut Settings),
) -> Option<(TestDb, Vec<TestNode>)> {
    let redis = redis_url()?;
    let db = TestDb::postgres()?;
    let prefix = prefix();
    let nodes: Vec<TestNode> = (0..n)
        .map(|_| {
            let mut s = node_settings(&db, &redis, &prefix);
            adjust(&mut s);
            TestNode::start(s)
        })
        .collect();
    all_know_each_other(&nodes).await;
    Some((db, nodes))
}

/// Waits until every one of `nodes` is healthy and knows every other.
pub async fn all_know_each_other(nodes: &[TestNode]) {
    let deadline = Instant::now() + Duration::from_secs(8);
    let all_known = |nodes: &[TestNode]| {
        nodes.iter().all(|node| {
            node.cluster.healthy()
                && nodes.iter().all(|other| {
                    let other = other.cluster.node_id();
                    other == node.cluster.node_id() || node.cluster.nodes().contains(other)
                })
        })
    };
    while !all_known(nodes) {
        assert!(
            Instant::now() < deadline,
            "the nodes did not find each other"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What `/ready` of `node` answers now.
pub async fn ready_status(node: &TestNode) -> u16 {
    reqwest::get(node.url("/ready"))
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// Waits until `/ready` of `node` answers `status`; panics after `within`.
pub async fn ready_becomes(node: &TestNode, status: u16, within: Duration) {
    let deadline = Instant::now() + within;
    while ready_status(node).await != status {
        assert!(Instant::now() < deadline, "/ready did not become {status}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
