//! The RabbitMQ broker of [dramaturg](https://docs.rs/dramaturg), on lapin
//! (AMQP 0-9-1).
//!
//! - **Nothing lost**: durable queues, persistent messages, publisher
//!   confirms on by default (a send returns once RabbitMQ has the message),
//!   manual acknowledgements, `basic.qos` prefetch tied to the worker.
//! - **Delays without holding deliveries**: a delayed message waits in
//!   per-queue delay buckets on the server (durable queues whose messages all
//!   live `10 ms × 2^k`, then dead-letter back into the queue). Workers never
//!   keep it unacknowledged, so a delay of hours trips no `consumer_timeout`
//!   and survives every worker restart.
//! - **Dead letters** go to `<queue>.dq` with the reason in a header, kept
//!   `dead_letter_ttl` (7 days) by the queue's own message TTL and capped
//!   per queue at 50,000 messages and 64 MiB of bodies
//!   ([`AmqpConfig::dead_letter_caps`]; RabbitMQ drops the oldest first);
//!   listing and replay through `DeadLetters`.
//! - **`consumer_timeout`**: when RabbitMQ closes a channel because a job
//!   ran longer than its consumer timeout, the worker logs an error naming
//!   the setting and the fix, and dead-letters that message when it comes
//!   back instead of running it into the same timeout again and again.
//! - **Recovery**: a lost connection or channel is opened again with backoff
//!   on next use; queues are declared again; unacknowledged deliveries come
//!   back from the server. Sends during an outage fail with a `Connection`
//!   error, or retry for [`AmqpConfig::retry_enqueue_for`].
//! - **Flow control**: two connections per broker value, one that publishes
//!   and one that consumes, so that a memory or disk alarm, which makes
//!   RabbitMQ block publishing connections, stops neither deliveries nor
//!   acknowledgements. Every publish ends within
//!   [`AmqpConfig::send_timeout`] (error kind `Timeout`; the message may or
//!   may not have been taken), and a send on a blocked connection fails at
//!   once with kind `Blocked` or waits for the unblock ([`OnBlocked`]).
//! - **Heartbeats that jobs cannot starve**: both connections, with
//!   lapin's heartbeat and I/O, live on a small runtime on a thread of
//!   their own, so async jobs that compute without an `.await` on every
//!   thread of the worker's runtime do not make RabbitMQ close the
//!   connection (and hand their messages out again). The thread ends when
//!   the broker value, its clones and its consumers are dropped.
//!
//! - **Fenced settlement**: a delivery is settled only on the channel it
//!   came from while that channel is current; otherwise the settlement
//!   reports `Stale` and sends nothing. `requeue_in_flight` returns this
//!   process's unsettled deliveries by closing their channels.
//! - **Nothing dropped**: publishes are mandatory; a message RabbitMQ
//!   returns because its queue is gone is sent again after declaring the
//!   queue, or the send fails.
//! - **Bounded by construction**: header values are cut to bounds and
//!   header tables checked against a size limit ([below](crate#bounded-headers));
//!   queue names longer than [`MAX_QUEUE_NAME_BYTES`] are refused with a
//!   typed error instead of a panic, and by `AppBuilder::build` already
//!   for the queues of an app's actors.
//!
//! # Aborts need a shared store
//!
//! RabbitMQ has no key/value store, so this broker offers none
//! (`Broker::store` is `None`) and the default stack keeps abort requests
//! in process memory. **Aborts across processes need a store the processes
//! share: a Redis, through `RedisStore`** (feature `redis` of
//! `dramaturg`). On an app whose broker is RabbitMQ and whose abort store
//! is process-local, `abort` fails with `AbortError::EventsNotShared`
//! instead of returning `Ok` for a request no other worker would hear of:
//!
//! ```ignore
//! let app = dramaturg::app(amqp_broker)
//!     .replace("abort", Abortable::new(RedisStore::connect("redis://127.0.0.1:6379").await?))
//!     .build()?;
//! ```
//!
//! See [aborting messages](https://github.com/dramaturg/dramaturg/blob/main/docs/guide.md#aborting-messages)
//! in the guide.
//!
//! Topology of a queue `q` (all durable): `q` itself (dead-lettering to
//! `q.dq`, with `x-max-priority` when configured), `q.dq`, and the delay
//! buckets `q.delay.00` … `q.delay.22`, each declared when a message is
//! first published to it and recorded as a binding of the exchange
//! `dramaturg.delay-buckets`, so that statistics look up only buckets that
//! exist (no errors for the others).
//!
//! # Dramatiq's layout
//!
//! With `?protocol=dramatiq` in the URL (or [`AmqpConfig::protocol`]) the
//! broker speaks Python Dramatiq's RabbitMQ layout, so that Rust and Python
//! workers and producers share queues: queues `q`, `q.DQ` (delayed
//! messages, with `options.eta`) and `q.XQ` (dead letters, with
//! `options.traceback`), declared passively first so that queues Python
//! created are used whatever their arguments; JSON messages (the broker
//! chooses the Dramatiq encoder). Delayed messages are held by the
//! consumers of `q` until due, but never longer than
//! [`AmqpConfig::delay_hold_horizon`], well below RabbitMQ's
//! `consumer_timeout`. See [Dramatiq's layout](https://github.com/dramaturg/dramaturg/blob/main/docs/amqp.md#dramatiqs-layout)
//! in the AMQP guide.
//!
//! # Bounded headers
//!
//! A dead letter's reason is cut to 2 KiB and its key to 256 bytes at the
//! header, whatever the caller passed, and a header table over 3 KiB is
//! refused: RabbitMQ closes the whole connection on a frame over its
//! `frame_max`, so no message may make one.

