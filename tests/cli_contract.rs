//! The `fibflow` binary as a black box: the contract its users rely on (JSON
//! shapes and field types, numbers that agree across commands, exit codes,
//! messages on bad input, and resuming a `demo --dir` killed with SIGKILL).
//!
//! `tests/hostile_input.rs` (`cli_bad_arguments_and_directories`,
//! `cli_small_runs_and_damaged_logs`) already checks that missing paths, files
//! given as directories, garbage and truncated segments, bad `--task` values,
//! conflicting flags and an unknown subcommand are refused without a panic; this
//! file covers what it does not. Exit codes are those of `docs/cli.md`: 0
//! success, 1 the check failed, 2 the command could not run.
//!
//! No fixed sleeps: every wait polls a condition with a generous deadline.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How long one command may take on a slow, loaded machine.
const PATIENCE: Duration = Duration::from_secs(120);

/// The first segment of a log directory.
const SEG0: &str = "00000000000000000000.seg";

/// Every status `by_status` must name (docs/cli.md).
const STATUSES: [&str; 8] = [
    "pending",
    "running",
    "completed",
    "failed",
    "timeout",
    "permanently_failed",
    "paused",
    "suspended",
];

// ---------------------------------------------------------------------------
// Running the binary
// ---------------------------------------------------------------------------

/// A `fibflow` command line with the environment variables that could change
/// its behaviour removed.
fn command(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_fibflow"));
    c.args(args)
        .env_remove("RUST_BACKTRACE")
        .env_remove("RUST_LIB_BACKTRACE")
        .env_remove("FIBFLOW_CRASH_ITERS")
        .env_remove("FIBFLOW_CRASH_SEED")
        .stdin(Stdio::null());
    c
}

/// A child process that is killed if the test ends (or fails) before it does.
struct Running {
    child: Child,
    what: String,
}

impl Running {
    fn spawn(args: &[&str], stdout: Stdio) -> Running {
        let child = command(args)
            .stdout(stdout)
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Running {
            child,
            what: format!("fibflow {}", args.join(" ")),
        }
    }

    fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().unwrap()
    }

    /// SIGKILL (`Child::kill`), then reaps it.
    fn kill9(&mut self) -> ExitStatus {
        let _ = self.child.kill();
        self.child.wait().unwrap()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.exited().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Polls `f` until it is true; fails with `what` after [`PATIENCE`].
fn until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::yield_now();
        std::thread::park_timeout(Duration::from_millis(1));
    }
}

struct Ran {
    what: String,
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Ran {
    /// Whether it died of a panic (exit 101 or Rust's panic message).
    fn panicked(&self) -> bool {
        self.code == Some(101)
            || self.stderr.contains("panicked at")
            || self.stderr.contains("RUST_BACKTRACE")
    }

    /// The JSON object on the last non-empty stdout line.
    fn json(&self) -> Value {
        let last = self
            .stdout
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or_else(|| panic!("{}: no stdout line; stderr: {}", self.what, self.stderr));
        let v: Value = serde_json::from_str(last).unwrap_or_else(|e| {
            panic!(
                "{}: the last stdout line is not JSON ({e}): {last}",
                self.what
            )
        });
        assert!(
            v.is_object(),
            "{}: the last line is not an object: {v}",
            self.what
        );
        v
    }

    #[track_caller]
    fn expect_code(&self, code: i32) -> &Ran {
        assert_eq!(
            self.code,
            Some(code),
            "{}: exit code\nstdout: {}\nstderr: {}",
            self.what,
            self.stdout,
            self.stderr
        );
        self
    }
}

/// Runs `fibflow args` to its end (killed and failed after [`PATIENCE`]) and
/// checks it neither panicked nor died of a signal.
fn fibflow(args: &[&str]) -> Ran {
    fibflow_with_stdout(args, Stdio::piped())
}

/// [`fibflow`] with stdout connected to `stdout` (read only if piped).
fn fibflow_with_stdout(args: &[&str], stdout: Stdio) -> Ran {
    let (ran, signal) = fibflow_unchecked(args, stdout);
    assert!(!ran.panicked(), "{} panicked: {}", ran.what, ran.stderr);
    assert!(
        ran.code.is_some(),
        "{} was killed by signal {signal:?}: {}",
        ran.what,
        ran.stderr
    );
    ran
}

/// Runs `fibflow args` to its end (killed and failed after [`PATIENCE`]);
/// returns what it printed and the signal that ended it, if one did.
fn fibflow_unchecked(args: &[&str], stdout: Stdio) -> (Ran, Option<i32>) {
    let what = format!("fibflow {}", args.join(" "));
    let mut child = command(args)
        .stdout(stdout)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = child.stdout.take();
    let mut err = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut s = Vec::new();
        if let Some(mut out) = out {
            let _ = out.read_to_end(&mut s);
        }
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = err.read_to_end(&mut s);
        s
    });
    let deadline = Instant::now() + PATIENCE;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what}: still running after {PATIENCE:?}");
        }
        std::thread::park_timeout(Duration::from_millis(2));
    };
    let ran = Ran {
        what,
        code: status.code(),
        stdout: String::from_utf8_lossy(&out.join().unwrap()).into_owned(),
        stderr: String::from_utf8_lossy(&err.join().unwrap()).into_owned(),
    };
    (ran, status.signal())
}

/// A command that cannot run: exit 2, a message on stderr containing `needle`,
/// and no JSON result on stdout.
#[track_caller]
fn refused(args: &[&str], needle: &str) -> Ran {
    let r = fibflow(args);
    r.expect_code(2);
    assert!(
        r.stderr.contains(needle),
        "{}: expected `{needle}` on stderr, got: {}",
        r.what,
        r.stderr
    );
    assert!(
        !r.stdout.contains('{'),
        "{}: printed a result although it failed: {}",
        r.what,
        r.stdout
    );
    r
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

// ---------------------------------------------------------------------------
// JSON fields
// ---------------------------------------------------------------------------

#[track_caller]
fn field<'a>(v: &'a Value, key: &str) -> &'a Value {
    v.get(key)
        .unwrap_or_else(|| panic!("missing field `{key}` in {v}"))
}

