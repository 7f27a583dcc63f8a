//! Per-queue settings of a worker — a concurrency limit of a queue's own
//! beside the worker's, and a weight — and their check when the worker
//! starts.

use std::sync::Arc;

use tokio::sync::Semaphore;

use super::QueueOrder;

/// Settings of one queue a [`Worker`](super::Worker) consumes; give them
/// with [`Worker::queue`](super::Worker::queue).
///
/// # Examples
///
/// ```
/// use dramaturg_core::worker::QueueOptions;
///
/// // At most 4 messages of this queue at once, and three times the share
/// // of free slots of a queue of weight 1.
/// let reports = QueueOptions::new().concurrency(4).weight(3);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueOptions {
    concurrency: Option<usize>,
    weight: Option<u32>,
}

impl QueueOptions {
    /// No settings of the queue's own: it shares the worker's concurrency
    /// with every other queue, at weight 1.
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs at most `n` messages of this queue at once, within the worker's
    /// own [concurrency](super::Worker::concurrency) (which still bounds
    /// all queues together). The queue's consumer then holds at most `2n`
    /// deliveries not yet settled (`n` if it is the worker's only queue):
    /// up to `n` running, and as many fetched ahead, ready for the next
    /// free slots. Zero is refused when the worker starts
    /// ([`WorkerConfigError::ZeroConcurrency`]).
    #[must_use]
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = Some(n);
        self
    }

    /// The queue's weight under [`QueueOrder::Weighted`] (default 1): a
    /// free slot goes to it, among the ready queues, with probability
    /// weight / (sum of the ready queues' weights). Zero is refused when
    /// the worker starts ([`WorkerConfigError::ZeroWeight`]), and so is a
    /// weight under [`QueueOrder::Strict`], which has no use for it
    /// ([`WorkerConfigError::WeightWithStrictOrder`]).
    #[must_use]
    pub fn weight(mut self, weight: u32) -> Self {
        self.weight = Some(weight);
        self
    }
}

/// A worker setting that cannot work; the worker did not start
/// ([`WorkerError::Config`](super::WorkerError::Config)).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WorkerConfigError {
    /// A concurrency of zero: for the worker
    /// ([`Worker::concurrency`](super::Worker::concurrency); `queue` is
    /// `None`) or for one queue ([`QueueOptions::concurrency`]). Nothing
    /// would ever run.
    #[error("{}: a concurrency of 0 would run nothing", which(.queue.as_deref()))]
    ZeroConcurrency {
        /// The queue, or `None` for the worker's own concurrency.
        queue: Option<String>,
    },
    /// A prefetch of zero ([`Worker::prefetch`](super::Worker::prefetch)):
    /// nothing would ever be fetched.
    #[error("the worker: a prefetch of 0 would fetch nothing")]
    ZeroPrefetch,
    /// A weight of zero ([`QueueOptions::weight`]): the queue would never
    /// get a slot while another has a message ready. Leave the queue out
    /// of [`Worker::queues`](super::Worker::queues), or pause it.
    #[error("queue {queue:?}: a weight of 0 would starve it; leave the queue out or pause it instead")]
    ZeroWeight {
        /// The queue.
        queue: String,
    },
    /// A weight set under [`QueueOrder::Strict`], which goes by the order of
    /// the queues and ignores weights.
    #[error(
        "queue {queue:?}: a weight has no effect under the strict queue order; list the queues in the order wanted"
    )]
    WeightWithStrictOrder {
        /// The queue.
        queue: String,
    },
    /// Settings for a queue that the worker does not consume: a typo, or a
    /// queue missing from [`Worker::queues`](super::Worker::queues). Queue
    /// names are the broker's, with the app's queue prefix.
    #[error("settings for queue {queue:?}, which this worker does not consume (it consumes {consumed:?})")]
    UnknownQueue {
        /// The queue the settings are for.
        queue: String,
        /// The queues the worker consumes.
        consumed: Vec<String>,
    },
    /// A queue listed twice in [`Worker::queues`](super::Worker::queues).
    #[error("queue {queue:?} is listed twice")]
    DuplicateQueue {
        /// The queue.
        queue: String,
    },
    /// An empty queue name in [`Worker::queues`](super::Worker::queues):
    /// no broker has such a queue.
    #[error("a queue name cannot be empty")]
    EmptyQueueName,
}

