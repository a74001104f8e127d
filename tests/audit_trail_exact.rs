//! Audit trail, exactly (SPEC §9 and the events named in §2–§7, §12): for each
//! transition, the event types per task in order, their from/to statuses,
//! stage, attempt, worker, root/parent ids, message and metadata keys, and the
//! task snapshot's last_event_type / last_event_time / last_active_time.
//! Where SPEC is silent about metadata, fib-flow's `lib/db/base.js` is the
//! reference.

mod common;

use common::fib::{status_of, wait_status, T0};
use common::{build_unlocked, eventually, within, Gate, Release, PATIENCE};
use fibflow::{
    AttemptOutcome, ChildSpec, ContextError, Event, EventFilter, EventType, HandlerOptions,
    ManualClock, Outcome, Page, Progress, SubmitOptions, TaskContext, TaskId, TaskManager,
    TaskStatus, TimeZone,
};
use serde_json::json;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use TaskStatus::{
    Completed, Failed, Paused, Pending, PermanentlyFailed, Running, Suspended, Timeout,
};

const SEC: Duration = Duration::from_secs(1);

/// A manager on a manual clock at T0 (UTC), `workers` workers, fib-flow-ish defaults.
fn mgr(workers: usize) -> (Arc<TaskManager>, Arc<ManualClock>) {
    let clock = ManualClock::new(T0);
    let mgr = TaskManager::builder()
        .memory()
        .clock(clock.clone())
        .time_zone(TimeZone::from_name("UTC").unwrap())
        .max_concurrent_tasks(workers)
        .build()
        .unwrap();
    (Arc::new(mgr), clock)
}

/// (type, from, to, stage, attempt) of one event.
type Shape = (
    &'static str,
    Option<TaskStatus>,
    Option<TaskStatus>,
    u32,
    Option<u32>,
);

fn shape(evs: &[Event]) -> Vec<Shape> {
    evs.iter()
        .map(|e| {
            (
                e.event_type.as_str(),
                e.from_status,
                e.to_status,
                e.stage,
                e.attempt,
            )
        })
        .collect()
}

/// The invariants every task's trail keeps, checked on a quiescent task;
/// returns its events.
fn trail(mgr: &TaskManager, id: TaskId) -> Vec<Event> {
    let t = mgr.get_task(id).unwrap();
    let evs = mgr.events(id).unwrap();
    let attempts = mgr.attempts(id).unwrap();
    assert!(!evs.is_empty());
    assert_eq!(
        evs[0].event_type,
        EventType::Created,
        "task {id} starts with task_created"
    );
    for (i, e) in evs.iter().enumerate() {
        assert_eq!(e.task_id, id);
        if i > 0 {
            let prev = &evs[i - 1];
            assert!(e.id > prev.id, "task {id}: ids strictly increase: {evs:#?}");
            assert!(
                e.time >= prev.time,
                "task {id}: event {} ({}) at {} is earlier than event {} ({}) at {}",
                e.id,
                e.event_type,
                e.time,
                prev.id,
                prev.event_type,
                prev.time
            );
        }
        assert_eq!(e.root_id, Some(t.root_id.unwrap_or(id)), "root id of {e:?}");
        assert_eq!(e.parent_id, t.parent_id, "parent id of {e:?}");
        match e.attempt {
            Some(n) => {
                let a = attempts.iter().find(|a| a.number == n).unwrap_or_else(|| {
                    panic!("event {e:?} names attempt {n} which does not exist")
                });
                assert_eq!(e.worker.as_deref(), Some(&*a.worker), "worker of {e:?}");
            }
            None => assert_eq!(
                e.worker, None,
                "an event without attempt has no worker: {e:?}"
            ),
        }
    }
    // Status changes form one chain from nothing to the task's status
    // (`task_subtasks_created` repeats the parent's change, as in fib-flow).
    let mut cur: Option<TaskStatus> = None;
    let mut last_change = None;
    for e in &evs {
        if e.event_type == EventType::SubtasksCreated {
            continue;
        }
        match e.to_status {
            Some(to) => {
                assert_eq!(e.from_status, cur, "task {id}: chain broken at {e:?}");
                cur = Some(to);
                last_change = Some(e.time);
            }
            None => assert_eq!(e.from_status, None, "{e:?}"),
        }
    }
    assert_eq!(
        cur,
        Some(t.status),
        "task {id}: last to_status is the status"
    );
    let last = evs.last().unwrap();
    assert_eq!(
        t.last_event_type,
        Some(last.event_type),
        "task {id} last_event_type"
    );
    assert_eq!(
        t.last_event_time,
        Some(last.time),
        "task {id} last_event_time"
    );
    assert_eq!(
        Some(t.last_active_time),
        last_change,
        "task {id}: last_active_time is the time of the last status change"
    );
    // Every claim opens the next attempt.
    let claims: Vec<u32> = evs
        .iter()
        .filter(|e| e.event_type == EventType::Claimed)
        .map(|e| e.attempt.unwrap())
        .collect();
    assert_eq!(claims, (1..=attempts.len() as u32).collect::<Vec<_>>());
    evs
}

/// Waits until no handler runs (a late handler's outcome was processed).
fn idle(mgr: &TaskManager) {
    eventually("no handler runs", || mgr.running() == 0);
}

fn all() -> Page {
    Page {
        limit: 1000,
        offset: 0,
        descending: false,
    }
}

// ---------------------------------------------------------------------------
// claim, start, complete
// ---------------------------------------------------------------------------

#[test]
fn plain_success_is_exactly_created_claimed_started_completed() {
    let (mgr, clock) = mgr(1);
    let gate = Gate::new();
    let g = gate.clone();
    mgr.register("plain", move |_| {
        g.wait();
        Ok(json!({"ok": true}).into())
    })
    .unwrap();
    let id = mgr
        .submit_with("plain", json!(null), SubmitOptions::new().tag("t1"))
        .unwrap();
    let t = mgr.get_task(id).unwrap();
    assert_eq!(t.last_event_type, Some(EventType::Created));
    assert_eq!(t.last_event_time, Some(T0));
    assert_eq!(t.last_active_time, T0);
    clock.advance(SEC);
    mgr.start().unwrap();
    wait_status(&mgr, id, Running);
    let t = mgr.get_task(id).unwrap();
    assert_eq!(t.last_event_type, Some(EventType::Started));
    assert_eq!(t.last_event_time, Some(T0 + 1000));
    assert_eq!(t.last_active_time, T0 + 1000);
    clock.advance(4 * SEC);
    gate.open();
    let t = mgr.wait(id, PATIENCE).unwrap();
    assert_eq!(t.status, Completed);
    let evs = trail(&mgr, id);
    assert_eq!(
        shape(&evs),
        [
            ("task_created", None, Some(Pending), 0, None),
            ("task_claimed", Some(Pending), Some(Running), 0, Some(1)),
            ("task_started", None, None, 0, Some(1)),
            ("task_completed", Some(Running), Some(Completed), 0, Some(1)),
        ]
    );
    let times: Vec<u64> = evs.iter().map(|e| e.time).collect();
    assert_eq!(times, [T0, T0 + 1000, T0 + 1000, T0 + 5000]);
    assert_eq!(evs[0].message.as_deref(), Some("Task plain created"));
    assert_eq!(
        evs[0].metadata,
        json!({"name": "plain", "type": "async", "tag": "t1"})
    );
    let w = mgr.attempts(id).unwrap()[0].worker.clone();
    assert_eq!(t.worker.as_deref(), Some(&*w));
    for e in &evs[1..] {
        assert_eq!(e.worker.as_deref(), Some(&*w));
    }
    assert_eq!(t.last_active_time, T0 + 5000);
    assert_eq!(t.start_time, Some(T0 + 1000));
    let a = &mgr.attempts(id).unwrap()[0];
    assert_eq!(
        (a.started_at, a.ended_at, a.outcome),
        (T0 + 1000, Some(T0 + 5000), Some(AttemptOutcome::Completed))
    );
}

#[test]
fn plain_async_handler_success_has_the_same_four_events() {
    let (mgr, _clock) = mgr(1);
    mgr.register_async("a", |_ctx| async { Ok(json!(1).into()) })
        .unwrap();
    mgr.start().unwrap();
    let id = mgr.submit("a", json!(null)).unwrap();
    mgr.wait(id, PATIENCE).unwrap();
    assert_eq!(
        shape(&trail(&mgr, id)),
        [
            ("task_created", None, Some(Pending), 0, None),
            ("task_claimed", Some(Pending), Some(Running), 0, Some(1)),
            ("task_started", None, None, 0, Some(1)),
            ("task_completed", Some(Running), Some(Completed), 0, Some(1)),
        ]
    );
}

// ---------------------------------------------------------------------------
// fail, retry, retry start, exhaustion
// ---------------------------------------------------------------------------

