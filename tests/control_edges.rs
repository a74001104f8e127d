//! Audit of the control calls and the manager lifecycle (SPEC §6, the §2
//! transition table, §5 `wait`, §13): pause_task, resume_task, cancel_task,
//! delete_tasks and wait on a task in every status, races of control calls
//! with workers, and start/stop/pause/resume/drop of the manager.

mod common;

use common::fib::{status_of, wait_status, T0};
use common::{eventually, within, Gate, Release, XorShift, PATIENCE};
use fibflow::engine::TransitionError;
use fibflow::{
    AttemptOutcome, ChildSpec, Error, EventType, HandlerOptions, ManualClock, Outcome,
    SubmitOptions, Task, TaskFilter, TaskId, TaskManager, TaskStatus, TimeZone,
};
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const HOUR: Duration = Duration::from_secs(3600);
const MINUTE: Duration = Duration::from_secs(60);
/// Every minute at second 0: the first run is 40 s after T0 (22:13:20 UTC).
const EVERY_MINUTE: &str = "0 * * * * *";

// ---------------------------------------------------------------------------
// Fixtures: one task brought into one status
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Submitted to a manager that is not started.
    Pending,
    /// Submitted with a one-hour delay to a started manager.
    Delayed,
    RunningSync,
    RunningAsync,
    Completed,
    /// Failed twice, its second retry due in an hour (retry_count 1).
    Failed,
    /// Timed out once, its retry due in an hour.
    TimedOut,
    PermanentlyFailed,
    /// Paused by pause_task while it waited for its delay.
    Paused,
    /// The handler returned `suspend`.
    Suspended,
    /// The handler spawned a child that is still running.
    AwaitingChildren,
    CronPending,
    CronRunning,
    CronFailed,
    /// A cron task whose retries ran out.
    CronPaused,
    CronSuspended,
}

const STATES: [State; 16] = [
    State::Pending,
    State::Delayed,
    State::RunningSync,
    State::RunningAsync,
    State::Completed,
    State::Failed,
    State::TimedOut,
    State::PermanentlyFailed,
    State::Paused,
    State::Suspended,
    State::AwaitingChildren,
    State::CronPending,
    State::CronRunning,
    State::CronFailed,
    State::CronPaused,
    State::CronSuspended,
];

impl State {
    fn status(self) -> TaskStatus {
        use State as S;
        match self {
            S::Pending | S::Delayed | S::CronPending => TaskStatus::Pending,
            S::RunningSync | S::RunningAsync | S::CronRunning => TaskStatus::Running,
            S::Completed => TaskStatus::Completed,
            S::Failed | S::CronFailed => TaskStatus::Failed,
            S::TimedOut => TaskStatus::Timeout,
            S::PermanentlyFailed => TaskStatus::PermanentlyFailed,
            S::Paused | S::CronPaused => TaskStatus::Paused,
            S::Suspended | S::AwaitingChildren | S::CronSuspended => TaskStatus::Suspended,
        }
    }
    fn cron(self) -> bool {
        matches!(
            self,
            State::CronPending
                | State::CronRunning
                | State::CronFailed
                | State::CronPaused
                | State::CronSuspended
        )
    }
    fn handler(self) -> &'static str {
        use State as S;
        match self {
            S::Pending | S::Delayed | S::Completed | S::Paused | S::CronPending => "ok",
            S::RunningSync | S::CronRunning => "block",
            S::RunningAsync => "ablock",
            S::Failed | S::CronFailed => "fail",
            S::PermanentlyFailed | S::CronPaused => "fail_once",
            S::TimedOut => "atime",
            S::Suspended | S::CronSuspended => "susp",
            S::AwaitingChildren => "parent",
        }
    }
}

struct Fixture {
    mgr: Arc<TaskManager>,
    clock: Arc<ManualClock>,
    id: TaskId,
    tag: String,
    gate: Arc<Gate>,
    release: Release,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.gate.open();
        self.release.open();
        let _ = self.mgr.stop(PATIENCE);
    }
}

fn manager(clock: &Arc<ManualClock>) -> Arc<TaskManager> {
    Arc::new(
        TaskManager::builder()
            .memory()
            .clock(clock.clone())
            .time_zone(TimeZone::from_name("UTC").unwrap())
            .max_concurrent_tasks(4)
            .build()
            .unwrap(),
    )
}

/// The version-1 handlers of every fixture.
fn register_v1(mgr: &TaskManager, gate: &Arc<Gate>, release: &Release) {
    mgr.register("ok", |_| Ok(json!("ok-v1").into())).unwrap();
    let g = gate.clone();
    mgr.register("block", move |_| {
        g.wait();
        Ok(json!("late").into())
    })
    .unwrap();
    let r = release.clone();
    mgr.register_async("ablock", move |_| {
        let r = r.clone();
        async move {
            r.wait().await;
            Ok(json!("late").into())
        }
    })
    .unwrap();
    let retry_later = HandlerOptions::new().max_retries(5).retry_interval(HOUR);
    mgr.register_with("fail", retry_later.clone(), |_| Err("boom".into()))
        .unwrap();
    mgr.register_with("fail_once", HandlerOptions::new().max_retries(1), |_| {
        Err("boom".into())
    })
    .unwrap();
    let r = release.clone();
    mgr.register_async_with(
        "atime",
        retry_later.timeout(Duration::from_secs(1)),
        move |_| {
            let r = r.clone();
            async move {
                r.wait().await;
                Ok(json!("late").into())
            }
        },
    )
    .unwrap();
    mgr.register("susp", |ctx| {
        if ctx.stage() == 0 {
            return Ok(Outcome::Suspend {
                reason: "approval".into(),
                context: Some(b"saved".to_vec()),
            });
        }
        Ok(json!("susp-v1-later").into())
    })
    .unwrap();
    mgr.register("parent", |ctx| {
        if ctx.stage() == 0 {
            return Ok(Outcome::Spawn {
                children: vec![ChildSpec::new("block", json!("child"))],
                context: Some(b"pctx".to_vec()),
            });
        }
        Ok(json!({"children": ctx.result().cloned()}).into())
    })
    .unwrap();
}

fn fixture(state: State) -> Fixture {
    let clock = ManualClock::new(T0);
    let mgr = manager(&clock);
    let gate = Gate::new();
    let release = Release::new();
    register_v1(&mgr, &gate, &release);
    let tag = format!("target-{state:?}");
    let mut opts = SubmitOptions::new().tag(tag.clone());
    if state.cron() {
        opts = opts.cron(EVERY_MINUTE);
    }
    if matches!(state, State::Delayed | State::Paused) {
        opts = opts.delay(HOUR);
    }
    if state != State::Pending {
        mgr.start().unwrap();
    }
    let id = mgr
        .submit_with(
            state.handler(),
            json!({"state": format!("{state:?}")}),
            opts,
        )
        .unwrap();
    let f = Fixture {
        mgr,
        clock,
        id,
        tag,
        gate,
        release,
    };
    let (mgr, id) = (&f.mgr, f.id);
    if state.cron() && state != State::CronPending {
        f.clock.advance(MINUTE);
    }
    match state {
        State::Pending | State::Delayed | State::CronPending => {}
        State::RunningSync | State::RunningAsync | State::CronRunning => {
            wait_status(mgr, id, TaskStatus::Running);
        }
        State::Completed => {
            mgr.wait(id, PATIENCE).unwrap();
        }
        State::Failed => {
            wait_status(mgr, id, TaskStatus::Failed);
            f.clock.advance(HOUR);
            eventually("the second attempt fails", || {
                let t = mgr.get_task(id).unwrap();
                t.status == TaskStatus::Failed && t.retry_count == 1
            });
        }
        State::CronFailed => {
            wait_status(mgr, id, TaskStatus::Failed);
        }
        State::TimedOut => {
            wait_status(mgr, id, TaskStatus::Running);
            f.clock.advance(Duration::from_secs(2));
            wait_status(mgr, id, TaskStatus::Timeout);
            eventually("the cancelled async attempt returns", || mgr.running() == 0);
        }
        State::PermanentlyFailed | State::CronPaused => {
            mgr.wait(id, PATIENCE).unwrap();
        }
        State::Paused => mgr.pause_task(id).unwrap(),
        State::Suspended | State::CronSuspended => {
            wait_status(mgr, id, TaskStatus::Suspended);
        }
        State::AwaitingChildren => {
            wait_status(mgr, id, TaskStatus::Suspended);
            let kids = common::children_of(mgr, id);
            assert_eq!(kids.len(), 1);
            wait_status(mgr, kids[0].id, TaskStatus::Running);
        }
    }
    assert_eq!(status_of(mgr, id), state.status(), "{state:?}");
    f
}

// ---------------------------------------------------------------------------
// Checks shared by the tests
// ---------------------------------------------------------------------------

/// Everything a refused call must leave as it was.
#[derive(Debug, PartialEq)]
struct Fingerprint {
    task: Task,
    events: usize,
    attempts: Vec<fibflow::Attempt>,
    total: usize,
}

fn fingerprint(mgr: &TaskManager, id: TaskId) -> Fingerprint {
    Fingerprint {
        task: mgr.get_task(id).unwrap(),
        events: mgr.events(id).unwrap().len(),
        attempts: mgr.attempts(id).unwrap(),
        total: mgr.list_tasks(&TaskFilter::all()).len(),
    }
}

