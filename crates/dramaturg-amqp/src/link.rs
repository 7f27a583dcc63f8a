//! The connection: opened on demand, opened again after a loss, with a
//! publisher channel (confirms on) and the queues declared on it.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use dramaturg_core::broker::redact_password;
pub(crate) use dramaturg_core::now_ms;
use dramaturg_core::{BrokerError, BrokerErrorKind};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ErrorKind};

use crate::delay::{bucket_queue, bucket_ttl_ms, DUE_HEADER, MAX_BUCKET};
use crate::{AmqpConfig, Shared};

/// The header holding a dead letter's reason.
pub(crate) const REASON_HEADER: &str = "x-dramaturg-reason";
/// The header holding a dead letter's key (for replay).
pub(crate) const DEAD_KEY_HEADER: &str = "x-dramaturg-dead-key";

/// A lapin error as a [`BrokerError`], classified, without the URL.
pub(crate) fn amqp_error(error: lapin::Error, what: &str) -> BrokerError {
    let kind = match error.kind() {
        ErrorKind::IOError(_)
        | ErrorKind::InvalidConnectionState(_)
        | ErrorKind::InvalidChannelState(..)
        | ErrorKind::MissingHeartbeatError
        | ErrorKind::InvalidChannel(_) => BrokerErrorKind::Connection,
        ErrorKind::ProtocolError(_) => BrokerErrorKind::Protocol,
        _ => BrokerErrorKind::Other,
    };
    BrokerError::new(kind, format!("amqp: {what} failed: {error}")).with_source(error)
}

/// Extra properties of a published message.
#[derive(Debug, Default)]
pub(crate) struct Extra<'a> {
    pub(crate) due: Option<u64>,
    pub(crate) priority: Option<u8>,
    pub(crate) reason: Option<(&'a str, &'a str)>,
}

/// One open connection with its publisher channel.
pub(crate) struct Link {
    pub(crate) connection: Connection,
    publisher: Channel,
    config: AmqpConfig,
    declared: Mutex<HashSet<String>>,
}

impl Link {
    fn usable(&self) -> bool {
        self.connection.status().connected() && self.publisher.status().connected()
    }

    /// A new channel on this connection.
    pub(crate) async fn channel(&self) -> Result<Channel, BrokerError> {
        self.connection.create_channel().await.map_err(|e| amqp_error(e, "opening a channel"))
    }

    /// Declares `queue`, its dead-letter queue and its delay buckets, once
    /// per connection.
    pub(crate) async fn declare(&self, queue: &str) -> Result<(), BrokerError> {
        if Shared::lock(&self.declared).contains(queue) {
            return Ok(());
        }
        declare_topology(&self.publisher, &self.config, queue).await?;
        Shared::lock(&self.declared).insert(queue.to_owned());
        Ok(())
    }

    /// Publishes to the default exchange and waits for the confirm.
    pub(crate) async fn publish(&self, routing_key: &str, body: &[u8], extra: Extra<'_>) -> Result<(), BrokerError> {
        let mut headers = FieldTable::default();
        if let Some(due) = extra.due {
            headers.insert(DUE_HEADER.into(), AMQPValue::LongLongInt(i64::try_from(due).unwrap_or(i64::MAX)));
        }
        if let Some((reason, key)) = extra.reason {
            headers.insert(REASON_HEADER.into(), AMQPValue::LongString(reason.into()));
            headers.insert(DEAD_KEY_HEADER.into(), AMQPValue::LongString(key.into()));
        }
        let mut properties = BasicProperties::default().with_delivery_mode(2).with_headers(headers);
        if extra.reason.is_some() {
            properties = properties.with_timestamp(now_ms() / 1000);
        }
        if let (Some(priority), Some(max)) = (extra.priority, self.config.max_priority) {
            properties = properties.with_priority(priority.min(max));
        }
        let confirm = self
            .publisher
            .basic_publish("".into(), routing_key.into(), BasicPublishOptions::default(), body, properties)
            .await
            .map_err(|e| amqp_error(e, "publish"))?;
        let confirmation = confirm.await.map_err(|e| amqp_error(e, "publisher confirm"))?;
        if confirmation.is_nack() {
            return Err(BrokerError::new(BrokerErrorKind::Protocol, "amqp: RabbitMQ refused the message (nack)"));
        }
        Ok(())
    }
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
    table(config, &entries)
}

