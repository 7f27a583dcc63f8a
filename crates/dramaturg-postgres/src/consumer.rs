//! Consuming a queue: batched `SKIP LOCKED` claims, waits for a wake-up,
//! and settlements fenced by the claim's token.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use dramaturg_core::sync::lock;
use dramaturg_core::sync::{free_slot, PauseWatching, PAUSE_CHECK};
use dramaturg_core::{
    BrokerError, BrokerErrorKind, Consumer, Delivery, Receipt, Settled, Settlement, StoreWrite, WritingReceipt,
};
use tokio::sync::{watch, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;

use crate::acks::WriteArrays;
use crate::{db_error, ms, Shared};

/// How long a consumer of a paused queue waits before it looks again, if
/// the resume's wake-up did not reach it.
const PAUSED_WAIT: Duration = Duration::from_secs(1);

/// How long a consumer whose free prefetch is small waits for more of it
/// to free before it claims (see `PgConsumer::gather_room`).
const CLAIM_GATHER: Duration = Duration::from_millis(2);

/// A claimed message not yet handed out.
#[derive(Debug)]
struct Claimed {
    id: i64,
    token: i64,
    body: Bytes,
    redelivered: bool,
}

/// A row of the claim statement: id, body, token, redelivered, priority,
/// due time (µs since the epoch).
type ClaimRow = (i64, Vec<u8>, i64, bool, i16, i64);

pub(crate) struct PgConsumer {
    shared: Arc<Shared>,
    queue: String,
    /// Woken when a message may have arrived (see `wake.rs`).
    wake: Arc<Notify>,
    buffer: VecDeque<Claimed>,
    permits: Arc<Semaphore>,
    prefetch: usize,
    /// When this consumer last learned whether its queue is paused.
    checked: Instant,
    /// What it learned, for the worker ([`Consumer::paused`]).
    paused: watch::Sender<bool>,
    /// A claim under way, whose rows are not in the buffer yet.
    claiming: Option<JoinHandle<Result<Vec<ClaimRow>, BrokerError>>>,
}

impl PgConsumer {
    pub(crate) fn new(shared: Arc<Shared>, queue: &str, prefetch: usize) -> Self {
        let wake = shared.wakes.register(queue);
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
        }
    }

    /// Claims up to `n` ready messages into the buffer, in delivery order;
    /// returns how many.
    ///
    /// The claim runs as a task of its own, kept in `claiming` until its
    /// rows are in the buffer: if `next` is dropped while the claim is
    /// under way (a worker stopping), the claim still completes, and the
    /// next call (or `close`, which returns them) takes its rows, instead of
    /// leaving claims nobody holds until their lease lapses.
    async fn claim(&mut self, n: usize) -> Result<usize, BrokerError> {
        let shared = &self.shared;
        let claiming =
            self.claiming.get_or_insert_with(|| tokio::spawn(claim_rows(Arc::clone(shared), self.queue.clone(), n)));
        let joined = claiming.await;
        self.claiming = None;
        let rows = joined.map_err(|e| {
            BrokerError::new(BrokerErrorKind::Other, "postgres: the claim task failed").with_source(e)
        })??;
        let claimed = rows.len();
        self.buffer.extend(rows.into_iter().map(|(id, body, token, redelivered, _, _)| Claimed {
            id,
            token,
            body: Bytes::from(body),
            redelivered,
        }));
        Ok(claimed)
    }

    /// How long until the queue's next delayed message is due, and whether
    /// the queue is paused.
    async fn idle(&mut self) -> Result<(Option<Duration>, bool), BrokerError> {
        let (next_due, paused): (Option<i64>, bool) = sqlx::query_as(&self.shared.sql.idle)
            .bind(&self.queue)
            .fetch_one(&self.shared.settle_pool)
            .await
            .map_err(|e| db_error(e, "looking for delayed messages"))?;
        self.learned(paused);
        let next_due = next_due.map(|ms| Duration::from_millis(u64::try_from(ms).unwrap_or(0)));
        Ok((next_due, paused))
    }

    /// Notes whether the queue is paused, as just learned.
    fn learned(&mut self, paused: bool) {
        self.checked = Instant::now();
        self.paused.send_if_modified(|was| std::mem::replace(was, paused) != paused);
    }

    /// Returns every claim of the buffer to the queue (as if never
    /// claimed). They are no longer renewed either way: if the statement
    /// fails, they lapse and are returned by the recovery.
    async fn return_buffer(&mut self) -> Result<usize, BrokerError> {
        let (ids, tokens): (Vec<i64>, Vec<i64>) = self.buffer.drain(..).map(|c| (c.id, c.token)).unzip();
        if ids.is_empty() {
            return Ok(0);
        }
        {
            let mut held = lock(&self.shared.held);
            for token in &tokens {
                held.remove(token);
            }
        }
        sqlx::query(&self.shared.sql.unclaim)
            .bind(&ids)
            .bind(&tokens)
            .bind(&self.shared.sql.channel)
            .execute(&self.shared.settle_pool)
            .await
            .map_err(|e| db_error(e, "returning claimed messages"))?;
        Ok(ids.len())
    }

    /// How many messages to claim for this delivery and every other free
    /// prefetch slot. A busy worker frees its slots one at a time, and a
    /// claim per slot would cost a commit per message; so when less than a
    /// quarter of the prefetch is free, this waits up to [`CLAIM_GATHER`]
    /// for a quarter to free, and claims for what is free then.
    async fn gather_room(&self) -> usize {
        dramaturg_core::sync::claim_room(&self.permits, self.prefetch, CLAIM_GATHER).await
    }

    /// Waits until a wake-up, the next delayed message's due time, or the
    /// poll interval (a second while paused).
    async fn wait(&self, next_due: Option<Duration>, paused: bool) {
        let mut wait = self.shared.config.poll_interval;
        if paused {
            wait = wait.min(PAUSED_WAIT);
        }
        if let Some(due) = next_due {
            wait = wait.min(due);
        }
        tokio::select! {
            () = self.wake.notified() => {}
            () = tokio::time::sleep(wait) => {}
        }
    }

    fn deliver(&self, claimed: Claimed, permit: OwnedSemaphorePermit) -> Delivery {
        let receipt =
            PgReceipt { shared: Arc::clone(&self.shared), id: claimed.id, token: claimed.token, _permit: permit };
        Delivery::new(claimed.body, claimed.redelivered, Box::new(receipt))
    }
}

