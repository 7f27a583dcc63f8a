//! Sending messages: typed sends, options, delays, size and registry checks,
//! the middleware stack's order and enqueue hooks, the shared context.

#![allow(clippy::unwrap_used)] // Tests may panic on the unexpected.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use dramaturg::prelude::*;
use dramaturg::{BoxError, ConfigError, DeadLetters, EnqueueError, Message, Options, QueueAdmin};
use serde::{Deserialize, Serialize};

#[derive(Actor, Serialize, Deserialize)]
#[actor(queue = "mail", max_retries = 7, time_limit = "90s", priority = 3)]
struct SendWelcome {
    user_id: u64,
}

impl SendWelcome {
    async fn perform(self, _ctx: &Context) -> Result<(), BoxError> {
        Ok(())
    }
}

#[derive(Actor, Serialize, Deserialize)]
struct Unregistered;

impl Unregistered {
    async fn perform(self, _ctx: &Context) -> Result<(), BoxError> {
        Ok(())
    }
}

#[derive(Actor, Serialize, Deserialize)]
struct Upload {
    data: Vec<u8>,
}

impl Upload {
    async fn perform(self, _ctx: &Context) -> Result<(), BoxError> {
        Ok(())
    }
}

fn app(broker: &MemoryBroker) -> App {
    App::builder(broker.clone()).actor::<SendWelcome>().actor::<Upload>().build().unwrap()
}

#[tokio::test]
async fn send_enqueues_an_encoded_message_and_returns_its_id() {
    let broker = MemoryBroker::new();
    let app = app(&broker);
    let id = SendWelcome { user_id: 42 }.send(&app).await.unwrap().id();
    assert_eq!(app.queues(), ["mail", "default"]);
    assert_eq!(broker.stats("mail").await.unwrap().ready, 1);

    let mut consumer = dramaturg::Broker::consume(&broker, "mail", 1).await.unwrap();
    let delivery = consumer.next().await.unwrap();
    let message = app.encoder().decode_message(delivery.body()).unwrap();
    assert_eq!(message.id, id);
    assert_eq!((message.actor.as_str(), message.queue.as_str(), message.retries), ("send_welcome", "mail", 0));
    let args: SendWelcome = dramaturg::encoder::decode_value(app.encoder(), &message.args).unwrap();
    assert_eq!(args.user_id, 42);
}

#[tokio::test]
async fn send_with_delays_and_overrides_options() {
    let broker = MemoryBroker::new();
    let app = app(&broker);
    let options = SendOptions::default()
        .with_delay(Duration::from_secs(60))
        .with_options(|o| o.with_max_retries(1).with_extra("tenant", "acme"));
    SendWelcome { user_id: 1 }.send_with(&app, options).await.unwrap();
    let stats = broker.stats("mail").await.unwrap();
    assert_eq!((stats.ready, stats.delayed), (0, 1));
}

#[tokio::test]
async fn derived_attributes_become_the_actor_defaults() {
    let options = SendWelcome::options();
    assert_eq!(SendWelcome::NAME, "send_welcome");
    assert_eq!(options.max_retries, Some(7));
    assert_eq!(options.time_limit, Some(Duration::from_secs(90)));
    assert_eq!(options.priority, Some(3));
    assert_eq!(Upload::QUEUE, "default");
}

#[tokio::test]
async fn sending_an_unknown_actor_is_a_typed_error_and_enqueues_nothing() {
    let broker = MemoryBroker::new();
    let app = app(&broker);
    let err = Unregistered.send(&app).await.unwrap_err();
    assert!(matches!(&err, EnqueueError::UnknownActor(name) if name == "unregistered"), "{err}");
    assert!(broker.stats("default").await.unwrap().is_drained());
}

#[tokio::test]
async fn oversized_messages_are_refused_and_enqueue_nothing() {
    let broker = MemoryBroker::new();
    let app = app(&broker);
    let err = Upload { data: vec![7; 2 * 1024 * 1024] }.send(&app).await.unwrap_err();
    assert!(matches!(err, EnqueueError::TooLarge { limit: 1_048_576, .. }), "{err}");

    let small = App::builder(broker.clone()).actor::<Upload>().max_message_size(200).build().unwrap();
    assert!(matches!(Upload { data: vec![0; 200] }.send(&small).await, Err(EnqueueError::TooLarge { .. })));
    Upload { data: vec![0; 10] }.send(&small).await.unwrap();
    assert_eq!(broker.stats("default").await.unwrap().ready, 1);
}

