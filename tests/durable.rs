//! The manager on a log directory: reopening reproduces the live state (I1),
//! snapshots and compaction, the directory lock, and disk shrinking after retention.

mod common;

use common::{eventually, PATIENCE};
use fibflow::{
    ChildSpec, Durability, Error, Outcome, RetentionPolicy, SubmitOptions, TaskFilter, TaskManager,
    TaskStatus,
};
use serde_json::json;
use std::path::Path;
use std::time::Duration;

fn open(dir: &Path) -> TaskManager {
    let mgr = TaskManager::builder()
        .dir(dir)
        .segment_size(1 << 20)
        .build()
        .unwrap();
    register(&mgr);
    mgr
}

fn register(mgr: &TaskManager) {
    mgr.register(
        "ok",
        |ctx| Ok(json!({"echo": ctx.payload().clone()}).into()),
    )
    .unwrap();
    mgr.register_with(
        "flaky",
        fibflow::HandlerOptions::new().max_retries(2),
        |ctx| {
            if ctx.retry_count() == 0 {
                Err("first try fails".into())
            } else {
                Ok(json!("second").into())
            }
        },
    )
    .unwrap();
    mgr.register("leaf", |ctx| Ok(ctx.payload().clone().into()))
        .unwrap();
    mgr.register("fan", |ctx| {
        if ctx.stage() == 0 {
            let kids = (0..3).map(|i| ChildSpec::new("leaf", json!(i))).collect();
            Ok(Outcome::Spawn {
                children: kids,
                context: Some(b"ctx".to_vec()),
            })
        } else {
            Ok(json!({"children": ctx.result().cloned()}).into())
        }
    })
    .unwrap();
    mgr.register("hold", |_| Ok(Outcome::suspend("needs a human")))
        .unwrap();
}

/// Everything observable about the state, for comparison across a reopen.
fn state(mgr: &TaskManager) -> Vec<(fibflow::Task, Vec<fibflow::Event>, Vec<fibflow::Attempt>)> {
    mgr.list_tasks(&TaskFilter::all())
        .into_iter()
        .map(|t| {
            let id = t.id;
            (t, mgr.events(id).unwrap(), mgr.attempts(id).unwrap())
        })
        .collect()
}

fn run_some(mgr: &TaskManager) {
    let mut ids = Vec::new();
    for i in 0..20 {
        ids.push(
            mgr.submit_with(
                "ok",
                json!(i),
                SubmitOptions::new().dedup_key(format!("k{i}")),
            )
            .unwrap(),
        );
    }
    ids.push(mgr.submit("flaky", json!(null)).unwrap());
    ids.push(mgr.submit("fan", json!(null)).unwrap());
    let held = mgr.submit("hold", json!(null)).unwrap();
    for id in ids {
        assert!(mgr.wait(id, PATIENCE).unwrap().status.is_terminal());
    }
    eventually("held", || {
        mgr.get_task(held).unwrap().status == TaskStatus::Suspended
    });
}

#[test]
fn reopen_reproduces_the_live_state() {
    let dir = tempfile::tempdir().unwrap();
    let before = {
        let mgr = open(dir.path());
        mgr.start().unwrap();
        run_some(&mgr);
        mgr.stop(PATIENCE).unwrap();
        state(&mgr)
    };
    let mgr = open(dir.path());
    assert_eq!(
        state(&mgr),
        before,
        "replayed state differs from the live state"
    );
    assert_eq!(mgr.recovery_stats().records_refused, 0);
    // dedup keys survive a restart
    let again = mgr
        .submit_with("ok", json!(0), SubmitOptions::new().dedup_key("k0"))
        .unwrap();
    assert_eq!(
        again,
        before
            .iter()
            .find(|(t, _, _)| t.dedup_key.as_deref() == Some("k0"))
            .unwrap()
            .0
            .id
    );
    // the suspended task can be resumed after the restart and sees nothing lost
    let held = mgr.list_tasks(&TaskFilter::all().status(TaskStatus::Suspended));
    assert_eq!(held.len(), 1);
    mgr.start().unwrap();
    mgr.cancel_task(held[0].id, Some("nobody came")).unwrap();
    assert_eq!(
        mgr.get_task(held[0].id).unwrap().error.as_deref(),
        Some("nobody came")
    );
}

