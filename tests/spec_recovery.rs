//! SPEC §12 (crash recovery) and §13 (manager lifecycle) rules that the other
//! crash and restart tests leave open, one rule per test.
//!
//! Real crashes: this binary re-runs itself as a child process (the test
//! `child_process`, active only when `FIBFLOW_SPEC_RECOVERY_CHILD` names a
//! scenario) on a log directory with `Durability::Sync` and a manual clock at
//! `T0`. The child prints `SPEC-CHILD <key> <value>` lines; the parent kills it
//! with SIGKILL once it has read the line that says the phase under test is
//! reached (never after a sleep), reaps it, and reopens the directory with a
//! manual clock of its own (at `T0` unless the test moves it).
//!
//! Graceful stops (`stop(Duration::ZERO)`) are used where the rule is about
//! what `stop` records, or where a scenario needs several restarts in one
//! process with one shared clock.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{build_unlocked, eventually, Gate, PATIENCE};
use fibflow::{
    AttemptOutcome, ChildSpec, Durability, Error, EventType, HandlerOptions, ManualClock, Outcome,
    SubmitOptions, TaskFilter, TaskId, TaskManager, TaskStatus,
};
use serde_json::json;
use std::cell::RefCell;
use std::io::{BufRead, Write};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

/// 2024-01-01T00:00:00Z.
const T0: u64 = 1_704_067_200_000;
const SEC: Duration = Duration::from_secs(1);
const CHILD_ENV: &str = "FIBFLOW_SPEC_RECOVERY_CHILD";
const DIR_ENV: &str = "FIBFLOW_SPEC_RECOVERY_DIR";
const TAG: &str = "SPEC-CHILD";

fn builder(dir: &Path, clock: &Arc<ManualClock>) -> fibflow::Builder {
    TaskManager::builder()
        .dir(dir)
        .segment_size(1 << 20)
        .clock(clock.clone())
}

fn open(dir: &Path, clock: &Arc<ManualClock>) -> TaskManager {
    build_unlocked(builder(dir, clock)).unwrap()
}

fn status(mgr: &TaskManager, id: TaskId) -> TaskStatus {
    mgr.get_task(id).unwrap().status
}

fn count_events(mgr: &TaskManager, id: TaskId, ty: EventType) -> usize {
    mgr.events(id)
        .unwrap()
        .iter()
        .filter(|e| e.event_type == ty)
        .count()
}

fn outcomes(mgr: &TaskManager, id: TaskId) -> Vec<Option<AttemptOutcome>> {
    mgr.attempts(id)
        .unwrap()
        .iter()
        .map(|a| a.outcome)
        .collect()
}

/// A handler counter: how many times the handler registered by `counting` ran.
fn counting(mgr: &TaskManager, name: &str) -> Arc<AtomicUsize> {
    let n = Arc::new(AtomicUsize::new(0));
    let c = n.clone();
    mgr.register(name, move |ctx| {
        c.fetch_add(1, Ordering::SeqCst);
        Ok(json!({"ran": ctx.payload().clone()}).into())
    })
    .unwrap();
    n
}

// ---------------------------------------------------------------------------
// The child process
// ---------------------------------------------------------------------------

/// Prints one line the parent reads.
fn say(key: &str, value: impl std::fmt::Display) {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{TAG} {key} {value}").unwrap();
    out.flush().unwrap();
}

/// Blocks this thread until the process is killed.
fn hang() -> ! {
    loop {
        std::thread::park();
    }
}

/// A handler that announces its task and attempt, then blocks until the kill.
fn announce_and_hang(ctx: &fibflow::TaskContext) -> fibflow::HandlerResult {
    say("running", format!("{} {}", ctx.id(), ctx.attempt()));
    hang()
}