/// Claims up to `n` ready messages of `queue`, in delivery order, and
/// counts their tokens among those the heartbeat renews.
async fn claim_rows(shared: Arc<Shared>, queue: String, n: usize) -> Result<Vec<ClaimRow>, BrokerError> {
    let mut rows: Vec<ClaimRow> = sqlx::query_as(&shared.sql.claim)
        .bind(&queue)
        .bind(i64::try_from(n).unwrap_or(i64::MAX))
        .bind(&shared.worker_id)
        .bind(ms(shared.config.heartbeat_timeout))
        .fetch_all(&shared.settle_pool)
        .await
        .map_err(|e| db_error(e, "claiming messages"))?;
    // RETURNING keeps no order: priority first, then due time, then id.
    rows.sort_by_key(|&(id, _, _, _, priority, due)| (std::cmp::Reverse(priority), due, id));
    lock(&shared.held).extend(rows.iter().map(|row| row.2));
    Ok(rows)
}

#[async_trait]
impl PauseWatching for PgConsumer {
    fn slots(&self) -> Arc<Semaphore> {
        Arc::clone(&self.permits)
    }

    fn pause_watched(&self) -> bool {
        self.paused.receiver_count() > 0
    }

    /// Returns the buffered claims to the queue if it was paused since
    /// they were claimed.
    async fn check_paused(&mut self) -> Result<(), BrokerError> {
        let paused: bool = sqlx::query_scalar(&self.shared.sql.paused)
            .bind(&self.queue)
            .fetch_one(&self.shared.settle_pool)
            .await
            .map_err(|e| db_error(e, "looking whether the queue is paused"))?;
        self.learned(paused);
        if paused {
            let returned = self.return_buffer().await?;
            tracing::info!(queue = %dramaturg_core::Bounded::quoted(&self.queue), returned, "the queue is paused; returned claimed messages");
        }
        Ok(())
    }
}

