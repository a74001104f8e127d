//! Query and audit results against SPEC §9–§11 and, where SPEC is silent,
//! fib-flow's documented/implemented behaviour (lib/db/base.js,
//! docs/api-reference.md, docs/execution-audit-events.md). Manual clock; waits
//! are on conditions, never fixed sleeps.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{eventually, Gate, PATIENCE};
use fibflow::{
    AttemptFilter, AttemptOutcome, ChildSpec, EventFilter, EventType, HandlerOptions, ManualClock,
    Outcome, Page, RetentionPolicy, SubmitOptions, Task, TaskFilter, TaskId, TaskManager,
    TaskStatus,
};
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

const T0: u64 = 1_700_000_000_000;
const SEC: Duration = Duration::from_secs(1);

fn mem(workers: usize) -> (TaskManager, Arc<ManualClock>) {
    common::manual(workers)
}

fn page(limit: usize, offset: usize, descending: bool) -> Page {
    Page {
        limit,
        offset,
        descending,
    }
}

fn big() -> Page {
    page(usize::MAX, 0, false)
}

fn wait_status(mgr: &TaskManager, id: TaskId, s: TaskStatus) -> Task {
    let mut last = None;
    eventually(&format!("task {id} {s}"), || {
        last = mgr.get_task(id);
        last.as_ref().is_some_and(|t| t.status == s)
    });
    last.unwrap()
}

fn kids(mgr: &TaskManager, parent: TaskId) -> Vec<Task> {
    common::children_of(mgr, parent)
}

/// A gated leaf handler "leaf" (payload = gate index) and a root "root" that
/// spawns the given children at stage 0 and completes at stage 1.
fn gated(mgr: &TaskManager, n: usize) -> Vec<Arc<Gate>> {
    let gates: Vec<Arc<Gate>> = (0..n).map(|_| Gate::new()).collect();
    let g = gates.clone();
    mgr.register("leaf", move |ctx| {
        g[ctx.payload().as_u64().unwrap() as usize].wait();
        Ok(json!("leaf").into())
    })
    .unwrap();
    gates
}

// ---------------------------------------------------------------------------
// workflow summary vs fib-flow getWorkflowAuditSummary
// ---------------------------------------------------------------------------

/// fib-flow docs/api-reference.md: "`timing.workflow_duration_seconds`:
/// `last_ended_at - root_task.created_at`" (base.js: `lastEndedAt -
/// rootTask.created_at`). A root created at T0 that first runs at T0+5s for
/// 1s: duration 6s.
#[test]
fn summary_duration_counts_from_the_roots_creation() {
    let (mgr, clock) = mem(1);
    let gate = Gate::new();
    let g = gate.clone();
    mgr.register("solo", move |_| {
        g.wait();
        Ok(json!(1).into())
    })
    .unwrap();
    let root = mgr.submit("solo", json!(null)).unwrap();
    clock.advance(5 * SEC);
    mgr.start().unwrap();
    wait_status(&mgr, root, TaskStatus::Running);
    clock.advance(SEC);
    gate.open();
    mgr.wait(root, PATIENCE).unwrap();
    let s = mgr.workflow_summary(root).unwrap();
    assert_eq!(mgr.get_task(root).unwrap().created_at, T0);
    assert_eq!(s.timing.first_start, Some(T0 + 5_000));
    assert_eq!(s.timing.last_end, Some(T0 + 6_000));
    assert_eq!(
        s.timing.duration_ms,
        Some(6_000),
        "fib-flow: last_ended_at - root.created_at"
    );
}

