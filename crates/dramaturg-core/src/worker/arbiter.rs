//! The worker's concurrency slots, handed out to the queues that have a
//! delivery ready, by the [queue order](super::QueueOrder).
//!
//! Each queue's pump fetches a delivery first and then asks for a slot, so
//! a queue with nothing to run never holds one. A slot that frees while
//! pumps wait goes straight to the waiting queue the order picks; one that
//! frees while none waits is counted free, and the next pump to ask takes
//! it at once.

use std::fmt;
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
    /// Each queue's pump waiting for a slot, by the queue's index (one pump
    /// per queue).
    waiting: Vec<Option<oneshot::Sender<Slot>>>,
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
        let state =
            State { free: slots, waiting: weights.iter().map(|_| None).collect(), rng: rand::make_rng::<SmallRng>() };
        Arc::new(Self { state: Mutex::new(state), order, weights })
    }

    /// A slot for a delivery of the queue numbered `queue`: at once if one
    /// is free, otherwise when a slot frees and the order picks this queue.
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe: a slot handed to a pump that stopped waiting goes back
    /// to the arbiter, to the next waiting queue.
    pub(super) async fn slot(self: &Arc<Self>, queue: usize) -> Slot {
        loop {
            let handed = {
                let mut state = lock(&self.state);
                if state.free > 0 {
                    state.free -= 1;
                    return Slot { arbiter: Some(Arc::clone(self)) };
                }
                let (sender, handed) = oneshot::channel();
                state.waiting[queue] = Some(sender);
                handed
            };
            // The sender goes only with a slot, or when this queue waits
            // anew (a dropped earlier wait): ask again then.
            if let Ok(slot) = handed.await {
                return slot;
            }
        }
    }

    /// Gives a freed slot to the waiting queue the order picks, or counts
    /// it free.
    fn release(self: Arc<Self>) {
        let mut slot = Slot { arbiter: Some(Arc::clone(&self)) };
        let mut state = lock(&self.state);
        let State { free, waiting, rng } = &mut *state;
        loop {
            let ready = |queue: usize| waiting[queue].as_ref().is_some_and(|sender| !sender.is_closed());
            let Some(queue) = self.order.pick(&self.weights, ready, rng) else { break };
            let Some(sender) = waiting[queue].take() else { break };
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
