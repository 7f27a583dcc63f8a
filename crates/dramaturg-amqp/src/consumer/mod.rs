//! Consuming a queue: prefetch through `basic.qos`, delay hops, settlement,
//! recovery, and `consumer_timeout`.
//!
//! Each subscription runs on a channel of its own, and that channel is the
//! claim of its deliveries: a delivery tag means something only on the
//! channel it came from, and when that channel closes RabbitMQ returns
//! every unacknowledged delivery of it to the queue. A [`Generation`] is one
//! such channel; its receipts settle only while it is current, behind a
//! fence that `requeue_in_flight` takes exclusively to close it.
//!
//! In Dramatiq's layout, [`mover`] consumes `q.DQ` beside `q` and moves
//! each delayed message to `q` when it falls due.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use bytes::Bytes;
use dramaturg_core::{
    BrokerError, BrokerErrorKind, Consumer, Delivery, MessageId, Outgoing, Protocol, Receipt, Settled, Settlement,
};
use futures_util::StreamExt;
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::Channel;

use crate::delay::{header_u64, next_hop, DUE_HEADER, REMAINING_HEADER};
use crate::error::amqp_error;
use crate::link::{declare_topology, Link};
use crate::target::{Extra, Target};
use crate::{fingerprint, OutstandingMap, Shared};
use dramaturg_core::now_ms;

mod acks;
mod mover;

/// One consumer channel: the claim of every delivery it received.
pub(crate) struct Generation {
    pub(crate) channel: Channel,
    /// Where the channel's acks go, coalesced.
    acks: acks::Acks,
    /// Deliveries handed out and not settled.
    outstanding: OutstandingMap,
    /// Deliveries received and not handed out yet: delay hops in progress
    /// (see [`Triaging`]).
    triaging: AtomicU64,
    /// Set once the channel's deliveries went back to the queue (closed by
    /// `requeue_in_flight` or lost); from then on its receipts are stale.
    lapsed: AtomicBool,
    /// Settlements hold it shared for their whole duration; lapsing takes
    /// it exclusively, so no settlement is half done when the channel
    /// closes, and none starts on a lapsed channel.
    pub(crate) fence: tokio::sync::RwLock<()>,
}

impl Generation {
    pub(crate) fn new(channel: Channel) -> Self {
        Self {
            acks: acks::Acks::start(channel.clone()),
            channel,
            outstanding: OutstandingMap::default(),
            triaging: AtomicU64::new(0),
            lapsed: AtomicBool::new(false),
            fence: tokio::sync::RwLock::new(()),
        }
    }

    /// Whether settlements through this channel still apply.
    pub(crate) fn is_current(&self) -> bool {
        !self.lapsed.load(Ordering::Acquire) && self.channel.status().connected()
    }

    fn is_lapsed(&self) -> bool {
        self.lapsed.load(Ordering::Acquire)
    }

    /// Deliveries handed out and not settled (none once lapsed), and those
    /// on their way to a delay bucket.
    pub(crate) fn in_flight(&self) -> u64 {
        Shared::lock(&self.outstanding).len() as u64 + self.triaging.load(Ordering::Acquire)
    }

    /// Returns every delivery of this channel to the queue by closing it,
    /// as if its process had died; its receipts become stale. Returns how
    /// many handed-out deliveries went back (0 if it had lapsed already).
    pub(crate) async fn lapse(&self) -> Result<u64, BrokerError> {
        let _fence = self.fence.write().await;
        if self.lapsed.swap(true, Ordering::AcqRel) {
            return Ok(0);
        }
        let returned = std::mem::take(&mut *Shared::lock(&self.outstanding)).len() as u64;
        if self.channel.status().connected() {
            self.channel
                .close(200, "dramaturg: requeue_in_flight".into())
                .await
                .map_err(|e| amqp_error(e, "closing a consumer channel"))?;
        }
        Ok(returned)
    }

    /// Marks the channel lost (closed by the server or the connection).
    pub(crate) fn lost(&self) -> HashMap<u64, (Bytes, Instant)> {
        self.lapsed.store(true, Ordering::Release);
        std::mem::take(&mut *Shared::lock(&self.outstanding))
    }
}

