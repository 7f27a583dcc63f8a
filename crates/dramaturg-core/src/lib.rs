//! The core of [dramaturg](https://docs.rs/dramaturg): the contracts every
//! part plugs into, the worker, and the in-memory broker.
//!
//! Most users depend on the `dramaturg` crate, which re-exports all of this
//! together with `#[derive(Actor)]`, the middleware and the brokers.
//!
//! - [`Message`], [`Options`] and [`MessageId`]: the envelope.
//! - [`Encoder`] ([`MessagePack`], [`Json`]): messages to bytes and back.
//! - [`Broker`], [`Consumer`], [`Delivery`]: the transport; [`QueueAdmin`]
//!   and [`DeadLetters`] are optional abilities.
//! - [`Actor`]: typed job handlers; [`Sent`]: the typed handle a send returns.
//! - [`Middleware`] and [`Next`]: the ordered stack around every message.
//! - [`Context`]: one per delivery, shared by the stack and the actor.
//! - [`Outcome`], [`Failure`], [`ErrorRecord`]: what came of a message.
//! - [`App`]: broker, encoder, stack and actors; [`Worker`] runs them.
//! - [`State`]: values (pools, clients) registered on the app by type.
//! - [`store`]: short-lived keys with TTLs, counters, sets and waits
//!   ([`Store`], [`MemoryStore`]), for the features that share state
//!   between workers.
//! - [`MemoryBroker`]: the in-process broker.
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod actor;
mod app;
pub mod batch;
mod bounded;
pub mod broker;
mod browse;
mod call;
#[cfg(feature = "conformance")]
#[cfg_attr(docsrs, doc(cfg(feature = "conformance")))]
pub mod conformance;
mod context;
mod dead_letter;
pub mod dramatiq;
pub mod encoder;
mod error;
mod error_record;
mod fail;
mod failure;
mod id;
pub mod isolation;
/// For `#[derive(Actor)]`'s registration of isolated actors; not a public API.
#[doc(hidden)]
pub use inventory;
mod memory;
mod message;
pub mod middleware;
mod options;
pub mod outcome;
mod output;
mod sent;
mod signal;
mod state;
pub mod store;
pub mod sync;
pub mod time;
mod watchdog;
pub mod worker;

pub use actor::{Actor, ActorInfo, Job};
pub use app::{App, AppBuilder, Remote, SendOptions, DEFAULT_MAX_MESSAGE_SIZE, MAX_DELAY};
pub use bounded::{Bounded, MAX_QUOTED_BYTES, MAX_REASON_BYTES};
pub use broker::{
    Broker, Consumer, DeadLetter, DeadLetters, Delivery, HeldMessage, InFlightScope, Located, MinuteOutcomes,
    OutcomeCounts, Outgoing, Protocol, QueueAdmin, QueueBrowser, QueuePage, QueueStats, QueuedMessage, Receipt, Replay,
    SettleError, Settled, Settlement, Waiting, Whereabouts, WorkerInfo, WritingReceipt, HELD_LISTED, OUTCOME_MINUTES,
};
pub use browse::{LocatedView, QueuedView, QueuedViews};
pub use call::Call;
pub use context::{Context, Controls, Metadata};
pub use dead_letter::{DeadLetterView, DecodedMessage, ReplayError, ReplayReport, ReplayRetries};
pub use encoder::{CodecError, Encoder, Json, MessagePack};
pub use error::{BoxError, BrokerError, BrokerErrorKind, ConfigError, EnqueueError};
pub use error_record::{ErrorRecord, FailureKind, RecordLimits};
pub use fail::{Fail, Interrupted, Interruption, Retry};
pub use failure::{ErrorType, Failure};
pub use id::{MessageId, ParseMessageIdError};
pub use memory::MemoryBroker;
pub use message::{now_ms, Message, ETA, NEEDS};
pub use middleware::{Middleware, Next, SendClaim};
pub use options::{DeclaredOption, OptionError, OptionKey, Options};
pub use outcome::{NextAttempt, Outcome};
pub use output::Output;
pub use sent::Sent;
pub use state::{MissingState, State};
pub use store::{MemoryStore, Store, StoreError, StoreErrorKind, StoreWrite};
pub use worker::{
    QueueOptions, QueueOrder, ShutdownHandle, Worker, WorkerConfigError, WorkerError, WorkerGauges, WorkerReport,
};

/// Re-exported so that middleware and brokers can be written without
/// depending on `async-trait` themselves.
pub use async_trait::async_trait;
