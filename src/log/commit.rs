//! Completion notification and group commit (leader/follower, okaywal shape).
//!
//! Watermarks, all logical byte positions (LSNs), each monotonic:
//!
//! - W1 `completed` (per mapping, in `mmap.rs`, combined across segments by
//!   the log): every frame below it is fully copied into the mapping.
//! - W2 `synced` (here): every frame below it is durable on disk. `synced <=
//!   completed` always, because a leader only syncs up to a `completed` it read.
//!
//! Group commit protocol for `wait_durable(lsn)` in `Sync` mode:
//!
//! 1. If `synced > lsn`, return: the record and all before it are durable.
//! 2. Lock `state`. If a leader is active, add `(lsn, this thread)` to the
//!    wait list, unlock, park until woken, then go to 1.
//! 3. Otherwise become leader, unlock, wait until `completed > lsn` (every
//!    earlier append finished copying), read `completed` as the target, sync
//!    `[synced, target)`, publish `synced = target`, then under the lock clear
//!    the leader flag and take out of the wait list every follower now covered
//!    plus the first uncovered one; wake exactly those. Covered followers
//!    return; the uncovered one (or any newcomer that gets there first) leads
//!    the next flush, which syncs everything completed so far in one go (one
//!    flush for the whole group). Followers that are neither stay parked, so a
//!    flush costs one wake-up per acknowledged caller, not one per waiter.
//! 4. A sync error poisons the log: the error is returned to the leader,
//!    followers see [`LogError::Poisoned`], and the sync is never retried
//!    (after a failed fsync the page cache state is unknown; see the
//!    PostgreSQL "fsyncgate" discussion, 2018). A leader that panics poisons
//!    the log through the drop guard.
//!
//! No lost wake-up: a follower joins the list and the leader clears its flag
//! under the same lock, so a follower either sees no leader (and leads) or is
//! in the list the leader scans when it releases. Every woken thread re-checks
//! from step 1, so a wake-up that is not needed costs only a loop.
//!
//! Correct because `synced` only moves to a `completed` value that was read
//! after waiting for `completed > lsn`, and syncs cover `[old synced, target)`
//! in full; so `synced > lsn` implies every byte below the end of `lsn`'s frame
//! was copied before the sync started and is on disk (I2).

use std::sync::atomic::{fence, AtomicUsize};
use std::sync::Arc;

use parking_lot::Condvar;

// The group commit's primitives are loom's under `.ci/loom` (see `crate::sync`
// and `loom_model` below); `Notify` stays on std and parking_lot.
use crate::sync::{thread, thread_local, AtomicBool, AtomicU64, Mutex, Ordering};

use super::LogError;

/// Wakes threads waiting for a watermark to move (no lost wake-ups: both sides fence).
#[derive(Debug, Default)]
pub(crate) struct Notify {
    waiters: AtomicUsize,
    lock: parking_lot::Mutex<()>,
    cond: Condvar,
}

impl Notify {
    /// Wakes every waiter, cheaply if there is none.
    pub(crate) fn notify_all(&self) {
        fence(Ordering::SeqCst);
        if self.waiters.load(Ordering::SeqCst) > 0 {
            let _g = self.lock.lock();
            self.cond.notify_all();
        }
    }

    /// Blocks until `done()` is true; `done` is re-checked after every wake-up.
    pub(crate) fn wait_until(&self, mut done: impl FnMut() -> bool) {
        if done() {
            return;
        }
        let mut g = self.lock.lock();
        self.waiters.fetch_add(1, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        while !done() {
            self.cond.wait(&mut g);
        }
        self.waiters.fetch_sub(1, Ordering::SeqCst);
    }
}

/// One parked follower: its thread and the flag its waker sets before unparking it.
#[derive(Debug)]
struct WaitSlot {
    woken: AtomicBool,
    thread: thread::Thread,
}

thread_local! {
    // Reused by every wait of this thread (a thread is in at most one wait list at a time).
    static SLOT: Arc<WaitSlot> = Arc::new(WaitSlot {
        woken: AtomicBool::new(false),
        thread: thread::current(),
    });
}

#[derive(Debug, Default)]
struct State {
    leader: bool,
    // Parked followers with the LSN each waits for, in arrival order.
    waiters: Vec<(u64, Arc<WaitSlot>)>,
}

/// The synced watermark, the leader flag with the parked followers, and the poison flag.
#[derive(Debug)]
pub(crate) struct GroupCommit {
    synced: AtomicU64,
    state: Mutex<State>,
    poisoned: AtomicBool,
    reason: Mutex<Option<String>>,
}

/// Clears the leader flag and wakes followers, also when the leader panics (then it poisons).
struct LeaderGuard<'a>(&'a GroupCommit);

