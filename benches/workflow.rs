//! Workflow fan-out/fan-in (issue 4's bar): one parent spawns `N` children in one
//! step, suspends, and completes after all of them (its stage-1 run sees the `N`
//! entries), against `N` independent tasks submitted in one batch and awaited, on
//! the same manager configuration. Both in memory and durable (`Durability::Os` on
//! a temporary directory; `Sync` too with `FIBFLOW_WF_BENCH_SYNC=1`).
//!
//! Each measured iteration builds a fresh manager outside the timing (finished tasks
//! stay queryable, so a shared one would grow), then times submit → last task done.
//! After criterion's report the medians and the fan-out/independent ratio are printed.
//!
//! Run: `cargo bench --bench workflow` (about 40 s on 2 cores; most of it is 10
//! samples × 4 benchmarks of one full run each).
//! `FIBFLOW_WF_BENCH_N` sets `N` (default 100,000).

use criterion::{criterion_group, Criterion, Throughput};
use fibflow::{ChildSpec, Durability, Outcome, SubmitOptions, TaskManager, TaskStatus};
use parking_lot::Mutex;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

const WORKERS: usize = 2;

/// One measured run on a fresh manager with `n` tasks.
type Run = fn(&TaskManager, usize) -> Duration;
const PATIENCE: Duration = Duration::from_mins(10);

fn n() -> usize {
    std::env::var("FIBFLOW_WF_BENCH_N")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100_000)
}

/// Every measured duration, by `group/function`, for the ratios printed at the end.
static TIMES: Mutex<BTreeMap<String, Vec<Duration>>> = Mutex::new(BTreeMap::new());

#[derive(Clone, Copy)]
enum Store {
    Memory,
    Durable(Durability),
}

impl Store {
    fn label(self) -> &'static str {
        match self {
            Store::Memory => "memory",
            Store::Durable(Durability::Sync) => "durable_sync",
            Store::Durable(_) => "durable_os",
        }
    }
}

/// A manager with the two handlers; keep the directory alive as long as the manager.
fn manager(store: Store, n: usize) -> (TaskManager, Option<tempfile::TempDir>) {
    let builder = TaskManager::builder().max_concurrent_tasks(WORKERS);
    let (mgr, dir) = match store {
        Store::Memory => (builder.memory().build().unwrap(), None),
        Store::Durable(d) => {
            let dir = tempfile::tempdir().unwrap();
            // Large enough that compaction never runs inside the measurement.
            let mgr = builder
                .dir(dir.path())
                .durability(d)
                .segment_size(64 << 20)
                .compact_after_bytes(u64::MAX)
                .build()
                .unwrap();
            (mgr, Some(dir))
        }
    };
    mgr.register("leaf", |ctx| Ok(ctx.payload().clone().into()))
        .unwrap();
    mgr.register("fan", move |ctx| {
        if ctx.stage() == 0 {
            let kids = (0..n).map(|i| ChildSpec::new("leaf", json!(i))).collect();
            return Ok(Outcome::spawn(kids));
        }
        let seen = ctx.result().and_then(Value::as_array).map_or(0, Vec::len);
        Ok(json!({ "seen": seen }).into())
    })
    .unwrap();
    mgr.start().unwrap();
    (mgr, dir)
}

/// One fan-out/fan-in: submit the parent, wait for its completion.
fn run_fan(mgr: &TaskManager, n: usize) -> Duration {
    let t0 = Instant::now();
    let id = mgr.submit("fan", Value::Null).unwrap();
    let t = mgr.wait(id, PATIENCE).unwrap();
    let took = t0.elapsed();
    assert_eq!(t.status, TaskStatus::Completed);
    assert_eq!(t.result, Some(json!({ "seen": n })));
    took
}

/// `n` independent tasks: one batch, then wait for every one.
fn run_independent(mgr: &TaskManager, n: usize) -> Duration {
    let t0 = Instant::now();
    let ids = mgr
        .submit_batch((0..n).map(|i| ("leaf".to_owned(), json!(i), SubmitOptions::new())))
        .unwrap();
    for id in ids {
        let t = mgr.wait(id, PATIENCE).unwrap();
        debug_assert_eq!(t.status, TaskStatus::Completed);
    }
    t0.elapsed()
}

fn bench_store(c: &mut Criterion, store: Store) {
    let n = n();
    let mut g = c.benchmark_group(format!("workflow_{}_{n}", store.label()));
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(1))
        .measurement_time(Duration::from_secs(1));
    g.throughput(Throughput::Elements(n as u64));
    let kinds: [(&str, Run); 2] = [
        ("fan_out_fan_in", run_fan),
        ("independent", run_independent),
    ];
    for (name, run) in kinds {
        let key = format!("{}/{name}", store.label());
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let (mgr, dir) = manager(store, n);
                    let took = run(&mgr, n);
                    TIMES.lock().entry(key.clone()).or_default().push(took);
                    total += took;
                    drop(mgr);
                    drop(dir);
                }
                total
            });
        });
    }
    g.finish();
}

fn memory(c: &mut Criterion) {
    bench_store(c, Store::Memory);
}

fn durable(c: &mut Criterion) {
    bench_store(c, Store::Durable(Durability::Os));
    if std::env::var("FIBFLOW_WF_BENCH_SYNC").is_ok_and(|v| v == "1") {
        bench_store(c, Store::Durable(Durability::Sync));
    }
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn report() {
    let n = n();
    let mut times = TIMES.lock();
    let labels: Vec<String> = times
        .keys()
        .filter_map(|k| k.split('/').next().map(str::to_owned))
        .collect();
    let mut done = Vec::new();
    println!("\nworkflow: {n} children under one parent vs {n} independent tasks, {WORKERS} workers (medians)");
    for label in labels {
        if done.contains(&label) {
            continue;
        }
        let fan = times
            .get_mut(&format!("{label}/fan_out_fan_in"))
            .map(|v| median(v));
        let ind = times
            .get_mut(&format!("{label}/independent"))
            .map(|v| median(v));
        if let (Some(fan), Some(ind)) = (fan, ind) {
            let per = |d: Duration| d.as_secs_f64() * 1e9 / n as f64;
            println!(
                "  {label:<13} fan-out/fan-in {:>8.1} ms ({:>6.0} ns/child)   independent {:>8.1} ms ({:>6.0} ns/task)   ratio {:.2}",
                fan.as_secs_f64() * 1e3,
                per(fan),
                ind.as_secs_f64() * 1e3,
                per(ind),
                fan.as_secs_f64() / ind.as_secs_f64()
            );
        }
        done.push(label);
    }
}

criterion_group!(benches, memory, durable);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    report();
}
