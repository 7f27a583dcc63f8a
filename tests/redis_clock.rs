//! Message ages on Redis follow the server's clock: a producer or a worker
//! whose clock is 30 s off neither makes a fresh message look too old nor
//! an old one look fresh.

#![cfg(feature = "redis")]
#![allow(clippy::unwrap_used)] // Tests may panic on the unexpected.

mod support;

use std::time::Duration;

use dramaturg::prelude::*;
use dramaturg::BoxError;
use serde::{Deserialize, Serialize};
use support::{append, logged, temp_log};

const URL: &str = "redis://127.0.0.1:6379";
const CHILD_TEST: &str = "clock_child";

/// Runs if it is younger than 10 s, and logs that it ran.
#[derive(Actor, Serialize, Deserialize)]
#[actor(max_age = "10s")]
struct Fresh {
    log: String,
}

impl Fresh {
    async fn perform(self, _ctx: &Context) -> Result<(), BoxError> {
        append(&self.log, "ran");
        Ok(())
    }
}

/// The child, its clock skewed: `produce|namespace|log` sends one message;
/// `work|namespace|report` runs a worker until the queue is drained and
/// writes what it did.
#[test]
fn clock_child() {
    let Ok(spec) = std::env::var(support::CHILD) else { return };
    let parts: Vec<&str> = spec.split('|').collect();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async {
        let app = dramaturg::app(support::redis_broker(URL, parts[1]).await).actor::<Fresh>().build().unwrap();
        if parts[0] == "produce" {
            Fresh { log: parts[2].to_owned() }.send(&app).await.unwrap();
        } else {
            let report = Worker::new(app).run_until_drained(Duration::from_secs(20)).await.unwrap();
            std::fs::write(parts[2], format!("succeeded={} skipped={}", report.succeeded, report.skipped)).unwrap();
        }
    });
}

/// A producer 30 s behind sends a message with a max_age of 10 s; a worker
/// with the right time runs it (by the producer's clock it was 30 s old).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_producer_with_a_slow_clock_does_not_make_its_messages_too_old() {
    if support::is_child() {
        return;
    }
    let namespace = support::namespace();
    let log = temp_log("clock");
    let mut producer = support::spawn_skewed(CHILD_TEST, &format!("produce|{namespace}|{}", log.display()), "-30s");
    assert!(producer.wait().unwrap().success());
    let app = dramaturg::app(support::redis_broker(URL, &namespace).await).actor::<Fresh>().build().unwrap();
    let report = Worker::new(app).run_until_drained(Duration::from_secs(20)).await.unwrap();
    assert_eq!((report.succeeded, report.skipped), (1, 0), "{report:?}");
    assert_eq!(logged(&log, "ran").len(), 1);
    let _ = std::fs::remove_file(&log);
}

/// A worker 30 s ahead runs a message just sent with a max_age of 10 s (by
/// its own clock the message was 30 s old).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_with_a_fast_clock_does_not_find_fresh_messages_too_old() {
    if support::is_child() {
        return;
    }
    let namespace = support::namespace();
    let (log, report) = (temp_log("clock"), temp_log("clock"));
    let app = dramaturg::app(support::redis_broker(URL, &namespace).await).actor::<Fresh>().build().unwrap();
    Fresh { log: log.display().to_string() }.send(&app).await.unwrap();
    let mut worker = support::spawn_skewed(CHILD_TEST, &format!("work|{namespace}|{}", report.display()), "+30s");
    assert!(worker.wait().unwrap().success());
    assert_eq!(std::fs::read_to_string(&report).unwrap(), "succeeded=1 skipped=0");
    assert_eq!(logged(&log, "ran").len(), 1);
    let _ = std::fs::remove_file(&log);
    let _ = std::fs::remove_file(&report);
}
