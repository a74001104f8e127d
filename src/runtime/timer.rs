//! One timer for delays, retry backoff, cron rounds, timeouts and heartbeats.
//!
//! Delayed tasks wait in a min-heap of `(due, task)`; an entry whose task changed
//! meanwhile is dropped when it fires (the claim re-checks the task under its shard
//! lock, so a stale entry can never run a task early or twice). Open attempts are
//! not in the heap: each worker publishes its attempt in its slot, and the timer
//! looks at the few slots when it wakes, so starting and finishing an attempt costs
//! no heap operation and no lock shared between workers.
//!
//! The timer thread sleeps until the earliest due time (system clock), or until the
//! clock is advanced by hand (manual clock), or until an earlier entry arrives.

use super::context::ContextInner;
use crate::codec::TaskId;
use parking_lot::{Condvar, Mutex};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// The timer's shared state.
#[derive(Default)]
pub(crate) struct Timer {
    heap: Mutex<TimerState>,
    cv: Condvar,
    /// Signals finished rounds to [`Timer::kick_and_wait`].
    done: Condvar,
    /// The time the timer thread plans to wake at next (ms), for cheap "is mine earlier?" checks.
    planned_wake: AtomicU64,
    /// The attempt each worker runs, for timeouts and heartbeats.
    pub(crate) slots: Vec<Mutex<Option<Arc<ContextInner>>>>,
}

#[derive(Default)]
struct TimerState {
    due: BinaryHeap<Reverse<(u64, TaskId)>>,
    kicked: bool,
    stopped: bool,
    /// Kicks so far, and the last of them whose round the timer thread has
    /// finished (see [`Timer::kick_and_wait`]).
    kicks: u64,
    handled: u64,
    /// Whether the timer thread runs (a round will follow a kick).
    running: bool,
}

impl TimerState {
    /// Moves the entries due at `now` into `out`, earliest first.
    fn pop_due(&mut self, now: u64, out: &mut Vec<(u64, TaskId)>) {
        while self.due.peek().is_some_and(|Reverse((at, _))| *at <= now) {
            if let Some(Reverse(item)) = self.due.pop() {
                out.push(item);
            }
        }
    }
}

/// What the timer thread found due.
pub(crate) struct Due {
    pub(crate) tasks: Vec<(u64, TaskId)>,
    pub(crate) attempts: Vec<Arc<ContextInner>>,
    /// The kicks this round answers.
    kicks: u64,
}

impl Timer {
    pub(crate) fn new(workers: usize) -> Timer {
        Timer {
            slots: (0..workers).map(|_| Mutex::new(None)).collect(),
            planned_wake: AtomicU64::new(u64::MAX),
            ..Timer::default()
        }
    }

    /// Makes task `id` ready at `due_ms`.
    pub(crate) fn schedule(&self, due_ms: u64, id: TaskId) {
        let mut st = self.heap.lock();
        st.due.push(Reverse((due_ms, id)));
        if due_ms < self.planned_wake.load(Ordering::Acquire) {
            st.kicked = true;
            self.cv.notify_one();
        }
    }

    /// Removes and returns the entries due at `now` (for `start`, which
    /// queues them before any worker runs).
    pub(crate) fn take_due(&self, now: u64) -> Vec<(u64, TaskId)> {
        let mut due = Vec::new();
        self.heap.lock().pop_due(now, &mut due);
        due
    }

    /// Worker `w` starts (`Some`) or ends (`None`) an attempt.
    pub(crate) fn set_slot(&self, w: usize, ctl: Option<Arc<ContextInner>>) {
        let check = ctl.as_ref().map_or(u64::MAX, |c| c.ctl.next_check_ms());
        if let Some(slot) = self.slots.get(w) {
            *slot.lock() = ctl;
        }
        if check < self.planned_wake.load(Ordering::Acquire) {
            self.kick();
        }
    }

