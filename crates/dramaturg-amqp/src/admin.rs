//! Queue statistics, purge, returning in-flight deliveries, and dead-letter
//! listing and replay.

use std::time::{Duration, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use dramaturg_core::{BrokerError, DeadLetter, DeadLetters, InFlightScope, Protocol, QueueAdmin, QueueStats, Replay};
use lapin::options::{BasicAckOptions, BasicGetOptions, BasicPublishOptions, QueueDeclareOptions, QueuePurgeOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::Channel;
use sha2::{Digest, Sha256};

use crate::delay::{bucket_queue, MAX_BUCKET};
use crate::error::{amqp_error, is_not_found};
use crate::link::{
    declare_record, declare_topology, forget_bucket, Consuming, Link, DEAD_KEY_HEADER, PROBE_EXCHANGE, REASON_HEADER,
    RECORD_EXCHANGE,
};
use crate::names::{check_queue, short};
use crate::target::{Extra, Target};
use crate::AmqpBroker;

/// The most dead letters one `replay` looks at (and holds unacknowledged on
/// the server) before it gives up on finding a key.
pub(crate) const MAX_REPLAY_LOOKS: u64 = 100_000;

fn header_text(properties: &lapin::BasicProperties, key: &str) -> Option<String> {
    match properties.headers().as_ref()?.inner().get(key)? {
        AMQPValue::LongString(text) => Some(String::from_utf8_lossy(text.as_bytes()).into_owned()),
        AMQPValue::ShortString(text) => Some(text.as_str().to_owned()),
        _ => None,
    }
}

/// A dead letter as read: its key and reason from this broker's headers,
/// or — dead-lettered by Python Dramatiq or by RabbitMQ itself, in
/// Dramatiq's layout — its `message_id` and `options.traceback`; or, for
/// one RabbitMQ dead-lettered in the native layout (a quorum queue's
/// delivery limit), a key derived from its bytes ([`body_key`]) and
/// RabbitMQ's reason.
fn dead_letter(delivery: &lapin::message::Delivery) -> DeadLetter {
    let properties = &delivery.properties;
    DeadLetter::new(
        header_text(properties, DEAD_KEY_HEADER)
            .or_else(|| crate::dramatiq::route::message_id(&delivery.data))
            .unwrap_or_else(|| body_key(&delivery.data)),
        Bytes::from(delivery.data.clone()),
        header_text(properties, REASON_HEADER)
            .or_else(|| crate::dramatiq::route::traceback(&delivery.data))
            .unwrap_or_else(|| match header_text(properties, "x-first-death-reason") {
                // A quorum queue's delivery limit, a message's own TTL: RabbitMQ's reason.
                Some(reason) => format!("dead-lettered by RabbitMQ: {reason}"),
                None => "dead-lettered by RabbitMQ".into(),
            }),
        properties
            .timestamp()
            .or_else(|| death_time(properties))
            .map_or(UNIX_EPOCH, |t| UNIX_EPOCH + Duration::from_secs(t)),
    )
}

/// When RabbitMQ dead-lettered the message, in seconds since the Unix
/// epoch: the `time` of the latest entry of its `x-death` header, which
/// RabbitMQ adds to what it dead-letters itself (a quorum queue's
/// delivery limit, a message's own TTL).
fn death_time(properties: &lapin::BasicProperties) -> Option<u64> {
    let AMQPValue::FieldArray(deaths) = properties.headers().as_ref()?.inner().get("x-death")? else { return None };
    let AMQPValue::FieldTable(latest) = deaths.as_slice().first()? else { return None };
    match latest.inner().get("time")? {
        AMQPValue::Timestamp(seconds) => Some(*seconds),
        _ => None,
    }
}

/// The key of a dead letter that carries none: `sha256:` and the first 16
/// bytes of the SHA-256 of its message, in hex. The same bytes give the
/// same key in every process (the listing and a later replay or delete
/// agree), and the message's own id inside the bytes makes it unique.
/// The app finds such a letter by message id through its encoder
/// ([`App::find_dead_letter`](dramaturg_core::App::find_dead_letter)).
fn body_key(body: &[u8]) -> String {
    let digest = Sha256::digest(body);
    let hex: String = digest.iter().take(16).map(|byte| format!("{byte:02x}")).collect();
    format!("sha256:{hex}")
}

/// What to do with the delay buckets of a queue.
#[derive(Clone, Copy)]
enum BucketOp {
    Count,
    Purge,
}

/// The delay buckets of `queue` that exist, as far as anyone recorded:
/// those declared on this connection and those recorded (by any process)
/// as bindings of [`RECORD_EXCHANGE`]. Looked up without touching a missing
/// bucket: RabbitMQ answers a passive declare of a missing queue by closing
/// the channel, which lapin logs as an ERROR (23 of them per `stats` of a
/// queue without buckets, hundreds per `join`).
///
/// The lookup binds a private queue to [`PROBE_EXCHANGE`] and publishes one
/// probe per bucket name to the record exchange (confirmed): the probes of
/// recorded buckets reach the private queue, the others are dropped.
async fn recorded_buckets(link: &Link, queue: &str) -> Result<Vec<u32>, BrokerError> {
    let channel = link.channel().await?;
    let result = async {
        declare_record(&channel).await?;
        let inbox = crate::link::probe_inbox(&channel, PROBE_EXCHANGE, "").await?;
        // Other lookups' probes reach this queue too: ours carry a token.
        let token = dramaturg_core::MessageId::new().to_string();
        let mut confirms = Vec::new();
        for k in 0..=MAX_BUCKET {
            let body = format!("{token} {k}");
            let confirm = channel
                .basic_publish(
                    RECORD_EXCHANGE.into(),
                    short(&bucket_queue(queue, k), "queue name")?,
                    BasicPublishOptions::default(),
                    body.as_bytes(),
                    lapin::BasicProperties::default(),
                )
                .await
                .map_err(|e| amqp_error(e, "looking up delay buckets"))?;
            confirms.push(confirm);
        }
        for confirm in confirms {
            confirm.await.map_err(|e| amqp_error(e, "looking up delay buckets"))?;
        }
        let mut recorded = Vec::new();
        let no_ack = BasicGetOptions { no_ack: true };
        while let Some(probe) =
            channel.basic_get(inbox.clone(), no_ack).await.map_err(|e| amqp_error(e, "looking up delay buckets"))?
        {
            let text = String::from_utf8_lossy(&probe.delivery.data).into_owned();
            if let Some(k) = text.strip_prefix(&token).and_then(|k| k.trim().parse::<u32>().ok()) {
                recorded.push(k);
            }
        }
        Ok::<_, BrokerError>(recorded)
    }
    .await;
    let _ = channel.close(200, "done".into()).await;
    result
}

/// Counts or purges one delay bucket on a channel of its own. Only buckets
/// known to exist are looked at; one that is gone after all (deleted,
/// expired) counts as empty and is forgotten.
async fn bucket(link: &Consuming, queue: &str, k: u32, op: BucketOp) -> Result<u64, BrokerError> {
    let name = bucket_queue(queue, k);
    let channel = link.channel().await?;
    let result = match op {
        BucketOp::Count => {
            let passive = QueueDeclareOptions { passive: true, durable: true, ..QueueDeclareOptions::default() };
            channel
                .queue_declare(short(&name, "queue name")?, passive, FieldTable::default())
                .await
                .map(|q| u64::from(q.message_count()))
        }
        BucketOp::Purge => {
            channel.queue_purge(short(&name, "queue name")?, QueuePurgeOptions::default()).await.map(u64::from)
        }
    };
    match result {
        Ok(count) => {
            let _ = channel.close(200, "done".into()).await;
            Ok(count)
        }
        Err(error) if is_not_found(&error) => {
            forget_bucket(&link.channel().await?, &name).await?;
            Ok(0)
        }
        Err(error) => {
            let _ = channel.close(200, "done".into()).await;
            Err(amqp_error(error, &format!("reading delay bucket {name:?}")))
        }
    }
}

impl AmqpBroker {
    /// A channel of its own for an administrative operation: closing it
    /// returns whatever it fetched and did not acknowledge.
    /// It is on the consuming connection, which RabbitMQ does not block.
    async fn admin_channel(&self) -> Result<Channel, BrokerError> {
        self.shared.consuming_channel().await
    }

    /// Counts or purges every existing delay bucket of `queue`, all at once.
    /// The lookup of recorded buckets publishes probes, on the publishing
    /// connection and within the send timeout: while RabbitMQ blocks
    /// publishing it fails (kind `Blocked` or `Timeout`).
    async fn buckets(&self, queue: &str, op: BucketOp) -> Result<u64, BrokerError> {
        let deadline = tokio::time::Instant::now() + self.shared.config.send_timeout;
        let link = self.shared.publishing_link(deadline).await?;
        let mut existing = link.bounded(deadline, recorded_buckets(&link, queue)).await?;
        existing.extend((0..=MAX_BUCKET).filter(|&k| link.has_declared(&bucket_queue(queue, k))));
        existing.sort_unstable();
        existing.dedup();
        let consuming = self.shared.consuming.link().await?;
        let all = existing.into_iter().map(|k| bucket(&consuming, queue, k, op));
        let counts = futures_util::future::try_join_all(all).await?;
        Ok(counts.into_iter().sum())
    }

    /// Declares `queue`'s queues in the configured layout; returns its
    /// (ready, dead) counts. `channel` is used in the native layout only
    /// (Dramatiq's declares on channels of their own).
    async fn declare_for_admin(&self, channel: &Channel, queue: &str) -> Result<(u64, u64), BrokerError> {
        match self.shared.config.layout() {
            Protocol::Dramatiq => self.shared.declare_dramatiq(queue).await.map(|counts| (counts.ready, counts.dead)),
            _ => declare_topology(channel, &self.shared.config, queue).await,
        }
    }

    /// `queue`'s counts in the native layout, without the look whether it
    /// is paused (for `join`).
    async fn counts(&self, queue: &str) -> Result<QueueStats, BrokerError> {
        let channel = self.admin_channel().await?;
        let (ready, dead) = declare_topology(&channel, &self.shared.config, queue).await?;
        let _ = channel.close(200, "done".into()).await;
        let delayed = self.buckets(queue, BucketOp::Count).await?;
        // RabbitMQ does not tell unacknowledged counts over AMQP; these are
        // the deliveries of this broker's own consumers.
        Ok(QueueStats::new(ready, delayed, self.shared.in_flight(queue), dead)
            .with_in_flight_scope(InFlightScope::Process))
    }

    /// Pauses or resumes `queue` (see `pause.rs`), in the native layout.
    async fn set_paused(&self, queue: &str, paused: bool) -> Result<(), BrokerError> {
        if self.shared.config.layout() == Protocol::Dramatiq {
            return Err(BrokerError::new(
                dramaturg_core::BrokerErrorKind::Unsupported,
                "amqp: queues in Python Dramatiq's layout cannot be paused (its workers would not know)",
            ));
        }
        crate::pause::set_paused(&self.shared, queue, paused).await
    }

    /// The name of `queue`'s dead-letter queue in the configured layout.
    fn dead_queue_name(&self, queue: &str) -> String {
        self.shared.dead_target(queue).name()
    }

    /// Takes the next dead letter of `queue` (unacknowledged, on `channel`)
    /// with how many remain after it.
    async fn next_dead(
        &self,
        channel: &Channel,
        queue: &str,
    ) -> Result<Option<(lapin::message::Delivery, u32)>, BrokerError> {
        let got = channel
            .basic_get(short(&self.dead_queue_name(queue), "queue name")?, BasicGetOptions::default())
            .await
            .map_err(|e| amqp_error(e, "reading dead letters"))?;
        Ok(got.map(|message| {
            let remaining = message.message_count;
            (message.delivery, remaining)
        }))
    }
}

#[async_trait]
impl QueueAdmin for AmqpBroker {
    async fn stats(&self, queue: &str) -> Result<QueueStats, BrokerError> {
        if self.shared.config.layout() == Protocol::Dramatiq {
            return crate::dramatiq::admin::stats(&self.shared, queue).await;
        }
        let paused = crate::pause::is_paused(&self.shared, queue).await?;
        Ok(self.counts(queue).await?.with_paused(paused))
    }

    async fn pause(&self, queue: &str) -> Result<(), BrokerError> {
        self.set_paused(queue, true).await
    }

    async fn resume(&self, queue: &str) -> Result<(), BrokerError> {
        self.set_paused(queue, false).await
    }

    async fn join(&self, queue: &str, timeout: Duration) -> Result<(), BrokerError> {
        // Watch the cheap figures (the queue and this broker's own
        // deliveries) often, and the delay buckets only when they are zero.
        if self.shared.config.layout() == Protocol::Dramatiq {
            return crate::dramatiq::admin::join(&self.shared, queue, timeout).await;
        }
        check_queue(queue)?;
        let deadline = tokio::time::Instant::now() + timeout;
        let channel = self.admin_channel().await?;
        let main_arguments = crate::link::main_queue_arguments(&self.shared.config, queue);
        // A message that a bucket's TTL dead-letters back into the queue is
        // in neither for a moment, and the queue and the buckets are read
        // one after the other: drained only when two looks 100 ms apart
        // both find nothing.
        let mut empty_looks = 0;
        loop {
            let ready = crate::link::declare_one(&channel, queue, main_arguments.clone()).await?;
            let looked_at_buckets = ready == 0 && self.shared.in_flight(queue) == 0;
            if looked_at_buckets && self.counts(queue).await?.is_drained() {
                empty_looks += 1;
                if empty_looks == 2 {
                    let _ = channel.close(200, "joined".into()).await;
                    return Ok(());
                }
            } else {
                empty_looks = 0;
            }
            if tokio::time::Instant::now() >= deadline {
                let _ = channel.close(200, "timed out".into()).await;
                return Err(BrokerError::join_timeout(queue, timeout));
            }
            // Counting the buckets opens a channel per bucket: while only
            // delayed messages remain, look less often.
            let pause = if looked_at_buckets { 100 } else { 20 };
            tokio::time::sleep(Duration::from_millis(pause)).await;
        }
    }

    async fn purge(&self, queue: &str) -> Result<u64, BrokerError> {
        if self.shared.config.layout() == Protocol::Dramatiq {
            return crate::dramatiq::admin::purge(&self.shared, queue).await;
        }
        let channel = self.admin_channel().await?;
        declare_topology(&channel, &self.shared.config, queue).await?;
        let ready = channel
            .queue_purge(short(queue, "queue name")?, QueuePurgeOptions::default())
            .await
            .map_err(|e| amqp_error(e, "purge"))?;
        let _ = channel.close(200, "done".into()).await;
        Ok(u64::from(ready) + self.buckets(queue, BucketOp::Purge).await?)
    }

    /// Returns the unsettled deliveries of **this broker value's own**
    /// consumers of `queue` by closing their channels (RabbitMQ then
    /// redelivers them, marked redelivered, and the consumers subscribe
    /// again on new channels). Deliveries held by other processes are the
    /// server's to return: RabbitMQ does so when their connection or channel
    /// closes, and offers no way to take them from a live consumer.
    async fn requeue_in_flight(&self, queue: &str) -> Result<u64, BrokerError> {
        check_queue(queue)?;
        let mut returned = 0;
        for generation in self.shared.generations(queue) {
            returned += generation.lapse().await?;
        }
        Ok(returned)
    }
}

#[async_trait]
impl DeadLetters for AmqpBroker {
    async fn list(&self, queue: &str, limit: usize) -> Result<Vec<DeadLetter>, BrokerError> {
        self.page(queue, 0, limit).await
    }

    /// Streams past the first `offset` dead letters (one in memory at a
    /// time), then keeps up to `limit`; all of them stay unacknowledged
    /// until the channel closes, which returns them in order.
    async fn page(&self, queue: &str, offset: usize, limit: usize) -> Result<Vec<DeadLetter>, BrokerError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let channel = self.admin_channel().await?;
        self.declare_for_admin(&channel, queue).await?;
        let mut letters = Vec::new();
        let mut skipped = 0;
        while letters.len() < limit {
            let Some((delivery, remaining)) = self.next_dead(&channel, queue).await? else { break };
            if skipped < offset {
                skipped += 1;
            } else {
                letters.push(dead_letter(&delivery));
            }
            if remaining == 0 {
                break;
            }
        }
        // Closing the channel returns them all, in order.
        let _ = channel.close(200, "listed".into()).await;
        Ok(letters)
    }

    /// Streams the dead-letter queue: one message in memory at a time. A
    /// replayed message is published to `queue` (confirmed) and then
    /// acknowledged; the others stay unacknowledged on the channel until it
    /// closes, which returns them in order. It looks at no more messages
    /// than the dead-letter queue held when it started (so replayed
    /// messages that fail again are not replayed twice), and at most
    /// 100,000 when looking for one key.
    async fn replay(&self, queue: &str, which: Replay) -> Result<u64, BrokerError> {
        let only = match &which {
            Replay::One(key) => Some(key.as_str()),
            _ => None,
        };
        self.take_dead(queue, only, Take::Replay).await
    }

    /// Streams the dead-letter queue as `replay` does and acknowledges the
    /// wanted dead letters without publishing them. An unknown key (the
    /// empty one included) deletes nothing.
    async fn delete(&self, queue: &str, which: Replay) -> Result<u64, BrokerError> {
        let only = match &which {
            Replay::One(key) if key.is_empty() => {
                check_queue(queue)?;
                return Ok(0);
            }
            Replay::One(key) => Some(key.as_str()),
            _ => None,
        };
        self.take_dead(queue, only, Take::Delete).await
    }
}

/// What [`AmqpBroker::take_dead`] does with the dead letters it takes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Take {
    /// Publish to the queue (confirmed), then acknowledge.
    Replay,
    /// Acknowledge only: the dead letter is gone.
    Delete,
}

