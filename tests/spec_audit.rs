//! SPEC audit: one SPEC rule per test (section cited on each), checked through the
//! public API only. Time-dependent rules run on a manual clock; waits are on
//! conditions with generous deadlines.
//!
//! The `deviations` module at the end holds the known deviation that is not
//! fixed (its test says why); it FAILS today and is compiled out of the
//! default run. Run it with
//! `RUSTFLAGS="--cfg spec_deviations" cargo test --test spec_audit deviations`.
//! Eight others found by the same audit were fixed and their tests moved up.
#![allow(unexpected_cfgs)]

mod common;

use common::{event_names, eventually, manual, Gate, PATIENCE};
use fibflow::{
    Backoff, CatchUp, ChildSpec, ContextError, Error, EventType, HandlerOptions, ManualClock,
    Outcome, Page, Progress, RetentionPolicy, RetryStrategy, SubmitOptions, TaskFilter, TaskId,
    TaskManager, TaskStatus, TimeZone,
};
use serde_json::json;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const T0: u64 = 1_700_000_000_000;

fn status(mgr: &TaskManager, id: TaskId) -> TaskStatus {
    mgr.get_task(id).unwrap().status
}

fn utc_manager(start: u64) -> (TaskManager, Arc<ManualClock>) {
    let clock = ManualClock::new(start);
    let mgr = TaskManager::builder()
        .memory()
        .clock(clock.clone())
        .time_zone(TimeZone::from_name("UTC").unwrap())
        .catch_up(CatchUp::Once)
        .max_concurrent_tasks(2)
        .build()
        .unwrap();
    (mgr, clock)
}

/// SPEC §3: "Order: priority descending, then next_run_time ascending, then id
/// ascending." Delayed tasks that became due are claimed by their scheduled time.
#[test]
fn s3_delayed_tasks_are_claimed_by_next_run_time_not_by_id() {
    let (mgr, clock) = manual(1);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    mgr.register("rec", move |ctx| {
        s.lock().unwrap().push(ctx.id());
        Ok(json!(null).into())
    })
    .unwrap();
    mgr.start().unwrap();
    mgr.pause();
    let a = mgr
        .submit_with(
            "rec",
            json!("a"),
            SubmitOptions::new().delay(Duration::from_secs(5)),
        )
        .unwrap();
    let b = mgr
        .submit_with(
            "rec",
            json!("b"),
            SubmitOptions::new().delay(Duration::from_secs(3)),
        )
        .unwrap();
    let c = mgr.submit("rec", json!("c")).unwrap();
    clock.advance(Duration::from_secs(10));
    mgr.resume();
    for id in [a, b, c] {
        mgr.wait(id, PATIENCE).unwrap();
    }
    assert_eq!(*seen.lock().unwrap(), vec![c, b, a]);
}

/// SPEC §2: "Every status change sets last_active_time."
#[test]
fn s2_every_status_change_sets_last_active_time() {
    let (mgr, clock) = manual(1);
    mgr.register("t", |_| Ok(json!(null).into())).unwrap();
    let id = mgr.submit("t", json!(null)).unwrap();
    let t = mgr.get_task(id).unwrap();
    assert_eq!(t.created_at, T0);
    assert_eq!(t.last_active_time, T0);
    clock.advance(Duration::from_secs(2));
    mgr.start().unwrap();
    let t = mgr.wait(id, PATIENCE).unwrap();
    assert_eq!(t.start_time, Some(T0 + 2000));
    assert_eq!(t.last_active_time, T0 + 2000);
    let p = mgr
        .submit_with(
            "t",
            json!(null),
            SubmitOptions::new().delay(Duration::from_secs(60)),
        )
        .unwrap();
    clock.advance(Duration::from_secs(3));
    mgr.pause_task(p).unwrap();
    assert_eq!(mgr.get_task(p).unwrap().last_active_time, T0 + 5000);
}

