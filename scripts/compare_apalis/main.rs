//! apalis's side of scripts/compare: the demo example's actor (record each
//! finished message with its timings) on apalis-redis. Written into a
//! throwaway Cargo project by scripts/compare and built there.
//!
//!   apalis-compare produce --count N [--interval-ms MS] [--work-ms MS] [--config defaults|best]
//!   apalis-compare work --record DIR [--config defaults|best] [--concurrency N] [--queue step|fail]
//!   apalis-compare fail --count N     (the memory scenario's messages: 20 retries, 10 MB errors)
//!   apalis-compare purge
//!
//! The broker URL is COMPARE_BROKER. produce prints {"seconds": …} last.
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use apalis::prelude::*;
use apalis_redis::{Config, RedisStorage};
use serde::{Deserialize, Serialize};

const QUEUE: &str = "apalis-compare";
const FAIL_QUEUE: &str = "apalis-compare-fail";

#[derive(Debug, Serialize, Deserialize)]
struct Step {
    seq: u64,
    sent_us: u64,
    work_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct FailLarge {
    seq: u64,
}

struct Record(Mutex<File>);

impl Record {
    fn line(&self, line: String) -> Result<(), BoxDynError> {
        let mut file = self.0.lock().map_err(|_| "record lock poisoned")?;
        file.write_all(line.as_bytes())?;
        Ok(())
    }
}

fn now_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or_default()
}

async fn step(job: Step, record: Data<Arc<Record>>) -> Result<(), BoxDynError> {
    let started = now_us();
    if job.work_ms > 0 {
        tokio::time::sleep(Duration::from_millis(job.work_ms)).await;
    }
    record.line(format!("{} {started} {} {}\n", job.seq, now_us(), job.sent_us))
}

#[derive(Debug)]
struct LargeError(Vec<u8>);

impl std::fmt::Display for LargeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "failed with {} bytes of context", self.0.len())
    }
}

impl std::error::Error for LargeError {}

async fn fail_large(_job: FailLarge, record: Data<Arc<Record>>) -> Result<(), BoxDynError> {
    record.line(format!("attempt {}\n", now_us()))?;
    Err(Box::new(LargeError(vec![0xa5; 10 * 1024 * 1024])))
}

struct Args {
    command: String,
    count: u64,
    interval_ms: u64,
    work_ms: u64,
    record: Option<String>,
    config: String,
    concurrency: Option<usize>,
    failing: bool,
}

fn args() -> Result<Args, BoxDynError> {
    let mut it = std::env::args().skip(1);
    let mut args = Args {
        command: it.next().ok_or("a command: produce, work, fail or purge")?,
        count: 0,
        interval_ms: 0,
        work_ms: 0,
        record: None,
        config: "defaults".into(),
        concurrency: None,
        failing: false,
    };
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--count" => args.count = value.parse()?,
            "--interval-ms" => args.interval_ms = value.parse()?,
            "--work-ms" => args.work_ms = value.parse()?,
            "--record" => args.record = Some(value),
            "--config" => args.config = value,
            "--concurrency" => args.concurrency = Some(value.parse()?),
            "--queue" if value == "fail" => args.failing = true,
            "--queue" if value == "step" => args.failing = false,
            other => return Err(format!("unknown flag {other}").into()),
        }
    }
    Ok(args)
}

/// The queue's configuration: apalis-redis's defaults (fetch batch 10, task
/// locks on) or the best found (fetch batch 1,000, locks off). Results stay
/// persisted: that is how apalis-redis acknowledges a task.
fn config(queue: &str, which: &str) -> Result<Config, BoxDynError> {
    let config = Config::default().queue(queue);
    match which {
        "defaults" => Ok(config),
        "best" => Ok(config.batch_size(1000).lock_tasks(false)),
        other => Err(format!("unknown config {other}").into()),
    }
}

/// apalis-redis stores every pushed task in its scheduled set, and its fetch
/// script promotes all due tasks with one Lua `unpack`, which fails above
/// ~8,000 ids. A backlog is therefore moved to the active list here, in
/// chunks, as the fetch script would (same keys, same order).
async fn promote_backlog(conn: &mut apalis_redis::ConnectionManager, config: &Config) -> Result<(), BoxDynError> {
    loop {
        let ids: Vec<String> =
            redis::cmd("ZRANGE").arg(config.scheduled_jobs_set()).arg(0).arg(4999).query_async(conn).await?;
        if ids.is_empty() {
            break;
        }
        redis::pipe()
            .atomic()
            .cmd("RPUSH")
            .arg(config.active_jobs_list())
            .arg(&ids)
            .ignore()
            .cmd("ZREM")
            .arg(config.scheduled_jobs_set())
            .arg(&ids)
            .ignore()
            .cmd("DEL")
            .arg(config.signal_list())
            .ignore()
            .cmd("LPUSH")
            .arg(config.signal_list())
            .arg(1)
            .ignore()
            .query_async::<()>(conn)
            .await?;
    }
    Ok(())
}

