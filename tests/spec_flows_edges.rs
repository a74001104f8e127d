//! SPEC §5–§12 edges (black box): workflows, resume and cancel, cron, audit,
//! queries, retention and quarantine. Each test names the clause it checks. Manual clocks where time matters; conditions with generous
//! deadlines, never fixed sleeps.

mod common;

use chrono::{TimeZone as _, Utc};
use common::fib::{events_of, status_of};
use common::{children_of, event_names, eventually, Gate, PATIENCE};
use fibflow::{
    AttemptFilter, AttemptOutcome, CatchUp, ChildSpec, Error, EventFilter, EventType,
    HandlerOptions, ManualClock, Outcome, Page, RetentionPolicy, SubmitOptions, TaskFilter, TaskId,
    TaskKind, TaskManager, TaskStatus, TimeZone,
};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// 2023-11-14T22:13:20Z.
const T0: u64 = 1_700_000_000_000;

fn utc_manager(start: u64, workers: usize) -> (TaskManager, Arc<ManualClock>) {
    let clock = ManualClock::new(start);
    let mgr = TaskManager::builder()
        .memory()
        .clock(clock.clone())
        .time_zone(TimeZone::from_name("UTC").unwrap())
        .catch_up(CatchUp::Once)
        .max_concurrent_tasks(workers)
        .build()
        .unwrap();
    (mgr, clock)
}

fn durable(dir: &std::path::Path, clock: &Arc<ManualClock>) -> fibflow::Builder {
    TaskManager::builder()
        .dir(dir)
        .segment_size(1 << 20)
        .clock(clock.clone())
        .time_zone(TimeZone::from_name("UTC").unwrap())
        .max_concurrent_tasks(2)
}

fn cron(expr: &str) -> SubmitOptions {
    SubmitOptions::new().cron(expr)
}