/// fib-flow docs/api-reference.md: "`failed_tasks`: ... tasks currently in
/// `failed`, `timeout`, `permanently_failed`, or `paused` status" (base.js
/// `['failed', 'timeout', 'permanently_failed', 'paused']`). A paused child is
/// listed.
#[test]
fn summary_failed_tasks_include_paused_tasks() {
    let (mgr, _clock) = mem(1);
    let gates = gated(&mgr, 2);
    mgr.register("root", |ctx| match ctx.stage() {
        0 => Ok(Outcome::spawn(vec![
            ChildSpec::new("leaf", json!(0)),
            ChildSpec::new("leaf", json!(1)),
        ])),
        _ => Ok(json!("root").into()),
    })
    .unwrap();
    mgr.start().unwrap();
    let root = mgr.submit("root", json!(null)).unwrap();
    eventually("one child running", || {
        kids(&mgr, root)
            .iter()
            .any(|k| k.status == TaskStatus::Running)
    });
    let k = kids(&mgr, root);
    let pending = k
        .iter()
        .find(|k| k.status == TaskStatus::Pending)
        .expect("the other child waits for the single worker")
        .id;
    mgr.pause_task(pending).unwrap();
    assert_eq!(mgr.get_task(pending).unwrap().status, TaskStatus::Paused);
    let s = mgr.workflow_summary(root).unwrap();
    let listed: Vec<(TaskId, TaskStatus)> =
        s.failed_tasks.iter().map(|f| (f.id, f.status)).collect();
    for g in &gates {
        g.open();
    }
    assert_eq!(listed, vec![(pending, TaskStatus::Paused)]);
}

/// fib-flow base.js sorts slowest attempts by duration desc, then
/// `started_at` asc, then id (docs: "sorted by persisted duration, then start
/// time"). Two children of equal duration: the one that started first comes
/// first, even if its task id is higher.
#[test]
fn summary_slowest_attempt_ties_go_to_the_earlier_start() {
    let (mgr, clock) = mem(1);
    let gates = gated(&mgr, 2);
    mgr.register("root", |ctx| match ctx.stage() {
        0 => Ok(Outcome::spawn(vec![
            // lower id, lower priority: runs second
            ChildSpec::new("leaf", json!(0)),
            // higher id, higher priority: runs first
            ChildSpec::new("leaf", json!(1)).priority(10),
        ])),
        _ => Ok(json!("root").into()),
    })
    .unwrap();
    mgr.start().unwrap();
    let root = mgr.submit("root", json!(null)).unwrap();
    eventually("children created", || kids(&mgr, root).len() == 2);
    let k = kids(&mgr, root);
    let (a, b) = (k[0].id, k[1].id);
    assert!(a < b);
    wait_status(&mgr, b, TaskStatus::Running);
    clock.advance(SEC);
    gates[1].open();
    wait_status(&mgr, a, TaskStatus::Running);
    clock.advance(SEC);
    gates[0].open();
    mgr.wait(root, PATIENCE).unwrap();
    let s = mgr.workflow_summary(root).unwrap();
    let got: Vec<(TaskId, u64, Option<u64>)> = s
        .slowest_attempts
        .iter()
        .map(|x| (x.task_id, x.started_at, x.duration_ms()))
        .collect();
    assert_eq!(
        got,
        vec![
            (b, T0, Some(1_000)),
            (a, T0 + 1_000, Some(1_000)),
            (root, T0, Some(0)),
            (root, T0 + 2_000, Some(0)),
        ],
        "fib-flow: equal durations ordered by started_at"
    );
}

/// A workflow whose only task is running (one open attempt); returns its summary.
fn summary_while_running() -> fibflow::WorkflowSummary {
    let (mgr, _clock) = mem(1);
    let gate = Gate::new();
    let g = gate.clone();
    mgr.register("solo", move |_| {
        g.wait();
        Ok(json!(1).into())
    })
    .unwrap();
    mgr.start().unwrap();
    let root = mgr.submit("solo", json!(null)).unwrap();
    wait_status(&mgr, root, TaskStatus::Running);
    let s = mgr.workflow_summary(root).unwrap();
    gate.open();
    mgr.wait(root, PATIENCE).unwrap();
    s
}

/// fib-flow base.js: attempt_outcomes counts only attempts with an outcome
/// (`if (attempt.outcome) incrementCounter(...)`): an open attempt adds no key.
#[test]
fn summary_outcome_counts_skip_open_attempts() {
    let s = summary_while_running();
    assert_eq!(
        s.attempt_outcomes,
        BTreeMap::new(),
        "fib-flow counts only attempts with an outcome"
    );
}

