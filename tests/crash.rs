//! Process-crash test (STYLE.md layer 4): this binary re-runs itself as a child that
//! submits and completes tasks on a log directory under `Durability::Sync`, printing
//! each acknowledgement. The parent kills it with SIGKILL after a seeded random
//! number of acknowledgements (not after a sleep), reopens the log, and checks that
//! every acknowledged task is there, every acknowledged completion is still
//! completed, and no acknowledged completion ran again in a later process.
//!
//! `FIBFLOW_CRASH_ITERS` sets the number of kills (default 20), `FIBFLOW_CRASH_SEED`
//! the seed (printed, so a failure can be replayed).

use fibflow::{SubmitOptions, TaskId, TaskManager, TaskStatus};
use rand::{Rng, SeedableRng};
use serde_json::json;
use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const TASKS: usize = 120;
const PATIENCE: Duration = Duration::from_secs(120);

fn main() {
    if let Ok(dir) = std::env::var("FIBFLOW_CRASH_CHILD") {
        let generation: u32 = std::env::var("FIBFLOW_CRASH_GEN").unwrap().parse().unwrap();
        child(Path::new(&dir), generation);
        return;
    }
    let iters: u32 = std::env::var("FIBFLOW_CRASH_ITERS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let seed: u64 = std::env::var("FIBFLOW_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x05ee_df1b);
    println!("crash test: {iters} kills, seed {seed} (FIBFLOW_CRASH_SEED to replay)");
    let started = Instant::now();
    match parent(iters, seed) {
        Ok(()) => {
            println!(
                "crash test finished in {:.1}s",
                started.elapsed().as_secs_f64()
            );
            println!("crash: 1 passed, 0 failed");
        }
        Err(msg) => {
            println!("crash test FAILED (seed {seed}): {msg}");
            println!("crash: 0 passed, 1 failed");
            std::process::exit(1);
        }
    }
}

fn manager(dir: &Path, generation: u32) -> TaskManager {
    let mgr = TaskManager::builder()
        .dir(dir)
        .max_concurrent_tasks(2)
        .segment_size(1 << 20)
        .build()
        .unwrap();
    let ran = dir.join("ran.log");
    mgr.register("job", move |ctx| {
        // Side effect outside the log: which process generation ran which task.
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&ran)?;
        writeln!(f, "{} {}", generation, ctx.id())?;
        Ok(json!({"n": ctx.payload()["n"]}).into())
    })
    .unwrap();
    mgr
}

/// The child: submit every task (dedup keys make a rerun submit nothing twice),
/// then wait for each and report it.
fn child(dir: &Path, generation: u32) {
    let mgr = manager(dir, generation);
    let out = std::io::stdout();
    let mut ids = Vec::new();
    for chunk in (0..TASKS).collect::<Vec<_>>().chunks(8) {
        let batch = chunk.iter().map(|&n| {
            (
                "job".to_string(),
                json!({"n": n}),
                SubmitOptions::new().dedup_key(format!("t{n}")),
            )
        });
        let got = mgr.submit_batch(batch).unwrap();
        let mut o = out.lock();
        for id in &got {
            writeln!(o, "ack {id}").unwrap();
        }
        o.flush().unwrap();
        ids.extend(got);
    }
    mgr.start().unwrap();
    for id in ids {
        let t = mgr.wait(id, PATIENCE).unwrap();
        let mut o = out.lock();
        writeln!(o, "done {} {}", id, t.status).unwrap();
        o.flush().unwrap();
    }
    mgr.stop(PATIENCE).unwrap();
}

struct Round {
    acked: HashSet<u64>,
    done: HashSet<u64>,
}

