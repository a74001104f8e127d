//! SPEC §5-§8 rules the other suites leave open: fan-in counting in finishing
//! order, failure policies through several levels, children of a deleted or
//! manually resumed parent, control calls from every status with the exact
//! error, late spawns/suspensions after a pause, context bytes through spawn,
//! suspension and a reopen, cron rounds that overrun, daylight saving time and
//! a named zone after a reopen, and hot reload (caps, retries, fan-in resumes,
//! unregister with queued work). One rule per test, manual clock wherever time
//! matters, durable variants on a temp directory.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{build_unlocked, children_of, event_names, eventually, manual, Gate, PATIENCE};
use fibflow::engine::TransitionError;
use fibflow::{
    AttemptOutcome, CatchUp, ChildSpec, Error, EventType, Handler, HandlerOptions, ManualClock,
    Outcome, Pool, SubmitOptions, TaskFilter, TaskId, TaskManager, TaskStatus, TimeZone,
};
use serde_json::{json, Value};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// 2023-11-14T22:13:20Z, on a whole second (second 20 of its minute).
const T0: u64 = 1_700_000_000_000;
/// 2024-01-01T00:00:00Z.
const JAN1: u64 = 1_704_067_200_000;
const SEC: Duration = Duration::from_secs(1);
/// How long a negative check ("it does not run") waits.
const QUIET: Duration = Duration::from_millis(200);

fn status(mgr: &TaskManager, id: TaskId) -> TaskStatus {
    mgr.get_task(id).unwrap().status
}

fn wait_status(mgr: &TaskManager, id: TaskId, s: TaskStatus) {
    eventually(&format!("task {id} {s}"), || status(mgr, id) == s);
}

fn events_of(mgr: &TaskManager, id: TaskId, ty: EventType) -> Vec<fibflow::Event> {
    mgr.events(id)
        .unwrap()
        .into_iter()
        .filter(|e| e.event_type == ty)
        .collect()
}

/// A manager on a manual clock in a named zone.
fn zoned(start: u64, zone: &str, workers: usize) -> (TaskManager, Arc<ManualClock>) {
    let clock = ManualClock::new(start);
    let mgr = TaskManager::builder()
        .memory()
        .clock(clock.clone())
        .time_zone(TimeZone::from_name(zone).unwrap())
        .max_concurrent_tasks(workers)
        .build()
        .unwrap();
    (mgr, clock)
}

fn durable(dir: &Path, clock: &Arc<ManualClock>) -> fibflow::Builder {
    TaskManager::builder()
        .dir(dir)
        .segment_size(1 << 20)
        .clock(clock.clone())
        .time_zone(TimeZone::from_name("UTC").unwrap())
        .max_concurrent_tasks(2)
}

fn shut(mgr: TaskManager) {
    mgr.stop(PATIENCE).unwrap();
    drop(mgr);
}

fn by_reason(reason: &str) -> TaskFilter {
    let mut f = TaskFilter::all();
    f.suspend_reason = Some(reason.to_owned());
    f
}

/// Waits until cron round `n` (attempt n) has closed and the task is pending again.
fn round_done(mgr: &TaskManager, id: TaskId, n: usize) {
    eventually(&format!("round {n} done"), || {
        let a = mgr.attempts(id).unwrap();
        a.len() == n
            && a.last().unwrap().outcome.is_some()
            && status(mgr, id) == TaskStatus::Pending
    });
}

/// Asserts that `id` does not reach a terminal status within QUIET.
fn stays_unfinished(mgr: &TaskManager, id: TaskId, what: &str) {
    assert!(
        matches!(mgr.wait(id, QUIET), Err(Error::WaitTimeout { .. })),
        "{what}: {:?}",
        mgr.get_task(id).map(|t| t.status)
    );
}

// ---------------------------------------------------------------------------
// §5 Workflows
// ---------------------------------------------------------------------------

/// "Each child's outcome is delivered to its parent exactly once. When all
/// children of the round are finished the parent returns to pending ... sorted
/// by task id": children finishing in reverse id order are counted one by one
/// and the parent sees them by id.
#[test]
fn s5_fan_in_counts_each_child_as_it_finishes_and_sorts_entries_by_id() {
    let (mgr, _clock) = manual(4);
    let gates: Arc<Vec<Arc<Gate>>> = Arc::new((0..3).map(|_| Gate::new()).collect());
    let g = gates.clone();
    mgr.register("child", move |ctx| {
        let i = ctx.payload()["i"].as_u64().unwrap() as usize;
        g[i].wait();
        Ok(json!({ "i": i }).into())
    })
    .unwrap();
    mgr.register("parent", |ctx| {
        if ctx.stage() == 0 {
            return Ok(Outcome::spawn(
                (0..3)
                    .map(|i| ChildSpec::new("child", json!({ "i": i })))
                    .collect(),
            ));
        }
        Ok(ctx.result().cloned().unwrap_or(Value::Null).into())
    })
    .unwrap();
    mgr.start().unwrap();
    let pid = mgr.submit("parent", json!(null)).unwrap();
    eventually("three children running", || {
        let kids = children_of(&mgr, pid);
        kids.len() == 3 && kids.iter().all(|k| k.status == TaskStatus::Running)
    });
    let kids = children_of(&mgr, pid);
    for (k, i) in [2usize, 1, 0].into_iter().enumerate() {
        gates[i].open();
        eventually(&format!("{} delivered", k + 1), || {
            mgr.get_task(pid).unwrap().completed_children as usize == k + 1
        });
        if k < 2 {
            let p = mgr.get_task(pid).unwrap();
            assert_eq!(p.status, TaskStatus::Suspended, "after {} of 3", k + 1);
            assert_eq!(p.stage, 0);
        }
    }
    let p = mgr.wait(pid, PATIENCE).unwrap();
    assert_eq!(p.status, TaskStatus::Completed);
    assert_eq!((p.total_children, p.completed_children), (3, 3));
    let expect: Vec<Value> = kids
        .iter()
        .enumerate()
        .map(|(i, k)| json!({ "task_id": k.id.0, "result": { "i": i } }))
        .collect();
    assert_eq!(p.result, Some(json!(expect)));
    let fan_ins = events_of(&mgr, pid, EventType::StatusChanged)
        .into_iter()
        .filter(|e| e.metadata["resume_reason"] == "children_completed")
        .count();
    assert_eq!(fan_ins, 1);
}

/// "fail_parent (an async parent becomes permanently_failed)", at every level:
/// a leaf failure climbs a chain of fail_parent links to the root.
#[test]
fn s5_fail_parent_climbs_every_level_to_the_root() {
    let (mgr, _clock) = manual(4);
    mgr.register_with("leaf", HandlerOptions::new().max_retries(1), |_| {
        Err("leaf exploded".into())
    })
    .unwrap();
    let later_stages = Arc::new(AtomicUsize::new(0));
    for (name, child) in [("b", "leaf"), ("a", "b"), ("root", "a")] {
        let l = later_stages.clone();
        mgr.register(name, move |ctx| {
            if ctx.stage() == 0 {
                return Ok(Outcome::spawn(vec![
                    ChildSpec::new(child, json!(null)).fail_parent()
                ]));
            }
            l.fetch_add(1, Ordering::SeqCst);
            Ok(json!("should not run").into())
        })
        .unwrap();
    }
    mgr.start().unwrap();
    let root = mgr.submit("root", json!(null)).unwrap();
    let r = mgr.wait(root, PATIENCE).unwrap();
    assert_eq!(r.status, TaskStatus::PermanentlyFailed);
    let a = children_of(&mgr, root)[0].clone();
    let b = children_of(&mgr, a.id)[0].clone();
    let leaf = children_of(&mgr, b.id)[0].clone();
    assert_eq!(leaf.status, TaskStatus::PermanentlyFailed);
    for (parent, child) in [(&r, &a), (&a, &b), (&b, &leaf)] {
        let parent = mgr.get_task(parent.id).unwrap();
        assert_eq!(
            parent.status,
            TaskStatus::PermanentlyFailed,
            "{}",
            parent.name
        );
        assert!(
            parent.error.as_deref().unwrap().contains("leaf exploded"),
            "{}: {:?}",
            parent.name,
            parent.error
        );
        let pf = events_of(&mgr, parent.id, EventType::PermanentlyFailed);
        assert_eq!(pf.len(), 1, "{}", parent.name);
        assert_eq!(pf[0].metadata["reason"], "child_failed");
        assert_eq!(pf[0].metadata["child_id"], child.id.0);
        assert_eq!(parent.root_id.unwrap_or(parent.id), root);
    }
    assert_eq!(later_stages.load(Ordering::SeqCst), 0, "no parent resumed");
}

