//! Process-crash test of compaction and retention (SPEC §11 with §12), on the
//! library harness [`fibflow::crash_test`]: like `tests/crash.rs`, this binary
//! re-runs itself as a child that the harness kills with SIGKILL after a seeded
//! random number of acknowledgement lines, reopens the log after every kill and
//! checks that nothing acknowledged is lost and no acknowledged completion ran
//! again. Here the log is kept tiny (8 KiB segments, a snapshot every 48 KiB of
//! log, and in most rounds a thread that asks for a snapshot after every step or
//! every few steps), so the kills land while snapshots are written and segments
//! and old snapshots are deleted; and tasks are deleted all the time.
//!
//! The child's work, in chunks:
//!
//! - *kept* tasks, acknowledged to the harness and never deleted: plain tasks,
//!   tasks that fail once and then succeed on a timer-driven retry, and small
//!   workflows (a parent that spawns three children, one of which fails once, and
//!   completes with the sum of their results);
//! - *scratch* tasks, never acknowledged to the harness (it counts a deleted task as
//!   lost): plain ones (some delayed a few milliseconds, so the timer thread and
//!   its housekeeping — automatic compaction and retention — wake often), small
//!   scratch workflows, tasks that fail for good (removed by automatic retention
//!   and by `run_retention`), delayed tasks that are paused, and delayed tasks
//!   deleted while pending; each chunk waits for them and deletes them all with
//!   `delete_tasks` (completed ones) and `run_retention` with an expiry of zero
//!   (failed and paused ones). Their dedup keys are reused by every round, so the
//!   key of a deleted task must be free again.
//!
//! The child keeps its own ledger next to the log (`DIR/ledger.txt`): every handler
//! start, every completion it saw, every task it saw deleted, every snapshot LSN.
//! On top of the harness's checks:
//!
//! - at every child start and at the end, no deleted task exists again (resurrected
//!   by a replay or a snapshot, or its id reused);
//! - no handler started for a task after its completion or its deletion was seen;
//! - at the end every kept task exists once (dedup held through every snapshot)
//!   with the right result, every workflow has exactly its three children, and no
//!   scratch task is left;
//! - snapshots were really taken while the children ran (the summary also says how
//!   many reopens found a snapshot being written or two snapshot files).
//!
//! `FIBFLOW_CRASH_ITERS` sets the number of kills (default 40), `FIBFLOW_CRASH_SEED`
//! the seed (printed, so a failure can be replayed), `FIBFLOW_CRASH_DURABILITY` the
//! durability (`sync`, the default, `os` or `batched`), `FIBFLOW_CRASH_COMPACTORS`
//! the number of threads that call `compact` (default 2).
//!
//! A failed `compact` fails the child. This test found that two snapshots
//! written at once (two `compact` calls, or one and the timer thread's
//! automatic compaction) shared a temp file when their LSN was the same and
//! both deleted the same older snapshot, so one failed with "No such file or
//! directory"; snapshots are now written one at a time. `FIBFLOW_CRASH_STRICT=0`
//! only counts and reports failed calls.

use fibflow::crash_test::{Ack, CrashTest, ENV_KILLS};
use fibflow::{
    Builder, ChildSpec, Durability, Error, HandlerOptions, Outcome, RetentionPolicy, SubmitOptions,
    Task, TaskContext, TaskFilter, TaskId, TaskManager, TaskStatus,
};
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Kills by default (`FIBFLOW_CRASH_ITERS` overrides it).
const KILLS: u32 = 40;
/// Seed by default (`FIBFLOW_CRASH_SEED` overrides it).
const SEED: u64 = 0x00c0_ffac;
/// Kept tasks: item `k` is a workflow if `k % 10 == 9`, fails once if `k % 10` is
/// 6, 7 or 8, and is a plain task otherwise.
const ITEMS: u64 = 120;
/// Kept items per chunk; every chunk is followed by a round of scratch tasks.
const CHUNK: u64 = 12;
/// Children of a kept workflow.
const LEAVES: u64 = 3;
/// Children of a scratch workflow.
const SCRATCH_LEAVES: u64 = 2;
/// Patience of one wait.
const PATIENCE: Duration = Duration::from_secs(60);
/// Names of the tasks that are deleted on purpose.
const SCRATCH: [&str; 5] = ["scratch", "sflow", "doomed", "parked", "late"];
/// The durability, from the environment.
const ENV_DURABILITY: &str = "FIBFLOW_CRASH_DURABILITY";
/// Threads that ask for snapshots, from the environment.
const ENV_COMPACTORS: &str = "FIBFLOW_CRASH_COMPACTORS";
/// `0`: a failed `compact` does not fail the test (see `strict`).
const ENV_STRICT: &str = "FIBFLOW_CRASH_STRICT";

