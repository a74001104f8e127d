//! Segmented, memory-mapped write-ahead log over opaque byte records.
//!
//! The log knows nothing of tasks: it stores frames holding byte records,
//! assigns each an [`Lsn`] (its logical byte position), makes them durable
//! according to [`Durability`], and replays them after a restart.
//!
//! # On-disk format (v1; full tables and crash cases in `docs/log-format.md`)
//!
//! A directory holds `LOCK`, segment files `<id:020>.seg` of fixed,
//! preallocated size, and at most one valid snapshot `snap-<lsn:020>.snap`.
//!
//! Segment header (64 bytes, little-endian): magic `FIBFLOWL` (8) | format
//! version u32 | header length u32 (64) | log id u64 | segment id u64 | base
//! LSN u64 | segment length u64 | reserved (12) | CRC-32C of bytes 0..60 (4).
//!
//! Frame (8-byte aligned, from offset 64): body length u32 | CRC-32C u32 (of
//! bytes 0..4, 8..32, body, zero padding) | LSN u64 (= base LSN + file offset)
//! | stable u64 (synced watermark when written) | kind u8 (1 record, 2 pad) |
//! version u8 (1) | reserved (6) | body | zero padding to 8.
//!
//! A 32-byte zero header is the end of the log. A pad frame fills the rest of
//! a segment when a record does not fit; a remainder shorter than a header is
//! left zero and skipped.
//!
//! # Invariants
//!
//! - I1: segments are contiguous: `segs[i + 1].base == segs[i].end()`, and
//!   the last one is the active segment. LSNs increase with position.
//! - I2: a record is acknowledged by [`Log::wait_durable`] only when it and
//!   every byte before it are complete (and, for `Sync`, synced).
//! - I3: bytes at or after the active segment's tail are zero (fresh
//!   segments are zero-filled and recovery zeroes a torn tail).
//! - I4: a sync error poisons the log; no sync is ever retried.
//!
//! Replaying the log reproduces exactly the records up to the last durable
//! one: recovery keeps the longest valid prefix and cuts only frames that were
//! never acknowledged (see `recovery.rs`).
#![deny(clippy::indexing_slicing)]

pub mod commit;
mod completion;
pub mod frame;
mod lock;
pub mod mmap;
pub mod recovery;
pub mod segment;
pub mod snapshot;
pub mod storage;

#[cfg(test)]
mod fixtures;
#[cfg(test)]
mod tests;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use arc_swap::ArcSwap;
use parking_lot::{Condvar, Mutex, RwLock};
use thiserror::Error;

use commit::{GroupCommit, Notify, PoisonOnPanic};
use frame::{
    decode_header, frame_len, pad_header, record_header, verify_frame, FrameError, FrameKind,
    FRAME_HEADER_LEN, MAX_RECORD_LEN,
};
use lock::DirLock;
use mmap::Reserve;
use recovery::{Repair, SegView};
use segment::{parse_segment_name, segment_name, Segment, SegmentHeader, SEGMENT_HEADER_LEN};
use snapshot::{decode_snapshot, encode_snapshot, parse_snapshot_name, snapshot_name};
pub use storage::{MmapStorage, SimStorage, Storage};

/// Log sequence number: the logical byte position of a record's frame.
/// Strictly increasing in append order; not dense.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// When an append counts as acknowledged (see the table in `docs/log-format.md`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Durability {
    /// No log at all (decided by the runtime; [`Log`] treats it like `Os`).
    Memory,
    /// In the page cache: survives a process crash, not a power loss.
    Os,
    /// Like `Os` at acknowledgement; a background flusher syncs every `interval`,
    /// so a power loss loses at most about one interval.
    Batched {
        /// Time between background syncs.
        interval: Duration,
    },
    /// On disk before `wait_durable` returns; concurrent waiters share one sync.
    Sync,
}

/// What recovery does with a damaged frame that was once durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum RecoveryMode {
    /// Cut a torn tail; refuse to open on corruption in the middle.
    #[default]
    StopAtTornTail,
    /// Cut a torn tail; pad over corrupt regions in the middle and keep what follows.
    SkipCorrupt,
}

/// Log configuration.
#[derive(Clone, Debug)]
pub struct LogConfig {
    /// Acknowledgement level of [`Log::wait_durable`].
    pub durability: Durability,
    /// Size of each segment file in bytes (multiple of 4096, at least 4096).
    pub segment_size: u64,
    /// Handling of corruption found at open.
    pub recovery: RecoveryMode,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            durability: Durability::Sync,
            segment_size: 16 << 20,
            recovery: RecoveryMode::StopAtTornTail,
        }
    }
}

/// Errors of the log layer.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum LogError {
    /// An I/O operation failed.
    #[error("log I/O error while {context}: {source}")]
    Io {
        /// What the log was doing.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Another `Log` (this process or another) has the directory open (the
    /// lock was still held after a quarter of a second).
    #[error("log directory {} is locked by another open Log (in this or another process); close it first", dir.display())]
    Locked {
        /// The directory.
        dir: PathBuf,
    },
    /// A previous sync failed; nothing more can be made durable.
    #[error("the log is poisoned because an earlier flush failed ({reason}); close and reopen the log to recover from disk")]
    Poisoned {
        /// The first failure.
        reason: String,
    },
    /// A record exceeds the maximum size.
    #[error(
        "record of {len} bytes exceeds the maximum of {max} bytes; split it or raise segment_size"
    )]
    RecordTooLarge {
        /// The record's length.
        len: usize,
        /// The maximum for this configuration.
        max: usize,
    },
    /// Acknowledged data is damaged in the middle of the log.
    #[error("log corrupt in segment {segment} at offset {offset}{}: {reason}; {}", lsn_note(.offset, .lsn), corrupt_advice(.offset))]
    Corrupt {
        /// Segment file name.
        segment: String,
        /// Byte offset in the file.
        offset: u64,
        /// LSN of that offset.
        lsn: u64,
        /// What is wrong.
        reason: String,
    },
    /// A segment belongs to a different log.
    #[error("segment {segment} belongs to another log (id {found:#x}, expected {expected:#x}); remove files that were copied in from elsewhere")]
    ForeignSegment {
        /// Segment file name.
        segment: String,
        /// This log's id.
        expected: u64,
        /// The segment's id.
        found: u64,
    },
    /// The configuration is invalid.
    #[error("invalid log configuration: {0}")]
    InvalidConfig(String),
    /// An LSN that was never returned by `append`.
    #[error("LSN {lsn} was never appended (next LSN is {next})")]
    UnknownLsn {
        /// The LSN asked for.
        lsn: u64,
        /// The next LSN the log will hand out.
        next: u64,
    },
}

/// Error of [`Log::replay`]: the callback's own error, or a log error.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ReplayError<E> {
    /// The callback returned an error; replay stopped.
    #[error("replay callback failed: {0}")]
    Handler(E),
    /// The log failed while replaying.
    #[error(transparent)]
    Log(#[from] LogError),
}

/// The records of a log after its snapshot, as of [`Log::replay_view`]. The
/// segments are held, so the slices it hands out live as long as it does.
pub struct Replay {
    /// Each segment with the end of its completed bytes when the view was taken.
    segs: Vec<(Arc<Segment>, u64)>,
    /// The snapshot's LSN: records at or below it are skipped.
    after: Option<u64>,
    /// Frames starting below this LSN were verified by the scan at open
    /// (see [`walk_frames`]).
    checked_below: u64,
}

