//! SPEC §5 (workflows: spawn, fan-in, failure policy, context, nesting, wait) and the
//! §8 hot-reload rule for new children, through the public API.

mod common;

use common::{children_of, event_names, eventually, manual, Gate, PATIENCE};
use fibflow::{
    AttemptOutcome, ChildSpec, EventType, HandlerOptions, OnChildFailure, Outcome, Pool,
    SubmitOptions, TaskFilter, TaskId, TaskKind, TaskManager, TaskStatus,
};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn event_of(mgr: &TaskManager, id: TaskId, ty: EventType) -> Vec<fibflow::Event> {
    mgr.events(id)
        .unwrap()
        .into_iter()
        .filter(|e| e.event_type == ty)
        .collect()
}

/// A parent that spawns `n` children of `child` at stage 0 and completes at stage 1
/// with what it saw.
fn register_fan(mgr: &TaskManager, name: &str, child: &'static str, n: usize) {
    mgr.register(name, move |ctx| {
        if ctx.stage() == 0 {
            let kids = (0..n)
                .map(|i| ChildSpec::new(child, json!({ "i": i })))
                .collect();
            return Ok(Outcome::spawn(kids));
        }
        Ok(json!({ "stage": ctx.stage(), "seen": ctx.result().cloned() }).into())
    })
    .unwrap();
}

#[test]
fn spawn_suspends_the_parent_and_creates_linked_async_children() {
    let (mgr, _clock) = manual(4);
    let gate = Gate::new();
    let g = gate.clone();
    mgr.register("child", move |ctx| {
        g.wait();
        Ok(json!({ "double": ctx.payload()["i"].as_i64().unwrap() * 2 }).into())
    })
    .unwrap();
    register_fan(&mgr, "parent", "child", 3);
    mgr.start().unwrap();
    let pid = mgr.submit("parent", json!(null)).unwrap();
    eventually("parent suspended", || {
        mgr.get_task(pid).unwrap().status == TaskStatus::Suspended
    });

    let p = mgr.get_task(pid).unwrap();
    assert_eq!(p.result, None, "result cleared on spawn");
    assert_eq!(p.stage, 0, "stage advances only when the round finishes");
    assert_eq!(p.total_children, 3);
    assert_eq!(p.completed_children, 0);
    let attempts = mgr.attempts(pid).unwrap();
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0].outcome, Some(AttemptOutcome::Suspended));
    assert!(attempts[0].ended_at.is_some());

    let kids = children_of(&mgr, pid);
    assert_eq!(kids.len(), 3);
    for (i, k) in kids.iter().enumerate() {
        assert_eq!(k.parent_id, Some(pid));
        assert_eq!(
            k.root_id,
            Some(pid),
            "root of a top-level parent's child is the parent"
        );
        assert_eq!(k.kind, TaskKind::Async);
        assert_eq!(&*k.name, "child");
        assert_eq!(k.payload, json!({ "i": i }));
        assert_eq!(k.context, None);
        assert_eq!(event_names(&mgr, k.id)[0], "task_created");
        assert_eq!(event_of(&mgr, k.id, EventType::Created).len(), 1);
    }

    let names = event_names(&mgr, pid);
    assert_eq!(
        names,
        [
            "task_created",
            "task_claimed",
            "task_started",
            "task_subtasks_created",
            "task_status_changed"
        ]
    );
    let sub = &event_of(&mgr, pid, EventType::SubtasksCreated)[0];
    let ids: Vec<u64> = kids.iter().map(|k| k.id.0).collect();
    assert_eq!(sub.metadata["child_task_ids"], json!(ids));
    assert_eq!(
        sub.metadata["child_task_names"],
        json!(["child", "child", "child"])
    );
    assert_eq!(sub.metadata["child_count"], json!(3));
    let changed = &event_of(&mgr, pid, EventType::StatusChanged)[0];
    assert_eq!(changed.from_status, Some(TaskStatus::Running));
    assert_eq!(changed.to_status, Some(TaskStatus::Suspended));
    assert_eq!(changed.metadata["suspend_reason"], "awaiting_subtasks");

    gate.open();
    let p = mgr.wait(pid, PATIENCE).unwrap();
    assert_eq!(p.status, TaskStatus::Completed);
    assert_eq!(p.stage, 1);
    assert_eq!(p.completed_children, 3);
    assert_eq!(p.result.as_ref().unwrap()["stage"], 1);
    let seen = p.result.unwrap()["seen"].clone();
    let expect: Vec<Value> = kids
        .iter()
        .enumerate()
        .map(|(i, k)| json!({ "task_id": k.id.0, "result": { "double": i as i64 * 2 } }))
        .collect();
    assert_eq!(seen, json!(expect));
    let numbers: Vec<u32> = mgr
        .attempts(pid)
        .unwrap()
        .iter()
        .map(|a| a.number)
        .collect();
    assert_eq!(numbers, [1, 2], "the stage-1 run is a new attempt");
}

