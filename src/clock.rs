//! Time as the middleware sees it.
//!
//! Every expiry decision reads a [`Clock`], so tests (and simulations) can
//! drive time by hand with [`ManualClock`] instead of sleeping.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A source of wall-clock time for expiry decisions.
///
/// Implemented by [`SystemClock`] (the default) and [`ManualClock`] (tests);
/// any `Fn() -> SystemTime` closure is a clock too.
pub trait Clock: Send + Sync + 'static {
    /// The current time.
    fn now(&self) -> SystemTime;
}

impl<F> Clock for F
where
    F: Fn() -> SystemTime + Send + Sync + 'static,
{
    fn now(&self) -> SystemTime {
        self()
    }
}

impl<C: Clock + ?Sized> Clock for Arc<C> {
    fn now(&self) -> SystemTime {
        (**self).now()
    }
}

/// The operating system's wall clock (`SystemTime::now`).
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// The system's wall clock, read cheaply: a coarse monotonic clock
/// (resolution of the kernel tick, 1–4 ms on Linux) anchored to
/// `SystemTime::now()` once a second.
///
/// The layers' default. It reads in a few nanoseconds where
/// `SystemTime::now()` takes ~30 ns, which matters on a path that runs on
/// every request. Between two anchors it follows the monotonic clock, so a
/// step of the system clock is picked up within a second. Use
/// [`SystemClock`] where full precision matters more than speed.
pub struct CoarseClock {
    start: coarsetime::Instant,
    /// Unix nanoseconds minus coarse nanoseconds since `start`, at the
    /// last anchor.
    offset_nanos: AtomicU64,
    /// Coarse nanoseconds since `start` at which to anchor again.
    next_anchor: AtomicU64,
}

const ANCHOR_EVERY: Duration = Duration::from_secs(1);

impl CoarseClock {
    /// A coarse clock anchored to the system clock now.
    pub fn new() -> Self {
        let clock = Self {
            start: coarsetime::Instant::now_without_cache_update(),
            offset_nanos: AtomicU64::new(0),
            next_anchor: AtomicU64::new(0),
        };
        clock.anchor(0);
        clock
    }

    fn anchor(&self, coarse_nanos: u64) {
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        self.offset_nanos
            .store(wall.saturating_sub(coarse_nanos), Ordering::Relaxed);
        let every = u64::try_from(ANCHOR_EVERY.as_nanos()).unwrap_or(u64::MAX);
        self.next_anchor
            .store(coarse_nanos.saturating_add(every), Ordering::Relaxed);
    }
}

impl Default for CoarseClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for CoarseClock {
    #[inline]
    fn now(&self) -> SystemTime {
        let coarse = coarsetime::Instant::now_without_cache_update()
            .duration_since(self.start)
            .as_nanos();
        if coarse >= self.next_anchor.load(Ordering::Relaxed) {
            // Once a second: two threads may both anchor, harmlessly.
            self.anchor(coarse);
        }
        UNIX_EPOCH
            + Duration::from_nanos(coarse.saturating_add(self.offset_nanos.load(Ordering::Relaxed)))
    }
}

impl fmt::Debug for CoarseClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CoarseClock")
            .field("now", &self.now())
            .finish()
    }
}

/// A clock that only moves when told to; clones share the same time.
///
/// ```
/// use std::time::{Duration, UNIX_EPOCH};
/// use tower_saas_guard::{Clock, ManualClock};
///
/// let clock = ManualClock::new(UNIX_EPOCH + Duration::from_secs(1_000));
/// let view = clock.clone();
/// clock.advance(Duration::from_secs(5));
/// assert_eq!(view.now(), UNIX_EPOCH + Duration::from_secs(1_005));
/// ```
#[derive(Clone)]
pub struct ManualClock {
    micros: Arc<AtomicU64>,
}

impl ManualClock {
    /// A clock stopped at `start`.
    pub fn new(start: SystemTime) -> Self {
        Self {
            micros: Arc::new(AtomicU64::new(to_micros(start))),
        }
    }

    /// A clock stopped at the current system time.
    pub fn starting_now() -> Self {
        Self::new(SystemTime::now())
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        let by = u64::try_from(by.as_micros()).unwrap_or(u64::MAX);
        self.micros.fetch_add(by, Ordering::SeqCst);
    }

    /// Sets the clock to `to` (which may be in the past).
    pub fn set(&self, to: SystemTime) {
        self.micros.store(to_micros(to), Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_micros(self.micros.load(Ordering::SeqCst))
    }
}

impl fmt::Debug for ManualClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ManualClock")
            .field("now", &self.now())
            .finish()
    }
}

fn to_micros(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Truncates `at` to whole milliseconds, the precision every store keeps.
pub(crate) fn truncate_to_millis(at: SystemTime) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(unix_millis(at))
}

/// `at` as whole milliseconds since the Unix epoch (0 before it).
pub fn unix_millis(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// `at` as an RFC 3339 UTC timestamp with milliseconds (`2026-11-24T01:16:06.123Z`).
pub fn rfc3339_millis(at: SystemTime) -> String {
    humantime::format_rfc3339_millis(truncate_to_millis(at)).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coarse_clock_stays_within_a_few_ticks_of_the_system_clock() {
        let coarse = CoarseClock::new();
        for _ in 0..1000 {
            let before = SystemTime::now();
            let read = coarse.now();
            let after = SystemTime::now();
            // Coarse readings lag by at most a kernel tick or two.
            let slack = Duration::from_millis(20);
            assert!(read + slack >= before, "{read:?} lags {before:?}");
            assert!(read <= after + slack, "{read:?} leads {after:?}");
        }
    }
}
