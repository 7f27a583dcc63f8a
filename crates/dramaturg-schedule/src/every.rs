//! When a schedule ticks: a cron expression in a time zone, or a fixed
//! interval; tick times in milliseconds since the Unix epoch.

use std::fmt;

use croner::Cron;
use jiff::tz::TimeZone;
use jiff::{Timestamp, Zoned};

/// The tick times of a schedule.
#[derive(Clone)]
pub(crate) enum Every {
    /// Every this many milliseconds, at whole multiples of it since the
    /// epoch, so that every worker computes the same ticks.
    Interval(u64),
    /// The times a cron expression matches in a time zone.
    Cron { cron: Box<Cron>, zone: TimeZone },
}

impl Every {
    /// The latest tick at or before `at_ms`.
    pub(crate) fn at_or_before(&self, at_ms: u64) -> Option<u64> {
        match self {
            Self::Interval(every) => Some(at_ms - at_ms % every),
            Self::Cron { cron, zone } => {
                let found = cron.find_previous_occurrence(&zoned(at_ms, zone)?, true).ok()?;
                millis(&found).filter(|tick| *tick <= at_ms)
            }
        }
    }

    /// The first tick after `at_ms`.
    pub(crate) fn after(&self, at_ms: u64) -> Option<u64> {
        match self {
            Self::Interval(every) => (at_ms - at_ms % every).checked_add(*every),
            Self::Cron { cron, zone } => {
                let found = cron.find_next_occurrence(&zoned(at_ms, zone)?, false).ok()?;
                millis(&found).filter(|tick| *tick > at_ms)
            }
        }
    }

    /// The tick before `tick`.
    pub(crate) fn before(&self, tick: u64) -> Option<u64> {
        self.at_or_before(tick.checked_sub(1)?)
    }
}

impl fmt::Debug for Every {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Interval(every) => write!(f, "every {every} ms"),
            Self::Cron { cron, zone } => {
                write!(f, "cron {:?} in {}", cron.pattern.to_string(), zone.iana_name().unwrap_or("a fixed zone"))
            }
        }
    }
}

/// `at_ms` as a time in `zone`.
fn zoned(at_ms: u64, zone: &TimeZone) -> Option<Zoned> {
    Timestamp::from_millisecond(i64::try_from(at_ms).ok()?).ok().map(|at| at.to_zoned(zone.clone()))
}

/// `at` in milliseconds since the epoch.
fn millis(at: &Zoned) -> Option<u64> {
    u64::try_from(at.timestamp().as_millisecond()).ok()
}

#[cfg(test)]
mod tests {
    use croner::parser::{CronParser, Seconds};

    use super::*;

    fn cron(pattern: &str, zone: &str) -> Every {
        let cron = CronParser::builder().seconds(Seconds::Optional).build().parse(pattern).unwrap();
        Every::Cron { cron: Box::new(cron), zone: TimeZone::get(zone).unwrap() }
    }

    #[test]
    fn intervals_tick_at_multiples_of_themselves() {
        let every = Every::Interval(1000);
        assert_eq!(every.at_or_before(12_345), Some(12_000));
        assert_eq!(every.at_or_before(12_000), Some(12_000));
        assert_eq!(every.after(12_000), Some(13_000));
        assert_eq!(every.after(12_999), Some(13_000));
        assert_eq!(every.before(12_000), Some(11_000));
    }

    #[test]
    fn cron_seconds_tick_on_whole_seconds() {
        let every = cron("*/5 * * * * *", "UTC");
        // 2026-01-01T00:00:07.250Z
        let at = 1_767_225_607_250;
        assert_eq!(every.at_or_before(at), Some(1_767_225_605_000));
        assert_eq!(every.after(at), Some(1_767_225_610_000));
        assert_eq!(every.after(1_767_225_610_000), Some(1_767_225_615_000));
        assert_eq!(every.before(1_767_225_610_000), Some(1_767_225_605_000));
    }

    #[test]
    fn cron_follows_its_time_zone() {
        // 03:00 every day in Berlin is 02:00 UTC in winter.
        let every = cron("0 3 * * *", "Europe/Berlin");
        // 2026-01-01T00:00:00Z
        let midnight = 1_767_225_600_000;
        assert_eq!(every.after(midnight), Some(midnight + 2 * 3600 * 1000));
    }
}
