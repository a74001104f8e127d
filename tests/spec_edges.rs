//! SPEC edges (black box): timeouts that free slots and keep their strategy, hot
//! reload and unregister mid-run, wait on every terminal status, dedup keys, stop
//! past its deadline, extreme values. One SPEC rule per test.

mod common;

use common::fib::status_of;
use common::{eventually, manual, Gate, PATIENCE};
use fibflow::{
    AttemptOutcome, Clock, Error, EventType, HandlerOptions, Outcome, Page, RetryStrategy,
    SubmitOptions, TaskFilter, TaskId, TaskManager, TaskStatus,
};
use serde_json::json;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

// ---------------------------------------------------------------- limits

/// SPEC §3: "slots free on success, failure, suspension and pause". A timeout is a
/// failed attempt: its handler slot frees when the attempt times out, as it does
/// when the task is paused, even if the (sync) handler runs on. (Session 15
/// found it held until the handler returned.) `limit` adds the timeout kind
/// to a handler capped at one attempt at a time.
fn a_timeout_frees_the_handler_slot(limit: HandlerOptions) {
    let (mgr, clock) = manual(4);
    let gate = Gate::new();
    let opener = gate.clone();
    let options = limit.max_concurrent_tasks(1).max_retries(1);
    mgr.register_with("capped", options, move |ctx| {
        if ctx.payload()["block"] == json!(true) {
            opener.wait();
        }
        Ok(json!("ok").into())
    })
    .unwrap();
    mgr.start().unwrap();
    let blocked = mgr.submit("capped", json!({"block": true})).unwrap();
    eventually("the blocked one runs", || {
        status_of(&mgr, blocked) == TaskStatus::Running
    });
    let next = mgr.submit("capped", json!({"block": false})).unwrap();
    clock.advance(Duration::from_secs(2));
    eventually("the blocked one times out", || {
        status_of(&mgr, blocked) == TaskStatus::PermanentlyFailed
    });
    // Waited for with the gate shut: `next` can only finish if the slot is
    // free while the timed-out handler still blocks.
    let next_status = mgr.wait(next, Duration::from_secs(10)).map(|t| t.status);
    gate.open();
    mgr.wait(next, PATIENCE).unwrap();
    assert!(
        matches!(next_status, Ok(TaskStatus::Completed)),
        "the timed-out attempt kept its handler slot until its handler returned: {next_status:?}"
    );
}

#[test]
fn a_timed_out_attempt_frees_its_handler_slot_like_a_pause() {
    a_timeout_frees_the_handler_slot(HandlerOptions::new().timeout(Duration::from_secs(1)));
}

/// SPEC §3: a heartbeat timeout is a failure too: it frees the handler slot.
#[test]
fn a_heartbeat_timeout_frees_its_handler_slot() {
    a_timeout_frees_the_handler_slot(
        HandlerOptions::new().heartbeat_window(Duration::from_secs(1)),
    );
}

/// SPEC §3: slots free on failure: a capped handler whose tasks fail and are
/// retried runs all of them to their end, never more than its cap at once.
#[test]
fn a_capped_handler_frees_its_slot_on_failure_and_retries_all() {
    let (mgr, _clock) = manual(4);
    let now = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let (n, p) = (now.clone(), peak.clone());
    mgr.register_with(
        "flaky",
        HandlerOptions::new().max_concurrent_tasks(2).max_retries(3),
        move |ctx| {
            let c = n.fetch_add(1, Ordering::SeqCst) + 1;
            p.fetch_max(c, Ordering::SeqCst);
            // A little work, so that attempts overlap.
            std::thread::park_timeout(Duration::from_millis(2));
            n.fetch_sub(1, Ordering::SeqCst);
            if ctx.retry_count() < 2 {
                Err("boom".into())
            } else {
                Ok(json!(ctx.retry_count()).into())
            }
        },
    )
    .unwrap();
    let ids: Vec<_> = (0..8)
        .map(|i| mgr.submit("flaky", json!(i)).unwrap())
        .collect();
    mgr.start().unwrap();
    for id in &ids {
        let t = mgr.wait(*id, PATIENCE).unwrap();
        assert_eq!(t.status, TaskStatus::Completed);
        assert_eq!(t.retry_count, 2);
        assert_eq!(t.result, Some(json!(2)));
    }
    assert!(
        peak.load(Ordering::SeqCst) <= 2,
        "peak {}",
        peak.load(Ordering::SeqCst)
    );
    assert_eq!(mgr.running(), 0);
}

