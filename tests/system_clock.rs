//! The manager on the default system clock (no `.clock(...)`): every other suite
//! drives time by hand, so these black-box tests check that delays, `run_at`,
//! retries and backoff strategies, total and heartbeat timeouts, cron rounds with
//! seconds, automatic retention and compaction, `stop`, `wait`, pauses, workflows
//! and suspension behave with real time passing.
//!
//! Durations are short (tens to hundreds of milliseconds). Tests wait on
//! conditions with generous deadlines, never with fixed sleeps; time assertions are
//! lower bounds ("not before"), taken from the task's own millisecond records
//! (`start_time`, attempts), which is what SPEC §1 promises ("times have at least
//! millisecond precision"), or from the handler's own clock readings: a task
//! never starts before the time asked for, not even by a fraction of a
//! millisecond (see `sub_millisecond`).

mod common;

use common::{eventually, Gate, PATIENCE};
use fibflow::{
    Attempt, AttemptOutcome, Backoff, ChildSpec, Error, EventType, HandlerOptions, Interrupted,
    Outcome, Pool, RetentionPolicy, RetryStrategy, SubmitOptions, TaskContext, TaskFilter, TaskId,
    TaskManager, TaskStatus,
};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Milliseconds since the epoch, as the system clock gives them.
fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

/// An in-memory manager on the system clock.
fn memory(workers: usize) -> TaskManager {
    TaskManager::builder()
        .memory()
        .max_concurrent_tasks(workers)
        .build()
        .unwrap()
}

/// A 2-worker memory manager with handler "gated": it returns "done" once the
/// returned gate opens.
fn gated_manager() -> (TaskManager, Arc<Gate>) {
    let mgr = memory(2);
    let gate = Gate::new();
    let g = gate.clone();
    mgr.register("gated", move |_| {
        g.wait();
        Ok(json!("done").into())
    })
    .unwrap();
    (mgr, gate)
}

/// A fresh directory under the system temp dir, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let path = std::env::temp_dir().join(format!(
            "fibflow-system-clock-{name}-{}-{nanos}",
            std::process::id()
        ));
        assert!(!path.exists(), "{} exists already", path.display());
        TempDir(path)
    }
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn task(mgr: &TaskManager, id: TaskId) -> fibflow::Task {
    mgr.get_task(id).unwrap()
}

fn attempts(mgr: &TaskManager, id: TaskId) -> Vec<Attempt> {
    let mut v = mgr.attempts(id).unwrap();
    v.sort_by_key(|a| a.number);
    v
}

/// Time between each closed attempt's end and the next attempt's start, in ms.
fn gaps(attempts: &[Attempt]) -> Vec<u64> {
    attempts
        .windows(2)
        .map(|w| {
            let ended = w[0].ended_at.expect("an earlier attempt is closed");
            assert!(
                w[1].started_at >= ended,
                "attempt {} started before attempt {} ended: {attempts:?}",
                w[1].number,
                w[0].number
            );
            w[1].started_at - ended
        })
        .collect()
}

fn count_events(mgr: &TaskManager, id: TaskId, ty: EventType) -> usize {
    mgr.events(id)
        .unwrap()
        .iter()
        .filter(|e| e.event_type == ty)
        .count()
}

/// Spins (1 ms parks) until the attempt's cooperative check fails; returns why.
fn until_interrupted(ctx: &TaskContext) -> Interrupted {
    loop {
        if let Err(why) = ctx.check() {
            return why;
        }
        std::thread::park_timeout(Duration::from_millis(1));
    }
}

// ---------------------------------------------------------------------------
// Delays and run_at
// ---------------------------------------------------------------------------

/// A delayed task starts no earlier than its delay after submission, and does run.
#[test]
fn delayed_tasks_start_no_earlier_than_their_delay() {
    let mgr = memory(4);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    mgr.register("rec", move |ctx| {
        s.lock().unwrap().push((ctx.id(), Instant::now()));
        Ok(json!(ctx.payload().clone()).into())
    })
    .unwrap();
    mgr.start().unwrap();
    let mut submitted = Vec::new();
    for delay_ms in [250, 150, 60, 0] {
        let delay = Duration::from_millis(delay_ms);
        let before = Instant::now();
        let id = mgr
            .submit_with("rec", json!(delay_ms), SubmitOptions::new().delay(delay))
            .unwrap();
        // Read after `submit` returns: it reads the clock twice (creation,
        // then the due time), and a thread preempted in between sees them apart.
        submitted.push((id, delay, before, now_ms()));
    }
    for &(id, delay, before, returned_ms) in &submitted {
        let t = mgr.wait(id, PATIENCE).unwrap();
        assert_eq!(t.status, TaskStatus::Completed);
        // Due at the delay after submission, rounded up to the millisecond.
        let due_after = t.next_run_time - t.created_at;
        assert!(due_after >= ms(delay), "{due_after}");
        assert!(
            t.next_run_time <= returned_ms + 1 + ms(delay),
            "due {} ms after submit returned, delay {delay:?}",
            t.next_run_time.saturating_sub(returned_ms)
        );
        let started = t.start_time.unwrap();
        assert!(
            started - t.created_at >= ms(delay),
            "task {id} with a delay of {delay:?} started {} ms after submission",
            started - t.created_at
        );
        let ran_at = seen
            .lock()
            .unwrap()
            .iter()
            .find(|(i, _)| *i == id)
            .unwrap()
            .1;
        assert!(
            ran_at - before >= delay,
            "handler of task {id} ran {:?} after submit, asked {delay:?}",
            ran_at - before
        );
        assert_eq!(
            common::event_names(&mgr, id),
            [
                "task_created",
                "task_claimed",
                "task_started",
                "task_completed"
            ]
        );
    }
    mgr.stop(PATIENCE).unwrap();
}

/// A delay given before `start` counts from submission; a delayed task whose time
/// passed before `start` runs right after `start`.
#[test]
fn delays_submitted_before_start_count_from_submission() {
    let mgr = memory(2);
    mgr.register("ok", |_| Ok(json!("ok").into())).unwrap();
    let early = mgr
        .submit_with(
            "ok",
            json!(1),
            SubmitOptions::new().delay(Duration::from_millis(40)),
        )
        .unwrap();
    eventually(
        "the early task is due but the manager is not started",
        || mgr.waiting_reason(early).unwrap().as_deref() == Some("the manager is not started"),
    );
    let late = mgr
        .submit_with(
            "ok",
            json!(2),
            SubmitOptions::new().delay(Duration::from_millis(200)),
        )
        .unwrap();
    let started_at = now_ms();
    mgr.start().unwrap();
    let e = mgr.wait(early, PATIENCE).unwrap();
    assert_eq!(e.status, TaskStatus::Completed);
    assert!(e.start_time.unwrap() >= started_at);
    let l = mgr.wait(late, PATIENCE).unwrap();
    assert_eq!(l.status, TaskStatus::Completed);
    assert!(
        l.start_time.unwrap() - l.created_at >= 200,
        "started {} ms after submission",
        l.start_time.unwrap() - l.created_at
    );
    mgr.stop(PATIENCE).unwrap();
}