/// The policy belongs to each child: a mid-level parent that delivers its
/// leaf's failure and completes does not fail its own fail_parent parent.
#[test]
fn s5_a_delivered_failure_below_a_fail_parent_link_stops_where_it_is_handled() {
    let (mgr, _clock) = manual(4);
    mgr.register_with("leaf", HandlerOptions::new().max_retries(1), |_| {
        Err("leaf exploded".into())
    })
    .unwrap();
    mgr.register("mid", |ctx| {
        if ctx.stage() == 0 {
            return Ok(Outcome::spawn(vec![ChildSpec::new("leaf", json!(null))]));
        }
        let entries = ctx.result().cloned().unwrap();
        Ok(json!({ "handled": entries }).into())
    })
    .unwrap();
    mgr.register("root", |ctx| {
        if ctx.stage() == 0 {
            return Ok(Outcome::spawn(vec![
                ChildSpec::new("mid", json!(null)).fail_parent()
            ]));
        }
        Ok(ctx.result().cloned().unwrap().into())
    })
    .unwrap();
    mgr.start().unwrap();
    let root = mgr.submit("root", json!(null)).unwrap();
    let r = mgr.wait(root, PATIENCE).unwrap();
    assert_eq!(r.status, TaskStatus::Completed, "{:?}", r.error);
    let mid = children_of(&mgr, root)[0].clone();
    let leaf = children_of(&mgr, mid.id)[0].clone();
    assert_eq!(mid.status, TaskStatus::Completed);
    assert_eq!(leaf.status, TaskStatus::PermanentlyFailed);
    let handled = json!({ "handled": [{ "task_id": leaf.id.0, "error": "leaf exploded" }] });
    assert_eq!(mid.result, Some(handled.clone()));
    assert_eq!(
        r.result,
        Some(json!([{ "task_id": mid.id.0, "result": handled }]))
    );
}

/// "A child is finished when it ... becomes permanently_failed": a cancelled
/// (explicitly suspended) child with fail_parent fails its parent.
#[test]
fn s5_a_cancelled_fail_parent_child_fails_its_parent() {
    let (mgr, _clock) = manual(4);
    mgr.register("review", |_| Ok(Outcome::suspend("needs_review")))
        .unwrap();
    mgr.register("ok", |_| Ok(json!("fine").into())).unwrap();
    let stage1 = Arc::new(AtomicUsize::new(0));
    let s = stage1.clone();
    mgr.register("parent", move |ctx| {
        if ctx.stage() == 0 {
            return Ok(Outcome::spawn(vec![
                ChildSpec::new("ok", json!(null)),
                ChildSpec::new("review", json!(null)).fail_parent(),
            ]));
        }
        s.fetch_add(1, Ordering::SeqCst);
        Ok(json!("should not run").into())
    })
    .unwrap();
    mgr.start().unwrap();
    let pid = mgr.submit("parent", json!(null)).unwrap();
    eventually("review child suspended, ok child delivered", || {
        let kids = children_of(&mgr, pid);
        kids.len() == 2
            && kids[1].status == TaskStatus::Suspended
            && mgr.get_task(pid).unwrap().completed_children == 1
    });
    let kid = children_of(&mgr, pid)[1].id;
    mgr.cancel_task(kid, Some("rejected by legal")).unwrap();
    let p = mgr.wait(pid, PATIENCE).unwrap();
    assert_eq!(p.status, TaskStatus::PermanentlyFailed);
    assert!(
        p.error.as_deref().unwrap().contains("rejected by legal"),
        "{:?}",
        p.error
    );
    let pf = events_of(&mgr, pid, EventType::PermanentlyFailed);
    assert_eq!(pf.len(), 1);
    assert_eq!(pf[0].metadata["reason"], "child_failed");
    assert_eq!(pf[0].metadata["child_id"], kid.0);
    assert_eq!(stage1.load(Ordering::SeqCst), 0);
}

/// A child that times out for good is a failed child: its parent sees the
/// child's error verbatim (SPEC §5 "error text verbatim", §4 timeouts).
#[test]
fn s5_a_timed_out_child_is_delivered_with_its_error_verbatim() {
    let (mgr, clock) = manual(4);
    mgr.register_with(
        "slow",
        HandlerOptions::new().timeout(SEC).max_retries(1),
        |ctx| loop {
            if let Err(e) = ctx.check() {
                return Err(e.into());
            }
            std::thread::park_timeout(Duration::from_millis(1));
        },
    )
    .unwrap();
    mgr.register("parent", |ctx| {
        if ctx.stage() == 0 {
            return Ok(Outcome::spawn(vec![ChildSpec::new("slow", json!(null))]));
        }
        Ok(ctx.result().cloned().unwrap().into())
    })
    .unwrap();
    mgr.start().unwrap();
    let pid = mgr.submit("parent", json!(null)).unwrap();
    eventually("child running", || {
        children_of(&mgr, pid)
            .first()
            .is_some_and(|k| k.status == TaskStatus::Running)
    });
    clock.advance(2 * SEC);
    let p = mgr.wait(pid, PATIENCE).unwrap();
    assert_eq!(p.status, TaskStatus::Completed);
    let kid = children_of(&mgr, pid)[0].clone();
    assert_eq!(kid.status, TaskStatus::PermanentlyFailed);
    let err = kid.error.clone().expect("a timed-out child has an error");
    assert_eq!(
        p.result,
        Some(json!([{ "task_id": kid.id.0, "error": err }]))
    );
    let attempts = mgr.attempts(kid.id).unwrap();
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0].outcome, Some(AttemptOutcome::Timeout));
    assert!(attempts[0].timed_out);
    assert_eq!(events_of(&mgr, kid.id, EventType::TimedOut).len(), 1);
}

/// Children of a deleted parent run to their end; their outcome has nowhere to
/// go and does not bring the parent back.
#[test]
fn s5_children_of_a_deleted_parent_finish_and_do_not_revive_it() {
    let (mgr, _clock) = manual(4);
    let gate = Gate::new();
    let g = gate.clone();
    mgr.register("child", move |_| {
        g.wait();
        Ok(json!("orphan done").into())
    })
    .unwrap();
    mgr.register("parent", |ctx| {
        if ctx.stage() == 0 {
            return Ok(Outcome::spawn(vec![
                ChildSpec::new("child", json!(1)),
                ChildSpec::new("child", json!(2)),
            ]));
        }
        Ok(json!("parent ran again").into())
    })
    .unwrap();
    mgr.start().unwrap();
    let pid = mgr.submit("parent", json!(null)).unwrap();
    eventually("children running", || {
        let kids = children_of(&mgr, pid);
        kids.len() == 2 && kids.iter().all(|k| k.status == TaskStatus::Running)
    });
    let kids = children_of(&mgr, pid);
    assert_eq!(
        mgr.delete_tasks(&TaskFilter::all().name("parent")).unwrap(),
        1
    );
    assert!(mgr.get_task(pid).is_none());
    gate.open();
    for k in &kids {
        let t = mgr.wait(k.id, PATIENCE).unwrap();
        assert_eq!(t.status, TaskStatus::Completed);
        assert_eq!(t.result, Some(json!("orphan done")));
        assert_eq!(t.parent_id, Some(pid));
    }
    assert!(mgr.get_task(pid).is_none(), "the parent stays deleted");
    assert!(matches!(mgr.wait(pid, QUIET), Err(Error::NotFound(id)) if id == pid));
    assert!(mgr.list_tasks(&TaskFilter::all().name("parent")).is_empty());
    assert!(mgr.events(pid).unwrap_or_default().is_empty());
}

/// A parent resumed by hand while it awaits children (SPEC §6 resume from
/// suspended: stage + 1, `task_resumed`) runs on; the old round's late child
/// is not delivered into its next round.
#[test]
fn s5_a_parent_resumed_by_hand_ignores_its_old_rounds_late_child() {
    let (mgr, _clock) = manual(4);
    let gate = Gate::new();
    let g = gate.clone();
    mgr.register("slow", move |_| {
        g.wait();
        Ok(json!("slow").into())
    })
    .unwrap();
    mgr.register("fast", |_| Ok(json!("fast").into())).unwrap();
    let runs = Arc::new(AtomicUsize::new(0));
    let r = runs.clone();
    mgr.register("parent", move |ctx| {
        r.fetch_add(1, Ordering::SeqCst);
        match ctx.stage() {
            0 => Ok(Outcome::spawn(vec![ChildSpec::new("slow", json!(null))])),
            1 => Ok(Outcome::spawn(vec![ChildSpec::new("fast", json!(null))])),
            _ => Ok(json!({ "seen": ctx.result().cloned() }).into()),
        }
    })
    .unwrap();
    mgr.start().unwrap();
    let pid = mgr.submit("parent", json!(null)).unwrap();
    eventually("slow child running", || {
        children_of(&mgr, pid)
            .first()
            .is_some_and(|k| k.status == TaskStatus::Running)
    });
    mgr.resume_task(pid, Some("operator")).unwrap();
    let resumed = events_of(&mgr, pid, EventType::Resumed);
    assert_eq!(resumed.len(), 1);
    assert_eq!(resumed[0].metadata["resume_reason"], "operator");
    assert_eq!(resumed[0].stage, 1);
    let p = mgr.wait(pid, PATIENCE).unwrap();
    assert_eq!(p.status, TaskStatus::Completed);
    assert_eq!(p.stage, 2);
    let kids = children_of(&mgr, pid);
    assert_eq!(kids.len(), 2);
    assert_eq!(&*kids[1].name, "fast");
    assert_eq!(
        p.result,
        Some(json!({ "seen": [{ "task_id": kids[1].id.0, "result": "fast" }] })),
        "round 2 sees only its own child"
    );
    let before = (mgr.get_task(pid).unwrap(), mgr.events(pid).unwrap());
    gate.open();
    assert_eq!(
        mgr.wait(kids[0].id, PATIENCE).unwrap().status,
        TaskStatus::Completed
    );
    let after = (mgr.get_task(pid).unwrap(), mgr.events(pid).unwrap());
    assert_eq!(after, before, "the late child changed the finished parent");
    assert_eq!(runs.load(Ordering::SeqCst), 3);
}

