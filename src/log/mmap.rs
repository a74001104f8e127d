//! The only `unsafe` code in fibflow: a memory mapping with a small safe API.
//!
//! A [`Mapping`] hands out disjoint write [`Slot`]s by an atomic add on its
//! tail, tracks which slots are finished, and lets readers see only the prefix
//! in which every slot is finished. Exclusive (`&mut self`) access gives the
//! whole byte range, for recovery and preparation before the mapping is shared.
//!
//! Soundness argument, as numbered invariants relied on by every `unsafe` block:
//!
//! - M1: `ptr`/`len` describe memory owned by `map` for the whole life of the
//!   `Mapping`; it is never remapped, grown or shrunk (there is no API for it).
//! - M2: the directory lock (`lock.rs`) is held by the `Log` that owns the
//!   file, so no other process of ours writes the file; memmap2 documents that
//!   outside modification of a mapped file is undefined behaviour. Users must
//!   not edit segment files while a log is open (documented in `docs/log-format.md`).
//! - M3: slots are disjoint: each is the result of one `fetch_add` on `tail`
//!   (`Completion::reserve`), clipped to `[0, len)`.
//! - M4: `completed` only moves over bytes whose slots were dropped, and slots
//!   are only ever issued at offsets `>= tail >= completed`, so bytes below
//!   `completed` are never written again while `&self` borrows exist
//!   (`completion.rs` has the protocol, and a loom model of it).
//!
//! Write-through (set with [`Mapping::set_write_through`] before the mapping
//! is shared; file-backed mappings only): [`Slot::write`] copies the bytes into
//! the file's page cache with `pwritev` at the slot's own offset instead of a
//! `memcpy` through the mapping. The mapping is `MAP_SHARED`, so on Linux it
//! shows the same page-cache pages and readers see the bytes once the call
//! returns. The point is what the kernel marks dirty: a store through the
//! mapping dirties the whole (possibly large) folio, so the next sync writes it
//! all back (128 KiB to 1 MiB per sync in `cargo bench --bench log_append --
//! sync_mechanism`); the write path marks only the touched blocks, so the sync
//! writes what a plain `pwrite` would (`docs/log-format.md`, "Sync mechanism"). If `pwritev` fails or is short,
//! the slot falls back to the `memcpy`: the bytes still reach the same pages,
//! and the range sync that follows writes them back whichever way they were
//! dirtied (a failed *sync*, not a failed copy, is what poisons the log).
//!
//! The tail and `completed` live in `Completion` (`completion.rs`), which
//! has no `unsafe` and is model-checked by `.ci/loom`.
#![allow(unsafe_code)]

use memmap2::{MmapOptions, MmapRaw};
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::ptr::NonNull;

use super::completion::Completion;

/// Page granularity used for prefaulting.
const PAGE: u64 = 4096;

/// Most parts one write-through `pwritev` takes (more fall back to copying through the mapping).
const MAX_PARTS: usize = 4;

/// Where a mapping's bytes live.
#[derive(Debug)]
enum Backing {
    /// A shared mapping of a segment file, and the file (for write-through `pwritev`).
    File(MmapRaw, File),
    /// Anonymous memory (tests' `SimStorage` and the Memory baseline).
    Anon(MmapRaw),
}

/// A fixed-size mapped region with lock-free slot reservation.
#[derive(Debug)]
pub struct Mapping {
    // M3/M4: the tail and the `completed` watermark.
    done: Completion,
    // M1: `ptr` points at `len` bytes owned by `map`.
    map: Backing,
    ptr: NonNull<u8>,
    len: u64,
    // Slot writes go through `pwritev` on the file instead of the mapping (file backing only).
    write_through: bool,
}

// SAFETY: the mapping is plain memory; concurrent access is coordinated by M3/M4
// (disjoint slots for writers, readers only below `completed`), so sharing the
// raw pointer between threads is sound.
unsafe impl Send for Mapping {}
// SAFETY: see `Send` above; every `&self` method upholds M3/M4.
unsafe impl Sync for Mapping {}

