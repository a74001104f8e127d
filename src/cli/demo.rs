//! `fibflow demo`: a sample pipeline of exactly N tasks over two pools.
//!
//! Task `i` (with the seed added) is one of three kinds, fixed by its number so a
//! rerun builds the same pipeline: `demo.gpu` (requires the `gpu` capability, so only
//! the 2-worker `gpu` pool runs it), `demo.flaky` (fails its first execution, then
//! succeeds on the immediate retry) and `demo.cpu` (default pool). Every task is
//! submitted with the dedup key `demo-<i>`, so rerunning the same command after a
//! crash never submits a task twice, and completion is read from the manager's
//! state (`count_by_status`, then every task id), never from in-process counters,
//! so a resumed run reports the tasks the previous process finished too.
//!
//! `fibflow crash-test` (`crash.rs`) runs this same pipeline under the library's
//! SIGKILL harness: it reuses [`configure`], [`register`] and [`batch`].

use super::out::{cores, outln, print_json, round, stdout_is_tty, CliResult};
use clap::{Args, ValueEnum};
use fibflow::{
    Builder, Durability, HandlerOptions, Pool, SubmitOptions, Task, TaskContext, TaskId,
    TaskManager, TaskStatus,
};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// The directory `demo` uses when neither `--memory` nor `--dir` is given.
pub const DEFAULT_DIR: &str = "fibflow-data";
/// Tasks per `submit_batch` call: one durable wait per batch.
pub(crate) const BATCH: u64 = 1000;

/// Arguments of `fibflow demo`.
#[derive(Args, Debug, Clone)]
pub struct DemoArgs {
    /// Keeps state in memory only (nothing survives the process).
    #[arg(long, conflicts_with = "dir")]
    pub memory: bool,
    /// The log directory (default: ./fibflow-data).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Number of tasks in the pipeline (at most 100,000,000).
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(0..=100_000_000))]
    pub tasks: u64,
    /// One JSON object on the last stdout line.
    #[arg(long)]
    pub json: bool,
    /// Shifts which task numbers are gpu / flaky / cpu tasks.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// When a write is acknowledged, for a directory.
    #[arg(long, value_enum, default_value_t = DurabilityArg::Sync)]
    pub durability: DurabilityArg,
}

/// `--durability` values.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum DurabilityArg {
    /// On disk before acknowledgement (group commit).
    Sync,
    /// In the page cache: survives a process crash, not a power loss.
    Os,
    /// Like `os`, synced every 10 ms in the background.
    Batched,
}