/// SPEC §3: slots free on suspension (explicit suspend); a resumed task takes one again.
#[test]
fn an_explicit_suspension_frees_the_handler_slot() {
    let (mgr, _clock) = manual(4);
    mgr.register_with(
        "approve",
        HandlerOptions::new().max_concurrent_tasks(1),
        |ctx| {
            if ctx.stage() == 0 {
                Ok(Outcome::suspend("needs approval"))
            } else {
                Ok(json!("approved").into())
            }
        },
    )
    .unwrap();
    mgr.start().unwrap();
    let ids: Vec<_> = (0..3)
        .map(|i| mgr.submit("approve", json!(i)).unwrap())
        .collect();
    for id in &ids {
        eventually("suspended", || {
            status_of(&mgr, *id) == TaskStatus::Suspended
        });
    }
    for id in &ids {
        mgr.resume_task(*id, Some("ok")).unwrap();
    }
    for id in &ids {
        assert_eq!(
            mgr.wait(*id, PATIENCE).unwrap().result,
            Some(json!("approved"))
        );
    }
}

// ---------------------------------------------------------------- wait

/// SPEC §5: wait returns on every terminal status; an unknown id and a deadline
/// are typed errors.
#[test]
fn wait_on_each_terminal_status_unknown_ids_and_deadlines() {
    let (mgr, _clock) = manual(2);
    mgr.register("ok", |_| Ok(json!("r").into())).unwrap();
    mgr.register_with("bad", HandlerOptions::new().max_retries(1), |_| {
        Err("it broke".into())
    })
    .unwrap();
    mgr.register("wait", |_| Ok(Outcome::suspend("human")))
        .unwrap();
    mgr.start().unwrap();
    let ok = mgr.submit("ok", json!(null)).unwrap();
    let bad = mgr.submit("bad", json!(null)).unwrap();
    let sus = mgr.submit("wait", json!(null)).unwrap();
    let t = mgr.wait(ok, PATIENCE).unwrap();
    assert_eq!(
        (t.status, t.result),
        (TaskStatus::Completed, Some(json!("r")))
    );
    let t = mgr.wait(bad, PATIENCE).unwrap();
    assert_eq!(t.status, TaskStatus::PermanentlyFailed);
    assert_eq!(t.error.as_deref(), Some("it broke"));
    eventually("suspended", || {
        status_of(&mgr, sus) == TaskStatus::Suspended
    });
    // suspended is not terminal: the deadline passes
    match mgr.wait(sus, Duration::from_millis(50)) {
        Err(Error::WaitTimeout { id, .. }) => assert_eq!(id, sus),
        other => panic!("{other:?}"),
    }
    match mgr.wait(sus, Duration::ZERO) {
        Err(Error::WaitTimeout { id, .. }) => assert_eq!(id, sus),
        other => panic!("{other:?}"),
    }
    // a delayed pending task paused from pending
    let later = mgr
        .submit_with(
            "ok",
            json!(null),
            SubmitOptions::new().delay(Duration::from_secs(60)),
        )
        .unwrap();
    mgr.pause_task(later).unwrap();
    assert_eq!(
        mgr.wait(later, PATIENCE).unwrap().status,
        TaskStatus::Paused
    );
    // cancel → permanently_failed, from another thread while waiting
    std::thread::scope(|s| {
        let h = s.spawn(|| mgr.wait(sus, PATIENCE));
        mgr.cancel_task(sus, Some("no")).unwrap();
        let t = h.join().unwrap().unwrap();
        assert_eq!(t.status, TaskStatus::PermanentlyFailed);
        assert_eq!(t.error.as_deref(), Some("no"));
    });
    let unknown = TaskId(u64::MAX);
    assert!(matches!(mgr.wait(unknown, PATIENCE), Err(Error::NotFound(id)) if id == unknown));
}

// ---------------------------------------------------------------- dedup