/// `run_at` (a whole millisecond here: see `sub_millisecond` for fractions) is a
/// lower bound on the start; a time in the past runs at once.
#[test]
fn run_at_tasks_start_no_earlier_than_their_time() {
    let mgr = memory(2);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    mgr.register("rec", move |ctx| {
        s.lock().unwrap().push((ctx.id(), SystemTime::now()));
        Ok(json!(null).into())
    })
    .unwrap();
    mgr.start().unwrap();
    let at_ms = now_ms() + 200;
    let at = UNIX_EPOCH + Duration::from_millis(at_ms);
    let future = mgr
        .submit_with("rec", json!(1), SubmitOptions::new().run_at(at))
        .unwrap();
    let past_ms = now_ms() - 10_000;
    let past = mgr
        .submit_with(
            "rec",
            json!(2),
            SubmitOptions::new().run_at(UNIX_EPOCH + Duration::from_millis(past_ms)),
        )
        .unwrap();
    let p = mgr.wait(past, PATIENCE).unwrap();
    assert_eq!(p.status, TaskStatus::Completed);
    assert_eq!(p.next_run_time, past_ms);
    let f = mgr.wait(future, PATIENCE).unwrap();
    assert_eq!(f.status, TaskStatus::Completed);
    assert_eq!(f.next_run_time, at_ms);
    assert!(f.start_time.unwrap() >= at_ms);
    let ran = seen
        .lock()
        .unwrap()
        .iter()
        .find(|(i, _)| *i == future)
        .unwrap()
        .1;
    assert!(
        ran >= at,
        "ran {:?} before its run_at",
        at.duration_since(ran).unwrap_or_default()
    );
    mgr.stop(PATIENCE).unwrap();
}

// ---------------------------------------------------------------------------
// Retries and backoff
// ---------------------------------------------------------------------------

/// A handler that always fails, and the handler-side instants of each attempt.
type Marks = Arc<Mutex<Vec<(Instant, Instant)>>>;

fn always_failing(mgr: &TaskManager, name: &str, options: HandlerOptions) -> Marks {
    let marks: Marks = Arc::default();
    let m = marks.clone();
    mgr.register_with(name, options, move |ctx| {
        let start = Instant::now();
        let attempt = ctx.attempt();
        m.lock().unwrap().push((start, Instant::now()));
        Err(format!("attempt {attempt} fails").into())
    })
    .unwrap();
    marks
}

/// Runs `name` until it fails for good; checks it made `executions` attempts
/// spaced at least `floors` apart (ms, by the task's records and, within the
/// rounding allowance, by the handler's own clock).
fn check_spacing(mgr: &TaskManager, id: TaskId, marks: &Marks, executions: usize, floors: &[u64]) {
    let t = mgr.wait(id, PATIENCE).unwrap();
    assert_eq!(t.status, TaskStatus::PermanentlyFailed, "{t:?}");
    assert_eq!(
        t.error.as_deref(),
        Some(format!("attempt {executions} fails").as_str())
    );
    let att = attempts(mgr, id);
    assert_eq!(att.len(), executions);
    assert!(att
        .iter()
        .all(|a| a.outcome == Some(AttemptOutcome::Failed)));
    let g = gaps(&att);
    for (i, (gap, floor)) in g.iter().zip(floors).enumerate() {
        assert!(
            gap >= floor,
            "retry {i} began {gap} ms after the failure, asked at least {floor} ms (all gaps: {g:?})"
        );
    }
    let marks = marks.lock().unwrap();
    assert_eq!(marks.len(), executions);
    for (i, (w, floor)) in marks.windows(2).zip(floors).enumerate() {
        let gap = w[1].0 - w[0].1;
        assert!(
            gap >= Duration::from_millis(*floor),
            "retry {i} ran {gap:?} after the failure returned, asked at least {floor} ms"
        );
    }
    assert_eq!(
        count_events(mgr, id, EventType::RetryScheduled),
        executions - 1
    );
    assert_eq!(
        count_events(mgr, id, EventType::RetryStarted),
        executions - 1
    );
    // SPEC §4: exhaustion does not wait for the interval.
    assert_eq!(Some(t.last_active_time), att.last().unwrap().ended_at);
}

/// SPEC §4: a fixed `retry_interval` (given at submission) spaces every retry.
#[test]
fn retry_interval_spaces_every_retry() {
    let mgr = memory(2);
    let marks = always_failing(&mgr, "flaky", HandlerOptions::new());
    mgr.start().unwrap();
    let id = mgr
        .submit_with(
            "flaky",
            json!(null),
            SubmitOptions::new()
                .max_retries(3)
                .retry_interval(Duration::from_millis(120)),
        )
        .unwrap();
    check_spacing(&mgr, id, &marks, 3, &[120, 120]);
    mgr.stop(PATIENCE).unwrap();
}

/// A handler-level `retry_interval`, and a task that succeeds on a later retry.
#[test]
fn a_task_that_succeeds_on_a_later_retry_completes_after_the_intervals() {
    let mgr = memory(2);
    let opts = HandlerOptions::new()
        .max_retries(4)
        .retry_interval(Duration::from_millis(80));
    mgr.register_with("third_time", opts, |ctx| {
        if ctx.retry_count() < 2 {
            Err("not yet".into())
        } else {
            Ok(json!({"retries": ctx.retry_count()}).into())
        }
    })
    .unwrap();
    mgr.start().unwrap();
    let id = mgr.submit("third_time", json!(null)).unwrap();
    let t = mgr.wait(id, PATIENCE).unwrap();
    assert_eq!(t.status, TaskStatus::Completed);
    assert_eq!(t.result, Some(json!({"retries": 2})));
    let att = attempts(&mgr, id);
    assert_eq!(att.len(), 3);
    for gap in gaps(&att) {
        assert!(gap >= 80, "a retry came {gap} ms after the failure");
    }
    mgr.stop(PATIENCE).unwrap();
}

fn strategy(backoff: Backoff, base_ms: u64, cap_ms: Option<u64>, jitter: f64) -> RetryStrategy {
    RetryStrategy {
        backoff,
        base: Duration::from_millis(base_ms),
        cap: cap_ms.map(Duration::from_millis),
        jitter,
    }
}

/// A handler `name` with retry strategy `s` that always fails runs
/// `executions` times, its retries spaced at least `floors` ms apart.
fn strategy_spaces_retries(name: &str, executions: u32, s: RetryStrategy, floors: &[u64]) {
    let mgr = memory(2);
    let opts = HandlerOptions::new()
        .max_retries(executions)
        .retry_interval(Duration::ZERO)
        .retry(s);
    let marks = always_failing(&mgr, name, opts);
    mgr.start().unwrap();
    let id = mgr.submit(name, json!(null)).unwrap();
    check_spacing(&mgr, id, &marks, executions as usize, floors);
    mgr.stop(PATIENCE).unwrap();
}

/// `RetryStrategy::fixed` on the handler (it overrides the task's interval).
#[test]
fn fixed_strategy_spaces_retries() {
    let fixed = RetryStrategy::fixed(Duration::from_millis(70));
    strategy_spaces_retries("fixed", 4, fixed, &[70, 70, 70]);
}

