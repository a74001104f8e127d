//! Replay speed: 1,000,000 records of 64 bytes (96-byte frames, ~96 MB).
//! `replay` walks and checksums every frame of an open log; `replay_split`
//! does it with two walkers that each verify and take half of the records
//! (as runtime replay does); `open_and_replay` adds the recovery scan and
//! mapping on open.
//!
//! Run: `cargo bench --bench recovery`.
#![allow(missing_docs, clippy::unwrap_used)]

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use fibflow::log::{Durability, Log, LogConfig, RecoveryMode};

const RECORDS: u64 = 1_000_000;
const BODY: usize = 64;

fn config() -> LogConfig {
    LogConfig {
        durability: Durability::Os,
        segment_size: 64 << 20,
        recovery: RecoveryMode::StopAtTornTail,
    }
}

fn replay(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    {
        let (log, _) = Log::open(dir.path(), config()).unwrap();
        let mut rec = [0u8; BODY];
        for i in 0..RECORDS {
            rec[..8].copy_from_slice(&i.to_le_bytes());
            log.append(&rec).unwrap();
        }
        log.flush().unwrap();
    }
    let count = |log: &Log| {
        let mut n = 0u64;
        log.replay(|_, b| {
            n += b.len() as u64;
            Ok::<(), ()>(())
        })
        .unwrap();
        assert_eq!(n, RECORDS * BODY as u64);
    };
    let mut g = c.benchmark_group("recovery");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(4));
    g.throughput(Throughput::Elements(RECORDS));
    {
        let (log, _) = Log::open(dir.path(), config()).unwrap();
        g.bench_function("replay_1m_x64B", |b| b.iter(|| count(&log)));
    }
    {
        // Two walkers over one view, each verifying and taking the records
        // whose first byte has its parity, as runtime replay splits shards.
        let (log, _) = Log::open(dir.path(), config()).unwrap();
        g.bench_function("replay_split_2_walkers_1m_x64B", |b| {
            b.iter(|| {
                let view = log.replay_view();
                let total: u64 = std::thread::scope(|s| {
                    let walkers: Vec<_> = (0..2u8)
                        .map(|k| {
                            let view = &view;
                            s.spawn(move || {
                                let mut n = 0u64;
                                view.for_each(
                                    |b| b.first().is_some_and(|x| x % 2 == k),
                                    |_, b| {
                                        n += b.len() as u64;
                                        Ok::<(), ()>(())
                                    },
                                )
                                .unwrap();
                                n
                            })
                        })
                        .collect();
                    walkers.into_iter().map(|w| w.join().unwrap()).sum()
                });
                assert_eq!(total, RECORDS * BODY as u64);
            });
        });
    }
    g.bench_function("open_and_replay_1m_x64B", |b| {
        b.iter(|| {
            let (log, report) = Log::open(dir.path(), config()).unwrap();
            assert_eq!(report.records, RECORDS);
            count(&log);
        });
    });
    g.finish();
}

criterion_group!(benches, replay);
criterion_main!(benches);
