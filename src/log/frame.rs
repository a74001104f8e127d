//! Frame encoding and decoding: the unit of the log.
//!
//! A frame is a 32-byte header followed by the body, padded with zero bytes to
//! a multiple of 8. All integers are little-endian and fixed-width.
//!
//! | offset | size | field          | meaning                                                         |
//! |-------:|-----:|----------------|-----------------------------------------------------------------|
//! | 0      | 4    | `body_len` u32 | body length in bytes (for a pad frame: bytes skipped after header) |
//! | 4      | 4    | `crc` u32      | CRC-32C (Castagnoli) of bytes 0..4, 8..32, body and padding      |
//! | 8      | 8    | `lsn` u64      | logical byte position of this frame; must equal where it lies    |
//! | 16     | 8    | `stable` u64   | every frame starting below this LSN was durable when this one was written |
//! | 24     | 1    | `kind` u8      | 1 = record, 2 = pad (skip `body_len` bytes)                      |
//! | 25     | 1    | `version` u8   | frame format version, 1                                          |
//! | 26     | 6    | reserved       | zero                                                             |
//!
//! A header of 32 zero bytes is never valid (`kind` is never 0), so zero-filled
//! space after the tail reads as "end of log" ([`FrameError::Empty`]).
//! For a pad frame the CRC covers only the header: its body is dead space.

use thiserror::Error;

/// Length of a frame header in bytes.
pub const FRAME_HEADER_LEN: usize = 32;
/// Frames start at offsets that are multiples of this.
pub const FRAME_ALIGN: u64 = 8;
/// Version byte written into every frame header.
pub const FRAME_VERSION: u8 = 1;
/// Largest record body accepted by [`crate::log::Log::append`]: 16 MiB.
pub const MAX_RECORD_LEN: usize = 16 << 20;

const _: () = assert!(FRAME_HEADER_LEN.is_multiple_of(8));
const _: () = assert!(FRAME_ALIGN.is_power_of_two());

/// What a frame carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FrameKind {
    /// An opaque record appended by the user.
    Record,
    /// Dead space: the rest of a segment after a rollover, or a skipped corrupt region.
    Pad,
}

impl FrameKind {
    fn to_byte(self) -> u8 {
        match self {
            FrameKind::Record => 1,
            FrameKind::Pad => 2,
        }
    }
}

/// A decoded, checksum-verified frame borrowing its body from the input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Frame<'a> {
    /// Logical byte position the frame claims to lie at.
    pub lsn: u64,
    /// Every frame starting below this LSN was durable when this frame was written.
    pub stable: u64,
    /// Record or pad.
    pub kind: FrameKind,
    /// The record bytes (empty for a pad frame).
    pub body: &'a [u8],
    /// Total bytes the frame occupies, header and padding included.
    pub frame_len: u64,
}

/// Why bytes are not a valid frame.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum FrameError {
    /// The header is all zero bytes: the end of the log.
    #[error("end of log (zero header)")]
    Empty,
    /// Fewer bytes are left than the header or body needs.
    #[error("frame needs {need} bytes but only {have} remain")]
    Truncated {
        /// Bytes the frame needs.
        need: u64,
        /// Bytes available.
        have: u64,
    },
    /// The version byte is not one this build reads.
    #[error("unknown frame version {0}")]
    Version(u8),
    /// The kind byte is not a known kind.
    #[error("unknown frame kind {0}")]
    Kind(u8),
    /// A reserved byte is not zero.
    #[error("reserved header bytes are not zero")]
    Reserved,
    /// A record body is longer than [`MAX_RECORD_LEN`].
    #[error("record body of {0} bytes exceeds the maximum")]
    TooLong(u64),
    /// The frame is intact but claims another position (set by callers that know the position).
    #[error("frame claims LSN {found} but lies at LSN {expected}")]
    WrongLsn {
        /// The position the frame lies at.
        expected: u64,
        /// The LSN in its header.
        found: u64,
    },
    /// The stored CRC does not match the bytes.
    #[error("checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    Checksum {
        /// CRC read from the header.
        stored: u32,
        /// CRC computed over the bytes.
        computed: u32,
    },
}

