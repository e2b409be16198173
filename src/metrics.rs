//! Counters, gauges and histograms, rendered at `/metrics` by `prometheus-client` (the
//! Prometheus project's Rust library): the Prometheus text format by default, OpenMetrics
//! when the scraper asks for it.
//!
//! One process-wide `METRICS`. The hot path pays relaxed increments and one histogram
//! observation per message (the crate's histogram takes an uncontended lock: about 10 ns,
//! measured, against microseconds of work per message); labels come from fixed sets
//! (endpoints, reasons, route *patterns*, statuses), so the number of series is bounded
//! whatever clients request. A scrape encodes into one string under a read lock per family.

pub mod cluster;

use std::sync::atomic::Ordering;
use std::sync::LazyLock;
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;

use crate::ids::{DropReason, Endpoint, Outcome};

/// Bucket bounds for durations of requests and queries, in seconds.
const SECONDS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Bucket bounds for a password hash (argon2id costs tens of milliseconds), in seconds.
const HASH_SECONDS: [f64; 10] = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
/// Bucket bounds for the registry's pairing work, in seconds.
const PAIRING_SECONDS: [f64; 12] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];
/// Bucket bounds for message sizes, in bytes.
const BYTES: [f64; 9] = [
    64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0,
];

/// Process-wide metrics.
pub static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// `Content-Type` of the default exposition.
pub const TEXT_CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;
/// `Content-Type` of the OpenMetrics exposition.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A counter that keeps the calls of the `AtomicU64` it replaced (`fetch_add`, `load`),
/// so every call site reads as before. The ordering is always relaxed.
#[derive(Debug, Clone, Default)]
pub struct Count(Counter);

impl Count {
    /// Adds `n`; returns the previous value.
    pub fn fetch_add(&self, n: u64, _: Ordering) -> u64 {
        self.0.inc_by(n)
    }

    /// The value now.
    pub fn load(&self, _: Ordering) -> u64 {
        self.0.get()
    }
}

/// A gauge that keeps the calls of the `AtomicI64` it replaced (`store`, `load`).
#[derive(Debug, Clone, Default)]
pub struct Level(Gauge);

impl Level {
    /// Sets the value.
    pub fn store(&self, value: i64, _: Ordering) {
        self.0.set(value);
    }

    /// The value now.
    pub fn load(&self, _: Ordering) -> i64 {
        self.0.get()
    }
}

/// A gauge computed when scraped (no bookkeeping on the hot path).
#[derive(Debug)]
struct Computed(fn() -> i64);

impl TypedMetric for Computed {
    const TYPE: MetricType = MetricType::Gauge;
}

