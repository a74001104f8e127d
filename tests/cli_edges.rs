//! The `fibflow` binary at its edges, beyond `tests/cli_contract.rs`: docs and
//! `--help` agreeing flag by flag, malformed numbers and flags, unusable
//! directories, `--json` being exactly one line with a quiet stderr, the
//! progress bar and terminals, re-running `demo` on a directory with another
//! seed or fewer tasks, `inspect` of directories the library wrote (workflows,
//! suspended and paused tasks), `crash-test` with small and invalid parameters
//! and environment overrides, and SIGKILLs of `demo` (twice, with `batched`
//! durability) and of a `crash-test` parent.
//!
//! Exit codes are those of `docs/cli.md`: 0 success, 1 the check failed,
//! 2 the command could not run. No fixed sleeps: every wait polls a condition.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::XorShift;
use fibflow::{ChildSpec, Outcome, TaskFilter, TaskId, TaskManager, TaskStatus};
use serde_json::{json, Value};
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

struct Ran {
    what: String,
    code: Option<i32>,
    signal: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Ran {
    fn panicked(&self) -> bool {
        self.code == Some(101)
            || self.stderr.contains("panicked at")
            || self.stderr.contains("RUST_BACKTRACE")
    }

    #[track_caller]
    fn json(&self) -> Value {
        let last = self
            .stdout
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or_else(|| panic!("{}: no stdout line; stderr: {}", self.what, self.stderr));
        let v: Value = serde_json::from_str(last.trim()).unwrap_or_else(|e| {
            panic!(
                "{}: the last stdout line is not JSON ({e}): {last}",
                self.what
            )
        });
        assert!(v.is_object(), "{}: not an object: {v}", self.what);
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

/// Reads a pipe to its end on a thread.
fn drain(r: Option<impl Read + Send + 'static>) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut s = Vec::new();
        if let Some(mut r) = r {
            let _ = r.read_to_end(&mut s);
        }
        s
    })
}

/// Waits for `child` (killed and failed after [`PATIENCE`]).
fn finish(what: &str, child: &mut Child) -> ExitStatus {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what}: still running after {PATIENCE:?}");
        }
        std::thread::park_timeout(Duration::from_millis(2));
    }
}

fn run_cmd(what: String, mut c: Command) -> Ran {
    let mut child = c
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = drain(child.stdout.take());
    let err = drain(child.stderr.take());
    let status = finish(&what, &mut child);
    let ran = Ran {
        what,
        code: status.code(),
        signal: status.signal(),
        stdout: String::from_utf8_lossy(&out.join().unwrap()).into_owned(),
        stderr: String::from_utf8_lossy(&err.join().unwrap()).into_owned(),
    };
    assert!(!ran.panicked(), "{} panicked: {}", ran.what, ran.stderr);
    assert!(
        ran.code.is_some(),
        "{} died of signal {:?}: {}",
        ran.what,
        ran.signal,
        ran.stderr
    );
    ran
}

/// Runs `fibflow args` to its end; it must neither panic nor die of a signal.
fn fibflow(args: &[&str]) -> Ran {
    run_cmd(format!("fibflow {}", args.join(" ")), command(args))
}

/// [`fibflow`] with extra environment variables and a working directory.
fn fibflow_env(args: &[&str], env: &[(&str, &str)], cwd: Option<&Path>) -> Ran {
    let mut c = command(args);
    for (k, v) in env {
        c.env(k, v);
    }
    if let Some(d) = cwd {
        c.current_dir(d);
    }
    let vars: Vec<String> = env.iter().map(|(k, v)| format!("{k}={v} ")).collect();
    run_cmd(format!("{}fibflow {}", vars.concat(), args.join(" ")), c)
}

/// A command that cannot run: exit 2, one `needle` on stderr, nothing on stdout.
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
        r.stdout.trim().is_empty(),
        "{}: printed on stdout although it failed: {}",
        r.what,
        r.stdout
    );
    r
}

/// A child process killed if the test ends before it does.
struct Running {
    child: Child,
    what: String,
}

impl Running {
    fn spawn(args: &[&str]) -> Running {
        let child = command(args)
            .stdout(Stdio::null())
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

fn until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::yield_now();
        std::thread::park_timeout(Duration::from_millis(1));
    }
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

// ---------------------------------------------------------------------------
// JSON
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
fn string<'a>(v: &'a Value, key: &str) -> &'a str {
    field(v, key)
        .as_str()
        .unwrap_or_else(|| panic!("`{key}` is not a string in {v}"))
}

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
        .map(|(k, n)| (k.clone(), n.as_u64().unwrap()))
        .collect()
}

fn total(c: &BTreeMap<String, u64>) -> u64 {
    c.values().sum()
}

/// `demo --json`: every documented field with a sensible value, and
/// `completed + failed == submitted` (a demo that exits 0 or 1 has waited for
/// all N to be terminal, and a demo task cannot end paused).
#[track_caller]
fn demo_json(r: &Ran, n: u64) -> Value {
    let v = r.json();
    assert_eq!(uint(&v, "submitted"), n, "{v}");
    let completed = uint(&v, "completed");
    let failed = uint(&v, "failed");
    assert_eq!(
        completed + failed,
        n,
        "completed + failed != submitted: {v}"
    );
    assert!(uint(&v, "retried") <= n, "{v}");
    let elapsed_ms = num(&v, "elapsed_ms");
    let per_s = num(&v, "tasks_per_s");
    if elapsed_ms >= 1.0 {
        let expect = n as f64 / (elapsed_ms / 1e3);
        assert!(
            (per_s - expect).abs() <= expect * 0.02 + 0.1,
            "tasks_per_s {per_s} vs submitted / elapsed = {expect}: {v}"
        );
    }
    if n == 0 {
        assert!(per_s < 1e-9, "no tasks, no rate: {v}");
    }
    num(&v, "open_ms");
    let pre = uint(&v, "preexisting");
    let counts = by_status(&v);
    assert!(total(&counts) >= n.max(pre), "{v}");
    assert!(counts["completed"] >= completed, "{v}");
    assert_eq!(r.code, Some(i32::from(failed > 0)), "exit vs failed: {v}");
    v
}

