//! SIGTERM/SIGINT handling of `Worker::run_until_signal`, in a child process
//! (this same test binary, re-run with an environment variable), since the
//! second signal exits the process.

#![cfg(unix)]
#![allow(clippy::unwrap_used)] // Tests may panic on the unexpected.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use dramaturg::prelude::*;
use dramaturg::BoxError;
use serde::{Deserialize, Serialize};

const CHILD: &str = "DRAMATURG_SIGNAL_CHILD";

#[derive(Actor, Serialize, Deserialize)]
struct Stuck;

impl Stuck {
    async fn perform(self, _ctx: &Context) -> Result<(), BoxError> {
        println!("READY");
        std::future::pending::<()>().await;
        Ok(())
    }
}

/// The child: a worker with one stuck message, until signalled.
#[test]
fn signal_child() {
    let Ok(grace_ms) = std::env::var(CHILD) else { return };
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async {
        let broker = MemoryBroker::new();
        let app = App::builder(broker.clone()).actor::<Stuck>().build().unwrap();
        Stuck.send(&app).await.unwrap();
        let grace = Duration::from_millis(grace_ms.parse().unwrap());
        // The caller decides how the process ends: at once, with 130, on
        // a second signal.
        let report = match Worker::new(app).grace_period(grace).run_until_signal().await {
            Ok(report) => report,
            Err(error) => std::process::exit(error.exit_code()),
        };
        let stats = dramaturg::QueueAdmin::stats(&broker, "default").await.unwrap();
        println!("REPORT requeued={} ready={}", report.requeued, stats.ready);
    });
}

fn spawn_child(grace_ms: u64) -> (Child, BufReader<std::process::ChildStdout>) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "signal_child", "--nocapture", "--test-threads=1"])
        .env(CHILD, grace_ms.to_string())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    while !line.contains("READY") {
        line.clear();
        assert!(stdout.read_line(&mut line).unwrap() > 0, "the child ended before its worker started");
    }
    (child, stdout)
}

fn signal(child: &Child, name: &str) {
    let status = Command::new("kill").args([&format!("-{name}"), &child.id().to_string()]).status().unwrap();
    assert!(status.success());
}

fn wait(child: &mut Child, within: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            child.kill().unwrap();
            panic!("the child did not exit within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn sigterm_shuts_down_gracefully_and_requeues_the_stuck_message() {
    if std::env::var(CHILD).is_ok() {
        return;
    }
    let (mut child, mut stdout) = spawn_child(200);
    let sent = Instant::now();
    signal(&child, "TERM");
    let status = wait(&mut child, Duration::from_secs(5));
    assert!(status.success(), "{status:?}");
    assert!(sent.elapsed() < Duration::from_secs(2), "took {:?}", sent.elapsed());
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
    assert!(rest.contains("REPORT requeued=1 ready=1"), "{rest}");
}

#[test]
fn a_second_sigint_exits_at_once() {
    if std::env::var(CHILD).is_ok() {
        return;
    }
    // A grace period far longer than the test: only the second signal can end it.
    let (mut child, _stdout) = spawn_child(600_000);
    signal(&child, "INT");
    std::thread::sleep(Duration::from_millis(300));
    assert!(child.try_wait().unwrap().is_none(), "the first signal must wait for the grace period");
    let sent = Instant::now();
    signal(&child, "INT");
    let status = wait(&mut child, Duration::from_secs(5));
    assert_eq!(status.code(), Some(130));
    assert!(sent.elapsed() < Duration::from_secs(1), "took {:?}", sent.elapsed());
}

const BLOCKING_CHILD: &str = "DRAMATURG_BLOCKING_CHILD";

/// A blocking handler that sleeps, never looking at its context.
#[derive(Actor, Serialize, Deserialize)]
#[actor(blocking, queue = "blocking")]
struct Long {
    millis: u64,
}

impl Long {
    fn perform(self, _ctx: &Context) -> Result<(), BoxError> {
        println!("START");
        std::thread::sleep(Duration::from_millis(self.millis));
        println!("END");
        Ok(())
    }
}

/// The child: `grace_ms|blocking_grace_ms|job_ms`: two blocking jobs, a
/// worker until signalled, then its report and what is left in the queue.
#[test]
fn blocking_child() {
    let Ok(spec) = std::env::var(BLOCKING_CHILD) else { return };
    let ms: Vec<u64> = spec.split('|').map(|part| part.parse().unwrap()).collect();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async {
        let broker = MemoryBroker::new();
        let app = dramaturg::app(broker.clone()).actor::<Long>().build().unwrap();
        for _ in 0..2 {
            Long { millis: ms[2] }.send(&app).await.unwrap();
        }
        let report = Worker::new(app)
            .concurrency(2)
            .grace_period(Duration::from_millis(ms[0]))
            .blocking_grace(Duration::from_millis(ms[1]))
            .run_until_signal()
            .await
            .unwrap();
        let stats = dramaturg::QueueAdmin::stats(&broker, "blocking").await.unwrap();
        println!(
            "REPORT succeeded={} requeued={} abandoned={} ready={}",
            report.succeeded, report.requeued, report.abandoned_threads, stats.ready
        );
        // Abandoned threads would hold the runtime's drop, and finish work
        // that is back in its queue: the caller ends the process.
        if report.must_exit() {
            std::process::exit(0);
        }
    });
}