mod admin;
mod confirms;
mod consumer;
mod delay;
mod dramatiq;
mod error;
mod flow;
mod link;
mod names;
mod pause;
mod queue_type;
mod runtime;
mod target;

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use dramaturg_core::broker::redact_password;
use dramaturg_core::{Broker, BrokerError, Consumer, DeadLetters, Outgoing, QueueAdmin};

use bytes::Bytes;

use crate::consumer::Generation;
use crate::link::{Consuming, Link, Linker};
pub use crate::names::MAX_QUEUE_NAME_BYTES;
pub use crate::queue_type::QueueType;
use crate::target::{Extra, Target};
pub use dramaturg_core::Protocol;

/// Settings of an [`AmqpBroker`].
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use dramaturg_amqp::AmqpConfig;
///
/// let config = AmqpConfig::new("amqp://guest:secret@127.0.0.1:5672/%2f")
///     .max_priority(10)
///     .retry_enqueue_for(Duration::from_secs(5));
/// assert!(!format!("{config:?}").contains("secret"));
/// ```
#[derive(Clone)]
pub struct AmqpConfig {
    url: String,
    confirms: bool,
    max_priority: Option<u8>,
    dead_letter_ttl: Duration,
    dead_letter_max_count: u64,
    dead_letter_max_bytes: u64,
    retry_enqueue_for: Duration,
    send_timeout: Duration,
    on_blocked: OnBlocked,
    expire_unused_queues: Option<Duration>,
    protocol: Protocol,
    delay_hold_horizon: Duration,
    delay_prefetch: u16,
    queue_type: QueueType,
    delivery_limit: Option<u32>,
    /// A query parameter of the URL this broker reads that was invalid.
    url_error: Option<String>,
}

/// The default [`AmqpConfig::delay_hold_horizon`]: 10 minutes, well below
/// RabbitMQ's default `consumer_timeout` of 30 minutes.
pub const DEFAULT_DELAY_HOLD_HORIZON: Duration = Duration::from_secs(10 * 60);

/// The default [`AmqpConfig::delay_prefetch`]: at most 1,000 delayed
/// messages held per consumed queue.
pub const DEFAULT_DELAY_PREFETCH: u16 = 1000;

/// The default cap on the number of dead letters kept per queue (see
/// [`AmqpConfig::dead_letter_caps`]): 50,000, as on the Redis broker.
pub const DEFAULT_DEAD_LETTER_MAX_COUNT: u64 = 50_000;

/// The default cap on the bytes of the dead letters kept per queue (see
/// [`AmqpConfig::dead_letter_caps`]): 64 MiB, as on the Redis broker.
pub const DEFAULT_DEAD_LETTER_MAX_BYTES: u64 = 64 << 20;

/// The smallest byte cap on each queue's dead letters that
/// [`AmqpConfig::dead_letter_caps`] sets: 1 MiB, the default largest message
/// ([`DEFAULT_MAX_MESSAGE_SIZE`](dramaturg_core::DEFAULT_MAX_MESSAGE_SIZE)),
/// so that RabbitMQ, which drops a dead letter larger than the cap, keeps at
/// least the newest one.
pub const MIN_DEAD_LETTER_MAX_BYTES: u64 = dramaturg_core::DEFAULT_MAX_MESSAGE_SIZE as u64;

/// The default [`AmqpConfig::send_timeout`]: 10 seconds.
pub const DEFAULT_SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// What a send does while RabbitMQ blocks the publishing connection
/// (`connection.blocked`: a memory or disk alarm), set with
/// [`AmqpConfig::on_blocked`].
///
/// Either way a send ends by its [`send_timeout`](AmqpConfig::send_timeout),
/// and a send refused before its message was published has sent nothing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum OnBlocked {
    /// Fail at once with an error of kind
    /// [`Blocked`](dramaturg_core::BrokerErrorKind::Blocked): a send that
    /// starts on a blocked connection publishes nothing; a send waiting
    /// for its confirm when the block comes fails then (its message may
    /// still be delivered). The default: a caller (a web request) learns at
    /// once, and [`AmqpConfig::retry_enqueue_for`] can retry it with backoff.
    #[default]
    Fail,
    /// Wait for the connection to be unblocked, up to the send timeout,
    /// before publishing; then fail with
    /// [`Blocked`](dramaturg_core::BrokerErrorKind::Blocked) (nothing
    /// sent). A send already waiting for its confirm keeps waiting until
    /// the send timeout.
    Wait,
}

