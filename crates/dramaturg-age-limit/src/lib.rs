//! The age-limit middleware of [dramaturg](https://docs.rs/dramaturg): a
//! message older than its `max_age` — counted from its first enqueue, so
//! retries do not reset it — is skipped: acknowledged and logged, not run.
//!
//! `max_age` comes from the message, then its actor
//! (`#[actor(max_age = "1h")]`), then [`AgeLimit::max_age`]; with none of
//! them set, messages never expire.

use std::time::Duration;

use dramaturg_core::{async_trait, Context, Middleware, Next, Outcome};

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
        "age_limit"
    }

    async fn handle(&self, ctx: &Context, next: Next<'_>) -> Outcome {
        if let Some(max_age) = ctx.options().max_age.or(self.max_age) {
            let age = ctx.message().age();
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
