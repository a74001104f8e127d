//! Audit queries (SPEC §10): events, attempts, task and workflow views, the
//! workflow summary, and retention (SPEC §11).

use super::query::{Page, Paged, TaskFilter};
use super::TaskManager;
use crate::codec::{Record, TaskId};
use crate::engine::{Attempt, AttemptOutcome, Event, EventType, Task, TaskEntry, TaskStatus};
use crate::runtime::error::{Error, Result};
use crate::runtime::Core;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

/// Event filters, combined with AND.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventFilter {
    /// Any of these types (empty = all).
    pub types: Vec<EventType>,
    /// Worker.
    pub worker: Option<String>,
    /// Attempt number.
    pub attempt: Option<u32>,
    /// Stage.
    pub stage: Option<u32>,
    /// Time at or after (ms).
    pub from_ms: Option<u64>,
    /// Time at or before (ms); inclusive, as fib-flow's `started_before`.
    pub until_ms: Option<u64>,
}

impl EventFilter {
    fn matches(&self, e: &Event) -> bool {
        (self.types.is_empty() || self.types.contains(&e.event_type))
            && self
                .worker
                .as_ref()
                .is_none_or(|w| e.worker.as_deref() == Some(w.as_str()))
            && self.attempt.is_none_or(|a| e.attempt == Some(a))
            && self.stage.is_none_or(|s| e.stage == s)
            && self.from_ms.is_none_or(|t| e.time >= t)
            && self.until_ms.is_none_or(|t| e.time <= t)
    }
}

/// Attempt filters, combined with AND.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AttemptFilter {
    /// Worker.
    pub worker: Option<String>,
    /// Outcome.
    pub outcome: Option<AttemptOutcome>,
    /// Started at or after (ms).
    pub started_from_ms: Option<u64>,
    /// Started at or before (ms); inclusive, as fib-flow's `started_before`.
    pub started_until_ms: Option<u64>,
    /// Ended at or after (ms).
    pub ended_from_ms: Option<u64>,
    /// Ended at or before (ms); inclusive, as fib-flow's `ended_before`.
    pub ended_until_ms: Option<u64>,
    /// Only attempts still open.
    pub open_only: bool,
}

impl AttemptFilter {
    fn matches(&self, a: &Attempt) -> bool {
        self.worker.as_ref().is_none_or(|w| *a.worker == **w)
            && self.outcome.is_none_or(|o| a.outcome == Some(o))
            && self.started_from_ms.is_none_or(|t| a.started_at >= t)
            && self.started_until_ms.is_none_or(|t| a.started_at <= t)
            && self
                .ended_from_ms
                .is_none_or(|t| a.ended_at.is_some_and(|e| e >= t))
            && self
                .ended_until_ms
                .is_none_or(|t| a.ended_at.is_some_and(|e| e <= t))
            && (!self.open_only || a.outcome.is_none())
    }
}

/// A task with a page of its events and attempts.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TaskAudit {
    /// The task.
    pub task: Task,
    /// Its events, ordered by (time, id).
    pub events: Paged<Event>,
    /// Its attempts, ordered by attempt number.
    pub attempts: Paged<Attempt>,
}

/// A workflow root with a page of its tasks and events.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WorkflowAudit {
    /// The root task.
    pub root: Task,
    /// The root and its descendants, ordered by (created_at, id).
    pub tasks: Paged<Task>,
    /// Their events, ordered by (time, task id, id).
    pub events: Paged<Event>,
}

/// Timing of a workflow.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct WorkflowTiming {
    /// First attempt start.
    pub first_start: Option<u64>,
    /// Last attempt end.
    pub last_end: Option<u64>,
    /// Last event.
    pub last_event: Option<u64>,
    /// `last_end` minus the root's creation (fib-flow's
    /// `workflow_duration_seconds`), once an attempt has ended.
    pub duration_ms: Option<u64>,
}

/// One attempt of the workflow's root, with the stage it ran (fib-flow's
/// `stage_timings`: one entry per root attempt, in attempt order).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StageTiming {
    /// The stage the attempt ran (from its `task_started` event).
    pub stage: u32,
    /// The attempt number.
    pub attempt: u32,
    /// When it was claimed.
    pub started_at: u64,
    /// When it closed; `None` while it runs.
    pub ended_at: Option<u64>,
    /// Its duration in milliseconds, once closed.
    pub duration_ms: Option<u64>,
    /// How it closed.
    pub outcome: Option<AttemptOutcome>,
    /// The worker that ran it.
    pub worker: Option<String>,
}

