//! The settings themselves: every section and key, the errors that refuse them, and the
//! [`Live`] handle a running relay reads them through. Loading is the parent module's.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::{ArcSwap, Guard};
use serde::{Deserialize, Serialize};

use super::values::{self, AuditTarget, ForwardedHeader, LogFormat, Registration};

/// Prefix of environment overrides: `HERMIT__SERVER__BIND`.
pub const ENV_PREFIX: &str = "HERMIT";

/// Every setting of the relay. Each field's default and meaning is documented in
/// `config/default.toml`; tests shorten durations by changing fields here.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Listening socket and worker threads.
    pub server: ServerSettings,
    /// Where accounts are stored.
    pub database: DatabaseSettings,
    /// Accounts, passwords and tokens.
    pub auth: AuthSettings,
    /// Quick pairing by code.
    pub pairing: PairingSettings,
    /// WebSocket liveness.
    pub heartbeat: HeartbeatSettings,
    /// Limits that bound what one peer can cost the relay.
    pub limits: LimitSettings,
    /// Logging.
    pub log: LogSettings,
    /// `/metrics`.
    pub metrics: MetricsSettings,
    /// The audit log of security-relevant actions.
    pub audit: AuditSettings,
    /// How the running relay hears of changes made by the admin commands.
    pub admin: AdminSettings,
    /// Several nodes sharing one Redis; off when `redis_url` is empty.
    pub cluster: super::cluster::ClusterSettings,
}

/// `[log]`
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    /// Text or JSON lines.
    pub format: LogFormat,
    /// A `tracing` filter such as `info` or `hermit_relay=debug`; `RUST_LOG` overrides it.
    pub level: String,
}

/// `[metrics]`. Its `Debug` hides the token.
#[derive(Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsSettings {
    /// Serve `/metrics`.
    pub enabled: bool,
    /// If not empty, the bearer token scrapers must send.
    pub token: String,
}

/// `[audit]`
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AuditSettings {
    /// Into the log (a `tracing` event with target `audit`) or a file of its own.
    pub target: AuditTarget,
    /// With `target = "file"`: appended, one JSON object a line, reopened on `SIGHUP`.
    pub file: PathBuf,
}

/// `[admin]`
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AdminSettings {
    /// How often the relay looks for changes made by `hermit-relay users …` and
    /// `machines revoke` (one indexed read of one row).
    pub poll_interval_ms: u64,
}

/// `[server]`
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSettings {
    /// Address to listen on (`IP:PORT`); port 0 picks a free port (tests).
    #[serde(deserialize_with = "values::socket_addr")]
    pub bind: SocketAddr,
    /// Worker threads; 0 means one per CPU core.
    pub workers: usize,
    /// Most simultaneous connections per worker thread.
    pub max_connections_per_worker: usize,
    /// Grace given to open connections at shutdown.
    pub shutdown_timeout_secs: u64,
    /// Proxies whose forwarding headers are believed (a bare IP is a /32 or /128).
    #[serde(deserialize_with = "values::networks")]
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Origins allowed on the browser-facing WebSocket endpoints (empty = any), and the
    /// only origins the HTTP API answers cross-origin requests from (empty = none).
    #[serde(deserialize_with = "values::list")]
    pub allowed_origins: Vec<String>,
    /// Which header trusted proxies write the client address in; the other is ignored.
    pub forwarded_header: ForwardedHeader,
    /// A request body must arrive whole within this many seconds of its head.
    pub body_timeout_secs: u64,
    /// After the relay closes a connection, how long it keeps reading (and discarding) what
    /// the client still sends, so its last answer is not lost to a TCP reset. 0 = never.
    pub linger_secs: u64,
    /// Most bytes read and discarded while lingering.
    pub linger_bytes: usize,
    /// Most connections lingering at once; past it a connection is closed at once.
    pub max_lingering: usize,
}

