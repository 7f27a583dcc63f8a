//! The worker: consumes the app's queues, runs messages through the
//! middleware stack concurrently, settles every delivery exactly once, and
//! shuts down gracefully.
//!
//! # Shutdown
//!
//! On [`ShutdownHandle::shutdown`] (or SIGTERM/SIGINT under
//! [`Worker::run_until_signal`]) the worker
//!
//! 1. stops consuming, and returns messages it fetched but did not start to
//!    the broker;
//! 2. lets running messages finish, for at most the grace period;
//! 3. then interrupts what still runs: async actors are dropped at their next
//!    `.await` and their messages return to their queues unchanged; blocking
//!    actors, whose threads cannot be stopped, are told through
//!    [`Context::check`] and waited for, for at most the blocking grace
//!    ([`Worker::blocking_grace`], default 8 s): what finishes is settled as
//!    it finished (a success is acknowledged, not repeated), what stops
//!    because it was told to is returned unchanged;
//! 4. returns the messages of blocking threads still running after that to
//!    their queues, counts them in [`WorkerReport::abandoned_threads`], and
//!    runs the middleware's stop hooks and returns a [`WorkerReport`].
//!
//! A thread that was abandoned runs on until its handler returns — and a
//! tokio runtime waits for it when it is dropped. Its message is already
//! back in its queue, so the process should end now rather than let it
//! finish work another worker will repeat: `run_until_signal` exits the
//! process itself in that case (status 0, after the report is logged);
//! callers of `run` should do the same when `abandoned_threads` is not
//! zero.
//!
//! Under `run_until_signal`, a second signal exits the process at once;
//! messages in flight then come back through the broker's own redelivery
//! (the in-memory broker loses them with the process).
//!
//! # Queues: concurrency, weights and order
//!
//! One worker consumes several queues. Its [concurrency](Worker::concurrency)
//! bounds all of them together; a queue may have a limit of its own beside
//! it ([`QueueOptions::concurrency`]), and a free slot goes to one of the
//! queues that have a delivery ready by the [`QueueOrder`]: weighted random
//! (the default; [`QueueOptions::weight`]) or strict. Each queue's consumer
//! fetches a delivery first and then waits for a slot, so a queue with
//! nothing to run holds no slot, and a flood on one queue cannot keep
//! another's message waiting beyond a few free slots.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use tokio::sync::{watch, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::bounded::Bounded;
use crate::broker::{Consumer, Delivery, Settled, Settlement};
use crate::error::BrokerError;
use crate::error_record::RecordLimits;
use crate::failure::Failure;
use crate::isolation::{Isolation, Pool};
use crate::middleware::Next;
use crate::outcome::{NextAttempt, Outcome};
use crate::store::StoreWrite;
use crate::watchdog::{Lease, Watchdog};
use crate::{App, Context, Message};

mod arbiter;
mod order;
mod queues;
mod tally;

use arbiter::{Arbiter, Permits};
pub use order::QueueOrder;
use queues::Lane;
pub use queues::{QueueOptions, WorkerConfigError};

/// How often a worker publishes its outcomes per queue to the broker
/// ([`QueueAdmin::record_outcomes`](crate::QueueAdmin::record_outcomes)),
/// as deltas since the last publish; it publishes once more when it stops.
pub const OUTCOMES_EVERY: Duration = Duration::from_secs(5);

/// How long interrupted messages get to settle after the grace period.
const SETTLE_AFTER_INTERRUPT: Duration = Duration::from_secs(2);
/// How long blocking handlers still running after the grace period are
/// waited for by default: with the default 20 s grace, inside the 30 s that
/// orchestrators usually allow.
const BLOCKING_GRACE: Duration = Duration::from_secs(8);
/// Longest wait between attempts to consume from a broker that failed.
const MAX_CONSUME_BACKOFF: Duration = Duration::from_secs(5);
/// How long a settlement that fails for a transient reason (connection
/// lost, a read-only replica, a full server) is tried again. Fenced
/// settlement makes late retries safe: once the claim lapsed, the broker
/// answers `Stale` and changes nothing.
const SETTLE_RETRY_FOR: Duration = Duration::from_secs(120);
/// The least a retry that the broker could not schedule is held before it
/// goes back to its queue unchanged.
const MIN_UNSCHEDULED_RETRY_HOLD: Duration = Duration::from_secs(1);

/// Runs the app's actors. Configure it, then call [`Worker::run`] or
/// [`Worker::run_until_signal`].
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use dramaturg_core::{App, MemoryBroker, Worker};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let app = App::builder(MemoryBroker::new()).build().unwrap();
/// let worker = Worker::new(app).concurrency(16).grace_period(Duration::from_secs(5));
/// let shutdown = worker.shutdown_handle();
/// let running = tokio::spawn(worker.run());
/// shutdown.shutdown();
/// let report = running.await.unwrap().unwrap();
/// assert_eq!(report.succeeded, 0);
/// # }
/// ```
#[derive(Debug)]
pub struct Worker {
    app: App,
    concurrency: usize,
    prefetch: Option<usize>,
    grace_period: Duration,
    blocking_grace: Duration,
    blocked_threshold: Duration,
    isolation: Isolation,
    queues: Option<Vec<String>>,
    /// Settings of single queues, in the order given.
    queue_options: Vec<(String, QueueOptions)>,
    queue_order: QueueOrder,
    stop: CancellationToken,
    gauges: WorkerGauges,
}

/// Stops a running [`Worker`] gracefully. Clone it freely.
#[derive(Debug, Clone)]
pub struct ShutdownHandle {
    stop: CancellationToken,
}

impl ShutdownHandle {
    /// Starts the graceful shutdown; [`Worker::run`] returns when it is done.
    pub fn shutdown(&self) {
        self.stop.cancel();
    }

    /// Whether shutdown has been asked for.
    pub fn is_shutting_down(&self) -> bool {
        self.stop.is_cancelled()
    }
}