/// A failed task of a workflow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FailedTask {
    /// The task.
    pub id: TaskId,
    /// Its handler.
    pub name: String,
    /// Its status.
    pub status: TaskStatus,
    /// Its error.
    pub error: Option<String>,
}

/// The summary of a workflow (SPEC §10).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WorkflowSummary {
    /// The root.
    pub root_id: TaskId,
    /// Tasks per status.
    pub status_counts: BTreeMap<String, u64>,
    /// Closed attempts per outcome (an open attempt has none yet).
    pub attempt_outcomes: BTreeMap<String, u64>,
    /// Workers that ran attempts, sorted.
    pub workers: Vec<String>,
    /// Timing.
    pub timing: WorkflowTiming,
    /// The root's stages.
    pub root_stages: Vec<StageTiming>,
    /// Tasks that are failed, timed out, permanently failed or paused (as
    /// fib-flow lists them).
    pub failed_tasks: Vec<FailedTask>,
    /// The root plus the longest child branch (ties to the lowest id). A
    /// branch is as long as its task's longest attempt plus its longest child
    /// branch, as fib-flow estimates it.
    pub critical_path: Vec<TaskId>,
    /// The 5 slowest attempts, slowest first (ties to the earlier start); open
    /// attempts, which have no duration yet, after the closed ones.
    pub slowest_attempts: Vec<Attempt>,
}

/// Which finished tasks retention removes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetentionPolicy {
    /// Tasks whose last status change is older than this are eligible.
    pub expire_after: Duration,
    /// Eligible statuses, a subset of completed, permanently_failed and paused.
    pub statuses: Vec<TaskStatus>,
}

impl RetentionPolicy {
    /// Completed and permanently failed tasks older than `expire_after`.
    pub fn new(expire_after: Duration) -> RetentionPolicy {
        RetentionPolicy {
            expire_after,
            statuses: vec![TaskStatus::Completed, TaskStatus::PermanentlyFailed],
        }
    }

    /// Sets the eligible statuses.
    pub fn statuses(mut self, s: impl IntoIterator<Item = TaskStatus>) -> Self {
        self.statuses = s.into_iter().collect();
        self
    }

    pub(crate) fn validate(&self) -> Result<()> {
        let allowed = [
            TaskStatus::Completed,
            TaskStatus::PermanentlyFailed,
            TaskStatus::Paused,
        ];
        match self.statuses.iter().find(|s| !allowed.contains(s)) {
            Some(s) => Err(Error::InvalidOption(format!(
                "retention cannot remove {s} tasks: use completed, permanently_failed or paused"
            ))),
            None => Ok(()),
        }
    }
}

/// What a retention run removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct RetentionReport {
    /// Tasks deleted.
    pub tasks: u64,
    /// Their events.
    pub events: u64,
    /// Their attempts.
    pub attempts: u64,
}

/// The order events happened in: by time, then by the order they were recorded
/// (a workflow lives in one shard, whose events share one sequence).
fn sort_events(v: &mut [Event]) {
    v.sort_by_key(|e| (e.time, e.sequence, e.task_id, e.id));
}

impl TaskManager {
    /// Events of one task matching `filter`, paged, ordered by (time, id).
    pub fn query_events(
        &self,
        id: TaskId,
        filter: &EventFilter,
        page: Page,
    ) -> Result<Paged<Event>> {
        let mut v: Vec<Event> = self
            .events(id)?
            .into_iter()
            .filter(|e| filter.matches(e))
            .collect();
        sort_events(&mut v);
        Ok(Paged::of(v, page))
    }

    /// Attempts of one task matching `filter`, paged, ordered by attempt number.
    pub fn query_attempts(
        &self,
        id: TaskId,
        filter: &AttemptFilter,
        page: Page,
    ) -> Result<Paged<Attempt>> {
        let v: Vec<Attempt> = self
            .attempts(id)?
            .into_iter()
            .filter(|a| filter.matches(a))
            .collect();
        Ok(Paged::of(v, page))
    }

    /// The task with a page of its events and a page of its attempts.
    pub fn task_audit(&self, id: TaskId, events: Page, attempts: Page) -> Result<TaskAudit> {
        let task = self.get_task(id).ok_or(Error::NotFound(id))?;
        Ok(TaskAudit {
            task,
            events: self.query_events(id, &EventFilter::default(), events)?,
            attempts: self.query_attempts(id, &AttemptFilter::default(), attempts)?,
        })
    }

