//! SPEC §7 (cron tasks) on a manual clock in UTC: validation, first run, rounds,
//! retries and exhaustion, cron parents, catch-up of missed occurrences.

mod common;

use common::{event_names, eventually, PATIENCE};
use fibflow::{
    AttemptOutcome, CatchUp, ChildSpec, Clock, Error, EventType, HandlerOptions, ManualClock,
    Outcome, SubmitOptions, TaskFilter, TaskId, TaskKind, TaskManager, TaskStatus, TimeZone,
};
use serde_json::json;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// 2023-11-14T22:13:20Z, a Tuesday, on a whole second.
const T0: u64 = 1_700_000_000_000;
const SEC: Duration = Duration::from_secs(1);

fn utc_manager(start: u64, catch_up: CatchUp) -> (TaskManager, Arc<ManualClock>) {
    let clock = ManualClock::new(start);
    let mgr = TaskManager::builder()
        .memory()
        .clock(clock.clone())
        .time_zone(TimeZone::from_name("UTC").unwrap())
        .catch_up(catch_up)
        .max_concurrent_tasks(2)
        .build()
        .unwrap();
    (mgr, clock)
}

fn cron(expr: &str) -> SubmitOptions {
    SubmitOptions::new().cron(expr)
}

/// Waits until round `n` (attempt n) has closed and the task is pending again.
fn round_done(mgr: &TaskManager, id: TaskId, n: usize) {
    eventually(&format!("round {n} done"), || {
        let a = mgr.attempts(id).unwrap();
        a.len() == n
            && a.last().unwrap().outcome.is_some()
            && mgr.get_task(id).unwrap().status == TaskStatus::Pending
    });
}

#[test]
fn invalid_expressions_are_rejected_with_a_message_naming_them() {
    let (mgr, _clock) = utc_manager(T0, CatchUp::Once);
    mgr.register("c", |_| Ok(json!(null).into())).unwrap();
    for expr in [
        "61 * * * *",
        "not a cron",
        "* * *",
        "0 0 15W * *",
        "* * * * * * * *",
        "0 0 32 * *",
        "0 0 * * MOO",
    ] {
        let err = mgr.submit_with("c", json!(null), cron(expr)).unwrap_err();
        assert!(matches!(err, Error::Schedule(_)), "{expr}: {err}");
        assert!(
            err.to_string()
                .starts_with(&format!("Invalid cron expression: {expr} (")),
            "{expr}: {err}"
        );
    }
    assert!(
        mgr.list_tasks(&TaskFilter::all()).is_empty(),
        "a rejected call creates nothing"
    );
}

#[test]
fn expressions_with_names_last_day_and_last_weekday_in_a_configured_zone() {
    let (mgr, _clock) = utc_manager(T0, CatchUp::Once);
    mgr.register("c", |_| Ok(json!(null).into())).unwrap();
    let next = |expr: &str| {
        let id = mgr.submit_with("c", json!(null), cron(expr)).unwrap();
        let t = mgr.get_task(id).unwrap();
        assert_eq!(t.kind, TaskKind::Cron);
        assert_eq!(t.cron.as_deref(), Some(expr));
        assert_eq!(t.status, TaskStatus::Pending);
        t.next_run_time
    };
    assert_eq!(
        next("0 0 L * *"),
        1_701_302_400_000,
        "last day of November 2023"
    );
    assert_eq!(
        next("0 0 * * 5L"),
        1_700_784_000_000,
        "last Friday of November 2023"
    );
    assert_eq!(next("0 9 * * MON"), 1_700_470_800_000);
    assert_eq!(
        next("30 0 9 * * MON-FRI"),
        1_700_038_830_000,
        "6 fields with a seconds field"
    );
    assert_eq!(next("0 0 1 JAN *"), 1_704_067_200_000);
    assert_eq!(
        next("0,30 22-23 * * *"),
        T0 + (30 - 13) * 60_000 - 20_000,
        "lists and ranges"
    );

    let paris = TaskManager::builder()
        .memory()
        .clock(ManualClock::new(T0))
        .time_zone(TimeZone::from_name("Europe/Paris").unwrap())
        .build()
        .unwrap();
    paris.register("c", |_| Ok(json!(null).into())).unwrap();
    let id = paris
        .submit_with("c", json!(null), cron("0 9 * * MON"))
        .unwrap();
    assert_eq!(
        paris.get_task(id).unwrap().next_run_time,
        1_700_467_200_000,
        "09:00 in Paris is 08:00 UTC"
    );
}

