//! The deterministic state machine: `apply(record) -> new state + effects`.
//!
//! The engine owns the task table of one shard, with each task's attempts and audit
//! events. It has no threads, no clock and no I/O: every time it needs comes in the
//! record. Live operation and log replay call the same [`Shard::apply`], which is
//! what makes invariant I1 (replay reproduces the live state) hold by construction.
//!
//! A record changes exactly one task (I3), so records on different tasks commute and
//! a table split into shards by task id reaches the same state whatever the
//! interleaving of shards, as long as each task's records are applied in log order.

pub mod audit;
pub mod schedule;
pub mod task;
mod transition;
pub mod workflow;

use crate::codec::{ChildOutcome, TaskId, UnixMs};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashMap};

pub use audit::{Event, EventType};
pub use task::{Attempt, AttemptOutcome, Task, TaskStatus};
pub use workflow::Round;

/// An invalid transition: a value, never a panic.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum TransitionError {
    /// No such task.
    #[error("task {0} does not exist (it may have been deleted or removed by retention)")]
    NotFound(TaskId),
    /// A task with this id already exists.
    #[error("task {0} already exists")]
    Duplicate(TaskId),
    /// The status table of SPEC §2 forbids this change.
    #[error("task {id} cannot go from {from} to {to}")]
    InvalidTransition {
        /// The task.
        id: TaskId,
        /// Its status.
        from: TaskStatus,
        /// The refused status.
        to: TaskStatus,
    },
    /// The write came from an attempt that no longer owns the task.
    #[error("attempt {attempt} of task {id} no longer owns the task (it timed out, was paused or was recovered)")]
    Stale {
        /// The task.
        id: TaskId,
        /// The stale attempt.
        attempt: u32,
    },
    /// The child's outcome was already delivered, or the parent does not wait for it.
    #[error("task {parent} is not waiting for child {child}")]
    NotAwaited {
        /// The parent.
        parent: TaskId,
        /// The child.
        child: TaskId,
    },
    /// A value in the record is not acceptable.
    #[error("{0}")]
    Invalid(String),
}

/// A task's full in-memory entry: the task, its history and its open child round.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
pub struct TaskEntry {
    /// The task snapshot.
    pub task: Task,
    /// Its audit events, in order, compactly (see [`TaskEntry::event_list`]).
    pub events: Vec<audit::EventRow>,
    /// Its attempts, in order.
    pub attempts: Vec<Attempt>,
    /// The child round the task waits on, if suspended for children (boxed: most
    /// tasks never have one, and an empty slot then costs 8 bytes, not 48).
    pub round: Option<Box<Round>>,
    /// The reason of the latest explicit suspension.
    pub suspend_reason: Option<String>,
    /// Attempts interrupted by a stop in a row (reset by any other outcome).
    pub interruptions: u32,
}

impl TaskEntry {
    /// The task's events in full.
    pub fn event_list(&self) -> Vec<Event> {
        (0..self.events.len())
            .filter_map(|i| self.event(i))
            .collect()
    }

    /// Event `i` in full: ids from the task, worker from the attempt.
    pub fn event(&self, i: usize) -> Option<Event> {
        let row = self.events.get(i)?;
        let t = &self.task;
        let attempt = (row.attempt > 0).then_some(row.attempt);
        let worker = attempt
            .and_then(|n| self.attempts.get(n as usize - 1))
            .map(|a| a.worker.clone());
        let (message, metadata) = match &row.extra {
            Some(x) => (x.message.clone(), x.metadata.clone()),
            None => (None, serde_json::Value::Null),
        };
        Some(Event {
            id: i as u64,
            task_id: t.id,
            root_id: t.root_id,
            parent_id: t.parent_id,
            event_type: row.ty,
            from_status: row.from,
            to_status: row.to,
            stage: row.stage,
            worker,
            attempt,
            time: row.time,
            message,
            metadata,
        })
    }
}

/// What a transition means for the world outside the engine.
#[derive(Clone, PartialEq, Debug, Default)]
#[must_use]
pub struct Applied {
    /// The task became `pending`, eligible at this time.
    pub ready_at: Option<UnixMs>,
    /// The task failed with a retry left: a `Retry` record is due at this time.
    pub retry_at: Option<UnixMs>,
    /// The task left `running` (a worker slot is free, timers are stale).
    pub left_running: bool,
    /// The task reached a status `wait` returns at.
    pub terminal: bool,
    /// A child finished for good: deliver this to its parent as a `ChildDone` record.
    pub notify_parent: Option<ParentNotice>,
    /// The task was deleted; its dedup key (if any) is free.
    pub deleted: Option<Box<Task>>,
}

/// A child's final outcome, to be appended as a `ChildDone` record on the parent.
#[derive(Clone, PartialEq, Debug)]
pub struct ParentNotice {
    /// The parent.
    pub parent: TaskId,
    /// The finished child.
    pub child: TaskId,
    /// Its outcome.
    pub outcome: ChildOutcome,
    /// Whether the child's failure fails the parent.
    pub fail_parent: bool,
}

/// Hashes a task id with one multiplication (Fibonacci hashing). Ids are
/// unique integers chosen by fibflow, not by an attacker, so SipHash's
/// flood resistance buys nothing on this path and costs a few percent of throughput.
#[derive(Default, Clone, Copy, Debug)]
pub struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0 ^ n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// A map keyed by task id.
pub type IdMap<V> = HashMap<TaskId, V, std::hash::BuildHasherDefault<IdHasher>>;

