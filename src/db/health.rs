//! `Health`: whether the database can do what the relay needs, for `/ready`, the
//! `hermit_database_up` gauge, failing fast during an outage, and the outage log lines.
//!
//! States: *up*, or *down* with the latest fault. Any fault that makes the relay unable to
//! work (unreachable, no answer, full, read-only, schema out of date) takes it down; only a
//! successful check — a committed write, see `Pool::check` — brings it back up, so a read
//! that happens to work on a full disk does not make the state flap. While the database is
//! unreachable, requests fail at once instead of each waiting out the deadline.
//!
//! Logs: one line when the database goes down (with the reason), one when it is back (after
//! how long, how many requests were refused); while it stays down, at most one "still down"
//! line per `database.outage_log_interval_secs`, and busy warnings are rate-limited alike.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::fault::DbFault;
use crate::metrics::METRICS;

/// The database's state as the relay last saw it.
#[derive(Debug)]
pub struct Health {
    state: Mutex<State>,
    /// Woken when the database goes down, so the watcher starts checking at once.
    pub(super) wake: tokio::sync::Notify,
    /// Wakes every request waiting on the database when it turns out to be unreachable,
    /// so they answer at once rather than each at its deadline.
    pub(super) unreachable: tokio::sync::Notify,
    /// One check at a time; concurrent `/ready` requests share its answer.
    pub(super) checking: tokio::sync::Mutex<()>,
    /// How long a check's answer is reused, and how often it is repeated while down.
    pub(super) interval: Duration,
    log_every: Duration,
}

#[derive(Debug, Default)]
struct State {
    outage: Option<Outage>,
    /// When the last check finished, and whether it passed.
    last_check: Option<(Instant, Result<(), &'static str>)>,
    busy: Suppressed,
}

#[derive(Debug)]
struct Outage {
    fault: DbFault,
    since: Instant,
    /// Requests answered 503 since the last log line about this outage.
    refused: u64,
    last_line: Instant,
}

/// Repeated warnings, counted between the lines actually written.
#[derive(Debug, Default)]
struct Suppressed {
    last_line: Option<Instant>,
    count: u64,
}

impl Health {
    /// Checks are reused for `interval`; a continuing outage is logged every `log_every`.
    pub fn new(interval: Duration, log_every: Duration) -> Self {
        Self {
            state: Mutex::default(),
            wake: tokio::sync::Notify::new(),
            unreachable: tokio::sync::Notify::new(),
            checking: tokio::sync::Mutex::new(()),
            interval,
            log_every,
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A request failed with `fault` (and was answered 503 or 500).
    pub fn report(&self, fault: &DbFault) {
        self.record(fault, 1);
    }

    /// Something other than a request failed with `fault`: a connection attempt of the
    /// pool's, or a check.
    pub fn notice(&self, fault: &DbFault) {
        self.record(fault, 0);
    }

    /// Goes down if `fault` means the relay cannot work (logging it), counts `requests`.
    fn record(&self, fault: &DbFault, requests: u64) {
        let mut state = self.state();
        if fault.makes_unready() {
            let now = Instant::now();
            match &mut state.outage {
                Some(outage) => {
                    outage.refused += requests;
                    // "No answer" says less than the reason already known (e.g. "Connection
                    // refused"); anything else is news (e.g. unreachable, now full).
                    if !matches!(fault, DbFault::NoAnswer(_)) {
                        if fault.is_outage() && !outage.fault.is_outage() {
                            self.unreachable.notify_waiters();
                        }
                        outage.fault = fault.clone();
                    }
                }
                None => {
                    tracing::error!(reason = %fault, "database down: {fault}");
                    METRICS.database_up.store(0, Relaxed);
                    state.outage = Some(Outage {
                        fault: fault.clone(),
                        since: now,
                        refused: requests,
                        last_line: now,
                    });
                    state.last_check = None;
                    self.wake.notify_one();
                    if fault.is_outage() {
                        self.unreachable.notify_waiters();
                    }
                }
            }
        } else if matches!(fault, DbFault::Busy(_) | DbFault::Conflict(_)) {
            let now = Instant::now();
            let busy = &mut state.busy;
            busy.count += 1;
            if busy
                .last_line
                .is_none_or(|at| now.duration_since(at) >= self.log_every)
            {
                tracing::warn!(
                    reason = %fault,
                    times = busy.count,
                    "{fault} ({} time(s) since the last such line)",
                    busy.count
                );
                busy.last_line = Some(now);
                busy.count = 0;
            }
        }
        // Bugs are logged where they become a 500 (`ApiError::internal`).
    }

    /// If the database is unreachable, the text to answer at once instead of trying.
    pub fn refusal(&self) -> Option<&'static str> {
        let mut state = self.state();
        let outage = state.outage.as_mut().filter(|o| o.fault.is_outage())?;
        outage.refused += 1;
        Some(outage.fault.client_text())
    }

    /// The fault that took the database down, if it is down.
    pub fn outage(&self) -> Option<DbFault> {
        self.state().outage.as_ref().map(|o| o.fault.clone())
    }

    /// Whether the database is down.
    pub fn is_down(&self) -> bool {
        self.state().outage.is_some()
    }

    /// The last check's answer, if it is recent enough to reuse.
    pub fn fresh(&self) -> Option<Result<(), &'static str>> {
        let state = self.state();
        let (at, answer) = state.last_check?;
        (at.elapsed() < self.interval).then_some(answer)
    }