/// Fan-in counting at scale: 60 children over 4 workers with mixed outcomes
/// are each counted once and each appear once, in id order, with the outcome
/// their task records.
#[test]
fn s5_a_wide_fan_in_counts_every_child_exactly_once() {
    let (mgr, _clock) = manual(4);
    mgr.register_with("maybe", HandlerOptions::new().max_retries(2), |ctx| {
        let i = ctx.payload().as_u64().unwrap();
        match i % 3 {
            0 => Err(format!("child {i} failed on try {}", ctx.retry_count()).into()),
            1 if ctx.retry_count() == 0 => Err("flaky".into()),
            _ => Ok(json!(i).into()),
        }
    })
    .unwrap();
    mgr.register("parent", |ctx| {
        if ctx.stage() == 0 {
            return Ok(Outcome::spawn(
                (0..60u64)
                    .map(|i| ChildSpec::new("maybe", json!(i)))
                    .collect(),
            ));
        }
        Ok(ctx.result().cloned().unwrap().into())
    })
    .unwrap();
    mgr.start().unwrap();
    let pid = mgr.submit("parent", json!(null)).unwrap();
    let p = mgr.wait(pid, PATIENCE).unwrap();
    assert_eq!(p.status, TaskStatus::Completed);
    assert_eq!((p.total_children, p.completed_children), (60, 60));
    let kids = children_of(&mgr, pid);
    let entries = p.result.unwrap();
    let entries = entries.as_array().unwrap();
    assert_eq!(entries.len(), 60);
    for (e, k) in entries.iter().zip(&kids) {
        assert_eq!(e["task_id"], k.id.0);
        match k.status {
            TaskStatus::Completed => assert_eq!(Some(&e["result"]), k.result.as_ref()),
            TaskStatus::PermanentlyFailed => {
                assert_eq!(e["error"].as_str(), k.error.as_deref());
                assert_eq!(
                    k.error.as_deref(),
                    Some(format!("child {} failed on try 1", k.payload).as_str())
                );
            }
            other => panic!("child {} is {other}", k.id),
        }
    }
    let failed = kids
        .iter()
        .filter(|k| k.status == TaskStatus::PermanentlyFailed)
        .count();
    assert_eq!(failed, 20);
    let fan_ins = events_of(&mgr, pid, EventType::StatusChanged)
        .into_iter()
        .filter(|e| e.metadata["resume_reason"] == "children_completed")
        .count();
    assert_eq!(fan_ins, 1);
}

/// The stage a run saw and its context bytes.
type StageContext = (u32, Option<Vec<u8>>);

/// Context: "opaque bytes ... set when spawning or suspending; survives
/// completion; never inherited by children", through a stop and reopen: every
/// byte value, a suspension without a context keeping the saved one, and an
/// empty context being bytes, not "none". Also: listing by suspend reason and
/// the resume reason survive the reopen.
#[test]
fn s5_context_bytes_round_trip_through_spawn_suspend_and_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(JAN1);
    let all: Vec<u8> = (0..=255u8).collect();
    let seen: Arc<Mutex<Vec<StageContext>>> = Arc::default();
    let leaf_ctx: Arc<Mutex<Vec<Option<Vec<u8>>>>> = Arc::default();
    let register = |mgr: &TaskManager| {
        let lc = leaf_ctx.clone();
        mgr.register("leaf", move |ctx| {
            lc.lock().unwrap().push(ctx.context().map(<[u8]>::to_vec));
            Ok(json!("leaf").into())
        })
        .unwrap();
        let (s, all) = (seen.clone(), all.clone());
        mgr.register("flow", move |ctx| {
            let stage = ctx.stage();
            if stage > 0 {
                s.lock()
                    .unwrap()
                    .push((stage, ctx.context().map(<[u8]>::to_vec)));
            }
            match stage {
                0 => Ok(Outcome::Spawn {
                    children: vec![ChildSpec::new("leaf", json!(null))],
                    context: Some(all.clone()),
                }),
                1 => Ok(Outcome::suspend("review")),
                2 => Ok(Outcome::Suspend {
                    reason: "second look".into(),
                    context: Some(Vec::new()),
                }),
                _ => Ok(json!("done").into()),
            }
        })
        .unwrap();
    };

    let mgr = build_unlocked(durable(dir.path(), &clock)).unwrap();
    register(&mgr);
    mgr.start().unwrap();
    let pid = mgr.submit("flow", json!(null)).unwrap();
    eventually("suspended for review", || {
        mgr.list_tasks(&by_reason("review")).len() == 1
    });
    assert_eq!(mgr.get_task(pid).unwrap().context, Some(all.clone()));
    shut(mgr);

    let mgr = build_unlocked(durable(dir.path(), &clock)).unwrap();
    register(&mgr);
    let t = mgr.get_task(pid).unwrap();
    assert_eq!((t.status, t.stage), (TaskStatus::Suspended, 1));
    assert_eq!(t.context, Some(all.clone()), "context after the reopen");
    let listed: Vec<TaskId> = mgr
        .list_tasks(&by_reason("review"))
        .iter()
        .map(|t| t.id)
        .collect();
    assert_eq!(listed, [pid], "listing by reason after the reopen");
    mgr.start().unwrap();
    mgr.resume_task(pid, Some("approved")).unwrap();
    eventually("suspended for a second look", || {
        mgr.list_tasks(&by_reason("second look")).len() == 1
    });
    assert!(mgr.list_tasks(&by_reason("review")).is_empty());
    assert_eq!(mgr.get_task(pid).unwrap().context, Some(Vec::new()));
    mgr.resume_task(pid, None).unwrap();
    let t = mgr.wait(pid, PATIENCE).unwrap();
    assert_eq!((t.status, t.stage), (TaskStatus::Completed, 3));
    shut(mgr);

    let mgr = build_unlocked(durable(dir.path(), &clock)).unwrap();
    let t = mgr.get_task(pid).unwrap();
    assert_eq!(t.status, TaskStatus::Completed);
    assert_eq!(
        t.context,
        Some(Vec::new()),
        "an empty context survives completion and a reopen"
    );
    let leaf = children_of(&mgr, pid)[0].clone();
    assert_eq!(leaf.context, None, "children never inherit the context");
    let reasons: Vec<Value> = events_of(&mgr, pid, EventType::Resumed)
        .iter()
        .map(|e| e.metadata["resume_reason"].clone())
        .collect();
    assert_eq!(reasons, [json!("approved"), json!("manual")]);
    assert_eq!(
        seen.lock().unwrap().clone(),
        [
            (1, Some(all.clone())),
            (2, Some(all.clone())),
            (3, Some(Vec::new()))
        ],
        "stage 2 kept the context its suspension did not replace"
    );
    assert_eq!(leaf_ctx.lock().unwrap().clone(), [None]);
    drop(mgr);
}

/// A child that cannot run before the stop (it requires a capability only the
/// reopened manager's pool has).
fn later_child(name: &str) -> ChildSpec {
    ChildSpec::new(name, json!(null)).requires(["later"])
}

