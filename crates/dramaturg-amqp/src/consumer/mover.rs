//! The consumer of a queue's delay queue `q.DQ` in Dramatiq's layout: it
//! holds each delayed message unacknowledged until its `eta`, then
//! publishes a copy to `q` (`queue_name` = `q`, no `eta`, as Dramatiq's
//! worker does; confirmed) and acknowledges the held delivery.
//!
//! Dramatiq holds a delayed message for its whole delay, and RabbitMQ
//! closes a channel that holds a delivery longer than its
//! `consumer_timeout` (30 minutes by default), so long delays and backoffs
//! churn there. Here no delivery is held longer than the hold horizon
//! ([`AmqpConfig::delay_hold_horizon`](crate::AmqpConfig::delay_hold_horizon),
//! 10 minutes by default): a message not due by then is published to
//! `q.DQ` again, unchanged (confirmed), and the held delivery acknowledged.
//! A message is never moved before its `eta`; at most
//! [`AmqpConfig::delay_prefetch`](crate::AmqpConfig::delay_prefetch)
//! are held at once (`basic.qos`).
//!
//! Held deliveries count as in flight on the mover's channel, tracked
//! under the name `q.DQ`, so that statistics count them as delayed. Each
//! move is fenced like a settlement: once the channel is gone (closed by
//! [`Mover::stop`] or lost), RabbitMQ has returned its deliveries to
//! `q.DQ`, and nothing is published for them.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use dramaturg_core::dramatiq::{delay_queue, Body};
use dramaturg_core::{BrokerError, MessageId};
use futures_util::StreamExt;
use lapin::options::{BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use tokio::task::{JoinHandle, JoinSet};

use super::{ack, requeue, Generation, Received, Triaging};
use crate::delay::{header_u64, millis, DUE_HEADER};
use crate::dramatiq::route;
use crate::error::amqp_error;
use crate::names::short;
use crate::target::{Extra, Target};
use crate::Shared;
use dramaturg_core::now_ms;

/// The first pause before subscribing again after a failure; it doubles
/// up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// The pause before a held message whose move failed goes back to `q.DQ`
/// (where it is delivered again at once): no busy loop while publishing
/// fails.
const FAILED_MOVE_PAUSE: Duration = Duration::from_secs(1);

/// A running mover of one queue's delay queue. Stopped by
/// [`Mover::stop`], or when dropped.
pub(crate) struct Mover {
    task: JoinHandle<()>,
    /// The mover's current channel.
    current: Arc<Mutex<Option<Arc<Generation>>>>,
}

impl Mover {
    /// Starts moving `queue`'s delayed messages, on a task of the current
    /// runtime.
    pub(crate) fn start(shared: Arc<Shared>, queue: &str) -> Self {
        let current = Arc::new(Mutex::new(None));
        let task = tokio::spawn(run(shared, queue.to_owned(), Arc::clone(&current)));
        Self { task, current }
    }

    /// Stops moving: closes the channel, which returns every held delivery
    /// to `q.DQ` (a move under way finishes first), then ends the task.
    pub(crate) async fn stop(self) {
        let generation = Shared::lock(&self.current).take();
        if let Some(generation) = generation {
            if let Err(error) = generation.lapse().await {
                tracing::debug!(%error, "closing the delay queue's channel");
            }
        }
        self.task.abort();
    }
}

impl Drop for Mover {
    fn drop(&mut self) {
        self.task.abort();
        // Dropped without `stop`: the channel closes with its last handle,
        // and a held message found on a lapsed channel is not moved.
        if let Some(generation) = Shared::lock(&self.current).take() {
            generation.lost();
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(async move {
                    let _ = generation.lapse().await;
                });
            }
        }
    }
}

