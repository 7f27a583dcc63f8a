//! Every route of the dashboard, through its axum router, against the real
//! Redis and RabbitMQ: status codes, what the pages show, the actions and
//! what they change on the broker, CSRF (403), read-only (403), auth
//! (401), unknown ids (404), bad input (400), escaping.

#![allow(clippy::unwrap_used)] // Tests may panic on the unexpected.

mod support;

use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use dramaturg::prelude::*;
use dramaturg::{App, MessageId, SendOptions};
use dramaturg_web::{Auth, Dashboard};
use serde::{Deserialize, Serialize};

use support::{encode, get, post, post_with, row, run_until_dead, send, unique, AMQP, REDIS};

/// The actor of these tests: fails (for good: no retries) when told to.
#[derive(Actor, Serialize, Deserialize)]
#[actor(queue = "web-greet", max_retries = 0)]
struct Greet {
    name: String,
    #[serde(default)]
    fail: bool,
}

impl Greet {
    fn new(name: impl Into<String>) -> Self {
        Self { name: name.into(), fail: false }
    }

    fn failing(name: impl Into<String>) -> Self {
        Self { name: name.into(), fail: true }
    }

    async fn perform(self, _ctx: &Context) -> Result<(), std::io::Error> {
        if self.fail {
            return Err(std::io::Error::other("boom: <b>the mail server</b> said no"));
        }
        std::hint::black_box(self.name);
        Ok(())
    }
}

const QUEUE: &str = "web-greet";

async fn redis_app(namespace: &str) -> App {
    let url = format!("{REDIS}?namespace={namespace}");
    dramaturg::app(dramaturg::redis::RedisBroker::connect(&url).await.unwrap()).actor::<Greet>().build().unwrap()
}

