//! Durability and restart edges, black box (SPEC §12-13,
//! docs/log-format.md). Crash images are taken by copying the directory of an
//! open manager (the lock is an `flock`, not copied): every acknowledged record
//! is in the page cache the copy reads, nothing is sealed, so the copy is what a
//! `kill -9` at that moment would leave.

mod common;

use common::{build_unlocked, eventually, Gate, PATIENCE};
use fibflow::log::frame::{decode_frame, FrameKind};
use fibflow::log::{LogError, RecoveryMode};
use fibflow::{
    AttemptOutcome, ChildSpec, Error, EventType, ManualClock, Outcome, Progress, SubmitOptions,
    TaskFilter, TaskId, TaskManager, TaskStatus, TimeZone,
};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

const T0: u64 = 1_704_067_200_000;
const SEC: Duration = Duration::from_secs(1);
const SEG: u64 = 64 << 10;

fn builder(dir: &Path, clock: &Arc<ManualClock>) -> fibflow::Builder {
    TaskManager::builder()
        .dir(dir)
        .segment_size(SEG)
        .clock(clock.clone())
        .time_zone(TimeZone::from_name("UTC").unwrap())
}

fn open(dir: &Path, clock: &Arc<ManualClock>) -> TaskManager {
    build_unlocked(builder(dir, clock)).unwrap()
}

fn shut(mgr: TaskManager) {
    mgr.stop(PATIENCE).unwrap();
    drop(mgr);
}

type State = Vec<(fibflow::Task, Vec<fibflow::Event>, Vec<fibflow::Attempt>)>;

fn state(mgr: &TaskManager) -> State {
    let mut v: State = mgr
        .list_tasks(&TaskFilter::all())
        .into_iter()
        .map(|t| {
            let id = t.id;
            (t, mgr.events(id).unwrap(), mgr.attempts(id).unwrap())
        })
        .collect();
    v.sort_by_key(|(t, _, _)| t.id);
    v
}

/// Copies every file of `src` into a fresh directory: a crash image. The
/// manager may be running: a file it removes between the listing and the copy
/// (a temp file renamed, a compacted segment) is left out, as a crash after
/// the removal would leave it.
fn crash_image(src: &Path) -> tempfile::TempDir {
    let dst = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let Ok(e) = e else { continue };
        if !e.file_type().is_ok_and(|t| t.is_file()) {
            continue;
        }
        match std::fs::copy(e.path(), dst.path().join(e.file_name())) {
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            r => {
                r.unwrap();
            }
        }
    }
    dst
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    v.sort();
    v
}

fn snapshots(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "snap"))
        .collect();
    v.sort();
    v
}

/// (offset, kind, frame_len) of every valid frame of a segment file, in order.
fn frames(path: &Path) -> Vec<(u64, FrameKind, u64)> {
    let bytes = std::fs::read(path).unwrap();
    let mut out = Vec::new();
    let mut off = 64u64;
    while (off as usize) + 32 <= bytes.len() {
        match decode_frame(&bytes[off as usize..]) {
            Ok(f) => {
                out.push((off, f.kind, f.frame_len));
                off += f.frame_len;
            }
            Err(_) => break,
        }
    }
    out
}

fn flip(path: &Path, at: u64) {
    let mut b = std::fs::read(path).unwrap();
    b[at as usize] ^= 0x5a;
    std::fs::write(path, b).unwrap();
}

fn is_typed_refusal(e: &Error) -> bool {
    matches!(
        e,
        Error::Log(
            LogError::Corrupt { .. } | LogError::ForeignSegment { .. } | LogError::Io { .. }
        ) | Error::Recovery(_)
    )
}

fn counter(mgr: &TaskManager, name: &str) -> Arc<AtomicUsize> {
    let n = Arc::new(AtomicUsize::new(0));
    let c = n.clone();
    mgr.register(name, move |ctx| {
        c.fetch_add(1, Ordering::SeqCst);
        Ok(json!({"ran": ctx.payload().clone(), "attempt": ctx.attempt()}).into())
    })
    .unwrap();
    n
}

/// A directory with a mix of finished tasks, closed cleanly (sealed).
fn populated(dir: &Path, clock: &Arc<ManualClock>) -> State {
    let mgr = open(dir, clock);
    counter(&mgr, "ok");
    mgr.register("bad", |_| Err("nope".into())).unwrap();
    mgr.start().unwrap();
    let mut ids = Vec::new();
    for i in 0..6 {
        ids.push(
            mgr.submit_with(
                "ok",
                json!({"i": i}),
                SubmitOptions::new().tag("t").dedup_key(format!("k{i}")),
            )
            .unwrap(),
        );
    }
    ids.push(
        mgr.submit_with("bad", json!(1), SubmitOptions::new().max_retries(1))
            .unwrap(),
    );
    for id in &ids {
        mgr.wait(*id, PATIENCE).unwrap();
    }
    let s = state(&mgr);
    shut(mgr);
    s
}

// ---------------------------------------------------------------------------
// Crash images: recovery of running tasks, attempts, events
// ---------------------------------------------------------------------------

