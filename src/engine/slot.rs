//! How the task table holds one task: a finished task is kept frozen.
//!
//! A task that reached `completed` or `permanently_failed` changes again only by
//! deletion, yet it is most of what a long-running engine holds (issue 5: one
//! million retained tasks). Such a task is kept as a compact encoding of its
//! [`TaskEntry`] (`pack`; see `docs/wire-format.md`): times relative to its
//! creation, fields that repeat others left out, and the three fields that scans
//! read (status, creation time and finishing time) beside the bytes. A plain
//! finished task then costs about 260 bytes of memory instead of about 820.
//! Reading it decodes the bytes (about a microsecond); filtered queries decode
//! only what they return.
//!
//! A task is frozen by the `Shard::apply` that finishes it, and its live box is
//! kept for the next submit to reuse, so the finishing path encodes about 110
//! bytes (on the stack, then one exact allocation) but neither frees nor (at
//! the next submit) allocates the entry.
//! Freezing costs in-memory throughput (roughly a tenth to a fifth in `fibflow
//! bench`): freeing or reusing the live structs is paid when a task finishes,
//! where the old design never paid it during a run.

use super::{TaskEntry, TaskStatus};
use crate::codec::{NewTask, TaskId, UnixMs};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;

mod pack;

/// A task in the table: live (mutable structs) or frozen (encoded bytes), or
/// during a replay only, as its submit record.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) enum Slot {
    /// Pending, running, waiting or paused: the structs, changed in place.
    Live(Box<TaskEntry>),
    /// Finished: encoded, with what scans read beside the bytes.
    Frozen(Frozen),
    /// A task replayed from its submit record and not yet changed by another:
    /// the decoded record and the sequence number of its `created` event.
    /// Replay builds the entry when the next record of the task comes (see
    /// `Shard::replay`), so a log with a long backlog does not write out a
    /// full entry per submit, all of them gone cold by the claim. Exists only
    /// between `Shard::replay` and `Shard::end_replay`, so never in a snapshot.
    #[serde(skip)]
    Submitted(Box<NewTask>, u32),
}

/// The entry a replayed submit record creates (see [`Slot::Submitted`]).
fn submitted_entry(new: &NewTask, mut seq: u32) -> TaskEntry {
    *super::transition::new_entry(new.clone(), &mut Vec::new(), &mut seq)
}

/// A finished task, encoded.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Frozen {
    created_at: UnixMs,
    /// When it finished (retention reads it).
    last_active: UnixMs,
    status: TaskStatus,
    /// Whether the task holds a dedup key (found without decoding at reopen).
    dedup: bool,
    bytes: Box<[u8]>,
}

/// Whether a task in this status is kept frozen.
pub(crate) fn freezes(status: TaskStatus) -> bool {
    matches!(
        status,
        TaskStatus::Completed | TaskStatus::PermanentlyFailed
    )
}

impl Slot {
    /// The entry, decoded if frozen.
    /// (`None` only if frozen bytes failed to decode, which `decode` explains.)
    pub(crate) fn entry(&self) -> Option<Cow<'_, TaskEntry>> {
        match self {
            Slot::Live(e) => Some(Cow::Borrowed(e)),
            Slot::Frozen(f) => f.decode().map(Cow::Owned),
            Slot::Submitted(new, seq) => Some(Cow::Owned(submitted_entry(new, *seq))),
        }
    }

    /// The live entry, mutably, thawing a frozen one first.
    pub(crate) fn live_mut(&mut self) -> Option<&mut TaskEntry> {
        match self {
            Slot::Frozen(f) => *self = Slot::Live(Box::new(f.decode()?)),
            Slot::Submitted(..) => self.build(&mut Vec::new()),
            Slot::Live(_) => {}
        }
        match self {
            Slot::Live(e) => Some(e),
            Slot::Frozen(_) | Slot::Submitted(..) => None,
        }
    }

    /// Turns a replayed submit record into the live entry it creates, in a
    /// spare box if there is one; anything else is left as it is.
    #[allow(clippy::vec_box)] // the boxes are what is reused
    pub(crate) fn build(&mut self, spare: &mut Vec<Box<TaskEntry>>) {
        if !matches!(self, Slot::Submitted(..)) {
            return;
        }
        // Stands in for the moment the record is moved out; allocates nothing.
        let placeholder = Slot::Frozen(Frozen {
            created_at: 0,
            last_active: 0,
            status: TaskStatus::Pending,
            dedup: false,
            bytes: Box::default(),
        });
        if let Slot::Submitted(new, mut seq) = std::mem::replace(self, placeholder) {
            *self = Slot::Live(super::transition::new_entry(*new, spare, &mut seq));
        }
    }

    /// The live entry, if not frozen.
    pub(crate) fn live(&self) -> Option<&TaskEntry> {
        match self {
            Slot::Live(e) => Some(e),
            Slot::Frozen(_) => None,
            Slot::Submitted(..) => {
                debug_assert!(false, "a replay left a task unbuilt");
                None
            }
        }
    }

    /// The entry by value.
    pub(crate) fn into_entry(self) -> Option<TaskEntry> {
        match self {
            Slot::Live(e) => Some(*e),
            Slot::Frozen(f) => f.decode(),
            Slot::Submitted(new, seq) => Some(submitted_entry(&new, seq)),
        }
    }

    pub(crate) fn status(&self) -> TaskStatus {
        match self {
            Slot::Live(e) => e.task.status,
            Slot::Frozen(f) => f.status,
            Slot::Submitted(..) => TaskStatus::Pending,
        }
    }

    pub(crate) fn created_at(&self) -> UnixMs {
        match self {
            Slot::Live(e) => e.task.created_at,
            Slot::Frozen(f) => f.created_at,
            Slot::Submitted(new, _) => new.created_ms,
        }
    }

    pub(crate) fn last_active(&self) -> UnixMs {
        match self {
            Slot::Live(e) => e.task.last_active_time,
            Slot::Frozen(f) => f.last_active,
            Slot::Submitted(new, _) => new.created_ms,
        }
    }

    /// Whether the task may hold a dedup key (true means: look).
    pub(crate) fn may_have_dedup(&self) -> bool {
        match self {
            Slot::Live(e) => e.task.dedup_key.is_some(),
            Slot::Frozen(f) => f.dedup,
            Slot::Submitted(new, _) => new.dedup_key.is_some(),
        }
    }

    /// Freezes a live finished task into one exact allocation. Returns the live
    /// entry's box for reuse (its contents are stale).
    #[allow(clippy::vec_box)] // the boxes are what is reused
    pub(crate) fn freeze(&mut self) -> Option<Box<TaskEntry>> {
        let Slot::Live(e) = self else { return None };
        if !freezes(e.task.status) {
            return None;
        }
        #[cfg(test)]
        let original = (**e).clone();
        let (created_at, last_active) = (e.task.created_at, e.task.last_active_time);
        let (status, dedup) = (e.task.status, e.task.dedup_key.is_some());
        shrink(e);
        let bytes = pack::to_box(e);
        let frozen = Frozen {
            created_at,
            last_active,
            status,
            dedup,
            bytes,
        };
        #[cfg(test)]
        assert_eq!(frozen.decode(), Some(original), "freezing loses nothing");
        match std::mem::replace(self, Slot::Frozen(frozen)) {
            Slot::Live(e) => Some(e),
            Slot::Frozen(_) | Slot::Submitted(..) => None,
        }
    }
}

