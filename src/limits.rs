//! Per-address limits: a rate limiter for attempts, and the count of open connections.
//!
//! Both key IPv6 clients by their /64, since one host can cycle through the addresses of
//! its prefix. Both are bounded: the rate limiter tracks at most `max_tracked_addresses`
//! (idle ones are forgotten first), and the connection counter holds only addresses with
//! an open connection.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering::Relaxed};
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use crate::audit;
use crate::metrics::METRICS;

/// The unit an address limit applies to: an IPv4 address or an IPv6 /64.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AddressKey(IpAddr);

impl From<IpAddr> for AddressKey {
    fn from(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(_) => Self(ip),
            IpAddr::V6(v6) => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                Self(IpAddr::V6(Ipv6Addr::from(prefix)))
            }
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poison| poison.into_inner())
}

/// The relay's attempt limiters.
#[derive(Debug)]
pub struct Limiters {
    /// `join` and `resume` on `/browser`.
    pub join: RateLimiter,
    /// Login, register, refresh, and WebSocket `auth` / `register`.
    pub auth: RateLimiter,
}

impl Limiters {
    /// The limiters of `[limits]`.
    pub fn new(limits: &crate::config::LimitSettings) -> Self {
        Self {
            join: RateLimiter::new(
                limits.join_attempts_per_minute,
                limits.max_tracked_addresses,
            )
            .named("join"),
            auth: RateLimiter::new(
                limits.auth_attempts_per_minute,
                limits.max_tracked_addresses,
            )
            .named("auth"),
        }
    }

    /// Applies reloaded `[limits]`: buckets keep their tokens, new attempts see the new rate.
    pub fn reconfigure(&self, limits: &crate::config::LimitSettings) {
        self.join.set(
            limits.join_attempts_per_minute,
            limits.max_tracked_addresses,
        );
        self.auth.set(
            limits.auth_attempts_per_minute,
            limits.max_tracked_addresses,
        );
    }
}

/// A token bucket per address: `per_minute` attempts, refilled evenly over a minute.
#[derive(Debug)]
pub struct RateLimiter {
    per_minute: AtomicU32,
    max_tracked: AtomicUsize,
    /// Names the limiter in the audit log.
    name: &'static str,
    buckets: Mutex<HashMap<AddressKey, Bucket>>,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    updated: Instant,
    /// Refused since its last allowed attempt: audited once per streak, not per attempt.
    tripped: bool,
}

impl RateLimiter {
    /// Allows `per_minute` attempts per address, tracking at most `max_tracked` addresses.
    pub fn new(per_minute: u32, max_tracked: usize) -> Self {
        Self {
            per_minute: AtomicU32::new(per_minute),
            max_tracked: AtomicUsize::new(max_tracked),
            name: "rate",
            buckets: Mutex::default(),
        }
    }

    /// The limiter, named `name` in the audit log.
    pub fn named(mut self, name: &'static str) -> Self {
        self.name = name;
        self
    }

    /// New limits for attempts from now on.
    pub fn set(&self, per_minute: u32, max_tracked: usize) {
        self.per_minute.store(per_minute, Relaxed);
        self.max_tracked.store(max_tracked, Relaxed);
    }

    fn refill(&self, bucket: &mut Bucket, now: Instant) {
        let capacity = f64::from(self.per_minute.load(Relaxed));
        let elapsed = now.duration_since(bucket.updated).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * capacity / 60.0).min(capacity);
        bucket.updated = now;
    }

    /// Takes one attempt for `ip`; false when its budget is spent.
    pub fn check(&self, ip: IpAddr) -> bool {
        let key = AddressKey::from(ip);
        let now = Instant::now();
        let capacity = f64::from(self.per_minute.load(Relaxed));
        let max_tracked = self.max_tracked.load(Relaxed);
        let mut buckets = lock(&self.buckets);
        if !buckets.contains_key(&key) && buckets.len() >= max_tracked {
            // Forget addresses whose bucket has refilled: they are no different from new.
            buckets.retain(|_, bucket| {
                let elapsed = now.duration_since(bucket.updated).as_secs_f64();
                bucket.tokens + elapsed * capacity / 60.0 < capacity
            });
            if buckets.len() >= max_tracked {
                tracing::warn!("rate limiter is tracking its maximum of addresses; refusing");
                METRICS
                    .rate_limited
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                return false;
            }
        }
        let bucket = buckets.entry(key).or_insert(Bucket {
            tokens: capacity,
            updated: now,
            tripped: false,
        });
        self.refill(bucket, now);
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            bucket.tripped = false;
            true
        } else {
            METRICS
                .rate_limited
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if !std::mem::replace(&mut bucket.tripped, true) {
                audit::event("rate_limited")
                    .client(ip)
                    .reason(self.name)
                    .record();
            }
            false
        }
    }

    /// Addresses tracked now.
    pub fn tracked(&self) -> usize {
        lock(&self.buckets).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn each_address_gets_its_own_budget() {
        let limiter = RateLimiter::new(3, 100);
        for _ in 0..3 {
            assert!(limiter.check(ip("192.0.2.1")));
        }
        assert!(!limiter.check(ip("192.0.2.1")));
        assert!(limiter.check(ip("192.0.2.2")));
    }

    #[test]
    fn an_ipv6_prefix_shares_one_budget() {
        let limiter = RateLimiter::new(2, 100);
        assert!(limiter.check(ip("2001:db8::1")));
        assert!(limiter.check(ip("2001:db8::ffff:2")));
        assert!(!limiter.check(ip("2001:db8::3")));
        assert!(limiter.check(ip("2001:db8:0:1::1")));
    }

    #[test]
    fn the_number_of_tracked_addresses_is_bounded() {
        let limiter = RateLimiter::new(1, 10);
        for i in 0..10u8 {
            assert!(limiter.check(IpAddr::from([10, 0, 0, i])));
        }
        // All ten are mid-minute, so none can be forgotten: the eleventh is refused.
        assert!(!limiter.check(ip("10.0.1.1")));
        assert_eq!(limiter.tracked(), 10);
    }
}