/// `inspect --json` of `dir`: the counts, consistent.
#[track_caller]
fn inspect_counts(dir: &Path) -> (Value, BTreeMap<String, u64>) {
    let r = fibflow(&["inspect", s(dir), "--json"]);
    r.expect_code(0);
    let v = r.json();
    let counts = by_status(&v);
    assert_eq!(uint(&v, "tasks"), total(&counts), "{v}");
    assert_eq!(counts["running"], 0, "running after an open: {v}");
    assert_eq!(
        uint(field(&v, "recovery"), "records_refused"),
        0,
        "refused: {v}"
    );
    (v, counts)
}

#[track_caller]
fn verify_ok(dir: &Path) {
    let r = fibflow(&["verify", s(dir), "--json"]);
    r.expect_code(0);
    let v = r.json();
    assert_eq!(field(&v, "ok"), &Value::Bool(true), "{v}");
}

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

fn flaky(i: u64, seed: u64) -> bool {
    i.wrapping_add(seed) % 10 == 3
}

fn seed() -> u64 {
    std::env::var("FIBFLOW_CLI_EDGES_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        })
}

// ---------------------------------------------------------------------------
// --help and docs/cli.md
// ---------------------------------------------------------------------------

/// `--flags` of the `## \`fibflow NAME ...\`` headings of docs/cli.md, by NAME.
fn documented() -> BTreeMap<String, Vec<String>> {
    let doc =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/cli.md")).unwrap();
    let mut out = BTreeMap::new();
    for line in doc.lines() {
        let Some(rest) = line.strip_prefix("## `fibflow ") else {
            continue;
        };
        let rest = rest.trim_end_matches('`');
        let name = rest.split_whitespace().next().unwrap().to_owned();
        let flags = flags_in(rest);
        out.insert(name, flags);
    }
    out
}

fn flags_in(text: &str) -> Vec<String> {
    let mut v: Vec<String> = text
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
        .filter(|w| w.starts_with("--") && w.len() > 2)
        .map(str::to_owned)
        .collect();
    v.sort_unstable();
    v.dedup();
    v
}

#[test]
fn every_documented_command_and_flag_is_in_help_and_the_reverse() {
    let docs = documented();
    assert!(docs.len() >= 5, "docs/cli.md headings: {docs:?}");
    let top = fibflow(&["--help"]);
    top.expect_code(0);
    let listed: Vec<String> = top
        .stdout
        .split("Commands:")
        .nth(1)
        .unwrap()
        .split("Options:")
        .next()
        .unwrap()
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|w| *w != "help")
        .map(str::to_owned)
        .collect();
    let mut doc_names: Vec<&String> = docs.keys().collect();
    doc_names.sort_unstable();
    let mut help_names: Vec<&String> = listed.iter().collect();
    help_names.sort_unstable();
    assert_eq!(
        help_names, doc_names,
        "--help vs docs/cli.md: {}",
        top.stdout
    );

    let mut wrong = Vec::new();
    for (name, doc_flags) in &docs {
        // `fibflow help NAME` and `fibflow NAME --help` say the same.
        let help = fibflow(&[name, "--help"]);
        help.expect_code(0);
        let help2 = fibflow(&["help", name]);
        help2.expect_code(0);
        assert_eq!(help.stdout, help2.stdout, "{name}");
        let mut help_flags = flags_in(&help.stdout);
        help_flags.retain(|f| f != "--help");
        for f in doc_flags {
            if !help_flags.contains(f) {
                wrong.push(format!("{name}: docs/cli.md has {f}, --help does not"));
            }
        }
        for f in &help_flags {
            if !doc_flags.contains(f) {
                wrong.push(format!("{name}: --help has {f}, docs/cli.md does not"));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

// ---------------------------------------------------------------------------
// Bad input
// ---------------------------------------------------------------------------

#[test]
fn malformed_numbers_flags_and_subcommands_exit_2_with_one_message() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("d");
    fibflow(&["demo", "--dir", s(&d), "--tasks", "2"]).expect_code(0);
    let d = s(&d);
    let cases: &[(&[&str], &str)] = &[
        (&["demoo"], "unrecognized subcommand 'demoo'"),
        (&["DEMO"], "unrecognized subcommand"),
        (&["crash_test"], "unrecognized subcommand"),
        (&["--json", "demo"], "unexpected argument '--json'"),
        (&["-x"], "unexpected argument '-x'"),
        (&["help", "nothing"], "unrecognized subcommand"),
        (&["demo", "--memory", "--tasks=-1"], "-1"),
        (
            &["demo", "--memory", "--tasks", "0x10"],
            "invalid value '0x10'",
        ),
        (
            &["demo", "--memory", "--tasks", "18446744073709551616"],
            "invalid value",
        ),
        (&["demo", "--memory", "--tasks", ""], "invalid value ''"),
        (
            &["demo", "--memory", "--tasks", "1e3"],
            "invalid value '1e3'",
        ),
        (
            &["demo", "--memory", "--seed", "18446744073709551616"],
            "invalid value",
        ),
        (&["demo", "--memory", "--seed=-1"], "-1"),
        (
            &["demo", "--memory", "--durability", "SYNC"],
            "invalid value",
        ),
        (
            &["demo", "--memory", "--durability", "memory"],
            "invalid value",
        ),
        (&["demo", "--memory", "--durability"], "a value is required"),
        (
            &["demo", "--memory", "--memory"],
            "cannot be used multiple times",
        ),
        (
            &["demo", "--dir", "a", "--dir", "b"],
            "cannot be used multiple times",
        ),
        (&["demo", "--dir", ""], "a value is required"),
        (&["bench", "--seconds", "0"], "out of range"),
        (&["bench", "--seconds=-0.5"], "out of range"),
        (&["bench", "--seconds", "86400.5"], "out of range"),
        (&["bench", "--seconds", "1e400"], "out of range"),
        (&["bench", "--seconds", ""], "invalid value"),
        (&["bench", "--seconds"], "a value is required"),
        (&["bench", "--gap-us=-1"], "-1"),
        (&["bench", "--gap-us", "1.5"], "invalid value"),
        (
            &["bench", "--json", "--json"],
            "cannot be used multiple times",
        ),
        (&["crash-test", "--tasks", "0"], "at least 1"),
        (&["crash-test", "--tasks", "0", "--json"], "at least 1"),
        (&["crash-test", "--tasks=-3"], "-3"),
        (&["crash-test", "--kills", "4294967296"], "4294967296"),
        (&["crash-test", "--kills=-1"], "-1"),
        (&["crash-test", "--seed=-1"], "-1"),
        (&["crash-test", "--seed", "z"], "invalid value 'z'"),
        (&["crash-test", "--durability"], "a value is required"),
        (&["crash-test", "--dir", ""], "a value is required"),
        (
            &["crash-test", "--memory"],
            "unexpected argument '--memory'",
        ),
        (&["inspect", d, "--task=-1"], "-1"),
        (&["inspect", d, "--task", "1.0"], "invalid value '1.0'"),
        (&["inspect", d, "--workflow", "x"], "invalid value 'x'"),
        (&["inspect", ""], "a value is required"),
        (&["verify", ""], "a value is required"),
        (
            &["inspect", d, "--task", "1", "--task", "2"],
            "cannot be used multiple times",
        ),
    ];
    for (args, needle) in cases {
        let r = refused(args, needle);
        assert!(
            r.stderr.lines().count() <= 12,
            "{}: long stderr: {}",
            r.what,
            r.stderr
        );
        assert!(
            !r.stderr.contains('\u{1b}'),
            "{}: escapes: {:?}",
            r.what,
            r.stderr
        );
    }
    // No arguments at all: usage on stderr, exit 2.
    let r = fibflow(&[]);
    r.expect_code(2);
    assert!(r.stderr.contains("Usage: fibflow"), "{}", r.stderr);
}

#[test]
fn unusable_directories_are_refused_with_exit_2_and_left_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("afile");
    std::fs::write(&file, b"precious").unwrap();
    let under_file = file.join("sub");
    // Nothing can be created under /proc, even by root.
    let proc_dir = Path::new("/proc/fibflow-cli-edges-nope");
    let mut wrong = Vec::new();
    for dir in [&file, &under_file, &proc_dir.to_path_buf()] {
        for args in [
            vec!["demo", "--dir", s(dir), "--tasks", "1"],
            vec!["demo", "--dir", s(dir), "--tasks", "1", "--json"],
            vec![
                "crash-test",
                "--dir",
                s(dir),
                "--tasks",
                "1",
                "--kills",
                "0",
            ],
            vec![
                "crash-test",
                "--dir",
                s(dir),
                "--tasks",
                "1",
                "--kills",
                "0",
                "--json",
            ],
            vec!["inspect", s(dir), "--json"],
            vec!["verify", s(dir), "--json"],
        ] {
            let r = fibflow(&args);
            if r.code != Some(2)
                || !r.stderr.starts_with("fibflow: error:")
                || !r.stderr.contains(s(dir))
                || !r.stdout.trim().is_empty()
            {
                wrong.push(format!(
                    "{}: exit {:?}, stdout {:?}, stderr {:?}",
                    r.what, r.code, r.stdout, r.stderr
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    assert_eq!(std::fs::read(&file).unwrap(), b"precious");
    assert!(!proc_dir.exists());
}

// ---------------------------------------------------------------------------
// Output: --json is one line, stderr quiet, no escapes without a terminal
// ---------------------------------------------------------------------------

#[track_caller]
fn one_json_line(r: &Ran) -> Value {
    r.expect_code(0);
    assert_eq!(
        r.stdout.lines().count(),
        1,
        "{}: --json prints more than one line: {:?}",
        r.what,
        r.stdout
    );
    assert!(
        r.stderr.is_empty(),
        "{}: stderr with --json on success: {:?}",
        r.what,
        r.stderr
    );
    assert!(!r.stdout.contains('\u{1b}'), "{}", r.what);
    r.json()
}

#[test]
fn json_runs_print_exactly_one_line_and_nothing_on_stderr() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("d");
    let r = fibflow(&["demo", "--memory", "--tasks", "30", "--json"]);
    let v = one_json_line(&r);
    demo_json(&r, 30);
    assert_eq!(uint(&v, "completed"), 30);
    assert!(field(&v, "dir").is_null(), "{v}");
    assert_eq!(string(&v, "durability"), "memory", "{v}");
    let r = fibflow(&[
        "demo",
        "--dir",
        s(&d),
        "--tasks",
        "30",
        "--durability",
        "batched",
        "--json",
    ]);
    let v = one_json_line(&r);
    demo_json(&r, 30);
    assert_eq!(string(&v, "durability"), "batched", "{v}");
    assert_eq!(string(&v, "dir"), s(&d), "{v}");
    one_json_line(&fibflow(&["inspect", s(&d), "--json"]));
    one_json_line(&fibflow(&["verify", s(&d), "--json"]));
    let r = fibflow(&["crash-test", "--kills", "1", "--tasks", "10", "--json"]);
    let v = one_json_line(&r);
    assert_eq!(field(&v, "ok"), &Value::Bool(true), "{v}");

    // Text forms: no JSON, no escapes, nothing on stderr for demo/inspect/verify.
    for args in [
        vec!["demo", "--memory", "--tasks", "30"],
        vec!["demo", "--dir", s(&d), "--tasks", "30"],
        vec!["inspect", s(&d)],
        vec!["verify", s(&d)],
    ] {
        let r = fibflow(&args);
        r.expect_code(0);
        assert!(r.stderr.is_empty(), "{}: {:?}", r.what, r.stderr);
        assert!(!r.stdout.contains('{'), "{}: {}", r.what, r.stdout);
        assert!(!r.stdout.contains('\u{1b}'), "{}: {:?}", r.what, r.stdout);
        assert!(!r.stdout.contains('\r'), "{}: {:?}", r.what, r.stdout);
    }
}

#[test]
fn crash_test_text_mode_prints_one_progress_line_per_round_on_stderr() {
    let r = fibflow(&["crash-test", "--kills", "2", "--tasks", "12", "--seed", "4"]);
    r.expect_code(0);
    assert_eq!(r.stdout.lines().last(), Some("PASS"), "{}", r.stdout);
    assert!(r.stdout.contains("completed 12 of 12"), "{}", r.stdout);
    let rounds: Vec<&str> = r.stderr.lines().collect();
    assert!(
        rounds.len() >= 3 && rounds.iter().all(|l| l.contains("round")),
        "one line per round: {:?}",
        r.stderr
    );
    assert!(
        rounds.last().unwrap().contains("final run"),
        "{:?}",
        r.stderr
    );
    let killed = rounds.iter().filter(|l| l.contains(": killed")).count();
    assert_eq!(killed, 2, "{:?}", r.stderr);
    assert!(!r.stderr.contains('\u{1b}') && !r.stdout.contains('\u{1b}'));
}

/// Runs `sh_cmd` (a shell command line) under `script(1)`, which gives it a
/// pseudo-terminal for stdin, stdout and stderr; redirections inside `sh_cmd`
/// take streams off the terminal. Returns what the terminal received and the
/// command's exit code.
fn on_terminal(sh_cmd: &str) -> (String, Option<i32>) {
    let mut c = Command::new("script");
    c.args(["-qec", sh_cmd, "/dev/null"])
        .env_remove("RUST_BACKTRACE")
        .env("TERM", "xterm")
        .stdin(Stdio::null());
    let r = run_cmd(format!("script -qec {sh_cmd:?}"), c);
    (r.stdout, r.code)
}

fn quote(p: &Path) -> String {
    format!("'{}'", s(p))
}

#[test]
fn no_progress_bar_unless_stdout_is_a_terminal_and_json_is_off() {
    let tmp = tempfile::tempdir().unwrap();
    let bin = Path::new(env!("CARGO_BIN_EXE_fibflow"));
    let out = tmp.path().join("out.txt");
    let err = tmp.path().join("err.txt");

    // stderr is a terminal, stdout a file: no bar, nothing on the terminal.
    let (tty, code) = on_terminal(&format!(
        "{} demo --memory --tasks 3000 > {}",
        quote(bin),
        quote(&out)
    ));
    assert_eq!(code, Some(0), "{tty:?}");
    let text = std::fs::read_to_string(&out).unwrap();
    assert!(text.contains("completed 3000"), "{text}");
    assert!(!text.contains('\u{1b}'), "{text:?}");
    assert!(
        tty.is_empty(),
        "stdout is a file, yet the terminal on stderr got {tty:?}"
    );

    // stdout is a terminal but --json is given: no bar, one JSON line.
    let (tty, code) = on_terminal(&format!(
        "{} demo --memory --tasks 3000 --json 2> {}",
        quote(bin),
        quote(&err)
    ));
    assert_eq!(code, Some(0), "{tty:?}");
    assert_eq!(std::fs::read_to_string(&err).unwrap(), "", "stderr");
    assert!(!tty.contains('\u{1b}'), "escapes with --json: {tty:?}");
    let lines: Vec<&str> = tty.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{tty:?}");
    let v: Value = serde_json::from_str(lines[0].trim()).unwrap();
    assert_eq!(uint(&v, "completed"), 3000, "{v}");

    // Everything on a terminal and --json: still exactly the JSON line.
    let (tty, code) = on_terminal(&format!("{} demo --memory --tasks 3000 --json", quote(bin)));
    assert_eq!(code, Some(0), "{tty:?}");
    assert!(!tty.contains('\u{1b}'), "escapes with --json: {tty:?}");
    let lines: Vec<&str> = tty.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{tty:?}");

    // inspect and verify on a terminal print no escapes either.
    let d = tmp.path().join("d");
    fibflow(&["demo", "--dir", s(&d), "--tasks", "5"]).expect_code(0);
    for cmd in ["inspect", "verify"] {
        let (tty, code) = on_terminal(&format!("{} {cmd} {}", quote(bin), quote(&d)));
        assert_eq!(code, Some(0), "{tty:?}");
        assert!(!tty.contains('\u{1b}'), "{cmd}: {tty:?}");
        assert!(!tty.is_empty(), "{cmd} printed nothing");
    }
}

// ---------------------------------------------------------------------------
// demo on an existing directory
// ---------------------------------------------------------------------------

#[test]
fn demo_in_the_working_directory_by_default() {
    let tmp = tempfile::tempdir().unwrap();
    let r = fibflow_env(&["demo", "--tasks", "4", "--json"], &[], Some(tmp.path()));
    let v = demo_json(&r, 4);
    assert_eq!(string(&v, "dir"), "fibflow-data", "{v}");
    assert_eq!(string(&v, "durability"), "sync", "{v}");
    let d = tmp.path().join("fibflow-data");
    assert!(d.join(SEG0).is_file(), "no log in {}", d.display());
    let (_, counts) = inspect_counts(&d);
    assert_eq!(counts["completed"], 4);
}

#[test]
fn demo_with_zero_tasks_in_a_directory_then_more() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("d");
    let r = fibflow(&["demo", "--dir", s(&d), "--tasks", "0", "--json"]);
    let v = demo_json(&r, 0);
    assert_eq!(uint(&v, "completed"), 0);
    assert_eq!(total(&by_status(&v)), 0, "{v}");
    // The empty log it left is a log: inspect and verify read it.
    let (ins, counts) = inspect_counts(&d);
    assert_eq!(total(&counts), 0, "{ins}");
    verify_ok(&d);
    let r = fibflow(&["demo", "--dir", s(&d), "--tasks", "7", "--json"]);
    let v = demo_json(&r, 7);
    assert_eq!(uint(&v, "completed"), 7, "{v}");
    assert_eq!(uint(&v, "preexisting"), 0, "{v}");
}

/// Re-running `demo` on a directory finds its tasks by dedup key `demo-<i>`
/// (docs/cli.md): another `--seed` does not change the tasks already there
/// (their kind was fixed when they were submitted), fewer tasks submit nothing,
/// and another `--durability` opens the same log.
#[test]
fn demo_rerun_with_another_seed_fewer_tasks_or_durability_reuses_the_tasks() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("d");
    let r = fibflow(&["demo", "--dir", s(&d), "--tasks", "40", "--json"]);
    let first = demo_json(&r, 40);
    let flaky0 = (0..40).filter(|&i| flaky(i, 0)).count() as u64;
    let flaky3 = (0..40).filter(|&i| flaky(i, 3)).count() as u64;
    assert_eq!(uint(&first, "retried"), flaky0, "{first}");

    // --seed 3 with tasks 0..50: 0..40 are the old tasks, 40..50 new ones with seed 3.
    let r = fibflow(&[
        "demo",
        "--dir",
        s(&d),
        "--tasks",
        "50",
        "--seed",
        "3",
        "--json",
    ]);
    let v = demo_json(&r, 50);
    assert_eq!(uint(&v, "preexisting"), 40, "{v}");
    assert_eq!(uint(&v, "completed"), 50, "{v}");
    let new_flaky = (40..50).filter(|&i| flaky(i, 3)).count() as u64;
    assert_eq!(
        uint(&v, "retried"),
        flaky0 + new_flaky,
        "old tasks keep their seed-0 kind (seed 3 would give {flaky3} among the first 40): {v}"
    );
    assert_eq!(total(&by_status(&v)), 50, "{v}");

    // Fewer tasks: the first 10 are found, nothing is submitted.
    for dur in ["os", "batched", "sync"] {
        let r = fibflow(&[
            "demo",
            "--dir",
            s(&d),
            "--tasks",
            "10",
            "--durability",
            dur,
            "--json",
        ]);
        let v = demo_json(&r, 10);
        assert_eq!(uint(&v, "completed"), 10, "{v}");
        assert_eq!(uint(&v, "preexisting"), 50, "{v}");
        assert_eq!(string(&v, "durability"), dur, "{v}");
        assert_eq!(total(&by_status(&v)), 50, "{v}");
        assert_eq!(by_status(&v)["completed"], 50, "{v}");
    }
    let (_, counts) = inspect_counts(&d);
    assert_eq!(counts["completed"], 50);
    assert_eq!(total(&counts), 50);
    verify_ok(&d);
}

// ---------------------------------------------------------------------------
// inspect on directories the library wrote
// ---------------------------------------------------------------------------

/// A directory with a two-level workflow (done), a suspended task, a paused
/// one and pending tasks of a handler the CLI does not know.
fn library_dir(dir: &Path) -> (TaskId, TaskId, TaskId, TaskId) {
    let mgr = TaskManager::builder().dir(dir).build().unwrap();
    mgr.register("wf.root", |ctx| {
        if ctx.stage() == 0 {
            return Ok(Outcome::Spawn {
                children: vec![
                    ChildSpec::new("wf.mid", json!({"k": 1})),
                    ChildSpec::new("wf.leaf", json!({"k": 2})),
                ],
                context: None,
            });
        }
        Ok(json!({"done": ctx.stage()}).into())
    })
    .unwrap();
    mgr.register("wf.mid", |ctx| {
        if ctx.stage() == 0 {
            return Ok(Outcome::Spawn {
                children: vec![
                    ChildSpec::new("wf.leaf", json!({"k": 3})),
                    ChildSpec::new("wf.leaf", json!({"k": 4, "fail": true})),
                ],
                context: None,
            });
        }
        Ok(json!("mid").into())
    })
    .unwrap();
    mgr.register("wf.leaf", |ctx| {
        if ctx.payload()["fail"] == json!(true) {
            return Err("leaf fails on purpose".into());
        }
        Ok(json!(ctx.payload()["k"]).into())
    })
    .unwrap();
    mgr.register("wf.wait", |_| {
        Ok(Outcome::Suspend {
            reason: "awaiting_approval".into(),
            context: Some(b"ctx".to_vec()),
        })
    })
    .unwrap();
    mgr.register("other.job", |_| Ok(json!(1).into())).unwrap();
    let root = mgr.submit("wf.root", json!(null)).unwrap();
    let waiting = mgr.submit("wf.wait", json!(null)).unwrap();
    let paused = mgr.submit("other.job", json!("p")).unwrap();
    mgr.pause_task(paused).unwrap();
    mgr.start().unwrap();
    mgr.wait(root, PATIENCE).unwrap();
    common::eventually("the suspension", || {
        mgr.get_task(waiting)
            .is_some_and(|t| t.status == TaskStatus::Suspended)
    });
    mgr.stop(PATIENCE).unwrap();
    drop(mgr);
    // Pending tasks of a handler only this program registers.
    let mgr = TaskManager::builder().dir(dir).build().unwrap();
    mgr.register("foreign", |_| Ok(json!(1).into())).unwrap();
    let pending = mgr.submit("foreign", json!({"x": 1})).unwrap();
    mgr.submit("foreign", json!({"x": 2})).unwrap();
    drop(mgr);
    let mid = {
        let mgr = TaskManager::builder().dir(dir).build().unwrap();
        let kids = mgr.list_tasks(&TaskFilter::all().parent(root));
        kids.iter().find(|t| &*t.name == "wf.mid").unwrap().id
    };
    (root, mid, waiting, pending)
}

#[test]
fn inspect_a_library_directory_with_workflows_suspensions_and_unknown_handlers() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("lib");
    let (root, _, waiting, pending) = library_dir(&d);

    let (ins, counts) = inspect_counts(&d);
    assert_eq!(total(&counts), 9, "{ins}");
    assert_eq!(counts["suspended"], 1, "{ins}");
    assert_eq!(counts["paused"], 1, "{ins}");
    assert_eq!(counts["pending"], 2, "{ins}");
    // inspect starts no workers: a second look finds the same.
    let (_, again) = inspect_counts(&d);
    assert_eq!(again, counts);

    // The workflow tree, depth first, with depths and parents.
    let r = fibflow(&[
        "inspect",
        s(&d),
        "--workflow",
        &root.0.to_string(),
        "--json",
    ]);
    r.expect_code(0);
    let v = r.json();
    assert_eq!(uint(&v, "root"), root.0, "{v}");
    let tree = field(&v, "tree").as_array().unwrap();
    assert_eq!(tree.len(), 5, "root, mid, leaf, and mid's two leaves: {v}");
    assert_eq!(uint(&tree[0], "id"), root.0, "{v}");
    assert_eq!(uint(&tree[0], "depth"), 0, "{v}");
    let mut seen: Vec<(u64, u64)> = vec![(root.0, 0)];
    for row in &tree[1..] {
        let parent = uint(row, "parent_id");
        let depth = uint(row, "depth");
        // Depth first: the parent is an earlier row, one level up, and the
        // rows between them are its subtree (depth greater than the parent's).
        let at = seen
            .iter()
            .position(|(id, _)| *id == parent)
            .unwrap_or_else(|| panic!("parent {parent} not before {row}: {v}"));
        assert_eq!(depth, seen[at].1 + 1, "{row}: {v}");
        assert!(
            seen[at + 1..].iter().all(|(_, d)| *d > seen[at].1),
            "not depth first at {row}: {v}"
        );
        seen.push((uint(row, "id"), depth));
        string(row, "status");
        string(row, "name");
    }
    let failed: Vec<&Value> = tree
        .iter()
        .filter(|t| string(t, "status") == "permanently_failed")
        .collect();
    assert_eq!(failed.len(), 1, "{v}");
    assert!(string(failed[0], "error").contains("on purpose"), "{v}");
    assert_eq!(string(&tree[0], "status"), "completed", "{v}");
    assert!(field(&v, "summary").is_object(), "{v}");
    let r = fibflow(&["inspect", s(&d), "--workflow", &root.0.to_string()]);
    r.expect_code(0);
    assert!(
        r.stdout.starts_with(&format!("workflow {root}: 5 tasks")),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("critical path:"), "{}", r.stdout);

    // A suspended task and a pending one of an unknown handler, by --task.
    let r = fibflow(&["inspect", s(&d), "--task", &waiting.0.to_string(), "--json"]);
    r.expect_code(0);
    let v = r.json();
    assert_eq!(string(field(&v, "task"), "status"), "suspended", "{v}");
    let kinds: Vec<&str> = field(&v, "events")
        .as_array()
        .unwrap()
        .iter()
        .map(|e| string(e, "event_type"))
        .collect();
    assert!(kinds.contains(&"task_suspended"), "{kinds:?}");
    let r = fibflow(&["inspect", s(&d), "--task", &pending.0.to_string(), "--json"]);
    r.expect_code(0);
    let v = r.json();
    assert_eq!(string(field(&v, "task"), "status"), "pending", "{v}");
    assert_eq!(string(field(&v, "task"), "name"), "foreign", "{v}");
    assert!(field(&v, "attempts").as_array().unwrap().is_empty(), "{v}");

    // demo on this directory leaves the foreign tasks alone and counts them.
    let r = fibflow(&["demo", "--dir", s(&d), "--tasks", "5", "--json"]);
    let v = demo_json(&r, 5);
    assert_eq!(uint(&v, "preexisting"), 9, "{v}");
    let c = by_status(&v);
    assert_eq!(c["pending"], 2, "{v}");
    assert_eq!(c["suspended"], 1, "{v}");
    assert_eq!(c["paused"], 1, "{v}");
    assert_eq!(total(&c), 14, "{v}");
    verify_ok(&d);
}

/// Fixed in session 16 (the test failed before the fix): `inspect --workflow ID` with a task that is not a root (docs/cli.md:
/// "With `--workflow ID` (a root task)") exits 0 with a one-row "tree" that
/// omits the task's own children and a summary that counts only the task
/// itself (critical path `[ID]`), as if it had no subtasks. The CLI never
/// checks that ID is a root (src/cli/inspect.rs:185-190); the library's
/// workflow filter matches `id == ID || root_id == ID` (src/api/query.rs:97-99),
/// and descendants of a non-root carry the real root's id. Either refuse with
/// "task ID is not a workflow root (its root is R)" or show its subtree.
#[test]
fn inspect_workflow_of_a_child_task_shows_its_subtree_or_refuses() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("lib");
    let (root, mid, _, _) = library_dir(&d);
    let r = fibflow(&["inspect", s(&d), "--workflow", &mid.0.to_string(), "--json"]);
    if r.code == Some(2) {
        assert!(
            r.stderr.contains(&root.0.to_string()) || r.stderr.contains("root"),
            "refused without saying why: {}",
            r.stderr
        );
        return;
    }
    r.expect_code(0);
    let v = r.json();
    let tree = field(&v, "tree").as_array().unwrap();
    assert_eq!(
        tree.len(),
        3,
        "`inspect --workflow {mid}` (a child with two children of its own) shows {} task(s): {v}",
        tree.len()
    );
}

/// Fixed in session 16 (the test failed before the fix): `demo --json`'s `by_status` ("every status of the whole manager") is
/// sampled before `stop` (src/cli/demo.rs:291-292) while the workers still
/// claim and finish other tasks the directory holds (a resumed run after a
/// kill, a run with fewer tasks than before): the report printed after the
/// process stopped shows fewer `completed`, more `pending`, sometimes tasks
/// `running`, and disagrees with `inspect` of the directory it leaves. Take
/// the counts after `stop` (or pause claiming before counting).
#[test]
fn demo_by_status_is_the_state_it_leaves_behind() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("base");
    {
        // demo-0..demo-9 first, then many later demo tasks, all pending: the
        // run of `--tasks 10` finds its ten first and the rest keep its
        // workers busy when it counts.
        let mgr = TaskManager::builder().dir(&base).build().unwrap();
        mgr.register("demo.cpu", |_| Ok(json!(0).into())).unwrap();
        let batch = |from: u64, to: u64| {
            (from..to)
                .map(|i| {
                    (
                        "demo.cpu".to_owned(),
                        json!({ "i": i }),
                        fibflow::SubmitOptions::new().dedup_key(format!("demo-{i}")),
                    )
                })
                .collect::<Vec<_>>()
        };
        mgr.submit_batch(batch(0, 10)).unwrap();
        mgr.submit_batch(batch(1000, 7000)).unwrap();
        mgr.stop(PATIENCE).unwrap();
    }
    // The moment of the count is a race: a few tries, each on a fresh copy.
    for attempt in 0..4 {
        let d = tmp.path().join(format!("d{attempt}"));
        std::fs::create_dir(&d).unwrap();
        for e in std::fs::read_dir(&base).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), d.join(e.file_name())).unwrap();
        }
        let r = fibflow(&[
            "demo",
            "--dir",
            s(&d),
            "--tasks",
            "10",
            "--durability",
            "os",
            "--json",
        ]);
        let v = demo_json(&r, 10);
        assert_eq!(uint(&v, "preexisting"), 6010, "{v}");
        let (ins, after) = inspect_counts(&d);
        let reported = by_status(&v);
        assert_eq!(
            reported, after,
            "attempt {attempt}: demo reported by_status {reported:?}, the directory it left holds {after:?}: {v}\n{ins}"
        );
    }
}

