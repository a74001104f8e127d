//! Ready queues by capability requirement, and the park/wake protocol of idle workers.
//!
//! A ready task sits in the queue of its requirement set (the sorted capability tags
//! it needs), a lock-free ordered set keyed by (priority desc, ready time, id). Each
//! pool knows the queues whose requirements its tags cover; a worker scans only
//! those, so a task never reaches a worker lacking a capability it requires.
//!
//! Idle workers park and are woken by whoever makes work ready for them: the
//! protocol is in `runtime::idle`.

use super::idle::Idle;
use super::ready::{ReadyEntry, ReadySet};
use crate::codec::TaskId;
use crate::sync::Unparker;
use arc_swap::ArcSwap;
use parking_lot::{Mutex, RwLock};
use std::cell::{Cell, RefCell};
use std::cmp::Ordering as CmpOrdering;
use std::collections::HashMap;
use std::sync::atomic::{fence, AtomicUsize, Ordering};
use std::sync::Arc;

/// The order of queued tasks: priority (higher first), ready time, then id.
pub(crate) type ReadyKey = (std::cmp::Reverse<i32>, u64, TaskId);

/// A queued task: ordered by priority (higher first), ready time, then id.
#[derive(Debug, Clone)]
pub(crate) struct ReadyItem {
    pub(crate) priority: i32,
    pub(crate) ready_at: u64,
    pub(crate) id: TaskId,
    pub(crate) name: Arc<str>,
}

impl ReadyItem {
    /// What entries are ordered by.
    pub(crate) fn key(&self) -> ReadyKey {
        (std::cmp::Reverse(self.priority), self.ready_at, self.id)
    }

    /// The entry without its handler name: what a worker keeps of an entry
    /// it took, so that taking one does not write the name's reference
    /// count, a line every submitter of the handler writes too.
    pub(crate) fn place(&self) -> Place {
        Place {
            priority: self.priority,
            ready_at: self.ready_at,
            id: self.id,
        }
    }
}

/// A queue entry taken out, less its handler name (see [`ReadyItem::place`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Place {
    pub(crate) priority: i32,
    pub(crate) ready_at: u64,
    pub(crate) id: TaskId,
}

impl Place {
    /// The entry again, to put back in a queue.
    pub(crate) fn item(self, name: Arc<str>) -> ReadyItem {
        ReadyItem {
            priority: self.priority,
            ready_at: self.ready_at,
            id: self.id,
            name,
        }
    }
}

impl PartialEq for ReadyItem {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}
impl Eq for ReadyItem {}
impl PartialOrd for ReadyItem {
    fn partial_cmp(&self, other: &Self) -> Option<CmpOrdering> {
        Some(self.cmp(other))
    }
}
impl Ord for ReadyItem {
    fn cmp(&self, other: &Self) -> CmpOrdering {
        self.key().cmp(&other.key())
    }
}

/// The queue of one requirement set.
#[derive(Debug)]
pub(crate) struct Queue {
    pub(crate) set: ReadySet,
    /// Pools whose tags include every requirement.
    pub(crate) servers: Vec<usize>,
    /// Entries taken out of `set` because their handler was at its cap or not
    /// registered (SPEC §3: such a type is skipped while others run), by handler
    /// name, best first. Without this, a backlog of one blocked type longer than a
    /// worker's scan would hide every task queued behind it. An entry returns to
    /// `set` when a slot of its handler frees (one per freed slot) or the handler
    /// is registered (all). See [`Queue::hold`] for why none is left behind.
    held: Mutex<HashMap<Arc<str>, std::collections::BTreeSet<ReadyItem>>>,
}

impl Queue {
    fn new(servers: Vec<usize>) -> Queue {
        Queue {
            set: ReadySet::new(),
            servers,
            held: Mutex::new(HashMap::new()),
        }
    }

    /// The best held entry of handler `name`, if any.
    fn first_held(&self, name: &str) -> Option<ReadyItem> {
        self.held.lock().get(name).and_then(|s| s.first().cloned())
    }

