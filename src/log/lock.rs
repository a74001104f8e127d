//! Exclusive directory lock.
//!
//! `LOCK` in the log directory is locked with `flock(LOCK_EX | LOCK_NB)` (via
//! fs4) for as long as the [`super::Log`] lives. `flock` locks belong to the
//! open file description, so a second `open` in the *same* process conflicts
//! too. This lock is also the safety argument for the shared mappings in
//! `mmap.rs` (M2): while it is held, no other fibflow process writes the files.
//!
//! A lock found held is tried again for up to [`LOCK_PATIENCE`] before the
//! open fails: a log closed a moment ago can still be locked by a child
//! process that another thread of this process is starting (the child holds
//! a copy of every descriptor until it executes its program), so a stop
//! followed at once by a reopen failed now and then on a loaded machine.

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

/// How long a held lock is waited for before the open fails.
pub(crate) const LOCK_PATIENCE: std::time::Duration = std::time::Duration::from_millis(250);

/// Takes the exclusive lock on `dir`, failing with [`LogError::Locked`] if it
/// is still held after [`LOCK_PATIENCE`].
pub(crate) fn lock_dir(dir: &Path) -> Result<DirLock, LogError> {
    let until = std::time::Instant::now() + LOCK_PATIENCE;
    let mut pause = std::time::Duration::from_millis(1);
    loop {
        match try_lock_dir(dir) {
            Err(LogError::Locked { .. }) if std::time::Instant::now() < until => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(std::time::Duration::from_millis(32));
            }
            other => return other,
        }
    }
}

/// One attempt of [`lock_dir`].
fn try_lock_dir(dir: &Path) -> Result<DirLock, LogError> {
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