/// Records the order in which hooks run, under its name.
struct Probe {
    name: &'static str,
    log: Arc<Mutex<Vec<String>>>,
}

#[async_trait]
impl Middleware for Probe {
    fn name(&self) -> &'static str {
        self.name
    }

    fn before_enqueue(&self, message: &mut Message) -> Result<(), BoxError> {
        self.log.lock().unwrap().push(format!("enqueue {}", self.name));
        if message.options.extra::<bool>("refuse")?.unwrap_or(false) {
            return Err("refused on request".into());
        }
        Ok(())
    }

    async fn handle(&self, ctx: &Context, next: Next<'_>) -> Outcome {
        self.log.lock().unwrap().push(format!("before {}", self.name));
        let outcome = next.run(ctx).await;
        self.log.lock().unwrap().push(format!("after {}", self.name));
        outcome
    }
}

#[tokio::test]
async fn the_first_middleware_is_the_outermost_and_insertion_is_by_name() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let probe = |name| Probe { name, log: Arc::clone(&log) };
    let app = App::builder(MemoryBroker::new())
        .middleware(probe("a"))
        .middleware(probe("c"))
        .insert_after("a", probe("b"))
        .insert_before("a", probe("first"))
        .actor::<SendWelcome>()
        .build()
        .unwrap();
    assert_eq!(app.middleware_names(), ["first", "a", "b", "c"]);

    SendWelcome { user_id: 1 }.send(&app).await.unwrap();
    Worker::new(app).run_until_drained(Duration::from_secs(5)).await.unwrap();
    let log = log.lock().unwrap().clone();
    let expected = [
        "enqueue first",
        "enqueue a",
        "enqueue b",
        "enqueue c",
        "before first",
        "before a",
        "before b",
        "before c",
        "after c",
        "after b",
        "after a",
        "after first",
    ];
    assert_eq!(log, expected);
}

#[tokio::test]
async fn enqueue_hooks_can_refuse_a_message() {
    let broker = MemoryBroker::new();
    let app = App::builder(broker.clone())
        .middleware(Probe { name: "gate", log: Arc::default() })
        .actor::<SendWelcome>()
        .build()
        .unwrap();
    let refuse = SendOptions::default().with_options(|o| o.with_extra("refuse", true));
    let err = SendWelcome { user_id: 1 }.send_with(&app, refuse).await.unwrap_err();
    assert!(matches!(err, EnqueueError::Rejected { middleware: "gate", .. }), "{err}");
    // An option of the wrong type is refused too, with the option named.
    let wrong = SendOptions::default().with_options(|o| o.with_extra("refuse", "yes"));
    let err = SendWelcome { user_id: 1 }.send_with(&app, wrong).await.unwrap_err();
    assert!(err.to_string().contains("option `refuse`"), "{err}");
    assert!(broker.stats("mail").await.unwrap().is_drained());
}

#[tokio::test]
async fn misconfigured_stacks_and_actors_are_config_errors() {
    let err = App::builder(MemoryBroker::new()).insert_before("nope", Probe { name: "x", log: Arc::default() }).build();
    assert_eq!(err.unwrap_err(), ConfigError::NoSuchMiddleware("nope".into()));
    let err = App::builder(MemoryBroker::new())
        .middleware(Probe { name: "x", log: Arc::default() })
        .middleware(Probe { name: "x", log: Arc::default() })
        .build();
    assert_eq!(err.unwrap_err(), ConfigError::DuplicateMiddleware("x".into()));
    let err = App::builder(MemoryBroker::new()).actor::<Upload>().actor::<Upload>().build();
    assert_eq!(err.unwrap_err(), ConfigError::DuplicateActor("upload".into()));
    let removed = App::builder(MemoryBroker::new())
        .middleware(Probe { name: "x", log: Arc::default() })
        .remove("x")
        .build()
        .unwrap();
    assert!(removed.middleware_names().is_empty());
}

