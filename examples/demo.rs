//! A two-sided program to run in several terminals: producers send numbered
//! messages, workers process them and record each sequence number they
//! finished, so that you can kill workers, restart the broker, and count
//! what was processed (at least once: every number appears; duplicates are
//! the price of a worker that died between doing the work and acknowledging).
//!
//! ```sh
//! cargo run --release --features redis --example demo -- work --broker redis://127.0.0.1:6379 \
//!     --queue demo --concurrency 8 --record /tmp/demo [--work-ms 5]
//! cargo run --release --features redis --example demo -- produce --broker redis://127.0.0.1:6379 \
//!     --queue demo --count 10000
//! ```
//!
//! `demo purge --broker URL --queue Q` empties a queue (and its delayed
//! messages) before a run.
//!
//! A worker appends each finished sequence number as a line to
//! `DIR/<pid>.done`; SIGTERM or Ctrl-C stops it gracefully, a second signal
//! at once.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use dramaturg::prelude::*;
use dramaturg::BoxError;
use serde::{Deserialize, Serialize};

/// One numbered piece of work.
#[derive(Actor, Serialize, Deserialize)]
#[actor(max_retries = 3, min_backoff = "100ms", max_backoff = "1s")]
struct Step {
    seq: u64,
}

/// The worker's settings, set once at start.
struct WorkerSetup {
    work: Duration,
    record: Mutex<File>,
}

static SETUP: OnceLock<WorkerSetup> = OnceLock::new();

impl Step {
    async fn perform(self, _ctx: &Context) -> Result<(), BoxError> {
        let setup = SETUP.get().ok_or("the worker is not set up")?;
        if !setup.work.is_zero() {
            tokio::time::sleep(setup.work).await;
        }
        // One write per line, straight to the file: a line is on record as
        // soon as the work is done, even if the process is killed next.
        let mut record = setup.record.lock().map_err(|_| "record file lock poisoned")?;
        record.write_all(format!("{}\n", self.seq).as_bytes())?;
        Ok(())
    }
}

struct Args {
    command: String,
    broker: String,
    queue: String,
    count: u64,
    concurrency: usize,
    record: Option<String>,
    work_ms: u64,
}

fn parse_args() -> Result<Args, String> {
    let mut it = std::env::args().skip(1);
    let command = it.next().ok_or("usage: demo produce|work|purge --broker URL --queue Q [...]")?;
    let mut args = Args {
        command,
        broker: "memory://".into(),
        queue: "demo".into(),
        count: 1000,
        concurrency: 8,
        record: None,
        work_ms: 0,
    };
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--broker" => args.broker = value()?,
            "--queue" => args.queue = value()?,
            "--count" => args.count = value()?.parse().map_err(|e| format!("--count: {e}"))?,
            "--concurrency" => args.concurrency = value()?.parse().map_err(|e| format!("--concurrency: {e}"))?,
            "--record" => args.record = Some(value()?),
            "--work-ms" => args.work_ms = value()?.parse().map_err(|e| format!("--work-ms: {e}"))?,
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok(args)
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    tracing_subscriber::fmt().with_max_level(tracing::Level::INFO).with_target(false).compact().init();
    let args = parse_args()?;
    let broker = dramaturg::connect(&args.broker).await?;
    let app = dramaturg::app_shared(broker).actor_in::<Step>(&args.queue).build()?;
    match args.command.as_str() {
        "produce" => produce(&app, args.count).await,
        "work" => work(app, &args).await,
        "purge" => {
            let purged = app.admin()?.purge(&args.queue).await?;
            println!("purged {purged} messages from {:?}", args.queue);
            Ok(())
        }
        other => Err(format!("unknown command {other:?}: produce, work or purge").into()),
    }
}

async fn produce(app: &App, count: u64) -> Result<(), BoxError> {
    let started = Instant::now();
    let mut seq = 0;
    while seq < count {
        let batch: Vec<Step> = (seq..(seq + 1000).min(count)).map(|seq| Step { seq }).collect();
        seq += batch.len() as u64;
        app.send_many(&batch).await?;
    }
    println!("sent {count} messages to {:?} in {:.2?}", app.queues(), started.elapsed());
    Ok(())
}

async fn work(app: App, args: &Args) -> Result<(), BoxError> {
    let dir = args.record.as_deref().ok_or("work needs --record DIR")?;
    std::fs::create_dir_all(dir)?;
    let path = format!("{dir}/{}.done", std::process::id());
    let record = OpenOptions::new().create(true).append(true).open(&path)?;
    let setup = WorkerSetup { work: Duration::from_millis(args.work_ms), record: Mutex::new(record) };
    SETUP.set(setup).map_err(|_| "set up twice")?;
    println!("worker {} recording to {path}", std::process::id());
    let report = Worker::new(app).concurrency(args.concurrency).run_until_signal().await?;
    println!("worker {} stopped: {report:?}", std::process::id());
    Ok(())
}