/// The status-changing events of a task form one chain (each `from` is the
/// previous `to`) that ends at the task's status; attempts are numbered
/// 1..=n, at most the last is open, and it is open exactly while the task runs.
fn check_history(mgr: &TaskManager, id: TaskId) {
    let task = mgr.get_task(id).unwrap();
    let events = mgr.events(id).unwrap();
    let mut at: Option<TaskStatus> = None;
    for e in &events {
        // A spawn records the parent's change twice (task_subtasks_created,
        // as fib-flow does, then task_status_changed): one step of the chain.
        if e.event_type == EventType::SubtasksCreated {
            continue;
        }
        if let Some(to) = e.to_status {
            if e.event_type != EventType::Created {
                assert_eq!(
                    e.from_status,
                    at,
                    "task {id}: {} from {:?} but it was {:?}; history {:?}",
                    e.event_type.as_str(),
                    e.from_status,
                    at,
                    names(&events)
                );
            }
            at = Some(to);
        }
    }
    assert_eq!(
        at,
        Some(task.status),
        "task {id}: the events end at {at:?}, the task is {}; {:?}",
        task.status,
        names(&events)
    );
    let attempts = mgr.attempts(id).unwrap();
    for (i, a) in attempts.iter().enumerate() {
        assert_eq!(a.number as usize, i + 1, "task {id}: attempt numbers");
        if i + 1 < attempts.len() {
            assert!(
                a.outcome.is_some(),
                "task {id}: attempt {} left open",
                a.number
            );
        }
    }
    let open = attempts.last().is_some_and(|a| a.outcome.is_none());
    assert_eq!(
        open,
        task.status == TaskStatus::Running,
        "task {id} is {} with attempts {attempts:?}",
        task.status
    );
    // A pause of a running task closes that attempt as paused.
    for e in &events {
        if e.event_type == EventType::Paused && e.from_status == Some(TaskStatus::Running) {
            let n = e
                .attempt
                .expect("a pause of a running task names its attempt");
            assert_eq!(
                attempts[n as usize - 1].outcome,
                Some(AttemptOutcome::Paused),
                "task {id}"
            );
        }
    }
}

fn names(events: &[fibflow::Event]) -> Vec<&'static str> {
    events.iter().map(|e| e.event_type.as_str()).collect()
}

fn refused_transition(r: fibflow::Result<()>, id: TaskId, from: TaskStatus, to: TaskStatus) {
    match r {
        Err(Error::Transition(TransitionError::InvalidTransition {
            id: i,
            from: f,
            to: t,
        })) => {
            assert_eq!((i, f, t), (id, from, to));
        }
        other => panic!("expected InvalidTransition {from} -> {to}, got {other:?}"),
    }
}

/// Opens the fixture's latches and waits until no handler runs.
fn drain(f: &Fixture) {
    f.gate.open();
    f.release.open();
    eventually("handlers return", || f.mgr.running() == 0);
}

/// The last event of a task.
fn last_event(mgr: &TaskManager, id: TaskId) -> fibflow::Event {
    mgr.events(id).unwrap().pop().unwrap()
}

// ---------------------------------------------------------------------------
// pause_task in every status
// ---------------------------------------------------------------------------

fn pausable(s: State) -> bool {
    // SPEC §6: running or pending; SPEC §2 and fib-flow's pauseTask also allow
    // failed/timeout (a task waiting for its retry).
    matches!(
        s.status(),
        TaskStatus::Pending | TaskStatus::Running | TaskStatus::Failed | TaskStatus::Timeout
    )
}

#[test]
fn pause_task_in_every_status() {
    for state in STATES {
        let f = fixture(state);
        let (mgr, id) = (&f.mgr, f.id);
        let before = fingerprint(mgr, id);
        let r = mgr.pause_task(id);
        if !pausable(state) {
            refused_transition(r, id, state.status(), TaskStatus::Paused);
            assert_eq!(
                fingerprint(mgr, id),
                before,
                "{state:?}: a refused pause changed the task"
            );
            continue;
        }
        r.unwrap_or_else(|e| panic!("{state:?}: pause refused: {e}"));
        let t = mgr.get_task(id).unwrap();
        assert_eq!(t.status, TaskStatus::Paused, "{state:?}");
        assert_eq!(
            t.stage, before.task.stage,
            "{state:?}: pause keeps the stage"
        );
        assert_eq!(t.last_active_time, f.clock.now_ms_for_test(), "{state:?}");
        let ev = last_event(mgr, id);
        assert_eq!(ev.event_type, EventType::Paused, "{state:?}");
        assert_eq!(
            (ev.from_status, ev.to_status),
            (Some(state.status()), Some(TaskStatus::Paused)),
            "{state:?}"
        );
        assert_eq!(
            mgr.events(id).unwrap().len(),
            before.events + 1,
            "{state:?}: one event"
        );
        if state.status() == TaskStatus::Running {
            let a = mgr.attempts(id).unwrap().pop().unwrap();
            assert_eq!(a.outcome, Some(AttemptOutcome::Paused), "{state:?}");
            assert!(a.ended_at.is_some());
        }
        // wait returns at paused at once, while the handler still runs.
        assert_eq!(
            mgr.wait(id, Duration::ZERO).unwrap().status,
            TaskStatus::Paused,
            "{state:?}"
        );
        // The late result of a running handler is discarded; due timers
        // (delay, retry, cron occurrence, timeout) do not wake a paused task.
        let after = fingerprint(mgr, id);
        drain(&f);
        f.clock.advance(2 * HOUR);
        eventually("the timer round settles", || mgr.running() == 0);
        assert_eq!(
            fingerprint(mgr, id),
            after,
            "{state:?}: a paused task changed after its handler returned or time passed"
        );
        assert_eq!(status_of(mgr, id), TaskStatus::Paused);
        check_history(mgr, id);
    }
}

// ---------------------------------------------------------------------------
// resume_task in every status, with the handler re-registered first
// ---------------------------------------------------------------------------

fn resumable(s: State) -> bool {
    // SPEC §6: suspended or paused; the §2 table and fib-flow also allow a
    // task waiting for its retry.
    matches!(
        s.status(),
        TaskStatus::Paused | TaskStatus::Suspended | TaskStatus::Failed | TaskStatus::Timeout
    )
}

/// Re-registers `name` with a version-2 handler that reports what it saw.
fn register_v2(mgr: &TaskManager, name: &str, runs: &Arc<AtomicUsize>) {
    let runs = runs.clone();
    mgr.register(name, move |ctx| {
        runs.fetch_add(1, Ordering::SeqCst);
        Ok(json!({
            "v": 2,
            "stage": ctx.stage(),
            "retry_count": ctx.retry_count(),
            "context": ctx.context().map(|c| String::from_utf8_lossy(c).into_owned()),
        })
        .into())
    })
    .unwrap();
}

#[test]
fn resume_task_in_every_status() {
    for reason in [None, Some("approved"), Some("")] {
        for state in STATES {
            resume_case(state, reason);
        }
    }
}

fn resume_case(state: State, reason: Option<&str>) {
    let f = fixture(state);
    let (mgr, id) = (&f.mgr, f.id);
    if state == State::Pending {
        mgr.start().unwrap();
        // Claimed at once: a pending task of a started manager runs.
        mgr.wait(id, PATIENCE).unwrap();
        return;
    }
    let runs = Arc::new(AtomicUsize::new(0));
    register_v2(mgr, state.handler(), &runs);
    let before = fingerprint(mgr, id);
    let now = f.clock.now_ms_for_test();
    let r = mgr.resume_task(id, reason);
    let what = format!("{state:?} reason {reason:?}");
    if !resumable(state) {
        refused_transition(r, id, state.status(), TaskStatus::Pending);
        assert_eq!(
            fingerprint(mgr, id),
            before,
            "{what}: a refused resume changed the task"
        );
        return;
    }
    r.unwrap_or_else(|e| panic!("{what}: resume refused: {e}"));
    let from_suspended = state.status() == TaskStatus::Suspended;
    let ev = mgr
        .events(id)
        .unwrap()
        .into_iter()
        .nth(before.events)
        .unwrap();
    assert_eq!(
        ev.event_type,
        if from_suspended {
            EventType::Resumed
        } else {
            EventType::StatusChanged
        },
        "{what}"
    );
    assert_eq!(
        (ev.from_status, ev.to_status),
        (Some(state.status()), Some(TaskStatus::Pending)),
        "{what}"
    );
    assert_eq!(ev.time, now, "{what}");
    let expect_reason = reason.filter(|r| !r.is_empty()).unwrap_or("manual");
    if from_suspended {
        assert_eq!(ev.metadata["resume_reason"], json!(expect_reason), "{what}");
    }
    let stage = if from_suspended {
        before.task.stage + 1
    } else {
        0
    };
    assert_eq!(ev.stage, stage, "{what}");
    // The resumed run is the version-2 handler, with retry_count 0, the new
    // stage and the saved context.
    eventually(&format!("{what}: the resumed run"), || {
        runs.load(Ordering::SeqCst) == 1
            && mgr
                .attempts(id)
                .unwrap()
                .last()
                .is_some_and(|a| a.outcome.is_some())
    });
    let t = mgr.get_task(id).unwrap();
    let context = match state {
        State::Suspended | State::CronSuspended => json!("saved"),
        State::AwaitingChildren => json!("pctx"),
        _ => Value::Null,
    };
    assert_eq!(
        t.result,
        Some(json!({"v": 2, "stage": stage, "retry_count": 0, "context": context})),
        "{what}"
    );
    assert_eq!(t.retry_count, 0, "{what}");
    if state.cron() {
        assert_eq!(
            t.status,
            TaskStatus::Pending,
            "{what}: a cron round returns to pending"
        );
        assert!(t.next_run_time > now, "{what}: back on its schedule");
    } else {
        assert_eq!(t.status, TaskStatus::Completed, "{what}");
        assert_eq!(t.next_run_time, now, "{what}: next_run_time = now");
    }
    // A child still running when its parent was resumed by hand finishes
    // without touching the parent again.
    // (A cron task would run its next round: its clock is left alone.)
    if !state.cron() {
        let after = fingerprint(mgr, id);
        drain(&f);
        f.clock.advance(2 * HOUR);
        eventually("settled", || mgr.running() == 0);
        assert_eq!(
            fingerprint(mgr, id),
            after,
            "{what}: the task changed after it finished"
        );
    }
    check_history(mgr, id);
}

// ---------------------------------------------------------------------------
// cancel_task in every status
// ---------------------------------------------------------------------------

fn cancellable(s: State) -> bool {
    // SPEC §6: suspended; the §2 table and fib-flow also allow failed/timeout.
    matches!(
        s.status(),
        TaskStatus::Suspended | TaskStatus::Failed | TaskStatus::Timeout
    )
}