type BoxResult<T> = Result<T, Box<dyn std::error::Error>>;

fn main() {
    let started = Instant::now();
    let durability = durability();
    // Not created here: this line runs in every child as well; the harness
    // creates the directory in the parent and removes it after a clean run.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let work = std::env::temp_dir().join(format!(
        "fibflow-crash-compaction-{}-{nanos}",
        std::process::id()
    ));
    let _ = WORK.set(work.clone());
    let result = CrashTest::new()
        .name("tests/crash_compaction")
        .kills(KILLS)
        .seed(SEED)
        .durability(durability)
        .configure(configure)
        .kill_window(kill_window())
        .child_timeout(Duration::from_secs(90))
        .dir(&work)
        .run(setup, workload);
    let report = match result {
        Ok(report) => report,
        Err(e) => {
            println!("crash test could not run: {e}");
            println!("(directory kept at {})", work.display());
            println!("crash_compaction: 0 passed, 1 failed");
            std::process::exit(1);
        }
    };
    println!("{report}");
    let own = if report.is_clean() {
        final_checks(&work, durability, report.kills)
    } else {
        Err("the harness found problems (above)".into())
    };
    match own {
        Ok(summary) => {
            println!("{summary}");
            println!(
                "crash compaction test ({durability:?}) finished in {:.1}s",
                started.elapsed().as_secs_f64()
            );
            // The harness leaves a directory it was given; this one is ours.
            let _ = std::fs::remove_dir_all(&work);
            println!("crash_compaction: 1 passed, 0 failed");
        }
        Err(msg) => {
            println!("crash compaction test FAILED (seed {}): {msg}", report.seed);
            println!("directory kept at {}", work.display());
            println!(
                "replay with {}={} {ENV_KILLS}={}",
                fibflow::crash_test::ENV_SEED,
                report.seed,
                report.kills
            );
            println!("crash_compaction: 0 passed, 1 failed");
            std::process::exit(1);
        }
    }
}

/// `FIBFLOW_CRASH_DURABILITY`: `sync` (default), `os` or `batched`.
fn durability() -> Durability {
    match std::env::var(ENV_DURABILITY).as_deref().map(str::trim) {
        Err(_) | Ok("" | "sync") => Durability::Sync,
        Ok("os") => Durability::Os,
        Ok("batched") => Durability::Batched {
            interval: Duration::from_millis(5),
        },
        Ok(other) => {
            println!("{ENV_DURABILITY}={other:?}: use sync, os or batched");
            std::process::exit(2);
        }
    }
}

/// The kills the harness will deliver, as it reads them (the child needs them too).
fn kills() -> u32 {
    std::env::var(ENV_KILLS)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(KILLS)
}

/// `FIBFLOW_CRASH_COMPACTORS`: threads that call `compact` (default 2).
fn compactors() -> usize {
    std::env::var(ENV_COMPACTORS)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(2)
}

/// A failed `compact` fails the child unless `FIBFLOW_CRASH_STRICT=0` (then it
/// is counted in the ledger and reported).
fn strict() -> bool {
    std::env::var(ENV_STRICT).map_or(true, |v| v.trim() != "0")
}

/// A tiny log: many segments, a snapshot every 32 KiB, failed tasks removed by
/// automatic retention (whose sweeps also wake the timer thread's housekeeping).
fn configure(b: Builder) -> Builder {
    b.max_concurrent_tasks(3)
        .segment_size(8 << 10)
        .compact_after_bytes(48 << 10)
        // A kept task running at several kills in a row must not be quarantined
        // (it would end permanently failed, and automatic retention delete it).
        .quarantine_after(1_000)
        .retention(
            RetentionPolicy::new(Duration::ZERO).statuses([TaskStatus::PermanentlyFailed]),
            Duration::from_millis(20),
        )
}

// ---------------------------------------------------------------------------------
// The ledger: this test's own record, next to the log.

struct Ledger(Mutex<File>);

