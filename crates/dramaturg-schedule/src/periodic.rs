//! The periodic-jobs middleware: while any worker of the process runs, a
//! task per schedule wakes at each tick, claims it in the store and, if
//! the claim is its own, enqueues the tick's message.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use dramaturg_core::store::{SetMode, Store};
use dramaturg_core::{
    async_trait, App, Broker, ConfigError, DeclaredOption, EnqueueError, Middleware, MissingState, OptionKey, State,
};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::fleet::{broker_store, check_reach};
use crate::schedule::Schedule;
use crate::ticks::{claim_ttl, due};

/// The name of the middleware in the stack.
pub const NAME: &str = "periodic";

/// The name of the schedule that sent a message (on every tick's message).
pub const PERIODIC_SCHEDULE: OptionKey<String> = OptionKey::new("periodic_schedule");

/// The tick a message was sent for, in milliseconds since the Unix epoch
/// (on every tick's message): its scheduled time, not when it was sent.
pub const PERIODIC_TICK_MS: OptionKey<u64> = OptionKey::new("periodic_tick_ms");

/// The default [`Periodic::max_clock_skew`]: one minute.
pub const DEFAULT_MAX_CLOCK_SKEW: Duration = Duration::from_secs(60);

/// How long a tick's send is tried again while the broker fails for a
/// reason that may pass.
const ENQUEUE_RETRY_FOR: Duration = Duration::from_secs(10);

/// How long the store remembers a schedule's last enqueued tick: a
/// schedule the fleet has not run for longer starts afresh, as a new one.
const LAST_TICK_TTL: Duration = Duration::from_secs(400 * 24 * 3600);

/// The periodic-jobs middleware (named `"periodic"`), not in the default
/// stack: it sends each [`Schedule`]'s message at its ticks, from inside
/// the app's ordinary workers, **once per tick across every worker** that
/// shares its store — no process of its own to keep alive.
///
/// While a worker runs (from its start hook to its stop hook), a task per
/// schedule sleeps until the next tick by the broker's clock
/// ([`Broker::now_ms`]: the Redis server's, so that workers whose clocks
/// disagree agree on the ticks), then claims the tick in the store — a key
/// per schedule and tick time, written only if absent — and only the
/// worker whose claim it is enqueues the message. Ticks are whole
/// multiples of an interval since the epoch, or a cron expression's
/// times, so every worker names the same ticks without talking to the
/// others. A claim lives longer than any worker may still find its tick
/// due (the grace, the catch-up window, and
/// [`max_clock_skew`](Periodic::max_clock_skew)).
///
/// A schedule the store has not seen before (a new or renamed one) starts
/// with its next tick: its catch-up policy covers ticks missed after that,
/// never ticks from before it existed. A worker that wakes to find ticks
/// past their grace left out logs a warning with their count.
///
/// Exactly once has one gap: a worker that dies between its claim and the
/// broker's taking the message (one round trip) loses that tick; a send
/// the broker refuses for 10 s is logged as an error and its claim given
/// back. See the guide's "Periodic jobs" for the guarantees and their
/// limits.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use dramaturg_core::{actor::into_job_result, Actor, App, Context, Job, MemoryBroker};
/// use dramaturg_schedule::{next_runs, Periodic, Schedule};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Serialize, Deserialize)]
/// struct Cleanup;
///
/// impl Actor for Cleanup {
///     const NAME: &'static str = "cleanup";
///     const QUEUE: &'static str = "default";
///     type Output = ();
///     fn into_job(self, _ctx: Context) -> Job {
///         Box::pin(async { into_job_result::<Self, _>(Ok::<(), std::io::Error>(())) })
///     }
/// }
///
/// let broker = MemoryBroker::new();
/// let periodic = Periodic::for_broker(&broker)
///     .unwrap()
///     .schedule(Schedule::cron("cleanup", "*/10 * * * *", Cleanup).unwrap());
/// let app = App::builder(broker).middleware(periodic).actor::<Cleanup>().build().unwrap();
/// let upcoming = next_runs(&app).unwrap();
/// assert_eq!(upcoming[0].schedule, "cleanup");
/// assert_eq!(upcoming[0].at_ms % 600_000, 0, "on a whole ten minutes");
/// // Worker::new(app).run_until_signal().await enqueues a Cleanup every ten minutes.
/// ```
#[derive(Debug)]
pub struct Periodic {
    store: Arc<dyn Store>,
    schedules: Vec<Arc<Schedule>>,
    max_clock_skew: Duration,
    running: Mutex<Running>,
}

/// The schedules' tasks, shared by the workers of the process.
#[derive(Debug, Default)]
struct Running {
    workers: usize,
    tasks: Option<(CancellationToken, TaskTracker)>,
}

