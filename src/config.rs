//! Settings: the operator's admin surface, loaded from TOML and the environment.
//!
//! Layers, later beats earlier: the embedded `config/default.toml`, then the file given by
//! `--config` (or `HERMIT_CONFIG`), then environment variables `HERMIT__<SECTION>__<KEY>`.
//! Unknown keys are errors, so a typo never silently falls back to a default.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use config::{Config, Environment, File, FileFormat};
use serde::{Deserialize, Serialize};

/// The defaults, compiled in so the binary runs with no files beside it.
pub const DEFAULT_TOML: &str = include_str!("../config/default.toml");

/// Prefix of environment overrides: `HERMIT__SERVER__BIND`.
const ENV_PREFIX: &str = "HERMIT";

/// Every setting of the relay. Each field's default and meaning is documented in
/// `config/default.toml`; tests shorten durations by changing fields here.
#[derive(Debug, Clone, Deserialize, Serialize)]
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
}

/// `[log]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    /// Text or JSON lines.
    pub format: LogFormat,
    /// A `tracing` filter such as `info` or `hermit_relay=debug`; `RUST_LOG` overrides it.
    pub level: String,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// For people.
    Text,
    /// One JSON object per line.
    Json,
}

/// `[metrics]`. Its `Debug` hides the token.
#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsSettings {
    /// Serve `/metrics`.
    pub enabled: bool,
    /// If not empty, the bearer token scrapers must send.
    pub token: String,
}

/// `[server]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSettings {
    /// Address to listen on; port 0 picks a free port (tests).
    pub bind: SocketAddr,
    /// Worker threads; 0 means one per CPU core.
    pub workers: usize,
    /// Most simultaneous connections per worker thread.
    pub max_connections_per_worker: usize,
    /// Grace given to open connections at shutdown.
    pub shutdown_timeout_secs: u64,
    /// Proxies whose forwarding headers are believed.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Origins allowed on the browser-facing WebSocket endpoints (empty = any), and the
    /// only origins the HTTP API answers cross-origin requests from (empty = none).
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

/// The forwarding header the relay believes (from trusted proxies only).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
pub enum ForwardedHeader {
    /// `X-Forwarded-For: client, proxy1` (nginx's `$proxy_add_x_forwarded_for`).
    #[serde(rename = "x-forwarded-for")]
    XForwardedFor,
    /// RFC 7239 `Forwarded: for=client, for=proxy1`.
    #[serde(rename = "forwarded")]
    Forwarded,
}

/// `[database]`. Its `Debug` hides the password in the URL.
#[derive(Clone, Deserialize, Serialize)]
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

/// Whether anyone may create an account.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Registration {
    /// `/auth/register` is open to anyone.
    Open,
    /// `/auth/register` answers 403.
    Closed,
}

/// `[auth]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSettings {
    /// File holding the biscuit root private key.
    pub private_key_file: PathBuf,
    /// Other public keys (`ed25519/<hex>`) whose tokens are accepted: a key rotation's
    /// next or previous key.
    pub accepted_public_keys: Vec<String>,
    /// Open or closed registration.
    pub registration: Registration,
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
#[derive(Debug, Clone, Deserialize, Serialize)]
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
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HeartbeatSettings {
    /// Seconds between the relay's WebSocket pings.
    pub interval_secs: u64,
    /// Extra seconds of silence tolerated after an interval before dropping.
    pub timeout_secs: u64,
}

/// `[limits]`
#[derive(Debug, Clone, Deserialize, Serialize)]
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

/// A setting that cannot be used, named by its key so the operator can find it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file or environment could not be read or did not have the right shape.
    #[error("configuration error: {0}")]
    Load(#[from] config::ConfigError),
    /// A value has the right type but is outside what the relay accepts.
    #[error("configuration error: `{key}` {problem}")]
    Invalid {
        /// The dotted key, e.g. `pairing.code_length`.
        key: &'static str,
        /// What is wrong with it.
        problem: String,
    },
}

