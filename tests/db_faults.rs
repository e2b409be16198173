//! Database faults: the real relay against PostgreSQL through a proxy that cuts, blackholes
//! and restores the link, and against SQLite that is full, locked or read-only. Every
//! database path must answer 503 / `UNAVAILABLE` within `connect_timeout_secs` + 1 s (never
//! 500, never a hang), pairing and live sockets must not notice, `/ready` must tell the
//! truth, and everything must work again once the database is back.
//!
//! Times are measured and printed (`cargo test --test db_faults -- --nocapture`); the
//! assertions use a generous outer limit so a loaded CI machine does not make them flaky.
//!
//! # Layout
//! - `proxy`: the TCP proxy that breaks the link to PostgreSQL.
//! - `support`: settings, HTTP and WebSocket helpers, the test's own connections.
//! - `outage`: every database path through a cut and a blackhole (PostgreSQL).
//! - `disk`: SQLite full, locked and read-only.
//! - `refresh`: refreshes whose answer was lost, and simultaneous refreshes.
//! - `readiness`: pending migrations.
//! - `process`: the binary — its start-up message, its outage log lines, kill -9.

#[macro_use]
mod common;
#[path = "db_faults/disk.rs"]
mod disk;
#[path = "db_faults/outage.rs"]
mod outage;
#[path = "db_faults/process.rs"]
mod process;
#[path = "db_faults/proxy.rs"]
mod proxy;
#[path = "db_faults/readiness.rs"]
mod readiness;
#[path = "db_faults/refresh.rs"]
mod refresh;
#[path = "db_faults/support.rs"]
mod support;
