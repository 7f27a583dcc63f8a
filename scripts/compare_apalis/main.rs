//! apalis's side of scripts/compare: the demo example's actor (record each
//! finished message with its timings) on apalis-redis, apalis-postgres or
//! apalis-sqlite, chosen by the broker URL's scheme. Written into a throwaway
//! Cargo project by scripts/compare and built there.
//!
//!   apalis-compare produce --count N [--interval-ms MS] [--work-ms MS] [--config defaults|best]
//!   apalis-compare work --record DIR [--config defaults|best] [--concurrency N] [--queue step|fail]
//!   apalis-compare fail --count N     (the memory scenario's messages, Redis: 20 retries, 10 MB errors)
//!   apalis-compare purge
//!
//! The broker URL is COMPARE_BROKER: redis://…, postgres://… or sqlite://PATH.
//! On PostgreSQL and SQLite every command first runs the storage's own
//! migrations (`setup`; on PostgreSQL its tables live in the schema
//! `apalis`), as its documentation does at start. produce prints
//! {"seconds": …} last.
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use apalis::prelude::*;
use apalis_postgres::{PgPool, PostgresStorage};
use apalis_redis::{Config, RedisStorage};
use apalis_sqlite::{SqliteConnectOptions, SqlitePool, SqliteStorage};
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

impl Args {
    fn best(&self) -> Result<bool, BoxDynError> {
        match self.config.as_str() {
            "defaults" => Ok(false),
            "best" => Ok(true),
            other => Err(format!("unknown config {other}").into()),
        }
    }
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
    args.best()?;
    Ok(args)
}

/// A connected broker: apalis-redis's connection, or the pool of
/// apalis-postgres or apalis-sqlite.
enum Broker {
    Redis(apalis_redis::ConnectionManager),
    Postgres(PgPool),
    Sqlite(SqlitePool),
}

/// The broker a URL names (by its scheme), connected; on PostgreSQL and
/// SQLite with the storage's migrations applied (`setup`), as the storages'
/// documentation does at start.
async fn connect(url: &str) -> Result<Broker, BoxDynError> {
    if url.starts_with("postgres") {
        let pool = PgPool::connect(url).await?;
        PostgresStorage::setup(&pool).await?;
        Ok(Broker::Postgres(pool))
    } else if url.starts_with("sqlite:") {
        let pool = SqlitePool::connect_with(SqliteConnectOptions::from_str(url)?.create_if_missing(true)).await?;
        SqliteStorage::setup(&pool).await?;
        Ok(Broker::Sqlite(pool))
    } else {
        Ok(Broker::Redis(apalis_redis::connect(url).await?))
    }
}

/// apalis-redis's queue configuration: its defaults (fetch batch 10, task
/// locks on) or the best found (fetch batch 1,000, locks off). Results stay
/// persisted: that is how apalis-redis acknowledges a task.
fn redis_config(queue: &str, best: bool) -> Config {
    let config = Config::default().queue(queue);
    if best { config.batch_size(1000).lock_tasks(false) } else { config }
}

/// apalis-postgres's: its defaults (fetch batch 10, task locks on, polling:
/// after an empty fetch the worker waits for its next heartbeat) or the best
/// found (fetch batch 1,000, locks off; `work` adds the wake-ups). Results
/// stay persisted: that is the acknowledgement.
fn postgres_storage(pool: &PgPool, best: bool) -> PostgresStorage<Step> {
    let config = apalis_postgres::Config::default().queue(QUEUE);
    let config = if best { config.batch_size(1000).lock_tasks(false) } else { config };
    PostgresStorage::new(pool).with_config(config)
}

/// apalis-sqlite's, likewise; its best polls every 100 ms when idle (SQLite's
/// update hook only sees writes of the same process, and the producer is
/// another one).
fn sqlite_storage(pool: &SqlitePool, best: bool) -> SqliteStorage<Step> {
    let config = apalis_sqlite::Config::default().queue(QUEUE);
    let config = if best { config.batch_size(1000).lock_tasks(false) } else { config };
    SqliteStorage::new(pool).with_config(config)
}

/// The best configuration's idle look, on SQLite and, besides `LISTEN`/`NOTIFY`
/// (`with_pubsub`), on PostgreSQL as in apalis-postgres's own example: with
/// `with_pubsub` alone a worker here missed wake-ups and waited for its next
/// heartbeat (enqueue-to-start p50 17 s in scripts/compare).
const IDLE_POLL: Duration = Duration::from_millis(100);

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

