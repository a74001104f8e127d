//! The sharded task table plus the log: check, append and apply one transition.
//!
//! A workflow (a root and all its descendants) lives in one shard: a child's id
//! carries its parent's shard number in its low bits. So a spawn (parent suspends,
//! children are created) and a fan-in (child finishes, parent is told) each happen
//! under one shard lock, and a snapshot taken with every shard locked is consistent.
//!
//! Order of one transition, all under the task's shard lock (I2):
//! 1. encode the record (a rejected record is never written);
//! 2. apply it to the shard (the engine refuses invalid transitions as values);
//! 3. append the encoded bytes to the log, which assigns the LSN.
//!
//! Nobody waits for durability while holding a shard lock.

use crate::codec::{self, Record, TaskId};
use crate::engine::{Applied, Shard};
use crate::log::{Log, Lsn};
use arc_swap::ArcSwapOption;
use parking_lot::{Mutex, MutexGuard};
use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use super::error::{Error, Result};

/// Low bits of a task id that name its shard.
pub(crate) const SHARD_BITS: u32 = 4;
/// Number of shards.
pub(crate) const SHARDS: usize = 1 << SHARD_BITS;

thread_local! {
    static ENCODE_BUF: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(256));
}

pub(crate) struct Store {
    shards: Box<[Mutex<Shard>]>,
    /// The log of a durable manager; taken out by [`Store::close`] so that `stop`
    /// releases the directory even while a handler past the deadline still runs.
    log: ArcSwapOption<Log>,
    /// Set by `close`: every later write is refused.
    closed: AtomicBool,
    counter: AtomicU64,
    /// Whether the store was opened with a log: an in-memory manager never
    /// has one, and skips loading it on every write (an `ArcSwap` load costs
    /// some hundred instructions, three times per task).
    durable: bool,
    /// Dedup keys of live tasks.
    pub(crate) dedup: Mutex<HashMap<String, TaskId>>,
}

/// Where the shard of a task is.
pub(crate) fn shard_of(id: TaskId) -> usize {
    (id.0 & (SHARDS as u64 - 1)) as usize
}

