//! Benchmarks of the whole path, with the default middleware stack.
//!
//! ```sh
//! cargo run --release --example bench -- --broker memory --messages 100000
//! cargo run --release --example bench -- --scenario fail-large-errors --messages 10
//! cargo run --release --example bench -- --scenario fail-large-errors --messages 50 --concurrency 50
//! ```
//!
//! Scenarios (`--scenario`):
//!
//! - `throughput` (default): enqueue N no-op messages, then run a worker
//!   until the queue is drained. Last line: JSON with `broker`, `messages`,
//!   `enqueue_per_s`, `process_per_s` and `peak_rss_mb`.
//! - `fail-large-errors`: N messages whose actor fails every attempt with an
//!   error holding a 10 MB buffer, `max_retries` 20, backoff 10–100 ms; RSS
//!   is sampled every 100 ms until all are dead-lettered. Last line: JSON
//!   with `baseline_rss_mb`, `peak_rss_mb`, `final_rss_mb` and `attempts`.
//!   `--samples FILE` writes the samples as CSV (`ms,rss_mb`).
//!
//! Flags: `--broker URL` (default `memory://`; `memory` is short for it),
//! `--messages N`, `--concurrency C` (64), `--batch B` (messages per
//! `send_many` call; 1 sends them one by one; default 1000).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dramaturg::prelude::*;
use dramaturg::BoxError;
use serde::{Deserialize, Serialize};

/// The no-op actor.
#[derive(Actor, Serialize, Deserialize)]
#[actor(queue = "bench")]
struct Noop {
    n: u64,
}

impl Noop {
    async fn perform(self, _ctx: &Context) -> Result<(), BoxError> {
        std::hint::black_box(self.n);
        Ok(())
    }
}

struct Args {
    scenario: String,
    broker: String,
    messages: Option<u64>,
    concurrency: usize,
    batch: usize,
    samples: Option<String>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        scenario: "throughput".into(),
        broker: "memory://".into(),
        messages: None,
        concurrency: 64,
        batch: 1000,
        samples: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--scenario" => args.scenario = value()?,
            "--samples" => args.samples = Some(value()?),
            "--broker" => args.broker = value()?,
            "--messages" => args.messages = Some(value()?.parse().map_err(|e| format!("--messages: {e}"))?),
            "--concurrency" => args.concurrency = value()?.parse().map_err(|e| format!("--concurrency: {e}"))?,
            "--batch" => args.batch = value()?.parse::<usize>().map_err(|e| format!("--batch: {e}"))?.max(1),
            other => return Err(format!("unknown flag {other}; see the example's docs")),
        }
    }
    if args.broker == "memory" {
        args.broker = "memory://".into();
    }
    Ok(args)
}

/// A figure of this process's memory from /proc/self/status, in MiB
/// (Linux; 0 elsewhere): `VmHWM` is the peak resident set, `VmRSS` the current one.
fn status_mb(field: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|l| l.starts_with(field))?;
            line.split_whitespace().nth(1)?.parse::<f64>().ok()
        })
        .map_or(0.0, |kib| kib / 1024.0)
}

fn peak_rss_mb() -> f64 {
    status_mb("VmHWM:")
}

fn rss_mb() -> f64 {
    status_mb("VmRSS:")
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let args = parse_args()?;
    match args.scenario.as_str() {
        "throughput" => throughput(&args).await,
        "fail-large-errors" => fail_large_errors(&args).await,
        other => Err(format!("unknown scenario {other:?}: throughput or fail-large-errors").into()),
    }
}

