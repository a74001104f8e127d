//! Append cost per durability mode × record size, with same-run baselines:
//! `memory_baseline` (a raw memcpy into a prefaulted buffer) for `Os`, and one
//! `pwrite + fdatasync` per record for `Sync`. `sync_mechanism` compares the
//! three ways to make mapped bytes durable (see docs/log-format.md).
//!
//! Run: `cargo bench --bench log_append` (about a minute).
#![allow(missing_docs, clippy::unwrap_used)]

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use fibflow::log::mmap::{Mapping, Reserve};
use fibflow::log::{Durability, Log, LogConfig, RecoveryMode};

const SIZES: [usize; 3] = [64, 128, 1024];
const FILE_LEN: u64 = 64 << 20;
const THREADS: u64 = 64;

fn config(durability: Durability) -> LogConfig {
    LogConfig {
        durability,
        segment_size: FILE_LEN,
        recovery: RecoveryMode::StopAtTornTail,
    }
}

/// A file of `FILE_LEN` real zeros, synced, like a prepared segment.
fn zero_file(path: &Path) -> File {
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .unwrap();
    let chunk = vec![0u8; 1 << 20];
    for _ in 0..(FILE_LEN >> 20) {
        f.write_all(&chunk).unwrap();
    }
    f.sync_all().unwrap();
    f
}

fn append(c: &mut Criterion) {
    let mut g = c.benchmark_group("append");
    g.sample_size(20)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(2));
    g.throughput(Throughput::Elements(1));
    for size in SIZES {
        let rec = vec![0xA5u8; size];
        let mut buf = vec![1u8; FILE_LEN as usize];
        let mut at = 0usize;
        g.bench_with_input(BenchmarkId::new("memory_baseline", size), &size, |b, _| {
            b.iter(|| {
                if at + size > buf.len() {
                    at = 0;
                }
                buf[at..at + size].copy_from_slice(&rec);
                at += size;
            });
        });
        for (name, durability) in [("os", Durability::Os), ("sync_1_thread", Durability::Sync)] {
            let dir = tempfile::tempdir().unwrap();
            let (log, _) = Log::open(dir.path(), config(durability)).unwrap();
            g.bench_with_input(BenchmarkId::new(name, size), &size, |b, _| {
                b.iter(|| {
                    let lsn = log.append(&rec).unwrap();
                    log.wait_durable(lsn).unwrap();
                });
            });
        }
        let dir = tempfile::tempdir().unwrap();
        let file = zero_file(&dir.path().join("baseline"));
        let mut off = 0u64;
        g.bench_with_input(
            BenchmarkId::new("pwrite_fdatasync_baseline", size),
            &size,
            |b, _| {
                b.iter(|| {
                    if off + size as u64 > FILE_LEN {
                        off = 0;
                    }
                    file.write_at(&rec, off).unwrap();
                    file.sync_data().unwrap();
                    off += size as u64;
                });
            },
        );
    }
    g.finish();
}

/// 64 threads each append + wait_durable under `Sync`: group commit throughput.
fn sync_threads(c: &mut Criterion) {
    let mut g = c.benchmark_group("sync_64_threads");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(3));
    g.throughput(Throughput::Elements(1));
    for size in SIZES {
        let dir = tempfile::tempdir().unwrap();
        let (log, _) = Log::open(dir.path(), config(Durability::Sync)).unwrap();
        let log = Arc::new(log);
        g.bench_with_input(BenchmarkId::new("append_wait", size), &size, |b, &size| {
            b.iter_custom(|iters| {
                let per = iters.div_ceil(THREADS);
                let barrier = Arc::new(Barrier::new(THREADS as usize + 1));
                let handles: Vec<_> = (0..THREADS)
                    .map(|_| {
                        let (log, barrier) = (Arc::clone(&log), Arc::clone(&barrier));
                        std::thread::spawn(move || {
                            let rec = vec![0x5Au8; size];
                            barrier.wait();
                            for _ in 0..per {
                                let lsn = log.append(&rec).unwrap();
                                log.wait_durable(lsn).unwrap();
                            }
                        })
                    })
                    .collect();
                barrier.wait();
                let start = Instant::now();
                for h in handles {
                    h.join().unwrap();
                }
                let took = start.elapsed();
                took.mul_f64(iters as f64 / (per * THREADS) as f64)
            });
        });
    }
    g.finish();
}

/// msync of the dirtied range vs pwrite+fdatasync vs mmap write + fdatasync, 128-byte records.
fn sync_mechanism(c: &mut Criterion) {
    let mut g = c.benchmark_group("sync_mechanism");
    g.sample_size(20)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(2));
    g.throughput(Throughput::Elements(1));
    let rec = [0x3Cu8; 128];
    let dir = tempfile::tempdir().unwrap();
    let file = zero_file(&dir.path().join("mapped"));
    let mut map = Mapping::map_file(&file, FILE_LEN).unwrap();
    map.prefault();
    map.set_tail(0);
    for name in ["msync_range", "mmap_write_fdatasync"] {
        g.bench_function(name, |b| {
            b.iter(|| {
                let (start, end) = match map.reserve(rec.len() as u64) {
                    Reserve::Fits(mut slot) => {
                        slot.write(0, &rec);
                        (slot.start(), slot.start() + slot.len())
                    }
                    _ => (0, 0),
                };
                if end == 0 {
                    map.set_tail(0);
                    return;
                }
                if name == "msync_range" {
                    map.flush_range(start, end).unwrap();
                } else {
                    file.sync_data().unwrap();
                }
            });
        });
    }
    let plain = zero_file(&dir.path().join("plain"));
    let mut off = 0u64;
    g.bench_function("pwrite_fdatasync", |b| {
        b.iter(|| {
            if off + 128 > FILE_LEN {
                off = 0;
            }
            plain.write_at(&rec, off).unwrap();
            plain.sync_data().unwrap();
            off += 128;
        });
    });
    g.finish();
}

criterion_group!(benches, append, sync_threads, sync_mechanism);
criterion_main!(benches);
