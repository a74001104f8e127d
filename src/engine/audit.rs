//! Audit events (SPEC §9): the rows `apply` emits for every transition.

use crate::codec::{TaskId, UnixMs};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use super::task::TaskStatus;

macro_rules! event_types {
    ($($variant:ident => $name:literal),* $(,)?) => {
        /// The type of an audit event.
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
        pub enum EventType {
            $(
                #[doc = concat!("`", $name, "`")]
                #[serde(rename = $name)]
                $variant,
            )*
        }

        impl EventType {
            /// Every event type.
            pub const ALL: &'static [EventType] = &[$(EventType::$variant),*];

            /// The snake_case name of SPEC §9.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(EventType::$variant => $name,)*
                }
            }
        }
    };
}

event_types! {
    Created => "task_created",
    Claimed => "task_claimed",
    Started => "task_started",
    RetryStarted => "task_retry_started",
    Completed => "task_completed",
    Failed => "task_failed",
    TimedOut => "task_timed_out",
    RetryScheduled => "task_retry_scheduled",
    Paused => "task_paused",
    PermanentlyFailed => "task_permanently_failed",
    Suspended => "task_suspended",
    Resumed => "task_resumed",
    Recovered => "task_recovered",
    StatusChanged => "task_status_changed",
    SubtasksCreated => "task_subtasks_created",
    Progress => "task_progress",
    Checkpoint => "task_checkpoint",
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An unknown event type name was given.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown event type `{0}`: use one of the task_* names of the audit documentation (e.g. task_created, task_completed)")]
pub struct UnknownEventType(pub String);

impl FromStr for EventType {
    type Err = UnknownEventType;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        EventType::ALL
            .iter()
            .copied()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| UnknownEventType(s.to_owned()))
    }
}

/// An audit row as the engine keeps it: 32 bytes, with what the task already
/// knows (ids, worker of the attempt) left out and rare fields boxed.
/// [`TaskEntry::event_list`](super::TaskEntry::event_list) turns rows into [`Event`]s.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
pub struct EventRow {
    /// When.
    pub time: UnixMs,
    /// Its place among all events of its shard, in the order they were recorded
    /// (`Shard::apply` stamps it; a workflow's tasks share one shard).
    pub seq: u32,
    /// The attempt involved, 0 for none.
    pub attempt: u32,
    /// The task's stage at the time.
    pub stage: u32,
    /// What happened.
    pub ty: EventType,
    /// Status before.
    pub from: Option<TaskStatus>,
    /// Status after.
    pub to: Option<TaskStatus>,
    /// Message and metadata, when there are any.
    pub extra: Option<Box<EventExtra>>,
}

// The row stays 32 bytes (the sequence number fits in what was padding).
const _: () = assert!(std::mem::size_of::<EventRow>() == 32);

/// The rarely present parts of an event.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
pub struct EventExtra {
    /// Free text.
    pub message: Option<String>,
    /// Structured details.
    #[serde(with = "crate::codec::json_value")]
    pub metadata: Value,
}

/// One audit row.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
pub struct Event {
    /// The event's index in its task's history: `(task_id, id)` identifies an event.
    pub id: u64,
    /// The task.
    pub task_id: TaskId,
    /// The task's workflow root: the task itself for a root task.
    pub root_id: Option<TaskId>,
    /// The task's parent.
    pub parent_id: Option<TaskId>,
    /// What happened.
    pub event_type: EventType,
    /// Status before, for status changes.
    pub from_status: Option<TaskStatus>,
    /// Status after, for status changes.
    pub to_status: Option<TaskStatus>,
    /// The task's stage at the time.
    pub stage: u32,
    /// The worker involved.
    pub worker: Option<Arc<str>>,
    /// The attempt involved.
    pub attempt: Option<u32>,
    /// When.
    pub time: UnixMs,
    /// The order in which events were recorded among the tasks of one shard (a
    /// workflow's tasks share one): sorting a workflow's events by
    /// `(time, sequence)` gives the order they happened in, like fib-flow's
    /// global event id. Wraps after 2^32 events in a shard.
    pub sequence: u32,
    /// Free text.
    pub message: Option<String>,
    /// Structured details (`Value::Null` when none).
    #[serde(with = "crate::codec::json_value")]
    pub metadata: Value,
}
