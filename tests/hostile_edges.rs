//! Hostile input edges, black box: what `hostile_input.rs`,
//! `core_rules.rs` or `spec_edges.rs` (SPEC §13: no panics, typed errors,
//! a rejected call changes nothing).

mod common;

use common::{eventually, within, Gate, PATIENCE};
use fibflow::{
    ChildSpec, ContextError, Error, HandlerOptions, ManualClock, Outcome, Pool, Progress,
    SubmitOptions, TaskFilter, TaskId, TaskManager, TaskStatus,
};
use serde_json::{json, Value};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const T0: u64 = 1_700_000_000_000;

fn manual() -> (TaskManager, Arc<ManualClock>) {
    let clock = ManualClock::new(T0);
    let mgr = TaskManager::builder()
        .memory()
        .clock(clock.clone())
        .build()
        .unwrap();
    (mgr, clock)
}

fn total(mgr: &TaskManager) -> u64 {
    mgr.count_by_status().values().sum()
}

// ---------------------------------------------------------------------------
// Outcome::complete with a value serde cannot turn into JSON
// ---------------------------------------------------------------------------

/// A value whose `Serialize` fails.
struct Unserializable;

impl serde::Serialize for Unserializable {
    fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
        Err(serde::ser::Error::custom("this value cannot be serialized"))
    }
}

/// FOUND: `Outcome::complete(v)` where `v` fails to serialize (a map with
/// non-string keys, a custom `Serialize` that errors) completes the task with
/// a `null` result as if it had succeeded: the result and the error are lost
/// silently (src/runtime/registry.rs `Outcome::complete`:
/// `serde_json::to_value(value).unwrap_or(Value::Null)`).
#[test]
fn outcome_complete_with_an_unserializable_value_is_not_silently_null() {
    let (mgr, _) = manual();
    mgr.register_with("tuple_keys", HandlerOptions::new().max_retries(1), |_| {
        let mut m = std::collections::BTreeMap::new();
        m.insert(vec![1, 2], "a");
        Outcome::complete(m)
    })
    .unwrap();
    mgr.register_with("custom", HandlerOptions::new().max_retries(1), |_| {
        Outcome::complete(Unserializable)
    })
    .unwrap();
    mgr.start().unwrap();
    for name in ["tuple_keys", "custom"] {
        let id = mgr.submit(name, json!(null)).unwrap();
        let t = mgr.wait(id, PATIENCE).unwrap();
        assert!(
            !(t.status == TaskStatus::Completed && t.result == Some(Value::Null)),
            "{name}: a result that failed to serialize completed the task with `null`"
        );
    }
    mgr.stop(PATIENCE).unwrap();
}

// ---------------------------------------------------------------------------
// Cron expressions valid field by field that never match
// ---------------------------------------------------------------------------

/// Expressions whose fields are each valid but that never match (AND mode of
/// the Vixie day rule with days that exclude each other) must be refused
/// quickly, not after a search to the year 5000.
#[test]
fn cron_expressions_that_never_match_are_refused_quickly() {
    let (mgr, _) = manual();
    mgr.register("c", |_| Ok(json!(null).into())).unwrap();
    let mgr = Arc::new(mgr);
    let mut slow = Vec::new();
    for expr in [
        "0 0 */8 * 1#5",
        "0 0 */8 * 1#5,2#5,3#5",
        "0 0 0 */8 * 0#5",
        "*/1 * */8 * 1#5",
        "0 0 31 2 */1",
        "0 0 */30 2 *",
        "0 0 31 4,6,9,11 *",
        "0 0 0 30 2 *",
    ] {
        let m = mgr.clone();
        let started = Instant::now();
        let r = within(expr, Duration::from_secs(120), move || {
            m.submit_with("c", json!(null), SubmitOptions::new().cron(expr))
                .map(|id| m.get_task(id).map(|t| t.next_run_time))
        });
        let took = started.elapsed();
        match r {
            Ok(next) => {
                // Accepted: it must really have a next occurrence.
                assert!(next.is_some_and(|n| n > T0), "{expr:?}: {next:?}");
            }
            Err(e) => {
                assert!(
                    matches!(e, Error::Schedule(_) | Error::InvalidOption(_)),
                    "{expr:?}: {e:?}"
                );
            }
        }
        slow.push((expr, took));
    }
    // The bar `hostile_input.rs` sets for refused expressions (debug build).
    for (expr, took) in &slow {
        assert!(
            *took < Duration::from_secs(10),
            "{expr:?}: submit took {took:?}"
        );
    }
}

