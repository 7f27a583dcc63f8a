//! Queue statistics, purge, and dead-letter listing and replay.

use std::time::{Duration, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use dramaturg_core::{BrokerError, DeadLetter, DeadLetters, QueueAdmin, QueueStats, Replay};
use lapin::options::{BasicAckOptions, BasicGetOptions, QueuePurgeOptions};
use lapin::types::AMQPValue;
use lapin::Channel;

use crate::delay::{bucket_queue, MAX_BUCKET};
use crate::link::{amqp_error, dead_queue, declare_topology, Extra, DEAD_KEY_HEADER, REASON_HEADER};
use crate::AmqpBroker;

fn header_text(properties: &lapin::BasicProperties, key: &str) -> Option<String> {
    match properties.headers().as_ref()?.inner().get(key)? {
        AMQPValue::LongString(text) => Some(String::from_utf8_lossy(text.as_bytes()).into_owned()),
        AMQPValue::ShortString(text) => Some(text.as_str().to_owned()),
        _ => None,
    }
}

impl AmqpBroker {
    /// A channel of its own for an administrative operation: closing it
    /// returns whatever it fetched and did not acknowledge.
    async fn admin_channel(&self) -> Result<Channel, BrokerError> {
        self.shared.linker.link().await?.channel().await
    }

    /// Fetches dead letters of `queue` until `stop` says so or none is left.
    async fn fetch_dead(
        &self,
        channel: &Channel,
        queue: &str,
        mut keep: impl FnMut(&DeadLetter) -> bool,
    ) -> Result<Vec<(u64, DeadLetter)>, BrokerError> {
        let mut fetched = Vec::new();
        loop {
            let got = channel
                .basic_get(dead_queue(queue).into(), BasicGetOptions::default())
                .await
                .map_err(|e| amqp_error(e, "reading dead letters"))?;
            let Some(message) = got else { return Ok(fetched) };
            let delivery = message.delivery;
            let properties = &delivery.properties;
            let letter = DeadLetter::new(
                header_text(properties, DEAD_KEY_HEADER).unwrap_or_default(),
                Bytes::from(delivery.data.clone()),
                header_text(properties, REASON_HEADER).unwrap_or_else(|| "dead-lettered by RabbitMQ".into()),
                properties.timestamp().map_or(UNIX_EPOCH, |t| UNIX_EPOCH + Duration::from_secs(t)),
            );
            let go_on = keep(&letter);
            fetched.push((delivery.delivery_tag, letter));
            if !go_on || message.message_count == 0 {
                return Ok(fetched);
            }
        }
    }
}

#[async_trait]
impl QueueAdmin for AmqpBroker {
    async fn stats(&self, queue: &str) -> Result<QueueStats, BrokerError> {
        let channel = self.admin_channel().await?;
        let (ready, delayed, dead) = declare_topology(&channel, &self.shared.config, queue).await?;
        let _ = channel.close(200, "done".into()).await;
        // RabbitMQ does not tell unacknowledged counts over AMQP; these are
        // the deliveries of this broker's own consumers.
        Ok(QueueStats::new(ready, delayed, self.shared.in_flight(queue), dead))
    }

    async fn join(&self, queue: &str, timeout: Duration) -> Result<(), BrokerError> {
        // Watch the cheap figures (the queue and this broker's own
        // deliveries) often, and the whole topology only when they are zero:
        // declaring every delay bucket on each look would load the server.
        let deadline = tokio::time::Instant::now() + timeout;
        let channel = self.admin_channel().await?;
        let main_arguments = crate::link::main_queue_arguments(&self.shared.config, queue);
        loop {
            let ready = crate::link::declare_one(&channel, queue, main_arguments.clone()).await?;
            if ready == 0 && self.shared.in_flight(queue) == 0 && self.stats(queue).await?.is_drained() {
                let _ = channel.close(200, "joined".into()).await;
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                let _ = channel.close(200, "timed out".into()).await;
                return Err(BrokerError::join_timeout(queue, timeout));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn purge(&self, queue: &str) -> Result<u64, BrokerError> {
        let channel = self.admin_channel().await?;
        declare_topology(&channel, &self.shared.config, queue).await?;
        let mut purged = 0u64;
        let names = std::iter::once(queue.to_owned()).chain((0..=MAX_BUCKET).map(|k| bucket_queue(queue, k)));
        for name in names {
            purged += u64::from(
                channel
                    .queue_purge(name.as_str().into(), QueuePurgeOptions::default())
                    .await
                    .map_err(|e| amqp_error(e, "purge"))?,
            );
        }
        let _ = channel.close(200, "done".into()).await;
        Ok(purged)
    }
}

#[async_trait]
impl DeadLetters for AmqpBroker {
    async fn list(&self, queue: &str, limit: usize) -> Result<Vec<DeadLetter>, BrokerError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let channel = self.admin_channel().await?;
        declare_topology(&channel, &self.shared.config, queue).await?;
        let mut seen = 0;
        let fetched = self
            .fetch_dead(&channel, queue, |_| {
                seen += 1;
                seen < limit
            })
            .await?;
        // Closing the channel returns them all, in order.
        let _ = channel.close(200, "listed".into()).await;
        Ok(fetched.into_iter().map(|(_, letter)| letter).collect())
    }

    async fn replay(&self, queue: &str, which: Replay) -> Result<u64, BrokerError> {
        let channel = self.admin_channel().await?;
        declare_topology(&channel, &self.shared.config, queue).await?;
        let wanted = match &which {
            Replay::One(key) => Some(key.clone()),
            _ => None,
        };
        let fetched =
            self.fetch_dead(&channel, queue, |letter| wanted.as_ref().is_none_or(|key| letter.key != *key)).await?;
        let link = self.shared.linker.link().await?;
        let mut replayed = 0;
        for (tag, letter) in fetched {
            if wanted.as_ref().is_some_and(|key| letter.key != *key) {
                continue;
            }
            link.publish(queue, &letter.body, Extra::default()).await?;
            channel.basic_ack(tag, BasicAckOptions::default()).await.map_err(|e| amqp_error(e, "replay"))?;
            replayed += 1;
        }
        let _ = channel.close(200, "replayed".into()).await;
        Ok(replayed)
    }
}
