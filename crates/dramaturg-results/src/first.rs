//! The first message of a pipeline, or a group's callback, before it is
//! built: an actor's arguments and how to send them, typed until the app
//! that builds them is known.

use std::time::Duration;

use dramaturg_core::{Actor, App, EnqueueError, Message, SendOptions};

/// A message to build when the app is known.
pub(crate) trait First: Send {
    /// The actor's name.
    fn actor(&self) -> &'static str;

    /// The message and its delay.
    fn message(self: Box<Self>, app: &App) -> Result<(Message, Option<Duration>), EnqueueError>;
}

struct Typed<A> {
    actor: A,
    send: SendOptions,
}

impl<A: Actor> First for Typed<A> {
    fn actor(&self) -> &'static str {
        A::NAME
    }

    fn message(self: Box<Self>, app: &App) -> Result<(Message, Option<Duration>), EnqueueError> {
        Ok((app.message(&self.actor, self.send.options)?, self.send.delay))
    }
}

/// `actor`'s message, to be sent with `send`.
pub(crate) fn boxed<A: Actor>(actor: A, send: SendOptions) -> Box<dyn First> {
    Box::new(Typed { actor, send })
}