/// The fail_parent policy is part of the durable state: a child that fails
/// after a reopen still fails its parent.
#[test]
fn s5_a_fail_parent_policy_survives_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(JAN1);
    let stage1 = Arc::new(AtomicUsize::new(0));
    let register = |mgr: &TaskManager| {
        mgr.register("ok", |_| Ok(json!("ok").into())).unwrap();
        mgr.register_with("bad", HandlerOptions::new().max_retries(1), |_| {
            Err("bad after reopen".into())
        })
        .unwrap();
        let s = stage1.clone();
        mgr.register("parent", move |ctx| {
            if ctx.stage() == 0 {
                return Ok(Outcome::spawn(vec![
                    ChildSpec::new("ok", json!(null)),
                    later_child("bad").fail_parent(),
                ]));
            }
            s.fetch_add(1, Ordering::SeqCst);
            Ok(json!("should not run").into())
        })
        .unwrap();
    };
    let mgr = build_unlocked(durable(dir.path(), &clock)).unwrap();
    register(&mgr);
    mgr.start().unwrap();
    let pid = mgr.submit("parent", json!(null)).unwrap();
    eventually("ok child delivered", || {
        let p = mgr.get_task(pid).unwrap();
        p.status == TaskStatus::Suspended && p.completed_children == 1
    });
    let bad = children_of(&mgr, pid)[1].id;
    assert_eq!(status(&mgr, bad), TaskStatus::Pending);
    shut(mgr);

    let mgr = build_unlocked(durable(dir.path(), &clock).pool(Pool::new("later").tags(["later"])))
        .unwrap();
    register(&mgr);
    assert_eq!(status(&mgr, pid), TaskStatus::Suspended);
    mgr.start().unwrap();
    let p = mgr.wait(pid, PATIENCE).unwrap();
    assert_eq!(p.status, TaskStatus::PermanentlyFailed);
    assert!(
        p.error.as_deref().unwrap().contains("bad after reopen"),
        "{:?}",
        p.error
    );
    let pf = events_of(&mgr, pid, EventType::PermanentlyFailed);
    assert_eq!(pf.len(), 1);
    assert_eq!(pf[0].metadata["reason"], "child_failed");
    assert_eq!(pf[0].metadata["child_id"], bad.0);
    assert_eq!(stage1.load(Ordering::SeqCst), 0);
    shut(mgr);
}

/// A parent deleted while its child waits stays deleted when the child
/// finishes after a reopen, and the log replays cleanly afterwards.
#[test]
fn s5_a_deleted_parent_stays_deleted_when_its_child_finishes_after_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(JAN1);
    let register = |mgr: &TaskManager| {
        mgr.register("child", |_| Ok(json!("late child").into()))
            .unwrap();
        mgr.register("parent", |ctx| {
            if ctx.stage() == 0 {
                return Ok(Outcome::spawn(vec![later_child("child")]));
            }
            Ok(json!("parent ran again").into())
        })
        .unwrap();
    };
    let mgr = build_unlocked(durable(dir.path(), &clock)).unwrap();
    register(&mgr);
    mgr.start().unwrap();
    let pid = mgr.submit("parent", json!(null)).unwrap();
    wait_status(&mgr, pid, TaskStatus::Suspended);
    let kid = children_of(&mgr, pid)[0].id;
    assert_eq!(
        mgr.delete_tasks(&TaskFilter::all().name("parent")).unwrap(),
        1
    );
    shut(mgr);

    let later = || durable(dir.path(), &clock).pool(Pool::new("later").tags(["later"]));
    let mgr = build_unlocked(later()).unwrap();
    register(&mgr);
    assert!(mgr.get_task(pid).is_none());
    mgr.start().unwrap();
    let k = mgr.wait(kid, PATIENCE).unwrap();
    assert_eq!(k.status, TaskStatus::Completed);
    assert!(mgr.get_task(pid).is_none());
    shut(mgr);

    let mgr = build_unlocked(later()).unwrap();
    assert!(mgr.get_task(pid).is_none(), "the parent stays deleted");
    let k = mgr.get_task(kid).unwrap();
    assert_eq!(k.status, TaskStatus::Completed);
    assert_eq!(k.result, Some(json!("late child")));
    assert_eq!(mgr.list_tasks(&TaskFilter::all()).len(), 1);
    drop(mgr);
}

// ---------------------------------------------------------------------------
// §6 Suspension, resume, cancel, pause
// ---------------------------------------------------------------------------

/// One task in each status a control call can meet.
struct Zoo {
    pending: TaskId,
    running: TaskId,
    completed: TaskId,
    permanently_failed: TaskId,
    paused: TaskId,
    suspended: TaskId,
    gate: Arc<Gate>,
}

fn zoo(mgr: &TaskManager) -> Zoo {
    let gate = Gate::new();
    let g = gate.clone();
    mgr.register("block", move |_| {
        g.wait();
        Ok(json!(null).into())
    })
    .unwrap();
    mgr.register("ok", |_| Ok(json!(null).into())).unwrap();
    mgr.register_with("bad", HandlerOptions::new().max_retries(1), |_| {
        Err("bad".into())
    })
    .unwrap();
    mgr.register("hold", |_| Ok(Outcome::suspend("hold")))
        .unwrap();
    mgr.start().unwrap();
    let later = SubmitOptions::new().delay(Duration::from_secs(3600));
    let pending = mgr.submit_with("ok", json!(null), later.clone()).unwrap();
    let paused = mgr.submit_with("ok", json!(null), later).unwrap();
    mgr.pause_task(paused).unwrap();
    let running = mgr.submit("block", json!(null)).unwrap();
    let completed = mgr.submit("ok", json!(null)).unwrap();
    let permanently_failed = mgr.submit("bad", json!(null)).unwrap();
    let suspended = mgr.submit("hold", json!(null)).unwrap();
    mgr.wait(completed, PATIENCE).unwrap();
    mgr.wait(permanently_failed, PATIENCE).unwrap();
    wait_status(mgr, running, TaskStatus::Running);
    wait_status(mgr, suspended, TaskStatus::Suspended);
    let z = Zoo {
        pending,
        running,
        completed,
        permanently_failed,
        paused,
        suspended,
        gate,
    };
    for (id, s) in [
        (z.pending, TaskStatus::Pending),
        (z.paused, TaskStatus::Paused),
        (z.permanently_failed, TaskStatus::PermanentlyFailed),
    ] {
        assert_eq!(status(mgr, id), s);
    }
    z
}

/// Checks that `r` is the SPEC §2 refusal `from -> to` for `id`, with its
/// exact message, and that the task did not change.
fn refused_exactly(
    mgr: &TaskManager,
    id: TaskId,
    from: TaskStatus,
    to: TaskStatus,
    call: impl FnOnce() -> fibflow::Result<()>,
) {
    let before = (mgr.get_task(id).unwrap(), mgr.events(id).unwrap());
    let err = call().expect_err(&format!("{from} -> {to} must be refused"));
    assert_eq!(
        err.to_string(),
        format!("task {id} cannot go from {from} to {to}")
    );
    match err {
        Error::Transition(TransitionError::InvalidTransition {
            id: i,
            from: f,
            to: t,
        }) => assert_eq!((i, f, t), (id, from, to)),
        other => panic!("{from} -> {to}: {other:?}"),
    }
    let after = (mgr.get_task(id).unwrap(), mgr.events(id).unwrap());
    assert_eq!(after, before, "a refused call changed task {id}");
}

/// "resume_task(id, reason?): from suspended ... from paused": every other
/// status is refused with an error naming it.
#[test]
fn s6_resume_task_is_refused_from_every_other_status_with_the_status_named() {
    let (mgr, _clock) = manual(2);
    let z = zoo(&mgr);
    for (id, from) in [
        (z.pending, TaskStatus::Pending),
        (z.running, TaskStatus::Running),
        (z.completed, TaskStatus::Completed),
        (z.permanently_failed, TaskStatus::PermanentlyFailed),
    ] {
        refused_exactly(&mgr, id, from, TaskStatus::Pending, || {
            mgr.resume_task(id, Some("why"))
        });
    }
    // The allowed ones.
    mgr.resume_task(z.paused, None).unwrap();
    mgr.resume_task(z.suspended, None).unwrap();
    assert_ne!(status(&mgr, z.paused), TaskStatus::Paused);
    z.gate.open();
    mgr.wait(z.running, PATIENCE).unwrap();
}

/// "cancel_task(id, reason?): suspended → permanently_failed": pending,
/// running, paused and finished tasks are refused (SPEC §2: permanently_failed
/// only from failed, timeout, suspended).
#[test]
fn s6_cancel_task_is_refused_from_pending_running_paused_and_finished() {
    let (mgr, _clock) = manual(2);
    let z = zoo(&mgr);
    for (id, from) in [
        (z.pending, TaskStatus::Pending),
        (z.running, TaskStatus::Running),
        (z.paused, TaskStatus::Paused),
        (z.completed, TaskStatus::Completed),
        (z.permanently_failed, TaskStatus::PermanentlyFailed),
    ] {
        refused_exactly(&mgr, id, from, TaskStatus::PermanentlyFailed, || {
            mgr.cancel_task(id, Some("no"))
        });
    }
    mgr.cancel_task(z.suspended, None).unwrap();
    z.gate.open();
    mgr.wait(z.running, PATIENCE).unwrap();
}

