//! Parent/child links and fan-in (SPEC §5).
//!
//! A parent that spawns children keeps a [`Round`]: the ids of the round's children
//! and the outcomes delivered so far. Each delivery is its own `ChildDone` record on
//! the parent, appended after the child's final record (causality by construction),
//! and a second delivery of the same child is refused, so "delivered exactly once"
//! is a fact in the log.

use crate::codec::{ChildOutcome, TaskId};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// One round of children a suspended parent waits for.
#[derive(Clone, PartialEq, Debug, Default, Serialize, Deserialize)]
pub struct Round {
    /// The round's children in creation order, which is ascending id order
    /// (ids are allocated increasing), so membership is a binary search.
    pub children: Vec<TaskId>,
    /// Outcomes delivered so far, by child id.
    pub outcomes: BTreeMap<TaskId, ChildOutcome>,
}

impl Round {
    /// A round waiting for `children`.
    pub fn new(mut children: Vec<TaskId>) -> Round {
        children.sort_unstable();
        Round {
            children,
            outcomes: BTreeMap::new(),
        }
    }

    /// Whether `child` belongs to this round and has not been delivered yet.
    pub fn awaits(&self, child: TaskId) -> bool {
        !self.outcomes.contains_key(&child) && self.children.binary_search(&child).is_ok()
    }

    /// Whether every child has been delivered.
    pub fn is_done(&self) -> bool {
        self.outcomes.len() == self.children.len()
    }

    /// The entries the resumed parent sees: `{task_id, result}` or `{task_id, error}`,
    /// sorted by task id, error text verbatim.
    pub fn result_entries(&self) -> Value {
        let entries: Vec<Value> = self
            .outcomes
            .iter()
            .map(|(id, outcome)| match outcome {
                ChildOutcome::Completed(result) => json!({"task_id": id.0, "result": result}),
                ChildOutcome::Failed(error) => json!({"task_id": id.0, "error": error}),
            })
            .collect();
        Value::Array(entries)
    }
}