/// What the actor writes into the metadata.
#[derive(Debug, Default, Clone, PartialEq)]
struct Progress(u32);

#[derive(Actor, Serialize, Deserialize)]
struct Export {
    fail: bool,
}

#[derive(Debug, thiserror::Error)]
#[error("export failed half-way")]
struct ExportFailed;

impl Export {
    async fn perform(self, ctx: &Context) -> Result<(), ExportFailed> {
        ctx.metadata(|m| m.insert(Progress(50)));
        if self.fail {
            return Err(ExportFailed);
        }
        Ok(())
    }
}

/// Failure messages and the progress the actor had written.
type Seen = Arc<Mutex<Vec<(String, Option<Progress>)>>>;

/// Sees, after a failure, what the actor wrote.
struct FailureHandler {
    seen: Seen,
}

#[async_trait]
impl Middleware for FailureHandler {
    fn name(&self) -> &'static str {
        "failure_handler"
    }

    async fn handle(&self, ctx: &Context, next: Next<'_>) -> Outcome {
        let mut outcome = next.run(ctx).await;
        if let Outcome::Failed(failure) = &mut outcome {
            let progress = ctx.metadata(|m| m.get::<Progress>().cloned());
            self.seen.lock().unwrap().push((failure.record().message.clone(), progress));
        }
        outcome
    }
}

#[tokio::test]
async fn failure_handlers_see_the_metadata_the_actor_wrote() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let broker = MemoryBroker::new();
    let app = App::builder(broker.clone())
        .middleware(FailureHandler { seen: Arc::clone(&seen) })
        .actor::<Export>()
        .build()
        .unwrap();
    Export { fail: true }.send(&app).await.unwrap();
    Export { fail: false }.send(&app).await.unwrap();
    let report = Worker::new(app).run_until_drained(Duration::from_secs(5)).await.unwrap();
    assert_eq!((report.succeeded, report.failed), (1, 1), "{report:?}");
    assert_eq!(*seen.lock().unwrap(), [("export failed half-way".to_owned(), Some(Progress(50)))]);
    let dead = broker.list("default", 10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert!(dead[0].reason.ends_with("ExportFailed: export failed half-way"), "{}", dead[0].reason);
}

#[derive(Actor, Serialize, Deserialize)]
struct Parent {
    children: u32,
}

impl Parent {
    async fn perform(self, ctx: &Context) -> Result<(), dramaturg::EnqueueError> {
        for user_id in 0..self.children {
            SendWelcome { user_id: user_id.into() }.send(ctx.app()).await?;
        }
        Ok(())
    }
}

#[tokio::test]
async fn actors_send_follow_up_messages_through_the_context() {
    let broker = MemoryBroker::new();
    let app = App::builder(broker.clone()).actor::<Parent>().actor::<SendWelcome>().build().unwrap();
    Parent { children: 5 }.send(&app).await.unwrap();
    let report = Worker::new(app).run_until_drained(Duration::from_secs(5)).await.unwrap();
    assert_eq!(report.succeeded, 6, "{report:?}");
}

#[tokio::test]
async fn options_resolve_message_then_actor() {
    let seen = Arc::new(Mutex::new(None));
    struct Capture(Arc<Mutex<Option<Options>>>);
    #[async_trait]
    impl Middleware for Capture {
        fn name(&self) -> &'static str {
            "capture"
        }
        async fn handle(&self, ctx: &Context, next: Next<'_>) -> Outcome {
            *self.0.lock().unwrap() = Some(ctx.options().clone());
            next.run(ctx).await
        }
    }
    let app = App::builder(MemoryBroker::new())
        .middleware(Capture(Arc::clone(&seen)))
        .actor::<SendWelcome>()
        .build()
        .unwrap();
    SendWelcome { user_id: 1 }
        .send_with(&app, SendOptions::default().with_options(|o| o.with_max_retries(2)))
        .await
        .unwrap();
    Worker::new(app).run_until_drained(Duration::from_secs(5)).await.unwrap();
    let options = seen.lock().unwrap().clone().unwrap();
    assert_eq!(options.max_retries, Some(2), "the message's own option wins");
    assert_eq!(options.time_limit, Some(Duration::from_secs(90)), "the actor's attribute fills the gap");
}