impl AmqpConfig {
    /// Settings for the server at `url` (`amqp://user:password@host:port/vhost`,
    /// or `amqps://` with the `tls` feature), with the defaults: publisher
    /// confirms on, no priorities, dead letters kept 7 days (at most 50,000
    /// and 64 MiB of messages per queue), no enqueue retries, a send timeout of 10 s, sends failing at once while
    /// RabbitMQ blocks publishing.
    ///
    /// The query parameter `max_priority=N` (0 to 255) sets
    /// [`AmqpConfig::max_priority`], so that a URL alone
    /// (`dramaturg::connect`) can turn priorities on:
    /// `amqp://guest:guest@127.0.0.1:5672/%2f?max_priority=10`; and
    /// `send_timeout_ms=N` (milliseconds, above 0) sets
    /// [`AmqpConfig::send_timeout`]. An invalid value is reported when
    /// connecting, as an error of kind
    /// [`InvalidInput`](dramaturg_core::BrokerErrorKind::InvalidInput).
    /// lapin's own parameters (`heartbeat`, `frame_max`, `channel_max`,
    /// `connection_timeout`, `auth_mechanism`) work as usual, except that
    /// without `frame_max` the broker asks for [`DEFAULT_FRAME_MAX`]
    /// rather than the server's largest; any other
    /// query parameter (a typo) is refused when connecting, as an invalid
    /// value is.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use dramaturg_amqp::AmqpConfig;
    ///
    /// let config = AmqpConfig::new("amqp://127.0.0.1:5672/%2f?heartbeat=10&max_priority=10&send_timeout_ms=2500");
    /// assert_eq!(config.priorities(), Some(10));
    /// assert_eq!(config.sends_time_out_after(), Duration::from_millis(2500));
    /// ```
    pub fn new(url: impl Into<String>) -> Self {
        let url = url.into();
        let mut url_error = None;
        let max_priority = parsed_parameter(&url, "max_priority", "a number from 0 to 255", &mut url_error, |value| {
            value.parse::<u8>().ok()
        });
        let send_timeout =
            parsed_parameter(&url, "send_timeout_ms", "a number of milliseconds above 0", &mut url_error, |value| {
                value.parse::<u64>().ok().filter(|&ms| ms > 0).map(Duration::from_millis)
            });
        let protocol = parsed_parameter(&url, "protocol", "\"native\" or \"dramatiq\"", &mut url_error, |value| {
            value.parse::<Protocol>().ok()
        });
        let queue_type = parsed_parameter(&url, "queue_type", "\"classic\" or \"quorum\"", &mut url_error, |value| {
            value.parse::<QueueType>().ok()
        });
        let delivery_limit =
            parsed_parameter(&url, "delivery_limit", "a number of deliveries above 0", &mut url_error, |value| {
                value.parse::<u32>().ok().filter(|&n| n > 0)
            });
        Self {
            url,
            confirms: true,
            max_priority,
            dead_letter_ttl: Duration::from_secs(7 * 24 * 3600),
            dead_letter_max_count: DEFAULT_DEAD_LETTER_MAX_COUNT,
            dead_letter_max_bytes: DEFAULT_DEAD_LETTER_MAX_BYTES,
            retry_enqueue_for: Duration::ZERO,
            send_timeout: send_timeout.unwrap_or(DEFAULT_SEND_TIMEOUT),
            on_blocked: OnBlocked::default(),
            expire_unused_queues: None,
            protocol: protocol.unwrap_or_default(),
            delay_hold_horizon: DEFAULT_DELAY_HOLD_HORIZON,
            delay_prefetch: DEFAULT_DELAY_PREFETCH,
            queue_type: queue_type.unwrap_or_default(),
            delivery_limit,
            url_error,
        }
    }

    /// Lays the queues out as `protocol` says: dramaturg's own layout
    /// ([`Protocol::Native`], the default) or Python Dramatiq's
    /// ([`Protocol::Dramatiq`]: queues `q`, `q.DQ` and `q.XQ`, JSON
    /// messages), so that Rust and Python workers and producers share
    /// queues. Also `?protocol=dramatiq` in the URL. See
    /// [Dramatiq's layout](crate#dramatiqs-layout).
    #[must_use]
    pub fn protocol(mut self, protocol: Protocol) -> Self {
        self.protocol = protocol;
        self
    }

    /// The layout in use (see [`AmqpConfig::protocol`]).
    pub fn layout(&self) -> Protocol {
        self.protocol
    }

    /// In Dramatiq's layout: the longest a worker holds a delayed message
    /// of a `q.DQ` unacknowledged (default [`DEFAULT_DELAY_HOLD_HORIZON`],
    /// 10 minutes). A message not due by then is published to `q.DQ` again,
    /// unchanged, and the held delivery acknowledged, so that no delivery
    /// is held anywhere near RabbitMQ's `consumer_timeout` (30 minutes by
    /// default), which would close the channel. Keep it well below your
    /// server's `consumer_timeout`. Zero is taken as 1 ms.
    #[must_use]
    pub fn delay_hold_horizon(mut self, horizon: Duration) -> Self {
        self.delay_hold_horizon = horizon.max(Duration::from_millis(1));
        self
    }

    /// The hold horizon of delayed messages (see
    /// [`AmqpConfig::delay_hold_horizon`]).
    pub fn holds_delayed_for(&self) -> Duration {
        self.delay_hold_horizon
    }

    /// In Dramatiq's layout: how many delayed messages of a `q.DQ` a
    /// consumer of `q` holds at most at once, waiting for them to fall due
    /// (default [`DEFAULT_DELAY_PREFETCH`], 1,000; at least 1). Further ones
    /// wait on the server, in `q.DQ`, and are taken as held ones are moved
    /// on: a message due while the holder is full may run late.
    #[must_use]
    pub fn delay_prefetch(mut self, count: u16) -> Self {
        self.delay_prefetch = count.max(1);
        self
    }