    /// Takes every held entry of handler `name`, best first.
    fn take_held(&self, name: &str) -> std::collections::BTreeSet<ReadyItem> {
        self.held.lock().remove(name).unwrap_or_default()
    }

    /// Returns up to `n` held entries of handler `name` to the set, best first;
    /// returns how many.
    fn release_held(&self, name: &str, n: usize) -> usize {
        let mut held = self.held.lock();
        let Some(items) = held.get_mut(name) else {
            return 0;
        };
        let mut moved = 0;
        while moved < n {
            let Some(item) = items.pop_first() else { break };
            self.set.insert(item);
            moved += 1;
        }
        if items.is_empty() {
            held.remove(name);
        }
        moved
    }
}

/// The queues a pool's workers look at.
#[derive(Clone, Default)]
pub(crate) struct QueueLists {
    /// The queues whose requirements the pool's tags cover.
    pub(crate) served: Vec<Arc<Queue>>,
    /// The queues it does not serve. A worker of it still looks at them
    /// when a cap can bind, to hand a slot it took to a worker of a pool
    /// that serves a better task there (see `Core::hand_off`).
    pub(crate) others: Vec<Arc<Queue>>,
}

/// A pool's scheduling state.
pub(crate) struct PoolState {
    pub(crate) tags: Vec<String>,
    /// The queues it serves, and the others (one load for both).
    pub(crate) queues: ArcSwap<QueueLists>,
}

impl PoolState {
    pub(crate) fn new(mut tags: Vec<String>) -> PoolState {
        tags.sort();
        tags.dedup();
        PoolState {
            tags,
            queues: ArcSwap::from_pointee(QueueLists::default()),
        }
    }

    fn serves(&self, requires: &[String]) -> bool {
        requires.iter().all(|r| self.tags.binary_search(r).is_ok())
    }
}

/// Ready queues plus the idle workers of every pool.
pub(crate) struct Dispatcher {
    queues: RwLock<HashMap<Vec<String>, Arc<Queue>>>,
    default_queue: Arc<Queue>,
    pub(crate) pools: Vec<Arc<PoolState>>,
    /// The idle workers of each pool (same indices as `pools`).
    pub(crate) idle: Idle,
    /// Entries held in all queues (see [`Queue::held`]).
    held_total: AtomicUsize,
}

impl Dispatcher {
    /// `unparkers[w]` wakes worker `w`; pools are fixed for the dispatcher's life.
    pub(crate) fn new(pools: Vec<PoolState>, unparkers: Vec<Unparker>) -> Dispatcher {
        let pools: Vec<Arc<PoolState>> = pools.into_iter().map(Arc::new).collect();
        let servers = (0..pools.len()).collect();
        let default_queue = Arc::new(Queue::new(servers));
        for p in &pools {
            p.queues.store(Arc::new(QueueLists {
                served: vec![default_queue.clone()],
                others: Vec::new(),
            }));
        }
        Dispatcher {
            queues: RwLock::new(HashMap::new()),
            default_queue,
            idle: Idle::new(pools.len(), unparkers),
            pools,
            held_total: AtomicUsize::new(0),
        }
    }

    /// The queue for a (sorted, deduplicated) requirement set, created on first use.
    pub(crate) fn queue_for(&self, requires: &[String]) -> Arc<Queue> {
        if requires.is_empty() {
            return self.default_queue.clone();
        }
        if let Some(q) = self.queues.read().get(requires) {
            return q.clone();
        }
        let mut map = self.queues.write();
        if let Some(q) = map.get(requires) {
            return q.clone();
        }
        let servers: Vec<usize> = (0..self.pools.len())
            .filter(|&i| self.pools[i].serves(requires))
            .collect();
        let q = Arc::new(Queue::new(servers.clone()));
        for (i, pool) in self.pools.iter().enumerate() {
            let mut lists = (**pool.queues.load()).clone();
            if servers.contains(&i) {
                lists.served.push(q.clone());
            } else {
                lists.others.push(q.clone());
            }
            pool.queues.store(Arc::new(lists));
        }
        map.insert(requires.to_vec(), q.clone());
        q
    }