fn ms(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> u64 {
    Utc.with_ymd_and_hms(y, mo, d, h, mi, s)
        .unwrap()
        .timestamp_millis() as u64
}

fn wait_status(mgr: &TaskManager, id: TaskId, s: TaskStatus) {
    eventually(&format!("task {id} {s}"), || {
        mgr.get_task(id).is_some_and(|t| t.status == s)
    });
}

// ---------------------------------------------------------------------------
// §7 cron
// ---------------------------------------------------------------------------

/// §7: 5 and 6 fields, names, ranges, lists, steps, L and 5L; W and other
/// invalid expressions rejected with an error naming the expression.
#[test]
fn s7_cron_expression_matrix() {
    let (mgr, _clock) = utc_manager(T0, 1);
    mgr.register("c", |_| Ok(json!(null).into())).unwrap();
    let next = |expr: &str| -> u64 {
        let id = mgr
            .submit_with("c", json!(null), cron(expr))
            .unwrap_or_else(|e| panic!("{expr}: {e}"));
        mgr.get_task(id).unwrap().next_run_time
    };
    // now = Tue 2023-11-14 22:13:20 UTC
    let cases: Vec<(&str, u64)> = vec![
        ("*/15 * * * *", ms(2023, 11, 14, 22, 15, 0)),
        ("*/7 * * * * *", ms(2023, 11, 14, 22, 13, 21)),
        ("0 0 1-10/3 * *", ms(2023, 12, 1, 0, 0, 0)),
        ("0 0 * JAN-MAR *", ms(2024, 1, 1, 0, 0, 0)),
        ("0 0 * jan-mar mon", ms(2024, 1, 1, 0, 0, 0)),
        ("0 0 * * 7", ms(2023, 11, 19, 0, 0, 0)),
        ("0 0 * * sun", ms(2023, 11, 19, 0, 0, 0)),
        ("0 0 * * SAT-SUN", ms(2023, 11, 18, 0, 0, 0)),
        ("0 0 * * MON,WED,FRI", ms(2023, 11, 15, 0, 0, 0)),
        ("0 0 L 2 *", ms(2024, 2, 29, 0, 0, 0)),
        ("0 0 * DEC 5L", ms(2023, 12, 29, 0, 0, 0)),
        ("0 0 L,15 * *", ms(2023, 11, 15, 0, 0, 0)),
        ("30 12 * * * *", ms(2023, 11, 14, 22, 12, 30) + 3_600_000),
        ("5 4 3 2 *", ms(2024, 2, 3, 4, 5, 0)),
        ("0 22-23/1 * * *", ms(2023, 11, 14, 23, 0, 0)),
        ("0 0 1,15 * MON", ms(2023, 11, 15, 0, 0, 0)),
    ];
    let mut bad = Vec::new();
    for (expr, want) in &cases {
        let got = next(expr);
        if got != *want {
            bad.push(format!("{expr}: got {got}, want {want}"));
        }
    }
    let invalid = [
        "*/0 * * * *",
        "0 0 * * 8",
        "0 24 * * *",
        "0 0 0 * *",
        "0 0 * 13 *",
        "0 0 * 0 *",
        "0 0 LW * *",
        "0 0 15w * *",
        "@daily",
        "",
        "60 * * * * *",
        "0 0 * * MON-",
        "0 0 1,,2 * *",
    ];
    for expr in invalid {
        match mgr.submit_with("c", json!(null), cron(expr)) {
            Ok(id) => bad.push(format!(
                "`{expr}` accepted, next {}",
                mgr.get_task(id).unwrap().next_run_time
            )),
            Err(e) => {
                let msg = e.to_string();
                if !matches!(e, Error::Schedule(_))
                    || !msg.contains(&format!("Invalid cron expression: {expr}"))
                {
                    bad.push(format!("`{expr}`: {msg}"));
                }
            }
        }
    }
    assert!(bad.is_empty(), "{bad:#?}");
}

/// §7: "The first run is the next occurrence strictly after now", with now
/// exactly on an occurrence (5 and 6 fields).
#[test]
fn s7_first_run_is_strictly_after_now_when_now_is_an_occurrence() {
    let (mgr, clock) = utc_manager(T0, 1);
    mgr.register("c", |_| Ok(json!(null).into())).unwrap();
    let id = mgr
        .submit_with("c", json!(null), cron("20 13 22 * * *"))
        .unwrap();
    assert_eq!(mgr.get_task(id).unwrap().next_run_time, T0 + 86_400_000);
    clock.set(ms(2023, 11, 14, 22, 13, 0));
    let id = mgr
        .submit_with("c", json!(null), cron("13 22 * * *"))
        .unwrap();
    assert_eq!(
        mgr.get_task(id).unwrap().next_run_time,
        ms(2023, 11, 15, 22, 13, 0)
    );
    clock.set(ms(2023, 11, 14, 22, 13, 0) + 999);
    let id = mgr
        .submit_with("c", json!(null), cron("* * * * * *"))
        .unwrap();
    assert_eq!(
        mgr.get_task(id).unwrap().next_run_time,
        ms(2023, 11, 14, 22, 13, 1)
    );
}

/// §7 + §4 + §6: a cron task that keeps failing is paused with retry_exhausted
/// after max_retries attempts (no wait for the interval); resume_task runs it
/// now at stage 0 with retry_count 0; a successful round then returns it to its
/// schedule with the result kept, no task_completed, and retry_count 0.
#[test]
fn s7_exhausted_cron_task_resumes_and_returns_to_its_schedule() {
    let (mgr, clock) = utc_manager(T0, 1);
    let fail = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let f2 = fail.clone();
    mgr.register_with(
        "c",
        HandlerOptions::new()
            .max_retries(2)
            .retry_interval(Duration::from_secs(10)),
        move |ctx| {
            if f2.load(Ordering::SeqCst) {
                Err(format!("round failure at attempt {}", ctx.attempt()).into())
            } else {
                Ok(json!({"attempt": ctx.attempt(), "retry_count": ctx.retry_count()}).into())
            }
        },
    )
    .unwrap();
    mgr.start().unwrap();
    let id = mgr
        .submit_with("c", json!(null), cron("0 * * * *"))
        .unwrap();
    let first = ms(2023, 11, 14, 23, 0, 0);
    assert_eq!(mgr.get_task(id).unwrap().next_run_time, first);
    clock.set(first);
    eventually("attempt 1 failed", || {
        status_of(&mgr, id) == TaskStatus::Failed
    });
    clock.advance(Duration::from_secs(10));
    let t = mgr.wait(id, PATIENCE).unwrap();
    assert_eq!(t.status, TaskStatus::Paused);
    assert_eq!(t.retry_count, 1);
    assert_eq!(t.error.as_deref(), Some("round failure at attempt 2"));
    let paused = events_of(&mgr, id, EventType::Paused);
    assert_eq!(paused.len(), 1);
    assert_eq!(paused[0].metadata["retry_exhausted"], json!(true));
    assert_eq!(paused[0].from_status, Some(TaskStatus::Failed));
    let rs = events_of(&mgr, id, EventType::RetryStarted);
    assert_eq!(rs.len(), 1);
    assert_eq!(rs[0].attempt, Some(2));

    // resume from paused: stage 0, retry_count 0, next_run_time = now
    fail.store(false, Ordering::SeqCst);
    clock.advance(Duration::from_secs(5));
    let now = clock_now(&clock);
    mgr.pause();
    mgr.resume_task(id, None).unwrap();
    let t = mgr.get_task(id).unwrap();
    assert_eq!(t.status, TaskStatus::Pending);
    assert_eq!(t.stage, 0);
    assert_eq!(t.retry_count, 0);
    assert_eq!(t.next_run_time, now);
    let sc = events_of(&mgr, id, EventType::StatusChanged);
    let last = sc.last().unwrap();
    assert_eq!(last.from_status, Some(TaskStatus::Paused));
    assert_eq!(last.to_status, Some(TaskStatus::Pending));
    mgr.resume();
    eventually("round after resume done", || {
        let a = mgr.attempts(id).unwrap();
        a.len() == 3 && a[2].outcome.is_some() && status_of(&mgr, id) == TaskStatus::Pending
    });
    let t = mgr.get_task(id).unwrap();
    assert_eq!(t.result, Some(json!({"attempt": 3, "retry_count": 0})));
    assert_eq!(t.retry_count, 0);
    assert_eq!(t.next_run_time, ms(2023, 11, 15, 0, 0, 0));
    assert!(events_of(&mgr, id, EventType::Completed).is_empty());
    assert_eq!(
        mgr.attempts(id).unwrap()[2].outcome,
        Some(AttemptOutcome::Completed)
    );
    assert_eq!(events_of(&mgr, id, EventType::RetryStarted).len(), 1);
}

fn clock_now(c: &ManualClock) -> u64 {
    fibflow::Clock::now_ms(c)
}

/// §7 + §4: a failed round is retried; after the successful retry the task is
/// pending at the next occurrence and retry_count is back to 0, so the next
/// round's failure gets the full retry budget again.
#[test]
fn s7_retry_count_resets_after_a_successful_round_so_the_next_round_gets_all_retries() {
    let (mgr, clock) = utc_manager(T0, 1);
    let calls = Arc::new(AtomicUsize::new(0));
    let c2 = calls.clone();
    // attempts: 1 fail, 2 ok (round 1); 3 fail, 4 ok (round 2)
    mgr.register_with("c", HandlerOptions::new().max_retries(2), move |ctx| {
        c2.fetch_add(1, Ordering::SeqCst);
        if ctx.attempt() % 2 == 1 {
            Err("odd".into())
        } else {
            Ok(json!(ctx.attempt()).into())
        }
    })
    .unwrap();
    mgr.start().unwrap();
    let id = mgr
        .submit_with("c", json!(null), cron("0 * * * *"))
        .unwrap();
    clock.set(ms(2023, 11, 14, 23, 0, 0));
    eventually("round 1", || {
        let a = mgr.attempts(id).unwrap();
        a.len() == 2 && a[1].outcome.is_some() && status_of(&mgr, id) == TaskStatus::Pending
    });
    assert_eq!(mgr.get_task(id).unwrap().retry_count, 0);
    clock.set(ms(2023, 11, 15, 0, 0, 0));
    eventually("round 2", || {
        let a = mgr.attempts(id).unwrap();
        a.len() == 4 && a[3].outcome.is_some() && status_of(&mgr, id) == TaskStatus::Pending
    });
    let t = mgr.get_task(id).unwrap();
    assert_eq!(t.retry_count, 0);
    assert_eq!(t.result, Some(json!(4)));
    assert_eq!(t.next_run_time, ms(2023, 11, 15, 1, 0, 0));
}

/// §7: a configured named time zone moves the wall-clock schedule.
#[test]
fn s7_configured_time_zone_moves_the_schedule() {
    let clock = ManualClock::new(T0);
    let mgr = TaskManager::builder()
        .memory()
        .clock(clock.clone())
        .time_zone(TimeZone::from_name("Asia/Tokyo").unwrap())
        .build()
        .unwrap();
    mgr.register("c", |_| Ok(json!(null).into())).unwrap();
    let id = mgr
        .submit_with("c", json!(null), cron("0 9 * * *"))
        .unwrap();
    // 09:00 JST = 00:00 UTC; now is 2023-11-15 07:13 JST.
    assert_eq!(
        mgr.get_task(id).unwrap().next_run_time,
        ms(2023, 11, 15, 0, 0, 0)
    );
    assert!(TimeZone::from_name("Mars/Olympus").is_err());
}

/// §7: missed occurrences while the process was down run once after a reopen,
/// then the schedule resumes (no burst).
#[test]
fn s7_missed_occurrences_after_a_reopen_run_once() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let runs = Arc::new(AtomicUsize::new(0));
    let id = {
        let mgr = durable(dir.path(), &clock).build().unwrap();
        mgr.register("c", |_| Ok(json!("r").into())).unwrap();
        let id = mgr
            .submit_with("c", json!(null), cron("*/10 * * * *"))
            .unwrap();
        mgr.stop(PATIENCE).unwrap();
        id
    };
    // down for ~5 hours: 30 occurrences missed
    clock.set(ms(2023, 11, 15, 3, 17, 0));
    let mgr = common::build_unlocked(durable(dir.path(), &clock)).unwrap();
    let r2 = runs.clone();
    mgr.register("c", move |_| {
        r2.fetch_add(1, Ordering::SeqCst);
        Ok(json!("r").into())
    })
    .unwrap();
    mgr.start().unwrap();
    eventually("caught up", || {
        runs.load(Ordering::SeqCst) == 1
            && status_of(&mgr, id) == TaskStatus::Pending
            && mgr.attempts(id).unwrap().len() == 1
            && mgr.attempts(id).unwrap()[0].outcome.is_some()
    });
    let t = mgr.get_task(id).unwrap();
    assert_eq!(t.next_run_time, ms(2023, 11, 15, 3, 20, 0));
    clock.set(ms(2023, 11, 15, 3, 20, 0));
    eventually("next round", || {
        mgr.attempts(id).unwrap().len() == 2
            && status_of(&mgr, id) == TaskStatus::Pending
            && mgr.attempts(id).unwrap()[1].outcome.is_some()
    });
    assert_eq!(runs.load(Ordering::SeqCst), 2);
    mgr.stop(PATIENCE).unwrap();
}

// ---------------------------------------------------------------------------
// §5 workflows
// ---------------------------------------------------------------------------