#[tokio::test]
async fn known_options_of_the_wrong_type_are_refused_at_send_time() {
    let broker = MemoryBroker::new();
    let app = dramaturg::app(broker.clone()).actor::<SendWelcome>().build().unwrap();
    let lots = SendOptions::default().with_options(|o| o.with_extra("max_retries", "lots"));
    let error = SendWelcome { user_id: 1 }.send_with(&app, lots).await.unwrap_err();
    let EnqueueError::InvalidOption(option) = &error else { panic!("{error:?}") };
    assert_eq!(option.key(), "max_retries");
    // The options the default middleware declared are checked by the app.
    let abortable = SendOptions::default().with_options(|o| o.with_extra("abortable", "yes"));
    let error = SendWelcome { user_id: 2 }.send_with(&app, abortable).await.unwrap_err();
    let EnqueueError::InvalidOption(option) = &error else { panic!("{error:?}") };
    assert_eq!(option.key(), "abortable");
    let callback = SendOptions::default().with_options(|o| o.with_extra("on_success", 42));
    let error = SendWelcome { user_id: 3 }.send_with(&app, callback).await.unwrap_err();
    let EnqueueError::InvalidOption(option) = &error else { panic!("{error:?}") };
    assert_eq!(option.key(), "on_success");
    // A per-message option no middleware declared travels as it is (a
    // foreign producer's, or data for a hook that reads it unannounced).
    let unknown = SendOptions::default().with_options(|o| o.with_extra("pipe_target", "elsewhere"));
    SendWelcome { user_id: 5 }.send_with(&app, unknown).await.unwrap();
    QueueAdmin::purge(&broker, "mail").await.unwrap();
    assert_eq!(broker.stats("mail").await.unwrap().ready, 0, "nothing was enqueued");
    // The right type, set through the open map, is taken as the typed option.
    let three = SendOptions::default().with_options(|o| o.with_extra("max_retries", 3));
    SendWelcome { user_id: 4 }.send_with(&app, three).await.unwrap();
    let mut consumer = dramaturg::Broker::consume(&broker, "mail", 1).await.unwrap();
    let message = app.encoder().decode_message(consumer.next().await.unwrap().body()).unwrap();
    assert_eq!(message.options.max_retries, Some(3));
}

/// The tenant a message belongs to: an option a middleware of the user's
/// declares.
const TENANT: dramaturg::OptionKey<String> = dramaturg::OptionKey::new("tenant");

/// Reads [`TENANT`]; declares it so that actors may set it.
struct Tenancy;

#[async_trait]
impl Middleware for Tenancy {
    fn name(&self) -> &'static str {
        "tenancy"
    }

    fn declared_options(&self) -> Vec<dramaturg::DeclaredOption> {
        vec![TENANT.declare()]
    }
}

#[derive(Actor, Serialize, Deserialize)]
#[actor(option(tenant = "acme"))]
struct TenantReport;

impl TenantReport {
    async fn perform(self, ctx: &Context) -> Result<(), BoxError> {
        assert_eq!(ctx.options().option(TENANT)?.as_deref(), Some("acme"));
        Ok(())
    }
}

#[derive(Actor, Serialize, Deserialize)]
#[actor(option(tennant = "acme"))]
struct MisspeltTenant;

impl MisspeltTenant {
    async fn perform(self, _ctx: &Context) -> Result<(), BoxError> {
        Ok(())
    }
}

#[derive(Actor, Serialize, Deserialize)]
#[actor(option(tenant = 42))]
struct NumericTenant;

impl NumericTenant {
    async fn perform(self, _ctx: &Context) -> Result<(), BoxError> {
        Ok(())
    }
}

