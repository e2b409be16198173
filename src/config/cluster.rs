//! `[cluster]`: the settings of a node in a cluster of relays sharing one Redis, and what
//! the relay refuses about them. With `redis_url` empty (the default) there is no cluster:
//! the relay is one node without Redis, exactly as before the section existed.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::values;

/// `[cluster]`. Its `Debug` hides the password in the Redis URL.
#[derive(Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSettings {
    /// `redis://[:password@]host:port[/db]`; empty: no cluster.
    pub redis_url: String,
    /// This node's id, unique in the cluster; empty: a random one at each start.
    pub node_id: String,
    /// Prefix of every Redis key and channel, so clusters (or tests) can share one Redis.
    pub key_prefix: String,
    /// A node silent this long is taken for dead.
    pub node_timeout_secs: u64,
    /// How often a node refreshes its heartbeat and looks for dead nodes.
    pub heartbeat_ms: u64,
    /// The longest any one Redis round trip may take.
    pub redis_timeout_ms: u64,
    /// Most bytes waiting to be published to other nodes.
    pub max_queued_bytes: usize,
    /// Most bytes received from other nodes and not yet handled.
    pub max_inbox_bytes: usize,
    /// Most links from other nodes at once (each other node holds one per lane it uses).
    pub max_links: usize,
    /// Where this node listens for the other nodes' links (`host:port`; port 0: any).
    pub link_listen: String,
    /// How the other nodes reach that listener (`host` or `host:port`); empty: this host's
    /// address on the way to Redis, with the listening port.
    pub link_advertise: String,
}

impl ClusterSettings {
    /// Whether this node is part of a cluster.
    pub fn enabled(&self) -> bool {
        !self.redis_url.is_empty()
    }
    /// [`Self::node_timeout_secs`] as a duration.
    pub fn node_timeout(&self) -> Duration {
        Duration::from_secs(self.node_timeout_secs)
    }
    /// [`Self::heartbeat_ms`] as a duration.
    pub fn heartbeat(&self) -> Duration {
        Duration::from_millis(self.heartbeat_ms)
    }
    /// [`Self::redis_timeout_ms`] as a duration.
    pub fn redis_timeout(&self) -> Duration {
        Duration::from_millis(self.redis_timeout_ms)
    }
}

impl fmt::Debug for ClusterSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterSettings")
            .field("redis_url", &values::redact_url(&self.redis_url))
            .field("node_id", &self.node_id)
            .field("key_prefix", &self.key_prefix)
            .field("node_timeout_secs", &self.node_timeout_secs)
            .field("heartbeat_ms", &self.heartbeat_ms)
            .field("redis_timeout_ms", &self.redis_timeout_ms)
            .field("max_queued_bytes", &self.max_queued_bytes)
            .field("max_inbox_bytes", &self.max_inbox_bytes)
            .field("max_links", &self.max_links)
            .field("link_listen", &self.link_listen)
            .field("link_advertise", &self.link_advertise)
            .finish()
    }
}

/// `[cluster]` numbers with their inclusive ranges, checked with the others.
pub(super) fn ranges(c: &ClusterSettings) -> Vec<(&'static str, u64, u64, u64)> {
    vec![
        ("cluster.node_timeout_secs", c.node_timeout_secs, 1, 3600),
        ("cluster.heartbeat_ms", c.heartbeat_ms, 10, 60_000),
        ("cluster.redis_timeout_ms", c.redis_timeout_ms, 10, 60_000),
        (
            "cluster.max_queued_bytes",
            c.max_queued_bytes as u64,
            1024,
            1 << 34,
        ),
        (
            "cluster.max_inbox_bytes",
            c.max_inbox_bytes as u64,
            1024,
            1 << 34,
        ),
        ("cluster.max_links", c.max_links as u64, 1, 65_536),
    ]
}

/// A refused key and what is wrong with it (`check.rs` makes it a `Refusal`).
type Refused = (&'static str, String);

fn refuse(key: &'static str, problem: impl Into<String>) -> Result<(), Refused> {
    Err((key, problem.into()))
}

/// What a cluster cannot work with; `database_url` is `database.url` (a cluster needs
/// a shared database).
pub(super) fn check(c: &ClusterSettings, database_url: &str) -> Result<(), Refused> {
    if !c.node_id.is_empty() && crate::ids::NodeId::parse(&c.node_id).is_none() {
        return refuse(
            "cluster.node_id",
            "must be 1 to 64 letters, digits, '-' or '_' (or empty for a random one)",
        );
    }
    if c.key_prefix.is_empty()
        || c.key_prefix.len() > 64
        || c.key_prefix
            .contains(|ch: char| ch.is_whitespace() || ch.is_control())
    {
        return refuse(
            "cluster.key_prefix",
            "must be 1 to 64 characters without spaces",
        );
    }
    if c.heartbeat_ms >= c.node_timeout_secs * 1000 {
        return refuse(
            "cluster.heartbeat_ms",
            "must be shorter than cluster.node_timeout_secs, or every node would be taken \
             for dead between two of its heartbeats",
        );
    }
    if c.link_listen.parse::<std::net::SocketAddr>().is_err() {
        return refuse(
            "cluster.link_listen",
            "must be an IP address and a port, such as 0.0.0.0:7400 (port 0: any free port)",
        );
    }
    if c.link_advertise.contains(char::is_whitespace) {
        return refuse(
            "cluster.link_advertise",
            "must be a host or host:port without spaces (or empty)",
        );
    }
    if !c.enabled() {
        return Ok(());
    }
    if c.redis_url.starts_with("rediss://") {
        return refuse(
            "cluster.redis_url",
            "uses rediss:// (TLS), which this build does not support; reach Redis over a \
             private network or a TLS tunnel with redis://",
        );
    }
    if !c.redis_url.starts_with("redis://") {
        return refuse("cluster.redis_url", "must start with redis://");
    }
    if database_url.starts_with("sqlite://") {
        return refuse(
            "cluster.redis_url",
            "is set while database.url is a sqlite:// file, which only one node can use: \
             the nodes of a cluster must share one PostgreSQL database (postgres://)",
        );
    }
    Ok(())
}
