//! Rate and concurrency limits: declared on actors and enforced by the
//! middleware (a limited message is put off, never failed, and uses no
//! retry), and taken inside actors — on the in-memory broker, and on the
//! real Redis with four worker processes.

#![cfg(feature = "rate-limits")]
#![allow(clippy::unwrap_used)] // Tests may panic on the unexpected.

mod support;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dramaturg::prelude::*;
use dramaturg::rate_limits::{Limiter, RateLimits, WhenUnreachable};
use dramaturg::store::{Admission, Counters, SetMode, Slots};
use dramaturg::{BoxError, Broker};
use serde::{Deserialize, Serialize};

/// Where this worker child's jobs log (set from the child's spec).
static LOG: OnceLock<PathBuf> = OnceLock::new();

/// Microseconds since the Unix epoch: comparable across processes.
fn now_micros() -> u64 {
    u64::try_from(SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_micros()).unwrap()
}

/// Logs `<what> <retries> <µs>` (and the process id) to this child's log.
fn log(what: &str, ctx: &Context) {
    if let Some(log) = LOG.get() {
        support::append(log.to_str().unwrap(), &format!("{what} {} {}", ctx.retries(), now_micros()));
    }
}

/// The `(retries, µs)` of each line of `log` that begins with `what`.
fn entries(log: &Path, what: &str) -> Vec<(u32, u64)> {
    support::logged(log, what)
        .iter()
        .map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            (fields[1].parse().unwrap(), fields[2].parse().unwrap())
        })
        .collect()
}

/// At most 50 per second, across every worker.
#[derive(Actor, Serialize, Deserialize)]
#[actor(queue = "paced", rate_limit = "50/s")]
struct Paced {
    seq: u64,
}

impl Paced {
    async fn perform(self, ctx: &Context) -> Result<(), BoxError> {
        log("start", ctx);
        if let Some(log) = LOG.get() {
            support::append(log.to_str().unwrap(), &format!("seq {}", self.seq));
        }
        Ok(())
    }
}

/// At most 3 at once per tenant, across every worker; each runs `millis`.
#[derive(Actor, Serialize, Deserialize)]
#[actor(queue = "exports", concurrency = 3, limit_key = "tenant")]
struct Export {
    tenant: String,
    millis: u64,
}

/// Exports of tenant `"acme"` running in this process, for the in-memory
/// concurrency test (other tests in this process use other tenants).
static RUNNING: AtomicU32 = AtomicU32::new(0);
static MOST_RUNNING: AtomicU32 = AtomicU32::new(0);

impl Export {
    async fn perform(self, ctx: &Context) -> Result<(), BoxError> {
        log("start", ctx);
        let counted = self.tenant == "acme";
        if counted {
            let now = RUNNING.fetch_add(1, Ordering::SeqCst) + 1;
            MOST_RUNNING.fetch_max(now, Ordering::SeqCst);
        }
        tokio::time::sleep(Duration::from_millis(self.millis)).await;
        if counted {
            RUNNING.fetch_sub(1, Ordering::SeqCst);
        }
        log("end", ctx);
        Ok(())
    }
}

/// A limited app: the concurrency re-check is short, so that the tests
/// are quick.
fn limited_app(broker: impl Broker, store: Arc<dyn dramaturg::Store>) -> App {
    dramaturg::app(broker)
        .middleware(RateLimits::new(store).recheck(Duration::from_millis(100)))
        .actor::<Paced>()
        .actor::<Export>()
        .build()
        .unwrap()
}

