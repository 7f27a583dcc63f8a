//! Periodic jobs and unique jobs against the real Redis: three worker
//! processes enqueue each tick of a 1-second schedule once, one of them
//! SIGKILLed and restarted; skipped and caught-up ticks after a 5-second
//! stop; eight concurrent senders in two processes enqueue one unique
//! message; a uniqueness key is released after success, a final failure
//! (not a retried one) and an abort, and lapses after its TTL when the
//! worker holding it is killed.

#![cfg(all(feature = "redis", feature = "schedule"))]
#![allow(clippy::unwrap_used)] // Tests may panic on the unexpected.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use dramaturg::abort::{abort, AbortOptions};
use dramaturg::middleware::names::AGE_LIMIT;
use dramaturg::prelude::*;
use dramaturg::schedule::unique::Unique;
use dramaturg::schedule::{Missed, Periodic, Schedule, UniqueJobs, PERIODIC_TICK_MS};
use dramaturg::{BoxError, Broker, EnqueueError, MessageId};
use serde::{Deserialize, Serialize};

const REDIS: &str = "redis://127.0.0.1:6379";

/// Logs the tick it was sent for and its own id: `tick <ms> <id>`.
#[derive(Actor, Serialize, Deserialize)]
#[actor(queue = "ticks")]
struct Tick {
    log: String,
}

impl Tick {
    async fn perform(self, ctx: &Context) -> Result<(), BoxError> {
        let tick = ctx.options().option(PERIODIC_TICK_MS)?.ok_or("a tick without its time")?;
        support::append(&self.log, &format!("tick {tick} {}", ctx.id()));
        Ok(())
    }
}

/// The ticks logged in `log`, each with the distinct ids of its messages
/// (a message run twice after a crash is one id).
fn ticks(log: &Path) -> BTreeMap<u64, BTreeSet<String>> {
    let mut ticks: BTreeMap<u64, BTreeSet<String>> = BTreeMap::new();
    for line in support::logged(log, "tick ") {
        let fields: Vec<&str> = line.split(' ').collect();
        ticks.entry(fields[1].parse().unwrap()).or_default().insert(fields[2].to_owned());
    }
    ticks
}

/// An app with a 1-second schedule of [`Tick`] (a grace of 1 s) under
/// `missed`, on the Redis namespace `ns`.
async fn periodic_app(ns: &str, log: &str, missed: Missed) -> App {
    let broker = support::redis_broker(REDIS, ns).await;
    let schedule = Schedule::interval("every-second", Duration::from_secs(1), Tick { log: log.to_owned() })
        .unwrap()
        .grace(Duration::from_secs(1))
        .unwrap()
        .missed(missed)
        .unwrap();
    let periodic = Periodic::for_broker(&broker).unwrap().schedule(schedule);
    dramaturg::app(broker).insert_before(AGE_LIMIT, periodic).actor::<Tick>().build().unwrap()
}

/// Runs what is left in `ns`'s queues with no schedule of its own.
async fn drain(ns: &str) {
    let app = dramaturg::app(support::redis_broker(REDIS, ns).await).actor::<Tick>().build().unwrap();
    Worker::new(app).run_until_drained(Duration::from_secs(30)).await.unwrap();
}

const FLEET_CHILD: &str = "periodic_fleet_child";