/// SPEC §4: "retried at `now + backoff(retry_count)` (... exponential/linear from the
/// pool's or handler's strategy)"; exhaustion does not wait.
#[test]
fn s4_exponential_backoff_from_the_handler_strategy() {
    let (mgr, clock) = manual(1);
    let strategy = RetryStrategy {
        backoff: Backoff::Exponential,
        base: Duration::from_secs(1),
        cap: None,
        jitter: 0.0,
    };
    mgr.register_with(
        "bad",
        HandlerOptions::new().max_retries(4).retry(strategy),
        |_| Err("no".into()),
    )
    .unwrap();
    mgr.start().unwrap();
    let id = mgr.submit("bad", json!(null)).unwrap();
    let mut now = T0;
    for (n, delay) in [1000u64, 2000, 4000].into_iter().enumerate() {
        eventually("failed", || {
            let t = mgr.get_task(id).unwrap();
            t.status == TaskStatus::Failed && mgr.attempts(id).unwrap().len() == n + 1
        });
        let t = mgr.get_task(id).unwrap();
        assert_eq!(t.next_run_time, now + delay, "retry {n}");
        clock.advance(Duration::from_millis(delay));
        now += delay;
    }
    let t = mgr.wait(id, PATIENCE).unwrap();
    assert_eq!(t.status, TaskStatus::PermanentlyFailed);
    assert_eq!(mgr.attempts(id).unwrap().len(), 4);
}

/// SPEC §13: "Bad input (... empty name or tag, invalid cron, unknown task id,
/// unregistered handler) returns a typed error whose message says what was wrong.
/// Nothing in the log is changed by a rejected call." §8: "No handler registered
/// for task: NAME".
#[test]
fn s13_rejected_calls_return_typed_errors_and_change_nothing() {
    let (mgr, _clock) = manual(1);
    mgr.register("t", |_| Ok(json!(null).into())).unwrap();
    let before = mgr.count_by_status();
    let e = mgr
        .submit_with("t", json!(null), SubmitOptions::new().cron("bad cron"))
        .unwrap_err();
    assert!(e.to_string().contains("bad cron"), "{e}");
    assert!(matches!(
        mgr.submit_with("t", json!(null), SubmitOptions::new().tag("")),
        Err(Error::InvalidTag(_))
    ));
    let e = mgr.submit("nope", json!(null)).unwrap_err();
    assert_eq!(e.to_string(), "No handler registered for task: nope");
    assert!(matches!(mgr.submit("", json!(null)), Err(Error::EmptyName)));
    assert_eq!(mgr.count_by_status(), before);
    let id = mgr.submit("t", json!(null)).unwrap();
    let events = mgr.events(id).unwrap().len();
    assert!(mgr.cancel_task(id, None).is_err());
    assert!(mgr.resume_task(id, None).is_err());
    assert_eq!(mgr.events(id).unwrap().len(), events);
    assert_eq!(status(&mgr, id), TaskStatus::Pending);
    assert!(matches!(
        mgr.pause_task(TaskId(999_999)),
        Err(Error::NotFound(_))
    ));
}

/// SPEC §11: "Eligible: status in the set and last_active_time older than now −
/// expire_time. A task goes together with its events and attempts"; the deleted
/// task's dedup key no longer answers.
#[test]
fn s11_retention_removes_only_strictly_older_tasks_and_frees_their_dedup_key() {
    let (mgr, clock) = manual(1);
    mgr.register("t", |_| Ok(json!(null).into())).unwrap();
    mgr.start().unwrap();
    let id = mgr
        .submit_with("t", json!(null), SubmitOptions::new().dedup_key("k"))
        .unwrap();
    mgr.wait(id, PATIENCE).unwrap();
    let policy = RetentionPolicy::new(Duration::from_secs(10));
    clock.advance(Duration::from_secs(10));
    assert_eq!(mgr.run_retention(Some(&policy)).unwrap().tasks, 0);
    clock.advance(Duration::from_millis(1));
    let r = mgr.run_retention(Some(&policy)).unwrap();
    assert_eq!(r.tasks, 1);
    assert_eq!(r.events, 4);
    assert_eq!(r.attempts, 1);
    assert!(mgr.get_task(id).is_none());
    let again = mgr
        .submit_with("t", json!(null), SubmitOptions::new().dedup_key("k"))
        .unwrap();
    assert_ne!(again, id);
}

