//! Process-crash test (STYLE.md layer 4), on the library harness
//! [`fibflow::crash_test`]: this binary re-runs itself as a child that submits and
//! completes tasks on a log directory under `Durability::Sync`, acknowledging each
//! submission and completion. The harness kills it with SIGKILL after a seeded
//! random number of acknowledgements (not after a sleep), reopens the log after
//! every kill, and checks that every acknowledged task is there, every acknowledged
//! completion is still completed, and no acknowledged completion ran again.
//!
//! `FIBFLOW_CRASH_ITERS` sets the number of kills (default 20), `FIBFLOW_CRASH_SEED`
//! the seed (printed, so a failure can be replayed).

use fibflow::crash_test::{Ack, CrashTest};
use fibflow::{Durability, SubmitOptions, TaskManager};
use serde_json::json;
use std::time::{Duration, Instant};

const TASKS: usize = 120;
const PATIENCE: Duration = Duration::from_secs(120);

fn main() {
    let started = Instant::now();
    let result = CrashTest::new()
        .name("tests/crash")
        .kills(20)
        .seed(0x05ee_df1b)
        .durability(Durability::Sync)
        .configure(|b| b.max_concurrent_tasks(2).segment_size(1 << 20))
        // At most one line per submission and one per completion.
        .kill_window(2 * TASKS as u64)
        .run(setup, workload);
    match result {
        Ok(report) if report.is_clean() => {
            println!("{report}");
            println!(
                "crash test finished in {:.1}s",
                started.elapsed().as_secs_f64()
            );
            println!("crash: 1 passed, 0 failed");
        }
        Ok(report) => {
            println!("{report}");
            println!("crash: 0 passed, 1 failed");
            std::process::exit(1);
        }
        Err(e) => {
            println!("crash test could not run: {e}");
            println!("crash: 0 passed, 1 failed");
            std::process::exit(1);
        }
    }
}

/// Registrations, in the child and at every reopen.
fn setup(mgr: &TaskManager) -> fibflow::Result<()> {
    mgr.register("job", |ctx| {
        // Some work, so that some kills land while attempts are running.
        let spin = (0..100_000u64).fold(0u64, |a, i| std::hint::black_box(a ^ i));
        Ok(json!({"n": ctx.payload()["n"], "spin": spin}).into())
    })
}

/// The child: submit the tasks of this round in batches (dedup keys make a rerun
/// submit nothing twice), then wait for each and acknowledge its completion.
/// Round `r` works on the first `8·r` tasks, so most rounds have new work to be
/// killed in, and every round after the first resumes old work.
fn workload(mgr: &TaskManager, ack: &Ack) -> fibflow::Result<()> {
    let tasks = TASKS.min(8 * ack.round() as usize);
    let mut ids = Vec::with_capacity(tasks);
    for chunk in (0..tasks).collect::<Vec<_>>().chunks(8) {
        let batch = chunk.iter().map(|&n| {
            (
                "job".to_string(),
                json!({"n": n}),
                SubmitOptions::new().dedup_key(format!("t{n}")),
            )
        });
        let got = mgr.submit_batch(batch)?;
        ack.submitted_all(&got);
        ids.extend(got);
    }
    mgr.start()?;
    for id in ids {
        ack.wait(mgr, id, PATIENCE)?;
    }
    Ok(())
}