impl Periodic {
    /// Claims kept in `store`, which every worker must share (a
    /// `RedisStore`, or the in-memory broker's store for one process).
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self { store, schedules: Vec::new(), max_clock_skew: DEFAULT_MAX_CLOCK_SKEW, running: Mutex::default() }
    }

    /// Claims kept in `broker`'s store ([`Broker::store`]).
    ///
    /// # Errors
    ///
    /// [`ConfigError::Invalid`] for a broker without a store (RabbitMQ):
    /// give [`Periodic::new`] a `RedisStore`.
    pub fn for_broker(broker: &dyn Broker) -> Result<Self, ConfigError> {
        broker_store(broker, "Periodic").map(Self::new)
    }

    /// Adds a schedule. Names must be unique ([`AppBuilder::build`]
    /// checks), and each schedule's actor registered.
    ///
    /// [`AppBuilder::build`]: dramaturg_core::AppBuilder::build
    #[must_use]
    pub fn schedule(mut self, schedule: Schedule) -> Self {
        self.schedules.push(Arc::new(schedule));
        self
    }

    /// The most the clocks of the workers may disagree (default
    /// [`DEFAULT_MAX_CLOCK_SKEW`]): claims live this much longer than
    /// needed. On the Redis broker every worker reads the server's clock,
    /// so it only covers the estimate's error; on brokers without a clock
    /// (RabbitMQ) it must cover the hosts' skew.
    #[must_use]
    pub fn max_clock_skew(mut self, skew: Duration) -> Self {
        self.max_clock_skew = skew;
        self
    }

    fn running(&self) -> std::sync::MutexGuard<'_, Running> {
        self.running.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// When a schedule ticks next: what [`next_runs`] lists.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct NextRun {
    /// The schedule's name.
    pub schedule: String,
    /// The actor it sends to.
    pub actor: &'static str,
    /// The next tick, in milliseconds since the Unix epoch by the broker's
    /// clock.
    pub at_ms: u64,
}

/// The app's schedules, for [`next_runs`].
#[derive(Debug)]
struct Timetable(Vec<Arc<Schedule>>);

/// When each schedule of `app`'s [`Periodic`] middleware ticks next,
/// after the broker's current time, in the order they were added (a
/// schedule with no tick left is not listed).
///
/// # Errors
///
/// [`MissingState`] when the app has no periodic middleware.
pub fn next_runs(app: &App) -> Result<Vec<NextRun>, MissingState> {
    let Timetable(schedules) = app.state::<Timetable>()?;
    let now = app.broker().now_ms();
    Ok(schedules
        .iter()
        .filter_map(|s| {
            s.next_after(now).map(|at_ms| NextRun { schedule: s.name().to_owned(), actor: s.actor(), at_ms })
        })
        .collect())
}

#[async_trait]
impl Middleware for Periodic {
    fn name(&self) -> &'static str {
        NAME
    }

    fn declared_options(&self) -> Vec<DeclaredOption> {
        vec![PERIODIC_SCHEDULE.declare_local(), PERIODIC_TICK_MS.declare_local()]
    }

    fn register_state(&self, state: &mut State) -> Result<(), ConfigError> {
        state.insert(Timetable(self.schedules.clone()))
    }

    /// Schedule names are unique, each schedule's actor is registered and
    /// its message can be sent, and the store reaches every worker.
    fn check_app(&self, app: &App) -> Result<(), ConfigError> {
        let mut names = HashSet::new();
        for schedule in &self.schedules {
            let invalid = |reason: String| ConfigError::Invalid(format!("schedule {:?}: {reason}", schedule.name()));
            if !names.insert(schedule.name()) {
                return Err(invalid("two schedules have this name".into()));
            }
            let message = schedule.message(app).map_err(|e| invalid(e.to_string()))?;
            app.check_sendable(&message, None).map_err(|e| invalid(e.to_string()))?;
            let jitter = schedule.jitter_bound();
            if let Some(max_age) = app.options_for(&message).max_age.filter(|max_age| jitter >= *max_age) {
                return Err(invalid(format!(
                    "a jitter of {jitter:?} is not under the actor's max_age of {max_age:?}: delayed ticks would be skipped as too old"
                )));
            }
        }
        check_reach(&*self.store, app, "Periodic")
    }

    async fn on_worker_start(&self, app: &App) {
        let mut running = self.running();
        running.workers += 1;
        if running.tasks.is_some() {
            return;
        }
        let (stop, tasks) = (CancellationToken::new(), TaskTracker::new());
        for schedule in &self.schedules {
            let ticker = Ticker {
                app: app.clone(),
                store: Arc::clone(&self.store),
                schedule: Arc::clone(schedule),
                skew: self.max_clock_skew,
            };
            tasks.spawn(ticker.run(stop.clone()));
        }
        tasks.close();
        running.tasks = Some((stop, tasks));
    }

    async fn on_worker_stop(&self, _app: &App) {
        let tasks = {
            let mut running = self.running();
            running.workers = running.workers.saturating_sub(1);
            if running.workers > 0 {
                return;
            }
            running.tasks.take()
        };
        if let Some((stop, tasks)) = tasks {
            stop.cancel();
            tasks.wait().await;
        }
    }
}