impl EncodeMetric for Computed {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        encoder.encode_gauge(&(self.0)())
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// One label, from a fixed set.
type Label = [(&'static str, &'static str); 1];

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct HttpLabels {
    route: String,
    status: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RouteLabel {
    route: String,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// Every series the relay exports.
pub struct Metrics {
    registry: Registry,
    connections: [Gauge; Endpoint::ALL.len()],
    /// Pairings made by `join`.
    pub pairings: Count,
    /// Pairings that ended (made minus ended is live).
    pub pairings_ended: Count,
    /// Codes issued to macs.
    pub codes_issued: Count,
    /// Codes that expired unjoined.
    pub codes_expired: Count,
    /// Codes joined by a browser.
    pub codes_joined: Count,
    /// Pairings resumed by either side.
    pub resumes: Count,
    /// `data` messages delivered to a peer's outbox.
    pub messages_relayed: Count,
    /// Payload bytes of those messages.
    pub bytes_relayed: Count,
    drops: [Count; Outcome::ALL.len()],
    messages_dropped: [Count; DropReason::ALL.len()],
    /// Failed logins, refused tokens, bad machine tokens.
    pub auth_failures: Count,
    /// Requests refused by a rate or connection limit.
    pub rate_limited: Count,
    /// Addresses a full rate limiter forgot to make room for a new one.
    pub rate_limiter_evictions: Count,
    /// 1 while the database passes its checks, 0 while it is down (and before the first).
    pub database_up: Level,
    /// Configuration reloads that took effect.
    pub reloads: Count,
    /// Configuration reloads refused (the file did not load; nothing changed).
    pub reload_failures: Count,
    /// Audit events lost because the audit file's writer fell behind.
    pub audit_dropped: Count,
    /// Envelopes between nodes, Redis round trips (`hermit_cluster_*`).
    pub cluster: cluster::ClusterMetrics,
    http_requests: Family<HttpLabels, Counter>,
    http_seconds: Histograms<RouteLabel>,
    message_bytes: Histogram,
    pairing_seconds: Histogram,
    hash_seconds: Histogram,
    db_seconds: Histogram,
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::with_prefix("hermit");
        let mut counter = |name: &str, help: &str| {
            let count = Count::default();
            registry.register(name, help, count.0.clone());
            count
        };
        let pairings = counter("pairings", "Pairings made by join");
        let pairings_ended = counter("pairings_ended", "Pairings that ended");
        let codes_issued = counter("codes_issued", "Pairing codes issued");
        let codes_expired = counter("codes_expired", "Pairing codes that expired unjoined");
        let codes_joined = counter("codes_joined", "Pairing codes joined");
        let resumes = counter("resumes", "Pairings resumed after a lost connection");
        let messages_relayed = counter("messages_relayed", "Data messages relayed");
        let bytes_relayed = counter("bytes_relayed", "Payload bytes relayed");
        let auth_failures = counter("auth_failures", "Refused logins and tokens");
        let rate_limited = counter(
            "rate_limited",
            "Requests refused by a rate or connection limit",
        );
        let rate_limiter_evictions = counter(
            "rate_limiter_evictions",
            "Addresses a full rate limiter forgot (least recently used) to admit a new one",
        );
        let reloads = counter("config_reloads", "Configuration reloads that took effect");
        let reload_failures = counter(
            "config_reload_failures",
            "Configuration reloads refused; nothing changed",
        );
        let audit_dropped = counter(
            "audit_dropped",
            "Audit events lost because the audit file could not keep up",
        );

        let cluster = cluster::ClusterMetrics::register(&mut registry);
        let connections_family = Family::<Label, Gauge>::default();
        let connections = Endpoint::ALL.map(|e| {
            connections_family
                .get_or_create(&[("endpoint", e.as_str())])
                .clone()
        });
        registry.register(
            "connections",
            "Open WebSocket connections by endpoint",
            connections_family,
        );
        let drops_family = Family::<Label, Counter>::default();
        let drops = Outcome::ALL
            .map(|o| Count(drops_family.get_or_create(&[("reason", o.label())]).clone()));
        registry.register(
            "drops",
            "Connections the relay ended, by reason",
            drops_family,
        );
        let dropped_family = Family::<Label, Counter>::default();
        let messages_dropped = DropReason::ALL.map(|r| {
            Count(
                dropped_family
                    .get_or_create(&[("reason", r.label())])
                    .clone(),
            )
        });
        registry.register(
            "messages_dropped",
            "Messages the relay meant to deliver and did not, by reason",
            dropped_family,
        );
        let http_requests = Family::<HttpLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP responses by route and status",
            http_requests.clone(),
        );
        let http_seconds: Histograms<RouteLabel> =
            Family::new_with_constructor(|| Histogram::new(SECONDS));
        registry.register(
            "http_request_duration_seconds",
            "Time to answer HTTP requests by route (WebSocket upgrades excluded)",
            http_seconds.clone(),
        );
        let message_bytes = Histogram::new(BYTES);
        registry.register(
            "message_size_bytes",
            "Payload size of relayed data messages",
            message_bytes.clone(),
        );
        let pairing_seconds = Histogram::new(PAIRING_SECONDS);
        registry.register(
            "pairing_duration_seconds",
            "Time from a browser's join to joined, in the relay",
            pairing_seconds.clone(),
        );
        let hash_seconds = Histogram::new(HASH_SECONDS);
        registry.register(
            "password_hash_duration_seconds",
            "Time to hash or verify one password (argon2id), queueing excluded",
            hash_seconds.clone(),
        );
        let db_seconds = Histogram::new(SECONDS);
        registry.register(
            "db_query_duration_seconds",
            "Time of one unit of database work, waiting for a pooled connection included",
            db_seconds.clone(),
        );
        let database_up = Level::default();
        registry.register(
            "database_up",
            "1 if the database passed its last check (reachable, migrated, writable), else 0",
            database_up.0.clone(),
        );
        registry.register(
            "pairings_live",
            "Pairings alive now (either side may be away, within its grace)",
            Computed(|| METRICS.live_pairings()),
        );
        registry.register(
            "build",
            "The relay's version",
            Info::new([("version", env!("CARGO_PKG_VERSION"))]),
        );
        Self {
            registry,
            connections,
            pairings,
            pairings_ended,
            codes_issued,
            codes_expired,
            codes_joined,
            resumes,
            messages_relayed,
            bytes_relayed,
            drops,
            messages_dropped,
            auth_failures,
            rate_limited,
            rate_limiter_evictions,
            database_up,
            reloads,
            reload_failures,
            audit_dropped,
            cluster,
            http_requests,
            http_seconds,
            message_bytes,
            pairing_seconds,
            hash_seconds,
            db_seconds,
        }
    }

    /// A connection opened (`+1`) or closed (`-1`) on `endpoint`.
    pub fn connection(&self, endpoint: Endpoint, delta: i64) {
        self.connections[endpoint as usize].inc_by(delta);
    }

    /// Live connections on `endpoint`.
    pub fn live(&self, endpoint: Endpoint) -> i64 {
        self.connections[endpoint as usize].get()
    }

    /// Pairings alive now.
    pub fn live_pairings(&self) -> i64 {
        let made = self.pairings.load(Ordering::Relaxed);
        let ended = self.pairings_ended.load(Ordering::Relaxed);
        i64::try_from(made.saturating_sub(ended)).unwrap_or(i64::MAX)
    }

    /// A connection the relay ended for `outcome` (peer closes and losses are not drops).
    pub fn dropped(&self, outcome: Outcome) {
        self.drops[outcome as usize].0.inc();
    }

    /// A message the relay meant to deliver and did not, for `reason`.
    pub fn message_dropped(&self, reason: DropReason) {
        self.messages_dropped[reason as usize].0.inc();
    }

    /// Messages dropped for `reason` so far.
    pub fn messages_dropped(&self, reason: DropReason) -> u64 {
        self.messages_dropped[reason as usize].0.get()
    }

    /// One relayed message of `bytes` payload bytes.
    pub fn relayed(&self, bytes: usize) {
        self.messages_relayed.0.inc();
        self.bytes_relayed.0.inc_by(bytes as u64);
        self.message_bytes.observe(bytes as f64);
    }

    /// One HTTP response; `elapsed` is `None` for WebSocket upgrades.
    pub fn http(&self, route: &str, status: u16, elapsed: Option<Duration>) {
        let labels = HttpLabels {
            route: route.to_owned(),
            status,
        };
        self.http_requests.get_or_create(&labels).inc();
        // WebSocket endpoints are never timed, refused upgrades included: their series
        // would mix microsecond refusals with nothing.
        if let Some(elapsed) = elapsed.filter(|_| Endpoint::from_route(route).is_none()) {
            let route = RouteLabel {
                route: labels.route,
            };
            self.http_seconds
                .get_or_create(&route)
                .observe(elapsed.as_secs_f64());
        }
    }

    /// One `join` answered with `joined`, `elapsed` after the relay read it.
    pub fn pairing_time(&self, elapsed: Duration) {
        self.pairing_seconds.observe(elapsed.as_secs_f64());
    }

    /// One password hashed or verified.
    pub fn hash_time(&self, elapsed: Duration) {
        self.hash_seconds.observe(elapsed.as_secs_f64());
    }

    /// One unit of database work.
    pub fn db_time(&self, elapsed: Duration) {
        self.db_seconds.observe(elapsed.as_secs_f64());
    }

    /// The Prometheus text exposition (format 0.0.4).
    pub fn render(&self) -> String {
        let mut out = String::new();
        // unwrap: writing to a String does not fail.
        prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry).unwrap();
        out
    }