#[test]
fn a_failure_then_a_retry_that_succeeds() {
    let (mgr, clock) = mgr(1);
    let calls = Arc::new(AtomicU32::new(0));
    let c = calls.clone();
    mgr.register_with(
        "flaky",
        HandlerOptions::new()
            .max_retries(3)
            .retry_interval(10 * SEC),
        move |ctx| {
            c.fetch_add(1, Ordering::SeqCst);
            if ctx.attempt() == 1 {
                Err("first try fails".into())
            } else {
                assert_eq!(ctx.retry_count(), 1);
                Ok(json!("ok").into())
            }
        },
    )
    .unwrap();
    mgr.start().unwrap();
    let id = mgr.submit("flaky", json!(null)).unwrap();
    let t = wait_status(&mgr, id, Failed);
    assert_eq!(t.next_run_time, T0 + 10_000);
    assert_eq!(t.last_event_type, Some(EventType::Failed));
    assert_eq!(t.error.as_deref(), Some("first try fails"));
    clock.advance(10 * SEC);
    let t = mgr.wait(id, PATIENCE).unwrap();
    assert_eq!((t.status, t.retry_count), (Completed, 1));
    let evs = trail(&mgr, id);
    assert_eq!(
        shape(&evs),
        [
            ("task_created", None, Some(Pending), 0, None),
            ("task_claimed", Some(Pending), Some(Running), 0, Some(1)),
            ("task_started", None, None, 0, Some(1)),
            ("task_failed", Some(Running), Some(Failed), 0, Some(1)),
            (
                "task_retry_scheduled",
                Some(Failed),
                Some(Pending),
                0,
                Some(1)
            ),
            ("task_claimed", Some(Pending), Some(Running), 0, Some(2)),
            ("task_started", None, None, 0, Some(2)),
            ("task_retry_started", None, None, 0, Some(2)),
            ("task_completed", Some(Running), Some(Completed), 0, Some(2)),
        ]
    );
    let times: Vec<u64> = evs.iter().map(|e| e.time).collect();
    assert_eq!(
        times,
        [
            T0,
            T0,
            T0,
            T0,
            T0 + 10_000,
            T0 + 10_000,
            T0 + 10_000,
            T0 + 10_000,
            T0 + 10_000
        ]
    );
    assert_eq!(evs[3].message.as_deref(), Some("first try fails"));
    assert_eq!(
        evs[4].metadata,
        json!({"retry_count": 1, "previous_status": "failed"})
    );
    assert_eq!(evs[7].metadata, json!({"retry_count": 1}));
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[test]
fn async_exhaustion_is_failed_then_permanently_failed_at_once() {
    let (mgr, _clock) = mgr(1);
    mgr.register_with(
        "bad",
        HandlerOptions::new()
            .max_retries(2)
            .retry_interval(Duration::ZERO),
        |_| Err("boom".into()),
    )
    .unwrap();
    mgr.start().unwrap();
    let id = mgr.submit("bad", json!(null)).unwrap();
    let t = mgr.wait(id, PATIENCE).unwrap();
    assert_eq!(t.status, PermanentlyFailed);
    assert_eq!(t.error.as_deref(), Some("boom"));
    let evs = trail(&mgr, id);
    assert_eq!(
        shape(&evs),
        [
            ("task_created", None, Some(Pending), 0, None),
            ("task_claimed", Some(Pending), Some(Running), 0, Some(1)),
            ("task_started", None, None, 0, Some(1)),
            ("task_failed", Some(Running), Some(Failed), 0, Some(1)),
            (
                "task_retry_scheduled",
                Some(Failed),
                Some(Pending),
                0,
                Some(1)
            ),
            ("task_claimed", Some(Pending), Some(Running), 0, Some(2)),
            ("task_started", None, None, 0, Some(2)),
            ("task_retry_started", None, None, 0, Some(2)),
            ("task_failed", Some(Running), Some(Failed), 0, Some(2)),
            (
                "task_permanently_failed",
                Some(Failed),
                Some(PermanentlyFailed),
                0,
                Some(2)
            ),
        ]
    );
    let pf = evs.last().unwrap();
    assert_eq!(pf.metadata["retry_exhausted"], true);
    assert_eq!(pf.metadata["retry_count"], 1);
}

/// SPEC §4: exhaustion "does not wait for the interval".
#[test]
fn exhaustion_does_not_wait_for_the_retry_interval() {
    let (mgr, _clock) = mgr(1);
    mgr.register_with(
        "bad",
        HandlerOptions::new()
            .max_retries(1)
            .retry_interval(60 * SEC),
        |_| Err("boom".into()),
    )
    .unwrap();
    mgr.start().unwrap();
    let id = mgr.submit("bad", json!(null)).unwrap();
    let t = mgr.wait(id, PATIENCE).unwrap();
    assert_eq!(t.status, PermanentlyFailed);
    let evs = trail(&mgr, id);
    assert_eq!(
        evs.iter()
            .map(|e| e.event_type.as_str())
            .collect::<Vec<_>>(),
        [
            "task_created",
            "task_claimed",
            "task_started",
            "task_failed",
            "task_permanently_failed"
        ]
    );
    assert_eq!(evs[4].time, evs[3].time);
}

/// fib-flow records the error in the metadata of `task_failed` (its
/// `updateTaskStatus`: `metadata: {error, retry_count, next_run_time}`) and of
/// `task_permanently_failed` (`metadata: {error, retry_exhausted}`), and its
/// audit doc lists "error" as their typical metadata. SPEC is silent.
// Fixed in session 16 (the test failed before the fix): fibflow's task_failed has null metadata and its exhaustion event has no
// `error` key (src/engine/transition.rs:525 fail(): `FailKind::Error => Value::Null`;
// :559 exhaust(): `{"reason","retry_exhausted","retry_count"}`).
#[test]
fn failure_events_carry_the_error_in_their_metadata_like_fib_flow() {
    let (mgr, _clock) = mgr(1);
    mgr.register_with("bad", HandlerOptions::new().max_retries(1), |_| {
        Err("disk full".into())
    })
    .unwrap();
    mgr.start().unwrap();
    let id = mgr.submit("bad", json!(null)).unwrap();
    mgr.wait(id, PATIENCE).unwrap();
    let evs = trail(&mgr, id);
    let failed = &evs[3];
    let pf = &evs[4];
    assert_eq!(failed.event_type, EventType::Failed);
    assert_eq!(pf.event_type, EventType::PermanentlyFailed);
    assert_eq!(pf.metadata["retry_exhausted"], true);
    assert_eq!(
        (
            failed.metadata["error"].as_str(),
            pf.metadata["error"].as_str()
        ),
        (Some("disk full"), Some("disk full")),
        "task_failed metadata {} / task_permanently_failed metadata {}",
        failed.metadata,
        pf.metadata
    );
}

#[test]
fn cron_exhaustion_pauses_with_retry_exhausted_and_resume_is_a_status_change() {
    let (mgr, clock) = mgr(1);
    let calls = Arc::new(AtomicU32::new(0));
    let c = calls.clone();
    mgr.register_with("cron", HandlerOptions::new().max_retries(1), move |_| {
        if c.fetch_add(1, Ordering::SeqCst) == 0 {
            Err("cron round failed".into())
        } else {
            Ok(json!("fine").into())
        }
    })
    .unwrap();
    mgr.start().unwrap();
    let id = mgr
        .submit_with(
            "cron",
            json!(null),
            SubmitOptions::new().cron("*/10 * * * * *"),
        )
        .unwrap();
    clock.advance(10 * SEC);
    let t = mgr.wait(id, PATIENCE).unwrap();
    assert_eq!(t.status, Paused);
    let evs = trail(&mgr, id);
    assert_eq!(
        shape(&evs),
        [
            ("task_created", None, Some(Pending), 0, None),
            ("task_claimed", Some(Pending), Some(Running), 0, Some(1)),
            ("task_started", None, None, 0, Some(1)),
            ("task_failed", Some(Running), Some(Failed), 0, Some(1)),
            ("task_paused", Some(Failed), Some(Paused), 0, Some(1)),
        ]
    );
    assert_eq!(evs[0].metadata["type"], "cron");
    assert_eq!(evs[4].metadata["retry_exhausted"], true);
    assert_eq!(evs[4].time, T0 + 10_000);
    clock.advance(3 * SEC);
    mgr.resume_task(id, None).unwrap();
    eventually("the resumed cron round ran", || {
        mgr.get_task(id).unwrap().last_event_type == Some(EventType::StatusChanged)
            && calls.load(Ordering::SeqCst) == 2
    });
    let evs = trail(&mgr, id);
    assert_eq!(
        shape(&evs[5..]),
        [
            ("task_status_changed", Some(Paused), Some(Pending), 0, None),
            ("task_claimed", Some(Pending), Some(Running), 0, Some(2)),
            ("task_started", None, None, 0, Some(2)),
            (
                "task_status_changed",
                Some(Running),
                Some(Pending),
                0,
                Some(2)
            ),
        ]
    );
    assert_eq!(evs[5].time, T0 + 13_000);
    assert_eq!(evs[5].metadata["resume_reason"], "manual");
}

// ---------------------------------------------------------------------------
// timeouts
// ---------------------------------------------------------------------------

#[test]
fn total_timeout_then_exhaustion_and_the_late_result_records_nothing() {
    let (mgr, clock) = mgr(1);
    let gate = Gate::new();
    let g = gate.clone();
    let late = Arc::new(Mutex::new(None));
    let l = late.clone();
    mgr.register_with(
        "slow",
        HandlerOptions::new().timeout(5 * SEC).max_retries(1),
        move |ctx| {
            g.wait();
            *l.lock().unwrap() = Some((
                ctx.check(),
                ctx.audit("late", None, None),
                ctx.progress(Progress {
                    percent: Some(50),
                    ..Progress::default()
                }),
            ));
            Ok(json!("late").into())
        },
    )
    .unwrap();
    mgr.start().unwrap();
    let id = mgr.submit("slow", json!(null)).unwrap();
    wait_status(&mgr, id, Running);
    clock.advance(4 * SEC);
    assert_eq!(status_of(&mgr, id), Running, "not before its timeout");
    clock.advance(2 * SEC);
    let t = mgr.wait(id, PATIENCE).unwrap();
    assert_eq!(t.status, PermanentlyFailed);
    let before = trail(&mgr, id);
    assert_eq!(
        shape(&before),
        [
            ("task_created", None, Some(Pending), 0, None),
            ("task_claimed", Some(Pending), Some(Running), 0, Some(1)),
            ("task_started", None, None, 0, Some(1)),
            ("task_timed_out", Some(Running), Some(Timeout), 0, Some(1)),
            (
                "task_permanently_failed",
                Some(Timeout),
                Some(PermanentlyFailed),
                0,
                Some(1)
            ),
        ]
    );
    assert_eq!(
        before[3].metadata,
        json!({"timeout_type": "total", "error": "Task exceeded total timeout limit"})
    );
    assert_eq!(before[3].time, T0 + 6000);
    assert_eq!(before[4].metadata["retry_exhausted"], true);
    let a = &mgr.attempts(id).unwrap()[0];
    assert_eq!(a.outcome, Some(AttemptOutcome::Timeout));
    assert!(a.timed_out);
    gate.open();
    eventually("the late handler returned", || {
        late.lock().unwrap().is_some()
    });
    idle(&mgr);
    let (check, audit, progress) = late.lock().unwrap().take().unwrap();
    assert_eq!(check, Err(fibflow::Interrupted::Timeout));
    assert!(
        matches!(audit, Err(ContextError::Stale { .. })),
        "{audit:?}"
    );
    assert!(
        matches!(progress, Err(ContextError::Stale { .. })),
        "{progress:?}"
    );
    assert_eq!(
        mgr.events(id).unwrap(),
        before,
        "a late outcome records nothing"
    );
    assert_eq!(mgr.get_task(id).unwrap().progress_percent, None);
}

#[test]
fn heartbeat_timeout_then_a_retry_that_succeeds() {
    let (mgr, clock) = mgr(2);
    let gate = Gate::new();
    let g = gate.clone();
    mgr.register_with(
        "hb",
        HandlerOptions::new()
            .heartbeat_window(2 * SEC)
            .timeout(60 * SEC)
            .max_retries(2),
        move |ctx| {
            if ctx.attempt() == 1 {
                g.wait();
            }
            Ok(json!(ctx.attempt()).into())
        },
    )
    .unwrap();
    mgr.start().unwrap();
    let id = mgr.submit("hb", json!(null)).unwrap();
    wait_status(&mgr, id, Running);
    clock.advance(3 * SEC);
    let t = mgr.wait(id, PATIENCE).unwrap();
    assert_eq!((t.status, t.result.clone()), (Completed, Some(json!(2))));
    gate.open();
    idle(&mgr);
    let evs = trail(&mgr, id);
    assert_eq!(
        shape(&evs),
        [
            ("task_created", None, Some(Pending), 0, None),
            ("task_claimed", Some(Pending), Some(Running), 0, Some(1)),
            ("task_started", None, None, 0, Some(1)),
            ("task_timed_out", Some(Running), Some(Timeout), 0, Some(1)),
            (
                "task_retry_scheduled",
                Some(Timeout),
                Some(Pending),
                0,
                Some(1)
            ),
            ("task_claimed", Some(Pending), Some(Running), 0, Some(2)),
            ("task_started", None, None, 0, Some(2)),
            ("task_retry_started", None, None, 0, Some(2)),
            ("task_completed", Some(Running), Some(Completed), 0, Some(2)),
        ]
    );
    assert_eq!(
        evs[3].metadata,
        json!({"timeout_type": "heartbeat", "error": "Task heartbeat timed out"})
    );
    assert_eq!(evs[3].message.as_deref(), Some("Task heartbeat timed out"));
    assert_eq!(evs[4].metadata["previous_status"], "timeout");
    assert_eq!(evs[4].metadata["retry_count"], 1);
}

#[test]
fn async_total_timeout_is_the_same_trail() {
    let (mgr, clock) = mgr(1);
    let never = Release::new();
    mgr.register_async_with(
        "slow",
        HandlerOptions::new().timeout(5 * SEC).max_retries(1),
        move |_ctx| {
            let r = never.clone();
            async move {
                r.wait().await;
                Ok(json!(1).into())
            }
        },
    )
    .unwrap();
    mgr.start().unwrap();
    let id = mgr.submit("slow", json!(null)).unwrap();
    wait_status(&mgr, id, Running);
    clock.advance(6 * SEC);
    mgr.wait(id, PATIENCE).unwrap();
    idle(&mgr);
    let evs = trail(&mgr, id);
    assert_eq!(
        evs.iter()
            .map(|e| e.event_type.as_str())
            .collect::<Vec<_>>(),
        [
            "task_created",
            "task_claimed",
            "task_started",
            "task_timed_out",
            "task_permanently_failed"
        ]
    );
    assert_eq!(evs[3].metadata["timeout_type"], "total");
}

// ---------------------------------------------------------------------------
// pause, resume, cancel
// ---------------------------------------------------------------------------

#[test]
fn pause_pending_then_resume_then_run() {
    let (mgr, clock) = mgr(1);
    mgr.register("p", |_| Ok(json!(1).into())).unwrap();
    let id = mgr.submit("p", json!(null)).unwrap();
    clock.advance(SEC);
    mgr.pause_task(id).unwrap();
    let t = mgr.get_task(id).unwrap();
    assert_eq!(
        (t.last_event_type, t.last_event_time, t.last_active_time),
        (Some(EventType::Paused), Some(T0 + 1000), T0 + 1000)
    );
    clock.advance(SEC);
    mgr.resume_task(id, None).unwrap();
    let t = mgr.get_task(id).unwrap();
    assert_eq!(
        (t.last_event_type, t.last_event_time, t.last_active_time),
        (Some(EventType::StatusChanged), Some(T0 + 2000), T0 + 2000)
    );
    mgr.start().unwrap();
    mgr.wait(id, PATIENCE).unwrap();
    let evs = trail(&mgr, id);
    assert_eq!(
        shape(&evs),
        [
            ("task_created", None, Some(Pending), 0, None),
            ("task_paused", Some(Pending), Some(Paused), 0, None),
            ("task_status_changed", Some(Paused), Some(Pending), 0, None),
            ("task_claimed", Some(Pending), Some(Running), 0, Some(1)),
            ("task_started", None, None, 0, Some(1)),
            ("task_completed", Some(Running), Some(Completed), 0, Some(1)),
        ]
    );
    assert_eq!(evs[2].metadata["resume_reason"], "manual");
}

#[test]
fn pause_running_discards_the_late_result_and_resume_reruns_as_attempt_two() {
    let (mgr, clock) = mgr(2);
    let gate = Gate::new();
    let g = gate.clone();
    let late = Arc::new(Mutex::new(None));
    let l = late.clone();
    mgr.register("p", move |ctx| {
        if ctx.attempt() == 1 {
            g.wait();
            *l.lock().unwrap() = Some(ctx.progress(Progress {
                text: Some("late".into()),
                ..Progress::default()
            }));
            return Ok(json!("late").into());
        }
        Ok(json!("second").into())
    })
    .unwrap();
    mgr.start().unwrap();
    let id = mgr.submit("p", json!(null)).unwrap();
    wait_status(&mgr, id, Running);
    clock.advance(2 * SEC);
    mgr.pause_task(id).unwrap();
    gate.open();
    eventually("the late handler returned", || {
        late.lock().unwrap().is_some()
    });
    idle(&mgr);
    let progress = late.lock().unwrap().take().unwrap();
    assert!(
        matches!(progress, Err(ContextError::Stale { .. })),
        "{progress:?}"
    );
    let t = mgr.get_task(id).unwrap();
    assert_eq!(t.status, Paused);
    assert_eq!(t.result, None, "the late result is discarded");
    let paused = trail(&mgr, id);
    assert_eq!(
        shape(&paused),
        [
            ("task_created", None, Some(Pending), 0, None),
            ("task_claimed", Some(Pending), Some(Running), 0, Some(1)),
            ("task_started", None, None, 0, Some(1)),
            ("task_paused", Some(Running), Some(Paused), 0, Some(1)),
        ]
    );
    assert_eq!(paused[3].time, T0 + 2000);
    assert_eq!(
        mgr.attempts(id).unwrap()[0].outcome,
        Some(AttemptOutcome::Paused)
    );
    clock.advance(SEC);
    mgr.resume_task(id, Some("ops said so")).unwrap();
    let t = mgr.wait(id, PATIENCE).unwrap();
    assert_eq!(t.result, Some(json!("second")));
    let evs = trail(&mgr, id);
    assert_eq!(
        shape(&evs[4..]),
        [
            ("task_status_changed", Some(Paused), Some(Pending), 0, None),
            ("task_claimed", Some(Pending), Some(Running), 0, Some(2)),
            ("task_started", None, None, 0, Some(2)),
            ("task_completed", Some(Running), Some(Completed), 0, Some(2)),
        ]
    );
    assert_eq!(evs[4].metadata["resume_reason"], "ops said so");
}

/// SPEC §4/§6: `retry_count` resets on `resume_task`, so the run after the
/// resume is no retry (no `task_retry_started`).
#[test]
fn resume_resets_retry_count_so_the_next_claim_is_no_retry_start() {
    let (mgr, clock) = mgr(1);
    let gate = Gate::new();
    let g = gate.clone();
    mgr.register_with(
        "flaky",
        HandlerOptions::new()
            .max_retries(3)
            .retry_interval(10 * SEC),
        |ctx| {
            if ctx.attempt() == 1 {
                Err("once".into())
            } else {
                Ok(json!(ctx.retry_count()).into())
            }
        },
    )
    .unwrap();
    mgr.register("block", move |_| {
        g.wait();
        Ok(json!(null).into())
    })
    .unwrap();
    mgr.start().unwrap();
    let id = mgr.submit("flaky", json!(null)).unwrap();
    wait_status(&mgr, id, Failed);
    let blocker = mgr.submit("block", json!(null)).unwrap();
    wait_status(&mgr, blocker, Running);
    clock.advance(10 * SEC);
    let t = wait_status(&mgr, id, Pending);
    assert_eq!(t.retry_count, 1);
    mgr.pause_task(id).unwrap();
    mgr.resume_task(id, None).unwrap();
    assert_eq!(mgr.get_task(id).unwrap().retry_count, 0);
    gate.open();
    let t = mgr.wait(id, PATIENCE).unwrap();
    assert_eq!(t.result, Some(json!(0)));
    let evs = trail(&mgr, id);
    assert_eq!(
        shape(&evs),
        [
            ("task_created", None, Some(Pending), 0, None),
            ("task_claimed", Some(Pending), Some(Running), 0, Some(1)),
            ("task_started", None, None, 0, Some(1)),
            ("task_failed", Some(Running), Some(Failed), 0, Some(1)),
            (
                "task_retry_scheduled",
                Some(Failed),
                Some(Pending),
                0,
                Some(1)
            ),
            ("task_paused", Some(Pending), Some(Paused), 0, None),
            ("task_status_changed", Some(Paused), Some(Pending), 0, None),
            ("task_claimed", Some(Pending), Some(Running), 0, Some(2)),
            ("task_started", None, None, 0, Some(2)),
            ("task_completed", Some(Running), Some(Completed), 0, Some(2)),
        ]
    );
}

#[test]
fn explicit_suspend_with_and_without_context_and_resume_from_suspended() {
    let (mgr, clock) = mgr(1);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    mgr.register("approve", move |ctx| {
        s.lock()
            .unwrap()
            .push((ctx.stage(), ctx.context().map(<[u8]>::to_vec)));
        match ctx.stage() {
            0 => Ok(Outcome::Suspend {
                reason: "  needs approval  ".into(),
                context: Some(b"ctx1".to_vec()),
            }),
            1 => Ok(Outcome::suspend("second look")),
            _ => Ok(json!("done").into()),
        }
    })
    .unwrap();
    mgr.start().unwrap();
    let id = mgr.submit("approve", json!(null)).unwrap();
    let t = wait_status(&mgr, id, Suspended);
    assert_eq!(t.context.as_deref(), Some(&b"ctx1"[..]));
    assert_eq!(t.last_event_type, Some(EventType::Suspended));
    clock.advance(SEC);
    mgr.resume_task(id, None).unwrap();
    eventually("suspended again", || {
        let t = mgr.get_task(id).unwrap();
        t.status == Suspended && t.stage == 1
    });
    let t = mgr.get_task(id).unwrap();
    assert_eq!(
        t.context.as_deref(),
        Some(&b"ctx1"[..]),
        "a suspension without context keeps it"
    );
    clock.advance(SEC);
    mgr.resume_task(id, Some("approved")).unwrap();
    let t = mgr.wait(id, PATIENCE).unwrap();
    assert_eq!((t.status, t.stage), (Completed, 2));
    assert_eq!(
        *seen.lock().unwrap(),
        [
            (0, None),
            (1, Some(b"ctx1".to_vec())),
            (2, Some(b"ctx1".to_vec()))
        ]
    );
    let evs = trail(&mgr, id);
    assert_eq!(
        shape(&evs),
        [
            ("task_created", None, Some(Pending), 0, None),
            ("task_claimed", Some(Pending), Some(Running), 0, Some(1)),
            ("task_started", None, None, 0, Some(1)),
            ("task_suspended", Some(Running), Some(Suspended), 0, Some(1)),
            ("task_resumed", Some(Suspended), Some(Pending), 1, None),
            ("task_claimed", Some(Pending), Some(Running), 1, Some(2)),
            ("task_started", None, None, 1, Some(2)),
            ("task_suspended", Some(Running), Some(Suspended), 1, Some(2)),
            ("task_resumed", Some(Suspended), Some(Pending), 2, None),
            ("task_claimed", Some(Pending), Some(Running), 2, Some(3)),
            ("task_started", None, None, 2, Some(3)),
            ("task_completed", Some(Running), Some(Completed), 2, Some(3)),
        ]
    );
    assert_eq!(evs[3].metadata, json!({"suspend_reason": "needs approval"}));
    assert_eq!(evs[4].metadata, json!({"resume_reason": "manual"}));
    assert_eq!(evs[7].metadata, json!({"suspend_reason": "second look"}));
    assert_eq!(evs[8].metadata, json!({"resume_reason": "approved"}));
    assert_eq!((evs[4].time, evs[8].time), (T0 + 1000, T0 + 2000));
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
            Some(AttemptOutcome::Suspended),
            Some(AttemptOutcome::Completed)
        ]
    );
}