/// An open subscription: its channel generation and its stream.
struct Subscription {
    generation: Arc<Generation>,
    stream: lapin::Consumer,
    tag: String,
}

pub(crate) struct AmqpConsumer {
    shared: Arc<Shared>,
    queue: String,
    prefetch: u16,
    subscription: Option<Subscription>,
    /// In Dramatiq's layout: the consumer of `q.DQ` that moves delayed
    /// messages to this queue when they fall due.
    mover: Option<mover::Mover>,
    /// A delay hop or dead-lettering of a delivery that a cancelled `next`
    /// left running; the next call waits for it (cancel safety).
    triage: Option<tokio::task::JoinHandle<Result<Due, BrokerError>>>,
    /// In the native layout: whether the queue is paused (see `pause.rs`).
    paused: Option<crate::pause::Watch>,
    /// Channels given up when the queue was paused, open until their
    /// deliveries are settled (a delivery tag is good on its channel only).
    retired: Vec<Arc<Generation>>,
}

impl AmqpConsumer {
    pub(crate) async fn open(shared: Arc<Shared>, queue: &str, prefetch: usize) -> Result<Self, BrokerError> {
        crate::names::check_queue(queue)?;
        let prefetch = u16::try_from(prefetch.max(1)).unwrap_or(u16::MAX);
        let mut consumer = Self {
            shared,
            queue: queue.to_owned(),
            prefetch,
            subscription: None,
            mover: None,
            triage: None,
            paused: None,
            retired: Vec::new(),
        };
        if consumer.shared.config.layout() == Protocol::Dramatiq {
            consumer.subscribe().await?;
            consumer.mover = Some(mover::Mover::start(Arc::clone(&consumer.shared), queue));
        } else {
            let paused = crate::pause::watch(Arc::clone(&consumer.shared), queue.to_owned()).await;
            if !*paused.borrow() {
                consumer.subscribe().await?;
            }
            consumer.paused = Some(paused);
        }
        Ok(consumer)
    }

    /// Whether the queue is paused, as last seen.
    fn is_paused(&self) -> bool {
        self.paused.as_ref().is_some_and(|paused| *paused.borrow())
    }

    /// Stops consuming the paused queue: cancels the subscription and
    /// returns what it received and did not hand out; its channel stays
    /// open until the deliveries handed out are settled. Then waits for the
    /// resume.
    async fn stand_down(&mut self) -> Result<(), BrokerError> {
        if let Some(subscription) = self.subscription.take() {
            let generation = Arc::clone(&subscription.generation);
            if generation.is_current() {
                // Retired first: if this is cancelled half way, closing the
                // channel returns what it still holds.
                self.retired.push(generation);
                let returned = subscription.cancel().await?;
                tracing::info!(queue = %self.queue, returned, "the queue is paused; stopped consuming it");
            }
        }
        self.close_retired().await;
        let mut watch_gone = false;
        if let Some(paused) = self.paused.as_mut() {
            let mut settled = tokio::time::interval(crate::pause::LOOK_EVERY);
            loop {
                tokio::select! {
                    resumed = paused.wait_for(|paused| !*paused) => {
                        watch_gone = resumed.is_err();
                        break;
                    }
                    _ = settled.tick() => {}
                }
                // Channels whose deliveries were settled meanwhile close
                // now, not at the resume.
                close_settled(&mut self.retired).await;
            }
        }
        if watch_gone {
            // Its task is gone (it never is while the consumer lives):
            // consume as if resumed.
            self.paused = None;
        }
        Ok(())
    }

    async fn close_retired(&mut self) {
        close_settled(&mut self.retired).await;
    }

