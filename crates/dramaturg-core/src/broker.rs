//! The transport contract: queues of encoded messages, deliveries and their
//! settlement.
//!
//! A [`Broker`] moves bytes; it never decodes them, so bytes that are not a
//! message reach the worker, which dead-letters them with a reason. Optional
//! abilities — queue statistics and draining ([`QueueAdmin`]), dead-letter
//! inspection ([`DeadLetters`]) — are separate traits a broker may offer.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;

use crate::bounded::Bounded;
use crate::error::BrokerError;
use crate::store::{Store, StoreWrite};

/// A message on its way into a queue.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Outgoing {
    /// The queue to put it in.
    pub queue: String,
    /// The encoded message.
    pub body: Bytes,
    /// How long to hold it before it may be delivered.
    pub delay: Option<Duration>,
    /// Delivery priority (0–255) for brokers that support it.
    pub priority: Option<u8>,
}

impl Outgoing {
    /// A message for `queue`, to be delivered at once.
    pub fn new(queue: impl Into<String>, body: impl Into<Bytes>) -> Self {
        Self { queue: queue.into(), body: body.into(), delay: None, priority: None }
    }

    /// The same message, held back for `delay` (`None` or zero: no delay).
    #[must_use]
    pub fn with_delay(mut self, delay: Option<Duration>) -> Self {
        self.delay = delay.filter(|d| !d.is_zero());
        self
    }

    /// The same message with a delivery priority.
    #[must_use]
    pub fn with_priority(mut self, priority: Option<u8>) -> Self {
        self.priority = priority;
        self
    }
}

impl fmt::Debug for Outgoing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Outgoing")
            .field("queue", &self.queue)
            .field("body_len", &self.body.len())
            .field("delay", &self.delay)
            .field("priority", &self.priority)
            .finish()
    }
}

/// How a broker lays its queues out on the server, chosen per broker
/// (`?protocol=dramatiq` in a Redis or RabbitMQ URL).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Protocol {
    /// dramaturg's own layout: the default, with server-side delays, no
    /// polling and fenced settlement.
    #[default]
    Native,
    /// Python Dramatiq's layout and JSON messages, so that Rust and Python
    /// workers and producers share queues (see
    /// [`dramatiq`](crate::dramatiq)).
    Dramatiq,
}

impl std::str::FromStr for Protocol {
    type Err = BrokerError;

    /// `"native"` or `"dramatiq"`.
    fn from_str(s: &str) -> Result<Self, BrokerError> {
        match s {
            "native" => Ok(Self::Native),
            "dramatiq" => Ok(Self::Dramatiq),
            other => Err(BrokerError::new(
                crate::BrokerErrorKind::InvalidInput,
                format!("unknown protocol {:?}: expected \"native\" or \"dramatiq\"", crate::Bounded::quoted(other)),
            )),
        }
    }
}

/// What the worker asks the broker to do with a delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Settlement {
    /// Remove the message from the broker for good.
    Ack,
    /// Move the message to its queue's dead-letter queue, with the reason.
    DeadLetter(Bounded),
    /// Return the message to its queue, unchanged (at the front where the
    /// broker can).
    Requeue,
    /// Replace the message with `body` (a new attempt: a retry, a
    /// rate-limited requeue) and deliver it after `delay`, in one step: the
    /// old message is gone exactly when the new one is stored.
    Reschedule {
        /// The encoded message to deliver instead.
        body: Bytes,
        /// How long to hold it (zero: at once).
        delay: Duration,
    },
}

/// What came of a settlement the broker carried out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Settled {
    /// The broker did what was asked.
    Applied,
    /// The delivery was no longer this receipt's to settle — its lease
    /// lapsed and the broker handed the message to another consumer (or
    /// back to the queue) — so nothing was changed. The message is settled
    /// by its current owner; the attempt that ran here may have been a
    /// duplicate.
    Stale,
}

