//! SPEC §2–4, §8, §13 through the public API, with a manual clock where time matters.

mod common;

use common::{event_names, eventually, manual, PATIENCE};
use fibflow::{
    AttemptOutcome, Error, HandlerOptions, Pool, SubmitOptions, TaskFilter, TaskManager, TaskStatus,
};
use serde_json::json;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[test]
fn plain_success_has_exactly_four_events() {
    let (mgr, _clock) = manual(2);
    mgr.register("echo", |ctx| Ok(ctx.payload().clone().into()))
        .unwrap();
    let id = mgr.submit("echo", json!({"x": 1})).unwrap();
    mgr.start().unwrap();
    let t = mgr.wait(id, PATIENCE).unwrap();
    assert_eq!(t.status, TaskStatus::Completed);
    assert_eq!(t.result, Some(json!({"x": 1})));
    let as_json = serde_json::to_value(&t).unwrap();
    assert_eq!(
        as_json["payload"],
        json!({"x": 1}),
        "snapshots serialize to natural JSON"
    );
    assert_eq!(as_json["result"], json!({"x": 1}));
    assert_eq!(
        as_json["status"], "completed",
        "enums serialize by their SPEC names"
    );
    assert_eq!(as_json["kind"], "async");
    let ev = serde_json::to_value(mgr.events(id).unwrap()).unwrap();
    assert_eq!(ev[0]["event_type"], "task_created");
    assert_eq!(
        event_names(&mgr, id),
        [
            "task_created",
            "task_claimed",
            "task_started",
            "task_completed"
        ]
    );
    let attempts = mgr.attempts(id).unwrap();
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0].number, 1);
    assert_eq!(attempts[0].outcome, Some(AttemptOutcome::Completed));
    assert_eq!(
        t.last_event_type.map(|e| e.as_str()),
        Some("task_completed")
    );
}

#[test]
fn failure_is_retried_then_succeeds() {
    let (mgr, _clock) = manual(1);
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    mgr.register("flaky", move |_| {
        if c.fetch_add(1, Ordering::SeqCst) == 0 {
            Err("boom".into())
        } else {
            Ok(json!("ok").into())
        }
    })
    .unwrap();
    mgr.start().unwrap();
    let id = mgr.submit("flaky", json!(null)).unwrap();
    let t = mgr.wait(id, PATIENCE).unwrap();
    assert_eq!(t.status, TaskStatus::Completed);
    assert_eq!(t.retry_count, 1);
    assert_eq!(t.error.as_deref(), Some("boom"), "the last error is kept");
    assert_eq!(
        event_names(&mgr, id),
        [
            "task_created",
            "task_claimed",
            "task_started",
            "task_failed",
            "task_retry_scheduled",
            "task_claimed",
            "task_started",
            "task_retry_started",
            "task_completed"
        ]
    );
    let numbers: Vec<u32> = mgr.attempts(id).unwrap().iter().map(|a| a.number).collect();
    assert_eq!(numbers, [1, 2]);
}

#[test]
fn retries_exhaust_into_permanently_failed_without_waiting_for_the_interval() {
    let (mgr, clock) = manual(1);
    mgr.register_with(
        "bad",
        HandlerOptions::new()
            .max_retries(2)
            .retry_interval(Duration::from_secs(10)),
        |_| Err("always".into()),
    )
    .unwrap();
    mgr.start().unwrap();
    let id = mgr.submit("bad", json!(null)).unwrap();
    eventually("first failure", || {
        mgr.get_task(id).unwrap().status == TaskStatus::Failed
    });
    // SPEC §4 (fib-flow's model): the task stays failed until its retry is due.
    let t = mgr.get_task(id).unwrap();
    assert_eq!(t.retry_count, 0);
    assert_eq!(t.next_run_time, clock.now_ms_for_test() + 10_000);
    assert_eq!(event_names(&mgr, id).last(), Some(&"task_failed"));
    clock.advance(Duration::from_secs(9));
    assert_eq!(mgr.get_task(id).unwrap().status, TaskStatus::Failed);
    clock.advance(Duration::from_secs(1));
    let t = mgr.wait(id, PATIENCE).unwrap();
    assert_eq!(t.status, TaskStatus::PermanentlyFailed);
    assert_eq!(t.retry_count, 1);
    let names = event_names(&mgr, id);
    assert_eq!(names.last(), Some(&"task_permanently_failed"));
    let last = mgr.events(id).unwrap().pop().unwrap();
    assert_eq!(last.metadata["reason"], "retry_exhausted");
}