/// The arguments of a queue's dead-letter queue.
pub(crate) fn dead_queue_arguments(config: &AmqpConfig) -> FieldTable {
    table(config, &[("x-message-ttl", long(crate::delay::millis(config.dead_letter_ttl)))])
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

/// The name of `queue`'s dead-letter queue.
pub(crate) fn dead_queue(queue: &str) -> String {
    format!("{queue}.dq")
}

/// Declares (or re-declares, returning message counts) one durable queue.
pub(crate) async fn declare_one(channel: &Channel, name: &str, arguments: FieldTable) -> Result<u32, BrokerError> {
    let options = QueueDeclareOptions { durable: true, ..QueueDeclareOptions::default() };
    let queue = channel
        .queue_declare(name.into(), options, arguments)
        .await
        .map_err(|e| amqp_error(e, &format!("declaring queue {name:?}")))?;
    Ok(queue.message_count())
}

/// Declares a queue's whole topology; returns (ready, delayed, dead) counts.
pub(crate) async fn declare_topology(
    channel: &Channel,
    config: &AmqpConfig,
    queue: &str,
) -> Result<(u64, u64, u64), BrokerError> {
    let dead = declare_one(channel, &dead_queue(queue), dead_queue_arguments(config)).await?;
    let ready = declare_one(channel, queue, main_queue_arguments(config, queue)).await?;
    let mut delayed = 0u64;
    for k in 0..=MAX_BUCKET {
        delayed += u64::from(declare_one(channel, &bucket_queue(queue, k), bucket_arguments(config, queue, k)).await?);
    }
    Ok((u64::from(ready), delayed, u64::from(dead)))
}

/// Opens links on demand and again after a loss.
pub(crate) struct Linker {
    config: AmqpConfig,
    current: tokio::sync::Mutex<Option<Arc<Link>>>,
}

impl Linker {
    pub(crate) fn new(config: AmqpConfig) -> Self {
        Self { config, current: tokio::sync::Mutex::new(None) }
    }

    /// The open link, opening one if there is none or it broke.
    pub(crate) async fn link(&self) -> Result<Arc<Link>, BrokerError> {
        let mut current = self.current.lock().await;
        if let Some(link) = current.as_ref().filter(|link| link.usable()) {
            return Ok(Arc::clone(link));
        }
        let shown = redact_password(&self.config.url);
        let properties = ConnectionProperties::default().with_connection_name("dramaturg".into());
        let connection = Connection::connect(&self.config.url, properties)
            .await
            .map_err(|e| amqp_error(e, &format!("connecting to {shown}")))?;
        let publisher = connection.create_channel().await.map_err(|e| amqp_error(e, "opening a channel"))?;
        if self.config.confirms {
            publisher
                .confirm_select(ConfirmSelectOptions::default())
                .await
                .map_err(|e| amqp_error(e, "enabling publisher confirms"))?;
        }
        if current.is_some() {
            tracing::info!(url = %shown, "reconnected to RabbitMQ");
        }
        let link = Arc::new(Link { connection, publisher, config: self.config.clone(), declared: Mutex::default() });
        *current = Some(Arc::clone(&link));
        Ok(link)
    }

    /// Forgets `link` after `error` if it no longer works, so that the next
    /// use opens a new one.
    pub(crate) fn invalidate(&self, link: &Arc<Link>, error: &BrokerError) {
        if link.usable() {
            return;
        }
        tracing::warn!(%error, "the RabbitMQ connection or channel was lost; opening a new one on next use");
        if let Ok(mut current) = self.current.try_lock() {
            if current.as_ref().is_some_and(|c| Arc::ptr_eq(c, link)) {
                *current = None;
            }
        }
    }
}
