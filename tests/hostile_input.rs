//! Hostile and extreme input through the public API and the `fibflow` binary.
//!
//! Every call below gets an empty, whitespace, huge, unicode, control-character,
//! out-of-range or otherwise odd value and must return `Ok` or a typed `Err`
//! (never panic, never hang); a refused call must change nothing (task counts,
//! events, and for a directory-backed manager, what a reopen shows). SPEC §13.
//!
//! `mod found_bugs` and `mod sealed_log` at the end hold the bugs this file
//! found, since fixed (each doc comment describes the old behaviour).

mod common;

use common::{eventually, proptest_cases, Gate, PATIENCE};
use fibflow::{
    AttemptFilter, Backoff, ChildSpec, ContextError, Error, EventFilter, EventType, HandlerOptions,
    ManualClock, Outcome, Page, Pool, Progress, RetentionPolicy, RetryStrategy, SubmitOptions,
    TaskContext, TaskFilter, TaskId, TaskManager, TaskStatus, TimeZone,
};
use proptest::prelude::*;
use serde_json::{json, Value};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const T0: u64 = 1_700_000_000_000;

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// A memory manager on a manual clock standing at `T0`.
fn manual() -> (TaskManager, Arc<ManualClock>) {
    let clock = ManualClock::new(T0);
    let mgr = TaskManager::builder()
        .memory()
        .clock(clock.clone())
        .max_concurrent_tasks(2)
        .build()
        .unwrap();
    (mgr, clock)
}

/// Tasks in all statuses.
fn total(mgr: &TaskManager) -> u64 {
    mgr.count_by_status().values().sum()
}

/// What a reopen must reproduce: every task with its status, stage, payload,
/// result, error and number of events and attempts, in id order.
type Print = Vec<(
    u64,
    String,
    TaskStatus,
    u32,
    Value,
    Option<Value>,
    Option<String>,
    usize,
    usize,
)>;

fn fingerprint(mgr: &TaskManager) -> Print {
    let mut v: Print = mgr
        .list_tasks(&TaskFilter::all())
        .into_iter()
        .map(|t| {
            (
                t.id.0,
                t.name.to_string(),
                t.status,
                t.stage,
                t.payload.clone(),
                t.result.clone(),
                t.error.clone(),
                mgr.events(t.id).unwrap().len(),
                mgr.attempts(t.id).unwrap().len(),
            )
        })
        .collect();
    v.sort_by_key(|r| r.0);
    v
}

/// Asserts that a refused call is a typed error with a message.
#[track_caller]
fn refused<T: std::fmt::Debug>(what: &str, r: fibflow::Result<T>) -> Error {
    match r {
        Ok(v) => panic!("{what}: accepted ({v:?}) but should be refused"),
        Err(e) => {
            assert!(!e.to_string().trim().is_empty(), "{what}: empty message");
            e
        }
    }
}

/// Runs `f` on its own thread and fails (instead of hanging the test binary)
/// if it does not return within `PATIENCE`; a panic inside is re-raised.
fn within<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    within_for(PATIENCE, what, f)
}

/// [`within`] with a limit of its own.
fn within_for<T: Send + 'static>(
    limit: Duration,
    what: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)));
    });
    match rx.recv_timeout(limit) {
        Ok(Ok(v)) => v,
        Ok(Err(panic)) => std::panic::resume_unwind(panic),
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => panic!("{what}: hung for {limit:?}"),
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => panic!("{what}: thread lost"),
    }
}

/// `TaskManager::open`, retried while the directory is locked (see
/// `common::build_unlocked`: this file's CLI tests spawn processes).
fn open_dir(dir: &std::path::Path) -> fibflow::Result<TaskManager> {
    common::build_unlocked(TaskManager::builder().dir(dir))
}

/// A JSON value nested `depth` arrays deep.
fn nested(depth: usize) -> Value {
    let mut v = json!(0);
    for _ in 0..depth {
        v = Value::Array(vec![v]);
    }
    v
}

fn ok_handler(_: &TaskContext) -> fibflow::HandlerResult {
    Ok(json!("ok").into())
}

fn failing(_: &TaskContext) -> fibflow::HandlerResult {
    Err("boom".into())
}

/// Odd strings that are still non-empty after trimming.
fn odd_names() -> Vec<String> {
    vec![
        "x".repeat(100_000),
        "名前🚀\u{200d}".to_owned(),
        "ctl\u{1}\u{7}\u{1b}[31m\u{7f}".to_owned(),
        "nul\0mid".to_owned(),
        "\0".to_owned(),
        " padded ".to_owned(),
        "new\nline".to_owned(),
        "\u{202e}rtl".to_owned(),
        "a,b c\td".to_owned(),
        "%s%n{}{0}".to_owned(),
    ]
}

/// Strings that are empty after trimming.
fn blank_names() -> Vec<&'static str> {
    vec!["", " ", "\t\n\r", "\u{a0}\u{2003}\u{3000}"]
}

// ---------------------------------------------------------------------------
// Names and tags
// ---------------------------------------------------------------------------

#[test]
fn blank_handler_names_are_refused_everywhere_and_change_nothing() {
    let (mgr, _) = manual();
    mgr.register("real", ok_handler).unwrap();
    mgr.submit("real", json!(1)).unwrap();
    let before = fingerprint(&mgr);
    for name in blank_names() {
        assert!(matches!(
            refused("register blank", mgr.register(name, ok_handler)),
            Error::EmptyName
        ));
        assert!(matches!(
            refused("submit blank", mgr.submit(name, json!(null))),
            Error::EmptyName
        ));
        refused("task_info blank", mgr.task_info(name));
        let batch = vec![
            ("real".to_owned(), json!(2), SubmitOptions::new()),
            (name.to_owned(), json!(3), SubmitOptions::new()),
        ];
        refused("submit_batch with a blank name", mgr.submit_batch(batch));
        let many = vec![
            (
                "fine".to_owned(),
                fibflow::Handler::sync(ok_handler),
                HandlerOptions::new(),
            ),
            (
                name.to_owned(),
                fibflow::Handler::sync(ok_handler),
                HandlerOptions::new(),
            ),
        ];
        refused("register_many with a blank name", mgr.register_many(many));
        assert_eq!(mgr.unregister(&[name]), 0);
    }
    assert_eq!(mgr.handler_names(), vec!["real".to_owned()]);
    assert_eq!(fingerprint(&mgr), before);
    assert!(matches!(
        refused("unregistered", mgr.submit("nope", json!(null))),
        Error::NoHandler(n) if n == "nope"
    ));
    assert_eq!(fingerprint(&mgr), before);
}

#[test]
fn odd_handler_names_work_end_to_end_and_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let names = odd_names();
    let mut ids = Vec::new();
    {
        let mgr = open_dir(dir.path()).unwrap();
        for n in &names {
            mgr.register_with(n, HandlerOptions::new().description(n.clone()), ok_handler)
                .unwrap();
            assert_eq!(mgr.task_info(n).unwrap().description.as_deref(), Some(&**n));
        }
        mgr.start().unwrap();
        for n in &names {
            ids.push(mgr.submit(n, json!({ "name": n })).unwrap());
        }
        for id in &ids {
            assert_eq!(
                mgr.wait(*id, PATIENCE).unwrap().status,
                TaskStatus::Completed
            );
        }
        // Trimming is not applied to lookups: a name with spaces is its own name.
        refused("trimmed lookup", mgr.submit("padded", json!(null)));
        let before = fingerprint(&mgr);
        mgr.stop(PATIENCE).unwrap();
        drop(mgr);
        let again = open_dir(dir.path()).unwrap();
        assert_eq!(fingerprint(&again), before);
        for (id, n) in ids.iter().zip(&names) {
            assert_eq!(&*again.get_task(*id).unwrap().name, n.as_str());
        }
        assert_eq!(
            again.list_tasks(&TaskFilter::all().name("nul\0mid")).len(),
            1
        );
    }
}

#[test]
fn capability_tags_are_checked_at_every_entry_point() {
    let bad = ["", " ", "a b", "a,b", "\t", "gpu\n", "\u{a0}", "x\u{2028}y"];
    let (mgr, _) = manual();
    mgr.register("h", ok_handler).unwrap();
    mgr.submit("h", json!(null)).unwrap();
    let before = fingerprint(&mgr);
    for t in bad {
        assert!(
            matches!(
                refused(
                    "handler requires",
                    mgr.register_with("bad", HandlerOptions::new().requires([t]), ok_handler)
                ),
                Error::InvalidTag(_)
            ),
            "{t:?}"
        );
        assert!(matches!(
            refused(
                "submit requires",
                mgr.submit_with("h", json!(null), SubmitOptions::new().requires([t]))
            ),
            Error::InvalidTag(_)
        ));
        let built = TaskManager::builder()
            .memory()
            .pool(Pool::new("p").tags(["ok", t]))
            .build();
        assert!(matches!(refused("pool tag", built), Error::InvalidTag(_)));
    }
    assert!(mgr.task_info("bad").is_err());
    assert_eq!(fingerprint(&mgr), before);
    // Odd but valid tags: accepted; with no pool that has them the task waits
    // and says why.
    for t in ["gpu🚀", "nul\0", "ctl\u{1}", &"t".repeat(10_000)] {
        let id = mgr
            .submit_with("h", json!(null), SubmitOptions::new().requires([t, t]))
            .unwrap();
        let task = mgr.get_task(id).unwrap();
        assert_eq!(task.requires, vec![t.to_owned()]);
        let why = mgr.waiting_reason(id).unwrap().unwrap();
        assert!(why.contains("no worker pool"), "{why}");
    }
}

#[test]
fn task_tags_and_dedup_keys_with_odd_text() {
    let (mgr, _) = manual();
    mgr.register("h", ok_handler).unwrap();
    let before = total(&mgr);
    assert!(matches!(
        refused(
            "empty task tag",
            mgr.submit_with("h", json!(null), SubmitOptions::new().tag(""))
        ),
        Error::InvalidTag(_)
    ));
    assert_eq!(total(&mgr), before);
    for odd in odd_names()
        .into_iter()
        .chain([String::new(), " ".to_owned()])
    {
        let tagged = (!odd.is_empty()).then(|| {
            mgr.submit_with("h", json!(null), SubmitOptions::new().tag(odd.clone()))
                .unwrap()
        });
        if let Some(id) = tagged {
            let found = mgr.list_tasks(&TaskFilter::all().tag(odd.clone()));
            assert!(found.iter().any(|t| t.id == id));
            assert!(mgr
                .stats_by_tag(None)
                .keys()
                .any(|k| k.0.as_ref() == Some(&odd)));
        }
        let a = mgr
            .submit_with("h", json!(1), SubmitOptions::new().dedup_key(odd.clone()))
            .unwrap();
        let b = mgr
            .submit_with("h", json!(2), SubmitOptions::new().dedup_key(odd.clone()))
            .unwrap();
        assert_eq!(a, b, "dedup key {odd:?}");
    }
}

// ---------------------------------------------------------------------------
// SubmitOptions extremes
// ---------------------------------------------------------------------------

fn run_at_values() -> Vec<SystemTime> {
    let mut v = vec![UNIX_EPOCH, SystemTime::now()];
    for back in [1, 1_000, 1 << 40] {
        if let Some(t) = UNIX_EPOCH.checked_sub(Duration::from_secs(back)) {
            v.push(t);
        }
    }
    for ahead in [1 << 32, 1 << 40, 1 << 52, i64::MAX as u64, u64::MAX] {
        if let Some(t) = UNIX_EPOCH.checked_add(Duration::from_secs(ahead)) {
            v.push(t);
        }
    }
    v
}

fn durations() -> Vec<Duration> {
    vec![
        Duration::ZERO,
        Duration::from_nanos(1),
        Duration::from_millis(1),
        Duration::from_secs(1 << 40),
        Duration::from_secs(u64::MAX),
        Duration::MAX,
    ]
}