trait NowForTest {
    fn now_ms_for_test(&self) -> u64;
}
impl NowForTest for fibflow::ManualClock {
    fn now_ms_for_test(&self) -> u64 {
        fibflow::Clock::now_ms(self)
    }
}

#[test]
fn max_retries_zero_acts_as_one() {
    let (mgr, _clock) = manual(1);
    mgr.register_with("bad", HandlerOptions::new().max_retries(0), |_| {
        Err("x".into())
    })
    .unwrap();
    mgr.start().unwrap();
    let id = mgr.submit("bad", json!(null)).unwrap();
    let t = mgr.wait(id, PATIENCE).unwrap();
    assert_eq!(t.status, TaskStatus::PermanentlyFailed);
    assert_eq!(mgr.attempts(id).unwrap().len(), 1);
}

#[test]
fn panic_fails_the_attempt_and_the_worker_survives() {
    let (mgr, _clock) = manual(1);
    mgr.register_with("panics", HandlerOptions::new().max_retries(1), |_| {
        panic!("kaboom")
    })
    .unwrap();
    mgr.register("fine", |_| Ok(json!(1).into())).unwrap();
    mgr.start().unwrap();
    let a = mgr.submit("panics", json!(null)).unwrap();
    let t = mgr.wait(a, PATIENCE).unwrap();
    assert_eq!(t.status, TaskStatus::PermanentlyFailed);
    assert!(t.error.unwrap().contains("kaboom"));
    let b = mgr.submit("fine", json!(null)).unwrap();
    assert_eq!(mgr.wait(b, PATIENCE).unwrap().status, TaskStatus::Completed);
}

#[test]
fn delayed_task_runs_only_when_the_clock_reaches_it() {
    let (mgr, clock) = manual(1);
    mgr.register("t", |_| Ok(json!(null).into())).unwrap();
    mgr.start().unwrap();
    let id = mgr
        .submit_with(
            "t",
            json!(null),
            SubmitOptions::new().delay(Duration::from_secs(5)),
        )
        .unwrap();
    assert!(mgr
        .waiting_reason(id)
        .unwrap()
        .unwrap()
        .contains("scheduled"));
    clock.advance(Duration::from_secs(4));
    assert_eq!(mgr.get_task(id).unwrap().status, TaskStatus::Pending);
    clock.advance(Duration::from_secs(1));
    assert_eq!(
        mgr.wait(id, PATIENCE).unwrap().status,
        TaskStatus::Completed
    );
}

#[test]
fn total_timeout_fails_the_attempt_and_discards_the_late_result() {
    let (mgr, clock) = manual(1);
    let release = Arc::new(std::sync::Barrier::new(2));
    let r = release.clone();
    mgr.register_with(
        "slow",
        HandlerOptions::new()
            .timeout(Duration::from_secs(2))
            .max_retries(1),
        move |ctx| {
            r.wait();
            // cooperative check reports the timeout
            assert!(ctx.check().is_err());
            Ok(json!("late").into())
        },
    )
    .unwrap();
    mgr.start().unwrap();
    let id = mgr.submit("slow", json!(null)).unwrap();
    eventually("running", || {
        mgr.get_task(id).unwrap().status == TaskStatus::Running
    });
    clock.advance(Duration::from_secs(3));
    eventually("timed out", || {
        mgr.get_task(id).unwrap().status != TaskStatus::Running
    });
    release.wait();
    let t = mgr.wait(id, PATIENCE).unwrap();
    assert_eq!(t.status, TaskStatus::PermanentlyFailed);
    assert_eq!(t.result, None, "late result discarded");
    let ev = mgr.events(id).unwrap();
    let timed = ev
        .iter()
        .find(|e| e.event_type.as_str() == "task_timed_out")
        .unwrap();
    assert_eq!(timed.metadata["timeout_type"], "total");
    assert_eq!(
        mgr.attempts(id).unwrap()[0].outcome,
        Some(AttemptOutcome::Timeout)
    );
}

