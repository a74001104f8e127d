//! Tail reservation and the `completed` watermark of one mapping, without
//! the mapping: `mmap.rs` hands out slots at the offsets this reserves and
//! lets readers see only below [`Completion::completed`].
//!
//! Invariants (`mmap.rs` relies on them as M3 and M4):
//!
//! - Reservations are disjoint: each is one `fetch_add` on `tail`.
//! - `completed` only moves over reservations that were finished, and never
//!   past one that was not; once every reservation is finished, `completed`
//!   is the tail (clipped to the mapping's length by the caller).
//!
//! Completion protocol (no lock when slots finish in order):
//!
//! 1. A finishing slot `[s, e)` tries `completed: s -> e` with one CAS. If it
//!    wins, it then looks at `pending_count`; if it is non-zero it locks
//!    `pending` and drains (step 3).
//! 2. If the CAS fails (an earlier slot is still open), it locks `pending`,
//!    inserts `s -> e`, increments `pending_count`, and drains.
//! 3. Drain, under the `pending` lock: while `pending` holds an entry starting
//!    at `completed`, remove it and move `completed` to its end.
//!
//! Correct because the CAS in 1 and the increment in 2 are each followed by
//! a `SeqCst` fence before the load that comes next (Dekker's pattern):
//! either the inserting thread sees `completed == s` and drains its own entry,
//! or the CAS winner sees `pending_count > 0` and drains it. (The accesses are
//! `SeqCst` themselves, which is enough under the C11 model; the fences make
//! the argument one that loom checks too, as loom treats `SeqCst` accesses as
//! `AcqRel`. They cost an `mfence` per append on x86, next to a `memcpy` and
//! usually a sync.) A drain never races a CAS on the same value: the only
//! slot that starts at the drained position is the finished one in `pending`.
//!
//! The primitives come from `crate::sync`, so that `.ci/loom` can check this
//! protocol under every interleaving (the `loom_model` tests below).

use std::collections::BTreeMap;

use crate::sync::{fence, AtomicU64, AtomicUsize, Mutex, Ordering};

/// The words every appender writes, on one cache line of their own: an append
/// touches `tail` and then `completed`, so keeping them together moves one
/// line between cores per append instead of two, and nothing else shares it.
#[derive(Debug)]
#[repr(align(64))]
struct Hot {
    // Next unreserved offset; may grow past the mapping's length (those
    // reservations get no slot).
    tail: AtomicU64,
    // Every byte in [0, completed) is finished and never reserved again.
    completed: AtomicU64,
    // 1 + start of the highest finished record slot; 0 if none. Once
    // every slot issued so far is finished, that slot is below `completed`.
    last_record: AtomicU64,
    // Entries in `pending` (read without the lock by the CAS winner, step 1).
    pending_count: AtomicUsize,
}

/// The reservation state of one mapping.
#[derive(Debug)]
pub(crate) struct Completion {
    hot: Hot,
    // Finished slots that are not yet contiguous with `completed`: start -> (end, is a record).
    pending: Mutex<BTreeMap<u64, (u64, bool)>>,
}

impl Completion {
    /// Everything below `at` is finished, and reservations start there.
    pub(crate) fn new(at: u64) -> Completion {
        Completion {
            hot: Hot {
                tail: AtomicU64::new(at),
                completed: AtomicU64::new(at),
                last_record: AtomicU64::new(0),
                pending_count: AtomicUsize::new(0),
            },
            pending: Mutex::new(BTreeMap::new()),
        }
    }

    /// Starts again at `at` (exclusive access: no slot is open).
    pub(crate) fn reset(&mut self, at: u64) {
        *self = Completion::new(at);
    }

    /// Offset below which every reservation is finished.
    pub(crate) fn completed(&self) -> u64 {
        self.hot.completed.load(Ordering::Acquire)
    }

    /// Next unreserved offset.
    pub(crate) fn tail(&self) -> u64 {
        self.hot.tail.load(Ordering::Acquire)
    }

    /// Start of the highest finished record slot since the last reset, if any.
    pub(crate) fn last_record(&self) -> Option<u64> {
        self.hot.last_record.load(Ordering::Acquire).checked_sub(1)
    }

