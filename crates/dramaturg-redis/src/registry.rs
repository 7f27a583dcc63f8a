//! The worker registry: heartbeats, the return of a dead worker's claimed
//! messages, and the timer that trims dead letters.
//!
//! Each broker value (a worker) beats from a thread of its own, with its own
//! small runtime and connection, so no handler that blocks or computes on
//! the worker's runtime can starve the heartbeat and make a live worker look
//! dead. The same thread keeps the wake-up subscription of idle consumers
//! (`wake.rs`). Beats carry the server's time (`TIME` inside the script), so
//! clients' clocks do not matter.
//!
//! A worker returns the claimed messages of workers whose last beat is older
//! than the timeout — but only once it has itself beaten without a failure
//! for a whole timeout: after an outage, every worker's last beat is old,
//! and the first one back must give the others the time to beat again
//! before it judges them.

use std::collections::{BTreeSet, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use std::collections::BTreeMap;

use bytes::Bytes;
use dramaturg_core::{BrokerError, HeldMessage, WorkerInfo, HELD_LISTED};
use redis::Value;
use tokio::sync::{watch, Notify};
use tokio::time::Instant;

use crate::clock::ServerClock;
use crate::conn::{Conn, Endpoint, Timeouts};
use crate::dramatiq::{maintenance, DramatiqState};
use crate::keys::{consumer_entry, parse_consumer_entry, RegistryKeys};
use crate::scripts::Scripts;
use crate::wake::Wakeups;
use crate::{broker_error, lock, millis, RedisConfig};

pub(crate) struct Registry {
    endpoint: Endpoint,
    conn: Conn,
    keys: RegistryKeys,
    scripts: Arc<Scripts>,
    worker_id: String,
    config: RedisConfig,
    entries: Mutex<Vec<String>>,
    /// The concurrency the worker told (0: not told), beaten with each
    /// heartbeat.
    concurrency: AtomicUsize,
    /// Stops the heartbeat thread when set (or dropped).
    stop: Mutex<Option<(watch::Sender<bool>, std::thread::JoinHandle<()>)>>,
    /// The wake-ups of idle consumers, kept up by the heartbeat thread.
    wakeups: Wakeups,
    /// The server's clock, read again after every beat.
    clock: Arc<ServerClock>,
    /// Set in Dramatiq's layout: beats, recovery and trims are Dramatiq's
    /// (see `dramatiq/maintenance.rs`).
    dramatiq: Option<Arc<DramatiqState>>,
}

impl Registry {
    pub(crate) fn new(
        endpoint: Endpoint,
        conn: Conn,
        scripts: Arc<Scripts>,
        worker_id: String,
        config: RedisConfig,
        clock: Arc<ServerClock>,
        dramatiq: Arc<DramatiqState>,
    ) -> Self {
        let dramatiq = (config.protocol == dramaturg_core::Protocol::Dramatiq).then_some(dramatiq);
        Self {
            dramatiq,
            endpoint,
            conn,
            keys: RegistryKeys::new(&config.namespace),
            scripts,
            worker_id,
            config,
            entries: Mutex::default(),
            concurrency: AtomicUsize::new(0),
            stop: Mutex::default(),
            wakeups: Wakeups::new(),
            clock,
        }
    }

    /// Records a consumer's in-flight list, starts the heartbeat thread if
    /// it is not running, and returns the consumer's wake-up on `channel`
    /// with the result of a first beat. A failed beat leaves the entry
    /// recorded (the heartbeat thread keeps beating it); the consumer must
    /// not claim before [`Registry::beat_once`] passes.
    pub(crate) async fn register(
        self: &Arc<Self>,
        consumer: u64,
        queue: &str,
        channel: &str,
    ) -> Result<(Arc<Notify>, Result<(), BrokerError>), BrokerError> {
        lock(&self.entries).push(consumer_entry(consumer, queue));
        self.start_thread()?;
        let wake = self.wakeups.register(channel).await;
        Ok((wake, self.beat_once().await))
    }

    /// Records the worker's concurrency; it reaches Redis with the next beat.
    pub(crate) fn set_concurrency(&self, concurrency: usize) {
        self.concurrency.store(concurrency, Ordering::Relaxed);
    }

    /// The registry's keys.
    pub(crate) fn keys(&self) -> &RegistryKeys {
        &self.keys
    }

    /// Beats once on the shared connection, recording every consumer: a
    /// consumer's claims are found by recovery only once its entry is in
    /// Redis, so it claims nothing before this passed.
    pub(crate) async fn beat_once(&self) -> Result<(), BrokerError> {
        let mut conn = self.conn.clone();
        self.beat_on(&mut conn).await
    }

    /// Beats once (see `beat_once`) for a consumer not yet `registered`,
    /// and marks it so; whether it did now.
    pub(crate) async fn register_once(&self, registered: &mut bool) -> Result<bool, BrokerError> {
        if *registered {
            return Ok(false);
        }
        self.beat_once().await?;
        *registered = true;
        Ok(true)
    }

    /// One heartbeat on `conn`, in the broker's layout.
    async fn beat_on(&self, conn: &mut Conn) -> Result<(), BrokerError> {
        match &self.dramatiq {
            Some(state) => maintenance::beat(conn, &state.scripts, &self.config.namespace, &self.worker_id).await,
            None => {
                let entries = lock(&self.entries).clone();
                let concurrency = self.concurrency.load(Ordering::Relaxed);
                let told = Told { concurrency, heartbeat_timeout: self.config.heartbeat_timeout };
                beat(conn, &self.keys, &self.scripts, &self.worker_id, told, &entries).await
            }
        }
    }

    /// The wake-up of another `channel` (a consumer's delay queue).
    pub(crate) async fn wakeup(&self, channel: &str) -> Arc<Notify> {
        self.wakeups.register(channel).await
    }

    /// The queues this worker's consumers serve.
    fn served_queues(&self) -> BTreeSet<String> {
        lock(&self.entries).iter().filter_map(|e| parse_consumer_entry(e)).map(|(_, q)| q.to_owned()).collect()
    }

    /// Starts the heartbeat thread if it is not running.
    fn start_thread(self: &Arc<Self>) -> Result<(), BrokerError> {
        let mut stop = lock(&self.stop);
        if stop.is_none() {
            let (sender, receiver) = watch::channel(false);
            let registry = Arc::clone(self);
            let thread = std::thread::Builder::new()
                .name("dramaturg-redis-heartbeat".into())
                .spawn(move || registry.run_thread(receiver))
                .map_err(|e| {
                    BrokerError::new(dramaturg_core::BrokerErrorKind::Other, "cannot start the heartbeat thread")
                        .with_source(e)
                })?;
            *stop = Some((sender, thread));
        }
        Ok(())
    }

    /// Forgets a consumer that closed holding nothing, so that the registry
    /// does not grow with every consumer a long-lived broker ever opened.
    pub(crate) async fn unregister(&self, consumer: u64, queue: &str) -> Result<(), BrokerError> {
        let entry = consumer_entry(consumer, queue);
        lock(&self.entries).retain(|e| *e != entry);
        if self.dramatiq.is_some() {
            // Dramatiq's layout keeps no list of a worker's consumers.
            return Ok(());
        }
        let mut conn = self.conn.clone();
        redis::cmd("SREM")
            .arg(self.keys.consumers(&self.worker_id))
            .arg(&entry)
            .query_async::<()>(&mut conn)
            .await
            .map_err(|e| broker_error(e, "unregistering a consumer"))
    }

    /// Stops beating. What this worker still had claimed is returned by
    /// other workers once the timeout passes.
    pub(crate) fn stop(&self) -> Option<std::thread::JoinHandle<()>> {
        let (stop, thread) = lock(&self.stop).take()?;
        let _ = stop.send(true);
        Some(thread)
    }

    /// Stops beating and, if this worker holds no claimed message any
    /// more, removes it from the registry, so that no one later "recovers"
    /// a worker that stopped cleanly. Claims still held (a settlement that
    /// never reached Redis) are left for the recovery after the timeout.
    pub(crate) async fn deregister(&self) -> Result<(), BrokerError> {
        // The thread's last beat must not land after the removal.
        if let Some(thread) = self.stop() {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
        if self.dramatiq.is_some() {
            let mut conn = self.conn.clone();
            let queues = self.served_queues();
            if maintenance::deregister(&mut conn, &self.config, &self.worker_id, &queues).await? {
                lock(&self.entries).clear();
                tracing::debug!(worker = %self.worker_id, "left the heartbeats");
            }
            return Ok(());
        }
        let entries = lock(&self.entries).clone();
        let mut conn = self.conn.clone();
        let mut held = 0u64;
        for (consumer, queue) in entries.iter().filter_map(|e| parse_consumer_entry(e)) {
            let list = self.keys.queue(queue).inflight(&self.worker_id, consumer);
            let length: u64 = redis::cmd("LLEN")
                .arg(list)
                .query_async(&mut conn)
                .await
                .map_err(|e| broker_error(e, "deregistering"))?;
            held += length;
        }
        if held > 0 {
            tracing::warn!(held, "stopping with claimed messages not settled; they return after the heartbeat timeout");
            return Ok(());
        }
        redis::pipe()
            .zrem(&self.keys.workers, &self.worker_id)
            .ignore()
            .hdel(&self.keys.concurrency, &self.worker_id)
            .ignore()
            .zrem(&self.keys.timeouts, &self.worker_id)
            .ignore()
            .del(self.keys.consumers(&self.worker_id))
            .ignore()
            .query_async::<()>(&mut conn)
            .await
            .map_err(|e| broker_error(e, "deregistering"))?;
        lock(&self.entries).clear();
        tracing::debug!(worker = %self.worker_id, "deregistered");
        Ok(())
    }

    /// The heartbeat thread: a runtime and a connection of its own.
    fn run_thread(self: Arc<Self>, stop: watch::Receiver<bool>) {
        let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(runtime) => runtime,
            Err(error) => {
                tracing::error!(%error, "cannot start the heartbeat runtime; this worker will look dead");
                return;
            }
        };
        let wakeups = self.wakeups.run(self.endpoint.clone(), self.config.heartbeat_interval, stop.clone());
        runtime.block_on(async { tokio::join!(self.run(stop), wakeups) });
    }

    async fn run(&self, mut stop: watch::Receiver<bool>) {
        let interval = self.config.heartbeat_interval;
        let mut conn: Option<Conn> = None;
        let mut healthy_since: Option<Instant> = None;
        let mut last_trim = Instant::now();
        // The queues trimmed since `last_trim`: a queue this worker starts
        // consuming is trimmed at its first healthy beat, not a period later.
        let mut trimmed: HashSet<String> = HashSet::new();
        let mut failures = 0u32;
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.changed() => return,
            }
            if *stop.borrow() {
                return;
            }
            let beaten = match &mut conn {
                Some(conn) => self.beat_on(conn).await,
                None => self.connect().await.map(|c| conn = Some(c)),
            };
            if let Err(error) = beaten {
                failures += 1;
                // Logged at the first failure, then every 10th, so that an
                // outage does not flood the logs.
                if failures == 1 || failures.is_multiple_of(10) {
                    tracing::warn!(%error, failures, "redis heartbeat failed; retrying on the next tick");
                }
                healthy_since = None;
                continue;
            }
            if failures > 0 {
                tracing::info!(failures, "redis heartbeat restored");
                failures = 0;
            }
            let since = *healthy_since.get_or_insert_with(Instant::now);
            let Some(conn) = conn.as_mut() else { continue };
            if let Err(error) = self.clock.measure(conn).await {
                tracing::debug!(%error, "cannot read the server's clock; keeping the last reading");
            }
            if since.elapsed() >= self.config.heartbeat_timeout {
                if let Err(error) = self.recover_dead(conn).await {
                    tracing::warn!(%error, "could not check for dead workers; retrying on the next tick");
                }
            }
            if last_trim.elapsed() >= self.config.dead_letter_trim_every {
                last_trim = Instant::now();
                trimmed.clear();
            }
            self.trim_dead_letters(conn, &mut trimmed).await;
        }
    }

    async fn connect(&self) -> Result<Conn, BrokerError> {
        // Reconnect attempts at least once per beat, so that after an
        // outage every live worker beats again within an interval of the
        // server's return (well inside the timeout others wait).
        let timeouts = Timeouts {
            connect: Duration::from_secs(5),
            response: self.config.heartbeat_interval.max(Duration::from_secs(2)),
            max_delay: self.config.heartbeat_interval.min(Duration::from_secs(2)),
        };
        self.endpoint.connect(timeouts).await.map_err(|e| broker_error(e, "opening the heartbeat connection"))
    }

    /// Returns the claimed messages of every worker whose heartbeat lapsed.
    async fn recover_dead(&self, conn: &mut Conn) -> Result<(), BrokerError> {
        if let Some(state) = &self.dramatiq {
            let queues = self.served_queues();
            return maintenance::recover_dead(conn, &state.scripts, &self.config, &self.worker_id, &queues).await;
        }
        let timeout = millis(self.config.heartbeat_timeout);
        let dead: Vec<String> = self
            .scripts
            .lapsed
            .key(&self.keys.workers)
            .key(&self.keys.timeouts)
            .arg(timeout)
            .invoke_async(conn)
            .await
            .map_err(|e| broker_error(e, "listing workers"))?;
        for worker in dead.iter().filter(|w| **w != self.worker_id) {
            let consumers_key = self.keys.consumers(worker);
            let entries: Vec<String> = redis::cmd("SMEMBERS")
                .arg(&consumers_key)
                .query_async(conn)
                .await
                .map_err(|e| broker_error(e, "listing a dead worker's consumers"))?;
            let mut recovered = 0u64;
            for (consumer, queue) in entries.iter().filter_map(|e| parse_consumer_entry(e)) {
                let keys = self.keys.queue(queue);
                recovered += recover(conn, &self.scripts, &keys.inflight(worker, consumer), &keys).await?;
            }
            redis::pipe()
                .del(&consumers_key)
                .ignore()
                .zrem(&self.keys.workers, worker)
                .ignore()
                .hdel(&self.keys.concurrency, worker)
                .ignore()
                .zrem(&self.keys.timeouts, worker)
                .ignore()
                .query_async::<()>(conn)
                .await
                .map_err(|e| broker_error(e, "removing a dead worker"))?;
            tracing::warn!(dead_worker = %worker, recovered, "returned a dead worker's claimed messages to their queues");
        }
        Ok(())
    }

    /// Trims the dead letters of this worker's queues by retention and
    /// caps, those not in `trimmed` yet (which records each one done). A
    /// trim that failed for a transient reason is tried again at the next
    /// tick; one that failed otherwise (a key of the wrong type) in the
    /// next period, so that it does not log a warning at every beat.
    ///
    /// Only the queues with a consumer in this worker: every queue that has
    /// dead letters had a consumer (only a consumer's settlement writes
    /// one), and any other queue could only be found by scanning the
    /// keyspace. A queue nobody consumes keeps its dead letters, within the
    /// caps, until a worker consumes it again.
    async fn trim_dead_letters(&self, conn: &mut Conn, trimmed: &mut HashSet<String>) {
        if let Some(state) = &self.dramatiq {
            let queues: BTreeSet<String> = self.served_queues().into_iter().filter(|q| !trimmed.contains(q)).collect();
            match maintenance::expire_dead_letters(conn, &state.scripts, &self.config, &queues).await {
                Ok(()) => trimmed.extend(queues),
                Err(error) => tracing::warn!(%error, "could not expire dead letters; retrying on the next tick"),
            }
            return;
        }
        let mut queues: Vec<String> = lock(&self.entries)
            .iter()
            .filter_map(|e| parse_consumer_entry(e))
            .filter(|(_, q)| !trimmed.contains(*q))
            .map(|(_, q)| q.to_owned())
            .collect();
        queues.sort_unstable();
        queues.dedup();
        for queue in queues {
            let keys = self.keys.queue(&queue);
            let result: Result<u64, BrokerError> = self
                .scripts
                .trim
                .key(&keys.dead)
                .key(&keys.dead_msgs)
                .key(&keys.reasons)
                .key(&keys.dead_bytes)
                .arg(millis(self.config.dead_letter_ttl))
                .arg(self.config.dead_letter_max_count)
                .arg(self.config.dead_letter_max_bytes)
                .invoke_async(conn)
                .await
                .map_err(|e| broker_error(e, "trimming dead letters"));
            match result {
                Ok(removed) => {
                    if removed > 0 {
                        tracing::debug!(%queue, removed, "trimmed dead letters");
                    }
                }
                Err(error) if error.is_retryable() => {
                    tracing::warn!(%error, "could not trim dead letters; retrying on the next tick");
                    return;
                }
                Err(error) => {
                    tracing::warn!(%queue, %error, "could not trim the dead letters of a queue; retrying in a period");
                }
            }
            trimmed.insert(queue);
        }
    }

    /// The in-flight lists of every registered consumer of `queue`.
    pub(crate) async fn inflight_lists(&self, queue: &str) -> Result<Vec<String>, BrokerError> {
        let mut conn = self.conn.clone();
        let workers: Vec<String> = redis::cmd("ZRANGE")
            .arg(&self.keys.workers)
            .arg(0)
            .arg(-1)
            .query_async(&mut conn)
            .await
            .map_err(|e| broker_error(e, "listing workers"))?;
        let keys = self.keys.queue(queue);
        let mut lists = Vec::new();
        for worker in workers {
            let entries: Vec<String> = redis::cmd("SMEMBERS")
                .arg(self.keys.consumers(&worker))
                .query_async(&mut conn)
                .await
                .map_err(|e| broker_error(e, "listing consumers"))?;
            for (consumer, entry_queue) in entries.iter().filter_map(|e| parse_consumer_entry(e)) {
                if entry_queue == queue {
                    lists.push(keys.inflight(&worker, consumer));
                }
            }
        }
        Ok(lists)
    }

    /// The registered workers, their last beats, concurrency and what they
    /// hold (the first [`HELD_LISTED`] held messages each, with their
    /// bodies).
    pub(crate) async fn workers(&self) -> Result<Vec<WorkerInfo>, BrokerError> {
        let mut conn = self.conn.clone();
        let beats: Vec<(String, f64)> = redis::cmd("ZRANGE")
            .arg(&self.keys.workers)
            .arg(0)
            .arg(-1)
            .arg("WITHSCORES")
            .query_async(&mut conn)
            .await
            .map_err(|e| broker_error(e, "listing workers"))?;
        if beats.is_empty() {
            // Redis refuses an empty pipeline.
            return Ok(Vec::new());
        }
        // Four round trips whatever the number of workers and their
        // concurrency: the beats; every worker's consumers and
        // concurrency; every consumer's count and first held ids; the
        // bodies of the listed ids.
        let ids: Vec<&str> = beats.iter().map(|(worker, _)| worker.as_str()).collect();
        let mut pipe = redis::pipe();
        for worker in &ids {
            pipe.smembers(self.keys.consumers(worker));
        }
        pipe.cmd("HMGET").arg(&self.keys.concurrency).arg(&ids);
        let mut replies: Vec<Value> =
            pipe.query_async(&mut conn).await.map_err(|e| broker_error(e, "listing consumers"))?;
        let concurrency: Vec<Option<usize>> = parse(replies.pop().unwrap_or(Value::Nil))?;
        let entries: Vec<Vec<String>> = replies.into_iter().map(parse).collect::<Result<_, _>>()?;
        let consumers: Vec<Vec<(u64, &str)>> =
            entries.iter().map(|entries| entries.iter().filter_map(|e| parse_consumer_entry(e)).collect()).collect();
        let lists: Vec<Vec<(&str, String)>> = ids
            .iter()
            .zip(&consumers)
            .map(|(worker, consumers)| {
                consumers
                    .iter()
                    .map(|(consumer, queue)| (*queue, self.keys.queue(queue).inflight(worker, *consumer)))
                    .collect()
            })
            .collect();
        let held = self.held(&conn, &lists).await?;
        let mut workers = Vec::with_capacity(beats.len());
        for (((worker, beat_ms), concurrency), (in_flight, held)) in beats.iter().zip(concurrency).zip(held) {
            let last_beat = std::time::UNIX_EPOCH + Duration::from_millis(*beat_ms as u64);
            let info =
                WorkerInfo::new(worker.clone(), last_beat, in_flight).with_concurrency(concurrency).with_held(held);
            workers.push(info);
        }
        workers.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(workers)
    }

    /// For each worker's in-flight `lists` (queue, list): how many messages
    /// each queue holds, and the first [`HELD_LISTED`] held messages.
    async fn held(
        &self,
        conn: &Conn,
        lists: &[Vec<(&str, String)>],
    ) -> Result<Vec<(BTreeMap<String, u64>, Vec<HeldMessage>)>, BrokerError> {
        if lists.iter().all(Vec::is_empty) {
            return Ok(lists.iter().map(|_| Default::default()).collect());
        }
        // Each list lies in its queue's slot: a group of its own.
        let counts = lists.iter().flatten().map(|(_, list)| {
            let mut group = redis::pipe();
            group.llen(list).lrange(list, 0, HELD_LISTED as isize - 1);
            group
        });
        let replies =
            conn.query_groups(counts.collect()).await.map_err(|e| broker_error(e, "counting held messages"))?;
        let mut replies = replies.into_iter();
        let mut counted = Vec::with_capacity(lists.len());
        for lists in lists {
            let mut in_flight = BTreeMap::new();
            let mut held: Vec<(String, String)> = Vec::new();
            for (queue, _) in lists {
                let length: u64 = parse(replies.next().unwrap_or(Value::Nil))?;
                let ids: Vec<String> = parse(replies.next().unwrap_or(Value::Nil))?;
                *in_flight.entry((*queue).to_owned()).or_insert(0) += length;
                let room = HELD_LISTED.saturating_sub(held.len());
                held.extend(ids.into_iter().take(room).map(|id| ((*queue).to_owned(), id)));
            }
            counted.push((in_flight, held));
        }
        let reads = counted.iter().flat_map(|(_, held)| held).map(|(queue, id)| {
            let mut group = redis::pipe();
            group.hget(self.keys.queue(queue).msgs, id);
            group
        });
        let bodies = conn.query_groups(reads.collect()).await.map_err(|e| broker_error(e, "reading held messages"))?;
        let bodies: Vec<Option<Vec<u8>>> = bodies.into_iter().map(parse).collect::<Result<_, _>>()?;
        let mut bodies = bodies.into_iter();
        Ok(counted
            .into_iter()
            .map(|(in_flight, held)| {
                let held = held
                    .into_iter()
                    .zip(bodies.by_ref())
                    .map(|((queue, id), body)| HeldMessage::new(queue, id, body.map(Bytes::from)))
                    .collect();
                (in_flight, held)
            })
            .collect())
    }

    /// Returns every claimed message of `queue`, of every worker, to the
    /// queue, voiding the claims.
    pub(crate) async fn requeue_in_flight(&self, queue: &str) -> Result<u64, BrokerError> {
        let keys = self.keys.queue(queue);
        let mut conn = self.conn.clone();
        let mut returned = 0;
        for list in self.inflight_lists(queue).await? {
            returned += recover(&mut conn, &self.scripts, &list, &keys).await?;
        }
        Ok(returned)
    }
}