#[test]
fn heartbeat_window_times_out_a_silent_handler() {
    let (mgr, clock) = manual(1);
    let release = Arc::new(std::sync::Barrier::new(2));
    let r = release.clone();
    let opts = HandlerOptions::new()
        .heartbeat_window(Duration::from_secs(1))
        .max_retries(1);
    mgr.register_with("silent", opts, move |_| {
        r.wait();
        Ok(json!(null).into())
    })
    .unwrap();
    mgr.start().unwrap();
    let id = mgr.submit("silent", json!(null)).unwrap();
    eventually("running", || {
        mgr.get_task(id).unwrap().status == TaskStatus::Running
    });
    clock.advance(Duration::from_secs(2));
    eventually("timed out", || {
        mgr.get_task(id).unwrap().status != TaskStatus::Running
    });
    release.wait();
    let ev = mgr.events(id).unwrap();
    let timed = ev
        .iter()
        .find(|e| e.event_type.as_str() == "task_timed_out")
        .unwrap();
    assert_eq!(timed.metadata["timeout_type"], "heartbeat");
}

#[test]
fn priority_then_time_then_id_order() {
    let (mgr, _clock) = manual(1);
    let order = Arc::new(Mutex::new(Vec::new()));
    let o = order.clone();
    mgr.register("rec", move |ctx| {
        o.lock().unwrap().push(ctx.payload()["n"].as_i64().unwrap());
        Ok(json!(null).into())
    })
    .unwrap();
    let mut ids = Vec::new();
    for (n, p) in [(1, 0), (2, 5), (3, 0), (4, 10), (5, 5)] {
        ids.push(
            mgr.submit_with("rec", json!({"n": n}), SubmitOptions::new().priority(p))
                .unwrap(),
        );
    }
    mgr.start().unwrap();
    for id in ids {
        mgr.wait(id, PATIENCE).unwrap();
    }
    assert_eq!(*order.lock().unwrap(), [4, 2, 5, 1, 3]);
}

#[test]
fn tasks_run_only_on_pools_with_their_capabilities() {
    let mgr = TaskManager::builder()
        .memory()
        .max_concurrent_tasks(4)
        .pool(Pool::new("gpu").tags(["gpu"]).concurrency(2))
        .build()
        .unwrap();
    mgr.register_with("train", HandlerOptions::new().requires(["gpu"]), |ctx| {
        Ok(json!(ctx.worker()).into())
    })
    .unwrap();
    mgr.register_with("tpu", HandlerOptions::new().requires(["tpu"]), |_| {
        Ok(json!(null).into())
    })
    .unwrap();
    mgr.start().unwrap();
    let ids: Vec<_> = (0..20)
        .map(|_| mgr.submit("train", json!(null)).unwrap())
        .collect();
    for id in ids {
        let t = mgr.wait(id, PATIENCE).unwrap();
        assert!(t.worker.unwrap().starts_with("gpu-"));
    }
    let stuck = mgr.submit("tpu", json!(null)).unwrap();
    let why = mgr.waiting_reason(stuck).unwrap().unwrap();
    assert!(why.contains("tpu"), "{why}");
    assert_eq!(mgr.get_task(stuck).unwrap().status, TaskStatus::Pending);
}

