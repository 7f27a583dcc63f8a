//! Long and CPU-bound jobs against the real Redis: a worker whose every
//! runtime thread computes keeps its heartbeat, so a second worker never
//! takes its messages for those of a dead worker.

#![cfg(feature = "redis")]
#![allow(clippy::unwrap_used)] // Tests may panic on the unexpected.

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use dramaturg::prelude::*;
use dramaturg::redis::{RedisBroker, RedisConfig};
use support::{logged, temp_log, Compute, KillOnDrop};

const URL: &str = "redis://127.0.0.1:6379";
const CHILD_TEST: &str = "long_jobs_child";

async fn broker_in(namespace: &str) -> RedisBroker {
    let config = RedisConfig::new(URL)
        .namespace(namespace)
        .heartbeat(Duration::from_millis(500), Duration::from_secs(2))
        .max_block(Duration::from_secs(1));
    RedisBroker::with_config(config).await.unwrap()
}

/// The child: `namespace`: a worker with two runtime threads until SIGTERM.
#[test]
fn long_jobs_child() {
    let Ok(namespace) = std::env::var(support::CHILD) else { return };
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async {
        let app = dramaturg::app(broker_in(&namespace).await).actor::<Compute>().build().unwrap();
        Worker::new(app).concurrency(2).grace_period(Duration::from_secs(10)).run_until_signal().await.unwrap();
    });
}

fn spawn_child(namespace: &str) -> KillOnDrop {
    KillOnDrop(
        Command::new(std::env::current_exe().unwrap())
            .args(["--exact", CHILD_TEST, "--nocapture", "--test-threads=1"])
            .env(support::CHILD, namespace)
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

/// As many CPU-bound async jobs as the worker's runtime has
/// threads (2), 6 s each, a heartbeat timeout of 2 s, and a second worker
/// process watching: each job starts exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cpu_bound_async_jobs_on_every_runtime_thread_are_not_run_twice() {
    if support::is_child() {
        return;
    }
    let namespace = format!("test-{}", dramaturg::MessageId::new());
    let log = temp_log("long");
    let app = dramaturg::app(broker_in(&namespace).await).actor::<Compute>().build().unwrap();
    let mut busy = spawn_child(&namespace);
    for _ in 0..2 {
        Compute { log: log.display().to_string(), millis: 6000 }.send(&app).await.unwrap();
    }
    // Both jobs run in the first worker, whose two runtime threads are then
    // busy; only then does the second worker come.
    // Generous: the child process connects, registers and claims on a
    // machine that may be busy with other builds; the assertions below are
    // about how often the jobs run, not how soon they start.
    support::wait_for("both jobs to start", Duration::from_secs(30), || logged(&log, "start").len() == 2).await;
    let pid = busy.0.id().to_string();
    assert!(logged(&log, "start").iter().all(|line| line.ends_with(&pid)), "{:?}", logged(&log, ""));
    let mut watcher = spawn_child(&namespace);
    support::wait_for("both jobs to end", Duration::from_secs(30), || logged(&log, "end").len() == 2).await;
    app.join(Duration::from_secs(10)).await.unwrap();
    // Longer than a heartbeat timeout more, for a late recovery to show.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    support::terminate(&mut busy.0);
    support::terminate(&mut watcher.0);
    let starts = logged(&log, "start");
    assert_eq!(starts.len(), 2, "a job ran twice: {:?}", logged(&log, ""));
    let _ = std::fs::remove_file(&log);
}
