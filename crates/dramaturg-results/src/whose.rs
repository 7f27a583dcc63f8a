//! Which message a result belongs to, and the store keys of results.

use dramaturg_core::{Message, MessageId};

/// The message whose result is meant: its id, and its queue and actor
/// when known (Dramatiq's layout keys results by all three).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Whose {
    pub(crate) id: MessageId,
    pub(crate) names: Option<(String, String)>,
}

impl Whose {
    /// Message `id`, its queue and actor unknown.
    pub(crate) fn id(id: MessageId) -> Self {
        Self { id, names: None }
    }

    /// Message `id` of `actor` on `queue`.
    pub(crate) fn named(id: MessageId, queue: &str, actor: &str) -> Self {
        Self { id, names: Some((queue.to_owned(), actor.to_owned())) }
    }

    /// `message` itself.
    pub(crate) fn of(message: &Message) -> Self {
        Self::named(message.id, &message.queue, &message.actor)
    }
}

/// The key of the result of message `id` in the store's layout.
pub(crate) fn result_key(id: MessageId) -> String {
    format!("result:{{{id}}}")
}

/// The key of the progress of message `id`.
pub(crate) fn progress_key(id: MessageId) -> String {
    format!("progress:{{{id}}}")
}
