//! Per-address limits: token buckets for attempts, and the relay-wide budget for failed joins.
//!
//! Address limits key IPv6 clients by their /64, since one host can cycle through the
//! addresses of its prefix; the failed-join budget groups wider still (IPv4 /24, IPv6 /48),
//! because that is what one customer of one provider is usually given.
//!
//! Every table is bounded: a limiter tracks at most `max_tracked_addresses`, and when a new
//! address arrives at a full table the least recently used one is forgotten (and counted in
//! `hermit_rate_limiter_evictions_total`). Forgetting fails *open* for that one address — it
//! gets a fresh budget — where refusing would fail closed for every new user: an attacker
//! with enough addresses (IPv6 /64s are cheap) could otherwise lock everyone new out.
//!
//! In a cluster, `join` and `auth` attempts are also taken from a bucket per address in
//! Redis ([`Limiters::cluster_check`]), and failed joins from the cluster's budget
//! ([`FailedJoins`]), so N nodes do not give N times the attempts or guesses. The local
//! bucket still applies first, and is what stands while Redis is unreachable: a node cut
//! off from the cluster limits as a single relay does.
//!
//! Why not the `governor` crate: its keyed limiter stores keys in an unbounded map and can
//! only be trimmed of *refilled* keys (`retain_recent`), so the bounded, least-recently-used
//! table — the part that matters here — would still be ours; the bucket arithmetic it would
//! replace is ten lines.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use crate::audit;
use crate::cluster::Cluster;
use crate::metrics::METRICS;

/// The unit a limit applies to: an address or a network, IPv6 cut to a prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AddressKey(IpAddr);

impl AddressKey {
    /// `ip` with its low bits cleared: IPv4 to `/v4`, IPv6 to `/v6`.
    fn prefix(ip: IpAddr, v4: u32, v6: u32) -> Self {
        Self(match ip {
            IpAddr::V4(v4addr) => {
                let mask = u32::MAX.checked_shl(32 - v4).unwrap_or(0);
                IpAddr::V4(Ipv4Addr::from(u32::from(v4addr) & mask))
            }
            IpAddr::V6(v6addr) => {
                let mask = u128::MAX.checked_shl(128 - v6).unwrap_or(0);
                IpAddr::V6(Ipv6Addr::from(u128::from(v6addr) & mask))
            }
        })
    }

    /// One client: an IPv4 address or an IPv6 /64.
    pub fn address(ip: IpAddr) -> Self {
        Self::prefix(ip, 32, 64)
    }

    /// One network: an IPv4 /24 or an IPv6 /48.
    pub fn network(ip: IpAddr) -> Self {
        Self::prefix(ip, 24, 48)
    }
}

impl From<IpAddr> for AddressKey {
    fn from(ip: IpAddr) -> Self {
        Self::address(ip)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poison| poison.into_inner())
}

/// The relay's attempt limiters.
#[derive(Debug)]
pub struct Limiters {
    /// `join`, `resume` and `register` on the pairing endpoints.
    pub join: RateLimiter,
    /// Login, register, refresh, and WebSocket `auth` / `register`.
    pub auth: RateLimiter,
    /// `join`s that named no live code, per network and relay-wide.
    pub failed_joins: FailedJoins,
    /// The cluster whose buckets count attempts cluster-wide, if this node is in one.
    cluster: Option<Arc<Cluster>>,
}

/// An attempt limited cluster-wide.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    /// `join`, `resume`, `register` on the pairing endpoints ([`Limiters::join`]).
    Join,
    /// Logins and WebSocket authentication ([`Limiters::auth`]).
    Auth,
}

impl Limiters {
    /// The limiters of `[limits]`.
    pub fn new(limits: &crate::config::LimitSettings) -> Self {
        let tracked = limits.max_tracked_addresses;
        Self {
            join: RateLimiter::new(limits.join_attempts_per_minute, tracked).named("join"),
            auth: RateLimiter::new(limits.auth_attempts_per_minute, tracked).named("auth"),
            failed_joins: FailedJoins::new(
                limits.failed_joins_per_minute,
                limits.failed_joins_per_network_per_minute,
                tracked,
            ),
            cluster: None,
        }
    }

