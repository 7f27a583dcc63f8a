//! Pausing a queue across a fleet, against the real Redis and RabbitMQ:
//! two worker processes, a pause while jobs run, sends while paused, a
//! worker restarted while paused, and a resume.

#![cfg(any(feature = "redis", feature = "amqp"))]
#![allow(clippy::unwrap_used)] // Tests may panic on the unexpected.

mod support;

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use dramaturg::prelude::*;
use dramaturg::BoxError;
use serde::{Deserialize, Serialize};

use support::{append, logged, temp_log, wait_for, KillOnDrop};

/// Logs `start <seq>` and `end <seq>` around a nap of `millis`.
#[derive(Actor, Serialize, Deserialize)]
#[actor(max_retries = 0, time_limit = "1m")]
struct Paced {
    log: String,
    seq: u64,
    millis: u64,
}

impl Paced {
    async fn perform(self, _ctx: &Context) -> Result<(), BoxError> {
        append(&self.log, &format!("start {}", self.seq));
        tokio::time::sleep(Duration::from_millis(self.millis)).await;
        append(&self.log, &format!("end {}", self.seq));
        Ok(())
    }
}

/// How often each sequence number was logged with `what` (`start`, `end`).
fn counts(log: &Path, what: &str) -> HashMap<u64, usize> {
    let mut counts = HashMap::new();
    for line in logged(log, &format!("{what} ")) {
        let seq = line.split(' ').nth(1).unwrap().parse().unwrap();
        *counts.entry(seq).or_insert(0) += 1;
    }
    counts
}

/// Starts this test binary as worker child number `n`, running `test` for
/// `spec` (its record file, unused here, goes to `dir`).
fn worker(test: &str, dir: &Path, n: usize, spec: &str) -> KillOnDrop {
    KillOnDrop(support::spawn_worker(test, dir, n, spec))
}

/// The scenario, on `app` (whose one queue the children of `child` work):
///
/// 1. Two workers run four slow jobs; the queue is paused meanwhile: the
///    running jobs finish.
/// 2. Messages sent a second after the pause stay in the queue, ready,
///    while both workers run, and after one of them is replaced by a new
///    process (a restart while paused).
/// 3. After the resume every message is processed, once.
async fn pause_across_two_workers(app: &App, child: &str, spec: &str) {
    let log = temp_log("pause");
    let log_text = log.display().to_string();
    let queue = app.queues()[0].clone();
    let dir = std::env::temp_dir().join(format!("dramaturg-pause-{}", dramaturg::MessageId::new()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut first = worker(child, &dir, 1, spec);
    let mut second = worker(child, &dir, 2, spec);
    let slow: Vec<Paced> = (0..4).map(|seq| Paced { log: log_text.clone(), seq, millis: 2000 }).collect();
    app.send_many(&slow).await.unwrap();
    wait_for("the slow jobs to start", Duration::from_secs(30), || counts(&log, "start").len() == 4).await;

    app.pause(&queue).await.unwrap();
    assert!(app.stats(&queue).await.unwrap().paused);
    // Claims stop within a second.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let fast: Vec<Paced> = (100..120).map(|seq| Paced { log: log_text.clone(), seq, millis: 0 }).collect();
    app.send_many(&fast).await.unwrap();
    wait_for("the running jobs to finish", Duration::from_secs(30), || counts(&log, "end").len() == 4).await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    // A worker restarted while the queue is paused claims nothing either.
    support::terminate(&mut first.0);
    let mut third = worker(child, &dir, 3, spec);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let started = counts(&log, "start");
    assert_eq!(started.len(), 4, "nothing started while paused: {started:?}");
    let stats = app.stats(&queue).await.unwrap();
    assert_eq!((stats.ready, stats.in_flight, stats.paused), (20, 0, true), "{stats:?}");

    let resumed_at = Instant::now();
    app.resume(&queue).await.unwrap();
    assert!(!app.stats(&queue).await.unwrap().paused);
    wait_for("a job to start after the resume", Duration::from_secs(10), || counts(&log, "start").len() > 4).await;
    let latency = resumed_at.elapsed();
    wait_for("every job", Duration::from_secs(30), || counts(&log, "end").len() == 24).await;
    println!("consumption started again {latency:?} after the resume");
    assert!(latency < Duration::from_secs(5), "resumed after {latency:?} (the target is a second)");
    let ends = counts(&log, "end");
    assert!(ends.values().all(|&n| n == 1), "each processed once: {ends:?}");
    support::terminate(&mut second.0);
    support::terminate(&mut third.0);
    let _ = std::fs::remove_file(&log);
    let _ = std::fs::remove_dir_all(&dir);
}

#[cfg(feature = "redis")]
mod redis {
    use super::*;

    const URL: &str = "redis://127.0.0.1:6379";

    async fn app(namespace: &str) -> App {
        dramaturg::app(support::redis_broker(URL, namespace).await).actor::<Paced>().build().unwrap()
    }

    /// The child: a worker process, until SIGTERM.
    #[test]
    fn pause_redis_child() {
        support::run_worker_child(|namespace| async move { app(&namespace).await });
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_paused_queue_stays_paused_for_every_worker_until_resumed() {
        if support::is_child() {
            return;
        }
        let namespace = support::namespace();
        let app = app(&namespace).await;
        pause_across_two_workers(&app, "redis::pause_redis_child", &namespace).await;
        app.join(Duration::from_secs(10)).await.unwrap();
    }
}

#[cfg(feature = "amqp")]
mod amqp {
    use super::*;

    const URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

    async fn app(prefix: &str) -> App {
        let config = dramaturg::amqp::AmqpConfig::new(URL).expire_unused_queues(Duration::from_secs(120));
        let broker = dramaturg::amqp::AmqpBroker::with_config(config).await.unwrap();
        dramaturg::app(broker).queue_prefix(prefix).actor::<Paced>().build().unwrap()
    }

    /// The child: a worker process, until SIGTERM.
    #[test]
    fn pause_amqp_child() {
        support::run_worker_child(|prefix| async move { app(&prefix).await });
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_paused_queue_stays_paused_for_every_worker_until_resumed() {
        if support::is_child() {
            return;
        }
        let prefix = format!("test-{}-", dramaturg::MessageId::new());
        let app = app(&prefix).await;
        pause_across_two_workers(&app, "amqp::pause_amqp_child", &prefix).await;
        app.join(Duration::from_secs(10)).await.unwrap();
    }
}