/// §5: fail_parent on a cron parent pauses it (not permanently_failed);
/// resume_task restarts it at stage 0 and a successful round returns it to
/// its schedule.
#[test]
fn s5_fail_parent_pauses_a_cron_parent_and_resume_restarts_the_round() {
    let (mgr, clock) = utc_manager(T0, 2);
    let fail = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let f2 = fail.clone();
    mgr.register_with("kid", HandlerOptions::new().max_retries(1), move |_| {
        if f2.load(Ordering::SeqCst) {
            Err("kid broke".into())
        } else {
            Ok(json!("kid ok").into())
        }
    })
    .unwrap();
    mgr.register("p", |ctx| {
        if ctx.stage() == 0 {
            return Ok(Outcome::spawn(vec![
                ChildSpec::new("kid", json!(1)).fail_parent()
            ]));
        }
        Ok(json!({"stage": ctx.stage(), "seen": ctx.result().cloned()}).into())
    })
    .unwrap();
    mgr.start().unwrap();
    let id = mgr
        .submit_with("p", json!(null), cron("0 * * * *"))
        .unwrap();
    clock.set(ms(2023, 11, 14, 23, 0, 0));
    let t = mgr.wait(id, PATIENCE).unwrap();
    assert_eq!(t.status, TaskStatus::Paused);
    let kid = children_of(&mgr, id)[0].id;
    assert!(
        t.error.as_deref().unwrap().contains("kid broke"),
        "{:?}",
        t.error
    );
    assert!(
        t.error.as_deref().unwrap().contains(&kid.to_string()),
        "{:?}",
        t.error
    );
    fail.store(false, Ordering::SeqCst);
    mgr.resume_task(id, None).unwrap();
    eventually("round done", || {
        status_of(&mgr, id) == TaskStatus::Pending
            && mgr.get_task(id).unwrap().result.is_some()
            && mgr
                .attempts(id)
                .unwrap()
                .iter()
                .all(|a| a.outcome.is_some())
            && mgr.attempts(id).unwrap().len() == 3
    });
    let t = mgr.get_task(id).unwrap();
    assert_eq!(t.stage, 0, "a cron round ends at stage 0");
    assert_eq!(t.next_run_time, ms(2023, 11, 15, 0, 0, 0));
    let kids = children_of(&mgr, id);
    assert_eq!(kids.len(), 2);
    assert_eq!(
        t.result,
        Some(json!({"stage": 1, "seen": [{"task_id": kids[1].id.0, "result": "kid ok"}]}))
    );
    assert!(events_of(&mgr, id, EventType::Completed).is_empty());
}

/// §5: "Each child's outcome is delivered to its parent exactly once": a
/// fail_parent child fails its async parent at once; siblings still running
/// finish later and deliver nothing more (no event, no counter change).
#[test]
fn s5_fail_parent_with_siblings_running_fails_the_parent_once() {
    let (mgr, _clock) = utc_manager(T0, 4);
    let gate = Gate::new();
    let g = gate.clone();
    mgr.register("slow", move |_| {
        g.wait();
        Ok(json!("slow done").into())
    })
    .unwrap();
    mgr.register_with("bad", HandlerOptions::new().max_retries(1), |_| {
        Err("bad: verbatim \"text\"".into())
    })
    .unwrap();
    mgr.register("p", |ctx| {
        if ctx.stage() == 0 {
            return Ok(Outcome::spawn(vec![
                ChildSpec::new("slow", json!(0)),
                ChildSpec::new("bad", json!(1)).fail_parent(),
                ChildSpec::new("slow", json!(2)),
            ]));
        }
        Ok(json!("should not run").into())
    })
    .unwrap();
    mgr.start().unwrap();
    let id = mgr.submit("p", json!(null)).unwrap();
    let t = mgr.wait(id, PATIENCE).unwrap();
    assert_eq!(t.status, TaskStatus::PermanentlyFailed);
    let n_events = mgr.events(id).unwrap().len();
    let kids = children_of(&mgr, id);
    assert_eq!(
        t.error.as_deref(),
        Some(format!("Child task {} failed: bad: verbatim \"text\"", kids[1].id).as_str())
    );
    gate.open();
    for k in [kids[0].id, kids[2].id] {
        mgr.wait(k, PATIENCE).unwrap();
    }
    // give the deliveries (if any) a chance: they happen under the child's lock
    let t2 = mgr.get_task(id).unwrap();
    assert_eq!(t2.status, TaskStatus::PermanentlyFailed);
    assert_eq!(mgr.events(id).unwrap().len(), n_events);
    assert_eq!(t2.attempt, 1);
    assert_eq!(t2.total_children, 3);
}

/// §5: child options: child spec, else the child handler's *current*
/// registration (re-registered between rounds), else the parent.
#[test]
fn s5_child_options_follow_the_current_registration_between_rounds() {
    let (mgr, _clock) = utc_manager(T0, 2);
    mgr.register("kid", |_| Ok(json!(null).into())).unwrap();
    let reg_gate = Gate::new();
    let spawned = Arc::new(AtomicUsize::new(0));
    let (rg, sp) = (reg_gate.clone(), spawned.clone());
    mgr.register("p", move |ctx| match ctx.stage() {
        0 => Ok(Outcome::spawn(vec![ChildSpec::new("kid", json!(0))])),
        1 => {
            sp.store(1, Ordering::SeqCst);
            rg.wait();
            Ok(Outcome::spawn(vec![
                ChildSpec::new("kid", json!(1)),
                ChildSpec::new("kid", json!(2)).priority(-3).max_retries(9),
            ]))
        }
        _ => Ok(json!("done").into()),
    })
    .unwrap();
    mgr.start().unwrap();
    let opts = SubmitOptions::new()
        .priority(4)
        .timeout(Duration::from_secs(70))
        .max_retries(6)
        .retry_interval(Duration::from_secs(2));
    let id = mgr.submit_with("p", json!(null), opts).unwrap();
    eventually("stage 1 running", || spawned.load(Ordering::SeqCst) == 1);
    mgr.register_with(
        "kid",
        HandlerOptions::new()
            .priority(8)
            .timeout(Duration::from_secs(5))
            .max_retries(2),
        |_| Ok(json!(null).into()),
    )
    .unwrap();
    reg_gate.open();
    assert_eq!(
        mgr.wait(id, PATIENCE).unwrap().status,
        TaskStatus::Completed
    );
    let kids = children_of(&mgr, id);
    assert_eq!(kids.len(), 3);
    let got: Vec<_> = kids
        .iter()
        .map(|k| (k.priority, k.timeout_ms, k.max_retries, k.retry_interval_ms))
        .collect();
    assert_eq!(
        got,
        vec![
            (4, 70_000, 6, 2_000),
            (8, 5_000, 2, 2_000),
            (-3, 5_000, 9, 2_000)
        ]
    );
    for k in &kids {
        assert_eq!(k.kind, TaskKind::Async);
        assert_eq!(k.root_id, Some(id));
        assert_eq!(k.context, None);
    }
}

/// §5: several spawn rounds: stage increments, each round's entries are the
/// round's children only, sorted by id, error text verbatim; counters count
/// every child; the parent's result is cleared on each spawn.
#[test]
fn s5_three_rounds_with_errors_verbatim_and_counters() {
    let (mgr, _clock) = utc_manager(T0, 3);
    mgr.register_with("k", HandlerOptions::new().max_retries(1), |ctx| {
        let p = ctx.payload();
        if let Some(e) = p.get("err") {
            return Err(e.as_str().unwrap().to_owned().into());
        }
        Ok(json!({"echo": p.clone()}).into())
    })
    .unwrap();
    let seen = Arc::new(parking_lot_free::Log::default());
    let s2 = seen.clone();
    mgr.register("p", move |ctx| {
        s2.push((
            ctx.stage(),
            ctx.result().cloned(),
            ctx.context().map(<[u8]>::to_vec),
        ));
        match ctx.stage() {
            0 => Ok(Outcome::Spawn {
                children: vec![
                    ChildSpec::new("k", json!({"err": "  spaced\nmulti-line  ü "})),
                    ChildSpec::new("k", json!({"n": 1})),
                ],
                context: Some(b"c0".to_vec()),
            }),
            1 => Ok(Outcome::spawn(vec![
                ChildSpec::new("k", json!({"n": 2})),
                ChildSpec::new("k", json!({"n": 3})),
                ChildSpec::new("k", json!({"err": ""})),
            ])),
            _ => Ok(json!("end").into()),
        }
    })
    .unwrap();
    mgr.start().unwrap();
    let id = mgr.submit("p", json!(null)).unwrap();
    let t = mgr.wait(id, PATIENCE).unwrap();
    assert_eq!(t.status, TaskStatus::Completed);
    assert_eq!(t.stage, 2);
    assert_eq!(t.total_children, 5);
    assert_eq!(t.completed_children, 5);
    assert_eq!(
        t.context.as_deref(),
        Some(&b"c0"[..]),
        "context survives completion"
    );
    let kids = children_of(&mgr, id);
    let v = seen.take();
    assert_eq!(v.len(), 3);
    assert_eq!(v[0], (0, None, None));
    assert_eq!(
        v[1],
        (
            1,
            Some(json!([
                {"task_id": kids[0].id.0, "error": "  spaced\nmulti-line  ü "},
                {"task_id": kids[1].id.0, "result": {"echo": {"n": 1}}},
            ])),
            Some(b"c0".to_vec())
        )
    );
    assert_eq!(
        v[2],
        (
            2,
            Some(json!([
                {"task_id": kids[2].id.0, "result": {"echo": {"n": 2}}},
                {"task_id": kids[3].id.0, "result": {"echo": {"n": 3}}},
                {"task_id": kids[4].id.0, "error": ""},
            ])),
            Some(b"c0".to_vec())
        )
    );
    let resumed = events_of(&mgr, id, EventType::StatusChanged)
        .into_iter()
        .filter(|e| e.metadata["resume_reason"] == json!("children_completed"))
        .map(|e| e.stage)
        .collect::<Vec<_>>();
    assert_eq!(resumed, vec![1, 2]);
    let sub = events_of(&mgr, id, EventType::SubtasksCreated);
    assert_eq!(sub.len(), 2);
    assert_eq!(sub[1].metadata["child_count"], json!(3));
}