impl Replay {
    /// Walks every frame in LSN order and calls `f` for each record after the
    /// snapshot that `pick` selects, with a slice borrowed from the mapping.
    ///
    /// A frame below the end of what the open's scan verified (header,
    /// position, checksum: every frame of the prefix it kept) is only stepped
    /// over by its kind and length. Past it, every frame's header is checked
    /// (position, kind, version, length) and pad frames are verified, but a
    /// record frame's checksum is verified only if `pick` selects it (records
    /// at or below the snapshot included), before `f` sees it. So threads that split the
    /// records between them with disjoint `pick`s verify each frame once, and
    /// none of them hands out a frame that fails its checksum. `pick` sees the
    /// body *before* its checksum is checked: use it only to route.
    ///
    /// Stops at the first invalid frame ([`LogError::Corrupt`], naming segment
    /// and offset) or the first error `f` returns. Since every walker checks
    /// every header and the frames it picks, the invalid frame with the lowest
    /// LSN that any of a set of walkers reports is the one a single walker
    /// picking everything would report.
    pub fn for_each<'a, E>(
        &'a self,
        pick: impl FnMut(&[u8]) -> bool,
        f: impl FnMut(Lsn, &'a [u8]) -> Result<(), E>,
    ) -> Result<(), ReplayError<E>> {
        let segs = self.segs.iter().map(|(seg, end)| {
            let bytes = seg.map.read(0, *end).unwrap_or_default();
            (seg.name.as_str(), seg.base(), bytes)
        });
        walk_frames(segs, self.after, self.checked_below, pick, f)
    }
}

/// [`Replay::for_each`] over segments given as (name, base LSN, bytes up to
/// the end of their completed frames). A frame that starts below
/// `checked_below` is not checked again ([`trusted_frame`]): the open's scan
/// verified it in the same mapping, which only this process writes (the
/// directory lock), and recovery's repairs there are pad frames it wrote
/// itself.
fn walk_frames<'a, E>(
    segs: impl Iterator<Item = (&'a str, u64, &'a [u8])>,
    after: Option<u64>,
    checked_below: u64,
    mut pick: impl FnMut(&[u8]) -> bool,
    mut f: impl FnMut(Lsn, &'a [u8]) -> Result<(), E>,
) -> Result<(), ReplayError<E>> {
    for (name, base, bytes) in segs {
        let end = bytes.len() as u64;
        let mut off = SEGMENT_HEADER_LEN;
        while off + FRAME_HEADER_LEN as u64 <= end {
            let rest = bytes.get(off as usize..).unwrap_or_default();
            if base + off < checked_below {
                // The open's scan verified this frame (header, position,
                // checksum) in this mapping: its kind and length are all a
                // walker needs. Anything unexpected takes the full path.
                if let Some(next) = trusted_frame(rest, base + off, after, &mut pick, &mut f)? {
                    off += next;
                    continue;
                }
            }
            let checked = decode_header(rest).and_then(|fr| {
                let lsn = base + off;
                let mine = fr.kind == FrameKind::Pad || pick(fr.body);
                // A frame at the wrong position is verified by every walker,
                // so that all of them give the same reason for it.
                if mine || fr.lsn != lsn {
                    verify_frame(rest, &fr)?;
                }
                if fr.lsn != lsn {
                    return Err(FrameError::WrongLsn {
                        expected: lsn,
                        found: fr.lsn,
                    });
                }
                let wanted =
                    mine && fr.kind == FrameKind::Record && after.is_none_or(|a| fr.lsn > a);
                Ok((fr, wanted))
            });
            let (frame, wanted) = match checked {
                Ok(ok) => ok,
                Err(e) => {
                    let reason = match e {
                        FrameError::WrongLsn { .. } => {
                            "frame LSN does not match its position".to_owned()
                        }
                        other => other.to_string(),
                    };
                    return Err(ReplayError::Log(LogError::Corrupt {
                        segment: name.to_owned(),
                        offset: off,
                        lsn: base + off,
                        reason,
                    }));
                }
            };
            if wanted {
                f(Lsn(frame.lsn), frame.body).map_err(ReplayError::Handler)?;
            }
            off += frame.frame_len;
        }
    }
    Ok(())
}

/// One frame of the prefix the open's scan verified, for [`walk_frames`]:
/// hands a picked record after `after` to `f`; returns the frame's length,
/// or `None` if the header is not a record or pad one can step over.
fn trusted_frame<'a, E>(
    rest: &'a [u8],
    lsn: u64,
    after: Option<u64>,
    pick: &mut impl FnMut(&[u8]) -> bool,
    f: &mut impl FnMut(Lsn, &'a [u8]) -> Result<(), E>,
) -> Result<Option<u64>, ReplayError<E>> {
    let Some(header) = rest.first_chunk::<FRAME_HEADER_LEN>() else {
        return Ok(None);
    };
    let (kind, body_len) = frame::kind_and_body_len(header);
    let len = frame_len(body_len);
    match kind {
        1 => {
            let Some(body) = rest.get(FRAME_HEADER_LEN..FRAME_HEADER_LEN + body_len as usize)
            else {
                return Ok(None);
            };
            if after.is_none_or(|a| lsn > a) && pick(body) {
                f(Lsn(lsn), body).map_err(ReplayError::Handler)?;
            }
            Ok(Some(len))
        }
        2 if len <= rest.len() as u64 => Ok(Some(len)),
        _ => Ok(None),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod replay_tests {
    use super::*;

    /// One segment image (zero header, then frames) with records 0..n, whose
    /// first body byte says which of two walkers owns it.
    fn image(n: u8) -> (Vec<u8>, Vec<u64>) {
        let mut img = vec![0u8; SEGMENT_HEADER_LEN as usize];
        let mut offsets = Vec::new();
        for i in 0..n {
            let off = img.len() as u64;
            offsets.push(off);
            frame::encode_record(&mut img, off, 0, &[i % 2, i, i, i, i, i, i, i, i]);
        }
        (img, offsets)
    }

    /// The records each walker is handed, and the error each stops with.
    fn walk(img: &[u8], pick: impl Fn(&[u8]) -> bool) -> (Vec<u8>, Option<(String, u64, String)>) {
        walk_checked(img, 0, pick)
    }

    /// [`walk`] with frames ending at or below `checked_below` taken as verified.
    fn walk_checked(
        img: &[u8],
        checked_below: u64,
        pick: impl Fn(&[u8]) -> bool,
    ) -> (Vec<u8>, Option<(String, u64, String)>) {
        let mut got = Vec::new();
        let seg = std::iter::once(("seg", 0, img));
        let r = walk_frames(seg, None, checked_below, pick, |_, body| {
            got.push(body[1]);
            Ok::<(), ()>(())
        });
        let err = match r {
            Ok(()) => None,
            Err(ReplayError::Log(LogError::Corrupt {
                segment,
                lsn,
                reason,
                ..
            })) => Some((segment, lsn, reason)),
            Err(e) => panic!("{e:?}"),
        };
        (got, err)
    }

    #[test]
    fn split_walkers_verify_their_frames_and_agree_on_the_first_error() {
        let (clean, offsets) = image(20);
        for (frame, at, what) in [
            (5, 33, "body of an odd frame"),
            (6, 33, "body of an even frame"),
            (7, 8, "LSN of a frame"),
            (8, 0, "length of a frame"),
            (9, 25, "version of a frame"),
        ] {
            let mut img = clean.clone();
            img[offsets[frame] as usize + at] ^= 0x10;
            // Later damage must not hide the first.
            img[offsets[15] as usize + 34] ^= 0x10;
            let (all, first) = walk(&img, |_| true);
            let (even, e) = walk(&img, |b| b[0] == 0);
            let (odd, o) = walk(&img, |b| b[0] == 1);
            let first = first.unwrap();
            assert_eq!(first.1, offsets[frame], "{what}");
            let split_first = [e, o].into_iter().flatten().min_by_key(|x| x.1).unwrap();
            assert_eq!(split_first, first, "{what}");
            assert_eq!(all, (0..frame as u8).collect::<Vec<_>>(), "{what}");
            // A walker may hand out frames past another walker's damaged one
            // (replay then fails as a whole), but never a damaged frame.
            for got in [&even, &odd] {
                assert!(
                    !got.contains(&(frame as u8)) && !got.contains(&15),
                    "{what}: a damaged frame was handed out: {got:?}"
                );
            }
            assert!(
                all.iter().all(|i| even.contains(i) || odd.contains(i)),
                "{what}: the split walkers hand out what one does"
            );
        }
    }

    /// Frames are checked again only past the open scan's end: there a
    /// damaged body or header is refused; inside the scanned prefix the
    /// scan's verdict stands (its checks ran on these very bytes).
    #[test]
    fn only_frames_past_the_open_scan_are_checked_again() {
        let (clean, offsets) = image(20);
        let scanned = offsets[10]; // frames 0..10 end at or below it
        for at in [33, 8] {
            let mut past = clean.clone();
            past[offsets[12] as usize + at] ^= 0x10;
            let (got, err) = walk_checked(&past, scanned, |_| true);
            assert_eq!(got, (0..12).collect::<Vec<u8>>(), "byte {at}");
            assert_eq!(err.unwrap().1, offsets[12], "byte {at}");
        }
        let (got, err) = walk_checked(&clean, scanned, |_| true);
        assert_eq!((got, err), ((0..20).collect::<Vec<u8>>(), None));
        // The split between walkers is the same on both paths.
        let (even, _) = walk_checked(&clean, scanned, |b| b[0] == 0);
        let (odd, _) = walk_checked(&clean, scanned, |b| b[0] == 1);
        assert_eq!(even, (0..20).step_by(2).collect::<Vec<u8>>());
        assert_eq!(odd, (1..20).step_by(2).collect::<Vec<u8>>());
    }
}

/// A cut torn tail, as reported by [`Log::open`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TornTailReport {
    /// Segment file where the log now ends.
    pub segment: String,
    /// Offset of the cut in that file.
    pub offset: u64,
    /// LSN of the cut.
    pub lsn: Lsn,
    /// Bytes discarded (from the cut to the last non-zero byte).
    pub bytes_discarded: u64,
    /// Frames discarded (the torn one and any complete ones written after it).
    pub records_discarded: u64,
}

/// A corrupt region skipped under [`RecoveryMode::SkipCorrupt`], or a problem found by [`verify`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CorruptionReport {
    /// Segment file.
    pub segment: String,
    /// Offset in the file.
    pub offset: u64,
    /// What is wrong.
    pub reason: String,
}

