//! Durations as the whole milliseconds of the wire format, logs and brokers.

use std::time::Duration;

/// `duration` in whole milliseconds, saturating at `u64::MAX` (about 584
/// million years) instead of wrapping.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use dramaturg_core::time::millis;
///
/// assert_eq!(millis(Duration::from_micros(1_999)), 1);
/// assert_eq!(millis(Duration::MAX), u64::MAX);
/// ```
pub fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}
