//! What a handler sees of its task, and the calls it can make while it runs.

use super::Core;
use crate::codec::{Record, TaskId};
use serde_json::Value;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Weak};

/// The state of one open attempt shared by the worker, the handler and the timer.
#[derive(Debug)]
pub(crate) struct AttemptCtl {
    pub(crate) id: TaskId,
    pub(crate) attempt: u32,
    /// Absolute deadline of the attempt (ms), `u64::MAX` when none.
    pub(crate) deadline_ms: u64,
    /// Heartbeat window in ms, 0 when heartbeats are not required.
    pub(crate) heartbeat_window_ms: u64,
    pub(crate) last_heartbeat_ms: AtomicU64,
    /// 0 = live, 1 = timed out (total), 2 = timed out (heartbeat), 3 = cancelled otherwise.
    pub(crate) stop_reason: AtomicU8,
    pub(crate) done: AtomicBool,
    /// The attempt still holds its handler's concurrency slot. Whoever ends
    /// the attempt's hold first (its worker when the handler returns, or a
    /// pause or a timeout while it runs: SPEC §3 "slots free on ... failure
    /// ... and pause") frees the slot.
    slot_held: AtomicBool,
    /// The attempt no longer owns its task (it was paused, say): the timer
    /// stops looking at it, and its handler runs on unchecked.
    detached: AtomicBool,
    pub(crate) notify: tokio::sync::Notify,
}

impl AttemptCtl {
    pub(crate) fn new(
        id: TaskId,
        attempt: u32,
        deadline_ms: u64,
        heartbeat_window_ms: u64,
        now: u64,
    ) -> Self {
        AttemptCtl {
            id,
            attempt,
            deadline_ms,
            heartbeat_window_ms,
            last_heartbeat_ms: AtomicU64::new(now),
            stop_reason: AtomicU8::new(0),
            done: AtomicBool::new(false),
            slot_held: AtomicBool::new(true),
            detached: AtomicBool::new(false),
            notify: tokio::sync::Notify::new(),
        }
    }

    /// The next time the timer must look at this attempt.
    pub(crate) fn next_check_ms(&self) -> u64 {
        if self.done.load(Ordering::Acquire)
            || self.stop_reason.load(Ordering::Acquire) != 0
            || self.detached.load(Ordering::Acquire)
        {
            return u64::MAX;
        }
        let hb = if self.heartbeat_window_ms == 0 {
            u64::MAX
        } else {
            self.last_heartbeat_ms
                .load(Ordering::Acquire)
                .saturating_add(self.heartbeat_window_ms)
        };
        hb.min(self.deadline_ms)
    }

    /// The attempt no longer owns its task: no timeout or heartbeat applies.
    pub(crate) fn detach(&self) {
        self.detached.store(true, Ordering::Release);
    }

    /// Ends the attempt's hold on its handler slot: true for the one caller
    /// that must free it.
    pub(crate) fn take_slot(&self) -> bool {
        self.slot_held.swap(false, Ordering::AcqRel)
    }

    pub(crate) fn cancel(&self, reason: u8) {
        self.stop_reason.store(reason, Ordering::Release);
        self.notify.notify_waiters();
        self.notify.notify_one();
    }
}

/// Why a cooperative check stopped the handler.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Interrupted {
    /// The attempt ran past its timeout.
    #[error("task timed out: the attempt ran past its timeout")]
    Timeout,
    /// No heartbeat arrived within the window.
    #[error("task timed out: no heartbeat within the heartbeat window")]
    HeartbeatTimeout,
    /// The manager stopped before the attempt finished; the attempt was recorded
    /// as interrupted and its result will be discarded. (Pausing a task does not
    /// interrupt its handler: SPEC §6 only discards the late result.)
    #[error("the attempt was stopped: the manager shut down before it finished; return now, its result is discarded")]
    Stopped,
}