/// A transport for messages. Object-safe: an app holds an `Arc<dyn Broker>`
/// chosen at run time.
///
/// Implementations promise at-least-once delivery: a message leaves its
/// queue for good only when its delivery is settled with
/// [`Settlement::Ack`], [`Settlement::DeadLetter`] or
/// [`Settlement::Reschedule`] (which puts its replacement in its place).
///
/// Settlement is fenced: each delivery carries its claim (the broker's owner
/// token), and a settlement applies only while that claim is the message's
/// current one; otherwise it changes nothing and reports [`Settled::Stale`].
#[async_trait]
pub trait Broker: Send + Sync + fmt::Debug + 'static {
    /// Makes sure `queue` (and its delay and dead-letter companions) exists.
    ///
    /// # Errors
    ///
    /// A [`BrokerError`] when the broker cannot be reached or refuses.
    async fn declare_queue(&self, queue: &str) -> Result<(), BrokerError>;

    /// Puts one message into its queue (declaring the queue if needed). It
    /// returns once the broker has the message.
    ///
    /// # Errors
    ///
    /// A [`BrokerError`] when the message could not be stored; it was then
    /// not enqueued.
    async fn enqueue(&self, message: Outgoing) -> Result<(), BrokerError>;

    /// Starts consuming `queue`, holding at most `prefetch` deliveries that
    /// the worker has not settled yet.
    ///
    /// # Errors
    ///
    /// A [`BrokerError`] when the broker cannot be reached.
    async fn consume(&self, queue: &str, prefetch: usize) -> Result<Box<dyn Consumer>, BrokerError>;

    /// Puts many messages into their queues. Brokers that can do it in one
    /// round trip override this; the default enqueues one by one.
    ///
    /// # Errors
    ///
    /// The first [`BrokerError`]; messages before it may have been enqueued.
    async fn enqueue_many(&self, messages: Vec<Outgoing>) -> Result<(), BrokerError> {
        for message in messages {
            self.enqueue(message).await?;
        }
        Ok(())
    }

    /// Checks that `name` can be a queue of this broker, without reaching
    /// the server. [`AppBuilder::build`](crate::AppBuilder::build) calls it
    /// for the queue of every actor (with the app's queue prefix), so that a
    /// name the broker can never use is refused when the app is put
    /// together rather than at the first send or consume.
    ///
    /// The default accepts every name: the in-memory and Redis brokers have
    /// no limit of their own. The RabbitMQ broker refuses an empty name and
    /// one longer than 246 bytes (RabbitMQ allows 255, and the broker
    /// derives `<queue>.delay.NN` and `<queue>.dq` from it). A broker that
    /// overrides this refuses the same names in every operation that takes
    /// one.
    ///
    /// # Errors
    ///
    /// A [`BrokerError`] of kind
    /// [`InvalidInput`](crate::BrokerErrorKind::InvalidInput) that says what is
    /// wrong with `name` and what the limit is.
    fn check_queue_name(&self, name: &str) -> Result<(), BrokerError> {
        let _ = name;
        Ok(())
    }

    /// Queue statistics, purging and draining, if this broker offers them.
    fn admin(&self) -> Option<&dyn QueueAdmin> {
        None
    }

    /// Dead-letter listing and replay, if this broker offers them.
    fn dead_letters(&self) -> Option<&dyn DeadLetters> {
        None
    }

    /// Reading queues without consuming them (for dashboards), if this
    /// broker offers it.
    fn browser(&self) -> Option<&dyn QueueBrowser> {
        None
    }

    /// Told by a worker before it consumes: it runs `concurrency` messages
    /// at a time. A broker that keeps a registry of workers (Redis) records
    /// it with its heartbeat, for [`WorkerInfo::concurrency`]; the default
    /// forgets it. One broker value serves one worker: a second worker on
    /// the same value replaces the first's concurrency.
    fn set_worker_concurrency(&self, concurrency: usize) {
        let _ = concurrency;
    }

    /// Called by a worker that has stopped and settled every delivery it
    /// could: the broker gives up what it held for consuming (the Redis
    /// broker stops its heartbeat and removes the worker from its registry,
    /// so that no other worker "recovers" it later). Sending still works
    /// afterwards. The default has nothing to give up.
    ///
    /// # Errors
    ///
    /// A [`BrokerError`] when the broker cannot be told; what it held then
    /// lapses by its own means (heartbeat timeout, connection close).
    async fn release(&self) -> Result<(), BrokerError> {
        Ok(())
    }

    /// Where this broker's messages live, so that companions (the abort
    /// middleware's store) can reach as far as the messages do.
    /// The default, [`Locality::Remote`], says "other processes see them,
    /// no more is known"; the in-memory broker says [`Locality::Process`],
    /// the Redis broker [`Locality::Server`] with its URL.
    fn locality(&self) -> Locality {
        Locality::Remote
    }

    /// A [`Store`] that reaches every process this broker's messages reach
    /// — on the broker's own server where it has one — for the features
    /// that share keys between workers (abort requests). Clones of a
    /// broker give the same store. The in-memory broker gives its
    /// [`MemoryStore`](crate::MemoryStore), the Redis broker a store in its
    /// Redis; the default, `None`, says the broker has none (RabbitMQ):
    /// such apps configure a store themselves.
    fn store(&self) -> Option<Arc<dyn Store>> {
        None
    }

    /// The time by this broker's clock, in milliseconds since the Unix
    /// epoch, as well as this client knows it: the server's clock where
    /// the broker has one (the Redis broker reads `TIME` when it connects
    /// and at every heartbeat, and adds the difference to the local
    /// clock), else this process's wall clock (the default, for the
    /// in-memory broker and RabbitMQ, which tells clients no time).
    /// Messages are stamped with it when they are sent and their age is
    /// measured by it ([`Context::message_age`](crate::Context::message_age)),
    /// so that a producer's or worker's clock that is off does not make
    /// messages look older or younger than they are.
    fn now_ms(&self) -> u64 {
        crate::message::now_ms()
    }

    /// The encoder this broker's messages must be written with, if its
    /// layout needs one: a broker speaking Python Dramatiq's layout
    /// (`?protocol=dramatiq`) needs the
    /// [`Dramatiq`](crate::dramatiq::Dramatiq) encoder, so that Python
    /// reads what Rust sends. An app built on it uses that encoder unless
    /// told otherwise, and refuses another
    /// ([`ConfigError::Encoder`](crate::ConfigError::Encoder)). The
    /// default, `None`, leaves the choice to the app.
    fn encoder(&self) -> Option<Arc<dyn crate::Encoder>> {
        None
    }
}

/// A stream of deliveries from one queue.
#[async_trait]
pub trait Consumer: Send {
    /// The next delivery, waiting for one if the queue is empty.
    ///
    /// # Errors
    ///
    /// A [`BrokerError`] when the broker went away; the consumer may be
    /// asked again (brokers reconnect where they can).
    ///
    /// # Cancel safety
    ///
    /// Implementations must be cancel-safe: if the future is dropped before
    /// it completes, no delivery is lost (it stays in, or returns to, the
    /// queue).
    async fn next(&mut self) -> Result<Delivery, BrokerError>;

    /// A view of whether the queue is paused ([`QueueAdmin::pause`]), as
    /// this consumer last learned it, or `None` if it keeps none (the
    /// default). The worker watches it for the deliveries it has taken and
    /// not started (waiting for a concurrency slot): when the view turns
    /// `true` it returns them to the queue, so that a pause stops every
    /// start, not only the next claim. A consumer that keeps a view should
    /// learn of a pause within about a second, also while it holds its
    /// whole prefetch and is not claiming.
    fn paused(&self) -> Option<tokio::sync::watch::Receiver<bool>> {
        None
    }

    /// Stops consuming and returns every delivery fetched but not yet handed
    /// out to the queue.
    ///
    /// # Errors
    ///
    /// A [`BrokerError`] when the broker could not be told; it then returns
    /// the deliveries by its own means (connection loss, heartbeat expiry).
    async fn close(self: Box<Self>) -> Result<(), BrokerError>;
}

/// How a broker settles one of its deliveries: a compare-and-settle on the
/// claim the delivery was handed out under.
#[async_trait]
pub trait Receipt: Send + Sync + fmt::Debug {
    /// Settles the delivery this receipt belongs to, if its claim is still
    /// the message's current one.
    ///
    /// # Errors
    ///
    /// A [`BrokerError`] when the broker could not be told; nothing was
    /// changed, and the settlement may be tried again with a receipt of the
    /// same claim (brokers whose receipts cannot be retried say so in the
    /// error's kind, not retryable).
    async fn settle(&self, settlement: &Settlement) -> Result<Settled, BrokerError>;

    /// This receipt's way of writing to the broker's [store](Broker::store)
    /// in the same round trip as a settlement, if it has one (the Redis
    /// broker's acks). The default, `None`: [`Delivery::settle_writing`]
    /// writes to the store first, then settles.
    fn writing(&self) -> Option<&dyn WritingReceipt> {
        None
    }
}