#[test]
fn an_empty_suspend_reason_fails_the_attempt_and_records_no_suspension() {
    let (mgr, _clock) = mgr(1);
    mgr.register_with("s", HandlerOptions::new().max_retries(1), |_| {
        Ok(Outcome::suspend("   "))
    })
    .unwrap();
    mgr.start().unwrap();
    let id = mgr.submit("s", json!(null)).unwrap();
    let t = mgr.wait(id, PATIENCE).unwrap();
    assert_eq!(t.status, PermanentlyFailed);
    let evs = trail(&mgr, id);
    assert_eq!(
        evs.iter()
            .map(|e| e.event_type.as_str())
            .collect::<Vec<_>>(),
        [
            "task_created",
            "task_claimed",
            "task_started",
            "task_failed",
            "task_permanently_failed"
        ]
    );
    assert!(
        evs[3].message.as_deref().unwrap_or("").contains("reason"),
        "{:?}",
        evs[3].message
    );
}

#[test]
fn cancel_a_suspended_task_with_and_without_reason() {
    let (mgr, clock) = mgr(2);
    mgr.register("s", |_| Ok(Outcome::suspend("hold"))).unwrap();
    mgr.start().unwrap();
    let a = mgr.submit("s", json!(null)).unwrap();
    let b = mgr.submit("s", json!(null)).unwrap();
    wait_status(&mgr, a, Suspended);
    wait_status(&mgr, b, Suspended);
    clock.advance(SEC);
    mgr.cancel_task(a, None).unwrap();
    mgr.cancel_task(b, Some("no longer needed")).unwrap();
    for (id, reason) in [(a, "Task cancelled"), (b, "no longer needed")] {
        let t = mgr.get_task(id).unwrap();
        assert_eq!(t.error.as_deref(), Some(reason));
        let evs = trail(&mgr, id);
        assert_eq!(
            shape(&evs[3..]),
            [
                ("task_suspended", Some(Running), Some(Suspended), 0, Some(1)),
                (
                    "task_permanently_failed",
                    Some(Suspended),
                    Some(PermanentlyFailed),
                    0,
                    None
                ),
            ]
        );
        let last = evs.last().unwrap();
        assert_eq!(last.message.as_deref(), Some(reason));
        assert_eq!(last.time, T0 + 1000);
    }
    // Cancelling a task that is not suspended is a typed error that records nothing.
    mgr.register("ok", |_| Ok(json!(1).into())).unwrap();
    let done = mgr.submit("ok", json!(null)).unwrap();
    mgr.wait(done, PATIENCE).unwrap();
    let before = mgr.events(done).unwrap();
    let err = mgr.cancel_task(done, None).unwrap_err();
    assert!(matches!(err, fibflow::Error::Transition(_)), "{err:?}");
    assert_eq!(mgr.events(done).unwrap(), before);
    let err = mgr.pause_task(done).unwrap_err();
    assert!(matches!(err, fibflow::Error::Transition(_)), "{err:?}");
    let err = mgr.resume_task(done, None).unwrap_err();
    assert!(matches!(err, fibflow::Error::Transition(_)), "{err:?}");
    assert_eq!(mgr.events(done).unwrap(), before);
}

