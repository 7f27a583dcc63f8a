//! The Redis broker on the local Redis Cluster that scripts/services starts
//! (3 masters, 3 replicas on 127.0.0.1:7000-7005): a worker whose queues
//! live on three different masters, one of two such workers killed with
//! SIGKILL (its claims come back through the dead-worker recovery, though
//! the registry and the queues lie on different nodes), wake-ups from
//! every node, the per-node listings, and the store conformance suite.

#![cfg(feature = "redis")]
#![allow(clippy::unwrap_used)] // Tests may panic on the unexpected.

mod support;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dramaturg::prelude::*;
use dramaturg::redis::{RedisBroker, RedisConfig};
use dramaturg::{BoxError, Broker, Outgoing, QueueAdmin, Settlement};
use serde::{Deserialize, Serialize};

use support::{namespace, redis_broker as broker_in, Numbered};

const URL: &str = "redis+cluster://127.0.0.1:7000,127.0.0.1:7001,127.0.0.1:7002/";

/// Numbered work in a queue whose slot (1269) a master other than the
/// default queue's (5718) and `cluster-a`'s (13462) serves.
#[derive(Actor, Serialize, Deserialize)]
#[actor(queue = "cluster-b")]
struct NumberedB {
    seq: u64,
}

impl NumberedB {
    async fn perform(self, _ctx: &Context) -> Result<(), BoxError> {
        support::record(self.seq).await
    }
}

/// As [`NumberedB`], in the slot 13462.
#[derive(Actor, Serialize, Deserialize)]
#[actor(queue = "cluster-a")]
struct NumberedA {
    seq: u64,
}

impl NumberedA {
    async fn perform(self, _ctx: &Context) -> Result<(), BoxError> {
        support::record(self.seq).await
    }
}

async fn app_in(namespace: &str) -> App {
    let broker = broker_in(URL, namespace).await;
    dramaturg::app(broker).actor::<Numbered>().actor::<NumberedA>().actor::<NumberedB>().build().unwrap()
}

/// The address of the master that serves `queue`'s keys now.
fn master_of(queue: &str) -> String {
    let client = redis::Client::open("redis://127.0.0.1:7000").unwrap();
    let mut conn = client.get_connection().unwrap();
    let slot: u16 = redis::cmd("CLUSTER").arg("KEYSLOT").arg(format!("{{{queue}}}")).query(&mut conn).unwrap();
    let nodes: String = redis::cmd("CLUSTER").arg("NODES").query(&mut conn).unwrap();
    for line in nodes.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if !fields[2].contains("master") {
            continue;
        }
        for range in &fields[8..] {
            let (low, high) = range.split_once('-').unwrap_or((range, range));
            if (low.parse().unwrap()..=high.parse().unwrap()).contains(&slot) {
                return fields[1].split('@').next().unwrap().to_owned();
            }
        }
    }
    panic!("no master serves slot {slot}");
}