/// What a running [`Worker`] is doing now. Clone it freely; read it from
/// anywhere.
#[derive(Debug, Clone, Default)]
pub struct WorkerGauges {
    overrunning_threads: Arc<AtomicU64>,
}

impl WorkerGauges {
    /// Blocking threads running past the end of their attempt (a time
    /// limit, an abort) at this moment. Each holds a concurrency slot and
    /// its delivery until it returns.
    pub fn overrunning_threads(&self) -> u64 {
        self.overrunning_threads.load(Ordering::Relaxed)
    }
}

/// What a worker did, by outcome.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct WorkerReport {
    /// Messages whose actor succeeded.
    pub succeeded: u64,
    /// Messages that failed for good (dead-lettered).
    pub failed: u64,
    /// Messages deliberately not run (acknowledged).
    pub skipped: u64,
    /// Failed attempts that were scheduled for a retry.
    pub retried: u64,
    /// Messages put off without running and without using a retry
    /// ([`Outcome::Postponed`]): a rate or concurrency limit was full, and
    /// the message went back to the broker, due when a slot is likely free.
    pub postponed: u64,
    /// Messages returned to their queue unchanged (shutdown and the like).
    pub requeued: u64,
    /// Messages cancelled before they started or aborted while running.
    pub aborted: u64,
    /// Deliveries that were not valid messages for this app — undecodable
    /// bytes, unknown actors, arguments of the wrong shape, oversized
    /// messages (dead-lettered).
    pub rejected: u64,
    /// Settlements the broker refused as stale: the delivery's claim had
    /// lapsed (this worker stalled past its lease) and the message belonged
    /// to another consumer by then, so nothing was changed. The attempt
    /// that ran here may have duplicated another. Such a delivery is
    /// counted here only, not under its outcome: the other counts are of
    /// settlements that took effect, so summed over a fleet they count each
    /// message once.
    pub stale: u64,
    /// Middleware that failed (panicked) after the actor had succeeded.
    /// The message was settled as done all the same; each failure is also
    /// logged at error level.
    pub middleware_failures: u64,
    /// Blocking attempts whose thread ran on after the attempt had ended
    /// (past its time limit, or aborted), and isolated attempts whose child
    /// process had to be killed. The worker held the message's concurrency
    /// slot and delivery until the thread returned (the child exited), so
    /// that no retry ran beside it.
    pub overran_threads: u64,
    /// Blocking threads still running when the worker stopped waiting for
    /// them at shutdown (after the grace period and the blocking grace):
    /// their messages went back to their queues. End the process so that
    /// they do not finish work another worker will repeat.
    pub abandoned_threads: u64,
    /// Times a message's task held its runtime thread without yielding for
    /// longer than the threshold ([`Worker::blocked_runtime_threshold`]):
    /// an async actor that computes or calls blocking code.
    pub blocked_runtime: u64,
}

impl WorkerReport {
    /// Messages that went to the dead-letter queue.
    pub fn dead_lettered(&self) -> u64 {
        self.failed + self.rejected
    }

    /// Whether the process should end now rather than return from `main`:
    /// blocking threads still run ([`WorkerReport::abandoned_threads`]),
    /// and a tokio runtime waits for them when it is dropped, letting them
    /// finish work that is back in its queue. End it with
    /// `std::process::exit(0)`.
    pub fn must_exit(&self) -> bool {
        self.abandoned_threads > 0
    }
}

/// Why a worker did not run, or stopped short of a graceful shutdown.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WorkerError {
    /// The broker failed at start (declaring or consuming the queues), or
    /// the queues were not drained in time
    /// ([`Worker::run_until_drained`]).
    #[error(transparent)]
    Broker(#[from] BrokerError),
    /// The handlers for SIGTERM and SIGINT could not be installed.
    #[error("cannot listen for shutdown signals: {0}")]
    Signals(#[source] std::io::Error),
    /// A second SIGTERM or SIGINT arrived during the graceful shutdown: the
    /// worker stopped at once, leaving the messages it was processing to
    /// the broker's redelivery. End the process with
    /// [`WorkerError::exit_code`] (130).
    #[error("a second shutdown signal: stopped at once")]
    Forced,
    /// The worker's own task failed (it panicked).
    #[error("the worker task failed: {0}")]
    Task(String),
    /// A setting cannot work (a concurrency or weight of zero, settings
    /// for a queue the worker does not consume…); the worker did not start.
    #[error(transparent)]
    Config(#[from] WorkerConfigError),
}

impl WorkerError {
    /// The exit status for a process that ends on this error: 130 (as a
    /// shell reports SIGINT) for [`WorkerError::Forced`], 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        match self {
            Self::Forced => 130,
            _ => 1,
        }
    }
}

#[derive(Debug, Default)]
struct Counters {
    succeeded: AtomicU64,
    failed: AtomicU64,
    skipped: AtomicU64,
    retried: AtomicU64,
    postponed: AtomicU64,
    requeued: AtomicU64,
    aborted: AtomicU64,
    rejected: AtomicU64,
    stale: AtomicU64,
    middleware_failures: AtomicU64,
    overran_threads: AtomicU64,
    abandoned_threads: AtomicU64,
}

/// What a settled delivery is counted as, once its settlement applied.
#[derive(Debug, Clone, Copy)]
enum Count {
    Succeeded,
    Failed,
    Skipped,
    Retried,
    Postponed,
    Requeued,
    Aborted,
    Rejected,
}

impl Count {
    fn of(outcome: &Outcome) -> Self {
        match outcome {
            Outcome::Succeeded(_) => Count::Succeeded,
            Outcome::Failed(_) => Count::Failed,
            Outcome::Skipped(_) => Count::Skipped,
            Outcome::Retried(..) => Count::Retried,
            Outcome::Postponed(..) => Count::Postponed,
            Outcome::Requeue(_) => Count::Requeued,
            Outcome::Aborted(_) => Count::Aborted,
        }
    }
}