    /// The OpenMetrics text exposition, `# EOF` included.
    pub fn render_openmetrics(&self) -> String {
        let mut out = String::new();
        // unwrap: writing to a String does not fail.
        prometheus_client::encoding::text::encode(&mut out, &self.registry).unwrap();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_series_keep_their_names() {
        let m = Metrics::new();
        m.codes_issued.fetch_add(2, Ordering::Relaxed);
        m.relayed(100);
        m.connection(Endpoint::Mac, 1);
        m.dropped(Outcome::SlowConsumer);
        m.http("/metrics", 200, Some(Duration::from_millis(3)));
        let text = m.render();
        for line in [
            "hermit_codes_issued_total 2",
            "hermit_messages_relayed_total 1",
            "hermit_bytes_relayed_total 100",
            r#"hermit_connections{endpoint="/mac"} 1"#,
            r#"hermit_drops_total{reason="slow_consumer"} 1"#,
            r#"hermit_http_requests_total{route="/metrics",status="200"} 1"#,
            r#"hermit_http_request_duration_seconds_count{route="/metrics"} 1"#,
            r#"hermit_message_size_bytes_bucket{le="256"} 1"#,
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing in\n{text}");
        }
        assert!(m.render_openmetrics().ends_with("# EOF\n"));
        // The encoder ends each help text with a period of its own.
        assert!(!text.contains(".."), "{text}");
    }
}