/// On the in-memory broker, a concurrency limit of 3 is never exceeded,
/// and the messages over it are postponed — not failed, not retried — and
/// counted in the worker's report.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_declared_concurrency_limit_postpones_without_using_a_retry() {
    let broker = MemoryBroker::new();
    let app = limited_app(broker.clone(), broker.store().unwrap());
    for _ in 0..12 {
        Export { tenant: "acme".into(), millis: 50 }.send(&app).await.unwrap();
    }
    let report = Worker::new(app.clone()).concurrency(8).run_until_drained(Duration::from_secs(20)).await.unwrap();
    assert_eq!(report.succeeded, 12);
    assert_eq!((report.retried, report.failed, report.dead_lettered()), (0, 0, 0), "{report:?}");
    assert!(report.postponed > 0, "nothing was postponed: {report:?}");
    assert_eq!(MOST_RUNNING.load(Ordering::SeqCst), 3, "the limit was exceeded, or never reached");
}

/// An app that declares a limit the middleware cannot read does not build,
/// nor one with the middleware outside the retries.
#[test]
fn a_malformed_rate_limit_fails_the_build() {
    #[derive(Actor, Serialize, Deserialize)]
    #[actor(rate_limit = "50/fortnight")]
    struct Wrong;
    impl Wrong {
        async fn perform(self, _ctx: &Context) -> Result<(), BoxError> {
            Ok(())
        }
    }
    let broker = MemoryBroker::new();
    let limits = RateLimits::for_broker(&broker).unwrap();
    let error = dramaturg::app(broker).middleware(limits).actor::<Wrong>().build().unwrap_err().to_string();
    assert!(error.contains("invalid rate") && error.contains("50/fortnight"), "{error}");
    // Outside the retries, a failure to reach the store would not be retried.
    let broker = MemoryBroker::new();
    let limits = RateLimits::for_broker(&broker).unwrap();
    let error = dramaturg::app(broker).insert_before("retries", limits).build().unwrap_err().to_string();
    assert!(error.contains("must sit inside"), "{error}");
}

/// An app whose actors declare limits needs the middleware: without it,
/// `build()` refuses their options rather than ignore the limits.
#[test]
fn declared_limits_need_the_middleware() {
    let error = dramaturg::app(MemoryBroker::new()).actor::<Export>().build().unwrap_err();
    assert!(
        matches!(&error, dramaturg::ConfigError::UnknownOption { option, .. } if option == "concurrency"),
        "{error}"
    );
}