// ---------------------------------------------------------------------------
// Deep workflow chains
// ---------------------------------------------------------------------------

const CHAIN_ENV: &str = "FIBFLOW_AUDIT5_CHAIN_DEPTH";

/// Builds a chain root → child → grandchild … `depth` levels deep, then calls
/// every workflow query on it. Runs only as the child process of
/// `deep_workflow_chain_queries_do_not_overflow_the_stack`.
#[test]
fn deep_chain_child() {
    let Ok(depth) = std::env::var(CHAIN_ENV) else {
        return;
    };
    let depth: u64 = depth.parse().unwrap();
    let mgr = TaskManager::builder()
        .memory()
        .max_concurrent_tasks(2)
        .build()
        .unwrap();
    mgr.register("link", move |ctx| {
        let left = ctx.payload().as_u64().unwrap_or(0);
        if ctx.stage() == 0 && left > 0 {
            Ok(Outcome::spawn(vec![ChildSpec::new(
                "link",
                json!(left - 1),
            )]))
        } else {
            Ok(json!(left).into())
        }
    })
    .unwrap();
    mgr.start().unwrap();
    let root = mgr.submit("link", json!(depth)).unwrap();
    let t = mgr.wait(root, Duration::from_secs(600)).unwrap();
    assert_eq!(t.status, TaskStatus::Completed);
    // On a thread with the stack of a process's main thread (8 MiB); a
    // spawned thread's default (2 MiB) overflows at a depth of 4,000 already.
    let mgr = Arc::new(mgr);
    let m = mgr.clone();
    std::thread::Builder::new()
        .stack_size(8 << 20)
        .spawn(move || queries(&m, root, depth))
        .unwrap()
        .join()
        .unwrap();
    mgr.stop(PATIENCE).unwrap();
}

fn queries(mgr: &TaskManager, root: TaskId, depth: u64) {
    let s = mgr.workflow_summary(root).unwrap();
    assert_eq!(s.critical_path.len() as u64, depth + 1);
    let a = mgr
        .workflow_audit(root, fibflow::Page::default(), fibflow::Page::default())
        .unwrap();
    assert_eq!(a.tasks.total as u64, depth + 1);
    let n = mgr.delete_tasks(&TaskFilter::all().workflow(root)).unwrap();
    assert_eq!(n, depth + 1);
}

/// FOUND: a workflow nested `depth` levels deep (each task spawns one child)
/// runs fine, but `workflow_summary` on it overflows the caller's stack and
/// aborts the process (SIGABRT, "has overflowed its stack"): at 4,000 levels
/// on a 2 MiB thread, at 20,000 on an 8 MiB one (debug build). The recursive
/// `branch` inside src/api/audit.rs `critical_path` recurses once per level.
#[test]
fn deep_workflow_chain_queries_do_not_overflow_the_stack() {
    let depth = std::env::var("FIBFLOW_AUDIT5_DEPTH").unwrap_or_else(|_| "20000".into());
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "deep_chain_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHAIN_ENV, &depth)
        .env_remove("RUST_MIN_STACK")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "a workflow chain {depth} deep: child exited with {:?}\n{}",
        out.status,
        stderr.lines().rev().take(15).collect::<Vec<_>>().join("\n")
    );
}

// ---------------------------------------------------------------------------
// Workflow summary with attempt spans near u64::MAX
// ---------------------------------------------------------------------------