/// SPEC §13: "Queries, submit, pause_task, resume_task, delete work before `start`"
/// (fib-flow test "should allow task management operations before start"); §10:
/// delete "removes the tasks' events and attempts too".
#[test]
fn s13_pause_resume_delete_work_before_start() {
    let (mgr, _clock) = manual(1);
    mgr.register("t", |_| Ok(json!(null).into())).unwrap();
    let a = mgr.submit("t", json!(1)).unwrap();
    let _b = mgr.submit("t", json!(2)).unwrap();
    mgr.pause_task(a).unwrap();
    assert_eq!(status(&mgr, a), TaskStatus::Paused);
    mgr.resume_task(a, None).unwrap();
    assert_eq!(status(&mgr, a), TaskStatus::Pending);
    assert_eq!(mgr.delete_tasks(&TaskFilter::all().name("t")).unwrap(), 2);
    assert!(matches!(mgr.events(a), Err(Error::NotFound(_))));
    assert!(matches!(mgr.attempts(a), Err(Error::NotFound(_))));
}

/// SPEC §3: eligible needs "handler registered"; "a registration wakes ... the
/// workers that can take the work". §8: unregister returns how many were removed.
#[test]
fn s8_unregistered_pending_task_waits_and_a_registration_wakes_it() {
    let (mgr, _clock) = manual(1);
    mgr.register("t", |_| Ok(json!(1).into())).unwrap();
    mgr.start().unwrap();
    mgr.pause();
    let id = mgr.submit("t", json!(null)).unwrap();
    assert_eq!(mgr.unregister(&["t", "zzz"]), 1);
    mgr.resume();
    assert_eq!(
        mgr.waiting_reason(id).unwrap().unwrap(),
        "No handler registered for task: t"
    );
    mgr.register("t", |_| Ok(json!(2).into())).unwrap();
    let t = mgr.wait(id, PATIENCE).unwrap();
    assert_eq!(t.result, Some(json!(2)));
}

/// SPEC §5: "`wait(task_id)` returns when the task reaches a terminal status
/// (completed, permanently_failed, paused)".
#[test]
fn s5_wait_returns_when_the_task_is_paused() {
    let (mgr, _clock) = manual(1);
    mgr.register("t", |_| Ok(json!(null).into())).unwrap();
    let id = mgr
        .submit_with(
            "t",
            json!(null),
            SubmitOptions::new().delay(Duration::from_secs(60)),
        )
        .unwrap();
    mgr.pause_task(id).unwrap();
    assert_eq!(mgr.wait(id, PATIENCE).unwrap().status, TaskStatus::Paused);
}

/// SPEC §10: workflow summary status/outcome counts; "critical path (root plus the
/// longest child branch, ties to the lowest id)"; `root_id` filter = descendants,
/// workflow filter = root and all its descendants.
#[test]
fn s10_workflow_summary_counts_and_critical_path_tie_goes_to_the_lowest_id() {
    let (mgr, _clock) = manual(2);
    mgr.register("leaf", |_| Ok(json!(null).into())).unwrap();
    mgr.register("root", |ctx| {
        if ctx.stage() == 0 {
            Ok(Outcome::spawn(vec![
                ChildSpec::new("leaf", json!(1)),
                ChildSpec::new("leaf", json!(2)),
                ChildSpec::new("leaf", json!(3)),
            ]))
        } else {
            Ok(json!("done").into())
        }
    })
    .unwrap();
    mgr.start().unwrap();
    let id = mgr.submit("root", json!(null)).unwrap();
    mgr.wait(id, PATIENCE).unwrap();
    let kids = mgr.list_tasks(&TaskFilter::all().parent(id));
    let s = mgr.workflow_summary(id).unwrap();
    assert_eq!(s.critical_path, vec![id, kids[0].id]);
    assert_eq!(s.status_counts["completed"], 4);
    assert_eq!(s.attempt_outcomes["completed"], 4);
    assert_eq!(s.attempt_outcomes["suspended"], 1);
    // root_id filter: descendants only; workflow: root too
    let f = TaskFilter {
        root_id: Some(id),
        ..TaskFilter::default()
    };
    assert_eq!(mgr.list_tasks(&f).len(), 3);
    assert_eq!(mgr.list_tasks(&TaskFilter::all().workflow(id)).len(), 4);
}