/// fib-flow base.js: slowest_attempts is `attemptsWithDuration.slice(0, 5)`
/// over every workflow attempt (open ones sort last, duration -1 / null), so
/// a workflow with one open attempt lists it.
#[test]
fn summary_slowest_attempts_list_open_attempts_last() {
    let s = summary_while_running();
    assert_eq!(
        s.slowest_attempts.len(),
        1,
        "fib-flow lists open attempts after the closed ones"
    );
}

/// fib-flow: critical path node = longest representative attempt; a child
/// branch with a retried child counts its longest attempt; ties between
/// branches of equal total go to the lowest first task id. Also stage
/// timings: one per root attempt with the stage from the start event.
#[test]
fn summary_critical_path_uses_longest_attempt_of_a_retried_child() {
    let (mgr, clock) = mem(1);
    let gates = gated(&mgr, 1);
    let gate_r = Gate::new();
    let gr = gate_r.clone();
    mgr.register_with("retry", HandlerOptions::new().max_retries(3), move |ctx| {
        if ctx.attempt() == 1 {
            gr.wait();
            return Err("first fails".into());
        }
        Ok(json!("r").into())
    })
    .unwrap();
    mgr.register("root", |ctx| match ctx.stage() {
        0 => Ok(Outcome::spawn(vec![
            ChildSpec::new("leaf", json!(0)).priority(10),
            ChildSpec::new("retry", json!(null)),
        ])),
        _ => Ok(json!("root").into()),
    })
    .unwrap();
    mgr.start().unwrap();
    let root = mgr.submit("root", json!(null)).unwrap();
    eventually("children created", || kids(&mgr, root).len() == 2);
    let k = kids(&mgr, root);
    let (leaf, retry) = (k[0].id, k[1].id);
    wait_status(&mgr, leaf, TaskStatus::Running);
    clock.advance(2 * SEC);
    gates[0].open();
    wait_status(&mgr, retry, TaskStatus::Running);
    clock.advance(3 * SEC);
    gate_r.open();
    mgr.wait(root, PATIENCE).unwrap();
    let s = mgr.workflow_summary(root).unwrap();
    // leaf 2s; retry: 3s failed then 0s completed → representative 3s.
    assert_eq!(s.critical_path, vec![root, retry]);
    assert_eq!(
        s.root_stages
            .iter()
            .map(|r| (r.stage, r.attempt))
            .collect::<Vec<_>>(),
        vec![(0, 1), (1, 2)]
    );
    assert_eq!(s.attempt_outcomes.get("failed"), Some(&1));
    assert_eq!(s.timing.duration_ms, Some(5_000));
}

// ---------------------------------------------------------------------------
// event fields and filters
// ---------------------------------------------------------------------------

/// fib-flow docs/execution-audit-events.md: "`root_id`: the workflow root task
/// id. For a root task, this is the root task itself." (base.js
/// `normalizeRootId(task.id, task.root_id)` on every event).
#[test]
fn root_task_events_carry_their_own_id_as_root_id() {
    let (mgr, _clock) = mem(1);
    mgr.register("ok", |_| Ok(json!(1).into())).unwrap();
    mgr.start().unwrap();
    let id = mgr.submit("ok", json!(null)).unwrap();
    mgr.wait(id, PATIENCE).unwrap();
    let roots: Vec<Option<TaskId>> = mgr.events(id).unwrap().iter().map(|e| e.root_id).collect();
    assert_eq!(roots, vec![Some(id); 4]);
}

/// fib-flow base.js _queryEvents: `event_time >= started_after` and
/// `event_time <= started_before`: both bounds inclusive.
#[test]
fn event_time_range_upper_bound_is_inclusive() {
    let (mgr, clock) = mem(1);
    mgr.register("ok", |_| Ok(json!(1).into())).unwrap();
    let id = mgr.submit("ok", json!(null)).unwrap(); // created at T0
    clock.advance(SEC);
    mgr.start().unwrap();
    mgr.wait(id, PATIENCE).unwrap(); // the rest at T0 + 1s
    let f = EventFilter {
        from_ms: Some(T0),
        until_ms: Some(T0 + 1_000),
        ..EventFilter::default()
    };
    let p = mgr.query_events(id, &f, big()).unwrap();
    assert_eq!(p.total, 4, "fib-flow: started_before is inclusive");
}