/// Not a test of its own: the child process of the kill scenarios, active only
/// when `FIBFLOW_SPEC_RECOVERY_CHILD` names a scenario. It never returns: the
/// parent kills it.
#[test]
fn child_process() {
    let Ok(scenario) = std::env::var(CHILD_ENV) else {
        return;
    };
    let dir = std::env::var(DIR_ENV).unwrap();
    let dir = Path::new(&dir);
    let clock = ManualClock::new(T0);
    // The manager lives until the kill (dropping it would stop it).
    let _mgr: TaskManager = match scenario.as_str() {
        // One task whose handler runs (and blocks) when the kill comes.
        "running" => {
            let mgr = open(dir, &clock);
            mgr.register("block", announce_and_hang).unwrap();
            let id = mgr
                .submit_with(
                    "block",
                    json!({"n": 1}),
                    SubmitOptions::new()
                        .dedup_key("only-once")
                        .timeout(10 * SEC)
                        .max_retries(1),
                )
                .unwrap();
            say("submitted", id);
            mgr.start().unwrap();
            mgr
        }
        // Tasks that wait (suspended, retry backoff, delay, paused while its
        // handler ran) and none that runs, when the kill comes.
        "waiting" => {
            let mgr = open(dir, &clock);
            mgr.register("approve", |ctx| {
                if ctx.stage() == 0 {
                    Ok(Outcome::Suspend {
                        reason: "needs approval".into(),
                        context: Some(b"ctx-1".to_vec()),
                    })
                } else {
                    Ok(json!("approved").into())
                }
            })
            .unwrap();
            let opts = HandlerOptions::new()
                .max_retries(3)
                .retry_interval(30 * SEC);
            mgr.register_with("flaky", opts, |_| Err("first try fails".into()))
                .unwrap();
            mgr.register("later", announce_and_hang).unwrap();
            mgr.register("pausable", announce_and_hang).unwrap();
            let approve = mgr.submit("approve", json!(null)).unwrap();
            let flaky = mgr.submit("flaky", json!(null)).unwrap();
            let later = mgr
                .submit_with("later", json!(null), SubmitOptions::new().delay(60 * SEC))
                .unwrap();
            let pausable = mgr.submit("pausable", json!(null)).unwrap();
            mgr.start().unwrap();
            eventually("everything waits", || {
                let f = mgr.get_task(flaky).unwrap();
                status(&mgr, approve) == TaskStatus::Suspended
                    && f.status == TaskStatus::Failed
                    && f.next_run_time == T0 + 30_000
                    && status(&mgr, pausable) == TaskStatus::Running
            });
            mgr.pause_task(pausable).unwrap();
            say("approve", approve);
            say("flaky", flaky);
            say("later", later);
            say("pausable", pausable);
            say("ready", 0);
            mgr
        }
        // A parent suspended on two children: one completed, one running.
        "fan" => {
            let mgr = build_unlocked(builder(dir, &clock).max_concurrent_tasks(4)).unwrap();
            mgr.register("leaf", |ctx| {
                if ctx.payload() == &json!(1) {
                    announce_and_hang(ctx)
                } else {
                    Ok(ctx.payload().clone().into())
                }
            })
            .unwrap();
            mgr.register("fan", |_| {
                Ok(Outcome::spawn(vec![
                    ChildSpec::new("leaf", json!(0)),
                    ChildSpec::new("leaf", json!(1)),
                ]))
            })
            .unwrap();
            let parent = mgr.submit("fan", json!(null)).unwrap();
            mgr.start().unwrap();
            eventually("one child done, one running", || {
                let kids = common::children_of(&mgr, parent);
                kids.len() == 2
                    && kids[0].status == TaskStatus::Completed
                    && kids[1].status == TaskStatus::Running
            });
            say("parent", parent);
            say("ready", 0);
            mgr
        }
        // Two tasks of a handler capped at 2, both running.
        "capped" => {
            let mgr = build_unlocked(builder(dir, &clock).max_concurrent_tasks(4)).unwrap();
            let opts = HandlerOptions::new().max_concurrent_tasks(2);
            mgr.register_with("capped", opts, announce_and_hang)
                .unwrap();
            for n in 0..2 {
                say("submitted", mgr.submit("capped", json!(n)).unwrap());
            }
            mgr.start().unwrap();
            mgr
        }
        // A handler blocks; `stop` with a long deadline is under way.
        "stopping" => {
            let mgr = open(dir, &clock);
            mgr.register("block", announce_and_hang).unwrap();
            say("submitted", mgr.submit("block", json!(null)).unwrap());
            mgr.start().unwrap();
            eventually("the handler runs", || mgr.running() == 1);
            std::thread::scope(|s| {
                s.spawn(|| mgr.stop(PATIENCE));
                // `start` refuses once `stop` has begun; before, it is harmless.
                eventually("stop began", || matches!(mgr.start(), Err(Error::Stopped)));
                say("stopping", 0);
                hang()
            })
        }
        // Three tasks, one worker, killed right after `start` returns.
        "started" => {
            let mgr = build_unlocked(builder(dir, &clock).max_concurrent_tasks(1)).unwrap();
            mgr.register("block", announce_and_hang).unwrap();
            for n in 0..3 {
                say("submitted", mgr.submit("block", json!(n)).unwrap());
            }
            mgr.start().unwrap();
            say("started", 0);
            mgr
        }
        // The same task (dedup key), run and killed again at every run.
        "poison" => {
            let mgr = open(dir, &clock);
            mgr.register("poison", announce_and_hang).unwrap();
            let id = mgr
                .submit_with(
                    "poison",
                    json!(null),
                    SubmitOptions::new().dedup_key("poison"),
                )
                .unwrap();
            say("submitted", id);
            mgr.start().unwrap();
            mgr
        }
        // Submissions acknowledged one by one under `Durability::Os` (in the
        // page cache, which survives a process crash); the kill comes while
        // they go on.
        "os" => {
            let mgr = build_unlocked(builder(dir, &clock).durability(Durability::Os)).unwrap();
            mgr.register("noop", |_| Ok(json!(null).into())).unwrap();
            for n in 0..10_000 {
                say("acked", mgr.submit("noop", json!(n)).unwrap());
            }
            mgr
        }
        other => panic!("unknown scenario {other}"),
    };
    hang()
}

/// A running child process; killed (SIGKILL) and reaped on `kill` or drop.
struct Child {
    proc: std::process::Child,
    lines: mpsc::Receiver<String>,
    /// Lines read while looking for another key, in order.
    unread: RefCell<Vec<String>>,
    scenario: &'static str,
}

impl Child {
    /// Starts `scenario` on the log directory `dir`.
    fn spawn(scenario: &'static str, dir: &Path) -> Child {
        let mut proc = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "child_process",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, scenario)
            .env(DIR_ENV, dir)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .unwrap();
        let out = proc.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                // libtest may have printed `test child_process ... ` first.
                if let Some(at) = line.find(TAG) {
                    if tx.send(line[at + TAG.len()..].trim().to_owned()).is_err() {
                        break;
                    }
                }
            }
        });
        Child {
            proc,
            lines,
            unread: RefCell::new(Vec::new()),
            scenario,
        }
    }

    /// The value of the next line the child prints with `key` (lines with
    /// other keys are kept for later calls).
    fn expect(&self, key: &str) -> String {
        let split = |line: &str| -> (String, String) {
            let (k, v) = line.split_once(' ').unwrap_or((line, ""));
            (k.to_owned(), v.to_owned())
        };
        {
            let mut unread = self.unread.borrow_mut();
            if let Some(i) = unread.iter().position(|l| split(l).0 == key) {
                return split(&unread.remove(i)).1;
            }
        }
        let until = Instant::now() + PATIENCE;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let (k, v) = split(&line);
                    if k == key {
                        return v;
                    }
                    self.unread.borrow_mut().push(line);
                }
                Err(e) => panic!(
                    "child `{}` did not print `{key}` ({e:?}); see its stderr above",
                    self.scenario
                ),
            }
        }
    }

    /// The task id in the next `key` line.
    fn id(&self, key: &str) -> TaskId {
        let v = self.expect(key);
        let first = v.split_whitespace().next().unwrap();
        TaskId(first.parse().unwrap())
    }

    /// SIGKILL, then reap.
    fn kill(mut self) {
        self.reap();
    }

    fn reap(&mut self) {
        let _ = self.proc.kill();
        let _ = self.proc.wait();
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        self.reap();
    }
}

/// Runs the `running` scenario and kills the child while its handler runs.
/// Returns the temp dir and the task id.
fn killed_while_running() -> (tempfile::TempDir, TaskId) {
    let dir = tempfile::tempdir().unwrap();
    let child = Child::spawn("running", dir.path());
    let id = child.id("submitted");
    assert_eq!(child.expect("running"), format!("{id} 1"));
    child.kill();
    (dir, id)
}

/// Ids the `waiting` scenario printed.
struct Waiting {
    approve: TaskId,
    flaky: TaskId,
    later: TaskId,
    pausable: TaskId,
}

fn killed_while_waiting() -> (tempfile::TempDir, Waiting) {
    let dir = tempfile::tempdir().unwrap();
    let child = Child::spawn("waiting", dir.path());
    let w = Waiting {
        approve: child.id("approve"),
        flaky: child.id("flaky"),
        later: child.id("later"),
        pausable: child.id("pausable"),
    };
    child.expect("ready");
    child.kill();
    (dir, w)
}

// ---------------------------------------------------------------------------
// §12: a kill while a handler runs
// ---------------------------------------------------------------------------

