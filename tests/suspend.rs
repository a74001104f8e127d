//! SPEC §6 (explicit suspension, resume_task, cancel_task, pause_task, listing by
//! reason) and the §8 rule that resumed tasks run the current registration.

mod common;

use common::{event_names, eventually, manual, PATIENCE};
use fibflow::{
    AttemptOutcome, Clock, Error, EventType, HandlerOptions, Outcome, SubmitOptions, TaskFilter,
    TaskId, TaskManager, TaskStatus,
};
use serde_json::json;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::Duration;

fn by_reason(reason: &str) -> TaskFilter {
    TaskFilter {
        suspend_reason: Some(reason.into()),
        ..TaskFilter::default()
    }
}

fn last_event(mgr: &TaskManager, id: TaskId, ty: EventType) -> fibflow::Event {
    mgr.events(id)
        .unwrap()
        .into_iter()
        .rev()
        .find(|e| e.event_type == ty)
        .unwrap()
}

/// "approval": stage 0 suspends with `reason` and context `draft`; later stages
/// complete with what they saw.
fn register_approval(mgr: &TaskManager, opts: HandlerOptions) {
    mgr.register_with("approval", opts, |ctx| {
        if ctx.stage() == 0 {
            let reason = ctx.payload()["reason"]
                .as_str()
                .unwrap_or("awaiting_approval")
                .to_owned();
            return Ok(Outcome::Suspend {
                reason,
                context: Some(b"draft".to_vec()),
            });
        }
        Ok(json!({
            "stage": ctx.stage(),
            "context": ctx.context().map(|c| String::from_utf8_lossy(c).into_owned()),
            "retry_count": ctx.retry_count(),
            "version": 1,
        })
        .into())
    })
    .unwrap();
}

#[test]
fn explicit_suspend_records_reason_and_context_and_never_times_out() {
    let (mgr, clock) = manual(2);
    register_approval(&mgr, HandlerOptions::new().timeout(Duration::from_secs(1)));
    mgr.start().unwrap();
    let id = mgr
        .submit("approval", json!({ "reason": "awaiting_approval" }))
        .unwrap();
    eventually("suspended", || {
        mgr.get_task(id).unwrap().status == TaskStatus::Suspended
    });
    let t = mgr.get_task(id).unwrap();
    assert_eq!(t.context, Some(b"draft".to_vec()));
    assert_eq!(t.stage, 0);
    let attempts = mgr.attempts(id).unwrap();
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0].outcome, Some(AttemptOutcome::Suspended));
    assert_eq!(attempts[0].error, None);
    assert_eq!(
        event_names(&mgr, id),
        [
            "task_created",
            "task_claimed",
            "task_started",
            "task_suspended"
        ]
    );
    let ev = last_event(&mgr, id, EventType::Suspended);
    assert_eq!(ev.metadata["suspend_reason"], "awaiting_approval");
    assert_eq!(ev.from_status, Some(TaskStatus::Running));
    assert_eq!(ev.to_status, Some(TaskStatus::Suspended));
    assert_eq!(ev.attempt, Some(1));

    // Hours pass: no timeout, no resume by itself.
    for _ in 0..5 {
        clock.advance(Duration::from_hours(1));
    }
    assert!(matches!(
        mgr.wait(id, Duration::from_millis(50)),
        Err(Error::WaitTimeout { .. })
    ));
    let t = mgr.get_task(id).unwrap();
    assert_eq!(t.status, TaskStatus::Suspended);
    assert_eq!(mgr.attempts(id).unwrap().len(), 1);
    assert_eq!(mgr.list_tasks(&by_reason("awaiting_approval")).len(), 1);

    let before = clock.now_ms();
    mgr.resume_task(id, None).unwrap();
    let t = mgr.wait(id, PATIENCE).unwrap();
    assert_eq!(t.status, TaskStatus::Completed);
    assert_eq!(t.stage, 1);
    assert_eq!(
        t.result,
        Some(json!({ "stage": 1, "context": "draft", "retry_count": 0, "version": 1 })),
        "the resumed run sees its saved context"
    );
    let ev = last_event(&mgr, id, EventType::Resumed);
    assert_eq!(ev.metadata["resume_reason"], "manual");
    assert_eq!(ev.from_status, Some(TaskStatus::Suspended));
    assert_eq!(ev.to_status, Some(TaskStatus::Pending));
    assert_eq!(ev.stage, 1);
    assert!(ev.time >= before);
    assert_eq!(
        event_names(&mgr, id),
        [
            "task_created",
            "task_claimed",
            "task_started",
            "task_suspended",
            "task_resumed",
            "task_claimed",
            "task_started",
            "task_completed"
        ]
    );
    assert!(mgr.list_tasks(&by_reason("awaiting_approval")).is_empty());
}

