//! The `TaskManager` facade: registration, submission, control, queries, lifecycle.

mod audit;
mod builder;
mod query;

pub use audit::{
    AttemptFilter, EventFilter, FailedTask, RetentionPolicy, RetentionReport, StageTiming,
    TaskAudit, WorkflowAudit, WorkflowSummary, WorkflowTiming,
};
pub use builder::{Builder, Pool, Storage};
pub use query::{Page, Paged, TaskFilter};

use crate::codec::{Record, TaskId};
use crate::engine::{Task, TaskStatus};
use crate::log::{Log, LogStats, RecoveryReport};
use crate::runtime::clock::Clock;
use crate::runtime::context::TaskContext;
use crate::runtime::error::{Error, Result};
use crate::runtime::registry::{Handler, HandlerOptions, HandlerResult};
use crate::runtime::store::Store;
use crate::runtime::{worker_main, Config, Core, RecoveryStats, SubmitOptions, WorkerInfo};
use crate::sync::Parker;
use parking_lot::Mutex;
use serde_json::Value;
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Name and description of a registered handler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandlerInfo {
    /// The handler name.
    pub name: String,
    /// Its description, if registered with one.
    pub description: Option<String>,
}

/// What `stop` did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StopReport {
    /// Tasks whose handlers had not finished by the deadline; they were recorded
    /// as interrupted and are `pending` again for the next start.
    pub interrupted: Vec<TaskId>,
}

/// The embedded task engine.
///
/// ```
/// use fibflow::{TaskManager, TaskStatus};
/// use serde_json::json;
/// use std::time::Duration;
///
/// let mgr = TaskManager::builder().memory().build()?;
/// mgr.register("double", |ctx| {
///     let n = ctx.payload()["n"].as_i64().unwrap_or(0);
///     Ok(json!({ "n": n * 2 }).into())
/// })?;
/// let id = mgr.submit("double", json!({ "n": 21 }))?;
/// mgr.start()?;
/// let task = mgr.wait(id, Duration::from_secs(30))?;
/// assert_eq!(task.status, TaskStatus::Completed);
/// assert_eq!(task.result, Some(json!({ "n": 42 })));
/// mgr.stop(Duration::from_secs(5))?;
/// # Ok::<(), fibflow::Error>(())
/// ```
pub struct TaskManager {
    core: Arc<Core>,
    parkers: Mutex<Option<Vec<Parker>>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    timer_thread: Mutex<Option<JoinHandle<()>>>,
    _clock_hook: Arc<dyn Fn() + Send + Sync>,
    recovery: RecoveryStats,
    log_report: Option<RecoveryReport>,
    pub(crate) retention: Option<RetentionPolicy>,
    retention_every: Duration,
}

impl std::fmt::Debug for TaskManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskManager").finish_non_exhaustive()
    }
}

impl TaskManager {
    /// A builder with the defaults of SPEC §13. Storage is explicit: call
    /// [`Builder::dir`] or [`Builder::memory`] before [`Builder::build`], which
    /// otherwise refuses with [`Error::InvalidOption`].
    ///
    /// ```
    /// use fibflow::TaskManager;
    /// assert!(TaskManager::builder().build().is_err());
    /// assert!(TaskManager::builder().memory().build().is_ok());
    /// ```
    pub fn builder() -> Builder {
        Builder::default()
    }

    /// An in-memory manager with default settings.
    pub fn in_memory() -> Result<TaskManager> {
        Builder::default().memory().build()
    }

    /// A durable manager on `dir` with default settings (`Durability::Sync`).
    pub fn open(dir: impl Into<std::path::PathBuf>) -> Result<TaskManager> {
        Builder::default().dir(dir).build()
    }