#[track_caller]
fn uint(v: &Value, key: &str) -> u64 {
    field(v, key)
        .as_u64()
        .unwrap_or_else(|| panic!("`{key}` is not an unsigned integer in {v}"))
}

#[track_caller]
fn num(v: &Value, key: &str) -> f64 {
    let x = field(v, key)
        .as_f64()
        .unwrap_or_else(|| panic!("`{key}` is not a number in {v}"));
    assert!(x.is_finite() && x >= 0.0, "`{key}` = {x} in {v}");
    x
}

#[track_caller]
fn boolean(v: &Value, key: &str) -> bool {
    field(v, key)
        .as_bool()
        .unwrap_or_else(|| panic!("`{key}` is not a boolean in {v}"))
}

#[track_caller]
fn string<'a>(v: &'a Value, key: &str) -> &'a str {
    field(v, key)
        .as_str()
        .unwrap_or_else(|| panic!("`{key}` is not a string in {v}"))
}

#[track_caller]
fn opt_uint(v: &Value, key: &str) -> Option<u64> {
    let f = field(v, key);
    if f.is_null() {
        None
    } else {
        Some(
            f.as_u64()
                .unwrap_or_else(|| panic!("`{key}` is neither null nor an integer in {v}")),
        )
    }
}

#[track_caller]
fn array<'a>(v: &'a Value, key: &str) -> &'a Vec<Value> {
    field(v, key)
        .as_array()
        .unwrap_or_else(|| panic!("`{key}` is not an array in {v}"))
}

/// `by_status`: exactly the 8 statuses, by name, each an unsigned integer.
#[track_caller]
fn by_status(v: &Value) -> BTreeMap<String, u64> {
    let m = field(v, "by_status")
        .as_object()
        .unwrap_or_else(|| panic!("`by_status` is not an object in {v}"));
    let mut keys: Vec<&str> = m.keys().map(String::as_str).collect();
    keys.sort_unstable();
    let mut want = STATUSES.to_vec();
    want.sort_unstable();
    assert_eq!(keys, want, "by_status keys in {v}");
    m.iter()
        .map(|(k, n)| {
            let n = n
                .as_u64()
                .unwrap_or_else(|| panic!("by_status.{k} is not an unsigned integer in {v}"));
            (k.clone(), n)
        })
        .collect()
}

fn total(counts: &BTreeMap<String, u64>) -> u64 {
    counts.values().sum()
}

/// Checks every field of `demo --json` and returns it.
#[track_caller]
fn demo_json(r: &Ran, n: u64, dir: Option<&Path>, durability: &str) -> Value {
    let v = r.json();
    assert_eq!(uint(&v, "submitted"), n, "submitted: {v}");
    let completed = uint(&v, "completed");
    let failed = uint(&v, "failed");
    assert!(completed + failed <= n, "{v}");
    let retried = uint(&v, "retried");
    assert!(retried <= n, "{v}");
    let elapsed_ms = num(&v, "elapsed_ms");
    let per_s = num(&v, "tasks_per_s");
    if n >= 100 {
        assert!(elapsed_ms > 0.0, "{v}");
        let expect = n as f64 / (elapsed_ms / 1e3);
        assert!(
            (per_s - expect).abs() <= expect * 0.02 + 0.1,
            "tasks_per_s {per_s} disagrees with submitted / elapsed_ms = {expect}: {v}"
        );
    }
    num(&v, "open_ms");
    uint(&v, "preexisting");
    let counts = by_status(&v);
    assert!(
        counts["completed"] >= completed,
        "by_status.completed below completed: {v}"
    );
    assert!(
        counts["permanently_failed"] >= failed,
        "by_status.permanently_failed below failed: {v}"
    );
    assert_eq!(string(&v, "durability"), durability, "{v}");
    match dir {
        None => assert!(field(&v, "dir").is_null(), "dir with --memory: {v}"),
        Some(d) => assert_eq!(string(&v, "dir"), s(d), "{v}"),
    }
    v
}

/// Checks every field of `inspect --json` (without `--task`) and returns it.
#[track_caller]
fn inspect_json(dir: &Path) -> Value {
    let r = fibflow(&["inspect", s(dir), "--json"]);
    r.expect_code(0);
    let v = r.json();
    assert_eq!(string(&v, "dir"), s(dir), "{v}");
    let counts = by_status(&v);
    assert_eq!(
        uint(&v, "tasks"),
        total(&counts),
        "tasks is not the sum of by_status: {v}"
    );
    assert!(uint(&v, "log_bytes") > 0, "{v}");
    assert!(uint(&v, "segments") >= 1, "{v}");
    opt_uint(&v, "last_lsn");
    opt_uint(&v, "snapshot_lsn");
    let rec = field(&v, "recovery");
    for k in [
        "snapshot_tasks",
        "records_replayed",
        "records_refused",
        "recovered",
        "quarantined",
    ] {
        uint(rec, k);
    }
    assert_eq!(uint(rec, "records_refused"), 0, "refused records: {v}");
    // Opening returns every task that was running to pending (docs/cli.md).
    assert_eq!(counts["running"], 0, "running tasks after an open: {v}");
    v
}

/// Checks every field of `verify --json`; the exit code must match `ok`.
#[track_caller]
fn verify_json(dir: &Path) -> (Ran, Value) {
    let r = fibflow(&["verify", s(dir), "--json"]);
    let v = r.json();
    assert_eq!(string(&v, "dir"), s(dir), "{v}");
    uint(&v, "segments");
    uint(&v, "records");
    opt_uint(&v, "last_lsn");
    opt_uint(&v, "snapshot_lsn");
    let ok = boolean(&v, "ok");
    let mut corrupt = false;
    for p in array(&v, "problems") {
        string(p, "segment");
        uint(p, "offset");
        string(p, "reason");
        corrupt |= !boolean(p, "torn_tail");
    }
    assert_eq!(ok, !corrupt, "ok disagrees with the problems: {v}");
    assert_eq!(
        r.code,
        Some(i32::from(!ok)),
        "verify exit code disagrees with ok: {v}"
    );
    (r, v)
}