    /// The URL lapin connects to: this broker's own query parameters
    /// (`protocol`, `queue_type`) removed, which lapin would not know, and
    /// a `frame_max` of [`DEFAULT_FRAME_MAX`] added if it sets none.
    pub(crate) fn connection_url(&self) -> String {
        let url = without_parameter(&without_parameter(&self.url, "protocol"), "queue_type");
        if dramaturg_core::broker::query_parameter(&url, "frame_max").is_some() {
            return url;
        }
        let (base, fragment) = url.split_once('#').map_or((url.as_str(), None), |(base, f)| (base, Some(f)));
        let separator = if base.contains('?') { '&' } else { '?' };
        let mut with = format!("{base}{separator}frame_max={DEFAULT_FRAME_MAX}");
        if let Some(fragment) = fragment {
            with.push('#');
            with.push_str(fragment);
        }
        with
    }

    /// Refuses a queue type that cannot work with the other settings.
    fn check_queue_type(&self) -> Result<(), String> {
        match (self.queue_type, self.delivery_limit, self.max_priority, self.protocol) {
            (QueueType::Classic, Some(_), ..) => {
                Err("amqp: a delivery limit needs quorum queues (queue_type=quorum); classic queues have none".into())
            }
            (QueueType::Quorum, _, Some(_), _) => Err(
                "amqp: quorum queues take no message priorities in RabbitMQ 3.x: set max_priority or quorum queues, \
                 not both"
                    .into(),
            ),
            (QueueType::Quorum, _, _, Protocol::Dramatiq) => {
                Err("amqp: Dramatiq's layout uses classic queues (Python Dramatiq declares them so); quorum queues \
                 are for the native layout"
                    .into())
            }
            _ => Ok(()),
        }
    }

    /// The longest one attempt of a send may take (see
    /// [`AmqpConfig::send_timeout`]).
    pub fn sends_time_out_after(&self) -> Duration {
        self.send_timeout
    }

    /// Bounds every publish — a send, a retry, a delay hop, a dead letter,
    /// a replay — by `timeout` (default [`DEFAULT_SEND_TIMEOUT`], 10 s;
    /// also `?send_timeout_ms=N` in the URL), counted from the start of
    /// the attempt: connecting if needed, declaring the queue, publishing
    /// and waiting for the publisher confirm. On expiry the send fails
    /// with an error of kind [`Timeout`](dramaturg_core::BrokerErrorKind::Timeout)
    /// (retryable); its message **may or may not have been taken** by
    /// RabbitMQ. Delivery stays at least once: a caller that sends again
    /// may cause a duplicate, never a loss. With
    /// [`retry_enqueue_for`](AmqpConfig::retry_enqueue_for) a send makes
    /// further attempts, so it returns within `retry_enqueue_for +
    /// send_timeout`. A zero timeout is refused when connecting.
    #[must_use]
    pub fn send_timeout(mut self, timeout: Duration) -> Self {
        self.send_timeout = timeout;
        self
    }

    /// What a send does while RabbitMQ blocks publishing (a memory or disk
    /// alarm): fail at once ([`OnBlocked::Fail`], the default) or wait for
    /// the unblock up to the send timeout ([`OnBlocked::Wait`]).
    #[must_use]
    pub fn on_blocked(mut self, policy: OnBlocked) -> Self {
        self.on_blocked = policy;
        self
    }

    /// The policy for sends while publishing is blocked.
    pub fn blocked_policy(&self) -> OnBlocked {
        self.on_blocked
    }

    /// The `x-max-priority` queues are declared with, if any.
    pub fn priorities(&self) -> Option<u8> {
        self.max_priority
    }

    /// Lets RabbitMQ delete the queues this broker declares once they have
    /// gone unused (no consumer, no declare) for `after` (`x-expires`) —
    /// **with whatever messages they hold**. For tests and throw-away
    /// environments; off by default.
    #[must_use]
    pub fn expire_unused_queues(mut self, after: Duration) -> Self {
        self.expire_unused_queues = Some(after);
        self
    }

    /// Turns publisher confirms off: sends return once the message is
    /// written to the socket, and a message can be lost if the connection
    /// drops right then. Faster; not recommended.
    #[must_use]
    pub fn without_confirms(mut self) -> Self {
        self.confirms = false;
        self
    }

    /// Declares queues with `x-max-priority` so that message priorities
    /// (0 to `max`) take effect. Queues declared before with other
    /// arguments must be deleted first: RabbitMQ does not change them.
    /// Without it, sending a message with a priority above 0 is an error of
    /// kind [`InvalidInput`](dramaturg_core::BrokerErrorKind::InvalidInput).
    /// Also settable in the URL (`?max_priority=10`).
    #[must_use]
    pub fn max_priority(mut self, max: u8) -> Self {
        self.max_priority = Some(max);
        self
    }

    /// Declares the queues messages wait in as `queue_type` (default
    /// [`QueueType::Classic`]); also `?queue_type=quorum` in the URL.
    /// A [quorum](QueueType::Quorum) queue is replicated across the
    /// cluster's nodes and takes no priorities: connecting with both
    /// [`max_priority`](AmqpConfig::max_priority) and quorum queues is
    /// refused, as is Dramatiq's layout (Python Dramatiq declares classic
    /// queues, and RabbitMQ refuses a queue declared as both). Queues
    /// declared before as another type must be deleted first: RabbitMQ
    /// refuses to change a queue's type (an error of kind
    /// [`Unsuitable`](dramaturg_core::BrokerErrorKind::Unsuitable) at the
    /// first declaration).
    #[must_use]
    pub fn queue_type(mut self, queue_type: QueueType) -> Self {
        self.queue_type = queue_type;
        self
    }

    /// The queue type messages wait in (see [`AmqpConfig::queue_type`]).
    pub fn queue_kind(&self) -> QueueType {
        self.queue_type
    }