/// The child's ledger, set by the workload before the manager starts (handlers
/// write to it; in the parent, where nothing runs, it stays unset).
static LEDGER: OnceLock<Ledger> = OnceLock::new();

impl Ledger {
    fn line(&self, text: &str) {
        let mut f = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // One write per line, appended: a kill cuts between lines, not inside one.
        f.write_all(format!("{text}\n").as_bytes())
            .expect("cannot write the ledger");
    }
}

fn note(text: &str) {
    if let Some(l) = LEDGER.get() {
        l.line(text);
    }
}

fn ledger_path(dir: &Path) -> PathBuf {
    dir.join("ledger.txt")
}

/// What the ledger says, in order.
#[derive(Default)]
struct Read {
    /// Line number of every handler start, per task.
    starts: BTreeMap<u64, Vec<usize>>,
    /// Line number of the first completion seen, per task.
    done: BTreeMap<u64, usize>,
    /// Line number of the first deletion seen, per task.
    deleted: BTreeMap<u64, usize>,
    /// Tasks of handler `late` that started (deleted while pending, so a start
    /// may race with the deletion: no start-after-deletion check for them).
    late: BTreeSet<u64>,
    /// Snapshot LSNs seen.
    snapshots: BTreeSet<u64>,
    /// Most segments seen at once.
    max_segments: u64,
    /// `compact` calls that failed, with the first error.
    compact_errors: u64,
    first_compact_error: Option<String>,
}

fn read_ledger(path: &Path) -> BoxResult<Read> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(format!("reading {}: {e}", path.display()).into()),
    };
    let mut r = Read::default();
    for (i, line) in text.lines().enumerate() {
        let mut words = line.split(' ');
        let (Some(kind), Some(Ok(n))) = (words.next(), words.next().map(str::parse::<u64>)) else {
            continue; // a line cut by a kill
        };
        match kind {
            "start" => {
                r.starts.entry(n).or_default().push(i);
                if words.next() == Some("late") {
                    r.late.insert(n);
                }
            }
            "done" => {
                r.done.entry(n).or_insert(i);
            }
            "deleted" => {
                r.deleted.entry(n).or_insert(i);
            }
            "snap" => {
                r.snapshots.insert(n);
            }
            "segs" => r.max_segments = r.max_segments.max(n),
            "compact-error" => {
                r.compact_errors += 1;
                if r.first_compact_error.is_none() {
                    r.first_compact_error = Some(words.collect::<Vec<_>>().join(" "));
                }
            }
            _ => {}
        }
    }
    Ok(r)
}

// ---------------------------------------------------------------------------------
// Handlers.

/// The result of kept item `k`.
fn value(kind: &str, k: u64) -> u64 {
    match kind {
        "plain" => k * 7 + 1,
        "flaky" => k * 11 + 3,
        _ => 0,
    }
}

/// The result of child `j` of kept workflow `k`, and the sum its parent reports.
fn leaf_value(k: u64, j: u64) -> u64 {
    k * 3 + j
}

fn flow_sum(k: u64) -> u64 {
    (0..LEAVES).map(|j| leaf_value(k, j)).sum()
}

fn started(ctx: &TaskContext) {
    note(&format!(
        "start {} {} {}",
        ctx.id().0,
        ctx.name(),
        ctx.stage()
    ));
}

fn spin() -> u64 {
    // Some work, so that some kills land while attempts are running.
    (0..20_000u64).fold(0u64, |a, i| std::hint::black_box(a ^ i))
}

fn num(v: &Value, key: &str) -> u64 {
    v[key].as_u64().unwrap_or(u64::MAX)
}

/// The entries a resumed parent sees: the sum of the `v` results and the number
/// of error entries.
fn sum_entries(ctx: &TaskContext) -> (u64, u64) {
    let entries = ctx.result().and_then(Value::as_array);
    let mut sum = 0;
    let mut errors = 0;
    for e in entries.into_iter().flatten() {
        match e["result"]["v"].as_u64() {
            Some(v) => sum += v,
            None => errors += 1,
        }
    }
    (sum, errors)
}

/// The working directory (in a child, a path that does not exist).
static WORK: OnceLock<PathBuf> = OnceLock::new();

