//! The transition functions behind [`Shard::apply`](super::Shard::apply).
//!
//! Each function checks every precondition before it changes anything, so a refused
//! record leaves the task untouched.

use super::audit::{EventExtra, EventRow, EventType};
use super::task::{Attempt, AttemptOutcome, Task, TaskStatus};
use super::{Applied, ParentNotice, TaskEntry, TransitionError};
use crate::codec::{FailKind, NewTask, Record, TaskId, TaskKind, UnixMs};
use serde_json::{json, Value};
use std::sync::Arc;

mod fanout;

use fanout::{child_done, spawn};

type Tasks = super::IdMap<super::Slot>;

/// One status change or other audit row to record.
struct Row {
    ty: EventType,
    from: Option<TaskStatus>,
    to: Option<TaskStatus>,
    attempt: Option<u32>,
    message: Option<String>,
    metadata: Value,
}

impl Row {
    fn new(ty: EventType) -> Row {
        Row {
            ty,
            from: None,
            to: None,
            attempt: None,
            message: None,
            metadata: Value::Null,
        }
    }
    fn change(mut self, from: TaskStatus, to: TaskStatus) -> Row {
        self.from = Some(from);
        self.to = Some(to);
        self
    }
    /// A status entered with no status before (creation).
    fn to(mut self, to: TaskStatus) -> Row {
        self.to = Some(to);
        self
    }
    fn attempt(mut self, n: u32) -> Row {
        self.attempt = Some(n);
        self
    }
    fn message(mut self, m: impl Into<String>) -> Row {
        self.message = Some(m.into());
        self
    }
    fn meta(mut self, metadata: Value) -> Row {
        self.metadata = metadata;
        self
    }
}

/// Appends an audit row to the task's history. Events are numbered by their index
/// in that history, so replay numbers them exactly as live operation did.
fn emit(entry: &mut TaskEntry, at: UnixMs, row: Row) {
    let t = &mut entry.task;
    // A task's history never goes back in time: a clock stepped back (NTP, a
    // manual clock) or a control call that read the clock before a worker
    // took the shard would otherwise list an effect before its cause, since
    // events sort by (time, id) (SPEC §10). Replay applies the same rule.
    let at = t.last_event_time.map_or(at, |last| at.max(last));
    t.last_event_time = Some(at);
    t.last_event_type = Some(row.ty);
    let extra = if row.message.is_none() && row.metadata.is_null() {
        // Most rows. A `null` owns nothing: forgetting it skips the
        // out-of-line drop of a `Value` per row.
        std::mem::forget(row.metadata);
        None
    } else {
        Some(Box::new(EventExtra {
            message: row.message,
            metadata: row.metadata,
        }))
    };
    entry.events.push(EventRow {
        time: at,
        seq: 0, // stamped by `Shard::apply`, which knows the shard's order
        attempt: row.attempt.unwrap_or(0),
        stage: t.stage,
        ty: row.ty,
        from: row.from,
        to: row.to,
        extra,
    });
}

/// Applies a record that creates or removes a task; every other record goes
/// through [`apply_to`].
#[allow(clippy::vec_box)] // spare entries are reused boxes
pub(super) fn apply(
    tasks: &mut Tasks,
    spare: &mut Vec<Box<TaskEntry>>,
    seq: &mut u32,
    record: Record,
) -> Result<Applied, TransitionError> {
    match record {
        Record::Submit(new) => submit(tasks, spare, seq, *new),
        Record::Delete { id } => {
            let entry = tasks.remove(&id).ok_or(TransitionError::NotFound(id))?;
            Ok(Applied {
                deleted: entry.into_entry().map(|e| Box::new(e.task)),
                ..Applied::default()
            })
        }
        other => {
            let id = other.task_id();
            let e = get(tasks, id)?;
            let from = e.events.len();
            let r = apply_to(e, other);
            stamp(e, from, seq);
            r
        }
    }
}

/// Numbers the events a record added to `e` (from index `from`) in the shard's
/// order of recording.
pub(super) fn stamp(e: &mut TaskEntry, from: usize, seq: &mut u32) {
    for ev in e.events.iter_mut().skip(from) {
        ev.seq = *seq;
        *seq = seq.wrapping_add(1);
    }
}