/// One schedule's task.
struct Ticker {
    app: App,
    store: Arc<dyn Store>,
    schedule: Arc<Schedule>,
    skew: Duration,
}

impl Ticker {
    /// Wakes at each tick and enqueues the ticks due, until `stop`.
    async fn run(self, stop: CancellationToken) {
        let mut cursor = self.last_tick().await;
        loop {
            let now = self.app.broker().now_ms();
            let due = due(&self.schedule, cursor, now);
            if due.skipped > 0 {
                tracing::warn!(
                    schedule = self.schedule.name(),
                    skipped = due.skipped,
                    "ticks that no worker enqueued in time are skipped, as the schedule's missed-tick policy says (every worker was stopped or late past the grace)"
                );
            }
            for tick in due.ticks {
                if stop.is_cancelled() {
                    return;
                }
                // Not raced against `stop`: a send dropped after its claim
                // would lose the tick for every worker.
                self.enqueue(tick).await;
            }
            cursor = cursor.max(now);
            let Some(next) = self.schedule.next_after(now) else {
                tracing::info!(schedule = self.schedule.name(), "the schedule has no tick left");
                return;
            };
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(Duration::from_millis(next - now)) => {}
            }
        }
    }

    /// The store key of the last tick the fleet enqueued.
    fn last_tick_key(&self) -> String {
        format!("periodic:{}:last", self.schedule.name())
    }

    /// The last tick any worker enqueued, by the store; for a schedule the
    /// store does not know (a new one, a renamed one), now — recorded, so
    /// that ticks missed from here on are caught up after downtime, but
    /// none from before the schedule existed.
    async fn last_tick(&self) -> u64 {
        let (key, now) = (self.last_tick_key(), self.app.broker().now_ms());
        let recorded = async {
            self.store.set(&key, now.to_string().as_bytes(), LAST_TICK_TTL, SetMode::IfAbsent).await?;
            self.store.get(&key).await
        };
        match recorded.await {
            Ok(Some(bytes)) => {
                std::str::from_utf8(&bytes).ok().and_then(|text| text.parse().ok()).unwrap_or(now).min(now)
            }
            Ok(None) => now,
            Err(error) => {
                tracing::warn!(schedule = self.schedule.name(), %error, "cannot read the schedule's last tick; missed ticks from before now are not caught up");
                now
            }
        }
    }

    /// Claims `tick` and, if the claim is ours, enqueues its message.
    async fn enqueue(&self, tick: u64) {
        let name = self.schedule.name();
        let mut message = match self.schedule.message(&self.app) {
            Ok(message) => message,
            Err(error) => {
                tracing::error!(schedule = name, tick_ms = tick, %error, "could not build the tick's message");
                return;
            }
        };
        message.options.extra.insert(PERIODIC_SCHEDULE.name().to_owned(), name.into());
        message.options.extra.insert(PERIODIC_TICK_MS.name().to_owned(), tick.into());
        let key = format!("periodic:{name}:{tick}");
        let owner = message.id.to_string();
        let ttl = claim_ttl(&self.schedule, tick, self.skew);
        match self.store.set(&key, owner.as_bytes(), ttl, SetMode::IfAbsent).await {
            Ok(true) => {
                // Claims, not this mark, keep ticks from being sent twice:
                // a mark written out of order only widens a catch-up window.
                let (last, value) = (self.last_tick_key(), tick.to_string());
                if let Err(error) = self.store.set(&last, value.as_bytes(), LAST_TICK_TTL, SetMode::Always).await {
                    tracing::debug!(schedule = name, tick_ms = tick, %error, "could not record the last tick");
                }
            }
            Ok(false) => return,
            Err(error) => {
                tracing::warn!(schedule = name, tick_ms = tick, %error, "could not claim the tick; another worker may");
                return;
            }
        }
        let jitter = self.schedule.jitter_bound();
        let delay = (!jitter.is_zero()).then(|| jitter.mul_f64(rand::random::<f64>()));
        match self.app.enqueue_retrying(message, delay, ENQUEUE_RETRY_FOR).await {
            Ok(id) => tracing::debug!(schedule = name, tick_ms = tick, message_id = %id, "tick enqueued"),
            Err(EnqueueError::Duplicate { existing, .. }) => {
                tracing::info!(schedule = name, tick_ms = tick, %existing, "tick not enqueued: a unique run is still there");
            }
            Err(error) => {
                tracing::error!(schedule = name, tick_ms = tick, %error, "the tick could not be enqueued");
                if let Err(error) = self.store.delete_if(&key, owner.as_bytes()).await {
                    tracing::warn!(schedule = name, tick_ms = tick, %error, "could not give the tick's claim back");
                }
            }
        }
    }
}
