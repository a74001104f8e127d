//! A SIGKILL crash-test harness for your own handlers and workload.
//!
//! [`CrashTest::run`] takes two closures: a *setup* that registers your handlers on a
//! [`TaskManager`], and a *workload* that submits and waits for tasks and tells the
//! harness, through an [`Ack`], what the API acknowledged. The harness then:
//!
//! 1. re-executes the current binary (same arguments) as a child process that opens
//!    a log directory, runs the setup and the workload, and prints every
//!    acknowledgement on stdout, flushed at once;
//! 2. kills the child with SIGKILL (`Child::kill`) after a seeded random number of
//!    acknowledgement lines (never after a sleep), `kills` times, on the same
//!    directory, so every child resumes what the previous one left;
//! 3. after every kill, reopens the directory in its own process with the setup
//!    (timing the open: lock, snapshot, replay and recovery) and checks that every
//!    acknowledged submission exists, every acknowledged completion is still
//!    `completed`, no task is left `running`, and no acknowledged completion gained
//!    an attempt (a handler ran again) — without any help from your handlers;
//! 4. runs the child once more to the end (it must exit with status 0) and checks
//!    that every acknowledged task ended `completed` or in another terminal status.
//!
//! The result is a [`CrashReport`]: kills, acknowledged tasks, lost tasks, re-run
//! completions, interrupted attempts and the recovery time of every reopen.
//!
//! Call it from the `main` of a test binary with `harness = false` (in `Cargo.toml`:
//! `[[test]] name = "my_crash" harness = false`), so that the re-executed child runs
//! nothing but this harness. Code before `run` in `main` runs in the child too.
//!
//! ## The workload's contract
//!
//! - Submit with dedup keys (`SubmitOptions::new().dedup_key(..)`): every child runs
//!   the workload from the start, and dedup keys make a resubmission return the
//!   task that already exists instead of a new one.
//! - Call [`Ack::submitted`] after a submit returned, and [`Ack::completed`] after
//!   [`TaskManager::wait`] returned a completed task (or use [`Ack::wait`], which
//!   does both). Acknowledge only what the API acknowledged to you.
//! - Wait for the tasks you submit: the last child must leave every acknowledged
//!   task in a terminal status.
//! - Do not delete tasks (no retention, no `delete_tasks`): a deleted task counts
//!   as lost.
//!
//! The setup runs in the child and in the parent, where the manager is never
//! started: it should only register handlers.
//!
//! ```no_run
//! use fibflow::crash_test::CrashTest;
//! use fibflow::SubmitOptions;
//! use serde_json::json;
//! use std::time::Duration;
//!
//! fn main() {
//!     let report = CrashTest::new()
//!         .kills(20)
//!         .seed(7)
//!         .run(
//!             |mgr| mgr.register("job", |ctx| Ok(ctx.payload().clone().into())),
//!             |mgr, ack| -> fibflow::Result<()> {
//!                 let mut ids = Vec::new();
//!                 for i in 0..100 {
//!                     let opts = SubmitOptions::new().dedup_key(format!("k{i}"));
//!                     let id = mgr.submit_with("job", json!(i), opts)?;
//!                     ack.submitted(id);
//!                     ids.push(id);
//!                 }
//!                 mgr.start()?;
//!                 for id in ids {
//!                     ack.wait(mgr, id, Duration::from_secs(60))?;
//!                 }
//!                 Ok(())
//!             },
//!         )
//!         .expect("the crash test could not run");
//!     println!("{report}");
//!     assert!(report.is_clean(), "{report}");
//! }
//! ```

use crate::{Attempt, TaskStatus};
use crate::{AttemptOutcome, Builder, Durability, Task, TaskFilter, TaskId, TaskManager};
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

/// Environment variable that overrides [`CrashTest::kills`] (a number).
pub const ENV_KILLS: &str = "FIBFLOW_CRASH_ITERS";
/// Environment variable that overrides [`CrashTest::seed`] (a number), to replay a
/// failure with the seed its report printed.
pub const ENV_SEED: &str = "FIBFLOW_CRASH_SEED";

/// Set in the child: the name of the crash test it runs.
const CHILD_NAME: &str = "FIBFLOW_CRASH_TEST_CHILD";
/// Set in the child: its log directory.
const CHILD_DIR: &str = "FIBFLOW_CRASH_TEST_DIR";
/// Set in the child: its round.
const CHILD_ROUND: &str = "FIBFLOW_CRASH_TEST_ROUND";
/// Set in the child: the seed of the run.
const CHILD_SEED: &str = "FIBFLOW_CRASH_TEST_SEED";
/// The start of every protocol line on the child's stdout.
const PREFIX: &str = "fibflow-crash-test ";
/// Problem descriptions kept in a report (the counts are always complete).
const MAX_PROBLEMS: usize = 50;
/// Exit status of a child whose setup or workload returned an error.
const EXIT_WORKLOAD_FAILED: i32 = 70;
/// Exit status of a child that could not write to its parent (the parent is gone).
const EXIT_PARENT_GONE: i32 = 71;