/// Result of [`Mapping::reserve`].
#[derive(Debug)]
pub enum Reserve<'a> {
    /// The whole request fits: write the frame here.
    Fits(Slot<'a>),
    /// The request crossed the end: this slot is the rest of the mapping
    /// (possibly shorter than a frame header) and must be marked dead.
    Straddles(Slot<'a>),
    /// The mapping was already full before this request.
    Full,
}

/// Exclusive write access to `[start, end)` of a mapping; finishing it (drop)
/// publishes the bytes to readers once every earlier slot is finished too.
#[derive(Debug)]
pub struct Slot<'a> {
    map: &'a Mapping,
    start: u64,
    end: u64,
    // A whole frame (`Fits`), as opposed to the dead rest of a mapping (`Straddles`).
    record: bool,
}

impl Mapping {
    /// Maps `len` bytes of `file` shared and read-write, prefaulting page tables.
    /// Keeps a duplicate of the file descriptor for write-through slots.
    pub fn map_file(file: &File, len: u64) -> io::Result<Mapping> {
        Self::map_file_with(file, len, true)
    }

    /// [`Mapping::map_file`] without prefaulting page tables, for a segment
    /// that recovery reads once from start to end: its reads fault pages in
    /// as they go (the kernel maps a run of cached pages per fault), which
    /// costs less than mapping every page up front on one thread.
    pub fn map_file_lazily(file: &File, len: u64) -> io::Result<Mapping> {
        Self::map_file_with(file, len, false)
    }

    fn map_file_with(file: &File, len: u64, populate: bool) -> io::Result<Mapping> {
        let mut options = MmapOptions::new();
        options.len(to_usize(len)?);
        if populate {
            options.populate();
        }
        let raw = options.map_raw(file)?;
        Ok(Self::from_raw(Backing::File(raw, file.try_clone()?), len))
    }

    /// Maps `len` zeroed bytes of anonymous memory.
    pub fn anon(len: u64) -> io::Result<Mapping> {
        let raw = MmapRaw::from(MmapOptions::new().len(to_usize(len)?).map_anon()?);
        Ok(Self::from_raw(Backing::Anon(raw), len))
    }

    fn from_raw(map: Backing, len: u64) -> Mapping {
        let raw = match &map {
            Backing::File(r, _) | Backing::Anon(r) => r,
        };
        let ptr = NonNull::new(raw.as_mut_ptr()).unwrap_or(NonNull::dangling());
        let len = if raw.as_mut_ptr().is_null() { 0 } else { len };
        // A fresh mapping is exclusively owned: everything is "completed" and readable,
        // and no slot can be issued until `set_tail` is called.
        Mapping {
            done: Completion::new(len),
            map,
            ptr,
            len,
            write_through: false,
        }
    }

    /// Size of the mapping in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the mapping is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Offset below which every slot is finished.
    pub fn completed(&self) -> u64 {
        self.done.completed()
    }

    /// Next unreserved offset (may exceed `len`).
    pub fn tail(&self) -> u64 {
        self.done.tail()
    }

    /// Start of the highest finished `Fits` slot issued since the last
    /// [`Mapping::set_tail`], if any. When no slot is open it is below
    /// [`Mapping::completed`]; while slots are open it may be above it.
    pub fn last_record(&self) -> Option<u64> {
        self.done.last_record()
    }

    /// The whole mapping, mutably. Exclusive access means no slot or reader exists.
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: M1 (ptr/len valid for the mapping's life), M2 (no other process
        // writes the file), and `&mut self` proves no slot or shared borrow exists.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len as usize) }
    }

    /// Makes slot writes go to the file with `pwritev` instead of through the
    /// mapping (module doc, "Write-through"). Ignored for anonymous memory.
    /// Call before [`Mapping::prefault`], which then only reads.
    pub fn set_write_through(&mut self, on: bool) {
        self.write_through = on && matches!(self.map, Backing::File(..));
    }

    /// Whether slot writes go through `pwritev` on the file.
    pub fn write_through(&self) -> bool {
        self.write_through
    }

    /// Sets where slots start being issued; bytes below stay readable.
    pub fn set_tail(&mut self, tail: u64) {
        let tail = tail.min(self.len);
        self.done.reset(tail);
    }

    /// Writes to each page so its first use by an appender does not fault.
    /// A write-through mapping is only read (appenders never store through it,
    /// and a store would dirty whole folios that a later sync must write back).
    pub fn prefault(&mut self) {
        self.prefault_from(0);
    }

