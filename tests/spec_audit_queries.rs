//! SPEC §9 (Audit), §10 (Queries) and §11 (Retention), one rule per test,
//! checked through the public API only. Time-dependent rules run on a manual
//! clock; waits are on conditions with generous deadlines, never fixed sleeps.
//! Durable cases use a temp directory and reopen it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{build_unlocked, eventually, Gate, PATIENCE};
use fibflow::{
    Attempt, AttemptFilter, AttemptOutcome, ChildSpec, ContextError, Error, Event, EventFilter,
    EventType, HandlerOptions, HandlerResult, ManualClock, Outcome, Page, Paged, Progress,
    RetentionPolicy, SubmitOptions, Task, TaskContext, TaskFilter, TaskId, TaskKind, TaskManager,
    TaskStatus, TimeZone,
};
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

/// 2023-11-14T22:13:20Z.
const T0: u64 = 1_700_000_000_000;
const SEC: Duration = Duration::from_secs(1);

// ---------------------------------------------------------------------------
// helpers
// ---------------------------------------------------------------------------

fn builder(clock: &Arc<ManualClock>, workers: usize) -> fibflow::Builder {
    TaskManager::builder()
        .clock(clock.clone())
        .time_zone(TimeZone::from_name("UTC").unwrap())
        .max_concurrent_tasks(workers)
}

/// An in-memory manager on a manual clock standing at `T0`.
fn mem(workers: usize) -> (TaskManager, Arc<ManualClock>) {
    let clock = ManualClock::new(T0);
    let mgr = builder(&clock, workers).memory().build().unwrap();
    (mgr, clock)
}

fn durable_builder(dir: &Path, clock: &Arc<ManualClock>, workers: usize) -> fibflow::Builder {
    builder(clock, workers).dir(dir).segment_size(1 << 20)
}

fn open(dir: &Path, clock: &Arc<ManualClock>, workers: usize) -> TaskManager {
    build_unlocked(durable_builder(dir, clock, workers)).unwrap()
}

fn shut(mgr: TaskManager) {
    mgr.stop(PATIENCE).unwrap();
    drop(mgr);
}

fn page(limit: usize, offset: usize, descending: bool) -> Page {
    Page {
        limit,
        offset,
        descending,
    }
}

fn big() -> Page {
    page(usize::MAX, 0, false)
}

fn status(mgr: &TaskManager, id: TaskId) -> TaskStatus {
    mgr.get_task(id).unwrap().status
}

fn wait_status(mgr: &TaskManager, id: TaskId, s: TaskStatus) -> Task {
    eventually(&format!("task {id} becomes {s}"), || status(mgr, id) == s);
    mgr.get_task(id).unwrap()
}

/// Waits until the task has `n` attempts, all closed (e.g. a failure whose
/// retry waits for its backoff timer).
fn attempts_closed(mgr: &TaskManager, id: TaskId, n: usize) {
    eventually(&format!("{n} closed attempts of task {id}"), || {
        let a = mgr.attempts(id).unwrap();
        a.len() == n
            && a.iter().all(|a| a.ended_at.is_some())
            && status(mgr, id) != TaskStatus::Running
    });
}

fn types(events: &[Event]) -> Vec<&'static str> {
    events.iter().map(|e| e.event_type.as_str()).collect()
}

fn ids(tasks: &[Task]) -> Vec<TaskId> {
    tasks.iter().map(|t| t.id).collect()
}

fn all_tasks(mgr: &TaskManager) -> Vec<Task> {
    mgr.list_tasks(&TaskFilter::all())
}

/// Every status-changing event goes from the status the previous one left to a
/// status the SPEC §2 table allows; events that change nothing carry either
/// no statuses or the current one on both sides; the chain ends at the task's
/// status.
fn assert_status_chain(mgr: &TaskManager, id: TaskId) {
    let evs = mgr.events(id).unwrap();
    let mut cur: Option<TaskStatus> = None;
    for e in &evs {
        if e.event_type == EventType::SubtasksCreated {
            // fib-flow's `insertTask`: it announces the suspension that the
            // following `task_status_changed` records.
            assert_eq!(
                (e.from_status, e.to_status),
                (cur, Some(TaskStatus::Suspended)),
                "task {id}: task_subtasks_created"
            );
            continue;
        }
        match (e.from_status, e.to_status) {
            (from, Some(to)) => {
                assert_eq!(
                    from,
                    cur,
                    "task {id}: {} claims to come from {from:?} but the task was {cur:?}: {:?}",
                    e.event_type,
                    evs.iter()
                        .map(|e| (e.event_type.as_str(), e.from_status, e.to_status))
                        .collect::<Vec<_>>()
                );
                if let Some(c) = cur {
                    assert!(
                        c == to || c.can_become(to),
                        "task {id}: {} is {c} -> {to}, not allowed by SPEC §2",
                        e.event_type
                    );
                }
                cur = Some(to);
            }
            (None, None) => {}
            (Some(f), None) => panic!("task {id}: {} has from {f} but no to", e.event_type),
        }
    }
    assert_eq!(
        cur,
        Some(mgr.get_task(id).unwrap().status),
        "task {id}: event chain ends elsewhere than the task's status: {:?}",
        types(&evs)
    );
}

/// A page is a window of the full, ordered list.
fn assert_page_of<T: PartialEq + std::fmt::Debug + Clone>(full: &[T], p: &Paged<T>, pg: Page) {
    let mut ordered = full.to_vec();
    if pg.descending {
        ordered.reverse();
    }
    let want: Vec<T> = ordered.into_iter().skip(pg.offset).take(pg.limit).collect();
    assert_eq!(p.items, want, "page {pg:?}");
    assert_eq!(p.total, full.len(), "total of page {pg:?}");
    assert_eq!(p.limit, pg.limit);
    assert_eq!(p.offset, pg.offset);
    assert_eq!(
        p.has_more,
        pg.offset.saturating_add(p.items.len()) < full.len(),
        "has_more of page {pg:?}"
    );
}

/// One step a remote-controlled handler runs: `Ack(text)` goes back to the
/// test and the handler waits for the next step; `Finish` ends the attempt.
enum Step {
    Ack(String),
    Finish(HandlerResult),
}

type Cmd = Box<dyn FnOnce(&TaskContext) -> Step + Send>;

/// Drives one running attempt of a handler step by step from the test, so the
/// test can move the manual clock between the handler's calls.
struct Remote {
    tx: mpsc::Sender<Cmd>,
    acks: mpsc::Receiver<String>,
}

impl Remote {
    /// Registers `name` as a remote-controlled handler with `opts`.
    fn register(mgr: &TaskManager, name: &str, opts: HandlerOptions) -> Remote {
        let (tx, rx) = mpsc::channel::<Cmd>();
        let (ack_tx, acks) = mpsc::channel::<String>();
        let rx = Arc::new(Mutex::new(rx));
        let ack_tx = Mutex::new(ack_tx);
        mgr.register_with(name, opts, move |ctx| loop {
            let cmd = rx.lock().unwrap().recv();
            match cmd {
                Err(_) => return Err("remote gone".into()),
                Ok(cmd) => match cmd(ctx) {
                    Step::Ack(s) => {
                        let _ = ack_tx.lock().unwrap().send(s);
                    }
                    Step::Finish(r) => return r,
                },
            }
        })
        .unwrap();
        Remote { tx, acks }
    }

    /// Runs `f` in the handler and returns its acknowledgement.
    fn call(&self, f: impl FnOnce(&TaskContext) -> String + Send + 'static) -> String {
        self.tx
            .send(Box::new(move |ctx| Step::Ack(f(ctx))))
            .unwrap();
        self.acks.recv_timeout(PATIENCE).expect("handler answered")
    }

    /// Ends the running attempt with `r`.
    fn finish(&self, r: impl FnOnce() -> HandlerResult + Send + 'static) {
        self.tx.send(Box::new(move |_| Step::Finish(r()))).unwrap();
    }
}

/// The ids of a varied population (see [`populate`]).
#[derive(Debug, Clone, Copy)]
struct Pop {
    ok_a: TaskId,
    ok_b: TaskId,
    ok_none: TaskId,
    bad: TaskId,
    hold: TaskId,
    root: TaskId,
    mid: TaskId,
    cron: TaskId,
    delayed: TaskId,
    paused: TaskId,
}

/// Registers handlers, starts the manager and settles a varied population:
/// completed tasks with tags `a`, `b` and none; a permanently failed one
/// (tag `a`, after a retry); a suspended one (tag `b`, reason `review`); a
/// three-level workflow (root tagged `wf`, children `kid` tagged `a` and
/// `mid`, grandchild `kid` tagged `deep`); a pending cron task (tag `a`); a
/// pending delayed task (tag `b`); a paused task. The clock moves between some
/// submissions so creation times differ, others share one.
fn populate(mgr: &TaskManager, clock: &ManualClock) -> Pop {
    mgr.register(
        "ok",
        |ctx| Ok(json!({"echo": ctx.payload().clone()}).into()),
    )
    .unwrap();
    mgr.register_with("bad", HandlerOptions::new().max_retries(2), |_| {
        Err("boom".into())
    })
    .unwrap();
    mgr.register("hold", |_| Ok(Outcome::suspend("review")))
        .unwrap();
    mgr.register(
        "kid",
        |ctx| Ok(json!({"kid": ctx.payload().clone()}).into()),
    )
    .unwrap();
    mgr.register("mid", |ctx| match ctx.stage() {
        0 => Ok(Outcome::spawn(vec![
            ChildSpec::new("kid", json!("g")).tag("deep")
        ])),
        _ => Ok(json!("mid done").into()),
    })
    .unwrap();
    mgr.register("parent", |ctx| match ctx.stage() {
        0 => Ok(Outcome::spawn(vec![
            ChildSpec::new("kid", json!(1)).tag("a"),
            ChildSpec::new("mid", json!(2)),
        ])),
        _ => Ok(json!("root done").into()),
    })
    .unwrap();
    mgr.register("tick", |_| Ok(json!(null).into())).unwrap();
    mgr.start().unwrap();
    let tagged = |t: &str| SubmitOptions::new().tag(t);
    let ok_a = mgr.submit_with("ok", json!(1), tagged("a")).unwrap();
    let ok_b = mgr.submit_with("ok", json!(2), tagged("b")).unwrap();
    clock.advance(SEC);
    let ok_none = mgr.submit("ok", json!(3)).unwrap();
    let bad = mgr.submit_with("bad", json!(4), tagged("a")).unwrap();
    clock.advance(SEC);
    let hold = mgr.submit_with("hold", json!(5), tagged("b")).unwrap();
    let root = mgr.submit_with("parent", json!(6), tagged("wf")).unwrap();
    clock.advance(SEC);
    let cron = mgr
        .submit_with("tick", json!(7), tagged("a").cron("0 0 1 1 *"))
        .unwrap();
    let delayed = mgr
        .submit_with("ok", json!(8), tagged("b").delay(Duration::from_secs(3600)))
        .unwrap();
    let paused = mgr
        .submit_with(
            "ok",
            json!(9),
            SubmitOptions::new().delay(Duration::from_secs(3600)),
        )
        .unwrap();
    mgr.pause_task(paused).unwrap();
    for id in [ok_a, ok_b, ok_none, bad, root] {
        mgr.wait(id, PATIENCE).unwrap();
    }
    wait_status(mgr, hold, TaskStatus::Suspended);
    let mid = mgr
        .list_tasks(&TaskFilter::all().name("mid"))
        .first()
        .unwrap()
        .id;
    assert_eq!(status(mgr, root), TaskStatus::Completed);
    assert_eq!(status(mgr, bad), TaskStatus::PermanentlyFailed);
    Pop {
        ok_a,
        ok_b,
        ok_none,
        bad,
        hold,
        root,
        mid,
        cron,
        delayed,
        paused,
    }
}

