//! The relay-wide budget for failed joins, and its share per network.

use std::net::IpAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::{lock, AddressKey, Bucket, Limiters, RateLimiter};
use crate::metrics::METRICS;

/// One failed join reserved for a `join` in flight: given back when dropped — the join
/// succeeded, or its connection went away before it was answered — unless spent.
#[derive(Debug)]
pub struct FailedJoin {
    limiters: Arc<Limiters>,
    ip: IpAddr,
    spent: bool,
}

impl FailedJoin {
    /// A failure [`FailedJoins::reserve`] reserved for a join from `ip`.
    pub(super) fn new(limiters: Arc<Limiters>, ip: IpAddr) -> Self {
        Self {
            limiters,
            ip,
            spent: false,
        }
    }

    /// The join named no live code: the failure stays counted.
    pub fn spend(mut self) {
        self.spent = true;
    }
}

impl Drop for FailedJoin {
    fn drop(&mut self) {
        if !self.spent {
            self.limiters.failed_joins.refund(self.ip);
        }
    }
}

/// The budget for `join`s that fail with `INVALID_CODE`: the guesses of someone trying codes.
///
/// Per-address limits bound what one address guesses, not what many do; this bounds the
/// whole relay, so the chance that *anyone* guesses a live code is bounded too (the README
/// has the arithmetic). A join reserves one failure before it is tried — per network and
/// relay-wide — and gets it back unless the code was invalid, so concurrent guesses cannot
/// overshoot the budget and good joins cost nothing. The per-network share keeps one network
/// (IPv4 /24, IPv6 /48) from spending the relay's whole budget alone.
#[derive(Debug)]
pub struct FailedJoins {
    relay_per_minute: u32,
    relay: Mutex<Bucket>,
    per_network: RateLimiter,
}

impl FailedJoins {
    /// `relay_per_minute` failures relay-wide, `network_per_minute` per network.
    pub fn new(relay_per_minute: u32, network_per_minute: u32, max_tracked: usize) -> Self {
        Self {
            relay_per_minute,
            relay: Mutex::new(Bucket::full(relay_per_minute, Instant::now())),
            per_network: RateLimiter::keyed(network_per_minute, max_tracked, AddressKey::network),
        }
    }

    /// Reserves one failure for a join from `ip`; false (nothing reserved) when its
    /// network's or the relay's budget is spent.
    pub fn reserve(&self, ip: IpAddr) -> bool {
        if !self.per_network.check(ip) {
            return false;
        }
        if lock(&self.relay).take(self.relay_per_minute, Instant::now()) {
            return true;
        }
        self.per_network.refund(ip);
        METRICS.rate_limited.fetch_add(1, Relaxed);
        false
    }

    /// The join from `ip` did not fail: gives back what [`Self::reserve`] took.
    pub fn refund(&self, ip: IpAddr) {
        self.per_network.refund(ip);
        lock(&self.relay).give_back(self.relay_per_minute);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv6Addr;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn failed_joins_are_bounded_relay_wide_whatever_the_number_of_networks() {
        let budget = FailedJoins::new(5, 2, 1000);
        let mut reserved = 0;
        for i in 0..100u16 {
            // 100 different /48s: each has its own share, the relay has one budget.
            let from = IpAddr::from(Ipv6Addr::new(0x2001, 0xdb8, i, 0, 0, 0, 0, 1));
            reserved += usize::from(budget.reserve(from));
        }
        assert_eq!(reserved, 5);
    }

    #[test]
    fn one_network_cannot_spend_the_relay_budget_alone() {
        let budget = FailedJoins::new(10, 2, 1000);
        let attacker = |host: u8| IpAddr::from([198, 51, 100, host]);
        assert!(budget.reserve(attacker(1)));
        assert!(budget.reserve(attacker(2)));
        assert!(!budget.reserve(attacker(3)));
        // Someone else still has the rest of the relay's budget.
        assert!(budget.reserve(ip("203.0.113.9")));
    }

    #[test]
    fn joins_that_did_not_fail_are_given_back() {
        let budget = FailedJoins::new(1, 1, 1000);
        for _ in 0..10 {
            assert!(budget.reserve(ip("192.0.2.1")));
            budget.refund(ip("192.0.2.1"));
        }
        assert!(budget.reserve(ip("192.0.2.1")));
        assert!(!budget.reserve(ip("192.0.2.1")));
    }
}