impl Settings {
    /// Loads the layered settings: defaults, then `file` if given, then the environment.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load_from(file, Environment::with_prefix(ENV_PREFIX))
    }

    /// Loads with an explicit environment source (tests pass a fixed map).
    pub fn load_from(file: Option<&Path>, env: Environment) -> Result<Self, ConfigError> {
        let mut builder =
            Config::builder().add_source(File::from_str(DEFAULT_TOML, FileFormat::Toml));
        if let Some(path) = file {
            builder = builder.add_source(File::from(path).format(FileFormat::Toml).required(true));
        }
        let env = env
            .prefix_separator("__")
            .separator("__")
            .try_parsing(true)
            .list_separator(",")
            .with_list_parse_key("server.trusted_proxies")
            .with_list_parse_key("server.allowed_origins")
            .with_list_parse_key("auth.accepted_public_keys");
        let settings: Settings = builder.add_source(env).build()?.try_deserialize()?;
        settings.validate()?;
        Ok(settings)
    }

    /// The built-in defaults alone, ignoring files and the environment (tests start here).
    pub fn defaults() -> Self {
        // unwrap: the embedded default file is checked by a unit test below.
        Self::load_from(None, Environment::with_prefix("HERMIT_UNUSED_IN_DEFAULTS")).unwrap()
    }

    /// Refuses values that would make the relay misbehave, naming the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key, problem: &str| {
            Err(ConfigError::Invalid {
                key,
                problem: problem.to_owned(),
            })
        };
        let db = &self.database;
        if !(db.url.starts_with("sqlite://")
            || db.url.starts_with("postgres://")
            || db.url.starts_with("postgresql://"))
        {
            return invalid(
                "database.url",
                "must start with sqlite:// or postgres:// (or postgresql://)",
            );
        }
        if db.pool_size == 0 {
            return invalid("database.pool_size", "must be at least 1");
        }
        if db.connect_timeout_secs == 0 {
            return invalid("database.connect_timeout_secs", "must be at least 1");
        }
        if db.health_check_interval_ms < 50 {
            return invalid("database.health_check_interval_ms", "must be at least 50");
        }
        if db.outage_log_interval_secs == 0 {
            return invalid("database.outage_log_interval_secs", "must be at least 1");
        }
        if db.sqlite_max_bytes != 0 && db.sqlite_max_bytes < 65_536 {
            return invalid(
                "database.sqlite_max_bytes",
                "must be 0 (no limit) or at least 65536",
            );
        }
        let auth = &self.auth;
        if auth.access_token_ttl_secs == 0 {
            return invalid("auth.access_token_ttl_secs", "must be at least 1");
        }
        if auth.refresh_token_ttl_secs == 0 {
            return invalid("auth.refresh_token_ttl_secs", "must be at least 1");
        }
        if auth.max_concurrent_hashes == 0 {
            return invalid("auth.max_concurrent_hashes", "must be at least 1");
        }
        if auth.device_token_ttl_secs == 0 {
            return invalid("auth.device_token_ttl_secs", "must be at least 1");
        }
        if auth
            .accepted_public_keys
            .iter()
            .any(|key| crate::auth::token::parse_public_key(key).is_none())
        {
            return invalid(
                "auth.accepted_public_keys",
                "entries must be public keys as check-config prints them (ed25519/<hex>)",
            );
        }
        if auth.max_queued_hashes == 0 {
            return invalid("auth.max_queued_hashes", "must be at least 1");
        }
        if auth.max_queued_hashes_per_address == 0 {
            return invalid("auth.max_queued_hashes_per_address", "must be at least 1");
        }
        if auth.hash_memory_release_secs == 0 {
            return invalid("auth.hash_memory_release_secs", "must be at least 1");
        }
        if auth.deadline_secs == 0 {
            return invalid("auth.deadline_secs", "must be at least 1");
        }
        if auth.token_purge_interval_secs == 0 {
            return invalid("auth.token_purge_interval_secs", "must be at least 1");
        }
        if self.limits.max_body_bytes < 256 {
            return invalid("limits.max_body_bytes", "must be at least 256");
        }
        if self.limits.max_connections_per_ip == 0 {
            return invalid("limits.max_connections_per_ip", "must be at least 1");
        }
        if self.limits.join_attempts_per_minute == 0 {
            return invalid("limits.join_attempts_per_minute", "must be at least 1");
        }
        if self.limits.auth_attempts_per_minute == 0 {
            return invalid("limits.auth_attempts_per_minute", "must be at least 1");
        }
        if self.limits.max_http_connections_per_ip == 0 {
            return invalid("limits.max_http_connections_per_ip", "must be at least 1");
        }
        if self.limits.failed_joins_per_minute == 0 {
            return invalid("limits.failed_joins_per_minute", "must be at least 1");
        }
        if self.limits.failed_joins_per_network_per_minute == 0 {
            return invalid(
                "limits.failed_joins_per_network_per_minute",
                "must be at least 1",
            );
        }
        if self.server.body_timeout_secs == 0 {
            return invalid("server.body_timeout_secs", "must be at least 1");
        }
        if self.limits.login_failures_per_account_per_hour == 0 {
            return invalid(
                "limits.login_failures_per_account_per_hour",
                "must be at least 1",
            );
        }
        if self.limits.max_machines_per_user == 0 {
            return invalid("limits.max_machines_per_user", "must be at least 1");
        }
        if self.limits.max_tracked_accounts == 0 {
            return invalid("limits.max_tracked_accounts", "must be at least 1");
        }
        if self.limits.max_tracked_addresses == 0 {
            return invalid("limits.max_tracked_addresses", "must be at least 1");
        }
        for origin in &self.server.allowed_origins {
            if !(origin.starts_with("http://") || origin.starts_with("https://"))
                || origin.ends_with('/')
            {
                return invalid(
                    "server.allowed_origins",
                    "entries must look like https://app.example.com (scheme and host, no path)",
                );
            }
        }
        if tracing_subscriber::EnvFilter::try_new(&self.log.level).is_err() {
            return invalid(
                "log.level",
                "is not a valid filter such as info or hermit_relay=debug",
            );
        }
        let p = &self.pairing;
        if !(4..=32).contains(&p.code_length) {
            return invalid("pairing.code_length", "must be between 4 and 32");
        }
        let alphabet: Vec<char> = p.code_alphabet.chars().collect();
        if alphabet.len() < 16 || !alphabet.iter().all(|c| c.is_ascii_alphanumeric()) {
            return invalid(
                "pairing.code_alphabet",
                "must have at least 16 ASCII letters or digits",
            );
        }
        let mut unique = alphabet.clone();
        unique.sort_unstable();
        unique.dedup();
        if unique.len() != alphabet.len() || alphabet.iter().any(|c| c.is_ascii_lowercase()) {
            return invalid(
                "pairing.code_alphabet",
                "must not repeat characters or use lower case (input is upper-cased)",
            );
        }
        if p.code_ttl_secs == 0 {
            return invalid("pairing.code_ttl_secs", "must be at least 1");
        }
        if p.idle_unpaired_timeout_secs == 0 {
            return invalid("pairing.idle_unpaired_timeout_secs", "must be at least 1");
        }
        if self.heartbeat.interval_secs == 0 {
            return invalid("heartbeat.interval_secs", "must be at least 1");
        }
        let l = &self.limits;
        if l.max_message_bytes < 1024 {
            return invalid("limits.max_message_bytes", "must be at least 1024");
        }
        if l.max_outbound_bytes < l.max_message_bytes {
            return invalid(
                "limits.max_outbound_bytes",
                "must be at least limits.max_message_bytes, or one message could never be sent",
            );
        }
        if self.pairing.replay_window_bytes > l.max_outbound_bytes {
            return invalid(
                "pairing.replay_window_bytes",
                "must not exceed limits.max_outbound_bytes: what a side has not acknowledged \
                 must fit in its outbox when it resumes",
            );
        }
        if self.pairing.replay_window_bytes < l.max_message_bytes {
            return invalid(
                "pairing.replay_window_bytes",
                "must be at least limits.max_message_bytes, or one message could never be sent",
            );
        }
        if p.ack_interval_ms == 0 || p.ack_interval_ms > 60_000 {
            return invalid("pairing.ack_interval_ms", "must be between 1 and 60000");
        }
        if p.ack_ping_interval_secs == 0 {
            return invalid("pairing.ack_ping_interval_secs", "must be at least 1");
        }
        if self.pairing.resume_buffer_bytes > l.max_outbound_bytes {
            return invalid(
                "pairing.resume_buffer_bytes",
                "must not exceed limits.max_outbound_bytes: what is held for an away side \
                 must fit in its outbox when it comes back",
            );
        }
        if l.max_pending_codes == 0 {
            return invalid("limits.max_pending_codes", "must be at least 1");
        }
        if self.server.max_connections_per_worker == 0 {
            return invalid("server.max_connections_per_worker", "must be at least 1");
        }
        Ok(())
    }

    /// The effective settings as TOML, for `check-config`, with secrets masked.
    pub fn to_toml(&self) -> String {
        let mut shown = self.clone();
        shown.database.url = mask_url_password(&shown.database.url);
        if !shown.metrics.token.is_empty() {
            shown.metrics.token = "***".into();
        }
        // unwrap: every field is a plain scalar inside a table, which TOML can always express.
        toml::to_string(&shown).unwrap()
    }
}