/// SPEC §12: "Every task that was `running` gets its open attempt closed
/// `interrupted` (error says the process stopped), returns to `pending` at
/// stage 0 without consuming a retry, and emits `task_recovered`."
#[test]
fn s12_a_task_killed_while_its_handler_runs_is_recovered_at_reopen() {
    let (dir, id) = killed_while_running();
    let clock = ManualClock::new(T0 + 5_000);
    let mgr = open(dir.path(), &clock);
    let stats = mgr.recovery_stats().clone();
    assert_eq!((stats.recovered, stats.quarantined), (1, 0), "{stats:?}");
    let t = mgr.get_task(id).unwrap();
    assert_eq!(
        (t.status, t.stage, t.retry_count),
        (TaskStatus::Pending, 0, 0)
    );
    assert_eq!((t.worker.clone(), t.start_time), (None, None));
    assert_eq!(t.next_run_time, T0 + 5_000, "due at the reopen");
    assert_eq!(t.last_active_time, T0 + 5_000);
    let a = mgr.attempts(id).unwrap();
    assert_eq!(a.len(), 1);
    assert_eq!(a[0].outcome, Some(AttemptOutcome::Interrupted));
    assert_eq!(a[0].ended_at, Some(T0 + 5_000));
    let err = a[0].error.clone().unwrap_or_default();
    assert!(err.contains("process stopped"), "attempt error: {err:?}");
    let events = mgr.events(id).unwrap();
    let names: Vec<&str> = events.iter().map(|e| e.event_type.as_str()).collect();
    assert_eq!(
        names,
        [
            "task_created",
            "task_claimed",
            "task_started",
            "task_recovered"
        ]
    );
    let rec = events.last().unwrap();
    assert_eq!(
        (rec.from_status, rec.to_status),
        (Some(TaskStatus::Running), Some(TaskStatus::Pending))
    );
    assert_eq!(rec.metadata["attempt"], 1, "{:?}", rec.metadata);
    // The rerun is attempt 2, not a retry, and completes with the one execution
    // `max_retries(1)` allows.
    let runs = counting(&mgr, "block");
    mgr.start().unwrap();
    let t = mgr.wait(id, PATIENCE).unwrap();
    assert_eq!((t.status, t.retry_count), (TaskStatus::Completed, 0));
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    let a = mgr.attempts(id).unwrap();
    assert_eq!(
        a.iter().map(|a| (a.number, a.outcome)).collect::<Vec<_>>(),
        [
            (1, Some(AttemptOutcome::Interrupted)),
            (2, Some(AttemptOutcome::Completed))
        ]
    );
    assert_eq!(count_events(&mgr, id, EventType::RetryStarted), 0);
    assert_eq!(count_events(&mgr, id, EventType::Recovered), 1);
}

/// SPEC §12: "Timers ... are rebuilt", §4: the timeout counts from the
/// attempt's `start_time`. A task killed while running and reopened an hour
/// later gets a whole timeout for its new attempt, not one from the dead one.
#[test]
fn s12_a_recovered_task_gets_a_fresh_timeout_window() {
    let (dir, id) = killed_while_running();
    let clock = ManualClock::new(T0 + 3_600_000);
    let mgr = open(dir.path(), &clock);
    let gate = Gate::new();
    let g = gate.clone();
    mgr.register("block", move |_| {
        g.wait();
        Ok(json!("late").into())
    })
    .unwrap();
    mgr.start().unwrap();
    eventually("attempt 2 runs", || {
        mgr.attempts(id).unwrap().len() == 2 && status(&mgr, id) == TaskStatus::Running
    });
    assert_eq!(mgr.get_task(id).unwrap().start_time, Some(T0 + 3_600_000));
    clock.advance(9 * SEC);
    assert_eq!(status(&mgr, id), TaskStatus::Running, "timed out early");
    assert_eq!(outcomes(&mgr, id)[1], None);
    clock.advance(SEC);
    let t = mgr.wait(id, PATIENCE).unwrap();
    gate.open();
    // `max_retries(1)`: the timeout is the last execution.
    assert_eq!(t.status, TaskStatus::PermanentlyFailed);
    assert_eq!(
        outcomes(&mgr, id),
        [
            Some(AttemptOutcome::Interrupted),
            Some(AttemptOutcome::Timeout)
        ]
    );
    assert_eq!(mgr.attempts(id).unwrap()[1].ended_at, Some(T0 + 3_610_000));
}

/// SPEC §12 "Nothing acknowledged is lost": a dedup key acknowledged before a
/// kill still dedupes after it, also for a task that was running.
#[test]
fn s12_a_dedup_key_acknowledged_before_a_kill_still_dedupes() {
    let (dir, id) = killed_while_running();
    let clock = ManualClock::new(T0);
    let mgr = open(dir.path(), &clock);
    counting(&mgr, "block");
    let again = mgr
        .submit_with(
            "block",
            json!({"n": 2}),
            SubmitOptions::new().dedup_key("only-once"),
        )
        .unwrap();
    assert_eq!(again, id);
    assert_eq!(mgr.list_tasks(&TaskFilter::all()).len(), 1);
    mgr.start().unwrap();
    let t = mgr.wait(id, PATIENCE).unwrap();
    assert_eq!(t.result, Some(json!({"ran": {"n": 1}})));
    drop(mgr);
    let mgr = open(dir.path(), &clock);
    counting(&mgr, "block");
    let third = mgr
        .submit_with(
            "block",
            json!({"n": 3}),
            SubmitOptions::new().dedup_key("only-once"),
        )
        .unwrap();
    assert_eq!(third, id);
    assert_eq!(mgr.list_tasks(&TaskFilter::all()).len(), 1);
}

/// SPEC §13 "Queries, submit, pause_task, resume_task, delete work before
/// `start`", on a directory reopened after a kill: a recovered task can be
/// paused before start (and then does not run), resumed later, and another
/// task deleted, all before the workers start.
#[test]
fn s13_controls_work_on_recovered_tasks_before_start() {
    let (dir, id) = killed_while_running();
    let clock = ManualClock::new(T0);
    let mgr = open(dir.path(), &clock);
    assert_eq!(
        mgr.waiting_reason(id).unwrap().as_deref(),
        Some("No handler registered for task: block")
    );
    let runs = counting(&mgr, "block");
    mgr.pause_task(id).unwrap();
    let extra = mgr.submit("block", json!("extra")).unwrap();
    assert_eq!(
        mgr.delete_tasks(&TaskFilter::all().status(TaskStatus::Pending))
            .unwrap(),
        1
    );
    assert!(mgr.get_task(extra).is_none());
    assert_eq!(status(&mgr, id), TaskStatus::Paused);
    mgr.start().unwrap();
    let marker = mgr.submit("block", json!("marker")).unwrap();
    mgr.wait(marker, PATIENCE).unwrap();
    assert_eq!(status(&mgr, id), TaskStatus::Paused, "a paused task ran");
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    mgr.resume_task(id, None).unwrap();
    let t = mgr.wait(id, PATIENCE).unwrap();
    assert_eq!(t.status, TaskStatus::Completed);
    assert_eq!(t.stage, 0);
    assert_eq!(
        outcomes(&mgr, id),
        [
            Some(AttemptOutcome::Interrupted),
            Some(AttemptOutcome::Completed)
        ]
    );
}