/// What the reopens found (counted in the parent, where the harness reopens the
/// log after every kill and runs `setup`): evidence that kills landed in the
/// middle of compaction.
#[derive(Default)]
struct Found {
    reopens: AtomicU64,
    /// A snapshot being written (its temp file) was removed.
    snapshot_temps: AtomicU64,
    /// Two snapshot files were left (killed before the older one was deleted).
    two_snapshots: AtomicU64,
    /// A torn tail was cut.
    torn_tails: AtomicU64,
}

static FOUND: Found = Found {
    reopens: AtomicU64::new(0),
    snapshot_temps: AtomicU64::new(0),
    two_snapshots: AtomicU64::new(0),
    torn_tails: AtomicU64::new(0),
};

fn count_reopen(mgr: &TaskManager) {
    let Some(r) = mgr.log_recovery_report() else {
        return;
    };
    let add = |c: &AtomicU64, yes: bool| {
        c.fetch_add(u64::from(yes), Ordering::Relaxed);
    };
    add(&FOUND.reopens, true);
    add(
        &FOUND.snapshot_temps,
        r.removed.iter().any(|f| f.starts_with("snap-")),
    );
    add(&FOUND.torn_tails, r.torn_tail.is_some());
    let snapshots = WORK
        .get()
        .and_then(|w| std::fs::read_dir(w.join("log")).ok())
        .map_or(0, |entries| {
            entries
                .flatten()
                .filter(|e| {
                    let name = e.file_name();
                    let name = name.to_string_lossy();
                    name.starts_with("snap-") && name.ends_with(".snap")
                })
                .count()
        });
    add(&FOUND.two_snapshots, snapshots > 1);
}

/// Registrations, in the child and at every reopen.
fn setup(mgr: &TaskManager) -> fibflow::Result<()> {
    count_reopen(mgr);
    // Retries go through the timer (a few ms), so recovery must rebuild them.
    let retried = HandlerOptions::new()
        .max_retries(5)
        .retry_interval(Duration::from_millis(2));
    mgr.register("plain", |ctx| {
        started(ctx);
        let k = num(ctx.payload(), "k");
        Ok(json!({"v": value("plain", k), "spin": spin()}).into())
    })?;
    mgr.register_with("flaky", retried.clone(), |ctx| {
        started(ctx);
        if ctx.retry_count() == 0 {
            return Err("flaky: fails on its first run".into());
        }
        let k = num(ctx.payload(), "k");
        Ok(json!({"v": value("flaky", k)}).into())
    })?;
    mgr.register("flow", |ctx| {
        started(ctx);
        let k = num(ctx.payload(), "k");
        if ctx.stage() == 0 {
            let kids = (0..LEAVES)
                .map(|j| ChildSpec::new("leaf", json!({"k": k, "j": j})))
                .collect();
            return Ok(Outcome::spawn(kids));
        }
        let (sum, errors) = sum_entries(ctx);
        Ok(json!({"sum": sum, "errors": errors}).into())
    })?;
    mgr.register_with("leaf", retried, |ctx| {
        started(ctx);
        let (k, j) = (num(ctx.payload(), "k"), num(ctx.payload(), "j"));
        if j == 1 && ctx.retry_count() == 0 {
            return Err("leaf 1: fails on its first run".into());
        }
        Ok(json!({"v": leaf_value(k, j)}).into())
    })?;
    mgr.register("scratch", |ctx| {
        started(ctx);
        Ok(json!({"v": spin() & 1}).into())
    })?;
    mgr.register("sflow", |ctx| {
        started(ctx);
        if ctx.stage() == 0 {
            let kids = (0..SCRATCH_LEAVES)
                .map(|j| ChildSpec::new("scratch", json!({"j": j})))
                .collect();
            return Ok(Outcome::spawn(kids));
        }
        let (sum, errors) = sum_entries(ctx);
        Ok(json!({"sum": sum, "errors": errors}).into())
    })?;
    mgr.register_with("doomed", HandlerOptions::new().max_retries(1), |ctx| {
        started(ctx);
        Err("doomed: always fails".into())
    })?;
    mgr.register("parked", |ctx| {
        started(ctx);
        Ok(json!(null).into())
    })?;
    mgr.register("late", |ctx| {
        started(ctx);
        Ok(json!(null).into())
    })
}

// ---------------------------------------------------------------------------------
// The child.

/// The kind of kept item `k`.
fn kind(k: u64) -> &'static str {
    match k % 10 {
        9 => "flow",
        6..=8 => "flaky",
        _ => "plain",
    }
}

