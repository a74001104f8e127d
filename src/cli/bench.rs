//! `fibflow bench`: dispatch figures beside a baseline measured in the same run.
//!
//! 1. Latency: one task is submitted while every worker is idle and parked; the
//!    handler records `Instant::now()` at its start; the difference to the instant
//!    before `submit` is one sample. The baseline hands one job (a boxed closure
//!    that records `Instant::now()` when it runs) over a crossbeam channel to the
//!    same number of parked threads and measures the same span. Samples alternate between the two (same machine load), with a pause of
//!    `--gap-us` (default 300 µs) before each so the workers park again.
//! 2. Throughput: one producer submits no-op tasks in batches while the machine's
//!    cores run them (in memory); end to end means until `count_by_status` reports
//!    them all completed. The baseline pushes no-op jobs through a crossbeam channel
//!    to the same number of threads. Rounds alternate between the two, as the
//!    latency samples do; each figure is the median of its rounds.
//!
//! A baseline job is what a thread pool's channel carries: a boxed closure
//! (`Box<dyn FnOnce() + Send>`), allocated by the producer and run and freed by
//! a worker. That channel moves 6–7 M no-op jobs/s on a 2-core host, the figure
//! issue 2 gives for its baseline. A channel of bare integers, which allocates
//! nothing, moves 20–47 M/s there; it is reported too (`baseline_u64_per_s`), as
//! the floor of any hand-off.
//!
//! Ratios are fibflow / baseline: above 1 means slower for latency and faster for
//! throughput.

use super::out::{cores, outln, print_json, round, CliResult};
use clap::Args;
use crossbeam::channel;
use fibflow::{TaskManager, TaskStatus};
use serde_json::{json, Value};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// No-op tasks per throughput round.
const TASKS_PER_ROUND: u64 = 200_000;
/// No-op jobs per baseline throughput round.
const JOBS_PER_ROUND: u64 = 2_000_000;
/// Tasks per `submit_batch` call.
const BATCH: u64 = 1000;

/// Arguments of `fibflow bench`.
#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    /// One JSON object on the last stdout line.
    #[arg(long)]
    pub json: bool,
    /// Total time budget in seconds (split over the four measurements), from
    /// 0.4 to 86,400.
    #[arg(long, default_value_t = 8.0, value_parser = parse_seconds)]
    pub seconds: f64,
    /// Pause before each latency sample, in microseconds, so the workers park
    /// (at most 1,000,000).
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(0..=1_000_000))]
    pub gap_us: u64,
}

/// `--seconds`: a finite number from 0.4 to 86,400.
fn parse_seconds(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("`{s}` is not a number of seconds"))?;
    if (0.4..=86_400.0).contains(&v) {
        Ok(v)
    } else {
        Err(format!("{s} seconds is out of range: give 0.4 to 86400"))
    }
}

/// Percentiles of latency samples, in microseconds.
#[derive(Debug, Clone, Copy)]
struct Percentiles {
    p50: f64,
    p99: f64,
    p999: f64,
    samples: usize,
}