/// What a heartbeat tells of its worker besides its consumers.
#[derive(Debug, Clone, Copy)]
struct Told {
    /// The concurrency it runs (0: not told).
    concurrency: usize,
    /// After how long without a beat the others may take its messages.
    heartbeat_timeout: Duration,
}

/// Records a heartbeat at the server's time, and the worker's consumers,
/// concurrency and heartbeat timeout.
async fn beat(
    conn: &mut Conn,
    keys: &RegistryKeys,
    scripts: &Scripts,
    worker_id: &str,
    told: Told,
    entries: &[String],
) -> Result<(), BrokerError> {
    let mut invocation = scripts.beat.prepare_invoke();
    invocation
        .key(&keys.workers)
        .key(keys.consumers(worker_id))
        .key(&keys.concurrency)
        .key(&keys.timeouts)
        .arg(worker_id)
        .arg(told.concurrency)
        .arg(millis(told.heartbeat_timeout));
    for entry in entries {
        invocation.arg(entry);
    }
    invocation.invoke_async::<()>(conn).await.map_err(|e| broker_error(e, "heartbeat"))
}

/// A reply read as `T`.
fn parse<T: redis::FromRedisValue>(value: Value) -> Result<T, BrokerError> {
    redis::from_redis_value(value).map_err(|e| {
        BrokerError::new(dramaturg_core::BrokerErrorKind::Protocol, format!("redis: reading the workers: {e}"))
    })
}

/// Returns everything in the in-flight list `list` to its queue.
async fn recover(
    conn: &mut Conn,
    scripts: &Scripts,
    list: &str,
    keys: &crate::keys::QueueKeys,
) -> Result<u64, BrokerError> {
    scripts
        .recover
        .key(list)
        .key(&keys.ready)
        .key(&keys.redelivered)
        .key(&keys.claims)
        .arg(&keys.wake)
        .invoke_async(conn)
        .await
        .map_err(|e| broker_error(e, "returning claimed messages"))
}