/// "pause_task(id): running or pending → paused": suspended, paused and
/// finished tasks are refused.
#[test]
fn s6_pause_task_is_refused_from_suspended_paused_and_finished() {
    let (mgr, _clock) = manual(2);
    let z = zoo(&mgr);
    for (id, from) in [
        (z.suspended, TaskStatus::Suspended),
        (z.paused, TaskStatus::Paused),
        (z.completed, TaskStatus::Completed),
        (z.permanently_failed, TaskStatus::PermanentlyFailed),
    ] {
        refused_exactly(&mgr, id, from, TaskStatus::Paused, || mgr.pause_task(id));
    }
    mgr.pause_task(z.pending).unwrap();
    mgr.pause_task(z.running).unwrap();
    z.gate.open();
    assert_eq!(
        mgr.wait(z.running, PATIENCE).unwrap().status,
        TaskStatus::Paused
    );
}

/// fib-flow's cancelTask: `options.reason ? options.reason : 'Task cancelled'`,
/// so an empty reason gives the default error.
#[test]
fn s6_cancel_with_an_empty_reason_uses_the_default_error() {
    let (mgr, _clock) = manual(1);
    mgr.register("hold", |_| Ok(Outcome::suspend("hold")))
        .unwrap();
    mgr.start().unwrap();
    let id = mgr.submit("hold", json!(null)).unwrap();
    wait_status(&mgr, id, TaskStatus::Suspended);
    mgr.cancel_task(id, Some("")).unwrap();
    let t = mgr.wait(id, PATIENCE).unwrap();
    assert_eq!(t.status, TaskStatus::PermanentlyFailed);
    assert_eq!(t.error.as_deref(), Some("Task cancelled"));
}

/// fib-flow's resumeTask sets resume_reason only when it is truthy, and the
/// event says `manual` otherwise: an empty reason records `manual`.
#[test]
fn s6_resume_with_an_empty_reason_records_manual() {
    let (mgr, _clock) = manual(1);
    mgr.register("hold", |ctx| {
        if ctx.stage() == 0 {
            Ok(Outcome::suspend("hold"))
        } else {
            Ok(json!("resumed").into())
        }
    })
    .unwrap();
    mgr.start().unwrap();
    let id = mgr.submit("hold", json!(null)).unwrap();
    wait_status(&mgr, id, TaskStatus::Suspended);
    mgr.resume_task(id, Some("")).unwrap();
    assert_eq!(
        mgr.wait(id, PATIENCE).unwrap().result,
        Some(json!("resumed"))
    );
    let ev = events_of(&mgr, id, EventType::Resumed);
    assert_eq!(ev.len(), 1);
    assert_eq!(ev[0].metadata["resume_reason"], "manual");
}

/// A handler that blocks on its first call, then returns `late`; on later
/// calls returns `again`.
fn first_call_blocks(
    gate: &Arc<Gate>,
    late: impl Fn() -> Outcome + Send + Sync + 'static,
    again: impl Fn(&fibflow::TaskContext) -> Outcome + Send + Sync + 'static,
) -> impl Fn(&fibflow::TaskContext) -> fibflow::HandlerResult + Send + Sync + 'static {
    let g = gate.clone();
    let calls = AtomicUsize::new(0);
    move |ctx| {
        if calls.fetch_add(1, Ordering::SeqCst) == 0 {
            g.wait();
            return Ok(late());
        }
        Ok(again(ctx))
    }
}

/// Waits until the single worker of `mgr` has dealt with whatever it was
/// running: a probe task submitted now completes only after that.
fn drain_single_worker(mgr: &TaskManager) {
    let probe = mgr.submit("probe", json!(null)).unwrap();
    mgr.wait(probe, PATIENCE).unwrap();
}

/// "pause_task: a running handler is not interrupted but its late result is
/// discarded": a late spawn creates no children; resume runs stage 0 again.
#[test]
fn s6_a_spawn_returned_after_pause_task_creates_no_children() {
    let (mgr, _clock) = manual(1);
    mgr.register("probe", |_| Ok(json!(null).into())).unwrap();
    mgr.register("leaf", |_| Ok(json!("leaf").into())).unwrap();
    let gate = Gate::new();
    let spawn = || Outcome::spawn(vec![ChildSpec::new("leaf", json!(null))]);
    mgr.register(
        "parent",
        first_call_blocks(&gate, spawn, move |ctx| {
            if ctx.stage() == 0 {
                spawn()
            } else {
                Outcome::Complete(json!("finished"))
            }
        }),
    )
    .unwrap();
    mgr.start().unwrap();
    let pid = mgr.submit("parent", json!(null)).unwrap();
    wait_status(&mgr, pid, TaskStatus::Running);
    mgr.pause_task(pid).unwrap();
    gate.open();
    drain_single_worker(&mgr);
    let p = mgr.get_task(pid).unwrap();
    assert_eq!(p.status, TaskStatus::Paused);
    assert_eq!(p.total_children, 0);
    assert!(
        children_of(&mgr, pid).is_empty(),
        "the late spawn created children"
    );
    assert!(!event_names(&mgr, pid).contains(&"task_subtasks_created"));
    assert_eq!(
        mgr.attempts(pid).unwrap()[0].outcome,
        Some(AttemptOutcome::Paused)
    );
    mgr.resume_task(pid, None).unwrap();
    let p = mgr.wait(pid, PATIENCE).unwrap();
    assert_eq!(p.status, TaskStatus::Completed);
    assert_eq!(p.result, Some(json!("finished")));
    assert_eq!(children_of(&mgr, pid).len(), 1);
}

/// The same for a late explicit suspension: it neither suspends the task nor
/// replaces its context.
#[test]
fn s6_a_suspension_returned_after_pause_task_is_discarded() {
    let (mgr, _clock) = manual(1);
    mgr.register("probe", |_| Ok(json!(null).into())).unwrap();
    let gate = Gate::new();
    mgr.register(
        "approval",
        first_call_blocks(
            &gate,
            || Outcome::Suspend {
                reason: "late".into(),
                context: Some(vec![7, 7, 7]),
            },
            |_| Outcome::Complete(json!("second run")),
        ),
    )
    .unwrap();
    mgr.start().unwrap();
    let id = mgr.submit("approval", json!(null)).unwrap();
    wait_status(&mgr, id, TaskStatus::Running);
    mgr.pause_task(id).unwrap();
    gate.open();
    drain_single_worker(&mgr);
    let t = mgr.get_task(id).unwrap();
    assert_eq!(t.status, TaskStatus::Paused);
    assert_eq!(t.context, None, "the late suspension's context was kept");
    assert!(mgr.list_tasks(&by_reason("late")).is_empty());
    assert!(!event_names(&mgr, id).contains(&"task_suspended"));
    mgr.resume_task(id, None).unwrap();
    assert_eq!(
        mgr.wait(id, PATIENCE).unwrap().result,
        Some(json!("second run"))
    );
}

/// "from paused → pending, stage 0": a parent paused after its fan-in (before
/// its stage-1 run) starts its workflow over and sees only the new round.
#[test]
fn s6_resume_from_paused_restarts_a_fanned_in_parent_at_stage_zero() {
    let (mgr, _clock) = manual(2);
    let gate = Gate::new();
    let g = gate.clone();
    let leaf_runs = Arc::new(AtomicUsize::new(0));
    let lr = leaf_runs.clone();
    mgr.register("leaf", move |_| {
        let n = lr.fetch_add(1, Ordering::SeqCst);
        if n == 0 {
            g.wait();
        }
        Ok(json!(n).into())
    })
    .unwrap();
    let spawns = Arc::new(AtomicUsize::new(0));
    let s = spawns.clone();
    mgr.register("parent", move |ctx| {
        if ctx.stage() == 0 {
            s.fetch_add(1, Ordering::SeqCst);
            return Ok(Outcome::spawn(vec![ChildSpec::new("leaf", json!(null))]));
        }
        Ok(json!({ "stage": ctx.stage(), "seen": ctx.result().cloned() }).into())
    })
    .unwrap();
    mgr.start().unwrap();
    let pid = mgr.submit("parent", json!(null)).unwrap();
    eventually("leaf running", || {
        children_of(&mgr, pid)
            .first()
            .is_some_and(|k| k.status == TaskStatus::Running)
    });
    mgr.pause();
    gate.open();
    eventually("fanned in, not claimed", || {
        let p = mgr.get_task(pid).unwrap();
        p.status == TaskStatus::Pending && p.stage == 1
    });
    mgr.pause_task(pid).unwrap();
    assert_eq!(status(&mgr, pid), TaskStatus::Paused);
    // Resume the task while the manager is still paused, so no worker can run
    // stage 0 again before the resume's own event is read.
    mgr.resume_task(pid, None).unwrap();
    let changed = events_of(&mgr, pid, EventType::StatusChanged);
    let last = changed.last().unwrap();
    assert_eq!(
        (last.from_status, last.to_status, last.stage),
        (Some(TaskStatus::Paused), Some(TaskStatus::Pending), 0)
    );
    mgr.resume();
    let p = mgr.wait(pid, PATIENCE).unwrap();
    assert_eq!(p.status, TaskStatus::Completed);
    assert_eq!(spawns.load(Ordering::SeqCst), 2, "stage 0 ran again");
    let kids = children_of(&mgr, pid);
    assert_eq!(kids.len(), 2);
    assert_eq!(
        p.result,
        Some(json!({ "stage": 1, "seen": [{ "task_id": kids[1].id.0, "result": 1 }] }))
    );
}