    /// [`Mapping::prefault`] of the pages from the one holding `start` on. A
    /// recovered segment is prefaulted from its tail: a store to the pages
    /// below, which hold its frames, would dirty them for nothing, and the
    /// sync that recovery makes next would write them all back.
    pub fn prefault_from(&mut self, start: u64) {
        let mut off = start - start % PAGE;
        while off < self.len {
            // SAFETY: M1 (off < len, so the byte is inside the mapping), M2, and
            // `&mut self` proves no slot or reader exists. Writing back the value just
            // read changes nothing; the volatile pair keeps the compiler from dropping it.
            unsafe {
                let p = self.ptr.as_ptr().add(off as usize);
                let v = std::ptr::read_volatile(p);
                if !self.write_through {
                    std::ptr::write_volatile(p, v);
                }
            }
            off += PAGE;
        }
    }

    /// Borrows `[start, end)`, which must lie below `completed` (else `None`).
    pub fn read(&self, start: u64, end: u64) -> Option<&[u8]> {
        if start > end || end > self.completed() {
            return None;
        }
        // SAFETY: M1 (in bounds: end <= completed <= len), M4 (bytes below
        // `completed` are never written while `&self` lives), M2 (no other writer).
        Some(unsafe {
            std::slice::from_raw_parts(
                self.ptr.as_ptr().add(start as usize),
                (end - start) as usize,
            )
        })
    }

    /// Reserves `len` bytes at the tail by one atomic add.
    pub fn reserve(&self, len: u64) -> Reserve<'_> {
        let start = self.done.reserve(len);
        let end = start.saturating_add(len);
        if end <= self.len {
            Reserve::Fits(Slot {
                map: self,
                start,
                end,
                record: true,
            })
        } else if start < self.len {
            Reserve::Straddles(Slot {
                map: self,
                start,
                end: self.len,
                record: false,
            })
        } else {
            Reserve::Full
        }
    }

    /// Flushes `[start, end)` to the file with `msync(MS_SYNC)`; a no-op for anonymous memory.
    ///
    /// On Linux this is a ranged `fdatasync` (`vfs_fsync_range(file, start, end,
    /// datasync)`): it writes back the dirty pages of the range however they
    /// were dirtied (stores through the mapping or `pwritev`), then waits for
    /// the journal and the device cache flush like `fdatasync`.
    pub fn flush_range(&self, start: u64, end: u64) -> io::Result<()> {
        match &self.map {
            Backing::File(raw, _) if end > start => {
                raw.flush_range(start as usize, (end - start) as usize)
            }
            _ => Ok(()),
        }
    }
}

impl Slot<'_> {
    /// Offset of the slot in the mapping.
    pub fn start(&self) -> u64 {
        self.start
    }

    /// Length of the slot in bytes.
    pub fn len(&self) -> u64 {
        self.end - self.start
    }

    /// Whether the slot is empty.
    pub fn is_empty(&self) -> bool {
        self.end == self.start
    }

    /// Copies `data` to `offset` within the slot; returns false (writing nothing)
    /// if it would not fit.
    pub fn write(&mut self, offset: u64, data: &[u8]) -> bool {
        self.write_parts(offset, &[data])
    }

    /// Copies `parts`, one after the other, to `offset` within the slot (one
    /// `pwritev` for a write-through mapping); returns false (writing nothing)
    /// if they would not fit.
    pub fn write_parts(&mut self, offset: u64, parts: &[&[u8]]) -> bool {
        let total: u64 = parts.iter().map(|p| p.len() as u64).sum();
        let Some(end) = offset.checked_add(total) else {
            return false;
        };
        if end > self.len() {
            return false;
        }
        let at = self.start + offset;
        if self.map.write_through && self.pwrite(at, parts, total) {
            return true;
        }
        let mut at = at;
        for data in parts {
            // SAFETY: M1 and the check above keep every copy inside [start, end) ⊆
            // [0, len) (the parts' lengths sum to at most the slot's length); M3 makes
            // this range exclusive to this slot; M2 rules out other processes; `data`
            // cannot overlap the mapping range because no `&[u8]` into an unfinished
            // slot exists (M4: readers only see bytes below `completed`).
            unsafe {
                std::ptr::copy_nonoverlapping(
                    data.as_ptr(),
                    self.map.ptr.as_ptr().add(at as usize),
                    data.len(),
                );
            }
            at += data.len() as u64;
        }
        true
    }

    /// Write-through: `pwritev` of `parts` (`total` bytes, inside this slot) at
    /// file offset `at`, retried on `EINTR`; false if it failed or was short (the
    /// caller then copies through the mapping, which rewrites any bytes written).
    fn pwrite(&self, at: u64, parts: &[&[u8]], total: u64) -> bool {
        let Backing::File(_, file) = &self.map.map else {
            return false;
        };
        let Ok(at) = libc::off_t::try_from(at) else {
            return false;
        };
        if parts.len() > MAX_PARTS {
            return false;
        }
        // No allocation on the append path: frames have at most a header and a body.
        let mut iov = [libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        }; MAX_PARTS];
        for (v, p) in iov.iter_mut().zip(parts) {
            v.iov_base = p.as_ptr().cast_mut().cast();
            v.iov_len = p.len();
        }
        let cnt = parts.len() as libc::c_int;
        for _ in 0..8 {
            // SAFETY: the first `cnt` (<= MAX_PARTS) entries of `iov` each describe a
            // live `&[u8]` of `parts`, which the kernel only reads. `file` is a duplicate
            // of the descriptor the mapping was made from (`map_file`), so file offsets
            // are mapping offsets, and [at, at + total) is this slot's range (M3:
            // exclusive to it; inside [0, len) by the caller's check, M1). The kernel's
            // copy into the page cache, which the shared mapping shows, therefore
            // changes no byte a reader may borrow (M4) or another slot owns; M2 rules
            // out other processes.
            let n = unsafe { libc::pwritev(file.as_raw_fd(), iov.as_ptr(), cnt, at) };
            if n >= 0 {
                return n as u64 == total;
            }
            if io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
                return false;
            }
        }
        false
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.map.done.finish(self.start, self.end, self.record);
    }
}