impl Store {
    pub(crate) fn new(log: Option<Log>) -> Store {
        Store {
            durable: log.is_some(),
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::new())).collect(),
            log: ArcSwapOption::new(log.map(Arc::new)),
            closed: AtomicBool::new(false),
            counter: AtomicU64::new(1),
            dedup: Mutex::new(HashMap::new()),
        }
    }

    /// Whether the manager stopped and closed its store.
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// The log, for a durable manager that is not closed.
    pub(crate) fn log(&self) -> Option<Arc<Log>> {
        self.log.load_full()
    }

    /// Flushes and closes the log (the directory lock goes with the last user)
    /// and refuses every later write.
    pub(crate) fn close(&self) -> Result<()> {
        self.closed.store(true, Ordering::Release);
        if let Some(log) = self.log.swap(None) {
            log.close()?;
        }
        Ok(())
    }

    /// Locks the shard of `id`.
    pub(crate) fn lock(&self, id: TaskId) -> MutexGuard<'_, Shard> {
        self.shards[shard_of(id)].lock()
    }

    /// Locks shard `i`.
    pub(crate) fn lock_index(&self, i: usize) -> MutexGuard<'_, Shard> {
        self.shards[i].lock()
    }

    /// A fresh id: increasing; in the parent's shard for a child.
    pub(crate) fn alloc_id(&self, parent: Option<TaskId>) -> TaskId {
        let c = self.counter.fetch_add(1, Ordering::Relaxed);
        let shard = parent.map_or(c & (SHARDS as u64 - 1), |p| p.0 & (SHARDS as u64 - 1));
        TaskId((c << SHARD_BITS) | shard)
    }

    /// Makes sure later ids are above `id` (replay and snapshot restore).
    pub(crate) fn observe_id(&self, id: TaskId) {
        self.counter
            .fetch_max((id.0 >> SHARD_BITS) + 1, Ordering::Relaxed);
    }

    /// The id counter, for snapshots.
    pub(crate) fn counter(&self) -> u64 {
        self.counter.load(Ordering::Relaxed)
    }

    /// Checks, applies and logs one record on a locked shard.
    pub(crate) fn commit(
        &self,
        shard: &mut Shard,
        record: Record,
    ) -> Result<(Applied, Option<Lsn>)> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::Stopped);
        }
        if !self.durable {
            return Ok((shard.apply(record)?, None));
        }
        let guard = self.log.load();
        let Some(log) = guard.as_deref() else {
            return Ok((shard.apply(record)?, None));
        };
        ENCODE_BUF.with(|buf| {
            let mut buf = buf.borrow_mut();
            codec::encode_into(std::slice::from_ref(&record), &mut buf)?;
            // Refuse what the log cannot hold before the state changes (I2).
            log.check_len(buf.len())?;
            let applied = shard.apply(record)?;
            let lsn = log.append(&buf)?;
            Ok((applied, Some(lsn)))
        })
    }

    /// Refuses a submission too large for one log record, before anything is
    /// recorded: `submit_batch` checks every item first, so a refused batch
    /// creates nothing (SPEC §13).
    pub(crate) fn check_submit_fits(&self, new: &codec::NewTask) -> Result<()> {
        /// The format version, the batch's length and the record's variant.
        const FRAMING: usize = 16;
        if !self.durable {
            return Ok(());
        }
        let guard = self.log.load();
        let Some(log) = guard.as_deref() else {
            return Ok(());
        };
        // Counted, not written: postcard's size flavour.
        let len = postcard::serialize_with_flavor(new, postcard::ser_flavors::Size::default())
            .map_err(codec::EncodeError::from)?;
        log.check_len(len.saturating_add(FRAMING))?;
        Ok(())
    }

    /// Applies and logs records that must land together (one frame): a spawn's
    /// children, then the parent's `Spawn`. Returns each record's effects
    /// (`None` for one refused), or the refusal when nothing applied.
    pub(crate) fn commit_batch(
        &self,
        shard: &mut Shard,
        batch: Vec<Record>,
    ) -> Result<(Vec<Option<Applied>>, Option<Lsn>)> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::Stopped);
        }
        let guard = self.log.load();
        let bytes = match guard.as_deref() {
            Some(log) => {
                let b = codec::encode(&batch)?;
                log.check_len(b.len())?;
                Some(b)
            }
            None => None,
        };
        let mut applied = Vec::with_capacity(batch.len());
        let mut refused = None;
        for record in batch {
            match shard.apply(record) {
                Ok(a) => applied.push(Some(a)),
                // I4: the records of a batch were validated under this shard's
                // lock before it was built, so none is refused; if one were,
                // the batch is still logged whole once anything applied, and
                // replay refuses that record the same way.
                Err(e) => {
                    applied.push(None);
                    refused.get_or_insert(e);
                }
            }
        }
        if let (Some(e), true) = (refused, applied.iter().all(Option::is_none)) {
            return Err(e.into()); // nothing changed, so nothing is logged
        }
        let lsn = match (guard.as_deref(), bytes) {
            (Some(log), Some(b)) => Some(log.append(&b)?),
            _ => None,
        };
        Ok((applied, lsn))
    }

    /// The LSN of the last record reserved so far, for a call that must
    /// not return before what others recorded is durable (a dedup hit
    /// acknowledges a task another call is still making durable).
    pub(crate) fn last_reserved(&self) -> Option<Lsn> {
        if !self.durable {
            return None;
        }
        self.log.load().as_deref().and_then(Log::covered_lsn)
    }

    /// Waits until `lsn` is durable at the configured level.
    pub(crate) fn wait(&self, lsn: Option<Lsn>) -> Result<()> {
        if lsn.is_none() {
            return Ok(()); // nothing logged (an in-memory manager, a dedup hit)
        }
        match (self.log.load().as_deref(), lsn) {
            (Some(log), Some(lsn)) => log.wait_durable(lsn).map_err(Error::from),
            _ => Ok(()),
        }
    }
}

/// Interns the names a snapshot entry holds: live operation shares one
/// `Arc<str>` per handler and worker name, and a restart must not give every
/// task and attempt its own copy (replayed records are interned as they are
/// decoded, see [`codec::Interner`]).
pub(crate) fn intern_entry(names: &mut codec::Interner, entry: &mut crate::engine::TaskEntry) {
    entry.task.name = names.intern_arc(&entry.task.name);
    if let Some(w) = &entry.task.worker {
        entry.task.worker = Some(names.intern_arc(w));
    }
    for a in &mut entry.attempts {
        a.worker = names.intern_arc(&a.worker);
    }
}