/// SPEC §10: "Paged queries return `{items, total, limit, offset, has_more}`";
/// "Stats by tag: counts grouped by (tag, name, status), optional status filter."
#[test]
fn s10_descending_pages_and_stats_by_tag_with_a_status_filter() {
    let (mgr, _clock) = manual(1);
    mgr.register("a", |_| Ok(json!(null).into())).unwrap();
    let ids: Vec<TaskId> = (0..5)
        .map(|i| {
            mgr.submit_with("a", json!(i), SubmitOptions::new().tag("x"))
                .unwrap()
        })
        .collect();
    let p = mgr.query_tasks(
        &TaskFilter::all(),
        Page {
            limit: 2,
            offset: 1,
            descending: true,
        },
    );
    assert_eq!(p.total, 5);
    assert!(p.has_more);
    let got: Vec<TaskId> = p.items.iter().map(|t| t.id).collect();
    assert_eq!(got, vec![ids[3], ids[2]]);
    let stats = mgr.stats_by_tag(Some(TaskStatus::Pending));
    assert_eq!(
        stats[&(Some("x".to_owned()), "a".to_owned(), TaskStatus::Pending)],
        5
    );
    assert!(mgr.stats_by_tag(Some(TaskStatus::Completed)).is_empty());
}

/// SPEC §7 (and fib-flow's cron-parser): with both day-of-month and day-of-week
/// restricted, a day matching either fires. 2024-01-01 is a Monday; `0 0 13 * 5`
/// next fires on Friday 2024-01-05, not on Friday 2024-09-13.
#[test]
fn s7_restricted_day_of_month_and_day_of_week_match_either() {
    // 2024-01-01T00:00:00Z is a Monday.
    let (mgr, _clock) = utc_manager(1_704_067_200_000);
    mgr.register("c", |_| Ok(json!(null).into())).unwrap();
    let id = mgr
        .submit_with("c", json!(null), SubmitOptions::new().cron("0 0 13 * 5"))
        .unwrap();
    // Friday 2024-01-05T00:00:00Z
    assert_eq!(mgr.get_task(id).unwrap().next_run_time, 1_704_412_800_000);
}

/// SPEC §4: "Suspended, paused and pending tasks never time out"; a timed-out
/// attempt is retried (`task_retry_scheduled` timeout → pending, then
/// `task_retry_started` on attempt 2).
#[test]
fn s4_pending_never_times_out_and_a_timeout_is_retried() {
    let (mgr, clock) = manual(2);
    let gate = Gate::new();
    let g = gate.clone();
    mgr.register_with(
        "slow",
        HandlerOptions::new()
            .timeout(Duration::from_secs(1))
            .max_retries(2),
        move |ctx| {
            if ctx.retry_count() == 0 {
                g.wait();
            }
            Ok(json!("ok").into())
        },
    )
    .unwrap();
    mgr.start().unwrap();
    mgr.pause();
    let id = mgr.submit("slow", json!(null)).unwrap();
    clock.advance(Duration::from_secs(3600));
    assert_eq!(status(&mgr, id), TaskStatus::Pending);
    mgr.resume();
    eventually("running", || status(&mgr, id) == TaskStatus::Running);
    clock.advance(Duration::from_secs(2));
    eventually("retried", || mgr.attempts(id).unwrap().len() == 2);
    gate.open();
    let t = mgr.wait(id, PATIENCE).unwrap();
    assert_eq!(t.status, TaskStatus::Completed);
    let ev = mgr.events(id).unwrap();
    let rs = ev
        .iter()
        .find(|e| e.event_type == EventType::RetryScheduled)
        .unwrap();
    assert_eq!(rs.metadata["previous_status"], "timeout");
    assert_eq!(rs.from_status, Some(TaskStatus::Timeout));
    assert_eq!(rs.to_status, Some(TaskStatus::Pending));
    let started = ev
        .iter()
        .find(|e| e.event_type == EventType::RetryStarted)
        .unwrap();
    assert_eq!(started.attempt, Some(2));
}

/// SPEC §2: "A write from an attempt that no longer owns the task (the task left
/// `running` ...) is rejected" — a progress call after `pause_task`.
#[test]
fn s2_a_write_from_a_stale_attempt_is_rejected() {
    let (mgr, _clock) = manual(1);
    let gate = Gate::new();
    let g = gate.clone();
    let out = Arc::new(Mutex::new(None));
    let o = out.clone();
    mgr.register("t", move |ctx| {
        g.wait();
        *o.lock().unwrap() = Some(ctx.progress(Progress {
            text: Some("late".into()),
            ..Progress::default()
        }));
        Ok(json!(null).into())
    })
    .unwrap();
    mgr.start().unwrap();
    let id = mgr.submit("t", json!(null)).unwrap();
    eventually("running", || status(&mgr, id) == TaskStatus::Running);
    mgr.pause_task(id).unwrap();
    gate.open();
    eventually("handler done", || out.lock().unwrap().is_some());
    assert!(matches!(
        out.lock().unwrap().take().unwrap(),
        Err(ContextError::Stale { .. })
    ));
    assert_eq!(mgr.get_task(id).unwrap().progress_text, None);
}

