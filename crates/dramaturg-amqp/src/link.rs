//! The two connections of a broker value, each opened on demand and again
//! after a loss: the publishing one (a publisher channel with confirms on,
//! the queues declared on it, its blocked state) and the consuming one
//! (consumer and administrative channels; it never publishes, so RabbitMQ
//! never blocks it). Both live on the broker value's
//! [`ConnectionRuntime`].

use std::collections::HashSet;
use std::future::Future;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use dramaturg_core::broker::redact_password;
pub(crate) use dramaturg_core::now_ms;
use dramaturg_core::{Bounded, BrokerError, BrokerErrorKind, Protocol};
use lapin::options::{
    ConfirmSelectOptions, ExchangeBindOptions, ExchangeDeclareOptions, ExchangeUnbindOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ErrorKind, ExchangeKind};

use crate::confirms::{Confirms, Published};
use crate::delay::{bucket_ttl_ms, DUE_HEADER, REMAINING_HEADER};
use crate::error::amqp_error;
use crate::flow::{watch_blocked, BlockState};
use crate::names::{check_queue, dead_queue, short};
use crate::runtime::ConnectionRuntime;
use crate::target::{Extra, Target};
use crate::{AmqpConfig, QueueType, Shared};

/// The header holding a dead letter's reason.
pub(crate) const REASON_HEADER: &str = "x-dramaturg-reason";
/// The header holding a dead letter's key (for replay).
pub(crate) const DEAD_KEY_HEADER: &str = "x-dramaturg-dead-key";

/// The largest header table this broker writes, in bytes. A message's
/// properties travel in one frame, and RabbitMQ closes the connection on a
/// frame larger than its `frame_max` (at least 4,096 bytes); staying well
/// under the smallest possible `frame_max` keeps any one message from ever
/// tearing down a connection.
pub(crate) const MAX_HEADER_BYTES: usize = 3072;

/// A new channel on `connection`.
async fn open_channel(connection: &Connection) -> Result<Channel, BrokerError> {
    connection.create_channel().await.map_err(|e| amqp_error(e, "opening a channel"))
}

/// The publishing connection with its publisher channel. Everything that
/// publishes — sends, retries, delay hops, dead letters, replays, the
/// probes of bucket lookups — goes through it, bounded by the send timeout
/// ([`Link::bounded`]).
pub(crate) struct Link {
    connection: Connection,
    publisher: Channel,
    config: AmqpConfig,
    /// Queues declared on this connection, by routing key: a queue's name
    /// stands for it and its dead-letter queue; buckets have their own.
    declared: Mutex<HashSet<String>>,
    confirms: Confirms,
    blocked: BlockState,
}

impl Link {
    /// A new channel on this connection.
    pub(crate) async fn channel(&self) -> Result<Channel, BrokerError> {
        open_channel(&self.connection).await
    }

    /// Whether RabbitMQ has blocked this connection (a resource alarm).
    pub(crate) fn is_blocked(&self) -> bool {
        self.blocked.borrow().is_some()
    }

    /// Waits until RabbitMQ unblocks this connection, or `deadline`;
    /// returns whether it is unblocked.
    pub(crate) async fn unblocked_by(&self, deadline: tokio::time::Instant) -> bool {
        let mut blocked = self.blocked.clone();
        matches!(tokio::time::timeout_at(deadline, crate::flow::changed_to(&mut blocked, false)).await, Ok(Some(_)))
    }

    /// Runs `work`, which publishes on this connection, by `deadline`,
    /// failing fast or waiting while the connection is blocked (see
    /// [`crate::flow::bounded`]).
    pub(crate) async fn bounded<T>(
        &self,
        deadline: tokio::time::Instant,
        work: impl std::future::Future<Output = Result<T, BrokerError>>,
    ) -> Result<T, BrokerError> {
        crate::flow::bounded(&self.config, &self.blocked, deadline, work).await
    }

    /// Declares `queue` and its dead-letter queue, once per connection.
    /// Delay buckets are declared when first published to.
    pub(crate) async fn declare(&self, queue: &str) -> Result<(), BrokerError> {
        check_queue(queue)?;
        self.ensure(Target::Queue(queue)).await
    }