/// Names and sizes of the entries of `dir`, sorted.
fn listing(dir: &Path) -> Vec<(String, u64)> {
    let mut v: Vec<(String, u64)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                e.metadata().map_or(0, |m| m.len()),
            )
        })
        .collect();
    v.sort();
    v
}

/// Whether the first segment of `dir` has a non-zero byte in the 4 KiB at
/// `offset` (segments are preallocated with zeros, so the log has been
/// written that far).
fn written_past(dir: &Path, offset: u64) -> bool {
    let Ok(mut f) = std::fs::File::open(dir.join(SEG0)) else {
        return false;
    };
    let mut buf = vec![0u8; 4096];
    if f.seek(SeekFrom::Start(offset)).is_err() {
        return false;
    }
    let n = f.read(&mut buf).unwrap_or(0);
    buf[..n].iter().any(|&b| b != 0)
}

/// Demo task `i` with `--seed s` is a flaky one (fails once, then is retried).
fn flaky(i: u64, seed: u64) -> bool {
    (i + seed) % 10 == 3
}

// ---------------------------------------------------------------------------
// demo, inspect and verify on good input
// ---------------------------------------------------------------------------

#[test]
fn demo_memory_json_has_every_field_with_consistent_numbers() {
    let n = 300;
    let r = fibflow(&["demo", "--memory", "--tasks", "300", "--json"]);
    r.expect_code(0);
    let v = demo_json(&r, n, None, "memory");
    assert_eq!(uint(&v, "completed"), n, "{v}");
    assert_eq!(uint(&v, "failed"), 0, "{v}");
    assert_eq!(uint(&v, "preexisting"), 0, "{v}");
    let want_retried = (0..n).filter(|&i| flaky(i, 0)).count() as u64;
    assert!(want_retried > 0);
    assert_eq!(
        uint(&v, "retried"),
        want_retried,
        "every flaky task fails once and is retried: {v}"
    );
    let counts = by_status(&v);
    assert_eq!(total(&counts), n, "{v}");
    assert_eq!(counts["completed"], n, "{v}");

    // Another seed moves the flaky tasks; the counts follow.
    let r = fibflow(&["demo", "--memory", "--tasks", "95", "--seed", "5", "--json"]);
    r.expect_code(0);
    let v = demo_json(&r, 95, None, "memory");
    assert_eq!(uint(&v, "completed"), 95, "{v}");
    assert_eq!(
        uint(&v, "retried"),
        (0..95).filter(|&i| flaky(i, 5)).count() as u64,
        "{v}"
    );

    // Without --json: a readable summary with the same counts, no JSON.
    let r = fibflow(&["demo", "--memory", "--tasks", "40"]);
    r.expect_code(0);
    assert!(r.stdout.contains("40 tasks"), "{}", r.stdout);
    assert!(r.stdout.contains("completed 40"), "{}", r.stdout);
    assert!(!r.stdout.contains('{'), "{}", r.stdout);
}

#[test]
fn demo_dir_agrees_with_inspect_and_verify_and_reruns_submit_nothing_twice() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("d");
    let r = fibflow(&["demo", "--dir", s(&d), "--tasks", "500", "--json"]);
    r.expect_code(0);
    let demo = demo_json(&r, 500, Some(&d), "sync");
    assert_eq!(uint(&demo, "completed"), 500, "{demo}");
    assert_eq!(uint(&demo, "preexisting"), 0, "{demo}");

    let (_, ver) = verify_json(&d);
    assert!(boolean(&ver, "ok"), "{ver}");
    assert!(
        array(&ver, "problems").is_empty(),
        "a cleanly stopped log: {ver}"
    );
    let ins = inspect_json(&d);
    assert_eq!(
        by_status(&ins),
        by_status(&demo),
        "inspect's by_status vs demo's:\n{ins}\n{demo}"
    );
    assert_eq!(uint(&ins, "tasks"), 500, "{ins}");
    assert_eq!(
        opt_uint(&ins, "last_lsn"),
        opt_uint(&ver, "last_lsn"),
        "last LSN: inspect {ins} vs verify {ver}"
    );
    assert!(opt_uint(&ins, "last_lsn").is_some(), "{ins}");
    assert!(
        uint(&ins, "log_bytes") > opt_uint(&ins, "last_lsn").unwrap(),
        "the log is smaller than its last LSN: {ins}"
    );
    assert!(
        uint(&ins, "segments") <= uint(&ver, "segments"),
        "inspect counts more segments than verify read: {ins} {ver}"
    );
    if opt_uint(&ins, "snapshot_lsn").is_none() {
        assert_eq!(
            uint(field(&ins, "recovery"), "records_replayed"),
            uint(&ver, "records"),
            "without a snapshot, the open replays every record verify read: {ins} {ver}"
        );
    }

    // Text forms carry the same numbers.
    let r = fibflow(&["inspect", s(&d)]);
    r.expect_code(0);
    assert!(r.stdout.contains("500 tasks"), "{}", r.stdout);
    assert!(
        r.stdout
            .lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["completed", "500"]),
        "{}",
        r.stdout
    );
    let r = fibflow(&["verify", s(&d)]);
    r.expect_code(0);
    assert_eq!(r.stdout.lines().last(), Some("ok"), "{}", r.stdout);

    // The same command again: everything is found by its dedup key.
    let r = fibflow(&["demo", "--dir", s(&d), "--tasks", "500", "--json"]);
    r.expect_code(0);
    let again = demo_json(&r, 500, Some(&d), "sync");
    assert_eq!(uint(&again, "completed"), 500, "{again}");
    assert_eq!(uint(&again, "preexisting"), 500, "{again}");
    assert_eq!(total(&by_status(&again)), 500, "{again}");
    assert_eq!(uint(&inspect_json(&d), "tasks"), 500);

    // More tasks: the first 500 are found, only the new 100 are submitted.
    let r = fibflow(&["demo", "--dir", s(&d), "--tasks", "600", "--json"]);
    r.expect_code(0);
    let more = demo_json(&r, 600, Some(&d), "sync");
    assert_eq!(uint(&more, "completed"), 600, "{more}");
    assert_eq!(uint(&more, "preexisting"), 500, "{more}");
    let ins = inspect_json(&d);
    assert_eq!(uint(&ins, "tasks"), 600, "{ins}");
    assert_eq!(by_status(&ins), by_status(&more), "{ins}\n{more}");
}