/// SPEC §6: `resume_task` from paused → pending with `task_status_changed`, and
/// "set next_run_time = now" (a delayed task that was paused runs at once).
#[test]
fn s6_resume_from_paused_runs_now_even_if_it_was_delayed() {
    let (mgr, clock) = manual(1);
    mgr.register("t", |_| Ok(json!(null).into())).unwrap();
    mgr.start().unwrap();
    let id = mgr
        .submit_with(
            "t",
            json!(null),
            SubmitOptions::new().delay(Duration::from_secs(3600)),
        )
        .unwrap();
    mgr.pause_task(id).unwrap();
    clock.advance(Duration::from_secs(1));
    mgr.resume_task(id, None).unwrap();
    assert_eq!(mgr.get_task(id).unwrap().next_run_time, T0 + 1000);
    assert_eq!(
        mgr.wait(id, PATIENCE).unwrap().status,
        TaskStatus::Completed
    );
    assert_eq!(
        event_names(&mgr, id),
        [
            "task_created",
            "task_paused",
            "task_status_changed",
            "task_claimed",
            "task_started",
            "task_completed"
        ]
    );
}

/// SPEC §1: registration options (priority) override manager defaults, submission
/// options override registration; §3: priority descending first.
#[test]
fn s3_handler_priority_is_the_default_and_submission_overrides_it() {
    let (mgr, clock) = manual(1);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s1 = seen.clone();
    let s2 = seen.clone();
    mgr.register("low", move |ctx| {
        s1.lock().unwrap().push(ctx.id());
        Ok(json!(null).into())
    })
    .unwrap();
    mgr.register_with("high", HandlerOptions::new().priority(5), move |ctx| {
        s2.lock().unwrap().push(ctx.id());
        Ok(json!(null).into())
    })
    .unwrap();
    mgr.start().unwrap();
    mgr.pause();
    let l = mgr.submit("low", json!(null)).unwrap();
    let h = mgr.submit("high", json!(null)).unwrap();
    let h2 = mgr
        .submit_with("high", json!(null), SubmitOptions::new().priority(-1))
        .unwrap();
    clock.advance(Duration::from_millis(1));
    mgr.resume();
    for id in [l, h, h2] {
        mgr.wait(id, PATIENCE).unwrap();
    }
    assert_eq!(*seen.lock().unwrap(), vec![h, l, h2]);
}

/// SPEC §13: "`stop(deadline)` ... records what did not finish as interrupted";
/// §12: interrupted → `pending` without consuming a retry, `task_recovered`.
#[test]
fn s13_stop_records_unfinished_attempts_as_interrupted() {
    let (mgr, _clock) = manual(1);
    let gate = Gate::new();
    let g = gate.clone();
    mgr.register("t", move |_| {
        g.wait();
        Ok(json!(null).into())
    })
    .unwrap();
    mgr.start().unwrap();
    let id = mgr.submit("t", json!(null)).unwrap();
    eventually("running", || status(&mgr, id) == TaskStatus::Running);
    let r = mgr.stop(Duration::from_millis(50)).unwrap();
    gate.open();
    assert_eq!(r.interrupted, vec![id]);
    let t = mgr.get_task(id).unwrap();
    assert_eq!(t.status, TaskStatus::Pending);
    assert_eq!(t.retry_count, 0);
    let a = mgr.attempts(id).unwrap();
    assert_eq!(a[0].outcome, Some(fibflow::AttemptOutcome::Interrupted));
    assert!(event_names(&mgr, id).contains(&"task_recovered"));
}