impl DurabilityArg {
    pub(crate) fn to_lib(self) -> Durability {
        match self {
            DurabilityArg::Sync => Durability::Sync,
            DurabilityArg::Os => Durability::Os,
            DurabilityArg::Batched => Durability::Batched {
                interval: Duration::from_millis(10),
            },
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Cpu,
    Gpu,
    Flaky,
}

impl Kind {
    fn of(i: u64, seed: u64) -> Kind {
        let h = i.wrapping_add(seed);
        if h % 10 == 3 {
            Kind::Flaky
        } else if h % 4 == 1 {
            Kind::Gpu
        } else {
            Kind::Cpu
        }
    }
    fn handler(self) -> &'static str {
        match self {
            Kind::Cpu => "demo.cpu",
            Kind::Gpu => "demo.gpu",
            Kind::Flaky => "demo.flaky",
        }
    }
}

/// The directory a demo run uses, `None` for memory.
pub fn storage_dir(a: &DemoArgs) -> Option<PathBuf> {
    if a.memory {
        None
    } else {
        Some(a.dir.clone().unwrap_or_else(|| PathBuf::from(DEFAULT_DIR)))
    }
}

/// The demo's pools on `b`: a default pool of `cores` workers and a `gpu` pool of 2.
pub(crate) fn configure(b: Builder) -> Builder {
    b.max_concurrent_tasks(cores().max(2))
        .retry_interval(Duration::ZERO)
        .pool(Pool::new("gpu").tags(["gpu"]).concurrency(2))
}

/// Opens the manager of a demo run.
fn open(a: &DemoArgs) -> fibflow::Result<TaskManager> {
    let b = configure(TaskManager::builder());
    match storage_dir(a) {
        None => b.memory().build(),
        Some(d) => b.dir(d).durability(a.durability.to_lib()).build(),
    }
}

fn task_number(ctx: &TaskContext) -> u64 {
    ctx.payload()["i"].as_u64().unwrap_or(u64::MAX)
}

/// Registers the three demo handlers.
pub(crate) fn register(mgr: &TaskManager) -> fibflow::Result<()> {
    mgr.register("demo.cpu", |ctx| {
        let i = task_number(ctx);
        Ok(json!({ "i": i, "square": i.wrapping_mul(i) }).into())
    })?;
    mgr.register_with("demo.gpu", HandlerOptions::new().requires(["gpu"]), |ctx| {
        let i = task_number(ctx);
        Ok(json!({ "i": i, "worker": ctx.worker() }).into())
    })?;
    let flaky = HandlerOptions::new()
        .max_retries(3)
        .retry_interval(Duration::ZERO);
    mgr.register_with("demo.flaky", flaky, |ctx| {
        let i = task_number(ctx);
        if ctx.retry_count() == 0 {
            return Err(format!("demo task {i} fails its first execution on purpose").into());
        }
        Ok(json!({ "i": i, "retries": ctx.retry_count() }).into())
    })?;
    Ok(())
}

/// Tasks `from..to` of the pipeline, with their handlers and dedup keys `demo-<i>`.
pub(crate) fn batch(from: u64, to: u64, seed: u64) -> Vec<(&'static str, Value, SubmitOptions)> {
    (from..to)
        .map(|i| {
            let o = SubmitOptions::new().dedup_key(format!("demo-{i}"));
            (Kind::of(i, seed).handler(), json!({ "i": i }), o)
        })
        .collect()
}

fn done_count(c: &BTreeMap<TaskStatus, u64>) -> u64 {
    c[&TaskStatus::Completed] + c[&TaskStatus::PermanentlyFailed]
}

/// Names every status, zero included.
pub fn by_status_json(c: &BTreeMap<TaskStatus, u64>) -> Value {
    let m: serde_json::Map<String, Value> = TaskStatus::ALL
        .iter()
        .map(|s| (s.as_str().to_owned(), json!(c.get(s).copied().unwrap_or(0))))
        .collect();
    Value::Object(m)
}

struct Progress {
    bar: Option<indicatif::ProgressBar>,
}

impl Progress {
    fn new(n: u64, show: bool) -> Progress {
        let bar = show.then(|| {
            let b = indicatif::ProgressBar::new(n);
            let style = indicatif::ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} done ({per_sec}) {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
            b.set_style(style);
            b
        });
        Progress { bar }
    }
    fn update(&self, mgr: &TaskManager, submitted: u64) -> u64 {
        let c = mgr.count_by_status();
        let done = done_count(&c);
        if let Some(b) = &self.bar {
            b.set_position(done);
            b.set_message(format!("submitted {submitted}"));
        }
        done
    }
    fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

/// Submits tasks `0..n` in batches.
fn submit_all(
    mgr: &TaskManager,
    a: &DemoArgs,
    progress: &Progress,
) -> fibflow::Result<Vec<TaskId>> {
    let mut ids = Vec::with_capacity(usize::try_from(a.tasks).unwrap_or(0));
    let mut last_update = Instant::now();
    let mut from = 0;
    while from < a.tasks {
        let to = (from + BATCH).min(a.tasks);
        let got = mgr.submit_batch(batch(from, to, a.seed))?;
        ids.extend(got);
        from = to;
        if progress.bar.is_some() && last_update.elapsed() > Duration::from_millis(100) {
            progress.update(mgr, from);
            last_update = Instant::now();
        }
    }
    Ok(ids)
}

/// Exact outcome of this run's N tasks, read task by task from the manager.
#[derive(Default)]
struct Outcome {
    completed: u64,
    failed: u64,
    retried: u64,
}

fn settle(mgr: &TaskManager, ids: &[TaskId]) -> fibflow::Result<Outcome> {
    let mut o = Outcome::default();
    for &id in ids {
        let t: Task = match mgr.get_task(id) {
            Some(t) if t.status.is_terminal() => t,
            _ => mgr.wait(id, Duration::from_hours(1))?,
        };
        match t.status {
            TaskStatus::Completed => o.completed += 1,
            TaskStatus::PermanentlyFailed => o.failed += 1,
            _ => {}
        }
        if t.retry_count > 0 {
            o.retried += 1;
        }
    }
    Ok(o)
}

fn durability_name(a: &DemoArgs) -> &'static str {
    if a.memory {
        "memory"
    } else {
        match a.durability {
            DurabilityArg::Sync => "sync",
            DurabilityArg::Os => "os",
            DurabilityArg::Batched => "batched",
        }
    }
}

/// Runs `fibflow demo`.
pub fn run(a: &DemoArgs) -> CliResult {
    let opened = Instant::now();
    let mgr = open(a)?;
    let open_ms = opened.elapsed().as_secs_f64() * 1e3;
    register(&mgr)?;
    mgr.start()?;
    let preexisting: u64 = mgr.count_by_status().values().sum();
    let progress = Progress::new(a.tasks, stdout_is_tty() && !a.json);
    let started = Instant::now();
    let ids = submit_all(&mgr, a, &progress)?;
    while progress.update(&mgr, a.tasks) < a.tasks {
        std::thread::sleep(Duration::from_millis(20));
    }
    let outcome = settle(&mgr, &ids)?;
    let elapsed = started.elapsed();
    progress.finish();
    // After the stop: the workers may still be running other tasks of the
    // directory, and the report is the state the run leaves behind.
    mgr.stop(Duration::from_secs(10))?;
    let counts = mgr.count_by_status();
    report(a, &outcome, &counts, elapsed, preexisting, open_ms)?;
    let ok = outcome.completed + outcome.failed == a.tasks && outcome.failed == 0;
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn report(
    a: &DemoArgs,
    o: &Outcome,
    counts: &BTreeMap<TaskStatus, u64>,
    elapsed: Duration,
    preexisting: u64,
    open_ms: f64,
) -> std::io::Result<()> {
    let secs = elapsed.as_secs_f64().max(1e-9);
    let per_s = a.tasks as f64 / secs;
    let dir = storage_dir(a).map(|d| d.display().to_string());
    if !a.json {
        let place = dir
            .as_deref()
            .map_or_else(|| "in memory".to_owned(), |d| format!("in {d}"));
        outln!(
            "fibflow demo: {} tasks {place} ({} durability) in {:.3} s = {:.0} tasks/s",
            a.tasks,
            durability_name(a),
            secs,
            per_s
        )?;
        outln!(
            "  completed {}, permanently failed {}, retried {}",
            o.completed,
            o.failed,
            o.retried
        )?;
        if preexisting > 0 {
            outln!("  resumed: {preexisting} tasks were already in the directory (opened in {open_ms:.1} ms)")?;
        }
        let parts: Vec<String> = TaskStatus::ALL
            .iter()
            .map(|s| format!("{} {}", s.as_str(), counts[s]))
            .collect();
        outln!("  by status: {}", parts.join(", "))?;
    }
    if a.json {
        print_json(&json!({
            "submitted": a.tasks,
            "completed": o.completed,
            "failed": o.failed,
            "retried": o.retried,
            "elapsed_ms": round(secs * 1e3, 3),
            "tasks_per_s": round(per_s, 1),
            "by_status": by_status_json(counts),
            "dir": dir,
            "durability": durability_name(a),
            "preexisting": preexisting,
            "open_ms": round(open_ms, 3),
        }))?;
    }
    Ok(())
}
