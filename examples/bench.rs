//! Throughput and memory of the whole path: enqueue N no-op messages, then
//! run a worker until the queue is drained.
//!
//! ```sh
//! cargo run --release --example bench -- --broker memory --messages 100000
//! ```
//!
//! Flags: `--broker URL` (default `memory://`; `memory` is short for it),
//! `--messages N` (100000), `--concurrency C` (64), `--batch B` (messages
//! per `send_many` call; 1 sends them one by one; default 1000).
//!
//! Prints a human summary, then one last line of JSON with `broker`,
//! `messages`, `enqueue_per_s`, `process_per_s` and `peak_rss_mb`.

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
    broker: String,
    messages: u64,
    concurrency: usize,
    batch: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args { broker: "memory://".into(), messages: 100_000, concurrency: 64, batch: 1000 };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--broker" => args.broker = value()?,
            "--messages" => args.messages = value()?.parse().map_err(|e| format!("--messages: {e}"))?,
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

/// The peak resident set size of this process, in MiB (Linux; 0 elsewhere).
fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
            line.split_whitespace().nth(1)?.parse::<f64>().ok()
        })
        .map_or(0.0, |kib| kib / 1024.0)
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let args = parse_args()?;
    let broker = dramaturg::connect(&args.broker).await?;
    let app = dramaturg::app_shared(broker).actor::<Noop>().build()?;
    let broker_name = args.broker.split("://").next().unwrap_or_default().to_owned();

    let started = Instant::now();
    let mut n = 0;
    while n < args.messages {
        let batch: Vec<Noop> = (n..(n + args.batch as u64).min(args.messages)).map(|n| Noop { n }).collect();
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
    if report.succeeded != args.messages {
        return Err(format!("expected {} messages processed, got {report:?}", args.messages).into());
    }

    let enqueue_per_s = args.messages as f64 / enqueue_secs;
    let process_per_s = args.messages as f64 / process_secs;
    let peak = peak_rss_mb();
    println!("broker:      {broker_name}");
    println!("messages:    {}", args.messages);
    println!("concurrency: {}, batch: {}", args.concurrency, args.batch);
    println!("enqueue:     {enqueue_per_s:>10.0} msgs/s ({enqueue_secs:.3} s)");
    println!("process:     {process_per_s:>10.0} msgs/s ({process_secs:.3} s)");
    println!("peak RSS:    {peak:.1} MiB");
    println!(
        "{{\"broker\":\"{broker_name}\",\"messages\":{},\"concurrency\":{},\"batch\":{},\"enqueue_per_s\":{enqueue_per_s:.0},\"process_per_s\":{process_per_s:.0},\"peak_rss_mb\":{peak:.1}}}",
        args.messages, args.concurrency, args.batch
    );
    Ok(())
}