#[test]
fn crash_image_recovers_a_running_task_with_rising_attempt_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let gate = Gate::new();
    let started = Arc::new(AtomicUsize::new(0));
    let mgr = open(dir.path(), &clock);
    {
        let gate = gate.clone();
        let started = started.clone();
        mgr.register("slow", move |ctx| {
            if ctx.retry_count() == 0 {
                return Err("first fails".into());
            }
            ctx.progress(Progress {
                stage_name: Some("s".into()),
                text: Some("half".into()),
                percent: Some(50),
                metadata: None,
            })
            .unwrap();
            started.fetch_add(1, Ordering::SeqCst);
            gate.wait();
            Ok(json!("done").into())
        })
        .unwrap();
    }
    counter(&mgr, "ok");
    mgr.start().unwrap();
    let done = mgr.submit("ok", json!(1)).unwrap();
    mgr.wait(done, PATIENCE).unwrap();
    let id = mgr
        .submit_with("slow", json!(1), SubmitOptions::new().max_retries(3))
        .unwrap();
    eventually("second attempt runs", || {
        started.load(Ordering::SeqCst) == 1
    });
    let before = mgr.get_task(id).unwrap();
    assert_eq!(before.status, TaskStatus::Running);
    assert_eq!(before.retry_count, 1);
    let done_before = state(&mgr)
        .into_iter()
        .find(|(t, _, _)| t.id == done)
        .unwrap();
    let image = crash_image(dir.path());
    gate.open();
    mgr.wait(id, PATIENCE).unwrap();
    shut(mgr);

    clock.advance(5 * SEC);
    let m2 = open(image.path(), &clock);
    assert_eq!(m2.recovery_stats().recovered, 1);
    let t = m2.get_task(id).unwrap();
    assert_eq!(t.status, TaskStatus::Pending, "{t:?}");
    assert_eq!(t.retry_count, 1, "recovery must not consume a retry");
    assert_eq!(t.progress_percent, Some(50));
    assert_eq!(t.last_event_type, Some(EventType::Recovered));
    let atts = m2.attempts(id).unwrap();
    assert_eq!(atts.len(), 2);
    assert_eq!(atts[0].number, 1);
    assert_eq!(atts[0].outcome, Some(AttemptOutcome::Failed));
    assert_eq!(atts[1].number, 2);
    assert_eq!(atts[1].outcome, Some(AttemptOutcome::Interrupted));
    assert!(atts[1].ended_at.is_some());
    assert!(
        atts[1].error.as_deref().unwrap_or("").contains("stop"),
        "{atts:?}"
    );
    // The finished task is exactly as before the crash.
    let done_after = state(&m2)
        .into_iter()
        .find(|(t, _, _)| t.id == done)
        .unwrap();
    assert_eq!(done_after, done_before);
    // Run it: attempt 3, a retry start (retry_count 1).
    let gate2 = Gate::new();
    gate2.open();
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    {
        let seen = seen.clone();
        m2.register("slow", move |ctx| {
            seen.lock()
                .unwrap()
                .push((ctx.attempt(), ctx.retry_count()));
            Ok(json!("done").into())
        })
        .unwrap();
    }
    counter(&m2, "ok");
    m2.start().unwrap();
    let t = m2.wait(id, PATIENCE).unwrap();
    assert_eq!(t.status, TaskStatus::Completed);
    assert_eq!(*seen.lock().unwrap(), vec![(3, 1)]);
    let atts = m2.attempts(id).unwrap();
    assert_eq!(
        atts.iter().map(|a| a.number).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    let recovered: Vec<_> = m2
        .events(id)
        .unwrap()
        .into_iter()
        .filter(|e| e.event_type == EventType::Recovered)
        .collect();
    assert_eq!(recovered.len(), 1);
    let live = state(&m2);
    shut(m2);
    let m3 = open(image.path(), &clock);
    assert_eq!(m3.recovery_stats().recovered, 0);
    assert_eq!(state(&m3), live, "stop + reopen changed what a user sees");
    shut(m3);
}

#[test]
fn crash_image_keeps_deletes_dedup_keys_and_counts() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let mgr = open(dir.path(), &clock);
    counter(&mgr, "ok");
    mgr.start().unwrap();
    let mut ids = Vec::new();
    for i in 0..8 {
        let tag = if i % 2 == 0 { "even" } else { "odd" };
        ids.push(
            mgr.submit_with(
                "ok",
                json!(i),
                SubmitOptions::new().tag(tag).dedup_key(format!("d{i}")),
            )
            .unwrap(),
        );
    }
    for id in &ids {
        mgr.wait(*id, PATIENCE).unwrap();
    }
    assert_eq!(mgr.delete_tasks(&TaskFilter::all().tag("odd")).unwrap(), 4);
    let pending = mgr
        .submit_with(
            "ok",
            json!("later"),
            SubmitOptions::new().delay(3600 * SEC).dedup_key("p"),
        )
        .unwrap();
    let s = state(&mgr);
    let counts = mgr.count_by_status();
    let tags = mgr.stats_by_tag(None);
    let image = crash_image(dir.path());
    mgr.compact().unwrap();
    let image_after_compaction = crash_image(dir.path());
    shut(mgr);
    for img in [image.path(), image_after_compaction.path(), dir.path()] {
        let m = open(img, &clock);
        assert_eq!(state(&m), s, "{img:?}");
        assert_eq!(m.count_by_status(), counts);
        assert_eq!(m.stats_by_tag(None), tags);
        for (i, id) in ids.iter().enumerate() {
            if i % 2 == 1 {
                assert!(m.get_task(*id).is_none());
                assert!(matches!(m.events(*id), Err(Error::NotFound(_))));
                assert!(matches!(m.attempts(*id), Err(Error::NotFound(_))));
            }
        }
        counter(&m, "ok");
        // Dedup: kept keys dedupe, deleted keys are free again (before start).
        let again = m
            .submit_with("ok", json!(0), SubmitOptions::new().dedup_key("d0"))
            .unwrap();
        assert_eq!(again, ids[0]);
        let p2 = m
            .submit_with("ok", json!(0), SubmitOptions::new().dedup_key("p"))
            .unwrap();
        assert_eq!(p2, pending);
        let fresh = m
            .submit_with("ok", json!(1), SubmitOptions::new().dedup_key("d1"))
            .unwrap();
        assert!(
            fresh > pending,
            "ids must keep increasing: {fresh} <= {pending}"
        );
        m.stop(PATIENCE).unwrap();
        drop(m);
    }
}