/// Linear backoff: base × (retry_count + 1).
#[test]
fn linear_strategy_grows_the_spacing() {
    let linear = strategy(Backoff::Linear, 40, None, 0.0);
    strategy_spaces_retries("linear", 4, linear, &[40, 80, 120]);
}

/// Exponential backoff: base × 2^retry_count, bounded by its cap.
#[test]
fn exponential_strategy_doubles_the_spacing_up_to_its_cap() {
    let exp = strategy(Backoff::Exponential, 30, Some(100), 0.0);
    strategy_spaces_retries("exp", 5, exp, &[30, 60, 100, 100]);
}

/// The cap really bounds the delay: without it these retries would take
/// 30 s + 60 s, longer than the test's patience.
#[test]
fn a_cap_bounds_a_huge_exponential_base() {
    let capped = strategy(Backoff::Exponential, 30_000, Some(90), 0.0);
    strategy_spaces_retries("capped", 3, capped, &[90, 90]);
}

/// Jitter subtracts at most its fraction of the (capped) delay: 60, 120, 200
/// (capped from 240), each less at most half.
#[test]
fn jittered_exponential_strategy_stays_above_its_jitter_floor() {
    let jitter = strategy(Backoff::Exponential, 60, Some(200), 0.5);
    strategy_spaces_retries("jitter", 4, jitter, &[30, 60, 100]);
}

/// A pool's strategy spaces the retries of tasks it runs.
#[test]
fn pool_strategy_spaces_retries_of_its_tasks() {
    let mgr = TaskManager::builder()
        .memory()
        .max_concurrent_tasks(2)
        .pool(
            Pool::new("slow")
                .tags(["slowpool"])
                .concurrency(1)
                .retry_strategy(strategy(Backoff::Linear, 50, None, 0.0)),
        )
        .build()
        .unwrap();
    let opts = HandlerOptions::new().max_retries(3).requires(["slowpool"]);
    let marks = always_failing(&mgr, "pooled", opts);
    mgr.start().unwrap();
    let id = mgr.submit("pooled", json!(null)).unwrap();
    check_spacing(&mgr, id, &marks, 3, &[50, 100]);
    assert!(attempts(&mgr, id)
        .iter()
        .all(|a| a.worker.starts_with("slow-")));
    mgr.stop(PATIENCE).unwrap();
}

// ---------------------------------------------------------------------------
// Timeouts
// ---------------------------------------------------------------------------

fn timed_out_event(mgr: &TaskManager, id: TaskId) -> Value {
    let ev = mgr.events(id).unwrap();
    let timed: Vec<_> = ev
        .iter()
        .filter(|e| e.event_type == EventType::TimedOut)
        .collect();
    assert!(!timed.is_empty(), "no task_timed_out event: {ev:?}");
    timed[0].metadata.clone()
}

/// SPEC §4: the total timeout (`timeout` at submission) fails an attempt no
/// earlier than `start_time + timeout`, and a sync handler's cooperative check
/// then returns the timeout error.
#[test]
fn sync_handler_sees_the_total_timeout_through_its_check() {
    let mgr = memory(2);
    let saw = Arc::new(Mutex::new(None));
    let s = saw.clone();
    mgr.register("slow", move |ctx| {
        let why = until_interrupted(ctx);
        *s.lock().unwrap() = Some(why.clone());
        Err(why.into())
    })
    .unwrap();
    mgr.start().unwrap();
    let id = mgr
        .submit_with(
            "slow",
            json!(null),
            SubmitOptions::new()
                .timeout(Duration::from_millis(150))
                .max_retries(1),
        )
        .unwrap();
    let t = mgr.wait(id, PATIENCE).unwrap();
    assert_eq!(t.status, TaskStatus::PermanentlyFailed);
    assert_eq!(
        t.error.as_deref(),
        Some("Task exceeded total timeout limit")
    );
    let att = attempts(&mgr, id);
    assert_eq!(att.len(), 1);
    assert_eq!(att[0].outcome, Some(AttemptOutcome::Timeout));
    assert!(att[0].timed_out);
    let lasted = att[0].duration_ms().unwrap();
    assert!(lasted >= 150, "timed out after {lasted} ms, timeout 150 ms");
    assert_eq!(timed_out_event(&mgr, id)["timeout_type"], "total");
    eventually("the handler saw its timeout", || {
        saw.lock().unwrap().is_some()
    });
    assert_eq!(*saw.lock().unwrap(), Some(Interrupted::Timeout));
    mgr.stop(PATIENCE).unwrap();
}

/// Drops count the futures the manager cancelled.
struct CountDrop(Arc<AtomicUsize>);

