//! Per-account login throttling: a budget of wrong passwords per account, whatever address
//! they come from, kept in a bounded map.
//!
//! Each account (the normalised email, known or not, so the throttle reveals nothing about
//! which emails exist) has a bucket of `limits.login_failures_per_account_per_hour` guesses,
//! refilled evenly over an hour. A login takes one guess *before* its password is checked
//! and gets it back if the password was right, so parallel guesses cannot overdraw it; when
//! the bucket is empty the login is refused (429) without hashing. A browser holding a
//! device token of that account (issued at its last sign-in) skips the bucket, so an
//! attacker who spends it locks out only browsers that never signed in to that account.
//!
//! The map holds at most `limits.max_tracked_accounts` accounts; the least recently used is
//! forgotten first, and a bucket that refilled is dropped at once (it is no different from
//! none). Accounts are keyed by 16 bytes of SHA-256, so no email is kept in memory.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use sha2::{Digest, Sha256};

/// An account as the throttle knows it.
type AccountKey = [u8; 16];

fn key(account: &str) -> AccountKey {
    let digest = Sha256::digest(account.as_bytes());
    let mut key = [0; 16];
    key.copy_from_slice(&digest[..16]);
    key
}

#[derive(Debug)]
struct Bucket {
    guesses: f64,
    updated: Instant,
    /// Position in `Buckets::by_use`.
    stamp: u64,
}

#[derive(Debug, Default)]
struct Buckets {
    by_account: HashMap<AccountKey, Bucket>,
    /// Stamp of last use → account: the first entry is the least recently used.
    by_use: BTreeMap<u64, AccountKey>,
    next_stamp: u64,
}

/// The per-account throttle.
#[derive(Debug)]
pub struct LoginThrottle {
    per_hour: u32,
    max_tracked: usize,
    buckets: Mutex<Buckets>,
}

impl LoginThrottle {
    /// `per_hour` wrong guesses per account per hour; at most `max_tracked` accounts.
    pub fn new(per_hour: u32, max_tracked: usize) -> Self {
        Self {
            per_hour,
            max_tracked,
            buckets: Mutex::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Buckets> {
        self.buckets
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    fn capacity(&self) -> f64 {
        f64::from(self.per_hour)
    }

    /// Takes one guess from `account`'s budget; false when it is spent.
    pub fn take(&self, account: &str) -> bool {
        self.take_at(account, Instant::now())
    }

    /// Gives back the guess [`Self::take`] took: the password was right.
    pub fn refund(&self, account: &str) {
        self.refund_at(account, Instant::now());
    }

    /// Accounts tracked now.
    pub fn tracked(&self) -> usize {
        self.lock().by_account.len()
    }

    fn take_at(&self, account: &str, now: Instant) -> bool {
        let account = key(account);
        let capacity = self.capacity();
        let mut buckets = self.lock();
        let buckets = &mut *buckets;
        if !buckets.by_account.contains_key(&account) {
            if buckets.by_account.len() >= self.max_tracked {
                if let Some((_, oldest)) = buckets.by_use.pop_first() {
                    buckets.by_account.remove(&oldest);
                }
            }
            buckets.by_account.insert(
                account,
                Bucket {
                    guesses: capacity,
                    updated: now,
                    stamp: 0,
                },
            );
        }
        let stamp = buckets.next_stamp;
        buckets.next_stamp += 1;
        // unwrap: inserted above if it was missing, and the lock is held.
        let bucket = buckets.by_account.get_mut(&account).unwrap();
        buckets.by_use.remove(&bucket.stamp);
        buckets.by_use.insert(stamp, account);
        bucket.stamp = stamp;
        refill(bucket, capacity, now);
        if bucket.guesses >= 1.0 {
            bucket.guesses -= 1.0;
            true
        } else {
            false
        }
    }

    fn refund_at(&self, account: &str, now: Instant) {
        let account = key(account);
        let capacity = self.capacity();
        let mut buckets = self.lock();
        let Some(bucket) = buckets.by_account.get_mut(&account) else {
            return;
        };
        refill(bucket, capacity, now);
        bucket.guesses = (bucket.guesses + 1.0).min(capacity);
        if bucket.guesses >= capacity {
            let stamp = bucket.stamp;
            buckets.by_account.remove(&account);
            buckets.by_use.remove(&stamp);
        }
    }
}

fn refill(bucket: &mut Bucket, capacity: f64, now: Instant) {
    let hours = now.duration_since(bucket.updated).as_secs_f64() / 3600.0;
    bucket.guesses = (bucket.guesses + hours * capacity).min(capacity);
    bucket.updated = now;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn an_account_gets_its_budget_whoever_guesses() {
        let throttle = LoginThrottle::new(3, 100);
        let now = Instant::now();
        for _ in 0..3 {
            assert!(throttle.take_at("ada@example.com", now));
        }
        assert!(!throttle.take_at("ada@example.com", now));
        assert!(throttle.take_at("bob@example.com", now));
    }

    #[test]
    fn a_right_password_gives_its_guess_back() {
        let throttle = LoginThrottle::new(2, 100);
        let now = Instant::now();
        for _ in 0..10 {
            assert!(throttle.take_at("ada@example.com", now));
            throttle.refund_at("ada@example.com", now);
        }
        // A full bucket is forgotten: it is no different from none.
        assert_eq!(throttle.tracked(), 0);
    }

    #[test]
    fn the_budget_refills_over_an_hour() {
        let throttle = LoginThrottle::new(6, 100);
        let start = Instant::now();
        for _ in 0..6 {
            assert!(throttle.take_at("ada@example.com", start));
        }
        assert!(!throttle.take_at("ada@example.com", start));
        // One guess comes back every ten minutes.
        let later = start + Duration::from_secs(10 * 60 + 1);
        assert!(throttle.take_at("ada@example.com", later));
        assert!(!throttle.take_at("ada@example.com", later));
    }

    #[test]
    fn the_least_recently_used_account_is_forgotten_first() {
        let throttle = LoginThrottle::new(1, 3);
        let now = Instant::now();
        for account in ["a", "b", "c"] {
            assert!(throttle.take_at(account, now));
        }
        assert!(!throttle.take_at("a", now)); // "a" is now the most recently used
        assert!(throttle.take_at("d", now)); // forgets "b"
        assert_eq!(throttle.tracked(), 3);
        assert!(throttle.take_at("b", now), "b was forgotten");
        assert!(!throttle.take_at("a", now), "a was kept");
    }
}