#[test]
fn fan_in_resumes_the_parent_with_sorted_entries_and_verbatim_errors() {
    let (mgr, _clock) = manual(4);
    mgr.register_with("maybe", HandlerOptions::new().max_retries(1), |ctx| {
        let i = ctx.payload()["i"].as_i64().unwrap();
        if i % 2 == 1 {
            Err(format!("child {i} broke: \"quoted\" {{braces}}\n  second line").into())
        } else {
            Ok(json!(i * 10).into())
        }
    })
    .unwrap();
    let seen = Arc::new(Mutex::new(None));
    let s = seen.clone();
    mgr.register("parent", move |ctx| {
        if ctx.stage() == 0 {
            let kids = (0..5)
                .map(|i| ChildSpec::new("maybe", json!({ "i": i })))
                .collect();
            return Ok(Outcome::spawn(kids));
        }
        *s.lock().unwrap() = Some((ctx.stage(), ctx.result().cloned()));
        Ok(json!("done").into())
    })
    .unwrap();
    mgr.start().unwrap();
    let pid = mgr.submit("parent", json!(null)).unwrap();
    let p = mgr.wait(pid, PATIENCE).unwrap();
    assert_eq!(
        p.status,
        TaskStatus::Completed,
        "deliver (the default) lets the parent finish"
    );
    assert_eq!(p.result, Some(json!("done")));
    assert_eq!(p.completed_children, 5);
    assert_eq!(p.total_children, 5);

    let kids = children_of(&mgr, pid);
    let (stage, result) = seen.lock().unwrap().clone().unwrap();
    assert_eq!(stage, 1);
    let entries = result.unwrap();
    let entries = entries.as_array().unwrap();
    assert_eq!(entries.len(), 5);
    let ids: Vec<u64> = entries
        .iter()
        .map(|e| e["task_id"].as_u64().unwrap())
        .collect();
    let mut sorted = ids.clone();
    sorted.sort_unstable();
    assert_eq!(ids, sorted, "entries sorted by task id");
    for (e, k) in entries.iter().zip(&kids) {
        assert_eq!(e["task_id"], k.id.0);
        let i = k.payload["i"].as_i64().unwrap();
        let obj = e.as_object().unwrap();
        assert_eq!(obj.len(), 2, "{e}");
        if i % 2 == 1 {
            assert_eq!(k.status, TaskStatus::PermanentlyFailed);
            assert_eq!(
                e["error"],
                format!("child {i} broke: \"quoted\" {{braces}}\n  second line")
            );
            assert_eq!(
                e["error"].as_str(),
                k.error.as_deref(),
                "error text verbatim"
            );
        } else {
            assert_eq!(k.status, TaskStatus::Completed);
            assert_eq!(e["result"], json!(i * 10));
        }
    }

    let resumed: Vec<_> = event_of(&mgr, pid, EventType::StatusChanged)
        .into_iter()
        .filter(|e| e.metadata["resume_reason"] == "children_completed")
        .collect();
    assert_eq!(resumed.len(), 1, "one fan-in per round");
    assert_eq!(resumed[0].from_status, Some(TaskStatus::Suspended));
    assert_eq!(resumed[0].to_status, Some(TaskStatus::Pending));
    assert_eq!(
        resumed[0].stage, 1,
        "the fan-in event carries the new stage"
    );
    assert_eq!(
        event_names(&mgr, pid),
        [
            "task_created",
            "task_claimed",
            "task_started",
            "task_subtasks_created",
            "task_status_changed",
            "task_status_changed",
            "task_claimed",
            "task_started",
            "task_completed"
        ]
    );
}

#[test]
fn multi_round_parent_clears_its_result_on_each_spawn() {
    let (mgr, _clock) = manual(4);
    let gate = Gate::new();
    let g = gate.clone();
    mgr.register("leaf", move |ctx| {
        if ctx.payload()["block"] == true {
            g.wait();
        }
        Ok(ctx.payload()["v"].clone().into())
    })
    .unwrap();
    let stages = Arc::new(Mutex::new(Vec::new()));
    let st = stages.clone();
    mgr.register("rounds", move |ctx| {
        st.lock()
            .unwrap()
            .push((ctx.stage(), ctx.result().cloned()));
        match ctx.stage() {
            0 => Ok(Outcome::spawn(vec![ChildSpec::new(
                "leaf",
                json!({ "v": "a" }),
            )])),
            1 => Ok(Outcome::spawn(vec![
                ChildSpec::new("leaf", json!({ "v": "b", "block": true })),
                ChildSpec::new("leaf", json!({ "v": "c" })),
            ])),
            _ => Ok(json!({ "final": ctx.result().cloned() }).into()),
        }
    })
    .unwrap();
    mgr.start().unwrap();
    let pid = mgr.submit("rounds", json!(null)).unwrap();
    eventually("second round suspended", || {
        let t = mgr.get_task(pid).unwrap();
        t.status == TaskStatus::Suspended && t.total_children == 3
    });
    let p = mgr.get_task(pid).unwrap();
    assert_eq!(p.stage, 1);
    assert_eq!(
        p.result, None,
        "the round-1 entries are cleared by the second spawn"
    );
    gate.open();
    let p = mgr.wait(pid, PATIENCE).unwrap();
    assert_eq!(p.status, TaskStatus::Completed);
    assert_eq!(p.stage, 2);
    assert_eq!((p.total_children, p.completed_children), (3, 3));
    let kids = children_of(&mgr, pid);
    let stages = stages.lock().unwrap().clone();
    assert_eq!(stages.len(), 3);
    assert_eq!(stages[0], (0, None));
    assert_eq!(
        stages[1],
        (1, Some(json!([{ "task_id": kids[0].id.0, "result": "a" }])))
    );
    assert_eq!(
        stages[2],
        (
            2,
            Some(json!([
                { "task_id": kids[1].id.0, "result": "b" },
                { "task_id": kids[2].id.0, "result": "c" }
            ]))
        ),
        "each round sees only its own children"
    );
    let outcomes: Vec<_> = mgr
        .attempts(pid)
        .unwrap()
        .iter()
        .map(|a| a.outcome)
        .collect();
    assert_eq!(
        outcomes,
        [
            Some(AttemptOutcome::Suspended),
            Some(AttemptOutcome::Suspended),
            Some(AttemptOutcome::Completed)
        ]
    );
}

