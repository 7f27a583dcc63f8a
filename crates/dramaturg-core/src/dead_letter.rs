//! Dead letters for people and tools: decoded views, and replay with the
//! retry count reset.

use std::collections::HashSet;
use std::fmt;
use std::time::SystemTime;

use crate::bounded::Bounded;
use crate::broker::{DeadLetter, DeadLetters, Replay};
use crate::encoder::{decode_value, Encoder};
use crate::error::{BrokerError, EnqueueError};
use crate::{App, MessageId, Options};

/// A [`DeadLetter`] decoded with an app's encoder (see
/// [`DeadLetter::decode`]): what was sent to whom, how often it was
/// retried, why it was dead-lettered and when.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct DeadLetterView {
    /// The broker's key for this entry (for replay and delete).
    pub key: String,
    /// Why it was dead-lettered.
    pub reason: String,
    /// When it was dead-lettered.
    pub at: SystemTime,
    /// The message, or why its bytes do not decode (garbage, another
    /// encoder, arguments that are not data).
    pub message: Result<DecodedMessage, String>,
}

/// The decoded message of a [`DeadLetterView`].
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct DecodedMessage {
    /// Its id.
    pub id: MessageId,
    /// The actor it was sent to.
    pub actor: String,
    /// Its queue.
    pub queue: String,
    /// Its arguments, as JSON-like data.
    pub args: serde_json::Value,
    /// How many times it had been retried.
    pub retries: u32,
    /// Its own options.
    pub options: Options,
    /// When it was first enqueued, in milliseconds since the Unix epoch.
    pub enqueued_at_ms: u64,
}

impl DeadLetter {
    /// This dead letter decoded with `encoder` (use the app's:
    /// `letter.decode(app.encoder())`). Bytes that do not decode give a
    /// view whose `message` says why; this never panics.
    pub fn decode(&self, encoder: &dyn Encoder) -> DeadLetterView {
        let message = DecodedMessage::decode(encoder, &self.body);
        DeadLetterView { key: self.key.clone(), reason: self.reason.clone(), at: self.at, message }
    }
}

impl DecodedMessage {
    /// The encoded message `body` decoded with `encoder`, arguments
    /// included, or why it does not decode; this never panics.
    ///
    /// # Errors
    ///
    /// Why the message or its arguments do not decode, in words.
    pub fn decode(encoder: &dyn Encoder, body: &[u8]) -> Result<Self, String> {
        encoder.decode_message(body).map_err(|e| format!("undecodable message: {e}")).and_then(|message| {
            let args = decode_value::<serde_json::Value>(encoder, &message.args)
                .map_err(|e| format!("undecodable arguments for actor {:?}: {e}", Bounded::quoted(&message.actor)))?;
            Ok(DecodedMessage {
                id: message.id,
                actor: message.actor,
                queue: message.queue,
                args,
                retries: message.retries,
                options: message.options,
                enqueued_at_ms: message.enqueued_at_ms,
            })
        })
    }
}

impl fmt::Display for DeadLetterView {
    /// One line: `key actor id retries=n args=… reason=…`, or `key
    /// (undecodable: …) reason=…`. Bounded whatever the message holds:
    /// the actor's name is cut to [`MAX_QUOTED_BYTES`](crate::MAX_QUOTED_BYTES),
    /// the arguments, the reason and why it did not decode to
    /// [`MAX_REASON_BYTES`](crate::MAX_REASON_BYTES) each (see [`Bounded`]).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let reason = Bounded::reason(&self.reason);
        match &self.message {
            Ok(m) => write!(
                f,
                "{} {} {} retries={} args={} reason={reason}",
                self.key,
                Bounded::quoted(&m.actor),
                m.id,
                m.retries,
                Bounded::reason(&m.args.to_string()),
            ),
            Err(why) => write!(f, "{} ({}) reason={reason}", self.key, Bounded::reason(why)),
        }
    }
}

/// What [`App::replay_dead_letters`] does with the retry count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReplayRetries {
    /// Replay the messages as they were, through the broker's
    /// [`DeadLetters::replay`]: a message that used up its retries fails for
    /// good at its next failure, and its age still counts from its first
    /// send (an actor's `max_age` may skip it as too old).
    Keep,
    /// Decode each message, set its retry count to 0, enqueue it through the
    /// app (enqueue hooks included), then delete its dead letter: replayed
    /// messages get their retries back, and are sent anew: their age counts
    /// from the replay (by the broker's clock), and the delay they were
    /// first sent with is over. Needs a broker that can delete dead letters
    /// ([`DeadLetters::delete`]).
    Reset,
}