#[test]
fn per_handler_concurrency_cap_is_respected() {
    let (mgr, _clock) = manual(4);
    let running = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let (r, p) = (running.clone(), peak.clone());
    mgr.register_with(
        "capped",
        HandlerOptions::new().max_concurrent_tasks(1),
        move |_| {
            let now = r.fetch_add(1, Ordering::SeqCst) + 1;
            p.fetch_max(now, Ordering::SeqCst);
            for _ in 0..1000 {
                std::thread::yield_now();
            }
            r.fetch_sub(1, Ordering::SeqCst);
            Ok(json!(null).into())
        },
    )
    .unwrap();
    mgr.start().unwrap();
    let ids: Vec<_> = (0..12)
        .map(|_| mgr.submit("capped", json!(null)).unwrap())
        .collect();
    for id in ids {
        assert_eq!(
            mgr.wait(id, PATIENCE).unwrap().status,
            TaskStatus::Completed
        );
    }
    assert_eq!(peak.load(Ordering::SeqCst), 1);
}

/// Workers racing for a capped handler's last slot must not let a worse entry
/// run first: the slot is taken before the entry leaves its queue.
#[test]
fn a_capped_handler_runs_its_tasks_in_priority_order_with_many_workers() {
    let (mgr, _clock) = manual(4);
    let order = Arc::new(Mutex::new(Vec::new()));
    let o = order.clone();
    mgr.register_with(
        "capped",
        HandlerOptions::new().max_concurrent_tasks(1),
        move |ctx| {
            o.lock().unwrap().push(ctx.payload().as_i64().unwrap());
            Ok(json!(null).into())
        },
    )
    .unwrap();
    for round in 0..20 {
        mgr.pause();
        let ids: Vec<_> = (0..40)
            .map(|p| {
                let opts = SubmitOptions::new().priority(p);
                mgr.submit_with("capped", json!(p), opts).unwrap()
            })
            .collect();
        if round == 0 {
            mgr.start().unwrap();
        }
        mgr.resume();
        for id in ids {
            mgr.wait(id, PATIENCE).unwrap();
        }
        let ran = std::mem::take(&mut *order.lock().unwrap());
        let want: Vec<i64> = (0..40).rev().collect();
        assert_eq!(
            ran, want,
            "round {round}: a capped handler ran out of order"
        );
    }
}

/// A task queued when due must still run after the clock is set back before a
/// worker claims it: the claim hands it to the timer instead of dropping it.
#[test]
fn a_queued_task_survives_the_clock_being_set_back() {
    let (mgr, clock) = manual(2);
    mgr.register("t", |_| Ok(json!("ran").into())).unwrap();
    mgr.start().unwrap();
    mgr.pause();
    let id = mgr.submit("t", json!(null)).unwrap();
    let at = mgr.get_task(id).unwrap().next_run_time;
    clock.set(at - 10_000);
    // A worker takes the queued entry, finds the task not due on the
    // stepped-back clock, and must leave it with the timer.
    mgr.resume();
    assert_eq!(mgr.get_task(id).unwrap().status, TaskStatus::Pending);
    clock.set(at);
    assert_eq!(
        mgr.wait(id, PATIENCE).unwrap().result,
        Some(json!("ran")),
        "the task ran once its time came again"
    );
}

#[test]
fn manager_pause_gates_claims_but_not_submission() {
    let (mgr, _clock) = manual(2);
    mgr.register("t", |_| Ok(json!(null).into())).unwrap();
    mgr.start().unwrap();
    mgr.pause();
    let id = mgr.submit("t", json!(null)).unwrap();
    assert_eq!(
        mgr.waiting_reason(id).unwrap().as_deref(),
        Some("the manager is paused")
    );
    assert_eq!(mgr.get_task(id).unwrap().status, TaskStatus::Pending);
    mgr.resume();
    assert_eq!(
        mgr.wait(id, PATIENCE).unwrap().status,
        TaskStatus::Completed
    );
}

#[test]
fn hot_reload_affects_only_later_claims() {
    let (mgr, _clock) = manual(2);
    let gate = Arc::new(std::sync::Barrier::new(2));
    let g = gate.clone();
    mgr.register("v", move |_| {
        g.wait();
        Ok(json!("v1").into())
    })
    .unwrap();
    mgr.start().unwrap();
    let first = mgr.submit("v", json!(null)).unwrap();
    eventually("first running", || {
        mgr.get_task(first).unwrap().status == TaskStatus::Running
    });
    mgr.register("v", |_| Ok(json!("v2").into())).unwrap();
    let second = mgr.submit("v", json!(null)).unwrap();
    assert_eq!(
        mgr.wait(second, PATIENCE).unwrap().result,
        Some(json!("v2"))
    );
    gate.wait();
    assert_eq!(mgr.wait(first, PATIENCE).unwrap().result, Some(json!("v1")));
}

