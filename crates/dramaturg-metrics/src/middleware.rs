//! The `metrics` middleware: counts, times and gauges around every
//! message, and the queue depth sampler of each worker.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use dramaturg_core::sync::lock;
use dramaturg_core::{App, Bounded, Context, Message, Middleware, Outcome};

use crate::every::Every;
use crate::flush::FLUSH_INTERVAL;
use crate::handles::Handles;
use crate::names::{self, REJECTED, UNKNOWN};

/// The middleware's name in the stack.
pub const NAME: &str = "metrics";

/// How often a worker samples its queues' depths unless told otherwise.
pub const DEFAULT_SAMPLE_INTERVAL: Duration = Duration::from_secs(10);

/// Records the metrics listed in [`names`](crate::names) through the
/// [`metrics`] facade, into whatever recorder the process installed
/// (none: nothing is recorded, at the cost of a few no-op calls per
/// message).
///
/// It does not wrap the chain: it observes every attempt from the worker
/// ([`Middleware::on_attempt_start`], [`Middleware::on_attempt_end`]),
/// so its place in the stack does not matter and it sees every end of
/// every attempt (time-limit expiries and aborts included), and costs no
/// future of its own per message.
///
/// Install the recorder before the worker starts: the handles of the
/// app's actors are taken from the recorder when a worker starts (others
/// at their first message), and kept.
///
/// It counts on each runtime thread apart and writes into the recorder at
/// a [`flush`](crate::flush()): before each scrape of the Prometheus
/// endpoint, and every [`FLUSH_INTERVAL`] while a worker runs and when it
/// stops.
///
/// When a worker starts, the middleware also starts sampling the depth of
/// every queue of the app (see [`QUEUE_MESSAGES`](crate::names::QUEUE_MESSAGES))
/// every [`DEFAULT_SAMPLE_INTERVAL`], until the worker stops.
#[derive(Debug)]
pub struct Metrics {
    handles: Arc<Handles>,
    sample_every: Option<Duration>,
    /// A running worker's sampler (if sampling) and flusher.
    tasks: Mutex<Option<(Option<Every>, Every)>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// The middleware, sampling queue depths every
    /// [`DEFAULT_SAMPLE_INTERVAL`].
    pub fn new() -> Self {
        let handles = Arc::new(Handles::default());
        crate::flush::register(&handles);
        Self { handles, sample_every: Some(DEFAULT_SAMPLE_INTERVAL), tasks: Mutex::default() }
    }

    /// Samples queue depths every `interval` instead (`None`: never, for a
    /// fleet where one process samples them; zero counts as `None`).
    #[must_use]
    pub fn sample_queues_every(mut self, interval: Option<Duration>) -> Self {
        self.sample_every = interval.filter(|i| !i.is_zero());
        self
    }
}

/// How long `message` waited from when it fell due until `now_ms`.
fn start_delay(message: &Message, now_ms: u64) -> Duration {
    let due_ms = message.enqueued_at_ms.saturating_add(message.send_delay().map_or(0, |d| d.as_millis() as u64));
    Duration::from_millis(now_ms.saturating_sub(due_ms))
}

#[async_trait]
impl Middleware for Metrics {
    fn name(&self) -> &'static str {
        NAME
    }

    fn wraps(&self) -> bool {
        false
    }

    fn observes_attempts(&self) -> bool {
        true
    }

    fn on_attempt_start(&self, ctx: &Context) {
        self.handles.get(ctx.actor(), ctx.queue()).start();
    }

    fn on_attempt_end(&self, ctx: &Context, outcome: &Outcome) {
        let handles = self.handles.get(ctx.actor(), ctx.queue());
        let (duration, start_delay) = match outcome {
            Outcome::Postponed(..) => (None, None),
            _ => {
                let elapsed = ctx.started_at().elapsed();
                // A retry does not say when it fell due.
                let start_delay = (ctx.retries() == 0).then(|| {
                    // When it started, by the broker's clock: now, less how
                    // long it ran.
                    let started_ms = ctx.app().broker().now_ms().saturating_sub(dramaturg_core::time::millis(elapsed));
                    start_delay(ctx.message(), started_ms).as_secs_f64()
                });
                (Some(elapsed.as_secs_f64()), start_delay)
            }
        };
        handles.end(outcome.label(), duration, start_delay, matches!(outcome, Outcome::Failed(_)));
    }

    async fn on_rejected(&self, app: &App, message: &Message, _reason: &Bounded) {
        // Names from a message are labels only when the app knows them.
        let actor = if app.actor(&message.actor).is_some() { message.actor.as_str() } else { UNKNOWN };
        let queue = if app.queues().contains(&message.queue) { message.queue.as_str() } else { UNKNOWN };
        self.handles.get(actor, queue).rejected(REJECTED);
    }

    async fn on_worker_start(&self, app: &App) {
        names::describe();
        self.handles.register_app(app);
        let mut tasks = lock(&self.tasks);
        if tasks.is_none() {
            let sampler = self.sample_every.map(|interval| crate::sampler::start(app, interval));
            *tasks = Some((sampler, crate::flush::start(Arc::clone(&self.handles), FLUSH_INTERVAL)));
        }
    }

    async fn on_worker_stop(&self, _app: &App) {
        let tasks = lock(&self.tasks).take();
        if let Some((sampler, flusher)) = tasks {
            if let Some(sampler) = sampler {
                sampler.stop().await;
            }
            flusher.stop().await;
        }
        self.handles.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_start_delay_counts_from_the_eta_of_a_delayed_message() {
        let mut message = Message::new("q", "a", Default::default());
        message.enqueued_at_ms = 10_000;
        assert_eq!(start_delay(&message, 10_250), Duration::from_millis(250));
        message.options.extra.insert(dramaturg_core::ETA.name().to_owned(), 12_000.into());
        assert_eq!(start_delay(&message, 12_100), Duration::from_millis(100));
        // A clock behind the due time: no negative wait.
        assert_eq!(start_delay(&message, 11_000), Duration::ZERO);
    }
}
