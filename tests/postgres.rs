//! The PostgreSQL broker against the real server: a send that commits or
//! rolls back with the caller's transaction, a worker killed with SIGKILL,
//! `postgres://` URLs, and secrets kept out of errors. Each test works in
//! a schema of its own, dropped when it ends.

#![cfg(feature = "postgres")]
#![allow(clippy::unwrap_used)] // Tests may panic on the unexpected.

mod support;

use std::sync::Mutex;
use std::time::Duration;

use dramaturg::postgres::sqlx;
use dramaturg::prelude::*;
use dramaturg::{BoxError, Broker as _, BrokerErrorKind, Outgoing, QueueAdmin, SendOptions};
use serde::{Deserialize, Serialize};

use support::postgres::{broker_in, own_schema, URL};
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_in_a_transaction_commits_or_rolls_back_with_it() {
    if support::is_child() {
        return;
    }
    let (schema, _drop) = own_schema();
    let broker = broker_in(&schema).await;
    let app = dramaturg::app(broker.clone()).actor::<Invoice>().build().unwrap();
    let queue = app.queues()[0].clone();
    let pool = broker.pool();
    sqlx::query(&format!("CREATE TABLE \"{schema}\".orders (id bigint PRIMARY KEY)")).execute(pool).await.unwrap();
    let insert = format!("INSERT INTO \"{schema}\".orders (id) VALUES ($1)");
    let order = |id: i64| sqlx::query(&insert).bind(id);

    // Rolled back: neither the order nor its job.
    let mut tx = pool.begin().await.unwrap();
    order(1).execute(&mut *tx).await.unwrap();
    broker.send_in(&mut tx, &app, &Invoice { order: 1 }, SendOptions::default()).await.unwrap();
    tx.rollback().await.unwrap();
    assert_eq!(broker.stats(&queue).await.unwrap().ready, 0, "a rolled-back send leaves no job");

    // Committed: the job appears with the order, not before.
    let mut tx = pool.begin().await.unwrap();
    order(2).execute(&mut *tx).await.unwrap();
    let sent = broker.send_in(&mut tx, &app, &Invoice { order: 2 }, SendOptions::default()).await.unwrap();
    assert_eq!(broker.stats(&queue).await.unwrap().ready, 0, "not visible before the commit");
    tx.commit().await.unwrap();
    assert_eq!(broker.stats(&queue).await.unwrap().ready, 1);

    // A message the app refuses never reaches the transaction.
    let mut tx = pool.begin().await.unwrap();
    let too_long = SendOptions::default().with_delay(Duration::from_secs(400 * 24 * 3600));
    let refused = broker.send_in(&mut tx, &app, &Invoice { order: 3 }, too_long).await;
    assert!(matches!(refused, Err(dramaturg::EnqueueError::DelayTooLong { .. })), "{refused:?}");
    tx.commit().await.unwrap();

    let worker = Worker::new(app.clone());
    let shutdown = worker.shutdown_handle();
    let running = tokio::spawn(worker.run());
    support::wait_for("the committed job", Duration::from_secs(10), || INVOICED.lock().unwrap().contains(&2)).await;
    app.join(Duration::from_secs(10)).await.unwrap();
    shutdown.shutdown();
    let report = running.await.unwrap().unwrap();
    assert_eq!(report.succeeded, 1, "exactly one job ran: {report:?} (sent {sent:?})");
    assert_eq!(*INVOICED.lock().unwrap(), [2]);
    assert!(broker.stats(&queue).await.unwrap().is_drained());
}

