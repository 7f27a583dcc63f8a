//! One behavioural test suite for every [`Store`].

// Test cases: an unexpected error is a failed case.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::store::{Admission, SetMode, Store, StoreErrorKind, MAX_KEY_BYTES, MAX_VALUE_BYTES};
use crate::MessageId;

/// Long enough that nothing expires by accident during a case.
const LONG: Duration = Duration::from_secs(60);

/// The store suite, bound to one store. Each case works under keys of its
/// own (the case's name and a fresh id), so cases run in parallel and
/// again against one server.
#[derive(Debug, Clone)]
pub struct StoreSuite {
    store: Arc<dyn Store>,
    prefix: String,
}

/// Generates one `#[tokio::test]` per store conformance case for the store
/// that `$make` (an `async` expression) produces.
///
/// ```ignore
/// dramaturg_core::store_conformance!(async { dramaturg_core::MemoryStore::new() });
/// ```
#[macro_export]
macro_rules! store_conformance {
    ($make:expr) => {
        $crate::store_conformance!(@cases $make;
            values_are_set_read_and_deleted,
            set_if_absent_writes_once,
            delete_if_removes_only_the_expected_value,
            set_if_absent_is_atomic,
            set_extend_keeps_the_longest,
            values_expire,
            counters_add_up_atomically,
            counters_refuse_what_is_not_a_counter,
            sets_count_their_members,
            sets_and_values_do_not_mix,
            wait_returns_a_value_set_before,
            wait_wakes_on_a_later_set,
            every_waiter_sees_the_value,
            set_many_writes_each_value_and_wakes_its_waiters,
            waits_do_not_hold_each_other_up,
            wait_times_out,
            wait_survives_cancellation,
            sizes_are_checked,
            slots_admit_up_to_their_cap,
            slots_lapse_unless_renewed,
            paced_admission_bursts_then_paces,
        );
    };
    (@cases $make:expr; $($case:ident,)*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let store = $make.await;
                $crate::conformance::StoreSuite::new(::std::sync::Arc::new(store), stringify!($case)).$case().await;
            }
        )*
    };
}

impl StoreSuite {
    /// The suite on `store`, with keys under `prefix` and a fresh id.
    pub fn new(store: Arc<dyn Store>, prefix: &str) -> Self {
        Self { store, prefix: format!("{prefix}-{}:", MessageId::new()) }
    }

    fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// `set` writes and replaces, `get` reads, `delete` removes and says
    /// whether there was anything.
    pub async fn values_are_set_read_and_deleted(&self) {
        let (s, key) = (&self.store, self.key("value"));
        assert_eq!(s.get(&key).await.unwrap(), None);
        assert!(s.set(&key, b"one", LONG, SetMode::Always).await.unwrap());
        assert_eq!(s.get(&key).await.unwrap().as_deref(), Some(&b"one"[..]));
        assert!(s.set(&key, b"", LONG, SetMode::Always).await.unwrap());
        assert_eq!(s.get(&key).await.unwrap().as_deref(), Some(&b""[..]), "an empty value is a value");
        assert!(s.delete(&key).await.unwrap());
        assert!(!s.delete(&key).await.unwrap());
        assert_eq!(s.get(&key).await.unwrap(), None);
    }

    /// `SetMode::IfAbsent` writes only to an empty key.
    pub async fn set_if_absent_writes_once(&self) {
        let (s, key) = (&self.store, self.key("lease"));
        assert!(s.set(&key, b"first", LONG, SetMode::IfAbsent).await.unwrap());
        assert!(!s.set(&key, b"second", LONG, SetMode::IfAbsent).await.unwrap());
        assert_eq!(s.get(&key).await.unwrap().as_deref(), Some(&b"first"[..]));
        s.delete(&key).await.unwrap();
        assert!(s.set(&key, b"third", LONG, SetMode::IfAbsent).await.unwrap());
    }