/// Dedup inside one submit_batch, and against an existing task; after delete the key is free.
#[test]
fn dedup_inside_a_batch_and_after_delete() {
    let (mgr, _clock) = manual(1);
    mgr.register("t", |_| Ok(json!(null).into())).unwrap();
    let ids = mgr
        .submit_batch(vec![
            ("t", json!(1), SubmitOptions::new().dedup_key("k")),
            ("t", json!(2), SubmitOptions::new().dedup_key("k")),
            ("t", json!(3), SubmitOptions::new().dedup_key("other")),
        ])
        .unwrap();
    assert_eq!(ids[0], ids[1]);
    assert_ne!(ids[0], ids[2]);
    assert_eq!(mgr.list_tasks(&TaskFilter::all()).len(), 2);
    assert_eq!(mgr.get_task(ids[0]).unwrap().payload, json!(1));
    let again = mgr
        .submit_with("t", json!(9), SubmitOptions::new().dedup_key("k"))
        .unwrap();
    assert_eq!(again, ids[0]);
    // a batch that is refused (second item unregistered) does not take the key
    assert!(mgr
        .submit_batch(vec![
            ("t", json!(1), SubmitOptions::new().dedup_key("fresh")),
            ("nope", json!(2), SubmitOptions::new()),
        ])
        .is_err());
    let fresh = mgr
        .submit_with("t", json!(5), SubmitOptions::new().dedup_key("fresh"))
        .unwrap();
    assert_eq!(mgr.get_task(fresh).unwrap().payload, json!(5));
    // delete frees the key
    assert_eq!(mgr.delete_tasks(&TaskFilter::all().name("t")).unwrap(), 3);
    let new = mgr
        .submit_with("t", json!(7), SubmitOptions::new().dedup_key("k"))
        .unwrap();
    assert!(new > ids[2]);
    assert_eq!(mgr.get_task(new).unwrap().payload, json!(7));
}

// ---------------------------------------------------------------- registration

/// SPEC §8: unregister returns how many were removed; pending tasks stay pending,
/// later submissions fail with the exact message, the in-flight run finishes, and
/// registering again runs the pending ones.
#[test]
fn unregister_while_tasks_are_pending_and_running() {
    let (mgr, _clock) = manual(1);
    let gate = Gate::new();
    let g = gate.clone();
    mgr.register("job", move |ctx| {
        if ctx.payload() == &json!("first") {
            g.wait();
        }
        Ok(json!("old").into())
    })
    .unwrap();
    mgr.register("other", |_| Ok(json!(null).into())).unwrap();
    mgr.start().unwrap();
    let first = mgr.submit("job", json!("first")).unwrap();
    eventually("first runs", || {
        status_of(&mgr, first) == TaskStatus::Running
    });
    let queued = mgr.submit("job", json!("second")).unwrap();
    assert_eq!(mgr.unregister(&["job", "job", "missing"]), 1);
    assert_eq!(mgr.handler_names(), vec!["other".to_string()]);
    let err = mgr.submit("job", json!(null)).unwrap_err();
    assert_eq!(err.to_string(), "No handler registered for task: job");
    assert!(matches!(err, Error::NoHandler(ref n) if n == "job"));
    let err = mgr
        .submit_batch(vec![("job", json!(null), SubmitOptions::new())])
        .unwrap_err();
    assert_eq!(err.to_string(), "No handler registered for task: job");
    gate.open();
    let t = mgr.wait(first, PATIENCE).unwrap();
    assert_eq!(t.result, Some(json!("old")), "in-flight run finishes");
    // the queued task is not lost; it waits and says why
    let other = mgr.submit("other", json!(null)).unwrap();
    mgr.wait(other, PATIENCE).unwrap();
    assert_eq!(status_of(&mgr, queued), TaskStatus::Pending);
    assert_eq!(
        mgr.waiting_reason(queued).unwrap().as_deref(),
        Some("No handler registered for task: job")
    );
    assert!(matches!(mgr.task_info("job"), Err(Error::NotRegistered(_))));
    mgr.register("job", |_| Ok(json!("new").into())).unwrap();
    assert_eq!(
        mgr.wait(queued, PATIENCE).unwrap().result,
        Some(json!("new"))
    );
}

/// SPEC §8: register_many registers all; a later register of the same name
/// replaces; unregister many counts only the registered names.
#[test]
fn register_many_and_unregister_many_counts() {
    let (mgr, _clock) = manual(1);
    let items = (0..5)
        .map(|i| {
            (
                format!("h{i}"),
                fibflow::Handler::sync(move |_| Ok(json!(i).into())),
                HandlerOptions::new().description(format!("handler {i}")),
            )
        })
        .collect();
    mgr.register_many(items).unwrap();
    assert_eq!(mgr.handler_names().len(), 5);
    assert_eq!(
        mgr.task_info("h3").unwrap().description.as_deref(),
        Some("handler 3")
    );
    assert_eq!(mgr.unregister(&["h0", "h1", "zz", "h1"]), 2);
    assert_eq!(mgr.unregister(&[]), 0);
    assert_eq!(mgr.handler_names(), vec!["h2", "h3", "h4"]);
    // a batch with a bad item registers none
    let bad = vec![
        (
            "good".to_string(),
            fibflow::Handler::sync(|_| Ok(json!(null).into())),
            HandlerOptions::new(),
        ),
        (
            "  ".to_string(),
            fibflow::Handler::sync(|_| Ok(json!(null).into())),
            HandlerOptions::new(),
        ),
    ];
    assert!(matches!(mgr.register_many(bad), Err(Error::EmptyName)));
    assert!(mgr.task_info("good").is_err());
}

