//! Dispatch: submit→handler-start latency with idle workers, and end-to-end no-op
//! throughput with 2 workers, each beside its same-run baseline (a raw crossbeam
//! channel of boxed no-op jobs feeding 2 parked threads). Compare `fibflow` with `crossbeam_baseline`
//! inside each group; the ratio is the figure to report.
//!
//! Run: `cargo bench --bench dispatch` (about 15 s). `fibflow bench` prints the
//! same figures as percentiles (p50/p99/p99.9) with the ratios computed.

mod common;

use common::{ParkedThreads, Probe, IDLE_GAP};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::time::Duration;

const WORKERS: usize = 2;
/// No-op tasks per throughput iteration.
const NOOPS: u64 = 10_000;

fn latency(c: &mut Criterion) {
    let mut g = c.benchmark_group("submit_to_start_idle");
    g.sample_size(10)
        .measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(300));
    g.bench_function("crossbeam_baseline", |b| {
        let base = ParkedThreads::new(WORKERS);
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                std::thread::sleep(IDLE_GAP);
                total += base.hand_off();
            }
            total
        });
    });
    g.bench_function("fibflow", |b| {
        let probe = Probe::new(WORKERS);
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                std::thread::sleep(IDLE_GAP);
                total += probe.submit_to_start();
            }
            total
        });
    });
    g.finish();
}

fn throughput(c: &mut Criterion) {
    let mut g = c.benchmark_group("noop_throughput_2_workers");
    g.sample_size(10)
        .measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(300));
    g.throughput(Throughput::Elements(NOOPS));
    g.bench_function("crossbeam_baseline", |b| {
        let base = ParkedThreads::new(WORKERS);
        b.iter_custom(|iters| (0..iters).map(|_| base.run_noops(NOOPS)).sum());
    });
    g.bench_function("fibflow", |b| {
        // A fresh manager per sample keeps the task table (finished tasks stay
        // queryable) from growing across the whole run.
        b.iter_custom(|iters| {
            let probe = Probe::new(WORKERS);
            (0..iters).map(|_| probe.run_noops(NOOPS)).sum()
        });
    });
    g.finish();
}

criterion_group!(benches, latency, throughput);
criterion_main!(benches);
