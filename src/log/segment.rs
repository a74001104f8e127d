//! One preallocated segment file: its header, its name, and its mapping.
//!
//! Segment header (64 bytes, little-endian):
//!
//! | offset | size | field               | meaning                                            |
//! |-------:|-----:|---------------------|----------------------------------------------------|
//! | 0      | 8    | magic               | `b"FIBFLOWL"`                                      |
//! | 8      | 4    | `format_version` u32| 1                                                  |
//! | 12     | 4    | `header_len` u32    | 64                                                 |
//! | 16     | 8    | `log_id` u64        | random id chosen when the log was created          |
//! | 24     | 8    | `segment_id` u64    | 0, 1, 2, … (also in the file name)                 |
//! | 32     | 8    | `base_lsn` u64      | LSN of byte 0 of this file                         |
//! | 40     | 8    | `segment_len` u64   | file length in bytes                               |
//! | 48     | 12   | reserved            | zero                                               |
//! | 60     | 4    | `crc` u32           | CRC-32C of bytes 0..60                             |
//!
//! The LSN of a byte at file offset `o` is `base_lsn + o`, and segment `k + 1`
//! starts where segment `k` ends (`base_lsn + segment_len`), so LSNs are
//! logical byte positions in one unbounded stream (as in ARIES, Mohan et al. 1992).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use thiserror::Error;

use super::mmap::Mapping;

/// Length of the segment header in bytes; the first frame starts here.
pub const SEGMENT_HEADER_LEN: u64 = 64;
/// Magic bytes at the start of every segment file.
pub const SEGMENT_MAGIC: [u8; 8] = *b"FIBFLOWL";
/// On-disk format version written into segment headers.
pub const FORMAT_VERSION: u32 = 1;

const _: () = assert!(SEGMENT_HEADER_LEN.is_multiple_of(8));

/// Decoded segment header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SegmentHeader {
    /// Identity of the log this segment belongs to.
    pub log_id: u64,
    /// Sequence number of the segment.
    pub segment_id: u64,
    /// LSN of byte 0 of the file.
    pub base_lsn: u64,
    /// File length in bytes.
    pub segment_len: u64,
}

/// Why a segment header is invalid.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum SegmentHeaderError {
    /// The file is shorter than a header.
    #[error("file is shorter than a segment header")]
    Short,
    /// The magic bytes are wrong: not a fibflow segment.
    #[error("not a fibflow segment (bad magic)")]
    Magic,
    /// The header checksum does not match.
    #[error("segment header checksum mismatch")]
    Checksum,
    /// A version this build cannot read.
    #[error("segment format version {0} is not supported by this build")]
    Version(u32),
}

fn get_u64(b: &[u8], at: usize) -> u64 {
    let mut v = [0u8; 8];
    if let Some(s) = b.get(at..at + 8) {
        v.copy_from_slice(s);
    }
    u64::from_le_bytes(v)
}

fn get_u32(b: &[u8], at: usize) -> u32 {
    let mut v = [0u8; 4];
    if let Some(s) = b.get(at..at + 4) {
        v.copy_from_slice(s);
    }
    u32::from_le_bytes(v)
}

impl SegmentHeader {
    /// Encodes the header into its 64 on-disk bytes.
    pub fn encode(&self) -> [u8; SEGMENT_HEADER_LEN as usize] {
        let mut b = [0u8; SEGMENT_HEADER_LEN as usize];
        let fields: [(usize, &[u8]); 7] = [
            (0, &SEGMENT_MAGIC),
            (8, &FORMAT_VERSION.to_le_bytes()),
            (12, &(SEGMENT_HEADER_LEN as u32).to_le_bytes()),
            (16, &self.log_id.to_le_bytes()),
            (24, &self.segment_id.to_le_bytes()),
            (32, &self.base_lsn.to_le_bytes()),
            (40, &self.segment_len.to_le_bytes()),
        ];
        for (at, bytes) in fields {
            if let Some(dst) = b.get_mut(at..at + bytes.len()) {
                dst.copy_from_slice(bytes);
            }
        }
        let crc = crc32c::crc32c(b.get(..60).unwrap_or_default());
        if let Some(dst) = b.get_mut(60..64) {
            dst.copy_from_slice(&crc.to_le_bytes());
        }
        b
    }