// ---------------------------------------------------------------------------
// workflows
// ---------------------------------------------------------------------------

#[test]
fn spawn_children_and_resume_when_they_complete() {
    let (mgr, clock) = mgr(3);
    let gate = Gate::new();
    let g = gate.clone();
    mgr.register("c1", |_| Ok(json!("one").into())).unwrap();
    mgr.register("c2", move |_| {
        g.wait();
        Ok(json!("two").into())
    })
    .unwrap();
    mgr.register("parent", |ctx| match ctx.stage() {
        0 => Ok(Outcome::Spawn {
            children: vec![
                ChildSpec::new("c1", json!(1)).tag("kid"),
                ChildSpec::new("c2", json!(2)),
            ],
            context: Some(b"pctx".to_vec()),
        }),
        _ => Ok(json!({"entries": ctx.result().cloned()}).into()),
    })
    .unwrap();
    mgr.start().unwrap();
    let p = mgr.submit("parent", json!(null)).unwrap();
    wait_status(&mgr, p, Suspended);
    let kids = common::children_of(&mgr, p);
    assert_eq!(kids.len(), 2);
    let (k1, k2) = (kids[0].id, kids[1].id);
    mgr.wait(k1, PATIENCE).unwrap();
    clock.advance(3 * SEC);
    gate.open();
    let t = mgr.wait(p, PATIENCE).unwrap();
    assert_eq!(t.status, Completed);
    assert_eq!(t.context.as_deref(), Some(&b"pctx"[..]));
    let evs = trail(&mgr, p);
    assert_eq!(
        shape(&evs),
        [
            ("task_created", None, Some(Pending), 0, None),
            ("task_claimed", Some(Pending), Some(Running), 0, Some(1)),
            ("task_started", None, None, 0, Some(1)),
            (
                "task_subtasks_created",
                Some(Running),
                Some(Suspended),
                0,
                Some(1)
            ),
            (
                "task_status_changed",
                Some(Running),
                Some(Suspended),
                0,
                Some(1)
            ),
            (
                "task_status_changed",
                Some(Suspended),
                Some(Pending),
                1,
                None
            ),
            ("task_claimed", Some(Pending), Some(Running), 1, Some(2)),
            ("task_started", None, None, 1, Some(2)),
            ("task_completed", Some(Running), Some(Completed), 1, Some(2)),
        ]
    );
    assert_eq!(
        evs[3].metadata,
        json!({"child_task_ids": [k1.0, k2.0], "child_task_names": ["c1", "c2"], "child_count": 2})
    );
    assert_eq!(evs[4].metadata["suspend_reason"], "awaiting_subtasks");
    assert_eq!(evs[4].metadata["child_count"], 2);
    assert_eq!(evs[4].metadata["child_task_ids"], json!([k1.0, k2.0]));
    assert_eq!(
        evs[5].metadata,
        json!({"resume_reason": "children_completed"})
    );
    let k2_done = mgr.events(k2).unwrap().last().unwrap().time;
    assert_eq!(k2_done, T0 + 3000);
    assert_eq!(
        evs[5].time, k2_done,
        "the parent resumes when its last child finishes"
    );
    for (k, name, tag) in [(k1, "c1", json!("kid")), (k2, "c2", json!(null))] {
        let kevs = trail(&mgr, k);
        assert_eq!(
            shape(&kevs),
            [
                ("task_created", None, Some(Pending), 0, None),
                ("task_claimed", Some(Pending), Some(Running), 0, Some(1)),
                ("task_started", None, None, 0, Some(1)),
                ("task_completed", Some(Running), Some(Completed), 0, Some(1)),
            ]
        );
        assert_eq!(
            kevs[0].metadata,
            json!({"name": name, "type": "async", "tag": tag})
        );
        assert!(kevs
            .iter()
            .all(|e| e.root_id == Some(p) && e.parent_id == Some(p)));
        assert!(
            mgr.get_task(k).unwrap().context.is_none(),
            "never inherited"
        );
    }
}

#[test]
fn grandchildren_name_the_root_and_their_own_parent() {
    let (mgr, _clock) = mgr(3);
    mgr.register("leaf", |_| Ok(json!("leaf").into())).unwrap();
    mgr.register("mid", |ctx| match ctx.stage() {
        0 => Ok(Outcome::spawn(vec![ChildSpec::new("leaf", json!(null))])),
        _ => Ok(json!("mid").into()),
    })
    .unwrap();
    mgr.register("root", |ctx| match ctx.stage() {
        0 => Ok(Outcome::spawn(vec![ChildSpec::new("mid", json!(null))])),
        _ => Ok(json!("root").into()),
    })
    .unwrap();
    mgr.start().unwrap();
    let root = mgr.submit("root", json!(null)).unwrap();
    mgr.wait(root, PATIENCE).unwrap();
    let mid = common::children_of(&mgr, root)[0].id;
    let leaf = common::children_of(&mgr, mid)[0].id;
    let _ = trail(&mgr, root);
    let _ = trail(&mgr, mid);
    for e in trail(&mgr, leaf) {
        assert_eq!((e.root_id, e.parent_id), (Some(root), Some(mid)), "{e:?}");
    }
    for e in mgr.events(mid).unwrap() {
        assert_eq!((e.root_id, e.parent_id), (Some(root), Some(root)), "{e:?}");
    }
    for e in mgr.events(root).unwrap() {
        assert_eq!((e.root_id, e.parent_id), (Some(root), None), "{e:?}");
    }
    // The workflow view sees every event of the three tasks, causes before effects.
    let wf = mgr.workflow_audit(root, all(), all()).unwrap();
    let total: usize = [root, mid, leaf]
        .iter()
        .map(|&id| mgr.events(id).unwrap().len())
        .sum();
    assert_eq!(wf.events.total, total);
    let pos = |id: TaskId, ty: EventType| {
        wf.events
            .items
            .iter()
            .position(|e| e.task_id == id && e.event_type == ty)
            .unwrap()
    };
    let mid_resumed = wf
        .events
        .items
        .iter()
        .position(|e| {
            e.task_id == mid && e.to_status == Some(Pending) && e.from_status == Some(Suspended)
        })
        .unwrap();
    assert!(pos(leaf, EventType::Completed) < mid_resumed);
    let root_resumed = wf
        .events
        .items
        .iter()
        .position(|e| e.task_id == root && e.from_status == Some(Suspended))
        .unwrap();
    assert!(pos(mid, EventType::Completed) < root_resumed);
}

/// SPEC §5 lists a spawn's events as "`task_created` per child, parent
/// `task_subtasks_created` ..., parent `task_status_changed`", the order in
/// which fib-flow's `insertTask` records them (children first, then the
/// parent's two rows: lib/db/base.js). A workflow's events are ordered by
/// (time, the order they were recorded): a child's creation must come before
/// the parent's row that lists the child's id.
// Fixed in session 16 (the test failed before the fix): fibflow records the parent's Spawn record before its children's Submit
// records in the batch (src/runtime/worker.rs:703 finish(): `(spawn, subs)`, and
// :774 commit_outcome chains `first` before `rest`; sequences are stamped in
// that order), so the workflow view lists `task_subtasks_created` before the
// children's `task_created`.
#[test]
fn workflow_view_lists_children_created_before_the_parents_subtasks_created() {
    let (mgr, _clock) = mgr(2);
    mgr.register("kid", |_| Ok(json!(1).into())).unwrap();
    mgr.register("parent", |ctx| match ctx.stage() {
        0 => Ok(Outcome::spawn(vec![
            ChildSpec::new("kid", json!(1)),
            ChildSpec::new("kid", json!(2)),
        ])),
        _ => Ok(json!("done").into()),
    })
    .unwrap();
    mgr.start().unwrap();
    let p = mgr.submit("parent", json!(null)).unwrap();
    mgr.wait(p, PATIENCE).unwrap();
    let wf = mgr.workflow_audit(p, all(), all()).unwrap();
    let order: Vec<(TaskId, &str)> = wf
        .events
        .items
        .iter()
        .filter(|e| {
            matches!(
                e.event_type,
                EventType::Created | EventType::SubtasksCreated | EventType::StatusChanged
            ) && e.time == T0
        })
        .map(|e| (e.task_id, e.event_type.as_str()))
        .collect();
    let kids = common::children_of(&mgr, p);
    assert_eq!(
        order,
        [
            (p, "task_created"),
            (kids[0].id, "task_created"),
            (kids[1].id, "task_created"),
            (p, "task_subtasks_created"),
            (p, "task_status_changed"),
            (p, "task_status_changed"),
        ],
        "workflow events in (time, sequence) order"
    );
}

