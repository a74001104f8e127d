//! Everything non-deterministic: threads, time, handlers.
//!
//! `Core` ties together the sharded store (engine + log), the handler registry,
//! the dispatcher (ready queues and idle workers), the timer and the worker threads.
//! The public facade in `api` is a thin layer over it.

pub mod clock;
pub mod context;
pub(crate) mod dispatch;
pub mod error;
pub(crate) mod idle;
mod ready;
mod recover;
pub mod registry;
pub(crate) mod store;
mod submit;
pub(crate) mod timer;
mod worker;

use crate::codec::{Record, TaskId, UnixMs};
use crate::engine::schedule::{CatchUp, CronSchedule, RetryStrategy, TimeZone};
use crate::engine::{Applied, Shard, TransitionError};
use crate::log::Lsn;
use clock::Clock;
use dispatch::{Dispatcher, ReadyItem};
use error::{Error, Result};
use parking_lot::{Condvar, Mutex};
use registry::Registry;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use store::Store;
use timer::Timer;

pub use recover::RecoveryStats;
pub use submit::SubmitOptions;
pub(crate) use worker::worker_main;

/// Manager-wide defaults (SPEC §13).
#[derive(Debug, Clone)]
pub(crate) struct Defaults {
    pub(crate) max_retries: u32,
    pub(crate) retry_interval_ms: u64,
    pub(crate) timeout_ms: u64,
    pub(crate) priority: i32,
}

/// A pool as configured.
#[derive(Debug, Clone)]
pub(crate) struct PoolConfig {
    pub(crate) name: String,
    pub(crate) tags: Vec<String>,
    pub(crate) concurrency: usize,
    pub(crate) retry: Option<RetryStrategy>,
    pub(crate) max_attempts: Option<u32>,
}

/// Everything fixed when the manager is built.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) defaults: Defaults,
    pub(crate) max_concurrent: usize,
    pub(crate) pools: Vec<PoolConfig>,
    pub(crate) quarantine_after: u32,
    pub(crate) time_zone: TimeZone,
    pub(crate) catch_up: CatchUp,
    pub(crate) compact_after_bytes: u64,
}

/// A worker holds no slot.
const FREE: u8 = 0;
/// A worker holds a slot for the task it runs.
const BUSY: u8 = 1;
/// A worker was handed a slot and a task by another (see `Core::hand_off`).
const HANDED: u8 = 2;
/// With a binding cap, a worker holds a slot while it looks for a task.
const LOOKING: u8 = 3;
/// A worker left its loop (the manager stops): nothing is handed to it.
const GONE: u8 = 4;

/// A slot and the queue entry it was taken for, handed to another worker:
/// one whose pool serves the entry's queue, when the worker that took the
/// slot cannot run the entry itself.
pub(crate) struct Handoff {
    pub(crate) queue: Arc<dispatch::Queue>,
    pub(crate) place: dispatch::Place,
    /// Holding one of the handler's slots for the entry.
    pub(crate) reg: Arc<registry::Registered>,
    /// The count of pauses when the entry was taken (see `Core::try_take`).
    pub(crate) pauses: u64,
}

/// The global concurrency limit, and which workers hold a slot of it.
pub(crate) struct GlobalSlots {
    /// Slots held, counted only when the cap can bind (`binding`).
    running: AtomicUsize,
    cap: usize,
    /// The cap is below the number of workers. Otherwise a worker, which runs
    /// one attempt at a time, always finds a slot, and no counter is shared:
    /// one that every worker changes twice per task would move its cache line
    /// between their cores each time.
    binding: bool,
    /// Whether worker `w` holds a slot (`FREE`, `BUSY`, `HANDED`), each on
    /// its own cache line.
    state: Box<[crossbeam::utils::CachePadded<AtomicU8>]>,
    /// What worker `w` was handed; filled under its lock with `state`
    /// moving from `FREE` to `HANDED`, so a worker that sees `HANDED`
    /// finds it there once it has the lock.
    mail: Box<[Mutex<Option<Handoff>>]>,
}