/// SPEC §8: re-registering while an attempt runs: the running attempt keeps its
/// handler; the retry of that same task runs the new one.
#[test]
fn a_re_registration_during_a_failing_attempt_is_used_by_its_retry() {
    let (mgr, _clock) = manual(1);
    let gate = Gate::new();
    let g = gate.clone();
    mgr.register_with("h", HandlerOptions::new().max_retries(2), move |_| {
        g.wait();
        Err("old handler failed".into())
    })
    .unwrap();
    mgr.start().unwrap();
    let id = mgr.submit("h", json!(null)).unwrap();
    eventually("running", || status_of(&mgr, id) == TaskStatus::Running);
    mgr.register_with("h", HandlerOptions::new().max_retries(2), |ctx| {
        Ok(json!({"new": ctx.retry_count()}).into())
    })
    .unwrap();
    gate.open();
    let t = mgr.wait(id, PATIENCE).unwrap();
    assert_eq!(t.status, TaskStatus::Completed);
    assert_eq!(t.result, Some(json!({"new": 1})));
    assert_eq!(
        t.error.as_deref(),
        Some("old handler failed"),
        "last error kept"
    );
}

// ---------------------------------------------------------------- manager pause / stop

/// SPEC §3: pause() gates new claims only; running handlers carry on; submission works.
#[test]
fn manager_pause_with_running_and_queued_tasks() {
    let (mgr, _clock) = manual(1);
    let gate = Gate::new();
    let opener = gate.clone();
    let order = Arc::new(Mutex::new(Vec::new()));
    let seen = order.clone();
    mgr.register("h", move |ctx| {
        seen.lock().unwrap().push(ctx.payload().clone());
        if ctx.payload() == &json!(0) {
            opener.wait();
        }
        Ok(json!(null).into())
    })
    .unwrap();
    mgr.start().unwrap();
    let first = mgr.submit("h", json!(0)).unwrap();
    eventually("the first runs", || {
        status_of(&mgr, first) == TaskStatus::Running
    });
    let second = mgr.submit("h", json!(1)).unwrap();
    mgr.pause();
    let urgent = mgr
        .submit_with("h", json!(2), SubmitOptions::new().priority(5))
        .unwrap();
    gate.open();
    mgr.wait(first, PATIENCE).unwrap();
    assert_eq!(
        mgr.waiting_reason(second).unwrap().as_deref(),
        Some("the manager is paused")
    );
    assert_eq!(status_of(&mgr, second), TaskStatus::Pending);
    assert_eq!(status_of(&mgr, urgent), TaskStatus::Pending);
    mgr.resume();
    mgr.wait(second, PATIENCE).unwrap();
    mgr.wait(urgent, PATIENCE).unwrap();
    assert_eq!(*order.lock().unwrap(), vec![json!(0), json!(2), json!(1)]);
}

/// SPEC §13: stop(deadline) with a handler that outlives it: reported as
/// interrupted, its attempt closed `interrupted`, the task `pending`, and the
/// late result discarded.
#[test]
fn stop_with_a_handler_outliving_the_deadline() {
    let (mgr, _clock) = manual(2);
    let gate = Gate::new();
    let g = gate.clone();
    let returned = Arc::new(AtomicUsize::new(0));
    let r = returned.clone();
    mgr.register("slow", move |_| {
        g.wait();
        r.fetch_add(1, Ordering::SeqCst);
        Ok(json!("late").into())
    })
    .unwrap();
    mgr.register("fast", |_| Ok(json!("fast").into())).unwrap();
    mgr.start().unwrap();
    let slow = mgr.submit("slow", json!(null)).unwrap();
    let fast = mgr.submit("fast", json!(null)).unwrap();
    eventually("slow runs", || status_of(&mgr, slow) == TaskStatus::Running);
    mgr.wait(fast, PATIENCE).unwrap();
    let report = mgr.stop(Duration::from_millis(100)).unwrap();
    assert_eq!(report.interrupted, vec![slow]);
    gate.open();
    eventually("handler returned", || returned.load(Ordering::SeqCst) == 1);
    // Its worker let go of its slot: the late result was seen (and dropped).
    eventually("late result handled", || mgr.running() == 0);
    let t = mgr.get_task(slow).unwrap();
    assert_eq!(t.status, TaskStatus::Pending);
    assert_eq!(t.result, None);
    let at = mgr.attempts(slow).unwrap();
    assert_eq!(at.len(), 1);
    assert_eq!(at[0].outcome, Some(AttemptOutcome::Interrupted));
    assert!(at[0].ended_at.is_some());
    assert!(matches!(
        mgr.submit("fast", json!(null)),
        Err(Error::Stopped)
    ));
    // stop twice is harmless
    assert_eq!(mgr.stop(Duration::ZERO).unwrap().interrupted, vec![]);
}