#[test]
fn fail_parent_policy_fails_an_async_parent_and_pauses_a_cron_parent() {
    let (mgr, clock) = mgr(2);
    mgr.register_with("kid", HandlerOptions::new().max_retries(1), |_| {
        Err("kid broke".into())
    })
    .unwrap();
    mgr.register("parent", |ctx| match ctx.stage() {
        0 => Ok(Outcome::spawn(vec![
            ChildSpec::new("kid", json!(null)).fail_parent()
        ])),
        _ => Ok(json!("should not run").into()),
    })
    .unwrap();
    mgr.start().unwrap();
    let p = mgr.submit("parent", json!(null)).unwrap();
    let t = mgr.wait(p, PATIENCE).unwrap();
    assert_eq!(t.status, PermanentlyFailed);
    let kid = common::children_of(&mgr, p)[0].id;
    let kevs = trail(&mgr, kid);
    assert_eq!(
        kevs.iter()
            .map(|e| e.event_type.as_str())
            .collect::<Vec<_>>(),
        [
            "task_created",
            "task_claimed",
            "task_started",
            "task_failed",
            "task_permanently_failed"
        ]
    );
    let evs = trail(&mgr, p);
    assert_eq!(
        shape(&evs[3..]),
        [
            (
                "task_subtasks_created",
                Some(Running),
                Some(Suspended),
                0,
                Some(1)
            ),
            (
                "task_status_changed",
                Some(Running),
                Some(Suspended),
                0,
                Some(1)
            ),
            (
                "task_permanently_failed",
                Some(Suspended),
                Some(PermanentlyFailed),
                0,
                None
            ),
        ]
    );
    let last = evs.last().unwrap();
    assert_eq!(last.metadata["reason"], "child_failed");
    assert_eq!(last.metadata["child_id"], kid.0);
    assert_eq!(last.message, t.error);
    assert!(
        t.error.as_deref().unwrap().contains("kid broke"),
        "{:?}",
        t.error
    );

    // A cron parent pauses.
    let cp = mgr
        .submit_with(
            "parent",
            json!(null),
            SubmitOptions::new().cron("*/10 * * * * *"),
        )
        .unwrap();
    clock.advance(10 * SEC);
    let t = mgr.wait(cp, PATIENCE).unwrap();
    assert_eq!(t.status, Paused);
    let evs = trail(&mgr, cp);
    assert_eq!(
        shape(&evs[3..]),
        [
            (
                "task_subtasks_created",
                Some(Running),
                Some(Suspended),
                0,
                Some(1)
            ),
            (
                "task_status_changed",
                Some(Running),
                Some(Suspended),
                0,
                Some(1)
            ),
            ("task_paused", Some(Suspended), Some(Paused), 0, None),
        ]
    );
    assert_eq!(evs.last().unwrap().metadata["reason"], "child_failed");
}

#[test]
fn deliver_policy_resumes_the_parent_with_the_error_entry() {
    let (mgr, _clock) = mgr(2);
    mgr.register_with("kid", HandlerOptions::new().max_retries(1), |_| {
        Err("kid broke".into())
    })
    .unwrap();
    mgr.register("parent", |ctx| match ctx.stage() {
        0 => Ok(Outcome::spawn(vec![ChildSpec::new("kid", json!(null))])),
        _ => Ok(ctx.result().cloned().unwrap_or_default().into()),
    })
    .unwrap();
    mgr.start().unwrap();
    let p = mgr.submit("parent", json!(null)).unwrap();
    let t = mgr.wait(p, PATIENCE).unwrap();
    let kid = common::children_of(&mgr, p)[0].id;
    assert_eq!(
        t.result,
        Some(json!([{"task_id": kid.0, "error": "kid broke"}]))
    );
    let evs = trail(&mgr, p);
    assert_eq!(
        shape(&evs[5..]),
        [
            (
                "task_status_changed",
                Some(Suspended),
                Some(Pending),
                1,
                None
            ),
            ("task_claimed", Some(Pending), Some(Running), 1, Some(2)),
            ("task_started", None, None, 1, Some(2)),
            ("task_completed", Some(Running), Some(Completed), 1, Some(2)),
        ]
    );
    assert_eq!(evs[5].metadata["resume_reason"], "children_completed");
}

// ---------------------------------------------------------------------------
// cron
// ---------------------------------------------------------------------------

#[test]
fn a_cron_round_is_a_status_change_back_to_pending_not_a_completion() {
    let (mgr, clock) = mgr(1);
    let rounds = Arc::new(AtomicU32::new(0));
    let r = rounds.clone();
    mgr.register("tick", move |_| {
        Ok(json!(r.fetch_add(1, Ordering::SeqCst) + 1).into())
    })
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
    eventually("round 1", || {
        mgr.get_task(id).unwrap().next_run_time == T0 + 20_000
    });
    clock.advance(10 * SEC);
    eventually("round 2", || {
        mgr.get_task(id).unwrap().next_run_time == T0 + 30_000
    });
    let t = mgr.get_task(id).unwrap();
    assert_eq!(
        (t.status, t.result.clone(), t.stage),
        (Pending, Some(json!(2)), 0)
    );
    let evs = trail(&mgr, id);
    assert_eq!(
        shape(&evs),
        [
            ("task_created", None, Some(Pending), 0, None),
            ("task_claimed", Some(Pending), Some(Running), 0, Some(1)),
            ("task_started", None, None, 0, Some(1)),
            (
                "task_status_changed",
                Some(Running),
                Some(Pending),
                0,
                Some(1)
            ),
            ("task_claimed", Some(Pending), Some(Running), 0, Some(2)),
            ("task_started", None, None, 0, Some(2)),
            (
                "task_status_changed",
                Some(Running),
                Some(Pending),
                0,
                Some(2)
            ),
        ]
    );
    assert_eq!(evs[3].metadata["next_run_time"], T0 + 20_000);
    assert_eq!(evs[6].metadata["next_run_time"], T0 + 30_000);
    assert_eq!((evs[3].time, evs[6].time), (T0 + 10_000, T0 + 20_000));
    assert!(!evs.iter().any(|e| e.event_type == EventType::Completed));
    assert!(mgr
        .attempts(id)
        .unwrap()
        .iter()
        .all(|a| a.outcome == Some(AttemptOutcome::Completed)));
}

// ---------------------------------------------------------------------------
// recovery
// ---------------------------------------------------------------------------

#[test]
fn recovery_of_a_durable_dir_after_a_stop_while_a_handler_runs() {
    within("recovery", PATIENCE * 2, || {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(T0);
        let builder = || {
            TaskManager::builder()
                .dir(dir.path())
                .clock(clock.clone())
                .max_concurrent_tasks(2)
        };
        let gate = Gate::new();
        let (id, done, before_id, before_done) = {
            let mgr = build_unlocked(builder()).unwrap();
            let g = gate.clone();
            mgr.register("block", move |_| {
                g.wait();
                Ok(json!("late").into())
            })
            .unwrap();
            mgr.register("ok", |_| Ok(json!("ok").into())).unwrap();
            mgr.start().unwrap();
            let done = mgr.submit("ok", json!(null)).unwrap();
            mgr.wait(done, PATIENCE).unwrap();
            let id = mgr.submit("block", json!(null)).unwrap();
            wait_status(&mgr, id, Running);
            clock.advance(3 * SEC);
            let report = mgr.stop(Duration::ZERO).unwrap();
            assert_eq!(report.interrupted, [id]);
            (id, done, mgr.events(id).unwrap(), mgr.events(done).unwrap())
        };
        gate.open();
        clock.advance(2 * SEC);
        let mgr = build_unlocked(builder()).unwrap();
        assert_eq!(
            mgr.events(id).unwrap(),
            before_id,
            "replay reproduces the trail"
        );
        assert_eq!(mgr.events(done).unwrap(), before_done);
        let evs = trail(&mgr, id);
        assert_eq!(
            shape(&evs),
            [
                ("task_created", None, Some(Pending), 0, None),
                ("task_claimed", Some(Pending), Some(Running), 0, Some(1)),
                ("task_started", None, None, 0, Some(1)),
                ("task_recovered", Some(Running), Some(Pending), 0, None),
            ]
        );
        let rec = &evs[3];
        assert_eq!(rec.time, T0 + 3000);
        assert!(
            rec.message.as_deref().unwrap_or("").contains("stopped"),
            "{:?}",
            rec.message
        );
        assert_eq!(rec.metadata["attempt"], 1);
        let a = &mgr.attempts(id).unwrap()[0];
        assert_eq!(
            (a.outcome, a.ended_at),
            (Some(AttemptOutcome::Interrupted), Some(T0 + 3000))
        );
        mgr.register("block", |_| Ok(json!("again").into()))
            .unwrap();
        mgr.register("ok", |_| Ok(json!("ok").into())).unwrap();
        mgr.start().unwrap();
        let t = mgr.wait(id, PATIENCE).unwrap();
        assert_eq!((t.status, t.retry_count), (Completed, 0));
        let evs = trail(&mgr, id);
        assert_eq!(
            shape(&evs[4..]),
            [
                ("task_claimed", Some(Pending), Some(Running), 0, Some(2)),
                ("task_started", None, None, 0, Some(2)),
                ("task_completed", Some(Running), Some(Completed), 0, Some(2)),
            ]
        );
        assert_eq!(evs[4].time, T0 + 5000);
        mgr.stop(PATIENCE).unwrap();
    });
}

#[test]
fn quarantine_is_recovered_then_permanently_failed() {
    let clock = ManualClock::new(T0);
    let mgr = TaskManager::builder()
        .memory()
        .clock(clock.clone())
        .quarantine_after(0)
        .build()
        .unwrap();
    let gate = Gate::new();
    let g = gate.clone();
    mgr.register("block", move |_| {
        g.wait();
        Ok(json!(1).into())
    })
    .unwrap();
    mgr.start().unwrap();
    let id = mgr.submit("block", json!(null)).unwrap();
    wait_status(&mgr, id, Running);
    assert_eq!(mgr.stop(Duration::ZERO).unwrap().interrupted, [id]);
    gate.open();
    let t = mgr.get_task(id).unwrap();
    assert_eq!(t.status, PermanentlyFailed);
    let evs = trail(&mgr, id);
    assert_eq!(
        shape(&evs[3..]),
        [
            ("task_recovered", Some(Running), Some(Pending), 0, None),
            (
                "task_permanently_failed",
                Some(Pending),
                Some(PermanentlyFailed),
                0,
                None
            ),
        ]
    );
    assert_eq!(evs[4].metadata["reason"], "quarantined");
    assert_eq!(evs[4].message, t.error);
}

// ---------------------------------------------------------------------------
// progress and checkpoints
// ---------------------------------------------------------------------------