/// A permit gives its concurrency slot back when its holder panics (long
/// before the 30 s lease).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permit_gives_its_slot_back_when_its_holder_panics() {
    let limiter = Limiter::concurrency(Arc::new(dramaturg::MemoryStore::new()), "exports", 1);
    let holder = limiter.clone();
    let panicked = tokio::spawn(async move {
        let _permit = holder.acquire("acme").await.unwrap();
        panic!("the export broke");
    })
    .await;
    assert!(panicked.unwrap_err().is_panic());
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    while limiter.try_acquire("acme").await.is_err() {
        assert!(std::time::Instant::now() < deadline, "the slot was not given back");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A store that never answers.
#[derive(Debug)]
struct Unreachable;

#[dramaturg::async_trait]
impl dramaturg::Store for Unreachable {
    async fn get(&self, _: &str) -> Result<Option<Vec<u8>>, dramaturg::StoreError> {
        std::future::pending().await
    }
    async fn set(&self, _: &str, _: &[u8], _: Duration, _: SetMode) -> Result<bool, dramaturg::StoreError> {
        std::future::pending().await
    }
    async fn delete(&self, _: &str) -> Result<bool, dramaturg::StoreError> {
        std::future::pending().await
    }
    async fn delete_if(&self, _: &str, _: &[u8]) -> Result<bool, dramaturg::StoreError> {
        std::future::pending().await
    }
    async fn wait_any(&self, _: &[String], _: Duration) -> Result<Option<(String, Vec<u8>)>, dramaturg::StoreError> {
        std::future::pending().await
    }
}

#[dramaturg::async_trait]
impl Counters for Unreachable {
    async fn incr_by(&self, _: &str, _: i64, _: Duration) -> Result<i64, dramaturg::StoreError> {
        std::future::pending().await
    }
    async fn set_add(&self, _: &str, _: &str, _: Duration) -> Result<u64, dramaturg::StoreError> {
        std::future::pending().await
    }
    async fn set_remove(&self, _: &str, _: &str) -> Result<u64, dramaturg::StoreError> {
        std::future::pending().await
    }
    async fn set_len(&self, _: &str) -> Result<u64, dramaturg::StoreError> {
        std::future::pending().await
    }
}

#[dramaturg::async_trait]
impl Slots for Unreachable {
    async fn take_slot(&self, _: &str, _: &str, _: u64, _: Duration) -> Result<Admission, dramaturg::StoreError> {
        std::future::pending().await
    }
    async fn renew_slot(&self, _: &str, _: &str, _: Duration) -> Result<bool, dramaturg::StoreError> {
        std::future::pending().await
    }
    async fn release_slot(&self, _: &str, _: &str) -> Result<bool, dramaturg::StoreError> {
        std::future::pending().await
    }
    async fn take_paced(&self, _: &str, _: Duration, _: u64) -> Result<Admission, dramaturg::StoreError> {
        std::future::pending().await
    }
}

/// One export, limited in a store that never answers, as `unreachable`
/// says: the worker's report.
async fn run_with_an_unreachable_store(unreachable: WhenUnreachable) -> dramaturg::WorkerReport {
    let limits =
        RateLimits::new(Arc::new(Unreachable)).timeout(Duration::from_millis(200)).when_unreachable(unreachable);
    let app = dramaturg::app(MemoryBroker::new()).middleware(limits).actor::<Export>().build().unwrap();
    let options = SendOptions::default().with_options(|o| o.with_max_retries(0));
    Export { tenant: "unreachable".into(), millis: 1 }.send_with(&app, options).await.unwrap();
    Worker::new(app).run_until_drained(Duration::from_secs(5)).await.unwrap()
}

/// When the limiter's store does not answer, the attempt fails (as a
/// retryable failure, here with no retries left) or runs without its limit,
/// as configured — within the timeout, never a hang.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_store_fails_the_attempt_or_lets_it_through_as_configured() {
    let report = run_with_an_unreachable_store(WhenUnreachable::FailRetryable).await;
    assert_eq!((report.failed, report.succeeded, report.postponed), (1, 0, 0), "{report:?}");
    let report = run_with_an_unreachable_store(WhenUnreachable::LetThrough).await;
    assert_eq!((report.failed, report.succeeded, report.postponed), (0, 1, 0), "{report:?}");
}

#[cfg(feature = "redis")]
mod on_redis {
    use std::time::Instant;

    use dramaturg::redis::RedisStore;

    use super::*;

    const URL: &str = "redis://127.0.0.1:6379";
    const LIMITED_CHILD: &str = "on_redis::a_limited_worker_child";
    const HOLDER_CHILD: &str = "on_redis::a_slot_holder_child";

    /// The store of the broker of namespace `ns`.
    async fn store(ns: &str) -> Arc<dyn dramaturg::Store> {
        Arc::new(RedisStore::for_broker(&support::redis_broker(URL, ns).await))
    }

    /// The spec of a child: its namespace and log.
    fn spec(ns: &str, log: &Path) -> String {
        format!("{ns} {}", log.display())
    }

    /// A worker child of the limited app (nothing in the parent).
    #[test]
    fn a_limited_worker_child() {
        support::run_worker_child(|spec| async move {
            let (ns, log) = spec.split_once(' ').unwrap();
            LOG.set(PathBuf::from(log)).unwrap();
            let broker = support::redis_broker(URL, ns).await;
            limited_app(broker.clone(), Arc::new(RedisStore::for_broker(&broker)))
        });
    }

