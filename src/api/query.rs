//! Queries over owned snapshots (SPEC §10).

use super::TaskManager;
use crate::codec::{Record, TaskId, TaskKind};
use crate::engine::{Attempt, Event, SlotRef, Task, TaskEntry, TaskStatus};
use crate::runtime::error::{Error, Result};
use crate::runtime::store::SHARDS;
use crate::runtime::Core;
use serde::Serialize;
use std::collections::BTreeMap;

/// Task filters, combined with AND; the default matches every task.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TaskFilter {
    /// Handler name.
    pub name: Option<String>,
    /// Status.
    pub status: Option<TaskStatus>,
    /// Async or cron.
    pub kind: Option<TaskKind>,
    /// Tag.
    pub tag: Option<String>,
    /// Worker of the current or last attempt.
    pub worker: Option<String>,
    /// Direct parent.
    pub parent_id: Option<TaskId>,
    /// Workflow root (descendants only).
    pub root_id: Option<TaskId>,
    /// A workflow: the root itself and all its descendants.
    pub workflow: Option<TaskId>,
    /// Suspended tasks whose latest explicit suspension had this reason.
    pub suspend_reason: Option<String>,
}

impl TaskFilter {
    /// Matches every task.
    pub fn all() -> Self {
        Self::default()
    }
    /// Filters by name.
    pub fn name(mut self, n: impl Into<String>) -> Self {
        self.name = Some(n.into());
        self
    }
    /// Filters by status.
    pub fn status(mut self, s: TaskStatus) -> Self {
        self.status = Some(s);
        self
    }
    /// Filters by tag.
    pub fn tag(mut self, t: impl Into<String>) -> Self {
        self.tag = Some(t.into());
        self
    }
    /// Filters by parent.
    pub fn parent(mut self, id: TaskId) -> Self {
        self.parent_id = Some(id);
        self
    }
    /// Filters by workflow (root and descendants).
    pub fn workflow(mut self, root: TaskId) -> Self {
        self.workflow = Some(root);
        self
    }

    /// Whether a task found through the tag index matches on status alone.
    fn covered_by_tag(&self) -> bool {
        self.only_status_and(self.workflow.is_none() && self.root_id.is_none())
    }

    /// Whether a task found through the root index (or, with no tag and no root,
    /// the whole table) matches on status alone.
    fn covered_by_root(&self) -> bool {
        self.only_status_and(self.workflow.is_none() || self.root_id.is_none())
    }

    fn only_status_and(&self, rest: bool) -> bool {
        rest && self.name.is_none()
            && self.kind.is_none()
            && self.worker.is_none()
            && self.parent_id.is_none()
            && self.suspend_reason.is_none()
    }

    pub(crate) fn matches(&self, e: &TaskEntry) -> bool {
        let t = &e.task;
        self.name.as_ref().is_none_or(|n| **n == *t.name)
            && self.status.is_none_or(|s| s == t.status)
            && self.kind.is_none_or(|k| k == t.kind)
            && self.tag.as_ref().is_none_or(|g| t.tag.as_ref() == Some(g))
            && self
                .worker
                .as_ref()
                .is_none_or(|w| t.worker.as_deref() == Some(w.as_str()))
            && self.parent_id.is_none_or(|p| t.parent_id == Some(p))
            && self.root_id.is_none_or(|r| t.root_id == Some(r))
            && self
                .workflow
                .is_none_or(|r| t.id == r || t.root_id == Some(r))
            && self.suspend_reason.as_ref().is_none_or(|r| {
                t.status == TaskStatus::Suspended && e.suspend_reason.as_ref() == Some(r)
            })
    }
}

/// Paging: `limit` items from `offset`, ascending unless `descending`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    /// Items per page.
    pub limit: usize,
    /// Items skipped.
    pub offset: usize,
    /// Newest first.
    pub descending: bool,
}

impl Default for Page {
    fn default() -> Self {
        Page {
            limit: 50,
            offset: 0,
            descending: false,
        }
    }
}

/// One page of results.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Paged<T> {
    /// The page.
    pub items: Vec<T>,
    /// Matches in all.
    pub total: usize,
    /// The page size asked for.
    pub limit: usize,
    /// The offset asked for.
    pub offset: usize,
    /// Whether more follow.
    pub has_more: bool,
}

impl<T> Paged<T> {
    pub(crate) fn of(mut all: Vec<T>, page: Page) -> Paged<T> {
        let total = all.len();
        if page.descending {
            all.reverse();
        }
        let items: Vec<T> = all.into_iter().skip(page.offset).take(page.limit).collect();
        let has_more = page.offset + items.len() < total;
        Paged {
            items,
            total,
            limit: page.limit,
            offset: page.offset,
            has_more,
        }
    }
}

