//! Building a manager: storage, durability, clock, defaults and worker pools.

use super::{RetentionPolicy, TaskManager};
use crate::engine::schedule::{CatchUp, RetryStrategy, TimeZone};
use crate::log::{Durability, LogConfig, RecoveryMode};
use crate::runtime::clock::{Clock, SystemClock};
use crate::runtime::error::{check_tag, Error, Result};
use crate::runtime::{Config, Defaults, PoolConfig};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Where the manager keeps its state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Storage {
    /// No log: state lives in memory only and is lost with the process.
    Memory,
    /// A log directory: every transition is written ahead, recovered on open.
    Dir(PathBuf),
}

/// A worker pool (the seed's `configureWorker`): named workers with capability
/// tags, a concurrency and a retry strategy.
///
/// ```
/// use fibflow::Pool;
/// let gpu = Pool::new("gpu").tags(["gpu"]).concurrency(2);
/// assert_eq!(gpu.name(), "gpu");
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Pool {
    name: String,
    tags: Vec<String>,
    concurrency: usize,
    retry: Option<RetryStrategy>,
    max_attempts: Option<u32>,
}

impl Pool {
    /// A pool of one worker with no tags.
    pub fn new(name: impl Into<String>) -> Pool {
        Pool {
            name: name.into(),
            tags: Vec::new(),
            concurrency: 1,
            retry: None,
            max_attempts: None,
        }
    }
    /// The pool's name.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// Capability tags of its workers.
    pub fn tags<I, S>(mut self, tags: I) -> Pool
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.tags = tags.into_iter().map(Into::into).collect();
        self
    }
    /// Number of workers (its maximum concurrency).
    pub fn concurrency(mut self, n: usize) -> Pool {
        self.concurrency = n;
        self
    }
    /// Backoff used for tasks whose handler sets neither a strategy nor a
    /// `retry_interval`, when run by this pool.
    pub fn retry_strategy(mut self, s: RetryStrategy) -> Pool {
        self.retry = Some(s);
        self
    }
    /// Maximum attempts (the seed's `retryStrategy.maxAttempts`) for tasks that
    /// require capabilities this pool has, when neither their submission nor their
    /// handler sets `max_retries`. The first such pool in configuration order wins;
    /// tasks without requirements use the manager default.
    pub fn max_attempts(mut self, n: u32) -> Pool {
        self.max_attempts = Some(n);
        self
    }
}

/// The longest pool name, in bytes (worker names are the pool's plus a number).
const MAX_POOL_NAME: usize = 256;

/// The most worker threads a manager runs, over all its pools.
pub(crate) const MAX_WORKERS: usize = 4096;

/// Configures and opens a [`TaskManager`].
///
/// ```
/// use fibflow::{TaskManager, Pool};
/// let mgr = TaskManager::builder()
///     .memory()
///     .max_concurrent_tasks(4)
///     .pool(Pool::new("gpu").tags(["gpu"]).concurrency(1))
///     .build()
///     .unwrap();
/// # drop(mgr);
/// ```
#[derive(Clone)]
pub struct Builder {
    /// `None` until the user chooses (SPEC §13: storage is explicit).
    storage: Option<Storage>,
    durability: Durability,
    recovery: RecoveryMode,
    segment_size: Option<u64>,
    clock: Arc<dyn Clock>,
    defaults: Defaults,
    max_concurrent: usize,
    pools: Vec<Pool>,
    quarantine_after: u32,
    time_zone: TimeZone,
    catch_up: CatchUp,
    compact_after_bytes: u64,
    retention: Option<RetentionPolicy>,
    retention_every: Duration,
}

impl Default for Builder {
    fn default() -> Self {
        Builder {
            storage: None,
            durability: Durability::Sync,
            recovery: RecoveryMode::StopAtTornTail,
            segment_size: None,
            clock: Arc::new(SystemClock),
            defaults: Defaults {
                max_retries: 3,
                retry_interval_ms: 0,
                timeout_ms: 60_000,
                priority: 0,
            },
            max_concurrent: 10,
            pools: Vec::new(),
            quarantine_after: 3,
            time_zone: TimeZone::Local,
            catch_up: CatchUp::Once,
            compact_after_bytes: 256 << 20,
            retention: None,
            retention_every: Duration::from_secs(60),
        }
    }
}