/// A [`Receipt`] that carries store writes with its settlements.
#[async_trait]
pub trait WritingReceipt: Send + Sync {
    /// Writes `writes` to the broker's [store](Broker::store), exactly as
    /// [`Store::set_many`] would, and settles as [`Receipt::settle`]
    /// does, in one round trip where it can. A receipt that can makes the
    /// writes only if the settlement applies, so that a stale attempt
    /// writes nothing (the Redis broker on one server and the PostgreSQL
    /// broker do so for acks); otherwise they are made ahead of the claim
    /// check, and a stale settlement has made them too — as when they are
    /// written first and the settlement follows.
    ///
    /// # Errors
    ///
    /// As [`Receipt::settle`]: nothing was settled (some writes may have
    /// been made); settling again with the same writes is safe.
    async fn settle_writing(&self, settlement: &Settlement, writes: &[StoreWrite]) -> Result<Settled, BrokerError>;
}

/// One message handed out by a [`Consumer`]. It is settled once:
/// [`Delivery::settle`] takes it by value, and hands it back inside the
/// error when the broker could not be told, so that the settlement can be
/// tried again.
#[derive(Debug)]
pub struct Delivery {
    body: Bytes,
    redelivered: bool,
    receipt: Box<dyn Receipt>,
}

impl Delivery {
    /// A delivery of `body`, settled through `receipt`.
    pub fn new(body: Bytes, redelivered: bool, receipt: Box<dyn Receipt>) -> Self {
        Self { body, redelivered, receipt }
    }

    /// The encoded message.
    pub fn body(&self) -> &Bytes {
        &self.body
    }

    /// Whether the broker delivered this message before (after a crash or a
    /// requeue) — a hint that it may have been partly processed.
    pub fn redelivered(&self) -> bool {
        self.redelivered
    }

    /// Settles the delivery: [`Settled::Applied`], or [`Settled::Stale`]
    /// when its claim lapsed and the message now belongs to another
    /// consumer (nothing was changed).
    ///
    /// # Errors
    ///
    /// A [`SettleError`] when the broker could not be told. Nothing was
    /// changed; [`SettleError::into_delivery`] gives the delivery back to try
    /// again (fencing makes a late retry safe). A delivery that is dropped
    /// instead is redelivered once its claim lapses (at-least-once).
    pub async fn settle(self, settlement: Settlement) -> Result<Settled, SettleError> {
        match self.receipt.settle(&settlement).await {
            Ok(settled) => Ok(settled),
            Err(error) => Err(SettleError { error, delivery: Box::new(self) }),
        }
    }

    /// Settles the delivery once `writes` are in the broker's `store` (see
    /// [`Controls::write_with_settlement`](crate::Controls::write_with_settlement)):
    /// in the settlement's own round trip when the receipt can
    /// ([`Receipt::writing`]), else written to `store` first. Either way
    /// no settlement takes effect before its writes are made.
    ///
    /// # Errors
    ///
    /// As [`Delivery::settle`]; a store that could not be written for a
    /// reason that may pass (a lost connection) is reported the same way,
    /// nothing settled. A write the store refuses for good (a value over
    /// its size rules) is logged and dropped, and the delivery settled,
    /// since trying again cannot help.
    pub async fn settle_writing(
        self,
        settlement: Settlement,
        writes: &[StoreWrite],
        store: &dyn Store,
    ) -> Result<Settled, SettleError> {
        if writes.is_empty() {
            return self.settle(settlement).await;
        }
        if let Some(writing) = self.receipt.writing() {
            return match writing.settle_writing(&settlement, writes).await {
                Ok(settled) => Ok(settled),
                Err(error) => Err(SettleError { error, delivery: Box::new(self) }),
            };
        }
        if let Err(error) = write_before_settling(store, writes).await {
            return Err(SettleError { error, delivery: Box::new(self) });
        }
        self.settle(settlement).await
    }
}

/// Makes `writes` in `store` ahead of the settlement they go with, as
/// [`Delivery::settle_writing`] does when the receipt cannot carry them: a
/// store that fails for a transient reason fails the settlement (settling
/// again writes again), one that refuses the writes for good is logged
/// and the settlement goes ahead without them.
///
/// # Errors
///
/// The store's transient failure, as a [`BrokerError`] of its kind.
pub async fn write_before_settling(store: &dyn Store, writes: &[StoreWrite]) -> Result<(), BrokerError> {
    match store.set_many(&StoreWrite::entries(writes)).await {
        Ok(()) => Ok(()),
        Err(error) if error.is_retryable() => {
            Err(BrokerError::new(store_error_kind(&error), format!("writing to the store: {error}")))
        }
        Err(error) => {
            tracing::error!(%error, "a write to the store that goes with a settlement was refused; settling without it");
            Ok(())
        }
    }
}

/// A settlement the broker could not be told of, with the delivery to try
/// again.
#[derive(Debug, thiserror::Error)]
#[error("{error}")]
pub struct SettleError {
    #[source]
    error: BrokerError,
    delivery: Box<Delivery>,
}

impl SettleError {
    /// Why the broker could not be told.
    pub fn error(&self) -> &BrokerError {
        &self.error
    }

    /// The delivery, unsettled, to settle again.
    pub fn into_delivery(self) -> Delivery {
        *self.delivery
    }

    /// The broker's error, dropping the delivery (it is redelivered once
    /// its claim lapses).
    pub fn into_error(self) -> BrokerError {
        self.error
    }
}

/// The broker error kind of a store error that may pass.
fn store_error_kind(error: &crate::StoreError) -> crate::BrokerErrorKind {
    match error.kind() {
        crate::StoreErrorKind::Timeout => crate::BrokerErrorKind::Timeout,
        crate::StoreErrorKind::Unavailable => crate::BrokerErrorKind::Unavailable,
        _ => crate::BrokerErrorKind::Connection,
    }
}

impl From<SettleError> for BrokerError {
    fn from(error: SettleError) -> Self {
        error.error
    }
}

/// Counts of one queue's messages.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct QueueStats {
    /// Ready to be delivered.
    pub ready: u64,
    /// Waiting for their delay to pass.
    pub delayed: u64,
    /// Delivered and not settled yet: by every consumer of the queue, or
    /// by this process's alone, as [`QueueStats::in_flight_scope`] says.
    pub in_flight: u64,
    /// In the dead-letter queue.
    pub dead: u64,
    /// Whether the queue is paused ([`QueueAdmin::pause`]): its messages
    /// are kept, and no worker claims them until it is resumed.
    pub paused: bool,
    /// Whose deliveries [`QueueStats::in_flight`] counts.
    pub in_flight_scope: InFlightScope,
}