impl GlobalSlots {
    fn new(cap: usize, workers: usize) -> GlobalSlots {
        GlobalSlots {
            running: AtomicUsize::new(0),
            cap,
            binding: cap < workers,
            state: (0..workers)
                .map(|_| crossbeam::utils::CachePadded::new(AtomicU8::new(FREE)))
                .collect(),
            mail: (0..workers).map(|_| Mutex::new(None)).collect(),
        }
    }

    /// Whether the cap is below the number of workers.
    pub(crate) fn binding(&self) -> bool {
        self.binding
    }

    /// Counts one more slot held; false if the limit is reached.
    fn reserve(&self) -> bool {
        !self.binding
            || self
                .running
                .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
                    (n < self.cap).then_some(n + 1)
                })
                .is_ok()
    }

    /// Counts one slot fewer; true if the limit was reached before.
    fn unreserve(&self) -> bool {
        self.binding && self.running.fetch_sub(1, Ordering::AcqRel) >= self.cap
    }

    fn state(&self, w: usize) -> u8 {
        self.state
            .get(w)
            .map_or(FREE, |s| s.load(Ordering::Acquire))
    }

    /// Moves worker `w` from `from` to `to`; false if it is elsewhere.
    fn swap(&self, w: usize, from: u8, to: u8) -> bool {
        self.state.get(w).is_none_or(|s| {
            s.compare_exchange(from, to, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        })
    }

    /// A binding cap: worker `w` takes a slot to look for a task with.
    /// `Err(false)` if the limit is reached; `Err(hit)` too if it was handed
    /// one meanwhile (`hit`: uncounting the slot it took freed one at the
    /// limit, so the caller wakes the pools).
    fn start_look(&self, w: usize) -> std::result::Result<(), bool> {
        if !self.reserve() {
            return Err(false);
        }
        if self.swap(w, FREE, LOOKING) {
            Ok(())
        } else {
            Err(self.unreserve())
        }
    }

    /// The look of worker `w` found a task to run: its slot is the task's.
    /// False if it was handed one meanwhile: the caller puts back the entry
    /// it found, *then* uncounts the slot it looked with (`unreserve`), so
    /// that no worker takes that slot while the entry is out of its queue.
    fn end_look_with_task(&self, w: usize) -> bool {
        self.swap(w, LOOKING, BUSY)
    }

    /// The look of worker `w` found nothing: its slot is uncounted; true if
    /// that freed one at the limit. (Handed one meanwhile, it keeps that.)
    fn end_look_empty(&self, w: usize) -> bool {
        self.swap(w, LOOKING, FREE);
        self.unreserve()
    }

    /// No binding cap: worker `w` marks the slot of the task it took.
    /// False if it was handed one meanwhile.
    fn try_acquire(&self, w: usize) -> bool {
        self.swap(w, FREE, BUSY)
    }

    pub(crate) fn is_full(&self) -> bool {
        self.binding && self.running.load(Ordering::Relaxed) >= self.cap
    }

    /// The global cap (`max_concurrent_tasks`).
    pub(crate) fn cap(&self) -> usize {
        self.cap
    }

    /// Worker `w` returns its slot; true if the limit was reached before.
    fn release(&self, w: usize) -> bool {
        if let Some(s) = self.state.get(w) {
            s.store(FREE, Ordering::Release);
        }
        self.unreserve()
    }

    /// Worker `w` gives up the slot it looks with, still counted, to hand it
    /// on. (Handed one meanwhile, it keeps that one.)
    fn disown(&self, w: usize) {
        self.swap(w, LOOKING, FREE);
    }

    /// Whether worker `w` runs no task, so it can be handed one.
    pub(crate) fn can_receive(&self, w: usize) -> bool {
        matches!(self.state(w), FREE | LOOKING)
    }

    /// Whether worker `w` was handed a slot it has not taken yet.
    pub(crate) fn handed(&self, w: usize) -> bool {
        self.state(w) == HANDED
    }

    /// Hands worker `w` a slot (counted already) and an entry; gives the
    /// handoff back if `w` runs a task or was handed one by now. A worker
    /// handed one while it looks uncounts the slot it looks with.
    fn hand(&self, w: usize, h: Handoff) -> std::result::Result<(), Handoff> {
        let Some(mail) = self.mail.get(w) else {
            return Err(h);
        };
        let mut mail = mail.lock();
        let from = self.state(w);
        if !matches!(from, FREE | LOOKING) || !self.swap(w, from, HANDED) {
            return Err(h);
        }
        *mail = Some(h);
        Ok(())
    }

    /// What worker `w` was handed; its slot is then the worker's own.
    fn take_handed(&self, w: usize) -> Option<Handoff> {
        if !self.handed(w) {
            return None;
        }
        let h = self.mail.get(w)?.lock().take();
        if let Some(s) = self.state.get(w) {
            s.store(BUSY, Ordering::Release);
        }
        h
    }

    /// Worker `w` leaves its loop: from now on nothing is handed to it.
    /// Returns what it was handed and did not take, if anything.
    fn retire(&self, w: usize) -> Option<Handoff> {
        loop {
            match self.state(w) {
                HANDED => return self.take_handed(w),
                GONE => return None,
                now => {
                    if self.swap(w, now, GONE) {
                        return None;
                    }
                }
            }
        }
    }

    /// Slots held for tasks now (not those a looking worker holds).
    pub(crate) fn running(&self) -> usize {
        self.state
            .iter()
            .filter(|s| matches!(s.load(Ordering::Acquire), BUSY | HANDED))
            .count()
    }
}

