//! Ports of the fib-flow tests (test/*.js in fibjs/fib-flow) that neither
//! `fibflow_port.rs` nor `fibflow_port_more.rs` had ported: one Rust test per
//! fib-flow test, named after it, with its file and title in a comment. The
//! conventions are those of the other port files: `use` is `register`, `async`
//! is `submit`, seconds become milliseconds, the manager runs on a manual clock
//! and conditions are awaited, never slept for.
//!
//! The fib-flow tests left out are those that only make sense for a SQL
//! adapter, a connection pool, or several processes sharing one database
//! (worker registry rows, leases, peer recovery). Where a worker_recovery.test.js
//! test has a one-process meaning (task heartbeats keep a running attempt alive;
//! an idle manager keeps processing), it is ported in that form.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::fib::{events_of, fib_manager, ok, wait_status, SEC};
use common::{event_names, eventually, PATIENCE};
use fibflow::{AttemptOutcome, Clock, EventType, Handler, HandlerOptions, ManualClock, TaskStatus};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

fn now_ms(clock: &ManualClock) -> u64 {
    Clock::now_ms(clock)
}

// ---------------------------------------------------------------------------
// test/validator.test.js
// ---------------------------------------------------------------------------

// validator.test.js "should reject handler parameters schema configuration"
// and "... output schema configuration" are not ported: `HandlerOptions` has
// no schema field, so the rejection is the compiler's, and a runtime test of
// it could not fail.

/// validator.test.js "should reject schema configuration in bulk registration"
/// (a schema cannot be written in a bulk registration either; what bulk
/// registration does reject — here an invalid option — rejects the whole
/// batch with an error naming the handler, and registers none of it)
#[test]
fn should_reject_schema_configuration_in_bulk_registration() {
    let (mgr, _clock) = fib_manager(3);
    let bad = HandlerOptions::new().max_concurrent_tasks(0);
    let err = mgr
        .register_many(vec![
            (
                "fineTask".to_owned(),
                Handler::sync(|_| ok()),
                HandlerOptions::new(),
            ),
            ("bulkSchemaTask".to_owned(), Handler::sync(|_| ok()), bad),
        ])
        .unwrap_err();
    assert!(err.to_string().contains("bulkSchemaTask"), "{err}");
    assert!(mgr.task_info("fineTask").is_err());
    assert!(mgr.task_info("bulkSchemaTask").is_err());
    let err = mgr.submit("fineTask", json!({})).unwrap_err();
    assert!(
        err.to_string()
            .contains("No handler registered for task: fineTask"),
        "{err}"
    );
}

// ---------------------------------------------------------------------------
// test/worker_recovery.test.js (one-process forms)
// ---------------------------------------------------------------------------

