//! SPEC §1-§4 rules the other suites leave open: option precedence (submission,
//! registration, pool, manager defaults), backoff sequences at exact manual-clock
//! times, max_retries edge values, dispatch order across retries and delayed
//! tasks, capability routing over overlapping pools, caps under a manager pause,
//! fencing of a timed-out attempt's late result, and the waiting_reason texts.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{event_names, eventually, manual, Gate, PATIENCE};
use fibflow::{
    AttemptOutcome, Backoff, Clock, Error, EventType, HandlerOptions, ManualClock, Outcome, Pool,
    RetryStrategy, SubmitOptions, TaskId, TaskManager, TaskStatus,
};
use serde_json::json;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const T0: u64 = 1_700_000_000_000;

fn status(mgr: &TaskManager, id: TaskId) -> TaskStatus {
    mgr.get_task(id).unwrap().status
}

fn builder(clock: &Arc<ManualClock>) -> fibflow::Builder {
    TaskManager::builder().memory().clock(clock.clone())
}

fn strategy(backoff: Backoff, base_ms: u64, cap_ms: Option<u64>, jitter: f64) -> RetryStrategy {
    RetryStrategy {
        backoff,
        base: Duration::from_millis(base_ms),
        cap: cap_ms.map(Duration::from_millis),
        jitter,
    }
}

/// Waits until the task has failed `n` attempts and waits for its retry; returns
/// the delay from now to its next run.
fn retry_delay_after(
    mgr: &TaskManager,
    clock: &ManualClock,
    id: TaskId,
    n: usize,
) -> (u64, TaskStatus) {
    eventually("the attempt failed", || {
        let t = mgr.get_task(id).unwrap();
        matches!(t.status, TaskStatus::Failed | TaskStatus::PermanentlyFailed)
            && mgr.attempts(id).unwrap().len() == n
    });
    let t = mgr.get_task(id).unwrap();
    (t.next_run_time.saturating_sub(clock.now_ms()), t.status)
}

/// SPEC §1: "Registration options (per handler, override manager defaults)";
/// submit options override the registration (fib-flow `{...registered, ...options}`).
#[test]
fn s1_submit_options_override_registration_which_overrides_manager_defaults() {
    let clock = ManualClock::new(T0);
    let mgr = builder(&clock)
        .max_concurrent_tasks(1)
        .max_retries(5)
        .timeout(Duration::from_secs(7))
        .retry_interval(Duration::from_secs(3))
        .build()
        .unwrap();
    mgr.register("plain", |_| Err("no".into())).unwrap();
    mgr.register_with(
        "opt",
        HandlerOptions::new()
            .timeout(Duration::from_secs(11))
            .max_retries(2)
            .retry_interval(Duration::from_secs(4))
            .priority(3),
        |_| Ok(json!(null).into()),
    )
    .unwrap();
    let plain = mgr.submit("plain", json!(null)).unwrap();
    let reg = mgr.submit("opt", json!(null)).unwrap();
    let sub = mgr
        .submit_with(
            "opt",
            json!(null),
            SubmitOptions::new()
                .timeout(Duration::from_secs(13))
                .max_retries(1)
                .retry_interval(Duration::from_secs(6))
                .priority(-1),
        )
        .unwrap();
    let fields = |id| {
        let t = mgr.get_task(id).unwrap();
        (t.timeout_ms, t.max_retries, t.retry_interval_ms, t.priority)
    };
    assert_eq!(fields(plain), (7_000, 5, 3_000, 0), "manager defaults");
    assert_eq!(fields(reg), (11_000, 2, 4_000, 3), "registration");
    assert_eq!(fields(sub), (13_000, 1, 6_000, -1), "submission");
    // The default interval is the one a retry really waits.
    mgr.start().unwrap();
    let (delay, st) = retry_delay_after(&mgr, &clock, plain, 1);
    assert_eq!((delay, st), (3_000, TaskStatus::Failed));
}