/// SPEC §13 defaults (max_retries 3, retry_interval 0, timeout 60 s), §1 ids
/// "unique, increasing" (children included), §5 total/completed children.
#[test]
fn s13_defaults_ids_increase_and_children_are_counted() {
    let (mgr, _clock) = manual(1);
    mgr.register("leaf", |_| Ok(json!(null).into())).unwrap();
    mgr.register("root", |ctx| {
        if ctx.stage() == 0 {
            Ok(Outcome::spawn(vec![
                ChildSpec::new("leaf", json!(1)),
                ChildSpec::new("leaf", json!(2)),
            ]))
        } else {
            Ok(json!("done").into())
        }
    })
    .unwrap();
    let a = mgr.submit("root", json!(null)).unwrap();
    let t = mgr.get_task(a).unwrap();
    assert_eq!(t.max_retries, 3);
    assert_eq!(t.timeout_ms, 60_000);
    assert_eq!(t.retry_interval_ms, 0);
    assert_eq!(t.priority, 0);
    assert_eq!(t.stage, 0);
    mgr.start().unwrap();
    mgr.wait(a, PATIENCE).unwrap();
    let b = mgr.submit("leaf", json!(null)).unwrap();
    let kids: Vec<TaskId> = mgr
        .list_tasks(&TaskFilter::all().parent(a))
        .iter()
        .map(|t| t.id)
        .collect();
    assert!(
        a < kids[0] && kids[0] < kids[1] && kids[1] < b,
        "{a:?} {kids:?} {b:?}"
    );
    let t = mgr.get_task(a).unwrap();
    assert_eq!((t.total_children, t.completed_children), (2, 2));
}

/// fib-flow `insertTask`: `task_subtasks_created` metadata is
/// `{child_task_ids, child_task_names, child_count}`, and `task_created` carries
/// `{name, type, tag}` with no from-status.
#[test]
fn s5_subtasks_created_and_task_created_metadata_use_fib_flow_keys() {
    let (mgr, _clock) = manual(1);
    mgr.register("leaf", |_| Ok(json!(null).into())).unwrap();
    mgr.register("root", |ctx| {
        if ctx.stage() == 0 {
            Ok(Outcome::spawn(vec![ChildSpec::new("leaf", json!(1))]))
        } else {
            Ok(json!(null).into())
        }
    })
    .unwrap();
    mgr.start().unwrap();
    let id = mgr
        .submit_with("root", json!(null), SubmitOptions::new().tag("x"))
        .unwrap();
    mgr.wait(id, PATIENCE).unwrap();
    let kid = mgr.list_tasks(&TaskFilter::all().parent(id))[0].id;
    let ev = mgr.events(id).unwrap();
    let sub = ev
        .iter()
        .find(|e| e.event_type == EventType::SubtasksCreated)
        .unwrap();
    assert_eq!(sub.metadata["child_task_ids"], json!([kid.0]));
    assert_eq!(sub.metadata["child_task_names"], json!(["leaf"]));
    assert_eq!(sub.metadata["child_count"], 1);
    let created = &ev[0];
    assert_eq!(created.from_status, None);
    assert_eq!(
        created.metadata,
        json!({"name": "root", "type": "async", "tag": "x"})
    );
}

/// SPEC §4: "A panicking handler is a failed attempt with the panic message as
/// error." fibflow stores "handler panicked: kaboom".
#[test]
fn s4_the_panic_message_is_the_error() {
    let (mgr, _clock) = manual(1);
    mgr.register_with("p", HandlerOptions::new().max_retries(1), |_| {
        panic!("kaboom")
    })
    .unwrap();
    mgr.start().unwrap();
    let id = mgr.submit("p", json!(null)).unwrap();
    let t = mgr.wait(id, PATIENCE).unwrap();
    assert_eq!(t.error.as_deref(), Some("kaboom"));
    assert_eq!(
        mgr.attempts(id).unwrap()[0].error.as_deref(),
        Some("kaboom")
    );
}

/// SPEC §13 names only an *empty* tag as bad input; fib-flow accepts any tag
/// string. fibflow also refuses task tags with whitespace or commas.
#[test]
fn s13_a_task_tag_with_a_space_is_accepted() {
    let (mgr, _clock) = manual(1);
    mgr.register("t", |_| Ok(json!(null).into())).unwrap();
    let id = mgr
        .submit_with("t", json!(null), SubmitOptions::new().tag("nightly batch"))
        .unwrap();
    assert_eq!(
        mgr.list_tasks(&TaskFilter::all().tag("nightly batch"))[0].id,
        id
    );
}