// ---------------------------------------------------------------------------
// §12: a kill while nothing runs
// ---------------------------------------------------------------------------

/// SPEC §12: only tasks that were `running` are recovered. A kill while tasks
/// wait (suspended, in retry backoff, delayed, paused while their handler
/// ran) leaves them as they were: no `task_recovered`, no new attempt outcome.
#[test]
fn s12_only_running_tasks_are_recovered_after_a_kill() {
    let (dir, w) = killed_while_waiting();
    let clock = ManualClock::new(T0);
    let mgr = open(dir.path(), &clock);
    assert_eq!(mgr.recovery_stats().recovered, 0);
    for id in [w.approve, w.flaky, w.later, w.pausable] {
        assert_eq!(
            count_events(&mgr, id, EventType::Recovered),
            0,
            "task {id} recovered"
        );
        assert!(
            !outcomes(&mgr, id).contains(&Some(AttemptOutcome::Interrupted)),
            "task {id} has an interrupted attempt"
        );
        assert!(
            mgr.attempts(id)
                .unwrap()
                .iter()
                .all(|a| a.outcome.is_some()),
            "task {id} has an open attempt"
        );
    }
    assert_eq!(status(&mgr, w.approve), TaskStatus::Suspended);
    assert_eq!(outcomes(&mgr, w.approve), [Some(AttemptOutcome::Suspended)]);
    let f = mgr.get_task(w.flaky).unwrap();
    assert_eq!((f.status, f.retry_count), (TaskStatus::Failed, 0));
    assert_eq!(f.error.as_deref(), Some("first try fails"));
    assert_eq!(status(&mgr, w.later), TaskStatus::Pending);
    assert!(mgr.attempts(w.later).unwrap().is_empty());
    assert_eq!(status(&mgr, w.pausable), TaskStatus::Paused);
    assert_eq!(outcomes(&mgr, w.pausable), [Some(AttemptOutcome::Paused)]);
}

/// SPEC §12 "Timers ... are rebuilt" after a real kill: the retry fires at the
/// end of its backoff (T0 + 30 s) and the delayed task at its time (T0 + 60 s),
/// neither earlier; the retry uses retry 1, the interruption-free wait none.
#[test]
fn s12_retry_and_delay_timers_fire_at_their_recorded_time_after_a_kill() {
    let (dir, w) = killed_while_waiting();
    let clock = ManualClock::new(T0);
    let mgr = open(dir.path(), &clock);
    let f = mgr.get_task(w.flaky).unwrap();
    assert_eq!(f.next_run_time, T0 + 30_000);
    assert_eq!(mgr.get_task(w.later).unwrap().next_run_time, T0 + 60_000);
    let flaky_runs = counting(&mgr, "flaky");
    let later_runs = counting(&mgr, "later");
    mgr.start().unwrap();
    clock.advance(29 * SEC);
    assert_eq!(flaky_runs.load(Ordering::SeqCst), 0, "retry ran early");
    assert_eq!(status(&mgr, w.flaky), TaskStatus::Failed);
    clock.advance(SEC);
    let t = mgr.wait(w.flaky, PATIENCE).unwrap();
    assert_eq!((t.status, t.retry_count), (TaskStatus::Completed, 1));
    assert_eq!(mgr.attempts(w.flaky).unwrap()[1].started_at, T0 + 30_000);
    clock.advance(29 * SEC);
    assert_eq!(later_runs.load(Ordering::SeqCst), 0, "delay ran early");
    assert_eq!(status(&mgr, w.later), TaskStatus::Pending);
    clock.advance(SEC);
    assert_eq!(
        mgr.wait(w.later, PATIENCE).unwrap().status,
        TaskStatus::Completed
    );
    assert_eq!(mgr.attempts(w.later).unwrap()[0].started_at, T0 + 60_000);
}

/// SPEC §12 "suspended parents ... are rebuilt", §6: a task suspended by its
/// handler before a kill stays suspended (it never resumes by itself), and
/// `resume_task` runs it at stage 1 with its saved context.
#[test]
fn s12_a_suspended_task_waits_through_a_kill_and_resumes_with_its_context() {
    let (dir, w) = killed_while_waiting();
    let clock = ManualClock::new(T0);
    let mgr = open(dir.path(), &clock);
    let seen = Arc::new(Mutex::new(None));
    let s = seen.clone();
    mgr.register("approve", move |ctx| {
        *s.lock().unwrap() = Some((ctx.stage(), ctx.context().map(<[u8]>::to_vec)));
        Ok(json!("approved").into())
    })
    .unwrap();
    mgr.start().unwrap();
    clock.advance(3_600 * SEC);
    assert_eq!(status(&mgr, w.approve), TaskStatus::Suspended);
    mgr.resume_task(w.approve, Some("ok")).unwrap();
    let t = mgr.wait(w.approve, PATIENCE).unwrap();
    assert_eq!(t.status, TaskStatus::Completed);
    assert_eq!(
        seen.lock().unwrap().clone(),
        Some((1, Some(b"ctx-1".to_vec())))
    );
}

// ---------------------------------------------------------------------------
// §12: a kill while children run
// ---------------------------------------------------------------------------

