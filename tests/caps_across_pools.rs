//! SPEC §3 limits that bind across several pools: the global
//! `max_concurrent_tasks` below the number of workers of all pools, handler
//! caps whose tasks wait in the queues of different requirements, a manager
//! `pause()`/`resume()` with slots held and tasks queued, and a handler
//! unregistered and registered again while its tasks wait.
//!
//! Handlers hold on gates, so the test decides when a slot frees, and record
//! the order in which they start; each scenario repeats for several rounds,
//! since the races it looks for (which worker of which pool takes a freed
//! slot) do not show every time.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{eventually, Gate, PATIENCE};
use fibflow::{
    HandlerOptions, HandlerResult, ManualClock, Pool, SubmitOptions, TaskContext, TaskId,
    TaskManager, TaskStatus,
};
use serde_json::json;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

const T0: u64 = 1_700_000_000_000;
const ROUNDS: usize = 20;

/// What the handlers saw: the labels (payloads) in the order they started,
/// how many run now and at most, and the gates some labels hold on.
#[derive(Default)]
struct Rec {
    starts: Mutex<Vec<String>>,
    running: AtomicUsize,
    peak: AtomicUsize,
    gates: Mutex<HashMap<String, Arc<Gate>>>,
}

impl Rec {
    fn new() -> Arc<Rec> {
        Arc::new(Rec::default())
    }

    /// A closed gate the handler of `label` will hold on.
    fn gate(&self, label: &str) -> Arc<Gate> {
        let g = Gate::new();
        self.gates
            .lock()
            .unwrap()
            .insert(label.to_owned(), g.clone());
        g
    }

    fn open(&self, label: &str) {
        self.gates.lock().unwrap()[label].open();
    }

    fn open_all(&self) {
        for g in self.gates.lock().unwrap().values() {
            g.open();
        }
    }

    fn starts(&self) -> Vec<String> {
        self.starts.lock().unwrap().clone()
    }

    fn started(&self) -> usize {
        self.starts.lock().unwrap().len()
    }

    fn peak(&self) -> usize {
        self.peak.load(Ordering::SeqCst)
    }

    /// A handler that records its start under `prefix` + label, counts
    /// itself as running, and holds on its label's gate if it has one.
    fn handler(
        self: &Arc<Rec>,
        prefix: &'static str,
    ) -> impl Fn(&TaskContext) -> HandlerResult + Send + Sync + 'static {
        let rec = self.clone();
        move |ctx: &TaskContext| {
            let label = ctx.payload().as_str().unwrap().to_owned();
            let now = rec.running.fetch_add(1, Ordering::SeqCst) + 1;
            rec.peak.fetch_max(now, Ordering::SeqCst);
            rec.starts.lock().unwrap().push(format!("{prefix}{label}"));
            let gate = rec.gates.lock().unwrap().get(&label).cloned();
            if let Some(g) = gate {
                g.wait();
            }
            rec.running.fetch_sub(1, Ordering::SeqCst);
            Ok(json!(ctx.worker()).into())
        }
    }
}

/// A manager with `cap` default workers (and global cap `cap`) plus a pool
/// `x` of `x_workers` workers tagged `x`.
fn manager(cap: usize, x_workers: usize) -> TaskManager {
    TaskManager::builder()
        .memory()
        .clock(ManualClock::new(T0))
        .max_concurrent_tasks(cap)
        .pool(Pool::new("x").tags(["x"]).concurrency(x_workers))
        .build()
        .unwrap()
}

fn status(mgr: &TaskManager, id: TaskId) -> TaskStatus {
    mgr.get_task(id).unwrap().status
}

fn submit(mgr: &TaskManager, name: &str, label: &str, priority: i32, x: bool) -> TaskId {
    let mut o = SubmitOptions::new().priority(priority);
    if x {
        o = o.requires(["x"]);
    }
    mgr.submit_with(name, json!(label), o).unwrap()
}

/// A manager with a global cap of 2 (and 2 `x` workers) running `j`, whose
/// gated tasks A and B hold both slots. Returns A and B.
fn a_and_b_hold_the_cap() -> (TaskManager, Arc<Rec>, TaskId, TaskId) {
    let mgr = manager(2, 2);
    let rec = Rec::new();
    mgr.register("j", rec.handler("")).unwrap();
    mgr.start().unwrap();
    rec.gate("A");
    rec.gate("B");
    let a = submit(&mgr, "j", "A", 0, false);
    let b = submit(&mgr, "j", "B", 0, false);
    eventually("A and B run", || rec.started() == 2);
    (mgr, rec, a, b)
}

