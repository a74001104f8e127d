//! A full picture of a manager through its public API, and the first
//! difference between two pictures: for the twin suites
//! (`tests/replay_backlog.rs`, `tests/twin_runs.rs`).

use fibflow::{Page, TaskFilter, TaskManager, TaskStatus};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};

/// A call's answer as JSON: `{"ok": ...}` or `{"err": message}`.
pub fn outcome<T: serde::Serialize>(r: fibflow::Result<T>) -> Value {
    match r {
        Ok(v) => json!({ "ok": v }),
        Err(e) => json!({ "err": e.to_string() }),
    }
}

/// Everything the public API shows about a manager's state, as JSON, for
/// comparing twins (one in memory, one durable and reopened). Checks on the
/// way that each task's events are in sequence and that no two events of a
/// shard share a number. Suspension reasons looked up: `wait s0` to `wait s3`.
pub fn picture(m: &TaskManager) -> Value {
    let tasks = m.list_tasks(&TaskFilter::all());
    let mut per_task = Vec::new();
    let mut tags = BTreeSet::new();
    let mut roots = BTreeSet::new();
    let mut names = BTreeSet::new();
    let mut shards: BTreeMap<u64, Vec<(u32, u64, u64, String)>> = BTreeMap::new();
    for t in &tasks {
        let events = m.events(t.id).unwrap();
        for w in events.windows(2) {
            assert!(
                w[0].sequence < w[1].sequence,
                "task {:?}: events out of sequence: {:?} then {:?}",
                t.id,
                w[0],
                w[1]
            );
        }
        for e in &events {
            shards.entry(t.id.0 & 15).or_default().push((
                e.sequence,
                t.id.0,
                e.id,
                e.event_type.as_str().to_string(),
            ));
        }
        tags.extend(t.tag.clone());
        roots.extend(t.root_id);
        if t.total_children > 0 {
            roots.insert(t.id);
        }
        names.insert(t.name.to_string());
        let audit = m
            .task_audit(
                t.id,
                Page {
                    limit: 4,
                    offset: 1,
                    descending: true,
                },
                Page::default(),
            )
            .unwrap();
        per_task.push(json!({
            "task": t,
            "get": m.get_task(t.id),
            "events": events,
            "attempts": m.attempts(t.id).unwrap(),
            "waiting": m.waiting_reason(t.id).map_err(|e| e.to_string()).unwrap(),
            "audit": audit,
        }));
    }
    // Events are numbered per shard (the low bits of a task id), each number once.
    for (shard, seqs) in &mut shards {
        seqs.sort();
        for w in seqs.windows(2) {
            assert_ne!(
                w[0].0, w[1].0,
                "shard {shard}: two events share a sequence number: {:?} and {:?}",
                w[0], w[1]
            );
        }
    }
    let ids = |f: TaskFilter| -> Vec<u64> { m.list_tasks(&f).iter().map(|t| t.id.0).collect() };
    let by_tag: BTreeMap<&String, Value> = tags
        .iter()
        .map(|g| {
            let pending = ids(TaskFilter::all().tag(g).status(TaskStatus::Pending));
            (
                g,
                json!({"all": ids(TaskFilter::all().tag(g)), "pending": pending}),
            )
        })
        .collect();
    let by_status: BTreeMap<&str, Vec<u64>> = TaskStatus::ALL
        .iter()
        .map(|s| (s.as_str(), ids(TaskFilter::all().status(*s))))
        .collect();
    let by_name: BTreeMap<&String, Vec<u64>> = names
        .iter()
        .map(|n| (n, ids(TaskFilter::all().name(n.as_str()))))
        .collect();
    let suspended_by_reason: Vec<Value> = (0..4)
        .map(|s| {
            let f = TaskFilter {
                suspend_reason: Some(format!("wait s{s}")),
                ..TaskFilter::default()
            };
            json!(ids(f))
        })
        .collect();
    let workflows: Vec<Value> = roots
        .iter()
        .map(|r| {
            json!({
                "root": r,
                "tasks": ids(TaskFilter::all().workflow(*r)),
                "children": ids(TaskFilter::all().parent(*r)),
                "audit": outcome(m.workflow_audit(*r, Page::default(), Page { limit: 1000, offset: 0, descending: false })),
                "summary": outcome(m.workflow_summary(*r)),
            })
        })
        .collect();
    let counts: Vec<(String, u64)> = m
        .count_by_status()
        .into_iter()
        .map(|(s, n)| (s.as_str().to_string(), n))
        .collect();
    let stats: Vec<Value> = m
        .stats_by_tag(None)
        .into_iter()
        .map(|((tag, name, s), n)| json!([tag, name, s, n]))
        .collect();
    let page = m.query_tasks(
        &TaskFilter::all(),
        Page {
            limit: 5,
            offset: 3,
            descending: true,
        },
    );
    json!({
        "tasks": per_task,
        "counts": counts,
        "stats": stats,
        "by_tag": by_tag,
        "by_status": by_status,
        "by_name": by_name,
        "suspended_by_reason": suspended_by_reason,
        "workflows": workflows,
        "page": page,
        "shard_events": shards.into_iter().collect::<Vec<_>>(),
    })
}

/// The first place two JSON values differ, as a path, or `None`.
pub fn first_difference(left: &Value, right: &Value, path: &str) -> Option<String> {
    match (left, right) {
        (Value::Object(lo), Value::Object(ro)) => {
            let only_right = ro.keys().filter(|k| !lo.contains_key(*k));
            for key in lo.keys().chain(only_right) {
                let here = format!("{path}.{key}");
                match (lo.get(key), ro.get(key)) {
                    (Some(lv), Some(rv)) => {
                        if let Some(found) = first_difference(lv, rv, &here) {
                            return Some(found);
                        }
                    }
                    (lv, rv) => return Some(format!("{here}: {lv:?} vs {rv:?}")),
                }
            }
            None
        }
        (Value::Array(la), Value::Array(ra)) => {
            for (i, (lv, rv)) in la.iter().zip(ra).enumerate() {
                if let Some(found) = first_difference(lv, rv, &format!("{path}[{i}]")) {
                    return Some(found);
                }
            }
            (la.len() != ra.len()).then(|| format!("{path}: {} items vs {}", la.len(), ra.len()))
        }
        _ => (left != right).then(|| format!("{path}: {left} vs {right}")),
    }
}

#[track_caller]
pub fn same(a: &Value, b: &Value, what: &str) {
    if let Some(d) = first_difference(a, b, "") {
        if let Some(i) = d
            .strip_prefix(".tasks[")
            .and_then(|r| r.split(']').next())
            .and_then(|i| i.parse::<usize>().ok())
        {
            let brief = |v: &Value| -> Value {
                let t = &v["tasks"][i];
                let evs: Vec<Value> = t["events"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|e| {
                        json!([
                            e["event_type"],
                            e["from_status"],
                            e["to_status"],
                            e["stage"],
                            e["attempt"],
                            e["time"],
                            e["message"]
                        ])
                    })
                    .collect();
                json!({"task": t["task"], "events": evs})
            };
            eprintln!("LEFT {:#}\nRIGHT {:#}", brief(a), brief(b));
        }
        panic!("{what}: first difference at {d}");
    }
}