/// A handler's call that was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ContextError {
    /// Bad arguments.
    #[error("{0}")]
    Invalid(String),
    /// The attempt no longer owns the task; its writes are discarded.
    #[error("attempt {attempt} of task {id} no longer owns the task; stop working on it")]
    Stale {
        /// The task.
        id: TaskId,
        /// The attempt.
        attempt: u32,
    },
    /// The manager is gone.
    #[error("the task manager was dropped")]
    Closed,
}

/// Progress fields to update; only the given ones change.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Progress {
    /// Name of the current stage.
    pub stage_name: Option<String>,
    /// Free text.
    pub text: Option<String>,
    /// 0..=100.
    pub percent: Option<u8>,
    /// Structured details.
    pub metadata: Option<Value>,
}

/// The task as its handler sees it, plus the calls it can make while running.
/// Cheap to clone; an async handler owns one.
#[derive(Clone)]
pub struct TaskContext {
    pub(crate) inner: Arc<ContextInner>,
}

pub(crate) struct ContextInner {
    /// The manager, through its worker's own handle: cloning one `Weak` of
    /// the core per attempt would make every worker change the core's one
    /// weak count, a cache line all their cores then pass around.
    pub(crate) core: Arc<Weak<Core>>,
    /// The attempt's control block, in the same allocation as the context.
    pub(crate) ctl: AttemptCtl,
    /// The registration the attempt runs with (kept across hot reloads).
    pub(crate) reg: Arc<super::registry::Registered>,
    pub(crate) payload: Value,
    pub(crate) result: Option<Value>,
    pub(crate) context: Option<Vec<u8>>,
    pub(crate) stage: u32,
    pub(crate) retry_count: u32,
    pub(crate) worker: Arc<str>,
    pub(crate) parent_id: Option<TaskId>,
    pub(crate) root_id: Option<TaskId>,
}

impl std::fmt::Debug for TaskContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskContext")
            .field("id", &self.id())
            .field("name", &self.inner.reg.name)
            .field("attempt", &self.attempt())
            .finish_non_exhaustive()
    }
}

impl TaskContext {
    /// The task id.
    pub fn id(&self) -> TaskId {
        self.inner.ctl.id
    }
    /// The handler name.
    pub fn name(&self) -> &str {
        // The task's name is the name it was claimed by.
        &self.inner.reg.name
    }
    /// The payload given at submit.
    pub fn payload(&self) -> &Value {
        &self.inner.payload
    }
    /// The stored result: for a parent resumed after its children, the round's
    /// `{task_id, result}` / `{task_id, error}` entries sorted by task id.
    pub fn result(&self) -> Option<&Value> {
        self.inner.result.as_ref()
    }
    /// The task's saved context bytes.
    pub fn context(&self) -> Option<&[u8]> {
        self.inner.context.as_deref()
    }
    /// The workflow stage (0 on the first run, +1 per finished child round or resume).
    pub fn stage(&self) -> u32 {
        self.inner.stage
    }
    /// The attempt number.
    pub fn attempt(&self) -> u32 {
        self.inner.ctl.attempt
    }
    /// Retries already scheduled before this run.
    pub fn retry_count(&self) -> u32 {
        self.inner.retry_count
    }
    /// The worker running this attempt.
    pub fn worker(&self) -> &str {
        &self.inner.worker
    }
    /// The parent task, for a child.
    pub fn parent_id(&self) -> Option<TaskId> {
        self.inner.parent_id
    }
    /// The workflow root, for a child.
    pub fn root_id(&self) -> Option<TaskId> {
        self.inner.root_id
    }

    /// Records that the handler is alive (see `HandlerOptions::heartbeat_window`).
    pub fn heartbeat(&self) {
        // Rounded up: the window after this beat never ends early.
        let now = self
            .inner
            .core
            .upgrade()
            .map_or(0, |c| c.clock.now_ms_ceil());
        self.inner
            .ctl
            .last_heartbeat_ms
            .fetch_max(now, Ordering::AcqRel);
    }

