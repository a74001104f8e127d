//! The ready set of one queue: a lock-free sorted set in two parts.
//!
//! Most tasks become ready in the order of their keys (priority desc, ready
//! time, id): a stream of submissions of one priority has rising ready times
//! and ids. A skip list pays for each of them a search down some 16 levels, a
//! node allocation, and on removal an unlink and a deferred free. So entries
//! that arrive in order are appended to the *lane* instead, a list of blocks
//! of [`BLOCK`] slots that is sorted because it only takes an entry no better
//! than the last one it took (or any entry while it is empty). Entries out of
//! order, and appends that meet another producer's, go to the skip list. The
//! best entry of the set is the better of the two fronts.
//!
//! The lane is safe code throughout. A slot is written once ([`OnceLock`]) and
//! never reused, and it is taken by one compare-and-swap of its flag, so a
//! taken slot cannot come back under another entry (no ABA). A block is freed
//! when the head moves past it and the last reader lets go. Producers append
//! under a try-lock: one that finds it held does not wait but inserts into the
//! skip list, so no thread ever blocks on the lane. Consumers take no lock.

use super::dispatch::{ReadyItem, ReadyKey};
use arc_swap::{ArcSwap, Guard};
use crossbeam_skiplist::{set, SkipSet};
use parking_lot::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

/// Slots per lane block: one allocation per this many in-order entries.
const BLOCK: usize = 64;

#[derive(Default)]
struct Slot {
    /// Set once, by the producer that appended here.
    item: OnceLock<ReadyItem>,
    /// Set once, by the consumer that took the entry.
    taken: AtomicBool,
}

struct Block {
    slots: [Slot; BLOCK],
    /// Every slot before this index is taken: where a look starts. It only
    /// grows, and only over slots seen taken.
    first: AtomicUsize,
    /// The block after this one, once the producer filled this one.
    next: OnceLock<Arc<Block>>,
}

impl Block {
    fn new() -> Block {
        Block {
            slots: std::array::from_fn(|_| Slot::default()),
            first: AtomicUsize::new(0),
            next: OnceLock::new(),
        }
    }
}

/// Unlinks the blocks after this one one by one: dropped by recursion, a
/// lane of a million queued entries would overflow a worker's stack.
impl Drop for Block {
    fn drop(&mut self) {
        let mut next = self.next.take();
        while let Some(block) = next {
            next = match Arc::try_unwrap(block) {
                Ok(mut block) => block.next.take(),
                Err(_) => None, // still referenced: its last owner drops the rest
            };
        }
    }
}

/// The producers' end of the lane.
struct Tail {
    block: Arc<Block>,
    /// Slots of `block` written.
    len: usize,
    /// The key last appended.
    last: Option<ReadyKey>,
}

/// The in-order part of a ready set.
struct Lane {
    /// The first block with an entry not taken (or the last block).
    head: ArcSwap<Block>,
    tail: Mutex<Tail>,
}

/// An entry of the lane, found by [`Lane::front`] or [`Lane::entries`].
pub(crate) struct LaneEntry {
    block: Guard<Arc<Block>>,
    i: usize,
}

impl LaneEntry {
    fn value(&self) -> &ReadyItem {
        // Only written slots are handed out, and a slot is never cleared, so
        // the fallback (the worst key, whose claim finds no task) is never used.
        let item = self.block.slots[self.i].item.get();
        debug_assert!(
            item.is_some(),
            "a lane entry is made only for a written slot"
        );
        item.unwrap_or_else(|| {
            static NONE: OnceLock<ReadyItem> = OnceLock::new();
            NONE.get_or_init(|| ReadyItem {
                priority: i32::MIN,
                ready_at: u64::MAX,
                id: crate::codec::TaskId(u64::MAX),
                name: Arc::from(""),
            })
        })
    }

    fn remove(&self) -> bool {
        self.block.slots[self.i]
            .taken
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }
}

impl Lane {
    fn new() -> Lane {
        let block = Arc::new(Block::new());
        Lane {
            head: ArcSwap::new(block.clone()),
            tail: Mutex::new(Tail {
                block,
                len: 0,
                last: None,
            }),
        }
    }

    /// Appends `item` if it keeps the lane sorted and no other producer is
    /// appending; otherwise gives it back.
    fn append(&self, item: ReadyItem) -> Result<(), ReadyItem> {
        let Some(mut tail) = self.tail.try_lock() else {
            return Err(item);
        };
        let k = item.key();
        // Behind the last entry, it may still go in when every entry is
        // taken: one entry alone is in order.
        if tail.last.is_some_and(|last| k < last) && self.front().is_some() {
            return Err(item);
        }
        if tail.len == BLOCK {
            let next = Arc::new(Block::new());
            if tail.block.next.set(next.clone()).is_err() {
                return Err(item); // only this lock's holder sets it: never
            }
            tail.block = next;
            tail.len = 0;
        }
        let i = tail.len;
        tail.block.slots[i].item.set(item)?;
        tail.len += 1;
        tail.last = Some(k);
        Ok(())
    }

