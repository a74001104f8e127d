//! Tasks, attempts and the status transition table of SPEC §2.

use crate::codec::{OnChildFailure, TaskId, TaskKind, UnixMs};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use super::audit::EventType;

/// The status of a task (SPEC §2).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskStatus {
    /// Waiting to be claimed (possibly until `next_run_time`).
    Pending,
    /// Claimed by a worker; one attempt is open.
    Running,
    /// Finished successfully (async tasks only).
    Completed,
    /// The last attempt failed; a retry or exhaustion follows in the same record.
    Failed,
    /// The last attempt timed out; a retry or exhaustion follows in the same record.
    Timeout,
    /// Failed for good: retries exhausted, cancelled, or a failed child.
    PermanentlyFailed,
    /// Stopped by `pause_task` or by an exhausted cron task; `resume_task` restarts it.
    Paused,
    /// Waiting for children or for an outside `resume_task`.
    Suspended,
}

impl TaskStatus {
    /// Every status, in declaration order.
    pub const ALL: [TaskStatus; 8] = [
        TaskStatus::Pending,
        TaskStatus::Running,
        TaskStatus::Completed,
        TaskStatus::Failed,
        TaskStatus::Timeout,
        TaskStatus::PermanentlyFailed,
        TaskStatus::Paused,
        TaskStatus::Suspended,
    ];

    /// The snake_case name used in queries, JSON and the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Pending => "pending",
            TaskStatus::Running => "running",
            TaskStatus::Completed => "completed",
            TaskStatus::Failed => "failed",
            TaskStatus::Timeout => "timeout",
            TaskStatus::PermanentlyFailed => "permanently_failed",
            TaskStatus::Paused => "paused",
            TaskStatus::Suspended => "suspended",
        }
    }

    /// Whether `wait` returns at this status (completed, permanently failed, paused).
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            TaskStatus::Completed | TaskStatus::PermanentlyFailed | TaskStatus::Paused
        )
    }

    /// The transition table of SPEC §2: may a task go from `self` to `to`?
    pub fn can_become(self, to: TaskStatus) -> bool {
        use TaskStatus as S;
        match to {
            S::Running => self == S::Pending,
            S::Completed | S::Failed | S::Timeout => self == S::Running,
            S::Pending => matches!(
                self,
                S::Running | S::Failed | S::Timeout | S::Paused | S::Suspended
            ),
            S::PermanentlyFailed => matches!(self, S::Failed | S::Timeout | S::Suspended),
            S::Paused => matches!(self, S::Running | S::Pending | S::Failed | S::Timeout),
            S::Suspended => self == S::Running,
        }
    }
}

impl fmt::Display for TaskStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An unknown status name was given.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Invalid status value `{0}`: use one of pending, running, completed, failed, timeout, permanently_failed, paused, suspended")]
pub struct UnknownStatus(pub String);

impl FromStr for TaskStatus {
    type Err = UnknownStatus;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TaskStatus::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| UnknownStatus(s.to_owned()))
    }
}

/// How an attempt ended (SPEC §1).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttemptOutcome {
    /// The handler returned a result.
    Completed,
    /// The handler returned an error or panicked.
    Failed,
    /// The attempt ran out of time.
    Timeout,
    /// The task was paused while running.
    Paused,
    /// The handler spawned children or suspended.
    Suspended,
    /// The process stopped while the attempt ran.
    Interrupted,
}

impl AttemptOutcome {
    /// The snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptOutcome::Completed => "completed",
            AttemptOutcome::Failed => "failed",
            AttemptOutcome::Timeout => "timeout",
            AttemptOutcome::Paused => "paused",
            AttemptOutcome::Suspended => "suspended",
            AttemptOutcome::Interrupted => "interrupted",
        }
    }
}

/// One execution round of a task.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
pub struct Attempt {
    /// The task.
    pub task_id: TaskId,
    /// Previous maximum + 1 for this task.
    pub number: u32,
    /// The worker that ran it.
    pub worker: Arc<str>,
    /// When it was claimed.
    pub started_at: UnixMs,
    /// When it closed; `None` while open.
    pub ended_at: Option<UnixMs>,
    /// How it closed; `None` while open.
    pub outcome: Option<AttemptOutcome>,
    /// The error, for failed, timed-out and interrupted attempts.
    pub error: Option<String>,
    /// Whether it ended by timeout.
    pub timed_out: bool,
}

impl Attempt {
    /// Duration in milliseconds, if closed.
    pub fn duration_ms(&self) -> Option<u64> {
        self.ended_at.map(|e| e.saturating_sub(self.started_at))
    }
}

/// An owned snapshot of one task (SPEC §1). Times are milliseconds since the Unix epoch.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
pub struct Task {
    /// Opaque, unique, increasing id.
    pub id: TaskId,
    /// The handler name.
    pub name: Arc<str>,
    /// Async or cron.
    pub kind: TaskKind,
    /// Current status.
    pub status: TaskStatus,
    /// Workflow stage; starts at 0, +1 per finished child round or resume.
    pub stage: u32,
    /// Higher runs first.
    pub priority: i32,
    /// Handler input.
    #[serde(with = "crate::codec::json_value")]
    pub payload: Value,
    /// Handler output (or the child entries a resumed parent sees).
    #[serde(with = "crate::codec::opt_json_value")]
    pub result: Option<Value>,
    /// Last error text.
    pub error: Option<String>,
    /// Cron expression of a cron task.
    pub cron: Option<String>,
    /// Maximum executions including the first (0 acts as 1).
    pub max_retries: u32,
    /// Retries already scheduled.
    pub retry_count: u32,
    /// Per-attempt time limit in milliseconds (0 = none).
    pub timeout_ms: u64,
    /// Base retry delay in milliseconds.
    pub retry_interval_ms: u64,
    /// When the task is next eligible to run.
    pub next_run_time: UnixMs,
    /// Creation time.
    pub created_at: UnixMs,
    /// When the current or last attempt started.
    pub start_time: Option<UnixMs>,
    /// Time of the last status change.
    pub last_active_time: UnixMs,
    /// The worker of the current or last attempt.
    pub worker: Option<Arc<str>>,
    /// Free-form label.
    pub tag: Option<String>,
    /// Parent task, for children.
    pub parent_id: Option<TaskId>,
    /// Workflow root, for children.
    pub root_id: Option<TaskId>,
    /// Children created over all rounds.
    pub total_children: u32,
    /// Children whose outcome was delivered.
    pub completed_children: u32,
    /// Opaque bytes owned by this task.
    pub context: Option<Vec<u8>>,
    /// Capability tags a worker must have.
    pub requires: Vec<String>,
    /// Dedup key given at submit.
    pub dedup_key: Option<String>,
    /// What the parent does if this child fails for good.
    pub on_failure: OnChildFailure,
    /// Number of the current or last attempt (0 before the first claim).
    pub attempt: u32,
    /// Snapshot cache: last progress stage name.
    pub current_stage_name: Option<String>,
    /// Snapshot cache: last progress text.
    pub progress_text: Option<String>,
    /// Snapshot cache: last progress percentage.
    pub progress_percent: Option<u8>,
    /// Snapshot cache: time of the last event.
    pub last_event_time: Option<UnixMs>,
    /// Snapshot cache: type of the last event.
    pub last_event_type: Option<EventType>,
}

impl Task {
    /// Whether a retry remains after the current failure (SPEC §4).
    pub fn retry_left(&self) -> bool {
        self.retry_count + 1 < self.max_retries.max(1)
    }
}