#[test]
fn resume_with_a_reason_records_it_and_sets_next_run_time_to_now() {
    let (mgr, clock) = manual(1);
    register_approval(&mgr, HandlerOptions::new());
    let id = mgr.submit("approval", json!({})).unwrap();
    mgr.start().unwrap();
    eventually("suspended", || {
        mgr.get_task(id).unwrap().status == TaskStatus::Suspended
    });
    clock.advance(Duration::from_secs(90));
    mgr.pause(); // keep it pending so the resume itself can be inspected
    mgr.resume_task(id, Some("approved by bob")).unwrap();
    let t = mgr.get_task(id).unwrap();
    assert_eq!(t.status, TaskStatus::Pending);
    assert_eq!(t.stage, 1);
    assert_eq!(t.next_run_time, clock.now_ms());
    assert_eq!(
        last_event(&mgr, id, EventType::Resumed).metadata["resume_reason"],
        "approved by bob"
    );
    mgr.resume();
    assert_eq!(
        mgr.wait(id, PATIENCE).unwrap().status,
        TaskStatus::Completed
    );
}

#[test]
fn empty_or_whitespace_reason_fails_the_attempt_with_a_clear_error() {
    let (mgr, _clock) = manual(2);
    register_approval(&mgr, HandlerOptions::new().max_retries(1));
    mgr.start().unwrap();
    for reason in ["", "   \t\n"] {
        let id = mgr.submit("approval", json!({ "reason": reason })).unwrap();
        let t = mgr.wait(id, PATIENCE).unwrap();
        assert_eq!(t.status, TaskStatus::PermanentlyFailed, "reason {reason:?}");
        let err = t.error.unwrap();
        assert!(err.contains("reason") && err.contains("empty"), "{err}");
        let a = &mgr.attempts(id).unwrap()[0];
        assert_eq!(a.outcome, Some(AttemptOutcome::Failed));
        assert_eq!(a.error.as_deref(), Some(err.as_str()));
        assert!(!event_names(&mgr, id).contains(&"task_suspended"));
        assert_eq!(t.context, None, "a refused suspension saves no context");
    }
}

#[test]
fn empty_reason_is_retried_like_any_failure() {
    let (mgr, _clock) = manual(1);
    mgr.register_with("s", HandlerOptions::new().max_retries(2), |ctx| {
        if ctx.retry_count() == 0 {
            return Ok(Outcome::suspend(" "));
        }
        Ok(Outcome::suspend("second try"))
    })
    .unwrap();
    mgr.start().unwrap();
    let id = mgr.submit("s", json!(null)).unwrap();
    eventually("suspended", || {
        mgr.get_task(id).unwrap().status == TaskStatus::Suspended
    });
    let t = mgr.get_task(id).unwrap();
    assert_eq!(t.retry_count, 1);
    assert_eq!(mgr.list_tasks(&by_reason("second try")).len(), 1);
}