// ---------------------------------------------------------------------------
// Damaged logs
// ---------------------------------------------------------------------------

#[test]
fn a_flip_anywhere_in_a_sealed_log_is_refused_or_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let before = populated(dir.path(), &clock);
    let segs = segments(dir.path());
    // Segment 0 holds the log; a next one may be prepared (empty).
    assert!(segs.len() <= 2, "{segs:?}");
    assert!(segs.get(1).is_none_or(|s| frames(s).is_empty()));
    let fr = frames(&segs[0]);
    let end = fr.last().map(|(o, _, l)| o + l).unwrap();
    let mut offsets: Vec<u64> = (0..end + 64).step_by(13).collect();
    // Every byte of the last record frame and of the seal.
    let (lo, _, _) = fr[fr.len().saturating_sub(2)];
    offsets.extend(lo..end);
    let mut refused = 0;
    for at in offsets {
        let img = crash_image(dir.path());
        let seg = segments(img.path()).remove(0);
        flip(&seg, at);
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            builder(img.path(), &clock).build()
        }));
        let r = r.unwrap_or_else(|_| panic!("open panicked after a flip at {at}"));
        match r {
            Ok(m) => {
                assert_eq!(
                    state(&m),
                    before,
                    "a flip at offset {at} (frames end at {end}) opened with a different state"
                );
                drop(m);
            }
            Err(e) => {
                refused += 1;
                assert!(is_typed_refusal(&e), "flip at {at}: untyped refusal {e:?}");
            }
        }
    }
    assert!(refused > 0);
}

#[test]
fn damage_to_the_last_record_before_the_seal_is_corruption_not_a_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    populated(dir.path(), &clock);
    let seg = segments(dir.path()).remove(0);
    let fr = frames(&seg);
    let (last_kind, seal_kind) = (fr[fr.len() - 2].1, fr[fr.len() - 1].1);
    assert_eq!((last_kind, seal_kind), (FrameKind::Record, FrameKind::Pad));
    let (off, _, len) = fr[fr.len() - 2];
    flip(&seg, off + len - 9);
    let e = builder(dir.path(), &clock).build().unwrap_err();
    assert!(
        matches!(e, Error::Log(LogError::Corrupt { offset, .. }) if offset == off),
        "{e:?}"
    );
    let msg = e.to_string();
    assert!(msg.contains("SkipCorrupt"), "{msg}");
    // Opting in skips it and opens.
    let m = builder(dir.path(), &clock)
        .recovery_mode(RecoveryMode::SkipCorrupt)
        .build()
        .unwrap();
    assert_eq!(m.log_recovery_report().unwrap().skipped.len(), 1);
}

#[test]
fn skip_corrupt_over_a_task_submit_opens_without_panicking() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    populated(dir.path(), &clock);
    let seg = segments(dir.path()).remove(0);
    let fr = frames(&seg);
    // The first record is the first submit; later records of that task follow.
    let (off, kind, _) = fr[0];
    assert_eq!(kind, FrameKind::Record);
    flip(&seg, off + 40);
    let e = builder(dir.path(), &clock).build().unwrap_err();
    assert!(matches!(e, Error::Log(LogError::Corrupt { .. })), "{e:?}");
    let m = builder(dir.path(), &clock)
        .recovery_mode(RecoveryMode::SkipCorrupt)
        .build()
        .unwrap();
    // The rest is there: 6 of 7 tasks (the damaged submit's task is gone).
    assert_eq!(m.list_tasks(&TaskFilter::all()).len(), 6);
    counter(&m, "ok");
    m.start().unwrap();
    let id = m.submit("ok", json!("new")).unwrap();
    assert_eq!(m.wait(id, PATIENCE).unwrap().status, TaskStatus::Completed);
    shut(m);
    let m = open(dir.path(), &clock);
    assert_eq!(m.list_tasks(&TaskFilter::all()).len(), 7);
}

#[test]
fn garbage_after_the_tail_is_cut_as_a_torn_tail_and_nothing_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let before = populated(dir.path(), &clock);
    let seg = segments(dir.path()).remove(0);
    let fr = frames(&seg);
    let end = fr.last().map(|(o, _, l)| o + l).unwrap();
    let mut b = std::fs::read(&seg).unwrap();
    for (i, x) in b[end as usize..end as usize + 300].iter_mut().enumerate() {
        *x = (i as u8).wrapping_mul(37).wrapping_add(1);
    }
    std::fs::write(&seg, &b).unwrap();
    let m = builder(dir.path(), &clock).build().unwrap();
    assert_eq!(state(&m), before);
    let torn = m.log_recovery_report().unwrap().torn_tail.clone();
    assert!(torn.is_some(), "garbage not reported");
    counter(&m, "ok");
    m.start().unwrap();
    let id = m.submit("ok", json!("x")).unwrap();
    m.wait(id, PATIENCE).unwrap();
    let s = state(&m);
    shut(m);
    let m = open(dir.path(), &clock);
    assert_eq!(state(&m), s);
}

