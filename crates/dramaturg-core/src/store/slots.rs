//! Capped sets of expiring slots and paced admission: what rate and
//! concurrency limits are made of.

use std::time::Duration;

use async_trait::async_trait;

use super::StoreError;

/// Whether [`Slots::take_slot`] or [`Slots::take_paced`] let a caller in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Admission {
    /// The caller is in.
    Admitted,
    /// The caller is not in: no slot frees sooner than `retry_after` (a
    /// slot may be released earlier by its holder).
    Refused {
        /// The time until the earliest slot lapses (at least 1 ms).
        retry_after: Duration,
    },
}

impl Admission {
    /// Whether the caller is in.
    pub fn is_admitted(&self) -> bool {
        matches!(self, Self::Admitted)
    }
}

/// Atomic admission, for rate and concurrency limits. Part of every
/// [`Store`](super::Store).
///
/// A **slot set** is a key holding up to a cap of named slots, each of
/// which lapses a hold time after it was taken or last renewed: a
/// concurrency limit takes one per holder (and renews it while the holder
/// runs), a sliding-window limit takes one per admission, held for the
/// window. A **pacing key** holds the theoretical arrival time of the
/// generic cell rate algorithm (GCRA): a token bucket in one number.
///
/// Each call is one atomic step on one key (Redis: one script, timed by
/// the server's clock); the key expires when its last slot lapses. A key of
/// another kind is a [`StoreErrorKind::WrongType`](super::StoreErrorKind)
/// error.
#[async_trait]
pub trait Slots: Send + Sync {
    /// Takes the slot `member` in the set at `key` for `hold`, if fewer
    /// than `cap` (at least 1) slots are live, or renews it if `member` holds one
    /// already; otherwise refuses, with the time until the earliest live
    /// slot lapses.
    ///
    /// # Errors
    ///
    /// [`StoreErrorKind::InvalidInput`](super::StoreErrorKind) for a key or
    /// member outside the size rules; wrong type; or an error of the
    /// store's connection (the slot may or may not have been taken; it
    /// lapses after `hold` either way).
    async fn take_slot(&self, key: &str, member: &str, cap: u64, hold: Duration) -> Result<Admission, StoreError>;

    /// Makes `member`'s slot at `key` lapse `hold` from now; `false` when
    /// it holds none (it lapsed, or was released).
    ///
    /// # Errors
    ///
    /// As [`take_slot`](Slots::take_slot).
    async fn renew_slot(&self, key: &str, member: &str, hold: Duration) -> Result<bool, StoreError>;

    /// Gives `member`'s slot at `key` back; returns whether it held one.
    ///
    /// # Errors
    ///
    /// As [`take_slot`](Slots::take_slot).
    async fn release_slot(&self, key: &str, member: &str) -> Result<bool, StoreError>;

    /// Paced admission at `key` (GCRA): on average one caller per
    /// `interval`, and up to `burst` (at least 1) at once after a quiet
    /// spell; a refusal says when the next caller may come in.
    ///
    /// # Errors
    ///
    /// As [`take_slot`](Slots::take_slot).
    async fn take_paced(&self, key: &str, interval: Duration, burst: u64) -> Result<Admission, StoreError>;
}