#[test]
fn snapshot_then_more_records_reopens_identically() {
    let dir = tempfile::tempdir().unwrap();
    let before = {
        let mgr = open(dir.path());
        mgr.start().unwrap();
        run_some(&mgr);
        mgr.compact().unwrap();
        let id = mgr.submit("ok", json!("after snapshot")).unwrap();
        mgr.wait(id, PATIENCE).unwrap();
        mgr.stop(PATIENCE).unwrap();
        state(&mgr)
    };
    let mgr = open(dir.path());
    assert!(mgr.recovery_stats().snapshot_tasks > 0);
    assert_eq!(state(&mgr), before);
}

/// `compact` from several threads at once (and the timer's own compaction)
/// each succeed: snapshots are written one at a time. Before, two writers at
/// one LSN shared a temp file and deleted each other's older files, and most
/// calls failed with "No such file or directory".
#[test]
fn concurrent_compactions_all_succeed_and_the_directory_reopens() {
    let dir = tempfile::tempdir().unwrap();
    let before = {
        let mgr = open(dir.path());
        mgr.start().unwrap();
        std::thread::scope(|s| {
            for t in 0..3 {
                let mgr = &mgr;
                s.spawn(move || {
                    for i in 0..200 {
                        if t == 0 && i % 10 == 0 {
                            let id = mgr.submit("ok", json!(i)).unwrap();
                            mgr.wait(id, PATIENCE).unwrap();
                        }
                        mgr.compact().unwrap();
                    }
                });
            }
        });
        mgr.stop(PATIENCE).unwrap();
        state(&mgr)
    };
    let mgr = open(dir.path());
    assert!(mgr.recovery_stats().snapshot_tasks > 0);
    assert_eq!(state(&mgr), before);
}

/// What the tag and workflow indexes answer, and the dedup keys.
fn indexed(
    mgr: &TaskManager,
    fan: fibflow::TaskId,
) -> (Vec<fibflow::TaskId>, Vec<fibflow::TaskId>, usize) {
    let ids = |f: &TaskFilter| -> Vec<_> { mgr.list_tasks(f).iter().map(|t| t.id).collect() };
    let tagged = ids(&TaskFilter::all().tag("t").status(TaskStatus::Completed));
    let tree = ids(&TaskFilter::all().workflow(fan));
    (tagged, tree, mgr.stats_by_tag(None).len())
}

#[test]
fn a_snapshot_keeps_the_tag_and_workflow_indexes_and_dedup_keys() {
    let dir = tempfile::tempdir().unwrap();
    let (before, fan, keyed) = {
        let mgr = open(dir.path());
        mgr.start().unwrap();
        let mut ids: Vec<_> = (0..5)
            .map(|i| {
                let o = SubmitOptions::new().tag("t").dedup_key(format!("d{i}"));
                mgr.submit_with("ok", json!(i), o).unwrap()
            })
            .collect();
        let fan = mgr.submit("fan", json!(null)).unwrap();
        ids.push(fan);
        for id in &ids {
            mgr.wait(*id, PATIENCE).unwrap();
        }
        mgr.compact().unwrap();
        let late = mgr
            .submit_with("ok", json!("late"), SubmitOptions::new().tag("t"))
            .unwrap();
        mgr.wait(late, PATIENCE).unwrap();
        mgr.stop(PATIENCE).unwrap();
        (indexed(&mgr, fan), fan, ids[0])
    };
    assert_eq!(
        before.0.len(),
        6,
        "five tagged tasks before the snapshot, one after"
    );
    assert_eq!(
        before.1.len(),
        4,
        "the workflow root and its three children"
    );
    let mgr = open(dir.path());
    assert!(mgr.recovery_stats().snapshot_tasks >= 9);
    assert_eq!(indexed(&mgr, fan), before);
    let again = mgr
        .submit_with("ok", json!(0), SubmitOptions::new().dedup_key("d0"))
        .unwrap();
    assert_eq!(
        again, keyed,
        "a finished task's dedup key survives the snapshot"
    );
}

