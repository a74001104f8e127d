//! Cron schedules, the catch-up policy for missed cron rounds, and retry backoff.
//!
//! Everything here is pure: the current time is always an argument (milliseconds
//! since the Unix epoch, `u64`) and nothing reads the clock. The module depends on
//! no other part of the crate.
//!
//! * [`CronSchedule`] parses a 5- or 6-field cron expression in a [`TimeZone`] and
//!   answers "when is the next occurrence strictly after this instant?".
//! * [`CatchUp`], [`catch_up_next`] and [`next_round`] decide when a cron task
//!   runs after a restart and after each successful round.
//! * [`RetryStrategy`] computes the delay before a retry (fixed, linear or
//!   exponential backoff with an optional cap and jitter).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use chrono::offset::LocalResult;
use chrono::{DateTime, NaiveDateTime, Offset, TimeDelta, TimeZone as _, Timelike, Utc};
use chrono_tz::Tz;
use croner::parser::{CronParser, Seconds, Year};
use croner::Cron;
use serde::{Deserialize, Serialize};

/// Errors raised while building schedules or retry strategies.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ScheduleError {
    /// The cron expression could not be parsed or uses an unsupported feature.
    #[error(
        "Invalid cron expression: {expr} ({reason}; expected `minute hour day-of-month month \
         day-of-week`, optionally preceded by a seconds field)"
    )]
    InvalidCron {
        /// The expression as the user wrote it.
        expr: String,
        /// What is wrong with it and how to fix it.
        reason: String,
    },
    /// The time-zone name is neither `local` nor a known IANA zone.
    #[error(
        "unknown time zone `{name}`: use `local` or an IANA zone name such as `UTC` or \
         `Europe/Paris` (names are case-sensitive)"
    )]
    UnknownTimeZone {
        /// The name that was given.
        name: String,
    },
    /// The retry strategy has an out-of-range parameter.
    #[error("invalid retry strategy: {reason}")]
    InvalidRetryStrategy {
        /// What is wrong and how to fix it.
        reason: String,
    },
}

// ---------------------------------------------------------------------------
// Time zones
// ---------------------------------------------------------------------------

/// The time zone whose wall clock a cron expression is read in.
///
/// Serialized as its name: `"local"` or an IANA name such as `"Europe/Paris"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum TimeZone {
    /// The system's local time zone (the default).
    #[default]
    Local,
    /// A named IANA time zone.
    Named(Tz),
}

impl TimeZone {
    /// Parses `"local"` (any case) or an IANA zone name such as `"UTC"` or
    /// `"Europe/Paris"` (case-sensitive).
    pub fn from_name(name: &str) -> Result<Self, ScheduleError> {
        let trimmed = name.trim();
        if trimmed.eq_ignore_ascii_case("local") {
            return Ok(Self::Local);
        }
        trimmed
            .parse::<Tz>()
            .map(Self::Named)
            .map_err(|_| ScheduleError::UnknownTimeZone {
                name: name.to_owned(),
            })
    }

    /// The zone's name: `"local"` or the IANA name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Local => "local",
            Self::Named(tz) => tz.name(),
        }
    }

    /// UTC offset in seconds in force at `instant` (Unix seconds).
    fn offset_at(self, instant: i64) -> Option<i64> {
        let utc = DateTime::from_timestamp(instant, 0)?;
        let secs = match self {
            Self::Local => utc
                .with_timezone(&chrono::Local)
                .offset()
                .fix()
                .local_minus_utc(),
            Self::Named(tz) => utc.with_timezone(&tz).offset().fix().local_minus_utc(),
        };
        Some(i64::from(secs))
    }

    /// Wall-clock time at `instant` (Unix seconds).
    fn wall_clock(self, instant: i64) -> Option<NaiveDateTime> {
        let utc = DateTime::from_timestamp(instant, 0)?.naive_utc();
        utc.checked_add_signed(TimeDelta::try_seconds(self.offset_at(instant)?)?)
    }

    /// The instants (Unix seconds) at which the wall clock shows `naive`.
    fn resolve(self, naive: NaiveDateTime) -> LocalResult<i64> {
        match self {
            Self::Local => chrono::Local
                .from_local_datetime(&naive)
                .map(|d| d.timestamp()),
            Self::Named(tz) => tz.from_local_datetime(&naive).map(|d| d.timestamp()),
        }
    }
}

impl FromStr for TimeZone {
    type Err = ScheduleError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::from_name(s)
    }
}

impl TryFrom<String> for TimeZone {
    type Error = ScheduleError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::from_name(&s)
    }
}

impl From<TimeZone> for String {
    fn from(tz: TimeZone) -> Self {
        tz.name().to_owned()
    }
}

impl fmt::Display for TimeZone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

// ---------------------------------------------------------------------------
// Cron expressions
// ---------------------------------------------------------------------------

/// Largest change of a zone's UTC offset at one transition that the DST handling
/// accounts for (real zones shift by at most 2 hours outside date-line moves).
const MAX_SHIFT_SECS: i64 = 3 * 3600;
/// Upper bound on wall-clock candidates examined by one `next_after` call.
const MAX_CANDIDATES: u32 = 100_000;

/// One field of a cron expression.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Second,
    Minute,
    Hour,
    DayOfMonth,
    Month,
    DayOfWeek,
}

impl Field {
    const ALL: [Self; 6] = [
        Self::Second,
        Self::Minute,
        Self::Hour,
        Self::DayOfMonth,
        Self::Month,
        Self::DayOfWeek,
    ];

    fn label(self) -> &'static str {
        match self {
            Self::Second => "second (0-59)",
            Self::Minute => "minute (0-59)",
            Self::Hour => "hour (0-23)",
            Self::DayOfMonth => "day-of-month (1-31 or L)",
            Self::Month => "month (1-12 or JAN-DEC)",
            Self::DayOfWeek => "day-of-week (0-7 or SUN-SAT, 0 and 7 are Sunday)",
        }
    }

    /// Characters allowed besides digits and `* , - /` (after name substitution).
    fn extra_chars(self) -> &'static str {
        match self {
            Self::DayOfMonth => "L?",
            Self::DayOfWeek => "L#?",
            _ => "",
        }
    }
}

