//! Helpers shared by the broker tests that run worker processes.

#![allow(dead_code, clippy::unwrap_used)] // Each test binary uses part of this.

use std::collections::HashMap;
use std::future::Future;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dramaturg::prelude::*;
use dramaturg::BoxError;
use serde::{Deserialize, Serialize};

pub(crate) mod guarded;
#[cfg(feature = "postgres")]
pub(crate) mod postgres;
pub(crate) mod python;
#[cfg(feature = "sqlite")]
pub(crate) mod sqlite;

/// The environment variable that turns a test binary into a worker child.
pub(crate) const CHILD: &str = "DRAMATURG_TEST_CHILD";

/// Whether this process is a worker child (the other tests then do nothing).
pub(crate) fn is_child() -> bool {
    std::env::var(CHILD).is_ok()
}

/// A Redis namespace of the test's own.
pub(crate) fn namespace() -> String {
    format!("test-{}", dramaturg::MessageId::new())
}

/// The Redis broker at `url` under `namespace`, with the tests' short
/// heartbeat (200 ms, dead after 1 s), idle consumers looking again every
/// second, and sends retried for 10 s while the server is away.
#[cfg(feature = "redis")]
pub(crate) async fn redis_broker(url: &str, namespace: &str) -> dramaturg::redis::RedisBroker {
    let config = dramaturg::redis::RedisConfig::new(url)
        .namespace(namespace)
        .heartbeat(Duration::from_millis(200), Duration::from_secs(1))
        .max_block(Duration::from_secs(1))
        .retry_enqueue_for(Duration::from_secs(10));
    dramaturg::redis::RedisBroker::with_config(config).await.unwrap()
}

/// Numbered work; a worker records each number it finished.
#[derive(Actor, Serialize, Deserialize)]
pub(crate) struct Numbered {
    pub(crate) seq: u64,
}

static RECORD: Mutex<Option<std::fs::File>> = Mutex::new(None);

impl Numbered {
    async fn perform(self, _ctx: &Context) -> Result<(), BoxError> {
        record(self.seq).await
    }
}

/// What [`Numbered`] does: after 3 ms of work, records `seq` to the file
/// of a worker child (and nothing elsewhere). Actors of other queues that
/// record as `Numbered` does call it too.
pub(crate) async fn record(seq: u64) -> Result<(), BoxError> {
    tokio::time::sleep(Duration::from_millis(3)).await;
    if let Some(file) = RECORD.lock().unwrap().as_mut() {
        file.write_all(format!("{seq}\n").as_bytes())?;
    }
    Ok(())
}

/// In a worker child: records to the file the parent named and runs
/// `worker` (which should run until SIGTERM). Returns the child's spec
/// (what the parent passed after the file name), or `None` in the parent.
pub(crate) fn child_spec() -> Option<(String, String)> {
    let spec = std::env::var(CHILD).ok()?;
    let (path, rest) = spec.split_once('|').unwrap();
    *RECORD.lock().unwrap() = Some(std::fs::OpenOptions::new().create(true).append(true).open(path).unwrap());
    Some((path.to_owned(), rest.to_owned()))
}

/// Starts this test binary again as a worker child running `test`, recording
/// to `dir/<n>.done`, with `spec` for the child.
pub(crate) fn spawn_worker(test: &str, dir: &Path, n: usize, spec: &str) -> Child {
    let path = dir.join(format!("{n}.done"));
    Command::new(std::env::current_exe().unwrap())
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(CHILD, format!("{}|{spec}", path.display()))
        .stdout(Stdio::null())
        .spawn()
        .unwrap()
}

/// How often each number was recorded in `dir`.
pub(crate) fn recorded(dir: &Path) -> HashMap<u64, usize> {
    let mut counts = HashMap::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        for line in text.lines().filter(|l| !l.is_empty()) {
            *counts.entry(line.parse().unwrap()).or_insert(0) += 1;
        }
    }
    counts
}

/// A worker child's body: a worker of 4 runs the app that `app` builds
/// from the child's spec (its namespace or queue prefix) until SIGTERM;
/// nothing in a process that is not a worker child.
pub(crate) fn run_worker_child<F: Future<Output = App>>(app: impl FnOnce(String) -> F) {
    let Some((_, spec)) = child_spec() else { return };
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async {
        Worker::new(app(spec).await).concurrency(4).run_until_signal().await.unwrap();
    });
}

