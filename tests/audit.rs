//! SPEC §9–11: events, attempts, handler audit/progress, queries, retention.

mod common;

use common::{event_names, eventually, manual, PATIENCE};
use fibflow::{
    AttemptFilter, AttemptOutcome, ChildSpec, EventFilter, EventType, HandlerOptions, Outcome,
    Page, Progress, RetentionPolicy, SubmitOptions, TaskFilter, TaskStatus,
};
use serde_json::json;
use std::time::Duration;

#[test]
fn progress_and_audit_update_the_snapshot_and_validate_input() {
    let (mgr, _clock) = manual(1);
    mgr.register("p", |ctx| {
        ctx.progress(Progress {
            stage_name: Some("load".into()),
            percent: Some(40),
            ..Progress::default()
        })?;
        ctx.progress(Progress {
            text: Some("half".into()),
            ..Progress::default()
        })?;
        ctx.audit("cp1", Some("checkpoint"), Some(json!({"k": 1})))?;
        assert!(ctx
            .progress(Progress {
                percent: Some(101),
                ..Progress::default()
            })
            .is_err());
        assert!(ctx
            .progress(Progress {
                text: Some(String::new()),
                ..Progress::default()
            })
            .is_err());
        assert!(ctx.audit("", None, None).is_err());
        Ok(json!(null).into())
    })
    .unwrap();
    mgr.start().unwrap();
    let id = mgr.submit("p", json!(null)).unwrap();
    let t = mgr.wait(id, PATIENCE).unwrap();
    assert_eq!(t.status, TaskStatus::Completed);
    assert_eq!(
        t.current_stage_name.as_deref(),
        Some("load"),
        "only the given fields change"
    );
    assert_eq!(t.progress_percent, Some(40));
    assert_eq!(t.progress_text.as_deref(), Some("half"));
    assert_eq!(
        event_names(&mgr, id),
        [
            "task_created",
            "task_claimed",
            "task_started",
            "task_progress",
            "task_progress",
            "task_checkpoint",
            "task_completed"
        ]
    );
    let evs = mgr.events(id).unwrap();
    assert!(evs
        .iter()
        .filter(|e| e.event_type == EventType::Progress)
        .all(|e| e.attempt == Some(1)));
    let cp = evs
        .iter()
        .find(|e| e.event_type == EventType::Checkpoint)
        .unwrap();
    assert_eq!(cp.metadata["code"], "cp1");
    assert_eq!(cp.message.as_deref(), Some("checkpoint"));
}

#[test]
fn cron_exhaustion_pauses_with_retry_exhausted() {
    let (mgr, clock) = manual(1);
    mgr.register_with("c", HandlerOptions::new().max_retries(1), |_| {
        Err("nope".into())
    })
    .unwrap();
    mgr.start().unwrap();
    let id = mgr
        .submit_with("c", json!(null), SubmitOptions::new().cron("* * * * * *"))
        .unwrap();
    clock.advance(Duration::from_secs(2));
    let t = mgr.wait(id, PATIENCE).unwrap();
    assert_eq!(t.status, TaskStatus::Paused);
    assert_eq!(
        event_names(&mgr, id),
        [
            "task_created",
            "task_claimed",
            "task_started",
            "task_failed",
            "task_paused"
        ]
    );
    let last = mgr.events(id).unwrap().pop().unwrap();
    assert_eq!(last.metadata["retry_exhausted"], true);
}

#[test]
fn spawn_and_explicit_suspend_event_sequences() {
    let (mgr, _clock) = manual(2);
    mgr.register("child", |_| Ok(json!("c").into())).unwrap();
    mgr.register("parent", |ctx| match ctx.stage() {
        0 => Ok(Outcome::spawn(vec![ChildSpec::new("child", json!(1))])),
        1 => Ok(Outcome::suspend("approval")),
        _ => Ok(json!("done").into()),
    })
    .unwrap();
    mgr.start().unwrap();
    let id = mgr.submit("parent", json!(null)).unwrap();
    eventually("suspended for approval", || {
        let t = mgr.get_task(id).unwrap();
        t.status == TaskStatus::Suspended && t.stage == 1
    });
    let listed = mgr.list_tasks(&TaskFilter {
        suspend_reason: Some("approval".into()),
        ..TaskFilter::default()
    });
    assert_eq!(listed.len(), 1);
    mgr.resume_task(id, Some("approved")).unwrap();
    let t = mgr.wait(id, PATIENCE).unwrap();
    assert_eq!(t.result, Some(json!("done")));
    assert_eq!(t.stage, 2);
    assert_eq!(
        event_names(&mgr, id),
        [
            "task_created",
            "task_claimed",
            "task_started",
            "task_subtasks_created",
            "task_status_changed",
            "task_status_changed",
            "task_claimed",
            "task_started",
            "task_suspended",
            "task_resumed",
            "task_claimed",
            "task_started",
            "task_completed"
        ]
    );
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
    let resumed = mgr
        .events(id)
        .unwrap()
        .into_iter()
        .find(|e| e.event_type == EventType::Resumed)
        .unwrap();
    assert_eq!(resumed.metadata["resume_reason"], "approved");

    let summary = mgr.workflow_summary(id).unwrap();
    assert_eq!(summary.status_counts["completed"], 2);
    assert_eq!(summary.critical_path.len(), 2);
    assert_eq!(summary.critical_path[0], id);
    assert!(summary.slowest_attempts.len() <= 5);
    assert_eq!(summary.attempt_outcomes["suspended"], 2);
    let wf = mgr
        .workflow_audit(
            id,
            Page::default(),
            Page {
                limit: 3,
                offset: 0,
                descending: false,
            },
        )
        .unwrap();
    assert_eq!(wf.tasks.total, 2);
    assert_eq!(wf.events.items.len(), 3);
    assert!(wf.events.has_more);
}

