//! Locking that survives a panic elsewhere.

use std::sync::{Mutex, MutexGuard, PoisonError};

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
