//! Submission: validate, resolve options, create the task.

use super::error::{check_tag, Error, Result};
use super::registry::Registered;
use super::Core;
use crate::codec::{NewTask, OnChildFailure, Record, TaskId, TaskKind, UnixMs};
use crate::log::Lsn;
use serde_json::Value;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Per-task options of a submission; unset ones come from the handler's
/// registration, else from the manager's defaults.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SubmitOptions {
    /// Run no earlier than this long after now.
    pub delay: Option<Duration>,
    /// Run no earlier than this time (overrides `delay`).
    pub run_at: Option<SystemTime>,
    /// Higher runs first.
    pub priority: Option<i32>,
    /// A label for queries and stats.
    pub tag: Option<String>,
    /// Time limit of one attempt.
    pub timeout: Option<Duration>,
    /// Maximum executions including the first.
    pub max_retries: Option<u32>,
    /// Fixed retry delay.
    pub retry_interval: Option<Duration>,
    /// Capability tags a worker must have (added to the handler's).
    pub requires: Vec<String>,
    /// A second submit with a key an existing task holds returns that task's id.
    pub dedup_key: Option<String>,
    /// Makes a cron task with this expression (it first runs at the next
    /// occurrence; `delay` and `run_at` are refused with it).
    pub cron: Option<String>,
}

impl SubmitOptions {
    /// No options.
    pub fn new() -> Self {
        Self::default()
    }
    /// Delays the first run.
    pub fn delay(mut self, d: Duration) -> Self {
        self.delay = Some(d);
        self
    }
    /// Runs no earlier than `t`.
    pub fn run_at(mut self, t: SystemTime) -> Self {
        self.run_at = Some(t);
        self
    }
    /// Sets the priority.
    pub fn priority(mut self, p: i32) -> Self {
        self.priority = Some(p);
        self
    }
    /// Sets the tag.
    pub fn tag(mut self, t: impl Into<String>) -> Self {
        self.tag = Some(t.into());
        self
    }
    /// Sets the attempt time limit.
    pub fn timeout(mut self, d: Duration) -> Self {
        self.timeout = Some(d);
        self
    }
    /// Sets the maximum executions.
    pub fn max_retries(mut self, n: u32) -> Self {
        self.max_retries = Some(n);
        self
    }
    /// Sets the retry delay.
    pub fn retry_interval(mut self, d: Duration) -> Self {
        self.retry_interval = Some(d);
        self
    }
    /// Adds required capability tags.
    pub fn requires<I, S>(mut self, tags: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.requires.extend(tags.into_iter().map(Into::into));
        self
    }
    /// Sets a dedup key.
    pub fn dedup_key(mut self, k: impl Into<String>) -> Self {
        self.dedup_key = Some(k.into());
        self
    }
    /// Makes this a cron task.
    pub fn cron(mut self, expr: impl Into<String>) -> Self {
        self.cron = Some(expr.into());
        self
    }
}

use super::clock::ceil_ms as ms;

/// Sorted, deduplicated, validated capability tags.
pub(crate) fn normalize_tags(mut tags: Vec<String>) -> Result<Vec<String>> {
    for t in &tags {
        check_tag(t)?;
    }
    tags.sort();
    tags.dedup();
    Ok(tags)
}