// ---------------------------------------------------------------------------
// crash-test
// ---------------------------------------------------------------------------

#[test]
fn crash_test_small_runs_pass_with_every_durability() {
    for (dur, kills, seed) in [("os", "1", "5"), ("batched", "2", "9")] {
        let r = fibflow(&[
            "crash-test",
            "--kills",
            kills,
            "--tasks",
            "15",
            "--seed",
            seed,
            "--durability",
            dur,
            "--json",
        ]);
        let v = one_json_line(&r);
        assert_eq!(field(&v, "ok"), &Value::Bool(true), "{v}");
        assert_eq!(string(&v, "durability"), dur, "{v}");
        assert_eq!(uint(&v, "seed"), seed.parse::<u64>().unwrap(), "{v}");
        let kills = kills.parse::<u64>().unwrap();
        assert_eq!(uint(&v, "kills"), kills, "{v}");
        // Rounds: the kills, those that finished first, and the final run;
        // one reopen after each.
        let rounds = uint(&v, "rounds");
        assert!(rounds > kills, "{v}");
        assert_eq!(
            field(&v, "recovery_ms").as_array().unwrap().len() as u64,
            rounds,
            "{v}"
        );
        for k in [
            "completed",
            "tasks_in_dir",
            "acked_submissions",
            "acked_completions",
        ] {
            assert_eq!(uint(&v, k), 15, "{k}: {v}");
        }
        assert!(field(&v, "dir").is_null(), "{v}");
    }
    // A one-task run.
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("ct");
    let r = fibflow(&[
        "crash-test",
        "--dir",
        s(&d),
        "--tasks",
        "1",
        "--kills",
        "1",
        "--json",
    ]);
    let v = one_json_line(&r);
    assert_eq!(field(&v, "ok"), &Value::Bool(true), "{v}");
    let (_, counts) = inspect_counts(&d.join("log"));
    assert_eq!(counts["completed"], 1);
    assert_eq!(total(&counts), 1);
    // An existing empty --dir is accepted.
    let e = tmp.path().join("empty");
    std::fs::create_dir(&e).unwrap();
    let r = fibflow(&[
        "crash-test",
        "--dir",
        s(&e),
        "--tasks",
        "3",
        "--kills",
        "0",
        "--json",
    ]);
    assert_eq!(field(&one_json_line(&r), "ok"), &Value::Bool(true));
}