    /// `delete_if` removes a key only while it holds the expected value,
    /// and refuses a set.
    pub async fn delete_if_removes_only_the_expected_value(&self) {
        let (s, key) = (&self.store, self.key("owned"));
        assert!(!s.delete_if(&key, b"owner-1").await.unwrap(), "an absent key is not removed");
        assert!(s.set(&key, b"owner-2", LONG, SetMode::Always).await.unwrap());
        assert!(!s.delete_if(&key, b"owner-1").await.unwrap(), "another owner's key stays");
        assert_eq!(s.get(&key).await.unwrap().as_deref(), Some(&b"owner-2"[..]));
        assert!(s.delete_if(&key, b"owner-2").await.unwrap());
        assert_eq!(s.get(&key).await.unwrap(), None);
        let set = self.key("owned-set");
        s.set_add(&set, "member", LONG).await.unwrap();
        assert!(s.delete_if(&set, b"member").await.unwrap_err().is_wrong_type());
    }

    /// `SetMode::Extend` writes to an empty key or one that expires
    /// sooner, so the key lives as long as the longest write asked.
    pub async fn set_extend_keeps_the_longest(&self) {
        let (s, key) = (&self.store, self.key("marker"));
        let short = Duration::from_millis(150);
        assert!(s.set(&key, b"short", short, SetMode::Extend).await.unwrap(), "an empty key is written");
        assert!(s.set(&key, b"long", LONG, SetMode::Extend).await.unwrap(), "a longer TTL is written");
        assert!(!s.set(&key, b"shorter", short, SetMode::Extend).await.unwrap(), "a shorter one is not");
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(s.get(&key).await.unwrap().as_deref(), Some(&b"long"[..]));
    }

    /// Of many concurrent `IfAbsent` writes to one key, one succeeds.
    pub async fn set_if_absent_is_atomic(&self) {
        let key = self.key("race");
        let writes = (0..32u8).map(|i| {
            let (store, key) = (Arc::clone(&self.store), key.clone());
            tokio::spawn(async move { store.set(&key, &[i], LONG, SetMode::IfAbsent).await.unwrap() })
        });
        let mut won = 0;
        for write in writes {
            won += u32::from(write.await.unwrap());
        }
        assert_eq!(won, 1);
    }

    /// Values, counters and sets are gone after their TTL, and set-if-absent
    /// then succeeds.
    pub async fn values_expire(&self) {
        let s = &self.store;
        let (value, counter, set) = (self.key("value"), self.key("counter"), self.key("set"));
        let ttl = Duration::from_millis(150);
        s.set(&value, b"soon gone", ttl, SetMode::Always).await.unwrap();
        s.incr_by(&counter, 3, ttl).await.unwrap();
        s.set_add(&set, "member", ttl).await.unwrap();
        assert!(s.get(&value).await.unwrap().is_some());
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(s.get(&value).await.unwrap(), None);
        assert_eq!(s.incr_by(&counter, 1, LONG).await.unwrap(), 1, "the counter started again");
        assert_eq!(s.set_len(&set).await.unwrap(), 0);
        assert!(s.set(&value, b"again", LONG, SetMode::IfAbsent).await.unwrap());
        // A later write gives a key its own TTL again.
        s.set(&value, b"short", ttl, SetMode::Always).await.unwrap();
        s.set(&value, b"long", LONG, SetMode::Always).await.unwrap();
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(s.get(&value).await.unwrap().as_deref(), Some(&b"long"[..]));
    }

    /// `incr_by` starts at zero, adds (negative deltas too) under concurrency,
    /// and the counter reads as its decimal text.
    pub async fn counters_add_up_atomically(&self) {
        let key = self.key("counter");
        assert_eq!(self.store.incr_by(&key, 5, LONG).await.unwrap(), 5);
        assert_eq!(self.store.incr_by(&key, -7, LONG).await.unwrap(), -2);
        let adds = (0..40).map(|_| {
            let (store, key) = (Arc::clone(&self.store), key.clone());
            tokio::spawn(async move { store.incr_by(&key, 1, LONG).await.unwrap() })
        });
        let mut seen = Vec::new();
        for add in adds {
            seen.push(add.await.unwrap());
        }
        seen.sort_unstable();
        assert_eq!(seen, (-1..39).collect::<Vec<_>>(), "each increment saw its own value");
        assert_eq!(self.store.get(&key).await.unwrap().as_deref(), Some(&b"38"[..]));
    }