    /// Declares what `target` needs, once per connection.
    async fn ensure(&self, target: Target<'_>) -> Result<(), BrokerError> {
        let name = match target {
            Target::Bucket(..) => target.name(),
            _ => target.queue().to_owned(),
        };
        if Shared::lock(&self.declared).contains(&name) {
            return Ok(());
        }
        match target {
            _ if self.config.layout() == Protocol::Dramatiq => {
                // Passive declares on channels of their own: a 404 closes
                // the channel it happens on, never the publisher's.
                crate::dramatiq::layout::declare(&self.connection, &self.config, target.queue()).await?;
                Shared::lock(&self.declared).insert(name);
            }
            Target::Queue(queue) | Target::Dead(queue) | Target::DelayQueue(queue) | Target::DeadLetterQueue(queue) => {
                declare_topology(&self.publisher, &self.config, queue).await?;
                Shared::lock(&self.declared).insert(name);
            }
            Target::Bucket(queue, k) => {
                declare_one(&self.publisher, &name, bucket_arguments(&self.config, queue, k)).await?;
                // On a channel of its own: a refusal (a user without
                // configure permission on the record exchanges) closes that
                // channel, not the publisher's, and costs only statistics.
                let recorded = async {
                    let channel = self.channel().await?;
                    let result = record_bucket(&channel, &name).await;
                    let _ = channel.close(200, "recorded".into()).await;
                    result
                };
                if let Err(error) = recorded.await {
                    tracing::warn!(
                        bucket = %name, %error,
                        "could not record a delay bucket; statistics of other processes may not count its messages"
                    );
                }
                Shared::lock(&self.declared).insert(name);
            }
        }
        Ok(())
    }

    /// Publishes to `target` (declaring it if needed) and waits for the
    /// confirm. Publishes are mandatory: if RabbitMQ returns the message
    /// because its queue is gone (deleted, expired), the queue is declared
    /// again and the message sent once more; a second return is an error.
    pub(crate) async fn publish(&self, target: Target<'_>, body: &Bytes, extra: Extra<'_>) -> Result<(), BrokerError> {
        check_queue(target.queue())?;
        let properties = properties(&self.config, &extra)?;
        self.ensure(target).await?;
        let name = target.name();
        if let Published::Stored = self.publish_once(&name, body, properties.clone()).await? {
            return Ok(());
        }
        tracing::warn!(queue = %name, "RabbitMQ returned a message: its queue is gone; declaring it again and resending");
        Shared::lock(&self.declared).remove(match target {
            Target::Bucket(..) => name.as_str(),
            _ => target.queue(),
        });
        self.ensure(target).await?;
        match self.publish_once(&name, body, properties).await? {
            Published::Stored => Ok(()),
            Published::Returned => Err(BrokerError::new(
                BrokerErrorKind::Protocol,
                format!(
                    "amqp: RabbitMQ returned the message as unroutable twice: queue {name:?} is missing even after \
                     declaring it again"
                ),
            )),
        }
    }

    /// Whether delay bucket `name` was declared on this connection.
    pub(crate) fn has_declared(&self, name: &str) -> bool {
        Shared::lock(&self.declared).contains(name)
    }

    /// One mandatory publish to the default exchange and its confirm.
    async fn publish_once(
        &self,
        routing_key: &str,
        body: &Bytes,
        properties: BasicProperties,
    ) -> Result<Published, BrokerError> {
        self.confirms.publish(self.publisher.clone(), routing_key, body.clone(), properties).await
    }
}

