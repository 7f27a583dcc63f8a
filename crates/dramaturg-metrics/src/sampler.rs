//! The queue depth gauges: a task of the worker that asks the broker for
//! each queue's counts at an interval.

use std::sync::Arc;
use std::time::Duration;

use dramaturg_core::{App, QueueStats};
use metrics::{counter, gauge, Counter, Gauge};

use crate::every::Every;

use crate::names::{QUEUE, QUEUE_MESSAGES, QUEUE_SAMPLE_ERRORS, STATE, STATES};

/// Samples every queue of `app` now and then every `interval`, until the
/// returned task is stopped.
pub(crate) fn start(app: &App, interval: Duration) -> Every {
    let queues: Arc<[QueueGauges]> = app.queues().iter().map(|queue| QueueGauges::new(queue)).collect();
    let app = app.clone();
    Every::start(interval, move || {
        let (app, queues) = (app.clone(), Arc::clone(&queues));
        async move {
            for queue in queues.iter() {
                queue.sample(&app).await;
            }
        }
    })
}

/// The gauges of one queue.
struct QueueGauges {
    queue: String,
    /// In the order of [`STATES`].
    states: [Gauge; STATES.len()],
    errors: Counter,
}

impl QueueGauges {
    fn new(queue: &str) -> Self {
        Self {
            queue: queue.to_owned(),
            states: STATES.map(|state| gauge!(QUEUE_MESSAGES, QUEUE => queue.to_owned(), STATE => state)),
            errors: counter!(QUEUE_SAMPLE_ERRORS, QUEUE => queue.to_owned()),
        }
    }

    async fn sample(&self, app: &App) {
        match app.stats(&self.queue).await {
            Ok(stats) => {
                let QueueStats { ready, delayed, in_flight, dead, .. } = stats;
                for (gauge, count) in self.states.iter().zip([ready, delayed, in_flight, dead]) {
                    gauge.set(count as f64);
                }
            }
            Err(error) => {
                self.errors.increment(1);
                tracing::warn!(queue = %self.queue, %error, "could not sample the queue's depth");
            }
        }
    }
}