    /// A check passed: the database can serve (log how long it was away).
    pub fn check_passed(&self) {
        let mut state = self.state();
        if let Some(outage) = state.outage.take() {
            let after = outage.since.elapsed().as_secs_f64();
            tracing::info!(
                after_secs = after,
                refused = outage.refused,
                "database back after {after:.1} s ({} request(s) refused since the last line)",
                outage.refused
            );
        }
        METRICS.database_up.store(1, Relaxed);
        state.last_check = Some((Instant::now(), Ok(())));
    }

    /// A check failed with `fault` (busy included: the check proved nothing, so `/ready`
    /// answers 503 until the next one, but busy alone does not count as down).
    pub fn check_failed(&self, fault: &DbFault) {
        self.notice(fault);
        let mut state = self.state();
        state.last_check = Some((Instant::now(), Err(fault.client_text())));
    }

    /// While down, writes a "still down" line if the last one is `log_every` old.
    pub fn remind(&self) {
        let mut state = self.state();
        let Some(outage) = &mut state.outage else {
            return;
        };
        if outage.last_line.elapsed() < self.log_every {
            return;
        }
        let since = outage.since.elapsed().as_secs_f64();
        tracing::warn!(
            reason = %outage.fault,
            down_secs = since,
            refused = outage.refused,
            "database still down after {since:.0} s: {} ({} request(s) refused since the last line)",
            outage.fault,
            outage.refused
        );
        outage.last_line = Instant::now();
        outage.refused = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn health() -> Health {
        Health::new(Duration::from_secs(60), Duration::from_secs(60))
    }

    #[test]
    fn an_outage_refuses_requests_at_once_until_a_check_passes() {
        let health = health();
        assert_eq!(health.refusal(), None);
        health.report(&DbFault::Unreachable("Connection refused".into()));
        assert!(health.is_down());
        assert_eq!(
            health.refusal(),
            Some("the database is unavailable; try again shortly")
        );
        health.check_passed();
        assert!(!health.is_down());
        assert_eq!(health.refusal(), None);
        assert_eq!(health.fresh(), Some(Ok(())));
    }

    #[test]
    fn a_full_disk_is_down_for_ready_but_requests_still_try() {
        let health = health();
        health.report(&DbFault::Full("database or disk is full".into()));
        assert!(health.is_down());
        assert_eq!(
            health.refusal(),
            None,
            "reads may still work on a full disk"
        );
    }

    #[test]
    fn busy_and_bugs_do_not_take_the_database_down() {
        let health = health();
        health.report(&DbFault::Busy("database is locked".into()));
        health.report(&DbFault::Bug("syntax error".into()));
        assert!(!health.is_down());
    }

    #[test]
    fn a_failed_check_is_remembered_for_the_interval() {
        let health = health();
        health.check_failed(&DbFault::NoAnswer(Duration::from_secs(1)));
        assert_eq!(
            health.fresh(),
            Some(Err(
                "the database did not answer in time; try again shortly"
            ))
        );
        assert!(health.is_down());
    }
}
