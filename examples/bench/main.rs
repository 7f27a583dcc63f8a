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
//!   `enqueue_per_s`, `process_per_s`, `worker_cpu_us` and `server_cpu_us`
//!   (user plus system CPU time per message while processing, of this
//!   process and of the broker's server when it runs on this machine,
//!   from `/proc/<pid>/stat`; `null` when not measured) and `peak_rss_mb`.
//! - `ceiling` (`--broker redis://…` or `amqp://…`): the same N messages
//!   (bodies as large as the no-op actor's messages) through the same
//!   server with the least work a correct at-least-once queue needs,
//!   written directly with the client library (see `ceiling.rs`), then
//!   through dramaturg as in `throughput`, three rounds interleaved. Prints
//!   a table of both and dramaturg as a percentage of the raw client; last
//!   line: JSON with `raw_*` and `dramaturg_*` medians of `enqueue_per_s`,
//!   `process_per_s`, `worker_cpu_us`, `server_cpu_us`, and
//!   `process_pct_of_ceiling`, `enqueue_pct_of_ceiling`.
//! - `latency`: N messages (default 1000) sent 10 ms apart to an idle
//!   worker; enqueue-to-start latency. Last line: JSON with
//!   `latency_ms_p50`, `latency_ms_p90`, `latency_ms_p99`, `latency_ms_max`.
//! - `idle`: an idle worker for `--seconds S` (default 10); commands per
//!   second it sends to Redis (`INFO commandstats` before and after; the
//!   bench's own two `INFO` calls are not counted) and its RSS. Last line:
//!   JSON with `idle_commands_per_s` and `rss_mb`. Redis only; with
//!   `--events redis://…` the abort middleware watches Redis too.
//! - `abort`: 20 running actors that loop on 1 ms sleeps, aborted one by
//!   one; latency from the `abort()` call to the actor's interruption.
//!   `--events URL` picks the abort middleware's store (`memory`, the default,
//!   or `redis://…`; in the throughput scenario the default follows the
//!   broker, as `dramaturg::app` does, and `--events memory` keeps abort
//!   requests in process memory to measure what the shared store costs). Last line: JSON with `abort_latency_ms_p50` and
//!   `abort_latency_ms_p90`.
//! - `fail-large-errors`: N messages whose actor fails every attempt with an
//!   error holding a 10 MB buffer, `max_retries` 20, backoff 10–100 ms; RSS
//!   is sampled every 100 ms until all are dead-lettered. Last line: JSON
//!   with `baseline_rss_mb`, `peak_rss_mb`, `final_rss_mb` and `attempts`.
//!   `--samples FILE` writes the samples as CSV (`ms,rss_mb`).
//! - `isolated-runaway`: N messages (default 1000) of an `isolated` actor
//!   that never returns (it loops on 10 ms sleeps), `time_limit` 1 s, no
//!   retries, `--concurrency` (default here 50) at once: each child is
//!   killed at its limit. The worker's RSS is sampled after every 100
//!   messages, and the dead letters (kept in the worker's memory by the
//!   in-memory broker) are deleted then. Last line: JSON with `killed`, `elapsed_s`,
//!   `rss_mb_after_100`, `rss_mb_final`, `peak_rss_mb`.
//! - `isolated-overhead`: N no-op messages (default 2000) through an
//!   `isolated` actor, then N through an in-process `blocking` one, at
//!   `--concurrency` (default here 8). Last line: JSON with both rates and
//!   the per-message overhead of isolation in microseconds (one worker
//!   thread's worth: the difference of the mean times per message times
//!   the concurrency).
//!
//! - `results`: N messages (default 1000) one at a time to an idle worker
//!   of an actor that keeps its results and returns when it finished; a
//!   waiter on each (`sent.result(&app).wait(..)`) measures from the
//!   actor's end to its wake-up. Then 10 N no-op messages (at least 2000)
//!   three ways, through a worker each, interleaved, three times: of an
//!   actor that keeps its results (`store_results` on the actor), of one
//!   that does not, and of the latter with `store_results` set per message
//!   (which adds it and `needs` to every message). Last line: JSON with
//!   `wake_ms_p50`, `wake_ms_p99`, `with_results_per_s`,
//!   `without_results_per_s`, `results_cost_pct`, `per_message_per_s`,
//!   `per_message_cost_pct`, and the CPU time per message of this process
//!   and the broker's server together (as in `throughput`) with and
//!   without results, `with_results_cpu_us`, `without_results_cpu_us` and
//!   `results_cpu_cost_pct` (medians).
//!
//! - `rate-limit` (feature `rate-limits`): N (default 2000) acquires, one
//!   at a time, of a concurrency limiter (each permit released before the
//!   next acquire), a sliding-window limiter and a GCRA bucket, in the
//!   broker's store (`--broker redis://…`: Redis; memory otherwise), none
//!   refused. Last line: JSON with the median and p99 time per acquire in
//!   µs for each, and on Redis `round_trips_per_acquire`: the script calls
//!   (`EVALSHA`/`EVAL` in `INFO commandstats`) per window acquire, in the
//!   least of ten batches (the server's counts include other clients').
//!
//! - `metrics` (feature `prometheus`): N no-op messages (default 100,000)
//!   through the default stack, seven times each without and with the
//!   metrics middleware (a Prometheus recorder installed and
//!   served), interleaved. Last line: JSON with the medians
//!   `with_metrics_per_s` and `without_metrics_per_s`, and
//!   `metrics_cost_pct`; and the medians of the CPU time per message of
//!   the process while the worker ran (`cpu_us_with`,
//!   `cpu_us_without`, from `/proc/self/stat`: on a busy
//!   machine steadier than the rates) and `metrics_cpu_cost_pct`.
//!
//! - `pause`: a producer sends a message every 5 ms to an idle worker; N
//!   rounds (default 5) of `pause`, 3 s, `resume`, 0.5 s. Per round: how
//!   long after the `pause` call the last message started (the time the
//!   pause took to reach the worker; 0 when nothing started after it), and
//!   how long after the `resume` call the first one started. Last line:
//!   JSON with `pause_ms_max`, `pause_ms_p50`, `resume_ms_max` and
//!   `resume_ms_p50`. The contract is a second for each.
//!
//! - `batch`: a bulk write into Redis (`RPUSH` onto a list of the run's
//!   own, at `--sink URL`, default `redis://127.0.0.1:6379`, through a pool
//!   of 10 connections each used by one write at a time, as a database
//!   pool's are) of N messages
//!   (default 20,000) two ways, through the broker of `--broker`: a batch
//!   actor (`batch(max = 100, wait = "20ms")`, one `RPUSH` of up to 100
//!   values per handler call) and a one-message actor (one `RPUSH` per
//!   message), each with a worker of concurrency `max(--concurrency, 100)`.
//!   Each run checks that the list holds N values. Last line: JSON with
//!   `one_per_s`, `batch_per_s` and `ratio`.
//! - `fairness`: one worker, two queues. A flood of N messages (default
//!   100,000) of 10 ms jobs on one queue, `--concurrency` (default here 16)
//!   slots, default queue settings (weighted order, weight 1 each, no
//!   limit of its own: the flood may take every slot); once it runs, 20
//!   messages are sent to the other queue 25 ms apart, and each one's wait
//!   from its send to its start is taken (and, for comparison, the same on
//!   the idle worker before the flood: `idle_wait_ms_*`). Then a second worker with the
//!   flooded queue limited to a quarter of the slots, and 2,000 more 10 ms
//!   jobs on the other queue, for a second: the most of each queue that
//!   ran at once. Last line: JSON with `other_wait_ms_p50`,
//!   `other_wait_ms_max` (the target: one job's time, 10 ms), `flood_ready`
//!   (the flood left when the last probe started), `limit`,
//!   `flood_max_running` and `other_max_running`.
//!
//! Flags: `--metrics` (feature `prometheus`; throughput scenario): the
//! metrics middleware, a Prometheus recorder installed and served. `--broker URL` (default `memory://`; `memory` is short for it),
//! `--messages N`, `--concurrency C` (64), `--batch B` (messages per
//! `send_many` call; 1 sends them one by one; default 1000).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dramaturg::prelude::*;
use dramaturg::{AppBuilder, BoxError};
use serde::{Deserialize, Serialize};

