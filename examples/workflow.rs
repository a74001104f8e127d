//! Fan-out / fan-in: one parent spawns 100 children, half of them on a `gpu` worker
//! pool and half on the default pool, then sums their results when they are done.
//! One child fails on purpose to show how a failure reaches the parent (as an
//! `{task_id, error}` entry, the default `on_failure = deliver` policy).
//!
//! Run: `cargo run --release --example workflow`

use fibflow::{ChildSpec, HandlerOptions, Outcome, Pool, TaskFilter, TaskManager, TaskStatus};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const CHILDREN: u64 = 100;
const FAILING_CHILD: u64 = 42;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mgr = TaskManager::builder()
        .memory()
        .max_concurrent_tasks(8)
        .pool(Pool::new("gpu").tags(["gpu"]).concurrency(4))
        .build()?;

    // Runs only on workers whose pool has the `gpu` tag.
    mgr.register_with(
        "render",
        HandlerOptions::new()
            .requires(["gpu"])
            .max_retries(2)
            .description("renders one tile on a GPU"),
        |ctx| {
            let n = ctx.payload()["n"].as_u64().unwrap_or(0);
            if n == FAILING_CHILD {
                return Err(format!("tile {n}: out of GPU memory").into());
            }
            Ok(
                json!({ "n": n, "value": n * n, "worker": ctx.worker(), "handler": ctx.name() })
                    .into(),
            )
        },
    )?;
    // Runs on the default pool.
    mgr.register("checksum", |ctx| {
        let n = ctx.payload()["n"].as_u64().unwrap_or(0);
        Ok(json!({ "n": n, "value": n * n, "worker": ctx.worker(), "handler": ctx.name() }).into())
    })?;
    // The parent: stage 0 fans out, stage 1 fans in.
    mgr.register("pipeline", |ctx| {
        if ctx.stage() == 0 {
            let children = (0..CHILDREN)
                .map(|n| {
                    let handler = if n % 2 == 0 { "render" } else { "checksum" };
                    ChildSpec::new(handler, json!({ "n": n }))
                })
                .collect();
            return Ok(Outcome::Spawn {
                children,
                context: Some(b"fan-out of 100".to_vec()),
            });
        }
        let entries = ctx
            .result()
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let mut sum = 0;
        // (handler, pool) -> count
        let mut placement = std::collections::BTreeMap::<String, u64>::new();
        let mut errors = Vec::new();
        for e in &entries {
            if let Some(err) = e.get("error") {
                errors.push(json!({ "task_id": e["task_id"], "error": err }));
                continue;
            }
            sum += e["result"]["value"].as_u64().unwrap_or(0);
            let worker = e["result"]["worker"].as_str().unwrap_or("");
            let pool = if worker.starts_with("gpu-") {
                "gpu"
            } else {
                "default"
            };
            let handler = e["result"]["handler"].as_str().unwrap_or("?");
            *placement
                .entry(format!("{handler} on {pool} pool"))
                .or_default() += 1;
        }
        Ok(json!({
            "entries": entries.len(),
            "sum_of_squares": sum,
            "placement": placement,
            "errors": errors,
        })
        .into())
    })?;

    mgr.start()?;
    let started = Instant::now();
    let id = mgr.submit("pipeline", json!(null))?;
    println!("submitted workflow {id}: fanning out {CHILDREN} children across the `gpu` and default pools");
    let parent = mgr.wait(id, Duration::from_secs(25))?;
    let elapsed = started.elapsed();

    let children = mgr.list_tasks(&TaskFilter::all().parent(id));
    let completed = children
        .iter()
        .filter(|t| t.status == TaskStatus::Completed)
        .count();
    let failed = children
        .iter()
        .filter(|t| t.status == TaskStatus::PermanentlyFailed)
        .count();
    let summary = parent.result.clone().unwrap_or(Value::Null);
    println!(
        "workflow {id} {} at stage {} in {elapsed:.2?}",
        parent.status, parent.stage
    );
    println!(
        "  children: {} created, {} delivered to the parent ({completed} completed, {failed} failed)",
        parent.total_children, parent.completed_children
    );
    println!(
        "  fan-in: {} entries, sum of squares {}",
        summary["entries"], summary["sum_of_squares"]
    );
    for (k, v) in summary["placement"].as_object().into_iter().flatten() {
        println!("  {k}: {v} children");
    }
    println!(
        "  (`render` requires the gpu tag; untagged `checksum` children may run on either pool)"
    );
    for e in summary["errors"].as_array().into_iter().flatten() {
        println!(
            "  error entry seen by the parent: child {} -> {}",
            e["task_id"], e["error"]
        );
    }
    let expected: u64 = (0..CHILDREN)
        .filter(|n| *n != FAILING_CHILD)
        .map(|n| n * n)
        .sum();
    let ok = parent.status == TaskStatus::Completed
        && summary["entries"] == CHILDREN
        && summary["sum_of_squares"] == expected
        && summary["placement"]["render on gpu pool"] == CHILDREN / 2 - 1
        && summary["placement"].get("render on default pool").is_none()
        && completed as u64 == CHILDREN - 1
        && failed == 1;
    mgr.stop(Duration::from_secs(5))?;
    if !ok {
        return Err(format!("unexpected workflow outcome: {summary}").into());
    }
    println!("ok: every child's outcome reached the parent exactly once");
    Ok(())
}