const MONTH_NAMES: [&str; 12] = [
    "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
];
const WEEKDAY_NAMES: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];

/// Replaces `names[i]` with the number `i + first`.
fn replace_names(field: &str, names: &[&str], first: usize) -> String {
    names
        .iter()
        .enumerate()
        .fold(field.to_owned(), |acc, (i, name)| {
            acc.replace(name, &(i + first).to_string())
        })
}

/// Rejects the features this engine does not support, with a specific message.
fn reject_unsupported(field: Field, upper: &str) -> Result<(), String> {
    if field == Field::DayOfMonth && upper.contains('W') {
        return Err(
            "`W` (nearest weekday) is not supported in the day-of-month field; \
                    list the days explicitly"
                .to_owned(),
        );
    }
    if field == Field::DayOfWeek && upper.starts_with('+') {
        return Err(
            "the `+` prefix (match day-of-month AND day-of-week) is not supported".to_owned(),
        );
    }
    if field == Field::DayOfWeek && upper.split(',').any(|part| part == "L") {
        return Err(
            "a bare `L` is not allowed in the day-of-week field: use `L` in the \
                    day-of-month field for the last day of the month, or e.g. `5L` for the \
                    last Friday"
                .to_owned(),
        );
    }
    Ok(())
}

/// Upper-cases a field, replaces month/weekday names by numbers, and checks its
/// characters. Returns the normalized text handed to croner.
fn normalize_field(field: Field, raw: &str) -> Result<String, String> {
    let upper = raw.to_ascii_uppercase();
    reject_unsupported(field, &upper)?;
    let text = match field {
        Field::Month => replace_names(&upper, &MONTH_NAMES, 1),
        Field::DayOfWeek => {
            let numbered = replace_names(&upper.replace("-SUN", "-7"), &WEEKDAY_NAMES, 0);
            // 7 is Sunday too, but croner reads it so only outside `nL`.
            numbered
                .split(',')
                .map(|item| if item == "7L" { "0L" } else { item })
                .collect::<Vec<_>>()
                .join(",")
        }
        _ => upper,
    };
    let allowed =
        |c: char| c.is_ascii_digit() || "*,-/".contains(c) || field.extra_chars().contains(c);
    if let Some(bad) = text.chars().find(|&c| !allowed(c)) {
        let bad = if bad.is_ascii_alphabetic() {
            "a name or letter".to_owned()
        } else {
            format!("`{bad}`")
        };
        return Err(format!(
            "the {} field `{raw}` contains {bad} it does not allow",
            field.label()
        ));
    }
    if text.split(',').any(str::is_empty) {
        return Err(format!(
            "the {} field `{raw}` has an empty item in its list",
            field.label()
        ));
    }
    Ok(text.replace('?', "*"))
}

/// Splits and normalizes all fields; a 5-field expression gets seconds `0`.
fn normalize_fields(expr: &str) -> Result<Vec<String>, String> {
    let raw: Vec<&str> = expr.split_whitespace().collect();
    let skip = match raw.len() {
        5 => 1,
        6 => 0,
        n => return Err(format!("it has {n} fields, but 5 or 6 are required")),
    };
    let mut fields = if skip == 1 {
        vec!["0".to_owned()]
    } else {
        Vec::new()
    };
    for (field, text) in Field::ALL.iter().skip(skip).zip(raw) {
        fields.push(normalize_field(*field, text)?);
    }
    apply_vixie_day_rule(&mut fields);
    Ok(fields)
}

/// Vixie cron matches day-of-month AND day-of-week when either field starts with
/// `*` (e.g. `*/2`), and either of them when both are restricted. croner only
/// treats an exact `*` as unrestricted, so force AND mode (croner's `+` prefix)
/// when a field starts with `*` without being exactly `*`.
fn apply_vixie_day_rule(fields: &mut [String]) {
    let (Some(dom), Some(dow)) = (fields.get(3), fields.get(5)) else {
        return;
    };
    let star_like = |f: &str| f.starts_with('*') && f != "*";
    if (star_like(dom) || star_like(dow)) && dom != "*" && dow != "*" {
        if let Some(dow) = fields.get_mut(5) {
            dow.insert(0, '+');
        }
    }
}

fn croner_parser() -> CronParser {
    CronParser::builder()
        .seconds(Seconds::Optional)
        .year(Year::Disallowed)
        .build()
}

/// Finds which field croner rejects, for a message naming it.
fn locate_croner_error(fields: &[String]) -> String {
    for (i, (field, text)) in Field::ALL.iter().zip(fields).enumerate() {
        let probe: Vec<&str> = (0..6)
            .map(|j| {
                if j == i {
                    text.trim_start_matches('+')
                } else {
                    "*"
                }
            })
            .collect();
        if let Err(e) = croner_parser().parse(&probe.join(" ")) {
            return format!(
                "the {} field is invalid ({e}); check its values and ranges",
                field.label()
            );
        }
    }
    "the fields are inconsistent; check values and ranges".to_owned()
}