/// Rounds `n` up to a multiple of [`FRAME_ALIGN`].
pub const fn align_up(n: u64) -> u64 {
    n.saturating_add(FRAME_ALIGN - 1) & !(FRAME_ALIGN - 1)
}

/// Total on-disk length of a record frame with a body of `body_len` bytes.
pub const fn frame_len(body_len: u64) -> u64 {
    align_up(FRAME_HEADER_LEN as u64 + body_len)
}

const ZEROS: [u8; 8] = [0; 8];

fn crc_of(header: &[u8; FRAME_HEADER_LEN], body: &[u8], padding: usize) -> u32 {
    let (len_bytes, rest) = header.split_at(4);
    let rest = rest.get(4..).unwrap_or_default();
    let crc = crc32c::crc32c(len_bytes);
    let crc = crc32c::crc32c_append(crc, rest);
    let crc = crc32c::crc32c_append(crc, body);
    crc32c::crc32c_append(crc, ZEROS.get(..padding).unwrap_or_default())
}

fn put_u64(buf: &mut [u8; FRAME_HEADER_LEN], at: usize, v: u64) {
    if let Some(dst) = buf.get_mut(at..at + 8) {
        dst.copy_from_slice(&v.to_le_bytes());
    }
}

fn put_u32(buf: &mut [u8; FRAME_HEADER_LEN], at: usize, v: u32) {
    if let Some(dst) = buf.get_mut(at..at + 4) {
        dst.copy_from_slice(&v.to_le_bytes());
    }
}

/// Builds the header of a record frame for `body` at position `lsn`.
///
/// The caller writes the header, then `body`, then zero padding up to
/// [`frame_len`]. `body.len()` must not exceed [`MAX_RECORD_LEN`].
pub fn record_header(lsn: u64, stable: u64, body: &[u8]) -> [u8; FRAME_HEADER_LEN] {
    let body_len = body.len() as u64;
    let padding = (frame_len(body_len) - FRAME_HEADER_LEN as u64 - body_len) as usize;
    let mut h = header_without_crc(FrameKind::Record, body_len as u32, lsn, stable);
    let crc = crc_of(&h, body, padding);
    put_u32(&mut h, 4, crc);
    h
}

/// Builds a pad frame header at `lsn` that makes a reader skip `pad_len`
/// bytes after the header (`pad_len` is a multiple of 8).
pub fn pad_header(lsn: u64, stable: u64, pad_len: u32) -> [u8; FRAME_HEADER_LEN] {
    let mut h = header_without_crc(FrameKind::Pad, pad_len, lsn, stable);
    let crc = crc_of(&h, &[], 0);
    put_u32(&mut h, 4, crc);
    h
}

fn header_without_crc(kind: FrameKind, len: u32, lsn: u64, stable: u64) -> [u8; FRAME_HEADER_LEN] {
    let mut h = [0u8; FRAME_HEADER_LEN];
    put_u32(&mut h, 0, len);
    put_u64(&mut h, 8, lsn);
    put_u64(&mut h, 16, stable);
    if let Some(b) = h.get_mut(24) {
        *b = kind.to_byte();
    }
    if let Some(b) = h.get_mut(25) {
        *b = FRAME_VERSION;
    }
    h
}

/// The kind byte and body length of a frame header, unchecked: for frames
/// already verified (replay of the prefix the open's scan checked).
pub(super) fn kind_and_body_len(header: &[u8; FRAME_HEADER_LEN]) -> (u8, u64) {
    (header[24], u64::from(read_u32(header, 0)))
}

fn read_u64(b: &[u8], at: usize) -> u64 {
    let mut v = [0u8; 8];
    if let Some(src) = b.get(at..at + 8) {
        v.copy_from_slice(src);
    }
    u64::from_le_bytes(v)
}

