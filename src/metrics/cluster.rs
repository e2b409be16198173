//! The cluster's series: envelopes and bytes sent to and received from other nodes, what
//! was dropped and why, Redis round trips, and whether this node reaches Redis.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use super::Count;

/// Bucket bounds for one Redis round trip, in seconds.
const REDIS_SECONDS: [f64; 12] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 2.0,
];

/// Why an envelope was dropped (the label values, a fixed set).
pub const DROP_REASONS: [&str; 7] = [
    "queue_full",
    "unrouted",
    "inbox_full",
    "events_full",
    "publish_failed",
    "undecodable",
    // Not an envelope: a pairing's home record not written (too many writes in flight).
    "home_record",
];

/// `hermit_cluster_*`.
#[derive(Debug)]
pub struct ClusterMetrics {
    /// Envelopes sent to other nodes.
    pub sent: Count,
    /// Bytes of those envelopes.
    pub sent_bytes: Count,
    /// Writes to another node's link that carried several envelopes at once.
    pub batches: Count,
    /// Envelopes received from other nodes.
    pub received: Count,
    /// Bytes of those envelopes.
    pub received_bytes: Count,
    dropped: Family<[(&'static str, &'static str); 1], Counter>,
    /// Redis calls that failed or timed out, and links to other nodes that broke.
    pub errors: Count,
    up: Gauge,
    redis_seconds: Histogram,
    /// Tunnels whose virtual connection is on this node (`end="home"`).
    tunnels_home: Gauge,
    /// Tunnels whose side is connected to this node (`end="gateway"`).
    tunnels_gateway: Gauge,
}

/// A node's end of a tunnel (`relay::tunnel`), the label of `hermit_cluster_tunnels`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TunnelEnd {
    /// The virtual connection is on this node.
    Home,
    /// The side's socket is on this node.
    Gateway,
}

impl ClusterMetrics {
    /// Registers the series in `registry`.
    pub(super) fn register(registry: &mut Registry) -> Self {
        let mut counter = |name: &str, help: &str| {
            let count = Count::default();
            registry.register(name, help, count.0.clone());
            count
        };
        let sent = counter("cluster_sent", "Envelopes sent to other nodes");
        let sent_bytes = counter("cluster_sent_bytes", "Bytes sent to other nodes");
        let batches = counter(
            "cluster_batches",
            "Writes to another node's link that carried several envelopes",
        );
        let received = counter("cluster_received", "Envelopes received from other nodes");
        let received_bytes = counter("cluster_received_bytes", "Bytes received from other nodes");
        let errors = counter(
            "cluster_errors",
            "Redis calls that failed or timed out, and links to other nodes that broke",
        );
        let dropped = Family::default();
        for reason in DROP_REASONS {
            let _ = dropped.get_or_create(&[("reason", reason)]);
        }
        registry.register(
            "cluster_dropped",
            "Envelopes between nodes that were lost, by reason",
            dropped.clone(),
        );
        let up = Gauge::default();
        registry.register(
            "cluster_up",
            "1 while this node reaches Redis (always 0 without a cluster)",
            up.clone(),
        );
        let redis_seconds = Histogram::new(REDIS_SECONDS);
        registry.register(
            "redis_duration_seconds",
            "Time of one Redis round trip",
            redis_seconds.clone(),
        );
        let tunnels = Family::<[(&'static str, &'static str); 1], Gauge>::default();
        let tunnels_home = tunnels.get_or_create(&[("end", "home")]).clone();
        let tunnels_gateway = tunnels.get_or_create(&[("end", "gateway")]).clone();
        registry.register(
            "cluster_tunnels",
            "Connections tunnelled between nodes, by this node's end: home (the virtual \
             connection is here) or gateway (the side's socket is here)",
            tunnels,
        );
        Self {
            sent,
            sent_bytes,
            batches,
            received,
            received_bytes,
            dropped,
            errors,
            up,
            redis_seconds,
            tunnels_home,
            tunnels_gateway,
        }
    }

    /// This node holds `by` more (or, negative, fewer) tunnels at `end`.
    pub fn tunnels_changed(&self, end: TunnelEnd, by: i64) {
        match end {
            TunnelEnd::Home => self.tunnels_home.inc_by(by),
            TunnelEnd::Gateway => self.tunnels_gateway.inc_by(by),
        };
    }

    /// Tunnels held at `end` now, by every node of this process (one, but in tests).
    pub fn tunnels(&self, end: TunnelEnd) -> i64 {
        match end {
            TunnelEnd::Home => self.tunnels_home.get(),
            TunnelEnd::Gateway => self.tunnels_gateway.get(),
        }
    }

    /// Counts an envelope lost for `reason` (one of [`DROP_REASONS`]).
    pub fn dropped(&self, reason: &'static str) {
        self.dropped.get_or_create(&[("reason", reason)]).inc();
    }

    /// Envelopes lost for `reason` so far.
    pub fn dropped_count(&self, reason: &'static str) -> u64 {
        self.dropped.get_or_create(&[("reason", reason)]).get()
    }

    /// Whether this node reaches Redis now.
    pub fn set_up(&self, up: bool) {
        self.up.set(i64::from(up));
    }

    /// One Redis round trip took `seconds`.
    pub fn redis_round_trip(&self, seconds: f64) {
        self.redis_seconds.observe(seconds);
    }
}