#[test]
fn a_second_manager_on_the_same_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let first = open(dir.path());
    let second = TaskManager::builder().dir(dir.path()).build();
    match second {
        Err(Error::Log(e)) => assert!(e.to_string().to_lowercase().contains("lock"), "{e}"),
        Err(other) => panic!("unexpected error {other}"),
        Ok(_) => panic!("a second manager opened a locked directory"),
    }
    drop(first);
}

#[test]
fn every_durability_mode_reopens_with_acknowledged_tasks() {
    for d in [
        Durability::Os,
        Durability::Batched {
            interval: Duration::from_millis(5),
        },
        Durability::Sync,
    ] {
        let dir = tempfile::tempdir().unwrap();
        let ids = {
            let mgr = TaskManager::builder()
                .dir(dir.path())
                .durability(d)
                .segment_size(1 << 20)
                .build()
                .unwrap();
            register(&mgr);
            let ids: Vec<_> = (0..10)
                .map(|i| mgr.submit("ok", json!(i)).unwrap())
                .collect();
            mgr.stop(PATIENCE).unwrap();
            ids
        };
        let mgr = open(dir.path());
        for id in ids {
            assert_eq!(
                mgr.get_task(id).unwrap().status,
                TaskStatus::Pending,
                "{d:?}"
            );
        }
    }
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.metadata().unwrap().len())
        .sum()
}

#[test]
fn retention_then_compaction_shrinks_the_directory() {
    let dir = tempfile::tempdir().unwrap();
    let clock = fibflow::ManualClock::new(1_700_000_000_000);
    let mgr = TaskManager::builder()
        .dir(dir.path())
        .durability(Durability::Os)
        .segment_size(256 << 10)
        .clock(clock.clone())
        .build()
        .unwrap();
    register(&mgr);
    mgr.start().unwrap();
    let big = "x".repeat(2_000);
    let ids = mgr
        .submit_batch((0..600).map(|i| {
            (
                "ok".to_string(),
                json!({"i": i, "pad": big}),
                SubmitOptions::new(),
            )
        }))
        .unwrap();
    for id in &ids {
        mgr.wait(*id, PATIENCE).unwrap();
    }
    mgr.compact().unwrap();
    let full = dir_bytes(dir.path());
    clock.advance(Duration::from_secs(3600));
    let report = mgr
        .run_retention(Some(&RetentionPolicy::new(Duration::from_secs(60))))
        .unwrap();
    assert_eq!(report.tasks, 600);
    mgr.compact().unwrap();
    let after = dir_bytes(dir.path());
    assert!(after < full, "directory did not shrink: {full} -> {after}");
    mgr.stop(PATIENCE).unwrap();
    drop(mgr);
    let mgr = open(dir.path());
    assert!(
        mgr.list_tasks(&TaskFilter::all()).is_empty(),
        "deleted history came back"
    );
}

