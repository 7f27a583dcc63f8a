//! The names of the metrics and their labels, following Prometheus's
//! conventions: a `dramaturg_` prefix, base units (seconds), `_total` on
//! counters, and labels rather than names for what varies.

/// Counter: messages that reached the middleware stack, by `actor` and
/// `queue` (every attempt: a retry is received again).
pub const MESSAGES_RECEIVED: &str = "dramaturg_messages_received_total";

/// Counter: finished attempts, by `actor`, `queue` and `outcome` (see
/// [`OUTCOMES`]).
pub const MESSAGES_PROCESSED: &str = "dramaturg_messages_processed_total";

/// Counter: messages the worker dead-letters, by `actor` and `queue`: the
/// attempts that ended `failed` (no retry left, or one that must not be
/// retried) and the `rejected` messages (an unknown actor, arguments that
/// do not fit it).
pub const MESSAGES_DEAD_LETTERED: &str = "dramaturg_messages_dead_lettered_total";

/// Gauge: attempts running now, by `actor` and `queue`.
pub const MESSAGES_IN_PROGRESS: &str = "dramaturg_messages_in_progress";

/// Histogram: how long an attempt took, from when the worker handed it to
/// the middleware stack until the stack returned its outcome, in seconds,
/// by `actor` and `queue`. Postponed attempts (a rate limit
/// was full: the actor did not run) are not recorded.
pub const MESSAGE_DURATION: &str = "dramaturg_message_duration_seconds";

/// Histogram: how long a message waited from when it fell due — when it
/// was sent, or its `eta` for a delayed message — until its first attempt
/// started, in seconds by the broker's clock, by `actor` and `queue`.
/// Retries are not recorded (a retry does not say when it fell due), nor
/// postponed attempts; the attempt that runs after a postponement records
/// the whole wait.
pub const MESSAGE_START_DELAY: &str = "dramaturg_message_start_delay_seconds";

/// Gauge: messages of a queue, by `queue` and `state` (see [`STATES`]),
/// sampled from the broker at an interval by each worker (workers of one
/// queue report the same numbers: aggregate with `max`, not `sum`).
pub const QUEUE_MESSAGES: &str = "dramaturg_queue_messages";

/// Counter: samples of a queue's depth that failed (the broker could not
/// be reached or cannot count), by `queue`.
pub const QUEUE_SAMPLE_ERRORS: &str = "dramaturg_queue_sample_errors_total";

/// Label: the actor's name.
pub const ACTOR: &str = "actor";
/// Label: the queue's name.
pub const QUEUE: &str = "queue";
/// Label: the outcome of an attempt.
pub const OUTCOME: &str = "outcome";
/// Label: the state of a queue's messages.
pub const STATE: &str = "state";

/// The values of the `outcome` label: the labels of
/// [`Outcome`](dramaturg_core::Outcome) (`postponed` is a rate or
/// concurrency limit that was full), and `rejected` for a message the
/// worker could not run (see [`MESSAGES_DEAD_LETTERED`]).
pub const OUTCOMES: [&str; 8] =
    ["succeeded", "failed", "retried", "postponed", "requeued", "aborted", "skipped", REJECTED];

/// The `outcome` of a message the worker dead-lettered without running it.
pub const REJECTED: &str = "rejected";

/// The `actor` (or `queue`) label of a rejected message whose actor (or
/// queue) the app does not know: its name comes from the message, and
/// could be anything at all, which must not become a label.
pub const UNKNOWN: &str = "unknown";

/// The values of the `state` label:
/// [`QueueStats`](dramaturg_core::QueueStats)'s fields.
pub const STATES: [&str; 4] = ["ready", "delayed", "in_flight", "dead"];

/// Registers the help text of every metric with the installed recorder.
pub(crate) fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(MESSAGES_RECEIVED, "Attempts that reached the middleware stack.");
    describe_counter!(MESSAGES_PROCESSED, "Finished attempts, by outcome.");
    describe_counter!(MESSAGES_DEAD_LETTERED, "Messages dead-lettered: failed for good or rejected.");
    describe_gauge!(MESSAGES_IN_PROGRESS, "Attempts running now.");
    describe_histogram!(MESSAGE_DURATION, Unit::Seconds, "Time of an attempt through the stack and the actor.");
    describe_histogram!(MESSAGE_START_DELAY, Unit::Seconds, "Wait from when a message fell due to its first start.");
    describe_gauge!(QUEUE_MESSAGES, "Messages of a queue by state, sampled from the broker.");
    describe_counter!(QUEUE_SAMPLE_ERRORS, "Failed samples of a queue's depth.");
}