    pub(crate) fn assemble(
        clock: Arc<dyn Clock>,
        config: Config,
        log: Option<(Log, RecoveryReport)>,
        (retention, retention_every): (Option<RetentionPolicy>, Duration),
    ) -> Result<TaskManager> {
        let (log, log_report) = match log {
            Some((l, r)) => (Some(l), Some(r)),
            None => (None, None),
        };
        let mut workers = Vec::new();
        for (p, pool) in config.pools.iter().enumerate() {
            for i in 0..pool.concurrency {
                workers.push(WorkerInfo {
                    pool: p,
                    name: format!("{}-{}", pool.name, i).into(),
                });
            }
        }
        let parkers: Vec<Parker> = workers.iter().map(|_| Parker::new()).collect();
        let unparkers = parkers.iter().map(|p| p.unparker().clone()).collect();
        let core = Arc::new(Core::new(
            clock.clone(),
            config,
            Store::new(log),
            unparkers,
            workers,
        )?);
        let weak = Arc::downgrade(&core);
        let hook: Arc<dyn Fn() + Send + Sync> = Arc::new(move || {
            if let Some(c) = weak.upgrade() {
                c.timer.kick_and_wait(std::time::Duration::from_secs(10));
            }
        });
        clock.on_advance(Arc::downgrade(&hook));
        let mut recovery = RecoveryStats::default();
        // The records the open found size the task tables up front.
        let records = log_report.as_ref().map_or(0, |r| r.records);
        core.replay_log(&mut recovery, records)?;
        // SPEC §12: running tasks are recovered when the directory is opened.
        let lsn = core.rebuild(&mut recovery)?;
        core.store.wait(lsn)?;
        Ok(TaskManager {
            core,
            parkers: Mutex::new(Some(parkers)),
            threads: Mutex::new(Vec::new()),
            timer_thread: Mutex::new(None),
            _clock_hook: hook,
            recovery,
            log_report,
            retention,
            retention_every,
        })
    }

    /// Registers a sync handler run on a worker thread.
    pub fn register<F>(&self, name: &str, f: F) -> Result<()>
    where
        F: Fn(&TaskContext) -> HandlerResult + Send + Sync + 'static,
    {
        self.register_handler(name, Handler::sync(f), HandlerOptions::default())
    }

    /// Registers a sync handler with options.
    pub fn register_with<F>(&self, name: &str, options: HandlerOptions, f: F) -> Result<()>
    where
        F: Fn(&TaskContext) -> HandlerResult + Send + Sync + 'static,
    {
        self.register_handler(name, Handler::sync(f), options)
    }

