//! Result writes in batches: while one batch is being written, the next
//! gathers, so that a busy worker writes many results per store round trip
//! (Redis: one pipeline) and an idle one writes each at once — no timer,
//! no added wait.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use dramaturg_core::store::{Store, StoreError};
use tokio::sync::{mpsc, oneshot};

/// The most results written in one batch.
const MAX_BATCH: usize = 256;

/// A result to write, and who waits for it.
struct Write {
    key: String,
    value: Vec<u8>,
    ttl: Duration,
    done: oneshot::Sender<Result<(), StoreError>>,
}

/// Writes results to a store through one task that batches them, started
/// on the first write.
#[derive(Debug)]
pub(crate) struct Writer {
    store: Arc<dyn Store>,
    writes: OnceLock<mpsc::UnboundedSender<Write>>,
}

impl Writer {
    pub(crate) fn new(store: Arc<dyn Store>) -> Self {
        Self { store, writes: OnceLock::new() }
    }

    /// Writes `value` under `key` for `ttl` (replacing what it held, waking
    /// its waiters) and returns once it is written.
    ///
    /// # Errors
    ///
    /// The store's error for the batch it was written in.
    pub(crate) async fn set(&self, key: String, value: Vec<u8>, ttl: Duration) -> Result<(), StoreError> {
        let writes = self.writes.get_or_init(|| {
            let (sender, receiver) = mpsc::unbounded_channel();
            tokio::spawn(write_batches(Arc::clone(&self.store), receiver));
            sender
        });
        let (done, written) = oneshot::channel();
        match writes.send(Write { key, value, ttl, done }) {
            Ok(()) => match written.await {
                Ok(result) => result,
                Err(_) => Err(StoreError::new(
                    dramaturg_core::store::StoreErrorKind::Connection,
                    "the result writer stopped before writing (its runtime shut down)",
                )),
            },
            // The batching task is gone (the runtime that started it shut
            // down): write directly.
            Err(mpsc::error::SendError(write)) => {
                self.store.set_many(&[(write.key.as_str(), write.value.as_slice(), write.ttl)]).await
            }
        }
    }
}

/// Writes what has gathered, batch after batch, until the writer is gone.
async fn write_batches(store: Arc<dyn Store>, mut receiver: mpsc::UnboundedReceiver<Write>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while receiver.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let entries: Vec<(&str, &[u8], Duration)> =
            batch.iter().map(|w| (w.key.as_str(), w.value.as_slice(), w.ttl)).collect();
        let result = store.set_many(&entries).await;
        drop(entries);
        for write in batch.drain(..) {
            let outcome = match &result {
                Ok(()) => Ok(()),
                Err(error) => Err(StoreError::new(error.kind(), error.to_string())),
            };
            // A writer that stopped waiting (its message was cancelled) is
            // no one to tell.
            let _ = write.done.send(outcome);
        }
    }
}