/// `[database]`. Its `Debug` hides the password in the URL.
#[derive(Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSettings {
    /// `sqlite://PATH` or `postgres://…`.
    pub url: String,
    /// Most open connections.
    pub pool_size: u32,
    /// The longest any one database round trip may take, connecting included; past it the
    /// request is answered 503.
    pub connect_timeout_secs: u64,
    /// Apply pending migrations at start.
    pub run_migrations: bool,
    /// `/ready` reuses its check this long; while the database is down it is re-checked
    /// this often.
    pub health_check_interval_ms: u64,
    /// While the database stays down, one "still down" log line this often.
    pub outage_log_interval_secs: u64,
    /// Largest size of a SQLite database, in bytes; 0 = only the disk limits it.
    pub sqlite_max_bytes: u64,
}

/// `[auth]`
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSettings {
    /// File holding the biscuit root private key.
    pub private_key_file: PathBuf,
    /// Other public keys (`ed25519/<hex>`) whose tokens are accepted: a key rotation's
    /// next or previous key.
    #[serde(deserialize_with = "values::list")]
    pub accepted_public_keys: Vec<String>,
    /// Who may create an account through `/auth/register`.
    pub registration: Registration,
    /// With `registration = "allowlist"`: exact addresses and `*@domain` patterns.
    #[serde(deserialize_with = "values::list")]
    pub allowed_emails: Vec<String>,
    /// Access token lifetime.
    pub access_token_ttl_secs: u64,
    /// Refresh token lifetime.
    pub refresh_token_ttl_secs: u64,
    /// Device token lifetime.
    pub device_token_ttl_secs: u64,
    /// Password hashes computed at once.
    pub max_concurrent_hashes: usize,
    /// Wait for a hashing slot at most this long.
    pub hash_queue_timeout_secs: u64,
    /// Most hashing jobs waiting at once; past it, 503 at once.
    pub max_queued_hashes: usize,
    /// Most hashing jobs waiting at once from one client address.
    pub max_queued_hashes_per_address: usize,
    /// A hashing thread idle this long frees its memory.
    pub hash_memory_release_secs: u64,
    /// Unauthenticated `/ws/agent` and `/ws/client` sockets are closed after this long.
    pub deadline_secs: u64,
    /// A refresh token presented again this soon after it was spent gets the same next
    /// token (its first answer was lost); 0 = any second use revokes the family.
    pub refresh_retry_grace_secs: u64,
    /// How often expired and revoked refresh tokens are deleted.
    pub token_purge_interval_secs: u64,
}

/// `[pairing]`
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PairingSettings {
    /// Lifetime of an unjoined code.
    pub code_ttl_secs: u64,
    /// Characters in a code.
    pub code_length: usize,
    /// Characters a code is drawn from.
    pub code_alphabet: String,
    /// How long a side lost without a close frame may resume.
    pub resume_grace_secs: u64,
    /// Most bytes held for a side that is away.
    pub resume_buffer_bytes: usize,
    /// Lossless mode: most bytes sent to a side and not yet acknowledged by it.
    pub replay_window_bytes: usize,
    /// Lossless mode: how often the relay acknowledges a side's messages, at most.
    pub ack_interval_ms: u64,
    /// Lossless mode: how often the relay sends a side a JSON `ping`.
    pub ack_ping_interval_secs: u64,
    /// An unpaired /mac or /browser connection is closed after this long.
    pub idle_unpaired_timeout_secs: u64,
    /// How long expired and used codes are remembered.
    pub retired_code_memory_secs: u64,
}

/// `[heartbeat]`
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HeartbeatSettings {
    /// Seconds between the relay's WebSocket pings.
    pub interval_secs: u64,
    /// Extra seconds of silence tolerated after an interval before dropping.
    pub timeout_secs: u64,
}

/// `[limits]`
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LimitSettings {
    /// Largest reassembled WebSocket message accepted.
    pub max_message_bytes: usize,
    /// Most bytes queued for writing to one connection.
    pub max_outbound_bytes: usize,
    /// Most unpaired codes alive at once.
    pub max_pending_codes: usize,
    /// Most open WebSockets per client address.
    pub max_connections_per_ip: usize,
    /// Most open plain HTTP connections per socket peer (trusted proxies exempt).
    pub max_http_connections_per_ip: usize,
    /// `join`/`resume` attempts per client address per minute.
    pub join_attempts_per_minute: u32,
    /// Login/register/refresh attempts per client address per minute.
    pub auth_attempts_per_minute: u32,
    /// Largest JSON request body.
    pub max_body_bytes: usize,
    /// Addresses tracked by the rate limiters at once.
    pub max_tracked_addresses: usize,
    /// `join`s naming no live code, relay-wide, per minute.
    pub failed_joins_per_minute: u32,
    /// `join`s naming no live code, per network (IPv4 /24, IPv6 /48), per minute.
    pub failed_joins_per_network_per_minute: u32,
    /// Machines one user may register.
    pub max_machines_per_user: usize,
    /// Wrong passwords per account per hour, from browsers without its device token.
    pub login_failures_per_account_per_hour: u32,
    /// Accounts tracked by the login throttle at once.
    pub max_tracked_accounts: usize,
}