/// The child: a worker process recording to a file, until SIGTERM.
#[test]
fn postgres_worker_child() {
    support::run_worker_child(|schema| async move {
        dramaturg::app(broker_in(&schema).await).actor::<Numbered>().build().unwrap()
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_run_loses_nothing() {
    if support::is_child() {
        return;
    }
    let (schema, _drop) = own_schema();
    let app = dramaturg::app(broker_in(&schema).await).actor::<Numbered>().build().unwrap();
    let (duplicates, recovery) = support::kill_one_of_two_workers(&app, "postgres_worker_child", &schema, 2000).await;
    println!("2000 of 2000 processed at least once, {duplicates} duplicates, all done {recovery:?} after the kill");
    let stats = app.admin().unwrap().stats(&app.queues()[0]).await.unwrap();
    assert!(stats.is_drained(), "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_takes_postgres_urls_with_a_schema() {
    if support::is_child() {
        return;
    }
    let (schema, _drop) = own_schema();
    for scheme in ["postgres", "postgresql"] {
        let url = format!("{scheme}://root@127.0.0.1:5432/test?schema={schema}");
        let broker = dramaturg::connect(&url).await.unwrap();
        broker.enqueue(Outgoing::new("q", b"x".to_vec())).await.unwrap();
    }
    let broker = broker_in(&schema).await;
    assert_eq!(broker.stats("q").await.unwrap().ready, 2, "both URLs reached the same schema");

    let typo = dramaturg::connect(&format!("{URL}?schema={schema}&shema=x")).await.unwrap_err();
    assert!(typo.to_string().contains("shema"), "{typo}");
    let bad_schema = dramaturg::connect(&format!("{URL}?schema=no-dashes")).await.unwrap_err();
    assert!(bad_schema.to_string().contains("invalid schema name"), "{bad_schema}");
}

#[tokio::test]
async fn errors_name_the_url_without_its_password() {
    if support::is_child() {
        return;
    }
    // Nobody listens on port 1.
    let Err(dramaturg::ConnectError::Broker(error)) =
        dramaturg::connect("postgres://root:hunter2@127.0.0.1:1/test").await
    else {
        panic!("expected a broker error");
    };
    assert_eq!(error.kind(), BrokerErrorKind::Connection, "{error}");
    let shown = format!("{error} {error:?}");
    assert!(!shown.contains("hunter2"), "{shown}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_see_the_queues_and_the_workers_with_their_claims() {
    if support::is_child() {
        return;
    }
    let (schema, _drop) = own_schema();
    let broker = broker_in(&schema).await;
    broker.set_worker_concurrency(3);
    broker.enqueue(Outgoing::new("b", b"held".to_vec())).await.unwrap();
    broker.enqueue(Outgoing::new("a", b"waiting".to_vec()).with_delay(Some(Duration::from_secs(60)))).await.unwrap();
    let mut consumer = broker.consume("b", 1).await.unwrap();
    let held = tokio::time::timeout(Duration::from_secs(5), consumer.next()).await.unwrap().unwrap();
    assert_eq!(broker.queues().await.unwrap(), ["a", "b"]);
    // The heartbeat (every 200 ms) records the worker.
    let mut workers = Vec::new();
    for _ in 0..50 {
        workers = broker.workers().await.unwrap();
        if !workers.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(workers.len(), 1, "{workers:?}");
    let worker = &workers[0];
    assert_eq!(worker.id, broker.worker_id());
    assert_eq!(worker.concurrency, Some(3));
    assert_eq!(worker.in_flight.get("b"), Some(&1), "{worker:?}");
    assert_eq!(worker.held.len(), 1);
    assert_eq!(worker.held[0].body.as_deref(), Some(&b"held"[..]));
    held.settle(dramaturg::Settlement::Ack).await.unwrap();
    consumer.close().await.unwrap();
    broker.release().await.unwrap();
    assert!(broker.workers().await.unwrap().is_empty(), "a worker that stopped holding nothing leaves");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn higher_priorities_are_delivered_first() {
    if support::is_child() {
        return;
    }
    let (schema, _drop) = own_schema();
    let broker = broker_in(&schema).await;
    let sent = [(None, "none"), (Some(5), "five"), (Some(200), "two hundred"), (Some(5), "five again")];
    let outgoing =
        sent.iter().map(|(p, text)| Outgoing::new("q", text.as_bytes().to_vec()).with_priority(*p)).collect();
    broker.enqueue_many(outgoing).await.unwrap();
    let mut consumer = broker.consume("q", 4).await.unwrap();
    let mut order = Vec::new();
    for _ in 0..sent.len() {
        let delivery = tokio::time::timeout(Duration::from_secs(5), consumer.next()).await.unwrap().unwrap();
        order.push(String::from_utf8(delivery.body().to_vec()).unwrap());
        delivery.settle(dramaturg::Settlement::Ack).await.unwrap();
    }
    assert_eq!(order, ["two hundred", "five", "five again", "none"], "by priority, then first in, first out");
    consumer.close().await.unwrap();
}

/// Teams that run their own migrations apply the shipped SQL and connect
/// with `migrate(false)`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shipped_sql_makes_a_schema_the_broker_uses_without_migrating() {
    if support::is_child() {
        return;
    }
    let (schema, _drop) = own_schema();
    let config = || dramaturg::postgres::PgConfig::new(URL).schema(&schema).migrate(false);
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(URL).await.unwrap();
    let ddl = include_str!("../crates/dramaturg-postgres/migrations/0001_queues.sql");
    let script = format!("CREATE SCHEMA \"{schema}\"; SET search_path TO \"{schema}\"; {ddl}");
    sqlx::raw_sql(&script).execute(&mut conn).await.unwrap();
    let broker = dramaturg::postgres::PgBroker::with_config(config()).await.unwrap();
    broker.enqueue(Outgoing::new("q", b"hello".to_vec())).await.unwrap();
    assert_eq!(broker.stats("q").await.unwrap().ready, 1);
    let migrations: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM information_schema.tables WHERE table_schema = $1 AND table_name = '_sqlx_migrations'",
    )
    .bind(&schema)
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(migrations, 0, "the broker did not migrate");
}

/// A `next` dropped while its claim is under way (a worker stopping)
/// leaves no claim behind: `close` returns what that claim took, at once
/// rather than after the lease lapses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_cut_short_is_returned_by_close() {
    if support::is_child() {
        return;
    }
    let (schema, _drop) = own_schema();
    let broker = broker_in(&schema).await;
    let outgoing = (0..50).map(|i| Outgoing::new("q", format!("m{i}").into_bytes())).collect();
    broker.enqueue_many(outgoing).await.unwrap();
    for attempt in 0..40u64 {
        let mut consumer = broker.consume("q", 10).await.unwrap();
        // Cut short at a different point each time.
        if let Ok(delivery) = tokio::time::timeout(Duration::from_micros(attempt * 100), consumer.next()).await {
            delivery.unwrap().settle(dramaturg::Settlement::Requeue).await.unwrap();
        }
        consumer.close().await.unwrap();
        let stats = broker.stats("q").await.unwrap();
        assert_eq!((stats.ready, stats.in_flight), (50, 0), "attempt {attempt}: {stats:?}");
    }
}

/// A stale ack and the current one of the same row, coalesced into one
/// batch: only the current one applies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_ack_batched_with_the_current_one_stays_stale() {
    if support::is_child() {
        return;
    }
    let (schema, _drop) = own_schema();
    let broker = broker_in(&schema).await;
    for _ in 0..20 {
        broker.enqueue(Outgoing::new("q", b"row".to_vec())).await.unwrap();
        let mut consumer = broker.consume("q", 1).await.unwrap();
        let stale = tokio::time::timeout(Duration::from_secs(5), consumer.next()).await.unwrap().unwrap();
        assert_eq!(broker.requeue_in_flight("q").await.unwrap(), 1);
        let mut again = broker.consume("q", 1).await.unwrap();
        let current = tokio::time::timeout(Duration::from_secs(5), again.next()).await.unwrap().unwrap();
        let (stale, current) =
            tokio::join!(stale.settle(dramaturg::Settlement::Ack), current.settle(dramaturg::Settlement::Ack));
        assert_eq!((stale.unwrap(), current.unwrap()), (dramaturg::Settled::Stale, dramaturg::Settled::Applied));
        assert!(broker.stats("q").await.unwrap().is_drained());
        consumer.close().await.unwrap();
        again.close().await.unwrap();
    }
}

/// A messages table that nothing will vacuum (autovacuum off for it, and
/// the broker's own vacuum off) is said at connect, once; one that
/// autovacuum or the broker looks after is not.
#[tokio::test(flavor = "current_thread")]
async fn a_messages_table_that_autovacuum_skips_is_warned_about() {
    if support::is_child() {
        return;
    }
    let captured = support::Captured::default();
    let _guard = tracing::subscriber::set_default(captured.subscriber(tracing::Level::WARN));
    let warnings = || captured.count("autovacuum is off");
    let (schema, _drop) = own_schema();
    let unvacuumed = || async {
        let config = support::postgres::config_in(&schema).vacuum_every(0);
        dramaturg::postgres::PgBroker::with_config(config).await.unwrap()
    };
    let broker = unvacuumed().await;
    let autovacuum: String =
        sqlx::query_scalar("SELECT current_setting('autovacuum')").fetch_one(broker.pool()).await.unwrap();
    let server_off = usize::from(autovacuum == "off");
    assert_eq!(warnings(), server_off, "autovacuum is {autovacuum} on the server");
    sqlx::query(&format!("ALTER TABLE \"{schema}\".messages SET (autovacuum_enabled = off)"))
        .execute(broker.pool())
        .await
        .unwrap();
    let _again = unvacuumed().await;
    assert_eq!(warnings(), server_off + 1);
    // A broker that vacuums the table itself has nothing to warn about.
    let _vacuuming = broker_in(&schema).await;
    assert_eq!(warnings(), server_off + 1);
}

/// A consuming broker vacuums its messages table itself every
/// `vacuum_every` acknowledged messages; with 0 it never does. Read from
/// the server's statistics (`vacuum_count` counts manual vacuums, not
/// autovacuum's).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_vacuums_its_messages_table_every_so_many_acks() {
    if support::is_child() {
        return;
    }
    for (every, vacuums) in [(100, true), (0, false)] {
        let (schema, _drop) = own_schema();
        let broker =
            dramaturg::postgres::PgBroker::with_config(support::postgres::config_in(&schema).vacuum_every(every))
                .await
                .unwrap();
        let app = dramaturg::app(broker.clone()).actor::<Numbered>().build().unwrap();
        let jobs: Vec<Numbered> = (0..500).map(|seq| Numbered { seq }).collect();
        app.send_many(&jobs).await.unwrap();
        let report = Worker::new(app).concurrency(16).run_until_drained(Duration::from_secs(60)).await.unwrap();
        assert_eq!(report.succeeded, 500);
        let count = || async {
            let statistics = format!(
                "SELECT vacuum_count FROM pg_stat_user_tables WHERE schemaname = '{schema}' AND relname = 'messages'"
            );
            // A snapshot of the statistics is kept for a transaction: a
            // statement of its own each time.
            sqlx::query_scalar::<_, i64>(&statistics).fetch_one(broker.pool()).await.unwrap()
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let mut vacuumed = count().await;
        while vacuums && vacuumed == 0 && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
            vacuumed = count().await;
        }
        if !vacuums {
            tokio::time::sleep(Duration::from_secs(1)).await;
            vacuumed = count().await;
        }
        assert_eq!(vacuumed > 0, vacuums, "vacuum_every({every}): {vacuumed} vacuums");
    }
}

/// A store write that goes with an ack (a message's result) is made by the
/// ack's own statement, only if the ack applies: a stale attempt writes
/// nothing, alone or batched with the current attempt's ack.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_ack_writes_nothing() {
    if support::is_child() {
        return;
    }
    use dramaturg::store::StoreWrite;
    use dramaturg::{Settled, Settlement};
    let (schema, _drop) = own_schema();
    let broker = broker_in(&schema).await;
    let store = broker.store().unwrap();
    let mut consumer = broker.consume("written", 4).await.unwrap();
    for (n, together) in [(1, false), (2, true)] {
        let key = format!("result:written-{n}");
        let write = |value: &'static [u8]| [StoreWrite::new(key.clone(), value, Duration::from_secs(60))];
        broker.enqueue(Outgoing::new("written", format!("m{n}").into_bytes())).await.unwrap();
        let lapsed = consumer.next().await.unwrap();
        assert_eq!(broker.requeue_in_flight("written").await.unwrap(), 1);
        let current = consumer.next().await.unwrap();
        let (old, new) = (write(b"stale"), write(b"current"));
        let (stale, applied) = if together {
            tokio::join!(
                lapsed.settle_writing(Settlement::Ack, &old, &*store),
                current.settle_writing(Settlement::Ack, &new, &*store)
            )
        } else {
            let stale = lapsed.settle_writing(Settlement::Ack, &old, &*store).await;
            assert_eq!(store.get(&key).await.unwrap(), None, "a stale ack wrote its result");
            (stale, current.settle_writing(Settlement::Ack, &new, &*store).await)
        };
        assert_eq!(stale.unwrap(), Settled::Stale);
        assert_eq!(applied.unwrap(), Settled::Applied);
        assert_eq!(store.get(&key).await.unwrap().as_deref(), Some(&b"current"[..]));
    }
    consumer.close().await.unwrap();
}

/// A failure's result goes with its dead letter, only if the dead letter
/// applies: a stalled attempt that fails after its message was recovered
/// and succeeded elsewhere cannot overwrite the success.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_dead_letter_writes_nothing() {
    if support::is_child() {
        return;
    }
    use dramaturg::store::StoreWrite;
    use dramaturg::{DeadLetters as _, Settled, Settlement};
    let (schema, _drop) = own_schema();
    let broker = broker_in(&schema).await;
    let store = broker.store().unwrap();
    let mut consumer = broker.consume("failing", 4).await.unwrap();
    let key = "result:failing";
    let write = |value: &'static [u8]| [StoreWrite::new(key, value, Duration::from_secs(60))];
    broker.enqueue(Outgoing::new("failing", b"m".to_vec())).await.unwrap();
    let lapsed = consumer.next().await.unwrap();
    assert_eq!(broker.requeue_in_flight("failing").await.unwrap(), 1);
    let owner = consumer.next().await.unwrap();
    let succeeded = owner.settle_writing(Settlement::Ack, &write(b"succeeded"), &*store).await.unwrap();
    assert_eq!(succeeded, Settled::Applied);
    let failure = write(b"failed");
    let failed = lapsed.settle_writing(Settlement::DeadLetter("failed late".into()), &failure, &*store).await;
    assert_eq!(failed.unwrap(), Settled::Stale);
    assert_eq!(
        store.get(key).await.unwrap().as_deref(),
        Some(&b"succeeded"[..]),
        "a stale failure overwrote the result"
    );
    assert_eq!(broker.list("failing", 10).await.unwrap().len(), 0, "a stale dead letter was kept");

    // A current one writes its failure with the dead letter.
    broker.enqueue(Outgoing::new("failing", b"n".to_vec())).await.unwrap();
    let current = consumer.next().await.unwrap();
    let dead = current.settle_writing(Settlement::DeadLetter("failed".into()), &failure, &*store).await;
    assert_eq!(dead.unwrap(), Settled::Applied);
    assert_eq!(store.get(key).await.unwrap().as_deref(), Some(&b"failed"[..]));
    assert_eq!(broker.list("failing", 10).await.unwrap().len(), 1);
    consumer.close().await.unwrap();
}