/// A parsed cron expression bound to a time zone.
///
/// Syntax: 5 fields `minute hour day-of-month month day-of-week`, or 6 fields with
/// a leading `second`. Each field accepts `*`, numbers, ranges `a-b`, lists `a,b`
/// and steps `*/n` / `a-b/n` / `a/n`; months accept `JAN`-`DEC` and weekdays
/// `SUN`-`SAT` (case-insensitive; 0 and 7 are Sunday). Day-of-month accepts `L`
/// (last day of the month) and `?` (same as `*`); day-of-week accepts `nL` (last
/// weekday `n` of the month, e.g. `5L` = last Friday), `n#k` (k-th weekday `n`)
/// and `?`. `W`, the `+` prefix, `@nicknames` and a year field are rejected.
///
/// Day-of-month vs day-of-week follows Vixie cron: if either field starts with
/// `*` (for example `*` or `*/2`), a day must match both; if both are restricted
/// (neither starts with `*`), a day matching either one matches.
///
/// Occurrences are whole seconds of the zone's wall clock. Across daylight-saving
/// transitions, Vixie cron's rules: an expression is *fixed-time* when none of
/// its second, minute and hour fields starts with `*` (`30 2 * * *`,
/// `0,30 1 * * *`, `0 9-17 * * *`), and *wildcard* otherwise (`*/15 * * * *`,
/// `0 * * * *`). Wall-clock times skipped by a spring-forward gap fire at the
/// end of the gap for a fixed-time expression (once, however many of them the
/// gap held) and not at all for a wildcard one; a wall-clock time that repeats
/// in a fall-back overlap fires once (at its first instance) for a fixed-time
/// expression, and at both instances for a wildcard one, which so keeps firing
/// in real time.
#[derive(Debug, Clone, PartialEq)]
pub struct CronSchedule {
    expr: String,
    tz: TimeZone,
    cron: Cron,
    fixed_time: bool,
}

impl CronSchedule {
    /// Parses `expr` to be evaluated on the wall clock of `tz`.
    ///
    /// Any error is [`ScheduleError::InvalidCron`] naming the expression.
    pub fn parse(expr: &str, tz: TimeZone) -> Result<Self, ScheduleError> {
        let invalid = |reason: String| ScheduleError::InvalidCron {
            expr: expr.to_owned(),
            reason,
        };
        let fields = normalize_fields(expr).map_err(invalid)?;
        let cron = croner_parser()
            .parse(&fields.join(" "))
            .map_err(|_| invalid(locate_croner_error(&fields)))?;
        // Vixie cron's (and cronie's) rule: a job is "wildcard" when its
        // minute or hour field (here also the second) starts with `*`, and
        // fixed-time otherwise, lists and ranges included.
        let fixed_time = fields.iter().take(3).all(|f| !f.starts_with('*'));
        Ok(Self {
            expr: expr.to_owned(),
            tz,
            cron,
            fixed_time,
        })
    }

    /// The expression exactly as given to [`CronSchedule::parse`].
    pub fn expr(&self) -> &str {
        &self.expr
    }

    /// The time zone the expression is evaluated in.
    pub fn time_zone(&self) -> TimeZone {
        self.tz
    }

    /// The first occurrence strictly after `after_ms` (Unix milliseconds), in Unix
    /// milliseconds (always a whole second). `None` if there is none before the
    /// year 5000 (e.g. `0 0 30 2 *`) or `after_ms` is out of range.
    ///
    /// Non-decreasing in `after_ms`.
    pub fn next_after(&self, after_ms: u64) -> Option<u64> {
        let after = i64::try_from(after_ms / 1000).ok()?;
        let next = self.next_after_secs(after)?;
        u64::try_from(next).ok()?.checked_mul(1000)
    }

    /// Smallest occurrence instant (Unix seconds) `> after`.
    ///
    /// Walks matching wall-clock times in order and maps each to instants. Wall
    /// time is monotonic in real time except across a fall-back, so the walk
    /// starts early / ends late only when a fall-back is within reach.
    fn next_after_secs(&self, after: i64) -> Option<i64> {
        let mut from = self.scan_start(after)?;
        let mut best: Option<(i64, NaiveDateTime)> = None;
        for _ in 0..MAX_CANDIDATES {
            let Some(naive) = self.next_wall_match(from) else {
                break;
            };
            if best.is_some_and(|(_, stop)| naive > stop) {
                break;
            }
            for instant in self.instants(naive).into_iter().flatten() {
                if instant > after && best.is_none_or(|(b, _)| instant < b) {
                    best = Some((instant, self.scan_stop(after, instant)?));
                }
            }
            from = naive.checked_add_signed(TimeDelta::seconds(1))?;
        }
        best.map(|(instant, _)| instant)
    }

    /// Wall-clock time to start the walk from: the wall clock one second after
    /// `after`, moved back by a fall-back within the next few hours (repeated
    /// wall times) or a spring-forward within the last few hours (skipped wall
    /// times that fire at the end of the gap).
    fn scan_start(&self, after: i64) -> Option<NaiveDateTime> {
        let start = after.checked_add(1)?;
        let wall = self.tz.wall_clock(start)?;
        let now = self.tz.offset_at(start)?;
        let ahead = self.tz.offset_at(start.checked_add(MAX_SHIFT_SECS)?)?;
        let behind = self.tz.offset_at(start.checked_sub(MAX_SHIFT_SECS)?)?;
        let back = (now - ahead).max(now - behind);
        if back > 0 {
            wall.checked_sub_signed(TimeDelta::try_seconds(back)?)
        } else {
            Some(wall)
        }
    }

    /// Last wall-clock time whose instants could precede `instant`: past it, the
    /// walk can stop. Extends by a few hours if a fall-back happened shortly before.
    fn scan_stop(&self, after: i64, instant: i64) -> Option<NaiveDateTime> {
        let wall = self.tz.wall_clock(instant)?;
        let lookback = after
            .saturating_add(1)
            .max(instant.saturating_sub(MAX_SHIFT_SECS));
        if self.tz.offset_at(lookback)? > self.tz.offset_at(instant)? {
            wall.checked_add_signed(TimeDelta::try_seconds(MAX_SHIFT_SECS)?)
        } else {
            Some(wall)
        }
    }

