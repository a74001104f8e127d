//! The handler registry: an immutable snapshot swapped atomically on every
//! registration (hot reload). A worker takes the current snapshot's entry at claim
//! time and keeps it for the whole attempt, so re-registering a name only affects
//! later claims (SPEC §8).

use super::context::TaskContext;
use crate::codec::OnChildFailure;
use crate::engine::schedule::RetryStrategy;
use arc_swap::ArcSwap;
use parking_lot::Mutex;
use serde_json::Value;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The error a handler returns. Any `std::error::Error` converts with `?`, and so
/// does a `&str` or `String` with `.into()`.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What a handler returns.
pub type HandlerResult = Result<Outcome, BoxError>;

/// A boxed future returned by an async handler.
pub type BoxFuture = Pin<Box<dyn Future<Output = HandlerResult> + Send + 'static>>;

/// How a handler's attempt ends when it does not fail.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Outcome {
    /// The task completes with this result (a cron round returns to `pending`).
    Complete(Value),
    /// The task suspends until these children finish, then runs again at stage + 1.
    Spawn {
        /// The children to create.
        children: Vec<ChildSpec>,
        /// A new context for this task, read by its next run.
        context: Option<Vec<u8>>,
    },
    /// The task suspends until `resume_task` (human in the loop).
    Suspend {
        /// Why; must be non-empty after trimming.
        reason: String,
        /// A new context for this task, read by its next run.
        context: Option<Vec<u8>>,
    },
}

impl Outcome {
    /// Completes with `value` serialized to JSON, as a handler's return
    /// value. A value JSON cannot hold (a map whose keys are not strings, a
    /// `Serialize` impl that fails) fails the attempt with serde's message,
    /// rather than completing the task with a result it never had.
    ///
    /// ```
    /// # fn main() -> Result<(), fibflow::Error> {
    /// use fibflow::{Outcome, TaskManager};
    /// let mgr = TaskManager::builder().memory().build()?;
    /// mgr.register("sum", |ctx| {
    ///     let n = ctx.payload().as_u64().unwrap_or(0);
    ///     Outcome::complete(n * (n + 1) / 2)
    /// })?;
    /// # Ok(()) }
    /// ```
    pub fn complete(value: impl serde::Serialize) -> HandlerResult {
        match serde_json::to_value(value) {
            Ok(v) => Ok(Outcome::Complete(v)),
            Err(e) => Err(format!("the handler's result does not serialize to JSON: {e}").into()),
        }
    }

    /// Spawns `children` without changing the context.
    pub fn spawn(children: Vec<ChildSpec>) -> Outcome {
        Outcome::Spawn {
            children,
            context: None,
        }
    }

    /// Suspends with `reason` without changing the context.
    pub fn suspend(reason: impl Into<String>) -> Outcome {
        Outcome::Suspend {
            reason: reason.into(),
            context: None,
        }
    }
}

impl From<Value> for Outcome {
    fn from(v: Value) -> Outcome {
        Outcome::Complete(v)
    }
}

/// One child to spawn. Unset options come from the child handler's registration,
/// else from the parent.
#[derive(Debug, Clone, PartialEq)]
pub struct ChildSpec {
    /// The child's handler name.
    pub name: String,
    /// Its payload.
    pub payload: Value,
    /// Priority override.
    pub priority: Option<i32>,
    /// Tag override.
    pub tag: Option<String>,
    /// Timeout override.
    pub timeout: Option<Duration>,
    /// Max executions override.
    pub max_retries: Option<u32>,
    /// Retry interval override.
    pub retry_interval: Option<Duration>,
    /// Capability tags the child needs, added to its handler's registered
    /// ones (as a submission's are); unset, the handler's, or if it has none
    /// the parent's.
    pub requires: Option<Vec<String>>,
    /// What the parent does if this child fails for good.
    pub on_failure: OnChildFailure,
}

impl ChildSpec {
    /// A child running handler `name` with `payload`.
    pub fn new(name: impl Into<String>, payload: Value) -> ChildSpec {
        ChildSpec {
            name: name.into(),
            payload,
            priority: None,
            tag: None,
            timeout: None,
            max_retries: None,
            retry_interval: None,
            requires: None,
            on_failure: OnChildFailure::Deliver,
        }
    }

