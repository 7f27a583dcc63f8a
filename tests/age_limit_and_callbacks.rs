//! The age-limit and callbacks middleware on the in-memory broker.

#![allow(clippy::unwrap_used)] // Tests may panic on the unexpected.

use std::sync::Mutex;
use std::time::Duration;

use dramaturg::callbacks::{CallbackCounts, CallbackOptions};
use dramaturg::prelude::*;
use dramaturg::retries::Retries;
use dramaturg::{BoxError, DeadLetters, ErrorRecord, MessageId};
use serde::{Deserialize, Serialize};

static RAN: Mutex<Vec<String>> = Mutex::new(Vec::new());

#[derive(Actor, Serialize, Deserialize)]
#[actor(max_age = "100ms")]
struct Fresh {
    key: String,
}

impl Fresh {
    async fn perform(self, _ctx: &Context) -> Result<(), BoxError> {
        RAN.lock().unwrap().push(self.key);
        Ok(())
    }
}

#[tokio::test]
async fn messages_older_than_their_max_age_are_skipped_not_run() {
    let broker = MemoryBroker::new();
    let app = dramaturg::app(broker.clone()).queue_prefix("age-").actor::<Fresh>().build().unwrap();
    Fresh { key: "stale".into() }.send(&app).await.unwrap();
    tokio::time::sleep(Duration::from_millis(150)).await;
    Fresh { key: "fresh".into() }.send(&app).await.unwrap();
    let report = Worker::new(app).run_until_drained(Duration::from_secs(5)).await.unwrap();
    assert_eq!((report.skipped, report.succeeded), (1, 1), "{report:?}");
    assert!(RAN.lock().unwrap().contains(&"fresh".to_owned()));
    assert!(!RAN.lock().unwrap().contains(&"stale".to_owned()));
    let stats = dramaturg::QueueAdmin::stats(&broker, "age-default").await.unwrap();
    assert_eq!(stats.dead, 0, "skipped messages are acknowledged, not dead-lettered");
}

/// Succeeds with a value, or fails (then the attempt count matters).
#[derive(Actor, Serialize, Deserialize)]
#[actor(output = u64, on_success = Done, on_failure = FailedOnce, on_retry_exhausted = "gave_up")]
struct Job {
    n: u64,
    fail: bool,
}

impl Job {
    async fn perform(self, _ctx: &Context) -> Result<u64, String> {
        if self.fail {
            return Err(format!("job {} failed", self.n));
        }
        Ok(self.n * 2)
    }
}

static CALLBACKS: Mutex<Vec<String>> = Mutex::new(Vec::new());

#[derive(Actor, Serialize, Deserialize)]
struct Done {
    message_id: MessageId,
    actor: String,
    args: Job,
    result: u64,
}

impl Done {
    async fn perform(self, _ctx: &Context) -> Result<(), BoxError> {
        CALLBACKS
            .lock()
            .unwrap()
            .push(format!("done {} {} {} {}", self.actor, self.args.n, self.result, self.message_id));
        Ok(())
    }
}

#[derive(Actor, Serialize, Deserialize)]
struct FailedOnce {
    args: Job,
    retries: u32,
    error: ErrorRecord,
}

impl FailedOnce {
    async fn perform(self, _ctx: &Context) -> Result<(), BoxError> {
        CALLBACKS
            .lock()
            .unwrap()
            .push(format!("failure {} retry {}: {}", self.args.n, self.retries, self.error.message));
        Ok(())
    }
}

#[derive(Actor, Serialize, Deserialize)]
struct GaveUp {
    args: Job,
    error: ErrorRecord,
}

impl GaveUp {
    async fn perform(self, _ctx: &Context) -> Result<(), BoxError> {
        CALLBACKS.lock().unwrap().push(format!("gave up {}: {}", self.args.n, self.error.message));
        Ok(())
    }
}

#[tokio::test]
async fn callbacks_fire_on_success_on_every_failure_and_once_on_exhaustion() {
    let retries = Retries::new().max_retries(2).backoff(Duration::from_millis(1), Duration::from_millis(2));
    let app = dramaturg::app(MemoryBroker::new())
        .queue_prefix("callbacks-")
        .replace("retries", retries)
        .actor::<Job>()
        .actor::<Done>()
        .actor::<FailedOnce>()
        .actor::<GaveUp>()
        .build()
        .unwrap();
    let id = Job { n: 21, fail: false }.send(&app).await.unwrap();
    Job { n: 7, fail: true }.send(&app).await.unwrap();
    Worker::new(app).run_until_drained(Duration::from_secs(5)).await.unwrap();
    let mut seen = CALLBACKS.lock().unwrap().clone();
    seen.sort();
    assert_eq!(
        seen,
        [
            format!("done job 21 42 {id}"),
            "failure 7 retry 0: job 7 failed".to_owned(),
            "failure 7 retry 1: job 7 failed".to_owned(),
            "failure 7 retry 2: job 7 failed".to_owned(),
            "gave up 7: job 7 failed".to_owned(),
        ]
    );
}

