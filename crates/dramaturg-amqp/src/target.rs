//! Where a message is published, and the extra properties it carries.

use crate::delay::bucket_queue;
use crate::names::dead_queue;

/// Extra properties of a published message.
#[derive(Debug, Default)]
pub(crate) struct Extra<'a> {
    /// For a delay bucket: what the message must still wait after it (ms).
    pub(crate) remaining: Option<u64>,
    /// For a delay bucket: the due time of earlier versions' header, for
    /// their workers during a rolling upgrade (never read when `remaining`
    /// is there).
    pub(crate) due: Option<u64>,
    pub(crate) priority: Option<u8>,
    pub(crate) reason: Option<(&'a str, &'a str)>,
}

/// Where a message is published.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Target<'a> {
    /// A queue (declared with its dead-letter queue).
    Queue(&'a str),
    /// A queue's dead-letter queue.
    Dead(&'a str),
    /// Delay bucket `k` of a queue, declared lazily on first use.
    Bucket(&'a str, u32),
    /// In Dramatiq's layout: a queue's delay queue, `q.DQ`.
    DelayQueue(&'a str),
    /// In Dramatiq's layout: a queue's dead-letter queue, `q.XQ`.
    DeadLetterQueue(&'a str),
}

impl<'a> Target<'a> {
    /// The queue this target is named after.
    pub(crate) fn queue(self) -> &'a str {
        match self {
            Target::Queue(queue)
            | Target::Dead(queue)
            | Target::Bucket(queue, _)
            | Target::DelayQueue(queue)
            | Target::DeadLetterQueue(queue) => queue,
        }
    }

    /// The routing key (the name of the queue on the server).
    pub(crate) fn name(self) -> String {
        match self {
            Target::Queue(queue) => queue.to_owned(),
            Target::Dead(queue) => dead_queue(queue),
            Target::Bucket(queue, k) => bucket_queue(queue, k),
            Target::DelayQueue(queue) => dramaturg_core::dramatiq::delay_queue(queue),
            Target::DeadLetterQueue(queue) => dramaturg_core::dramatiq::dead_letter_queue(queue),
        }
    }
}