/// Whose deliveries [`QueueStats::in_flight`] counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum InFlightScope {
    /// Every consumer's, across the fleet (the in-memory and Redis
    /// brokers).
    #[default]
    Queue,
    /// The consumers of this process alone: the broker does not tell
    /// clients how many of a queue's deliveries are unacknowledged
    /// (RabbitMQ over AMQP; its management API does). A process with no
    /// consumer, such as the `dramaturg` CLI, counts 0.
    Process,
}

impl QueueStats {
    /// Counts of ready, delayed and in-flight messages.
    pub fn new(ready: u64, delayed: u64, in_flight: u64, dead: u64) -> Self {
        Self { ready, delayed, in_flight, dead, paused: false, in_flight_scope: InFlightScope::Queue }
    }

    /// The same counts, with an in-flight count of `scope`.
    #[must_use]
    pub fn with_in_flight_scope(mut self, scope: InFlightScope) -> Self {
        self.in_flight_scope = scope;
        self
    }

    /// The in-flight count when it covers the whole queue
    /// ([`InFlightScope::Queue`]); `None` when it covers this process
    /// alone.
    pub fn fleet_in_flight(&self) -> Option<u64> {
        (self.in_flight_scope == InFlightScope::Queue).then_some(self.in_flight)
    }

    /// The same counts, of a queue that is paused (`true`) or not.
    #[must_use]
    pub fn with_paused(mut self, paused: bool) -> Self {
        self.paused = paused;
        self
    }

    /// Whether nothing is ready, delayed or in flight (dead letters aside).
    pub fn is_drained(&self) -> bool {
        self.ready == 0 && self.delayed == 0 && self.in_flight == 0
    }
}

/// A worker as the broker knows it (see [`QueueAdmin::workers`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct WorkerInfo {
    /// The broker's id of the worker (the Redis broker's is
    /// `<host>-<pid>-<random>`).
    pub id: String,
    /// When the worker last told the broker it is alive, by the broker's
    /// clock. A worker whose last beat is older than its heartbeat timeout
    /// is presumed dead: another worker returns what it held.
    pub last_beat: SystemTime,
    /// The queues it consumes, with how many of their messages it holds
    /// (claimed and not settled).
    pub in_flight: std::collections::BTreeMap<String, u64>,
    /// How many messages it runs at a time, as the worker told the broker
    /// ([`Broker::set_worker_concurrency`]); `None` when it did not (an
    /// older worker, Dramatiq's layout).
    pub concurrency: Option<usize>,
    /// Messages it holds now — running, or claimed and waiting for a
    /// concurrency slot — the oldest claims of each queue first, at most
    /// [`HELD_LISTED`] in all (see [`WorkerInfo::in_flight`] for how many
    /// it holds).
    pub held: Vec<HeldMessage>,
}

/// How many of a worker's held messages [`QueueAdmin::workers`] lists at
/// most ([`WorkerInfo::held`]), so that reading the workers costs the same
/// whatever their concurrency.
pub const HELD_LISTED: usize = 20;

/// A message a worker holds ([`WorkerInfo::held`]).
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct HeldMessage {
    /// Its queue.
    pub queue: String,
    /// The broker's id of the entry: the Redis broker gives each enqueue
    /// an id of its own, so decode the body for the message's id.
    pub id: String,
    /// The encoded message; `None` when it was settled between the
    /// listing and the read.
    pub body: Option<Bytes>,
}

impl HeldMessage {
    /// A held message from its parts.
    pub fn new(queue: String, id: String, body: Option<Bytes>) -> Self {
        Self { queue, id, body }
    }
}

impl fmt::Debug for HeldMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HeldMessage")
            .field("queue", &self.queue)
            .field("id", &self.id)
            .field("body_len", &self.body.as_ref().map(Bytes::len))
            .finish()
    }
}

impl WorkerInfo {
    /// A worker from its parts, of unknown concurrency and holding no
    /// listed message (see [`WorkerInfo::with_concurrency`] and
    /// [`WorkerInfo::with_held`]).
    pub fn new(id: String, last_beat: SystemTime, in_flight: std::collections::BTreeMap<String, u64>) -> Self {
        Self { id, last_beat, in_flight, concurrency: None, held: Vec::new() }
    }

    /// The same worker, of concurrency `concurrency`.
    #[must_use]
    pub fn with_concurrency(mut self, concurrency: Option<usize>) -> Self {
        self.concurrency = concurrency;
        self
    }

    /// The same worker, holding `held` (cut to [`HELD_LISTED`]).
    #[must_use]
    pub fn with_held(mut self, mut held: Vec<HeldMessage>) -> Self {
        held.truncate(HELD_LISTED);
        self.held = held;
        self
    }
}

/// How many attempts of one queue ended each way, in some span of time
/// ([`QueueAdmin::record_outcomes`], [`MinuteOutcomes`]).
///
/// - `succeeded`: the actor returned success and the message was
///   acknowledged.
/// - `failed`: the attempt failed — the actor's error, panic or time
///   limit — and the message was retried later or dead-lettered, or the
///   delivery was dead-lettered without running (it did not decode, was
///   too large, needed a middleware the app lacks).
///
/// Attempts that were skipped, aborted, postponed (a rate limit) or
/// returned to the queue at shutdown are in neither. "Processed" is the
/// sum of both.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct OutcomeCounts {
    /// Attempts that succeeded.
    pub succeeded: u64,
    /// Attempts that failed (retried or dead-lettered after).
    pub failed: u64,
}

impl OutcomeCounts {
    /// Counts from their parts.
    pub fn new(succeeded: u64, failed: u64) -> Self {
        Self { succeeded, failed }
    }

    /// Attempts that ended either way: succeeded plus failed.
    pub fn processed(&self) -> u64 {
        self.succeeded.saturating_add(self.failed)
    }

    /// Whether both counts are zero.
    pub fn is_empty(&self) -> bool {
        self.succeeded == 0 && self.failed == 0
    }
}

/// The outcomes of one minute, by the broker's clock
/// ([`QueueAdmin::outcomes_per_minute`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct MinuteOutcomes {
    /// The start of the minute (a whole minute since the Unix epoch).
    pub minute: SystemTime,
    /// Every queue with an outcome in that minute, and its counts.
    pub queues: std::collections::BTreeMap<String, OutcomeCounts>,
}