#[test]
fn submit_option_extremes_are_accepted_sanely_or_refused() {
    let (mgr, clock) = manual();
    let runs = Arc::new(AtomicUsize::new(0));
    let r = runs.clone();
    mgr.register("h", move |_| {
        r.fetch_add(1, Ordering::SeqCst);
        Ok(json!(null).into())
    })
    .unwrap();
    let mut due_now = Vec::new();
    let mut later = Vec::new();
    for d in durations() {
        let id = mgr
            .submit_with("h", json!(null), SubmitOptions::new().delay(d))
            .unwrap();
        let t = mgr.get_task(id).unwrap();
        assert!(t.next_run_time >= T0, "delay {d:?}");
        if d.is_zero() {
            due_now.push(id);
        } else {
            later.push(id);
        }
    }
    for at in run_at_values() {
        let id = mgr
            .submit_with(
                "h",
                json!(null),
                SubmitOptions::new().run_at(at).delay(Duration::MAX),
            )
            .unwrap();
        let t = mgr.get_task(id).unwrap();
        // Rounded up to the millisecond: never earlier than asked.
        let want = at.duration_since(UNIX_EPOCH).map_or(0, |d| {
            u64::try_from(d.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX)
        });
        assert_eq!(t.next_run_time, want, "run_at {at:?} overrides delay");
        if want <= T0 {
            due_now.push(id);
        } else {
            later.push(id);
        }
        assert!(mgr.waiting_reason(id).unwrap().is_some());
    }
    for p in [i32::MIN, -1, 0, i32::MAX] {
        for d in durations() {
            for n in [0, 1, u32::MAX] {
                let o = SubmitOptions::new()
                    .priority(p)
                    .timeout(d)
                    .retry_interval(d)
                    .max_retries(n);
                let id = mgr.submit_with("h", json!(null), o).unwrap();
                let t = mgr.get_task(id).unwrap();
                assert_eq!((t.priority, t.max_retries), (p, n));
                due_now.push(id);
            }
        }
    }
    mgr.start().unwrap();
    for id in &due_now {
        assert_eq!(
            mgr.wait(*id, PATIENCE).unwrap().status,
            TaskStatus::Completed
        );
    }
    // Moving the clock a long way runs what became due and nothing breaks.
    clock.advance(Duration::from_secs(1 << 33));
    for id in &later {
        let t = mgr.get_task(*id).unwrap();
        if t.next_run_time <= T0 + (1 << 33) * 1000 {
            assert_eq!(
                mgr.wait(*id, PATIENCE).unwrap().status,
                TaskStatus::Completed
            );
        } else {
            assert_eq!(t.status, TaskStatus::Pending);
        }
    }
    mgr.stop(PATIENCE).unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(proptest_cases(48)))]

    /// Any combination of submit options: accepted with the values asked for,
    /// or refused with nothing created; a due task then runs.
    #[test]
    fn random_submit_options_never_panic(
        delay_ms in prop::option::of(prop_oneof![Just(u64::MAX), any::<u64>(), 0..10_000u64]),
        run_at_s in prop::option::of(prop_oneof![any::<i64>(), -10i64..10, Just(i64::MIN), Just(i64::MAX)]),
        priority in prop::option::of(any::<i32>()),
        timeout_ms in prop::option::of(any::<u64>()),
        max_retries in prop::option::of(any::<u32>()),
        retry_ms in prop::option::of(any::<u64>()),
        tag in prop::option::of("\\PC{0,8}"),
        requires in prop::collection::vec("[a-z ,\t]{0,4}", 0..3),
        dedup in prop::option::of("\\PC{0,4}"),
    ) {
        let (mgr, _) = manual();
        mgr.register("h", ok_handler).unwrap();
        let mut o = SubmitOptions::new();
        o.delay = delay_ms.map(Duration::from_millis);
        o.run_at = run_at_s.and_then(|s| {
            if s >= 0 {
                UNIX_EPOCH.checked_add(Duration::from_secs(s.unsigned_abs()))
            } else {
                UNIX_EPOCH.checked_sub(Duration::from_secs(s.unsigned_abs()))
            }
        });
        o.priority = priority;
        o.timeout = timeout_ms.map(Duration::from_millis);
        o.max_retries = max_retries;
        o.retry_interval = retry_ms.map(Duration::from_millis);
        o.tag.clone_from(&tag);
        o.requires.clone_from(&requires);
        o.dedup_key = dedup;
        let bad_tag = tag.as_deref() == Some("");
        let bad_req = requires.iter().any(|t| t.is_empty() || t.contains([' ', ',', '\t']));
        match mgr.submit_with("h", json!({"p": priority}), o) {
            Ok(id) => {
                prop_assert!(!bad_tag && !bad_req, "accepted a bad tag: {:?} {:?}", tag, requires);
                let t = mgr.get_task(id).unwrap();
                prop_assert_eq!(t.priority, priority.unwrap_or(0));
                prop_assert_eq!(t.max_retries, max_retries.unwrap_or(3));
                if let Some(ms) = timeout_ms {
                    prop_assert_eq!(t.timeout_ms, ms);
                }
                prop_assert!(mgr.waiting_reason(id).unwrap().is_some());
                if t.next_run_time <= T0 && t.requires.is_empty() {
                    mgr.start().unwrap();
                    prop_assert_eq!(mgr.wait(id, PATIENCE).unwrap().status, TaskStatus::Completed);
                }
            }
            Err(e) => {
                prop_assert!(bad_tag || bad_req, "refused good options: {}", e);
                prop_assert!(matches!(e, Error::InvalidTag(_)), "{:?}", e);
                prop_assert_eq!(total(&mgr), 0);
            }
        }
        mgr.stop(PATIENCE).unwrap();
    }

    /// A batch with one bad item creates nothing.
    #[test]
    fn submit_batch_is_all_or_nothing(
        items in prop::collection::vec((any::<bool>(), prop_oneof![Just(""), Just("h"), Just("nope"), Just(" ")]), 0..20),
    ) {
        let (mgr, _) = manual();
        mgr.register("h", ok_handler).unwrap();
        mgr.submit("h", json!("before")).unwrap();
        let before = fingerprint(&mgr);
        let batch: Vec<_> = items
            .iter()
            .map(|(bad_tag, name)| {
                let o = if *bad_tag { SubmitOptions::new().requires(["a b"]) } else { SubmitOptions::new() };
                ((*name).to_owned(), json!(null), o)
            })
            .collect();
        let all_good = items.iter().all(|(b, n)| !b && *n == "h");
        match mgr.submit_batch(batch) {
            Ok(ids) => {
                prop_assert!(all_good);
                prop_assert_eq!(ids.len(), items.len());
                prop_assert_eq!(total(&mgr), 1 + items.len() as u64);
            }
            Err(_) => {
                prop_assert!(!all_good);
                prop_assert_eq!(fingerprint(&mgr), before);
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Payloads
// ---------------------------------------------------------------------------

fn odd_payloads() -> Vec<Value> {
    vec![
        json!(null),
        json!(u64::MAX),
        json!(i64::MIN),
        json!(f64::MAX),
        json!(f64::MIN_POSITIVE),
        json!(5e-324),
        json!(1e308),
        json!(""),
        json!("\0\u{1}\u{ffff}\u{10ffff}🚀 \\ \" '"),
        json!({ "": "", "\0": [null, true, false], "🚀": {} }),
        json!([[], {}, [[]], [{}]]),
        nested(100),
        json!({ "k": "v".repeat(1 << 20) }),
        Value::Array((0..10_000).map(|i| json!(i)).collect()),
    ]
}

#[test]
fn odd_payloads_round_trip_through_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let mgr = open_dir(dir.path()).unwrap();
    mgr.register("echo", |ctx| Ok(ctx.payload().clone().into()))
        .unwrap();
    mgr.start().unwrap();
    let mut ids = Vec::new();
    for p in odd_payloads() {
        let id = mgr.submit("echo", p.clone()).unwrap();
        let t = mgr.wait(id, PATIENCE).unwrap();
        assert_eq!(t.result.as_ref(), Some(&p));
        ids.push((id, p));
    }
    let before = fingerprint(&mgr);
    mgr.stop(PATIENCE).unwrap();
    drop(mgr);
    let again = open_dir(dir.path()).unwrap();
    assert_eq!(fingerprint(&again), before);
    for (id, p) in ids {
        assert_eq!(again.get_task(id).unwrap().payload, p);
    }
    // Through a snapshot too.
    again.compact().unwrap();
    drop(again);
    let third = open_dir(dir.path()).unwrap();
    assert_eq!(fingerprint(&third), before);
}

#[test]
fn a_payload_too_large_for_the_log_is_refused_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mgr = open_dir(dir.path()).unwrap();
    mgr.register("h", ok_handler).unwrap();
    let first = mgr.submit("h", json!(1)).unwrap();
    let before = fingerprint(&mgr);
    let huge = json!("x".repeat(17 << 20));
    let e = refused("huge payload", mgr.submit("h", huge.clone()));
    assert!(e.to_string().contains("exceeds"), "{e}");
    refused(
        "huge payload alone in a batch",
        mgr.submit_batch(vec![("h".to_owned(), huge, SubmitOptions::new())]),
    );
    // Nothing changed, and the log still takes writes.
    assert_eq!(fingerprint(&mgr), before);
    let id = mgr.submit("h", json!(3)).unwrap();
    mgr.start().unwrap();
    // Both: a task still running when the fingerprint is taken would finish
    // during the graceful stop, and reopen completed (seen under load).
    mgr.wait(first, PATIENCE).unwrap();
    mgr.wait(id, PATIENCE).unwrap();
    let before = fingerprint(&mgr);
    mgr.stop(PATIENCE).unwrap();
    drop(mgr);
    assert_eq!(fingerprint(&open_dir(dir.path()).unwrap()), before);
}

#[test]
fn a_huge_result_fails_the_attempt_instead_of_breaking_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let mgr = open_dir(dir.path()).unwrap();
    mgr.register_with("big", HandlerOptions::new().max_retries(1), |_| {
        Ok(json!("y".repeat(17 << 20)).into())
    })
    .unwrap();
    mgr.start().unwrap();
    let id = mgr.submit("big", json!(null)).unwrap();
    let t = mgr.wait(id, PATIENCE).unwrap();
    assert_eq!(t.status, TaskStatus::PermanentlyFailed);
    assert!(t.error.unwrap().contains("too large"));
    let before = fingerprint(&mgr);
    mgr.stop(PATIENCE).unwrap();
    drop(mgr);
    assert_eq!(fingerprint(&open_dir(dir.path()).unwrap()), before);
}

// ---------------------------------------------------------------------------
// Cron expressions and time zones
// ---------------------------------------------------------------------------

#[test]
fn cron_table_of_odd_expressions() {
    let (mgr, _) = manual();
    mgr.register("c", ok_handler).unwrap();
    let refused_exprs = [
        "",
        " ",
        "* * * *",
        "* * * * * * *",
        "* * * * * * * * * *",
        "@daily",
        "@reboot",
        "60 * * * *",
        "* 24 * * *",
        "* * 0 * *",
        "* * 32 * *",
        "* * * 13 *",
        "* * * * 8",
        "*/0 * * * *",
        "*/99999999999999999999 * * * *",
        "1-99999999999999999999 * * * *",
        "4294967296 * * * *",
        "18446744073709551616 * * * *",
        "-1 * * * *",
        "5-2 * * * *",
        "0 0 15W * *",
        "0 0 LW * *",
        "0 0 W * *",
        "0 0 1W,2 * *",
        "0 0 * * L",
        "0 0 5L * *",
        "0 0 * * 8L",
        "0 0 * * 1#0",
        "0 0 * * 1#6",
        "0 0 * * +MON",
        "0 0 * * MONDAY",
        "0 0 * FOO *",
        "٣ * * * *",
        "０ * * * *",
        "*\0 * * * *",
        "0 0 30 2 *",
        "0 0 31 4 *",
        "0 0 0 31 2 *",
        "- * * * *",
        "/ * * * *",
        "*/ * * * *",
        "0 0 1 1 * 2030",
    ];
    for expr in refused_exprs {
        let before = total(&mgr);
        let started = std::time::Instant::now();
        let e = refused(
            expr,
            mgr.submit_with("c", json!(null), SubmitOptions::new().cron(expr)),
        );
        assert!(
            matches!(e, Error::Schedule(_) | Error::InvalidOption(_)),
            "{expr:?}: {e:?}"
        );
        assert!(e.to_string().contains(expr.trim()), "{expr:?}: {e}");
        assert!(started.elapsed() < Duration::from_secs(10), "{expr:?} slow");
        assert_eq!(total(&mgr), before, "{expr:?}");
    }
    let accepted = [
        "* * * * *",
        "*/7 * * * * *",
        "0 0 L * *",
        "0 0 * * 5L",
        "0 0 * * FRIL",
        "0 0 * * 1#5",
        "0 0 29 2 *",
        "0 0 29 2 1",
        "0 0 ? * mon-sun",
        "0 0 * jan-dec/3 sun-sat",
        "  0\t0 \n * * *  ",
        "0-59/1 0-23 1-31 1-12 0-7",
        "59 59 23 31 12 *",
    ];
    for expr in accepted {
        let id = mgr
            .submit_with("c", json!(null), SubmitOptions::new().cron(expr))
            .unwrap_or_else(|e| panic!("{expr:?}: {e}"));
        let t = mgr.get_task(id).unwrap();
        assert!(
            t.next_run_time > T0 && t.next_run_time % 1000 == 0,
            "{expr:?}"
        );
        assert_eq!(t.cron.as_deref(), Some(expr));
    }
}

