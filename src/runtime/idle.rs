//! The park/wake protocol of idle workers.
//!
//! 1. A worker that finds no work pushes itself on its pool's idle stack
//!    ([`Idle::go_idle`]), then scans the queues once more, then parks.
//! 2. Whoever makes work ready inserts it first, then asks [`Idle::wanted`]
//!    and, if so, pops one idle worker of a pool that serves the queue and
//!    unparks it ([`Idle::wake_for`]).
//!
//! Correct because: if the producer's pop misses the worker (step 1 push not yet
//! visible), the insert happened before the pop, so the worker's re-scan in step 1,
//! which follows its push, sees the task (the two `SeqCst` fences of
//! [`Idle::wanted`] and [`Idle::go_idle`] make this Dekker's pattern). A `Parker`
//! keeps an unpark that arrives before `park`, so no wake-up is lost. A worker
//! that finds work on the re-scan takes itself off the idle stack; if someone
//! already popped it, it passes the wake-up on ([`Idle::leave_idle`]) so that no
//! other idle worker is left asleep with work queued.
//!
//! A worker may also spin for a while before it goes idle
//! ([`Idle::start_searching`]); a producer that sees a searcher wakes nobody,
//! and the searcher scans once more after it stops.
//!
//! The primitives come from `crate::sync`, so that `.ci/loom` can check this
//! protocol under every interleaving (the `loom_model` tests below).

use crate::sync::{fence, AtomicBool, AtomicUsize, Mutex, Ordering, Unparker};
use crossbeam::utils::CachePadded;

/// The idle workers of every pool, and how to wake them.
pub(crate) struct Idle {
    pools: Box<[PoolIdle]>,
    /// `unparkers[w]` wakes worker `w`.
    unparkers: Vec<Unparker>,
    /// `listed[w]`: worker `w` is on its pool's idle stack (changed under
    /// that stack's lock), so that a woken worker knows without the lock
    /// whether it must take itself off.
    listed: Box<[CachePadded<AtomicBool>]>,
}

/// One pool's idle workers.
struct PoolIdle {
    stack: Mutex<Vec<usize>>,
    /// `stack.len()`, readable without the lock.
    count: AtomicUsize,
    /// Workers spinning for work: a producer need not wake anyone while one is.
    searching: AtomicUsize,
}

impl Idle {
    /// `pools` pools; `unparkers[w]` wakes worker `w`.
    pub(crate) fn new(pools: usize, unparkers: Vec<Unparker>) -> Idle {
        Idle {
            pools: (0..pools)
                .map(|_| PoolIdle {
                    stack: Mutex::new(Vec::new()),
                    count: AtomicUsize::new(0),
                    searching: AtomicUsize::new(0),
                })
                .collect(),
            listed: unparkers
                .iter()
                .map(|_| CachePadded::new(AtomicBool::new(false)))
                .collect(),
            unparkers,
        }
    }

    /// Step 2 of the protocol, after work was inserted in a queue that the
    /// pools `servers` serve: whether a worker of theirs must be woken (none
    /// is spinning, and one is idle).
    pub(crate) fn wanted(&self, servers: &[usize]) -> bool {
        // Pairs with the fences in `stop_searching` and `go_idle`: either
        // these loads see the searcher or the idle worker, or its re-scan
        // sees the work (Dekker's pattern).
        fence(Ordering::SeqCst);
        if servers
            .iter()
            .any(|&p| self.pools[p].searching.load(Ordering::SeqCst) > 0)
        {
            return false; // a spinning worker of a serving pool will find it
        }
        // Nobody to wake (every worker of a serving pool is busy, the common
        // case under load). A worker that lists itself idle after this read
        // scans the queues before it parks (see `go_idle`).
        servers
            .iter()
            .any(|&p| self.pools[p].count.load(Ordering::Acquire) > 0)
    }

    /// Wakes one idle worker of the first of `servers` that has one.
    pub(crate) fn wake_for(&self, servers: &[usize]) {
        for &p in servers {
            if self.wake_one(p) {
                return;
            }
        }
    }

    /// A worker of pool `p` starts spinning for work.
    pub(crate) fn start_searching(&self, p: usize) {
        self.pools[p].searching.fetch_add(1, Ordering::SeqCst);
    }

    /// A worker of pool `p` stops spinning; it must scan once more afterwards.
    pub(crate) fn stop_searching(&self, p: usize) {
        self.pools[p].searching.fetch_sub(1, Ordering::SeqCst);
        fence(Ordering::SeqCst);
    }

    /// Wakes worker `w`, handed a slot and a task (see `Core::hand_off`).
    /// Off its idle stack it takes itself (`woke`).
    pub(crate) fn unpark(&self, w: usize) {
        if let Some(u) = self.unparkers.get(w) {
            u.unpark();
        }
    }