/// Applies a record that changes an existing task (any but `Submit` and
/// `Delete`) to its entry `e`, found by the caller with one lookup.
pub(super) fn apply_to(e: &mut TaskEntry, record: Record) -> Result<Applied, TransitionError> {
    match record {
        Record::Submit(_) | Record::Delete { .. } => Err(TransitionError::Invalid(
            "submit and delete records change the table, not one entry".into(),
        )),
        Record::Claim {
            id: _,
            attempt,
            worker,
            at_ms,
        } => claim(e, attempt, worker, at_ms),
        Record::Complete {
            id: _,
            attempt,
            result,
            next_run_ms,
            at_ms,
        } => complete(e, attempt, result, next_run_ms, at_ms),
        Record::Fail {
            id: _,
            attempt,
            error,
            kind,
            retry_at_ms,
            at_ms,
        } => fail(e, attempt, error, kind, retry_at_ms, at_ms),
        Record::Spawn {
            id: _,
            attempt,
            children,
            context,
            at_ms,
        } => spawn(e, attempt, children, context, at_ms),
        Record::Suspend {
            id: _,
            attempt,
            reason,
            context,
            at_ms,
        } => suspend(e, attempt, reason, context, at_ms),
        Record::ChildDone {
            parent: _,
            child,
            outcome,
            fail_parent,
            at_ms,
        } => child_done(e, child, outcome, fail_parent, at_ms),
        Record::Pause { id: _, at_ms } => pause(e, at_ms),
        Record::Resume {
            id: _,
            reason,
            at_ms,
        } => resume(e, reason, at_ms),
        Record::Cancel {
            id: _,
            reason,
            at_ms,
        } => cancel(e, reason, at_ms),
        Record::Recover {
            id: _,
            quarantine_after,
            message,
            at_ms,
        } => recover(e, quarantine_after, message, at_ms),
        Record::Progress {
            id: _,
            attempt,
            stage_name,
            text,
            percent,
            metadata,
            at_ms,
        } => {
            own(e, attempt)?;
            progress(e, stage_name, text, percent, metadata, at_ms)
        }
        Record::Checkpoint {
            id: _,
            attempt,
            code,
            message,
            metadata,
            at_ms,
        } => {
            own(e, attempt)?;
            let mut row = Row::new(EventType::Checkpoint)
                .attempt(attempt)
                .meta(metadata);
            // fib-flow: the message defaults to the code.
            row.message = Some(message.unwrap_or_else(|| code.clone()));
            row.metadata = merge_code(row.metadata, code);
            emit(e, at_ms, row);
            Ok(Applied::default())
        }
        Record::Reschedule {
            id: _,
            next_run_ms,
            at_ms,
        } => reschedule(e, next_run_ms, at_ms),
        Record::Retry { id: _, at_ms } => retry(e, at_ms),
    }
}

fn get(tasks: &mut Tasks, id: TaskId) -> Result<&mut TaskEntry, TransitionError> {
    tasks
        .get_mut(&id)
        .ok_or(TransitionError::NotFound(id))?
        .live_mut()
        .ok_or_else(|| TransitionError::Invalid(format!("task {id} is stored frozen and no longer decodes; this is a fibflow bug, please report it")))
}

/// The write must come from the attempt that owns the running task.
fn own(entry: &TaskEntry, attempt: u32) -> Result<(), TransitionError> {
    let t = &entry.task;
    if t.status == TaskStatus::Running && t.attempt == attempt {
        Ok(())
    } else {
        Err(TransitionError::Stale { id: t.id, attempt })
    }
}

fn check(entry: &TaskEntry, to: TaskStatus) -> Result<(), TransitionError> {
    let from = entry.task.status;
    if from.can_become(to) {
        Ok(())
    } else {
        Err(TransitionError::InvalidTransition {
            id: entry.task.id,
            from,
            to,
        })
    }
}

/// Moves the task to `to` (already checked) and returns the previous status.
fn set_status(entry: &mut TaskEntry, to: TaskStatus, at: UnixMs) -> TaskStatus {
    let from = entry.task.status;
    debug_assert!(from.can_become(to), "unchecked transition {from} -> {to}");
    entry.task.status = to;
    // Never before the task's last event, as `emit` stamps the event of this
    // change: the two times agree even if the clock stepped back.
    entry.task.last_active_time = entry.task.last_event_time.map_or(at, |last| at.max(last));
    from
}