/// Wakes `wait` callers when a task reaches a terminal status.
#[derive(Default)]
pub(crate) struct Waiters {
    /// Callers in `wait`; 0 makes `notify` one load.
    count: AtomicUsize,
    /// The tasks they wait for, with how many callers wait for each: a task
    /// that finishes wakes the waiters only if one of them waits for it, so a
    /// caller waiting for a workflow's root is not woken (and does not take
    /// the workflow's shard lock to look) once per child that finishes.
    ids: Mutex<crate::engine::IdMap<usize>>,
    pub(crate) epoch: Mutex<u64>,
    pub(crate) cv: Condvar,
}

impl Waiters {
    /// Task `id` reached a status `wait` returns at, or was deleted (called
    /// under its shard lock, after the change: a waiter registers before it
    /// reads the status under the same lock, so it either sees the change or
    /// is woken).
    fn notify(&self, id: TaskId) {
        if self.count.load(Ordering::Acquire) == 0 || !self.ids.lock().contains_key(&id) {
            return;
        }
        *self.epoch.lock() += 1;
        self.cv.notify_all();
    }

    /// Wakes every caller in `wait`: the manager stopped, so no task they
    /// wait for moves again.
    pub(crate) fn wake_all(&self) {
        *self.epoch.lock() += 1;
        self.cv.notify_all();
    }

    /// A caller starts waiting for `id`.
    pub(crate) fn enter(&self, id: TaskId) {
        self.count.fetch_add(1, Ordering::AcqRel);
        *self.ids.lock().entry(id).or_default() += 1;
    }

    /// Whether a caller waits for `id` now.
    #[cfg(test)]
    pub(crate) fn waits_for(&self, id: TaskId) -> bool {
        self.ids.lock().contains_key(&id)
    }