/// The properties of a message: persistent, with bounded headers.
fn properties(config: &AmqpConfig, extra: &Extra<'_>) -> Result<BasicProperties, BrokerError> {
    let mut headers = FieldTable::default();
    if let Some(remaining) = extra.remaining {
        headers.insert(REMAINING_HEADER.into(), long(remaining));
    }
    if let Some(due) = extra.due {
        headers.insert(DUE_HEADER.into(), AMQPValue::LongLongInt(i64::try_from(due).unwrap_or(i64::MAX)));
    }
    if let Some((reason, key)) = extra.reason {
        // The reason may quote the message (an actor name, a decode
        // error): bound it here again, whatever the caller did.
        let reason = Bounded::reason(reason);
        let key = Bounded::quoted(key);
        headers.insert(REASON_HEADER.into(), AMQPValue::LongString(reason.as_str().into()));
        headers.insert(DEAD_KEY_HEADER.into(), AMQPValue::LongString(key.as_str().into()));
    }
    let size = header_table_bytes(&headers);
    if size > MAX_HEADER_BYTES {
        return Err(BrokerError::new(
            BrokerErrorKind::InvalidInput,
            format!("amqp: the message's headers take {size} bytes, over the limit of {MAX_HEADER_BYTES}"),
        ));
    }
    let dramatiq = config.layout() == Protocol::Dramatiq;
    let mut properties = BasicProperties::default().with_delivery_mode(2);
    // Dramatiq sets no headers: nor does this broker in its layout, where
    // it has none to set.
    if !(dramatiq && headers.inner().is_empty()) {
        properties = properties.with_headers(headers);
    }
    if extra.reason.is_some() {
        properties = properties.with_timestamp(now_ms() / 1000);
    }
    if let Some(priority) = extra.priority {
        match config.max_priority {
            // As Dramatiq does: the priority goes out as it is; RabbitMQ
            // ignores it on a queue without priorities.
            _ if dramatiq => properties = properties.with_priority(priority),
            // RabbitMQ treats a priority above the queue's maximum as
            // the maximum; say so in the value we send.
            Some(max) => properties = properties.with_priority(priority.min(max)),
            None if priority > 0 => return Err(no_priorities(priority)),
            None => {}
        }
    }
    Ok(properties)
}

/// The error for a priority sent without `max_priority`.
fn no_priorities(priority: u8) -> BrokerError {
    BrokerError::new(
        BrokerErrorKind::InvalidInput,
        format!(
            "amqp: the message has priority {priority}, but this broker declares its queues without \
             x-max-priority, so RabbitMQ would ignore it; set max_priority (AmqpConfig::max_priority or \
             `?max_priority=N` in the URL)"
        ),
    )
}

/// The encoded size of a header table, in bytes (AMQP 0-9-1 field-table
/// encoding of the value types this broker writes; others count as their
/// debug text, an overestimate).
pub(crate) fn header_table_bytes(table: &FieldTable) -> usize {
    table
        .inner()
        .iter()
        .map(|(key, value)| {
            let value = match value {
                AMQPValue::LongLongInt(_) => 8,
                AMQPValue::LongString(text) => 4 + text.as_bytes().len(),
                AMQPValue::ShortString(text) => 1 + text.as_str().len(),
                other => format!("{other:?}").len(),
            };
            1 + key.as_str().len() + 1 + value
        })
        .sum::<usize>()
        + 4
}

fn table(config: &AmqpConfig, entries: &[(&str, AMQPValue)]) -> FieldTable {
    let mut table = FieldTable::default();
    if let Some(after) = config.expire_unused_queues {
        table.insert("x-expires".into(), long(crate::delay::millis(after)));
    }
    for (key, value) in entries {
        table.insert(ShortString::from(*key), value.clone());
    }
    table
}

fn long(value: u64) -> AMQPValue {
    AMQPValue::LongLongInt(i64::try_from(value).unwrap_or(i64::MAX))
}

/// The arguments of a queue's main queue.
pub(crate) fn main_queue_arguments(config: &AmqpConfig, queue: &str) -> FieldTable {
    let mut entries = vec![
        ("x-dead-letter-exchange", AMQPValue::LongString("".into())),
        ("x-dead-letter-routing-key", AMQPValue::LongString(dead_queue(queue).into())),
    ];
    if let Some(max) = config.max_priority {
        entries.push(("x-max-priority", AMQPValue::ShortShortUInt(max)));
    }
    if config.queue_kind() == QueueType::Quorum {
        entries.push(("x-queue-type", QueueType::Quorum.argument()));
    }
    if let Some(limit) = config.deliveries_allowed() {
        entries.push(("x-delivery-limit", long(u64::from(limit))));
    }
    table(config, &entries)
}

/// The arguments of a queue's dead-letter queue: its retention and its
/// caps, enforced by RabbitMQ by dropping the oldest dead letters.
pub(crate) fn dead_queue_arguments(config: &AmqpConfig) -> FieldTable {
    table(
        config,
        &[
            ("x-message-ttl", long(crate::delay::millis(config.dead_letter_ttl))),
            ("x-max-length", long(config.dead_letter_max_count)),
            ("x-max-length-bytes", long(config.dead_letter_max_bytes)),
            // RabbitMQ's default, said here so that a policy cannot turn it
            // into `reject-publish`, which would refuse new dead letters.
            ("x-overflow", AMQPValue::LongString("drop-head".into())),
        ],
    )
}