/// Closes the open attempt (the last one) with `outcome`.
fn close_attempt(
    entry: &mut TaskEntry,
    outcome: AttemptOutcome,
    error: Option<String>,
    at: UnixMs,
) {
    if outcome != AttemptOutcome::Interrupted {
        entry.interruptions = 0;
    }
    if let Some(a) = entry.attempts.last_mut().filter(|a| a.outcome.is_none()) {
        a.ended_at = Some(at);
        a.outcome = Some(outcome);
        a.timed_out = outcome == AttemptOutcome::Timeout;
        a.error = error;
    }
}

#[allow(clippy::vec_box)] // spare entries are reused boxes
fn submit(
    tasks: &mut Tasks,
    spare: &mut Vec<Box<TaskEntry>>,
    seq: &mut u32,
    new: NewTask,
) -> Result<Applied, TransitionError> {
    // One table lookup: the vacant entry found here is where the task goes.
    let std::collections::hash_map::Entry::Vacant(slot) = tasks.entry(new.id) else {
        return Err(TransitionError::Duplicate(new.id));
    };
    check_submit(&new)?;
    let ready_at = new.next_run_ms;
    slot.insert(super::Slot::Live(new_entry(new, spare, seq)));
    Ok(Applied {
        ready_at: Some(ready_at),
        ..Applied::default()
    })
}

/// What a submit record must satisfy besides naming a free id.
pub(super) fn check_submit(new: &NewTask) -> Result<(), TransitionError> {
    // `trim().is_empty()`, looking at no more than the first character of a name.
    if new.name.chars().all(char::is_whitespace) {
        return Err(TransitionError::Invalid("task name is empty".into()));
    }
    Ok(())
}

/// The entry a checked submit record creates, its `created` event numbered
/// `seq` (which then counts on). In a reused spare box if there is one.
#[allow(clippy::vec_box)] // spare entries are reused boxes
pub(super) fn new_entry(
    new: NewTask,
    spare: &mut Vec<Box<TaskEntry>>,
    seq: &mut u32,
) -> Box<TaskEntry> {
    let at = new.created_ms;
    let task = Task {
        id: new.id,
        name: new.name,
        kind: new.kind,
        status: TaskStatus::Pending,
        stage: 0,
        priority: new.priority,
        payload: new.payload,
        result: None,
        error: None,
        cron: new.cron,
        max_retries: new.max_retries,
        retry_count: 0,
        timeout_ms: new.timeout_ms,
        retry_interval_ms: new.retry_interval_ms,
        next_run_time: new.next_run_ms,
        created_at: at,
        start_time: None,
        last_active_time: at,
        worker: None,
        tag: new.tag,
        parent_id: new.parent_id,
        root_id: new.root_id,
        total_children: 0,
        completed_children: 0,
        context: None,
        requires: new.requires,
        dedup_key: new.dedup_key,
        on_failure: new.on_failure,
        attempt: 0,
        current_stage_name: None,
        progress_text: None,
        progress_percent: None,
        last_event_time: None,
        last_event_type: None,
    };
    // A recycled entry (see `Shard::freeze_finished`) keeps its allocations, so a
    // steady stream of tasks does not allocate one entry and two vectors each.
    let mut entry = match spare.pop() {
        Some(mut b) => {
            let (mut events, mut attempts) = (
                std::mem::take(&mut b.events),
                std::mem::take(&mut b.attempts),
            );
            events.clear();
            attempts.clear();
            *b = TaskEntry::new(task, events, attempts);
            b
        }
        None => Box::new(TaskEntry::new(
            task,
            super::EventRows::new(),
            super::Attempts::new(),
        )),
    };
    emit(
        &mut entry,
        at,
        // Message and metadata (`{name, type, tag}`, as fib-flow records them) are
        // derived from the task when read: they never change, and storing them
        // would cost every task an allocation.
        Row::new(EventType::Created).to(TaskStatus::Pending),
    );
    stamp(&mut entry, 0, seq);
    entry
}

