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
        let mut replayed = 0u64;
        let mut refused = 0u64;
        log.replay(
            |_lsn, bytes| -> std::result::Result<(), codec::DecodeError> {
                for record in codec::decode(bytes)? {
                    replayed += 1;
                    if !self.store.replay_record(record, &mut names) {
                        refused += 1;
                    }
                }
                Ok(())
            },
        )
        .map_err(|e| Error::Recovery(e.to_string()))?;
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