/// The SPEC §10 meaning of a task filter, computed by hand from the full list:
/// every given field must match (AND); `workflow` = the task itself or any
/// task whose parent chain reaches it.
fn by_hand(all: &[Task], f: &TaskFilter) -> Vec<TaskId> {
    let parent: BTreeMap<TaskId, Option<TaskId>> =
        all.iter().map(|t| (t.id, t.parent_id)).collect();
    let in_workflow = |t: &Task, r: TaskId| {
        let mut at = Some(t.id);
        while let Some(i) = at {
            if i == r {
                return true;
            }
            at = parent.get(&i).copied().flatten();
        }
        false
    };
    all.iter()
        .filter(|t| {
            f.name.as_ref().is_none_or(|n| *t.name == **n)
                && f.status.is_none_or(|s| s == t.status)
                && f.kind.is_none_or(|k| k == t.kind)
                && f.tag.as_ref().is_none_or(|g| t.tag.as_ref() == Some(g))
                && f.worker
                    .as_ref()
                    .is_none_or(|w| t.worker.as_deref() == Some(w.as_str()))
                && f.parent_id.is_none_or(|p| t.parent_id == Some(p))
                && f.root_id.is_none_or(|r| t.root_id == Some(r))
                && f.workflow.is_none_or(|r| in_workflow(t, r))
        })
        .map(|t| t.id)
        .collect()
}

/// One-field filters over the population's values (present and absent ones).
fn single_field_filters(p: &Pop) -> Vec<TaskFilter> {
    let d = TaskFilter::default;
    let mut v = Vec::new();
    for n in ["ok", "kid", "mid", "parent", "nope"] {
        v.push(d().name(n));
    }
    for s in TaskStatus::ALL {
        v.push(d().status(s));
    }
    for k in [TaskKind::Async, TaskKind::Cron] {
        v.push(TaskFilter {
            kind: Some(k),
            ..d()
        });
    }
    for t in ["a", "b", "wf", "deep", "zzz"] {
        v.push(d().tag(t));
    }
    for w in ["default-0", "default-1", "nope"] {
        v.push(TaskFilter {
            worker: Some(w.into()),
            ..d()
        });
    }
    for id in [p.root, p.mid, p.ok_a] {
        v.push(d().parent(id));
        v.push(TaskFilter {
            root_id: Some(id),
            ..d()
        });
    }
    for id in [p.root, p.ok_a, p.hold] {
        v.push(d().workflow(id));
    }
    v
}

/// Two filters merged into one (the second's fields win where both set one).
fn merge(a: &TaskFilter, b: &TaskFilter) -> TaskFilter {
    TaskFilter {
        name: b.name.clone().or(a.name.clone()),
        status: b.status.or(a.status),
        kind: b.kind.or(a.kind),
        tag: b.tag.clone().or(a.tag.clone()),
        worker: b.worker.clone().or(a.worker.clone()),
        parent_id: b.parent_id.or(a.parent_id),
        root_id: b.root_id.or(a.root_id),
        workflow: b.workflow.or(a.workflow),
        suspend_reason: b.suspend_reason.clone().or(a.suspend_reason.clone()),
    }
}

/// Everything the queries show, for comparing two managers.
#[derive(Debug, PartialEq)]
struct View {
    tasks: Vec<Task>,
    events: Vec<Vec<Event>>,
    attempts: Vec<Vec<Attempt>>,
    counts: BTreeMap<TaskStatus, u64>,
    stats: BTreeMap<(Option<String>, String, TaskStatus), u64>,
    by_tag: Vec<Vec<TaskId>>,
    by_workflow: Vec<TaskId>,
}

fn view(mgr: &TaskManager, root: Option<TaskId>) -> View {
    let tasks = all_tasks(mgr);
    View {
        events: tasks.iter().map(|t| mgr.events(t.id).unwrap()).collect(),
        attempts: tasks.iter().map(|t| mgr.attempts(t.id).unwrap()).collect(),
        counts: mgr.count_by_status(),
        stats: mgr.stats_by_tag(None),
        by_tag: ["a", "b", "wf", "deep"]
            .iter()
            .map(|t| ids(&mgr.list_tasks(&TaskFilter::all().tag(*t))))
            .collect(),
        by_workflow: root.map_or_else(Vec::new, |r| {
            ids(&mgr.list_tasks(&TaskFilter::all().workflow(r)))
        }),
        tasks,
    }
}

/// Counts by status, computed from the task list.
fn counts_by_hand(mgr: &TaskManager) -> BTreeMap<TaskStatus, u64> {
    let mut m: BTreeMap<TaskStatus, u64> = TaskStatus::ALL.iter().map(|s| (*s, 0)).collect();
    for t in all_tasks(mgr) {
        *m.get_mut(&t.status).unwrap() += 1;
    }
    m
}

// ---------------------------------------------------------------------------
// §9 Audit
// ---------------------------------------------------------------------------

/// SPEC §9: "Event types: task_created, task_claimed, task_started,
/// task_retry_started, task_completed, task_failed, task_timed_out,
/// task_retry_scheduled, task_paused, task_permanently_failed, task_suspended,
/// task_resumed, task_recovered, task_status_changed, task_subtasks_created,
/// task_progress, task_checkpoint."
#[test]
fn s9_event_types_are_exactly_the_spec_list() {
    let spec: BTreeSet<&str> = [
        "task_created",
        "task_claimed",
        "task_started",
        "task_retry_started",
        "task_completed",
        "task_failed",
        "task_timed_out",
        "task_retry_scheduled",
        "task_paused",
        "task_permanently_failed",
        "task_suspended",
        "task_resumed",
        "task_recovered",
        "task_status_changed",
        "task_subtasks_created",
        "task_progress",
        "task_checkpoint",
    ]
    .into_iter()
    .collect();
    let have: BTreeSet<&str> = EventType::ALL.iter().map(|t| t.as_str()).collect();
    assert_eq!(have, spec);
    assert_eq!(EventType::ALL.len(), spec.len(), "no duplicates");
    for t in EventType::ALL {
        assert_eq!(t.as_str().parse::<EventType>().unwrap(), *t);
    }
    let e = "task_exploded".parse::<EventType>().unwrap_err();
    assert!(e.to_string().contains("task_exploded"), "{e}");
}

/// SPEC §9: "A plain successful task has exactly: created, claimed, started,
/// completed", with the SPEC §1 event fields: task id, root/parent, from/to
/// status, stage, worker, attempt, time.
#[test]
fn s9_plain_successful_task_has_exactly_created_claimed_started_completed() {
    let (mgr, clock) = mem(1);
    mgr.register("ok", |_| Ok(json!("fine").into())).unwrap();
    let id = mgr.submit("ok", json!(null)).unwrap();
    clock.advance(5 * SEC);
    mgr.start().unwrap();
    let t = mgr.wait(id, PATIENCE).unwrap();
    assert_eq!(t.status, TaskStatus::Completed);
    let evs = mgr.events(id).unwrap();
    assert_eq!(
        types(&evs),
        [
            "task_created",
            "task_claimed",
            "task_started",
            "task_completed"
        ]
    );
    let w = t.worker.clone().expect("the worker of the attempt");
    for e in &evs {
        assert_eq!(e.task_id, id);
        assert_eq!(
            e.root_id,
            Some(id),
            "a root task's events name it as their root"
        );
        assert_eq!(e.parent_id, None);
        assert_eq!(e.stage, 0);
    }
    let (created, claimed, started, completed) = (&evs[0], &evs[1], &evs[2], &evs[3]);
    assert_eq!(created.time, T0);
    assert_eq!(
        (created.from_status, created.to_status),
        (None, Some(TaskStatus::Pending))
    );
    assert_eq!(created.attempt, None);
    assert_eq!(created.worker, None);
    assert_eq!(
        (claimed.from_status, claimed.to_status),
        (Some(TaskStatus::Pending), Some(TaskStatus::Running))
    );
    assert_eq!(
        (completed.from_status, completed.to_status),
        (Some(TaskStatus::Running), Some(TaskStatus::Completed))
    );
    for e in [claimed, started, completed] {
        assert_eq!(e.time, T0 + 5_000, "{}", e.event_type);
        assert_eq!(e.attempt, Some(1), "{}", e.event_type);
        assert_eq!(e.worker.as_deref(), Some(&*w), "{}", e.event_type);
    }
    assert_status_chain(&mgr, id);
}

/// SPEC §9 event fields on a child: `root_id` and `parent_id` are the child's;
/// SPEC §5 spawn events: `task_created` per child, parent
/// `task_subtasks_created` then `task_status_changed`.
#[test]
fn s9_child_events_carry_root_and_parent_ids() {
    let (mgr, _clock) = mem(2);
    mgr.register("leaf", |_| Ok(json!("leaf").into())).unwrap();
    mgr.register("mid", |ctx| match ctx.stage() {
        0 => Ok(Outcome::spawn(vec![ChildSpec::new("leaf", json!(null))])),
        _ => Ok(json!("mid").into()),
    })
    .unwrap();
    mgr.register("top", |ctx| match ctx.stage() {
        0 => Ok(Outcome::spawn(vec![ChildSpec::new("mid", json!(null))])),
        _ => Ok(json!("top").into()),
    })
    .unwrap();
    mgr.start().unwrap();
    let root = mgr.submit("top", json!(null)).unwrap();
    mgr.wait(root, PATIENCE).unwrap();
    let mid = common::children_of(&mgr, root)[0].id;
    let leaf = common::children_of(&mgr, mid)[0].id;
    for (id, parent) in [(mid, root), (leaf, mid)] {
        let evs = mgr.events(id).unwrap();
        assert!(!evs.is_empty());
        for e in &evs {
            assert_eq!(e.root_id, Some(root), "{} of {id}", e.event_type);
            assert_eq!(e.parent_id, Some(parent), "{} of {id}", e.event_type);
        }
        assert_status_chain(&mgr, id);
    }
    let top = types(&mgr.events(root).unwrap());
    assert_eq!(
        &top[..5],
        [
            "task_created",
            "task_claimed",
            "task_started",
            "task_subtasks_created",
            "task_status_changed"
        ]
    );
    assert_status_chain(&mgr, root);
}

/// SPEC §3/§4/§9: a failed attempt that is retried emits `task_failed`,
/// `task_retry_scheduled`; the retry's claim emits `task_claimed`,
/// `task_started` (attempt 2) and `task_retry_started`; exhaustion emits
/// `task_failed`, `task_permanently_failed`.
#[test]
fn s9_retry_and_exhaustion_event_sequence() {
    let (mgr, _clock) = mem(1);
    mgr.register_with("bad", HandlerOptions::new().max_retries(2), |_| {
        Err("boom".into())
    })
    .unwrap();
    mgr.start().unwrap();
    let id = mgr.submit("bad", json!(null)).unwrap();
    let t = mgr.wait(id, PATIENCE).unwrap();
    assert_eq!(t.status, TaskStatus::PermanentlyFailed);
    let evs = mgr.events(id).unwrap();
    assert_eq!(
        types(&evs),
        [
            "task_created",
            "task_claimed",
            "task_started",
            "task_failed",
            "task_retry_scheduled",
            "task_claimed",
            "task_started",
            "task_retry_started",
            "task_failed",
            "task_permanently_failed"
        ]
    );
    let attempts: Vec<Option<u32>> = evs.iter().map(|e| e.attempt).collect();
    assert_eq!(attempts[1..4], [Some(1), Some(1), Some(1)]);
    assert_eq!(attempts[5..9], [Some(2), Some(2), Some(2), Some(2)]);
    assert_status_chain(&mgr, id);
}

/// SPEC §4/§9: a timeout emits `task_timed_out` (metadata timeout_type
/// `total`), the attempt closes `timeout` with the timeout flag.
#[test]
fn s9_timeout_emits_task_timed_out_with_total_type() {
    let (mgr, clock) = mem(1);
    let remote = Remote::register(
        &mgr,
        "slow",
        HandlerOptions::new().timeout(5 * SEC).max_retries(1),
    );
    mgr.start().unwrap();
    let id = mgr.submit("slow", json!(null)).unwrap();
    wait_status(&mgr, id, TaskStatus::Running);
    clock.advance(6 * SEC);
    let t = mgr.wait(id, PATIENCE).unwrap();
    assert_eq!(t.status, TaskStatus::PermanentlyFailed);
    remote.finish(|| Ok(json!("late").into()));
    let evs = mgr.events(id).unwrap();
    assert_eq!(
        types(&evs),
        [
            "task_created",
            "task_claimed",
            "task_started",
            "task_timed_out",
            "task_permanently_failed"
        ]
    );
    let to = &evs[3];
    assert_eq!(to.metadata["timeout_type"], "total", "{:?}", to.metadata);
    assert_eq!(to.attempt, Some(1));
    let a = &mgr.attempts(id).unwrap()[0];
    assert_eq!(a.outcome, Some(AttemptOutcome::Timeout));
    assert!(a.timed_out);
    assert_status_chain(&mgr, id);
}

