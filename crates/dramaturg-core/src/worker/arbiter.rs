//! The worker's concurrency slots, handed out to the queues that have a
//! delivery ready, by the [queue order](super::QueueOrder).
//!
//! Each queue's deliveries ask for a slot once fetched (and within their
//! queue's own limit), so a queue with nothing to run never holds one. A
//! queue has as many waits as it has deliveries waiting: a slot that frees
//! while deliveries wait goes straight to one of the queue the order picks;
//! one that frees while none waits is counted free, and the next delivery
//! to ask takes it at once.

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex};

use rand::rngs::SmallRng;
use tokio::sync::{oneshot, OwnedSemaphorePermit};

use super::QueueOrder;
use crate::sync::lock;

/// Hands out the worker's concurrency slots.
pub(super) struct Arbiter {
    state: Mutex<State>,
    order: QueueOrder,
    /// Each queue's weight, by its index.
    weights: Vec<u32>,
}

struct State {
    /// Slots no message holds and no pump waits for.
    free: usize,
    /// The deliveries waiting for a slot, by their queue's index, oldest
    /// first. A wait whose delivery stopped waiting (its receiver dropped)
    /// stays until a freed slot finds it closed.
    waiting: Vec<VecDeque<oneshot::Sender<Slot>>>,
    rng: SmallRng,
}

/// One concurrency slot; back to the [`Arbiter`] when dropped.
pub(super) struct Slot {
    /// `None` once the slot is counted free again.
    arbiter: Option<Arc<Arbiter>>,
}

/// What a running message holds: a slot of the worker's concurrency, and
/// one of its queue's own limit if the queue has one. Both go back when it
/// is dropped.
#[derive(Debug)]
pub(super) struct Permits {
    _slot: Slot,
    _queue: Option<OwnedSemaphorePermit>,
}

impl Permits {
    pub(super) fn new(slot: Slot, queue: Option<OwnedSemaphorePermit>) -> Self {
        Self { _slot: slot, _queue: queue }
    }
}

impl Arbiter {
    /// `slots` concurrency slots for as many queues as `weights` has.
    pub(super) fn new(slots: usize, order: QueueOrder, weights: Vec<u32>) -> Arc<Self> {
        let state = State {
            free: slots,
            waiting: weights.iter().map(|_| VecDeque::new()).collect(),
            rng: rand::make_rng::<SmallRng>(),
        };
        Arc::new(Self { state: Mutex::new(state), order, weights })
    }

    /// A slot for a delivery of the queue numbered `queue`: at once if one
    /// is free, otherwise when a slot frees and the order picks this queue
    /// (among this queue's waiting deliveries, the oldest first).
    ///
    /// The wait counts from this call, not from the first poll of the
    /// future: a delivery is ready the moment it asks.
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe: a slot handed to a delivery that stopped waiting goes
    /// back to the arbiter, to the next waiting delivery.
    pub(super) fn slot(self: &Arc<Self>, queue: usize) -> impl Future<Output = Slot> + Send + 'static {
        let mut asked = self.take_or_wait(queue);
        let arbiter = Arc::clone(self);
        async move {
            loop {
                let handed = match asked {
                    Ok(slot) => return slot,
                    Err(handed) => handed,
                };
                // The sender goes only with a slot while this wait lives;
                // should it go without one, ask again.
                match handed.await {
                    Ok(slot) => return slot,
                    Err(_) => asked = arbiter.take_or_wait(queue),
                }
            }
        }
    }

    /// A free slot, or a wait for one queued behind `queue`'s other waits.
    fn take_or_wait(self: &Arc<Self>, queue: usize) -> Result<Slot, oneshot::Receiver<Slot>> {
        let mut state = lock(&self.state);
        if state.free > 0 {
            state.free -= 1;
            return Ok(Slot { arbiter: Some(Arc::clone(self)) });
        }
        let (sender, handed) = oneshot::channel();
        state.waiting[queue].push_back(sender);
        Err(handed)
    }

    /// Gives a freed slot to a waiting delivery of the queue the order
    /// picks, or counts it free.
    fn release(self: Arc<Self>) {
        let mut slot = Slot { arbiter: Some(Arc::clone(&self)) };
        let mut state = lock(&self.state);
        let State { free, waiting, rng } = &mut *state;
        waiting.iter_mut().for_each(drop_stopped);
        while let Some(queue) = self.order.pick(&self.weights, |queue| !waiting[queue].is_empty(), rng) {
            let Some(sender) = waiting[queue].pop_front() else { break };
            drop_stopped(&mut waiting[queue]);
            match sender.send(slot) {
                Ok(()) => return,
                // It stopped waiting meanwhile: the next.
                Err(back) => slot = back,
            }
        }
        *free += 1;
        // Counted free: dropping it must not release it again (nor lock).
        slot.arbiter = None;
    }
}

