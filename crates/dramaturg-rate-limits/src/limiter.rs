//! Limiters: how many may hold a key at once (concurrency), how many may
//! pass per sliding window, and paced admission with a burst (a GCRA
//! bucket) — each one atomic step in the store per try.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use dramaturg_core::store::{Admission, Store, StoreError};
use dramaturg_core::MessageId;
use tokio::task::JoinHandle;

use crate::rate::Rate;

/// How long a concurrency slot lives unless its holder renews it: 30 s.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(30);

/// How soon a caller refused by a full concurrency limit tries again
/// when no slot is due to lapse sooner: 1 s.
pub const DEFAULT_RECHECK: Duration = Duration::from_secs(1);

/// How long a limiter waits for its store before giving up: 2 s.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);

/// A limit shared by every process that uses the same store and name: at
/// most N holders at once ([`Limiter::concurrency`]), at most N per sliding
/// window ([`Limiter::window`]), or N per period paced with a burst
/// ([`Limiter::bucket`]). A limiter limits each key (a tenant, an API
/// account; `"global"` for one limit) on its own.
///
/// Each try is one atomic step on one key of the store (Redis: one
/// script, one round trip, timed by the server's clock; the key
/// `limit:{<name>|<key>}` is its own hash slot). Cheap to clone.
///
/// # Examples
///
/// ```
/// use std::sync::Arc;
/// use std::time::Duration;
/// use dramaturg_core::MemoryStore;
/// use dramaturg_rate_limits::Limiter;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), dramaturg_rate_limits::LimitError> {
/// let exports = Limiter::concurrency(Arc::new(MemoryStore::new()), "exports", 1);
/// let permit = exports.try_acquire("tenant-7").await?;
/// assert!(exports.try_acquire("tenant-7").await.unwrap_err().is_exceeded());
/// assert!(exports.try_acquire("tenant-8").await.is_ok(), "each key has its own limit");
/// permit.release().await?;
/// assert!(exports.try_acquire("tenant-7").await.is_ok());
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Limiter {
    store: Arc<dyn Store>,
    name: Arc<str>,
    kind: Kind,
    recheck: Duration,
    timeout: Duration,
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Concurrency { limit: u64, lease: Duration },
    Window(Rate),
    Bucket { interval: Duration, burst: u64 },
}

impl Limiter {
    /// At most `limit` (at least 1) holders of a key at once. A holder's
    /// slot is leased ([`Limiter::lease`], default 30 s) and renewed while
    /// its [`Permit`] lives, so that the slot of a process that died frees
    /// after the lease, and a live holder's never does.
    pub fn concurrency(store: Arc<dyn Store>, name: impl Into<String>, limit: u64) -> Self {
        Self::with_kind(store, name, Kind::Concurrency { limit: limit.max(1), lease: DEFAULT_LEASE })
    }

    /// At most `rate.limit()` admissions of a key in any span of
    /// `rate.period()` (a sliding window, exact: each admission counts for
    /// one period from when it was made).
    pub fn window(store: Arc<dyn Store>, name: impl Into<String>, rate: Rate) -> Self {
        Self::with_kind(store, name, Kind::Window(rate))
    }

    /// On average `rate.limit()` admissions of a key per `rate.period()`,
    /// evenly paced, with up to `burst` (at least 1) at once after a quiet
    /// spell (the generic cell rate algorithm: a token bucket of `burst`
    /// tokens refilled one per `period / limit`). The interval has a
    /// millisecond's resolution: a bucket paces to at most 1,000
    /// admissions a second (a faster rate is paced at that); use a window
    /// above it.
    pub fn bucket(store: Arc<dyn Store>, name: impl Into<String>, rate: Rate, burst: u64) -> Self {
        let interval = rate.period() / u32::try_from(rate.limit()).unwrap_or(u32::MAX);
        let kind = Kind::Bucket { interval: interval.max(Duration::from_millis(1)), burst: burst.max(1) };
        Self::with_kind(store, name, kind)
    }

    fn with_kind(store: Arc<dyn Store>, name: impl Into<String>, kind: Kind) -> Self {
        Self { store, name: name.into().into(), kind, recheck: DEFAULT_RECHECK, timeout: DEFAULT_TIMEOUT }
    }

    /// A concurrency limiter's lease (default 30 s, at least 100 ms): how
    /// long a slot outlives a holder that stopped renewing it (renewals
    /// come every third of it). Other limiters ignore it.
    #[must_use]
    pub fn lease(mut self, lease: Duration) -> Self {
        if let Kind::Concurrency { lease: current, .. } = &mut self.kind {
            *current = lease.max(Duration::from_millis(100));
        }
        self
    }

