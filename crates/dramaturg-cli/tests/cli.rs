//! The built `dramaturg` binary against the real Redis, RabbitMQ and
//! PostgreSQL, and a SQLite file: every
//! subcommand, in both output formats; bad URLs, bad input and unknown ids
//! give a clear error and a non-zero exit code.

#![allow(clippy::unwrap_used)] // Tests may panic on the unexpected.

use std::process::{Command, Output};
use std::sync::Arc;
use std::time::Duration;

use dramaturg::prelude::*;
use dramaturg::{Bounded, Broker, MessageId, Settlement};
use serde::{Deserialize, Serialize};
use serde_json::Value;

const REDIS: &str = "redis://127.0.0.1:6379";
const AMQP: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
const POSTGRES: &str = "postgres://root@127.0.0.1:5432/test";

/// The actor the workers of these tests run.
#[derive(Actor, Serialize, Deserialize)]
#[actor(queue = "cli-greet")]
struct Greet {
    name: String,
}

impl Greet {
    async fn perform(self, _ctx: &Context) -> Result<(), std::io::Error> {
        std::hint::black_box(self.name);
        Ok(())
    }
}

/// Something unique to this test run.
fn unique() -> String {
    MessageId::new().to_string().to_lowercase()
}

/// Runs `dramaturg` with `args` against `broker` (none: no --broker and no
/// DRAMATURG_BROKER).
fn cli(broker: Option<&str>, args: &[&str]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_dramaturg"));
    command.env_remove("DRAMATURG_BROKER").env_remove("DRAMATURG_ABORT_STORE");
    if let Some(broker) = broker {
        command.arg("--broker").arg(broker);
    }
    command.args(args).output().unwrap()
}

/// Runs a command that must succeed, returning its stdout.
fn ok(broker: &str, args: &[&str]) -> String {
    let output = cli(Some(broker), args);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "dramaturg {args:?} failed ({:?}): {stderr}", output.status.code());
    String::from_utf8(output.stdout).unwrap()
}

/// Runs a command with --json that must succeed, returning its JSON.
fn json(broker: &str, args: &[&str]) -> Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    serde_json::from_str(&ok(broker, &all)).unwrap()
}

/// Runs a command that must fail with `code`, returning its stderr.
fn fails(broker: Option<&str>, args: &[&str], code: i32) -> String {
    let output = cli(broker, args);
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(output.status.code(), Some(code), "dramaturg {args:?}: {stderr}");
    assert!(output.stdout.is_empty(), "{:?}", String::from_utf8_lossy(&output.stdout));
    assert!(stderr.starts_with("error: "), "{stderr}");
    stderr
}

/// The one queue's row of `queues --json`: ready and dead.
fn depth(broker: &str, queue: &str) -> (u64, u64) {
    let rows = json(broker, &["queues", queue]);
    let row = &rows.as_array().unwrap()[0];
    assert_eq!(row["queue"], queue);
    (row["ready"].as_u64().unwrap(), row["dead"].as_u64().unwrap())
}

/// Dead-letters `count` messages of `queue` with `reason`, as a worker
/// would.
async fn dead_letter(broker: &Arc<dyn Broker>, queue: &str, count: usize, reason: &str) {
    let mut consumer = broker.consume(queue, count).await.unwrap();
    for _ in 0..count {
        let delivery = tokio::time::timeout(Duration::from_secs(10), consumer.next()).await.unwrap().unwrap();
        delivery.settle(Settlement::DeadLetter(Bounded::reason(reason))).await.unwrap();
    }
    consumer.close().await.unwrap();
    // Leaves the Redis registry of workers: a consumer that is gone.
    broker.release().await.unwrap();
}

