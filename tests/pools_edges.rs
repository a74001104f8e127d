//! Pool routing, load sharing, pool retry strategies and the
//! `waiting_reason` query (SPEC §1, §3, §4, §8 and the pools issue).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::fib::status_of;
use common::{eventually, Gate, PATIENCE};
use fibflow::{
    Backoff, ChildSpec, Clock, HandlerOptions, ManualClock, Outcome, Pool, RetryStrategy,
    SubmitOptions, TaskId, TaskManager, TaskStatus,
};
use serde_json::json;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const T0: u64 = 1_700_000_000_000;

fn worker(mgr: &TaskManager, id: TaskId) -> String {
    mgr.get_task(id)
        .unwrap()
        .worker
        .map(|w| w.to_string())
        .unwrap_or_default()
}

fn pool_of(worker: &str) -> &str {
    worker.rsplit_once('-').map_or(worker, |(p, _)| p)
}

fn strategy(backoff: Backoff, base_ms: u64, cap_ms: Option<u64>, jitter: f64) -> RetryStrategy {
    RetryStrategy {
        backoff,
        base: Duration::from_millis(base_ms),
        cap: cap_ms.map(Duration::from_millis),
        jitter,
    }
}

fn reason(mgr: &TaskManager, id: TaskId) -> Option<String> {
    mgr.waiting_reason(id).unwrap()
}

/// Waits until the task's `n`th attempt failed (or timed out) and returns
/// the delay from now to its next run and its status.
fn retry_delay_after(
    mgr: &TaskManager,
    clock: &ManualClock,
    id: TaskId,
    n: usize,
) -> (u64, TaskStatus) {
    eventually("the attempt ended", || {
        let t = mgr.get_task(id).unwrap();
        matches!(
            t.status,
            TaskStatus::Failed | TaskStatus::Timeout | TaskStatus::PermanentlyFailed
        ) && mgr.attempts(id).unwrap().len() == n
    });
    let t = mgr.get_task(id).unwrap();
    (t.next_run_time.saturating_sub(clock.now_ms()), t.status)
}

fn failing() -> impl Fn(&fibflow::TaskContext) -> fibflow::HandlerResult + Send + Sync + 'static {
    |_| Err("no".into())
}

// ---------------------------------------------------------------- load sharing

/// Issue: "Several pools may serve the same handler (load is shared); a task only
/// runs on a pool whose tags include all its required capabilities."
#[test]
fn two_pools_serving_one_handler_both_run_and_tags_route_strictly() {
    let mgr = TaskManager::builder()
        .memory()
        .max_concurrent_tasks(10)
        .pool(Pool::new("a").tags(["x"]).concurrency(2))
        .pool(Pool::new("b").tags(["x", "y"]).concurrency(2))
        .build()
        .unwrap();
    let gate = Gate::new();
    let g = gate.clone();
    mgr.register_with("h", HandlerOptions::new().requires(["x"]), move |_| {
        g.wait();
        Ok(json!(null).into())
    })
    .unwrap();
    mgr.start().unwrap();
    let ids: Vec<TaskId> = (0..8).map(|i| mgr.submit("h", json!(i)).unwrap()).collect();
    // Four workers can take x: both pools must be busy at once.
    eventually("four h tasks run", || {
        ids.iter()
            .filter(|&&id| status_of(&mgr, id) == TaskStatus::Running)
            .count()
            == 4
    });
    let pools: BTreeSet<String> = ids
        .iter()
        .filter(|&&id| status_of(&mgr, id) == TaskStatus::Running)
        .map(|&id| pool_of(&worker(&mgr, id)).to_owned())
        .collect();
    assert_eq!(
        pools,
        BTreeSet::from(["a".to_owned(), "b".to_owned()]),
        "both pools run the shared handler"
    );
    gate.open();
    // Tasks requiring y as well only ever run on b.
    let ys: Vec<TaskId> = (0..12)
        .map(|i| {
            mgr.submit_with("h", json!(i), SubmitOptions::new().requires(["y"]))
                .unwrap()
        })
        .collect();
    for &id in ids.iter().chain(&ys) {
        assert_eq!(
            mgr.wait(id, PATIENCE).unwrap().status,
            TaskStatus::Completed
        );
    }
    for &id in &ids {
        let p = pool_of(&worker(&mgr, id)).to_owned();
        assert!(p == "a" || p == "b", "x task ran on {p}");
    }
    for &id in &ys {
        assert_eq!(pool_of(&worker(&mgr, id)), "b", "x+y task on b only");
        for a in mgr.attempts(id).unwrap() {
            assert!(a.worker.starts_with("b-"), "attempt on {}", a.worker);
        }
    }
}