fn read_u32(b: &[u8], at: usize) -> u32 {
    let mut v = [0u8; 4];
    if let Some(src) = b.get(at..at + 4) {
        v.copy_from_slice(src);
    }
    u32::from_le_bytes(v)
}

/// Decodes and verifies the frame at the start of `buf`.
///
/// Never panics, whatever the input. The caller checks that `frame.lsn`
/// equals the position it read the frame from.
pub fn decode_frame(buf: &[u8]) -> Result<Frame<'_>, FrameError> {
    let frame = decode_header(buf)?;
    verify_frame(buf, &frame)?;
    Ok(frame)
}

/// The first half of [`decode_frame`]: checks everything but the checksum
/// (empty header, version, reserved bytes, kind, length, room in `buf`).
///
/// The frame is *not* verified: pass it and the same `buf` to
/// [`verify_frame`] before trusting its contents. Replay threads that split
/// the log between them walk every frame with this and verify only their own.
pub fn decode_header(buf: &[u8]) -> Result<Frame<'_>, FrameError> {
    let have = buf.len() as u64;
    let Some(header) = buf.first_chunk::<FRAME_HEADER_LEN>() else {
        if buf.iter().all(|&b| b == 0) {
            return Err(FrameError::Empty);
        }
        return Err(FrameError::Truncated {
            need: FRAME_HEADER_LEN as u64,
            have,
        });
    };
    if header.iter().all(|&b| b == 0) {
        return Err(FrameError::Empty);
    }
    let version = header.get(25).copied().unwrap_or_default();
    if version != FRAME_VERSION {
        return Err(FrameError::Version(version));
    }
    if header
        .get(26..32)
        .is_some_and(|r| r.iter().any(|&b| b != 0))
    {
        return Err(FrameError::Reserved);
    }
    let kind = match header.get(24).copied().unwrap_or_default() {
        1 => FrameKind::Record,
        2 => FrameKind::Pad,
        other => return Err(FrameError::Kind(other)),
    };
    let body_len = u64::from(read_u32(header, 0));
    if kind == FrameKind::Record && body_len > MAX_RECORD_LEN as u64 {
        return Err(FrameError::TooLong(body_len));
    }
    let total = frame_len(body_len);
    if total > have {
        return Err(FrameError::Truncated { need: total, have });
    }
    let body = match kind {
        FrameKind::Record => buf
            .get(FRAME_HEADER_LEN..FRAME_HEADER_LEN + body_len as usize)
            .unwrap_or_default(),
        FrameKind::Pad => &[][..],
    };
    Ok(Frame {
        lsn: read_u64(header, 8),
        stable: read_u64(header, 16),
        kind,
        body,
        frame_len: total,
    })
}

/// The second half of [`decode_frame`]: checks the CRC of `frame`, which
/// [`decode_header`] read from the start of `buf`, and that its padding is zero.
pub fn verify_frame(buf: &[u8], frame: &Frame<'_>) -> Result<(), FrameError> {
    let total = frame.frame_len as usize;
    let covered_end = match frame.kind {
        FrameKind::Record => total,
        FrameKind::Pad => FRAME_HEADER_LEN,
    };
    let stored = read_u32(buf, 4);
    // The same CRC as `crc_of`, in two calls instead of four: bytes 8.. of the
    // header, the body and the padding lie contiguous in `buf` (8-aligned in a
    // segment), and the crc32c crate has a high cost per call on small inputs.
    let computed = crc32c::crc32c_append(
        crc32c::crc32c(buf.get(..4).unwrap_or_default()),
        buf.get(8..covered_end).unwrap_or_default(),
    );
    // Padding bytes are covered by the CRC as zeros, so they must be zero.
    let pad_ok = match frame.kind {
        FrameKind::Record => buf
            .get(FRAME_HEADER_LEN + frame.body.len()..total)
            .is_some_and(|p| p.iter().all(|&b| b == 0)),
        FrameKind::Pad => true,
    };
    if stored != computed || !pad_ok {
        return Err(FrameError::Checksum { stored, computed });
    }
    Ok(())
}

