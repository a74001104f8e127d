//! The public error type of the manager.

use crate::codec::TaskId;
use crate::engine::schedule::ScheduleError;
use crate::engine::TransitionError;
use crate::log::LogError;
use std::time::Duration;

/// Everything a manager call can refuse or fail with. Nothing in the log changes
/// when a call is refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Submitting (or spawning) a task whose handler is not registered.
    #[error("No handler registered for task: {0}")]
    NoHandler(String),
    /// `task_info` of a name with no registration (fib-flow's wording).
    #[error("No task registered with name: {0}")]
    NotRegistered(String),
    /// An empty task or handler name.
    #[error("Task name is required: a task name must not be empty")]
    EmptyName,
    /// A capability tag that is empty or contains whitespace or commas, or an
    /// empty task tag.
    #[error("invalid tag `{0}`: a task tag must be non-empty; a capability tag must also contain no whitespace or commas")]
    InvalidTag(String),
    /// A configuration or option value that cannot work.
    #[error("invalid option: {0}")]
    InvalidOption(String),
    /// A bad cron expression, time zone or retry strategy.
    #[error(transparent)]
    Schedule(#[from] ScheduleError),
    /// No task has this id.
    #[error("task {0} not found (it may have been deleted or removed by retention)")]
    NotFound(TaskId),
    /// The task is not in a status that allows the call.
    #[error(transparent)]
    Transition(#[from] TransitionError),
    /// The write-ahead log failed; see the message for what to do.
    #[error(transparent)]
    Log(#[from] LogError),
    /// A payload or result could not be encoded.
    #[error(transparent)]
    Encode(#[from] crate::codec::EncodeError),
    /// A record or snapshot could not be decoded during recovery.
    #[error("cannot recover the log: {0}")]
    Recovery(String),
    /// `wait` reached its deadline first.
    #[error("task {id} did not reach a terminal status within {waited:?}")]
    WaitTimeout {
        /// The task.
        id: TaskId,
        /// How long the call waited.
        waited: Duration,
    },
    /// The manager was stopped.
    #[error("the task manager is stopped; build a new one to continue")]
    Stopped,
    /// An operating-system error outside the log (threads, runtime).
    #[error("{context}: {source}")]
    Io {
        /// What fibflow was doing.
        context: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// Result alias of the manager API.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Checks a task's free-form tag (SPEC §13): any non-empty text, like fib-flow.
pub(crate) fn check_task_tag(tag: &str) -> Result<()> {
    if tag.is_empty() {
        Err(Error::InvalidTag(tag.to_owned()))
    } else {
        Ok(())
    }
}

/// Checks a capability tag: non-empty, no whitespace, no commas.
pub(crate) fn check_tag(tag: &str) -> Result<()> {
    if tag.is_empty() || tag.chars().any(|c| c.is_whitespace() || c == ',') {
        Err(Error::InvalidTag(tag.to_owned()))
    } else {
        Ok(())
    }
}
