//! The retry middleware of [dramaturg](https://docs.rs/dramaturg): a failed
//! attempt is put back in the broker with a delay — it holds no worker slot
//! while it waits — until its retries are used up; then the message is
//! dead-lettered with its last error record.
//!
//! # Defaults
//!
//! 5 retries, with backoff from 2 seconds doubling up to 10 minutes: a
//! message that keeps failing is dead-lettered about a minute after its
//! first failure (2 + 4 + 8 + 16 + 32 = 62 s before jitter). That rides out
//! restarts and brief outages, and a newcomer sees the final outcome while
//! still looking. (Dramatiq's 20 retries between 15 s and 7 days spread over
//! about a month.) Raise `max_retries` for jobs that must wait out long
//! outages; the 10-minute cap then keeps the gaps reasonable.
//!
//! # Backoff
//!
//! Before retry *n* (0 for the first retry) the delay is
//!
//! ```text
//! base  = min(max_backoff, min_backoff × 2ⁿ)
//! delay = max(min_backoff, base × (1 − j/2)),  j uniform in [0, 1)
//! ```
//!
//! so each delay lies between half the exponential step and the full step,
//! never below `min_backoff` — retries of many messages that failed together
//! spread out instead of returning as a herd.
//!
//! # What is retried
//!
//! In this order:
//!
//! 1. an actor that returned [`Fail::permanent`](dramaturg_core::Fail::permanent)
//!    is never retried;
//! 2. errors of the types registered with [`Retries::never_retry`] (matched
//!    by type on the error value, boxed or not) are never retried;
//! 3. a [`Retries::retry_when`] policy, if set, decides alone (it gets the
//!    error record and the retry count; `max_retries` is not consulted);
//! 4. otherwise the message is retried while it has fewer than `max_retries`
//!    retries.
//!
//! An actor's [`Fail::retry_after`](dramaturg_core::Fail::retry_after) sets
//! the delay of its retry. Messages returned to their queue by a shutdown,
//! or skipped by an abort, are not failures: they are neither retried nor
//! counted.
//!
//! # Nothing lost
//!
//! A retry is a settlement, not a send: the middleware returns
//! [`Outcome::Retried`] with the next attempt (retry count + 1, the last
//! error record in its options), and the worker has the broker replace the
//! delivery with it in one step ([`Settlement::Reschedule`](dramaturg_core::Settlement::Reschedule):
//! one script on Redis; a confirmed publish to the delay queue, then the
//! ack, on RabbitMQ). Enqueue middleware does not run again for a retry. If
//! the broker cannot be told, the worker tries again while the delivery's
//! claim holds; after that the original message is redelivered.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use dramaturg_core::{
    async_trait, Context, DeclaredOption, ErrorRecord, ErrorType, Failure, Middleware, Next, NextAttempt, OptionKey,
    Outcome, Retry, MAX_DELAY,
};

/// The key under which a retried message carries the record of the failure
/// that caused its retry (read it with `ctx.options().option(LAST_ERROR)`).
pub const LAST_ERROR: OptionKey<ErrorRecord> = OptionKey::new("last_error");

/// Exponential backoff with jitter; see the crate docs for the formula.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    /// The shortest delay.
    pub min: Duration,
    /// The longest delay.
    pub max: Duration,
}

impl Default for Backoff {
    /// From 2 seconds to 10 minutes.
    fn default() -> Self {
        Self { min: Duration::from_secs(2), max: Duration::from_secs(600) }
    }
}

impl Backoff {
    /// The delay before retry `retries` (0 for the first retry), with the
    /// jitter drawn as `jitter` in `[0, 1)` (0 gives the full step).
    pub fn delay(&self, retries: u32, jitter: f64) -> Duration {
        let factor = 2f64.powi(i32::try_from(retries).unwrap_or(i32::MAX));
        let base = self.min.mul_f64(factor.min(1e9)).min(self.max);
        base.mul_f64(1.0 - jitter.clamp(0.0, 1.0) / 2.0).max(self.min)
    }
}