/// Load sharing under a steady stream: neither of two equal pools starves.
#[test]
fn a_long_backlog_is_spread_over_both_serving_pools() {
    let mgr = TaskManager::builder()
        .memory()
        .max_concurrent_tasks(8)
        .pool(Pool::new("p").tags(["gpu"]).concurrency(2))
        .pool(Pool::new("q").tags(["gpu"]).concurrency(2))
        .build()
        .unwrap();
    let gate = Gate::new();
    let g = gate.clone();
    mgr.register_with("r", HandlerOptions::new().requires(["gpu"]), move |ctx| {
        if ctx.payload() == &json!("block") {
            g.wait();
        }
        Ok(json!(null).into())
    })
    .unwrap();
    let blocks: Vec<TaskId> = (0..4)
        .map(|_| mgr.submit("r", json!("block")).unwrap())
        .collect();
    mgr.start().unwrap();
    eventually("all four blockers run", || {
        blocks
            .iter()
            .all(|&id| status_of(&mgr, id) == TaskStatus::Running)
    });
    let mut on = BTreeSet::new();
    for &id in &blocks {
        on.insert(pool_of(&worker(&mgr, id)).to_owned());
    }
    assert_eq!(on.len(), 2, "blockers spread on {on:?}");
    gate.open();
    let ids: Vec<TaskId> = (0..200)
        .map(|i| mgr.submit("r", json!(i)).unwrap())
        .collect();
    let mut per = std::collections::BTreeMap::new();
    for &id in &ids {
        mgr.wait(id, PATIENCE).unwrap();
        *per.entry(pool_of(&worker(&mgr, id)).to_owned())
            .or_insert(0) += 1;
    }
    assert!(per.keys().all(|k| k == "p" || k == "q"), "{per:?}");
}

// ------------------------------------------------ missing capabilities

/// SPEC §3: "A task that requires capabilities no pool has stays pending and a
/// query can say so"; issue: after the manager is rebuilt with such a pool, it runs.
#[test]
fn a_missing_capability_waits_is_named_and_runs_after_reopen_with_that_pool() {
    let dir = tempfile::tempdir().unwrap();
    let (combo, handler_only, witness);
    {
        let mgr = TaskManager::builder()
            .dir(dir.path())
            .pool(Pool::new("a").tags(["x"]).concurrency(1))
            .pool(Pool::new("b").tags(["y"]).concurrency(1))
            .build()
            .unwrap();
        mgr.register_with("hx", HandlerOptions::new().requires(["x"]), |_| {
            Ok(json!("hx").into())
        })
        .unwrap();
        mgr.register_with("hz", HandlerOptions::new().requires(["z"]), |_| {
            Ok(json!("hz").into())
        })
        .unwrap();
        mgr.register("plain", |_| Ok(json!(null).into())).unwrap();
        mgr.start().unwrap();
        // x (handler) + y (submission): each tag exists, no single pool has both.
        combo = mgr
            .submit_with("hx", json!(1), SubmitOptions::new().requires(["y"]))
            .unwrap();
        handler_only = mgr.submit("hz", json!(2)).unwrap();
        witness = mgr
            .submit_with("hx", json!(3), SubmitOptions::new())
            .unwrap();
        mgr.wait(witness, PATIENCE).unwrap();
        let p = mgr.submit("plain", json!(null)).unwrap();
        mgr.wait(p, PATIENCE).unwrap();
        assert_eq!(mgr.get_task(combo).unwrap().requires, vec!["x", "y"]);
        for id in [combo, handler_only] {
            let t = mgr.get_task(id).unwrap();
            assert_eq!(t.status, TaskStatus::Pending, "{id:?}");
            assert!(t.worker.is_none());
            assert!(mgr.attempts(id).unwrap().is_empty());
        }
        let r = reason(&mgr, combo).unwrap();
        assert!(r.contains('x') && r.contains('y'), "{r}");
        assert!(r.contains("capabilit"), "{r}");
        let r = reason(&mgr, handler_only).unwrap();
        assert!(r.contains('z') && r.contains("capabilit"), "{r}");
        mgr.stop(PATIENCE).unwrap();
    }
    let mgr = common::build_unlocked(
        TaskManager::builder()
            .dir(dir.path())
            .pool(Pool::new("xy").tags(["y", "x"]).concurrency(1))
            .pool(Pool::new("zz").tags(["z"]).concurrency(1)),
    )
    .unwrap();
    assert_eq!(status_of(&mgr, combo), TaskStatus::Pending);
    mgr.register_with("hx", HandlerOptions::new().requires(["x"]), |_| {
        Ok(json!("hx").into())
    })
    .unwrap();
    mgr.register_with("hz", HandlerOptions::new().requires(["z"]), |_| {
        Ok(json!("hz").into())
    })
    .unwrap();
    // Before start: the capabilities now exist, so the reason is another.
    let r = reason(&mgr, combo).unwrap();
    assert!(!r.contains("capabilit"), "{r}");
    mgr.start().unwrap();
    assert_eq!(
        mgr.wait(combo, PATIENCE).unwrap().status,
        TaskStatus::Completed
    );
    assert_eq!(
        mgr.wait(handler_only, PATIENCE).unwrap().status,
        TaskStatus::Completed
    );
    assert_eq!(pool_of(&worker(&mgr, combo)), "xy");
    assert_eq!(pool_of(&worker(&mgr, handler_only)), "zz");
    mgr.stop(PATIENCE).unwrap();
}