/// Why a crash test could not run (a finding about your log is a [`CrashReport`],
/// not an error; a log that cannot be reopened is [`CrashTestError::Reopen`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CrashTestError {
    /// An environment variable that overrides a setting holds no number.
    #[error(
        "environment variable {var}={value:?} is not a whole number: unset it or set it to one"
    )]
    BadEnv {
        /// The variable.
        var: &'static str,
        /// Its value.
        value: String,
    },
    /// The directory given to [`CrashTest::dir`] has files in it.
    #[error("the crash-test directory {} is not empty: remove it, or pass a missing or empty directory to `CrashTest::dir`", path.display())]
    DirNotEmpty {
        /// The directory.
        path: PathBuf,
    },
    /// A file-system or pipe operation of the harness failed.
    #[error("cannot {what} ({}): {source}", path.display())]
    Io {
        /// What the harness was doing.
        what: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The current binary could not be started again as the child.
    #[error("cannot start the child process {}: {source}; run the crash test from a binary that can re-execute itself, such as a `harness = false` test", exe.display())]
    Spawn {
        /// The binary.
        exe: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A child exited unsuccessfully without being killed: its setup or workload
    /// failed or panicked (its stderr is inherited, so the reason is printed above).
    #[error("the child of round {round} exited with {status} without being killed: read its stderr above; the setup and the workload must succeed when nothing kills them (log directory: {})", dir.display())]
    ChildFailed {
        /// The round (0 is the calibration run in a scratch directory).
        round: u32,
        /// How it exited.
        status: ExitStatus,
        /// Its log directory.
        dir: PathBuf,
    },
    /// A child printed nothing for longer than [`CrashTest::child_timeout`]; it was
    /// killed.
    #[error("the child of round {round} printed no line for {timeout:?} and was killed: the workload may hang or wait for a task that cannot finish; raise `CrashTest::child_timeout` if it is only slow (log directory: {})", dir.display())]
    ChildTimeout {
        /// The round.
        round: u32,
        /// The timeout.
        timeout: Duration,
        /// Its log directory.
        dir: PathBuf,
    },
    /// A full run of the workload acknowledged nothing, so there is nothing to kill
    /// it after and nothing to check.
    #[error("the workload acknowledged nothing in a full run: call `ack.submitted(id)` after every submit and `ack.completed(id)` (or `ack.wait(..)`) after every completion")]
    NothingAcknowledged,
    /// The children kept finishing before their kill point.
    #[error("only {kills} of {wanted} kills happened in {rounds} rounds because the workload finished before its kill point: set `CrashTest::kill_window` to the number of acknowledgements one run prints")]
    TooFewKills {
        /// Kills asked for.
        wanted: u32,
        /// Kills done.
        kills: u32,
        /// Rounds run.
        rounds: u32,
    },
    /// The log directory could not be opened after a round: recovery failed. This is
    /// a finding; keep the directory for `fibflow verify` and report it.
    #[error("reopening the log at {} after round {round} failed: {source}; recovery failed on a killed log, keep the directory (`fibflow verify DIR`) and report it", dir.display())]
    Reopen {
        /// The log directory.
        dir: PathBuf,
        /// The round after which it was opened.
        round: u32,
        /// The error.
        #[source]
        source: crate::Error,
    },
    /// The setup returned an error when the parent ran it on a reopened log.
    #[error("the setup failed on the reopened log: {0}; the setup should only register handlers")]
    Setup(String),
    /// Reading a task from the reopened log failed.
    #[error("reading task {id} from the reopened log failed: {source}")]
    Query {
        /// The task.
        id: TaskId,
        /// The error.
        #[source]
        source: crate::Error,
    },
}

/// What a setup or workload closure may return: `()` or a `Result<(), E>` whose
/// error can be displayed (such as [`crate::Result<()>`] or
/// `Result<(), Box<dyn std::error::Error>>`).
///
/// ```
/// use fibflow::crash_test::StepResult;
/// assert!(().into_step_result().is_ok());
/// assert!(Err::<(), _>("no").into_step_result().is_err());
/// ```
pub trait StepResult {
    /// `Ok` on success, the error in words otherwise.
    fn into_step_result(self) -> Result<(), String>;
}

impl StepResult for () {
    fn into_step_result(self) -> Result<(), String> {
        Ok(())
    }
}

impl<E: fmt::Display> StepResult for Result<(), E> {
    fn into_step_result(self) -> Result<(), String> {
        self.map_err(|e| e.to_string())
    }
}

/// The workload's channel to the harness: what the API acknowledged, one line
/// each on the child's stdout, flushed before the call returns.
///
/// ```no_run
/// use fibflow::crash_test::CrashTest;
/// use fibflow::SubmitOptions;
/// use serde_json::json;
/// use std::time::Duration;
///
/// CrashTest::new().run(
///     |mgr| mgr.register("job", |_| Ok(json!(null).into())),
///     |mgr, ack| -> fibflow::Result<()> {
///         let id = mgr.submit_with("job", json!({}), SubmitOptions::new().dedup_key("only"))?;
///         ack.submitted(id);
///         mgr.start()?;
///         let task = mgr.wait(id, Duration::from_secs(60))?;
///         if task.status == fibflow::TaskStatus::Completed {
///             ack.completed(id);
///         }
///         Ok(())
///     },
/// )?;
/// # Ok::<(), fibflow::crash_test::CrashTestError>(())
/// ```
#[derive(Debug)]
pub struct Ack {
    round: u32,
    seed: u64,
    dir: PathBuf,
}

impl Ack {
    /// The submission of `id` was acknowledged (a submit returned it): from now on
    /// the task must exist after every crash.
    ///
    /// ```no_run
    /// # fn f(mgr: &fibflow::TaskManager, ack: &fibflow::crash_test::Ack) -> fibflow::Result<()> {
    /// let id = mgr.submit_with("job", serde_json::json!(1), fibflow::SubmitOptions::new().dedup_key("k1"))?;
    /// ack.submitted(id);
    /// # Ok(()) }
    /// ```
    pub fn submitted(&self, id: TaskId) {
        Self::send(&[("ack", id)]);
    }

    /// The submissions of `ids` were acknowledged (one flush for all of them, for
    /// `submit_batch`).
    ///
    /// ```no_run
    /// # fn f(mgr: &fibflow::TaskManager, ack: &fibflow::crash_test::Ack) -> fibflow::Result<()> {
    /// use fibflow::SubmitOptions;
    /// let batch = (0..8).map(|i| ("job".to_string(), serde_json::json!(i), SubmitOptions::new().dedup_key(format!("k{i}"))));
    /// ack.submitted_all(&mgr.submit_batch(batch)?);
    /// # Ok(()) }
    /// ```
    pub fn submitted_all(&self, ids: &[TaskId]) {
        let lines: Vec<(&str, TaskId)> = ids.iter().map(|&id| ("ack", id)).collect();
        Self::send(&lines);
    }

    /// The completion of `id` was acknowledged ([`TaskManager::wait`] returned it
    /// `completed`): from now on it must stay completed and its handler must never
    /// run again.
    ///
    /// ```no_run
    /// # fn f(mgr: &fibflow::TaskManager, ack: &fibflow::crash_test::Ack, id: fibflow::TaskId) -> fibflow::Result<()> {
    /// if mgr.wait(id, std::time::Duration::from_secs(60))?.status == fibflow::TaskStatus::Completed {
    ///     ack.completed(id);
    /// }
    /// # Ok(()) }
    /// ```
    pub fn completed(&self, id: TaskId) {
        Self::send(&[("done", id)]);
    }

    /// Waits for `id` with [`TaskManager::wait`] and acknowledges its completion if
    /// it completed; returns the task.
    ///
    /// ```no_run
    /// # fn f(mgr: &fibflow::TaskManager, ack: &fibflow::crash_test::Ack, id: fibflow::TaskId) -> fibflow::Result<()> {
    /// let task = ack.wait(mgr, id, std::time::Duration::from_secs(60))?;
    /// # Ok(()) }
    /// ```
    pub fn wait(&self, mgr: &TaskManager, id: TaskId, timeout: Duration) -> crate::Result<Task> {
        let task = mgr.wait(id, timeout)?;
        if task.status == TaskStatus::Completed {
            self.completed(id);
        }
        Ok(task)
    }

    /// This child's round: 0 for the calibration run (a full run in a scratch
    /// directory that measures how many acknowledgements a run prints), then 1, 2, …
    /// for the killed rounds and the final run.
    ///
    /// ```no_run
    /// # fn f(ack: &fibflow::crash_test::Ack) {
    /// eprintln!("child of round {}", ack.round());
    /// # }
    /// ```
    pub fn round(&self) -> u32 {
        self.round
    }

    /// The seed of the crash test, for a workload that randomizes itself.
    ///
    /// ```no_run
    /// # fn f(ack: &fibflow::crash_test::Ack) {
    /// use rand::SeedableRng;
    /// let rng = rand::rngs::StdRng::seed_from_u64(ack.seed() ^ u64::from(ack.round()));
    /// # }
    /// ```
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// The log directory this child opened (a place for files of your own is its
    /// parent directory; do not write into the log directory).
    ///
    /// ```no_run
    /// # fn f(ack: &fibflow::crash_test::Ack) {
    /// eprintln!("log at {}", ack.dir().display());
    /// # }
    /// ```
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn send(lines: &[(&str, TaskId)]) {
        let out = std::io::stdout();
        let mut o = out.lock();
        let written = lines
            .iter()
            .try_for_each(|(kind, id)| writeln!(o, "{PREFIX}{kind} {}", id.0))
            .and_then(|()| o.flush());
        if written.is_err() {
            // The parent is gone (it gave up or was killed): nobody is left to tell.
            std::process::exit(EXIT_PARENT_GONE);
        }
    }
}

/// What a crash test found. [`CrashReport::is_clean`] says whether it found nothing
/// wrong; its `Display` is a summary with the seed to replay it.
///
/// ```no_run
/// # let report: fibflow::crash_test::CrashReport = unimplemented!();
/// if !report.is_clean() {
///     eprintln!("{report}");
///     std::process::exit(1);
/// }
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CrashReport {
    /// Children killed with SIGKILL.
    pub kills: u32,
    /// Children run on the log (killed rounds, rounds that finished before their
    /// kill point, and the final run).
    pub rounds: u32,
    /// Distinct tasks whose submission was acknowledged.
    pub acknowledged: usize,
    /// Distinct tasks whose completion was acknowledged.
    pub acknowledged_completions: usize,
    /// Acknowledged tasks that went missing, or whose acknowledged completion was
    /// found not `completed`, after some reopen.
    pub lost: usize,
    /// Attempts that acknowledged completions gained after their completion: a
    /// handler ran again for a task whose completion was acknowledged.
    pub rerun_completions: usize,
    /// Tasks found `running` right after a reopen (recovery must return them to
    /// `pending`), counted once per reopen.
    pub stuck_running: usize,
    /// Acknowledged tasks not in a terminal status after the final run.
    pub unfinished: usize,
    /// Acknowledged tasks that ended in a terminal status other than `completed`
    /// (not a finding by itself: a task interrupted by kills too often in a row is
    /// quarantined as `permanently_failed`, see `Builder::quarantine_after`).
    pub ended_not_completed: usize,
    /// Attempts with outcome `interrupted` in the log after the final run.
    pub interrupted_attempts: usize,
    /// Time to open the log (lock, snapshot, replay, recovery) at each reopen.
    pub recovery: Vec<Duration>,
    /// Records replayed at each reopen.
    pub records_replayed: Vec<u64>,
    /// Logged records the engine refused when replaying them, over all reopens:
    /// the log and the state machine disagree, which is always a bug.
    pub refused_records: u64,
    /// The seed (replay with `FIBFLOW_CRASH_SEED`).
    pub seed: u64,
    /// The first problems found, in words.
    pub problems: Vec<String>,
    /// Problems found beyond those in `problems`.
    pub problems_omitted: usize,
    /// The directory kept for inspection (`fibflow inspect`, `fibflow verify`):
    /// always a directory given to [`CrashTest::dir`], a temporary one only when
    /// the report is not clean or [`CrashTest::keep_dir`] was set.
    pub dir: Option<PathBuf>,
}

impl CrashReport {
    /// No loss, no re-run completion, no task left running or unfinished.
    ///
    /// ```
    /// assert!(fibflow::crash_test::CrashReport::default().is_clean());
    /// ```
    pub fn is_clean(&self) -> bool {
        self.lost == 0
            && self.rerun_completions == 0
            && self.stuck_running == 0
            && self.unfinished == 0
            && self.refused_records == 0
    }

    fn problem(&mut self, text: String) {
        if self.problems.len() < MAX_PROBLEMS {
            self.problems.push(text);
        } else {
            self.problems_omitted += 1;
        }
    }
}

impl fmt::Display for CrashReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "crash test {} (seed {}): {} kills in {} rounds; {} acknowledged tasks, {} acknowledged completions",
            if self.is_clean() { "clean" } else { "FAILED" },
            self.seed,
            self.kills,
            self.rounds,
            self.acknowledged,
            self.acknowledged_completions
        )?;
        write!(
            f,
            "  lost {}, re-run completions {}, left running {}, unfinished {}, interrupted attempts {}, ended not completed {}, refused records {}",
            self.lost,
            self.rerun_completions,
            self.stuck_running,
            self.unfinished,
            self.interrupted_attempts,
            self.ended_not_completed,
            self.refused_records
        )?;
        if !self.recovery.is_empty() {
            let mut sorted = self.recovery.clone();
            sorted.sort();
            let ms = |d: Duration| d.as_secs_f64() * 1e3;
            write!(
                f,
                "\n  reopen time over {} reopens: min {:.1} ms, median {:.1} ms, max {:.1} ms",
                sorted.len(),
                ms(sorted[0]),
                ms(sorted[sorted.len() / 2]),
                ms(sorted[sorted.len() - 1])
            )?;
        }
        for p in &self.problems {
            write!(f, "\n  - {p}")?;
        }
        if self.problems_omitted > 0 {
            write!(f, "\n  - … and {} more", self.problems_omitted)?;
        }
        if let Some(dir) = &self.dir {
            write!(f, "\n  directory kept at {}", dir.display())?;
        }
        if !self.is_clean() {
            write!(f, "\n  replay with {ENV_SEED}={}", self.seed)?;
        }
        Ok(())
    }
}