async fn produce(url: &str, args: &Args) -> Result<(), BoxDynError> {
    let conn = apalis_redis::connect(url).await?;
    // The producer's side of the configuration is the way it pushes: one
    // task at a time (defaults) or push_bulk by 1,000 (best).
    let config = config(QUEUE, "defaults")?;
    let mut storage = RedisStorage::<Step, _>::new(conn.clone()).with_config(config.clone());
    let started = Instant::now();
    if args.interval_ms > 0 || args.config == "defaults" {
        for seq in 0..args.count {
            if args.interval_ms > 0 {
                tokio::time::sleep(Duration::from_millis(args.interval_ms)).await;
            }
            storage.push(Step { seq, sent_us: now_us(), work_ms: args.work_ms }).await?;
        }
    } else {
        let mut seq = 0;
        while seq < args.count {
            let end = (seq + 1000).min(args.count);
            let batch = (seq..end).map(|seq| Step { seq, sent_us: now_us(), work_ms: args.work_ms }).collect();
            storage.push_bulk(batch).await?;
            seq = end;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    if args.interval_ms == 0 {
        promote_backlog(&mut conn.clone(), &config).await?;
    }
    println!("{{\"seconds\": {seconds}}}");
    Ok(())
}

async fn fail(url: &str, args: &Args) -> Result<(), BoxDynError> {
    let conn = apalis_redis::connect(url).await?;
    let mut storage = RedisStorage::<FailLarge, _>::new(conn).with_config(config(FAIL_QUEUE, "defaults")?);
    for seq in 0..args.count {
        storage.push(FailLarge { seq }).await?;
    }
    Ok(())
}

fn open_record(args: &Args) -> Result<Arc<Record>, BoxDynError> {
    let dir = args.record.as_deref().ok_or("work needs --record DIR")?;
    let path = format!("{dir}/{}.done", std::process::id());
    Ok(Arc::new(Record(Mutex::new(OpenOptions::new().create(true).append(true).open(path)?))))
}

async fn work(url: &str, args: &Args) -> Result<(), BoxDynError> {
    let record = open_record(args)?;
    let conn = apalis_redis::connect(url).await?;
    let name = format!("compare-{}", std::process::id());
    if args.failing {
        // The memory scenario's worker: 20 retries, as the other frameworks'.
        let fails = RedisStorage::<FailLarge, _>::new(conn).with_config(config(FAIL_QUEUE, "defaults")?);
        let worker = WorkerBuilder::new(name.as_str())
            .backend(fails)
            .data(record)
            .retry(RetryPolicy::retries(20))
            .build(fail_large);
        worker.run().await?;
        return Ok(());
    }
    let storage = RedisStorage::<Step, _>::new(conn).with_config(config(QUEUE, &args.config)?);
    let builder = WorkerBuilder::new(name.as_str()).backend(storage).data(record);
    match args.concurrency {
        Some(n) => builder.concurrency(n).build(step).run().await?,
        None => builder.build(step).run().await?,
    }
    Ok(())
}

async fn purge(url: &str) -> Result<(), BoxDynError> {
    let mut conn = apalis_redis::connect(url).await?;
    for pattern in [format!("{QUEUE}:*"), format!("{FAIL_QUEUE}:*")] {
        let keys: Vec<String> = redis::cmd("KEYS").arg(pattern).query_async(&mut conn).await?;
        if !keys.is_empty() {
            redis::cmd("DEL").arg(keys).query_async::<()>(&mut conn).await?;
        }
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), BoxDynError> {
    let args = args()?;
    let url = std::env::var("COMPARE_BROKER").map_err(|_| "COMPARE_BROKER is not set")?;
    match args.command.as_str() {
        "produce" => produce(&url, &args).await,
        "fail" => fail(&url, &args).await,
        "work" => work(&url, &args).await,
        "purge" => purge(&url).await,
        other => Err(format!("unknown command {other}").into()),
    }
}
