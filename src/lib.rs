//! # fibflow
//!
//! An embedded, durable task engine: register handlers, submit tasks, and fibflow
//! runs them on capability-routed worker pools with priorities, delays, retries,
//! timeouts, cron schedules, parent/child workflows and human-in-the-loop
//! suspension, with every state transition kept in a memory-mapped write-ahead log.
//!
//! ## Architecture
//!
//! ```text
//! api      TaskManager facade: builder, registration, submit, control, queries
//! runtime  registry, dispatcher (ready queues by capability), workers, timer
//! engine   the deterministic state machine: apply(record) -> state + effects
//! log      segmented mmap WAL over opaque records (framing, CRC-32C, recovery)
//! codec    the versioned record schema and its postcard encoding
//! (sync)   the primitives of the hand-written protocols: std's, or loom's
//!          under `--cfg fibflow_loom` (`.ci/loom` model-checks them)
//! ```
//!
//! ## Invariants
//!
//! - **I1** Replaying the log reproduces exactly the state at the last durable
//!   record: live operation and replay call the same `engine::Shard::apply`.
//! - **I2** A transition is checked, applied and appended while its task's shard is
//!   locked, so a task's records are in the log in the order they were applied.
//! - **I3** A record changes one task. Effects on another task (a child's outcome
//!   reaching its parent) are records of their own, appended after their cause.
//! - **I4** A workflow lives in one shard (a child's id carries its parent's shard),
//!   so a spawn is one atomic batch and a fan-in happens under one lock.
//! - **I5** A write from an attempt that no longer owns its task is refused by the
//!   engine (`TransitionError::Stale`); the manager drops its own late writes.
//! - **I6** `unsafe` code exists only in `log/mmap.rs`.
//!
//! ## Example
//!
//! ```
//! use fibflow::{TaskManager, Outcome};
//! use serde_json::json;
//! use std::time::Duration;
//!
//! let mgr = TaskManager::in_memory()?;
//! mgr.register("hello", |ctx| Ok(json!({"greeting": format!("hello {}", ctx.payload()["who"])}).into()))?;
//! mgr.start()?;
//! let id = mgr.submit("hello", json!({"who": "world"}))?;
//! let task = mgr.wait(id, Duration::from_secs(30))?;
//! assert_eq!(task.result.unwrap()["greeting"], "hello \"world\"");
//! # Ok::<(), fibflow::Error>(())
//! ```
#![deny(unsafe_code)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]
#![warn(missing_docs, unreachable_pub)]

pub mod api;
pub mod codec;
pub mod crash_test;
pub mod engine;
pub mod log;
pub mod runtime;
mod sync;

pub use api::{
    AttemptFilter, Builder, EventFilter, FailedTask, HandlerInfo, Page, Paged, Pool,
    RetentionPolicy, RetentionReport, StageTiming, StopReport, Storage, TaskAudit, TaskFilter,
    TaskManager, WorkflowAudit, WorkflowSummary, WorkflowTiming,
};
pub use codec::{OnChildFailure, TaskId, TaskKind};
pub use engine::schedule::{Backoff, CatchUp, RetryStrategy, TimeZone};
pub use engine::{Attempt, AttemptOutcome, Event, EventType, Task, TaskStatus};
pub use log::Durability;
pub use runtime::clock::{Clock, ManualClock, SystemClock};
pub use runtime::context::{ContextError, Interrupted, Progress, TaskContext};
pub use runtime::error::{Error, Result};
pub use runtime::registry::{BoxError, ChildSpec, Handler, HandlerOptions, HandlerResult, Outcome};
pub use runtime::{RecoveryStats, SubmitOptions};