/// Runs the blocking child and returns it once both jobs have started.
fn spawn_blocking_child(spec: &str) -> (Child, BufReader<std::process::ChildStdout>) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "blocking_child", "--nocapture", "--test-threads=1"])
        .env(BLOCKING_CHILD, spec)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut started = 0;
    while started < 2 {
        let mut line = String::new();
        assert!(stdout.read_line(&mut line).unwrap() > 0, "the child ended before both jobs started");
        started += usize::from(line.contains("START"));
    }
    (child, stdout)
}

/// Two blocking jobs of 6 s, SIGTERM with a 1 s grace. The
/// worker waits for them and settles them as finished: they are not
/// requeued to run again.
#[test]
fn sigterm_waits_for_blocking_jobs_and_settles_them_as_finished() {
    if std::env::var(CHILD).is_ok() || std::env::var(BLOCKING_CHILD).is_ok() {
        return;
    }
    let (mut child, mut stdout) = spawn_blocking_child("1000|8000|6000");
    let sent = Instant::now();
    signal(&child, "TERM");
    let status = wait(&mut child, Duration::from_secs(15));
    let took = sent.elapsed();
    assert!(status.success(), "{status:?}");
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
    assert_eq!(rest.matches("END").count(), 2, "{rest}");
    assert!(rest.contains("REPORT succeeded=2 requeued=0 abandoned=0 ready=0"), "{rest}");
    assert!(took > Duration::from_secs(4) && took < Duration::from_secs(8), "took {took:?}");
}

/// Past the blocking grace, the messages go back to their queue and the
/// process exits at once: the abandoned threads do not finish work that
/// will be repeated.
#[test]
fn past_the_blocking_grace_the_process_exits_without_finishing_the_jobs() {
    if std::env::var(CHILD).is_ok() || std::env::var(BLOCKING_CHILD).is_ok() {
        return;
    }
    let (mut child, mut stdout) = spawn_blocking_child("300|500|6000");
    let sent = Instant::now();
    signal(&child, "TERM");
    let status = wait(&mut child, Duration::from_secs(15));
    let took = sent.elapsed();
    assert!(status.success(), "{status:?}");
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
    assert!(!rest.contains("END"), "{rest}");
    assert!(rest.contains("REPORT succeeded=0 requeued=2 abandoned=2 ready=2"), "{rest}");
    assert!(took < Duration::from_secs(3), "took {took:?}");
}