    /// A caller stops waiting for `id`.
    pub(crate) fn leave(&self, id: TaskId) {
        let mut ids = self.ids.lock();
        if let Some(n) = ids.get_mut(&id) {
            *n -= 1;
            if *n == 0 {
                ids.remove(&id);
            }
        }
        drop(ids);
        self.count.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Worker identity.
pub(crate) struct WorkerInfo {
    pub(crate) pool: usize,
    pub(crate) name: std::sync::Arc<str>,
}

/// The shared core of a manager.
pub(crate) struct Core {
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) config: Config,
    pub(crate) registry: Registry,
    pub(crate) store: Store,
    pub(crate) dispatch: Dispatcher,
    pub(crate) timer: Timer,
    pub(crate) global: GlobalSlots,
    pub(crate) waiters: Waiters,
    pub(crate) workers: Vec<WorkerInfo>,
    pub(crate) paused: AtomicBool,
    /// Counts `pause()` calls: a worker that took an entry before a pause
    /// must not claim it after the `resume` that follows (see `try_take`).
    pub(crate) pauses: std::sync::atomic::AtomicU64,
    pub(crate) stopping: AtomicBool,
    /// Held shared by each public call that records something
    /// ([`Core::enter_call`]); `stop` takes it exclusively once, after setting
    /// `stopping`, so that no call is half recorded when the store closes
    /// (SPEC §13: a rejected call changes nothing).
    calls: parking_lot::RwLock<()>,
    pub(crate) started: AtomicBool,
    crons: Mutex<HashMap<String, Arc<CronSchedule>>>,
    /// Drives async handlers; `None` only while the core is being dropped.
    tokio: Option<tokio::runtime::Runtime>,
    /// Workers still running their loop.
    pub(crate) live: (Mutex<usize>, Condvar),
}

impl Core {
    pub(crate) fn new(
        clock: Arc<dyn Clock>,
        config: Config,
        store: Store,
        unparkers: Vec<crate::sync::Unparker>,
        workers: Vec<WorkerInfo>,
    ) -> Result<Core> {
        let pools = config
            .pools
            .iter()
            .map(|p| dispatch::PoolState::new(p.tags.clone()))
            .collect();
        let tokio = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("fibflow-async")
            // Every driver the application's tokio features compile in: an
            // async handler doing network I/O (tokio's `net`, reqwest) needs
            // the I/O driver, not only timers.
            .enable_all()
            .build()
            .map_err(|source| Error::Io {
                context: "cannot start the tokio runtime for async handlers",
                source,
            })?;
        Ok(Core {
            global: GlobalSlots::new(config.max_concurrent, workers.len()),
            timer: Timer::new(workers.len()),
            dispatch: Dispatcher::new(pools, unparkers),
            clock,
            config,
            registry: Registry::default(),
            store,
            waiters: Waiters::default(),
            workers,
            paused: AtomicBool::new(false),
            pauses: std::sync::atomic::AtomicU64::new(0),
            stopping: AtomicBool::new(false),
            calls: parking_lot::RwLock::new(()),
            started: AtomicBool::new(false),
            crons: Mutex::new(HashMap::new()),
            tokio: Some(tokio),
            live: (Mutex::new(0), Condvar::new()),
        })
    }

    /// Runs an async handler's future to completion on the calling worker thread.
    pub(crate) fn block_on<F: std::future::Future>(&self, fut: F) -> Option<F::Output> {
        self.tokio.as_ref().map(|rt| rt.block_on(fut))
    }

    /// Runs `f` inside the async handlers' runtime, so that an async
    /// handler's synchronous part (before it returns its future) may use
    /// tokio: `tokio::spawn`, `tokio::time::sleep`, `timeout`.
    pub(crate) fn in_runtime<T>(&self, f: impl FnOnce() -> T) -> T {
        let _entered = self.tokio.as_ref().map(tokio::runtime::Runtime::enter);
        f()
    }

    pub(crate) fn now(&self) -> UnixMs {
        self.clock.now_ms()
    }

