//! Recovery scan: find the valid prefix of the log, tell a torn tail from
//! corruption in the middle, and repair (truncate or pad) accordingly.
//!
//! Protocol, in order:
//!
//! 1. Walk frames from the first segment's header. A frame is valid if
//!    [`decode_frame`] accepts it *and* its `lsn` equals its position.
//!    A remainder shorter than a frame header at a segment's end is dead space:
//!    continue at the next segment. (A frame never straddles segments, so the
//!    scan enters each segment at its first frame until it meets an invalid
//!    one: for a large log, the segments are walked on several threads to
//!    find that frame, and the steps below go on from it.)
//! 2. At the first invalid frame at LSN `p` (zero header included), look for
//!    *evidence* that `p` had been durable: a later valid frame whose `stable`
//!    field is greater than `p`. `stable` is the synced watermark when that frame
//!    was written, so such a frame proves the bytes at `p` were once on disk.
//! 3. No evidence: `p` was never acknowledged as durable, and any later frames
//!    were written concurrently with it. This is a torn tail: cut at `p`.
//! 4. Evidence: acknowledged bytes were damaged. With
//!    [`RecoveryMode::StopAtTornTail`] this is a [`super::LogError::Corrupt`]; with
//!    [`RecoveryMode::SkipCorrupt`] the region up to the next valid frame is
//!    overwritten with pad frames and the scan resumes there.
//!
//! Correct because a record is acknowledged (I2 in `mod.rs`) only when it and
//! every byte before it are synced, so for an acknowledged record every invalid
//! frame before it has evidence once any later frame was written (its `stable`
//! is at least as large) and cannot be mistaken for a torn tail; and a frame
//! beyond a torn point was never acknowledged, so cutting it loses nothing
//! that was promised. The records of the last sync before a clean close get
//! their evidence from the seal closing the log appends (`Inner::seal`); a
//! crash leaves none, and damage to that last batch then reads as a torn tail.

use super::frame::{
    decode_frame, pad_header, FrameError, FrameKind, FRAME_ALIGN, FRAME_HEADER_LEN,
};
use super::segment::SEGMENT_HEADER_LEN;
use super::RecoveryMode;

/// A segment's bytes as recovery sees them.
#[derive(Clone, Copy, Debug)]
pub struct SegView<'a> {
    /// LSN of byte 0.
    pub base: u64,
    /// The whole file, header included.
    pub bytes: &'a [u8],
}

/// A position in the log: segment index (in the scanned slice) and file offset.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Pos {
    /// Index into the scanned segments.
    pub seg: usize,
    /// Byte offset within that segment's file.
    pub offset: u64,
}

/// A damaged region found in the middle of the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CorruptRegion {
    /// Where the first invalid frame starts.
    pub at: Pos,
    /// LSN of that position.
    pub lsn: u64,
    /// Where the next valid frame starts (the scan resumed there).
    pub resume: Pos,
    /// Why the first frame is invalid.
    pub reason: String,
}

/// A cut torn tail.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TornTail {
    /// Where the log now ends.
    pub at: Pos,
    /// LSN of that position.
    pub lsn: u64,
    /// Bytes from the cut to the last non-zero byte of the log.
    pub bytes: u64,
    /// Frames cut: the torn one (if its header was written) and any valid ones after it.
    pub records: u64,
}

/// What the scan found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScanResult {
    /// Valid record frames in the kept prefix (all segments).
    pub records: u64,
    /// LSN of the last valid record.
    pub last_lsn: Option<u64>,
    /// The highest `stable` of the frames kept: every byte below it was
    /// durable before this open (a sealed log proves all of it).
    pub durable: u64,
    /// Where the valid log ends: appends continue here.
    pub end: Pos,
    /// Torn tail that was found (and is to be cut), if any.
    pub torn: Option<TornTail>,
    /// Corrupt regions skipped (only with [`RecoveryMode::SkipCorrupt`]).
    pub skipped: Vec<CorruptRegion>,
    /// Set when corruption was found in [`RecoveryMode::StopAtTornTail`]: scanning stopped here.
    pub corrupt: Option<CorruptRegion>,
}

