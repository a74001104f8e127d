//! Opening a log directory: snapshot + replay, then SPEC §12 (running tasks are
//! recovered, timers and suspended parents rebuilt). Also snapshots for compaction.
//!
//! Snapshot format: one version byte, then postcard of [`SnapshotV2`] (version
//! 2, written now: each shard's tasks as held, finished ones as their frozen
//! bytes, plus its indexes, so loading decodes nothing) or of [`SnapshotV1`]
//! (version 1, every task as a full entry; still read).

use super::error::{Error, Result};
use super::Core;
use crate::codec::{self, Record, TaskId, TaskKind};
use crate::engine::schedule::catch_up_next;
use crate::engine::{Applied, ParentNotice, TaskEntry, TaskStatus};
use crate::log::Lsn;
use serde::{Deserialize, Serialize};

/// Snapshot format version written.
const SNAPSHOT_VERSION: u8 = 2;

/// The live state at one LSN, as version 2 writes it.
#[derive(Serialize)]
struct SnapshotV2Ref<'a> {
    /// The id counter.
    counter: u64,
    /// Every shard, in order.
    shards: Vec<crate::engine::ShardImageRef<'a>>,
}

/// The live state at one LSN, as version 2 reads it back.
#[derive(Deserialize)]
struct SnapshotV2 {
    counter: u64,
    shards: Vec<crate::engine::ShardImage>,
}

/// The live state at one LSN (version 1).
#[derive(Deserialize)]
struct SnapshotV1 {
    /// The id counter.
    counter: u64,
    /// Every task with its history.
    entries: Vec<TaskEntry>,
}

/// What opening a directory found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RecoveryStats {
    /// Tasks restored from the snapshot.
    pub snapshot_tasks: u64,
    /// Records replayed after the snapshot.
    pub records_replayed: u64,
    /// Replayed records the engine refused (should be 0).
    pub records_refused: u64,
    /// Running tasks returned to pending.
    pub recovered: u64,
    /// Tasks quarantined after too many interruptions.
    pub quarantined: u64,
}

impl Core {
    /// Loads the snapshot and replays the log into the shards (no records written).
    pub(crate) fn replay_log(&self, stats: &mut RecoveryStats) -> Result<()> {
        let Some(log) = self.store.log() else {
            return Ok(());
        };
        let mut names = std::collections::HashSet::new();
        if let Some((_, bytes)) = log.snapshot() {
            let (counter, shards, entries) = decode_snapshot(&bytes)?;
            self.store.observe_id(TaskId(
                counter.saturating_sub(1) << super::store::SHARD_BITS,
            ));
            let mut strays = entries;
            for (i, image) in shards.into_iter().enumerate() {
                let mut shard = self.store.lock_index(i % super::store::SHARDS);
                let (more, loaded) = shard.load_image(
                    image,
                    |id| super::store::shard_of(id) == i,
                    |e| super::store::intern_entry(&mut names, e),
                );
                stats.snapshot_tasks += loaded;
                strays.extend(more);
            }
            for mut entry in strays {
                stats.snapshot_tasks += 1;
                super::store::intern_entry(&mut names, &mut entry);
                self.store.observe_id(entry.task.id);
                self.store.lock(entry.task.id).restore(entry);
            }
        }
        let (replayed, refused) = self.replay_records(&log, &mut names)?;
        stats.records_replayed = replayed;
        stats.records_refused = refused;
        let mut dedup = self.store.dedup.lock();
        for i in 0..super::store::SHARDS {
            for (key, id) in self.store.lock_index(i).dedup_keys() {
                dedup.insert(key, id);
            }
        }
        Ok(())
    }