/// FOUND: `ManualClock::set` may move the clock backwards (documented). Two
/// attempts of a chain each spanning nearly `u64::MAX` ms make
/// `workflow_summary` panic with "attempt to add with overflow" in a debug
/// build (src/api/audit.rs `critical_path`: `span(k) + branch(..)`, lines
/// 484 and 497; `span` itself saturates).
#[test]
fn workflow_summary_with_huge_attempt_spans_does_not_overflow() {
    let clock = ManualClock::new(0);
    let mgr = TaskManager::builder()
        .memory()
        .clock(clock.clone())
        .timeout(Duration::ZERO)
        .build()
        .unwrap();
    let gate_a = Gate::new();
    let gate_b = Gate::new();
    let ga = gate_a.clone();
    mgr.register("root", |ctx| {
        if ctx.stage() == 0 {
            Ok(Outcome::spawn(vec![ChildSpec::new("a", json!(null))]))
        } else {
            Ok(json!("root done").into())
        }
    })
    .unwrap();
    mgr.register("a", move |ctx| {
        if ctx.stage() == 0 {
            ga.wait();
            Ok(Outcome::spawn(vec![ChildSpec::new("b", json!(null))]))
        } else {
            Ok(json!("a done").into())
        }
    })
    .unwrap();
    let gb = gate_b.clone();
    mgr.register("b", move |_| {
        gb.wait();
        Ok(json!("b done").into())
    })
    .unwrap();
    mgr.start().unwrap();
    let root = mgr.submit("root", json!(null)).unwrap();
    let child = |name: &str| {
        mgr.list_tasks(&TaskFilter::all().workflow(root))
            .into_iter()
            .find(|t| &*t.name == name)
    };
    eventually("a runs", || {
        child("a").is_some_and(|t| t.status == TaskStatus::Running)
    });
    let a = child("a").unwrap().id;
    clock.set(u64::MAX - 1);
    gate_a.open();
    eventually("b exists", || child("b").is_some());
    let b = child("b").unwrap().id;
    // b is due at the end of time; bring the clock back and make it due now.
    clock.set(0);
    mgr.pause_task(b).unwrap();
    mgr.resume_task(b, None).unwrap();
    eventually("b runs", || {
        mgr.get_task(b)
            .is_some_and(|t| t.status == TaskStatus::Running)
    });
    clock.set(u64::MAX - 1);
    gate_b.open();
    assert_eq!(
        mgr.wait(root, PATIENCE).unwrap().status,
        TaskStatus::Completed
    );
    let spans: Vec<_> = [a, b]
        .iter()
        .map(|id| {
            mgr.attempts(*id)
                .unwrap()
                .iter()
                .filter_map(|x| x.duration_ms())
                .max()
        })
        .collect();
    // The premise: the two spans' sum overflows a u64.
    assert!(
        matches!(spans[..], [Some(x), Some(y)] if x.checked_add(y).is_none()),
        "{spans:?}"
    );
    let mgr = Arc::new(mgr);
    let m = mgr.clone();
    let s = within("workflow_summary", PATIENCE, move || {
        m.workflow_summary(root)
    });
    let s = s.unwrap();
    assert_eq!(s.critical_path, vec![root, a, b]);
}

// ---------------------------------------------------------------------------
// A pool name too long for the log's claim record
// ---------------------------------------------------------------------------

/// FOUND: workers are named after their pool and every claim record carries
/// the worker's name. A pool name longer than a log record can hold is
/// accepted by the builder (src/api/builder.rs `validate` checks only that it
/// is non-empty); then every claim by that pool fails to commit, the claim's
/// error is dropped and so is the queue entry (src/runtime/worker.rs `claim`:
/// `Err(_) => return Err(reg)`, then `unclaimed`), and the task stays pending
/// forever while `waiting_reason` says "queued: waiting for a free worker".
#[test]
fn a_pool_name_too_long_for_a_claim_record_is_refused_or_works() {
    let dir = tempfile::tempdir().unwrap();
    let long = "g".repeat(5000);
    let built = TaskManager::builder()
        .dir(dir.path())
        .segment_size(4096)
        .pool(Pool::new(long.clone()).tags(["gpu"]).concurrency(1))
        .build();
    let mgr = match built {
        Err(e) => {
            assert!(e.to_string().contains("pool"), "{e}");
            return;
        }
        Ok(m) => m,
    };
    mgr.register_with("h", HandlerOptions::new().requires(["gpu"]), |_| {
        Ok(json!("ran").into())
    })
    .unwrap();
    mgr.start().unwrap();
    let id = mgr.submit("h", json!(null)).unwrap();
    let r = mgr.wait(id, Duration::from_secs(10));
    let why = mgr.waiting_reason(id);
    assert!(
        r.is_ok(),
        "a task for a pool with a {}-byte name: {r:?}; waiting_reason: {why:?}; status {:?}",
        long.len(),
        mgr.get_task(id).map(|t| t.status)
    );
    mgr.stop(PATIENCE).unwrap();
}

// ---------------------------------------------------------------------------
// Control calls and handler calls whose record is too large for the log
// ---------------------------------------------------------------------------

