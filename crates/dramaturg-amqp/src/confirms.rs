//! Publisher confirms matched exactly to the messages RabbitMQ returned.
//!
//! Publishes are mandatory, so a message whose queue does not exist comes
//! back as `basic.return` just before its `basic.ack`. lapin attaches a
//! returned message to whichever pending confirm it completes next — and
//! when one `multiple` ack completes several confirms at once, or an ack of
//! an earlier publish arrives between a return and its own ack, that is
//! another publish's confirm. Left like that, the publish whose message
//! was returned would be told it was stored.
//!
//! So every confirm of a connection is awaited by one task that sees them
//! in the order lapin completes them: it collects every returned message
//! ("orphans"), and answers a batch of completed publishes only after
//! taking in every confirm that could carry one of their returns, matching
//! orphans to publishes by routing key and body. A return arrives before
//! its own ack, so the confirm carrying it completes no later than its
//! publish's, and belongs to a publish issued before that ack arrived: the
//! task waits until every publish issued so far has handed it its confirm
//! (a counter of issued and registered publishes) before answering.
//!
//! That task, and the hand-over of each publish's confirm to it, run on the
//! connection's own runtime ([`crate::runtime`]).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use dramaturg_core::{BrokerError, BrokerErrorKind};
use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt};
use lapin::message::BasicReturnMessage;
use lapin::options::BasicPublishOptions;
use lapin::{BasicProperties, Channel, Confirmation, PublisherConfirm};
use tokio::runtime::Handle;
use tokio::sync::{mpsc, oneshot, Notify};

use crate::error::amqp_error;
use crate::names::short;

/// Returned messages kept for a publish not yet seen (its confirm can
/// complete before the publish registers it); beyond this the oldest are
/// logged and forgotten.
const MAX_ORPHANS: usize = 1024;

/// What RabbitMQ did with one publish.
#[derive(Debug)]
pub(crate) enum Published {
    /// Confirmed and routed to a queue (or confirms are off).
    Stored,
    /// Returned as unroutable: its queue does not exist.
    Returned,
}

/// A publish waiting for its confirm.
struct Waiting {
    routing_key: String,
    body: Bytes,
    reply: oneshot::Sender<Result<Published, BrokerError>>,
}

/// Publishes issued and publishes registered with the collecting task.
#[derive(Default)]
struct Counts {
    issued: AtomicU64,
    registered: AtomicU64,
    changed: Notify,
}

/// The confirms of one connection's publisher channel.
pub(crate) struct Confirms {
    sender: mpsc::UnboundedSender<(PublisherConfirm, Waiting)>,
    counts: Arc<Counts>,
    /// The connection's runtime, where the tasks run.
    runtime: Handle,
}

/// A publish issued; counted as registered once its confirm reached the
/// collecting task, or its publish failed, so that the task never waits
/// for it in vain.
struct Ticket {
    counts: Arc<Counts>,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.counts.registered.fetch_add(1, Ordering::AcqRel);
        self.counts.changed.notify_waiters();
    }
}

impl Confirms {
    /// Starts the task that awaits the confirms, on `runtime`; it ends
    /// when this value is dropped and every confirm has come in.
    pub(crate) fn start(runtime: &Handle) -> Self {
        let (sender, receiver) = mpsc::unbounded_channel();
        let counts = Arc::new(Counts::default());
        runtime.spawn(collect(receiver, Arc::clone(&counts)));
        Self { sender, counts, runtime: runtime.clone() }
    }

