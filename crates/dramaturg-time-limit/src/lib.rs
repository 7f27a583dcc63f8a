//! The time-limit middleware of [dramaturg](https://docs.rs/dramaturg).
//!
//! - **`time_limit`**: the longest one attempt may run (default 10 minutes),
//!   set per actor (`#[actor(time_limit = "30s")]`), per message, or here.
//! - **`idle_timeout`** (off by default): the attempt fails if the actor does
//!   not call [`Context::heartbeat`] within that interval — for long jobs that
//!   are alive and progressing, which a plain maximum would kill.
//! - An actor can give itself more time with [`Context::extend_deadline`].
//!
//! Expiry is an ordinary, typed failure: the outcome is `Outcome::Failed`
//! with kind [`FailureKind::TimeLimitExceeded`] and a
//! [`TimeLimitExceeded`] error, which retries, callbacks and failure hooks
//! treat like any other failure — and which no broad error handler inside
//! the actor can swallow, because nothing is raised inside the actor.
//!
//! # What happens to the actor
//!
//! An **async** actor is stopped at its next `.await` once the deadline has
//! passed: its future is dropped, so whatever it owns is released (a
//! `tokio::process::Child` spawned with `kill_on_drop(true)` is killed).
//! Code that runs for long without reaching an `.await` cannot be stopped
//! this way.
//!
//! An async actor that **holds its thread** past the deadline (a
//! `std::thread::sleep`, a long computation without `.await`) cannot be
//! stopped either: the timer only fires once the thread is free. Its
//! attempt is checked when it ends, and one that ran past its limit fails
//! with `TimeLimitExceeded` whatever it returned. Its side effects did
//! happen; the failure is retried like any other (at-least-once), so make
//! such actors idempotent, or move the work to a `blocking` actor.
//!
//! A **blocking** actor runs on a thread that cannot be stopped from
//! outside. The attempt is failed on time all the same, and
//! [`Context::check`] starts returning `Err`, so a loop that calls it stops
//! early; a thread that never checks runs on until its handler returns,
//! and what it returns is discarded. The worker holds the message — its
//! concurrency slot, its delivery, its retry — until that thread has
//! returned, so attempts of one message never overlap.

use std::fmt;
use std::time::{Duration, Instant};

use dramaturg_core::{async_trait, Context, Failure, FailureKind, Interruption, Middleware, Next, Outcome};

/// Which limit an attempt ran past.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Limit {
    /// The maximum duration of an attempt.
    Duration,
    /// The longest time without a heartbeat.
    Inactivity,
}

/// The error of an attempt that ran past its time limit or inactivity limit.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TimeLimitExceeded {
    /// Which limit.
    pub limit: Limit,
    /// The limit in force (including extensions).
    pub after: Duration,
}

impl fmt::Display for TimeLimitExceeded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.limit {
            Limit::Duration => write!(f, "time limit exceeded: the attempt ran for more than {:?}", self.after),
            Limit::Inactivity => write!(f, "idle timeout: no heartbeat for {:?}", self.after),
        }
    }
}

impl std::error::Error for TimeLimitExceeded {}

impl fmt::Display for Limit {
    /// `time limit` or `idle timeout`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Limit::Duration => "time limit",
            Limit::Inactivity => "idle timeout",
        })
    }
}

/// The time-limit middleware. Named `"time_limit"` in the stack.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use dramaturg_time_limit::TimeLimit;
///
/// let limits = TimeLimit::new()
///     .time_limit(Duration::from_secs(60))
///     .idle_timeout(Duration::from_secs(10));
/// # let _ = limits;
/// ```
#[derive(Debug, Clone)]
pub struct TimeLimit {
    time_limit: Duration,
    idle_timeout: Option<Duration>,
}

impl Default for TimeLimit {
    fn default() -> Self {
        Self::new()
    }
}

impl TimeLimit {
    /// A 10-minute limit per attempt, no inactivity limit.
    pub fn new() -> Self {
        Self { time_limit: Duration::from_secs(600), idle_timeout: None }
    }

    /// The limit per attempt unless the message or its actor says otherwise.
    #[must_use]
    pub fn time_limit(mut self, limit: Duration) -> Self {
        self.time_limit = limit;
        self
    }

    /// An inactivity limit unless the message or its actor says otherwise.
    #[must_use]
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.idle_timeout = Some(timeout);
        self
    }
}

/// The limits of one attempt.
struct Deadlines {
    time_limit: Duration,
    idle_timeout: Option<Duration>,
}

impl Deadlines {
    /// The limit that has passed at `now`, if any, and otherwise when to look again.
    fn check(&self, ctx: &Context, now: Instant) -> Result<Instant, TimeLimitExceeded> {
        let limit = self.time_limit + ctx.deadline_extension();
        let deadline = ctx.started_at() + limit;
        if now >= deadline {
            return Err(TimeLimitExceeded { limit: Limit::Duration, after: limit });
        }
        match self.idle_timeout {
            Some(idle) => {
                let idle_deadline = ctx.last_heartbeat() + idle;
                if now >= idle_deadline {
                    return Err(TimeLimitExceeded { limit: Limit::Inactivity, after: idle });
                }
                Ok(deadline.min(idle_deadline))
            }
            None => Ok(deadline),
        }
    }
}

#[async_trait]
impl Middleware for TimeLimit {
    fn name(&self) -> &'static str {
        dramaturg_core::middleware::names::TIME_LIMIT
    }

    async fn handle(&self, ctx: &Context, next: Next<'_>) -> Outcome {
        let options = ctx.options();
        let deadlines = Deadlines {
            time_limit: options.time_limit.unwrap_or(self.time_limit),
            idle_timeout: options.idle_timeout.or(self.idle_timeout),
        };
        let attempt = next.run(ctx);
        tokio::pin!(attempt);
        let exceeded = loop {
            // Heartbeats and extensions move the deadlines; look again when
            // the earliest one comes.
            let wake = match deadlines.check(ctx, Instant::now()) {
                Ok(wake) => wake,
                Err(exceeded) => break exceeded,
            };
            tokio::select! {
                outcome = &mut attempt => match outcome {
                    // An attempt that held its thread past the deadline
                    // (no `.await` for the timer to win at) ran over all
                    // the same: it fails, whatever it returned.
                    Outcome::Succeeded(_) | Outcome::Failed(_) => match deadlines.check(ctx, Instant::now()) {
                        Ok(_) => return outcome,
                        Err(exceeded) => {
                            tracing::warn!(
                                limit = ?exceeded.after,
                                outcome = outcome.label(),
                                "{exceeded}; the attempt ended past it, failing it"
                            );
                            return Outcome::Failed(
                                Failure::from_error(exceeded).with_kind(FailureKind::TimeLimitExceeded),
                            );
                        }
                    },
                    other => return other,
                },
                () = tokio::time::sleep_until(wake.into()) => {}
            }
        };
        ctx.controls().interrupt(Interruption::TimeLimit);
        // `limit` is the value in force (`1m30s` prints as `90s`); which
        // limit it is, is in the message.
        tracing::warn!(limit = ?exceeded.after, "{exceeded}; stopping the attempt");
        Outcome::Failed(Failure::from_error(exceeded).with_kind(FailureKind::TimeLimitExceeded))
    }
}
