//! Shared bench setup. Dispatch: the same-run baseline (a raw crossbeam channel
//! feeding parked threads) and in-memory managers with probe handlers. Other bench
//! files may add their own helpers here; a file that does not use one of these
//! gets no dead-code warning because of the `allow` below.
#![allow(dead_code)]

use crossbeam::channel::{self, Receiver, Sender};
use fibflow::{SubmitOptions, TaskManager, TaskStatus};
use serde_json::Value;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Pause before each latency sample, so the workers have parked again.
pub const IDLE_GAP: Duration = Duration::from_micros(300);

/// A baseline job, as a thread pool's channel carries it.
type Job = Box<dyn FnOnce() + Send>;

/// The baseline: `n` threads parked in `recv` on one crossbeam channel of boxed
/// jobs (`Box<dyn FnOnce() + Send>`, what a thread pool's channel carries; such
/// a channel moves the 6–7 M no-op jobs/s issue 2 gives for its baseline). A
/// thread runs each job and counts it.
pub struct ParkedThreads {
    jobs: Option<Sender<Job>>,
    started_tx: Sender<Instant>,
    started: Receiver<Instant>,
    done: Arc<AtomicU64>,
    threads: Vec<JoinHandle<()>>,
}

impl ParkedThreads {
    /// Starts `n` parked threads.
    pub fn new(n: usize) -> ParkedThreads {
        let (jobs, rx) = channel::unbounded::<Job>();
        let (started_tx, started) = channel::unbounded::<Instant>();
        let done = Arc::new(AtomicU64::new(0));
        let threads = (0..n)
            .map(|_| {
                let (rx, done) = (rx.clone(), done.clone());
                std::thread::spawn(move || {
                    while let Ok(job) = rx.recv() {
                        job();
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        ParkedThreads {
            jobs: Some(jobs),
            started_tx,
            started,
            done,
            threads,
        }
    }

    /// Hands one job to an idle thread; the time until it started (the job
    /// records the instant it runs, as fibflow's probe handler does).
    pub fn hand_off(&self) -> Duration {
        let tx = self.started_tx.clone();
        let t0 = Instant::now();
        let job: Job = Box::new(move || {
            let _ = tx.send(Instant::now());
        });
        self.jobs
            .as_ref()
            .expect("running")
            .send(job)
            .expect("workers alive");
        let started = self.started.recv().expect("workers alive");
        started.saturating_duration_since(t0)
    }

    /// Pushes `n` no-op jobs and waits until all ran; the elapsed time.
    pub fn run_noops(&self, n: u64) -> Duration {
        let target = self.done.load(Ordering::Relaxed) + n;
        let t0 = Instant::now();
        let jobs = self.jobs.as_ref().expect("running");
        for i in 0..n {
            let job: Job = Box::new(move || {
                std::hint::black_box(i);
            });
            jobs.send(job).expect("workers alive");
        }
        while self.done.load(Ordering::Relaxed) < target {
            std::thread::yield_now();
        }
        t0.elapsed()
    }
}

impl Drop for ParkedThreads {
    fn drop(&mut self) {
        self.jobs = None;
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// An in-memory manager with `workers` workers and two handlers: `probe`, which
/// sends the instant it started on the returned channel, and `noop`, which counts.
pub struct Probe {
    pub mgr: TaskManager,
    pub started: Receiver<Instant>,
    pub ran: Arc<AtomicU64>,
}

impl Probe {
    pub fn new(workers: usize) -> Probe {
        let mgr = TaskManager::builder()
            .memory()
            .max_concurrent_tasks(workers)
            .build()
            .expect("in-memory manager");
        let (tx, started) = channel::unbounded();
        mgr.register("probe", move |_| {
            let _ = tx.send(Instant::now());
            Ok(Value::Null.into())
        })
        .expect("register probe");
        let ran = Arc::new(AtomicU64::new(0));
        let r = ran.clone();
        mgr.register("noop", move |_| {
            r.fetch_add(1, Ordering::Relaxed);
            Ok(Value::Null.into())
        })
        .expect("register noop");
        mgr.start().expect("start");
        Probe { mgr, started, ran }
    }

    /// Submits one task while the workers are idle; the time until its handler started.
    pub fn submit_to_start(&self) -> Duration {
        let t0 = Instant::now();
        let id = self.mgr.submit("probe", Value::Null).expect("submit");
        let started = self.started.recv().expect("probe handler");
        let lat = started.saturating_duration_since(t0);
        self.mgr
            .wait(id, Duration::from_secs(30))
            .expect("probe completes");
        lat
    }

    /// Submits `n` no-op tasks in batches of 1000 and waits until all are
    /// completed (end to end); the elapsed time.
    pub fn run_noops(&self, n: u64) -> Duration {
        let before = if cfg!(debug_assertions) {
            self.mgr.count_by_status()[&TaskStatus::Completed]
        } else {
            0
        };
        let target = self.ran.load(Ordering::Relaxed) + n;
        let t0 = Instant::now();
        let mut left = n;
        while left > 0 {
            let k = left.min(1000);
            let batch = (0..k).map(|_| ("noop", Value::Null, SubmitOptions::new()));
            self.mgr.submit_batch(batch).expect("submit batch");
            left -= k;
        }
        // Every handler ran and no attempt holds a slot: every completion is
        // recorded (a worker releases its slot after recording the outcome).
        // Cheaper than `count_by_status`, which scans the whole task table.
        while self.ran.load(Ordering::Relaxed) < target || self.mgr.running() > 0 {
            std::thread::yield_now();
        }
        let elapsed = t0.elapsed();
        debug_assert_eq!(
            self.mgr.count_by_status()[&TaskStatus::Completed],
            before + n
        );
        elapsed
    }
}