    /// Registers an async handler driven on the manager's tokio runtime.
    pub fn register_async<F, Fut>(&self, name: &str, f: F) -> Result<()>
    where
        F: Fn(TaskContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = HandlerResult> + Send + 'static,
    {
        self.register_handler(name, Handler::from_async(f), HandlerOptions::default())
    }

    /// Registers an async handler with options.
    pub fn register_async_with<F, Fut>(
        &self,
        name: &str,
        options: HandlerOptions,
        f: F,
    ) -> Result<()>
    where
        F: Fn(TaskContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = HandlerResult> + Send + 'static,
    {
        self.register_handler(name, Handler::from_async(f), options)
    }

    /// Registers one handler value.
    pub fn register_handler(
        &self,
        name: &str,
        handler: Handler,
        options: HandlerOptions,
    ) -> Result<()> {
        self.register_many(vec![(name.to_owned(), handler, options)])
    }

    /// Registers many handlers at once (all or none). Re-registering a name
    /// replaces it for future claims; running attempts keep their handler. A
    /// name given twice in one call is refused.
    pub fn register_many(&self, items: Vec<(String, Handler, HandlerOptions)>) -> Result<()> {
        let mut seen = std::collections::HashSet::new();
        for (name, _, o) in &items {
            if name.trim().is_empty() {
                return Err(Error::EmptyName);
            }
            if !seen.insert(name.as_str()) {
                return Err(Error::InvalidOption(format!(
                    "handler `{name}` appears twice in one register_many: give each name once"
                )));
            }
            for t in &o.requires {
                crate::runtime::error::check_tag(t)?;
            }
            if o.heartbeat_window == Some(Duration::ZERO) {
                return Err(Error::InvalidOption(format!(
                    "handler `{name}`: a heartbeat window of zero could never be met; leave it unset for no heartbeat check"
                )));
            }
            if o.max_concurrent_tasks == Some(0) {
                return Err(Error::InvalidOption(format!(
                    "handler `{name}`: max_concurrent_tasks must be at least 1"
                )));
            }
            if let Some(r) = &o.retry {
                r.validate()?;
            }
        }
        let items = items
            .into_iter()
            .map(|(n, h, mut o)| {
                o.requires.sort();
                o.requires.dedup();
                (n, h, o)
            })
            .collect();
        self.core.register(items);
        Ok(())
    }

    /// Unregisters names; returns how many were registered. In-flight runs finish.
    pub fn unregister(&self, names: &[&str]) -> usize {
        self.core.registry.unregister(names)
    }

    /// Name and description of a registered handler.
    pub fn task_info(&self, name: &str) -> Result<HandlerInfo> {
        let reg = self
            .core
            .registry
            .get(name)
            .ok_or_else(|| Error::NotRegistered(name.to_owned()))?;
        Ok(HandlerInfo {
            name: reg.name.to_string(),
            description: reg.options.description.clone(),
        })
    }

    /// Registered handler names, sorted.
    pub fn handler_names(&self) -> Vec<String> {
        self.core.registry.names()
    }

    /// Submits a task; returns once it is acknowledged at the configured durability.
    pub fn submit(&self, name: &str, payload: Value) -> Result<TaskId> {
        self.submit_with(name, payload, SubmitOptions::default())
    }

    /// Submits a task with options.
    pub fn submit_with(
        &self,
        name: &str,
        payload: Value,
        options: SubmitOptions,
    ) -> Result<TaskId> {
        let (id, lsn) = {
            let _call = self.core.enter_call()?;
            self.core.submit_one(name, payload, options)?
        };
        self.core.store.wait(lsn)?;
        Ok(id)
    }

    /// Submits many tasks and waits once for all of them. Every item is checked
    /// first: if one is refused (unknown handler, bad option), nothing is created
    /// (SPEC §13). Only a log failure part way through (a full disk, a poisoned
    /// log) can leave the items before it created.
    ///
    /// The handler name is anything that reads as a `&str`: a `String`, or a
    /// `&str`, which spares a producer of many tasks an allocation per task.
    ///
    /// ```
    /// # fn main() -> Result<(), fibflow::Error> {
    /// use fibflow::{SubmitOptions, TaskManager};
    /// use serde_json::json;
    /// let mgr = TaskManager::builder().memory().build()?;
    /// mgr.register("resize", |_| Ok(json!("done").into()))?;
    /// let ids = mgr.submit_batch((0..3).map(|i| ("resize", json!(i), SubmitOptions::new())))?;
    /// assert_eq!(ids.len(), 3);
    /// # Ok(()) }
    /// ```
    pub fn submit_batch<I, N>(&self, tasks: I) -> Result<Vec<TaskId>>
    where
        I: IntoIterator<Item = (N, Value, SubmitOptions)>,
        N: AsRef<str>,
    {
        // Sized from the iterator up front: collecting through `Result`
        // knows no length, and the vector would grow (and be copied) some
        // ten times for a batch of a thousand.
        let tasks = tasks.into_iter();
        let mut prepared = Vec::with_capacity(tasks.size_hint().0.min(1 << 16));
        // One submission time for the batch: a clock reading per task costs
        // about 110 instructions, and the batch is submitted at one moment.
        let now = self.core.now();
        for (name, payload, o) in tasks {
            prepared.push(self.core.prepare_submit(name.as_ref(), payload, o, now)?);
        }
        // Held until every item is recorded: a `stop` meanwhile waits, so a
        // batch is refused whole or recorded whole (SPEC §13). Taken after
        // the caller's iterator ran, which may call this manager itself.
        let call = self.core.enter_call()?;
        for new in &prepared {
            self.core.store.check_submit_fits(new)?;
        }
        let mut ids = Vec::with_capacity(prepared.len());
        let mut last = None;
        for new in prepared {
            let (id, lsn) = self.core.submit_prepared(new)?;
            last = lsn.max(last);
            ids.push(id);
        }
        drop(call);
        self.core.store.wait(last)?;
        Ok(ids)
    }

    /// Starts workers and timers (tasks that were running when the process
    /// stopped were already recovered when the directory was opened). Calling it
    /// twice is harmless.
    pub fn start(&self) -> Result<()> {
        if self.core.stopping.load(Ordering::Acquire) {
            return Err(Error::Stopped);
        }
        let Some(parkers) = self.parkers.lock().take() else {
            return Ok(());
        };
        let lsn = self.core.catch_up_crons()?;
        self.core.store.wait(lsn)?;
        // Tasks that came due before `start` (a delay that ran out, a clock
        // moved by hand) are queued before any worker runs, so the first
        // claims choose among them by priority too; the timer thread would
        // queue them only after the workers took what was queued already.
        self.core
            .queue_due(self.core.timer.take_due(self.core.now()));
        self.core.started.store(true, Ordering::Release);
        let mut threads = self.threads.lock();
        *self.core.live.0.lock() = parkers.len();
        for (w, parker) in parkers.into_iter().enumerate() {
            let core = self.core.clone();
            let name = format!("fibflow-{}", core.workers[w].name);
            let h = std::thread::Builder::new()
                .name(name)
                .spawn(move || {
                    worker_main(&core, w, &parker);
                    let mut live = core.live.0.lock();
                    *live -= 1;
                    core.live.1.notify_all();
                })
                .map_err(|source| Error::Io {
                    context: "cannot spawn a worker thread",
                    source,
                })?;
            threads.push(h);
        }
        let core = self.core.clone();
        // The interval counts from start(), not from whenever the thread gets going.
        let retention = self
            .retention
            .clone()
            .map(|p| (p, self.retention_every, self.core.now()));
        // Marked running before the thread exists, so a manual clock advanced
        // right after `start` already waits for the timer's round.
        self.core.timer.set_running(true);
        let t = std::thread::Builder::new()
            .name("fibflow-timer".into())
            .spawn(move || timer_main(&core, retention))
            .map_err(|source| {
                self.core.timer.set_running(false);
                Error::Io {
                    context: "cannot spawn the timer thread",
                    source,
                }
            })?;
        *self.timer_thread.lock() = Some(t);
        Ok(())
    }

    /// Stops claiming, waits for running handlers up to `deadline`, records the
    /// ones that did not finish as interrupted, flushes and closes the log.
    pub fn stop(&self, deadline: Duration) -> Result<StopReport> {
        if self.core.stopping.swap(true, Ordering::AcqRel) {
            return Ok(StopReport::default());
        }
        // Calls already in (a batch half recorded) finish; later ones see
        // `stopping` and are refused whole.
        self.core.drain_calls();
        self.core.dispatch.idle.wake_all();
        let until = instant_after(deadline);
        let all_done = {
            let mut live = self.core.live.0.lock();
            while *live > 0 {
                if self.core.live.1.wait_until(&mut live, until).timed_out() {
                    break;
                }
            }
            *live == 0
        };
        let interrupted = self.core.interrupt_running();
        self.core.timer.stop();
        if let Some(t) = self.timer_thread.lock().take() {
            let _ = t.join();
        }
        let done: Vec<JoinHandle<()>> = self.threads.lock().drain(..).collect();
        for h in done {
            // Every loop has ended, so joining is immediate; it also makes sure the
            // threads dropped their handle on the core, so the log (and its
            // directory lock) is released when the manager is dropped.
            if all_done || h.is_finished() {
                let _ = h.join();
            }
        }
        // Closing releases the directory lock once the last user lets go, even if
        // a handler past the deadline is still running (its result is discarded).
        let closed = self.core.store.close();
        // Callers blocked in `wait` for a task that can no longer move return
        // `Stopped` now instead of at their deadline.
        self.core.waiters.wake_all();
        closed?;
        Ok(StopReport { interrupted })
    }

    /// Stops new claims (submission still works, running handlers carry on).
    pub fn pause(&self) {
        self.core.paused.store(true, Ordering::Release);
        self.core.pauses.fetch_add(1, Ordering::AcqRel);
    }

    /// Lets workers claim again after [`TaskManager::pause`].
    pub fn resume(&self) {
        self.core.paused.store(false, Ordering::Release);
        self.core.dispatch.idle.wake_all();
    }

    /// One control record, as a public call (refused once the manager stops).
    fn control(&self, record: Record) -> Result<()> {
        let _call = self.core.enter_call()?;
        self.core.control(record)
    }

    /// `running` or `pending` → `paused`; a running handler's late result is discarded.
    pub fn pause_task(&self, id: TaskId) -> Result<()> {
        self.control(Record::Pause {
            id,
            at_ms: self.core.now(),
        })
    }

    /// `suspended` → `pending` (stage + 1, `task_resumed`), or `paused` → `pending` (stage 0).
    pub fn resume_task(&self, id: TaskId, reason: Option<&str>) -> Result<()> {
        // An empty reason is no reason, as in fib-flow (`resume_reason || 'manual'`).
        let reason = reason.filter(|r| !r.is_empty()).map(str::to_owned);
        self.control(Record::Resume {
            id,
            reason,
            at_ms: self.core.now(),
        })
    }

    /// `suspended` → `permanently_failed` with `reason` (default "Task
    /// cancelled", also for an empty reason, as in fib-flow).
    pub fn cancel_task(&self, id: TaskId, reason: Option<&str>) -> Result<()> {
        let reason = reason.filter(|r| !r.is_empty()).map(str::to_owned);
        self.control(Record::Cancel {
            id,
            reason,
            at_ms: self.core.now(),
        })
    }

    /// Waits until the task is completed, permanently failed or paused, and its
    /// final record is durable; returns the task.
    ///
    /// Errors: [`Error::NotFound`] for an unknown (or deleted) task,
    /// [`Error::WaitTimeout`] when `timeout` passes first, and
    /// [`Error::Stopped`] when the manager stops (or has stopped) with the
    /// task not finished.
    pub fn wait(&self, id: TaskId, timeout: Duration) -> Result<Task> {
        let until = instant_after(timeout);
        let w = &self.core.waiters;
        w.enter(id);
        let result = loop {
            let epoch = *w.epoch.lock();
            match self.get_task(id) {
                None => break Err(Error::NotFound(id)),
                Some(t) if t.status.is_terminal() => break Ok(t),
                // Stopped: nothing runs any more, so it would wait for nothing.
                Some(_) if self.core.store.is_closed() => break Err(Error::Stopped),
                Some(_) => {}
            }
            let mut g = w.epoch.lock();
            if *g == epoch && w.cv.wait_until(&mut g, until).timed_out() {
                break Err(Error::WaitTimeout {
                    id,
                    waited: timeout,
                });
            }
        };
        w.leave(id);
        let task = result?;
        if let Some(log) = self.core.store.log() {
            if let Some(last) = log.stats().last_lsn {
                log.wait_durable(last)?;
            }
        }
        Ok(task)
    }

    /// One task, as an owned snapshot.
    pub fn get_task(&self, id: TaskId) -> Option<Task> {
        self.core.store.lock(id).get(id).map(|e| e.task.clone())
    }

    /// Why a task is not running, in words; `None` if it is running or
    /// finished. A pending task names what holds it (no handler, no pool with
    /// its capabilities, its time not come, the manager stopped or paused, a
    /// concurrency cap, or busy workers); a waiting one names what it waits
    /// for (a retry, its children, a resume).
    pub fn waiting_reason(&self, id: TaskId) -> Result<Option<String>> {
        let (t, awaiting_children, suspend_reason) = {
            let shard = self.core.store.lock(id);
            let e = shard.get(id).ok_or(Error::NotFound(id))?;
            (e.task.clone(), e.round.is_some(), e.suspend_reason.clone())
        };
        match t.status {
            TaskStatus::Pending => {}
            TaskStatus::Paused => {
                return Ok(Some(format!(
                    "paused: resume_task({}) runs it again",
                    t.id.0
                )));
            }
            TaskStatus::Failed | TaskStatus::Timeout => {
                return Ok(Some(format!(
                    "its attempt {}; the retry is due at {} ms since the epoch",
                    if t.status == TaskStatus::Failed {
                        "failed"
                    } else {
                        "timed out"
                    },
                    t.next_run_time
                )));
            }
            TaskStatus::Suspended if awaiting_children => {
                return Ok(Some("suspended: waiting for its children to finish".into()));
            }
            TaskStatus::Suspended => {
                let why = suspend_reason.unwrap_or_default();
                return Ok(Some(format!(
                    "suspended ({why}): resume_task({}) runs it again",
                    t.id.0
                )));
            }
            TaskStatus::Running | TaskStatus::Completed | TaskStatus::PermanentlyFailed => {
                return Ok(None);
            }
        }
        let Some(reg) = self.core.registry.get(&t.name) else {
            return Ok(Some(format!("No handler registered for task: {}", t.name)));
        };
        if !self.core.dispatch.has_server(&t.requires) {
            return Ok(Some(format!(
                "no worker pool has all the capabilities it requires: {}",
                t.requires.join(", ")
            )));
        }
        if t.next_run_time > self.core.now() {
            return Ok(Some(format!(
                "scheduled to run at {} ms since the epoch",
                t.next_run_time
            )));
        }
        if !self.core.started.load(Ordering::Acquire) {
            return Ok(Some("the manager is not started".into()));
        }
        if self.core.paused.load(Ordering::Acquire) {
            return Ok(Some("the manager is paused".into()));
        }
        if reg.slots.is_full() {
            return Ok(Some(format!(
                "handler `{}` is at its concurrency cap ({} running)",
                t.name,
                reg.slots.cap()
            )));
        }
        if self.core.global.is_full() {
            return Ok(Some(format!(
                "the manager is at its global concurrency cap ({} running)",
                self.core.global.cap()
            )));
        }
        Ok(Some("queued: waiting for a free worker".into()))
    }

    /// Takes a snapshot of the live state and removes log segments below it.
    /// The segment being written is ended first (appends go on in the next),
    /// so every record of a task deleted before the call leaves the disk
    /// (SPEC §11). The automatic compaction (`compact_after_bytes`) does not
    /// end the segment: what it leaves is bounded by one segment.
    pub fn compact(&self) -> Result<()> {
        self.core.snapshot_now(true)
    }

    /// What opening the log found.
    pub fn recovery_stats(&self) -> &RecoveryStats {
        &self.recovery
    }

    /// What the log's recovery scan reported (torn tail cut, etc.), for a directory.
    pub fn log_recovery_report(&self) -> Option<&RecoveryReport> {
        self.log_report.as_ref()
    }

    /// Log statistics, for a directory.
    pub fn log_stats(&self) -> Option<LogStats> {
        self.core.store.log().map(|l| l.stats())
    }

    /// Number of currently running attempts.
    pub fn running(&self) -> usize {
        self.core.global.running()
    }
}

impl Drop for TaskManager {
    fn drop(&mut self) {
        if self.parkers.lock().is_none() {
            let _ = self.stop(Duration::from_secs(1));
        }
        self.core.dispatch.idle.wake_all();
        self.core.timer.stop();
    }
}

/// The instant `d` from now; a duration too long to add (`Duration::MAX`, a
/// caller's "forever") gives a point a century away instead of a panic.
fn instant_after(d: Duration) -> Instant {
    const CENTURY: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
    let now = Instant::now();
    now.checked_add(d)
        .or_else(|| now.checked_add(CENTURY))
        .unwrap_or(now)
}

/// Tasks deleted per automatic retention batch (fib-flow's internal batch size),
/// so that one batch never holds up due timers for long.
const RETENTION_BATCH: usize = 100;

/// How often, at least, the timer thread looks at housekeeping with a real
/// clock (a manual clock's thread looks whenever the clock is moved).
const HOUSEKEEPING_MS: u64 = 1_000;

/// The timer thread: due tasks, due attempts, then housekeeping (automatic
/// retention every `interval`, not at start; compaction when the log has grown).
///
/// A retention sweep deletes one batch. While batches come back full, the
/// next batch is due 1 ms later (clock time) instead of a whole interval
/// later, so a sweep's backlog drains at up to 100 tasks per millisecond
/// without ever holding up due timers for long. On a manual clock that means
/// one batch each time the clock moves, as fib-flow's "one batch per sweep".
fn timer_main(core: &Arc<Core>, mut retention: Option<(RetentionPolicy, Duration, u64)>) {
    let now = || core.now();
    let real = core.clock.is_real();
    // The clock time of the last batch of a sweep whose batches came back full.
    let mut draining: Option<u64> = None;
    let mut housekeeping_at = if real {
        now().saturating_add(HOUSEKEEPING_MS)
    } else {
        u64::MAX
    };
    while let Some(mut due) = core.timer.next_due(&now, real, housekeeping_at) {
        core.queue_due(std::mem::take(&mut due.tasks));
        for ctl in std::mem::take(&mut due.attempts) {
            core.attempt_due(&ctl);
        }
        let t = core.now();
        if let Some((policy, every, last)) = &mut retention {
            let next_batch = draining.is_some_and(|d| t > d);
            if next_batch || t.saturating_sub(*last) >= crate::runtime::clock::ceil_ms(*every) {
                if !next_batch {
                    *last = t;
                }
                let full = audit::retention_batch(core, policy, RETENTION_BATCH)
                    .is_ok_and(|r| r.tasks >= RETENTION_BATCH as u64);
                draining = full.then_some(t);
            }
        }
        core.maybe_compact();
        housekeeping_at = match (draining, real) {
            (Some(d), _) => d.saturating_add(1),
            (None, true) => t.saturating_add(HOUSEKEEPING_MS),
            (None, false) => u64::MAX,
        };
        core.timer.round_done(&due);
    }
    core.timer.set_running(false);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Waits (with a generous deadline) until `f` holds.
    fn until(what: &str, f: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !f() {
            assert!(Instant::now() < deadline, "timed out waiting for: {what}");
            std::thread::yield_now();
        }
    }

    /// `wait` is woken by its own task only: another task finishing does not
    /// wake it (a caller waiting for a workflow's root would otherwise wake,
    /// and lock the workflow's shard, once per child); its own task finishing,
    /// or being deleted, does.
    #[test]
    fn wait_is_woken_by_its_own_task_only() {
        let mgr = TaskManager::builder().memory().build().unwrap();
        let (release, gate) = crossbeam::channel::unbounded::<()>();
        mgr.register("mine", move |_| {
            let _ = gate.recv();
            Ok(json!("done").into())
        })
        .unwrap();
        mgr.register("other", |_| Ok(json!(null).into())).unwrap();
        mgr.start().unwrap();
        let mine = mgr.submit("mine", json!(1)).unwrap();
        let gone = mgr
            .submit_with(
                "other",
                json!(2),
                SubmitOptions::new().delay(Duration::from_secs(3600)),
            )
            .unwrap();
        std::thread::scope(|s| {
            let waiter = s.spawn(|| mgr.wait(mine, Duration::from_secs(120)));
            let gone_waiter = s.spawn(|| mgr.wait(gone, Duration::from_secs(120)));
            until("both waiters wait", || {
                mgr.core.waiters.waits_for(mine) && mgr.core.waiters.waits_for(gone)
            });
            let epoch = *mgr.core.waiters.epoch.lock();
            let other = mgr.submit("other", json!(3)).unwrap();
            until("the other task completes", || {
                mgr.get_task(other)
                    .is_some_and(|t| t.status == TaskStatus::Completed)
            });
            assert_eq!(
                *mgr.core.waiters.epoch.lock(),
                epoch,
                "woken by another task"
            );
            release.send(()).unwrap();
            let done = waiter.join().unwrap().unwrap();
            assert_eq!(done.result, Some(json!("done")));
            assert_eq!(
                mgr.delete_tasks(&TaskFilter::all().status(TaskStatus::Pending))
                    .unwrap(),
                1
            );
            let r = gone_waiter.join().unwrap();
            assert!(matches!(r, Err(Error::NotFound(id)) if id == gone), "{r:?}");
        });
        assert!(!mgr.core.waiters.waits_for(mine) && !mgr.core.waiters.waits_for(gone));
    }
}
