//! Consuming a queue: lock-free looks while idle, batched claims under the
//! file's write lock, and settlements fenced by the claim's token.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use dramaturg_core::sync::lock;
use dramaturg_core::sync::{free_slot, PauseWatching, PAUSE_CHECK};
use dramaturg_core::{Bounded, BrokerError, BrokerErrorKind, Consumer, Delivery, Receipt, Settled, Settlement};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;

use crate::{db_error, ms, now, schema, Shared};

/// How long a consumer whose free prefetch is small waits for more of it
/// to free before it claims (see `SqliteConsumer::gather_room`).
const CLAIM_GATHER: Duration = Duration::from_millis(2);

/// A claimed message not yet handed out.
#[derive(Debug)]
struct Claimed {
    id: i64,
    token: i64,
    body: Bytes,
    redelivered: bool,
}

pub(crate) struct SqliteConsumer {
    shared: Arc<Shared>,
    queue: String,
    /// Bumped when this process wrote something for the queue.
    wake: watch::Receiver<u64>,
    buffer: VecDeque<Claimed>,
    permits: Arc<Semaphore>,
    prefetch: usize,
    /// When this consumer last learned whether its queue is paused.
    checked: Instant,
    /// What it learned, for the worker ([`Consumer::paused`]).
    paused: watch::Sender<bool>,
    /// A claim under way, whose rows are not in the buffer yet.
    claiming: Option<JoinHandle<Result<Vec<Claimed>, BrokerError>>>,
    /// Whether the last claim took all it asked for: then the next claims
    /// without looking first.
    busy: bool,
}

impl SqliteConsumer {
    pub(crate) fn new(shared: Arc<Shared>, queue: &str, prefetch: usize) -> Self {
        let wake = shared.wakes.watch(queue);
        Self {
            shared,
            queue: queue.to_owned(),
            wake,
            buffer: VecDeque::new(),
            permits: Arc::new(Semaphore::new(prefetch.max(1))),
            prefetch: prefetch.max(1),
            checked: Instant::now(),
            paused: watch::Sender::new(false),
            claiming: None,
            busy: false,
        }
    }

    /// Claims up to `n` ready messages into the buffer, in delivery order;
    /// returns how many.
    ///
    /// The claim runs as a task of its own, kept in `claiming` until its
    /// rows are in the buffer: if `next` is dropped while the claim is
    /// under way (a worker stopping), the claim still completes, and the
    /// next call (or `close`, which returns them) takes its rows.
    async fn claim(&mut self, n: usize) -> Result<usize, BrokerError> {
        let shared = &self.shared;
        let claiming =
            self.claiming.get_or_insert_with(|| tokio::spawn(claim_rows(Arc::clone(shared), self.queue.clone(), n)));
        let joined = claiming.await;
        self.claiming = None;
        let rows = joined
            .map_err(|e| BrokerError::new(BrokerErrorKind::Other, "sqlite: the claim task failed").with_source(e))??;
        let claimed = rows.len();
        self.busy = claimed > 0 && claimed == n;
        self.buffer.extend(rows);
        Ok(claimed)
    }

    /// Whether the queue has ready messages and whether it is paused: a
    /// read, without a lock.
    async fn look(&mut self) -> Result<(bool, bool), BrokerError> {
        let (ready, paused): (bool, bool) = sqlx::query_as(schema::LOOK)
            .bind(&self.queue)
            .bind(now())
            .fetch_one(&self.shared.pool)
            .await
            .map_err(|e| db_error(e, "looking at the queue"))?;
        self.learned(paused);
        Ok((ready, paused))
    }

    /// How long until the queue's next delayed message is due.
    async fn next_due(&self) -> Result<Option<Duration>, BrokerError> {
        let now = now();
        let due: Option<i64> = sqlx::query_scalar(schema::NEXT_DUE)
            .bind(&self.queue)
            .bind(now)
            .fetch_one(&self.shared.pool)
            .await
            .map_err(|e| db_error(e, "looking for delayed messages"))?;
        Ok(due.map(|due| Duration::from_millis(u64::try_from(due - now).unwrap_or(0))))
    }

    /// Notes whether the queue is paused, as just learned.
    fn learned(&mut self, paused: bool) {
        self.checked = Instant::now();
        self.paused.send_if_modified(|was| std::mem::replace(was, paused) != paused);
    }

