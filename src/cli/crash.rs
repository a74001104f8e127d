//! `fibflow crash-test`: kill `fibflow demo` with SIGKILL at seeded random points,
//! reopen its directory after every kill, and check that nothing acknowledged was
//! lost and no acknowledged completion ran again.
//!
//! Protocol (the child is this binary, `demo --trace`; see `demo.rs`):
//! 1. Round `r` of `kills` runs the child on the first `M·(r+1)/(kills+1)` tasks, so
//!    every round has new work and every round after the first resumes old work.
//!    The parent reads the child's stdout (`ack <i>`: submission of task `i` is
//!    durable; `done <i>`: its completion is) and after a seeded random number of
//!    lines calls `Child::kill` (SIGKILL). Lines already in the pipe were printed
//!    before the kill, so they are read to EOF and count as acknowledged too.
//! 2. Handlers append `ran <i>` to `ran.log` (`O_APPEND`, one write per line) at
//!    their start, so after the child is gone, `ran.log` holds every execution of
//!    that round. A *re-run completion* is a `ran <i>` line of round `r` for a task
//!    whose completion was acknowledged in a round before `r`.
//! 3. After every kill the parent opens the directory itself (measuring the time
//!    to open = lock + snapshot + replay), and counts as *lost* every acknowledged
//!    submission that is missing and every acknowledged completion whose task is
//!    not `completed`.
//! 4. A last child runs all `M` tasks to the end; then every task must be
//!    completed, exactly `M` tasks must exist (dedup keys mean none was submitted
//!    twice), and the interrupted attempts are counted.
//!
//! Correct because: a line reaches the pipe only after the API acknowledged the
//! fact it states, SIGKILL cannot unwrite a line already in the pipe, and a
//! `ran` line is in the file before its handler returns, so no run is missed.

use super::demo::DurabilityArg;
use super::out::{print_json, round, CliResult};
use clap::Args;
use fibflow::{AttemptOutcome, TaskFilter, TaskManager, TaskStatus};
use rand::{Rng, SeedableRng};
use serde_json::json;
use std::collections::{BTreeSet, HashMap};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::Instant;

/// Arguments of `fibflow crash-test`.
#[derive(Args, Debug, Clone)]
pub struct CrashArgs {
    /// Working directory: the log goes to DIR/data, the run trace to DIR/ran.log
    /// (both are wiped first). Default: a fresh directory under the system temp dir.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Number of SIGKILLs.
    #[arg(long, default_value_t = 10)]
    pub kills: u32,
    /// Seed of the kill points and of the demo pipeline.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Tasks of the demo workload.
    #[arg(long, default_value_t = 5000)]
    pub tasks: u64,
    /// Durability of the child's directory.
    #[arg(long, value_enum, default_value_t = DurabilityArg::Sync)]
    pub durability: DurabilityArg,
    /// One JSON object on the last stdout line.
    #[arg(long)]
    pub json: bool,
}

/// What the parent learnt from the children.
#[derive(Default)]
struct Ledger {
    acked_submit: BTreeSet<u64>,
    acked_done: BTreeSet<u64>,
    ran_offset: u64,
    rerun: u64,
    rerun_keys: BTreeSet<u64>,
    lost_submit: u64,
    lost_done: u64,
    recovery_ms: Vec<f64>,
    replayed: Vec<u64>,
    kills: u32,
}

struct Paths {
    root: PathBuf,
    data: PathBuf,
    ran: PathBuf,
}

fn prepare(a: &CrashArgs) -> std::io::Result<Paths> {
    let root = a.dir.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("fibflow-crash-{}-{}", std::process::id(), a.seed))
    });
    let data = root.join("data");
    let ran = root.join("ran.log");
    if data.exists() {
        std::fs::remove_dir_all(&data)?;
    }
    if ran.exists() {
        std::fs::remove_file(&ran)?;
    }
    std::fs::create_dir_all(&root)?;
    Ok(Paths { root, data, ran })
}