#[test]
fn cancel_task_in_every_status() {
    for reason in [None, Some("rejected by the reviewer"), Some("")] {
        for state in STATES {
            let f = fixture(state);
            let (mgr, id) = (&f.mgr, f.id);
            let what = format!("{state:?} reason {reason:?}");
            let before = fingerprint(mgr, id);
            let r = mgr.cancel_task(id, reason);
            if !cancellable(state) {
                refused_transition(r, id, state.status(), TaskStatus::PermanentlyFailed);
                assert_eq!(
                    fingerprint(mgr, id),
                    before,
                    "{what}: a refused cancel changed the task"
                );
                continue;
            }
            r.unwrap_or_else(|e| panic!("{what}: cancel refused: {e}"));
            let expect = reason.filter(|r| !r.is_empty()).unwrap_or("Task cancelled");
            let t = mgr.get_task(id).unwrap();
            assert_eq!(t.status, TaskStatus::PermanentlyFailed, "{what}");
            assert_eq!(t.error.as_deref(), Some(expect), "{what}");
            assert_eq!(t.stage, before.task.stage, "{what}");
            assert_eq!(mgr.events(id).unwrap().len(), before.events + 1, "{what}");
            let ev = last_event(mgr, id);
            assert_eq!(ev.event_type, EventType::PermanentlyFailed, "{what}");
            assert_eq!(ev.from_status, Some(state.status()), "{what}");
            assert_eq!(
                mgr.wait(id, Duration::ZERO).unwrap().status,
                TaskStatus::PermanentlyFailed
            );
            // A child finishing later, a retry timer, a cron occurrence: none
            // brings a cancelled task back.
            let after = fingerprint(mgr, id);
            drain(&f);
            f.clock.advance(2 * HOUR);
            eventually("settled", || mgr.running() == 0);
            assert_eq!(
                fingerprint(mgr, id),
                after,
                "{what}: a cancelled task changed"
            );
            if state == State::AwaitingChildren {
                let kid = common::children_of(mgr, id).remove(0);
                assert_eq!(
                    wait_status(mgr, kid.id, TaskStatus::Completed).result,
                    Some(json!("late"))
                );
            }
            check_history(mgr, id);
        }
    }
}

// ---------------------------------------------------------------------------
// delete_tasks and wait in every status
// ---------------------------------------------------------------------------

#[test]
fn delete_in_every_status() {
    for state in STATES {
        let f = fixture(state);
        let (mgr, id) = (&f.mgr, f.id);
        let total = mgr.list_tasks(&TaskFilter::all()).len();
        let filter = TaskFilter::all().tag(f.tag.clone()).name(state.handler());
        assert_eq!(mgr.delete_tasks(&filter).unwrap(), 1, "{state:?}");
        assert_eq!(
            mgr.list_tasks(&TaskFilter::all()).len(),
            total - 1,
            "{state:?}"
        );
        assert!(mgr.get_task(id).is_none());
        assert!(matches!(mgr.events(id), Err(Error::NotFound(i)) if i == id));
        assert!(matches!(mgr.attempts(id), Err(Error::NotFound(i)) if i == id));
        assert!(matches!(mgr.wait(id, PATIENCE), Err(Error::NotFound(i)) if i == id));
        assert!(matches!(mgr.pause_task(id), Err(Error::NotFound(i)) if i == id));
        assert!(matches!(mgr.resume_task(id, None), Err(Error::NotFound(i)) if i == id));
        assert!(matches!(mgr.cancel_task(id, Some("x")), Err(Error::NotFound(i)) if i == id));
        assert_eq!(
            mgr.delete_tasks(&filter).unwrap(),
            0,
            "{state:?}: deleted twice"
        );
        // Whatever was in flight for it (a handler, a timer, a child) does
        // not bring it back, and the manager goes on working.
        drain(&f);
        f.clock.advance(2 * HOUR);
        eventually("settled", || mgr.running() == 0);
        assert!(
            mgr.get_task(id).is_none(),
            "{state:?}: a deleted task came back"
        );
        if state == State::Pending {
            mgr.start().unwrap();
        }
        let next = mgr.submit("ok", json!(null)).unwrap();
        assert_eq!(
            mgr.wait(next, PATIENCE).unwrap().status,
            TaskStatus::Completed,
            "{state:?}"
        );
    }
}

#[test]
fn wait_with_zero_deadline_in_every_status() {
    for state in STATES {
        let f = fixture(state);
        let (mgr, id) = (&f.mgr, f.id);
        let before = fingerprint(mgr, id);
        let r = mgr.wait(id, Duration::ZERO);
        if state.status().is_terminal() {
            let t = r.unwrap_or_else(|e| panic!("{state:?}: {e}"));
            assert_eq!(t, before.task, "{state:?}");
        } else {
            match r {
                Err(Error::WaitTimeout { id: i, waited }) => {
                    assert_eq!((i, waited), (id, Duration::ZERO), "{state:?}");
                }
                other => panic!("{state:?}: expected WaitTimeout, got {other:?}"),
            }
        }
        assert_eq!(
            fingerprint(mgr, id),
            before,
            "{state:?}: wait changed the task"
        );
    }
}

// ---------------------------------------------------------------------------
// Unknown ids
// ---------------------------------------------------------------------------

#[test]
fn unknown_ids_get_not_found_before_and_after_start() {
    let clock = ManualClock::new(T0);
    let mgr = manager(&clock);
    mgr.register("ok", |_| Ok(json!(1).into())).unwrap();
    let real = mgr.submit("ok", json!(null)).unwrap();
    for started in [false, true] {
        if started {
            mgr.start().unwrap();
            mgr.wait(real, PATIENCE).unwrap();
        }
        let events = mgr.events(real).unwrap().len();
        for raw in [0, 1, real.0 + 1, real.0 + 1_000_003, u64::MAX / 2, u64::MAX] {
            let id = TaskId(raw);
            if id == real {
                continue;
            }
            let nf = |r: fibflow::Result<()>, what: &str| {
                assert!(
                    matches!(&r, Err(Error::NotFound(i)) if *i == id),
                    "{what}({raw}) started={started}: {r:?}"
                );
                let msg = r.unwrap_err().to_string();
                assert!(msg.contains(&raw.to_string()), "{msg}");
            };
            nf(mgr.pause_task(id), "pause_task");
            nf(mgr.resume_task(id, None), "resume_task");
            nf(mgr.resume_task(id, Some("r")), "resume_task");
            nf(mgr.cancel_task(id, None), "cancel_task");
            nf(mgr.cancel_task(id, Some("r")), "cancel_task");
            nf(mgr.wait(id, PATIENCE).map(|_| ()), "wait");
            nf(mgr.events(id).map(|_| ()), "events");
            assert!(mgr.get_task(id).is_none());
        }
        assert_eq!(mgr.events(real).unwrap().len(), events);
        assert_eq!(mgr.list_tasks(&TaskFilter::all()).len(), 1);
    }
    mgr.stop(PATIENCE).unwrap();
}

// ---------------------------------------------------------------------------
// Repeated and chained control calls
// ---------------------------------------------------------------------------

/// pause → pause refused, resume → resume refused, pause again ... : each
/// allowed call adds one event, each refused one none; the task runs once.
#[test]
fn pause_resume_cycles_on_a_pending_task_run_it_once() {
    let clock = ManualClock::new(T0);
    let mgr = manager(&clock);
    let runs = Arc::new(AtomicUsize::new(0));
    let r = runs.clone();
    mgr.register("ok", move |_| {
        r.fetch_add(1, Ordering::SeqCst);
        Ok(json!("done").into())
    })
    .unwrap();
    mgr.pause();
    mgr.start().unwrap();
    let id = mgr.submit("ok", json!(null)).unwrap();
    for _ in 0..20 {
        mgr.pause_task(id).unwrap();
        refused_transition(
            mgr.pause_task(id),
            id,
            TaskStatus::Paused,
            TaskStatus::Paused,
        );
        mgr.resume_task(id, None).unwrap();
        refused_transition(
            mgr.resume_task(id, None),
            id,
            TaskStatus::Pending,
            TaskStatus::Pending,
        );
    }
    assert_eq!(mgr.events(id).unwrap().len(), 1 + 40);
    mgr.resume();
    assert_eq!(
        mgr.wait(id, PATIENCE).unwrap().status,
        TaskStatus::Completed
    );
    eventually("workers idle", || mgr.running() == 0);
    assert_eq!(
        runs.load(Ordering::SeqCst),
        1,
        "the stale queue entries ran it again"
    );
    assert_eq!(mgr.attempts(id).unwrap().len(), 1);
    check_history(&mgr, id);
    mgr.stop(PATIENCE).unwrap();
}

/// A resumed paused task runs now, even if it was paused during a long delay
/// (SPEC §6 next_run_time = now); its old delay timer does not run it twice.
#[test]
fn a_delayed_task_paused_and_resumed_runs_now_and_once() {
    let clock = ManualClock::new(T0);
    let mgr = manager(&clock);
    let runs = Arc::new(AtomicUsize::new(0));
    let r = runs.clone();
    mgr.register("ok", move |_| {
        r.fetch_add(1, Ordering::SeqCst);
        Ok(json!("done").into())
    })
    .unwrap();
    mgr.start().unwrap();
    let id = mgr
        .submit_with("ok", json!(null), SubmitOptions::new().delay(HOUR))
        .unwrap();
    mgr.pause_task(id).unwrap();
    clock.advance(MINUTE);
    mgr.resume_task(id, None).unwrap();
    let t = mgr.wait(id, PATIENCE).unwrap();
    assert_eq!(t.status, TaskStatus::Completed);
    assert_eq!(t.next_run_time, T0 + 60_000);
    clock.advance(2 * HOUR);
    eventually("idle", || mgr.running() == 0);
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    mgr.stop(PATIENCE).unwrap();
}

