//! `fibflow crash-test`: the demo pipeline under the library's SIGKILL harness,
//! [`fibflow::crash_test::CrashTest`].
//!
//! The harness re-executes this binary with the same arguments and an environment
//! variable set, so the child parses `crash-test ...` again and reaches
//! [`CrashTest::run`] from here too; there, `run` opens the log, registers the demo
//! handlers ([`demo::register`]), runs [`workload`] and exits. Nothing before
//! `run` may print or touch the directory, since it runs in every child as well.
//!
//! The workload of round `r` (1, 2, …) submits the first `M·r/(N+1)` demo tasks
//! (at least 1, at most `M`) with dedup keys `demo-<i>`, acknowledging each
//! submission and each completion through [`Ack`]; so every round has new work and
//! every round after the first resumes old work. The final run (round ≥ `N+1`)
//! submits all `M`. The kill point is drawn from `1..=2M` acknowledgement lines
//! (one per submission, one per completion); a round that prints fewer finishes
//! first, is checked all the same, and does not count as a kill. Loss, re-run
//! completions (attempts an acknowledged completion gained) and recovery times are
//! the harness's; this command adds one last open of the kept directory to check
//! that exactly `M` tasks exist and all `M` completed.

use super::demo::{self, DurabilityArg};
use super::out::{outln, print_json, round, CliResult};
use clap::Args;
use fibflow::crash_test::{Ack, CrashReport, CrashTest, CrashTestError, ENV_KILLS};
use fibflow::{TaskFilter, TaskManager, TaskStatus};
use serde_json::json;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// Arguments of `fibflow crash-test`.
#[derive(Args, Debug, Clone)]
pub struct CrashArgs {
    /// Working directory (created if missing; it must be empty), kept afterwards;
    /// the log is DIR/log. Default: a fresh directory under the system temp dir,
    /// removed after a passing run.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Number of SIGKILLs.
    #[arg(long, default_value_t = 10)]
    pub kills: u32,
    /// Seed of the kill points and of the demo pipeline.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Tasks of the demo workload (at most 100,000,000).
    #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(u64).range(0..=100_000_000))]
    pub tasks: u64,
    /// Durability of the log.
    #[arg(long, value_enum, default_value_t = DurabilityArg::Sync)]
    pub durability: DurabilityArg,
    /// One JSON object on the last stdout line.
    #[arg(long)]
    pub json: bool,
}

/// How long the workload waits for one task.
const PATIENCE: Duration = Duration::from_hours(1);

/// Kills the harness will deliver: `--kills`, unless `FIBFLOW_CRASH_ITERS`
/// overrides it (the harness reads the same variable, in parent and child alike).
fn effective_kills(a: &CrashArgs) -> u32 {
    std::env::var(ENV_KILLS)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(a.kills)
}

/// Tasks of round `r`: the first `M·r/(kills+1)`, at least 1, at most `M`. The final
/// run's round is at least `kills + 1`, so it runs all `M`.
fn tasks_of_round(tasks: u64, kills: u32, r: u32) -> u64 {
    let m = u128::from(tasks) * u128::from(r) / (u128::from(kills) + 1);
    u64::try_from(m).unwrap_or(u64::MAX).clamp(1, tasks)
}

/// The child: submits this round's tasks in batches while the workers run, and
/// acknowledges each completion as `wait` returns it, in submission order.
fn workload(mgr: &TaskManager, ack: &Ack, a: &CrashArgs) -> fibflow::Result<()> {
    let n = tasks_of_round(a.tasks, effective_kills(a), ack.round());
    mgr.start()?;
    std::thread::scope(|s| -> fibflow::Result<()> {
        let (tx, rx) = crossbeam::channel::unbounded();
        let waiter = s.spawn(move || -> fibflow::Result<()> {
            for id in rx {
                ack.wait(mgr, id, PATIENCE)?;
            }
            Ok(())
        });
        let mut from = 0;
        let submitted = (|| -> fibflow::Result<()> {
            while from < n {
                let to = (from + demo::BATCH).min(n);
                let got = mgr.submit_batch(demo::batch(from, to, a.seed))?;
                ack.submitted_all(&got);
                for id in got {
                    let _ = tx.send(id);
                }
                from = to;
            }
            Ok(())
        })();
        drop(tx);
        let waited = match waiter.join() {
            Ok(r) => r,
            Err(panic) => std::panic::resume_unwind(panic),
        };
        submitted.and(waited)
    })
}