/// The CLI prints no task ids (`inspect` has no listing, `demo` no ids), so
/// the id of the single task of a fresh one-task log is found by asking
/// `inspect --task` for small ids; every miss must be a clean "not found".
fn only_task_id(dir: &Path) -> u64 {
    static HINT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(u64::MAX);
    let hint = HINT.load(std::sync::atomic::Ordering::Relaxed);
    let candidates = std::iter::once(hint)
        .filter(|&h| h != u64::MAX)
        .chain(0..=1024);
    for id in candidates {
        let r = fibflow(&["inspect", s(dir), "--task", &id.to_string(), "--json"]);
        if r.code == Some(0) {
            HINT.store(id, std::sync::atomic::Ordering::Relaxed);
            return id;
        }
        r.expect_code(2);
        assert!(
            r.stderr.contains(&format!("task {id} not found")),
            "{}: {}",
            r.what,
            r.stderr
        );
    }
    panic!("no task id up to 1024 in {}", dir.display());
}

/// `inspect --task ID --json` of a finished one-task demo log, its shape checked.
fn one_task(seed: u64) -> (tempfile::TempDir, u64, Value) {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("d");
    let seed_s = seed.to_string();
    fibflow(&["demo", "--dir", s(&d), "--tasks", "1", "--seed", &seed_s]).expect_code(0);
    let id = only_task_id(&d);
    let r = fibflow(&["inspect", s(&d), "--task", &id.to_string(), "--json"]);
    r.expect_code(0);
    let v = r.json();
    let task = field(&v, "task");
    assert_eq!(uint(task, "id"), id, "{v}");
    assert_eq!(string(task, "status"), "completed", "{v}");
    assert_eq!(
        field(task, "payload"),
        &serde_json::json!({ "i": 0 }),
        "{v}"
    );
    assert_eq!(string(task, "dedup_key"), "demo-0", "{v}");
    assert!(string(task, "name").starts_with("demo."), "{v}");
    assert!(field(task, "result").is_object(), "{v}");
    let events = array(&v, "events");
    assert!(!events.is_empty(), "{v}");
    for e in events {
        assert_eq!(uint(e, "task_id"), id, "{e}");
        string(e, "event_type");
        uint(e, "time");
    }
    assert_eq!(string(&events[0], "event_type"), "task_created", "{v}");
    assert_eq!(
        string(events.last().unwrap(), "event_type"),
        "task_completed",
        "{v}"
    );
    let attempts = array(&v, "attempts");
    assert!(!attempts.is_empty(), "{v}");
    for (k, a) in attempts.iter().enumerate() {
        assert_eq!(uint(a, "task_id"), id, "{a}");
        assert_eq!(uint(a, "number"), k as u64 + 1, "{a}");
        string(a, "worker");
        string(a, "outcome");
        assert!(uint(a, "ended_at") >= uint(a, "started_at"), "{a}");
    }
    assert_eq!(
        string(attempts.last().unwrap(), "outcome"),
        "completed",
        "{v}"
    );
    assert_eq!(uint(task, "attempt"), attempts.len() as u64, "{v}");
    // The text form names the task and both sections.
    let r = fibflow(&["inspect", s(&d), "--task", &id.to_string()]);
    r.expect_code(0);
    assert!(r.stdout.starts_with(&format!("task {id} ")), "{}", r.stdout);
    assert!(
        r.stdout.contains("events:") && r.stdout.contains("attempts:"),
        "{}",
        r.stdout
    );
    (tmp, id, v)
}

#[test]
fn inspect_task_shows_gpu_placement_and_the_retry_of_a_flaky_task() {
    // --seed 1: task 0 is a `demo.gpu` task, which only the gpu pool may run.
    let (_t, _, v) = one_task(1);
    let task = field(&v, "task");
    assert_eq!(string(task, "name"), "demo.gpu", "{v}");
    assert_eq!(field(task, "requires"), &serde_json::json!(["gpu"]), "{v}");
    for a in array(&v, "attempts") {
        assert!(
            string(a, "worker").starts_with("gpu"),
            "a gpu task ran outside the gpu pool: {a}"
        );
    }
    assert_eq!(
        field(field(task, "result"), "worker"),
        field(array(&v, "attempts").last().unwrap(), "worker"),
        "{v}"
    );

    // --seed 3: task 0 is `demo.flaky`: fails its first execution, completes on the retry.
    let (_t, _, v) = one_task(3);
    let task = field(&v, "task");
    assert_eq!(string(task, "name"), "demo.flaky", "{v}");
    assert_eq!(uint(task, "retry_count"), 1, "{v}");
    let attempts = array(&v, "attempts");
    assert_eq!(attempts.len(), 2, "{v}");
    assert_eq!(string(&attempts[0], "outcome"), "failed", "{v}");
    assert!(
        string(&attempts[0], "error").contains("on purpose"),
        "{}",
        attempts[0]
    );
    let kinds: Vec<&str> = array(&v, "events")
        .iter()
        .map(|e| string(e, "event_type"))
        .collect();
    let pos = |k: &str| {
        kinds
            .iter()
            .position(|x| *x == k)
            .unwrap_or_else(|| panic!("no {k} event: {kinds:?}"))
    };
    assert!(
        pos("task_failed") < pos("task_retry_scheduled")
            && pos("task_retry_scheduled") < pos("task_completed"),
        "{kinds:?}"
    );

    // --seed 0: task 0 is a plain `demo.cpu` task.
    let (_t, _, v) = one_task(0);
    let task = field(&v, "task");
    assert_eq!(string(task, "name"), "demo.cpu", "{v}");
    assert_eq!(array(&v, "attempts").len(), 1, "{v}");
    assert_eq!(uint(field(task, "result"), "square"), 0, "{v}");
}