fn which(queue: Option<&str>) -> String {
    match queue {
        Some(queue) => format!("queue {queue:?}"),
        None => "the worker".to_owned(),
    }
}

/// One consumed queue as the worker runs it.
#[derive(Debug)]
pub(super) struct Lane {
    /// Its index: the arbiter's number for it.
    pub(super) index: usize,
    /// The broker's name of the queue.
    pub(super) name: String,
    /// Its own concurrency limit, if it has one.
    pub(super) limit: Option<Arc<Semaphore>>,
    /// How many unsettled deliveries its consumer may hold.
    pub(super) prefetch: usize,
    /// Its weight under the weighted order.
    pub(super) weight: u32,
}

impl Lane {
    /// The queue and its settings, for the worker's start-up line.
    pub(super) fn describe(&self) -> String {
        let limit = self.limit.as_ref().map_or_else(|| "-".to_owned(), |limit| limit.available_permits().to_string());
        format!("{} (limit {limit}, weight {}, prefetch {})", self.name, self.weight, self.prefetch)
    }
}

/// The worker's settings that [`lanes`] checks.
pub(super) struct Settings<'a> {
    pub(super) concurrency: usize,
    pub(super) prefetch: Option<usize>,
    pub(super) order: QueueOrder,
    pub(super) options: &'a [(String, QueueOptions)],
}