    /// A parsed cron schedule, cached by expression.
    pub(crate) fn cron(&self, expr: &str) -> Result<Arc<CronSchedule>> {
        if let Some(s) = self.crons.lock().get(expr) {
            return Ok(s.clone());
        }
        let s = Arc::new(CronSchedule::parse(expr, self.config.time_zone)?);
        self.crons.lock().insert(expr.to_owned(), s.clone());
        Ok(s)
    }

    /// Publishes the effects of an applied record, on the still-locked shard.
    /// A child's final outcome is delivered to its parent here, under the same
    /// lock (a workflow lives in one shard), as its own record after the child's.
    pub(crate) fn settle(
        &self,
        shard: &mut Shard,
        id: TaskId,
        applied: Applied,
        lsn: &mut Option<Lsn>,
    ) {
        if let Some(at) = applied.ready_at {
            self.make_ready(shard, id, at);
        }
        if let Some(at) = applied.retry_at {
            self.retry_when_due(shard, id, at, lsn);
        }
        if applied.terminal {
            self.waiters.notify(id);
        }
        if let Some(n) = applied.notify_parent {
            let record = Record::ChildDone {
                parent: n.parent,
                child: n.child,
                outcome: n.outcome,
                fail_parent: n.fail_parent,
                at_ms: self.now(),
            };
            match self.store.commit(shard, record) {
                Ok((a, l)) => {
                    *lsn = l.or(*lsn);
                    self.settle(shard, n.parent, a, lsn);
                }
                // The parent no longer waits (cancelled, resumed by hand, deleted).
                Err(Error::Transition(_)) => {}
                Err(_) => {} // the log is poisoned; every later write reports it
            }
        }
    }

    /// Queues a pending task now, or hands it to the timer until `at`.
    pub(crate) fn make_ready(&self, shard: &Shard, id: TaskId, at: UnixMs) {
        let Some(e) = shard.live(id) else {
            if at > self.now() {
                self.timer.schedule(at, id);
            }
            return;
        };
        // Due no later than its creation (a plain submission: both are the
        // one reading taken when it was submitted) needs no clock reading.
        // A system clock set back since is caught by the claim, which reads
        // the clock again and gives a task not yet due to the timer.
        if at > e.task.created_at && at > self.now() {
            self.timer.schedule(at, id);
            return;
        }
        let name = e.task.name.clone();
        let item = ReadyItem {
            priority: e.task.priority,
            ready_at: e.task.next_run_time,
            id,
            name,
        };
        self.dispatch.push(item, &e.task.requires);
    }

    /// Timer entries that fell due together (a timer round, or what came due
    /// before `start`): workers wake once all are queued, so the first claim
    /// already chooses among them by priority, and they are queued best
    /// first, so a worker already looking for work does not take a worse one
    /// before the best is in its queue.
    pub(crate) fn queue_due(&self, due: Vec<(UnixMs, TaskId)>) {
        let _wakes = self.dispatch.defer_wakes();
        let _order = self.dispatch.order_pushes();
        for (at, id) in due {
            self.due_task(at, id);
        }
    }

    /// A timer entry fired: queue the task if it is still pending and due.
    pub(crate) fn due_task(&self, at: UnixMs, id: TaskId) {
        use crate::engine::TaskStatus as S;
        let _wakes = self.dispatch.defer_wakes();
        let mut shard = self.store.lock(id);
        let Some(e) = shard.live(id) else { return };
        if e.task.next_run_time > at {
            return; // a stale entry: the task was rescheduled since
        }
        match e.task.status {
            S::Pending => self.make_ready(&shard, id, at),
            S::Failed | S::Timeout => {
                let mut lsn = None;
                self.retry_when_due(&mut shard, id, at, &mut lsn);
            }
            _ => {}
        }
    }

