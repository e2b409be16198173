//! The server's worker threads, where every connection actor runs, numbered by *slot* from
//! 1 (0 is every other thread: the cluster's, the registries'). In a cluster the slots are
//! also *lanes* (the first [`MAX_LANES`]; past them slots share lanes in turn): the
//! envelopes of a tunnel whose side runs on slot `n` go over the links of lane `n`, written
//! from slot `n` and read on slot `n` of the other node — where the tunnel's other end runs
//! — so a relayed message crosses no thread of either node that the connections at its two
//! ends do not already run on (BENCHMARKS.md, "Lanes"; what is not a tunnel's goes on lane
//! 0). A leaf: it knows nothing of the rest of the crate.

use std::cell::Cell;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::ThreadId;

use actix_rt::ArbiterHandle;

/// The most slots counted; a worker past it registers in slot 0's stead, as a thread of
/// no slot (its connections' cluster traffic goes over lane 0).
pub const MAX_SLOTS: usize = 256;
/// The most lanes between two nodes (besides lane 0): each is a link each way, so a
/// cluster of N nodes holds up to (N − 1) × (1 + this) links from others on each node.
pub const MAX_LANES: usize = 16;

thread_local! {
    /// The calling thread's slot, once it registered as a worker (0 until then).
    static SLOT: Cell<usize> = const { Cell::new(0) };
}

/// The worker threads of one server; cheap to clone.
#[derive(Clone, Default)]
pub struct Workers(Arc<Slots>);

#[derive(Default)]
struct Slots {
    /// Slot `n` at index `n - 1`: its thread and its arbiter (`None` once it refused a
    /// task: it ended). A slot whose worker ended is taken by the next worker to register
    /// (a restarted one).
    handles: Mutex<Vec<(ThreadId, Option<ArbiterHandle>)>>,
    next: AtomicU64,
}

impl Workers {
    fn lock(&self) -> MutexGuard<'_, Vec<(ThreadId, Option<ArbiterHandle>)>> {
        self.0
            .handles
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// Registers the calling thread (a worker's, as it starts or its service restarts) and
    /// returns its slot: the one it had, else one whose worker ended, else a new one.
    pub fn register_current(&self) -> usize {
        let this = std::thread::current().id();
        let here = actix_rt::Arbiter::current();
        let mut handles = self.lock();
        let index = match handles.iter().position(|(thread, _)| *thread == this) {
            Some(index) => index,
            // A slot whose worker ended takes nothing more.
            None => match handles
                .iter()
                .position(|(_, handle)| !handle.as_ref().is_some_and(|h| h.spawn(async {})))
            {
                Some(index) => index,
                None if handles.len() < MAX_SLOTS => {
                    handles.push((this, None));
                    handles.len() - 1
                }
                None => return 0,
            },
        };
        handles[index] = (this, Some(here));
        SLOT.with(|slot| slot.set(index + 1));
        index + 1
    }

    /// The calling thread's slot: 0 unless it is a worker that registered.
    pub fn current() -> usize {
        SLOT.with(Cell::get)
    }

    /// The calling thread's lane: its slot, folded into [`MAX_LANES`] (0: not a worker).
    pub fn lane() -> usize {
        match Self::current() {
            0 => 0,
            slot => (slot - 1) % MAX_LANES + 1,
        }
    }

    /// Whether the worker of `slot` runs (asked by sending it a task that does nothing: for
    /// what is started seldom, such as a link).
    pub fn alive(&self, slot: usize) -> bool {
        self.handle(slot)
            .is_some_and(|(thread, handle)| self.sent(slot, thread, handle.spawn(async {})))
    }

    fn handle(&self, slot: usize) -> Option<(ThreadId, ArbiterHandle)> {
        let index = slot.checked_sub(1)?;
        let handles = self.lock();
        let (thread, handle) = handles.get(index)?;
        Some((*thread, handle.clone()?))
    }

    /// Whether a task sent to the worker of `slot` (on `thread`) was taken; one refused
    /// marks the slot ended.
    fn sent(&self, slot: usize, thread: ThreadId, taken: bool) -> bool {
        if !taken {
            let mut handles = self.lock();
            // Unless a restarted worker took the slot meanwhile.
            if let Some((held, handle)) = handles.get_mut(slot - 1) {
                if *held == thread {
                    *handle = None;
                }
            }
        }
        taken
    }

    /// Runs `task` on the worker of `slot`: false (and `task` dropped unrun) if there is
    /// none, or it has ended.
    pub fn spawn_on(&self, slot: usize, task: impl Future<Output = ()> + Send + 'static) -> bool {
        self.handle(slot)
            .is_some_and(|(thread, handle)| self.sent(slot, thread, handle.spawn(task)))
    }

    /// Runs `task` on the next running worker in turn, or on this thread when there is none
    /// (before the workers start). A worker that ended meanwhile drops `task` unrun.
    pub fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        let picked = {
            let handles = self.lock();
            let slots = handles.len();
            let next = self.0.next.fetch_add(1, Relaxed) as usize;
            (0..slots)
                .map(|step| (next + step) % slots.max(1))
                .find(|index| handles[*index].1.is_some())
        };
        match picked {
            Some(index) => {
                self.spawn_on(index + 1, task);
            }
            None => drop(actix_rt::spawn(task)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_keeps_its_slot_and_one_that_ended_gives_it_up() {
        let workers = Workers::default();
        // A worker that registers (twice, as a restarted service does), waits until `all`
        // did, then ends.
        let worker = |workers: &Workers, all: &Arc<std::sync::Barrier>| {
            let (workers, all) = (workers.clone(), Arc::clone(all));
            std::thread::spawn(move || {
                actix_rt::System::new().block_on(async move {
                    let slot = workers.register_current();
                    assert_eq!(workers.register_current(), slot, "the same slot");
                    assert_eq!(Workers::current(), slot);
                    assert_eq!(Workers::lane(), slot, "the first slots are their lanes");
                    assert!(workers.alive(slot));
                    all.wait();
                    slot
                })
            })
        };
        assert_eq!(Workers::current(), 0, "not a worker");
        let both = Arc::new(std::sync::Barrier::new(2));
        let (one, two) = (worker(&workers, &both), worker(&workers, &both));
        let mut slots = [one.join().unwrap(), two.join().unwrap()];
        slots.sort_unstable();
        assert_eq!(slots, [1, 2]);
        assert!(!workers.alive(1) && !workers.alive(3) && !workers.alive(0));
        assert!(!workers.spawn_on(2, async {}), "its worker ended");
        assert!(!workers.spawn_on(3, async {}), "no such slot");
        // Both ended: a new worker takes the first slot back instead of a third.
        let alone = Arc::new(std::sync::Barrier::new(1));
        assert_eq!(worker(&workers, &alone).join().unwrap(), 1);
    }
}