/// Subscribes to `q.DQ` and holds its deliveries, subscribing again with
/// backoff whenever the channel is lost.
async fn run(shared: Arc<Shared>, queue: String, current: Arc<Mutex<Option<Arc<Generation>>>>) {
    let mut backoff = FIRST_BACKOFF;
    loop {
        // Dropped with the channel: a held message whose channel is gone
        // is RabbitMQ's again.
        let mut held = JoinSet::new();
        match subscribe(&shared, &queue).await {
            Ok((generation, mut stream)) => {
                *Shared::lock(&current) = Some(Arc::clone(&generation));
                backoff = FIRST_BACKOFF;
                while let Some(next) = stream.next().await {
                    while held.try_join_next().is_some() {}
                    match next {
                        Ok(delivery) => {
                            let counted = Triaging::new(&generation);
                            let received = Received::from(delivery);
                            held.spawn(hold(
                                Arc::clone(&shared),
                                queue.clone(),
                                Arc::clone(&generation),
                                received,
                                counted,
                            ));
                        }
                        Err(error) => {
                            tracing::warn!(%queue, %error, "the delay queue's consumer was lost; subscribing again");
                            break;
                        }
                    }
                }
                generation.lost();
            }
            Err(error) => tracing::warn!(%queue, %error, "could not consume the delay queue; trying again"),
        }
        held.abort_all();
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// A new channel consuming `q.DQ`, with the delay prefetch, tracked under
/// the name `q.DQ`.
async fn subscribe(shared: &Arc<Shared>, queue: &str) -> Result<(Arc<Generation>, lapin::Consumer), BrokerError> {
    shared.declare_dramatiq(queue).await?;
    let channel = shared.consuming_channel().await?;
    channel
        .basic_qos(shared.config.delay_prefetch, BasicQosOptions::default())
        .await
        .map_err(|e| amqp_error(e, "setting the delay queue's prefetch"))?;
    let delayed = delay_queue(queue);
    let stream = channel
        .basic_consume(
            short(&delayed, "queue name")?,
            format!("dramaturg-delays-{}", MessageId::new()).as_str().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|e| amqp_error(e, "consuming the delay queue"))?;
    let generation = Arc::new(Generation::new(channel));
    shared.track(&delayed, &generation);
    Ok((generation, stream))
}

/// Holds one delivery of `q.DQ` until its `eta` or the hold horizon,
/// whichever comes first, then moves it to `q` (due) or back to `q.DQ`
/// (not due yet), confirmed, and acknowledges it.
async fn hold(shared: Arc<Shared>, queue: String, generation: Arc<Generation>, received: Received, _counted: Triaging) {
    let body = Body::parse(&received.body).ok();
    let wait = route::eta(body.as_ref(), &received.properties).map_or(0, |eta| eta.saturating_sub(now_ms()));
    let horizon = millis(shared.config.delay_hold_horizon);
    let due = wait <= horizon;
    // Counted from a wall-clock reading rounded down: never early.
    tokio::time::sleep(Duration::from_millis(wait.min(horizon))).await;
    let priority = received.properties.priority().as_ref().copied();
    let moved = {
        let _fence = generation.fence.read().await;
        if !generation.is_current() {
            return;
        }
        let moved = if due {
            let copy = route::due_copy(body, &received.body, &queue);
            shared.publish_to(Target::Queue(&queue), &copy, Extra { priority, ..Extra::default() }).await
        } else {
            // Unchanged, its due time with it, to be held again from the
            // back of `q.DQ`.
            let extra = Extra { priority, due: header_u64(&received.properties, DUE_HEADER), ..Extra::default() };
            shared.publish_to(Target::DelayQueue(&queue), &received.body, extra).await
        };
        match moved {
            Ok(()) => Ok(ack(&generation, received.tag).await),
            Err(error) => Err(error),
        }
    };
    let settled = match moved {
        Ok(acked) => acked,
        Err(error) => {
            tracing::warn!(%queue, %error, "could not move a delayed message; it goes back to the delay queue");
            tokio::time::sleep(FAILED_MOVE_PAUSE).await;
            let _fence = generation.fence.read().await;
            if !generation.is_current() {
                return;
            }
            requeue(&generation, received.tag).await
        }
    };
    if let Err(error) = settled {
        tracing::warn!(%queue, %error, "could not settle a delayed message; it comes back when its channel closes");
    }
}
