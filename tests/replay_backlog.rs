//! A reopened manager is the manager that was stopped (or killed), with the
//! weight on tasks that were still pending, never claimed, when the process
//! ended, and on tasks whose only later records are not claims (pause,
//! resume, delete, reschedule): replay keeps those as their submit records
//! until their next record comes, and builds the rest when the replay ends.
//!
//! The main oracle is a twin: the same calls, in the same order, on an
//! in-memory manager that never stops, beside a durable one that is stopped
//! and reopened in between. Both have a manual clock moved in step and one
//! worker, so ids, times, event sequence numbers and dispatch order are
//! deterministic and must agree, down to every field of every task, event
//! and attempt, and every query.

mod common;

use common::picture::{outcome, picture, same};
use common::{build_unlocked, eventually, PATIENCE};
use fibflow::{
    ChildSpec, Event, HandlerOptions, ManualClock, Outcome, Pool, SubmitOptions, Task, TaskFilter,
    TaskId, TaskManager, TaskStatus, TimeZone,
};
use serde_json::{json, Value};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

/// 2024-01-01T00:00:00Z.
const T0: u64 = 1_704_067_200_000;
const SEC: Duration = Duration::from_secs(1);

/// The ids a manager's handlers ran, in order.
type Runs = Arc<Mutex<Vec<TaskId>>>;

fn builder(clock: &Arc<ManualClock>) -> fibflow::Builder {
    TaskManager::builder()
        .clock(clock.clone())
        .time_zone(TimeZone::from_name("UTC").unwrap())
        .max_concurrent_tasks(1)
}

fn open_dir(dir: &Path, clock: &Arc<ManualClock>) -> TaskManager {
    build_unlocked(builder(clock).dir(dir).segment_size(1 << 20)).unwrap()
}

fn open_mem(clock: &Arc<ManualClock>) -> TaskManager {
    builder(clock).memory().build().unwrap()
}

/// The handlers every manager of this file has: `alpha` (defaults), `beta`
/// (its own priority, retries, timeout), `gamma` (writes progress and a
/// checkpoint), `gpu` (requires a capability no pool has: never runs).
/// A payload `{"fail": true}` fails the attempt.
fn register(m: &TaskManager, runs: &Runs) {
    let handler = |runs: Runs, chatty: bool| {
        move |ctx: &fibflow::TaskContext| -> fibflow::HandlerResult {
            runs.lock().unwrap().push(ctx.id());
            if chatty {
                ctx.progress(fibflow::Progress {
                    stage_name: Some("work".into()),
                    percent: Some(40),
                    ..Default::default()
                })
                .unwrap();
                ctx.audit("mark", Some("half way"), Some(json!({"n": 1})))
                    .unwrap();
            }
            if ctx.payload()["fail"] == json!(true) {
                return Err("boom".into());
            }
            Ok(json!({"ran": ctx.payload().clone(), "stage": ctx.stage()}).into())
        }
    };
    m.register("alpha", handler(runs.clone(), false)).unwrap();
    let beta = HandlerOptions::new()
        .priority(2)
        .max_retries(4)
        .timeout(30 * SEC)
        .retry_interval(5 * SEC);
    m.register_with("beta", beta, handler(runs.clone(), false))
        .unwrap();
    let gamma = HandlerOptions::new().description("chatty");
    m.register_with("gamma", gamma, handler(runs.clone(), true))
        .unwrap();
    let gpu = HandlerOptions::new().requires(["gpu"]);
    m.register_with("gpu", gpu, handler(runs.clone(), false))
        .unwrap();
}

/// One call on a manager.
#[derive(Debug, Clone)]
enum Op {
    Submit(String, Value, Box<SubmitOptions>),
    Batch(Vec<(String, Value, SubmitOptions)>),
    Pause(usize),
    Resume(usize),
    Cancel(usize),
    /// Deletes the tasks of a tag.
    Delete(String),
    Advance(u64),
    Compact,
}

