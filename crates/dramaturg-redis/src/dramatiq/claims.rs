//! The claims this process holds, to fence settlements that Dramatiq's
//! layout cannot fence alone.
//!
//! In Redis a claim is the id's membership in the worker's ack set
//! (`__acks__.<worker>.<q>`): a settlement applies only if it removes the
//! id from there, so once another worker recovered the id (this worker was
//! taken for dead), the settlement is stale. But the same id can come back
//! to this worker — after such a recovery, or `requeue_in_flight` — and
//! the set cannot tell the old claim from the new one. So each claim also
//! gets a generation here, and a receipt whose generation is no longer the
//! id's is stale without asking Redis.
//!
//! The same map remembers which ids this process returned to their queue,
//! so that their next delivery is marked as redelivered (Dramatiq's layout
//! keeps no such mark; an id returned by another process is not marked).

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use crate::lock;

/// The most returned ids remembered; past it the marks are forgotten.
const MAX_RETURNED: usize = 100_000;

#[derive(Debug, Default)]
pub(crate) struct Claims {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    next: u64,
    /// (ack set, id) → generation of the current claim.
    current: HashMap<(String, String), u64>,
    /// (list, id) returned by this process.
    returned: HashSet<(String, String)>,
}

impl Claims {
    /// Records a claim of `id` into `acks` from `list`; returns its
    /// generation and whether the id was delivered before.
    pub(crate) fn claim(&self, acks: &str, list: &str, id: &str) -> (u64, bool) {
        let mut inner = lock(&self.inner);
        inner.next += 1;
        let generation = inner.next;
        let again = inner.returned.remove(&(list.to_owned(), id.to_owned()));
        let held = inner.current.insert((acks.to_owned(), id.to_owned()), generation).is_some();
        (generation, again || held)
    }

    /// Whether `generation` is the current claim of `id` in `acks`.
    pub(crate) fn is_current(&self, acks: &str, id: &str, generation: u64) -> bool {
        lock(&self.inner).current.get(&(acks.to_owned(), id.to_owned())) == Some(&generation)
    }

    /// Forgets the claim `generation` of `id`, if it is current.
    pub(crate) fn settled(&self, acks: &str, id: &str, generation: u64) {
        let mut inner = lock(&self.inner);
        let key = (acks.to_owned(), id.to_owned());
        if inner.current.get(&key) == Some(&generation) {
            inner.current.remove(&key);
        }
    }

    /// How many claims in `acks` are held.
    pub(crate) fn held(&self, acks: &str) -> usize {
        lock(&self.inner).current.keys().filter(|(a, _)| a == acks).count()
    }

    /// Marks `ids` as returned to `list`, so their next delivery is a
    /// redelivery.
    pub(crate) fn returned<'a>(&self, list: &str, ids: impl IntoIterator<Item = &'a str>) {
        let mut inner = lock(&self.inner);
        if inner.returned.len() > MAX_RETURNED {
            inner.returned.clear();
        }
        for id in ids {
            inner.returned.insert((list.to_owned(), id.to_owned()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_claim_makes_the_first_stale() {
        let claims = Claims::default();
        let (first, again) = claims.claim("acks", "q", "a");
        assert!(!again);
        let (second, again) = claims.claim("acks", "q", "a");
        assert!(again);
        assert!(!claims.is_current("acks", "a", first));
        assert!(claims.is_current("acks", "a", second));
        claims.settled("acks", "a", first);
        assert_eq!(claims.held("acks"), 1);
        claims.settled("acks", "a", second);
        assert_eq!(claims.held("acks"), 0);
        claims.returned("q", ["b"]);
        assert!(claims.claim("acks", "q", "b").1);
        assert!(!claims.claim("acks2", "q", "c").1);
    }
}