#[test]
fn unregister_counts_and_later_submissions_fail() {
    let (mgr, _clock) = manual(1);
    mgr.register("a", |_| Ok(json!(null).into())).unwrap();
    mgr.register("b", |_| Ok(json!(null).into())).unwrap();
    assert_eq!(mgr.unregister(&["a", "b", "nope"]), 2);
    let err = mgr.submit("a", json!(null)).unwrap_err();
    assert_eq!(err.to_string(), "No handler registered for task: a");
    assert!(matches!(mgr.task_info("a"), Err(Error::NotRegistered(_))));
}

#[test]
fn task_info_and_bad_input_errors() {
    let (mgr, _clock) = manual(1);
    mgr.register_with("d", HandlerOptions::new().description("does d"), |_| {
        Ok(json!(null).into())
    })
    .unwrap();
    assert_eq!(
        mgr.task_info("d").unwrap().description.as_deref(),
        Some("does d")
    );
    assert!(matches!(mgr.submit("", json!(null)), Err(Error::EmptyName)));
    assert!(matches!(
        mgr.submit_with("d", json!(null), SubmitOptions::new().requires(["bad tag"])),
        Err(Error::InvalidTag(_))
    ));
    assert!(matches!(
        mgr.register_with("z", HandlerOptions::new().max_concurrent_tasks(0), |_| Ok(
            json!(null).into()
        )),
        Err(Error::InvalidOption(_))
    ));
    assert!(matches!(
        mgr.submit_with("d", json!(null), SubmitOptions::new().cron("61 * * * *")),
        Err(Error::Schedule(_))
    ));
    assert!(TaskManager::builder()
        .memory()
        .max_concurrent_tasks(0)
        .build()
        .is_err());
    assert!(TaskManager::builder()
        .memory()
        .pool(Pool::new("p").concurrency(0))
        .build()
        .is_err());
    assert_eq!(
        mgr.list_tasks(&TaskFilter::all()).len(),
        0,
        "nothing was created by refused calls"
    );
}

#[test]
fn dedup_key_returns_the_existing_task_until_it_is_deleted() {
    let (mgr, _clock) = manual(1);
    mgr.register("t", |_| Ok(json!(null).into())).unwrap();
    let a = mgr
        .submit_with("t", json!(1), SubmitOptions::new().dedup_key("k"))
        .unwrap();
    let b = mgr
        .submit_with("t", json!(2), SubmitOptions::new().dedup_key("k"))
        .unwrap();
    assert_eq!(a, b);
    assert_eq!(mgr.delete_tasks(&TaskFilter::all()).unwrap(), 1);
    let c = mgr
        .submit_with("t", json!(3), SubmitOptions::new().dedup_key("k"))
        .unwrap();
    assert_ne!(a, c);
}

#[test]
fn pause_task_discards_the_running_result_and_resume_runs_again() {
    let (mgr, _clock) = manual(1);
    let gate = Arc::new(std::sync::Barrier::new(2));
    let calls = Arc::new(AtomicUsize::new(0));
    let (g, c) = (gate.clone(), calls.clone());
    mgr.register("p", move |_| {
        if c.fetch_add(1, Ordering::SeqCst) == 0 {
            g.wait();
            return Ok(json!("first").into());
        }
        Ok(json!("second").into())
    })
    .unwrap();
    mgr.start().unwrap();
    let id = mgr.submit("p", json!(null)).unwrap();
    eventually("running", || {
        mgr.get_task(id).unwrap().status == TaskStatus::Running
    });
    mgr.pause_task(id).unwrap();
    gate.wait();
    let t = mgr.wait(id, PATIENCE).unwrap();
    assert_eq!(t.status, TaskStatus::Paused);
    assert_eq!(
        mgr.attempts(id).unwrap()[0].outcome,
        Some(AttemptOutcome::Paused)
    );
    assert!(
        mgr.cancel_task(id, None).is_err(),
        "cancel works only on suspended tasks"
    );
    mgr.resume_task(id, None).unwrap();
    eventually("second run", || {
        mgr.get_task(id).unwrap().status == TaskStatus::Completed
    });
    assert_eq!(mgr.get_task(id).unwrap().result, Some(json!("second")));
}