    /// The limiters, counting attempts cluster-wide too when `cluster` is given.
    pub fn with_cluster(mut self, cluster: Option<Arc<Cluster>>) -> Self {
        self.cluster = cluster;
        self
    }

    /// In a cluster, the second half of an `attempt` the local limiter allowed: a future
    /// answering whether the cluster's bucket for `ip` had a token too. `None` without a
    /// cluster: the local answer is the whole answer. When Redis does not answer (within
    /// `cluster.redis_timeout_ms`), the local answer stands.
    pub fn cluster_check(
        &self,
        attempt: Attempt,
        ip: IpAddr,
    ) -> Option<impl std::future::Future<Output = bool> + 'static> {
        let cluster = Arc::clone(self.cluster.as_ref()?);
        let limiter = match attempt {
            Attempt::Join => &self.join,
            Attempt::Auth => &self.auth,
        };
        let per_minute = limiter.per_minute.load(Relaxed);
        let address = AddressKey::address(ip).0.to_string();
        let key = cluster.key(&["rate", limiter.name, &address]);
        Some(async move {
            match cluster.take(&key, per_minute).await {
                Ok(true) => true,
                Ok(false) => {
                    METRICS.rate_limited.fetch_add(1, Relaxed);
                    false
                }
                Err(err) => {
                    tracing::debug!(%err, "cluster rate limit unavailable; the local one stands");
                    true
                }
            }
        })
    }

    /// Reserves one failed join for a `join` from `ip` (see [`FailedJoins`]), given back
    /// when dropped unless [`FailedJoin::spend`] says the join did fail. Without a cluster
    /// the answer is [`Reserved::Now`]: `None` when its network's or the relay's budget is
    /// spent. In a cluster, once this node's budget allowed it, the cluster's is
    /// [`Reserved::Asking`] too — unless this node is cut off from the cluster now, or
    /// `cluster_wide` is false (the join already found Redis out of reach): then this
    /// node's budget decides alone.
    pub fn reserve_failed_join(
        self: &Arc<Self>,
        ip: IpAddr,
        cluster_wide: bool,
    ) -> Reserved<impl std::future::Future<Output = Option<FailedJoin>> + 'static> {
        if !self.failed_joins.reserve(ip) {
            return Reserved::Now(None);
        }
        let failure = FailedJoin::new(Arc::clone(self), ip);
        match &self.cluster {
            Some(cluster) if cluster_wide && cluster.healthy() => {
                Reserved::Asking(failure.in_cluster(Arc::clone(cluster)))
            }
            _ => Reserved::Now(Some(failure)),
        }
    }

    /// Applies reloaded `[limits]`: buckets keep their tokens, new attempts see the new rate.
    pub fn reconfigure(&self, limits: &crate::config::LimitSettings) {
        let tracked = limits.max_tracked_addresses;
        self.join.set(limits.join_attempts_per_minute, tracked);
        self.auth.set(limits.auth_attempts_per_minute, tracked);
    }
}

/// One token bucket: `per_minute` tokens at most, refilled evenly over a minute.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated: Instant,
    /// Refused since its last allowed attempt: audited once per streak, not per attempt.
    tripped: bool,
}

impl Bucket {
    fn full(per_minute: u32, now: Instant) -> Self {
        Self {
            tokens: f64::from(per_minute),
            updated: now,
            tripped: false,
        }
    }

    fn refill(&mut self, per_minute: u32, now: Instant) {
        let capacity = f64::from(per_minute);
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens = (self.tokens + elapsed * capacity / 60.0).min(capacity);
        self.updated = now;
    }