#[async_trait]
impl Consumer for PgConsumer {
    async fn next(&mut self) -> Result<Delivery, BrokerError> {
        let permit = free_slot(self).await?;
        loop {
            if !self.buffer.is_empty() && self.checked.elapsed() >= PAUSE_CHECK {
                self.check_paused().await?;
            }
            if let Some(claimed) = self.buffer.pop_front() {
                return Ok(self.deliver(claimed, permit));
            }
            let room = self.gather_room().await;
            if self.claim(room).await? == 0 {
                let (next_due, paused) = self.idle().await?;
                self.wait(next_due, paused).await;
            }
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
struct PgReceipt {
    shared: Arc<Shared>,
    id: i64,
    token: i64,
    _permit: OwnedSemaphorePermit,
}

impl std::fmt::Debug for PgReceipt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgReceipt").field("id", &self.id).field("token", &self.token).finish()
    }
}

#[async_trait]
impl Receipt for PgReceipt {
    async fn settle(&self, settlement: &Settlement) -> Result<Settled, BrokerError> {
        let shared = &self.shared;
        let sql = &shared.sql;
        let pool = &shared.settle_pool;
        let one_row = |rows: Vec<sqlx::postgres::PgRow>| rows.len() == 1;
        let failed = |e| db_error(e, "settling a message");
        let applied = match settlement {
            Settlement::Ack => {
                // Coalesced with the other acks of this broker.
                let acks = shared.acks.get().ok_or_else(|| {
                    BrokerError::new(BrokerErrorKind::Closed, "postgres: a receipt outlived its consumer's start")
                })?;
                acks.ack(self.id, self.token, Vec::new()).await?
            }
            Settlement::DeadLetter(reason) => {
                let done = sqlx::query(&sql.dead_letter)
                    .bind(self.id)
                    .bind(self.token)
                    .bind(reason.as_str())
                    .execute(pool)
                    .await
                    .map_err(failed)?;
                done.rows_affected() == 1
            }
            Settlement::Requeue => sqlx::query(&sql.requeue)
                .bind(self.id)
                .bind(self.token)
                .bind(&sql.channel)
                .fetch_all(pool)
                .await
                .map(one_row)
                .map_err(failed)?,
            Settlement::Reschedule { body, delay } => sqlx::query(&sql.reschedule)
                .bind(self.id)
                .bind(self.token)
                .bind(body.as_ref())
                .bind(ms(*delay))
                .bind(&sql.channel)
                .fetch_all(pool)
                .await
                .map(one_row)
                .map_err(failed)?,
            other => {
                return Err(BrokerError::new(BrokerErrorKind::Unsupported, format!("unknown settlement {other:?}")));
            }
        };
        lock(&shared.held).remove(&self.token);
        Ok(if applied { Settled::Applied } else { Settled::Stale })
    }

    fn writing(&self) -> Option<&dyn WritingReceipt> {
        Some(self)
    }
}

/// Acks (in their batch's statement) and dead letters (in theirs) make
/// their writes only if they apply, so a stale attempt writes no result;
/// requeues and reschedules, which end no message, write first.
#[async_trait]
impl WritingReceipt for PgReceipt {
    async fn settle_writing(&self, settlement: &Settlement, writes: &[StoreWrite]) -> Result<Settled, BrokerError> {
        let writes = StoreWrite::within_rules(writes);
        let shared = &self.shared;
        if let Some(store) = shared.store.get() {
            store.sweep_now_and_then();
        }
        if let Settlement::Ack = settlement {
            let acks = shared.acks.get().ok_or_else(|| {
                BrokerError::new(BrokerErrorKind::Closed, "postgres: a receipt outlived its consumer's start")
            })?;
            let applied = acks.ack(self.id, self.token, writes).await?;
            lock(&shared.held).remove(&self.token);
            return Ok(if applied { Settled::Applied } else { Settled::Stale });
        }
        if let (Settlement::DeadLetter(reason), false) = (settlement, writes.is_empty()) {
            // A failure's result: written with the dead letter, only if it
            // applies, as an ack's is.
            let arrays = WriteArrays::new(writes.iter().map(|w| (self.id, w)));
            let (dead, _written): (i64, i64) = sqlx::query_as(&shared.sql.dead_letter_writing)
                .bind(self.id)
                .bind(self.token)
                .bind(reason.as_str())
                .bind(arrays.keys)
                .bind(arrays.values)
                .bind(arrays.ttls)
                .bind(arrays.owners)
                .bind(crate::store::channel(&shared.config.schema))
                .fetch_one(&shared.settle_pool)
                .await
                .map_err(|e| db_error(e, "dead-lettering a message"))?;
            lock(&shared.held).remove(&self.token);
            return Ok(if dead == 1 { Settled::Applied } else { Settled::Stale });
        }
        // Requeues and reschedules end no message: whatever they carry is
        // written first.
        let store = shared.store.get_or_init(|| Arc::new(crate::PgStore::new(shared.pool.clone(), &shared.config)));
        dramaturg_core::broker::write_before_settling(store.as_ref(), &writes).await?;
        self.settle(settlement).await
    }
}

// A receipt dropped unsettled keeps its token among the held ones: the
// worker drops a receipt only when it gave up settling it (the database
// was away for too long), so the attempt's outcome is known but not
// recorded. Returning it to the queue would run finished work again at
// once; it stays claimed instead, and only the recovery after this worker
// stops beating returns it.