type Configure = Box<dyn Fn(Builder) -> Builder>;

/// A crash test: configure it, then call [`CrashTest::run`] with your setup and
/// workload. See the [module documentation](self) for the protocol.
///
/// ```no_run
/// use fibflow::crash_test::CrashTest;
/// use fibflow::Durability;
///
/// let report = CrashTest::new()
///     .kills(50)
///     .seed(42)
///     .durability(Durability::Sync)
///     .configure(|b| b.max_concurrent_tasks(4))
///     .run(|mgr| mgr.register("job", |_| Ok(serde_json::json!(1).into())), |_mgr, _ack| ())?;
/// # Ok::<(), fibflow::crash_test::CrashTestError>(())
/// ```
pub struct CrashTest {
    name: String,
    kills: u32,
    seed: u64,
    dir: Option<PathBuf>,
    durability: Durability,
    configure: Option<Configure>,
    kill_window: Option<u64>,
    child_timeout: Duration,
    keep_dir: bool,
    verbose: bool,
}

impl fmt::Debug for CrashTest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CrashTest")
            .field("name", &self.name)
            .field("kills", &self.kills)
            .field("seed", &self.seed)
            .field("dir", &self.dir)
            .field("durability", &self.durability)
            .field("kill_window", &self.kill_window)
            .field("child_timeout", &self.child_timeout)
            .finish_non_exhaustive()
    }
}