#[test]
fn cron_at_the_end_of_time_is_refused() {
    let clock = ManualClock::new(u64::MAX - 1);
    let mgr = TaskManager::builder()
        .memory()
        .clock(clock.clone())
        .build()
        .unwrap();
    mgr.register("c", ok_handler).unwrap();
    let e = refused(
        "cron with no future",
        mgr.submit_with("c", json!(null), SubmitOptions::new().cron("* * * * *")),
    );
    assert!(e.to_string().contains("no future occurrence"), "{e}");
    assert_eq!(total(&mgr), 0);
    // Ordinary tasks at the end of time are fine.
    let id = mgr
        .submit_with(
            "c",
            json!(null),
            SubmitOptions::new().delay(Duration::from_secs(5)),
        )
        .unwrap();
    assert_eq!(mgr.get_task(id).unwrap().next_run_time, u64::MAX);
    mgr.start().unwrap();
    let now = mgr.submit("c", json!(null)).unwrap();
    assert_eq!(
        mgr.wait(now, PATIENCE).unwrap().status,
        TaskStatus::Completed
    );
    mgr.stop(PATIENCE).unwrap();
}

#[test]
fn time_zone_names_are_checked() {
    for bad in [
        "",
        " ",
        "\0",
        "../../etc/passwd",
        "Mars/Olympus",
        "utc\n",
        "UTC+25",
    ] {
        assert!(TimeZone::from_name(bad).is_err(), "{bad:?}");
    }
    for good in [
        "local",
        "LOCAL",
        " UTC ",
        "Europe/Paris",
        "Pacific/Kiritimati",
    ] {
        let tz = TimeZone::from_name(good).unwrap();
        let mgr = TaskManager::builder()
            .memory()
            .time_zone(tz)
            .build()
            .unwrap();
        mgr.register("c", ok_handler).unwrap();
        mgr.submit_with("c", json!(null), SubmitOptions::new().cron("0 2 * * *"))
            .unwrap();
    }
}

fn cron_field() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("*".to_owned()),
        Just("?".to_owned()),
        Just("L".to_owned()),
        "[0-9]{1,3}",
        "[0-9]{1,2}-[0-9]{1,3}",
        "\\*/[0-9]{1,4}",
        "[0-9]{1,2}-[0-9]{1,2}/[0-9]{1,3}",
        "[0-9]{1,2}(,[0-9]{1,2}){1,3}",
        "[0-9]L",
        "[0-9]{1,2}W",
        "[0-9]#[0-9]",
        "(MON|FRI|SUN|JAN|DEC|FOO|mon)(-(MON|SUN|TUE|sat))?",
        "[0-9LW#?*,/-]{1,6}",
        "\\PC{1,3}",
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(proptest_cases(256)))]

    /// Any cron-like text: parse never panics, a parsed schedule answers
    /// strictly later whole seconds, and submitting it is accepted exactly
    /// when it parses and has a future occurrence.
    #[test]
    fn random_cron_expressions_never_panic(
        fields in prop::collection::vec(cron_field(), 0..8),
        sep in prop_oneof![Just(" "), Just("  "), Just("\t")],
        after in prop_oneof![Just(0u64), Just(T0), Just(u64::MAX), any::<u64>(), 0..4_102_444_800_000u64],
    ) {
        let expr = fields.join(sep);
        // Empty list items are accepted and can make a schedule that matches
        // nothing take tens of seconds: see `found_bugs`.
        prop_assume!(!expr.split_whitespace().any(|f| f.split(',').any(str::is_empty)));
        let utc = TimeZone::from_name("UTC").unwrap();
        let parsed = fibflow::engine::schedule::CronSchedule::parse(&expr, utc);
        if let Ok(s) = &parsed {
            for t in [after, T0] {
                if let Some(next) = s.next_after(t) {
                    prop_assert!(next > t && next % 1000 == 0, "{} after {}: {}", expr, t, next);
                }
            }
        }
        let clock = ManualClock::new(T0);
        let mgr = TaskManager::builder().memory().clock(clock).time_zone(utc).build().unwrap();
        mgr.register("c", ok_handler).unwrap();
        let r = mgr.submit_with("c", json!(null), SubmitOptions::new().cron(expr.clone()));
        let has_future = parsed.as_ref().ok().and_then(|s| s.next_after(T0)).is_some();
        prop_assert_eq!(r.is_ok(), has_future, "{:?}: {:?}", expr, r);
        prop_assert_eq!(total(&mgr), u64::from(has_future));
    }
}

// ---------------------------------------------------------------------------
// Retry strategies
// ---------------------------------------------------------------------------

fn strategy(backoff: Backoff, base: Duration, cap: Option<Duration>, jitter: f64) -> RetryStrategy {
    RetryStrategy {
        backoff,
        base,
        cap,
        jitter,
    }
}

#[test]
fn retry_strategies_with_bad_jitter_are_refused_everywhere() {
    let (mgr, _) = manual();
    for j in [
        -0.1,
        1.000_001,
        f64::NAN,
        f64::INFINITY,
        f64::NEG_INFINITY,
        -f64::MIN_POSITIVE,
    ] {
        let s = strategy(Backoff::Exponential, Duration::from_secs(1), None, j);
        assert!(s.validate().is_err(), "{j}");
        assert!(matches!(
            refused(
                "handler strategy",
                mgr.register_with("r", HandlerOptions::new().retry(s), ok_handler)
            ),
            Error::Schedule(_)
        ));
        refused(
            "pool strategy",
            TaskManager::builder()
                .memory()
                .pool(Pool::new("p").retry_strategy(s))
                .build(),
        );
    }
    assert!(mgr.handler_names().is_empty());
}

#[test]
fn extreme_backoffs_retry_at_the_end_of_time_without_panicking() {
    let (mgr, clock) = manual();
    let cases = [
        strategy(Backoff::Fixed, Duration::ZERO, Some(Duration::ZERO), 0.0),
        strategy(Backoff::Exponential, Duration::ZERO, None, 1.0),
        strategy(Backoff::Linear, Duration::MAX, None, -0.0),
        strategy(
            Backoff::Exponential,
            Duration::MAX,
            Some(Duration::MAX),
            1.0,
        ),
        strategy(
            Backoff::Exponential,
            Duration::from_secs(1),
            Some(Duration::ZERO),
            0.5,
        ),
        strategy(Backoff::Linear, Duration::from_nanos(1), None, 0.0),
        strategy(
            Backoff::Exponential,
            Duration::from_secs(1 << 62),
            None,
            0.0,
        ),
    ];
    let mut ids = Vec::new();
    for (i, s) in cases.iter().enumerate() {
        let name = format!("r{i}");
        // Huge delays may have u32::MAX executions: they never come round.
        let far = s.delay(0, 0.0) >= Duration::from_secs(1 << 50);
        let n = if far { u32::MAX } else { 4 };
        mgr.register_with(
            &name,
            HandlerOptions::new().retry(*s).max_retries(n),
            failing,
        )
        .unwrap();
        ids.push((mgr.submit(&name, json!(i)).unwrap(), far));
    }
    // A huge fixed interval without a strategy.
    mgr.register_with(
        "fixed",
        HandlerOptions::new()
            .retry_interval(Duration::MAX)
            .max_retries(2),
        failing,
    )
    .unwrap();
    let fixed = mgr.submit("fixed", json!(null)).unwrap();
    mgr.start().unwrap();
    for (id, far) in ids {
        if far {
            eventually("a huge retry is scheduled far away", || {
                mgr.get_task(id).is_some_and(|t| {
                    t.status == TaskStatus::Failed && t.next_run_time > T0 + (1 << 49)
                })
            });
        } else {
            // Small delays: it retries as the clock moves, then gives up.
            eventually("it retries, then fails for good", || {
                clock.advance(Duration::from_secs(1));
                mgr.get_task(id)
                    .is_some_and(|t| t.status == TaskStatus::PermanentlyFailed)
            });
            assert_eq!(mgr.attempts(id).unwrap().len(), 4);
        }
    }
    eventually("the huge fixed interval is scheduled", || {
        mgr.get_task(fixed)
            .is_some_and(|t| t.status == TaskStatus::Failed && t.next_run_time == u64::MAX)
    });
    // Resuming a task that waits for its retry runs it now (with a fresh
    // retry count, so it waits for the far retry again).
    mgr.resume_task(fixed, Some("now")).unwrap();
    eventually("it ran again", || mgr.attempts(fixed).unwrap().len() == 2);
    eventually("and waits again", || {
        mgr.get_task(fixed)
            .is_some_and(|t| t.status == TaskStatus::Failed && t.next_run_time == u64::MAX)
    });
    mgr.stop(PATIENCE).unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(proptest_cases(256)))]

    #[test]
    fn retry_strategy_delay_never_panics(
        kind in 0..3usize,
        base in any::<u64>(),
        nanos in 0..1_000_000_000u32,
        cap in prop::option::of(any::<u64>()),
        jitter in prop_oneof![any::<f64>(), -1.0..2.0f64],
        retry in any::<u32>(),
        rand in any::<f64>(),
    ) {
        let backoff = [Backoff::Fixed, Backoff::Linear, Backoff::Exponential][kind];
        let s = strategy(backoff, Duration::new(base, nanos), cap.map(Duration::from_millis), jitter);
        let d = s.delay(retry, rand);
        if let Some(c) = s.cap {
            prop_assert!(d <= c);
        }
        prop_assert_eq!(s.validate().is_ok(), (0.0..=1.0).contains(&jitter));
    }
}

// ---------------------------------------------------------------------------
// Handler calls: progress and audit
// ---------------------------------------------------------------------------

#[test]
fn progress_and_audit_refuse_bad_input_and_record_only_what_they_accept() {
    let (mgr, _) = manual();
    let accepted = Arc::new(Mutex::new((0usize, 0usize)));
    let kept: Arc<Mutex<Option<TaskContext>>> = Arc::default();
    let (acc, keep) = (accepted.clone(), kept.clone());
    mgr.register("p", move |ctx| {
        let bad_progress = [
            Progress {
                percent: Some(101),
                ..Progress::default()
            },
            Progress {
                percent: Some(u8::MAX),
                ..Progress::default()
            },
            Progress {
                stage_name: Some(String::new()),
                ..Progress::default()
            },
            Progress {
                text: Some(" \t\n".into()),
                ..Progress::default()
            },
            Progress {
                metadata: Some(json!([1, 2])),
                ..Progress::default()
            },
            Progress {
                metadata: Some(json!("text")),
                ..Progress::default()
            },
            Progress {
                stage_name: Some("ok".into()),
                percent: Some(200),
                ..Progress::default()
            },
        ];
        for p in bad_progress {
            let r = ctx.progress(p.clone());
            assert!(matches!(r, Err(ContextError::Invalid(_))), "{p:?}: {r:?}");
        }
        let good_progress = [
            Progress::default(),
            Progress {
                percent: Some(0),
                ..Progress::default()
            },
            Progress {
                percent: Some(100),
                stage_name: Some("名前\0".into()),
                text: Some("t".repeat(100_000)),
                metadata: Some(json!({ "": nested(50), "\0": u64::MAX })),
            },
            Progress {
                metadata: Some(Value::Null),
                ..Progress::default()
            },
        ];
        for p in good_progress {
            ctx.progress(p).unwrap();
            acc.lock().unwrap().0 += 1;
        }
        let bad_audit: [(&str, Option<&str>, Option<Value>); 6] = [
            ("", None, None),
            (" \n", None, None),
            ("code", Some(""), None),
            ("code", Some("  "), None),
            ("code", None, Some(json!([]))),
            ("code", None, Some(json!(1.5))),
        ];
        for (c, m, md) in bad_audit {
            let r = ctx.audit(c, m, md.clone());
            assert!(
                matches!(r, Err(ContextError::Invalid(_))),
                "{c:?} {m:?} {md:?}"
            );
        }
        for (c, m, md) in [
            ("\0", None, None),
            (
                "c".repeat(100_000).as_str(),
                Some("m\u{1}"),
                Some(json!({})),
            ),
            ("🚀", Some("x"), Some(json!({ "code": "override?" }))),
        ] {
            ctx.audit(c, m, md).unwrap();
            acc.lock().unwrap().1 += 1;
        }
        *keep.lock().unwrap() = Some(ctx.clone());
        Ok(json!(null).into())
    })
    .unwrap();
    mgr.start().unwrap();
    let id = mgr.submit("p", json!(null)).unwrap();
    assert_eq!(
        mgr.wait(id, PATIENCE).unwrap().status,
        TaskStatus::Completed
    );
    let (progress, audits) = *accepted.lock().unwrap();
    let events = mgr.events(id).unwrap();
    let count = |ty| events.iter().filter(|e| e.event_type == ty).count();
    assert_eq!(count(EventType::Progress), progress);
    assert_eq!(count(EventType::Checkpoint), audits);
    // A context kept past its attempt is stale: refused, nothing recorded.
    let ctx = kept.lock().unwrap().take().unwrap();
    let r = ctx.progress(Progress {
        percent: Some(5),
        ..Progress::default()
    });
    assert!(
        matches!(
            r,
            Err(ContextError::Stale { .. } | ContextError::Invalid(_))
        ),
        "{r:?}"
    );
    assert!(ctx.audit("late", None, None).is_err());
    assert!(ctx.check().is_ok() || ctx.check().is_err());
    ctx.heartbeat();
    assert_eq!(mgr.events(id).unwrap().len(), events.len());
    mgr.stop(PATIENCE).unwrap();
    drop(mgr);
    // The manager is gone: the kept context says so.
    assert!(matches!(
        ctx.audit("gone", None, None),
        Err(ContextError::Closed)
    ));
    ctx.heartbeat();
}