    /// With [quorum queues](QueueType::Quorum): RabbitMQ dead-letters a
    /// message (to `q.dq`, with the reason `delivery_limit`) at its
    /// `n + 1`-th return to the queue (`x-delivery-limit`: `n` returns are
    /// allowed) — a message that crashes or stalls every worker that takes
    /// it (a poison message) stops going round. A delivery returns when
    /// its worker dies or loses its connection (every message that worker
    /// held returns and counts, not only the one that killed it), and also
    /// when a worker gives back a message it fetched and did not start (at
    /// shutdown, or when its queue is paused): keep `n` well above what
    /// those add (e.g. 20). Retries
    /// scheduled by the retry middleware do not count (they are new
    /// publishes). Also `?delivery_limit=N` in the URL. Zero is refused
    /// when connecting, and so is a limit on classic queues, which have
    /// none.
    #[must_use]
    pub fn delivery_limit(mut self, n: u32) -> Self {
        self.delivery_limit = Some(n);
        self
    }

    /// The delivery limit of quorum queues, if set (see
    /// [`AmqpConfig::delivery_limit`]).
    pub fn deliveries_allowed(&self) -> Option<u32> {
        self.delivery_limit
    }

    /// How long dead letters are kept (default 7 days): the `x-message-ttl`
    /// of each `<queue>.dq` — in Dramatiq's layout of each `<queue>.XQ`,
    /// Dramatiq's `dead_message_ttl` (the same default, 604,800,000 ms).
    #[must_use]
    pub fn dead_letter_ttl(mut self, ttl: Duration) -> Self {
        self.dead_letter_ttl = ttl;
        self
    }

    /// The most dead letters each queue keeps, by count and by the bytes of
    /// their messages (defaults [`DEFAULT_DEAD_LETTER_MAX_COUNT`], 50,000,
    /// and [`DEFAULT_DEAD_LETTER_MAX_BYTES`], 64 MiB); past either, the
    /// oldest are dropped. A count below 1 counts as 1, and a byte cap
    /// below [`MIN_DEAD_LETTER_MAX_BYTES`] (1 MiB, the default largest
    /// message an app sends) counts as that: RabbitMQ drops a dead letter
    /// larger than the byte cap on its own as soon as it arrives (the
    /// Redis broker keeps the newest one), so a cap smaller than one
    /// message would keep no dead letter at all.
    ///
    /// RabbitMQ enforces them itself: each `<queue>.dq` is declared with
    /// `x-max-length`, `x-max-length-bytes` (the bytes of message bodies,
    /// without headers) and `x-overflow` = `drop-head`, so a new dead letter
    /// over a cap pushes out the oldest at once. Only dead letters that are
    /// not being listed or replayed at that moment count (RabbitMQ counts
    /// ready messages). A RabbitMQ policy with a lower `max-length` or
    /// `max-length-bytes` wins over these.
    ///
    /// RabbitMQ does not change the arguments of an existing queue: a
    /// `.dq` declared with other caps (or by an earlier version, without
    /// them) makes the declaration fail with an error of kind
    /// [`Unsuitable`](dramaturg_core::BrokerErrorKind::Unsuitable) until it
    /// is deleted (see [queues declared with other arguments](https://github.com/dramaturg/dramaturg/blob/main/docs/amqp.md#queues-declared-with-other-arguments)).
    #[must_use]
    pub fn dead_letter_caps(mut self, max_count: u64, max_bytes: u64) -> Self {
        self.dead_letter_max_count = max_count.max(1);
        self.dead_letter_max_bytes = max_bytes.max(MIN_DEAD_LETTER_MAX_BYTES);
        self
    }

    /// The caps on each queue's dead letters: (count, bytes); see
    /// [`AmqpConfig::dead_letter_caps`].
    pub fn dead_letter_limits(&self) -> (u64, u64) {
        (self.dead_letter_max_count, self.dead_letter_max_bytes)
    }

    /// Retries a send that fails for a transient reason (a lost
    /// connection, a send timeout, publishing blocked by RabbitMQ), with
    /// backoff, starting new attempts for up to `duration` (default zero:
    /// the error is returned at once). A retried send that had timed out
    /// may be delivered twice.
    #[must_use]
    pub fn retry_enqueue_for(mut self, duration: Duration) -> Self {
        self.retry_enqueue_for = duration;
        self
    }
}

impl fmt::Debug for AmqpConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AmqpConfig")
            .field("url", &redact_password(&self.url))
            .field("confirms", &self.confirms)
            .field("max_priority", &self.max_priority)
            .field("dead_letter_ttl", &self.dead_letter_ttl)
            .field("dead_letter_max_count", &self.dead_letter_max_count)
            .field("dead_letter_max_bytes", &self.dead_letter_max_bytes)
            .field("retry_enqueue_for", &self.retry_enqueue_for)
            .field("send_timeout", &self.send_timeout)
            .field("on_blocked", &self.on_blocked)
            .field("expire_unused_queues", &self.expire_unused_queues)
            .field("protocol", &self.protocol)
            .field("queue_type", &self.queue_type)
            .field("delivery_limit", &self.delivery_limit)
            .field("delay_hold_horizon", &self.delay_hold_horizon)
            .field("delay_prefetch", &self.delay_prefetch)
            .finish()
    }
}

/// A [`Broker`] on RabbitMQ. Cheap to clone: clones share the connection.
#[derive(Clone)]
pub struct AmqpBroker {
    shared: Arc<Shared>,
}

