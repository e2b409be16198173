//! The argon2 hashing pool: a fixed set of threads, each reusing one block of memory, fed by
//! a bounded queue that serves client addresses in turn.
//!
//! Why (measured, issue 15): hashing on `web::block` let every blocking-pool thread
//! allocate its own 19 MiB argon2 buffer. glibc raises its mmap threshold after the first
//! such buffer is freed, so the next ones came from per-thread malloc arenas, which kept
//! them: 580 wrong logins from 20 addresses took the process from 34 MiB to 1,845 MiB, and
//! 1,332 MiB stayed after the flood. Here `auth.max_concurrent_hashes` threads each own one
//! buffer, allocated so glibc maps it directly (see [`Memory`]) and freed after
//! `auth.hash_memory_release_secs` idle, which returns it to the system.
//!
//! The queue is fair: each client address has its own lane, lanes are served in turn, a
//! lane holds at most `auth.max_queued_hashes_per_address` and the whole queue at most
//! `auth.max_queued_hashes`; when it is full, a newcomer displaces the newest job of the
//! longest lane. So a flood from many addresses cannot make one more user wait behind all
//! of it: excess is refused at once (503) rather than after `auth.hash_queue_timeout_secs`.

mod fair_queue;

use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use argon2::Block;
use tokio::sync::oneshot;

use crate::config::AuthSettings;
use crate::limits::AddressKey;
pub use fair_queue::{Admitted, FairQueue};

/// The hashing slot was not to be had: the queue is full or the wait ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the password hashing queue is full")]
pub struct Busy;

/// Counts hashes, for tests and metrics.
#[derive(Debug, Default)]
pub struct HashStats {
    in_flight: AtomicUsize,
    peak: AtomicUsize,
    total: AtomicUsize,
    queued: AtomicUsize,
    refused: AtomicUsize,
}

impl HashStats {
    /// Most hashes that ever ran at once.
    pub fn peak(&self) -> usize {
        self.peak.load(Ordering::Relaxed)
    }
    /// Hashes computed so far.
    pub fn total(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }
    /// Jobs waiting for a thread now.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }
    /// Jobs answered "busy" so far (queue full, displaced, or waited too long).
    pub fn refused(&self) -> usize {
        self.refused.load(Ordering::Relaxed)
    }
}

/// A thread's argon2 memory, kept between hashes and freed when the thread idles.
#[derive(Default)]
pub struct Memory {
    blocks: Vec<Block>,
}

/// Capacity reserved for a buffer, in blocks: just over 32 MiB, glibc's largest dynamic
/// mmap threshold, so the allocation is always mapped directly and freeing it unmaps it
/// (never parked in a malloc arena). Only the blocks argon2 uses (19 MiB by default) are
/// ever touched, so the rest costs address space, not memory.
const MAPPED_BLOCKS: usize = (32 << 20) / Block::SIZE + 16;

impl Memory {
    /// At least `count` blocks.
    pub fn blocks(&mut self, count: usize) -> &mut [Block] {
        if self.blocks.len() < count {
            self.blocks = Vec::with_capacity(count.max(MAPPED_BLOCKS));
            self.blocks.resize(count, Block::new());
        }
        &mut self.blocks[..count]
    }

    /// Frees the buffer.
    pub fn release(&mut self) {
        self.blocks = Vec::new();
    }
}

/// A queued hash: runs with a thread's memory, or is refused.
trait Job: Send {
    /// The requester stopped waiting.
    fn abandoned(&self) -> bool;
    /// Must not start after this.
    fn deadline(&self) -> Option<Instant>;
    /// Hashes, counts it in `stats`, then answers (so an answer is always counted).
    fn run(self: Box<Self>, memory: &mut Memory, stats: &HashStats);
    fn refuse(self: Box<Self>);
}

struct Pending<T, F> {
    work: F,
    deadline: Option<Instant>,
    reply: oneshot::Sender<Result<T, Busy>>,
}

impl<T: Send, F: FnOnce(&mut Memory) -> T + Send> Job for Pending<T, F> {
    fn abandoned(&self) -> bool {
        self.reply.is_closed()
    }
    fn deadline(&self) -> Option<Instant> {
        self.deadline
    }
    fn run(self: Box<Self>, memory: &mut Memory, stats: &HashStats) {
        let now = stats.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        stats.peak.fetch_max(now, Ordering::SeqCst);
        let result = (self.work)(memory);
        stats.in_flight.fetch_sub(1, Ordering::SeqCst);
        stats.total.fetch_add(1, Ordering::SeqCst);
        let _ = self.reply.send(Ok(result));
    }
    fn refuse(self: Box<Self>) {
        let _ = self.reply.send(Err(Busy));
    }
}