    /// Returns every claim of the buffer to the queue (as if never
    /// claimed). They are no longer renewed either way: if this fails,
    /// they lapse and are returned by the recovery.
    async fn return_buffer(&mut self) -> Result<usize, BrokerError> {
        let claims: Vec<Claimed> = self.buffer.drain(..).collect();
        if claims.is_empty() {
            return Ok(0);
        }
        {
            let mut held = lock(&self.shared.held);
            for claim in &claims {
                held.remove(&claim.token);
            }
        }
        let failed = |e| db_error(e, "returning claimed messages");
        let mut tx = self.shared.settle_pool.begin_with("BEGIN IMMEDIATE").await.map_err(failed)?;
        for claim in &claims {
            sqlx::query(schema::UNCLAIM).bind(claim.id).bind(claim.token).execute(&mut *tx).await.map_err(failed)?;
        }
        tx.commit().await.map_err(failed)?;
        self.shared.wakes.wake(&self.queue);
        Ok(claims.len())
    }

    /// How many messages a busy consumer claims for this delivery and
    /// every other free prefetch slot. A busy worker frees its slots one
    /// at a time, and a claim per slot would cost a write transaction per
    /// message; so when less than a quarter of the prefetch is free, this
    /// waits up to [`CLAIM_GATHER`] for a quarter to free.
    async fn gather_room(&self) -> usize {
        dramaturg_core::sync::claim_room(&self.permits, self.prefetch, CLAIM_GATHER).await
    }

    /// Waits until a wake-up of this process, the next delayed message's
    /// due time, or the poll interval.
    async fn wait(&mut self, next_due: Option<Duration>) {
        let wait = next_due.map_or(self.shared.config.poll_interval, |due| due.min(self.shared.config.poll_interval));
        tokio::select! {
            changed = self.wake.changed() => {
                if changed.is_err() {
                    tokio::time::sleep(wait).await;
                }
            }
            () = tokio::time::sleep(wait) => {}
        }
    }

    fn deliver(&self, claimed: Claimed, permit: OwnedSemaphorePermit) -> Delivery {
        let receipt =
            SqliteReceipt { shared: Arc::clone(&self.shared), id: claimed.id, token: claimed.token, _permit: permit };
        Delivery::new(claimed.body, claimed.redelivered, Box::new(receipt))
    }
}

/// Claims up to `n` ready messages of `queue` in delivery order, under the
/// file's write lock, and counts their tokens among those the heartbeat
/// renews.
async fn claim_rows(shared: Arc<Shared>, queue: String, n: usize) -> Result<Vec<Claimed>, BrokerError> {
    let failed = |e| db_error(e, "claiming messages");
    let now = now();
    let mut tx = shared.settle_pool.begin_with("BEGIN IMMEDIATE").await.map_err(failed)?;
    let ids: Vec<i64> = sqlx::query_scalar(schema::PICK)
        .bind(&queue)
        .bind(now)
        .bind(i64::try_from(n).unwrap_or(i64::MAX))
        .fetch_all(&mut *tx)
        .await
        .map_err(failed)?;
    if ids.is_empty() {
        tx.commit().await.map_err(failed)?;
        return Ok(Vec::new());
    }
    let count = i64::try_from(ids.len()).unwrap_or(i64::MAX);
    let last: i64 = sqlx::query_scalar(schema::TAKE_TOKENS).bind(count).fetch_one(&mut *tx).await.map_err(failed)?;
    let ids_json = crate::acks::json_array(ids.iter().copied());
    let rows: Vec<(i64, Vec<u8>, i64, bool)> = sqlx::query_as(schema::CLAIM)
        .bind(&shared.worker_id)
        .bind(last - count + 1)
        .bind(now.saturating_add(ms(shared.config.heartbeat_timeout)))
        .bind(ids_json)
        .fetch_all(&mut *tx)
        .await
        .map_err(failed)?;
    tx.commit().await.map_err(failed)?;
    let mut claimed: Vec<Claimed> = rows
        .into_iter()
        .map(|(id, body, token, redelivered)| Claimed { id, token, body: Bytes::from(body), redelivered })
        .collect();
    // Tokens follow the delivery order of the picked ids.
    claimed.sort_by_key(|c| c.token);
    lock(&shared.held).extend(claimed.iter().map(|c| c.token));
    Ok(claimed)
}

#[async_trait]
impl PauseWatching for SqliteConsumer {
    fn slots(&self) -> Arc<Semaphore> {
        Arc::clone(&self.permits)
    }

    fn pause_watched(&self) -> bool {
        self.paused.receiver_count() > 0
    }

    /// Returns the buffered claims to the queue if it was paused since
    /// they were claimed.
    async fn check_paused(&mut self) -> Result<(), BrokerError> {
        let paused: bool = sqlx::query_scalar(schema::PAUSED)
            .bind(&self.queue)
            .fetch_one(&self.shared.pool)
            .await
            .map_err(|e| db_error(e, "looking whether the queue is paused"))?;
        self.learned(paused);
        if paused {
            let returned = self.return_buffer().await?;
            tracing::info!(queue = %Bounded::quoted(&self.queue), returned, "the queue is paused; returned claimed messages");
        }
        Ok(())
    }
}

