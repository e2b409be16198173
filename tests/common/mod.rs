//! Test harness: the real relay on port 0 in its own actix system, and WebSocket clients.
#![allow(dead_code)]

use std::sync::mpsc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use hermit_relay::config::Settings;
use hermit_relay::startup::Application;
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub mod account;
pub mod cluster;
pub mod links;
pub mod lossless;
pub mod lossless_account;
pub mod nginx;
pub mod proxy;
pub mod redis;

/// A free port on loopback (bound and released: whoever binds it next binds it right
/// after, so another test taking it in between is unlikely, not impossible).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Runs each named `async fn(TestDb)` once per backend: `sqlite::name` and `postgres::name`.
#[allow(unused_macros)]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::TestDb::sqlite()).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    if let Some(db) = super::TestDb::postgres() {
                        super::$name(db).await;
                    }
                }
            )*
        }
    };
}

/// A client socket.
pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How long a test waits for any one expected message.
pub const WAIT: Duration = Duration::from_secs(10);

/// A database of its own for one test: a SQLite file in a temporary directory, or a
/// fresh PostgreSQL database created from `TEST_POSTGRES_URL` and dropped afterwards.
pub struct TestDb {
    pub url: String,
    dir: tempfile::TempDir,
    /// `(admin url, database name)` to drop the PostgreSQL database.
    postgres: Option<(String, String)>,
}

impl TestDb {
    /// A fresh SQLite database.
    pub fn sqlite() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("relay.db").display());
        Self {
            url,
            dir,
            postgres: None,
        }
    }

    /// A fresh PostgreSQL database, or `None` when `TEST_POSTGRES_URL` is not set. CI sets
    /// it (see `.ci/run`), so there these tests run and fail if PostgreSQL is missing.
    pub fn postgres() -> Option<Self> {
        let Ok(admin) = std::env::var("TEST_POSTGRES_URL") else {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI must set TEST_POSTGRES_URL: the PostgreSQL tests are mandatory there"
            );
            eprintln!("TEST_POSTGRES_URL is not set: PostgreSQL variant not run");
            return None;
        };
        use diesel::{Connection, RunQueryDsl};
        let name = format!("hermit_test_{}", uuid::Uuid::new_v4().simple());
        let mut conn = diesel::PgConnection::establish(&admin)
            .unwrap_or_else(|err| panic!("PostgreSQL at TEST_POSTGRES_URL is unreachable: {err}"));
        diesel::sql_query(format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .unwrap();
        let base = admin
            .rsplit_once('/')
            .map_or(admin.as_str(), |(base, _)| base);
        let url = format!("{base}/{name}");
        Some(Self {
            url,
            dir: tempfile::tempdir().unwrap(),
            postgres: Some((admin, name)),
        })
    }

    /// The access-token key file the relay uses with [`Self::settings`].
    pub fn key_path(&self) -> std::path::PathBuf {
        self.dir.path().join("root.key")
    }

    /// Settings that use this database and a key file beside it.
    pub fn settings(&self, mut settings: Settings) -> Settings {
        settings.database.url = self.url.clone();
        settings.auth.private_key_file = self.key_path();
        settings
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Some((admin, name)) = &self.postgres {
            use diesel::{Connection, RunQueryDsl};
            if let Ok(mut conn) = diesel::PgConnection::establish(admin) {
                let _ = diesel::sql_query(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .execute(&mut conn);
            }
        }
    }
}

/// The relay, running until dropped.
pub struct TestServer {
    pub port: u16,
    handle: actix_server::ServerHandle,
    pub hash_stats: std::sync::Arc<hermit_relay::auth::password::HashStats>,
    /// The database the server uses when the test did not bring one.
    _own_db: Option<TestDb>,
}

impl TestServer {
    /// Starts the relay with `settings` on a fresh SQLite database of its own.
    pub fn start(settings: Settings) -> Self {
        let db = TestDb::sqlite();
        let mut server = Self::start_with(db.settings(settings));
        server._own_db = Some(db);
        server
    }

    /// Starts the relay on `db`.
    pub fn start_on(db: &TestDb, settings: Settings) -> Self {
        Self::start_with(db.settings(settings))
    }

