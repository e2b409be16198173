//! Counters and gauges, rendered at `/metrics` in the Prometheus text format.
//!
//! Plain atomics in one process-wide `METRICS`: the hot path pays one relaxed increment per
//! message. HTTP series are keyed by route *pattern* (a fixed set) and status, so their
//! number is bounded whatever clients request.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{LazyLock, Mutex};
use std::time::Duration;

use crate::ids::{DropReason, Endpoint, Outcome};

/// Process-wide metrics.
pub static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::default);

/// Status → (responses, seconds spent answering them).
type StatusCounts = BTreeMap<u16, (u64, f64)>;

/// Every series the relay exports.
#[derive(Default)]
pub struct Metrics {
    connections: [AtomicI64; Endpoint::ALL.len()],
    /// Pairings made by `join`.
    pub pairings: AtomicU64,
    /// Codes issued to macs.
    pub codes_issued: AtomicU64,
    /// Codes that expired unjoined.
    pub codes_expired: AtomicU64,
    /// Codes joined by a browser.
    pub codes_joined: AtomicU64,
    /// Pairings resumed by either side.
    pub resumes: AtomicU64,
    /// `data` messages delivered to a peer's outbox.
    pub messages_relayed: AtomicU64,
    /// Payload bytes of those messages.
    pub bytes_relayed: AtomicU64,
    drops: [AtomicU64; Outcome::ALL.len()],
    messages_dropped: [AtomicU64; DropReason::ALL.len()],
    /// Failed logins, refused tokens, bad machine tokens.
    pub auth_failures: AtomicU64,
    /// Requests refused by a rate or connection limit.
    pub rate_limited: AtomicU64,
    /// 1 while the database passes its checks, 0 while it is down (and before the first).
    pub database_up: AtomicI64,
    /// Addresses a full rate limiter forgot to make room for a new one.
    pub rate_limiter_evictions: AtomicU64,
    /// Route pattern → status → (count, seconds spent; WebSocket upgrades excluded).
    /// Nested so a lookup by `&str` allocates nothing once the route is known.
    http: Mutex<BTreeMap<String, StatusCounts>>,
}

impl Metrics {
    /// A connection opened (`+1`) or closed (`-1`) on `endpoint`.
    pub fn connection(&self, endpoint: Endpoint, delta: i64) {
        self.connections[endpoint as usize].fetch_add(delta, Relaxed);
    }

    /// Live connections on `endpoint`.
    pub fn live(&self, endpoint: Endpoint) -> i64 {
        self.connections[endpoint as usize].load(Relaxed)
    }

    /// A connection the relay ended for `outcome` (peer closes and losses are not drops).
    pub fn dropped(&self, outcome: Outcome) {
        self.drops[outcome as usize].fetch_add(1, Relaxed);
    }

    /// A message the relay meant to deliver and did not, for `reason`.
    pub fn message_dropped(&self, reason: DropReason) {
        self.messages_dropped[reason as usize].fetch_add(1, Relaxed);
    }

    /// Messages dropped for `reason` so far.
    pub fn messages_dropped(&self, reason: DropReason) -> u64 {
        self.messages_dropped[reason as usize].load(Relaxed)
    }

    /// One relayed message of `bytes` payload bytes.
    pub fn relayed(&self, bytes: usize) {
        self.messages_relayed.fetch_add(1, Relaxed);
        self.bytes_relayed.fetch_add(bytes as u64, Relaxed);
    }