impl Counters {
    fn count(&self, count: Count) {
        let counter = match count {
            Count::Succeeded => &self.succeeded,
            Count::Failed => &self.failed,
            Count::Skipped => &self.skipped,
            Count::Retried => &self.retried,
            Count::Postponed => &self.postponed,
            Count::Requeued => &self.requeued,
            Count::Aborted => &self.aborted,
            Count::Rejected => &self.rejected,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn report(&self) -> WorkerReport {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        WorkerReport {
            succeeded: get(&self.succeeded),
            failed: get(&self.failed),
            skipped: get(&self.skipped),
            retried: get(&self.retried),
            postponed: get(&self.postponed),
            requeued: get(&self.requeued),
            aborted: get(&self.aborted),
            rejected: get(&self.rejected),
            stale: get(&self.stale),
            middleware_failures: get(&self.middleware_failures),
            overran_threads: get(&self.overran_threads),
            abandoned_threads: get(&self.abandoned_threads),
            blocked_runtime: 0,
        }
    }
}

/// What every task of a running worker shares.
struct Shared {
    app: App,
    /// The worker's concurrency slots, handed out by the queue order.
    arbiter: Arc<Arbiter>,
    tasks: TaskTracker,
    stop: CancellationToken,
    interrupt: CancellationToken,
    /// Cancelled when shutdown stops waiting for blocking threads.
    abandon: CancellationToken,
    /// Messages of blocking actors being processed, their threads included.
    blocking_running: AtomicU64,
    counters: Counters,
    /// Outcomes per queue since the last publish to the broker.
    tally: Arc<tally::Tally>,
    /// Stops the publisher of the tally, once every message is settled (so
    /// that its last publish counts them all).
    publishing: CancellationToken,
    gauges: WorkerGauges,
    watchdog: Option<Watchdog>,
    /// Child processes of isolated actors.
    children: Arc<Pool>,
}

impl Worker {
    /// A worker for `app`: 32 messages at a time, a 20-second grace period.
    pub fn new(app: App) -> Self {
        Self {
            app,
            concurrency: 32,
            prefetch: None,
            grace_period: Duration::from_secs(20),
            blocking_grace: BLOCKING_GRACE,
            blocked_threshold: Duration::from_secs(1),
            isolation: Isolation::new(),
            queues: None,
            queue_options: Vec::new(),
            queue_order: QueueOrder::default(),
            stop: CancellationToken::new(),
            gauges: WorkerGauges::default(),
        }
    }

    /// Runs at most `n` messages at once, of all its queues together
    /// (default 32). Zero is refused when the worker starts
    /// ([`WorkerConfigError::ZeroConcurrency`]).
    #[must_use]
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n;
        self
    }

    /// Lets each queue's consumer hold at most `n` deliveries not yet
    /// settled, running or fetched and waiting for a slot (default: what
    /// the queue can run at once; with several queues, twice that, so that
    /// each queue has deliveries ready for the next free slots and the
    /// queue order holds). A queue with a limit of its own
    /// ([`QueueOptions::concurrency`]) holds at most that limit (twice it
    /// with several queues), whatever `n`. Zero is refused when the worker starts
    /// ([`WorkerConfigError::ZeroPrefetch`]).
    #[must_use]
    pub fn prefetch(mut self, n: usize) -> Self {
        self.prefetch = Some(n);
        self
    }

    /// Settings of the queue `queue` (the broker's name, with the app's
    /// queue prefix): a concurrency limit of its own within the worker's,
    /// and a weight (see [the module docs](self#queues-concurrency-weights-and-order)).
    /// The queue must be one this worker consumes — this does not add it —
    /// or the worker does not start ([`WorkerConfigError::UnknownQueue`]).
    /// Given twice for one queue, the later settings replace the earlier.
    ///
    /// # Examples
    ///
    /// ```
    /// use dramaturg_core::worker::{QueueOptions, QueueOrder};
    /// use dramaturg_core::{App, MemoryBroker, Worker};
    ///
    /// let app = App::builder(MemoryBroker::new()).build().unwrap();
    /// let worker = Worker::new(app)
    ///     .concurrency(16)
    ///     .queues(["mail", "reports", "default"])
    ///     .queue("reports", QueueOptions::new().concurrency(4))
    ///     .queue("mail", QueueOptions::new().weight(3))
    ///     .queue_order(QueueOrder::Weighted);
    /// ```
    #[must_use]
    pub fn queue(mut self, queue: impl Into<String>, options: QueueOptions) -> Self {
        self.queue_options.push((queue.into(), options));
        self
    }

    /// How a free slot picks the queue it claims from next (default
    /// [`QueueOrder::Weighted`]).
    #[must_use]
    pub fn queue_order(mut self, order: QueueOrder) -> Self {
        self.queue_order = order;
        self
    }

    /// How long running messages may take to finish after shutdown is asked
    /// for, before they are interrupted and requeued (default 20 s, inside
    /// the 30 s that orchestrators usually allow).
    #[must_use]
    pub fn grace_period(mut self, grace: Duration) -> Self {
        self.grace_period = grace;
        self
    }

    /// How long blocking handlers that still run when the grace period is
    /// over are waited for (default 8 s). Their threads cannot be stopped;
    /// they are told to stop through [`Context::check`], and what finishes
    /// in this time is settled as it finished. The messages of threads still
    /// running after it go back to their queues, and the process should end
    /// (see [the module docs](self#shutdown)).
    #[must_use]
    pub fn blocking_grace(mut self, grace: Duration) -> Self {
        self.blocking_grace = grace;
        self
    }

    /// After how long without yielding a message's task counts as blocking
    /// its runtime thread (default 1 s; zero turns the watchdog off).
    ///
    /// A watchdog on a thread of its own looks at the running messages a
    /// few times per threshold. The first time an actor holds a runtime
    /// thread that long, it logs at WARN: ``actor "x" blocked a runtime
    /// thread for N s; mark it `blocking` or `isolated` ``…; every such poll is counted in
    /// [`WorkerReport::blocked_runtime`]. While an async actor holds its
    /// thread, the other messages scheduled on that thread wait, and its
    /// time limit cannot stop it.
    #[must_use]
    pub fn blocked_runtime_threshold(mut self, threshold: Duration) -> Self {
        self.blocked_threshold = threshold;
        self
    }

    /// How `isolated` actors' child processes are run (memory limit, jobs
    /// per child, kill grace); see [`isolation`](crate::isolation).
    #[must_use]
    pub fn isolation(mut self, isolation: Isolation) -> Self {
        self.isolation = isolation;
        self
    }

    /// Gauges of this worker, to read while it runs.
    pub fn gauges(&self) -> WorkerGauges {
        self.gauges.clone()
    }

    /// Consumes only these queues (default: every queue of the app's
    /// actors, in registration order), in this order: the order
    /// [`QueueOrder::Strict`] goes by. Names are the broker's, with the
    /// app's queue prefix.
    #[must_use]
    pub fn queues<I, S>(mut self, queues: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.queues = Some(queues.into_iter().map(Into::into).collect());
        self
    }

    /// A handle that stops this worker gracefully.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle { stop: self.stop.clone() }
    }