fn durability_flag(d: DurabilityArg) -> &'static str {
    match d {
        DurabilityArg::Sync => "sync",
        DurabilityArg::Os => "os",
        DurabilityArg::Batched => "batched",
    }
}

/// This binary. On Linux, when it was replaced on disk while running (a rebuild),
/// `current_exe` ends in " (deleted)"; the new file at the old path is the same
/// program, so use that.
fn child_exe() -> std::io::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let text = exe.to_string_lossy();
    Ok(match text.strip_suffix(" (deleted)") {
        Some(path) => PathBuf::from(path),
        None => exe,
    })
}

/// Runs one child on `tasks` tasks; kills it after `kill_after` stdout lines (if it
/// gets that far). Returns whether it was killed and its last line.
fn run_child(
    a: &CrashArgs,
    p: &Paths,
    tasks: u64,
    kill_after: Option<u64>,
    l: &mut Ledger,
) -> std::io::Result<(bool, String)> {
    let exe = child_exe()?;
    let mut child = Command::new(&exe)
        .args(["demo", "--dir"])
        .arg(&p.data)
        .args(["--tasks", &tasks.to_string(), "--seed", &a.seed.to_string()])
        .args(["--durability", durability_flag(a.durability), "--trace"])
        .arg(&p.ran)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("cannot start the demo child {}: {e}", exe.display()),
            )
        })?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| std::io::Error::other("child has no stdout"))?;
    let mut killed = false;
    let mut lines = 0u64;
    let mut last = String::new();
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        lines += 1;
        if let Some(i) = line.strip_prefix("ack ").and_then(|s| s.parse().ok()) {
            l.acked_submit.insert(i);
        } else if let Some(i) = line.strip_prefix("done ").and_then(|s| s.parse().ok()) {
            l.acked_done.insert(i);
        }
        last = line;
        if !killed && kill_after == Some(lines) {
            child.kill()?;
            killed = true;
        }
    }
    let status = child.wait()?;
    if !killed && !status.success() {
        return Err(std::io::Error::other(format!(
            "the demo child failed: {status}"
        )));
    }
    Ok((killed, last))
}

/// Reads the `ran` lines appended since the last call; counts the re-runs of
/// completions acknowledged before this round (`done_before`).
fn read_ran(p: &Paths, done_before: &BTreeSet<u64>, l: &mut Ledger) -> std::io::Result<()> {
    let Ok(mut f) = std::fs::File::open(&p.ran) else {
        return Ok(());
    };
    f.seek(SeekFrom::Start(l.ran_offset))?;
    let mut text = String::new();
    f.read_to_string(&mut text)?;
    l.ran_offset += text.len() as u64;
    for i in text
        .lines()
        .filter_map(|s| s.strip_prefix("ran ")?.parse::<u64>().ok())
    {
        if done_before.contains(&i) {
            l.rerun += 1;
            l.rerun_keys.insert(i);
        }
    }
    Ok(())
}

/// Status and id of every demo task, by task number.
type ByKey = HashMap<u64, (TaskStatus, fibflow::TaskId)>;

/// Opens the directory (timed) and returns the state of every demo task by number.
fn reopen(data: &Path, l: &mut Ledger) -> fibflow::Result<(TaskManager, ByKey)> {
    let t0 = Instant::now();
    let mgr = TaskManager::builder().dir(data).build()?;
    l.recovery_ms
        .push(round(t0.elapsed().as_secs_f64() * 1e3, 3));
    l.replayed.push(mgr.recovery_stats().records_replayed);
    let mut by_key = HashMap::new();
    for t in mgr.list_tasks(&TaskFilter::all()) {
        if let Some(i) = t
            .dedup_key
            .as_deref()
            .and_then(|k| k.strip_prefix("demo-")?.parse().ok())
        {
            by_key.insert(i, (t.status, t.id));
        }
    }
    Ok((mgr, by_key))
}