#[test]
fn the_first_run_is_the_next_occurrence_strictly_after_now() {
    let on_minute = T0 + 40_000; // 22:14:00Z exactly
    let (mgr, clock) = utc_manager(on_minute, CatchUp::Once);
    let runs = Arc::new(AtomicUsize::new(0));
    let r = runs.clone();
    mgr.register("c", move |_| {
        r.fetch_add(1, Ordering::SeqCst);
        Ok(json!(null).into())
    })
    .unwrap();
    mgr.start().unwrap();
    let m = mgr
        .submit_with("c", json!(null), cron("* * * * *"))
        .unwrap();
    let s = mgr
        .submit_with("c", json!(null), cron("*/10 * * * * *"))
        .unwrap();
    assert_eq!(
        mgr.get_task(m).unwrap().next_run_time,
        on_minute + 60_000,
        "not the current minute"
    );
    assert_eq!(mgr.get_task(s).unwrap().next_run_time, on_minute + 10_000);
    assert!(mgr
        .waiting_reason(m)
        .unwrap()
        .unwrap()
        .contains("scheduled"));
    clock.advance(Duration::from_millis(9_999));
    assert_eq!(runs.load(Ordering::SeqCst), 0);
    assert_eq!(mgr.get_task(s).unwrap().status, TaskStatus::Pending);
    clock.advance(Duration::from_millis(1));
    round_done(&mgr, s, 1);
    assert_eq!(
        mgr.attempts(m).unwrap().len(),
        0,
        "the minute schedule is not due yet"
    );
}

#[test]
fn a_successful_round_returns_to_pending_at_the_next_occurrence_and_keeps_its_result() {
    let (mgr, clock) = utc_manager(T0, CatchUp::Once);
    let rounds = Arc::new(AtomicUsize::new(0));
    let r = rounds.clone();
    mgr.register("tick", move |ctx| {
        let n = r.fetch_add(1, Ordering::SeqCst) + 1;
        Ok(json!({ "round": n, "stage": ctx.stage() }).into())
    })
    .unwrap();
    mgr.start().unwrap();
    let id = mgr
        .submit_with("tick", json!(null), cron("*/1 * * * * *"))
        .unwrap();
    assert_eq!(mgr.get_task(id).unwrap().next_run_time, T0 + 1_000);
    for n in 1..=3u64 {
        clock.advance(SEC);
        round_done(&mgr, id, n as usize);
        let t = mgr.get_task(id).unwrap();
        assert_eq!(t.status, TaskStatus::Pending);
        assert_eq!(t.kind, TaskKind::Cron);
        assert_eq!(
            t.result,
            Some(json!({ "round": n, "stage": 0 })),
            "the result is kept"
        );
        assert_eq!(t.next_run_time, T0 + (n + 1) * 1_000, "next occurrence");
        assert_eq!((t.stage, t.retry_count), (0, 0));
        let a = mgr.attempts(id).unwrap();
        assert_eq!(a.last().unwrap().outcome, Some(AttemptOutcome::Completed));
        assert_eq!(a.last().unwrap().number, n as u32);
        let ev = mgr.events(id).unwrap().pop().unwrap();
        assert_eq!(ev.event_type, EventType::StatusChanged);
        assert_eq!(
            (ev.from_status, ev.to_status),
            (Some(TaskStatus::Running), Some(TaskStatus::Pending))
        );
        assert_eq!(ev.metadata["next_run_time"], T0 + (n + 1) * 1_000);
        assert_eq!(ev.attempt, Some(n as u32));
    }
    let names = event_names(&mgr, id);
    assert!(!names.contains(&"task_completed"), "{names:?}");
    assert_eq!(
        names,
        [
            "task_created",
            "task_claimed",
            "task_started",
            "task_status_changed",
            "task_claimed",
            "task_started",
            "task_status_changed",
            "task_claimed",
            "task_started",
            "task_status_changed"
        ]
    );
    // No round runs before its occurrence.
    clock.advance(Duration::from_millis(999));
    assert!(matches!(
        mgr.wait(id, Duration::from_millis(30)),
        Err(Error::WaitTimeout { .. })
    ));
    assert_eq!(mgr.attempts(id).unwrap().len(), 3);
}