    /// Wakes one idle worker of pool `p`; false if none was idle.
    pub(crate) fn wake_one(&self, p: usize) -> bool {
        let pool = &self.pools[p];
        if pool.count.load(Ordering::Acquire) == 0 {
            return false;
        }
        let w = {
            let mut idle = pool.stack.lock();
            let w = idle.pop();
            if let Some(w) = w {
                self.set_listed(w, false);
            }
            pool.count.store(idle.len(), Ordering::Release);
            w
        };
        match w {
            Some(w) => {
                self.unparkers[w].unpark();
                true
            }
            None => false,
        }
    }

    /// A worker of pool `p` took a task. If more are queued for the pool
    /// (`queued()`), a worker of it is idle and none is spinning, wake one: a
    /// producer skips its wake-up while a worker spins, and that worker takes
    /// only one task, so without this a burst of submissions could leave
    /// tasks queued behind parked workers. Each worker that starts a task
    /// passes the wake-up on this way, so the burst spreads over the idle
    /// workers.
    pub(crate) fn wake_if_more(&self, p: usize, queued: impl FnOnce() -> bool) {
        let pool = &self.pools[p];
        if pool.count.load(Ordering::Acquire) == 0 || pool.searching.load(Ordering::SeqCst) > 0 {
            return;
        }
        if queued() {
            self.wake_one(p);
        }
    }

    /// Wakes one idle worker in every pool (a slot freed, a handler registered).
    pub(crate) fn wake_each_pool(&self) {
        for p in 0..self.pools.len() {
            self.wake_one(p);
        }
    }

    /// Wakes every worker (pause/resume of the manager, stop). The idle stacks
    /// are emptied too: a worker left listed while it runs a task would take the
    /// next producer's wake-up, and another idle worker would sleep on with the
    /// task queued (seen as a task stuck "waiting for a free worker" after a
    /// resume). Each woken worker lists itself again if it finds nothing.
    pub(crate) fn wake_all(&self) {
        for pool in &self.pools {
            let mut idle = pool.stack.lock();
            for w in idle.drain(..) {
                self.set_listed(w, false);
            }
            pool.count.store(0, Ordering::Release);
        }
        for u in &self.unparkers {
            u.unpark();
        }
    }

    /// Worker `w` of pool `p` woke from park: it takes itself off the idle
    /// stack if it is still there (a spurious or manager-wide wake), so it is
    /// never listed while it runs a task. No wake-up is passed on: this worker
    /// scans the queues next.
    pub(crate) fn woke(&self, p: usize, w: usize) {
        let pool = &self.pools[p];
        // Usually the waker took it off, and its lock line stays where it
        // is: this check reads only this worker's flag.
        if !self
            .listed
            .get(w)
            .is_some_and(|l| l.load(Ordering::Acquire))
            || pool.count.load(Ordering::Acquire) == 0
        {
            return;
        }
        let mut idle = pool.stack.lock();
        if let Some(i) = idle.iter().position(|&x| x == w) {
            idle.swap_remove(i);
            self.set_listed(w, false);
            pool.count.store(idle.len(), Ordering::Release);
        }
    }

    /// Records whether worker `w` is on its idle stack (under that stack's lock).
    fn set_listed(&self, w: usize, on: bool) {
        if let Some(l) = self.listed.get(w) {
            l.store(on, Ordering::Release);
        }
    }

    /// Step 1 of the protocol: worker `w` of pool `p` declares itself idle.
    /// It must scan the queues once more before it parks.
    pub(crate) fn go_idle(&self, p: usize, w: usize) {
        let pool = &self.pools[p];
        let mut idle = pool.stack.lock();
        if !self
            .listed
            .get(w)
            .is_some_and(|l| l.load(Ordering::Acquire))
        {
            idle.push(w);
        }
        self.set_listed(w, true);
        pool.count.store(idle.len(), Ordering::Release);
        drop(idle);
        // Pairs with the fence in `wanted` (Dekker's pattern): either the
        // producer sees this worker idle, or the re-scan that follows sees
        // its entry. (The skip list's epoch pin used to give this fence by
        // the way; a look at the lane takes none.)
        fence(Ordering::SeqCst);
    }

    /// Worker `w` found work after declaring itself idle: it leaves the idle stack,
    /// and if a producer had already popped it, passes the wake-up on.
    pub(crate) fn leave_idle(&self, p: usize, w: usize) {
        let pool = &self.pools[p];
        let was_idle = {
            let mut idle = pool.stack.lock();
            let pos = idle.iter().position(|&x| x == w);
            if let Some(i) = pos {
                idle.swap_remove(i);
            }
            self.set_listed(w, false);
            pool.count.store(idle.len(), Ordering::Release);
            pos.is_some()
        };
        if !was_idle {
            self.wake_one(p);
        }
    }
}

