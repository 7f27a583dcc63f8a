//! The heartbeat thread of a consuming broker: a runtime and two
//! connections of its own, so that a handler that blocks or computes
//! cannot make its worker look dead.
//!
//! Every `heartbeat_interval` it renews the deadlines of the claims this
//! worker holds, records the worker's beat (and learns the database's
//! clock), and returns lapsed claims of any worker to their queues — once
//! it has itself beaten for a whole `heartbeat_timeout`, so that a worker
//! coming back from an outage does not take the claims of live workers
//! that could not renew either. About once a minute it deletes dead
//! letters past their retention and forgets workers long gone. Its other
//! connection `LISTEN`s for wake-ups.

use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use dramaturg_core::sync::lock;
use dramaturg_core::BrokerError;
use sqlx::postgres::{PgListener, PgPool, PgPoolOptions};
use tokio::sync::{oneshot, watch};

use crate::{db_error, ms, Shared};

/// How often dead letters are trimmed and old workers forgotten.
const HOUSEKEEPING_EVERY: Duration = Duration::from_secs(60);

/// How long `consume` waits for the first `LISTEN` to be in place.
const LISTEN_READY: Duration = Duration::from_secs(5);

/// The running thread, if any.
#[derive(Debug, Default)]
pub(crate) struct Heartbeat {
    running: Mutex<Option<(watch::Sender<bool>, std::thread::JoinHandle<()>)>>,
}

impl Heartbeat {
    /// Starts the thread if it is not running, and waits (up to 5 s) until
    /// it listens for wake-ups, so that no wake-up of a consumer's first
    /// wait is missed.
    pub(crate) async fn start(&self, shared: &Arc<Shared>) -> Result<(), BrokerError> {
        let ready = {
            let mut running = lock(&self.running);
            if running.is_some() {
                return Ok(());
            }
            let (stop, stopped) = watch::channel(false);
            let (ready, listening) = oneshot::channel();
            let weak = Arc::downgrade(shared);
            let thread = std::thread::Builder::new()
                .name("dramaturg-postgres-heartbeat".into())
                .spawn(move || run_thread(&weak, stopped, ready))
                .map_err(|e| {
                    BrokerError::new(dramaturg_core::BrokerErrorKind::Other, "cannot start the heartbeat thread")
                        .with_source(e)
                })?;
            *running = Some((stop, thread));
            listening
        };
        if !matches!(tokio::time::timeout(LISTEN_READY, ready).await, Ok(Ok(()))) {
            tracing::warn!("not listening for wake-ups yet; idle consumers look again every poll interval");
        }
        Ok(())
    }

    /// Stops the thread; its handle, to join.
    pub(crate) fn stop(&self) -> Option<std::thread::JoinHandle<()>> {
        let (stop, thread) = lock(&self.running).take()?;
        let _ = stop.send(true);
        Some(thread)
    }
}

fn run_thread(shared: &Weak<Shared>, stop: watch::Receiver<bool>, ready: oneshot::Sender<()>) {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            tracing::error!(%error, "cannot start the heartbeat runtime; this worker will look dead");
            return;
        }
    };
    let Some(options) = shared.upgrade().map(|s| s.options.clone()) else { return };
    runtime.block_on(async {
        // Connections of this runtime: one listens, one beats.
        let pool = PgPoolOptions::new().max_connections(2).connect_lazy_with(options);
        tokio::join!(beat(shared, &pool, stop.clone()), listen(shared, &pool, stop, ready));
        pool.close().await;
    });
}

/// Beats every interval until stopped or the broker is dropped.
async fn beat(shared: &Weak<Shared>, pool: &PgPool, mut stop: watch::Receiver<bool>) {
    let mut beating_since: Option<Instant> = None;
    let mut housekept = Instant::now();
    loop {
        let Some(interval) = shared.upgrade().map(|s| s.config.heartbeat_interval) else { return };
        match beat_once(shared, pool, beating_since, &mut housekept).await {
            Ok(()) => {
                beating_since.get_or_insert_with(Instant::now);
            }
            Err(error) => {
                tracing::warn!(%error, "heartbeat failed; claims lapse if it keeps failing");
                beating_since = None;
            }
        }
        tokio::select! {
            _ = stop.changed() => return,
            () = tokio::time::sleep(interval) => {}
        }
    }
}