    /// Starts the relay with exactly `settings` (its bind address becomes 127.0.0.1:0).
    pub fn start_with(mut settings: Settings) -> Self {
        settings.server.bind = "127.0.0.1:0".parse().unwrap();
        settings.server.workers = 2;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            actix_rt::System::new().block_on(async move {
                let app = Application::build(settings).expect("relay starts");
                tx.send((app.port(), app.handle(), app.hash_stats()))
                    .unwrap();
                app.run_until_stopped().await.unwrap();
            });
        });
        let (port, handle, hash_stats) = rx.recv().expect("relay reports its port");
        Self {
            port,
            handle,
            hash_stats,
            _own_db: None,
        }
    }

    /// `http://127.0.0.1:PORT{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// `ws://127.0.0.1:PORT{path}`.
    pub fn ws_url(&self, path: &str) -> String {
        format!("ws://127.0.0.1:{}{path}", self.port)
    }

    /// Opens a WebSocket to `path`.
    pub async fn connect(&self, path: &str) -> Ws {
        let (ws, _) = tokio_tungstenite::connect_async(self.ws_url(path))
            .await
            .expect("websocket connects");
        ws
    }
}

/// The first of `places` where `name` is installed, or `None` (outside CI, said out loud:
/// the test is not run); under CI a missing one fails the test, as `.ci/run` installs it.
pub fn required_binary(name: &str, places: &[&str]) -> Option<std::path::PathBuf> {
    let found = places
        .iter()
        .map(std::path::PathBuf::from)
        .find(|place| place.exists());
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "{name} is required under CI (.ci/run installs it)"
        );
        eprintln!("{name} is not installed: test not run");
    }
    found
}

/// A relay a test talks to: one server, or one node of a cluster.
pub trait RelayPort {
    /// Its port on 127.0.0.1.
    fn port(&self) -> u16;
}

/// A relay known only by its port.
impl RelayPort for u16 {
    fn port(&self) -> u16 {
        *self
    }
}

impl RelayPort for TestServer {
    fn port(&self) -> u16 {
        self.port
    }
}

/// `http://127.0.0.1:PORT{path}` of `relay`.
pub fn url_of(relay: &impl RelayPort, path: &str) -> String {
    format!("http://127.0.0.1:{}{path}", relay.port())
}

/// Opens a WebSocket to `path` on `relay`.
pub async fn connect_to(relay: &impl RelayPort, path: &str) -> Ws {
    let url = format!("ws://127.0.0.1:{}{path}", relay.port());
    let (ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("websocket connects");
    ws
}

impl Drop for TestServer {
    fn drop(&mut self) {
        // The stop command is sent when `stop` is called; the future only awaits completion.
        drop(self.handle.stop(false));
    }
}

/// Settings for tests: short but not flaky durations.
pub fn settings() -> Settings {
    let mut s = Settings::defaults();
    s.heartbeat.interval_secs = 5;
    s.heartbeat.timeout_secs = 5;
    // Every test client comes from 127.0.0.1; tests of the limits set their own.
    s.limits.join_attempts_per_minute = 100_000;
    s.limits.auth_attempts_per_minute = 100_000;
    s.limits.max_connections_per_ip = 100_000;
    s.limits.max_http_connections_per_ip = 100_000;
    s.limits.failed_joins_per_minute = 100_000;
    s.limits.failed_joins_per_network_per_minute = 100_000;
    s.auth.max_queued_hashes = 100_000;
    s.auth.max_queued_hashes_per_address = 100_000;
    s.limits.login_failures_per_account_per_hour = 100_000;
    s
}

/// Opens a WebSocket to `127.0.0.1:port{path}` from source address `from` (any
/// 127.0.0.x), with extra request headers; the HTTP refusal if the upgrade is refused.
pub async fn connect_from(
    port: u16,
    path: &str,
    from: &str,
    headers: &[(&'static str, &str)],
) -> Result<Ws, tokio_tungstenite::tungstenite::Error> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::http::HeaderValue;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
    let stream = socket.connect(([127, 0, 0, 1], port).into()).await.unwrap();
    let mut request = format!("ws://127.0.0.1:{port}{path}")
        .into_client_request()
        .unwrap();
    for (name, value) in headers {
        request
            .headers_mut()
            .insert(*name, HeaderValue::from_str(value).unwrap());
    }
    let (ws, _) = tokio_tungstenite::client_async(request, MaybeTlsStream::Plain(stream)).await?;
    Ok(ws)
}

/// Sends a JSON message.
pub async fn send(ws: &mut Ws, value: Value) {
    ws.send(Message::text(value.to_string())).await.unwrap();
}

/// The next JSON message, skipping control frames and the relay's JSON heartbeat pings;
/// panics after [`WAIT`].
pub async fn recv(ws: &mut Ws) -> Value {
    tokio::time::timeout(WAIT, async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(text))) => {
                    let msg: Value = serde_json::from_str(&text).unwrap();
                    if msg["type"] != "ping" {
                        return msg;
                    }
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                other => panic!("expected a JSON message, got {other:?}"),
            }
        }
    })
    .await
    .expect("a message arrives in time")
}