/// What [`Log::open`] found and did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Segments kept.
    pub segments: usize,
    /// Valid records in the kept segments (including those covered by the snapshot).
    pub records: u64,
    /// LSN of the last valid record.
    pub last_lsn: Option<Lsn>,
    /// LSN covered by the loaded snapshot.
    pub snapshot_lsn: Option<Lsn>,
    /// The torn tail that was cut, if any.
    pub torn_tail: Option<TornTailReport>,
    /// Corrupt regions skipped (only with `SkipCorrupt`).
    pub skipped: Vec<CorruptionReport>,
    /// Files removed: empty or torn segments after the end, leftover temp files.
    pub removed: Vec<String>,
    /// Snapshot files passed over (damaged, unreadable, or written by another
    /// log): an older snapshot, or the segments alone, were used instead.
    pub snapshots_ignored: Vec<CorruptionReport>,
}

/// The LSN of a damaged frame (offset 0 is a segment's header, which has none).
#[allow(clippy::trivially_copy_pass_by_ref)] // thiserror passes fields by reference
fn lsn_note(offset: &u64, lsn: &u64) -> String {
    if *offset == 0 {
        String::new()
    } else {
        format!(" (LSN {lsn})")
    }
}

/// What to do about a [`LogError::Corrupt`]: `SkipCorrupt` drops damaged
/// frames, but cannot stand in for a damaged or missing segment file.
#[allow(clippy::trivially_copy_pass_by_ref)] // thiserror passes fields by reference
fn corrupt_advice(offset: &u64) -> &'static str {
    if *offset == 0 {
        "restore the directory from a backup (skipping damaged records cannot repair a damaged or missing segment file)"
    } else {
        "restore from backup, or open with RecoveryMode::SkipCorrupt to drop the damaged records"
    }
}

/// Counters from [`Log::stats`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogStats {
    /// Segment files in use.
    pub segments: usize,
    /// Bytes of segment and snapshot files.
    pub bytes_on_disk: u64,
    /// LSN of the last appended record.
    pub last_lsn: Option<Lsn>,
    /// LSN covered by the newest snapshot.
    pub snapshot_lsn: Option<Lsn>,
    /// Everything below this LSN is durable.
    pub synced_lsn: Lsn,
}

/// Result of [`verify`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// Segment files checked.
    pub segments: usize,
    /// Valid records found.
    pub records: u64,
    /// LSN of the last valid record.
    pub last_lsn: Option<Lsn>,
    /// LSN of the newest valid snapshot.
    pub snapshot_lsn: Option<Lsn>,
    /// Every problem, with segment and offset (a torn tail is listed too).
    pub problems: Vec<CorruptionReport>,
}

fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> LogError {
    let context = context.into();
    move |source| LogError::Io { context, source }
}

#[derive(Debug, Default)]
struct PrepState {
    want: Option<(u64, u64)>,
    busy: bool,
    ready: Option<Segment>,
    shutdown: bool,
}

#[derive(Debug)]
struct Inner {
    config: LogConfig,
    storage: Arc<dyn Storage>,
    log_id: u64,
    max_record: usize,
    // I1: contiguous, oldest first; the last is the active segment.
    segs: RwLock<Vec<Arc<Segment>>>,
    // The active segment (`segs.last()`), readable without the `segs` lock: the
    // append path loads it once per record. Changed only under `roll`, after
    // the segment was pushed onto `segs`.
    active: ArcSwap<Segment>,
    roll: Mutex<()>,
    prep: Mutex<PrepState>,
    prep_cond: Condvar,
    commit: GroupCommit,
    /// The synced watermark when the log was opened (see [`Inner::seal`]).
    opened_synced: u64,
    /// The end of the data the last seal covers (0: not sealed), so that a
    /// close followed by a drop seals once.
    sealed_at: AtomicU64,
    completion: Notify,
    // LSN of the last record found by recovery (appends since are tracked per mapping).
    recovered_last: Option<u64>,
    /// The last record of the segments compaction removed (0: none), so that
    /// `stats().last_lsn` does not go back when the segment holding the last
    /// record is deleted (`compact` ends the segment being written).
    compacted_last: AtomicU64,
    snapshot: Mutex<Option<(u64, Vec<u8>)>>,
    /// Held while a snapshot is written and the files it covers are removed.
    snapshot_writer: Mutex<()>,
    shutdown: Mutex<bool>,
    shutdown_cond: Condvar,
    _lock: Option<DirLock>,
}

/// A write-ahead log. `Send + Sync`; share it with `Arc`.
#[derive(Debug)]
pub struct Log {
    inner: Arc<Inner>,
    threads: Vec<JoinHandle<()>>,
}