    /// The first entry not taken, if any.
    fn front(&self) -> Option<LaneEntry> {
        let mut block = self.head.load();
        loop {
            let start = block.first.load(Ordering::Relaxed);
            let mut i = start;
            while i < BLOCK {
                let slot = &block.slots[i];
                if slot.item.get().is_none() {
                    break; // not written yet: the end of the lane
                }
                if !slot.taken.load(Ordering::Acquire) {
                    break;
                }
                i += 1;
            }
            if i > start {
                block.first.fetch_max(i, Ordering::Relaxed);
            }
            if i < BLOCK {
                return block.slots[i]
                    .item
                    .get()
                    .is_some()
                    .then_some(LaneEntry { block, i });
            }
            // Every slot of this block is taken: on to the next, if written.
            let next = block.next.get()?.clone();
            self.head.compare_and_swap(&block, next);
            block = self.head.load();
        }
    }

    /// Up to `limit` entries not taken, in order.
    fn entries(&self, limit: usize) -> Vec<LaneEntry> {
        let mut out = Vec::new();
        let mut block = self.head.load();
        'blocks: loop {
            let start = block.first.load(Ordering::Relaxed);
            for i in start..BLOCK {
                let slot = &block.slots[i];
                if out.len() >= limit || slot.item.get().is_none() {
                    break 'blocks;
                }
                if !slot.taken.load(Ordering::Acquire) {
                    out.push(LaneEntry {
                        block: Guard::from_inner(Arc::clone(&block)),
                        i,
                    });
                }
            }
            match block.next.get() {
                Some(next) => block = Guard::from_inner(next.clone()),
                None => break,
            }
        }
        out
    }
}

/// An entry of a [`ReadySet`]: look at it, or take it out.
pub(crate) enum ReadyEntry<'a> {
    Set(set::Entry<'a, ReadyItem>),
    Lane(LaneEntry),
}

impl ReadyEntry<'_> {
    /// The queued entry.
    pub(crate) fn value(&self) -> &ReadyItem {
        match self {
            ReadyEntry::Set(e) => e.value(),
            ReadyEntry::Lane(e) => e.value(),
        }
    }

    /// Takes the entry out of its set; false if another thread took it first.
    pub(crate) fn remove(&self) -> bool {
        match self {
            ReadyEntry::Set(e) => e.remove(),
            ReadyEntry::Lane(e) => e.remove(),
        }
    }
}

/// A sorted set of ready entries: best first, lock-free.
pub(crate) struct ReadySet {
    lane: Lane,
    set: SkipSet<ReadyItem>,
}

impl std::fmt::Debug for ReadySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadySet")
            .field("empty", &self.is_empty())
            .finish()
    }
}

impl ReadySet {
    pub(crate) fn new() -> ReadySet {
        ReadySet {
            lane: Lane::new(),
            set: SkipSet::new(),
        }
    }

    /// Adds an entry (an entry of the same key already in the skip list is
    /// replaced; one in the lane stays, and the claim of the second fails).
    pub(crate) fn insert(&self, item: ReadyItem) {
        if let Err(item) = self.lane.append(item) {
            self.set.insert(item);
        }
    }

    /// Whether no entry is queued.
    pub(crate) fn is_empty(&self) -> bool {
        self.set.is_empty() && self.lane.front().is_none()
    }