/// A worker child with the 1-second schedule, `ns|log`, until SIGTERM.
#[test]
fn periodic_fleet_child() {
    support::run_worker_child(|spec| async move {
        let (ns, log) = spec.split_once('|').unwrap();
        periodic_app(ns, log, Missed::Skip).await
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_worker_processes_enqueue_each_tick_once_while_one_is_killed_and_restarted() {
    if support::is_child() {
        return;
    }
    let ns = support::namespace();
    let log = support::temp_log("periodic-fleet");
    let spec = format!("{ns}|{}", log.display());
    let dir = std::env::temp_dir();
    let spawn = |n: usize| support::KillOnDrop(support::spawn_worker(FLEET_CHILD, &dir, 9200 + n, &spec));
    let mut workers = vec![spawn(1), spawn(2), spawn(3)];
    tokio::time::sleep(Duration::from_secs(5)).await;
    workers[0].0.kill().unwrap(); // SIGKILL
    workers[0].0.wait().unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    workers[0] = spawn(4);
    tokio::time::sleep(Duration::from_secs(7)).await;
    for worker in &mut workers {
        support::terminate(&mut worker.0);
    }
    drain(&ns).await;

    let ticks = ticks(&log);
    let twice: Vec<_> = ticks.iter().filter(|(_, ids)| ids.len() > 1).collect();
    assert!(twice.is_empty(), "ticks enqueued more than once: {twice:?}");
    let (first, last) = (*ticks.keys().next().unwrap(), *ticks.keys().next_back().unwrap());
    assert!(last - first >= 10_000, "ticks from {first} to {last} only");
    let missing: Vec<u64> = (first..=last).step_by(1000).filter(|tick| !ticks.contains_key(tick)).collect();
    assert!(missing.is_empty(), "ticks never enqueued: {missing:?} (of {first}..={last})");
    println!("{} ticks, each enqueued once, by three workers (one killed and restarted)", ticks.len());
}

const SKEWED_CHILD: &str = "periodic_skewed_child";

/// A worker child with the 1-second schedule whose clock is skewed by
/// libfaketime, `ns|log`, until SIGTERM.
#[test]
fn periodic_skewed_child() {
    let Ok(spec) = std::env::var(support::CHILD) else { return };
    let (ns, log) = spec.split_once('|').unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async {
        let app = periodic_app(ns, log, Missed::Skip).await;
        Worker::new(app).run_until_signal().await.unwrap();
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_whose_clock_is_30_s_fast_ticks_by_the_redis_clock() {
    if support::is_child() {
        return;
    }
    let ns = support::namespace();
    let log = support::temp_log("periodic-skewed");
    let clock = support::redis_broker(REDIS, &ns).await;
    let started = clock.now_ms();
    let mut child =
        support::KillOnDrop(support::spawn_skewed(SKEWED_CHILD, &format!("{ns}|{}", log.display()), "+30s"));
    tokio::time::sleep(Duration::from_secs(4)).await;
    support::terminate(&mut child.0);
    let stopped = clock.now_ms();
    drain(&ns).await;
    let ticks = ticks(&log);
    assert!(ticks.len() >= 2, "the skewed worker enqueued {ticks:?}");
    // By its own clock, the ticks would have been 30 s ahead.
    let off: Vec<_> = ticks.keys().filter(|t| **t + 1000 < started || **t > stopped).collect();
    assert!(off.is_empty(), "ticks outside {started}..={stopped} by the Redis clock: {off:?}");
}

/// Runs a worker with the 1-second schedule for 3 s, stops it for 5 s,
/// runs another for 3 s; returns the ticks enqueued and the broker's time
/// when the first had stopped and when the second started.
async fn stop_for_five_seconds(missed: Missed) -> (BTreeMap<u64, BTreeSet<String>>, u64, u64) {
    let ns = support::namespace();
    let log = support::temp_log("periodic-stop");
    let app = periodic_app(&ns, log.to_str().unwrap(), missed).await;
    let run_for = |period: Duration| {
        let worker = Worker::new(app.clone());
        let shutdown = worker.shutdown_handle();
        async move {
            let running = tokio::spawn(worker.run());
            tokio::time::sleep(period).await;
            shutdown.shutdown();
            running.await.unwrap().unwrap();
        }
    };
    run_for(Duration::from_secs(3)).await;
    let stopped = app.broker().now_ms();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let restarted = app.broker().now_ms();
    run_for(Duration::from_secs(3)).await;
    drain(&ns).await;
    (ticks(&log), stopped, restarted)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skipped_ticks_stay_skipped_after_a_five_second_stop() {
    if support::is_child() {
        return;
    }
    let (ticks, stopped, restarted) = stop_for_five_seconds(Missed::Skip).await;
    // Neither the stopped worker's (up to when it stopped) nor within the
    // grace of the restart: missed, and skipped.
    let skipped: Vec<_> = ticks.keys().filter(|t| **t > stopped + 1000 && **t < restarted - 1000).collect();
    assert!(skipped.is_empty(), "ticks missed during the stop were enqueued: {skipped:?}");
    assert!(ticks.keys().any(|t| *t > restarted), "ticks go on after the restart: {ticks:?}");
    assert!(ticks.values().all(|ids| ids.len() == 1), "{ticks:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missed_ticks_are_caught_up_to_the_bound_after_a_five_second_stop() {
    if support::is_child() {
        return;
    }
    let (ticks, stopped, restarted) = stop_for_five_seconds(Missed::CatchUp { max: 2 }).await;
    // About four ticks fell due during the stop, more than a grace before
    // the restart: the latest two of them are enqueued, the others not.
    let missed: Vec<u64> = (stopped / 1000 + 1..).map(|s| s * 1000).take_while(|t| *t < restarted - 1000).collect();
    assert!(missed.len() >= 3, "the stop was too short: {stopped}..{restarted}");
    let caught_up: Vec<u64> = missed.iter().copied().filter(|t| ticks.contains_key(t)).collect();
    let latest: Vec<u64> = missed[missed.len() - caught_up.len().max(1)..].to_vec();
    assert!(
        (1..=2).contains(&caught_up.len()) && caught_up == latest,
        "of the ticks missed {missed:?}, {caught_up:?} were enqueued, not the latest two"
    );
    assert!(ticks.keys().any(|t| *t > restarted), "ticks go on after the restart: {ticks:?}");
    assert!(ticks.values().all(|ids| ids.len() == 1), "{ticks:?}");
}

/// An export, unique while queued or running (for at most a minute);
/// `mode` says what it does: `ok`, `fail` (every attempt, with one retry
/// 1.5 s later), or `hang` (logs `started` and sleeps).
#[derive(Actor, Serialize, Deserialize)]
#[actor(
    queue = "exports",
    max_retries = 1,
    min_backoff = "1500ms",
    max_backoff = "1500ms",
    option(unique = "queued_or_running", unique_ttl_ms = 60000)
)]
struct Export {
    customer: u64,
    mode: String,
    log: String,
}

impl Export {
    async fn perform(self, ctx: &Context) -> Result<(), BoxError> {
        support::append(&self.log, &format!("attempt {}", ctx.retries()));
        match self.mode.as_str() {
            "fail" => Err("the export failed".into()),
            "hang" => {
                support::append(&self.log, "started");
                tokio::time::sleep(Duration::from_secs(60)).await;
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

async fn unique_app(ns: &str) -> App {
    let broker = support::redis_broker(REDIS, ns).await;
    let unique = UniqueJobs::for_broker(&broker).unwrap();
    dramaturg::app(broker).insert_before(AGE_LIMIT, unique).actor::<Export>().build().unwrap()
}

fn export(mode: &str, log: &Path) -> Export {
    Export { customer: 42, mode: mode.to_owned(), log: log.display().to_string() }
}

/// Sends `message`, expecting a duplicate of `existing`.
async fn assert_duplicate(app: &App, message: &Export, existing: MessageId) {
    match message.send(app).await {
        Err(EnqueueError::Duplicate { existing: holder, .. }) => assert_eq!(holder, existing),
        other => panic!("expected a duplicate of {existing}, got {other:?}"),
    }
}

const SENDER_CHILD: &str = "unique_sender_child";

/// Four concurrent sends of one export at a given time, `ns|log|at_ms`;
/// logs `sent <id>` or `duplicate <existing>` for each.
#[test]
fn unique_sender_child() {
    let Some((_, spec)) = support::child_spec() else { return };
    let parts: Vec<&str> = spec.split('|').collect();
    let (ns, log, at_ms): (&str, &str, u64) = (parts[0], parts[1], parts[2].parse().unwrap());
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async {
        let app = unique_app(ns).await;
        let now = now_ms();
        assert!(now < at_ms, "the child started too late to send together");
        tokio::time::sleep(Duration::from_millis(at_ms - now)).await;
        let mut sends = tokio::task::JoinSet::new();
        for _ in 0..4 {
            let (app, log) = (app.clone(), log.to_owned());
            sends.spawn(async move {
                let message = Export { customer: 7, mode: "ok".into(), log: log.clone() };
                match message.send(&app).await {
                    Ok(sent) => support::append(&log, &format!("sent {}", sent.id())),
                    Err(EnqueueError::Duplicate { existing, .. }) => {
                        support::append(&log, &format!("duplicate {existing}"));
                    }
                    Err(error) => panic!("{error}"),
                }
            });
        }
        while let Some(done) = sends.join_next().await {
            done.unwrap();
        }
    });
}

fn now_ms() -> u64 {
    u64::try_from(SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_concurrent_senders_in_two_processes_enqueue_one_message() {
    if support::is_child() {
        return;
    }
    let ns = support::namespace();
    let log = support::temp_log("unique-senders");
    let spec = format!("{ns}|{}|{}", log.display(), now_ms() + 3000);
    let dir = std::env::temp_dir();
    let mut senders: Vec<_> =
        (0..2).map(|n| support::KillOnDrop(support::spawn_worker(SENDER_CHILD, &dir, 9300 + n, &spec))).collect();
    for sender in &mut senders {
        let status = sender.0.wait().unwrap();
        assert!(status.success(), "a sender failed: {status}");
    }
    let sent = support::logged(&log, "sent ");
    let duplicates = support::logged(&log, "duplicate ");
    assert_eq!(sent.len(), 1, "exactly one send enqueued: {sent:?}");
    assert_eq!(duplicates.len(), 7, "{duplicates:?}");
    let id = sent[0].split(' ').nth(1).unwrap();
    assert!(
        duplicates.iter().all(|line| line.split(' ').nth(1) == Some(id)),
        "each names the one sent: {duplicates:?}"
    );
    let pids: BTreeSet<_> = sent.iter().chain(&duplicates).map(|line| line.split(' ').nth(2).unwrap()).collect();
    assert_eq!(pids.len(), 2, "both processes sent");
    let app = unique_app(&ns).await;
    assert_eq!(app.stats(&app.queues()[0]).await.unwrap().ready, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_is_released_after_success_and_after_an_abort() {
    if support::is_child() {
        return;
    }
    let ns = support::namespace();
    let log = support::temp_log("unique-release");
    let app = unique_app(&ns).await;

    let first = export("ok", &log).send(&app).await.unwrap();
    assert_duplicate(&app, &export("ok", &log), first.id()).await;
    let report = Worker::new(app.clone()).run_until_drained(Duration::from_secs(20)).await.unwrap();
    assert_eq!(report.succeeded, 1);
    let second = export("ok", &log).send(&app).await.expect("released after success");

    abort(&app, second, AbortOptions::abort()).await.unwrap();
    assert_duplicate(&app, &export("ok", &log), second.id()).await;
    let report = Worker::new(app.clone()).run_until_drained(Duration::from_secs(20)).await.unwrap();
    assert_eq!((report.succeeded, report.aborted), (0, 1), "{report:?}");
    export("ok", &log).send(&app).await.expect("released after the abort");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_is_kept_through_a_retry_and_released_after_the_final_failure() {
    if support::is_child() {
        return;
    }
    let ns = support::namespace();
    let log = support::temp_log("unique-failure");
    let app = unique_app(&ns).await;
    let first = export("fail", &log).send(&app).await.unwrap();
    let worker = Worker::new(app.clone());
    let shutdown = worker.shutdown_handle();
    let running = tokio::spawn(worker.run());
    support::wait_for("the first attempt", Duration::from_secs(20), || !support::logged(&log, "attempt 0").is_empty())
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Failed once, waiting for its retry: still queued.
    assert_duplicate(&app, &export("fail", &log), first.id()).await;
    support::wait_for("the retry", Duration::from_secs(20), || !support::logged(&log, "attempt 1").is_empty()).await;
    app.join(Duration::from_secs(20)).await.unwrap();
    shutdown.shutdown();
    let report = running.await.unwrap().unwrap();
    assert_eq!((report.retried, report.failed), (1, 1), "{report:?}");
    export("fail", &log).send(&app).await.expect("released after the final failure");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_keys_free_when_a_worker_takes_the_message_and_fixed_ones_hold_for_their_period() {
    if support::is_child() {
        return;
    }
    let ns = support::namespace();
    let log = support::temp_log("unique-scopes");
    let app = unique_app(&ns).await;

    let fixed =
        SendOptions::default().with_options(|o| Unique::for_duration(Duration::from_secs(60)).key("daily").apply(o));
    let daily = Export { customer: 1, mode: "ok".into(), log: log.display().to_string() };
    let first = daily.send_with(&app, fixed.clone()).await.unwrap();
    let report = Worker::new(app.clone()).run_until_drained(Duration::from_secs(20)).await.unwrap();
    assert_eq!(report.succeeded, 1);
    // It succeeded, and its key holds for the period, for any arguments.
    let other = Export { customer: 2, ..daily };
    match other.send_with(&app, fixed).await {
        Err(EnqueueError::Duplicate { existing, .. }) => assert_eq!(existing, first.id()),
        sent => panic!("a fixed key holds for its period: {sent:?}"),
    }

    let queued = SendOptions::default().with_options(|o| Unique::while_queued().apply(o));
    let first = export("hang", &log).send_with(&app, queued.clone()).await.unwrap();
    assert_duplicate(&app, &export("hang", &log), first.id()).await;
    let worker = Worker::new(app.clone()).grace_period(Duration::from_millis(100));
    let shutdown = worker.shutdown_handle();
    let running = tokio::spawn(worker.run());
    support::wait_for("the export to start", Duration::from_secs(20), || !support::logged(&log, "started").is_empty())
        .await;
    // Running, no longer queued: another is accepted.
    export("hang", &log).send_with(&app, queued).await.expect("released when a worker took it");
    shutdown.shutdown();
    running.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_that_fails_after_its_claim_releases_the_key() {
    if support::is_child() {
        return;
    }
    let app = unique_app(&support::namespace()).await;
    // Over the app's 1 MiB limit: refused after the key was claimed.
    let huge = Export { customer: 9, mode: "ok".into(), log: "x".repeat(2 << 20) };
    for _ in 0..2 {
        match huge.send(&app).await {
            Err(EnqueueError::TooLarge { .. }) => {}
            other => panic!("expected TooLarge (a key left held would make it a Duplicate): {other:?}"),
        }
    }
}

const HOLDER_CHILD: &str = "unique_holder_child";

/// A worker child that runs exports, `ns`, until killed.
#[test]
fn unique_holder_child() {
    support::run_worker_child(|ns| async move { unique_app(&ns).await });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_held_by_a_killed_worker_lapses_after_its_ttl() {
    if support::is_child() {
        return;
    }
    let ns = support::namespace();
    let log = support::temp_log("unique-crash");
    let app = unique_app(&ns).await;
    let ttl = Duration::from_secs(4);
    let options =
        SendOptions::default().with_options(|o| o.with_option(dramaturg::schedule::unique::UNIQUE_TTL_MS, 4000));
    let sent_at = Instant::now();
    let first = export("hang", &log).send_with(&app, options.clone()).await.unwrap();
    let mut holder = support::KillOnDrop(support::spawn_worker(HOLDER_CHILD, &std::env::temp_dir(), 9400, &ns));
    support::wait_for("the export to start", Duration::from_secs(20), || !support::logged(&log, "started").is_empty())
        .await;
    holder.0.kill().unwrap(); // SIGKILL: nothing releases the key
    holder.0.wait().unwrap();
    if sent_at.elapsed() < ttl - Duration::from_millis(500) {
        assert_duplicate(&app, &export("hang", &log), first.id()).await;
    }
    tokio::time::sleep((ttl + Duration::from_millis(200)).saturating_sub(sent_at.elapsed())).await;
    let second = export("hang", &log).send_with(&app, options).await.expect("the key lapsed after its TTL");
    assert_ne!(second.id(), first.id());
}

#[cfg(feature = "amqp")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rabbitmq_broker_needs_a_redis_store() {
    if support::is_child() {
        return;
    }
    let broker = dramaturg::amqp::AmqpBroker::connect("amqp://guest:guest@127.0.0.1:5672/%2f").await.unwrap();
    let error = UniqueJobs::for_broker(&broker).unwrap_err();
    assert!(error.to_string().contains("RedisStore"), "{error}");
    let error = Periodic::for_broker(&broker).unwrap_err();
    assert!(error.to_string().contains("RedisStore"), "{error}");
    // A store only this process sees cannot serve a fleet either.
    let local = std::sync::Arc::new(dramaturg::MemoryStore::new());
    let built = dramaturg::app(broker).insert_before(AGE_LIMIT, UniqueJobs::new(local)).build();
    assert!(built.unwrap_err().to_string().contains("only this process sees"));
}

/// A schedule the store has never seen (a new deployment) starts with its
/// next tick: its catch-up policy does not send the ticks from before it
/// existed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_schedule_catches_up_nothing_from_before_it_existed() {
    if support::is_child() {
        return;
    }
    let ns = support::namespace();
    let log = support::temp_log("periodic-new");
    let app = periodic_app(&ns, log.to_str().unwrap(), Missed::CatchUp { max: 5 }).await;
    let started = app.broker().now_ms();
    let worker = Worker::new(app.clone());
    let shutdown = worker.shutdown_handle();
    let running = tokio::spawn(worker.run());
    tokio::time::sleep(Duration::from_millis(2500)).await;
    shutdown.shutdown();
    running.await.unwrap().unwrap();
    drain(&ns).await;
    let ticks = ticks(&log);
    assert!(!ticks.is_empty(), "the schedule ticked");
    let older: Vec<_> = ticks.keys().filter(|t| **t + 1000 < started).collect();
    assert!(older.is_empty(), "ticks from before the schedule existed were caught up: {older:?} (started {started})");
}

/// A message worth running only within 2 s of its send.
#[derive(Actor, Serialize, Deserialize)]
#[actor(queue = "ticks", max_age = "2s")]
struct ShortLived;

impl ShortLived {
    async fn perform(self, _ctx: &Context) -> Result<(), BoxError> {
        Ok(())
    }
}

/// Settings that would drop ticks or fail them at random are refused when
/// the schedule or the app is built.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graces_and_jitters_that_would_lose_ticks_are_refused() {
    if support::is_child() {
        return;
    }
    let tick = || Tick { log: String::new() };
    let every = |d| Schedule::interval("s", d, tick());
    let error = every(Duration::from_secs(1)).unwrap().grace(Duration::ZERO).unwrap_err();
    assert!(error.to_string().contains("grace"), "{error}");
    let error = every(Duration::from_secs(1)).unwrap().jitter(Duration::from_secs(100 * 365 * 86_400)).unwrap_err();
    assert!(error.to_string().contains("MAX_DELAY"), "{error}");
    assert!(every(Duration::from_secs(u64::MAX)).is_err(), "an interval of 584 billion years");
    assert!(Schedule::interval("   ", Duration::from_secs(1), tick()).is_err(), "a blank name");

    // A jitter as long as the actor's max_age would have some ticks skipped as too old.
    let broker = support::redis_broker(REDIS, &support::namespace()).await;
    let schedule = Schedule::interval("s", Duration::from_secs(1), ShortLived).unwrap().jitter(Duration::from_secs(5));
    let periodic = Periodic::for_broker(&broker).unwrap().schedule(schedule.unwrap());
    let refused = dramaturg::app(broker).insert_before(AGE_LIMIT, periodic).actor::<ShortLived>().build();
    let error = refused.expect_err("a jitter over max_age is refused");
    assert!(error.to_string().contains("max_age"), "{error}");
}

/// Two messages of one batch with the same key: a typed error that names
/// both (neither was sent), and no key is left held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_with_two_messages_of_one_key_is_refused_naming_both() {
    if support::is_child() {
        return;
    }
    let ns = support::namespace();
    let app = unique_app(&ns).await;
    let log = support::temp_log("unique-batch");
    // The first and the last are the same export (customer 42); the middle one is another.
    let batch = [export("ok", &log), Export { customer: 43, ..export("ok", &log) }, export("ok", &log)];
    match app.send_many(&batch).await {
        Err(EnqueueError::DuplicateInBatch { key, .. }) => {
            assert!(key.as_str().starts_with("unique:export:args:"), "the key of the default kind: {key:?}");
        }
        other => panic!("expected DuplicateInBatch, got {other:?}"),
    }
    assert_eq!(app.stats(&app.queues()[0]).await.unwrap().ready, 0, "nothing of the batch was sent");
    export("ok", &log).send(&app).await.expect("no key is left held");
    Worker::new(app).run_until_drained(Duration::from_secs(30)).await.unwrap();
}

/// Keys and TTLs that could not work are refused at send, with the
/// middleware's error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_or_oversized_keys_and_zero_ttls_are_refused() {
    if support::is_child() {
        return;
    }
    let ns = support::namespace();
    let app = unique_app(&ns).await;
    let log = support::temp_log("unique-bad");
    for (what, unique) in [
        ("an empty key", Unique::while_queued().key("")),
        ("a key of 1 MiB", Unique::while_queued().key("k".repeat(1 << 20))),
        ("a TTL of 0", Unique::for_duration(Duration::ZERO)),
        ("a TTL under 1 ms", Unique::while_queued().ttl(Duration::from_micros(500))),
    ] {
        let options = SendOptions::default().with_options(|o| unique.apply(o));
        match export("ok", &log).send_with(&app, options).await {
            Err(EnqueueError::Rejected { middleware, source }) => {
                assert_eq!(middleware, dramaturg::schedule::UNIQUE_JOBS, "{what}");
                assert!(source.is::<dramaturg::schedule::unique::UniqueConfigError>(), "{what}: {source}");
            }
            other => panic!("{what}: expected a rejection, got {other:?}"),
        }
    }
    assert_eq!(app.stats(&app.queues()[0]).await.unwrap().ready, 0);
}