impl MinuteOutcomes {
    /// A minute from its parts.
    pub fn new(minute: SystemTime, queues: std::collections::BTreeMap<String, OutcomeCounts>) -> Self {
        Self { minute, queues }
    }

    /// The counts of every queue, added up.
    pub fn total(&self) -> OutcomeCounts {
        self.queues.values().fold(OutcomeCounts::default(), |sum, counts| {
            OutcomeCounts::new(sum.succeeded.saturating_add(counts.succeeded), sum.failed.saturating_add(counts.failed))
        })
    }
}

/// How many minutes [`QueueAdmin::outcomes_per_minute`] reads back: the
/// last hour, the current minute included.
pub const OUTCOME_MINUTES: usize = 60;

/// Queue statistics, purging and draining; for operators, the queues and
/// workers the broker knows.
#[async_trait]
pub trait QueueAdmin: Send + Sync {
    /// Counts of `queue`'s messages.
    ///
    /// # Errors
    ///
    /// A [`BrokerError`] when the broker cannot be reached.
    async fn stats(&self, queue: &str) -> Result<QueueStats, BrokerError>;

    /// Removes every ready and delayed message of `queue`; returns how many.
    ///
    /// # Errors
    ///
    /// A [`BrokerError`] when the broker cannot be reached.
    async fn purge(&self, queue: &str) -> Result<u64, BrokerError>;

    /// Returns every message of `queue` that is claimed and not settled to
    /// the queue at once (marked redelivered), as the broker does when its
    /// owner is presumed dead; the owners' later settlements come back as
    /// [`Settled::Stale`] and change nothing. Returns how many.
    ///
    /// For operators (a worker known to be gone, whose heartbeat timeout is
    /// long) and for tests that simulate a crash. The default reports
    /// [`Unsupported`](crate::BrokerErrorKind::Unsupported).
    ///
    /// # Errors
    ///
    /// A [`BrokerError`] when the broker cannot be reached or cannot do it.
    async fn requeue_in_flight(&self, queue: &str) -> Result<u64, BrokerError> {
        Err(BrokerError::new(
            crate::BrokerErrorKind::Unsupported,
            format!("this broker cannot return the in-flight messages of {queue:?}"),
        ))
    }

    /// The queues that hold messages (ready, delayed, in flight or dead),
    /// sorted by name. For operators' tools.
    ///
    /// The default reports [`Unsupported`](crate::BrokerErrorKind::Unsupported):
    /// RabbitMQ tells no client which queues exist (its management plugin
    /// does), so there the queues must be named.
    ///
    /// # Errors
    ///
    /// A [`BrokerError`] when the broker cannot be reached or cannot tell.
    async fn queues(&self) -> Result<Vec<String>, BrokerError> {
        Err(BrokerError::new(crate::BrokerErrorKind::Unsupported, "this broker cannot list its queues: name them"))
    }

    /// The workers registered with the broker, dead ones not yet recovered
    /// included (see [`WorkerInfo::last_beat`]), sorted by id.
    ///
    /// The default reports [`Unsupported`](crate::BrokerErrorKind::Unsupported):
    /// only brokers that keep a registry of workers (Redis) can tell.
    ///
    /// # Errors
    ///
    /// A [`BrokerError`] when the broker cannot be reached or cannot tell.
    async fn workers(&self) -> Result<Vec<WorkerInfo>, BrokerError> {
        Err(BrokerError::new(crate::BrokerErrorKind::Unsupported, "this broker keeps no registry of workers"))
    }

    /// Adds `counts` — a worker's outcomes per queue since its last call,
    /// as deltas — to the current minute's counts on the broker's server,
    /// by the broker's clock, in one round trip. The worker calls it every
    /// few seconds ([`OUTCOMES_EVERY`](crate::worker::OUTCOMES_EVERY)) and
    /// once when it stops, for the queues with an outcome; the counts are
    /// kept about two hours, for [`outcomes_per_minute`](QueueAdmin::outcomes_per_minute).
    ///
    /// The default reports [`Unsupported`](crate::BrokerErrorKind::Unsupported):
    /// only brokers with a server that keeps data (Redis) can keep them.
    ///
    /// # Errors
    ///
    /// A [`BrokerError`] when the broker cannot be reached (nothing was
    /// added, or all of it), or `Unsupported`.
    async fn record_outcomes(
        &self,
        counts: &std::collections::BTreeMap<String, OutcomeCounts>,
    ) -> Result<(), BrokerError> {
        let _ = counts;
        Err(unsupported_outcomes())
    }

    /// The outcomes of the last [`OUTCOME_MINUTES`] minutes by the broker's
    /// clock, oldest first, the current (partial) minute last: one entry
    /// per minute, with no queue in the minutes nobody recorded.
    ///
    /// The default reports [`Unsupported`](crate::BrokerErrorKind::Unsupported).
    ///
    /// # Errors
    ///
    /// A [`BrokerError`] when the broker cannot be reached, or `Unsupported`.
    async fn outcomes_per_minute(&self) -> Result<Vec<MinuteOutcomes>, BrokerError> {
        Err(unsupported_outcomes())
    }

    /// Pauses `queue` for every worker of the fleet, until
    /// [`resume`](QueueAdmin::resume): within a second, running workers
    /// claim none of its messages, and a worker started later claims none
    /// either, since the pause is kept on the broker's server. Work already
    /// claimed finishes and is settled as usual; sends still enqueue, and
    /// delayed messages still fall due into the (paused) queue. Pausing a
    /// paused queue changes nothing. [`QueueStats::paused`] shows it.
    ///
    /// The default reports [`Unsupported`](crate::BrokerErrorKind::Unsupported).
    ///
    /// # Errors
    ///
    /// A [`BrokerError`] when the broker cannot be reached (the queue's
    /// state is then unchanged), or `Unsupported` from a broker or layout
    /// that cannot pause (the Dramatiq layouts).
    async fn pause(&self, queue: &str) -> Result<(), BrokerError> {
        Err(unsupported_pause(queue))
    }

    /// Resumes a paused `queue`: within a second, workers consuming it
    /// claim its messages again. Resuming a queue that is not paused
    /// changes nothing.
    ///
    /// The default reports [`Unsupported`](crate::BrokerErrorKind::Unsupported).
    ///
    /// # Errors
    ///
    /// As [`pause`](QueueAdmin::pause).
    async fn resume(&self, queue: &str) -> Result<(), BrokerError> {
        Err(unsupported_pause(queue))
    }