/// A running task paused, resumed and run again while its first handler
/// still runs: the first handler's late result is discarded, the second
/// attempt's result is the task's, and the stale attempt stays `paused`.
#[test]
fn a_late_result_after_pause_and_resume_is_discarded() {
    let clock = ManualClock::new(T0);
    let mgr = manager(&clock);
    let first = Gate::new();
    let calls = Arc::new(AtomicUsize::new(0));
    let (g, c) = (first.clone(), calls.clone());
    mgr.register("h", move |_| {
        if c.fetch_add(1, Ordering::SeqCst) == 0 {
            g.wait();
            return Ok(json!("stale").into());
        }
        Ok(json!("fresh").into())
    })
    .unwrap();
    mgr.start().unwrap();
    let id = mgr.submit("h", json!(null)).unwrap();
    wait_status(&mgr, id, TaskStatus::Running);
    mgr.pause_task(id).unwrap();
    mgr.resume_task(id, None).unwrap();
    let t = mgr.wait(id, PATIENCE).unwrap();
    assert_eq!(t.result, Some(json!("fresh")));
    first.open();
    eventually("the stale handler returns", || mgr.running() == 0);
    let t = mgr.get_task(id).unwrap();
    assert_eq!(t.status, TaskStatus::Completed);
    assert_eq!(t.result, Some(json!("fresh")));
    let outcomes: Vec<_> = mgr
        .attempts(id)
        .unwrap()
        .iter()
        .map(|a| a.outcome)
        .collect();
    assert_eq!(
        outcomes,
        vec![
            Some(AttemptOutcome::Paused),
            Some(AttemptOutcome::Completed)
        ]
    );
    check_history(&mgr, id);
    mgr.stop(PATIENCE).unwrap();
}

/// A handler still running after its task was paused: its
/// progress and audit writes are refused as stale and record nothing, and a
/// late spawn creates no children (SPEC §2: a write from an attempt that no
/// longer owns the task is rejected).
#[test]
fn writes_of_a_paused_attempt_are_refused() {
    let clock = ManualClock::new(T0);
    let mgr = manager_arc(&clock);
    let gate = Gate::new();
    let seen: Arc<Mutex<Vec<(String, bool, bool)>>> = Arc::default();
    let (g, sn) = (gate.clone(), seen.clone());
    mgr.register("worker", move |ctx| {
        if ctx.attempt() > 1 {
            return Ok(json!("second run").into());
        }
        g.wait();
        let progress = ctx.progress(fibflow::Progress {
            text: Some("still going".into()),
            ..Default::default()
        });
        let audit = ctx.audit("late", None, None);
        sn.lock().unwrap().push((
            ctx.payload().as_str().unwrap().to_owned(),
            matches!(progress, Err(fibflow::ContextError::Stale { .. })),
            matches!(audit, Err(fibflow::ContextError::Stale { .. })),
        ));
        if ctx.payload() == &json!("spawner") {
            return Ok(Outcome::spawn(vec![ChildSpec::new("worker", json!("kid"))]));
        }
        Ok(json!("late").into())
    })
    .unwrap();
    mgr.start().unwrap();
    let paused = mgr.submit("worker", json!("paused")).unwrap();
    let spawner = mgr.submit("worker", json!("spawner")).unwrap();
    for id in [paused, spawner] {
        wait_status(&mgr, id, TaskStatus::Running);
    }
    mgr.pause_task(paused).unwrap();
    mgr.pause_task(spawner).unwrap();
    let before: Vec<_> = [paused, spawner]
        .iter()
        .map(|&id| fingerprint(&mgr, id))
        .collect();
    gate.open();
    eventually("the stale handlers return", || {
        seen.lock().unwrap().len() == 2 && mgr.running() == 0
    });
    let mut seen = seen.lock().unwrap().clone();
    seen.sort();
    assert_eq!(
        seen,
        vec![
            ("paused".to_owned(), true, true),
            ("spawner".to_owned(), true, true),
        ],
        "(payload, progress refused stale, audit refused stale)"
    );
    let after: Vec<_> = [paused, spawner]
        .iter()
        .map(|&id| fingerprint(&mgr, id))
        .collect();
    assert_eq!(before, after);
    assert!(
        common::children_of(&mgr, spawner).is_empty(),
        "a late spawn created children"
    );
    assert_eq!(mgr.list_tasks(&TaskFilter::all()).len(), 2);
    // Resumed, the spawner runs again (attempt 2) with the current handler.
    mgr.resume_task(spawner, None).unwrap();
    assert_eq!(
        mgr.wait(spawner, PATIENCE).unwrap().result,
        Some(json!("second run"))
    );
    mgr.stop(PATIENCE).unwrap();
}

/// A handler still running after its task was deleted: its progress and
/// audit writes no longer own a task. `ContextError::Stale` is documented as
/// "the attempt no longer owns the task; stop working on it", `Invalid` as
/// "bad arguments": a deleted task's attempt should get the former.
#[test]
fn writes_of_a_deleted_tasks_attempt_are_refused_as_stale() {
    let clock = ManualClock::new(T0);
    let mgr = manager_arc(&clock);
    let gate = Gate::new();
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let (g, sn) = (gate.clone(), seen.clone());
    mgr.register("worker", move |ctx| {
        g.wait();
        let progress = ctx.progress(fibflow::Progress {
            text: Some("still going".into()),
            ..Default::default()
        });
        let audit = ctx.audit("late", None, None);
        let mut sn = sn.lock().unwrap();
        sn.push(format!("{progress:?}"));
        sn.push(format!("{audit:?}"));
        Ok(json!("late").into())
    })
    .unwrap();
    mgr.start().unwrap();
    let id = mgr
        .submit_with("worker", json!(null), SubmitOptions::new().tag("gone"))
        .unwrap();
    wait_status(&mgr, id, TaskStatus::Running);
    assert_eq!(mgr.delete_tasks(&TaskFilter::all().tag("gone")).unwrap(), 1);
    gate.open();
    eventually("the handler returns", || {
        seen.lock().unwrap().len() == 2 && mgr.running() == 0
    });
    assert!(mgr.get_task(id).is_none());
    let seen = seen.lock().unwrap().clone();
    // Fixed in session 16 (the test failed before the fix): TaskContext::write maps the engine's NotFound to
    // ContextError::Invalid (src/runtime/context.rs:307-310), so the handler
    // is told its arguments were bad instead of `Stale`.
    for r in &seen {
        assert!(
            r.starts_with("Err(Stale"),
            "a deleted task's write gave {r}"
        );
    }
    mgr.stop(PATIENCE).unwrap();
}

/// A parent resumed by hand while its child runs runs its next stage with no
/// child entries; the child finishes later without resuming it again. A
/// child deleted from under a waiting parent leaves the parent waiting, but
/// the parent can still be cancelled.
#[test]
fn control_calls_on_a_workflow_in_flight() {
    let clock = ManualClock::new(T0);
    let mgr = manager(&clock);
    let gate = Gate::new();
    let g = gate.clone();
    mgr.register("child", move |_| {
        g.wait();
        Ok(json!("kid").into())
    })
    .unwrap();
    let stages = Arc::new(Mutex::new(Vec::new()));
    let s = stages.clone();
    mgr.register("parent", move |ctx| {
        s.lock().unwrap().push((ctx.stage(), ctx.result().cloned()));
        if ctx.stage() == 0 {
            return Ok(Outcome::spawn(vec![
                ChildSpec::new("child", json!(1)),
                ChildSpec::new("child", json!(2)),
            ]));
        }
        Ok(json!("parent done").into())
    })
    .unwrap();
    mgr.start().unwrap();
    // A pause of a suspended parent is refused and changes nothing.
    let p = mgr.submit("parent", json!(null)).unwrap();
    wait_status(&mgr, p, TaskStatus::Suspended);
    refused_transition(
        mgr.pause_task(p),
        p,
        TaskStatus::Suspended,
        TaskStatus::Paused,
    );
    let kids = common::children_of(&mgr, p);
    assert_eq!(kids.len(), 2);
    gate.open();
    eventually("children done", || {
        kids.iter()
            .all(|k| status_of(&mgr, k.id) == TaskStatus::Completed)
    });
    let t = mgr.wait(p, PATIENCE).unwrap();
    assert_eq!(t.result, Some(json!("parent done")));
    // Resume by hand while the children run.
    let gate2 = Gate::new();
    let g2 = gate2.clone();
    mgr.register("child", move |_| {
        g2.wait();
        Ok(json!("kid2").into())
    })
    .unwrap();
    let p2 = mgr.submit("parent", json!(null)).unwrap();
    wait_status(&mgr, p2, TaskStatus::Suspended);
    let kids2 = common::children_of(&mgr, p2);
    mgr.resume_task(p2, Some("impatient")).unwrap();
    let t = mgr.wait(p2, PATIENCE).unwrap();
    assert_eq!(t.status, TaskStatus::Completed);
    assert_eq!(t.stage, 1);
    assert_eq!(
        stages.lock().unwrap().last().cloned(),
        Some((1, None)),
        "a parent resumed by hand sees no child entries"
    );
    let events = mgr.events(p2).unwrap().len();
    gate2.open();
    eventually("children of p2 done", || {
        kids2
            .iter()
            .all(|k| status_of(&mgr, k.id) == TaskStatus::Completed)
    });
    eventually("idle", || mgr.running() == 0);
    assert_eq!(
        mgr.events(p2).unwrap().len(),
        events,
        "a late child touched its parent"
    );
    assert_eq!(status_of(&mgr, p2), TaskStatus::Completed);
    check_history(&mgr, p2);
    // A running child deleted while its parent waits: the parent waits on,
    // and cancel still ends it.
    let gate3 = Gate::new();
    let g3 = gate3.clone();
    mgr.register("child", move |_| {
        g3.wait();
        Ok(json!("kid3").into())
    })
    .unwrap();
    let p3 = mgr.submit("parent", json!(null)).unwrap();
    wait_status(&mgr, p3, TaskStatus::Suspended);
    let kids3 = common::children_of(&mgr, p3);
    eventually("children of p3 run", || {
        kids3
            .iter()
            .all(|k| status_of(&mgr, k.id) == TaskStatus::Running)
    });
    assert_eq!(
        mgr.delete_tasks(&TaskFilter::all().parent(p3).status(TaskStatus::Running))
            .unwrap(),
        2
    );
    gate3.open();
    eventually("idle", || mgr.running() == 0);
    assert_eq!(status_of(&mgr, p3), TaskStatus::Suspended);
    assert!(matches!(
        mgr.wait(p3, Duration::ZERO),
        Err(Error::WaitTimeout { .. })
    ));
    mgr.cancel_task(p3, Some("children gone")).unwrap();
    assert_eq!(
        mgr.wait(p3, PATIENCE).unwrap().error.as_deref(),
        Some("children gone")
    );
    check_history(&mgr, p3);
    mgr.stop(PATIENCE).unwrap();
}