#[test]
fn a_crash_image_with_a_torn_last_frame_keeps_every_acknowledged_task() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let mgr = open(dir.path(), &clock);
    counter(&mgr, "ok");
    let ids: Vec<TaskId> = (0..5)
        .map(|i| mgr.submit("ok", json!(i)).unwrap())
        .collect();
    let before = state(&mgr);
    let image = crash_image(dir.path());
    shut(mgr);
    // Tear: append a half-written frame right after the last one.
    let seg = segments(image.path()).remove(0);
    let fr = frames(&seg);
    let end = fr.last().map(|(o, _, l)| o + l).unwrap();
    let (first_at, _, first_len) = fr[0];
    let mut bytes = std::fs::read(&seg).unwrap();
    let copy: Vec<u8> = bytes[first_at as usize..(first_at + first_len / 2) as usize].to_vec();
    bytes[end as usize..end as usize + copy.len()].copy_from_slice(&copy);
    std::fs::write(&seg, &bytes).unwrap();
    let m = builder(image.path(), &clock).build().unwrap();
    assert_eq!(state(&m), before);
    assert!(m.log_recovery_report().unwrap().torn_tail.is_some());
    for id in ids {
        assert_eq!(m.get_task(id).unwrap().status, TaskStatus::Pending);
    }
}

#[test]
fn truncated_or_extended_segment_files_are_refused_with_a_typed_error() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let before = populated(dir.path(), &clock);
    let seg = segments(dir.path()).remove(0);
    let len = std::fs::metadata(&seg).unwrap().len();
    let fr = frames(&seg);
    let end = fr.last().map(|(o, _, l)| o + l).unwrap();
    for cut in [
        0,
        1,
        10,
        63,
        64,
        100,
        end / 2,
        end,
        end + 1,
        len - 4096,
        len - 1,
        len + 1,
        len + 4096,
    ] {
        let img = crash_image(dir.path());
        let s = segments(img.path()).remove(0);
        let f = std::fs::OpenOptions::new().write(true).open(&s).unwrap();
        f.set_len(cut).unwrap();
        drop(f);
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            builder(img.path(), &clock).build()
        }))
        .unwrap_or_else(|_| panic!("open panicked on a segment cut to {cut}"));
        match r {
            Ok(m) => assert_eq!(state(&m), before, "cut to {cut}: opened with lost tasks"),
            Err(e) => assert!(is_typed_refusal(&e), "cut to {cut}: {e:?}"),
        }
    }
}

#[test]
fn multi_segment_logs_damaged_or_missing_segments_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let mgr = build_unlocked(builder(dir.path(), &clock).segment_size(8192)).unwrap();
    counter(&mgr, "ok");
    mgr.start().unwrap();
    let mut ids = Vec::new();
    for i in 0..60 {
        ids.push(
            mgr.submit("ok", json!({"i": i, "pad": "x".repeat(100)}))
                .unwrap(),
        );
    }
    for id in &ids {
        mgr.wait(*id, PATIENCE).unwrap();
    }
    let before = state(&mgr);
    shut(mgr);
    let segs = segments(dir.path());
    assert!(segs.len() >= 4, "{}", segs.len());
    let reopen = |p: &Path| {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            builder(p, &clock).segment_size(8192).build()
        }))
        .expect("open panicked")
    };
    // Intact.
    {
        let img = crash_image(dir.path());
        let m = reopen(img.path()).unwrap();
        assert_eq!(state(&m), before);
    }
    // A record flipped in each non-last segment: corruption.
    for k in 0..segs.len() - 1 {
        let img = crash_image(dir.path());
        let s = segments(img.path()).remove(k);
        let fr = frames(&s);
        let (o, _, _) = fr[fr.len() / 2];
        flip(&s, o + 33);
        let e = reopen(img.path()).unwrap_err();
        assert!(
            matches!(e, Error::Log(LogError::Corrupt { .. })),
            "segment {k}: {e:?}"
        );
    }
    // A middle segment removed.
    {
        let img = crash_image(dir.path());
        std::fs::remove_file(&segments(img.path())[1]).unwrap();
        let e = reopen(img.path()).unwrap_err();
        assert!(matches!(e, Error::Log(LogError::Corrupt { .. })), "{e:?}");
    }
    // The first segment's header damaged.
    {
        let img = crash_image(dir.path());
        flip(&segments(img.path())[0], 20);
        let e = reopen(img.path()).unwrap_err();
        assert!(
            matches!(
                e,
                Error::Log(LogError::Corrupt { .. } | LogError::ForeignSegment { .. })
            ),
            "{e:?}"
        );
    }
    // A segment of another log copied in.
    {
        let other = tempfile::tempdir().unwrap();
        let m = build_unlocked(builder(other.path(), &clock).segment_size(8192)).unwrap();
        counter(&m, "ok");
        for i in 0..60 {
            m.submit("ok", json!({"i": i, "pad": "y".repeat(100)}))
                .unwrap();
        }
        shut(m);
        let img = crash_image(dir.path());
        let theirs = segments(other.path());
        let mine = segments(img.path());
        std::fs::copy(&theirs[1], &mine[1]).unwrap();
        let e = reopen(img.path()).unwrap_err();
        assert!(
            matches!(e, Error::Log(LogError::ForeignSegment { .. })),
            "{e:?}"
        );
    }
}