fn to_usize(len: u64) -> io::Result<usize> {
    usize::try_from(len).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "mapping length does not fit in usize",
        )
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::type_complexity)]
mod tests {
    use super::*;

    #[test]
    fn slots_complete_out_of_order() {
        let mut m = Mapping::anon(4096).unwrap();
        m.set_tail(64);
        let Reserve::Fits(a) = m.reserve(32) else {
            panic!()
        };
        let Reserve::Fits(mut b) = m.reserve(32) else {
            panic!()
        };
        assert!(b.write(0, &[7; 32]));
        assert!(!b.write(1, &[7; 32]));
        drop(b);
        assert_eq!(m.completed(), 64, "b finished first but a is still open");
        drop(a);
        assert_eq!(m.completed(), 128);
        assert_eq!(m.read(96, 128).unwrap(), &[7; 32]);
        assert!(m.read(96, 129).is_none());
        let Reserve::Straddles(s) = m.reserve(8000) else {
            panic!()
        };
        assert_eq!((s.start(), s.len()), (128, 4096 - 128));
        assert!(matches!(m.reserve(8), Reserve::Full));
        drop(s);
        assert_eq!(m.completed(), 4096);
    }

    #[test]
    fn write_through_reaches_file_and_mapping() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seg");
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        file.write_all(&[0u8; 8192]).unwrap();
        let mut m = Mapping::map_file(&file, 8192).unwrap();
        m.set_write_through(true);
        assert!(m.write_through());
        m.prefault();
        m.set_tail(64);
        let Reserve::Fits(mut a) = m.reserve(40) else {
            panic!()
        };
        assert!(a.write_parts(0, &[&[1; 8], &[2; 32]]));
        assert!(!a.write_parts(1, &[&[1; 8], &[2; 32]]), "does not fit");
        drop(a);
        // More parts than one `pwritev` takes: copied through the mapping instead.
        let Reserve::Fits(mut b) = m.reserve(5) else {
            panic!()
        };
        assert!(b.write_parts(0, &[&[3], &[4], &[5], &[6], &[7]]));
        drop(b);
        let want: Vec<u8> = [[1u8; 8].as_slice(), &[2; 32], &[3, 4, 5, 6, 7]].concat();
        assert_eq!(m.read(64, 109).unwrap(), want.as_slice());
        m.flush_range(64, 109).unwrap();
        let on_file = std::fs::read(&path).unwrap();
        assert_eq!(on_file.get(64..109), Some(want.as_slice()));
        assert!(on_file.iter().skip(109).all(|&b| b == 0));

        let mut anon = Mapping::anon(4096).unwrap();
        anon.set_write_through(true);
        assert!(
            !anon.write_through(),
            "anonymous memory has no file to write"
        );
    }
}
