//! Module tests: round trips, rollover, lock, snapshots, proptests, bit flips,
//! truncation, and simulated power loss through `SimStorage`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::type_complexity
)]

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use proptest::prelude::*;
use rand::{Rng, SeedableRng};

use super::*;

fn cfg(durability: Durability, segment_size: u64) -> LogConfig {
    LogConfig {
        durability,
        segment_size,
        recovery: RecoveryMode::StopAtTornTail,
    }
}

fn collect(log: &Log) -> Vec<(Lsn, Vec<u8>)> {
    let mut out = Vec::new();
    log.replay(|lsn, b| {
        out.push((lsn, b.to_vec()));
        Ok::<(), ()>(())
    })
    .unwrap();
    out
}

fn bodies(log: &Log) -> Vec<Vec<u8>> {
    collect(log).into_iter().map(|(_, b)| b).collect()
}

fn sim_open(sim: &Arc<SimStorage>, config: LogConfig) -> Result<(Log, RecoveryReport), LogError> {
    Log::open_with_storage(Arc::clone(sim) as Arc<dyn Storage>, config)
}

#[test]
fn append_reopen_replay_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let records: Vec<Vec<u8>> = (0..200u32)
        .map(|i| vec![i as u8; (i % 70) as usize])
        .collect();
    {
        let (log, report) = Log::open(dir.path(), cfg(Durability::Sync, 8192)).unwrap();
        assert_eq!(report.records, 0);
        let mut last = Lsn(0);
        for r in &records {
            let lsn = log.append(r).unwrap();
            assert!(lsn > last, "LSNs increase");
            last = lsn;
        }
        log.wait_durable(last).unwrap();
        assert_eq!(log.stats().last_lsn, Some(last));
        assert!(log.stats().segments > 1, "8 KiB segments must roll over");
    }
    let (log, report) = Log::open(dir.path(), cfg(Durability::Sync, 8192)).unwrap();
    assert_eq!(report.records, 200);
    assert_eq!(report.torn_tail, None);
    assert_eq!(bodies(&log), records);
    let v = verify(dir.path());
    drop(log);
    let v = v.unwrap();
    assert_eq!((v.records, v.problems.len()), (200, 0), "{v:?}");
}

#[test]
fn second_open_is_locked() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = Log::open(dir.path(), cfg(Durability::Os, 4096)).unwrap();
    let err = Log::open(dir.path(), cfg(Durability::Os, 4096)).unwrap_err();
    assert!(matches!(err, LogError::Locked { .. }), "{err}");
    assert!(err.to_string().contains("locked"), "{err}");
    drop(log);
    assert!(
        Log::open(dir.path(), cfg(Durability::Os, 4096)).is_ok(),
        "lock released on drop"
    );
}

#[test]
fn rollover_table() {
    // (segment size, record sizes) — sizes chosen to hit: exact fill, pad frame,
    // remainder shorter than a header, and a record as large as a segment allows.
    let max = 4096 - 64 - 32;
    let cases: Vec<(u64, Vec<usize>)> = vec![
        (4096, vec![max, 1, max]),
        (4096, vec![4000 - 32, 100]),
        (4096, vec![4096 - 64 - 32 - 8 - 32, 5, 5]),
        (4096, vec![1000; 9]),
        (8192, vec![3, 4000, 4000, 4000, 3]),
    ];
    for (i, (seg, sizes)) in cases.into_iter().enumerate() {
        let sim = Arc::new(SimStorage::new());
        let records: Vec<Vec<u8>> = sizes
            .iter()
            .enumerate()
            .map(|(j, &n)| vec![j as u8 + 1; n])
            .collect();
        {
            let (log, _) = sim_open(&sim, cfg(Durability::Sync, seg)).unwrap();
            for r in &records {
                let lsn = log.append(r).unwrap();
                log.wait_durable(lsn).unwrap();
            }
            assert_eq!(bodies(&log), records, "case {i} live");
        }
        let sim = Arc::new(sim.power_loss(i as u64).unwrap());
        let (log, report) = sim_open(&sim, cfg(Durability::Sync, seg)).unwrap();
        assert_eq!(bodies(&log), records, "case {i} after reopen");
        assert_eq!(report.torn_tail, None, "case {i}");
    }
}