impl Drop for CountDrop {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

/// SPEC §4: an async handler is cancelled at its await by the total timeout
/// (handler option), and the retry after it is spaced by its interval.
#[test]
fn async_handler_is_cancelled_at_its_await_by_the_total_timeout() {
    let mgr = memory(2);
    let dropped = Arc::new(AtomicUsize::new(0));
    let d = dropped.clone();
    let opts = HandlerOptions::new()
        .timeout(Duration::from_millis(120))
        .max_retries(2)
        .retry_interval(Duration::from_millis(60));
    mgr.register_async_with("hang", opts, move |_ctx| {
        let guard = CountDrop(d.clone());
        async move {
            std::future::pending::<()>().await;
            drop(guard);
            Ok(json!("never").into())
        }
    })
    .unwrap();
    mgr.start().unwrap();
    let id = mgr.submit("hang", json!(null)).unwrap();
    let t = mgr.wait(id, PATIENCE).unwrap();
    assert_eq!(t.status, TaskStatus::PermanentlyFailed);
    assert_eq!(
        t.error.as_deref(),
        Some("Task exceeded total timeout limit")
    );
    let att = attempts(&mgr, id);
    assert_eq!(att.len(), 2);
    for a in &att {
        assert_eq!(a.outcome, Some(AttemptOutcome::Timeout));
        let lasted = a.duration_ms().unwrap();
        assert!(lasted >= 120, "attempt {} lasted {lasted} ms", a.number);
    }
    assert!(gaps(&att)[0] >= 60);
    assert_eq!(timed_out_event(&mgr, id)["timeout_type"], "total");
    eventually("both futures were dropped", || {
        dropped.load(Ordering::SeqCst) == 2
    });
    mgr.stop(PATIENCE).unwrap();
}

/// SPEC §4: no heartbeat within the window → `timeout` (type `heartbeat`), for a
/// sync handler (its check says so) and an async one (cancelled at its await).
#[test]
fn silent_handlers_time_out_after_their_heartbeat_window() {
    let mgr = memory(2);
    let saw = Arc::new(Mutex::new(None));
    let s = saw.clone();
    let window = Duration::from_millis(150);
    let opts = HandlerOptions::new()
        .heartbeat_window(window)
        .max_retries(1);
    mgr.register_with("silent", opts.clone(), move |ctx| {
        let why = until_interrupted(ctx);
        *s.lock().unwrap() = Some(why.clone());
        Err(why.into())
    })
    .unwrap();
    mgr.register_async_with("silent_async", opts, |_ctx| async move {
        std::future::pending::<()>().await;
        Ok(json!("never").into())
    })
    .unwrap();
    mgr.start().unwrap();
    let sync_id = mgr.submit("silent", json!(null)).unwrap();
    let async_id = mgr.submit("silent_async", json!(null)).unwrap();
    for id in [sync_id, async_id] {
        let t = mgr.wait(id, PATIENCE).unwrap();
        assert_eq!(t.status, TaskStatus::PermanentlyFailed, "{t:?}");
        assert_eq!(t.error.as_deref(), Some("Task heartbeat timed out"));
        let att = attempts(&mgr, id);
        assert_eq!(att.len(), 1);
        assert_eq!(att[0].outcome, Some(AttemptOutcome::Timeout));
        let lasted = att[0].duration_ms().unwrap();
        assert!(lasted >= ms(window), "timed out after {lasted} ms");
        assert_eq!(timed_out_event(&mgr, id)["timeout_type"], "heartbeat");
    }
    eventually("the sync handler saw its heartbeat timeout", || {
        saw.lock().unwrap().is_some()
    });
    assert_eq!(*saw.lock().unwrap(), Some(Interrupted::HeartbeatTimeout));
    mgr.stop(PATIENCE).unwrap();
}

/// Heartbeats keep a handler alive well past its window; once it goes silent it
/// times out no earlier than one window after its last heartbeat.
#[test]
fn heartbeats_keep_a_handler_alive_until_it_goes_silent() {
    let mgr = memory(2);
    let window = Duration::from_millis(500);
    let alive_for = Duration::from_millis(1_000);
    let last_beat = Arc::new(Mutex::new(None));
    let lb = last_beat.clone();
    let saw = Arc::new(Mutex::new(None));
    let s = saw.clone();
    let opts = HandlerOptions::new()
        .heartbeat_window(window)
        .max_retries(1);
    mgr.register_with("beating", opts, move |ctx| {
        let start = Instant::now();
        while start.elapsed() < alive_for {
            // Read before the heartbeat, so it is no later than the one recorded.
            *lb.lock().unwrap() = Some(now_ms());
            ctx.heartbeat();
            if let Err(why) = ctx.check() {
                *s.lock().unwrap() = Some(why.clone());
                return Err(why.into());
            }
            std::thread::park_timeout(Duration::from_millis(2));
        }
        let why = until_interrupted(ctx);
        *s.lock().unwrap() = Some(why.clone());
        Err(why.into())
    })
    .unwrap();
    mgr.start().unwrap();
    let id = mgr.submit("beating", json!(null)).unwrap();
    let t = mgr.wait(id, PATIENCE).unwrap();
    assert_eq!(t.error.as_deref(), Some("Task heartbeat timed out"));
    eventually("the handler returned", || saw.lock().unwrap().is_some());
    assert_eq!(*saw.lock().unwrap(), Some(Interrupted::HeartbeatTimeout));
    let att = attempts(&mgr, id);
    assert_eq!(att.len(), 1);
    let ended = att[0].ended_at.unwrap();
    let lasted = att[0].duration_ms().unwrap();
    assert!(
        lasted >= ms(alive_for),
        "timed out after {lasted} ms although it beat for {alive_for:?}"
    );
    let last = last_beat.lock().unwrap().unwrap();
    assert!(
        ended >= last + ms(window),
        "timed out {} ms after its last heartbeat, window {window:?}",
        ended - last
    );
    mgr.stop(PATIENCE).unwrap();
}

// ---------------------------------------------------------------------------
// Cron
// ---------------------------------------------------------------------------

/// SPEC §7: a cron task with a seconds field runs once per occurrence, first at
/// the next occurrence strictly after submission, and returns to `pending`
/// between rounds keeping its result.
#[test]
fn cron_with_seconds_runs_once_per_occurrence() {
    let mgr = memory(2);
    let rounds = Arc::new(Mutex::new(Vec::new()));
    let r = rounds.clone();
    mgr.register("tick", move |_| {
        let at = now_ms();
        r.lock().unwrap().push(at);
        Ok(json!({"at": at}).into())
    })
    .unwrap();
    mgr.start().unwrap();
    let id = mgr
        .submit_with(
            "tick",
            json!(null),
            SubmitOptions::new().cron("*/1 * * * * *"),
        )
        .unwrap();
    let first = task(&mgr, id);
    let created = first.created_at;
    if first.attempt == 0 {
        assert_eq!(first.next_run_time, (created / 1000 + 1) * 1000);
    }
    eventually("three rounds", || {
        attempts(&mgr, id)
            .iter()
            .filter(|a| a.outcome == Some(AttemptOutcome::Completed))
            .count()
            >= 3
    });
    let mut between = None;
    eventually("back to pending after a round", || {
        let t = task(&mgr, id);
        let pending = t.status == TaskStatus::Pending;
        between = pending.then_some(t);
        pending
    });
    let t = between.unwrap();
    assert_eq!(t.kind, fibflow::TaskKind::Cron);
    assert!(t.result.is_some(), "a cron round keeps its result");
    assert!(t.next_run_time > t.last_active_time);
    assert_eq!(t.next_run_time % 1000, 0);
    mgr.pause_task(id).unwrap();
    let att: Vec<_> = attempts(&mgr, id)
        .into_iter()
        .filter(|a| a.outcome == Some(AttemptOutcome::Completed))
        .collect();
    assert!(
        att[0].started_at >= (created / 1000 + 1) * 1000,
        "first round at {} for a task created at {created}",
        att[0].started_at
    );
    for w in att.windows(2) {
        assert!(
            w[1].started_at / 1000 > w[0].started_at / 1000,
            "two rounds in one second: {att:?}"
        );
    }
    let seen = rounds.lock().unwrap().clone();
    for w in seen.windows(2) {
        assert!(
            w[1] / 1000 > w[0] / 1000,
            "two rounds in one second: {seen:?}"
        );
    }
    assert_eq!(count_events(&mgr, id, EventType::Completed), 0);
    assert!(count_events(&mgr, id, EventType::StatusChanged) >= 3);
    mgr.stop(PATIENCE).unwrap();
}

/// SPEC §7: occurrences missed while the manager was not started run once at
/// start (no burst), then the schedule resumes at the next occurrence.
#[test]
fn cron_occurrences_missed_before_start_run_once_then_on_schedule() {
    let mgr = memory(2);
    mgr.register("tick", |_| Ok(json!("tick").into())).unwrap();
    let id = mgr
        .submit_with(
            "tick",
            json!(null),
            SubmitOptions::new().cron("*/1 * * * * *"),
        )
        .unwrap();
    let first_due = task(&mgr, id).next_run_time;
    // The condition is time itself: two occurrences pass while not started.
    eventually("two occurrences missed", || now_ms() > first_due + 1_000);
    let started = now_ms();
    mgr.start().unwrap();
    let done = || -> Vec<Attempt> {
        attempts(&mgr, id)
            .into_iter()
            .filter(|a| a.outcome == Some(AttemptOutcome::Completed))
            .collect()
    };
    eventually("two rounds after start", || done().len() >= 2);
    mgr.pause_task(id).unwrap();
    let att = done();
    assert!(att[0].started_at >= started);
    let next_occurrence = (att[0].ended_at.unwrap() / 1000 + 1) * 1000;
    assert!(
        att[1].started_at >= next_occurrence,
        "missed occurrences ran in a burst: {att:?}"
    );
    // One round for all the missed occurrences: the second is the next one.
    assert_eq!(att[0].number + 1, att[1].number);
    mgr.stop(PATIENCE).unwrap();
}

// ---------------------------------------------------------------------------
// Retention and compaction
// ---------------------------------------------------------------------------

/// SPEC §11 on an idle manager: automatic retention removes completed and
/// permanently failed tasks, none before `expire_after` since their last status
/// change, and never suspended, paused or pending ones.
#[test]
fn automatic_retention_removes_expired_tasks_from_an_idle_manager() {
    let expire = Duration::from_millis(300);
    let mgr = TaskManager::builder()
        .memory()
        .max_concurrent_tasks(2)
        .retention(RetentionPolicy::new(expire), Duration::from_millis(100))
        .build()
        .unwrap();
    mgr.register("ok", |_| Ok(json!("ok").into())).unwrap();
    mgr.register_with("bad", HandlerOptions::new().max_retries(1), |_| {
        Err("bad".into())
    })
    .unwrap();
    mgr.register("human", |_| Ok(Outcome::suspend("approval")))
        .unwrap();
    mgr.start().unwrap();
    let ok = mgr.submit("ok", json!(null)).unwrap();
    let bad = mgr.submit("bad", json!(null)).unwrap();
    let suspended = mgr.submit("human", json!(null)).unwrap();
    let paused = mgr
        .submit_with(
            "ok",
            json!(null),
            SubmitOptions::new().delay(Duration::from_secs(3600)),
        )
        .unwrap();
    mgr.pause_task(paused).unwrap();
    let pending = mgr
        .submit_with(
            "ok",
            json!(null),
            SubmitOptions::new().delay(Duration::from_secs(3600)),
        )
        .unwrap();
    let mut finished = Vec::new();
    for id in [ok, bad] {
        finished.push((id, mgr.wait(id, PATIENCE).unwrap().last_active_time));
    }
    eventually("suspended", || {
        task(&mgr, suspended).status == TaskStatus::Suspended
    });
    let mut gone_at = vec![None; finished.len()];
    eventually("retention removed the finished tasks", || {
        let now = now_ms();
        for (i, (id, _)) in finished.iter().enumerate() {
            if gone_at[i].is_none() && mgr.get_task(*id).is_none() {
                gone_at[i] = Some(now);
            }
        }
        gone_at.iter().all(Option::is_some)
    });
    for ((id, last_active), gone) in finished.iter().zip(&gone_at) {
        let gone = gone.unwrap();
        assert!(
            gone >= last_active + ms(expire),
            "task {id} was removed {} ms after it finished, expire_after {expire:?}",
            gone.saturating_sub(*last_active)
        );
        assert!(matches!(mgr.events(*id), Err(Error::NotFound(_))));
    }
    assert_eq!(task(&mgr, suspended).status, TaskStatus::Suspended);
    assert_eq!(task(&mgr, paused).status, TaskStatus::Paused);
    assert_eq!(task(&mgr, pending).status, TaskStatus::Pending);
    mgr.stop(PATIENCE).unwrap();
}

/// A backlog larger than one retention batch (100) is drained by the automatic
/// sweeps of an idle manager.
#[test]
fn automatic_retention_drains_a_backlog_larger_than_a_batch() {
    let mgr = TaskManager::builder()
        .memory()
        .max_concurrent_tasks(2)
        .retention(
            RetentionPolicy::new(Duration::from_millis(50)),
            Duration::from_millis(100),
        )
        .build()
        .unwrap();
    mgr.register("ok", |_| Ok(json!("ok").into())).unwrap();
    mgr.start().unwrap();
    let ids = mgr
        .submit_batch((0..250).map(|i| ("ok".to_owned(), json!(i), SubmitOptions::new())))
        .unwrap();
    for id in &ids {
        let t = mgr.wait(*id, PATIENCE);
        // Retention may already have removed an early one.
        assert!(
            matches!(&t, Ok(t) if t.status == TaskStatus::Completed)
                || matches!(t, Err(Error::NotFound(_))),
            "{t:?}"
        );
    }
    eventually("all 250 removed", || {
        mgr.list_tasks(&TaskFilter::all()).is_empty()
    });
    mgr.stop(PATIENCE).unwrap();
}

fn durable(dir: &Path) -> fibflow::Builder {
    TaskManager::builder()
        .dir(dir)
        .segment_size(4096)
        .max_concurrent_tasks(2)
}

/// SPEC §11/§13: with a small `compact_after_bytes`, an idle durable manager
/// takes a snapshot by itself, and reopening the directory from it keeps
/// every task.
#[test]
fn automatic_compaction_snapshots_a_durable_directory() {
    let dir = TempDir::new("compaction");
    let mgr = durable(dir.path())
        .compact_after_bytes(4096)
        .build()
        .unwrap();
    mgr.register("echo", |ctx| Ok(ctx.payload().clone().into()))
        .unwrap();
    mgr.start().unwrap();
    let pad = "p".repeat(200);
    let ids = mgr
        .submit_batch((0..40).map(|i| {
            (
                "echo".to_owned(),
                json!({"i": i, "pad": pad}),
                SubmitOptions::new(),
            )
        }))
        .unwrap();
    for id in &ids {
        assert_eq!(
            mgr.wait(*id, PATIENCE).unwrap().status,
            TaskStatus::Completed
        );
    }
    eventually("a snapshot taken without compact()", || {
        mgr.log_stats().unwrap().snapshot_lsn.is_some()
    });
    mgr.stop(PATIENCE).unwrap();
    drop(mgr);
    let has_snap = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .any(|e| e.path().extension().is_some_and(|x| x == "snap"));
    assert!(has_snap, "no snapshot file in {}", dir.path().display());
    let mgr = durable(dir.path()).build().unwrap();
    for (i, id) in ids.iter().enumerate() {
        let t = task(&mgr, *id);
        assert_eq!(t.status, TaskStatus::Completed);
        assert_eq!(t.result.unwrap()["i"], json!(i));
    }
    drop(mgr);
}

/// SPEC §11: "Deleted history really leaves the log": automatic retention and
/// automatic compaction on an idle durable manager, then a reopen sees nothing
/// and only the segment being written is left in the log.
#[test]
fn automatic_retention_and_compaction_remove_history_from_a_durable_directory() {
    let dir = TempDir::new("retention");
    let mgr = durable(dir.path())
        // Any growth: the last deletions may be only a few bytes.
        .compact_after_bytes(1)
        .retention(
            RetentionPolicy::new(Duration::from_millis(100)),
            Duration::from_millis(100),
        )
        .build()
        .unwrap();
    mgr.register("echo", |ctx| Ok(ctx.payload().clone().into()))
        .unwrap();
    mgr.start().unwrap();
    let pad = "p".repeat(200);
    let n = 60;
    let ids = mgr
        .submit_batch((0..n).map(|i| {
            (
                "echo".to_owned(),
                json!({"i": i, "pad": pad}),
                SubmitOptions::new(),
            )
        }))
        .unwrap();
    for id in &ids {
        let t = mgr.wait(*id, PATIENCE);
        assert!(
            matches!(&t, Ok(t) if t.status == TaskStatus::Completed)
                || matches!(t, Err(Error::NotFound(_))),
            "{t:?}"
        );
    }
    eventually("everything removed and compacted", || {
        let st = mgr.log_stats().unwrap();
        mgr.list_tasks(&TaskFilter::all()).is_empty()
            && st.snapshot_lsn.is_some()
            && st.snapshot_lsn >= st.last_lsn
    });
    mgr.stop(PATIENCE).unwrap();
    drop(mgr);
    let report = fibflow::log::verify(dir.path()).unwrap();
    assert!(report.problems.is_empty(), "{report:?}");
    // Only the segment being written (and the next one, prepared ahead)
    // survive a snapshot that covers it all, so far fewer records remain than
    // the 4 per task written (submit, claim, complete, delete).
    assert!(report.segments <= 2, "{report:?}");
    assert!(
        report.records < 4 * n,
        "{} records still in the log after deleting {n} tasks",
        report.records
    );
    let mgr = durable(dir.path()).build().unwrap();
    assert!(
        mgr.list_tasks(&TaskFilter::all()).is_empty(),
        "deleted history came back"
    );
    drop(mgr);
}

// ---------------------------------------------------------------------------
// stop, wait, pause
// ---------------------------------------------------------------------------

/// SPEC §13: `stop(deadline)` waits for a running handler up to the deadline,
/// then records it as interrupted (pending again); the handler's check says it
/// was stopped and its late result is discarded.
#[test]
fn stop_past_its_deadline_interrupts_a_running_handler() {
    let mgr = memory(2);
    let gate = Gate::new();
    let g = gate.clone();
    let saw = Arc::new(Mutex::new(None));
    let s = saw.clone();
    mgr.register("stuck", move |ctx| {
        let why = until_interrupted(ctx);
        *s.lock().unwrap() = Some(why);
        g.wait();
        Ok(json!("late").into())
    })
    .unwrap();
    mgr.start().unwrap();
    let id = mgr.submit("stuck", json!(null)).unwrap();
    eventually("running", || task(&mgr, id).status == TaskStatus::Running);
    let deadline = Duration::from_millis(250);
    let before = Instant::now();
    let report = mgr.stop(deadline).unwrap();
    assert!(
        before.elapsed() >= deadline,
        "stop returned after {:?}",
        before.elapsed()
    );
    assert_eq!(report.interrupted, vec![id]);
    let t = task(&mgr, id);
    assert_eq!(t.status, TaskStatus::Pending);
    let att = attempts(&mgr, id);
    assert_eq!(att.len(), 1);
    assert_eq!(att[0].outcome, Some(AttemptOutcome::Interrupted));
    assert!(att[0].duration_ms().unwrap() >= ms(deadline));
    eventually("the handler saw the stop", || saw.lock().unwrap().is_some());
    assert_eq!(*saw.lock().unwrap(), Some(Interrupted::Stopped));
    gate.open();
    eventually("the handler returned", || mgr.running() == 0);
    let t = task(&mgr, id);
    assert_eq!(t.status, TaskStatus::Pending);
    assert_eq!(t.result, None);
    assert_eq!(count_events(&mgr, id, EventType::Completed), 0);
}

/// `stop` with a long deadline returns as soon as the running handler finishes,
/// and records its outcome.
#[test]
fn stop_returns_once_running_handlers_finish_before_the_deadline() {
    let (mgr, gate) = gated_manager();
    mgr.start().unwrap();
    let id = mgr.submit("gated", json!(null)).unwrap();
    eventually("running", || task(&mgr, id).status == TaskStatus::Running);
    let before = Instant::now();
    let report = std::thread::scope(|s| {
        let stopper = s.spawn(|| mgr.stop(Duration::from_secs(120)));
        eventually("stop has begun", || {
            matches!(mgr.submit("unregistered", json!(null)), Err(Error::Stopped))
        });
        gate.open();
        stopper.join().unwrap().unwrap()
    });
    assert!(
        before.elapsed() < Duration::from_secs(60),
        "stop waited {:?} for a handler that had finished",
        before.elapsed()
    );
    assert!(report.interrupted.is_empty(), "{report:?}");
    let t = task(&mgr, id);
    assert_eq!(t.status, TaskStatus::Completed);
    assert_eq!(t.result, Some(json!("done")));
}

/// `wait` returns `WaitTimeout` no earlier than its deadline, then the result
/// once the task finishes; waiting on a delayed task returns after its delay.
#[test]
fn wait_honours_its_deadline_then_returns_the_result() {
    let (mgr, gate) = gated_manager();
    mgr.register("quick", |_| Ok(json!("quick").into()))
        .unwrap();
    mgr.start().unwrap();
    let id = mgr.submit("gated", json!(null)).unwrap();
    let limit = Duration::from_millis(200);
    let before = Instant::now();
    let r = mgr.wait(id, limit);
    let waited = before.elapsed();
    assert!(
        matches!(r, Err(Error::WaitTimeout { id: i, waited: w }) if i == id && w == limit),
        "{r:?}"
    );
    assert!(waited >= limit, "wait gave up after {waited:?}");
    gate.open();
    assert_eq!(mgr.wait(id, PATIENCE).unwrap().result, Some(json!("done")));
    let delay = Duration::from_millis(150);
    let before = Instant::now();
    let d = mgr
        .submit_with("quick", json!(null), SubmitOptions::new().delay(delay))
        .unwrap();
    let t = mgr.wait(d, PATIENCE).unwrap();
    assert_eq!(t.status, TaskStatus::Completed);
    assert!(before.elapsed() >= delay);
    mgr.stop(PATIENCE).unwrap();
}

/// SPEC §3: manager `pause()` gates claims (a due task and a delayed task that
/// falls due meanwhile both wait), submission still works, and `resume()` runs
/// them.
#[test]
fn manager_pause_holds_due_tasks_until_resume() {
    let mgr = memory(2);
    mgr.register("ok", |_| Ok(json!("ok").into())).unwrap();
    mgr.start().unwrap();
    mgr.pause();
    let now = mgr.submit("ok", json!(1)).unwrap();
    let delayed = mgr
        .submit_with(
            "ok",
            json!(2),
            SubmitOptions::new().delay(Duration::from_millis(100)),
        )
        .unwrap();
    let r = mgr.wait(delayed, Duration::from_millis(400));
    assert!(matches!(r, Err(Error::WaitTimeout { .. })), "{r:?}");
    for id in [now, delayed] {
        assert_eq!(
            mgr.waiting_reason(id).unwrap().as_deref(),
            Some("the manager is paused")
        );
        assert!(attempts(&mgr, id).is_empty());
    }
    let resumed_at = now_ms();
    mgr.resume();
    for id in [now, delayed] {
        let t = mgr.wait(id, PATIENCE).unwrap();
        assert_eq!(t.status, TaskStatus::Completed);
        assert!(t.start_time.unwrap() >= resumed_at);
    }
    mgr.stop(PATIENCE).unwrap();
}

/// Manager `pause()` does not stop running handlers.
#[test]
fn running_handlers_carry_on_while_the_manager_is_paused() {
    let (mgr, gate) = gated_manager();
    mgr.start().unwrap();
    let id = mgr.submit("gated", json!(null)).unwrap();
    eventually("running", || task(&mgr, id).status == TaskStatus::Running);
    mgr.pause();
    gate.open();
    let t = mgr.wait(id, PATIENCE).unwrap();
    assert_eq!(t.status, TaskStatus::Completed);
    mgr.resume();
    mgr.stop(PATIENCE).unwrap();
}

/// SPEC §6: `pause_task` on a delayed pending task keeps it from running when
/// its time comes; `resume_task` runs it (stage 0) no earlier than the resume.
#[test]
fn pause_task_keeps_a_delayed_task_from_running_until_resume_task() {
    let mgr = memory(2);
    mgr.register("ok", |_| Ok(json!("ok").into())).unwrap();
    mgr.start().unwrap();
    let delay = SubmitOptions::new().delay(Duration::from_millis(150));
    let paused = mgr.submit_with("ok", json!(1), delay.clone()).unwrap();
    mgr.pause_task(paused).unwrap();
    let marker = mgr.submit_with("ok", json!(2), delay).unwrap();
    let m = mgr.wait(marker, PATIENCE).unwrap();
    assert_eq!(m.status, TaskStatus::Completed);
    let p = mgr.wait(paused, PATIENCE).unwrap();
    assert_eq!(p.status, TaskStatus::Paused);
    assert!(attempts(&mgr, paused).is_empty());
    assert_eq!(
        mgr.waiting_reason(paused).unwrap(),
        Some(format!("paused: resume_task({}) runs it again", paused.0))
    );
    let resumed_at = now_ms();
    mgr.resume_task(paused, None).unwrap();
    let t = mgr.wait(paused, PATIENCE).unwrap();
    assert_eq!(t.status, TaskStatus::Completed);
    assert_eq!(t.stage, 0);
    assert!(t.start_time.unwrap() >= resumed_at);
    mgr.stop(PATIENCE).unwrap();
}

/// SPEC §6: `pause_task` on a running task: the handler is not interrupted but
/// its late result is discarded; `resume_task` runs it again.
#[test]
fn pause_task_discards_a_running_handlers_late_result() {
    let mgr = memory(2);
    let gate = Gate::new();
    let g = gate.clone();
    let returned = Arc::new(AtomicUsize::new(0));
    let r = returned.clone();
    mgr.register("gated", move |ctx| {
        g.wait();
        r.fetch_add(1, Ordering::SeqCst);
        Ok(json!({"attempt": ctx.attempt()}).into())
    })
    .unwrap();
    mgr.start().unwrap();
    let id = mgr.submit("gated", json!(null)).unwrap();
    eventually("running", || task(&mgr, id).status == TaskStatus::Running);
    mgr.pause_task(id).unwrap();
    let t = mgr.wait(id, PATIENCE).unwrap();
    assert_eq!(t.status, TaskStatus::Paused);
    gate.open();
    eventually("the late handler returned", || {
        returned.load(Ordering::SeqCst) == 1 && mgr.running() == 0
    });
    let t = task(&mgr, id);
    assert_eq!(t.status, TaskStatus::Paused);
    assert_eq!(t.result, None);
    assert_eq!(attempts(&mgr, id)[0].outcome, Some(AttemptOutcome::Paused));
    mgr.resume_task(id, None).unwrap();
    let t = mgr.wait(id, PATIENCE).unwrap();
    assert_eq!(t.status, TaskStatus::Completed);
    assert_eq!(t.result, Some(json!({"attempt": 2})));
    mgr.stop(PATIENCE).unwrap();
}

// ---------------------------------------------------------------------------
// Workflows and suspension
// ---------------------------------------------------------------------------

/// SPEC §5: a parent spawns children (one retried after its interval, one that
/// fails for good and is delivered as an error); the parent resumes at stage 1
/// only after every child finished, and sees their entries sorted by id.
#[test]
fn parent_resumes_after_its_children_including_a_retried_one() {
    let mgr = memory(3);
    mgr.register("parent", |ctx| match ctx.stage() {
        0 => Ok(Outcome::spawn(vec![
            ChildSpec::new("child", json!(0)),
            ChildSpec::new("child", json!(1))
                .max_retries(2)
                .retry_interval(Duration::from_millis(100)),
            ChildSpec::new("child", json!(2)).max_retries(1),
        ])),
        _ => Ok(json!({"seen": ctx.result().cloned()}).into()),
    })
    .unwrap();
    mgr.register("child", |ctx| {
        let i = ctx.payload().as_u64().unwrap();
        match i {
            1 if ctx.retry_count() == 0 => Err("first try fails".into()),
            2 => Err("always fails".into()),
            _ => Ok(json!(i * 10).into()),
        }
    })
    .unwrap();
    mgr.start().unwrap();
    let parent = mgr.submit("parent", json!(null)).unwrap();
    let t = mgr.wait(parent, PATIENCE).unwrap();
    assert_eq!(t.status, TaskStatus::Completed);
    assert_eq!(t.stage, 1);
    let kids = common::children_of(&mgr, parent);
    assert_eq!(kids.len(), 3);
    let entries = &t.result.unwrap()["seen"];
    assert_eq!(
        entries,
        &json!([
            {"task_id": kids[0].id, "result": 0},
            {"task_id": kids[1].id, "result": 10},
            {"task_id": kids[2].id, "error": "always fails"},
        ])
    );
    let retried = attempts(&mgr, kids[1].id);
    assert_eq!(retried.len(), 2);
    assert!(gaps(&retried)[0] >= 100);
    let last_child_end = kids
        .iter()
        .flat_map(|k| attempts(&mgr, k.id))
        .filter_map(|a| a.ended_at)
        .max()
        .unwrap();
    let parent_att = attempts(&mgr, parent);
    assert_eq!(parent_att.len(), 2);
    assert!(parent_att[1].started_at >= last_child_end);
    assert_eq!(parent_att[0].outcome, Some(AttemptOutcome::Suspended));
    mgr.stop(PATIENCE).unwrap();
}

/// SPEC §6: an explicitly suspended task outlives its timeout and heartbeat
/// window untouched, never resumes by itself, and `resume_task` runs it at
/// stage + 1 with its saved context.
#[test]
fn a_suspended_task_waits_for_resume_task_and_never_times_out() {
    let mgr = memory(2);
    let opts = HandlerOptions::new()
        .timeout(Duration::from_millis(100))
        .heartbeat_window(Duration::from_millis(100));
    mgr.register_with("approve", opts, |ctx| match ctx.stage() {
        0 => Ok(Outcome::Suspend {
            reason: "approval".into(),
            context: Some(b"saved".to_vec()),
        }),
        _ => Ok(json!({
            "context": String::from_utf8_lossy(ctx.context().unwrap_or_default()),
            "stage": ctx.stage(),
        })
        .into()),
    })
    .unwrap();
    mgr.register("ok", |_| Ok(json!("ok").into())).unwrap();
    mgr.start().unwrap();
    let id = mgr.submit("approve", json!(null)).unwrap();
    eventually("suspended", || {
        task(&mgr, id).status == TaskStatus::Suspended
    });
    let marker = mgr
        .submit_with(
            "ok",
            json!(null),
            SubmitOptions::new().delay(Duration::from_millis(400)),
        )
        .unwrap();
    mgr.wait(marker, PATIENCE).unwrap();
    let t = task(&mgr, id);
    assert_eq!(t.status, TaskStatus::Suspended);
    assert_eq!(count_events(&mgr, id, EventType::TimedOut), 0);
    assert_eq!(attempts(&mgr, id).len(), 1);
    let resumed_at = now_ms();
    mgr.resume_task(id, Some("approved")).unwrap();
    let t = mgr.wait(id, PATIENCE).unwrap();
    assert_eq!(t.status, TaskStatus::Completed);
    assert_eq!(t.result, Some(json!({"context": "saved", "stage": 1})));
    let resumed = mgr
        .events(id)
        .unwrap()
        .into_iter()
        .find(|e| e.event_type == EventType::Resumed)
        .unwrap();
    assert_eq!(resumed.metadata["resume_reason"], "approved");
    let att = attempts(&mgr, id);
    assert_eq!(att.len(), 2);
    assert_eq!(att[0].outcome, Some(AttemptOutcome::Suspended));
    assert!(att[1].started_at >= resumed_at);
    mgr.stop(PATIENCE).unwrap();
}

// ---------------------------------------------------------------------------
// Below the millisecond
// ---------------------------------------------------------------------------

/// Found by this file: fibflow turned requested durations and times into whole
/// milliseconds by truncation, so tasks could start up to a millisecond
/// earlier than asked (a `run_at` of `X.999` ms became `X`; a `delay` from a
/// submission at `S.9` ms was due at `S + d`), retries and total timeouts could
/// fire up to 1 ms early, and a non-zero timeout or heartbeat window under 1 ms
/// became 0, "none". Durations are now rounded up (`clock::ceil_ms`), and due
/// times count from the clock rounded up (`Clock::now_ms_ceil`).
mod sub_millisecond {
    use super::*;

