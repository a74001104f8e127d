//! Async-handler edges, black box (SPEC §1, §4, §6, §8, §9,
//! §13). Only what tests/async_handlers.rs and tests/spec_edges.rs do not cover.

mod common;

use common::fib::{events_of, status_of};
use common::{children_of, eventually, manual, DropGuard, Gate, Release, PATIENCE};
use fibflow::{
    AttemptOutcome, ChildSpec, EventType, HandlerOptions, Interrupted, Outcome, Progress, TaskId,
    TaskManager, TaskStatus,
};
use serde_json::json;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Tracks how many run at once and the peak.
#[derive(Default)]
struct Peak {
    now: AtomicUsize,
    peak: AtomicUsize,
}

impl Peak {
    fn enter(&self) {
        let n = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(n, Ordering::SeqCst);
    }
    fn leave(&self) {
        self.now.fetch_sub(1, Ordering::SeqCst);
    }
    fn peak(&self) -> usize {
        self.peak.load(Ordering::SeqCst)
    }
}

fn running(mgr: &TaskManager, id: TaskId) -> bool {
    status_of(mgr, id) == TaskStatus::Running
}

fn outcomes(mgr: &TaskManager, id: TaskId) -> Vec<Option<AttemptOutcome>> {
    mgr.attempts(id)
        .unwrap()
        .iter()
        .map(|a| a.outcome)
        .collect()
}

// ------------------------------------------------------------------ §1 tokio

/// SPEC §1 "async handlers run on a tokio runtime": the closure given to
/// `register_async` is the handler; tokio calls it makes before returning its
/// future (building a `sleep`, a `timeout`, spawning) need the runtime's
/// context like the ones inside the future do. Three idiomatic shapes of an
/// async handler each fail here if the closure is called outside the runtime.
#[test]
fn an_async_handler_may_use_tokio_before_returning_its_future() {
    let (mgr, _clock) = manual(2);
    let one = HandlerOptions::new().max_retries(1);
    mgr.register_async_with("sleep_made_first", one.clone(), |_ctx| {
        let nap = tokio::time::sleep(Duration::from_millis(1));
        async move {
            nap.await;
            Ok(json!("slept").into())
        }
    })
    .unwrap();
    mgr.register_async_with("spawn_first", one.clone(), |ctx| {
        let n = ctx.payload().as_i64().unwrap_or(0);
        let h = tokio::spawn(async move { n * 3 });
        async move { Ok(json!(h.await?).into()) }
    })
    .unwrap();
    mgr.register_async_with("timeout_wrapper", one, |ctx| {
        let work = async move {
            tokio::task::yield_now().await;
            Ok::<_, fibflow::BoxError>(json!(ctx.payload().clone()).into())
        };
        let limited = tokio::time::timeout(Duration::from_secs(30), work);
        async move { limited.await? }
    })
    .unwrap();
    mgr.start().unwrap();
    let a = mgr.submit("sleep_made_first", json!(null)).unwrap();
    let b = mgr.submit("spawn_first", json!(14)).unwrap();
    let c = mgr.submit("timeout_wrapper", json!("x")).unwrap();
    let mut bad = Vec::new();
    for (id, want) in [(a, json!("slept")), (b, json!(42)), (c, json!("x"))] {
        let t = mgr.wait(id, PATIENCE).unwrap();
        if t.status != TaskStatus::Completed || t.result != Some(want) {
            bad.push(format!("{}: {:?} {:?}", t.name, t.status, t.error));
        }
    }
    assert!(bad.is_empty(), "failed: {bad:#?}");
    mgr.stop(PATIENCE).unwrap();
}

// --------------------------------------------------------------- §4 timeouts

