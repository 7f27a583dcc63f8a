//! Which ready queue a free concurrency slot goes to: the queue order, a
//! policy apart from the [arbiter](super::arbiter) that applies it.

use rand::{Rng, RngExt};

/// How a [`Worker`](super::Worker) that consumes several queues picks the
/// queue a free concurrency slot claims from next, among the queues that
/// have a delivery ready (fetched, waiting for a slot). Set it with
/// [`Worker::queue_order`](super::Worker::queue_order).
///
/// A queue is ready when its consumer has handed the worker a delivery and
/// the queue is below its own limit
/// ([`QueueOptions::concurrency`](super::QueueOptions::concurrency)); a
/// queue that is empty, paused or at its limit takes no part, so a free
/// slot never waits for it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum QueueOrder {
    /// Each free slot goes to a ready queue at random, with probability
    /// proportional to its [weight](super::QueueOptions::weight) (default 1
    /// each: every ready queue alike), as in Sidekiq's weighted queues. A
    /// flood on one queue cannot starve another: a queue with a message
    /// ready gets one of the next few free slots. The default.
    #[default]
    Weighted,
    /// Each free slot goes to the first ready queue in the order the
    /// worker lists its queues ([`Worker::queues`](super::Worker::queues),
    /// or the app's registration order), as in Sidekiq's strict order: a
    /// later queue runs only while every earlier one has nothing ready (or
    /// is at its own limit), so a busy first queue starves the others.
    Strict,
}

impl QueueOrder {
    /// The queue (an index into `weights`) that a free slot goes to, among
    /// those for which `ready` holds; `None` when none is ready.
    pub(super) fn pick<R: Rng + ?Sized>(
        self,
        weights: &[u32],
        ready: impl Fn(usize) -> bool,
        rng: &mut R,
    ) -> Option<usize> {
        match self {
            Self::Strict => (0..weights.len()).find(|&queue| ready(queue)),
            Self::Weighted => {
                let total: u64 =
                    (0..weights.len()).filter(|&queue| ready(queue)).map(|queue| u64::from(weights[queue])).sum();
                if total == 0 {
                    return None;
                }
                let mut point = rng.random_range(0..total);
                (0..weights.len()).filter(|&queue| ready(queue)).find(|&queue| {
                    let weight = u64::from(weights[queue]);
                    if point < weight {
                        return true;
                    }
                    point -= weight;
                    false
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use rand::rngs::SmallRng;
    use rand::SeedableRng;

    use super::QueueOrder;

    #[test]
    fn strict_picks_the_first_ready_queue() {
        let mut rng = SmallRng::seed_from_u64(1);
        let ready = [false, true, true];
        assert_eq!(QueueOrder::Strict.pick(&[1, 5, 9], |q| ready[q], &mut rng), Some(1));
        assert_eq!(QueueOrder::Strict.pick(&[1, 5, 9], |_| false, &mut rng), None);
    }

    #[test]
    fn weighted_picks_in_proportion_to_the_weights_of_ready_queues() {
        let mut rng = SmallRng::seed_from_u64(7);
        let mut picked = [0u32; 3];
        // The middle queue is not ready: it is never picked, and the other
        // two share the slots 3:1.
        let ready = [true, false, true];
        for _ in 0..40_000 {
            let queue = QueueOrder::Weighted.pick(&[3, 100, 1], |q| ready[q], &mut rng).unwrap();
            picked[queue] += 1;
        }
        assert_eq!(picked[1], 0);
        let ratio = f64::from(picked[0]) / f64::from(picked[2]);
        assert!((2.8..3.2).contains(&ratio), "3:1 expected, got {picked:?}");
        assert_eq!(QueueOrder::Weighted.pick(&[3, 1], |_| false, &mut rng), None);
    }

    #[test]
    fn weighted_with_one_ready_queue_always_picks_it() {
        let mut rng = SmallRng::seed_from_u64(3);
        for _ in 0..100 {
            assert_eq!(QueueOrder::Weighted.pick(&[1, 1000], |q| q == 0, &mut rng), Some(0));
        }
    }
}