fn percentiles(mut v: Vec<Duration>) -> Percentiles {
    v.sort_unstable();
    let at = |q: f64| {
        if v.is_empty() {
            return 0.0;
        }
        let i = ((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1;
        v[i].as_secs_f64() * 1e6
    };
    Percentiles {
        p50: at(0.50),
        p99: at(0.99),
        p999: at(0.999),
        samples: v.len(),
    }
}

/// A baseline job, as a thread pool's channel carries it.
type Job = Box<dyn FnOnce() + Send>;

/// The parked-thread baseline of the latency measurement.
struct Parked {
    jobs: Option<channel::Sender<Job>>,
    started_tx: channel::Sender<Instant>,
    started: channel::Receiver<Instant>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Parked {
    fn new(workers: usize) -> Parked {
        let (jobs, job_rx) = channel::unbounded::<Job>();
        let (started_tx, started) = channel::unbounded::<Instant>();
        let threads = (0..workers)
            .map(|_| {
                let rx = job_rx.clone();
                std::thread::spawn(move || {
                    while let Ok(job) = rx.recv() {
                        job();
                    }
                })
            })
            .collect();
        Parked {
            jobs: Some(jobs),
            started_tx,
            started,
            threads,
        }
    }

    fn sample(&self) -> Option<Duration> {
        // Cloned before the clock starts: the baseline pays nothing fibflow's
        // handler (which holds its own sender) does not.
        let tx = self.started_tx.clone();
        let t0 = Instant::now();
        let job: Job = Box::new(move || {
            let _ = tx.send(Instant::now());
        });
        self.jobs.as_ref()?.send(job).ok()?;
        let started = self.started.recv().ok()?;
        Some(started.saturating_duration_since(t0))
    }
}

impl Drop for Parked {
    fn drop(&mut self) {
        self.jobs = None;
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Latency of fibflow and of the baseline, sampled alternately so that both see
/// the same machine load: `(fibflow, baseline)`.
fn latency(
    workers: usize,
    budget: Duration,
    gap: Duration,
) -> fibflow::Result<(Percentiles, Percentiles)> {
    let mgr = TaskManager::builder()
        .memory()
        .max_concurrent_tasks(workers)
        .build()?;
    let (tx, rx) = channel::unbounded::<Instant>();
    mgr.register("bench.start", move |_| {
        let _ = tx.send(Instant::now());
        Ok(Value::Null.into())
    })?;
    mgr.start()?;
    let base = Parked::new(workers);
    let (mut fib, mut baseline) = (Vec::new(), Vec::new());
    let until = Instant::now() + budget;
    while Instant::now() < until || fib.len() < 100 {
        std::thread::sleep(gap);
        let Some(b) = base.sample() else { break };
        baseline.push(b);
        std::thread::sleep(gap);
        let t0 = Instant::now();
        let id = mgr.submit("bench.start", Value::Null)?;
        let Ok(started) = rx.recv() else { break };
        fib.push(started.saturating_duration_since(t0));
        mgr.wait(id, Duration::from_secs(30))?;
    }
    mgr.stop(Duration::from_secs(5))?;
    Ok((percentiles(fib), percentiles(baseline)))
}

/// One throughput round: tasks per second, end to end.
fn fibflow_round(workers: usize) -> Result<f64, Box<dyn std::error::Error>> {
    let mgr = TaskManager::builder()
        .memory()
        .max_concurrent_tasks(workers)
        .build()?;
    let ran = Arc::new(AtomicU64::new(0));
    let r = ran.clone();
    mgr.register("bench.noop", move |_| {
        r.fetch_add(1, Ordering::Relaxed);
        Ok(Value::Null.into())
    })?;
    mgr.start()?;
    let t0 = Instant::now();
    let mut from = 0;
    while from < TASKS_PER_ROUND {
        let to = (from + BATCH).min(TASKS_PER_ROUND);
        mgr.submit_batch(
            (from..to).map(|_| ("bench.noop", Value::Null, fibflow::SubmitOptions::new())),
        )?;
        from = to;
    }
    // Every handler ran and no attempt holds a slot, so every completion is
    // recorded (a worker releases its slot after recording the outcome); checked
    // against `count_by_status` after the clock stops, as that scans every task.
    while ran.load(Ordering::Relaxed) < TASKS_PER_ROUND || mgr.running() > 0 {
        std::thread::sleep(Duration::from_micros(50));
    }
    let secs = t0.elapsed().as_secs_f64();
    let completed = mgr.count_by_status()[&TaskStatus::Completed];
    if completed != TASKS_PER_ROUND {
        return Err(format!(
            "bench: {completed} of {TASKS_PER_ROUND} no-op tasks completed; the throughput figure would be wrong"
        )
        .into());
    }
    mgr.stop(Duration::from_secs(5))?;
    Ok(TASKS_PER_ROUND as f64 / secs)
}

/// One baseline round: `JOBS_PER_ROUND` items made by `make` pushed through a
/// channel to `workers` threads that `run` and count each; items per second.
fn channel_round<T: Send + 'static>(workers: usize, make: impl Fn(u64) -> T, run: fn(T)) -> f64 {
    let (tx, rx) = channel::unbounded::<T>();
    let done = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..workers)
        .map(|_| {
            let (rx, done) = (rx.clone(), done.clone());
            std::thread::spawn(move || {
                while let Ok(item) = rx.recv() {
                    run(item);
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    let t0 = Instant::now();
    for i in 0..JOBS_PER_ROUND {
        let _ = tx.send(make(i));
    }
    while done.load(Ordering::Relaxed) < JOBS_PER_ROUND {
        std::thread::sleep(Duration::from_micros(50));
    }
    let secs = t0.elapsed().as_secs_f64();
    drop(tx);
    for t in threads {
        let _ = t.join();
    }
    JOBS_PER_ROUND as f64 / secs
}

/// The baseline: no-op jobs, boxed as a thread pool's are.
fn baseline_round(workers: usize) -> f64 {
    channel_round(
        workers,
        |i| -> Job {
            Box::new(move || {
                std::hint::black_box(i);
            })
        },
        |job| job(),
    )
}

/// The allocation-free floor: bare integers.
fn integer_round(workers: usize) -> f64 {
    channel_round(
        workers,
        |i| i,
        |i| {
            std::hint::black_box(i);
        },
    )
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// Median rates of one throughput measurement.
struct Rates {
    fibflow: f64,
    baseline: f64,
    integers: f64,
    /// Rounds behind each median (the same for all three).
    rounds: usize,
}

/// Throughput rounds of the baseline, of fibflow and of the integer floor,
/// alternated until `budget` is spent (at least one of each), so that all see
/// the same machine load, as the latency samples do.
fn throughput(workers: usize, budget: Duration) -> Result<Rates, Box<dyn std::error::Error>> {
    let until = Instant::now() + budget;
    let (mut fib, mut base, mut ints) = (Vec::new(), Vec::new(), Vec::new());
    while fib.is_empty() || Instant::now() < until {
        base.push(baseline_round(workers));
        fib.push(fibflow_round(workers)?);
        ints.push(integer_round(workers));
    }
    Ok(Rates {
        rounds: fib.len(),
        fibflow: median(fib),
        baseline: median(base),
        integers: median(ints),
    })
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        round(a / b, 3)
    } else {
        0.0
    }
}

/// Runs `fibflow bench`.
pub fn run(a: &BenchArgs) -> CliResult {
    let n = cores();
    let total = Duration::from_secs_f64(a.seconds.max(0.4));
    let part = |f: f64| total.mul_f64(f);
    let (fib_lat, base_lat) = latency(n, part(0.5), Duration::from_micros(a.gap_us))?;
    let Rates {
        fibflow: fib_tput,
        baseline: base_tput,
        integers: int_tput,
        rounds,
    } = throughput(n, part(0.5))?;
    let v = json!({
        "workers": n,
        "seconds": a.seconds,
        "gap_us": a.gap_us,
        "latency_samples": fib_lat.samples,
        "baseline_latency_samples": base_lat.samples,
        "submit_start_p50_us": round(fib_lat.p50, 2),
        "submit_start_p99_us": round(fib_lat.p99, 2),
        "submit_start_p999_us": round(fib_lat.p999, 2),
        "baseline_p50_us": round(base_lat.p50, 2),
        "baseline_p99_us": round(base_lat.p99, 2),
        "baseline_p999_us": round(base_lat.p999, 2),
        "ratio_p50": ratio(fib_lat.p50, base_lat.p50),
        "ratio_p99": ratio(fib_lat.p99, base_lat.p99),
        "ratio_p999": ratio(fib_lat.p999, base_lat.p999),
        "throughput_tasks_per_s": round(fib_tput, 0),
        "throughput_rounds": rounds,
        "baseline_jobs_per_s": round(base_tput, 0),
        "baseline_rounds": rounds,
        "ratio_throughput": ratio(fib_tput, base_tput),
        "baseline_u64_per_s": round(int_tput, 0),
        "ratio_throughput_u64": ratio(fib_tput, int_tput),
    });
    if a.json {
        print_json(&v)?;
    } else {
        outln!("fibflow bench: {n} workers, in memory, baseline = crossbeam channel of boxed jobs to {n} parked threads")?;
        outln!("submit -> handler start (idle workers), microseconds:")?;
        outln!(
            "             {:>10} {:>10} {:>10} {:>8}",
            "p50",
            "p99",
            "p99.9",
            "samples"
        )?;
        for (name, p) in [("fibflow", fib_lat), ("baseline", base_lat)] {
            outln!(
                "  {name:<10} {:>10.1} {:>10.1} {:>10.1} {:>8}",
                p.p50,
                p.p99,
                p.p999,
                p.samples
            )?;
        }
        outln!(
            "  {:<10} {:>10} {:>10} {:>10}",
            "ratio",
            v["ratio_p50"],
            v["ratio_p99"],
            v["ratio_p999"]
        )?;
        outln!("end-to-end no-op throughput:")?;
        outln!("  fibflow    {fib_tput:>12.0} tasks/s  (median of {rounds} rounds of {TASKS_PER_ROUND})")?;
        outln!("  baseline   {base_tput:>12.0} jobs/s   (median of {rounds} rounds of {JOBS_PER_ROUND})")?;
        outln!("  ratio      {:>12}", v["ratio_throughput"])?;
        outln!("  integers   {int_tput:>12.0} /s       (the channel alone, nothing allocated; ratio {})", v["ratio_throughput_u64"])?;
    }
    Ok(ExitCode::SUCCESS)
}