impl Default for CrashTest {
    fn default() -> Self {
        CrashTest {
            name: "default".into(),
            kills: 20,
            seed: 1,
            dir: None,
            durability: Durability::Sync,
            configure: None,
            kill_window: None,
            child_timeout: Duration::from_secs(120),
            keep_dir: false,
            verbose: false,
        }
    }
}

impl CrashTest {
    /// 20 kills, seed 1, `Durability::Sync`, a fresh temporary directory, the kill
    /// window measured by a calibration run, 120 s of patience per child line.
    ///
    /// ```
    /// let t = fibflow::crash_test::CrashTest::new();
    /// # drop(t);
    /// ```
    pub fn new() -> Self {
        Self::default()
    }

    /// Tells crash tests apart when one binary runs several: a child runs only the
    /// test of its name; the others return an empty, clean report in the child.
    ///
    /// ```
    /// let t = fibflow::crash_test::CrashTest::new().name("orders");
    /// # drop(t);
    /// ```
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Number of SIGKILLs (default 20; the environment variable
    /// `FIBFLOW_CRASH_ITERS` overrides it).
    ///
    /// ```
    /// let t = fibflow::crash_test::CrashTest::new().kills(100);
    /// # drop(t);
    /// ```
    pub fn kills(mut self, n: u32) -> Self {
        self.kills = n;
        self
    }

    /// Seed of the kill points (default 1; the environment variable
    /// `FIBFLOW_CRASH_SEED` overrides it, to replay a report's seed).
    ///
    /// ```
    /// let t = fibflow::crash_test::CrashTest::new().seed(7);
    /// # drop(t);
    /// ```
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Works in `path` (created if missing; it must be empty) instead of a fresh
    /// temporary directory, and keeps it afterwards. The log is `path/log`.
    ///
    /// ```
    /// let t = fibflow::crash_test::CrashTest::new().dir("target/crash-test");
    /// # drop(t);
    /// ```
    pub fn dir(mut self, path: impl Into<PathBuf>) -> Self {
        self.dir = Some(path.into());
        self
    }

    /// Durability of the log, in the child and at every reopen (default `Sync`,
    /// the mode whose guarantee a SIGKILL test checks; `Os` and `Batched` survive
    /// a process kill too, since the page cache outlives the process).
    ///
    /// ```
    /// let t = fibflow::crash_test::CrashTest::new().durability(fibflow::Durability::Os);
    /// # drop(t);
    /// ```
    pub fn durability(mut self, d: Durability) -> Self {
        self.durability = d;
        self
    }

    /// Adjusts the [`Builder`] used in the child and at every reopen (pools,
    /// concurrency, segment size, retries…). The harness sets the directory after
    /// it, and the durability before it.
    ///
    /// ```
    /// let t = fibflow::crash_test::CrashTest::new()
    ///     .configure(|b| b.max_concurrent_tasks(2).segment_size(1 << 20));
    /// # drop(t);
    /// ```
    pub fn configure(mut self, f: impl Fn(Builder) -> Builder + 'static) -> Self {
        self.configure = Some(Box::new(f));
        self
    }

    /// Kill points are drawn from `1..=n` acknowledgement lines, for every round
    /// (a round that prints fewer lines finishes without a kill and is checked
    /// all the same). By default a calibration run (the whole workload once, in a
    /// scratch directory, as round 0) measures how many lines a run prints, and a
    /// round that finishes first narrows the window to its own count; set this
    /// when a full run is too long or never ends, or when the work grows with
    /// [`Ack::round`].
    ///
    /// ```
    /// let t = fibflow::crash_test::CrashTest::new().kill_window(500);
    /// # drop(t);
    /// ```
    pub fn kill_window(mut self, n: u64) -> Self {
        self.kill_window = Some(n.max(1));
        self
    }

    /// How long a child may print nothing before it is killed and the test fails
    /// with [`CrashTestError::ChildTimeout`] (default 120 s).
    ///
    /// ```
    /// let t = fibflow::crash_test::CrashTest::new().child_timeout(std::time::Duration::from_secs(600));
    /// # drop(t);
    /// ```
    pub fn child_timeout(mut self, d: Duration) -> Self {
        self.child_timeout = d;
        self
    }

    /// Keeps the temporary directory even when the report is clean.
    ///
    /// ```
    /// let t = fibflow::crash_test::CrashTest::new().keep_dir(true);
    /// # drop(t);
    /// ```
    pub fn keep_dir(mut self, keep: bool) -> Self {
        self.keep_dir = keep;
        self
    }

    /// Prints one line per round on stderr.
    ///
    /// ```
    /// let t = fibflow::crash_test::CrashTest::new().verbose(true);
    /// # drop(t);
    /// ```
    pub fn verbose(mut self, on: bool) -> Self {
        self.verbose = on;
        self
    }

    /// Runs the crash test. In the child (the re-executed binary) it runs `setup`
    /// and `workload` on the log and exits the process (status 0, or 70 if either
    /// returned an error); in the parent it runs the rounds and returns the report.
    /// See the [module documentation](self).
    ///
    /// ```no_run
    /// use fibflow::crash_test::CrashTest;
    /// let report = CrashTest::new().run(
    ///     |mgr| mgr.register("job", |_| Ok(serde_json::json!(1).into())),
    ///     |_mgr, _ack| {},
    /// )?;
    /// assert!(report.is_clean(), "{report}");
    /// # Ok::<(), fibflow::crash_test::CrashTestError>(())
    /// ```
    pub fn run<S, SR, W, WR>(self, setup: S, workload: W) -> Result<CrashReport, CrashTestError>
    where
        S: Fn(&TaskManager) -> SR,
        SR: StepResult,
        W: FnOnce(&TaskManager, &Ack) -> WR,
        WR: StepResult,
    {
        match std::env::var(CHILD_NAME) {
            Ok(name) if name == self.name => self.child(setup, workload),
            // The child of another crash test in the same binary.
            Ok(_) => Ok(CrashReport::default()),
            Err(_) => self.parent(&setup),
        }
    }

    fn builder(&self, dir: &Path) -> Builder {
        let b = TaskManager::builder().durability(self.durability);
        let b = match &self.configure {
            Some(f) => f(b),
            None => b,
        };
        b.dir(dir)
    }

    // ----- the child -------------------------------------------------------------

    fn child<S, SR, W, WR>(&self, setup: S, workload: W) -> !
    where
        S: Fn(&TaskManager) -> SR,
        SR: StepResult,
        W: FnOnce(&TaskManager, &Ack) -> WR,
        WR: StepResult,
    {
        let code = match self.child_body(setup, workload) {
            Ok(()) => 0,
            Err(msg) => {
                let _ = writeln!(std::io::stderr(), "fibflow crash_test child: {msg}");
                EXIT_WORKLOAD_FAILED
            }
        };
        let _ = std::io::stdout().flush();
        std::process::exit(code)
    }

    fn child_body<S, SR, W, WR>(&self, setup: S, workload: W) -> Result<(), String>
    where
        S: Fn(&TaskManager) -> SR,
        SR: StepResult,
        W: FnOnce(&TaskManager, &Ack) -> WR,
        WR: StepResult,
    {
        let var = |name: &str| std::env::var(name).map_err(|e| format!("{name}: {e}"));
        let number = |name: &str| -> Result<u64, String> {
            var(name)?
                .parse()
                .map_err(|e| format!("{name} is not a number: {e}"))
        };
        let dir = PathBuf::from(var(CHILD_DIR)?);
        let ack = Ack {
            round: number(CHILD_ROUND)? as u32,
            seed: number(CHILD_SEED)?,
            dir: dir.clone(),
        };
        let mgr = self
            .builder(&dir)
            .build()
            .map_err(|e| format!("opening {}: {e}", dir.display()))?;
        setup(&mgr)
            .into_step_result()
            .map_err(|e| format!("setup: {e}"))?;
        workload(&mgr, &ack)
            .into_step_result()
            .map_err(|e| format!("workload: {e}"))?;
        mgr.stop(Duration::from_secs(30))
            .map_err(|e| format!("stop: {e}"))?;
        Ok(())
    }

    // ----- the parent ------------------------------------------------------------

    fn parent<S, SR>(self, setup: &S) -> Result<CrashReport, CrashTestError>
    where
        S: Fn(&TaskManager) -> SR,
        SR: StepResult,
    {
        let kills = match env_number(ENV_KILLS)? {
            None => self.kills,
            // More kills than a u32 holds is a mistake, not a request for none.
            Some(n) => u32::try_from(n).map_err(|_| CrashTestError::BadEnv {
                var: ENV_KILLS,
                value: n.to_string(),
            })?,
        };
        let seed = env_number(ENV_SEED)?.unwrap_or(self.seed);
        let (root, owned) = self.prepare_root(seed)?;
        let log_dir = root.join("log");
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut window = match self.kill_window {
            Some(n) => n,
            None => self.calibrate(&root, seed)?,
        };
        let mut l = Ledger {
            report: CrashReport {
                seed,
                ..CrashReport::default()
            },
            ..Ledger::default()
        };
        let max_rounds = kills.saturating_mul(4).saturating_add(8);
        let mut round = 1u32;
        while l.report.kills < kills {
            if round > max_rounds {
                return Err(CrashTestError::TooFewKills {
                    wanted: kills,
                    kills: l.report.kills,
                    rounds: round - 1,
                });
            }
            let kill_after = rng.random_range(1..=window);
            let run = self.run_child(&log_dir, round, seed, Some(kill_after))?;
            if run.killed {
                l.report.kills += 1;
            } else if run.status.success() {
                if self.kill_window.is_none() {
                    // It finished first: later runs print about this many lines.
                    window = window.min(run.lines.max(1));
                }
            } else {
                return Err(CrashTestError::ChildFailed {
                    round,
                    status: run.status,
                    dir: log_dir,
                });
            }
            self.progress(format_args!(
                "round {round}: {} (kill point {kill_after} of 1..={window}, {} lines read)",
                if run.killed {
                    "killed"
                } else {
                    "finished first"
                },
                run.lines
            ));
            l.absorb(run);
            self.reopen_and_check(&log_dir, round, setup, &mut l, false)?;
            round += 1;
        }
        let last = self.run_child(&log_dir, round, seed, None)?;
        if !last.status.success() {
            return Err(CrashTestError::ChildFailed {
                round,
                status: last.status,
                dir: log_dir,
            });
        }
        self.progress(format_args!(
            "round {round}: final run finished after {} lines",
            last.lines
        ));
        l.absorb(last);
        self.reopen_and_check(&log_dir, round, setup, &mut l, true)?;
        let mut report = l.finish(round);
        if owned && report.is_clean() && !self.keep_dir {
            // Our own temporary directory with nothing to look at: best effort.
            let _ = std::fs::remove_dir_all(&root);
        } else {
            report.dir = Some(root);
        }
        Ok(report)
    }

    fn progress(&self, args: fmt::Arguments<'_>) {
        if self.verbose {
            let _ = writeln!(std::io::stderr(), "crash_test {}: {args}", self.name);
        }
    }

    /// The working directory and whether the harness created it (then it may
    /// remove it).
    fn prepare_root(&self, seed: u64) -> Result<(PathBuf, bool), CrashTestError> {
        let io = |what, path: &Path| {
            let path = path.to_path_buf();
            move |source| CrashTestError::Io { what, path, source }
        };
        if let Some(path) = &self.dir {
            std::fs::create_dir_all(path).map_err(io("create the directory", path))?;
            let mut entries = std::fs::read_dir(path).map_err(io("read the directory", path))?;
            if entries.next().is_some() {
                return Err(CrashTestError::DirNotEmpty { path: path.clone() });
            }
            return Ok((path.clone(), false));
        }
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let name: String = self
            .name
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        let path = std::env::temp_dir().join(format!(
            "fibflow-crash-test-{name}-{}-{seed}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir(&path).map_err(io("create a temporary directory", &path))?;
        Ok((path, true))
    }

    /// Runs the whole workload once in a scratch directory; returns how many
    /// acknowledgement lines it printed.
    fn calibrate(&self, root: &Path, seed: u64) -> Result<u64, CrashTestError> {
        let scratch = root.join("calibration");
        let run = self.run_child(&scratch, 0, seed, None)?;
        if !run.status.success() {
            return Err(CrashTestError::ChildFailed {
                round: 0,
                status: run.status,
                dir: scratch,
            });
        }
        self.progress(format_args!(
            "calibration: a full run prints {} lines",
            run.lines
        ));
        match std::fs::remove_dir_all(&scratch) {
            // No directory: the builder kept the log in memory.
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(CrashTestError::Io {
                    what: "remove the calibration directory",
                    path: scratch,
                    source: e,
                });
            }
            _ => {}
        }
        if run.lines == 0 {
            return Err(CrashTestError::NothingAcknowledged);
        }
        Ok(run.lines)
    }

    /// Runs one child on `dir`; kills it after `kill_after` acknowledgement lines
    /// if it prints that many. Lines printed before the kill are read to the end:
    /// they were acknowledged before the process died.
    fn run_child(
        &self,
        dir: &Path,
        round: u32,
        seed: u64,
        kill_after: Option<u64>,
    ) -> Result<ChildRun, CrashTestError> {
        let exe = child_exe().map_err(|source| CrashTestError::Io {
            what: "find the current executable",
            path: PathBuf::new(),
            source,
        })?;
        let mut child = Command::new(&exe)
            .args(std::env::args_os().skip(1))
            .env(CHILD_NAME, &self.name)
            .env(CHILD_DIR, dir)
            .env(CHILD_ROUND, round.to_string())
            .env(CHILD_SEED, seed.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|source| CrashTestError::Spawn {
                exe: exe.clone(),
                source,
            })?;
        let Some(stdout) = child.stdout.take() else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(CrashTestError::Io {
                what: "read the child's stdout",
                path: exe,
                source: std::io::Error::other("the child has no stdout pipe"),
            });
        };
        let (tx, rx) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            let mut r = BufReader::new(stdout);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match r.read_until(b'\n', &mut buf) {
                    Ok(0) => break,
                    Ok(_) => {
                        let line = String::from_utf8_lossy(&buf).trim_end().to_owned();
                        if tx.send(Ok(line)).is_err() {
                            break;
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        break;
                    }
                }
            }
        });
        let mut run = ChildRun::default();
        let mut killed = false;
        loop {
            match rx.recv_timeout(self.child_timeout) {
                Ok(Ok(line)) => {
                    let Some(msg) = line.strip_prefix(PREFIX) else {
                        // The workload's own output: pass it on.
                        let _ = writeln!(std::io::stdout(), "{line}");
                        continue;
                    };
                    let (kind, id) = msg.split_once(' ').unwrap_or((msg, ""));
                    let Ok(id) = id.parse::<u64>() else {
                        continue;
                    };
                    match kind {
                        "ack" => run.submitted.push(TaskId(id)),
                        "done" => run.completed.push(TaskId(id)),
                        _ => continue,
                    }
                    run.lines += 1;
                    if !killed && kill_after == Some(run.lines) {
                        // SIGKILL on Unix. An error means it has already exited.
                        killed = child.kill().is_ok();
                    }
                }
                Ok(Err(source)) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(CrashTestError::Io {
                        what: "read the child's stdout",
                        path: exe,
                        source,
                    });
                }
                Err(RecvTimeoutError::Timeout) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(CrashTestError::ChildTimeout {
                        round,
                        timeout: self.child_timeout,
                        dir: dir.to_path_buf(),
                    });
                }
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        run.status = child.wait().map_err(|source| CrashTestError::Io {
            what: "wait for the child",
            path: exe,
            source,
        })?;
        let _ = reader.join();
        run.killed = killed;
        Ok(run)
    }

    /// Opens the log in this process (timed), runs the setup, and checks what the
    /// children acknowledged so far.
    fn reopen_and_check<S, SR>(
        &self,
        dir: &Path,
        round: u32,
        setup: &S,
        l: &mut Ledger,
        last: bool,
    ) -> Result<(), CrashTestError>
    where
        S: Fn(&TaskManager) -> SR,
        SR: StepResult,
    {
        let t0 = Instant::now();
        let mgr = self
            .builder(dir)
            .build()
            .map_err(|source| CrashTestError::Reopen {
                dir: dir.to_path_buf(),
                round,
                source,
            })?;
        l.report.recovery.push(t0.elapsed());
        let stats = mgr.recovery_stats();
        l.report.records_replayed.push(stats.records_replayed);
        if stats.records_refused > 0 {
            l.report.refused_records += stats.records_refused;
            let text = format!(
                "round {round}: replay refused {} logged records (the log and the engine disagree)",
                stats.records_refused
            );
            l.report.problem(text);
        }
        setup(&mgr)
            .into_step_result()
            .map_err(CrashTestError::Setup)?;
        l.check(&mgr, round, last)?;
        if last {
            let mut interrupted = 0;
            for t in mgr.list_tasks(&TaskFilter::all()) {
                let attempts = mgr
                    .attempts(t.id)
                    .map_err(|source| CrashTestError::Query { id: t.id, source })?;
                interrupted += attempts
                    .iter()
                    .filter(|a| a.outcome == Some(AttemptOutcome::Interrupted))
                    .count();
            }
            l.report.interrupted_attempts = interrupted;
        }
        Ok(())
    }
}