    /// Runs until SIGTERM or SIGINT (Ctrl-C), then shuts down gracefully. A
    /// second signal during the shutdown stops the worker at once
    /// ([`WorkerError::Forced`]).
    ///
    /// The library never ends the process; the caller decides. End it at
    /// once — `std::process::exit` — on `Forced` (with
    /// [`WorkerError::exit_code`]) and when the report
    /// [`must_exit`](WorkerReport::must_exit): in both cases threads may
    /// still run that a tokio runtime would wait for when `main` returns.
    ///
    /// # Errors
    ///
    /// As [`Worker::run`]; [`WorkerError::Signals`] if the signal handlers
    /// cannot be installed; [`WorkerError::Forced`] after a second signal.
    pub async fn run_until_signal(self) -> Result<WorkerReport, WorkerError> {
        let handle = self.shutdown_handle();
        // Listen before consuming, so that no signal can slip past.
        let mut signals = crate::signal::Signals::new().map_err(WorkerError::Signals)?;
        let second = async move {
            signals.recv().await;
            tracing::info!("shutting down gracefully; send the signal again to stop at once");
            handle.shutdown();
            signals.recv().await;
            tracing::warn!("second signal: stopping at once");
        };
        let report = tokio::select! {
            result = self.run() => result?,
            () = second => return Err(WorkerError::Forced),
        };
        if report.must_exit() {
            tracing::warn!(
                threads = report.abandoned_threads,
                "blocking threads still run for messages returned to their queues: end the process now"
            );
        }
        Ok(report)
    }

    /// Runs until every queue of the app is drained (see [`App::join`]),
    /// then shuts down gracefully: the way to test your actors on the
    /// in-memory broker, and to run a batch to its end.
    ///
    /// # Errors
    ///
    /// As [`Worker::run`]; and a `Timeout` [`BrokerError`] if the queues are
    /// not drained within `timeout` (the worker is shut down all the same).
    pub async fn run_until_drained(self, timeout: Duration) -> Result<WorkerReport, WorkerError> {
        let app = self.app.clone();
        let handle = self.shutdown_handle();
        let mut running = tokio::spawn(self.run());
        // A worker that fails to start (a setting that cannot work, a
        // broker that refuses to consume) ends before the queues drain:
        // its error comes back at once, not after the timeout.
        let drained = tokio::select! {
            drained = app.join(timeout) => drained,
            ended = &mut running => {
                let report = ended.map_err(|e| WorkerError::Task(e.to_string()))??;
                return Ok(report);
            }
        };
        handle.shutdown();
        let report = running.await.map_err(|e| WorkerError::Task(e.to_string()))??;
        drained?;
        Ok(report)
    }