#[test]
fn resume_resets_retry_count_and_runs_the_latest_handler() {
    let (mgr, _clock) = manual(1);
    mgr.register_with("h", HandlerOptions::new().max_retries(3), |ctx| {
        if ctx.retry_count() == 0 {
            return Err("first attempt fails".into());
        }
        Ok(Outcome::Suspend {
            reason: "review".into(),
            context: Some(vec![42]),
        })
    })
    .unwrap();
    mgr.start().unwrap();
    let id = mgr.submit("h", json!(null)).unwrap();
    eventually("suspended", || {
        mgr.get_task(id).unwrap().status == TaskStatus::Suspended
    });
    assert_eq!(mgr.get_task(id).unwrap().retry_count, 1);

    let seen = Arc::new(Mutex::new(None));
    let s = seen.clone();
    mgr.register("h", move |ctx| {
        *s.lock().unwrap() = Some((
            ctx.stage(),
            ctx.retry_count(),
            ctx.context().map(<[u8]>::to_vec),
        ));
        Ok(json!("v2").into())
    })
    .unwrap();
    mgr.resume_task(id, None).unwrap();
    let t = mgr.wait(id, PATIENCE).unwrap();
    assert_eq!(
        t.result,
        Some(json!("v2")),
        "the resumed task runs the current registration"
    );
    assert_eq!(t.retry_count, 0);
    assert_eq!(*seen.lock().unwrap(), Some((1, 0, Some(vec![42]))));
    let claim = mgr
        .events(id)
        .unwrap()
        .into_iter()
        .filter(|e| e.event_type == EventType::Claimed)
        .count();
    assert_eq!(claim, 3);
    assert_eq!(
        event_names(&mgr, id)
            .iter()
            .filter(|n| **n == "task_retry_started")
            .count(),
        1,
        "the resumed run is not a retry"
    );
}

#[test]
fn resume_from_paused_goes_back_to_stage_zero_and_runs_now() {
    let (mgr, clock) = manual(1);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    mgr.register_with(
        "t",
        HandlerOptions::new().retry_interval(Duration::from_mins(10)),
        move |ctx| {
            s.lock().unwrap().push((
                ctx.stage(),
                ctx.retry_count(),
                ctx.context().map(<[u8]>::to_vec),
            ));
            match (ctx.stage(), ctx.retry_count()) {
                (0, 0) => Err("fail so a retry is scheduled".into()),
                (0, _) => Ok(Outcome::Suspend {
                    reason: "first".into(),
                    context: Some(b"ctx".to_vec()),
                }),
                _ => Ok(json!("never").into()),
            }
        },
    )
    .unwrap();
    mgr.start().unwrap();
    let id = mgr.submit("t", json!(null)).unwrap();
    // SPEC §4: failed until the retry is due; gate claims so that the retry,
    // once due, waits in pending with retry_count 1.
    eventually("first failure", || {
        mgr.get_task(id).unwrap().status == TaskStatus::Failed
    });
    assert!(mgr.get_task(id).unwrap().next_run_time > clock.now_ms());
    mgr.pause();
    clock.advance(Duration::from_mins(10));
    eventually("retry due", || {
        let t = mgr.get_task(id).unwrap();
        t.status == TaskStatus::Pending && t.retry_count == 1
    });

    // pending -> paused -> pending: stage 0, retry_count 0, due now.
    mgr.pause_task(id).unwrap();
    let t = mgr.get_task(id).unwrap();
    assert_eq!(t.status, TaskStatus::Paused);
    let ev = last_event(&mgr, id, EventType::Paused);
    assert_eq!(
        (ev.from_status, ev.to_status),
        (Some(TaskStatus::Pending), Some(TaskStatus::Paused))
    );
    assert_eq!(ev.attempt, None, "no attempt was open");
    assert_eq!(
        mgr.wait(id, PATIENCE).unwrap().status,
        TaskStatus::Paused,
        "wait returns at paused"
    );
    mgr.resume();
    mgr.resume_task(id, None).unwrap();
    let ev = last_event(&mgr, id, EventType::StatusChanged);
    assert_eq!(
        (ev.from_status, ev.to_status),
        (Some(TaskStatus::Paused), Some(TaskStatus::Pending))
    );
    assert!(!event_names(&mgr, id).contains(&"task_resumed"));
    // It ran at once with retry_count 0 (so it failed again and a new retry waits).
    eventually("ran again", || {
        mgr.attempts(id).unwrap().len() == 2
            && mgr.get_task(id).unwrap().status == TaskStatus::Failed
    });
    assert_eq!(seen.lock().unwrap()[1], (0, 0, None));
    let t = mgr.get_task(id).unwrap();
    assert_eq!(
        (t.status, t.stage, t.retry_count),
        (TaskStatus::Failed, 0, 0)
    );
    clock.advance(Duration::from_mins(10));
    eventually("suspended", || {
        mgr.get_task(id).unwrap().status == TaskStatus::Suspended
    });
    assert_eq!(seen.lock().unwrap().len(), 3);
}