/// A seeded source of calls (xorshift), picking ids among those created so far.
struct Gen {
    /// Whether to resume tasks (see the dispatch order tests at the end).
    resumes: bool,
    rng: common::XorShift,
    ids: Vec<TaskId>,
    uniq: u64,
}

impl Gen {
    fn new(seed: u64) -> Gen {
        Gen {
            resumes: true,
            rng: common::XorShift::new(seed),
            ids: Vec::new(),
            uniq: 0,
        }
    }

    fn below(&mut self, n: u64) -> u64 {
        self.rng.below(n)
    }

    fn pick(&mut self) -> usize {
        if self.ids.is_empty() {
            0
        } else {
            // Mostly recent tasks, so controls hit pending ones.
            let n = self.ids.len() as u64;
            let back = self.below(n.min(40));
            (n - 1 - back) as usize
        }
    }

    fn task(&mut self, now: u64) -> (String, Value, SubmitOptions) {
        let name = ["alpha", "alpha", "beta", "gamma", "gpu", "nobody"][self.below(6) as usize];
        let mut o = SubmitOptions::new();
        let mut payload = json!({"n": self.uniq});
        if self.below(3) == 0 {
            o = o.priority(self.below(7) as i32 - 3);
        }
        match self.below(6) {
            0 => o = o.tag("red"),
            1 => o = o.tag("blue"),
            2 => {
                self.uniq += 1;
                o = o.tag(format!("u{}", self.uniq));
            }
            _ => {}
        }
        match self.below(8) {
            0 => o = o.delay(Duration::from_millis(500 + self.below(20_000))),
            1 => {
                let at = now + self.below(30_000);
                o = o.run_at(UNIX_EPOCH + Duration::from_millis(at));
            }
            _ => {}
        }
        if self.below(5) == 0 {
            o = o.dedup_key(format!("k{}", self.below(12)));
        }
        if self.below(12) == 0 {
            o = o.requires(["gpu"]);
        }
        if self.below(6) == 0 {
            o = o.timeout(Duration::from_millis(1 + self.below(100_000)));
        }
        if self.below(6) == 0 {
            o = o.max_retries(self.below(5) as u32);
        }
        if name == "alpha" && self.below(12) == 0 {
            o = o.cron("0/20 * * * * *");
        } else if self.below(8) == 0 {
            payload = json!({"fail": true, "n": self.uniq});
            o = o.max_retries(1);
        }
        self.uniq += 1;
        (name.to_string(), payload, o)
    }

    fn op(&mut self, now: u64, compact: bool) -> Op {
        match self.below(100) {
            0..=44 => {
                let (n, p, o) = self.task(now);
                Op::Submit(n, p, Box::new(o))
            }
            45..=51 => Op::Batch((0..=self.below(4)).map(|_| self.task(now)).collect()),
            52..=63 => Op::Pause(self.pick()),
            64..=73 if self.resumes => Op::Resume(self.pick()),
            74..=76 => Op::Cancel(self.pick()),
            77..=82 => Op::Delete(format!("u{}", 1 + self.below(self.uniq.max(1)))),
            83..=84 if compact => Op::Compact,
            _ => Op::Advance(self.below(4_000)),
        }
    }

    /// Notes the ids a call's outcome names.
    fn observe(&mut self, op: &Op, out: &Value) {
        let mut add = |v: &Value| {
            if let Some(id) = v.as_u64() {
                if !self.ids.contains(&TaskId(id)) {
                    self.ids.push(TaskId(id));
                }
            }
        };
        match op {
            Op::Submit(..) => add(&out["ok"]),
            Op::Batch(..) => {
                if let Some(v) = out["ok"].as_array() {
                    v.iter().for_each(add);
                }
            }
            _ => {}
        }
    }
}