#[test]
fn child_options_come_from_spec_then_registration_then_parent() {
    let mgr = TaskManager::builder()
        .memory()
        .max_concurrent_tasks(4)
        .pool(Pool::new("gpu").tags(["gpu", "big"]).concurrency(2))
        .build()
        .unwrap();
    mgr.register("plain", |_| Ok(json!(null).into())).unwrap();
    mgr.register_with(
        "configured",
        HandlerOptions::new()
            .priority(2)
            .timeout(Duration::from_secs(9))
            .max_retries(4)
            .retry_interval(Duration::from_secs(1))
            .requires(["big"]),
        |_| Ok(json!(null).into()),
    )
    .unwrap();
    mgr.register("parent", |ctx| {
        if ctx.stage() == 0 {
            return Ok(Outcome::spawn(vec![
                ChildSpec::new("plain", json!(0)),
                ChildSpec::new("configured", json!(1)),
                ChildSpec::new("configured", json!(2))
                    .priority(-1)
                    .tag("ctag")
                    .timeout(Duration::from_millis(1500))
                    .max_retries(2)
                    .retry_interval(Duration::from_millis(500))
                    // Added to the handler's `big`, as a submission's are.
                    .requires(["gpu"])
                    .fail_parent(),
            ]));
        }
        Ok(json!("ok").into())
    })
    .unwrap();
    let opts = SubmitOptions::new()
        .priority(7)
        .tag("ptag")
        .timeout(Duration::from_secs(11))
        .max_retries(5)
        .retry_interval(Duration::from_secs(3))
        .requires(["gpu"]);
    let pid = mgr.submit_with("parent", json!(null), opts).unwrap();
    mgr.start().unwrap();
    assert_eq!(
        mgr.wait(pid, PATIENCE).unwrap().status,
        TaskStatus::Completed
    );
    let kids = children_of(&mgr, pid);
    assert_eq!(kids.len(), 3);

    let k = &kids[0]; // everything from the parent
    assert_eq!(k.priority, 7);
    assert_eq!(k.tag.as_deref(), Some("ptag"));
    assert_eq!(k.timeout_ms, 11_000);
    assert_eq!(k.max_retries, 5);
    assert_eq!(k.retry_interval_ms, 3_000);
    assert_eq!(k.requires, ["gpu"]);
    assert_eq!(k.on_failure, OnChildFailure::Deliver);
    assert!(k.worker.as_deref().unwrap().starts_with("gpu-"));

    let k = &kids[1]; // from the child's registration (it has no tag: the parent's)
    assert_eq!(k.priority, 2);
    assert_eq!(k.tag.as_deref(), Some("ptag"));
    assert_eq!(k.timeout_ms, 9_000);
    assert_eq!(k.max_retries, 4);
    assert_eq!(k.retry_interval_ms, 1_000);
    assert_eq!(k.requires, ["big"]);

    let k = &kids[2]; // from the spec
    assert_eq!(k.priority, -1);
    assert_eq!(k.tag.as_deref(), Some("ctag"));
    assert_eq!(k.timeout_ms, 1_500);
    assert_eq!(k.max_retries, 2);
    assert_eq!(k.retry_interval_ms, 500);
    assert_eq!(k.requires, ["big", "gpu"]);
    assert_eq!(k.on_failure, OnChildFailure::FailParent);
}

#[test]
fn spawning_an_unregistered_child_fails_the_parent_attempt() {
    let (mgr, _clock) = manual(2);
    mgr.register_with("parent", HandlerOptions::new().max_retries(1), |_| {
        Ok(Outcome::spawn(vec![ChildSpec::new("ghost", json!(null))]))
    })
    .unwrap();
    mgr.start().unwrap();
    let pid = mgr.submit("parent", json!(null)).unwrap();
    let p = mgr.wait(pid, PATIENCE).unwrap();
    assert_eq!(p.status, TaskStatus::PermanentlyFailed);
    assert_eq!(
        p.error.as_deref(),
        Some("No handler registered for task: ghost")
    );
    assert!(
        children_of(&mgr, pid).is_empty(),
        "no child is created when the spawn is refused"
    );
    assert_eq!(p.total_children, 0);
}