/// SPEC §12 "suspended parents ... are rebuilt. Nothing acknowledged is lost,
/// nothing completed runs again", §5 "delivered to its parent exactly once": a
/// parent with one finished and one running child when killed stays suspended;
/// only the running child reruns; the parent resumes once with both entries.
#[test]
fn s12_a_parent_whose_child_was_killed_resumes_once_the_child_reruns() {
    let dir = tempfile::tempdir().unwrap();
    let child = Child::spawn("fan", dir.path());
    let parent = child.id("parent");
    let kid1 = child.id("running");
    child.expect("ready");
    child.kill();
    let clock = ManualClock::new(T0);
    let mgr = build_unlocked(builder(dir.path(), &clock).max_concurrent_tasks(4)).unwrap();
    assert_eq!(mgr.recovery_stats().recovered, 1);
    let kids = common::children_of(&mgr, parent);
    assert_eq!(kids.len(), 2);
    let kid0 = kids[0].id;
    assert_eq!(kids[1].id, kid1);
    let p = mgr.get_task(parent).unwrap();
    assert_eq!(p.status, TaskStatus::Suspended);
    assert_eq!((p.total_children, p.completed_children), (2, 1));
    assert_eq!(count_events(&mgr, parent, EventType::Recovered), 0);
    assert_eq!(status(&mgr, kid1), TaskStatus::Pending);
    assert_eq!(count_events(&mgr, kid1, EventType::Recovered), 1);
    let leaf_runs = Arc::new(Mutex::new(Vec::new()));
    let l = leaf_runs.clone();
    mgr.register("leaf", move |ctx| {
        l.lock().unwrap().push(ctx.id());
        Ok(ctx.payload().clone().into())
    })
    .unwrap();
    let stages = Arc::new(Mutex::new(Vec::new()));
    let s = stages.clone();
    mgr.register("fan", move |ctx| {
        s.lock().unwrap().push(ctx.stage());
        Ok(json!({"seen": ctx.result().cloned()}).into())
    })
    .unwrap();
    mgr.start().unwrap();
    let t = mgr.wait(parent, PATIENCE).unwrap();
    assert_eq!(t.status, TaskStatus::Completed);
    assert_eq!(
        *leaf_runs.lock().unwrap(),
        [kid1],
        "only the killed child reruns"
    );
    assert_eq!(
        *stages.lock().unwrap(),
        [1],
        "the parent ran once, at stage 1"
    );
    assert_eq!(
        t.result.unwrap()["seen"],
        json!([{"task_id": kid0, "result": 0}, {"task_id": kid1, "result": 1}])
    );
    assert_eq!(
        outcomes(&mgr, parent),
        [
            Some(AttemptOutcome::Suspended),
            Some(AttemptOutcome::Completed)
        ]
    );
}

// ---------------------------------------------------------------------------
// §12: limits are rebuilt
// ---------------------------------------------------------------------------

/// SPEC §12 "limits are rebuilt": two tasks of a handler capped at 2 were
/// running at the kill. After the reopen both run again at once (no slot is
/// leaked by the dead attempts), and a third waits (no slot is handed out
/// twice); the cap is never exceeded.
#[test]
fn s12_concurrency_limits_are_rebuilt_after_a_kill_with_running_tasks() {
    let dir = tempfile::tempdir().unwrap();
    let child = Child::spawn("capped", dir.path());
    let a = child.id("submitted");
    let b = child.id("submitted");
    let mut running = vec![child.id("running"), child.id("running")];
    running.sort();
    assert_eq!(running, [a, b]);
    child.kill();
    let clock = ManualClock::new(T0);
    let mgr = build_unlocked(builder(dir.path(), &clock).max_concurrent_tasks(4)).unwrap();
    assert_eq!(mgr.recovery_stats().recovered, 2);
    let gate = Gate::new();
    let now = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let (gate2, now2, peak2) = (gate.clone(), now.clone(), peak.clone());
    let opts = HandlerOptions::new().max_concurrent_tasks(2);
    mgr.register_with("capped", opts, move |_| {
        let k = now2.fetch_add(1, Ordering::SeqCst) + 1;
        peak2.fetch_max(k, Ordering::SeqCst);
        gate2.wait();
        now2.fetch_sub(1, Ordering::SeqCst);
        Ok(json!(null).into())
    })
    .unwrap();
    let third = mgr.submit("capped", json!(2)).unwrap();
    mgr.start().unwrap();
    // Inside their handlers, not only claimed: a worker records the claim
    // before it calls the handler, and a gate opened in between would let
    // the first finish before the second starts (the peak would be 1).
    eventually("both recovered tasks run again", || {
        status(&mgr, a) == TaskStatus::Running
            && status(&mgr, b) == TaskStatus::Running
            && now.load(Ordering::SeqCst) == 2
    });
    assert_eq!(status(&mgr, third), TaskStatus::Pending);
    assert_eq!(mgr.running(), 2);
    gate.open();
    for id in [a, b, third] {
        assert_eq!(
            mgr.wait(id, PATIENCE).unwrap().status,
            TaskStatus::Completed
        );
    }
    assert_eq!(peak.load(Ordering::SeqCst), 2, "the cap of 2 was exceeded");
}

// ---------------------------------------------------------------------------
// §12/§13: kills around start and stop
// ---------------------------------------------------------------------------

/// SPEC §12 "Nothing acknowledged is lost": a kill right after `start`
/// returns (one worker, three tasks) loses no task, and recovers exactly the
/// tasks that had been claimed: each of those has one interrupted attempt and
/// one `task_recovered`; the others have neither.
#[test]
fn s12_a_kill_right_after_start_loses_nothing_and_recovers_only_claimed_tasks() {
    let dir = tempfile::tempdir().unwrap();
    let child = Child::spawn("started", dir.path());
    let ids: Vec<TaskId> = (0..3).map(|_| child.id("submitted")).collect();
    child.expect("started");
    child.kill();
    let clock = ManualClock::new(T0);
    let mgr = open(dir.path(), &clock);
    let all: Vec<TaskId> = mgr
        .list_tasks(&TaskFilter::all())
        .iter()
        .map(|t| t.id)
        .collect();
    assert_eq!(all, ids);
    let mut claimed = 0u64;
    for &id in &ids {
        assert_eq!(status(&mgr, id), TaskStatus::Pending);
        let attempts = outcomes(&mgr, id);
        let recovered = count_events(&mgr, id, EventType::Recovered);
        match attempts.as_slice() {
            [] => assert_eq!(recovered, 0, "task {id} recovered without an attempt"),
            [Some(AttemptOutcome::Interrupted)] => {
                assert_eq!(recovered, 1, "task {id}");
                claimed += 1;
            }
            other => panic!("task {id}: attempts {other:?}"),
        }
    }
    assert!(claimed <= 1, "one worker ran {claimed} tasks at once");
    assert_eq!(mgr.recovery_stats().recovered, claimed);
    let runs = counting(&mgr, "block");
    mgr.start().unwrap();
    for &id in &ids {
        assert_eq!(
            mgr.wait(id, PATIENCE).unwrap().status,
            TaskStatus::Completed
        );
    }
    assert_eq!(runs.load(Ordering::SeqCst), 3);
}

