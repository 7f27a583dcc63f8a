//! Rates written as text: `"100/s"`, `"5/m"`, `"20/10s"`.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// At most `limit` per `period`, parsed from `"<limit>/<period>"`, where the
/// period is a unit (`ms`, `s`, `m`, `h`, `d`) or a duration in
/// [humantime](https://docs.rs/humantime)'s format (`10s`, `1m 30s`,
/// `500ms`).
///
/// ```
/// use std::time::Duration;
/// use dramaturg_rate_limits::Rate;
///
/// let rate: Rate = "100/s".parse().unwrap();
/// assert_eq!((rate.limit(), rate.period()), (100, Duration::from_secs(1)));
/// let rate: Rate = "20/10s".parse().unwrap();
/// assert_eq!((rate.limit(), rate.period()), (20, Duration::from_secs(10)));
/// assert!("0/s".parse::<Rate>().is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Rate {
    limit: u64,
    period: Duration,
}

/// Why a text is not a [`Rate`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid rate {text:?}: {reason} (write it like \"100/s\", \"5/m\" or \"20/10s\")")]
pub struct ParseRateError {
    text: String,
    reason: String,
}

impl Rate {
    /// At most `limit` (at least 1) per `period` (at least 1 ms).
    ///
    /// # Panics
    ///
    /// When `limit` is 0 or `period` is under a millisecond.
    pub fn new(limit: u64, period: Duration) -> Self {
        assert!(limit > 0 && period >= Duration::from_millis(1), "a rate needs a limit and a period of 1 ms or more");
        Self { limit, period }
    }

    /// How many per period.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// The period.
    pub fn period(&self) -> Duration {
        self.period
    }
}

impl FromStr for Rate {
    type Err = ParseRateError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let error = |reason: &str| ParseRateError { text: text.to_owned(), reason: reason.to_owned() };
        let (limit, period) = text.split_once('/').ok_or_else(|| error("no '/'"))?;
        let limit: u64 = limit.trim().parse().map_err(|_| error("the limit is not a whole number"))?;
        let period = period.trim();
        let period = if period.starts_with(|c: char| c.is_ascii_digit()) {
            humantime::parse_duration(period).map_err(|e| error(&e.to_string()))?
        } else {
            humantime::parse_duration(&format!("1{period}")).map_err(|e| error(&e.to_string()))?
        };
        if limit == 0 || period < Duration::from_millis(1) {
            return Err(error("the limit and the period must be at least 1 and 1 ms"));
        }
        Ok(Self { limit, period })
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.limit, humantime::format_duration(self.period))
    }
}