#[test]
fn global_limit_caps_running_tasks() {
    let (mgr, _clock) = manual(3);
    let running = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let (r, p) = (running.clone(), peak.clone());
    mgr.register("w", move |_| {
        let now = r.fetch_add(1, Ordering::SeqCst) + 1;
        p.fetch_max(now, Ordering::SeqCst);
        for _ in 0..2000 {
            std::thread::yield_now();
        }
        r.fetch_sub(1, Ordering::SeqCst);
        Ok(json!(null).into())
    })
    .unwrap();
    mgr.start().unwrap();
    let ids: Vec<_> = (0..30)
        .map(|_| mgr.submit("w", json!(null)).unwrap())
        .collect();
    for id in ids {
        mgr.wait(id, PATIENCE).unwrap();
    }
    assert!(peak.load(Ordering::SeqCst) <= 3);
}

#[test]
fn async_handler_completes_and_is_cancelled_at_await_on_timeout() {
    let (mgr, clock) = manual(2);
    mgr.register_async("double", |ctx| async move {
        let n = ctx.payload()["n"].as_i64().unwrap_or(0);
        tokio::task::yield_now().await;
        Ok(json!(n * 2).into())
    })
    .unwrap();
    mgr.register_async_with(
        "never",
        HandlerOptions::new()
            .timeout(Duration::from_secs(1))
            .max_retries(1),
        |_ctx| async move {
            std::future::pending::<()>().await;
            Ok(json!(null).into())
        },
    )
    .unwrap();
    mgr.start().unwrap();
    let id = mgr.submit("double", json!({"n": 21})).unwrap();
    assert_eq!(mgr.wait(id, PATIENCE).unwrap().result, Some(json!(42)));
    let stuck = mgr.submit("never", json!(null)).unwrap();
    eventually("running", || {
        mgr.get_task(stuck).unwrap().status == TaskStatus::Running
    });
    clock.advance(Duration::from_secs(2));
    let t = mgr.wait(stuck, PATIENCE).unwrap();
    assert_eq!(t.status, TaskStatus::PermanentlyFailed);
    // Workers free their slots just after they record an outcome: wait for it.
    eventually("both workers are free", || mgr.running() == 0);
}

#[test]
fn stop_is_graceful_and_start_twice_is_harmless() {
    let (mgr, _clock) = manual(1);
    mgr.register("t", |_| Ok(json!(null).into())).unwrap();
    mgr.start().unwrap();
    mgr.start().unwrap();
    let id = mgr.submit("t", json!(null)).unwrap();
    mgr.wait(id, PATIENCE).unwrap();
    let report = mgr.stop(Duration::from_secs(30)).unwrap();
    assert!(report.interrupted.is_empty());
    assert!(matches!(mgr.submit("t", json!(null)), Err(Error::Stopped)));
}

#[test]
fn queries_filter_and_page() {
    let (mgr, _clock) = manual(1);
    mgr.register("a", |_| Ok(json!(null).into())).unwrap();
    mgr.register("b", |_| Ok(json!(null).into())).unwrap();
    for i in 0..7 {
        mgr.submit_with("a", json!(i), SubmitOptions::new().tag("x"))
            .unwrap();
    }
    for i in 0..3 {
        mgr.submit_with("b", json!(i), SubmitOptions::new().tag("y"))
            .unwrap();
    }
    let f = TaskFilter::all()
        .name("a")
        .tag("x")
        .status(TaskStatus::Pending);
    let page = mgr.query_tasks(
        &f,
        fibflow::Page {
            limit: 5,
            offset: 5,
            descending: false,
        },
    );
    assert_eq!(page.total, 7);
    assert_eq!(page.items.len(), 2);
    assert!(!page.has_more);
    let counts = mgr.count_by_status();
    assert_eq!(counts[&TaskStatus::Pending], 10);
    assert_eq!(counts[&TaskStatus::Completed], 0);
    let listed = mgr.list_tasks(&TaskFilter::all());
    let ids: Vec<_> = listed.iter().map(|t| t.id).collect();
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(ids, sorted, "ascending by (created_at, id)");
}

