//! The callbacks middleware of [dramaturg](https://docs.rs/dramaturg): when
//! a message succeeds or fails, send a message to another actor, named per
//! actor (`#[actor(on_failure = ReportFailure)]`, by its type, or
//! `on_failure = "report_failure"`, by its name) or per message.
//!
//! | option | fires | the callback receives |
//! |---|---|---|
//! | `on_success` | once, when the actor succeeds | `result` |
//! | `on_failure` | after **every** failed attempt, retried or not | `error` |
//! | `on_retry_exhausted` | **once**, when the message fails for good (retries used up, or not to be retried) and is dead-lettered | `error` |
//!
//! Users often confuse the last two: a message that fails three times and is
//! then dead-lettered fires `on_failure` three times and
//! `on_retry_exhausted` once. Use `on_retry_exhausted` for "tell a human",
//! `on_failure` for "count every failure".
//!
//! The callback actor's arguments are a record with the fields
//! `message_id`, `actor` (the original actor's name), `args` (the original
//! arguments), `retries`, and `result` (the original actor's return value)
//! or `error` (an [`ErrorRecord`]). Declare only the fields you need:
//!
//! ```
//! use dramaturg_core::{ErrorRecord, MessageId};
//! use serde::{Deserialize, Serialize};
//!
//! # #[derive(Serialize, Deserialize)] struct Export { report_id: u64 }
//! /// `#[derive(Actor)]` on this, with an `async fn perform`, makes it a
//! /// callback actor for `Export`.
//! #[derive(Serialize, Deserialize)]
//! struct ExportFailed {
//!     message_id: MessageId,
//!     args: Export,
//!     error: ErrorRecord,
//! }
//! ```
//!
//! # With Python Dramatiq
//!
//! On an app with the [Dramatiq encoder](dramaturg_core::dramatiq) (a
//! broker speaking Dramatiq's layout), a callback gets what Python
//! Dramatiq's callbacks get, positionally: the original message as a dict,
//! then the result (`on_success`), `{"type": …, "message": …}` of the
//! error (`on_failure`), or `{"retries": …, "max_retries": …}`
//! (`on_retry_exhausted`). A callback may name an actor that runs in Python,
//! made known to the app with
//! [`AppBuilder::remote`](dramaturg_core::AppBuilder::remote), so that a
//! message sent from Python with `on_success="report"` reaches Python's
//! `report` after a Rust actor ran it. And a Rust actor that is a step of a
//! Python `pipeline` sends the next step (`pipe_target`, with the result
//! appended to its positional arguments unless `pipe_ignore`, after its
//! `delay`), as Dramatiq's `Pipelines` middleware does; a next step that
//! cannot be sent fails the message, as an `on_success` callback would.
//!
//! The callback actors named in a registered actor's options
//! (`#[actor(on_failure = …)]`) must be registered too: `build()` fails
//! with `ConfigError::UnknownActor` naming the one it does not know. Names
//! set per message are checked when the callback fires.
//!
//! # Context travels with the callback
//!
//! A callback message carries the original message's **own options of the
//! open map** (`Options::extra`: a tenant, a trace id — whatever your
//! enqueue middleware expects to find), so that the hooks that check them
//! at send time accept the callback as they accepted the original. What
//! belongs to the original's processing does not travel: its typed options
//! (`max_retries`, `time_limit`, `priority`, …, which the callback actor
//! takes from its own attributes), its callback options (a callback would
//! otherwise fire callbacks of its own), the retry middleware's
//! `last_error` and the abort middleware's `abortable` — every option a
//! middleware declared with
//! [`OptionKey::declare_local`](dramaturg_core::OptionKey::declare_local). Choose otherwise
//! with [`Callbacks::propagate_only`] or [`Callbacks::propagate_nothing`].
//!
//! # A callback that cannot be sent
//!
//! A callback is sent after the outcome is known and before the original
//! delivery is settled. A send that fails for a reason that may pass (the
//! broker is away) is tried again for up to [`Callbacks::send_retry_for`]
//! (5 s by default). If it still cannot be sent — no such actor, an enqueue
//! hook refused it, the broker stayed away — it is logged at ERROR,
//! counted ([`Callbacks::not_sent`]), and shows in the original's outcome:
//!
//! - `on_success`: the success becomes a failure ([`CallbackNotSent`]), so
//!   the message is dead-lettered with a reason naming the callback — the
//!   actor's side effects did happen; replaying the dead letter runs it
//!   again (at-least-once);
//! - `on_failure` / `on_retry_exhausted` of a message that failed for
//!   good: the dead letter's reason gains a line naming the callback;
//! - `on_failure` of an attempt whose retry is already enqueued: the
//!   outcome stays a retry (failing this delivery too would dead-letter a
//!   message that is still being retried); the log and the count say it.