    /// A failed or timed-out task's retry: now if due (a `Retry` record, in the
    /// same lock hold as the failure when the interval is zero), else on the timer.
    pub(crate) fn retry_when_due(
        &self,
        shard: &mut Shard,
        id: TaskId,
        at: UnixMs,
        lsn: &mut Option<Lsn>,
    ) {
        let now = self.now();
        if at > now {
            self.timer.schedule(at, id);
            return;
        }
        if let Ok((applied, l)) = self.store.commit(shard, Record::Retry { id, at_ms: now }) {
            *lsn = l.or(*lsn);
            self.settle(shard, id, applied, lsn);
        }
    }

    /// Applies a record written by a running handler (progress, audit).
    pub(crate) fn handler_write(&self, record: Record) -> std::result::Result<(), TransitionError> {
        let id = record.task_id();
        let lsn = {
            let _wakes = self.dispatch.defer_wakes();
            let mut shard = self.store.lock(id);
            match self.store.commit(&mut shard, record) {
                Ok((_, lsn)) => lsn,
                Err(Error::Transition(e)) => return Err(e),
                Err(e) => return Err(TransitionError::Invalid(e.to_string())),
            }
        };
        self.store
            .wait(lsn)
            .map_err(|e| TransitionError::Invalid(e.to_string()))
    }

    /// Commits a control record (pause, resume, cancel, delete) and waits for durability.
    pub(crate) fn control(&self, record: Record) -> Result<()> {
        let id = record.task_id();
        let mut lsn = None;
        let pause = matches!(record, Record::Pause { .. });
        let mut paused_attempt = None;
        let deleted = {
            let _wakes = self.dispatch.defer_wakes();
            let mut shard = self.store.lock(id);
            if shard.status(id).is_none() {
                return Err(Error::NotFound(id));
            }
            if pause {
                paused_attempt = shard
                    .live(id)
                    .filter(|e| e.task.status == crate::engine::TaskStatus::Running)
                    .map(|e| e.task.attempt);
            }
            let (mut applied, l) = self.store.commit(&mut shard, record)?;
            lsn = l.or(lsn);
            let deleted = applied.deleted.take();
            self.settle(&mut shard, id, applied, &mut lsn);
            if deleted.is_some() {
                // It will never reach a terminal status: its waiters return
                // now (`wait` reports it as not found).
                self.waiters.notify(id);
            }
            deleted
        };
        if let Some(attempt) = paused_attempt {
            self.free_slot_of(id, attempt);
        }
        // Lock order is dedup -> shard (submit), so the key is freed after the shard is released.
        if let Some(key) = deleted.and_then(|t| t.dedup_key) {
            let mut d = self.store.dedup.lock();
            if d.get(&key) == Some(&id) {
                d.remove(&key);
            }
        }
        self.store.wait(lsn)
    }

    /// SPEC §3: a running task that was paused frees its handler slot now,
    /// though its handler runs on (its late result is discarded); the worker
    /// then does not free it again when the handler returns.
    fn free_slot_of(&self, id: TaskId, attempt: u32) {
        let running = self.timer.slots.iter().find_map(|slot| {
            slot.lock()
                .as_ref()
                .filter(|c| c.ctl.id == id && c.ctl.attempt == attempt)
                .cloned()
        });
        if let Some(inner) = running {
            if inner.ctl.take_slot() {
                self.give_back(&inner.reg, None);
            }
        }
    }

    /// Enters a public call that records something: refused once the
    /// manager stops, and otherwise recorded whole before the store closes
    /// (`stop` waits for the guard). Not to be taken twice on one thread.
    pub(crate) fn enter_call(&self) -> Result<parking_lot::RwLockReadGuard<'_, ()>> {
        let guard = self.calls.read();
        if self.stopping.load(Ordering::Acquire) {
            return Err(Error::Stopped);
        }
        Ok(guard)
    }

    /// `stop`: after `stopping` is set, waits for the calls already in.
    pub(crate) fn drain_calls(&self) {
        drop(self.calls.write());
    }

    /// Whether workers may claim now.
    pub(crate) fn gate_open(&self) -> bool {
        !self.paused.load(Ordering::Acquire) && !self.stopping.load(Ordering::Acquire)
    }