    async fn subscribe(&mut self) -> Result<&mut Subscription, BrokerError> {
        if self.subscription.as_ref().is_some_and(|s| s.generation.is_lapsed()) {
            // `requeue_in_flight` closed the channel: the server has put its
            // deliveries back, and a new channel receives them again.
            self.subscription = None;
        }
        if self.subscription.is_none() {
            let channel = self.shared.consuming_channel().await?;
            if self.shared.config.layout() == Protocol::Dramatiq {
                // On channels of their own (a passive declare's 404 closes
                // its channel).
                self.shared.declare_dramatiq(&self.queue).await?;
            } else {
                declare_topology(&channel, &self.shared.config, &self.queue).await?;
            }
            channel
                .basic_qos(self.prefetch, BasicQosOptions::default())
                .await
                .map_err(|e| amqp_error(e, "setting the prefetch"))?;
            let tag = format!("dramaturg-{}", MessageId::new());
            let stream = channel
                .basic_consume(
                    crate::names::short(&self.queue, "queue name")?,
                    tag.as_str().into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map_err(|e| amqp_error(e, "consuming"))?;
            let generation = Arc::new(Generation::new(channel));
            self.shared.track(&self.queue, &generation);
            self.subscription = Some(Subscription { generation, stream, tag });
        }
        Ok(self.subscription.as_mut().expect("subscribed just above"))
    }

    /// Handles the loss of the subscription: logs why, remembers a message
    /// that ran into `consumer_timeout`, and lets the next call subscribe again.
    fn lost(&mut self, error: BrokerError) -> BrokerError {
        if let Some(subscription) = self.subscription.take() {
            let outstanding = subscription.generation.lost();
            let text = error.to_string();
            if text.contains("acknowledgement") && text.contains("timed out") {
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
            }
        }
        error
    }
}

/// A delivery taken off the stream, its body shared.
pub(crate) struct Received {
    pub(crate) tag: u64,
    pub(crate) redelivered: bool,
    pub(crate) properties: lapin::BasicProperties,
    pub(crate) body: Bytes,
}

impl From<lapin::message::Delivery> for Received {
    fn from(delivery: lapin::message::Delivery) -> Self {
        Self {
            tag: delivery.delivery_tag,
            redelivered: delivery.redelivered,
            properties: delivery.properties,
            body: Bytes::from(delivery.data),
        }
    }
}

/// What [`hop`] did with a delivery.
enum Hopped {
    /// Nothing: it is due.
    Due,
    /// Moved on to the next delay bucket (or it went back to the queue
    /// with its channel, for whoever receives it to hop).
    Moved,
    /// Nothing: RabbitMQ blocks the publishing connection (`link`), so the
    /// hop cannot be published now.
    Blocked(Arc<Link>),
}

/// Moves a message that came back from a delay bucket with time still to
/// wait on to the next bucket (one confirmed publish, then the ack).
async fn hop(
    shared: &Shared,
    queue: &str,
    generation: &Generation,
    received: &Received,
) -> Result<Hopped, BrokerError> {
    let Some((k, remaining)) = next_hop(still_to_wait(&received.properties)) else { return Ok(Hopped::Due) };
    let link = shared.publishing_link(tokio::time::Instant::now() + shared.config.send_timeout).await?;
    if link.is_blocked() {
        return Ok(Hopped::Blocked(link));
    }
    let _fence = generation.fence.read().await;
    if !generation.is_current() {
        // The server has put it back already; whoever gets it hops it.
        return Ok(Hopped::Moved);
    }
    let priority = received.properties.priority().as_ref().copied().filter(|_| shared.config.max_priority.is_some());
    // An earlier version's due time travels on unchanged, for its workers.
    let due = header_u64(&received.properties, DUE_HEADER);
    let extra = Extra { remaining: Some(remaining), due, priority, reason: None };
    shared.publish_to(Target::Bucket(queue, k), &received.body, extra).await?;
    ack(generation, received.tag).await?;
    Ok(Hopped::Moved)
}

/// Gives a delivery that could not be hopped back to its queue rather than
/// let it hold a prefetch slot until its channel closes.
async fn give_back(generation: &Generation, tag: u64) {
    let _fence = generation.fence.read().await;
    if generation.is_current() {
        if let Err(error) = requeue(generation, tag).await {
            tracing::warn!(%error, "could not return a delayed message to its queue; it comes back when its channel closes");
        }
    }
}

/// A delay hop that found the publishing connection blocked, set aside so
/// that the consumer goes on handing out other deliveries: it waits for the
/// unblock, up to the send timeout, and hops then; otherwise the delivery
/// goes back to its queue (and is set aside again when it returns, once
/// per send timeout while the alarm lasts). It holds a prefetch slot
/// meanwhile.
async fn park(
    shared: Arc<Shared>,
    queue: String,
    generation: Arc<Generation>,
    received: Received,
    link: Arc<Link>,
    _counted: Triaging,
) {
    tracing::debug!(%queue, "publishing is blocked; a delay hop waits for the unblock");
    let deadline = tokio::time::Instant::now() + shared.config.send_timeout;
    let mut link = link;
    while link.unblocked_by(deadline).await {
        match hop(&shared, &queue, &generation, &received).await {
            Ok(Hopped::Moved) => return,
            Ok(Hopped::Blocked(again)) => link = again,
            // An earlier version's message whose due time passed meanwhile:
            // handed out when it comes back.
            Ok(Hopped::Due) => break,
            Err(error) => {
                tracing::warn!(%queue, %error, "a delay hop failed after the unblock; returning the message to its queue");
                break;
            }
        }
    }
    give_back(&generation, received.tag).await;
}

/// How long a delivery must still wait before it may run, in ms (0: due).
///
/// A message from a delay bucket says so itself ([`REMAINING_HEADER`]): it
/// has waited out its bucket's TTL on the server, and the header holds the
/// rest. Only a message sent by an earlier version, with nothing but an
/// absolute due time, is compared with this process's clock.
fn still_to_wait(properties: &lapin::BasicProperties) -> u64 {
    match header_u64(properties, REMAINING_HEADER) {
        Some(remaining) => remaining,
        None => header_u64(properties, DUE_HEADER).map_or(0, |due| due.saturating_sub(now_ms())),
    }
}

/// Whether a delivery has to be moved or dead-lettered before it may be
/// handed out.
fn needs_triage(shared: &Shared, received: &Received) -> bool {
    // Dramatiq's layout has no delay buckets: its delayed messages come
    // through `q.DQ` (see `mover`).
    let hops = shared.config.layout() == Protocol::Native;
    (hops && still_to_wait(&received.properties) > 0) || (received.redelivered && shared.is_overdue(&received.body))
}

/// A delivery received and not yet handed out, hopped to a delay bucket or
/// given back: counted among the channel's in-flight deliveries while it
/// lives, so that statistics (and `join`) never find a message that is
/// being moved to its next bucket in no queue at all. It is dropped once
/// the hop is confirmed and acknowledged, or after the delivery was handed
/// out (and so counted as outstanding).
pub(crate) struct Triaging(Arc<Generation>);

impl Triaging {
    pub(crate) fn new(generation: &Arc<Generation>) -> Self {
        generation.triaging.fetch_add(1, Ordering::AcqRel);
        Self(Arc::clone(generation))
    }
}

impl Drop for Triaging {
    fn drop(&mut self) {
        self.0.triaging.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A delivery that triage hands back because it is due after all, with
/// what keeps it counted until it is handed out.
type Due = Option<(Arc<Generation>, Received, Triaging)>;

/// Hops a delivery that is not due, or dead-letters one that ran into
/// `consumer_timeout` before; runs as a task of its own so that it finishes
/// even if the `next` that started it is cancelled. Returns the delivery if
/// it turned out to be due and may be handed out.
async fn triage(
    shared: Arc<Shared>,
    queue: String,
    generation: Arc<Generation>,
    received: Received,
    counted: Triaging,
) -> Result<Due, BrokerError> {
    match hop(&shared, &queue, &generation, &received).await {
        Ok(Hopped::Moved) => return Ok(None),
        Ok(Hopped::Blocked(link)) => {
            tokio::spawn(park(shared, queue, generation, received, link, counted));
            return Ok(None);
        }
        Ok(Hopped::Due) => {}
        Err(error) => {
            give_back(&generation, received.tag).await;
            return Err(error);
        }
    }
    if !(received.redelivered && shared.is_overdue(&received.body)) {
        return Ok(Some((generation, received, counted)));
    }
    let receipt = AmqpReceipt::new(shared, generation, queue, received.tag, received.body);
    tracing::error!(queue = %receipt.queue, "dead-lettering a message that exceeded consumer_timeout");
    let reason = "the message ran longer than RabbitMQ's consumer_timeout and would again; raise consumer_timeout \
                  or set a shorter time_limit";
    receipt.settle(&Settlement::DeadLetter(reason.into())).await?;
    Ok(None)
}

impl AmqpConsumer {
    /// Hands out `delivery` with a receipt of its channel.
    fn hand_out(&self, generation: Arc<Generation>, received: Received) -> Delivery {
        let receipt =
            AmqpReceipt::new(Arc::clone(&self.shared), generation, self.queue.clone(), received.tag, received.body);
        let body = receipt.body.clone();
        Delivery::new(body, received.redelivered, Box::new(receipt))
    }
}

#[async_trait]
impl Consumer for AmqpConsumer {
    async fn next(&mut self) -> Result<Delivery, BrokerError> {
        loop {
            if let Some(running) = self.triage.as_mut() {
                let result = running.await;
                self.triage = None;
                match result {
                    Ok(Ok(None)) => {}
                    // Counted until it is handed out (and so outstanding).
                    Ok(Ok(Some((generation, received, _counted)))) => return Ok(self.hand_out(generation, received)),
                    Ok(Err(error)) => return Err(error),
                    Err(join) => {
                        return Err(BrokerError::new(
                            BrokerErrorKind::Other,
                            format!("amqp: a delay hop failed: {join}"),
                        ))
                    }
                }
            }
            if self.is_paused() {
                self.stand_down().await?;
                continue;
            }
            if !self.retired.is_empty() {
                self.close_retired().await;
            }
            self.subscribe().await?;
            let Some(subscription) = self.subscription.as_mut() else { continue };
            let next = match self.paused.as_mut() {
                Some(paused) => tokio::select! {
                    // A pause while waiting: stand down at the top.
                    changed = paused.wait_for(|paused| *paused) => Err(changed.is_err()),
                    next = subscription.stream.next() => Ok(next),
                },
                None => Ok(subscription.stream.next().await),
            };
            let next = match next {
                Ok(next) => next,
                Err(watch_gone) => {
                    if watch_gone {
                        // Its task is gone (it never is while the consumer
                        // lives): consume as if never paused.
                        self.paused = None;
                    }
                    continue;
                }
            };
            let generation = Arc::clone(&subscription.generation);
            let delivery = match next {
                Some(Ok(delivery)) => delivery,
                _ if generation.is_lapsed() => continue,
                Some(Err(error)) => return Err(self.lost(amqp_error(error, "consuming"))),
                None => {
                    let closed = BrokerError::new(
                        BrokerErrorKind::Connection,
                        "amqp: the consumer was cancelled or its channel closed",
                    );
                    return Err(self.lost(closed));
                }
            };
            if generation.is_lapsed() {
                // Received before its channel was closed: the server has
                // put it back, and the next channel receives it again.
                continue;
            }
            let received = Received::from(delivery);
            if self.is_paused() {
                // Paused as it arrived: back to the queue, then stand down.
                requeue(&generation, received.tag).await?;
                continue;
            }
            if needs_triage(&self.shared, &received) {
                let counted = Triaging::new(&generation);
                let task = triage(Arc::clone(&self.shared), self.queue.clone(), generation, received, counted);
                self.triage = Some(tokio::spawn(task));
                continue;
            }
            return Ok(self.hand_out(generation, received));
        }
    }

    fn paused(&self) -> Option<crate::pause::Watch> {
        self.paused.clone()
    }

    async fn close(mut self: Box<Self>) -> Result<(), BrokerError> {
        if let Some(mover) = self.mover.take() {
            // Its held messages go back to `q.DQ` with its channel.
            mover.stop().await;
        }
        self.close_retired().await;
        let Some(subscription) = self.subscription.take() else { return Ok(()) };
        if !subscription.generation.is_current() {
            // Closed already: the server returned its deliveries.
            return Ok(());
        }
        // The channel stays open for the deliveries still running.
        subscription.cancel().await.map(|_| ())
    }
}

impl Subscription {
    /// Cancels the subscription and returns the deliveries that arrived
    /// but were not handed out to the queue; returns how many.
    async fn cancel(mut self) -> Result<u64, BrokerError> {
        self.generation
            .channel
            .basic_cancel(self.tag.as_str().into(), BasicCancelOptions::default())
            .await
            .map_err(|e| amqp_error(e, "cancelling the consumer"))?;
        // Everything sent before the cancel-ok has arrived by now.
        let mut returned = 0;
        while let Some(Some(Ok(delivery))) = futures_util::FutureExt::now_or_never(self.stream.next()) {
            requeue(&self.generation, delivery.delivery_tag).await?;
            returned += 1;
        }
        Ok(returned)
    }
}

/// Closes the retired channels none of whose deliveries is still running;
/// keeps the others.
async fn close_settled(retired: &mut Vec<Arc<Generation>>) {
    let (done, running): (Vec<_>, Vec<_>) = retired.drain(..).partition(|g| g.in_flight() == 0 || !g.is_current());
    *retired = running;
    for generation in done {
        if generation.is_current() {
            let _ = generation.channel.close(200, "dramaturg: paused".into()).await;
        }
    }
}

/// Settles one delivery on the channel it came from.
struct AmqpReceipt {
    shared: Arc<Shared>,
    generation: Arc<Generation>,
    queue: String,
    tag: u64,
    body: Bytes,
    /// A settlement reached the broker (applied, or found stale).
    settled: AtomicBool,
    /// The dead letter or rescheduled copy was published; only the ack of
    /// the original is left (a retried settlement must not publish again).
    replaced: AtomicBool,
}

impl std::fmt::Debug for AmqpReceipt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmqpReceipt").field("queue", &self.queue).field("tag", &self.tag).finish()
    }
}

impl AmqpReceipt {
    fn new(shared: Arc<Shared>, generation: Arc<Generation>, queue: String, tag: u64, body: Bytes) -> Self {
        Shared::lock(&generation.outstanding).insert(tag, (body.clone(), Instant::now()));
        Self { shared, generation, queue, tag, body, settled: AtomicBool::new(false), replaced: AtomicBool::new(false) }
    }