/// A program using tokio itself may build, use and drop a manager inside an async
/// context; dropping the manager's own runtime there must not panic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manager_can_be_used_and_dropped_inside_an_async_context() {
    let mgr = TaskManager::builder().memory().build().unwrap();
    mgr.register_async("a", |ctx| async move { Ok(ctx.payload().clone().into()) })
        .unwrap();
    mgr.start().unwrap();
    let id = mgr.submit("a", json!(5)).unwrap();
    let t = tokio::task::block_in_place(|| mgr.wait(id, PATIENCE)).unwrap();
    assert_eq!(t.result, Some(json!(5)));
    tokio::task::block_in_place(|| mgr.stop(PATIENCE)).unwrap();
    drop(mgr);
}

#[test]
fn a_pools_retry_strategy_and_max_attempts_apply_to_the_tasks_it_serves() {
    let clock = fibflow::ManualClock::new(1_700_000_000_000);
    let strategy = fibflow::RetryStrategy {
        backoff: fibflow::Backoff::Exponential,
        base: Duration::from_secs(1),
        cap: Some(Duration::from_secs(10)),
        jitter: 0.0,
    };
    let mgr = TaskManager::builder()
        .memory()
        .clock(clock.clone())
        .pool(
            Pool::new("gpu")
                .tags(["gpu"])
                .concurrency(1)
                .retry_strategy(strategy)
                .max_attempts(3),
        )
        .build()
        .unwrap();
    mgr.register_with("render", HandlerOptions::new().requires(["gpu"]), |_| {
        Err("no".into())
    })
    .unwrap();
    mgr.start().unwrap();
    let id = mgr.submit("render", json!(null)).unwrap();
    assert_eq!(
        mgr.get_task(id).unwrap().max_retries,
        3,
        "the pool's max attempts"
    );
    let t0 = fibflow::Clock::now_ms(&*clock);
    let failed_with_retry_at = |at: u64| {
        let t = mgr.get_task(id).unwrap();
        t.status == TaskStatus::Failed && t.next_run_time == at
    };
    eventually("first failure, retry after the base delay", || {
        failed_with_retry_at(t0 + 1_000)
    });
    clock.advance(Duration::from_secs(1));
    eventually("second failure, retry after twice the delay", || {
        failed_with_retry_at(t0 + 1_000 + 2_000)
    });
    assert_eq!(mgr.get_task(id).unwrap().retry_count, 1);
    clock.advance(Duration::from_secs(2));
    let t = mgr.wait(id, PATIENCE).unwrap();
    assert_eq!(t.status, TaskStatus::PermanentlyFailed);
    assert_eq!(mgr.attempts(id).unwrap().len(), 3);
}

#[test]
fn a_task_waiting_for_its_retry_can_be_paused_and_resumed() {
    let (mgr, clock) = manual(1);
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    mgr.register_with(
        "flaky",
        HandlerOptions::new().retry_interval(Duration::from_secs(60)),
        move |_| {
            if c.fetch_add(1, Ordering::SeqCst) == 0 {
                Err("first".into())
            } else {
                Ok(json!("ok").into())
            }
        },
    )
    .unwrap();
    mgr.start().unwrap();
    let id = mgr.submit("flaky", json!(null)).unwrap();
    eventually("failed, retry pending", || {
        mgr.get_task(id).unwrap().status == TaskStatus::Failed
    });
    mgr.pause_task(id).unwrap();
    assert_eq!(mgr.get_task(id).unwrap().status, TaskStatus::Paused);
    // The retry comes due while the task is paused; the engine refuses it
    // (only failed/timeout tasks retry), which the event history shows below.
    clock.advance(Duration::from_secs(120));
    mgr.resume_task(id, None).unwrap();
    let t = mgr.wait(id, PATIENCE).unwrap();
    assert_eq!(t.status, TaskStatus::Completed);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    let names = event_names(&mgr, id);
    assert!(
        !names.contains(&"task_retry_scheduled"),
        "a paused task was retried: {names:?}"
    );
    assert_eq!(t.retry_count, 0, "resume reset the retry count");
}