impl Drop for LeaderGuard<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0
                .poison("a thread panicked while flushing the log".to_owned());
        }
        self.0.release();
    }
}

/// Poisons the log if the thread holding it panics (background threads hold one).
pub(crate) struct PoisonOnPanic<'a>(pub(crate) &'a GroupCommit);

impl Drop for PoisonOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.poison("a background log thread panicked".to_owned());
        }
    }
}

fn wake(slots: Vec<(u64, Arc<WaitSlot>)>) {
    for (_, s) in slots {
        s.woken.store(true, Ordering::Release);
        s.thread.unpark();
    }
}

impl GroupCommit {
    /// Starts with everything below `synced` durable.
    pub(crate) fn new(synced: u64) -> GroupCommit {
        GroupCommit {
            synced: AtomicU64::new(synced),
            state: Mutex::new(State::default()),
            poisoned: AtomicBool::new(false),
            reason: Mutex::new(None),
        }
    }

    /// W2: every frame below this LSN is durable.
    pub(crate) fn synced(&self) -> u64 {
        self.synced.load(Ordering::Acquire)
    }

    /// Fails with [`LogError::Poisoned`] once a sync failed.
    pub(crate) fn check(&self) -> Result<(), LogError> {
        if self.poisoned.load(Ordering::Acquire) {
            let reason = self.reason.lock().clone().unwrap_or_default();
            return Err(LogError::Poisoned { reason });
        }
        Ok(())
    }

    /// Marks the log poisoned for good and wakes everybody.
    pub(crate) fn poison(&self, reason: String) {
        {
            let mut r = self.reason.lock();
            if r.is_none() {
                *r = Some(reason);
            }
        }
        self.poisoned.store(true, Ordering::Release);
        let all = std::mem::take(&mut self.state.lock().waiters);
        wake(all);
    }

    /// Leader step 4: clears the leader flag; wakes every follower now covered
    /// by `synced`, and the first uncovered one, which leads the next flush.
    fn release(&self) {
        let synced = self.synced();
        let poisoned = self.poisoned.load(Ordering::Acquire);
        let woken = {
            let mut st = self.state.lock();
            st.leader = false;
            let mut woken = Vec::new();
            let mut next_leader = false;
            st.waiters.retain(|(lsn, slot)| {
                if poisoned || *lsn < synced {
                    woken.push((*lsn, Arc::clone(slot)));
                    false
                } else if !next_leader {
                    // Woken first, so the next flush starts while the rest are unparked.
                    next_leader = true;
                    woken.insert(0, (*lsn, Arc::clone(slot)));
                    false
                } else {
                    true
                }
            });
            woken
        };
        wake(woken);
    }

    /// Blocks until `synced > lsn`. At most one caller at a time runs
    /// `flush(synced) -> new synced`; the others park and share its result.
    pub(crate) fn wait(
        &self,
        lsn: u64,
        flush: impl Fn(u64) -> Result<u64, LogError>,
    ) -> Result<(), LogError> {
        loop {
            self.check()?;
            if self.synced() > lsn {
                return Ok(());
            }
            let mut st = self.state.lock();
            if self.synced() > lsn {
                return Ok(());
            }
            self.check()?;
            if st.leader {
                // Step 2: park until the leader covers us or hands us the lead.
                let slot = SLOT.with(Arc::clone);
                slot.woken.store(false, Ordering::Relaxed);
                st.waiters.push((lsn, Arc::clone(&slot)));
                drop(st);
                while !slot.woken.load(Ordering::Acquire) {
                    thread::park();
                }
                continue;
            }
            st.leader = true;
            drop(st);
            let guard = LeaderGuard(self);
            match flush(self.synced()) {
                Ok(to) => {
                    self.synced.fetch_max(to, Ordering::AcqRel);
                }
                Err(e) => {
                    self.poison(e.to_string());
                    drop(guard);
                    return Err(e);
                }
            }
            drop(guard);
        }
    }
}

