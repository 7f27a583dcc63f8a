//! A schedule: what to send, when, and what to do about ticks that were
//! missed.

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use croner::parser::{CronParser, Seconds};
use dramaturg_core::{Actor, App, EnqueueError, Message, Options};
use jiff::tz::TimeZone;

use crate::every::Every;

/// The most missed ticks [`Missed::CatchUp`] may enqueue.
pub const MAX_CATCH_UP: u32 = 1000;

/// The default [`Schedule::grace`]: 2 seconds.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(2);

/// The shortest [`Schedule::grace`]: 100 ms. A worker wakes a few
/// milliseconds after a tick, later when its machine is busy; a grace
/// shorter than that would drop ticks no worker missed.
pub const MIN_GRACE: Duration = Duration::from_millis(100);

/// The longest interval of [`Schedule::interval`]: 10 years, as long as
/// a store keeps anything.
pub const MAX_INTERVAL: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// What a schedule does with ticks that no worker enqueued in time
/// (every worker was stopped, or too busy, for longer than the grace).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Missed {
    /// Enqueue none of them: the next tick is the next one due. The
    /// default.
    #[default]
    Skip,
    /// Enqueue the latest `max` of them (oldest first, each with its own
    /// tick time) when a worker is back, and skip older ones; `max` is 1
    /// to [`MAX_CATCH_UP`].
    CatchUp {
        /// How many missed ticks at most.
        max: u32,
    },
}

/// A schedule is wrong: a cron expression that does not parse, an unknown
/// time zone, an interval of zero, a catch-up bound out of range, an
/// empty name.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ScheduleError {
    /// The cron expression does not parse.
    #[error("schedule {name:?}: invalid cron expression {expression:?}: {source}")]
    Cron {
        /// The schedule.
        name: String,
        /// The expression.
        expression: String,
        /// Why.
        source: croner::errors::CronError,
    },
    /// The time zone is not in the tz database.
    #[error("schedule {name:?}: unknown time zone {zone:?}: {source}")]
    TimeZone {
        /// The schedule.
        name: String,
        /// The zone asked for.
        zone: String,
        /// Why.
        source: jiff::Error,
    },
    /// Anything else: an interval of zero, a catch-up bound out of range,
    /// a time zone on an interval, an empty name.
    #[error("schedule {name:?}: {reason}")]
    Invalid {
        /// The schedule.
        name: String,
        /// What is wrong.
        reason: String,
    },
}

/// Builds a tick's message with the app's encoder.
type MakeMessage = dyn Fn(&App) -> Result<Message, EnqueueError> + Send + Sync;

/// A message to send on a schedule: a cron expression (with optional
/// seconds, in a time zone from the tz database, UTC by default) or a
/// fixed interval. Register schedules on a
/// [`Periodic`](crate::Periodic) middleware.
///
/// Every tick's message carries its schedule's name and its tick time
/// (options [`PERIODIC_SCHEDULE`](crate::PERIODIC_SCHEDULE) and
/// [`PERIODIC_TICK_MS`](crate::PERIODIC_TICK_MS)).
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use dramaturg_core::{actor::into_job_result, Actor, Context, Job};
/// use dramaturg_schedule::{Missed, Schedule};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Serialize, Deserialize)]
/// struct Report { kind: String }
///
/// impl Actor for Report {
///     const NAME: &'static str = "report";
///     const QUEUE: &'static str = "default";
///     type Output = ();
///     fn into_job(self, _ctx: Context) -> Job {
///         Box::pin(async { into_job_result::<Self, _>(Ok::<(), std::io::Error>(())) })
///     }
/// }
///
/// // 03:00 every weekday in Berlin; after downtime, catch up on at most 2 missed runs.
/// let nightly = Schedule::cron("nightly-report", "0 3 * * MON-FRI", Report { kind: "daily".into() })
///     .unwrap()
///     .time_zone("Europe/Berlin")
///     .unwrap()
///     .missed(Missed::CatchUp { max: 2 })
///     .unwrap();
/// // Every 30 seconds (with seconds: "*/30 * * * * *"), spread over up to 5 s.
/// let poll = Schedule::interval("poll", Duration::from_secs(30), Report { kind: "poll".into() })
///     .unwrap()
///     .jitter(Duration::from_secs(5))
///     .unwrap();
/// assert_eq!(nightly.name(), "nightly-report");
/// # let _ = poll;
/// ```
pub struct Schedule {
    name: String,
    every: Every,
    actor: &'static str,
    message: Arc<MakeMessage>,
    missed: Missed,
    grace: Duration,
    jitter: Duration,
}