/// What one child acknowledged and how it ended.
#[derive(Default)]
struct ChildRun {
    submitted: Vec<TaskId>,
    completed: Vec<TaskId>,
    lines: u64,
    killed: bool,
    status: ExitStatus,
}

/// What the parent learnt from all children so far.
#[derive(Default)]
struct Ledger {
    acked: BTreeSet<TaskId>,
    done: BTreeSet<TaskId>,
    /// Attempts of an acknowledged completion at the first reopen after its ack.
    baseline: BTreeMap<TaskId, usize>,
    /// Re-runs counted so far per acknowledged completion.
    reruns: BTreeMap<TaskId, usize>,
    lost: BTreeSet<TaskId>,
    report: CrashReport,
}

impl Ledger {
    fn absorb(&mut self, run: ChildRun) {
        self.acked.extend(run.submitted);
        // A completed task was submitted, too.
        self.acked.extend(run.completed.iter().copied());
        self.done.extend(run.completed);
    }

    fn lose(&mut self, id: TaskId, text: String) {
        if self.lost.insert(id) {
            self.report.problem(text);
        }
    }

    fn check(&mut self, mgr: &TaskManager, round: u32, last: bool) -> Result<(), CrashTestError> {
        let running = mgr
            .count_by_status()
            .get(&TaskStatus::Running)
            .copied()
            .unwrap_or(0);
        if running > 0 {
            self.report.stuck_running += running as usize;
            self.report.problem(format!(
                "{running} task(s) still running right after the reopen after round {round}: recovery must return them to pending"
            ));
        }
        let acked: Vec<TaskId> = self.acked.iter().copied().collect();
        for id in acked {
            match mgr.get_task(id) {
                None => self.lose(
                    id,
                    format!("acknowledged task {id} is missing after round {round}"),
                ),
                Some(t) if last && !t.status.is_terminal() && !self.lost.contains(&id) => {
                    self.report.unfinished += 1;
                    self.report.problem(format!(
                        "acknowledged task {id} is {} after the final run (expected completed or another terminal status)",
                        t.status
                    ));
                }
                Some(t) if last && t.status != TaskStatus::Completed => {
                    self.report.ended_not_completed += 1;
                }
                Some(_) => {}
            }
        }
        let done: Vec<TaskId> = self.done.iter().copied().collect();
        for id in done {
            let Some(t) = mgr.get_task(id) else {
                continue; // reported as missing above
            };
            if t.status != TaskStatus::Completed {
                self.lose(
                    id,
                    format!(
                        "task {id}'s completion was acknowledged, but after round {round} it is {}",
                        t.status
                    ),
                );
            }
            let attempts = mgr
                .attempts(id)
                .map_err(|source| CrashTestError::Query { id, source })?;
            self.rerun_check(id, &attempts, round);
        }
        Ok(())
    }