#[test]
fn fail_parent_child_fails_an_async_parent_at_once() {
    let (mgr, _clock) = manual(4);
    let gate = Gate::new();
    let slow_started = Gate::new();
    let (g, started) = (gate.clone(), slow_started.clone());
    mgr.register("slow", move |_| {
        started.open();
        g.wait();
        Ok(json!("slow done").into())
    })
    .unwrap();
    // The bad child fails only once its slow sibling runs, so the sibling is
    // claimed (running) when the parent fails, whichever worker got there first.
    let started = slow_started.clone();
    mgr.register_with("bad", HandlerOptions::new().max_retries(1), move |_| {
        started.wait();
        Err("bad child".into())
    })
    .unwrap();
    let parent_runs = Arc::new(AtomicUsize::new(0));
    let runs = parent_runs.clone();
    mgr.register("parent", move |ctx| {
        runs.fetch_add(1, Ordering::SeqCst);
        if ctx.stage() == 0 {
            return Ok(Outcome::spawn(vec![
                ChildSpec::new("slow", json!(null)),
                ChildSpec::new("bad", json!(null)).fail_parent(),
            ]));
        }
        Ok(json!("should not run").into())
    })
    .unwrap();
    mgr.start().unwrap();
    let pid = mgr.submit("parent", json!(null)).unwrap();
    // The parent fails while its other child is still running.
    let p = mgr.wait(pid, PATIENCE).unwrap();
    assert_eq!(p.status, TaskStatus::PermanentlyFailed);
    let kids = children_of(&mgr, pid);
    assert_eq!(
        kids[0].status,
        TaskStatus::Running,
        "the slow sibling is still running"
    );
    assert!(
        p.error.as_deref().unwrap().contains("bad child"),
        "{:?}",
        p.error
    );
    assert!(
        p.error
            .as_deref()
            .unwrap()
            .contains(&kids[1].id.to_string()),
        "{:?}",
        p.error
    );
    let pf = event_of(&mgr, pid, EventType::PermanentlyFailed);
    assert_eq!(pf.len(), 1);
    assert_eq!(pf[0].from_status, Some(TaskStatus::Suspended));
    assert_eq!(pf[0].metadata["reason"], "child_failed");
    assert_eq!(pf[0].metadata["child_id"], kids[1].id.0);
    gate.open();
    assert_eq!(
        mgr.wait(kids[0].id, PATIENCE).unwrap().status,
        TaskStatus::Completed
    );
    let p = mgr.get_task(pid).unwrap();
    assert_eq!(
        p.status,
        TaskStatus::PermanentlyFailed,
        "a late sibling does not revive the parent"
    );
    assert_eq!(
        parent_runs.load(Ordering::SeqCst),
        1,
        "the parent never runs again"
    );
    assert_eq!(
        event_of(&mgr, pid, EventType::PermanentlyFailed).len(),
        1,
        "finished exactly once"
    );
}

#[test]
fn fail_parent_child_that_succeeds_is_delivered_normally() {
    let (mgr, _clock) = manual(2);
    mgr.register("ok", |_| Ok(json!(1).into())).unwrap();
    mgr.register("parent", |ctx| {
        if ctx.stage() == 0 {
            return Ok(Outcome::spawn(vec![
                ChildSpec::new("ok", json!(null)).fail_parent()
            ]));
        }
        Ok(ctx.result().cloned().unwrap().into())
    })
    .unwrap();
    mgr.start().unwrap();
    let pid = mgr.submit("parent", json!(null)).unwrap();
    let p = mgr.wait(pid, PATIENCE).unwrap();
    assert_eq!(p.status, TaskStatus::Completed);
    let kid = children_of(&mgr, pid)[0].id;
    assert_eq!(p.result, Some(json!([{ "task_id": kid.0, "result": 1 }])));
}

#[test]
fn child_that_retries_is_delivered_once_with_its_final_outcome() {
    let (mgr, _clock) = manual(2);
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    mgr.register_with("flaky", HandlerOptions::new().max_retries(3), move |ctx| {
        c.fetch_add(1, Ordering::SeqCst);
        if ctx.retry_count() < 2 {
            Err(format!("try {}", ctx.retry_count()).into())
        } else {
            Ok(json!("third time").into())
        }
    })
    .unwrap();
    register_fan(&mgr, "parent", "flaky", 1);
    mgr.start().unwrap();
    let pid = mgr.submit("parent", json!(null)).unwrap();
    let p = mgr.wait(pid, PATIENCE).unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    let kid = children_of(&mgr, pid)[0].clone();
    assert_eq!(kid.retry_count, 2);
    assert_eq!(p.completed_children, 1);
    assert_eq!(
        p.result.unwrap()["seen"],
        json!([{ "task_id": kid.id.0, "result": "third time" }])
    );
}