/// SPEC §13 `stop(deadline)` "waits for running handlers up to the deadline,
/// records what did not finish as interrupted", §12: a kill while `stop` is
/// still waiting is a crash like any other: the reopen recovers the task
/// once, with one interrupted attempt.
#[test]
fn s13_a_kill_during_stop_recovers_the_unfinished_task_once() {
    let dir = tempfile::tempdir().unwrap();
    let child = Child::spawn("stopping", dir.path());
    let id = child.id("submitted");
    child.expect("stopping");
    child.kill();
    let clock = ManualClock::new(T0);
    let mgr = open(dir.path(), &clock);
    assert_eq!(mgr.recovery_stats().recovered, 1);
    assert_eq!(status(&mgr, id), TaskStatus::Pending);
    assert_eq!(outcomes(&mgr, id), [Some(AttemptOutcome::Interrupted)]);
    assert_eq!(count_events(&mgr, id, EventType::Recovered), 1);
    counting(&mgr, "block");
    mgr.start().unwrap();
    assert_eq!(
        mgr.wait(id, PATIENCE).unwrap().status,
        TaskStatus::Completed
    );
}

// ---------------------------------------------------------------------------
// §12: poison-pill quarantine
// ---------------------------------------------------------------------------

/// SPEC §12: "A task interrupted by crashes more than N times in a row
/// (default 3) is quarantined (`permanently_failed` with a clear error)".
/// Real kills, default settings: after 3 kills the task is still pending;
/// after the 4th it is quarantined at the reopen, with an error that says
/// what happened and what to do. Attempt numbers keep rising across kills.
#[test]
fn s12_a_task_killed_more_than_three_times_in_a_row_is_quarantined_by_default() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let mut id = None;
    for kill in 1..=4u32 {
        let child = Child::spawn("poison", dir.path());
        let got = child.id("submitted");
        assert_eq!(
            *id.get_or_insert(got),
            got,
            "the dedup key was not honoured"
        );
        assert_eq!(child.expect("running"), format!("{got} {kill}"));
        child.kill();
        // Default settings: quarantine after more than 3 in a row.
        let mgr = open(dir.path(), &clock);
        let t = mgr.get_task(got).unwrap();
        let stats = mgr.recovery_stats();
        assert_eq!(stats.recovered, 1);
        assert_eq!(count_events(&mgr, got, EventType::Recovered), kill as usize);
        if kill <= 3 {
            assert_eq!(
                t.status,
                TaskStatus::Pending,
                "after kill {kill}: {:?}",
                t.error
            );
            assert_eq!(stats.quarantined, 0);
        } else {
            assert_eq!(t.status, TaskStatus::PermanentlyFailed);
            assert_eq!(stats.quarantined, 1);
            let err = t.error.unwrap();
            assert!(err.contains("quarantined"), "{err}");
            assert!(err.contains('4'), "how many times: {err}");
            assert!(err.contains("resubmit"), "what to do: {err}");
            let numbers: Vec<u32> = mgr
                .attempts(got)
                .unwrap()
                .iter()
                .map(|a| a.number)
                .collect();
            assert_eq!(numbers, [1, 2, 3, 4]);
            assert_eq!(
                mgr.events(got).unwrap().last().unwrap().event_type,
                EventType::PermanentlyFailed
            );
        }
    }
}

/// The blocking controls of the in-process restart tests: the handler sends
/// its attempt number, then (if told to block) waits for a release.
type Ctl = (Mutex<mpsc::Sender<u32>>, Mutex<mpsc::Receiver<()>>);

fn ctl() -> (Arc<Ctl>, mpsc::Receiver<u32>, mpsc::Sender<()>) {
    let (started_tx, started_rx) = mpsc::channel::<u32>();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    (
        Arc::new((Mutex::new(started_tx), Mutex::new(release_rx))),
        started_rx,
        release_tx,
    )
}

/// SPEC §12 "more than N times in a row": a normal, successful attempt in
/// between resets the count. A cron task with `quarantine_after(1)`: round 1
/// interrupted, round 2 completes, round 3 interrupted: two interruptions,
/// not in a row, so it is not quarantined.
#[test]
fn s12_the_crash_count_resets_after_a_successful_cron_round() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let (c, started, release) = ctl();
    let reg = |mgr: &TaskManager| {
        let c = c.clone();
        mgr.register("tick", move |ctx| {
            let a = ctx.attempt();
            let _ = c.0.lock().unwrap().send(a);
            if a != 2 {
                let _ = c.1.lock().unwrap().recv();
            }
            Ok(json!({"attempt": a}).into())
        })
        .unwrap();
    };
    let b = || builder(dir.path(), &clock).quarantine_after(1);
    let id = {
        let mgr = build_unlocked(b()).unwrap();
        reg(&mgr);
        let id = mgr
            .submit_with(
                "tick",
                json!(null),
                SubmitOptions::new().cron("*/10 * * * * *"),
            )
            .unwrap();
        mgr.start().unwrap();
        clock.advance(10 * SEC);
        assert_eq!(started.recv_timeout(PATIENCE).unwrap(), 1);
        assert_eq!(mgr.stop(Duration::ZERO).unwrap().interrupted, [id]);
        release.send(()).unwrap();
        id
    };
    {
        let mgr = build_unlocked(b()).unwrap();
        assert_eq!(status(&mgr, id), TaskStatus::Pending);
        reg(&mgr);
        mgr.start().unwrap();
        assert_eq!(started.recv_timeout(PATIENCE).unwrap(), 2);
        eventually("round 2 completed", || {
            outcomes(&mgr, id).get(1) == Some(&Some(AttemptOutcome::Completed))
                && status(&mgr, id) == TaskStatus::Pending
        });
        clock.advance(10 * SEC);
        assert_eq!(started.recv_timeout(PATIENCE).unwrap(), 3);
        assert_eq!(mgr.stop(Duration::ZERO).unwrap().interrupted, [id]);
        release.send(()).unwrap();
    }
    let mgr = build_unlocked(b()).unwrap();
    let t = mgr.get_task(id).unwrap();
    assert_eq!(t.status, TaskStatus::Pending, "quarantined: {:?}", t.error);
    assert_eq!(
        outcomes(&mgr, id),
        [
            Some(AttemptOutcome::Interrupted),
            Some(AttemptOutcome::Completed),
            Some(AttemptOutcome::Interrupted)
        ]
    );
}