#[test]
fn cancel_of_a_suspended_task() {
    let (mgr, _clock) = manual(1);
    mgr.register("s", |_| Ok(Outcome::suspend("wait"))).unwrap();
    mgr.start().unwrap();
    let id = mgr.submit("s", json!(null)).unwrap();
    eventually("suspended", || {
        mgr.get_task(id).unwrap().status == TaskStatus::Suspended
    });
    mgr.cancel_task(id, None).unwrap();
    let t = mgr.wait(id, PATIENCE).unwrap();
    assert_eq!(t.status, TaskStatus::PermanentlyFailed);
    assert_eq!(t.error.as_deref(), Some("Task cancelled"));
    assert_eq!(
        event_names(&mgr, id).last(),
        Some(&"task_permanently_failed")
    );
}

#[test]
fn event_and_attempt_filters_and_paging() {
    let (mgr, _clock) = manual(1);
    let calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let c = calls.clone();
    mgr.register("f", move |_| {
        if c.fetch_add(1, std::sync::atomic::Ordering::SeqCst) < 2 {
            Err("e".into())
        } else {
            Ok(json!(1).into())
        }
    })
    .unwrap();
    mgr.start().unwrap();
    let id = mgr.submit("f", json!(null)).unwrap();
    mgr.wait(id, PATIENCE).unwrap();
    let f = EventFilter {
        types: vec![EventType::Started],
        ..EventFilter::default()
    };
    let page = mgr
        .query_events(
            id,
            &f,
            Page {
                limit: 2,
                offset: 0,
                descending: false,
            },
        )
        .unwrap();
    assert_eq!(page.total, 3);
    assert!(page.has_more);
    assert_eq!(page.items[0].attempt, Some(1));
    let f = EventFilter {
        attempt: Some(2),
        ..EventFilter::default()
    };
    assert!(mgr
        .query_events(id, &f, Page::default())
        .unwrap()
        .items
        .iter()
        .all(|e| e.attempt == Some(2)));
    let af = AttemptFilter {
        outcome: Some(AttemptOutcome::Failed),
        ..AttemptFilter::default()
    };
    assert_eq!(
        mgr.query_attempts(id, &af, Page::default()).unwrap().total,
        2
    );
    let audit = mgr
        .task_audit(id, Page::default(), Page::default())
        .unwrap();
    assert_eq!(audit.attempts.total, 3);
    assert_eq!(
        audit.events.items.first().map(|e| e.event_type),
        Some(EventType::Created)
    );
}

#[test]
fn retention_removes_exactly_the_eligible_tasks_with_their_history() {
    let (mgr, clock) = manual(1);
    mgr.register("ok", |_| Ok(json!(1).into())).unwrap();
    mgr.register("bad", |_| Err("x".into())).unwrap();
    mgr.register("hold", |_| Ok(Outcome::suspend("human")))
        .unwrap();
    mgr.start().unwrap();
    let old_ok = mgr.submit("ok", json!(null)).unwrap();
    let old_bad = mgr
        .submit_with("bad", json!(null), SubmitOptions::new().max_retries(1))
        .unwrap();
    let held = mgr.submit("hold", json!(null)).unwrap();
    mgr.wait(old_ok, PATIENCE).unwrap();
    mgr.wait(old_bad, PATIENCE).unwrap();
    eventually("held", || {
        mgr.get_task(held).unwrap().status == TaskStatus::Suspended
    });
    clock.advance(Duration::from_secs(3600));
    let fresh = mgr.submit("ok", json!(null)).unwrap();
    mgr.wait(fresh, PATIENCE).unwrap();
    let expected_events =
        (mgr.events(old_ok).unwrap().len() + mgr.events(old_bad).unwrap().len()) as u64;
    let report = mgr
        .run_retention(Some(&RetentionPolicy::new(Duration::from_secs(60))))
        .unwrap();
    assert_eq!(report.tasks, 2);
    assert_eq!(report.events, expected_events);
    assert_eq!(report.attempts, 2);
    assert!(mgr.get_task(old_ok).is_none());
    assert!(mgr.get_task(old_bad).is_none());
    assert!(
        mgr.get_task(held).is_some(),
        "suspended tasks are never removed"
    );
    assert!(mgr.get_task(fresh).is_some(), "young tasks stay");
    let bad = RetentionPolicy::new(Duration::ZERO).statuses([TaskStatus::Suspended]);
    assert!(mgr.run_retention(Some(&bad)).is_err());
}