    /// The first wall-clock time `>= from` matching the expression (computed by
    /// croner in UTC, where wall time has no gaps or repeats).
    fn next_wall_match(&self, from: NaiveDateTime) -> Option<NaiveDateTime> {
        let start = Utc.from_utc_datetime(&from);
        self.cron
            .find_next_occurrence(&start, true)
            .ok()
            .map(|dt| dt.naive_utc())
    }

    /// The instants at which the matching wall-clock time `naive` fires.
    fn instants(&self, naive: NaiveDateTime) -> [Option<i64>; 2] {
        match self.tz.resolve(naive) {
            LocalResult::Single(instant) => [Some(instant), None],
            LocalResult::Ambiguous(first, second) => {
                [Some(first), (!self.fixed_time).then_some(second)]
            }
            LocalResult::None if self.fixed_time => [self.end_of_gap(naive), None],
            LocalResult::None => [None, None],
        }
    }

    /// First instant after the spring-forward gap containing `naive`.
    fn end_of_gap(&self, naive: NaiveDateTime) -> Option<i64> {
        let minute = naive.with_second(0)?;
        (1..=MAX_SHIFT_SECS / 60).find_map(|k| {
            let probe = minute.checked_add_signed(TimeDelta::minutes(k))?;
            match self.tz.resolve(probe) {
                LocalResult::Single(instant) | LocalResult::Ambiguous(instant, _) => Some(instant),
                LocalResult::None => None,
            }
        })
    }
}

// ---------------------------------------------------------------------------
// Catch-up policy
// ---------------------------------------------------------------------------

/// What to do with cron occurrences missed while the process was down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CatchUp {
    /// Run once now for all missed occurrences, then resume the schedule (no burst).
    #[default]
    Once,
    /// Skip the missed occurrences; wait for the next occurrence after now.
    Skip,
    /// Run every missed occurrence, one round after another, until caught up.
    All,
}

/// The `next_run_time` (Unix ms) to use on restart for a cron task whose stored
/// `next_run_time` is `scheduled_ms`.
///
/// A task is behind only if `scheduled_ms < now_ms`; otherwise `scheduled_ms` is
/// kept. When behind: `Once` → `now_ms`; `Skip` → the next occurrence strictly
/// after `now_ms` (`None` if the schedule has no further occurrence); `All` →
/// `scheduled_ms` (run it now; [`next_round`] then walks the missed ones).
pub fn catch_up_next(
    schedule: &CronSchedule,
    policy: CatchUp,
    scheduled_ms: u64,
    now_ms: u64,
) -> Option<u64> {
    if scheduled_ms >= now_ms {
        return Some(scheduled_ms);
    }
    match policy {
        CatchUp::Once => Some(now_ms),
        CatchUp::Skip => schedule.next_after(now_ms),
        CatchUp::All => Some(scheduled_ms),
    }
}

/// The `next_run_time` (Unix ms) after a successful round of a cron task whose
/// `next_run_time` was `scheduled_ms` and which finished at `finished_ms`.
///
/// `All`: the next occurrence after `scheduled_ms`, so every missed occurrence
/// gets its own round (possibly back to back). `Once` and `Skip`: the next
/// occurrence after both `scheduled_ms` and `finished_ms`, so occurrences that
/// passed during the round are not replayed. `None` when the schedule has no
/// further occurrence. The result is always greater than `scheduled_ms`.
pub fn next_round(
    schedule: &CronSchedule,
    policy: CatchUp,
    scheduled_ms: u64,
    finished_ms: u64,
) -> Option<u64> {
    match policy {
        CatchUp::All => schedule.next_after(scheduled_ms),
        CatchUp::Once | CatchUp::Skip => schedule.next_after(scheduled_ms.max(finished_ms)),
    }
}

// ---------------------------------------------------------------------------
// Retry backoff
// ---------------------------------------------------------------------------

/// How the delay between retries grows with the retry count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Backoff {
    /// Always `base`.
    #[default]
    Fixed,
    /// `base * (retry_count + 1)`.
    Linear,
    /// `base * 2^retry_count`.
    Exponential,
}

/// Delay policy for retries: a backoff curve, an optional cap and jitter.
///
/// Build with a struct literal or [`RetryStrategy::fixed`], then call
/// [`RetryStrategy::validate`] (deserialization does not validate).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RetryStrategy {
    /// Growth curve of the delay.
    pub backoff: Backoff,
    /// Delay of the first retry.
    pub base: Duration,
    /// Upper bound on the delay before jitter; `None` for no bound.
    pub cap: Option<Duration>,
    /// Fraction (`0.0..=1.0`) of the delay that may be randomly subtracted.
    pub jitter: f64,
}

impl RetryStrategy {
    /// A fixed delay of `interval`, no cap, no jitter.
    pub fn fixed(interval: Duration) -> Self {
        Self {
            backoff: Backoff::Fixed,
            base: interval,
            cap: None,
            jitter: 0.0,
        }
    }

    /// Checks that `jitter` is a number in `0.0..=1.0`.
    pub fn validate(&self) -> Result<(), ScheduleError> {
        if (0.0..=1.0).contains(&self.jitter) {
            Ok(())
        } else {
            Err(ScheduleError::InvalidRetryStrategy {
                reason: format!(
                    "jitter must be a fraction between 0.0 and 1.0 (e.g. 0.2 for up to 20%), got {}",
                    self.jitter
                ),
            })
        }
    }

    /// Delay before the retry numbered `retry_count` (0 for the first retry).
    ///
    /// The backoff curve is applied to `base` (saturating at [`Duration::MAX`]),
    /// then `cap`, then jitter: `delay * jitter * rand_unit` is subtracted, where
    /// `rand_unit` is a caller-supplied random number in `[0, 1)`. Deterministic
    /// for a given `rand_unit`; never panics (out-of-range or NaN `jitter` and
    /// `rand_unit` are clamped, NaN counting as 0).
    pub fn delay(&self, retry_count: u32, rand_unit: f64) -> Duration {
        let raw = match self.backoff {
            Backoff::Fixed => self.base,
            Backoff::Linear => self.base.saturating_mul(retry_count.saturating_add(1)),
            Backoff::Exponential => exponential(self.base, retry_count),
        };
        let capped = self.cap.map_or(raw, |cap| raw.min(cap));
        subtract_fraction(capped, unit(self.jitter) * unit(rand_unit))
    }
}

