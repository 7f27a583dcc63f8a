//! The heartbeat thread of a consuming broker: a runtime and a connection
//! of its own, so that a handler that blocks or computes cannot make its
//! worker look dead.
//!
//! Every `heartbeat_interval` it renews the deadlines of the claims this
//! worker holds and records the worker's beat, and returns lapsed claims
//! of any worker to their queues — once it has itself beaten for a whole
//! `heartbeat_timeout`, so that a worker coming back from a long stall
//! (the file locked, the machine suspended) does not take the claims of
//! live workers that could not renew either. About once a minute it
//! deletes dead letters past their retention and forgets workers long
//! gone.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use dramaturg_core::sync::lock;
use dramaturg_core::{Bounded, BrokerError, BrokerErrorKind};
use sqlx::{Connection, SqliteConnection};
use tokio::sync::watch;

use crate::{db_error, ms, now, schema, Shared};

/// How often dead letters are trimmed and old workers forgotten.
const HOUSEKEEPING_EVERY: Duration = Duration::from_secs(60);

/// The running thread, if any, and the way to stop it.
#[derive(Debug, Default)]
pub(crate) struct Heartbeat {
    running: Mutex<Option<(watch::Sender<bool>, std::thread::JoinHandle<()>)>>,
}

impl Heartbeat {
    /// Starts the thread if it is not running.
    pub(crate) fn start(&self, shared: &Arc<Shared>) -> Result<(), BrokerError> {
        let mut running = lock(&self.running);
        if running.is_none() {
            let (stop, stopped) = watch::channel(false);
            let weak = Arc::downgrade(shared);
            let thread = std::thread::Builder::new()
                .name("dramaturg-sqlite-heartbeat".into())
                .spawn(move || run(&weak, stopped))
                .map_err(|e| {
                    BrokerError::new(BrokerErrorKind::Other, "cannot start the heartbeat thread").with_source(e)
                })?;
            *running = Some((stop, thread));
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

fn run(shared: &Weak<Shared>, mut stop: watch::Receiver<bool>) {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            tracing::error!(%error, "cannot start the heartbeat runtime; this worker will look dead");
            return;
        }
    };
    runtime.block_on(async {
        let mut conn: Option<SqliteConnection> = None;
        let mut beating_since: Option<Instant> = None;
        let mut housekept = Instant::now();
        loop {
            let Some(strong) = shared.upgrade() else { return };
            let interval = strong.config.heartbeat_interval;
            match beat(&strong, &mut conn, beating_since, &mut housekept).await {
                Ok(()) => {
                    beating_since.get_or_insert_with(Instant::now);
                }
                Err(error) => {
                    tracing::warn!(%error, "heartbeat failed; claims lapse if it keeps failing");
                    beating_since = None;
                    conn = None;
                }
            }
            drop(strong);
            tokio::select! {
                _ = stop.changed() => return,
                () = tokio::time::sleep(interval) => {}
            }
        }
    });
}

/// One beat: renew, record, recover, and now and then keep house.
async fn beat(
    shared: &Shared,
    conn: &mut Option<SqliteConnection>,
    beating_since: Option<Instant>,
    housekept: &mut Instant,
) -> Result<(), BrokerError> {
    let conn = match conn {
        Some(conn) => conn,
        None => conn.insert(
            SqliteConnection::connect_with(
                &shared.options.clone().synchronous(sqlx::sqlite::SqliteSynchronous::Normal),
            )
            .await
            .map_err(|e| db_error(e, "opening the heartbeat's connection"))?,
        ),
    };
    let config = &shared.config;
    let tokens = crate::acks::json_array(lock(&shared.held).iter().copied());
    let concurrency = i64::try_from(shared.concurrency.load(std::sync::atomic::Ordering::Relaxed)).ok();
    let now = now();
    let failed = |e| db_error(e, "beating");
    let mut tx = conn.begin_with("BEGIN IMMEDIATE").await.map_err(failed)?;
    sqlx::query(schema::RENEW)
        .bind(&shared.worker_id)
        .bind(now.saturating_add(ms(config.heartbeat_timeout)))
        .bind(tokens)
        .execute(&mut *tx)
        .await
        .map_err(failed)?;
    sqlx::query(schema::BEAT)
        .bind(&shared.worker_id)
        .bind(now)
        .bind(concurrency.filter(|c| *c > 0))
        .execute(&mut *tx)
        .await
        .map_err(failed)?;
    let mut returned: HashMap<String, u64> = HashMap::new();
    if beating_since.is_some_and(|since| since.elapsed() >= config.heartbeat_timeout) {
        let queues: Vec<String> =
            sqlx::query_scalar(schema::RECOVER).bind(now).fetch_all(&mut *tx).await.map_err(failed)?;
        for queue in queues {
            *returned.entry(queue).or_default() += 1;
        }
    }
    if housekept.elapsed() >= HOUSEKEEPING_EVERY {
        *housekept = Instant::now();
        let trimmed = sqlx::query(schema::TRIM_DEAD)
            .bind(now.saturating_sub(ms(config.dead_letter_ttl)))
            .execute(&mut *tx)
            .await
            .map_err(failed)?
            .rows_affected();
        sqlx::query(schema::FORGET_WORKERS)
            .bind(now.saturating_sub(ms(config.heartbeat_timeout * 10)))
            .execute(&mut *tx)
            .await
            .map_err(failed)?;
        tracing::debug!(trimmed, "dead letters past their retention deleted");
    }
    tx.commit().await.map_err(failed)?;
    for (queue, count) in returned {
        tracing::warn!(queue = %Bounded::quoted(&queue), count, "returned lapsed claims to the queue");
        shared.wakes.wake(&queue);
    }
    Ok(())
}