/// A setting that cannot be used, named by its key and where its value came from, so the
/// operator can find it. Printed once, as one line: it carries no separate `source`.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read or parsed as TOML.
    #[error("configuration error: {0}")]
    Load(String),
    /// A key's value is unusable: wrong type, unknown key, out of range, inconsistent.
    #[error("configuration error: `{key}` {problem} ({origin})")]
    Invalid {
        /// The dotted key, e.g. `pairing.code_length`.
        key: String,
        /// What is wrong with it.
        problem: String,
        /// Where the value came from.
        origin: Origin,
    },
}

/// A value [`check`] refuses, before its origin is known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The dotted key.
    pub key: &'static str,
    /// What is wrong with it.
    pub problem: String,
}

/// Where a value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// `config/default.toml`, compiled in.
    Default,
    /// The configuration file.
    File(PathBuf),
    /// An environment variable, by name.
    Env(String),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Default => f.write_str("the built-in default"),
            Self::File(path) => write!(f, "set in {}", path.display()),
            Self::Env(var) => write!(f, "set by the environment variable {var}"),
        }
    }
}

/// The settings a running relay uses now: a cheap handle every part of the relay clones,
/// swapped whole when a reload succeeds. Reading costs one atomic load, without a lock;
/// a reader holds the snapshot it loaded, so one request or connection sees one version.
#[derive(Debug, Clone)]
pub struct Live(Arc<ArcSwap<Settings>>);

impl Live {
    /// A handle starting at `settings`.
    pub fn new(settings: Settings) -> Self {
        Self(Arc::new(ArcSwap::from_pointee(settings)))
    }

    /// The current settings, for a short look (no reference count is taken).
    pub fn get(&self) -> Guard<Arc<Settings>> {
        self.0.load()
    }

    /// The current settings, to keep (a new connection keeps the version it started with).
    pub fn snapshot(&self) -> Arc<Settings> {
        self.0.load_full()
    }

    /// Makes `settings` current for everything that reads from now on.
    pub fn store(&self, settings: Settings) {
        self.0.store(Arc::new(settings));
    }
}

/// `Settings` derives `Debug` from its sections, so these two keep a `{:?}` of the whole
/// settings (a log line, a panic message) free of the database password and metrics token.
impl fmt::Debug for DatabaseSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DatabaseSettings")
            .field("url", &values::redact_url(&self.url))
            .field("pool_size", &self.pool_size)
            .field("connect_timeout_secs", &self.connect_timeout_secs)
            .field("run_migrations", &self.run_migrations)
            .field("health_check_interval_ms", &self.health_check_interval_ms)
            .field("outage_log_interval_secs", &self.outage_log_interval_secs)
            .field("sqlite_max_bytes", &self.sqlite_max_bytes)
            .finish()
    }
}

impl fmt::Debug for MetricsSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let token = if self.token.is_empty() { "" } else { "***" };
        f.debug_struct("MetricsSettings")
            .field("enabled", &self.enabled)
            .field("token", &token)
            .finish()
    }
}

impl ServerSettings {
    /// [`Self::linger_secs`] as a duration.
    pub fn linger(&self) -> Duration {
        Duration::from_secs(self.linger_secs)
    }
    /// [`Self::body_timeout_secs`] as a duration.
    pub fn body_timeout(&self) -> Duration {
        Duration::from_secs(self.body_timeout_secs)
    }
}

