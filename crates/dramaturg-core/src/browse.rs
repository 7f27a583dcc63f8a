//! Looking at a queue without consuming it, decoded: its waiting messages a
//! page at a time, and where one message is. For dashboards and operators'
//! tools; the broker's side is [`QueueBrowser`].

use std::time::SystemTime;

use crate::broker::{QueueBrowser, Waiting, Whereabouts};
use crate::dead_letter::DecodedMessage;
use crate::error::BrokerError;
use crate::App;

/// A [`QueuedMessage`](crate::broker::QueuedMessage) decoded with an app's encoder.
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
