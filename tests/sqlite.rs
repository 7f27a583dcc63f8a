//! The SQLite broker on real files: a send that commits or rolls back with
//! the caller's transaction, two worker processes on one file with one
//! killed by SIGKILL, a restart, a stale lease, the shipped SQL, brokers
//! migrating a new file at once, and the typed errors of bad input. Each
//! test works on a file of its own, in a directory deleted when it ends.

#![cfg(feature = "sqlite")]
#![allow(clippy::unwrap_used)] // Tests may panic on the unexpected.

mod support;

use std::sync::Mutex;
use std::time::Duration;

use dramaturg::prelude::*;
use dramaturg::sqlite::{sqlx, SqliteBroker};
use dramaturg::{BoxError, Broker as _, BrokerErrorKind, Outgoing, QueueAdmin, SendOptions, Settled, Settlement};
use serde::{Deserialize, Serialize};

use support::sqlite::{broker_at, config, TempDir};
use support::Numbered;

/// The orders an [`Invoice`] ran for, in this process.
static INVOICED: Mutex<Vec<i64>> = Mutex::new(Vec::new());

#[derive(Actor, Serialize, Deserialize)]
struct Invoice {
    order: i64,
}

impl Invoice {
    async fn perform(self, _ctx: &Context) -> Result<(), BoxError> {
        INVOICED.lock().unwrap().push(self.order);
        Ok(())
    }
}

