//! Cuts sockets whose close frame was not read within [`CLOSE_LINGER`]: one task per
//! thread for all of its closing connections, rather than a task spawned, polled and freed
//! for every close.
//!
//! Every close waits the same [`CLOSE_LINGER`], so deadlines come in the order the closes
//! do: the thread's queue is kept in that order, and its task sleeps until the first one.
//! The task ends when the queue is empty and the next close starts another.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use super::kill::KillSwitch;
use super::CLOSE_LINGER;

#[derive(Default)]
struct Due {
    /// Switches to throw, and when, earliest first.
    queue: VecDeque<(Instant, Arc<KillSwitch>)>,
    /// Whether this thread's task is alive.
    running: bool,
}

thread_local! {
    static DUE: RefCell<Due> = RefCell::default();
}

/// Throws `kill` after [`CLOSE_LINGER`] (on this thread's runtime).
pub fn cut_after_linger(kill: Arc<KillSwitch>) {
    let at = Instant::now() + CLOSE_LINGER;
    let start = DUE.with(|due| {
        let mut due = due.borrow_mut();
        due.queue.push_back((at, kill));
        !std::mem::replace(&mut due.running, true)
    });
    if start {
        // Made before the task is spawned: a task dropped before its first poll still
        // marks the thread's reaper gone.
        let running = Running;
        actix_rt::spawn(reap(running));
    }
}

/// Marks the thread's task gone however it ends (also when its runtime drops it), so the
/// next close starts another.
struct Running;

impl Drop for Running {
    fn drop(&mut self) {
        let _ = DUE.try_with(|due| due.borrow_mut().running = false);
    }
}

async fn reap(_running: Running) {
    loop {
        let now = Instant::now();
        let next = loop {
            let due = DUE.with(|due| {
                let mut due = due.borrow_mut();
                match due.queue.front() {
                    Some((at, _)) if *at <= now => Ok(due.queue.pop_front()),
                    Some((at, _)) => Err(Some(*at)),
                    None => Err(None),
                }
            });
            match due {
                Ok(Some((_, kill))) => kill.kill(),
                Ok(None) => {}
                Err(next) => break next,
            }
        };
        let Some(at) = next else { return };
        tokio::time::sleep_until(at.into()).await;
    }
}
