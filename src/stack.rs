//! The default middleware stack.

use std::sync::Arc;

use dramaturg_abort::Abortable;
use dramaturg_age_limit::AgeLimit;
use dramaturg_callbacks::Callbacks;
use dramaturg_core::{App, AppBuilder, Broker};
use dramaturg_error_capture::ErrorCapture;
use dramaturg_retries::Retries;
use dramaturg_time_limit::TimeLimit;

/// Starts building an app on `broker` with the **default middleware stack**
/// (callbacks, age limit, abort, retries, time limit, error capture) —
/// unlike [`App::builder`], which starts with an empty one.
///
/// The stack, outermost first:
///
/// 1. `callbacks` — sends `on_success` / `on_failure` /
///    `on_retry_exhausted` callbacks; outside the retries so that it can
///    tell a retried failure from a final one;
/// 2. `age_limit` — skips messages older than their `max_age` before any
///    work is done;
/// 3. `abort` — skips messages cancelled before they start and interrupts
///    running ones that are aborted; before the retries, so that an aborted
///    message is never retried. Its requests reach as far as the broker's
///    messages (see `Abortable::for_broker`): they are kept in the
///    broker's store (`Broker::store`) — in memory for the in-memory
///    broker, in the same Redis for the Redis broker. With RabbitMQ,
///    `abort` returns `AbortError::EventsNotShared` until you replace the
///    middleware with one on a `RedisStore`;
/// 4. `retries` — sees every failure below it, time-limit expiries
///    included, and re-enqueues the message with a delay or lets it be
///    dead-lettered;
/// 5. `time_limit` — turns an overrun into a typed `TimeLimitExceeded`
///    failure;
/// 6. `error_capture` — innermost: catches panics and turns the actor's
///    error into a bounded record at once, so nothing above it holds the
///    error value.
///
/// Results are opt-in, as in Dramatiq: add the `results` middleware
/// outermost, `.insert_before(middleware::names::CALLBACKS,
/// Results::for_broker(&broker))` (an actor that says `store_results`
/// without it fails the build with `ConfigError::UnknownOption`).
///
/// Configure a default middleware by replacing it, and add your own
/// anywhere by name:
///
/// ```
/// use std::time::Duration;
/// use dramaturg::retries::Retries;
/// use dramaturg::MemoryBroker;
///
/// let app = dramaturg::app(MemoryBroker::new())
///     .replace("retries", Retries::new().max_retries(10))
///     .build()
///     .unwrap();
/// assert_eq!(app.middleware_names(), ["callbacks", "age_limit", "abort", "retries", "time_limit", "error_capture"]);
/// ```
pub fn app(broker: impl Broker) -> AppBuilder {
    app_shared(Arc::new(broker))
}

/// Starts building an app on a shared broker (as
/// [`connect`](crate::connect) returns) with the **default middleware
/// stack**, as [`app`] does — unlike [`App::builder_shared`], which starts
/// with an empty one.
pub fn app_shared(broker: Arc<dyn Broker>) -> AppBuilder {
    let abort = Abortable::for_broker(&*broker);
    App::builder_shared(broker)
        .middleware(Callbacks::new())
        .middleware(AgeLimit::new())
        .middleware(abort)
        .middleware(Retries::new())
        .middleware(TimeLimit::new())
        .middleware(ErrorCapture::new())
}