/// The arguments of delay bucket `k` of `queue`.
pub(crate) fn bucket_arguments(config: &AmqpConfig, queue: &str, k: u32) -> FieldTable {
    table(
        config,
        &[
            ("x-message-ttl", long(bucket_ttl_ms(k))),
            ("x-dead-letter-exchange", AMQPValue::LongString("".into())),
            ("x-dead-letter-routing-key", AMQPValue::LongString(queue.into())),
        ],
    )
}

/// Declares (or re-declares, returning message counts) one durable queue.
pub(crate) async fn declare_one(channel: &Channel, name: &str, arguments: FieldTable) -> Result<u32, BrokerError> {
    let options = QueueDeclareOptions { durable: true, ..QueueDeclareOptions::default() };
    let queue = channel
        .queue_declare(short(name, "queue name")?, options, arguments)
        .await
        .map_err(|e| declare_error(e, name))?;
    Ok(queue.message_count())
}

/// The error for a failed declaration of queue `name`. RabbitMQ refuses
/// (`PRECONDITION_FAILED`) to declare an existing queue with other
/// arguments and never changes them: that error says what to do.
fn declare_error(error: lapin::Error, name: &str) -> BrokerError {
    if !is_precondition_failed(&error) {
        return amqp_error(error, &format!("declaring queue {name:?}"));
    }
    BrokerError::new(
        BrokerErrorKind::Unsuitable,
        format!(
            "amqp: queue {name:?} exists with other arguments than this broker declares it with ({error}); \
             RabbitMQ does not change the arguments of an existing queue: configure the broker as the queue \
             was declared (max_priority, queue_type, delivery_limit, dead_letter_ttl, dead_letter_caps, \
             expire_unused_queues), or drain the queue (stop its producers, let workers empty it) and delete \
             it so that it is declared again (deleting drops its messages: replay or list the dead letters of a \
             `.dq` first)"
        ),
    )
    .with_source(error)
}

/// Whether `error` is RabbitMQ's 406: a declaration that does not match
/// the existing queue.
fn is_precondition_failed(error: &lapin::Error) -> bool {
    matches!(
        error.kind(),
        ErrorKind::ProtocolError(e) if *e.kind() == AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED)
    )
}

/// Declares a queue and its dead-letter queue (not its delay buckets,
/// declared when first used); returns (ready, dead) counts.
pub(crate) async fn declare_topology(
    channel: &Channel,
    config: &AmqpConfig,
    queue: &str,
) -> Result<(u64, u64), BrokerError> {
    check_queue(queue)?;
    let dead = declare_one(channel, &dead_queue(queue), dead_queue_arguments(config)).await?;
    let ready = declare_one(channel, queue, main_queue_arguments(config, queue)).await?;
    Ok((u64::from(ready), u64::from(dead)))
}

/// The exchange whose bindings record which delay buckets exist: a binding
/// to [`PROBE_EXCHANGE`] with a bucket's name as its routing key means the
/// bucket was declared (by any process). Bindings, unlike queues, can be
/// looked up without an error for a missing one (see
/// `admin::recorded_buckets`); a passive declare of a missing queue makes
/// RabbitMQ close the channel, which lapin logs as an ERROR.
pub(crate) const RECORD_EXCHANGE: &str = "dramaturg.delay-buckets";
/// The fanout exchange the recorded bucket names route to; a lookup binds
/// a private queue to it.
pub(crate) const PROBE_EXCHANGE: &str = "dramaturg.delay-buckets.probes";

/// Declares the two record exchanges (durable, idempotent).
pub(crate) async fn declare_record(channel: &Channel) -> Result<(), BrokerError> {
    let durable = ExchangeDeclareOptions { durable: true, ..ExchangeDeclareOptions::default() };
    channel
        .exchange_declare(RECORD_EXCHANGE.into(), ExchangeKind::Direct, durable, FieldTable::default())
        .await
        .map_err(|e| amqp_error(e, "declaring the delay bucket record"))?;
    channel
        .exchange_declare(PROBE_EXCHANGE.into(), ExchangeKind::Fanout, durable, FieldTable::default())
        .await
        .map_err(|e| amqp_error(e, "declaring the delay bucket record"))?;
    Ok(())
}