/// Waits for `id` to complete; on a timeout, says what the task waits for.
fn done(mgr: &TaskManager, id: TaskId) {
    match mgr.wait(id, PATIENCE) {
        Ok(t) => assert_eq!(t.status, TaskStatus::Completed, "task {}", t.payload),
        Err(e) => {
            let t = mgr.get_task(id).unwrap();
            panic!(
                "task {} ({}, requires {:?}) did not finish: {e}; status {:?}, waiting reason {:?}",
                t.payload,
                t.name,
                t.requires,
                t.status,
                mgr.waiting_reason(id).unwrap()
            );
        }
    }
}

/// Of the running tasks `ids`, one a default worker runs if any (its worker
/// sees only the default queue, the case where the best task is another
/// pool's), else the first.
fn pick_on_default(mgr: &TaskManager, ids: &[TaskId]) -> TaskId {
    ids.iter()
        .copied()
        .find(|&id| {
            mgr.get_task(id)
                .unwrap()
                .worker
                .is_some_and(|w| w.starts_with("default"))
        })
        .unwrap_or(ids[0])
}

/// SPEC §3 global cap below the worker count of all pools: never more than
/// the cap run, and a freed global slot goes to the best eligible task (H,
/// priority 5, needs `x`, an `x` worker idle) before a worse one (L, no
/// requirement), whichever pool's worker freed the slot. Cap 1 (1 default
/// worker + 2 `x`) and cap 2 (2 + 2) alternate.
#[test]
fn a_freed_global_slot_goes_to_the_best_task_whichever_pool_can_run_it() {
    for round in 0..ROUNDS {
        let cap = 1 + round % 2;
        let mgr = manager(cap, 2);
        let rec = Rec::new();
        mgr.register("j", rec.handler("")).unwrap();
        mgr.start().unwrap();
        let holders: Vec<TaskId> = (0..cap)
            .map(|k| {
                let label = format!("A{k}");
                rec.gate(&label);
                submit(&mgr, "j", &label, 0, false)
            })
            .collect();
        eventually("the holders run", || rec.started() == cap);
        let l = submit(&mgr, "j", "L", 0, false);
        let h = submit(&mgr, "j", "H", 5, true);
        let freed = pick_on_default(&mgr, &holders);
        let freed_on = mgr.get_task(freed).unwrap().worker.unwrap();
        rec.open(mgr.get_task(freed).unwrap().payload.as_str().unwrap());
        done(&mgr, freed);
        done(&mgr, h);
        done(&mgr, l);
        let starts = rec.starts();
        assert_eq!(
            starts[cap..],
            ["H", "L"],
            "round {round}, cap {cap}: the freed slot (worker {freed_on}) must go to H; starts {starts:?}"
        );
        rec.open_all();
        for id in holders {
            done(&mgr, id);
        }
        assert!(
            rec.peak() <= cap,
            "round {round}: {} ran at once, cap {cap}",
            rec.peak()
        );
        mgr.stop(PATIENCE).unwrap();
    }
}

/// SPEC §3 global cap: with many tasks of both queues (no requirement, and
/// `x`) queued behind a full cap, they run best first, one freed slot at a
/// time, and never more than the cap at once.
#[test]
fn a_backlog_across_two_queues_drains_best_first_under_the_global_cap() {
    for round in 0..ROUNDS {
        let (mgr, rec, a, b) = a_and_b_hold_the_cap();
        // (label, priority, needs x); B keeps one slot, so the rest run one
        // at a time in the SPEC's order.
        let plan = [
            ("p0", 0, false),
            ("p4x", 4, true),
            ("p2", 2, false),
            ("p3x", 3, true),
            ("p1x", 1, true),
            ("p5", 5, false),
        ];
        let ids: Vec<TaskId> = plan
            .iter()
            .map(|&(label, p, x)| submit(&mgr, "j", label, p, x))
            .collect();
        rec.open("A");
        done(&mgr, a);
        for &id in &ids {
            done(&mgr, id);
        }
        let starts = rec.starts();
        assert_eq!(
            starts[2..],
            ["p5", "p4x", "p3x", "p2", "p1x", "p0"],
            "round {round}: starts {starts:?}"
        );
        rec.open("B");
        done(&mgr, b);
        assert!(rec.peak() <= 2, "round {round}: {} ran at once", rec.peak());
        mgr.stop(PATIENCE).unwrap();
    }
}