/// Model checks of the group commit under `.ci/loom` (`RUSTFLAGS="--cfg
/// fibflow_loom"`): loom runs each model under every interleaving (up to its
/// preemption bound) and fails on a deadlock, which is what a lost wake-up
/// becomes here. The flush is a stand-in that moves `synced` forward by a
/// fixed step (less than a real flush, which syncs everything completed, so
/// a leader may have to hand the lead on before its own LSN is covered).
#[cfg(all(test, fibflow_loom))]
mod loom_model {
    use super::{GroupCommit, LogError};
    use crate::sync::{model, AtomicBool, AtomicU64, Ordering};
    use loom::sync::Arc;

    /// Thread `i` waits for `lsns[i]` (the model's own thread takes
    /// `lsns[0]`); each flush moves `synced` by `step`; flush number
    /// `fail_at` (counting from 0) fails.
    fn run(lsns: &'static [u64], step: u64, fail_at: Option<u64>) {
        model::check(move || {
            let gc = Arc::new(GroupCommit::new(0));
            let flushing = Arc::new(AtomicBool::new(false));
            let flushes = Arc::new(AtomicU64::new(0));
            let wait = {
                let (gc, flushing, flushes) = (gc.clone(), flushing.clone(), flushes.clone());
                move |lsn: u64| {
                    let r = gc.wait(lsn, |from| {
                        assert!(
                            !flushing.swap(true, Ordering::AcqRel),
                            "two flushes ran at once"
                        );
                        let n = flushes.fetch_add(1, Ordering::AcqRel);
                        flushing.store(false, Ordering::Release);
                        if Some(n) == fail_at {
                            return Err(LogError::Io {
                                context: "a modelled flush".to_owned(),
                                source: std::io::Error::other("injected"),
                            });
                        }
                        Ok(from + step)
                    });
                    match r {
                        Ok(()) => assert!(gc.synced() > lsn, "returned before {lsn} was synced"),
                        Err(_) => assert!(gc.check().is_err(), "an error without poison"),
                    }
                }
            };
            model::on_threads(lsns, wait);
        });
    }

    #[test]
    fn three_waiters_one_flush_covers_all() {
        run(&[0, 1, 2], 3, None);
    }

    #[test]
    fn three_waiters_the_lead_is_handed_on() {
        run(&[2, 1, 0], 1, None);
    }

    #[test]
    fn a_failed_flush_poisons_every_waiter() {
        run(&[1, 0, 1], 1, Some(0));
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::type_complexity)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn watermark_table() {
        // (synced before, lsn waited for, flush result, expected synced after, expected ok)
        let cases: [(u64, u64, Result<u64, ()>, u64, bool); 4] = [
            (0, 10, Ok(20), 20, true),
            (30, 10, Ok(99), 30, true),
            (0, 5, Err(()), 0, false),
            (8, 8, Ok(16), 16, true),
        ];
        for (i, (before, lsn, result, after, ok)) in cases.into_iter().enumerate() {
            let gc = GroupCommit::new(before);
            let r = gc.wait(lsn, |_| {
                result.map_err(|()| LogError::Poisoned { reason: "x".into() })
            });
            assert_eq!(r.is_ok(), ok, "case {i}");
            assert_eq!(gc.synced(), after, "case {i}");
            if !ok {
                assert!(
                    matches!(gc.wait(0, |_| Ok(1)), Err(LogError::Poisoned { .. })),
                    "case {i}: poisoned forever"
                );
            }
        }
    }

    #[test]
    fn followers_share_one_flush() {
        let gc = Arc::new(GroupCommit::new(0));
        let flushes = Arc::new(AtomicUsize::new(0));
        let gate = Arc::new(std::sync::Barrier::new(8));
        let handles: Vec<_> = (0..8u64)
            .map(|i| {
                let (gc, flushes, gate) = (gc.clone(), flushes.clone(), gate.clone());
                std::thread::spawn(move || {
                    gate.wait();
                    gc.wait(i, |_| {
                        flushes.fetch_add(1, Ordering::SeqCst);
                        Ok(100)
                    })
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap().unwrap();
        }
        assert_eq!(
            flushes.load(Ordering::SeqCst),
            1,
            "one flush to 100 covers every waiter"
        );
    }
}