/// SPEC §6/§9: `pause_task` on a pending task emits `task_paused`; resuming a
/// paused task emits `task_status_changed`; suspension emits
/// `task_suspended`, `resume_task` `task_resumed`, cancel
/// `task_permanently_failed`; every step keeps the from/to chain.
#[test]
fn s9_control_events_pause_resume_suspend_cancel() {
    let (mgr, clock) = mem(1);
    mgr.register("ok", |_| Ok(json!(1).into())).unwrap();
    mgr.register("ask", |_| Ok(Outcome::suspend("human")))
        .unwrap();
    mgr.start().unwrap();
    let p = mgr
        .submit_with("ok", json!(null), SubmitOptions::new().delay(3600 * SEC))
        .unwrap();
    mgr.pause_task(p).unwrap();
    clock.advance(SEC);
    mgr.resume_task(p, None).unwrap();
    mgr.wait(p, PATIENCE).unwrap();
    assert_eq!(
        types(&mgr.events(p).unwrap()),
        [
            "task_created",
            "task_paused",
            "task_status_changed",
            "task_claimed",
            "task_started",
            "task_completed"
        ]
    );
    assert_status_chain(&mgr, p);

    let s = mgr.submit("ask", json!(null)).unwrap();
    wait_status(&mgr, s, TaskStatus::Suspended);
    mgr.resume_task(s, Some("go")).unwrap();
    eventually("suspended again", || {
        let t = mgr.get_task(s).unwrap();
        t.status == TaskStatus::Suspended && t.stage == 1
    });
    mgr.cancel_task(s, Some("no")).unwrap();
    let t = mgr.wait(s, PATIENCE).unwrap();
    assert_eq!(t.status, TaskStatus::PermanentlyFailed);
    assert_eq!(
        types(&mgr.events(s).unwrap()),
        [
            "task_created",
            "task_claimed",
            "task_started",
            "task_suspended",
            "task_resumed",
            "task_claimed",
            "task_started",
            "task_suspended",
            "task_permanently_failed"
        ]
    );
    assert_status_chain(&mgr, s);
}

/// SPEC §9: "audit(code, message?, metadata?) → a task_checkpoint event ...
/// Both carry the open attempt." On a retry the events carry attempt 2 and
/// its worker, not attempt 1.
#[test]
fn s9_checkpoint_and_progress_carry_the_open_attempt() {
    let (mgr, _clock) = mem(1);
    mgr.register_with("twice", HandlerOptions::new().max_retries(2), |ctx| {
        let n = ctx.attempt();
        ctx.audit(&format!("cp{n}"), Some("msg"), Some(json!({"n": n})))?;
        ctx.progress(Progress {
            text: Some(format!("run {n}")),
            ..Progress::default()
        })?;
        if n == 1 {
            Err("first fails".into())
        } else {
            Ok(json!("ok").into())
        }
    })
    .unwrap();
    mgr.start().unwrap();
    let id = mgr.submit("twice", json!(null)).unwrap();
    let t = mgr.wait(id, PATIENCE).unwrap();
    assert_eq!(t.status, TaskStatus::Completed, "{:?}", t.error);
    let attempts = mgr.attempts(id).unwrap();
    assert_eq!(attempts.len(), 2);
    let evs = mgr.events(id).unwrap();
    let cps: Vec<&Event> = evs
        .iter()
        .filter(|e| e.event_type == EventType::Checkpoint)
        .collect();
    let prs: Vec<&Event> = evs
        .iter()
        .filter(|e| e.event_type == EventType::Progress)
        .collect();
    assert_eq!((cps.len(), prs.len()), (2, 2));
    for (i, a) in attempts.iter().enumerate() {
        for e in [cps[i], prs[i]] {
            assert_eq!(e.attempt, Some(a.number), "{}", e.event_type);
            assert_eq!(e.worker.as_deref(), Some(&*a.worker), "{}", e.event_type);
        }
        assert_eq!(cps[i].metadata["code"], format!("cp{}", a.number));
        assert_eq!(cps[i].message.as_deref(), Some("msg"));
    }
}

/// A task's progress snapshot: stage name, text, percent.
type Snapshot = (Option<&'static str>, Option<&'static str>, Option<u8>);

/// SPEC §9: "progress(stage_name?, text?, percent 0..=100?, metadata?) → a
/// task_progress event and updates only the given snapshot fields."
#[test]
fn s9_progress_updates_only_the_given_snapshot_fields() {
    let (mgr, _clock) = mem(1);
    let remote = Remote::register(&mgr, "p", HandlerOptions::new());
    mgr.start().unwrap();
    let id = mgr.submit("p", json!(null)).unwrap();
    wait_status(&mgr, id, TaskStatus::Running);
    let snap = |mgr: &TaskManager| {
        let t = mgr.get_task(id).unwrap();
        (t.current_stage_name, t.progress_text, t.progress_percent)
    };
    assert_eq!(snap(&mgr), (None, None, None));
    let steps: Vec<(Progress, Snapshot)> = vec![
        (
            Progress {
                stage_name: Some("load".into()),
                percent: Some(10),
                ..Progress::default()
            },
            (Some("load"), None, Some(10)),
        ),
        (
            Progress {
                text: Some("half".into()),
                ..Progress::default()
            },
            (Some("load"), Some("half"), Some(10)),
        ),
        (
            Progress {
                percent: Some(0),
                ..Progress::default()
            },
            (Some("load"), Some("half"), Some(0)),
        ),
        (
            Progress {
                stage_name: Some("save".into()),
                ..Progress::default()
            },
            (Some("save"), Some("half"), Some(0)),
        ),
        (
            Progress {
                metadata: Some(json!({"k": 1})),
                ..Progress::default()
            },
            (Some("save"), Some("half"), Some(0)),
        ),
        (
            Progress {
                percent: Some(100),
                ..Progress::default()
            },
            (Some("save"), Some("half"), Some(100)),
        ),
    ];
    let mut n = 0;
    for (p, want) in steps {
        let r = remote.call(move |ctx| format!("{:?}", ctx.progress(p)));
        assert_eq!(r, "Ok(())");
        n += 1;
        let got = snap(&mgr);
        assert_eq!(
            (got.0.as_deref(), got.1.as_deref(), got.2),
            want,
            "after progress call {n}"
        );
        let evs = mgr.events(id).unwrap();
        assert_eq!(
            evs.iter()
                .filter(|e| e.event_type == EventType::Progress)
                .count(),
            n
        );
    }
    remote.finish(|| Ok(json!(null).into()));
    let t = mgr.wait(id, PATIENCE).unwrap();
    assert_eq!(
        (
            t.current_stage_name.as_deref(),
            t.progress_text.as_deref(),
            t.progress_percent
        ),
        (Some("save"), Some("half"), Some(100)),
        "completion keeps the snapshot"
    );
}

/// SPEC §9: "Empty strings and out-of-range percentages are errors"; SPEC
/// §13: "Nothing in the log is changed by a rejected call": no event, no
/// snapshot change. 0 and 100 are in range.
#[test]
fn s9_empty_strings_and_out_of_range_percentages_are_errors_that_change_nothing() {
    let (mgr, _clock) = mem(1);
    let remote = Remote::register(&mgr, "p", HandlerOptions::new());
    mgr.start().unwrap();
    let id = mgr.submit("p", json!(null)).unwrap();
    wait_status(&mgr, id, TaskStatus::Running);
    let ok = remote.call(|ctx| {
        format!(
            "{:?}",
            ctx.progress(Progress {
                stage_name: Some("s".into()),
                text: Some("t".into()),
                percent: Some(50),
                ..Progress::default()
            })
        )
    });
    assert_eq!(ok, "Ok(())");
    let before = mgr.get_task(id).unwrap();
    let n_before = mgr.events(id).unwrap().len();
    type Bad = fn(&TaskContext) -> Result<(), ContextError>;
    let bad: Vec<(&str, Bad)> = vec![
        ("percent 101", |c| {
            c.progress(Progress {
                percent: Some(101),
                ..Progress::default()
            })
        }),
        ("percent 255", |c| {
            c.progress(Progress {
                percent: Some(255),
                text: Some("x".into()),
                ..Progress::default()
            })
        }),
        ("empty stage name", |c| {
            c.progress(Progress {
                stage_name: Some(String::new()),
                percent: Some(60),
                ..Progress::default()
            })
        }),
        ("blank text", |c| {
            c.progress(Progress {
                text: Some("   ".into()),
                ..Progress::default()
            })
        }),
        ("empty code", |c| c.audit("", None, None)),
        ("blank code", |c| c.audit(" \t", Some("m"), None)),
        ("empty message", |c| c.audit("code", Some(""), None)),
    ];
    for (what, f) in bad {
        let r = remote.call(move |ctx| match f(ctx) {
            Err(ContextError::Invalid(m)) => format!("invalid: {m}"),
            other => format!("{other:?}"),
        });
        assert!(r.starts_with("invalid: "), "{what}: {r}");
    }
    let after = mgr.get_task(id).unwrap();
    assert_eq!(
        mgr.events(id).unwrap().len(),
        n_before,
        "a refused call recorded an event"
    );
    assert_eq!(
        (
            after.current_stage_name,
            after.progress_text,
            after.progress_percent,
            after.last_event_type,
            after.last_event_time
        ),
        (
            before.current_stage_name,
            before.progress_text,
            before.progress_percent,
            before.last_event_type,
            before.last_event_time
        )
    );
    remote.finish(|| Ok(json!(null).into()));
    assert_eq!(
        mgr.wait(id, PATIENCE).unwrap().status,
        TaskStatus::Completed
    );
}

/// SPEC §9: "Every event updates last_event_type and last_event_time of the
/// task", including handler events and control events, and after a reopen.
#[test]
fn s9_every_event_updates_last_event_type_and_time() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let mgr = open(dir.path(), &clock, 1);
    let remote = Remote::register(&mgr, "r", HandlerOptions::new());
    let check = |mgr: &TaskManager, id: TaskId, ty: EventType, at: u64| {
        let t = mgr.get_task(id).unwrap();
        let last = mgr.events(id).unwrap().pop().unwrap();
        assert_eq!(last.event_type, ty);
        assert_eq!(last.time, at);
        assert_eq!(t.last_event_type, Some(ty), "last_event_type");
        assert_eq!(t.last_event_time, Some(at), "last_event_time");
    };
    let id = mgr.submit("r", json!(null)).unwrap();
    check(&mgr, id, EventType::Created, T0);
    clock.advance(SEC);
    mgr.start().unwrap();
    wait_status(&mgr, id, TaskStatus::Running);
    check(&mgr, id, EventType::Started, T0 + 1_000);
    clock.advance(SEC);
    remote.call(|ctx| {
        format!(
            "{:?}",
            ctx.progress(Progress {
                percent: Some(5),
                ..Progress::default()
            })
        )
    });
    check(&mgr, id, EventType::Progress, T0 + 2_000);
    clock.advance(SEC);
    remote.call(|ctx| format!("{:?}", ctx.audit("cp", None, None)));
    check(&mgr, id, EventType::Checkpoint, T0 + 3_000);
    clock.advance(SEC);
    remote.finish(|| Ok(Outcome::suspend("wait")));
    wait_status(&mgr, id, TaskStatus::Suspended);
    check(&mgr, id, EventType::Suspended, T0 + 4_000);
    clock.advance(SEC);
    mgr.cancel_task(id, None).unwrap();
    check(&mgr, id, EventType::PermanentlyFailed, T0 + 5_000);
    let other = mgr
        .submit_with("r", json!(null), SubmitOptions::new().delay(3600 * SEC))
        .unwrap();
    clock.advance(SEC);
    mgr.pause_task(other).unwrap();
    check(&mgr, other, EventType::Paused, T0 + 6_000);
    drop(remote);
    shut(mgr);
    let mgr = open(dir.path(), &clock, 1);
    check(&mgr, id, EventType::PermanentlyFailed, T0 + 5_000);
    check(&mgr, other, EventType::Paused, T0 + 6_000);
}

// ---------------------------------------------------------------------------
// §10 Queries
// ---------------------------------------------------------------------------