/// The child: a worker process on the three queues, recording to a file.
#[test]
fn cluster_worker_child() {
    support::run_worker_child(|namespace| async move { app_in(&namespace).await });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_run_with_queues_on_three_masters_loses_nothing() {
    if support::is_child() {
        return;
    }
    let namespace = namespace();
    let app = app_in(&namespace).await;
    let queues = app.queues().to_vec();
    let masters: BTreeSet<String> = queues.iter().map(|q| master_of(q)).collect();
    assert_eq!(masters.len(), 3, "the queues {queues:?} lie on three masters: {masters:?}");
    let total = 3000u64;
    let dir = std::env::temp_dir().join(format!("dramaturg-cluster-kill-{}", dramaturg::MessageId::new()));
    std::fs::create_dir_all(&dir).unwrap();
    let numbers: Vec<u64> = (0..total).collect();
    let third = |n: u64| numbers.iter().copied().filter(move |seq| seq % 3 == n);
    app.send_many(&third(0).map(|seq| Numbered { seq }).collect::<Vec<_>>()).await.unwrap();
    app.send_many(&third(1).map(|seq| NumberedA { seq }).collect::<Vec<_>>()).await.unwrap();
    app.send_many(&third(2).map(|seq| NumberedB { seq }).collect::<Vec<_>>()).await.unwrap();
    let test = "cluster_worker_child";
    let mut victim = support::KillOnDrop(support::spawn_worker(test, &dir, 1, &namespace));
    let mut survivor = support::KillOnDrop(support::spawn_worker(test, &dir, 2, &namespace));
    support::wait_for("progress", Duration::from_secs(60), || support::recorded(&dir).len() >= 300).await;
    victim.0.kill().unwrap(); // SIGKILL
    victim.0.wait().unwrap();
    let killed_at = Instant::now();
    let all = total as usize;
    support::wait_for("every message", Duration::from_secs(60), || support::recorded(&dir).len() == all).await;
    let recovery = killed_at.elapsed();
    support::terminate(&mut survivor.0);
    let counts = support::recorded(&dir);
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(counts.len(), all, "every message processed at least once");
    let duplicates: usize = counts.values().map(|n| n - 1).sum();
    println!("{total} of {total} processed at least once on 3 masters, {duplicates} duplicates, all done {recovery:?} after the kill");
    for queue in &queues {
        let stats = app.admin().unwrap().stats(queue).await.unwrap();
        assert!(stats.is_drained(), "{queue}: {stats:?}");
    }
}

/// How long after a send to `queue` an idle consumer of it (waiting
/// 300 ms already) receives the message.
async fn wake_latency(broker: &RedisBroker, queue: &str) -> Duration {
    let mut consumer = broker.consume(queue, 1).await.unwrap();
    let waiting = tokio::spawn(async move {
        let delivery = consumer.next().await.unwrap();
        delivery.settle(Settlement::Ack).await.unwrap();
        Instant::now()
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let sent_at = Instant::now();
    broker.enqueue(Outgoing::new(queue, b"wake".to_vec())).await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), waiting).await.unwrap().unwrap() - sent_at
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_consumers_on_every_master_wake_at_once() {
    if support::is_child() {
        return;
    }
    // Idle consumers would look again only after a minute: what they
    // receive sooner came through the wake-up subscription, which is on
    // one node whatever node the queue lies on.
    let config = RedisConfig::new(URL).namespace(namespace()).max_block(Duration::from_secs(60));
    let broker = RedisBroker::with_config(config).await.unwrap();
    let queues = ["default", "cluster-a", "cluster-b"];
    for queue in queues {
        let latency = wake_latency(&broker, queue).await;
        assert!(latency < Duration::from_secs(2), "{queue} on {}: woken after {latency:?}", master_of(queue));
    }
    broker.release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queues_and_workers_are_listed_from_every_master() {
    if support::is_child() {
        return;
    }
    let broker = broker_in(URL, &namespace()).await;
    let queues = ["default", "cluster-a", "cluster-b"];
    let mut consumers = Vec::new();
    for queue in queues {
        broker.enqueue(Outgoing::new(queue, b"held".to_vec())).await.unwrap();
        let mut consumer = broker.consume(queue, 1).await.unwrap();
        let delivery = consumer.next().await.unwrap();
        consumers.push((consumer, delivery));
    }
    let listed = broker.queues().await.unwrap();
    assert_eq!(listed, ["cluster-a", "cluster-b", "default"]);
    let workers = broker.workers().await.unwrap();
    assert_eq!(workers.len(), 1, "{workers:?}");
    for queue in queues {
        assert_eq!(workers[0].in_flight.get(queue), Some(&1), "{workers:?}");
    }
    for (_, delivery) in consumers.drain(..) {
        delivery.settle(Settlement::Ack).await.unwrap();
    }
}

#[tokio::test]
async fn the_dramatiq_layout_is_refused_on_a_cluster() {
    let config = RedisConfig::new(format!("{URL}?protocol=dramatiq"));
    let error = RedisBroker::with_config(config).await.unwrap_err();
    assert!(error.to_string().contains("Redis Cluster"), "{error}");
}

/// The store conformance suite on the cluster: its keys spread over the
/// masters, and waits and `set_many` span slots.
mod store {
    use dramaturg::redis::{RedisConfig, RedisStore};

    async fn store() -> RedisStore {
        let config = RedisConfig::new(super::URL).namespace(format!("test-{}", dramaturg::MessageId::new()));
        RedisStore::with_config(&config)
            .await
            .expect("a Redis Cluster runs on 127.0.0.1:7000-7005 (scripts/services starts it)")
    }

    dramaturg_core::store_conformance!(store());
}

/// A seed node that is down: the client learns the cluster from the
/// others, and the subscriptions for wake-ups and for the store's waits
/// move on to the next seed. The consumer would look again only after a
/// minute, so a delivery sooner came through a wake-up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_move_on_from_a_seed_that_is_down() {
    if support::is_child() {
        return;
    }
    let down = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let url = format!("redis+cluster://127.0.0.1:{down},127.0.0.1:7001,127.0.0.1:7002/");
    let config = RedisConfig::new(url).namespace(namespace()).max_block(Duration::from_secs(60));
    let broker = RedisBroker::with_config(config).await.unwrap();
    let latency = wake_latency(&broker, "cluster-b").await;
    assert!(latency < Duration::from_secs(2), "woken after {latency:?}");
    let store = broker.store().unwrap();
    let ttl = Duration::from_secs(60);
    let setter = Arc::clone(&store);
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        setter.set("later", b"set", ttl, dramaturg::store::SetMode::Always).await.unwrap();
    });
    let found = store.wait_any(&["later".to_owned()], Duration::from_secs(10)).await.unwrap();
    assert_eq!(found, Some(("later".to_owned(), b"set".to_vec())));
    broker.release().await.unwrap();
}