    /// How soon a caller refused by a full concurrency limit tries again
    /// when no slot is due to lapse sooner (default 1 s): holders usually
    /// release before their lease lapses. Other limiters say exactly when.
    #[must_use]
    pub fn recheck(mut self, recheck: Duration) -> Self {
        self.recheck = recheck;
        self
    }

    /// How long a try waits for the store before it fails with
    /// [`LimitError::TimedOut`] (default 2 s).
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The limiter's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The store key of `key`: one hash slot per limiter and key.
    fn store_key(&self, key: &str) -> String {
        format!("limit:{{{}|{key}}}", self.name)
    }

    /// Takes a place under the limit for `key` if there is one now.
    ///
    /// # Errors
    ///
    /// [`LimitError::Exceeded`] with the time until a place is likely free;
    /// [`LimitError::Store`] when the store failed (a key over 1 KiB with
    /// the name, or an unreachable store); [`LimitError::TimedOut`] when
    /// it did not answer in time.
    ///
    /// # Panics
    ///
    /// Outside a Tokio runtime (the renewal of a concurrency slot is a task
    /// of its own).
    ///
    /// # Cancel safety
    ///
    /// A concurrency slot taken by a cancelled try lapses after the lease.
    pub async fn try_acquire(&self, key: &str) -> Result<Permit, LimitError> {
        let store_key = self.store_key(key);
        let member = MessageId::new().to_string();
        let admission = match self.kind {
            Kind::Concurrency { limit, lease } => {
                self.ask(self.store.take_slot(&store_key, &member, limit, lease)).await
            }
            Kind::Window(rate) => {
                self.ask(self.store.take_slot(&store_key, &member, rate.limit(), rate.period())).await
            }
            Kind::Bucket { interval, burst } => self.ask(self.store.take_paced(&store_key, interval, burst)).await,
        }?;
        if let Admission::Refused { retry_after } = admission {
            let retry_after = match self.kind {
                Kind::Concurrency { .. } => retry_after.min(self.recheck),
                _ => retry_after,
            };
            return Err(LimitError::Exceeded { limiter: self.name.to_string(), retry_after });
        }
        Ok(match self.kind {
            Kind::Concurrency { lease, .. } => Permit::held(
                Held {
                    store: Arc::clone(&self.store),
                    limiter: self.name.clone(),
                    key: store_key,
                    member,
                    timeout: self.timeout,
                    renewal: None,
                },
                lease,
            ),
            _ => Permit { held: None },
        })
    }

    /// Takes a place under the limit for `key`, waiting as long as it takes
    /// (each refusal says for how long, plus a little jitter so that
    /// waiters do not come back together).
    ///
    /// # Errors
    ///
    /// As [`try_acquire`](Limiter::try_acquire), except that it does not
    /// fail for a full limit.
    ///
    /// # Panics
    ///
    /// As [`try_acquire`](Limiter::try_acquire).
    ///
    /// # Cancel safety
    ///
    /// As [`try_acquire`](Limiter::try_acquire).
    pub async fn acquire(&self, key: &str) -> Result<Permit, LimitError> {
        loop {
            match self.try_acquire(key).await {
                Err(LimitError::Exceeded { retry_after, .. }) => tokio::time::sleep(jittered(retry_after)).await,
                other => return other,
            }
        }
    }

    /// One store call, within the timeout.
    async fn ask<T>(&self, call: impl Future<Output = Result<T, StoreError>>) -> Result<T, LimitError> {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(source)) => Err(LimitError::Store { limiter: self.name.to_string(), source }),
            Err(_) => Err(LimitError::TimedOut { limiter: self.name.to_string(), timeout: self.timeout }),
        }
    }
}

impl fmt::Debug for Limiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Limiter")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("recheck", &self.recheck)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// `delay` and up to a tenth more (and up to 10 ms), at random.
pub(crate) fn jittered(delay: Duration) -> Duration {
    delay + (delay / 10 + Duration::from_millis(10)).mul_f64(rand::random::<f64>())
}

/// A place under a limit. A concurrency slot is renewed while the permit
/// lives and given back when it is released or dropped (also while a
/// panic unwinds); an admission of a window or bucket limiter counts for
/// its period whatever happens to the permit.
#[must_use = "a concurrency slot is given back when its permit is dropped"]
pub struct Permit {
    held: Option<Held>,
}

/// A concurrency slot and the task that renews it.
struct Held {
    store: Arc<dyn Store>,
    limiter: Arc<str>,
    key: String,
    member: String,
    /// The limiter's timeout, for the release.
    timeout: Duration,
    renewal: Option<JoinHandle<()>>,
}