#[test]
fn resume_from_paused_after_a_resume_resets_the_stage() {
    let (mgr, _clock) = manual(1);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    mgr.register("t", move |ctx| {
        s.lock()
            .unwrap()
            .push((ctx.stage(), ctx.context().map(<[u8]>::to_vec)));
        if ctx.stage() == 0 && seen_len(&s) == 1 {
            return Ok(Outcome::Suspend {
                reason: "wait".into(),
                context: Some(b"kept".to_vec()),
            });
        }
        Ok(json!(ctx.stage()).into())
    })
    .unwrap();
    mgr.start().unwrap();
    let id = mgr.submit("t", json!(null)).unwrap();
    eventually("suspended", || {
        mgr.get_task(id).unwrap().status == TaskStatus::Suspended
    });
    mgr.pause();
    mgr.resume_task(id, None).unwrap();
    assert_eq!(mgr.get_task(id).unwrap().stage, 1);
    mgr.pause_task(id).unwrap();
    mgr.resume_task(id, Some("ops")).unwrap();
    let ev = last_event(&mgr, id, EventType::StatusChanged);
    assert_eq!(ev.metadata["resume_reason"], "ops");
    let t = mgr.get_task(id).unwrap();
    assert_eq!((t.status, t.stage), (TaskStatus::Pending, 0));
    mgr.resume();
    let t = mgr.wait(id, PATIENCE).unwrap();
    assert_eq!(t.result, Some(json!(0)));
    assert_eq!(
        *seen.lock().unwrap(),
        [(0, None), (0, Some(b"kept".to_vec()))],
        "context survives a pause"
    );
}

fn seen_len<T>(s: &Arc<Mutex<Vec<T>>>) -> usize {
    s.lock().unwrap().len()
}

#[test]
fn resume_from_paused_runs_the_latest_handler() {
    let (mgr, _clock) = manual(1);
    mgr.register("t", |_| Ok(json!("v1").into())).unwrap();
    let id = mgr
        .submit_with(
            "t",
            json!(null),
            SubmitOptions::new().delay(Duration::from_mins(1)),
        )
        .unwrap();
    mgr.start().unwrap();
    mgr.pause_task(id).unwrap();
    mgr.register("t", |_| Ok(json!("v2").into())).unwrap();
    mgr.resume_task(id, None).unwrap();
    assert_eq!(mgr.wait(id, PATIENCE).unwrap().result, Some(json!("v2")));
}

#[test]
fn resume_task_refuses_other_statuses_and_changes_nothing() {
    let (mgr, _clock) = manual(1);
    mgr.register("t", |_| Ok(json!(1).into())).unwrap();
    let pending = mgr
        .submit_with(
            "t",
            json!(null),
            SubmitOptions::new().delay(Duration::from_mins(1)),
        )
        .unwrap();
    let before = mgr.events(pending).unwrap();
    assert!(matches!(
        mgr.resume_task(pending, None),
        Err(Error::Transition(_))
    ));
    assert_eq!(mgr.events(pending).unwrap(), before);
    mgr.start().unwrap();
    let done = mgr.submit("t", json!(null)).unwrap();
    mgr.wait(done, PATIENCE).unwrap();
    let err = mgr.resume_task(done, None).unwrap_err();
    assert!(err.to_string().contains("completed"), "{err}");
    assert_eq!(mgr.get_task(done).unwrap().status, TaskStatus::Completed);
    assert!(matches!(
        mgr.resume_task(TaskId(u64::MAX), None),
        Err(Error::NotFound(_))
    ));
}