// ------------------------------------------------ waiting_reason causes

#[test]
fn waiting_reason_not_registered_names_the_handler() {
    let (mgr, _clock) = common::manual(2);
    mgr.register("gone", |_| Ok(json!(null).into())).unwrap();
    let id = mgr.submit("gone", json!(null)).unwrap();
    assert_eq!(mgr.unregister(&["gone"]), 1);
    mgr.start().unwrap();
    assert_eq!(
        reason(&mgr, id).as_deref(),
        Some("No handler registered for task: gone")
    );
    // Unregistered, with a capability no pool has: still says something true.
    assert_eq!(status_of(&mgr, id), TaskStatus::Pending);
}

#[test]
fn waiting_reason_finished_task_is_none_and_unknown_is_an_error() {
    let (mgr, _clock) = common::manual(1);
    mgr.register("ok", |_| Ok(json!(null).into())).unwrap();
    mgr.start().unwrap();
    let id = mgr.submit("ok", json!(null)).unwrap();
    mgr.wait(id, PATIENCE).unwrap();
    assert_eq!(reason(&mgr, id), None);
    assert!(mgr.waiting_reason(TaskId(987_654_321)).is_err());
}

/// Brief: a paused task is waiting for `resume_task`; the query should say so.
#[test]
fn waiting_reason_for_a_paused_task_says_it_is_paused() {
    let (mgr, _clock) = common::manual(1);
    mgr.register("w", |_| Ok(json!(null).into())).unwrap();
    let id = mgr.submit("w", json!(null)).unwrap();
    mgr.pause_task(id).unwrap();
    assert_eq!(status_of(&mgr, id), TaskStatus::Paused);
    let r = reason(&mgr, id);
    assert!(
        r.as_deref().is_some_and(|r| r.contains("paused")),
        "paused task: {r:?}"
    );
}

