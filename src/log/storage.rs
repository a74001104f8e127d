//! The storage seam: where segment and snapshot bytes live.
//!
//! [`MmapStorage`] is the production backend (files in a directory, shared
//! mappings, `msync`). [`SimStorage`] keeps a *live* image (what the page cache
//! holds) and a *durable* image (what survived the last flush) per file, and can
//! produce the image a power loss would leave: pages not flushed are dropped,
//! written back, torn at 512-byte sectors, or garbled, at random (seeded).

use std::collections::BTreeMap;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;
use rand::{Rng, SeedableRng};

use super::mmap::Mapping;

/// Where the log's files live. Every method that changes the directory makes
/// the change durable before returning (file data, rename and directory entry).
pub trait Storage: Send + Sync + fmt::Debug {
    /// Names of the files in the log directory.
    fn list(&self) -> io::Result<Vec<String>>;
    /// Creates segment `name` of `len` bytes starting with `header`, the rest zero,
    /// durably (temp file, fsync, rename, fsync directory); returns it mapped and prefaulted.
    fn create_segment(&self, name: &str, len: u64, header: &[u8]) -> io::Result<Mapping>;
    /// Maps an existing segment.
    fn open_segment(&self, name: &str) -> io::Result<Mapping>;
    /// Tells the storage the log now shares `map` (the simulator keeps it as its live image).
    fn track(&self, _name: &str, _map: &Arc<Mapping>) {}
    /// Makes bytes `[start, end)` of segment `name` durable.
    fn sync(&self, name: &str, map: &Mapping, start: u64, end: u64) -> io::Result<()>;
    /// Removes a file durably.
    fn remove(&self, name: &str) -> io::Result<()>;
    /// Reads a whole file.
    fn read_file(&self, name: &str) -> io::Result<Vec<u8>>;
    /// Replaces file `name` with `bytes` atomically and durably.
    fn write_atomic(&self, name: &str, bytes: &[u8]) -> io::Result<()>;
}

/// Files in a real directory, mapped with `mmap`, flushed with `msync(MS_SYNC)`
/// of the synced range (a ranged `fdatasync` on Linux).
///
/// With [`MmapStorage::write_through`] (what `Durability::Sync` uses), appenders
/// put their bytes into the page cache with `pwritev` instead of storing through
/// the mapping, because a page dirtied through a mapping is far dearer to sync
/// (figures in `docs/log-format.md`, "Sync mechanism").
#[derive(Debug)]
pub struct MmapStorage {
    dir: PathBuf,
    write_through: bool,
}

impl MmapStorage {
    /// A storage over directory `dir` (which must exist).
    pub fn new(dir: &Path) -> MmapStorage {
        MmapStorage {
            dir: dir.to_path_buf(),
            write_through: false,
        }
    }

    /// Makes the mappings it creates or opens write-through
    /// ([`Mapping::set_write_through`]): appends reach the page cache by `pwritev`.
    pub fn write_through(mut self, on: bool) -> MmapStorage {
        self.write_through = on;
        self
    }

    fn sync_dir(&self) -> io::Result<()> {
        File::open(&self.dir)?.sync_all()
    }
}

/// Writes `len` bytes of zeros to `file` after its current position.
fn write_zeros(file: &mut File, mut len: u64) -> io::Result<()> {
    let chunk = vec![0u8; 1 << 20];
    while len > 0 {
        let n = len.min(chunk.len() as u64) as usize;
        file.write_all(chunk.get(..n).unwrap_or_default())?;
        len -= n as u64;
    }
    Ok(())
}

