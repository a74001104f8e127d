//! Snapshots: written atomically, loaded newest-valid-first.
//!
//! File `snap-<lsn:020>.snap`, little-endian:
//!
//! | offset | size | field            | meaning                                       |
//! |-------:|-----:|------------------|-----------------------------------------------|
//! | 0      | 8    | magic            | `b"FIBFLOWS"`                                 |
//! | 8      | 4    | `version` u32    | 1                                             |
//! | 12     | 4    | `header_len` u32 | 48                                            |
//! | 16     | 8    | `log_id` u64     | the log's identity                            |
//! | 24     | 8    | `lsn` u64        | records with LSN <= this are in the snapshot  |
//! | 32     | 8    | `body_len` u64   | bytes of the body                             |
//! | 40     | 4    | reserved         | zero                                          |
//! | 44     | 4    | `crc` u32        | CRC-32C of bytes 0..44 and the body           |
//! | 48     | …    | body             | opaque bytes from the caller                  |
//!
//! Write protocol: write `<name>.tmp`, fsync it, rename to `<name>`, fsync the
//! directory (the rename is then durable), and only then delete older snapshots
//! and covered segments. A crash at any step leaves either the old snapshot
//! (plus all segments it needs) or the new one.

use thiserror::Error;

/// Snapshot header length in bytes.
pub const SNAPSHOT_HEADER_LEN: usize = 48;
/// Magic bytes at the start of a snapshot file.
pub const SNAPSHOT_MAGIC: [u8; 8] = *b"FIBFLOWS";

/// Why a snapshot file is invalid.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum SnapshotError {
    /// Too short, bad magic, or unknown version.
    #[error("not a fibflow v1 snapshot")]
    Format,
    /// The checksum does not match (torn or damaged file).
    #[error("snapshot checksum mismatch")]
    Checksum,
}

/// File name of the snapshot covering `lsn`.
pub fn snapshot_name(lsn: u64) -> String {
    format!("snap-{lsn:020}.snap")
}

/// The LSN in a snapshot file name, if `name` is one.
pub fn parse_snapshot_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("snap-")?.strip_suffix(".snap")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Encodes a snapshot file.
pub fn encode_snapshot(log_id: u64, lsn: u64, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(SNAPSHOT_HEADER_LEN + body.len());
    out.extend_from_slice(&SNAPSHOT_MAGIC);
    out.extend_from_slice(&1u32.to_le_bytes());
    out.extend_from_slice(&(SNAPSHOT_HEADER_LEN as u32).to_le_bytes());
    out.extend_from_slice(&log_id.to_le_bytes());
    out.extend_from_slice(&lsn.to_le_bytes());
    out.extend_from_slice(&(body.len() as u64).to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    let crc = crc32c::crc32c_append(crc32c::crc32c(&out), body);
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(body);
    out
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut v = [0u8; 8];
    if let Some(s) = b.get(at..at + 8) {
        v.copy_from_slice(s);
    }
    u64::from_le_bytes(v)
}

/// A decoded snapshot: `(log_id, lsn, body)`.
pub fn decode_snapshot(b: &[u8]) -> Result<(u64, u64, &[u8]), SnapshotError> {
    let header = b.get(..SNAPSHOT_HEADER_LEN).ok_or(SnapshotError::Format)?;
    if header.get(..8) != Some(&SNAPSHOT_MAGIC[..])
        || header.get(8..16) != Some(&[1, 0, 0, 0, 48, 0, 0, 0][..])
    {
        return Err(SnapshotError::Format);
    }
    let body_len = u64_at(header, 32);
    let body = b.get(SNAPSHOT_HEADER_LEN..).ok_or(SnapshotError::Format)?;
    if body.len() as u64 != body_len {
        return Err(SnapshotError::Checksum);
    }
    let mut crc_bytes = [0u8; 4];
    crc_bytes.copy_from_slice(header.get(44..48).unwrap_or(&[0; 4]));
    let crc = crc32c::crc32c_append(crc32c::crc32c(header.get(..44).unwrap_or_default()), body);
    if crc != u32::from_le_bytes(crc_bytes) {
        return Err(SnapshotError::Checksum);
    }
    let lsn = u64_at(header, 24);
    // No log reaches 2^62 bytes: a larger LSN is not one this log wrote.
    if lsn >= 1 << 62 {
        return Err(SnapshotError::Format);
    }
    Ok((u64_at(header, 16), lsn, body))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::type_complexity)]
mod tests {
    use super::*;

    #[test]
    fn table() {
        let good = encode_snapshot(9, 1234, b"state");
        let mut flipped = good.clone();
        flipped[50] ^= 4;
        let cases: [(&str, &[u8], Result<(u64, u64, &[u8]), SnapshotError>); 4] = [
            ("good", &good, Ok((9, 1234, &b"state"[..]))),
            ("flip", &flipped, Err(SnapshotError::Checksum)),
            ("cut", &good[..good.len() - 1], Err(SnapshotError::Checksum)),
            ("short", &good[..20], Err(SnapshotError::Format)),
        ];
        for (name, bytes, want) in cases {
            assert_eq!(decode_snapshot(bytes), want, "{name}");
        }
        assert_eq!(parse_snapshot_name(&snapshot_name(77)), Some(77));
        assert_eq!(parse_snapshot_name("snap-1.snap"), None);
    }
}
