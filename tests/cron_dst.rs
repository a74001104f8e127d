//! Cron scheduling across daylight-saving transitions (black box).
//! Manual clocks, named zones; conditions with generous deadlines, never sleeps.

mod common;

use chrono::{TimeZone as _, Utc};
use common::{eventually, PATIENCE};
use fibflow::{
    CatchUp, Clock, HandlerOptions, ManualClock, SubmitOptions, TaskId, TaskManager, TaskStatus,
    TimeZone,
};
use serde_json::json;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const MIN: u64 = 60_000;
const HOUR: u64 = 3_600_000;

fn ms(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> u64 {
    Utc.with_ymd_and_hms(y, mo, d, h, mi, s)
        .unwrap()
        .timestamp_millis() as u64
}

fn show(t: u64) -> String {
    Utc.timestamp_millis_opt(t as i64)
        .unwrap()
        .format("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

fn shows(ts: &[u64]) -> Vec<String> {
    ts.iter().map(|t| show(*t)).collect()
}

fn zoned(start: u64, zone: &str, catch_up: CatchUp) -> (TaskManager, Arc<ManualClock>) {
    let clock = ManualClock::new(start);
    let mgr = TaskManager::builder()
        .memory()
        .clock(clock.clone())
        .time_zone(TimeZone::from_name(zone).unwrap())
        .catch_up(catch_up)
        .max_concurrent_tasks(2)
        .build()
        .unwrap();
    (mgr, clock)
}

fn durable(
    dir: &std::path::Path,
    clock: &Arc<ManualClock>,
    zone: &str,
    c: CatchUp,
) -> fibflow::Builder {
    TaskManager::builder()
        .dir(dir)
        .segment_size(1 << 20)
        .clock(clock.clone())
        .time_zone(TimeZone::from_name(zone).unwrap())
        .catch_up(c)
        .max_concurrent_tasks(2)
}

fn cron(expr: &str) -> SubmitOptions {
    SubmitOptions::new().cron(expr)
}

/// A never-started manager used to ask "next occurrence strictly after now".
struct Probe {
    mgr: TaskManager,
    clock: Arc<ManualClock>,
}

impl Probe {
    fn new(zone: &str) -> Probe {
        let (mgr, clock) = zoned(ms(2024, 1, 1, 0, 0, 0), zone, CatchUp::Once);
        mgr.register("p", |_| Ok(json!(null).into())).unwrap();
        Probe { mgr, clock }
    }
    fn next(&self, expr: &str, now: u64) -> fibflow::Result<u64> {
        self.clock.set(now);
        let id = self.mgr.submit_with("p", json!(null), cron(expr))?;
        let t = self.mgr.get_task(id).unwrap().next_run_time;
        Ok(t)
    }
    /// Successive occurrences starting strictly after `now`.
    fn seq(&self, expr: &str, now: u64, n: usize) -> Vec<u64> {
        let mut out = Vec::new();
        let mut at = now;
        for _ in 0..n {
            at = self
                .next(expr, at)
                .unwrap_or_else(|e| panic!("{expr}: {e}"));
            out.push(at);
        }
        out
    }
}

fn round_done(mgr: &TaskManager, id: TaskId, n: usize) {
    eventually(&format!("round {n} done"), || {
        let a = mgr.attempts(id).unwrap();
        a.len() == n
            && a.last().unwrap().outcome.is_some()
            && mgr.get_task(id).unwrap().status == TaskStatus::Pending
    });
}

/// Drives `n` rounds of a started cron task by moving the clock to each
/// next_run_time; returns the instants the rounds ran at.
fn drive(mgr: &TaskManager, clock: &ManualClock, id: TaskId, n: usize) -> Vec<u64> {
    let base = mgr.attempts(id).unwrap().len();
    let mut out = Vec::new();
    for i in 0..n {
        let t = mgr.get_task(id).unwrap().next_run_time;
        assert!(
            t > clock.now_ms(),
            "next_run_time {} not after now",
            show(t)
        );
        out.push(t);
        clock.set(t);
        round_done(mgr, id, base + i + 1);
    }
    out
}

fn started(start: u64, zone: &str, catch_up: CatchUp) -> (TaskManager, Arc<ManualClock>) {
    let (mgr, clock) = zoned(start, zone, catch_up);
    mgr.register("c", |_| Ok(json!("ok").into())).unwrap();
    mgr.start().unwrap();
    (mgr, clock)
}

// ---------------------------------------------------------------------------
// New York: fixed time in the skipped hour and in the repeated hour
// ---------------------------------------------------------------------------

/// 2024-03-10 02:00 EST -> 03:00 EDT (07:00 UTC). "30 2 * * *" runs once at
/// 03:00 EDT on the transition day (Vixie/cronie behaviour), then resumes.
#[test]
fn ny_spring_forward_fixed_time_in_gap_runs_once_after_the_jump() {
    let (mgr, clock) = started(ms(2024, 3, 7, 12, 0, 0), "America/New_York", CatchUp::Once);
    let id = mgr
        .submit_with("c", json!(null), cron("30 2 * * *"))
        .unwrap();
    let got = drive(&mgr, &clock, id, 5);
    let want = vec![
        ms(2024, 3, 8, 7, 30, 0),
        ms(2024, 3, 9, 7, 30, 0),
        ms(2024, 3, 10, 7, 0, 0), // 03:00 EDT, right after the jump
        ms(2024, 3, 11, 6, 30, 0),
        ms(2024, 3, 12, 6, 30, 0),
    ];
    assert_eq!(shows(&got), shows(&want));
}

/// 2024-11-03 02:00 EDT -> 01:00 EST (06:00 UTC). "30 1 * * *" runs once.
#[test]
fn ny_fall_back_fixed_time_in_repeated_hour_runs_once() {
    let (mgr, clock) = started(ms(2024, 11, 1, 12, 0, 0), "America/New_York", CatchUp::Once);
    let id = mgr
        .submit_with("c", json!(null), cron("30 1 * * *"))
        .unwrap();
    let got = drive(&mgr, &clock, id, 4);
    let want = vec![
        ms(2024, 11, 2, 5, 30, 0),
        ms(2024, 11, 3, 5, 30, 0), // 01:30 EDT only
        ms(2024, 11, 4, 6, 30, 0),
        ms(2024, 11, 5, 6, 30, 0),
    ];
    assert_eq!(shows(&got), shows(&want));
}

/// Probes around the NY transitions for fixed-time expressions: submitted in
/// the middle of the transition, the first run is strictly after now and is
/// not a second run of the same wall time.
#[test]
fn ny_first_run_submitted_inside_transitions() {
    let p = Probe::new("America/New_York");
    // Just before the gap, inside the jump, right after.
    assert_eq!(
        show(p.next("30 2 * * *", ms(2024, 3, 10, 6, 59, 59)).unwrap()),
        show(ms(2024, 3, 10, 7, 0, 0))
    );
    assert_eq!(
        show(p.next("30 2 * * *", ms(2024, 3, 10, 7, 0, 0)).unwrap()),
        show(ms(2024, 3, 11, 6, 30, 0))
    );
    assert_eq!(
        show(p.next("30 2 * * *", ms(2024, 3, 10, 7, 0, 1)).unwrap()),
        show(ms(2024, 3, 11, 6, 30, 0))
    );
    // Repeated hour: at 01:30 EDT, between, at 01:00 EST, at 01:30 EST.
    for now in [
        ms(2024, 11, 3, 5, 30, 0),
        ms(2024, 11, 3, 5, 45, 0),
        ms(2024, 11, 3, 6, 0, 0),
        ms(2024, 11, 3, 6, 30, 0),
    ] {
        assert_eq!(
            show(p.next("30 1 * * *", now).unwrap()),
            show(ms(2024, 11, 4, 6, 30, 0)),
            "now {}",
            show(now)
        );
    }
    // Hourly submitted during the first pass of 01:xx: next is 01:00 EST.
    assert_eq!(
        show(p.next("0 * * * *", ms(2024, 11, 3, 5, 30, 0)).unwrap()),
        show(ms(2024, 11, 3, 6, 0, 0))
    );
    assert_eq!(
        show(p.next("0 * * * *", ms(2024, 11, 3, 6, 30, 0)).unwrap()),
        show(ms(2024, 11, 3, 7, 0, 0))
    );
}

/// A task every hour keeps firing once per real hour across both transitions.
#[test]
fn ny_hourly_rounds_once_per_real_hour_across_both_transitions() {
    let (mgr, clock) = started(ms(2024, 3, 10, 3, 30, 0), "America/New_York", CatchUp::Once);
    let id = mgr
        .submit_with("c", json!(null), cron("0 * * * *"))
        .unwrap();
    let got = drive(&mgr, &clock, id, 8);
    let want: Vec<u64> = (0..8)
        .map(|i| ms(2024, 3, 10, 4, 0, 0) + i * HOUR)
        .collect();
    assert_eq!(shows(&got), shows(&want), "spring forward");

    let (mgr, clock) = started(ms(2024, 11, 3, 2, 30, 0), "America/New_York", CatchUp::Once);
    let id = mgr
        .submit_with("c", json!(null), cron("0 * * * *"))
        .unwrap();
    let got = drive(&mgr, &clock, id, 8);
    let want: Vec<u64> = (0..8)
        .map(|i| ms(2024, 11, 3, 3, 0, 0) + i * HOUR)
        .collect();
    assert_eq!(shows(&got), shows(&want), "fall back");
}

/// Twice-daily job "0 1,13 * * *" on the fall-back day. Vixie cron / cronie
/// treat it as a fixed-time job (neither minute nor hour starts with `*`) and
/// run the 01:00 round once; running it at 01:00 EDT and again at 01:00 EST is
/// running twice in the repeated hour.
#[test]
fn ny_fall_back_hour_list_runs_once_in_the_repeated_hour() {
    let p = Probe::new("America/New_York");
    let got = p.seq("0 1,13 * * *", ms(2024, 11, 2, 12, 0, 0), 4);
    let want = vec![
        ms(2024, 11, 2, 17, 0, 0), // 13:00 EDT
        ms(2024, 11, 3, 5, 0, 0),  // 01:00 EDT
        ms(2024, 11, 3, 18, 0, 0), // 13:00 EST
        ms(2024, 11, 4, 6, 0, 0),  // 01:00 EST
    ];
    assert_eq!(shows(&got), shows(&want));
}

/// "0,30 2 * * *" (two fixed times, both in the skipped hour). Vixie cron /
/// cronie run fixed-time jobs of the skipped hour right after the jump; the
/// engine skips 2024-03-10 entirely.
#[test]
fn ny_spring_forward_minute_list_in_gap_does_not_skip_the_day() {
    let p = Probe::new("America/New_York");
    let got = p.seq("0,30 2 * * *", ms(2024, 3, 9, 12, 0, 0), 3);
    assert!(
        got.iter()
            .any(|t| (ms(2024, 3, 10, 5, 0, 0)..ms(2024, 3, 11, 4, 0, 0)).contains(t)),
        "no round at all on 2024-03-10 (NY): {:?}",
        shows(&got)
    );
}

// ---------------------------------------------------------------------------
// Lord Howe: 30-minute shift
// ---------------------------------------------------------------------------

/// Lord Howe: 2024-10-06 02:00 +10:30 -> 02:30 +11 (2024-10-05T15:30Z);
/// 2024-04-07 02:00 +11 -> 01:30 +10:30 (2024-04-06T15:00Z).
#[test]
fn lord_howe_half_hour_shift() {
    let p = Probe::new("Australia/Lord_Howe");
    // 02:15 is skipped: run once at 02:30 LHDT.
    let got = p.seq("15 2 * * *", ms(2024, 10, 4, 12, 0, 0), 3);
    let want = vec![
        ms(2024, 10, 4, 15, 45, 0), // 10-05 02:15 +10:30
        ms(2024, 10, 5, 15, 30, 0), // 10-06 02:30 +11 (end of gap)
        ms(2024, 10, 6, 15, 15, 0), // 10-07 02:15 +11
    ];
    assert_eq!(shows(&got), shows(&want), "gap");
    // 01:45 repeats: once.
    let got = p.seq("45 1 * * *", ms(2024, 4, 5, 12, 0, 0), 3);
    let want = vec![
        ms(2024, 4, 5, 14, 45, 0), // 04-06 01:45 +11
        ms(2024, 4, 6, 14, 45, 0), // 04-07 01:45 +11 (first instance)
        ms(2024, 4, 7, 15, 15, 0), // 04-08 01:45 +10:30
    ];
    assert_eq!(shows(&got), shows(&want), "overlap");
    // Every 10 minutes: every 10 real minutes across the fall-back.
    let got = p.seq("*/10 * * * *", ms(2024, 4, 6, 14, 25, 0), 8);
    let want: Vec<u64> = (0..8)
        .map(|i| ms(2024, 4, 6, 14, 30, 0) + i * 10 * MIN)
        .collect();
    assert_eq!(shows(&got), shows(&want), "every 10 min, fall back");
    // Every 10 minutes across the spring-forward: the real 30 minutes vanish only.
    let got = p.seq("*/10 * * * *", ms(2024, 10, 5, 15, 5, 0), 4);
    let want = vec![
        ms(2024, 10, 5, 15, 10, 0), // 01:40 +10:30
        ms(2024, 10, 5, 15, 20, 0), // 01:50
        ms(2024, 10, 5, 15, 30, 0), // 02:30 +11
        ms(2024, 10, 5, 15, 40, 0),
    ];
    assert_eq!(shows(&got), shows(&want), "every 10 min, spring forward");
    // Hourly across both: no duplicate, no backwards step.
    let got = p.seq("0 * * * *", ms(2024, 4, 6, 13, 30, 0), 3);
    let want = vec![
        ms(2024, 4, 6, 14, 0, 0),  // 01:00 +11
        ms(2024, 4, 6, 15, 30, 0), // 02:00 +10:30
        ms(2024, 4, 6, 16, 30, 0),
    ];
    assert_eq!(shows(&got), shows(&want), "hourly, fall back");
}

/// Lord Howe rounds driven on a started manager across the fall-back.
#[test]
fn lord_howe_rounds_across_fall_back_run_once_each() {
    let (mgr, clock) = started(
        ms(2024, 4, 6, 14, 50, 0),
        "Australia/Lord_Howe",
        CatchUp::Once,
    );
    let id = mgr
        .submit_with("c", json!(null), cron("*/15 * * * *"))
        .unwrap();
    let got = drive(&mgr, &clock, id, 6);
    let want: Vec<u64> = (0..6)
        .map(|i| ms(2024, 4, 6, 15, 0, 0) + i * 15 * MIN)
        .collect();
    assert_eq!(shows(&got), shows(&want));
}

// ---------------------------------------------------------------------------
// Berlin: seconds, L and last weekday on transition days
// ---------------------------------------------------------------------------

/// Berlin 2024-03-31 02:00 CET -> 03:00 CEST (01:00Z), 2024-10-27 03:00 CEST ->
/// 02:00 CET (01:00Z).
#[test]
fn berlin_six_field_fixed_time_across_transitions() {
    let p = Probe::new("Europe/Berlin");
    let got = p.seq("30 30 2 * * *", ms(2024, 3, 30, 0, 0, 0), 3);
    let want = vec![
        ms(2024, 3, 30, 1, 30, 30),
        ms(2024, 3, 31, 1, 0, 0), // end of gap (03:00 CEST)
        ms(2024, 4, 1, 0, 30, 30),
    ];
    assert_eq!(shows(&got), shows(&want), "spring forward");
    let got = p.seq("30 30 2 * * *", ms(2024, 10, 26, 0, 0, 0), 3);
    let want = vec![
        ms(2024, 10, 26, 0, 30, 30),
        ms(2024, 10, 27, 0, 30, 30), // first 02:30:30 (CEST) only
        ms(2024, 10, 28, 1, 30, 30),
    ];
    assert_eq!(shows(&got), shows(&want), "fall back");
    // Every 15 seconds across the fall-back: every 15 real seconds.
    let got = p.seq("*/15 * * * * *", ms(2024, 10, 27, 0, 59, 30), 6);
    let want: Vec<u64> = (0..6)
        .map(|i| ms(2024, 10, 27, 0, 59, 45) + i * 15_000)
        .collect();
    assert_eq!(shows(&got), shows(&want), "every 15 s, fall back");
    let got = p.seq("*/15 * * * * *", ms(2024, 3, 31, 0, 59, 30), 6);
    let want: Vec<u64> = (0..6)
        .map(|i| ms(2024, 3, 31, 0, 59, 45) + i * 15_000)
        .collect();
    assert_eq!(shows(&got), shows(&want), "every 15 s, spring forward");
}

/// The European transition days are last Sundays; 2024-03-31 is also the last
/// day of March and 2027-10-31 the last day of October.
#[test]
fn berlin_last_day_and_last_weekday_on_transition_days() {
    let p = Probe::new("Europe/Berlin");
    let got = p.seq("30 2 * * 0L", ms(2024, 3, 1, 0, 0, 0), 2);
    assert_eq!(
        shows(&got),
        shows(&[ms(2024, 3, 31, 1, 0, 0), ms(2024, 4, 28, 0, 30, 0)]),
        "0L spring"
    );
    let got = p.seq("30 2 * * 0L", ms(2024, 10, 1, 0, 0, 0), 2);
    assert_eq!(
        shows(&got),
        shows(&[ms(2024, 10, 27, 0, 30, 0), ms(2024, 11, 24, 1, 30, 0)]),
        "0L fall"
    );
    let got = p.seq("30 2 L * *", ms(2024, 3, 1, 0, 0, 0), 2);
    assert_eq!(
        shows(&got),
        shows(&[ms(2024, 3, 31, 1, 0, 0), ms(2024, 4, 30, 0, 30, 0)]),
        "L spring"
    );
    let got = p.seq("30 2 L 10 *", ms(2027, 10, 1, 0, 0, 0), 2);
    assert_eq!(
        shows(&got),
        shows(&[ms(2027, 10, 31, 0, 30, 0), ms(2028, 10, 31, 1, 30, 0)]),
        "L fall 2027"
    );
}

/// Israel springs forward on a Friday (2024-03-29, the last Friday of March,
/// 02:00 IST -> 03:00 IDT at 00:00Z).
#[test]
fn jerusalem_last_friday_on_the_transition_day() {
    let p = Probe::new("Asia/Jerusalem");
    let got = p.seq("30 2 * * 5L", ms(2024, 3, 1, 0, 0, 0), 2);
    assert_eq!(
        shows(&got),
        shows(&[ms(2024, 3, 29, 0, 0, 0), ms(2024, 4, 25, 23, 30, 0)]),
        "5L spring"
    );
}

// ---------------------------------------------------------------------------
// Feb 29 and impossible dates
// ---------------------------------------------------------------------------

#[test]
fn feb_29_next_leap_year_and_impossible_dates_refused_quickly() {
    let p = Probe::new("America/New_York");
    assert_eq!(
        show(p.next("0 0 29 2 *", ms(2025, 3, 1, 0, 0, 0)).unwrap()),
        show(ms(2028, 2, 29, 5, 0, 0))
    );
    assert_eq!(
        show(p.next("0 0 29 2 *", ms(2024, 2, 29, 5, 0, 0)).unwrap()),
        show(ms(2028, 2, 29, 5, 0, 0))
    );
    // 2100 is not a leap year: from 2097 the next is 2104.
    assert_eq!(
        show(p.next("0 0 29 2 *", ms(2097, 1, 1, 0, 0, 0)).unwrap()),
        show(ms(2104, 2, 29, 5, 0, 0))
    );
    assert_eq!(
        show(p.next("59 59 23 29 2 *", ms(2097, 1, 1, 0, 0, 0)).unwrap()),
        show(ms(2104, 3, 1, 4, 59, 59))
    );
    for expr in [
        "0 0 31 2 *",
        "0 0 30 2 *",
        "0 0 31 4,6,9,11 *",
        "0 0 30,31 2 *",
    ] {
        let t = Instant::now();
        let r = p.next(expr, ms(2025, 1, 1, 0, 0, 0));
        assert!(r.is_err(), "{expr} accepted: {}", show(r.unwrap()));
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "{expr} took {:?}",
            t.elapsed()
        );
    }
}

// ---------------------------------------------------------------------------
// Invariants: strictly after now, consistent, non-decreasing, near transitions
// ---------------------------------------------------------------------------

#[test]
fn next_occurrence_is_strictly_after_now_and_consistent_near_transitions() {
    let zones: [(&str, u64, u64); 4] = [
        (
            "America/New_York",
            ms(2024, 3, 10, 5, 0, 0),
            ms(2024, 11, 3, 4, 0, 0),
        ),
        (
            "Europe/Berlin",
            ms(2024, 3, 30, 23, 0, 0),
            ms(2024, 10, 26, 23, 0, 0),
        ),
        (
            "Australia/Lord_Howe",
            ms(2024, 10, 5, 13, 0, 0),
            ms(2024, 4, 6, 12, 30, 0),
        ),
        (
            "Antarctica/Casey",
            ms(2010, 3, 4, 12, 0, 0),
            ms(2009, 10, 17, 15, 0, 0),
        ),
    ];
    let exprs = [
        "30 2 * * *",
        "30 1 * * *",
        "0 * * * *",
        "*/7 * * * *",
        "15,45 1-3 * * *",
        "0 0 * * *",
        "20 30 2 * * *",
    ];
    let mut bad = Vec::new();
    for (zone, a, b) in zones {
        let p = Probe::new(zone);
        for expr in exprs {
            for base in [a, b] {
                let mut prev = 0;
                let mut now = base;
                while now < base + 5 * HOUR {
                    let n = p.next(expr, now).unwrap();
                    if n <= now {
                        bad.push(format!(
                            "{zone} {expr}: next({}) = {} not after",
                            show(now),
                            show(n)
                        ));
                    }
                    if n < prev {
                        bad.push(format!(
                            "{zone} {expr}: next({}) = {} < previous {}",
                            show(now),
                            show(n),
                            show(prev)
                        ));
                    }
                    // Consistency: asking just before the answer gives the same answer.
                    if n - 1000 > now {
                        let m = p.next(expr, n - 1000).unwrap();
                        if m != n {
                            bad.push(format!(
                                "{zone} {expr}: next({}) = {} but next({}) = {}",
                                show(now),
                                show(n),
                                show(n - 1000),
                                show(m)
                            ));
                        }
                    }
                    prev = n;
                    now += 7 * MIN + 13_000;
                }
            }
        }
    }
    assert!(bad.is_empty(), "{bad:#?}");
}

/// Antarctica/Casey fell back 3 hours (+11 -> +8) on 2010-03-04 at 16:00Z
/// (per tzdata; the largest post-1970 fall-back the scan accounts for).
#[test]
fn casey_three_hour_fall_back_hourly_once_per_real_hour() {
    let p = Probe::new("Antarctica/Casey");
    let got = p.seq("0 * * * *", ms(2010, 3, 4, 13, 30, 0), 8);
    let want: Vec<u64> = (0..8)
        .map(|i| ms(2010, 3, 4, 14, 0, 0) + i * HOUR)
        .collect();
    assert_eq!(shows(&got), shows(&want));
}

// ---------------------------------------------------------------------------
// Catch-up after downtime across a DST change (durable)
// ---------------------------------------------------------------------------

fn catch_up_case(policy: CatchUp) -> (Vec<u64>, u64, usize) {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(ms(2024, 3, 7, 12, 0, 0));
    let zone = "America/New_York";
    let id = {
        let mgr = durable(dir.path(), &clock, zone, policy).build().unwrap();
        mgr.register("c", |_| Ok(json!("r").into())).unwrap();
        let id = mgr
            .submit_with("c", json!(null), cron("30 2 * * *"))
            .unwrap();
        assert_eq!(
            mgr.get_task(id).unwrap().next_run_time,
            ms(2024, 3, 8, 7, 30, 0)
        );
        mgr.stop(PATIENCE).unwrap();
        id
    };
    // Down until 2024-03-11 08:00 EDT: missed 03-08, 03-09, 03-10 (gap), 03-11.
    clock.set(ms(2024, 3, 11, 12, 0, 0));
    let runs = Arc::new(AtomicUsize::new(0));
    let mgr = common::build_unlocked(durable(dir.path(), &clock, zone, policy)).unwrap();
    let r = runs.clone();
    mgr.register("c", move |_| {
        r.fetch_add(1, Ordering::SeqCst);
        Ok(json!("r").into())
    })
    .unwrap();
    mgr.start().unwrap();
    let want_runs = match policy {
        CatchUp::Once => 1,
        CatchUp::Skip => 0,
        CatchUp::All => 4,
    };
    eventually("caught up", || {
        let a = mgr.attempts(id).unwrap();
        runs.load(Ordering::SeqCst) == want_runs
            && a.len() == want_runs
            && a.iter().all(|x| x.outcome.is_some())
            && mgr.get_task(id).unwrap().status == TaskStatus::Pending
            && mgr.get_task(id).unwrap().next_run_time > ms(2024, 3, 11, 12, 0, 0)
    });
    // No burst: nothing more runs without the clock moving.
    assert!(mgr.wait(id, Duration::from_millis(100)).is_err());
    let starts: Vec<u64> = mgr
        .attempts(id)
        .unwrap()
        .iter()
        .map(|a| a.started_at)
        .collect();
    let next = mgr.get_task(id).unwrap().next_run_time;
    let n = runs.load(Ordering::SeqCst);
    mgr.stop(PATIENCE).unwrap();
    (starts, next, n)
}

#[test]
fn catch_up_once_across_spring_forward() {
    let (starts, next, n) = catch_up_case(CatchUp::Once);
    assert_eq!(n, 1);
    assert_eq!(shows(&starts), shows(&[ms(2024, 3, 11, 12, 0, 0)]));
    assert_eq!(show(next), show(ms(2024, 3, 12, 6, 30, 0)));
}

#[test]
fn catch_up_skip_across_spring_forward() {
    let (starts, next, n) = catch_up_case(CatchUp::Skip);
    assert_eq!(n, 0);
    assert!(starts.is_empty());
    assert_eq!(show(next), show(ms(2024, 3, 12, 6, 30, 0)));
}

#[test]
fn catch_up_all_across_spring_forward_runs_each_missed_occurrence_once() {
    let (starts, next, n) = catch_up_case(CatchUp::All);
    assert_eq!(n, 4);
    assert_eq!(starts.len(), 4);
    assert_eq!(show(next), show(ms(2024, 3, 12, 6, 30, 0)));
}

/// Hourly, down across the fall-back with catch-up All: one round per real
/// missed hour (the repeated 01:00 counts twice, it is two real hours).
#[test]
fn catch_up_all_hourly_across_fall_back() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(ms(2024, 11, 3, 3, 30, 0));
    let zone = "America/New_York";
    let id = {
        let mgr = durable(dir.path(), &clock, zone, CatchUp::All)
            .build()
            .unwrap();
        mgr.register("c", |_| Ok(json!("r").into())).unwrap();
        let id = mgr
            .submit_with("c", json!(null), cron("0 * * * *"))
            .unwrap();
        mgr.stop(PATIENCE).unwrap();
        id
    };
    clock.set(ms(2024, 11, 3, 9, 30, 0)); // missed 04,05,06,07,08,09 Z
    let mgr = common::build_unlocked(durable(dir.path(), &clock, zone, CatchUp::All)).unwrap();
    mgr.register("c", |_| Ok(json!("r").into())).unwrap();
    mgr.start().unwrap();
    round_done(&mgr, id, 6);
    assert!(mgr.wait(id, Duration::from_millis(100)).is_err());
    assert_eq!(mgr.attempts(id).unwrap().len(), 6);
    assert_eq!(
        show(mgr.get_task(id).unwrap().next_run_time),
        show(ms(2024, 11, 3, 10, 0, 0))
    );
    mgr.stop(PATIENCE).unwrap();
}

// ---------------------------------------------------------------------------
// Retry and exhaustion across a DST change
// ---------------------------------------------------------------------------

/// "30 1 * * *" fails at 01:30 EDT, its retry (1 h later) runs at 01:30 EST and
/// succeeds: that is the same round, the next is 2024-11-04 01:30 EST.
#[test]
fn retry_across_fall_back_then_next_day() {
    let (mgr, clock) = zoned(ms(2024, 11, 2, 12, 0, 0), "America/New_York", CatchUp::Once);
    let runs = Arc::new(AtomicUsize::new(0));
    let r = runs.clone();
    mgr.register_with(
        "c",
        HandlerOptions::new()
            .max_retries(3)
            .retry_interval(Duration::from_secs(3600)),
        move |_| {
            if r.fetch_add(1, Ordering::SeqCst) == 0 {
                Err("down".into())
            } else {
                Ok(json!("up").into())
            }
        },
    )
    .unwrap();
    mgr.start().unwrap();
    let id = mgr
        .submit_with("c", json!(null), cron("30 1 * * *"))
        .unwrap();
    assert_eq!(
        mgr.get_task(id).unwrap().next_run_time,
        ms(2024, 11, 3, 5, 30, 0)
    );
    clock.set(ms(2024, 11, 3, 5, 30, 0));
    eventually("failed", || {
        mgr.get_task(id).unwrap().status == TaskStatus::Failed
    });
    assert_eq!(
        show(mgr.get_task(id).unwrap().next_run_time),
        show(ms(2024, 11, 3, 6, 30, 0))
    );
    clock.set(ms(2024, 11, 3, 6, 30, 0));
    round_done(&mgr, id, 2);
    let t = mgr.get_task(id).unwrap();
    assert_eq!(show(t.next_run_time), show(ms(2024, 11, 4, 6, 30, 0)));
    assert_eq!(t.retry_count, 0);
    assert_eq!(runs.load(Ordering::SeqCst), 2);
}

/// Hourly task whose retry (90 min) crosses the fall-back: after the success
/// the next round is the next occurrence strictly after the round's end.
#[test]
fn hourly_retry_across_fall_back_resumes_after_round_end() {
    let (mgr, clock) = zoned(ms(2024, 11, 3, 4, 30, 0), "America/New_York", CatchUp::Once);
    let runs = Arc::new(AtomicUsize::new(0));
    let r = runs.clone();
    mgr.register_with(
        "c",
        HandlerOptions::new()
            .max_retries(3)
            .retry_interval(Duration::from_secs(90 * 60)),
        move |_| {
            if r.fetch_add(1, Ordering::SeqCst) == 0 {
                Err("down".into())
            } else {
                Ok(json!("up").into())
            }
        },
    )
    .unwrap();
    mgr.start().unwrap();
    let id = mgr
        .submit_with("c", json!(null), cron("0 * * * *"))
        .unwrap();
    clock.set(ms(2024, 11, 3, 5, 0, 0)); // 01:00 EDT
    eventually("failed", || {
        mgr.get_task(id).unwrap().status == TaskStatus::Failed
    });
    let retry = mgr.get_task(id).unwrap().next_run_time;
    assert_eq!(show(retry), show(ms(2024, 11, 3, 6, 30, 0)));
    clock.set(retry);
    round_done(&mgr, id, 2);
    assert_eq!(
        show(mgr.get_task(id).unwrap().next_run_time),
        show(ms(2024, 11, 3, 7, 0, 0))
    );
    let got = drive(&mgr, &clock, id, 2);
    assert_eq!(
        shows(&got),
        shows(&[ms(2024, 11, 3, 7, 0, 0), ms(2024, 11, 3, 8, 0, 0)])
    );
}

/// Exhaustion in the spring-forward round: paused; resumed later, the round
/// runs now and the next is the next occurrence after the round's end.
#[test]
fn exhaustion_in_gap_round_then_resume() {
    let (mgr, clock) = zoned(ms(2024, 3, 9, 12, 0, 0), "America/New_York", CatchUp::Once);
    let fail = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let f = fail.clone();
    mgr.register_with(
        "c",
        HandlerOptions::new()
            .max_retries(2)
            .retry_interval(Duration::from_secs(600)),
        move |_| {
            if f.load(Ordering::SeqCst) {
                Err("down".into())
            } else {
                Ok(json!("up").into())
            }
        },
    )
    .unwrap();
    mgr.start().unwrap();
    let id = mgr
        .submit_with("c", json!(null), cron("30 2 * * *"))
        .unwrap();
    let first = mgr.get_task(id).unwrap().next_run_time;
    assert_eq!(show(first), show(ms(2024, 3, 10, 7, 0, 0)));
    clock.set(first);
    eventually("failed", || {
        mgr.get_task(id).unwrap().status == TaskStatus::Failed
    });
    clock.set(first + 10 * MIN);
    let t = mgr.wait(id, PATIENCE).unwrap();
    assert_eq!(t.status, TaskStatus::Paused);
    // Paused: later occurrences do not run.
    clock.set(ms(2024, 3, 11, 7, 0, 0));
    assert_eq!(mgr.attempts(id).unwrap().len(), 2);
    fail.store(false, Ordering::SeqCst);
    mgr.resume_task(id, None).unwrap();
    round_done(&mgr, id, 3);
    assert_eq!(
        show(mgr.get_task(id).unwrap().next_run_time),
        show(ms(2024, 3, 12, 6, 30, 0))
    );
}

/// SPEC §7 / CronSchedule doc: weekday 7 is Sunday, and `nL` is the last
/// weekday n of the month. "7L" (last Sunday) and "7#1" (first Sunday) must
/// behave like "0L" / "0#1".
#[test]
fn weekday_seven_is_sunday_in_last_and_nth_forms() {
    let p = Probe::new("UTC");
    let now = ms(2024, 3, 1, 0, 0, 0);
    let mut bad = Vec::new();
    for (seven, zero) in [
        ("0 12 * * 7L", "0 12 * * 0L"),
        ("0 12 * * 7#1", "0 12 * * 0#1"),
        ("0 12 * * SUNL", "0 12 * * 0L"),
        ("0 12 * * 6-7", "0 12 * * 0,6"),
    ] {
        let want = p.next(zero, now).unwrap();
        match p.next(seven, now) {
            Ok(got) if got == want => {}
            Ok(got) => bad.push(format!("{seven}: {} want {}", show(got), show(want))),
            Err(e) => bad.push(format!("{seven}: {e} (want {})", show(want))),
        }
    }
    assert!(bad.is_empty(), "{bad:#?}");
}