/// Applies one call; returns what it answered.
fn apply(m: &TaskManager, clock: &ManualClock, ids: &[TaskId], op: &Op) -> Value {
    let id = |i: &usize| ids.get(*i).copied().unwrap_or(TaskId(7));
    match op {
        Op::Submit(n, p, o) => outcome(m.submit_with(n, p.clone(), (**o).clone())),
        Op::Batch(v) => outcome(m.submit_batch(v.clone())),
        Op::Pause(i) => outcome(m.pause_task(id(i))),
        Op::Resume(i) => outcome(m.resume_task(id(i), Some("again"))),
        Op::Cancel(i) => outcome(m.cancel_task(id(i), None)),
        Op::Delete(tag) => outcome(m.delete_tasks(&TaskFilter::all().tag(tag.as_str()))),
        Op::Advance(ms) => {
            clock.advance(Duration::from_millis(*ms));
            json!(null)
        }
        Op::Compact => outcome(m.compact()),
    }
}

fn now_of(clock: &ManualClock) -> u64 {
    use fibflow::Clock;
    clock.now_ms()
}

/// A durable manager and its in-memory twin, driven by the same calls.
struct Twin {
    dir: tempfile::TempDir,
    mem: TaskManager,
    mclock: Arc<ManualClock>,
    mruns: Runs,
    dur: Option<TaskManager>,
    dclock: Arc<ManualClock>,
    druns: Runs,
    started: bool,
    gen: Gen,
}

impl Twin {
    fn new(seed: u64) -> Twin {
        let dir = tempfile::tempdir().unwrap();
        let (mclock, dclock) = (ManualClock::new(T0), ManualClock::new(T0));
        let (mruns, druns) = (Runs::default(), Runs::default());
        let mem = open_mem(&mclock);
        register(&mem, &mruns);
        let dur = open_dir(dir.path(), &dclock);
        register(&dur, &druns);
        Twin {
            dir,
            mem,
            mclock,
            mruns,
            dur: Some(dur),
            dclock,
            druns,
            started: false,
            gen: Gen::new(seed),
        }
    }

    fn dur(&self) -> &TaskManager {
        self.dur.as_ref().unwrap()
    }

    /// The same call on both; they must answer the same.
    fn both(&mut self, op: &Op) -> Value {
        let a = apply(&self.mem, &self.mclock, &self.gen.ids, op);
        let b = apply(self.dur(), &self.dclock, &self.gen.ids, op);
        assert_eq!(a, b, "the twins answered {op:?} differently");
        self.gen.observe(op, &a);
        a
    }

    /// `n` seeded calls on both.
    fn ops(&mut self, n: usize, compact: bool) {
        for _ in 0..n {
            let op = self.gen.op(now_of(&self.mclock), compact);
            self.both(&op);
        }
    }

    #[track_caller]
    fn check(&self, what: &str) {
        same(&picture(&self.mem), &picture(self.dur()), what);
    }

    /// Stops (or just drops) the durable manager and reopens its directory:
    /// the reopened one must show what the stopped one showed, and match the twin.
    #[track_caller]
    fn reopen(&mut self, graceful: bool) {
        let before = picture(self.dur());
        let old = self.dur.take().unwrap();
        if graceful {
            old.stop(PATIENCE).unwrap();
        }
        drop(old);
        let dur = open_dir(self.dir.path(), &self.dclock);
        let stats = dur.recovery_stats().clone();
        assert_eq!(
            stats.records_refused, 0,
            "replay refused records: {stats:?}"
        );
        assert_eq!(stats.recovered, 0, "nothing was running: {stats:?}");
        register(&dur, &self.druns);
        if self.started {
            dur.pause();
            dur.start().unwrap();
        }
        self.dur = Some(dur);
        same(
            &before,
            &picture(self.dur()),
            "the reopened manager differs from the stopped one",
        );
        self.check("the reopened manager differs from its twin");
    }

    /// Lets both run what is due (one worker each), until idle, then pauses
    /// them again; checks the order against SPEC §3 and the twins against
    /// each other.
    fn run(&mut self) {
        let m = run_due(&self.mem, &self.mclock, &self.mruns);
        let d = run_due(self.dur(), &self.dclock, &self.druns);
        assert_eq!(m, d, "the twins ran different tasks");
        self.started = true;
        self.check("after running the due tasks");
    }
}