/// SPEC §3 handler cap with its tasks in two requirement queues: never more
/// than the cap (2) run, another type runs while it is at its cap, and each
/// freed slot goes to the handler's best waiting task, whichever pool runs
/// it. Released right after the submissions, with no scan forced first.
#[test]
fn a_handler_cap_across_requirement_queues_frees_slots_best_first() {
    for round in 0..ROUNDS {
        // Three `x` workers: G1 and G2 may hold two of them.
        let mgr = manager(4, 3);
        let rec = Rec::new();
        mgr.register_with(
            "c",
            HandlerOptions::new().max_concurrent_tasks(2),
            rec.handler(""),
        )
        .unwrap();
        let other = Rec::new();
        mgr.register("o", other.handler("")).unwrap();
        mgr.start().unwrap();
        rec.gate("G1");
        rec.gate("G2");
        let g1 = submit(&mgr, "c", "G1", 0, false);
        let g2 = submit(&mgr, "c", "G2", 0, false);
        eventually("G1 and G2 run", || rec.started() == 2);
        let plan = [
            ("w0", 0, false),
            ("w2x", 2, true),
            ("w3", 3, false),
            ("w1x", 1, true),
        ];
        let ids: Vec<TaskId> = plan
            .iter()
            .map(|&(label, p, x)| submit(&mgr, "c", label, p, x))
            .collect();
        // A type at its cap is skipped while others run, on either pool.
        done(&mgr, submit(&mgr, "o", "o1", -1, false));
        done(&mgr, submit(&mgr, "o", "o2", -1, true));
        assert_eq!(rec.started(), 2, "round {round}: c is at its cap");
        let freed = pick_on_default(&mgr, &[g1, g2]);
        let kept = if freed == g1 { g2 } else { g1 };
        rec.open(mgr.get_task(freed).unwrap().payload.as_str().unwrap());
        done(&mgr, freed);
        for &id in &ids {
            done(&mgr, id);
        }
        let starts = rec.starts();
        assert_eq!(
            starts[2..],
            ["w3", "w2x", "w1x", "w0"],
            "round {round}: starts {starts:?}"
        );
        rec.open_all();
        done(&mgr, kept);
        assert!(
            rec.peak() <= 2,
            "round {round}: {} of c ran at once",
            rec.peak()
        );
        mgr.stop(PATIENCE).unwrap();
    }
}

/// SPEC §3 manager pause with the global cap full and tasks of two queues
/// queued: the running handlers finish, nothing is claimed while paused
/// (their freed slots stay unused, the tasks say "the manager is paused"),
/// and after `resume` the two best (H needs `x`, M none) take the two slots
/// before L.
#[test]
fn after_a_manager_pause_the_best_tasks_of_every_pool_take_the_freed_global_slots() {
    for round in 0..ROUNDS {
        let (mgr, rec, held_a, held_b) = a_and_b_hold_the_cap();
        mgr.pause();
        let low = submit(&mgr, "j", "L", 0, false);
        let mid = submit(&mgr, "j", "M", 3, false);
        let high = submit(&mgr, "j", "H", 5, true);
        rec.gate("M");
        rec.gate("H");
        rec.open("A");
        rec.open("B");
        done(&mgr, held_a);
        done(&mgr, held_b);
        for id in [low, mid, high] {
            assert_eq!(status(&mgr, id), TaskStatus::Pending, "round {round}");
            assert_eq!(
                mgr.waiting_reason(id).unwrap().as_deref(),
                Some("the manager is paused"),
                "round {round}"
            );
        }
        assert_eq!(rec.started(), 2, "round {round}: claimed while paused");
        mgr.resume();
        eventually("two tasks start after resume", || rec.started() >= 4);
        let mut first_two = rec.starts()[2..4].to_vec();
        first_two.sort();
        assert_eq!(
            first_two,
            ["H", "M"],
            "round {round}: the two best take the two slots; starts {:?}",
            rec.starts()
        );
        rec.open_all();
        done(&mgr, low);
        assert!(rec.peak() <= 2, "round {round}: {} ran at once", rec.peak());
        mgr.stop(PATIENCE).unwrap();
    }
}