#[test]
fn progress_and_checkpoint_events_exactly() {
    let (mgr, clock) = mgr(1);
    let c = clock.clone();
    let kept: Arc<Mutex<Option<TaskContext>>> = Arc::new(Mutex::new(None));
    let k = kept.clone();
    mgr.register("work", move |ctx| {
        *k.lock().unwrap() = Some(ctx.clone());
        ctx.progress(Progress {
            stage_name: Some("  load  ".into()),
            percent: Some(0),
            ..Progress::default()
        })?;
        c.advance(SEC);
        ctx.progress(Progress {
            text: Some("half way".into()),
            percent: Some(100),
            metadata: Some(json!({"rows": 10, "progress_percent": 7})),
            ..Progress::default()
        })?;
        ctx.progress(Progress::default())?;
        ctx.audit(" cp1 ", None, None)?;
        ctx.audit(
            "cp2",
            Some(" saved "),
            Some(json!({"k": [1, 2], "code": "mine"})),
        )?;
        Ok(json!(null).into())
    })
    .unwrap();
    mgr.start().unwrap();
    let id = mgr.submit("work", json!(null)).unwrap();
    let t = mgr.wait(id, PATIENCE).unwrap();
    assert_eq!(t.current_stage_name.as_deref(), Some("load"));
    assert_eq!(t.progress_text.as_deref(), Some("half way"));
    assert_eq!(t.progress_percent, Some(100));
    let evs = trail(&mgr, id);
    assert_eq!(
        shape(&evs),
        [
            ("task_created", None, Some(Pending), 0, None),
            ("task_claimed", Some(Pending), Some(Running), 0, Some(1)),
            ("task_started", None, None, 0, Some(1)),
            ("task_progress", None, None, 0, Some(1)),
            ("task_progress", None, None, 0, Some(1)),
            ("task_progress", None, None, 0, Some(1)),
            ("task_checkpoint", None, None, 0, Some(1)),
            ("task_checkpoint", None, None, 0, Some(1)),
            ("task_completed", Some(Running), Some(Completed), 0, Some(1)),
        ]
    );
    assert_eq!(
        evs[3].metadata,
        json!({"stage_name": "load", "progress_percent": 0})
    );
    assert_eq!(evs[3].message.as_deref(), Some("load"));
    assert_eq!(evs[3].time, T0);
    assert_eq!(
        evs[4].metadata,
        json!({"progress_text": "half way", "progress_percent": 7, "rows": 10}),
        "handler metadata wins, as JavaScript's spread"
    );
    assert_eq!(evs[4].message.as_deref(), Some("half way"));
    assert_eq!(evs[4].time, T0 + 1000);
    assert_eq!(evs[5].metadata, json!({}));
    assert_eq!(evs[5].message.as_deref(), Some("task progress updated"));
    assert_eq!(evs[6].metadata, json!({"code": "cp1"}));
    assert_eq!(evs[6].message.as_deref(), Some("cp1"));
    assert_eq!(evs[7].metadata, json!({"code": "mine", "k": [1, 2]}));
    assert_eq!(evs[7].message.as_deref(), Some("saved"));
    // A context kept past its attempt writes nothing.
    let ctx = kept.lock().unwrap().take().unwrap();
    let before = mgr.events(id).unwrap();
    assert!(matches!(
        ctx.progress(Progress {
            percent: Some(1),
            ..Progress::default()
        }),
        Err(ContextError::Stale { .. })
    ));
    assert!(matches!(
        ctx.audit("after", None, None),
        Err(ContextError::Stale { .. })
    ));
    assert_eq!(mgr.events(id).unwrap(), before);
    assert_eq!(mgr.get_task(id).unwrap().progress_percent, Some(100));
}

#[test]
fn invalid_progress_and_audit_calls_are_typed_errors_that_record_nothing() {
    let (mgr, _clock) = mgr(1);
    let results = Arc::new(Mutex::new(Vec::new()));
    let r = results.clone();
    let snapshots = Arc::new(Mutex::new(Vec::new()));
    let s = snapshots.clone();
    let m: Arc<Mutex<Option<Arc<TaskManager>>>> = Arc::new(Mutex::new(None));
    let mm = m.clone();
    mgr.register("v", move |ctx| {
        let mgr = mm.lock().unwrap().clone().unwrap();
        let snap = || {
            let t = mgr.get_task(ctx.id()).unwrap();
            (
                mgr.events(ctx.id()).unwrap().len(),
                t.last_event_type,
                t.current_stage_name,
                t.progress_text,
                t.progress_percent,
            )
        };
        let start = snap();
        let calls: Vec<Result<(), ContextError>> = vec![
            ctx.progress(Progress {
                stage_name: Some(String::new()),
                ..Progress::default()
            }),
            ctx.progress(Progress {
                stage_name: Some("  ".into()),
                percent: Some(5),
                ..Progress::default()
            }),
            ctx.progress(Progress {
                text: Some("\t".into()),
                ..Progress::default()
            }),
            ctx.progress(Progress {
                stage_name: Some("ok".into()),
                percent: Some(101),
                ..Progress::default()
            }),
            ctx.progress(Progress {
                percent: Some(255),
                ..Progress::default()
            }),
            ctx.progress(Progress {
                text: Some("ok".into()),
                metadata: Some(json!([1, 2])),
                ..Progress::default()
            }),
            ctx.progress(Progress {
                metadata: Some(json!("str")),
                ..Progress::default()
            }),
            ctx.audit("", None, None),
            ctx.audit("   ", None, None),
            ctx.audit("code", Some(""), None),
            ctx.audit("code", Some("  "), None),
            ctx.audit("code", None, Some(json!(3))),
        ];
        s.lock().unwrap().push(start);
        s.lock().unwrap().push(snap());
        *r.lock().unwrap() = calls;
        Ok(json!(null).into())
    })
    .unwrap();
    *m.lock().unwrap() = Some(mgr.clone());
    mgr.start().unwrap();
    let id = mgr.submit("v", json!(null)).unwrap();
    mgr.wait(id, PATIENCE).unwrap();
    *m.lock().unwrap() = None;
    let results = results.lock().unwrap();
    assert_eq!(results.len(), 12);
    for (i, r) in results.iter().enumerate() {
        match r {
            Err(ContextError::Invalid(msg)) => assert!(!msg.is_empty()),
            other => panic!("call {i}: expected a typed Invalid error, got {other:?}"),
        }
    }
    let snaps = snapshots.lock().unwrap();
    assert_eq!(snaps[0], snaps[1], "rejected calls change nothing");
    assert_eq!(snaps[0].1, Some(EventType::Started));
    assert_eq!(
        event_types(&mgr, id),
        [
            "task_created",
            "task_claimed",
            "task_started",
            "task_completed"
        ]
    );
}

fn event_types(mgr: &TaskManager, id: TaskId) -> Vec<&'static str> {
    mgr.events(id)
        .unwrap()
        .iter()
        .map(|e| e.event_type.as_str())
        .collect()
}

// ---------------------------------------------------------------------------
// event filters
// ---------------------------------------------------------------------------

/// One task with three attempts over two stages at three times:
/// T0 attempt 1 fails; T0+10 s the retry (attempt 2) suspends;
/// T0+15 s the resume (stage 1, attempt 3) reports progress and completes.
fn filtered_task() -> (Arc<TaskManager>, TaskId) {
    let (mgr, clock) = mgr(1);
    mgr.register_with(
        "multi",
        HandlerOptions::new()
            .max_retries(3)
            .retry_interval(10 * SEC),
        |ctx| match (ctx.attempt(), ctx.stage()) {
            (1, _) => Err("first".into()),
            (_, 0) => Ok(Outcome::suspend("look")),
            _ => {
                ctx.progress(Progress {
                    percent: Some(90),
                    ..Progress::default()
                })?;
                Ok(json!("done").into())
            }
        },
    )
    .unwrap();
    mgr.start().unwrap();
    let id = mgr.submit("multi", json!(null)).unwrap();
    wait_status(&mgr, id, Failed);
    clock.advance(10 * SEC);
    wait_status(&mgr, id, Suspended);
    clock.advance(5 * SEC);
    mgr.resume_task(id, None).unwrap();
    mgr.wait(id, PATIENCE).unwrap();
    (mgr, id)
}

#[test]
fn event_filters_select_exactly_what_they_name() {
    let (mgr, id) = filtered_task();
    let evs = trail(&mgr, id);
    assert_eq!(
        shape(&evs),
        [
            ("task_created", None, Some(Pending), 0, None),
            ("task_claimed", Some(Pending), Some(Running), 0, Some(1)),
            ("task_started", None, None, 0, Some(1)),
            ("task_failed", Some(Running), Some(Failed), 0, Some(1)),
            (
                "task_retry_scheduled",
                Some(Failed),
                Some(Pending),
                0,
                Some(1)
            ),
            ("task_claimed", Some(Pending), Some(Running), 0, Some(2)),
            ("task_started", None, None, 0, Some(2)),
            ("task_retry_started", None, None, 0, Some(2)),
            ("task_suspended", Some(Running), Some(Suspended), 0, Some(2)),
            ("task_resumed", Some(Suspended), Some(Pending), 1, None),
            ("task_claimed", Some(Pending), Some(Running), 1, Some(3)),
            ("task_started", None, None, 1, Some(3)),
            ("task_progress", None, None, 1, Some(3)),
            ("task_completed", Some(Running), Some(Completed), 1, Some(3)),
        ]
    );
    let q = |f: EventFilter| -> Vec<u64> {
        let p = mgr.query_events(id, &f, all()).unwrap();
        assert_eq!(p.total, p.items.len());
        p.items.iter().map(|e| e.id).collect()
    };
    let by_hand = |pred: &dyn Fn(&Event) -> bool| -> Vec<u64> {
        evs.iter().filter(|e| pred(e)).map(|e| e.id).collect()
    };
    assert_eq!(q(EventFilter::default()), (0..14).collect::<Vec<u64>>());
    assert_eq!(
        q(EventFilter {
            types: vec![EventType::Claimed],
            ..EventFilter::default()
        }),
        [1, 5, 10]
    );
    assert_eq!(
        q(EventFilter {
            types: vec![EventType::Completed, EventType::Claimed],
            ..EventFilter::default()
        }),
        [1, 5, 10, 13]
    );
    assert_eq!(
        q(EventFilter {
            attempt: Some(2),
            ..EventFilter::default()
        }),
        [5, 6, 7, 8]
    );
    assert_eq!(
        q(EventFilter {
            stage: Some(1),
            ..EventFilter::default()
        }),
        [9, 10, 11, 12, 13]
    );
    assert_eq!(
        q(EventFilter {
            until_ms: Some(T0),
            ..EventFilter::default()
        }),
        [0, 1, 2, 3],
        "until is inclusive"
    );
    assert_eq!(
        q(EventFilter {
            from_ms: Some(T0 + 10_000),
            until_ms: Some(T0 + 10_000),
            ..EventFilter::default()
        }),
        [4, 5, 6, 7, 8]
    );
    assert_eq!(
        q(EventFilter {
            from_ms: Some(T0 + 10_001),
            ..EventFilter::default()
        }),
        [9, 10, 11, 12, 13]
    );
    assert_eq!(
        q(EventFilter {
            from_ms: Some(T0 + 1),
            until_ms: Some(T0 + 9_999),
            ..EventFilter::default()
        }),
        Vec::<u64>::new()
    );
    let w = mgr.attempts(id).unwrap()[0].worker.to_string();
    assert_eq!(
        q(EventFilter {
            worker: Some(w.clone()),
            ..EventFilter::default()
        }),
        by_hand(&|e| e.worker.as_deref() == Some(w.as_str()))
    );
    assert_eq!(
        q(EventFilter {
            worker: Some("no-such-worker".into()),
            ..EventFilter::default()
        }),
        Vec::<u64>::new()
    );
    assert_eq!(
        q(EventFilter {
            types: vec![EventType::Started, EventType::RetryStarted],
            stage: Some(0),
            worker: Some(w),
            from_ms: Some(T0 + 1),
            ..EventFilter::default()
        }),
        [6, 7]
    );
    let desc = mgr
        .query_events(
            id,
            &EventFilter {
                types: vec![EventType::Claimed],
                ..EventFilter::default()
            },
            Page {
                limit: 2,
                offset: 0,
                descending: true,
            },
        )
        .unwrap();
    assert_eq!(desc.items.iter().map(|e| e.id).collect::<Vec<_>>(), [10, 5]);
    assert!(desc.has_more);
    assert_eq!(desc.total, 3);
    assert!(mgr
        .query_events(TaskId(u64::MAX), &EventFilter::default(), all())
        .is_err());
}