/// fib-flow `recordTaskCheckpoint` / `recordTaskProgress`: the handler's
/// metadata is merged into the event metadata (`{code, ...metadata}`,
/// `{stage_name, progress_text, progress_percent, ...metadata}`), names and
/// texts are trimmed, and a checkpoint without a message uses its code.
/// fibflow nests it under a `metadata` key and keeps the raw strings.
#[test]
fn s9_checkpoint_and_progress_metadata_merge_like_fib_flow() {
    let (mgr, _clock) = manual(1);
    mgr.register("t", |ctx| {
        ctx.audit(" load ", None, Some(json!({"rows": 10})))?;
        ctx.progress(Progress {
            stage_name: Some(" parse ".into()),
            metadata: Some(json!({"bytes": 5})),
            ..Progress::default()
        })?;
        Ok(json!(null).into())
    })
    .unwrap();
    mgr.start().unwrap();
    let id = mgr.submit("t", json!(null)).unwrap();
    let t = mgr.wait(id, PATIENCE).unwrap();
    assert_eq!(t.current_stage_name.as_deref(), Some("parse"));
    let ev = mgr.events(id).unwrap();
    let cp = ev
        .iter()
        .find(|e| e.event_type == EventType::Checkpoint)
        .unwrap();
    assert_eq!(cp.metadata, json!({"code": "load", "rows": 10}));
    assert_eq!(cp.message.as_deref(), Some("load"));
    let pr = ev
        .iter()
        .find(|e| e.event_type == EventType::Progress)
        .unwrap();
    assert_eq!(pr.metadata, json!({"stage_name": "parse", "bytes": 5}));
}

/// SPEC §13: "Nothing in the log is changed by a rejected call." A batch with
/// one bad item is refused as a whole (like `register_many`, all or none).
#[test]
fn s13_a_refused_batch_submit_creates_nothing() {
    let (mgr, _clock) = manual(1);
    mgr.register("t", |_| Ok(json!(null).into())).unwrap();
    let r = mgr.submit_batch(vec![
        ("t".to_owned(), json!(1), SubmitOptions::new()),
        ("t".to_owned(), json!(2), SubmitOptions::new().tag("")),
    ]);
    assert!(matches!(r, Err(Error::InvalidTag(_))));
    assert!(mgr.list_tasks(&TaskFilter::all()).is_empty());
}

/// SPEC §3: "A type at its cap is skipped while others run": a task of another
/// type completes while `backlog` tasks of a type capped at 1 are queued ahead
/// of it at higher priority and the one running is blocked.
fn another_type_runs_behind_a_capped_backlog(backlog: u32) {
    let (mgr, _clock) = manual(2);
    let gate = Gate::new();
    let g = gate.clone();
    mgr.register_with(
        "capped",
        HandlerOptions::new().max_concurrent_tasks(1),
        move |_| {
            g.wait();
            Ok(json!(null).into())
        },
    )
    .unwrap();
    mgr.register("other", |_| Ok(json!("ok").into())).unwrap();
    for i in 0..backlog {
        mgr.submit_with("capped", json!(i), SubmitOptions::new().priority(10))
            .unwrap();
    }
    let other = mgr.submit("other", json!(null)).unwrap();
    mgr.start().unwrap();
    let r = mgr.wait(other, Duration::from_secs(20));
    gate.open();
    assert_eq!(r.unwrap().status, TaskStatus::Completed);
}

/// SPEC §3, with a backlog shorter than a worker's scan of one queue.
#[test]
fn s3_a_type_at_its_cap_is_skipped_while_others_run() {
    another_type_runs_behind_a_capped_backlog(200);
}

/// SPEC §3, with a backlog longer than a worker's scan of one queue (`SCAN_LIMIT`
/// = 256): it starved the other type until blocked entries were moved aside.
#[test]
fn s3_a_large_backlog_of_a_capped_type_does_not_starve_other_types() {
    another_type_runs_behind_a_capped_backlog(300);
}