/// Fails when asked to, with no retries.
#[derive(Actor, Serialize, Deserialize)]
#[actor(max_retries = 0)]
struct Brittle {
    fail: bool,
}

impl Brittle {
    async fn perform(self, _ctx: &Context) -> Result<(), BoxError> {
        if self.fail {
            return Err("brittle".into());
        }
        Ok(())
    }
}

#[tokio::test]
async fn a_callback_that_cannot_be_sent_fails_its_message_visibly() {
    let broker = MemoryBroker::new();
    let app = dramaturg::app(broker.clone()).queue_prefix("percall-").actor::<Brittle>().build().unwrap();
    let success = SendOptions::default().with_options(|o| o.on_success("no_such_actor"));
    Brittle { fail: false }.send_with(&app, success).await.unwrap();
    let failure = SendOptions::default().with_options(|o| o.on_retry_exhausted("nobody_listens"));
    Brittle { fail: true }.send_with(&app, failure).await.unwrap();
    let report = Worker::new(app.clone()).run_until_drained(Duration::from_secs(5)).await.unwrap();
    assert_eq!((report.succeeded, report.failed), (0, 2), "{report:?}");
    assert_eq!(app.state::<CallbackCounts>().unwrap().not_sent(), 2);
    let mut reasons: Vec<String> =
        DeadLetters::list(&broker, "percall-default", 10).await.unwrap().into_iter().map(|d| d.reason).collect();
    reasons.sort();
    assert!(reasons[0].contains("on_retry_exhausted callback \"nobody_listens\" could not be sent"), "{reasons:?}");
    assert!(reasons[0].contains("brittle"), "the original error stays first: {reasons:?}");
    assert!(reasons[1].contains("on_success callback \"no_such_actor\" could not be sent"), "{reasons:?}");
}

/// Refuses every message that does not say which tenant it is for.
struct TenantCheck;

#[async_trait]
impl Middleware for TenantCheck {
    fn name(&self) -> &'static str {
        "tenant_check"
    }

    fn before_enqueue(&self, message: &mut dramaturg::Message) -> Result<(), BoxError> {
        match message.options.extra::<String>("tenant")? {
            Some(_) => Ok(()),
            None => Err(format!("{} has no tenant", message.actor).into()),
        }
    }
}

#[derive(Actor, Serialize, Deserialize)]
#[actor(on_success = "tenant_seen")]
struct Tenanted {
    key: String,
}

impl Tenanted {
    async fn perform(self, _ctx: &Context) -> Result<(), BoxError> {
        Ok(())
    }
}

static TENANTS: Mutex<Vec<String>> = Mutex::new(Vec::new());

#[derive(Actor, Serialize, Deserialize)]
struct TenantSeen {
    args: Tenanted,
}

impl TenantSeen {
    async fn perform(self, ctx: &Context) -> Result<(), BoxError> {
        let tenant = ctx.options().extra::<String>("tenant")?.unwrap_or_default();
        let callbacks = ctx.options().extra::<String>("on_success")?;
        TENANTS.lock().unwrap().push(format!("tenant {} {tenant} {callbacks:?}", self.args.key));
        Ok(())
    }
}

#[tokio::test]
async fn callbacks_carry_the_originals_options_through_enqueue_hooks() {
    let app = dramaturg::app(MemoryBroker::new())
        .queue_prefix("tenant-")
        .middleware(TenantCheck)
        .actor::<Tenanted>()
        .actor::<TenantSeen>()
        .build()
        .unwrap();
    let key = MessageId::new().to_string();
    let options = SendOptions::default().with_options(|o| o.with_extra("tenant", "acme").with_max_retries(7));
    Tenanted { key: key.clone() }.send_with(&app, options).await.unwrap();
    let report = Worker::new(app).run_until_drained(Duration::from_secs(5)).await.unwrap();
    assert_eq!((report.succeeded, report.failed), (2, 0), "{report:?}");
    // The tenant travels; the callback options do not (no callback loop).
    assert!(TENANTS.lock().unwrap().contains(&format!("tenant {key} acme None")));
}

/// Its callback's name has a typo.
#[derive(Actor, Serialize, Deserialize)]
#[actor(on_failure = "report_failuer")]
struct Misspelled {}

impl Misspelled {
    async fn perform(self, _ctx: &Context) -> Result<(), BoxError> {
        Ok(())
    }
}