/// A tiny Mutex<Vec> helper (std only).
mod parking_lot_free {
    #[derive(Default)]
    pub struct Log<T>(std::sync::Mutex<Vec<T>>);
    impl<T> Log<T> {
        pub fn push(&self, t: T) {
            self.0.lock().unwrap().push(t);
        }
        pub fn take(&self) -> Vec<T> {
            std::mem::take(&mut *self.0.lock().unwrap())
        }
    }
}

/// §5: context is never inherited by children and a retry clears it (and the
/// result); the retried run starts at stage 0.
#[test]
fn s5_a_retry_after_a_fan_in_clears_context_and_result_and_restarts_at_stage_zero() {
    let (mgr, _clock) = utc_manager(T0, 2);
    let kid_ctx = Arc::new(parking_lot_free::Log::default());
    let kc = kid_ctx.clone();
    mgr.register("k", move |ctx| {
        kc.push(ctx.context().map(<[u8]>::to_vec));
        Ok(json!(1).into())
    })
    .unwrap();
    let seen = Arc::new(parking_lot_free::Log::default());
    let s2 = seen.clone();
    mgr.register_with("p", HandlerOptions::new().max_retries(2), move |ctx| {
        s2.push((
            ctx.stage(),
            ctx.retry_count(),
            ctx.result().is_some(),
            ctx.context().map(<[u8]>::to_vec),
        ));
        match (ctx.retry_count(), ctx.stage()) {
            (_, 0) => Ok(Outcome::Spawn {
                children: vec![ChildSpec::new("k", json!(null))],
                context: Some(format!("r{}", ctx.retry_count()).into_bytes()),
            }),
            (0, _) => Err("fail after fan-in".into()),
            _ => Ok(json!("ok").into()),
        }
    })
    .unwrap();
    mgr.start().unwrap();
    let id = mgr.submit("p", json!(null)).unwrap();
    assert_eq!(
        mgr.wait(id, PATIENCE).unwrap().status,
        TaskStatus::Completed
    );
    let v = seen.take();
    assert_eq!(
        v,
        vec![
            (0, 0, false, None),
            (1, 0, true, Some(b"r0".to_vec())),
            (0, 1, false, None),
            (1, 1, true, Some(b"r1".to_vec())),
        ]
    );
    assert_eq!(kid_ctx.take(), vec![None, None]);
}

/// §5: nesting with a suspended grandchild: ancestors stay suspended; the
/// reason filter finds only the grandchild; resume (with reason) delivers up
/// the chain once.
#[test]
fn s5_deep_nesting_with_a_suspended_grandchild() {
    let (mgr, _clock) = utc_manager(T0, 3);
    mgr.register("leaf", |ctx| {
        if ctx.stage() == 0 {
            return Ok(Outcome::Suspend {
                reason: "needs approval".into(),
                context: Some(b"leafctx".to_vec()),
            });
        }
        Ok(json!({"leaf_ctx": String::from_utf8(ctx.context().unwrap().to_vec()).unwrap()}).into())
    })
    .unwrap();
    mgr.register("mid", |ctx| {
        if ctx.stage() == 0 {
            return Ok(Outcome::spawn(vec![ChildSpec::new("leaf", json!(null))]));
        }
        Ok(json!({"mid_saw": ctx.result().cloned()}).into())
    })
    .unwrap();
    mgr.register("root", |ctx| {
        if ctx.stage() == 0 {
            return Ok(Outcome::spawn(vec![ChildSpec::new("mid", json!(null))]));
        }
        Ok(json!({"root_saw": ctx.result().cloned()}).into())
    })
    .unwrap();
    mgr.start().unwrap();
    let root = mgr.submit("root", json!(null)).unwrap();
    let mut f = TaskFilter::all();
    f.suspend_reason = Some("needs approval".into());
    eventually("leaf suspended", || mgr.list_tasks(&f).len() == 1);
    let leaf = mgr.list_tasks(&f)[0].clone();
    let mid = leaf.parent_id.unwrap();
    assert_eq!(leaf.root_id, Some(root));
    assert_eq!(status_of(&mgr, mid), TaskStatus::Suspended);
    assert_eq!(status_of(&mgr, root), TaskStatus::Suspended);
    mgr.resume_task(leaf.id, Some("approved by bob")).unwrap();
    let r = mgr.wait(root, PATIENCE).unwrap();
    assert_eq!(r.status, TaskStatus::Completed);
    assert_eq!(
        r.result,
        Some(
            json!({"root_saw": [{"task_id": mid.0, "result": {"mid_saw": [{"task_id": leaf.id.0, "result": {"leaf_ctx": "leafctx"}}]}}]})
        )
    );
    let res = events_of(&mgr, leaf.id, EventType::Resumed);
    assert_eq!(res.len(), 1);
    assert_eq!(res[0].metadata["resume_reason"], json!("approved by bob"));
    assert_eq!(mgr.get_task(mid).unwrap().completed_children, 1);
    assert_eq!(r.completed_children, 1);
    assert!(mgr.list_tasks(&f).is_empty());
}

/// §5 + §6: cancel_task on a parent waiting for children: it fails for good
/// with the default error; the children then finish and deliver nothing.
/// pause_task on it is refused and changes nothing.
#[test]
fn s5_cancel_and_pause_of_a_parent_waiting_for_children() {
    let (mgr, _clock) = utc_manager(T0, 3);
    let gate = Gate::new();
    let g = gate.clone();
    mgr.register("k", move |_| {
        g.wait();
        Ok(json!("k").into())
    })
    .unwrap();
    mgr.register("p", |ctx| {
        if ctx.stage() == 0 {
            return Ok(Outcome::spawn(vec![
                ChildSpec::new("k", json!(0)),
                ChildSpec::new("k", json!(1)),
            ]));
        }
        Ok(json!("p").into())
    })
    .unwrap();
    mgr.start().unwrap();
    let id = mgr.submit("p", json!(null)).unwrap();
    wait_status(&mgr, id, TaskStatus::Suspended);
    let before = mgr.events(id).unwrap();
    let err = mgr.pause_task(id).unwrap_err();
    assert!(matches!(err, Error::Transition(_)), "{err}");
    assert_eq!(mgr.events(id).unwrap(), before);
    mgr.cancel_task(id, None).unwrap();
    let t = mgr.wait(id, PATIENCE).unwrap();
    assert_eq!(t.status, TaskStatus::PermanentlyFailed);
    assert_eq!(t.error.as_deref(), Some("Task cancelled"));
    let n = mgr.events(id).unwrap().len();
    gate.open();
    for k in children_of(&mgr, id) {
        assert_eq!(
            mgr.wait(k.id, PATIENCE).unwrap().status,
            TaskStatus::Completed
        );
    }
    let t = mgr.get_task(id).unwrap();
    assert_eq!(t.status, TaskStatus::PermanentlyFailed);
    assert_eq!(mgr.events(id).unwrap().len(), n);
    assert_eq!(t.completed_children, 0);
    // a second cancel is refused
    assert!(mgr.cancel_task(id, None).is_err());
}