    /// `run_at` with a sub-millisecond part: the handler runs before it.
    #[test]
    fn run_at_is_a_lower_bound_below_the_millisecond() {
        let mgr = memory(2);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        mgr.register("rec", move |ctx| {
            s.lock().unwrap().push((ctx.id(), SystemTime::now()));
            Ok(json!(null).into())
        })
        .unwrap();
        mgr.start().unwrap();
        let mut early = Vec::new();
        for _ in 0..20 {
            let at = UNIX_EPOCH + Duration::from_millis(now_ms() + 30) + Duration::from_micros(999);
            let id = mgr
                .submit_with("rec", json!(null), SubmitOptions::new().run_at(at))
                .unwrap();
            mgr.wait(id, PATIENCE).unwrap();
            let ran = seen
                .lock()
                .unwrap()
                .iter()
                .find(|(i, _)| *i == id)
                .unwrap()
                .1;
            if let Ok(by) = at.duration_since(ran) {
                if !by.is_zero() {
                    early.push(by);
                }
            }
        }
        assert!(
            early.is_empty(),
            "{} of 20 tasks started before their run_at, by {early:?}",
            early.len()
        );
    }

    /// A sub-millisecond total timeout or heartbeat window is truncated to 0,
    /// which means "none": a handler that never returns is never timed out.
    /// SPEC §4: "`start_time + timeout` passed → `timeout`"; only a zero timeout
    /// means none (`Builder::timeout`: "zero means none"). Causes:
    /// `runtime/submit.rs` `ms()` (`timeout_ms`), `Builder::timeout`
    /// (`as_millis`), and `Core::job` in `runtime/worker.rs`, which turns
    /// `heartbeat_window` into `d.as_millis() as u64`, 0 for under 1 ms, read
    /// as "heartbeats not required". A non-zero duration should round up to at
    /// least 1 ms.
    #[test]
    fn sub_millisecond_timeouts_still_time_out() {
        let mgr = memory(2);
        let give_up = Duration::from_secs(2);
        let body = move |ctx: &TaskContext| {
            let start = Instant::now();
            while start.elapsed() < give_up {
                if let Err(why) = ctx.check() {
                    return Err(why.into());
                }
                std::thread::park_timeout(Duration::from_millis(1));
            }
            Ok(json!("never timed out").into())
        };
        mgr.register_with("total", HandlerOptions::new().max_retries(1), body)
            .unwrap();
        let hb = HandlerOptions::new()
            .max_retries(1)
            .heartbeat_window(Duration::from_micros(500));
        mgr.register_with("heartbeat", hb, body).unwrap();
        mgr.start().unwrap();
        let total = mgr
            .submit_with(
                "total",
                json!(null),
                SubmitOptions::new().timeout(Duration::from_micros(500)),
            )
            .unwrap();
        let heartbeat = mgr.submit("heartbeat", json!(null)).unwrap();
        let mut wrong = Vec::new();
        for (id, what) in [
            (total, "a 500 µs timeout"),
            (heartbeat, "a 500 µs heartbeat window"),
        ] {
            let t = mgr.wait(id, PATIENCE).unwrap();
            if t.status != TaskStatus::PermanentlyFailed {
                wrong.push(format!(
                    "task with {what} ended {} with {:?}, timeout_ms {}",
                    t.status, t.result, t.timeout_ms
                ));
            }
        }
        assert!(wrong.is_empty(), "{wrong:#?}");
    }