#[test]
fn inspect_task_with_an_unknown_id_on_a_populated_log_fails_cleanly_and_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("d");
    fibflow(&["demo", "--dir", s(&d), "--tasks", "50"]).expect_code(0);
    let (_, before) = verify_json(&d);
    let seg_before = std::fs::read(d.join(SEG0)).unwrap();
    for extra in [&[][..], &["--json"][..]] {
        for id in ["999999999999", "1"] {
            let mut args = vec!["inspect", s(&d), "--task", id];
            args.extend_from_slice(extra);
            refused(&args, &format!("task {id} not found"));
        }
        let mut args = vec!["inspect", s(&d), "--workflow", "999999999999"];
        args.extend_from_slice(extra);
        refused(&args, "not found");
    }
    let (_, after) = verify_json(&d);
    // The count of segment files may change (an open may drop the empty,
    // preallocated next segment); the records may not.
    for k in ["records", "last_lsn", "ok"] {
        assert_eq!(
            field(&before, k),
            field(&after, k),
            "looking up unknown ids changed the log's {k}: {before} -> {after}"
        );
    }
    assert_eq!(
        std::fs::read(d.join(SEG0)).unwrap(),
        seg_before,
        "looking up unknown ids changed the first segment"
    );
    assert_eq!(uint(&inspect_json(&d), "tasks"), 50);
}

#[test]
fn crash_test_json_has_every_field_and_agrees_with_inspect() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("ct");
    let r = fibflow(&[
        "crash-test",
        "--dir",
        s(&d),
        "--kills",
        "2",
        "--tasks",
        "200",
        "--seed",
        "7",
        "--json",
    ]);
    let v = r.json();
    let ok = boolean(&v, "ok");
    assert_eq!(r.code, Some(i32::from(!ok)), "exit vs ok: {v}");
    assert!(ok, "{v}\n{}", r.stderr);
    assert_eq!(uint(&v, "kills"), 2, "{v}");
    let rounds = uint(&v, "rounds");
    assert!(rounds >= 3, "2 kills and a final run: {v}");
    assert_eq!(uint(&v, "tasks"), 200, "{v}");
    assert_eq!(uint(&v, "seed"), 7, "{v}");
    assert_eq!(string(&v, "durability"), "sync", "{v}");
    let log = d.join("log");
    assert_eq!(string(&v, "dir"), s(&log), "{v}");
    for k in [
        "lost",
        "rerun_completions",
        "left_running",
        "unfinished",
        "ended_not_completed",
        "refused_records",
    ] {
        assert_eq!(uint(&v, k), 0, "{k}: {v}");
    }
    uint(&v, "interrupted_attempts");
    assert_eq!(uint(&v, "completed"), 200, "{v}");
    assert_eq!(uint(&v, "tasks_in_dir"), 200, "{v}");
    assert_eq!(uint(&v, "acked_submissions"), 200, "{v}");
    assert_eq!(uint(&v, "acked_completions"), 200, "{v}");
    assert!(array(&v, "problems").is_empty(), "{v}");
    let rec = array(&v, "recovery_ms");
    assert_eq!(rec.len() as u64, rounds, "one reopen per round: {v}");
    assert!(
        rec.iter().all(|x| x.as_f64().is_some_and(|x| x >= 0.0)),
        "{v}"
    );
    let replayed = array(&v, "records_replayed");
    assert_eq!(replayed.len(), rec.len(), "{v}");
    assert!(replayed.iter().all(Value::is_u64), "{v}");

    let ins = inspect_json(&log);
    assert_eq!(uint(&ins, "tasks"), 200, "{ins}");
    assert_eq!(by_status(&ins)["completed"], uint(&v, "completed"), "{ins}");
    let (_, ver) = verify_json(&log);
    assert!(boolean(&ver, "ok"), "{ver}");

    // A --dir that is not empty is refused and left alone.
    let before = listing(&d);
    refused(
        &["crash-test", "--dir", s(&d), "--kills", "1", "--tasks", "5"],
        "not empty",
    );
    assert_eq!(listing(&d), before);

    // Without --dir, a passing run removes its directory and reports `dir: null`.
    let r = fibflow(&["crash-test", "--kills", "1", "--tasks", "40", "--json"]);
    r.expect_code(0);
    let v = r.json();
    assert!(boolean(&v, "ok"), "{v}");
    assert!(field(&v, "dir").is_null(), "{v}");
    assert_eq!(uint(&v, "completed"), 40, "{v}");
}