// ---------------------------------------------------------------------------
// Queries, pages and filters
// ---------------------------------------------------------------------------

/// A manager with a small finished workflow, a few plain tasks and a failure.
fn populated() -> (TaskManager, TaskId) {
    let (mgr, _) = manual();
    mgr.register("leaf", ok_handler).unwrap();
    mgr.register_with("bad", HandlerOptions::new().max_retries(1), failing)
        .unwrap();
    mgr.register("root", |ctx| {
        if ctx.stage() == 0 {
            Ok(Outcome::spawn(
                (0..3)
                    .map(|i| ChildSpec::new("leaf", json!(i)).tag("kid"))
                    .collect(),
            ))
        } else {
            Ok(json!("done").into())
        }
    })
    .unwrap();
    mgr.start().unwrap();
    let root = mgr.submit("root", json!(null)).unwrap();
    let mut ids = vec![root];
    for i in 0..4 {
        ids.push(
            mgr.submit_with("leaf", json!(i), SubmitOptions::new().tag("t"))
                .unwrap(),
        );
    }
    ids.push(mgr.submit("bad", json!(null)).unwrap());
    for id in ids {
        mgr.wait(id, PATIENCE).unwrap();
    }
    (mgr, root)
}

fn pages() -> Vec<Page> {
    let mut v = Vec::new();
    for limit in [0, 1, 2, 1000, usize::MAX] {
        for offset in [0, 1, 5, usize::MAX - 1, usize::MAX] {
            for descending in [false, true] {
                v.push(Page {
                    limit,
                    offset,
                    descending,
                });
            }
        }
    }
    v
}

#[test]
fn odd_pages_and_filters_answer_consistently() {
    let (mgr, root) = populated();
    let all = mgr.list_tasks(&TaskFilter::all());
    assert_eq!(all.len(), 9);
    for page in pages() {
        let p = mgr.query_tasks(&TaskFilter::all(), page);
        assert_eq!(p.total, all.len());
        assert!(p.items.len() <= page.limit);
        let start = page.offset.min(all.len());
        let want = all.len().saturating_sub(start).min(page.limit);
        assert_eq!(p.items.len(), want, "{page:?}");
        assert_eq!(p.has_more, start + want < all.len(), "{page:?}");
        let ev = mgr
            .query_events(root, &EventFilter::default(), page)
            .unwrap();
        assert!(ev.items.len() <= page.limit);
        mgr.query_attempts(root, &AttemptFilter::default(), page)
            .unwrap();
        mgr.task_audit(root, page, page).unwrap();
        let wf = mgr.workflow_audit(root, page, page).unwrap();
        assert_eq!(wf.tasks.total, 4);
    }
    let odd = TaskFilter {
        name: Some(String::new()),
        tag: Some("\0".into()),
        worker: Some("nobody".into()),
        parent_id: Some(TaskId(u64::MAX)),
        root_id: Some(TaskId(0)),
        workflow: Some(TaskId(u64::MAX)),
        suspend_reason: Some(String::new()),
        ..TaskFilter::default()
    };
    assert!(mgr.list_tasks(&odd).is_empty());
    assert_eq!(mgr.query_tasks(&odd, Page::default()).total, 0);
    let before = fingerprint(&mgr);
    assert_eq!(mgr.delete_tasks(&odd).unwrap(), 0);
    for f in [
        TaskFilter::all().tag(""),
        TaskFilter::all().name("\0"),
        TaskFilter::all().workflow(TaskId(u64::MAX)),
        TaskFilter::all().parent(TaskId(0)),
    ] {
        assert_eq!(mgr.delete_tasks(&f).unwrap(), 0, "{f:?}");
    }
    assert_eq!(fingerprint(&mgr), before);
    let ev = EventFilter {
        types: EventType::ALL.to_vec(),
        worker: Some(String::new()),
        attempt: Some(u32::MAX),
        stage: Some(u32::MAX),
        from_ms: Some(u64::MAX),
        until_ms: Some(0),
    };
    assert_eq!(
        mgr.query_events(root, &ev, Page::default()).unwrap().total,
        0
    );
    let af = AttemptFilter {
        worker: Some("\0".into()),
        started_from_ms: Some(u64::MAX),
        ended_until_ms: Some(0),
        open_only: true,
        ..AttemptFilter::default()
    };
    assert_eq!(
        mgr.query_attempts(root, &af, Page::default())
            .unwrap()
            .total,
        0
    );
    let inverted = EventFilter {
        from_ms: Some(T0 + 10),
        until_ms: Some(T0),
        ..EventFilter::default()
    };
    assert_eq!(
        mgr.query_events(root, &inverted, Page::default())
            .unwrap()
            .total,
        0
    );
    assert!(!mgr
        .stats_by_tag(Some(TaskStatus::Suspended))
        .values()
        .any(|n| *n > 0));
    mgr.stop(PATIENCE).unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(proptest_cases(64)))]

    #[test]
    fn random_pages_are_slices_of_the_full_answer(
        limit in prop_oneof![Just(usize::MAX), 0..12usize, any::<usize>()],
        offset in prop_oneof![Just(usize::MAX), 0..12usize, any::<usize>()],
        descending in any::<bool>(),
    ) {
        let (mgr, _) = manual();
        mgr.register("h", ok_handler).unwrap();
        for i in 0..7 {
            mgr.submit("h", json!(i)).unwrap();
        }
        let page = Page { limit, offset, descending };
        let mut all: Vec<TaskId> = mgr.list_tasks(&TaskFilter::all()).iter().map(|t| t.id).collect();
        if descending {
            all.reverse();
        }
        let got = mgr.query_tasks(&TaskFilter::all(), page);
        let want: Vec<TaskId> = all.iter().copied().skip(offset).take(limit).collect();
        prop_assert_eq!(got.items.iter().map(|t| t.id).collect::<Vec<_>>(), want);
        prop_assert_eq!(got.total, 7);
        prop_assert_eq!((got.limit, got.offset), (limit, offset));
    }
}

// ---------------------------------------------------------------------------
// Ids that do not exist, and calls in the wrong status
// ---------------------------------------------------------------------------

fn missing_ids(mgr: &TaskManager) -> Vec<TaskId> {
    let max = mgr
        .list_tasks(&TaskFilter::all())
        .iter()
        .map(|t| t.id.0)
        .max()
        .unwrap_or(0);
    [0, 1, 15, 16, max + 1, max + 16, u64::MAX - 1, u64::MAX]
        .into_iter()
        .map(TaskId)
        .filter(|id| mgr.get_task(*id).is_none())
        .collect()
}

fn check_missing(mgr: &TaskManager) {
    let ids = missing_ids(mgr);
    assert!(ids.len() >= 4);
    for id in ids {
        let nf = |what: &str, e: Error| {
            assert!(
                matches!(e, Error::NotFound(x) if x == id),
                "{what} {id}: {e:?}"
            )
        };
        assert!(mgr.get_task(id).is_none());
        nf("pause", refused("pause", mgr.pause_task(id)));
        nf("resume", refused("resume", mgr.resume_task(id, None)));
        nf("resume", refused("resume", mgr.resume_task(id, Some(""))));
        nf("cancel", refused("cancel", mgr.cancel_task(id, Some("x"))));
        nf("wait", refused("wait", mgr.wait(id, Duration::ZERO)));
        nf(
            "wait",
            refused("wait", mgr.wait(id, Duration::from_secs(3600))),
        );
        nf("events", refused("events", mgr.events(id)));
        nf("attempts", refused("attempts", mgr.attempts(id)));
        nf(
            "query_events",
            refused(
                "query_events",
                mgr.query_events(id, &EventFilter::default(), Page::default()),
            ),
        );
        nf(
            "query_attempts",
            refused(
                "query_attempts",
                mgr.query_attempts(id, &AttemptFilter::default(), Page::default()),
            ),
        );
        nf(
            "task_audit",
            refused(
                "task_audit",
                mgr.task_audit(id, Page::default(), Page::default()),
            ),
        );
        nf(
            "workflow_audit",
            refused(
                "workflow_audit",
                mgr.workflow_audit(id, Page::default(), Page::default()),
            ),
        );
        nf(
            "workflow_summary",
            refused("workflow_summary", mgr.workflow_summary(id)),
        );
        nf(
            "waiting_reason",
            refused("waiting_reason", mgr.waiting_reason(id)),
        );
        assert_eq!(mgr.delete_tasks(&TaskFilter::all().parent(id)).unwrap(), 0);
        assert_eq!(
            mgr.delete_tasks(&TaskFilter::all().workflow(id)).unwrap(),
            0
        );
        assert!(mgr.list_tasks(&TaskFilter::all().workflow(id)).is_empty());
    }
}

#[test]
fn unknown_ids_are_not_found_everywhere_and_change_nothing() {
    let (mgr, _) = populated();
    let before = fingerprint(&mgr);
    check_missing(&mgr);
    assert_eq!(fingerprint(&mgr), before);
    mgr.stop(PATIENCE).unwrap();
    let (empty, _) = manual();
    check_missing(&empty);
    assert_eq!(total(&empty), 0);
}

#[test]
fn unknown_ids_on_a_directory_change_nothing_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let before = {
        let mgr = open_dir(dir.path()).unwrap();
        mgr.register("h", ok_handler).unwrap();
        mgr.start().unwrap();
        let id = mgr.submit("h", json!(1)).unwrap();
        mgr.wait(id, PATIENCE).unwrap();
        let lsn = mgr.log_stats().unwrap().last_lsn;
        check_missing(&mgr);
        assert_eq!(
            mgr.log_stats().unwrap().last_lsn,
            lsn,
            "a refused call wrote"
        );
        let print = fingerprint(&mgr);
        mgr.stop(PATIENCE).unwrap();
        print
    };
    let mgr = open_dir(dir.path()).unwrap();
    assert_eq!(fingerprint(&mgr), before);
}

#[test]
fn control_calls_in_the_wrong_status_are_refused_and_change_nothing() {
    let (mgr, _) = manual();
    let gate = Gate::new();
    let g = gate.clone();
    mgr.register("block", move |_| {
        g.wait();
        Ok(json!(null).into())
    })
    .unwrap();
    mgr.register("h", ok_handler).unwrap();
    mgr.start().unwrap();
    let done = mgr.submit("h", json!(null)).unwrap();
    mgr.wait(done, PATIENCE).unwrap();
    let running = mgr.submit("block", json!(null)).unwrap();
    eventually("it runs", || {
        mgr.get_task(running)
            .is_some_and(|t| t.status == TaskStatus::Running)
    });
    let pending = mgr
        .submit_with(
            "h",
            json!(null),
            SubmitOptions::new().delay(Duration::from_secs(3600)),
        )
        .unwrap();
    let before = fingerprint(&mgr);
    // Completed: nothing applies.
    refused("pause completed", mgr.pause_task(done));
    refused("resume completed", mgr.resume_task(done, Some("why")));
    refused("cancel completed", mgr.cancel_task(done, None));
    // Pending and running: only pause applies.
    refused("resume pending", mgr.resume_task(pending, None));
    refused("cancel pending", mgr.cancel_task(pending, Some("")));
    refused("resume running", mgr.resume_task(running, None));
    refused("cancel running", mgr.cancel_task(running, None));
    assert_eq!(fingerprint(&mgr), before);
    // Pausing twice: the second is refused.
    mgr.pause_task(pending).unwrap();
    refused("pause paused", mgr.pause_task(pending));
    gate.open();
    mgr.wait(running, PATIENCE).unwrap();
    mgr.stop(PATIENCE).unwrap();
}

