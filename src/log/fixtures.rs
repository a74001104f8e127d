//! Format fixtures (`tests/fixtures/log-v1/`) and fuzz-corpus replay.
//!
//! `FIBFLOW_REGEN_FIXTURES=1 cargo test log::fixtures` rewrites the fixture
//! files and seeds the fuzz corpus; normal runs only read them, so every later
//! format version must keep reading these v1 files.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::type_complexity,
    clippy::case_sensitive_file_extension_comparisons
)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::*;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn fixture_dir(case: &str) -> PathBuf {
    root().join("tests/fixtures/log-v1").join(case)
}

fn record(i: u32) -> Vec<u8> {
    format!("record-{i:03}-{}", "x".repeat((i as usize * 11) % 40)).into_bytes()
}

fn read_dir_files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_name() != "README.md")
        .map(|e| {
            (
                e.file_name().into_string().unwrap(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect()
}

fn open_files(
    files: BTreeMap<String, Vec<u8>>,
    recovery: RecoveryMode,
) -> Result<(Vec<(Lsn, Vec<u8>)>, Option<(Lsn, Vec<u8>)>), LogError> {
    let sim = Arc::new(SimStorage::from_files(files));
    let (log, _) = Log::open_with_storage(
        sim,
        LogConfig {
            durability: Durability::Sync,
            segment_size: 4096,
            recovery,
        },
    )?;
    let mut out = Vec::new();
    log.replay(|l, b| {
        out.push((l, b.to_vec()));
        Ok::<(), ()>(())
    })
    .unwrap();
    Ok((out, log.snapshot()))
}

/// Builds the `basic` case: 80 records in 4 KiB segments, a snapshot at record 9.
fn build_basic() -> (BTreeMap<String, Vec<u8>>, Vec<Lsn>) {
    let sim = Arc::new(SimStorage::new());
    let mut lsns = Vec::new();
    {
        let (log, _) = Log::open_with_storage(
            sim.clone(),
            LogConfig {
                durability: Durability::Sync,
                segment_size: 4096,
                recovery: RecoveryMode::StopAtTornTail,
            },
        )
        .unwrap();
        for i in 0..80 {
            let l = log.append(&record(i)).unwrap();
            log.wait_durable(l).unwrap();
            lsns.push(l);
        }
        log.write_snapshot(lsns[9], b"snapshot through record 9")
            .unwrap();
    }
    (sim.durable_files(), lsns)
}

#[test]
fn regenerate_when_asked() {
    if std::env::var_os("FIBFLOW_REGEN_FIXTURES").is_none() {
        return;
    }
    let (files, lsns) = build_basic();
    for (case, damage) in [("basic", false), ("corrupt-middle", true)] {
        let dir = fixture_dir(case);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        for (name, mut bytes) in files.clone() {
            // Keep only segments that hold records, so the fixture stays small.
            if name.ends_with(".seg") && bytes.iter().skip(64).all(|&b| b == 0) {
                continue;
            }
            if damage && name == segment::segment_name(1) {
                // Flip one body byte of the first record in segment 1 (acknowledged, followed by more).
                let off = (lsns.iter().find(|l| l.0 >= 4096 && l.0 < 8192).unwrap().0 - 4096 + 40)
                    as usize;
                bytes[off] ^= 0x40;
            }
            std::fs::write(dir.join(&name), bytes).unwrap();
        }
    }
    // Seed the fuzz corpora.
    let corpus = root().join("fuzz/corpus");
    for t in ["frame_decode", "recovery_scan"] {
        std::fs::create_dir_all(corpus.join(t)).unwrap();
    }
    let seg0 = files[&segment::segment_name(0)].clone();
    std::fs::write(corpus.join("recovery_scan/segment0"), &seg0).unwrap();
    let mut torn = seg0.clone();
    torn.truncate(1500);
    std::fs::write(corpus.join("recovery_scan/torn"), &torn).unwrap();
    let mut flipped = seg0.clone();
    flipped[300] ^= 1;
    std::fs::write(corpus.join("recovery_scan/flipped"), &flipped).unwrap();
    std::fs::write(corpus.join("recovery_scan/empty"), [0u8; 128]).unwrap();
    for (i, l) in lsns.iter().take(4).enumerate() {
        let start = l.0 as usize;
        std::fs::write(
            corpus.join(format!("frame_decode/frame{i}")),
            &seg0[start..start + 96],
        )
        .unwrap();
    }
    std::fs::write(corpus.join("frame_decode/pad"), frame::pad_header(64, 0, 8)).unwrap();
    std::fs::write(corpus.join("frame_decode/zero"), [0u8; 32]).unwrap();
}

#[test]
fn v1_fixtures_still_read() {
    let (records, snap) = open_files(
        read_dir_files(&fixture_dir("basic")),
        RecoveryMode::StopAtTornTail,
    )
    .unwrap();
    let (snap_lsn, snap_bytes) = snap.unwrap();
    assert_eq!(snap_bytes, b"snapshot through record 9");
    assert_eq!(
        records.iter().map(|(_, b)| b.clone()).collect::<Vec<_>>(),
        (10..80).map(record).collect::<Vec<_>>()
    );
    assert!(records.iter().all(|(l, _)| *l > snap_lsn));

    let corrupt = read_dir_files(&fixture_dir("corrupt-middle"));
    match open_files(corrupt.clone(), RecoveryMode::StopAtTornTail) {
        Err(LogError::Corrupt {
            segment, offset, ..
        }) => {
            assert_eq!(segment, segment::segment_name(1));
            assert!(offset >= 64, "{offset}");
        }
        other => panic!("expected corruption, got {:?}", other.map(|r| r.0.len())),
    }
    let (kept, _) = open_files(corrupt, RecoveryMode::SkipCorrupt).unwrap();
    assert_eq!(kept.len(), 69, "one damaged record skipped");
}

fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = root().join("fuzz/corpus").join(target);
    let mut out: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .map(|e| {
            (
                e.file_name().into_string().unwrap(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    out.sort();
    out
}

#[test]
fn fuzz_corpus_replays() {
    let frames = corpus("frame_decode");
    let scans = corpus("recovery_scan");
    assert!(!frames.is_empty() && !scans.is_empty());
    for (name, data) in &frames {
        let r = std::panic::catch_unwind(|| recovery::check_frame_decode(data));
        assert!(r.is_ok(), "frame_decode corpus file {name}");
    }
    for (name, data) in &scans {
        let r = std::panic::catch_unwind(|| recovery::check_recovery_scan(data));
        assert!(r.is_ok(), "recovery_scan corpus file {name}");
    }
}
