//! Opening a log directory: snapshot + replay, then SPEC §12 (running tasks are
//! recovered, timers and suspended parents rebuilt). Also snapshots for compaction.
//!
//! Snapshot format: one version byte, then postcard of [`SnapshotV2`] (version
//! 3, written now, and 2: each shard's tasks as held, finished ones as their
//! frozen bytes, plus its indexes, so loading decodes nothing; version 3 may
//! hold frozen tasks in the plain form, which a version 2 reader would not
//! decode) or of [`SnapshotV1`] (version 1, every task as a full entry; still read).

use super::error::{Error, Result};
use super::Core;
use crate::codec::{self, Record, TaskId, TaskKind};
use crate::engine::schedule::catch_up_next;
use crate::engine::{Applied, ParentNotice, TaskEntry, TaskStatus};
use crate::log::Lsn;
use serde::{Deserialize, Serialize};

/// Snapshot format version written: 3, the layout of 2 with frozen tasks
/// possibly in their plain form (`engine::slot::pack`).
const SNAPSHOT_VERSION: u8 = 3;

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
    /// `records` is how many records the open found (at most the replay's).
    pub(crate) fn replay_log(&self, stats: &mut RecoveryStats, records: u64) -> Result<()> {
        let Some(log) = self.store.log() else {
            return Ok(());
        };
        let mut names = codec::Interner::default();
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
        let (replayed, refused) = self.replay_records(&log, &mut names, records)?;
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
    /// between walker threads (this one and up to three more), each owning a
    /// contiguous range of shards. Every walker reads every frame header of one
    /// [`crate::log::Replay`] view, routes each frame by its first task's shard
    /// ([`codec::peek_task_id`]), and verifies, decodes and applies only its
    /// own, straight from the mapping: nothing is copied or handed between
    /// threads, and one task's records are still applied in log order.
    ///
    /// A frame is applied only after its checksum is verified. Each walker stops
    /// at the first invalid frame it meets; the one with the lowest LSN among
    /// them is the first in the log (see [`crate::log::Replay::for_each`]) and is
    /// reported, and the open fails, so what was applied past it is never seen.
    /// A record that does not decode stops that walker's applying but not its
    /// verifying, so damage to the log is still reported in preference.
    fn replay_records(
        &self,
        log: &crate::log::Log,
        names: &mut codec::Interner,
        records: u64,
    ) -> Result<(u64, u64)> {
        let walkers = std::thread::available_parallelism()
            .map_or(1, std::num::NonZero::get)
            .clamp(1, 4);
        let view = log.replay_view();
        let store = &self.store;
        // A finished task takes three records (submit, claim, complete):
        // room for that many tasks, so the tables do not grow in steps.
        let per_shard = usize::try_from(records / 3).unwrap_or(0) / super::store::SHARDS;
        for i in 0..super::store::SHARDS {
            store.lock_index(i).reserve(per_shard);
        }
        let seed = &*names;
        let walk = |k: usize| -> Walk {
            let mut names = seed.clone();
            let mut walk = Walk::default();
            let mut batch = Vec::new();
            let mine = |body: &[u8]| {
                let id = codec::peek_task_id(body).unwrap_or(TaskId(0));
                super::store::shard_of(id) * walkers / super::store::SHARDS == k
            };
            let scanned = names.install(|| {
                view.for_each(mine, |lsn, body| {
                    if walk.undecodable.is_some() {
                        return Ok::<(), std::convert::Infallible>(());
                    }
                    if let Err(e) = codec::decode_into(body, &mut batch) {
                        walk.undecodable = Some((lsn, e));
                        return Ok(());
                    }
                    for record in batch.drain(..) {
                        walk.replayed += 1;
                        if let Record::Submit(t) = &record {
                            walk.max_id = walk.max_id.max(Some(t.id));
                        }
                        if store.lock(record.task_id()).replay(record).is_err() {
                            walk.refused += 1;
                        }
                    }
                    Ok(())
                })
            });
            if let Err(crate::log::ReplayError::Log(e)) = scanned {
                walk.corrupt = Some(e);
            }
            walk
        };
        let walks: Vec<std::thread::Result<Walk>> =
            std::thread::scope(|scope| {
                let mut handles = Vec::with_capacity(walkers);
                for k in 1..walkers {
                    let thread = std::thread::Builder::new().name(format!("fibflow-replay-{k}"));
                    handles.push(thread.spawn_scoped(scope, move || walk(k)).map_err(
                        |source| Error::Io {
                            context: "cannot spawn a replay thread",
                            source,
                        },
                    )?);
                }
                let mut walks = vec![Ok(walk(0))];
                walks.extend(handles.into_iter().map(|h| h.join()));
                Ok::<_, Error>(walks)
            })?;
        for i in 0..super::store::SHARDS {
            store.lock_index(i).end_replay();
        }
        let (mut replayed, mut refused) = (0u64, 0u64);
        let mut corrupt: Option<crate::log::LogError> = None;
        let mut undecodable: Option<(Lsn, codec::DecodeError)> = None;
        let mut panicked = false;
        for w in walks {
            let Ok(w) = w else {
                panicked = true;
                continue;
            };
            replayed += w.replayed;
            refused += w.refused;
            if let Some(id) = w.max_id {
                self.store.observe_id(id);
            }
            if let Some(e) = w.corrupt {
                if corrupt
                    .as_ref()
                    .is_none_or(|c| corrupt_lsn(&e) < corrupt_lsn(c))
                {
                    corrupt = Some(e);
                }
            }
            if let Some((lsn, e)) = w.undecodable {
                if undecodable.as_ref().is_none_or(|(l, _)| lsn < *l) {
                    undecodable = Some((lsn, e));
                }
            }
        }
        if let Some(e) = corrupt {
            return Err(Error::Recovery(e.to_string()));
        }
        if let Some((_, e)) = undecodable {
            return Err(Error::Recovery(e.to_string()));
        }
        if panicked {
            return Err(Error::Recovery("a replay thread panicked".into()));
        }
        Ok((replayed, refused))
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
        let Some(e) = shard.live(id) else {
            return Ok(false);
        };
        let t = &e.task;
        if !e.awaits_occurrence() || t.next_run_time >= now {
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
    pub(crate) fn snapshot_now(&self, roll: bool) -> Result<()> {
        let Some(log) = self.store.log() else {
            return Ok(());
        };
        if log.stats().last_lsn.is_none() {
            return Ok(()); // no record yet
        }
        // With `roll`, the active segment ends here, so the snapshot covers
        // all of it and the compaction below deletes it: the records of
        // deleted tasks in it leave the disk now, not once the segment fills
        // (SPEC §11). `compact()` asks for that; the automatic compaction
        // does not, or a small `compact_after_bytes` would start a segment
        // per compaction (the garbage it leaves is bounded by one segment).
        if roll {
            log.roll()?;
        }
        let guards: Vec<_> = (0..super::store::SHARDS)
            .map(|i| self.store.lock_index(i))
            .collect();
        // Every record is appended under its shard's lock, all held here, so
        // every frame reserved so far is complete and in these images.
        let Some(lsn) = log.covered_lsn() else {
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

/// What one replay walker did.
#[derive(Default)]
struct Walk {
    /// Records applied (refused ones included).
    replayed: u64,
    /// Records the engine refused.
    refused: u64,
    /// The highest id a `Submit` created.
    max_id: Option<TaskId>,
    /// The first invalid frame met.
    corrupt: Option<crate::log::LogError>,
    /// The first record that did not decode, with its LSN.
    undecodable: Option<(Lsn, codec::DecodeError)>,
}

/// Where a corruption error lies, for picking the first of several.
fn corrupt_lsn(e: &crate::log::LogError) -> u64 {
    match e {
        crate::log::LogError::Corrupt { lsn, .. } => *lsn,
        _ => u64::MAX,
    }
}

/// The id counter, the shard images (versions 2 and 3) and the full entries (version 1).
type Decoded = (u64, Vec<crate::engine::ShardImage>, Vec<TaskEntry>);

fn decode_snapshot(bytes: &[u8]) -> Result<Decoded> {
    let bad = |e: postcard::Error| Error::Recovery(format!("snapshot does not decode: {e}"));
    match bytes.split_first() {
        Some((2 | 3, body)) => {
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

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use crate::engine::{EventType, Shard};

    /// A snapshot written by the last build that wrote version 2 (every
    /// frozen task in the full form; `tests/fixtures/snapshot-v2/README.md`)
    /// still loads, and its finished tasks decode with their history.
    #[test]
    fn a_version_2_snapshot_still_loads() {
        let file = std::fs::read(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures/snapshot-v2/three-tasks.snap"),
        )
        .unwrap();
        let (_, _, body) = crate::log::snapshot::decode_snapshot(&file).unwrap();
        assert_eq!(body[0], 2, "the fixture is a version 2 snapshot");
        let (_, images, entries) = decode_snapshot(body).unwrap();
        assert!(entries.is_empty());
        let mut shard = Shard::new();
        for image in images {
            let (strays, _) = shard.load_image(image, |_| true, |_| {});
            assert!(strays.is_empty());
        }
        let task = |id| shard.get(TaskId(id)).unwrap().into_owned();

        let a = task(17);
        assert_eq!(&*a.task.name, "ok");
        assert_eq!(a.task.status, TaskStatus::Completed);
        assert_eq!(a.task.payload, serde_json::json!({"n": 1}));
        assert_eq!(a.task.result, Some(serde_json::json!({"echo": {"n": 1}})));
        let types: Vec<_> = a.events.iter().map(|e| e.ty).collect();
        assert_eq!(
            types,
            [
                EventType::Created,
                EventType::Claimed,
                EventType::Started,
                EventType::Completed
            ]
        );
        assert_eq!(a.attempts.len(), 1);
        assert_eq!(a.attempts[0].task_id, TaskId(17));
        assert_eq!(a.task.worker.as_deref(), Some(&*a.attempts[0].worker));

        let b = task(34);
        assert_eq!(b.task.tag.as_deref(), Some("t1"));
        assert_eq!(b.task.priority, 5);
        assert_eq!(b.task.status, TaskStatus::Completed);

        let c = task(51);
        assert_eq!(c.task.status, TaskStatus::PermanentlyFailed);
        assert_eq!(c.task.error.as_deref(), Some("boom"));
    }
}