/// SPEC §1 precedence with a pool's max attempts (`Pool::max_attempts`): the
/// pool only fills in what neither the submission nor the handler sets, and it
/// applies to requirements added at submission.
#[test]
fn s1_pool_max_attempts_yields_to_handler_and_submission_max_retries() {
    let clock = ManualClock::new(T0);
    let mgr = builder(&clock)
        .pool(Pool::new("gpu").tags(["gpu"]).max_attempts(4))
        .build()
        .unwrap();
    let ok = |_: &fibflow::TaskContext| -> fibflow::HandlerResult { Ok(json!(null).into()) };
    mgr.register_with(
        "h",
        HandlerOptions::new().requires(["gpu"]).max_retries(2),
        ok,
    )
    .unwrap();
    mgr.register_with("p", HandlerOptions::new().requires(["gpu"]), ok)
        .unwrap();
    mgr.register("n", ok).unwrap();
    let max = |name: &str, o: SubmitOptions| {
        let id = mgr.submit_with(name, json!(null), o).unwrap();
        mgr.get_task(id).unwrap().max_retries
    };
    assert_eq!(max("h", SubmitOptions::new()), 2, "handler over pool");
    assert_eq!(max("p", SubmitOptions::new()), 4, "pool over default");
    assert_eq!(
        max("h", SubmitOptions::new().max_retries(1)),
        1,
        "submission over all"
    );
    assert_eq!(max("n", SubmitOptions::new()), 3, "no requirement: default");
    assert_eq!(
        max("n", SubmitOptions::new().requires(["gpu"])),
        4,
        "submitted requirement selects the pool"
    );
}

/// SPEC §1: registration options (`retry_interval` / backoff strategy) override
/// the defaults; a pool's strategy is the fallback "for tasks whose handler sets
/// none" (Pool::retry_strategy doc). A handler that registers a fixed
/// `retry_interval` has set one.
#[test]
fn s4_a_handler_retry_interval_is_not_replaced_by_its_pools_strategy() {
    let clock = ManualClock::new(T0);
    let mgr = builder(&clock)
        .pool(Pool::new("gpu").tags(["gpu"]).retry_strategy(strategy(
            Backoff::Exponential,
            1_000,
            None,
            0.0,
        )))
        .build()
        .unwrap();
    mgr.register_with(
        "render",
        HandlerOptions::new()
            .requires(["gpu"])
            .max_retries(2)
            .retry_interval(Duration::from_secs(5)),
        |_| Err("no".into()),
    )
    .unwrap();
    mgr.start().unwrap();
    let id = mgr.submit("render", json!(null)).unwrap();
    let (delay, _) = retry_delay_after(&mgr, &clock, id, 1);
    assert_eq!(delay, 5_000, "the handler's registered retry_interval");
}

/// SPEC §4: exponential backoff "with a cap": 1 s, 2 s, then capped at 3 s, at
/// exact manual-clock times, then exhaustion without waiting.
#[test]
fn s4_exponential_backoff_is_capped_at_exact_manual_clock_times() {
    let (mgr, clock) = manual(1);
    mgr.register_with(
        "bad",
        HandlerOptions::new().max_retries(5).retry(strategy(
            Backoff::Exponential,
            1_000,
            Some(3_000),
            0.0,
        )),
        |_| Err("no".into()),
    )
    .unwrap();
    mgr.start().unwrap();
    let id = mgr.submit("bad", json!(null)).unwrap();
    for (n, want) in [1_000u64, 2_000, 3_000, 3_000].into_iter().enumerate() {
        let (delay, st) = retry_delay_after(&mgr, &clock, id, n + 1);
        assert_eq!((delay, st), (want, TaskStatus::Failed), "retry {n}");
        clock.advance(Duration::from_millis(delay));
    }
    let t = mgr.wait(id, PATIENCE).unwrap();
    assert_eq!(t.status, TaskStatus::PermanentlyFailed);
    assert_eq!(mgr.attempts(id).unwrap().len(), 5);
    assert_eq!(t.retry_count, 4);
}

/// SPEC §4: linear backoff grows by its base per retry, bounded by its cap.
#[test]
fn s4_linear_backoff_grows_by_its_base_until_its_cap() {
    let (mgr, clock) = manual(1);
    mgr.register_with(
        "bad",
        HandlerOptions::new().max_retries(5).retry(strategy(
            Backoff::Linear,
            1_000,
            Some(2_500),
            0.0,
        )),
        |_| Err("no".into()),
    )
    .unwrap();
    mgr.start().unwrap();
    let id = mgr.submit("bad", json!(null)).unwrap();
    for (n, want) in [1_000u64, 2_000, 2_500, 2_500].into_iter().enumerate() {
        let (delay, _) = retry_delay_after(&mgr, &clock, id, n + 1);
        assert_eq!(delay, want, "retry {n}");
        clock.advance(Duration::from_millis(delay));
    }
    assert_eq!(
        mgr.wait(id, PATIENCE).unwrap().status,
        TaskStatus::PermanentlyFailed
    );
}