/// A started manager on a manual clock with handler "ok", whose automatic
/// retention removes tasks finished over 10 s ago, every 60 s.
fn auto_retention_manager() -> (fibflow::TaskManager, std::sync::Arc<fibflow::ManualClock>) {
    let clock = fibflow::ManualClock::new(1_700_000_000_000);
    let mgr = fibflow::TaskManager::builder()
        .memory()
        .clock(clock.clone())
        .retention(
            RetentionPolicy::new(Duration::from_secs(10)),
            Duration::from_secs(60),
        )
        .build()
        .unwrap();
    mgr.register("ok", |_| Ok(json!(1).into())).unwrap();
    mgr.start().unwrap();
    (mgr, clock)
}

#[test]
fn automatic_retention_runs_after_its_interval() {
    let (mgr, clock) = auto_retention_manager();
    let id = mgr.submit("ok", json!(null)).unwrap();
    mgr.wait(id, PATIENCE).unwrap();
    clock.advance(Duration::from_secs(30));
    assert!(mgr.get_task(id).is_some(), "not before the interval");
    clock.advance(Duration::from_secs(31));
    eventually("retention removed the task", || mgr.get_task(id).is_none());
}

/// A sweep deletes one bounded batch (100, fib-flow's size); while batches
/// come back full the next one is due a millisecond later, not a whole
/// interval later, so a backlog drains quickly (on a manual clock: one batch
/// each time the clock moves). A pipeline finishing more tasks per interval
/// than a batch holds would otherwise outgrow its retention.
#[test]
fn automatic_retention_drains_a_backlog_one_batch_per_clock_tick() {
    let (mgr, clock) = auto_retention_manager();
    const N: u64 = 250;
    mgr.submit_batch((0..N).map(|_| ("ok".to_owned(), json!(null), SubmitOptions::new())))
        .unwrap();
    eventually("all completed", || {
        mgr.count_by_status()[&TaskStatus::Completed] == N
    });
    let left = || mgr.count_by_status().values().sum::<u64>();
    clock.advance(Duration::from_secs(61));
    assert_eq!(left(), 150, "the interval's sweep deletes one batch");
    clock.advance(Duration::from_millis(1));
    assert_eq!(left(), 50, "a full batch makes the next one due 1 ms later");
    clock.advance(Duration::from_millis(1));
    assert_eq!(left(), 0);
}

/// With the system clock, automatic retention runs on an idle manager too:
/// the timer thread used to look at housekeeping only when a timer or an
/// attempt fell due, so an idle manager never swept.
#[test]
fn automatic_retention_runs_on_an_idle_manager_with_the_system_clock() {
    let mgr = fibflow::TaskManager::builder()
        .memory()
        .retention(
            RetentionPolicy::new(Duration::from_millis(1)),
            Duration::from_millis(100),
        )
        .build()
        .unwrap();
    mgr.register("ok", |_| Ok(json!(1).into())).unwrap();
    mgr.start().unwrap();
    let id = mgr.submit("ok", json!(null)).unwrap();
    mgr.wait(id, PATIENCE).unwrap();
    eventually("retention removed the task", || mgr.get_task(id).is_none());
}

#[test]
fn stats_by_tag_and_delete_with_filters() {
    let (mgr, _clock) = manual(1);
    mgr.register("a", |_| Ok(json!(1).into())).unwrap();
    for _ in 0..3 {
        mgr.submit_with("a", json!(null), SubmitOptions::new().tag("t1"))
            .unwrap();
    }
    mgr.submit_with("a", json!(null), SubmitOptions::new().tag("t2"))
        .unwrap();
    let stats = mgr.stats_by_tag(Some(TaskStatus::Pending));
    assert_eq!(
        stats[&(Some("t1".to_string()), "a".to_string(), TaskStatus::Pending)],
        3
    );
    assert_eq!(mgr.delete_tasks(&TaskFilter::all().tag("t1")).unwrap(), 3);
    assert_eq!(mgr.list_tasks(&TaskFilter::all()).len(), 1);
}