/// worker_recovery.test.js "should not recover running tasks from a worker that
/// is still heartbeating" (one process: a long attempt that keeps heartbeating
/// within its 1 s heartbeat window while the clock runs 5 s is neither timed
/// out nor recovered, a handler registered for the same name meanwhile — the
/// "peer" — never runs it, and it completes with its one attempt)
#[test]
fn should_not_recover_running_tasks_from_a_worker_that_is_still_heartbeating() {
    let (mgr, clock) = fib_manager(3);
    let started = Arc::new(AtomicBool::new(false));
    let finish = Arc::new(AtomicBool::new(false));
    let beat = Arc::new(AtomicU64::new(0));
    let (started2, finish2, beat2, clock2) =
        (started.clone(), finish.clone(), beat.clone(), clock.clone());
    mgr.register_with(
        "healthy_long_task",
        HandlerOptions::new().heartbeat_window(SEC),
        move |ctx| {
            started2.store(true, Ordering::SeqCst);
            loop {
                // Read before the heartbeat, so `beat` is no later than the time
                // it records: the test moves the clock on once it sees `beat`.
                let at = now_ms(&clock2);
                ctx.heartbeat();
                beat2.store(at, Ordering::SeqCst);
                if let Err(e) = ctx.check() {
                    return Err(e.into());
                }
                if finish2.load(Ordering::SeqCst) {
                    return Ok(json!({ "owner": "worker-live" }).into());
                }
                std::thread::park_timeout(Duration::from_millis(1));
            }
        },
    )
    .unwrap();
    mgr.start().unwrap();
    let id = mgr.submit("healthy_long_task", Value::Null).unwrap();
    let running = wait_status(&mgr, id, TaskStatus::Running);
    eventually("the handler started", || started.load(Ordering::SeqCst));
    let owner = running.worker.clone().expect("a running task has a worker");

    // The "peer": another handler for the same name, registered mid-run.
    let peer_runs = Arc::new(AtomicUsize::new(0));
    let peer_runs2 = peer_runs.clone();
    mgr.register("healthy_long_task", move |_| {
        peer_runs2.fetch_add(1, Ordering::SeqCst);
        Ok(json!({ "owner": "worker-peer-live" }).into())
    })
    .unwrap();

    for _ in 0..10 {
        clock.advance(Duration::from_millis(500));
        let now = now_ms(&clock);
        eventually("the handler heartbeats at the new time", || {
            beat.load(Ordering::SeqCst) >= now
        });
        let mid = mgr.get_task(id).unwrap();
        assert_eq!(mid.status, TaskStatus::Running, "{mid:?}");
        assert_eq!(mid.worker.as_ref(), Some(&owner));
    }
    assert!(events_of(&mgr, id, EventType::Recovered).is_empty());
    assert!(events_of(&mgr, id, EventType::TimedOut).is_empty());
    assert_eq!(peer_runs.load(Ordering::SeqCst), 0);

    finish.store(true, Ordering::SeqCst);
    let done = mgr.wait(id, PATIENCE).unwrap();
    assert_eq!(done.status, TaskStatus::Completed);
    assert_eq!(done.result, Some(json!({ "owner": "worker-live" })));
    assert_eq!(done.worker.as_ref(), Some(&owner));
    assert!(events_of(&mgr, id, EventType::Recovered).is_empty());
    assert_eq!(peer_runs.load(Ordering::SeqCst), 0);
    let attempts = mgr.attempts(id).unwrap();
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0].worker, owner);
    assert_eq!(attempts[0].outcome, Some(AttemptOutcome::Completed));
}

/// worker_recovery.test.js "should not lose its active lease when idling without
/// tasks" (one process: a started manager with no handlers idles through many
/// heartbeat windows — well past SPEC's 30 s default window — and then still
/// claims and runs new work normally, twice, with nothing recovered or timed out)
#[test]
fn should_not_lose_its_active_lease_when_idling_without_tasks() {
    let (mgr, clock) = fib_manager(3);
    mgr.start().unwrap();
    let idle = |steps: usize| {
        for _ in 0..steps {
            clock.advance(Duration::from_secs(15));
            assert_eq!(mgr.running(), 0);
        }
    };
    idle(40);
    let runs = Arc::new(AtomicUsize::new(0));
    let r = runs.clone();
    mgr.register_with(
        "idle_task",
        HandlerOptions::new().heartbeat_window(Duration::from_millis(300)),
        move |_| {
            r.fetch_add(1, Ordering::SeqCst);
            Ok(json!({ "handled": true }).into())
        },
    )
    .unwrap();
    let first = mgr.submit("idle_task", Value::Null).unwrap();
    let t = mgr.wait(first, PATIENCE).unwrap();
    assert_eq!(t.status, TaskStatus::Completed);
    assert_eq!(t.result, Some(json!({ "handled": true })));
    // Its worker frees its slot just after it records the completion.
    eventually("the worker is free", || mgr.running() == 0);
    idle(40);
    let second = mgr.submit("idle_task", Value::Null).unwrap();
    let t2 = mgr.wait(second, PATIENCE).unwrap();
    assert_eq!(t2.status, TaskStatus::Completed);
    assert_eq!(runs.load(Ordering::SeqCst), 2);
    for id in [first, second] {
        assert_eq!(
            event_names(&mgr, id),
            [
                "task_created",
                "task_claimed",
                "task_started",
                "task_completed"
            ]
        );
        let a = mgr.attempts(id).unwrap();
        assert_eq!(a.len(), 1);
        assert_eq!(a[0].outcome, Some(AttemptOutcome::Completed));
    }
    assert_eq!(mgr.get_task(first).unwrap().status, TaskStatus::Completed);
}