/// One beat: renew, record, recover, and now and then keep house.
async fn beat_once(
    shared: &Weak<Shared>,
    pool: &PgPool,
    beating_since: Option<Instant>,
    housekept: &mut Instant,
) -> Result<(), BrokerError> {
    let Some(shared) = shared.upgrade() else { return Ok(()) };
    let config = &shared.config;
    let tokens: Vec<i64> = lock(&shared.held).iter().copied().collect();
    let concurrency = i32::try_from(shared.concurrency.load(std::sync::atomic::Ordering::Relaxed)).ok();
    let (server_ms, renewed): (i64, i64) = sqlx::query_as(&shared.sql.beat)
        .bind(&shared.worker_id)
        .bind(concurrency.filter(|c| *c > 0))
        .bind(ms(config.heartbeat_timeout))
        .bind(&tokens)
        .fetch_one(pool)
        .await
        .map_err(|e| db_error(e, "beating"))?;
    shared.learn_clock(server_ms);
    tracing::trace!(renewed, "beat");
    if beating_since.is_some_and(|since| since.elapsed() >= config.heartbeat_timeout) {
        let returned: Vec<(String, i64)> = sqlx::query_as(&shared.sql.recover)
            .bind(&shared.sql.channel)
            .fetch_all(pool)
            .await
            .map_err(|e| db_error(e, "returning lapsed claims"))?;
        for (queue, count) in returned {
            tracing::warn!(queue = %dramaturg_core::Bounded::quoted(&queue), count, "returned lapsed claims to the queue");
        }
    }
    if housekept.elapsed() >= HOUSEKEEPING_EVERY {
        *housekept = Instant::now();
        let trimmed = sqlx::query(&shared.sql.trim_dead)
            .bind(ms(config.dead_letter_ttl))
            .execute(pool)
            .await
            .map_err(|e| db_error(e, "trimming dead letters"))?
            .rows_affected();
        sqlx::query(&shared.sql.forget_workers)
            .bind(ms(config.heartbeat_timeout * 10))
            .execute(pool)
            .await
            .map_err(|e| db_error(e, "forgetting old workers"))?;
        tracing::debug!(trimmed, "dead letters past their retention deleted");
    }
    Ok(())
}

/// Listens for wake-ups until stopped, reconnecting after a loss (then
/// every consumer is woken, since notifications may have been missed).
async fn listen(shared: &Weak<Shared>, pool: &PgPool, mut stop: watch::Receiver<bool>, ready: oneshot::Sender<()>) {
    let mut ready = Some(ready);
    let Some(channel) = shared.upgrade().map(|s| s.sql.channel.clone()) else { return };
    loop {
        let listening = async {
            let mut listener = PgListener::connect_with(pool).await?;
            listener.listen(&channel).await?;
            Ok::<_, sqlx::Error>(listener)
        };
        let mut listener = tokio::select! {
            _ = stop.changed() => return,
            listener = listening => match listener {
                Ok(listener) => listener,
                Err(error) => {
                    tracing::warn!(%error, "cannot listen for wake-ups; trying again in 1 s");
                    tokio::select! {
                        _ = stop.changed() => return,
                        () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    }
                }
            },
        };
        if let Some(ready) = ready.take() {
            let _ = ready.send(());
        }
        loop {
            let received = tokio::select! {
                _ = stop.changed() => return,
                received = listener.try_recv() => received,
            };
            let Some(shared) = shared.upgrade() else { return };
            match received {
                Ok(Some(notification)) => shared.wakes.wake(notification.payload()),
                // The connection was lost; the next call reconnects.
                Ok(None) => shared.wakes.wake_all(),
                Err(error) => {
                    tracing::warn!(%error, "lost the wake-up connection; reconnecting");
                    shared.wakes.wake_all();
                    break;
                }
            }
        }
    }
}