    /// The best entry.
    pub(crate) fn front(&self) -> Option<ReadyEntry<'_>> {
        let lane = self.lane.front();
        // `is_empty` reads a count; `front` pins the epoch even when empty.
        let set = if self.set.is_empty() {
            None
        } else {
            self.set.front()
        };
        match (lane, set) {
            (Some(l), Some(s)) if s.value() < l.value() => Some(ReadyEntry::Set(s)),
            (Some(l), _) => Some(ReadyEntry::Lane(l)),
            (None, s) => s.map(ReadyEntry::Set),
        }
    }

    /// The best of the first `limit` entries, in order, for which `pred` holds.
    pub(crate) fn first_of(
        &self,
        limit: usize,
        mut pred: impl FnMut(&ReadyItem) -> bool,
    ) -> Option<ReadyEntry<'_>> {
        let mut lane = self.lane.entries(limit).into_iter().peekable();
        let mut set = self.set.iter().take(limit).peekable();
        for _ in 0..limit {
            let from_lane = match (lane.peek(), set.peek()) {
                (Some(l), Some(s)) => l.value() <= s.value(),
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (None, None) => return None,
            };
            let e = if from_lane {
                lane.next().map(ReadyEntry::Lane)
            } else {
                set.next().map(ReadyEntry::Set)
            };
            if let Some(e) = e.filter(|e| pred(e.value())) {
                return Some(e);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::TaskId;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    fn item(priority: i32, ready_at: u64, id: u64) -> ReadyItem {
        ReadyItem {
            priority,
            ready_at,
            id: TaskId(id),
            name: Arc::from("h"),
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert(i32, u64),
        TakeFront,
        TakeFirstOdd,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0..3i32, 0..50u64).prop_map(|(p, t)| Op::Insert(p, t)),
            3 => Just(Op::TakeFront),
            1 => Just(Op::TakeFirstOdd),
        ]
    }

    proptest! {
        /// The set behaves as a sorted set of its entries, whichever part
        /// holds them: the front is always the least key, and taking it
        /// removes exactly it.
        #[test]
        fn ready_set_matches_a_sorted_model(ops in proptest::collection::vec(op(), 1..400)) {
            let set = ReadySet::new();
            let mut model = BTreeSet::new();
            for (n, op) in ops.into_iter().enumerate() {
                match op {
                    Op::Insert(p, t) => {
                        let it = item(p, t, n as u64);
                        model.insert((std::cmp::Reverse(p), t, n as u64));
                        set.insert(it);
                    }
                    Op::TakeFront => {
                        let front = set.front().map(|e| {
                            let v = e.value();
                            let k = (std::cmp::Reverse(v.priority), v.ready_at, v.id.0);
                            prop_assert!(e.remove());
                            Ok(k)
                        }).transpose()?;
                        prop_assert_eq!(front, model.pop_first());
                    }
                    Op::TakeFirstOdd => {
                        let got = set.first_of(usize::MAX, |v| v.id.0 % 2 == 1).map(|e| {
                            prop_assert!(e.remove());
                            Ok(e.value().id.0)
                        }).transpose()?;
                        let want = model.iter().find(|k| k.2 % 2 == 1).copied();
                        if let Some(k) = want {
                            model.remove(&k);
                        }
                        prop_assert_eq!(got, want.map(|k| k.2));
                    }
                }
                prop_assert_eq!(set.is_empty(), model.is_empty());
            }
        }
    }

    /// Several producers and consumers at once: every entry is taken
    /// exactly once, and one consumer alone sees its producer's entries in
    /// order.
    #[test]
    fn concurrent_takes_take_each_entry_once() {
        const PER: u64 = 20_000;
        let set = Arc::new(ReadySet::new());
        let taken: Arc<Vec<AtomicUsize>> =
            Arc::new((0..PER * 2).map(|_| AtomicUsize::new(0)).collect());
        let done = Arc::new(AtomicUsize::new(0));
        std::thread::scope(|s| {
            for p in 0..2u64 {
                let set = set.clone();
                s.spawn(move || {
                    for i in 0..PER {
                        set.insert(item(0, i, p * PER + i));
                    }
                });
            }
            for _ in 0..2 {
                let (set, taken, done) = (set.clone(), taken.clone(), done.clone());
                s.spawn(move || {
                    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
                    while done.load(Ordering::SeqCst) < (PER * 2) as usize
                        && std::time::Instant::now() < deadline
                    {
                        if let Some(e) = set.front() {
                            if e.remove() {
                                taken[e.value().id.0 as usize].fetch_add(1, Ordering::SeqCst);
                                done.fetch_add(1, Ordering::SeqCst);
                            }
                        } else {
                            std::thread::yield_now();
                        }
                    }
                });
            }
        });
        assert!(set.is_empty());
        for (id, n) in taken.iter().enumerate() {
            assert_eq!(n.load(Ordering::SeqCst), 1, "entry {id} taken {n:?} times");
        }
    }

    /// A long lane is freed without deep recursion: dropped on a thread with
    /// a small stack, 20,000 blocks would overflow it if each dropped the next.
    #[test]
    fn a_long_lane_drops_on_a_small_stack() {
        let set = ReadySet::new();
        for i in 0..(BLOCK as u64 * 20_000) {
            set.insert(item(0, 0, i));
        }
        assert!(set.set.is_empty());
        std::thread::Builder::new()
            .stack_size(64 * 1024)
            .spawn(move || drop(set))
            .expect("spawn")
            .join()
            .expect("the lane dropped without overflowing the stack");
    }

    /// Entries appended in order stay in the lane, across blocks, and come
    /// out in order; one behind the last goes to the skip list.
    #[test]
    fn in_order_entries_use_the_lane() {
        let set = ReadySet::new();
        for i in 0..(BLOCK as u64 * 3 + 5) {
            set.insert(item(0, 10, i + 100));
        }
        assert!(set.set.is_empty());
        set.insert(item(0, 10, 1));
        assert_eq!(set.set.len(), 1);
        let mut out = Vec::new();
        while let Some(e) = set.front() {
            assert!(e.remove());
            out.push(e.value().id.0);
        }
        let mut want = vec![1];
        want.extend((0..(BLOCK as u64 * 3 + 5)).map(|i| i + 100));
        assert_eq!(out, want);
        // Drained, the lane takes any entry again.
        set.insert(item(0, 0, 0));
        assert!(set.set.is_empty());
    }
}