#[test]
fn crash_test_environment_overrides_that_are_not_numbers_are_refused() {
    for var in ["FIBFLOW_CRASH_ITERS", "FIBFLOW_CRASH_SEED"] {
        for value in ["abc", "-1", "", "18446744073709551616"] {
            let r = fibflow_env(
                &["crash-test", "--tasks", "3", "--kills", "1"],
                &[(var, value)],
                None,
            );
            r.expect_code(2);
            assert!(r.stderr.contains(var), "{}: {}", r.what, r.stderr);
            assert!(r.stdout.trim().is_empty(), "{}: {}", r.what, r.stdout);
        }
    }
    // A valid override wins over --kills, and the JSON says how many happened.
    let r = fibflow_env(
        &["crash-test", "--tasks", "10", "--kills", "3", "--json"],
        &[("FIBFLOW_CRASH_ITERS", " 1 ")],
        None,
    );
    let v = one_json_line(&r);
    assert_eq!(uint(&v, "kills"), 1, "{v}");
    assert_eq!(uint(&v, "completed"), 10, "{v}");
}

/// Fixed in session 16 (the test failed before the fix): `FIBFLOW_CRASH_ITERS=4294967296` (2^32) is taken by the harness as 0
/// kills (src/crash_test.rs:813 `n as u32` truncates), while the CLI's
/// workload reads it as "not a u32" and falls back to `--kills`
/// (src/cli/crash.rs:61-66 `effective_kills`), so the final run submits only
/// `M·1/(kills+1)` tasks: `ok: false`, exit 1, with an empty `problems` list,
/// for a log that lost nothing. Either refuse the value (exit 2, like "abc")
/// or agree on it.
#[test]
fn crash_test_iters_override_beyond_u32_is_refused_or_honoured() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("ct");
    let r = fibflow_env(
        &[
            "crash-test",
            "--dir",
            s(&d),
            "--tasks",
            "20",
            "--kills",
            "1",
            "--json",
        ],
        &[("FIBFLOW_CRASH_ITERS", "4294967296")],
        None,
    );
    if r.code == Some(2) {
        assert!(r.stderr.contains("FIBFLOW_CRASH_ITERS"), "{}", r.stderr);
        return;
    }
    let v = r.json();
    assert!(
        r.code == Some(0) && field(&v, "ok") == &Value::Bool(true),
        "FIBFLOW_CRASH_ITERS=4294967296 made a clean log fail: exit {:?}: {v}",
        r.code
    );
    assert_eq!(uint(&v, "completed"), 20, "{v}");
}