/// SPEC §3 manager pause with a handler cap (1) held: the slot freed while
/// paused stays unused, and after `resume` the handler's tasks of both
/// requirement queues run in the SPEC's order (H needs `x`).
#[test]
fn after_a_manager_pause_a_capped_handler_runs_its_best_task_first() {
    for round in 0..ROUNDS {
        let mgr = manager(3, 2);
        let rec = Rec::new();
        mgr.register_with("c", cap_one(), rec.handler("")).unwrap();
        mgr.start().unwrap();
        rec.gate("G");
        let g = submit(&mgr, "c", "G", 0, false);
        eventually("G runs", || rec.started() == 1);
        mgr.pause();
        let ids = [
            submit(&mgr, "c", "L", 0, false),
            submit(&mgr, "c", "M", 3, false),
            submit(&mgr, "c", "H", 5, true),
        ];
        rec.open("G");
        done(&mgr, g);
        assert_eq!(rec.started(), 1, "round {round}: claimed while paused");
        mgr.resume();
        for id in ids {
            done(&mgr, id);
        }
        let starts = rec.starts();
        assert_eq!(starts[1..], ["H", "M", "L"], "round {round}: {starts:?}");
        assert_eq!(rec.peak(), 1, "round {round}: cap 1");
        mgr.stop(PATIENCE).unwrap();
    }
}

/// Handler `c`'s options in the re-registration scenarios.
fn cap_one() -> HandlerOptions {
    HandlerOptions::new().max_concurrent_tasks(1)
}

/// The re-registration scenarios' start: `c` (cap 1) runs G (gated), L
/// (no requirement) and H (priority 5, needs `x`) wait, another type `o`
/// is registered, and `c` is unregistered. Returns G, L and H.
fn unregistered_while_g_runs() -> (TaskManager, Arc<Rec>, [TaskId; 3]) {
    let mgr = manager(2, 2);
    let rec = Rec::new();
    mgr.register_with("c", cap_one(), rec.handler("v1:"))
        .unwrap();
    let other = Rec::new();
    mgr.register("o", other.handler("")).unwrap();
    mgr.start().unwrap();
    rec.gate("G");
    let g = submit(&mgr, "c", "G", 0, false);
    eventually("G runs", || rec.started() == 1);
    let l = submit(&mgr, "c", "L", 0, false);
    let h = submit(&mgr, "c", "H", 5, true);
    assert_eq!(mgr.unregister(&["c"]), 1);
    (mgr, rec, [g, l, h])
}

/// The re-registration scenarios' end: G ran under the old registration,
/// then H before L under the new one, one at a time.
fn ran_best_first_after_reregistering(mgr: &TaskManager, rec: &Rec, round: usize) {
    let starts = rec.starts();
    assert_eq!(
        starts,
        ["v1:G", "v2:H", "v2:L"],
        "round {round}: starts {starts:?}"
    );
    assert_eq!(rec.peak(), 1, "round {round}: cap 1");
    mgr.stop(PATIENCE).unwrap();
}

/// SPEC §8 and §3: a handler unregistered while its tasks wait in two
/// requirement queues: its in-flight run finishes, new submissions are
/// refused, its waiting tasks are skipped while another type runs; registered
/// again (cap 1), the new handler runs them best first (H needs `x`).
#[test]
fn a_handler_registered_again_runs_its_waiting_tasks_best_first() {
    for round in 0..ROUNDS {
        let (mgr, rec, [g, l, h]) = unregistered_while_g_runs();
        assert!(mgr
            .submit_with("c", json!("late"), SubmitOptions::new())
            .is_err());
        rec.open("G");
        done(&mgr, g);
        done(&mgr, submit(&mgr, "o", "o1", 0, false));
        done(&mgr, submit(&mgr, "o", "o2", 0, true));
        for id in [l, h] {
            assert_eq!(status(&mgr, id), TaskStatus::Pending, "round {round}");
        }
        assert_eq!(rec.started(), 1, "round {round}: ran unregistered");
        mgr.register_with("c", cap_one(), rec.handler("v2:"))
            .unwrap();
        done(&mgr, h);
        done(&mgr, l);
        ran_best_first_after_reregistering(&mgr, &rec, round);
    }
}

/// SPEC §3/§8: slots outlive re-registration: a handler registered again
/// (cap 1) while an attempt of the old registration runs counts that attempt,
/// so its waiting tasks start only when the old run ends, best first.
#[test]
fn a_handler_registered_again_while_its_old_run_holds_the_slot_waits_for_it() {
    for round in 0..ROUNDS {
        let (mgr, rec, [g, l, h]) = unregistered_while_g_runs();
        mgr.register_with("c", cap_one(), rec.handler("v2:"))
            .unwrap();
        done(&mgr, submit(&mgr, "o", "o1", 0, false));
        done(&mgr, submit(&mgr, "o", "o2", 0, true));
        assert_eq!(
            rec.starts(),
            ["v1:G"],
            "round {round}: the old run holds c's one slot"
        );
        rec.open("G");
        done(&mgr, g);
        done(&mgr, h);
        done(&mgr, l);
        ran_best_first_after_reregistering(&mgr, &rec, round);
    }
}