// ---------------------------------------------------------------------------
// Workflows
// ---------------------------------------------------------------------------

#[test]
fn odd_spawns_fail_the_attempt_with_a_clear_error() {
    let (mgr, _) = manual();
    mgr.register("leaf", ok_handler).unwrap();
    let cases: Vec<(&str, Vec<ChildSpec>, &str)> = vec![
        ("none", Vec::new(), "at least one child"),
        (
            "unregistered",
            vec![
                ChildSpec::new("leaf", json!(1)),
                ChildSpec::new("ghost", json!(2)),
            ],
            "ghost",
        ),
        ("blank", vec![ChildSpec::new("", json!(1))], "No handler"),
        (
            "empty_tag",
            vec![ChildSpec::new("leaf", json!(1)).tag("")],
            "tag",
        ),
        (
            "bad_requires",
            vec![ChildSpec::new("leaf", json!(1)).requires(["a b"])],
            "tag",
        ),
    ];
    let mut parents = Vec::new();
    for (name, kids, needle) in cases {
        let kids = Mutex::new(Some(kids));
        mgr.register_with(
            &format!("p_{name}"),
            HandlerOptions::new().max_retries(1),
            move |_| {
                Ok(Outcome::spawn(
                    kids.lock().unwrap().take().unwrap_or_default(),
                ))
            },
        )
        .unwrap();
        parents.push((
            mgr.submit(&format!("p_{name}"), json!(null)).unwrap(),
            needle,
        ));
    }
    mgr.start().unwrap();
    for (id, needle) in parents {
        let t = mgr.wait(id, PATIENCE).unwrap();
        assert_eq!(t.status, TaskStatus::PermanentlyFailed, "{needle}");
        let err = t.error.unwrap_or_default();
        assert!(err.contains(needle), "{needle}: {err}");
        assert_eq!(t.total_children, 0);
        assert!(mgr.list_tasks(&TaskFilter::all().parent(id)).is_empty());
    }
    mgr.stop(PATIENCE).unwrap();
}

#[test]
fn extreme_child_options_and_many_children() {
    let (mgr, _) = manual();
    mgr.register("leaf", |ctx| Ok(ctx.payload().clone().into()))
        .unwrap();
    const N: usize = 3000;
    mgr.register("fan", |ctx| {
        if ctx.stage() == 0 {
            let mut kids: Vec<ChildSpec> =
                (0..N).map(|i| ChildSpec::new("leaf", json!(i))).collect();
            kids.push(
                ChildSpec::new("leaf", json!("x"))
                    .priority(i32::MIN)
                    .timeout(Duration::MAX)
                    .max_retries(u32::MAX)
                    .retry_interval(Duration::MAX)
                    .tag("\0🚀")
                    .requires(Vec::<String>::new()),
            );
            kids.push(
                ChildSpec::new("leaf", json!("y"))
                    .priority(i32::MAX)
                    .timeout(Duration::ZERO)
                    .max_retries(0),
            );
            Ok(Outcome::Spawn {
                children: kids,
                context: Some(vec![0; 1 << 16]),
            })
        } else {
            let r = ctx.result().and_then(Value::as_array).map_or(0, Vec::len);
            Ok(json!(r).into())
        }
    })
    .unwrap();
    mgr.start().unwrap();
    let id = mgr.submit("fan", json!(null)).unwrap();
    let t = mgr.wait(id, PATIENCE).unwrap();
    assert_eq!(t.status, TaskStatus::Completed);
    assert_eq!(t.result, Some(json!(N + 2)));
    let s = mgr.workflow_summary(id).unwrap();
    assert_eq!(s.status_counts.get("completed"), Some(&(N as u64 + 3)));
    mgr.stop(PATIENCE).unwrap();
}

#[test]
fn a_child_needing_a_missing_capability_waits_and_says_why() {
    let (mgr, _) = manual();
    mgr.register("leaf", ok_handler).unwrap();
    mgr.register("p", |ctx| {
        if ctx.stage() == 0 {
            Ok(Outcome::spawn(vec![
                ChildSpec::new("leaf", json!(1)).requires(["nowhere"])
            ]))
        } else {
            Ok(json!(null).into())
        }
    })
    .unwrap();
    mgr.start().unwrap();
    let id = mgr.submit("p", json!(null)).unwrap();
    eventually("the parent suspends", || {
        mgr.get_task(id)
            .is_some_and(|t| t.status == TaskStatus::Suspended)
    });
    let kid = mgr.list_tasks(&TaskFilter::all().parent(id))[0].id;
    let why = mgr.waiting_reason(kid).unwrap().unwrap();
    assert!(why.contains("nowhere"), "{why}");
    // Cancel with odd reasons: accepted as given.
    mgr.cancel_task(id, Some("\0 reason 🚀")).unwrap();
    assert_eq!(
        mgr.get_task(id).unwrap().error.as_deref(),
        Some("\0 reason 🚀")
    );
    mgr.stop(PATIENCE).unwrap();
}

#[test]
fn suspensions_with_blank_reasons_fail_the_attempt() {
    let (mgr, _) = manual();
    for (i, reason) in blank_names().into_iter().enumerate() {
        mgr.register_with(
            &format!("s{i}"),
            HandlerOptions::new().max_retries(1),
            move |_| Ok(Outcome::suspend(reason)),
        )
        .unwrap();
    }
    mgr.register("odd", |ctx| {
        if ctx.stage() == 0 {
            Ok(Outcome::Suspend {
                reason: "\0".repeat(10_000),
                context: Some(Vec::new()),
            })
        } else {
            Ok(json!(ctx.context().map(<[u8]>::len)).into())
        }
    })
    .unwrap();
    mgr.start().unwrap();
    for i in 0..blank_names().len() {
        let id = mgr.submit(&format!("s{i}"), json!(null)).unwrap();
        let t = mgr.wait(id, PATIENCE).unwrap();
        assert_eq!(t.status, TaskStatus::PermanentlyFailed);
        assert!(t.error.unwrap().contains("non-empty reason"));
    }
    let id = mgr.submit("odd", json!(null)).unwrap();
    eventually("suspended", || {
        mgr.get_task(id)
            .is_some_and(|t| t.status == TaskStatus::Suspended)
    });
    let filter = TaskFilter {
        suspend_reason: Some("\0".repeat(10_000)),
        ..TaskFilter::default()
    };
    assert_eq!(mgr.list_tasks(&filter).len(), 1);
    mgr.resume_task(id, Some(&"r".repeat(100_000))).unwrap();
    assert_eq!(mgr.wait(id, PATIENCE).unwrap().result, Some(json!(0)));
    mgr.stop(PATIENCE).unwrap();
}

// ---------------------------------------------------------------------------
// Builder extremes
// ---------------------------------------------------------------------------

#[test]
fn builder_refuses_configurations_that_cannot_work() {
    let dir = tempfile::tempdir().unwrap();
    let cases: Vec<(&str, fibflow::Builder)> = vec![
        ("no storage", TaskManager::builder()),
        (
            "0 workers",
            TaskManager::builder().memory().max_concurrent_tasks(0),
        ),
        (
            "pool of 0",
            TaskManager::builder()
                .memory()
                .pool(Pool::new("p").concurrency(0)),
        ),
        (
            "blank pool",
            TaskManager::builder().memory().pool(Pool::new(" ")),
        ),
        (
            "retention of pending",
            TaskManager::builder().memory().retention(
                RetentionPolicy::new(Duration::ZERO).statuses([TaskStatus::Pending]),
                Duration::ZERO,
            ),
        ),
        (
            "retention of suspended",
            TaskManager::builder().memory().retention(
                RetentionPolicy::new(Duration::MAX)
                    .statuses([TaskStatus::Completed, TaskStatus::Suspended]),
                Duration::MAX,
            ),
        ),
        ("dir is /dev/null", TaskManager::builder().dir("/dev/null")),
        (
            "dir under a file",
            TaskManager::builder().dir("/dev/null/sub"),
        ),
    ];
    for seg in [0, 1, 64, 4095, 4097, 3 << 30, u64::MAX] {
        let sub = dir.path().join(format!("seg{seg}"));
        let r = TaskManager::builder().dir(&sub).segment_size(seg).build();
        let e = refused(&format!("segment_size {seg}"), r);
        assert!(e.to_string().contains("segment_size"), "{e}");
        let left = std::fs::read_dir(&sub).map_or(0, Iterator::count);
        assert!(left <= 1, "segment_size {seg} left files behind");
    }
    for (what, b) in cases {
        refused(what, b.build());
    }
}

#[test]
fn builder_extremes_that_are_allowed_work() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let before = {
        let mgr = TaskManager::builder()
            .dir(dir.path())
            .segment_size(4096)
            .compact_after_bytes(0)
            .max_retries(0)
            .timeout(Duration::MAX)
            .retry_interval(Duration::MAX)
            .quarantine_after(0)
            .clock(clock.clone())
            .retention(RetentionPolicy::new(Duration::MAX), Duration::ZERO)
            .pool(Pool::new("p").tags(["gpu"]).concurrency(1).max_attempts(0))
            .build()
            .unwrap();
        mgr.register("h", |ctx| Ok(ctx.payload().clone().into()))
            .unwrap();
        // Too large for a 4 KiB segment: refused, nothing changes.
        let e = refused(
            "record over a tiny segment",
            mgr.submit("h", json!("z".repeat(8192))),
        );
        assert!(matches!(e, Error::Log(_)), "{e:?}");
        assert_eq!(total(&mgr), 0);
        mgr.start().unwrap();
        let mut ids = Vec::new();
        for i in 0..200 {
            let o = if i % 3 == 0 {
                SubmitOptions::new().requires(["gpu"])
            } else {
                SubmitOptions::new()
            };
            ids.push(mgr.submit_with("h", json!(i), o).unwrap());
        }
        for id in &ids {
            clock.advance(Duration::from_millis(1));
            assert_eq!(
                mgr.wait(*id, PATIENCE).unwrap().status,
                TaskStatus::Completed
            );
        }
        assert!(mgr.log_stats().unwrap().segments >= 1);
        // Retention with a huge expiry removes nothing.
        assert_eq!(
            mgr.run_retention(Some(&RetentionPolicy::new(Duration::MAX)))
                .unwrap()
                .tasks,
            0
        );
        let print = fingerprint(&mgr);
        mgr.stop(PATIENCE).unwrap();
        print
    };
    let again = TaskManager::builder()
        .dir(dir.path())
        .segment_size(4096)
        .clock(clock)
        .build()
        .unwrap();
    assert_eq!(fingerprint(&again), before);
    // Retention with zero expiry removes every finished task.
    again
        .run_retention(Some(&RetentionPolicy::new(Duration::ZERO)))
        .unwrap();
    refused(
        "no policy",
        TaskManager::in_memory().unwrap().run_retention(None),
    );
    refused(
        "bad policy",
        again.run_retention(Some(
            &RetentionPolicy::new(Duration::ZERO).statuses([TaskStatus::Running]),
        )),
    );
}

#[test]
fn a_locked_directory_is_refused_without_touching_it() {
    let dir = tempfile::tempdir().unwrap();
    let first = open_dir(dir.path()).unwrap();
    first.register("h", ok_handler).unwrap();
    first.submit("h", json!(1)).unwrap();
    let before = fingerprint(&first);
    let e = refused("second open", TaskManager::open(dir.path()));
    assert!(e.to_string().contains("locked"), "{e}");
    assert_eq!(fingerprint(&first), before);
    first.submit("h", json!(2)).unwrap();
}

// ---------------------------------------------------------------------------
// stop, and calls after stop
// ---------------------------------------------------------------------------

