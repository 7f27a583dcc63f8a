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
//! messages) before a run; `demo stats --broker URL --queue Q` prints its
//! counts as JSON.
//!
//! `--heartbeat-timeout-ms T` (Redis) declares a worker dead after T ms
//! without a heartbeat (beats every T/5 ms), for runs that stall workers;
//! `--retry-sends-ms R` (Redis) retries a send that fails for a connection
//! reason for up to R ms, for runs that fail a server over.
//!
//! A worker appends a line per finished message to `DIR/<pid>.done`: the
//! sequence number, then when the actor started and finished and when the
//! message was sent (microseconds since the Unix epoch). SIGTERM or Ctrl-C
//! stops it gracefully, a second signal at once; it then writes its report
//! to `DIR/<pid>.report` as JSON. `produce --interval-ms I`
//! sends one message every I ms instead of all at once (for latency).
//!
//! `--protocol dramatiq` (or `?protocol=dramatiq` in the broker URL) speaks
//! Python Dramatiq's layout and JSON messages, so that a Python producer
//! feeds `demo work` (`step.send(seq)` or `step.send(seq=seq)`, actor
//! `step` on the queue given by `--queue`) and `demo produce` feeds a
//! Python worker (`def step(seq, sent_us=0)`). See docs/dramatiq.md.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use dramaturg::prelude::*;
use dramaturg::BoxError;
use serde::{Deserialize, Serialize};

/// One numbered piece of work, stamped with when it was sent.
#[derive(Actor, Serialize, Deserialize)]
#[actor(max_retries = 3, min_backoff = "100ms", max_backoff = "1s")]
struct Step {
    seq: u64,
    /// Microseconds since the Unix epoch at which it was sent.
    #[serde(default)]
    sent_us: u64,
}

fn unix_us() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
}

/// The worker's settings: app state, registered when a worker starts.
struct WorkerSetup {
    work: Duration,
    record: Mutex<File>,
}

impl Step {
    async fn perform(self, ctx: &Context) -> Result<(), BoxError> {
        let setup = ctx.state::<WorkerSetup>()?;
        let started_us = unix_us();
        if !setup.work.is_zero() {
            tokio::time::sleep(setup.work).await;
        }
        // One write per line, straight to the file: a line is on record as
        // soon as the work is done, even if the process is killed next.
        let mut record = setup.record.lock().map_err(|_| "record file lock poisoned")?;
        record.write_all(format!("{} {started_us} {} {}\n", self.seq, unix_us(), self.sent_us).as_bytes())?;
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
    interval_ms: u64,
    heartbeat_timeout_ms: Option<u64>,
    retry_sends_ms: u64,
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
        interval_ms: 0,
        heartbeat_timeout_ms: None,
        retry_sends_ms: 0,
    };
    let mut protocol = None;
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--broker" => args.broker = value()?,
            "--queue" => args.queue = value()?,
            "--protocol" => protocol = Some(value()?),
            "--count" => args.count = value()?.parse().map_err(|e| format!("--count: {e}"))?,
            "--concurrency" => args.concurrency = value()?.parse().map_err(|e| format!("--concurrency: {e}"))?,
            "--record" => args.record = Some(value()?),
            "--work-ms" => args.work_ms = value()?.parse().map_err(|e| format!("--work-ms: {e}"))?,
            "--interval-ms" => args.interval_ms = value()?.parse().map_err(|e| format!("--interval-ms: {e}"))?,
            "--retry-sends-ms" => {
                args.retry_sends_ms = value()?.parse().map_err(|e| format!("--retry-sends-ms: {e}"))?;
            }
            "--heartbeat-timeout-ms" => {
                args.heartbeat_timeout_ms = Some(value()?.parse().map_err(|e| format!("--heartbeat-timeout-ms: {e}"))?);
            }
            other => return Err(format!("unknown flag {other}")),
        }
    }
    if let Some(protocol) = protocol {
        let separator = if args.broker.contains('?') { '&' } else { '?' };
        args.broker = format!("{}{separator}protocol={protocol}", args.broker);
    }
    Ok(args)
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    tracing_subscriber::fmt().with_max_level(tracing::Level::INFO).with_target(false).compact().init();
    let args = parse_args()?;
    let broker = connect(&args).await?;
    let mut app = dramaturg::app_shared(broker).actor_in::<Step>(&args.queue);
    if args.command == "work" {
        app = app.state(worker_setup(&args)?);
    }
    let app = app.build()?;
    match args.command.as_str() {
        "produce" => produce(&app, args.count, args.interval_ms).await,
        "work" => work(app, &args).await,
        "purge" => {
            let purged = app.admin()?.purge(&args.queue).await?;
            println!("purged {purged} messages from {:?}", args.queue);
            Ok(())
        }
        "stats" => {
            let stats = app.admin()?.stats(&args.queue).await?;
            println!(
                "{{\"ready\":{},\"delayed\":{},\"in_flight\":{},\"dead\":{}}}",
                stats.ready, stats.delayed, stats.in_flight, stats.dead
            );
            Ok(())
        }
        other => Err(format!("unknown command {other:?}: produce, work, purge or stats").into()),
    }
}