mod dramatiq;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dramaturg_core::dramatiq::Dramatiq;
use dramaturg_core::encoder::{decode_value, encode_value, Encoder as _};
use dramaturg_core::{
    async_trait, App, ConfigError, Context, DeclaredOption, ErrorRecord, Failure, Message, MessageId, Middleware, Next,
    OptionKey, Options, Outcome, Output, State,
};
use serde::Serialize;

/// The option naming the actor to send when a message succeeds.
pub const ON_SUCCESS: OptionKey<String> = OptionKey::new("on_success");
/// The option naming the actor to send after every failed attempt.
pub const ON_FAILURE: OptionKey<String> = OptionKey::new("on_failure");
/// The option naming the actor to send once when a message fails for good.
pub const ON_RETRY_EXHAUSTED: OptionKey<String> = OptionKey::new("on_retry_exhausted");

/// The three callback options.
const CALLBACKS: [OptionKey<String>; 3] = [ON_SUCCESS, ON_FAILURE, ON_RETRY_EXHAUSTED];

/// Sets callback options on a message's [`Options`].
///
/// ```
/// use dramaturg_callbacks::CallbackOptions;
/// use dramaturg_core::Options;
///
/// let options = Options::default().on_retry_exhausted("page_someone");
/// assert_eq!(options.option(dramaturg_callbacks::ON_RETRY_EXHAUSTED).unwrap().as_deref(), Some("page_someone"));
/// ```
pub trait CallbackOptions {
    /// Sends `actor` when the message succeeds.
    #[must_use]
    fn on_success(self, actor: &str) -> Self;
    /// Sends `actor` after every failed attempt.
    #[must_use]
    fn on_failure(self, actor: &str) -> Self;
    /// Sends `actor` once when the message fails for good.
    #[must_use]
    fn on_retry_exhausted(self, actor: &str) -> Self;
}

impl CallbackOptions for Options {
    fn on_success(self, actor: &str) -> Self {
        self.with_option(ON_SUCCESS, actor.to_owned())
    }

    fn on_failure(self, actor: &str) -> Self {
        self.with_option(ON_FAILURE, actor.to_owned())
    }

    fn on_retry_exhausted(self, actor: &str) -> Self {
        self.with_option(ON_RETRY_EXHAUSTED, actor.to_owned())
    }
}

/// What a callback actor receives.
#[derive(Serialize)]
struct Payload<'a> {
    message_id: MessageId,
    actor: &'a str,
    args: serde_json::Value,
    retries: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    result: Option<&'a Output>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a ErrorRecord>,
}

/// Which of the original message's options a callback carries.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Propagation {
    /// Every option of the open map except those a middleware declared
    /// local to the message's own processing
    /// ([`OptionKey::declare_local`](dramaturg_core::OptionKey::declare_local):
    /// the callback options themselves, the retry middleware's
    /// `last_error`, the abort middleware's `abortable`). The default.
    Extra,
    /// Only these options of the open map.
    Only(Vec<String>),
    /// None: the callback starts with fresh options.
    Nothing,
}

/// The callbacks middleware's counts, in the app's state (the middleware
/// puts them there when the app is built):
/// `app.state::<CallbackCounts>()?.not_sent()`.
#[derive(Debug, Clone)]
pub struct CallbackCounts {
    not_sent: Arc<AtomicU64>,
}

impl CallbackCounts {
    /// How many callbacks could not be sent since the app was built.
    pub fn not_sent(&self) -> u64 {
        self.not_sent.load(Ordering::Relaxed)
    }
}

/// A callback could not be sent; the original message's outcome says so.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct CallbackNotSent {
    /// The option that named it (`on_success`, …).
    pub option: &'static str,
    /// The callback actor's name.
    pub callback: String,
    /// Why it was not sent.
    pub reason: String,
}

impl std::fmt::Display for CallbackNotSent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} callback {:?} could not be sent: {}", self.option, self.callback, self.reason)
    }
}

impl std::error::Error for CallbackNotSent {}