/// A broker connected as a role that does not own the messages table
/// cannot vacuum it: it says so once and stops trying, and its acks go on.
#[tokio::test(flavor = "current_thread")]
async fn a_role_that_does_not_own_the_table_is_told_it_cannot_vacuum() {
    if support::is_child() {
        return;
    }
    let captured = support::Captured::default();
    let _guard = tracing::subscriber::set_default(captured.subscriber(tracing::Level::WARN));
    let (schema, _drop) = own_schema();
    let owner = broker_in(&schema).await;
    let role = format!("{schema}_worker");
    for statement in [
        format!("CREATE ROLE \"{role}\" LOGIN"),
        format!("GRANT USAGE ON SCHEMA \"{schema}\" TO \"{role}\""),
        format!("GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA \"{schema}\" TO \"{role}\""),
        format!("GRANT USAGE ON ALL SEQUENCES IN SCHEMA \"{schema}\" TO \"{role}\""),
    ] {
        sqlx::query(&statement).execute(owner.pool()).await.unwrap();
    }
    let url = support::postgres::URL.replace("root@", &format!("{role}@"));
    let config = dramaturg::postgres::PgConfig::new(url).schema(&schema).migrate(false).vacuum_every(10);
    let worker = dramaturg::postgres::PgBroker::with_config(config).await.unwrap();
    let app = dramaturg::app(worker.clone()).actor::<Numbered>().build().unwrap();
    let jobs: Vec<Numbered> = (0..100).map(|seq| Numbered { seq }).collect();
    app.send_many(&jobs).await.unwrap();
    let report = Worker::new(app).concurrency(8).run_until_drained(Duration::from_secs(60)).await.unwrap();
    assert_eq!(report.succeeded, 100);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let told = captured.count("cannot vacuum it");
    assert_eq!(told, 1, "told once that it cannot vacuum");
    drop(worker);
    let drop_role = format!("DROP OWNED BY \"{role}\"; DROP ROLE \"{role}\"");
    sqlx::raw_sql(&drop_role).execute(owner.pool()).await.unwrap();
}