/// The depths the overview shows for `queue`: ready, delayed, in flight, dead, state.
async fn overview_row(router: &axum::Router, queue: &str) -> Vec<String> {
    let page = get(router, "/").await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    row(&page.body, &format!("data-queue=\"{queue}\""))[1..].to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_pages_and_actions() {
    let namespace = format!("web-{}", unique());
    let app = redis_app(&namespace).await;
    let router = Dashboard::new(app.clone()).router();

    // Two messages fail into the dead letters, as in production.
    let mut ids = Vec::new();
    for i in 0..2 {
        ids.push(Greet::failing(format!("user-{i}")).send(&app).await.unwrap().id());
    }
    run_until_dead(&app, QUEUE, 2).await;
    // 59 ready messages (two pages), the last with markup in its arguments, one delayed.
    for i in 2..60 {
        ids.push(Greet::new(format!("user-{i}")).send(&app).await.unwrap().id());
    }
    let hostile = Greet::new("<script>alert(1)</script>").send(&app).await.unwrap().id();
    let later = SendOptions::default().with_delay(Duration::from_secs(600));
    let delayed = Greet::new("later").send_with(&app, later).await.unwrap().id();

    // Overview: the queue with its counts.
    assert_eq!(overview_row(&router, QUEUE).await, ["59", "1", "0", "2", "running"]);
    let page = get(&router, "/").await;
    assert!(page.body.contains("Messages in all queues, up to the last hour"), "{}", page.body);
    assert_eq!(page.headers[header::CONTENT_TYPE], "text/html; charset=utf-8");
    assert_eq!(page.headers["x-frame-options"], "DENY");

    // Queue: the first page of 50, decoded, the markup escaped.
    let page = get(&router, &format!("/queues/{QUEUE}")).await;
    assert_eq!(page.status, StatusCode::OK);
    let first = row(&page.body, &format!("lookup?id={}", ids[2]));
    assert!(first.contains(&"greet".to_owned()) && first.iter().any(|c| c.contains("user-2")), "{first:?}");
    assert_eq!(page.body.matches("<tr>").count(), 1 + 50, "a header and 50 rows");
    assert!(!page.body.contains(&hostile.to_string()), "the 59th is on the next page");
    assert!(page.body.contains("next →"));
    let next = get(&router, &format!("/queues/{QUEUE}?page=1")).await;
    assert_eq!(next.body.matches("<tr>").count(), 1 + 9);
    assert!(next.body.contains(&hostile.to_string()));
    assert!(next.body.contains("&lt;script&gt;alert(1)&lt;/script&gt;"), "{}", next.body);
    assert!(!next.body.contains("<script>alert"), "unescaped markup");
    let page = get(&router, &format!("/queues/{QUEUE}?state=delayed")).await;
    assert!(page.body.contains(&delayed.to_string()) && page.body.contains("later"), "{}", page.body);
    assert_eq!(get(&router, &format!("/queues/{QUEUE}?state=sideways")).await.status, StatusCode::BAD_REQUEST);
    assert_eq!(get(&router, &format!("/queues/{QUEUE}?page=x")).await.status, StatusCode::BAD_REQUEST);

    // Dead letters: the reason escaped, one in full, an unknown one 404.
    let page = get(&router, &format!("/queues/{QUEUE}/dead")).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.body.contains("boom: &lt;b&gt;the mail server&lt;/b&gt; said no"), "{}", page.body);
    assert_eq!(row(&page.body, &format!(">{}</a>", ids[0]))[0], "greet");
    let shown = get(&router, &format!("/queues/{QUEUE}/dead/{}", ids[1])).await;
    assert_eq!(shown.status, StatusCode::OK);
    assert!(shown.body.contains("user-1") && shown.body.contains("Replay"), "{}", shown.body);
    let missing = MessageId::new().to_string();
    assert_eq!(get(&router, &format!("/queues/{QUEUE}/dead/{missing}")).await.status, StatusCode::NOT_FOUND);

    // Lookup: ready, delayed, dead, unknown, malformed.
    let found = get(&router, &format!("/lookup?id={}", ids[5])).await;
    assert!(found.body.contains("queued (ready)") && found.body.contains("user-5"), "{}", found.body);
    let found = get(&router, &format!("/lookup?id={delayed}")).await;
    assert!(found.body.contains("delayed until"), "{}", found.body);
    let found = get(&router, &format!("/lookup?id={}", ids[0])).await;
    assert!(found.body.contains("dead-lettered"), "{}", found.body);
    assert_eq!(get(&router, &format!("/lookup?id={missing}")).await.status, StatusCode::NOT_FOUND);
    assert_eq!(get(&router, "/lookup?id=not-an-id").await.status, StatusCode::BAD_REQUEST);
    assert_eq!(get(&router, "/lookup").await.status, StatusCode::OK);

    // CSRF: no token, a wrong one, a cross-site request: 403, nothing replayed.
    let token = support::csrf(&page.body);
    let replay = format!("/queues/{QUEUE}/dead/replay");
    let one = ids[0].to_string();
    assert_eq!(post(&router, &replay, &[("key", &one)]).await.status, StatusCode::FORBIDDEN);
    let wrong = "0".repeat(64);
    assert_eq!(post(&router, &replay, &[("csrf", &wrong), ("key", &one)]).await.status, StatusCode::FORBIDDEN);
    let cross =
        post_with(&router, &replay, &[("csrf", &token), ("key", &one)], &[("sec-fetch-site", "cross-site")]).await;
    assert_eq!(cross.status, StatusCode::FORBIDDEN);
    assert_eq!(overview_row(&router, QUEUE).await, ["59", "1", "0", "2", "running"]);

    // Replay one (retries reset): back in its queue; an unknown one is 404.
    let done = post(&router, &replay, &[("csrf", &token), ("key", &one), ("reset", "1")]).await;
    assert_eq!(done.status, StatusCode::SEE_OTHER, "{}", done.body);
    assert!(done.location().starts_with(&format!("/queues/{QUEUE}/dead?note=Replayed%201")), "{}", done.location());
    assert_eq!(overview_row(&router, QUEUE).await, ["60", "1", "0", "1", "running"]);
    assert_eq!(post(&router, &replay, &[("csrf", &token), ("key", &missing)]).await.status, StatusCode::NOT_FOUND);
    assert_eq!(post(&router, &replay, &[("csrf", &token)]).await.status, StatusCode::BAD_REQUEST);
    let note = get(&router, done.location()).await;
    assert!(note.body.contains("Replayed 1 dead letters."), "{}", note.body);

    // Delete all.
    let delete = format!("/queues/{QUEUE}/dead/delete");
    assert_eq!(post(&router, &delete, &[("all", "1")]).await.status, StatusCode::FORBIDDEN);
    assert_eq!(post(&router, &delete, &[("csrf", &token), ("all", "1")]).await.status, StatusCode::SEE_OTHER);
    assert_eq!(overview_row(&router, QUEUE).await, ["60", "1", "0", "0", "running"]);

    // Actions that do not exist.
    let unknown = post(&router, &format!("/queues/{QUEUE}/explode"), &[("csrf", &token)]).await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    let unknown = post(&router, &format!("/queues/{QUEUE}/dead/explode"), &[("csrf", &token), ("all", "1")]).await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);

    // Pause and resume.
    let path = format!("/queues/{QUEUE}/pause");
    assert_eq!(post(&router, &path, &[]).await.status, StatusCode::FORBIDDEN);
    assert_eq!(post(&router, &path, &[("csrf", &token)]).await.status, StatusCode::SEE_OTHER);
    assert_eq!(overview_row(&router, QUEUE).await[4], "paused");
    let path = format!("/queues/{QUEUE}/resume");
    assert_eq!(post(&router, &path, &[("csrf", &token)]).await.status, StatusCode::SEE_OTHER);
    assert_eq!(overview_row(&router, QUEUE).await[4], "running");

    // Cancel one message by its button's form; a worker then skips it.
    let abort = format!("/messages/{}/abort", ids[10]);
    assert_eq!(post(&router, &abort, &[("mode", "cancel")]).await.status, StatusCode::FORBIDDEN);
    let done = post(&router, &abort, &[("csrf", &token), ("mode", "cancel")]).await;
    assert_eq!(done.status, StatusCode::SEE_OTHER);
    assert!(done.location().starts_with(&format!("/lookup?id={}&note=Cancel%20requested", ids[10])));
    let bad = post(&router, "/messages/nope/abort", &[("csrf", &token)]).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    let bad = post(&router, &abort, &[("csrf", &token), ("mode", "explode")]).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);

    // Purge the delayed one (ready ones go to the worker).
    let purge = format!("/queues/{QUEUE}/purge");
    assert_eq!(post(&router, &purge, &[]).await.status, StatusCode::FORBIDDEN);

    // Workers: a running worker; it consumes the queue and skips the cancelled one.
    let worker = Worker::new(app.clone());
    let shutdown = worker.shutdown_handle();
    let running = tokio::spawn(worker.run());
    let mut page = get(&router, "/workers").await;
    for _ in 0..100 {
        if page.body.contains(&format!("{QUEUE}: ")) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        page = get(&router, "/workers").await;
    }
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.body.contains(&format!("{QUEUE}: ")) && page.body.contains("s ago"), "{}", page.body);
    assert_eq!(row(&page.body, "data-worker=")[1], "32", "the default concurrency, told with the heartbeat");
    let done = post(&router, &purge, &[("csrf", &token)]).await;
    assert_eq!(done.status, StatusCode::SEE_OTHER);
    app.join(Duration::from_secs(30)).await.unwrap();
    shutdown.shutdown();
    let report = running.await.unwrap().unwrap();
    // The 59 sent: 58 run, the cancelled one skipped; the replayed one
    // fails again (its arguments still say so) and is dead once more.
    assert_eq!((report.succeeded, report.aborted, report.failed), (58, 1, 1), "{report:?}");
    assert_eq!(overview_row(&router, QUEUE).await, ["0", "0", "0", "1", "running"]);
    // The workers' counts per minute: 58 succeeded, and the 3 failures
    // (the two dead letters at the start, the replayed one again).
    let page = get(&router, "/").await;
    assert!(page.body.contains(r#"id="outcomes" data-processed="61" data-failed="3""#), "{}", page.body);
    assert!(page.body.contains(r#"<polyline class="s-processed""#), "{}", page.body);

    // Assets, and what is not there.
    let css = get(&router, "/assets/dashboard.css").await;
    assert_eq!((css.status, &css.headers[header::CONTENT_TYPE]), (StatusCode::OK, &"text/css".parse().unwrap()));
    let js = get(&router, "/assets/dashboard.js").await;
    assert_eq!(js.headers[header::CONTENT_TYPE], "text/javascript");
    assert_eq!(get(&router, "/nothing-here").await.status, StatusCode::NOT_FOUND);
    assert_eq!(get(&router, &format!("/queues/{QUEUE}/purge")).await.status, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authentication_and_read_only() {
    let namespace = format!("web-{}", unique());
    let app = redis_app(&namespace).await;
    Greet::failing("ada").send(&app).await.unwrap();
    run_until_dead(&app, QUEUE, 1).await;

    // A token: as a bearer token, or as the password of basic auth.
    let router = Dashboard::new(app.clone()).auth(Auth::token("s3cret")).router();
    let request = |auth: Option<&str>| {
        let mut request = Request::get("/");
        if let Some(auth) = auth {
            request = request.header(header::AUTHORIZATION, auth);
        }
        request.body(Body::empty()).unwrap()
    };
    let refused = send(&router, request(None)).await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
    assert!(refused.headers[header::WWW_AUTHENTICATE].to_str().unwrap().starts_with("Basic"));
    assert_eq!(send(&router, request(Some("Bearer wrong"))).await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(send(&router, request(Some("Bearer s3cret"))).await.status, StatusCode::OK);
    // "anyone:s3cret" and "anyone:wrong" in base64.
    assert_eq!(send(&router, request(Some("Basic YW55b25lOnMzY3JldA=="))).await.status, StatusCode::OK);
    assert_eq!(send(&router, request(Some("Basic YW55b25lOndyb25n"))).await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(send(&router, request(Some("Basic !!!"))).await.status, StatusCode::UNAUTHORIZED);
    // An empty token (an unset variable) lets nobody in, blank password or not.
    let empty = Dashboard::new(app.clone()).auth(Auth::token("")).router();
    for auth in [None, Some("Bearer "), Some("Basic eDo=")] {
        assert_eq!(send(&empty, request(auth)).await.status, StatusCode::UNAUTHORIZED, "{auth:?}");
    }
    // Actions are refused before anything else without credentials.
    let post_refused = post(&router, &format!("/queues/{QUEUE}/purge"), &[]).await;
    assert_eq!(post_refused.status, StatusCode::UNAUTHORIZED);
    assert_eq!(get(&router, "/assets/dashboard.css").await.status, StatusCode::UNAUTHORIZED);

    // A user and password; its Debug hides the password.
    let auth = Auth::basic("ops", "pa55");
    assert!(!format!("{auth:?}").contains("pa55") && !format!("{:?}", Auth::token("s3cret")).contains("s3cret"));
    let router = Dashboard::new(app.clone()).auth(auth).router();
    // "ops:pa55", "other:pa55".
    assert_eq!(send(&router, request(Some("Basic b3BzOnBhNTU="))).await.status, StatusCode::OK);
    assert_eq!(send(&router, request(Some("Basic b3RoZXI6cGE1NQ=="))).await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(send(&router, request(Some("Bearer pa55"))).await.status, StatusCode::UNAUTHORIZED);

    // Read-only: no forms, and every action refused even with a token.
    let writable = Dashboard::new(app.clone()).router();
    let token = support::csrf(&get(&writable, &format!("/queues/{QUEUE}/dead")).await.body);
    let router = Dashboard::new(app.clone()).read_only(true).router();
    for path in ["/".to_owned(), format!("/queues/{QUEUE}"), format!("/queues/{QUEUE}/dead")] {
        let page = get(&router, &path).await;
        assert_eq!(page.status, StatusCode::OK);
        assert!(!page.body.contains("method=\"post\""), "{path}: {}", page.body);
        assert!(page.body.contains("read-only"));
    }
    for action in ["dead/replay", "dead/delete", "purge", "pause", "resume"] {
        let refused = post(&router, &format!("/queues/{QUEUE}/{action}"), &[("csrf", &token), ("all", "1")]).await;
        assert_eq!(refused.status, StatusCode::FORBIDDEN, "{action}");
        assert!(refused.body.contains("read-only"), "{}", refused.body);
    }
    // Each dashboard has its own token: another one's is refused.
    let other = Dashboard::new(app.clone()).router();
    let refused = post(&other, &format!("/queues/{QUEUE}/dead/delete"), &[("csrf", &token), ("all", "1")]).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    assert_eq!(app.stats(QUEUE).await.unwrap().dead, 1, "nothing was done");
    app.admin().unwrap().purge(QUEUE).await.unwrap();
    app.dead_letters().unwrap().delete(QUEUE, dramaturg::Replay::All).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mounted_under_a_path() {
    let namespace = format!("web-{}", unique());
    let app = redis_app(&namespace).await;
    Greet::new("ada").send(&app).await.unwrap();
    let dashboard = Dashboard::new(app.clone()).mount_path("/admin/jobs/").router();
    let router = axum::Router::new().nest("/admin/jobs", dashboard);
    let page = get(&router, "/admin/jobs").await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert!(page.body.contains(&format!("href=\"/admin/jobs/queues/{QUEUE}\"")), "{}", page.body);
    assert!(page.body.contains("href=\"/admin/jobs/assets/dashboard.css\""));
    let token = support::csrf(&get(&router, &format!("/admin/jobs/queues/{QUEUE}")).await.body);
    let done = post(&router, &format!("/admin/jobs/queues/{QUEUE}/purge"), &[("csrf", &token)]).await;
    assert_eq!(done.status, StatusCode::SEE_OTHER);
    assert!(done.location().starts_with(&format!("/admin/jobs/queues/{QUEUE}?note=Purged%201")), "{}", done.location());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_pages_and_what_it_cannot_show() {
    let queue = format!("web-{}", unique());
    let app = dramaturg::app_shared(dramaturg::connect(AMQP).await.unwrap()).actor_in::<Greet>(&queue).build().unwrap();
    let router = Dashboard::new(app.clone()).router();
    let mut ids = vec![Greet::failing("ada").send(&app).await.unwrap().id()];
    run_until_dead(&app, &queue, 1).await;
    for name in ["bob", "<i>cy</i>"] {
        ids.push(Greet::new(name).send(&app).await.unwrap().id());
    }

    // The overview shows the app's queue although RabbitMQ lists none.
    let page = get(&router, "/").await;
    assert!(page.body.contains("cannot list its queues"), "{}", page.body);
    let mut counts = overview_row(&router, &queue).await;
    for _ in 0..50 {
        // RabbitMQ's counts follow the settlement within moments.
        // In flight: "?", RabbitMQ tells no client what the fleet holds.
        if counts == ["2", "0", "?", "1", "running"] {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        counts = overview_row(&router, &queue).await;
    }
    assert_eq!(counts, ["2", "0", "?", "1", "running"]);

    // A queue's messages cannot be listed: the page says so.
    let page = get(&router, &format!("/queues/{queue}")).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.body.contains("cannot show a queue's messages without consuming them"), "{}", page.body);
    // Nor are there workers to show, or counts per minute.
    let page = get(&router, "/workers").await;
    assert!(page.body.contains("keeps no registry of workers"), "{}", page.body);
    let page = get(&router, "/").await;
    assert!(page.body.contains("RabbitMQ keeps no per-minute counts"), "{}", page.body);
    assert!(!page.body.contains("s-processed"), "no chart of zeros: {}", page.body);

    // Dead letters: listed, found by id, replayed with the token.
    let page = get(&router, &format!("/queues/{queue}/dead")).await;
    assert!(page.body.contains(&ids[0].to_string()) && page.body.contains("boom"), "{}", page.body);
    assert!(!page.body.contains("next →"), "one page: {}", page.body);
    let beyond = get(&router, &format!("/queues/{queue}/dead?page=1")).await;
    assert!(
        beyond.body.contains("No dead letter on this page.") && beyond.body.contains("← previous"),
        "{}",
        beyond.body
    );
    let found = get(&router, &format!("/lookup?id={}", ids[0])).await;
    assert!(found.body.contains("dead-lettered"), "{}", found.body);
    let missing = MessageId::new().to_string();
    let not_found = get(&router, &format!("/lookup?id={missing}")).await;
    assert_eq!(not_found.status, StatusCode::NOT_FOUND);
    assert!(not_found.body.contains("can only search dead letters"), "{}", not_found.body);
    let token = support::csrf(&page.body);
    let replay = format!("/queues/{}/dead/replay", encode(&queue));
    assert_eq!(post(&router, &replay, &[("key", &ids[0].to_string())]).await.status, StatusCode::FORBIDDEN);
    let done = post(&router, &replay, &[("csrf", &token), ("key", &ids[0].to_string())]).await;
    assert_eq!(done.status, StatusCode::SEE_OTHER, "{}", done.body);
    assert_eq!(app.stats(&queue).await.unwrap().dead, 0);

    // Abort: RabbitMQ keeps no abort requests; the dashboard says so.
    let refused = post(&router, &format!("/messages/{}/abort", ids[1]), &[("csrf", &token)]).await;
    assert_eq!(refused.status, StatusCode::NOT_IMPLEMENTED);
    assert!(refused.body.contains("keeps no abort requests"), "{}", refused.body);

    // A name RabbitMQ refuses is a clear 400.
    let long = "q".repeat(300);
    assert_eq!(get(&router, &format!("/queues/{long}")).await.status, StatusCode::BAD_REQUEST);
    // A queue the dashboard does not know is a 404, and looking did not
    // declare it (RabbitMQ declares a queue that is looked at).
    let stranger = format!("web-stranger-{}", unique());
    for path in [format!("/queues/{stranger}"), format!("/queues/{stranger}/dead")] {
        let page = get(&router, &path).await;
        assert_eq!(page.status, StatusCode::NOT_FOUND, "{path}: {}", page.body);
        assert!(page.body.contains("cannot list its queues"), "{}", page.body);
    }
    let listed = std::process::Command::new("rabbitmqctl").args(["list_queues", "name"]).output().unwrap();
    assert!(!String::from_utf8_lossy(&listed.stdout).contains(&stranger), "no queue was declared");

    let purge = format!("/queues/{}/purge", encode(&queue));
    assert_eq!(post(&router, &purge, &[("csrf", &token)]).await.status, StatusCode::SEE_OTHER);
    assert_eq!(app.stats(&queue).await.unwrap().ready, 0);
}

/// Doubles; holds its slot for `millis` first; stores its result.
#[derive(Actor, Serialize, Deserialize)]
#[actor(queue = "web-double", output = u64, store_results, max_retries = 0)]
struct Double {
    n: u64,
    millis: u64,
}

impl Double {
    async fn perform(self, _ctx: &Context) -> Result<u64, std::io::Error> {
        tokio::time::sleep(Duration::from_millis(self.millis)).await;
        if self.n == 0 {
            return Err(std::io::Error::other("zero is not doubled"));
        }
        Ok(self.n * 2)
    }
}

/// The workers page lists what a worker holds, linked to the lookup; the
/// lookup says "done" with the stored value or error once it ran.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_messages_and_finished_ones() {
    let namespace = format!("web-{}", unique());
    let url = format!("{REDIS}?namespace={namespace}");
    let broker = dramaturg::redis::RedisBroker::connect(&url).await.unwrap();
    let results = dramaturg::results::Results::for_broker(&broker);
    let app = dramaturg::app(broker).insert_before("callbacks", results).actor::<Double>().build().unwrap();
    let router = Dashboard::new(app.clone()).router();
    let slow = Double { n: 21, millis: 1500 }.send(&app).await.unwrap().id();
    let failing = Double { n: 0, millis: 0 }.send(&app).await.unwrap().id();
    let worker = Worker::new(app.clone()).concurrency(3);
    let shutdown = worker.shutdown_handle();
    let running = tokio::spawn(worker.run());
    let link = format!("/lookup?id={slow}");
    let mut page = get(&router, "/workers").await;
    for _ in 0..100 {
        if page.body.contains(&link) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        page = get(&router, "/workers").await;
    }
    let cells = row(&page.body, "data-worker=");
    assert_eq!(cells[1], "3", "{}", page.body);
    assert!(cells[5].contains(&format!("{slow} double on web-double")), "{cells:?}");
    let running_now = get(&router, &link).await;
    assert!(
        running_now.body.contains("held by a worker (running, or fetched and waiting for a slot)"),
        "{}",
        running_now.body
    );

    app.join(Duration::from_secs(20)).await.unwrap();
    shutdown.shutdown();
    running.await.unwrap().unwrap();
    let done = get(&router, &link).await;
    assert_eq!(done.status, StatusCode::OK);
    assert!(
        done.body.contains(">done</span> (succeeded)") && done.body.contains(r#"<pre id="result">42</pre>"#),
        "{}",
        done.body
    );
    // A failure is found in the dead letters first; once they are gone,
    // its stored error says it is done.
    let failed = get(&router, &format!("/lookup?id={failing}")).await;
    assert!(failed.body.contains("dead-lettered"), "{}", failed.body);
    app.dead_letters().unwrap().delete("web-double", dramaturg::Replay::All).await.unwrap();
    let failed = get(&router, &format!("/lookup?id={failing}")).await;
    assert!(failed.body.contains("(failed)") && failed.body.contains("zero is not doubled"), "{}", failed.body);
    // Without a results backend, a finished message is simply not found.
    let bare = Dashboard::new(redis_app(&namespace).await).router();
    assert_eq!(get(&bare, &link).await.status, StatusCode::NOT_FOUND);
}

/// Dead letters are shown a page at a time, with next and previous links.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_paged() {
    let namespace = format!("web-{}", unique());
    let app = redis_app(&namespace).await;
    let router = Dashboard::new(app.clone()).router();
    let mut ids = Vec::new();
    for i in 0..53 {
        ids.push(Greet::failing(format!("user-{i}")).send(&app).await.unwrap().id());
    }
    run_until_dead(&app, QUEUE, 53).await;
    let first = get(&router, &format!("/queues/{QUEUE}/dead")).await;
    assert_eq!(first.body.matches("<tr data-key=").count(), 50);
    assert!(first.body.contains("?page=1\">next →") && !first.body.contains("← previous"), "{}", first.body);
    // Past the last page dead letters are shown to: a clear 400, not a
    // page labelled otherwise; the largest page number of a queue: no panic.
    let beyond = get(&router, &format!("/queues/{QUEUE}/dead?page=5000")).await;
    assert_eq!(beyond.status, StatusCode::BAD_REQUEST, "{}", beyond.body);
    let last = get(&router, &format!("/queues/{QUEUE}?page={}", u64::MAX)).await;
    assert_eq!(last.status, StatusCode::OK, "{}", last.body);
    let second = get(&router, &format!("/queues/{QUEUE}/dead?page=1")).await;
    assert_eq!(second.body.matches("<tr data-key=").count(), 3, "{}", second.body);
    assert!(second.body.contains("?page=0\">← previous") && !second.body.contains("next →"), "{}", second.body);
    // Each dead letter on exactly one page.
    let shown = |body: &str, id: &MessageId| body.contains(&format!(">{id}</a>"));
    for id in &ids {
        assert!(shown(&first.body, id) != shown(&second.body, id), "{id} on one page only");
    }
}