/// SPEC §4 "optional jitter": a jittered delay lies between the raw delay less
/// the jitter fraction and the raw delay, and the retry runs exactly then.
#[test]
fn s4_jittered_backoff_stays_between_its_floor_and_its_raw_delay() {
    let (mgr, clock) = manual(1);
    mgr.register_with(
        "bad",
        HandlerOptions::new().max_retries(4).retry(strategy(
            Backoff::Exponential,
            1_000,
            None,
            0.5,
        )),
        |_| Err("no".into()),
    )
    .unwrap();
    mgr.start().unwrap();
    let id = mgr.submit("bad", json!(null)).unwrap();
    for (n, raw) in [1_000u64, 2_000, 4_000].into_iter().enumerate() {
        let (delay, _) = retry_delay_after(&mgr, &clock, id, n + 1);
        assert!(
            (raw / 2..=raw).contains(&delay),
            "retry {n}: {delay} ms not in [{}, {raw}]",
            raw / 2
        );
        // One millisecond early: still waiting.
        clock.advance(Duration::from_millis(delay - 1));
        assert_eq!(mgr.attempts(id).unwrap().len(), n + 1, "retry {n} early");
        clock.advance(Duration::from_millis(1));
    }
    assert_eq!(
        mgr.wait(id, PATIENCE).unwrap().status,
        TaskStatus::PermanentlyFailed
    );
}

/// SPEC §4: max_retries 1 is one execution: the first failure exhausts, with
/// `retry_exhausted` metadata, no retry scheduled, no waiting for the interval.
#[test]
fn s4_max_retries_one_exhausts_after_the_first_failure() {
    let (mgr, _clock) = manual(1);
    mgr.register_with(
        "bad",
        HandlerOptions::new()
            .max_retries(1)
            .retry_interval(Duration::from_secs(3600)),
        |_| Err("only once".into()),
    )
    .unwrap();
    mgr.start().unwrap();
    let id = mgr.submit("bad", json!(null)).unwrap();
    let t = mgr.wait(id, PATIENCE).unwrap();
    assert_eq!(t.status, TaskStatus::PermanentlyFailed);
    assert_eq!(t.retry_count, 0);
    assert_eq!(t.error.as_deref(), Some("only once"));
    assert_eq!(mgr.attempts(id).unwrap().len(), 1);
    let names = event_names(&mgr, id);
    assert!(!names.contains(&"task_retry_scheduled"), "{names:?}");
    let ev = mgr.events(id).unwrap();
    let last = ev
        .iter()
        .rev()
        .find(|e| e.event_type == EventType::PermanentlyFailed)
        .unwrap();
    assert_eq!(
        last.metadata["retry_exhausted"], true,
        "{:?}",
        last.metadata
    );
}

/// SPEC §4: "A retry: status pending, retry_count + 1, stage 0" (fib-flow's
/// retry sets `stage = 0`), even when the failing run was a resumed stage 1.
#[test]
fn s4_a_retry_restarts_a_resumed_task_at_stage_zero() {
    let (mgr, _clock) = manual(1);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    mgr.register_with("st", HandlerOptions::new().max_retries(3), move |ctx| {
        s.lock().unwrap().push((ctx.stage(), ctx.retry_count()));
        match (ctx.stage(), ctx.retry_count()) {
            (0, 0) => Ok(Outcome::suspend("approve")),
            (0, _) => Ok(json!("again from the start").into()),
            _ => Err("stage one failed".into()),
        }
    })
    .unwrap();
    mgr.start().unwrap();
    let id = mgr.submit("st", json!(null)).unwrap();
    eventually("suspended", || status(&mgr, id) == TaskStatus::Suspended);
    mgr.resume_task(id, Some("ok")).unwrap();
    let t = mgr.wait(id, PATIENCE).unwrap();
    assert_eq!(t.status, TaskStatus::Completed);
    assert_eq!(*seen.lock().unwrap(), vec![(0, 0), (1, 0), (0, 1)]);
    assert_eq!((t.stage, t.retry_count), (0, 1));
}