impl Held {
    /// Stops the renewal and gives the slot back, within the timeout.
    async fn release(mut self) -> Result<(), LimitError> {
        if let Some(renewal) = self.renewal.take() {
            renewal.abort();
        }
        match tokio::time::timeout(self.timeout, self.store.release_slot(&self.key, &self.member)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(source)) => Err(LimitError::Store { limiter: self.limiter.to_string(), source }),
            Err(_) => Err(LimitError::TimedOut { limiter: self.limiter.to_string(), timeout: self.timeout }),
        }
    }
}

impl Permit {
    /// A permit holding `held`'s slot, renewed every third of `lease`.
    fn held(mut held: Held, lease: Duration) -> Self {
        let renewal = renew(Arc::clone(&held.store), held.key.clone(), held.member.clone(), lease);
        held.renewal = Some(tokio::spawn(renewal));
        Self { held: Some(held) }
    }

    /// Gives the slot back now, and says whether that worked.
    ///
    /// # Errors
    ///
    /// [`LimitError::Store`] when the store failed, or
    /// [`LimitError::TimedOut`] when it did not answer within the limiter's
    /// timeout: the slot lapses after its lease.
    ///
    /// # Cancel safety
    ///
    /// A cancelled release leaves the slot to lapse after its lease.
    pub async fn release(mut self) -> Result<(), LimitError> {
        match self.held.take() {
            Some(held) => held.release().await,
            None => Ok(()),
        }
    }
}

impl Drop for Permit {
    /// Gives the slot back from a task of its own (without a runtime, the
    /// slot lapses after its lease).
    fn drop(&mut self) {
        let Some(mut held) = self.held.take() else { return };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            if let Some(renewal) = held.renewal.take() {
                renewal.abort();
            }
            tracing::debug!(limiter = %held.limiter, "no runtime to give a slot back; it lapses after its lease");
            return;
        };
        runtime.spawn(async move {
            if let Err(error) = held.release().await {
                tracing::warn!(%error, "could not give a slot back; it lapses after its lease");
            }
        });
    }
}

impl fmt::Debug for Permit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Permit").field("limiter", &self.held.as_ref().map(|held| &held.limiter)).finish()
    }
}

/// Renews a slot every third of its lease until aborted, or until the slot
/// is gone (then the holder runs on without it, and says so).
async fn renew(store: Arc<dyn Store>, key: String, member: String, lease: Duration) {
    let every = lease / 3;
    loop {
        tokio::time::sleep(every).await;
        match tokio::time::timeout(every, store.renew_slot(&key, &member, lease)).await {
            Ok(Ok(true)) => {}
            Ok(Ok(false)) => {
                tracing::warn!(%key, "a concurrency slot lapsed before it was renewed; the holder runs on without it");
                return;
            }
            Ok(Err(error)) => tracing::warn!(%key, %error, "could not renew a concurrency slot; trying again"),
            Err(_) => tracing::warn!(%key, "renewing a concurrency slot timed out; trying again"),
        }
    }
}

/// Why a place under a limit was not taken.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LimitError {
    /// The limit is full for this key.
    #[error("limit {limiter:?} is full; a place is likely free in {retry_after:?}")]
    Exceeded {
        /// The limiter's name.
        limiter: String,
        /// When to try again: when the earliest place lapses (for a
        /// concurrency limit, at most its recheck time).
        retry_after: Duration,
    },
    /// The store failed.
    #[error("limit {limiter:?}: the store failed: {source}")]
    Store {
        /// The limiter's name.
        limiter: String,
        /// The store's error.
        source: StoreError,
    },
    /// The store did not answer within the limiter's timeout.
    #[error("limit {limiter:?}: the store did not answer within {timeout:?}")]
    TimedOut {
        /// The limiter's name.
        limiter: String,
        /// The timeout.
        timeout: Duration,
    },
}

impl LimitError {
    /// Whether the limit was full.
    pub fn is_exceeded(&self) -> bool {
        matches!(self, Self::Exceeded { .. })
    }

    /// When to try again, for a full limit.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Exceeded { retry_after, .. } => Some(*retry_after),
            _ => None,
        }
    }

    /// Whether the store could not be reached or did not answer in time
    /// (trying again later may work).
    pub fn is_unavailable(&self) -> bool {
        match self {
            Self::Store { source, .. } => source.is_retryable(),
            Self::TimedOut { .. } => true,
            Self::Exceeded { .. } => false,
        }
    }
}
