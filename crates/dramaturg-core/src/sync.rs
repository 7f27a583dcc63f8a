//! Locking that survives a panic elsewhere, and the prefetch slots of a
//! broker's consumer: how many messages to claim, and waiting for a free
//! slot while watching the queue's pause.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::{BrokerError, BrokerErrorKind};

/// Locks `mutex`, taking the guard even if a thread panicked while it held
/// the lock.
///
/// A poisoned lock only says that a panic happened inside a critical
/// section. Use this for state that every critical section leaves
/// consistent (single pushes, pops and inserts, as in the in-memory broker
/// and the abort middleware): there, refusing the lock would turn one
/// panicking actor into a broken worker.
///
/// # Examples
///
/// ```
/// use std::sync::Mutex;
/// use dramaturg_core::sync::lock;
///
/// let counter = Mutex::new(0);
/// *lock(&counter) += 1;
/// assert_eq!(*lock(&counter), 1);
/// ```
pub fn lock<T: ?Sized>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// How many messages a consumer with `prefetch` slots, whose free slots are
/// the permits of `slots`, claims for the delivery it is making (whose
/// slot it holds) and every other free slot.
///
/// A busy worker frees its slots one at a time, and a claim per slot would
/// cost a round trip (a commit, in a database) per message; so when less
/// than a quarter of the prefetch is free, this waits up to `gather` for a
/// quarter to free, and counts what is free then. The permits are only
/// counted, never kept.
///
/// # Examples
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use std::time::Duration;
/// use dramaturg_core::sync::claim_room;
/// use tokio::sync::Semaphore;
///
/// let slots = Semaphore::new(15); // 1 of 16 taken, by this delivery
/// assert_eq!(claim_room(&slots, 16, Duration::from_millis(2)).await, 16);
/// # }
/// ```
pub async fn claim_room(slots: &Semaphore, prefetch: usize, gather: Duration) -> usize {
    let quarter = prefetch / 4;
    if slots.available_permits() + 1 < quarter {
        let wanted = u32::try_from(quarter - 1).unwrap_or(u32::MAX);
        // Released at once: they are only counted.
        let _ = tokio::time::timeout(gather, slots.acquire_many(wanted)).await;
    }
    slots.available_permits() + 1
}

/// How long a consumer whose queue's pause is watched goes without looking
/// whether the queue was paused: while it hands out claimed messages, and
/// while it waits for a free prefetch slot ([`free_slot`]).
pub const PAUSE_CHECK: Duration = Duration::from_millis(500);

/// A consumer that hands out deliveries against prefetch slots and learns
/// whether its queue was paused by looking (see [`free_slot`]).
#[async_trait::async_trait]
pub trait PauseWatching: Send {
    /// Its prefetch slots: a delivery handed out holds one until settled.
    fn slots(&self) -> Arc<Semaphore>;

    /// Whether the queue's pause is watched (the worker keeps a view of it).
    fn pause_watched(&self) -> bool;

    /// Looks whether the queue was paused, and acts on what it learns.
    ///
    /// # Errors
    ///
    /// The broker's, when it cannot be asked.
    async fn check_paused(&mut self) -> Result<(), BrokerError>;
}

/// A free prefetch slot of `consumer` for its next delivery. While there is
/// none (the whole prefetch handed out and unsettled) and the pause is
/// watched, looks every [`PAUSE_CHECK`] whether the queue was paused, so
/// that the worker learns it and returns the deliveries it has not started
/// (a failed look is tried again at the next).
///
/// # Errors
///
/// A [`BrokerError`] of kind `Closed` once the slots are closed.
pub async fn free_slot<C: PauseWatching + ?Sized>(consumer: &mut C) -> Result<OwnedSemaphorePermit, BrokerError> {
    let slots = consumer.slots();
    loop {
        let watched = consumer.pause_watched();
        tokio::select! {
            permit = Arc::clone(&slots).acquire_owned() => {
                return permit.map_err(|_| BrokerError::new(BrokerErrorKind::Closed, "the consumer is closed"));
            }
            () = tokio::time::sleep(PAUSE_CHECK), if watched => {
                if let Err(error) = consumer.check_paused().await {
                    tracing::debug!(%error, "could not look whether the queue is paused");
                }
            }
        }
    }
}