/// What a [`Retries::retry_when`] policy decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Decision {
    /// Retry after the backoff.
    Retry,
    /// Retry after this delay.
    RetryAfter(Duration),
    /// Do not retry: dead-letter the message.
    GiveUp,
}

type Policy = dyn Fn(&ErrorRecord, u32) -> Decision + Send + Sync;
type ExhaustedHook = dyn Fn(&Context, &ErrorRecord) + Send + Sync;

/// The retry middleware. Named `"retries"` in the stack.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use dramaturg_retries::{Decision, Retries};
///
/// let retries = Retries::new()
///     .max_retries(10)
///     .backoff(Duration::from_millis(500), Duration::from_secs(60))
///     .never_retry::<std::num::ParseIntError>()
///     .on_exhausted(|ctx, record| eprintln!("{} gave up: {}", ctx.id(), record.summary()));
///
/// // Or a policy of your own, which decides alone:
/// let only_timeouts = Retries::new().retry_when(|record, retries| {
///     if record.message.contains("timed out") && retries < 3 { Decision::Retry } else { Decision::GiveUp }
/// });
/// # let _ = (retries, only_timeouts);
/// ```
#[derive(Clone)]
pub struct Retries {
    max_retries: u32,
    backoff: Backoff,
    never: Vec<ErrorType>,
    policy: Option<Arc<Policy>>,
    on_exhausted: Option<Arc<ExhaustedHook>>,
}

impl Default for Retries {
    fn default() -> Self {
        Self::new()
    }
}

impl Retries {
    /// 5 retries, backoff from 2 s to 10 min.
    pub fn new() -> Self {
        Self { max_retries: 5, backoff: Backoff::default(), never: Vec::new(), policy: None, on_exhausted: None }
    }

    /// Retries per message unless the message or its actor says otherwise.
    #[must_use]
    pub fn max_retries(mut self, n: u32) -> Self {
        self.max_retries = n;
        self
    }

    /// The backoff bounds unless the message or its actor says otherwise.
    #[must_use]
    pub fn backoff(mut self, min: Duration, max: Duration) -> Self {
        self.backoff = Backoff { min, max: max.max(min) };
        self
    }

    /// Never retries failures whose error is an `E`: the error a handler
    /// returns, the one wrapped in a `Fail`, the one inside a boxed error
    /// (`Result<_, BoxError>`), or one in the error's source chain. Matched
    /// by type (`TypeId`) on the error value, which error capture does
    /// before it drops the value.
    #[must_use]
    pub fn never_retry<E: std::error::Error + 'static>(mut self) -> Self {
        self.never.push(ErrorType::of::<E>());
        self
    }

    /// Lets `policy` decide, from the error record and the number of retries
    /// so far, whether and when to retry. It replaces the `max_retries` check.
    #[must_use]
    pub fn retry_when(mut self, policy: impl Fn(&ErrorRecord, u32) -> Decision + Send + Sync + 'static) -> Self {
        self.policy = Some(Arc::new(policy));
        self
    }

    /// Runs `hook` once when a message fails for good (retries used up, or
    /// not to be retried), before it is dead-lettered.
    #[must_use]
    pub fn on_exhausted(mut self, hook: impl Fn(&Context, &ErrorRecord) + Send + Sync + 'static) -> Self {
        self.on_exhausted = Some(Arc::new(hook));
        self
    }

    /// Whether and when to retry this failure of `ctx`'s message.
    fn decide(&self, ctx: &Context, failure: &mut Failure) -> Option<Duration> {
        let wish = failure.retry();
        if wish == Retry::Never {
            return None;
        }
        if self.never.iter().any(|ty| failure.is(ty)) {
            return None;
        }
        let record = failure.record();
        let retries = ctx.retries();
        let decision = match &self.policy {
            Some(policy) => policy(record, retries),
            None => {
                let max = ctx.options().max_retries.unwrap_or(self.max_retries);
                if retries < max {
                    Decision::Retry
                } else {
                    Decision::GiveUp
                }
            }
        };
        let options = ctx.options();
        let backoff = Backoff {
            min: options.min_backoff.unwrap_or(self.backoff.min),
            max: options.max_backoff.unwrap_or(self.backoff.max),
        };
        let delay = match (decision, wish) {
            (Decision::GiveUp, _) => return None,
            (_, Retry::After(delay)) | (Decision::RetryAfter(delay), _) => delay,
            (Decision::Retry, _) => backoff.delay(retries, rand::random::<f64>()),
        };
        if delay > MAX_DELAY {
            tracing::warn!(?delay, "no retry: its delay exceeds the longest allowed ({MAX_DELAY:?})");
            return None;
        }
        // A retry that falls due past the message's max_age would only be
        // skipped as too old: the message fails for good now instead.
        if let Some(max_age) = options.max_age.filter(|max_age| ctx.message_age() + delay >= *max_age) {
            tracing::warn!(?delay, ?max_age, "no retry: it would fall due past the message's max_age");
            return None;
        }
        Some(delay)
    }
}

