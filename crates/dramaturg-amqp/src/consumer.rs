//! Consuming a queue: prefetch through `basic.qos`, delay hops, settlement,
//! recovery, and `consumer_timeout`.

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use bytes::Bytes;
use dramaturg_core::{
    BrokerError, BrokerErrorKind, Consumer, Delivery, MessageId, Outgoing, Receipt, Settled, Settlement,
};
use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::Channel;

use crate::delay::{bucket_for, bucket_queue, DUE_HEADER};
use crate::link::{amqp_error, dead_queue, declare_topology, now_ms, Extra};
use crate::{fingerprint, Outstanding, Shared};

/// An open subscription: its channel, its stream, its unsettled deliveries.
struct Subscription {
    channel: Channel,
    stream: lapin::Consumer,
    tag: String,
    outstanding: Outstanding,
}

pub(crate) struct AmqpConsumer {
    shared: Arc<Shared>,
    queue: String,
    prefetch: u16,
    subscription: Option<Subscription>,
}

impl AmqpConsumer {
    pub(crate) async fn open(shared: Arc<Shared>, queue: &str, prefetch: usize) -> Result<Self, BrokerError> {
        let prefetch = u16::try_from(prefetch.max(1)).unwrap_or(u16::MAX);
        let mut consumer = Self { shared, queue: queue.to_owned(), prefetch, subscription: None };
        consumer.subscribe().await?;
        Ok(consumer)
    }

    async fn subscribe(&mut self) -> Result<&mut Subscription, BrokerError> {
        if self.subscription.is_none() {
            let link = self.shared.linker.link().await?;
            let channel = link.channel().await?;
            declare_topology(&channel, &self.shared.config, &self.queue).await?;
            channel
                .basic_qos(self.prefetch, BasicQosOptions::default())
                .await
                .map_err(|e| amqp_error(e, "setting the prefetch"))?;
            let tag = format!("dramaturg-{}", MessageId::new());
            let stream = channel
                .basic_consume(
                    self.queue.as_str().into(),
                    tag.as_str().into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map_err(|e| amqp_error(e, "consuming"))?;
            let outstanding = Outstanding::default();
            self.shared.track(&self.queue, &outstanding);
            self.subscription = Some(Subscription { channel, stream, tag, outstanding });
        }
        Ok(self.subscription.as_mut().expect("subscribed just above"))
    }

    /// Handles the loss of the subscription: logs why, remembers a message
    /// that ran into `consumer_timeout`, and lets the next call subscribe again.
    fn lost(&mut self, error: BrokerError) -> BrokerError {
        if let Some(subscription) = self.subscription.take() {
            let text = error.to_string();
            if text.contains("acknowledgement") && text.contains("timed out") {
                let mut outstanding = Shared::lock(&subscription.outstanding);
                if let Some((_, (overdue, since))) = outstanding.iter().min_by_key(|(_, (_, since))| *since) {
                    self.shared.remember_overdue(fingerprint(overdue));
                    tracing::error!(
                        queue = %self.queue,
                        running_for = ?since.elapsed(),
                        "RabbitMQ closed the channel because a message was not acknowledged within its \
                         consumer_timeout (rabbitmq.conf, 30 minutes by default). The message goes back to the \
                         queue and would run into the same timeout again, so it will be dead-lettered when it \
                         returns. Fix: raise consumer_timeout above your longest job, or give the actor a \
                         time_limit below it."
                    );
                }
                outstanding.clear();
            } else {
                Shared::lock(&subscription.outstanding).clear();
            }
        }
        error
    }

    /// Moves a message that came back from a delay bucket before its due
    /// time on to the next bucket. Returns false if it is due.
    async fn hop(&self, channel: &Channel, delivery: &lapin::message::Delivery) -> Result<bool, BrokerError> {
        let Some(due) = due_time(&delivery.properties) else { return Ok(false) };
        let Some(k) = bucket_for(due.saturating_sub(now_ms())) else { return Ok(false) };
        let link = self.shared.linker.link().await?;
        let priority = delivery.properties.priority().as_ref().copied();
        link.publish(&bucket_queue(&self.queue, k), &delivery.data, Extra { due: Some(due), priority, reason: None })
            .await?;
        channel
            .basic_ack(delivery.delivery_tag, BasicAckOptions::default())
            .await
            .map_err(|e| amqp_error(e, "acknowledging a delay hop"))?;
        Ok(true)
    }
}

fn due_time(properties: &lapin::BasicProperties) -> Option<u64> {
    let headers = properties.headers().as_ref()?;
    match headers.inner().get(DUE_HEADER)? {
        AMQPValue::LongLongInt(due) => u64::try_from(*due).ok(),
        _ => None,
    }
}

#[async_trait]
impl Consumer for AmqpConsumer {
    async fn next(&mut self) -> Result<Delivery, BrokerError> {
        loop {
            let subscription = self.subscribe().await?;
            let next = subscription.stream.next().await;
            let channel = subscription.channel.clone();
            let outstanding = Arc::clone(&subscription.outstanding);
            let delivery = match next {
                Some(Ok(delivery)) => delivery,
                Some(Err(error)) => return Err(self.lost(amqp_error(error, "consuming"))),
                None => {
                    let closed = BrokerError::new(
                        BrokerErrorKind::Connection,
                        "amqp: the consumer was cancelled or its channel closed",
                    );
                    return Err(self.lost(closed));
                }
            };
            if self.hop(&channel, &delivery).await? {
                continue;
            }
            let receipt = AmqpReceipt {
                shared: Arc::clone(&self.shared),
                channel,
                queue: self.queue.clone(),
                tag: delivery.delivery_tag,
                body: Bytes::from(delivery.data),
                outstanding,
            };
            Shared::lock(&receipt.outstanding).insert(receipt.tag, (receipt.body.clone(), Instant::now()));
            if delivery.redelivered && self.shared.is_overdue(&receipt.body) {
                let reason = "the message ran longer than RabbitMQ's consumer_timeout and would again; raise \
                              consumer_timeout or set a shorter time_limit"
                    .to_owned();
                tracing::error!(queue = %self.queue, "dead-lettering a message that exceeded consumer_timeout");
                receipt.settle(&Settlement::DeadLetter(reason.into())).await?;
                continue;
            }
            let body = receipt.body.clone();
            return Ok(Delivery::new(body, delivery.redelivered, Box::new(receipt)));
        }
    }