#[test]
fn damaged_or_missing_snapshot_after_compaction_is_refused_not_read_as_empty() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let mgr = open(dir.path(), &clock);
    counter(&mgr, "ok");
    mgr.start().unwrap();
    let ids: Vec<TaskId> = (0..10)
        .map(|i| mgr.submit("ok", json!(i)).unwrap())
        .collect();
    for id in &ids {
        mgr.wait(*id, PATIENCE).unwrap();
    }
    mgr.compact().unwrap();
    let late = mgr.submit("ok", json!("late")).unwrap();
    mgr.wait(late, PATIENCE).unwrap();
    let before = state(&mgr);
    shut(mgr);
    let snaps = snapshots(dir.path());
    assert_eq!(snaps.len(), 1);
    {
        let img = crash_image(dir.path());
        let m = open(img.path(), &clock);
        assert_eq!(state(&m), before);
    }
    let len = std::fs::metadata(&snaps[0]).unwrap().len();
    for (what, f) in [
        (
            "flip header",
            Box::new(|p: &Path| flip(p, 30)) as Box<dyn Fn(&Path)>,
        ),
        ("flip body", Box::new(move |p: &Path| flip(p, len - 3))),
        (
            "truncate",
            Box::new(move |p: &Path| {
                let f = std::fs::OpenOptions::new().write(true).open(p).unwrap();
                f.set_len(len / 2).unwrap();
            }),
        ),
        (
            "empty",
            Box::new(|p: &Path| std::fs::write(p, b"").unwrap()),
        ),
        (
            "removed",
            Box::new(|p: &Path| std::fs::remove_file(p).unwrap()),
        ),
    ] {
        let img = crash_image(dir.path());
        f(&snapshots(img.path())
            .pop()
            .unwrap_or_else(|| img.path().join("x")));
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            builder(img.path(), &clock).build()
        }))
        .unwrap_or_else(|_| panic!("{what}: open panicked"));
        match r {
            Ok(m) => panic!(
                "{what}: opened with {} of {} tasks",
                m.list_tasks(&TaskFilter::all()).len(),
                before.len()
            ),
            Err(e) => assert!(is_typed_refusal(&e), "{what}: {e:?}"),
        }
    }
}

#[test]
fn leftover_temp_files_are_removed_and_the_log_opens() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let before = populated(dir.path(), &clock);
    std::fs::write(
        dir.path().join("snap-00000000000000099999.snap.tmp"),
        b"half a snapshot",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("00000000000000000001.seg.tmp"),
        vec![7u8; 100],
    )
    .unwrap();
    let m = open(dir.path(), &clock);
    assert_eq!(state(&m), before);
    let removed = &m.log_recovery_report().unwrap().removed;
    for name in [
        "snap-00000000000000099999.snap.tmp",
        "00000000000000000001.seg.tmp",
    ] {
        assert!(removed.iter().any(|r| r == name), "{removed:?}");
    }
    drop(m);
    assert!(!dir.path().join("00000000000000000001.seg.tmp").exists());
}

#[test]
fn a_path_that_is_not_a_log_directory_is_refused_without_panicking() {
    let clock = ManualClock::new(T0);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("plain-file");
    std::fs::write(&file, b"hello").unwrap();
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        builder(&file, &clock).build()
    }))
    .expect("panicked");
    let e = r.unwrap_err();
    assert!(matches!(e, Error::Log(_)), "{e:?}");
    // A segment name that is a directory.
    let d2 = tempfile::tempdir().unwrap();
    std::fs::create_dir(d2.path().join("00000000000000000000.seg")).unwrap();
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        builder(d2.path(), &clock).build()
    }))
    .expect("panicked");
    assert!(r.is_err(), "a directory named like a segment was accepted");
    // Empty segment file.
    let d3 = tempfile::tempdir().unwrap();
    std::fs::write(d3.path().join("00000000000000000000.seg"), b"").unwrap();
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        builder(d3.path(), &clock).build()
    }))
    .expect("panicked");
    if let Err(e) = r {
        assert!(is_typed_refusal(&e), "{e:?}");
    }
}

// ---------------------------------------------------------------------------
// Lock and lifecycle
// ---------------------------------------------------------------------------

#[test]
fn a_second_manager_is_refused_until_the_first_stops_even_before_it_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let a = open(dir.path(), &clock);
    counter(&a, "ok");
    let id = a.submit("ok", json!(1)).unwrap();
    let e = builder(dir.path(), &clock).build().unwrap_err();
    assert!(matches!(e, Error::Log(LogError::Locked { .. })), "{e:?}");
    assert!(e.to_string().contains("close it first"), "{e}");
    // The refused open changed nothing.
    assert_eq!(a.get_task(id).unwrap().status, TaskStatus::Pending);
    a.stop(PATIENCE).unwrap();
    // Stopped but not dropped: the log is closed, the directory free.
    let b = build_unlocked(builder(dir.path(), &clock)).unwrap();
    assert_eq!(b.get_task(id).unwrap().status, TaskStatus::Pending);
    // Calls on the stopped manager are refused and do not reach the directory.
    assert!(matches!(a.submit("ok", json!(2)), Err(Error::Stopped)));
    drop(a);
    counter(&b, "ok");
    b.start().unwrap();
    assert_eq!(b.wait(id, PATIENCE).unwrap().status, TaskStatus::Completed);
    assert_eq!(b.list_tasks(&TaskFilter::all()).len(), 1);
}