/// SPEC §3: eligible only with a registered handler — pending tasks of an
/// unregistered name must not block others. With more than 256 of them queued
/// ahead, other tasks of the same requirement set never run.
#[test]
fn s3_pending_tasks_of_an_unregistered_handler_do_not_block_others() {
    let (mgr, _clock) = manual(1);
    mgr.register("gone", |_| Ok(json!(null).into())).unwrap();
    mgr.register("other", |_| Ok(json!("ok").into())).unwrap();
    for i in 0..300 {
        mgr.submit_with("gone", json!(i), SubmitOptions::new().priority(10))
            .unwrap();
    }
    assert_eq!(mgr.unregister(&["gone"]), 1);
    let other = mgr.submit("other", json!(null)).unwrap();
    mgr.start().unwrap();
    assert_eq!(
        mgr.wait(other, Duration::from_secs(20)).unwrap().status,
        TaskStatus::Completed
    );
}

/// SPEC §3: "slots free on success, failure, suspension and pause". A task
/// paused while its handler still runs frees its handler slot at once, though
/// the handler runs on. (fib-flow holds its semaphore until the handler
/// returns; this follows the SPEC.)
#[test]
fn s3_pausing_a_running_task_frees_its_handler_slot() {
    let (mgr, _clock) = manual(2);
    let gate = Gate::new();
    let g = gate.clone();
    mgr.register_with(
        "one",
        HandlerOptions::new().max_concurrent_tasks(1),
        move |ctx| {
            if ctx.payload() == &json!("block") {
                g.wait();
            }
            Ok(json!(null).into())
        },
    )
    .unwrap();
    mgr.start().unwrap();
    let a = mgr.submit("one", json!("block")).unwrap();
    eventually("a runs", || status(&mgr, a) == TaskStatus::Running);
    mgr.pause_task(a).unwrap();
    let b = mgr.submit("one", json!("free")).unwrap();
    let r = mgr.wait(b, Duration::from_secs(10));
    gate.open();
    assert_eq!(r.unwrap().status, TaskStatus::Completed);
}

/// Known deviation, not fixed: a submitted `retry_interval` loses to a
/// handler's or pool's `RetryStrategy`: honouring it needs the record to say
/// the interval was given explicitly, a change of record format v1.
#[cfg(spec_deviations)]
mod deviations {
    use super::*;

    /// SPEC §1: registration options override manager defaults, and a
    /// submission's options override the registration (fib-flow:
    /// `{...registeredTask.options, ...options}`); §4 "fixed retry_interval by
    /// default". A submitted retry_interval is ignored when the handler has a
    /// strategy.
    #[test]
    fn s4_a_submitted_retry_interval_overrides_the_handler_strategy() {
        let (mgr, _clock) = manual(1);
        mgr.register_with(
            "bad",
            HandlerOptions::new()
                .max_retries(2)
                .retry(RetryStrategy::fixed(Duration::from_secs(100))),
            |_| Err("no".into()),
        )
        .unwrap();
        mgr.start().unwrap();
        let id = mgr
            .submit_with(
                "bad",
                json!(null),
                SubmitOptions::new().retry_interval(Duration::from_secs(7)),
            )
            .unwrap();
        eventually("failed", || status(&mgr, id) == TaskStatus::Failed);
        assert_eq!(mgr.get_task(id).unwrap().next_run_time, T0 + 7000);
    }
}

/// SPEC §9 / fib-flow `normalizeMetadata`: handler metadata must be an object.
#[test]
fn s9_handler_metadata_that_is_not_an_object_is_refused() {
    let (mgr, _clock) = manual(1);
    mgr.register("t", |ctx| {
        let bad = ctx.audit("c", None, Some(json!([1, 2])));
        assert!(matches!(bad, Err(ContextError::Invalid(_))), "{bad:?}");
        let bad = ctx.progress(Progress {
            text: Some("x".into()),
            metadata: Some(json!("text")),
            ..Progress::default()
        });
        assert!(matches!(bad, Err(ContextError::Invalid(_))), "{bad:?}");
        Ok(json!("checked").into())
    })
    .unwrap();
    mgr.start().unwrap();
    let id = mgr.submit("t", json!(null)).unwrap();
    let t = mgr.wait(id, PATIENCE).unwrap();
    assert_eq!(t.status, TaskStatus::Completed, "{:?}", t.error);
    let names = event_names(&mgr, id);
    assert!(!names.contains(&"task_checkpoint"), "{names:?}");
    assert!(!names.contains(&"task_progress"), "{names:?}");
}