// ---------------------------------------------------------------------------
// time order
// ---------------------------------------------------------------------------

/// "events have strictly increasing ids and non-decreasing times", and SPEC
/// §10 orders a task's events by (time, id). A wall clock can step backwards
/// (NTP); `ManualClock::set` is documented to allow it. A later event must not
/// get an earlier time than the task's previous one, or the audit query
/// (sorted by time) puts the effect before its cause.
// Fixed in session 16 (the test failed before the fix): event times are the raw clock reading (src/engine/transition.rs:68,82
// emit(): `time: at`, no clamp to the task's last_event_time; SystemClock in
// src/runtime/clock.rs is not monotonic), so after a backward step
// `query_events` lists `task_resumed` before the `task_suspended` it follows.
#[test]
fn event_times_never_go_backwards_when_the_clock_does() {
    let (mgr, clock) = mgr(1);
    mgr.register("s", |ctx| match ctx.stage() {
        0 => Ok(Outcome::suspend("wait")),
        _ => Ok(json!(1).into()),
    })
    .unwrap();
    clock.advance(10 * SEC);
    mgr.start().unwrap();
    let id = mgr.submit("s", json!(null)).unwrap();
    wait_status(&mgr, id, Suspended);
    clock.set(T0);
    mgr.resume_task(id, None).unwrap();
    mgr.wait(id, PATIENCE).unwrap();
    let evs = mgr.events(id).unwrap();
    let queried = mgr
        .query_events(id, &EventFilter::default(), all())
        .unwrap()
        .items;
    assert_eq!(
        queried
            .iter()
            .map(|e| e.event_type.as_str())
            .collect::<Vec<_>>(),
        evs.iter()
            .map(|e| e.event_type.as_str())
            .collect::<Vec<_>>(),
        "the time-ordered audit query keeps the order events happened in"
    );
    let _ = trail(&mgr, id);
}

// ---------------------------------------------------------------------------
// late and refused outcomes, suspended parents
// ---------------------------------------------------------------------------

/// A spawn returned after the attempt timed out, or after the task was
/// paused, creates no children and records nothing.
#[test]
fn a_late_spawn_after_a_timeout_or_a_pause_creates_nothing() {
    let (mgr, clock) = mgr(2);
    let gate = Gate::new();
    let g = gate.clone();
    let returned = Arc::new(AtomicU32::new(0));
    let r = returned.clone();
    mgr.register("kid", |_| Ok(json!(1).into())).unwrap();
    mgr.register_with(
        "parent",
        HandlerOptions::new().timeout(5 * SEC).max_retries(1),
        move |_| {
            g.wait();
            r.fetch_add(1, Ordering::SeqCst);
            Ok(Outcome::spawn(vec![ChildSpec::new("kid", json!(null))]))
        },
    )
    .unwrap();
    mgr.start().unwrap();
    let timed = mgr.submit("parent", json!(null)).unwrap();
    let paused = mgr.submit("parent", json!(null)).unwrap();
    wait_status(&mgr, timed, Running);
    wait_status(&mgr, paused, Running);
    mgr.pause_task(paused).unwrap();
    clock.advance(6 * SEC);
    wait_status(&mgr, timed, PermanentlyFailed);
    let before = (mgr.events(timed).unwrap(), mgr.events(paused).unwrap());
    gate.open();
    eventually("both handlers returned", || {
        returned.load(Ordering::SeqCst) == 2
    });
    idle(&mgr);
    assert_eq!(
        (mgr.events(timed).unwrap(), mgr.events(paused).unwrap()),
        before
    );
    assert!(common::children_of(&mgr, timed).is_empty());
    assert!(common::children_of(&mgr, paused).is_empty());
    assert_eq!(mgr.list_tasks(&fibflow::TaskFilter::all()).len(), 2);
    assert_eq!(
        event_types(&mgr, paused),
        [
            "task_created",
            "task_claimed",
            "task_started",
            "task_paused"
        ]
    );
    let _ = (trail(&mgr, timed), trail(&mgr, paused));
}

#[test]
fn a_spawn_of_an_unregistered_child_fails_the_attempt_without_subtask_events() {
    let (mgr, _clock) = mgr(1);
    mgr.register_with("parent", HandlerOptions::new().max_retries(1), |_| {
        Ok(Outcome::spawn(vec![ChildSpec::new("ghost", json!(null))]))
    })
    .unwrap();
    mgr.start().unwrap();
    let p = mgr.submit("parent", json!(null)).unwrap();
    let t = mgr.wait(p, PATIENCE).unwrap();
    assert_eq!(t.status, PermanentlyFailed);
    let evs = trail(&mgr, p);
    assert_eq!(
        evs.iter()
            .map(|e| e.event_type.as_str())
            .collect::<Vec<_>>(),
        [
            "task_created",
            "task_claimed",
            "task_started",
            "task_failed",
            "task_permanently_failed"
        ]
    );
    assert!(
        evs[3].message.as_deref().unwrap_or("").contains("ghost"),
        "{:?}",
        evs[3].message
    );
    assert!(common::children_of(&mgr, p).is_empty());
    assert_eq!(t.total_children, 0);
}

/// SPEC §4: "Suspended ... tasks never time out": a parent whose children take
/// longer than its timeout has no `task_timed_out`, and its resumed run gets a
/// fresh window.
#[test]
fn a_parent_waiting_longer_than_its_timeout_never_times_out() {
    let (mgr, clock) = mgr(2);
    let gate = Gate::new();
    let g = gate.clone();
    // The kid's own timeout: it would inherit the parent's otherwise.
    mgr.register_with("kid", HandlerOptions::new().timeout(60 * SEC), move |_| {
        g.wait();
        Ok(json!(1).into())
    })
    .unwrap();
    mgr.register_with(
        "parent",
        HandlerOptions::new().timeout(5 * SEC).max_retries(1),
        |ctx| match ctx.stage() {
            0 => Ok(Outcome::spawn(vec![ChildSpec::new("kid", json!(null))])),
            _ => Ok(json!("done").into()),
        },
    )
    .unwrap();
    mgr.start().unwrap();
    let p = mgr.submit("parent", json!(null)).unwrap();
    wait_status(&mgr, p, Suspended);
    let kid = common::children_of(&mgr, p)[0].id;
    wait_status(&mgr, kid, Running);
    clock.advance(4 * SEC);
    clock.advance(4 * SEC);
    assert_eq!(status_of(&mgr, p), Suspended);
    gate.open();
    let t = mgr.wait(p, PATIENCE).unwrap();
    assert_eq!(t.status, Completed);
    let evs = trail(&mgr, p);
    assert!(!evs.iter().any(|e| e.event_type == EventType::TimedOut));
    assert_eq!(evs.last().unwrap().time, T0 + 8000);
}

/// A child that suspends keeps its parent suspended; cancelling it delivers
/// its error to the parent once.
#[test]
fn a_suspended_child_keeps_its_parent_waiting_and_its_cancel_is_delivered_once() {
    let (mgr, _clock) = mgr(2);
    mgr.register("kid", |ctx| match ctx.stage() {
        0 => Ok(Outcome::suspend("human")),
        _ => Ok(json!("approved").into()),
    })
    .unwrap();
    mgr.register("parent", |ctx| match ctx.stage() {
        0 => Ok(Outcome::spawn(vec![
            ChildSpec::new("kid", json!(1)),
            ChildSpec::new("kid", json!(2)),
        ])),
        _ => Ok(ctx.result().cloned().unwrap_or_default().into()),
    })
    .unwrap();
    mgr.start().unwrap();
    let p = mgr.submit("parent", json!(null)).unwrap();
    wait_status(&mgr, p, Suspended);
    let kids = common::children_of(&mgr, p);
    let (k1, k2) = (kids[0].id, kids[1].id);
    wait_status(&mgr, k1, Suspended);
    wait_status(&mgr, k2, Suspended);
    mgr.resume_task(k1, Some("ok")).unwrap();
    mgr.wait(k1, PATIENCE).unwrap();
    assert_eq!(status_of(&mgr, p), Suspended, "one child still suspended");
    mgr.cancel_task(k2, Some("rejected")).unwrap();
    let t = mgr.wait(p, PATIENCE).unwrap();
    assert_eq!(
        t.result,
        Some(json!([
            {"task_id": k1.0, "result": "approved"},
            {"task_id": k2.0, "error": "rejected"}
        ]))
    );
    let evs = trail(&mgr, p);
    let resumes = evs
        .iter()
        .filter(|e| e.from_status == Some(Suspended) && e.to_status == Some(Pending))
        .count();
    assert_eq!(resumes, 1);
    assert_eq!(t.completed_children, 2);
    let k2evs = trail(&mgr, k2);
    assert_eq!(
        shape(&k2evs[3..]),
        [
            ("task_suspended", Some(Running), Some(Suspended), 0, Some(1)),
            (
                "task_permanently_failed",
                Some(Suspended),
                Some(PermanentlyFailed),
                0,
                None
            ),
        ]
    );
    let k1evs = trail(&mgr, k1);
    assert_eq!(
        shape(&k1evs[3..]),
        [
            ("task_suspended", Some(Running), Some(Suspended), 0, Some(1)),
            ("task_resumed", Some(Suspended), Some(Pending), 1, None),
            ("task_claimed", Some(Pending), Some(Running), 1, Some(2)),
            ("task_started", None, None, 1, Some(2)),
            ("task_completed", Some(Running), Some(Completed), 1, Some(2)),
        ]
    );
}

/// A parent cancelled while its children run: their later outcomes add
/// nothing to its trail.
#[test]
fn a_cancelled_parent_gets_no_events_from_its_late_children() {
    let (mgr, _clock) = mgr(2);
    let gate = Gate::new();
    let g = gate.clone();
    mgr.register("kid", move |_| {
        g.wait();
        Ok(json!(1).into())
    })
    .unwrap();
    mgr.register("parent", |ctx| match ctx.stage() {
        0 => Ok(Outcome::spawn(vec![ChildSpec::new("kid", json!(null))])),
        _ => Ok(json!("resumed").into()),
    })
    .unwrap();
    mgr.start().unwrap();
    let p = mgr.submit("parent", json!(null)).unwrap();
    wait_status(&mgr, p, Suspended);
    let kid = common::children_of(&mgr, p)[0].id;
    wait_status(&mgr, kid, Running);
    mgr.cancel_task(p, None).unwrap();
    let before = trail(&mgr, p);
    gate.open();
    mgr.wait(kid, PATIENCE).unwrap();
    idle(&mgr);
    assert_eq!(mgr.events(p).unwrap(), before);
    assert_eq!(status_of(&mgr, p), PermanentlyFailed);
    let _ = trail(&mgr, kid);
}

