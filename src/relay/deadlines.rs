//! Every deadline a registry keeps, in one ordered structure.
//!
//! A registry used to arm one actix timer per code and per away side; actix polls every
//! pending timer each time the actor wakes, so a registry holding N deadlines did O(N) work
//! per message. Here the deadlines sit in a sorted set and the registry arms a single timer
//! for the earliest one: the work per message is O(log N), and O(1) timers are polled.

use std::collections::BTreeSet;

use crate::ids::HashMap;
use std::hash::Hash;
use std::time::Instant;

/// Deadlines keyed by `K`; at most one per key.
#[derive(Debug)]
pub struct Deadlines<K> {
    /// Sorted by time, so the earliest is the first and due ones are a prefix.
    queue: BTreeSet<(Instant, K)>,
    /// Each key's time, to find and move its entry in `queue`.
    index: HashMap<K, Instant>,
}

impl<K> Default for Deadlines<K> {
    fn default() -> Self {
        Self {
            queue: BTreeSet::new(),
            index: HashMap::default(),
        }
    }
}

impl<K: Ord + Hash + Clone> Deadlines<K> {
    /// Sets `key` to fall due at `at`, replacing its earlier deadline if any.
    pub fn set(&mut self, key: K, at: Instant) {
        if let Some(old) = self.index.insert(key.clone(), at) {
            self.queue.remove(&(old, key.clone()));
        }
        self.queue.insert((at, key));
    }

    /// Forgets `key`'s deadline, if it has one.
    pub fn cancel(&mut self, key: &K) {
        if let Some(at) = self.index.remove(key) {
            self.queue.remove(&(at, key.clone()));
        }
    }

    /// Whether `key` has a deadline.
    pub fn contains(&self, key: &K) -> bool {
        self.index.contains_key(key)
    }

    /// The earliest deadline.
    pub fn next(&self) -> Option<Instant> {
        self.queue.first().map(|(at, _)| *at)
    }

    /// Removes and returns the next key due at `now`, if any.
    pub fn pop_due(&mut self, now: Instant) -> Option<K> {
        if self.next()? > now {
            return None;
        }
        let (_, key) = self.queue.pop_first()?;
        self.index.remove(&key);
        Some(key)
    }

    /// Deadlines held.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// Whether none is held.
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn keys_fall_due_in_time_order_and_only_once() {
        let now = Instant::now();
        let mut d = Deadlines::default();
        d.set("b", now + Duration::from_secs(2));
        d.set("a", now + Duration::from_secs(1));
        d.set("c", now + Duration::from_secs(3));
        assert_eq!(d.next(), Some(now + Duration::from_secs(1)));
        let later = now + Duration::from_secs(2);
        assert_eq!(d.pop_due(later), Some("a"));
        assert_eq!(d.pop_due(later), Some("b"));
        assert_eq!(d.pop_due(later), None);
        assert_eq!(d.len(), 1);
    }

    #[test]
    fn a_key_set_again_moves_and_a_cancelled_key_never_falls_due() {
        let now = Instant::now();
        let mut d = Deadlines::default();
        d.set("a", now);
        d.set("a", now + Duration::from_secs(5));
        assert_eq!(d.pop_due(now), None);
        d.cancel(&"a");
        assert!(d.is_empty());
        assert_eq!(d.pop_due(now + Duration::from_secs(10)), None);
    }
}