/// Writes a complete record frame for `body` into `out` (which must be at least
/// [`frame_len`] long); used by tests, fixtures and tools that build images.
pub fn encode_record(out: &mut Vec<u8>, lsn: u64, stable: u64, body: &[u8]) {
    out.extend_from_slice(&record_header(lsn, stable, body));
    out.extend_from_slice(body);
    let padding = frame_len(body.len() as u64) as usize - FRAME_HEADER_LEN - body.len();
    out.extend_from_slice(ZEROS.get(..padding).unwrap_or_default());
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::type_complexity)]
mod tests {
    use super::*;

    fn encoded(lsn: u64, body: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        encode_record(&mut v, lsn, 0, body);
        v
    }

    /// One table: (name, bytes, expected outcome as a short string).
    fn check(name: &str, input: &[u8], expected: &Result<(u64, FrameKind, Vec<u8>), &str>) {
        let got = decode_frame(input).map(|f| (f.lsn, f.kind, f.body.to_vec()));
        match (&got, expected) {
            (Ok(g), Ok(e)) => assert_eq!(g, e, "{name}"),
            (Err(g), Err(e)) => assert!(
                format!("{g:?}").starts_with(e),
                "{name}: got {g:?}, want {e}"
            ),
            _ => panic!("{name}: got {got:?}, want {expected:?}"),
        }
    }

    #[test]
    fn decode_table() {
        let ok = encoded(64, b"hello");
        let mut flipped = ok.clone();
        flipped[33] ^= 1;
        let mut bad_pad = ok.clone();
        let last = bad_pad.len() - 1;
        bad_pad[last] = 1;
        let mut bad_version = ok.clone();
        bad_version[25] = 9;
        let mut bad_kind = ok.clone();
        bad_kind[24] = 7;
        let mut reserved = ok.clone();
        reserved[30] = 1;
        let pad = pad_header(128, 0, 64);
        let mut pad_frame = pad.to_vec();
        pad_frame.extend_from_slice(&[0xAA; 64]);
        let cases: Vec<(&str, Vec<u8>, Result<(u64, FrameKind, Vec<u8>), &str>)> = vec![
            (
                "valid",
                ok.clone(),
                Ok((64, FrameKind::Record, b"hello".to_vec())),
            ),
            (
                "empty record",
                encoded(8, b""),
                Ok((8, FrameKind::Record, vec![])),
            ),
            ("zero header", vec![0; 64], Err("Empty")),
            ("short zero", vec![0; 5], Err("Empty")),
            ("short", vec![1; 5], Err("Truncated")),
            ("body cut", ok[..ok.len() - 8].to_vec(), Err("Truncated")),
            ("bit flip", flipped, Err("Checksum")),
            ("dirty padding", bad_pad, Err("Checksum")),
            ("version", bad_version, Err("Version")),
            ("kind", bad_kind, Err("Kind")),
            ("reserved", reserved, Err("Reserved")),
            ("pad", pad_frame, Ok((128, FrameKind::Pad, vec![]))),
            ("pad cut", pad.to_vec(), Err("Truncated")),
        ];
        for (name, input, expected) in &cases {
            check(name, input, expected);
        }
    }

    #[test]
    fn lengths_are_aligned() {
        for (body, want) in [
            (0u64, 32u64),
            (1, 40),
            (8, 40),
            (9, 48),
            (64, 96),
            (1024, 1056),
        ] {
            assert_eq!(frame_len(body), want, "body {body}");
            assert_eq!(encoded(8, &vec![3; body as usize]).len() as u64, want);
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
            let _ = decode_frame(&bytes);
        }

        #[test]
        fn roundtrip(lsn in 0u64..u64::MAX / 2, stable in proptest::prelude::any::<u64>(), body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)) {
            let mut v = Vec::new();
            encode_record(&mut v, lsn, stable, &body);
            let f = decode_frame(&v).unwrap();
            proptest::prop_assert_eq!((f.lsn, f.stable, f.kind, f.body, f.frame_len), (lsn, stable, FrameKind::Record, &body[..], v.len() as u64));
        }
    }
}