/// Acknowledgement lines of a full run: one per submission and completion, one
/// per completed workflow child, one heartbeat per chunk.
fn kill_window() -> u64 {
    let items: u64 = (0..ITEMS)
        .map(|k| if kind(k) == "flow" { 2 + LEAVES } else { 2 })
        .sum();
    items + ITEMS.div_ceil(CHUNK)
}

/// Kept items of round `r`: a growing prefix, all of them from round `kills + 1`
/// on (the final run's round is at least that), so every round has new work and
/// every round after the first resumes old work.
fn items_of_round(r: u32) -> u64 {
    let n = ITEMS * u64::from(r) / (u64::from(kills()) + 1);
    n.clamp(1, ITEMS)
}

fn workload(mgr: &TaskManager, ack: &Ack) -> BoxResult<()> {
    let Some(dir) = ack.dir().parent().map(Path::to_path_buf) else {
        return Err("the log directory has no parent".into());
    };
    if ack.round() == 0 {
        // A calibration run (not used: the kill window is set) has no ledger.
        return Err("unexpected calibration run".into());
    }
    let path = ledger_path(&dir);
    // Before anything runs: no deleted task is back.
    let before = read_ledger(&path)?;
    for &id in before.deleted.keys() {
        if let Some(t) = mgr.get_task(TaskId(id)) {
            return Err(format!(
                "round {}: task {id} was deleted in an earlier round, yet it exists again after the reopen ({} {}): a replay or snapshot resurrected it, or its id was reused",
                ack.round(),
                t.name,
                t.status
            )
            .into());
        }
    }
    let deleted: BTreeSet<u64> = before.deleted.keys().copied().collect();
    drop(before);
    let file = OpenOptions::new().create(true).append(true).open(&path)?;
    if LEDGER.set(Ledger(Mutex::new(file))).is_err() {
        return Err("the ledger was set twice".into());
    }
    mgr.start()?;
    let (tick, ticks) = mpsc::channel::<()>();
    let ticks = Mutex::new(ticks);
    let ticks = &ticks;
    std::thread::scope(|s| -> BoxResult<()> {
        // Asks for a snapshot after every `every`-th step (ticks that arrive while
        // one is written are merged into the next); some rounds leave compaction
        // to the engine alone (`compact_after_bytes`), so the log grows to several
        // segments before a snapshot removes them.
        let every = [1u64, 1, 3, 10, u64::MAX][(ack.seed() ^ u64::from(ack.round())) as usize % 5];
        let compactors: Vec<_> = (0..compactors())
            .map(|_| {
                s.spawn(move || -> Result<(), String> {
                    let mut seen = 0u64;
                    loop {
                        {
                            let rx = ticks
                                .lock()
                                .unwrap_or_else(std::sync::PoisonError::into_inner);
                            if rx.recv().is_err() {
                                return Ok(());
                            }
                            seen += 1;
                            while rx.try_recv().is_ok() {
                                seen += 1;
                            }
                        }
                        if seen < every {
                            continue;
                        }
                        seen = 0;
                        if let Err(e) = mgr.compact() {
                            if strict() {
                                return Err(format!("compact failed: {e}"));
                            }
                            note(&format!("compact-error 0 {e}"));
                        }
                    }
                })
            })
            .collect();
        let body = rounds(mgr, ack, &tick, &deleted);
        drop(tick);
        let mut compacted = Ok(());
        for c in compactors {
            let r = c
                .join()
                .map_err(|_| "a compactor thread panicked".to_string())?;
            compacted = compacted.and(r);
        }
        body?;
        compacted?;
        Ok(())
    })
}

