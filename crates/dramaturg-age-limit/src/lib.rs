//! The age-limit middleware of [dramaturg](https://docs.rs/dramaturg): a
//! message older than its `max_age` — counted from its first enqueue, so
//! retries do not reset it — is skipped: acknowledged and logged, not run.
//!
//! A message sent with a delay longer than its max_age could never run.
//! Sending one is refused when the message or its actor sets the max_age
//! ([`EnqueueError::DelayBeyondMaxAge`](dramaturg_core::EnqueueError::DelayBeyondMaxAge));
//! when only this middleware's default does, the message is dead-lettered
//! with that reason when it falls due, never skipped without a trace.
//!
//! `max_age` comes from the message, then its actor
//! (`#[actor(max_age = "1h")]`), then [`AgeLimit::max_age`]; with none of
//! them set, messages never expire.

use std::time::Duration;

use dramaturg_core::{async_trait, Context, Fail, Failure, Middleware, Next, Outcome};

/// Why a message sent with a delay at least as long as its max_age is
/// dead-lettered when it falls due.
#[derive(Debug, thiserror::Error)]
#[error("sent with a delay of {delay:?}, at or beyond its max_age of {max_age:?}: it could never run")]
pub struct DelayBeyondMaxAge {
    /// The delay it was sent with.
    pub delay: Duration,
    /// Its max_age.
    pub max_age: Duration,
}

/// The age-limit middleware. Named `"age_limit"` in the stack.
#[derive(Debug, Clone, Default)]
pub struct AgeLimit {
    max_age: Option<Duration>,
}

impl AgeLimit {
    /// No limit unless the message or its actor sets one.
    pub fn new() -> Self {
        Self::default()
    }

    /// A limit for messages whose actor sets none.
    #[must_use]
    pub fn max_age(mut self, max_age: Duration) -> Self {
        self.max_age = Some(max_age);
        self
    }
}

#[async_trait]
impl Middleware for AgeLimit {
    fn name(&self) -> &'static str {
        dramaturg_core::middleware::names::AGE_LIMIT
    }

    async fn handle(&self, ctx: &Context, next: Next<'_>) -> Outcome {
        if let Some(max_age) = ctx.options().max_age.or(self.max_age) {
            let age = ctx.message_age();
            if let Some(delay) = ctx.message().send_delay().filter(|delay| *delay > max_age) {
                let reason =
                    format!("sent with a delay of {delay:?}, beyond its max_age of {max_age:?}: it could never run");
                tracing::error!(%reason, "dead-lettering a message delayed past its max_age");
                return Outcome::Failed(Failure::from_error(Fail::permanent(reason)));
            }
            if age > max_age {
                tracing::warn!(
                    age_ms = dramaturg_core::time::millis(age),
                    max_age_ms = dramaturg_core::time::millis(max_age),
                    "message too old; skipped"
                );
                return Outcome::Skipped(format!("older than its max_age of {max_age:?} ({age:?})").into());
            }
        }
        next.run(ctx).await
    }
}
