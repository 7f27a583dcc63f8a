//! The subcommands: each asks the library, and returns what to print as
//! JSON and as text.

use std::time::{Duration, SystemTime};

use dramaturg::abort::{abort, AbortOptions, Abortable};
use dramaturg::encoder::encode_value;
use dramaturg::{
    App, AppBuilder, DeadLetterView, Message, MessageId, QueueStats, Replay, ReplayReport, ReplayRetries, WorkerInfo,
};
use serde_json::{json, Value};

use crate::cli::{Command, Dead, Which};
use crate::failure::{Exit, Failure};
use crate::table::Table;

/// What a command has to say: JSON for scripts, text for people.
#[derive(Debug)]
pub(crate) struct Output {
    pub(crate) json: Value,
    pub(crate) text: String,
}

impl Output {
    fn new(json: Value, text: impl Into<String>) -> Self {
        Self { json, text: text.into() }
    }
}

/// Runs `command` against `app`'s broker.
pub(crate) async fn run(app: &App, command: Command) -> Result<Output, Failure> {
    match command {
        Command::Queues { queues } => queue_stats(app, queues).await,
        Command::Dead(dead) => dead_letters(app, dead).await,
        Command::Abort { id, cancel, grace, ttl, store } => {
            request_abort(app, &id, cancel, grace, ttl, store.as_deref()).await
        }
        Command::Purge { queue } => {
            let purged = app.admin()?.purge(&queue).await?;
            Ok(Output::new(json!({ "queue": queue, "purged": purged }), format!("purged {purged} from {queue}\n")))
        }
        Command::Pause { queue } => {
            app.pause(&queue).await?;
            Ok(Output::new(json!({ "queue": queue, "paused": true }), format!("paused {queue}\n")))
        }
        Command::Resume { queue } => {
            app.resume(&queue).await?;
            Ok(Output::new(json!({ "queue": queue, "paused": false }), format!("resumed {queue}\n")))
        }
        Command::Workers => workers(app).await,
        Command::Send { actor, queue, args, delay } => send(app, actor, queue, &args, delay).await,
        // The abort store, if any, is in `app` already (see main).
        Command::Web { bind, read_only, token, queues, store: _ } => {
            let address = crate::web::serve(app, bind, read_only, token, queues).await?;
            Ok(Output::new(json!({ "stopped": true, "address": address.to_string() }), "dashboard stopped\n"))
        }
    }
}

async fn queue_stats(app: &App, mut queues: Vec<String>) -> Result<Output, Failure> {
    let admin = app.admin()?;
    if queues.is_empty() {
        queues = admin.queues().await?;
    }
    let mut rows = Vec::with_capacity(queues.len());
    let mut table = Table::new(vec!["QUEUE", "READY", "DELAYED", "IN FLIGHT", "DEAD", "PAUSED"]);
    let mut in_flight_unknown = false;
    for queue in queues {
        let stats = admin.stats(&queue).await?;
        let QueueStats { ready, delayed, dead, paused, .. } = stats;
        // This process consumes nothing: a count of its own deliveries
        // would say 0 whatever the workers hold.
        let in_flight = stats.fleet_in_flight();
        in_flight_unknown |= in_flight.is_none();
        let count = |n: u64| n.to_string();
        let cells = [count(ready), count(delayed), in_flight.map_or_else(|| "?".to_owned(), count), count(dead)];
        table.row([vec![queue.clone()], cells.to_vec(), vec![if paused { "yes" } else { "no" }.to_owned()]].concat());
        rows.push(json!({
            "queue": queue, "ready": ready, "delayed": delayed, "in_flight": in_flight, "dead": dead, "paused": paused,
        }));
    }
    let mut text = table.to_string();
    if in_flight_unknown {
        text.push_str(
            "? RabbitMQ does not tell clients how many deliveries are unacknowledged (its management API does)\n",
        );
    }
    Ok(Output::new(Value::Array(rows), text))
}