    /// An acknowledged completion must gain no attempt: none after its first
    /// completed attempt, and none after the first reopen that followed its ack.
    fn rerun_check(&mut self, id: TaskId, attempts: &[Attempt], round: u32) {
        let n = attempts.len();
        let base = *self.baseline.entry(id).or_insert(n);
        let first_completed = attempts
            .iter()
            .filter(|a| a.outcome == Some(AttemptOutcome::Completed))
            .map(|a| a.number)
            .min();
        let after_completion = first_completed.map_or(0, |first| {
            attempts.iter().filter(|a| a.number > first).count()
        });
        let extra = after_completion.max(n.saturating_sub(base));
        let seen = self.reruns.entry(id).or_insert(0);
        if extra > *seen {
            let new = extra - *seen;
            *seen = extra;
            self.report.rerun_completions += new;
            self.report.problem(format!(
                "task {id}'s completion was acknowledged, yet it ran again: {new} new attempt(s) found after round {round}"
            ));
        }
    }

    fn finish(mut self, rounds: u32) -> CrashReport {
        self.report.rounds = rounds;
        self.report.acknowledged = self.acked.len();
        self.report.acknowledged_completions = self.done.len();
        self.report.lost = self.lost.len();
        self.report
    }
}

/// A number from the environment, if the variable is set.
fn env_number(var: &'static str) -> Result<Option<u64>, CrashTestError> {
    match std::env::var(var) {
        Err(_) => Ok(None),
        Ok(value) => value
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| CrashTestError::BadEnv { var, value }),
    }
}