/// `base * 2^exponent`, saturating.
fn exponential(base: Duration, exponent: u32) -> Duration {
    match 1_u32.checked_shl(exponent) {
        Some(factor) => base.saturating_mul(factor),
        None if base.is_zero() => Duration::ZERO,
        None => Duration::MAX,
    }
}

/// Clamps to `0.0..=1.0`, mapping NaN to 0.
fn unit(x: f64) -> f64 {
    if x.is_nan() {
        0.0
    } else {
        x.clamp(0.0, 1.0)
    }
}

/// `d - d * fraction` for `fraction` in `0.0..=1.0`, in integer nanoseconds
/// (no float overflow near `Duration::MAX`).
fn subtract_fraction(d: Duration, fraction: f64) -> Duration {
    const SCALE_BITS: u32 = 32;
    let scaled = (fraction * f64::from(1_u32 << 31) * 2.0) as u128;
    if scaled == 0 {
        return d;
    }
    let nanos = d.as_nanos();
    let remaining = nanos.saturating_sub(nanos.saturating_mul(scaled) >> SCALE_BITS);
    let secs = u64::try_from(remaining / 1_000_000_000).unwrap_or(u64::MAX);
    let sub_nanos = (remaining % 1_000_000_000) as u32;
    Duration::new(secs, sub_nanos)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ms(rfc3339: &str) -> u64 {
        let dt = DateTime::parse_from_rfc3339(rfc3339).unwrap();
        u64::try_from(dt.timestamp_millis()).unwrap()
    }

    fn utc() -> TimeZone {
        TimeZone::from_name("UTC").unwrap()
    }

    fn paris() -> TimeZone {
        TimeZone::from_name("Europe/Paris").unwrap()
    }

    /// Next occurrence of `expr` (UTC) after `after`, as RFC 3339.
    fn next(expr: &str, tz: TimeZone, after: &str) -> Option<String> {
        let schedule = CronSchedule::parse(expr, tz).unwrap_or_else(|e| panic!("{e}"));
        schedule.next_after(ms(after)).map(|t| {
            let secs = i64::try_from(t / 1000).unwrap();
            DateTime::from_timestamp(secs, 0)
                .unwrap()
                .format("%Y-%m-%dT%H:%M:%SZ")
                .to_string()
        })
    }

    fn check(input: (&str, &str), expected: &str) {
        let (expr, after) = input;
        assert_eq!(
            next(expr, utc(), after).as_deref(),
            Some(expected),
            "`{expr}` after {after}"
        );
    }

    // 2024-01-15 is a Monday.
    const MON: &str = "2024-01-15T10:30:00Z";

    #[test]
    fn cron_next_occurrences_utc() {
        let table: &[(&str, &str, &str)] = &[
            ("* * * * *", MON, "2024-01-15T10:31:00Z"),
            (
                "* * * * *",
                "2024-01-15T10:30:59.999Z",
                "2024-01-15T10:31:00Z",
            ),
            ("*/15 * * * *", MON, "2024-01-15T10:45:00Z"),
            ("0 * * * *", MON, "2024-01-15T11:00:00Z"),
            ("30 10 * * *", MON, "2024-01-16T10:30:00Z"),
            (
                "30 10 * * *",
                "2024-01-15T10:29:59.999Z",
                "2024-01-15T10:30:00Z",
            ),
            ("0 0 1 * *", MON, "2024-02-01T00:00:00Z"),
            ("0 0 1 1 *", MON, "2025-01-01T00:00:00Z"),
            ("5-10 * * * *", MON, "2024-01-15T11:05:00Z"),
            ("0 8-18/2 * * *", MON, "2024-01-15T12:00:00Z"),
            ("10/20 * * * *", MON, "2024-01-15T10:50:00Z"),
            ("0,45 * * * *", MON, "2024-01-15T10:45:00Z"),
            ("0 12 * * MON", MON, "2024-01-15T12:00:00Z"),
            ("0 9 * * MON-FRI", MON, "2024-01-16T09:00:00Z"),
            ("0 9 * * SAT,SUN", MON, "2024-01-20T09:00:00Z"),
            ("0 0 * * 7", MON, "2024-01-21T00:00:00Z"),
            ("0 0 * * 0", MON, "2024-01-21T00:00:00Z"),
            ("0 0 * * MON-SUN", MON, "2024-01-16T00:00:00Z"),
            ("0 0 * jan mon", MON, "2024-01-22T00:00:00Z"),
            ("0 0 1 JUN *", MON, "2024-06-01T00:00:00Z"),
            ("0 0 * FEB-MAR/1 *", MON, "2024-02-01T00:00:00Z"),
            ("0 0 1 JAN,JUL *", MON, "2024-07-01T00:00:00Z"),
            ("0 0 ? * MON", MON, "2024-01-22T00:00:00Z"),
            // seconds field
            ("*/10 * * * * *", MON, "2024-01-15T10:30:10Z"),
            ("30 * * * * *", MON, "2024-01-15T10:30:30Z"),
            ("0 0 12 * * *", MON, "2024-01-15T12:00:00Z"),
            ("15,45 30 10 * * MON", MON, "2024-01-15T10:30:15Z"),
            ("0 0 0 L 2 *", MON, "2024-02-29T00:00:00Z"),
            // L and nL
            ("0 0 L * *", MON, "2024-01-31T00:00:00Z"),
            ("0 0 L 2 *", MON, "2024-02-29T00:00:00Z"),
            ("0 0 L 2 *", "2024-03-01T00:00:00Z", "2025-02-28T00:00:00Z"),
            ("0 0 * * 5L", MON, "2024-01-26T00:00:00Z"),
            (
                "0 0 * * FRIL",
                "2024-01-26T00:00:00Z",
                "2024-02-23T00:00:00Z",
            ),
            ("0 0 * * 1#2", MON, "2024-02-12T00:00:00Z"),
            ("0 0 29 2 *", MON, "2024-02-29T00:00:00Z"),
            ("0 0 29 2 *", "2024-03-01T00:00:00Z", "2028-02-29T00:00:00Z"),
            ("0 0 31 * *", "2024-02-01T00:00:00Z", "2024-03-31T00:00:00Z"),
            // day-of-month OR day-of-week when both are restricted (Vixie)
            ("0 0 13 * FRI", MON, "2024-01-19T00:00:00Z"),
            ("0 0 20 * MON", MON, "2024-01-20T00:00:00Z"),
            ("0 0 L * 1", "2024-01-23T00:00:00Z", "2024-01-29T00:00:00Z"),
            // ... but AND when one of them starts with `*` (Vixie quirk)
            ("0 0 */2 * MON", MON, "2024-01-29T00:00:00Z"),
            ("0 0 1 * */7", MON, "2024-09-01T00:00:00Z"),
            ("0 0 */2 * *", MON, "2024-01-17T00:00:00Z"),
        ];
        for (expr, after, expected) in table {
            check((expr, after), expected);
        }
    }

    #[test]
    fn invalid_expressions_are_rejected_with_their_text() {
        let table: &[(&str, &str)] = &[
            ("", "0 fields"),
            ("* * * *", "4 fields"),
            ("* * * * * * *", "7 fields"),
            ("@daily", "1 fields"),
            ("60 * * * *", "minute"),
            ("* 24 * * *", "hour"),
            ("* * 0 * *", "day-of-month"),
            ("* * 32 * *", "day-of-month"),
            ("* * * 13 *", "month"),
            ("* * * 0 *", "month"),
            ("* * * * 8", "day-of-week"),
            ("60 * * * * *", "second"),
            ("*/0 * * * *", "minute"),
            ("5-70 * * * *", "minute"),
            ("0 0 15W * *", "`W`"),
            ("0 0 LW * *", "`W`"),
            ("0 0 * * L", "bare `L`"),
            ("0 0 * * +MON", "`+`"),
            ("MON * * * *", "minute"),
            ("0 0 * * JAN", "day-of-week"),
            ("0 0 * MON *", "month"),
            ("0 0 * * FOO", "day-of-week"),
            ("0 0 5L * *", "day-of-month"),
            ("0 0 * * 1#9", "day-of-week"),
            ("a b c d e", "minute"),
            ("0 0 1 1 * 2030", "day-of-week"),
            ("0 0 1 1 * 2030 x", "7 fields"),
        ];
        for (expr, needle) in table {
            let err = CronSchedule::parse(expr, utc())
                .map(|s| s.expr().to_owned())
                .unwrap_err();
            let msg = err.to_string();
            assert!(
                matches!(err, ScheduleError::InvalidCron { .. }),
                "{expr}: {err:?}"
            );
            assert!(
                msg.starts_with(&format!("Invalid cron expression: {expr} (")),
                "{expr}: message must name it, in fib-flow's words: {msg}"
            );
            assert!(
                msg.contains(needle),
                "{expr}: expected `{needle}` in: {msg}"
            );
        }
    }

    #[test]
    fn impossible_dates_have_no_next_occurrence() {
        let s = CronSchedule::parse("0 0 30 2 *", utc()).unwrap();
        assert_eq!(s.next_after(ms(MON)), None);
        let s = CronSchedule::parse("* * * * *", utc()).unwrap();
        assert_eq!(s.next_after(u64::MAX), None);
        assert_eq!(s.next_after(0), Some(60_000));
    }

    #[test]
    fn keeps_expression_and_zone() {
        let s = CronSchedule::parse(" 0 9 * * mon ", paris()).unwrap();
        assert_eq!(s.expr(), " 0 9 * * mon ");
        assert_eq!(s.time_zone(), paris());
        assert_eq!(s.clone(), s);
    }

    #[test]
    fn time_zone_names() {
        assert_eq!(TimeZone::from_name("local").unwrap(), TimeZone::Local);
        assert_eq!(TimeZone::default(), TimeZone::Local);
        assert_eq!(
            "Europe/Paris".parse::<TimeZone>().unwrap().to_string(),
            "Europe/Paris"
        );
        let err = TimeZone::from_name("Mars/Olympus").unwrap_err();
        assert!(err.to_string().contains("`Mars/Olympus`"), "{err}");
        let json = serde_json::to_string(&paris()).unwrap();
        assert_eq!(json, "\"Europe/Paris\"");
        assert_eq!(serde_json::from_str::<TimeZone>(&json).unwrap(), paris());
        assert!(serde_json::from_str::<TimeZone>("\"Nowhere\"").is_err());
    }

    #[test]
    fn named_zone_is_wall_clock() {
        // 09:00 in Paris is 08:00 UTC in winter, 07:00 UTC in summer.
        let nine = |after| next("0 9 * * *", paris(), after);
        assert_eq!(
            nine("2024-01-15T10:00:00Z").as_deref(),
            Some("2024-01-16T08:00:00Z")
        );
        assert_eq!(
            nine("2024-07-15T10:00:00Z").as_deref(),
            Some("2024-07-16T07:00:00Z")
        );
    }

    #[test]
    fn dst_spring_forward_in_paris() {
        // 2024-03-31: 02:00 CET jumps to 03:00 CEST (01:00 UTC).
        let fixed = |after| next("30 2 * * *", paris(), after);
        assert_eq!(
            fixed("2024-03-30T23:00:00Z").as_deref(),
            Some("2024-03-31T01:00:00Z")
        );
        assert_eq!(
            fixed("2024-03-31T01:00:00Z").as_deref(),
            Some("2024-04-01T00:30:00Z")
        );
        let every_30 = |after| next("*/30 * * * *", paris(), after);
        assert_eq!(
            every_30("2024-03-31T00:30:00Z").as_deref(),
            Some("2024-03-31T01:00:00Z")
        );
        assert_eq!(
            every_30("2024-03-31T01:00:00Z").as_deref(),
            Some("2024-03-31T01:30:00Z")
        );
    }

    #[test]
    fn dst_fall_back_in_paris() {
        // 2024-10-27: 03:00 CEST falls back to 02:00 CET (at 01:00 UTC).
        let fixed = |after| next("30 2 * * *", paris(), after);
        assert_eq!(
            fixed("2024-10-26T23:00:00Z").as_deref(),
            Some("2024-10-27T00:30:00Z")
        );
        assert_eq!(
            fixed("2024-10-27T00:30:00Z").as_deref(),
            Some("2024-10-28T01:30:00Z")
        );
        let every_30 = |after| next("*/30 * * * *", paris(), after);
        let expected = [
            ("2024-10-27T00:00:00Z", "2024-10-27T00:30:00Z"),
            ("2024-10-27T00:30:00Z", "2024-10-27T01:00:00Z"),
            ("2024-10-27T00:45:00Z", "2024-10-27T01:00:00Z"),
            ("2024-10-27T01:00:00Z", "2024-10-27T01:30:00Z"),
            ("2024-10-27T01:10:00Z", "2024-10-27T01:30:00Z"),
            ("2024-10-27T01:30:00Z", "2024-10-27T02:00:00Z"),
        ];
        for (after, want) in expected {
            assert_eq!(every_30(after).as_deref(), Some(want), "after {after}");
        }
    }

    #[test]
    fn catch_up_on_restart() {
        let s = CronSchedule::parse("0 * * * *", utc()).unwrap();
        let scheduled = ms("2024-01-15T08:00:00Z");
        let now = ms("2024-01-15T10:30:00Z");
        assert_eq!(catch_up_next(&s, CatchUp::Once, scheduled, now), Some(now));
        assert_eq!(
            catch_up_next(&s, CatchUp::Skip, scheduled, now),
            Some(ms("2024-01-15T11:00:00Z"))
        );
        assert_eq!(
            catch_up_next(&s, CatchUp::All, scheduled, now),
            Some(scheduled)
        );
        let future = ms("2024-01-15T11:00:00Z");
        for policy in [CatchUp::Once, CatchUp::Skip, CatchUp::All] {
            assert_eq!(catch_up_next(&s, policy, future, now), Some(future));
            assert_eq!(catch_up_next(&s, policy, now, now), Some(now));
        }
        assert_eq!(CatchUp::default(), CatchUp::Once);
    }

    #[test]
    fn next_round_per_policy() {
        let s = CronSchedule::parse("0 * * * *", utc()).unwrap();
        let finished = ms("2024-01-15T10:30:00Z");
        // Once: the catch-up round was scheduled at "now"; resume after it, no burst.
        assert_eq!(
            next_round(&s, CatchUp::Once, finished - 5, finished),
            Some(ms("2024-01-15T11:00:00Z"))
        );
        assert_eq!(
            next_round(&s, CatchUp::Skip, ms("2024-01-15T10:00:00Z"), finished),
            Some(ms("2024-01-15T11:00:00Z"))
        );
        // All: walk missed occurrences one by one.
        assert_eq!(
            next_round(&s, CatchUp::All, ms("2024-01-15T08:00:00Z"), finished),
            Some(ms("2024-01-15T09:00:00Z"))
        );
        // A round finishing before its scheduled time still moves forward.
        let sched = ms("2024-01-15T12:00:00Z");
        assert_eq!(
            next_round(&s, CatchUp::Once, sched, finished),
            Some(ms("2024-01-15T13:00:00Z"))
        );
    }

    fn strategy(backoff: Backoff, base_ms: u64, cap_ms: Option<u64>, jitter: f64) -> RetryStrategy {
        RetryStrategy {
            backoff,
            base: Duration::from_millis(base_ms),
            cap: cap_ms.map(Duration::from_millis),
            jitter,
        }
    }

    #[test]
    fn backoff_table() {
        use Backoff::{Exponential, Fixed, Linear};
        let table: &[((RetryStrategy, u32, f64), Duration)] = &[
            (
                (strategy(Fixed, 1000, None, 0.0), 0, 0.0),
                Duration::from_secs(1),
            ),
            (
                (strategy(Fixed, 1000, None, 0.0), 7, 0.9),
                Duration::from_secs(1),
            ),
            (
                (strategy(Linear, 1000, None, 0.0), 0, 0.0),
                Duration::from_secs(1),
            ),
            (
                (strategy(Linear, 1000, None, 0.0), 2, 0.0),
                Duration::from_secs(3),
            ),
            (
                (strategy(Exponential, 1000, None, 0.0), 0, 0.0),
                Duration::from_secs(1),
            ),
            (
                (strategy(Exponential, 1000, None, 0.0), 3, 0.0),
                Duration::from_secs(8),
            ),
            (
                (strategy(Exponential, 1000, Some(5000), 0.0), 3, 0.0),
                Duration::from_secs(5),
            ),
            (
                (strategy(Linear, 1000, Some(2500), 0.0), 9, 0.0),
                Duration::from_millis(2500),
            ),
            (
                (strategy(Fixed, 1000, None, 0.5), 0, 0.0),
                Duration::from_secs(1),
            ),
            (
                (strategy(Fixed, 1000, None, 0.5), 0, 0.5),
                Duration::from_millis(750),
            ),
            (
                (strategy(Exponential, 1000, Some(4000), 0.25), 5, 0.5),
                Duration::from_millis(3500),
            ),
            (
                (strategy(Fixed, 1000, None, 1.0), 0, 0.999_999_999_9),
                Duration::from_nanos(1),
            ),
            (
                (strategy(Exponential, 1000, None, 0.0), 64, 0.0),
                Duration::MAX,
            ),
            (
                (strategy(Exponential, 1000, None, 0.0), u32::MAX, 0.0),
                Duration::MAX,
            ),
            (
                (strategy(Exponential, 0, None, 0.0), u32::MAX, 0.0),
                Duration::ZERO,
            ),
            (
                (strategy(Linear, 1000, None, 0.0), u32::MAX, 0.0),
                Duration::from_secs(u64::from(u32::MAX)),
            ),
            (
                (
                    strategy(Exponential, 1000, Some(60_000), 0.0),
                    u32::MAX,
                    0.0,
                ),
                Duration::from_mins(1),
            ),
            (
                (strategy(Fixed, 1000, None, f64::NAN), 0, 0.5),
                Duration::from_secs(1),
            ),
            (
                (strategy(Fixed, 1000, None, 0.5), 0, f64::NAN),
                Duration::from_secs(1),
            ),
        ];
        for ((s, retry, rand), expected) in table {
            assert_eq!(
                s.delay(*retry, *rand),
                *expected,
                "{s:?} retry {retry} rand {rand}"
            );
        }
        let huge = RetryStrategy {
            jitter: 0.5,
            ..strategy(Exponential, 1000, None, 0.0)
        };
        assert!(huge.delay(100, 0.99) < Duration::MAX);
    }

    #[test]
    fn retry_strategy_validation_and_serde() {
        assert!(strategy(Backoff::Linear, 10, None, 0.0).validate().is_ok());
        assert!(strategy(Backoff::Linear, 10, None, 1.0).validate().is_ok());
        for bad in [-0.1, 1.5, f64::NAN, f64::INFINITY] {
            let err = strategy(Backoff::Fixed, 10, None, bad)
                .validate()
                .unwrap_err();
            assert!(matches!(err, ScheduleError::InvalidRetryStrategy { .. }));
            assert!(err.to_string().contains("between 0.0 and 1.0"), "{err}");
        }
        let s = strategy(Backoff::Exponential, 1500, Some(60_000), 0.2);
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<RetryStrategy>(&json).unwrap(), s);
        assert_eq!(
            RetryStrategy::fixed(Duration::from_secs(2)).delay(9, 0.3),
            Duration::from_secs(2)
        );
    }

    const EXPRS: &[&str] = &[
        "* * * * *",
        "*/7 * * * * *",
        "0 */3 * * *",
        "30 2 * * *",
        "15 1-3 * * SUN",
        "0 0 L * *",
        "0 0 * * 5L",
        "0 0 13 * FRI",
        "0 0 29 2 *",
    ];
    // 1970 to ~2096.
    const MAX_MS: u64 = 4_000_000_000_000;

    fn zones() -> [TimeZone; 3] {
        [
            utc(),
            paris(),
            TimeZone::from_name("America/New_York").unwrap(),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        #[test]
        fn next_after_is_strictly_later_and_monotonic(
            e in 0..EXPRS.len(), z in 0..3_usize, a in 0..MAX_MS, b in 0..MAX_MS,
        ) {
            let s = CronSchedule::parse(EXPRS[e], zones()[z]).unwrap();
            let (lo, hi) = (a.min(b), a.max(b));
            let n_lo = s.next_after(lo).unwrap();
            let n_hi = s.next_after(hi).unwrap();
            prop_assert!(n_lo > lo && n_hi > hi);
            prop_assert_eq!(n_lo % 1000, 0);
            prop_assert!(n_lo <= n_hi);
            // Nothing between `lo` and its next occurrence is skipped.
            let mid = lo + (n_lo - lo) / 2;
            prop_assert_eq!(s.next_after(mid), Some(n_lo));
            prop_assert_eq!(s.next_after(n_lo - 1), Some(n_lo));
        }

        #[test]
        fn near_dst_transitions_is_monotonic(
            e in 0..EXPRS.len(), day in 0..2_u64, offset in 0..(8 * 3600 * 1000_u64), step in 1..(3600 * 1000_u64),
        ) {
            // Around 2024-03-31 / 2024-10-27 00:00 UTC in Paris.
            let base = [ms("2024-03-30T22:00:00Z"), ms("2024-10-26T22:00:00Z")][day as usize];
            let s = CronSchedule::parse(EXPRS[e], paris()).unwrap();
            let t = base + offset;
            let n1 = s.next_after(t).unwrap();
            let n2 = s.next_after(t + step).unwrap();
            prop_assert!(n1 > t && n1 <= n2);
            prop_assert_eq!(s.next_after(n1 - 1), Some(n1));
            prop_assert_eq!(s.next_after(t + (n1 - t) / 2), Some(n1));
        }

        #[test]
        fn delay_never_panics_and_respects_cap(
            kind in 0..3_usize,
            base_ms in any::<u64>(),
            cap_ms in proptest::option::of(any::<u64>()),
            jitter in -1.0..2.0_f64,
            retry in any::<u32>(),
            rand in 0.0..1.0_f64,
        ) {
            let backoff = [Backoff::Fixed, Backoff::Linear, Backoff::Exponential][kind];
            let s = strategy(backoff, base_ms, cap_ms, jitter);
            let d = s.delay(retry, rand);
            if let Some(cap) = s.cap {
                prop_assert!(d <= cap);
            }
            let no_jitter = RetryStrategy { jitter: 0.0, ..s }.delay(retry, rand);
            prop_assert!(d <= no_jitter);
            if (0.0..=1.0).contains(&jitter) {
                let floor = no_jitter.as_secs_f64() * (1.0 - jitter);
                prop_assert!(d.as_secs_f64() >= floor * 0.999_999);
            }
        }
    }
}