/// The callbacks middleware. Named `"callbacks"` in the stack; it must sit
/// outside the retry middleware to tell a retried failure from a final one.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use dramaturg_callbacks::Callbacks;
///
/// let callbacks = Callbacks::new().propagate_only(["tenant", "trace_id"]).send_retry_for(Duration::from_secs(10));
/// # let _ = callbacks;
/// ```
#[derive(Debug, Clone)]
pub struct Callbacks {
    propagation: Propagation,
    retry_for: Duration,
    not_sent: Arc<AtomicU64>,
}

impl Default for Callbacks {
    fn default() -> Self {
        Self::new()
    }
}

impl Callbacks {
    /// The middleware: callbacks carry the original's options of the open
    /// map (see the crate docs), and sends are tried again for up to 5 s.
    pub fn new() -> Self {
        Self { propagation: Propagation::Extra, retry_for: Duration::from_secs(5), not_sent: Arc::default() }
    }

    /// Callbacks carry only these options of the original message's open map.
    #[must_use]
    pub fn propagate_only<I, S>(mut self, keys: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.propagation = Propagation::Only(keys.into_iter().map(Into::into).collect());
        self
    }

    /// Callbacks carry none of the original message's options.
    #[must_use]
    pub fn propagate_nothing(mut self) -> Self {
        self.propagation = Propagation::Nothing;
        self
    }

    /// How long a callback send that failed for a reason that may pass
    /// (connection lost, timeout) is tried again (default 5 s; zero: once).
    #[must_use]
    pub fn send_retry_for(mut self, duration: Duration) -> Self {
        self.retry_for = duration;
        self
    }

    /// How many callbacks could not be sent since this middleware was made
    /// (shared by its clones). From an app, read it through its state:
    /// `app.state::<CallbackCounts>()?.not_sent()`.
    pub fn not_sent(&self) -> u64 {
        self.not_sent.load(Ordering::Relaxed)
    }

    /// The options a callback of `original` starts with.
    fn propagated(&self, app: &App, original: &Options) -> Options {
        let local = |key: &str| {
            dramatiq::COMPOSITION.contains(&key)
                || app.declared_options().iter().any(|d| d.name() == key && !d.propagates())
        };
        let extra: BTreeMap<String, serde_json::Value> = match &self.propagation {
            Propagation::Nothing => BTreeMap::new(),
            Propagation::Extra => original.extra.iter().filter(|(k, _)| !local(k)).map(clone_entry).collect(),
            Propagation::Only(keys) => {
                original.extra.iter().filter(|(k, _)| keys.contains(k)).map(clone_entry).collect()
            }
        };
        let mut options = Options::default();
        options.extra = extra;
        options
    }

    /// Sends the callback named by option `key` of `ctx`'s message, if any.
    async fn fire(
        &self,
        ctx: &Context,
        key: OptionKey<String>,
        result: Option<&Output>,
        error: Option<&ErrorRecord>,
    ) -> Result<(), CallbackNotSent> {
        let name = match ctx.options().option(key) {
            Ok(Some(name)) => name,
            Ok(None) => return Ok(()),
            Err(error) => {
                return Err(self.count_not_sent(CallbackNotSent {
                    option: key.name(),
                    callback: String::new(),
                    reason: error.to_string(),
                }));
            }
        };
        // Boxed: the send is a large future, and most messages have no
        // callback; unboxed it would grow every message's.
        Box::pin(self.send(ctx, key, &name, result, error))
            .await
            .map_err(|reason| self.count_not_sent(CallbackNotSent { option: key.name(), callback: name, reason }))
    }

    /// Sends the next step of a Python Dramatiq pipeline (`pipe_target`)
    /// that a message on the Dramatiq encoder carries.
    async fn pipe(&self, ctx: &Context, output: &Output) -> Result<(), CallbackNotSent> {
        if ctx.app().encoder().name() != Dramatiq.name() {
            return Ok(());
        }
        let not_sent = |callback: String, reason: String| CallbackNotSent { option: "pipe_target", callback, reason };
        match dramatiq::pipe_next(ctx, output) {
            Ok(None) => Ok(()),
            Ok(Some((message, delay))) => {
                let actor = message.actor.clone();
                Box::pin(self.enqueue_retrying(ctx.app(), message, delay))
                    .await
                    .map_err(|reason| self.count_not_sent(not_sent(actor, reason)))
            }
            Err(reason) => Err(self.count_not_sent(not_sent(String::new(), reason))),
        }
    }

    fn count_not_sent(&self, error: CallbackNotSent) -> CallbackNotSent {
        self.not_sent.fetch_add(1, Ordering::Relaxed);
        tracing::error!(callback = %error.callback, option = error.option, reason = %error.reason, "callback not sent");
        error
    }