/// SPEC §10 "Get one task"; §13 "unknown task id" is a typed error: every
/// per-task query says NotFound for an id that never existed.
#[test]
fn s10_unknown_task_ids_are_not_found() {
    let (mgr, _clock) = mem(1);
    mgr.register("ok", |_| Ok(json!(1).into())).unwrap();
    let real = mgr.submit("ok", json!(null)).unwrap();
    let ghost = TaskId(real.0 + 1_000_000);
    assert!(mgr.get_task(ghost).is_none());
    assert!(matches!(mgr.events(ghost), Err(Error::NotFound(i)) if i == ghost));
    assert!(matches!(mgr.attempts(ghost), Err(Error::NotFound(_))));
    assert!(matches!(
        mgr.query_events(ghost, &EventFilter::default(), Page::default()),
        Err(Error::NotFound(_))
    ));
    assert!(matches!(
        mgr.query_attempts(ghost, &AttemptFilter::default(), Page::default()),
        Err(Error::NotFound(_))
    ));
    assert!(matches!(
        mgr.task_audit(ghost, Page::default(), Page::default()),
        Err(Error::NotFound(_))
    ));
    assert!(matches!(
        mgr.workflow_audit(ghost, Page::default(), Page::default()),
        Err(Error::NotFound(_))
    ));
    assert!(matches!(
        mgr.workflow_summary(ghost),
        Err(Error::NotFound(_))
    ));
    assert_eq!(mgr.get_task(real).unwrap().id, real);
}

/// SPEC §10: "list with filters (name, status, type, tag, worker, parent_id,
/// root_id, workflow root = root and all its descendants)"; "empty filter =
/// all". Each one-field filter returns exactly the tasks with that field.
#[test]
fn s10_each_task_filter_selects_exactly_its_tasks() {
    let (mgr, clock) = mem(2);
    let pop = populate(&mgr, &clock);
    let all = all_tasks(&mgr);
    assert_eq!(all.len(), 12, "{:?}", ids(&all));
    assert_eq!(
        ids(&mgr.list_tasks(&TaskFilter::default())),
        ids(&all),
        "empty filter = all"
    );
    for f in single_field_filters(&pop) {
        assert_eq!(ids(&mgr.list_tasks(&f)), by_hand(&all, &f), "filter {f:?}");
    }
    // Spot checks that the hand computation is not vacuous.
    let wf = by_hand(&all, &TaskFilter::all().workflow(pop.root));
    assert_eq!(wf.len(), 4, "root, two children, one grandchild");
    let tag_a = by_hand(&all, &TaskFilter::all().tag("a"));
    assert!(tag_a.contains(&pop.ok_a) && tag_a.contains(&pop.bad) && tag_a.contains(&pop.cron));
    let cron = by_hand(
        &all,
        &TaskFilter {
            kind: Some(TaskKind::Cron),
            ..TaskFilter::default()
        },
    );
    assert_eq!(cron, [pop.cron]);
}

/// SPEC §10: filters are "combined with AND": every pair of one-field
/// filters (and a few triples) returns the intersection, whichever index
/// (tag, workflow root) the query uses.
#[test]
fn s10_task_filters_combine_with_and() {
    let (mgr, clock) = mem(2);
    let pop = populate(&mgr, &clock);
    let all = all_tasks(&mgr);
    let singles = single_field_filters(&pop);
    let mut checked = 0;
    let mut non_empty = 0;
    for (i, a) in singles.iter().enumerate() {
        for b in &singles[i + 1..] {
            let f = merge(a, b);
            let want = by_hand(&all, &f);
            assert_eq!(ids(&mgr.list_tasks(&f)), want, "filter {f:?}");
            let q = mgr.query_tasks(&f, big());
            assert_eq!(ids(&q.items), want, "query_tasks {f:?}");
            assert_eq!(q.total, want.len());
            checked += 1;
            non_empty += usize::from(!want.is_empty());
        }
    }
    assert!(checked > 400 && non_empty > 50, "{checked} {non_empty}");
    let triples = [
        TaskFilter {
            tag: Some("a".into()),
            status: Some(TaskStatus::Completed),
            workflow: Some(pop.root),
            ..TaskFilter::default()
        },
        TaskFilter {
            tag: Some("deep".into()),
            root_id: Some(pop.root),
            parent_id: Some(pop.mid),
            ..TaskFilter::default()
        },
        TaskFilter {
            name: Some("kid".into()),
            workflow: Some(pop.root),
            root_id: Some(pop.root),
            ..TaskFilter::default()
        },
        TaskFilter {
            name: Some("ok".into()),
            tag: Some("b".into()),
            status: Some(TaskStatus::Pending),
            ..TaskFilter::default()
        },
    ];
    for f in triples {
        let want = by_hand(&all, &f);
        assert!(!want.is_empty(), "{f:?}");
        assert_eq!(ids(&mgr.list_tasks(&f)), want, "filter {f:?}");
    }
}

/// SPEC §10: "Paged queries return {items, total, limit, offset, has_more};
/// order asc by default; tasks sort by (created_at, id)". Every page is the
/// matching window of the sorted list, descending is its reverse.
#[test]
fn s10_task_pages_are_windows_of_the_sorted_list() {
    let (mgr, clock) = mem(2);
    let pop = populate(&mgr, &clock);
    let all = all_tasks(&mgr);
    let mut sorted = all.clone();
    sorted.sort_by_key(|t| (t.created_at, t.id));
    assert_eq!(ids(&all), ids(&sorted), "list order is (created_at, id)");
    assert_eq!(Page::default().offset, 0);
    assert!(!Page::default().descending, "asc by default");
    for f in [
        TaskFilter::all(),
        TaskFilter::all().tag("a"),
        TaskFilter::all().workflow(pop.root),
        TaskFilter::all().status(TaskStatus::Completed),
    ] {
        let full = mgr.list_tasks(&f);
        for limit in [1, 2, 3, 5, 50] {
            for descending in [false, true] {
                let mut offset = 0;
                while offset <= full.len() + 1 {
                    let pg = page(limit, offset, descending);
                    assert_page_of(&full, &mgr.query_tasks(&f, pg), pg);
                    offset += limit;
                }
            }
        }
    }
}

/// SPEC §10: tasks sort by (created_at, id), not by id alone: a task created
/// later by the clock but with a smaller id comes after one created earlier.
/// (The manual clock is moved backwards to get created_at against id order.)
#[test]
fn s10_tasks_sort_by_created_at_before_id() {
    let (mgr, clock) = mem(1);
    mgr.register("ok", |_| Ok(json!(1).into())).unwrap();
    clock.set(T0 + 10_000);
    let late = mgr.submit("ok", json!("late")).unwrap();
    clock.set(T0);
    let early = mgr.submit("ok", json!("early")).unwrap();
    let same = mgr.submit("ok", json!("same")).unwrap();
    assert!(late < early && early < same, "ids increase");
    let want = vec![early, same, late];
    assert_eq!(ids(&all_tasks(&mgr)), want);
    assert_eq!(ids(&mgr.query_tasks(&TaskFilter::all(), big()).items), want);
    let desc = mgr.query_tasks(&TaskFilter::all(), page(2, 0, true));
    assert_eq!(ids(&desc.items), [late, same]);
    assert!(desc.has_more);
}

/// SPEC §10 paging at the edges: limit 0, an offset past the end, the largest
/// offset and limit; tasks, events, attempts and both audit views agree.
#[test]
fn s10_paging_edge_values() {
    let (mgr, _clock) = mem(1);
    mgr.register_with("bad", HandlerOptions::new().max_retries(3), |_| {
        Err("x".into())
    })
    .unwrap();
    mgr.start().unwrap();
    let id = mgr.submit("bad", json!(null)).unwrap();
    for _ in 0..4 {
        let other = mgr.submit("bad", json!(null)).unwrap();
        mgr.wait(other, PATIENCE).unwrap();
    }
    mgr.wait(id, PATIENCE).unwrap();
    let tasks = all_tasks(&mgr);
    let events = mgr.events(id).unwrap();
    let attempts = mgr.attempts(id).unwrap();
    assert_eq!(attempts.len(), 3);
    let edges = [
        page(0, 0, false),
        page(0, 0, true),
        page(0, 2, false),
        page(1, events.len() - 1, false),
        page(10, events.len(), false),
        page(10, 1_000_000, true),
        page(10, usize::MAX, false),
        page(usize::MAX, 0, true),
        page(usize::MAX, 3, false),
        page(usize::MAX, usize::MAX, true),
    ];
    for pg in edges {
        assert_page_of(&tasks, &mgr.query_tasks(&TaskFilter::all(), pg), pg);
        let ev = mgr.query_events(id, &EventFilter::default(), pg).unwrap();
        assert_page_of(&events, &ev, pg);
        let at = mgr
            .query_attempts(id, &AttemptFilter::default(), pg)
            .unwrap();
        assert_page_of(&attempts, &at, pg);
        let audit = mgr.task_audit(id, pg, pg).unwrap();
        assert_page_of(&events, &audit.events, pg);
        assert_page_of(&attempts, &audit.attempts, pg);
        let wf = mgr.workflow_audit(id, pg, pg).unwrap();
        assert_page_of(&[mgr.get_task(id).unwrap()], &wf.tasks, pg);
        assert_page_of(&events, &wf.events, pg);
    }
}

/// SPEC §10: "events by (time, id)", and a task's history never goes back in
/// time: with the clock moved back between two events of the task, the
/// completion is stamped at the task's last event time, not before its
/// creation, so the sorted history is still cause before effect.
#[test]
fn s10_events_sort_by_time_then_id() {
    let (mgr, clock) = mem(1);
    let remote = Remote::register(&mgr, "r", HandlerOptions::new());
    clock.set(T0 + 60_000);
    let id = mgr.submit("r", json!(null)).unwrap();
    mgr.start().unwrap();
    wait_status(&mgr, id, TaskStatus::Running);
    clock.set(T0);
    remote.finish(|| Ok(json!(1).into()));
    mgr.wait(id, PATIENCE).unwrap();
    let raw = mgr.events(id).unwrap();
    let mut want = raw.clone();
    want.sort_by_key(|e| (e.time, e.id));
    let got = mgr
        .query_events(id, &EventFilter::default(), Page::default())
        .unwrap();
    assert_eq!(
        types(&got.items),
        [
            "task_created",
            "task_claimed",
            "task_started",
            "task_completed"
        ]
    );
    assert!(got.items.iter().all(|e| e.time == T0 + 60_000), "{got:?}");
    assert_eq!(got.items, want);
    let desc = mgr
        .query_events(id, &EventFilter::default(), page(10, 0, true))
        .unwrap();
    want.reverse();
    assert_eq!(desc.items, want);
}