/// Unsettled deliveries of one consumer channel: delivery tag → (message
/// body, when it was handed out). The body is a shared reference, hashed
/// only if RabbitMQ's `consumer_timeout` closes the channel.
pub(crate) type OutstandingMap = Mutex<HashMap<u64, (Bytes, std::time::Instant)>>;

/// What the broker, its consumers and receipts share.
pub(crate) struct Shared {
    config: AmqpConfig,
    /// The publishing connection: every publish goes through it.
    publishing: Linker<Link>,
    /// The consuming connection: deliveries, acknowledgements and
    /// everything else that does not publish, so that a block of the
    /// publishing connection (a resource alarm) does not stop it.
    consuming: Linker<Consuming>,
    /// Every consumer channel of this broker value, by queue: for
    /// statistics and `requeue_in_flight`.
    generations: Mutex<Vec<(String, std::sync::Weak<Generation>)>>,
    /// Fingerprints of messages whose channel RabbitMQ closed for
    /// `consumer_timeout`, so that their redelivery is not run again.
    overdue: Mutex<std::collections::VecDeque<u64>>,
}

/// How many overdue fingerprints are remembered.
const OVERDUE_MEMORY: usize = 10_000;

impl Shared {
    pub(crate) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
        dramaturg_core::sync::lock(mutex)
    }

    pub(crate) fn remember_overdue(&self, fingerprint: u64) {
        let mut overdue = Self::lock(&self.overdue);
        if !overdue.contains(&fingerprint) {
            overdue.push_back(fingerprint);
            while overdue.len() > OVERDUE_MEMORY {
                overdue.pop_front();
            }
        }
    }

    /// Whether a redelivered `body` is one that ran into `consumer_timeout`
    /// (hashed only while some message did).
    pub(crate) fn is_overdue(&self, body: &[u8]) -> bool {
        let overdue = Self::lock(&self.overdue);
        !overdue.is_empty() && overdue.contains(&fingerprint(body))
    }

    pub(crate) fn track(&self, queue: &str, generation: &Arc<Generation>) {
        let mut all = Self::lock(&self.generations);
        all.retain(|(_, weak)| weak.strong_count() > 0);
        all.push((queue.to_owned(), Arc::downgrade(generation)));
    }

    /// The live consumer channels of `queue`.
    pub(crate) fn generations(&self, queue: &str) -> Vec<Arc<Generation>> {
        let all = Self::lock(&self.generations);
        all.iter().filter(|(q, _)| q == queue).filter_map(|(_, weak)| weak.upgrade()).collect()
    }

    pub(crate) fn in_flight(&self, queue: &str) -> u64 {
        self.generations(queue).iter().map(|generation| generation.in_flight()).sum()
    }
}

impl AmqpBroker {
    /// Connects to the server at `url` with the default settings.
    ///
    /// # Errors
    ///
    /// A [`BrokerError`] when the server cannot be reached or refuses the
    /// credentials; of kind
    /// [`InvalidInput`](dramaturg_core::BrokerErrorKind::InvalidInput) when
    /// the URL is not one (a bad port, an unknown query parameter). It names
    /// the URL without its password.
    pub async fn connect(url: &str) -> Result<Self, BrokerError> {
        Self::with_config(AmqpConfig::new(url)).await
    }

    /// Connects with `config`.
    ///
    /// # Errors
    ///
    /// As [`AmqpBroker::connect`].
    pub async fn with_config(config: AmqpConfig) -> Result<Self, BrokerError> {
        if let Some(error) = &config.url_error {
            return Err(BrokerError::new(dramaturg_core::BrokerErrorKind::InvalidInput, error.clone()));
        }
        let invalid = |message: String| BrokerError::new(dramaturg_core::BrokerErrorKind::InvalidInput, message);
        let shown = redact_password(&config.url);
        dramaturg_core::broker::check_url_parameters(&config.url, URL_PARAMETERS)
            .map_err(|e| invalid(format!("amqp: {shown}: {e}")))?;
        let uri = config
            .connection_url()
            .parse::<lapin::uri::AMQPUri>()
            .map_err(|e| invalid(format!("amqp: {shown} is not a valid AMQP URL: {e}")))?;
        // lapin turns the vhost into an AMQP short string and panics if it
        // is longer than 255 bytes.
        if uri.vhost.len() > 255 {
            return Err(invalid(format!(
                "amqp: the URL's vhost is {} bytes; AMQP allows at most 255",
                uri.vhost.len()
            )));
        }
        if config.send_timeout.is_zero() {
            return Err(BrokerError::new(
                dramaturg_core::BrokerErrorKind::InvalidInput,
                "amqp: the send timeout must be above zero",
            ));
        }
        config.check_queue_type().map_err(invalid)?;
        // The publishing connection is opened now, so that a wrong URL or
        // credentials fail here; the consuming one on first use.
        let runtime = Arc::new(runtime::ConnectionRuntime::start()?);
        let publishing = Linker::new(config.clone(), Arc::clone(&runtime));
        publishing.link().await?;
        let consuming = Linker::new(config.clone(), runtime);
        Ok(Self {
            shared: Arc::new(Shared {
                config,
                publishing,
                consuming,
                generations: Mutex::default(),
                overdue: Mutex::default(),
            }),
        })
    }

    /// The settings in use.
    pub fn config(&self) -> &AmqpConfig {
        &self.shared.config
    }