    /// Reserves `len` bytes at the tail by one atomic add; returns their start.
    pub(crate) fn reserve(&self, len: u64) -> u64 {
        self.hot.tail.fetch_add(len, Ordering::AcqRel)
    }

    /// Records that `[start, end)` (a reservation, or the part of one inside
    /// the mapping) is finished and advances `completed` (protocol in the
    /// module doc). `record`: it holds a whole frame.
    pub(crate) fn finish(&self, start: u64, end: u64, record: bool) {
        let hot = &self.hot;
        if record {
            // Monotone (fetch_max), because slots finish out of order. Set before
            // `completed` moves, so whoever sees the bytes complete also sees it.
            hot.last_record.fetch_max(start + 1, Ordering::AcqRel);
        }
        // Step 1.
        if hot
            .completed
            .compare_exchange(start, end, Ordering::SeqCst, Ordering::Relaxed)
            .is_ok()
        {
            fence(Ordering::SeqCst);
            if hot.pending_count.load(Ordering::SeqCst) > 0 {
                self.drain(&mut self.pending.lock());
            }
            return;
        }
        // Step 2.
        let mut pending = self.pending.lock();
        pending.insert(start, (end, record));
        hot.pending_count.fetch_add(1, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        self.drain(&mut pending);
    }

    /// Step 3: moves `completed` over every pending slot contiguous with it.
    fn drain(&self, pending: &mut BTreeMap<u64, (u64, bool)>) {
        let hot = &self.hot;
        loop {
            let done = hot.completed.load(Ordering::SeqCst);
            let Some((end, _)) = pending.remove(&done) else {
                return;
            };
            hot.pending_count.fetch_sub(1, Ordering::SeqCst);
            // Only the owner of a slot starting at `done` could move `completed`
            // from `done`, and that slot is the finished one just removed.
            let moved =
                hot.completed
                    .compare_exchange(done, end, Ordering::SeqCst, Ordering::Relaxed);
            debug_assert!(moved.is_ok(), "completed moved under the pending lock");
        }
    }
}

/// Model checks of the completion protocol under `.ci/loom` (`RUSTFLAGS="--cfg
/// fibflow_loom"`), under every interleaving up to loom's preemption bound:
/// `completed` never passes a reservation that is not finished, and reaches
/// the tail once all are.
#[cfg(all(test, fibflow_loom))]
#[allow(clippy::indexing_slicing, clippy::unwrap_used)]
mod loom_model {
    use super::Completion;
    use crate::sync::{model, AtomicBool, Ordering};
    use loom::sync::Arc;

    /// Thread `i` (the model's own thread is 0) reserves `slots[i]` slots
    /// of one byte each, then finishes them in reverse order (so a thread
    /// with two finishes its later one first, out of order).
    fn run(slots: &'static [usize]) {
        model::check(move || {
            let total: usize = slots.iter().sum();
            let c = Arc::new(Completion::new(0));
            let done: Arc<Vec<AtomicBool>> =
                Arc::new((0..total).map(|_| AtomicBool::new(false)).collect());
            let work = {
                let (c, done) = (c.clone(), done.clone());
                move |n: usize| {
                    let starts: Vec<u64> = (0..n).map(|_| c.reserve(1)).collect();
                    for &s in starts.iter().rev() {
                        done[s as usize].store(true, Ordering::Release);
                        c.finish(s, s + 1, true);
                        let upto = c.completed();
                        for i in 0..upto {
                            assert!(
                                done[i as usize].load(Ordering::Acquire),
                                "completed passed the unfinished slot {i}"
                            );
                        }
                    }
                }
            };
            model::on_threads(slots, work);
            assert_eq!(
                c.completed(),
                total as u64,
                "a finished slot was left pending"
            );
            assert_eq!(c.last_record(), Some(total as u64 - 1));
        });
    }

    #[test]
    fn three_appenders_one_slot_each() {
        run(&[1, 1, 1]);
    }

    #[test]
    fn an_appender_finishing_out_of_order_beside_another() {
        run(&[2, 1]);
    }
}
