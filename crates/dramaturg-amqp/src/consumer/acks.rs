//! Coalesced acknowledgements: the acks of one channel go out through one
//! task, and a run of them is one `basic.ack` with `multiple`.
//!
//! RabbitMQ spends about as much on an ack as on the rest of a message's
//! way through a classic queue, and one `multiple` ack settles every
//! outstanding delivery of its channel up to its tag. That is only safe
//! where every delivery below the tag is settled or being acked now: a
//! delivery still running, or one on its way back with a `basic.nack`
//! not sent yet, would be acked with the others and lost. So each channel
//! keeps a [`Ledger`] of its settled tags (delivery tags count up from 1
//! on each channel, in the order RabbitMQ delivers), and its task acks
//! with `multiple` only up to the first tag that is not settled; the acks
//! above it go one by one. The tag of a `multiple` ack is always one being
//! acked now: RabbitMQ closes the channel for a `multiple` ack whose own
//! tag is not outstanding.
//!
//! A tag counts as settled once its frame is on the way: an ack when its
//! batch is planned (the task sends the batch's frames before it plans the
//! next), a nack only after `basic.nack` returned (see
//! [`Acks::settled_otherwise`]), so a later `multiple` ack never overtakes
//! it. A settlement the ledger is not told of only keeps later acks from
//! coalescing; it never widens one.
//!
//! Nothing waits to fill a batch: while the task sends one batch, the acks
//! that arrive meanwhile queue up and go together in the next; an ack alone
//! goes at once.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use dramaturg_core::BrokerError;
use lapin::options::BasicAckOptions;
use lapin::Channel;
use tokio::sync::{mpsc, oneshot};

use crate::error::amqp_error;
use crate::Shared;

/// The most acks one batch plans.
const MAX_BATCH: usize = 1024;

/// What an ack is answered with.
type Answer = Result<(), BrokerError>;

/// One queued ack.
struct Pending {
    tag: u64,
    answer: oneshot::Sender<Answer>,
}

/// The settled delivery tags of one channel.
#[derive(Debug)]
struct Ledger {
    /// Every tag below is settled.
    floor: u64,
    /// Settled tags above `floor`.
    settled: BTreeSet<u64>,
}

impl Default for Ledger {
    fn default() -> Self {
        // A channel's first delivery tag is 1 (AMQP 0-9-1, basic.deliver).
        Self { floor: 1, settled: BTreeSet::new() }
    }
}

impl Ledger {
    fn settle(&mut self, tag: u64) {
        if tag >= self.floor {
            self.settled.insert(tag);
        }
        while self.settled.remove(&self.floor) {
            self.floor += 1;
        }
    }

    /// The frames that ack `tags` (each an outstanding delivery, in any
    /// order), as `(tag, multiple)`, and records them settled: one
    /// `multiple` ack for those below the first unsettled tag, when there
    /// are two or more, and one ack each for the rest.
    fn plan(&mut self, tags: &[u64]) -> Vec<(u64, bool)> {
        // A tag settled already is not acked again (RabbitMQ would close
        // the channel for an unknown tag).
        let tags: Vec<u64> =
            tags.iter().copied().filter(|tag| *tag >= self.floor && !self.settled.contains(tag)).collect();
        for &tag in &tags {
            self.settle(tag);
        }
        let (covered, mut above): (Vec<u64>, Vec<u64>) = tags.iter().partition(|&&tag| tag < self.floor);
        above.sort_unstable();
        let mut frames = Vec::with_capacity(above.len() + 1);
        match covered.iter().max() {
            Some(&through) if covered.len() > 1 => frames.push((through, true)),
            Some(&only) => frames.push((only, false)),
            None => {}
        }
        frames.extend(above.into_iter().map(|tag| (tag, false)));
        frames
    }
}

/// Where one channel's acks go; its [`Generation`](super::Generation)
/// holds it.
#[derive(Debug)]
pub(crate) struct Acks {
    queue: mpsc::UnboundedSender<Pending>,
    ledger: Arc<Mutex<Ledger>>,
    channel: Channel,
}

