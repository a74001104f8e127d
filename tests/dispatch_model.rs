//! Model-based tests of dispatch order and eligibility (SPEC §3, §4, §6).
//!
//! A seeded random sequence of operations runs against a real manager with
//! one worker on a manual clock, and against a small reference model of the
//! SPEC: tasks with status, priority, next_run_time, id, handler name and
//! retry counters. Tasks run only at controlled points: the manager is kept
//! paused while the test thread applies operations, then "runs what is due"
//! until idle. Handlers follow a plan the model makes while it simulates the
//! same run: each run may move the clock (so tasks come due while the worker
//! is busy), submit tasks, pause, resume or cancel tasks (itself included),
//! register or unregister handlers and pause the manager, and then completes,
//! fails or suspends. The order the handlers ran in, and every task's status,
//! retry_count, stage, next_run_time and attempt count, must equal the model's.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{build_unlocked, PATIENCE};
use fibflow::{
    Clock, HandlerOptions, HandlerResult, ManualClock, Outcome, SubmitOptions, TaskContext, TaskId,
    TaskManager, TaskStatus,
};
use serde_json::json;
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, UNIX_EPOCH};

const T0: u64 = 1_700_000_000_000;
const NAMES: [&str; 3] = ["h0", "h1", "h2"];

// ---------------------------------------------------------------- random

/// SplitMix64: small, seeded, reproducible.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn chance(&mut self, pct: u64) -> bool {
        self.below(100) < pct
    }
    fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len() as u64) as usize]
    }
}

// ---------------------------------------------------------------- operations

/// Registration options the model tracks (copied at submission, SPEC §3).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct RegOpts {
    priority: Option<i32>,
    max_retries: Option<u32>,
    interval: Option<u64>,
    cap: Option<usize>,
}

impl RegOpts {
    fn random(rng: &mut Rng) -> RegOpts {
        RegOpts {
            priority: rng.chance(50).then(|| rng.below(5) as i32 - 2),
            max_retries: rng.chance(50).then(|| rng.below(4) as u32),
            interval: rng
                .chance(50)
                .then(|| rng.pick(&[0, 0, 5, 700, 1_500, 4_000])),
            cap: rng.chance(30).then(|| 1 + rng.below(2) as usize),
        }
    }
    fn handler_options(self) -> HandlerOptions {
        let mut o = HandlerOptions::new();
        if let Some(p) = self.priority {
            o = o.priority(p);
        }
        if let Some(m) = self.max_retries {
            o = o.max_retries(m);
        }
        if let Some(i) = self.interval {
            o = o.retry_interval(Duration::from_millis(i));
        }
        if let Some(c) = self.cap {
            o = o.max_concurrent_tasks(c);
        }
        o
    }
}

/// When a submitted task is first due.
#[derive(Clone, Copy, Debug)]
enum When {
    Now,
    Delay(u64),
    /// `run_at` this many ms in the past.
    Back(u64),
    /// `run_at` this many ms in the future.
    Ahead(u64),
}

#[derive(Clone, Debug)]
struct Sub {
    name: &'static str,
    priority: Option<i32>,
    when: When,
    max_retries: Option<u32>,
    interval: Option<u64>,
    tag: bool,
}

impl Sub {
    fn random(rng: &mut Rng) -> Sub {
        let when = match rng.below(6) {
            0 | 1 => When::Now,
            2 => When::Delay(rng.pick(&[0, 1, 300, 1_000, 2_500, 6_000])),
            3 => When::Back(1 + rng.below(5_000)),
            4 => When::Ahead(rng.pick(&[1, 500, 1_000, 3_000])),
            _ => When::Delay(rng.below(4_000)),
        };
        Sub {
            name: rng.pick(&NAMES),
            priority: rng.chance(60).then(|| rng.below(5) as i32 - 2),
            when,
            max_retries: rng.chance(40).then(|| rng.below(4) as u32),
            interval: rng.chance(40).then(|| rng.pick(&[0, 1, 400, 1_000, 3_000])),
            tag: rng.chance(30),
        }
    }
    fn options(&self, now: u64) -> SubmitOptions {
        let mut o = SubmitOptions::new();
        match self.when {
            When::Now => {}
            When::Delay(d) => o = o.delay(Duration::from_millis(d)),
            When::Back(d) => o = o.run_at(UNIX_EPOCH + Duration::from_millis(now - d)),
            When::Ahead(d) => o = o.run_at(UNIX_EPOCH + Duration::from_millis(now + d)),
        }
        if let Some(p) = self.priority {
            o = o.priority(p);
        }
        if let Some(m) = self.max_retries {
            o = o.max_retries(m);
        }
        if let Some(i) = self.interval {
            o = o.retry_interval(Duration::from_millis(i));
        }
        if self.tag {
            o = o.tag("model");
        }
        o
    }
}