impl ParentNotice {
    /// The notice a child owes its parent: `Some` for a child that completed or
    /// failed for good. Used when the child finishes, and again at reopen for a
    /// delivery a crash cut off.
    pub fn of(child: &Task) -> Option<ParentNotice> {
        let parent = child.parent_id?;
        let outcome = match child.status {
            TaskStatus::Completed => {
                ChildOutcome::Completed(child.result.clone().unwrap_or(serde_json::Value::Null))
            }
            TaskStatus::PermanentlyFailed => {
                ChildOutcome::Failed(child.error.clone().unwrap_or_default())
            }
            _ => return None,
        };
        let fail_parent = matches!(outcome, ChildOutcome::Failed(_))
            && child.on_failure == crate::codec::OnChildFailure::FailParent;
        Some(ParentNotice {
            parent,
            child: child.id,
            outcome,
            fail_parent,
        })
    }
}

/// The task table of one shard. Entries are boxed: a hash table keeps spare
/// slots (up to half of them right after it grows), and a spare slot of a boxed
/// entry costs 8 bytes instead of the entry's full size.
#[derive(Default, Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Shard {
    tasks: IdMap<Box<TaskEntry>>,
    /// Secondary indexes; derived from `tasks`, changed only at creation and
    /// deletion, so the hot transitions never touch them.
    index: Index,
    /// Tasks per status (indexed like `TaskStatus::ALL`), so counting by status
    /// costs 8 numbers per shard instead of a scan that holds the shard lock.
    counts: [u64; 8],
}

/// Task ids by tag and by workflow root, so filtered queries cost the size of
/// the answer rather than the size of the history.
#[derive(Default, Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Index {
    by_tag: HashMap<String, BTreeSet<TaskId>>,
    by_root: IdMap<BTreeSet<TaskId>>,
}

impl Index {
    fn add(&mut self, t: &Task) {
        if let Some(tag) = &t.tag {
            self.by_tag.entry(tag.clone()).or_default().insert(t.id);
        }
        if let Some(root) = t.root_id {
            self.by_root.entry(root).or_default().insert(t.id);
        }
    }

    fn remove(&mut self, t: &Task) {
        if let Some(tag) = &t.tag {
            if let Some(set) = self.by_tag.get_mut(tag) {
                set.remove(&t.id);
                if set.is_empty() {
                    self.by_tag.remove(tag);
                }
            }
        }
        if let Some(root) = t.root_id {
            if let Some(set) = self.by_root.get_mut(&root) {
                set.remove(&t.id);
                if set.is_empty() {
                    self.by_root.remove(&root);
                }
            }
        }
    }
}

impl Shard {
    /// An empty shard.
    pub fn new() -> Shard {
        Shard::default()
    }

    /// The entry of a task.
    pub fn get(&self, id: TaskId) -> Option<&TaskEntry> {
        self.tasks.get(&id).map(|b| &**b)
    }

    /// Every entry, in no particular order.
    pub fn entries(&self) -> impl Iterator<Item = &TaskEntry> {
        self.tasks.values().map(|b| &**b)
    }

    /// Number of tasks.
    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    /// Whether the shard has no tasks.
    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }

    /// Inserts an entry restored from a snapshot.
    pub fn restore(&mut self, entry: TaskEntry) {
        self.index.add(&entry.task);
        self.counts[entry.task.status as usize] += 1;
        if let Some(old) = self.tasks.get(&entry.task.id) {
            self.counts[old.task.status as usize] -= 1;
        }
        self.tasks.insert(entry.task.id, Box::new(entry));
    }

    /// Applies one record. On error the shard is unchanged.
    pub fn apply(&mut self, record: crate::codec::Record) -> Result<Applied, TransitionError> {
        let id = record.task_id();
        let created = matches!(record, crate::codec::Record::Submit(_));
        // A new task has no status before; everyone else's is looked up once.
        let before = if created {
            None
        } else {
            self.tasks.get(&id).map(|e| e.task.status)
        };
        let applied = transition::apply(&mut self.tasks, record)?;
        let entry = self.tasks.get(&id);
        let after = entry.map(|e| e.task.status);
        if before != after {
            if let Some(s) = before {
                self.counts[s as usize] -= 1;
            }
            if let Some(s) = after {
                self.counts[s as usize] += 1;
            }
        }
        if let Some(e) = entry.filter(|_| created) {
            self.index.add(&e.task);
        }
        if let Some(t) = &applied.deleted {
            self.index.remove(t);
        }
        Ok(applied)
    }

    /// Tasks per status in this shard, in the order of `TaskStatus::ALL`.
    pub fn status_counts(&self) -> [u64; 8] {
        self.counts
    }

    /// Tasks with this tag, in id order (an index lookup).
    pub fn with_tag(&self, tag: &str) -> impl Iterator<Item = &TaskEntry> {
        self.index
            .by_tag
            .get(tag)
            .into_iter()
            .flatten()
            .filter_map(|id| self.get(*id))
    }

    /// Descendants of a workflow root, in id order (an index lookup).
    pub fn under_root(&self, root: TaskId) -> impl Iterator<Item = &TaskEntry> {
        self.index
            .by_root
            .get(&root)
            .into_iter()
            .flatten()
            .filter_map(|id| self.get(*id))
    }

    /// The entry of a task, mutably: only for the runtime's rebuild after replay.
    pub fn get_mut(&mut self, id: TaskId) -> Option<&mut TaskEntry> {
        self.tasks.get_mut(&id).map(|b| &mut **b)
    }
}

#[cfg(test)]
mod tests;