impl AmqpBroker {
    /// Streams `queue`'s dead letters one at a time and takes the one with
    /// key `only` (or all of them): one message in memory at a time; the
    /// others stay unacknowledged on the channel until it closes, which
    /// returns them in order. Looks at no more messages than the
    /// dead-letter queue held when it started, and at most
    /// [`MAX_REPLAY_LOOKS`] when looking for one key. Returns how many it
    /// took.
    async fn take_dead(&self, queue: &str, only: Option<&str>, take: Take) -> Result<u64, BrokerError> {
        let channel = self.admin_channel().await?;
        let (_, dead) = self.declare_for_admin(&channel, queue).await?;
        let looks = if only.is_some() { dead.min(MAX_REPLAY_LOOKS) } else { dead };
        let mut taken = 0;
        let result = async {
            for _ in 0..looks {
                let Some((delivery, remaining)) = self.next_dead(&channel, queue).await? else { break };
                let wanted = only.is_none_or(|key| dead_letter(&delivery).key == key);
                if wanted {
                    let tag = delivery.delivery_tag;
                    if take == Take::Replay {
                        let body = Bytes::from(delivery.data);
                        self.shared.publish_to(Target::Queue(queue), &body, Extra::default()).await?;
                    }
                    channel
                        .basic_ack(tag, BasicAckOptions::default())
                        .await
                        .map_err(|e| amqp_error(e, "taking a dead letter"))?;
                    taken += 1;
                    if only.is_some() {
                        break;
                    }
                }
                if remaining == 0 {
                    break;
                }
            }
            Ok::<_, BrokerError>(())
        }
        .await;
        let _ = channel.close(200, "done".into()).await;
        result.map(|()| taken)
    }
}