/// SPEC §10: "Event filters: type(s), worker, attempt, stage, time range",
/// combined with AND (time range: from inclusive, until exclusive, as the API
/// documents). Checked against a hand computation over `events()`.
#[test]
fn s10_event_filters_type_worker_attempt_stage_and_time_range() {
    let (mgr, clock) = mem(2);
    mgr.register_with(
        "flaky",
        HandlerOptions::new()
            .max_retries(3)
            .retry_interval(10 * SEC),
        |ctx| {
            ctx.audit("try", None, None)?;
            if ctx.attempt() < 3 {
                Err("again".into())
            } else {
                Ok(json!("ok").into())
            }
        },
    )
    .unwrap();
    mgr.register("kid", |_| Ok(json!("kid").into())).unwrap();
    mgr.register("wf", |ctx| match ctx.stage() {
        0 => Ok(Outcome::spawn(vec![ChildSpec::new("kid", json!(null))])),
        _ => {
            ctx.audit("stage1", None, None)?;
            Ok(json!("wf").into())
        }
    })
    .unwrap();
    mgr.start().unwrap();
    let flaky = mgr.submit("flaky", json!(null)).unwrap();
    let wf = mgr.submit("wf", json!(null)).unwrap();
    mgr.wait(wf, PATIENCE).unwrap();
    attempts_closed(&mgr, flaky, 1);
    clock.advance(10 * SEC);
    attempts_closed(&mgr, flaky, 2);
    clock.advance(10 * SEC);
    mgr.wait(flaky, PATIENCE).unwrap();
    for id in [flaky, wf] {
        let evs = mgr.events(id).unwrap();
        let workers: BTreeSet<String> = evs
            .iter()
            .filter_map(|e| e.worker.as_deref().map(str::to_owned))
            .chain(["nobody".to_owned()])
            .collect();
        let type_sets: Vec<Vec<EventType>> = vec![
            vec![],
            vec![EventType::Started],
            vec![EventType::Checkpoint, EventType::Failed],
            vec![EventType::StatusChanged, EventType::Completed],
            vec![EventType::Recovered],
        ];
        let mut filters = Vec::new();
        for types in &type_sets {
            for worker in workers.iter().map(|w| Some(w.clone())).chain([None]) {
                for attempt in [None, Some(1), Some(2), Some(3), Some(9)] {
                    for stage in [None, Some(0), Some(1)] {
                        filters.push(EventFilter {
                            types: types.clone(),
                            worker: worker.clone(),
                            attempt,
                            stage,
                            ..EventFilter::default()
                        });
                    }
                }
            }
        }
        let times: BTreeSet<u64> = evs.iter().map(|e| e.time).collect();
        for &t in &times {
            for (from, until) in [
                (Some(t), None),
                (None, Some(t)),
                (Some(t), Some(t + 1)),
                (Some(t), Some(t)),
            ] {
                filters.push(EventFilter {
                    from_ms: from,
                    until_ms: until,
                    ..EventFilter::default()
                });
                filters.push(EventFilter {
                    from_ms: from,
                    until_ms: until,
                    types: vec![EventType::Claimed],
                    ..EventFilter::default()
                });
            }
        }
        let mut hits = 0;
        for f in &filters {
            let want: Vec<Event> = evs
                .iter()
                .filter(|e| {
                    (f.types.is_empty() || f.types.contains(&e.event_type))
                        && f.worker
                            .as_ref()
                            .is_none_or(|w| e.worker.as_deref() == Some(w.as_str()))
                        && f.attempt.is_none_or(|a| e.attempt == Some(a))
                        && f.stage.is_none_or(|s| e.stage == s)
                        && f.from_ms.is_none_or(|t| e.time >= t)
                        && f.until_ms.is_none_or(|t| e.time <= t)
                })
                .cloned()
                .collect();
            hits += usize::from(!want.is_empty());
            let got = mgr.query_events(id, f, big()).unwrap();
            assert_eq!(got.items, want, "task {id}, filter {f:?}");
            assert_eq!(got.total, want.len());
        }
        assert!(hits > 20, "{hits}");
    }
    // Spot checks that the filters mean what they say.
    let by_stage = |s| {
        mgr.query_events(
            wf,
            &EventFilter {
                stage: Some(s),
                types: vec![EventType::Checkpoint],
                ..EventFilter::default()
            },
            big(),
        )
        .unwrap()
        .total
    };
    assert_eq!((by_stage(0), by_stage(1)), (0, 1));
    let third = mgr
        .query_events(
            flaky,
            &EventFilter {
                from_ms: Some(T0 + 20_000),
                types: vec![EventType::Claimed, EventType::Started, EventType::Completed],
                ..EventFilter::default()
            },
            big(),
        )
        .unwrap();
    assert_eq!(
        types(&third.items),
        ["task_claimed", "task_started", "task_completed"]
    );
    assert!(third.items.iter().all(|e| e.attempt == Some(3)));
}

/// SPEC §10: "Attempt filters: worker, outcome, time ranges, open only";
/// attempts sort by (attempt, id).
#[test]
fn s10_attempt_filters_worker_outcome_time_ranges_open_only() {
    let (mgr, clock) = mem(1);
    let remote = Remote::register(
        &mgr,
        "r",
        HandlerOptions::new()
            .max_retries(3)
            .retry_interval(10 * SEC)
            .timeout(Duration::ZERO),
    );
    mgr.start().unwrap();
    let id = mgr.submit("r", json!(null)).unwrap();
    wait_status(&mgr, id, TaskStatus::Running);
    clock.advance(2 * SEC);
    remote.finish(|| Err("first".into()));
    attempts_closed(&mgr, id, 1);
    clock.advance(10 * SEC);
    wait_status(&mgr, id, TaskStatus::Running);
    clock.advance(SEC);
    let attempts = mgr.attempts(id).unwrap();
    assert_eq!(attempts.len(), 2);
    assert_eq!(
        attempts.iter().map(|a| a.number).collect::<Vec<_>>(),
        [1, 2]
    );
    assert_eq!(attempts[0].started_at, T0);
    assert_eq!(attempts[0].ended_at, Some(T0 + 2_000));
    assert_eq!(attempts[0].outcome, Some(AttemptOutcome::Failed));
    assert_eq!(attempts[1].started_at, T0 + 12_000);
    assert_eq!((attempts[1].ended_at, attempts[1].outcome), (None, None));
    let q = |f: AttemptFilter| -> Vec<u32> {
        let p = mgr.query_attempts(id, &f, big()).unwrap();
        assert_eq!(p.total, p.items.len());
        p.items.iter().map(|a| a.number).collect()
    };
    let d = AttemptFilter::default;
    assert_eq!(q(d()), [1, 2]);
    assert_eq!(
        q(AttemptFilter {
            open_only: true,
            ..d()
        }),
        [2]
    );
    assert_eq!(
        q(AttemptFilter {
            outcome: Some(AttemptOutcome::Failed),
            ..d()
        }),
        [1]
    );
    assert_eq!(
        q(AttemptFilter {
            outcome: Some(AttemptOutcome::Completed),
            ..d()
        }),
        Vec::<u32>::new()
    );
    assert_eq!(
        q(AttemptFilter {
            worker: Some(attempts[1].worker.to_string()),
            ..d()
        }),
        [1, 2]
    );
    assert_eq!(
        q(AttemptFilter {
            worker: Some("nobody".into()),
            ..d()
        }),
        Vec::<u32>::new()
    );
    assert_eq!(
        q(AttemptFilter {
            started_from_ms: Some(T0 + 12_000),
            ..d()
        }),
        [2]
    );
    // Upper bounds are inclusive, as fib-flow's `started_before`.
    assert_eq!(
        q(AttemptFilter {
            started_until_ms: Some(T0 + 11_999),
            ..d()
        }),
        [1]
    );
    assert_eq!(
        q(AttemptFilter {
            started_until_ms: Some(T0 + 12_000),
            ..d()
        }),
        [1, 2]
    );
    assert_eq!(
        q(AttemptFilter {
            ended_from_ms: Some(T0 + 2_000),
            ..d()
        }),
        [1]
    );
    assert_eq!(
        q(AttemptFilter {
            ended_until_ms: Some(T0 + 1_999),
            ..d()
        }),
        Vec::<u32>::new()
    );
    assert_eq!(
        q(AttemptFilter {
            ended_until_ms: Some(T0 + 2_000),
            ..d()
        }),
        [1]
    );
    assert_eq!(
        q(AttemptFilter {
            open_only: true,
            outcome: Some(AttemptOutcome::Failed),
            ..d()
        }),
        Vec::<u32>::new(),
        "AND"
    );
    let desc = mgr
        .query_attempts(id, &AttemptFilter::default(), page(1, 0, true))
        .unwrap();
    assert_eq!(desc.items[0].number, 2);
    assert!(desc.has_more);
    remote.finish(|| Ok(json!("done").into()));
    mgr.wait(id, PATIENCE).unwrap();
}

/// SPEC §10: "Stats by tag: counts grouped by (tag, name, status), optional
/// status filter"; the counts agree with the task list, and so does
/// `count_by_status`.
#[test]
fn s10_stats_by_tag_and_counts_agree_with_the_task_list() {
    let (mgr, clock) = mem(2);
    populate(&mgr, &clock);
    let all = all_tasks(&mgr);
    let mut want: BTreeMap<(Option<String>, String, TaskStatus), u64> = BTreeMap::new();
    for t in &all {
        *want
            .entry((t.tag.clone(), t.name.to_string(), t.status))
            .or_default() += 1;
    }
    assert_eq!(mgr.stats_by_tag(None), want);
    for s in TaskStatus::ALL {
        let sub: BTreeMap<_, _> = want
            .iter()
            .filter(|(k, _)| k.2 == s)
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        assert_eq!(mgr.stats_by_tag(Some(s)), sub, "status {s}");
    }
    assert_eq!(mgr.count_by_status(), counts_by_hand(&mgr));
    assert!(want.contains_key(&(None, "ok".into(), TaskStatus::Completed)));
}

/// SPEC §6: "Listing suspended tasks can filter by the reason of their latest
/// task_suspended."
#[test]
fn s10_suspend_reason_filter_uses_the_latest_suspension() {
    let (mgr, _clock) = mem(1);
    mgr.register("ask", |ctx| {
        Ok(Outcome::suspend(if ctx.stage() == 0 {
            "first"
        } else {
            "second"
        }))
    })
    .unwrap();
    mgr.start().unwrap();
    let id = mgr.submit("ask", json!(null)).unwrap();
    wait_status(&mgr, id, TaskStatus::Suspended);
    let by = |r: &str| {
        ids(&mgr.list_tasks(&TaskFilter {
            suspend_reason: Some(r.into()),
            ..TaskFilter::default()
        }))
    };
    assert_eq!(by("first"), [id]);
    mgr.resume_task(id, None).unwrap();
    eventually("suspended again", || {
        let t = mgr.get_task(id).unwrap();
        t.status == TaskStatus::Suspended && t.stage == 1
    });
    assert_eq!(by("first"), Vec::<TaskId>::new());
    assert_eq!(by("second"), [id]);
}

/// SPEC §10: "Delete with the same filters; returns the count; removes the
/// tasks' events and attempts too." The count agrees with what disappeared;
/// other tasks, counts, stats and indexes are untouched; a deleted dedup key
/// is free again.
#[test]
fn s10_delete_with_filters_returns_the_count_and_removes_history() {
    let (mgr, clock) = mem(2);
    let pop = populate(&mgr, &clock);
    let dk = mgr
        .submit_with(
            "ok",
            json!("dk"),
            SubmitOptions::new().tag("a").dedup_key("key-1"),
        )
        .unwrap();
    mgr.wait(dk, PATIENCE).unwrap();
    let before = all_tasks(&mgr);
    let f = TaskFilter::all().tag("a").status(TaskStatus::Completed);
    let victims = by_hand(&before, &f);
    assert!(victims.len() >= 3, "{victims:?}");
    assert!(victims.contains(&dk) && victims.contains(&pop.ok_a));
    assert_eq!(mgr.delete_tasks(&f).unwrap(), victims.len() as u64);
    for id in &victims {
        assert!(mgr.get_task(*id).is_none());
        assert!(matches!(mgr.events(*id), Err(Error::NotFound(_))));
        assert!(matches!(mgr.attempts(*id), Err(Error::NotFound(_))));
    }
    let after = all_tasks(&mgr);
    let kept: Vec<Task> = before
        .iter()
        .filter(|t| !victims.contains(&t.id))
        .cloned()
        .collect();
    assert_eq!(after, kept, "others untouched");
    assert_eq!(mgr.count_by_status(), counts_by_hand(&mgr));
    assert!(mgr.list_tasks(&f).is_empty());
    assert_eq!(
        ids(&mgr.list_tasks(&TaskFilter::all().tag("a"))),
        by_hand(&after, &TaskFilter::all().tag("a"))
    );
    assert_eq!(mgr.delete_tasks(&f).unwrap(), 0, "nothing left to delete");
    let again = mgr
        .submit_with("ok", json!("dk2"), SubmitOptions::new().dedup_key("key-1"))
        .unwrap();
    assert_ne!(again, dk, "the deleted task's dedup key is free");
}

/// SPEC §10: deleting with the workflow filter removes the root and all its
/// descendants with their history; the other tasks stay.
#[test]
fn s10_delete_a_workflow_removes_root_and_descendants() {
    let (mgr, clock) = mem(2);
    let pop = populate(&mgr, &clock);
    let before = all_tasks(&mgr);
    let wf = by_hand(&before, &TaskFilter::all().workflow(pop.root));
    assert_eq!(wf.len(), 4);
    assert_eq!(
        mgr.delete_tasks(&TaskFilter::all().workflow(pop.root))
            .unwrap(),
        4
    );
    for id in &wf {
        assert!(mgr.get_task(*id).is_none(), "{id} left behind");
    }
    assert!(mgr
        .list_tasks(&TaskFilter {
            root_id: Some(pop.root),
            ..TaskFilter::default()
        })
        .is_empty());
    assert!(mgr.list_tasks(&TaskFilter::all().tag("deep")).is_empty());
    assert!(matches!(
        mgr.workflow_summary(pop.root),
        Err(Error::NotFound(_))
    ));
    assert_eq!(all_tasks(&mgr).len(), before.len() - 4);
    assert_eq!(mgr.count_by_status(), counts_by_hand(&mgr));
}