#[test]
fn cancel_task_fails_a_suspended_task_with_the_reason_or_a_default() {
    let (mgr, _clock) = manual(2);
    register_approval(&mgr, HandlerOptions::new());
    mgr.start().unwrap();
    let a = mgr.submit("approval", json!({})).unwrap();
    let b = mgr.submit("approval", json!({})).unwrap();
    eventually("both suspended", || {
        mgr.list_tasks(&by_reason("awaiting_approval")).len() == 2
    });
    mgr.cancel_task(a, None).unwrap();
    mgr.cancel_task(b, Some("rejected: budget")).unwrap();
    let ta = mgr.wait(a, PATIENCE).unwrap();
    let tb = mgr.wait(b, PATIENCE).unwrap();
    assert_eq!(ta.status, TaskStatus::PermanentlyFailed);
    assert_eq!(ta.error.as_deref(), Some("Task cancelled"));
    assert_eq!(tb.status, TaskStatus::PermanentlyFailed);
    assert_eq!(tb.error.as_deref(), Some("rejected: budget"));
    let ev = last_event(&mgr, b, EventType::PermanentlyFailed);
    assert_eq!(
        (ev.from_status, ev.to_status),
        (
            Some(TaskStatus::Suspended),
            Some(TaskStatus::PermanentlyFailed)
        )
    );
    assert_eq!(ev.message.as_deref(), Some("rejected: budget"));
    assert_eq!(
        mgr.attempts(b).unwrap().len(),
        1,
        "a cancel opens no attempt"
    );
    assert!(mgr.list_tasks(&by_reason("awaiting_approval")).is_empty());
    // A cancelled task cannot be resumed or cancelled again.
    assert!(mgr.resume_task(a, None).is_err());
    assert!(mgr.cancel_task(a, None).is_err());
    assert_eq!(
        mgr.get_task(a).unwrap().error.as_deref(),
        Some("Task cancelled")
    );
}

#[test]
fn cancel_task_refuses_tasks_that_are_not_suspended() {
    let (mgr, _clock) = manual(1);
    mgr.register("t", |_| Ok(json!(1).into())).unwrap();
    let pending = mgr.submit("t", json!(null)).unwrap();
    assert!(matches!(
        mgr.cancel_task(pending, Some("x")),
        Err(Error::Transition(_))
    ));
    let t = mgr.get_task(pending).unwrap();
    assert_eq!((t.status, t.error), (TaskStatus::Pending, None));
    assert!(matches!(
        mgr.cancel_task(TaskId(u64::MAX), None),
        Err(Error::NotFound(_))
    ));
}

#[test]
fn pause_task_on_running_closes_the_attempt_and_discards_the_late_result() {
    let (mgr, _clock) = manual(1);
    let gate = Arc::new(Barrier::new(2));
    let g = gate.clone();
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    mgr.register("t", move |_| {
        if c.fetch_add(1, Ordering::SeqCst) == 0 {
            g.wait();
            return Ok(Outcome::suspend("late suspend is discarded too"));
        }
        Ok(json!("second").into())
    })
    .unwrap();
    mgr.start().unwrap();
    let id = mgr.submit("t", json!(null)).unwrap();
    eventually("running", || {
        mgr.get_task(id).unwrap().status == TaskStatus::Running
    });
    mgr.pause_task(id).unwrap();
    let ev = last_event(&mgr, id, EventType::Paused);
    assert_eq!(
        (ev.from_status, ev.to_status),
        (Some(TaskStatus::Running), Some(TaskStatus::Paused))
    );
    assert_eq!(ev.attempt, Some(1));
    gate.wait();
    eventually("worker free", || mgr.running() == 0);
    let t = mgr.get_task(id).unwrap();
    assert_eq!(t.status, TaskStatus::Paused, "the late outcome was dropped");
    assert!(mgr
        .list_tasks(&by_reason("late suspend is discarded too"))
        .is_empty());
    assert_eq!(
        mgr.attempts(id).unwrap()[0].outcome,
        Some(AttemptOutcome::Paused)
    );
    assert!(!event_names(&mgr, id).contains(&"task_suspended"));
    mgr.resume_task(id, None).unwrap();
    assert_eq!(
        mgr.wait(id, PATIENCE).unwrap().result,
        Some(json!("second"))
    );
}

