//! Locking that survives a panic elsewhere.

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::Semaphore;

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