#[test]
fn bench_json_has_every_field_with_ratios_of_its_own_figures() {
    // The shortest budget: at least 100 latency samples of each and one
    // throughput round of each (a debug build, so the figures mean nothing).
    let r = fibflow(&["bench", "--json", "--seconds", "0.4", "--gap-us", "0"]);
    r.expect_code(0);
    let v = r.json();
    assert!(uint(&v, "workers") >= 1, "{v}");
    assert_eq!(uint(&v, "gap_us"), 0, "{v}");
    assert!((num(&v, "seconds") - 0.4).abs() < 1e-9, "{v}");
    for who in ["latency_samples", "baseline_latency_samples"] {
        assert!(uint(&v, who) >= 100, "{who}: {v}");
    }
    let rounds = uint(&v, "throughput_rounds");
    assert!(rounds >= 1, "{v}");
    assert_eq!(
        uint(&v, "baseline_rounds"),
        rounds,
        "alternated rounds: {v}"
    );
    // Each ratio is fibflow's figure over its baseline's, rounded to 3 places.
    let close = |ratio: &str, a: &str, b: &str| {
        let want = num(&v, a) / num(&v, b);
        let got = num(&v, ratio);
        assert!(
            (got - want).abs() <= 0.01 * want + 0.001,
            "{ratio} = {got}, {a}/{b} = {want}: {v}"
        );
    };
    for q in ["p50", "p99", "p999"] {
        let (a, b) = (format!("submit_start_{q}_us"), format!("baseline_{q}_us"));
        assert!(num(&v, &a) > 0.0 && num(&v, &b) > 0.0, "{q}: {v}");
        close(&format!("ratio_{q}"), &a, &b);
    }
    for who in ["submit_start", "baseline"] {
        let p = |q: &str| num(&v, &format!("{who}_{q}_us"));
        assert!(p("p50") <= p("p99") && p("p99") <= p("p999"), "{who}: {v}");
    }
    for k in [
        "throughput_tasks_per_s",
        "baseline_jobs_per_s",
        "baseline_u64_per_s",
    ] {
        assert!(num(&v, k) > 0.0, "{k}: {v}");
    }
    close(
        "ratio_throughput",
        "throughput_tasks_per_s",
        "baseline_jobs_per_s",
    );
    close(
        "ratio_throughput_u64",
        "throughput_tasks_per_s",
        "baseline_u64_per_s",
    );
}

// ---------------------------------------------------------------------------
// Bad input
// ---------------------------------------------------------------------------

#[test]
fn help_and_version_list_the_commands_and_their_flags() {
    let r = fibflow(&["--help"]);
    r.expect_code(0);
    for c in ["demo", "inspect", "verify", "crash-test", "bench"] {
        assert!(r.stdout.contains(c), "--help lacks {c}: {}", r.stdout);
    }
    let r = fibflow(&["--version"]);
    r.expect_code(0);
    assert!(r.stdout.starts_with("fibflow "), "{}", r.stdout);
    let flags: [(&str, &[&str]); 4] = [
        (
            "demo",
            &["--memory", "--dir", "--tasks", "--json", "--seed"],
        ),
        ("inspect", &["--task", "--json", "<DIR>"]),
        ("verify", &["--json", "<DIR>"]),
        (
            "crash-test",
            &["--dir", "--kills", "--seed", "--tasks", "--json"],
        ),
    ];
    for (cmd, want) in flags {
        let r = fibflow(&[cmd, "--help"]);
        r.expect_code(0);
        for f in want {
            assert!(r.stdout.contains(f), "{cmd} --help lacks {f}: {}", r.stdout);
        }
    }
}

#[test]
fn missing_values_and_unknown_flags_are_refused_with_exit_2() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("d");
    fibflow(&["demo", "--dir", s(&d), "--tasks", "3"]).expect_code(0);
    let d = s(&d);
    let cases: &[(&[&str], &str)] = &[
        (&["demo", "--bogus"], "unexpected argument '--bogus'"),
        (
            &["demo", "--memory", "--tasks"],
            "a value is required for '--tasks",
        ),
        (&["demo", "--dir"], "a value is required for '--dir"),
        (
            &["demo", "--memory", "--seed"],
            "a value is required for '--seed",
        ),
        (
            &["demo", "--memory", "--tasks", "5", "extra"],
            "unexpected argument 'extra'",
        ),
        (&["demo", "--memory", "--tasks", "100000001"], "100000001"),
        (
            &["demo", "--memory", "--tasks", "1.5"],
            "invalid value '1.5'",
        ),
        (&["demo", "--memory", "--seed", "x"], "invalid value 'x'"),
        (&["demo", "--memory", "--seed", "-1"], "-1"),
        (
            &["demo", "--memory", "--JSON"],
            "unexpected argument '--JSON'",
        ),
        (&["inspect", d, "--bogus"], "unexpected argument '--bogus'"),
        (&["inspect", d, "--task"], "a value is required for '--task"),
        (
            &["inspect", d, "--workflow"],
            "a value is required for '--workflow",
        ),
        (&["inspect", d, d], "unexpected argument"),
        (&["inspect", "--json"], "<DIR>"),
        (&["verify", d, "--bogus"], "unexpected argument '--bogus'"),
        (
            &["verify", d, "--task", "1"],
            "unexpected argument '--task'",
        ),
        (&["verify", d, "extra"], "unexpected argument 'extra'"),
        (&["verify", "--json"], "<DIR>"),
        (&["crash-test", "--bogus"], "unexpected argument '--bogus'"),
        (&["crash-test", "--seed"], "a value is required for '--seed"),
        (
            &["crash-test", "--kills"],
            "a value is required for '--kills",
        ),
        (&["crash-test", "--dir"], "a value is required for '--dir"),
        (&["crash-test", "--kills", "x"], "invalid value 'x'"),
        (
            &["crash-test", "--durability", "never"],
            "invalid value 'never'",
        ),
        (&["crash-test", "--tasks", "100000001"], "100000001"),
        (&["bench", "--bogus"], "unexpected argument '--bogus'"),
        (&["bench", "--gap-us"], "a value is required for '--gap-us"),
        (&["bench", "--gap-us", "1000001"], "1000001"),
        (&["bench", "--seconds", "0.1"], "out of range"),
        (&["bench", "--seconds", "NaN"], "invalid value"),
    ];
    for (args, needle) in cases {
        let r = refused(args, needle);
        // clap's messages point at help; ours name the problem. Either way one
        // short message, not a dump.
        assert!(
            r.stderr.lines().count() <= 12,
            "{}: long stderr: {}",
            r.what,
            r.stderr
        );
    }
}