/// Model checks of the protocol under `.ci/loom` (`RUSTFLAGS="--cfg
/// fibflow_loom"`): loom runs each model under every interleaving (up to its
/// preemption bound) and fails on a deadlock, which is what a lost wake-up
/// becomes here. The workers follow `worker_main`'s calls into [`Idle`]; the
/// ready queue is a counter (the real queues are on std atomics, which loom
/// cannot see), inserted into with the weakest ordering the protocol allows
/// (`Release`): the fences in [`Idle`] have to do the rest.
#[cfg(all(test, fibflow_loom))]
#[allow(clippy::indexing_slicing, clippy::unwrap_used)]
mod loom_model {
    use super::Idle;
    use crate::sync::{model, AtomicBool, AtomicUsize, Ordering, Parker};
    use loom::sync::Arc;

    struct Model {
        idle: Idle,
        /// Tasks queued and not yet taken.
        queued: AtomicUsize,
        taken: AtomicUsize,
        total: usize,
        /// Every task was taken: the workers may stop.
        done: AtomicBool,
    }

    impl Model {
        fn try_take(&self) -> bool {
            let mut n = self.queued.load(Ordering::Acquire);
            while n > 0 {
                match self
                    .queued
                    .compare_exchange(n, n - 1, Ordering::AcqRel, Ordering::Acquire)
                {
                    Ok(_) => return true,
                    Err(now) => n = now,
                }
            }
            false
        }

        /// `Dispatcher::push_to` for a queue served by the pools `servers`.
        fn push(&self, servers: &[usize]) {
            self.queued.fetch_add(1, Ordering::Release);
            if self.idle.wanted(servers) {
                self.idle.wake_for(servers);
            }
        }

        /// A task ran. The worker that ran the last one ends the model the
        /// way `stop` ends a manager: every worker woken, none needed for work.
        fn ran(&self) {
            if self.taken.fetch_add(1, Ordering::AcqRel) + 1 == self.total {
                self.done.store(true, Ordering::Release);
                self.idle.wake_all();
            }
        }
    }

    /// `worker_main` of worker `w` in pool `p`; `spin`: whether it spins
    /// (one look) before it goes idle, as `spin_for_work` does.
    fn worker(m: &Model, p: usize, w: usize, parker: &Parker, spin: bool) {
        while !m.done.load(Ordering::Acquire) {
            let mut found = m.try_take();
            if !found && spin {
                m.idle.start_searching(p);
                found = m.try_take();
                m.idle.stop_searching(p);
                found = found || m.try_take();
            }
            if !found {
                m.idle.go_idle(p, w);
                if m.try_take() {
                    m.idle.leave_idle(p, w);
                } else {
                    parker.park();
                    m.idle.woke(p, w);
                    continue;
                }
            }
            m.idle
                .wake_if_more(p, || m.queued.load(Ordering::Acquire) > 0);
            m.ran();
        }
    }

    /// Workers `(pool, spins)` (worker `w` is the `w`-th), `pools` pools;
    /// the model's thread submits `tasks` tasks to a queue served by `servers`.
    fn run(
        workers: &'static [(usize, bool)],
        pools: usize,
        servers: &'static [usize],
        tasks: usize,
    ) {
        model::check(move || {
            let parkers: Vec<Parker> = workers.iter().map(|_| Parker::new()).collect();
            let unparkers = parkers.iter().map(|p| p.unparker().clone()).collect();
            let m = Arc::new(Model {
                idle: Idle::new(pools, unparkers),
                queued: AtomicUsize::new(0),
                taken: AtomicUsize::new(0),
                total: tasks,
                done: AtomicBool::new(false),
            });
            let threads: Vec<_> = parkers
                .into_iter()
                .enumerate()
                .map(|(w, parker)| {
                    let m = m.clone();
                    let (p, spin) = workers[w];
                    loom::thread::spawn(move || worker(&m, p, w, &parker, spin))
                })
                .collect();
            for _ in 0..tasks {
                m.push(servers);
            }
            for t in threads {
                t.join().unwrap();
            }
            assert_eq!(m.taken.load(Ordering::Acquire), tasks);
            assert_eq!(m.queued.load(Ordering::Acquire), 0);
        });
    }

    #[test]
    fn one_pool_two_parking_workers_two_tasks() {
        run(&[(0, false), (0, false)], 1, &[0], 2);
    }

    #[test]
    fn one_pool_two_spinning_workers_two_tasks() {
        run(&[(0, true), (0, true)], 1, &[0], 2);
    }

    #[test]
    fn a_spinning_and_a_parking_worker_one_task() {
        run(&[(0, true), (0, false)], 1, &[0], 1);
    }

    #[test]
    fn two_pools_serving_one_queue() {
        run(&[(0, true), (1, false)], 2, &[0, 1], 2);
    }
}