/// What one worker must run next, in order: due pending tasks it can take,
/// by priority desc, then next_run_time, then id (SPEC §3).
fn expected_order(m: &TaskManager, now: u64) -> Vec<TaskId> {
    let mut due: Vec<Task> = m
        .list_tasks(&TaskFilter::all().status(TaskStatus::Pending))
        .into_iter()
        .filter(|t| t.next_run_time <= now && t.requires.is_empty() && &*t.name != "gpu")
        .collect();
    due.sort_by_key(|t| (-i64::from(t.priority), t.next_run_time, t.id));
    due.into_iter().map(|t| t.id).collect()
}

/// Starts `m` (paused, so that its timer queues what is due first), lets its
/// one worker run what is due until idle, pauses it again; checks that the
/// tasks ran in the order SPEC §3 gives. Returns what ran.
fn run_due(m: &TaskManager, clock: &ManualClock, runs: &Runs) -> Vec<TaskId> {
    let expected = expected_order(m, now_of(clock));
    let base = runs.lock().unwrap().len();
    m.pause();
    m.start().unwrap();
    clock.advance(Duration::ZERO);
    m.resume();
    eventually("the due tasks ran", || {
        runs.lock().unwrap().len() >= base + expected.len()
            && m.count_by_status()[&TaskStatus::Running] == 0
    });
    m.pause();
    let ran = runs.lock().unwrap()[base..].to_vec();
    assert_eq!(ran, expected, "the due tasks ran out of order");
    ran
}

/// Dedup keys held by pending or paused tasks answer with their task.
fn check_dedup(m: &TaskManager) {
    let mut checked = 0;
    for t in m.list_tasks(&TaskFilter::all()) {
        let Some(key) = &t.dedup_key else { continue };
        if !matches!(t.status, TaskStatus::Pending | TaskStatus::Paused) {
            continue;
        }
        let again = m
            .submit_with(
                "alpha",
                json!("dup"),
                SubmitOptions::new().dedup_key(key.clone()),
            )
            .unwrap();
        assert_eq!(
            again, t.id,
            "dedup key {key} no longer answers with its task"
        );
        checked += 1;
    }
    assert!(checked > 0, "the scenario held no dedup key");
}

#[test]
fn a_backlog_submitted_before_start_reopens_like_a_twin_that_never_stopped() {
    let mut tw = Twin::new(1);
    tw.ops(400, false);
    let pending = tw.mem.count_by_status()[&TaskStatus::Pending];
    assert!(pending > 100, "only {pending} pending tasks");
    tw.reopen(true);
    // A reopen of a reopened log, without a record in between.
    tw.reopen(true);
    // Later calls land on tasks built at the end of the replay.
    tw.ops(150, false);
    tw.reopen(false);
    check_dedup(&tw.mem);
    check_dedup(tw.dur());
    tw.check("after the dedup resubmits");
    tw.run();
    tw.ops(60, false);
    tw.reopen(true);
    tw.run();
}

#[test]
fn many_seeds_of_pending_backlogs_with_controls_reopen_identical() {
    for seed in 2..10 {
        let mut tw = Twin::new(seed);
        tw.gen.resumes = seed % 3 != 1;
        for _ in 0..3 {
            tw.ops(70, false);
            tw.reopen(seed % 2 == 0);
        }
        tw.run();
        tw.ops(40, false);
        tw.reopen(true);
        tw.run();
    }
}

#[test]
fn completed_and_pending_tasks_across_compactions_and_double_reopens() {
    let mut tw = Twin::new(42);
    tw.ops(120, false);
    tw.run();
    tw.ops(80, true);
    tw.both(&Op::Compact);
    // A backlog after the snapshot: replayed on top of it.
    tw.ops(120, false);
    tw.reopen(true);
    tw.reopen(true);
    tw.both(&Op::Compact);
    tw.ops(60, false);
    tw.reopen(true);
    tw.run();
    tw.ops(100, true);
    tw.reopen(false);
    tw.reopen(true);
    tw.run();
}

