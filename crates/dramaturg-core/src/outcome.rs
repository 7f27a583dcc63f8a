//! What came of processing a message: success, a failure, a skip, a retry,
//! a postponement, a return to the queue or an abort.

use std::borrow::Cow;
use std::time::Duration;

use crate::failure::Failure;
use crate::message::Message;
use crate::output::Output;

/// The result of processing one delivery. The worker settles the delivery
/// from it once: success, skips, aborts → ack; failure → dead letter;
/// retried and postponed → reschedule to the next attempt; requeue →
/// requeue.
#[derive(Debug)]
#[non_exhaustive]
// `Retried` carries the next attempt's message; an outcome is moved a few
// times per message, and boxing it would cost an allocation per retry.
#[allow(clippy::large_enum_variant)]
pub enum Outcome {
    /// The actor returned `Ok`.
    Succeeded(Output),
    /// The attempt failed; with no retry, the message is dead-lettered.
    Failed(Failure),
    /// The message was deliberately not run (too old, cancelled, …). It is
    /// acknowledged.
    Skipped(Cow<'static, str>),
    /// A middleware planned a new attempt of the message (a retry): the
    /// worker replaces the delivery with it, due after its delay, in one
    /// broker step. The failure that led to it is kept.
    Retried(Failure, Box<NextAttempt>),
    /// A middleware put the attempt off without running it and without a
    /// failure (a rate or concurrency limit was full): the worker replaces
    /// the delivery with the message of [`NextAttempt`], due after its
    /// delay, in one broker step — as for [`Outcome::Retried`], but no
    /// retry is used (the middleware passes the message on with its retry
    /// count as it was) and the worker counts it under
    /// [`WorkerReport::postponed`](crate::WorkerReport::postponed). The
    /// text says why.
    Postponed(Cow<'static, str>, Box<NextAttempt>),
    /// The message goes back to its queue unchanged, for another worker or a
    /// later run (worker shutdown, a retry that could not be enqueued, …).
    Requeue(Cow<'static, str>),
    /// The message was cancelled before it started, or aborted while it ran.
    /// It is acknowledged: not a failure, never retried, not dead-lettered.
    Aborted(Cow<'static, str>),
}

impl Outcome {
    /// A short name for logs and metrics: `succeeded`, `failed`, `skipped`,
    /// `retried`, `postponed`, `requeued` or `aborted`.
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Succeeded(_) => "succeeded",
            Outcome::Failed(_) => "failed",
            Outcome::Skipped(_) => "skipped",
            Outcome::Retried(..) => "retried",
            Outcome::Postponed(..) => "postponed",
            Outcome::Requeue(_) => "requeued",
            Outcome::Aborted(_) => "aborted",
        }
    }

    /// The attempt planned instead of this delivery: of a retry or a
    /// postponement.
    pub fn next_attempt(&self) -> Option<&NextAttempt> {
        match self {
            Outcome::Retried(_, next) | Outcome::Postponed(_, next) => Some(next),
            _ => None,
        }
    }
}

/// The next attempt of a message: the message to deliver instead (with its
/// retry count and options as they should be) and how long to hold it.
#[derive(Debug)]
#[non_exhaustive]
pub struct NextAttempt {
    /// The message to deliver instead of this one.
    pub message: Message,
    /// How long to hold it before it may be delivered.
    pub delay: Duration,
}

impl NextAttempt {
    /// `message`, due after `delay` (boxed, as [`Outcome::Retried`] and
    /// [`Outcome::Postponed`] hold it).
    pub fn new(message: Message, delay: Duration) -> Box<Self> {
        Box::new(Self { message, delay })
    }
}