    fn workflow_entries(&self, root: TaskId) -> Result<Vec<TaskEntry>> {
        let mut v = Vec::new();
        self.scan(
            &TaskFilter {
                workflow: Some(root),
                ..TaskFilter::default()
            },
            |s| v.extend(s.entry().map(std::borrow::Cow::into_owned)),
        );
        if !v.iter().any(|e| e.task.id == root) {
            return Err(Error::NotFound(root));
        }
        v.sort_by_key(|e| (e.task.created_at, e.task.id));
        Ok(v)
    }

    /// The root with a page of its workflow's tasks and a page of their events.
    pub fn workflow_audit(&self, root: TaskId, tasks: Page, events: Page) -> Result<WorkflowAudit> {
        let entries = self.workflow_entries(root)?;
        let root_task = entries
            .iter()
            .find(|e| e.task.id == root)
            .map(|e| e.task.clone())
            .ok_or(Error::NotFound(root))?;
        let mut evs: Vec<Event> = entries.iter().flat_map(TaskEntry::event_list).collect();
        sort_events(&mut evs);
        let all_tasks = entries.into_iter().map(|e| e.task).collect();
        Ok(WorkflowAudit {
            root: root_task,
            tasks: Paged::of(all_tasks, tasks),
            events: Paged::of(evs, events),
        })
    }

    /// Status and outcome counts, workers, timing, root stages, failures, critical
    /// path and slowest attempts of a workflow.
    pub fn workflow_summary(&self, root: TaskId) -> Result<WorkflowSummary> {
        let entries = self.workflow_entries(root)?;
        let mut status_counts = BTreeMap::new();
        let mut attempt_outcomes = BTreeMap::new();
        let mut workers = BTreeSet::new();
        let mut timing = WorkflowTiming::default();
        let mut failed_tasks = Vec::new();
        let mut attempts: Vec<Attempt> = Vec::new();
        for e in &entries {
            *status_counts
                .entry(e.task.status.as_str().to_owned())
                .or_insert(0) += 1;
            // fib-flow's `failed_tasks`: paused ones too (a cron task whose
            // retries ran out, a task paused by hand).
            if matches!(
                e.task.status,
                TaskStatus::PermanentlyFailed
                    | TaskStatus::Failed
                    | TaskStatus::Timeout
                    | TaskStatus::Paused
            ) {
                failed_tasks.push(FailedTask {
                    id: e.task.id,
                    name: e.task.name.to_string(),
                    status: e.task.status,
                    error: e.task.error.clone(),
                });
            }
            timing.last_event = timing.last_event.max(e.task.last_event_time);
            for a in &e.attempts {
                // Outcomes only, as fib-flow counts them: an open attempt has none.
                if let Some(outcome) = a.outcome {
                    *attempt_outcomes
                        .entry(outcome.as_str().to_owned())
                        .or_insert(0) += 1;
                }
                workers.insert(a.worker.clone());
                timing.first_start = Some(
                    timing
                        .first_start
                        .map_or(a.started_at, |f| f.min(a.started_at)),
                );
                timing.last_end = timing.last_end.max(a.ended_at);
                attempts.push(a.clone());
            }
        }
        // From the root's creation, as fib-flow's `workflow_duration_seconds`:
        // time spent queued before the first start counts.
        let created = entries
            .iter()
            .find(|e| e.task.id == root)
            .map(|e| e.task.created_at);
        timing.duration_ms = created
            .zip(timing.last_end)
            .map(|(s, e)| e.saturating_sub(s));
        // Slowest first, open attempts (no duration yet) last; ties to the
        // earlier start, as fib-flow orders them.
        attempts.sort_by(|a, b| {
            b.duration_ms()
                .cmp(&a.duration_ms())
                .then(a.started_at.cmp(&b.started_at))
                .then(a.task_id.cmp(&b.task_id))
                .then(a.number.cmp(&b.number))
        });
        attempts.truncate(5);
        let root_stages = entries
            .iter()
            .find(|e| e.task.id == root)
            .map(stage_timings)
            .unwrap_or_default();
        Ok(WorkflowSummary {
            root_id: root,
            status_counts,
            attempt_outcomes,
            workers: workers.into_iter().map(|w| w.to_string()).collect(),
            timing,
            root_stages,
            failed_tasks,
            critical_path: critical_path(root, &entries),
            slowest_attempts: attempts,
        })
    }

