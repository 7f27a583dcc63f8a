//! The middleware that enforces the limits actors declare.

use std::sync::Arc;
use std::time::Duration;

use dramaturg_core::store::Store;
use dramaturg_core::{
    async_trait, App, Broker, ConfigError, Context, DeclaredOption, Fail, Failure, Middleware, Next, NextAttempt,
    OptionKey, Options, Outcome,
};

use crate::limiter::{jittered, LimitError, Limiter, Permit, DEFAULT_LEASE, DEFAULT_RECHECK, DEFAULT_TIMEOUT};
use crate::rate::Rate;

/// The name of the middleware in the stack.
pub const NAME: &str = "rate_limits";

/// At most this many messages of the actor start per sliding window, across
/// every worker: a [`Rate`] as text, like `"100/s"` (per actor:
/// `#[actor(rate_limit = "100/s")]`, or per message).
pub const RATE_LIMIT: OptionKey<String> = OptionKey::new("rate_limit");

/// At most this many messages of the actor run at once, across every
/// worker (`#[actor(concurrency = 3)]`).
pub const CONCURRENCY: OptionKey<u64> = OptionKey::new("concurrency");

/// The name of an argument (a field of the actor's struct) whose value
/// keys the actor's limits: each tenant (say) gets its own
/// `rate_limit` and `concurrency` (`#[actor(limit_key = "tenant")]`).
/// A string value is the key as it is; another value, its JSON text.
pub const LIMIT_KEY: OptionKey<String> = OptionKey::new("limit_key");

/// The middleware of the default stack that must stay outside this one:
/// the retries see a failure to reach the limiter's store.
const OUTSIDE: &str = dramaturg_core::middleware::names::RETRIES;

/// What a message does when the limiter's store cannot be reached or does
/// not answer within the timeout ([`RateLimits::timeout`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum WhenUnreachable {
    /// The attempt fails with the [`LimitError`], as any failure: the
    /// retries middleware retries it with its backoff (and counts a
    /// retry). Limits are never exceeded. The default.
    #[default]
    FailRetryable,
    /// The message runs without a limit (logged as a warning): work goes
    /// on while the store is down, at the cost of the limit.
    LetThrough,
}

/// The rate-limits middleware (named `"rate_limits"`), not in the default
/// stack: it enforces the `rate_limit` and `concurrency` options of actors
/// and messages, keyed by `limit_key`.
///
/// A message over a limit is **not run, not failed and uses no retry**: it
/// goes back to the broker ([`Outcome::Postponed`]), due when a place is
/// likely free (for a window, when its earliest admission lapses; for a
/// concurrency limit, within [`RateLimits::recheck`]), with up to a tenth
/// more at random so that postponed messages do not come back together.
/// It holds no worker slot while it waits. The worker counts these in
/// [`WorkerReport::postponed`](dramaturg_core::WorkerReport::postponed).
/// A postponed message keeps its enqueue time, so an age limit counts its
/// waits.
///
/// Add it with `AppBuilder::middleware` (innermost): it must sit inside
/// the retries middleware, which `build()` checks.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use dramaturg_core::{App, MemoryBroker};
/// use dramaturg_rate_limits::{RateLimits, WhenUnreachable};
///
/// let broker = MemoryBroker::new();
/// let limits = RateLimits::for_broker(&broker)
///     .unwrap()
///     .lease(Duration::from_secs(60))
///     .when_unreachable(WhenUnreachable::LetThrough);
/// let app = App::builder(broker).middleware(limits).build().unwrap();
/// # let _ = app;
/// ```
#[derive(Debug, Clone)]
pub struct RateLimits {
    store: Arc<dyn Store>,
    lease: Duration,
    recheck: Duration,
    timeout: Duration,
    unreachable: WhenUnreachable,
}

