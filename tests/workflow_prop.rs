//! Property test over random workflow trees (SPEC §5): depth ≤ 4, fan-out ≤ 8,
//! random child failures and retries. Every parent finishes exactly once, its
//! `completed_children` equals its children's count, and the entries each round
//! shows the parent match its children's final outcomes.
//!
//! Case count: 24 by default, `PROPTEST_CASES=N` to change it.

mod common;

use common::PATIENCE;
use fibflow::{
    ChildSpec, EventType, Outcome, SubmitOptions, Task, TaskFilter, TaskId, TaskManager, TaskStatus,
};
use proptest::prelude::*;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One node of a generated tree.
#[derive(Debug, Clone)]
struct Node {
    /// The node fails while its retry_count is below this (a leaf when it runs, a
    /// parent after its children's fan-in, which then spawns a fresh round).
    fail: u32,
    /// Maximum executions (0 acts as 1).
    max_retries: u32,
    children: Vec<Node>,
}

impl Node {
    fn effective_max(&self) -> u32 {
        self.max_retries.max(1)
    }
    fn succeeds(&self) -> bool {
        self.fail < self.effective_max()
    }
    /// How many rounds of children a parent spawns (one per stage-1 run).
    fn rounds(&self) -> u32 {
        (self.fail + 1).min(self.effective_max())
    }
    /// Tasks the run creates: each round of a parent re-creates its subtree.
    fn tasks(&self) -> usize {
        let round: usize = self.children.iter().map(Node::tasks).sum();
        1 + if self.children.is_empty() {
            0
        } else {
            self.rounds() as usize * round
        }
    }
    fn depth(&self) -> usize {
        self.children
            .iter()
            .map(|c| c.depth() + 1)
            .max()
            .unwrap_or(0)
    }
    fn payload(&self, label: &str) -> Value {
        let kids: Vec<Value> = self
            .children
            .iter()
            .enumerate()
            .map(|(i, c)| json!({ "max_retries": c.max_retries, "payload": c.payload(&format!("{label}.{i}")) }))
            .collect();
        json!({ "label": label, "fail": self.fail, "children": kids })
    }
}

fn leaf() -> BoxedStrategy<Node> {
    (0..3u32, 0..4u32)
        .prop_map(|(fail, max_retries)| Node {
            fail,
            max_retries,
            children: Vec::new(),
        })
        .boxed()
}

/// A tree of exactly `depth` levels below its root (one random child carries the
/// full depth), fan-out 1..=8, mostly-leaf siblings so the size stays CI-friendly.
fn tree(depth: usize) -> BoxedStrategy<Node> {
    if depth == 0 {
        return leaf();
    }
    let sibling = prop_oneof![2 => leaf(), 1 => tree(depth - 1)];
    let parent_fail = prop_oneof![3 => Just(0u32), 1 => 1..3u32];
    (
        parent_fail,
        0..4u32,
        tree(depth - 1),
        prop::collection::vec(sibling, 0..=7),
        any::<prop::sample::Index>(),
    )
        .prop_map(|(fail, max_retries, deep, mut children, at)| {
            let i = at.index(children.len() + 1);
            children.insert(i, deep);
            Node {
                fail,
                max_retries,
                children,
            }
        })
        .boxed()
}

fn node_strategy() -> impl Strategy<Value = Node> {
    (0..=4usize).prop_flat_map(tree)
}

type Views = Arc<Mutex<HashMap<TaskId, Vec<Value>>>>;

fn manager(views: Views) -> TaskManager {
    let mgr = TaskManager::builder()
        .memory()
        .max_concurrent_tasks(4)
        .retry_interval(Duration::ZERO)
        .build()
        .unwrap();
    mgr.register("node", move |ctx| {
        let p = ctx.payload();
        let label = p["label"].as_str().unwrap().to_owned();
        let fail = p["fail"].as_u64().unwrap() as u32;
        let kids = p["children"].as_array().unwrap();
        let rc = ctx.retry_count();
        if !kids.is_empty() && ctx.stage() == 0 {
            let specs = kids
                .iter()
                .map(|k| {
                    ChildSpec::new("node", k["payload"].clone())
                        .max_retries(k["max_retries"].as_u64().unwrap() as u32)
                })
                .collect();
            return Ok(Outcome::spawn(specs));
        }
        if !kids.is_empty() {
            let entries = ctx.result().cloned().unwrap_or(Value::Null);
            views
                .lock()
                .unwrap()
                .entry(ctx.id())
                .or_default()
                .push(entries);
        }
        if rc < fail {
            return Err(format!("node {label} failed at retry {rc}: \"{{x}}\"").into());
        }
        Ok(json!({ "label": label, "retry": rc }).into())
    })
    .unwrap();
    mgr
}