impl Storage for MmapStorage {
    fn list(&self) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in fs::read_dir(&self.dir)? {
            if let Some(name) = entry?.file_name().to_str() {
                names.push(name.to_owned());
            }
        }
        Ok(names)
    }

    fn create_segment(&self, name: &str, len: u64, header: &[u8]) -> io::Result<Mapping> {
        let tmp = self.dir.join(format!("{name}.tmp"));
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        file.write_all(header)?;
        // Real zeros, not a hole or an unwritten extent: later fdatasync/msync then
        // writes data only, with no extent conversion in the journal.
        write_zeros(&mut file, len.saturating_sub(header.len() as u64))?;
        file.sync_all()?;
        fs::rename(&tmp, self.dir.join(name))?;
        self.sync_dir()?;
        let mut map = Mapping::map_file(&file, len)?;
        map.set_write_through(self.write_through);
        map.prefault();
        Ok(map)
    }

    fn open_segment(&self, name: &str) -> io::Result<Mapping> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(self.dir.join(name))?;
        let len = file.metadata()?.len();
        let mut map = Mapping::map_file_lazily(&file, len)?;
        map.set_write_through(self.write_through);
        Ok(map)
    }

    fn sync(&self, _name: &str, map: &Mapping, start: u64, end: u64) -> io::Result<()> {
        map.flush_range(start, end)
    }

    fn remove(&self, name: &str) -> io::Result<()> {
        fs::remove_file(self.dir.join(name))?;
        self.sync_dir()
    }

    fn read_file(&self, name: &str) -> io::Result<Vec<u8>> {
        // Only regular files: a FIFO would block the open forever, and a link
        // to a device read until memory runs out.
        let path = self.dir.join(name);
        if !fs::metadata(&path)?.is_file() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} is not a regular file", path.display()),
            ));
        }
        fs::read(path)
    }

    fn write_atomic(&self, name: &str, bytes: &[u8]) -> io::Result<()> {
        let tmp = self.dir.join(format!("{name}.tmp"));
        let mut file = File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&tmp, self.dir.join(name))?;
        self.sync_dir()
    }
}

#[derive(Debug, Default)]
struct SimFile {
    durable: Vec<u8>,
    live: Option<Arc<Mapping>>,
}

#[derive(Debug, Default)]
struct SimState {
    files: BTreeMap<String, SimFile>,
    syncs: u64,
    crash_at: Option<u64>,
    crashed: bool,
}

/// In-memory storage for power-loss tests: a live and a durable image per file.
#[derive(Debug, Default)]
pub struct SimStorage {
    state: Mutex<SimState>,
}

fn power_lost() -> io::Error {
    io::Error::other("simulated power loss")
}

impl SimStorage {
    /// Empty storage that never crashes.
    pub fn new() -> SimStorage {
        SimStorage::default()
    }

    /// Makes the `k`-th segment sync (1-based, counted from now) fail as a power loss;
    /// every later operation fails too.
    pub fn crash_at_sync(&self, k: u64) {
        let mut st = self.state.lock();
        st.crash_at = Some(st.syncs + k);
    }

    /// Whether the simulated power loss happened.
    pub fn crashed(&self) -> bool {
        self.state.lock().crashed
    }

    /// Segment syncs asked for so far.
    pub fn syncs(&self) -> u64 {
        self.state.lock().syncs
    }

    /// The durable bytes of every file (what a clean power loss right now keeps).
    pub fn durable_files(&self) -> BTreeMap<String, Vec<u8>> {
        self.state
            .lock()
            .files
            .iter()
            .map(|(k, f)| (k.clone(), f.durable.clone()))
            .collect()
    }

    /// A storage holding `files` as both live and durable images.
    pub fn from_files(files: BTreeMap<String, Vec<u8>>) -> SimStorage {
        let files = files
            .into_iter()
            .map(|(k, durable)| {
                (
                    k,
                    SimFile {
                        durable,
                        live: None,
                    },
                )
            })
            .collect();
        SimStorage {
            state: Mutex::new(SimState {
                files,
                ..SimState::default()
            }),
        }
    }

    /// The disk a power loss leaves: for every page whose live bytes differ from the
    /// durable ones, the page is dropped, written back, torn at 512-byte sectors, or
    /// its changed bytes garbled, chosen with a generator seeded by `seed`.
    /// Returns `None` while the log still holds a mapping (drop the `Log` first).
    pub fn power_loss(&self, seed: u64) -> Option<SimStorage> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut st = self.state.lock();
        let mut out = BTreeMap::new();
        for (name, file) in &mut st.files {
            let mut image = file.durable.clone();
            if let Some(live) = file.live.as_mut() {
                let live = Arc::get_mut(live)?.bytes_mut();
                tear_pages(&mut image, live, &mut rng);
            }
            out.insert(name.clone(), image);
        }
        Some(SimStorage::from_files(out))
    }
}