/// SPEC §12 "more than N times in a row": a parent's attempt that ends by
/// spawning its children (outcome `suspended`) is a normal end too. With
/// `quarantine_after(1)`: stage 0 interrupted, stage 0 spawns, stage 1
/// interrupted: not quarantined, and it then finishes.
#[test]
fn s12_the_crash_count_resets_after_a_parent_suspends_for_its_children() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let (c, started, release) = ctl();
    let reg = |mgr: &TaskManager| {
        mgr.register("leaf", |ctx| Ok(ctx.payload().clone().into()))
            .unwrap();
        let c = c.clone();
        mgr.register("parent", move |ctx| {
            let a = ctx.attempt();
            let _ = c.0.lock().unwrap().send(a);
            if a == 2 {
                return Ok(Outcome::spawn(vec![ChildSpec::new("leaf", json!(7))]));
            }
            if a < 4 {
                let _ = c.1.lock().unwrap().recv();
            }
            Ok(json!({"stage": ctx.stage(), "seen": ctx.result().cloned()}).into())
        })
        .unwrap();
    };
    let b = || builder(dir.path(), &clock).quarantine_after(1);
    let id = {
        let mgr = build_unlocked(b()).unwrap();
        reg(&mgr);
        let id = mgr.submit("parent", json!(null)).unwrap();
        mgr.start().unwrap();
        assert_eq!(started.recv_timeout(PATIENCE).unwrap(), 1);
        assert_eq!(mgr.stop(Duration::ZERO).unwrap().interrupted, [id]);
        release.send(()).unwrap();
        id
    };
    {
        let mgr = build_unlocked(b()).unwrap();
        reg(&mgr);
        mgr.start().unwrap();
        assert_eq!(started.recv_timeout(PATIENCE).unwrap(), 2);
        assert_eq!(started.recv_timeout(PATIENCE).unwrap(), 3);
        assert_eq!(mgr.stop(Duration::ZERO).unwrap().interrupted, [id]);
        release.send(()).unwrap();
    }
    let mgr = build_unlocked(b()).unwrap();
    let t = mgr.get_task(id).unwrap();
    assert_eq!(t.status, TaskStatus::Pending, "quarantined: {:?}", t.error);
    assert_eq!(
        outcomes(&mgr, id),
        [
            Some(AttemptOutcome::Interrupted),
            Some(AttemptOutcome::Suspended),
            Some(AttemptOutcome::Interrupted)
        ]
    );
    reg(&mgr);
    mgr.start().unwrap();
    assert_eq!(started.recv_timeout(PATIENCE).unwrap(), 4);
    let t = mgr.wait(id, PATIENCE).unwrap();
    assert_eq!(t.status, TaskStatus::Completed);
    assert_eq!(common::children_of(&mgr, id).len(), 1, "spawned twice");
}

/// SPEC §12 "A task interrupted ... more than N times in a row is quarantined
/// (`permanently_failed`)" with §5 "`fail_parent` (an async parent becomes
/// `permanently_failed`)": a quarantined child whose failure policy is
/// `fail_parent` fails its parent for good, like any other final failure.
#[test]
fn s12_a_quarantined_fail_parent_child_fails_its_parent() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let (c, started, release) = ctl();
    let reg = |mgr: &TaskManager| {
        let c = c.clone();
        mgr.register("slow", move |ctx| {
            let _ = c.0.lock().unwrap().send(ctx.attempt());
            let _ = c.1.lock().unwrap().recv();
            Ok(json!("late").into())
        })
        .unwrap();
        mgr.register("fp", |ctx| {
            if ctx.stage() == 0 {
                Ok(Outcome::spawn(vec![
                    ChildSpec::new("slow", json!(1)).fail_parent()
                ]))
            } else {
                Ok(json!({"seen": ctx.result().cloned()}).into())
            }
        })
        .unwrap();
    };
    let b = || builder(dir.path(), &clock).quarantine_after(1);
    let mut parent = None;
    for attempt in 1..=2 {
        let mgr = build_unlocked(b()).unwrap();
        reg(&mgr);
        let p = *parent.get_or_insert_with(|| mgr.submit("fp", json!(null)).unwrap());
        mgr.start().unwrap();
        assert_eq!(started.recv_timeout(PATIENCE).unwrap(), attempt);
        assert_eq!(mgr.stop(Duration::ZERO).unwrap().interrupted.len(), 1);
        release.send(()).unwrap();
        let _ = p;
    }
    let parent = parent.unwrap();
    let mgr = build_unlocked(b()).unwrap();
    let kid = common::children_of(&mgr, parent)[0].clone();
    assert_eq!(kid.status, TaskStatus::PermanentlyFailed);
    assert!(kid.error.unwrap().contains("quarantined"));
    reg(&mgr);
    mgr.start().unwrap();
    let t = mgr.wait(parent, PATIENCE).unwrap();
    assert_eq!(
        t.status,
        TaskStatus::PermanentlyFailed,
        "the parent went on: {:?}",
        t.result
    );
}

/// SPEC §12 "Nothing acknowledged is lost", DESIGN "`Os` (in the page cache:
/// survives a process crash)": every submission acknowledged under
/// `Durability::Os` before a SIGKILL (which comes while submissions go on) is
/// there after the reopen, with its payload.
#[test]
fn s12_submissions_acknowledged_under_os_durability_survive_a_kill() {
    let dir = tempfile::tempdir().unwrap();
    let child = Child::spawn("os", dir.path());
    let acked: Vec<TaskId> = (0..200).map(|_| child.id("acked")).collect();
    child.kill();
    let clock = ManualClock::new(T0);
    let mgr = build_unlocked(builder(dir.path(), &clock).durability(Durability::Os)).unwrap();
    for (n, id) in acked.iter().enumerate() {
        let t = mgr
            .get_task(*id)
            .unwrap_or_else(|| panic!("acknowledged task {id} (#{n}) lost"));
        assert_eq!(t.payload, json!(n));
        assert_eq!(t.status, TaskStatus::Pending);
    }
    assert!(mgr.list_tasks(&TaskFilter::all()).len() >= acked.len());
}

// ---------------------------------------------------------------------------
// §13: lifecycle
// ---------------------------------------------------------------------------