fn validate(config: &LogConfig) -> Result<usize, LogError> {
    let s = config.segment_size;
    if s < 4096 || !s.is_multiple_of(4096) || s > (1 << 31) {
        return Err(LogError::InvalidConfig(format!(
            "segment_size {s} must be a multiple of 4096 between 4096 and 2 GiB"
        )));
    }
    if let Durability::Batched { interval } = config.durability {
        if interval.is_zero() {
            return Err(LogError::InvalidConfig(
                "Batched interval must be positive".into(),
            ));
        }
    }
    Ok(MAX_RECORD_LEN.min((s - SEGMENT_HEADER_LEN) as usize - FRAME_HEADER_LEN))
}

impl Log {
    /// Opens (creating if needed) the log in `dir`: takes the exclusive directory
    /// lock, recovers, and prepares the active segment. The snapshot found is
    /// available from [`Log::snapshot`].
    pub fn open(dir: &Path, config: LogConfig) -> Result<(Log, RecoveryReport), LogError> {
        validate(&config)?;
        if dir.as_os_str().is_empty() {
            // `create_dir_all("")` succeeds, and the lock would land in the
            // working directory.
            return Err(LogError::InvalidConfig(
                "the log directory path is empty: give a directory".into(),
            ));
        }
        std::fs::create_dir_all(dir).map_err(io_err(format!("creating {}", dir.display())))?;
        let lock = lock::lock_dir(dir)?;
        // Sync appends by `pwritev` (see `MmapStorage::write_through`); the other
        // modes store through the mapping, which is cheaper until a sync.
        let write_through = matches!(config.durability, Durability::Sync);
        let storage = MmapStorage::new(dir).write_through(write_through);
        Self::open_inner(Arc::new(storage), config, Some(lock))
    }

    /// Opens a log on any [`Storage`] (tests use [`SimStorage`]). No directory
    /// lock is taken: the caller guarantees exclusive use.
    pub fn open_with_storage(
        storage: Arc<dyn Storage>,
        config: LogConfig,
    ) -> Result<(Log, RecoveryReport), LogError> {
        validate(&config)?;
        Self::open_inner(storage, config, None)
    }

    fn open_inner(
        storage: Arc<dyn Storage>,
        config: LogConfig,
        lock: Option<DirLock>,
    ) -> Result<(Log, RecoveryReport), LogError> {
        let max_record = validate(&config)?;
        let recovered = recover(&*storage, &config)?;
        let Recovered {
            segs,
            report,
            snapshot,
            log_id,
            synced,
        } = recovered;
        let segs: Vec<Arc<Segment>> = segs.into_iter().map(Arc::new).collect();
        for s in &segs {
            storage.track(&s.name, &s.map);
        }
        let last = report.last_lsn;
        let active =
            ArcSwap::new(Arc::clone(segs.last().ok_or_else(|| {
                LogError::InvalidConfig("recovery left no segment".into())
            })?));
        let inner = Arc::new(Inner {
            config,
            storage,
            log_id,
            max_record,
            segs: RwLock::new(segs),
            active,
            roll: Mutex::new(()),
            prep: Mutex::new(PrepState::default()),
            prep_cond: Condvar::new(),
            commit: GroupCommit::new(synced),
            opened_synced: synced,
            sealed_at: AtomicU64::new(0),
            completion: Notify::default(),
            recovered_last: last.map(|l| l.0),
            compacted_last: AtomicU64::new(0),
            snapshot: Mutex::new(snapshot),
            snapshot_writer: Mutex::new(()),
            shutdown: Mutex::new(false),
            shutdown_cond: Condvar::new(),
            _lock: lock,
        });
        let mut threads = Vec::new();
        let prep = Arc::clone(&inner);
        threads.push(
            std::thread::Builder::new()
                .name("fibflow-log-prep".into())
                .spawn(move || prep.preparer())
                .map_err(io_err("spawning the segment preparer"))?,
        );
        if let Durability::Batched { interval } = inner.config.durability {
            let fl = Arc::clone(&inner);
            threads.push(
                std::thread::Builder::new()
                    .name("fibflow-log-flush".into())
                    .spawn(move || fl.flusher(interval))
                    .map_err(io_err("spawning the flusher"))?,
            );
        }
        inner.request_next();
        Ok((Log { inner, threads }, report))
    }
}

impl Log {
    /// The newest valid snapshot: its LSN (records with `lsn <=` it are inside)
    /// and its bytes. Loaded at open; updated by [`Log::write_snapshot`].
    pub fn snapshot(&self) -> Option<(Lsn, Vec<u8>)> {
        self.inner
            .snapshot
            .lock()
            .as_ref()
            .map(|(l, b)| (Lsn(*l), b.clone()))
    }

    /// Calls `f` for every valid record after the snapshot's LSN, in LSN order,
    /// with a slice borrowed from the mapping (no copy). Records appended
    /// concurrently may or may not be seen. Stops at the first error `f` returns.
    pub fn replay<E>(
        &self,
        f: impl FnMut(Lsn, &[u8]) -> Result<(), E>,
    ) -> Result<(), ReplayError<E>> {
        self.replay_view().for_each(|_| true, f)
    }

    /// The records after the snapshot's LSN as they are now (records appended
    /// later are not in it), for [`Replay::for_each`]: several threads can walk
    /// one view at once and split the records between them.
    pub fn replay_view(&self) -> Replay {
        let after = self.inner.snapshot.lock().as_ref().map(|(l, _)| *l);
        let segs = self
            .inner
            .segs
            .read()
            .iter()
            .map(|seg| (Arc::clone(seg), seg.map.completed()))
            .collect();
        Replay {
            segs,
            after,
            checked_below: self.inner.opened_synced,
        }
    }
    /// Appends one record and returns its LSN once its bytes are in the mapping
    /// (not yet durable: see [`Log::wait_durable`]). Space is reserved with one
    /// atomic add on the active segment's tail; no lock is taken.
    pub fn append(&self, record: &[u8]) -> Result<Lsn, LogError> {
        self.check_len(record.len())?;
        self.append_checked(record)
    }

    /// Refuses a record longer than this log can hold, before anything is written;
    /// callers that change state before appending check first.
    pub fn check_len(&self, len: usize) -> Result<(), LogError> {
        let max = self.inner.max_record;
        if len > max {
            return Err(LogError::RecordTooLarge { len, max });
        }
        Ok(())
    }

    fn append_checked(&self, record: &[u8]) -> Result<Lsn, LogError> {
        let inner = &*self.inner;
        if record.len() > inner.max_record {
            return Err(LogError::RecordTooLarge {
                len: record.len(),
                max: inner.max_record,
            });
        }
        inner.append_frame(Some(record))
    }
}

impl Inner {
    /// Appends a record frame, or with `None` a seal: an empty pad frame whose
    /// `stable` is the synced watermark (see [`Inner::seal`]).
    fn append_frame(&self, record: Option<&[u8]>) -> Result<Lsn, LogError> {
        let inner = self;
        inner.commit.check()?;
        let body = record.unwrap_or_default();
        let flen = frame_len(body.len() as u64);
        loop {
            let seg = inner.active.load();
            match seg.map.reserve(flen) {
                Reserve::Fits(mut slot) => {
                    let lsn = seg.base() + slot.start();
                    let stable = inner.commit.synced();
                    let header = match record {
                        Some(r) => record_header(lsn, stable, r),
                        None => pad_header(lsn, stable, 0),
                    };
                    // I3: the padding after the body is already zero.
                    let ok = slot.write_parts(0, &[&header, body]);
                    drop(slot);
                    debug_assert!(ok, "slot sized by frame_len");
                    inner.completion.notify_all();
                    return Ok(Lsn(lsn));
                }
                Reserve::Straddles(slot) => {
                    inner.pad_rest(&seg, slot);
                    inner.roll_over(&seg)?;
                }
                Reserve::Full => inner.roll_over(&seg)?,
            };
        }
    }