impl Default for Pos {
    fn default() -> Self {
        Pos {
            seg: 0,
            offset: SEGMENT_HEADER_LEN,
        }
    }
}

fn frame_at<'a>(segs: &[SegView<'a>], p: Pos) -> Result<super::frame::Frame<'a>, FrameError> {
    let seg = segs.get(p.seg).ok_or(FrameError::Empty)?;
    let rest = seg.bytes.get(p.offset as usize..).unwrap_or_default();
    let f = decode_frame(rest)?;
    let expected = seg.base.wrapping_add(p.offset);
    if f.lsn == expected {
        Ok(f)
    } else {
        Err(FrameError::WrongLsn {
            expected,
            found: f.lsn,
        })
    }
}

fn lsn_of(segs: &[SegView<'_>], p: Pos) -> u64 {
    segs.get(p.seg).map_or(0, |s| s.base.wrapping_add(p.offset))
}

/// Looks, after an invalid frame at `bad`, for the first valid frame and for
/// the first valid frame whose `stable` proves `bad` was durable.
struct Evidence {
    first_valid: Option<Pos>,
    proof: Option<Pos>,
    valid_after: u64,
    last_nonzero: Option<(Pos, u64)>,
}

fn search_after(segs: &[SegView<'_>], bad: Pos) -> Evidence {
    let bad_lsn = lsn_of(segs, bad);
    let mut ev = Evidence {
        first_valid: None,
        proof: None,
        valid_after: 0,
        last_nonzero: None,
    };
    let mut p = Pos {
        seg: bad.seg,
        offset: bad.offset + FRAME_ALIGN,
    };
    while let Some(seg) = segs.get(p.seg) {
        let len = seg.bytes.len() as u64;
        while p.offset + FRAME_ALIGN <= len {
            let word = seg
                .bytes
                .get(p.offset as usize..(p.offset + FRAME_ALIGN) as usize)
                .unwrap_or_default();
            if word.iter().any(|&b| b != 0) {
                ev.last_nonzero = Some((p, FRAME_ALIGN));
            } else {
                // A zero run (the preallocated rest of a segment) holds no
                // frame start whose `kind` byte lies in it: jump to where one
                // could start, a block of bytes at a time.
                let z = next_nonzero(seg.bytes, p.offset as usize) as u64;
                let to = z.saturating_sub(24) & !(FRAME_ALIGN - 1);
                if to > p.offset {
                    p.offset = to;
                    continue;
                }
            }
            // Cheap prefilter on the kind/version bytes before a full decode.
            let kv = seg
                .bytes
                .get((p.offset + 24) as usize..(p.offset + 26) as usize);
            if matches!(kv, Some([1 | 2, 1])) {
                if let Ok(f) = frame_at(segs, p) {
                    if f.kind == FrameKind::Record {
                        ev.valid_after += 1;
                    }
                    // A resume point must leave room for a pad frame over the bad region.
                    let room = p.seg > bad.seg || p.offset >= bad.offset + FRAME_HEADER_LEN as u64;
                    if ev.first_valid.is_none() && room {
                        ev.first_valid = Some(p);
                    }
                    if f.stable > bad_lsn && ev.proof.is_none() {
                        ev.proof = Some(p);
                        return ev;
                    }
                }
            }
            p.offset += FRAME_ALIGN;
        }
        p = Pos {
            seg: p.seg + 1,
            offset: SEGMENT_HEADER_LEN,
        };
    }
    ev
}

/// The index of the first non-zero byte of `bytes` at or after `from`, or
/// its length: blocks are compared with a zero block (a vectorized `memcmp`),
/// about a hundred times faster than looking at each word.
fn next_nonzero(bytes: &[u8], from: usize) -> usize {
    const BLOCK: usize = 4096;
    static ZERO: [u8; BLOCK] = [0; BLOCK];
    let mut i = from;
    while let Some(rest) = bytes.get(i..).filter(|r| !r.is_empty()) {
        let chunk = rest.get(..BLOCK).unwrap_or(rest);
        if ZERO.get(..chunk.len()) != Some(chunk) {
            return i + chunk.iter().position(|&b| b != 0).unwrap_or(0);
        }
        i += chunk.len();
    }
    bytes.len().max(from)
}

fn distance(segs: &[SegView<'_>], from: Pos, to: Pos) -> u64 {
    lsn_of(segs, to).saturating_sub(lsn_of(segs, from))
}

/// What a walk of one segment from its first frame found.
#[derive(Clone, Copy, Debug, Default)]
struct SegWalk {
    /// Valid record frames before `stop`.
    records: u64,
    /// LSN of the last of them.
    last_lsn: Option<u64>,
    /// The highest `stable` of the frames before `stop`.
    durable: u64,
    /// Offset of the first invalid frame, or of the dead space at the end.
    stop: u64,
    /// Whether `stop` is an invalid frame (rather than the segment's end).
    invalid: bool,
}

/// Walks segment `i` from its first frame to its first invalid frame or its end.
fn walk_segment(segs: &[SegView<'_>], i: usize) -> SegWalk {
    let mut w = SegWalk::default();
    let Some(seg) = segs.get(i) else {
        return w;
    };
    let len = seg.bytes.len() as u64;
    let mut p = Pos {
        seg: i,
        offset: SEGMENT_HEADER_LEN,
    };
    while p.offset + FRAME_HEADER_LEN as u64 <= len {
        match frame_at(segs, p) {
            Ok(f) => {
                if f.kind == FrameKind::Record {
                    w.records += 1;
                    w.last_lsn = Some(f.lsn);
                }
                w.durable = w.durable.max(f.stable);
                p.offset += f.frame_len;
            }
            Err(_) => {
                w.invalid = true;
                break;
            }
        }
    }
    w.stop = p.offset;
    w
}

/// Logs smaller than this are scanned on the calling thread alone.
const PARALLEL_SCAN_BYTES: u64 = 8 << 20;

/// Where the sequential scan would meet its first invalid frame (or the end of
/// the last segment), with the records before it, found by walking the
/// segments on several threads at once: a frame never straddles segments, so
/// the scan enters every segment at its first frame until it meets an invalid
/// one. `None` when the log is too small to be worth it.
fn parallel_prefix(segs: &[SegView<'_>], min_bytes: u64) -> Option<(Pos, SegWalk)> {
    let bytes: u64 = segs.iter().map(|s| s.bytes.len() as u64).sum();
    let threads = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let threads = threads.min(4).min(segs.len());
    if threads < 2 || bytes < min_bytes {
        return None;
    }
    let next = std::sync::atomic::AtomicUsize::new(0);
    let work = || {
        let mut done = Vec::new();
        loop {
            let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if i >= segs.len() {
                return done;
            }
            done.push((i, walk_segment(segs, i)));
        }
    };
    let mut walks = vec![None; segs.len()];
    let complete = std::thread::scope(|scope| {
        let helpers: Vec<_> = (1..threads)
            .filter_map(|k| {
                std::thread::Builder::new()
                    .name(format!("fibflow-scan-{k}"))
                    .spawn_scoped(scope, work)
                    .ok()
            })
            .collect();
        let mut all = work();
        let mut complete = true;
        for h in helpers {
            match h.join() {
                Ok(done) => all.extend(done),
                Err(_) => complete = false,
            }
        }
        for (i, w) in all {
            if let Some(slot) = walks.get_mut(i) {
                *slot = Some(w);
            }
        }
        complete
    });
    if !complete {
        return None;
    }
    // The sum of the walks up to the first invalid frame.
    let mut sum = SegWalk::default();
    let last = segs.len().saturating_sub(1);
    for (i, w) in walks.into_iter().enumerate() {
        let w = w?;
        sum.records += w.records;
        sum.last_lsn = w.last_lsn.or(sum.last_lsn);
        sum.durable = sum.durable.max(w.durable);
        if w.invalid || i == last {
            let at = Pos {
                seg: i,
                offset: w.stop,
            };
            return Some((at, sum));
        }
    }
    None
}

/// Scans `segs` (contiguous, in order, headers already validated) for the
/// valid prefix. Never panics and never modifies anything.
pub fn scan(segs: &[SegView<'_>], mode: RecoveryMode) -> ScanResult {
    scan_with(segs, mode, PARALLEL_SCAN_BYTES)
}

/// [`scan`], walking the valid prefix in parallel if the log has at least
/// `parallel_min` bytes.
fn scan_with(segs: &[SegView<'_>], mode: RecoveryMode, parallel_min: u64) -> ScanResult {
    let mut out = ScanResult::default();
    let mut p = Pos::default();
    // The valid prefix of a large log is checked in parallel; from the first
    // invalid frame (or the end) on, the scan goes on as below.
    if let Some((at, walked)) = parallel_prefix(segs, parallel_min) {
        p = at;
        out.records = walked.records;
        out.last_lsn = walked.last_lsn;
        out.durable = walked.durable;
    }
    loop {
        let Some(seg) = segs.get(p.seg) else {
            // Ran past the last segment: the log ends at the end of the last one.
            out.end = Pos {
                seg: p.seg.saturating_sub(1),
                offset: segs
                    .last()
                    .map_or(SEGMENT_HEADER_LEN, |s| s.bytes.len() as u64),
            };
            return out;
        };
        let len = seg.bytes.len() as u64;
        if p.offset + FRAME_HEADER_LEN as u64 > len {
            if p.seg + 1 < segs.len() {
                p = Pos {
                    seg: p.seg + 1,
                    offset: SEGMENT_HEADER_LEN,
                };
                continue;
            }
            out.end = p;
            return out;
        }
        match frame_at(segs, p) {
            Ok(f) => {
                if f.kind == FrameKind::Record {
                    out.records += 1;
                    out.last_lsn = Some(f.lsn);
                }
                out.durable = out.durable.max(f.stable);
                p.offset += f.frame_len;
            }
            Err(e) => {
                let ev = search_after(segs, p);
                let lsn = lsn_of(segs, p);
                if let (Some(_), Some(resume)) = (ev.proof, ev.first_valid) {
                    let region = CorruptRegion {
                        at: p,
                        lsn,
                        resume,
                        reason: e.to_string(),
                    };
                    if mode == RecoveryMode::StopAtTornTail {
                        out.end = p;
                        out.corrupt = Some(region);
                        return out;
                    }
                    out.skipped.push(region);
                    p = resume;
                } else {
                    let bytes = ev.last_nonzero.map_or(
                        if e == FrameError::Empty {
                            0
                        } else {
                            FRAME_ALIGN
                        },
                        |(q, n)| distance(segs, p, q) + n,
                    );
                    let records = ev.valid_after + u64::from(e != FrameError::Empty);
                    if bytes > 0 || records > 0 {
                        out.torn = Some(TornTail {
                            at: p,
                            lsn,
                            bytes,
                            records,
                        });
                    }
                    out.end = p;
                    return out;
                }
            }
        }
    }
}

/// A repair to apply to segment `seg`: write `bytes` at `offset`, or zero from `offset` to the end.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Repair {
    /// Overwrite bytes at an offset (a pad frame header).
    Write {
        /// Segment index.
        seg: usize,
        /// File offset.
        offset: u64,
        /// Bytes to write.
        bytes: Vec<u8>,
    },
    /// Zero everything from `offset` to the end of segment `seg`.
    ZeroFrom {
        /// Segment index.
        seg: usize,
        /// File offset.
        offset: u64,
    },
    /// Remove segment `seg` entirely (it lies after the cut).
    Remove {
        /// Segment index.
        seg: usize,
    },
}

/// Turns a scan result into the writes that make the log consistent: pad
/// frames over skipped regions, zeros after the end, removal of later segments.
pub fn repairs(segs: &[SegView<'_>], scan: &ScanResult) -> Vec<Repair> {
    let mut out = Vec::new();
    for region in &scan.skipped {
        let mut p = region.at;
        while p < region.resume {
            let seg_len = segs.get(p.seg).map_or(0, |s| s.bytes.len() as u64);
            let stop = if p.seg == region.resume.seg {
                region.resume.offset
            } else {
                seg_len
            };
            if stop >= p.offset + FRAME_HEADER_LEN as u64 {
                let pad = pad_header(
                    lsn_of(segs, p),
                    0,
                    (stop - p.offset - FRAME_HEADER_LEN as u64) as u32,
                );
                out.push(Repair::Write {
                    seg: p.seg,
                    offset: p.offset,
                    bytes: pad.to_vec(),
                });
            } else if stop > p.offset {
                out.push(Repair::Write {
                    seg: p.seg,
                    offset: p.offset,
                    bytes: vec![0; (stop - p.offset) as usize],
                });
            }
            p = Pos {
                seg: p.seg + 1,
                offset: SEGMENT_HEADER_LEN,
            };
        }
    }
    if scan.corrupt.is_some() {
        return Vec::new();
    }
    if scan.torn.is_some() {
        out.push(Repair::ZeroFrom {
            seg: scan.end.seg,
            offset: scan.end.offset,
        });
    }
    // Segments after the end hold only torn bytes or nothing (prepared ahead).
    for seg in scan.end.seg + 1..segs.len() {
        out.push(Repair::Remove { seg });
    }
    out
}

/// Checks the property the fuzzer and tests rely on: the prefix up to
/// `scan.end` decodes frame by frame with matching LSNs (pads allowed).
pub fn prefix_is_valid(segs: &[SegView<'_>], scan: &ScanResult) -> bool {
    let mut p = Pos::default();
    let mut skipped = scan.skipped.iter();
    let mut next_skip = skipped.next();
    while p < scan.end {
        if next_skip.is_some_and(|r| r.at == p) {
            p = next_skip.map_or(p, |r| r.resume);
            next_skip = skipped.next();
            continue;
        }
        let Some(seg) = segs.get(p.seg) else {
            return false;
        };
        if p.offset + FRAME_HEADER_LEN as u64 > seg.bytes.len() as u64 {
            p = Pos {
                seg: p.seg + 1,
                offset: SEGMENT_HEADER_LEN,
            };
            continue;
        }
        match frame_at(segs, p) {
            Ok(f) => p.offset += f.frame_len,
            Err(_) => return false,
        }
    }
    p == scan.end
}

/// Fuzz/corpus property for `frame_decode`: never panics; an `Ok` frame fits
/// in the input and re-encodes to the same bytes.
pub fn check_frame_decode(data: &[u8]) {
    if let Ok(f) = decode_frame(data) {
        assert!(
            f.frame_len as usize <= data.len(),
            "frame longer than its input"
        );
        if f.kind == FrameKind::Record {
            let mut again = Vec::new();
            super::frame::encode_record(&mut again, f.lsn, f.stable, f.body);
            assert_eq!(
                Some(&again[..]),
                data.get(..f.frame_len as usize),
                "decode/encode round trip"
            );
        }
    }
}

/// Fuzz/corpus property for `recovery_scan`: an arbitrary image (treated as
/// one segment at LSN 0, its first 64 bytes as the header) scans without
/// panicking, in both modes, to a prefix that decodes frame by frame.
pub fn check_recovery_scan(data: &[u8]) {
    let segs = [SegView {
        base: 0,
        bytes: data,
    }];
    for mode in [RecoveryMode::StopAtTornTail, RecoveryMode::SkipCorrupt] {
        let result = scan(&segs, mode);
        assert!(
            result.end.seg == 0 && result.end.offset <= (data.len() as u64).max(SEGMENT_HEADER_LEN),
            "end out of range: {result:?}"
        );
        assert!(
            prefix_is_valid(&segs, &result),
            "kept prefix does not decode: {result:?}"
        );
        let _ = repairs(&segs, &result);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use crate::log::frame::{encode_record, frame_len};
    use rand::{Rng, SeedableRng};

    const SEG: u64 = 2048;

    /// Four segments of `SEG` bytes: full ones end with a pad frame (or a
    /// remainder too short for one), the last is half full. Every frame's
    /// `stable` is its own LSN, so damage before any frame is provably corruption.
    fn image() -> Vec<Vec<u8>> {
        let mut segs = Vec::new();
        let mut i = 0u32;
        for s in 0..4u64 {
            let base = s * SEG;
            let mut img = vec![0u8; SEGMENT_HEADER_LEN as usize];
            let fill = if s == 3 { SEG / 2 } else { SEG };
            loop {
                let body = vec![i as u8; (i as usize * 7) % 90];
                let at = img.len() as u64;
                if at + frame_len(body.len() as u64) > fill {
                    break;
                }
                encode_record(&mut img, base + at, base + at, &body);
                i += 1;
            }
            let at = img.len() as u64;
            if s < 3 && SEG - at >= FRAME_HEADER_LEN as u64 {
                let pad = pad_header(base + at, base + at, (SEG - at) as u32 - 32);
                img.extend_from_slice(&pad);
            }
            img.resize(SEG as usize, 0);
            segs.push(img);
        }
        segs
    }

    fn views(segs: &[Vec<u8>]) -> Vec<SegView<'_>> {
        segs.iter()
            .enumerate()
            .map(|(i, b)| SegView {
                base: i as u64 * SEG,
                bytes: b,
            })
            .collect()
    }

    fn both_ways(segs: &[Vec<u8>], ctx: &str) {
        let v = views(segs);
        for mode in [RecoveryMode::StopAtTornTail, RecoveryMode::SkipCorrupt] {
            let sequential = scan_with(&v, mode, u64::MAX);
            let parallel = scan_with(&v, mode, 0);
            assert_eq!(parallel, sequential, "{ctx} {mode:?}");
        }
    }

    #[test]
    fn next_nonzero_finds_the_first_non_zero_byte() {
        for len in [0usize, 1, 7, 4095, 4096, 4097, 10_000] {
            let zeros = vec![0u8; len];
            for from in [0, 1, len / 2, len] {
                assert_eq!(next_nonzero(&zeros, from), len.max(from));
            }
            for at in [0, 1, 4095, 4096, 9_999].into_iter().filter(|&a| a < len) {
                let mut b = zeros.clone();
                b[at] = 7;
                for from in [0, at.saturating_sub(1), at] {
                    assert_eq!(next_nonzero(&b, from), at, "len {len} at {at} from {from}");
                }
                assert_eq!(next_nonzero(&b, at + 1), len);
            }
        }
    }

    #[test]
    fn parallel_prefix_scan_equals_the_sequential_scan() {
        let clean = image();
        both_ways(&clean, "clean");
        let s = scan_with(&views(&clean), RecoveryMode::StopAtTornTail, 0);
        assert!(
            s.records > 40 && s.torn.is_none() && s.corrupt.is_none(),
            "{s:?}"
        );
        let mut zeroed = clean.clone();
        zeroed[1][64..].fill(0);
        both_ways(&zeroed, "a zeroed middle segment");
        let mut rng = rand::rngs::StdRng::seed_from_u64(0x5ca1);
        for _ in 0..2000 {
            let mut segs = clean.clone();
            for _ in 0..rng.random_range(1..3) {
                let s = rng.random_range(0..segs.len());
                let byte = rng.random_range(SEGMENT_HEADER_LEN as usize..SEG as usize);
                let bit = rng.random_range(0..8u32);
                segs[s][byte] ^= 1 << bit;
            }
            both_ways(&segs, "random flips");
        }
    }
}