/// SPEC §3: a type at its handler cap is skipped while others run. With idle
/// workers, "waiting for a free worker" is not the true reason.
#[test]
fn waiting_reason_at_a_handler_cap_names_the_cap_not_a_free_worker() {
    let (mgr, _clock) = common::manual(4);
    let gate = Gate::new();
    let g = gate.clone();
    mgr.register_with(
        "c",
        HandlerOptions::new().max_concurrent_tasks(1),
        move |_| {
            g.wait();
            Ok(json!(null).into())
        },
    )
    .unwrap();
    mgr.start().unwrap();
    let a = mgr.submit("c", json!(1)).unwrap();
    eventually("a runs", || status_of(&mgr, a) == TaskStatus::Running);
    let b = mgr.submit("c", json!(2)).unwrap();
    assert_eq!(mgr.running(), 1, "three workers are idle");
    let r = reason(&mgr, b).unwrap_or_default();
    gate.open();
    mgr.wait(b, PATIENCE).unwrap();
    assert!(
        r.contains("max_concurrent") || r.contains("limit") || r.contains(" cap"),
        "handler at its cap of 1 with 3 idle workers: {r:?}"
    );
}

/// SPEC §3: the global cap binds while a pool that can run the task has idle
/// workers: "waiting for a free worker" is not true there either.
#[test]
fn waiting_reason_at_the_global_cap_names_the_cap_not_a_free_worker() {
    let clock = ManualClock::new(T0);
    let mgr = TaskManager::builder()
        .memory()
        .clock(clock.clone())
        .max_concurrent_tasks(1)
        .pool(Pool::new("gpu").tags(["gpu"]).concurrency(2))
        .build()
        .unwrap();
    let gate = Gate::new();
    let g = gate.clone();
    mgr.register("w", move |ctx| {
        if ctx.payload() == &json!("block") {
            g.wait();
        }
        Ok(json!(null).into())
    })
    .unwrap();
    mgr.start().unwrap();
    let a = mgr.submit("w", json!("block")).unwrap();
    eventually("a runs", || status_of(&mgr, a) == TaskStatus::Running);
    let b = mgr
        .submit_with("w", json!("free"), SubmitOptions::new().requires(["gpu"]))
        .unwrap();
    let r = reason(&mgr, b).unwrap_or_default();
    gate.open();
    mgr.wait(b, PATIENCE).unwrap();
    assert_eq!(pool_of(&worker(&mgr, b)), "gpu");
    assert!(
        r.contains("max_concurrent") || r.contains("limit") || r.contains(" cap"),
        "global cap 1 reached, both gpu workers idle: {r:?}"
    );
}

#[test]
fn waiting_reason_while_the_manager_is_paused_and_pools_are_busy() {
    let mgr = TaskManager::builder()
        .memory()
        .max_concurrent_tasks(4)
        .pool(Pool::new("a").tags(["x"]).concurrency(1))
        .pool(Pool::new("b").tags(["x"]).concurrency(1))
        .build()
        .unwrap();
    let gate = Gate::new();
    let g = gate.clone();
    mgr.register_with("h", HandlerOptions::new().requires(["x"]), move |_| {
        g.wait();
        Ok(json!(null).into())
    })
    .unwrap();
    mgr.start().unwrap();
    let ids: Vec<TaskId> = (0..5).map(|i| mgr.submit("h", json!(i)).unwrap()).collect();
    // `running()` counts a worker busy before its claim is recorded: wait on statuses.
    eventually("two run", || {
        ids.iter()
            .filter(|&&id| status_of(&mgr, id) == TaskStatus::Running)
            .count()
            == 2
    });
    let running: Vec<TaskId> = ids
        .iter()
        .copied()
        .filter(|&id| status_of(&mgr, id) == TaskStatus::Running)
        .collect();
    assert_eq!(running.len(), 2);
    let pools: BTreeSet<String> = running
        .iter()
        .map(|&id| pool_of(&worker(&mgr, id)).to_owned())
        .collect();
    assert_eq!(pools.len(), 2, "{pools:?}");
    mgr.pause();
    // Submission still works while paused.
    let late = mgr.submit("h", json!(99)).unwrap();
    gate.open();
    for &id in &running {
        assert_eq!(
            mgr.wait(id, PATIENCE).unwrap().status,
            TaskStatus::Completed,
            "running handlers carry on"
        );
    }
    eventually("nothing runs", || mgr.running() == 0);
    for &id in ids.iter().filter(|id| !running.contains(id)).chain([&late]) {
        assert_eq!(
            status_of(&mgr, id),
            TaskStatus::Pending,
            "no claim while paused"
        );
        assert_eq!(reason(&mgr, id).as_deref(), Some("the manager is paused"));
    }
    mgr.resume();
    for &id in ids.iter().chain([&late]) {
        assert_eq!(
            mgr.wait(id, PATIENCE).unwrap().status,
            TaskStatus::Completed
        );
    }
}