#[test]
fn records_larger_than_the_log_holds_are_refused_before_anything_changes() {
    let dir = tempfile::tempdir().unwrap();
    let mgr = TaskManager::builder()
        .dir(dir.path())
        .segment_size(64 << 10)
        .build()
        .unwrap();
    mgr.register_with("big", fibflow::HandlerOptions::new().max_retries(1), |_| {
        Ok(json!("y".repeat(100_000)).into())
    })
    .unwrap();
    let huge = json!("x".repeat(100_000));
    match mgr.submit("big", huge) {
        Err(Error::Log(e)) => assert!(e.to_string().contains("exceeds"), "{e}"),
        other => panic!("a 100 kB payload in a 64 kB segment was not refused: {other:?}"),
    }
    assert!(
        mgr.list_tasks(&TaskFilter::all()).is_empty(),
        "the refused submit left a task"
    );
    mgr.start().unwrap();
    let id = mgr.submit("big", json!(null)).unwrap();
    let t = mgr.wait(id, PATIENCE).unwrap();
    assert_eq!(t.status, TaskStatus::PermanentlyFailed);
    assert!(t.error.unwrap().contains("too large to record"));
    mgr.stop(PATIENCE).unwrap();
    drop(mgr);
    let again = open(dir.path());
    assert_eq!(
        again.get_task(id).unwrap().status,
        TaskStatus::PermanentlyFailed,
        "the log agrees"
    );
}

/// Runs one attempt of a blocking handler, stops the manager before it ends (the
/// attempt is recorded `interrupted`, as after a crash), and reopens.
fn interrupt_once(
    dir: &Path,
    id: Option<fibflow::TaskId>,
    quarantine_after: u32,
) -> fibflow::TaskId {
    let mgr = TaskManager::builder()
        .dir(dir)
        .segment_size(1 << 20)
        .quarantine_after(quarantine_after)
        .build()
        .unwrap();
    let (started_tx, started_rx) = std::sync::mpsc::channel::<()>();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let started_tx = std::sync::Mutex::new(started_tx);
    let release_rx = std::sync::Mutex::new(release_rx);
    mgr.register("stuck", move |_| {
        started_tx.lock().unwrap().send(()).unwrap();
        let _ = release_rx.lock().unwrap().recv();
        Ok(json!("too late").into())
    })
    .unwrap();
    let id = id.unwrap_or_else(|| mgr.submit("stuck", json!(null)).unwrap());
    mgr.start().unwrap();
    started_rx.recv_timeout(PATIENCE).unwrap();
    let report = mgr.stop(Duration::ZERO).unwrap();
    assert_eq!(report.interrupted, vec![id]);
    release_tx.send(()).unwrap();
    drop(mgr);
    id
}

#[test]
fn an_interrupted_attempt_is_recovered_without_using_a_retry() {
    let dir = tempfile::tempdir().unwrap();
    let id = interrupt_once(dir.path(), None, 3);
    let mgr = open(dir.path());
    let t = mgr.get_task(id).unwrap();
    assert_eq!(t.status, TaskStatus::Pending);
    assert_eq!(t.retry_count, 0, "an interruption does not use a retry");
    assert_eq!(t.result, None, "the late result was discarded");
    let names: Vec<_> = mgr
        .events(id)
        .unwrap()
        .iter()
        .map(|e| e.event_type.as_str())
        .collect();
    assert_eq!(
        names,
        [
            "task_created",
            "task_claimed",
            "task_started",
            "task_recovered"
        ]
    );
    let attempts = mgr.attempts(id).unwrap();
    assert_eq!(attempts.len(), 1);
    assert_eq!(
        attempts[0].outcome,
        Some(fibflow::AttemptOutcome::Interrupted)
    );
    assert!(attempts[0].error.as_deref().unwrap().contains("stopped"));
}

#[test]
fn a_task_interrupted_too_often_in_a_row_is_quarantined() {
    let dir = tempfile::tempdir().unwrap();
    let id = interrupt_once(dir.path(), None, 1);
    interrupt_once(dir.path(), Some(id), 1);
    let mgr = open(dir.path());
    let t = mgr.get_task(id).unwrap();
    assert_eq!(t.status, TaskStatus::PermanentlyFailed);
    assert!(t.error.unwrap().contains("quarantined"));
    let names: Vec<_> = mgr
        .events(id)
        .unwrap()
        .iter()
        .map(|e| e.event_type.as_str())
        .collect();
    assert_eq!(names.last(), Some(&"task_permanently_failed"));
    assert_eq!(names.iter().filter(|n| **n == "task_recovered").count(), 2);
}