/// Readies `channel` for probes: publisher confirms on, and a private
/// queue (exclusive, gone with the channel's connection) bound to
/// `exchange` with `key`, whose name it returns. A confirmed probe has
/// reached the queue by the time its confirm arrives, if it was routed
/// there at all.
pub(crate) async fn probe_inbox(channel: &Channel, exchange: &str, key: &str) -> Result<ShortString, BrokerError> {
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(|e| amqp_error(e, "enabling publisher confirms"))?;
    let private = QueueDeclareOptions { exclusive: true, auto_delete: true, ..QueueDeclareOptions::default() };
    let inbox = channel
        .queue_declare("".into(), private, FieldTable::default())
        .await
        .map_err(|e| amqp_error(e, "declaring a private queue"))?
        .name()
        .clone();
    channel
        .queue_bind(
            inbox.clone(),
            exchange.into(),
            short(key, "routing key")?,
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|e| amqp_error(e, "binding a private queue"))?;
    Ok(inbox)
}

/// Records that delay bucket `name` exists (idempotent).
async fn record_bucket(channel: &Channel, name: &str) -> Result<(), BrokerError> {
    declare_record(channel).await?;
    channel
        .exchange_bind(
            PROBE_EXCHANGE.into(),
            RECORD_EXCHANGE.into(),
            short(name, "queue name")?,
            ExchangeBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|e| amqp_error(e, "recording a delay bucket"))
}

/// Forgets delay bucket `name` (found missing: deleted or expired).
pub(crate) async fn forget_bucket(channel: &Channel, name: &str) -> Result<(), BrokerError> {
    channel
        .exchange_unbind(
            PROBE_EXCHANGE.into(),
            RECORD_EXCHANGE.into(),
            short(name, "queue name")?,
            ExchangeUnbindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|e| amqp_error(e, "forgetting a delay bucket"))
}

/// What a [`Linker`] opens: one of the two connections of a broker value.
pub(crate) trait Opened: Sized + Send + Sync + 'static {
    /// The connection's name, shown by `rabbitmqctl list_connections
    /// client_properties` and the management UI.
    const NAME: &'static str;

    /// Sets up what this connection carries on a new `connection`, with
    /// the tasks that serve it on `runtime` (the connection's own).
    fn open(
        connection: Connection,
        config: &AmqpConfig,
        runtime: &ConnectionRuntime,
    ) -> impl Future<Output = Result<Self, BrokerError>> + Send;

    /// Whether it still works.
    fn usable(&self) -> bool;
}

impl Opened for Link {
    const NAME: &'static str = "dramaturg (publishing)";

    async fn open(
        connection: Connection,
        config: &AmqpConfig,
        runtime: &ConnectionRuntime,
    ) -> Result<Self, BrokerError> {
        let blocked = watch_blocked(&connection, runtime.handle());
        let publisher = open_channel(&connection).await?;
        if config.confirms {
            publisher
                .confirm_select(ConfirmSelectOptions::default())
                .await
                .map_err(|e| amqp_error(e, "enabling publisher confirms"))?;
        }
        Ok(Link {
            connection,
            publisher,
            config: config.clone(),
            declared: Mutex::default(),
            confirms: Confirms::start(runtime.handle()),
            blocked,
        })
    }

    fn usable(&self) -> bool {
        self.connection.status().connected() && self.publisher.status().connected()
    }
}

/// The consuming connection: consumer channels (prefetch, deliveries,
/// acknowledgements), declarations, statistics, purges and dead-letter
/// reads. It never publishes, so a resource alarm does not block it.
pub(crate) struct Consuming {
    connection: Connection,
}

impl Consuming {
    /// A new channel on this connection.
    pub(crate) async fn channel(&self) -> Result<Channel, BrokerError> {
        open_channel(&self.connection).await
    }

    /// The connection itself.
    pub(crate) fn connection(&self) -> &Connection {
        &self.connection
    }
}

impl Opened for Consuming {
    const NAME: &'static str = "dramaturg (consuming)";

    async fn open(
        connection: Connection,
        _config: &AmqpConfig,
        _runtime: &ConnectionRuntime,
    ) -> Result<Self, BrokerError> {
        Ok(Consuming { connection })
    }