/// The next text message exactly as it arrived (skipping control frames); panics after
/// [`WAIT`].
pub async fn recv_raw(ws: &mut Ws) -> String {
    tokio::time::timeout(WAIT, next_raw(ws))
        .await
        .expect("a message arrives in time")
        .expect("the connection is open")
}

/// The next text message as it arrived, or `None` once the connection ends.
pub async fn next_raw(ws: &mut Ws) -> Option<String> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(text))) => return Some(text.to_string()),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            _ => return None,
        }
    }
}

/// The next JSON message that is not an `ack` (lossless mode) or a JSON ping.
pub async fn recv_type_skipping_acks(ws: &mut Ws) -> Value {
    loop {
        let msg = recv(ws).await;
        if msg["type"] != "ack" {
            return msg;
        }
    }
}

/// Asserts the next message is an `error` with `code`, and returns its text.
pub async fn expect_error(ws: &mut Ws, code: &str) -> String {
    let msg = recv(ws).await;
    assert_eq!(msg["type"], "error", "{msg}");
    assert_eq!(msg["code"], code, "{msg}");
    msg["message"].as_str().unwrap().to_owned()
}

/// Asserts nothing but control frames arrives for `quiet`.
pub async fn expect_silence(ws: &mut Ws, quiet: Duration) {
    let got = tokio::time::timeout(quiet, async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                other => return other,
            }
        }
    })
    .await;
    assert!(got.is_err(), "expected silence, got {got:?}");
}

/// Proves the connection is still usable: a ping is answered with its pong.
pub async fn assert_usable(ws: &mut Ws) {
    send(ws, json!({"type": "ping", "ts": 42})).await;
    let msg = recv(ws).await;
    assert_eq!(msg, json!({"type": "pong", "ts": 42}));
}

/// Waits until the relay closes `ws`; returns the close code if a close frame came.
pub async fn expect_closed(ws: &mut Ws, within: Duration) -> Option<u16> {
    tokio::time::timeout(within, async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(frame))) => return frame.map(|f| u16::from(f.code)),
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return None,
            }
        }
    })
    .await
    .expect("the relay closes the connection in time")
}

/// A mac connected to `/mac`, with the code it was given.
pub async fn mac(server: &TestServer) -> (Ws, String) {
    let mut ws = server.connect("/mac").await;
    let msg = recv(&mut ws).await;
    assert_eq!(msg["type"], "registered", "{msg}");
    let code = msg["code"].as_str().unwrap().to_owned();
    (ws, code)
}

/// A mac and a browser paired through a code; returns both and the session id.
pub async fn pair(server: &TestServer) -> (Ws, Ws, String) {
    let (mut mac, code) = mac(server).await;
    let mut browser = server.connect("/browser").await;
    send(&mut browser, json!({"type": "join", "code": code})).await;
    let joined = recv(&mut browser).await;
    assert_eq!(joined["type"], "joined", "{joined}");
    let session = joined["sessionId"].as_str().unwrap().to_owned();
    assert_eq!(recv(&mut mac).await, joined);
    (mac, browser, session)
}

/// Sends `data` with `payload`.
pub async fn send_data(ws: &mut Ws, payload: &str) {
    send(ws, json!({"type": "data", "payload": payload})).await;
}

/// `count` `data` messages each way between a paired `mac` and `browser`, sent back to
/// back, then each checked to arrive once, in order.
pub async fn exchange(mac: &mut Ws, browser: &mut Ws, tag: &str, count: usize) {
    for n in 0..count {
        send_data(mac, &format!("{tag}: to browser {n}")).await;
        send_data(browser, &format!("{tag}: to mac {n}")).await;
    }
    for n in 0..count {
        expect_data(browser, &format!("{tag}: to browser {n}")).await;
        expect_data(mac, &format!("{tag}: to mac {n}")).await;
    }
}

/// Asserts the next message is `data` with exactly `payload`.
pub async fn expect_data(ws: &mut Ws, payload: &str) {
    let msg = recv(ws).await;
    assert_eq!(
        msg["type"],
        "data",
        "{}",
        &msg.to_string()[..msg.to_string().len().min(200)]
    );
    assert!(
        msg["payload"] == payload,
        "payload changed in transit: expected {payload}, got {}",
        &msg.to_string()[..msg.to_string().len().min(200)]
    );
}

/// Resident memory of this process (the relay runs in it), in bytes.
pub fn rss_bytes() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    let kib: usize = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}