/// On a small-segment directory: a cancel or resume reason, a progress text,
/// an audit message, a handler error, a suspension reason, a spawn, each too
/// large for one record, gets a typed error or fails the attempt with a clear
/// message; nothing half-written; the manager keeps working and reopens.
#[test]
fn oversized_records_from_control_and_handler_calls() {
    let dir = tempfile::tempdir().unwrap();
    let big = "x".repeat(6000);
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let ids = {
        let mgr = TaskManager::builder()
            .dir(dir.path())
            .segment_size(4096)
            .build()
            .unwrap();
        let (b, s) = (big.clone(), seen.clone());
        mgr.register_with("calls", HandlerOptions::new().max_retries(1), move |ctx| {
            let r1 = ctx.progress(Progress {
                text: Some(b.clone()),
                ..Progress::default()
            });
            let r2 = ctx.audit("code", Some(&b), None);
            let r3 = ctx.progress(Progress {
                metadata: Some(json!({ "k": b.clone() })),
                ..Progress::default()
            });
            for r in [r1, r2, r3] {
                let e = r.expect_err("a record too large for the log was accepted");
                assert!(matches!(e, ContextError::Invalid(_)), "{e:?}");
                s.lock().unwrap().push(e.to_string());
            }
            ctx.progress(Progress {
                percent: Some(50),
                ..Progress::default()
            })
            .unwrap();
            Ok(json!("fine").into())
        })
        .unwrap();
        let b = big.clone();
        mgr.register_with("big_err", HandlerOptions::new().max_retries(1), move |_| {
            Err(b.clone().into())
        })
        .unwrap();
        let b = big.clone();
        mgr.register_with(
            "big_panic",
            HandlerOptions::new().max_retries(1),
            move |_| panic!("{b}"),
        )
        .unwrap();
        let b = big.clone();
        mgr.register_with(
            "big_suspend",
            HandlerOptions::new().max_retries(1),
            move |_| Ok(Outcome::suspend(b.clone())),
        )
        .unwrap();
        mgr.register("leaf", |_| Ok(json!(null).into())).unwrap();
        let b = big.clone();
        mgr.register_with(
            "big_spawn",
            HandlerOptions::new().max_retries(1),
            move |_| {
                Ok(Outcome::spawn(vec![ChildSpec::new(
                    "leaf",
                    json!(b.clone()),
                )]))
            },
        )
        .unwrap();
        mgr.register_with(
            "many_spawn",
            HandlerOptions::new().max_retries(1),
            move |_| {
                Ok(Outcome::spawn(
                    (0..500).map(|i| ChildSpec::new("leaf", json!(i))).collect(),
                ))
            },
        )
        .unwrap();
        mgr.register("suspender", |ctx| {
            if ctx.stage() == 0 {
                Ok(Outcome::suspend("human"))
            } else {
                Ok(json!("resumed").into())
            }
        })
        .unwrap();
        mgr.start().unwrap();
        let calls = mgr.submit("calls", json!(null)).unwrap();
        assert_eq!(
            mgr.wait(calls, PATIENCE).unwrap().status,
            TaskStatus::Completed
        );
        let mut failed = Vec::new();
        for name in [
            "big_err",
            "big_panic",
            "big_suspend",
            "big_spawn",
            "many_spawn",
        ] {
            let id = mgr.submit(name, json!(null)).unwrap();
            let t = mgr.wait(id, PATIENCE).unwrap();
            assert_eq!(t.status, TaskStatus::PermanentlyFailed, "{name}: {t:?}");
            let err = t.error.clone().unwrap_or_default();
            assert!(err.contains("too large"), "{name}: {err}");
            assert!(
                mgr.list_tasks(&TaskFilter::all().parent(id)).is_empty(),
                "{name}"
            );
            failed.push(id);
        }
        // Control calls with oversized reasons: refused, nothing changes.
        let s = mgr.submit("suspender", json!(null)).unwrap();
        eventually("suspended", || {
            mgr.get_task(s)
                .is_some_and(|t| t.status == TaskStatus::Suspended)
        });
        let before = (mgr.get_task(s).unwrap(), mgr.events(s).unwrap().len());
        for (what, r) in [
            ("cancel", mgr.cancel_task(s, Some(&big))),
            ("resume", mgr.resume_task(s, Some(&big))),
        ] {
            let e = r.expect_err(what);
            assert!(matches!(e, Error::Log(_)), "{what}: {e:?}");
            assert_eq!(
                (mgr.get_task(s).unwrap(), mgr.events(s).unwrap().len()),
                before,
                "{what} changed the task"
            );
        }
        mgr.resume_task(s, Some("ok")).unwrap();
        assert_eq!(mgr.wait(s, PATIENCE).unwrap().status, TaskStatus::Completed);
        mgr.stop(PATIENCE).unwrap();
        (calls, failed, s)
    };
    // The handler ran once and saw its three oversized calls refused.
    let refused = seen.lock().unwrap();
    assert_eq!(refused.len(), 3, "{refused:?}");
    assert!(refused.iter().all(|m| !m.is_empty()), "{refused:?}");
    drop(refused);
    let again = TaskManager::builder()
        .dir(dir.path())
        .segment_size(4096)
        .build()
        .unwrap();
    assert_eq!(again.get_task(ids.0).unwrap().status, TaskStatus::Completed);
    for id in ids.1 {
        assert_eq!(
            again.get_task(id).unwrap().status,
            TaskStatus::PermanentlyFailed
        );
    }
    assert_eq!(again.get_task(ids.2).unwrap().status, TaskStatus::Completed);
}