/// fib-flow base.js _queryAttempts: `started_at <= started_before`,
/// `ended_at <= ended_before`: inclusive upper bounds.
#[test]
fn attempt_time_range_upper_bounds_are_inclusive() {
    let (mgr, clock) = mem(1);
    let gate = Gate::new();
    let g = gate.clone();
    mgr.register("solo", move |_| {
        g.wait();
        Ok(json!(1).into())
    })
    .unwrap();
    mgr.start().unwrap();
    let id = mgr.submit("solo", json!(null)).unwrap();
    wait_status(&mgr, id, TaskStatus::Running);
    clock.advance(SEC);
    gate.open();
    mgr.wait(id, PATIENCE).unwrap();
    let started = mgr
        .query_attempts(
            id,
            &AttemptFilter {
                started_until_ms: Some(T0),
                ..AttemptFilter::default()
            },
            big(),
        )
        .unwrap();
    let ended = mgr
        .query_attempts(
            id,
            &AttemptFilter {
                ended_until_ms: Some(T0 + 1_000),
                ..AttemptFilter::default()
            },
            big(),
        )
        .unwrap();
    assert_eq!(
        (started.total, ended.total),
        (1, 1),
        "fib-flow: started_before / ended_before are inclusive"
    );
}

// ---------------------------------------------------------------------------
// agreements (these pass)
// ---------------------------------------------------------------------------

/// Paging: has_more exactly when offset + items < total; descending is the
/// exact reverse of ascending with the same offset semantics; offset past
/// the end is empty with the real total.
#[test]
fn paging_shapes_over_tasks_events_and_attempts() {
    let (mgr, clock) = mem(1);
    mgr.register("ok", |_| Ok(json!(1).into())).unwrap();
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(mgr.submit("ok", json!(null)).unwrap());
        clock.advance(SEC);
    }
    let all = mgr.query_tasks(&TaskFilter::all(), big());
    assert_eq!(all.items.iter().map(|t| t.id).collect::<Vec<_>>(), ids);
    let p = mgr.query_tasks(&TaskFilter::all(), page(2, 3, false));
    assert_eq!(
        (
            p.items.iter().map(|t| t.id).collect::<Vec<_>>(),
            p.total,
            p.has_more
        ),
        (vec![ids[3], ids[4]], 5, false)
    );
    let p = mgr.query_tasks(&TaskFilter::all(), page(2, 2, false));
    assert!(p.has_more);
    let p = mgr.query_tasks(&TaskFilter::all(), page(2, 1, true));
    assert_eq!(
        p.items.iter().map(|t| t.id).collect::<Vec<_>>(),
        vec![ids[3], ids[2]]
    );
    assert!(p.has_more);
    let p = mgr.query_tasks(&TaskFilter::all(), page(2, 9, false));
    assert_eq!(
        (p.items.len(), p.total, p.has_more, p.offset, p.limit),
        (0, 5, false, 9, 2)
    );
}

/// Stats by tag: (tag, name, status) groups, untagged tasks grouped under no
/// tag, and the status filter.
#[test]
fn stats_by_tag_groups_untagged_and_filters_status() {
    let (mgr, _clock) = mem(1);
    mgr.register("a", |_| Ok(json!(1).into())).unwrap();
    mgr.register("b", |_| Ok(json!(1).into())).unwrap();
    let t = |tag: &str| SubmitOptions::new().tag(tag);
    mgr.submit_with("a", json!(null), t("x")).unwrap();
    mgr.submit_with("a", json!(null), t("x")).unwrap();
    mgr.submit_with("b", json!(null), t("x")).unwrap();
    mgr.submit("a", json!(null)).unwrap();
    let p = mgr.submit("b", json!(null)).unwrap();
    mgr.pause_task(p).unwrap();
    let s = mgr.stats_by_tag(None);
    let want = BTreeMap::from([
        ((None, "a".to_string(), TaskStatus::Pending), 1),
        ((None, "b".to_string(), TaskStatus::Paused), 1),
        (
            (Some("x".to_string()), "a".to_string(), TaskStatus::Pending),
            2,
        ),
        (
            (Some("x".to_string()), "b".to_string(), TaskStatus::Pending),
            1,
        ),
    ]);
    assert_eq!(s, want);
    let s = mgr.stats_by_tag(Some(TaskStatus::Paused));
    assert_eq!(
        s,
        BTreeMap::from([((None, "b".to_string(), TaskStatus::Paused), 1)])
    );
}