/// Hand-made: pending tasks whose only later records are pause, resume and
/// delete, interleaved with submits of the same shard, so that each control
/// record reaches a task replay still holds as its submit record.
#[test]
fn pending_tasks_changed_only_by_control_records_reopen_identical() {
    let mut tw = Twin::new(9);
    let submit = |tw: &mut Twin, p: i32, tag: &str| -> TaskId {
        let op = Op::Submit(
            "alpha".into(),
            json!({"p": p}),
            Box::new(SubmitOptions::new().priority(p).tag(tag)),
        );
        TaskId(tw.both(&op)["ok"].as_u64().unwrap())
    };
    let idx = |tw: &Twin, id: TaskId| tw.gen.ids.iter().position(|x| *x == id).unwrap();
    // 16 shards: 64 tasks are 4 per shard.
    let ids: Vec<TaskId> = (0..64)
        .map(|i| submit(&mut tw, i % 5 - 2, &format!("t{i}")))
        .collect();
    for (i, id) in ids.iter().enumerate() {
        let k = idx(&tw, *id);
        match i % 8 {
            0 => {
                tw.both(&Op::Pause(k));
            }
            1 => {
                tw.both(&Op::Pause(k));
                tw.both(&Op::Advance(1_500));
                tw.both(&Op::Resume(k));
            }
            2 => {
                tw.both(&Op::Delete(format!("t{i}")));
            }
            3 => {
                tw.both(&Op::Pause(k));
                tw.both(&Op::Delete(format!("t{i}")));
            }
            4 => {
                // refused: nothing is written
                let out = tw.both(&Op::Cancel(k));
                assert!(out.get("err").is_some(), "cancel of a pending task: {out}");
                let out = tw.both(&Op::Resume(k));
                assert!(out.get("err").is_some(), "resume of a pending task: {out}");
            }
            5 => {
                tw.both(&Op::Pause(k));
                tw.both(&Op::Resume(k));
                tw.both(&Op::Pause(k));
            }
            _ => {}
        }
        if i % 3 == 0 {
            submit(&mut tw, 0, "late");
        }
    }
    let counts = tw.mem.count_by_status();
    assert_eq!(counts[&TaskStatus::Paused], 16);
    tw.reopen(true);
    for (i, id) in ids.iter().enumerate() {
        let t = tw.dur().get_task(*id);
        match i % 8 {
            2 | 3 => assert!(t.is_none(), "deleted task {id:?} is back"),
            0 | 5 => assert_eq!(t.unwrap().status, TaskStatus::Paused),
            _ => assert_eq!(t.unwrap().status, TaskStatus::Pending),
        }
    }
    // Later records get the next sequence numbers of each shard, as in the twin.
    for (i, id) in ids.iter().enumerate() {
        let k = idx(&tw, *id);
        match i % 8 {
            0 => {
                tw.both(&Op::Resume(k));
            }
            6 => {
                tw.both(&Op::Pause(k));
            }
            _ => {}
        }
    }
    tw.check("controls after the reopen");
    tw.reopen(true);
    // The reopened manager alone: the twin's queue still holds the places the
    // resumed tasks had before their pause (see the dispatch order tests).
    run_due(tw.dur(), &tw.dclock, &tw.druns);
    for (i, id) in ids.iter().enumerate() {
        let t = tw.dur().get_task(*id);
        let want = match i % 8 {
            2 | 3 => None,
            5 | 6 => Some(TaskStatus::Paused),
            _ => Some(TaskStatus::Completed),
        };
        assert_eq!(t.map(|t| t.status), want, "task {i}");
    }
}

fn counter(
    m: &TaskManager,
    name: &str,
    log: &Arc<Mutex<Vec<(TaskId, u64)>>>,
    clock: &Arc<ManualClock>,
) {
    let (log, clock) = (log.clone(), clock.clone());
    m.register(name, move |ctx| {
        log.lock().unwrap().push((ctx.id(), now_of(&clock)));
        Ok(json!(null).into())
    })
    .unwrap();
}