impl Schedule {
    /// Sends `message` at the times the cron expression `expression`
    /// matches, in UTC (see [`Schedule::time_zone`]). Five fields
    /// (minute, hour, day of month, month, day of week) or six with
    /// seconds first; `@daily`-style nicknames, `L`, `#` and `W` as the
    /// `croner` crate reads them.
    ///
    /// # Errors
    ///
    /// [`ScheduleError::Cron`] for an expression that does not parse,
    /// [`ScheduleError::Invalid`] for an empty name.
    pub fn cron<A: Actor>(name: impl Into<String>, expression: &str, message: A) -> Result<Self, ScheduleError> {
        let name = name.into();
        let cron =
            CronParser::builder().seconds(Seconds::Optional).build().parse(expression).map_err(|source| {
                ScheduleError::Cron { name: name.clone(), expression: expression.to_owned(), source }
            })?;
        Self::new(name, Every::Cron { cron: Box::new(cron), zone: TimeZone::UTC }, message)
    }

    /// Sends `message` every `every`, at whole multiples of it since the
    /// Unix epoch (every minute on the minute, every 15 s at :00, :15, …),
    /// so that every worker computes the same ticks.
    ///
    /// # Errors
    ///
    /// [`ScheduleError::Invalid`] for an interval under 1 ms or over
    /// [`MAX_INTERVAL`], or an empty name.
    pub fn interval<A: Actor>(name: impl Into<String>, every: Duration, message: A) -> Result<Self, ScheduleError> {
        let name = name.into();
        let millis = u64::try_from(every.as_millis()).unwrap_or(u64::MAX);
        if millis == 0 || every > MAX_INTERVAL {
            return Err(ScheduleError::Invalid {
                name,
                reason: format!("an interval must be 1 ms to {} days, not {every:?}", MAX_INTERVAL.as_secs() / 86_400),
            });
        }
        Self::new(name, Every::Interval(millis), message)
    }

    fn new<A: Actor>(name: String, every: Every, message: A) -> Result<Self, ScheduleError> {
        if name.trim().is_empty() || name.len() > 200 {
            return Err(ScheduleError::Invalid {
                name,
                reason: "a schedule's name must have 1 to 200 bytes, not all blank".into(),
            });
        }
        // Encoded anew at every tick, with the app's encoder; the lock
        // makes a `Send` actor shareable.
        let message = Mutex::new(message);
        let make = move |app: &App| {
            let actor = message.lock().unwrap_or_else(PoisonError::into_inner);
            app.message(&*actor, Options::default())
        };
        Ok(Self {
            name,
            every,
            actor: A::NAME,
            message: Arc::new(make),
            missed: Missed::default(),
            grace: DEFAULT_GRACE,
            jitter: Duration::ZERO,
        })
    }

    /// Reads a cron schedule's times in the time zone named `zone` (an
    /// IANA name, `"Europe/Berlin"`), daylight saving time included.
    ///
    /// # Errors
    ///
    /// [`ScheduleError::TimeZone`] for a zone the tz database does not
    /// know, [`ScheduleError::Invalid`] on an interval schedule.
    pub fn time_zone(mut self, zone: &str) -> Result<Self, ScheduleError> {
        let found = TimeZone::get(zone).map_err(|source| ScheduleError::TimeZone {
            name: self.name.clone(),
            zone: zone.to_owned(),
            source,
        })?;
        match &mut self.every {
            Every::Cron { zone, .. } => *zone = found,
            Every::Interval(_) => {
                return Err(ScheduleError::Invalid {
                    name: self.name,
                    reason: "an interval has no time zone; use a cron expression".into(),
                })
            }
        }
        Ok(self)
    }

