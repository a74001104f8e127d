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
mod slot;
pub mod task;
mod transition;
pub mod workflow;

use crate::codec::{ChildOutcome, TaskId, UnixMs};
use serde::{Deserialize, Serialize};
use slot::Slot;
use std::borrow::Cow;
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

/// A task's event rows: four inline (created, claimed, started, and its outcome).
pub type EventRows = smallvec::SmallVec<[audit::EventRow; 4]>;

/// A task's attempts: one inline.
pub type Attempts = smallvec::SmallVec<[Attempt; 1]>;

/// A task's full in-memory entry: the task, its history and its open child round.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
pub struct TaskEntry {
    /// The task snapshot.
    pub task: Task,
    /// Its audit events, in order, compactly (see [`TaskEntry::event_list`]).
    /// The four of a plain task are kept inline: a task then costs one
    /// allocation, not three, when it is created.
    pub events: EventRows,
    /// Its attempts, in order (the first inline).
    pub attempts: Attempts,
    /// The child round the task waits on, if suspended for children (boxed: most
    /// tasks never have one, and an empty slot then costs 8 bytes, not 48).
    pub round: Option<Box<Round>>,
    /// The reason of the latest explicit suspension.
    pub suspend_reason: Option<String>,
    /// Attempts interrupted by a stop in a row (reset by any other outcome).
    pub interruptions: u32,
}

impl TaskEntry {
    /// An entry with this task, history and attempts, and no child round,
    /// suspension reason or interruption.
    pub(crate) fn new(task: Task, events: EventRows, attempts: Attempts) -> TaskEntry {
        TaskEntry {
            task,
            events,
            attempts,
            round: None,
            suspend_reason: None,
            interruptions: 0,
        }
    }

    /// Whether this is a pending cron task waiting for an occurrence of its
    /// schedule (created, or a round done, or moved by catch-up), as opposed
    /// to one made pending by a retry, a resume or its children's fan-in,
    /// whose run time is not an occurrence: only the former can have missed
    /// one (SPEC §7), so only it is subject to the catch-up policy.
    pub(crate) fn awaits_occurrence(&self) -> bool {
        let t = &self.task;
        if t.kind != crate::codec::TaskKind::Cron
            || t.status != TaskStatus::Pending
            || t.stage != 0
            || t.retry_count != 0
        {
            return false;
        }
        // The event that last made it pending; a recovery (running -> pending)
        // keeps the run time of the attempt it interrupted, so look past it.
        let made_pending = self
            .events
            .iter()
            .rev()
            .find(|ev| ev.to == Some(TaskStatus::Pending) && ev.ty != EventType::Recovered);
        !made_pending.is_some_and(|ev| {
            ev.ty == EventType::Resumed
                || ev.ty == EventType::RetryScheduled
                || (ev.ty == EventType::StatusChanged && ev.from != Some(TaskStatus::Running))
        })
    }

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
            // Derived, not stored (see `transition::submit`); fib-flow's shape.
            None if row.ty == EventType::Created => (
                Some(format!("Task {} created", t.name)),
                serde_json::json!({
                    "name": &*t.name,
                    "type": match t.kind {
                        crate::codec::TaskKind::Async => "async",
                        crate::codec::TaskKind::Cron => "cron",
                    },
                    "tag": t.tag,
                }),
            ),
            None => (None, serde_json::Value::Null),
        };
        Some(Event {
            id: i as u64,
            task_id: t.id,
            // A root task's events name it as their root (fib-flow's
            // `normalizeRootId`), so a workflow's events share one root id.
            root_id: t.root_id.or(Some(t.id)),
            parent_id: t.parent_id,
            event_type: row.ty,
            from_status: row.from,
            to_status: row.to,
            stage: row.stage,
            worker,
            attempt,
            time: row.time,
            sequence: row.seq,
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
    /// Ids of one shard that were made one after another land in neighbouring
    /// buckets, so a table walked in id order (dispatch claims, replay, a burst
    /// of submits) is walked nearly in memory order instead of missing the
    /// cache on every lookup. An id is `counter << 4 | shard`
    /// (`Store::alloc_id`): the tasks of one shard have counters 16 apart, so
    /// the counter divided by 16 is their bucket, each in the lane of its
    /// counter's low bits. Children share their parent's shard with
    /// consecutive counters: they take the 16 lanes in turn, each lane again
    /// one task per bucket, where one lane would stack 16 children on each
    /// bucket and cluster a large fan-out. The top seven bits, which hashbrown
    /// compares before keys, are mixed from the whole id.
    fn write_u64(&mut self, n: u64) {
        let n = self.0 ^ n;
        let counter = n >> 4;
        let lane = (counter & 15).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let mixed = n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        self.0 = ((counter >> 4).wrapping_add(lane) & !(0x7F << 57)) | (mixed & (0x7F << 57));
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

/// The task table of one shard. Live entries are boxed: a hash table keeps spare
/// slots (up to half of them right after it grows), and a spare slot then costs
/// the size of a slot (a box or a frozen task), not the entry's full size.
/// Finished tasks are frozen (see the `slot` module).
#[derive(Default, Debug, Clone)]
pub struct Shard {
    tasks: IdMap<Slot>,
    /// Secondary indexes; derived from `tasks`, changed only at creation and
    /// deletion, so the hot transitions never touch them.
    index: Index,
    /// Tasks per status (indexed like `TaskStatus::ALL`), so counting by status
    /// costs 8 numbers per shard instead of a scan that holds the shard lock.
    counts: [u64; 8],
    /// Boxes of frozen entries, reused by the next submits: freeing them on a
    /// worker thread after the submitter allocated them costs glibc's allocator
    /// a contended cross-thread free each.
    #[allow(clippy::vec_box)] // the boxes are what is reused
    spare: Vec<Box<TaskEntry>>,
    /// The next event sequence number of this shard (see `EventRow::seq`).
    event_seq: u32,
    /// Tasks [`Shard::replay`] left as their submit records.
    unbuilt: usize,
}

/// At most this many spare entry boxes are kept per shard.
const SPARE_ENTRIES: usize = 128;

impl PartialEq for Shard {
    /// The same tasks with the same histories; frozen or live does not matter.
    fn eq(&self, other: &Shard) -> bool {
        self.counts == other.counts
            && self.index == other.index
            && self.tasks.len() == other.tasks.len()
            && self
                .tasks
                .iter()
                .all(|(id, s)| other.tasks.get(id).is_some_and(|o| o == s))
    }
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
        self.add_ids(t.id, t.tag.clone(), t.root_id);
    }

    fn add_ids(&mut self, id: TaskId, tag: Option<String>, root: Option<TaskId>) {
        if let Some(tag) = tag {
            self.by_tag.entry(tag).or_default().insert(id);
        }
        if let Some(root) = root {
            self.by_root.entry(root).or_default().insert(id);
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

/// A shard as a snapshot stores it: its tasks as held (finished ones as their
/// frozen bytes) and its indexes, so that loading it decodes nothing.
/// Serializes exactly like [`ShardImage`], which reads it back.
#[derive(Serialize)]
pub struct ShardImageRef<'a> {
    tasks: SlotSeq<'a>,
    index: &'a Index,
    event_seq: u32,
}

/// The tasks of a shard, serialized as a sequence of `(id, slot)`.
struct SlotSeq<'a>(&'a IdMap<Slot>);

impl Serialize for SlotSeq<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter())
    }
}