/// Calls `f` on every task matching `filter`, shard by shard.
/// Uses the tag or workflow-root index when the filter names one, so the cost
/// follows the size of the answer, not of the history; finished tasks are decoded
/// only when the filter reads more than their status (see `TaskFilter::cheap`).
pub(crate) fn scan(core: &Core, filter: &TaskFilter, mut f: impl FnMut(SlotRef<'_>)) {
    scan_while(core, filter, |s| {
        f(s);
        true
    });
}

/// [`scan`] that stops as soon as `f` returns false.
pub(crate) fn scan_while(core: &Core, filter: &TaskFilter, mut f: impl FnMut(SlotRef<'_>) -> bool) {
    let root = filter.workflow.or(filter.root_id);
    for i in 0..SHARDS {
        let shard = core.store.lock_index(i);
        // `true` to go on.
        let mut visit = |s: SlotRef<'_>| {
            if filter.status.is_some_and(|st| st != s.status()) {
                return true;
            }
            let covered = if filter.tag.is_some() {
                filter.covered_by_tag()
            } else {
                filter.covered_by_root()
            };
            if covered || s.entry().is_some_and(|e| filter.matches(&e)) {
                return f(s);
            }
            true
        };
        let go_on = if let Some(tag) = &filter.tag {
            shard.with_tag(tag).all(&mut visit)
        } else if let Some(root) = root {
            // A workflow lives in one shard (I4), but scanning each shard's index is
            // as cheap and does not rely on it.
            let first = match shard.slot(root).filter(|_| filter.workflow.is_some()) {
                Some(s) => visit(s),
                None => true,
            };
            first && shard.under_root(root).all(&mut visit)
        } else {
            shard.slots().all(&mut visit)
        };
        if !go_on {
            return;
        }
    }
}

impl TaskManager {
    /// Calls `f` on every task matching `filter`, shard by shard.
    pub(crate) fn scan(&self, filter: &TaskFilter, f: impl FnMut(SlotRef<'_>)) {
        scan(&self.core, filter, f);
    }

    /// Tasks matching `filter`, sorted by (created_at, id).
    pub fn list_tasks(&self, filter: &TaskFilter) -> Vec<Task> {
        let mut out = Vec::new();
        self.scan(filter, |s| {
            out.extend(s.entry().map(|e| e.into_owned().task))
        });
        out.sort_by_key(|t| (t.created_at, t.id));
        out
    }

    /// One page of tasks matching `filter`.
    /// Only the page's tasks are copied: matches are sorted by key first.
    pub fn query_tasks(&self, filter: &TaskFilter, page: Page) -> Paged<Task> {
        let mut keys = Vec::new();
        self.scan(filter, |s| keys.push((s.created_at(), s.id())));
        keys.sort_unstable();
        let keys = Paged::of(keys, page);
        let items = keys
            .items
            .iter()
            .filter_map(|(_, id)| self.get_task(*id))
            .collect();
        Paged {
            items,
            total: keys.total,
            limit: keys.limit,
            offset: keys.offset,
            has_more: keys.has_more,
        }
    }

    /// Number of tasks per status (every status present, zero included).
    pub fn count_by_status(&self) -> BTreeMap<TaskStatus, u64> {
        let mut total = [0u64; 8];
        for i in 0..SHARDS {
            let c = self.core.store.lock_index(i).status_counts();
            for (t, n) in total.iter_mut().zip(c) {
                *t += n;
            }
        }
        TaskStatus::ALL.iter().copied().zip(total).collect()
    }

    /// Counts grouped by (tag, name, status), optionally for one status.
    pub fn stats_by_tag(
        &self,
        status: Option<TaskStatus>,
    ) -> BTreeMap<(Option<String>, String, TaskStatus), u64> {
        let filter = TaskFilter {
            status,
            ..TaskFilter::default()
        };
        let mut out = BTreeMap::new();
        self.scan(&filter, |s| {
            if let Some(e) = s.entry() {
                *out.entry((e.task.tag.clone(), e.task.name.to_string(), e.task.status))
                    .or_default() += 1;
            }
        });
        out
    }

    fn entry<T>(&self, id: TaskId, f: impl FnOnce(&TaskEntry) -> T) -> Result<T> {
        self.core
            .store
            .lock(id)
            .get(id)
            .map(|e| f(&e))
            .ok_or(Error::NotFound(id))
    }

    /// The audit events of a task, in order.
    pub fn events(&self, id: TaskId) -> Result<Vec<Event>> {
        self.entry(id, TaskEntry::event_list)
    }

    /// The attempts of a task, in order.
    pub fn attempts(&self, id: TaskId) -> Result<Vec<Attempt>> {
        self.entry(id, |e| e.attempts.to_vec())
    }

    /// Deletes the tasks matching `filter` with their events and attempts; returns
    /// how many. Running tasks are deleted too; their late results are dropped.
    pub fn delete_tasks(&self, filter: &TaskFilter) -> Result<u64> {
        let _call = self.core.enter_call()?;
        let mut ids = Vec::new();
        self.scan(filter, |s| ids.push(s.id()));
        let mut n = 0;
        for id in ids {
            match self.core.control(Record::Delete { id }) {
                Ok(()) => n += 1,
                Err(Error::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(n)
    }
}
