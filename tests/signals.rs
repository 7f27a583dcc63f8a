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
        let report = Worker::new(app).grace_period(grace).run_until_signal().await.unwrap();
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