#[test]
fn a_handler_outliving_stop_cannot_write_into_the_next_managers_directory() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let gate = Gate::new();
    let started = Arc::new(AtomicUsize::new(0));
    let old = open(dir.path(), &clock);
    {
        let gate = gate.clone();
        let started = started.clone();
        old.register("stuck", move |ctx| {
            started.fetch_add(1, Ordering::SeqCst);
            gate.wait();
            let _ = ctx.progress(Progress {
                text: Some("late".into()),
                ..Progress::default()
            });
            Ok(json!("late result").into())
        })
        .unwrap();
    }
    old.start().unwrap();
    let id = old.submit("stuck", json!(1)).unwrap();
    eventually("handler runs", || started.load(Ordering::SeqCst) == 1);
    let report = old.stop(Duration::from_millis(50)).unwrap();
    assert_eq!(report.interrupted, vec![id]);
    let new = build_unlocked(builder(dir.path(), &clock)).unwrap();
    let t = new.get_task(id).unwrap();
    assert_eq!(t.status, TaskStatus::Pending);
    assert_eq!(
        new.recovery_stats().recovered,
        0,
        "stop already recorded it"
    );
    let seen = state(&new);
    gate.open();
    drop(old);
    assert_eq!(state(&new), seen);
    let ran = Arc::new(AtomicUsize::new(0));
    {
        let ran = ran.clone();
        new.register("stuck", move |ctx| {
            ran.fetch_add(1, Ordering::SeqCst);
            Ok(json!({"attempt": ctx.attempt()}).into())
        })
        .unwrap();
    }
    new.start().unwrap();
    let t = new.wait(id, PATIENCE).unwrap();
    assert_eq!(t.result, Some(json!({"attempt": 2})));
    assert_eq!(
        t.progress_text, None,
        "the late progress of the old attempt was written"
    );
    let live = state(&new);
    shut(new);
    let again = open(dir.path(), &clock);
    assert_eq!(state(&again), live);
}

#[test]
fn queries_controls_and_submit_before_start_on_a_reopened_directory() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let (keyed, paused, delayed, plain) = {
        let mgr = open(dir.path(), &clock);
        counter(&mgr, "ok");
        let keyed = mgr
            .submit_with("ok", json!("a"), SubmitOptions::new().dedup_key("ka"))
            .unwrap();
        let paused = mgr.submit("ok", json!("b")).unwrap();
        let delayed = mgr
            .submit_with("ok", json!("c"), SubmitOptions::new().delay(60 * SEC))
            .unwrap();
        let plain = mgr.submit("ok", json!("d")).unwrap();
        shut(mgr);
        (keyed, paused, delayed, plain)
    };
    let mgr = open(dir.path(), &clock);
    // Before registering or starting.
    assert_eq!(
        mgr.list_tasks(&TaskFilter::all().status(TaskStatus::Pending))
            .len(),
        4
    );
    assert!(matches!(
        mgr.submit("ok", json!(1)),
        Err(Error::NoHandler(_))
    ));
    let runs = counter(&mgr, "ok");
    assert_eq!(
        mgr.submit_with("ok", json!("a2"), SubmitOptions::new().dedup_key("ka"))
            .unwrap(),
        keyed
    );
    mgr.pause_task(paused).unwrap();
    assert_eq!(mgr.get_task(paused).unwrap().status, TaskStatus::Paused);
    assert_eq!(
        mgr.delete_tasks(&TaskFilter::all().status(TaskStatus::Paused))
            .unwrap(),
        1
    );
    let later = mgr
        .submit_with("ok", json!("e"), SubmitOptions::new())
        .unwrap();
    assert!(matches!(
        mgr.wait(plain, Duration::from_millis(20)),
        Err(Error::WaitTimeout { .. })
    ));
    assert_eq!(runs.load(Ordering::SeqCst), 0, "ran before start");
    shut(mgr);
    let mgr = open(dir.path(), &clock);
    let runs = counter(&mgr, "ok");
    assert!(mgr.get_task(paused).is_none());
    mgr.start().unwrap();
    for id in [keyed, plain, later] {
        assert_eq!(
            mgr.wait(id, PATIENCE).unwrap().status,
            TaskStatus::Completed
        );
    }
    assert_eq!(mgr.get_task(delayed).unwrap().status, TaskStatus::Pending);
    clock.advance(60 * SEC);
    assert_eq!(
        mgr.wait(delayed, PATIENCE).unwrap().status,
        TaskStatus::Completed
    );
    assert_eq!(runs.load(Ordering::SeqCst), 4);
}

