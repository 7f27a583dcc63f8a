#![doc = include_str!("../docs/crate.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod connect;
mod stack;

pub use connect::{connect, ConnectError};
pub use stack::{app, app_shared};

pub use dramaturg_abort as abort;
pub use dramaturg_age_limit as age_limit;
/// The RabbitMQ broker.
#[cfg(feature = "amqp")]
#[cfg_attr(docsrs, doc(cfg(feature = "amqp")))]
pub use dramaturg_amqp as amqp;
pub use dramaturg_callbacks as callbacks;
pub use dramaturg_core::{
    actor, async_trait, broker, dramatiq, encoder, middleware, outcome, worker, Actor, ActorInfo, App, AppBuilder,
    Bounded, BoxError, Broker, BrokerError, BrokerErrorKind, Call, CodecError, ConfigError, Consumer, Context,
    Controls, DeadLetter, DeadLetterView, DeadLetters, DeclaredOption, DecodedMessage, Delivery, Encoder, EnqueueError,
    ErrorRecord, ErrorType, Fail, Failure, FailureKind, HeldMessage, InFlightScope, Interrupted, Interruption, Job,
    Json, Located, LocatedView, MemoryBroker, MemoryStore, Message, MessageId, MessagePack, Metadata, Middleware,
    MinuteOutcomes, MissingState, Next, NextAttempt, OptionError, OptionKey, Options, Outcome, OutcomeCounts, Outgoing,
    Output, ParseMessageIdError, Protocol, QueueAdmin, QueueBrowser, QueueOptions, QueueOrder, QueuePage, QueueStats,
    QueuedMessage, QueuedView, QueuedViews, Receipt, RecordLimits, Remote, Replay, ReplayError, ReplayReport,
    ReplayRetries, Retry, SendClaim, SendOptions, Sent, SettleError, Settled, Settlement, ShutdownHandle, State, Store,
    StoreError, StoreErrorKind, Waiting, Whereabouts, Worker, WorkerConfigError, WorkerError, WorkerGauges, WorkerInfo,
    WorkerReport, DEFAULT_MAX_MESSAGE_SIZE, ETA, HELD_LISTED, OUTCOME_MINUTES,
};
pub use dramaturg_core::{batch, isolation, store, sync, time};
pub use dramaturg_error_capture as error_capture;
/// Metrics through the `metrics` facade, and a Prometheus exporter with
/// the `prometheus` feature.
#[cfg(feature = "metrics")]
#[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
pub use dramaturg_metrics as metrics;
/// The PostgreSQL broker.
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub use dramaturg_postgres as postgres;
/// Rate and concurrency limits that hold across a fleet of workers.
#[cfg(feature = "rate-limits")]
#[cfg_attr(docsrs, doc(cfg(feature = "rate-limits")))]
pub use dramaturg_rate_limits as rate_limits;
/// The Redis broker.
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use dramaturg_redis as redis;
pub use dramaturg_results as results;
pub use dramaturg_retries as retries;
/// Periodic (cron) jobs enqueued once across a fleet of workers, and
/// unique jobs.
#[cfg(feature = "schedule")]
#[cfg_attr(docsrs, doc(cfg(feature = "schedule")))]
pub use dramaturg_schedule as schedule;
/// The SQLite broker.
#[cfg(feature = "sqlite")]
#[cfg_attr(docsrs, doc(cfg(feature = "sqlite")))]
pub use dramaturg_sqlite as sqlite;
pub use dramaturg_time_limit as time_limit;
/// The web dashboard: an axum `Router` to mount into your app, or to serve.
#[cfg(feature = "web")]
#[cfg_attr(docsrs, doc(cfg(feature = "web")))]
pub use dramaturg_web as web;

/// Derives [`Actor`](trait@Actor) for a serde type: see the crate docs for
/// the `#[actor(...)]` attributes.
#[cfg(feature = "derive")]
#[cfg_attr(docsrs, doc(cfg(feature = "derive")))]
pub use dramaturg_derive::Actor;

/// The README's examples, compiled as doctests so that they stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

/// The guide's examples marked `rust`, compiled as doctests.
#[cfg(doctest)]
#[doc = include_str!("../docs/guide.md")]
struct GuideDoctests;

/// The Dramatiq guide's examples marked `rust`, compiled as doctests.
#[cfg(doctest)]
#[doc = include_str!("../docs/dramatiq.md")]
struct DramatiqGuideDoctests;

/// The periodic and unique jobs guide's examples, compiled as doctests.
#[cfg(all(doctest, feature = "schedule", feature = "redis"))]
#[doc = include_str!("../docs/schedule.md")]
struct ScheduleGuideDoctests;

/// The names most programs need: `use dramaturg::prelude::*;`.
pub mod prelude {
    pub use dramaturg_core::batch::{Batch, BatchOutcome};
    pub use dramaturg_core::{
        async_trait, Actor, App, Context, Fail, MemoryBroker, Middleware, Next, Outcome, SendOptions, Worker,
    };
    #[cfg(feature = "derive")]
    pub use dramaturg_derive::Actor;
}

/// What `#[derive(Actor)]` expands to refers to these paths only, so users
/// need no dependency besides `dramaturg`. Not a public API.
#[doc(hidden)]
pub mod __private {
    pub use dramaturg_core::actor::{async_handler, into_job_result, run_blocking};
    pub use dramaturg_core::batch;
    pub use dramaturg_core::inventory;
    pub use dramaturg_core::isolation::IsolatedActor;
    pub use dramaturg_core::{Actor, Context, Job, Options};
    pub use {dramaturg_abort as abort, dramaturg_callbacks as callbacks, dramaturg_results as results};
}