    /// Four worker processes, `app`'s messages already sent: waits until
    /// `log` has `total` lines beginning with `what`, then stops them.
    async fn run_four_workers(ns: &str, log: &Path, what: &str, total: usize, within: Duration) {
        let dir = std::env::temp_dir();
        let mut workers: Vec<_> = (0..4)
            .map(|n| support::KillOnDrop(support::spawn_worker(LIMITED_CHILD, &dir, 9000 + n, &spec(ns, log))))
            .collect();
        support::wait_for(what, within, || support::logged(log, what).len() >= total).await;
        for worker in &mut workers {
            support::terminate(&mut worker.0);
        }
    }

    /// Limits set per message that cannot apply: a malformed rate or a
    /// concurrency of 0 is refused when sent; a `limit_key` naming no
    /// argument fails the message for good at once (no retries), with a
    /// reason saying why.
    #[tokio::test]
    async fn limits_set_per_message_that_cannot_apply_are_refused_or_fail_for_good() {
        if support::is_child() {
            return;
        }
        let ns = support::namespace();
        let app = limited_app(support::redis_broker(URL, &ns).await, store(&ns).await);
        let with = |key: &'static str, value: serde_json::Value| {
            SendOptions::default().with_options(move |o| o.with_extra(key, value))
        };
        for (key, value) in [("rate_limit", serde_json::json!("fast")), ("concurrency", serde_json::json!(0))] {
            let sent = Paced { seq: 1 }.send_with(&app, with(key, value)).await;
            assert!(
                matches!(sent, Err(dramaturg::EnqueueError::Rejected { middleware: "rate_limits", .. })),
                "{key}: {sent:?}"
            );
        }
        Export { tenant: "acme".into(), millis: 1 }
            .send_with(&app, with("limit_key", serde_json::json!("nope")))
            .await
            .unwrap();
        let report = Worker::new(app.clone()).run_until_drained(Duration::from_secs(10)).await.unwrap();
        assert_eq!((report.failed, report.retried), (1, 0), "{report:?}");
        let dead = app.dead_letter_views("exports", 10).await.unwrap();
        assert!(dead[0].reason.contains("limit_key names \"nope\""), "{}", dead[0].reason);
    }

    /// A 50/s window across four worker processes: 50/s ± 10% over 10 s,
    /// never more than 50 within any 0.9 s (from the jobs' recorded start
    /// times), and no message failed, retried or dead-lettered.
    #[tokio::test]
    async fn a_window_limit_holds_across_four_workers() {
        if support::is_child() {
            return;
        }
        const TOTAL: usize = 600;
        let ns = support::namespace();
        let app = limited_app(support::redis_broker(URL, &ns).await, store(&ns).await);
        for seq in 0..TOTAL as u64 {
            Paced { seq }.send(&app).await.unwrap();
        }
        let log = support::temp_log("window");
        run_four_workers(&ns, &log, "start", TOTAL, Duration::from_secs(40)).await;
        let starts = entries(&log, "start");
        let seqs: std::collections::HashSet<String> =
            support::logged(&log, "seq ").iter().map(|line| line.split(' ').nth(1).unwrap().to_owned()).collect();
        let _ = std::fs::remove_file(&log);
        assert!(starts.iter().all(|(retries, _)| *retries == 0), "a limited message used a retry");
        assert_eq!((starts.len(), seqs.len()), (TOTAL, TOTAL), "each message ran once");
        let mut times: Vec<u64> = starts.iter().map(|(_, at)| *at).collect();
        times.sort_unstable();
        let first = times[0];
        let in_ten_seconds = times.iter().filter(|at| **at < first + 10_000_000).count();
        assert!((450..=550).contains(&in_ten_seconds), "{in_ten_seconds} in the first 10 s, not 500 ± 10%");
        // A start is recorded a little after the store admitted it (more on
        // a loaded machine); allow 100 ms of that. Admissions come in
        // bursts, so a limit of 51 still shows here.
        let most = (0..times.len()).map(|i| times[i..].partition_point(|at| *at < times[i] + 900_000)).max().unwrap();
        assert!(most <= 50, "{most} started within 0.9 s");
        assert_eq!(app.stats("paced").await.unwrap().dead, 0, "a limited message was dead-lettered");
    }

    /// A concurrency limit of 3 per tenant across four worker processes is
    /// never exceeded (from the recorded start and end of each job), and
    /// reached; no message failed, retried or dead-lettered.
    #[tokio::test]
    async fn a_concurrency_limit_holds_across_four_workers() {
        if support::is_child() {
            return;
        }
        const TOTAL: usize = 45;
        let ns = support::namespace();
        let app = limited_app(support::redis_broker(URL, &ns).await, store(&ns).await);
        for _ in 0..TOTAL {
            Export { tenant: "acme".into(), millis: 120 }.send(&app).await.unwrap();
        }
        let log = support::temp_log("concurrency");
        run_four_workers(&ns, &log, "end", TOTAL, Duration::from_secs(40)).await;
        let (starts, ends) = (entries(&log, "start"), entries(&log, "end"));
        let _ = std::fs::remove_file(&log);
        assert!(starts.iter().all(|(retries, _)| *retries == 0), "a limited message used a retry");
        let mut events: Vec<(u64, i32)> = starts.iter().map(|(_, at)| (*at, 1)).collect();
        // An end sorts before a start at the same microsecond.
        events.extend(ends.iter().map(|(_, at)| (*at, -1)));
        events.sort_unstable();
        let most = events
            .iter()
            .scan(0, |running, (_, step)| {
                *running += step;
                Some(*running)
            })
            .max()
            .unwrap();
        assert_eq!(most, 3, "at most 3 at once across the workers, and the limit was reached");
        assert_eq!(app.stats("exports").await.unwrap().dead, 0, "a limited message was dead-lettered");
    }

    /// A child that holds a concurrency slot (lease 1 s) until it is killed.
    #[test]
    fn a_slot_holder_child() {
        let Some((_, spec)) = support::child_spec() else { return };
        let (ns, log) = spec.split_once(' ').unwrap();
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        runtime.block_on(async {
            let limiter = Limiter::concurrency(store(ns).await, "holder", 1).lease(Duration::from_secs(1));
            let _permit = limiter.acquire("only").await.unwrap();
            support::append(log, "held");
            std::future::pending::<()>().await;
        });
    }

    /// A live holder keeps its slot past several leases (it renews it); a
    /// holder killed with SIGKILL loses it within one lease.
    #[tokio::test]
    async fn a_killed_holders_slot_frees_after_its_lease_and_a_live_ones_never_does() {
        if support::is_child() {
            return;
        }
        let ns = support::namespace();
        let log = support::temp_log("holder");
        let mut holder =
            support::KillOnDrop(support::spawn_worker(HOLDER_CHILD, &std::env::temp_dir(), 9100, &spec(&ns, &log)));
        support::wait_for("the holder", Duration::from_secs(20), || !support::logged(&log, "held").is_empty()).await;
        let _ = std::fs::remove_file(&log);
        let limiter = Limiter::concurrency(store(&ns).await, "holder", 1);
        let live_until = Instant::now() + Duration::from_millis(3500);
        while Instant::now() < live_until {
            let error = limiter.try_acquire("only").await.unwrap_err();
            assert!(error.is_exceeded(), "{error}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        holder.0.kill().unwrap(); // SIGKILL
        holder.0.wait().unwrap();
        let killed = Instant::now();
        let permit = loop {
            match limiter.try_acquire("only").await {
                Ok(permit) => break permit,
                Err(error) => assert!(error.is_exceeded(), "{error}"),
            }
            assert!(killed.elapsed() < Duration::from_secs(3), "the slot was not freed after the lease");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let freed = killed.elapsed();
        // Renewed every third of the lease: freed between 2/3 and all of it.
        assert!(freed > Duration::from_millis(500) && freed < Duration::from_millis(1300), "freed after {freed:?}");
        permit.release().await.unwrap();
    }
}