/// Workflow filter combined with tag and status (AND); root_id filter is
/// descendants only (fib-flow stores NULL root_id on root rows).
#[test]
fn workflow_filter_with_tag_and_status() {
    let (mgr, _clock) = mem(5);
    let gates = gated(&mgr, 4);
    mgr.register("root", |ctx| match ctx.stage() {
        0 => Ok(Outcome::spawn(vec![
            ChildSpec::new("leaf", json!(0)).tag("t"),
            ChildSpec::new("leaf", json!(1)).tag("t"),
            ChildSpec::new("leaf", json!(2)).tag("u"),
        ])),
        _ => Ok(json!("root").into()),
    })
    .unwrap();
    mgr.start().unwrap();
    let root = mgr
        .submit_with("root", json!(null), SubmitOptions::new().tag("t"))
        .unwrap();
    let other = mgr
        .submit_with("leaf", json!(3), SubmitOptions::new().tag("t"))
        .unwrap();
    eventually("children running", || {
        let k = kids(&mgr, root);
        k.len() == 3 && k.iter().all(|t| t.status == TaskStatus::Running)
    });
    wait_status(&mgr, other, TaskStatus::Running);
    let k = kids(&mgr, root);
    assert_eq!(
        k.iter().map(|t| t.tag.clone()).collect::<Vec<_>>(),
        vec![
            Some("t".to_string()),
            Some("t".to_string()),
            Some("u".to_string())
        ],
        "ChildSpec tags as given"
    );
    let f = TaskFilter {
        tag: Some("t".into()),
        ..TaskFilter::all().workflow(root)
    };
    let got: Vec<TaskId> = mgr.list_tasks(&f).iter().map(|t| t.id).collect();
    assert_eq!(got, vec![root, k[0].id, k[1].id]);
    let f = TaskFilter {
        tag: Some("t".into()),
        status: Some(TaskStatus::Running),
        ..TaskFilter::all().workflow(root)
    };
    let p = mgr.query_tasks(&f, big());
    assert_eq!(
        p.items.iter().map(|t| t.id).collect::<Vec<_>>(),
        vec![k[0].id, k[1].id]
    );
    let f = TaskFilter {
        root_id: Some(root),
        ..TaskFilter::all()
    };
    assert_eq!(mgr.query_tasks(&f, big()).total, 3);
    for g in &gates {
        g.open();
    }
    mgr.wait(root, PATIENCE).unwrap();
    mgr.wait(other, PATIENCE).unwrap();
}