#[test]
fn an_unknown_callback_actor_in_an_actors_options_fails_the_build() {
    let error = dramaturg::app(MemoryBroker::new()).actor::<Misspelled>().build().unwrap_err();
    assert_eq!(
        error,
        dramaturg::ConfigError::UnknownActor {
            actor: "misspelled".into(),
            option: "on_failure".into(),
            name: "report_failuer".into(),
        }
    );
    assert!(error.to_string().contains("\"report_failuer\""), "{error}");
}

/// A Rust callback as Python Dramatiq calls one: `(message, result)`.
#[derive(Actor, Serialize, Deserialize)]
struct DramatiqDone(serde_json::Value, u64);

static DRAMATIQ_DONE: Mutex<Vec<(serde_json::Value, u64)>> = Mutex::new(Vec::new());

impl DramatiqDone {
    async fn perform(self, _ctx: &Context) -> Result<(), BoxError> {
        DRAMATIQ_DONE.lock().unwrap().push((self.0, self.1));
        Ok(())
    }
}

#[derive(Actor, Serialize, Deserialize)]
#[actor(output = u64, on_success = DramatiqDone, on_failure = "py_report")]
struct Doubler {
    n: u64,
}

impl Doubler {
    async fn perform(self, _ctx: &Context) -> Result<u64, String> {
        if self.n == 0 {
            return Err("zero".into());
        }
        Ok(self.n * 2)
    }
}

#[tokio::test]
async fn under_the_dramatiq_encoder_callbacks_get_pythons_arguments_and_reach_remote_actors() {
    use dramaturg::dramatiq::Dramatiq;
    use dramaturg::{Broker, Encoder, Remote};
    const PY_REPORT: Remote<serde_json::Value> = Remote::new("py_report", "python");
    let broker = MemoryBroker::new();
    let app = dramaturg::app(broker.clone())
        .encoder(Dramatiq)
        .queue_prefix("cb-dramatiq-")
        .actor::<Doubler>()
        .actor::<DramatiqDone>()
        .remote(PY_REPORT)
        .build()
        .unwrap();
    let ok = Doubler { n: 21 }.send(&app).await.unwrap();
    // A step of a Python pipeline: its result goes on to the next step.
    let next = serde_json::json!({"queue_name": "cb-dramatiq-python", "actor_name": "py_next", "args": ["first"],
        "kwargs": {}, "options": {"delay": 10}, "message_id": "0f8f3bc2-62f4-4b5d-a3d1-9e2c4c7f1a10",
        "message_timestamp": 1_717_000_000_000_u64});
    let piped = SendOptions::default().with_options(|o| o.with_extra("pipe_target", next));
    Doubler { n: 4 }.send_with(&app, piped).await.unwrap();
    Doubler { n: 0 }.send_with(&app, SendOptions::default().with_options(|o| o.with_max_retries(0))).await.unwrap();
    Worker::new(app.clone()).run_until_drained(Duration::from_secs(5)).await.unwrap();

    let done = DRAMATIQ_DONE.lock().unwrap().clone();
    assert_eq!(done.len(), 2, "{done:?}");
    let done: Vec<_> = done.into_iter().filter(|(m, _)| m["kwargs"]["n"] == 21).collect();
    assert_eq!(done[0].1, 42);
    assert_eq!(done[0].0["actor_name"], "doubler");
    assert_eq!(done[0].0["kwargs"]["n"], 21);
    assert_eq!(done[0].0["message_id"], ok.id().to_uuid_string());

    // The failure's callback and the pipeline's next step wait on the
    // Python actors' queue, shaped as Python's middleware send them.
    let mut consumer = broker.consume("cb-dramatiq-python", 2).await.unwrap();
    let mut calls = std::collections::HashMap::new();
    let mut held = Vec::new();
    for _ in 0..2 {
        let delivery = tokio::time::timeout(Duration::from_secs(2), consumer.next()).await.unwrap().unwrap();
        let message = Dramatiq.decode_message(delivery.body()).unwrap();
        let call: dramaturg::Call = serde_json::from_slice(&message.args).unwrap();
        calls.insert(message.actor.clone(), (message, call));
        held.push(delivery); // settled by no one: dropped, it would come back
    }
    let (_, report) = &calls["py_report"];
    assert_eq!(report.args[0]["kwargs"]["n"], 0);
    assert_eq!(report.args[1], serde_json::json!({"type": "String", "message": "zero"}));
    let (step, call) = calls.get("py_next").unwrap_or_else(|| panic!("{:?}", calls.keys().collect::<Vec<_>>()));
    assert_eq!(call.args, [serde_json::json!("first"), serde_json::json!(8)]);
    assert_eq!(step.id.to_uuid_string(), "0f8f3bc2-62f4-4b5d-a3d1-9e2c4c7f1a10");
    assert!(!step.options.extra.contains_key("pipe_target"));
}
