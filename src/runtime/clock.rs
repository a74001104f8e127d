//! Time sources. Every time the manager writes into a record comes from a [`Clock`],
//! so tests drive delays, retries, timeouts and cron with a [`ManualClock`] and never
//! sleep. Replay never reads a clock: records carry their time.

use parking_lot::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A source of wall-clock time in milliseconds since the Unix epoch.
pub trait Clock: Send + Sync + 'static {
    /// The current time, rounded down to the millisecond.
    fn now_ms(&self) -> u64;

    /// The current time rounded up: the base of a time that must come no
    /// earlier than a duration from now (a delay, a retry, a deadline), since
    /// due times are compared with [`Clock::now_ms`]. A clock that only ever
    /// stands on whole milliseconds need not override it.
    fn now_ms_ceil(&self) -> u64 {
        self.now_ms()
    }

    /// [`Clock::now_ms`] and [`Clock::now_ms_ceil`] of one reading.
    fn now_ms_floor_ceil(&self) -> (u64, u64) {
        let floor = self.now_ms();
        (floor, self.now_ms_ceil().max(floor))
    }

    /// Whether time moves on its own. A manual clock returns `false`, and the
    /// timer then waits for [`Clock::on_advance`] instead of a deadline.
    fn is_real(&self) -> bool {
        true
    }

    /// Registers a callback run whenever the clock is moved by hand.
    fn on_advance(&self, _callback: Weak<dyn Fn() + Send + Sync>) {}
}

/// The system clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, floor_ms)
    }

    fn now_ms_ceil(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, ceil_ms)
    }

    fn now_ms_floor_ceil(&self) -> (u64, u64) {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or((0, 0), |d| (floor_ms(d), ceil_ms(d)))
    }
}

/// `d` in whole milliseconds, rounded down (saturating). In 64-bit
/// arithmetic: `Duration::as_millis` works in 128 bits, and the clock is
/// read several times per task.
fn floor_ms(d: Duration) -> u64 {
    d.as_secs()
        .saturating_mul(1000)
        .saturating_add(u64::from(d.subsec_millis()))
}

/// `d` in whole milliseconds, rounded up (saturating): a non-zero timeout,
/// delay or interval never becomes 0 ("none"), nor shorter than asked.
/// Whole seconds are whole milliseconds, so only the sub-second part rounds
/// (64-bit arithmetic, as in [`floor_ms`]).
pub(crate) fn ceil_ms(d: Duration) -> u64 {
    d.as_secs()
        .checked_mul(1000)
        .and_then(|ms| ms.checked_add(u64::from(d.subsec_nanos().div_ceil(1_000_000))))
        .unwrap_or(u64::MAX)
}

/// A clock that only moves when told to: for deterministic tests.
///
/// ```
/// use fibflow::ManualClock;
/// use std::time::Duration;
/// let clock = ManualClock::new(1_000);
/// clock.advance(Duration::from_millis(500));
/// assert_eq!(fibflow::Clock::now_ms(&*clock), 1_500);
/// ```
#[derive(Default)]
pub struct ManualClock {
    now: AtomicU64,
    listeners: Mutex<Vec<Weak<dyn Fn() + Send + Sync>>>,
}

impl std::fmt::Debug for ManualClock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ManualClock")
            .field("now_ms", &self.now.load(Ordering::SeqCst))
            .finish()
    }
}

impl ManualClock {
    /// A clock standing at `start_ms`.
    pub fn new(start_ms: u64) -> Arc<ManualClock> {
        Arc::new(ManualClock {
            now: AtomicU64::new(start_ms),
            listeners: Mutex::new(Vec::new()),
        })
    }

    /// Moves the clock forward and wakes the timers that wait on it. For each
    /// started manager on this clock it returns once that manager's timer has
    /// handled what became due (tasks queued, timeouts recorded; at most 10 s),
    /// so what a test checks next already sees it. Handlers still run on their
    /// own threads: wait for their effects.
    pub fn advance(&self, by: Duration) {
        let by = u64::try_from(by.as_millis()).unwrap_or(u64::MAX);
        // Saturating: a huge step stops at the end of time, never wraps back.
        let _ = self
            .now
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |t| {
                Some(t.saturating_add(by))
            });
        self.notify();
    }

    /// Sets the clock to `ms` (it may move backwards; timers only fire when due).
    /// Returns like [`ManualClock::advance`].
    pub fn set(&self, ms: u64) {
        self.now.store(ms, Ordering::SeqCst);
        self.notify();
    }

    fn notify(&self) {
        let live: Vec<_> = {
            let mut l = self.listeners.lock();
            l.retain(|w| w.strong_count() > 0);
            l.iter().filter_map(Weak::upgrade).collect()
        };
        for f in live {
            f();
        }
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.now.load(Ordering::SeqCst)
    }
    fn is_real(&self) -> bool {
        false
    }
    fn on_advance(&self, callback: Weak<dyn Fn() + Send + Sync>) {
        self.listeners.lock().push(callback);
    }
}

#[cfg(test)]
mod tests {
    use super::{ceil_ms, floor_ms};
    use proptest::prelude::*;
    use std::time::Duration;

    proptest! {
        /// The 64-bit conversions agree with the 128-bit definitions,
        /// saturating where those do not fit.
        #[test]
        fn millisecond_conversions_match_the_128_bit_ones(secs in any::<u64>(), nanos in 0u32..1_000_000_000) {
            let d = Duration::new(secs, nanos);
            let ceil = u64::try_from(d.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX);
            let floor = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
            prop_assert_eq!(ceil_ms(d), ceil);
            prop_assert_eq!(floor_ms(d), floor);
            let small = Duration::new(secs % 10_000_000_000, nanos);
            prop_assert_eq!(ceil_ms(small), u64::try_from(small.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX));
            prop_assert_eq!(floor_ms(small), u64::try_from(small.as_millis()).unwrap_or(u64::MAX));
        }
    }

    #[test]
    fn edges() {
        assert_eq!(ceil_ms(Duration::from_nanos(1)), 1);
        assert_eq!(ceil_ms(Duration::ZERO), 0);
        assert_eq!(floor_ms(Duration::from_nanos(999_999)), 0);
        assert_eq!(ceil_ms(Duration::MAX), u64::MAX);
        assert_eq!(floor_ms(Duration::MAX), u64::MAX);
    }
}