#[test]
fn suspended_parent_with_context_progress_and_children_crash_image_then_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let gate = Gate::new();
    let mgr = open(dir.path(), &clock);
    let reg = |m: &TaskManager, gate: Arc<Gate>| {
        m.register("parent", |ctx| {
            if ctx.stage() == 0 {
                ctx.audit("spawning", None, Some(json!({"n": 2}))).unwrap();
                Ok(Outcome::Spawn {
                    children: vec![
                        ChildSpec::new("child", json!(1)),
                        ChildSpec::new("child", json!(2)),
                    ],
                    context: Some(b"ctx-1".to_vec()),
                })
            } else {
                Ok(json!({"seen": ctx.result().cloned(), "ctx": ctx.context().map(|c| c.to_vec())}).into())
            }
        })
        .unwrap();
        m.register("child", move |ctx| {
            if ctx.payload() == &json!(2) {
                gate.wait();
            }
            Ok(json!({"c": ctx.payload().clone()}).into())
        })
        .unwrap();
    };
    reg(&mgr, gate.clone());
    mgr.start().unwrap();
    let p = mgr.submit("parent", json!(null)).unwrap();
    // One child done and delivered, the other running (held at the gate),
    // so the image has exactly one attempt to recover.
    eventually("one child completes and the other runs", || {
        let kids = common::children_of(&mgr, p);
        let with = |s| kids.iter().filter(|c| c.status == s).count();
        with(TaskStatus::Completed) == 1
            && with(TaskStatus::Running) == 1
            && mgr.get_task(p).unwrap().completed_children == 1
    });
    let image = crash_image(dir.path());
    gate.open();
    let full = mgr.wait(p, PATIENCE).unwrap();
    shut(mgr);
    let m = open(image.path(), &clock);
    assert_eq!(m.recovery_stats().recovered, 1);
    let t = m.get_task(p).unwrap();
    assert_eq!(t.status, TaskStatus::Suspended);
    assert_eq!(t.context.as_deref(), Some(&b"ctx-1"[..]));
    assert_eq!(t.completed_children, 1);
    let g = Gate::new();
    g.open();
    reg(&m, g);
    m.start().unwrap();
    let done = m.wait(p, PATIENCE).unwrap();
    assert_eq!(done.status, TaskStatus::Completed);
    assert_eq!(done.result, full.result);
    // Attempts of the parent: 1 suspended, 2 completed.
    let atts = m.attempts(p).unwrap();
    assert_eq!(
        atts.iter()
            .map(|a| (a.number, a.outcome))
            .collect::<Vec<_>>(),
        vec![
            (1, Some(AttemptOutcome::Suspended)),
            (2, Some(AttemptOutcome::Completed))
        ]
    );
    let live = state(&m);
    shut(m);
    let m = open(image.path(), &clock);
    assert_eq!(state(&m), live);
}

#[test]
fn quarantine_after_more_than_the_configured_interruptions_via_crash_images() {
    // Chain crash images: each open recovers the running task, start runs it
    // again, the next image is taken while it runs.
    let clock = ManualClock::new(T0);
    let first = tempfile::tempdir().unwrap();
    let mut current = first;
    let started = Arc::new(AtomicUsize::new(0));
    let gate = Gate::new();
    let reg = |m: &TaskManager| {
        let started = started.clone();
        let gate = gate.clone();
        m.register("loop", move |_| {
            started.fetch_add(1, Ordering::SeqCst);
            gate.wait();
            Ok(json!("never").into())
        })
        .unwrap();
    };
    let id;
    {
        let m = open(current.path(), &clock);
        reg(&m);
        m.start().unwrap();
        id = m.submit("loop", json!(1)).unwrap();
        eventually("runs", || started.load(Ordering::SeqCst) == 1);
        let img = crash_image(current.path());
        m.stop(Duration::from_millis(1)).unwrap();
        drop(m);
        current = img;
    }
    let mut olds = Vec::new();
    for round in 1..=4u32 {
        let m = open(current.path(), &clock);
        let t = m.get_task(id).unwrap();
        let atts = m.attempts(id).unwrap();
        assert_eq!(atts.len() as u32, round);
        assert!(atts
            .iter()
            .all(|a| a.outcome == Some(AttemptOutcome::Interrupted)));
        assert_eq!(
            atts.iter().map(|a| a.number).collect::<Vec<_>>(),
            (1..=round).collect::<Vec<_>>()
        );
        if round <= 3 {
            assert_eq!(t.status, TaskStatus::Pending, "round {round}: {t:?}");
            assert_eq!(t.retry_count, 0);
            reg(&m);
            let n = started.load(Ordering::SeqCst);
            m.start().unwrap();
            eventually("runs again", || started.load(Ordering::SeqCst) == n + 1);
            let img = crash_image(current.path());
            m.stop(Duration::from_millis(1)).unwrap();
            drop(m);
            olds.push(std::mem::replace(&mut current, img));
        } else {
            assert_eq!(
                t.status,
                TaskStatus::PermanentlyFailed,
                "round {round}: {t:?}"
            );
            let err = t.error.clone().unwrap_or_default();
            assert!(
                err.contains("quarantined") && err.contains("in a row"),
                "{err}"
            );
            assert_eq!(m.recovery_stats().quarantined, 1);
        }
    }
    gate.open();
}

// ---------------------------------------------------------------------------
// Power loss after an automatic snapshot
// ---------------------------------------------------------------------------

/// The segment holding LSN `lsn` in `dir`, with its base LSN.
fn segment_of(dir: &Path, lsn: u64) -> (PathBuf, u64) {
    for s in segments(dir) {
        let b = std::fs::read(&s).unwrap();
        let h = fibflow::log::segment::SegmentHeader::decode(&b).unwrap();
        if h.base_lsn <= lsn && lsn < h.base_lsn + h.segment_len {
            return (s, h.base_lsn);
        }
    }
    panic!("no segment holds LSN {lsn}");
}