#[test]
fn context_is_saved_on_spawn_read_next_run_never_inherited_and_cleared_by_retry() {
    let (mgr, _clock) = manual(2);
    let child_ctx = Arc::new(Mutex::new(Vec::new()));
    let cc = child_ctx.clone();
    mgr.register("child", move |ctx| {
        cc.lock().unwrap().push(ctx.context().map(<[u8]>::to_vec));
        Ok(json!(null).into())
    })
    .unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    mgr.register_with("parent", HandlerOptions::new().max_retries(2), move |ctx| {
        s.lock().unwrap().push((
            ctx.stage(),
            ctx.retry_count(),
            ctx.context().map(<[u8]>::to_vec),
            ctx.result().is_some(),
        ));
        if ctx.stage() == 0 {
            let tag = format!("saved-{}", ctx.retry_count()).into_bytes();
            return Ok(Outcome::Spawn {
                children: vec![ChildSpec::new("child", json!(null))],
                context: Some(tag),
            });
        }
        if ctx.retry_count() == 0 {
            return Err("fail once after fan-in".into());
        }
        Ok(json!("finished").into())
    })
    .unwrap();
    mgr.start().unwrap();
    let pid = mgr.submit("parent", json!(null)).unwrap();
    let p = mgr.wait(pid, PATIENCE).unwrap();
    assert_eq!(p.status, TaskStatus::Completed);
    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen,
        [
            (0, 0, None, false),
            (1, 0, Some(b"saved-0".to_vec()), true),
            (0, 1, None, false), // the retry cleared context and result, back to stage 0
            (1, 1, Some(b"saved-1".to_vec()), true),
        ]
    );
    assert_eq!(
        p.context,
        Some(b"saved-1".to_vec()),
        "context survives completion"
    );
    assert_eq!(
        *child_ctx.lock().unwrap(),
        [None, None],
        "children never inherit context"
    );
    for k in children_of(&mgr, pid) {
        assert_eq!(k.context, None);
    }
    assert_eq!((p.total_children, p.completed_children), (2, 2));
}

#[test]
fn spawn_without_a_context_keeps_the_old_one() {
    let (mgr, _clock) = manual(2);
    mgr.register("child", |_| Ok(json!(null).into())).unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    mgr.register("parent", move |ctx| {
        s.lock().unwrap().push(ctx.context().map(<[u8]>::to_vec));
        match ctx.stage() {
            0 => Ok(Outcome::Spawn {
                children: vec![ChildSpec::new("child", json!(null))],
                context: Some(vec![1, 2, 3]),
            }),
            1 => Ok(Outcome::spawn(vec![ChildSpec::new("child", json!(null))])),
            _ => Ok(json!(null).into()),
        }
    })
    .unwrap();
    mgr.start().unwrap();
    let pid = mgr.submit("parent", json!(null)).unwrap();
    mgr.wait(pid, PATIENCE).unwrap();
    assert_eq!(
        *seen.lock().unwrap(),
        [None, Some(vec![1, 2, 3]), Some(vec![1, 2, 3])]
    );
}

/// Handler "node": payload `{"depth": d}` spawns two children of depth d-1 until 0.
fn register_tree(mgr: &TaskManager) {
    mgr.register("node", |ctx| {
        let depth = ctx.payload()["depth"].as_u64().unwrap();
        if depth == 0 {
            return Ok(json!(1).into());
        }
        if ctx.stage() == 0 {
            let kids = (0..2)
                .map(|_| ChildSpec::new("node", json!({ "depth": depth - 1 })))
                .collect();
            return Ok(Outcome::spawn(kids));
        }
        let sum: u64 = ctx
            .result()
            .unwrap()
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["result"].as_u64().unwrap())
            .sum();
        Ok(json!(sum).into())
    })
    .unwrap();
}

#[test]
fn nesting_four_levels_links_everything_to_the_root_and_wait_returns_at_the_end() {
    let (mgr, _clock) = manual(4);
    register_tree(&mgr);
    mgr.start().unwrap();
    let root = mgr.submit("node", json!({ "depth": 4 })).unwrap();
    let r = mgr.wait(root, PATIENCE).unwrap();
    assert_eq!(r.status, TaskStatus::Completed);
    assert_eq!(r.result, Some(json!(16)), "2^4 leaves");
    assert_eq!(r.root_id, None);
    let all = mgr.list_tasks(&TaskFilter::all().workflow(root));
    assert_eq!(all.len(), 31, "1 + 2 + 4 + 8 + 16");
    for t in &all {
        assert_eq!(
            t.status,
            TaskStatus::Completed,
            "wait(root) returns after the whole workflow"
        );
        if t.id != root {
            assert_eq!(t.root_id, Some(root));
            let parent = mgr.get_task(t.parent_id.unwrap()).unwrap();
            assert_eq!(
                parent.payload["depth"].as_u64().unwrap(),
                t.payload["depth"].as_u64().unwrap() + 1
            );
            assert!(parent.id < t.id, "children get ids above their parent");
        }
        if t.payload["depth"] != 0 {
            assert_eq!((t.total_children, t.completed_children), (2, 2));
            assert_eq!(t.stage, 1);
        }
    }
    let descendants = mgr.list_tasks(&TaskFilter {
        root_id: Some(root),
        ..TaskFilter::default()
    });
    assert_eq!(descendants.len(), 30);
}