// ---------------------------------------------------------------------------
// §7 Cron tasks
// ---------------------------------------------------------------------------

/// "A successful round returns the task to pending at the next occurrence":
/// a round that overruns several occurrences runs them not as a burst; the
/// next round is the next occurrence after the round ended.
#[test]
fn s7_a_round_that_overruns_occurrences_does_not_burst() {
    let (mgr, clock) = zoned(T0, "UTC", 2);
    let gate = Gate::new();
    let g = gate.clone();
    let runs = Arc::new(AtomicUsize::new(0));
    let r = runs.clone();
    mgr.register("tick", move |_| {
        if r.fetch_add(1, Ordering::SeqCst) == 0 {
            g.wait();
        }
        Ok(json!("tick").into())
    })
    .unwrap();
    mgr.start().unwrap();
    let id = mgr
        .submit_with(
            "tick",
            json!(null),
            SubmitOptions::new().cron("* * * * * *"),
        )
        .unwrap();
    assert_eq!(mgr.get_task(id).unwrap().next_run_time, T0 + 1_000);
    clock.advance(SEC);
    wait_status(&mgr, id, TaskStatus::Running);
    clock.advance(5 * SEC); // T0+6s: five occurrences pass while round 1 runs
    gate.open();
    round_done(&mgr, id, 1);
    assert_eq!(
        mgr.get_task(id).unwrap().next_run_time,
        T0 + 7_000,
        "the next occurrence strictly after the round"
    );
    stays_unfinished(&mgr, id, "no burst");
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    clock.advance(SEC);
    round_done(&mgr, id, 2);
    assert_eq!(mgr.get_task(id).unwrap().next_run_time, T0 + 8_000);
}

/// "Time zone ... configurable": a daily 09:00 schedule in New York moves from
/// 14:00 UTC to 13:00 UTC across the spring daylight-saving change.
#[test]
fn s7_a_named_zone_follows_daylight_saving_time() {
    // 2024-03-09T12:00:00Z = 07:00 EST; DST starts 2024-03-10 02:00 local.
    let start = 1_709_985_600_000;
    let (mgr, clock) = zoned(start, "America/New_York", 2);
    mgr.register("daily", |_| Ok(json!(null).into())).unwrap();
    mgr.start().unwrap();
    let id = mgr
        .submit_with(
            "daily",
            json!(null),
            SubmitOptions::new().cron("0 0 9 * * *"),
        )
        .unwrap();
    let expected = [
        1_709_992_800_000u64, // 2024-03-09T14:00Z (09:00 EST)
        1_710_075_600_000,    // 2024-03-10T13:00Z (09:00 EDT)
        1_710_162_000_000,    // 2024-03-11T13:00Z
    ];
    assert_eq!(mgr.get_task(id).unwrap().next_run_time, expected[0]);
    for (n, at) in expected.iter().enumerate().take(2) {
        clock.set(*at);
        round_done(&mgr, id, n + 1);
        assert_eq!(
            mgr.get_task(id).unwrap().next_run_time,
            expected[n + 1],
            "after round {}",
            n + 1
        );
    }
}

/// "pause_task: running → paused; a running handler ... its late result is
/// discarded" for a cron round; resume runs it now at stage 0 and the round
/// returns the task to the next occurrence strictly after now.
#[test]
fn s7_pausing_a_running_cron_round_discards_it_and_resume_returns_to_the_schedule() {
    let (mgr, clock) = zoned(T0, "UTC", 1);
    mgr.register("probe", |_| Ok(json!(null).into())).unwrap();
    let gate = Gate::new();
    mgr.register(
        "tick",
        first_call_blocks(
            &gate,
            || Outcome::Complete(json!("late round")),
            |_| Outcome::Complete(json!("resumed round")),
        ),
    )
    .unwrap();
    mgr.start().unwrap();
    let id = mgr
        .submit_with(
            "tick",
            json!(null),
            SubmitOptions::new().cron("*/10 * * * * *"),
        )
        .unwrap();
    assert_eq!(mgr.get_task(id).unwrap().next_run_time, T0 + 10_000);
    clock.advance(10 * SEC);
    wait_status(&mgr, id, TaskStatus::Running);
    mgr.pause_task(id).unwrap();
    gate.open();
    drain_single_worker(&mgr);
    let t = mgr.get_task(id).unwrap();
    assert_eq!(t.status, TaskStatus::Paused);
    assert_eq!(t.result, None, "the late round's result was kept");
    assert_eq!(
        mgr.attempts(id).unwrap()[0].outcome,
        Some(AttemptOutcome::Paused)
    );
    clock.advance(20 * SEC); // T0+30s, on an occurrence; paused tasks do not run
    assert_eq!(status(&mgr, id), TaskStatus::Paused);
    assert_eq!(mgr.attempts(id).unwrap().len(), 1);
    mgr.resume_task(id, None).unwrap();
    round_done(&mgr, id, 2);
    let t = mgr.get_task(id).unwrap();
    assert_eq!(t.result, Some(json!("resumed round")));
    assert_eq!((t.stage, t.retry_count), (0, 0));
    assert_eq!(
        t.next_run_time,
        T0 + 40_000,
        "strictly after now, which is itself an occurrence"
    );
    assert!(!event_names(&mgr, id).contains(&"task_completed"));
}

/// "Missed occurrences while the process was down: run once at start, then
/// resume the schedule", with a 5-field schedule in a named zone (08:30 in
/// Tokyo is 23:30 UTC the day before).
#[test]
fn s7_missed_occurrences_in_a_named_zone_run_once_after_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(JAN1); // 09:00 JST
    let tokyo = || {
        TaskManager::builder()
            .dir(dir.path())
            .segment_size(1 << 20)
            .clock(clock.clone())
            .time_zone(TimeZone::from_name("Asia/Tokyo").unwrap())
            .catch_up(CatchUp::Once)
            .max_concurrent_tasks(1)
    };
    let runs = Arc::new(AtomicUsize::new(0));
    let register = |mgr: &TaskManager| {
        let r = runs.clone();
        mgr.register("morning", move |_| {
            r.fetch_add(1, Ordering::SeqCst);
            Ok(json!("report").into())
        })
        .unwrap();
    };
    let mgr = build_unlocked(tokyo()).unwrap();
    register(&mgr);
    mgr.start().unwrap();
    let id = mgr
        .submit_with(
            "morning",
            json!(null),
            SubmitOptions::new().cron("30 8 * * *"),
        )
        .unwrap();
    assert_eq!(mgr.get_task(id).unwrap().next_run_time, 1_704_151_800_000);
    clock.set(1_704_151_800_000);
    round_done(&mgr, id, 1);
    assert_eq!(mgr.get_task(id).unwrap().next_run_time, 1_704_238_200_000);
    shut(mgr);

    clock.set(1_704_412_800_000); // 2024-01-05T00:00Z: three occurrences missed
    let mgr = build_unlocked(tokyo()).unwrap();
    register(&mgr);
    mgr.start().unwrap();
    round_done(&mgr, id, 2);
    assert_eq!(
        mgr.get_task(id).unwrap().next_run_time,
        1_704_497_400_000,
        "the next 08:30 JST after now"
    );
    stays_unfinished(&mgr, id, "no burst after the reopen");
    assert_eq!(runs.load(Ordering::SeqCst), 2);
    shut(mgr);
}

/// "Explicit suspension ... never resumes by itself" for a cron round; its
/// resumed run (stage + 1) ends the round, which returns the task to its
/// schedule at stage 0, where the next round suspends again.
#[test]
fn s7_an_explicitly_suspended_cron_round_resumes_then_returns_to_its_schedule() {
    let (mgr, clock) = zoned(T0, "UTC", 2);
    mgr.register("gated", |ctx| {
        if ctx.stage() == 0 {
            Ok(Outcome::suspend("approve round"))
        } else {
            Ok(json!({ "approved_at_stage": ctx.stage() }).into())
        }
    })
    .unwrap();
    mgr.start().unwrap();
    let id = mgr
        .submit_with(
            "gated",
            json!(null),
            SubmitOptions::new().cron("*/10 * * * * *"),
        )
        .unwrap();
    clock.advance(10 * SEC);
    wait_status(&mgr, id, TaskStatus::Suspended);
    clock.advance(20 * SEC); // T0+30s: two occurrences pass while it waits
    assert_eq!(status(&mgr, id), TaskStatus::Suspended);
    assert_eq!(mgr.attempts(id).unwrap().len(), 1);
    assert_eq!(mgr.list_tasks(&by_reason("approve round")).len(), 1);
    mgr.resume_task(id, None).unwrap();
    round_done(&mgr, id, 2);
    let t = mgr.get_task(id).unwrap();
    assert_eq!(t.result, Some(json!({ "approved_at_stage": 1 })));
    assert_eq!(
        t.stage, 0,
        "a finished round starts the next one at stage 0"
    );
    assert_eq!(t.next_run_time, T0 + 40_000);
    let outcomes: Vec<_> = mgr
        .attempts(id)
        .unwrap()
        .iter()
        .map(|a| a.outcome)
        .collect();
    assert_eq!(
        outcomes,
        [
            Some(AttemptOutcome::Suspended),
            Some(AttemptOutcome::Completed)
        ]
    );
    assert!(!event_names(&mgr, id).contains(&"task_completed"));
    clock.advance(10 * SEC);
    eventually("the next round suspends again", || {
        mgr.attempts(id).unwrap().len() == 3 && status(&mgr, id) == TaskStatus::Suspended
    });
}

