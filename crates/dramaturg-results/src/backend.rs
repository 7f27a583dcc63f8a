//! Where results are kept: the store's layout, or Python Dramatiq's.

use std::sync::Arc;
use std::time::Duration;

use dramaturg_core::store::{SetMode, Store, StoreError, StoreWrite};
use dramaturg_core::Encoder;

use crate::stored::Stored;
use crate::whose::{result_key, Whose};
use crate::writer::Writer;

/// Where results are kept: in the store, or in Python Dramatiq's layout.
#[derive(Debug, Clone)]
pub(crate) enum Backend {
    /// The store, under `result:{<id>}`; written in batches when the store
    /// is reached over a network (a process-local one is written directly:
    /// batching would only add a hand-over between tasks).
    Store(Arc<dyn Store>, Option<Arc<Writer>>),
    /// Dramatiq's Redis layout.
    #[cfg(feature = "redis")]
    Dramatiq(Arc<crate::DramatiqResults>),
}

// Only Dramatiq's layout converts with the app's encoder.
#[cfg_attr(not(feature = "redis"), allow(unused_variables))]
impl Backend {
    /// The store's layout in `store`.
    pub(crate) fn store(store: Arc<dyn Store>) -> Self {
        let writer = (!store.is_process_local()).then(|| Arc::new(Writer::new(Arc::clone(&store))));
        Self::Store(store, writer)
    }

    pub(crate) async fn keep(
        &self,
        whose: &Whose,
        stored: &Stored,
        ttl: Duration,
        encoder: &dyn Encoder,
    ) -> Result<(), StoreError> {
        match self {
            Self::Store(_, Some(writer)) => writer.set(result_key(whose.id), stored.to_bytes(), ttl).await,
            Self::Store(store, None) => {
                store.set(&result_key(whose.id), &stored.to_bytes(), ttl, SetMode::Always).await.map(drop)
            }
            #[cfg(feature = "redis")]
            Self::Dramatiq(layout) => layout.keep(whose, stored, ttl, encoder).await,
        }
    }

    /// The write that keeps `stored` as `whose` result in the store's
    /// layout (`None` in Dramatiq's, which is written its own way).
    pub(crate) fn store_write(&self, whose: &Whose, stored: &Stored, ttl: Duration) -> Option<StoreWrite> {
        match self {
            Self::Store(..) => Some(StoreWrite::new(result_key(whose.id), stored.to_bytes(), ttl)),
            #[cfg(feature = "redis")]
            Self::Dramatiq(_) => None,
        }
    }

    pub(crate) async fn get(&self, whose: &Whose, encoder: &dyn Encoder) -> Result<Option<Stored>, StoreError> {
        match self {
            Self::Store(store, _) => store.get(&result_key(whose.id)).await?.map(|bytes| read(&bytes)).transpose(),
            #[cfg(feature = "redis")]
            Self::Dramatiq(layout) => layout.get(whose, encoder).await,
        }
    }

    pub(crate) async fn wait(
        &self,
        whose: &Whose,
        timeout: Duration,
        encoder: &dyn Encoder,
    ) -> Result<Option<Stored>, StoreError> {
        match self {
            Self::Store(store, _) => {
                let keys = [result_key(whose.id)];
                store.wait_any(&keys, timeout).await?.map(|(_, bytes)| read(&bytes)).transpose()
            }
            #[cfg(feature = "redis")]
            Self::Dramatiq(layout) => layout.wait(whose, timeout, encoder).await,
        }
    }
}

/// Stored bytes that are not a result are an error of the store's.
fn read(bytes: &[u8]) -> Result<Stored, StoreError> {
    Stored::from_bytes(bytes)
        .map_err(|e| StoreError::new(dramaturg_core::store::StoreErrorKind::InvalidInput, e.to_string()))
}