#[test]
fn a_task_waiting_for_its_retry_can_be_resumed_now_or_cancelled() {
    let (mgr, _clock) = manual(1);
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    mgr.register_with(
        "flaky",
        HandlerOptions::new().retry_interval(Duration::from_secs(600)),
        move |ctx| {
            c.fetch_add(1, Ordering::SeqCst);
            if ctx.payload()["fail_once"] == true && ctx.retry_count() == 0 && ctx.attempt() == 1 {
                Err("first".into())
            } else if ctx.payload()["always"] == true {
                Err("always".into())
            } else {
                Ok(json!("ok").into())
            }
        },
    )
    .unwrap();
    mgr.start().unwrap();
    let a = mgr.submit("flaky", json!({"fail_once": true})).unwrap();
    let b = mgr.submit("flaky", json!({"always": true})).unwrap();
    for id in [a, b] {
        eventually("failed, waiting for the retry", || {
            mgr.get_task(id).unwrap().status == TaskStatus::Failed
        });
    }
    mgr.resume_task(a, None).unwrap();
    let t = mgr.wait(a, PATIENCE).unwrap();
    assert_eq!(
        t.status,
        TaskStatus::Completed,
        "resumed at once, not after 10 minutes"
    );
    assert_eq!(t.retry_count, 0);
    mgr.cancel_task(b, Some("gave up")).unwrap();
    let t = mgr.wait(b, PATIENCE).unwrap();
    assert_eq!(t.status, TaskStatus::PermanentlyFailed);
    assert_eq!(t.error.as_deref(), Some("gave up"));
}

/// A worker reuses its last attempt's context only when nothing else holds
/// it: a context a handler kept still names its own task and payload after
/// the same worker ran other tasks (whose contexts it did reuse).
#[test]
fn a_context_a_handler_keeps_is_never_reused_for_another_task() {
    let (mgr, _clock) = manual(1);
    let kept: Arc<Mutex<Vec<fibflow::TaskContext>>> = Arc::default();
    let k = kept.clone();
    mgr.register("keep_even", move |ctx| {
        if ctx.payload()["i"].as_u64().is_some_and(|i| i % 2 == 0) {
            k.lock().unwrap().push(ctx.clone());
        }
        Ok(ctx.payload().clone().into())
    })
    .unwrap();
    // Queued before start, so the one worker runs them back to back.
    let ids = mgr
        .submit_batch((0..8u64).map(|i| ("keep_even", json!({ "i": i }), SubmitOptions::new())))
        .unwrap();
    mgr.start().unwrap();
    for id in &ids {
        assert_eq!(
            mgr.wait(*id, PATIENCE).unwrap().status,
            TaskStatus::Completed
        );
    }
    let kept = kept.lock().unwrap();
    let mut seen: Vec<u64> = kept
        .iter()
        .map(|c| c.payload()["i"].as_u64().unwrap())
        .collect();
    seen.sort_unstable();
    assert_eq!(
        seen,
        [0, 2, 4, 6],
        "each kept context still holds its own payload"
    );
    for ctx in kept.iter() {
        let i = ctx.payload()["i"].as_u64().unwrap();
        assert_eq!(ctx.id(), ids[usize::try_from(i).unwrap()], "task {i}");
        assert_eq!(ctx.name(), "keep_even");
    }
    mgr.stop(PATIENCE).unwrap();
}