fn claim(
    e: &mut TaskEntry,
    attempt: u32,
    worker: Arc<str>,
    at: UnixMs,
) -> Result<Applied, TransitionError> {
    check(e, TaskStatus::Running)?;
    if attempt != e.task.attempt + 1 {
        return Err(TransitionError::Invalid(format!(
            "attempt {attempt} of task {} does not follow attempt {}",
            e.task.id, e.task.attempt
        )));
    }
    let from = set_status(e, TaskStatus::Running, at);
    e.task.attempt = attempt;
    e.task.worker = Some(worker.clone());
    e.task.start_time = Some(at);
    e.attempts.push(Attempt {
        task_id: e.task.id,
        number: attempt,
        worker,
        started_at: at,
        ended_at: None,
        outcome: None,
        error: None,
        timed_out: false,
    });
    emit(
        e,
        at,
        Row::new(EventType::Claimed)
            .change(from, TaskStatus::Running)
            .attempt(attempt),
    );
    emit(e, at, Row::new(EventType::Started).attempt(attempt));
    if e.task.retry_count > 0 {
        let meta = json!({"retry_count": e.task.retry_count});
        emit(
            e,
            at,
            Row::new(EventType::RetryStarted)
                .attempt(attempt)
                .meta(meta),
        );
    }
    Ok(Applied::default())
}

fn complete(
    e: &mut TaskEntry,
    attempt: u32,
    result: Value,
    next_run_ms: Option<UnixMs>,
    at: UnixMs,
) -> Result<Applied, TransitionError> {
    own(e, attempt)?;
    close_attempt(e, AttemptOutcome::Completed, None, at);
    e.task.result = Some(result);
    let cron_next = next_run_ms.filter(|_| e.task.kind == TaskKind::Cron);
    if let Some(next) = cron_next {
        let from = set_status(e, TaskStatus::Pending, at);
        e.task.retry_count = 0;
        e.task.stage = 0;
        e.task.next_run_time = next;
        let meta = json!({"reason": "cron_round_completed", "next_run_time": next});
        emit(
            e,
            at,
            Row::new(EventType::StatusChanged)
                .change(from, TaskStatus::Pending)
                .attempt(attempt)
                .meta(meta),
        );
        return Ok(Applied {
            ready_at: Some(next),
            left_running: true,
            ..Applied::default()
        });
    }
    let from = set_status(e, TaskStatus::Completed, at);
    emit(
        e,
        at,
        Row::new(EventType::Completed)
            .change(from, TaskStatus::Completed)
            .attempt(attempt),
    );
    Ok(finished(e, true))
}

/// The effects of a task that left `running` into a final or paused status.
fn finished(e: &TaskEntry, left_running: bool) -> Applied {
    Applied {
        left_running,
        terminal: true,
        notify_parent: ParentNotice::of(&e.task),
        ..Applied::default()
    }
}

#[allow(clippy::too_many_arguments)]
fn fail(
    e: &mut TaskEntry,
    attempt: u32,
    error: String,
    kind: FailKind,
    retry_at: UnixMs,
    at: UnixMs,
) -> Result<Applied, TransitionError> {
    own(e, attempt)?;
    let (to, outcome, ty) = match kind {
        FailKind::Error => (
            TaskStatus::Failed,
            AttemptOutcome::Failed,
            EventType::Failed,
        ),
        FailKind::TimeoutTotal | FailKind::TimeoutHeartbeat => (
            TaskStatus::Timeout,
            AttemptOutcome::Timeout,
            EventType::TimedOut,
        ),
    };
    close_attempt(e, outcome, Some(error.clone()), at);
    let from = set_status(e, to, at);
    e.task.error = Some(error.clone());
    // fib-flow's failure rows carry the error in their metadata as well.
    let meta = match kind {
        FailKind::Error => json!({"error": error, "retry_count": e.task.retry_count}),
        FailKind::TimeoutTotal => json!({"timeout_type": "total", "error": error}),
        FailKind::TimeoutHeartbeat => json!({"timeout_type": "heartbeat", "error": error}),
    };
    emit(
        e,
        at,
        Row::new(ty)
            .change(from, to)
            .attempt(attempt)
            .message(error)
            .meta(meta),
    );
    if e.task.retry_left() {
        // SPEC §4: the task stays failed/timeout until `retry_at`, when a `Retry`
        // record makes it pending (fib-flow's model); exhaustion does not wait.
        e.task.next_run_time = retry_at;
        return Ok(Applied {
            retry_at: Some(retry_at),
            left_running: true,
            ..Applied::default()
        });
    }
    exhaust(e, Some(attempt), at);
    Ok(finished(e, true))
}