#[test]
fn a_failure_is_retried_within_the_round_and_retry_count_resets_after_success() {
    let (mgr, clock) = utc_manager(T0, CatchUp::Once);
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let s = seen.clone();
    mgr.register_with("c", HandlerOptions::new().max_retries(3), move |ctx| {
        let mut v = s.lock().unwrap();
        v.push(ctx.retry_count());
        if v.len() == 1 {
            return Err("first run fails".into());
        }
        Ok(json!(v.len()).into())
    })
    .unwrap();
    mgr.start().unwrap();
    let id = mgr
        .submit_with("c", json!(null), cron("*/1 * * * * *"))
        .unwrap();
    clock.advance(SEC);
    round_done(&mgr, id, 2);
    let t = mgr.get_task(id).unwrap();
    assert_eq!(t.retry_count, 0, "reset after a successful round");
    assert_eq!(
        t.error.as_deref(),
        Some("first run fails"),
        "the last error is kept"
    );
    assert_eq!(t.next_run_time, T0 + 2_000);
    clock.advance(SEC);
    round_done(&mgr, id, 3);
    assert_eq!(*seen.lock().unwrap(), [0, 1, 0]);
    let outcomes: Vec<_> = mgr
        .attempts(id)
        .unwrap()
        .iter()
        .map(|a| a.outcome.unwrap())
        .collect();
    assert_eq!(
        outcomes,
        [
            AttemptOutcome::Failed,
            AttemptOutcome::Completed,
            AttemptOutcome::Completed
        ]
    );
}

#[test]
fn exhausted_retries_pause_a_cron_task_with_retry_exhausted_metadata() {
    let (mgr, clock) = utc_manager(T0, CatchUp::Once);
    let runs = Arc::new(AtomicUsize::new(0));
    let r = runs.clone();
    mgr.register_with(
        "c",
        HandlerOptions::new()
            .max_retries(2)
            .retry_interval(Duration::from_secs(5)),
        move |_| {
            if r.fetch_add(1, Ordering::SeqCst) < 2 {
                Err("down".into())
            } else {
                Ok(json!("up").into())
            }
        },
    )
    .unwrap();
    mgr.start().unwrap();
    let id = mgr
        .submit_with("c", json!(null), cron("*/1 * * * * *"))
        .unwrap();
    clock.advance(SEC);
    // SPEC §4: failed until the retry is due, then pending with retry_count 1.
    eventually("first failure", || {
        mgr.get_task(id).unwrap().status == TaskStatus::Failed
    });
    assert_eq!(
        mgr.get_task(id).unwrap().next_run_time,
        T0 + 6_000,
        "the retry interval, not the schedule"
    );
    clock.advance(Duration::from_secs(5));
    let t = mgr.wait(id, PATIENCE).unwrap();
    assert_eq!(t.status, TaskStatus::Paused);
    assert_eq!(t.error.as_deref(), Some("down"));
    let ev = mgr.events(id).unwrap().pop().unwrap();
    assert_eq!(ev.event_type, EventType::Paused);
    assert_eq!(
        (ev.from_status, ev.to_status),
        (Some(TaskStatus::Failed), Some(TaskStatus::Paused))
    );
    assert_eq!(ev.metadata["reason"], "retry_exhausted");
    assert_eq!(ev.metadata["retry_exhausted"], true);
    assert!(!event_names(&mgr, id).contains(&"task_permanently_failed"));
    // A paused cron task runs no more rounds.
    for _ in 0..5 {
        clock.advance(SEC);
    }
    assert_eq!(runs.load(Ordering::SeqCst), 2);
    // resume_task from paused: stage 0, retry_count 0, runs now, then back on schedule.
    mgr.resume_task(id, None).unwrap();
    let now = clock.now_ms();
    round_done(&mgr, id, 3);
    let t = mgr.get_task(id).unwrap();
    assert_eq!((t.retry_count, t.stage), (0, 0));
    assert_eq!(t.result, Some(json!("up")));
    assert_eq!(t.next_run_time, now + 1_000);
}

