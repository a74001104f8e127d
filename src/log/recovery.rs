//! Recovery scan: find the valid prefix of the log, tell a torn tail from
//! corruption in the middle, and repair (truncate or pad) accordingly.
//!
//! Protocol, in order:
//!
//! 1. Walk frames from the first segment's header. A frame is valid if
//!    [`decode_frame`] accepts it *and* its `lsn` equals its position.
//!    A remainder shorter than a frame header at a segment's end is dead space:
//!    continue at the next segment.
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
//! frame before it has evidence (the record itself, or any later frame carries
//! a `stable` at least as large) and cannot be mistaken for a torn tail; and a
//! frame beyond a torn point was never acknowledged, so cutting it loses nothing
//! that was promised.

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

fn distance(segs: &[SegView<'_>], from: Pos, to: Pos) -> u64 {
    lsn_of(segs, to).saturating_sub(lsn_of(segs, from))
}

/// Scans `segs` (contiguous, in order, headers already validated) for the
/// valid prefix. Never panics and never modifies anything.
pub fn scan(segs: &[SegView<'_>], mode: RecoveryMode) -> ScanResult {
    let mut out = ScanResult::default();
    let mut p = Pos::default();
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