    /// One HTTP response; `elapsed` is `None` for WebSocket upgrades.
    pub fn http(&self, route: &str, status: u16, elapsed: Option<Duration>) {
        let mut http = self.http.lock().unwrap_or_else(|p| p.into_inner());
        if !http.contains_key(route) {
            http.insert(route.to_owned(), BTreeMap::new());
        }
        let Some(statuses) = http.get_mut(route) else {
            return;
        };
        let entry = statuses.entry(status).or_default();
        entry.0 += 1;
        entry.1 += elapsed.map_or(0.0, |d| d.as_secs_f64());
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let gauge = |out: &mut String, name: &str, help: &str| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        };
        let counter = |out: &mut String, name: &str, help: &str, value: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
            );
        };
        gauge(
            &mut out,
            "hermit_connections",
            "Open WebSocket connections by endpoint.",
        );
        for endpoint in Endpoint::ALL {
            let _ = writeln!(
                out,
                "hermit_connections{{endpoint=\"{}\"}} {}",
                endpoint.as_str(),
                self.live(endpoint)
            );
        }
        gauge(
            &mut out,
            "hermit_database_up",
            "1 if the database passed its last check (reachable, migrated, writable), else 0.",
        );
        let _ = writeln!(out, "hermit_database_up {}", self.database_up.load(Relaxed));
        for (name, help, value) in [
            (
                "hermit_pairings_total",
                "Pairings made by join.",
                &self.pairings,
            ),
            (
                "hermit_codes_issued_total",
                "Pairing codes issued.",
                &self.codes_issued,
            ),
            (
                "hermit_codes_expired_total",
                "Pairing codes that expired unjoined.",
                &self.codes_expired,
            ),
            (
                "hermit_codes_joined_total",
                "Pairing codes joined.",
                &self.codes_joined,
            ),
            (
                "hermit_resumes_total",
                "Pairings resumed after a lost connection.",
                &self.resumes,
            ),
            (
                "hermit_messages_relayed_total",
                "Data messages relayed.",
                &self.messages_relayed,
            ),
            (
                "hermit_bytes_relayed_total",
                "Payload bytes relayed.",
                &self.bytes_relayed,
            ),
            (
                "hermit_auth_failures_total",
                "Refused logins and tokens.",
                &self.auth_failures,
            ),
            (
                "hermit_rate_limited_total",
                "Requests refused by a rate or connection limit.",
                &self.rate_limited,
            ),
            (
                "hermit_rate_limiter_evictions_total",
                "Addresses a full rate limiter forgot (least recently used) to admit a new one.",
                &self.rate_limiter_evictions,
            ),
        ] {
            counter(&mut out, name, help, value.load(Relaxed));
        }
        let _ = writeln!(
            out,
            "# HELP hermit_drops_total Connections the relay ended, by reason.\n# TYPE hermit_drops_total counter"
        );
        for outcome in Outcome::ALL {
            let _ = writeln!(
                out,
                "hermit_drops_total{{reason=\"{}\"}} {}",
                outcome.label(),
                self.drops[outcome as usize].load(Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP hermit_messages_dropped_total Messages the relay meant to deliver and did not, by reason.\n# TYPE hermit_messages_dropped_total counter"
        );
        for reason in DropReason::ALL {
            let _ = writeln!(
                out,
                "hermit_messages_dropped_total{{reason=\"{}\"}} {}",
                reason.label(),
                self.messages_dropped(reason)
            );
        }
        let http = self.http.lock().unwrap_or_else(|p| p.into_inner());
        let _ = writeln!(
            out,
            "# HELP hermit_http_requests_total HTTP responses by route and status.\n# TYPE hermit_http_requests_total counter"
        );
        for (route, statuses) in http.iter() {
            for (status, (count, _)) in statuses {
                let _ = writeln!(
                    out,
                    "hermit_http_requests_total{{route=\"{route}\",status=\"{status}\"}} {count}"
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP hermit_http_request_duration_seconds Time to answer HTTP requests (WebSocket upgrades excluded).\n# TYPE hermit_http_request_duration_seconds summary"
        );
        for (route, statuses) in http.iter() {
            if Endpoint::from_route(route).is_some() {
                continue;
            }
            let (count, seconds) = statuses
                .values()
                .fold((0, 0.0), |(c, s), (count, seconds)| {
                    (c + count, s + seconds)
                });
            let _ = writeln!(
                out,
                "hermit_http_request_duration_seconds_sum{{route=\"{route}\"}} {seconds}\nhermit_http_request_duration_seconds_count{{route=\"{route}\"}} {count}"
            );
        }
        out
    }
}