async fn throughput(args: &Args) -> Result<(), BoxError> {
    let messages = args.messages.unwrap_or(100_000);
    let broker = dramaturg::connect(&args.broker).await?;
    let app = dramaturg::app_shared(broker).actor::<Noop>().build()?;
    let broker_name = args.broker.split("://").next().unwrap_or_default().to_owned();

    let started = Instant::now();
    let mut n = 0;
    while n < messages {
        let batch: Vec<Noop> = (n..(n + args.batch as u64).min(messages)).map(|n| Noop { n }).collect();
        n += batch.len() as u64;
        if args.batch == 1 {
            batch[0].send(&app).await?;
        } else {
            app.send_many(&batch).await?;
        }
    }
    let enqueue_secs = started.elapsed().as_secs_f64();

    let started = Instant::now();
    let report = Worker::new(app).concurrency(args.concurrency).run_until_drained(Duration::from_secs(3600)).await?;
    let process_secs = started.elapsed().as_secs_f64();
    if report.succeeded != messages {
        return Err(format!("expected {messages} messages processed, got {report:?}").into());
    }

    let enqueue_per_s = messages as f64 / enqueue_secs;
    let process_per_s = messages as f64 / process_secs;
    let peak = peak_rss_mb();
    println!("broker:      {broker_name}");
    println!("messages:    {messages}");
    println!("concurrency: {}, batch: {}", args.concurrency, args.batch);
    println!("enqueue:     {enqueue_per_s:>10.0} msgs/s ({enqueue_secs:.3} s)");
    println!("process:     {process_per_s:>10.0} msgs/s ({process_secs:.3} s)");
    println!("peak RSS:    {peak:.1} MiB");
    println!(
        "{{\"broker\":\"{broker_name}\",\"messages\":{messages},\"concurrency\":{},\"batch\":{},\"enqueue_per_s\":{enqueue_per_s:.0},\"process_per_s\":{process_per_s:.0},\"peak_rss_mb\":{peak:.1}}}",
        args.concurrency, args.batch
    );
    Ok(())
}

/// An error holding a large buffer, as a failed export or upload might.
#[derive(Debug)]
struct LargeError {
    buffer: Vec<u8>,
}

impl std::fmt::Display for LargeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "failed with {} bytes of context", self.buffer.len())
    }
}

impl std::error::Error for LargeError {}

static ATTEMPTS: AtomicU64 = AtomicU64::new(0);

/// Fails every attempt with a 10 MB error.
#[derive(Actor, Serialize, Deserialize)]
#[actor(queue = "bench-errors", max_retries = 20, min_backoff = "10ms", max_backoff = "100ms")]
struct FailLarge;

impl FailLarge {
    async fn perform(self, _ctx: &Context) -> Result<(), LargeError> {
        ATTEMPTS.fetch_add(1, Ordering::Relaxed);
        // Non-zero bytes, so that every page is really touched.
        let buffer = vec![0xA5; 10 * 1024 * 1024];
        tokio::task::yield_now().await;
        Err(LargeError { buffer })
    }
}

async fn fail_large_errors(args: &Args) -> Result<(), BoxError> {
    let messages = args.messages.unwrap_or(10);
    let broker = dramaturg::connect(&args.broker).await?;
    let app = dramaturg::app_shared(broker).actor::<FailLarge>().build()?;
    let baseline = rss_mb();

    let started = Instant::now();
    let samples = Arc::new(Mutex::new(vec![(0u64, baseline)]));
    let sampler = {
        let samples = Arc::clone(&samples);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            loop {
                tick.tick().await;
                let ms = started.elapsed().as_millis() as u64;
                samples.lock().map_err(|_| "poisoned")?.push((ms, rss_mb()));
            }
            #[allow(unreachable_code)]
            Ok::<(), &str>(())
        })
    };
    for _ in 0..messages {
        FailLarge.send(&app).await?;
    }
    let report = Worker::new(app).concurrency(args.concurrency).run_until_drained(Duration::from_secs(600)).await?;
    let final_rss = rss_mb();
    sampler.abort();
    let samples = samples.lock().map_err(|_| "poisoned")?.clone();
    let peak = samples.iter().map(|(_, mb)| *mb).fold(final_rss, f64::max);
    let attempts = ATTEMPTS.load(Ordering::Relaxed);
    if report.failed != messages {
        return Err(format!("expected {messages} messages dead-lettered, got {report:?}").into());
    }
    if let Some(path) = &args.samples {
        let mut csv = String::from("ms,rss_mb\n");
        for (ms, mb) in &samples {
            csv.push_str(&format!("{ms},{mb:.2}\n"));
        }
        csv.push_str(&format!("{},{final_rss:.2}\n", started.elapsed().as_millis()));
        std::fs::write(path, csv)?;
    }
    println!("scenario:    fail-large-errors ({messages} messages, concurrency {})", args.concurrency);
    println!("attempts:    {attempts} in {:.1} s", started.elapsed().as_secs_f64());
    println!("RSS:         baseline {baseline:.1} MiB, peak {peak:.1} MiB, final {final_rss:.1} MiB");
    println!(
        "{{\"scenario\":\"fail-large-errors\",\"messages\":{messages},\"concurrency\":{},\"attempts\":{attempts},\"baseline_rss_mb\":{baseline:.1},\"peak_rss_mb\":{peak:.1},\"final_rss_mb\":{final_rss:.1}}}",
        args.concurrency
    );
    Ok(())
}