    /// Wakes the timer thread to look again (clock advanced, heartbeat window changed).
    pub(crate) fn kick(&self) {
        let mut st = self.heap.lock();
        self.kick_locked(&mut st);
    }

    /// Marks a kick (counted, see [`Timer::kick_and_wait`]) and wakes the thread;
    /// returns the kick's number.
    fn kick_locked(&self, st: &mut TimerState) -> u64 {
        st.kicked = true;
        st.kicks += 1;
        self.cv.notify_one();
        st.kicks
    }

    /// Kicks the timer thread and, if it runs, waits until it has handled what
    /// was due then (tasks queued, timeouts recorded), at most `limit`. A manual
    /// clock's `advance` calls it, so a test that advances the clock and then
    /// looks sees every task that became due (SPEC §13), in priority order.
    pub(crate) fn kick_and_wait(&self, limit: std::time::Duration) {
        let until = std::time::Instant::now() + limit;
        let mut st = self.heap.lock();
        let mine = self.kick_locked(&mut st);
        while st.running && !st.stopped && st.handled < mine {
            if self.done.wait_until(&mut st, until).timed_out() {
                break;
            }
        }
    }

    /// The timer thread starts (`true`) or ends (`false`).
    pub(crate) fn set_running(&self, on: bool) {
        let mut st = self.heap.lock();
        st.running = on;
        self.done.notify_all();
    }

    /// The timer thread finished the round of `due`.
    pub(crate) fn round_done(&self, due: &Due) {
        let mut st = self.heap.lock();
        st.handled = st.handled.max(due.kicks);
        self.done.notify_all();
    }

    /// Ends the timer thread.
    pub(crate) fn stop(&self) {
        let mut st = self.heap.lock();
        st.stopped = true;
        self.cv.notify_all();
        self.done.notify_all();
    }

    /// Blocks until something is due, or the clock reaches `housekeeping_at`
    /// (the caller's next look at retention and compaction); `None` when
    /// stopped. `real` is whether the clock moves by itself (else only a kick
    /// wakes the thread).
    pub(crate) fn next_due(
        &self,
        now: &dyn Fn() -> u64,
        real: bool,
        housekeeping_at: u64,
    ) -> Option<Due> {
        let mut st = self.heap.lock();
        loop {
            if st.stopped {
                return None;
            }
            let kicked = std::mem::take(&mut st.kicked);
            // While the slots are read, any attempt that starts must kick: one
            // published just after its slot was read would otherwise compare
            // its deadline with the previous round's time, not kick, and wait
            // for the wake-up planned below without it (up to a second late).
            self.planned_wake.store(u64::MAX, Ordering::Release);
            let t = now();
            let mut due = Due {
                tasks: Vec::new(),
                attempts: Vec::new(),
                kicks: st.kicks,
            };
            st.pop_due(t, &mut due.tasks);
            let mut next =
                housekeeping_at.min(st.due.peek().map_or(u64::MAX, |Reverse((at, _))| *at));
            for slot in &self.slots {
                if let Some(ctl) = slot.lock().as_ref() {
                    let c = ctl.ctl.next_check_ms();
                    if c <= t {
                        due.attempts.push(ctl.clone());
                    } else {
                        next = next.min(c);
                    }
                }
            }
            if !due.tasks.is_empty() || !due.attempts.is_empty() || kicked || t >= housekeeping_at {
                self.planned_wake.store(t, Ordering::Release);
                return Some(due);
            }
            // Storing the true wake time matters: a worker starting an attempt
            // kicks this thread only if its deadline comes sooner, and a kick is
            // a futex wake on the path from claim to handler start.
            let wake_at = next;
            self.planned_wake.store(wake_at, Ordering::Release);
            if real {
                let wait =
                    std::time::Duration::from_millis(wake_at.saturating_sub(t).clamp(1, 1_000));
                if !st.kicked {
                    self.cv.wait_for(&mut st, wait);
                }
            } else if !st.kicked {
                self.cv.wait(&mut st);
            }
        }
    }
}