    /// `delay`: measured from just before `submit` (made late in a millisecond),
    /// the handler starts before the delay.
    #[test]
    fn delay_is_a_lower_bound_below_the_millisecond() {
        let mgr = memory(2);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        mgr.register("rec", move |ctx| {
            s.lock().unwrap().push((ctx.id(), Instant::now()));
            Ok(json!(null).into())
        })
        .unwrap();
        mgr.start().unwrap();
        let delay = Duration::from_millis(20);
        let mut early = Vec::new();
        for _ in 0..40 {
            // Submit late in a millisecond, where truncation loses the most.
            eventually("late in a millisecond", || {
                let sub_ms = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap()
                    .subsec_micros()
                    % 1000;
                sub_ms >= 950
            });
            let before = Instant::now();
            let id = mgr
                .submit_with("rec", json!(null), SubmitOptions::new().delay(delay))
                .unwrap();
            mgr.wait(id, PATIENCE).unwrap();
            let ran = seen
                .lock()
                .unwrap()
                .iter()
                .find(|(i, _)| *i == id)
                .unwrap()
                .1;
            if ran - before < delay {
                early.push(ran - before);
            }
        }
        assert!(
            early.is_empty(),
            "{} of 40 tasks started before their {delay:?} delay: {early:?}",
            early.len()
        );
    }
}