// ---------------------------------------------------------------------------
// Directories
// ---------------------------------------------------------------------------

/// Odd directory paths: a non-UTF-8 name works and reopens; a name longer
/// than the file system allows, a path under /proc, a path through a file:
/// typed errors, no panic.
#[test]
fn odd_directory_paths() {
    use std::os::unix::ffi::OsStrExt;
    let base = tempfile::tempdir().unwrap();
    let odd = base
        .path()
        .join(std::ffi::OsStr::from_bytes(b"caf\xe9-\xff\xfe-log"));
    {
        let mgr = TaskManager::open(&odd).unwrap();
        mgr.register("h", |_| Ok(json!(1).into())).unwrap();
        mgr.start().unwrap();
        let id = mgr.submit("h", json!(null)).unwrap();
        mgr.wait(id, PATIENCE).unwrap();
        mgr.stop(PATIENCE).unwrap();
    }
    assert_eq!(total(&TaskManager::open(&odd).unwrap()), 1);
    let file = base.path().join("plain-file");
    std::fs::write(&file, b"x").unwrap();
    for p in [
        base.path().join("n".repeat(300)),
        base.path().join("d/".repeat(3000)),
        std::path::PathBuf::from("/proc/self/fibflow-audit5"),
        file.clone(),
        file.join("sub"),
    ] {
        let shown = p.display().to_string();
        let r = within("open odd dir", PATIENCE, move || {
            TaskManager::open(&p).map(|_| ())
        });
        let e = r.expect_err(&shown[..shown.len().min(80)]);
        assert!(!e.to_string().is_empty());
    }
}

// ---------------------------------------------------------------------------
// Options that are silently meaningless
// ---------------------------------------------------------------------------

/// FOUND (minor): `heartbeat_window(Duration::ZERO)` ("beat at least every
/// 0 ms") is accepted and silently means "no heartbeat required"
/// (src/runtime/worker.rs `Core::job`: a window of 0 ms is "none"), which
/// `HandlerOptions::heartbeat_window` does not document.
#[test]
fn heartbeat_window_zero_is_refused_or_enforced() {
    let (mgr, clock) = manual();
    let gate = Gate::new();
    let g = gate.clone();
    let r = mgr.register_with(
        "hb0",
        HandlerOptions::new()
            .heartbeat_window(Duration::ZERO)
            .max_retries(1),
        move |_| {
            g.wait();
            Ok(json!(null).into())
        },
    );
    if r.is_err() {
        return;
    }
    mgr.start().unwrap();
    let id = mgr.submit("hb0", json!(null)).unwrap();
    eventually("running", || {
        mgr.get_task(id)
            .is_some_and(|t| t.status == TaskStatus::Running)
    });
    clock.advance(Duration::from_secs(30));
    let status = mgr.get_task(id).unwrap().status;
    gate.open();
    assert_ne!(
        status,
        TaskStatus::Running,
        "heartbeat_window(0) accepted and ignored: no heartbeat in 30 s, still running"
    );
    mgr.stop(PATIENCE).unwrap();
}