    /// Marks the rest of segment `seg`, reserved as `slot`, dead so readers
    /// move on (a remainder shorter than a header is left zero and skipped).
    fn pad_rest(&self, seg: &Segment, mut slot: mmap::Slot<'_>) {
        if slot.len() >= FRAME_HEADER_LEN as u64 {
            let pad = pad_header(
                seg.base() + slot.start(),
                self.commit.synced(),
                (slot.len() - FRAME_HEADER_LEN as u64) as u32,
            );
            slot.write(0, &pad);
        }
        drop(slot);
        self.completion.notify_all();
    }

    /// Seals a log that is being closed: after the final sync, an empty pad
    /// frame records that everything before it is durable, then is synced
    /// itself. Recovery takes damage before a frame whose `stable` is past it
    /// for corruption, not a torn tail (`recovery.rs`, step 2); without a seal,
    /// a flipped bit in the last synced batch of a cleanly closed log would be
    /// cut off as a torn tail, with the acknowledged records after it. Only
    /// when something was appended since the log was opened.
    fn seal(&self) -> Result<(), LogError> {
        self.flush_all()?;
        let synced = self.commit.synced();
        if synced <= self.opened_synced || synced == self.sealed_at.load(Ordering::Acquire) {
            return Ok(());
        }
        self.append_frame(None)?;
        self.flush_all()?;
        self.sealed_at
            .store(self.commit.synced(), Ordering::Release);
        Ok(())
    }
}

impl Log {
    /// Blocks until `lsn` and every record before it are complete and durable
    /// to the configured level. Do not call it while holding a lock appenders need.
    pub fn wait_durable(&self, lsn: Lsn) -> Result<(), LogError> {
        let inner = &*self.inner;
        inner.commit.check()?;
        let next = inner.reserved_end();
        if lsn.0 >= next {
            return Err(LogError::UnknownLsn { lsn: lsn.0, next });
        }
        match inner.config.durability {
            Durability::Sync => inner.commit.wait(lsn.0, |from| inner.flush_to(lsn.0, from)),
            Durability::Os | Durability::Memory | Durability::Batched { .. } => {
                inner.completion.wait_until(|| inner.completed() > lsn.0);
                inner.commit.check()
            }
        }
    }

    /// Makes everything appended so far durable (any durability mode).
    pub fn flush(&self) -> Result<(), LogError> {
        self.inner.flush_all()
    }

    /// Flushes and seals the log at a clean close, in every durability
    /// mode: damage before the seal is then corruption, not a torn tail
    /// (`docs/log-format.md`). The log stays usable; a later drop does not
    /// seal again unless something was appended since.
    pub fn close(&self) -> Result<(), LogError> {
        self.inner.seal()
    }

    /// Ends the active segment where it is: its rest becomes a pad frame and
    /// appends go on in the next segment. A snapshot taken afterwards covers
    /// every record of the old segment, so compaction deletes it, and with it
    /// the records of tasks deleted since (SPEC §11: deleted history leaves
    /// the log). Does nothing while the active segment holds no frame.
    pub fn roll(&self) -> Result<(), LogError> {
        let inner = &*self.inner;
        inner.commit.check()?;
        let seg = inner.active.load_full();
        if seg.map.tail() <= SEGMENT_HEADER_LEN {
            return Ok(());
        }
        // More than any segment has left: the reservation takes the rest.
        match seg.map.reserve(seg.map.len()) {
            Reserve::Straddles(slot) | Reserve::Fits(slot) => inner.pad_rest(&seg, slot),
            Reserve::Full => {}
        }
        inner.roll_over(&seg)
    }

    /// The LSN a snapshot taken now covers: every frame reserved so far (a
    /// caller that holds every lock under which records are appended knows
    /// each of them is complete and in its state).
    pub fn covered_lsn(&self) -> Option<Lsn> {
        self.inner.reserved_end().checked_sub(1).map(Lsn)
    }

    /// Writes a snapshot covering every record with LSN `<= lsn` atomically
    /// (the log synced through `lsn` first, in every durability mode; then temp
    /// file, fsync, rename, fsync directory), then deletes older snapshots
    /// and every non-active segment all of whose records are `<= lsn`.
    /// Appends may continue meanwhile. Snapshots are written one at a time; one
    /// at or below the LSN of the newest snapshot already written does nothing.
    pub fn write_snapshot(&self, lsn: Lsn, bytes: &[u8]) -> Result<(), LogError> {
        let inner = &*self.inner;
        inner.commit.check()?;
        let next = inner.reserved_end();
        if lsn.0 >= next {
            return Err(LogError::UnknownLsn { lsn: lsn.0, next });
        }
        // Two writers at one LSN would share a temp file, and each would delete
        // the older files the other deletes; an older snapshot written after a
        // newer one would move the snapshot LSN back.
        let _writing = inner.snapshot_writer.lock();
        if inner
            .snapshot
            .lock()
            .as_ref()
            .is_some_and(|(l, _)| *l >= lsn.0)
        {
            return Ok(());
        }
        // The log is durable through `lsn` before a snapshot says it covers
        // it. A snapshot ahead of the synced prefix would survive a power
        // loss that cut the log below it; appends after the next open would
        // then take LSNs the snapshot claims, and the open after that would
        // skip them as covered (acknowledged records lost).
        inner
            .commit
            .wait(lsn.0, |from| inner.flush_to(lsn.0, from))?;
        let name = snapshot_name(lsn.0);
        inner
            .storage
            .write_atomic(&name, &encode_snapshot(inner.log_id, lsn.0, bytes))
            .map_err(io_err(format!("writing snapshot {name}")))?;
        *inner.snapshot.lock() = Some((lsn.0, bytes.to_vec()));
        for old in inner
            .storage
            .list()
            .map_err(io_err("listing the log directory"))?
        {
            if parse_snapshot_name(&old).is_some_and(|l| l < lsn.0) {
                inner
                    .storage
                    .remove(&old)
                    .map_err(io_err(format!("removing old snapshot {old}")))?;
            }
        }
        let removable: Vec<Arc<Segment>> = {
            let mut segs = inner.segs.write();
            let keep_last = segs.len().saturating_sub(1);
            let n = segs
                .iter()
                .take(keep_last)
                .take_while(|s| s.end() <= lsn.0 + 1)
                .count();
            segs.drain(..n).collect()
        };
        for s in removable {
            if let Some(o) = s.map.last_record() {
                inner
                    .compacted_last
                    .fetch_max(s.base() + o, Ordering::AcqRel);
            }
            inner
                .storage
                .remove(&s.name)
                .map_err(io_err(format!("removing compacted segment {}", s.name)))?;
        }
        Ok(())
    }

    /// Current counters.
    pub fn stats(&self) -> LogStats {
        let inner = &*self.inner;
        let segs = inner.segs.read();
        let snap = inner
            .snapshot
            .lock()
            .as_ref()
            .map(|(l, b)| (*l, b.len() as u64));
        LogStats {
            segments: segs.len(),
            bytes_on_disk: segs.iter().map(|s| s.map.len()).sum::<u64>()
                + snap.map_or(0, |(_, n)| n + snapshot::SNAPSHOT_HEADER_LEN as u64),
            // Appends since open are in the mappings (newest segment first);
            // otherwise the last record is the one recovery found.
            last_lsn: segs
                .iter()
                .rev()
                .find_map(|s| s.map.last_record().map(|o| s.base() + o))
                .or_else(|| {
                    let compacted = inner.compacted_last.load(Ordering::Acquire);
                    (compacted > 0)
                        .then_some(compacted)
                        .max(inner.recovered_last)
                })
                .map(Lsn),
            snapshot_lsn: snap.map(|(l, _)| Lsn(l)),
            synced_lsn: Lsn(inner.commit.synced()),
        }
    }