    /// Whether some pool can run tasks with these requirements.
    pub(crate) fn has_server(&self, requires: &[String]) -> bool {
        self.pools.iter().any(|p| p.serves(requires))
    }

    /// Queues a ready task and wakes one idle worker that can run it.
    pub(crate) fn push(&self, item: ReadyItem, requires: &[String]) {
        if ORDERED.with(|o| o.depth.get()) > 0 {
            let q = self.queue_for(requires);
            ORDERED.with(|o| o.items.borrow_mut().push((q, item)));
            return;
        }
        if requires.is_empty() {
            // No clone of the default queue's Arc: producers and workers would
            // all change its one reference count.
            self.push_to(&self.default_queue, item);
        } else {
            self.push_to(&self.queue_for(requires), item);
        }
    }

    fn push_to(&self, q: &Arc<Queue>, item: ReadyItem) {
        q.set.insert(item);
        if !self.idle.wanted(&q.servers) {
            return;
        }
        if DEFER.with(|d| d.depth.get()) > 0 {
            DEFER.with(|d| d.queues.borrow_mut().push(q.clone()));
            return;
        }
        self.wake_for(q);
    }

    /// Moves `item` out of queue `q` while `blocked()` says its handler cannot
    /// take it. `blocked` is asked under the queue's held-entries lock after the
    /// held count went up; whoever frees a slot or registers a handler changes
    /// that state first and then reads the count (both sides fenced), and takes
    /// the same lock to return held entries if it is not zero. So either it
    /// sees this entry, or this check sees the change and the entry goes
    /// straight back: no entry is left held with its handler free.
    pub(crate) fn hold(&self, q: &Queue, entry: &ReadyEntry<'_>, blocked: impl FnOnce() -> bool) {
        if !entry.remove() {
            return; // another worker took or held it
        }
        let item = entry.value();
        let mut held = q.held.lock();
        self.held_total.fetch_add(1, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        if blocked() {
            held.entry(item.name.clone())
                .or_default()
                .insert(item.clone());
        } else {
            self.held_total.fetch_sub(1, Ordering::SeqCst);
            drop(held);
            q.set.insert(item.clone());
        }
    }

    /// A slot of handler `name` freed (`n` = 1), or the handler was registered
    /// (`n` = all): held entries of it go back to their queues, and workers are
    /// woken for them. Call it after the slot release or the registration.
    pub(crate) fn release_held(&self, name: &str, n: usize) {
        fence(Ordering::SeqCst);
        if self.held_total.load(Ordering::SeqCst) == 0 {
            return; // the common case: nothing held, no lock taken
        }
        let mut queues = vec![self.default_queue.clone()];
        queues.extend(self.queues.read().values().cloned());
        if n == usize::MAX {
            // All of them, best first across the queues: put back one queue
            // after another, a worse entry could be taken before a better
            // one of another queue is back.
            let mut back: Vec<(ReadyItem, &Arc<Queue>)> = Vec::new();
            for q in &queues {
                let items = q.take_held(name);
                self.held_total.fetch_sub(items.len(), Ordering::SeqCst);
                back.extend(items.into_iter().map(|item| (item, q)));
            }
            back.sort_by(|a, b| a.0.cmp(&b.0));
            let mut woken: Vec<&Arc<Queue>> = Vec::new();
            for (item, q) in back {
                q.set.insert(item);
                if !woken.iter().any(|w| Arc::ptr_eq(w, q)) {
                    woken.push(q);
                }
            }
            for q in woken {
                self.wake_for(q);
            }
            return;
        }
        // One at a time, the best held entry of any queue first: the entries
        // of one handler wait in the queues of their requirements, and a
        // freed slot goes to the best of them (SPEC §3), whichever pool runs it.
        for _ in 0..n {
            let best = queues
                .iter()
                .filter_map(|q| q.first_held(name).map(|first| (first, q)))
                .min_by(|a, b| a.0.cmp(&b.0));
            let Some((_, q)) = best else { break };
            let moved = q.release_held(name, 1);
            self.held_total.fetch_sub(moved, Ordering::SeqCst);
            if moved > 0 {
                self.wake_for(q);
            }
        }
    }

    fn wake_for(&self, q: &Queue) {
        self.idle.wake_for(&q.servers);
    }

    /// Holds the tasks queued on this thread until the guard drops, then
    /// queues them best first (priority, ready time, id). For a batch of
    /// tasks that become ready together (a timer round): queued one by one
    /// in another order, a worker already looking for work could take a
    /// worse one before a better one of the same batch is in its queue.
    pub(crate) fn order_pushes(&self) -> OrderGuard<'_> {
        ORDERED.with(|o| o.depth.set(o.depth.get() + 1));
        OrderGuard { dispatch: self }
    }