#[test]
fn pause_task_refuses_suspended_and_finished_tasks() {
    let (mgr, _clock) = manual(1);
    register_approval(&mgr, HandlerOptions::new());
    mgr.register("done", |_| Ok(json!(null).into())).unwrap();
    mgr.start().unwrap();
    let s = mgr.submit("approval", json!({})).unwrap();
    let d = mgr.submit("done", json!(null)).unwrap();
    eventually("suspended", || {
        mgr.get_task(s).unwrap().status == TaskStatus::Suspended
    });
    mgr.wait(d, PATIENCE).unwrap();
    for id in [s, d] {
        let before = mgr.events(id).unwrap();
        let err = mgr.pause_task(id).unwrap_err();
        assert!(matches!(err, Error::Transition(_)), "{err}");
        assert!(err.to_string().contains("paused"), "{err}");
        assert_eq!(mgr.events(id).unwrap(), before, "nothing changed");
    }
    mgr.pause_task(d).unwrap_err();
    let p = mgr
        .submit_with(
            "done",
            json!(null),
            SubmitOptions::new().delay(Duration::from_secs(5)),
        )
        .unwrap();
    mgr.pause_task(p).unwrap();
    assert!(mgr.pause_task(p).is_err(), "paused twice");
    assert!(matches!(
        mgr.pause_task(TaskId(u64::MAX)),
        Err(Error::NotFound(_))
    ));
}

#[test]
fn suspended_tasks_can_be_listed_by_their_latest_reason() {
    let (mgr, _clock) = manual(2);
    mgr.register("s", |ctx| {
        let reasons = ctx.payload().as_array().unwrap().clone();
        match reasons.get(ctx.stage() as usize).and_then(|r| r.as_str()) {
            Some(r) => Ok(Outcome::suspend(r)),
            None => Ok(json!("done").into()),
        }
    })
    .unwrap();
    mgr.start().unwrap();
    let a = mgr.submit("s", json!(["legal", "finance"])).unwrap();
    let b = mgr.submit("s", json!(["legal"])).unwrap();
    let c = mgr.submit("s", json!(["  finance  "])).unwrap();
    eventually("three suspended", || {
        mgr.list_tasks(&TaskFilter::all().status(TaskStatus::Suspended))
            .len()
            == 3
    });
    let ids = |r: &str| {
        mgr.list_tasks(&by_reason(r))
            .iter()
            .map(|t| t.id)
            .collect::<Vec<_>>()
    };
    assert_eq!(ids("legal"), [a, b]);
    assert_eq!(ids("finance"), [c], "reasons are trimmed");
    assert!(ids("nobody").is_empty());
    assert_eq!(
        last_event(&mgr, c, EventType::Suspended).metadata["suspend_reason"],
        "finance"
    );

    mgr.resume_task(a, None).unwrap();
    eventually("a suspended again", || {
        let t = mgr.get_task(a).unwrap();
        t.status == TaskStatus::Suspended && t.stage == 1
    });
    assert_eq!(ids("legal"), [b], "filter uses the latest reason");
    assert_eq!(ids("finance"), [a, c]);
    let combined = TaskFilter {
        name: Some("s".into()),
        ..by_reason("finance")
    };
    assert_eq!(mgr.list_tasks(&combined).len(), 2);
    mgr.resume_task(b, None).unwrap();
    mgr.wait(b, PATIENCE).unwrap();
    assert!(ids("legal").is_empty(), "only suspended tasks are listed");
}

#[test]
fn async_handler_suspends_and_resumes_from_another_thread() {
    let (mgr, _clock) = manual(2);
    mgr.register_async("a", |ctx| async move {
        tokio::task::yield_now().await;
        if ctx.stage() == 0 {
            return Ok(Outcome::Suspend {
                reason: "human".into(),
                context: Some(b"q".to_vec()),
            });
        }
        Ok(json!(String::from_utf8(ctx.context().unwrap().to_vec()).unwrap()).into())
    })
    .unwrap();
    mgr.start().unwrap();
    let id = mgr.submit("a", json!(null)).unwrap();
    std::thread::scope(|s| {
        s.spawn(|| {
            eventually("suspended", || {
                mgr.get_task(id).unwrap().status == TaskStatus::Suspended
            });
            mgr.resume_task(id, Some("from thread")).unwrap();
        });
        let t = mgr.wait(id, PATIENCE).unwrap();
        assert_eq!(t.result, Some(json!("q")));
    });
}