    /// Publishes `message`, retrying connection failures for the
    /// configured time.
    async fn with_retries(&self, message: &Outgoing) -> Result<(), BrokerError> {
        dramaturg_core::broker::retry_sends(self.shared.config.retry_enqueue_for, || self.shared.publish(message)).await
    }
}

/// Where `message` is published (its queue, or the delay bucket that fits
/// its delay), and with which extra properties.
///
/// A delayed message carries what it must still wait after its bucket, not
/// a due time: no clock of the sender (or of any worker) decides when it
/// runs, only the buckets' TTLs on the server.
fn route(message: &Outgoing) -> (Target<'_>, Extra<'static>) {
    let plain = (Target::Queue(&message.queue), Extra { priority: message.priority, ..Extra::default() });
    let Some(delay) = message.delay else { return plain };
    // Rounded up, so that the message is never early.
    let wait = delay::millis_rounded_up(delay);
    let Some((k, remaining)) = delay::next_hop(wait) else { return plain };
    // Only for workers of earlier versions, which read a due time.
    let due = dramaturg_core::now_ms().saturating_add(wait);
    let extra = Extra { remaining: Some(remaining), due: Some(due), priority: message.priority, reason: None };
    (Target::Bucket(&message.queue, k), extra)
}

/// Where `message` is published in the configured layout, its body as it
/// goes out, and its extra properties.
fn routed<'a>(config: &AmqpConfig, message: &'a Outgoing) -> (Target<'a>, Bytes, Extra<'static>) {
    match config.protocol {
        Protocol::Dramatiq => dramatiq::route::route(message),
        _ => {
            let (target, extra) = route(message);
            (target, message.body.clone(), extra)
        }
    }
}

/// The largest frame asked of RabbitMQ, in bytes, when the URL sets no
/// `frame_max`. lapin keeps a send and a receive buffer of 32 frames for
/// each connection; asked for nothing, it starts them small and, once the
/// server offers its default of 131,072, grows them to 4 MiB each by
/// writing zeros, which made 16 MiB of an idle worker's two connections
/// resident. Asked for 16,384, it allocates 512 KiB buffers up front and
/// touches only what traffic uses; a large body travels in more, smaller
/// frames (RabbitMQ's smallest is 4,096).
pub const DEFAULT_FRAME_MAX: u32 = 16_384;

/// The URL query parameters read: this crate's (`max_priority`,
/// `send_timeout_ms`, `protocol`, `queue_type`, `delivery_limit`) and
/// lapin's.
const URL_PARAMETERS: &[&str] = &[
    "max_priority",
    "send_timeout_ms",
    "protocol",
    "queue_type",
    "delivery_limit",
    "frame_max",
    "channel_max",
    "heartbeat",
    "connection_timeout",
    "auth_mechanism",
];

/// Query parameter `name` of `url` read by `parse`, if present; an
/// invalid value (`parse` gives `None`) is recorded in `error` (the first
/// one found) as not being `expected`.
fn parsed_parameter<T>(
    url: &str,
    name: &str,
    expected: &str,
    error: &mut Option<String>,
    parse: impl FnOnce(&str) -> Option<T>,
) -> Option<T> {
    let value = dramaturg_core::broker::query_parameter(url, name)?;
    let parsed = parse(value);
    if parsed.is_none() && error.is_none() {
        *error = Some(format!(
            "amqp: the URL's {name} must be {expected}, not {:?}",
            dramaturg_core::Bounded::quoted(value)
        ));
    }
    parsed
}

/// `url` without query parameter `name` (every occurrence).
fn without_parameter(url: &str, name: &str) -> String {
    let Some((base, rest)) = url.split_once('?') else { return url.to_owned() };
    let (query, fragment) = match rest.split_once('#') {
        Some((query, fragment)) => (query, Some(fragment)),
        None => (rest, None),
    };
    let kept: Vec<&str> =
        query.split('&').filter(|pair| pair.split('=').next() != Some(name) && !pair.is_empty()).collect();
    let mut stripped = base.to_owned();
    if !kept.is_empty() {
        stripped.push('?');
        stripped.push_str(&kept.join("&"));
    }
    if let Some(fragment) = fragment {
        stripped.push('#');
        stripped.push_str(fragment);
    }
    stripped
}

impl Shared {
    /// Publishes `message` (to its queue or a delay bucket) and waits for
    /// the confirm, within the send timeout.
    pub(crate) async fn publish(&self, message: &Outgoing) -> Result<(), BrokerError> {
        names::check_queue(&message.queue)?;
        let (target, body, extra) = routed(&self.config, message);
        self.publish_to(target, &body, extra).await
    }

    /// Publishes `body` to `target` (declaring it if needed) on the
    /// publishing connection and waits for the confirm; the whole attempt,
    /// connecting included, ends within the send timeout.
    pub(crate) async fn publish_to(
        &self,
        target: Target<'_>,
        body: &Bytes,
        extra: Extra<'_>,
    ) -> Result<(), BrokerError> {
        let deadline = tokio::time::Instant::now() + self.config.send_timeout;
        let link = self.publishing_link(deadline).await?;
        let result = link.bounded(deadline, link.publish(target, body, extra)).await;
        if let Err(error) = &result {
            self.publishing.invalidate(&link, error);
        }
        result
    }

    /// The publishing connection, opened by `deadline`.
    pub(crate) async fn publishing_link(&self, deadline: tokio::time::Instant) -> Result<Arc<Link>, BrokerError> {
        match tokio::time::timeout_at(deadline, self.publishing.link()).await {
            Ok(link) => link,
            Err(_) => Err(flow::timed_out(self.config.send_timeout, None)),
        }
    }