/// SPEC §4 inside a cron round: a failed round is retried at `now +
/// retry_interval` even when occurrences pass meanwhile (they do not run), the
/// retry clears the previous round's result, and success returns the task to
/// the next occurrence with retry_count 0.
#[test]
fn s7_a_failed_round_retries_at_its_interval_past_the_next_occurrences() {
    let (mgr, clock) = zoned(T0, "UTC", 2);
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (c, s) = (calls.clone(), seen.clone());
    mgr.register_with(
        "flaky",
        HandlerOptions::new()
            .retry_interval(Duration::from_secs(25))
            .max_retries(3),
        move |ctx| {
            let n = c.fetch_add(1, Ordering::SeqCst);
            s.lock().unwrap().push(ctx.result().cloned());
            match n {
                1 => Err("round 2 broke".into()),
                _ => Ok(json!(format!("call {n}")).into()),
            }
        },
    )
    .unwrap();
    mgr.start().unwrap();
    let id = mgr
        .submit_with(
            "flaky",
            json!(null),
            SubmitOptions::new().cron("*/10 * * * * *"),
        )
        .unwrap();
    clock.advance(10 * SEC); // T0+10s
    round_done(&mgr, id, 1);
    assert_eq!(mgr.get_task(id).unwrap().result, Some(json!("call 0")));
    clock.advance(10 * SEC); // T0+20s: round 2 fails
    eventually("round 2 failed", || {
        let a = mgr.attempts(id).unwrap();
        a.len() == 2 && a[1].outcome == Some(AttemptOutcome::Failed)
    });
    let t = mgr.get_task(id).unwrap();
    assert_eq!(t.next_run_time, T0 + 45_000, "retry at now + 25 s");
    clock.advance(10 * SEC); // T0+30s
    clock.advance(10 * SEC); // T0+40s
    assert_eq!(
        mgr.attempts(id).unwrap().len(),
        2,
        "occurrences do not run while a retry waits"
    );
    clock.advance(5 * SEC); // T0+45s
    round_done(&mgr, id, 3);
    let t = mgr.get_task(id).unwrap();
    assert_eq!(t.result, Some(json!("call 2")));
    assert_eq!(t.retry_count, 0);
    assert_eq!(t.next_run_time, T0 + 50_000);
    assert_eq!(
        t.error.as_deref(),
        Some("round 2 broke"),
        "the last error is kept"
    );
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 3);
    assert_eq!(
        seen[2], None,
        "the retry cleared the previous round's result"
    );
}

// ---------------------------------------------------------------------------
// §8 Registration and hot reload
// ---------------------------------------------------------------------------

/// "Register one handler, or many at once": a batch with one bad item
/// registers nothing and replaces nothing; a good batch registers all.
#[test]
fn s8_register_many_registers_all_or_none() {
    let (mgr, _clock) = manual(1);
    mgr.register("one", |_| Ok(json!("old one").into()))
        .unwrap();
    let item = |name: &str, v: &'static str, o: HandlerOptions| {
        (
            name.to_owned(),
            Handler::sync(move |_| Ok(json!(v).into())),
            o,
        )
    };
    let err = mgr
        .register_many(vec![
            item("one", "new one", HandlerOptions::new()),
            item("two", "two", HandlerOptions::new().max_concurrent_tasks(0)),
        ])
        .unwrap_err();
    assert!(matches!(err, Error::InvalidOption(_)), "{err}");
    assert!(err.to_string().contains("two"), "{err}");
    assert_eq!(mgr.handler_names(), ["one"]);
    assert!(matches!(
        mgr.submit("two", json!(null)),
        Err(Error::NoHandler(_))
    ));
    mgr.start().unwrap();
    let id = mgr.submit("one", json!(null)).unwrap();
    assert_eq!(
        mgr.wait(id, PATIENCE).unwrap().result,
        Some(json!("old one")),
        "a refused batch replaced a handler"
    );
    mgr.register_many(vec![
        item("one", "new one", HandlerOptions::new()),
        item("two", "two", HandlerOptions::new()),
        item("three", "three", HandlerOptions::new()),
    ])
    .unwrap();
    assert_eq!(mgr.handler_names(), ["one", "three", "two"]);
    for (name, v) in [("one", "new one"), ("two", "two"), ("three", "three")] {
        let id = mgr.submit(name, json!(null)).unwrap();
        assert_eq!(mgr.wait(id, PATIENCE).unwrap().result, Some(json!(v)));
    }
    assert_eq!(mgr.unregister(&["one", "three", "nope"]), 2);
    assert_eq!(mgr.handler_names(), ["two"]);
}

/// "Options are copied at registration" and "a registration wakes exactly the
/// workers that can take the work": raising a handler's cap lets its queued
/// tasks start without any new submission.
#[test]
fn s8_raising_a_handler_cap_on_re_registration_starts_its_queued_tasks() {
    let (mgr, _clock) = manual(4);
    let gate = Gate::new();
    let running = Arc::new(AtomicUsize::new(0));
    let blocking = || {
        let (g, r) = (gate.clone(), running.clone());
        move |_: &fibflow::TaskContext| {
            r.fetch_add(1, Ordering::SeqCst);
            g.wait();
            r.fetch_sub(1, Ordering::SeqCst);
            Ok(json!("done").into())
        }
    };
    mgr.register_with(
        "capped",
        HandlerOptions::new().max_concurrent_tasks(1),
        blocking(),
    )
    .unwrap();
    mgr.start().unwrap();
    let ids: Vec<TaskId> = (0..3)
        .map(|i| mgr.submit("capped", json!(i)).unwrap())
        .collect();
    eventually("one running", || running.load(Ordering::SeqCst) == 1);
    let pending = ids
        .iter()
        .filter(|id| status(&mgr, **id) == TaskStatus::Pending)
        .count();
    assert_eq!(pending, 2);
    mgr.register_with(
        "capped",
        HandlerOptions::new().max_concurrent_tasks(3),
        blocking(),
    )
    .unwrap();
    eventually("all three running", || running.load(Ordering::SeqCst) == 3);
    gate.open();
    for id in ids {
        assert_eq!(
            mgr.wait(id, PATIENCE).unwrap().status,
            TaskStatus::Completed
        );
    }
}

/// Lowering a handler's cap counts the attempts that started under the old
/// registration: no new claim until fewer than the new cap run.
#[test]
fn s8_lowering_a_handler_cap_counts_attempts_started_under_the_old_registration() {
    let (mgr, _clock) = manual(4);
    let gates: Arc<Vec<Arc<Gate>>> = Arc::new((0..4).map(|_| Gate::new()).collect());
    let handler = || {
        let g = gates.clone();
        move |ctx: &fibflow::TaskContext| {
            g[ctx.payload().as_u64().unwrap() as usize].wait();
            Ok(ctx.payload().clone().into())
        }
    };
    mgr.register_with(
        "capped",
        HandlerOptions::new().max_concurrent_tasks(3),
        handler(),
    )
    .unwrap();
    mgr.start().unwrap();
    let ids: Vec<TaskId> = (0..3u64)
        .map(|i| mgr.submit("capped", json!(i)).unwrap())
        .collect();
    eventually("three running", || {
        ids.iter()
            .all(|id| status(&mgr, *id) == TaskStatus::Running)
    });
    mgr.register_with(
        "capped",
        HandlerOptions::new().max_concurrent_tasks(1),
        handler(),
    )
    .unwrap();
    gates[3].open();
    let last = mgr.submit("capped", json!(3)).unwrap();
    gates[0].open();
    mgr.wait(ids[0], PATIENCE).unwrap();
    stays_unfinished(&mgr, last, "two of the old attempts still run, cap is 1");
    gates[1].open();
    mgr.wait(ids[1], PATIENCE).unwrap();
    stays_unfinished(&mgr, last, "one old attempt still runs, cap is 1");
    assert_eq!(status(&mgr, last), TaskStatus::Pending);
    gates[2].open();
    assert_eq!(mgr.wait(last, PATIENCE).unwrap().result, Some(json!(3)));
}