    /// A value that is not a decimal `i64` is not a counter, and a counter
    /// cannot leave `i64`.
    pub async fn counters_refuse_what_is_not_a_counter(&self) {
        let (s, text, counter) = (&self.store, self.key("text"), self.key("counter"));
        s.set(&text, b"seven", LONG, SetMode::Always).await.unwrap();
        let error = s.incr_by(&text, 1, LONG).await.unwrap_err();
        assert_eq!(error.kind(), StoreErrorKind::WrongType, "{error}");
        assert_eq!(s.get(&text).await.unwrap().as_deref(), Some(&b"seven"[..]), "unchanged");
        s.incr_by(&counter, i64::MAX, LONG).await.unwrap();
        let error = s.incr_by(&counter, 1, LONG).await.unwrap_err();
        assert_eq!(error.kind(), StoreErrorKind::InvalidInput, "{error}");
        assert_eq!(s.incr_by(&counter, 0, LONG).await.unwrap(), i64::MAX, "unchanged");
    }

    /// `set_add` and `set_remove` return the count after the change; a set
    /// emptied is gone.
    pub async fn sets_count_their_members(&self) {
        let (s, key) = (&self.store, self.key("set"));
        assert_eq!(s.set_len(&key).await.unwrap(), 0);
        assert_eq!(s.set_remove(&key, "nobody").await.unwrap(), 0);
        assert_eq!(s.set_add(&key, "a", LONG).await.unwrap(), 1);
        assert_eq!(s.set_add(&key, "b", LONG).await.unwrap(), 2);
        assert_eq!(s.set_add(&key, "a", LONG).await.unwrap(), 2, "members are counted once");
        assert_eq!(s.set_len(&key).await.unwrap(), 2);
        assert_eq!(s.set_remove(&key, "nobody").await.unwrap(), 2);
        assert_eq!(s.set_remove(&key, "a").await.unwrap(), 1);
        assert_eq!(s.set_remove(&key, "b").await.unwrap(), 0);
        assert!(!s.delete(&key).await.unwrap(), "an empty set is gone");
        let adds = (0..40).map(|i| {
            let (store, key) = (Arc::clone(&self.store), key.clone());
            tokio::spawn(async move { store.set_add(&key, &format!("m{i}"), LONG).await.unwrap() })
        });
        let mut seen = Vec::new();
        for add in adds {
            seen.push(add.await.unwrap());
        }
        seen.sort_unstable();
        assert_eq!(seen, (1..=40).collect::<Vec<_>>(), "each add saw its own count");
    }

    /// A key holds a value or a set: using it as the other is a `WrongType`
    /// error, except `set`, which replaces a set.
    pub async fn sets_and_values_do_not_mix(&self) {
        let (s, value, set) = (&self.store, self.key("value"), self.key("set"));
        s.set(&value, b"v", LONG, SetMode::Always).await.unwrap();
        s.set_add(&set, "m", LONG).await.unwrap();
        for error in [
            s.set_add(&value, "m", LONG).await.unwrap_err(),
            s.set_remove(&value, "m").await.unwrap_err(),
            s.set_len(&value).await.unwrap_err(),
            s.get(&set).await.unwrap_err(),
            s.incr_by(&set, 1, LONG).await.unwrap_err(),
        ] {
            assert!(error.is_wrong_type(), "{error}");
        }
        assert!(!s.set(&set, b"v", LONG, SetMode::IfAbsent).await.unwrap());
        assert!(s.set(&set, b"v", LONG, SetMode::Always).await.unwrap());
        assert_eq!(s.get(&set).await.unwrap().as_deref(), Some(&b"v"[..]));
    }