impl RateLimits {
    /// Limits kept in `store` (every worker of the fleet must use the same
    /// store: a `RedisStore`, or the in-memory broker's for one process).
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self {
            store,
            lease: DEFAULT_LEASE,
            recheck: DEFAULT_RECHECK,
            timeout: DEFAULT_TIMEOUT,
            unreachable: WhenUnreachable::default(),
        }
    }

    /// Limits kept in `broker`'s store ([`Broker::store`]).
    ///
    /// # Errors
    ///
    /// [`ConfigError::Invalid`] for a broker without a store (RabbitMQ):
    /// give [`RateLimits::new`] a `RedisStore`.
    pub fn for_broker(broker: &dyn Broker) -> Result<Self, ConfigError> {
        broker.store().map(Self::new).ok_or_else(|| {
            ConfigError::Invalid(
                "this broker has no store for rate limits to share; give RateLimits::new a RedisStore".into(),
            )
        })
    }

    /// The lease of a concurrency slot (default 30 s): how long the slot
    /// of a worker that died stays taken. See [`Limiter::lease`].
    #[must_use]
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    /// The longest a message refused by a full concurrency limit is put off
    /// (default 1 s). See [`Limiter::recheck`].
    #[must_use]
    pub fn recheck(mut self, recheck: Duration) -> Self {
        self.recheck = recheck;
        self
    }

    /// How long a limit check waits for the store (default 2 s) before
    /// [`WhenUnreachable`] applies.
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// What a message does when the store cannot be reached (default:
    /// [`WhenUnreachable::FailRetryable`]).
    #[must_use]
    pub fn when_unreachable(mut self, unreachable: WhenUnreachable) -> Self {
        self.unreachable = unreachable;
        self
    }

    /// The limits `options` declare: a concurrency limit and a rate.
    fn limits(options: &Options) -> Result<(Option<u64>, Option<Rate>), String> {
        let concurrency = options.option(CONCURRENCY).map_err(|e| e.to_string())?;
        if concurrency == Some(0) {
            return Err("a concurrency limit of 0 lets nothing run; it must be at least 1".to_owned());
        }
        let rate = match options.option(RATE_LIMIT).map_err(|e| e.to_string())? {
            Some(rate) => Some(rate.parse::<Rate>().map_err(|e| e.to_string())?),
            None => None,
        };
        Ok((concurrency, rate))
    }

    /// The limiters `options` declare for `actor`, concurrency first (a
    /// slot that can be given back).
    fn declared(&self, actor: &str, options: &Options) -> Result<Vec<Limiter>, String> {
        let (concurrency, rate) = Self::limits(options)?;
        let mut limiters = Vec::new();
        if let Some(limit) = concurrency {
            let limiter = Limiter::concurrency(Arc::clone(&self.store), format!("actor:{actor}:concurrency"), limit);
            limiters.push(limiter.lease(self.lease).recheck(self.recheck));
        }
        if let Some(rate) = rate {
            limiters.push(Limiter::window(Arc::clone(&self.store), format!("actor:{actor}:rate"), rate));
        }
        Ok(limiters.into_iter().map(|limiter| limiter.timeout(self.timeout)).collect())
    }
}

/// The key of the message's limits: the `limit_key` argument's value, or
/// `"global"`.
fn limit_key(ctx: &Context) -> Result<String, String> {
    let Some(field) = ctx.options().option(LIMIT_KEY).map_err(|e| e.to_string())? else {
        return Ok("global".to_owned());
    };
    let args: serde_json::Map<String, serde_json::Value> =
        dramaturg_core::encoder::decode_value(ctx.app().encoder(), &ctx.message().args)
            .map_err(|e| format!("cannot read the arguments for limit_key {field:?}: {e}"))?;
    match args.get(&field) {
        Some(serde_json::Value::String(text)) => Ok(text.clone()),
        Some(value) => Ok(value.to_string()),
        None => Err(format!("limit_key names {field:?}, which the arguments lack")),
    }
}