/// A shard read back from a snapshot (see [`ShardImageRef`]).
#[derive(Deserialize)]
pub struct ShardImage {
    tasks: Vec<(TaskId, Slot)>,
    index: Index,
    event_seq: u32,
}

/// A task in a scan: its id, status and creation time without decoding, the
/// whole entry on demand.
#[derive(Clone, Copy)]
pub struct SlotRef<'a> {
    id: TaskId,
    slot: &'a Slot,
}

impl<'a> SlotRef<'a> {
    /// The task id.
    pub fn id(&self) -> TaskId {
        self.id
    }
    /// The task's status.
    pub fn status(&self) -> TaskStatus {
        self.slot.status()
    }
    /// The task's creation time.
    pub fn created_at(&self) -> UnixMs {
        self.slot.created_at()
    }
    /// The time of the task's last status change.
    pub fn last_active_time(&self) -> UnixMs {
        self.slot.last_active()
    }
    /// The entry (decoded if the task is frozen; `None` if that failed).
    pub fn entry(&self) -> Option<Cow<'a, TaskEntry>> {
        self.slot.entry()
    }
}

impl Shard {
    /// An empty shard.
    pub fn new() -> Shard {
        Shard::default()
    }

    /// Makes room for `n` more tasks in the task table, so that a replay
    /// that knows roughly how many tasks are coming does not grow the table
    /// (and move every entry) a dozen times on the way.
    pub fn reserve(&mut self, n: usize) {
        self.tasks.reserve(n);
    }

