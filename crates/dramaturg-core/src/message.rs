//! The message envelope.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use crate::options::OptionKey;
use crate::{MessageId, Options};

/// One job on its way through a broker: who runs it, with which arguments,
/// under which options.
///
/// The arguments are kept encoded (by the app's [`Encoder`](crate::Encoder));
/// the worker decodes them into the actor's type just before it runs.
#[derive(Clone, PartialEq)]
#[non_exhaustive]
pub struct Message {
    /// Unique id, kept across retries.
    pub id: MessageId,
    /// The queue the message is sent to.
    pub queue: String,
    /// The name of the actor that processes it.
    pub actor: String,
    /// The actor's arguments, encoded.
    pub args: Bytes,
    /// Options for this message (they override the actor's defaults).
    pub options: Options,
    /// When the message was first enqueued, in milliseconds since the Unix epoch.
    /// Retries keep the original time.
    pub enqueued_at_ms: u64,
    /// How many times the message has been retried so far (0 on the first attempt).
    pub retries: u32,
}

impl Message {
    /// A new message, stamped with a fresh id and the current time of this
    /// process (the app's send path stamps it again by the broker's clock,
    /// [`Broker::now_ms`](crate::Broker::now_ms)).
    pub fn new(queue: impl Into<String>, actor: impl Into<String>, args: Bytes) -> Self {
        Self {
            id: MessageId::new(),
            queue: queue.into(),
            actor: actor.into(),
            args,
            options: Options::default(),
            enqueued_at_ms: now_ms(),
            retries: 0,
        }
    }

    /// How long before `now_ms` (milliseconds since the Unix epoch) the
    /// message was first enqueued; zero if `now_ms` is earlier. In a
    /// handler or middleware, [`Context::message_age`](crate::Context::message_age)
    /// measures it by the broker's clock.
    pub fn age_at(&self, now_ms: u64) -> Duration {
        Duration::from_millis(now_ms.saturating_sub(self.enqueued_at_ms))
    }

    /// The delay it was sent with, from its [`ETA`] option (none for a
    /// message sent for now).
    pub fn send_delay(&self) -> Option<Duration> {
        let eta = self.options.option(ETA).ok().flatten()?;
        Some(Duration::from_millis(eta.saturating_sub(self.enqueued_at_ms)))
    }
}

/// The option a delayed message carries: when it falls due, in milliseconds
/// since the Unix epoch (Dramatiq's name and meaning). Set when it is sent.
pub const ETA: OptionKey<u64> = OptionKey::new("eta");

/// The option naming the middleware a message cannot be run without
/// (`["results"]` for a pipeline step): a worker whose app lacks one of
/// them dead-letters the message with a reason naming it — telling its
/// other middleware, through
/// [`Middleware::on_rejected`](crate::Middleware::on_rejected) — rather
/// than running it and silently dropping what that middleware would have
/// done. Middleware set it on the messages that need them.
pub const NEEDS: OptionKey<Vec<String>> = OptionKey::new("needs");

impl fmt::Debug for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Arguments can be large or sensitive: show their size, not their bytes.
        f.debug_struct("Message")
            .field("id", &self.id)
            .field("queue", &self.queue)
            .field("actor", &self.actor)
            .field("args_len", &self.args.len())
            .field("options", &self.options)
            .field("enqueued_at_ms", &self.enqueued_at_ms)
            .field("retries", &self.retries)
            .finish()
    }
}

/// The wall clock in milliseconds since the Unix epoch (zero if the clock is
/// before it): the unit of `Message::enqueued_at_ms`, of due times and of
/// retention in the brokers.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, crate::time::millis)
}