/// A message's limits cannot be applied: a malformed rate, a concurrency
/// of 0, a `limit_key` naming no argument, a key the store refuses. Such a
/// message fails for good — no retry would fix it — and its dead letter's
/// reason says why; options set per message are checked when it is sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the message's limits cannot be applied: {0}")]
pub struct LimitConfigError(pub String);

/// The outcome of a message whose limits cannot be applied: a failure not
/// to be retried.
fn permanent(reason: String) -> Outcome {
    Outcome::Failed(Failure::from_error(Fail::permanent(LimitConfigError(reason))))
}

/// Gives back the slots taken so far (each within its store's time).
async fn release(permits: Vec<Permit>) {
    for permit in permits {
        if let Err(error) = permit.release().await {
            tracing::warn!(%error, "could not give a slot back; it lapses after its lease");
        }
    }
}

#[async_trait]
impl Middleware for RateLimits {
    fn name(&self) -> &'static str {
        NAME
    }

    fn declared_options(&self) -> Vec<DeclaredOption> {
        vec![RATE_LIMIT.declare_local(), CONCURRENCY.declare_local(), LIMIT_KEY.declare_local()]
    }

    /// The middleware sits inside the retries, and every actor's declared
    /// limits are well-formed.
    fn check_app(&self, app: &App) -> Result<(), ConfigError> {
        let stack = app.middleware_names();
        let position = |name: &str| stack.iter().position(|n| *n == name);
        if let (Some(limits), Some(retries)) = (position(NAME), position(OUTSIDE)) {
            if limits < retries {
                return Err(ConfigError::Invalid(format!(
                    "the rate-limits middleware must sit inside {OUTSIDE:?} (add it with .middleware(…), innermost); the stack is {stack:?}"
                )));
            }
        }
        for actor in app.actors() {
            Self::limits(actor.options())
                .map_err(|e| ConfigError::Invalid(format!("actor {:?}: {e}", actor.name())))?;
        }
        Ok(())
    }

    /// A message's own limits (options set per message) are checked when
    /// it is sent: a malformed rate or a concurrency of 0 is refused then,
    /// not found when it runs.
    fn before_enqueue(&self, message: &mut dramaturg_core::Message) -> Result<(), dramaturg_core::BoxError> {
        Self::limits(&message.options).map(drop).map_err(|reason| LimitConfigError(reason).into())
    }

    async fn handle(&self, ctx: &Context, next: Next<'_>) -> Outcome {
        let limiters = match self.declared(&ctx.message().actor, ctx.options()) {
            Ok(limiters) if limiters.is_empty() => return next.run(ctx).await,
            Ok(limiters) => limiters,
            Err(reason) => return permanent(reason),
        };
        let key = match limit_key(ctx) {
            Ok(key) => key,
            Err(reason) => return permanent(reason),
        };
        let mut permits = Vec::with_capacity(limiters.len());
        for limiter in &limiters {
            match limiter.try_acquire(&key).await {
                Ok(permit) => permits.push(permit),
                Err(LimitError::Exceeded { limiter, retry_after }) => {
                    release(permits).await;
                    let delay = jittered(retry_after);
                    let attempt = NextAttempt::new(ctx.message().clone(), delay);
                    return Outcome::Postponed(format!("limit {limiter:?} is full for {key:?}").into(), attempt);
                }
                Err(error) if error.is_unavailable() && self.unreachable == WhenUnreachable::LetThrough => {
                    tracing::warn!(%error, "running the message without its limit: the store is unreachable");
                }
                // A key the store refuses (longer than it takes) will not
                // pass on a retry.
                Err(LimitError::Store { source, .. }) if source.is_invalid_input() => {
                    release(permits).await;
                    return permanent(format!("the limit key cannot be used: {source}"));
                }
                Err(error) => {
                    release(permits).await;
                    return Outcome::Failed(Failure::from_error(error));
                }
            }
        }
        let outcome = next.run(ctx).await;
        release(permits).await;
        outcome
    }
}
