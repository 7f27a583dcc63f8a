//! Progress: a running message reports how far it got, and a
//! [`ResultHandle`](crate::ResultHandle) reads it while it runs.

use dramaturg_core::encoder::encode_value;
use dramaturg_core::store::SetMode;
use dramaturg_core::{async_trait, Context};
use serde::Serialize;

use crate::whose::progress_key;
use crate::{ResultError, ResultStore};

/// Reporting progress from inside an actor: `ctx.progress(&value).await`.
///
/// ```
/// use dramaturg_core::Context;
/// use dramaturg_results::Progress;
/// use serde::Serialize;
///
/// #[derive(Serialize)]
/// struct Done { rows: u64, of: u64 }
///
/// async fn export(ctx: &Context) -> Result<(), dramaturg_results::ResultError> {
///     for rows in (0..=1000).step_by(250) {
///         ctx.progress(&Done { rows, of: 1000 }).await?;
///     }
///     Ok(())
/// }
/// ```
#[async_trait]
pub trait Progress {
    /// Keeps `value` (encoded by the app's encoder, replacing the last one)
    /// as the running message's progress, for the results middleware's
    /// TTL; read it with [`ResultHandle::progress`](crate::ResultHandle::progress).
    ///
    /// # Errors
    ///
    /// [`ResultError::NotEnabled`] without the results middleware,
    /// [`ResultError::TooLarge`] when the encoded value is larger than
    /// its `max_size`, [`ResultError::Decode`] when it cannot be encoded,
    /// [`ResultError::Store`] when the store cannot be written.
    async fn progress<P: Serialize + Sync>(&self, value: &P) -> Result<(), ResultError>;
}

#[async_trait]
impl Progress for Context {
    async fn progress<P: Serialize + Sync>(&self, value: &P) -> Result<(), ResultError> {
        let id = self.id();
        let results = self.app().state::<ResultStore>().map_err(|_| ResultError::NotEnabled)?;
        let bytes = encode_value(self.app().encoder(), value).map_err(|source| ResultError::Decode { id, source })?;
        if bytes.len() > results.max_size {
            return Err(ResultError::TooLarge { id, bytes: bytes.len(), max: results.max_size });
        }
        results
            .store
            .set(&progress_key(id), &bytes, results.ttl, SetMode::Always)
            .await
            .map(drop)
            .map_err(|source| ResultError::Store { id, source })
    }
}