    /// Takes one token if there is one.
    fn take(&mut self, per_minute: u32, now: Instant) -> bool {
        self.refill(per_minute, now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Gives back a token taken for an attempt that, in the end, did not count.
    fn give_back(&mut self, per_minute: u32) {
        self.tokens = (self.tokens + 1.0).min(f64::from(per_minute));
    }
}

/// A token bucket per address (or network): `per_minute` attempts, refilled evenly over a
/// minute, for at most `max_tracked` addresses at once.
#[derive(Debug)]
pub struct RateLimiter {
    /// A reload may change both, for attempts from then on.
    per_minute: AtomicU32,
    max_tracked: AtomicUsize,
    /// Names the limiter in the audit log.
    name: &'static str,
    key: fn(IpAddr) -> AddressKey,
    table: Mutex<Table>,
}

#[derive(Debug, Default)]
struct Table {
    /// Each tracked address's bucket, and the stamp of its latest use.
    buckets: HashMap<AddressKey, (Bucket, u64)>,
    /// Uses in order, oldest first. An entry whose stamp is not its bucket's latest is stale
    /// (the address was used again since) and is skipped; compacted when stale ones pile up,
    /// so this stays within a small multiple of `buckets`.
    recency: VecDeque<(AddressKey, u64)>,
    next_stamp: u64,
}

impl Table {
    /// Forgets the least recently used address; false if there was none.
    fn evict_oldest(&mut self) -> bool {
        while let Some((key, stamp)) = self.recency.pop_front() {
            if self
                .buckets
                .get(&key)
                .is_some_and(|(_, latest)| *latest == stamp)
            {
                self.buckets.remove(&key);
                METRICS.rate_limiter_evictions.fetch_add(1, Relaxed);
                return true;
            }
        }
        false
    }

    /// Records a use of `key`; the caller has made sure it has a bucket.
    fn touch(&mut self, key: AddressKey) {
        let stamp = self.next_stamp;
        self.next_stamp += 1;
        if let Some((_, latest)) = self.buckets.get_mut(&key) {
            *latest = stamp;
        }
        self.recency.push_back((key, stamp));
        if self.recency.len() > 2 * self.buckets.len() + 64 {
            let buckets = &self.buckets;
            self.recency
                .retain(|(key, stamp)| buckets.get(key).is_some_and(|(_, s)| s == stamp));
        }
    }
}

impl RateLimiter {
    /// Allows `per_minute` attempts per address, tracking at most `max_tracked` addresses.
    pub fn new(per_minute: u32, max_tracked: usize) -> Self {
        Self::keyed(per_minute, max_tracked, AddressKey::address)
    }

    /// As [`Self::new`], with addresses grouped by `key`.
    fn keyed(per_minute: u32, max_tracked: usize, key: fn(IpAddr) -> AddressKey) -> Self {
        Self {
            per_minute: AtomicU32::new(per_minute),
            max_tracked: AtomicUsize::new(max_tracked.max(1)),
            name: "rate",
            key,
            table: Mutex::default(),
        }
    }

    /// The limiter, named `name` in the audit log.
    pub fn named(mut self, name: &'static str) -> Self {
        self.name = name;
        self
    }

    /// New limits for attempts from now on (a full table shrinks as addresses are used).
    pub fn set(&self, per_minute: u32, max_tracked: usize) {
        self.per_minute.store(per_minute, Relaxed);
        self.max_tracked.store(max_tracked.max(1), Relaxed);
    }

    /// Takes one attempt for `ip`; false when its budget is spent.
    pub fn check(&self, ip: IpAddr) -> bool {
        let key = (self.key)(ip);
        let now = Instant::now();
        let per_minute = self.per_minute.load(Relaxed);
        let max_tracked = self.max_tracked.load(Relaxed);
        let mut table = lock(&self.table);
        if !table.buckets.contains_key(&key) {
            // A reload may have lowered the bound: forget as many as it takes.
            while table.buckets.len() >= max_tracked && table.evict_oldest() {}
            let full = Bucket::full(per_minute, now);
            table.buckets.insert(key, (full, 0));
        }
        table.touch(key);
        let Some((bucket, _)) = table.buckets.get_mut(&key) else {
            return true;
        };
        if bucket.take(per_minute, now) {
            bucket.tripped = false;
            return true;
        }
        METRICS.rate_limited.fetch_add(1, Relaxed);
        if !std::mem::replace(&mut bucket.tripped, true) {
            audit::event("rate_limited")
                .client(ip)
                .reason(self.name)
                .record();
        }
        false
    }

    /// Gives back an attempt [`Self::check`] took for `ip` that did not count after all.
    pub fn refund(&self, ip: IpAddr) {
        let key = (self.key)(ip);
        if let Some((bucket, _)) = lock(&self.table).buckets.get_mut(&key) {
            bucket.give_back(self.per_minute.load(Relaxed));
        }
    }

    /// Addresses tracked now.
    pub fn tracked(&self) -> usize {
        lock(&self.table).buckets.len()
    }
}

/// What [`Limiters::reserve_failed_join`] answers: decided now, or once the cluster answers.
pub enum Reserved<F> {
    /// The reservation, or `None` when the budget is spent (the join is `RATE_LIMITED`).
    Now(Option<FailedJoin>),
    /// This node's budget allowed the join and the cluster's is being asked: resolves as
    /// [`Reserved::Now`].
    Asking(F),
}

/// One failed join reserved for a `join` in flight: given back when dropped — the join
/// succeeded, or its connection went away before it was answered — unless spent.
#[derive(Debug)]
pub struct FailedJoin {
    limiters: Arc<Limiters>,
    ip: IpAddr,
    /// Also reserved in the cluster's buckets: given back there too.
    in_cluster: bool,
    spent: bool,
}

impl FailedJoin {
    /// A failure [`FailedJoins::reserve`] reserved for a join from `ip`.
    pub(super) fn new(limiters: Arc<Limiters>, ip: IpAddr) -> Self {
        Self {
            limiters,
            ip,
            in_cluster: false,
            spent: false,
        }
    }

    /// Reserves this failure in `cluster`'s buckets too (see [`FailedJoins`]): the
    /// reservation, now held cluster-wide; `None` when the cluster's budget is spent (this
    /// node's share is given back as it drops); the reservation as it was, held on this
    /// node only, when Redis does not answer within `cluster.redis_timeout_ms`.
    pub(super) async fn in_cluster(mut self, cluster: Arc<Cluster>) -> Option<Self> {
        let buckets = self
            .limiters
            .failed_joins
            .cluster_buckets(&cluster, self.ip);
        match cluster.take_all(&buckets).await {
            Ok(true) => {
                self.in_cluster = true;
                Some(self)
            }
            Ok(false) => {
                METRICS.rate_limited.fetch_add(1, Relaxed);
                None
            }
            Err(err) => {
                tracing::debug!(%err, "cluster failed-join budget unavailable; this node's stands");
                Some(self)
            }
        }
    }

    /// The join named no live code: the failure stays counted.
    pub fn spend(mut self) {
        self.spent = true;
    }
}

impl Drop for FailedJoin {
    fn drop(&mut self) {
        if self.spent {
            return;
        }
        self.limiters.failed_joins.refund(self.ip);
        if let Some(cluster) = self.limiters.cluster.as_ref().filter(|_| self.in_cluster) {
            let buckets = self.limiters.failed_joins.cluster_buckets(cluster, self.ip);
            cluster.give_back(buckets);
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
///
/// In a cluster the budget is the cluster's, so N nodes do not give N times the guesses: a
/// join this node's budget allowed also takes a token from the Redis buckets
/// `<prefix>:rate:failed:all` and `<prefix>:rate:failed:net:<network>` (both or neither, in
/// one script), and the same rule holds — kept if the code was not live, given back
/// otherwise. Taking before asking, rather than checking the buckets before and taking
/// after a failure, is what keeps it exact: with a check, every node's concurrent guesses
/// would pass on the same last token. It costs a good join one give-back, sent in the
/// background as the registry answers (so a join made at that very instant elsewhere may
/// still find the token taken). This node's budget is still asked first: it refuses without
/// a round trip once this node alone has spent it, and it is all that stands while Redis is
/// out of reach — a node cut off from the cluster (not healthy, a join that could not look
/// its code up, or Redis not answering in time) limits as a single relay does, and what it
/// spends meanwhile is not counted in the cluster. A token whose give-back does not reach
/// Redis (or whose join's connection went away while the cluster was asked) stays spent
/// until the bucket refills: that errs by one token towards refusing, never towards more
/// guesses. A browser tunnelled to its code's node reserves there only, so each join counts
/// once in the cluster.
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

    /// The cluster's buckets a join from `ip` takes from: the cluster's budget and its
    /// network's share, with their tokens per minute.
    fn cluster_buckets(&self, cluster: &Cluster, ip: IpAddr) -> Vec<(String, u32)> {
        let network = AddressKey::network(ip).0.to_string();
        vec![
            (
                cluster.key(&["rate", "failed", "all"]),
                self.relay_per_minute,
            ),
            (
                cluster.key(&["rate", "failed", "net", &network]),
                self.per_network.per_minute.load(Relaxed),
            ),
        ]
    }
}

#[cfg(test)]
#[path = "limits/failed_joins_tests.rs"]
mod failed_joins_tests;

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
    fn a_full_table_forgets_the_least_recently_used_address_rather_than_refuse_a_new_one() {
        let limiter = RateLimiter::new(1, 10);
        for i in 0..10u8 {
            assert!(limiter.check(IpAddr::from([10, 0, 0, i])));
        }
        // 10.0.0.0 is used again (refused: its budget is spent), so 10.0.0.1 is now the
        // least recently used.
        assert!(!limiter.check(ip("10.0.0.0")));
        let evictions = METRICS.rate_limiter_evictions.load(Relaxed);
        // All ten are mid-minute; a new address is still admitted.
        assert!(limiter.check(ip("10.0.1.1")));
        assert!(METRICS.rate_limiter_evictions.load(Relaxed) > evictions);
        assert_eq!(limiter.tracked(), 10);
        // 10.0.0.0 is still remembered and still refused; 10.0.0.1 was forgotten.
        assert!(!limiter.check(ip("10.0.0.0")));
        assert!(limiter.check(ip("10.0.0.1")));
    }

    #[test]
    fn the_recency_queue_stays_bounded_under_repeated_use() {
        let limiter = RateLimiter::new(1_000_000, 4);
        for _ in 0..10_000 {
            limiter.check(ip("192.0.2.1"));
        }
        let table = lock(&limiter.table);
        assert!(table.recency.len() <= 2 * table.buckets.len() + 65);
    }

    #[test]
    fn a_refund_gives_back_the_attempt() {
        let limiter = RateLimiter::new(1, 10);
        assert!(limiter.check(ip("192.0.2.1")));
        limiter.refund(ip("192.0.2.1"));
        assert!(limiter.check(ip("192.0.2.1")));
        assert!(!limiter.check(ip("192.0.2.1")));
    }

    #[test]
    fn networks_are_ipv4_slash_24_and_ipv6_slash_48() {
        assert_eq!(
            AddressKey::network(ip("198.51.100.77")),
            AddressKey::network(ip("198.51.100.1"))
        );
        assert_ne!(
            AddressKey::network(ip("198.51.100.1")),
            AddressKey::network(ip("198.51.101.1"))
        );
        assert_eq!(
            AddressKey::network(ip("2001:db8:1:ffff::1")),
            AddressKey::network(ip("2001:db8:1:1::2"))
        );
        assert_ne!(
            AddressKey::network(ip("2001:db8:1::1")),
            AddressKey::network(ip("2001:db8:2::1"))
        );
    }
}