/// A seed that answers but is no node of the cluster (the standalone
/// server on 6379): the client learns the cluster from the other seed, and
/// the wake-up subscription goes to a master of the cluster's map, never
/// to that server (where no wake-up is ever published).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_skip_a_seed_that_is_not_a_cluster_node() {
    if support::is_child() {
        return;
    }
    let url = "redis+cluster://127.0.0.1:6379,127.0.0.1:7001/";
    let config = RedisConfig::new(url).namespace(namespace()).max_block(Duration::from_secs(60));
    let broker = RedisBroker::with_config(config).await.unwrap();
    for queue in ["default", "cluster-a", "cluster-b"] {
        let latency = wake_latency(&broker, queue).await;
        assert!(latency < Duration::from_secs(2), "{queue}: woken after {latency:?}");
    }
    broker.release().await.unwrap();
}

/// What the client would silently get wrong on a cluster is refused when
/// connecting or naming a queue: a plain `redis://` URL of a cluster node
/// (keys of other slots would fail with MOVED), a database number (a
/// cluster has database 0 only), braces in a namespace or queue name
/// (they would move the keys' hash tag).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_cluster_cannot_do_is_refused_with_a_reason() {
    if support::is_child() {
        return;
    }
    let refused = |error: dramaturg::BrokerError, needle: &str| {
        assert_eq!(error.kind(), dramaturg::BrokerErrorKind::InvalidInput, "{error}");
        assert!(error.to_string().contains(needle), "{error}");
    };
    refused(RedisBroker::connect("redis://127.0.0.1:7000").await.unwrap_err(), "redis+cluster://");
    refused(RedisBroker::connect("redis+cluster://127.0.0.1:7000,127.0.0.1:7001/2").await.unwrap_err(), "database 0");
    let database = RedisConfig::cluster(["redis://127.0.0.1:7000/3", "redis://127.0.0.1:7001"]);
    refused(RedisBroker::with_config(database).await.unwrap_err(), "database 0");
    refused(RedisBroker::connect("redis+cluster://127.0.0.1:6379/").await.unwrap_err(), "single server");
    refused(RedisBroker::connect(&format!("{URL}?namespace=a&namespace=b")).await.unwrap_err(), "twice");
    let misspelt = RedisBroker::connect("redis+cluster://127.0.0.1:7000/?passwd=hunter2").await.unwrap_err();
    assert!(!format!("{misspelt} {misspelt:?}").contains("hunter2"), "{misspelt}");
    let braces = RedisConfig::new(URL).namespace("a{b}");
    refused(RedisBroker::with_config(braces).await.unwrap_err(), "namespace");
    let broker = broker_in(URL, &namespace()).await;
    refused(broker.enqueue(Outgoing::new("}mail", b"x".to_vec())).await.unwrap_err(), "queue name");
    refused(broker.consume("{mail}", 1).await.err().unwrap(), "queue name");
    #[derive(Actor, Serialize, Deserialize)]
    #[actor(queue = "mail{eu}")]
    struct Braced {}
    impl Braced {
        async fn perform(self, _ctx: &Context) -> Result<(), BoxError> {
            Ok(())
        }
    }
    let error = dramaturg::app(broker.clone()).actor::<Braced>().build().unwrap_err();
    assert!(error.to_string().contains("mail{eu}"), "{error}");
    broker.release().await.unwrap();
}

/// Messages of [`Limited`] running at once, and the most seen.
static LIMITED_RUNNING: AtomicU32 = AtomicU32::new(0);
static LIMITED_MOST: AtomicU32 = AtomicU32::new(0);

/// At most 2 at once across the fleet, counted in the cluster's store.
#[derive(Actor, Serialize, Deserialize)]
#[actor(queue = "cluster-limited", concurrency = 2)]
struct Limited {
    millis: u64,
}

impl Limited {
    async fn perform(self, _ctx: &Context) -> Result<(), BoxError> {
        let now = LIMITED_RUNNING.fetch_add(1, Ordering::SeqCst) + 1;
        LIMITED_MOST.fetch_max(now, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(self.millis)).await;
        LIMITED_RUNNING.fetch_sub(1, Ordering::SeqCst);
        Ok(())
    }
}

/// Rate limits keep their slots in the broker's store, here on the
/// cluster: a concurrency limit of 2 holds on a worker of 8 slots, and the
/// messages over it are postponed, not failed.
#[cfg(feature = "rate-limits")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_concurrency_limit_holds_with_its_slots_on_the_cluster() {
    use dramaturg::rate_limits::RateLimits;
    use dramaturg::redis::RedisStore;

    if support::is_child() {
        return;
    }
    let broker = broker_in(URL, &namespace()).await;
    let limits = RateLimits::new(Arc::new(RedisStore::for_broker(&broker))).recheck(Duration::from_millis(100));
    let app = dramaturg::app(broker).middleware(limits).actor::<Limited>().build().unwrap();
    app.send_many(&(0..10).map(|_| Limited { millis: 100 }).collect::<Vec<_>>()).await.unwrap();
    let report = Worker::new(app.clone()).concurrency(8).run_until_drained(Duration::from_secs(30)).await.unwrap();
    assert_eq!(report.succeeded, 10, "{report:?}");
    assert_eq!((report.retried, report.failed), (0, 0), "{report:?}");
    assert!(report.postponed > 0, "nothing was postponed: {report:?}");
    assert_eq!(LIMITED_MOST.load(Ordering::SeqCst), 2, "the limit was exceeded, or never reached");
}