#[test]
fn missing_paths_are_not_created_by_inspect_or_verify() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("missing");
    for args in [
        vec!["inspect", s(&missing)],
        vec!["inspect", s(&missing), "--json"],
        vec!["inspect", s(&missing), "--task", "1"],
        vec!["verify", s(&missing), "--json"],
    ] {
        refused(&args, "not a directory");
        assert!(!missing.exists(), "{args:?} created {}", missing.display());
    }
}

#[test]
fn verify_reports_a_byte_flipped_in_the_middle_of_the_log_with_its_offset() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("d");
    fibflow(&["demo", "--dir", s(&d), "--tasks", "300"]).expect_code(0);
    let seg = d.join(SEG0);
    let mut bytes = std::fs::read(&seg).unwrap();
    let end = bytes.iter().rposition(|&b| b != 0).unwrap();
    assert!(end > 10_000, "the log is too short: {end} bytes");
    let mid = end / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&seg, &bytes).unwrap();

    let (r, v) = verify_json(&d);
    r.expect_code(1);
    assert!(!boolean(&v, "ok"), "{v}");
    let bad: Vec<&Value> = array(&v, "problems")
        .iter()
        .filter(|p| !boolean(p, "torn_tail"))
        .collect();
    assert!(!bad.is_empty(), "{v}");
    let p = bad[0];
    assert_eq!(string(p, "segment"), SEG0, "{v}");
    let offset = uint(p, "offset");
    assert!(
        offset <= mid as u64 && mid as u64 - offset < 64 * 1024,
        "the problem at {offset} is not the frame holding byte {mid}: {v}"
    );

    // The text form: segment, offset, and the verdict on the last line.
    let r = fibflow(&["verify", s(&d)]);
    r.expect_code(1);
    assert!(
        r.stdout.contains(SEG0) && r.stdout.contains(&format!("offset {offset}")),
        "{}",
        r.stdout
    );
    assert_eq!(r.stdout.lines().last(), Some("CORRUPT"), "{}", r.stdout);

    // Opening the corrupt log is refused with the same place named, and the
    // refused opens do not touch the segment.
    let place = offset.to_string();
    for args in [
        vec!["inspect", s(&d)],
        vec!["inspect", s(&d), "--json"],
        vec!["demo", "--dir", s(&d), "--tasks", "300", "--json"],
    ] {
        let r = refused(&args, SEG0);
        assert!(r.stderr.contains(&place), "{}: {}", r.what, r.stderr);
        assert!(r.stderr.contains("corrupt"), "{}: {}", r.what, r.stderr);
    }
    assert!(
        std::fs::read(&seg).unwrap() == bytes,
        "a refused open changed the corrupt segment"
    );
}

#[test]
fn a_second_demo_or_inspect_on_a_locked_directory_is_refused_until_the_holder_dies() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("d");
    // Far more tasks than this test waits for: it holds the lock throughout.
    let mut holder = Running::spawn(
        &["demo", "--dir", s(&d), "--tasks", "2000000"],
        Stdio::null(),
    );
    until("the holder writes its log", || {
        written_past(&d, 4096) || holder.exited().is_some()
    });
    assert!(
        holder.exited().is_none(),
        "{} ended before the check",
        holder.what
    );
    for args in [
        vec!["demo", "--dir", s(&d), "--tasks", "10", "--json"],
        vec!["demo", "--dir", s(&d), "--tasks", "10"],
        vec!["inspect", s(&d), "--json"],
        vec!["inspect", s(&d), "--task", "17"],
    ] {
        refused(&args, "locked");
    }
    assert!(
        holder.exited().is_none(),
        "the holder ended during the check: the refusals above prove nothing"
    );
    let status = holder.kill9();
    assert_eq!(status.signal(), Some(9), "{status:?}");
    // The kernel released the lock with the process: the directory opens.
    let ins = inspect_json(&d);
    assert!(uint(&ins, "tasks") > 0, "{ins}");
    let (_, ver) = verify_json(&d);
    assert!(boolean(&ver, "ok"), "{ver}");
}