/// SPEC §13: `stop(deadline)` "records what did not finish as interrupted" and
/// only that: sync and async handlers past the deadline are reported and
/// recorded (so the reopen has nothing left to recover); suspended, retrying,
/// delayed and cron tasks are not touched.
#[test]
fn s13_stop_records_only_unfinished_handlers_and_the_reopen_recovers_nothing_more() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let gate = Gate::new();
    let (mut interrupted, waiting) = {
        let mgr = build_unlocked(builder(dir.path(), &clock).max_concurrent_tasks(4)).unwrap();
        let g = gate.clone();
        mgr.register("sync", move |_| {
            g.wait();
            Ok(json!("late").into())
        })
        .unwrap();
        mgr.register_async("async", |_ctx| async {
            std::future::pending::<()>().await;
            Ok(json!("never").into())
        })
        .unwrap();
        mgr.register("hold", |_| Ok(Outcome::suspend("wait for a human")))
            .unwrap();
        let opts = HandlerOptions::new()
            .max_retries(3)
            .retry_interval(30 * SEC);
        mgr.register_with("flaky", opts, |_| Err("no".into()))
            .unwrap();
        counting(&mgr, "later");
        let s = mgr.submit("sync", json!(null)).unwrap();
        let a = mgr.submit("async", json!(null)).unwrap();
        let hold = mgr.submit("hold", json!(null)).unwrap();
        let flaky = mgr.submit("flaky", json!(null)).unwrap();
        let later = mgr
            .submit_with("later", json!(null), SubmitOptions::new().delay(60 * SEC))
            .unwrap();
        let cron = mgr
            .submit_with(
                "later",
                json!(null),
                SubmitOptions::new().cron("*/10 * * * * *"),
            )
            .unwrap();
        mgr.start().unwrap();
        eventually("two run, the others wait", || {
            status(&mgr, s) == TaskStatus::Running
                && status(&mgr, a) == TaskStatus::Running
                && status(&mgr, hold) == TaskStatus::Suspended
                && status(&mgr, flaky) == TaskStatus::Failed
        });
        let report = mgr.stop(Duration::ZERO).unwrap();
        for id in [s, a] {
            assert_eq!(status(&mgr, id), TaskStatus::Pending);
        }
        (report.interrupted, vec![hold, flaky, later, cron])
    };
    gate.open();
    interrupted.sort();
    assert_eq!(interrupted.len(), 2, "{interrupted:?}");
    let mgr = open(dir.path(), &clock);
    assert_eq!(
        mgr.recovery_stats().recovered,
        0,
        "stop left a task running"
    );
    for &id in &interrupted {
        assert_eq!(status(&mgr, id), TaskStatus::Pending);
        assert_eq!(outcomes(&mgr, id), [Some(AttemptOutcome::Interrupted)]);
        let err = mgr.attempts(id).unwrap()[0].error.clone().unwrap();
        assert!(err.contains("stopped"), "{err}");
        assert_eq!(count_events(&mgr, id, EventType::Recovered), 1);
    }
    for &id in &waiting {
        assert_eq!(count_events(&mgr, id, EventType::Recovered), 0, "task {id}");
        assert!(!outcomes(&mgr, id).contains(&Some(AttemptOutcome::Interrupted)));
    }
    assert_eq!(status(&mgr, waiting[0]), TaskStatus::Suspended);
    assert_eq!(status(&mgr, waiting[1]), TaskStatus::Failed);
    assert_eq!(mgr.get_task(waiting[2]).unwrap().next_run_time, T0 + 60_000);
    assert_eq!(mgr.get_task(waiting[3]).unwrap().next_run_time, T0 + 10_000);
}

/// SPEC §13: after `stop` the manager refuses new work with a typed error whose
/// message says what to do; `stop` again is harmless and reports nothing.
#[test]
fn s13_calls_after_stop_fail_with_an_error_that_says_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let mgr = open(dir.path(), &clock);
    counting(&mgr, "h");
    mgr.start().unwrap();
    mgr.start().unwrap();
    let id = mgr.submit("h", json!(1)).unwrap();
    mgr.wait(id, PATIENCE).unwrap();
    assert!(mgr.stop(PATIENCE).unwrap().interrupted.is_empty());
    let errors = [
        mgr.submit("h", json!(2)).unwrap_err(),
        mgr.submit_batch(vec![("h".to_owned(), json!(3), SubmitOptions::new())])
            .unwrap_err(),
        mgr.start().unwrap_err(),
    ];
    for e in errors {
        assert!(matches!(e, Error::Stopped), "{e:?}");
        let text = e.to_string();
        assert!(
            text.contains("stopped") && text.contains("new"),
            "the message should say the manager is stopped and to build a new one: {text}"
        );
    }
    assert!(mgr.stop(Duration::ZERO).unwrap().interrupted.is_empty());
    drop(mgr);
    let again = open(dir.path(), &clock);
    assert_eq!(again.list_tasks(&TaskFilter::all()).len(), 1);
}

/// SPEC §13: a second manager on a directory already open in this process is
/// refused with a typed error that names the directory and says what to do,
/// while the first manager is running, and is allowed once it is dropped.
#[test]
fn s13_a_second_manager_on_an_open_directory_in_this_process_is_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let first = open(dir.path(), &clock);
    counting(&first, "h");
    first.start().unwrap();
    let id = first.submit("h", json!(1)).unwrap();
    let err = builder(dir.path(), &clock).build().unwrap_err();
    assert!(
        matches!(err, Error::Log(fibflow::log::LogError::Locked { .. })),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(text.contains("locked"), "{text}");
    assert!(
        text.contains(&dir.path().display().to_string()),
        "names the directory: {text}"
    );
    assert!(text.contains("close"), "says what to do: {text}");
    assert_eq!(
        first.wait(id, PATIENCE).unwrap().status,
        TaskStatus::Completed
    );
    first.stop(PATIENCE).unwrap();
    drop(first);
    let second = open(dir.path(), &clock);
    assert_eq!(status(&second, id), TaskStatus::Completed);
}

/// SPEC §13: "Records carry their time; replay never reads the clock." The
/// same directory reopened with a clock ten days before the records were
/// written, and with one a little later (before any timer is due, so that the
/// reopen has nothing to do), shows exactly the same tasks, events and
/// attempts.
#[test]
fn s13_replay_never_reads_the_clock() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    type State = Vec<(fibflow::Task, Vec<fibflow::Event>, Vec<fibflow::Attempt>)>;
    let state = |mgr: &TaskManager| -> State {
        mgr.list_tasks(&TaskFilter::all())
            .into_iter()
            .map(|t| {
                let id = t.id;
                (t, mgr.events(id).unwrap(), mgr.attempts(id).unwrap())
            })
            .collect()
    };
    let before = {
        let mgr = open(dir.path(), &clock);
        counting(&mgr, "ok");
        let opts = HandlerOptions::new()
            .max_retries(3)
            .retry_interval(30 * SEC);
        mgr.register_with("flaky", opts, |_| Err("no".into()))
            .unwrap();
        mgr.register("hold", |_| Ok(Outcome::suspend("human")))
            .unwrap();
        mgr.start().unwrap();
        let done = mgr.submit("ok", json!(1)).unwrap();
        mgr.wait(done, PATIENCE).unwrap();
        clock.advance(5 * SEC);
        let flaky = mgr.submit("flaky", json!(2)).unwrap();
        let hold = mgr.submit("hold", json!(3)).unwrap();
        mgr.submit_with("ok", json!(4), SubmitOptions::new().delay(60 * SEC))
            .unwrap();
        eventually("settled", || {
            status(&mgr, flaky) == TaskStatus::Failed && status(&mgr, hold) == TaskStatus::Suspended
        });
        mgr.stop(PATIENCE).unwrap();
        state(&mgr)
    };
    assert_eq!(before.len(), 4);
    for at in [T0 - 10 * 86_400_000, T0 + 20_000] {
        let other = ManualClock::new(at);
        let mgr = open(dir.path(), &other);
        assert_eq!(state(&mgr), before, "reopened with the clock at {at}");
    }
}