/// Retries are used up: an async task fails for good, a cron task pauses.
fn exhaust(e: &mut TaskEntry, attempt: Option<u32>, at: UnixMs) {
    let (to, ty) = match e.task.kind {
        TaskKind::Async => (TaskStatus::PermanentlyFailed, EventType::PermanentlyFailed),
        TaskKind::Cron => (TaskStatus::Paused, EventType::Paused),
    };
    let from = set_status(e, to, at);
    let meta = json!({"reason": "retry_exhausted", "retry_exhausted": true, "retry_count": e.task.retry_count, "error": e.task.error});
    let mut row = Row::new(ty).change(from, to).meta(meta);
    row.attempt = attempt;
    emit(e, at, row);
}

fn suspend(
    e: &mut TaskEntry,
    attempt: u32,
    reason: String,
    context: Option<Vec<u8>>,
    at: UnixMs,
) -> Result<Applied, TransitionError> {
    own(e, attempt)?;
    let reason = reason.trim().to_owned();
    if reason.is_empty() {
        return Err(TransitionError::Invalid(
            "Suspension requires a non-empty reason".into(),
        ));
    }
    close_attempt(e, AttemptOutcome::Suspended, None, at);
    let from = set_status(e, TaskStatus::Suspended, at);
    if context.is_some() {
        e.task.context = context;
    }
    e.round = None;
    let meta = json!({"suspend_reason": reason});
    e.suspend_reason = Some(reason);
    emit(
        e,
        at,
        Row::new(EventType::Suspended)
            .change(from, TaskStatus::Suspended)
            .attempt(attempt)
            .meta(meta),
    );
    Ok(Applied {
        left_running: true,
        ..Applied::default()
    })
}

fn pause(e: &mut TaskEntry, at: UnixMs) -> Result<Applied, TransitionError> {
    let from = e.task.status;
    // Running or pending (SPEC §6), and also failed/timeout: a task waiting for
    // its retry is pending in spirit, and the SPEC §2 table (like fib-flow's
    // pauseTask) allows those transitions.
    let pausable = matches!(
        from,
        TaskStatus::Running | TaskStatus::Pending | TaskStatus::Failed | TaskStatus::Timeout
    );
    if !pausable {
        return Err(TransitionError::InvalidTransition {
            id: e.task.id,
            from,
            to: TaskStatus::Paused,
        });
    }
    let running = from == TaskStatus::Running;
    if running {
        close_attempt(e, AttemptOutcome::Paused, None, at);
    }
    set_status(e, TaskStatus::Paused, at);
    let mut row = Row::new(EventType::Paused).change(from, TaskStatus::Paused);
    row.attempt = running.then_some(e.task.attempt);
    emit(e, at, row);
    Ok(Applied {
        left_running: running,
        terminal: true,
        ..Applied::default()
    })
}

fn resume(
    e: &mut TaskEntry,
    reason: Option<String>,
    at: UnixMs,
) -> Result<Applied, TransitionError> {
    let from = e.task.status;
    check(e, TaskStatus::Pending)?;
    let row = match from {
        TaskStatus::Suspended => {
            e.task.stage += 1;
            let reason = reason.unwrap_or_else(|| "manual".to_owned());
            Row::new(EventType::Resumed).meta(json!({"resume_reason": reason}))
        }
        // A task waiting for its retry can be resumed at once, as fib-flow allows.
        TaskStatus::Paused | TaskStatus::Failed | TaskStatus::Timeout => {
            e.task.stage = 0;
            let mut meta = json!({"resume_reason": "manual"});
            if let Some(r) = reason {
                meta["resume_reason"] = Value::String(r);
            }
            Row::new(EventType::StatusChanged).meta(meta)
        }
        _ => {
            return Err(TransitionError::InvalidTransition {
                id: e.task.id,
                from,
                to: TaskStatus::Pending,
            })
        }
    };
    set_status(e, TaskStatus::Pending, at);
    e.round = None;
    e.task.retry_count = 0;
    e.task.next_run_time = at;
    emit(e, at, row.change(from, TaskStatus::Pending));
    Ok(Applied {
        ready_at: Some(at),
        ..Applied::default()
    })
}

