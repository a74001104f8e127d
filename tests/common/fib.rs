//! Helpers of the ports of fib-flow's own suite (`fibflow_port.rs`,
//! `fibflow_port_more.rs`).

use super::eventually;
use fibflow::{EventType, ManualClock, Task, TaskId, TaskManager, TaskStatus, TimeZone};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

/// 2023-11-14T22:13:20Z, on a whole second.
pub const T0: u64 = 1_700_000_000_000;
pub const SEC: Duration = Duration::from_secs(1);

/// fib-flow's usual `beforeEach`: `max_retries: 2`, `max_concurrent_tasks: N`,
/// here on a manual clock in UTC.
pub fn fib_manager(concurrency: usize) -> (Arc<TaskManager>, Arc<ManualClock>) {
    let clock = ManualClock::new(T0);
    let mgr = TaskManager::builder()
        .memory()
        .clock(clock.clone())
        .time_zone(TimeZone::from_name("UTC").unwrap())
        .max_retries(2)
        .max_concurrent_tasks(concurrency)
        .build()
        .unwrap();
    (Arc::new(mgr), clock)
}

pub fn status_of(mgr: &TaskManager, id: TaskId) -> TaskStatus {
    mgr.get_task(id).unwrap().status
}

/// fib-flow's `waitForStatus`.
pub fn wait_status(mgr: &TaskManager, id: TaskId, status: TaskStatus) -> Task {
    eventually(&format!("task {id} {status}"), || {
        status_of(mgr, id) == status
    });
    mgr.get_task(id).unwrap()
}

pub fn events_of(mgr: &TaskManager, id: TaskId, ty: EventType) -> Vec<fibflow::Event> {
    mgr.events(id)
        .unwrap()
        .into_iter()
        .filter(|e| e.event_type == ty)
        .collect()
}

/// fib-flow's usual handler result.
pub fn ok() -> fibflow::HandlerResult {
    Ok(json!({ "success": true }).into())
}