/// The broker at `--broker`, with the heartbeat timeout and send retries
/// asked for.
async fn connect(args: &Args) -> Result<std::sync::Arc<dyn dramaturg::Broker>, BoxError> {
    #[cfg(feature = "redis")]
    if (args.heartbeat_timeout_ms.is_some() || args.retry_sends_ms > 0) && args.broker.starts_with("redis") {
        use dramaturg::redis::{RedisBroker, RedisConfig};
        let mut config =
            RedisConfig::new(args.broker.as_str()).retry_enqueue_for(Duration::from_millis(args.retry_sends_ms));
        if let Some(timeout) = args.heartbeat_timeout_ms {
            let timeout = Duration::from_millis(timeout);
            config = config.heartbeat(timeout / 5, timeout);
        }
        return Ok(std::sync::Arc::new(RedisBroker::with_config(config).await?));
    }
    Ok(dramaturg::connect(&args.broker).await?)
}

async fn produce(app: &App, count: u64, interval_ms: u64) -> Result<(), BoxError> {
    let started = Instant::now();
    if interval_ms > 0 {
        let mut tick = tokio::time::interval(Duration::from_millis(interval_ms));
        for seq in 0..count {
            tick.tick().await;
            Step { seq, sent_us: unix_us() }.send(app).await?;
        }
    } else {
        let mut seq = 0;
        while seq < count {
            let sent_us = unix_us();
            let batch: Vec<Step> = (seq..(seq + 1000).min(count)).map(|seq| Step { seq, sent_us }).collect();
            seq += batch.len() as u64;
            app.send_many(&batch).await?;
        }
    }
    let elapsed = started.elapsed();
    println!("sent {count} messages to {:?} in {elapsed:.2?}", app.queues());
    println!("{{\"sent\":{count},\"seconds\":{:.6}}}", elapsed.as_secs_f64());
    Ok(())
}

/// Opens `DIR/<pid>.done` for the worker's record.
fn worker_setup(args: &Args) -> Result<WorkerSetup, BoxError> {
    let dir = args.record.as_deref().ok_or("work needs --record DIR")?;
    std::fs::create_dir_all(dir)?;
    let path = format!("{dir}/{}.done", std::process::id());
    let record = OpenOptions::new().create(true).append(true).open(&path)?;
    println!("worker {} recording to {path}", std::process::id());
    Ok(WorkerSetup { work: Duration::from_millis(args.work_ms), record: Mutex::new(record) })
}

async fn work(app: App, args: &Args) -> Result<(), BoxError> {
    let dir = args.record.as_deref().ok_or("work needs --record DIR")?;
    let report = Worker::new(app).concurrency(args.concurrency).run_until_signal().await?;
    println!("worker {} stopped: {report:?}", std::process::id());
    let json = format!(
        "{{\"succeeded\":{},\"failed\":{},\"rejected\":{},\"requeued\":{},\"stale\":{}}}\n",
        report.succeeded, report.failed, report.rejected, report.requeued, report.stale
    );
    std::fs::write(format!("{dir}/{}.report", std::process::id()), json)?;
    Ok(())
}