/// `postgres://user:secret@host/db` → `postgres://user:***@host/db`.
pub fn mask_url_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}{path}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

impl ServerSettings {
    /// [`Self::linger_secs`] as a duration.
    pub fn linger(&self) -> Duration {
        Duration::from_secs(self.linger_secs)
    }
}

impl ServerSettings {
    /// [`Self::body_timeout_secs`] as a duration.
    pub fn body_timeout(&self) -> Duration {
        Duration::from_secs(self.body_timeout_secs)
    }
}

/// `Settings` derives `Debug` from its sections, so these two keep a `{:?}` of the whole
/// settings (a log line, a panic message) free of the database password and metrics token.
impl std::fmt::Debug for DatabaseSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatabaseSettings")
            .field("url", &redact_url(&self.url))
            .field("pool_size", &self.pool_size)
            .field("connect_timeout_secs", &self.connect_timeout_secs)
            .field("run_migrations", &self.run_migrations)
            .finish()
    }
}

impl std::fmt::Debug for MetricsSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let token = if self.token.is_empty() { "" } else { "***" };
        f.debug_struct("MetricsSettings")
            .field("enabled", &self.enabled)
            .field("token", &token)
            .finish()
    }
}

/// The URL with its password masked and any query string (where `?password=` may hide)
/// replaced by `?***`.
fn redact_url(url: &str) -> String {
    let masked = mask_url_password(url);
    match masked.split_once('?') {
        Some((base, _)) => format!("{base}?***"),
        None => masked,
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

impl AuthSettings {
    /// [`Self::access_token_ttl_secs`] as a duration.
    pub fn access_token_ttl(&self) -> Duration {
        Duration::from_secs(self.access_token_ttl_secs)
    }
    /// [`Self::refresh_token_ttl_secs`] as a duration.
    pub fn refresh_token_ttl(&self) -> Duration {
        Duration::from_secs(self.refresh_token_ttl_secs)
    }
    /// [`Self::device_token_ttl_secs`] as a duration.
    pub fn device_token_ttl(&self) -> Duration {
        Duration::from_secs(self.device_token_ttl_secs)
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
    /// [`Self::refresh_retry_grace_secs`] as a duration.
    pub fn refresh_retry_grace(&self) -> Duration {
        Duration::from_secs(self.refresh_retry_grace_secs)
    }
    /// [`Self::hash_memory_release_secs`] as a duration.
    pub fn hash_memory_release(&self) -> Duration {
        Duration::from_secs(self.hash_memory_release_secs)
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(vars: &[(&str, &str)]) -> Environment {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Environment::with_prefix(ENV_PREFIX).source(Some(map))
    }

    #[test]
    fn the_embedded_defaults_load_and_validate() {
        let s = Settings::defaults();
        assert_eq!(s.server.bind.to_string(), "127.0.0.1:8080");
        assert_eq!(s.pairing.code_ttl_secs, 300);
        assert_eq!(s.pairing.code_length, 6);
        assert_eq!(s.pairing.code_alphabet, "346789ABCDEFGHJKLMNPQRTUVWXY");
        assert_eq!(s.heartbeat.interval_secs, 30);
        assert_eq!(s.heartbeat.timeout_secs, 10);
        assert!(s.limits.max_message_bytes >= 1024 * 1024);
    }

    #[test]
    fn environment_variables_override_nested_keys() {
        let s = Settings::load_from(
            None,
            env(&[
                ("HERMIT__SERVER__BIND", "0.0.0.0:9000"),
                ("HERMIT__PAIRING__CODE_TTL_SECS", "2"),
            ]),
        )
        .unwrap();
        assert_eq!(s.server.bind.to_string(), "0.0.0.0:9000");
        assert_eq!(s.pairing.code_ttl_secs, 2);
    }

    #[test]
    fn a_file_overrides_defaults_and_the_environment_overrides_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("relay.toml");
        std::fs::write(
            &path,
            "[pairing]\ncode_ttl_secs = 60\nresume_grace_secs = 5\n",
        )
        .unwrap();
        let s = Settings::load_from(
            Some(&path),
            env(&[("HERMIT__PAIRING__RESUME_GRACE_SECS", "7")]),
        )
        .unwrap();
        assert_eq!(s.pairing.code_ttl_secs, 60);
        assert_eq!(s.pairing.resume_grace_secs, 7);
        assert_eq!(s.heartbeat.interval_secs, 30);
    }

    #[test]
    fn an_invalid_value_is_refused_naming_its_key() {
        let err = Settings::load_from(None, env(&[("HERMIT__PAIRING__CODE_LENGTH", "2")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("pairing.code_length"), "{err}");

        let err = Settings::load_from(None, env(&[("HERMIT__LIMITS__MAX_OUTBOUND_BYTES", "2000")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("limits.max_outbound_bytes"), "{err}");

        let err = Settings::load_from(
            None,
            env(&[("HERMIT__PAIRING__RESUME_BUFFER_BYTES", "8388608")]),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("pairing.resume_buffer_bytes"), "{err}");
    }

    #[test]
    fn a_value_of_the_wrong_type_is_refused_naming_its_key() {
        let err = Settings::load_from(None, env(&[("HERMIT__PAIRING__CODE_TTL_SECS", "soon")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("code_ttl_secs"), "{err}");
    }

    #[test]
    fn an_unknown_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("relay.toml");
        std::fs::write(&path, "[pairing]\ncode_tll_secs = 60\n").unwrap();
        let err = Settings::load_from(Some(&path), env(&[]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("code_tll_secs"), "{err}");
    }

    #[test]
    fn database_passwords_are_masked_in_the_printed_settings() {
        let s = Settings::load_from(
            None,
            env(&[(
                "HERMIT__DATABASE__URL",
                "postgres://relay:s3cret@db:5432/hermit",
            )]),
        )
        .unwrap();
        let printed = s.to_toml();
        assert!(!printed.contains("s3cret"), "{printed}");
        assert!(
            printed.contains("postgres://relay:***@db:5432/hermit"),
            "{printed}"
        );
        assert_eq!(
            mask_url_password("sqlite://data/x.db"),
            "sqlite://data/x.db"
        );
    }

    #[test]
    fn the_debug_form_hides_the_database_password_and_metrics_token() {
        let mut s = Settings::defaults();
        s.database.url = "postgres://relay:s3cret@db:5432/hermit?password=hunter2".into();
        s.metrics.token = "m3trics-t0ken".into();
        let shown = format!("{s:?}");
        for secret in ["s3cret", "hunter2", "m3trics-t0ken"] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        assert!(
            shown.contains("postgres://relay:***@db:5432/hermit?***"),
            "{shown}"
        );
        assert!(
            shown.contains("biscuit-root.key"),
            "the key path may show: {shown}"
        );
    }

    #[test]
    fn an_unsupported_database_url_is_refused_naming_its_key() {
        let err = Settings::load_from(None, env(&[("HERMIT__DATABASE__URL", "mysql://x")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("database.url"), "{err}");
    }

    #[test]
    fn list_keys_take_comma_separated_environment_values() {
        let s = Settings::load_from(
            None,
            env(&[
                ("HERMIT__SERVER__TRUSTED_PROXIES", "10.0.0.0/8,127.0.0.1/32"),
                (
                    "HERMIT__SERVER__ALLOWED_ORIGINS",
                    "https://a.example,https://b.example",
                ),
            ]),
        )
        .unwrap();
        let proxies: Vec<String> = s
            .server
            .trusted_proxies
            .iter()
            .map(|n| n.to_string())
            .collect();
        assert_eq!(proxies, ["10.0.0.0/8", "127.0.0.1/32"]);
        assert_eq!(
            s.server.allowed_origins,
            ["https://a.example", "https://b.example"]
        );
    }

    #[test]
    fn accepted_public_keys_must_be_public_keys() {
        let key = biscuit_auth::KeyPair::new().public().to_string();
        let s = Settings::load_from(
            None,
            env(&[(
                "HERMIT__AUTH__ACCEPTED_PUBLIC_KEYS",
                &format!("{key},{key}"),
            )]),
        )
        .unwrap();
        assert_eq!(s.auth.accepted_public_keys, [key.clone(), key]);
        let err = Settings::load_from(
            None,
            env(&[("HERMIT__AUTH__ACCEPTED_PUBLIC_KEYS", "ed25519/beef")]),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("auth.accepted_public_keys"), "{err}");
    }

    #[test]
    fn a_bad_proxy_cidr_is_refused() {
        let err = Settings::load_from(
            None,
            env(&[("HERMIT__SERVER__TRUSTED_PROXIES", "10.0.0.0/99")]),
        );
        assert!(err.unwrap_err().to_string().contains("trusted_proxies"));
    }

    #[test]
    fn a_missing_config_file_is_an_error() {
        let err = Settings::load_from(Some(Path::new("/nonexistent/relay.toml")), env(&[]));
        assert!(err.is_err());
    }

    #[test]
    fn the_effective_settings_print_as_toml_that_loads_again() {
        let s = Settings::defaults();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("printed.toml");
        std::fs::write(&path, s.to_toml()).unwrap();
        let again = Settings::load_from(Some(&path), env(&[])).unwrap();
        assert_eq!(again.to_toml(), s.to_toml());
    }
}