/// SPEC §3: "Order: priority descending, then next_run_time ascending, then id
/// ascending", with a retry's ready time placed among delayed fresh tasks.
#[test]
fn s3_retries_and_delayed_tasks_are_ordered_by_priority_then_ready_time_then_id() {
    let (mgr, clock) = manual(1);
    let gate = Gate::new();
    let order = Arc::new(Mutex::new(Vec::new()));
    let (g, o) = (gate.clone(), order.clone());
    mgr.register("w", move |ctx| {
        let name = ctx.payload().as_str().unwrap().to_owned();
        if name == "block" {
            g.wait();
            return Ok(json!(null).into());
        }
        if name == "R" && ctx.retry_count() == 0 {
            return Err("first try".into());
        }
        o.lock().unwrap().push(name);
        Ok(json!(null).into())
    })
    .unwrap();
    mgr.start().unwrap();
    let delayed = |name: &str, ms: u64, prio: i32| {
        mgr.submit_with(
            "w",
            json!(name),
            SubmitOptions::new()
                .delay(Duration::from_millis(ms))
                .priority(prio),
        )
        .unwrap()
    };
    let r = mgr
        .submit_with(
            "w",
            json!("R"),
            SubmitOptions::new().retry_interval(Duration::from_secs(5)),
        )
        .unwrap();
    let (delay, _) = retry_delay_after(&mgr, &clock, r, 1);
    assert_eq!(delay, 5_000);
    let b = mgr.submit("w", json!("block")).unwrap();
    eventually("block runs", || status(&mgr, b) == TaskStatus::Running);
    delayed("F", 6_000, 0);
    delayed("H", 5_000, 0); // same time as R's retry, higher id
    delayed("G", 4_000, 0);
    delayed("P", 7_000, 1);
    clock.advance(Duration::from_secs(8));
    eventually("the retry is pending", || {
        status(&mgr, r) == TaskStatus::Pending
    });
    // Its ready time is the one it was scheduled for, not the timer's firing.
    let ready = mgr.get_task(r).unwrap().next_run_time;
    gate.open();
    eventually("all ran", || order.lock().unwrap().len() == 5);
    assert_eq!(*order.lock().unwrap(), ["P", "G", "R", "H", "F"]);
    assert_eq!(ready, T0 + 5_000, "the retry's next_run_time");
}

/// SPEC §3: eligible needs "a worker whose tags include every required
/// capability"; requirements are the handler's plus the submission's, and pools
/// with overlapping tags each take what they can.
#[test]
fn s3_overlapping_capability_pools_route_each_task_to_a_pool_with_every_tag() {
    let clock = ManualClock::new(T0);
    let mgr = builder(&clock)
        .max_concurrent_tasks(4)
        .pool(Pool::new("gpu").tags(["gpu"]))
        .pool(Pool::new("both").tags(["ssd", "gpu"]))
        .build()
        .unwrap();
    let gate = Gate::new();
    let g = gate.clone();
    mgr.register_with("job", HandlerOptions::new().requires(["gpu"]), move |ctx| {
        if ctx.payload() == &json!("block") {
            g.wait();
        }
        Ok(json!(ctx.worker()).into())
    })
    .unwrap();
    mgr.start().unwrap();
    let ssd = |p: &str| {
        mgr.submit_with("job", json!(p), SubmitOptions::new().requires(["ssd"]))
            .unwrap()
    };
    let x = ssd("block");
    eventually("x runs", || status(&mgr, x) == TaskStatus::Running);
    assert_eq!(mgr.get_task(x).unwrap().worker.as_deref(), Some("both-0"));
    let y = ssd("free");
    assert_eq!(mgr.get_task(y).unwrap().requires, ["gpu", "ssd"]);
    let z = mgr.submit("job", json!("free")).unwrap();
    let zt = mgr.wait(z, PATIENCE).unwrap();
    assert_eq!(
        zt.result,
        Some(json!("gpu-0")),
        "only the gpu pool was free"
    );
    assert_eq!(
        status(&mgr, y),
        TaskStatus::Pending,
        "the gpu pool lacks ssd"
    );
    assert_eq!(
        mgr.waiting_reason(y).unwrap().as_deref(),
        Some("queued: waiting for a free worker")
    );
    gate.open();
    assert_eq!(mgr.wait(y, PATIENCE).unwrap().result, Some(json!("both-0")));
}