impl Acks {
    /// Starts the task that acks on `channel`; it ends when this is
    /// dropped. Must be called within a Tokio runtime.
    pub(crate) fn start(channel: Channel) -> Self {
        let ledger = Arc::<Mutex<Ledger>>::default();
        let (queue, pending) = mpsc::unbounded_channel();
        tokio::spawn(run(channel.clone(), Arc::clone(&ledger), pending));
        Self { queue, ledger, channel }
    }

    /// Acknowledges the delivery `tag` of the channel, alone or with
    /// others; returns once its frame is sent.
    ///
    /// # Errors
    ///
    /// The channel's error when the frame could not be sent (it closed).
    pub(crate) async fn ack(&self, tag: u64) -> Answer {
        let (answer, answered) = oneshot::channel();
        if let Err(mpsc::error::SendError(pending)) = self.queue.send(Pending { tag, answer }) {
            // The task is gone (its runtime is shutting down): ack alone.
            let frames = Shared::lock(&self.ledger).plan(&[pending.tag]);
            return send(&self.channel, &frames).await;
        }
        answered.await.unwrap_or_else(|_| {
            Err(BrokerError::new(
                dramaturg_core::BrokerErrorKind::Connection,
                "amqp: the ack was cut off before it was sent (the runtime is shutting down)",
            ))
        })
    }

    /// Records that the delivery `tag` was settled other than by an ack
    /// (`basic.nack` or `basic.reject` returned), so that acks after it
    /// can be coalesced past it. Call it only after the frame was sent.
    pub(crate) fn settled_otherwise(&self, tag: u64) {
        Shared::lock(&self.ledger).settle(tag);
    }
}

/// Acks what is queued, a batch at a time, until the [`Acks`] is gone.
async fn run(channel: Channel, ledger: Arc<Mutex<Ledger>>, mut pending: mpsc::UnboundedReceiver<Pending>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while pending.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let tags: Vec<u64> = batch.iter().map(|ack| ack.tag).collect();
        let frames = Shared::lock(&ledger).plan(&tags);
        let result = send(&channel, &frames).await;
        for ack in batch.drain(..) {
            // A settle future dropped meanwhile no longer listens.
            let _ = ack.answer.send(match &result {
                Ok(()) => Ok(()),
                Err(error) => Err(BrokerError::new(error.kind(), error.to_string())),
            });
        }
    }
}

/// Sends `frames` in order; stops at the first that fails.
async fn send(channel: &Channel, frames: &[(u64, bool)]) -> Answer {
    for &(tag, multiple) in frames {
        channel.basic_ack(tag, BasicAckOptions { multiple }).await.map_err(|e| amqp_error(e, "acknowledging"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_from_the_floor_is_one_multiple_ack_and_the_rest_go_alone() {
        let mut ledger = Ledger::default();
        // 1, 2, 3 done together: one ack of 3 with multiple.
        assert_eq!(ledger.plan(&[2, 1, 3]), vec![(3, true)]);
        // 4 still runs: 5 and 6 go alone.
        assert_eq!(ledger.plan(&[6, 5]), vec![(5, false), (6, false)]);
        // 4 done: alone (5 and 6 are acked already, below it nothing is left).
        assert_eq!(ledger.plan(&[4]), vec![(4, false)]);
        assert_eq!(ledger.floor, 7);
        // 7 returned with a nack, then 8 and 9 acked: covered from the floor.
        ledger.settle(7);
        assert_eq!(ledger.plan(&[9, 8]), vec![(9, true)]);
    }

    #[test]
    fn a_tag_not_settled_is_never_covered() {
        let mut ledger = Ledger::default();
        // 1 runs on: nothing may be acked with multiple past it.
        assert_eq!(ledger.plan(&[2, 3, 4]), vec![(2, false), (3, false), (4, false)]);
        // 1 done: tags 2–4 are acked already, so the ack of 1 is alone.
        assert_eq!(ledger.plan(&[1]), vec![(1, false)]);
        // A multiple ack's own tag is always one acked in its batch.
        assert_eq!(ledger.plan(&[5, 6, 8]), vec![(6, true), (8, false)]);
        // Acked twice: nothing is sent the second time.
        assert_eq!(ledger.plan(&[6, 8]), vec![]);
    }
}