    /// Whether `queue` has no ready, delayed or in-flight message (dead
    /// letters aside), as [`QueueStats::is_drained`] says of its
    /// [`stats`](QueueAdmin::stats).
    ///
    /// The default reads the stats; a broker whose stats count rows (the
    /// SQL brokers) answers with a cheaper look for any one message.
    ///
    /// # Errors
    ///
    /// As [`stats`](QueueAdmin::stats).
    async fn is_drained(&self, queue: &str) -> Result<bool, BrokerError> {
        Ok(self.stats(queue).await?.is_drained())
    }

    /// Waits until `queue` has no ready, delayed or in-flight message, for
    /// at most `timeout`. Meant for tests and scripts.
    ///
    /// The default asks [`QueueAdmin::is_drained`] every 10 ms.
    ///
    /// # Errors
    ///
    /// [`BrokerError`] of kind [`Timeout`](crate::BrokerErrorKind::Timeout)
    /// when the queue is not drained in time, or any error of `is_drained`.
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe: it only reads.
    async fn join(&self, queue: &str, timeout: Duration) -> Result<(), BrokerError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self.is_drained(queue).await? {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(BrokerError::join_timeout(queue, timeout));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// The error of a broker that keeps no per-minute outcomes.
fn unsupported_outcomes() -> BrokerError {
    BrokerError::new(crate::BrokerErrorKind::Unsupported, "this broker keeps no per-minute counts of outcomes")
}

/// The error of a broker that cannot pause `queue`.
fn unsupported_pause(queue: &str) -> BrokerError {
    BrokerError::new(
        crate::BrokerErrorKind::Unsupported,
        format!("this broker cannot pause or resume {:?}", crate::Bounded::quoted(queue)),
    )
}

/// A message in a dead-letter queue.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeadLetter {
    /// The broker's key for this entry, for [`DeadLetters::replay`].
    pub key: String,
    /// The encoded message, as it was delivered.
    pub body: Bytes,
    /// Why it was dead-lettered.
    pub reason: String,
    /// When it was dead-lettered.
    pub at: SystemTime,
}

impl DeadLetter {
    /// A dead letter from its parts.
    pub fn new(key: String, body: Bytes, reason: String, at: SystemTime) -> Self {
        Self { key, body, reason, at }
    }
}

impl fmt::Debug for DeadLetter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeadLetter")
            .field("key", &self.key)
            .field("body_len", &self.body.len())
            .field("reason", &self.reason)
            .field("at", &self.at)
            .finish()
    }
}

/// Which dead letters to replay (or delete).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Replay {
    /// The one with this key.
    One(String),
    /// All of them.
    All,
}

impl Replay {
    /// For brokers whose dead letters are rows keyed by an integer id:
    /// `Some(None)` for all, `Some(Some(id))` for one, `None` for a key
    /// that is no integer (it names no dead letter).
    ///
    /// ```
    /// use dramaturg_core::Replay;
    ///
    /// assert_eq!(Replay::All.row_id(), Some(None));
    /// assert_eq!(Replay::One("42".into()).row_id(), Some(Some(42)));
    /// assert_eq!(Replay::One("1-0".into()).row_id(), None);
    /// ```
    pub fn row_id(&self) -> Option<Option<i64>> {
        match self {
            Replay::One(key) => key.parse().ok().map(Some),
            Replay::All => Some(None),
        }
    }
}

/// Checks a queue name for a broker that keeps it as text: refuses one
/// that is empty, longer than `max_bytes`, or holds a NUL character, with
/// an error of kind [`InvalidInput`](crate::BrokerErrorKind::InvalidInput)
/// whose message begins with `broker` (`"postgres"`).
///
/// # Errors
///
/// As said.
///
/// ```
/// use dramaturg_core::broker::check_text_queue_name;
///
/// assert!(check_text_queue_name("default", 1000, "sqlite").is_ok());
/// assert!(check_text_queue_name("", 1000, "sqlite").is_err());
/// assert!(check_text_queue_name("a\0b", 1000, "sqlite").is_err());
/// assert!(check_text_queue_name("abc", 2, "sqlite").unwrap_err().to_string().contains("longer than 2 bytes"));
/// ```
pub fn check_text_queue_name(name: &str, max_bytes: usize, broker: &str) -> Result<(), BrokerError> {
    let problem = if name.is_empty() {
        "the queue name is empty".to_owned()
    } else if name.len() > max_bytes {
        format!("the queue name is longer than {max_bytes} bytes")
    } else if name.contains('\0') {
        "the queue name holds a NUL character".to_owned()
    } else {
        return Ok(());
    };
    Err(BrokerError::new(
        crate::BrokerErrorKind::InvalidInput,
        format!("{broker}: {problem}: {:?}", crate::Bounded::quoted(name)),
    ))
}

/// Dead-letter listing and replay.
#[async_trait]
pub trait DeadLetters: Send + Sync {
    /// Up to `limit` dead letters of `queue`, oldest first.
    ///
    /// # Errors
    ///
    /// A [`BrokerError`] when the broker cannot be reached.
    async fn list(&self, queue: &str, limit: usize) -> Result<Vec<DeadLetter>, BrokerError>;

    /// Up to `limit` dead letters of `queue` from position `offset` (0:
    /// the oldest), oldest first: a page of them, for dashboards.
    ///
    /// The default lists `offset + limit` of them and drops the first
    /// `offset`; brokers that can read a range override it (the Redis and
    /// in-memory brokers read the page only; RabbitMQ streams past the
    /// first `offset`, holding one at a time).
    ///
    /// # Errors
    ///
    /// A [`BrokerError`] when the broker cannot be reached.
    async fn page(&self, queue: &str, offset: usize, limit: usize) -> Result<Vec<DeadLetter>, BrokerError> {
        let mut letters = self.list(queue, offset.saturating_add(limit)).await?;
        Ok(letters.split_off(offset.min(letters.len())))
    }

    /// Moves dead letters back into `queue` as they were; returns how many.
    /// An unknown key replays nothing.
    ///
    /// # Errors
    ///
    /// A [`BrokerError`] when the broker cannot be reached.
    async fn replay(&self, queue: &str, which: Replay) -> Result<u64, BrokerError>;