#[tokio::test]
async fn actor_options_must_be_declared_by_a_middleware_of_the_app() {
    // Declared: built, sent, read back typed by the actor.
    let app = dramaturg::app(MemoryBroker::new()).middleware(Tenancy).actor::<TenantReport>().build().unwrap();
    assert!(app.declared_options().iter().any(|d| d.name() == "tenant" && d.propagates()));
    TenantReport.send(&app).await.unwrap();
    let report = Worker::new(app).run_until_drained(Duration::from_secs(5)).await.unwrap();
    assert_eq!(report.succeeded, 1, "{report:?}");

    // A typo, or the middleware left out: refused when the app is built,
    // naming the actor, the option and what the app's middleware read.
    let error = dramaturg::app(MemoryBroker::new()).middleware(Tenancy).actor::<MisspeltTenant>().build().unwrap_err();
    let ConfigError::UnknownOption { actor, option, known } = &error else { panic!("{error:?}") };
    assert_eq!((actor.as_str(), option.as_str()), ("misspelt_tenant", "tennant"));
    assert!(known.contains(&"tenant") && known.contains(&"on_failure"), "{known:?}");
    assert!(error.to_string().contains("no middleware of the app reads"), "{error}");
    let error = dramaturg::app(MemoryBroker::new()).actor::<TenantReport>().build().unwrap_err();
    assert!(matches!(&error, ConfigError::UnknownOption { option, .. } if option == "tenant"), "{error:?}");

    // Declared, of the wrong type.
    let error = dramaturg::app(MemoryBroker::new()).middleware(Tenancy).actor::<NumericTenant>().build().unwrap_err();
    let ConfigError::InvalidOption { actor, source } = &error else { panic!("{error:?}") };
    assert_eq!((actor.as_str(), source.key()), ("numeric_tenant", "tenant"));
}

#[tokio::test]
async fn send_returns_a_handle_typed_by_the_actor() {
    let app = app(&MemoryBroker::new());
    let sent: dramaturg::Sent<SendWelcome> = SendWelcome { user_id: 7 }.send(&app).await.unwrap();
    assert_eq!(sent.actor_name(), "send_welcome");
    assert_eq!(dramaturg::Sent::<SendWelcome>::from_id(sent.id()), sent);
    assert_eq!(sent.to_string(), sent.id().to_string());
    let many = app.send_many(&[SendWelcome { user_id: 8 }, SendWelcome { user_id: 9 }]).await.unwrap();
    assert_eq!(many.len(), 2);
    assert_ne!(many[0], many[1]);
}

/// A memory broker that takes queue names of at most 8 bytes.
#[derive(Debug)]
struct ShortNames(MemoryBroker);

#[dramaturg::async_trait]
impl dramaturg::Broker for ShortNames {
    async fn declare_queue(&self, queue: &str) -> Result<(), dramaturg::BrokerError> {
        self.0.declare_queue(queue).await
    }

    async fn enqueue(&self, message: dramaturg::Outgoing) -> Result<(), dramaturg::BrokerError> {
        self.0.enqueue(message).await
    }

    async fn consume(
        &self,
        queue: &str,
        prefetch: usize,
    ) -> Result<Box<dyn dramaturg::Consumer>, dramaturg::BrokerError> {
        self.0.consume(queue, prefetch).await
    }

    fn check_queue_name(&self, name: &str) -> Result<(), dramaturg::BrokerError> {
        if name.len() > 8 {
            return Err(dramaturg::BrokerError::new(dramaturg::BrokerErrorKind::InvalidInput, "over 8 bytes"));
        }
        Ok(())
    }
}

#[tokio::test]
async fn build_asks_the_broker_about_every_queue_name_with_the_prefix() {
    // "mail" with a 4-byte prefix fits; with a 5-byte one it does not.
    let app = App::builder(ShortNames(MemoryBroker::new())).queue_prefix("dev-").actor::<SendWelcome>().build();
    assert_eq!(app.unwrap().queues(), ["dev-mail"]);
    let error =
        App::builder(ShortNames(MemoryBroker::new())).queue_prefix("test-").actor::<SendWelcome>().build().unwrap_err();
    let expected = dramaturg::BrokerError::new(dramaturg::BrokerErrorKind::InvalidInput, "over 8 bytes");
    assert_eq!(
        error,
        ConfigError::QueueName { actor: "send_welcome".into(), queue: "test-mail".into(), source: Arc::new(expected) }
    );
    assert_eq!(error.to_string(), r#"actor "send_welcome": the broker cannot use its queue "test-mail": over 8 bytes"#);
    // The memory broker has no limit of its own.
    let long = "q".repeat(10_000);
    assert!(App::builder(MemoryBroker::new()).queue_prefix(long).actor::<SendWelcome>().build().is_ok());
}