/// SPEC §4: an async handler that never awaits (a CPU loop) sees its
/// cooperative check turn into `Timeout` after the total timeout; the attempt
/// is `timeout` (type `total`), its own returned error is discarded, and the
/// retry (a new attempt) runs and completes, with progress carrying attempt 2.
#[test]
fn an_async_cpu_loop_times_out_cooperatively_and_its_retry_completes() {
    let (mgr, clock) = manual(2);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    let inside = Arc::new(AtomicUsize::new(0));
    let i2 = inside.clone();
    mgr.register_async_with(
        "spin",
        HandlerOptions::new()
            .timeout(Duration::from_secs(1))
            .max_retries(2),
        move |ctx| {
            let (s, inside) = (s.clone(), i2.clone());
            async move {
                if ctx.retry_count() == 0 {
                    inside.fetch_add(1, Ordering::SeqCst);
                    // No await at all: only the cooperative check stops it.
                    loop {
                        if let Err(e) = ctx.check() {
                            s.lock().unwrap().push(e.clone());
                            return Err(e.into());
                        }
                        std::hint::spin_loop();
                        std::thread::yield_now();
                    }
                }
                ctx.progress(Progress {
                    text: Some("second".into()),
                    ..Progress::default()
                })?;
                Ok(json!({ "attempt": ctx.attempt() }).into())
            }
        },
    )
    .unwrap();
    mgr.start().unwrap();
    let id = mgr.submit("spin", json!(null)).unwrap();
    eventually("spinning", || inside.load(Ordering::SeqCst) == 1);
    clock.advance(Duration::from_secs(2));
    let t = mgr.wait(id, PATIENCE).unwrap();
    assert_eq!(t.status, TaskStatus::Completed, "{t:?}");
    assert_eq!(t.result, Some(json!({ "attempt": 2 })));
    // The old attempt's handler notices on its own time (another worker ran the retry).
    eventually("the spinning attempt saw its check fail", || {
        !seen.lock().unwrap().is_empty()
    });
    let seen_now = seen.lock().unwrap().clone();
    assert_eq!(seen_now, [Interrupted::Timeout]);
    let att = mgr.attempts(id).unwrap();
    assert_eq!(att.len(), 2);
    assert_eq!(att[0].outcome, Some(AttemptOutcome::Timeout));
    assert!(att[0].timed_out);
    assert_eq!(
        att[0].error.as_deref(),
        Some("Task exceeded total timeout limit"),
        "the handler's own error after the timeout is discarded"
    );
    let to = events_of(&mgr, id, EventType::TimedOut);
    assert_eq!(to.len(), 1);
    assert_eq!(to[0].metadata["timeout_type"], "total");
    assert_eq!(to[0].attempt, Some(1));
    let pr = events_of(&mgr, id, EventType::Progress);
    assert_eq!(pr.len(), 1);
    assert_eq!(pr[0].attempt, Some(2));
    eventually("free", || mgr.running() == 0);
    mgr.stop(PATIENCE).unwrap();
}