#[test]
fn pause_task_stops_a_pending_cron_task_and_resume_runs_it_now() {
    let (mgr, clock) = utc_manager(T0, CatchUp::Once);
    mgr.register("c", |_| Ok(json!("ran").into())).unwrap();
    mgr.start().unwrap();
    let id = mgr
        .submit_with("c", json!(null), cron("0 0 * * *"))
        .unwrap();
    mgr.pause_task(id).unwrap();
    assert_eq!(mgr.wait(id, PATIENCE).unwrap().status, TaskStatus::Paused);
    clock.advance(Duration::from_hours(24));
    assert_eq!(mgr.attempts(id).unwrap().len(), 0);
    mgr.resume_task(id, None).unwrap();
    round_done(&mgr, id, 1);
    let t = mgr.get_task(id).unwrap();
    assert_eq!(t.result, Some(json!("ran")));
    assert_eq!(
        t.next_run_time, 1_700_092_800_000,
        "back on schedule: next midnight UTC"
    );
}

#[test]
fn a_cron_parent_fans_out_each_round_and_returns_to_its_schedule() {
    let (mgr, clock) = utc_manager(T0, CatchUp::Once);
    mgr.register("child", |ctx| {
        Ok(json!(ctx.payload()["n"].as_u64().unwrap() * 2).into())
    })
    .unwrap();
    mgr.register("parent", |ctx| {
        if ctx.stage() == 0 {
            let kids = (1..=2)
                .map(|n| ChildSpec::new("child", json!({ "n": n })))
                .collect();
            return Ok(Outcome::Spawn {
                children: kids,
                context: Some(b"round".to_vec()),
            });
        }
        let sum: u64 = ctx
            .result()
            .unwrap()
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["result"].as_u64().unwrap())
            .sum();
        Ok(json!({ "sum": sum, "ctx": ctx.context().is_some() }).into())
    })
    .unwrap();
    mgr.start().unwrap();
    let id = mgr
        .submit_with("parent", json!(null), cron("*/1 * * * * *"))
        .unwrap();
    for round in 1..=2u32 {
        clock.advance(SEC);
        eventually("round finished", || {
            let t = mgr.get_task(id).unwrap();
            t.status == TaskStatus::Pending
                && t.completed_children == 2 * round
                && t.stage == 0
                && t.result.is_some()
        });
        let t = mgr.get_task(id).unwrap();
        assert_eq!(t.result, Some(json!({ "sum": 6, "ctx": true })));
        assert_eq!(t.total_children, 2 * round);
        assert_eq!(t.next_run_time, T0 + u64::from(round + 1) * 1_000);
    }
    let kids = mgr.list_tasks(&TaskFilter::all().parent(id));
    assert_eq!(kids.len(), 4);
    assert!(kids
        .iter()
        .all(|k| k.kind == TaskKind::Async && k.root_id == Some(id) && k.cron.is_none()));
}

#[test]
fn a_fail_parent_child_pauses_a_cron_parent() {
    let (mgr, clock) = utc_manager(T0, CatchUp::Once);
    mgr.register_with("bad", HandlerOptions::new().max_retries(1), |_| {
        Err("child broke".into())
    })
    .unwrap();
    mgr.register("parent", |ctx| {
        if ctx.stage() == 0 {
            return Ok(Outcome::spawn(vec![
                ChildSpec::new("bad", json!(null)).fail_parent()
            ]));
        }
        Ok(json!("unreachable").into())
    })
    .unwrap();
    mgr.start().unwrap();
    let id = mgr
        .submit_with("parent", json!(null), cron("*/1 * * * * *"))
        .unwrap();
    clock.advance(SEC);
    let t = mgr.wait(id, PATIENCE).unwrap();
    assert_eq!(t.status, TaskStatus::Paused);
    assert!(
        t.error.as_deref().unwrap().contains("child broke"),
        "{:?}",
        t.error
    );
    let ev = mgr.events(id).unwrap().pop().unwrap();
    assert_eq!(ev.event_type, EventType::Paused);
    assert_eq!(
        (ev.from_status, ev.to_status),
        (Some(TaskStatus::Suspended), Some(TaskStatus::Paused))
    );
    assert_eq!(ev.metadata["reason"], "child_failed");
    clock.advance(Duration::from_secs(10));
    assert_eq!(
        mgr.attempts(id).unwrap().len(),
        1,
        "a paused cron parent runs no more rounds"
    );
}

