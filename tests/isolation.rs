//! Isolated actors: handlers in child processes that the worker kills at
//! their time limit, when they pass their memory limit, or replaces after a
//! number of messages. The worker runs in a child process of the test (its
//! output is what the test reads), and starts its isolated children from
//! the same test binary.

#![cfg(unix)]
#![allow(clippy::unwrap_used)] // Tests may panic on the unexpected.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use dramaturg::isolation::Isolation;
use dramaturg::prelude::*;
use dramaturg::{BoxError, DeadLetters};
use serde::{Deserialize, Serialize};

const CHILD: &str = "DRAMATURG_ISOLATION_TEST";

/// Loops forever, never yielding, never checking its context.
#[derive(Actor, Serialize, Deserialize)]
#[actor(isolated, queue = "iso", time_limit = "1s", max_retries = 1, min_backoff = "10ms", max_backoff = "20ms")]
struct Runaway {}

impl Runaway {
    async fn perform(self, _ctx: &Context) -> Result<(), BoxError> {
        println!("runaway started in {}", std::process::id());
        let mut x = 0u64;
        loop {
            x = std::hint::black_box(x.wrapping_add(1));
        }
    }
}

/// Never returns, with a long limit: only an abort stops it.
#[derive(Actor, Serialize, Deserialize)]
#[actor(isolated, blocking, queue = "iso", time_limit = "1m")]
struct Endless {}

impl Endless {
    fn perform(self, _ctx: &Context) -> Result<(), BoxError> {
        println!("endless started in {}", std::process::id());
        loop {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Prints, then succeeds; blocking code in a child.
#[derive(Actor, Serialize, Deserialize)]
#[actor(isolated, blocking, queue = "iso", output = u32)]
struct Hello {
    n: u32,
}

impl Hello {
    fn perform(self, _ctx: &Context) -> Result<u32, BoxError> {
        println!("hello {} from {}", self.n, std::process::id());
        eprintln!("to stderr {}", self.n);
        Ok(self.n * 2)
    }
}

/// Crashes its process.
#[derive(Actor, Serialize, Deserialize)]
#[actor(isolated, queue = "iso", max_retries = 0)]
struct Crash {}

impl Crash {
    async fn perform(self, _ctx: &Context) -> Result<(), BoxError> {
        std::process::abort();
    }
}

/// Holds 300 MB.
#[derive(Actor, Serialize, Deserialize)]
#[actor(isolated, queue = "iso", max_retries = 0)]
struct Hungry {}

impl Hungry {
    async fn perform(self, _ctx: &Context) -> Result<(), BoxError> {
        let block = vec![1u8; 300 * 1024 * 1024];
        std::hint::black_box(&block);
        tokio::time::sleep(Duration::from_secs(10)).await;
        Ok(())
    }
}

/// Built by the isolated children's setup, read by [`Stateful`].
#[derive(Debug)]
struct ChildSetup(String);

/// Reads the state its child process set up.
#[derive(Actor, Serialize, Deserialize)]
#[actor(isolated, queue = "iso", max_retries = 0)]
struct Stateful {}

impl Stateful {
    async fn perform(self, ctx: &Context) -> Result<(), BoxError> {
        println!("state: {}", ctx.state::<ChildSetup>()?.0);
        Ok(())
    }
}

/// The worker child: `scenario`, runs until the queue is drained, prints
/// its report and the dead letters' reasons. Its isolated children set up
/// a [`ChildSetup`].
#[test]
fn isolation_child() {
    dramaturg::isolation::enter_with(|builder| async move {
        Ok(builder.state(ChildSetup(format!("set up in {}", std::process::id()))))
    });
    let Ok(scenario) = std::env::var(CHILD) else { return };
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async {
        let broker = MemoryBroker::new();
        let app = dramaturg::app(broker.clone())
            .actor::<Runaway>()
            .actor::<Hello>()
            .actor::<Crash>()
            .actor::<Hungry>()
            .actor::<Endless>()
            .actor::<Stateful>()
            .build()
            .unwrap();
        match scenario.as_str() {
            "runaway" => {
                Runaway {}.send(&app).await.unwrap();
                Hello { n: 1 }.send(&app).await.unwrap();
            }
            "hello" => {
                for n in 0..4 {
                    Hello { n }.send(&app).await.unwrap();
                }
            }
            "crash" => {
                Crash {}.send(&app).await.unwrap();
                Hello { n: 7 }.send(&app).await.unwrap();
            }
            "state" => {
                Stateful {}.send(&app).await.unwrap();
            }
            "shutdown" => {
                Endless {}.send(&app).await.unwrap();
            }
            "abort" => {
                let id = Endless {}.send(&app).await.unwrap();
                let app = app.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(800)).await;
                    dramaturg::abort::abort(&app, id, dramaturg::abort::AbortOptions::abort()).await.unwrap();
                });
            }
            _ => {
                Hungry {}.send(&app).await.unwrap();
            }
        }
        let isolation = Isolation::new().max_jobs_per_child(2).max_child_rss(200 * 1024 * 1024);
        let started = Instant::now();
        let worker = Worker::new(app).concurrency(1).isolation(isolation);
        let report = if scenario == "shutdown" {
            let shutdown = worker.shutdown_handle();
            let running = tokio::spawn(worker.grace_period(Duration::from_millis(300)).run());
            tokio::time::sleep(Duration::from_millis(800)).await;
            shutdown.shutdown();
            running.await.unwrap().unwrap()
        } else {
            worker.run_until_drained(Duration::from_secs(30)).await.unwrap()
        };
        println!(
            "REPORT succeeded={} failed={} retried={} aborted={} requeued={} abandoned={} elapsed_ms={}",
            report.succeeded,
            report.failed,
            report.retried,
            report.aborted,
            report.requeued,
            report.abandoned_threads,
            started.elapsed().as_millis()
        );
        for letter in broker.list("iso", 10).await.unwrap() {
            println!("DEAD {}", letter.reason);
        }
        println!("WORKER {}", std::process::id());
    });
}