    /// A new channel on the consuming connection.
    pub(crate) async fn consuming_channel(&self) -> Result<lapin::Channel, BrokerError> {
        self.consuming.link().await?.channel().await
    }

    /// Declares `queue`'s three queues of Dramatiq's layout on the
    /// consuming connection (see [`dramatiq::layout::declare`]); returns
    /// their counts of ready messages.
    pub(crate) async fn declare_dramatiq(&self, queue: &str) -> Result<dramatiq::layout::Counts, BrokerError> {
        let consuming = self.consuming.link().await?;
        dramatiq::layout::declare(consuming.connection(), &self.config, queue).await
    }

    /// Where `queue`'s dead letters go in the configured layout.
    pub(crate) fn dead_target<'a>(&self, queue: &'a str) -> Target<'a> {
        match self.config.protocol {
            Protocol::Dramatiq => Target::DeadLetterQueue(queue),
            _ => Target::Dead(queue),
        }
    }
}

impl fmt::Debug for AmqpBroker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AmqpBroker").field("config", &self.shared.config).finish_non_exhaustive()
    }
}

#[async_trait]
impl Broker for AmqpBroker {
    async fn declare_queue(&self, queue: &str) -> Result<(), BrokerError> {
        // On the consuming connection: a worker starting during a resource
        // alarm declares its queues and consumes. The publishing connection
        // declares again (once) before its first publish to the queue.
        if self.shared.config.protocol == Protocol::Dramatiq {
            return self.shared.declare_dramatiq(queue).await.map(|_| ());
        }
        let channel = self.shared.consuming_channel().await?;
        let declared = link::declare_topology(&channel, &self.shared.config, queue).await;
        let _ = channel.close(200, "declared".into()).await;
        declared.map(|_| ())
    }

    async fn enqueue(&self, message: Outgoing) -> Result<(), BrokerError> {
        self.with_retries(&message).await
    }

    async fn enqueue_many(&self, messages: Vec<Outgoing>) -> Result<(), BrokerError> {
        // One link and one declare per queue for the batch; the publishes go
        // out back to back and their confirms are awaited together, so a
        // batch costs about one round trip. Messages whose publish failed
        // (and only those) are sent again one by one, with the retry policy.
        // Each publish is bounded by the batch's deadline on its own, so
        // that the confirmed ones count as sent whatever happens to others.
        // Bad names refuse the batch before anything of it is sent.
        for message in &messages {
            names::check_queue(&message.queue)?;
        }
        let deadline = tokio::time::Instant::now() + self.shared.config.send_timeout;
        let first_try = async {
            let link = self.shared.publishing_link(deadline).await?;
            let mut queues: Vec<&str> = messages.iter().map(|m| m.queue.as_str()).collect();
            queues.sort_unstable();
            queues.dedup();
            for queue in queues {
                if let Err(error) = link.bounded(deadline, link.declare(queue)).await {
                    self.shared.publishing.invalidate(&link, &error);
                    return Err(error);
                }
            }
            let sends = messages.iter().map(|message| {
                let (target, body, extra) = routed(&self.shared.config, message);
                let link = &link;
                async move { link.bounded(deadline, link.publish(target, &body, extra)).await }
            });
            Ok::<_, BrokerError>((futures_util::future::join_all(sends).await, link))
        };
        let results = match first_try.await {
            Ok((results, link)) => {
                if let Some(Err(error)) = results.iter().find(|r| r.is_err()) {
                    self.shared.publishing.invalidate(&link, error);
                }
                results
            }
            Err(error) => messages.iter().map(|_| Err(BrokerError::new(error.kind(), error.to_string()))).collect(),
        };
        for (message, result) in messages.iter().zip(results) {
            if result.is_err() {
                self.with_retries(message).await?;
            }
        }
        Ok(())
    }

    async fn consume(&self, queue: &str, prefetch: usize) -> Result<Box<dyn Consumer>, BrokerError> {
        Ok(Box::new(consumer::AmqpConsumer::open(Arc::clone(&self.shared), queue, prefetch).await?))
    }

    /// Refuses an empty queue name and one longer than
    /// [`MAX_QUEUE_NAME_BYTES`] (246), as every operation that takes a
    /// queue name does.
    fn check_queue_name(&self, name: &str) -> Result<(), BrokerError> {
        names::check_queue(name)
    }

    fn admin(&self) -> Option<&dyn QueueAdmin> {
        Some(self)
    }

    fn dead_letters(&self) -> Option<&dyn DeadLetters> {
        Some(self)
    }

    /// In Dramatiq's layout the [`Dramatiq`](dramaturg_core::dramatiq::Dramatiq)
    /// encoder, so that Python reads what Rust sends; otherwise none (the
    /// app chooses).
    fn encoder(&self) -> Option<Arc<dyn dramaturg_core::Encoder>> {
        match self.shared.config.protocol {
            Protocol::Dramatiq => Some(Arc::new(dramaturg_core::dramatiq::Dramatiq)),
            _ => None,
        }
    }

    /// The RabbitMQ server at the broker's URL (shown without its password).
    fn locality(&self) -> dramaturg_core::broker::Locality {
        dramaturg_core::broker::Locality::server(self.shared.config.url.clone())
    }
}

/// A fingerprint of a message body, to recognise it when it comes back.
pub(crate) fn fingerprint(body: &[u8]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    body.hash(&mut hasher);
    hasher.finish()
}