#[test]
fn a_suspended_grandchild_keeps_its_ancestors_suspended_and_wait_follows() {
    let (mgr, _clock) = manual(4);
    mgr.register("approve", |ctx| {
        if ctx.stage() == 0 {
            return Ok(Outcome::suspend("needs_human"));
        }
        Ok(json!("approved").into())
    })
    .unwrap();
    mgr.register("mid", |ctx| {
        if ctx.stage() == 0 {
            return Ok(Outcome::spawn(vec![ChildSpec::new("approve", json!(null))]));
        }
        Ok(json!({ "mid": ctx.result().cloned() }).into())
    })
    .unwrap();
    mgr.register("root", |ctx| {
        if ctx.stage() == 0 {
            return Ok(Outcome::spawn(vec![ChildSpec::new("mid", json!(null))]));
        }
        Ok(json!({ "root": ctx.result().cloned() }).into())
    })
    .unwrap();
    mgr.start().unwrap();
    let root = mgr.submit("root", json!(null)).unwrap();
    let filter = TaskFilter {
        suspend_reason: Some("needs_human".into()),
        ..TaskFilter::default()
    };
    std::thread::scope(|s| {
        // wait(root) from another thread returns only when the whole workflow ends.
        let waiter = s.spawn(|| mgr.wait(root, PATIENCE).unwrap());
        eventually("grandchild suspended", || {
            mgr.list_tasks(&filter).len() == 1
        });
        let gc = mgr.list_tasks(&filter)[0].clone();
        let mid = mgr.get_task(gc.parent_id.unwrap()).unwrap();
        assert_eq!(gc.root_id, Some(root));
        assert_eq!(mid.root_id, Some(root));
        assert_eq!(mid.parent_id, Some(root));
        assert_eq!(mid.status, TaskStatus::Suspended);
        assert_eq!(mgr.get_task(root).unwrap().status, TaskStatus::Suspended);
        assert!(!waiter.is_finished(), "wait(root) is still waiting");
        mgr.resume_task(gc.id, Some("ok by alice")).unwrap();
        let r = waiter.join().unwrap();
        assert_eq!(r.status, TaskStatus::Completed);
        let expect = json!({ "root": [{ "task_id": mid.id.0, "result": { "mid": [{ "task_id": gc.id.0, "result": "approved" }] } }] });
        assert_eq!(r.result, Some(expect));
    });
}

#[test]
fn a_failed_child_propagates_through_fail_parent_chains() {
    let (mgr, _clock) = manual(4);
    mgr.register_with("leaf", HandlerOptions::new().max_retries(1), |_| {
        Err("leaf exploded".into())
    })
    .unwrap();
    mgr.register("mid", |ctx| {
        if ctx.stage() == 0 {
            return Ok(Outcome::spawn(vec![
                ChildSpec::new("leaf", json!(null)).fail_parent()
            ]));
        }
        Ok(json!("mid should not finish").into())
    })
    .unwrap();
    mgr.register("root", |ctx| {
        if ctx.stage() == 0 {
            // deliver: the root sees the mid's failure as an error entry
            return Ok(Outcome::spawn(vec![ChildSpec::new("mid", json!(null))]));
        }
        Ok(ctx.result().cloned().unwrap().into())
    })
    .unwrap();
    mgr.start().unwrap();
    let root = mgr.submit("root", json!(null)).unwrap();
    let r = mgr.wait(root, PATIENCE).unwrap();
    assert_eq!(r.status, TaskStatus::Completed);
    let mid = children_of(&mgr, root)[0].clone();
    assert_eq!(mid.status, TaskStatus::PermanentlyFailed);
    let leaf = children_of(&mgr, mid.id)[0].clone();
    assert_eq!(leaf.error.as_deref(), Some("leaf exploded"));
    assert_eq!(
        r.result,
        Some(json!([{ "task_id": mid.id.0, "error": mid.error.clone().unwrap() }]))
    );
    assert!(mid.error.unwrap().contains("leaf exploded"));
}

#[test]
fn cancelling_a_suspended_child_delivers_its_error_to_the_parent() {
    let (mgr, _clock) = manual(2);
    mgr.register("approve", |_| Ok(Outcome::suspend("review")))
        .unwrap();
    register_fan(&mgr, "parent", "approve", 1);
    mgr.start().unwrap();
    let pid = mgr.submit("parent", json!(null)).unwrap();
    eventually("child suspended", || {
        children_of(&mgr, pid)
            .first()
            .is_some_and(|k| k.status == TaskStatus::Suspended)
    });
    let kid = children_of(&mgr, pid)[0].id;
    mgr.cancel_task(kid, Some("rejected by reviewer")).unwrap();
    let p = mgr.wait(pid, PATIENCE).unwrap();
    assert_eq!(p.status, TaskStatus::Completed);
    assert_eq!(
        p.result.unwrap()["seen"],
        json!([{ "task_id": kid.0, "error": "rejected by reviewer" }])
    );
}