async fn dead_letters(app: &App, dead: Dead) -> Result<Output, Failure> {
    match dead {
        Dead::List { queue, limit } => {
            let views = app.dead_letter_views(&queue.queue, limit).await?;
            let mut table = Table::new(vec!["ID", "ACTOR", "RETRIES", "DEAD SINCE", "REASON"]);
            for view in &views {
                let (id, actor, retries) = match &view.message {
                    Ok(m) => (m.id.to_string(), m.actor.clone(), m.retries.to_string()),
                    Err(_) => (view.key.clone(), "(undecodable)".to_owned(), "-".to_owned()),
                };
                table.row(vec![id, actor, retries, timestamp(view.at), one_line(&view.reason, 80)]);
            }
            Ok(Output::new(Value::Array(views.iter().map(view_json).collect()), table.to_string()))
        }
        Dead::Show { queue, id } => {
            let view = find(app, &queue.queue, &id).await?;
            let json = view_json(&view);
            let text = serde_json::to_string_pretty(&json).map_err(|e| Failure::new(Exit::Broker, e.to_string()))?;
            Ok(Output::new(json, text + "\n"))
        }
        Dead::Replay { queue, which, reset_retries } => {
            let target = target(app, &queue.queue, &which).await?;
            let retries = if reset_retries { ReplayRetries::Reset } else { ReplayRetries::Keep };
            let report = app.replay_dead_letters(&queue.queue, target, retries).await.map_err(|e| match e {
                dramaturg::ReplayError::Broker(error) => Failure::from(error),
                other => Failure::new(Exit::Broker, other.to_string()),
            })?;
            Ok(replayed(&queue.queue, &report))
        }
        Dead::Delete { queue, which } => {
            let target = target(app, &queue.queue, &which).await?;
            let deleted = app.dead_letters()?.delete(&queue.queue, target).await?;
            Ok(Output::new(
                json!({ "queue": queue.queue, "deleted": deleted }),
                format!("deleted {deleted} dead letters of {}\n", queue.queue),
            ))
        }
    }
}

/// The dead letter `id` (a message id or a key) of `queue`.
async fn find(app: &App, queue: &str, id: &str) -> Result<DeadLetterView, Failure> {
    app.find_dead_letter(queue, id).await?.ok_or_else(|| {
        Failure::new(Exit::NotFound, format!("no dead letter of queue {queue:?} has the id or key {id:?}"))
    })
}

/// Which dead letters a replay or delete is about: one, found first (so
/// that an unknown id is an error, not "0 done"), or all.
async fn target(app: &App, queue: &str, which: &Which) -> Result<Replay, Failure> {
    match &which.id {
        Some(id) => Ok(Replay::One(find(app, queue, id).await?.key)),
        None => Ok(Replay::All),
    }
}

fn replayed(queue: &str, report: &ReplayReport) -> Output {
    let undecodable: Vec<Value> =
        report.undecodable.iter().map(|(key, why)| json!({ "key": key, "error": why })).collect();
    let mut text = format!("replayed {} dead letters of {queue}\n", report.replayed);
    for (key, why) in &report.undecodable {
        text.push_str(&format!("left {key}: {}\n", one_line(why, 200)));
    }
    Output::new(json!({ "queue": queue, "replayed": report.replayed, "undecodable": undecodable }), text)
}

/// A dead letter as JSON: the decoded message, or why it does not decode.
fn view_json(view: &DeadLetterView) -> Value {
    let mut json = json!({ "key": view.key, "reason": view.reason, "dead_lettered_at": timestamp(view.at) });
    match &view.message {
        Ok(m) => {
            let enqueued_at = SystemTime::UNIX_EPOCH + Duration::from_millis(m.enqueued_at_ms);
            json["id"] = json!(m.id.to_string());
            json["actor"] = json!(m.actor);
            json["queue"] = json!(m.queue);
            json["args"] = m.args.clone();
            json["retries"] = json!(m.retries);
            json["options"] = serde_json::to_value(&m.options).unwrap_or(Value::Null);
            json["enqueued_at"] = json!(timestamp(enqueued_at));
        }
        Err(why) => json["error"] = json!(why),
    }
    json
}