/// SPEC §3: "the global max_concurrent_tasks" caps running tasks across every
/// pool, not just the default one.
#[test]
fn s3_the_global_cap_spans_every_pool() {
    let clock = ManualClock::new(T0);
    let mgr = builder(&clock)
        .max_concurrent_tasks(1)
        .pool(Pool::new("ssd").tags(["ssd"]))
        .pool(Pool::new("gpu").tags(["gpu"]))
        .build()
        .unwrap();
    let gate = Gate::new();
    let busy = Arc::new(AtomicBool::new(false));
    let overlap = Arc::new(AtomicBool::new(false));
    let (g, b) = (gate.clone(), busy.clone());
    mgr.register_with("s", HandlerOptions::new().requires(["ssd"]), move |_| {
        b.store(true, Ordering::SeqCst);
        g.wait();
        b.store(false, Ordering::SeqCst);
        Ok(json!(null).into())
    })
    .unwrap();
    let (b, o) = (busy.clone(), overlap.clone());
    mgr.register_with("g", HandlerOptions::new().requires(["gpu"]), move |_| {
        if b.load(Ordering::SeqCst) {
            o.store(true, Ordering::SeqCst);
        }
        Ok(json!(null).into())
    })
    .unwrap();
    mgr.start().unwrap();
    let s = mgr.submit("s", json!(null)).unwrap();
    eventually("s runs", || busy.load(Ordering::SeqCst));
    let g = mgr.submit("g", json!(null)).unwrap();
    // The gpu pool's workers are idle: the global cap holds it.
    assert_eq!(
        mgr.waiting_reason(g).unwrap().as_deref(),
        Some("the manager is at its global concurrency cap (1 running)")
    );
    gate.open();
    assert_eq!(mgr.wait(s, PATIENCE).unwrap().status, TaskStatus::Completed);
    assert_eq!(mgr.wait(g, PATIENCE).unwrap().status, TaskStatus::Completed);
    assert!(
        !overlap.load(Ordering::SeqCst),
        "g ran beside s: cap 1 broken"
    );
}

/// SPEC §3: manager `pause()` gates new claims only: a handler slot freed while
/// paused stays unused (its queued task waits, "the manager is paused"),
/// submission still works, and `resume()` starts the queue.
#[test]
fn s3_manager_pause_keeps_a_freed_handler_slot_unused_until_resume() {
    let (mgr, _clock) = manual(3);
    let gate = Gate::new();
    let hold = gate.clone();
    let running = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let (now_running, peak) = (running.clone(), most.clone());
    mgr.register_with(
        "c",
        HandlerOptions::new().max_concurrent_tasks(1),
        move |ctx| {
            let now = now_running.fetch_add(1, Ordering::SeqCst) + 1;
            peak.fetch_max(now, Ordering::SeqCst);
            if ctx.payload() == &json!("block") {
                hold.wait();
            }
            now_running.fetch_sub(1, Ordering::SeqCst);
            Ok(json!(null).into())
        },
    )
    .unwrap();
    mgr.start().unwrap();
    let a = mgr.submit("c", json!("block")).unwrap();
    eventually("a runs", || status(&mgr, a) == TaskStatus::Running);
    let b = mgr.submit("c", json!("free")).unwrap();
    mgr.pause();
    let c = mgr.submit("c", json!("free")).unwrap();
    gate.open();
    assert_eq!(mgr.wait(a, PATIENCE).unwrap().status, TaskStatus::Completed);
    for id in [b, c] {
        assert_eq!(status(&mgr, id), TaskStatus::Pending);
        assert_eq!(
            mgr.waiting_reason(id).unwrap().as_deref(),
            Some("the manager is paused")
        );
    }
    mgr.resume();
    assert_eq!(mgr.wait(b, PATIENCE).unwrap().status, TaskStatus::Completed);
    assert_eq!(mgr.wait(c, PATIENCE).unwrap().status, TaskStatus::Completed);
    assert_eq!(most.load(Ordering::SeqCst), 1, "handler cap 1");
}