    /// Runs until [`ShutdownHandle::shutdown`] is called, then shuts down
    /// gracefully and reports what it did.
    ///
    /// # Errors
    ///
    /// [`WorkerError::Config`] if a setting cannot work (nothing was
    /// consumed); [`WorkerError::Broker`] if the queues cannot be declared
    /// or consumed at start. Errors after that are logged and retried with
    /// backoff.
    ///
    /// # Cancel safety
    ///
    /// Not cancel-safe: dropping the future stops the worker at once, with
    /// no grace period — it claims nothing more, returns what it fetched
    /// and did not start, and interrupts its running messages, which go
    /// back to their queues as at the end of a grace period (a blocking
    /// handler's thread runs on, its message returned). Use the shutdown
    /// handle to stop it gracefully.
    pub async fn run(self) -> Result<WorkerReport, WorkerError> {
        let queues: Vec<String> = match self.queues {
            Some(queues) => queues,
            None => self.app.queues().to_vec(),
        };
        let settings = queues::Settings {
            concurrency: self.concurrency,
            prefetch: self.prefetch,
            order: self.queue_order,
            options: &self.queue_options,
        };
        let lanes = queues::lanes(queues, &settings)?;
        if lanes.is_empty() && !self.stop.is_cancelled() {
            tracing::warn!("the worker has no queue to consume: register actors on the app");
        }
        if !self.app.middleware_names().contains(&crate::middleware::names::ERROR_CAPTURE) {
            tracing::warn!(
                middleware = ?self.app.middleware_names(),
                "no middleware named error_capture: panics and errors are not captured inside the stack \
                 (a panic skips every middleware, retries included; error values live until the worker records them). \
                 App::builder starts with an empty stack; dramaturg::app has retries, time limits and error capture"
            );
        }
        for lane in &lanes {
            let limit = lane.limit.as_ref().map_or(self.concurrency, |limit| limit.available_permits());
            let runs = self.concurrency.min(limit);
            crate::batch::warn_small_slots(&self.app, &lane.name, runs.min(lane.prefetch));
            if lane.prefetch < runs {
                tracing::warn!(
                    queue = %lane.name,
                    prefetch = lane.prefetch,
                    could_run = runs,
                    "the prefetch bounds this queue's running messages too: it runs at most {} at once",
                    lane.prefetch
                );
            }
        }
        let weights = lanes.iter().map(|lane| lane.weight).collect();
        let shared = Arc::new(Shared {
            arbiter: Arbiter::new(self.concurrency, self.queue_order, weights),
            tasks: TaskTracker::new(),
            stop: self.stop.clone(),
            interrupt: CancellationToken::new(),
            abandon: CancellationToken::new(),
            blocking_running: AtomicU64::new(0),
            counters: Counters::default(),
            tally: Arc::new(tally::Tally::new(lanes.iter().map(|lane| lane.name.clone()))),
            publishing: CancellationToken::new(),
            gauges: self.gauges.clone(),
            watchdog: Watchdog::start(&self.app, self.concurrency, self.blocked_threshold),
            children: Pool::new(self.isolation),
            app: self.app,
        });
        let abandon_if_dropped = AbandonIfDropped(Some(Arc::clone(&shared)));
        let broker = Arc::clone(shared.app.broker());
        for middleware in shared.app.middleware() {
            middleware.on_worker_start(&shared.app).await;
        }
        broker.set_worker_concurrency(self.concurrency);
        let mut consumers = Vec::with_capacity(lanes.len());
        for lane in &lanes {
            let opened = match broker.declare_queue(&lane.name).await {
                Ok(()) => broker.consume(&lane.name, lane.prefetch).await,
                Err(error) => Err(error),
            };
            match opened {
                Ok(consumer) => consumers.push(consumer),
                Err(error) => {
                    // Nothing runs yet: stop what was started, and say why
                    // through the error, not as a dropped run future.
                    abandon_if_dropped.stop();
                    return Err(error.into());
                }
            }
        }
        tracing::info!(
            queues = ?lanes.iter().map(Lane::describe).collect::<Vec<_>>(),
            concurrency = self.concurrency,
            order = ?self.queue_order,
            "worker started"
        );
        let pumps: Vec<_> = consumers
            .into_iter()
            .zip(lanes)
            .map(|(consumer, lane)| tokio::spawn(pump(Arc::clone(&shared), consumer, lane)))
            .collect();
        let publisher = tokio::spawn(tally::publish(
            Arc::clone(&shared.tally),
            Arc::clone(&broker),
            OUTCOMES_EVERY,
            shared.publishing.clone(),
        ));

        shared.stop.cancelled().await;
        let stopping = Instant::now();
        for pump in pumps {
            if let Err(error) = pump.await {
                tracing::error!(%error, "a consumer task failed");
            }
        }
        shared.tasks.close();
        if tokio::time::timeout(self.grace_period, shared.tasks.wait()).await.is_err() {
            tracing::warn!(
                running = shared.tasks.len(),
                grace_period = ?self.grace_period,
                "grace period over: interrupting running messages and returning them to their queues"
            );
            shared.interrupt.cancel();
            let blocking = shared.blocking_running.load(Ordering::Relaxed);
            if blocking > 0 {
                tracing::info!(
                    blocking,
                    blocking_grace = ?self.blocking_grace,
                    "waiting for blocking handlers, whose threads cannot be interrupted; what finishes is settled as it finished"
                );
                if tokio::time::timeout(self.blocking_grace, shared.tasks.wait()).await.is_err() {
                    tracing::warn!(
                        blocking = shared.blocking_running.load(Ordering::Relaxed),
                        "blocking grace over: returning the messages of blocking threads that still run to their queues"
                    );
                    shared.abandon.cancel();
                }
            }
            if tokio::time::timeout(SETTLE_AFTER_INTERRUPT, shared.tasks.wait()).await.is_err() {
                tracing::error!(
                    running = shared.tasks.len(),
                    "messages did not settle after interruption; the broker will redeliver them"
                );
            }
        }
        shared.publishing.cancel();
        if let Err(error) = publisher.await {
            tracing::error!(%error, "the task that publishes outcomes failed");
        }
        shared.children.close();
        if let Err(error) = broker.release().await {
            tracing::warn!(%error, "could not release the broker; what this worker held lapses by itself");
        }
        for middleware in shared.app.middleware().iter().rev() {
            middleware.on_worker_stop(&shared.app).await;
        }
        let mut report = shared.counters.report();
        if let Some(watchdog) = &shared.watchdog {
            watchdog.stop();
            report.blocked_runtime = watchdog.blocked();
        }
        abandon_if_dropped.disarm();
        tracing::info!(?report, shutdown_ms = crate::time::millis(stopping.elapsed()), "worker stopped");
        Ok(report)
    }
}

/// Stops a worker whose [`Worker::run`] future is dropped before it ends:
/// its pumps and processing tasks are spawned, and would otherwise run on
/// unseen. Disarmed when `run` ends by itself.
struct AbandonIfDropped(Option<Arc<Shared>>);

impl AbandonIfDropped {
    fn disarm(mut self) {
        self.0 = None;
    }

    /// Stops everything at once, as a drop does, without a warning: for a
    /// worker that could not start.
    fn stop(mut self) {
        if let Some(shared) = self.0.take() {
            abandon(&shared);
        }
    }
}

impl Drop for AbandonIfDropped {
    fn drop(&mut self) {
        if let Some(shared) = self.0.take() {
            tracing::warn!("the worker's run future was dropped: stopping at once, running messages interrupted");
            abandon(&shared);
        }
    }
}

/// Stops a worker's tasks at once: running messages are interrupted and
/// returned to their queues.
fn abandon(shared: &Shared) {
    shared.stop.cancel();
    shared.interrupt.cancel();
    shared.abandon.cancel();
    shared.publishing.cancel();
    shared.tasks.close();
    shared.children.close();
    if let Some(watchdog) = &shared.watchdog {
        watchdog.stop();
    }
}