fn check_acked(by_key: &ByKey, l: &mut Ledger) {
    l.lost_submit += l
        .acked_submit
        .iter()
        .filter(|i| !by_key.contains_key(i))
        .count() as u64;
    l.lost_done += l
        .acked_done
        .iter()
        .filter(|i| {
            by_key
                .get(i)
                .is_none_or(|(s, _)| *s != TaskStatus::Completed)
        })
        .count() as u64;
}

/// Runs `fibflow crash-test`.
pub fn run(a: &CrashArgs) -> CliResult {
    if a.tasks == 0 {
        return Err("--tasks must be at least 1".into());
    }
    let p = prepare(a)?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(a.seed);
    let mut l = Ledger::default();
    for r in 0..u64::from(a.kills) {
        let m = (a.tasks * (r + 1) / (u64::from(a.kills) + 1)).max(1);
        let kill_after = rng.random_range(1..=2 * m);
        let done_before = l.acked_done.clone();
        let (killed, _) = run_child(a, &p, m, Some(kill_after), &mut l)?;
        l.kills += u32::from(killed);
        read_ran(&p, &done_before, &mut l)?;
        let (mgr, by_key) = reopen(&p.data, &mut l)?;
        check_acked(&by_key, &mut l);
        drop(mgr);
        if !a.json {
            println!(
                "round {r}: {} after {kill_after} lines of {m} tasks; acked {} submissions, {} completions; reopened in {} ms",
                if killed { "killed" } else { "finished" },
                l.acked_submit.len(),
                l.acked_done.len(),
                l.recovery_ms.last().copied().unwrap_or(0.0)
            );
        }
    }
    let done_before = l.acked_done.clone();
    let (_, last) = run_child(a, &p, a.tasks, None, &mut l)?;
    read_ran(&p, &done_before, &mut l)?;
    let (mgr, by_key) = reopen(&p.data, &mut l)?;
    check_acked(&by_key, &mut l);
    let completed = by_key
        .values()
        .filter(|(s, _)| *s == TaskStatus::Completed)
        .count() as u64;
    let total_tasks: u64 = mgr.count_by_status().values().sum();
    let mut interrupted = 0u64;
    for (_, id) in by_key.values() {
        interrupted += mgr
            .attempts(*id)?
            .iter()
            .filter(|t| t.outcome == Some(AttemptOutcome::Interrupted))
            .count() as u64;
    }
    drop(mgr);
    let lost = l.lost_submit + l.lost_done;
    let ok = lost == 0 && l.rerun == 0 && completed == a.tasks && total_tasks == a.tasks;
    let v = json!({
        "kills": l.kills,
        "rounds": a.kills,
        "tasks": a.tasks,
        "seed": a.seed,
        "durability": durability_flag(a.durability),
        "dir": p.data.display().to_string(),
        "acked_submissions": l.acked_submit.len(),
        "acked_completions": l.acked_done.len(),
        "lost": lost,
        "lost_submissions": l.lost_submit,
        "lost_completions": l.lost_done,
        "rerun_completions": l.rerun,
        "rerun_tasks": l.rerun_keys.iter().take(20).collect::<Vec<_>>(),
        "interrupted_attempts": interrupted,
        "completed": completed,
        "tasks_in_dir": total_tasks,
        "recovery_ms": l.recovery_ms,
        "records_replayed": l.replayed,
        "ok": ok,
    });
    if a.json {
        print_json(&v)?;
    } else {
        println!("final run: {last}");
        println!(
            "crash-test: {} kills, lost {lost} (submissions {}, completions {}), re-run completions {}, interrupted attempts {interrupted}",
            l.kills, l.lost_submit, l.lost_done, l.rerun
        );
        println!(
            "  completed {completed} of {} ({} tasks in the directory)",
            a.tasks, total_tasks
        );
        println!("  reopen times (ms): {:?}", l.recovery_ms);
        println!("{}", if ok { "PASS" } else { "FAIL" });
    }
    if ok && a.dir.is_none() {
        // Our own temp directory: keep it only when there is something to look at.
        let _ = std::fs::remove_dir_all(&p.root);
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