/// Drops the waits at the front of `waits` whose deliveries stopped
/// waiting, so that a queue counts as ready only for a live one.
fn drop_stopped(waits: &mut VecDeque<oneshot::Sender<Slot>>) {
    while waits.front().is_some_and(oneshot::Sender::is_closed) {
        waits.pop_front();
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(arbiter) = self.arbiter.take() {
            arbiter.release();
        }
    }
}

impl fmt::Debug for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Slot")
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{Arbiter, QueueOrder};

    #[tokio::test]
    async fn a_freed_slot_goes_to_the_first_waiting_queue_under_strict_order() {
        let arbiter = Arbiter::new(1, QueueOrder::Strict, vec![1, 1]);
        let held = arbiter.slot(1).await;
        let second = tokio::spawn({
            let arbiter = arbiter.clone();
            async move { arbiter.slot(1).await }
        });
        let first = tokio::spawn({
            let arbiter = arbiter.clone();
            async move { arbiter.slot(0).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(held);
        let first = tokio::time::timeout(Duration::from_secs(1), first).await.unwrap().unwrap();
        assert!(!second.is_finished(), "one slot, and it went to queue 0");
        drop(first);
        let second = tokio::time::timeout(Duration::from_secs(1), second).await.unwrap().unwrap();
        drop(second);
        assert_eq!(super::lock(&arbiter.state).free, 1);
    }

    #[tokio::test]
    async fn every_waiting_delivery_of_the_first_queue_goes_before_the_second_under_strict_order() {
        let arbiter = Arbiter::new(2, QueueOrder::Strict, vec![1, 1]);
        let held = [arbiter.slot(0).await, arbiter.slot(0).await];
        // One delivery of the second queue waits, then two of the first.
        let later = arbiter.slot(1);
        let first = [arbiter.slot(0), arbiter.slot(0)];
        drop(held);
        let [one, two] = first;
        let (one, two) = tokio::time::timeout(Duration::from_secs(1), async { (one.await, two.await) }).await.unwrap();
        assert_eq!(super::lock(&arbiter.state).waiting[1].len(), 1, "the second queue still waits");
        drop(one);
        let later = tokio::time::timeout(Duration::from_secs(1), later).await.unwrap();
        drop((two, later));
        assert_eq!(super::lock(&arbiter.state).free, 2);
    }

    #[tokio::test]
    async fn a_slot_handed_to_a_wait_that_was_dropped_is_not_lost() {
        let arbiter = Arbiter::new(1, QueueOrder::Weighted, vec![1, 1]);
        let held = arbiter.slot(0).await;
        // A wait dropped before the slot freed…
        let _ = tokio::time::timeout(Duration::from_millis(10), arbiter.slot(1)).await;
        drop(held);
        // …left the slot free for the next.
        assert_eq!(super::lock(&arbiter.state).free, 1);
        let again = tokio::time::timeout(Duration::from_secs(1), arbiter.slot(1)).await.unwrap();
        drop(again);
        assert_eq!(super::lock(&arbiter.state).free, 1);
    }
}