    fn usable(&self) -> bool {
        self.connection.status().connected()
    }
}

/// Opens a connection of kind `T` on demand and again after a loss, on the
/// broker value's connection runtime.
pub(crate) struct Linker<T> {
    config: AmqpConfig,
    current: tokio::sync::Mutex<Option<Arc<T>>>,
    runtime: Arc<ConnectionRuntime>,
}

impl<T: Opened> Linker<T> {
    pub(crate) fn new(config: AmqpConfig, runtime: Arc<ConnectionRuntime>) -> Self {
        Self { config, current: tokio::sync::Mutex::new(None), runtime }
    }

    /// The open connection, opening one if there is none or it broke.
    pub(crate) async fn link(&self) -> Result<Arc<T>, BrokerError> {
        let mut current = self.current.lock().await;
        if let Some(link) = current.as_ref().filter(|link| link.usable()) {
            return Ok(Arc::clone(link));
        }
        let shown = redact_password(&self.config.url);
        let properties = ConnectionProperties::default().with_connection_name(T::NAME.into());
        let connection = self
            .runtime
            .connect(&self.config.connection_url(), properties)
            .await
            .map_err(|e| amqp_error(e, &format!("connecting to {shown}")))?;
        let link = Arc::new(T::open(connection, &self.config, &self.runtime).await?);
        if current.is_some() {
            tracing::info!(url = %shown, connection = T::NAME, "reconnected to RabbitMQ");
        }
        *current = Some(Arc::clone(&link));
        Ok(link)
    }

    /// Forgets `link` after `error` if it no longer works, so that the next
    /// use opens a new one.
    pub(crate) fn invalidate(&self, link: &Arc<T>, error: &BrokerError) {
        if link.usable() {
            return;
        }
        tracing::warn!(%error, connection = T::NAME, "the RabbitMQ connection or channel was lost; opening a new one on next use");
        if let Ok(mut current) = self.current.try_lock() {
            if current.as_ref().is_some_and(|c| Arc::ptr_eq(c, link)) {
                *current = None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_stay_bounded_whatever_the_reason() {
        let config = AmqpConfig::new("amqp://127.0.0.1/%2f");
        let reason = "x".repeat(200_000);
        let key = "k".repeat(10_000);
        let extra = Extra { remaining: Some(1), due: Some(1), priority: None, reason: Some((&reason, &key)) };
        let bounded = properties(&config, &extra).expect("bounded");
        let headers = bounded.headers().as_ref().expect("headers");
        assert!(header_table_bytes(headers) <= MAX_HEADER_BYTES, "{}", header_table_bytes(headers));
        let priority = Extra { priority: Some(3), ..Extra::default() };
        let error = properties_error(&config, &priority);
        assert_eq!(error.kind(), BrokerErrorKind::InvalidInput);
        assert!(properties(&config, &Extra { priority: Some(0), ..Extra::default() }).is_ok());
        let config = config.max_priority(2);
        let clamped = properties(&config, &priority).expect("priorities on");
        assert_eq!(*clamped.priority(), Some(2));
    }

    #[test]
    fn dead_letter_queues_are_capped_dropping_the_oldest() {
        let arguments = |config: &AmqpConfig| {
            let table = dead_queue_arguments(config);
            ["x-max-length", "x-max-length-bytes", "x-overflow"].map(|key| table.inner().get(key).cloned())
        };
        let defaults = arguments(&AmqpConfig::new("amqp://127.0.0.1/%2f"));
        assert_eq!(defaults[0], Some(AMQPValue::LongLongInt(50_000)));
        assert_eq!(defaults[1], Some(AMQPValue::LongLongInt(64 << 20)));
        assert_eq!(defaults[2], Some(AMQPValue::LongString("drop-head".into())));
        let capped = arguments(&AmqpConfig::new("amqp://127.0.0.1/%2f").dead_letter_caps(0, u64::MAX));
        assert_eq!(capped[0], Some(AMQPValue::LongLongInt(1)), "at least one");
        assert_eq!(capped[1], Some(AMQPValue::LongLongInt(i64::MAX)));
    }

    fn properties_error(config: &AmqpConfig, extra: &Extra<'_>) -> BrokerError {
        match properties(config, extra) {
            Ok(_) => panic!("expected an error"),
            Err(error) => error,
        }
    }
}