    /// Sets the priority.
    pub fn priority(mut self, p: i32) -> Self {
        self.priority = Some(p);
        self
    }
    /// Sets the tag.
    pub fn tag(mut self, t: impl Into<String>) -> Self {
        self.tag = Some(t.into());
        self
    }
    /// Sets the timeout.
    pub fn timeout(mut self, d: Duration) -> Self {
        self.timeout = Some(d);
        self
    }
    /// Sets the maximum executions.
    pub fn max_retries(mut self, n: u32) -> Self {
        self.max_retries = Some(n);
        self
    }
    /// Sets the retry interval.
    pub fn retry_interval(mut self, d: Duration) -> Self {
        self.retry_interval = Some(d);
        self
    }
    /// Sets the required capabilities (added to the child handler's).
    pub fn requires<I, S>(mut self, tags: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.requires = Some(tags.into_iter().map(Into::into).collect());
        self
    }
    /// Fails the parent if this child fails for good.
    pub fn fail_parent(mut self) -> Self {
        self.on_failure = OnChildFailure::FailParent;
        self
    }
}

/// Per-handler options (SPEC §1); unset ones fall back to the manager's defaults.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HandlerOptions {
    /// Time limit of one attempt.
    pub timeout: Option<Duration>,
    /// Maximum executions including the first.
    pub max_retries: Option<u32>,
    /// Fixed retry delay.
    pub retry_interval: Option<Duration>,
    /// Backoff strategy (overrides `retry_interval`).
    pub retry: Option<RetryStrategy>,
    /// Default priority of its tasks.
    pub priority: Option<i32>,
    /// Cap on its concurrently running tasks.
    pub max_concurrent_tasks: Option<usize>,
    /// Capability tags a worker needs to run it.
    pub requires: Vec<String>,
    /// Shown by `task_info`.
    pub description: Option<String>,
    /// When set, the handler must call `heartbeat()` at least this often, or the
    /// attempt times out (timeout_type `heartbeat`).
    pub heartbeat_window: Option<Duration>,
}

impl HandlerOptions {
    /// Default options.
    pub fn new() -> Self {
        Self::default()
    }
    /// Sets the attempt time limit.
    pub fn timeout(mut self, d: Duration) -> Self {
        self.timeout = Some(d);
        self
    }
    /// Sets the maximum executions including the first.
    pub fn max_retries(mut self, n: u32) -> Self {
        self.max_retries = Some(n);
        self
    }
    /// Sets a fixed retry delay.
    pub fn retry_interval(mut self, d: Duration) -> Self {
        self.retry_interval = Some(d);
        self
    }
    /// Sets a backoff strategy.
    pub fn retry(mut self, s: RetryStrategy) -> Self {
        self.retry = Some(s);
        self
    }
    /// Sets the default priority.
    pub fn priority(mut self, p: i32) -> Self {
        self.priority = Some(p);
        self
    }
    /// Caps concurrently running tasks of this handler.
    pub fn max_concurrent_tasks(mut self, n: usize) -> Self {
        self.max_concurrent_tasks = Some(n);
        self
    }
    /// Sets the required capability tags.
    pub fn requires<I, S>(mut self, tags: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.requires = tags.into_iter().map(Into::into).collect();
        self
    }
    /// Sets the description.
    pub fn description(mut self, d: impl Into<String>) -> Self {
        self.description = Some(d.into());
        self
    }
    /// Requires a heartbeat at least every `window`.
    pub fn heartbeat_window(mut self, window: Duration) -> Self {
        self.heartbeat_window = Some(window);
        self
    }
}

type SyncFn = dyn Fn(&TaskContext) -> HandlerResult + Send + Sync;
type AsyncFn = dyn Fn(TaskContext) -> BoxFuture + Send + Sync;

/// A handler function: run on a worker thread, or as a future on the tokio runtime.
#[derive(Clone)]
pub enum Handler {
    /// A blocking function run on an OS-thread worker.
    Sync(Arc<SyncFn>),
    /// An async function driven on the manager's tokio runtime.
    Async(Arc<AsyncFn>),
}

impl std::fmt::Debug for Handler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Handler::Sync(_) => "Handler::Sync",
            Handler::Async(_) => "Handler::Async",
        })
    }
}

impl Handler {
    /// Wraps a blocking function.
    pub fn sync<F>(f: F) -> Handler
    where
        F: Fn(&TaskContext) -> HandlerResult + Send + Sync + 'static,
    {
        Handler::Sync(Arc::new(f))
    }

    /// Wraps an async function.
    pub fn from_async<F, Fut>(f: F) -> Handler
    where
        F: Fn(TaskContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = HandlerResult> + Send + 'static,
    {
        Handler::Async(Arc::new(move |ctx| Box::pin(f(ctx)) as BoxFuture))
    }
}

/// Concurrency slots of one handler name; they outlive re-registration so the cap
/// counts attempts that started under an older registration too.
#[derive(Debug)]
pub(crate) struct Slots {
    running: AtomicUsize,
    cap: AtomicUsize,
    /// Serializes taking a slot with removing the handler's best entry, and
    /// freeing a slot with returning a held entry, when the cap can bind (see
    /// [`Slots::tight`]); otherwise two workers could each take a different
    /// entry of the handler and the worse one could run first.
    pub(crate) gate: Mutex<()>,
}

impl Slots {
    /// Whether the cap can bind with `workers` workers. Each worker runs one
    /// attempt at a time and holds no slot while it looks for work, so a cap of
    /// at least the worker count is never full when a worker looks at it.
    pub(crate) fn tight(&self, workers: usize) -> bool {
        self.cap.load(Ordering::Relaxed) < workers
    }