impl Builder {
    /// Keeps state in memory only (`Durability::Memory`).
    pub fn memory(mut self) -> Self {
        self.storage = Some(Storage::Memory);
        self
    }
    /// Keeps state in a log directory (created if missing).
    pub fn dir(mut self, path: impl Into<PathBuf>) -> Self {
        self.storage = Some(Storage::Dir(path.into()));
        self
    }
    /// When a write is acknowledged (default `Sync`: on disk). `Memory` means no log.
    pub fn durability(mut self, d: Durability) -> Self {
        self.durability = d;
        self
    }
    /// What recovery does with corruption in the middle of the log.
    pub fn recovery_mode(mut self, m: RecoveryMode) -> Self {
        self.recovery = m;
        self
    }
    /// Size of each preallocated log segment.
    pub fn segment_size(mut self, bytes: u64) -> Self {
        self.segment_size = Some(bytes);
        self
    }
    /// The time source (default: the system clock).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }
    /// Global cap on running tasks, and the size of the default pool (default 10).
    pub fn max_concurrent_tasks(mut self, n: usize) -> Self {
        self.max_concurrent = n;
        self
    }
    /// Default maximum executions including the first (default 3).
    pub fn max_retries(mut self, n: u32) -> Self {
        self.defaults.max_retries = n;
        self
    }
    /// Default retry delay (default 0).
    pub fn retry_interval(mut self, d: Duration) -> Self {
        self.defaults.retry_interval_ms = crate::runtime::clock::ceil_ms(d);
        self
    }
    /// Default attempt time limit (default 60 s; zero means none).
    pub fn timeout(mut self, d: Duration) -> Self {
        self.defaults.timeout_ms = crate::runtime::clock::ceil_ms(d);
        self
    }
    /// Adds a worker pool besides the default one.
    pub fn pool(mut self, pool: Pool) -> Self {
        self.pools.push(pool);
        self
    }
    /// Interruptions in a row after which a task is quarantined (default 3).
    pub fn quarantine_after(mut self, n: u32) -> Self {
        self.quarantine_after = n;
        self
    }
    /// Time zone of cron expressions (default: local).
    pub fn time_zone(mut self, tz: TimeZone) -> Self {
        self.time_zone = tz;
        self
    }
    /// What happens to cron occurrences missed while the process was down.
    pub fn catch_up(mut self, c: CatchUp) -> Self {
        self.catch_up = c;
        self
    }
    /// Log bytes after which a snapshot is taken and old segments removed.
    pub fn compact_after_bytes(mut self, bytes: u64) -> Self {
        self.compact_after_bytes = bytes;
        self
    }

    /// Removes finished tasks automatically, every `every` (first run one
    /// interval after start), in batches of 100 tasks. While batches come back
    /// full the next one follows 1 ms later, so a sweep drains its backlog at up
    /// to about 100,000 tasks per second without holding up due timers. With
    /// the system clock the timer thread looks at least once a second, so a
    /// sweep starts at most about a second late.
    pub fn retention(mut self, policy: RetentionPolicy, every: Duration) -> Self {
        self.retention = Some(policy);
        self.retention_every = every;
        self
    }

    fn validate(&self) -> Result<()> {
        if self.storage.is_none() && self.durability != Durability::Memory {
            return Err(Error::InvalidOption(
                "no storage chosen: call .dir(path) for a durable log or .memory() to keep state in memory only".into(),
            ));
        }
        if let Some(r) = &self.retention {
            r.validate()?;
        }
        if self.max_concurrent == 0 {
            return Err(Error::InvalidOption(
                "max_concurrent_tasks must be at least 1".into(),
            ));
        }
        // Every worker is an OS thread.
        let workers = self
            .pools
            .iter()
            .fold(self.max_concurrent, |n, p| n.saturating_add(p.concurrency));
        if workers > MAX_WORKERS {
            return Err(Error::InvalidOption(format!(
                "{workers} workers in all (max_concurrent_tasks plus the pools' concurrency); at most {MAX_WORKERS} are supported, one OS thread each"
            )));
        }
        let mut names = std::collections::HashSet::from(["default"]);
        for p in &self.pools {
            if p.name.trim().is_empty() {
                return Err(Error::InvalidOption("a pool needs a non-empty name".into()));
            }
            // Every claim record carries its worker's name (the pool's, with
            // a number): a name near a segment's size would make every claim
            // by the pool too large to log, and its tasks would never run.
            if p.name.len() > MAX_POOL_NAME {
                return Err(Error::InvalidOption(format!(
                    "pool name `{}…` is {} bytes; at most {MAX_POOL_NAME} are allowed",
                    p.name.chars().take(32).collect::<String>(),
                    p.name.len()
                )));
            }
            // Workers are named after their pool, and a timeout finds its
            // attempt's pool by worker name.
            if !names.insert(p.name.as_str()) {
                return Err(Error::InvalidOption(format!(
                    "two pools are named `{}` (`default` is the built-in pool): give each pool its own name",
                    p.name
                )));
            }
            if p.concurrency == 0 {
                return Err(Error::InvalidOption(format!(
                    "pool `{}` needs a concurrency of at least 1",
                    p.name
                )));
            }
            for t in &p.tags {
                check_tag(t)?;
            }
            if let Some(r) = &p.retry {
                r.validate()?;
            }
        }
        Ok(())
    }

    /// Opens the manager: takes the directory lock and recovers the log, if any.
    pub fn build(self) -> Result<TaskManager> {
        self.validate()?;
        let mut pools = vec![PoolConfig {
            name: "default".into(),
            tags: Vec::new(),
            concurrency: self.max_concurrent,
            retry: None,
            max_attempts: None,
        }];
        pools.extend(self.pools.into_iter().map(|p| PoolConfig {
            name: p.name,
            tags: p.tags,
            concurrency: p.concurrency,
            retry: p.retry,
            max_attempts: p.max_attempts,
        }));
        let config = Config {
            defaults: self.defaults,
            max_concurrent: self.max_concurrent,
            pools,
            quarantine_after: self.quarantine_after,
            time_zone: self.time_zone,
            catch_up: self.catch_up,
            compact_after_bytes: self.compact_after_bytes,
        };
        let log = match (&self.storage, self.durability) {
            (None | Some(Storage::Memory), _) | (_, Durability::Memory) => None,
            (Some(Storage::Dir(dir)), durability) => {
                let mut lc = LogConfig {
                    durability,
                    recovery: self.recovery,
                    ..LogConfig::default()
                };
                if let Some(s) = self.segment_size {
                    lc.segment_size = s;
                }
                Some(crate::log::Log::open(dir, lc)?)
            }
        };
        TaskManager::assemble(
            self.clock,
            config,
            log,
            (self.retention, self.retention_every),
        )
    }
}