fn cancel(
    e: &mut TaskEntry,
    reason: Option<String>,
    at: UnixMs,
) -> Result<Applied, TransitionError> {
    let from = e.task.status;
    // Suspended (SPEC §6), or waiting for a retry: fib-flow's cancelTask follows
    // the SPEC §2 table, which allows failed/timeout -> permanently_failed too.
    if !matches!(
        from,
        TaskStatus::Suspended | TaskStatus::Failed | TaskStatus::Timeout
    ) {
        return Err(TransitionError::InvalidTransition {
            id: e.task.id,
            from,
            to: TaskStatus::PermanentlyFailed,
        });
    }
    let reason = reason.unwrap_or_else(|| "Task cancelled".to_owned());
    set_status(e, TaskStatus::PermanentlyFailed, at);
    e.round = None;
    e.task.error = Some(reason.clone());
    let row = Row::new(EventType::PermanentlyFailed)
        .change(from, TaskStatus::PermanentlyFailed)
        .message(reason.clone())
        .meta(json!({"reason": "cancelled", "cancel_reason": reason}));
    emit(e, at, row);
    Ok(finished(e, false))
}

fn recover(
    e: &mut TaskEntry,
    quarantine_after: u32,
    message: String,
    at: UnixMs,
) -> Result<Applied, TransitionError> {
    let from = e.task.status;
    if from != TaskStatus::Running {
        return Err(TransitionError::InvalidTransition {
            id: e.task.id,
            from,
            to: TaskStatus::Pending,
        });
    }
    let attempt = e.task.attempt;
    close_attempt(e, AttemptOutcome::Interrupted, Some(message.clone()), at);
    e.interruptions += 1;
    set_status(e, TaskStatus::Pending, at);
    // The stage and the result the run saw are kept: a parent interrupted while
    // reading its children's entries reruns that stage with the same entries
    // instead of spawning its children again (issue 4: a workflow killed
    // mid-flight ends with the same result). For a task at stage 0 this is
    // SPEC §12's "pending at stage 0".
    // A cron task keeps the occurrence it was running, so that the catch-up
    // policy (SPEC §7) sees it was missed: recovered at the next open after
    // a crash, `at` would hide every occurrence the process was down for.
    if e.task.kind != crate::codec::TaskKind::Cron {
        e.task.next_run_time = at;
    }
    // Nobody runs it now (fib-flow's recovery clears worker_id and start_time);
    // the attempt keeps its worker.
    e.task.worker = None;
    e.task.start_time = None;
    let meta = json!({"recovery_reason": "process_stopped", "interruptions": e.interruptions, "attempt": attempt, "stage": e.task.stage});
    emit(
        e,
        at,
        Row::new(EventType::Recovered)
            .change(from, TaskStatus::Pending)
            .message(message)
            .meta(meta),
    );
    if e.interruptions > quarantine_after {
        let error = format!(
            "quarantined: the process stopped while this task ran {} times in a row; fix the handler, then resubmit the task",
            e.interruptions
        );
        e.task.error = Some(error.clone());
        // pending -> permanently_failed is outside the table of SPEC §2; quarantine is
        // the one engine-made exception (SPEC §12), recorded as its own event.
        e.task.status = TaskStatus::PermanentlyFailed;
        let row = Row::new(EventType::PermanentlyFailed)
            .change(TaskStatus::Pending, TaskStatus::PermanentlyFailed)
            .message(error)
            .meta(json!({"reason": "quarantined"}));
        emit(e, at, row);
        return Ok(finished(e, true));
    }
    Ok(Applied {
        ready_at: Some(at),
        left_running: true,
        ..Applied::default()
    })
}