// ---------------------------------------------------------------------------
// SIGKILL
// ---------------------------------------------------------------------------

/// `demo --dir D --durability batched` killed twice at random points of its
/// log (the second time while resuming), inspected in between, then a shorter
/// run and a full run: a completed task never goes back, a task found once is
/// never lost, and the full run ends with exactly N tasks, all completed.
#[test]
fn demo_killed_twice_while_resuming_loses_nothing_it_had() {
    const N: u64 = 5000;
    let n = N.to_string();
    let seed = seed();
    eprintln!("seed {seed} (FIBFLOW_CLI_EDGES_SEED={seed} repeats it)");
    let mut rng = XorShift::new(seed);
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("d");
    let args = [
        "demo",
        "--dir",
        s(&d),
        "--tasks",
        &n,
        "--durability",
        "batched",
        "--json",
    ];

    let mut before: Option<(u64, u64)> = None;
    let mut kills = 0;
    for round in 0..6 {
        // Kill once the log has grown past a random point beyond what it had.
        let base = std::fs::metadata(d.join(SEG0)).map_or(0, |_| {
            let (v, _) = inspect_counts(&d);
            field(&v, "last_lsn").as_u64().unwrap_or(0)
        });
        let at = base + 64 + rng.below(if round < 4 { 400_000 } else { 4096 });
        let mut demo = Running::spawn(&args);
        until("the log grows past the kill point", || {
            written_past(&d, at) || demo.exited().is_some()
        });
        let status = demo.kill9();
        if status.signal() == Some(9) {
            kills += 1;
        } else {
            assert_eq!(status.code(), Some(0), "{} failed", demo.what);
        }
        let (ins, counts) = inspect_counts(&d);
        let found = total(&counts);
        assert!(found <= N, "more tasks than submitted: {ins}");
        if let Some((had, done)) = before {
            assert!(found >= had, "tasks lost: {had} -> {found}: {ins}");
            assert!(
                counts["completed"] >= done,
                "completed tasks went back: {done} -> {}: {ins}",
                counts["completed"]
            );
        }
        before = Some((found, counts["completed"]));
        verify_ok(&d);
        if kills == 2 {
            break;
        }
    }

    // A shorter run finishes its tasks and whatever it resumes.
    let r = fibflow(&[
        "demo",
        "--dir",
        s(&d),
        "--tasks",
        "100",
        "--durability",
        "batched",
        "--json",
    ]);
    let v = demo_json(&r, 100);
    assert_eq!(uint(&v, "completed"), 100, "{v}");
    let (had, _) = before.unwrap();
    assert_eq!(uint(&v, "preexisting"), had, "{v}");
    assert!(total(&by_status(&v)) >= had, "{v}");

    let r = fibflow(&args);
    let v = demo_json(&r, N);
    assert_eq!(uint(&v, "completed"), N, "{v}");
    assert_eq!(uint(&v, "failed"), 0, "{v}");
    let counts = by_status(&v);
    assert_eq!(total(&counts), N, "a task was submitted twice: {v}");
    assert_eq!(counts["completed"], N, "{v}");
    let (_, ins) = inspect_counts(&d);
    assert_eq!(ins, counts);
}