    /// Decodes and verifies a header from the start of `b`.
    pub fn decode(b: &[u8]) -> Result<SegmentHeader, SegmentHeaderError> {
        let h = b
            .get(..SEGMENT_HEADER_LEN as usize)
            .ok_or(SegmentHeaderError::Short)?;
        if h.get(..8) != Some(&SEGMENT_MAGIC[..]) {
            return Err(SegmentHeaderError::Magic);
        }
        if crc32c::crc32c(h.get(..60).unwrap_or_default()) != get_u32(h, 60) {
            return Err(SegmentHeaderError::Checksum);
        }
        let version = get_u32(h, 8);
        if version != FORMAT_VERSION || get_u32(h, 12) != SEGMENT_HEADER_LEN as u32 {
            return Err(SegmentHeaderError::Version(version));
        }
        Ok(SegmentHeader {
            log_id: get_u64(h, 16),
            segment_id: get_u64(h, 24),
            base_lsn: get_u64(h, 32),
            segment_len: get_u64(h, 40),
        })
    }
}

/// File name of segment `id`: 20 decimal digits so names sort by id.
pub fn segment_name(id: u64) -> String {
    format!("{id:020}.seg")
}

/// The id in a segment file name, if `name` is one.
pub fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".seg")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// One mapped segment owned by the log.
#[derive(Debug)]
pub(crate) struct Segment {
    pub(crate) header: SegmentHeader,
    pub(crate) name: String,
    pub(crate) map: Arc<Mapping>,
    // Set once every segment before this one was seen fully completed; never cleared
    // (completion only grows). Lets the log compute W1 from this segment alone.
    older_complete: AtomicBool,
}

impl Segment {
    /// A segment over `map`; nothing is known yet about the segments before it.
    pub(crate) fn new(header: SegmentHeader, name: String, map: Arc<Mapping>) -> Segment {
        Segment {
            header,
            name,
            map,
            older_complete: AtomicBool::new(false),
        }
    }

    /// Whether every segment before this one is known to be fully completed.
    pub(crate) fn older_complete(&self) -> bool {
        self.older_complete.load(Ordering::Acquire)
    }

    /// Records that every segment before this one is fully completed.
    pub(crate) fn set_older_complete(&self) {
        self.older_complete.store(true, Ordering::Release);
    }

    /// LSN of byte 0 of the file.
    pub(crate) fn base(&self) -> u64 {
        self.header.base_lsn
    }

    /// LSN one past the last byte of the file (the next segment's base).
    pub(crate) fn end(&self) -> u64 {
        self.header.base_lsn + self.map.len()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::type_complexity)]
mod tests {
    use super::*;

    #[test]
    fn header_table() {
        let h = SegmentHeader {
            log_id: 7,
            segment_id: 3,
            base_lsn: 4096,
            segment_len: 8192,
        };
        let good = h.encode();
        let mut flipped = good;
        flipped[30] ^= 0x10;
        let mut magic = good;
        magic[0] = b'X';
        let cases: [(&str, &[u8], Result<SegmentHeader, SegmentHeaderError>); 4] = [
            ("good", &good, Ok(h)),
            ("flip", &flipped, Err(SegmentHeaderError::Checksum)),
            ("magic", &magic, Err(SegmentHeaderError::Magic)),
            ("short", &good[..10], Err(SegmentHeaderError::Short)),
        ];
        for (name, bytes, want) in cases {
            assert_eq!(SegmentHeader::decode(bytes), want, "{name}");
        }
    }

    #[test]
    fn names() {
        assert_eq!(segment_name(42), "00000000000000000042.seg");
        assert_eq!(parse_segment_name(&segment_name(42)), Some(42));
        for bad in [
            "42.seg",
            "00000000000000000042.wal",
            "0000000000000000004x.seg",
            "LOCK",
        ] {
            assert_eq!(parse_segment_name(bad), None, "{bad}");
        }
    }
}