    /// Holds wake-ups made on this thread until the guard drops, so a worker is not
    /// woken while the waker still holds the shard lock the worker needs next.
    /// Declare it before taking the lock: it drops (and wakes) after the lock guard.
    pub(crate) fn defer_wakes(&self) -> DeferGuard<'_> {
        DEFER.with(|d| d.depth.set(d.depth.get() + 1));
        DeferGuard { dispatch: self }
    }

    /// A worker of pool `p` took a task: if more are queued for the pool,
    /// see [`Idle::wake_if_more`].
    pub(crate) fn wake_if_more(&self, p: usize) {
        self.idle.wake_if_more(p, || {
            self.pools[p]
                .queues
                .load()
                .served
                .iter()
                .any(|q| !q.set.is_empty())
        });
    }
}

/// Tasks held back on this thread (see [`Dispatcher::order_pushes`]).
struct Ordered {
    depth: Cell<usize>,
    items: RefCell<Vec<(Arc<Queue>, ReadyItem)>>,
}

thread_local! {
    static ORDERED: Ordered = const { Ordered { depth: Cell::new(0), items: RefCell::new(Vec::new()) } };
}

/// Queues the held-back tasks, best first, when the outermost guard drops.
pub(crate) struct OrderGuard<'a> {
    dispatch: &'a Dispatcher,
}

impl Drop for OrderGuard<'_> {
    fn drop(&mut self) {
        let mut items = ORDERED.with(|o| {
            let depth = o.depth.get() - 1;
            o.depth.set(depth);
            if depth == 0 {
                std::mem::take(&mut *o.items.borrow_mut())
            } else {
                Vec::new()
            }
        });
        items.sort_by(|a, b| a.1.cmp(&b.1));
        for (q, item) in items {
            self.dispatch.push_to(&q, item);
        }
    }
}

/// Wake-ups deferred on this thread (see [`Dispatcher::defer_wakes`]).
struct Deferred {
    depth: Cell<usize>,
    queues: RefCell<Vec<Arc<Queue>>>,
}

thread_local! {
    static DEFER: Deferred = const { Deferred { depth: Cell::new(0), queues: RefCell::new(Vec::new()) } };
}

/// Wakes the deferred workers when the outermost guard drops.
pub(crate) struct DeferGuard<'a> {
    dispatch: &'a Dispatcher,
}

impl Drop for DeferGuard<'_> {
    fn drop(&mut self) {
        let mut queues = DEFER.with(|d| {
            let depth = d.depth.get() - 1;
            d.depth.set(depth);
            if depth == 0 {
                std::mem::take(&mut *d.queues.borrow_mut())
            } else {
                Vec::new()
            }
        });
        if queues.capacity() == 0 {
            return; // nothing deferred: no thread-local vector to give back
        }
        for q in queues.drain(..) {
            self.dispatch.wake_for(&q);
        }
        // The vector goes back for the next guard, so that a stream of
        // submissions does not allocate one each (the wake-ups above ran at
        // depth 0, so they deferred nothing into the slot meanwhile).
        DEFER.with(|d| *d.queues.borrow_mut() = queues);
    }
}