#[test]
fn delayed_and_cron_tasks_pending_across_a_reopen_fire_at_their_time() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let runs = Arc::new(Mutex::new(Vec::new()));
    let at = |ms: u64| UNIX_EPOCH + Duration::from_millis(T0 + ms);
    let (d10, d25, r40, c15, paused, resumed, deleted, before) = {
        let mgr = open_dir(dir.path(), &clock);
        counter(&mgr, "d", &runs, &clock);
        let sub = |o: SubmitOptions| mgr.submit_with("d", json!(null), o).unwrap();
        let d10 = sub(SubmitOptions::new().delay(10 * SEC));
        let d25 = sub(SubmitOptions::new().delay(25 * SEC).tag("x"));
        let r40 = sub(SubmitOptions::new().run_at(at(40_000)).priority(3));
        let c15 = sub(SubmitOptions::new().cron("*/15 * * * * *"));
        let paused = sub(SubmitOptions::new().delay(5 * SEC));
        let resumed = sub(SubmitOptions::new().delay(50 * SEC));
        let deleted = sub(SubmitOptions::new().delay(5 * SEC).tag("gone"));
        mgr.pause_task(paused).unwrap();
        clock.advance(2 * SEC);
        mgr.pause_task(resumed).unwrap();
        mgr.resume_task(resumed, None).unwrap(); // due now: next_run_time = T0 + 2 s
        assert_eq!(mgr.delete_tasks(&TaskFilter::all().tag("gone")).unwrap(), 1);
        let before = picture(&mgr);
        mgr.stop(PATIENCE).unwrap();
        (d10, d25, r40, c15, paused, resumed, deleted, before)
    };
    clock.advance(SEC); // T0 + 3 s
    let mgr = open_dir(dir.path(), &clock);
    counter(&mgr, "d", &runs, &clock);
    same(&before, &picture(&mgr), "the reopened manager differs");
    assert!(mgr.get_task(deleted).is_none());
    let next = |id| mgr.get_task(id).unwrap().next_run_time;
    assert_eq!(
        [next(d10), next(d25), next(r40), next(c15), next(resumed)],
        [
            T0 + 10_000,
            T0 + 25_000,
            T0 + 40_000,
            T0 + 15_000,
            T0 + 2_000
        ]
    );
    mgr.start().unwrap();
    let ran = |n: usize| {
        eventually("the runs", || runs.lock().unwrap().len() >= n);
        let v = runs.lock().unwrap().clone();
        assert_eq!(v.len(), n, "more ran than expected: {v:?}");
        v
    };
    // Only the resumed task is due at start.
    assert_eq!(ran(1), vec![(resumed, T0 + 3_000)]);
    let mut steps = vec![];
    for (to, id) in [
        (10_000, d10),
        (15_000, c15),
        (25_000, d25),
        (30_000, c15),
        (40_000, r40),
    ] {
        clock.set(T0 + to - 1);
        // nothing is due one millisecond before
        let n = runs.lock().unwrap().len();
        assert!(mgr.waiting_reason(id).unwrap().is_some());
        assert_eq!(runs.lock().unwrap().len(), n, "ran early before {to}");
        clock.set(T0 + to);
        let v = ran(n + 1);
        steps.push(*v.last().unwrap());
        assert_eq!(*v.last().unwrap(), (id, T0 + to));
    }
    assert_eq!(mgr.get_task(paused).unwrap().status, TaskStatus::Paused);
    assert_eq!(mgr.get_task(c15).unwrap().next_run_time, T0 + 45_000);
    // `ran` sees a run when its handler starts: r40's completion may still be
    // on its way, so wait for each task's outcome.
    for id in [d10, d25, r40, resumed] {
        assert_eq!(
            mgr.wait(id, PATIENCE).unwrap().status,
            TaskStatus::Completed
        );
    }
    assert_eq!(steps.len(), 5);
}