    /// The random identity of this log (stored in every segment header).
    pub fn log_id(&self) -> u64 {
        self.inner.log_id
    }
}

impl Drop for Log {
    fn drop(&mut self) {
        if !matches!(
            self.inner.config.durability,
            Durability::Os | Durability::Memory
        ) {
            // Best effort, while the segment preparer still runs (a seal may
            // need the next segment): a failure poisons nothing anyone can
            // still observe, and recovery then treats the tail as before.
            let _ = self.inner.seal();
        }
        {
            let mut st = self.inner.prep.lock();
            st.shutdown = true;
            self.inner.prep_cond.notify_all();
        }
        {
            *self.inner.shutdown.lock() = true;
            self.inner.shutdown_cond.notify_all();
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        if !matches!(
            self.inner.config.durability,
            Durability::Os | Durability::Memory
        ) {
            // Best effort: a failure here poisons nothing anyone can still observe.
            let _ = self.inner.flush_all();
        }
    }
}

impl Inner {
    /// The first LSN not yet handed out.
    fn reserved_end(&self) -> u64 {
        let a = self.active.load();
        a.base() + a.map.tail().min(a.map.len())
    }

    /// W1 across segments: every frame below the result is complete.
    fn completed(&self) -> u64 {
        let a = self.active.load();
        if a.older_complete() {
            // A newer segment may be active by now; this is still a lower bound.
            return a.base() + a.map.completed();
        }
        drop(a);
        self.completed_slow()
    }

    /// W1 from the segment list; marks segments whose predecessors are all complete.
    fn completed_slow(&self) -> u64 {
        let segs = self.segs.read();
        let synced = self.commit.synced();
        let first = segs
            .partition_point(|s| s.end() <= synced)
            .min(segs.len().saturating_sub(1));
        let mut c = segs.get(first).map_or(0, |s| s.base());
        for s in segs.iter().skip(first) {
            // Segments before `first` end at or below `synced <= completed`, and
            // the loop returned at any incomplete one from `first` on.
            s.set_older_complete();
            let sc = s.map.completed();
            if sc < s.map.len() {
                return s.base() + sc;
            }
            c = s.end();
        }
        c
    }

    /// Leader step of group commit: wait for `lsn` to complete, then sync `[from, completed)`.
    fn flush_to(&self, lsn: u64, from: u64) -> Result<u64, LogError> {
        self.completion.wait_until(|| self.completed() > lsn);
        let to = self.completed();
        let segs: Vec<Arc<Segment>> = self
            .segs
            .read()
            .iter()
            .filter(|s| s.end() > from && s.base() < to)
            .cloned()
            .collect();
        for s in segs {
            let lo = from.max(s.base()) - s.base();
            let hi = to.min(s.end()) - s.base();
            self.storage
                .sync(&s.name, &s.map, lo, hi)
                .map_err(io_err(format!("syncing segment {} [{lo}, {hi})", s.name)))?;
        }
        Ok(to)
    }

    fn flush_all(&self) -> Result<(), LogError> {
        self.commit.check()?;
        let c = self.completed();
        if c == 0 || self.commit.synced() >= c {
            return Ok(());
        }
        self.commit.wait(c - 1, |from| self.flush_to(c - 1, from))
    }

    /// Installs the segment after `full` as active (once, whoever comes first).
    fn roll_over(&self, full: &Arc<Segment>) -> Result<(), LogError> {
        let _g = self.roll.lock();
        if self.active.load().header.segment_id != full.header.segment_id {
            return Ok(());
        }
        self.commit.check()?;
        let (id, base) = (full.header.segment_id + 1, full.end());
        let next = self.take_prepared(id, base)?;
        let next = Arc::new(next);
        self.storage.track(&next.name, &next.map);
        self.segs.write().push(Arc::clone(&next));
        self.active.store(next);
        self.request_next();
        self.completion.notify_all();
        Ok(())
    }

    fn take_prepared(&self, id: u64, base: u64) -> Result<Segment, LogError> {
        let mut st = self.prep.lock();
        loop {
            if st.ready.as_ref().is_some_and(|s| s.header.segment_id == id) {
                if let Some(s) = st.ready.take() {
                    return Ok(s);
                }
            }
            if !(st.busy || st.want.is_some_and(|(w, _)| w == id)) || st.shutdown {
                break;
            }
            self.prep_cond.wait(&mut st);
        }
        st.ready = None;
        drop(st);
        self.create_segment(id, base)
    }

    fn request_next(&self) {
        let a = self.active.load();
        let mut st = self.prep.lock();
        st.want = Some((a.header.segment_id.saturating_add(1), a.end()));
        self.prep_cond.notify_all();
    }

    fn create_segment(&self, id: u64, base: u64) -> Result<Segment, LogError> {
        let header = SegmentHeader {
            log_id: self.log_id,
            segment_id: id,
            base_lsn: base,
            segment_len: self.config.segment_size,
        };
        new_segment(&*self.storage, header)
    }

    /// Background thread: creates, zero-fills and prefaults the next segment.
    fn preparer(&self) {
        let _poison = PoisonOnPanic(&self.commit);
        loop {
            let (id, base) = {
                let mut st = self.prep.lock();
                loop {
                    if st.shutdown {
                        return;
                    }
                    if let Some(w) = st.want.take() {
                        st.busy = true;
                        break w;
                    }
                    self.prep_cond.wait(&mut st);
                }
            };
            let made = self.create_segment(id, base);
            let mut st = self.prep.lock();
            st.busy = false;
            // On error the appender that needs it creates it itself and reports the error.
            st.ready = made.ok();
            self.prep_cond.notify_all();
        }
    }

    /// Background thread for `Batched`: syncs everything completed every `interval`.
    fn flusher(&self, interval: Duration) {
        let _poison = PoisonOnPanic(&self.commit);
        let mut stop = self.shutdown.lock();
        while !*stop {
            self.shutdown_cond.wait_for(&mut stop, interval);
            if *stop {
                return;
            }
            parking_lot::MutexGuard::unlocked(&mut stop, || {
                if self.flush_all().is_err() {
                    // Poisoned: later calls report it.
                }
            });
            if self.commit.check().is_err() {
                return;
            }
        }
    }
}

/// Creates segment `header.segment_id` through `storage`, ready for appends.
fn new_segment(storage: &dyn Storage, header: SegmentHeader) -> Result<Segment, LogError> {
    let name = segment_name(header.segment_id);
    let mut map = storage
        .create_segment(&name, header.segment_len, &header.encode())
        .map_err(io_err(format!("creating segment {name}")))?;
    map.set_tail(SEGMENT_HEADER_LEN);
    Ok(Segment::new(header, name, Arc::new(map)))
}

struct Recovered {
    segs: Vec<Segment>,
    report: RecoveryReport,
    snapshot: Option<(u64, Vec<u8>)>,
    log_id: u64,
    synced: u64,
}

struct Listing {
    segments: Vec<(u64, String)>,
    snapshots: Vec<(u64, String)>,
    temps: Vec<String>,
}

fn list(storage: &dyn Storage) -> Result<Listing, LogError> {
    let mut l = Listing {
        segments: Vec::new(),
        snapshots: Vec::new(),
        temps: Vec::new(),
    };
    for name in storage
        .list()
        .map_err(io_err("listing the log directory"))?
    {
        if let Some(id) = parse_segment_name(&name) {
            l.segments.push((id, name));
        } else if let Some(lsn) = parse_snapshot_name(&name) {
            l.snapshots.push((lsn, name));
        } else if Path::new(&name)
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("tmp"))
        {
            l.temps.push(name);
        }
    }
    l.segments.sort();
    l.snapshots.sort_by(|a, b| b.cmp(a));
    Ok(l)
}