    /// Deletes dead letters of `queue` for good; returns how many. An
    /// unknown key (the empty key included: apps call `delete` with it to
    /// learn whether the broker can delete before they rely on it) deletes
    /// nothing and is not an error.
    ///
    /// The default deletes nothing and says so.
    ///
    /// # Errors
    ///
    /// [`BrokerErrorKind::Unsupported`](crate::BrokerErrorKind::Unsupported)
    /// from brokers that cannot delete; a [`BrokerError`] when the broker
    /// cannot be reached.
    async fn delete(&self, queue: &str, which: Replay) -> Result<u64, BrokerError> {
        let _ = (queue, which);
        Err(BrokerError::new(crate::BrokerErrorKind::Unsupported, "this broker cannot delete dead letters"))
    }
}

/// Which waiting messages of a queue to browse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Waiting {
    /// Ready to be delivered, in delivery order (next first).
    Ready,
    /// Waiting for their delay to pass, soonest due first.
    Delayed,
}

/// Where a message is ([`QueueBrowser::locate`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Whereabouts {
    /// In its queue, ready to be delivered.
    Ready,
    /// Waiting for its delay to pass; due at `due` when the broker knows.
    Delayed {
        /// When it falls due, by the broker's clock.
        due: Option<SystemTime>,
    },
    /// Claimed by a worker and not settled yet: running, or about to.
    InFlight,
    /// In the queue's dead letters.
    Dead,
}

/// One waiting message of a [`QueuePage`], as the broker holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedMessage {
    /// The broker's id of the entry (the message's id).
    pub id: String,
    /// When it falls due (delayed messages), by the broker's clock.
    pub due: Option<SystemTime>,
    /// The encoded message; `None` when it left the queue (delivered,
    /// purged) between the listing and the read.
    pub body: Option<Bytes>,
}

/// A page of a queue's waiting messages.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueuePage {
    /// How many messages of that kind the queue holds in all.
    pub total: u64,
    /// The messages of the page, in order.
    pub messages: Vec<QueuedMessage>,
}

/// A message found by [`QueueBrowser::locate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located {
    /// The broker's id of the entry (a broker may give each enqueue an
    /// entry id of its own, apart from the message's id).
    pub entry: String,
    /// Where it is.
    pub whereabouts: Whereabouts,
    /// The encoded message.
    pub body: Bytes,
}

/// Reading a queue's messages without consuming them.
///
/// Brokers that hold their queues as data structures they can read (Redis)
/// offer it; RabbitMQ cannot show a queue's messages without consuming
/// them, so it does not.
#[async_trait]
pub trait QueueBrowser: Send + Sync {
    /// Up to `limit` of `queue`'s `which` messages, from position `offset`
    /// (0: the next to be delivered, or the soonest due), and how many
    /// there are in all. It reads the page only, never the whole queue.
    ///
    /// # Errors
    ///
    /// A [`BrokerError`] when the broker cannot be reached, or `Unsupported`
    /// from a layout that cannot be browsed.
    async fn page(&self, queue: &str, which: Waiting, offset: u64, limit: usize) -> Result<QueuePage, BrokerError>;

    /// The entries of `queue` (waiting, in flight or dead) that may be
    /// message `id`: the entry whose broker id is `id`, and those whose
    /// encoded body contains `id` as text. The caller decodes them to keep
    /// the one whose message id it is ([`App::locate_message`](crate::App::locate_message) does). Empty
    /// when `queue` holds none (never sent, or done).
    ///
    /// It may read the whole queue (in bounded steps, on the server): for
    /// a person's lookup, not for a hot path.
    ///
    /// # Errors
    ///
    /// A [`BrokerError`] when the broker cannot be reached, or `Unsupported`.
    async fn locate(&self, queue: &str, id: &str) -> Result<Vec<Located>, BrokerError>;
}

/// `url` with the password of its user part, and the values of its query
/// parameters whose names suggest a secret (`pass`, `password`, `passwd`,
/// `pwd`, `auth`, `token`, …: some clients read a password there, and a
/// misspelt one must not show either), replaced by `***`, for logs, errors
/// and `Debug` output.
///
/// # Examples
///
/// ```
/// use dramaturg_core::broker::redact_password;
///
/// assert_eq!(redact_password("amqp://guest:secret@localhost:5672/%2f"), "amqp://guest:***@localhost:5672/%2f");
/// assert_eq!(redact_password("redis://:secret@127.0.0.1/0"), "redis://:***@127.0.0.1/0");
/// assert_eq!(redact_password("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
/// // Mistyped URLs whose user info cannot be told apart: everything
/// // between the first ':' and the last '@' is hidden.
/// assert_eq!(redact_password("redis:/:secret@127.0.0.1:6379"), "redis:***@127.0.0.1:6379");
/// assert_eq!(redact_password("redis:///:secret@127.0.0.1"), "redis:***@127.0.0.1");
/// assert_eq!(redact_password("secret@host"), "***@host");
/// assert_eq!(redact_password("redis+unix:///run/redis.sock?user=app&pass=secret"), "redis+unix:///run/redis.sock?user=app&pass=***");
/// assert_eq!(redact_password("redis://h?password=secret#x"), "redis://h?password=***#x");
/// assert_eq!(redact_password("redis://h/?namespace=a&passwd=secret"), "redis://h/?namespace=a&passwd=***");
/// assert_eq!(redact_password("redis://h/?PWD=secret&auth=secret"), "redis://h/?PWD=***&auth=***");
/// assert_eq!(redact_password("redis://:pa?ss#word@h/0"), "redis://:***@h/0");
/// ```
pub fn redact_password(url: &str) -> String {
    // The user part first: a mistyped password may hold a '?' or a '#'.
    let shown = redact_user_password(url);
    let Some((before, query)) = shown.split_once('?') else { return shown };
    let (query, fragment) = query.split_once('#').map_or((query, None), |(query, fragment)| (query, Some(fragment)));
    let mut redacted = format!("{before}?{}", redact_query(query));
    if let Some(fragment) = fragment {
        redacted.push('#');
        redacted.push_str(fragment);
    }
    redacted
}

/// `query` (without its `?`) with the values of the parameters that may
/// hold a secret ([`may_hold_a_secret`]) replaced by `***`.
fn redact_query(query: &str) -> String {
    let pairs = query.split('&').map(|pair| match pair.split_once('=') {
        Some((name, _)) if may_hold_a_secret(name) => format!("{name}=***"),
        _ => pair.to_owned(),
    });
    pairs.collect::<Vec<_>>().join("&")
}