/// Pids of the live children of `pid` (from /proc).
fn children_of(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let Ok(p) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Some((ppid, state)) = stat(p) {
            if ppid == pid && state != 'Z' {
                out.push(p);
            }
        }
    }
    out
}

/// (parent pid, state) of `pid`.
fn stat(pid: u32) -> Option<(u32, char)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 2..];
    let mut it = rest.split_whitespace();
    let state = it.next()?.chars().next()?;
    let ppid = it.next()?.parse().ok()?;
    Some((ppid, state))
}

fn alive(pid: u32) -> bool {
    stat(pid).is_some_and(|(_, st)| st != 'Z' && st != 'X')
}

/// The `crash-test` parent killed with SIGKILL while a child works on the
/// log: the orphan must not keep the directory locked forever, and the log it
/// leaves opens, verifies, and is finished by `demo` with the same task kinds.
#[test]
fn a_killed_crash_test_parent_leaves_a_usable_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("ct");
    let args = [
        "crash-test",
        "--dir",
        s(&p),
        "--kills",
        "3",
        "--tasks",
        "6000",
        "--seed",
        "2",
        "--json",
    ];
    let mut parent = Running::spawn(&args);
    let pid = parent.child.id();
    let mut kids = Vec::new();
    until("a child working on the log", || {
        if parent.exited().is_some() {
            return true;
        }
        kids = children_of(pid);
        !kids.is_empty() && written_past(&p.join("log"), 4096)
    });
    let status = parent.kill9();
    assert!(
        status.signal() == Some(9),
        "the crash test ended before it was killed: {status:?}"
    );
    until("the orphaned child exits", || {
        kids.iter().all(|&k| !alive(k))
    });
    let log = p.join("log");
    let (ins, counts) = inspect_counts(&log);
    assert!(total(&counts) <= 6000, "{ins}");
    assert_eq!(counts["permanently_failed"], 0, "{ins}");
    verify_ok(&log);
    // The same pipeline (seed 2) finished by demo: exactly 6000 tasks.
    let r = fibflow(&[
        "demo",
        "--dir",
        s(&log),
        "--tasks",
        "6000",
        "--seed",
        "2",
        "--json",
    ]);
    let v = demo_json(&r, 6000);
    assert_eq!(uint(&v, "completed"), 6000, "{v}");
    assert_eq!(total(&by_status(&v)), 6000, "{v}");
    // And crash-test refuses the now non-empty directory.
    refused(&["crash-test", "--dir", s(&p), "--tasks", "3"], "not empty");
}