/// An operation, applied by the test thread or by a handler while it runs.
/// Task targets are model ids (creation order; real ids rise in the same order).
#[derive(Clone, Debug)]
enum Act {
    Advance(u64),
    Submit(Sub),
    Batch(Vec<Sub>),
    Pause(usize),
    Resume(usize),
    Cancel(usize),
    Register(&'static str, RegOpts),
    Unregister(&'static str),
    PauseManager,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum End {
    Complete,
    Fail,
    Suspend,
}

/// What one planned run does: its acts (each with the answer the model
/// expects: accepted or refused), then its outcome.
#[derive(Clone, Debug)]
struct Step {
    acts: Vec<(Act, bool)>,
    end: End,
}

// ---------------------------------------------------------------- shared with handlers

#[derive(Default)]
struct Shared {
    /// Model id -> real id.
    ids: Vec<TaskId>,
    vid: HashMap<TaskId, usize>,
    /// (model id, attempt) -> what that run does.
    plan: HashMap<(usize, u32), Step>,
    /// Model ids in the order handlers ran them.
    runs: Vec<usize>,
    /// Handlers still inside their body.
    inside: usize,
    problems: Vec<String>,
    mgr: Weak<TaskManager>,
}

type Sh = Arc<Mutex<Shared>>;

fn handler(sh: Sh, clock: Arc<ManualClock>) -> impl Fn(&TaskContext) -> HandlerResult {
    move |ctx: &TaskContext| {
        let (step, mgr) = {
            let mut s = sh.lock().unwrap();
            let Some(&v) = s.vid.get(&ctx.id()) else {
                s.problems
                    .push(format!("task {} unknown to the test ran", ctx.id()));
                return Ok(json!("unknown").into());
            };
            s.runs.push(v);
            s.inside += 1;
            (s.plan.remove(&(v, ctx.attempt())), s.mgr.upgrade())
        };
        let end = match (step, mgr) {
            (Some(step), Some(mgr)) => {
                for (act, ok) in &step.acts {
                    let got = perform(&sh, &clock, &mgr, act);
                    if got.is_ok() != *ok {
                        sh.lock().unwrap().problems.push(format!(
                            "in the run of task {} (attempt {}): {act:?} answered {got:?}, the model expected ok = {ok}",
                            ctx.id(),
                            ctx.attempt()
                        ));
                    }
                }
                step.end
            }
            _ => {
                sh.lock().unwrap().problems.push(format!(
                    "unplanned run: task {} attempt {}",
                    ctx.id(),
                    ctx.attempt()
                ));
                End::Complete
            }
        };
        sh.lock().unwrap().inside -= 1;
        match end {
            End::Complete => Ok(json!({"done": ctx.id().0}).into()),
            End::Fail => Err("planned failure".into()),
            End::Suspend => Ok(Outcome::suspend("planned")),
        }
    }
}

/// Applies `act` to the manager; new tasks are added to the id table.
fn perform(sh: &Sh, clock: &Arc<ManualClock>, mgr: &TaskManager, act: &Act) -> Result<(), String> {
    let id = |v: usize| sh.lock().unwrap().ids[v];
    let add = |ids: &[TaskId]| {
        let mut s = sh.lock().unwrap();
        for &id in ids {
            let v = s.ids.len();
            s.ids.push(id);
            s.vid.insert(id, v);
        }
    };
    let now = || clock.now_ms();
    let e = |r: fibflow::Result<()>| r.map_err(|e| e.to_string());
    match act {
        Act::Advance(ms) => {
            clock.advance(Duration::from_millis(*ms));
            Ok(())
        }
        Act::Submit(sub) => {
            let id = mgr
                .submit_with(sub.name, json!(null), sub.options(now()))
                .map_err(|e| e.to_string())?;
            add(&[id]);
            Ok(())
        }
        Act::Batch(subs) => {
            let items: Vec<_> = subs
                .iter()
                .map(|s| (s.name.to_string(), json!(null), s.options(now())))
                .collect();
            let ids = mgr.submit_batch(items).map_err(|e| e.to_string())?;
            add(&ids);
            Ok(())
        }
        Act::Pause(v) => e(mgr.pause_task(id(*v))),
        Act::Resume(v) => e(mgr.resume_task(id(*v), None)),
        Act::Cancel(v) => e(mgr.cancel_task(id(*v), None)),
        Act::Register(name, o) => e(mgr.register_with(
            name,
            o.handler_options(),
            handler(sh.clone(), clock.clone()),
        )),
        Act::Unregister(name) => match mgr.unregister(&[name]) {
            1 => Ok(()),
            n => Err(format!("unregister removed {n}")),
        },
        Act::PauseManager => {
            mgr.pause();
            Ok(())
        }
    }
}

// ---------------------------------------------------------------- the model

#[derive(Clone, Debug)]
struct MTask {
    name: &'static str,
    status: TaskStatus,
    priority: i32,
    next_run_time: u64,
    max_retries: u32,
    interval: u64,
    retry_count: u32,
    runs: u32,
    stage: u32,
}

struct Model {
    now: u64,
    tasks: Vec<MTask>,
    reg: HashMap<&'static str, RegOpts>,
    /// Timers run only in a started manager (retries are timer-driven).
    started: bool,
    /// Set by a handler's `pause()` during a simulated run.
    manager_paused: bool,
}

impl Model {
    fn new() -> Model {
        Model {
            now: T0,
            tasks: Vec::new(),
            reg: HashMap::new(),
            started: false,
            manager_paused: false,
        }
    }

    /// SPEC §4: a failed task whose retry time came is pending again, its
    /// ready time the one it was scheduled for, retry_count + 1, stage 0.
    fn promote(&mut self, force: bool) {
        if !(self.started || force) {
            return;
        }
        let now = self.now;
        for t in &mut self.tasks {
            if t.status == TaskStatus::Failed && t.next_run_time <= now {
                t.status = TaskStatus::Pending;
                t.retry_count += 1;
                t.stage = 0;
            }
        }
    }

    fn due_at(&self, when: When) -> u64 {
        match when {
            When::Now => self.now,
            When::Delay(d) | When::Ahead(d) => self.now + d,
            When::Back(d) => self.now - d,
        }
    }

    fn new_task(&self, s: &Sub) -> MTask {
        let r = self.reg[s.name];
        MTask {
            name: s.name,
            status: TaskStatus::Pending,
            priority: s.priority.or(r.priority).unwrap_or(0),
            next_run_time: self.due_at(s.when),
            max_retries: s.max_retries.or(r.max_retries).unwrap_or(3),
            interval: s.interval.or(r.interval).unwrap_or(0),
            retry_count: 0,
            runs: 0,
            stage: 0,
        }
    }

    /// Applies `act`; returns whether the manager must accept it.
    fn apply(&mut self, act: &Act) -> bool {
        use TaskStatus as S;
        match act {
            Act::Advance(ms) => {
                self.now += ms;
                self.promote(false);
                true
            }
            Act::Submit(s) => {
                if !self.reg.contains_key(s.name) {
                    return false;
                }
                let t = self.new_task(s);
                self.tasks.push(t);
                true
            }
            Act::Batch(subs) => {
                if subs.iter().any(|s| !self.reg.contains_key(s.name)) {
                    return false; // all or none (SPEC §13)
                }
                for s in subs {
                    let t = self.new_task(s);
                    self.tasks.push(t);
                }
                true
            }
            Act::Pause(v) => {
                let t = &mut self.tasks[*v];
                if !matches!(t.status, S::Pending | S::Running) {
                    return false;
                }
                t.status = S::Paused;
                true
            }
            Act::Resume(v) => {
                let now = self.now;
                let t = &mut self.tasks[*v];
                match t.status {
                    S::Suspended => t.stage += 1,
                    S::Paused => t.stage = 0,
                    _ => return false,
                }
                t.status = S::Pending;
                t.retry_count = 0;
                t.next_run_time = now;
                true
            }
            Act::Cancel(v) => {
                let t = &mut self.tasks[*v];
                if t.status != S::Suspended {
                    return false;
                }
                t.status = S::PermanentlyFailed;
                true
            }
            Act::Register(name, o) => {
                self.reg.insert(name, *o);
                true
            }
            Act::Unregister(name) => self.reg.remove(name).is_some(),
            Act::PauseManager => {
                self.manager_paused = true;
                true
            }
        }
    }

    /// SPEC §3: the best eligible task (one worker: caps never bind).
    fn pick(&mut self) -> Option<usize> {
        self.promote(false);
        let now = self.now;
        self.tasks
            .iter()
            .enumerate()
            .filter(|(_, t)| {
                t.status == TaskStatus::Pending
                    && t.next_run_time <= now
                    && self.reg.contains_key(t.name)
            })
            .min_by_key(|(v, t)| (-i64::from(t.priority), t.next_run_time, *v))
            .map(|(v, _)| v)
    }

    /// The outcome of a run that still owns its task (SPEC §2, §4, §6).
    fn finish(&mut self, v: usize, end: End) {
        use TaskStatus as S;
        let now = self.now;
        let t = &mut self.tasks[v];
        if t.status != S::Running {
            return; // paused meanwhile: the late result is discarded
        }
        t.status = match end {
            End::Complete => S::Completed,
            End::Suspend => S::Suspended,
            End::Fail if t.retry_count + 1 < t.max_retries.max(1) => {
                t.next_run_time = now + t.interval;
                S::Failed
            }
            End::Fail => S::PermanentlyFailed,
        };
        self.promote(false);
    }

    /// A random task target among those not waiting for a retry (the engine
    /// extends pause/resume/cancel to failed tasks beyond SPEC §6).
    fn target(&self, rng: &mut Rng, want: &[TaskStatus]) -> Option<usize> {
        let pool: Vec<usize> = (0..self.tasks.len())
            .filter(|&v| {
                let s = self.tasks[v].status;
                s != TaskStatus::Failed && (want.is_empty() || want.contains(&s))
            })
            .collect();
        (!pool.is_empty()).then(|| rng.pick(&pool))
    }

    /// A random act for a handler of task `me` to perform while it runs.
    fn random_inner_act(&self, rng: &mut Rng, me: usize) -> Option<Act> {
        use TaskStatus as S;
        Some(match rng.below(100) {
            0..=44 => Act::Advance(rng.pick(&[0, 1, 200, 700, 1_000, 2_000, 3_000])),
            45..=59 => Act::Submit(Sub::random(rng)),
            60..=63 => Act::Batch((0..=rng.below(3)).map(|_| Sub::random(rng)).collect()),
            64..=71 => {
                if rng.chance(30) {
                    Act::Pause(me)
                } else {
                    Act::Pause(self.target(rng, &[S::Pending])?)
                }
            }
            72..=81 => Act::Resume(self.target(rng, &[S::Paused, S::Suspended])?),
            82..=85 => Act::Cancel(self.target(rng, &[S::Suspended])?),
            86..=91 => Act::Register(rng.pick(&NAMES), RegOpts::random(rng)),
            92..=94 => Act::Unregister(rng.pick(&NAMES)),
            _ => Act::PauseManager,
        })
    }

    /// Simulates the worker from now until nothing is eligible (or a handler
    /// paused the manager); plans every run. Returns the run order.
    fn simulate(&mut self, rng: &mut Rng, plan: &mut HashMap<(usize, u32), Step>) -> Vec<usize> {
        self.started = true;
        self.manager_paused = false;
        self.promote(false);
        let mut order = Vec::new();
        while !self.manager_paused {
            let Some(v) = self.pick() else { break };
            order.push(v);
            let t = &mut self.tasks[v];
            t.status = TaskStatus::Running;
            t.runs += 1;
            let attempt = t.runs;
            let mut acts = Vec::new();
            for _ in 0..rng.below(4) {
                if let Some(act) = self.random_inner_act(rng, v) {
                    let ok = self.apply(&act);
                    acts.push((act, ok));
                }
            }
            let end = match rng.below(10) {
                0..=5 => End::Complete,
                6..=8 => End::Fail,
                _ => End::Suspend,
            };
            self.finish(v, end);
            plan.insert((v, attempt), Step { acts, end });
            assert!(order.len() < 5_000, "the simulation does not end");
        }
        order
    }
}

// ---------------------------------------------------------------- the harness

struct Harness {
    rng: Rng,
    clock: Arc<ManualClock>,
    sh: Sh,
    mgr: Arc<TaskManager>,
    model: Model,
    dir: Option<tempfile::TempDir>,
    seed: u64,
    log: Vec<String>,
}

fn builder(clock: &Arc<ManualClock>) -> fibflow::Builder {
    TaskManager::builder()
        .clock(clock.clone())
        .max_concurrent_tasks(1)
}

fn open(clock: &Arc<ManualClock>, dir: Option<&Path>) -> TaskManager {
    match dir {
        Some(d) => build_unlocked(builder(clock).dir(d).segment_size(1 << 20)).unwrap(),
        None => builder(clock).memory().build().unwrap(),
    }
}

impl Harness {
    fn new(seed: u64, durable: bool) -> Harness {
        let clock = ManualClock::new(T0);
        let dir = durable.then(|| tempfile::tempdir().unwrap());
        let mgr = Arc::new(open(&clock, dir.as_ref().map(|d| d.path())));
        let sh: Sh = Arc::default();
        sh.lock().unwrap().mgr = Arc::downgrade(&mgr);
        let mut h = Harness {
            rng: Rng(seed),
            clock,
            sh,
            mgr,
            model: Model::new(),
            dir,
            seed,
            log: Vec::new(),
        };
        for name in NAMES {
            let o = RegOpts::random(&mut h.rng);
            h.act(Act::Register(name, o));
        }
        h
    }

    fn fail(&self, what: String) -> ! {
        let tail: Vec<&String> = self.log.iter().rev().take(25).collect();
        panic!(
            "seed {}: {what}\nlast operations, newest first:\n{tail:#?}",
            self.seed
        );
    }

    /// Applies one act from the test thread to both sides.
    /// A control call on a task the model picks: four times in five one in
    /// the statuses the call is for, else any task, so that refusals are
    /// checked too.
    fn control(&mut self, usual: &[TaskStatus], call: fn(usize) -> Act) {
        let want = if self.rng.chance(80) { usual } else { &[] };
        if let Some(v) = self.model.target(&mut self.rng, want) {
            self.act(call(v));
        }
    }

    fn act(&mut self, act: Act) {
        self.log.push(format!("{act:?}"));
        let want = self.model.apply(&act);
        let got = perform(&self.sh, &self.clock, &self.mgr, &act);
        if got.is_ok() != want {
            self.fail(format!(
                "{act:?} answered {got:?}, the model expected ok = {want}"
            ));
        }
    }

    /// Lets the one worker run what is due until it is idle, then compares
    /// the order with the model's. `advance` moves the clock while the
    /// manager runs and its worker is idle (the timer wakes it).
    fn run(&mut self, advance: Option<u64>) {
        let mut plan = HashMap::new();
        if let Some(ms) = advance {
            self.model.now += ms;
        }
        let before = self.model.tasks.clone();
        let now_before = self.model.now;
        let expected = self.model.simulate(&mut self.rng, &mut plan);
        self.log
            .push(format!("run (advance {advance:?}): {expected:?}"));
        let base = {
            let mut s = self.sh.lock().unwrap();
            s.plan = plan;
            s.runs.len()
        };
        self.mgr.pause();
        self.mgr.start().unwrap();
        self.clock.advance(Duration::ZERO);
        self.mgr.resume();
        if let Some(ms) = advance {
            self.clock.advance(Duration::from_millis(ms));
        }
        let until = Instant::now() + PATIENCE;
        loop {
            let done = {
                let s = self.sh.lock().unwrap();
                s.runs.len() >= base + expected.len() && s.inside == 0
            } && self.mgr.running() == 0
                && self.mgr.count_by_status()[&TaskStatus::Running] == 0;
            if done {
                break;
            }
            if Instant::now() > until {
                let ran = self.sh.lock().unwrap().runs[base..].to_vec();
                self.fail(format!(
                    "the worker stopped early: ran {ran:?}, the model runs {expected:?}"
                ));
            }
            std::thread::park_timeout(Duration::from_millis(1));
        }
        self.mgr.pause();
        let ran = self.sh.lock().unwrap().runs[base..].to_vec();
        if ran != expected {
            let mut vs: Vec<usize> = ran.iter().chain(&expected).copied().collect();
            vs.sort_unstable();
            vs.dedup();
            let was: Vec<String> = vs
                .iter()
                .filter(|&&v| v < before.len())
                .map(|&v| {
                    let t = &before[v];
                    format!(
                        "  task {v}: {} prio {} next_run_time now{:+} {} retry_count {}",
                        t.name,
                        t.priority,
                        t.next_run_time as i64 - now_before as i64,
                        t.status,
                        t.retry_count
                    )
                })
                .collect();
            let mut plans: Vec<_> = self
                .sh
                .lock()
                .unwrap()
                .plan
                .iter()
                .map(|(k, v)| format!("{k:?}: {v:?}"))
                .collect();
            plans.sort();
            self.fail(format!(
                "run order differs: engine {ran:?}, model {expected:?}\nbefore the run (advance {advance:?}):\n{}\nafter:\n{}\nplans not used: {plans:#?}",
                was.join("\n"),
                self.describe(&ran, &expected)
            ));
        }
        self.check();
    }

    /// The model's view of the tasks in two run orders, for a failure message.
    fn describe(&self, a: &[usize], b: &[usize]) -> String {
        let mut vs: Vec<usize> = a.iter().chain(b).copied().collect();
        vs.sort_unstable();
        vs.dedup();
        vs.iter()
            .map(|&v| {
                let t = &self.model.tasks[v];
                format!(
                    "  task {v}: {} prio {} next_run_time T0+{} now {}",
                    t.name,
                    t.priority,
                    t.next_run_time as i64 - T0 as i64,
                    t.status
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Every task as the engine shows it equals the model's.
    fn check(&self) {
        let s = self.sh.lock().unwrap();
        if !s.problems.is_empty() {
            let p = s.problems.clone();
            drop(s);
            self.fail(format!("handlers saw: {p:#?}"));
        }
        if s.ids.len() != self.model.tasks.len() {
            let n = s.ids.len();
            drop(s);
            self.fail(format!(
                "{n} tasks created, the model has {}",
                self.model.tasks.len()
            ));
        }
        let ids = s.ids.clone();
        drop(s);
        assert_eq!(self.clock.now_ms(), self.model.now, "clock");
        for (v, m) in self.model.tasks.iter().enumerate() {
            let t = self.mgr.get_task(ids[v]).unwrap();
            let attempts = self.mgr.attempts(ids[v]).unwrap().len() as u32;
            let mut got = (t.status, t.retry_count, t.stage, t.priority, attempts, None);
            let mut want = (m.status, m.retry_count, m.stage, m.priority, m.runs, None);
            if matches!(m.status, TaskStatus::Pending | TaskStatus::Failed) {
                got.5 = Some(t.next_run_time);
                want.5 = Some(m.next_run_time);
            }
            if got != want {
                self.fail(format!(
                    "task {v} ({}): engine (status, retry_count, stage, priority, attempts, next_run_time) = {got:?}, model {want:?}",
                    m.name
                ));
            }
        }
    }

    /// Stops the durable manager and opens its directory again.
    fn reopen(&mut self) {
        self.log.push("reopen".into());
        self.mgr.stop(PATIENCE).unwrap();
        let dir = self.dir.as_ref().unwrap().path().to_path_buf();
        let old = std::mem::replace(&mut self.mgr, Arc::new(open(&self.clock, Some(&dir))));
        drop(old);
        self.sh.lock().unwrap().mgr = Arc::downgrade(&self.mgr);
        let mut regs: Vec<(&'static str, RegOpts)> =
            self.model.reg.iter().map(|(n, o)| (*n, *o)).collect();
        regs.sort_by_key(|(n, _)| *n);
        for (name, o) in regs {
            perform(&self.sh, &self.clock, &self.mgr, &Act::Register(name, o)).unwrap();
        }
        self.mgr.pause();
        // SPEC §12: a retry that came due while the process was down is
        // made pending when the directory is opened.
        self.model.started = false;
        self.model.promote(true);
        self.check();
    }

    fn random_op(&mut self) {
        use TaskStatus as S;
        let r = self.rng.below(100);
        match r {
            0..=29 => {
                let s = Sub::random(&mut self.rng);
                self.act(Act::Submit(s));
            }
            30..=34 => {
                let n = 1 + self.rng.below(4);
                let subs = (0..n).map(|_| Sub::random(&mut self.rng)).collect();
                self.act(Act::Batch(subs));
            }
            35..=40 => self.control(&[S::Pending], Act::Pause),
            41..=48 => self.control(&[S::Paused, S::Suspended], Act::Resume),
            49..=51 => self.control(&[S::Suspended], Act::Cancel),
            52..=61 => {
                let ms = self.rng.pick(&[1, 100, 500, 1_000, 2_000, 5_000]);
                self.act(Act::Advance(ms));
            }
            62..=66 => {
                // Mostly a name that is not registered now.
                let missing: Vec<&'static str> = NAMES
                    .into_iter()
                    .filter(|n| !self.model.reg.contains_key(n))
                    .collect();
                let name = if missing.is_empty() || self.rng.chance(20) {
                    self.rng.pick(&NAMES)
                } else {
                    self.rng.pick(&missing)
                };
                let o = RegOpts::random(&mut self.rng);
                self.act(Act::Register(name, o));
            }
            67..=68 => {
                let name = self.rng.pick(&NAMES);
                self.act(Act::Unregister(name));
            }
            69..=82 => self.run(None),
            _ => {
                // Only from an idle worker: the timer, not a running
                // worker, must find what comes due.
                if self.model.started && self.model.clone_pick().is_none() {
                    let ms = self.rng.pick(&[1, 300, 1_000, 3_000, 6_000]);
                    self.run(Some(ms));
                } else {
                    self.run(None);
                }
            }
        }
        self.check();
    }
}

impl Model {
    /// Whether some task is eligible now, a retry that is due included
    /// (a read-only look).
    fn clone_pick(&self) -> Option<usize> {
        let now = self.now;
        self.tasks
            .iter()
            .enumerate()
            .filter(|(_, t)| {
                matches!(t.status, TaskStatus::Pending | TaskStatus::Failed)
                    && t.next_run_time <= now
                    && self.reg.contains_key(t.name)
            })
            .map(|(v, _)| v)
            .next()
    }
}

fn scenario(seed: u64, ops: usize, durable: bool) {
    let mut h = Harness::new(seed, durable);
    // Operations before the first start: the first claims must already
    // choose among everything that came due (SPEC §3).
    for _ in 0..8 {
        let r = h.rng.below(3);
        if r == 0 {
            let ms = h.rng.pick(&[500, 1_000, 4_000]);
            h.act(Act::Advance(ms));
        } else {
            let s = Sub::random(&mut h.rng);
            h.act(Act::Submit(s));
        }
    }
    for i in 0..ops {
        if durable && i % 37 == 36 {
            h.reopen();
            // Tasks may come due between the open and `start`.
            if h.rng.chance(50) {
                let ms = h.rng.pick(&[500, 2_000]);
                h.act(Act::Advance(ms));
            }
        }
        h.random_op();
    }
    h.run(None);
    let total_runs = h.sh.lock().unwrap().runs.len();
    assert!(total_runs > 20, "seed {seed}: only {total_runs} runs");
    if durable {
        h.reopen();
        h.run(None);
    }
    h.mgr.stop(PATIENCE).unwrap();
}

#[test]
fn random_operations_in_memory_run_in_the_models_order() {
    for seed in 1..=24 {
        scenario(seed, 250, false);
    }
}

#[test]
fn random_operations_across_reopens_run_in_the_models_order() {
    for seed in 101..=106 {
        scenario(seed, 250, true);
    }
}

/// A one-worker manager on a manual clock with a handler `job` that records
/// the ids it runs, in order.
fn job_order_manager() -> (Arc<ManualClock>, TaskManager, Arc<Mutex<Vec<TaskId>>>) {
    let clock = ManualClock::new(T0);
    let mgr = builder(&clock).memory().build().unwrap();
    let order = Arc::new(Mutex::new(Vec::new()));
    let o = order.clone();
    mgr.register("job", move |ctx| {
        o.lock().unwrap().push(ctx.id());
        Ok(json!(null).into())
    })
    .unwrap();
    (clock, mgr, order)
}

/// Waits (with a generous deadline) until `n` runs are recorded; returns them.
fn runs(order: &Mutex<Vec<TaskId>>, n: usize, what: &str) -> Vec<TaskId> {
    let until = Instant::now() + PATIENCE;
    while order.lock().unwrap().len() < n {
        assert!(Instant::now() < until, "{what}");
        std::thread::yield_now();
    }
    order.lock().unwrap().clone()
}

/// SPEC §3 order among tasks that come due together while the one worker is
/// busy: when it next picks, both are due, so the higher priority runs first.
/// The worker here keeps finishing a filler task (lowest priority, failing and
/// retried at once), so it looks for work again and again while the timer
/// queues what came due; paused tasks whose timers fire between the two
/// (due times between theirs) stretch the timer's round.
#[test]
fn tasks_coming_due_together_run_best_first_even_while_the_worker_looks_for_work() {
    let (clock, mgr, order) = job_order_manager();
    mgr.register("filler", |_| Err("again".into())).unwrap();
    mgr.register("idle", |_| Ok(json!(null).into())).unwrap();
    let low = mgr
        .submit_with(
            "job",
            json!("low"),
            SubmitOptions::new().delay(Duration::from_millis(1)),
        )
        .unwrap();
    // Timers that fire between the two and find nothing to do.
    for k in 0..20_000u64 {
        let id = mgr
            .submit_with(
                "idle",
                json!(null),
                SubmitOptions::new().delay(Duration::from_millis(2 + k % 90)),
            )
            .unwrap();
        mgr.pause_task(id).unwrap();
    }
    let high = mgr
        .submit_with(
            "job",
            json!("high"),
            SubmitOptions::new()
                .priority(5)
                .delay(Duration::from_millis(100)),
        )
        .unwrap();
    let filler = mgr
        .submit_with(
            "filler",
            json!(null),
            SubmitOptions::new()
                .priority(-100)
                .max_retries(u32::MAX)
                .retry_interval(Duration::ZERO),
        )
        .unwrap();
    mgr.start().unwrap();
    let until = Instant::now() + PATIENCE;
    while mgr.attempts(filler).unwrap().len() < 20 {
        assert!(Instant::now() < until, "the filler does not run");
        std::thread::yield_now();
    }
    clock.advance(Duration::from_millis(100));
    let ran = runs(&order, 2, "the two tasks did not run");
    mgr.pause_task(filler).unwrap();
    assert_eq!(
        ran,
        vec![high, low],
        "both were due when the worker picked (high = {high}, low = {low})"
    );
    mgr.stop(PATIENCE).unwrap();
}

/// SPEC §3 with a handler cap across pools: when a slot of a capped handler
/// frees, its best waiting task runs next, also when only a worker of
/// another pool can run it (here it needs the `x` tag, and the `x` worker is
/// idle). Both waiting tasks were set aside while the handler was at its cap.
#[test]
fn a_freed_handler_slot_goes_to_its_best_task_whichever_pool_runs_it() {
    let clock = ManualClock::new(T0);
    let mgr = builder(&clock)
        .max_concurrent_tasks(2)
        .pool(fibflow::Pool::new("x").tags(["x"]).concurrency(1))
        .memory()
        .build()
        .unwrap();
    let hold_b = common::Gate::new();
    let hold_g = common::Gate::new();
    let order = Arc::new(Mutex::new(Vec::new()));
    let (seen, g_gate) = (order.clone(), hold_g.clone());
    mgr.register_with(
        "c",
        HandlerOptions::new().max_concurrent_tasks(1),
        move |ctx| {
            seen.lock()
                .unwrap()
                .push(ctx.payload().as_str().unwrap().to_owned());
            if ctx.payload() == &json!("G") {
                g_gate.wait();
            }
            Ok(json!(null).into())
        },
    )
    .unwrap();
    let b_gate = hold_b.clone();
    mgr.register("b", move |ctx| {
        if ctx.payload() == &json!("block") {
            b_gate.wait();
        }
        Ok(json!(null).into())
    })
    .unwrap();
    mgr.start().unwrap();
    let status = |id| mgr.get_task(id).unwrap().status;
    let wait_done = |id| {
        assert_eq!(
            mgr.wait(id, PATIENCE).unwrap().status,
            TaskStatus::Completed
        )
    };
    // The x worker is busy, so G (no requirement) runs on a default worker.
    let busy = mgr
        .submit_with("b", json!("block"), SubmitOptions::new().requires(["x"]))
        .unwrap();
    common::eventually("b runs on x", || status(busy) == TaskStatus::Running);
    let gid = mgr.submit("c", json!("G")).unwrap();
    common::eventually("G runs", || status(gid) == TaskStatus::Running);
    assert!(mgr
        .get_task(gid)
        .unwrap()
        .worker
        .unwrap()
        .starts_with("default"));
    hold_b.open();
    wait_done(busy);
    // c is at its cap: L and H wait; a scan of each queue sets them aside.
    let l = mgr
        .submit_with("c", json!("L"), SubmitOptions::new())
        .unwrap();
    let h = mgr
        .submit_with(
            "c",
            json!("H"),
            SubmitOptions::new().priority(5).requires(["x"]),
        )
        .unwrap();
    let scan_x = mgr
        .submit_with(
            "b",
            json!("scan"),
            SubmitOptions::new().priority(-1).requires(["x"]),
        )
        .unwrap();
    let scan_default = mgr
        .submit_with("b", json!("scan"), SubmitOptions::new().priority(-1))
        .unwrap();
    wait_done(scan_x);
    wait_done(scan_default);
    assert_eq!(status(l), TaskStatus::Pending);
    assert_eq!(status(h), TaskStatus::Pending);
    hold_g.open();
    wait_done(l);
    wait_done(h);
    assert_eq!(
        *order.lock().unwrap(),
        ["G", "H", "L"],
        "H (priority 5, the x worker idle) must take c's freed slot before L"
    );
    mgr.stop(PATIENCE).unwrap();
}

/// SPEC §3 order while the worker moves unrunnable entries aside: tasks of a
/// handler unregistered since fill the queue, and the worker sets them aside
/// one by one as it meets them. Tasks coming due meanwhile must still run
/// best first, `high` ahead of the set-aside ones and the `low` ones among
/// them (one per priority level): the worker's look must not go on from where
/// it set the last one aside, past `high`, and take the `low` it meets next.
#[test]
fn tasks_coming_due_while_the_worker_sets_unrunnable_ones_aside_run_best_first() {
    const LEVELS: i32 = 40;
    for round in 0..5 {
        let (clock, mgr, order) = job_order_manager();
        mgr.register("gone", |_| Ok(json!(null).into())).unwrap();
        // Due now, 250 per priority level 0, -1, ...: each `low` (due
        // later) sorts behind the 250 of its level.
        let gone: Vec<_> = (0..LEVELS * 250)
            .map(|k| {
                let o = SubmitOptions::new().priority(-(k / 250));
                ("gone".to_string(), json!(null), o)
            })
            .collect();
        mgr.submit_batch(gone).unwrap();
        assert_eq!(mgr.unregister(&["gone"]), 1);
        let due_soon = |p| {
            SubmitOptions::new()
                .priority(p)
                .delay(Duration::from_millis(1))
        };
        let mut want = vec![mgr.submit_with("job", json!("high"), due_soon(1)).unwrap()];
        for p in 0..LEVELS {
            want.push(mgr.submit_with("job", json!("low"), due_soon(-p)).unwrap());
        }
        mgr.start().unwrap();
        clock.advance(Duration::from_millis(1));
        let ran = runs(&order, want.len(), "the tasks did not all run");
        assert_eq!(
            ran, want,
            "round {round}: all were due when the worker picked, so they run by priority"
        );
        mgr.stop(PATIENCE).unwrap();
    }
}