/// Pushes the `Step` tasks to a storage and evaluates to the seconds it
/// took. The producer's side of the configuration is the way it pushes: one
/// task at a time (defaults, and always when paced) or `push_bulk` by 1,000
/// (best). A macro, as the storages share no trait with a `push_bulk` that
/// is simple to name.
macro_rules! push_steps {
    ($storage:expr, $args:expr) => {{
        let (mut storage, args): (_, &Args) = ($storage, $args);
        let task = |seq| Step { seq, sent_us: now_us(), work_ms: args.work_ms };
        let started = Instant::now();
        if args.interval_ms > 0 || !args.best()? {
            for seq in 0..args.count {
                if args.interval_ms > 0 {
                    tokio::time::sleep(Duration::from_millis(args.interval_ms)).await;
                }
                storage.push(task(seq)).await?;
            }
        } else {
            let mut seq = 0;
            while seq < args.count {
                let end = (seq + 1000).min(args.count);
                storage.push_bulk((seq..end).map(task).collect()).await?;
                seq = end;
            }
        }
        started.elapsed().as_secs_f64()
    }};
}

async fn produce(url: &str, args: &Args) -> Result<(), BoxDynError> {
    let seconds = match connect(url).await? {
        Broker::Redis(conn) => {
            let config = redis_config(QUEUE, false);
            let storage = RedisStorage::<Step, _>::new(conn.clone()).with_config(config.clone());
            let seconds = push_steps!(storage, args);
            if args.interval_ms == 0 {
                promote_backlog(&mut conn.clone(), &config).await?;
            }
            seconds
        }
        Broker::Postgres(pool) => push_steps!(postgres_storage(&pool, false), args),
        Broker::Sqlite(pool) => push_steps!(sqlite_storage(&pool, false), args),
    };
    println!("{{\"seconds\": {seconds}}}");
    Ok(())
}

async fn fail(url: &str, args: &Args) -> Result<(), BoxDynError> {
    let Broker::Redis(conn) = connect(url).await? else {
        return Err("the memory scenario runs on Redis only".into());
    };
    let mut storage = RedisStorage::<FailLarge, _>::new(conn).with_config(redis_config(FAIL_QUEUE, false));
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

/// Runs the `Step` worker on a backend until it stops, with `--concurrency`
/// when given (apalis sets no limit by default). A macro for the same reason
/// as `push_steps`.
macro_rules! run_steps {
    ($backend:expr, $args:expr, $record:expr) => {{
        let name = format!("compare-{}", std::process::id());
        let builder = WorkerBuilder::new(name.as_str()).backend($backend).data($record);
        match $args.concurrency {
            Some(n) => builder.concurrency(n).build(step).run().await?,
            None => builder.build(step).run().await?,
        }
    }};
}

async fn work(url: &str, args: &Args) -> Result<(), BoxDynError> {
    let record = open_record(args)?;
    let best = args.best()?;
    match connect(url).await? {
        Broker::Redis(conn) if args.failing => {
            // The memory scenario's worker: 20 retries, as the other frameworks'.
            let fails = RedisStorage::<FailLarge, _>::new(conn).with_config(redis_config(FAIL_QUEUE, false));
            let name = format!("compare-{}", std::process::id());
            let worker = WorkerBuilder::new(name.as_str())
                .backend(fails)
                .data(record)
                .retry(RetryPolicy::retries(20))
                .build(fail_large);
            worker.run().await?;
        }
        _ if args.failing => return Err("the memory scenario runs on Redis only".into()),
        Broker::Redis(conn) => {
            run_steps!(RedisStorage::<Step, _>::new(conn).with_config(redis_config(QUEUE, best)), args, record)
        }
        Broker::Postgres(pool) if best => {
            run_steps!(postgres_storage(&pool, true).with_pubsub().poll_with_interval(IDLE_POLL), args, record)
        }
        Broker::Postgres(pool) => run_steps!(postgres_storage(&pool, false), args, record),
        Broker::Sqlite(pool) if best => {
            run_steps!(sqlite_storage(&pool, true).poll_with_interval(IDLE_POLL), args, record)
        }
        Broker::Sqlite(pool) => run_steps!(sqlite_storage(&pool, false), args, record),
    }
    Ok(())
}

/// Deletes the queues' tasks (and, on PostgreSQL and SQLite, the workers
/// registered for them).
async fn purge(url: &str) -> Result<(), BoxDynError> {
    match connect(url).await? {
        Broker::Redis(mut conn) => {
            for pattern in [QUEUE, FAIL_QUEUE].map(|queue| format!("{queue}:*")) {
                let keys: Vec<String> = redis::cmd("KEYS").arg(pattern).query_async(&mut conn).await?;
                if !keys.is_empty() {
                    redis::cmd("DEL").arg(keys).query_async::<()>(&mut conn).await?;
                }
            }
        }
        Broker::Postgres(pool) => {
            for statement in [
                "DELETE FROM apalis.jobs WHERE job_type IN ($1, $2)",
                "DELETE FROM apalis.workers WHERE worker_type IN ($1, $2)",
            ] {
                sqlx::query(statement).bind(QUEUE).bind(FAIL_QUEUE).execute(&pool).await?;
            }
        }
        Broker::Sqlite(pool) => {
            for statement in
                ["DELETE FROM Jobs WHERE job_type IN (?1, ?2)", "DELETE FROM Workers WHERE worker_type IN (?1, ?2)"]
            {
                sqlx::query(statement).bind(QUEUE).bind(FAIL_QUEUE).execute(&pool).await?;
            }
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