/// docs/log-format.md: power loss drops any unsynced pages ("the synced prefix
/// is intact", torn tail). An automatic snapshot covers workers' claims and
/// completions, which nobody waited to sync. The log must be synced through the
/// snapshot's LSN before the snapshot is written: cut below it by a power loss,
/// the next open would append at LSNs the snapshot claims, and the open after
/// that would skip them as covered (session 15 found acknowledged `Sync`
/// submissions lost that way). After the power loss, records acknowledged
/// after the first reopen survive the second (DESIGN: `Sync` = acknowledged
/// means on disk; SPEC §12: nothing acknowledged is lost).
#[test]
fn acknowledged_records_after_a_power_loss_below_the_snapshot_lsn_survive_the_next_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let mgr = build_unlocked(builder(dir.path(), &clock).compact_after_bytes(1)).unwrap();
    let gate = Gate::new();
    {
        let gate = gate.clone();
        mgr.register("ok", move |_| {
            gate.wait();
            Ok(json!("x").into())
        })
        .unwrap();
    }
    mgr.start().unwrap();
    let ids: Vec<TaskId> = (0..5)
        .map(|i| mgr.submit("ok", json!(i)).unwrap())
        .collect();
    // Completions come after the last acknowledged (synced) submission.
    gate.open();
    // No `wait` (it would sync): the claims and completions stay unsynced.
    eventually("all complete", || {
        ids.iter()
            .all(|id| mgr.get_task(*id).unwrap().status == TaskStatus::Completed)
    });
    let last = mgr.log_stats().unwrap().last_lsn.unwrap().0;
    clock.advance(Duration::from_millis(1)); // a timer round: automatic compaction
    eventually("an automatic snapshot covers every record", || {
        mgr.log_stats()
            .unwrap()
            .snapshot_lsn
            .is_some_and(|l| l.0 >= last)
    });
    let st = mgr.log_stats().unwrap();
    let (synced, snap) = (st.synced_lsn.0, st.snapshot_lsn.unwrap().0);
    assert!(
        synced > snap,
        "the snapshot (LSN {snap}) covers records the log has not synced (synced below {synced})"
    );
    let image = crash_image(dir.path());
    mgr.stop(PATIENCE).unwrap();
    drop(mgr);
    // Power loss: pages after the synced watermark are dropped (zeros).
    let (seg, base) = segment_of(image.path(), synced);
    let mut b = std::fs::read(&seg).unwrap();
    b[(synced - base) as usize..].fill(0);
    std::fs::write(&seg, &b).unwrap();
    for s in segments(image.path()) {
        if s > seg {
            std::fs::remove_file(s).unwrap();
        }
    }

    let m = open(image.path(), &clock);
    assert!(m.recovery_stats().snapshot_tasks >= 5);
    for id in &ids {
        assert_eq!(m.get_task(*id).unwrap().status, TaskStatus::Completed);
    }
    counter(&m, "ok");
    m.start().unwrap();
    let x = m.submit("ok", json!("after the power loss")).unwrap();
    let y = m
        .submit_with("ok", json!("dedup"), SubmitOptions::new().dedup_key("y"))
        .unwrap();
    m.wait(x, PATIENCE).unwrap();
    m.wait(y, PATIENCE).unwrap();
    let live = state(&m);
    shut(m);

    let m = open(image.path(), &clock);
    assert!(
        m.get_task(x).is_some() && m.get_task(y).is_some(),
        "tasks acknowledged (Sync) after the first reopen are gone after the second: \
         their records lie at LSNs the older snapshot claims to cover"
    );
    assert_eq!(state(&m), live);
}

/// The same power loss without a snapshot: every acknowledged submission and
/// control call survives, and records after the cut are gone as a torn tail.
#[test]
fn a_power_loss_after_the_synced_watermark_keeps_every_acknowledged_call() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let gate = Gate::new();
    let mgr = open(dir.path(), &clock);
    {
        let gate = gate.clone();
        mgr.register("ok", move |_| {
            gate.wait();
            Ok(json!("x").into())
        })
        .unwrap();
    }
    mgr.start().unwrap();
    let ids: Vec<TaskId> = (0..6)
        .map(|i| {
            mgr.submit_with(
                "ok",
                json!(i),
                SubmitOptions::new().dedup_key(format!("k{i}")),
            )
            .unwrap()
        })
        .collect();
    let paused = mgr
        .submit_with("ok", json!("p"), SubmitOptions::new().delay(3600 * SEC))
        .unwrap();
    mgr.pause_task(paused).unwrap();
    let synced = mgr.log_stats().unwrap().synced_lsn.0;
    let image = crash_image(dir.path());
    gate.open();
    shut(mgr);
    let (seg, base) = segment_of(image.path(), synced);
    let mut b = std::fs::read(&seg).unwrap();
    b[(synced - base) as usize..].fill(0);
    std::fs::write(&seg, &b).unwrap();
    let m = open(image.path(), &clock);
    for (i, id) in ids.iter().enumerate() {
        let t = m
            .get_task(*id)
            .unwrap_or_else(|| panic!("acknowledged task {i} lost"));
        assert_eq!(t.status, TaskStatus::Pending, "{t:?}");
        assert_eq!(t.dedup_key.as_deref(), Some(format!("k{i}").as_str()));
    }
    assert_eq!(m.get_task(paused).unwrap().status, TaskStatus::Paused);
}