/// SPEC §4 heartbeat, for an async handler that awaits real tokio sleeps and
/// calls `ctx.heartbeat()` only at first: the attempt times out with type
/// `heartbeat` on the manual clock and the future (sleeping) is dropped; a CPU
/// loop without heartbeats sees `HeartbeatTimeout` from its check.
#[test]
fn async_heartbeat_timeouts_while_sleeping_and_while_spinning() {
    let (mgr, clock) = manual(3);
    let opts = HandlerOptions::new()
        .heartbeat_window(Duration::from_secs(1))
        .max_retries(1);
    let dropped = Arc::new(AtomicUsize::new(0));
    let d = dropped.clone();
    let beats = Arc::new(AtomicUsize::new(0));
    let b = beats.clone();
    mgr.register_async_with("sleeper", opts.clone(), move |ctx| {
        let (d, b) = (d.clone(), b.clone());
        async move {
            let _g = DropGuard(d);
            ctx.heartbeat();
            b.fetch_add(1, Ordering::SeqCst);
            loop {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    })
    .unwrap();
    let seen = Arc::new(Mutex::new(None));
    let s = seen.clone();
    mgr.register_async_with("spinner", opts, move |ctx| {
        let s = s.clone();
        async move {
            loop {
                if let Err(e) = ctx.check() {
                    *s.lock().unwrap() = Some(e.clone());
                    return Err(e.into());
                }
                std::thread::yield_now();
            }
        }
    })
    .unwrap();
    mgr.start().unwrap();
    let sleeper = mgr.submit("sleeper", json!(null)).unwrap();
    let b2 = mgr.submit("spinner", json!(null)).unwrap();
    eventually("both run", || {
        running(&mgr, sleeper) && running(&mgr, b2) && beats.load(Ordering::SeqCst) == 1
    });
    clock.advance(Duration::from_millis(1_500));
    for id in [sleeper, b2] {
        let t = mgr.wait(id, PATIENCE).unwrap();
        assert_eq!(t.status, TaskStatus::PermanentlyFailed);
        assert_eq!(t.error.as_deref(), Some("Task heartbeat timed out"));
        let to = events_of(&mgr, id, EventType::TimedOut);
        assert_eq!(to.len(), 1);
        assert_eq!(to[0].metadata["timeout_type"], "heartbeat");
        assert_eq!(outcomes(&mgr, id), [Some(AttemptOutcome::Timeout)]);
    }
    eventually("sleeper dropped", || dropped.load(Ordering::SeqCst) == 1);
    eventually("spinner saw it", || seen.lock().unwrap().is_some());
    assert_eq!(*seen.lock().unwrap(), Some(Interrupted::HeartbeatTimeout));
    eventually("free", || mgr.running() == 0);
    mgr.stop(PATIENCE).unwrap();
}

/// SPEC §4: the total timeout passes while the async closure is still in its
/// synchronous part (before it returns its future): the future's body never
/// runs (its first await is never passed) and it is dropped; the retry runs on
/// another worker meanwhile and completes; the old attempt changes nothing.
#[test]
fn timeout_while_the_async_closure_builds_its_future() {
    let (mgr, clock) = manual(2);
    let gate = Gate::new();
    let body_ran = Arc::new(AtomicUsize::new(0));
    let dropped = Arc::new(AtomicUsize::new(0));
    let entered = Arc::new(AtomicUsize::new(0));
    let (g, br, dr, en) = (
        gate.clone(),
        body_ran.clone(),
        dropped.clone(),
        entered.clone(),
    );
    mgr.register_async_with(
        "slow_build",
        HandlerOptions::new()
            .timeout(Duration::from_secs(1))
            .max_retries(2),
        move |ctx| {
            let (br, dr) = (br.clone(), dr.clone());
            if ctx.retry_count() == 0 {
                en.fetch_add(1, Ordering::SeqCst);
                g.wait();
            }
            let guard = DropGuard(dr);
            async move {
                let _g = guard;
                br.fetch_add(1, Ordering::SeqCst);
                tokio::task::yield_now().await;
                Ok(json!(ctx.attempt()).into())
            }
        },
    )
    .unwrap();
    mgr.start().unwrap();
    let id = mgr.submit("slow_build", json!(null)).unwrap();
    eventually("building", || entered.load(Ordering::SeqCst) == 1);
    clock.advance(Duration::from_secs(2));
    let t = mgr.wait(id, PATIENCE).unwrap();
    assert_eq!(t.status, TaskStatus::Completed);
    assert_eq!(t.result, Some(json!(2)));
    assert_eq!(body_ran.load(Ordering::SeqCst), 1, "the retry's body only");
    gate.open();
    eventually("both futures dropped", || {
        dropped.load(Ordering::SeqCst) == 2
    });
    assert_eq!(
        body_ran.load(Ordering::SeqCst),
        1,
        "the timed-out one never ran"
    );
    let t = mgr.get_task(id).unwrap();
    assert_eq!(t.result, Some(json!(2)));
    assert_eq!(
        outcomes(&mgr, id),
        [
            Some(AttemptOutcome::Timeout),
            Some(AttemptOutcome::Completed)
        ]
    );
    eventually("free", || mgr.running() == 0);
    mgr.stop(PATIENCE).unwrap();
}

// ------------------------------------------------------------------ panics

/// SPEC §4: a panic after an await fails the attempt with the panic message;
/// the panicking future's locals are dropped; other async handlers awaiting
/// on other workers at the same time are unaffected and complete; a panic
/// inside a task the handler spawned on the runtime surfaces as its error.
#[test]
fn an_async_panic_leaves_other_running_async_handlers_alone() {
    let (mgr, _clock) = manual(3);
    let release = Release::new();
    let r = release.clone();
    mgr.register_async("waiter", move |ctx| {
        let r = r.clone();
        async move {
            r.wait().await;
            tokio::time::sleep(Duration::from_millis(1)).await;
            Ok(json!(ctx.payload()).into())
        }
    })
    .unwrap();
    let dropped = Arc::new(AtomicUsize::new(0));
    let d = dropped.clone();
    mgr.register_async_with("boom", HandlerOptions::new().max_retries(1), move |ctx| {
        let d = d.clone();
        async move {
            let _g = DropGuard(d);
            tokio::time::sleep(Duration::from_millis(1)).await;
            panic!("boom at {}", ctx.payload());
        }
    })
    .unwrap();
    mgr.register_async_with(
        "inner_boom",
        HandlerOptions::new().max_retries(1),
        |_ctx| async move {
            let h = tokio::spawn(async { panic!("inner") });
            h.await?;
            Ok(json!("unreachable").into())
        },
    )
    .unwrap();
    mgr.start().unwrap();
    let w1 = mgr.submit("waiter", json!(1)).unwrap();
    eventually("waiter runs", || running(&mgr, w1));
    for n in 0..5 {
        let id = mgr.submit("boom", json!(n)).unwrap();
        let t = mgr.wait(id, PATIENCE).unwrap();
        assert_eq!(t.status, TaskStatus::PermanentlyFailed);
        assert_eq!(t.error, Some(format!("boom at {n}")));
        assert!(running(&mgr, w1), "the waiter still runs");
    }
    eventually("guards dropped", || dropped.load(Ordering::SeqCst) == 5);
    let ib = mgr.submit("inner_boom", json!(null)).unwrap();
    let t = mgr.wait(ib, PATIENCE).unwrap();
    assert_eq!(t.status, TaskStatus::PermanentlyFailed);
    assert!(t.error.as_deref().unwrap_or("").contains("panic"), "{t:?}");
    let w2 = mgr.submit("waiter", json!(2)).unwrap();
    release.open();
    for (id, v) in [(w1, 1), (w2, 2)] {
        let t = mgr.wait(id, PATIENCE).unwrap();
        assert_eq!(t.status, TaskStatus::Completed);
        assert_eq!(t.result, Some(json!(v)));
    }
    mgr.stop(PATIENCE).unwrap();
}

// -------------------------------------------------------------- concurrency

/// SPEC §3 with async and sync handlers mixed: caps tracked inside the
/// handlers hold (async handler cap 3, sync handler cap 2, global 6) and every
/// task completes; an async handler awaiting a long tokio sleep holds only its
/// own worker: sync and other async work keeps flowing meanwhile.
#[test]
fn mixed_async_and_sync_caps_hold_and_a_long_await_blocks_nothing_else() {
    let (mgr, _clock) = manual(6);
    let all = Arc::new(Peak::default());
    let ac = Arc::new(Peak::default());
    let sc = Arc::new(Peak::default());
    let (a1, a2) = (all.clone(), ac.clone());
    mgr.register_async_with(
        "acap",
        HandlerOptions::new().max_concurrent_tasks(3),
        move |ctx| {
            let (all, ac) = (a1.clone(), a2.clone());
            async move {
                all.enter();
                ac.enter();
                tokio::time::sleep(Duration::from_millis(2)).await;
                tokio::task::yield_now().await;
                ac.leave();
                all.leave();
                Ok(json!(ctx.payload()).into())
            }
        },
    )
    .unwrap();
    let (s1, s2) = (all.clone(), sc.clone());
    mgr.register_with(
        "scap",
        HandlerOptions::new().max_concurrent_tasks(2),
        move |ctx| {
            s1.enter();
            s2.enter();
            for _ in 0..50 {
                std::thread::yield_now();
            }
            s2.leave();
            s1.leave();
            Ok(json!(ctx.payload()).into())
        },
    )
    .unwrap();
    let a3 = all.clone();
    mgr.register_async("free", move |ctx| {
        let all = a3.clone();
        async move {
            all.enter();
            tokio::task::yield_now().await;
            all.leave();
            Ok(json!(ctx.payload()).into())
        }
    })
    .unwrap();
    let release = Release::new();
    let r = release.clone();
    mgr.register_async("long", move |_ctx| {
        let r = r.clone();
        async move {
            tokio::select! {
                () = r.wait() => {}
                () = tokio::time::sleep(Duration::from_secs(3600)) => {}
            }
            Ok(json!("long done").into())
        }
    })
    .unwrap();
    mgr.start().unwrap();
    let long = mgr.submit("long", json!(null)).unwrap();
    eventually("long runs", || running(&mgr, long));
    let mut ids = Vec::new();
    for n in 0..40 {
        ids.push(mgr.submit("acap", json!(n)).unwrap());
        ids.push(mgr.submit("scap", json!(n)).unwrap());
        ids.push(mgr.submit("free", json!(n)).unwrap());
    }
    for id in &ids {
        let t = mgr.wait(*id, PATIENCE).unwrap();
        assert_eq!(t.status, TaskStatus::Completed, "{t:?}");
    }
    assert!(running(&mgr, long), "still awaiting its long sleep");
    assert!(ac.peak() <= 3, "async cap: {}", ac.peak());
    assert!(sc.peak() <= 2, "sync cap: {}", sc.peak());
    assert!(
        all.peak() <= 5,
        "global 6 minus the long one: {}",
        all.peak()
    );
    release.open();
    assert_eq!(
        mgr.wait(long, PATIENCE).unwrap().result,
        Some(json!("long done"))
    );
    mgr.stop(PATIENCE).unwrap();
}

// ------------------------------------------------------ §5, §6, §8 workflows

/// SPEC §6/§8: an async handler suspends with context; the name is then
/// re-registered as a sync handler; resume runs the sync one, which sees the
/// saved context and stage 1. And the other way round (sync suspends, async
/// resumes). A cancel of a suspended async task ends it `permanently_failed`
/// with the reason; a cancel of a running async task is refused and the task
/// completes normally.
#[test]
fn suspend_then_hot_reload_across_sync_and_async_then_resume_or_cancel() {
    let (mgr, _clock) = manual(3);
    mgr.register_async("flip", |ctx| async move {
        tokio::task::yield_now().await;
        Ok(Outcome::Suspend {
            reason: "approval".into(),
            context: Some(format!("a{}", ctx.payload()).into_bytes()),
        })
    })
    .unwrap();
    mgr.register("flop", |ctx| {
        Ok(Outcome::Suspend {
            reason: "approval".into(),
            context: Some(format!("s{}", ctx.payload()).into_bytes()),
        })
    })
    .unwrap();
    mgr.start().unwrap();
    let f1 = mgr.submit("flip", json!(1)).unwrap();
    let f2 = mgr.submit("flop", json!(2)).unwrap();
    let f3 = mgr.submit("flip", json!(3)).unwrap();
    for id in [f1, f2, f3] {
        eventually("suspended", || status_of(&mgr, id) == TaskStatus::Suspended);
    }
    // Hot reload: flip becomes sync, flop becomes async.
    mgr.register("flip", |ctx| {
        let c = String::from_utf8(ctx.context().unwrap_or_default().to_vec()).unwrap();
        Ok(json!({ "sync": c, "stage": ctx.stage() }).into())
    })
    .unwrap();
    mgr.register_async("flop", |ctx| async move {
        tokio::task::yield_now().await;
        let c = String::from_utf8(ctx.context().unwrap_or_default().to_vec()).unwrap();
        Ok(json!({ "async": c, "stage": ctx.stage() }).into())
    })
    .unwrap();
    mgr.resume_task(f1, Some("ok")).unwrap();
    mgr.resume_task(f2, None).unwrap();
    mgr.cancel_task(f3, Some("rejected")).unwrap();
    let t = mgr.wait(f1, PATIENCE).unwrap();
    assert_eq!(t.result, Some(json!({ "sync": "a1", "stage": 1 })));
    let t = mgr.wait(f2, PATIENCE).unwrap();
    assert_eq!(t.result, Some(json!({ "async": "s2", "stage": 1 })));
    let t = mgr.wait(f3, PATIENCE).unwrap();
    assert_eq!(t.status, TaskStatus::PermanentlyFailed);
    assert_eq!(t.error.as_deref(), Some("rejected"));
    assert_eq!(
        events_of(&mgr, f1, EventType::Resumed)[0].metadata["resume_reason"],
        "ok"
    );

    // Cancel of a running async task: refused, nothing changes.
    let release = Release::new();
    let r = release.clone();
    mgr.register_async("run", move |_ctx| {
        let r = r.clone();
        async move {
            r.wait().await;
            Ok(json!("ran").into())
        }
    })
    .unwrap();
    let id = mgr.submit("run", json!(null)).unwrap();
    eventually("running", || running(&mgr, id));
    assert!(mgr.cancel_task(id, None).is_err());
    assert!(running(&mgr, id));
    release.open();
    let t = mgr.wait(id, PATIENCE).unwrap();
    assert_eq!(t.status, TaskStatus::Completed);
    assert_eq!(t.result, Some(json!("ran")));
    mgr.stop(PATIENCE).unwrap();
}

/// SPEC §5/§8: an async parent spawns async children that spawn grandchildren
/// (nested), with a new context each round; the parent's handler is replaced
/// (by a sync one) while it is suspended, and its next round runs the new one
/// with the saved context and the children's entries.
#[test]
fn nested_async_workflow_with_a_reload_between_rounds() {
    let (mgr, _clock) = manual(4);
    let release = Release::new();
    let r = release.clone();
    mgr.register_async("leaf", move |ctx| {
        let r = r.clone();
        async move {
            r.wait().await;
            tokio::time::sleep(Duration::from_millis(1)).await;
            let n = ctx.payload().as_i64().unwrap();
            if n < 0 {
                return Err(format!("negative {n}").into());
            }
            Ok(json!(n * 10).into())
        }
    })
    .unwrap();
    mgr.register_async("mid", |ctx| async move {
        tokio::task::yield_now().await;
        if ctx.stage() == 0 {
            let n = ctx.payload().as_i64().unwrap();
            return Ok(Outcome::Spawn {
                children: vec![
                    ChildSpec::new("leaf", json!(n)),
                    ChildSpec::new("leaf", json!(n + 1)),
                ],
                context: Some(b"mid".to_vec()),
            });
        }
        if ctx.context() != Some(&b"mid"[..]) {
            return Err("mid lost its context".into());
        }
        let sum: i64 = ctx
            .result()
            .unwrap()
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["result"].as_i64().unwrap())
            .sum();
        Ok(json!(sum).into())
    })
    .unwrap();
    mgr.register_async("root", |_ctx| async move {
        tokio::task::yield_now().await;
        Ok(Outcome::Spawn {
            children: vec![
                ChildSpec::new("mid", json!(1)),
                ChildSpec::new("mid", json!(5)),
                ChildSpec::new("leaf", json!(-1)).max_retries(1),
            ],
            context: Some(b"root-ctx".to_vec()),
        })
    })
    .unwrap();
    mgr.start().unwrap();
    let root = mgr.submit("root", json!(null)).unwrap();
    eventually("root suspended", || {
        status_of(&mgr, root) == TaskStatus::Suspended
    });
    // Hot reload while the workflow is in flight: the next round runs this.
    mgr.register("root", move |ctx| {
        let entries = ctx.result().cloned().unwrap_or(json!(null));
        Ok(json!({
            "ctx": String::from_utf8(ctx.context().unwrap_or_default().to_vec()).unwrap(),
            "stage": ctx.stage(),
            "entries": entries,
        })
        .into())
    })
    .unwrap();
    release.open();
    let t = mgr.wait(root, PATIENCE).unwrap();
    assert_eq!(t.status, TaskStatus::Completed, "{t:?}");
    let kids = children_of(&mgr, root);
    assert_eq!(kids.len(), 3);
    let r = t.result.unwrap();
    assert_eq!(r["ctx"], "root-ctx");
    assert_eq!(r["stage"], 1);
    assert_eq!(
        r["entries"],
        json!([
            { "task_id": kids[0].id, "result": 10 + 20 },
            { "task_id": kids[1].id, "result": 50 + 60 },
            { "task_id": kids[2].id, "error": "negative -1" },
        ])
    );
    for k in &kids[..2] {
        let g = children_of(&mgr, k.id);
        assert_eq!(g.len(), 2);
        assert!(g.iter().all(|c| c.root_id == Some(root)));
    }
    mgr.stop(PATIENCE).unwrap();
}

/// SPEC §6: pause_task while an async handler awaits; the handler then returns
/// a Spawn (or a Suspend): the late outcome is discarded: no children are
/// created, the task stays paused with its old context, and the attempt
/// closes `paused`.
#[test]
fn a_late_spawn_or_suspend_after_pause_task_is_discarded() {
    let (mgr, _clock) = manual(3);
    mgr.register("kid", |_| Ok(json!("kid").into())).unwrap();
    let release = Release::new();
    let r = release.clone();
    mgr.register_async("late", move |ctx| {
        let r = r.clone();
        async move {
            r.wait().await;
            if ctx.payload() == &json!("spawn") {
                Ok(Outcome::Spawn {
                    children: vec![ChildSpec::new("kid", json!(null))],
                    context: Some(b"late".to_vec()),
                })
            } else {
                Ok(Outcome::Suspend {
                    reason: "late".into(),
                    context: Some(b"late".to_vec()),
                })
            }
        }
    })
    .unwrap();
    mgr.start().unwrap();
    let a = mgr.submit("late", json!("spawn")).unwrap();
    let b = mgr.submit("late", json!("suspend")).unwrap();
    eventually("both run", || running(&mgr, a) && running(&mgr, b));
    mgr.pause_task(a).unwrap();
    mgr.pause_task(b).unwrap();
    release.open();
    eventually("handlers returned", || mgr.running() == 0);
    for id in [a, b] {
        let t = mgr.get_task(id).unwrap();
        assert_eq!(t.status, TaskStatus::Paused);
        assert_eq!(t.context, None);
        assert_eq!(t.total_children, 0);
        assert!(children_of(&mgr, id).is_empty());
        assert_eq!(outcomes(&mgr, id), [Some(AttemptOutcome::Paused)]);
        assert!(events_of(&mgr, id, EventType::Suspended).is_empty());
        assert!(events_of(&mgr, id, EventType::SubtasksCreated).is_empty());
    }
    assert_eq!(mgr.list_tasks(&fibflow::TaskFilter::all()).len(), 2);
    mgr.stop(PATIENCE).unwrap();
}

// ------------------------------------------------------------- §13 stop etc

/// SPEC §13: stop(deadline) with several async handlers awaiting and one
/// spinning on its cooperative check: all are reported interrupted (attempts
/// `interrupted`, tasks `pending`), the spinning one sees `Stopped`, the
/// awaiting futures are dropped, late results change nothing, and the
/// manager drops without a hang.
#[test]
fn stop_with_async_handlers_awaiting_and_spinning() {
    let (mgr, _clock) = manual(4);
    let dropped = Arc::new(AtomicUsize::new(0));
    let d = dropped.clone();
    mgr.register_async("await_forever", move |_ctx| {
        let d = d.clone();
        async move {
            let _g = DropGuard(d);
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok(json!("late").into())
        }
    })
    .unwrap();
    let seen = Arc::new(Mutex::new(None));
    let s = seen.clone();
    let spun = Arc::new(AtomicBool::new(false));
    let sp = spun.clone();
    mgr.register_async("spin", move |ctx| {
        let (s, sp) = (s.clone(), sp.clone());
        async move {
            sp.store(true, Ordering::SeqCst);
            loop {
                if let Err(e) = ctx.check() {
                    *s.lock().unwrap() = Some(e);
                    return Ok(json!("late spin").into());
                }
                std::thread::yield_now();
            }
        }
    })
    .unwrap();
    mgr.start().unwrap();
    let mut ids: Vec<TaskId> = (0..3)
        .map(|_| mgr.submit("await_forever", json!(null)).unwrap())
        .collect();
    ids.push(mgr.submit("spin", json!(null)).unwrap());
    for id in &ids {
        eventually("running", || running(&mgr, *id));
    }
    eventually("spinning", || spun.load(Ordering::SeqCst));
    let report = mgr.stop(Duration::from_millis(200)).unwrap();
    let mut got = report.interrupted.clone();
    got.sort_unstable();
    assert_eq!(got, ids);
    eventually("futures dropped", || dropped.load(Ordering::SeqCst) == 3);
    eventually("spinner stopped", || seen.lock().unwrap().is_some());
    assert_eq!(*seen.lock().unwrap(), Some(Interrupted::Stopped));
    for id in &ids {
        let t = mgr.get_task(*id).unwrap();
        assert_eq!(t.status, TaskStatus::Pending, "{t:?}");
        assert_eq!(t.result, None);
        assert_eq!(outcomes(&mgr, *id), [Some(AttemptOutcome::Interrupted)]);
    }
    drop(mgr);
}

/// The manager used entirely from inside a user's tokio runtime (as from
/// `#[tokio::main]`), current-thread and multi-thread: built, async handlers
/// registered, started, tasks submitted and awaited (directly, and through
/// spawn_blocking), a handler awaiting a channel fed by a task of the user's
/// runtime, then stop with a handler still awaiting, and drop: no panic, no hang.
#[test]
fn a_manager_used_inside_user_runtimes() {
    for multi in [false, true] {
        let rt = if multi {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap()
        } else {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
        };
        let dropped = Arc::new(AtomicUsize::new(0));
        let d = dropped.clone();
        rt.block_on(async move {
            let mgr = Arc::new(
                TaskManager::builder()
                    .memory()
                    .max_concurrent_tasks(3)
                    .build()
                    .unwrap(),
            );
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<i64>();
            let rx = Arc::new(tokio::sync::Mutex::new(rx));
            mgr.register_async("from_user", move |_ctx| {
                let rx = rx.clone();
                async move {
                    let v = rx.lock().await.recv().await.ok_or("closed")?;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    Ok(json!(v + 1).into())
                }
            })
            .unwrap();
            mgr.register_async("forever", move |_ctx| {
                let d = d.clone();
                async move {
                    let _g = DropGuard(d);
                    std::future::pending::<()>().await;
                    Ok(json!(null).into())
                }
            })
            .unwrap();
            mgr.start().unwrap();
            let a = mgr.submit("from_user", json!(null)).unwrap();
            // A task of the user's runtime feeds the handler.
            let feeder = tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(2)).await;
                tx.send(41).unwrap();
            });
            let m = mgr.clone();
            let t = tokio::task::spawn_blocking(move || m.wait(a, PATIENCE))
                .await
                .unwrap()
                .unwrap();
            feeder.await.unwrap();
            assert_eq!(t.status, TaskStatus::Completed, "{t:?}");
            assert_eq!(t.result, Some(json!(42)));
            let forever = mgr.submit("forever", json!(null)).unwrap();
            let m = mgr.clone();
            tokio::task::spawn_blocking(move || eventually("running", || running(&m, forever)))
                .await
                .unwrap();
            let report = mgr.stop(Duration::from_millis(100)).unwrap();
            assert_eq!(report.interrupted, [forever]);
            drop(mgr);
            tokio::task::yield_now().await;
        });
        eventually("forever's future dropped", || {
            dropped.load(Ordering::SeqCst) == 1
        });
        drop(rt);
    }
}