/// A parent suspended on its children with one child done, one pending
/// (needs a capability no pool has yet), one paused while pending.
#[test]
fn a_parent_waiting_on_pending_children_reopens_identical_and_fans_in() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let reg = |m: &TaskManager| {
        m.register(
            "kid",
            |ctx| Ok(json!({"kid": ctx.payload().clone()}).into()),
        )
        .unwrap();
        m.register("parent", |ctx| {
            if ctx.stage() == 0 {
                Ok(Outcome::Spawn {
                    children: vec![
                        ChildSpec::new("kid", json!(0)).tag("k0"),
                        ChildSpec::new("kid", json!(1))
                            .requires(["gpu"])
                            .priority(4),
                        ChildSpec::new("kid", json!(2)).requires(["gpu"]),
                        ChildSpec::new("kid", json!(3)).requires(["gpu"]).tag("k3"),
                    ],
                    context: Some(b"ctx".to_vec()),
                })
            } else {
                Ok(json!({"seen": ctx.result().cloned()}).into())
            }
        })
        .unwrap();
    };
    let (parent, kids, before) = {
        let mgr = open_dir(dir.path(), &clock);
        reg(&mgr);
        let parent = mgr
            .submit_with("parent", json!(null), SubmitOptions::new().tag("wf"))
            .unwrap();
        mgr.start().unwrap();
        eventually("the first child done", || {
            mgr.get_task(parent).unwrap().completed_children == 1
        });
        let kids: Vec<TaskId> = common::children_of(&mgr, parent)
            .iter()
            .map(|k| k.id)
            .collect();
        assert_eq!(kids.len(), 4);
        mgr.pause_task(kids[2]).unwrap();
        mgr.pause_task(kids[3]).unwrap();
        mgr.resume_task(kids[3], None).unwrap();
        clock.advance(SEC);
        let before = picture(&mgr);
        mgr.stop(PATIENCE).unwrap();
        (parent, kids, before)
    };
    let mgr = open_dir(dir.path(), &clock);
    reg(&mgr);
    same(&before, &picture(&mgr), "the reopened workflow differs");
    drop(mgr);
    // Reopened with the capability the children need.
    let b = builder(&clock)
        .dir(dir.path())
        .segment_size(1 << 20)
        .pool(Pool::new("gpu").tags(["gpu"]).concurrency(1));
    let mgr = build_unlocked(b).unwrap();
    reg(&mgr);
    let p = mgr.get_task(parent).unwrap();
    assert_eq!(
        (p.status, p.total_children, p.completed_children),
        (TaskStatus::Suspended, 4, 1)
    );
    assert_eq!(mgr.list_tasks(&TaskFilter::all().workflow(parent)).len(), 5);
    assert_eq!(mgr.list_tasks(&TaskFilter::all().tag("k3")).len(), 1);
    mgr.start().unwrap();
    for k in [kids[1], kids[3]] {
        assert_eq!(mgr.wait(k, PATIENCE).unwrap().status, TaskStatus::Completed);
    }
    eventually("three children delivered", || {
        mgr.get_task(parent).unwrap().completed_children == 3
    });
    assert_eq!(mgr.get_task(parent).unwrap().status, TaskStatus::Suspended);
    assert_eq!(mgr.get_task(kids[2]).unwrap().status, TaskStatus::Paused);
    mgr.resume_task(kids[2], None).unwrap();
    let t = mgr.wait(parent, PATIENCE).unwrap();
    assert_eq!((t.status, t.stage), (TaskStatus::Completed, 1));
    let seen: Vec<Value> = kids
        .iter()
        .enumerate()
        .map(|(i, k)| json!({"task_id": k, "result": {"kid": i}}))
        .collect();
    assert_eq!(t.result.unwrap()["seen"], json!(seen));
    let evs: Vec<Event> = mgr.events(parent).unwrap();
    let resumed = evs
        .iter()
        .filter(|e| e.metadata.get("resume_reason") == Some(&json!("children_completed")))
        .count();
    assert_eq!(resumed, 1, "{evs:?}");
}