/// Feeds one queue's deliveries to processing tasks, until shutdown; then
/// closes the consumer, which returns what it fetched and did not hand out.
///
/// Each delivery is handed to a task of its own as soon as it is fetched:
/// it waits there for a permit of the queue's own limit (if the queue has
/// one), then for a slot of the worker's concurrency from the arbiter, and
/// runs. So every delivery a queue has fetched and may start is ready for
/// the next free slot, not just one: were they taken one at a time, a
/// queue that just won a slot would be out of the running for the slots
/// that free before its next delivery asks, and the queue order would not
/// hold above a concurrency of 1. How many wait is bounded by the queue's
/// prefetch, which bounds its unsettled deliveries.
async fn pump(shared: Arc<Shared>, mut consumer: Box<dyn Consumer>, lane: Lane) {
    let queue = &lane.name;
    let mut backoff = Duration::from_millis(100);
    loop {
        let next = tokio::select! {
            biased;
            () = shared.stop.cancelled() => break,
            next = consumer.next() => next,
        };
        match next {
            Ok(delivery) => {
                backoff = Duration::from_millis(100);
                let waiting = Waiting { queue: lane.index, limit: lane.limit.clone(), paused: consumer.paused() };
                shared.tasks.spawn(start(Arc::clone(&shared), waiting, delivery));
            }
            Err(error) => {
                tracing::warn!(%queue, %error, retry_in = ?backoff, "cannot consume; retrying");
                tokio::select! {
                    () = shared.stop.cancelled() => break,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(MAX_CONSUME_BACKOFF);
            }
        }
    }
    if let Err(error) = consumer.close().await {
        tracing::warn!(%queue, %error, "could not return prefetched messages; the broker will redeliver them");
    }
}

/// What a fetched delivery waits on before it starts.
struct Waiting {
    /// Its queue's number (the arbiter's).
    queue: usize,
    /// Its queue's own limit, if any.
    limit: Option<Arc<Semaphore>>,
    /// Its consumer's view of whether the queue is paused, if it keeps one.
    paused: Option<watch::Receiver<bool>>,
}

/// Starts a fetched delivery once a permit of its queue's own limit (if
/// any) and a slot of the worker's concurrency are free. Returns it to its
/// queue instead at shutdown, or when the queue is paused meanwhile (a
/// pause stops starts, not only claims).
async fn start(shared: Arc<Shared>, waiting: Waiting, delivery: Delivery) {
    let Waiting { queue, limit, paused } = waiting;
    let permits = async {
        // At its limit, a queue starts nothing until one of its messages
        // ends, and does not ask for a slot meanwhile.
        let own = match limit {
            Some(limit) => Some(limit.acquire_owned().await.ok()?),
            None => None,
        };
        Some(Permits::new(shared.arbiter.slot(queue).await, own))
    };
    let paused = async {
        let told = match paused {
            Some(mut paused) => paused.wait_for(|paused| *paused).await.is_ok(),
            None => false,
        };
        // A view whose consumer closed tells nothing more.
        if !told {
            std::future::pending::<()>().await;
        }
    };
    let permits = tokio::select! {
        biased;
        () = shared.stop.cancelled() => None,
        () = paused => {
            tracing::debug!("the queue was paused before this delivery started: returned to the queue");
            None
        }
        permits = permits => permits,
    };
    // Boxed: a delivery's task is spawned with this future, which is moved
    // into the task and again as it runs; processing's own state is large
    // (the message, the middleware call, the settlement), and is made in
    // place on the heap once it starts.
    match permits {
        Some(permits) => Box::pin(process(shared, queue, delivery, permits)).await,
        None => requeue_unstarted(&shared, delivery).await,
    }
}

/// Returns a delivery fetched but never started to its queue (at shutdown,
/// or when its queue is paused): not counted.
async fn requeue_unstarted(shared: &Shared, delivery: Delivery) {
    settle(shared, delivery, Settling::plain(Settlement::Requeue, Count::Requeued)).await;
}

/// How a delivery is to be settled, and counted once it is.
struct Settling {
    settlement: Settlement,
    /// Writes to the broker's store that go with the settlement
    /// ([`Controls::write_with_settlement`](crate::Controls::write_with_settlement)).
    writes: Vec<StoreWrite>,
    count: Count,
}

impl Settling {
    /// `settlement` with no writes.
    fn plain(settlement: Settlement, count: Count) -> Self {
        Self { settlement, writes: Vec::new(), count }
    }
}

/// Settles `delivery` (with its store writes), trying again while the
/// broker fails for a transient reason; counts and logs a stale
/// settlement; returns how the delivery was counted (`None`: stale, or the
/// broker could not be told). A retry that cannot be scheduled is not
/// dropped (which would return it to its queue at once, to fail and come
/// back in a tight loop): the delivery is held for the retry's delay, at
/// least [`MIN_UNSCHEDULED_RETRY_HOLD`], then requeued.
async fn settle(shared: &Shared, delivery: Delivery, settling: Settling) -> Option<Count> {
    let Settling { mut settlement, writes, mut count } = settling;
    let store = if writes.is_empty() { None } else { shared.app.broker().store() };
    let mut deadline = tokio::time::Instant::now() + SETTLE_RETRY_FOR;
    let mut backoff = Duration::from_millis(50);
    let mut delivery = delivery;
    // Whether a try failed: its answer may have been lost after the broker
    // applied it, and then this retry finds the claim settled (stale).
    let mut retried = false;
    loop {
        let settled = match &store {
            Some(store) => delivery.settle_writing(settlement.clone(), &writes, store.as_ref()).await,
            None => delivery.settle(settlement.clone()).await,
        };
        match settled {
            Ok(Settled::Applied) => return Some(count),
            Ok(Settled::Stale) if retried => {
                shared.counters.stale.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    settlement = settlement_label(&settlement),
                    "stale settlement after a failed try: either that try was applied and its answer lost, or this \
                     delivery's claim lapsed meanwhile and the message belongs to another consumer now; this try \
                     changed nothing"
                );
                return None;
            }
            Ok(Settled::Stale) => {
                shared.counters.stale.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    settlement = settlement_label(&settlement),
                    "stale settlement: this delivery's claim lapsed (its worker stalled past its lease, or its \
                     in-flight messages were returned to the queue) and the message belongs to another consumer \
                     now; nothing was changed, and this attempt may have run twice"
                );
                return None;
            }
            Err(error) if error.error().is_retryable() && tokio::time::Instant::now() + backoff < deadline => {
                tracing::warn!(error = %error.error(), retry_in = ?backoff, "could not settle a delivery; retrying");
                delivery = error.into_delivery();
                retried = true;
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
            Err(error) => {
                let Settlement::Reschedule { delay, .. } = &settlement else {
                    tracing::error!(error = %error.error(), "could not settle a delivery; the broker will redeliver it");
                    return None;
                };
                let hold = (*delay).max(MIN_UNSCHEDULED_RETRY_HOLD);
                tracing::error!(
                    error = %error.error(),
                    ?hold,
                    "could not schedule a retry; holding the message for its retry delay, then returning it to its queue"
                );
                delivery = error.into_delivery();
                tokio::select! {
                    () = tokio::time::sleep(hold) => {}
                    () = shared.stop.cancelled() => {}
                }
                settlement = Settlement::Requeue;
                count = Count::Requeued;
                deadline = tokio::time::Instant::now() + SETTLE_RETRY_FOR;
                backoff = Duration::from_millis(50);
            }
        }
    }
}