/// Brief: a task waiting for its retry (failed, next_run_time ahead) is waiting.
#[test]
fn waiting_reason_for_a_pending_retry_says_when() {
    let (mgr, _clock) = common::manual(1);
    mgr.register_with(
        "f",
        HandlerOptions::new()
            .max_retries(3)
            .retry_interval(Duration::from_secs(10)),
        failing(),
    )
    .unwrap();
    mgr.start().unwrap();
    let id = mgr.submit("f", json!(null)).unwrap();
    eventually("failed once", || status_of(&mgr, id) == TaskStatus::Failed);
    let r = reason(&mgr, id);
    assert!(
        r.as_deref()
            .is_some_and(|r| r.contains("retry") || r.contains(&format!("{}", T0 + 10_000))),
        "retry pending: {r:?}"
    );
}

/// Brief: a parent waiting for its children, and an explicitly suspended task.
#[test]
fn waiting_reason_for_a_parent_awaiting_children_and_a_suspended_task() {
    let (mgr, _clock) = common::manual(2);
    let gate = Gate::new();
    let g = gate.clone();
    mgr.register("child", move |_| {
        g.wait();
        Ok(json!(1).into())
    })
    .unwrap();
    mgr.register("parent", |ctx| {
        if ctx.stage() == 0 {
            return Ok(Outcome::spawn(vec![ChildSpec::new("child", json!(null))]));
        }
        Ok(json!("done").into())
    })
    .unwrap();
    mgr.register("sus", |_| Ok(Outcome::suspend("needs approval")))
        .unwrap();
    mgr.start().unwrap();
    let p = mgr.submit("parent", json!(null)).unwrap();
    let s = mgr.submit("sus", json!(null)).unwrap();
    eventually("parent suspended", || {
        status_of(&mgr, p) == TaskStatus::Suspended
    });
    eventually("sus suspended", || {
        status_of(&mgr, s) == TaskStatus::Suspended
    });
    let rp = reason(&mgr, p);
    let rs = reason(&mgr, s);
    gate.open();
    mgr.wait(p, PATIENCE).unwrap();
    mgr.cancel_task(s, None).unwrap();
    assert!(
        rp.as_deref()
            .is_some_and(|r| r.contains("child") || r.contains("subtask")),
        "parent awaiting children: {rp:?}"
    );
    assert!(
        rs.as_deref()
            .is_some_and(|r| r.contains("suspend") || r.contains("needs approval")),
        "suspended task: {rs:?}"
    );
}

// ------------------------------------------------ retry strategies on pools

fn pool_retry_manager(s: RetryStrategy) -> (TaskManager, Arc<ManualClock>) {
    let clock = ManualClock::new(T0);
    let mgr = TaskManager::builder()
        .memory()
        .clock(clock.clone())
        .max_concurrent_tasks(2)
        .pool(Pool::new("gpu").tags(["gpu"]).retry_strategy(s))
        .build()
        .unwrap();
    (mgr, clock)
}

fn pool_delays(s: RetryStrategy, max: u32) -> Vec<u64> {
    let (mgr, clock) = pool_retry_manager(s);
    mgr.register_with(
        "g",
        HandlerOptions::new().requires(["gpu"]).max_retries(max),
        failing(),
    )
    .unwrap();
    mgr.start().unwrap();
    let id = mgr.submit("g", json!(null)).unwrap();
    let mut out = Vec::new();
    for n in 1..max as usize {
        let (d, st) = retry_delay_after(&mgr, &clock, id, n);
        assert_eq!(st, TaskStatus::Failed);
        out.push(d);
        clock.advance(Duration::from_millis(d));
    }
    let t = mgr.wait(id, PATIENCE).unwrap();
    assert_eq!(t.status, TaskStatus::PermanentlyFailed);
    assert_eq!(mgr.attempts(id).unwrap().len(), max as usize);
    for a in mgr.attempts(id).unwrap() {
        assert!(a.worker.starts_with("gpu-"));
    }
    out
}