/// §5: a child paused (pause_task while pending) keeps the parent suspended;
/// resumed, it runs and its outcome reaches the parent exactly once.
#[test]
fn s5_a_paused_pending_child_resumed_delivers_once() {
    let (mgr, _clock) = utc_manager(T0, 2);
    let gate = Gate::new();
    let g = gate.clone();
    mgr.register_with(
        "k",
        HandlerOptions::new().max_concurrent_tasks(1),
        move |ctx| {
            if ctx.payload() == &json!("a") {
                g.wait();
            }
            Ok(json!(ctx.payload().clone()).into())
        },
    )
    .unwrap();
    mgr.register("p", |ctx| {
        if ctx.stage() == 0 {
            return Ok(Outcome::spawn(vec![
                ChildSpec::new("k", json!("a")),
                ChildSpec::new("k", json!("b")),
            ]));
        }
        Ok(json!({"seen": ctx.result().cloned()}).into())
    })
    .unwrap();
    let id = mgr.submit("p", json!(null)).unwrap();
    mgr.start().unwrap();
    eventually("a running", || {
        let k = children_of(&mgr, id);
        k.len() == 2 && k[0].status == TaskStatus::Running
    });
    let kids = children_of(&mgr, id);
    assert_eq!(kids[1].status, TaskStatus::Pending);
    mgr.pause_task(kids[1].id).unwrap();
    gate.open();
    mgr.wait(kids[0].id, PATIENCE).unwrap();
    assert_eq!(status_of(&mgr, id), TaskStatus::Suspended);
    assert_eq!(mgr.get_task(id).unwrap().completed_children, 1);
    mgr.resume_task(kids[1].id, None).unwrap();
    let t = mgr.wait(id, PATIENCE).unwrap();
    assert_eq!(t.status, TaskStatus::Completed);
    assert_eq!(t.completed_children, 2);
    assert_eq!(
        t.result,
        Some(json!({"seen": [
            {"task_id": kids[0].id.0, "result": "a"},
            {"task_id": kids[1].id.0, "result": "b"},
        ]}))
    );
}

// ---------------------------------------------------------------------------
// §6 suspension, resume, cancel, pause
// ---------------------------------------------------------------------------

/// §6: resume_task from suspended vs paused, with a manual clock: stage + 1 vs
/// stage 0, task_resumed vs task_status_changed, retry_count reset,
/// next_run_time = now, latest handler, saved context.
#[test]
fn s6_resume_from_suspended_and_from_paused() {
    let (mgr, clock) = utc_manager(T0, 1);
    let seen = Arc::new(parking_lot_free::Log::default());
    let s2 = seen.clone();
    mgr.register_with("h", HandlerOptions::new().max_retries(5), move |ctx| {
        s2.push((
            "v1",
            ctx.stage(),
            ctx.retry_count(),
            ctx.context().map(<[u8]>::to_vec),
        ));
        if ctx.retry_count() == 0 {
            return Err("first".into());
        }
        Ok(Outcome::Suspend {
            reason: "wait".into(),
            context: Some(b"saved".to_vec()),
        })
    })
    .unwrap();
    mgr.start().unwrap();
    let id = mgr.submit("h", json!(null)).unwrap();
    wait_status(&mgr, id, TaskStatus::Suspended);
    let t = mgr.get_task(id).unwrap();
    assert_eq!(t.retry_count, 1);
    let s2 = seen.clone();
    mgr.register_with("h", HandlerOptions::new().max_retries(5), move |ctx| {
        s2.push((
            "v2",
            ctx.stage(),
            ctx.retry_count(),
            ctx.context().map(<[u8]>::to_vec),
        ));
        Ok(json!("v2").into())
    })
    .unwrap();
    mgr.pause();
    clock.advance(Duration::from_secs(7));
    let now = clock_now(&clock);
    mgr.resume_task(id, None).unwrap();
    let t = mgr.get_task(id).unwrap();
    assert_eq!(
        (t.status, t.stage, t.retry_count, t.next_run_time),
        (TaskStatus::Pending, 1, 0, now)
    );
    let r = events_of(&mgr, id, EventType::Resumed);
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].metadata["resume_reason"], json!("manual"));
    assert_eq!(r[0].from_status, Some(TaskStatus::Suspended));
    assert_eq!(r[0].to_status, Some(TaskStatus::Pending));
    // now pause the pending task and resume it from paused: stage 0
    mgr.pause_task(id).unwrap();
    clock.advance(Duration::from_secs(3));
    let now = clock_now(&clock);
    mgr.resume_task(id, Some("again")).unwrap();
    let t = mgr.get_task(id).unwrap();
    assert_eq!(
        (t.status, t.stage, t.retry_count, t.next_run_time),
        (TaskStatus::Pending, 0, 0, now)
    );
    let last = mgr.events(id).unwrap().last().unwrap().clone();
    assert_eq!(last.event_type, EventType::StatusChanged);
    assert_eq!(last.from_status, Some(TaskStatus::Paused));
    assert_eq!(events_of(&mgr, id, EventType::Resumed).len(), 1);
    mgr.resume();
    assert_eq!(
        mgr.wait(id, PATIENCE).unwrap().status,
        TaskStatus::Completed
    );
    let v = seen.take();
    assert_eq!(v.len(), 3);
    assert_eq!(v[2], ("v2", 0, 0, Some(b"saved".to_vec())));
}

/// §6 + §13: resume/cancel from wrong statuses return typed errors and leave
/// the log unchanged; cancel default error "Task cancelled"; unknown ids are
/// NotFound.
#[test]
fn s6_wrong_status_calls_are_typed_errors_and_change_nothing() {
    let (mgr, _clock) = utc_manager(T0, 1);
    mgr.register("s", |_| Ok(Outcome::suspend("r"))).unwrap();
    mgr.register("ok", |_| Ok(json!(1).into())).unwrap();
    let pending = mgr.submit("ok", json!(null)).unwrap();
    for (what, r) in [
        ("resume pending", mgr.resume_task(pending, None)),
        ("cancel pending", mgr.cancel_task(pending, Some("x"))),
    ] {
        assert!(matches!(r, Err(Error::Transition(_))), "{what}: {r:?}");
    }
    assert_eq!(event_names(&mgr, pending), ["task_created"]);
    mgr.start().unwrap();
    let s = mgr.submit("s", json!(null)).unwrap();
    wait_status(&mgr, s, TaskStatus::Suspended);
    mgr.wait(pending, PATIENCE).unwrap();
    let before = mgr.events(pending).unwrap();
    for r in [
        mgr.resume_task(pending, None),
        mgr.cancel_task(pending, None),
        mgr.pause_task(pending),
    ] {
        assert!(matches!(r, Err(Error::Transition(_))), "{r:?}");
    }
    assert_eq!(mgr.events(pending).unwrap(), before);
    assert!(matches!(
        mgr.resume_task(TaskId(999_999_999), None),
        Err(Error::NotFound(_))
    ));
    assert!(matches!(
        mgr.cancel_task(TaskId(999_999_999), None),
        Err(Error::NotFound(_))
    ));
    mgr.cancel_task(s, None).unwrap();
    let t = mgr.wait(s, PATIENCE).unwrap();
    assert_eq!(t.status, TaskStatus::PermanentlyFailed);
    assert_eq!(t.error.as_deref(), Some("Task cancelled"));
    let pf = events_of(&mgr, s, EventType::PermanentlyFailed);
    assert_eq!(pf.len(), 1);
    assert_eq!(pf[0].from_status, Some(TaskStatus::Suspended));
}