    /// A slot set admits up to its cap, atomically; a holder taking again
    /// keeps its slot; a release lets the next one in; a refusal says how
    /// long the earliest slot has left; a slot set is not a value.
    pub async fn slots_admit_up_to_their_cap(&self) {
        let (s, key, value) = (&self.store, self.key("slots"), self.key("value"));
        let takes = (0..24u8).map(|i| {
            let (store, key) = (Arc::clone(&self.store), key.clone());
            tokio::spawn(async move { store.take_slot(&key, &format!("racer-{i}"), 3, LONG).await.unwrap() })
        });
        let mut admitted = 0;
        for take in takes {
            admitted += u32::from(take.await.unwrap().is_admitted());
        }
        assert_eq!(admitted, 3);
        let other = self.key("pair");
        assert!(s.take_slot(&other, "a", 2, LONG).await.unwrap().is_admitted());
        assert!(s.take_slot(&other, "b", 2, LONG).await.unwrap().is_admitted());
        assert!(s.take_slot(&other, "a", 2, LONG).await.unwrap().is_admitted(), "a holder keeps its slot");
        let Admission::Refused { retry_after } = s.take_slot(&other, "c", 2, LONG).await.unwrap() else {
            panic!("a third holder was admitted under a cap of 2");
        };
        assert!(retry_after > LONG - Duration::from_secs(5) && retry_after <= LONG, "{retry_after:?}");
        assert!(s.release_slot(&other, "a").await.unwrap());
        assert!(!s.release_slot(&other, "a").await.unwrap());
        assert!(s.take_slot(&other, "c", 2, LONG).await.unwrap().is_admitted());
        s.set(&value, b"v", LONG, SetMode::Always).await.unwrap();
        for error in [
            s.take_slot(&value, "m", 1, LONG).await.unwrap_err(),
            s.take_paced(&other, LONG, 1).await.unwrap_err(),
            s.get(&other).await.unwrap_err(),
        ] {
            assert!(error.is_wrong_type(), "{error}");
        }
    }