#[test]
fn a_pools_fixed_linear_and_capped_exponential_backoff_at_exact_times() {
    assert_eq!(
        pool_delays(strategy(Backoff::Fixed, 700, None, 0.0), 4),
        vec![700, 700, 700]
    );
    assert_eq!(
        pool_delays(strategy(Backoff::Linear, 500, None, 0.0), 4),
        vec![500, 1_000, 1_500]
    );
    assert_eq!(
        pool_delays(strategy(Backoff::Linear, 500, Some(1_200), 0.0), 4),
        vec![500, 1_000, 1_200]
    );
    assert_eq!(
        pool_delays(strategy(Backoff::Exponential, 1_000, Some(3_000), 0.0), 5),
        vec![1_000, 2_000, 3_000, 3_000]
    );
}

#[test]
fn a_pools_jitter_stays_within_its_documented_bounds() {
    for _ in 0..3 {
        let d = pool_delays(strategy(Backoff::Exponential, 1_000, Some(3_000), 0.25), 5);
        for (got, raw) in d.iter().zip([1_000u64, 2_000, 3_000, 3_000]) {
            assert!(
                (raw - raw / 4..=raw).contains(got),
                "{got} not in [{}, {raw}]",
                raw - raw / 4
            );
        }
    }
}

/// A handler strategy wins over its pool's.
#[test]
fn a_handler_strategy_overrides_the_pools() {
    let (mgr, clock) = pool_retry_manager(strategy(Backoff::Exponential, 1_000, None, 0.0));
    mgr.register_with(
        "g",
        HandlerOptions::new()
            .requires(["gpu"])
            .max_retries(3)
            .retry(strategy(Backoff::Linear, 300, None, 0.0)),
        failing(),
    )
    .unwrap();
    mgr.start().unwrap();
    let id = mgr.submit("g", json!(null)).unwrap();
    let (d, _) = retry_delay_after(&mgr, &clock, id, 1);
    assert_eq!(d, 300);
    clock.advance(Duration::from_millis(d));
    let (d, _) = retry_delay_after(&mgr, &clock, id, 2);
    assert_eq!(d, 600);
}

/// A timeout on a pool's worker is retried with the pool's strategy too.
#[test]
fn a_timeout_on_a_pool_worker_uses_the_pools_strategy() {
    let (mgr, clock) = pool_retry_manager(strategy(Backoff::Linear, 400, None, 0.0));
    let gate = Gate::new();
    let g = gate.clone();
    mgr.register_with(
        "slow",
        HandlerOptions::new()
            .requires(["gpu"])
            .max_retries(3)
            .timeout(Duration::from_secs(1)),
        move |ctx| {
            if ctx.retry_count() == 0 {
                g.wait();
            }
            Ok(json!(null).into())
        },
    )
    .unwrap();
    mgr.start().unwrap();
    let id = mgr.submit("slow", json!(null)).unwrap();
    eventually("runs", || status_of(&mgr, id) == TaskStatus::Running);
    clock.advance(Duration::from_millis(1_000));
    let (d, st) = retry_delay_after(&mgr, &clock, id, 1);
    gate.open();
    assert_eq!((d, st), (400, TaskStatus::Timeout));
    clock.advance(Duration::from_millis(400));
    assert_eq!(
        mgr.wait(id, PATIENCE).unwrap().status,
        TaskStatus::Completed
    );
}

