//! The budget for failed joins, relay-wide and per network; in a cluster, cluster-wide.

use std::net::IpAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::{lock, AddressKey, Bucket, Limiters, RateLimiter};
use crate::cluster::Cluster;
use crate::metrics::METRICS;

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