impl Core {
    /// Resolves options into the record of a new top-level task.
    fn new_task(
        &self,
        reg: &Registered,
        payload: Value,
        o: SubmitOptions,
        now: UnixMs,
    ) -> Result<Box<NewTask>> {
        if let Some(tag) = &o.tag {
            super::error::check_task_tag(tag)?;
        }
        if !crate::codec::json_depth_ok(&payload) {
            return Err(Error::InvalidOption(crate::codec::too_deep("the payload")));
        }
        // Most tasks require nothing: no clone, sort or check to make.
        let requires = if o.requires.is_empty() && reg.options.requires.is_empty() {
            Vec::new()
        } else {
            let mut requires = reg.options.requires.clone();
            requires.extend(o.requires);
            normalize_tags(requires)?
        };
        let d = &self.config.defaults;
        let pool_attempts = self.pool_max_attempts(&requires);
        let (kind, next_run_ms) = match &o.cron {
            Some(expr) => {
                if o.delay.is_some() || o.run_at.is_some() {
                    return Err(Error::InvalidOption(format!(
                        "cron task `{expr}`: delay and run_at do not apply (a cron task first runs at the next occurrence); leave them unset"
                    )));
                }
                let s = self.cron(expr)?;
                let next = s.next_after(now).ok_or_else(|| {
                    Error::InvalidOption(format!(
                        "cron expression `{expr}` has no future occurrence"
                    ))
                })?;
                (TaskKind::Cron, next)
            }
            None => {
                // Rounded up: a task never runs before the time asked for.
                let at = match (o.run_at, o.delay) {
                    (Some(t), _) => t.duration_since(UNIX_EPOCH).map_or(0, ms),
                    (None, Some(delay)) => {
                        self.clock.now_ms_ceil().max(now).saturating_add(ms(delay))
                    }
                    (None, None) => now,
                };
                (TaskKind::Async, at)
            }
        };
        // Boxed here, where its record will hold it: the new task (some 230
        // bytes) is then moved as a pointer on its way to the table.
        Ok(Box::new(NewTask {
            id: TaskId(0),
            name: reg.name.clone(),
            kind,
            payload,
            priority: o.priority.or(reg.options.priority).unwrap_or(d.priority),
            tag: o.tag,
            timeout_ms: o.timeout.or(reg.options.timeout).map_or(d.timeout_ms, ms),
            max_retries: o
                .max_retries
                .or(reg.options.max_retries)
                .or(pool_attempts)
                .unwrap_or(d.max_retries),
            retry_interval_ms: o
                .retry_interval
                .or(reg.options.retry_interval)
                .map_or(d.retry_interval_ms, ms),
            requires,
            dedup_key: o.dedup_key,
            cron: o.cron,
            next_run_ms,
            parent_id: None,
            root_id: None,
            on_failure: OnChildFailure::Deliver,
            created_ms: now,
        }))
    }

    /// The retry strategy's max attempts of the first extra pool that can run tasks
    /// with these requirements (the seed's `configureWorker`), if it sets one.
    fn pool_max_attempts(&self, requires: &[String]) -> Option<u32> {
        self.config
            .pools
            .iter()
            .find(|p| {
                !requires.is_empty()
                    && p.max_attempts.is_some()
                    && requires.iter().all(|r| p.tags.contains(r))
            })
            .and_then(|p| p.max_attempts)
    }

    /// Creates one task; returns its id (or the id holding the dedup key) and the LSN to wait for.
    pub(crate) fn submit_one(
        &self,
        name: &str,
        payload: Value,
        o: SubmitOptions,
    ) -> Result<(TaskId, Option<Lsn>)> {
        let new = self.prepare_submit(name, payload, o, self.now())?;
        self.submit_prepared(new)
    }

    /// Checks a submission and resolves its options, changing nothing.
    /// `now` is its submission time (one reading serves a whole batch).
    pub(crate) fn prepare_submit(
        &self,
        name: &str,
        payload: Value,
        o: SubmitOptions,
        now: UnixMs,
    ) -> Result<Box<NewTask>> {
        if self.stopping.load(std::sync::atomic::Ordering::Acquire) {
            return Err(Error::Stopped);
        }
        // What `trim().is_empty()` says, without trimming both ends of
        // every submitted name.
        if name.chars().all(char::is_whitespace) {
            return Err(Error::EmptyName);
        }
        self.registry
            .with(name, |reg| self.new_task(reg, payload, o, now))
            .ok_or_else(|| Error::NoHandler(name.to_owned()))?
    }

    /// Records a submission checked by [`Core::prepare_submit`].
    pub(crate) fn submit_prepared(&self, mut new: Box<NewTask>) -> Result<(TaskId, Option<Lsn>)> {
        let mut dedup = match &new.dedup_key {
            Some(key) => {
                let guard = self.store.dedup.lock();
                if let Some(&id) = guard.get(key) {
                    // That task's record is appended (the key is entered
                    // after it), but its submitter may still be waiting for
                    // it to be durable: so does this call.
                    return Ok((id, self.store.last_reserved()));
                }
                Some(guard)
            }
            None => None,
        };
        new.id = self.store.alloc_id(None);
        let id = new.id;
        let key = new.dedup_key.clone();
        let mut lsn = None;
        {
            let _wakes = self.dispatch.defer_wakes();
            let mut shard = self.store.lock(id);
            let (applied, l) = self.store.commit(&mut shard, Record::Submit(new))?;
            lsn = l.or(lsn);
            self.settle(&mut shard, id, applied, &mut lsn);
        }
        if let (Some(d), Some(key)) = (dedup.as_mut(), key) {
            d.insert(key, id);
        }
        Ok((id, lsn))
    }
}
