//! Fan-out and fan-in transitions (SPEC §5): a parent suspends while its
//! children are created, and each child's final outcome reaches it once.

use super::{close_attempt, emit, finished, own, set_status, Row};
use crate::codec::{ChildOutcome, TaskId, TaskKind, UnixMs};
use crate::engine::audit::EventType;
use crate::engine::task::{AttemptOutcome, TaskStatus};
use crate::engine::workflow::Round;
use crate::engine::{Applied, TaskEntry, TransitionError};
use serde_json::json;

pub(super) fn spawn(
    e: &mut TaskEntry,
    attempt: u32,
    children: Vec<(TaskId, String)>,
    context: Option<Vec<u8>>,
    at: UnixMs,
) -> Result<Applied, TransitionError> {
    own(e, attempt)?;
    if children.is_empty() {
        return Err(TransitionError::Invalid(
            "a spawn needs at least one child".into(),
        ));
    }
    close_attempt(e, AttemptOutcome::Suspended, None, at);
    let from = set_status(e, TaskStatus::Suspended, at);
    e.task.result = None;
    if context.is_some() {
        e.task.context = context;
    }
    e.task.total_children += children.len() as u32;
    let ids: Vec<u64> = children.iter().map(|c| c.0 .0).collect();
    let names: Vec<&str> = children.iter().map(|c| c.1.as_str()).collect();
    // fib-flow's keys (its insertTask), which its own tests read.
    let meta =
        json!({"child_task_ids": ids, "child_task_names": names, "child_count": children.len()});
    emit(
        e,
        at,
        // fib-flow records this event with the parent's change of status too.
        Row::new(EventType::SubtasksCreated)
            .change(from, TaskStatus::Suspended)
            .attempt(attempt)
            .meta(meta),
    );
    let meta = json!({"suspend_reason": "awaiting_subtasks", "child_count": ids.len(), "child_task_ids": ids});
    emit(
        e,
        at,
        Row::new(EventType::StatusChanged)
            .change(from, TaskStatus::Suspended)
            .attempt(attempt)
            .meta(meta),
    );
    e.round = Some(Box::new(Round::new(
        children.into_iter().map(|c| c.0).collect(),
    )));
    Ok(Applied {
        left_running: true,
        ..Applied::default()
    })
}

pub(super) fn child_done(
    e: &mut TaskEntry,
    child: TaskId,
    outcome: ChildOutcome,
    fail_parent: bool,
    at: UnixMs,
) -> Result<Applied, TransitionError> {
    let parent = e.task.id;
    let awaited =
        e.task.status == TaskStatus::Suspended && e.round.as_ref().is_some_and(|r| r.awaits(child));
    if !awaited {
        return Err(TransitionError::NotAwaited { parent, child });
    }
    e.task.completed_children += 1;
    let failed = match &outcome {
        ChildOutcome::Failed(err) if fail_parent => Some(err.clone()),
        _ => None,
    };
    let Some(round) = e.round.as_mut() else {
        return Err(TransitionError::NotAwaited { parent, child });
    };
    round.outcomes.insert(child, outcome);
    if let Some(err) = failed {
        e.round = None;
        e.task.error = Some(format!("Child task {child} failed: {err}"));
        return Ok(fail_parent_now(e, child, at));
    }
    if !round.is_done() {
        return Ok(Applied::default());
    }
    let entries = round.result_entries();
    e.round = None;
    let from = set_status(e, TaskStatus::Pending, at);
    e.task.stage += 1;
    e.task.result = Some(entries);
    e.task.next_run_time = at;
    let meta = json!({"resume_reason": "children_completed"});
    emit(
        e,
        at,
        Row::new(EventType::StatusChanged)
            .change(from, TaskStatus::Pending)
            .meta(meta),
    );
    Ok(Applied {
        ready_at: Some(at),
        ..Applied::default()
    })
}

/// A child with `on_failure = fail_parent` failed: the parent fails (async) or pauses (cron).
pub(super) fn fail_parent_now(e: &mut TaskEntry, child: TaskId, at: UnixMs) -> Applied {
    let (to, ty) = match e.task.kind {
        TaskKind::Async => (TaskStatus::PermanentlyFailed, EventType::PermanentlyFailed),
        TaskKind::Cron => (TaskStatus::Paused, EventType::Paused),
    };
    // The table of SPEC §2 has suspended -> permanently_failed (cancel); a cron
    // parent pausing from suspended is the documented fail_parent policy.
    e.task.status = to;
    e.task.last_active_time = at;
    let meta = json!({"reason": "child_failed", "child_id": child.0});
    let row = Row::new(ty)
        .change(TaskStatus::Suspended, to)
        .message(e.task.error.clone().unwrap_or_default())
        .meta(meta);
    emit(e, at, row);
    finished(e, false)
}