// ---------------------------------------------------------------- ordering / extremes

/// SPEC §3 order: priority desc (extremes included), then next_run_time, then id.
#[test]
fn extreme_priorities_run_in_order() {
    let (mgr, _clock) = manual(1);
    let order = Arc::new(Mutex::new(Vec::new()));
    let o = order.clone();
    mgr.register("h", move |ctx| {
        o.lock().unwrap().push(ctx.payload().clone());
        Ok(json!(null).into())
    })
    .unwrap();
    let ps = [0, i32::MIN, i32::MAX, -1, 1, i32::MAX, i32::MIN + 1];
    let ids: Vec<_> = ps
        .iter()
        .enumerate()
        .map(|(i, p)| {
            mgr.submit_with("h", json!(i), SubmitOptions::new().priority(*p))
                .unwrap()
        })
        .collect();
    mgr.start().unwrap();
    for id in &ids {
        mgr.wait(*id, PATIENCE).unwrap();
    }
    assert_eq!(
        *order.lock().unwrap(),
        vec![
            json!(2),
            json!(5),
            json!(4),
            json!(0),
            json!(3),
            json!(6),
            json!(1)
        ]
    );
}

/// Huge max_retries: a failing task retries; exhaustion never arrives early.
#[test]
fn u32_max_retries_keeps_retrying_without_overflow() {
    let (mgr, clock) = manual(1);
    mgr.register_with(
        "h",
        HandlerOptions::new()
            .max_retries(u32::MAX)
            .retry_interval(Duration::from_secs(1)),
        |ctx| {
            if ctx.retry_count() < 3 {
                Err("again".into())
            } else {
                Ok(json!(ctx.retry_count()).into())
            }
        },
    )
    .unwrap();
    mgr.start().unwrap();
    let id = mgr.submit("h", json!(null)).unwrap();
    for _ in 0..3 {
        eventually("failed", || status_of(&mgr, id) == TaskStatus::Failed);
        clock.advance(Duration::from_secs(1));
    }
    let t = mgr.wait(id, PATIENCE).unwrap();
    assert_eq!(t.result, Some(json!(3)));
}

/// Unicode names, empty payloads, zero durations.
#[test]
fn unicode_names_and_zero_durations() {
    let (mgr, clock) = manual(1);
    let name = "задача-🚀-任务";
    mgr.register(name, |ctx| Ok(json!(ctx.name()).into()))
        .unwrap();
    mgr.start().unwrap();
    let id = mgr
        .submit_with(
            name,
            json!(""),
            SubmitOptions::new()
                .delay(Duration::ZERO)
                .retry_interval(Duration::ZERO)
                .tag("тег 🏷"),
        )
        .unwrap();
    let t = mgr.wait(id, PATIENCE).unwrap();
    assert_eq!(t.result, Some(json!(name)));
    assert_eq!(
        mgr.query_tasks(&TaskFilter::all().tag("тег 🏷"), Page::default())
            .total,
        1
    );
    assert_eq!(
        mgr.query_tasks(&TaskFilter::all().name(name), Page::default())
            .total,
        1
    );
    // a timeout of zero: the task still runs to its end (0 = no time limit) or times out,
    // but never hangs or panics
    let z = mgr
        .submit_with(name, json!(1), SubmitOptions::new().timeout(Duration::ZERO))
        .unwrap();
    clock.advance(Duration::from_secs(1));
    let t = mgr.wait(z, PATIENCE).unwrap();
    assert!(matches!(
        t.status,
        TaskStatus::Completed | TaskStatus::PermanentlyFailed
    ));
}

// ---------------------------------------------------------------- async