/// FOUND (minor): a cron task with `delay` / `run_at`: the cron schedule wins
/// and the delay is dropped without a word, so a task asked to start in a
/// year runs within a minute (src/runtime/submit.rs `Core::new_task`: the
/// `Some(expr)` arm never reads `o.run_at` / `o.delay`); documented nowhere.
#[test]
fn cron_with_a_delay_or_run_at() {
    let (mgr, _) = manual();
    mgr.register("c", |_| Ok(json!(null).into())).unwrap();
    let far = std::time::UNIX_EPOCH + Duration::from_millis(T0 + 86_400_000 * 365);
    let a = mgr.submit_with(
        "c",
        json!(null),
        SubmitOptions::new()
            .cron("* * * * *")
            .delay(Duration::from_secs(86_400 * 365)),
    );
    let b = mgr.submit_with(
        "c",
        json!(null),
        SubmitOptions::new().cron("* * * * *").run_at(far),
    );
    for (what, r) in [("delay", a), ("run_at", b)] {
        match r {
            Err(e) => assert!(matches!(e, Error::InvalidOption(_)), "{e:?}"),
            Ok(id) => {
                let t = mgr.get_task(id).unwrap();
                assert!(
                    t.next_run_time >= T0 + 86_400_000 * 365,
                    "cron with {what} of a year: first run at +{} ms, the {what} was ignored",
                    t.next_run_time - T0
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Handler context kept and used from another thread
// ---------------------------------------------------------------------------

/// A context sent to another thread that keeps calling progress, audit,
/// heartbeat and check while the attempt ends, the task retries and
/// completes: never a panic, never an event recorded for an attempt that no
/// longer owns the task; the manager keeps running tasks afterwards.
#[test]
fn a_context_used_from_another_thread_across_the_end_of_its_attempt() {
    let (mgr, _) = manual();
    let (tx, rx) = std::sync::mpsc::channel::<fibflow::TaskContext>();
    let tx = Mutex::new(tx);
    let runs = Arc::new(AtomicUsize::new(0));
    let r = runs.clone();
    mgr.register_with("leaky", HandlerOptions::new().max_retries(3), move |ctx| {
        let _ = tx.lock().unwrap().send(ctx.clone());
        if r.fetch_add(1, Ordering::SeqCst) < 2 {
            Err("again".into())
        } else {
            Ok(json!("done").into())
        }
    })
    .unwrap();
    mgr.start().unwrap();
    let id = mgr.submit("leaky", json!(null)).unwrap();
    let hammer = std::thread::spawn(move || {
        let mut kept = Vec::new();
        let mut results = Vec::new();
        let until = Instant::now() + Duration::from_secs(5);
        while Instant::now() < until {
            while let Ok(c) = rx.try_recv() {
                kept.push(c);
            }
            for c in &kept {
                c.heartbeat();
                let _ = c.check();
                results.push((
                    c.attempt(),
                    c.progress(Progress {
                        percent: Some(1),
                        ..Progress::default()
                    }),
                ));
                let _ = c.audit("late", None, None);
            }
            if kept.len() == 3 && results.len() > 300 {
                break;
            }
            std::thread::yield_now();
        }
        results
    });
    let t = mgr.wait(id, PATIENCE).unwrap();
    assert_eq!(t.status, TaskStatus::Completed);
    let results = hammer.join().expect("a kept context panicked");
    for (attempt, r) in &results {
        if let Err(e) = r {
            assert!(
                matches!(e, ContextError::Stale { .. } | ContextError::Invalid(_)),
                "attempt {attempt}: {e:?}"
            );
        }
    }
    // Every progress event belongs to an attempt that owned the task then.
    let attempts = mgr.attempts(id).unwrap();
    for e in mgr.events(id).unwrap() {
        if e.event_type == fibflow::EventType::Progress {
            let a = e.attempt.unwrap();
            let att = &attempts[a as usize - 1];
            assert!(
                att.ended_at.is_none_or(|end| e.time <= end),
                "progress of attempt {a} after it ended"
            );
        }
    }
    let again = mgr.submit("leaky", json!(null)).unwrap();
    assert_eq!(
        mgr.wait(again, PATIENCE).unwrap().status,
        TaskStatus::Completed
    );
    mgr.stop(PATIENCE).unwrap();
}

// ---------------------------------------------------------------------------
// Queries on a child id
// ---------------------------------------------------------------------------