#[allow(clippy::too_many_arguments)]
fn progress(
    e: &mut TaskEntry,
    stage_name: Option<String>,
    text: Option<String>,
    percent: Option<u8>,
    metadata: Value,
    at: UnixMs,
) -> Result<Applied, TransitionError> {
    if percent.is_some_and(|p| p > 100) {
        return Err(TransitionError::Invalid(
            "progress percent must be between 0 and 100".into(),
        ));
    }
    let attempt = e.task.attempt;
    let mut meta = serde_json::Map::new();
    if let Some(n) = &stage_name {
        meta.insert("stage_name".into(), Value::String(n.clone()));
        e.task.current_stage_name = stage_name.clone();
    }
    if let Some(t) = &text {
        meta.insert("progress_text".into(), Value::String(t.clone()));
        e.task.progress_text = text.clone();
    }
    if let Some(p) = percent {
        meta.insert("progress_percent".into(), Value::from(p));
        e.task.progress_percent = Some(p);
    }
    spread(&mut meta, metadata);
    // fib-flow: the text, else the stage name, else a fixed message.
    let message = text
        .or(stage_name)
        .unwrap_or_else(|| "task progress updated".to_owned());
    let row = Row::new(EventType::Progress)
        .attempt(attempt)
        .meta(Value::Object(meta))
        .message(message);
    emit(e, at, row);
    Ok(Applied::default())
}

/// `{code, ...metadata}`, as fib-flow records a checkpoint.
fn merge_code(metadata: Value, code: String) -> Value {
    let mut meta = serde_json::Map::new();
    meta.insert("code".into(), Value::String(code));
    spread(&mut meta, metadata);
    Value::Object(meta)
}

/// Adds the handler's metadata object's keys to an event's metadata (they win,
/// like JavaScript's object spread). The handler API accepts only objects; any
/// other value (from an older log) is kept under `metadata`.
fn spread(meta: &mut serde_json::Map<String, Value>, metadata: Value) {
    match metadata {
        Value::Null => {}
        Value::Object(m) => meta.extend(m),
        other => {
            meta.insert("metadata".into(), other);
        }
    }
}

/// The catch-up policy moved a pending cron task's next run (SPEC §7).
fn reschedule(e: &mut TaskEntry, next: UnixMs, at: UnixMs) -> Result<Applied, TransitionError> {
    if e.task.status != TaskStatus::Pending {
        return Err(TransitionError::InvalidTransition {
            id: e.task.id,
            from: e.task.status,
            to: TaskStatus::Pending,
        });
    }
    let missed = e.task.next_run_time;
    e.task.next_run_time = next;
    let meta = json!({"reason": "catch_up", "missed_run_time": missed, "next_run_time": next});
    emit(e, at, Row::new(EventType::StatusChanged).meta(meta));
    Ok(Applied {
        ready_at: Some(next),
        ..Applied::default()
    })
}

/// The retry of a failed or timed-out task is due (SPEC §4): pending again, with
/// retry_count + 1, stage 0, result and context cleared, the last error kept.
fn retry(e: &mut TaskEntry, at: UnixMs) -> Result<Applied, TransitionError> {
    let from = e.task.status;
    if !matches!(from, TaskStatus::Failed | TaskStatus::Timeout) || !e.task.retry_left() {
        return Err(TransitionError::InvalidTransition {
            id: e.task.id,
            from,
            to: TaskStatus::Pending,
        });
    }
    set_status(e, TaskStatus::Pending, at);
    let t = &mut e.task;
    t.retry_count += 1;
    t.stage = 0;
    t.result = None;
    t.context = None;
    // Ready from when the retry was due (SPEC §4: `now + backoff`), not from
    // when the timer got to it: a retry picked up late (a clock jump, a
    // reopen after downtime) keeps its place in the order of SPEC §3.
    let ready = t.next_run_time.min(at);
    t.next_run_time = ready;
    let meta = json!({"retry_count": t.retry_count, "previous_status": from.as_str()});
    let attempt = t.attempt;
    emit(
        e,
        at,
        Row::new(EventType::RetryScheduled)
            .change(from, TaskStatus::Pending)
            .attempt(attempt)
            .meta(meta),
    );
    Ok(Applied {
        ready_at: Some(ready),
        ..Applied::default()
    })
}
