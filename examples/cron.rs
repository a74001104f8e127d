//! A cron task with a seconds field (`*/1 * * * * *`, every second), driven by a
//! manual clock so the example runs five rounds instantly. Each successful round
//! returns the task to `pending` at the next occurrence and keeps its last result.
//! Pass `--real` to watch three rounds on the system clock instead (~3 s).
//!
//! Run: `cargo run --release --example cron`

use fibflow::{Clock, ManualClock, SubmitOptions, TaskId, TaskManager, TaskStatus, TimeZone};
use serde_json::json;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let real = std::env::args().any(|a| a == "--real");
    let manual = ManualClock::new(1_700_000_000_000); // 2023-11-14T22:13:20Z
    let clock: Arc<dyn Clock> = if real {
        Arc::new(fibflow::SystemClock)
    } else {
        manual.clone()
    };
    let mgr = TaskManager::builder()
        .memory()
        .clock(clock.clone())
        .time_zone(TimeZone::from_name("UTC")?)
        .max_concurrent_tasks(2)
        .build()?;

    let rounds = Arc::new(AtomicU64::new(0));
    let r = rounds.clone();
    mgr.register("heartbeat", move |ctx| {
        let n = r.fetch_add(1, Ordering::SeqCst) + 1;
        Ok(json!({ "round": n, "attempt": ctx.attempt() }).into())
    })?;
    mgr.start()?;

    let id = mgr.submit_with(
        "heartbeat",
        json!(null),
        SubmitOptions::new().cron("*/1 * * * * *"),
    )?;
    let t = mgr.get_task(id).ok_or("task vanished")?;
    println!(
        "cron task {id} `{}` created at {} ms; first run at {} ms (the next occurrence strictly after now)",
        t.cron.as_deref().unwrap_or(""),
        clock.now_ms(),
        t.next_run_time
    );

    let want = if real { 3 } else { 5 };
    for round in 1..=want {
        if !real {
            manual.advance(Duration::from_secs(1));
        }
        wait_for_round(&mgr, id, round)?;
        let t = mgr.get_task(id).ok_or("task vanished")?;
        println!(
            "round {round}: status {} (attempt closed {}), result {}, next run at {} ms, retry_count {}",
            t.status,
            mgr.attempts(id)?.last().and_then(|a| a.outcome).map_or("-", |o| o.as_str()),
            t.result.clone().unwrap_or_default(),
            t.next_run_time,
            t.retry_count
        );
    }
    let names: Vec<&str> = mgr
        .events(id)?
        .iter()
        .map(|e| e.event_type.as_str())
        .collect();
    println!("events: {}", names.join(", "));
    mgr.pause_task(id)?;
    let t = mgr.wait(id, Duration::from_secs(5))?;
    println!(
        "paused the schedule: status {} after {} rounds",
        t.status,
        rounds.load(Ordering::SeqCst)
    );
    mgr.stop(Duration::from_secs(5))?;
    if t.status != TaskStatus::Paused || names.contains(&"task_completed") {
        return Err("unexpected cron behaviour".into());
    }
    Ok(())
}

/// Waits (at most 10 s) until attempt `round` has closed and the task is pending again.
fn wait_for_round(
    mgr: &TaskManager,
    id: TaskId,
    round: usize,
) -> Result<(), Box<dyn std::error::Error>> {
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let attempts = mgr.attempts(id)?;
        let status = mgr.get_task(id).map(|t| t.status);
        if attempts.len() >= round
            && attempts[round - 1].outcome.is_some()
            && status == Some(TaskStatus::Pending)
        {
            return Ok(());
        }
        if Instant::now() > until {
            return Err(format!("round {round} did not finish").into());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}
