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

/// The last instant RFC 3339 can write: 9999-12-31T23:59:59.999Z.
fn latest_rfc3339() -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(253_402_300_799_999)
}

/// `at` as an RFC 3339 UTC timestamp with milliseconds
/// (`2026-11-24T01:16:06.123Z`); instants past year 9999 are written as
/// its last millisecond, instants before 1970 as the epoch.
pub fn rfc3339_millis(at: SystemTime) -> String {
    let at = truncate_to_millis(at).min(latest_rfc3339());
    humantime::format_rfc3339_millis(at).to_string()
}

/// A timestamp that is not RFC 3339 with an explicit offset.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid RFC 3339 timestamp {0:?}; expected e.g. 2026-11-24T01:16:06Z or 2026-11-24T02:16:06.5+01:00")]
pub struct InvalidTimestamp(pub String);

/// Parses an RFC 3339 timestamp: `YYYY-MM-DDTHH:MM:SS[.fraction]` followed
/// by `Z` or a `±HH:MM` offset (required), as billing systems send them.
///
/// ```
/// use std::time::{Duration, UNIX_EPOCH};
/// use tower_saas_guard::parse_rfc3339;
///
/// let utc = parse_rfc3339("2026-01-01T00:00:00Z")?;
/// assert_eq!(parse_rfc3339("2026-01-01T02:00:00+02:00")?, utc);
/// assert_eq!(parse_rfc3339("2025-12-31T23:30:00.000-00:30")?, utc);
/// assert_eq!(utc, UNIX_EPOCH + Duration::from_secs(1_767_225_600));
/// assert!(parse_rfc3339("2026-01-01T00:00:00").is_err()); // no offset
/// assert!(parse_rfc3339("2026-02-30T00:00:00Z").is_err());
/// # Ok::<(), tower_saas_guard::InvalidTimestamp>(())
/// ```
pub fn parse_rfc3339(text: &str) -> Result<SystemTime, InvalidTimestamp> {
    parse_rfc3339_parts(text.as_bytes()).ok_or_else(|| InvalidTimestamp(text.to_owned()))
}

fn parse_rfc3339_parts(text: &[u8]) -> Option<SystemTime> {
    fn digits(text: &[u8], at: usize, count: usize) -> Option<i64> {
        let field = text.get(at..at + count)?;
        field.iter().try_fold(0i64, |value, &byte| {
            byte.is_ascii_digit()
                .then(|| value * 10 + i64::from(byte - b'0'))
        })
    }
    let separator = |at: usize, expected: &[u8]| text.get(at).is_some_and(|b| expected.contains(b));
    let (year, month, day) = (
        digits(text, 0, 4)?,
        digits(text, 5, 2)?,
        digits(text, 8, 2)?,
    );
    let (hour, minute, second) = (
        digits(text, 11, 2)?,
        digits(text, 14, 2)?,
        digits(text, 17, 2)?,
    );
    let shaped = separator(4, b"-")
        && separator(7, b"-")
        && separator(10, b"Tt")
        && separator(13, b":")
        && separator(16, b":");
    if !shaped {
        return None;
    }
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let month_days = [
        31,
        if leap { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    if !(1..=12).contains(&month)
        || day < 1
        || day > month_days[usize::try_from(month - 1).ok()?]
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    // Fraction of a second, then the offset.
    let mut at = 19;
    let mut nanos = 0u32;
    if separator(at, b".") {
        at += 1;
        let start = at;
        while text.get(at).is_some_and(u8::is_ascii_digit) {
            if at - start < 9 {
                nanos = nanos * 10 + u32::from(text[at] - b'0');
            }
            at += 1;
        }
        let kept = (at - start).min(9);
        if kept == 0 {
            return None;
        }
        nanos *= 10u32.pow(u32::try_from(9 - kept).ok()?);
    }
    let offset_seconds = match text.get(at..)? {
        b"Z" | b"z" => 0,
        [sign @ (b'+' | b'-'), rest @ ..] if rest.len() == 5 && rest[2] == b':' => {
            let (hours, minutes) = (digits(rest, 0, 2)?, digits(rest, 3, 2)?);
            if hours > 23 || minutes > 59 {
                return None;
            }
            let magnitude = hours * 3600 + minutes * 60;
            if *sign == b'+' {
                magnitude
            } else {
                -magnitude
            }
        }
        _ => return None,
    };
    // Days since the epoch of a proleptic Gregorian date (H. Hinnant).
    let shifted_year = if month <= 2 { year - 1 } else { year };
    let era = shifted_year.div_euclid(400);
    let year_of_era = shifted_year - era * 400;
    let day_of_year = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    let days = era * 146_097 + day_of_era - 719_468;
    let seconds = days * 86_400 + hour * 3600 + minute * 60 + second - offset_seconds;
    let whole = Duration::from_secs(seconds.unsigned_abs());
    let instant = if seconds >= 0 {
        UNIX_EPOCH.checked_add(whole)?
    } else {
        UNIX_EPOCH.checked_sub(whole)?
    };
    instant.checked_add(Duration::from_nanos(u64::from(nanos)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_round_trips_and_rejects_what_is_not_rfc3339() {
        for millis in [0u64, 1, 999, 1_767_225_600_123, 253_402_300_799_999] {
            let at = UNIX_EPOCH + Duration::from_millis(millis);
            assert_eq!(parse_rfc3339(&rfc3339_millis(at)), Ok(at), "{millis}");
        }
        let expected = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        for text in [
            "2000-02-29T00:00:00Z",
            "2000-02-29t00:00:00z",
            "2000-02-28T23:00:00-01:00",
            "2000-02-29T05:30:00+05:30",
            "2000-02-29T00:00:00.000000000000Z",
        ] {
            assert_eq!(parse_rfc3339(text), Ok(expected), "{text}");
        }
        assert_eq!(
            parse_rfc3339("1969-12-31T23:59:59.5Z"),
            Ok(UNIX_EPOCH - Duration::from_millis(500))
        );
        for text in [
            "",
            "2026-01-01",
            "2026-01-01T00:00:00",
            "2026-01-01 00:00:00Z",
            "2026-13-01T00:00:00Z",
            "2026-02-29T00:00:00Z",
            "2026-01-01T24:00:00Z",
            "2026-01-01T00:00:00.Z",
            "2026-01-01T00:00:00+2:00",
            "2026-01-01T00:00:00+24:00",
            "2026-01-01T00:00:00Zjunk",
            "２０２６-01-01T00:00:00Z",
            "+002026-01-01T00:00:00Z",
        ] {
            assert!(parse_rfc3339(text).is_err(), "{text:?}");
        }
    }

    #[test]
    fn timestamps_past_year_9999_are_written_as_its_last_millisecond() {
        let far = UNIX_EPOCH + Duration::from_secs(400_000_000_000);
        assert_eq!(rfc3339_millis(far), "9999-12-31T23:59:59.999Z");
    }

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