/// §6 + §3: pause a running task and resume it while its first handler is
/// still blocked (handler cap 1): the new attempt runs, and the late result
/// of the first is discarded.
#[test]
fn s6_pause_then_resume_while_the_old_attempt_still_runs() {
    let (mgr, _clock) = utc_manager(T0, 2);
    let gate = Gate::new();
    let g = gate.clone();
    let started = Arc::new(AtomicUsize::new(0));
    let st = started.clone();
    mgr.register_with(
        "h",
        HandlerOptions::new().max_concurrent_tasks(1),
        move |ctx| {
            st.fetch_add(1, Ordering::SeqCst);
            if ctx.attempt() == 1 {
                g.wait();
                return Ok(json!("late").into());
            }
            Ok(json!("fresh").into())
        },
    )
    .unwrap();
    mgr.start().unwrap();
    let id = mgr.submit("h", json!(null)).unwrap();
    eventually("attempt 1 running", || started.load(Ordering::SeqCst) == 1);
    mgr.pause_task(id).unwrap();
    mgr.resume_task(id, None).unwrap();
    let t = mgr.wait(id, PATIENCE).unwrap();
    assert_eq!(t.status, TaskStatus::Completed);
    assert_eq!(t.result, Some(json!("fresh")));
    gate.open();
    eventually("attempt 1 returned", || mgr.running() == 0);
    let t = mgr.get_task(id).unwrap();
    assert_eq!(t.result, Some(json!("fresh")));
    let a = mgr.attempts(id).unwrap();
    assert_eq!(
        a.iter().map(|a| a.outcome).collect::<Vec<_>>(),
        vec![
            Some(AttemptOutcome::Paused),
            Some(AttemptOutcome::Completed)
        ]
    );
    // the cap is not leaked: another task of the type still runs
    let id2 = mgr.submit("h", json!(null)).unwrap();
    // attempt 1 of the new task blocks on the (open) gate: returns "late"
    assert_eq!(
        mgr.wait(id2, PATIENCE).unwrap().status,
        TaskStatus::Completed
    );
}

// ---------------------------------------------------------------------------
// §9 audit
// ---------------------------------------------------------------------------

/// §9: progress updates only the given fields; validation errors change
/// nothing; every event carries the open attempt and updates last_event_*.
#[test]
fn s9_progress_and_audit_across_a_retry_carry_each_attempt() {
    let (mgr, clock) = utc_manager(T0, 1);
    let errs = Arc::new(parking_lot_free::Log::default());
    let e2 = errs.clone();
    mgr.register_with("h", HandlerOptions::new().max_retries(2), move |ctx| {
        use fibflow::Progress;
        ctx.progress(Progress {
            stage_name: Some("load".into()),
            percent: Some(10),
            ..Default::default()
        })
        .unwrap();
        e2.push(
            ctx.progress(Progress {
                percent: Some(101),
                ..Default::default()
            })
            .is_err(),
        );
        e2.push(
            ctx.progress(Progress {
                text: Some(String::new()),
                ..Default::default()
            })
            .is_err(),
        );
        e2.push(ctx.audit("", None, None).is_err());
        e2.push(ctx.audit("c", Some(" "), None).is_err());
        ctx.audit("cp", Some("msg"), Some(json!({"k": ctx.attempt()})))
            .unwrap();
        if ctx.attempt() == 1 {
            return Err("again".into());
        }
        ctx.progress(Progress {
            text: Some("half".into()),
            percent: Some(100),
            ..Default::default()
        })
        .unwrap();
        Ok(json!(null).into())
    })
    .unwrap();
    mgr.start().unwrap();
    let id = mgr.submit("h", json!(null)).unwrap();
    let _ = &clock;
    let t = mgr.wait(id, PATIENCE).unwrap();
    assert_eq!(t.status, TaskStatus::Completed);
    assert!(errs.take().into_iter().all(|b| b));
    assert_eq!(t.current_stage_name.as_deref(), Some("load"));
    assert_eq!(t.progress_text.as_deref(), Some("half"));
    assert_eq!(t.progress_percent, Some(100));
    let evs = mgr.events(id).unwrap();
    let last = evs.last().unwrap();
    assert_eq!(t.last_event_type, Some(last.event_type));
    assert_eq!(t.last_event_time, Some(last.time));
    let progress: Vec<_> = evs
        .iter()
        .filter(|e| e.event_type == EventType::Progress)
        .map(|e| e.attempt)
        .collect();
    assert_eq!(progress, vec![Some(1), Some(2), Some(2)]);
    let cps: Vec<_> = evs
        .iter()
        .filter(|e| e.event_type == EventType::Checkpoint)
        .map(|e| (e.attempt, e.metadata.clone()))
        .collect();
    assert_eq!(
        cps,
        vec![
            (Some(1), json!({"code": "cp", "k": 1})),
            (Some(2), json!({"code": "cp", "k": 2}))
        ]
    );
    // event filters: attempt 2 only, types
    let f = EventFilter {
        attempt: Some(2),
        types: vec![EventType::Progress, EventType::Checkpoint],
        ..Default::default()
    };
    let p = mgr.query_events(id, &f, Page::default()).unwrap();
    assert_eq!(p.total, 3);
    let types: Vec<_> = evs.iter().map(|e| e.event_type.as_str()).collect();
    assert_eq!(
        types,
        [
            "task_created",
            "task_claimed",
            "task_started",
            "task_progress",
            "task_checkpoint",
            "task_failed",
            "task_retry_scheduled",
            "task_claimed",
            "task_started",
            "task_retry_started",
            "task_progress",
            "task_checkpoint",
            "task_progress",
            "task_completed"
        ]
    );
}

// ---------------------------------------------------------------------------
// §10 queries
// ---------------------------------------------------------------------------