fn tear_pages(image: &mut [u8], live: &[u8], rng: &mut impl Rng) {
    for (page, (img, new)) in image.chunks_mut(4096).zip(live.chunks(4096)).enumerate() {
        let _ = page;
        if img == new {
            continue;
        }
        match rng.random_range(0..4u8) {
            0 => {}
            1 => img.copy_from_slice(new),
            2 => {
                for (a, b) in img.chunks_mut(512).zip(new.chunks(512)) {
                    if rng.random_bool(0.5) {
                        a.copy_from_slice(b);
                    }
                }
            }
            _ => {
                for (a, b) in img.iter_mut().zip(new) {
                    if a != b {
                        *a = rng.random();
                    }
                }
            }
        }
    }
}

impl Storage for SimStorage {
    fn list(&self) -> io::Result<Vec<String>> {
        let st = self.state.lock();
        if st.crashed {
            return Err(power_lost());
        }
        Ok(st.files.keys().cloned().collect())
    }

    fn create_segment(&self, name: &str, len: u64, header: &[u8]) -> io::Result<Mapping> {
        let mut st = self.state.lock();
        if st.crashed {
            return Err(power_lost());
        }
        let mut map = Mapping::anon(len)?;
        let mut durable = vec![0u8; len as usize];
        for (dst, src) in [map.bytes_mut(), &mut durable[..]]
            .into_iter()
            .flat_map(|d| d.iter_mut().zip(header))
        {
            *dst = *src;
        }
        st.files.insert(
            name.to_owned(),
            SimFile {
                durable,
                live: None,
            },
        );
        Ok(map)
    }

    fn open_segment(&self, name: &str) -> io::Result<Mapping> {
        let st = self.state.lock();
        if st.crashed {
            return Err(power_lost());
        }
        let file = st
            .files
            .get(name)
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        let mut map = Mapping::anon(file.durable.len() as u64)?;
        map.bytes_mut().copy_from_slice(&file.durable);
        Ok(map)
    }

    fn track(&self, name: &str, map: &Arc<Mapping>) {
        if let Some(f) = self.state.lock().files.get_mut(name) {
            f.live = Some(Arc::clone(map));
        }
    }

    fn sync(&self, name: &str, map: &Mapping, start: u64, end: u64) -> io::Result<()> {
        let mut st = self.state.lock();
        st.syncs += 1;
        if st.crash_at == Some(st.syncs) {
            st.crashed = true;
        }
        if st.crashed {
            return Err(power_lost());
        }
        let end = end.min(map.completed());
        let bytes = map
            .read(start, end)
            .ok_or_else(|| io::Error::other("sync of unfinished bytes"))?;
        let file = st
            .files
            .get_mut(name)
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        let dst = file
            .durable
            .get_mut(start as usize..end as usize)
            .ok_or_else(|| io::Error::other("sync out of range"))?;
        dst.copy_from_slice(bytes);
        Ok(())
    }

    fn remove(&self, name: &str) -> io::Result<()> {
        let mut st = self.state.lock();
        if st.crashed {
            return Err(power_lost());
        }
        st.files.remove(name);
        Ok(())
    }

    fn read_file(&self, name: &str) -> io::Result<Vec<u8>> {
        let st = self.state.lock();
        st.files
            .get(name)
            .map(|f| f.durable.clone())
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))
    }

    fn write_atomic(&self, name: &str, bytes: &[u8]) -> io::Result<()> {
        let mut st = self.state.lock();
        if st.crashed {
            return Err(power_lost());
        }
        st.files.insert(
            name.to_owned(),
            SimFile {
                durable: bytes.to_vec(),
                live: None,
            },
        );
        Ok(())
    }
}