fn run_child(dir: &Path, generation: u32, kill_after: Option<usize>) -> Result<Round, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut child = Command::new(exe)
        .env("FIBFLOW_CRASH_CHILD", dir)
        .env("FIBFLOW_CRASH_GEN", generation.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| e.to_string())?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let mut round = Round {
        acked: HashSet::new(),
        done: HashSet::new(),
    };
    for (n, line) in BufReader::new(stdout).lines().enumerate() {
        let line = line.map_err(|e| e.to_string())?;
        let mut parts = line.split_whitespace();
        match (
            parts.next(),
            parts.next().and_then(|s| s.parse::<u64>().ok()),
        ) {
            (Some("ack"), Some(id)) => {
                round.acked.insert(id);
            }
            (Some("done"), Some(id)) => {
                round.done.insert(id);
            }
            _ => return Err(format!("unexpected child output: {line}")),
        }
        if kill_after.is_some_and(|k| n + 1 >= k) {
            child.kill().map_err(|e| e.to_string())?; // SIGKILL on Unix
            break;
        }
    }
    let status = child.wait().map_err(|e| e.to_string())?;
    if kill_after.is_none() && !status.success() {
        return Err(format!("the final child failed: {status}"));
    }
    Ok(round)
}

/// Reopens the directory in this process and checks what earlier rounds acknowledged.
fn check_reopen(dir: &Path, acked: &HashSet<u64>, done: &HashSet<u64>) -> Result<Duration, String> {
    let t0 = Instant::now();
    let mgr = TaskManager::builder()
        .dir(dir)
        .segment_size(1 << 20)
        .build()
        .map_err(|e| e.to_string())?;
    let took = t0.elapsed();
    for id in acked {
        let t = mgr
            .get_task(TaskId(*id))
            .ok_or(format!("acknowledged task {id} lost"))?;
        if t.status == TaskStatus::Running {
            return Err(format!("task {id} still running after recovery"));
        }
    }
    for id in done {
        let t = mgr
            .get_task(TaskId(*id))
            .ok_or(format!("completed task {id} lost"))?;
        if t.status != TaskStatus::Completed {
            return Err(format!(
                "acknowledged completion of {id} became {}",
                t.status
            ));
        }
    }
    Ok(took)
}

fn parent(iters: u32, seed: u64) -> Result<(), String> {
    let tmp = tempfile::tempdir().map_err(|e| e.to_string())?;
    let dir: PathBuf = tmp.path().to_path_buf();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut acked = HashSet::new();
    let mut done_at: HashMap<u64, u32> = HashMap::new();
    let mut recovery = Vec::new();
    for generation in 0..iters {
        let kill_after = rng.random_range(1..=2 * TASKS);
        let round = run_child(&dir, generation, Some(kill_after))?;
        acked.extend(round.acked);
        for id in round.done {
            done_at.entry(id).or_insert(generation);
        }
        let done: HashSet<u64> = done_at.keys().copied().collect();
        recovery.push(check_reopen(&dir, &acked, &done)?);
    }
    let last = run_child(&dir, iters, None)?;
    if last.done.len() != TASKS {
        return Err(format!(
            "final run completed {} of {TASKS}",
            last.done.len()
        ));
    }
    acked.extend(last.acked);
    check_reruns(&dir, &done_at)?;
    let slowest = recovery.iter().max().copied().unwrap_or_default();
    println!(
        "crash test: {} acknowledged tasks, 0 lost, 0 re-run completions, slowest reopen {:?}",
        acked.len(),
        slowest
    );
    Ok(())
}

/// No task whose completion was acknowledged in generation g ran in a later generation.
fn check_reruns(dir: &Path, done_at: &HashMap<u64, u32>) -> Result<(), String> {
    let text = std::fs::read_to_string(dir.join("ran.log")).map_err(|e| e.to_string())?;
    for line in text.lines() {
        let mut p = line.split_whitespace();
        let (Some(g), Some(id)) = (
            p.next().and_then(|s| s.parse::<u32>().ok()),
            p.next().and_then(|s| s.parse::<u64>().ok()),
        ) else {
            continue; // a line torn by the kill
        };
        if done_at.get(&id).is_some_and(|&acked_in| g > acked_in) {
            return Err(format!(
                "task {id} ran again in generation {g} after its completion was acknowledged"
            ));
        }
    }
    Ok(())
}
