//! Long and CPU-bound jobs against the real RabbitMQ: a worker whose every
//! runtime thread computes keeps its AMQP heartbeat, so RabbitMQ never
//! closes its connection and never hands its deliveries out again.

#![cfg(feature = "amqp")]
#![allow(clippy::unwrap_used)] // Tests may panic on the unexpected.

mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use dramaturg::amqp::{AmqpBroker, AmqpConfig};
use dramaturg::prelude::*;
use support::{logged, temp_log, Compute, KillOnDrop};

/// A heartbeat timeout of 1 s: RabbitMQ closes a connection it has heard
/// nothing from for about two of them.
const URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f?heartbeat=1";
const CHILD_TEST: &str = "long_jobs_amqp_child";

async fn app_in(prefix: &str) -> App {
    let config = AmqpConfig::new(URL).expire_unused_queues(Duration::from_secs(120));
    let broker = AmqpBroker::with_config(config).await.unwrap();
    dramaturg::app(broker).queue_prefix(prefix).actor::<Compute>().build().unwrap()
}

/// The child: a worker with two runtime threads and a concurrency of two,
/// on the queues of `prefix`, until SIGTERM; it logs to stderr.
#[test]
fn long_jobs_amqp_child() {
    let Ok(prefix) = std::env::var(support::CHILD) else { return };
    tracing_subscriber::fmt().with_max_level(tracing::Level::INFO).with_ansi(false).with_writer(std::io::stderr).init();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async {
        let app = app_in(&prefix).await;
        Worker::new(app).concurrency(2).grace_period(Duration::from_secs(10)).run_until_signal().await.unwrap();
    });
}

/// Starts the child worker on `prefix`, its stderr going to `stderr`.
fn spawn_child(prefix: &str, stderr: &Path) -> KillOnDrop {
    KillOnDrop(
        Command::new(std::env::current_exe().unwrap())
            .args(["--exact", CHILD_TEST, "--nocapture", "--test-threads=1"])
            .env(support::CHILD, prefix)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(stderr).unwrap())
            .spawn()
            .unwrap(),
    )
}

/// As many CPU-bound async jobs as the worker's runtime has threads (2),
/// 6 s each, on a connection with a heartbeat timeout of 1 s: each job
/// starts exactly once, and the worker never loses its connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cpu_bound_async_jobs_on_every_runtime_thread_keep_the_connection() {
    if support::is_child() {
        return;
    }
    let prefix = format!("test-{}-", dramaturg::MessageId::new());
    let log = temp_log("long-amqp");
    let child_log = temp_log("long-amqp-worker");
    let app = app_in(&prefix).await;
    let mut worker = spawn_child(&prefix, &child_log);
    for _ in 0..2 {
        Compute { log: log.display().to_string(), millis: 6000 }.send(&app).await.unwrap();
    }
    // Generous: the child process connects and consumes on a machine that
    // may be busy with other builds; the assertions below are about how
    // often the jobs run, not how soon they start.
    support::wait_for("both jobs to start", Duration::from_secs(60), || logged(&log, "start").len() == 2).await;
    support::wait_for("both jobs to end", Duration::from_secs(60), || logged(&log, "end").len() == 2).await;
    app.join(Duration::from_secs(20)).await.unwrap();
    // Several heartbeat timeouts more, for a lost connection to show (the
    // deliveries of a closed channel come straight back to the worker).
    tokio::time::sleep(Duration::from_secs(3)).await;
    support::terminate(&mut worker.0);
    let starts = logged(&log, "start");
    let worker_log = std::fs::read_to_string(&child_log).unwrap();
    // A lost connection shows as lapin's I/O errors, stale settlements and
    // a reconnection; the watchdog's warnings about the blocked runtime
    // threads are expected.
    let trouble: Vec<&str> = worker_log
        .lines()
        .filter(|line| ["lapin", "stale settlement", "reconnected"].iter().any(|sign| line.contains(sign)))
        .collect();
    assert_eq!(starts.len(), 2, "a job ran twice: {:?}; the worker logged {trouble:#?}", logged(&log, ""));
    assert!(trouble.is_empty(), "the worker lost its connection: {trouble:#?}");
    let _ = std::fs::remove_file(&log);
    let _ = std::fs::remove_file(&child_log);
}
