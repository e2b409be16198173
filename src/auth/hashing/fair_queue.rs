//! The hashing pool's queue: one lane per client address, lanes served in turn, bounded
//! per lane and in all, and a full queue makes room for a newcomer from the longest lane.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;

/// One client address's jobs, and the turn in which lanes are served.
#[derive(Debug)]
pub struct FairQueue<K, T> {
    lanes: HashMap<K, VecDeque<T>>,
    /// Keys with a non-empty lane, in the order they will be served.
    turn: VecDeque<K>,
    len: usize,
    max_len: usize,
    max_per_key: usize,
}

/// What [`FairQueue::push`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Admitted<T> {
    /// Queued.
    Queued,
    /// Queued in place of this job of the longest lane, which must be refused.
    Displaced(T),
    /// Not queued: the key's lane is full, or the queue is full of lanes no longer
    /// than this key's would be.
    Refused(T),
}

impl<K: Hash + Eq + Clone, T> FairQueue<K, T> {
    /// A queue of at most `max_len` jobs, `max_per_key` per key.
    pub fn new(max_len: usize, max_per_key: usize) -> Self {
        Self {
            lanes: HashMap::new(),
            turn: VecDeque::new(),
            len: 0,
            max_len,
            max_per_key,
        }
    }

    /// Jobs waiting.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no job waits.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Queues `job` for `key`, displacing another key's newest job if that is fairer.
    pub fn push(&mut self, key: K, job: T) -> Admitted<T> {
        let mine = self.lanes.get(&key).map_or(0, VecDeque::len);
        if mine >= self.max_per_key {
            return Admitted::Refused(job);
        }
        let mut displaced = None;
        if self.len >= self.max_len {
            // The longest lane gives up its newest job, but only if it would still hold
            // more than this key after the swap; otherwise the swap gains nothing.
            let longest = self
                .lanes
                .iter()
                .max_by_key(|(_, lane)| lane.len())
                .map(|(k, lane)| (k.clone(), lane.len()));
            match longest {
                Some((victim, len)) if len > mine + 1 => {
                    displaced = self.take_newest(&victim);
                }
                _ => return Admitted::Refused(job),
            }
        }
        let lane = self.lanes.entry(key.clone()).or_default();
        if lane.is_empty() {
            self.turn.push_back(key);
        }
        lane.push_back(job);
        self.len += 1;
        match displaced {
            Some(old) => Admitted::Displaced(old),
            None => Admitted::Queued,
        }
    }

    /// The next job: the oldest of the key whose turn it is.
    pub fn pop(&mut self) -> Option<T> {
        let key = self.turn.pop_front()?;
        let lane = self.lanes.get_mut(&key)?;
        let job = lane.pop_front()?;
        if lane.is_empty() {
            self.lanes.remove(&key);
        } else {
            self.turn.push_back(key);
        }
        self.len -= 1;
        Some(job)
    }

    fn take_newest(&mut self, key: &K) -> Option<T> {
        let lane = self.lanes.get_mut(key)?;
        let job = lane.pop_back()?;
        if lane.is_empty() {
            self.lanes.remove(key);
            self.turn.retain(|k| k != key);
        }
        self.len -= 1;
        Some(job)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(queue: &mut FairQueue<&'static str, u32>) -> Vec<u32> {
        std::iter::from_fn(|| queue.pop()).collect()
    }

    #[test]
    fn keys_are_served_in_turn() {
        let mut queue = FairQueue::new(100, 100);
        for job in [1, 2, 3, 4] {
            assert_eq!(queue.push("flood", job), Admitted::Queued);
        }
        assert_eq!(queue.push("user", 100), Admitted::Queued);
        assert_eq!(queue.push("other", 200), Admitted::Queued);
        assert_eq!(drain(&mut queue), [1, 100, 200, 2, 3, 4]);
        assert!(queue.is_empty());
    }

    #[test]
    fn a_key_past_its_share_is_refused() {
        let mut queue = FairQueue::new(100, 2);
        assert_eq!(queue.push("a", 1), Admitted::Queued);
        assert_eq!(queue.push("a", 2), Admitted::Queued);
        assert_eq!(queue.push("a", 3), Admitted::Refused(3));
        assert_eq!(queue.push("b", 4), Admitted::Queued);
        assert_eq!(queue.len(), 3);
    }

    #[test]
    fn a_full_queue_makes_room_for_a_newcomer_from_the_longest_lane() {
        let mut queue = FairQueue::new(4, 4);
        for job in [1, 2, 3] {
            queue.push("flood", job);
        }
        queue.push("other", 10);
        // Full: the newcomer takes the flood's newest place.
        assert_eq!(queue.push("user", 100), Admitted::Displaced(3));
        assert_eq!(queue.len(), 4);
        // Now the longest lane holds 2 and the flood's next job would hold 3: no gain.
        assert_eq!(queue.push("flood", 4), Admitted::Refused(4));
        assert_eq!(drain(&mut queue), [1, 10, 100, 2]);
    }

    #[test]
    fn a_queue_full_of_single_jobs_refuses_a_newcomer() {
        let mut queue = FairQueue::new(2, 4);
        queue.push("a", 1);
        queue.push("b", 2);
        assert_eq!(queue.push("c", 3), Admitted::Refused(3));
    }
}