/// SPEC §4: a retry of an async handler that timed out at an await, then a panic,
/// then success: errors are the timeout text and the panic message.
#[test]
fn async_timeout_then_panic_then_success() {
    let (mgr, clock) = manual(1);
    mgr.register_async_with(
        "a",
        HandlerOptions::new()
            .timeout(Duration::from_secs(1))
            .max_retries(3),
        |ctx| async move {
            match ctx.retry_count() {
                0 => {
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                    Ok(json!("never").into())
                }
                1 => panic!("async kaboom {}", 7),
                _ => Ok(json!("third").into()),
            }
        },
    )
    .unwrap();
    mgr.start().unwrap();
    let id = mgr.submit("a", json!(null)).unwrap();
    eventually("running", || status_of(&mgr, id) == TaskStatus::Running);
    clock.advance(Duration::from_secs(2));
    let t = mgr.wait(id, PATIENCE).unwrap();
    assert_eq!(t.status, TaskStatus::Completed);
    assert_eq!(t.result, Some(json!("third")));
    let at = mgr.attempts(id).unwrap();
    let outs: Vec<_> = at.iter().map(|a| a.outcome).collect();
    assert_eq!(
        outs,
        vec![
            Some(AttemptOutcome::Timeout),
            Some(AttemptOutcome::Failed),
            Some(AttemptOutcome::Completed)
        ]
    );
    assert_eq!(at[1].error.as_deref(), Some("async kaboom 7"));
    let ev = mgr.events(id).unwrap();
    assert!(ev
        .iter()
        .any(|e| e.event_type == EventType::TimedOut && e.metadata["timeout_type"] == "total"));
}

/// SPEC §6: pause_task of a running async task discards its late result; resume
/// runs it again with the latest handler.
#[test]
fn pause_task_of_an_async_task_then_resume() {
    let (mgr, _clock) = manual(2);
    let (tx, rx) = tokio::sync::watch::channel(false);
    let rx = Arc::new(rx);
    let r = rx.clone();
    mgr.register_async("a", move |_ctx| {
        let mut r = (*r).clone();
        async move {
            let _ = r.wait_for(|v| *v).await;
            Ok(json!("late").into())
        }
    })
    .unwrap();
    mgr.start().unwrap();
    let id = mgr.submit("a", json!(null)).unwrap();
    eventually("running", || status_of(&mgr, id) == TaskStatus::Running);
    mgr.pause_task(id).unwrap();
    assert_eq!(mgr.wait(id, PATIENCE).unwrap().status, TaskStatus::Paused);
    tx.send_replace(true);
    eventually("handler done", || mgr.running() == 0);
    let t = mgr.get_task(id).unwrap();
    assert_eq!(t.status, TaskStatus::Paused);
    assert_eq!(t.result, None);
    mgr.register_async("a", |_| async { Ok(json!("new").into()) })
        .unwrap();
    mgr.resume_task(id, None).unwrap();
    let t = mgr.wait(id, PATIENCE).unwrap();
    assert_eq!(t.result, Some(json!("new")));
    let outs: Vec<_> = mgr
        .attempts(id)
        .unwrap()
        .iter()
        .map(|a| a.outcome)
        .collect();
    assert_eq!(
        outs,
        vec![
            Some(AttemptOutcome::Paused),
            Some(AttemptOutcome::Completed)
        ]
    );
}

/// SPEC §4 heartbeat: heartbeats keep an attempt alive past its window; the total
/// timeout still applies.
#[test]
fn heartbeats_extend_the_window_but_not_the_total_timeout() {
    let (mgr, clock) = manual(1);
    let beats = Arc::new(AtomicUsize::new(0));
    let go = Arc::new(AtomicUsize::new(0));
    let (b, g) = (beats.clone(), go.clone());
    mgr.register_with(
        "hb",
        HandlerOptions::new()
            .heartbeat_window(Duration::from_secs(2))
            .timeout(Duration::from_secs(10))
            .max_retries(1),
        move |ctx| {
            loop {
                let want = g.load(Ordering::SeqCst);
                if want == usize::MAX {
                    break;
                }
                if b.load(Ordering::SeqCst) < want {
                    ctx.heartbeat();
                    b.fetch_add(1, Ordering::SeqCst);
                }
                if ctx.check().is_err() {
                    break;
                }
                std::thread::yield_now();
            }
            Ok(json!("done").into())
        },
    )
    .unwrap();
    mgr.start().unwrap();
    let id = mgr.submit("hb", json!(null)).unwrap();
    eventually("running", || status_of(&mgr, id) == TaskStatus::Running);
    for i in 1..=4 {
        clock.advance(Duration::from_millis(1500));
        go.store(i, Ordering::SeqCst);
        eventually("beat", || beats.load(Ordering::SeqCst) == i);
        assert_eq!(status_of(&mgr, id), TaskStatus::Running, "after beat {i}");
    }
    // 6 s so far; 4.5 s more passes the total timeout of 10 s (beats keep coming)
    for i in 5..=7 {
        clock.advance(Duration::from_millis(1500));
        go.store(i, Ordering::SeqCst);
        eventually("beat", || {
            beats.load(Ordering::SeqCst) == i || status_of(&mgr, id) != TaskStatus::Running
        });
    }
    let t = mgr.wait(id, PATIENCE).unwrap();
    go.store(usize::MAX, Ordering::SeqCst);
    assert_eq!(t.status, TaskStatus::PermanentlyFailed);
    let ev = mgr.events(id).unwrap();
    let timed = ev
        .iter()
        .find(|e| e.event_type == EventType::TimedOut)
        .unwrap();
    assert_eq!(timed.metadata["timeout_type"], "total");
}