struct State {
    queue: FairQueue<AddressKey, Box<dyn Job>>,
    /// Threads waiting for a job.
    idle: usize,
    closed: bool,
}

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
    stats: Arc<HashStats>,
    queue_timeout: Duration,
    release_after: Duration,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }
}

/// The pool. Dropping it stops its threads once they finish their current hash.
pub struct HashPool {
    shared: Arc<Shared>,
}

impl HashPool {
    /// Starts `auth.max_concurrent_hashes` threads.
    pub fn new(settings: &AuthSettings) -> Self {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                queue: FairQueue::new(
                    settings.max_queued_hashes,
                    settings.max_queued_hashes_per_address,
                ),
                idle: 0,
                closed: false,
            }),
            wake: Condvar::new(),
            stats: Arc::default(),
            queue_timeout: settings.hash_queue_timeout(),
            release_after: settings.hash_memory_release(),
        });
        for n in 0..settings.max_concurrent_hashes {
            let shared = Arc::clone(&shared);
            let spawned = std::thread::Builder::new()
                .name(format!("argon2-{n}"))
                .spawn(move || work(&shared));
            if let Err(err) = spawned {
                // Fewer threads only means less hashing capacity; the queue still drains.
                tracing::error!(%err, "could not start a hashing thread");
            }
        }
        Self { shared }
    }

    /// Live counters.
    pub fn stats(&self) -> Arc<HashStats> {
        Arc::clone(&self.shared.stats)
    }

    /// Runs `work` on a hashing thread, in `from`'s turn; `Busy` if it cannot be queued or
    /// waits longer than `auth.hash_queue_timeout_secs` for a thread.
    pub async fn run<T, F>(&self, from: IpAddr, work: F) -> Result<T, Busy>
    where
        T: Send + 'static,
        F: FnOnce(&mut Memory) -> T + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        {
            let mut state = self.shared.lock();
            // A job that an idle thread will take at once never waits, so the timeout
            // (even zero) only applies to jobs that queue behind others.
            let deadline = if state.idle > state.queue.len() {
                None
            } else if self.shared.queue_timeout.is_zero() {
                self.shared.stats.refused.fetch_add(1, Ordering::Relaxed);
                return Err(Busy);
            } else {
                Some(Instant::now() + self.shared.queue_timeout)
            };
            let job = Box::new(Pending {
                work,
                deadline,
                reply,
            });
            match state.queue.push(AddressKey::from(from), job) {
                Admitted::Queued => {}
                Admitted::Displaced(old) => {
                    self.shared.stats.refused.fetch_add(1, Ordering::Relaxed);
                    old.refuse();
                }
                Admitted::Refused(_) => {
                    self.shared.stats.refused.fetch_add(1, Ordering::Relaxed);
                    return Err(Busy);
                }
            }
            self.shared
                .stats
                .queued
                .store(state.queue.len(), Ordering::Relaxed);
        }
        self.shared.wake.notify_one();
        // A closed channel means the pool is gone (shutdown): nothing will hash it.
        answer.await.unwrap_or(Err(Busy))
    }
}

impl Drop for HashPool {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.wake.notify_all();
    }
}

/// One hashing thread: takes jobs in turn, keeps its memory while busy, frees it when
/// idle for `release_after`.
fn work(shared: &Shared) {
    let mut memory = Memory::default();
    loop {
        let job = {
            let mut state = shared.lock();
            loop {
                if state.closed {
                    return;
                }
                if let Some(job) = state.queue.pop() {
                    shared
                        .stats
                        .queued
                        .store(state.queue.len(), Ordering::Relaxed);
                    break job;
                }
                state.idle += 1;
                let (guard, waited) = shared
                    .wake
                    .wait_timeout(state, shared.release_after)
                    .unwrap_or_else(|poison| poison.into_inner());
                state = guard;
                state.idle -= 1;
                if waited.timed_out() && state.queue.is_empty() {
                    memory.release();
                }
            }
        };
        if job.abandoned() {
            continue;
        }
        if job.deadline().is_some_and(|at| Instant::now() > at) {
            shared.stats.refused.fetch_add(1, Ordering::Relaxed);
            job.refuse();
            continue;
        }
        let started = Instant::now();
        job.run(&mut memory, &shared.stats);
        crate::metrics::METRICS.hash_time(started.elapsed());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_is_kept_at_its_size_and_released() {
        let mut memory = Memory::default();
        assert_eq!(memory.blocks(8).len(), 8);
        assert!(memory.blocks.capacity() >= MAPPED_BLOCKS);
        assert_eq!(memory.blocks(4).len(), 4);
        memory.release();
        assert_eq!(memory.blocks.capacity(), 0);
    }
}