    async fn close(mut self: Box<Self>) -> Result<(), BrokerError> {
        let Some(mut subscription) = self.subscription.take() else { return Ok(()) };
        subscription
            .channel
            .basic_cancel(subscription.tag.as_str().into(), BasicCancelOptions::default())
            .await
            .map_err(|e| amqp_error(e, "cancelling the consumer"))?;
        // Deliveries that arrived but were not handed out go back now; the
        // channel stays open for the ones still running.
        while let Some(Some(Ok(delivery))) = futures_util::FutureExt::now_or_never(subscription.stream.next()) {
            let requeue = BasicNackOptions { requeue: true, ..BasicNackOptions::default() };
            subscription
                .channel
                .basic_nack(delivery.delivery_tag, requeue)
                .await
                .map_err(|e| amqp_error(e, "returning a prefetched message"))?;
        }
        Ok(())
    }
}

/// Settles one delivery on the channel it came from.
struct AmqpReceipt {
    shared: Arc<Shared>,
    channel: Channel,
    queue: String,
    tag: u64,
    body: Bytes,
    outstanding: Outstanding,
}

impl std::fmt::Debug for AmqpReceipt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmqpReceipt").field("queue", &self.queue).field("tag", &self.tag).finish()
    }
}

#[async_trait]
impl Receipt for AmqpReceipt {
    async fn settle(&self, settlement: &Settlement) -> Result<Settled, BrokerError> {
        // A delivery tag belongs to its channel: once the channel is closed,
        // RabbitMQ has returned the message to the queue for another
        // consumer, and nothing done here may touch it.
        if !self.channel.status().connected() {
            Shared::lock(&self.outstanding).remove(&self.tag);
            return Ok(Settled::Stale);
        }
        let result = match settlement {
            Settlement::Ack => self
                .channel
                .basic_ack(self.tag, BasicAckOptions::default())
                .await
                .map_err(|e| amqp_error(e, "acknowledging")),
            Settlement::DeadLetter(reason) => {
                // The dead letter is confirmed before the original is
                // acknowledged: a crash in between duplicates, never loses.
                let link = self.shared.linker.link().await?;
                let key = MessageId::new().to_string();
                let extra = Extra { due: None, priority: None, reason: Some((reason, &key)) };
                match link.publish(&dead_queue(&self.queue), &self.body, extra).await {
                    Ok(()) => self.ack_after_publish().await,
                    Err(error) => Err(error),
                }
            }
            Settlement::Requeue => {
                let requeue = BasicNackOptions { requeue: true, ..BasicNackOptions::default() };
                self.channel.basic_nack(self.tag, requeue).await.map_err(|e| amqp_error(e, "requeueing"))
            }
            Settlement::Reschedule { body, delay } => {
                // The new attempt is confirmed before the original is
                // acknowledged: a crash in between duplicates, never loses.
                let next = Outgoing::new(self.queue.as_str(), body.clone()).with_delay(Some(*delay));
                match self.shared.publish(&next).await {
                    Ok(()) => self.ack_after_publish().await,
                    Err(error) => Err(error),
                }
            }
            other => Err(BrokerError::new(BrokerErrorKind::Unsupported, format!("unknown settlement {other:?}"))),
        };
        if result.is_ok() {
            Shared::lock(&self.outstanding).remove(&self.tag);
        }
        result.map(|()| Settled::Applied)
    }
}

impl AmqpReceipt {
    /// Acknowledges the original after its replacement was published.
    async fn ack_after_publish(&self) -> Result<(), BrokerError> {
        self.channel.basic_ack(self.tag, BasicAckOptions::default()).await.map_err(|e| amqp_error(e, "acknowledging"))
    }
}

impl Drop for AmqpReceipt {
    fn drop(&mut self) {
        Shared::lock(&self.outstanding).remove(&self.tag);
    }
}