    async fn ack(&self) -> Result<(), BrokerError> {
        ack(&self.generation, self.tag).await
    }

    /// Publishes the replacement of the original (once, however often the
    /// settlement is tried), then acknowledges the original. The
    /// replacement is confirmed first: a crash in between duplicates,
    /// never loses.
    async fn replace(
        &self,
        publish: impl std::future::Future<Output = Result<(), BrokerError>>,
    ) -> Result<(), BrokerError> {
        if !self.replaced.load(Ordering::Acquire) {
            publish.await?;
            self.replaced.store(true, Ordering::Release);
        }
        self.ack().await
    }

    /// Carries out `settlement`; the caller holds the fence and checked
    /// that the channel is current.
    async fn apply(&self, settlement: &Settlement) -> Result<(), BrokerError> {
        match settlement {
            Settlement::Ack => self.ack().await,
            Settlement::DeadLetter(reason) => {
                self.replace(async {
                    let key = MessageId::new().to_string();
                    let extra = Extra { reason: Some((reason, &key)), ..Extra::default() };
                    let target = self.shared.dead_target(&self.queue);
                    if let Target::DeadLetterQueue(_) = target {
                        // Where Dramatiq's tools look for the error.
                        let body = crate::dramatiq::route::dead_letter_body(&self.body, reason.as_str());
                        return self.shared.publish_to(target, &body, extra).await;
                    }
                    self.shared.publish_to(target, &self.body, extra).await
                })
                .await
            }
            Settlement::Requeue => requeue(&self.generation, self.tag).await,
            Settlement::Reschedule { body, delay } => {
                let next = Outgoing::new(self.queue.as_str(), body.clone()).with_delay(Some(*delay));
                self.replace(self.shared.publish(&next)).await
            }
            other => Err(BrokerError::new(BrokerErrorKind::Unsupported, format!("unknown settlement {other:?}"))),
        }
    }
}

/// Acknowledges the delivery `tag` of `generation`'s channel (coalesced
/// with others, see `acks.rs`).
pub(crate) async fn ack(generation: &Generation, tag: u64) -> Result<(), BrokerError> {
    generation.acks.ack(tag).await
}

/// Returns the delivery `tag` of `generation`'s channel to its queue.
pub(crate) async fn requeue(generation: &Generation, tag: u64) -> Result<(), BrokerError> {
    let requeue = BasicNackOptions { requeue: true, ..BasicNackOptions::default() };
    generation.channel.basic_nack(tag, requeue).await.map_err(|e| amqp_error(e, "requeueing"))?;
    generation.acks.settled_otherwise(tag);
    Ok(())
}

#[async_trait]
impl Receipt for AmqpReceipt {
    async fn settle(&self, settlement: &Settlement) -> Result<Settled, BrokerError> {
        let _fence = self.generation.fence.read().await;
        // A delivery tag belongs to its channel: once the channel is closed,
        // RabbitMQ has returned the message to the queue for another
        // consumer, and nothing done here may touch it — no ack (on a new
        // channel an old tag is unknown, and RabbitMQ would close it), no
        // dead letter, no rescheduled copy.
        if !self.generation.is_current() {
            Shared::lock(&self.generation.outstanding).remove(&self.tag);
            self.settled.store(true, Ordering::Release);
            return Ok(Settled::Stale);
        }
        let result = self.apply(settlement).await;
        let first_step_lost = matches!(settlement, Settlement::Ack | Settlement::Requeue)
            && result.is_err()
            && !self.generation.channel.status().connected();
        if result.is_ok() || first_step_lost {
            Shared::lock(&self.generation.outstanding).remove(&self.tag);
            self.settled.store(true, Ordering::Release);
        }
        if first_step_lost {
            // The channel closed under the ack: the server returned the
            // message, and the ack changed nothing.
            return Ok(Settled::Stale);
        }
        result.map(|()| Settled::Applied)
    }
}

impl Drop for AmqpReceipt {
    /// A delivery dropped unsettled (its settlement failed and was not
    /// retried) would hold a prefetch slot of its channel until the
    /// channel closes: return it to the queue now — or, if its replacement
    /// was already published, finish the settlement with the ack.
    fn drop(&mut self) {
        Shared::lock(&self.generation.outstanding).remove(&self.tag);
        if self.settled.load(Ordering::Acquire) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        let (generation, tag, replaced) =
            (Arc::clone(&self.generation), self.tag, self.replaced.load(Ordering::Acquire));
        runtime.spawn(async move {
            let _fence = generation.fence.read().await;
            if !generation.is_current() {
                return;
            }
            let result = if replaced { ack(&generation, tag).await } else { requeue(&generation, tag).await };
            if let Err(error) = result {
                tracing::warn!(%error, "a delivery dropped unsettled could not be returned; it comes back when its channel closes");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use lapin::types::AMQPValue;

    use super::*;

    fn with_headers(entries: &[(&str, i64)]) -> lapin::BasicProperties {
        let mut headers = FieldTable::default();
        for (key, value) in entries {
            headers.insert((*key).into(), AMQPValue::LongLongInt(*value));
        }
        lapin::BasicProperties::default().with_headers(headers)
    }

    #[test]
    fn the_remaining_wait_decides_and_a_due_time_only_for_earlier_versions() {
        let now = i64::try_from(now_ms()).expect("fits");
        // Carried by the message: no clock involved, whatever due time is there too.
        assert_eq!(still_to_wait(&with_headers(&[(REMAINING_HEADER, 0), (DUE_HEADER, now + 60_000)])), 0);
        assert_eq!(still_to_wait(&with_headers(&[(REMAINING_HEADER, 500), (DUE_HEADER, now - 60_000)])), 500);
        // An earlier version's message: its due time against this clock.
        let legacy = still_to_wait(&with_headers(&[(DUE_HEADER, now + 5_000)]));
        assert!((4_000..=5_000).contains(&legacy), "{legacy}");
        assert_eq!(still_to_wait(&with_headers(&[(DUE_HEADER, now - 1)])), 0);
        assert_eq!(still_to_wait(&lapin::BasicProperties::default()), 0);
    }
}
