//! `fibflow inspect` and `fibflow verify`: read-only views of a directory.
//!
//! `inspect` opens the directory like any manager (taking its lock, replaying the
//! log and running the recovery of SPEC §12, without starting workers), so a
//! directory another process holds open is refused with the log's `Locked` error
//! instead of being read while it moves. The library has no read-only open, so
//! inspecting a crashed directory records its recovery (`task_recovered`), exactly
//! as the next `demo` run would.

use super::demo::by_status_json;
use super::out::{outln, print_json, CliResult};
use chrono::{DateTime, Utc};
use fibflow::{Task, TaskId, TaskManager};
use serde_json::{json, Value};
use std::path::Path;
use std::process::ExitCode;

fn open_existing(dir: &Path) -> Result<TaskManager, Box<dyn std::error::Error>> {
    if !dir.is_dir() {
        return Err(format!("{} is not a directory (nothing to inspect)", dir.display()).into());
    }
    // Opening a manager on a directory creates a log there: refuse one that
    // holds none, rather than write into it and report 0 tasks.
    if !fibflow::log::holds_log(dir)? {
        return Err(format!(
            "{} holds no fibflow log (no segment or snapshot files): give the directory a manager wrote (`fibflow crash-test --dir D` keeps its log in D/log)",
            dir.display()
        )
        .into());
    }
    Ok(TaskManager::builder().dir(dir).build()?)
}

fn time(ms: u64) -> String {
    i64::try_from(ms)
        .ok()
        .and_then(DateTime::<Utc>::from_timestamp_millis)
        .map_or_else(
            || format!("{ms} ms"),
            |t| t.format("%Y-%m-%d %H:%M:%S%.3f").to_string(),
        )
}

/// Runs `fibflow inspect DIR [--task ID | --workflow ID]`.
pub fn inspect(dir: &Path, task: Option<u64>, workflow: Option<u64>, json_out: bool) -> CliResult {
    let mgr = open_existing(dir)?;
    let result = inspect_open(&mgr, dir, task, workflow, json_out);
    // Opening already made recovery durable and nothing else was written; the
    // process exits next, so skip freeing a large table task by task.
    std::mem::forget(mgr);
    result
}

fn inspect_open(
    mgr: &TaskManager,
    dir: &Path,
    task: Option<u64>,
    workflow: Option<u64>,
    json_out: bool,
) -> CliResult {
    if let Some(id) = task {
        return inspect_task(mgr, TaskId(id), json_out);
    }
    if let Some(id) = workflow {
        return inspect_workflow(mgr, TaskId(id), json_out);
    }
    let counts = mgr.count_by_status();
    let stats = mgr.log_stats();
    let rec = mgr.recovery_stats().clone();
    let total: u64 = counts.values().sum();
    if json_out {
        print_json(&json!({
            "dir": dir.display().to_string(),
            "tasks": total,
            "by_status": by_status_json(&counts),
            "log_bytes": stats.as_ref().map(|s| s.bytes_on_disk),
            "segments": stats.as_ref().map(|s| s.segments),
            "last_lsn": stats.as_ref().and_then(|s| s.last_lsn).map(|l| l.0),
            "snapshot_lsn": stats.as_ref().and_then(|s| s.snapshot_lsn).map(|l| l.0),
            "recovery": serde_json::to_value(&rec)?,
        }))?;
        return Ok(ExitCode::SUCCESS);
    }
    outln!("{}: {total} tasks", dir.display())?;
    for (s, n) in &counts {
        outln!("  {:<20} {n}", s.as_str())?;
    }
    if let Some(s) = stats {
        let lsn =
            |l: Option<fibflow::log::Lsn>| l.map_or_else(|| "-".to_owned(), |l| l.0.to_string());
        outln!(
            "log: {} bytes in {} segments, last LSN {}, snapshot LSN {}",
            s.bytes_on_disk,
            s.segments,
            lsn(s.last_lsn),
            lsn(s.snapshot_lsn)
        )?;
    }
    outln!(
        "recovery: {} tasks from snapshot, {} records replayed, {} refused",
        rec.snapshot_tasks,
        rec.records_replayed,
        rec.records_refused
    )?;
    Ok(ExitCode::SUCCESS)
}