fn expected_error(label: &str, node: &Node) -> String {
    format!(
        "node {label} failed at retry {}: \"{{x}}\"",
        node.effective_max() - 1
    )
}

/// Checks `task` (generated from `node` with `label`) and its subtree.
fn check(
    mgr: &TaskManager,
    views: &HashMap<TaskId, Vec<Value>>,
    task: &Task,
    node: &Node,
    label: &str,
) {
    assert_eq!(task.payload["label"], label);
    let terminal: Vec<EventType> = mgr
        .events(task.id)
        .unwrap()
        .iter()
        .map(|e| e.event_type)
        .filter(|t| matches!(t, EventType::Completed | EventType::PermanentlyFailed))
        .collect();
    assert_eq!(
        terminal.len(),
        1,
        "{label} finishes exactly once: {terminal:?}"
    );
    if node.succeeds() {
        assert_eq!(task.status, TaskStatus::Completed, "{label}");
        assert_eq!(task.result.as_ref().unwrap()["label"], label);
    } else {
        assert_eq!(task.status, TaskStatus::PermanentlyFailed, "{label}");
        assert_eq!(
            task.error.as_deref(),
            Some(expected_error(label, node).as_str())
        );
    }
    let mut kids = mgr.list_tasks(&TaskFilter::all().parent(task.id));
    kids.sort_by_key(|t| t.id);
    let n = node.children.len();
    let rounds = if n == 0 { 0 } else { node.rounds() as usize };
    assert_eq!(kids.len(), rounds * n, "{label}: children over all rounds");
    assert_eq!(task.total_children as usize, kids.len(), "{label}");
    assert_eq!(
        task.completed_children as usize,
        kids.len(),
        "{label}: every outcome delivered once"
    );
    if n == 0 {
        assert!(!views.contains_key(&task.id));
        return;
    }
    let seen = &views[&task.id];
    assert_eq!(seen.len(), rounds, "{label}: one fan-in per round");
    for (round, (chunk, entries)) in kids.chunks(n).zip(seen).enumerate() {
        let expect: Vec<Value> = chunk
            .iter()
            .map(|c| match c.status {
                TaskStatus::Completed => {
                    json!({ "task_id": c.id.0, "result": c.result.clone().unwrap() })
                }
                TaskStatus::PermanentlyFailed => {
                    json!({ "task_id": c.id.0, "error": c.error.clone().unwrap() })
                }
                s => panic!("{label}: child {} is {s} after its parent finished", c.id),
            })
            .collect();
        assert_eq!(entries, &json!(expect), "{label}: entries of round {round}");
        for (i, (c, spec)) in chunk.iter().zip(&node.children).enumerate() {
            assert_eq!(c.root_id, Some(task.root_id.unwrap_or(task.id)));
            check(mgr, views, c, spec, &format!("{label}.{i}"));
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: common::proptest_cases(24), max_shrink_iters: 64, ..ProptestConfig::default() })]

    #[test]
    fn random_workflow_trees_deliver_every_outcome_exactly_once(root in node_strategy()) {
        prop_assume!(root.tasks() <= 1500);
        assert!(root.depth() <= 4);
        let views: Views = Arc::default();
        let mgr = manager(views.clone());
        mgr.start().unwrap();
        let opts = SubmitOptions::new().max_retries(root.max_retries);
        let id = mgr.submit_with("node", root.payload("r"), opts).unwrap();
        let task = mgr.wait(id, PATIENCE).unwrap();
        let views = views.lock().unwrap().clone();
        check(&mgr, &views, &task, &root, "r");
        let all = mgr.list_tasks(&TaskFilter::all().workflow(id));
        prop_assert!(all.iter().all(|t| t.status.is_terminal()), "nothing left running after wait(root)");
        mgr.stop(Duration::from_secs(5)).unwrap();
    }
}
