//! Whether any abort request may exist: the worker's view, so that a
//! message costs no store command while nothing was asked.
//!
//! Abort requests are rare, and checking the store for one before every
//! message is a round trip per message (on Redis, a quarter of a no-op
//! worker's throughput). So [`abort`](crate::abort) also writes a marker,
//! [`MARKER`], with [`SetMode::Extend`]: it lives at least as long as the
//! longest request written. One task per worker watches the marker — a
//! wait on the store while it is absent (woken the moment it is written),
//! a look every [`RECHECK`] while it is present — and messages consult the
//! store only while it is present.
//!
//! What that changes: a request written while a message is about to start
//! reaches the worker a wake-up later (a pub/sub message on Redis) than a
//! read of the store would; the message may then start, which a request
//! made a moment later would not have prevented either. In `abort` mode a
//! running message is then interrupted as any running one. Until the task
//! has read the marker, and whenever it cannot, every message is checked.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dramaturg_core::store::{SetMode, Store, StoreError};
use dramaturg_core::sync::lock;
use tokio::task::JoinHandle;

/// The store key that exists while any abort request may.
pub(crate) const MARKER: &str = "abort:any";

/// How often the task looks whether a present marker has expired.
const RECHECK: Duration = Duration::from_secs(1);

/// The longest wait for the marker to appear before waiting again.
const WAIT: Duration = Duration::from_secs(30);

/// Writes the marker so that it outlives a request kept for `ttl`.
pub(crate) async fn mark(store: &dyn Store, ttl: Duration) -> Result<(), StoreError> {
    store.set(MARKER, b"1", ttl, SetMode::Extend).await.map(|_| ())
}

/// Whether requests may exist, kept by a task while workers run.
#[derive(Debug)]
pub(crate) struct View {
    may_exist: Arc<AtomicBool>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Default for View {
    fn default() -> Self {
        Self { may_exist: Arc::new(AtomicBool::new(true)), task: Mutex::default() }
    }
}

impl View {
    /// Whether a message must look for a request in the store.
    pub(crate) fn may_exist(&self) -> bool {
        self.may_exist.load(Ordering::Acquire)
    }

    /// Starts the task, if it does not run.
    pub(crate) fn start(&self, store: &Arc<dyn Store>) {
        let mut task = lock(&self.task);
        if task.as_ref().is_none_or(JoinHandle::is_finished) {
            let (may_exist, store) = (Arc::clone(&self.may_exist), Arc::clone(store));
            *task = Some(tokio::spawn(async move { watch(&*store, &may_exist).await }));
        }
    }

    /// Stops the task; every message is checked again.
    pub(crate) fn stop(&self) {
        if let Some(task) = lock(&self.task).take() {
            task.abort();
        }
        self.may_exist.store(true, Ordering::Release);
    }
}

async fn watch(store: &dyn Store, may_exist: &AtomicBool) {
    let mut present = store.get(MARKER).await.map_or(true, |marker| marker.is_some());
    loop {
        may_exist.store(present, Ordering::Release);
        present = if present {
            tokio::time::sleep(RECHECK).await;
            store.get(MARKER).await.map_or(true, |marker| marker.is_some())
        } else {
            match store.wait_any(&[MARKER.to_owned()], WAIT).await {
                Ok(found) => found.is_some(),
                Err(error) => {
                    tracing::warn!(%error, "cannot watch for abort requests; checking every message meanwhile");
                    may_exist.store(true, Ordering::Release);
                    tokio::time::sleep(RECHECK).await;
                    true
                }
            }
        };
    }
}