    /// Publishes `body` to `routing_key` (mandatory, on the default
    /// exchange) on `channel` and waits for its confirm.
    ///
    /// The publish and the hand-over of its confirm run as a task of their
    /// own, so that cancelling the caller cannot drop a confirm that
    /// carries another publish's returned message.
    pub(crate) async fn publish(
        &self,
        channel: Channel,
        routing_key: &str,
        body: Bytes,
        properties: BasicProperties,
    ) -> Result<Published, BrokerError> {
        let routing = short(routing_key, "queue name")?;
        let (reply, answer) = oneshot::channel();
        // Counted before the publish is issued: the collecting task then
        // waits for its confirm when answering a batch.
        self.counts.issued.fetch_add(1, Ordering::AcqRel);
        let ticket = Ticket { counts: Arc::clone(&self.counts) };
        let options = BasicPublishOptions { mandatory: true, ..BasicPublishOptions::default() };
        let mut publishing = Box::pin(async move {
            let published = channel.basic_publish("".into(), routing, options, &body, properties).await;
            (published, body)
        });
        // The first poll issues the publish (its sequence number, its
        // frames) here, so that publishes keep the order of the calls.
        let issued = (&mut publishing).now_or_never();
        let routing_key = routing_key.to_owned();
        let sender = self.sender.clone();
        self.runtime.spawn(async move {
            let (published, body) = match issued {
                Some(done) => done,
                None => publishing.await,
            };
            match published {
                Ok(confirm) => {
                    let waiting = Waiting { routing_key, body, reply };
                    if let Err(mpsc::error::SendError((_, waiting))) = sender.send((confirm, waiting)) {
                        let _ = waiting.reply.send(Err(stopped()));
                    }
                }
                Err(error) => {
                    let _ = reply.send(Err(amqp_error(error, "publish")));
                }
            }
            drop(ticket);
        });
        answer.await.map_err(|_| stopped())?
    }
}

fn stopped() -> BrokerError {
    BrokerError::new(BrokerErrorKind::Connection, "amqp: the publisher confirms stopped")
}

type Item = (PublisherConfirm, Waiting);

async fn collect(mut receiver: mpsc::UnboundedReceiver<Item>, counts: Arc<Counts>) {
    let mut pending = FuturesUnordered::new();
    let mut orphans: VecDeque<BasicReturnMessage> = VecDeque::new();
    let mut open = true;
    while open || !pending.is_empty() {
        tokio::select! {
            item = receiver.recv(), if open => match item {
                Some((confirm, waiting)) => pending.push(completion(confirm, waiting)),
                None => open = false,
            },
            Some(first) = pending.next(), if !pending.is_empty() => {
                // A confirm carrying a return of this batch belongs to a
                // publish issued by now: wait until all of them are here.
                let issued = counts.issued.load(Ordering::Acquire);
                loop {
                    let changed = counts.changed.notified();
                    while let Ok((confirm, waiting)) = receiver.try_recv() {
                        pending.push(completion(confirm, waiting));
                    }
                    if counts.registered.load(Ordering::Acquire) >= issued {
                        while let Ok((confirm, waiting)) = receiver.try_recv() {
                            pending.push(completion(confirm, waiting));
                        }
                        break;
                    }
                    changed.await;
                }
                // Everything completed by now is ready: take it all in
                // before answering anyone.
                let mut batch = vec![first];
                while let Some(Some(more)) = pending.next().now_or_never() {
                    batch.push(more);
                }
                answer(batch, &mut orphans);
            }
        }
    }
}

type Completed = (lapin::Result<Confirmation>, Waiting);

async fn completion(confirm: PublisherConfirm, waiting: Waiting) -> Completed {
    (confirm.await, waiting)
}

fn answer(batch: Vec<Completed>, orphans: &mut VecDeque<BasicReturnMessage>) {
    let mut answers = Vec::with_capacity(batch.len());
    for (result, waiting) in batch {
        let result = result.map(|confirmation| {
            let nack = confirmation.is_nack();
            if let Some(returned) = confirmation.take_message() {
                orphans.push_back(returned);
            }
            nack
        });
        answers.push((result, waiting));
    }
    for (result, waiting) in answers {
        let outcome = match result {
            Err(error) => Err(amqp_error(error, "publisher confirm")),
            Ok(true) => Err(BrokerError::new(BrokerErrorKind::Protocol, "amqp: RabbitMQ refused the message (nack)")),
            Ok(false) => {
                let ours = orphans.iter().position(|returned| {
                    returned.delivery.routing_key.as_str() == waiting.routing_key
                        && returned.delivery.data == waiting.body
                });
                Ok(match ours {
                    Some(index) => {
                        orphans.remove(index);
                        Published::Returned
                    }
                    None => Published::Stored,
                })
            }
        };
        let _ = waiting.reply.send(outcome);
    }
    while orphans.len() > MAX_ORPHANS {
        if let Some(returned) = orphans.pop_front() {
            tracing::error!(
                queue = %returned.delivery.routing_key,
                "RabbitMQ returned a message that matches no publish of this connection; it is dropped"
            );
        }
    }
}