/// Whether a query parameter named `name` may hold a secret: its name, in
/// any case, holds `pass`, `pwd`, `secret`, `token` or `credential`, or is
/// `auth` (so that a misspelt `passwd=` is hidden as `pass=` is).
fn may_hold_a_secret(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    name == "auth" || ["pass", "pwd", "secret", "token", "credential"].iter().any(|word| name.contains(word))
}

/// `url` with the password of its user part replaced by `***`.
fn redact_user_password(url: &str) -> String {
    if let Some((scheme, rest)) = url.split_once("://") {
        let authority_end = rest.find('/').unwrap_or(rest.len());
        if let Some(at) = rest[..authority_end].rfind('@') {
            let user = rest[..at].split(':').next().unwrap_or_default();
            let password_given = rest[..at].contains(':');
            let user_part = if password_given { format!("{user}:***") } else { user.to_owned() };
            return format!("{scheme}://{user_part}@{}", &rest[at + 1..]);
        }
    }
    let Some(at) = url.rfind('@') else { return url.to_owned() };
    match url[..at].find(':') {
        Some(colon) => format!("{}***{}", &url[..=colon], &url[at..]),
        None => format!("***{}", &url[at..]),
    }
}

/// Refuses a broker URL whose query names a parameter outside `known`
/// (a typo such as `?namspace=billing` would otherwise be ignored, and the
/// broker would use the default), or one parameter twice (which of the
/// two applies would depend on who reads it). `known` lists every parameter that the
/// broker or its client reads; the fragment (after `#`) is not looked at.
///
/// # Errors
///
/// A [`BrokerError`] of kind
/// [`InvalidInput`](crate::BrokerErrorKind::InvalidInput) naming the first
/// unknown parameter and the known ones; it never shows the URL.
///
/// ```
/// use dramaturg_core::broker::check_url_parameters;
///
/// assert!(check_url_parameters("redis://h/0?namespace=billing", &["namespace", "db"]).is_ok());
/// let error = check_url_parameters("redis://h/0?namspace=billing", &["namespace", "db"]).unwrap_err();
/// assert!(error.to_string().contains("namspace"), "{error}");
/// assert!(check_url_parameters("redis://h/0?db=1&db=2", &["db"]).is_err());
/// ```
pub fn check_url_parameters(url: &str, known: &[&str]) -> Result<(), BrokerError> {
    let Some((_, query)) = url.split_once('?') else { return Ok(()) };
    let query = query.split_once('#').map_or(query, |(query, _)| query);
    let names: Vec<&str> = query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| pair.split_once('=').map_or(pair, |(name, _)| name))
        .collect();
    let invalid = |message: String| Err(BrokerError::new(crate::BrokerErrorKind::InvalidInput, message));
    if let Some(name) = names.iter().find(|name| !known.contains(name)) {
        return invalid(format!(
            "the URL's query parameter {:?} is unknown; this broker reads {}",
            crate::Bounded::quoted(name),
            known.join(", ")
        ));
    }
    if let Some(name) = names.iter().enumerate().find_map(|(i, name)| names[..i].contains(name).then_some(name)) {
        return invalid(format!("the URL's query parameter {name:?} is given twice; give it once"));
    }
    Ok(())
}

/// The value of query parameter `name` in `url` (as written, not
/// percent-decoded), if present; the first one when it is given twice.
///
/// ```
/// use dramaturg_core::broker::query_parameter;
///
/// assert_eq!(query_parameter("redis://h/0?a=1&b=2#f", "b"), Some("2"));
/// assert_eq!(query_parameter("redis://h/0?ab=1", "a"), None);
/// ```
pub fn query_parameter<'a>(url: &'a str, name: &str) -> Option<&'a str> {
    let query = url.split_once('?')?.1;
    let query = query.split_once('#').map_or(query, |(query, _)| query);
    query.split('&').find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
}

/// An error that says whether the same call may succeed if tried again
/// (the server was away, a timeout): what [`retry_sends`] retries on.
pub trait MayPass: fmt::Display {
    /// Whether trying again may succeed.
    fn may_pass(&self) -> bool;
}

impl MayPass for BrokerError {
    fn may_pass(&self) -> bool {
        self.is_retryable()
    }
}

impl MayPass for crate::store::StoreError {
    fn may_pass(&self) -> bool {
        self.is_retryable()
    }
}

impl MayPass for crate::EnqueueError {
    fn may_pass(&self) -> bool {
        matches!(self, Self::Broker(error) if error.is_retryable())
    }
}

/// Runs `send` until it succeeds, fails for a reason that retrying cannot
/// fix ([`MayPass`]), or `retry_for` is spent; waits 50 ms after the first
/// failure, doubling up to 1 s. For brokers' "retry sends while the server
/// is away" settings (zero: no retry), and for middleware that send or
/// write on a message's behalf.
///
/// # Errors
///
/// The last error of `send`.
pub async fn retry_sends<T, E, F, Fut>(retry_for: Duration, mut send: F) -> Result<T, E>
where
    E: MayPass,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let deadline = tokio::time::Instant::now() + retry_for;
    let mut backoff = Duration::from_millis(50);
    loop {
        match send().await {
            Err(error) if error.may_pass() && tokio::time::Instant::now() + backoff < deadline => {
                tracing::warn!(%error, retry_in = ?backoff, "call failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
            other => return other,
        }
    }
}

/// Where a broker's messages live (see [`Broker::locality`]).
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Locality {
    /// In this process's memory: no other process sees the messages.
    Process,
    /// On the server at `url`, which other processes reach too. The URL
    /// may hold a password: its `Debug` output hides it, and so must
    /// anything that shows it (see [`redact_password`]).
    Server {
        /// The URL the broker connected to (`redis://…`, `amqp://…`).
        url: String,
    },
    /// Other processes see the messages; the broker does not say where.
    Remote,
}

impl Locality {
    /// [`Locality::Server`] at `url`.
    pub fn server(url: impl Into<String>) -> Self {
        Self::Server { url: url.into() }
    }

    /// Whether only this process sees the messages.
    pub fn is_process_local(&self) -> bool {
        matches!(self, Self::Process)
    }

    /// The URL's scheme (`"redis"`, `"amqp"`, …) for [`Locality::Server`].
    pub fn scheme(&self) -> Option<&str> {
        match self {
            Self::Server { url } => url.split_once("://").map(|(scheme, _)| scheme),
            _ => None,
        }
    }
}

impl fmt::Debug for Locality {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Process => f.write_str("Process"),
            Self::Server { url } => f.debug_struct("Server").field("url", &redact_password(url)).finish(),
            Self::Remote => f.write_str("Remote"),
        }
    }
}