#[async_trait]
impl Consumer for SqliteConsumer {
    async fn next(&mut self) -> Result<Delivery, BrokerError> {
        let permit = free_slot(self).await?;
        loop {
            if !self.buffer.is_empty() && self.checked.elapsed() >= PAUSE_CHECK {
                self.check_paused().await?;
            }
            if let Some(claimed) = self.buffer.pop_front() {
                return Ok(self.deliver(claimed, permit));
            }
            if self.busy {
                let room = self.gather_room().await;
                if self.claim(room).await? > 0 {
                    continue;
                }
            }
            // This delivery's own slot is taken already.
            let room = self.permits.available_permits() + 1;
            let (ready, paused) = self.look().await?;
            if ready && !paused && self.claim(room).await? > 0 {
                continue;
            }
            let next_due = if paused { None } else { self.next_due().await? };
            self.wait(next_due).await;
        }
    }

    fn paused(&self) -> Option<watch::Receiver<bool>> {
        Some(self.paused.subscribe())
    }

    async fn close(mut self: Box<Self>) -> Result<(), BrokerError> {
        if self.claiming.is_some() {
            // A claim of a cancelled `next`: its rows go back with the rest.
            self.claim(0).await?;
        }
        let returned = self.return_buffer().await?;
        tracing::debug!(returned, "returned prefetched messages to the queue");
        Ok(())
    }
}

/// Settles one claimed message, while its claim is current.
struct SqliteReceipt {
    shared: Arc<Shared>,
    id: i64,
    token: i64,
    _permit: OwnedSemaphorePermit,
}

impl std::fmt::Debug for SqliteReceipt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteReceipt").field("id", &self.id).field("token", &self.token).finish()
    }
}

impl SqliteReceipt {
    /// Runs `settlement`, fenced by the token: whether it applied; `None`
    /// for an ack, which goes to the broker's ack task.
    async fn apply(&self, settlement: &Settlement) -> Result<Option<bool>, sqlx::Error> {
        let pool = &self.shared.settle_pool;
        let now = now();
        let back_in = |queue: Option<String>| queue.map(|queue| self.shared.wakes.wake(&queue)).is_some();
        Ok(Some(match settlement {
            Settlement::Ack => return Ok(None),
            Settlement::DeadLetter(reason) => {
                let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
                let copied = sqlx::query(schema::DEAD_LETTER)
                    .bind(self.id)
                    .bind(self.token)
                    .bind(reason.as_str())
                    .bind(now)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                sqlx::query(schema::ACK).bind(self.id).bind(self.token).execute(&mut *tx).await?;
                tx.commit().await?;
                copied == 1
            }
            Settlement::Requeue => {
                back_in(sqlx::query_scalar(schema::REQUEUE).bind(self.id).bind(self.token).fetch_optional(pool).await?)
            }
            Settlement::Reschedule { body, delay } => back_in(
                sqlx::query_scalar(schema::RESCHEDULE)
                    .bind(self.id)
                    .bind(self.token)
                    .bind(body.as_ref())
                    .bind(now.saturating_add(ms(*delay)))
                    .fetch_optional(pool)
                    .await?,
            ),
            // Refused by `settle` before it gets here.
            _ => false,
        }))
    }
}

#[async_trait]
impl Receipt for SqliteReceipt {
    async fn settle(&self, settlement: &Settlement) -> Result<Settled, BrokerError> {
        if !matches!(
            settlement,
            Settlement::Ack | Settlement::DeadLetter(_) | Settlement::Requeue | Settlement::Reschedule { .. }
        ) {
            return Err(BrokerError::new(BrokerErrorKind::Unsupported, format!("unknown settlement {settlement:?}")));
        }
        let applied = match self.apply(settlement).await.map_err(|e| db_error(e, "settling a message"))? {
            Some(applied) => applied,
            None => {
                let acks = self.shared.acks.get().ok_or_else(|| {
                    BrokerError::new(BrokerErrorKind::Closed, "sqlite: a receipt outlived its consumer's start")
                })?;
                acks.ack(self.id, self.token).await?
            }
        };
        lock(&self.shared.held).remove(&self.token);
        Ok(if applied { Settled::Applied } else { Settled::Stale })
    }
}

// A receipt dropped unsettled keeps its token among the held ones: the
// worker drops a receipt only when it gave up settling it (the file was
// locked for too long), so the attempt's outcome is known but not
// recorded. It stays claimed, and only the recovery after this worker
// stops beating returns it.
