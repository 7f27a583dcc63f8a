//! The queues of Dramatiq's layout: for a queue `q`, the durable classic
//! queues `q` and `q.DQ` (both dead-lettering through the default exchange
//! to `q.XQ`, with `x-max-priority` when a max priority is configured) and
//! `q.XQ` (only `x-message-ttl`, Dramatiq's `dead_message_ttl`), exactly as
//! Dramatiq's `RabbitmqBroker` declares them.
//!
//! RabbitMQ refuses a declaration whose arguments differ from the existing
//! queue's, and Python may have declared the queues with other settings
//! (another `max_priority`, another `dead_message_ttl`). So each queue is
//! declared passively first — which succeeds whatever its arguments — and
//! for real only when it is missing. A passive declare of a missing queue
//! closes its channel (404), so declarations run on channels of their own,
//! never on a publisher or consumer channel.

use dramaturg_core::dramatiq::{dead_letter_queue, delay_queue};
use dramaturg_core::BrokerError;
use lapin::options::QueueDeclareOptions;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection};

use crate::error::amqp_error;
use crate::error::is_not_found;
use crate::names::{check_queue, short};
use crate::AmqpConfig;

/// Messages ready in each of a queue's three queues.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Counts {
    /// Ready in `q`.
    pub(crate) ready: u64,
    /// Ready in `q.DQ` (not counting deliveries held by consumers).
    pub(crate) delayed: u64,
    /// In `q.XQ`.
    pub(crate) dead: u64,
}

/// The arguments of `q` and `q.DQ`: dead letters to `q.XQ` through the
/// default exchange, and `x-max-priority` when configured.
pub(crate) fn queue_arguments(config: &AmqpConfig, queue: &str) -> FieldTable {
    let mut table = FieldTable::default();
    table.insert("x-dead-letter-exchange".into(), AMQPValue::LongString("".into()));
    table.insert("x-dead-letter-routing-key".into(), AMQPValue::LongString(dead_letter_queue(queue).into()));
    if let Some(max) = config.max_priority {
        table.insert("x-max-priority".into(), AMQPValue::ShortShortUInt(max));
    }
    table
}

/// The arguments of `q.XQ`: only the time dead letters are kept.
pub(crate) fn dead_queue_arguments(config: &AmqpConfig) -> FieldTable {
    let mut table = FieldTable::default();
    let ttl = crate::delay::millis(config.dead_letter_ttl);
    table.insert("x-message-ttl".into(), AMQPValue::LongLongInt(i64::try_from(ttl).unwrap_or(i64::MAX)));
    table
}

/// Makes sure `q`, `q.DQ` and `q.XQ` exist, using them as they are if
/// they do; returns their counts of ready messages.
///
/// # Errors
///
/// A [`BrokerError`] when the server cannot be reached or refuses (for
/// lack of permissions).
pub(crate) async fn declare(connection: &Connection, config: &AmqpConfig, queue: &str) -> Result<Counts, BrokerError> {
    check_queue(queue)?;
    let mut channel = open(connection).await?;
    let result = async {
        let ready = ensure(connection, &mut channel, queue, queue_arguments(config, queue)).await?;
        let delayed = ensure(connection, &mut channel, &delay_queue(queue), queue_arguments(config, queue)).await?;
        let dead = ensure(connection, &mut channel, &dead_letter_queue(queue), dead_queue_arguments(config)).await?;
        Ok(Counts { ready, delayed, dead })
    }
    .await;
    if channel.status().connected() {
        let _ = channel.close(200, "declared".into()).await;
    }
    result
}

async fn open(connection: &Connection) -> Result<Channel, BrokerError> {
    connection.create_channel().await.map_err(|e| amqp_error(e, "opening a channel"))
}

/// Declares `name` passively and, if it is missing, for real with
/// `arguments`; `channel` is replaced by a new one whenever RabbitMQ closed
/// it. Returns its count of ready messages.
async fn ensure(
    connection: &Connection,
    channel: &mut Channel,
    name: &str,
    arguments: FieldTable,
) -> Result<u64, BrokerError> {
    let passive = QueueDeclareOptions { passive: true, durable: true, ..QueueDeclareOptions::default() };
    let durable = QueueDeclareOptions { durable: true, ..QueueDeclareOptions::default() };
    // Twice at most: another client may create the queue, with other
    // arguments, between our passive look and our declaration (406), and
    // then the second passive look finds it.
    let mut last = None;
    for _ in 0..2 {
        if !channel.status().connected() {
            *channel = open(connection).await?;
        }
        match channel.queue_declare(short(name, "queue name")?, passive, FieldTable::default()).await {
            Ok(found) => return Ok(u64::from(found.message_count())),
            Err(error) if is_not_found(&error) => {}
            Err(error) => return Err(amqp_error(error, &format!("looking up queue {name:?}"))),
        }
        *channel = open(connection).await?;
        match channel.queue_declare(short(name, "queue name")?, durable, arguments.clone()).await {
            Ok(created) => return Ok(u64::from(created.message_count())),
            Err(error) => last = Some(error),
        }
    }
    let error = last.map_or_else(
        || BrokerError::new(dramaturg_core::BrokerErrorKind::Other, format!("amqp: could not declare {name:?}")),
        |error| amqp_error(error, &format!("declaring queue {name:?}")),
    );
    Err(error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_are_dramatiqs() {
        let config = AmqpConfig::new("amqp://127.0.0.1/%2f").expire_unused_queues(std::time::Duration::from_secs(5));
        let main = queue_arguments(&config, "default");
        assert_eq!(main.inner().len(), 2, "no x-expires, no x-max-priority: {main:?}");
        assert_eq!(main.inner().get("x-dead-letter-routing-key"), Some(&AMQPValue::LongString("default.XQ".into())));
        let dead = dead_queue_arguments(&config);
        assert_eq!(dead.inner().len(), 1, "{dead:?}");
        assert_eq!(dead.inner().get("x-message-ttl"), Some(&AMQPValue::LongLongInt(604_800_000)));
        let with_priorities = queue_arguments(&config.max_priority(10), "default");
        assert_eq!(with_priorities.inner().get("x-max-priority"), Some(&AMQPValue::ShortShortUInt(10)));
    }
}