#[test]
fn stop_with_zero_deadline_then_every_call_after_stop() {
    let dir = tempfile::tempdir().unwrap();
    let gate = Gate::new();
    let g = gate.clone();
    let mgr = Arc::new(open_dir(dir.path()).unwrap());
    mgr.register("block", move |_| {
        g.wait();
        Ok(json!("late").into())
    })
    .unwrap();
    mgr.register("h", ok_handler).unwrap();
    mgr.start().unwrap();
    let done = mgr.submit("h", json!(null)).unwrap();
    mgr.wait(done, PATIENCE).unwrap();
    let running = mgr.submit("block", json!(null)).unwrap();
    let pending = mgr
        .submit_with(
            "h",
            json!(null),
            SubmitOptions::new().delay(Duration::from_secs(3600)),
        )
        .unwrap();
    eventually("it runs", || {
        mgr.get_task(running)
            .is_some_and(|t| t.status == TaskStatus::Running)
    });
    let m = mgr.clone();
    let report = within("stop(0)", move || m.stop(Duration::ZERO)).unwrap();
    assert_eq!(report.interrupted, vec![running]);
    let before = fingerprint(&mgr);
    assert!(matches!(
        refused("submit after stop", mgr.submit("h", json!(null))),
        Error::Stopped
    ));
    refused(
        "batch after stop",
        mgr.submit_batch(vec![("h".to_owned(), json!(null), SubmitOptions::new())]),
    );
    assert!(matches!(
        refused("start after stop", mgr.start()),
        Error::Stopped
    ));
    refused("pause after stop", mgr.pause_task(pending));
    refused("resume after stop", mgr.resume_task(pending, None));
    refused("cancel after stop", mgr.cancel_task(pending, None));
    refused("delete after stop", mgr.delete_tasks(&TaskFilter::all()));
    let _ = mgr.compact();
    let _ = mgr.run_retention(Some(&RetentionPolicy::new(Duration::ZERO)));
    assert_eq!(mgr.wait(done, Duration::ZERO).unwrap().id, done);
    let m = mgr.clone();
    let r = within("wait after stop", move || {
        m.wait(pending, Duration::from_millis(10))
    });
    assert!(matches!(r, Err(Error::Stopped)), "{r:?}");
    mgr.register("later", ok_handler).unwrap();
    mgr.pause();
    mgr.resume();
    assert_eq!(mgr.stop(Duration::ZERO).unwrap().interrupted, Vec::new());
    assert_eq!(fingerprint(&mgr), before);
    // The directory is free again although a handler still runs; a reopen sees
    // the interrupted task pending, and the late result is never written.
    let again = open_dir(dir.path()).unwrap();
    assert_eq!(fingerprint(&again), before);
    assert_eq!(again.get_task(running).unwrap().status, TaskStatus::Pending);
    gate.open();
    eventually("the old handler returns", || mgr.running() == 0);
    assert_eq!(again.get_task(running).unwrap().status, TaskStatus::Pending);
    drop(again);
    assert_eq!(
        open_dir(dir.path())
            .unwrap()
            .get_task(running)
            .unwrap()
            .status,
        TaskStatus::Pending
    );
}

#[test]
fn stop_before_start_and_drop_without_stop() {
    let mgr = TaskManager::in_memory().unwrap();
    mgr.stop(Duration::ZERO).unwrap();
    assert!(matches!(mgr.start(), Err(Error::Stopped)));
    let dir = tempfile::tempdir().unwrap();
    {
        let mgr = open_dir(dir.path()).unwrap();
        mgr.register("h", ok_handler).unwrap();
        mgr.start().unwrap();
        mgr.submit("h", json!(null)).unwrap();
    }
    // Dropped while running: the directory opens again.
    let again = open_dir(dir.path()).unwrap();
    assert_eq!(total(&again), 1);
}

#[test]
fn manual_clock_at_the_ends_of_time() {
    for start in [0, 1, u64::MAX - 1, u64::MAX] {
        let clock = ManualClock::new(start);
        let mgr = TaskManager::builder()
            .memory()
            .clock(clock.clone())
            .build()
            .unwrap();
        mgr.register("h", ok_handler).unwrap();
        mgr.register_with("f", HandlerOptions::new().max_retries(3), failing)
            .unwrap();
        mgr.start().unwrap();
        let a = mgr
            .submit_with("h", json!(null), SubmitOptions::new().run_at(UNIX_EPOCH))
            .unwrap();
        let b = mgr.submit("f", json!(null)).unwrap();
        assert_eq!(mgr.wait(a, PATIENCE).unwrap().status, TaskStatus::Completed);
        assert_eq!(
            mgr.wait(b, PATIENCE).unwrap().status,
            TaskStatus::PermanentlyFailed
        );
        clock.set(0);
        clock.set(u64::MAX);
        mgr.run_retention(Some(&RetentionPolicy::new(Duration::ZERO)))
            .unwrap();
        mgr.stop(PATIENCE).unwrap();
    }
}

// ---------------------------------------------------------------------------
// Lower layers: bytes from disk
// ---------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(proptest_cases(256)))]

    #[test]
    fn codec_decode_of_random_bytes_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = fibflow::codec::decode(&bytes);
        let _ = fibflow::codec::peek_task_id(&bytes);
        let _ = fibflow::log::frame::decode_frame(&bytes);
        let _ = fibflow::log::segment::SegmentHeader::decode(&bytes);
        let _ = fibflow::log::snapshot::decode_snapshot(&bytes);
    }
}

/// Writes `files` into a fresh directory and checks that `verify` and an
/// open return (never panic), that an open refuses what verify calls corrupt,
/// and that a refused open leaves the files as they were.
fn garbage_dir(files: &[(&str, Vec<u8>)]) -> (bool, bool) {
    let dir = tempfile::tempdir().unwrap();
    for (name, bytes) in files {
        std::fs::write(dir.path().join(name), bytes).unwrap();
    }
    let listing = |p: &Path| {
        let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(p)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.file_name().to_string_lossy().into_owned(),
                    std::fs::read(e.path()).unwrap_or_default(),
                )
            })
            .collect();
        v.sort();
        v
    };
    let before = listing(dir.path());
    let verified = fibflow::log::verify(dir.path());
    let corrupt = verified.as_ref().map_or(true, |r| {
        r.problems
            .iter()
            .any(|p| !p.reason.starts_with("torn tail"))
    });
    let opened = open_dir(dir.path());
    let ok = opened.is_ok();
    if let Ok(m) = opened {
        assert_eq!(total(&m), 0);
    } else {
        drop(opened);
        let after: Vec<_> = listing(dir.path())
            .into_iter()
            .filter(|(n, _)| n != "LOCK")
            .collect();
        assert_eq!(after, before, "a refused open changed the directory");
    }
    (corrupt, ok)
}

#[test]
fn garbage_log_directories_are_refused_or_read_as_empty() {
    let seg = "00000000000000000000.seg";
    let cases: Vec<Vec<(&str, Vec<u8>)>> = vec![
        vec![(seg, b"garbage".to_vec())],
        vec![(seg, Vec::new())],
        vec![(seg, vec![0; 4096])],
        vec![(seg, vec![0xff; 8192])],
        vec![("00000000000000000007.seg", vec![0; 4096])],
        vec![(seg, b"FIBFLOWL".repeat(600))],
        vec![("00000000000000000000.seg.tmp", vec![1; 10])],
        vec![("99999999999999999999.seg", vec![1; 10])],
        vec![("notes.txt", b"hello".to_vec())],
    ];
    for files in cases {
        let names: Vec<&str> = files.iter().map(|f| f.0).collect();
        let (corrupt, opened) = garbage_dir(&files);
        assert!(
            !(corrupt && opened),
            "{names:?}: verify says corrupt but open accepts"
        );
    }
}

// ---------------------------------------------------------------------------
// The command line
// ---------------------------------------------------------------------------

struct Ran {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

fn fibflow(args: &[&str]) -> Ran {
    let args: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
    let what = format!("fibflow {}", args.join(" "));
    within(&what.clone(), move || {
        let out = Command::new(env!("CARGO_BIN_EXE_fibflow"))
            .args(&args)
            .env("RUST_BACKTRACE", "1")
            .output()
            .unwrap();
        let ran = Ran {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        };
        assert!(
            ran.code != Some(101) && !ran.stderr.contains("panicked"),
            "{what} panicked: {}",
            ran.stderr
        );
        assert!(ran.code.is_some(), "{what} was killed by a signal");
        ran
    })
}

/// A bad argument or directory: non-zero exit and a message on stderr.
#[track_caller]
fn cli_refuses(args: &[&str], needle: &str) {
    let r = fibflow(args);
    assert_ne!(r.code, Some(0), "{args:?} succeeded: {}", r.stdout);
    // `verify` reports the problems it found on stdout, errors go to stderr.
    assert!(
        r.stderr.contains(needle) || r.stdout.contains(needle),
        "{args:?}: expected `{needle}` in the output: {}{}",
        r.stdout,
        r.stderr
    );
}

#[test]
fn cli_bad_arguments_and_directories() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("afile");
    std::fs::write(&file, b"x").unwrap();
    let file = file.to_str().unwrap();
    let missing = tmp.path().join("missing");
    let missing = missing.to_str().unwrap();
    for cmd in ["inspect", "verify"] {
        cli_refuses(&[cmd, missing], "not a directory");
        cli_refuses(&[cmd, file], "not a directory");
        cli_refuses(&[cmd], "Usage");
    }
    let garbage = tmp.path().join("garbage");
    std::fs::create_dir(&garbage).unwrap();
    std::fs::write(garbage.join("00000000000000000000.seg"), b"nope").unwrap();
    let garbage = garbage.to_str().unwrap();
    cli_refuses(&["verify", garbage], "bad segment header");
    cli_refuses(&["inspect", garbage], "bad segment header");
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let empty = empty.to_str().unwrap();
    assert_eq!(fibflow(&["verify", empty]).code, Some(0));
    // `inspect` reads a log: it does not create one in a directory without.
    cli_refuses(&["inspect", empty], "holds no fibflow log");
    assert_eq!(std::fs::read_dir(empty).unwrap().count(), 0);
    // A log with no tasks.
    let fresh = tmp.path().join("fresh");
    drop(TaskManager::builder().dir(&fresh).build().unwrap());
    let fresh = fresh.to_str().unwrap();
    cli_refuses(&["inspect", empty, "--task", "abc"], "invalid value");
    cli_refuses(&["inspect", empty, "--task", "-1"], "");
    cli_refuses(
        &["inspect", empty, "--task", "18446744073709551616"],
        "invalid value",
    );
    cli_refuses(
        &["inspect", fresh, "--task", "18446744073709551615"],
        "not found",
    );
    cli_refuses(&["inspect", fresh, "--workflow", "0"], "not found");
    cli_refuses(
        &["inspect", empty, "--task", "1", "--workflow", "1"],
        "cannot be used with",
    );
    cli_refuses(&["demo", "--tasks", "x"], "invalid value");
    cli_refuses(&["demo", "--memory", "--dir", empty], "cannot be used with");
    cli_refuses(&["demo", "--dir", file, "--tasks", "1"], "error");
    cli_refuses(
        &["demo", "--durability", "never", "--memory"],
        "invalid value",
    );
    cli_refuses(&["crash-test", "--tasks", "0"], "at least 1");
    cli_refuses(&["crash-test", "--kills", "-1"], "");
    cli_refuses(&["crash-test", "--dir", file, "--tasks", "1"], "error");
    cli_refuses(&["bench", "--seconds", "abc"], "invalid value");
    cli_refuses(&["no-such-command"], "unrecognized subcommand");
    cli_refuses(&[], "Usage");
}

#[test]
fn cli_small_runs_and_damaged_logs() {
    let tmp = tempfile::tempdir().unwrap();
    let r = fibflow(&["demo", "--memory", "--tasks", "0", "--json"]);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let dir = tmp.path().join("d");
    let d = dir.to_str().unwrap();
    let r = fibflow(&[
        "demo",
        "--dir",
        d,
        "--tasks",
        "200",
        "--seed",
        "18446744073709551615",
    ]);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let r = fibflow(&["inspect", d, "--json"]);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let r = fibflow(&["verify", d, "--json"]);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let r = fibflow(&["crash-test", "--kills", "0", "--tasks", "3", "--json"]);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    // Truncated segment: refused by both, with the segment named.
    let seg = dir.join("00000000000000000000.seg");
    let bytes = std::fs::read(&seg).unwrap();
    std::fs::write(&seg, &bytes[..5000]).unwrap();
    cli_refuses(&["verify", d], "00000000000000000000.seg");
    cli_refuses(&["inspect", d], "00000000000000000000.seg");
    // A segment that is a directory.
    std::fs::remove_file(&seg).unwrap();
    std::fs::create_dir(&seg).unwrap();
    cli_refuses(&["verify", d], "not a regular file");
    cli_refuses(&["inspect", d], "Is a directory");
}

