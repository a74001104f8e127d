//! Shared helpers for the integration tests: conditions with generous deadlines,
//! never fixed sleeps.
#![allow(dead_code)]

pub mod fib;
pub mod picture;

use fibflow::{EventType, ManualClock, Task, TaskFilter, TaskId, TaskManager};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A seeded xorshift generator: small and reproducible, so a failing seed
/// replays the same sequence.
pub struct XorShift(u64);

impl XorShift {
    /// The generator for `seed` (any value, zero included).
    pub fn new(seed: u64) -> XorShift {
        XorShift(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// The next value.
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A value below `n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// How long a condition may take on a slow, loaded machine.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// Waits until `f` is true, yielding between checks; panics with `what` after PATIENCE.
pub fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let until = Instant::now() + PATIENCE;
    while !f() {
        assert!(Instant::now() < until, "timed out waiting for: {what}");
        std::thread::yield_now();
        std::thread::park_timeout(Duration::from_millis(1));
    }
}

/// A manager on a manual clock at a fixed start.
pub fn manual(max_concurrent: usize) -> (TaskManager, Arc<ManualClock>) {
    let clock = ManualClock::new(1_700_000_000_000);
    let mgr = TaskManager::builder()
        .memory()
        .clock(clock.clone())
        .max_concurrent_tasks(max_concurrent)
        .build()
        .unwrap();
    (mgr, clock)
}

/// The event type names of a task, in order.
pub fn event_names(mgr: &TaskManager, id: TaskId) -> Vec<&'static str> {
    mgr.events(id)
        .unwrap()
        .iter()
        .map(|e| e.event_type.as_str())
        .collect()
}

/// Whether the task has an event of this type.
pub fn has_event(mgr: &TaskManager, id: TaskId, ty: EventType) -> bool {
    mgr.events(id).unwrap().iter().any(|e| e.event_type == ty)
}

/// Proptest case count: CI-sized by default, `PROPTEST_CASES` for long runs.
pub fn proptest_cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// A latch handlers block on until the test opens it (no sleeps).
#[derive(Default)]
pub struct Gate {
    open: std::sync::Mutex<bool>,
    cv: std::sync::Condvar,
}

impl Gate {
    /// A closed gate.
    pub fn new() -> Arc<Gate> {
        Arc::new(Gate::default())
    }
    /// Blocks until the gate is open.
    pub fn wait(&self) {
        let mut g = self.open.lock().unwrap();
        while !*g {
            g = self.cv.wait(g).unwrap();
        }
    }
    /// Opens the gate for every waiter, now and later.
    pub fn open(&self) {
        *self.open.lock().unwrap() = true;
        self.cv.notify_all();
    }
}

/// The children of `parent`, in id (creation) order.
pub fn children_of(mgr: &TaskManager, parent: TaskId) -> Vec<Task> {
    let mut v = mgr.list_tasks(&TaskFilter::all().parent(parent));
    v.sort_by_key(|t| t.id);
    v
}

/// `builder.build()`, retried while its directory is locked. A manager that
/// was just stopped has released its lock, but a child process another test
/// spawns at that moment holds a copy of the lock's descriptor from its fork
/// until its exec closes it (`flock` locks belong to the open file description).
pub fn build_unlocked(builder: fibflow::Builder) -> fibflow::Result<TaskManager> {
    let until = Instant::now() + PATIENCE;
    loop {
        match builder.clone().build() {
            Err(fibflow::Error::Log(fibflow::log::LogError::Locked { .. }))
                if Instant::now() < until =>
            {
                std::thread::yield_now();
            }
            other => return other,
        }
    }
}

/// Counts its drops: a handler's future holds one to show it was dropped.
pub struct DropGuard(pub Arc<std::sync::atomic::AtomicUsize>);

impl Drop for DropGuard {
    fn drop(&mut self) {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// A latch async handlers await (a tokio watch channel); the test opens it
/// from a plain thread.
#[derive(Clone)]
pub struct Release(Arc<tokio::sync::watch::Sender<bool>>);

impl Release {
    /// A shut latch.
    pub fn new() -> Release {
        Release(Arc::new(tokio::sync::watch::channel(false).0))
    }
    /// Opens it for every waiter, now and later.
    pub fn open(&self) {
        self.0.send_replace(true);
    }
    /// Waits until it is open.
    pub async fn wait(&self) {
        let mut rx = self.0.subscribe();
        let _ = rx.wait_for(|open| *open).await;
    }
}

/// Runs `f` on its own thread (8 MiB of stack, as a main thread has) and
/// returns its result; a panic in `f` is raised again here, and a hang (a
/// deadlock) fails with `what` after `limit`. A stuck thread is leaked.
pub fn within<T: Send + 'static>(
    what: &str,
    limit: Duration,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .stack_size(8 << 20)
        .spawn(move || {
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
            let _ = tx.send(r);
        })
        .expect("a thread for `within`");
    match rx.recv_timeout(limit) {
        Ok(Ok(v)) => v,
        Ok(Err(p)) => std::panic::resume_unwind(p),
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
            panic!("HANG: {what} did not finish within {limit:?}")
        }
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
            panic!("{what}: its thread ended without a result")
        }
    }
}