/// Newest valid snapshot `(log_id, lsn, body)`, and complaints about invalid ones.
/// Above any segment id or LSN a log can reach: larger header values are corrupt.
const MAX_POSITION: u64 = 1 << 62;

/// A loaded snapshot: `(log_id, lsn, body)`.
type LoadedSnapshot = (u64, u64, Vec<u8>);

fn load_snapshot(
    storage: &dyn Storage,
    names: &[(u64, String)],
    log_id: Option<u64>,
) -> (Option<LoadedSnapshot>, Vec<CorruptionReport>) {
    let mut problems = Vec::new();
    for (_, name) in names {
        let bytes = match storage.read_file(name) {
            Ok(b) => b,
            Err(e) => {
                problems.push(CorruptionReport {
                    segment: name.clone(),
                    offset: 0,
                    reason: e.to_string(),
                });
                continue;
            }
        };
        match decode_snapshot(&bytes) {
            // Copied in from another log: passed over, so that the header
            // checks do not blame this log's own segments for it.
            Ok((id, _, _)) if log_id.is_some_and(|l| l != id) => problems.push(CorruptionReport {
                segment: name.clone(),
                offset: 0,
                reason: format!(
                    "snapshot belongs to another log (id {id:#x}, the segments' is {:#x}); remove it",
                    log_id.unwrap_or_default()
                ),
            }),
            Ok((id, lsn, body)) => return (Some((id, lsn, body.to_vec())), problems),
            Err(e) => problems.push(CorruptionReport {
                segment: name.clone(),
                offset: 0,
                reason: e.to_string(),
            }),
        }
    }
    (None, problems)
}

/// Checks headers: one log id, consecutive ids, contiguous LSNs, nothing missing.
fn check_headers(
    segs: &[(
        String,
        Result<SegmentHeader, segment::SegmentHeaderError>,
        u64,
    )],
    snap: Option<(u64, u64)>,
) -> Result<Option<u64>, LogError> {
    let mut log_id = snap.map(|(id, _)| id);
    let mut prev: Option<SegmentHeader> = None;
    for (name, header, len) in segs {
        let corrupt = |reason: String| LogError::Corrupt {
            segment: name.clone(),
            offset: 0,
            lsn: 0,
            reason,
        };
        let h = header
            .clone()
            .map_err(|e| corrupt(format!("bad segment header: {e}")))?;
        let expected = *log_id.get_or_insert(h.log_id);
        if h.log_id != expected {
            return Err(LogError::ForeignSegment {
                segment: name.clone(),
                expected,
                found: h.log_id,
            });
        }
        if parse_segment_name(name) != Some(h.segment_id) || h.segment_len != *len {
            return Err(corrupt(format!(
                "header says segment {} of {} bytes, file is {name} of {len} bytes",
                h.segment_id, h.segment_len
            )));
        }
        // LSNs are byte positions: no real log comes near 2^62, and every
        // position arithmetic after this check stays far from overflow.
        if h.segment_id >= MAX_POSITION
            || h.base_lsn.saturating_add(h.segment_len) >= MAX_POSITION
            || snap.is_some_and(|(_, l)| l >= MAX_POSITION)
        {
            return Err(corrupt(format!(
                "header values out of range (segment {}, base LSN {})",
                h.segment_id, h.base_lsn
            )));
        }
        match prev {
            Some(p)
                if p.segment_id + 1 != h.segment_id || p.base_lsn + p.segment_len != h.base_lsn =>
            {
                return Err(corrupt(format!(
                    "segment does not follow segment {} (missing or misplaced segment)",
                    p.segment_id
                )));
            }
            // A log started over above a snapshot (`recover`, or a
            // directory holding only a snapshot) begins at the first frame
            // boundary after it.
            None if h.base_lsn > snap.map_or(0, |(_, l)| frame::align_up(l.saturating_add(1))) => {
                return Err(corrupt(
                    "records between the snapshot and this first segment are missing".to_owned(),
                ));
            }
            _ => {}
        }
        prev = Some(h);
    }
    Ok(log_id)
}

fn recover(storage: &dyn Storage, config: &LogConfig) -> Result<Recovered, LogError> {
    let listing = list(storage)?;
    let mut report = RecoveryReport::default();
    for t in &listing.temps {
        storage
            .remove(t)
            .map_err(io_err(format!("removing leftover {t}")))?;
        report.removed.push(t.clone());
    }
    let mut maps = Vec::new();
    for (_, name) in &listing.segments {
        let map = storage
            .open_segment(name)
            .map_err(io_err(format!("opening segment {name}")))?;
        let header = SegmentHeader::decode(map.read(0, map.len()).unwrap_or_default());
        maps.push((name.clone(), header, map));
    }
    let segments_id = maps
        .iter()
        .find_map(|(_, h, _)| h.as_ref().ok().map(|h| h.log_id));
    let (snap, bad_snaps) = load_snapshot(storage, &listing.snapshots, segments_id);
    report.snapshots_ignored = bad_snaps;
    let checked: Vec<_> = maps
        .iter()
        .map(|(n, h, m)| (n.clone(), h.clone(), m.len()))
        .collect();
    let log_id = check_headers(&checked, snap.as_ref().map(|(id, l, _)| (*id, *l)))?
        .unwrap_or_else(rand::random);
    let mut segs: Vec<Segment> = maps
        .into_iter()
        .filter_map(|(name, h, map)| {
            h.ok()
                .map(|header| Segment::new(header, name, Arc::new(map)))
        })
        .collect();
    let scan = {
        let views: Vec<SegView<'_>> = segs
            .iter()
            .map(|s| SegView {
                base: s.base(),
                bytes: s.map.read(0, s.map.len()).unwrap_or_default(),
            })
            .collect();
        let scan = recovery::scan(&views, config.recovery);
        if let Some(c) = &scan.corrupt {
            let segment = segs
                .get(c.at.seg)
                .map(|s| s.name.clone())
                .unwrap_or_default();
            return Err(LogError::Corrupt {
                segment,
                offset: c.at.offset,
                lsn: c.lsn,
                reason: c.reason.clone(),
            });
        }
        let repairs = recovery::repairs(&views, &scan);
        (scan, repairs)
    };
    let (scan, repairs) = scan;
    apply_repairs(storage, &mut segs, &repairs, &mut report)?;
    // A log that ends at or below the snapshot's LSN: the disk lost writes
    // that were synced before the snapshot was written (`write_snapshot`
    // syncs first, so only a disk that lies about fsync gets here). Every
    // record left is covered by the snapshot, and appending at the end would
    // reuse LSNs it covers, which the next open would skip as covered. The
    // log starts over in a fresh segment above the snapshot instead.
    let snap_lsn = snap.as_ref().map(|(_, l, _)| *l);
    let end = segs.last().map(|s| s.base() + scan.end.offset);
    let restart = matches!((snap_lsn, end), (Some(l), Some(e)) if e <= l);
    if restart {
        fill_report(&mut report, &segs, &scan, snap_lsn);
        let names: Vec<String> = segs.drain(..).map(|s| s.name).collect();
        for name in names {
            storage.remove(&name).map_err(io_err(format!(
                "removing segment {name}, covered by the snapshot"
            )))?;
            report.removed.push(name);
        }
    }
    if segs.is_empty() {
        let base = snap
            .as_ref()
            .map_or(0, |(_, l, _)| frame::align_up(l.saturating_add(1)));
        segs.push(new_segment(
            storage,
            SegmentHeader {
                log_id,
                segment_id: 0,
                base_lsn: base,
                segment_len: config.segment_size,
            },
        )?);
    } else if let Some(last) = segs.last_mut() {
        let map = Arc::get_mut(&mut last.map)
            .ok_or_else(|| LogError::InvalidConfig("segment shared during recovery".into()))?;
        // Repairs removed every segment after the one the scan ended in.
        map.set_tail(scan.end.offset);
        map.prefault_from(scan.end.offset);
    }
    // Recovered bytes may be only in the page cache (an Os-mode run that was
    // killed): make them durable before anything counts as synced. A segment
    // below the highest `stable` the scan saw was durable already (after a
    // clean close, the seal proves every segment is), and repairs synced what
    // they wrote.
    for s in &segs {
        let end = s.map.completed();
        if s.base().saturating_add(end) <= scan.durable {
            continue;
        }
        storage
            .sync(&s.name, &s.map, 0, end)
            .map_err(io_err(format!("syncing recovered segment {}", s.name)))?;
    }
    let synced = segs.last().map_or(0, |s| s.base() + s.map.completed());
    if restart {
        report.segments = segs.len();
    } else {
        fill_report(&mut report, &segs, &scan, snap_lsn);
    }
    Ok(Recovered {
        segs,
        report,
        snapshot: snap.map(|(_, l, b)| (l, b)),
        log_id,
        synced,
    })
}