#[async_trait]
impl Middleware for Retries {
    fn name(&self) -> &'static str {
        dramaturg_core::middleware::names::RETRIES
    }

    fn declared_options(&self) -> Vec<DeclaredOption> {
        vec![LAST_ERROR.declare_local()]
    }

    fn error_types(&self) -> Vec<ErrorType> {
        self.never.clone()
    }

    async fn handle(&self, ctx: &Context, next: Next<'_>) -> Outcome {
        let mut failure = match next.run(ctx).await {
            // An attempt that was asked to abort is never retried, however
            // it ended: the abort middleware reports it as aborted.
            Outcome::Failed(failure) if ctx.abort_requested().is_none() => failure,
            other => return other,
        };
        let Some(delay) = self.decide(ctx, &mut failure) else {
            let record = failure.record();
            tracing::info!(error = %record.summary(), "no retry: the message will be dead-lettered");
            if let Some(hook) = &self.on_exhausted {
                hook(ctx, record);
            }
            return Outcome::Failed(failure);
        };
        let mut retry = ctx.message().clone();
        retry.retries += 1;
        match serde_json::to_value(failure.record()) {
            Ok(record) => {
                retry.options.extra.insert(LAST_ERROR.name().to_owned(), record);
            }
            Err(error) => tracing::debug!(%error, "cannot attach the error record to the retry"),
        }
        tracing::info!(retry = ctx.retries() + 1, delay_ms = dramaturg_core::time::millis(delay), "retry scheduled");
        // The worker has the broker replace this delivery with the retry in
        // one step (a settlement), so a crash in between neither loses the
        // message nor runs it twice.
        Outcome::Retried(failure, NextAttempt::new(retry, delay))
    }
}

impl fmt::Debug for Retries {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Retries")
            .field("max_retries", &self.max_retries)
            .field("backoff", &self.backoff)
            .field("never", &self.never)
            .field("policy", &self.policy.is_some())
            .field("on_exhausted", &self.on_exhausted.is_some())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_between_bounds_and_jitter_halves_at_most() {
        let backoff = Backoff { min: Duration::from_secs(1), max: Duration::from_secs(10) };
        let full: Vec<u64> = (0..6).map(|n| dramaturg_core::time::millis(backoff.delay(n, 0.0))).collect();
        assert_eq!(full, [1000, 2000, 4000, 8000, 10_000, 10_000]);
        for n in 0..40 {
            for jitter in [0.0, 0.3, 0.999] {
                let delay = backoff.delay(n, jitter);
                let step = backoff.delay(n, 0.0);
                assert!(delay >= backoff.min && delay <= step && delay >= step / 2, "{n} {jitter} {delay:?}");
            }
        }
        assert_eq!(backoff.delay(3, 0.5), Duration::from_secs(6));
        assert_eq!(backoff.delay(u32::MAX, 0.0), Duration::from_secs(10));
    }

    #[test]
    fn defaults_reach_the_dead_letter_queue_in_about_a_minute() {
        let total: Duration = (0..5).map(|n| Backoff::default().delay(n, 0.0)).sum();
        assert_eq!(total, Duration::from_secs(62));
    }
}
