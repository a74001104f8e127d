//! Exclusive directory lock.
//!
//! `LOCK` in the log directory is locked with `flock(LOCK_EX | LOCK_NB)` (via
//! fs4) for as long as the [`super::Log`] lives. `flock` locks belong to the
//! open file description, so a second `open` in the *same* process conflicts
//! too. This lock is also the safety argument for the shared mappings in
//! `mmap.rs` (M2): while it is held, no other fibflow process writes the files.

use std::fs::{File, OpenOptions};
use std::path::Path;

use super::LogError;

/// Name of the lock file in the log directory.
pub(crate) const LOCK_FILE: &str = "LOCK";

/// Holds the directory lock until dropped (closing the file releases it).
#[derive(Debug)]
pub(crate) struct DirLock {
    _file: File,
}

/// Takes the exclusive lock on `dir`, failing with [`LogError::Locked`] if it is held.
pub(crate) fn lock_dir(dir: &Path) -> Result<DirLock, LogError> {
    let path = dir.join(LOCK_FILE);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .map_err(|source| LogError::Io {
            context: format!("opening lock file {}", path.display()),
            source,
        })?;
    match fs4::fs_std::FileExt::try_lock_exclusive(&file) {
        Ok(true) => Ok(DirLock { _file: file }),
        Ok(false) => Err(LogError::Locked {
            dir: dir.to_path_buf(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Err(LogError::Locked {
            dir: dir.to_path_buf(),
        }),
        Err(source) => Err(LogError::Io {
            context: format!("locking {}", path.display()),
            source,
        }),
    }
}
