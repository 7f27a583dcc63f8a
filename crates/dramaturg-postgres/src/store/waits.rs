//! Waits for store keys, many at once, over one `LISTEN` connection.
//!
//! A [`Waits`] opens one connection on the first wait, `LISTEN`s there on
//! the store's channel and keeps it: a task reads every notification (the
//! key a `set` wrote) and signals each waiter registered for that key. A
//! wait registers for its keys, *then* reads them: a value set before the
//! read is found by it, one set after it is notified, and none slips
//! between the two. A signal only tells a waiter to read its keys again,
//! so a key written and deleted in between does not end the wait.
//! Waiters never hold each other up.
//!
//! When the connection is lost, every waiter is signalled (notifications
//! may have been missed) and reads again; sqlx's listener reconnects and
//! `LISTEN`s again on its next read. As a safety net against anything
//! else, a waiter reads its keys again every [`REREAD_EVERY`]: an idle
//! wait costs one query per 30 s.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dramaturg_core::store::StoreError;
use dramaturg_core::sync::lock;
use sqlx::postgres::{PgListener, PgPool};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::db_error;

/// How often a waiter reads its keys again without being signalled.
pub(crate) const REREAD_EVERY: Duration = Duration::from_secs(30);

/// The waiters of each key, by waiter id; a signal says "read again".
type Listeners = Arc<Mutex<HashMap<String, HashMap<u64, mpsc::Sender<()>>>>>;

/// Waits on one store's channel; see the module documentation.
pub(crate) struct Waits {
    pool: PgPool,
    channel: String,
    listeners: Listeners,
    /// The task that reads notifications, once a wait started it.
    reader: tokio::sync::Mutex<Option<JoinHandle<()>>>,
    next_id: AtomicU64,
}

/// A waiter's registration, taken back when it is dropped (however the
/// wait ends).
pub(crate) struct Registration {
    listeners: Listeners,
    id: u64,
    keys: Vec<String>,
    signals: mpsc::Receiver<()>,
}

impl Registration {
    /// Waits for a signal for up to `timeout`; `false` when none came.
    pub(crate) async fn signalled(&mut self, timeout: Duration) -> bool {
        matches!(tokio::time::timeout(timeout, self.signals.recv()).await, Ok(Some(())))
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut listeners = lock(&self.listeners);
        for key in &self.keys {
            if let Some(waiters) = listeners.get_mut(key) {
                waiters.remove(&self.id);
                if waiters.is_empty() {
                    listeners.remove(key);
                }
            }
        }
    }
}

impl Waits {
    /// Waits on `channel`, listening through a connection of `pool`;
    /// nothing is opened yet.
    pub(crate) fn new(pool: PgPool, channel: String) -> Self {
        Self {
            pool,
            channel,
            listeners: Arc::default(),
            reader: tokio::sync::Mutex::new(None),
            next_id: AtomicU64::new(0),
        }
    }

    /// Registers a waiter for `keys`, once the store's connection listens.
    pub(crate) async fn register(&self, keys: &[String]) -> Result<Registration, StoreError> {
        self.listen().await?;
        let (sender, signals) = mpsc::channel(1);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut listeners = lock(&self.listeners);
        for key in keys {
            listeners.entry(key.clone()).or_default().insert(id, sender.clone());
        }
        Ok(Registration { listeners: Arc::clone(&self.listeners), id, keys: keys.to_vec(), signals })
    }

    /// Starts the reading task unless it runs, once its `LISTEN` is in
    /// place.
    async fn listen(&self) -> Result<(), StoreError> {
        let mut reader = self.reader.lock().await;
        if reader.as_ref().is_some_and(|task| !task.is_finished()) {
            return Ok(());
        }
        let mut listener =
            PgListener::connect_with(&self.pool).await.map_err(|e| db_error(e, "listening for waits"))?;
        listener.listen(&self.channel).await.map_err(|e| db_error(e, "listening for waits"))?;
        tracing::debug!(channel = %self.channel, "postgres store: listening for waits");
        *reader = Some(tokio::spawn(read(listener, Arc::clone(&self.listeners))));
        Ok(())
    }
}

/// Hands every notification to the waiters of its key, until the store is
/// dropped.
async fn read(mut listener: PgListener, listeners: Listeners) {
    loop {
        match listener.try_recv().await {
            Ok(Some(notification)) => {
                let waiters: Vec<_> = lock(&listeners)
                    .get(notification.payload())
                    .map(|waiters| waiters.values().cloned().collect())
                    .unwrap_or_default();
                signal(waiters);
            }
            // The connection was lost (the next read reconnects): what was
            // set meanwhile was not heard, so every waiter reads again.
            Ok(None) => signal_all(&listeners),
            Err(error) => {
                tracing::warn!(%error, "postgres store: lost the connection of waits; reconnecting in 1 s");
                signal_all(&listeners);
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

fn signal(waiters: Vec<mpsc::Sender<()>>) {
    for waiter in waiters {
        // A full waiter has a signal pending already.
        let _ = waiter.try_send(());
    }
}

fn signal_all(listeners: &Listeners) {
    let waiters = lock(listeners).values().flat_map(|waiters| waiters.values().cloned()).collect();
    signal(waiters);
}

impl Drop for Waits {
    fn drop(&mut self) {
        if let Some(reader) = self.reader.get_mut().take() {
            reader.abort();
        }
    }
}