/// Workflow audit view: events of root and children by (time, record order);
/// event filters combined: type + attempt + stage.
#[test]
fn workflow_audit_events_in_time_order_and_event_filters_combined() {
    let (mgr, clock) = mem(1);
    let gates = gated(&mgr, 1);
    mgr.register("root", |ctx| match ctx.stage() {
        0 => Ok(Outcome::spawn(vec![ChildSpec::new("leaf", json!(0))])),
        _ => {
            ctx.audit("s1", None, None)?;
            Ok(json!("root").into())
        }
    })
    .unwrap();
    mgr.start().unwrap();
    let root = mgr.submit("root", json!(null)).unwrap();
    eventually("child", || kids(&mgr, root).len() == 1);
    let kid = kids(&mgr, root)[0].id;
    wait_status(&mgr, kid, TaskStatus::Running);
    clock.advance(SEC);
    gates[0].open();
    mgr.wait(root, PATIENCE).unwrap();
    let v = mgr.workflow_audit(root, big(), big()).unwrap();
    let times: Vec<u64> = v.events.items.iter().map(|e| e.time).collect();
    let mut sorted = times.clone();
    sorted.sort_unstable();
    assert_eq!(times, sorted);
    assert_eq!(v.tasks.total, 2);
    let n_root = mgr.events(root).unwrap().len();
    let n_kid = mgr.events(kid).unwrap().len();
    assert_eq!(v.events.total, n_root + n_kid);
    let f = EventFilter {
        types: vec![
            EventType::Checkpoint,
            EventType::Started,
            EventType::RetryStarted,
        ],
        attempt: Some(2),
        stage: Some(1),
        ..EventFilter::default()
    };
    let p = mgr.query_events(root, &f, big()).unwrap();
    let ty: Vec<&str> = p.items.iter().map(|e| e.event_type.as_str()).collect();
    assert_eq!(ty.len(), 2, "{ty:?}");
    assert_eq!(ty[1], "task_checkpoint");
}

/// Retention: counts and eligible statuses; paused only when named.
#[test]
fn retention_counts_and_paused_opt_in() {
    let (mgr, clock) = mem(1);
    mgr.register("ok", |_| Ok(json!(1).into())).unwrap();
    mgr.start().unwrap();
    let a = mgr.submit("ok", json!(null)).unwrap();
    mgr.wait(a, PATIENCE).unwrap();
    let p = mgr
        .submit_with("ok", json!(null), SubmitOptions::new().delay(3600 * SEC))
        .unwrap();
    mgr.pause_task(p).unwrap();
    let (ea, ep) = (
        mgr.events(a).unwrap().len() as u64,
        mgr.events(p).unwrap().len() as u64,
    );
    clock.advance(10 * SEC);
    let r = mgr
        .run_retention(Some(&RetentionPolicy::new(5 * SEC)))
        .unwrap();
    assert_eq!((r.tasks, r.events, r.attempts), (1, ea, 1));
    let r = mgr
        .run_retention(Some(
            &RetentionPolicy::new(5 * SEC).statuses([TaskStatus::Paused]),
        ))
        .unwrap();
    assert_eq!((r.tasks, r.events, r.attempts), (1, ep, 0));
    assert!(mgr.get_task(p).is_none());
}

/// Attempt outcome filter plus open_only on a task with a failed, then an
/// open attempt.
#[test]
fn attempt_filters_outcome_and_open_only() {
    let (mgr, _clock) = mem(1);
    let gate = Gate::new();
    let g = gate.clone();
    mgr.register_with("r", HandlerOptions::new().max_retries(2), move |ctx| {
        if ctx.attempt() == 1 {
            return Err("no".into());
        }
        g.wait();
        Ok(json!(1).into())
    })
    .unwrap();
    mgr.start().unwrap();
    let id = mgr.submit("r", json!(null)).unwrap();
    eventually("second attempt open", || {
        mgr.attempts(id).unwrap().len() == 2
    });
    let open = mgr
        .query_attempts(
            id,
            &AttemptFilter {
                open_only: true,
                ..AttemptFilter::default()
            },
            big(),
        )
        .unwrap();
    let failed = mgr
        .query_attempts(
            id,
            &AttemptFilter {
                outcome: Some(AttemptOutcome::Failed),
                ..AttemptFilter::default()
            },
            big(),
        )
        .unwrap();
    gate.open();
    mgr.wait(id, PATIENCE).unwrap();
    assert_eq!(
        open.items.iter().map(|a| a.number).collect::<Vec<_>>(),
        vec![2]
    );
    assert_eq!(
        failed.items.iter().map(|a| a.number).collect::<Vec<_>>(),
        vec![1]
    );
    let desc = mgr
        .query_attempts(id, &AttemptFilter::default(), page(1, 0, true))
        .unwrap();
    assert_eq!(
        (desc.items[0].number, desc.has_more, desc.total),
        (2, true, 2)
    );
}