// ---------------------------------------------------------------------------
// Bugs this file found, since fixed in src/ (each doc comment describes the
// old behaviour).
// ---------------------------------------------------------------------------

mod found_bugs {
    use super::*;

    /// `wait(id, Duration::MAX)` panics with "overflow when adding duration to
    /// instant" (src/api/mod.rs, `TaskManager::wait`: `Instant::now() + timeout`)
    /// instead of waiting "forever" or returning `NotFound` for an unknown id.
    #[test]
    fn wait_with_duration_max_panics() {
        let (mgr, _) = manual();
        mgr.register("h", ok_handler).unwrap();
        mgr.start().unwrap();
        let id = mgr.submit("h", json!(null)).unwrap();
        let mgr = Arc::new(mgr);
        let m = mgr.clone();
        let r = within("wait MAX", move || m.wait(TaskId(u64::MAX), Duration::MAX));
        assert!(matches!(r, Err(Error::NotFound(_))), "{r:?}");
        let m = mgr.clone();
        let r = within("wait MAX", move || m.wait(id, Duration::MAX));
        assert_eq!(r.unwrap().status, TaskStatus::Completed);
    }

    /// `stop(Duration::MAX)` panics with "overflow when adding duration to
    /// instant" (src/api/mod.rs, `TaskManager::stop`: `Instant::now() + deadline`).
    #[test]
    fn stop_with_duration_max_panics() {
        let (mgr, _) = manual();
        mgr.start().unwrap();
        let r = within("stop MAX", move || mgr.stop(Duration::MAX));
        assert!(r.is_ok(), "{r:?}");
    }

    /// A payload (or result, or audit metadata) nested 128 or more levels deep
    /// is accepted (memory manager), but once the task finishes: in a debug
    /// build `wait` panics ("a frozen task does not decode",
    /// src/engine/slot.rs `Frozen::decode` debug_assert); in a release build
    /// the task vanishes from every query (`wait` and `get_task` say it does
    /// not exist, `events` is `NotFound`, `list_tasks` skips it) while
    /// `count_by_status` still counts it. A finished task is kept packed;
    /// src/engine/slot/pack.rs `Reader::json` parses it back with
    /// `serde_json::from_slice`, whose default recursion limit (128) refuses
    /// it. Either submit must refuse such values or the reader must not limit
    /// recursion.
    #[test]
    fn a_deep_payload_vanishes_once_its_task_finishes() {
        let (mgr, _) = manual();
        mgr.register("h", ok_handler).unwrap();
        mgr.register("deep_result", |_| Ok(nested(200).into()))
            .unwrap();
        mgr.start().unwrap();
        for (name, payload) in [("h", nested(200)), ("deep_result", json!(null))] {
            match mgr.submit(name, payload) {
                Err(e) => assert!(!e.to_string().is_empty()),
                Ok(id) => {
                    let t = mgr.wait(id, PATIENCE);
                    assert!(t.is_ok(), "{name}: wait says {t:?}");
                    assert!(mgr.get_task(id).is_some(), "{name}: task vanished");
                    assert!(mgr.events(id).is_ok(), "{name}: events vanished");
                    assert_eq!(
                        mgr.list_tasks(&TaskFilter::all()).len() as u64,
                        total(&mgr),
                        "{name}: list and counts disagree"
                    );
                }
            }
        }
    }