    /// What to do with missed ticks (default [`Missed::Skip`]).
    ///
    /// # Errors
    ///
    /// [`ScheduleError::Invalid`] for a catch-up bound of 0 or over
    /// [`MAX_CATCH_UP`].
    pub fn missed(mut self, missed: Missed) -> Result<Self, ScheduleError> {
        if let Missed::CatchUp { max } = missed {
            if max == 0 || max > MAX_CATCH_UP {
                return Err(ScheduleError::Invalid {
                    name: self.name,
                    reason: format!("catch up on 1 to {MAX_CATCH_UP} ticks, not {max}"),
                });
            }
        }
        self.missed = missed;
        Ok(self)
    }

    /// How late a tick may still be enqueued (default [`DEFAULT_GRACE`]):
    /// a worker that wakes later than this after a tick (every worker
    /// stopped, or stalled) counts it as missed, and logs it. It also
    /// bounds how long a worker that starts considers ticks before it
    /// started. Keep it well above the time a busy worker may wake late
    /// (a second or more).
    ///
    /// # Errors
    ///
    /// [`ScheduleError::Invalid`] for a grace under [`MIN_GRACE`].
    pub fn grace(mut self, grace: Duration) -> Result<Self, ScheduleError> {
        if grace < MIN_GRACE {
            return Err(ScheduleError::Invalid {
                name: self.name,
                reason: format!("a grace must be at least {MIN_GRACE:?}, not {grace:?}: ticks would be dropped"),
            });
        }
        self.grace = grace;
        Ok(self)
    }

    /// Delays each tick's message by a random time up to `jitter`
    /// (default none), so that schedules due at the same time do not all
    /// start together. The tick time the message carries stays the tick's.
    /// [`AppBuilder::build`](dramaturg_core::AppBuilder::build) refuses a
    /// jitter over the actor's `max_age` (some ticks would be skipped as
    /// too old).
    ///
    /// # Errors
    ///
    /// [`ScheduleError::Invalid`] for a jitter over
    /// [`MAX_DELAY`](dramaturg_core::MAX_DELAY), the longest delay a
    /// message may have.
    pub fn jitter(mut self, jitter: Duration) -> Result<Self, ScheduleError> {
        if jitter > dramaturg_core::MAX_DELAY {
            return Err(ScheduleError::Invalid {
                name: self.name,
                reason: format!("a jitter must be at most {:?} (MAX_DELAY), not {jitter:?}", dramaturg_core::MAX_DELAY),
            });
        }
        self.jitter = jitter;
        Ok(self)
    }

    /// The schedule's name: unique among an app's schedules, part of its
    /// claim keys in the store (so renaming a schedule forgets which ticks
    /// were enqueued).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The actor it sends to.
    pub fn actor(&self) -> &'static str {
        self.actor
    }

    /// The first tick after `at_ms` (milliseconds since the Unix epoch),
    /// if the schedule has one.
    pub fn next_after(&self, at_ms: u64) -> Option<u64> {
        self.every.after(at_ms)
    }

    /// The tick's message, built with the app's encoder.
    pub(crate) fn message(&self, app: &App) -> Result<Message, EnqueueError> {
        (self.message)(app)
    }

    pub(crate) fn every(&self) -> &Every {
        &self.every
    }

    pub(crate) fn missed_policy(&self) -> Missed {
        self.missed
    }

    pub(crate) fn grace_period(&self) -> Duration {
        self.grace
    }

    pub(crate) fn jitter_bound(&self) -> Duration {
        self.jitter
    }
}

impl fmt::Debug for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Schedule")
            .field("name", &self.name)
            .field("every", &self.every)
            .field("actor", &self.actor)
            .field("missed", &self.missed)
            .field("grace", &self.grace)
            .field("jitter", &self.jitter)
            .finish()
    }
}