    /// Replays the log's records after the snapshot; returns how many, and how
    /// many the engine refused.
    ///
    /// Records of different tasks commute (I3), a workflow lives in one shard
    /// (I4) and a frame's records belong to one shard, so the shards are split
    /// between applier threads: this thread scans the log (checksums) and hands
    /// each frame, copied into batches, to the applier owning its first task's
    /// shard ([`codec::peek_task_id`]); the applier decodes and applies. One
    /// task's records are still applied in log order, and what a record
    /// allocates is freed by the thread that allocated it.
    fn replay_records(
        &self,
        log: &crate::log::Log,
        names: &mut std::collections::HashSet<std::sync::Arc<str>>,
    ) -> Result<(u64, u64)> {
        /// Bytes of frames handed to an applier at a time.
        const BATCH_BYTES: usize = 64 << 10;
        let appliers = std::thread::available_parallelism()
            .map_or(1, std::num::NonZero::get)
            .clamp(1, 4);
        let store = &self.store;
        let seed = names.clone();
        std::thread::scope(|scope| {
            let mut senders = Vec::with_capacity(appliers);
            let mut handles = Vec::with_capacity(appliers);
            for k in 0..appliers {
                // Frames, each as a u32 little-endian length and its bytes.
                let (tx, rx) = crossbeam::channel::bounded::<Vec<u8>>(8);
                senders.push(tx);
                let mut names = seed.clone();
                let thread = std::thread::Builder::new().name(format!("fibflow-replay-{k}"));
                handles.push(
                    thread
                        .spawn_scoped(
                            scope,
                            move || -> std::result::Result<(u64, u64), codec::DecodeError> {
                                let (mut replayed, mut refused) = (0u64, 0u64);
                                for batch in rx {
                                    let mut rest = &batch[..];
                                    while let Some((len, after)) = rest.split_first_chunk::<4>() {
                                        let len = u32::from_le_bytes(*len) as usize;
                                        let (frame, after) = after.split_at(len.min(after.len()));
                                        rest = after;
                                        for mut record in codec::decode(frame)? {
                                            replayed += 1;
                                            store.prepare_replay(&mut record, &mut names);
                                            if store.lock(record.task_id()).apply(record).is_err() {
                                                refused += 1;
                                            }
                                        }
                                    }
                                }
                                Ok((replayed, refused))
                            },
                        )
                        .map_err(|source| Error::Io {
                            context: "cannot spawn a replay thread",
                            source,
                        })?,
                );
            }
            let mut pending: Vec<Vec<u8>> = (0..appliers)
                .map(|_| Vec::with_capacity(BATCH_BYTES))
                .collect();
            let scanned = log.replay(
                |_lsn, bytes| -> std::result::Result<(), codec::DecodeError> {
                    let id = codec::peek_task_id(bytes).unwrap_or(TaskId(0));
                    let k = super::store::shard_of(id) % appliers;
                    let len = u32::try_from(bytes.len()).map_err(|_| codec::DecodeError::Empty)?;
                    if let (Some(batch), Some(tx)) = (pending.get_mut(k), senders.get(k)) {
                        batch.extend_from_slice(&len.to_le_bytes());
                        batch.extend_from_slice(bytes);
                        if batch.len() >= BATCH_BYTES {
                            let full = std::mem::replace(batch, Vec::with_capacity(BATCH_BYTES));
                            // An applier stops early only on an error, reported below.
                            let _ = tx.send(full);
                        }
                    }
                    Ok(())
                },
            );
            for (batch, tx) in pending.into_iter().zip(&senders) {
                if !batch.is_empty() {
                    let _ = tx.send(batch);
                }
            }
            drop(senders);
            let (mut replayed, mut refused) = (0u64, 0u64);
            let mut failed = None;
            for h in handles {
                match h.join() {
                    Ok(Ok((n, r))) => {
                        replayed += n;
                        refused += r;
                    }
                    Ok(Err(e)) => failed = Some(Error::Recovery(e.to_string())),
                    Err(_) => failed = Some(Error::Recovery("a replay thread panicked".into())),
                }
            }
            scanned.map_err(|e| Error::Recovery(e.to_string()))?;
            failed.map_or(Ok((replayed, refused)), Err)
        })
    }

    /// After replay: SPEC §12 recovery and rebuilding of queues, timers, dedup keys
    /// and child deliveries that a crash cut off.
    pub(crate) fn rebuild(&self, stats: &mut RecoveryStats) -> Result<Option<Lsn>> {
        let now = self.now();
        let mut lsn = None;
        for i in 0..super::store::SHARDS {
            let _wakes = self.dispatch.defer_wakes();
            let mut shard = self.store.lock_index(i);
            let ids: Vec<(TaskId, TaskStatus)> = shard
                .live_entries()
                .map(|e| (e.task.id, e.task.status))
                .collect();
            for (id, status) in ids {
                match status {
                    TaskStatus::Running => {
                        let message = "interrupted: the process stopped while the attempt ran";
                        self.interrupt(&mut shard, id, message, &mut lsn)?;
                        stats.recovered += 1;
                        if shard.status(id) == Some(TaskStatus::PermanentlyFailed) {
                            stats.quarantined += 1;
                        }
                    }
                    TaskStatus::Pending => {
                        self.ready_after_restart(&mut shard, id, now, &mut lsn)?
                    }
                    TaskStatus::Suspended => self.redeliver(&mut shard, id, &mut lsn)?,
                    TaskStatus::Failed | TaskStatus::Timeout => {
                        let at = shard.live(id).map_or(now, |e| e.task.next_run_time);
                        self.retry_when_due(&mut shard, id, at, &mut lsn);
                    }
                    _ => {}
                }
            }
        }
        Ok(lsn)
    }

    /// A pending task after restart: due now, later, or (cron) per the catch-up policy.
    fn ready_after_restart(
        &self,
        shard: &mut crate::engine::Shard,
        id: TaskId,
        now: u64,
        lsn: &mut Option<Lsn>,
    ) -> Result<()> {
        if !self.catch_up_one(shard, id, now, lsn)? {
            if let Some(at) = shard.live(id).map(|e| e.task.next_run_time) {
                self.make_ready(shard, id, at);
            }
        }
        Ok(())
    }

