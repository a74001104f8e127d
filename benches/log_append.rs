//! Append cost per durability mode × record size, with same-run baselines:
//! `memory_baseline` (a raw memcpy into a prefaulted buffer) for `Os`, and one
//! `pwrite + fdatasync` per record for `Sync`. `sync_mechanism` compares ways to
//! make a record durable (stores into the mapping or `pwritev` into the page
//! cache, then `msync` of the range or `fdatasync`), round-robin in one run, and
//! prints p50/p99 and the device writes per sync (see docs/log-format.md).
//!
//! Run: `cargo bench --bench log_append` (about a minute), or
//! `cargo bench --bench log_append -- sync_mechanism` for the comparison alone.
#![allow(missing_docs, clippy::unwrap_used)]

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use criterion::{criterion_group, BenchmarkId, Criterion, Throughput};
use fibflow::log::mmap::{Mapping, Reserve};
use fibflow::log::{Durability, Log, LogConfig, MmapStorage, RecoveryMode, Storage};

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

/// A file of `len` real zeros (a multiple of 1 MiB) written in aligned 1 MiB
/// `write`s and synced, like a prepared segment. The page cache then holds it in
/// large folios (1 MiB on this machine's ext4), as it does for any part of a
/// segment that was read back in by readahead.
fn zero_file(path: &Path, len: u64) -> File {
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .unwrap();
    let chunk = vec![0u8; 1 << 20];
    for _ in 0..(len >> 20) {
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
        let file = zero_file(&dir.path().join("baseline"), FILE_LEN);
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

/// One way of making a 128-byte record durable, with what it writes to.
struct Mechanism {
    name: &'static str,
    target: Target,
    samples: Vec<Duration>,
}

enum Target {
    /// A mapping (stores or write-through `pwritev`, per its flag) and its file;
    /// `fdatasync` of the file instead of `msync` of the range if `fdatasync`.
    Mapped {
        map: Mapping,
        file: File,
        fdatasync: bool,
    },
    /// A plain file: `pwrite` then `fdatasync`, or a file opened `O_DSYNC`.
    Plain { file: File, off: u64, dsync: bool },
}

impl Mechanism {
    fn run(&mut self, rec: &[u8]) {
        match &mut self.target {
            Target::Mapped {
                map,
                file,
                fdatasync,
            } => {
                let mut range = None;
                while range.is_none() {
                    range = match map.reserve(rec.len() as u64) {
                        Reserve::Fits(mut slot) => {
                            assert!(slot.write(0, rec));
                            Some((slot.start(), slot.start() + slot.len()))
                        }
                        _ => None,
                    };
                    if range.is_none() {
                        map.set_tail(SEG_HEADER);
                    }
                }
                let (start, end) = range.unwrap_or_default();
                if *fdatasync {
                    file.sync_data().unwrap();
                } else {
                    map.flush_range(start, end).unwrap();
                }
            }
            Target::Plain { file, off, dsync } => {
                if *off + rec.len() as u64 > MECH_FILE_LEN {
                    *off = 0;
                }
                file.write_all_at(rec, *off).unwrap();
                if !*dsync {
                    file.sync_data().unwrap();
                }
                *off += rec.len() as u64;
            }
        }
    }
}

const MECH_FILE_LEN: u64 = 16 << 20;
const SEG_HEADER: u64 = 64;
const MECH_ROUNDS: usize = 1500;
const MECH_WARMUP: usize = 50;

fn mapped(dir: &Path, name: &'static str, fresh: bool, wt: bool, fdatasync: bool) -> Mechanism {
    let file_name = format!("{}.seg", name.replace('/', "-"));
    let map = if fresh {
        // Exactly how the log creates a segment (header, then zeros; fsync; map; prefault).
        MmapStorage::new(dir)
            .write_through(wt)
            .create_segment(&file_name, MECH_FILE_LEN, &[0u8; SEG_HEADER as usize])
            .unwrap()
    } else {
        let f = zero_file(&dir.join(&file_name), MECH_FILE_LEN);
        let mut m = Mapping::map_file(&f, MECH_FILE_LEN).unwrap();
        m.set_write_through(wt);
        m.prefault();
        m
    };
    let mut map = map;
    map.set_tail(SEG_HEADER);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(dir.join(&file_name))
        .unwrap();
    Mechanism {
        name,
        target: Target::Mapped {
            map,
            file,
            fdatasync,
        },
        samples: Vec::new(),
    }
}

fn plain(dir: &Path, name: &'static str, dsync: bool) -> Mechanism {
    let path = dir.join(name.replace('/', "-"));
    drop(zero_file(&path, MECH_FILE_LEN));
    let mut o = OpenOptions::new();
    o.read(true).write(true);
    if dsync {
        o.custom_flags(libc::O_DSYNC);
    }
    Mechanism {
        name,
        target: Target::Plain {
            file: o.open(&path).unwrap(),
            off: 0,
            dsync,
        },
        samples: Vec::new(),
    }
}

/// (writes, sectors written, flushes) of the block device holding `dir`, if listed.
fn disk_stats(dir: &Path) -> Option<[u64; 3]> {
    let dev = std::fs::metadata(dir).ok()?.dev();
    let (major, minor) = (libc::major(dev).to_string(), libc::minor(dev).to_string());
    let text = std::fs::read_to_string("/proc/diskstats").ok()?;
    let line = text.lines().find(|l| {
        let mut w = l.split_whitespace();
        w.next() == Some(major.as_str()) && w.next() == Some(minor.as_str())
    })?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(3)
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    Some([*v.get(4)?, *v.get(6)?, *v.get(15)?])
}

fn pctl(v: &mut [Duration], p: f64) -> Duration {
    v.sort_unstable();
    v.get(((v.len() as f64 - 1.0) * p) as usize)
        .copied()
        .unwrap_or_default()
}

/// Ways to make a 128-byte record durable, measured round-robin in one run
/// (each round runs every mechanism once, so load drift hits all alike), then
/// each alone for the device writes it causes. Printed, not through criterion,
/// which would run them one after the other. See docs/log-format.md.
fn sync_mechanism() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut mechs = vec![
        plain(d, "pwrite_fdatasync", false),
        mapped(d, "store_msync/fresh_segment", true, false, false),
        mapped(d, "store_msync/large_folios", false, false, false),
        mapped(d, "store_fdatasync/large_folios", false, false, true),
        mapped(d, "pwritev_msync/fresh_segment", true, true, false),
        mapped(d, "pwritev_msync/large_folios", false, true, false),
        mapped(d, "pwritev_fdatasync/large_folios", false, true, true),
        plain(d, "o_dsync_pwrite", true),
    ];
    let rec = [0x3Cu8; 128];
    for round in 0..MECH_WARMUP + MECH_ROUNDS {
        for m in &mut mechs {
            let t0 = Instant::now();
            m.run(&rec);
            if round >= MECH_WARMUP {
                m.samples.push(t0.elapsed());
            }
        }
    }
    let mut base = mechs[0].samples.clone();
    let b50 = pctl(&mut base, 0.5);
    println!("sync_mechanism: 128-byte record, one sync each, {MECH_ROUNDS} round-robin rounds");
    for m in &mut mechs {
        let solo = 200u64;
        let before = disk_stats(d);
        for _ in 0..solo {
            m.run(&rec);
        }
        let io = match (before, disk_stats(d)) {
            (Some(a), Some(b)) => format!(
                "per sync: {:.1} writes, {:.1} KiB, {:.2} flushes",
                (b[0] - a[0]) as f64 / solo as f64,
                (b[1] - a[1]) as f64 * 512.0 / 1024.0 / solo as f64,
                (b[2] - a[2]) as f64 / solo as f64
            ),
            _ => String::new(),
        };
        let (p50, p99) = (pctl(&mut m.samples, 0.5), pctl(&mut m.samples, 0.99));
        println!(
            "  {:32} p50 {:>9.1?} p99 {:>9.1?} ({:.2}x pwrite_fdatasync)  {io}",
            m.name,
            p50,
            p99,
            p50.as_secs_f64() / b50.as_secs_f64().max(1e-12)
        );
    }
}

criterion_group!(benches, append, sync_threads);

fn main() {
    benches();
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    if filter.is_empty() || filter.iter().any(|f| "sync_mechanism".contains(f.as_str())) {
        sync_mechanism();
    }
    Criterion::default().configure_from_args().final_summary();
}