/// Runs the worker child for `scenario`; returns its stdout and stderr.
fn run(scenario: &str) -> (String, String) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "isolation_child", "--nocapture", "--test-threads=1"])
        .env(CHILD, scenario)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr_pipe = child.stderr.take().unwrap();
    let errors = std::thread::spawn(move || {
        let mut text = String::new();
        stderr_pipe.read_to_string(&mut text).unwrap();
        text
    });
    let mut out = String::new();
    child.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    let status = child.wait().unwrap();
    let err = errors.join().unwrap();
    assert!(status.success(), "{status:?}\n{out}\n{err}");
    (out, err)
}

fn field(text: &str, key: &str) -> u64 {
    let line = text.lines().find(|l| l.starts_with("REPORT")).unwrap_or_else(|| panic!("{text}"));
    let value = line.split_whitespace().find_map(|kv| kv.strip_prefix(&format!("{key}="))).unwrap();
    value.parse().unwrap()
}

/// An isolated actor that loops forever with a 1 s limit is
/// killed at about 1 s, retried once, then dead-lettered; the worker goes
/// on and runs the next message.
#[test]
fn a_runaway_isolated_actor_is_killed_at_its_limit() {
    if std::env::var(CHILD).is_ok() {
        return;
    }
    let (out, _) = run("runaway");
    assert_eq!((field(&out, "succeeded"), field(&out, "failed"), field(&out, "retried")), (1, 1, 1), "{out}");
    let elapsed = field(&out, "elapsed_ms");
    assert!((2000..5000).contains(&elapsed), "two attempts of about 1 s each took {elapsed} ms\n{out}");
    assert!(out.contains("DEAD ") && out.contains("time limit exceeded"), "{out}");
    // Each attempt ran in a child of its own, and no child runs on.
    let pids: Vec<&str> = out.lines().filter_map(|l| l.split("runaway started in ").nth(1)).collect();
    assert_eq!(pids.len(), 2, "{out}");
    for pid in pids {
        assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists(), "child {pid} still runs");
    }
}

