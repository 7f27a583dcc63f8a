//! The unique-jobs middleware: claims a message's uniqueness key when it
//! is sent, refuses duplicates, and releases the key when the message
//! ends.

use std::sync::Arc;
use std::time::Duration;

use dramaturg_core::middleware::names;
use dramaturg_core::store::{SetMode, Store};
use dramaturg_core::{
    async_trait, App, Bounded, BoxError, Broker, ConfigError, Context, DeclaredOption, EnqueueError, Message,
    MessageId, Middleware, Next, Outcome, SendClaim,
};

use crate::fleet::{broker_store, check_reach};
use crate::unique::{Scope, Unique, UniqueConfigError, UNIQUE, UNIQUE_CLAIM, UNIQUE_KEY, UNIQUE_TTL_MS};

/// The name of the middleware in the stack.
pub const NAME: &str = "unique_jobs";

/// The middleware of the default stack that end messages in ways this one
/// must see (a final failure rather than a retry, an abort, an age-limit
/// skip): it must sit outside each of them.
const INSIDE: [&str; 5] = [names::AGE_LIMIT, names::ABORT, names::RETRIES, names::TIME_LIMIT, names::ERROR_CAPTURE];

/// How often a claim is tried when the key changes hands between the
/// claim and the read of its holder.
const CLAIM_TRIES: usize = 3;

/// The unique-jobs middleware (named `"unique_jobs"`), not in the default
/// stack: a message whose options (its actor's or its own) set a
/// uniqueness [scope](crate::unique::Scope) claims its key in the store
/// when it is sent; a second send while the key is held returns
/// [`EnqueueError::Duplicate`] naming the message that holds it, and
/// enqueues nothing.
///
/// The key is released (only by the message that holds it) when a worker
/// takes the message (`queued`), or when the message ends for good —
/// succeeds, fails with no retry left, is skipped, aborted or
/// dead-lettered (`queued_or_running`) — and in every case lapses after
/// its TTL, so a crashed worker never blocks a key for longer. An attempt
/// that will be retried, a postponement and a requeue at shutdown keep
/// it. `fixed` keys are never released: they hold for their TTL.
///
/// It must sit outside the retries, abort, age-limit, time-limit and
/// error-capture middleware (so that it sees a final failure, not each
/// attempt): insert it before `age_limit` in the default stack, which
/// `build()` checks.
///
/// # Examples
///
/// ```
/// use dramaturg_core::middleware::names;
/// use dramaturg_core::{App, MemoryBroker};
/// use dramaturg_schedule::UniqueJobs;
///
/// let broker = MemoryBroker::new();
/// let unique = UniqueJobs::for_broker(&broker).unwrap();
/// // With the `dramaturg` crate: dramaturg::app(broker).insert_before(names::AGE_LIMIT, unique)
/// let app = App::builder(broker).middleware(unique).build().unwrap();
/// assert_eq!(app.middleware_names(), ["unique_jobs"]);
/// ```
#[derive(Debug, Clone)]
pub struct UniqueJobs {
    store: Arc<dyn Store>,
}

impl UniqueJobs {
    /// Keys kept in `store`, which every sender and worker must share (a
    /// `RedisStore`, or the in-memory broker's store for one process).
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self { store }
    }

    /// Keys kept in `broker`'s store ([`Broker::store`]).
    ///
    /// # Errors
    ///
    /// [`ConfigError::Invalid`] for a broker without a store (RabbitMQ):
    /// give [`UniqueJobs::new`] a `RedisStore`.
    pub fn for_broker(broker: &dyn Broker) -> Result<Self, ConfigError> {
        broker_store(broker, "UniqueJobs").map(Self::new)
    }

    /// Releases the key `message` holds, if it still holds it.
    async fn release_key(&self, message: &Message) {
        let Ok(Some(key)) = message.options.option(UNIQUE_CLAIM) else { return };
        if let Err(error) = self.store.delete_if(&key, message.id.to_string().as_bytes()).await {
            tracing::warn!(%error, message_id = %message.id, "could not release a uniqueness key; it lapses after its TTL");
        }
    }

    /// Claims `key` for `message` for `ttl`, or names the message holding it.
    async fn claim_key(&self, key: &str, message: &Message, ttl: Duration) -> Result<(), EnqueueError> {
        let rejected = |source: BoxError| EnqueueError::Rejected { middleware: NAME, source };
        let id = message.id.to_string();
        for _ in 0..CLAIM_TRIES {
            if self.store.set(key, id.as_bytes(), ttl, SetMode::IfAbsent).await.map_err(|e| rejected(e.into()))? {
                return Ok(());
            }
            // Released or lapsed between the two calls: claim again.
            let Some(holder) = self.store.get(key).await.map_err(|e| rejected(e.into()))? else { continue };
            let existing =
                std::str::from_utf8(&holder).ok().and_then(|text| text.parse::<MessageId>().ok()).ok_or_else(|| {
                    rejected(format!("the uniqueness key {key:?} holds something other than a message id").into())
                })?;
            return Err(EnqueueError::Duplicate { existing, key: Bounded::quoted(key) });
        }
        Err(rejected(format!("the uniqueness key {key:?} kept changing hands; try again").into()))
    }
}