#[test]
fn record_too_large_and_unknown_lsn() {
    let sim = Arc::new(SimStorage::new());
    let (log, _) = sim_open(&sim, cfg(Durability::Os, 4096)).unwrap();
    let err = log.append(&vec![0; 4096]).unwrap_err();
    assert!(
        matches!(err, LogError::RecordTooLarge { len: 4096, .. }),
        "{err}"
    );
    assert!(matches!(
        log.wait_durable(Lsn(1 << 40)),
        Err(LogError::UnknownLsn { .. })
    ));
    let bad = Log::open_with_storage(
        sim.clone(),
        LogConfig {
            segment_size: 1000,
            ..LogConfig::default()
        },
    );
    assert!(matches!(bad, Err(LogError::InvalidConfig(_))));
}

/// `roll` ends the active segment, so a snapshot at `covered_lsn` covers it
/// and compaction deletes it with every record in it; rolling an empty
/// segment does nothing.
#[test]
fn roll_lets_a_snapshot_delete_the_segment_being_written() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (log, _) = Log::open(dir.path(), cfg(Durability::Sync, 1 << 16)).unwrap();
        for i in 0..10u32 {
            log.append(&i.to_le_bytes().repeat(8)).unwrap();
        }
        let first = log.stats().segments;
        let last = log.stats().last_lsn;
        log.roll().unwrap();
        assert_eq!(log.stats().segments, first + 1);
        log.roll().unwrap(); // nothing written since: no new segment
        assert_eq!(log.stats().segments, first + 1);
        let covered = log.covered_lsn().unwrap();
        log.write_snapshot(covered, b"all ten").unwrap();
        assert_eq!(log.stats().segments, 1, "the rolled segment is deleted");
        assert_eq!(log.stats().last_lsn, last, "the last record stays the last");
        log.append(b"after").unwrap();
        log.flush().unwrap();
    }
    let (log, report) = Log::open(dir.path(), cfg(Durability::Sync, 1 << 16)).unwrap();
    assert_eq!(log.snapshot().map(|(_, b)| b), Some(b"all ten".to_vec()));
    assert_eq!(bodies(&log), vec![b"after".to_vec()]);
    assert_eq!(report.segments, 1);
    assert!(verify(dir.path()).unwrap().problems.is_empty());
}

#[test]
fn snapshot_compacts_and_reopen_yields_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let mut lsns = Vec::new();
    {
        let (log, _) = Log::open(dir.path(), cfg(Durability::Sync, 4096)).unwrap();
        for i in 0..100u32 {
            lsns.push(log.append(&i.to_le_bytes().repeat(30)).unwrap());
        }
        log.flush().unwrap();
        let before = log.stats().segments;
        log.write_snapshot(lsns[79], b"state@79").unwrap();
        let after = log.stats();
        assert!(after.segments < before, "{before} -> {}", after.segments);
        assert_eq!(after.snapshot_lsn, Some(lsns[79]));
        // Appends continue after a snapshot.
        log.append(b"after").unwrap();
    }
    let (log, report) = Log::open(dir.path(), cfg(Durability::Sync, 4096)).unwrap();
    assert_eq!(report.snapshot_lsn, Some(lsns[79]));
    assert_eq!(log.snapshot(), Some((lsns[79], b"state@79".to_vec())));
    let got = collect(&log);
    let mut want: Vec<Vec<u8>> = (80..100u32).map(|i| i.to_le_bytes().repeat(30)).collect();
    want.push(b"after".to_vec());
    assert_eq!(got.iter().map(|(_, b)| b.clone()).collect::<Vec<_>>(), want);
    assert!(got.iter().all(|(l, _)| *l > lsns[79]));
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(
        names.iter().filter(|n| n.starts_with("snap-")).count(),
        1,
        "{names:?}"
    );
}