    /// `stop`: records the attempts still running as interrupted; returns their tasks.
    pub(crate) fn interrupt_running(&self) -> Vec<TaskId> {
        // A claim checks `stopping` and publishes its attempt under its
        // shard's lock: once every lock has been taken since `stopping` was
        // set, every claimed attempt is in a slot.
        for i in 0..store::SHARDS {
            drop(self.store.lock_index(i));
        }
        let ctls: Vec<_> = self
            .timer
            .slots
            .iter()
            .filter_map(|s| s.lock().clone())
            .collect();
        let mut out = Vec::new();
        for inner in ctls {
            let ctl = &inner.ctl;
            let _wakes = self.dispatch.defer_wakes();
            let mut shard = self.store.lock(ctl.id);
            let owns = shard.live(ctl.id).is_some_and(|e| {
                e.task.status == crate::engine::TaskStatus::Running && e.task.attempt == ctl.attempt
            });
            let message = "interrupted: the manager stopped before the attempt finished";
            if owns
                && self
                    .interrupt(&mut shard, ctl.id, message, &mut None)
                    .is_ok()
            {
                out.push(ctl.id);
            }
            ctl.cancel(3);
        }
        out
    }

    /// Closes a running task's attempt as `interrupted` and returns it to pending
    /// (or quarantines it): after a crash, or at a stop past its deadline.
    pub(crate) fn interrupt(
        &self,
        shard: &mut Shard,
        id: TaskId,
        message: &str,
        lsn: &mut Option<Lsn>,
    ) -> Result<()> {
        let record = Record::Recover {
            id,
            quarantine_after: self.config.quarantine_after,
            message: message.to_owned(),
            at_ms: self.now(),
        };
        let (applied, l) = self.store.commit(shard, record)?;
        *lsn = l.or(*lsn);
        self.settle(shard, id, applied, lsn);
        Ok(())
    }

    /// Takes a snapshot when the log has grown past the configured size.
    pub(crate) fn maybe_compact(&self) {
        let Some(log) = self.store.log() else { return };
        let st = log.stats();
        // LSNs are byte positions, so their difference is the log grown since the snapshot.
        let last = st.last_lsn.map_or(0, |l| l.0);
        let base = st.snapshot_lsn.map_or(0, |l| l.0);
        if last.saturating_sub(base) >= self.config.compact_after_bytes {
            let _ = self.snapshot_now(false);
        }
    }

    /// Registers handlers and wakes workers that may now run waiting tasks.
    pub(crate) fn register(
        &self,
        items: Vec<(String, registry::Handler, registry::HandlerOptions)>,
    ) {
        // Sorted and distinct: two registrations of overlapping names lock
        // their gates in one order, and one name is not locked twice.
        let mut names: Vec<String> = items.iter().map(|(n, _, _)| n.clone()).collect();
        names.sort_unstable();
        names.dedup();
        // Under the handlers' gates, so that a worker taking a slot of one
        // (under its gate) chooses among all its tasks, the ones set aside
        // while it was not registered back in their queues, and no task is
        // on its way aside meanwhile (`pick` sets them aside under the gate).
        let slots: Vec<_> = names.iter().map(|n| self.registry.slots_of(n)).collect();
        let gates: Vec<_> = slots.iter().map(|s| s.gate.lock()).collect();
        self.registry.register(items);
        for name in &names {
            self.dispatch.release_held(name, usize::MAX);
        }
        drop(gates);
        self.dispatch.idle.wake_each_pool();
    }
}

impl Drop for Core {
    fn drop(&mut self) {
        // Dropping a tokio runtime blocks, which panics inside an async context
        // (a program that drops its manager from `async fn main`); shut it down
        // in the background instead.
        if let Some(rt) = self.tokio.take() {
            rt.shutdown_background();
        }
    }
}
