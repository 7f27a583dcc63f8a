//! Looking at a queue without consuming it: its waiting messages a page at
//! a time, and where one message is. For dashboards and operators' tools.

use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;

use crate::dead_letter::DecodedMessage;
use crate::error::BrokerError;
use crate::App;

/// Which waiting messages of a queue to browse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Waiting {
    /// Ready to be delivered, in delivery order (next first).
    Ready,
    /// Waiting for their delay to pass, soonest due first.
    Delayed,
}

/// Where a message is ([`QueueBrowser::locate`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Whereabouts {
    /// In its queue, ready to be delivered.
    Ready,
    /// Waiting for its delay to pass; due at `due` when the broker knows.
    Delayed {
        /// When it falls due, by the broker's clock.
        due: Option<SystemTime>,
    },
    /// Claimed by a worker and not settled yet: running, or about to.
    InFlight,
    /// In the queue's dead letters.
    Dead,
}

/// One waiting message of a [`QueuePage`], as the broker holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedMessage {
    /// The broker's id of the entry (the message's id).
    pub id: String,
    /// When it falls due (delayed messages), by the broker's clock.
    pub due: Option<SystemTime>,
    /// The encoded message; `None` when it left the queue (delivered,
    /// purged) between the listing and the read.
    pub body: Option<Bytes>,
}

/// A page of a queue's waiting messages.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueuePage {
    /// How many messages of that kind the queue holds in all.
    pub total: u64,
    /// The messages of the page, in order.
    pub messages: Vec<QueuedMessage>,
}

/// A message found by [`QueueBrowser::locate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located {
    /// The broker's id of the entry (a broker may give each enqueue an
    /// entry id of its own, apart from the message's id).
    pub entry: String,
    /// Where it is.
    pub whereabouts: Whereabouts,
    /// The encoded message.
    pub body: Bytes,
}

/// Reading a queue's messages without consuming them.
///
/// Brokers that hold their queues as data structures they can read (Redis)
/// offer it; RabbitMQ cannot show a queue's messages without consuming
/// them, so it does not.
#[async_trait]
pub trait QueueBrowser: Send + Sync {
    /// Up to `limit` of `queue`'s `which` messages, from position `offset`
    /// (0: the next to be delivered, or the soonest due), and how many
    /// there are in all. It reads the page only, never the whole queue.
    ///
    /// # Errors
    ///
    /// A [`BrokerError`] when the broker cannot be reached, or `Unsupported`
    /// from a layout that cannot be browsed.
    async fn page(&self, queue: &str, which: Waiting, offset: u64, limit: usize) -> Result<QueuePage, BrokerError>;

    /// The entries of `queue` (waiting, in flight or dead) that may be
    /// message `id`: the entry whose broker id is `id`, and those whose
    /// encoded body contains `id` as text. The caller decodes them to keep
    /// the one whose message id it is ([`App::locate_message`] does). Empty
    /// when `queue` holds none (never sent, or done).
    ///
    /// It may read the whole queue (in bounded steps, on the server): for
    /// a person's lookup, not for a hot path.
    ///
    /// # Errors
    ///
    /// A [`BrokerError`] when the broker cannot be reached, or `Unsupported`.
    async fn locate(&self, queue: &str, id: &str) -> Result<Vec<Located>, BrokerError>;
}

/// A [`QueuedMessage`] decoded with an app's encoder.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct QueuedView {
    /// The broker's id of the entry.
    pub id: String,
    /// When it falls due (delayed messages).
    pub due: Option<SystemTime>,
    /// The message; `Err` says why not (it left the queue meanwhile, or
    /// does not decode).
    pub message: Result<DecodedMessage, String>,
}

/// A page of [`QueuedView`]s ([`App::queued_views`]).
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct QueuedViews {
    /// How many messages of that kind the queue holds in all.
    pub total: u64,
    /// The page, in order.
    pub messages: Vec<QueuedView>,
}

/// A message found by [`App::locate_message`].
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct LocatedView {
    /// The broker's id of the entry.
    pub entry: String,
    /// Where it is.
    pub whereabouts: Whereabouts,
    /// The message, or why it does not decode (found by its entry id).
    pub message: Result<DecodedMessage, String>,
}

impl App {
    /// Reading queues without consuming them, when the broker offers it.
    ///
    /// # Errors
    ///
    /// [`BrokerErrorKind::Unsupported`](crate::BrokerErrorKind::Unsupported)
    /// when it does not (RabbitMQ).
    pub fn browser(&self) -> Result<&dyn QueueBrowser, BrokerError> {
        self.broker().browser().ok_or_else(|| {
            BrokerError::new(
                crate::BrokerErrorKind::Unsupported,
                "this broker cannot show a queue's messages without consuming them",
            )
        })
    }

    /// A page of `queue`'s `which` messages (see [`QueueBrowser::page`]),
    /// decoded with this app's encoder.
    ///
    /// # Errors
    ///
    /// A [`BrokerError`], including `Unsupported`.
    pub async fn queued_views(
        &self,
        queue: &str,
        which: Waiting,
        offset: u64,
        limit: usize,
    ) -> Result<QueuedViews, BrokerError> {
        let page = self.browser()?.page(queue, which, offset, limit).await?;
        let messages = page
            .messages
            .into_iter()
            .map(|m| QueuedView {
                message: match &m.body {
                    Some(body) => DecodedMessage::decode(self.encoder(), body),
                    None => Err("it left the queue while the page was read".to_owned()),
                },
                id: m.id,
                due: m.due,
            })
            .collect();
        Ok(QueuedViews { total: page.total, messages })
    }

    /// Where message `id` is in `queue`, and the message decoded with this
    /// app's encoder; `None` when the queue holds no message with that id
    /// (never sent, or done). `id` may also be the broker's id of the entry.
    /// See [`QueueBrowser::locate`].
    ///
    /// # Errors
    ///
    /// A [`BrokerError`], including `Unsupported`.
    pub async fn locate_message(&self, queue: &str, id: &str) -> Result<Option<LocatedView>, BrokerError> {
        let candidates = self.browser()?.locate(queue, id).await?;
        Ok(candidates.into_iter().find_map(|located| {
            let message = DecodedMessage::decode(self.encoder(), &located.body);
            let matches = located.entry == id || message.as_ref().is_ok_and(|m| m.id.to_string() == id);
            matches.then_some(LocatedView { entry: located.entry, whereabouts: located.whereabouts, message })
        }))
    }
}
