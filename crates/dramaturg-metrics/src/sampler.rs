//! The queue depth gauges: a task of the worker that asks the broker for
//! each queue's counts at an interval.

use std::time::Duration;

use dramaturg_core::{App, QueueStats};
use metrics::{counter, gauge, Counter, Gauge};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::names::{QUEUE, QUEUE_MESSAGES, QUEUE_SAMPLE_ERRORS, STATE, STATES};

/// A running sampler of an app's queues.
#[derive(Debug)]
pub(crate) struct Sampler {
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Sampler {
    /// Samples every queue of `app` now and then every `interval`, until
    /// stopped.
    pub(crate) fn start(app: &App, interval: Duration) -> Self {
        let stop = CancellationToken::new();
        let queues: Vec<QueueGauges> = app.queues().iter().map(|queue| QueueGauges::new(queue)).collect();
        let app = app.clone();
        let stopped = stop.clone();
        let task = tokio::spawn(async move {
            let mut ticks = tokio::time::interval(interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = stopped.cancelled() => return,
                    _ = ticks.tick() => {}
                }
                for queue in &queues {
                    tokio::select! {
                        () = stopped.cancelled() => return,
                        () = queue.sample(&app) => {}
                    }
                }
            }
        });
        Self { stop, task }
    }

    /// Stops sampling and waits for the task to end.
    pub(crate) async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
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