fn settlement_label(settlement: &Settlement) -> &'static str {
    match settlement {
        Settlement::Ack => "ack",
        Settlement::DeadLetter(_) => "dead letter",
        Settlement::Requeue => "requeue",
        Settlement::Reschedule { .. } => "reschedule",
    }
}

/// Processes one delivery of queue number `queue` and settles it.
async fn process(shared: Arc<Shared>, queue: usize, delivery: Delivery, _permits: Permits) {
    let size = delivery.body().len();
    let limit = shared.app.max_message_size();
    let message = if size > limit {
        Err(format!("message of {size} bytes exceeds this app's max_message_size of {limit} bytes"))
    } else {
        shared
            .app
            .encoder()
            .decode_message(delivery.body())
            .map_err(|e| format!("undecodable message ({size} bytes): {e}"))
    };
    let counted = match message {
        Ok(message) => {
            // At error level so that the span is there whenever any event of
            // the message is: a warning must say which message it is about.
            let span = tracing::error_span!(
                "message",
                id = %message.id,
                actor = %crate::bounded::Quoted(&message.actor),
                queue = %crate::bounded::Quoted(&message.queue),
                retries = message.retries,
            );
            for middleware in shared.app.middleware() {
                middleware.on_message_span(&message, &span);
            }
            async {
                let redelivered = delivery.redelivered();
                let settling = match shared.watchdog.as_ref().and_then(Watchdog::lease) {
                    Some(lease) => lease.watch(run_message(&shared, message, redelivered, Some(&lease))).await,
                    None => run_message(&shared, message, redelivered, None).await,
                };
                settle(&shared, delivery, settling).await
            }
            .instrument(span)
            .await
        }
        Err(reason) => settle(&shared, delivery, Settling::plain(reject(&reason), Count::Rejected)).await,
    };
    if let Some(count) = counted {
        shared.counters.count(count);
        match count {
            Count::Succeeded => shared.tally.count(queue, true),
            Count::Failed | Count::Retried | Count::Rejected => shared.tally.count(queue, false),
            Count::Skipped | Count::Postponed | Count::Requeued | Count::Aborted => {}
        }
    }
}

/// Dead-letters a delivery that is not a valid message for this app.
fn reject(reason: &str) -> Settlement {
    let reason = Bounded::reason(reason);
    tracing::error!(%reason, "dead-lettering an invalid message");
    Settlement::DeadLetter(reason)
}

/// Dead-letters a decoded message that cannot run, telling the middleware
/// ([`Middleware::on_rejected`](crate::Middleware::on_rejected)).
async fn reject_message(app: &App, message: &Message, reason: &str) -> Settlement {
    let settlement = reject(reason);
    if let Settlement::DeadLetter(reason) = &settlement {
        for middleware in app.middleware() {
            middleware.on_rejected(app, message, reason).await;
        }
    }
    settlement
}

/// How the delivery that produced `outcome` is settled.
fn settlement_for(app: &App, outcome: &mut Outcome) -> Settlement {
    match outcome {
        Outcome::Succeeded(_) | Outcome::Skipped(_) | Outcome::Aborted(_) => Settlement::Ack,
        Outcome::Failed(failure) => Settlement::DeadLetter(Bounded::reason(&failure.record().summary())),
        Outcome::Requeue(_) => Settlement::Requeue,
        Outcome::Retried(failure, next) => reschedule(app, next, || {
            format!("its retry could not be encoded; last error: {}", failure.record().summary())
        }),
        Outcome::Postponed(reason, next) => {
            reschedule(app, next, || format!("its postponed attempt could not be encoded; postponed because {reason}"))
        }
    }
}

/// Replaces the delivery with `next`; dead-letters it, saying `why` and
/// the encoder's error, when `next` cannot be encoded.
fn reschedule(app: &App, next: &NextAttempt, why: impl FnOnce() -> String) -> Settlement {
    match app.encoder().encode_message(&next.message) {
        Ok(body) => Settlement::Reschedule { body: body.into(), delay: next.delay },
        Err(error) => Settlement::DeadLetter(Bounded::reason(&format!("{} ({error})", why()))),
    }
}

/// The first middleware the message [needs](crate::NEEDS) that `app`'s
/// stack lacks.
fn missing_middleware(app: &App, message: &Message) -> Option<String> {
    let needs = match message.options.option(crate::NEEDS) {
        Ok(needs) => needs?,
        Err(error) => return Some(format!("(unreadable: {error})")),
    };
    needs.into_iter().find(|name| !app.has_middleware(name))
}