async fn request_abort(
    app: &App,
    id: &str,
    cancel: bool,
    grace: Duration,
    ttl: Duration,
    store: Option<&str>,
) -> Result<Output, Failure> {
    let id: MessageId = id.parse().map_err(|e: dramaturg::ParseMessageIdError| Failure::usage(e.to_string()))?;
    let options = if cancel { AbortOptions::cancel() } else { AbortOptions::abort().with_grace(grace) }.with_ttl(ttl);
    let result = match store {
        Some(url) => {
            let builder = with_abort_store(dramaturg::app_shared(std::sync::Arc::clone(app.broker())), url).await?;
            abort(&builder.build().map_err(|e| Failure::usage(e.to_string()))?, id, options).await
        }
        None => abort(app, id, options).await,
    };
    result.map_err(|e| match e {
        dramaturg::abort::AbortError::EventsNotShared { .. } => Failure::usage(
            "this broker keeps no abort requests of its own (RabbitMQ): give --store redis://… or postgres://… \
             (DRAMATURG_ABORT_STORE), the store that your workers' abort middleware uses",
        ),
        other => Failure::new(Exit::Broker, other.to_string()),
    })?;
    let mode = if cancel { "cancel" } else { "abort" };
    let grace_ms = if cancel { 0 } else { dramaturg::time::millis(grace) };
    Ok(Output::new(
        json!({ "id": id.to_string(), "mode": mode, "grace_ms": grace_ms, "ttl_ms": dramaturg::time::millis(ttl) }),
        format!("{mode} requested for {id}\n"),
    ))
}

/// `builder` with its abort requests kept in the Redis or PostgreSQL at
/// `url` (for brokers that keep none, RabbitMQ).
pub(crate) async fn with_abort_store(builder: AppBuilder, url: &str) -> Result<AppBuilder, Failure> {
    let failed = |e: dramaturg::StoreError| Failure::new(Exit::Broker, format!("cannot use the abort store: {e}"));
    let abortable = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Abortable::new(dramaturg::postgres::PgStore::connect(url).await.map_err(failed)?)
    } else {
        Abortable::new(dramaturg::redis::RedisStore::connect(url).await.map_err(failed)?)
    };
    Ok(builder.replace(dramaturg::middleware::names::ABORT, abortable))
}

async fn workers(app: &App) -> Result<Output, Failure> {
    let workers = app.admin()?.workers().await?;
    let now = app.broker().now_ms();
    let mut table = Table::new(vec!["WORKER", "LAST BEAT", "AGE", "HOLDS"]);
    let mut rows = Vec::with_capacity(workers.len());
    for WorkerInfo { id, last_beat, in_flight, .. } in workers {
        let beat_ms = last_beat.duration_since(SystemTime::UNIX_EPOCH).map_or(0, dramaturg::time::millis);
        let age = Duration::from_millis(now.saturating_sub(beat_ms));
        let holds: Vec<String> = in_flight.iter().map(|(queue, n)| format!("{queue}={n}")).collect();
        table.row(vec![
            id.clone(),
            timestamp(last_beat),
            format!("{:.1}s", age.as_secs_f64()),
            if holds.is_empty() { "-".to_owned() } else { holds.join(" ") },
        ]);
        rows.push(json!({
            "id": id,
            "last_beat": timestamp(last_beat),
            "last_beat_age_ms": dramaturg::time::millis(age),
            "in_flight": in_flight,
        }));
    }
    Ok(Output::new(Value::Array(rows), table.to_string()))
}

async fn send(app: &App, actor: String, queue: String, args: &str, delay: Option<Duration>) -> Result<Output, Failure> {
    let args: Value = serde_json::from_str(args).map_err(|e| Failure::usage(format!("--args is not JSON: {e}")))?;
    let bytes = encode_value(app.encoder(), &args).map_err(|e| Failure::usage(format!("--args: {e}")))?;
    app.broker().check_queue_name(&queue)?;
    let mut message = Message::new(queue.clone(), actor.clone(), bytes.into());
    message.enqueued_at_ms = app.broker().now_ms();
    let id = app.enqueue(message, delay).await.map_err(|e| match e {
        dramaturg::EnqueueError::Broker(error) => Failure::from(error),
        other => Failure::usage(other.to_string()),
    })?;
    Ok(Output::new(
        json!({ "id": id.to_string(), "actor": actor, "queue": queue }),
        format!("sent {id} to {actor} on {queue}\n"),
    ))
}

/// `at` in RFC 3339, UTC, to the millisecond.
fn timestamp(at: SystemTime) -> String {
    humantime::format_rfc3339_millis(at).to_string()
}

/// `text` on one line of at most `max` characters.
fn one_line(text: &str, max: usize) -> String {
    let flat: String = text.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    if flat.chars().count() <= max {
        return flat;
    }
    let mut cut: String = flat.chars().take(max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}