/// SPEC §2: "A write from an attempt that no longer owns the task (the task left
/// running, or a newer attempt owns it) is rejected": a sync handler that returns
/// after its timeout, while its retry already runs, cannot complete the retry.
#[test]
fn s2_a_late_result_of_a_timed_out_attempt_cannot_complete_its_retry() {
    let (mgr, clock) = manual(2);
    let first = Gate::new();
    let second = Gate::new();
    let (g1, g2) = (first.clone(), second.clone());
    let probe_ran = Arc::new(AtomicBool::new(false));
    let p = probe_ran.clone();
    mgr.register_with(
        "slow",
        HandlerOptions::new()
            .timeout(Duration::from_secs(2))
            .max_retries(2),
        move |ctx| {
            if ctx.attempt() == 1 {
                g1.wait();
                Ok(json!("late first").into())
            } else {
                g2.wait();
                Ok(json!("second").into())
            }
        },
    )
    .unwrap();
    mgr.register("probe", move |_| {
        p.store(true, Ordering::SeqCst);
        Ok(json!(null).into())
    })
    .unwrap();
    mgr.start().unwrap();
    let id = mgr.submit("slow", json!(null)).unwrap();
    eventually("attempt 1 runs", || status(&mgr, id) == TaskStatus::Running);
    clock.advance(Duration::from_secs(3));
    eventually("attempt 2 runs", || {
        let t = mgr.get_task(id).unwrap();
        t.status == TaskStatus::Running && t.attempt == 2
    });
    first.open();
    // The probe can only run on the worker attempt 1 held, after its late
    // result was handled.
    let probe = mgr.submit("probe", json!(null)).unwrap();
    mgr.wait(probe, PATIENCE).unwrap();
    let t = mgr.get_task(id).unwrap();
    assert_eq!(
        (t.status, t.attempt, t.result),
        (TaskStatus::Running, 2, None)
    );
    second.open();
    let t = mgr.wait(id, PATIENCE).unwrap();
    assert_eq!(t.status, TaskStatus::Completed);
    assert_eq!(t.result, Some(json!("second")));
    let at = mgr.attempts(id).unwrap();
    assert_eq!(at.len(), 2);
    assert_eq!(at[0].outcome, Some(AttemptOutcome::Timeout));
    assert!(at[0].timed_out);
    assert_eq!(at[1].outcome, Some(AttemptOutcome::Completed));
}

/// SPEC §4: a heartbeat timeout of an async handler that never heartbeats
/// (timeout_type `heartbeat`) counts like a failure: with max_retries 2 it is
/// retried once, then exhausts.
#[test]
fn s4_an_async_heartbeat_timeout_is_retried_then_exhausts() {
    let (mgr, clock) = manual(1);
    mgr.register_async_with(
        "quiet",
        HandlerOptions::new()
            .heartbeat_window(Duration::from_secs(1))
            .timeout(Duration::from_secs(60))
            .max_retries(2),
        |_ctx| async move {
            std::future::pending::<()>().await;
            Ok(json!(null).into())
        },
    )
    .unwrap();
    mgr.start().unwrap();
    let id = mgr.submit("quiet", json!(null)).unwrap();
    for n in 1..=2u32 {
        eventually("attempt runs", || {
            let t = mgr.get_task(id).unwrap();
            t.status == TaskStatus::Running && t.attempt == n
        });
        clock.advance(Duration::from_secs(2));
    }
    let t = mgr.wait(id, PATIENCE).unwrap();
    assert_eq!(t.status, TaskStatus::PermanentlyFailed);
    assert_eq!(t.retry_count, 1);
    let ev = mgr.events(id).unwrap();
    let timeouts: Vec<_> = ev
        .iter()
        .filter(|e| e.event_type == EventType::TimedOut)
        .map(|e| e.metadata["timeout_type"].clone())
        .collect();
    assert_eq!(timeouts, [json!("heartbeat"), json!("heartbeat")]);
    let at = mgr.attempts(id).unwrap();
    assert!(at
        .iter()
        .all(|a| a.outcome == Some(AttemptOutcome::Timeout) && a.timed_out));
}