/// SPEC §10 delete (fibflow deletes running tasks too): once the deleted
/// task's handler returns, nothing comes back: no task, no counts, and its
/// slot is free for the next task.
#[test]
fn s10_deleting_a_running_task_leaves_no_trace_after_its_handler_returns() {
    let (mgr, _clock) = mem(1);
    let gate = Gate::new();
    let g = gate.clone();
    mgr.register("block", move |_| {
        g.wait();
        Ok(json!("late").into())
    })
    .unwrap();
    mgr.register("ok", |_| Ok(json!(1).into())).unwrap();
    mgr.start().unwrap();
    let id = mgr.submit("block", json!(null)).unwrap();
    wait_status(&mgr, id, TaskStatus::Running);
    assert_eq!(
        mgr.delete_tasks(&TaskFilter::all().name("block")).unwrap(),
        1
    );
    assert!(mgr.get_task(id).is_none());
    gate.open();
    eventually("the handler returned", || mgr.running() == 0);
    let next = mgr.submit("ok", json!(null)).unwrap();
    assert_eq!(
        mgr.wait(next, PATIENCE).unwrap().status,
        TaskStatus::Completed
    );
    assert!(mgr.get_task(id).is_none(), "the late result resurrected it");
    assert_eq!(ids(&all_tasks(&mgr)), [next]);
    assert_eq!(mgr.count_by_status(), counts_by_hand(&mgr));
}

/// SPEC §10: "Task audit view: the task plus paged events and attempts."
#[test]
fn s10_task_audit_view_is_the_task_with_its_paged_events_and_attempts() {
    let (mgr, clock) = mem(2);
    let pop = populate(&mgr, &clock);
    for id in [pop.bad, pop.root, pop.hold, pop.paused] {
        let events = mgr.events(id).unwrap();
        let attempts = mgr.attempts(id).unwrap();
        let mut sorted = events.clone();
        sorted.sort_by_key(|e| (e.time, e.id));
        for pg in [page(2, 1, false), page(3, 0, true), Page::default()] {
            let a = mgr.task_audit(id, pg, page(1, 0, false)).unwrap();
            assert_eq!(a.task, mgr.get_task(id).unwrap());
            assert_page_of(&sorted, &a.events, pg);
            assert_page_of(&attempts, &a.attempts, page(1, 0, false));
        }
    }
}

/// SPEC §10: "Workflow audit view: the root plus paged tasks and events": the
/// tasks are the root and all its descendants by (created_at, id); the events
/// are all of theirs, by time.
#[test]
fn s10_workflow_audit_view_is_the_root_with_its_tasks_and_their_events() {
    let (mgr, clock) = mem(2);
    let pop = populate(&mgr, &clock);
    let all = all_tasks(&mgr);
    let tasks: Vec<Task> = {
        let wf = by_hand(&all, &TaskFilter::all().workflow(pop.root));
        all.iter().filter(|t| wf.contains(&t.id)).cloned().collect()
    };
    let n_events: usize = tasks.iter().map(|t| mgr.events(t.id).unwrap().len()).sum();
    let full = mgr.workflow_audit(pop.root, big(), big()).unwrap();
    assert_eq!(full.root, mgr.get_task(pop.root).unwrap());
    assert_eq!(full.tasks.items, tasks);
    assert_eq!(full.events.total, n_events);
    assert!(full.events.items.windows(2).all(|w| w[0].time <= w[1].time));
    let mut mine: Vec<(TaskId, u64)> = full
        .events
        .items
        .iter()
        .map(|e| (e.task_id, e.id))
        .collect();
    mine.sort();
    let mut want: Vec<(TaskId, u64)> = tasks
        .iter()
        .flat_map(|t| {
            mgr.events(t.id)
                .unwrap()
                .into_iter()
                .map(|e| (e.task_id, e.id))
        })
        .collect();
    want.sort();
    assert_eq!(mine, want, "exactly the workflow's events");
    for pg in [
        page(3, 0, false),
        page(3, 3, false),
        page(5, 2, true),
        page(0, 0, false),
    ] {
        let v = mgr.workflow_audit(pop.root, pg, pg).unwrap();
        assert_page_of(&full.tasks.items, &v.tasks, pg);
        assert_page_of(&full.events.items, &v.events, pg);
    }
}

/// A workflow on a manual clock: the root spawns `n` children at T0; child i
/// finishes at T0 + (i + 1) s (so it is the i-th fastest); the root's stage 1
/// runs from T0 + n s for 1 s. Returns the root and the children.
fn timed_workflow(mgr: &TaskManager, clock: &ManualClock, n: usize) -> (TaskId, Vec<TaskId>) {
    let gates: Vec<Arc<Gate>> = (0..=n).map(|_| Gate::new()).collect();
    let g = gates.clone();
    mgr.register("step", move |ctx| {
        g[ctx.payload().as_u64().unwrap() as usize].wait();
        Ok(json!({"step": ctx.payload().clone()}).into())
    })
    .unwrap();
    let g = gates.clone();
    mgr.register("root", move |ctx| match ctx.stage() {
        0 => Ok(Outcome::spawn(
            (0..n).map(|i| ChildSpec::new("step", json!(i))).collect(),
        )),
        _ => {
            g[n].wait();
            Ok(json!("root").into())
        }
    })
    .unwrap();
    mgr.start().unwrap();
    let root = mgr.submit("root", json!(null)).unwrap();
    eventually("children running", || {
        let kids = common::children_of(mgr, root);
        kids.len() == n && kids.iter().all(|k| k.status == TaskStatus::Running)
    });
    // Child i is the one with payload i.
    let mut kids = common::children_of(mgr, root);
    kids.sort_by_key(|k| k.payload.as_u64());
    let kids = ids(&kids);
    for (i, k) in kids.iter().enumerate() {
        clock.advance(SEC);
        gates[i].open();
        wait_status(mgr, *k, TaskStatus::Completed);
    }
    wait_status(mgr, root, TaskStatus::Running);
    clock.advance(SEC);
    gates[n].open();
    mgr.wait(root, PATIENCE).unwrap();
    (root, kids)
}

/// SPEC §10 workflow summary: "status counts, attempt outcome counts, workers,
/// timing (first start, last end, last event, duration), root stage timings".
#[test]
fn s10_workflow_summary_counts_timing_and_root_stages() {
    let (mgr, clock) = mem(3);
    let (root, kids) = timed_workflow(&mgr, &clock, 2);
    let s = mgr.workflow_summary(root).unwrap();
    assert_eq!(s.root_id, root);
    assert_eq!(
        s.status_counts,
        BTreeMap::from([("completed".to_string(), 3)])
    );
    assert_eq!(
        s.attempt_outcomes,
        BTreeMap::from([("completed".to_string(), 3), ("suspended".to_string(), 1)])
    );
    let mut workers: Vec<String> = [root, kids[0], kids[1]]
        .iter()
        .flat_map(|id| mgr.attempts(*id).unwrap())
        .map(|a| a.worker.to_string())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    workers.sort();
    assert_eq!(s.workers, workers);
    assert_eq!(s.timing.first_start, Some(T0));
    assert_eq!(s.timing.last_end, Some(T0 + 3_000));
    assert_eq!(s.timing.last_event, Some(T0 + 3_000));
    assert_eq!(s.timing.duration_ms, Some(3_000));
    let stages: Vec<_> = s
        .root_stages
        .iter()
        .map(|st| {
            (
                st.stage,
                st.attempt,
                st.started_at,
                st.ended_at,
                st.duration_ms,
                st.outcome,
            )
        })
        .collect();
    assert_eq!(
        stages,
        [
            (0, 1, T0, Some(T0), Some(0), Some(AttemptOutcome::Suspended)),
            (
                1,
                2,
                T0 + 2_000,
                Some(T0 + 3_000),
                Some(1_000),
                Some(AttemptOutcome::Completed)
            ),
        ]
    );
    assert!(s.failed_tasks.is_empty());
    assert_eq!(s.critical_path, [root, kids[1]], "the slower child");
}

/// SPEC §10 workflow summary: "slowest 5 attempts", slowest first.
#[test]
fn s10_workflow_summary_slowest_five_attempts_slowest_first() {
    let (mgr, clock) = mem(8);
    let (root, kids) = timed_workflow(&mgr, &clock, 7);
    let s = mgr.workflow_summary(root).unwrap();
    let got: Vec<(TaskId, Option<u64>)> = s
        .slowest_attempts
        .iter()
        .map(|a| (a.task_id, a.duration_ms()))
        .collect();
    let want: Vec<(TaskId, Option<u64>)> = (2..7)
        .rev()
        .map(|i| (kids[i], Some((i as u64 + 1) * 1_000)))
        .collect();
    assert_eq!(got, want);
}

/// SPEC §10 workflow summary: "critical path (root plus the longest child
/// branch ...)": it follows a slow grandchild, not the child that is slower on
/// its own.
#[test]
fn s10_workflow_summary_critical_path_follows_the_longest_branch() {
    let (mgr, clock) = mem(4);
    let gate_a = Gate::new();
    let gate_g = Gate::new();
    let (ga, gg) = (gate_a.clone(), gate_g.clone());
    mgr.register("a", move |_| {
        ga.wait();
        Ok(json!("a").into())
    })
    .unwrap();
    mgr.register("g", move |_| {
        gg.wait();
        Ok(json!("g").into())
    })
    .unwrap();
    mgr.register("b", |ctx| match ctx.stage() {
        0 => Ok(Outcome::spawn(vec![ChildSpec::new("g", json!(null))])),
        _ => Ok(json!("b").into()),
    })
    .unwrap();
    mgr.register("top", |ctx| match ctx.stage() {
        0 => Ok(Outcome::spawn(vec![
            ChildSpec::new("a", json!(null)),
            ChildSpec::new("b", json!(null)),
        ])),
        _ => Ok(json!("top").into()),
    })
    .unwrap();
    mgr.start().unwrap();
    let root = mgr.submit("top", json!(null)).unwrap();
    eventually("a and g running", || {
        let names: Vec<_> = mgr
            .list_tasks(&TaskFilter::all().status(TaskStatus::Running))
            .iter()
            .map(|t| t.name.to_string())
            .collect();
        names.contains(&"a".to_string()) && names.contains(&"g".to_string())
    });
    let kids = common::children_of(&mgr, root);
    let (a, b) = (kids[0].id, kids[1].id);
    let g = common::children_of(&mgr, b)[0].id;
    clock.advance(2 * SEC);
    gate_a.open();
    wait_status(&mgr, a, TaskStatus::Completed);
    clock.advance(SEC);
    gate_g.open();
    mgr.wait(root, PATIENCE).unwrap();
    let s = mgr.workflow_summary(root).unwrap();
    assert_eq!(s.critical_path, [root, b, g]);
}

/// SPEC §10 workflow summary: "failed tasks", with their errors; a failed
/// child delivered to its parent is counted as permanently failed.
#[test]
fn s10_workflow_summary_lists_failed_tasks() {
    let (mgr, _clock) = mem(2);
    mgr.register("ok", |_| Ok(json!(1).into())).unwrap();
    mgr.register_with("bad", HandlerOptions::new().max_retries(1), |_| {
        Err("child broke".into())
    })
    .unwrap();
    mgr.register("top", |ctx| match ctx.stage() {
        0 => Ok(Outcome::spawn(vec![
            ChildSpec::new("ok", json!(null)),
            ChildSpec::new("bad", json!(null)),
        ])),
        _ => Ok(json!("top").into()),
    })
    .unwrap();
    mgr.start().unwrap();
    let root = mgr.submit("top", json!(null)).unwrap();
    assert_eq!(
        mgr.wait(root, PATIENCE).unwrap().status,
        TaskStatus::Completed
    );
    let bad = mgr.list_tasks(&TaskFilter::all().name("bad"))[0].id;
    let s = mgr.workflow_summary(root).unwrap();
    assert_eq!(s.failed_tasks.len(), 1);
    let f = &s.failed_tasks[0];
    assert_eq!(
        (f.id, f.name.as_str(), f.status, f.error.as_deref()),
        (
            bad,
            "bad",
            TaskStatus::PermanentlyFailed,
            Some("child broke")
        )
    );
    assert_eq!(
        s.status_counts,
        BTreeMap::from([
            ("completed".to_string(), 2),
            ("permanently_failed".to_string(), 1)
        ])
    );
    assert_eq!(
        s.attempt_outcomes,
        BTreeMap::from([
            ("completed".to_string(), 2),
            ("failed".to_string(), 1),
            ("suspended".to_string(), 1)
        ])
    );
}