/// A manager whose last handle is dropped *inside one of its own async
/// handlers* (the handler owns the only `Arc<TaskManager>`): no panic that
/// escapes, no hang; the handler's attempt ends.
#[test]
fn a_manager_dropped_from_inside_its_own_async_handler() {
    let mgr = Arc::new(
        TaskManager::builder()
            .memory()
            .max_concurrent_tasks(2)
            .build()
            .unwrap(),
    );
    let slot: Arc<Mutex<Option<Arc<TaskManager>>>> = Arc::default();
    let done = Arc::new(AtomicBool::new(false));
    let (s, dn) = (slot.clone(), done.clone());
    mgr.register_async("suicide", move |_ctx| {
        let (s, dn) = (s.clone(), dn.clone());
        async move {
            tokio::task::yield_now().await;
            // Wait until the test gave us the last handle.
            let m = loop {
                if let Some(m) = s.lock().unwrap().take() {
                    break m;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            };
            drop(m);
            dn.store(true, Ordering::SeqCst);
            Ok(json!("bye").into())
        }
    })
    .unwrap();
    mgr.start().unwrap();
    let id = mgr.submit("suicide", json!(null)).unwrap();
    eventually("running", || running(&mgr, id));
    *slot.lock().unwrap() = Some(mgr);
    eventually("the handler dropped the manager and went on", || {
        done.load(Ordering::SeqCst)
    });
}

/// SPEC §13 "stop(deadline) ... records what did not finish as interrupted":
/// stopped at once while workers keep claiming short async tasks, no task is
/// left `running` after `stop` returns unless it is in the report, and none
/// is left `running` once its handler has returned (a claim that had not yet
/// published its attempt when `stop` looked must not be missed).
#[test]
fn stop_at_once_while_claiming_leaves_no_task_running_unreported() {
    let mut problems = Vec::new();
    for round in 0..600 {
        let mgr = TaskManager::builder()
            .memory()
            .max_concurrent_tasks(4)
            .build()
            .unwrap();
        let returned = Arc::new(AtomicUsize::new(0));
        let started = Arc::new(AtomicUsize::new(0));
        let called: Arc<Mutex<Vec<TaskId>>> = Arc::default();
        let (ret, st, cl) = (returned.clone(), started.clone(), called.clone());
        mgr.register_async("quick", move |ctx| {
            let (ret, st) = (ret.clone(), st.clone());
            cl.lock().unwrap().push(ctx.id());
            st.fetch_add(1, Ordering::SeqCst);
            // Counts the future's end, whether it ran or was cancelled.
            let guard = DropGuard(ret);
            async move {
                let _g = guard;
                tokio::task::yield_now().await;
                Ok(json!(null).into())
            }
        })
        .unwrap();
        let ids: Vec<TaskId> = (0..400)
            .map(|_| mgr.submit("quick", json!(null)).unwrap())
            .collect();
        mgr.start().unwrap();
        let s = started.clone();
        eventually("some started", || s.load(Ordering::SeqCst) > round % 50);
        let report = mgr.stop(Duration::ZERO).unwrap();
        // Every handler that was called has ended (run or dropped).
        eventually("handlers returned", || {
            returned.load(Ordering::SeqCst) == started.load(Ordering::SeqCst)
        });
        for id in &ids {
            let t = mgr.get_task(*id).unwrap();
            if t.status == TaskStatus::Running {
                problems.push(format!(
                    "round {round}: task {id} left running (reported: {}, handler called: {})",
                    report.interrupted.contains(id),
                    called.lock().unwrap().contains(id)
                ));
            }
        }
        drop(mgr);
        if !problems.is_empty() {
            break;
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
}