/// What [`App::replay_dead_letters`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReplayReport {
    /// How many messages went back to their queue.
    pub replayed: u64,
    /// Dead letters left where they were because they do not decode (key,
    /// why); only with [`ReplayRetries::Reset`], which must decode them.
    pub undecodable: Vec<(String, String)>,
}

/// [`App::replay_dead_letters`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReplayError {
    /// The broker failed, or cannot do what was asked (`Unsupported`).
    #[error(transparent)]
    Broker(#[from] BrokerError),
    /// A message could not be enqueued again; its dead letter was kept.
    /// Those before it were replayed.
    #[error("dead letter {key:?} could not be enqueued again (it stays a dead letter; {replayed} replayed before it): {source}")]
    Enqueue {
        /// The dead letter's key.
        key: String,
        /// How many were replayed before it.
        replayed: u64,
        /// Why.
        #[source]
        source: EnqueueError,
    },
}

/// How many dead letters a replay lists at a time.
const PAGE: usize = 1000;

impl App {
    /// Up to `limit` dead letters of `queue`, oldest first, decoded with
    /// this app's encoder.
    ///
    /// # Errors
    ///
    /// A [`BrokerError`], including `Unsupported` when the broker has no
    /// dead-letter inspection.
    pub async fn dead_letter_views(&self, queue: &str, limit: usize) -> Result<Vec<DeadLetterView>, BrokerError> {
        let letters = self.dead_letters()?.list(queue, limit).await?;
        Ok(letters.iter().map(|letter| letter.decode(self.encoder())).collect())
    }

    /// Up to `limit` dead letters of `queue` from position `offset` (0:
    /// the oldest), oldest first, decoded with this app's encoder: a page
    /// of them ([`DeadLetters::page`]), never all.
    ///
    /// # Errors
    ///
    /// A [`BrokerError`], including `Unsupported` when the broker has no
    /// dead-letter inspection.
    pub async fn dead_letter_page(
        &self,
        queue: &str,
        offset: usize,
        limit: usize,
    ) -> Result<Vec<DeadLetterView>, BrokerError> {
        let letters = self.dead_letters()?.page(queue, offset, limit).await?;
        Ok(letters.iter().map(|letter| letter.decode(self.encoder())).collect())
    }

    /// The dead letter of `queue` whose broker key, or whose message's id,
    /// is `key_or_id`, decoded with this app's encoder; `None` when there is
    /// none. An id matches in any form [`MessageId`](crate::MessageId)
    /// parses (a ULID in either case, a UUID hyphenated or not). It lists
    /// the dead letters oldest first, a thousand more at a time, until it
    /// finds one.
    ///
    /// # Errors
    ///
    /// A [`BrokerError`], including `Unsupported` when the broker has no
    /// dead-letter inspection.
    pub async fn find_dead_letter(&self, queue: &str, key_or_id: &str) -> Result<Option<DeadLetterView>, BrokerError> {
        let dead = self.dead_letters()?;
        let id = key_or_id.parse::<crate::MessageId>().ok();
        let mut limit = PAGE;
        loop {
            let letters = dead.list(queue, limit).await?;
            let found = letters.iter().find(|l| l.key == key_or_id).or_else(|| {
                let id = id?;
                letters.iter().find(|l| self.encoder().decode_message(&l.body).is_ok_and(|m| m.id == id))
            });
            if let Some(letter) = found {
                return Ok(Some(letter.decode(self.encoder())));
            }
            if letters.len() < limit {
                return Ok(None);
            }
            limit *= 2;
        }
    }