    async fn send(
        &self,
        ctx: &Context,
        key: OptionKey<String>,
        name: &str,
        result: Option<&Output>,
        error: Option<&ErrorRecord>,
    ) -> Result<(), String> {
        let app = ctx.app();
        let queue =
            app.actor(name).map(|callback| callback.queue()).or_else(|| app.remote_queue(name)).ok_or_else(|| {
                format!("no actor named {name:?} is registered or made known with AppBuilder::remote")
            })?;
        let original = ctx.message();
        let bytes = if app.encoder().name() == Dramatiq.name() {
            dramatiq::payload(ctx, key, result, error)
        } else {
            let args = decode_value::<serde_json::Value>(app.encoder(), &original.args).map_err(|e| e.to_string())?;
            let payload = Payload {
                message_id: original.id,
                actor: &original.actor,
                args,
                retries: original.retries,
                result,
                error,
            };
            encode_value(app.encoder(), &payload).map_err(|e| e.to_string())
        }?;
        let mut message = Message::new(queue, name, bytes.into());
        message.enqueued_at_ms = app.broker().now_ms();
        message.options = self.propagated(app, &original.options);
        self.enqueue_retrying(app, message, None).await
    }

    /// Enqueues `message`, trying again for up to `retry_for` while the
    /// broker fails for a reason that may pass.
    async fn enqueue_retrying(&self, app: &App, message: Message, delay: Option<Duration>) -> Result<(), String> {
        app.enqueue_retrying(message, delay, self.retry_for).await.map(drop).map_err(|error| error.to_string())
    }
}

fn clone_entry((key, value): (&String, &serde_json::Value)) -> (String, serde_json::Value) {
    (key.clone(), value.clone())
}

/// `failure` with a line about `not_sent` added to its record, so that the
/// dead letter's reason names the callback.
fn note(failure: &mut Failure, not_sent: &CallbackNotSent) {
    let mut record = failure.record().clone();
    record.sources.push(not_sent.to_string());
    *failure = Failure::from_record(record);
}

#[async_trait]
impl Middleware for Callbacks {
    fn name(&self) -> &'static str {
        dramaturg_core::middleware::names::CALLBACKS
    }

    fn register_state(&self, state: &mut State) -> Result<(), ConfigError> {
        state.insert(CallbackCounts { not_sent: Arc::clone(&self.not_sent) })
    }

    /// Callback options name an actor: a string (the app checks their type
    /// at build and at every send).
    fn declared_options(&self) -> Vec<DeclaredOption> {
        CALLBACKS.iter().map(|key| key.declare_local()).collect()
    }

    /// Every callback named in a registered actor's options is a registered
    /// actor (names set per message can only be checked when they fire).
    fn check_app(&self, app: &App) -> Result<(), ConfigError> {
        let mut actors: Vec<_> = app.actors().collect();
        actors.sort_by_key(|actor| actor.name());
        for actor in actors {
            for option in CALLBACKS {
                let name = actor.options().option(option).map_err(|e| ConfigError::Invalid(e.to_string()))?;
                if let Some(name) = name.filter(|name| app.actor(name).is_none() && app.remote_queue(name).is_none()) {
                    return Err(ConfigError::UnknownActor {
                        actor: actor.name().to_owned(),
                        option: option.name().to_owned(),
                        name,
                    });
                }
            }
        }
        Ok(())
    }

    async fn handle(&self, ctx: &Context, next: Next<'_>) -> Outcome {
        let mut outcome = next.run(ctx).await;
        match &mut outcome {
            Outcome::Succeeded(output) => {
                if let Err(not_sent) = self.fire(ctx, ON_SUCCESS, Some(output), None).await {
                    return Outcome::Failed(Failure::from_error(not_sent));
                }
                if let Err(not_sent) = self.pipe(ctx, output).await {
                    return Outcome::Failed(Failure::from_error(not_sent));
                }
            }
            Outcome::Retried(failure, _) => {
                // The next attempt is enqueued already: logged and counted only.
                let _ = self.fire(ctx, ON_FAILURE, None, Some(failure.record())).await;
            }
            Outcome::Failed(failure) => {
                let record = failure.record().clone();
                let on_failure = self.fire(ctx, ON_FAILURE, None, Some(&record)).await;
                let exhausted = self.fire(ctx, ON_RETRY_EXHAUSTED, None, Some(&record)).await;
                for not_sent in [on_failure.err(), exhausted.err()].into_iter().flatten() {
                    note(failure, &not_sent);
                }
            }
            _ => {}
        }
        outcome
    }
}