/// A worker child that is killed if the test ends without stopping it (a
/// failed assertion), so that it does not outlive the test binary.
pub(crate) struct KillOnDrop(pub(crate) Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Sends SIGTERM and waits for the child.
pub(crate) fn terminate(child: &mut Child) {
    Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    child.wait().unwrap();
}

/// Waits until `done`, failing the test after `within`.
pub(crate) async fn wait_for(what: &str, within: Duration, done: impl Fn() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Sends `total` numbered messages, runs two worker children, SIGKILLs one
/// after 300 messages, and checks that the other processes every message.
/// Returns (duplicates, time from the kill to the last message).
pub(crate) async fn kill_one_of_two_workers(app: &App, test: &str, spec: &str, total: u64) -> (usize, Duration) {
    let dir = std::env::temp_dir().join(format!("dramaturg-kill-{}", dramaturg::MessageId::new()));
    std::fs::create_dir_all(&dir).unwrap();
    let batch: Vec<Numbered> = (0..total).map(|seq| Numbered { seq }).collect();
    app.send_many(&batch).await.unwrap();
    let mut victim = spawn_worker(test, &dir, 1, spec);
    let mut survivor = spawn_worker(test, &dir, 2, spec);
    wait_for("progress", Duration::from_secs(60), || recorded(&dir).len() >= 300).await;
    victim.kill().unwrap(); // SIGKILL
    victim.wait().unwrap();
    let killed_at = Instant::now();
    wait_for("every message", Duration::from_secs(60), || recorded(&dir).len() == total as usize).await;
    let recovery = killed_at.elapsed();
    terminate(&mut survivor);
    let counts = recorded(&dir);
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(counts.len(), total as usize, "every message processed at least once");
    (counts.values().map(|n| n - 1).sum(), recovery)
}

/// Appends `what` and this process's id as a line to the log at `log`
/// (jobs record their start and end this way, across processes and
/// threads). The line goes out in one `write` on a file opened for
/// appending, so that lines written at once do not interleave (`writeln!`
/// on a `File` writes each formatted piece separately).
pub(crate) fn append(log: &str, what: &str) {
    let mut file = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
    let line = format!("{what} {}\n", std::process::id());
    file.write_all(line.as_bytes()).unwrap();
}

/// The lines of `log` that begin with `what`.
pub(crate) fn logged(log: &Path, what: &str) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|line| line.starts_with(what))
        .map(str::to_owned)
        .collect()
}

/// A fresh log file path under the temporary directory.
pub(crate) fn temp_log(prefix: &str) -> PathBuf {
    std::env::temp_dir().join(format!("dramaturg-{prefix}-{}.log", dramaturg::MessageId::new()))
}

/// libfaketime's library, to preload into a child whose clock a test skews
/// (preloaded directly, rather than through the `faketime` wrapper, so
/// that signals reach the child itself).
pub(crate) fn faketime_library() -> PathBuf {
    std::fs::read_dir("/usr/lib")
        .unwrap()
        .filter_map(|entry| Some(entry.ok()?.path().join("faketime/libfaketimeMT.so.1")))
        .find(|path| path.exists())
        .expect("libfaketime is installed (scripts/services installs faketime)")
}

/// Runs this test binary as the child test `test` with `spec`, its clock
/// `skew` off (e.g. `"-30s"`) through libfaketime.
pub(crate) fn spawn_skewed(test: &str, spec: &str, skew: &str) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env("LD_PRELOAD", faketime_library())
        .env("FAKETIME", skew)
        .env("FAKETIME_DONT_RESET", "1")
        .env(CHILD, spec)
        .stdout(Stdio::null())
        .spawn()
        .expect("the test binary can be run")
}

/// An async actor that computes for `millis` without ever reaching an
/// `.await`: it holds its runtime thread the whole time, and logs its
/// start and end to `log`.
#[derive(Actor, Serialize, Deserialize)]
#[actor(max_retries = 0, time_limit = "1m")]
pub(crate) struct Compute {
    pub(crate) log: String,
    pub(crate) millis: u64,
}

impl Compute {
    async fn perform(self, _ctx: &Context) -> Result<(), BoxError> {
        append(&self.log, "start");
        let until = Instant::now() + Duration::from_millis(self.millis);
        let mut x = 0u64;
        while Instant::now() < until {
            for i in 0..10_000u64 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
            }
        }
        append(&self.log, "end");
        Ok(())
    }
}

/// A TCP proxy in front of `upstream` that counts the connections made
/// through it, so that a test can tell whether a client reconnected.
pub(crate) struct CountingProxy {
    /// The loopback port it listens on.
    pub(crate) port: u16,
    accepted: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl CountingProxy {
    pub(crate) async fn start(upstream: &'static str) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = std::sync::Arc::<std::sync::atomic::AtomicUsize>::default();
        let counted = std::sync::Arc::clone(&accepted);
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let mut server = tokio::net::TcpStream::connect(upstream).await.unwrap();
                tokio::spawn(async move {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                });
            }
        });
        Self { port, accepted }
    }

    /// How many connections were made through the proxy so far.
    pub(crate) fn accepted(&self) -> usize {
        self.accepted.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// A writer that keeps what tracing prints, for a test to read (its
/// bytes are `.0`).
#[derive(Clone, Default)]
pub(crate) struct Captured(pub(crate) Arc<Mutex<Vec<u8>>>);

impl Captured {
    /// A subscriber that writes here what is logged at `level` or above.
    pub(crate) fn subscriber(&self, level: tracing::Level) -> impl tracing::Subscriber + Send + Sync + 'static {
        let writer = self.clone();
        tracing_subscriber::fmt().with_max_level(level).with_ansi(false).with_writer(move || writer.clone()).finish()
    }

    /// How many times `text` was logged so far.
    pub(crate) fn count(&self, text: &str) -> usize {
        String::from_utf8_lossy(&self.0.lock().unwrap()).matches(text).count()
    }
}

impl Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