    /// The entry of a task (decoded if the task is finished and frozen).
    pub fn get(&self, id: TaskId) -> Option<Cow<'_, TaskEntry>> {
        self.tasks.get(&id).and_then(Slot::entry)
    }

    /// The entry of a task that is not finished (`None` for a finished one):
    /// for the paths that act on pending, running or waiting tasks.
    pub fn live(&self, id: TaskId) -> Option<&TaskEntry> {
        self.tasks.get(&id).and_then(Slot::live)
    }

    /// The status of a task, without decoding it.
    pub fn status(&self, id: TaskId) -> Option<TaskStatus> {
        self.tasks.get(&id).map(Slot::status)
    }

    /// Every task, in no particular order.
    pub fn slots(&self) -> impl Iterator<Item = SlotRef<'_>> {
        self.tasks
            .iter()
            .map(|(id, slot)| SlotRef { id: *id, slot })
    }

    /// Every task that is not finished (finished ones are never pending,
    /// running or suspended, so recovery and catch-up look only here).
    pub fn live_entries(&self) -> impl Iterator<Item = &TaskEntry> {
        self.tasks.values().filter_map(Slot::live)
    }

    /// Every entry, in no particular order (finished ones decoded).
    pub fn entries(&self) -> impl Iterator<Item = Cow<'_, TaskEntry>> {
        self.tasks.values().filter_map(Slot::entry)
    }

    /// Dedup keys held, with their tasks (decodes only tasks that hold one).
    pub fn dedup_keys(&self) -> impl Iterator<Item = (String, TaskId)> + '_ {
        self.tasks
            .values()
            .filter(|s| s.may_have_dedup())
            .filter_map(|s| {
                let e = s.entry()?;
                e.task.dedup_key.clone().map(|k| (k, e.task.id))
            })
    }

    /// Number of tasks.
    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    /// Whether the shard has no tasks.
    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }

    /// This shard as a snapshot stores it.
    pub fn image(&self) -> ShardImageRef<'_> {
        ShardImageRef {
            tasks: SlotSeq(&self.tasks),
            index: &self.index,
            event_seq: self.event_seq,
        }
    }

    /// Loads a shard image from a snapshot into this (empty) shard without
    /// decoding frozen tasks. Tasks for which `belongs` is false (a snapshot
    /// from a build that shards differently) are returned, decoded, for
    /// [`Shard::restore`] on their own shard; `intern` may share the names
    /// that live entries hold. Returns those strays and the number loaded.
    pub fn load_image(
        &mut self,
        image: ShardImage,
        belongs: impl Fn(TaskId) -> bool,
        mut intern: impl FnMut(&mut TaskEntry),
    ) -> (Vec<TaskEntry>, u64) {
        let ShardImage {
            tasks,
            index,
            event_seq,
        } = image;
        self.event_seq = self.event_seq.max(event_seq);
        let mut strays = Vec::new();
        let mut loaded = 0;
        self.tasks.reserve(tasks.len());
        for (id, mut slot) in tasks {
            if !belongs(id) {
                strays.extend(slot.into_entry());
                continue;
            }
            if let Slot::Live(e) = &mut slot {
                intern(e);
            }
            loaded += 1;
            self.counts[slot.status() as usize] += 1;
            if let Some(old) = self.tasks.insert(id, slot) {
                self.counts[old.status() as usize] -= 1;
            }
            self.freeze(id);
        }
        for (tag, ids) in index.by_tag {
            let ids: BTreeSet<TaskId> = ids.into_iter().filter(|id| belongs(*id)).collect();
            if !ids.is_empty() {
                self.index.by_tag.entry(tag).or_default().extend(ids);
            }
        }
        for (root, ids) in index.by_root {
            let ids: BTreeSet<TaskId> = ids.into_iter().filter(|id| belongs(*id)).collect();
            if !ids.is_empty() {
                self.index.by_root.entry(root).or_default().extend(ids);
            }
        }
        (strays, loaded)
    }

    /// Inserts an entry restored from a snapshot.
    pub fn restore(&mut self, entry: TaskEntry) {
        let id = entry.task.id;
        self.index.add(&entry.task);
        self.counts[entry.task.status as usize] += 1;
        if let Some(old) = self.tasks.get(&id) {
            self.counts[old.status() as usize] -= 1;
        }
        self.tasks.insert(id, Slot::Live(Box::new(entry)));
        self.freeze(id);
    }

    /// Applies one record. On error the shard's state is unchanged.
    pub fn apply(&mut self, record: crate::codec::Record) -> Result<Applied, TransitionError> {
        use crate::codec::Record;
        let id = record.task_id();
        match record {
            Record::Submit(ref new) => {
                // Indexed fields are taken from the record, so the new task is
                // not looked up again after it is inserted.
                let (tag, root) = (new.tag.clone(), new.root_id);
                let applied = transition::apply(
                    &mut self.tasks,
                    &mut self.spare,
                    &mut self.event_seq,
                    record,
                )?;
                self.counts[TaskStatus::Pending as usize] += 1;
                self.index.add_ids(id, tag, root);
                Ok(applied)
            }
            Record::Delete { .. } => {
                let before = self.status(id);
                let applied = transition::apply(
                    &mut self.tasks,
                    &mut self.spare,
                    &mut self.event_seq,
                    record,
                )?;
                if let Some(s) = before {
                    self.counts[s as usize] -= 1;
                }
                if let Some(t) = &applied.deleted {
                    self.index.remove(t);
                }
                Ok(applied)
            }
            // Everything else changes one existing entry: one table lookup.
            _ => {
                let slot = self
                    .tasks
                    .get_mut(&id)
                    .ok_or(TransitionError::NotFound(id))?;
                let before = slot.status();
                let result = match slot.live_mut() {
                    Some(e) => {
                        let from = e.events.len();
                        let r = transition::apply_to(e, record);
                        transition::stamp(e, from, &mut self.event_seq);
                        r
                    }
                    None => Err(TransitionError::Invalid(format!(
                        "task {id} is stored frozen and no longer decodes; this is a fibflow bug, please report it"
                    ))),
                };
                // A task that just finished is frozen; so is one that a refused
                // record thawed (freezing a frozen or unfinished task does nothing).
                if let Some(old) = slot.freeze() {
                    if self.spare.len() < SPARE_ENTRIES {
                        self.spare.push(old);
                    }
                }
                let after = slot.status();
                let applied = result?;
                if before != after {
                    self.counts[before as usize] -= 1;
                    self.counts[after as usize] += 1;
                }
                Ok(applied)
            }
        }
    }

    /// Applies one record read back from the log: the same transition as
    /// [`Shard::apply`], except that a submitted task stays as its decoded
    /// record until its next record comes (`Slot::Submitted`). In a log
    /// written with a backlog, the claims come long after the submits; built
    /// at submit, each entry is cold by then, and building it at the claim
    /// writes it once, into a box a task that just finished left warm.
    /// Call [`Shard::end_replay`] when the replay is over. On error the
    /// shard's state is unchanged.
    pub fn replay(&mut self, record: crate::codec::Record) -> Result<(), TransitionError> {
        use crate::codec::Record;
        let id = record.task_id();
        match record {
            Record::Submit(new) => {
                let std::collections::hash_map::Entry::Vacant(slot) = self.tasks.entry(id) else {
                    return Err(TransitionError::Duplicate(id));
                };
                transition::check_submit(&new)?;
                self.index.add_ids(id, new.tag.clone(), new.root_id);
                self.counts[TaskStatus::Pending as usize] += 1;
                slot.insert(Slot::Submitted(new, self.event_seq));
                // The `created` event's number, as `apply` would stamp it.
                self.event_seq = self.event_seq.wrapping_add(1);
                self.unbuilt += 1;
                Ok(())
            }
            other => {
                if let Some(slot @ Slot::Submitted(..)) = self.tasks.get_mut(&id) {
                    slot.build(&mut self.spare);
                    self.unbuilt -= 1;
                }
                self.apply(other).map(drop)
            }
        }
    }

    /// Builds the entries of the tasks a replay left as submit records, so
    /// that every other method sees only live and frozen tasks.
    pub fn end_replay(&mut self) {
        if self.unbuilt == 0 {
            return;
        }
        for slot in self.tasks.values_mut() {
            slot.build(&mut self.spare);
        }
        self.unbuilt = 0;
    }

    /// Freezes the task if it is finished and still live, keeping its box for the
    /// next submit; returns its status.
    fn freeze(&mut self, id: TaskId) -> Option<TaskStatus> {
        let slot = self.tasks.get_mut(&id)?;
        if let Some(old) = slot.freeze() {
            if self.spare.len() < SPARE_ENTRIES {
                self.spare.push(old);
            }
        }
        Some(slot.status())
    }

    /// Tasks per status in this shard, in the order of `TaskStatus::ALL`.
    pub fn status_counts(&self) -> [u64; 8] {
        self.counts
    }

    /// Tasks with this tag, in id order (an index lookup).
    pub fn with_tag(&self, tag: &str) -> impl Iterator<Item = SlotRef<'_>> {
        self.index
            .by_tag
            .get(tag)
            .into_iter()
            .flatten()
            .filter_map(|id| self.slot(*id))
    }

    /// Descendants of a workflow root, in id order (an index lookup).
    pub fn under_root(&self, root: TaskId) -> impl Iterator<Item = SlotRef<'_>> {
        self.index
            .by_root
            .get(&root)
            .into_iter()
            .flatten()
            .filter_map(|id| self.slot(*id))
    }

    /// One task for a scan.
    pub fn slot(&self, id: TaskId) -> Option<SlotRef<'_>> {
        self.tasks.get(&id).map(|slot| SlotRef { id, slot })
    }
}

#[cfg(test)]
mod tests;