/// Runs one decoded message through the stack; returns how to settle it.
async fn run_message(shared: &Shared, message: Message, redelivered: bool, lease: Option<&Lease>) -> Settling {
    let app = &shared.app;
    let Some(actor) = app.actor(&message.actor) else {
        let name = Bounded::quoted(&message.actor);
        let reason = format!("no actor named {:?} is registered in this app", name.as_str());
        return Settling::plain(reject_message(app, &message, &reason).await, Count::Rejected);
    };
    if let Some(missing) = missing_middleware(app, &message) {
        let reason = format!(
            "the message needs the {missing:?} middleware, which this worker's app does not have (add it to every app that runs these messages)"
        );
        return Settling::plain(reject_message(app, &message, &reason).await, Count::Rejected);
    }
    if let Some(lease) = lease {
        lease.set_actor(actor.name());
    }
    let options = app.options_for(&message);
    let ctx = Context::new(message, options, app.clone(), redelivered);
    ctx.set_worker_stop(&shared.stop);
    let job = if actor.isolated() {
        actor.child_args(app.encoder(), &ctx.message().args).map(|args| shared.children.job(ctx.clone(), args))
    } else {
        actor.job(app.encoder(), &ctx.message().args, ctx.clone())
    };
    let job = match job {
        Ok(job) => job,
        Err(error) => {
            let reason = format!("invalid arguments for actor {:?}: {error}", actor.name());
            return Settling::plain(reject_message(app, ctx.message(), &reason).await, Count::Rejected);
        }
    };
    tracing::debug!("message started");
    let started = Instant::now();
    // A thread in this process that cannot be stopped; an isolated
    // handler's child can be killed, so it is stopped like an async one.
    let unstoppable = actor.blocking() && !actor.isolated();
    let _blocking = unstoppable.then(|| BlockingInFlight::new(&shared.blocking_running));
    // The interruption at shutdown ends the job innermost, so that every
    // middleware sees it come back as a requeue.
    let mut chain = Next::new(app.chain(), job).interrupted_by(&shared.interrupt);
    if unstoppable {
        chain = chain.blocking_until(&shared.abandon);
    }
    for observer in app.observers() {
        observer.on_attempt_start(&ctx);
    }
    let chain = chain.run(&ctx);
    let mut outcome = AssertUnwindSafe(chain).catch_unwind().await.unwrap_or_else(|panic| {
        ctx.controls().outcome_of_panic(Failure::from_panic(panic.as_ref(), None, &RecordLimits::default()))
    });
    for observer in app.observers() {
        observer.on_attempt_end(&ctx, &outcome);
    }
    let middleware_failures = ctx.controls().middleware_failures();
    if middleware_failures > 0 {
        shared.counters.middleware_failures.fetch_add(u64::from(middleware_failures), Ordering::Relaxed);
    }
    let elapsed = started.elapsed();
    let count = Count::of(&outcome);
    let settlement = settlement_for(app, &mut outcome);
    match &mut outcome {
        Outcome::Succeeded(_) => tracing::debug!(?elapsed, "message succeeded"),
        Outcome::Failed(failure) => {
            tracing::warn!(?elapsed, error = %failure.record().summary(), "message failed");
        }
        Outcome::Retried(failure, _) => {
            tracing::info!(?elapsed, error = %failure.record().summary(), "message failed; retry scheduled");
        }
        Outcome::Postponed(reason, next) => {
            tracing::debug!(?elapsed, %reason, delay = ?next.delay, "message postponed");
        }
        Outcome::Skipped(reason) => tracing::info!(?elapsed, %reason, "message skipped"),
        Outcome::Requeue(reason) => tracing::info!(?elapsed, %reason, "message returned to its queue"),
        Outcome::Aborted(reason) => tracing::info!(?elapsed, %reason, "message aborted"),
    }
    if let Some((thread, child)) = ctx.running_thread() {
        wait_for_thread(shared, &thread, child).await;
    }
    Settling { settlement, writes: ctx.take_settlement_writes(), count }
}

/// Counts a message of a blocking actor as in flight while it lives.
struct BlockingInFlight<'a>(&'a AtomicU64);

impl<'a> BlockingInFlight<'a> {
    fn new(count: &'a AtomicU64) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Self(count)
    }
}

impl Drop for BlockingInFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Holds the message's concurrency slot and delivery while the blocking
/// thread of an attempt that has ended (a time limit, an abort) runs on, or
/// its isolated `child` process is being killed, so that its retry cannot
/// run beside it; until shutdown gives up on it.
async fn wait_for_thread(shared: &Shared, thread: &CancellationToken, child: bool) {
    if shared.abandon.is_cancelled() {
        // Shutdown gave up on it while the attempt still ran.
        shared.counters.abandoned_threads.fetch_add(1, Ordering::Relaxed);
        return;
    }
    shared.counters.overran_threads.fetch_add(1, Ordering::Relaxed);
    let gauge = &shared.gauges.overrunning_threads;
    let overrunning = gauge.fetch_add(1, Ordering::Relaxed) + 1;
    if child {
        tracing::info!(
            overrunning,
            "the attempt has ended; holding its slot and delivery until its child process is gone"
        );
    } else {
        tracing::warn!(
            overrunning,
            "the attempt has ended but its blocking thread runs on; holding its slot and delivery until it returns \
             (call ctx.check() in long blocking handlers)"
        );
    }
    let waited = Instant::now();
    tokio::select! {
        () = thread.cancelled() => {
            tracing::info!(waited = ?waited.elapsed(), "the blocking thread returned; settling the message");
        }
        () = shared.abandon.cancelled() => {
            shared.counters.abandoned_threads.fetch_add(1, Ordering::Relaxed);
            tracing::warn!("shutdown stopped waiting for the blocking thread; settling the message as its attempt ended");
        }
    }
    gauge.fetch_sub(1, Ordering::Relaxed);
}