mod ceiling;
mod cpu;

/// Never returns; killed at its limit.
#[derive(Actor, Serialize, Deserialize)]
#[actor(queue = "bench-isolated", isolated, time_limit = "1s", max_retries = 0)]
struct IsolatedRunaway {}

impl IsolatedRunaway {
    async fn perform(self, _ctx: &Context) -> Result<(), BoxError> {
        loop {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// A no-op in a child process.
#[derive(Actor, Serialize, Deserialize)]
#[actor(queue = "bench-isolated", isolated, blocking)]
struct IsolatedNoop {
    n: u64,
}

impl IsolatedNoop {
    fn perform(self, _ctx: &Context) -> Result<(), BoxError> {
        std::hint::black_box(self.n);
        Ok(())
    }
}

/// A no-op on the blocking thread pool.
#[derive(Actor, Serialize, Deserialize)]
#[actor(queue = "bench-blocking", blocking)]
struct BlockingNoop {
    n: u64,
}

impl BlockingNoop {
    fn perform(self, _ctx: &Context) -> Result<(), BoxError> {
        std::hint::black_box(self.n);
        Ok(())
    }
}

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
    seconds: u64,
    /// `--events`: the abort middleware's store; `None` follows the broker
    /// (the default stack) in the throughput scenario, memory elsewhere.
    events: Option<String>,
    /// `--metrics`: the throughput scenario with the metrics middleware
    /// and a Prometheus recorder installed and served.
    metrics: bool,
    /// `--sink`: the Redis that the batch scenario writes to.
    sink: String,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        scenario: "throughput".into(),
        broker: "memory://".into(),
        messages: None,
        concurrency: 64,
        batch: 1000,
        samples: None,
        seconds: 10,
        events: None,
        metrics: false,
        sink: "redis://127.0.0.1:6379".into(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--scenario" => args.scenario = value()?,
            "--samples" => args.samples = Some(value()?),
            "--events" => args.events = Some(value()?),
            "--metrics" => args.metrics = true,
            "--sink" => args.sink = value()?,
            "--seconds" => args.seconds = value()?.parse().map_err(|e| format!("--seconds: {e}"))?,
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
    // The isolated scenarios' children are this binary again.
    dramaturg::isolation::enter();
    let args = parse_args()?;
    match args.scenario.as_str() {
        "throughput" => throughput(&args).await,
        "ceiling" => ceiling_scenario(&args).await,
        "fail-large-errors" => fail_large_errors(&args).await,
        "latency" => latency(&args).await,
        "idle" => idle(&args).await,
        "abort" => abort_latency(&args).await,
        "isolated-runaway" => isolated_runaway(&args).await,
        "isolated-overhead" => isolated_overhead(&args).await,
        "results" => results(&args).await,
        "rate-limit" => rate_limit(&args).await,
        #[cfg(feature = "prometheus")]
        "metrics" => metrics_cost(&args).await,
        "pause" => pause_lag(&args).await,
        "batch" => bulk_write(&args).await,
        "fairness" => fairness(&args).await,
        other => Err(format!(
            "unknown scenario {other:?}: throughput, ceiling, latency, idle, abort, fail-large-errors, isolated-runaway, isolated-overhead, results, rate-limit, metrics, pause, batch or fairness"
        )
        .into()),
    }
}

async fn throughput(args: &Args) -> Result<(), BoxError> {
    let messages = args.messages.unwrap_or(100_000);
    let broker_name = args.broker.split("://").next().unwrap_or_default().to_owned();
    let server = cpu::server(&args.broker).await?;
    let run = dramaturg_run(args, messages, server).await?;
    let peak = peak_rss_mb();
    println!("broker:      {broker_name}");
    println!("messages:    {messages}");
    println!("concurrency: {}, batch: {}", args.concurrency, args.batch);
    println!("enqueue:     {:>10.0} msgs/s", run.enqueue_per_s);
    println!("process:     {:>10.0} msgs/s", run.process_per_s);
    println!("CPU:         {}", run.cpu.text());
    println!("peak RSS:    {peak:.1} MiB");
    println!(
        "{{\"broker\":\"{broker_name}\",\"messages\":{messages},\"concurrency\":{},\"batch\":{},\"enqueue_per_s\":{:.0},\"process_per_s\":{:.0},{},\"peak_rss_mb\":{peak:.1}}}",
        args.concurrency,
        args.batch,
        run.enqueue_per_s,
        run.process_per_s,
        run.cpu.json("")
    );
    Ok(())
}

/// `messages` no-op messages through dramaturg on `args.broker`: sent in
/// batches of `args.batch`, then processed by a worker of
/// `args.concurrency` with the default stack until the queue is drained;
/// CPU per message measured while processing, of this process and of the
/// server of process `server`.
async fn dramaturg_run(args: &Args, messages: u64, server: Option<cpu::Server>) -> Result<ceiling::Run, BoxError> {
    let broker = dramaturg::connect(&args.broker).await?;
    let builder = dramaturg::app_shared(broker);
    let builder = match &args.events {
        Some(events) => with_events(builder, events).await?,
        None => builder,
    };
    let (builder, _metrics_server) = with_metrics(builder, args.metrics)?;
    let app = builder.actor::<Noop>().build()?;

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

    let meter = cpu::CpuMeter::start(server);
    let started = Instant::now();
    let report = Worker::new(app).concurrency(args.concurrency).run_until_drained(Duration::from_secs(3600)).await?;
    let process_secs = started.elapsed().as_secs_f64();
    let cpu = meter.per_message(messages);
    if report.succeeded != messages {
        return Err(format!("expected {messages} messages processed, got {report:?}").into());
    }
    Ok(ceiling::Run {
        enqueue_per_s: messages as f64 / enqueue_secs,
        process_per_s: messages as f64 / process_secs,
        cpu,
    })
}

/// The bytes of a message of the no-op actor (message 0) as dramaturg
/// sends it, for the ceiling's bodies.
fn noop_message_size() -> Result<usize, BoxError> {
    let app = dramaturg::app(dramaturg::MemoryBroker::new()).actor::<Noop>().build()?;
    let message = app.message(&Noop { n: 0 }, dramaturg::Options::default())?;
    Ok(app.encoder().encode_message(&message)?.len())
}

/// Rounds of the ceiling scenario, interleaved with dramaturg's runs.
const CEILING_ROUNDS: usize = 3;

async fn ceiling_scenario(args: &Args) -> Result<(), BoxError> {
    let messages = args.messages.unwrap_or(100_000);
    let broker_name = args.broker.split("://").next().unwrap_or_default().to_owned();
    let server = cpu::server(&args.broker).await?;
    let size = noop_message_size()?;
    let prefetch = args.concurrency.max(2);
    let mut raw = Vec::new();
    let mut ours = Vec::new();
    for _ in 0..CEILING_ROUNDS {
        raw.push(match broker_name.as_str() {
            "redis" | "rediss" => ceiling::redis(&args.broker, messages, size, prefetch, 2, server).await?,
            "amqp" | "amqps" => {
                let prefetch = u16::try_from(prefetch).unwrap_or(u16::MAX);
                ceiling::amqp(&args.broker, messages, size, prefetch, server).await?
            }
            other => return Err(format!("the ceiling scenario runs on redis:// or amqp://, not {other}").into()),
        });
        ours.push(dramaturg_run(args, messages, server).await?);
    }
    let median_of = |runs: &[ceiling::Run], pick: fn(&ceiling::Run) -> f64| median(runs.iter().map(pick).collect());
    let figures = [
        ("enqueue_per_s", median_of(&raw, |r| r.enqueue_per_s), median_of(&ours, |r| r.enqueue_per_s)),
        ("process_per_s", median_of(&raw, |r| r.process_per_s), median_of(&ours, |r| r.process_per_s)),
        ("worker_cpu_us", median_of(&raw, |r| r.cpu.worker_us), median_of(&ours, |r| r.cpu.worker_us)),
        (
            "server_cpu_us",
            median_of(&raw, |r| r.cpu.server_us.unwrap_or(f64::NAN)),
            median_of(&ours, |r| r.cpu.server_us.unwrap_or(f64::NAN)),
        ),
    ];
    println!(
        "scenario:    ceiling ({broker_name}, {messages} no-op messages of {size} bytes, {CEILING_ROUNDS} rounds each way, medians)"
    );
    println!("{:<15} {:>12} {:>12} {:>8}", "figure", "raw client", "dramaturg", "of raw");
    let mut json = format!(
        "{{\"scenario\":\"ceiling\",\"broker\":\"{broker_name}\",\"messages\":{messages},\"body_bytes\":{size}"
    );
    for (name, raw, ours) in figures {
        println!("{name:<15} {raw:>12.1} {ours:>12.1} {:>7.0}%", 100.0 * ours / raw);
        let number = |v: f64| if v.is_finite() { format!("{v:.2}") } else { "null".to_owned() };
        json.push_str(&format!(",\"raw_{name}\":{},\"dramaturg_{name}\":{}", number(raw), number(ours)));
    }
    let process_pct = 100.0 * figures[1].2 / figures[1].1;
    let enqueue_pct = 100.0 * figures[0].2 / figures[0].1;
    json.push_str(&format!(
        ",\"process_pct_of_ceiling\":{process_pct:.1},\"enqueue_pct_of_ceiling\":{enqueue_pct:.1}}}"
    ));
    println!("{json}");
    Ok(())
}

/// `builder` with the metrics middleware and a Prometheus
/// recorder installed and served, when `on`.
#[cfg(feature = "prometheus")]
fn with_metrics(
    builder: AppBuilder,
    on: bool,
) -> Result<(AppBuilder, Option<dramaturg::metrics::prometheus::MetricsServer>), BoxError> {
    if !on {
        return Ok((builder, None));
    }
    let server = dramaturg::metrics::prometheus::serve("127.0.0.1:0")?;
    let builder = builder.middleware(dramaturg::metrics::Metrics::new());
    Ok((builder, Some(server)))
}

#[cfg(not(feature = "prometheus"))]
fn with_metrics(builder: AppBuilder, on: bool) -> Result<(AppBuilder, Option<()>), BoxError> {
    if on {
        return Err("--metrics needs the `prometheus` feature".into());
    }
    Ok((builder, None))
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
                let ms = dramaturg::time::millis(started.elapsed());
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
        csv.push_str(&format!("{},{final_rss:.2}\n", dramaturg::time::millis(started.elapsed())));
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

fn unix_micros() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
}

static LATENCIES_US: Mutex<Vec<u64>> = Mutex::new(Vec::new());

/// Records how long after its send it started.
#[derive(Actor, Serialize, Deserialize)]
#[actor(queue = "bench-latency")]
struct Stamp {
    sent_us: u64,
}

impl Stamp {
    async fn perform(self, _ctx: &Context) -> Result<(), BoxError> {
        let latency = unix_micros().saturating_sub(self.sent_us);
        LATENCIES_US.lock().map_err(|_| "poisoned")?.push(latency);
        Ok(())
    }
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(index).copied().unwrap_or(0) as f64 / 1000.0
}

async fn latency(args: &Args) -> Result<(), BoxError> {
    let messages = args.messages.unwrap_or(1000);
    let broker = dramaturg::connect(&args.broker).await?;
    let app = dramaturg::app_shared(broker).actor::<Stamp>().build()?;
    let broker_name = args.broker.split("://").next().unwrap_or_default().to_owned();
    let worker = Worker::new(app.clone()).concurrency(args.concurrency);
    let shutdown = worker.shutdown_handle();
    let running = tokio::spawn(worker.run());
    // Let the worker settle into waiting.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    for _ in 0..messages {
        tick.tick().await;
        Stamp { sent_us: unix_micros() }.send(&app).await?;
    }
    app.join(Duration::from_secs(60)).await?;
    shutdown.shutdown();
    running.await??;
    let mut latencies = LATENCIES_US.lock().map_err(|_| "poisoned")?.clone();
    latencies.sort_unstable();
    let (p50, p90, p99) = (percentile(&latencies, 0.5), percentile(&latencies, 0.9), percentile(&latencies, 0.99));
    let max = percentile(&latencies, 1.0);
    println!("scenario:    latency ({broker_name}, {} messages 10 ms apart)", latencies.len());
    println!("enqueue to start: p50 {p50:.3} ms, p90 {p90:.3} ms, p99 {p99:.3} ms, max {max:.3} ms");
    println!(
        "{{\"scenario\":\"latency\",\"broker\":\"{broker_name}\",\"messages\":{},\"latency_ms_p50\":{p50:.3},\"latency_ms_p90\":{p90:.3},\"latency_ms_p99\":{p99:.3},\"latency_ms_max\":{max:.3}}}",
        latencies.len()
    );
    Ok(())
}

static STARTS_US: Mutex<Vec<u64>> = Mutex::new(Vec::new());

#[derive(Actor, Serialize, Deserialize)]
#[actor(queue = "bench-pause")]
struct Tick {}

impl Tick {
    async fn perform(self, _ctx: &Context) -> Result<(), BoxError> {
        STARTS_US.lock().map_err(|_| "poisoned")?.push(unix_micros());
        Ok(())
    }
}

/// The latest start at or after `since` (µs), if any.
fn started_since(since: u64, pick: fn(u64, u64) -> u64) -> Result<Option<u64>, BoxError> {
    let starts = STARTS_US.lock().map_err(|_| "poisoned")?;
    Ok(starts.iter().copied().filter(|&t| t >= since).reduce(pick))
}

async fn pause_lag(args: &Args) -> Result<(), BoxError> {
    let rounds = args.messages.unwrap_or(5).max(1);
    let broker = dramaturg::connect(&args.broker).await?;
    let app = dramaturg::app_shared(broker).actor::<Tick>().build()?;
    let broker_name = args.broker.split("://").next().unwrap_or_default().to_owned();
    let queue = app.queues()[0].clone();
    // What an interrupted run may have left.
    app.resume(&queue).await?;
    app.admin()?.purge(&queue).await?;
    let worker = Worker::new(app.clone()).concurrency(args.concurrency);
    let shutdown = worker.shutdown_handle();
    let running = tokio::spawn(worker.run());
    let producer = tokio::spawn({
        let app = app.clone();
        async move {
            let mut tick = tokio::time::interval(Duration::from_millis(5));
            loop {
                tick.tick().await;
                if let Err(error) = (Tick {}).send(&app).await {
                    eprintln!("send failed: {error}");
                    return;
                }
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (mut pauses, mut resumes) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        let paused_at = unix_micros();
        app.pause(&queue).await?;
        tokio::time::sleep(Duration::from_secs(3)).await;
        let last = started_since(paused_at, u64::max)?.unwrap_or(paused_at);
        pauses.push(last - paused_at);
        let resumed_at = unix_micros();
        app.resume(&queue).await?;
        let deadline = Instant::now() + Duration::from_secs(10);
        let first = loop {
            if let Some(first) = started_since(resumed_at, u64::min)? {
                break first;
            }
            if Instant::now() > deadline {
                return Err("nothing started within 10 s of the resume".into());
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        };
        resumes.push(first - resumed_at);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    producer.abort();
    shutdown.shutdown();
    running.await??;
    app.admin()?.purge(&queue).await?;
    pauses.sort_unstable();
    resumes.sort_unstable();
    let (pause_p50, pause_max) = (percentile(&pauses, 0.5), percentile(&pauses, 1.0));
    let (resume_p50, resume_max) = (percentile(&resumes, 0.5), percentile(&resumes, 1.0));
    println!("scenario:    pause ({broker_name}, {rounds} rounds, a message every 5 ms)");
    println!("pause → last start:  p50 {pause_p50:.1} ms, max {pause_max:.1} ms");
    println!("resume → first start: p50 {resume_p50:.1} ms, max {resume_max:.1} ms");
    println!(
        "{{\"scenario\":\"pause\",\"broker\":\"{broker_name}\",\"rounds\":{rounds},\"pause_ms_p50\":{pause_p50:.1},\"pause_ms_max\":{pause_max:.1},\"resume_ms_p50\":{resume_p50:.1},\"resume_ms_max\":{resume_max:.1}}}"
    );
    Ok(())
}

/// Where the batch scenario writes: a Redis list of the run's own, through
/// a pool of connections each used by one write at a time, as a database
/// pool's are (the redis crate would otherwise pipeline concurrent writes
/// on one connection, which a database connection cannot).
struct Sink {
    pool: Vec<tokio::sync::Mutex<redis::aio::MultiplexedConnection>>,
    next: AtomicU64,
    list: String,
}

/// Connections in the batch scenario's pool (sqlx's default maximum).
const SINK_POOL: usize = 10;

impl Sink {
    async fn rpush<V: redis::ToRedisArgs + Send + Sync>(&self, values: V) -> Result<(), BoxError> {
        let n = self.next.fetch_add(1, Ordering::Relaxed) as usize % self.pool.len();
        let mut conn = self.pool[n].lock().await;
        let _: u64 = redis::cmd("RPUSH").arg(&self.list).arg(values).query_async(&mut *conn).await?;
        Ok(())
    }
}

/// A value written alone: one `RPUSH` per message.
#[derive(Actor, Serialize, Deserialize)]
#[actor(queue = "bench-write-one")]
struct WriteOne {
    n: u64,
}

impl WriteOne {
    async fn perform(self, ctx: &Context) -> Result<(), BoxError> {
        ctx.state::<Sink>()?.rpush(self.n).await
    }
}

/// A value written in bulk: one `RPUSH` per batch of up to 100.
#[derive(Actor, Serialize, Deserialize)]
#[actor(queue = "bench-write-batch", batch(max = 100, wait = "20ms"))]
struct WriteBatch {
    n: u64,
}

impl WriteBatch {
    async fn perform(batch: Batch<Self>) -> Result<(), BoxError> {
        let values: Vec<u64> = batch.args().iter().map(|w| w.n).collect();
        batch.app().state::<Sink>()?.rpush(values).await
    }
}

/// Sends `messages` values as messages made by `make`, runs a worker until they are
/// written, checks the list and empties it; the rate in messages per second.
async fn write_rate<A: Actor>(
    app: &App,
    messages: u64,
    concurrency: usize,
    make: fn(u64) -> A,
) -> Result<f64, BoxError> {
    let sink = app.state::<Sink>()?;
    let mut conn = sink.pool[0].lock().await.clone();
    for chunk in (0..messages).collect::<Vec<_>>().chunks(1000) {
        let values: Vec<A> = chunk.iter().copied().map(make).collect();
        app.send_many(&values).await?;
    }
    let started = Instant::now();
    let report = Worker::new(app.clone()).concurrency(concurrency).run_until_drained(Duration::from_secs(3600)).await?;
    let rate = messages as f64 / started.elapsed().as_secs_f64();
    let written: u64 = redis::cmd("LLEN").arg(&sink.list).query_async(&mut conn).await?;
    let _: u64 = redis::cmd("DEL").arg(&sink.list).query_async(&mut conn).await?;
    if report.succeeded != messages || written != messages {
        return Err(format!("expected {messages} values written, got {written} ({report:?})").into());
    }
    Ok(rate)
}

async fn bulk_write(args: &Args) -> Result<(), BoxError> {
    let messages = args.messages.unwrap_or(20_000);
    let concurrency = args.concurrency.max(100);
    let client = redis::Client::open(args.sink.as_str())?;
    let mut pool = Vec::with_capacity(SINK_POOL);
    for _ in 0..SINK_POOL {
        pool.push(tokio::sync::Mutex::new(client.get_multiplexed_async_connection().await?));
    }
    let sink = Sink { pool, next: AtomicU64::new(0), list: format!("bench-batch-{}", dramaturg::MessageId::new()) };
    let broker = dramaturg::connect(&args.broker).await?;
    let app = dramaturg::app_shared(broker).state(sink).actor::<WriteOne>().actor::<WriteBatch>().build()?;
    let broker_name = args.broker.split("://").next().unwrap_or_default().to_owned();
    for queue in app.queues() {
        app.admin()?.purge(queue).await?;
    }
    let one_per_s = write_rate(&app, messages, concurrency, |n| WriteOne { n }).await?;
    let batch_per_s = write_rate(&app, messages, concurrency, |n| WriteBatch { n }).await?;
    let ratio = batch_per_s / one_per_s;
    println!(
        "scenario:    batch ({broker_name} broker, {messages} values into a Redis list, concurrency {concurrency})"
    );
    println!("one RPUSH per message:     {one_per_s:>10.0} msgs/s");
    println!("one RPUSH per batch (100): {batch_per_s:>10.0} msgs/s ({ratio:.1}x)");
    println!(
        "{{\"scenario\":\"batch\",\"broker\":\"{broker_name}\",\"messages\":{messages},\"concurrency\":{concurrency},\"one_per_s\":{one_per_s:.0},\"batch_per_s\":{batch_per_s:.0},\"ratio\":{ratio:.2}}}"
    );
    Ok(())
}

/// Total calls of every command, from `INFO commandstats`.
async fn redis_calls(conn: &mut redis::aio::MultiplexedConnection) -> Result<u64, BoxError> {
    let info: String = redis::cmd("INFO").arg("commandstats").query_async(conn).await?;
    Ok(info.lines().filter_map(|line| line.split("calls=").nth(1)?.split(',').next()?.parse::<u64>().ok()).sum())
}

async fn idle(args: &Args) -> Result<(), BoxError> {
    if !args.broker.starts_with("redis") {
        return Err("the idle scenario reads Redis's INFO commandstats: use --broker redis://…".into());
    }
    let broker = dramaturg::connect(&args.broker).await?;
    let app = with_events(dramaturg::app_shared(broker), args.events.as_deref().unwrap_or("memory"))
        .await?
        .actor::<Noop>()
        .build()?;
    let worker = Worker::new(app.clone()).concurrency(args.concurrency);
    let shutdown = worker.shutdown_handle();
    let running = tokio::spawn(worker.run());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let client = redis::Client::open(args.broker.as_str())?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let before = redis_calls(&mut conn).await?;
    tokio::time::sleep(Duration::from_secs(args.seconds)).await;
    // The second INFO is counted in its own reply; take it off.
    let after = redis_calls(&mut conn).await? - 1;
    shutdown.shutdown();
    running.await??;
    let per_s = (after - before) as f64 / args.seconds as f64;
    let rss = rss_mb();
    println!("scenario:    idle worker for {} s (every client of this Redis counted)", args.seconds);
    println!("commands:    {} ({per_s:.2}/s); RSS {rss:.1} MiB", after - before);
    println!(
        "{{\"scenario\":\"idle\",\"seconds\":{},\"idle_commands_per_s\":{per_s:.2},\"rss_mb\":{rss:.1}}}",
        args.seconds
    );
    Ok(())
}

/// The builder with the abort middleware's store named by `events`.
async fn with_events(builder: AppBuilder, events: &str) -> Result<AppBuilder, BoxError> {
    use dramaturg::abort::Abortable;
    Ok(match events {
        "memory" => builder.replace("abort", Abortable::new(dramaturg::MemoryStore::new())),
        #[cfg(feature = "redis")]
        url if url.starts_with("redis") => {
            builder.replace("abort", Abortable::new(dramaturg::redis::RedisStore::connect(url).await?))
        }
        other => return Err(format!("unknown --events {other:?}: memory or redis://…").into()),
    })
}

/// When each looping actor was interrupted, by its number.
static INTERRUPTED: Mutex<Vec<(u64, Instant)>> = Mutex::new(Vec::new());
static LOOPING: AtomicU64 = AtomicU64::new(0);

struct Interrupted(u64);

impl Drop for Interrupted {
    fn drop(&mut self) {
        if let Ok(mut interrupted) = INTERRUPTED.lock() {
            interrupted.push((self.0, Instant::now()));
        }
    }
}

/// Loops on short sleeps until aborted.
#[derive(Actor, Serialize, Deserialize)]
#[actor(queue = "bench-abort")]
struct Spin {
    n: u64,
}

impl Spin {
    async fn perform(self, _ctx: &Context) -> Result<(), BoxError> {
        let _probe = Interrupted(self.n);
        LOOPING.fetch_add(1, Ordering::SeqCst);
        for _ in 0..60_000 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        Ok(())
    }
}

async fn abort_latency(args: &Args) -> Result<(), BoxError> {
    use dramaturg::abort::{abort, AbortOptions};
    let count = args.messages.unwrap_or(20);
    let broker = dramaturg::connect(&args.broker).await?;
    let app = with_events(dramaturg::app_shared(broker), args.events.as_deref().unwrap_or("memory"))
        .await?
        .actor::<Spin>()
        .build()?;
    let worker = Worker::new(app.clone()).concurrency(count as usize);
    let shutdown = worker.shutdown_handle();
    let running = tokio::spawn(worker.run());
    let mut ids = Vec::new();
    for n in 0..count {
        ids.push((n, Spin { n }.send(&app).await?));
    }
    while LOOPING.load(Ordering::SeqCst) < count {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut latencies = Vec::new();
    for (n, id) in ids {
        let asked = Instant::now();
        abort(&app, id, AbortOptions::abort()).await?;
        let interrupted = loop {
            let found = INTERRUPTED.lock().map_err(|_| "poisoned")?.iter().find(|(m, _)| *m == n).map(|(_, at)| *at);
            if let Some(at) = found {
                break at;
            }
            tokio::time::sleep(Duration::from_micros(200)).await;
        };
        latencies.push((interrupted - asked).as_micros() as u64);
    }
    app.join(Duration::from_secs(30)).await?;
    shutdown.shutdown();
    let report = running.await??;
    latencies.sort_unstable();
    let (p50, p90) = (percentile(&latencies, 0.5), percentile(&latencies, 0.9));
    println!(
        "scenario:    abort ({count} running actors, events {})",
        args.events.as_deref().unwrap_or("memory").split("://").next().unwrap_or_default()
    );
    println!("abort to interruption: p50 {p50:.3} ms, p90 {p90:.3} ms ({} aborted)", report.aborted);
    println!("{{\"scenario\":\"abort\",\"messages\":{count},\"abort_latency_ms_p50\":{p50:.3},\"abort_latency_ms_p90\":{p90:.3}}}");
    Ok(())
}

/// The concurrency flag, unless it was left at its default of 64.
fn concurrency_or(args: &Args, default: usize) -> usize {
    if args.concurrency == 64 {
        default
    } else {
        args.concurrency
    }
}

async fn isolated_runaway(args: &Args) -> Result<(), BoxError> {
    let messages = args.messages.unwrap_or(1000);
    let concurrency = concurrency_or(args, 50);
    let broker = MemoryBroker::new();
    let app = dramaturg::app(broker.clone()).actor::<IsolatedRunaway>().build()?;
    for _ in 0..messages {
        IsolatedRunaway {}.send(&app).await?;
    }
    let baseline = rss_mb();
    let worker = Worker::new(app.clone()).concurrency(concurrency);
    let shutdown = worker.shutdown_handle();
    let started = Instant::now();
    let running = tokio::spawn(worker.run());
    let mut after_100 = 0.0;
    let mut next = 100;
    let mut samples = Vec::new();
    let mut deleted = 0;
    loop {
        let dead = deleted + dramaturg::QueueAdmin::stats(&broker, "bench-isolated").await?.dead;
        if dead >= next.min(messages) {
            // The in-memory broker keeps dead letters in the worker's memory:
            // drop them, so that RSS shows the worker's own.
            deleted += dramaturg::DeadLetters::delete(&broker, "bench-isolated", dramaturg::Replay::All).await?;
            let rss = rss_mb();
            samples.push((dead, rss));
            println!("{dead:>5} killed: worker RSS {rss:.1} MiB");
            if next == 100 {
                after_100 = rss;
            }
            next += 100;
        }
        if dead >= messages {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    shutdown.shutdown();
    let report = running.await??;
    let last = rss_mb();
    let peak = peak_rss_mb();
    println!(
        "{{\"messages\":{messages},\"concurrency\":{concurrency},\"killed\":{},\"elapsed_s\":{elapsed:.1},\"baseline_rss_mb\":{baseline:.1},\"rss_mb_after_100\":{after_100:.1},\"rss_mb_final\":{last:.1},\"peak_rss_mb\":{peak:.1}}}",
        report.failed
    );
    Ok(())
}

async fn isolated_overhead(args: &Args) -> Result<(), BoxError> {
    let messages = args.messages.unwrap_or(2000);
    let concurrency = concurrency_or(args, 8);
    let mut rates = Vec::new();
    for isolated in [true, false] {
        let broker = MemoryBroker::new();
        let app = dramaturg::app(broker).actor::<IsolatedNoop>().actor::<BlockingNoop>().build()?;
        if isolated {
            let batch: Vec<IsolatedNoop> = (0..messages).map(|n| IsolatedNoop { n }).collect();
            app.send_many(&batch).await?;
        } else {
            let batch: Vec<BlockingNoop> = (0..messages).map(|n| BlockingNoop { n }).collect();
            app.send_many(&batch).await?;
        }
        let started = Instant::now();
        let report = Worker::new(app).concurrency(concurrency).run_until_drained(Duration::from_secs(3600)).await?;
        let secs = started.elapsed().as_secs_f64();
        if report.succeeded != messages {
            return Err(format!("expected {messages} successes, got {report:?}").into());
        }
        rates.push(messages as f64 / secs);
    }
    let overhead_us = (1.0 / rates[0] - 1.0 / rates[1]) * 1e6 * concurrency as f64;
    println!("isolated: {:>8.0} msgs/s; blocking in-process: {:>8.0} msgs/s", rates[0], rates[1]);
    println!(
        "{{\"messages\":{messages},\"concurrency\":{concurrency},\"isolated_per_s\":{:.0},\"blocking_per_s\":{:.0},\"isolation_overhead_us\":{overhead_us:.0}}}",
        rates[0], rates[1]
    );
    Ok(())
}

/// Returns when it finished (microseconds since the Unix epoch); keeps its
/// result.
#[derive(Actor, Serialize, Deserialize)]
#[actor(queue = "bench-results", output = u64, store_results)]
struct Finish {
    n: u64,
}

impl Finish {
    async fn perform(self, _ctx: &Context) -> Result<u64, BoxError> {
        Ok(unix_micros())
    }
}

/// A no-op that keeps its results.
#[derive(Actor, Serialize, Deserialize)]
#[actor(queue = "bench-results-kept", output = u64, store_results)]
struct Kept {
    n: u64,
}

impl Kept {
    async fn perform(self, _ctx: &Context) -> Result<u64, BoxError> {
        Ok(self.n)
    }
}

/// A no-op whose result is kept when the message asks.
#[derive(Actor, Serialize, Deserialize)]
#[actor(queue = "bench-results-plain", output = u64)]
struct Plain {
    n: u64,
}

impl Plain {
    async fn perform(self, _ctx: &Context) -> Result<u64, BoxError> {
        Ok(self.n)
    }
}

/// How the messages of a results throughput run keep their results.
#[derive(Clone, Copy)]
enum Keeping {
    /// `Plain` messages: not kept.
    Not,
    /// `Kept` messages: by the actor's `store_results`.
    ByActor,
    /// `Plain` messages with `store_results` set per message.
    PerMessage,
}

/// Processing rate of `messages` no-op messages that keep their results
/// as `keeping` says.
async fn kept_rate(
    app: &App,
    messages: u64,
    keeping: Keeping,
    concurrency: usize,
    server: Option<cpu::Server>,
) -> Result<(f64, cpu::CpuPerMessage), BoxError> {
    let per_message = SendOptions::default().with_options(|o| o.with_option(dramaturg::results::STORE_RESULTS, true));
    for n in 0..messages {
        match keeping {
            Keeping::Not => drop(Plain { n }.send(app).await?),
            Keeping::ByActor => drop(Kept { n }.send(app).await?),
            Keeping::PerMessage => drop(Plain { n }.send_with(app, per_message.clone()).await?),
        }
    }
    let (started, meter) = (Instant::now(), cpu::CpuMeter::start(server));
    let report = Worker::new(app.clone()).concurrency(concurrency).run_until_drained(Duration::from_secs(3600)).await?;
    let rate = messages as f64 / started.elapsed().as_secs_f64();
    if report.succeeded != messages {
        return Err(format!("expected {messages} processed, got {report:?}").into());
    }
    Ok((rate, meter.per_message(messages)))
}

async fn results(args: &Args) -> Result<(), BoxError> {
    use dramaturg::results::SentExt;
    let messages = args.messages.unwrap_or(1000);
    let broker = dramaturg::connect(&args.broker).await?;
    let results = dramaturg::results::Results::for_broker(&*broker);
    let app = dramaturg::app_shared(broker)
        .insert_before(dramaturg::middleware::names::CALLBACKS, results)
        .actor::<Finish>()
        .actor::<Kept>()
        .actor::<Plain>()
        .build()?;
    let broker_name = args.broker.split("://").next().unwrap_or_default().to_owned();
    let worker = Worker::new(app.clone()).queues(["bench-results"]).concurrency(args.concurrency);
    let shutdown = worker.shutdown_handle();
    let running = tokio::spawn(worker.run());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut wakes = Vec::with_capacity(messages as usize);
    for n in 0..messages {
        let sent = Finish { n }.send(&app).await?;
        let finished_us = sent.result(&app).wait(Duration::from_secs(30)).await?;
        wakes.push(unix_micros().saturating_sub(finished_us));
    }
    shutdown.shutdown();
    running.await??;
    wakes.sort_unstable();
    let (p50, p99) = (percentile(&wakes, 0.5), percentile(&wakes, 0.99));

    let throughput = (messages * 10).max(2000);
    let server = cpu::server(&args.broker).await?;
    let (mut with, mut without, mut per_message) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..3 {
        without.push(kept_rate(&app, throughput, Keeping::Not, args.concurrency, server).await?);
        with.push(kept_rate(&app, throughput, Keeping::ByActor, args.concurrency, server).await?);
        per_message.push(kept_rate(&app, throughput, Keeping::PerMessage, args.concurrency, server).await?);
    }
    let rate = |runs: &[(f64, cpu::CpuPerMessage)]| median(runs.iter().map(|(rate, _)| *rate).collect());
    // CPU of the worker and the server together: what keeping results
    // costs the machine, steadier than the rates on a busy one.
    let cpu_us = |runs: &[(f64, cpu::CpuPerMessage)]| {
        median(runs.iter().map(|(_, cpu)| cpu.worker_us + cpu.server_us.unwrap_or(0.0)).collect())
    };
    let (with_rate, without_rate, per_message_rate) = (rate(&with), rate(&without), rate(&per_message));
    let cost = (1.0 - with_rate / without_rate) * 100.0;
    let per_message_cost = (1.0 - per_message_rate / without_rate) * 100.0;
    let (with_cpu, without_cpu) = (cpu_us(&with), cpu_us(&without));
    let cpu_cost = (with_cpu / without_cpu - 1.0) * 100.0;
    println!("scenario:    results ({broker_name}, {messages} waits; {throughput} messages x3 each way)");
    println!("wake-up after the actor's end: p50 {p50:.3} ms, p99 {p99:.3} ms");
    println!("processing: {with_rate:.0} msgs/s keeping results, {without_rate:.0} without ({cost:.1}% cost)");
    println!(
        "            {per_message_rate:.0} msgs/s keeping them by a per-message option ({per_message_cost:.1}% cost)"
    );
    println!("CPU (worker and server): {with_cpu:.1} µs per message keeping results, {without_cpu:.1} without ({cpu_cost:.1}% more)");
    for (name, runs) in [("keeping results", &with), ("without", &without)] {
        let parts: Vec<String> = runs.iter().map(|(_, cpu)| cpu.text()).collect();
        println!("  {name}: {}", parts.join("; "));
    }
    println!(
        "{{\"scenario\":\"results\",\"broker\":\"{broker_name}\",\"messages\":{messages},\"wake_ms_p50\":{p50:.3},\"wake_ms_p99\":{p99:.3},\"with_results_per_s\":{with_rate:.0},\"without_results_per_s\":{without_rate:.0},\"results_cost_pct\":{cost:.1},\"per_message_per_s\":{per_message_rate:.0},\"per_message_cost_pct\":{per_message_cost:.1},\"with_results_cpu_us\":{with_cpu:.2},\"without_results_cpu_us\":{without_cpu:.2},\"results_cpu_cost_pct\":{cpu_cost:.1}}}"
    );
    Ok(())
}

/// The median of `values` (the upper one of an even count).
fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Processing rate of `messages` `Noop` messages sent in batches of `batch`
/// and run by a worker of `app`, and the CPU time per message, in
/// microseconds, that the run took.
#[cfg(feature = "prometheus")]
async fn noop_rate(app: &App, messages: u64, args: &Args) -> Result<(f64, f64), BoxError> {
    let batch: Vec<Noop> = (0..messages).map(|n| Noop { n }).collect();
    for chunk in batch.chunks(args.batch) {
        app.send_many(chunk).await?;
    }
    let (started, meter) = (Instant::now(), cpu::CpuMeter::start(None));
    let report =
        Worker::new(app.clone()).concurrency(args.concurrency).run_until_drained(Duration::from_secs(3600)).await?;
    let cpu_us = meter.per_message(messages).worker_us;
    if report.succeeded != messages {
        return Err(format!("expected {messages} processed, got {report:?}").into());
    }
    Ok((messages as f64 / started.elapsed().as_secs_f64(), cpu_us))
}

/// Throughput and CPU time per message of the default stack with and
/// without the metrics middleware (a Prometheus recorder installed, its
/// endpoint served), interleaved.
#[cfg(feature = "prometheus")]
async fn metrics_cost(args: &Args) -> Result<(), BoxError> {
    let messages = args.messages.unwrap_or(100_000);
    let rounds = 7;
    let server = dramaturg::metrics::prometheus::serve("127.0.0.1:0")?;
    let broker = dramaturg::connect(&args.broker).await?;
    let plain = dramaturg::app_shared(Arc::clone(&broker)).actor::<Noop>().build()?;
    let measured =
        dramaturg::app_shared(broker).middleware(dramaturg::metrics::Metrics::new()).actor::<Noop>().build()?;
    let broker_name = args.broker.split("://").next().unwrap_or_default().to_owned();
    let (mut with, mut without, mut cpu_with, mut cpu_without) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        let (rate, cpu) = noop_rate(&plain, messages, args).await?;
        without.push(rate);
        cpu_without.push(cpu);
        let (rate, cpu) = noop_rate(&measured, messages, args).await?;
        with.push(rate);
        cpu_with.push(cpu);
    }
    // The metrics saw every message of the measured runs.
    let scraped = server.handle().render();
    let received = format!("dramaturg_messages_received_total{{actor=\"noop\",queue=\"bench\"}} {}", messages * rounds);
    if !scraped.contains(&received) {
        return Err(format!("expected {received:?} in the scrape:\n{scraped}").into());
    }
    let (with, without) = (median(with), median(without));
    let (cpu_with, cpu_without) = (median(cpu_with), median(cpu_without));
    let cost = (1.0 - with / without) * 100.0;
    let cpu_cost = (cpu_with / cpu_without - 1.0) * 100.0;
    println!("scenario:    metrics ({broker_name}, {messages} messages x{rounds} each way, interleaved)");
    println!("processing: {with:.0} msgs/s with metrics, {without:.0} without ({cost:.1}% cost)");
    println!("CPU time:   {cpu_with:.3} µs/msg with metrics, {cpu_without:.3} without ({cpu_cost:.1}% cost)");
    println!(
        "{{\"scenario\":\"metrics\",\"broker\":\"{broker_name}\",\"messages\":{messages},\"with_metrics_per_s\":{with:.0},\"without_metrics_per_s\":{without:.0},\"metrics_cost_pct\":{cost:.1},\"cpu_us_with\":{cpu_with:.3},\"cpu_us_without\":{cpu_without:.3},\"metrics_cpu_cost_pct\":{cpu_cost:.1}}}"
    );
    Ok(())
}

/// Script calls (`EVALSHA` and `EVAL`) so far, from `INFO commandstats`.
#[cfg(feature = "rate-limits")]
async fn redis_script_calls(conn: &mut redis::aio::MultiplexedConnection) -> Result<u64, BoxError> {
    let info: String = redis::cmd("INFO").arg("commandstats").query_async(conn).await?;
    Ok(info
        .lines()
        .filter(|line| line.starts_with("cmdstat_evalsha:") || line.starts_with("cmdstat_eval:"))
        .filter_map(|line| line.split("calls=").nth(1)?.split(',').next()?.parse::<u64>().ok())
        .sum())
}

/// Times `n` acquires of `limiter`, one at a time; each permit is released
/// before the next acquire (untimed). Sorted, in microseconds.
#[cfg(feature = "rate-limits")]
async fn time_acquires(limiter: &dramaturg::rate_limits::Limiter, n: u64) -> Result<Vec<u64>, BoxError> {
    let mut times = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let started = Instant::now();
        let permit = limiter.try_acquire("bench").await?;
        times.push(started.elapsed().as_micros() as u64);
        permit.release().await?;
    }
    times.sort_unstable();
    Ok(times)
}

#[cfg(feature = "rate-limits")]
async fn rate_limit(args: &Args) -> Result<(), BoxError> {
    use dramaturg::rate_limits::{Limiter, Rate};
    let n = args.messages.unwrap_or(2000);
    let broker = dramaturg::connect(&args.broker).await?;
    let store = broker.store().ok_or("this broker has no store")?;
    let name = format!("bench-{}", dramaturg::MessageId::new());
    let everyone = Rate::new(n * 2, Duration::from_secs(3600));
    let concurrency = Limiter::concurrency(store.clone(), format!("{name}-concurrency"), 1);
    let window = Limiter::window(store.clone(), format!("{name}-window"), everyone);
    let bucket = Limiter::bucket(store, format!("{name}-bucket"), everyone, n * 2);
    let mut conn = match args.broker.starts_with("redis") {
        true => Some(redis::Client::open(args.broker.as_str())?.get_multiplexed_async_connection().await?),
        false => None,
    };
    let concurrency = time_acquires(&concurrency, n).await?;
    // In ten batches: other clients of the server add to its counts, so
    // the least batch's count is the one closest to this bench's own.
    let (mut window_times, mut round_trips) = (Vec::with_capacity(n as usize), f64::INFINITY);
    for _ in 0..10 {
        let before = match conn.as_mut() {
            Some(conn) => redis_script_calls(conn).await?,
            None => 0,
        };
        window_times.extend(time_acquires(&window, n / 10).await?);
        if let Some(conn) = conn.as_mut() {
            round_trips = round_trips.min((redis_script_calls(conn).await? - before) as f64 / (n / 10) as f64);
        }
    }
    let round_trips = if round_trips.is_finite() { round_trips } else { 0.0 };
    window_times.sort_unstable();
    let window = window_times;
    let bucket = time_acquires(&bucket, n).await?;
    let broker_name = args.broker.split("://").next().unwrap_or_default().to_owned();
    let us = |times: &[u64], p: f64| percentile(times, p) * 1000.0;
    println!("scenario:    rate-limit ({broker_name}, {n} acquires each, one at a time)");
    for (kind, times) in [("concurrency", &concurrency), ("window", &window), ("bucket", &bucket)] {
        println!("{kind:<12} p50 {:.0} µs, p99 {:.0} µs per acquire", us(times, 0.5), us(times, 0.99));
    }
    println!("round trips: {round_trips:.2} script calls per window acquire");
    println!(
        "{{\"scenario\":\"rate-limit\",\"broker\":\"{broker_name}\",\"acquires\":{n},\"concurrency_us_p50\":{:.0},\"concurrency_us_p99\":{:.0},\"window_us_p50\":{:.0},\"window_us_p99\":{:.0},\"bucket_us_p50\":{:.0},\"bucket_us_p99\":{:.0},\"round_trips_per_acquire\":{round_trips:.2}}}",
        us(&concurrency, 0.5),
        us(&concurrency, 0.99),
        us(&window, 0.5),
        us(&window, 0.99),
        us(&bucket, 0.5),
        us(&bucket, 0.99),
    );
    Ok(())
}

#[cfg(not(feature = "rate-limits"))]
async fn rate_limit(_args: &Args) -> Result<(), BoxError> {
    Err("the rate-limit scenario needs the rate-limits feature (--features rate-limits)".into())
}

/// Messages of each fairness queue running now, and the most at once.
static FAIR_RUNNING: [AtomicU64; 2] = [AtomicU64::new(0), AtomicU64::new(0)];
static FAIR_MAX: [AtomicU64; 2] = [AtomicU64::new(0), AtomicU64::new(0)];
/// Each other-queue message's wait from its send to its start, in µs.
static FAIR_WAITS_US: Mutex<Vec<u64>> = Mutex::new(Vec::new());
/// How long a fairness job takes: one slot's worth of time.
const FAIR_JOB_MS: u64 = 10;

/// Counts itself as running on queue number `lane` for `millis`.
async fn fair_job(lane: usize, millis: u64) {
    let now = FAIR_RUNNING[lane].fetch_add(1, Ordering::SeqCst) + 1;
    FAIR_MAX[lane].fetch_max(now, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(millis)).await;
    FAIR_RUNNING[lane].fetch_sub(1, Ordering::SeqCst);
}

/// A job of the flooded queue.
#[derive(Actor, Serialize, Deserialize)]
#[actor(queue = "bench-flood")]
struct FloodJob {
    millis: u64,
}

impl FloodJob {
    async fn perform(self, _ctx: &Context) -> Result<(), BoxError> {
        fair_job(0, self.millis).await;
        Ok(())
    }
}

/// A job of the other queue; records its wait.
#[derive(Actor, Serialize, Deserialize)]
#[actor(queue = "bench-other")]
struct OtherJob {
    sent_us: u64,
    millis: u64,
}

impl OtherJob {
    async fn perform(self, _ctx: &Context) -> Result<(), BoxError> {
        FAIR_WAITS_US.lock().map_err(|_| "poisoned")?.push(unix_micros().saturating_sub(self.sent_us));
        fair_job(1, self.millis).await;
        Ok(())
    }
}

/// Sends `count` messages to the other queue 25 ms apart; returns their
/// waits from send to start, in µs, sorted.
async fn fair_probes(app: &App, count: usize) -> Result<Vec<u64>, BoxError> {
    FAIR_WAITS_US.lock().map_err(|_| "poisoned")?.clear();
    for _ in 0..count {
        OtherJob { sent_us: unix_micros(), millis: 0 }.send(app).await?;
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut waits = FAIR_WAITS_US.lock().map_err(|_| "poisoned")?.clone();
        if waits.len() >= count {
            waits.sort_unstable();
            return Ok(waits);
        }
        if Instant::now() > deadline {
            return Err("the other queue's messages did not start within 30 s".into());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

async fn fairness(args: &Args) -> Result<(), BoxError> {
    const PROBES: usize = 20;
    let messages = args.messages.unwrap_or(100_000);
    let concurrency = concurrency_or(args, 16);
    let broker = dramaturg::connect(&args.broker).await?;
    let app = dramaturg::app_shared(broker).actor::<FloodJob>().actor::<OtherJob>().build()?;
    let broker_name = args.broker.split("://").next().unwrap_or_default().to_owned();
    let (flood, other) = (app.queues()[0].clone(), app.queues()[1].clone());
    let purge = || async {
        for queue in [&flood, &other] {
            app.admin()?.purge(queue).await?;
        }
        Ok::<(), BoxError>(())
    };
    // What an interrupted run may have left.
    purge().await?;

    // Default settings: the flood may take every slot.
    let worker = Worker::new(app.clone()).concurrency(concurrency);
    let shutdown = worker.shutdown_handle();
    let running = tokio::spawn(worker.run());
    tokio::time::sleep(Duration::from_millis(500)).await;
    // The other queue's wait on an idle worker first: what a wait is at best.
    let idle = fair_probes(&app, PROBES).await?;
    let mut sent = 0;
    while sent < messages {
        let batch: Vec<FloodJob> =
            (sent..(sent + 1000).min(messages)).map(|_| FloodJob { millis: FAIR_JOB_MS }).collect();
        sent += batch.len() as u64;
        app.send_many(&batch).await?;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let waits = fair_probes(&app, PROBES).await?;
    let flood_ready = app.stats(&flood).await?.ready;
    shutdown.shutdown();
    running.await??;
    if flood_ready == 0 {
        return Err("the flood was drained before the last probe started: use more --messages".into());
    }
    let (wait_p50, wait_max) = (percentile(&waits, 0.5), percentile(&waits, 1.0));
    let (idle_p50, idle_max) = (percentile(&idle, 0.5), percentile(&idle, 1.0));

    // The flooded queue limited to a quarter of the slots, the other busy too.
    let limit = (concurrency / 4).max(1);
    for counter in FAIR_RUNNING.iter().chain(&FAIR_MAX) {
        counter.store(0, Ordering::SeqCst);
    }
    let busy: Vec<OtherJob> = (0..2000).map(|_| OtherJob { sent_us: unix_micros(), millis: FAIR_JOB_MS }).collect();
    app.send_many(&busy).await?;
    let worker = Worker::new(app.clone())
        .concurrency(concurrency)
        .queue(flood.clone(), dramaturg::QueueOptions::new().concurrency(limit));
    let shutdown = worker.shutdown_handle();
    let running = tokio::spawn(worker.run());
    tokio::time::sleep(Duration::from_secs(1)).await;
    shutdown.shutdown();
    running.await??;
    purge().await?;
    let (flood_max, other_max) = (FAIR_MAX[0].load(Ordering::SeqCst), FAIR_MAX[1].load(Ordering::SeqCst));
    if flood_max > limit as u64 {
        return Err(format!("the flooded queue ran {flood_max} at once, over its limit of {limit}").into());
    }

    println!("scenario:    fairness ({broker_name}, a flood of {messages} {FAIR_JOB_MS} ms jobs, {concurrency} slots)");
    println!(
        "other queue: send to start p50 {wait_p50:.1} ms, max {wait_max:.1} ms ({PROBES} messages; one job is {FAIR_JOB_MS} ms); {flood_ready} of the flood still ready"
    );
    println!("on the idle worker before the flood: p50 {idle_p50:.1} ms, max {idle_max:.1} ms");
    println!("limit {limit} on the flood: at most {flood_max} of it and {other_max} of the other queue ran at once");
    println!(
        "{{\"scenario\":\"fairness\",\"broker\":\"{broker_name}\",\"messages\":{messages},\"concurrency\":{concurrency},\"job_ms\":{FAIR_JOB_MS},\"other_wait_ms_p50\":{wait_p50:.1},\"other_wait_ms_max\":{wait_max:.1},\"idle_wait_ms_p50\":{idle_p50:.1},\"idle_wait_ms_max\":{idle_max:.1},\"flood_ready\":{flood_ready},\"limit\":{limit},\"flood_max_running\":{flood_max},\"other_max_running\":{other_max}}}"
    );
    Ok(())
}