impl Frozen {
    /// The entry. The bytes were encoded by `Slot::freeze` in this process from
    /// a value of the same type and never change, so this cannot fail short of
    /// a bug; if it does, debug builds stop here and release builds treat the
    /// task as unreadable (absent from reads, refused by transitions).
    fn decode(&self) -> Option<TaskEntry> {
        let decoded = pack::read(&self.bytes);
        debug_assert!(decoded.is_some(), "a frozen task does not decode");
        let mut e = decoded?;
        e.task.created_at = self.created_at;
        expand(&mut e);
        Some(e)
    }
}

/// Rewrites a finished entry for encoding: times relative to its creation (a
/// varint of a few bytes instead of six) and fields that repeat others left out.
/// [`expand`] undoes it exactly; unit tests check the round trip on every freeze.
fn shrink(e: &mut TaskEntry) {
    let base = e.task.created_at;
    let rel = |t: &mut UnixMs| *t = t.wrapping_sub(base);
    let t = &mut e.task;
    t.created_at = 0; // kept beside the bytes
    rel(&mut t.next_run_time);
    rel(&mut t.last_active_time);
    if let Some(s) = &mut t.start_time {
        rel(s);
    }
    if let (Some(last), Some(time), Some(ty)) =
        (e.events.last(), t.last_event_time, t.last_event_type)
    {
        if last.time == time && last.ty == ty {
            t.last_event_time = None;
            t.last_event_type = None;
        }
    }
    // The worker is usually the last attempt's: left out then. A task with
    // attempts but no worker (recovered, then finished for good by quarantine)
    // is marked with an empty name, which no worker has.
    match (e.attempts.last(), &t.worker) {
        (Some(a), Some(w)) if a.worker == *w => t.worker = None,
        (Some(_), None) => t.worker = Some("".into()),
        _ => {}
    }
    for ev in &mut e.events {
        rel(&mut ev.time);
    }
    for (i, a) in e.attempts.iter_mut().enumerate() {
        if a.task_id == t.id {
            a.task_id = TaskId(0);
        }
        if a.number as usize == i + 1 {
            a.number = 0;
        }
        rel(&mut a.started_at);
        if let Some(x) = &mut a.ended_at {
            rel(x);
        }
    }
}

/// Undoes [`shrink`] (with `created_at` already restored).
fn expand(e: &mut TaskEntry) {
    let base = e.task.created_at;
    let abs = |t: &mut UnixMs| *t = t.wrapping_add(base);
    let t = &mut e.task;
    abs(&mut t.next_run_time);
    abs(&mut t.last_active_time);
    if let Some(s) = &mut t.start_time {
        abs(s);
    }
    for ev in &mut e.events {
        abs(&mut ev.time);
    }
    if t.last_event_time.is_none() {
        if let Some(last) = e.events.last() {
            t.last_event_time = Some(last.time);
            t.last_event_type = Some(last.ty);
        }
    }
    for (i, a) in e.attempts.iter_mut().enumerate() {
        if a.task_id == TaskId(0) {
            a.task_id = t.id;
        }
        if a.number == 0 {
            a.number = u32::try_from(i + 1).unwrap_or(u32::MAX);
        }
        abs(&mut a.started_at);
        if let Some(x) = &mut a.ended_at {
            abs(x);
        }
    }
    match &t.worker {
        None => t.worker = e.attempts.last().map(|a| a.worker.clone()),
        Some(w) if w.is_empty() => t.worker = None,
        Some(_) => {}
    }
}

impl PartialEq for Slot {
    /// Equal when the entries are: frozen or not is representation, not state.
    fn eq(&self, other: &Slot) -> bool {
        self.entry() == other.entry()
    }
}
