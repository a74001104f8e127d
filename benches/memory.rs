//! Resident memory per completed task with its default history (issue 5): runs
//! N no-op tasks with null payload and result in memory, then reads the resident
//! set size from /proc/self/statm before and after. RSS includes the allocator's
//! own overhead and fragmentation, so this is what a user would see.
//!
//! `cargo bench --bench memory` (N = 1,000,000; `FIBFLOW_MEM_TASKS` to change).

use fibflow::{SubmitOptions, TaskManager, TaskStatus};
use serde_json::Value;
use std::time::Duration;

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

fn main() {
    // `cargo bench` passes --bench; accept and ignore any arguments.
    let n: u64 = std::env::var("FIBFLOW_MEM_TASKS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    let mgr = TaskManager::builder()
        .memory()
        .max_concurrent_tasks(2)
        .build()
        .expect("manager");
    mgr.register("noop", |_| Ok(Value::Null.into()))
        .expect("register");
    mgr.start().expect("start");
    let before = rss_bytes();
    let mut done = 0;
    while done < n {
        let k = 10_000.min(n - done);
        let tasks = (0..k).map(|_| ("noop".to_string(), Value::Null, SubmitOptions::new()));
        let ids = mgr.submit_batch(tasks).expect("submit");
        if let Some(last) = ids.last() {
            mgr.wait(*last, Duration::from_secs(600)).expect("wait");
        }
        done += k;
    }
    while mgr.count_by_status()[&TaskStatus::Completed] < n {
        std::thread::yield_now();
    }
    let after = rss_bytes();
    let per_task = after.saturating_sub(before) / n;
    println!(
        "memory: {n} completed tasks (created, claimed, started, completed events; one attempt)"
    );
    println!(
        "memory: resident growth {} MiB, {per_task} bytes per task",
        (after - before) >> 20
    );
}