    /// A slot lapses its hold time after it was taken or last renewed —
    /// never while it is renewed in time — and cannot be renewed after.
    pub async fn slots_lapse_unless_renewed(&self) {
        let (s, key) = (&self.store, self.key("lease"));
        let hold = Duration::from_millis(400);
        assert!(s.take_slot(&key, "holder", 1, hold).await.unwrap().is_admitted());
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_millis(250)).await;
            assert!(s.renew_slot(&key, "holder", hold).await.unwrap());
            assert!(!s.take_slot(&key, "other", 1, hold).await.unwrap().is_admitted(), "a renewed slot lapsed");
        }
        tokio::time::sleep(hold + Duration::from_millis(100)).await;
        assert!(!s.renew_slot(&key, "holder", hold).await.unwrap());
        assert!(s.take_slot(&key, "other", 1, hold).await.unwrap().is_admitted());
        tokio::time::sleep(hold + Duration::from_millis(100)).await;
        assert_eq!(s.set_len(&key).await.ok(), Some(0), "an empty slot set is gone");
    }

    /// Paced admission lets a burst in at once, then one caller per
    /// interval, saying when the next may come.
    pub async fn paced_admission_bursts_then_paces(&self) {
        let (s, key) = (&self.store, self.key("paced"));
        // Long enough that a loaded machine's slow calls stay well within it.
        let interval = Duration::from_millis(1500);
        for _ in 0..3 {
            assert!(s.take_paced(&key, interval, 3).await.unwrap().is_admitted());
        }
        let Admission::Refused { retry_after } = s.take_paced(&key, interval, 3).await.unwrap() else {
            panic!("a fourth caller came in within the burst of 3");
        };
        assert!(retry_after > interval / 2 && retry_after <= interval, "{retry_after:?}");
        tokio::time::sleep(retry_after + Duration::from_millis(20)).await;
        assert!(s.take_paced(&key, interval, 3).await.unwrap().is_admitted());
        assert!(!s.take_paced(&key, interval, 3).await.unwrap().is_admitted());
    }

    /// A key set before the wait is returned at once.
    pub async fn wait_returns_a_value_set_before(&self) {
        let (a, b) = (self.key("a"), self.key("b"));
        self.store.set(&b, b"early", LONG, SetMode::Always).await.unwrap();
        let started = Instant::now();
        let found = self.store.wait_any(&[a, b.clone()], LONG).await.unwrap();
        assert_eq!(found, Some((b, b"early".to_vec())));
        assert!(started.elapsed() < Duration::from_secs(1));
    }

    /// A wait is woken by a `set` of one of its keys, not of others,
    /// without waiting out its timeout.
    pub async fn wait_wakes_on_a_later_set(&self) {
        let (a, b, other) = (self.key("a"), self.key("b"), self.key("other"));
        let store = Arc::clone(&self.store);
        let keys = [a.clone(), b.clone()];
        let waiting = tokio::spawn(async move { store.wait_any(&keys, LONG).await.unwrap() });
        tokio::time::sleep(Duration::from_millis(200)).await;
        self.store.set(&other, b"not this", LONG, SetMode::Always).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!waiting.is_finished(), "woken by a key it does not wait on");
        let set_at = Instant::now();
        self.store.set(&b, b"now", LONG, SetMode::Always).await.unwrap();
        let found = tokio::time::timeout(Duration::from_secs(5), waiting).await.expect("woken").unwrap();
        assert_eq!(found, Some((b, b"now".to_vec())));
        assert!(set_at.elapsed() < Duration::from_secs(1), "{:?}", set_at.elapsed());
    }

    /// `set_many` writes every entry with its own TTL, replacing what the
    /// keys held, and wakes the waiters of each; a bad entry is an error.
    pub async fn set_many_writes_each_value_and_wakes_its_waiters(&self) {
        let (first, second, short) = (self.key("many-1"), self.key("many-2"), self.key("many-short"));
        self.store.set(&first, b"old", LONG, SetMode::Always).await.unwrap();
        let waiter = {
            let store = Arc::clone(&self.store);
            let keys = [second.clone()];
            tokio::spawn(async move { store.wait_any(&keys, LONG).await.unwrap() })
        };
        tokio::time::sleep(Duration::from_millis(200)).await;
        let entries: [(&str, &[u8], Duration); 3] =
            [(&first, b"one", LONG), (&second, b"two", LONG), (&short, b"brief", Duration::from_millis(100))];
        self.store.set_many(&entries).await.unwrap();
        let found = tokio::time::timeout(Duration::from_secs(5), waiter).await.expect("woken").unwrap();
        assert_eq!(found, Some((second.clone(), b"two".to_vec())));
        assert_eq!(self.store.get(&first).await.unwrap().as_deref(), Some(&b"one"[..]));
        assert_eq!(self.store.get(&short).await.unwrap().as_deref(), Some(&b"brief"[..]));
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(self.store.get(&short).await.unwrap(), None, "each entry has its own TTL");
        self.store.set_many(&[]).await.unwrap();
        let too_long = "k".repeat(crate::store::MAX_KEY_BYTES + 1);
        let error = self.store.set_many(&[(too_long.as_str(), b"v", LONG)]).await.unwrap_err();
        assert!(error.is_invalid_input(), "{error}");
    }

    /// Several waits on one key, concurrent and one after the other, all
    /// see its value: one `set` wakes every waiter, and a key that holds a
    /// value is returned at once however many waits read it before.
    pub async fn every_waiter_sees_the_value(&self) {
        let key = self.key("shared");
        let waiters: Vec<_> = (0..3)
            .map(|_| {
                let store = Arc::clone(&self.store);
                let keys = [key.clone()];
                tokio::spawn(async move { store.wait_any(&keys, LONG).await.unwrap() })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(200)).await;
        self.store.set(&key, b"all", LONG, SetMode::Always).await.unwrap();
        for waiter in waiters {
            let found = tokio::time::timeout(Duration::from_secs(5), waiter).await.expect("woken").unwrap();
            assert_eq!(found, Some((key.clone(), b"all".to_vec())));
        }
        for _ in 0..2 {
            let started = Instant::now();
            let found = self.store.wait_any(std::slice::from_ref(&key), LONG).await.unwrap();
            assert_eq!(found, Some((key.clone(), b"all".to_vec())));
            assert!(started.elapsed() < Duration::from_secs(1), "{:?}", started.elapsed());
        }
    }

    /// A long wait on one key does not hold up a wait on another: the
    /// second is woken by its `set` while the first still waits.
    pub async fn waits_do_not_hold_each_other_up(&self) {
        let (long, short) = (self.key("long"), self.key("short"));
        let store = Arc::clone(&self.store);
        let keys = [long.clone()];
        let waiting_long = tokio::spawn(async move { store.wait_any(&keys, LONG).await.unwrap() });
        tokio::time::sleep(Duration::from_millis(100)).await;
        let store = Arc::clone(&self.store);
        let keys = [short.clone()];
        let waiting_short = tokio::spawn(async move { store.wait_any(&keys, LONG).await.unwrap() });
        tokio::time::sleep(Duration::from_millis(100)).await;
        let set_at = Instant::now();
        self.store.set(&short, b"soon", LONG, SetMode::Always).await.unwrap();
        let found = tokio::time::timeout(Duration::from_secs(5), waiting_short).await.expect("woken").unwrap();
        assert_eq!(found, Some((short, b"soon".to_vec())));
        assert!(set_at.elapsed() < Duration::from_secs(1), "{:?}", set_at.elapsed());
        assert!(!waiting_long.is_finished());
        self.store.set(&long, b"later", LONG, SetMode::Always).await.unwrap();
        let found = tokio::time::timeout(Duration::from_secs(5), waiting_long).await.expect("woken").unwrap();
        assert_eq!(found, Some((long, b"later".to_vec())));
    }

    /// A wait with nothing set returns `None` after its timeout, not before.
    pub async fn wait_times_out(&self) {
        let started = Instant::now();
        let timeout = Duration::from_millis(300);
        assert_eq!(self.store.wait_any(&[self.key("never")], timeout).await.unwrap(), None);
        let waited = started.elapsed();
        assert!(waited >= timeout && waited < timeout * 5, "{waited:?}");
        assert_eq!(self.store.wait_any(&[], Duration::from_millis(10)).await.unwrap(), None);
    }

    /// A wait dropped before it finished leaves the store usable: later
    /// waits, on the same keys or others, see every value set since.
    pub async fn wait_survives_cancellation(&self) {
        let (a, b) = (self.key("a"), self.key("b"));
        for _ in 0..3 {
            let keys = [a.clone()];
            let cancelled = tokio::time::timeout(Duration::from_millis(50), self.store.wait_any(&keys, LONG));
            assert!(cancelled.await.is_err(), "nothing was set yet");
        }
        self.store.set(&a, b"set between waits", LONG, SetMode::Always).await.unwrap();
        let found = self.store.wait_any(&[b.clone(), a.clone()], LONG).await.unwrap();
        assert_eq!(found, Some((a, b"set between waits".to_vec())));
        let store = Arc::clone(&self.store);
        let keys = [b.clone()];
        let waiting = tokio::spawn(async move { store.wait_any(&keys, LONG).await.unwrap() });
        tokio::time::sleep(Duration::from_millis(100)).await;
        self.store.set(&b, b"later", LONG, SetMode::Always).await.unwrap();
        let found = tokio::time::timeout(Duration::from_secs(5), waiting).await.expect("woken").unwrap();
        assert_eq!(found, Some((b, b"later".to_vec())));
    }

    /// Empty or oversized keys, members and values are refused as invalid
    /// input, and change nothing.
    pub async fn sizes_are_checked(&self) {
        let s = &self.store;
        let long = format!("{}{}", self.prefix, "k".repeat(MAX_KEY_BYTES));
        let key = self.key("value");
        for error in [
            s.get("").await.unwrap_err(),
            s.get(&long).await.unwrap_err(),
            s.set(&long, b"v", LONG, SetMode::Always).await.unwrap_err(),
            s.set(&key, &vec![0; MAX_VALUE_BYTES + 1], LONG, SetMode::Always).await.unwrap_err(),
            s.set_add(&key, "", LONG).await.unwrap_err(),
            s.incr_by("", 1, LONG).await.unwrap_err(),
            s.wait_any(&[key.clone(), String::new()], LONG).await.unwrap_err(),
        ] {
            assert!(error.is_invalid_input(), "{error}");
        }
        assert_eq!(s.get(&key).await.unwrap(), None);
        let at_limit = format!("{}{}", self.prefix, "k".repeat(MAX_KEY_BYTES - self.prefix.len()));
        assert!(s.set(&at_limit, b"v", LONG, SetMode::Always).await.unwrap());
        s.delete(&at_limit).await.unwrap();
    }
}
