//! The callbacks middleware of [dramaturg](https://docs.rs/dramaturg): when
//! a message succeeds or fails, send a message to another actor, named per
//! actor (`#[actor(on_failure = "report_failure")]`) or per message.
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
//! A callback is sent after the outcome is known and before the original
//! delivery is settled. If it cannot be sent (unknown actor, broker error),
//! the error is logged and the original message is settled as usual: the
//! callback is not retried.

use dramaturg_core::encoder::{decode_value, encode_value};
use dramaturg_core::{
    async_trait, Context, ErrorRecord, Message, MessageId, Middleware, Next, Options, Outcome, Output,
};
use serde::Serialize;

/// The option naming the actor to send when a message succeeds.
pub const ON_SUCCESS: &str = "on_success";
/// The option naming the actor to send after every failed attempt.
pub const ON_FAILURE: &str = "on_failure";
/// The option naming the actor to send once when a message fails for good.
pub const ON_RETRY_EXHAUSTED: &str = "on_retry_exhausted";

/// Sets callback options on a message's [`Options`].
///
/// ```
/// use dramaturg_callbacks::CallbackOptions;
/// use dramaturg_core::Options;
///
/// let options = Options::default().on_retry_exhausted("page_someone");
/// assert_eq!(options.extra::<String>("on_retry_exhausted").unwrap().as_deref(), Some("page_someone"));
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
        self.with_extra(ON_SUCCESS, actor)
    }

    fn on_failure(self, actor: &str) -> Self {
        self.with_extra(ON_FAILURE, actor)
    }

    fn on_retry_exhausted(self, actor: &str) -> Self {
        self.with_extra(ON_RETRY_EXHAUSTED, actor)
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

/// The callbacks middleware. Named `"callbacks"` in the stack; it must sit
/// outside the retry middleware to tell a retried failure from a final one.
#[derive(Debug, Clone, Default)]
pub struct Callbacks;

impl Callbacks {
    /// The middleware.
    pub fn new() -> Self {
        Self
    }
}

/// Sends the callback named by option `key` of `ctx`'s message, if any.
async fn fire(ctx: &Context, key: &str, result: Option<&Output>, error: Option<&ErrorRecord>) {
    let name = match ctx.options().extra::<String>(key) {
        Ok(Some(name)) => name,
        Ok(None) => return,
        Err(error) => {
            tracing::error!(%error, "invalid callback option; no callback sent");
            return;
        }
    };
    if let Err(reason) = send(ctx, &name, result, error).await {
        tracing::error!(callback = %name, %reason, "{key} callback not sent");
    }
}

async fn send(ctx: &Context, name: &str, result: Option<&Output>, error: Option<&ErrorRecord>) -> Result<(), String> {
    let app = ctx.app();
    let callback = app.actor(name).ok_or_else(|| format!("no actor named {name:?} is registered"))?;
    let original = ctx.message();
    let args = decode_value::<serde_json::Value>(app.encoder(), &original.args).map_err(|e| e.to_string())?;
    let payload =
        Payload { message_id: original.id, actor: &original.actor, args, retries: original.retries, result, error };
    let bytes = encode_value(app.encoder(), &payload).map_err(|e| e.to_string())?;
    let message = Message::new(callback.queue(), name, bytes.into());
    app.enqueue(message, None).await.map(drop).map_err(|e| e.to_string())
}

#[async_trait]
impl Middleware for Callbacks {
    fn name(&self) -> &'static str {
        "callbacks"
    }

    async fn handle(&self, ctx: &Context, next: Next<'_>) -> Outcome {
        let mut outcome = next.run(ctx).await;
        match &mut outcome {
            Outcome::Succeeded(output) => fire(ctx, ON_SUCCESS, Some(output), None).await,
            Outcome::Retried(failure, _) => fire(ctx, ON_FAILURE, None, Some(failure.record())).await,
            Outcome::Failed(failure) => {
                let record = failure.record();
                fire(ctx, ON_FAILURE, None, Some(record)).await;
                fire(ctx, ON_RETRY_EXHAUSTED, None, Some(record)).await;
            }
            _ => {}
        }
        outcome
    }
}