/// SPEC §13 bad input: "unknown status" is a typed error whose message says
/// what was wrong (status names are the SPEC §2 snake_case names).
#[test]
fn s10_unknown_status_strings_are_rejected() {
    for s in TaskStatus::ALL {
        assert_eq!(s.as_str().parse::<TaskStatus>().unwrap(), s);
    }
    for bad in ["bogus", "", "Completed", "permanently-failed", " pending"] {
        let e = bad.parse::<TaskStatus>().unwrap_err();
        assert!(e.to_string().contains(&format!("`{bad}`")), "{e}");
    }
}

/// SPEC §10 (with §12, §13): queries after reopening a durable directory give
/// the same answers (tasks, events, attempts, counts, stats, tag and workflow
/// indexes, workflow summary), from the log and again from a snapshot.
#[test]
fn s10_queries_after_reopen_match_before() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let mgr = open(dir.path(), &clock, 2);
    let pop = populate(&mgr, &clock);
    let before = view(&mgr, Some(pop.root));
    let summary = mgr.workflow_summary(pop.root).unwrap();
    shut(mgr);
    let mgr = open(dir.path(), &clock, 2);
    assert_eq!(
        view(&mgr, Some(pop.root)),
        before,
        "after replaying the log"
    );
    assert_eq!(mgr.workflow_summary(pop.root).unwrap(), summary);
    assert_eq!(mgr.count_by_status(), counts_by_hand(&mgr));
    mgr.compact().unwrap();
    shut(mgr);
    let mgr = open(dir.path(), &clock, 2);
    assert_eq!(view(&mgr, Some(pop.root)), before, "after a snapshot");
    assert_eq!(mgr.workflow_summary(pop.root).unwrap(), summary);
    let sus = mgr.list_tasks(&TaskFilter {
        suspend_reason: Some("review".into()),
        ..TaskFilter::default()
    });
    assert_eq!(ids(&sus), [pop.hold]);
}

// ---------------------------------------------------------------------------
// §11 Retention
// ---------------------------------------------------------------------------

/// SPEC §11: "statuses default to completed and permanently_failed": a paused
/// task is kept by the default policy and removed when paused is listed.
#[test]
fn s11_default_statuses_are_completed_and_permanently_failed() {
    let (mgr, clock) = mem(2);
    let pop = populate(&mgr, &clock);
    assert_eq!(
        RetentionPolicy::new(SEC).statuses,
        [TaskStatus::Completed, TaskStatus::PermanentlyFailed]
    );
    // Less than the delayed task's hour: nothing new becomes due.
    clock.advance(Duration::from_secs(1_800));
    let r = mgr
        .run_retention(Some(&RetentionPolicy::new(Duration::from_secs(60))))
        .unwrap();
    let left = all_tasks(&mgr);
    assert!(left.iter().all(|t| !matches!(
        t.status,
        TaskStatus::Completed | TaskStatus::PermanentlyFailed
    )));
    assert_eq!(r.tasks, 12 - left.len() as u64);
    assert!(mgr.get_task(pop.paused).is_some(), "paused kept by default");
    let r = mgr
        .run_retention(Some(
            &RetentionPolicy::new(Duration::from_secs(60)).statuses([TaskStatus::Paused]),
        ))
        .unwrap();
    assert_eq!(r.tasks, 1);
    assert!(mgr.get_task(pop.paused).is_none());
}

/// SPEC §11: "Eligible: status in the set and last_active_time older than now
/// − expire_time": at exactly the cut-off it stays, 1 ms later it goes.
#[test]
fn s11_eligible_only_when_strictly_older_than_the_cutoff() {
    let (mgr, clock) = mem(1);
    mgr.register("ok", |_| Ok(json!(1).into())).unwrap();
    mgr.start().unwrap();
    let id = mgr.submit("ok", json!(null)).unwrap();
    let t = mgr.wait(id, PATIENCE).unwrap();
    assert_eq!(t.last_active_time, T0);
    let policy = RetentionPolicy::new(Duration::from_secs(60));
    clock.advance(Duration::from_secs(60));
    assert_eq!(mgr.run_retention(Some(&policy)).unwrap().tasks, 0);
    assert!(mgr.get_task(id).is_some(), "exactly expire_time old stays");
    clock.advance(Duration::from_millis(1));
    assert_eq!(mgr.run_retention(Some(&policy)).unwrap().tasks, 1);
    assert!(mgr.get_task(id).is_none());
}

/// SPEC §11: age counts from last_active_time, not created_at: a task created
/// long ago that finished just now stays.
#[test]
fn s11_age_counts_from_last_active_time_not_created_at() {
    let (mgr, clock) = mem(1);
    mgr.register("ok", |_| Ok(json!(1).into())).unwrap();
    mgr.start().unwrap();
    let id = mgr
        .submit_with("ok", json!(null), SubmitOptions::new().delay(3600 * SEC))
        .unwrap();
    clock.advance(3600 * SEC);
    let t = mgr.wait(id, PATIENCE).unwrap();
    assert_eq!((t.created_at, t.last_active_time), (T0, T0 + 3_600_000));
    clock.advance(SEC);
    let policy = RetentionPolicy::new(Duration::from_secs(600));
    assert_eq!(mgr.run_retention(Some(&policy)).unwrap().tasks, 0);
    assert!(mgr.get_task(id).is_some());
    clock.advance(Duration::from_secs(600));
    assert_eq!(mgr.run_retention(Some(&policy)).unwrap().tasks, 1);
}

/// SPEC §11: only the listed finished statuses are removed; "Suspended tasks
/// are never removed", nor are pending or running ones, however old, even
/// with every allowed status listed.
#[test]
fn s11_unfinished_and_suspended_tasks_are_never_removed() {
    let (mgr, clock) = mem(2);
    let gate = Gate::new();
    let g = gate.clone();
    mgr.register_with(
        "block",
        HandlerOptions::new().timeout(Duration::ZERO),
        move |_| {
            g.wait();
            Ok(json!(1).into())
        },
    )
    .unwrap();
    let pop = populate(&mgr, &clock);
    let running = mgr.submit("block", json!(null)).unwrap();
    wait_status(&mgr, running, TaskStatus::Running);
    clock.advance(Duration::from_secs(1_800));
    let keep: Vec<TaskId> = all_tasks(&mgr)
        .iter()
        .filter(|t| {
            matches!(
                t.status,
                TaskStatus::Pending | TaskStatus::Running | TaskStatus::Suspended
            )
        })
        .map(|t| t.id)
        .collect();
    assert!(keep.contains(&pop.hold) && keep.contains(&running) && keep.contains(&pop.cron));
    let everything = RetentionPolicy::new(SEC).statuses([
        TaskStatus::Completed,
        TaskStatus::PermanentlyFailed,
        TaskStatus::Paused,
    ]);
    mgr.run_retention(Some(&everything)).unwrap();
    assert_eq!(ids(&all_tasks(&mgr)), keep);
    gate.open();
    mgr.wait(running, PATIENCE).unwrap();
}

/// SPEC §11: "run_retention(override?) returns counts of tasks, events and
/// attempts deleted" — exactly the history the deleted tasks had.
#[test]
fn s11_report_counts_the_deleted_tasks_events_and_attempts() {
    let (mgr, clock) = mem(2);
    populate(&mgr, &clock);
    clock.advance(Duration::from_secs(1_800));
    let policy = RetentionPolicy::new(SEC).statuses([
        TaskStatus::Completed,
        TaskStatus::PermanentlyFailed,
        TaskStatus::Paused,
    ]);
    let victims: Vec<Task> = all_tasks(&mgr)
        .into_iter()
        .filter(|t| policy.statuses.contains(&t.status))
        .collect();
    let events: usize = victims
        .iter()
        .map(|t| mgr.events(t.id).unwrap().len())
        .sum();
    let attempts: usize = victims
        .iter()
        .map(|t| mgr.attempts(t.id).unwrap().len())
        .sum();
    let r = mgr.run_retention(Some(&policy)).unwrap();
    assert_eq!(
        (r.tasks, r.events, r.attempts),
        (victims.len() as u64, events as u64, attempts as u64)
    );
    let again = mgr.run_retention(Some(&policy)).unwrap();
    assert_eq!((again.tasks, again.events, again.attempts), (0, 0, 0));
}

/// SPEC §11: "A task goes together with its events and attempts": after
/// retention nothing of it answers any query: get, events, attempts, tag and
/// workflow indexes, stats, counts, workflow views; its dedup key is free.
#[test]
fn s11_retention_leaves_no_history_index_or_dedup_key_behind() {
    let (mgr, clock) = mem(2);
    let pop = populate(&mgr, &clock);
    let dk = mgr
        .submit_with(
            "ok",
            json!(null),
            SubmitOptions::new().tag("b").dedup_key("d1"),
        )
        .unwrap();
    mgr.wait(dk, PATIENCE).unwrap();
    let before = all_tasks(&mgr);
    clock.advance(Duration::from_secs(1_800));
    mgr.run_retention(Some(&RetentionPolicy::new(SEC))).unwrap();
    let gone: Vec<TaskId> = before
        .iter()
        .filter(|t| {
            matches!(
                t.status,
                TaskStatus::Completed | TaskStatus::PermanentlyFailed
            )
        })
        .map(|t| t.id)
        .collect();
    assert!(gone.contains(&pop.root) && gone.contains(&pop.mid) && gone.contains(&dk));
    for id in &gone {
        assert!(mgr.get_task(*id).is_none());
        assert!(mgr.events(*id).is_err());
        assert!(mgr.attempts(*id).is_err());
    }
    let left = all_tasks(&mgr);
    for t in ["a", "b", "wf", "deep"] {
        assert_eq!(
            ids(&mgr.list_tasks(&TaskFilter::all().tag(t))),
            by_hand(&left, &TaskFilter::all().tag(t)),
            "tag {t}"
        );
    }
    assert!(mgr
        .list_tasks(&TaskFilter::all().workflow(pop.root))
        .is_empty());
    assert!(mgr
        .list_tasks(&TaskFilter::all().parent(pop.mid))
        .is_empty());
    assert!(mgr.workflow_summary(pop.root).is_err());
    assert!(mgr
        .workflow_audit(pop.root, Page::default(), Page::default())
        .is_err());
    assert_eq!(mgr.count_by_status(), counts_by_hand(&mgr));
    let stats: u64 = mgr.stats_by_tag(None).values().sum();
    assert_eq!(stats, left.len() as u64);
    assert_eq!(
        mgr.query_tasks(&TaskFilter::all(), Page::default()).total,
        left.len()
    );
    let again = mgr
        .submit_with("ok", json!(null), SubmitOptions::new().dedup_key("d1"))
        .unwrap();
    assert_ne!(again, dk, "the dedup key of a removed task is free");
}