    /// Applies the catch-up policy to a pending cron task whose run time passed
    /// while the process was down (or before `start`): `Once` and `All` run it
    /// now, `Skip` moves it to the next occurrence with a `Reschedule` record.
    /// Returns whether a record was written (its effects already queued the task).
    fn catch_up_one(
        &self,
        shard: &mut crate::engine::Shard,
        id: TaskId,
        now: u64,
        lsn: &mut Option<Lsn>,
    ) -> Result<bool> {
        let Some(t) = shard.live(id).map(|e| &e.task) else {
            return Ok(false);
        };
        if t.kind != TaskKind::Cron || t.status != TaskStatus::Pending || t.next_run_time >= now {
            return Ok(false);
        }
        let Some(s) = t.cron.as_deref().and_then(|c| self.cron(c).ok()) else {
            return Ok(false);
        };
        let Some(at) = catch_up_next(&s, self.config.catch_up, t.next_run_time, now) else {
            return Ok(false);
        };
        if at <= now {
            return Ok(false); // runs now: Once (no burst: next_round skips the rest) or All
        }
        let record = Record::Reschedule {
            id,
            next_run_ms: at,
            at_ms: now,
        };
        let (applied, l) = self.store.commit(shard, record)?;
        *lsn = l.or(*lsn);
        self.settle(shard, id, applied, lsn);
        Ok(true)
    }

    /// At `start`: occurrences of cron tasks that passed before the manager started
    /// count as missed, like those of a process that was down.
    pub(crate) fn catch_up_crons(&self) -> Result<Option<Lsn>> {
        let now = self.now();
        let mut lsn = None;
        for i in 0..super::store::SHARDS {
            let _wakes = self.dispatch.defer_wakes();
            let mut shard = self.store.lock_index(i);
            let ids: Vec<TaskId> = shard
                .live_entries()
                .filter(|e| e.task.kind == TaskKind::Cron && e.task.status == TaskStatus::Pending)
                .map(|e| e.task.id)
                .collect();
            for id in ids {
                self.catch_up_one(&mut shard, id, now, &mut lsn)?;
            }
        }
        Ok(lsn)
    }

    /// Delivers outcomes of finished children whose `ChildDone` a crash cut off.
    fn redeliver(
        &self,
        shard: &mut crate::engine::Shard,
        parent: TaskId,
        lsn: &mut Option<Lsn>,
    ) -> Result<()> {
        let Some(round) = shard.live(parent).and_then(|e| e.round.clone()) else {
            return Ok(());
        };
        for child in round.children {
            if round.outcomes.contains_key(&child) {
                continue;
            }
            // `settle` appends the `ChildDone` a finished child owes its parent.
            let notice = shard.get(child).and_then(|c| ParentNotice::of(&c.task));
            if let Some(n) = notice {
                let applied = Applied {
                    notify_parent: Some(n),
                    ..Applied::default()
                };
                self.settle(shard, child, applied, lsn);
            }
        }
        Ok(())
    }

    /// Writes a snapshot of every task and compacts the log below it.
    /// Every shard is locked while the state is copied: appends happen only under a
    /// shard lock, so the copy is exactly the state at the log's last LSN (I1).
    pub(crate) fn snapshot_now(&self) -> Result<()> {
        let Some(log) = self.store.log() else {
            return Ok(());
        };
        let guards: Vec<_> = (0..super::store::SHARDS)
            .map(|i| self.store.lock_index(i))
            .collect();
        let Some(lsn) = log.stats().last_lsn else {
            return Ok(());
        };
        let snap = SnapshotV2Ref {
            counter: self.store.counter(),
            shards: guards.iter().map(|g| g.image()).collect(),
        };
        let bytes = postcard::to_extend(&snap, vec![SNAPSHOT_VERSION])
            .map_err(|e| Error::Recovery(e.to_string()))?;
        drop(guards);
        log.write_snapshot(lsn, &bytes)?;
        Ok(())
    }
}

/// The id counter, the shard images (version 2) and the full entries (version 1).
type Decoded = (u64, Vec<crate::engine::ShardImage>, Vec<TaskEntry>);

fn decode_snapshot(bytes: &[u8]) -> Result<Decoded> {
    let bad = |e: postcard::Error| Error::Recovery(format!("snapshot does not decode: {e}"));
    match bytes.split_first() {
        Some((2, body)) => {
            let s: SnapshotV2 = postcard::from_bytes(body).map_err(bad)?;
            Ok((s.counter, s.shards, Vec::new()))
        }
        Some((1, body)) => {
            let s: SnapshotV1 = postcard::from_bytes(body).map_err(bad)?;
            Ok((s.counter, Vec::new(), s.entries))
        }
        Some((v, _)) => Err(Error::Recovery(format!(
            "snapshot format version {v} is not supported by this build"
        ))),
        None => Err(Error::Recovery("snapshot is empty".into())),
    }
}