/// Checks the settings and lays out the consumed `queues`, in order.
///
/// A queue's prefetch is what it can run at once (the worker's
/// concurrency, or its own limit if lower), unless the worker's prefetch
/// is set; a queue of its own limit never holds more than that limit.
/// When the worker consumes several queues, each may hold as many
/// deliveries again, fetched ahead and waiting for a slot (Dramatiq's
/// default prefetch, twice the worker threads). A queue whose consumer
/// holds only what runs has nothing ready when a slot frees, and loses it
/// to the other queues; one that holds only a few more runs out whenever
/// slots free faster than a fetch returns, and the order does not hold
/// (measured in `docs/design.md`). With one queue there is nothing to
/// arbitrate, and deliveries held ahead would only keep them from other
/// workers of the fleet.
pub(super) fn lanes(queues: Vec<String>, settings: &Settings<'_>) -> Result<Vec<Lane>, WorkerConfigError> {
    if settings.concurrency == 0 {
        return Err(WorkerConfigError::ZeroConcurrency { queue: None });
    }
    if settings.prefetch == Some(0) {
        return Err(WorkerConfigError::ZeroPrefetch);
    }
    for (queue, _) in settings.options {
        if !queues.contains(queue) {
            return Err(WorkerConfigError::UnknownQueue { queue: queue.clone(), consumed: queues });
        }
    }
    for (index, queue) in queues.iter().enumerate() {
        if queue.is_empty() {
            return Err(WorkerConfigError::EmptyQueueName);
        }
        if queues[..index].contains(queue) {
            return Err(WorkerConfigError::DuplicateQueue { queue: queue.clone() });
        }
    }
    let several = queues.len() > 1;
    queues
        .into_iter()
        .enumerate()
        .map(|(index, name)| {
            // The last settings given for a queue replace earlier ones.
            let options =
                settings.options.iter().rev().find(|(queue, _)| *queue == name).map(|(_, o)| *o).unwrap_or_default();
            let weight = match (options.weight, settings.order) {
                (Some(0), _) => return Err(WorkerConfigError::ZeroWeight { queue: name }),
                (Some(_), QueueOrder::Strict) => return Err(WorkerConfigError::WeightWithStrictOrder { queue: name }),
                (weight, _) => weight.unwrap_or(1),
            };
            if options.concurrency == Some(0) {
                return Err(WorkerConfigError::ZeroConcurrency { queue: Some(name) });
            }
            let runs = options.concurrency.map_or(settings.concurrency, |n| n.min(settings.concurrency));
            // What the queue may hold: what it runs, and as much again
            // fetched ahead in a worker of several queues.
            let held = |runs: usize| if several { runs.saturating_mul(2) } else { runs };
            let prefetch = match (settings.prefetch, options.concurrency) {
                (Some(prefetch), Some(limit)) => prefetch.min(held(limit)),
                (Some(prefetch), None) => prefetch,
                (None, _) => held(runs),
            };
            let limit = options.concurrency.map(|n| Arc::new(Semaphore::new(n)));
            Ok(Lane { index, name, limit, prefetch, weight })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::{lanes, QueueOptions, QueueOrder, Settings, WorkerConfigError};

    fn queues() -> Vec<String> {
        vec!["mail".to_owned(), "reports".to_owned()]
    }

    fn check(options: &[(String, QueueOptions)], order: QueueOrder) -> Result<(), WorkerConfigError> {
        let settings = Settings { concurrency: 8, prefetch: None, order, options };
        lanes(queues(), &settings).map(|_| ())
    }

    #[test]
    fn prefetch_is_twice_what_a_queue_can_run() {
        let options = [("reports".to_owned(), QueueOptions::new().concurrency(2).weight(3))];
        let settings = Settings { concurrency: 8, prefetch: None, order: QueueOrder::Weighted, options: &options };
        let lanes = lanes(queues(), &settings).unwrap();
        assert_eq!((lanes[0].prefetch, lanes[0].weight, lanes[0].limit.is_none()), (16, 1, true));
        assert_eq!((lanes[1].prefetch, lanes[1].weight), (4, 3));
        assert_eq!(lanes[1].limit.as_ref().unwrap().available_permits(), 2);
        // An explicit prefetch applies, but not beyond twice a queue's own limit.
        let settings = Settings { concurrency: 8, prefetch: Some(50), order: QueueOrder::Weighted, options: &options };
        let lanes = super::lanes(queues(), &settings).unwrap();
        assert_eq!((lanes[0].prefetch, lanes[1].prefetch), (50, 4));
    }

    #[test]
    fn the_only_queue_holds_no_more_than_it_runs() {
        let options = [("mail".to_owned(), QueueOptions::new().concurrency(3))];
        let settings = Settings { concurrency: 8, prefetch: None, order: QueueOrder::Weighted, options: &options };
        let lanes = lanes(vec!["mail".to_owned()], &settings).unwrap();
        assert_eq!(lanes[0].prefetch, 3);
        let settings = Settings { concurrency: 8, prefetch: None, order: QueueOrder::Weighted, options: &[] };
        assert_eq!(super::lanes(vec!["mail".to_owned()], &settings).unwrap()[0].prefetch, 8);
    }

    #[test]
    fn settings_that_cannot_work_are_refused() {
        let zero = [("mail".to_owned(), QueueOptions::new().concurrency(0))];
        assert_eq!(
            check(&zero, QueueOrder::Weighted),
            Err(WorkerConfigError::ZeroConcurrency { queue: Some("mail".into()) })
        );
        let zero = [("mail".to_owned(), QueueOptions::new().weight(0))];
        assert_eq!(check(&zero, QueueOrder::Weighted), Err(WorkerConfigError::ZeroWeight { queue: "mail".into() }));
        let weighted = [("mail".to_owned(), QueueOptions::new().weight(2))];
        assert_eq!(
            check(&weighted, QueueOrder::Strict),
            Err(WorkerConfigError::WeightWithStrictOrder { queue: "mail".into() })
        );
        let unknown = [("mial".to_owned(), QueueOptions::new().concurrency(1))];
        assert_eq!(
            check(&unknown, QueueOrder::Weighted),
            Err(WorkerConfigError::UnknownQueue { queue: "mial".into(), consumed: queues() })
        );
        let settings = Settings { concurrency: 0, prefetch: None, order: QueueOrder::Weighted, options: &[] };
        assert_eq!(lanes(queues(), &settings).err(), Some(WorkerConfigError::ZeroConcurrency { queue: None }));
        let settings = Settings { concurrency: 1, prefetch: Some(0), order: QueueOrder::Weighted, options: &[] };
        assert_eq!(lanes(queues(), &settings).err(), Some(WorkerConfigError::ZeroPrefetch));
        let twice = vec!["mail".to_owned(), "mail".to_owned()];
        // (A queue listed twice is refused before its prefetch matters.)
        let settings = Settings { concurrency: 1, prefetch: None, order: QueueOrder::Weighted, options: &[] };
        assert_eq!(lanes(twice, &settings).err(), Some(WorkerConfigError::DuplicateQueue { queue: "mail".into() }));
        let empty = vec!["mail".to_owned(), String::new()];
        assert_eq!(lanes(empty, &settings).err(), Some(WorkerConfigError::EmptyQueueName));
    }
}