/// Pool max_attempts applies when neither the task nor its handler sets
/// max_retries, and really bounds the executions.
#[test]
fn a_pools_max_attempts_bounds_real_executions_only_as_a_fallback() {
    let clock = ManualClock::new(T0);
    let mgr = TaskManager::builder()
        .memory()
        .clock(clock.clone())
        .max_concurrent_tasks(2)
        .pool(Pool::new("gpu").tags(["gpu"]).max_attempts(2))
        .build()
        .unwrap();
    mgr.register_with("g", HandlerOptions::new().requires(["gpu"]), failing())
        .unwrap();
    mgr.register_with(
        "g4",
        HandlerOptions::new().requires(["gpu"]).max_retries(4),
        failing(),
    )
    .unwrap();
    mgr.register("plain", failing()).unwrap();
    mgr.start().unwrap();
    let from_pool = mgr.submit("g", json!(null)).unwrap();
    let from_handler = mgr.submit("g4", json!(null)).unwrap();
    let from_task = mgr
        .submit_with("g", json!(null), SubmitOptions::new().max_retries(3))
        .unwrap();
    let untagged = mgr.submit("plain", json!(null)).unwrap();
    for (id, n) in [
        (from_pool, 2),
        (from_handler, 4),
        (from_task, 3),
        (untagged, 3),
    ] {
        let t = mgr.wait(id, PATIENCE).unwrap();
        assert_eq!(t.status, TaskStatus::PermanentlyFailed);
        assert_eq!(mgr.attempts(id).unwrap().len(), n, "{id:?}");
    }
}

// ------------------------------------------------ handler caps across pools

/// SPEC §3: a handler cap of 1 holds across every pool that serves it.
#[test]
fn a_handler_cap_of_one_never_runs_two_across_two_pools() {
    let mgr = TaskManager::builder()
        .memory()
        .max_concurrent_tasks(6)
        .pool(Pool::new("a").tags(["x"]).concurrency(2))
        .pool(Pool::new("b").tags(["x"]).concurrency(2))
        .build()
        .unwrap();
    let now = Arc::new(AtomicUsize::new(0));
    let max = Arc::new(AtomicUsize::new(0));
    let seen = Arc::new(Mutex::new(BTreeSet::new()));
    let (n, m, s) = (now.clone(), max.clone(), seen.clone());
    mgr.register_with(
        "one",
        HandlerOptions::new()
            .requires(["x"])
            .max_concurrent_tasks(1),
        move |ctx| {
            let c = n.fetch_add(1, Ordering::SeqCst) + 1;
            m.fetch_max(c, Ordering::SeqCst);
            s.lock().unwrap().insert(pool_of(ctx.worker()).to_owned());
            for _ in 0..200 {
                std::thread::yield_now();
            }
            n.fetch_sub(1, Ordering::SeqCst);
            Ok(json!(null).into())
        },
    )
    .unwrap();
    mgr.register("other", |_| Ok(json!(null).into())).unwrap();
    mgr.start().unwrap();
    let mut ids = Vec::new();
    for i in 0..60 {
        ids.push(mgr.submit("one", json!(i)).unwrap());
        ids.push(mgr.submit("other", json!(i)).unwrap());
    }
    for id in ids {
        assert_eq!(
            mgr.wait(id, PATIENCE).unwrap().status,
            TaskStatus::Completed
        );
    }
    assert_eq!(max.load(Ordering::SeqCst), 1);
    let seen = seen.lock().unwrap().clone();
    assert!(seen.iter().all(|p| p == "a" || p == "b"), "{seen:?}");
}

/// SPEC §4: "max_retries ... (0 acts as 1)", also when it comes from a pool.
#[test]
fn a_pools_max_attempts_of_zero_acts_as_one() {
    let clock = ManualClock::new(T0);
    let mgr = TaskManager::builder()
        .memory()
        .clock(clock.clone())
        .max_concurrent_tasks(2)
        .pool(Pool::new("gpu").tags(["gpu"]).max_attempts(0))
        .build()
        .unwrap();
    mgr.register_with("g", HandlerOptions::new().requires(["gpu"]), failing())
        .unwrap();
    mgr.start().unwrap();
    let id = mgr.submit("g", json!(null)).unwrap();
    let t = mgr.wait(id, PATIENCE).unwrap();
    assert_eq!(t.status, TaskStatus::PermanentlyFailed);
    assert_eq!(mgr.attempts(id).unwrap().len(), 1);
}

/// Pool retry strategies are validated at build (jitter out of range).
#[test]
fn a_pool_with_bad_jitter_is_refused_at_build() {
    for j in [1.5, -0.1, f64::NAN] {
        let r = TaskManager::builder()
            .memory()
            .pool(Pool::new("gpu").tags(["gpu"]).retry_strategy(strategy(
                Backoff::Fixed,
                10,
                None,
                j,
            )))
            .build();
        assert!(r.is_err(), "jitter {j} accepted");
    }
}