#[test]
fn async_handlers_can_spawn_and_fan_in() {
    let (mgr, _clock) = manual(2);
    mgr.register_async("sq", |ctx| async move {
        let n = ctx.payload().as_i64().unwrap();
        tokio::task::yield_now().await;
        Ok(json!(n * n).into())
    })
    .unwrap();
    mgr.register_async("sum", |ctx| async move {
        if ctx.stage() == 0 {
            return Ok(Outcome::spawn(
                (1..=4).map(|n| ChildSpec::new("sq", json!(n))).collect(),
            ));
        }
        let total: i64 = ctx
            .result()
            .unwrap()
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["result"].as_i64().unwrap())
            .sum();
        Ok(json!(total).into())
    })
    .unwrap();
    mgr.start().unwrap();
    let pid = mgr.submit("sum", json!(null)).unwrap();
    assert_eq!(mgr.wait(pid, PATIENCE).unwrap().result, Some(json!(30)));
}

#[test]
fn new_children_use_the_current_registration_while_running_ones_keep_theirs() {
    let (mgr, _clock) = manual(4);
    let gate = Gate::new();
    let g = gate.clone();
    mgr.register("child", move |_| {
        g.wait();
        Ok(json!("v1").into())
    })
    .unwrap();
    mgr.register("parent", |ctx| match ctx.stage() {
        0 | 1 => Ok(Outcome::spawn(vec![ChildSpec::new("child", json!(null))])),
        _ => Ok(json!(null).into()),
    })
    .unwrap();
    mgr.start().unwrap();
    let pid = mgr.submit("parent", json!(null)).unwrap();
    eventually("first child running", || {
        children_of(&mgr, pid)
            .first()
            .is_some_and(|k| k.status == TaskStatus::Running)
    });
    mgr.register_with(
        "child",
        HandlerOptions::new().priority(9).max_retries(7),
        |_| Ok(json!("v2").into()),
    )
    .unwrap();
    gate.open();
    let p = mgr.wait(pid, PATIENCE).unwrap();
    assert_eq!(p.status, TaskStatus::Completed);
    let kids = children_of(&mgr, pid);
    assert_eq!(kids.len(), 2);
    assert_eq!(
        kids[0].result,
        Some(json!("v1")),
        "the running attempt kept its handler"
    );
    assert_eq!(kids[0].priority, 0);
    assert_eq!(
        kids[1].result,
        Some(json!("v2")),
        "the new child runs the current handler"
    );
    assert_eq!(
        kids[1].priority, 9,
        "and takes the current registration's options"
    );
    assert_eq!(kids[1].max_retries, 7);
}