/// Everything a child does once its ledger is open and the manager started.
fn rounds(
    mgr: &TaskManager,
    ack: &Ack,
    tick: &mpsc::Sender<()>,
    deleted: &BTreeSet<u64>,
) -> BoxResult<()> {
    let ledger = LEDGER.get().ok_or("no ledger")?;
    let poke = || {
        let _ = tick.send(());
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(ack.seed() ^ (u64::from(ack.round()) << 32));
    // Scratch tasks an earlier, killed child left: finish and delete them first.
    let mut leftovers = Vec::new();
    for name in SCRATCH {
        leftovers.extend(mgr.list_tasks(&TaskFilter::all().name(name)));
    }
    let leftovers: Vec<TaskId> = leftovers.iter().map(|t| t.id).collect();
    purge(mgr, ledger, &leftovers, deleted)?;
    let n = items_of_round(ack.round());
    let mut heartbeat = None;
    let mut last_snapshot = None;
    for (c, chunk) in (0..n)
        .collect::<Vec<_>>()
        .chunks(CHUNK as usize)
        .enumerate()
    {
        // Kept work: submit the chunk (plain ones in one batch), acknowledge.
        let mut kept = Vec::new();
        let plain: Vec<u64> = chunk
            .iter()
            .copied()
            .filter(|&k| kind(k) == "plain")
            .collect();
        let batch = plain.iter().map(|&k| {
            (
                "plain".to_string(),
                json!({"k": k}),
                SubmitOptions::new().dedup_key(format!("k{k}")),
            )
        });
        let ids = mgr.submit_batch(batch)?;
        ack.submitted_all(&ids);
        kept.extend(ids);
        for &k in chunk.iter().filter(|&&k| kind(k) != "plain") {
            let opts = SubmitOptions::new().dedup_key(format!("k{k}"));
            let id = mgr.submit_with(kind(k), json!({"k": k}), opts)?;
            ack.submitted(id);
            kept.push(id);
        }
        heartbeat = heartbeat.or(kept.first().copied());
        // Scratch work alongside, never acknowledged to the harness.
        let scratch = submit_scratch(mgr, &mut rng, c, deleted)?;
        poke();
        for id in kept {
            let t = mgr.wait(id, PATIENCE)?;
            if t.status != TaskStatus::Completed {
                continue; // the harness reports a kept task that ends otherwise
            }
            ledger.line(&format!("done {}", id.0));
            ack.completed(id);
            if &*t.name == "flow" {
                for child in mgr.list_tasks(&TaskFilter::all().parent(id)) {
                    if child.status == TaskStatus::Completed {
                        ledger.line(&format!("done {}", child.id.0));
                        ack.completed(child.id);
                    }
                }
            }
            poke();
        }
        purge(mgr, ledger, &scratch, deleted)?;
        poke();
        if let Some(st) = mgr.log_stats() {
            ledger.line(&format!("segs {}", st.segments));
            if st.snapshot_lsn != last_snapshot {
                last_snapshot = st.snapshot_lsn;
                if let Some(l) = last_snapshot {
                    ledger.line(&format!("snap {}", l.0));
                }
            }
        }
        // An extra kill point after the deletions: this task's submission was
        // acknowledged already, so acknowledging it again changes nothing.
        if let Some(id) = heartbeat {
            ack.submitted(id);
        }
    }
    Ok(())
}

/// Submits one chunk's scratch tasks; returns their ids.
fn submit_scratch(
    mgr: &TaskManager,
    rng: &mut rand::rngs::StdRng,
    chunk: usize,
    deleted: &BTreeSet<u64>,
) -> BoxResult<Vec<TaskId>> {
    let mut out = Vec::new();
    // Plain scratch tasks, with keys every round reuses: the key of a deleted
    // task must be free again (a leftover of a killed round still holds its key).
    let n = rng.random_range(4..=10);
    let batch = (0..n).map(|i| {
        let mut o = SubmitOptions::new().dedup_key(format!("s{chunk}-{i}"));
        if i % 3 == 0 {
            o = o.delay(Duration::from_millis(1 + i % 4));
        }
        ("scratch".to_string(), json!({"i": i}), o)
    });
    let ids = mgr.submit_batch(batch)?;
    if let Some(id) = ids.iter().find(|id| deleted.contains(&id.0)) {
        return Err(format!(
            "submitting a scratch task returned task {id}, which was deleted: its dedup key was not freed"
        )
        .into());
    }
    out.extend(ids);
    if rng.random_bool(0.5) {
        out.push(mgr.submit("sflow", json!({}))?);
    }
    for _ in 0..rng.random_range(0..=2) {
        out.push(mgr.submit("doomed", json!({}))?);
    }
    if rng.random_bool(0.5) {
        let opts = SubmitOptions::new().delay(Duration::from_secs(3600));
        out.push(mgr.submit_with("parked", json!({}), opts)?);
    }
    // Tasks deleted while pending (their timer set), or rarely while running.
    if rng.random_bool(0.5) {
        let mut late = Vec::new();
        for _ in 0..rng.random_range(1..=3) {
            let opts = SubmitOptions::new().delay(Duration::from_millis(rng.random_range(2..=20)));
            late.push(mgr.submit_with("late", json!({}), opts)?);
        }
        mgr.delete_tasks(&TaskFilter::all().name("late"))?;
        for id in late {
            if let Some(t) = mgr.get_task(id) {
                return Err(format!("task {id} is {} right after it was deleted", t.status).into());
            }
            note(&format!("deleted {}", id.0));
        }
    }
    Ok(out)
}

fn retention_zero() -> RetentionPolicy {
    RetentionPolicy::new(Duration::ZERO)
        .statuses([TaskStatus::PermanentlyFailed, TaskStatus::Paused])
}

/// Waits for `ids` (and the children of scratch workflows among them) to finish,
/// deletes them all, and notes each as deleted once it is gone.
fn purge(
    mgr: &TaskManager,
    ledger: &Ledger,
    ids: &[TaskId],
    deleted: &BTreeSet<u64>,
) -> BoxResult<()> {
    let mut all = Vec::new();
    for &id in ids {
        if deleted.contains(&id.0) {
            continue;
        }
        let Some(t) = mgr.get_task(id) else {
            continue; // gone already (automatic retention, an earlier purge)
        };
        if &*t.name == "parked" && t.status == TaskStatus::Pending {
            match mgr.pause_task(id) {
                Ok(()) | Err(Error::NotFound(_)) => {}
                Err(e) => return Err(format!("pausing parked task {id}: {e}").into()),
            }
        }
        match mgr.wait(id, PATIENCE) {
            Ok(t) if &*t.name == "sflow" => {
                all.extend(
                    mgr.list_tasks(&TaskFilter::all().parent(id))
                        .iter()
                        .map(|c| c.id),
                );
            }
            Ok(_) | Err(Error::NotFound(_)) => {}
            Err(e) => return Err(format!("waiting for scratch task {id}: {e}").into()),
        }
        all.push(id);
    }
    let deadline = Instant::now() + PATIENCE;
    loop {
        mgr.delete_tasks(
            &TaskFilter::all()
                .name("scratch")
                .status(TaskStatus::Completed),
        )?;
        mgr.delete_tasks(
            &TaskFilter::all()
                .name("sflow")
                .status(TaskStatus::Completed),
        )?;
        mgr.delete_tasks(&TaskFilter::all().name("late"))?;
        // Expiry zero still needs the clock to pass the last change by a millisecond.
        mgr.run_retention(Some(&retention_zero()))?;
        let left: Vec<Task> = all.iter().filter_map(|&id| mgr.get_task(id)).collect();
        if left.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            let t = &left[0];
            return Err(format!(
                "{} scratch task(s) not deleted, e.g. {} {} {}",
                left.len(),
                t.id,
                t.name,
                t.status
            )
            .into());
        }
        std::thread::park_timeout(Duration::from_millis(1));
    }
    for id in all {
        ledger.line(&format!("deleted {}", id.0));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------
// The parent's own checks, after the harness's.

fn final_checks(work: &Path, durability: Durability, kills: u32) -> BoxResult<String> {
    let read = read_ledger(&ledger_path(work))?;
    let mut problems = Vec::new();
    // No handler started after its task's completion or deletion was seen.
    for (id, starts) in &read.starts {
        let last = starts.iter().max().copied().unwrap_or(0);
        if let Some(&d) = read.done.get(id) {
            if last > d {
                problems.push(format!(
                    "task {id}'s completion was seen (ledger line {}), yet its handler started again (line {})",
                    d + 1,
                    last + 1
                ));
            }
        }
        if let Some(&d) = read.deleted.get(id) {
            if last > d && !read.late.contains(id) {
                problems.push(format!(
                    "task {id} was deleted (ledger line {}), yet its handler started again (line {})",
                    d + 1,
                    last + 1
                ));
            }
        }
    }
    let mgr = configure(TaskManager::builder().durability(durability))
        .dir(work.join("log"))
        .build()?;
    setup(&mgr)?;
    for &id in read.deleted.keys() {
        if let Some(t) = mgr.get_task(TaskId(id)) {
            problems.push(format!(
                "deleted task {id} exists at the end ({} {})",
                t.name, t.status
            ));
        }
    }
    for name in SCRATCH {
        let n = mgr.list_tasks(&TaskFilter::all().name(name)).len();
        if n > 0 {
            problems.push(format!("{n} {name} task(s) left at the end"));
        }
    }
    check_kept(&mgr, &mut problems);
    let segments = mgr.log_stats().map_or(0, |s| s.segments);
    drop(mgr);
    // Typically four or five per kill; one per two kills is the least that still
    // means the kills landed among snapshots.
    let needed = (kills as usize / 2).max(1);
    if read.snapshots.len() < needed {
        problems.push(format!(
            "only {} snapshots were seen (at least {needed} expected): the test did not exercise compaction",
            read.snapshots.len()
        ));
    }
    let found = |c: &AtomicU64| c.load(Ordering::Relaxed);
    if let Some(e) = &read.first_compact_error {
        // Only with FIBFLOW_CRASH_STRICT=0 (else the child failed already).
        println!(
            "WARNING: {} compact call(s) failed, first: {e} ({ENV_STRICT}=0 let them pass)",
            read.compact_errors
        );
    }
    if problems.is_empty() {
        Ok(format!(
            "own checks clean: {} snapshots seen, at most {} segments at once ({segments} at the end), {} tasks deleted, {} completions and {} handler starts in the ledger\n  of {} reopens, {} removed a snapshot being written, {} found two snapshots, {} cut a torn tail",
            read.snapshots.len(),
            read.max_segments,
            read.deleted.len(),
            read.done.len(),
            read.starts.values().map(Vec::len).sum::<usize>(),
            found(&FOUND.reopens),
            found(&FOUND.snapshot_temps),
            found(&FOUND.two_snapshots),
            found(&FOUND.torn_tails),
        ))
    } else {
        let n = problems.len();
        problems.truncate(20);
        Err(format!("{n} problem(s):\n  - {}", problems.join("\n  - ")).into())
    }
}

/// Every kept item exists exactly once, completed, with its result; every kept
/// workflow has exactly its children, completed.
fn check_kept(mgr: &TaskManager, problems: &mut Vec<String>) {
    let mut seen: BTreeMap<u64, usize> = BTreeMap::new();
    for name in ["plain", "flaky", "flow"] {
        for t in mgr.list_tasks(&TaskFilter::all().name(name)) {
            let k = num(&t.payload, "k");
            *seen.entry(k).or_default() += 1;
            if kind(k) != name {
                problems.push(format!("task {} is {name} with item {k}", t.id));
            }
            if t.status != TaskStatus::Completed {
                problems.push(format!("kept task {} ({name} {k}) is {}", t.id, t.status));
                continue;
            }
            let result = t.result.clone().unwrap_or(Value::Null);
            let ok = if name == "flow" {
                result["sum"].as_u64() == Some(flow_sum(k)) && result["errors"].as_u64() == Some(0)
            } else {
                result["v"].as_u64() == Some(value(name, k))
            };
            if !ok {
                problems.push(format!(
                    "kept task {} ({name} {k}) has result {result}",
                    t.id
                ));
            }
            if name == "flow" {
                check_children(mgr, &t, k, problems);
            }
        }
    }
    for k in 0..ITEMS {
        match seen.get(&k).copied().unwrap_or(0) {
            1 => {}
            n => problems.push(format!("kept item {k} exists {n} times (expected once)")),
        }
    }
    let leaves = mgr.list_tasks(&TaskFilter::all().name("leaf")).len() as u64;
    let flows = (0..ITEMS).filter(|&k| kind(k) == "flow").count() as u64;
    if leaves != flows * LEAVES {
        problems.push(format!(
            "{leaves} workflow children exist, expected {}",
            flows * LEAVES
        ));
    }
}

fn check_children(mgr: &TaskManager, parent: &Task, k: u64, problems: &mut Vec<String>) {
    let kids = mgr.list_tasks(&TaskFilter::all().parent(parent.id));
    let mut js: Vec<u64> = kids.iter().map(|c| num(&c.payload, "j")).collect();
    js.sort_unstable();
    if js != (0..LEAVES).collect::<Vec<_>>() {
        problems.push(format!(
            "workflow {} (item {k}) has children {js:?}, expected 0..{LEAVES}",
            parent.id
        ));
    }
    for c in kids {
        let j = num(&c.payload, "j");
        if c.status != TaskStatus::Completed
            || c.result.as_ref().and_then(|r| r["v"].as_u64()) != Some(leaf_value(k, j))
        {
            problems.push(format!(
                "child {} of workflow {} is {} with result {:?}",
                c.id, parent.id, c.status, c.result
            ));
        }
    }
}