impl DatabaseSettings {
    /// [`Self::connect_timeout_secs`] as a duration.
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_secs(self.connect_timeout_secs)
    }
    /// [`Self::health_check_interval_ms`] as a duration.
    pub fn health_check_interval(&self) -> Duration {
        Duration::from_millis(self.health_check_interval_ms)
    }
    /// [`Self::outage_log_interval_secs`] as a duration.
    pub fn outage_log_interval(&self) -> Duration {
        Duration::from_secs(self.outage_log_interval_secs)
    }
}

impl AdminSettings {
    /// [`Self::poll_interval_ms`] as a duration.
    pub fn poll_interval(&self) -> Duration {
        Duration::from_millis(self.poll_interval_ms)
    }
}

impl AuthSettings {
    /// [`Self::access_token_ttl_secs`] as a duration.
    pub fn access_token_ttl(&self) -> Duration {
        Duration::from_secs(self.access_token_ttl_secs)
    }
    /// [`Self::refresh_token_ttl_secs`] as a duration.
    pub fn refresh_token_ttl(&self) -> Duration {
        Duration::from_secs(self.refresh_token_ttl_secs)
    }
    /// [`Self::deadline_secs`] as a duration.
    pub fn deadline(&self) -> Duration {
        Duration::from_secs(self.deadline_secs)
    }
    /// [`Self::token_purge_interval_secs`] as a duration.
    pub fn token_purge_interval(&self) -> Duration {
        Duration::from_secs(self.token_purge_interval_secs)
    }
    /// [`Self::hash_queue_timeout_secs`] as a duration.
    pub fn hash_queue_timeout(&self) -> Duration {
        Duration::from_secs(self.hash_queue_timeout_secs)
    }
    /// [`Self::device_token_ttl_secs`] as a duration.
    pub fn device_token_ttl(&self) -> Duration {
        Duration::from_secs(self.device_token_ttl_secs)
    }
    /// [`Self::refresh_retry_grace_secs`] as a duration.
    pub fn refresh_retry_grace(&self) -> Duration {
        Duration::from_secs(self.refresh_retry_grace_secs)
    }
    /// [`Self::hash_memory_release_secs`] as a duration.
    pub fn hash_memory_release(&self) -> Duration {
        Duration::from_secs(self.hash_memory_release_secs)
    }
    /// Whether `email` (normalised: trimmed, lower case) may register under the current
    /// mode: anyone when open, no one when closed, a listed address or `*@domain` match
    /// when on the allowlist.
    pub fn may_register(&self, email: &str) -> bool {
        match self.registration {
            Registration::Open => true,
            Registration::Closed => false,
            Registration::Allowlist => self.allowed_emails.iter().any(|allowed| {
                let allowed = allowed.to_lowercase();
                match allowed.strip_prefix("*@") {
                    Some(domain) => email.rsplit_once('@').is_some_and(|(_, d)| d == domain),
                    None => allowed == email,
                }
            }),
        }
    }
}

impl PairingSettings {
    /// [`Self::code_ttl_secs`] as a duration.
    pub fn code_ttl(&self) -> Duration {
        Duration::from_secs(self.code_ttl_secs)
    }
    /// [`Self::ack_interval_ms`] as a duration.
    pub fn ack_interval(&self) -> Duration {
        Duration::from_millis(self.ack_interval_ms)
    }
    /// [`Self::ack_ping_interval_secs`] as a duration.
    pub fn ack_ping_interval(&self) -> Duration {
        Duration::from_secs(self.ack_ping_interval_secs)
    }
    /// [`Self::resume_grace_secs`] as a duration.
    pub fn resume_grace(&self) -> Duration {
        Duration::from_secs(self.resume_grace_secs)
    }
    /// [`Self::idle_unpaired_timeout_secs`] as a duration.
    pub fn idle_unpaired_timeout(&self) -> Duration {
        Duration::from_secs(self.idle_unpaired_timeout_secs)
    }
    /// [`Self::retired_code_memory_secs`] as a duration.
    pub fn retired_code_memory(&self) -> Duration {
        Duration::from_secs(self.retired_code_memory_secs)
    }
}

impl HeartbeatSettings {
    /// Time between pings.
    pub fn interval(&self) -> Duration {
        Duration::from_secs(self.interval_secs)
    }
    /// Silence after which a connection is dropped: interval + timeout.
    pub fn deadline(&self) -> Duration {
        Duration::from_secs(self.interval_secs + self.timeout_secs)
    }
}