    /// Deletes the tasks `policy` (or the configured one) makes eligible, with
    /// their events and attempts. Suspended and running tasks are never removed.
    pub fn run_retention(&self, policy: Option<&RetentionPolicy>) -> Result<RetentionReport> {
        let configured = self.retention.clone();
        let policy = policy.or(configured.as_ref()).ok_or_else(|| {
            Error::InvalidOption(
                "no retention policy: pass one or configure it on the builder".into(),
            )
        })?;
        let _call = self.core.enter_call()?;
        retention_batch(&self.core, policy, usize::MAX)
    }
}

/// One retention batch of at most `max` tasks.
pub(crate) fn retention_batch(
    core: &Core,
    policy: &RetentionPolicy,
    max: usize,
) -> Result<RetentionReport> {
    policy.validate()?;
    let cutoff = core
        .now()
        .saturating_sub(crate::runtime::clock::ceil_ms(policy.expire_after));
    let mut victims = Vec::new();
    // Stops at `max`: a batch costs what it deletes, not a scan of every task.
    super::query::scan_while(core, &TaskFilter::default(), |s| {
        if policy.statuses.contains(&s.status()) && s.last_active_time() < cutoff {
            let (events, attempts) = s
                .entry()
                .map_or((0, 0), |e| (e.events.len() as u64, e.attempts.len() as u64));
            victims.push((s.id(), events, attempts));
        }
        victims.len() < max
    });
    let mut report = RetentionReport::default();
    for (id, events, attempts) in victims {
        match core.control(Record::Delete { id }) {
            Ok(()) => {
                report.tasks += 1;
                report.events += events;
                report.attempts += attempts;
            }
            Err(Error::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(report)
}

/// One entry per attempt of the root, with the stage of its start event (or
/// attempt - 1 if none is kept), as fib-flow's workflow summary has them: a
/// root that never ran has none.
fn stage_timings(root: &TaskEntry) -> Vec<StageTiming> {
    let events = root.event_list();
    root.attempts
        .iter()
        .map(|a| {
            let stage = events
                .iter()
                .find(|e| {
                    e.attempt == Some(a.number)
                        && matches!(e.event_type, EventType::Started | EventType::RetryStarted)
                })
                .map_or(a.number.saturating_sub(1), |e| e.stage);
            StageTiming {
                stage,
                attempt: a.number,
                started_at: a.started_at,
                ended_at: a.ended_at,
                duration_ms: a.duration_ms(),
                outcome: a.outcome,
                worker: Some(a.worker.to_string()),
            }
        })
        .collect()
}

/// The root plus, at each level, the child whose branch takes longest; ties go
/// to the lowest id. A branch's length is its task's longest attempt plus its
/// longest child branch, as fib-flow estimates it. Not the task's first start
/// to last end: a parent's span includes the time it waited for its children,
/// which would count a child branch twice (a parent with a long child would
/// win over a longer leaf sibling).
fn critical_path(root: TaskId, entries: &[TaskEntry]) -> Vec<TaskId> {
    /// The longest finished attempt (an open one has no duration yet).
    fn span(e: &TaskEntry) -> u64 {
        e.attempts
            .iter()
            .filter_map(|a| a.ended_at.map(|end| end.saturating_sub(a.started_at)))
            .max()
            .unwrap_or(0)
    }
    let mut children: HashMap<TaskId, Vec<&TaskEntry>> = HashMap::new();
    for e in entries {
        if let Some(p) = e.task.parent_id {
            children.entry(p).or_default().push(e);
        }
    }
    // Each task's longest child branch, children before parents, without
    // recursion: a chain of children may be any number of levels deep.
    let mut longest: HashMap<TaskId, u64> = HashMap::new();
    let mut stack = vec![(root, false)];
    while let Some((id, expanded)) = stack.pop() {
        let kids = children.get(&id).map_or(&[][..], Vec::as_slice);
        if expanded {
            let best = kids
                .iter()
                .map(|k| span(k).saturating_add(longest.get(&k.task.id).copied().unwrap_or(0)))
                .max()
                .unwrap_or(0);
            longest.insert(id, best);
        } else if !longest.contains_key(&id) {
            stack.push((id, true));
            stack.extend(kids.iter().map(|k| (k.task.id, false)));
        }
    }
    let mut path = vec![root];
    let mut at = root;
    while let Some(kids) = children.get(&at) {
        let mut best: Option<(u64, TaskId)> = None;
        for k in kids {
            let len = span(k).saturating_add(longest.get(&k.task.id).copied().unwrap_or(0));
            if best.is_none_or(|(bl, bid)| len > bl || (len == bl && k.task.id < bid)) {
                best = Some((len, k.task.id));
            }
        }
        match best {
            Some((_, id)) => {
                path.push(id);
                at = id;
            }
            None => break,
        }
    }
    path
}