/// SPEC §4/§8: the retry strategy a timed-out attempt's retry uses is the one of the
/// registration the attempt ran with, as for a failed attempt (SPEC §8: a running
/// attempt keeps the handler it started with; SPEC §3 options are copied at
/// registration). Session 15 found a timeout retried with the current one, or
/// (after an unregister) with none. Two attempts of a handler with a fixed
/// 100 s backoff run; `change` acts on the registration while they run; one
/// then times out and the other fails: both retries are due 100 s later.
fn a_timeout_keeps_the_attempts_strategy(change: impl FnOnce(&TaskManager)) {
    let (mgr, clock) = manual(2);
    let hang = Gate::new();
    let fail = Gate::new();
    let (h, f) = (hang.clone(), fail.clone());
    let old = HandlerOptions::new()
        .timeout(Duration::from_secs(5))
        .max_retries(3)
        .retry(RetryStrategy::fixed(Duration::from_secs(100)));
    mgr.register_with("h", old, move |ctx| {
        if ctx.payload() == &json!("fail") {
            f.wait();
            Err("fail".into())
        } else {
            h.wait();
            Ok(json!(null).into())
        }
    })
    .unwrap();
    mgr.start().unwrap();
    let t_out = mgr.submit("h", json!("hang")).unwrap();
    let t_fail = mgr
        .submit_with(
            "h",
            json!("fail"),
            SubmitOptions::new().timeout(Duration::from_secs(60)),
        )
        .unwrap();
    eventually("running", || {
        status_of(&mgr, t_out) == TaskStatus::Running
            && status_of(&mgr, t_fail) == TaskStatus::Running
    });
    change(&mgr);
    clock.advance(Duration::from_secs(6));
    let at = clock.now_ms();
    eventually("timed out", || {
        status_of(&mgr, t_out) != TaskStatus::Running
    });
    fail.open();
    eventually("failed", || status_of(&mgr, t_fail) == TaskStatus::Failed);
    hang.open();
    let t = mgr.get_task(t_out).unwrap();
    assert_eq!(t.status, TaskStatus::Timeout, "retried at once: {t:?}");
    let fail_delay = mgr.get_task(t_fail).unwrap().next_run_time - at;
    assert_eq!(
        fail_delay, 100_000,
        "failure uses the attempt's registration"
    );
    assert_eq!(
        t.next_run_time.saturating_sub(at),
        100_000,
        "the timeout's retry ignored the strategy of the registration the attempt ran with"
    );
}

#[test]
fn a_timeout_and_a_failure_after_a_re_registration_use_the_same_retry_strategy() {
    a_timeout_keeps_the_attempts_strategy(|mgr| {
        let new = HandlerOptions::new()
            .timeout(Duration::from_secs(5))
            .max_retries(3)
            .retry(RetryStrategy::fixed(Duration::from_secs(1)));
        mgr.register_with("h", new, |_| Ok(json!("new").into()))
            .unwrap();
    });
}

#[test]
fn a_timeout_of_an_attempt_whose_handler_was_unregistered_keeps_its_strategy() {
    a_timeout_keeps_the_attempts_strategy(|mgr| assert_eq!(mgr.unregister(&["h"]), 1));
}

// ---------------------------------------------------------------- more

fn durable(dir: &std::path::Path, clock: &Arc<fibflow::ManualClock>) -> TaskManager {
    common::build_unlocked(TaskManager::builder().dir(dir).clock(clock.clone())).unwrap()
}