/// "registering an existing name replaces it for future claims only": the
/// retry of an attempt that started under the old handler runs the new one.
#[test]
fn s8_a_retry_claimed_after_a_re_registration_runs_the_new_handler() {
    let (mgr, _clock) = manual(2);
    let gate = Gate::new();
    let g = gate.clone();
    mgr.register("job", move |_| {
        g.wait();
        Err("v1 failed".into())
    })
    .unwrap();
    mgr.start().unwrap();
    let id = mgr.submit("job", json!(null)).unwrap();
    wait_status(&mgr, id, TaskStatus::Running);
    mgr.register("job", |ctx| {
        Ok(json!({ "v": 2, "retry_count": ctx.retry_count() }).into())
    })
    .unwrap();
    gate.open();
    let t = mgr.wait(id, PATIENCE).unwrap();
    assert_eq!(t.status, TaskStatus::Completed);
    assert_eq!(t.result, Some(json!({ "v": 2, "retry_count": 1 })));
    let a = mgr.attempts(id).unwrap();
    assert_eq!(a.len(), 2);
    assert_eq!(a[0].outcome, Some(AttemptOutcome::Failed));
    assert_eq!(a[0].error.as_deref(), Some("v1 failed"));
    assert_eq!(a[1].outcome, Some(AttemptOutcome::Completed));
}

/// "resumed tasks ... use the current one": a parent resumed by its children's
/// fan-in runs the handler registered while it waited.
#[test]
fn s8_a_parent_resumed_by_fan_in_runs_the_handler_registered_while_it_waited() {
    let (mgr, _clock) = manual(2);
    let gate = Gate::new();
    let g = gate.clone();
    mgr.register("child", move |_| {
        g.wait();
        Ok(json!("c").into())
    })
    .unwrap();
    let parent = |version: &'static str| {
        move |ctx: &fibflow::TaskContext| {
            if ctx.stage() == 0 {
                return Ok(Outcome::spawn(vec![ChildSpec::new("child", json!(null))]));
            }
            Ok(json!(version).into())
        }
    };
    mgr.register("parent", parent("v1")).unwrap();
    mgr.start().unwrap();
    let pid = mgr.submit("parent", json!(null)).unwrap();
    wait_status(&mgr, pid, TaskStatus::Suspended);
    mgr.register("parent", parent("v2")).unwrap();
    gate.open();
    assert_eq!(mgr.wait(pid, PATIENCE).unwrap().result, Some(json!("v2")));
}

/// "Unregister ...: in-flight runs finish": the running child finishes and is
/// delivered; its queued sibling waits (saying why) until the name returns,
/// and the parent stays suspended meanwhile.
#[test]
fn s8_unregister_with_queued_children_leaves_them_waiting_until_the_name_returns() {
    let (mgr, _clock) = manual(4);
    let gate = Gate::new();
    let g = gate.clone();
    mgr.register_with(
        "child",
        HandlerOptions::new().max_concurrent_tasks(1),
        move |_| {
            g.wait();
            Ok(json!("old").into())
        },
    )
    .unwrap();
    mgr.register("parent", |ctx| {
        if ctx.stage() == 0 {
            return Ok(Outcome::spawn(vec![
                ChildSpec::new("child", json!(0)),
                ChildSpec::new("child", json!(1)),
            ]));
        }
        Ok(ctx.result().cloned().unwrap().into())
    })
    .unwrap();
    mgr.start().unwrap();
    let pid = mgr.submit("parent", json!(null)).unwrap();
    eventually("one child running, one queued", || {
        let kids = children_of(&mgr, pid);
        kids.len() == 2
            && kids.iter().any(|k| k.status == TaskStatus::Running)
            && kids.iter().any(|k| k.status == TaskStatus::Pending)
    });
    let kids = children_of(&mgr, pid);
    let (run, queued) = if kids[0].status == TaskStatus::Running {
        (kids[0].id, kids[1].id)
    } else {
        (kids[1].id, kids[0].id)
    };
    assert_eq!(mgr.unregister(&["child"]), 1);
    gate.open();
    let r = mgr.wait(run, PATIENCE).unwrap();
    assert_eq!(r.result, Some(json!("old")), "the in-flight run finished");
    eventually("delivered", || {
        mgr.get_task(pid).unwrap().completed_children == 1
    });
    stays_unfinished(&mgr, queued, "a queued child of an unregistered name");
    assert_eq!(status(&mgr, queued), TaskStatus::Pending);
    assert_eq!(
        mgr.waiting_reason(queued).unwrap().as_deref(),
        Some("No handler registered for task: child")
    );
    assert_eq!(status(&mgr, pid), TaskStatus::Suspended);
    mgr.register("child", |_| Ok(json!("new").into())).unwrap();
    let p = mgr.wait(pid, PATIENCE).unwrap();
    assert_eq!(p.status, TaskStatus::Completed);
    let mut expect = vec![
        (run.0, json!({ "task_id": run.0, "result": "old" })),
        (queued.0, json!({ "task_id": queued.0, "result": "new" })),
    ];
    expect.sort_by_key(|(id, _)| *id);
    let expect: Vec<Value> = expect.into_iter().map(|(_, v)| v).collect();
    assert_eq!(p.result, Some(json!(expect)));
}

/// resume_task is not a submission: it works for a suspended task whose
/// handler is gone; the task then waits for a registration and runs the new one.
#[test]
fn s8_a_task_resumed_after_its_handler_is_unregistered_waits_for_the_new_one() {
    let (mgr, _clock) = manual(1);
    mgr.register("approve", |ctx| {
        if ctx.stage() == 0 {
            Ok(Outcome::suspend("sign"))
        } else {
            Ok(json!("v1").into())
        }
    })
    .unwrap();
    mgr.start().unwrap();
    let id = mgr.submit("approve", json!(null)).unwrap();
    wait_status(&mgr, id, TaskStatus::Suspended);
    assert_eq!(mgr.unregister(&["approve"]), 1);
    mgr.resume_task(id, None).unwrap();
    assert_eq!(status(&mgr, id), TaskStatus::Pending);
    assert_eq!(
        mgr.waiting_reason(id).unwrap().as_deref(),
        Some("No handler registered for task: approve")
    );
    mgr.register("approve", |ctx| {
        Ok(json!({ "v": 2, "stage": ctx.stage() }).into())
    })
    .unwrap();
    assert_eq!(
        mgr.wait(id, PATIENCE).unwrap().result,
        Some(json!({ "v": 2, "stage": 1 }))
    );
}

/// "Task info: name and description of a registered handler": of the current
/// registration, so re-registering without a description clears it.
#[test]
fn s8_task_info_follows_the_current_registration() {
    let (mgr, _clock) = manual(1);
    mgr.register_with(
        "h",
        HandlerOptions::new().description("first version"),
        |_| Ok(json!(null).into()),
    )
    .unwrap();
    assert_eq!(
        mgr.task_info("h").unwrap().description.as_deref(),
        Some("first version")
    );
    mgr.register_with(
        "h",
        HandlerOptions::new().description("second version"),
        |_| Ok(json!(null).into()),
    )
    .unwrap();
    assert_eq!(
        mgr.task_info("h").unwrap().description.as_deref(),
        Some("second version")
    );
    mgr.register("h", |_| Ok(json!(null).into())).unwrap();
    let info = mgr.task_info("h").unwrap();
    assert_eq!((info.name.as_str(), info.description), ("h", None));
    mgr.unregister(&["h"]);
    let err = mgr.task_info("h").unwrap_err();
    assert_eq!(err.to_string(), "No task registered with name: h");
}

/// Hot reload may change the handler's kind: queued tasks of a sync handler
/// re-registered as async run the async one; the running sync attempt keeps its.
#[test]
fn s8_a_sync_handler_replaced_by_an_async_one_runs_async_for_queued_tasks() {
    let (mgr, _clock) = manual(1);
    let gate = Gate::new();
    let g = gate.clone();
    mgr.register("job", move |_| {
        g.wait();
        Ok(json!("sync").into())
    })
    .unwrap();
    mgr.start().unwrap();
    let first = mgr.submit("job", json!(null)).unwrap();
    wait_status(&mgr, first, TaskStatus::Running);
    let queued: Vec<TaskId> = (0..3)
        .map(|_| mgr.submit("job", json!(null)).unwrap())
        .collect();
    mgr.register_async("job", |ctx| async move {
        tokio::task::yield_now().await;
        Ok(json!({ "async": ctx.id().0 }).into())
    })
    .unwrap();
    gate.open();
    assert_eq!(
        mgr.wait(first, PATIENCE).unwrap().result,
        Some(json!("sync"))
    );
    for id in queued {
        assert_eq!(
            mgr.wait(id, PATIENCE).unwrap().result,
            Some(json!({ "async": id.0 }))
        );
    }
}