// Occurrences missed while the manager was not running (submitted, then started 30 s
// later on an in-memory manager). The restart-after-crash path of the same policy
// needs the durable log and belongs with the crash tests.
#[test]
fn missed_occurrences_run_once_then_the_schedule_resumes() {
    let (mgr, clock) = utc_manager(T0, CatchUp::Once);
    mgr.register("c", |_| Ok(json!("caught up").into()))
        .unwrap();
    let id = mgr
        .submit_with("c", json!(null), cron("*/1 * * * * *"))
        .unwrap();
    clock.advance(Duration::from_secs(30)); // 30 occurrences pass before the manager starts
    mgr.start().unwrap();
    round_done(&mgr, id, 1);
    let t = mgr.get_task(id).unwrap();
    assert_eq!(
        t.next_run_time,
        T0 + 31_000,
        "the next occurrence after now, no burst"
    );
    assert!(matches!(
        mgr.wait(id, Duration::from_millis(50)),
        Err(Error::WaitTimeout { .. })
    ));
    assert_eq!(mgr.attempts(id).unwrap().len(), 1);
    clock.advance(SEC);
    round_done(&mgr, id, 2);
}

#[test]
fn catch_up_all_runs_every_missed_occurrence() {
    let (mgr, clock) = utc_manager(T0, CatchUp::All);
    mgr.register("c", |_| Ok(json!(null).into())).unwrap();
    let id = mgr
        .submit_with("c", json!(null), cron("*/1 * * * * *"))
        .unwrap();
    clock.advance(Duration::from_secs(5)); // occurrences T0+1s ..= T0+5s
    mgr.start().unwrap();
    round_done(&mgr, id, 5);
    assert_eq!(mgr.get_task(id).unwrap().next_run_time, T0 + 6_000);
    assert!(matches!(
        mgr.wait(id, Duration::from_millis(50)),
        Err(Error::WaitTimeout { .. })
    ));
    assert_eq!(mgr.attempts(id).unwrap().len(), 5);
}

#[test]
fn skip_catch_up_moves_a_missed_round_to_the_next_occurrence() {
    // 2024-01-01T00:00:00Z, a 10-second schedule, submitted before start.
    let start = 1_704_067_200_000;
    let (mgr, clock) = utc_manager(start, CatchUp::Skip);
    let runs = Arc::new(AtomicUsize::new(0));
    let r = runs.clone();
    mgr.register("tick", move |_| {
        r.fetch_add(1, Ordering::SeqCst);
        Ok(json!(null).into())
    })
    .unwrap();
    let id = mgr
        .submit_with(
            "tick",
            json!(null),
            SubmitOptions::new().cron("*/10 * * * * *"),
        )
        .unwrap();
    assert_eq!(mgr.get_task(id).unwrap().next_run_time, start + 10_000);
    clock.advance(Duration::from_secs(25)); // the 10 s and 20 s occurrences pass unseen
    mgr.start().unwrap();
    let t = mgr.get_task(id).unwrap();
    assert_eq!(
        t.next_run_time,
        start + 30_000,
        "skipped to the next occurrence"
    );
    assert_eq!(t.status, TaskStatus::Pending);
    let last = mgr.events(id).unwrap().pop().unwrap();
    assert_eq!(last.metadata["reason"], "catch_up");
    assert_eq!(
        runs.load(Ordering::SeqCst),
        0,
        "the missed rounds did not run"
    );
    clock.advance(Duration::from_secs(5));
    eventually("the next occurrence ran", || {
        runs.load(Ordering::SeqCst) == 1
    });
}