/// Dedup keys across a reopen: a key freed by delete and taken again points at the
/// new task after the reopen; a key still held points at its task; compaction keeps both.
#[test]
fn dedup_keys_after_delete_reuse_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let clock = fibflow::ManualClock::new(1_700_000_000_000);
    let (a, b, c);
    {
        let mgr = durable(dir.path(), &clock);
        mgr.register("t", |_| Ok(json!(null).into())).unwrap();
        a = mgr
            .submit_with("t", json!("a"), SubmitOptions::new().dedup_key("k"))
            .unwrap();
        c = mgr
            .submit_with("t", json!("c"), SubmitOptions::new().dedup_key("keep"))
            .unwrap();
        assert_eq!(
            mgr.delete_tasks(&TaskFilter::all().status(TaskStatus::Pending).name("t"))
                .unwrap(),
            2
        );
        b = mgr
            .submit_with("t", json!("b"), SubmitOptions::new().dedup_key("k"))
            .unwrap();
        let c2 = mgr
            .submit_with("t", json!("c"), SubmitOptions::new().dedup_key("keep"))
            .unwrap();
        assert_ne!(c2, c);
        mgr.compact().unwrap();
        mgr.stop(Duration::from_secs(5)).unwrap();
    }
    let mgr = durable(dir.path(), &clock);
    mgr.register("t", |_| Ok(json!(null).into())).unwrap();
    assert!(mgr.get_task(a).is_none());
    let again = mgr
        .submit_with("t", json!("x"), SubmitOptions::new().dedup_key("k"))
        .unwrap();
    assert_eq!(again, b);
    assert_eq!(mgr.list_tasks(&TaskFilter::all()).len(), 2);
    mgr.stop(Duration::from_secs(5)).unwrap();
}

/// Control (passes): pausing the same blocked attempt frees the slot at once.
#[test]
fn control_pause_frees_the_slot_of_a_blocked_attempt() {
    let (mgr, _clock) = manual(4);
    let gate = Gate::new();
    let g = gate.clone();
    mgr.register_with(
        "capped",
        HandlerOptions::new().max_concurrent_tasks(1),
        move |ctx| {
            if ctx.payload()["block"] == json!(true) {
                g.wait();
            }
            Ok(json!("ok").into())
        },
    )
    .unwrap();
    mgr.start().unwrap();
    let a = mgr.submit("capped", json!({"block": true})).unwrap();
    eventually("a runs", || status_of(&mgr, a) == TaskStatus::Running);
    let b = mgr.submit("capped", json!({"block": false})).unwrap();
    mgr.pause_task(a).unwrap();
    eventually("b completes while a's handler blocks", || {
        status_of(&mgr, b) == TaskStatus::Completed
    });
    gate.open();
}

/// SPEC §13 (queries work before start; nothing says they stop after stop): after
/// `stop`, `wait` on a finished task of a durable manager returns it or a typed
/// error promptly, never hangs; get_task and queries still answer.
#[test]
fn wait_and_queries_after_stop_on_a_durable_directory() {
    let dir = tempfile::tempdir().unwrap();
    let clock = fibflow::ManualClock::new(1_700_000_000_000);
    let mgr = durable(dir.path(), &clock);
    mgr.register("t", |_| Ok(json!("r").into())).unwrap();
    mgr.start().unwrap();
    let id = mgr.submit("t", json!(null)).unwrap();
    mgr.wait(id, PATIENCE).unwrap();
    let pending = mgr
        .submit_with(
            "t",
            json!(null),
            SubmitOptions::new().delay(Duration::from_secs(60)),
        )
        .unwrap();
    mgr.stop(Duration::from_secs(5)).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::scope(|s| {
        s.spawn(|| {
            let r = mgr.wait(id, Duration::from_secs(5));
            let r2 = mgr.wait(pending, Duration::from_millis(100));
            tx.send((r.map(|t| t.status), r2.map(|t| t.status)))
                .unwrap();
        });
        let (r, r2) = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("wait hung after stop");
        assert!(
            matches!(r, Ok(TaskStatus::Completed) | Err(Error::Stopped)),
            "{r:?}"
        );
        assert!(r2.is_err(), "{r2:?}");
    });
    assert_eq!(mgr.get_task(id).unwrap().status, TaskStatus::Completed);
    assert_eq!(
        mgr.query_tasks(&TaskFilter::all(), Page::default()).total,
        2
    );
    // controls after stop are refused with a typed error and change nothing
    let r = mgr.pause_task(pending);
    assert!(r.is_err(), "{r:?}");
    assert_eq!(status_of(&mgr, pending), TaskStatus::Pending);
}