    /// Takes a slot if the cap allows.
    pub(crate) fn try_acquire(&self) -> bool {
        let cap = self.cap.load(Ordering::Relaxed);
        self.running
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
                (n < cap).then_some(n + 1)
            })
            .is_ok()
    }

    /// The handler's cap.
    pub(crate) fn cap(&self) -> usize {
        self.cap.load(Ordering::Relaxed)
    }

    /// Whether the cap is reached (a hint for skipping while scanning).
    pub(crate) fn is_full(&self) -> bool {
        self.running.load(Ordering::Relaxed) >= self.cap.load(Ordering::Relaxed)
    }

    /// Returns a slot; true if the handler was at its cap before.
    pub(crate) fn release(&self) -> bool {
        let before = self.running.fetch_sub(1, Ordering::AcqRel);
        before >= self.cap.load(Ordering::Relaxed)
    }
}

/// One registration.
#[derive(Debug)]
pub(crate) struct Registered {
    pub(crate) name: Arc<str>,
    pub(crate) handler: Handler,
    pub(crate) options: HandlerOptions,
    pub(crate) slots: Arc<Slots>,
}

/// Keyed by name with a cheap hasher: every claim looks a name up here.
type Snapshot =
    HashMap<Arc<str>, Arc<Registered>, std::hash::BuildHasherDefault<crate::engine::IdHasher>>;

/// The registry: readers load the snapshot without locking; writers copy it.
#[derive(Default)]
pub(crate) struct Registry {
    current: ArcSwap<Snapshot>,
    writer: Mutex<HashMap<String, Arc<Slots>>>,
}

impl Registry {
    /// The registration of `name` now.
    pub(crate) fn get(&self, name: &str) -> Option<Arc<Registered>> {
        self.current.load().get(name).cloned()
    }

    /// Calls `f` with the registration of `name` now, without taking a
    /// reference: submitters and workers read the same registrations for
    /// every task, and a reference count that both change moves its cache
    /// line between their cores each time.
    pub(crate) fn with<R>(&self, name: &str, f: impl FnOnce(&Arc<Registered>) -> R) -> Option<R> {
        self.current.load().get(name).map(f)
    }

    /// The slots of handler `name`, created (uncapped) if it was never
    /// registered: their gate orders setting its tasks aside while it is
    /// not registered against registering it (see `Core::register`).
    pub(crate) fn slots_of(&self, name: &str) -> Arc<Slots> {
        self.writer
            .lock()
            .entry(name.to_owned())
            .or_insert_with(|| {
                Arc::new(Slots {
                    running: AtomicUsize::new(0),
                    cap: AtomicUsize::new(usize::MAX),
                    gate: Mutex::new(()),
                })
            })
            .clone()
    }

    /// Whether `name` is registered now.
    pub(crate) fn contains(&self, name: &str) -> bool {
        self.current.load().contains_key(name)
    }

    /// Registers or replaces handlers; later claims use the new ones.
    pub(crate) fn register(&self, items: Vec<(String, Handler, HandlerOptions)>) {
        let mut slots = self.writer.lock();
        let mut next: Snapshot = (**self.current.load()).clone();
        for (name, handler, options) in items {
            let cap = options.max_concurrent_tasks.unwrap_or(usize::MAX);
            let s = slots
                .entry(name.clone())
                .or_insert_with(|| {
                    Arc::new(Slots {
                        running: AtomicUsize::new(0),
                        cap: AtomicUsize::new(cap),
                        gate: Mutex::new(()),
                    })
                })
                .clone();
            s.cap.store(cap, Ordering::Relaxed);
            let name: Arc<str> = Arc::from(name);
            next.insert(
                name.clone(),
                Arc::new(Registered {
                    name,
                    handler,
                    options,
                    slots: s,
                }),
            );
        }
        self.current.store(Arc::new(next));
    }

    /// Removes names; returns how many were registered.
    pub(crate) fn unregister(&self, names: &[&str]) -> usize {
        let _w = self.writer.lock();
        let mut next: Snapshot = (**self.current.load()).clone();
        let removed = names.iter().filter(|n| next.remove(**n).is_some()).count();
        self.current.store(Arc::new(next));
        removed
    }

    /// Registered names, sorted.
    pub(crate) fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.current.load().keys().map(|k| k.to_string()).collect();
        v.sort();
        v
    }
}