/// A cron retry starts with `task_retry_started`; the successful round resets
/// retry_count, so the next round's claim has none.
#[test]
fn a_cron_retry_then_rounds_without_retry_starts() {
    let (mgr, clock) = mgr(1);
    let calls = Arc::new(AtomicU32::new(0));
    let c = calls.clone();
    mgr.register_with(
        "tick",
        HandlerOptions::new().max_retries(3).retry_interval(2 * SEC),
        move |_| {
            if c.fetch_add(1, Ordering::SeqCst) == 0 {
                Err("hiccup".into())
            } else {
                Ok(json!("ok").into())
            }
        },
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
    clock.advance(10 * SEC);
    wait_status(&mgr, id, Failed);
    clock.advance(2 * SEC);
    eventually("round 1 done", || {
        mgr.get_task(id).unwrap().next_run_time == T0 + 20_000
    });
    assert_eq!(mgr.get_task(id).unwrap().retry_count, 0);
    clock.advance(8 * SEC);
    eventually("round 2 done", || {
        mgr.get_task(id).unwrap().next_run_time == T0 + 30_000
    });
    let evs = trail(&mgr, id);
    assert_eq!(
        shape(&evs),
        [
            ("task_created", None, Some(Pending), 0, None),
            ("task_claimed", Some(Pending), Some(Running), 0, Some(1)),
            ("task_started", None, None, 0, Some(1)),
            ("task_failed", Some(Running), Some(Failed), 0, Some(1)),
            (
                "task_retry_scheduled",
                Some(Failed),
                Some(Pending),
                0,
                Some(1)
            ),
            ("task_claimed", Some(Pending), Some(Running), 0, Some(2)),
            ("task_started", None, None, 0, Some(2)),
            ("task_retry_started", None, None, 0, Some(2)),
            (
                "task_status_changed",
                Some(Running),
                Some(Pending),
                0,
                Some(2)
            ),
            ("task_claimed", Some(Pending), Some(Running), 0, Some(3)),
            ("task_started", None, None, 0, Some(3)),
            (
                "task_status_changed",
                Some(Running),
                Some(Pending),
                0,
                Some(3)
            ),
        ]
    );
    assert_eq!(evs[4].time, T0 + 12_000);
}

/// SPEC §4: "A retry: ... stage 0, result and context cleared": a parent that
/// fails at stage 1 is retried from stage 0.
#[test]
fn a_parent_failing_after_its_children_is_retried_from_stage_zero() {
    let (mgr, _clock) = mgr(2);
    mgr.register("kid", |_| Ok(json!(1).into())).unwrap();
    mgr.register_with(
        "parent",
        HandlerOptions::new().max_retries(2),
        |ctx| match (ctx.stage(), ctx.attempt()) {
            (0, _) => Ok(Outcome::Spawn {
                children: vec![ChildSpec::new("kid", json!(null))],
                context: Some(vec![ctx.attempt() as u8]),
            }),
            (_, 2) => Err("stage 1 failed".into()),
            _ => Ok(json!("ok").into()),
        },
    )
    .unwrap();
    mgr.start().unwrap();
    let p = mgr.submit("parent", json!(null)).unwrap();
    let t = mgr.wait(p, PATIENCE).unwrap();
    assert_eq!((t.status, t.stage, t.retry_count), (Completed, 1, 1));
    let evs = trail(&mgr, p);
    assert_eq!(
        shape(&evs),
        [
            ("task_created", None, Some(Pending), 0, None),
            ("task_claimed", Some(Pending), Some(Running), 0, Some(1)),
            ("task_started", None, None, 0, Some(1)),
            (
                "task_subtasks_created",
                Some(Running),
                Some(Suspended),
                0,
                Some(1)
            ),
            (
                "task_status_changed",
                Some(Running),
                Some(Suspended),
                0,
                Some(1)
            ),
            (
                "task_status_changed",
                Some(Suspended),
                Some(Pending),
                1,
                None
            ),
            ("task_claimed", Some(Pending), Some(Running), 1, Some(2)),
            ("task_started", None, None, 1, Some(2)),
            ("task_failed", Some(Running), Some(Failed), 1, Some(2)),
            (
                "task_retry_scheduled",
                Some(Failed),
                Some(Pending),
                0,
                Some(2)
            ),
            ("task_claimed", Some(Pending), Some(Running), 0, Some(3)),
            ("task_started", None, None, 0, Some(3)),
            ("task_retry_started", None, None, 0, Some(3)),
            (
                "task_subtasks_created",
                Some(Running),
                Some(Suspended),
                0,
                Some(3)
            ),
            (
                "task_status_changed",
                Some(Running),
                Some(Suspended),
                0,
                Some(3)
            ),
            (
                "task_status_changed",
                Some(Suspended),
                Some(Pending),
                1,
                None
            ),
            ("task_claimed", Some(Pending), Some(Running), 1, Some(4)),
            ("task_started", None, None, 1, Some(4)),
            // retry_count is still 1 (only resume_task and a cron round reset
            // it), so this claim is a retry start too (SPEC §3).
            ("task_retry_started", None, None, 1, Some(4)),
            ("task_completed", Some(Running), Some(Completed), 1, Some(4)),
        ]
    );
    assert_eq!(
        t.context,
        Some(vec![3]),
        "the retry cleared the first context"
    );
    assert_eq!(common::children_of(&mgr, p).len(), 2);
}

// ---------------------------------------------------------------------------
// the trail survives compaction and reopen exactly
// ---------------------------------------------------------------------------

#[test]
fn every_trail_is_identical_after_compaction_and_reopen() {
    within("compaction", PATIENCE * 2, || {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(T0);
        let builder = || {
            TaskManager::builder()
                .dir(dir.path())
                .clock(clock.clone())
                .max_concurrent_tasks(3)
        };
        let register = |mgr: &TaskManager| {
            mgr.register("kid", |ctx| {
                ctx.audit(
                    "kid-cp",
                    Some("from a kid"),
                    Some(json!({"n": ctx.payload().clone()})),
                )?;
                Ok(json!("k").into())
            })
            .unwrap();
            mgr.register_with("flow", HandlerOptions::new().max_retries(3), |ctx| {
                match (ctx.stage(), ctx.attempt()) {
                    (0, 1) => Err("first".into()),
                    (0, _) => Ok(Outcome::Spawn {
                        children: vec![
                            ChildSpec::new("kid", json!(1)).tag("t"),
                            ChildSpec::new("kid", json!(2)),
                        ],
                        context: Some(b"c".to_vec()),
                    }),
                    (1, _) => Ok(Outcome::suspend("approve")),
                    _ => {
                        ctx.progress(Progress {
                            stage_name: Some("final".into()),
                            text: Some("wrapping up".into()),
                            percent: Some(99),
                            metadata: Some(json!({"x": {"y": [1, null]}})),
                        })?;
                        Ok(json!({"done": true}).into())
                    }
                }
            })
            .unwrap();
        };
        let ids: Vec<TaskId>;
        let before: Vec<(Vec<Event>, Vec<fibflow::Attempt>)>;
        {
            let mgr = build_unlocked(builder()).unwrap();
            register(&mgr);
            mgr.start().unwrap();
            let f = mgr.submit("flow", json!(null)).unwrap();
            clock.advance(SEC);
            wait_status(&mgr, f, Suspended);
            eventually("suspended for approval", || {
                mgr.get_task(f).unwrap().stage == 1
            });
            clock.advance(SEC);
            mgr.resume_task(f, Some("yes")).unwrap();
            mgr.wait(f, PATIENCE).unwrap();
            let held = mgr
                .submit_with("flow", json!(null), SubmitOptions::new().delay(SEC * 3600))
                .unwrap();
            mgr.pause_task(held).unwrap();
            let mut all_ids = vec![f, held];
            all_ids.extend(common::children_of(&mgr, f).iter().map(|t| t.id));
            for &id in &all_ids {
                let _ = trail(&mgr, id);
            }
            let snap = |mgr: &TaskManager| -> Vec<(Vec<Event>, Vec<fibflow::Attempt>)> {
                all_ids
                    .iter()
                    .map(|&id| (mgr.events(id).unwrap(), mgr.attempts(id).unwrap()))
                    .collect()
            };
            before = snap(&mgr);
            mgr.compact().unwrap();
            assert_eq!(snap(&mgr), before, "compaction changes no trail");
            mgr.stop(PATIENCE).unwrap();
            ids = all_ids;
        }
        let mgr = build_unlocked(builder()).unwrap();
        let after: Vec<_> = ids
            .iter()
            .map(|&id| (mgr.events(id).unwrap(), mgr.attempts(id).unwrap()))
            .collect();
        assert_eq!(
            after, before,
            "reopen from the snapshot reproduces every trail"
        );
        for &id in &ids {
            let _ = trail(&mgr, id);
        }
        mgr.stop(PATIENCE).unwrap();
    });
}

/// A paused attempt that still runs while its resumed successor runs: its
/// timeout, its writes and its result belong to nobody; the successor's
/// timeout counts from its own claim.
#[test]
fn a_detached_attempt_records_nothing_while_its_successor_runs() {
    let (mgr, clock) = mgr(2);
    let first = Gate::new();
    let second = Gate::new();
    let (g1, g2) = (first.clone(), second.clone());
    let late = Arc::new(Mutex::new(None));
    let l = late.clone();
    mgr.register_with(
        "p",
        HandlerOptions::new().timeout(5 * SEC).max_retries(1),
        move |ctx| {
            if ctx.attempt() == 1 {
                g1.wait();
                *l.lock().unwrap() = Some((ctx.check(), ctx.audit("late", None, None)));
                return Ok(json!("first").into());
            }
            g2.wait();
            Ok(json!("second").into())
        },
    )
    .unwrap();
    mgr.start().unwrap();
    let id = mgr.submit("p", json!(null)).unwrap();
    wait_status(&mgr, id, Running);
    mgr.pause_task(id).unwrap();
    clock.advance(SEC);
    mgr.resume_task(id, None).unwrap();
    eventually("attempt 2 runs", || {
        let t = mgr.get_task(id).unwrap();
        t.status == Running && t.attempt == 2
    });
    clock.advance(Duration::from_millis(4500));
    assert_eq!(
        status_of(&mgr, id),
        Running,
        "attempt 1's deadline (T0+5 s) is not attempt 2's (T0+6 s)"
    );
    first.open();
    eventually("attempt 1 returned", || late.lock().unwrap().is_some());
    let (check, audit) = late.lock().unwrap().take().unwrap();
    assert_eq!(check, Ok(()), "a paused attempt is not timed out");
    assert!(
        matches!(audit, Err(ContextError::Stale { .. })),
        "{audit:?}"
    );
    assert_eq!(
        status_of(&mgr, id),
        Running,
        "attempt 1's result is dropped"
    );
    clock.advance(Duration::from_millis(500));
    let t = mgr.wait(id, PATIENCE).unwrap();
    assert_eq!(t.status, PermanentlyFailed);
    second.open();
    idle(&mgr);
    let evs = trail(&mgr, id);
    assert_eq!(
        shape(&evs),
        [
            ("task_created", None, Some(Pending), 0, None),
            ("task_claimed", Some(Pending), Some(Running), 0, Some(1)),
            ("task_started", None, None, 0, Some(1)),
            ("task_paused", Some(Running), Some(Paused), 0, Some(1)),
            ("task_status_changed", Some(Paused), Some(Pending), 0, None),
            ("task_claimed", Some(Pending), Some(Running), 0, Some(2)),
            ("task_started", None, None, 0, Some(2)),
            ("task_timed_out", Some(Running), Some(Timeout), 0, Some(2)),
            (
                "task_permanently_failed",
                Some(Timeout),
                Some(PermanentlyFailed),
                0,
                Some(2)
            ),
        ]
    );
    assert_eq!(evs[7].time, T0 + 6000);
}