/// Many threads resume, cancel and pause one suspended task at once: exactly
/// one transition out of `suspended` wins, the others are refused typed, and
/// the stage advances once.
#[test]
fn concurrent_controls_on_one_suspended_task_have_one_winner() {
    for round in 0..20u64 {
        let clock = ManualClock::new(T0);
        let mgr = manager_arc(&clock);
        // Suspends on its first attempt only: a resume from paused (stage 0)
        // runs it to completion.
        mgr.register("susp", |ctx| {
            if ctx.attempt() == 1 {
                Ok(Outcome::suspend("approval"))
            } else {
                Ok(json!({"stage": ctx.stage()}).into())
            }
        })
        .unwrap();
        mgr.start().unwrap();
        let id = mgr.submit("susp", json!(null)).unwrap();
        wait_status(&mgr, id, TaskStatus::Suspended);
        let barrier = std::sync::Barrier::new(6);
        let results: Vec<(u8, fibflow::Result<()>)> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..6u8)
                .map(|k| {
                    let (m, b) = (&mgr, &barrier);
                    s.spawn(move || {
                        b.wait();
                        let kind = (k + round as u8) % 3;
                        let r = match kind {
                            0 => m.resume_task(id, Some("race")),
                            1 => m.cancel_task(id, Some("race")),
                            _ => m.pause_task(id),
                        };
                        (kind, r)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let winners: Vec<u8> = results
            .iter()
            .filter(|(_, r)| r.is_ok())
            .map(|(k, _)| *k)
            .collect();
        for (_, r) in &results {
            assert!(
                matches!(
                    r,
                    Ok(()) | Err(Error::Transition(TransitionError::InvalidTransition { .. }))
                ),
                "{r:?}"
            );
        }
        // Exactly one call took the task out of `suspended` (a pause, and a
        // resume of the paused task, may follow a winning resume).
        eventually("settled", || {
            let t = mgr.get_task(id).unwrap();
            t.status.is_terminal() && mgr.running() == 0
        });
        let events = mgr.events(id).unwrap();
        let out_of_suspended: Vec<_> = events
            .iter()
            .filter(|e| e.from_status == Some(TaskStatus::Suspended))
            .collect();
        assert_eq!(out_of_suspended.len(), 1, "round {round}: {results:?}");
        let t = mgr.get_task(id).unwrap();
        if winners.contains(&1) {
            assert_eq!(out_of_suspended[0].event_type, EventType::PermanentlyFailed);
            assert_eq!(t.status, TaskStatus::PermanentlyFailed);
            assert!(!winners.contains(&0), "round {round}: {results:?}");
        } else {
            assert_eq!(out_of_suspended[0].event_type, EventType::Resumed);
            assert!(winners.contains(&0), "round {round}: {results:?}");
            assert!(
                matches!(t.status, TaskStatus::Completed | TaskStatus::Paused),
                "{t:?}"
            );
        }
        check_history(&mgr, id);
        mgr.stop(PATIENCE).unwrap();
    }
}

/// SPEC §3: slots free on pause. A running task of a handler capped at one,
/// paused, lets the next task of that handler run while its handler still
/// runs; control calls on children keep the parent waiting until each child
/// is finished, and a cancelled child's reason reaches the parent.
#[test]
fn pause_frees_the_cap_slot_and_child_controls_reach_the_parent() {
    let clock = ManualClock::new(T0);
    let mgr = manager_arc(&clock);
    let gate = Gate::new();
    let g = gate.clone();
    mgr.register_with(
        "capped",
        HandlerOptions::new().max_concurrent_tasks(1),
        move |ctx| {
            if ctx.payload() == &json!("first") {
                g.wait();
            }
            Ok(json!("capped done").into())
        },
    )
    .unwrap();
    mgr.start().unwrap();
    let first = mgr.submit("capped", json!("first")).unwrap();
    wait_status(&mgr, first, TaskStatus::Running);
    let second = mgr.submit("capped", json!("second")).unwrap();
    assert!(matches!(
        mgr.wait(second, Duration::from_millis(30)),
        Err(Error::WaitTimeout { .. })
    ));
    mgr.pause_task(first).unwrap();
    assert_eq!(
        mgr.wait(second, PATIENCE).unwrap().status,
        TaskStatus::Completed,
        "the paused task's slot was not freed"
    );
    gate.open();
    eventually("idle", || mgr.running() == 0);
    assert_eq!(status_of(&mgr, first), TaskStatus::Paused);

    // Children: one suspends (then is cancelled), one is paused while
    // pending (then resumed): the parent sees both outcomes.
    mgr.register("kid", |ctx| match ctx.payload().as_str() {
        Some("ask") if ctx.stage() == 0 => Ok(Outcome::suspend("human")),
        Some(p) => Ok(json!(p).into()),
        None => Ok(Value::Null.into()),
    })
    .unwrap();
    let spawn_gate = Gate::new();
    let sg = spawn_gate.clone();
    mgr.register("parent", move |ctx| {
        if ctx.stage() == 0 {
            sg.wait();
            return Ok(Outcome::spawn(vec![
                ChildSpec::new("kid", json!("ask")),
                ChildSpec::new("kid", json!("later")),
            ]));
        }
        Ok(ctx.result().cloned().unwrap_or(Value::Null).into())
    })
    .unwrap();
    let p = mgr.submit("parent", json!(null)).unwrap();
    wait_status(&mgr, p, TaskStatus::Running);
    // Paused manager: the running parent spawns, its children wait.
    mgr.pause();
    spawn_gate.open();
    wait_status(&mgr, p, TaskStatus::Suspended);
    let kids = common::children_of(&mgr, p);
    assert_eq!(kids.len(), 2);
    mgr.pause_task(kids[1].id).unwrap();
    mgr.resume();
    wait_status(&mgr, kids[0].id, TaskStatus::Suspended);
    assert_eq!(status_of(&mgr, p), TaskStatus::Suspended);
    mgr.cancel_task(kids[0].id, Some("human said no")).unwrap();
    assert!(
        matches!(
            mgr.wait(p, Duration::from_millis(30)),
            Err(Error::WaitTimeout { .. })
        ),
        "the parent went on while a child was paused"
    );
    mgr.resume_task(kids[1].id, None).unwrap();
    let t = mgr.wait(p, PATIENCE).unwrap();
    assert_eq!(t.status, TaskStatus::Completed);
    assert_eq!(
        t.result,
        Some(json!([
            {"task_id": kids[0].id.0, "error": "human said no"},
            {"task_id": kids[1].id.0, "result": "later"},
        ]))
    );
    for id in [p, kids[0].id, kids[1].id, first] {
        check_history(&mgr, id);
    }
    mgr.stop(PATIENCE).unwrap();
}

/// Tasks held back by their handler's cap: paused and resumed, or deleted,
/// while held; each remaining one runs exactly once and the stale entries
/// hold no slot. A paused task whose handler is unregistered waits after
/// resume_task until it is registered again, then runs the new handler.
#[test]
fn controls_on_tasks_held_by_a_cap_and_on_unregistered_handlers() {
    let clock = ManualClock::new(T0);
    let mgr = manager_arc(&clock);
    let gate = Gate::new();
    let runs: Arc<Mutex<HashMap<u64, usize>>> = Arc::default();
    let (g, r) = (gate.clone(), runs.clone());
    mgr.register_with(
        "capped",
        HandlerOptions::new().max_concurrent_tasks(1),
        move |ctx| {
            *r.lock().unwrap().entry(ctx.id().0).or_default() += 1;
            g.wait();
            Ok(json!("done").into())
        },
    )
    .unwrap();
    mgr.start().unwrap();
    let a = mgr.submit("capped", json!("a")).unwrap();
    wait_status(&mgr, a, TaskStatus::Running);
    let held: Vec<TaskId> = (0..4)
        .map(|i| {
            mgr.submit_with(
                "capped",
                json!(i),
                SubmitOptions::new().tag(format!("h{i}")),
            )
            .unwrap()
        })
        .collect();
    assert!(mgr
        .waiting_reason(held[0])
        .unwrap()
        .unwrap()
        .contains("concurrency cap"));
    for _ in 0..3 {
        mgr.pause_task(held[0]).unwrap();
        mgr.resume_task(held[0], None).unwrap();
    }
    mgr.pause_task(held[1]).unwrap();
    assert_eq!(mgr.delete_tasks(&TaskFilter::all().tag("h2")).unwrap(), 1);
    gate.open();
    for id in [a, held[0], held[3]] {
        assert_eq!(
            mgr.wait(id, PATIENCE).unwrap().status,
            TaskStatus::Completed
        );
    }
    assert_eq!(status_of(&mgr, held[1]), TaskStatus::Paused);
    mgr.resume_task(held[1], None).unwrap();
    assert_eq!(
        mgr.wait(held[1], PATIENCE).unwrap().status,
        TaskStatus::Completed
    );
    eventually("idle", || mgr.running() == 0);
    let runs = runs.lock().unwrap().clone();
    for id in [a, held[0], held[1], held[3]] {
        assert_eq!(
            runs.get(&id.0),
            Some(&1),
            "task {id} ran {:?} times",
            runs.get(&id.0)
        );
    }
    assert!(!runs.contains_key(&held[2].0), "a deleted task ran");

    // Unregistered while paused: resumed, it waits for a handler.
    mgr.register("gone", |_| Ok(json!("v1").into())).unwrap();
    let id = mgr
        .submit_with("gone", json!(null), SubmitOptions::new().delay(HOUR))
        .unwrap();
    mgr.pause_task(id).unwrap();
    assert_eq!(mgr.unregister(&["gone"]), 1);
    mgr.resume_task(id, None).unwrap();
    assert_eq!(status_of(&mgr, id), TaskStatus::Pending);
    assert_eq!(
        mgr.waiting_reason(id).unwrap().as_deref(),
        Some("No handler registered for task: gone")
    );
    mgr.register("gone", |_| Ok(json!("v2").into())).unwrap();
    assert_eq!(mgr.wait(id, PATIENCE).unwrap().result, Some(json!("v2")));
    mgr.stop(PATIENCE).unwrap();
}

// ---------------------------------------------------------------------------
// wait()
// ---------------------------------------------------------------------------

/// Several waiters on one task all return at its terminal status with the
/// same snapshot: completed (with result), paused (by pause_task on a running
/// task, before its handler returns), permanently_failed (with error).
#[test]
fn wait_returns_at_each_terminal_status_to_every_waiter() {
    let clock = ManualClock::new(T0);
    let mgr = manager(&clock);
    let gate = Gate::new();
    let g = gate.clone();
    mgr.register("block", move |_| {
        g.wait();
        Ok(json!("value").into())
    })
    .unwrap();
    mgr.register_with("fail", HandlerOptions::new().max_retries(1), |_| {
        Err("bad input".into())
    })
    .unwrap();
    mgr.start().unwrap();
    let done = mgr.submit("block", json!(1)).unwrap();
    let paused = mgr.submit("block", json!(2)).unwrap();
    wait_status(&mgr, done, TaskStatus::Running);
    wait_status(&mgr, paused, TaskStatus::Running);
    std::thread::scope(|s| {
        let waiters: Vec<_> = (0..4)
            .map(|i| {
                let id = if i % 2 == 0 { done } else { paused };
                let m = &mgr;
                s.spawn(move || m.wait(id, PATIENCE))
            })
            .collect();
        mgr.pause_task(paused).unwrap();
        gate.open();
        for (i, w) in waiters.into_iter().enumerate() {
            let t = w.join().unwrap().unwrap();
            if i % 2 == 0 {
                assert_eq!(
                    (t.status, t.result),
                    (TaskStatus::Completed, Some(json!("value")))
                );
            } else {
                assert_eq!((t.status, t.result), (TaskStatus::Paused, None));
            }
        }
    });
    let failed = mgr.submit("fail", json!(null)).unwrap();
    let t = mgr.wait(failed, PATIENCE).unwrap();
    assert_eq!(t.status, TaskStatus::PermanentlyFailed);
    assert_eq!(t.error.as_deref(), Some("bad input"));
    mgr.stop(PATIENCE).unwrap();
}

/// wait does not return at a non-terminal status on the way (failed before a
/// retry, suspended awaiting children, a cron round back to pending); it
/// times out with a typed error naming the task and the time waited.
#[test]
fn wait_skips_intermediate_statuses_and_times_out_typed() {
    let clock = ManualClock::new(T0);
    let mgr = manager(&clock);
    let attempts = Arc::new(AtomicUsize::new(0));
    let seen = attempts.clone();
    mgr.register_with(
        "flaky",
        HandlerOptions::new().max_retries(3).retry_interval(MINUTE),
        move |_| {
            if seen.fetch_add(1, Ordering::SeqCst) < 2 {
                return Err("not yet".into());
            }
            Ok(json!("third time").into())
        },
    )
    .unwrap();
    mgr.register("cron", |_| Ok(json!("tick").into())).unwrap();
    mgr.start().unwrap();
    let id = mgr.submit("flaky", json!(null)).unwrap();
    wait_status(&mgr, id, TaskStatus::Failed);
    let short = Duration::from_millis(20);
    match mgr.wait(id, short) {
        Err(Error::WaitTimeout { id: i, waited }) => assert_eq!((i, waited), (id, short)),
        other => panic!("{other:?}"),
    }
    std::thread::scope(|s| {
        let mgr_ref = &mgr;
        let waiter = s.spawn(move || mgr_ref.wait(id, PATIENCE));
        clock.advance(MINUTE);
        wait_status(&mgr, id, TaskStatus::Failed);
        clock.advance(MINUTE);
        let task = waiter.join().unwrap().unwrap();
        assert_eq!(
            (task.status, task.result),
            (TaskStatus::Completed, Some(json!("third time")))
        );
        assert_eq!(task.retry_count, 2);
    });
    // A cron task never reaches seen terminal status by running.
    let cron_id = mgr
        .submit_with("cron", json!(null), SubmitOptions::new().cron(EVERY_MINUTE))
        .unwrap();
    clock.advance(MINUTE);
    eventually("a cron round", || {
        mgr.get_task(cron_id).unwrap().result == Some(json!("tick"))
    });
    assert!(matches!(
        mgr.wait(cron_id, Duration::from_millis(20)),
        Err(Error::WaitTimeout { .. })
    ));
    // ... but seen pause is one.
    mgr.pause_task(cron_id).unwrap();
    let task = mgr.wait(cron_id, PATIENCE).unwrap();
    assert_eq!(
        (task.status, task.result),
        (TaskStatus::Paused, Some(json!("tick")))
    );
    // A task deleted while seen waiter waits: the waiter gets NotFound.
    let far = mgr
        .submit_with(
            "cron",
            json!(null),
            SubmitOptions::new().delay(HOUR).tag("far"),
        )
        .unwrap();
    std::thread::scope(|s| {
        let mgr_ref = &mgr;
        let waiter = s.spawn(move || mgr_ref.wait(far, PATIENCE));
        eventually("the waiter waits", || !waiter.is_finished());
        assert_eq!(mgr.delete_tasks(&TaskFilter::all().tag("far")).unwrap(), 1);
        assert!(matches!(waiter.join().unwrap(), Err(Error::NotFound(i)) if i == far));
    });
    mgr.stop(PATIENCE).unwrap();
}

// ---------------------------------------------------------------------------
// Races: control calls against workers finishing the same tasks
// ---------------------------------------------------------------------------

#[test]
fn control_calls_racing_workers_lose_nothing_and_keep_histories_consistent() {
    const N: usize = 240;
    const CONTROLLERS: u64 = 3;
    const OPS: usize = 700;
    let mgr = Arc::new(
        TaskManager::builder()
            .memory()
            .max_concurrent_tasks(4)
            .build()
            .unwrap(),
    );
    // Per task id: handlers in flight now, and whether two ever overlapped.
    let inflight: Arc<Mutex<HashMap<u64, usize>>> = Arc::default();
    let overlapped: Arc<Mutex<HashSet<u64>>> = Arc::default();
    let tick = Arc::new(AtomicUsize::new(0));
    let over = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (inf, ovl) = (inflight.clone(), overlapped.clone());
    let (tk, ov) = (tick.clone(), over.clone());
    mgr.register("r", move |ctx| {
        let (tick, over) = (&tk, &ov);
        let i = ctx.payload()["i"].as_u64().unwrap();
        if i % 4 == 0 && ctx.stage() == 0 {
            return Ok(Outcome::suspend("hold"));
        }
        {
            let mut m = inf.lock().unwrap();
            let n = m.entry(ctx.id().0).or_default();
            *n += 1;
            if *n > 1 {
                ovl.lock().unwrap().insert(ctx.id().0);
            }
        }
        // Runs while a few control calls happen (or until they are over).
        let start = tick.load(Ordering::SeqCst);
        while tick.load(Ordering::SeqCst) < start + 1 + (i as usize % 5)
            && !over.load(Ordering::SeqCst)
        {
            std::thread::yield_now();
        }
        *inf.lock().unwrap().get_mut(&ctx.id().0).unwrap() -= 1;
        Ok(json!(i).into())
    })
    .unwrap();
    mgr.start().unwrap();
    let ids: Vec<TaskId> = (0..N)
        .map(|i| {
            mgr.submit_with(
                "r",
                json!({ "i": i }),
                SubmitOptions::new().tag(format!("t{i}")),
            )
            .unwrap()
        })
        .collect();
    let deleted: Arc<Mutex<HashSet<TaskId>>> = Arc::default();
    let cancelled: Arc<Mutex<HashSet<TaskId>>> = Arc::default();
    std::thread::scope(|s| {
        for seed in 0..CONTROLLERS {
            let (mgr, ids, deleted, cancelled, tick) = (&mgr, &ids, &deleted, &cancelled, &tick);
            s.spawn(move || {
                let mut rng = XorShift::new(seed + 7);
                for _ in 0..OPS {
                    // Half the time a task that is running now: the
                    // control call races its worker's outcome.
                    let running = if rng.below(2) == 0 {
                        mgr.list_tasks(&TaskFilter::all().status(TaskStatus::Running))
                    } else {
                        Vec::new()
                    };
                    tick.fetch_add(1, Ordering::SeqCst);
                    let pick = (!running.is_empty())
                        .then(|| &running[rng.below(running.len() as u64) as usize]);
                    let i = match pick {
                        Some(t) => t.payload["i"].as_u64().unwrap() as usize,
                        None => rng.below(N as u64) as usize,
                    };
                    let id = ids[i];
                    let r = match rng.below(20) {
                        0..=6 => mgr.pause_task(id),
                        7..=14 => mgr.resume_task(id, Some("go")),
                        15..=18 => {
                            let r = mgr.cancel_task(id, Some("race"));
                            if r.is_ok() {
                                cancelled.lock().unwrap().insert(id);
                            }
                            r
                        }
                        _ => match mgr.delete_tasks(&TaskFilter::all().tag(format!("t{i}"))) {
                            Ok(1) => {
                                deleted.lock().unwrap().insert(id);
                                Ok(())
                            }
                            Ok(0) => Err(Error::NotFound(id)),
                            other => panic!("delete of one task: {other:?}"),
                        },
                    };
                    match r {
                        Ok(())
                        | Err(
                            Error::NotFound(_)
                            | Error::Transition(TransitionError::InvalidTransition { .. }),
                        ) => {}
                        Err(e) => panic!("unexpected control error: {e}"),
                    }
                    std::thread::yield_now();
                }
            });
        }
    });
    over.store(true, Ordering::SeqCst);
    let deleted = deleted.lock().unwrap().clone();
    let cancelled = cancelled.lock().unwrap().clone();
    // Quiesce: resume whatever was left paused or suspended until every task
    // is finished.
    eventually("every task finished", || {
        let mut all_done = true;
        for &id in &ids {
            let Some(t) = mgr.get_task(id) else { continue };
            match t.status {
                TaskStatus::Completed | TaskStatus::PermanentlyFailed => {}
                TaskStatus::Paused | TaskStatus::Suspended => {
                    all_done = false;
                    let _ = mgr.resume_task(id, None);
                }
                _ => all_done = false,
            }
        }
        all_done
    });
    eventually("idle", || mgr.running() == 0);
    let overlapped = overlapped.lock().unwrap().clone();
    let (mut completed, mut failed) = (0, 0);
    for (i, &id) in ids.iter().enumerate() {
        if deleted.contains(&id) {
            assert!(mgr.get_task(id).is_none(), "deleted task {id} came back");
            continue;
        }
        let t = mgr.get_task(id).unwrap_or_else(|| panic!("task {id} lost"));
        check_history(&mgr, id);
        let attempts = mgr.attempts(id).unwrap();
        let completions = attempts
            .iter()
            .filter(|a| a.outcome == Some(AttemptOutcome::Completed))
            .count();
        match t.status {
            TaskStatus::Completed => {
                completed += 1;
                assert_eq!(t.result, Some(json!(i)), "task {id}");
                assert_eq!(completions, 1, "task {id}: {attempts:?}");
                assert_eq!(
                    attempts.last().unwrap().outcome,
                    Some(AttemptOutcome::Completed)
                );
                assert!(
                    !cancelled.contains(&id),
                    "task {id} was cancelled but completed"
                );
            }
            TaskStatus::PermanentlyFailed => {
                failed += 1;
                assert_eq!(t.error.as_deref(), Some("race"), "task {id}");
                assert!(cancelled.contains(&id), "task {id} failed without a cancel");
            }
            other => panic!("task {id} ended {other}"),
        }
        if overlapped.contains(&id.0) {
            let paused_running = mgr.events(id).unwrap().iter().any(|e| {
                e.event_type == EventType::Paused && e.from_status == Some(TaskStatus::Running)
            });
            assert!(
                paused_running,
                "task {id} ran twice at once without a pause in between"
            );
        }
    }
    let paused_running = ids
        .iter()
        .filter(|id| !deleted.contains(id))
        .flat_map(|&id| mgr.events(id).unwrap())
        .filter(|e| e.event_type == EventType::Paused && e.from_status == Some(TaskStatus::Running))
        .count();
    assert!(
        paused_running > 0,
        "no pause ever hit a running task: the test did not race"
    );
    assert_eq!(completed + failed + deleted.len(), N);
    assert_eq!(
        cancelled.difference(&deleted).count(),
        failed,
        "every successful cancel ended its task"
    );
    let counts = mgr.count_by_status();
    assert_eq!(counts.values().sum::<u64>() as usize, N - deleted.len());
    mgr.stop(PATIENCE).unwrap();
}

// ---------------------------------------------------------------------------
// Lifecycle (SPEC §13)
// ---------------------------------------------------------------------------

#[test]
fn start_twice_does_not_add_workers_and_submit_before_start_works() {
    let clock = ManualClock::new(T0);
    let mgr = Arc::new(
        TaskManager::builder()
            .memory()
            .clock(clock.clone())
            .max_concurrent_tasks(2)
            .build()
            .unwrap(),
    );
    let gate = Gate::new();
    let now = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let (g, n, p) = (gate.clone(), now.clone(), peak.clone());
    mgr.register("h", move |_| {
        let v = n.fetch_add(1, Ordering::SeqCst) + 1;
        p.fetch_max(v, Ordering::SeqCst);
        g.wait();
        n.fetch_sub(1, Ordering::SeqCst);
        Ok(json!("ok").into())
    })
    .unwrap();
    let ids: Vec<TaskId> = (0..6).map(|i| mgr.submit("h", json!(i)).unwrap()).collect();
    assert!(ids
        .iter()
        .all(|&id| status_of(&mgr, id) == TaskStatus::Pending));
    assert_eq!(
        mgr.waiting_reason(ids[0]).unwrap().as_deref(),
        Some("the manager is not started")
    );
    mgr.start().unwrap();
    mgr.start().unwrap();
    std::thread::scope(|s| {
        let m = &mgr;
        s.spawn(move || m.start().unwrap());
        s.spawn(move || m.start().unwrap());
    });
    eventually("two run", || now.load(Ordering::SeqCst) == 2);
    for _ in 0..200 {
        assert!(mgr.running() <= 2);
        std::thread::yield_now();
    }
    gate.open();
    for id in &ids {
        assert_eq!(
            mgr.wait(*id, PATIENCE).unwrap().status,
            TaskStatus::Completed
        );
    }
    assert_eq!(peak.load(Ordering::SeqCst), 2);
    mgr.stop(PATIENCE).unwrap();
}

/// stop(deadline) with a sync and an async handler that do not finish:
/// both are reported and recorded interrupted, are pending again, and their
/// late results are discarded. A handler that finishes in time is not.
#[test]
fn stop_past_its_deadline_interrupts_and_discards_late_results() {
    let clock = ManualClock::new(T0);
    let mgr = Arc::new(manager_arc(&clock));
    let gate = Gate::new();
    let release = Release::new();
    let gate_c = gate.clone();
    mgr.register("block", move |_| {
        gate_c.wait();
        Ok(json!("late").into())
    })
    .unwrap();
    let release_c = release.clone();
    mgr.register_async("ablock", move |_| {
        let release_c = release_c.clone();
        async move {
            release_c.wait().await;
            Ok(json!("late").into())
        }
    })
    .unwrap();
    mgr.register("ok", |_| Ok(json!("quick").into())).unwrap();
    mgr.start().unwrap();
    let quick = mgr.submit("ok", json!(null)).unwrap();
    mgr.wait(quick, PATIENCE).unwrap();
    let sync = mgr.submit("block", json!(null)).unwrap();
    let asyn = mgr.submit("ablock", json!(null)).unwrap();
    wait_status(&mgr, sync, TaskStatus::Running);
    wait_status(&mgr, asyn, TaskStatus::Running);
    let mgr_c = mgr.clone();
    let report = within("stop", PATIENCE, move || {
        mgr_c.stop(Duration::from_millis(50))
    })
    .unwrap();
    let mut got = report.interrupted.clone();
    got.sort_unstable();
    let mut want = vec![sync, asyn];
    want.sort_unstable();
    assert_eq!(got, want);
    for id in [sync, asyn] {
        let task = mgr.get_task(id).unwrap();
        assert_eq!(task.status, TaskStatus::Pending, "task {id}");
        assert_eq!(task.retry_count, 0);
        let attempt = mgr.attempts(id).unwrap().pop().unwrap();
        assert_eq!(attempt.outcome, Some(AttemptOutcome::Interrupted));
        assert!(attempt.error.is_some());
        assert_eq!(last_event(&mgr, id).event_type, EventType::Recovered);
        check_history(&mgr, id);
    }
    let before: Vec<_> = [sync, asyn]
        .iter()
        .map(|&id| fingerprint(&mgr, id))
        .collect();
    gate.open();
    release.open();
    eventually("the old handlers return", || mgr.running() == 0);
    let after: Vec<_> = [sync, asyn]
        .iter()
        .map(|&id| fingerprint(&mgr, id))
        .collect();
    assert_eq!(before, after, "a late result after stop was recorded");
    assert_eq!(status_of(&mgr, quick), TaskStatus::Completed);
    // A second stop is harmless.
    assert_eq!(mgr.stop(Duration::ZERO).unwrap().interrupted, Vec::new());
}

fn manager_arc(clock: &Arc<ManualClock>) -> TaskManager {
    TaskManager::builder()
        .memory()
        .clock(clock.clone())
        .max_concurrent_tasks(4)
        .build()
        .unwrap()
}

/// Every recording call after stop is refused with `Stopped` (also for ids
/// that do not exist), and changes nothing.
#[test]
fn calls_after_stop_are_refused_typed_and_change_nothing() {
    let clock = ManualClock::new(T0);
    let mgr = manager_arc(&clock);
    mgr.register("ok", |_| Ok(json!(1).into())).unwrap();
    mgr.register("susp", |_| Ok(Outcome::suspend("wait")))
        .unwrap();
    mgr.start().unwrap();
    let done = mgr.submit("ok", json!(null)).unwrap();
    mgr.wait(done, PATIENCE).unwrap();
    let s = mgr.submit("susp", json!(null)).unwrap();
    wait_status(&mgr, s, TaskStatus::Suspended);
    let p = mgr
        .submit_with("ok", json!(null), SubmitOptions::new().delay(HOUR))
        .unwrap();
    mgr.stop(PATIENCE).unwrap();
    let before: Vec<_> = [done, s, p]
        .iter()
        .map(|&id| fingerprint(&mgr, id))
        .collect();
    let stopped = |r: fibflow::Result<()>, what: &str| {
        assert!(matches!(r, Err(Error::Stopped)), "{what}: {r:?}");
    };
    for id in [done, s, p, TaskId(u64::MAX)] {
        stopped(mgr.pause_task(id), "pause_task");
        stopped(mgr.resume_task(id, None), "resume_task");
        stopped(mgr.resume_task(id, Some("r")), "resume_task reason");
        stopped(mgr.cancel_task(id, None), "cancel_task");
        stopped(mgr.cancel_task(id, Some("r")), "cancel_task reason");
    }
    stopped(
        mgr.delete_tasks(&TaskFilter::all()).map(|_| ()),
        "delete_tasks",
    );
    stopped(mgr.submit("ok", json!(null)).map(|_| ()), "submit");
    stopped(mgr.start(), "start");
    assert_eq!(
        mgr.wait(done, Duration::ZERO).unwrap().status,
        TaskStatus::Completed
    );
    let after: Vec<_> = [done, s, p]
        .iter()
        .map(|&id| fingerprint(&mgr, id))
        .collect();
    assert_eq!(before, after);
    assert_eq!(mgr.list_tasks(&TaskFilter::all()).len(), 3);
}

/// A `wait` in progress when the manager stops, on a task that can no longer
/// change (nothing will ever run it in this manager), returns promptly with a
/// typed error instead of blocking the caller for its whole deadline.
#[test]
fn a_wait_in_progress_returns_when_the_manager_stops() {
    let clock = ManualClock::new(T0);
    let mgr = Arc::new(manager_arc(&clock));
    mgr.register("ok", |_| Ok(json!(1).into())).unwrap();
    mgr.start().unwrap();
    let p = mgr
        .submit_with("ok", json!(null), SubmitOptions::new().delay(HOUR))
        .unwrap();
    let m = mgr.clone();
    let waiter = std::thread::spawn(move || m.wait(p, Duration::from_secs(3600)));
    eventually("the waiter waits", || !waiter.is_finished());
    mgr.stop(PATIENCE).unwrap();
    // Fixed in session 16 (the test failed before the fix): stop never wakes `core.waiters` (src/api/mod.rs:417-451) and the
    // wait loop never looks at `core.stopping` (src/api/mod.rs:509-523), so
    // a caller blocked in wait() sleeps out its whole deadline (here an
    // hour) on a task this stopped manager can never move.
    let r = within("wait after stop", Duration::from_secs(5), move || {
        waiter.join().unwrap()
    });
    assert!(matches!(r, Err(Error::Stopped)), "{r:?}");
}

/// Manager pause() gates claims only: running handlers finish, submissions
/// and control calls work, due timers still fire (the task waits queued),
/// and resume() lets everything run.
#[test]
fn manager_pause_gates_claims_only() {
    let clock = ManualClock::new(T0);
    let mgr = manager_arc(&clock);
    let gate = Gate::new();
    let g = gate.clone();
    mgr.register("block", move |_| {
        g.wait();
        Ok(json!("finished while paused").into())
    })
    .unwrap();
    mgr.register("ok", |_| Ok(json!("ran").into())).unwrap();
    mgr.register("susp", |ctx| {
        if ctx.stage() == 0 {
            Ok(Outcome::suspend("approval"))
        } else {
            Ok(json!("approved").into())
        }
    })
    .unwrap();
    mgr.start().unwrap();
    let running = mgr.submit("block", json!(null)).unwrap();
    let s = mgr.submit("susp", json!(null)).unwrap();
    wait_status(&mgr, running, TaskStatus::Running);
    wait_status(&mgr, s, TaskStatus::Suspended);
    mgr.pause();
    mgr.pause();
    let fresh = mgr.submit("ok", json!(null)).unwrap();
    let delayed = mgr
        .submit_with("ok", json!(null), SubmitOptions::new().delay(MINUTE))
        .unwrap();
    let to_pause = mgr.submit("ok", json!(null)).unwrap();
    mgr.pause_task(to_pause).unwrap();
    mgr.resume_task(s, None).unwrap();
    gate.open();
    assert_eq!(
        mgr.wait(running, PATIENCE).unwrap().result,
        Some(json!("finished while paused"))
    );
    clock.advance(2 * MINUTE);
    eventually("idle", || mgr.running() == 0);
    for id in [fresh, delayed, s] {
        assert_eq!(
            status_of(&mgr, id),
            TaskStatus::Pending,
            "task {id} ran while paused"
        );
        assert_eq!(
            mgr.waiting_reason(id).unwrap().as_deref(),
            Some("the manager is paused")
        );
    }
    assert_eq!(status_of(&mgr, to_pause), TaskStatus::Paused);
    mgr.resume();
    mgr.resume();
    for id in [fresh, delayed] {
        assert_eq!(mgr.wait(id, PATIENCE).unwrap().result, Some(json!("ran")));
    }
    assert_eq!(
        mgr.wait(s, PATIENCE).unwrap().result,
        Some(json!("approved"))
    );
    assert_eq!(status_of(&mgr, to_pause), TaskStatus::Paused);
    mgr.stop(PATIENCE).unwrap();
}

/// While the manager is paused, a running task still times out (timeouts
/// belong to running attempts, not to claims) and a cron occurrence that
/// comes due waits; after resume() both run once; stop of a paused manager
/// returns at once with nothing interrupted.
#[test]
fn manager_pause_keeps_timeouts_and_defers_cron_rounds() {
    let clock = ManualClock::new(T0);
    let mgr = Arc::new(manager_arc(&clock));
    let release = Release::new();
    let r = release.clone();
    let attempts = Arc::new(AtomicUsize::new(0));
    let a = attempts.clone();
    mgr.register_async_with(
        "slow",
        HandlerOptions::new()
            .timeout(Duration::from_secs(1))
            .max_retries(2),
        move |_| {
            let (r, n) = (r.clone(), a.fetch_add(1, Ordering::SeqCst));
            async move {
                if n == 0 {
                    r.wait().await;
                }
                Ok(json!("second try").into())
            }
        },
    )
    .unwrap();
    let rounds = Arc::new(AtomicUsize::new(0));
    let rn = rounds.clone();
    mgr.register("tick", move |_| {
        rn.fetch_add(1, Ordering::SeqCst);
        Ok(json!("tick").into())
    })
    .unwrap();
    mgr.start().unwrap();
    let slow = mgr.submit("slow", json!(null)).unwrap();
    wait_status(&mgr, slow, TaskStatus::Running);
    let cron = mgr
        .submit_with("tick", json!(null), SubmitOptions::new().cron(EVERY_MINUTE))
        .unwrap();
    mgr.pause();
    clock.advance(MINUTE);
    eventually("the timeout fires while paused", || {
        let t = mgr.get_task(slow).unwrap();
        t.status == TaskStatus::Pending && t.retry_count == 1
    });
    eventually("the cancelled attempt returns", || mgr.running() == 0);
    assert_eq!(
        mgr.attempts(cron).unwrap().len(),
        0,
        "a cron round ran while paused"
    );
    assert_eq!(status_of(&mgr, cron), TaskStatus::Pending);
    mgr.resume();
    assert_eq!(
        mgr.wait(slow, PATIENCE).unwrap().result,
        Some(json!("second try"))
    );
    eventually("one cron round", || rounds.load(Ordering::SeqCst) == 1);
    eventually("idle", || mgr.running() == 0);
    assert_eq!(
        rounds.load(Ordering::SeqCst),
        1,
        "a deferred round ran twice"
    );
    mgr.pause();
    let pending = mgr.submit("tick", json!(null)).unwrap();
    let m = mgr.clone();
    let report = within("stop of a paused manager", PATIENCE, move || {
        m.stop(PATIENCE)
    })
    .unwrap();
    assert!(report.interrupted.is_empty());
    assert_eq!(status_of(&mgr, pending), TaskStatus::Pending);
}

/// pause() before start: start does not claim until resume().
#[test]
fn manager_paused_before_start_claims_nothing_until_resumed() {
    let clock = ManualClock::new(T0);
    let mgr = manager_arc(&clock);
    mgr.register("ok", |_| Ok(json!("ran").into())).unwrap();
    let id = mgr.submit("ok", json!(null)).unwrap();
    mgr.pause();
    mgr.start().unwrap();
    assert!(matches!(
        mgr.wait(id, Duration::from_millis(50)),
        Err(Error::WaitTimeout { .. })
    ));
    assert_eq!(mgr.attempts(id).unwrap().len(), 0);
    mgr.resume();
    assert_eq!(
        mgr.wait(id, PATIENCE).unwrap().status,
        TaskStatus::Completed
    );
    mgr.stop(PATIENCE).unwrap();
}

/// Dropping a started manager without stop, while a sync and an async
/// handler block, returns (it does not wait for them forever).
#[test]
fn dropping_a_manager_without_stop_does_not_hang() {
    let gate = Gate::new();
    let release = Release::new();
    let (g, r) = (gate.clone(), release.clone());
    within("drop without stop", PATIENCE, move || {
        let clock = ManualClock::new(T0);
        let mgr = manager_arc(&clock);
        mgr.register("block", move |_| {
            g.wait();
            Ok(json!(1).into())
        })
        .unwrap();
        mgr.register_async("ablock", move |_| {
            let r = r.clone();
            async move {
                r.wait().await;
                Ok(json!(1).into())
            }
        })
        .unwrap();
        mgr.start().unwrap();
        let a = mgr.submit("block", json!(null)).unwrap();
        let b = mgr.submit("ablock", json!(null)).unwrap();
        wait_status(&mgr, a, TaskStatus::Running);
        wait_status(&mgr, b, TaskStatus::Running);
        drop(mgr);
    });
    gate.open();
    release.open();
    // Unstarted and paused managers drop too.
    within("drop unstarted", PATIENCE, || {
        let mgr = TaskManager::in_memory().unwrap();
        mgr.register("ok", |_| Ok(json!(1).into())).unwrap();
        mgr.submit("ok", json!(null)).unwrap();
        mgr.pause();
        drop(mgr);
    });
}

/// start and stop racing from two threads: either order ends with a
/// stopped manager that refuses work, runs nothing after stop, and drops.
#[test]
fn start_racing_stop_ends_stopped_and_drops() {
    within("start/stop races", PATIENCE, || {
        for _ in 0..30 {
            let mgr = TaskManager::in_memory().unwrap();
            mgr.register("ok", |_| Ok(json!(1).into())).unwrap();
            let id = mgr.submit("ok", json!(null)).unwrap();
            let barrier = std::sync::Barrier::new(2);
            let (started, stopped) = std::thread::scope(|s| {
                let a = s.spawn(|| {
                    barrier.wait();
                    mgr.start()
                });
                let b = s.spawn(|| {
                    barrier.wait();
                    mgr.stop(PATIENCE)
                });
                (a.join().unwrap(), b.join().unwrap())
            });
            assert!(
                matches!(started, Ok(()) | Err(Error::Stopped)),
                "{started:?}"
            );
            assert!(stopped.is_ok(), "{stopped:?}");
            assert!(matches!(mgr.start(), Err(Error::Stopped)));
            assert!(matches!(mgr.submit("ok", json!(null)), Err(Error::Stopped)));
            let t = mgr.get_task(id).unwrap();
            assert!(
                matches!(t.status, TaskStatus::Pending | TaskStatus::Completed),
                "{t:?}"
            );
            check_history(&mgr, id);
            drop(mgr);
        }
    });
}

/// Helper for tests: the manual clock's reading.
trait NowMs {
    fn now_ms_for_test(&self) -> u64;
}

impl NowMs for Arc<ManualClock> {
    fn now_ms_for_test(&self) -> u64 {
        use fibflow::Clock;
        self.now_ms()
    }
}