/// SPEC §11 with §5: removing a finished child while its parent still waits
/// for a sibling does not lose the fan-in: the parent resumes once, sees both
/// entries, and completes.
#[test]
fn s11_retention_of_a_finished_child_does_not_block_its_parents_fan_in() {
    let (mgr, clock) = mem(3);
    let gate = Gate::new();
    let g = gate.clone();
    mgr.register("fast", |_| Ok(json!("fast").into())).unwrap();
    mgr.register_with(
        "slow",
        HandlerOptions::new().timeout(Duration::ZERO),
        move |_| {
            g.wait();
            Ok(json!("slow").into())
        },
    )
    .unwrap();
    mgr.register("top", |ctx| match ctx.stage() {
        0 => Ok(Outcome::spawn(vec![
            ChildSpec::new("fast", json!(null)),
            ChildSpec::new("slow", json!(null)),
        ])),
        _ => Ok(json!({"saw": ctx.result().cloned()}).into()),
    })
    .unwrap();
    mgr.start().unwrap();
    let root = mgr.submit("top", json!(null)).unwrap();
    eventually("both children created", || {
        common::children_of(&mgr, root).len() == 2
    });
    let kids = common::children_of(&mgr, root);
    let (fast, slow) = (kids[0].id, kids[1].id);
    wait_status(&mgr, fast, TaskStatus::Completed);
    wait_status(&mgr, slow, TaskStatus::Running);
    clock.advance(3600 * SEC);
    let r = mgr
        .run_retention(Some(&RetentionPolicy::new(Duration::from_secs(60))))
        .unwrap();
    assert_eq!(r.tasks, 1, "only the finished child");
    assert!(mgr.get_task(fast).is_none());
    assert_eq!(status(&mgr, root), TaskStatus::Suspended);
    gate.open();
    let t = mgr.wait(root, PATIENCE).unwrap();
    assert_eq!(t.status, TaskStatus::Completed);
    let saw = t.result.unwrap()["saw"].clone();
    let entries = saw.as_array().cloned().unwrap_or_default();
    assert_eq!(entries.len(), 2, "{saw}");
    assert_eq!(entries[0]["result"], json!("fast"));
    assert_eq!(entries[1]["result"], json!("slow"));
}

/// SPEC §11: a policy may only list completed, permanently_failed and paused;
/// another status is refused (a typed error) and deletes nothing, on
/// `run_retention` and on the builder.
#[test]
fn s11_a_policy_with_other_statuses_is_refused_and_deletes_nothing() {
    let (mgr, clock) = mem(2);
    populate(&mgr, &clock);
    clock.advance(Duration::from_secs(1_800));
    let before = all_tasks(&mgr);
    for s in [
        TaskStatus::Pending,
        TaskStatus::Running,
        TaskStatus::Failed,
        TaskStatus::Timeout,
        TaskStatus::Suspended,
    ] {
        let p = RetentionPolicy::new(SEC).statuses([TaskStatus::Completed, s]);
        let r = mgr.run_retention(Some(&p));
        assert!(
            matches!(r, Err(Error::InvalidOption(ref m)) if m.contains(s.as_str())),
            "{s}: {r:?}"
        );
        let built = TaskManager::builder().memory().retention(p, SEC).build();
        assert!(built.is_err(), "builder accepted {s}");
    }
    assert_eq!(all_tasks(&mgr), before);
}

/// SPEC §11: retention is durable: after a reopen (from the log, then from a
/// snapshot) the removed tasks stay removed, their dedup keys stay free, and
/// counts agree with lists.
#[test]
fn s11_removed_tasks_stay_removed_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let mgr = open(dir.path(), &clock, 2);
    let pop = populate(&mgr, &clock);
    let dk = mgr
        .submit_with(
            "ok",
            json!(null),
            SubmitOptions::new().tag("a").dedup_key("d1"),
        )
        .unwrap();
    mgr.wait(dk, PATIENCE).unwrap();
    clock.advance(Duration::from_secs(1_800));
    let r = mgr.run_retention(Some(&RetentionPolicy::new(SEC))).unwrap();
    assert!(r.tasks >= 8, "{r:?}");
    let after = view(&mgr, Some(pop.root));
    shut(mgr);
    for round in ["log", "snapshot"] {
        let mgr = open(dir.path(), &clock, 2);
        assert_eq!(
            view(&mgr, Some(pop.root)),
            after,
            "after reopen from {round}"
        );
        assert!(mgr.get_task(pop.root).is_none());
        assert!(mgr.get_task(dk).is_none());
        assert_eq!(mgr.count_by_status(), counts_by_hand(&mgr));
        if round == "log" {
            mgr.compact().unwrap();
        } else {
            mgr.register("ok", |_| Ok(json!(1).into())).unwrap();
            let again = mgr
                .submit_with("ok", json!(null), SubmitOptions::new().dedup_key("d1"))
                .unwrap();
            assert_ne!(again, dk, "dedup key still held after reopen");
        }
        shut(mgr);
    }
}

/// A string unique to the removed task of the compaction tests.
const MARK: &str = "ZQXJ-retained-payload-marker";

/// The files under `dir` whose bytes contain `what`.
fn files_hold(dir: &Path, what: &str) -> Vec<String> {
    let mut hits = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(bytes) = std::fs::read(&p) {
                if bytes.windows(what.len()).any(|w| w == what.as_bytes()) {
                    hits.push(p.display().to_string());
                }
            }
        }
    }
    hits
}

/// SPEC §11: "Deleted history really leaves the log (compaction)": after
/// retention and compaction no file of the directory holds the removed
/// tasks' payload, result or error any more.
#[test]
fn s11_compaction_removes_deleted_history_from_disk() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let mgr = open(dir.path(), &clock, 1);
    mgr.register(
        "ok",
        |ctx| Ok(json!({"echo": ctx.payload().clone()}).into()),
    )
    .unwrap();
    mgr.start().unwrap();
    let old = mgr.submit("ok", json!(MARK)).unwrap();
    mgr.wait(old, PATIENCE).unwrap();
    clock.advance(3600 * SEC);
    let young = mgr.submit("ok", json!("young")).unwrap();
    mgr.wait(young, PATIENCE).unwrap();
    assert!(
        !files_hold(dir.path(), MARK).is_empty(),
        "the marker should be in the log before retention"
    );
    let r = mgr
        .run_retention(Some(&RetentionPolicy::new(Duration::from_secs(60))))
        .unwrap();
    assert_eq!(r.tasks, 1);
    mgr.compact().unwrap();
    shut(mgr);
    let hits = files_hold(dir.path(), MARK);
    assert!(hits.is_empty(), "deleted history still on disk in {hits:?}");
    let mgr = open(dir.path(), &clock, 1);
    assert!(mgr.get_task(old).is_none());
    assert!(mgr.get_task(young).is_some());
}

/// SPEC §11: "Automatic retention runs periodically (not at start)": a
/// reopened manager full of old finished tasks keeps them at start and
/// removes them one interval later.
#[test]
fn s11_automatic_retention_runs_periodically_not_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let mgr = open(dir.path(), &clock, 2);
    let pop = populate(&mgr, &clock);
    shut(mgr);
    clock.advance(Duration::from_secs(86_400));
    let mgr = build_unlocked(
        durable_builder(dir.path(), &clock, 2)
            .retention(RetentionPolicy::new(Duration::from_secs(60)), 600 * SEC),
    )
    .unwrap();
    for n in ["ok", "bad", "hold", "kid", "mid", "parent", "tick"] {
        mgr.register(n, |_| Ok(json!(null).into())).unwrap();
    }
    mgr.start().unwrap();
    clock.advance(Duration::from_millis(1));
    assert!(mgr.get_task(pop.ok_a).is_some(), "retention ran at start");
    clock.advance(599 * SEC);
    assert!(
        mgr.get_task(pop.ok_b).is_some(),
        "retention ran before its interval"
    );
    clock.advance(SEC);
    eventually("retention removed the old tasks", || {
        mgr.get_task(pop.ok_a).is_none() && mgr.get_task(pop.root).is_none()
    });
    assert!(mgr.get_task(pop.hold).is_some(), "suspended kept");
    assert!(mgr.get_task(pop.ok_none).is_none());
    assert!(mgr.get_task(pop.bad).is_none());
    assert!(mgr.get_task(pop.paused).is_some(), "paused kept by default");
    let _ = (pop.cron, pop.delayed);
    assert_eq!(mgr.count_by_status(), counts_by_hand(&mgr));
}

/// SPEC §11: "Deleted history really leaves the log (compaction)", in the
/// weaker reading: once the log has moved on to later segments, compaction
/// drops the segment that held the removed task.
#[test]
fn s11_compaction_removes_deleted_history_once_the_log_moved_past_it() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let mgr = build_unlocked(builder(&clock, 1).dir(dir.path()).segment_size(64 << 10)).unwrap();
    mgr.register(
        "ok",
        |ctx| Ok(json!({"echo": ctx.payload().clone()}).into()),
    )
    .unwrap();
    mgr.start().unwrap();
    let old = mgr.submit("ok", json!(MARK)).unwrap();
    mgr.wait(old, PATIENCE).unwrap();
    clock.advance(3600 * SEC);
    let r = mgr
        .run_retention(Some(&RetentionPolicy::new(Duration::from_secs(60))))
        .unwrap();
    assert_eq!(r.tasks, 1);
    let filler = "f".repeat(1024);
    let mut last = old;
    for i in 0..300 {
        last = mgr.submit("ok", json!([i, filler])).unwrap();
    }
    mgr.wait(last, PATIENCE).unwrap();
    assert!(
        mgr.log_stats().unwrap().segments > 2,
        "{:?}",
        mgr.log_stats()
    );
    mgr.compact().unwrap();
    shut(mgr);
    let hits = files_hold(dir.path(), MARK);
    assert!(hits.is_empty(), "deleted history still on disk in {hits:?}");
    let mgr = open(dir.path(), &clock, 1);
    assert!(mgr.get_task(old).is_none());
    assert_eq!(all_tasks(&mgr).len(), 300);
}

/// SPEC §10 delete on a durable directory: the deleted tasks stay deleted
/// after a reopen (from the log and from a snapshot), their dedup keys stay
/// free, and the indexes and counts agree with the list.
#[test]
fn s10_deleted_tasks_stay_deleted_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let mgr = open(dir.path(), &clock, 2);
    let pop = populate(&mgr, &clock);
    let dk = mgr
        .submit_with(
            "ok",
            json!(null),
            SubmitOptions::new().tag("b").dedup_key("del-1"),
        )
        .unwrap();
    mgr.wait(dk, PATIENCE).unwrap();
    let n = mgr.delete_tasks(&TaskFilter::all().tag("b")).unwrap();
    assert_eq!(n, 4, "ok_b, hold, delayed, dk");
    assert_eq!(
        mgr.delete_tasks(&TaskFilter::all().workflow(pop.root))
            .unwrap(),
        4
    );
    let after = view(&mgr, Some(pop.root));
    shut(mgr);
    for round in ["log", "snapshot"] {
        let mgr = open(dir.path(), &clock, 2);
        assert_eq!(
            view(&mgr, Some(pop.root)),
            after,
            "after reopen from {round}"
        );
        for id in [pop.ok_b, pop.hold, pop.delayed, dk, pop.root, pop.mid] {
            assert!(
                mgr.get_task(id).is_none(),
                "{id} is back after reopen from {round}"
            );
        }
        assert_eq!(mgr.count_by_status(), counts_by_hand(&mgr));
        if round == "log" {
            mgr.compact().unwrap();
        } else {
            mgr.register("ok", |_| Ok(json!(1).into())).unwrap();
            let again = mgr
                .submit_with("ok", json!(null), SubmitOptions::new().dedup_key("del-1"))
                .unwrap();
            assert_ne!(again, dk, "dedup key of a deleted task held after reopen");
        }
        shut(mgr);
    }
}

/// SPEC §11 edge values of expire_time: zero keeps what finished this very
/// millisecond (not strictly older than now) and removes what finished one
/// millisecond earlier; the largest duration removes nothing.
#[test]
fn s11_expire_time_edge_values() {
    let (mgr, clock) = mem(1);
    mgr.register("ok", |_| Ok(json!(1).into())).unwrap();
    mgr.start().unwrap();
    let older = mgr.submit("ok", json!(1)).unwrap();
    mgr.wait(older, PATIENCE).unwrap();
    clock.advance(Duration::from_millis(1));
    let now = mgr.submit("ok", json!(2)).unwrap();
    mgr.wait(now, PATIENCE).unwrap();
    let forever = RetentionPolicy::new(Duration::MAX);
    assert_eq!(mgr.run_retention(Some(&forever)).unwrap().tasks, 0);
    let zero = RetentionPolicy::new(Duration::ZERO);
    assert_eq!(mgr.run_retention(Some(&zero)).unwrap().tasks, 1);
    assert!(mgr.get_task(older).is_none());
    assert!(mgr.get_task(now).is_some());
}