    /// The cooperative timeout check: `Err` once the attempt timed out or was stopped.
    /// A long-running sync handler should call it between steps and return the error.
    pub fn check(&self) -> Result<(), Interrupted> {
        match self.inner.ctl.stop_reason.load(Ordering::Acquire) {
            0 => Ok(()),
            1 => Err(Interrupted::Timeout),
            2 => Err(Interrupted::HeartbeatTimeout),
            _ => Err(Interrupted::Stopped),
        }
    }

    /// Updates the progress snapshot and records a `task_progress` event.
    /// Empty strings, percentages above 100 and metadata that is not a JSON
    /// object are refused; names and text are trimmed. The event's metadata is
    /// `{stage_name, progress_text, progress_percent, ...metadata}` and its
    /// message the text, else the stage name, as in fib-flow.
    pub fn progress(&self, p: Progress) -> Result<(), ContextError> {
        non_empty("stage_name", p.stage_name.as_deref())?;
        non_empty("text", p.text.as_deref())?;
        object("metadata", p.metadata.as_ref())?;
        // fib-flow trims both.
        let stage_name = p.stage_name.map(|s| s.trim().to_owned());
        let text = p.text.map(|s| s.trim().to_owned());
        if p.percent.is_some_and(|x| x > 100) {
            return Err(ContextError::Invalid(format!(
                "progress percent {} is out of range: use 0..=100",
                p.percent.unwrap_or_default()
            )));
        }
        self.heartbeat();
        self.write(|id, attempt, at_ms| Record::Progress {
            id,
            attempt,
            stage_name,
            text,
            percent: p.percent,
            metadata: p.metadata.unwrap_or(Value::Null),
            at_ms,
        })
    }

    /// Records a `task_checkpoint` audit event with a non-empty `code`: metadata
    /// `{code, ...metadata}` (metadata must be a JSON object), message the given
    /// one or else the code; code and message are trimmed, as in fib-flow.
    pub fn audit(
        &self,
        code: &str,
        message: Option<&str>,
        metadata: Option<Value>,
    ) -> Result<(), ContextError> {
        non_empty("code", Some(code))?;
        non_empty("message", message)?;
        object("metadata", metadata.as_ref())?;
        self.heartbeat();
        self.write(|id, attempt, at_ms| Record::Checkpoint {
            id,
            attempt,
            code: code.trim().to_owned(),
            message: message.map(|m| m.trim().to_owned()),
            metadata: metadata.unwrap_or(Value::Null),
            at_ms,
        })
    }

    fn write(&self, make: impl FnOnce(TaskId, u32, u64) -> Record) -> Result<(), ContextError> {
        let core = self.inner.core.upgrade().ok_or(ContextError::Closed)?;
        let (id, attempt) = (self.id(), self.attempt());
        let record = make(id, attempt, core.clock.now_ms());
        core.handler_write(record).map_err(|e| match e {
            // Deleted while its handler ran: the attempt owns nothing any more.
            crate::engine::TransitionError::Stale { .. }
            | crate::engine::TransitionError::NotFound(_) => ContextError::Stale { id, attempt },
            other => ContextError::Invalid(other.to_string()),
        })
    }
}

/// Metadata is a JSON object (or absent / null), as fib-flow requires.
fn object(field: &str, v: Option<&Value>) -> Result<(), ContextError> {
    match v {
        Some(v) if !crate::codec::json_depth_ok(v) => {
            Err(ContextError::Invalid(crate::codec::too_deep(field)))
        }
        None | Some(Value::Null | Value::Object(_)) => Ok(()),
        Some(_) => Err(ContextError::Invalid(format!(
            "{field} must be a JSON object (or absent)"
        ))),
    }
}

fn non_empty(field: &str, v: Option<&str>) -> Result<(), ContextError> {
    match v {
        Some(s) if s.trim().is_empty() => {
            Err(ContextError::Invalid(format!("{field} must not be empty")))
        }
        _ => Ok(()),
    }
}