/// Whether `outcome` ends the message for good (the broker will not
/// deliver it again).
fn is_final(outcome: &Outcome) -> bool {
    !matches!(outcome, Outcome::Retried(..) | Outcome::Postponed(..) | Outcome::Requeue(_))
}

/// The scope a message claimed its key under, if it claimed one.
fn claimed_scope(message: &Message) -> Option<Scope> {
    message.options.option(UNIQUE_CLAIM).ok().flatten()?;
    message.options.option(UNIQUE).ok().flatten()?.parse().ok()
}

#[async_trait]
impl SendClaim for UniqueJobs {
    async fn claim(&self, app: &App, message: &mut Message) -> Result<(), EnqueueError> {
        let options = app.options_for(message);
        let unique = Unique::from_options(&options)
            .map_err(|error| EnqueueError::Rejected { middleware: NAME, source: error.into() })?;
        let Some(unique) = unique else { return Ok(()) };
        let key = unique.store_key(message);
        self.claim_key(&key, message, unique.time_to_live()).await?;
        // The worker releases by what the message carries, whatever the
        // worker's app says of the actor.
        message.options.extra.insert(UNIQUE.name().to_owned(), unique.scope().as_str().into());
        message.options.extra.insert(UNIQUE_CLAIM.name().to_owned(), key.into());
        Ok(())
    }

    async fn release(&self, _app: &App, message: &Message) {
        self.release_key(message).await;
    }
}

#[async_trait]
impl Middleware for UniqueJobs {
    fn name(&self) -> &'static str {
        NAME
    }

    fn declared_options(&self) -> Vec<DeclaredOption> {
        vec![
            UNIQUE.declare_local(),
            UNIQUE_TTL_MS.declare_local(),
            UNIQUE_KEY.declare_local(),
            UNIQUE_CLAIM.declare_local(),
        ]
    }

    fn send_claim(&self) -> Option<&dyn SendClaim> {
        Some(self)
    }

    /// A message's own uniqueness options are checked when it is sent.
    fn before_enqueue(&self, message: &mut Message) -> Result<(), BoxError> {
        Unique::from_options(&message.options).map(drop).map_err(Into::into)
    }

    /// The middleware sits outside those that end attempts, every actor's
    /// uniqueness options are well-formed, and the store reaches every
    /// worker.
    fn check_app(&self, app: &App) -> Result<(), ConfigError> {
        let stack = app.middleware_names();
        let position = |name: &str| stack.iter().position(|n| *n == name);
        if let Some(unique) = position(NAME) {
            if let Some(inner) = INSIDE.iter().find(|name| position(name).is_some_and(|at| at < unique)) {
                return Err(ConfigError::Invalid(format!(
                    "the unique-jobs middleware must sit outside {inner:?} (insert it before \"age_limit\" in the \
                     default stack); the stack is {stack:?}"
                )));
            }
        }
        for actor in app.actors() {
            Unique::from_options(actor.options())
                .map_err(|UniqueConfigError(e)| ConfigError::Invalid(format!("actor {:?}: {e}", actor.name())))?;
        }
        check_reach(&*self.store, app, "UniqueJobs")
    }

    async fn handle(&self, ctx: &Context, next: Next<'_>) -> Outcome {
        match claimed_scope(ctx.message()) {
            Some(Scope::Queued) => {
                self.release_key(ctx.message()).await;
                next.run(ctx).await
            }
            Some(Scope::QueuedOrRunning) => {
                let outcome = next.run(ctx).await;
                if is_final(&outcome) {
                    self.release_key(ctx.message()).await;
                }
                outcome
            }
            _ => next.run(ctx).await,
        }
    }

    /// A message that cannot run is dead-lettered: its key is released.
    async fn on_rejected(&self, _app: &App, message: &Message, _reason: &Bounded) {
        if matches!(claimed_scope(message), Some(Scope::Queued | Scope::QueuedOrRunning)) {
            self.release_key(message).await;
        }
    }
}