/// §10: paging shape, asc default, descending, filters AND (kind, worker,
/// root_id excludes the root, workflow includes it), attempt filters.
#[test]
fn s10_filters_and_paging_over_a_mixed_population() {
    let (mgr, clock) = utc_manager(T0, 1);
    mgr.register("k", |_| Ok(json!(1).into())).unwrap();
    mgr.register("p", |ctx| {
        if ctx.stage() == 0 {
            return Ok(Outcome::spawn(vec![
                ChildSpec::new("k", json!(0)).tag("kt"),
                ChildSpec::new("k", json!(1)),
            ]));
        }
        Ok(json!("p").into())
    })
    .unwrap();
    mgr.start().unwrap();
    let mut ids = Vec::new();
    for i in 0..5 {
        clock.advance(Duration::from_millis(1));
        ids.push(
            mgr.submit_with(
                "k",
                json!(i),
                SubmitOptions::new().tag(if i % 2 == 0 { "even" } else { "odd" }),
            )
            .unwrap(),
        );
    }
    let c = mgr
        .submit_with("k", json!(null), cron("0 0 1 1 *").tag("even"))
        .unwrap();
    let root = mgr.submit("p", json!(null)).unwrap();
    mgr.wait(root, PATIENCE).unwrap();
    for id in &ids {
        mgr.wait(*id, PATIENCE).unwrap();
    }
    let page = mgr.query_tasks(
        &TaskFilter::all().tag("even"),
        Page {
            limit: 2,
            offset: 0,
            descending: false,
        },
    );
    assert_eq!(
        (page.total, page.limit, page.offset, page.has_more),
        (4, 2, 0, true)
    );
    assert_eq!(
        page.items.iter().map(|t| t.id).collect::<Vec<_>>(),
        vec![ids[0], ids[2]]
    );
    let page = mgr.query_tasks(
        &TaskFilter::all().tag("even"),
        Page {
            limit: 2,
            offset: 2,
            descending: false,
        },
    );
    assert_eq!(
        page.items.iter().map(|t| t.id).collect::<Vec<_>>(),
        vec![ids[4], c]
    );
    assert!(!page.has_more);
    let page = mgr.query_tasks(
        &TaskFilter::all().tag("even"),
        Page {
            limit: 3,
            offset: 0,
            descending: true,
        },
    );
    assert_eq!(
        page.items.iter().map(|t| t.id).collect::<Vec<_>>(),
        vec![c, ids[4], ids[2]]
    );
    let mut f = TaskFilter::all().tag("even");
    f.kind = Some(TaskKind::Cron);
    assert_eq!(
        mgr.list_tasks(&f).iter().map(|t| t.id).collect::<Vec<_>>(),
        vec![c]
    );
    let mut f = TaskFilter::all();
    f.kind = Some(TaskKind::Async);
    f.status = Some(TaskStatus::Completed);
    assert_eq!(mgr.list_tasks(&f).len(), 5 + 1 + 2);
    let kids = children_of(&mgr, root);
    let mut f = TaskFilter::all();
    f.root_id = Some(root);
    assert_eq!(
        mgr.list_tasks(&f).iter().map(|t| t.id).collect::<Vec<_>>(),
        kids.iter().map(|k| k.id).collect::<Vec<_>>()
    );
    let f = TaskFilter::all().workflow(root);
    assert_eq!(mgr.list_tasks(&f).len(), 3);
    let f = TaskFilter::all().workflow(root).tag("kt");
    assert_eq!(
        mgr.list_tasks(&f).iter().map(|t| t.id).collect::<Vec<_>>(),
        vec![kids[0].id]
    );
    let mut f = TaskFilter::all().tag("kt");
    f.root_id = Some(root);
    f.name = Some("k".into());
    assert_eq!(mgr.list_tasks(&f).len(), 1);
    let w = mgr.get_task(ids[0]).unwrap().worker.unwrap().to_string();
    let mut f = TaskFilter::all();
    f.worker = Some(w.clone());
    assert_eq!(mgr.list_tasks(&f).len(), 5 + 3, "one worker ran everything");
    let stats = mgr.stats_by_tag(None);
    assert_eq!(
        stats.get(&(Some("even".into()), "k".into(), TaskStatus::Completed)),
        Some(&3)
    );
    assert_eq!(
        stats.get(&(Some("even".into()), "k".into(), TaskStatus::Pending)),
        Some(&1)
    );
    assert_eq!(
        stats.get(&(None, "p".into(), TaskStatus::Completed)),
        Some(&1)
    );
    assert_eq!(
        stats.get(&(None, "k".into(), TaskStatus::Completed)),
        Some(&1)
    );
    let stats = mgr.stats_by_tag(Some(TaskStatus::Pending));
    assert_eq!(stats.len(), 1);
    let af = AttemptFilter {
        worker: Some(w),
        outcome: Some(AttemptOutcome::Completed),
        ..Default::default()
    };
    let pa = mgr.query_attempts(ids[0], &af, Page::default()).unwrap();
    assert_eq!((pa.total, pa.has_more), (1, false));
    let pa = mgr
        .query_attempts(
            ids[0],
            &AttemptFilter {
                open_only: true,
                ..Default::default()
            },
            Page::default(),
        )
        .unwrap();
    assert_eq!(pa.total, 0);
    // delete with filters removes events and attempts
    let n = mgr.delete_tasks(&TaskFilter::all().tag("odd")).unwrap();
    assert_eq!(n, 2);
    assert!(matches!(mgr.events(ids[1]), Err(Error::NotFound(_))));
    assert!(matches!(mgr.attempts(ids[1]), Err(Error::NotFound(_))));
}

/// §10: workflow summary: critical path ties to the lowest id; slowest 5
/// attempts; failed tasks; status and outcome counts.
#[test]
fn s10_workflow_summary_with_a_manual_clock() {
    let (mgr, clock) = utc_manager(T0, 4);
    let gates: Vec<Arc<Gate>> = (0..6).map(|_| Gate::new()).collect();
    let started = Arc::new(AtomicUsize::new(0));
    let (gs, st) = (gates.clone(), started.clone());
    mgr.register_with("k", HandlerOptions::new().max_retries(1), move |ctx| {
        let i = ctx.payload().as_u64().unwrap() as usize;
        st.fetch_add(1, Ordering::SeqCst);
        gs[i].wait();
        if i == 5 {
            return Err("k5 failed".into());
        }
        Ok(json!(i).into())
    })
    .unwrap();
    mgr.register("p", |ctx| {
        if ctx.stage() == 0 {
            return Ok(Outcome::spawn(
                (0..3).map(|i| ChildSpec::new("k", json!(i))).collect(),
            ));
        }
        Ok(json!("p").into())
    })
    .unwrap();
    mgr.start().unwrap();
    let root = mgr.submit("p", json!(null)).unwrap();
    eventually("3 running", || started.load(Ordering::SeqCst) == 3);
    clock.advance(Duration::from_millis(100));
    gates[2].open();
    gates[1].open();
    eventually("two done", || {
        children_of(&mgr, root)
            .iter()
            .filter(|k| k.status == TaskStatus::Completed)
            .count()
            == 2
    });
    clock.advance(Duration::from_millis(50));
    gates[0].open();
    mgr.wait(root, PATIENCE).unwrap();
    let kids = children_of(&mgr, root);
    let s = mgr.workflow_summary(root).unwrap();
    // k0 took 150ms, k1 and k2 100ms: k0 is the longest branch
    assert_eq!(s.critical_path, vec![root, kids[0].id]);
    assert_eq!(s.status_counts.get("completed"), Some(&4));
    assert_eq!(s.attempt_outcomes.get("completed"), Some(&4));
    assert_eq!(s.attempt_outcomes.get("suspended"), Some(&1));
    assert_eq!(s.slowest_attempts.len(), 5);
    let order: Vec<_> = s
        .slowest_attempts
        .iter()
        .map(|a| (a.task_id, a.duration_ms()))
        .collect();
    assert_eq!(
        order,
        vec![
            (kids[0].id, Some(150)),
            (kids[1].id, Some(100)),
            (kids[2].id, Some(100)),
            (root, Some(0)),
            (root, Some(0))
        ]
    );
    assert!(s.failed_tasks.is_empty());
    assert_eq!(s.root_stages.len(), 2);
    assert_eq!(
        s.root_stages.iter().map(|r| r.stage).collect::<Vec<_>>(),
        vec![0, 1]
    );
}

// ---------------------------------------------------------------------------
// §11 retention
// ---------------------------------------------------------------------------

/// §11: default statuses; override with paused; suspended never removed;
/// counts of tasks, events and attempts.
#[test]
fn s11_retention_defaults_override_and_counts() {
    let (mgr, clock) = utc_manager(T0, 1);
    mgr.register("ok", |_| Ok(json!(1).into())).unwrap();
    mgr.register_with("bad", HandlerOptions::new().max_retries(1), |_| {
        Err("x".into())
    })
    .unwrap();
    mgr.register("sus", |_| Ok(Outcome::suspend("hold")))
        .unwrap();
    mgr.start().unwrap();
    let ok = mgr.submit("ok", json!(null)).unwrap();
    let bad = mgr.submit("bad", json!(null)).unwrap();
    let sus = mgr.submit("sus", json!(null)).unwrap();
    let paused = mgr
        .submit_with(
            "ok",
            json!(null),
            SubmitOptions::new().delay(Duration::from_secs(3600)),
        )
        .unwrap();
    mgr.pause_task(paused).unwrap();
    mgr.wait(ok, PATIENCE).unwrap();
    mgr.wait(bad, PATIENCE).unwrap();
    wait_status(&mgr, sus, TaskStatus::Suspended);
    let ev_ok = mgr.events(ok).unwrap().len() as u64;
    let ev_bad = mgr.events(bad).unwrap().len() as u64;
    clock.advance(Duration::from_secs(100));
    let p = RetentionPolicy::new(Duration::from_secs(100));
    let r = mgr.run_retention(Some(&p)).unwrap();
    assert_eq!(r.tasks, 0, "not strictly older yet");
    clock.advance(Duration::from_millis(1));
    let r = mgr.run_retention(Some(&p)).unwrap();
    assert_eq!((r.tasks, r.events, r.attempts), (2, ev_ok + ev_bad, 2));
    assert!(mgr.get_task(paused).is_some());
    let p = RetentionPolicy::new(Duration::from_secs(1)).statuses([TaskStatus::Paused]);
    let r = mgr.run_retention(Some(&p)).unwrap();
    assert_eq!(r.tasks, 1);
    assert!(mgr.get_task(paused).is_none());
    assert!(mgr.get_task(sus).is_some());
    let p = RetentionPolicy::new(Duration::from_secs(1)).statuses([TaskStatus::Suspended]);
    assert!(mgr.run_retention(Some(&p)).is_err());
    assert!(mgr.get_task(sus).is_some());
    assert!(mgr.run_retention(None).is_err(), "no configured policy");
}