fn apply_repairs(
    storage: &dyn Storage,
    segs: &mut Vec<Segment>,
    repairs: &[Repair],
    report: &mut RecoveryReport,
) -> Result<(), LogError> {
    let mut remove = Vec::new();
    for r in repairs {
        match r {
            Repair::Write { seg, offset, bytes } => {
                let Some(s) = segs.get_mut(*seg) else {
                    continue;
                };
                let map = Arc::get_mut(&mut s.map).ok_or_else(|| {
                    LogError::InvalidConfig("segment shared during recovery".into())
                })?;
                if let Some(dst) = map
                    .bytes_mut()
                    .get_mut(*offset as usize..*offset as usize + bytes.len())
                {
                    dst.copy_from_slice(bytes);
                }
                storage
                    .sync(&s.name, &s.map, *offset, offset + bytes.len() as u64)
                    .map_err(io_err(format!("repairing segment {}", s.name)))?;
            }
            Repair::ZeroFrom { seg, offset } => {
                let Some(s) = segs.get_mut(*seg) else {
                    continue;
                };
                let map = Arc::get_mut(&mut s.map).ok_or_else(|| {
                    LogError::InvalidConfig("segment shared during recovery".into())
                })?;
                if let Some(dst) = map.bytes_mut().get_mut(*offset as usize..) {
                    dst.fill(0);
                }
                let len = s.map.len();
                storage
                    .sync(&s.name, &s.map, *offset, len)
                    .map_err(io_err(format!("truncating segment {}", s.name)))?;
            }
            Repair::Remove { seg } => remove.push(*seg),
        }
    }
    for &i in remove.iter().rev() {
        if i < segs.len() {
            let s = segs.remove(i);
            storage.remove(&s.name).map_err(io_err(format!(
                "removing segment {} after the end of the log",
                s.name
            )))?;
            report.removed.push(s.name);
        }
    }
    Ok(())
}

fn fill_report(
    report: &mut RecoveryReport,
    segs: &[Segment],
    scan: &recovery::ScanResult,
    snap: Option<u64>,
) {
    let name = |i: usize| segs.get(i).map(|s| s.name.clone()).unwrap_or_default();
    report.segments = segs.len();
    report.records = scan.records;
    report.last_lsn = scan.last_lsn.map(Lsn);
    report.snapshot_lsn = snap.map(Lsn);
    report.torn_tail = scan.torn.as_ref().map(|t| TornTailReport {
        segment: name(t.at.seg),
        offset: t.at.offset,
        lsn: Lsn(t.lsn),
        bytes_discarded: t.bytes,
        records_discarded: t.records,
    });
    report.skipped = scan
        .skipped
        .iter()
        .map(|c| CorruptionReport {
            segment: name(c.at.seg),
            offset: c.at.offset,
            reason: c.reason.clone(),
        })
        .collect();
}

/// Whether `dir` holds a log: at least one segment or snapshot file named as
/// this module names them. Reads the listing only, so a command that means to
/// read a log can refuse a directory that holds none instead of creating one.
///
/// ```
/// let dir = tempfile::tempdir().unwrap();
/// assert!(!fibflow::log::holds_log(dir.path()).unwrap());
/// ```
pub fn holds_log(dir: &Path) -> Result<bool, LogError> {
    let l = list(&MmapStorage::new(dir))?;
    Ok(!l.segments.is_empty() || !l.snapshots.is_empty())
}

/// Read-only check of every segment and snapshot in `dir`: headers, every
/// frame's checksum and position. Reports each problem with file and offset;
/// a torn tail is reported too. Does not take the lock; run it on a closed log.
pub fn verify(dir: &Path) -> Result<VerifyReport, LogError> {
    let storage = MmapStorage::new(dir);
    let listing = list(&storage)?;
    let mut out = VerifyReport::default();
    let mut files = Vec::new();
    for (_, name) in &listing.segments {
        let bytes = storage
            .read_file(name)
            .map_err(io_err(format!("reading {name}")))?;
        files.push((name.clone(), bytes));
    }
    let segments_id = files
        .iter()
        .find_map(|(_, b)| SegmentHeader::decode(b).ok().map(|h| h.log_id));
    let (snap, bad) = load_snapshot(&storage, &listing.snapshots, segments_id);
    out.problems.extend(bad);
    out.snapshot_lsn = snap.as_ref().map(|(_, l, _)| Lsn(*l));
    let checked: Vec<_> = files
        .iter()
        .map(|(n, b)| (n.clone(), SegmentHeader::decode(b), b.len() as u64))
        .collect();
    if let Err(e) = check_headers(&checked, snap.as_ref().map(|(id, l, _)| (*id, *l))) {
        let segment = match &e {
            LogError::Corrupt { segment, .. } | LogError::ForeignSegment { segment, .. } => {
                segment.clone()
            }
            _ => String::new(),
        };
        out.problems.push(CorruptionReport {
            segment,
            offset: 0,
            reason: e.to_string(),
        });
        return Ok(out);
    }
    let views: Vec<SegView<'_>> = files
        .iter()
        .zip(&checked)
        .filter_map(|((_, b), (_, h, _))| {
            h.as_ref().ok().map(|h| SegView {
                base: h.base_lsn,
                bytes: b,
            })
        })
        .collect();
    let scan = recovery::scan(&views, RecoveryMode::SkipCorrupt);
    let name = |i: usize| {
        listing
            .segments
            .get(i)
            .map(|(_, n)| n.clone())
            .unwrap_or_default()
    };
    out.segments = views.len();
    out.records = scan.records;
    out.last_lsn = scan.last_lsn.map(Lsn);
    for c in &scan.skipped {
        out.problems.push(CorruptionReport {
            segment: name(c.at.seg),
            offset: c.at.offset,
            reason: format!(
                "corrupt frame (records after it were durable): {}",
                c.reason
            ),
        });
    }
    if let Some(t) = &scan.torn {
        out.problems.push(CorruptionReport {
            segment: name(t.at.seg),
            offset: t.at.offset,
            reason: format!(
                "torn tail: {} bytes, {} frames would be cut",
                t.bytes, t.records
            ),
        });
    }
    Ok(out)
}