/// Output is tagged with the message id; the value comes back; a child
/// is replaced after `max_jobs_per_child` (2) messages.
#[test]
fn isolated_output_is_tagged_and_children_are_replaced() {
    if std::env::var(CHILD).is_ok() {
        return;
    }
    let (out, err) = run("hello");
    assert_eq!(field(&out, "succeeded"), 4, "{out}");
    // (The child is this test binary again: its harness prints its own
    // lines, tagged too.)
    let hellos: Vec<&str> = out.lines().filter(|l| l.starts_with('[') && l.contains("hello ")).collect();
    assert_eq!(hellos.len(), 4, "{out}");
    for line in &hellos {
        let tag = line.strip_prefix('[').and_then(|l| l.split(']').next()).unwrap();
        assert_ne!(tag, "-", "{out}");
        assert!(tag.parse::<dramaturg::MessageId>().is_ok(), "{line}");
    }
    let errs: Vec<&str> = err.lines().filter(|l| l.contains("] to stderr ")).collect();
    assert_eq!(errs.len(), 4, "{err}");
    assert!(errs.iter().all(|l| !l.starts_with("[-]")), "{err}");
    let mut pids: Vec<&str> = hellos.iter().map(|l| l.rsplit(' ').next().unwrap()).collect();
    pids.dedup();
    assert_eq!(pids.len(), 2, "two children of two messages each: {out}");
    let worker = out.lines().find_map(|l| l.strip_prefix("WORKER ")).unwrap();
    assert!(!pids.contains(&worker), "{out}");
}

/// A crash takes the child, not the worker: the attempt fails and the next
/// message runs.
#[test]
fn a_crashing_isolated_actor_fails_its_attempt_only() {
    if std::env::var(CHILD).is_ok() {
        return;
    }
    let (out, _) = run("crash");
    assert_eq!((field(&out, "succeeded"), field(&out, "failed")), (1, 1), "{out}");
    assert!(out.contains("exited while running the message"), "{out}");
}

/// A child that passes `max_child_rss` is killed and its attempt fails.
#[test]
fn a_child_over_its_memory_limit_is_killed() {
    if std::env::var(CHILD).is_ok() {
        return;
    }
    let (out, _) = run("hungry");
    assert_eq!(field(&out, "failed"), 1, "{out}");
    assert!(out.contains("more than max_child_rss"), "{out}");
    assert!(field(&out, "elapsed_ms") < 5000, "{out}");
}

/// An abort kills the child of a running isolated actor.
#[test]
fn an_abort_kills_the_child() {
    if std::env::var(CHILD).is_ok() {
        return;
    }
    let (out, _) = run("abort");
    assert_eq!((field(&out, "aborted"), field(&out, "failed")), (1, 0), "{out}");
    assert!(field(&out, "elapsed_ms") < 4000, "{out}");
    let pid = out.lines().find_map(|l| l.split("endless started in ").nth(1)).unwrap();
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists(), "child {pid} still runs");
}

/// The child of an isolated (and blocking) actor still running when the
/// grace period ends is killed, and its message requeued, at once: unlike
/// a blocking thread, it need not be waited for.
#[test]
fn shutdown_kills_isolated_children_after_the_grace_period() {
    if std::env::var(CHILD).is_ok() {
        return;
    }
    let (out, _) = run("shutdown");
    assert_eq!((field(&out, "requeued"), field(&out, "abandoned")), (1, 0), "{out}");
    assert!(field(&out, "elapsed_ms") < 3000, "{out}");
    let pid = out.lines().find_map(|l| l.split("endless started in ").nth(1)).unwrap();
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists(), "child {pid} still runs");
}

/// An isolated handler reads the state that `enter_with` set up in its
/// child process (and the worker's own app has none of it).
#[test]
fn isolated_handlers_read_the_state_their_child_set_up() {
    if std::env::var(CHILD).is_ok() {
        return;
    }
    let (out, err) = run("state");
    assert_eq!((field(&out, "succeeded"), field(&out, "failed")), (1, 0), "{out}\n{err}");
    let worker = out.lines().find_map(|l| l.strip_prefix("WORKER ")).unwrap();
    let line = out.lines().find(|l| l.contains("state: set up in ")).unwrap_or_else(|| panic!("{out}\n{err}"));
    let child = line.rsplit(' ').next().unwrap();
    assert_ne!(child, worker, "the state was set up in the child, not the worker: {line}");
}