// ---------------------------------------------------------------------------
// §12 quarantine
// ---------------------------------------------------------------------------

/// §12: with quarantine_after(1), a task interrupted twice in a row (two
/// stops past the deadline, with reopens) is quarantined at the second.
#[test]
fn s12_quarantine_after_one_across_reopens() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let gate = Gate::new();
    let b = || durable(dir.path(), &clock).quarantine_after(1);
    let id = {
        let mgr = b().build().unwrap();
        let g = gate.clone();
        mgr.register("h", move |_| {
            g.wait();
            Ok(json!(1).into())
        })
        .unwrap();
        mgr.start().unwrap();
        let id = mgr.submit("h", json!(null)).unwrap();
        wait_status(&mgr, id, TaskStatus::Running);
        let rep = mgr.stop(Duration::from_millis(10)).unwrap();
        assert_eq!(rep.interrupted, vec![id]);
        id
    };
    {
        let mgr = common::build_unlocked(b()).unwrap();
        assert_eq!(status_of(&mgr, id), TaskStatus::Pending);
        let g = gate.clone();
        mgr.register("h", move |_| {
            g.wait();
            Ok(json!(1).into())
        })
        .unwrap();
        mgr.start().unwrap();
        wait_status(&mgr, id, TaskStatus::Running);
        mgr.stop(Duration::from_millis(10)).unwrap();
        let t = mgr.get_task(id).unwrap();
        assert_eq!(t.status, TaskStatus::PermanentlyFailed, "{:?}", t.error);
    }
    gate.open();
    let mgr = common::build_unlocked(b()).unwrap();
    let t = mgr.get_task(id).unwrap();
    assert_eq!(t.status, TaskStatus::PermanentlyFailed);
    assert!(t.error.unwrap().contains("quarantined"));
    let a = mgr.attempts(id).unwrap();
    assert_eq!(a.len(), 2);
    assert!(a
        .iter()
        .all(|a| a.outcome == Some(AttemptOutcome::Interrupted)));
    assert_eq!(events_of(&mgr, id, EventType::Recovered).len(), 2);
    let _: Option<Value> = None;
}

// ---------------------------------------------------------------------------
// more §5 / §10
// ---------------------------------------------------------------------------

/// §5 + §4 + §7: a fail_parent child that times out on every attempt and
/// exhausts its retries pauses its cron parent (attempts close `timeout`,
/// the entry error is the timeout text); event filters by stage see the
/// parent's stage-0 events only.
#[test]
fn s5_a_child_timing_out_until_exhausted_pauses_its_cron_parent() {
    let (mgr, clock) = utc_manager(T0, 2);
    mgr.register_with(
        "slow",
        HandlerOptions::new()
            .timeout(Duration::from_secs(1))
            .max_retries(2),
        |ctx| loop {
            if let Err(e) = ctx.check() {
                return Err(e.into());
            }
            std::thread::park_timeout(Duration::from_millis(1));
        },
    )
    .unwrap();
    mgr.register("p", |ctx| {
        if ctx.stage() == 0 {
            return Ok(Outcome::spawn(vec![
                ChildSpec::new("slow", json!(null)).fail_parent()
            ]));
        }
        Ok(json!("unexpected").into())
    })
    .unwrap();
    mgr.start().unwrap();
    let id = mgr
        .submit_with("p", json!(null), cron("0 * * * *"))
        .unwrap();
    clock.set(ms(2023, 11, 14, 23, 0, 0));
    eventually("child running", || {
        children_of(&mgr, id)
            .first()
            .is_some_and(|k| k.status == TaskStatus::Running)
    });
    let kid = children_of(&mgr, id)[0].id;
    clock.advance(Duration::from_secs(1));
    eventually("attempt 2 running", || {
        let t = mgr.get_task(kid).unwrap();
        t.attempt == 2 && t.status == TaskStatus::Running
    });
    clock.advance(Duration::from_secs(1));
    let t = mgr.wait(id, PATIENCE).unwrap();
    assert_eq!(t.status, TaskStatus::Paused);
    let k = mgr.get_task(kid).unwrap();
    assert_eq!(k.status, TaskStatus::PermanentlyFailed);
    assert_eq!(
        k.error.as_deref(),
        Some("Task exceeded total timeout limit")
    );
    let a = mgr.attempts(kid).unwrap();
    assert_eq!(
        a.iter()
            .map(|a| (a.outcome, a.timed_out))
            .collect::<Vec<_>>(),
        vec![
            (Some(AttemptOutcome::Timeout), true),
            (Some(AttemptOutcome::Timeout), true)
        ]
    );
    let to = events_of(&mgr, kid, EventType::TimedOut);
    assert_eq!(to.len(), 2);
    assert!(to
        .iter()
        .all(|e| e.metadata["timeout_type"] == json!("total")));
    assert_eq!(
        t.error.as_deref(),
        Some(format!("Child task {kid} failed: Task exceeded total timeout limit").as_str())
    );
    let paused = events_of(&mgr, id, EventType::Paused);
    assert_eq!(paused.len(), 1);
    assert_eq!(paused[0].from_status, Some(TaskStatus::Suspended));
    let f = EventFilter {
        stage: Some(1),
        ..Default::default()
    };
    assert_eq!(mgr.query_events(id, &f, Page::default()).unwrap().total, 0);
}

/// §10 "critical path (root plus the longest child branch, ties to the
/// lowest id)": child A (210 ms of wall time, 190 ms of it waiting for its own
/// child G) against child B (a 300 ms leaf). B's branch takes longest.
#[test]
fn s10_critical_path_does_not_double_count_a_waiting_parent() {
    let (mgr, clock) = utc_manager(T0, 4);
    let g_gate = Gate::new();
    let b_gate = Gate::new();
    let (gg, bg) = (g_gate.clone(), b_gate.clone());
    mgr.register("g", move |_| {
        gg.wait();
        Ok(json!("g").into())
    })
    .unwrap();
    mgr.register("b", move |_| {
        bg.wait();
        Ok(json!("b").into())
    })
    .unwrap();
    mgr.register("a", |ctx| {
        if ctx.stage() == 0 {
            return Ok(Outcome::spawn(vec![ChildSpec::new("g", json!(null))]));
        }
        Ok(json!("a").into())
    })
    .unwrap();
    mgr.register("root", |ctx| {
        if ctx.stage() == 0 {
            return Ok(Outcome::spawn(vec![
                ChildSpec::new("a", json!(null)),
                ChildSpec::new("b", json!(null)),
            ]));
        }
        Ok(json!("root").into())
    })
    .unwrap();
    mgr.start().unwrap();
    let root = mgr.submit("root", json!(null)).unwrap();
    eventually("g and b running", || {
        let all = mgr.list_tasks(&TaskFilter::all().workflow(root));
        all.iter()
            .filter(|t| t.status == TaskStatus::Running)
            .count()
            == 2
            && all.len() == 4
    });
    clock.advance(Duration::from_millis(210));
    g_gate.open();
    let kids = children_of(&mgr, root);
    let (a, b) = (kids[0].id, kids[1].id);
    mgr.wait(a, PATIENCE).unwrap();
    clock.advance(Duration::from_millis(90));
    b_gate.open();
    mgr.wait(root, PATIENCE).unwrap();
    let span = |id: TaskId| {
        let at = mgr.attempts(id).unwrap();
        at.iter().filter_map(|x| x.ended_at).max().unwrap()
            - at.iter().map(|x| x.started_at).min().unwrap()
    };
    let (sa, sb) = (span(a), span(b));
    assert!(sb > sa, "B ({sb} ms) takes longer than A ({sa} ms)");
    let s = mgr.workflow_summary(root).unwrap();
    assert_eq!(
        s.critical_path,
        vec![root, b],
        "A spans {sa} ms, B spans {sb} ms"
    );
}