#[test]
fn concurrent_appenders_all_modes() {
    for durability in [
        Durability::Os,
        Durability::Sync,
        Durability::Batched {
            interval: Duration::from_millis(1),
        },
    ] {
        let sim = Arc::new(SimStorage::new());
        let (log, _) = sim_open(&sim, cfg(durability, 16384)).unwrap();
        let log = Arc::new(log);
        let threads: Vec<_> = (0..8u8)
            .map(|t| {
                let log = Arc::clone(&log);
                std::thread::spawn(move || {
                    for i in 0..200u16 {
                        let mut body = vec![t];
                        body.extend_from_slice(&i.to_le_bytes());
                        body.resize(3 + usize::from(i % 50), t);
                        let lsn = log.append(&body).unwrap();
                        log.wait_durable(lsn).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let got = bodies(&log);
        assert_eq!(got.len(), 1600, "{durability:?}");
        for t in 0..8u8 {
            let seq: Vec<u16> = got
                .iter()
                .filter(|b| b[0] == t)
                .map(|b| u16::from_le_bytes([b[1], b[2]]))
                .collect();
            assert_eq!(
                seq,
                (0..200).collect::<Vec<_>>(),
                "{durability:?} thread {t} in order"
            );
        }
        if durability == Durability::Sync {
            assert!(log.stats().synced_lsn.0 > log.stats().last_lsn.unwrap().0);
        }
    }
}

/// `Sync` on a real directory appends by `pwritev` (write-through): concurrent
/// appenders across rollovers are readable through the mapping at once and
/// from the files after a reopen.
#[test]
fn sync_write_through_on_disk_concurrent_rollover() {
    let dir = tempfile::tempdir().unwrap();
    let expected: Vec<Vec<u8>> = {
        let (log, _) = Log::open(dir.path(), cfg(Durability::Sync, 8192)).unwrap();
        let log = Arc::new(log);
        let threads: Vec<_> = (0..4u8)
            .map(|t| {
                let log = Arc::clone(&log);
                std::thread::spawn(move || {
                    for i in 0..150u16 {
                        let mut body = vec![t];
                        body.extend_from_slice(&i.to_le_bytes());
                        body.resize(3 + usize::from(i % 90), t);
                        let lsn = log.append(&body).unwrap();
                        log.wait_durable(lsn).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let live = bodies(&log);
        assert_eq!(live.len(), 600);
        assert!(log.stats().synced_lsn.0 > log.stats().last_lsn.unwrap().0);
        live
    };
    let (log, report) = Log::open(dir.path(), cfg(Durability::Sync, 8192)).unwrap();
    assert_eq!(report.records, 600);
    assert_eq!(bodies(&log), expected, "files hold what the mapping showed");
}

/// A cleanly closed log ends with a seal whose `stable` proves every byte
/// before it durable, so reopening it syncs again only the segment holding
/// the seal, which no later frame vouches for (each sync walks the segment's
/// mapping).
#[test]
fn reopening_a_sealed_log_syncs_only_its_last_segment() {
    let sim = Arc::new(SimStorage::new());
    let records: Vec<Vec<u8>> = (0..300u32).map(|i| vec![i as u8; 40]).collect();
    {
        let (log, _) = sim_open(&sim, cfg(Durability::Sync, 4096)).unwrap();
        for r in &records {
            let lsn = log.append(r).unwrap();
            log.wait_durable(lsn).unwrap();
        }
    }
    let files = sim.durable_files();
    let again = Arc::new(SimStorage::from_files(files));
    let (log, report) = sim_open(&again, cfg(Durability::Sync, 4096)).unwrap();
    assert_eq!(again.syncs(), 1, "a sealed log is durable as it is");
    assert!(report.segments > 3, "{report:?}");
    assert_eq!(report.records, 300);
    assert_eq!(bodies(&log), records);
}

#[test]
fn sync_failure_poisons() {
    let sim = Arc::new(SimStorage::new());
    let (log, _) = sim_open(&sim, cfg(Durability::Sync, 4096)).unwrap();
    let a = log.append(b"one").unwrap();
    sim.crash_at_sync(1);
    let err = log.wait_durable(a).unwrap_err();
    assert!(matches!(err, LogError::Io { .. }), "{err}");
    let err = log.append(b"two").unwrap_err();
    assert!(matches!(err, LogError::Poisoned { .. }), "{err}");
    assert!(err.to_string().contains("close and reopen"), "{err}");
    assert!(matches!(
        log.wait_durable(a),
        Err(LogError::Poisoned { .. })
    ));
}

/// Writes `records` one at a time under Sync and returns the durable image plus each frame's (offset, len) in segment 0.
fn sync_image(records: &[Vec<u8>], seg: u64) -> (BTreeMap<String, Vec<u8>>, Vec<(u64, u64)>) {
    let sim = Arc::new(SimStorage::new());
    let mut frames = Vec::new();
    {
        let (log, _) = sim_open(&sim, cfg(Durability::Sync, seg)).unwrap();
        for r in records {
            let lsn = log.append(r).unwrap();
            log.wait_durable(lsn).unwrap();
            frames.push((lsn.0, frame_len(r.len() as u64)));
        }
    }
    (sim.durable_files(), frames)
}

fn open_image(
    files: BTreeMap<String, Vec<u8>>,
    mode: RecoveryMode,
) -> Result<(Vec<Vec<u8>>, RecoveryReport), LogError> {
    let sim = Arc::new(SimStorage::from_files(files));
    let (log, report) = sim_open(
        &sim,
        LogConfig {
            durability: Durability::Sync,
            segment_size: 16384,
            recovery: mode,
        },
    )?;
    Ok((bodies(&log), report))
}

#[test]
fn truncation_in_last_4k_keeps_longest_valid_prefix() {
    let records: Vec<Vec<u8>> = (0..120u32)
        .map(|i| vec![(i % 250) as u8 + 1; (i as usize * 7) % 90])
        .collect();
    let (files, frames) = sync_image(&records, 16384);
    let seg0 = segment_name(0);
    let end = frames.iter().map(|(l, n)| l + n).max().unwrap();
    assert!(
        frames.iter().all(|(l, n)| l + n <= 16384),
        "all in segment 0"
    );
    for cut in end.saturating_sub(4096)..=end {
        let mut f = files.clone();
        f.get_mut(&seg0).unwrap()[cut as usize..].fill(0);
        let (got, report) = open_image(f, RecoveryMode::StopAtTornTail)
            .unwrap_or_else(|e| panic!("cut {cut}: {e}"));
        // A frame survives iff zeroing from `cut` changed none of its bytes
        // (its padding, reserved header bytes, or high LSN bytes may already be zero).
        let img = &files[&seg0];
        let data_end = |i: usize| frames[i].0 + 32 + records[i].len() as u64;
        let changed = |i: usize| {
            cut < data_end(i)
                && img[cut.max(frames[i].0) as usize..data_end(i) as usize]
                    .iter()
                    .any(|&b| b != 0)
        };
        let keep = (0..frames.len()).position(changed).unwrap_or(frames.len());
        assert!(
            got == records[..keep],
            "cut at {cut}: kept {} records, want {keep}",
            got.len()
        );
        let torn = keep < frames.len()
            && cut > frames[keep].0
            && img[frames[keep].0 as usize..cut as usize]
                .iter()
                .any(|&b| b != 0);
        assert_eq!(report.torn_tail.is_some(), torn, "cut {cut}: {report:?}");
    }
}

/// The seal a closed log ends with: an empty pad frame.
const SEAL_LEN: u64 = FRAME_HEADER_LEN as u64;

#[test]
fn ten_thousand_bit_flips() {
    let seed = std::env::var("FIBFLOW_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x05ee_df11_u64);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let records: Vec<Vec<u8>> = (0..40u32)
        .map(|i| {
            (0..(i as usize * 13) % 100)
                .map(|j| (i as usize + j) as u8)
                .collect()
        })
        .collect();
    let (files, frames) = sync_image(&records, 8192);
    let seg0 = segment_name(0);
    let written: HashSet<Vec<u8>> = records.iter().cloned().collect();
    let end = frames.last().map(|(l, n)| l + n).unwrap();
    let (mut corrupt, mut torn, mut intact) = (0, 0, 0);
    for _ in 0..10_000 {
        let byte = rng.random_range(0..8192usize);
        let bit = rng.random_range(0..8u32);
        let mut f = files.clone();
        f.get_mut(&seg0).unwrap()[byte] ^= 1 << bit;
        let frame = frames
            .iter()
            .position(|(l, n)| (*l..l + n).contains(&(byte as u64)));
        let ctx = format!("seed {seed:#x} byte {byte} bit {bit} frame {frame:?}");
        match open_image(f, RecoveryMode::StopAtTornTail) {
            // The log was closed, so a seal follows the last record: a flip
            // in any record is corruption, one in the seal a torn tail.
            Err(LogError::Corrupt { .. }) => {
                assert!(
                    byte < 64 || frame.is_some(),
                    "{ctx}: only header or record flips are corruption"
                );
                corrupt += 1;
            }
            Err(e) => panic!("{ctx}: unexpected error {e}"),
            Ok((got, _)) => {
                assert!(
                    got.iter().all(|g| written.contains(g)),
                    "{ctx}: a corrupt record was accepted"
                );
                match frame {
                    Some(_) => panic!("{ctx}: a flip in a record was not detected"),
                    None if (end..end + SEAL_LEN).contains(&(byte as u64)) => {
                        assert_eq!(got, records, "{ctx}: a torn seal keeps every record");
                        torn += 1;
                    }
                    None => {
                        assert!(byte as u64 >= end, "{ctx}");
                        assert_eq!(got, records, "{ctx}: flip after the end keeps everything");
                        intact += 1;
                    }
                }
            }
        }
    }
    assert!(
        corrupt > 0 && torn > 0 && intact > 0,
        "{corrupt} {torn} {intact}"
    );
}

#[test]
fn skip_corrupt_pads_and_keeps_the_rest() {
    let records: Vec<Vec<u8>> = (0..10u8).map(|i| vec![i; 40]).collect();
    let (mut files, frames) = sync_image(&records, 8192);
    let (l, _) = frames[4];
    files.get_mut(&segment_name(0)).unwrap()[(l + 40) as usize] ^= 0xFF;
    let err = open_image(files.clone(), RecoveryMode::StopAtTornTail).unwrap_err();
    match &err {
        LogError::Corrupt {
            segment, offset, ..
        } => assert_eq!((segment.as_str(), *offset), (segment_name(0).as_str(), l)),
        other => panic!("{other}"),
    }
    let sim = Arc::new(SimStorage::from_files(files));
    let mode = LogConfig {
        recovery: RecoveryMode::SkipCorrupt,
        ..cfg(Durability::Sync, 16384)
    };
    let (log, report) = sim_open(&sim, mode.clone()).unwrap();
    assert_eq!(report.skipped.len(), 1, "{report:?}");
    let mut want = records.clone();
    want.remove(4);
    assert_eq!(bodies(&log), want);
    drop(log);
    // The repair was written: a strict reopen now succeeds.
    let (log, report) = sim_open(&sim, cfg(Durability::Sync, 16384)).unwrap();
    assert!(report.skipped.is_empty());
    assert_eq!(bodies(&log), want);
}

/// Power loss at the k-th sync with concurrent Sync appenders: every
/// acknowledged record survives and nothing unwritten appears.
#[test]
fn simulated_power_loss() {
    let rounds: u64 = std::env::var("FIBFLOW_POWER_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(24);
    for seed in 0..rounds {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let sim = Arc::new(SimStorage::new());
        let (log, _) = sim_open(&sim, cfg(Durability::Sync, 4096)).unwrap();
        let log = Arc::new(log);
        sim.crash_at_sync(rng.random_range(1..60));
        let threads: Vec<_> = (0..4u8)
            .map(|t| {
                let log = Arc::clone(&log);
                let len = rng.random_range(0..300usize);
                std::thread::spawn(move || {
                    let mut acked = Vec::new();
                    for i in 0..400u16 {
                        let mut body = vec![t];
                        body.extend_from_slice(&i.to_le_bytes());
                        body.resize(3 + (len + usize::from(i) * 31) % 300, t ^ 0x5A);
                        let Ok(lsn) = log.append(&body) else { break };
                        if log.wait_durable(lsn).is_err() {
                            break;
                        }
                        acked.push(body);
                    }
                    acked
                })
            })
            .collect();
        let acked: Vec<Vec<Vec<u8>>> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        drop(Arc::try_unwrap(log).expect("threads joined"));
        let after = Arc::new(sim.power_loss(seed).expect("log dropped"));
        let (log, report) = sim_open(&after, cfg(Durability::Sync, 4096))
            .unwrap_or_else(|e| panic!("seed {seed}: reopen failed: {e}"));
        let got = bodies(&log);
        for (t, acked) in acked.iter().enumerate() {
            let seen: Vec<&Vec<u8>> = got.iter().filter(|b| b[0] == t as u8).collect();
            assert!(
                seen.len() >= acked.len(),
                "seed {seed}: thread {t} acked {} but {} survived ({report:?})",
                acked.len(),
                seen.len()
            );
            for (i, b) in seen.iter().enumerate() {
                let mut want = vec![t as u8];
                want.extend_from_slice(&(i as u16).to_le_bytes());
                assert_eq!(
                    &b[..3],
                    &want[..],
                    "seed {seed}: thread {t} record {i} out of order or invented"
                );
                assert!(
                    b[3..].iter().all(|&x| x == t as u8 ^ 0x5A),
                    "seed {seed}: garbled body accepted"
                );
                if let Some(a) = acked.get(i) {
                    assert_eq!(*b, a, "seed {seed}");
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn append_reopen_replay_exact(records in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..600), 0..80), seg_pages in 1u64..4) {
        let sim = Arc::new(SimStorage::new());
        let seg = seg_pages * 4096;
        {
            let (log, _) = sim_open(&sim, cfg(Durability::Os, seg)).unwrap();
            for r in &records {
                log.append(r).unwrap();
            }
            log.flush().unwrap();
        }
        let after = Arc::new(sim.power_loss(7).unwrap());
        let (log, report) = sim_open(&after, cfg(Durability::Os, seg)).unwrap();
        prop_assert_eq!(report.records, records.len() as u64);
        prop_assert_eq!(bodies(&log), records);
    }
}

/// A disk that lost synced writes can leave the log ending below the
/// snapshot's LSN. Appends after that open must land above the snapshot: at
/// LSNs it covers, the next open would skip them as covered.
#[test]
fn a_log_cut_below_its_snapshot_appends_above_it() {
    let dir = tempfile::tempdir().unwrap();
    let config = || cfg(Durability::Sync, 1 << 20);
    let mut lsns = Vec::new();
    {
        let (log, _) = Log::open(dir.path(), config()).unwrap();
        for i in 0..100u32 {
            lsns.push(log.append(&i.to_le_bytes().repeat(8)).unwrap());
        }
        log.write_snapshot(lsns[99], b"state@99").unwrap();
    }
    // The lying disk: everything from record 50 on is gone (zeros).
    let seg = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "seg"))
        .unwrap();
    let mut bytes = std::fs::read(&seg).unwrap();
    let base = segment::SegmentHeader::decode(&bytes).unwrap().base_lsn;
    let cut = usize::try_from(lsns[50].0 - base).unwrap();
    bytes[cut..].fill(0);
    std::fs::write(&seg, &bytes).unwrap();
    let after = {
        let (log, report) = Log::open(dir.path(), config()).unwrap();
        assert_eq!(report.snapshot_lsn, Some(lsns[99]));
        assert_eq!(report.last_lsn, Some(lsns[49]), "{report:?}");
        assert!(collect(&log).is_empty(), "all of it is covered");
        let lsn = log.append(b"after the cut").unwrap();
        log.wait_durable(lsn).unwrap();
        assert!(lsn > lsns[99], "{lsn:?} reuses an LSN the snapshot covers");
        lsn
    };
    let (log, _) = Log::open(dir.path(), config()).unwrap();
    assert_eq!(collect(&log), vec![(after, b"after the cut".to_vec())]);
}