    /// Replays dead letters of `queue`: as they were, or with their retry
    /// count reset to 0 (see [`ReplayRetries`]).
    ///
    /// A reset replay enqueues each message before it deletes its dead
    /// letter, so a crash in between leaves a duplicate, never a loss; it
    /// checks first that the broker can delete, and enqueues nothing if not.
    ///
    /// # Errors
    ///
    /// [`ReplayError::Broker`] (with kind `Unsupported` when the broker
    /// cannot list or delete dead letters), [`ReplayError::Enqueue`] when a
    /// message cannot be enqueued again.
    ///
    /// # Cancel safety
    ///
    /// If cancelled, some messages may have been replayed, and one may be
    /// both enqueued and still a dead letter.
    pub async fn replay_dead_letters(
        &self,
        queue: &str,
        which: Replay,
        retries: ReplayRetries,
    ) -> Result<ReplayReport, ReplayError> {
        let dead = self.dead_letters()?;
        if retries == ReplayRetries::Keep {
            let replayed = dead.replay(queue, which).await?;
            return Ok(ReplayReport { replayed, undecodable: Vec::new() });
        }
        // Learn that the broker can delete before anything is enqueued.
        dead.delete(queue, Replay::One(String::new())).await?;
        // All of them means those there now: listed oldest first, a message
        // replayed and dead-lettered again meanwhile (under a new key) comes
        // after them, and is left a dead letter.
        let bound = match (&which, self.admin()) {
            (Replay::All, Ok(admin)) => Some(admin.stats(queue).await?.dead),
            _ => None,
        };
        let mut report = ReplayReport::default();
        // Keys handled already: replayed (deleted) or left undecodable.
        let mut handled: HashSet<String> = HashSet::new();
        let mut page = PAGE;
        loop {
            let limit = page + handled.len();
            let letters = dead.list(queue, limit).await?;
            let more = letters.len() >= limit;
            // Of those there at the start, the replayed are deleted; the
            // rest (undecodable ones included) still come first.
            let left = bound.map(|bound| bound.saturating_sub(report.replayed) as usize);
            let within = left.map_or(letters.len(), |left| letters.len().min(left));
            let fresh: Vec<&DeadLetter> = letters[..within]
                .iter()
                .filter(|l| !handled.contains(&l.key))
                .filter(|l| match &which {
                    Replay::All => true,
                    Replay::One(key) => &l.key == key,
                })
                .collect();
            for letter in &fresh {
                self.replay_reset(dead, queue, letter, &mut report).await?;
                handled.insert(letter.key.clone());
            }
            let past_bound = left.is_some_and(|left| letters.len() >= left);
            match which {
                Replay::One(_) if fresh.is_empty() && more => page *= 2,
                Replay::All if !fresh.is_empty() && more && !past_bound => {}
                _ => return Ok(report),
            }
        }
    }

    async fn replay_reset(
        &self,
        dead: &dyn DeadLetters,
        queue: &str,
        letter: &DeadLetter,
        report: &mut ReplayReport,
    ) -> Result<(), ReplayError> {
        let mut message = match self.encoder().decode_message(&letter.body) {
            Ok(message) => message,
            Err(error) => {
                report.undecodable.push((letter.key.clone(), error.to_string()));
                return Ok(());
            }
        };
        // Sent anew: its age (and the time it waits, for metrics) counts
        // from now, not from its first send, and a delay it was first sent
        // with is over.
        message.retries = 0;
        message.enqueued_at_ms = self.broker().now_ms();
        message.options.extra.remove(crate::ETA.name());
        self.enqueue(message, None).await.map_err(|source| ReplayError::Enqueue {
            key: letter.key.clone(),
            replayed: report.replayed,
            source,
        })?;
        report.replayed += 1;
        if dead.delete(queue, Replay::One(letter.key.clone())).await? == 0 {
            // Replayed or deleted by someone else meanwhile: a duplicate at worst.
            tracing::warn!(key = %letter.key, "dead letter was gone after its replay; the message may run twice");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::{Message, MessagePack, MAX_REASON_BYTES};

    /// A foreign message with a 200 kB actor name and 200 kB of arguments
    /// prints as one bounded line.
    #[test]
    fn a_view_prints_bounded_whatever_the_message_holds() {
        let args = crate::encoder::encode_value(&MessagePack, &"a".repeat(200_000)).expect("a string encodes");
        let message = Message::new("q", "x".repeat(200_000), args.into());
        let body = MessagePack.encode_message(&message).expect("a message encodes");
        let letter = DeadLetter::new("k".into(), Bytes::from(body), "r".repeat(200_000), SystemTime::now());
        let line = letter.decode(&MessagePack).to_string();
        assert!(line.len() < 3 * MAX_REASON_BYTES, "{} bytes", line.len());
        let garbage = DeadLetter::new("k".into(), Bytes::from(vec![0xc1; 10]), String::new(), SystemTime::now());
        assert!(garbage.decode(&MessagePack).to_string().contains("undecodable"));
    }
}