#[test]
fn a_child_id_from_the_events_matches_list_filters() {
    // parent_id and workflow filters agree with the spawn event.
    let (mgr, _clock) = manual(2);
    mgr.register("c", |_| Ok(json!(null).into())).unwrap();
    register_fan(&mgr, "p", "c", 4);
    mgr.start().unwrap();
    let pid = mgr.submit("p", json!(null)).unwrap();
    mgr.wait(pid, PATIENCE).unwrap();
    let sub = &event_of(&mgr, pid, EventType::SubtasksCreated)[0];
    let from_event: Vec<u64> = sub.metadata["child_task_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    let listed: Vec<u64> = children_of(&mgr, pid).iter().map(|t| t.id.0).collect();
    assert_eq!(from_event, listed);
    assert_eq!(mgr.list_tasks(&TaskFilter::all().workflow(pid)).len(), 5);
    for id in listed {
        let ev = mgr.events(TaskId(id)).unwrap();
        assert!(ev
            .iter()
            .all(|e| e.root_id == Some(pid) && e.parent_id == Some(pid)));
    }
}

#[test]
fn a_parent_waiting_for_children_never_times_out_and_frees_its_handler_slot() {
    let (mgr, clock) = manual(4);
    let gate = Gate::new();
    let g = gate.clone();
    mgr.register("child", move |_| {
        g.wait();
        Ok(json!("late").into())
    })
    .unwrap();
    let opts = HandlerOptions::new()
        .timeout(Duration::from_secs(1))
        .max_concurrent_tasks(1);
    mgr.register_with("parent", opts, |ctx| {
        if ctx.stage() == 0 {
            // Duration::ZERO: the child itself has no time limit.
            let child = ChildSpec::new("child", json!(null)).timeout(Duration::ZERO);
            return Ok(Outcome::spawn(vec![child]));
        }
        Ok(json!("parent done").into())
    })
    .unwrap();
    mgr.start().unwrap();
    let a = mgr.submit("parent", json!(null)).unwrap();
    let b = mgr.submit("parent", json!(null)).unwrap();
    // With a cap of 1, the second parent can only run because the first one's
    // suspension released its slot.
    eventually("both parents suspended", || {
        [a, b]
            .iter()
            .all(|id| mgr.get_task(*id).unwrap().status == TaskStatus::Suspended)
    });
    clock.advance(Duration::from_hours(1));
    for id in [a, b] {
        let t = mgr.get_task(id).unwrap();
        assert_eq!(
            t.status,
            TaskStatus::Suspended,
            "suspended tasks never time out"
        );
        assert!(!event_names(&mgr, id).contains(&"task_timed_out"));
    }
    gate.open();
    for id in [a, b] {
        let t = mgr.wait(id, PATIENCE).unwrap();
        assert_eq!(t.status, TaskStatus::Completed);
        assert_eq!(t.result, Some(json!("parent done")));
    }
}

#[test]
fn a_paused_child_keeps_its_parent_suspended_until_it_is_resumed() {
    let (mgr, clock) = manual(4);
    let gate = Gate::new();
    let g = gate.clone();
    // A cap of 1: while one child blocks, its sibling waits in `pending`.
    mgr.register_with(
        "child",
        HandlerOptions::new().max_concurrent_tasks(1),
        move |ctx| {
            if ctx.payload() == &json!("block") {
                g.wait();
            }
            Ok(json!("child ran").into())
        },
    )
    .unwrap();
    mgr.register("parent", |ctx| {
        if ctx.stage() == 0 {
            return Ok(Outcome::spawn(vec![
                ChildSpec::new("child", json!("block")).priority(1),
                ChildSpec::new("child", json!("free")),
            ]));
        }
        Ok(ctx.result().cloned().unwrap().into())
    })
    .unwrap();
    mgr.start().unwrap();
    let pid = mgr.submit("parent", json!(null)).unwrap();
    eventually("blocking child running", || {
        children_of(&mgr, pid)
            .first()
            .is_some_and(|k| k.status == TaskStatus::Running)
    });
    let kids = children_of(&mgr, pid);
    assert_eq!(kids[1].status, TaskStatus::Pending);
    mgr.pause_task(kids[1].id).unwrap();
    gate.open();
    eventually("first child delivered", || {
        mgr.get_task(pid).unwrap().completed_children == 1
    });
    clock.advance(Duration::from_mins(1));
    assert_eq!(mgr.get_task(kids[1].id).unwrap().status, TaskStatus::Paused);
    let p = mgr.get_task(pid).unwrap();
    assert_eq!(
        p.status,
        TaskStatus::Suspended,
        "a paused child is not finished"
    );
    assert_eq!(p.completed_children, 1);
    mgr.resume_task(kids[1].id, None).unwrap();
    let p = mgr.wait(pid, PATIENCE).unwrap();
    assert_eq!(
        p.result,
        Some(json!([
            { "task_id": kids[0].id.0, "result": "child ran" },
            { "task_id": kids[1].id.0, "result": "child ran" }
        ]))
    );
}

#[test]
fn cancelling_a_parent_that_waits_for_children_ends_the_workflow() {
    let (mgr, _clock) = manual(4);
    let gate = Gate::new();
    let g = gate.clone();
    mgr.register("child", move |_| {
        g.wait();
        Ok(json!(1).into())
    })
    .unwrap();
    let runs = Arc::new(AtomicUsize::new(0));
    let r = runs.clone();
    mgr.register("parent", move |_| {
        r.fetch_add(1, Ordering::SeqCst);
        Ok(Outcome::spawn(vec![ChildSpec::new("child", json!(null))]))
    })
    .unwrap();
    mgr.start().unwrap();
    let pid = mgr.submit("parent", json!(null)).unwrap();
    eventually("suspended", || {
        mgr.get_task(pid).unwrap().status == TaskStatus::Suspended
    });
    mgr.cancel_task(pid, Some("workflow aborted")).unwrap();
    let p = mgr.wait(pid, PATIENCE).unwrap();
    assert_eq!(p.status, TaskStatus::PermanentlyFailed);
    assert_eq!(p.error.as_deref(), Some("workflow aborted"));
    gate.open();
    let kid = children_of(&mgr, pid)[0].id;
    assert_eq!(
        mgr.wait(kid, PATIENCE).unwrap().status,
        TaskStatus::Completed
    );
    let p = mgr.get_task(pid).unwrap();
    assert_eq!(
        p.status,
        TaskStatus::PermanentlyFailed,
        "the late child does not revive it"
    );
    assert_eq!(p.completed_children, 0);
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

#[test]
fn a_bad_spawn_fails_the_attempt_and_creates_nothing() {
    let (mgr, _clock) = manual(2);
    mgr.register("child", |_| Ok(json!(null).into())).unwrap();
    mgr.register_with(
        "parent",
        HandlerOptions::new().max_retries(1),
        |ctx| match ctx.payload().as_str().unwrap() {
            "empty" => Ok(Outcome::spawn(Vec::new())),
            "tag" => Ok(Outcome::spawn(vec![
                ChildSpec::new("child", json!(null)),
                ChildSpec::new("child", json!(null)).tag(""),
            ])),
            _ => Ok(Outcome::spawn(vec![
                ChildSpec::new("child", json!(null)).requires(["a,b"])
            ])),
        },
    )
    .unwrap();
    mgr.start().unwrap();
    for (kind, needle) in [
        ("empty", "at least one child"),
        ("tag", "invalid tag"),
        ("requires", "a,b"),
    ] {
        let pid = mgr.submit("parent", json!(kind)).unwrap();
        let p = mgr.wait(pid, PATIENCE).unwrap();
        assert_eq!(p.status, TaskStatus::PermanentlyFailed, "{kind}");
        assert!(
            p.error.as_deref().unwrap().contains(needle),
            "{kind}: {:?}",
            p.error
        );
        assert_eq!(
            mgr.attempts(pid).unwrap()[0].outcome,
            Some(AttemptOutcome::Failed)
        );
        assert!(
            children_of(&mgr, pid).is_empty(),
            "{kind}: no child is created"
        );
        assert_eq!(p.total_children, 0);
    }
}