/// BUG candidate: `inspect` of a directory that is not a fibflow log.
#[test]
fn inspect_refuses_a_directory_that_is_not_a_log_and_leaves_it_untouched() {
    let tmp = tempfile::tempdir().unwrap();
    // Some other program's files.
    let other = tmp.path().join("other");
    std::fs::create_dir(&other).unwrap();
    std::fs::write(other.join("notes.txt"), b"not a log").unwrap();
    // The parent of a real log: `crash-test --dir P` keeps its log in P/log.
    let parent = tmp.path().join("parent");
    fibflow(&["demo", "--dir", s(&parent.join("log")), "--tasks", "5"]).expect_code(0);

    // verify reads nothing there and writes nothing.
    for dir in [&other, &parent] {
        let before = listing(dir);
        let (_, v) = verify_json(dir);
        assert_eq!(uint(&v, "segments"), 0, "{v}");
        assert_eq!(uint(&v, "records"), 0, "{v}");
        assert_eq!(listing(dir), before, "verify changed {}", dir.display());
    }

    let mut wrong = Vec::new();
    for dir in [&other, &parent] {
        for json in [false, true] {
            let before = listing(dir);
            let mut args = vec!["inspect", s(dir)];
            if json {
                args.push("--json");
            }
            let r = fibflow(&args);
            if r.code != Some(2) || r.stderr.trim().is_empty() {
                wrong.push(format!(
                    "`fibflow {}` exited {:?} (want 2 and a message), stdout: {}",
                    args.join(" "),
                    r.code,
                    r.stdout.lines().next().unwrap_or("")
                ));
            }
            let after = listing(dir);
            if after != before {
                wrong.push(format!(
                    "`fibflow {}` changed the directory: {before:?} -> {after:?}",
                    args.join(" ")
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

// ---------------------------------------------------------------------------
// kill -9 and resume
// ---------------------------------------------------------------------------

/// `demo --dir D --tasks 20000` killed with SIGKILL once its log has grown
/// past a random point, then run again: it finishes the same 20000 tasks
/// (dedup keys: nothing twice) and `inspect` agrees. The demo prints nothing
/// before it finishes when stdout is not a terminal, so the condition is the
/// log's growth. `FIBFLOW_CLI_KILL_SEED` repeats a run's kill points.
#[test]
fn demo_killed_at_a_random_point_resumes_to_exactly_n_completed() {
    const N: u64 = 20_000;
    let n = N.to_string();
    let seed = std::env::var("FIBFLOW_CLI_KILL_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(rand::random::<u64>);
    eprintln!("kill seed {seed} (FIBFLOW_CLI_KILL_SEED={seed} repeats it)");
    let mut rng = StdRng::seed_from_u64(seed);
    // A complete run writes about 5 MB; draw the point below 4 MB and lower
    // the bound each time the demo finished before reaching it.
    let mut bound: u64 = 4_000_000;
    for round in 0..6 {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path().join("d");
        let at = if round == 5 {
            64
        } else {
            rng.random_range(64..bound)
        };
        let mut demo = Running::spawn(
            &["demo", "--dir", s(&d), "--tasks", &n, "--json"],
            Stdio::null(),
        );
        until("the log grows past the kill point", || {
            written_past(&d, at) || demo.exited().is_some()
        });
        let status = demo.kill9();
        if status.signal() != Some(9) {
            eprintln!("round {round}: the demo finished before byte {at}; again");
            bound = (bound / 4).max(128);
            continue;
        }
        eprintln!("round {round}: killed after the log passed byte {at}");

        // What the kill left: a valid log (a torn tail at most), nothing running.
        let (_, ver) = verify_json(&d);
        assert!(boolean(&ver, "ok"), "after the kill: {ver}");
        let ins = inspect_json(&d);
        let found = uint(&ins, "tasks");
        assert!(found <= N, "more tasks than submitted: {ins}");
        // That open made its recovery durable: a second one finds nothing
        // left to recover and the same counts.
        let again = inspect_json(&d);
        assert_eq!(uint(field(&again, "recovery"), "recovered"), 0, "{again}");
        assert_eq!(by_status(&again), by_status(&ins), "{ins}\n{again}");

        // The same command again finishes the same N tasks.
        let r = fibflow(&["demo", "--dir", s(&d), "--tasks", &n, "--json"]);
        r.expect_code(0);
        let v = demo_json(&r, N, Some(&d), "sync");
        assert_eq!(uint(&v, "completed"), N, "{v}");
        assert_eq!(uint(&v, "failed"), 0, "{v}");
        assert_eq!(
            uint(&v, "preexisting"),
            found,
            "preexisting vs what inspect found: {v}"
        );
        let flaky_tasks = (0..N).filter(|&i| flaky(i, 0)).count() as u64;
        assert!(uint(&v, "retried") >= flaky_tasks, "{v}");
        let counts = by_status(&v);
        assert_eq!(counts["completed"], N, "{v}");
        assert_eq!(total(&counts), N, "a task was submitted twice: {v}");

        let ins = inspect_json(&d);
        assert_eq!(uint(&ins, "tasks"), N, "{ins}");
        assert_eq!(by_status(&ins), counts, "inspect vs demo:\n{ins}\n{v}");
        let (_, ver) = verify_json(&d);
        assert!(boolean(&ver, "ok"), "{ver}");
        assert_eq!(opt_uint(&ver, "last_lsn"), opt_uint(&ins, "last_lsn"));

        // And once more: everything found, nothing new.
        let r = fibflow(&["demo", "--dir", s(&d), "--tasks", &n, "--json"]);
        r.expect_code(0);
        let v = demo_json(&r, N, Some(&d), "sync");
        assert_eq!(uint(&v, "completed"), N, "{v}");
        assert_eq!(uint(&v, "preexisting"), N, "{v}");
        assert_eq!(uint(&inspect_json(&d), "tasks"), N);
        return;
    }
    panic!("the demo finished before every kill point, even the first record");
}

/// Output into a pipe nobody reads (`fibflow inspect D | head -1` once `head`
/// has exited): Rust ignores SIGPIPE, so every print gets EPIPE. That is an I/O
/// error to report (exit 2, like the `--json` forms do), not a panic.
#[test]
fn output_into_a_closed_pipe_is_an_error_not_a_panic() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("d");
    fibflow(&["demo", "--dir", s(&d), "--tasks", "1"]).expect_code(0);
    let id = only_task_id(&d).to_string();
    let commands: [&[&str]; 10] = [
        &["demo", "--memory", "--tasks", "10"],
        &["demo", "--memory", "--tasks", "10", "--json"],
        &["inspect", s(&d)],
        &["inspect", s(&d), "--json"],
        &["inspect", s(&d), "--task", &id],
        &["inspect", s(&d), "--task", &id, "--json"],
        &["verify", s(&d)],
        &["verify", s(&d), "--json"],
        &["crash-test", "--kills", "0", "--tasks", "3"],
        &["crash-test", "--kills", "0", "--tasks", "3", "--json"],
    ];
    let mut panicked = Vec::new();
    for args in commands {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let (r, signal) = fibflow_unchecked(args, Stdio::from(writer));
        if r.panicked() {
            let why = r
                .stderr
                .lines()
                .find(|l| l.contains("failed"))
                .unwrap_or("");
            panicked.push(format!("{} (exit {:?}): {why}", r.what, r.code));
        } else {
            assert!(
                matches!(r.code, Some(0 | 2)),
                "{}: exit {:?}, signal {signal:?}: {}",
                r.what,
                r.code,
                r.stderr
            );
        }
    }
    assert!(
        panicked.is_empty(),
        "panicked writing to a closed pipe:\n{}",
        panicked.join("\n")
    );
}