/// What both brokers must do: send, queues, dead list/show/replay/delete,
/// purge, in both formats, and not-found errors.
async fn dead_letter_round_trip(url: &str, queue: &str) {
    // send: three messages, by JSON arguments.
    let mut ids = Vec::new();
    for name in ["ada", "bob", "cy"] {
        let sent = json(url, &["send", "greet", "--queue", queue, "--args", &format!(r#"{{"name":"{name}"}}"#)]);
        assert_eq!(sent["queue"], queue);
        ids.push(sent["id"].as_str().unwrap().to_owned());
    }
    let text = ok(url, &["send", "greet", "-q", queue, "--args", r#"{"name":"dee"}"#]);
    assert!(text.starts_with("sent ") && text.contains(queue), "{text}");
    assert_eq!(depth(url, queue), (4, 0));

    // Two of them are dead-lettered, as a worker would.
    let broker = dramaturg::connect(url).await.unwrap();
    dead_letter(&broker, queue, 2, "boom: the mail server said no").await;
    assert_eq!(depth(url, queue), (2, 2));
    let table = ok(url, &["queues", queue]);
    let mut lines = table.lines();
    assert_eq!(
        lines.next().unwrap().split_whitespace().collect::<Vec<_>>(),
        ["QUEUE", "READY", "DELAYED", "IN", "FLIGHT", "DEAD", "PAUSED"]
    );
    let in_flight = if url.starts_with("amqp") { "?" } else { "0" };
    assert_eq!(lines.next().unwrap().split_whitespace().collect::<Vec<_>>(), [queue, "2", "0", in_flight, "2", "no"]);

    // dead list: decoded.
    let dead = json(url, &["dead", "list", "--queue", queue]);
    let dead = dead.as_array().unwrap();
    assert_eq!(dead.len(), 2);
    for letter in dead {
        assert_eq!(letter["actor"], "greet");
        assert_eq!(letter["queue"], queue);
        assert_eq!(letter["retries"], 0);
        assert_eq!(letter["reason"], "boom: the mail server said no");
        assert!(letter["args"]["name"].is_string(), "{letter}");
        assert!(letter["dead_lettered_at"].as_str().unwrap().ends_with('Z'), "{letter}");
    }
    let first = dead[0]["id"].as_str().unwrap().to_owned();
    let second = dead[1]["id"].as_str().unwrap().to_owned();
    assert!(ids.contains(&first) && ids.contains(&second));
    let table = ok(url, &["dead", "list", "-q", queue]);
    assert!(table.starts_with("ID "), "{table}");
    assert!(table.contains(&first) && table.contains("boom: the mail server said no"), "{table}");

    // dead show: by message id, and by the broker's key.
    let shown = json(url, &["dead", "show", "-q", queue, &first]);
    assert_eq!(shown["id"], first.as_str());
    let key = shown["key"].as_str().unwrap().to_owned();
    assert_eq!(json(url, &["dead", "show", "-q", queue, &key])["id"], first.as_str());
    let text = ok(url, &["dead", "show", "-q", queue, &first]);
    assert!(text.contains(&format!("\"id\": \"{first}\"")), "{text}");
    // An id in another form MessageId parses (here lower case) finds it too.
    assert_eq!(json(url, &["dead", "show", "-q", queue, &first.to_lowercase()])["id"], first.as_str());
    let missing = MessageId::new().to_string();
    let stderr = fails(Some(url), &["dead", "show", "-q", queue, &missing], 3);
    assert!(stderr.contains(&missing) && stderr.contains("no dead letter"), "{stderr}");
    fails(Some(url), &["dead", "replay", "-q", queue, &missing], 3);
    fails(Some(url), &["dead", "delete", "-q", queue, &missing], 3);
    fails(Some(url), &["dead", "replay", "-q", queue], 2); // an id or --all

    // dead replay: one, its retries reset.
    let replayed = json(url, &["dead", "replay", "-q", queue, &first, "--reset-retries"]);
    assert_eq!(replayed["replayed"], 1);
    assert_eq!(depth(url, queue), (3, 1));
    // dead delete: the rest.
    let text = ok(url, &["dead", "delete", "-q", queue, "--all"]);
    assert_eq!(text, format!("deleted 1 dead letters of {queue}\n"));
    assert_eq!(depth(url, queue), (3, 0));
    assert_eq!(json(url, &["dead", "list", "-q", queue]), Value::Array(Vec::new()));

    // purge: the ready messages go.
    assert_eq!(json(url, &["purge", queue])["purged"], 3);
    let text = ok(url, &["purge", queue]);
    assert_eq!(text, format!("purged 0 from {queue}\n"));
    assert_eq!(depth(url, queue), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_every_command() {
    let namespace = format!("cli-{}", unique());
    let url = format!("{REDIS}?namespace={namespace}");
    let queue = "cli-greet";
    dead_letter_round_trip(&url, queue).await;

    // queues without names: every queue with messages, here this one.
    ok(&url, &["send", "greet", "-q", queue, "--args", r#"{"name":"eve"}"#]);
    let all = json(&url, &["queues"]);
    assert_eq!(all.as_array().unwrap().len(), 1, "{all}");
    assert_eq!(all[0]["queue"], queue);
    assert_eq!(all[0]["in_flight"], 0, "Redis counts every worker's deliveries");

    // workers: a running worker, its last beat, what it consumes.
    let app =
        dramaturg::app(dramaturg::redis::RedisBroker::connect(&url).await.unwrap()).actor::<Greet>().build().unwrap();
    let worker = Worker::new(app.clone());
    let shutdown = worker.shutdown_handle();
    let running = tokio::spawn(worker.run());
    let mut workers = Value::Null;
    for _ in 0..100 {
        workers = json(&url, &["workers"]);
        // Registered first, its consumer a moment later.
        if workers.as_array().is_some_and(|w| w.len() == 1 && w[0]["in_flight"].get(queue).is_some()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(workers.as_array().unwrap().len(), 1, "{workers}");
    let worker = &workers.as_array().unwrap()[0];
    assert!(worker["in_flight"].as_object().unwrap().contains_key(queue), "{worker}");
    assert!(worker["last_beat_age_ms"].as_u64().unwrap() < 60_000, "{worker}");
    let table = ok(&url, &["workers"]);
    assert!(table.starts_with("WORKER") && table.contains(worker["id"].as_str().unwrap()), "{table}");

    // abort: a message sent for later is skipped when it falls due.
    let later = json(&url, &["send", "greet", "-q", queue, "--args", r#"{"name":"late"}"#, "--delay", "1s"]);
    let id = later["id"].as_str().unwrap();
    let requested = json(&url, &["abort", id, "--cancel"]);
    assert_eq!(requested["mode"], "cancel");
    assert_eq!(ok(&url, &["abort", id, "--grace", "2s"]), format!("abort requested for {id}\n"));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    app.join(Duration::from_secs(20)).await.unwrap();
    shutdown.shutdown();
    let report = running.await.unwrap().unwrap();
    assert_eq!((report.succeeded, report.aborted), (1, 1), "{report:?}");

    // Bad input.
    fails(Some(&url), &["abort", "not-an-id"], 2);
    let stderr = fails(Some(&url), &["send", "greet", "-q", queue, "--args", "{oops"], 2);
    assert!(stderr.contains("--args is not JSON"), "{stderr}");
    let stderr = fails(Some(&url), &["send", "greet", "-q", "", "--args", "{}"], 2);
    assert!(stderr.contains("queue name cannot be empty"), "{stderr}");

    pause_round_trip(&url, "cli-pause");
    // Python Dramatiq's layout cannot be paused: the broker says so.
    let dramatiq = format!("{REDIS}?protocol=dramatiq&namespace=cli-{}", unique());
    let stderr = fails(Some(&dramatiq), &["pause", "default"], 4);
    assert!(stderr.contains("paus"), "{stderr}");
}

/// `pause` and `resume` show in `queues`, in both formats.
fn pause_round_trip(url: &str, queue: &str) {
    ok(url, &["send", "greet", "--queue", queue, "--args", r#"{"name":"paused"}"#]);
    let paused = |rows: Value| rows.as_array().unwrap()[0]["paused"].as_bool().unwrap();
    assert!(!paused(json(url, &["queues", queue])));
    assert_eq!(json(url, &["pause", queue])["paused"], true);
    assert!(paused(json(url, &["queues", queue])));
    let table = ok(url, &["queues", queue]);
    assert!(table.contains("PAUSED") && table.lines().nth(1).unwrap().ends_with("yes"), "{table}");
    assert_eq!(ok(url, &["resume", queue]), format!("resumed {queue}\n"));
    assert!(!paused(json(url, &["queues", queue])));
    ok(url, &["purge", queue]);
}

/// Drops a PostgreSQL schema when dropped, at the end of its test.
struct DropSchema(String);

impl Drop for DropSchema {
    fn drop(&mut self) {
        let drop = format!("set client_min_messages = warning; drop schema if exists \"{}\" cascade", self.0);
        let _ = Command::new("psql").args(["-h", "127.0.0.1", "-U", "root", "test", "-qc", &drop]).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_every_command() {
    let schema = format!("cli_{}", unique().replace('-', "_"));
    let _drop = DropSchema(schema.clone());
    let url = format!("{POSTGRES}?schema={schema}");
    let queue = "cli-greet";
    dead_letter_round_trip(&url, queue).await;
    pause_round_trip(&url, "cli-pause");
    ok(&url, &["send", "greet", "-q", queue, "--args", r#"{"name":"eve"}"#]);
    let all = json(&url, &["queues"]);
    assert_eq!(all.as_array().unwrap().len(), 1, "{all}");
    assert_eq!(all[0]["queue"], queue);
    assert_eq!(all[0]["in_flight"], 0, "PostgreSQL counts every worker's deliveries");
    assert_eq!(json(&url, &["workers"]), Value::Array(Vec::new()), "nobody consumes");
}

/// Deletes a directory when dropped, at the end of its test.
struct RemoveDir(std::path::PathBuf);

impl Drop for RemoveDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_every_command() {
    let dir = RemoveDir(std::env::temp_dir().join(format!("dramaturg-cli-{}", unique())));
    std::fs::create_dir_all(&dir.0).unwrap();
    let url = format!("sqlite://{}", dir.0.join("jobs.db").display());
    let queue = "cli-greet";
    dead_letter_round_trip(&url, queue).await;
    pause_round_trip(&url, "cli-pause");
    ok(&url, &["send", "greet", "-q", queue, "--args", r#"{"name":"eve"}"#]);
    let all = json(&url, &["queues"]);
    assert_eq!(all.as_array().unwrap().len(), 1, "{all}");
    assert_eq!(all[0]["queue"], queue);
    assert_eq!(all[0]["in_flight"], 0, "SQLite counts every worker's deliveries");
    assert_eq!(json(&url, &["workers"]), Value::Array(Vec::new()), "nobody consumes");
    let stderr = fails(Some("sqlite::memory:"), &["queues"], 2);
    assert!(stderr.contains("memory://"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_every_command() {
    let queue = format!("cli-{}", unique());
    dead_letter_round_trip(AMQP, &queue).await;
    pause_round_trip(AMQP, &format!("cli-pause-{}", unique()));

    // What RabbitMQ cannot tell a client: the in-flight count (this
    // process's own would say 0 whatever the workers hold), which queues
    // exist, which workers run.
    let rows = json(AMQP, &["queues", &queue]);
    assert!(rows[0]["in_flight"].is_null(), "{rows}");
    let table = ok(AMQP, &["queues", &queue]);
    assert!(table.lines().nth(1).unwrap().contains(" ? ") && table.contains("does not tell"), "{table}");
    let stderr = fails(Some(AMQP), &["queues"], 4);
    assert!(stderr.contains("name them"), "{stderr}");
    fails(Some(AMQP), &["workers"], 4);
    fails(Some(AMQP), &["--json", "workers"], 4);

    // abort: RabbitMQ has no store; the Redis the workers use is named.
    let id = MessageId::new().to_string();
    let stderr = fails(Some(AMQP), &["abort", &id], 2);
    assert!(stderr.contains("--store"), "{stderr}");
    let store = format!("{REDIS}?namespace=cli-{}", unique());
    assert_eq!(json(AMQP, &["abort", &id, "--store", &store])["id"], id.as_str());
}

#[test]
fn bad_urls_and_usage_fail_clearly() {
    let stderr = fails(None, &["queues"], 2);
    assert!(stderr.contains("DRAMATURG_BROKER"), "{stderr}");
    let stderr = fails(Some("carrier-pigeon://coop"), &["queues"], 2);
    assert!(stderr.contains("unknown broker URL scheme"), "{stderr}");
    fails(Some("not a url"), &["queues"], 2);
    // Unreachable, with a password that must not be printed.
    let stderr = fails(Some("redis://:hunter2@127.0.0.1:1"), &["queues"], 1);
    assert!(!stderr.contains("hunter2") && stderr.contains("cannot use the broker"), "{stderr}");
    let stderr = fails(Some("amqp://guest:hunter2@127.0.0.1:1/%2f"), &["--json", "queues", "q"], 1);
    assert!(!stderr.contains("hunter2"), "{stderr}");
    // URLs that parse as URLs but that the client refuses (a port or a
    // database out of range) and unknown query parameters (a typo that
    // would otherwise be ignored) are bad input, not a broker failure.
    for url in [
        "redis://:hunter2@127.0.0.1:99999",
        "redis://:hunter2@127.0.0.1:6379/abc",
        "redis://:hunter2@127.0.0.1:6379/0?namspace=billing",
        "amqp://guest:hunter2@127.0.0.1:99999/%2f",
        "amqp://guest:hunter2@127.0.0.1:5672/%2f?max_priorty=10",
    ] {
        let stderr = fails(Some(url), &["queues", "q"], 2);
        assert!(!stderr.contains("hunter2"), "{url}: {stderr}");
    }
    let stderr = fails(Some("redis://127.0.0.1:6379/0?namspace=billing"), &["queues", "q"], 2);
    assert!(stderr.contains("\"namspace\" is unknown") && stderr.contains("namespace"), "{stderr}");
    // Known parameters still work: the broker's own and the client's.
    ok("redis://127.0.0.1:6379/0?namespace=cli-params&protocol=resp3", &["queues", "q"]);
    // The client reads `db` from a Unix socket URL's query only: over TCP it
    // would be ignored, so it is refused.
    let stderr = fails(Some("redis://127.0.0.1:6379/?namespace=cli-params&db=3"), &["queues", "q"], 2);
    assert!(stderr.contains("Unix socket"), "{stderr}");
    ok("amqp://guest:guest@127.0.0.1:5672/%2f?heartbeat=10&send_timeout_ms=5000", &["queues", "q"]);
    // Mistyped URLs, whose user part no URL parser finds, hide it too.
    for typo in
        ["redis:/:hunter2@127.0.0.1:6379", "redis//:hunter2@127.0.0.1", "amqp:/guest:hunter2@h", "redis:hunter2@h"]
    {
        let output = cli(Some(typo), &["queues"]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success() && !stderr.contains("hunter2"), "{typo}: {stderr}");
        let output = cli(Some(REDIS), &["abort", &MessageId::new().to_string(), "--store", typo]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success() && !stderr.contains("hunter2"), "--store {typo}: {stderr}");
    }
    // The environment variable works as --broker does.
    let output = Command::new(env!("CARGO_BIN_EXE_dramaturg"))
        .env("DRAMATURG_BROKER", "redis://:hunter2@127.0.0.1:1")
        .args(["queues"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(!String::from_utf8_lossy(&output.stderr).contains("hunter2"));
    // clap's own usage errors exit 2 as well; --help explains and exits 0.
    let output = cli(Some(REDIS), &["frobnicate"]);
    assert_eq!(output.status.code(), Some(2));
    let help = cli(None, &["--help"]);
    assert!(help.status.success());
    let help = String::from_utf8(help.stdout).unwrap();
    assert!(help.contains("Exit codes") && help.contains("DRAMATURG_BROKER"), "{help}");
}

/// `GET path` from `address` over plain HTTP/1.0, with an optional
/// `Authorization`; the status and the whole response.
fn http_get(address: &str, path: &str, authorization: Option<&str>) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    let auth = authorization.map(|a| format!("Authorization: {a}\r\n")).unwrap_or_default();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {address}\r\n{auth}\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, response)
}

/// Ends the child process when dropped (a failed assertion included).
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn web_serves_the_dashboard() {
    use std::io::BufRead;
    let namespace = format!("cli-{}", unique());
    let url = format!("{REDIS}?namespace={namespace}");
    ok(&url, &["send", "greet", "-q", "cli-web", "--args", r#"{"name":"ada"}"#]);

    // An ephemeral port on loopback, a token; the address comes on stderr.
    let mut child = Command::new(env!("CARGO_BIN_EXE_dramaturg"));
    child.env_remove("DRAMATURG_BROKER").env_remove("DRAMATURG_WEB_TOKEN");
    child.args(["--broker", &url, "web", "--bind", "127.0.0.1:0", "--token", "t0ken", "--read-only"]);
    let mut child = Killed(child.stderr(std::process::Stdio::piped()).spawn().unwrap());
    let mut line = String::new();
    std::io::BufReader::new(child.0.stderr.take().unwrap()).read_line(&mut line).unwrap();
    assert!(line.starts_with("dashboard on http://127.0.0.1:") && line.contains("read-only"), "{line}");
    let address = line["dashboard on http://".len()..].split('/').next().unwrap().to_owned();

    assert_eq!(http_get(&address, "/", None).0, 401);
    let (status, page) = http_get(&address, "/", Some("Bearer t0ken"));
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("data-queue=\"cli-web\"") && page.contains("read-only"), "{page}");
    assert!(!page.contains("method=\"post\""), "read-only: no actions");
    assert!(!page.contains(&namespace), "no broker URL on the page");
    ok(&url, &["purge", "cli-web"]);
    drop(child);

    // Only loopback by default: without --bind it listens on 127.0.0.1:8080.
    let help = String::from_utf8(cli(None, &["web", "--help"]).stdout).unwrap();
    assert!(help.contains("[default: 127.0.0.1:8080]"), "{help}");
    // A bad address is a usage error.
    fails(Some(&url), &["web", "--bind", "everywhere"], 2);
    // An empty token (an unset variable) would let a blank password in.
    let empty = fails(Some(&url), &["web", "--bind", "127.0.0.1:0", "--token", ""], 2);
    assert!(empty.contains("empty"), "{empty}");
}