/// SPEC §4: "A panicking handler is a failed attempt with the panic message as
/// error", retried like any failure; "the last error kept" while the retry runs.
#[test]
fn s4_a_panic_is_retried_and_its_message_is_kept_as_the_last_error() {
    let (mgr, clock) = manual(1);
    let gate = Gate::new();
    let g = gate.clone();
    mgr.register_with(
        "boom",
        HandlerOptions::new()
            .max_retries(2)
            .retry_interval(Duration::from_secs(10)),
        move |ctx| {
            assert!(ctx.retry_count() != 0, "boom at attempt {}", ctx.attempt());
            g.wait();
            Ok(json!("recovered").into())
        },
    )
    .unwrap();
    mgr.start().unwrap();
    let id = mgr.submit("boom", json!(null)).unwrap();
    let (delay, st) = retry_delay_after(&mgr, &clock, id, 1);
    assert_eq!((delay, st), (10_000, TaskStatus::Failed));
    assert_eq!(
        mgr.get_task(id).unwrap().error.as_deref(),
        Some("boom at attempt 1")
    );
    clock.advance(Duration::from_secs(10));
    eventually("the retry runs", || {
        let t = mgr.get_task(id).unwrap();
        t.status == TaskStatus::Running && t.attempt == 2
    });
    let t = mgr.get_task(id).unwrap();
    assert_eq!(t.retry_count, 1);
    assert_eq!(t.error.as_deref(), Some("boom at attempt 1"));
    assert!(event_names(&mgr, id).contains(&"task_retry_started"));
    gate.open();
    assert_eq!(
        mgr.wait(id, PATIENCE).unwrap().result,
        Some(json!("recovered"))
    );
}

/// SPEC §3 "a query can say so": the waiting_reason texts for each cause, and
/// none for a task that is not pending.
#[test]
fn s3_waiting_reason_names_each_cause() {
    let (mgr, clock) = manual(1);
    let gate = Gate::new();
    let g = gate.clone();
    mgr.register("w", move |ctx| {
        if ctx.payload() == &json!("block") {
            g.wait();
        }
        Ok(json!(null).into())
    })
    .unwrap();
    let a = mgr.submit("w", json!("block")).unwrap();
    let later = mgr
        .submit_with(
            "w",
            json!("free"),
            SubmitOptions::new().delay(Duration::from_secs(5)),
        )
        .unwrap();
    let reason = |id| mgr.waiting_reason(id).unwrap();
    assert_eq!(reason(a).as_deref(), Some("the manager is not started"));
    let sched = format!("scheduled to run at {} ms since the epoch", T0 + 5_000);
    assert_eq!(reason(later).as_deref(), Some(sched.as_str()));
    mgr.start().unwrap();
    eventually("a runs", || status(&mgr, a) == TaskStatus::Running);
    assert_eq!(reason(a), None, "running");
    let q = mgr.submit("w", json!("free")).unwrap();
    assert_eq!(
        reason(q).as_deref(),
        Some("queued: waiting for a free worker")
    );
    mgr.pause();
    assert_eq!(reason(q).as_deref(), Some("the manager is paused"));
    mgr.resume();
    clock.advance(Duration::from_secs(5));
    gate.open();
    for id in [a, q, later] {
        assert_eq!(
            mgr.wait(id, PATIENCE).unwrap().status,
            TaskStatus::Completed
        );
        assert_eq!(reason(id), None, "completed");
    }
    assert!(matches!(
        mgr.waiting_reason(TaskId(u64::MAX)),
        Err(Error::NotFound(_))
    ));
}

/// SPEC §3 order at `start`: a task whose delay ran out before `start` is
/// queued before any worker claims, so it is chosen by priority with the
/// tasks that were queued already. (Before, `start` ran the workers first and
/// the timer thread queued the due task after them: a low-priority task
/// sometimes ran first, about one start in five.)
#[test]
fn s3_a_task_due_before_start_competes_by_priority_from_the_first_claim() {
    for round in 0..20 {
        let clock = ManualClock::new(T0);
        let mgr = builder(&clock).max_concurrent_tasks(1).build().unwrap();
        let order = Arc::new(Mutex::new(Vec::new()));
        let o = order.clone();
        mgr.register("job", move |ctx| {
            o.lock().unwrap().push(ctx.payload().clone());
            Ok(json!(null).into())
        })
        .unwrap();
        for k in 0..3 {
            mgr.submit("job", json!(format!("low-{k}"))).unwrap();
        }
        mgr.submit_with(
            "job",
            json!("high"),
            SubmitOptions::new()
                .priority(10)
                .delay(Duration::from_secs(5)),
        )
        .unwrap();
        clock.advance(Duration::from_secs(6));
        mgr.start().unwrap();
        eventually("all four ran", || order.lock().unwrap().len() == 4);
        let ran = order.lock().unwrap().clone();
        assert_eq!(ran[0], json!("high"), "round {round}: {ran:?}");
        mgr.stop(PATIENCE).unwrap();
    }
}