    /// A payload nested 128 or more levels deep is accepted by a directory
    /// manager and logged, but the directory can then never be opened again:
    /// "cannot recover the log: record body does not decode: Serde
    /// Deserialization Error; the log is damaged or from another program".
    /// Cause: src/codec/mod.rs `json_value::deserialize` parses the stored
    /// JSON text with `serde_json::from_str` (recursion limit 128), while
    /// `serialize` writes any depth. One bad submit bricks the whole log.
    #[test]
    fn a_deep_payload_bricks_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        let accepted = {
            let mgr = open_dir(dir.path()).unwrap();
            mgr.register("h", ok_handler).unwrap();
            mgr.submit("h", json!("fine")).unwrap();
            let ok = mgr.submit("h", nested(130)).is_ok();
            mgr.stop(PATIENCE).unwrap();
            ok
        };
        let again = open_dir(dir.path());
        assert!(again.is_ok(), "reopen: {:?}", again.err());
        assert_eq!(total(&again.unwrap()), 1 + u64::from(accepted));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(proptest_cases(64)))]

        /// Floats in payloads and results do not survive: after the task
        /// finishes (in memory) or after a reopen, e.g. `-1.5e-300` reads back
        /// as `-1.4999999999999998e-300`. The stored JSON text is parsed with
        /// serde_json's default, not correctly rounded, float parser
        /// (src/engine/slot/pack.rs `Reader::json`, src/codec/mod.rs
        /// `json_value::deserialize`); serde_json's `float_roundtrip` feature
        /// is not enabled in Cargo.toml.
        #[test]
        fn floats_change_when_a_task_finishes(x in any::<f64>().prop_filter("finite", |x| x.is_finite())) {
            let (mgr, _) = manual();
            mgr.register("echo", |ctx| Ok(ctx.payload().clone().into())).unwrap();
            mgr.start().unwrap();
            let p = json!([x, -1.5e-300]);
            let id = mgr.submit("echo", p.clone()).unwrap();
            let t = mgr.wait(id, PATIENCE).unwrap();
            prop_assert_eq!(&t.payload, &p);
            prop_assert_eq!(t.result.as_ref(), Some(&p));
        }
    }

    /// `submit_batch` promises that a refused item creates nothing (SPEC §13),
    /// but an item whose payload is too large for one log record is only
    /// refused when it is written, after the items before it were created:
    /// the call returns `Err` and the first task exists. src/api/mod.rs
    /// `submit_batch` checks items with `prepare_submit`
    /// (src/runtime/submit.rs), which does not check the encoded size; the
    /// size is checked in `Store::commit`.
    #[test]
    fn submit_batch_with_an_oversized_item_creates_the_items_before_it() {
        let dir = tempfile::tempdir().unwrap();
        let mgr = open_dir(dir.path()).unwrap();
        mgr.register("h", ok_handler).unwrap();
        let r = mgr.submit_batch(vec![
            ("h".to_owned(), json!(1), SubmitOptions::new()),
            (
                "h".to_owned(),
                json!("x".repeat(17 << 20)),
                SubmitOptions::new(),
            ),
        ]);
        assert!(r.is_err());
        assert_eq!(total(&mgr), 0, "a refused batch created tasks");
    }

    /// `RetentionPolicy::new(Duration::from_secs(1 << 61))` (about 7e10
    /// years: "keep everything") deletes every finished task at once:
    /// src/api/audit.rs `retention_batch` computes the cutoff with
    /// `expire_after.as_millis() as u64`, which truncates 2^61 * 1000 to 0.
    #[test]
    fn retention_with_a_huge_expiry_deletes_everything() {
        let (mgr, clock) = manual();
        mgr.register("h", ok_handler).unwrap();
        mgr.start().unwrap();
        let id = mgr.submit("h", json!(null)).unwrap();
        mgr.wait(id, PATIENCE).unwrap();
        clock.advance(Duration::from_millis(1));
        let r = mgr
            .run_retention(Some(&RetentionPolicy::new(Duration::from_secs(1 << 61))))
            .unwrap();
        assert_eq!(r.tasks, 0, "deleted a task younger than its expiry");
        assert!(mgr.get_task(id).is_some());
    }

    /// `Builder::retention(policy, every)` with `every = 2^61 s` runs
    /// retention on every timer round instead of once per `every`
    /// (src/api/mod.rs `timer_main`: `every.as_millis() as u64` truncates to 0).
    #[test]
    fn retention_interval_huge_runs_every_round() {
        let clock = ManualClock::new(T0);
        let mgr = TaskManager::builder()
            .memory()
            .clock(clock.clone())
            .retention(
                RetentionPolicy::new(Duration::ZERO),
                Duration::from_secs(1 << 61),
            )
            .build()
            .unwrap();
        mgr.register("h", ok_handler).unwrap();
        mgr.start().unwrap();
        let id = mgr.submit("h", json!(null)).unwrap();
        mgr.wait(id, PATIENCE).unwrap();
        clock.advance(Duration::from_millis(2));
        clock.advance(Duration::from_millis(2));
        assert!(
            mgr.get_task(id).is_some(),
            "retention ran long before its first interval"
        );
    }

    /// `ManualClock::advance` wraps around instead of saturating:
    /// `advance(Duration::MAX)` moves the clock 1 ms *back*, and
    /// `advance(Duration::from_secs(1 << 61))` does not move it at all
    /// (src/runtime/clock.rs `ManualClock::advance`:
    /// `fetch_add(by.as_millis() as u64)`).
    #[test]
    fn manual_clock_advance_wraps() {
        use fibflow::Clock;
        let clock = ManualClock::new(T0);
        clock.advance(Duration::from_secs(1 << 61));
        assert!(clock.now_ms() > T0, "advance did not move the clock");
        let clock = ManualClock::new(T0);
        clock.advance(Duration::MAX);
        assert!(clock.now_ms() >= T0, "advance moved the clock backwards");
    }

    /// A cron field with an empty list item (`,`, `1,,2`, `5,`) is accepted
    /// as valid. When the item list is empty (`, * * * *`) the schedule
    /// matches nothing and `submit_with(.., cron(", * * * *"))` blocks the
    /// caller for ~7 s in release (over a minute in debug) before refusing
    /// with the misleading "has no future occurrence"; `, * * * * *` takes
    /// ~8.5 s. src/engine/schedule.rs `normalize_field` does not reject empty
    /// list items, croner accepts them as an empty set, and
    /// `CronSchedule::next_after` then lets croner search to its year limit.
    #[test]
    fn cron_with_empty_list_items_is_accepted_and_slow() {
        let (mgr, _) = manual();
        mgr.register("c", ok_handler).unwrap();
        let mgr = Arc::new(mgr);
        let m = mgr.clone();
        let started = std::time::Instant::now();
        let r = within("cron , * * * *", move || {
            m.submit_with("c", json!(null), SubmitOptions::new().cron(", * * * *"))
        });
        let took = started.elapsed();
        let utc = TimeZone::from_name("UTC").unwrap();
        let accepted: Vec<&str> = ["1,,2 * * * *", "5, * * * *", "0 0 L, * *", ", * * * *"]
            .into_iter()
            .filter(|e| fibflow::engine::schedule::CronSchedule::parse(e, utc).is_ok())
            .collect();
        assert!(accepted.is_empty(), "accepted: {accepted:?}");
        assert!(matches!(&r, Err(Error::Schedule(_))), "`, * * * *`: {r:?}");
        assert!(took < Duration::from_secs(1), "submit took {took:?}");
    }

    /// Two pools with the same name are accepted (also one named `default`),
    /// so worker names repeat (`default-0` twice). A timeout then picks the
    /// retry strategy of the first pool with that worker name, not the pool
    /// that ran the attempt (src/runtime/worker.rs `Core::attempt_due` finds
    /// the worker by name; src/api/builder.rs `Builder::validate` does not
    /// check for duplicate pool names).
    #[test]
    fn duplicate_pool_names_are_accepted_and_confuse_workers() {
        let clock = ManualClock::new(T0);
        let hour = Duration::from_secs(3600);
        let mgr = TaskManager::builder()
            .memory()
            .clock(clock.clone())
            .max_concurrent_tasks(1)
            .pool(
                Pool::new("default")
                    .tags(["x"])
                    .concurrency(1)
                    .retry_strategy(RetryStrategy::fixed(hour)),
            )
            .build();
        let Ok(mgr) = mgr else {
            return; // refused: fixed
        };
        let gate = Gate::new();
        let g = gate.clone();
        mgr.register_with(
            "slow",
            HandlerOptions::new()
                .requires(["x"])
                .timeout(Duration::from_secs(1))
                .max_retries(5),
            move |_| {
                g.wait();
                Ok(json!(null).into())
            },
        )
        .unwrap();
        mgr.start().unwrap();
        let id = mgr.submit("slow", json!(null)).unwrap();
        eventually("it runs", || {
            mgr.get_task(id)
                .is_some_and(|t| t.status == TaskStatus::Running)
        });
        clock.advance(Duration::from_secs(2));
        eventually("it times out", || {
            mgr.get_task(id)
                .is_some_and(|t| t.status != TaskStatus::Running)
        });
        let t = mgr.get_task(id).unwrap();
        gate.open();
        assert!(
            t.next_run_time >= T0 + 2000 + 3_600_000,
            "the retry used another pool's strategy: next run {} ms after the timeout",
            t.next_run_time.saturating_sub(T0 + 2000)
        );
    }

    /// A FIFO named like a snapshot (`snap-00000000000000000000.snap`) makes
    /// `TaskManager::open` (so `fibflow inspect`) and `log::verify` (`fibflow
    /// verify`) block forever; a segment-named FIFO hangs `verify` too. A
    /// symlink to `/dev/zero` named like a snapshot or segment makes them read
    /// until memory runs out (the OOM killer ended `fibflow verify` with 137;
    /// not tested here for the machine's sake). src/log/mod.rs
    /// `load_snapshot` (via `MmapStorage::read_file`, src/log/storage.rs) and
    /// `verify` read every matching entry with `fs::read`, without checking
    /// that it is a regular file or bounding its size.
    #[test]
    fn a_fifo_named_like_a_snapshot_hangs_open_and_verify() {
        for name in ["snap-00000000000000000000.snap", "00000000000000000000.seg"] {
            let dir = tempfile::tempdir().unwrap();
            let fifo = dir.path().join(name);
            let made = Command::new("mkfifo").arg(&fifo).status().unwrap();
            assert!(made.success());
            let d = dir.path().to_owned();
            let verified = within_for(PATIENCE, "verify", move || {
                fibflow::log::verify(&d).map(|r| r.problems.len())
            });
            assert!(verified.is_err() || verified.is_ok_and(|n| n > 0));
            let d = dir.path().to_owned();
            // Refused, or (a snapshot) passed over as not a valid snapshot:
            // either way without blocking (`within_for` fails on a hang).
            let _opened = within_for(PATIENCE, "open", move || open_dir(&d).map(|_| ()));
            std::mem::forget(dir); // a hung thread may still hold it
        }
    }

    /// Only runs as the child of `absurd_worker_counts_exhaust_memory`.
    #[test]
    fn absurd_worker_counts_child() {
        if std::env::var_os("HOSTILE_INPUT_CHILD").is_none() {
            return;
        }
        let r = TaskManager::builder()
            .memory()
            .max_concurrent_tasks(usize::MAX)
            .build();
        assert!(r.is_err(), "max_concurrent_tasks(usize::MAX) accepted");
        let r = TaskManager::builder()
            .memory()
            .pool(Pool::new("p").concurrency(usize::MAX))
            .build();
        assert!(r.is_err(), "Pool::concurrency(usize::MAX) accepted");
    }

    /// `max_concurrent_tasks(usize::MAX)` (or `Pool::concurrency(usize::MAX)`)
    /// is accepted by `Builder::validate` (src/api/builder.rs), and
    /// `TaskManager::assemble` (src/api/mod.rs) then pushes one `WorkerInfo`
    /// and one `Parker` per worker until memory runs out: `build` aborts the
    /// process ("memory allocation of 40 bytes failed", exit 134; without a
    /// memory limit, until the OOM killer). A smaller absurd count such as
    /// 100_000 builds, then `start` fails with an `Io` error after spawning
    /// ~16k threads it leaves running, a second `start` returns `Ok(())`,
    /// and the process later aborted when a worker could not get its signal
    /// stack. Run in a child process with `ulimit -v`.
    #[test]
    fn absurd_worker_counts_exhaust_memory() {
        let exe = std::env::current_exe().unwrap();
        let out = within("child", move || {
            Command::new("sh")
                .arg("-c")
                .arg("ulimit -v 4000000; exec \"$0\" --exact found_bugs::absurd_worker_counts_child --nocapture")
                .arg(exe)
                .env("HOSTILE_INPUT_CHILD", "1")
                .output()
                .unwrap()
        });
        assert!(
            out.status.success(),
            "child: {:?} {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .take(5)
                .collect::<Vec<_>>()
                .join(" | ")
        );
    }

    /// Only runs as the child of `an_empty_dir_path_leaves_a_lock_file_in_the_working_directory`.
    #[test]
    fn empty_dir_path_child() {
        if std::env::var_os("HOSTILE_INPUT_CHILD").is_none() {
            return;
        }
        let r = TaskManager::builder().dir("").build();
        assert!(r.is_err(), "dir(\"\") accepted");
    }

    /// `Builder::dir("")` is refused, but only after `Log::open`
    /// (src/log/mod.rs) has run `create_dir_all("")` (which succeeds) and
    /// `lock::lock_dir("")`, which creates `LOCK` in the process's working
    /// directory; listing "" then fails. A refused call leaves a stray file
    /// behind (SPEC §13). Run in a child process with its own working
    /// directory.
    #[test]
    fn an_empty_dir_path_leaves_a_lock_file_in_the_working_directory() {
        let cwd = tempfile::tempdir().unwrap();
        let exe = std::env::current_exe().unwrap();
        let at = cwd.path().to_owned();
        let out = within("child", move || {
            Command::new(exe)
                .args(["--exact", "found_bugs::empty_dir_path_child"])
                .current_dir(at)
                .env("HOSTILE_INPUT_CHILD", "1")
                .output()
                .unwrap()
        });
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        let left: Vec<_> = std::fs::read_dir(cwd.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(
            left.is_empty(),
            "a refused open left {left:?} in the working directory"
        );
    }

    /// Log files with CRC-valid headers carrying extreme values make opening
    /// (and `verify`) panic with arithmetic overflow in debug builds (release
    /// builds wrap silently): a lone segment `18446744073709551615.seg` whose
    /// header has `segment_id = u64::MAX` panics in src/log/mod.rs
    /// `Inner::request_next` (`segment_id + 1`); a snapshot
    /// `snap-18446744073709551615.snap` with `lsn = u64::MAX` panics in
    /// src/log/mod.rs `recover` (`frame::align_up(l + 1)`), and with a segment
    /// beside it, in `check_headers` (`l + 1`), for `verify` too. Headers are
    /// read from disk: they need checked arithmetic and a refusal.
    #[test]
    fn crafted_headers_with_extreme_values_panic() {
        use fibflow::log::segment::{segment_name, SegmentHeader};
        use fibflow::log::snapshot::{encode_snapshot, snapshot_name};
        let seg = |dir: &Path, id: u64| {
            let h = SegmentHeader {
                log_id: 7,
                segment_id: id,
                base_lsn: 0,
                segment_len: 4096,
            };
            let mut b = h.encode().to_vec();
            b.resize(4096, 0);
            std::fs::write(dir.join(segment_name(id)), b).unwrap();
        };
        let snap = |dir: &Path| {
            std::fs::write(
                dir.join(snapshot_name(u64::MAX)),
                encode_snapshot(7, u64::MAX, b""),
            )
            .unwrap();
        };
        type Make<'a> = &'a dyn Fn(&Path);
        let cases: [(&str, Make<'_>); 3] = [
            ("segment id u64::MAX", &|d| seg(d, u64::MAX)),
            ("snapshot lsn u64::MAX", &|d| snap(d)),
            ("snapshot lsn u64::MAX and a segment", &|d| {
                snap(d);
                seg(d, 0);
            }),
        ];
        let mut panicked = Vec::new();
        for (name, make) in cases {
            let dir = tempfile::tempdir().unwrap();
            make(dir.path());
            let p = dir.path().to_owned();
            let verify = std::panic::catch_unwind(|| fibflow::log::verify(&p).map(|_| ()));
            let open = std::panic::catch_unwind(|| {
                TaskManager::builder()
                    .dir(&p)
                    .segment_size(4096)
                    .build()
                    .map(|_| ())
            });
            if verify.is_err() {
                panicked.push(format!("verify: {name}"));
            }
            if open.is_err() {
                panicked.push(format!("open: {name}"));
            }
        }
        assert!(panicked.is_empty(), "panicked: {panicked:?}");
    }

    /// `fibflow demo --memory --tasks 18446744073709551615` panics with
    /// "capacity overflow" (exit 101; src/cli/demo.rs `submit_all`:
    /// `Vec::with_capacity(a.tasks)`), and `--tasks 4000000000000` aborts
    /// on a failed allocation (exit 134), instead of an error message.
    #[test]
    fn cli_demo_with_huge_task_count_panics() {
        let r = fibflow(&["demo", "--memory", "--tasks", "18446744073709551615"]);
        assert_ne!(r.code, Some(0));
    }

    /// `fibflow bench --seconds 1e300` (or `inf`) panics: "cannot convert
    /// float seconds to Duration: value is either too big or NaN"
    /// (src/cli/bench.rs `run`: `Duration::from_secs_f64(a.seconds.max(0.4))`);
    /// `--seconds NaN` and `--seconds=-1` are silently accepted.
    #[test]
    fn cli_bench_with_huge_seconds_panics() {
        for s in ["1e300", "inf"] {
            let r = fibflow(&["bench", "--seconds", s]);
            assert_ne!(r.code, Some(0), "{s}");
        }
    }
}

/// The last bug this file found, fixed by sealing a closed log.
mod sealed_log {
    use super::*;

    /// Found: a bit flip in the part of a cleanly stopped log written after
    /// the last recorded sync was taken for a torn tail: `log::verify` (and `fibflow
    /// verify`, exit 0 "ok") reports only a torn tail, and opening silently
    /// cuts every record from the flip on, so acknowledged completions are
    /// lost and those tasks run again (SPEC §12). With `fibflow demo --tasks
    /// 1000` this window is ~70% of the log: one flipped bit at offset 100000
    /// turned 973 completed tasks back into pending ones. Cause:
    /// src/log/recovery.rs `scan_with`/`search_after` accept as evidence only
    /// a later frame whose `stable` field exceeds the damaged LSN, and nothing
    /// records the final synced watermark when the log is flushed and closed
    /// (src/log/mod.rs), so records synced by the last group commit never
    /// get evidence. (The doc comment's claim that "the record itself" is
    /// evidence does not hold: a frame's `stable` predates its own sync.)
    #[test]
    fn a_bit_flip_in_the_acknowledged_tail_is_taken_for_a_torn_tail() {
        use fibflow::log::frame::{decode_frame, FrameKind};
        use fibflow::log::segment::SEGMENT_HEADER_LEN;
        let dir = tempfile::tempdir().unwrap();
        let ids = {
            let mgr = open_dir(dir.path()).unwrap();
            mgr.register("h", ok_handler).unwrap();
            let batch = (0..300).map(|i| ("h".to_owned(), json!(i), SubmitOptions::new()));
            let ids = mgr.submit_batch(batch).unwrap();
            mgr.start().unwrap();
            for id in &ids {
                assert_eq!(
                    mgr.wait(*id, PATIENCE).unwrap().status,
                    TaskStatus::Completed
                );
            }
            mgr.stop(PATIENCE).unwrap();
            ids
        };
        let seg = dir.path().join("00000000000000000000.seg");
        let mut bytes = std::fs::read(&seg).unwrap();
        let mut frames = Vec::new();
        let mut at = SEGMENT_HEADER_LEN as usize;
        while let Ok(f) = decode_frame(&bytes[at..]) {
            frames.push((at, f.lsn, f.stable, f.kind == FrameKind::Record));
            at += f.frame_len as usize;
        }
        // The last record, synced by the last group commit and followed only
        // by the seal that closing the log wrote.
        let (target, ..) = *frames.iter().rev().find(|f| f.3).unwrap();
        let after = frames.iter().filter(|f| f.0 > target && f.3).count();
        bytes[target + 40] ^= 0x10;
        std::fs::write(&seg, &bytes).unwrap();
        let report = fibflow::log::verify(dir.path()).unwrap();
        let corrupt = report
            .problems
            .iter()
            .any(|p| !p.reason.starts_with("torn tail"));
        let reopened = open_dir(dir.path());
        if let Ok(m) = &reopened {
            let done = ids
                .iter()
                .filter(|id| {
                    m.get_task(**id)
                        .is_some_and(|t| t.status == TaskStatus::Completed)
                })
                .count();
            assert_eq!(
                done,
                ids.len(),
                "open cut {after} acknowledged records after the flip; verify corrupt = {corrupt}: {:?}",
                report.problems
            );
        }
        assert!(
            corrupt,
            "verify called a flipped acknowledged record a torn tail"
        );
    }
}