fn inspect_task(mgr: &TaskManager, id: TaskId, json_out: bool) -> CliResult {
    let task = mgr.get_task(id).ok_or(fibflow::Error::NotFound(id))?;
    let events = mgr.events(id)?;
    let attempts = mgr.attempts(id)?;
    if json_out {
        print_json(&json!({
            // The snapshot types serialize to natural JSON (payloads as values,
            // statuses and event types by their SPEC names).
            "task": serde_json::to_value(&task)?,
            "events": serde_json::to_value(&events)?,
            "attempts": serde_json::to_value(&attempts)?,
        }))?;
        return Ok(ExitCode::SUCCESS);
    }
    outln!(
        "task {} `{}`: {} (stage {}, attempt {})",
        task.id,
        task.name,
        task.status.as_str(),
        task.stage,
        task.attempt
    )?;
    outln!("  payload  {}", task.payload)?;
    if let Some(r) = &task.result {
        outln!("  result   {r}")?;
    }
    if let Some(e) = &task.error {
        outln!("  error    {e}")?;
    }
    if let Some(k) = &task.dedup_key {
        outln!("  dedup    {k}")?;
    }
    outln!("  retries  {}/{}", task.retry_count, task.max_retries)?;
    outln!("events:")?;
    for e in &events {
        let change = match (e.from_status, e.to_status) {
            (Some(f), Some(t)) => format!(" {} -> {}", f.as_str(), t.as_str()),
            (None, Some(t)) => format!(" -> {}", t.as_str()),
            _ => String::new(),
        };
        let who = e
            .worker
            .as_deref()
            .map(|w| format!(" on {w}"))
            .unwrap_or_default();
        let msg = e
            .message
            .as_deref()
            .map(|m| format!(": {m}"))
            .unwrap_or_default();
        outln!(
            "  {}  {}{change}{who}{msg}",
            time(e.time),
            e.event_type.as_str()
        )?;
    }
    outln!("attempts:")?;
    for a in &attempts {
        let end = a.ended_at.map_or_else(|| "(open)".to_owned(), time);
        let outcome = a.outcome.map_or("running", fibflow::AttemptOutcome::as_str);
        let err = a
            .error
            .as_deref()
            .map(|e| format!(": {e}"))
            .unwrap_or_default();
        outln!(
            "  #{} on {}  {} .. {end}  {outcome}{err}",
            a.number,
            a.worker,
            time(a.started_at)
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `--workflow ID`: the tree of tasks under a root with their statuses, then the
/// workflow summary (status and outcome counts, timing, critical path, ...).
fn inspect_workflow(mgr: &TaskManager, root: TaskId, json_out: bool) -> CliResult {
    let tasks = mgr.list_tasks(&fibflow::TaskFilter::all().workflow(root));
    if tasks.is_empty() {
        return Err(fibflow::Error::NotFound(root).into());
    }
    // A child's descendants carry the real root's id: shown from a child, the
    // tree and the summary would leave them out.
    if let Some(real) = tasks.iter().find(|t| t.id == root).and_then(|t| t.root_id) {
        return Err(format!(
            "task {root} is not a workflow root; its workflow is --workflow {real}"
        )
        .into());
    }
    let summary = mgr.workflow_summary(root)?;
    let mut children: std::collections::BTreeMap<Option<TaskId>, Vec<&Task>> =
        std::collections::BTreeMap::new();
    for t in &tasks {
        let parent = if t.id == root { None } else { t.parent_id };
        children.entry(parent).or_default().push(t);
    }
    let mut rows = Vec::new();
    let mut stack: Vec<(&Task, usize)> = children
        .get(&None)
        .into_iter()
        .flatten()
        .map(|t| (*t, 0))
        .collect();
    while let Some((t, depth)) = stack.pop() {
        rows.push((t, depth));
        if let Some(kids) = children.get(&Some(t.id)) {
            stack.extend(kids.iter().rev().map(|k| (*k, depth + 1)));
        }
    }
    if json_out {
        let tree: Vec<Value> = rows
            .iter()
            .map(|(t, depth)| {
                json!({"id": t.id, "name": &*t.name, "status": t.status.as_str(), "stage": t.stage,
                       "parent_id": t.parent_id, "depth": depth, "error": t.error})
            })
            .collect();
        print_json(
            &json!({"root": root, "tree": tree, "summary": serde_json::to_value(&summary)?}),
        )?;
        return Ok(ExitCode::SUCCESS);
    }
    outln!("workflow {root}: {} tasks", tasks.len())?;
    for (t, depth) in &rows {
        let err = t
            .error
            .as_deref()
            .map(|e| format!(": {e}"))
            .unwrap_or_default();
        outln!(
            "  {}{} `{}` {} (stage {}){err}",
            "  ".repeat(*depth),
            t.id,
            t.name,
            t.status.as_str(),
            t.stage
        )?;
    }
    let counts: Vec<String> = summary
        .status_counts
        .iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect();
    outln!("statuses: {}", counts.join(", "))?;
    let outcomes: Vec<String> = summary
        .attempt_outcomes
        .iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect();
    outln!("attempts: {}", outcomes.join(", "))?;
    outln!("workers: {}", summary.workers.join(", "))?;
    if let Some(d) = summary.timing.duration_ms {
        outln!("duration: {d} ms")?;
    }
    let path: Vec<String> = summary
        .critical_path
        .iter()
        .map(ToString::to_string)
        .collect();
    outln!("critical path: {}", path.join(" -> "))?;
    for a in &summary.slowest_attempts {
        outln!(
            "slow: task {} attempt {} on {}: {} ms",
            a.task_id,
            a.number,
            a.worker,
            a.duration_ms().unwrap_or(0)
        )?;
    }
    for f in &summary.failed_tasks {
        outln!(
            "failed: {} `{}` {}: {}",
            f.id,
            f.name,
            f.status.as_str(),
            f.error.as_deref().unwrap_or("")
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Whether a verify problem is only a torn tail (what a crash leaves; the next
/// open cuts it). `CorruptionReport` has no kind field, so this reads its reason.
fn is_torn_tail(p: &fibflow::log::CorruptionReport) -> bool {
    p.reason.starts_with("torn tail")
}

/// Runs `fibflow verify DIR`: every record's frame and checksum, every segment
/// header and the snapshot; exit 1 on corruption (a torn tail alone is reported
/// but is not corruption: recovery cuts it, as after any crash).
pub fn verify(dir: &Path, json_out: bool) -> CliResult {
    if !dir.is_dir() {
        return Err(format!("{} is not a directory (nothing to verify)", dir.display()).into());
    }
    let r = fibflow::log::verify(dir)?;
    let problems: Vec<Value> = r
        .problems
        .iter()
        .map(|p| json!({ "segment": p.segment, "offset": p.offset, "reason": p.reason, "torn_tail": is_torn_tail(p) }))
        .collect();
    let corrupt = r.problems.iter().any(|p| !is_torn_tail(p));
    if json_out {
        print_json(&json!({
            "dir": dir.display().to_string(),
            "segments": r.segments,
            "records": r.records,
            "last_lsn": r.last_lsn.map(|l| l.0),
            "snapshot_lsn": r.snapshot_lsn.map(|l| l.0),
            "problems": problems,
            "ok": !corrupt,
        }))?;
    } else {
        outln!(
            "{}: {} segments, {} valid records, last LSN {}",
            dir.display(),
            r.segments,
            r.records,
            r.last_lsn
                .map_or_else(|| "-".to_owned(), |l| l.0.to_string())
        )?;
        for p in &r.problems {
            outln!(
                "  problem in {} at offset {}: {}",
                p.segment,
                p.offset,
                p.reason
            )?;
        }
        outln!("{}", if corrupt { "CORRUPT" } else { "ok" })?;
    }
    Ok(if corrupt {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