/// Runs `app`'s worker until `done`, then stops it; its report.
async fn run_until(app: &App, what: &str, done: impl Fn() -> bool) -> dramaturg::WorkerReport {
    let worker = Worker::new(app.clone());
    let shutdown = worker.shutdown_handle();
    let running = tokio::spawn(worker.run());
    support::wait_for(what, Duration::from_secs(10), done).await;
    app.join(Duration::from_secs(10)).await.unwrap();
    shutdown.shutdown();
    running.await.unwrap().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_in_a_transaction_commits_or_rolls_back_with_it() {
    if support::is_child() {
        return;
    }
    let dir = TempDir::new();
    let broker = broker_at(&dir.url()).await;
    let app = dramaturg::app(broker.clone()).actor::<Invoice>().build().unwrap();
    let queue = app.queues()[0].clone();
    let pool = broker.pool();
    sqlx::query("CREATE TABLE orders (id INTEGER PRIMARY KEY)").execute(pool).await.unwrap();
    let order = |id: i64| sqlx::query("INSERT INTO orders (id) VALUES (?1)").bind(id);

    // Rolled back: neither the order nor its job.
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await.unwrap();
    order(1).execute(&mut *tx).await.unwrap();
    broker.send_in(&mut tx, &app, &Invoice { order: 1 }, SendOptions::default()).await.unwrap();
    tx.rollback().await.unwrap();
    assert_eq!(broker.stats(&queue).await.unwrap().ready, 0, "a rolled-back send leaves no job");

    // Committed: the job appears with the order, not before.
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await.unwrap();
    order(2).execute(&mut *tx).await.unwrap();
    broker.send_in(&mut tx, &app, &Invoice { order: 2 }, SendOptions::default()).await.unwrap();
    assert_eq!(broker.stats(&queue).await.unwrap().ready, 0, "not visible before the commit");
    tx.commit().await.unwrap();
    assert_eq!(broker.stats(&queue).await.unwrap().ready, 1);

    // A message the app refuses never reaches the transaction.
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await.unwrap();
    let too_long = SendOptions::default().with_delay(Duration::from_secs(400 * 24 * 3600));
    let refused = broker.send_in(&mut tx, &app, &Invoice { order: 3 }, too_long).await;
    assert!(matches!(refused, Err(dramaturg::EnqueueError::DelayTooLong { .. })), "{refused:?}");
    tx.commit().await.unwrap();

    let report = run_until(&app, "the committed job", || INVOICED.lock().unwrap().contains(&2)).await;
    assert_eq!(report.succeeded, 1, "exactly one job ran: {report:?}");
    assert_eq!(*INVOICED.lock().unwrap(), [2]);
    assert!(broker.stats(&queue).await.unwrap().is_drained());
}

/// The child: a worker process on the file the parent named, recording to
/// a file, until SIGTERM.
#[test]
fn sqlite_worker_child() {
    support::run_worker_child(|url| async move {
        dramaturg::app(broker_at(&url).await).actor::<Numbered>().build().unwrap()
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_worker_processes_on_one_file_lose_nothing_when_one_is_killed() {
    if support::is_child() {
        return;
    }
    let dir = TempDir::new();
    let url = dir.url();
    let app = dramaturg::app(broker_at(&url).await).actor::<Numbered>().build().unwrap();
    let (duplicates, recovery) = support::kill_one_of_two_workers(&app, "sqlite_worker_child", &url, 2000).await;
    println!("2000 of 2000 processed at least once, {duplicates} duplicates, all done {recovery:?} after the kill");
    let stats = app.admin().unwrap().stats(&app.queues()[0]).await.unwrap();
    assert!(stats.is_drained(), "{stats:?}");
}

/// The numbers a [`Restarted`] ran for, in this process.
static RESTARTED: Mutex<Vec<u64>> = Mutex::new(Vec::new());

#[derive(Actor, Serialize, Deserialize)]
struct Restarted {
    seq: u64,
}

impl Restarted {
    async fn perform(self, _ctx: &Context) -> Result<(), BoxError> {
        RESTARTED.lock().unwrap().push(self.seq);
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_outlive_every_broker_on_the_file_and_acked_rows_are_deleted() {
    if support::is_child() {
        return;
    }
    let dir = TempDir::new();
    {
        let broker = broker_at(&dir.url()).await;
        let app = dramaturg::app(broker).actor::<Restarted>().build().unwrap();
        let batch: Vec<Restarted> = (0..20).map(|seq| Restarted { seq }).collect();
        app.send_many(&batch).await.unwrap();
    } // Every broker, pool and connection on the file is gone.
    let broker = broker_at(&dir.url()).await;
    let app = dramaturg::app(broker.clone()).actor::<Restarted>().build().unwrap();
    assert_eq!(broker.stats(&app.queues()[0]).await.unwrap().ready, 20, "the jobs are in the file");
    let report = run_until(&app, "every job", || RESTARTED.lock().unwrap().len() == 20).await;
    assert_eq!(report.succeeded, 20, "{report:?}");
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM messages").fetch_one(broker.pool()).await.unwrap();
    assert_eq!(rows, 0, "acknowledged messages leave no row");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lapsed_lease_settles_as_stale_and_changes_nothing() {
    if support::is_child() {
        return;
    }
    let dir = TempDir::new();
    let stale = broker_at(&dir.url()).await;
    let live = broker_at(&dir.url()).await;
    stale.enqueue(Outgoing::new("q", b"once".to_vec())).await.unwrap();
    let mut first = stale.consume("q", 1).await.unwrap();
    let late = tokio::time::timeout(Duration::from_secs(5), first.next()).await.unwrap().unwrap();
    // The stale worker stops beating (as if stalled): its lease lapses
    // after 1 s, and the live worker's heartbeat returns the message.
    stale.release().await.unwrap();
    let mut second = live.consume("q", 1).await.unwrap();
    let current = tokio::time::timeout(Duration::from_secs(10), second.next()).await.unwrap().unwrap();
    assert!(current.redelivered(), "returned by the recovery");
    assert_eq!(current.body().as_ref(), b"once");
    assert_eq!(late.settle(Settlement::Ack).await.unwrap(), Settled::Stale, "the lapsed lease's ack");
    let stats = live.stats("q").await.unwrap();
    assert_eq!((stats.ready, stats.in_flight, stats.dead), (0, 1, 0), "still the live worker's: {stats:?}");
    assert_eq!(current.settle(Settlement::Ack).await.unwrap(), Settled::Applied);
    assert!(live.stats("q").await.unwrap().is_drained());
    second.close().await.unwrap();
    first.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn higher_priorities_are_delivered_first() {
    if support::is_child() {
        return;
    }
    let dir = TempDir::new();
    let broker = broker_at(&dir.url()).await;
    let sent = [(None, "none"), (Some(5), "five"), (Some(200), "two hundred"), (Some(5), "five again")];
    let outgoing =
        sent.iter().map(|(p, text)| Outgoing::new("q", text.as_bytes().to_vec()).with_priority(*p)).collect();
    broker.enqueue_many(outgoing).await.unwrap();
    let mut consumer = broker.consume("q", 4).await.unwrap();
    let mut order = Vec::new();
    for _ in 0..sent.len() {
        let delivery = tokio::time::timeout(Duration::from_secs(5), consumer.next()).await.unwrap().unwrap();
        order.push(String::from_utf8(delivery.body().to_vec()).unwrap());
        delivery.settle(Settlement::Ack).await.unwrap();
    }
    assert_eq!(order, ["two hundred", "five", "five again", "none"], "by priority, then first in, first out");
    consumer.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_takes_sqlite_urls() {
    if support::is_child() {
        return;
    }
    let dir = TempDir::new();
    let path = dir.0.join("jobs.db");
    for url in [format!("sqlite://{}", path.display()), format!("sqlite:{}", path.display())] {
        let broker = dramaturg::connect(&url).await.unwrap();
        broker.enqueue(Outgoing::new("q", b"x".to_vec())).await.unwrap();
    }
    let broker = broker_at(&dir.url()).await;
    assert_eq!(broker.stats("q").await.unwrap().ready, 2, "both URLs reached the same file");
    assert_eq!(broker.path(), std::fs::canonicalize(&path).unwrap());
    let journal: String = sqlx::query_scalar("PRAGMA journal_mode").fetch_one(broker.pool()).await.unwrap();
    assert_eq!(journal, "wal");
}

/// Teams that run their own migrations apply the shipped SQL and connect
/// with `migrate(false)`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shipped_sql_makes_a_file_the_broker_uses_without_migrating() {
    if support::is_child() {
        return;
    }
    let dir = TempDir::new();
    let url = format!("{}?mode=rwc", dir.url());
    let mut conn = <sqlx::SqliteConnection as sqlx::Connection>::connect(&url).await.unwrap();
    let ddl = include_str!("../crates/dramaturg-sqlite/migrations/0001_queues.sql");
    sqlx::raw_sql(ddl).execute(&mut conn).await.unwrap();
    let broker = SqliteBroker::with_config(config(&dir.url()).migrate(false)).await.unwrap();
    broker.enqueue(Outgoing::new("q", b"hello".to_vec())).await.unwrap();
    assert_eq!(broker.stats("q").await.unwrap().ready, 1);
    let migrations: i64 = sqlx::query_scalar("SELECT count(*) FROM sqlite_master WHERE name = '_sqlx_migrations'")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(migrations, 0, "the broker did not migrate");
}

/// The kind of the error opening `url` gives.
async fn refused(url: &str) -> dramaturg::BrokerError {
    SqliteBroker::with_config(config(url)).await.expect_err(url)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_files_are_typed_errors() {
    if support::is_child() {
        return;
    }
    let dir = TempDir::new();

    let missing = refused(&format!("sqlite://{}/no/such/dir/jobs.db", dir.0.display())).await;
    assert_eq!(missing.kind(), BrokerErrorKind::InvalidInput, "{missing}");
    let absent = refused(&format!("sqlite://{}/absent.db?mode=rw", dir.0.display())).await;
    assert_eq!(absent.kind(), BrokerErrorKind::InvalidInput, "{absent}");

    let text = dir.0.join("notes.txt");
    std::fs::write(&text, "these are notes, not a database, but long enough to hold a header ".repeat(20)).unwrap();
    let not_a_database = refused(&format!("sqlite://{}", text.display())).await;
    assert_eq!(not_a_database.kind(), BrokerErrorKind::InvalidInput, "{not_a_database}");
    assert!(not_a_database.to_string().contains("notes.txt"), "{not_a_database}");

    let memory = SqliteBroker::connect("sqlite::memory:").await.unwrap_err();
    assert_eq!(memory.kind(), BrokerErrorKind::InvalidInput, "{memory}");
    let Err(dramaturg::ConnectError::Broker(through_connect)) = dramaturg::connect("sqlite::memory:").await else {
        panic!("sqlite::memory: is refused by the SQLite broker");
    };
    assert_eq!(through_connect.kind(), BrokerErrorKind::InvalidInput, "{through_connect}");
    assert!(memory.to_string().contains("memory://"), "{memory}");
    let read_only_mode = SqliteBroker::connect(&format!("{}?mode=ro", dir.url())).await.unwrap_err();
    assert_eq!(read_only_mode.kind(), BrokerErrorKind::InvalidInput, "{read_only_mode}");
    let typo = SqliteBroker::connect(&format!("{}?mdoe=rw", dir.url())).await.unwrap_err();
    assert!(typo.to_string().contains("mdoe"), "{typo}");
}

/// A file the process may not write. (Root writes through permissions:
/// there the test only checks that the file opens; the crate's unit tests
/// check how a refused write is classified.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_file_is_an_unsuitable_broker() {
    if support::is_child() {
        return;
    }
    let dir = TempDir::new();
    drop(broker_at(&dir.url()).await);
    let path = dir.0.join("jobs.db");
    let mut permissions = std::fs::metadata(&path).unwrap().permissions();
    permissions.set_readonly(true);
    std::fs::set_permissions(&path, permissions).unwrap();
    if std::fs::OpenOptions::new().write(true).open(&path).is_ok() {
        println!("running as root: a read-only file is writable here");
        drop(broker_at(&dir.url()).await);
        return;
    }
    let error = refused(&dir.url()).await;
    assert_eq!(error.kind(), BrokerErrorKind::Unsuitable, "{error}");
    assert!(!error.is_retryable());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_locked_past_the_busy_timeout_is_a_retryable_error() {
    if support::is_child() {
        return;
    }
    let dir = TempDir::new();
    let broker = SqliteBroker::with_config(config(&dir.url()).busy_timeout(Duration::from_millis(200))).await.unwrap();
    // Another connection (another process, as far as the file knows)
    // holds the write lock.
    let mut other = <sqlx::SqliteConnection as sqlx::Connection>::connect(&dir.url()).await.unwrap();
    sqlx::query("BEGIN IMMEDIATE").execute(&mut other).await.unwrap();
    let error = broker.enqueue(Outgoing::new("q", b"x".to_vec())).await.unwrap_err();
    assert_eq!(error.kind(), BrokerErrorKind::Timeout, "{error}");
    assert!(error.is_retryable());
    sqlx::query("COMMIT").execute(&mut other).await.unwrap();
    broker.enqueue(Outgoing::new("q", b"x".to_vec())).await.unwrap();
    assert_eq!(broker.stats("q").await.unwrap().ready, 1, "it passes once the lock is released");
}

/// Processes that start together on a new file migrate it once between
/// them: sqlx takes no lock on SQLite, so the ones that lose try again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn brokers_opening_a_new_file_at_once_all_start() {
    if support::is_child() {
        return;
    }
    let dir = TempDir::new();
    let url = dir.url();
    let opened = futures_util::future::join_all((0..4).map(|_| SqliteBroker::with_config(config(&url)))).await;
    for broker in &opened {
        assert!(broker.is_ok(), "{broker:?}");
    }
    let broker = opened.into_iter().next().unwrap().unwrap();
    broker.enqueue(Outgoing::new("q", b"x".to_vec())).await.unwrap();
    assert_eq!(broker.stats("q").await.unwrap().ready, 1);
}

/// A stale ack and the current one of the same row, coalesced into one
/// batch: only the current one applies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_ack_batched_with_the_current_one_stays_stale() {
    if support::is_child() {
        return;
    }
    let dir = TempDir::new();
    let broker = broker_at(&dir.url()).await;
    for _ in 0..20 {
        broker.enqueue(Outgoing::new("q", b"row".to_vec())).await.unwrap();
        let mut consumer = broker.consume("q", 1).await.unwrap();
        let stale = tokio::time::timeout(Duration::from_secs(5), consumer.next()).await.unwrap().unwrap();
        assert_eq!(broker.requeue_in_flight("q").await.unwrap(), 1);
        let mut again = broker.consume("q", 1).await.unwrap();
        let current = tokio::time::timeout(Duration::from_secs(5), again.next()).await.unwrap().unwrap();
        let (stale, current) = tokio::join!(stale.settle(Settlement::Ack), current.settle(Settlement::Ack));
        assert_eq!((stale.unwrap(), current.unwrap()), (Settled::Stale, Settled::Applied));
        assert!(broker.stats("q").await.unwrap().is_drained());
        consumer.close().await.unwrap();
        again.close().await.unwrap();
    }
}

/// Results for a SQLite broker, which keeps no store, would stay in the
/// worker's memory where other processes cannot read them: `for_broker`
/// says so. For the in-memory broker, whose messages stay in the process
/// too, it says nothing.
#[tokio::test(flavor = "current_thread")]
async fn results_without_a_shared_store_are_warned_about() {
    if support::is_child() {
        return;
    }
    let captured = support::Captured::default();
    let _guard = tracing::subscriber::set_default(captured.subscriber(tracing::Level::WARN));
    let warnings = || captured.count("keeps no store");
    let _in_process = dramaturg::results::Results::for_broker(&dramaturg::MemoryBroker::new());
    assert_eq!(warnings(), 0);
    let dir = TempDir::new();
    let broker = broker_at(&dir.url()).await;
    let _local = dramaturg::results::Results::for_broker(&broker);
    assert_eq!(warnings(), 1);
}