/// Not a test of its own: the child process of the kill test, active only when
/// `FIBFLOW_BACKLOG_CHILD` names a directory. It writes a seeded backlog
/// (never started), saves its picture, and waits to be killed.
#[test]
fn backlog_child() {
    let Ok(dir) = std::env::var("FIBFLOW_BACKLOG_CHILD") else {
        return;
    };
    let dir = Path::new(&dir);
    let clock = ManualClock::new(T0);
    let mgr = open_dir(&dir.join("log"), &clock);
    register(&mgr, &Runs::default());
    let mut gen = Gen::new(77);
    for _ in 0..300 {
        let op = gen.op(now_of(&clock), true);
        let out = apply(&mgr, &clock, &gen.ids, &op);
        gen.observe(&op, &out);
    }
    let pic = json!({"now": now_of(&clock), "picture": picture(&mgr)});
    std::fs::write(dir.join("picture.tmp"), pic.to_string()).unwrap();
    std::fs::rename(dir.join("picture.tmp"), dir.join("picture.json")).unwrap();
    loop {
        std::thread::park();
    }
}

#[test]
fn a_killed_process_with_a_pending_backlog_reopens_to_its_last_picture() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "backlog_child", "--test-threads=1"])
        .env("FIBFLOW_BACKLOG_CHILD", dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pic = dir.path().join("picture.json");
    eventually("the child saved its picture", || {
        pic.exists() || child.try_wait().unwrap().is_some()
    });
    assert!(child.try_wait().unwrap().is_none(), "the child ended early");
    child.kill().unwrap();
    child.wait().unwrap();
    let saved: Value = serde_json::from_str(&std::fs::read_to_string(&pic).unwrap()).unwrap();
    let clock = ManualClock::new(saved["now"].as_u64().unwrap());
    let runs = Runs::default();
    let mgr = open_dir(&dir.path().join("log"), &clock);
    register(&mgr, &runs);
    assert_eq!(mgr.recovery_stats().records_refused, 0);
    same(
        &saved["picture"],
        &picture(&mgr),
        "the reopened manager differs from the killed one",
    );
    assert!(mgr.count_by_status()[&TaskStatus::Pending] > 50);
    check_dedup(&mgr);
    drop(mgr);
    // And once more, after the dedup resubmits wrote nothing but answers.
    let mgr = open_dir(&dir.path().join("log"), &clock);
    register(&mgr, &runs);
    same(&saved["picture"], &picture(&mgr), "a second reopen differs");
}

/// SPEC §3 order on a manager that never stopped, beside the same calls on a
/// durable manager reopened before it starts: a pending task paused and
/// resumed has `next_run_time` = its resume time and must run after a task of
/// the same priority that was ready earlier.
#[test]
fn a_pending_task_paused_and_resumed_runs_at_its_resume_time_as_after_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let mut orders = Vec::new();
    for reopen in [true, false] {
        let clock = ManualClock::new(T0);
        let runs = Runs::default();
        let mut m = if reopen {
            open_dir(dir.path(), &clock)
        } else {
            open_mem(&clock)
        };
        register(&m, &runs);
        let a = m.submit("alpha", json!("a")).unwrap();
        let b = m.submit("alpha", json!("b")).unwrap();
        m.pause_task(a).unwrap();
        clock.advance(SEC);
        m.resume_task(a, None).unwrap();
        assert_eq!(m.get_task(a).unwrap().next_run_time, T0 + 1_000);
        assert_eq!(m.get_task(b).unwrap().next_run_time, T0);
        if reopen {
            m.stop(PATIENCE).unwrap();
            drop(m);
            m = open_dir(dir.path(), &clock);
            register(&m, &runs);
        }
        // run_due checks the SPEC order: b (ready at T0) before a (T0 + 1 s)
        let ran = run_due(&m, &clock, &runs);
        assert_eq!(ran, vec![b, a], "reopened: {reopen}");
        orders.push(ran);
    }
    assert_eq!(orders[0], orders[1]);
}