/// This binary. On Linux, when it was replaced on disk while running (a rebuild),
/// `current_exe` ends in " (deleted)"; the new file at the old path is the same
/// program, so use that.
fn child_exe() -> std::io::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let text = exe.to_string_lossy();
    Ok(match text.strip_suffix(" (deleted)") {
        Some(path) => PathBuf::from(path),
        None => exe,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_results() {
        assert_eq!(().into_step_result(), Ok(()));
        assert_eq!(Ok::<(), String>(()).into_step_result(), Ok(()));
        assert_eq!(
            Err::<(), _>("bad").into_step_result(),
            Err("bad".to_string())
        );
    }

    fn attempt(number: u32, outcome: AttemptOutcome) -> Attempt {
        Attempt {
            task_id: TaskId(1),
            number,
            worker: "w".into(),
            started_at: 0,
            ended_at: Some(1),
            outcome: Some(outcome),
            error: None,
            timed_out: false,
        }
    }

    #[test]
    fn rerun_after_completion_is_counted_once() {
        let mut l = Ledger::default();
        let id = TaskId(1);
        let a1 = attempt(1, AttemptOutcome::Interrupted);
        let a2 = attempt(2, AttemptOutcome::Completed);
        l.rerun_check(id, &[a1.clone(), a2.clone()], 1);
        assert_eq!(l.report.rerun_completions, 0);
        // A later attempt, then the same state seen again.
        let a3 = attempt(3, AttemptOutcome::Completed);
        l.rerun_check(id, &[a1.clone(), a2.clone(), a3.clone()], 2);
        l.rerun_check(id, &[a1, a2, a3], 3);
        assert_eq!(l.report.rerun_completions, 1);
        assert!(!l.finish(3).is_clean());
    }

    #[test]
    fn rerun_without_completed_attempt_uses_the_baseline() {
        let mut l = Ledger::default();
        let id = TaskId(2);
        let s = attempt(1, AttemptOutcome::Suspended);
        l.rerun_check(id, std::slice::from_ref(&s), 1);
        l.rerun_check(id, &[s.clone(), attempt(2, AttemptOutcome::Interrupted)], 2);
        assert_eq!(l.report.rerun_completions, 1);
    }

    #[test]
    fn report_display_names_the_seed_when_failed() {
        let mut r = CrashReport {
            seed: 9,
            lost: 1,
            recovery: vec![Duration::from_millis(2), Duration::from_millis(5)],
            ..CrashReport::default()
        };
        r.problem("acknowledged task 3 is missing".into());
        let text = r.to_string();
        assert!(text.contains("FAILED"), "{text}");
        assert!(text.contains("FIBFLOW_CRASH_SEED=9"), "{text}");
        assert!(text.contains("task 3"), "{text}");
        assert!(CrashReport::default().to_string().contains("clean"));
    }

    #[test]
    fn bad_env_number_is_an_error() {
        assert!(env_number("FIBFLOW_CRASH_TEST_SURELY_UNSET")
            .unwrap()
            .is_none());
    }
}
