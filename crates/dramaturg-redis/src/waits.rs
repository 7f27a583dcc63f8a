//! Waits for store keys, many at once, over one pub/sub connection.
//!
//! A [`Waits`] opens one pub/sub connection on the first wait and keeps
//! it: a task reads every message and hands it to each waiter registered
//! for its channel. A wait registers for the channels of its keys
//! (subscribing to those no one listens to yet), *then* reads the keys: a
//! value set before the subscription is found by the read, one set after
//! it arrives as a message, and none slips between the two. Waiters never
//! wait for each other: a wait of 30 s on one key does not hold up a wait
//! on another. Channels no waiter listens to any more are unsubscribed at
//! the next registration; a lost connection ends every wait with an error
//! and the next wait opens a new one.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use dramaturg_core::store::{StoreError, StoreErrorKind};
use futures_util::StreamExt;
use redis::aio::PubSubSink;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::conn::{Conn, Endpoint};

/// What a waiter hears: the channel (the Redis key) and the value.
type Heard = (String, Vec<u8>);

/// The waiters of each channel, by waiter id.
type Listeners = Arc<Mutex<HashMap<String, HashMap<u64, mpsc::Sender<Heard>>>>>;

/// Waits on one Redis server; see the module documentation.
pub(crate) struct Waits {
    endpoint: Endpoint,
    /// How many subscriptions were opened: on a cluster, each goes to the
    /// next seed node.
    opened: AtomicU64,
    hub: tokio::sync::Mutex<Option<Hub>>,
    next_id: AtomicU64,
}

/// The pub/sub connection and who listens on it.
struct Hub {
    sink: PubSubSink,
    subscribed: HashSet<String>,
    listeners: Listeners,
    reader: JoinHandle<()>,
}

fn lock(listeners: &Listeners) -> MutexGuard<'_, HashMap<String, HashMap<u64, mpsc::Sender<Heard>>>> {
    listeners.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn lost(what: &str, error: impl std::fmt::Display) -> StoreError {
    StoreError::new(StoreErrorKind::Connection, format!("redis store: {what}: {error}"))
}

/// Takes a wait's registration back when the wait ends, however it ends.
struct Registration {
    listeners: Listeners,
    id: u64,
    channels: Vec<String>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut listeners = lock(&self.listeners);
        for channel in &self.channels {
            if let Some(waiters) = listeners.get_mut(channel) {
                waiters.remove(&self.id);
                if waiters.is_empty() {
                    listeners.remove(channel);
                }
            }
        }
    }
}

impl Waits {
    /// Waits on the server `client` connects to; nothing is opened yet.
    pub(crate) fn new(endpoint: Endpoint) -> Self {
        Self { endpoint, opened: AtomicU64::new(0), hub: tokio::sync::Mutex::new(None), next_id: AtomicU64::new(0) }
    }

    /// Waits until one of the Redis keys `keys` (also the channels their
    /// values are published on) holds a value, reading them with `conn`;
    /// `None` after `timeout`.
    pub(crate) async fn wait(
        &self,
        conn: &Conn,
        keys: &[String],
        timeout: Duration,
    ) -> Result<Option<Heard>, StoreError> {
        let (sender, mut heard) = mpsc::channel(1);
        let _registration = self.register(keys, sender).await?;
        // One GET per key, pipelined (keys of many slots on a cluster).
        let reads = keys.iter().map(|key| {
            let mut read = redis::pipe();
            read.cmd("GET").arg(key.as_str());
            read
        });
        let replies = conn.query_groups(reads.collect()).await.map_err(|e| lost("read for a wait", e))?;
        let values = replies
            .into_iter()
            .map(redis::from_redis_value::<Option<Vec<u8>>>)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| lost("read for a wait", e))?;
        if let Some(found) = keys.iter().zip(values).find_map(|(key, value)| Some((key.clone(), value?))) {
            return Ok(Some(found));
        }
        match tokio::time::timeout(timeout, heard.recv()).await {
            Err(_) => Ok(None),
            Ok(Some(found)) => Ok(Some(found)),
            Ok(None) => Err(lost("wait", "the subscription closed")),
        }
    }

    /// Registers `sender` for the channels of `keys`, subscribing to the
    /// new ones (and dropping channels no one listens to any more).
    async fn register(&self, keys: &[String], sender: mpsc::Sender<Heard>) -> Result<Registration, StoreError> {
        let mut guard = self.hub.lock().await;
        if guard.as_ref().is_none_or(|hub| hub.reader.is_finished()) {
            *guard = Some(self.open().await?);
        }
        let hub = guard.as_mut().expect("opened just above");
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let registration = {
            let mut listeners = lock(&hub.listeners);
            for key in keys {
                listeners.entry(key.clone()).or_default().insert(id, sender.clone());
            }
            Registration { listeners: Arc::clone(&hub.listeners), id, channels: keys.to_vec() }
        };
        let (new, idle): (Vec<String>, Vec<String>) = {
            let listeners = lock(&hub.listeners);
            let new = keys.iter().filter(|key| !hub.subscribed.contains(*key)).cloned().collect();
            let idle = hub.subscribed.iter().filter(|channel| !listeners.contains_key(*channel)).cloned().collect();
            (new, idle)
        };
        let result = async {
            for channel in &idle {
                hub.sink.unsubscribe(channel).await?;
                hub.subscribed.remove(channel);
            }
            for channel in new {
                hub.sink.subscribe(&channel).await?;
                hub.subscribed.insert(channel);
            }
            Ok::<(), redis::RedisError>(())
        }
        .await;
        if let Err(error) = result {
            // The connection may be broken: open a new one next time.
            *guard = None;
            return Err(lost("subscribe", error));
        }
        Ok(registration)
    }

    async fn open(&self) -> Result<Hub, StoreError> {
        let attempt = usize::try_from(self.opened.fetch_add(1, Ordering::Relaxed)).unwrap_or_default();
        let pubsub = self.endpoint.pubsub(attempt).await.map_err(|e| lost("open a subscription", e))?;
        let (sink, mut stream) = pubsub.split();
        let listeners: Listeners = Arc::default();
        let heard = Arc::clone(&listeners);
        let reader = tokio::spawn(async move {
            while let Some(message) = stream.next().await {
                let channel = message.get_channel_name().to_owned();
                let Ok(value) = message.get_payload::<Vec<u8>>() else { continue };
                let waiters: Vec<mpsc::Sender<Heard>> =
                    lock(&heard).get(&channel).map(|w| w.values().cloned().collect()).unwrap_or_default();
                for waiter in waiters {
                    // A full waiter has heard a value already.
                    let _ = waiter.try_send((channel.clone(), value.clone()));
                }
            }
            // The connection is gone: every wait ends with an error.
            lock(&heard).clear();
        });
        tracing::debug!("redis store: subscription opened for waits");
        Ok(Hub { sink, subscribed: HashSet::new(), listeners, reader })
    }
}

impl Drop for Waits {
    fn drop(&mut self) {
        if let Some(hub) = self.hub.get_mut().take() {
            hub.reader.abort();
        }
    }
}