/// What the last open of the kept directory found: demo tasks `completed`, and
/// all tasks.
fn count_final(dir: &std::path::Path, a: &CrashArgs) -> fibflow::Result<(u64, u64)> {
    let mgr = demo::configure(TaskManager::builder())
        .durability(a.durability.to_lib())
        .dir(dir)
        .build()?;
    let completed = mgr
        .list_tasks(&TaskFilter::all())
        .iter()
        .filter(|t| {
            t.status == TaskStatus::Completed
                && t.dedup_key
                    .as_deref()
                    .and_then(|k| k.strip_prefix("demo-")?.parse::<u64>().ok())
                    .is_some_and(|i| i < a.tasks)
        })
        .count() as u64;
    let total = mgr.count_by_status().values().sum();
    Ok((completed, total))
}

fn durability_flag(d: DurabilityArg) -> &'static str {
    match d {
        DurabilityArg::Sync => "sync",
        DurabilityArg::Os => "os",
        DurabilityArg::Batched => "batched",
    }
}

/// Runs `fibflow crash-test`; in the harness's child, runs the workload and exits.
pub fn run(a: &CrashArgs) -> CliResult {
    if a.tasks == 0 {
        return Err("--tasks must be at least 1".into());
    }
    let durability = a.durability.to_lib();
    let mut test = CrashTest::new()
        .name("fibflow crash-test")
        .kills(a.kills)
        .seed(a.seed)
        .durability(durability)
        .configure(demo::configure)
        // One line per submission and one per completion.
        .kill_window(a.tasks.saturating_mul(2))
        // Kept so the last open below can count the tasks; removed after a pass.
        .keep_dir(true)
        .verbose(!a.json);
    if let Some(dir) = &a.dir {
        test = test.dir(dir);
    }
    let mut report = match test.run(demo::register, |mgr, ack| workload(mgr, ack, a)) {
        Ok(report) => report,
        Err(CrashTestError::DirNotEmpty { path }) => {
            return Err(format!(
                "--dir {} is not empty: remove it, or pass a missing or empty directory",
                path.display()
            )
            .into())
        }
        Err(e) => return Err(e.into()),
    };
    let root = report.dir.take();
    let log = root.as_ref().map(|r| r.join("log"));
    let (completed, tasks_in_dir) = match &log {
        Some(log) => count_final(log, a)?,
        None => (0, 0),
    };
    let ok = report.is_clean() && completed == a.tasks && tasks_in_dir == a.tasks;
    if ok && a.dir.is_none() {
        // Our own temp directory: keep it only when there is something to look at.
        if let Some(root) = &root {
            let _ = std::fs::remove_dir_all(root);
        }
    } else {
        report.dir = root;
    }
    let kept = log.filter(|_| report.dir.is_some());
    print_report(a, &report, completed, tasks_in_dir, kept, ok)?;
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn print_report(
    a: &CrashArgs,
    r: &CrashReport,
    completed: u64,
    tasks_in_dir: u64,
    dir: Option<PathBuf>,
    ok: bool,
) -> std::io::Result<()> {
    let recovery_ms: Vec<f64> = r
        .recovery
        .iter()
        .map(|d| round(d.as_secs_f64() * 1e3, 3))
        .collect();
    if a.json {
        return print_json(&json!({
            "kills": r.kills,
            "rounds": r.rounds,
            "tasks": a.tasks,
            "seed": r.seed,
            "durability": durability_flag(a.durability),
            "dir": dir.map(|d| d.display().to_string()),
            "acked_submissions": r.acknowledged,
            "acked_completions": r.acknowledged_completions,
            "lost": r.lost,
            "rerun_completions": r.rerun_completions,
            "left_running": r.stuck_running,
            "unfinished": r.unfinished,
            "ended_not_completed": r.ended_not_completed,
            "interrupted_attempts": r.interrupted_attempts,
            "completed": completed,
            "tasks_in_dir": tasks_in_dir,
            "recovery_ms": recovery_ms,
            "records_replayed": r.records_replayed,
            "refused_records": r.refused_records,
            "problems": r.problems,
            "ok": ok,
        }));
    }
    outln!("{r}")?;
    outln!(
        "crash-test: {} kills, lost {}, re-run completions {}, interrupted attempts {}",
        r.kills,
        r.lost,
        r.rerun_completions,
        r.interrupted_attempts
    )?;
    outln!(
        "  completed {completed} of {} ({tasks_in_dir} tasks in the directory)",
        a.tasks
    )?;
    outln!("  reopen times (ms): {recovery_ms:?}")?;
    outln!("{}", if ok { "PASS" } else { "FAIL" })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::tasks_of_round;

    #[test]
    fn rounds_grow_to_all_tasks() {
        assert_eq!(tasks_of_round(5000, 10, 1), 454);
        assert_eq!(tasks_of_round(5000, 10, 11), 5000);
        assert_eq!(tasks_of_round(5000, 10, 40), 5000);
        assert_eq!(tasks_of_round(3, 10, 1), 1);
        assert_eq!(tasks_of_round(7, 0, 1), 7);
    }
}
