//! The handle a send returns: the message id, typed by its actor.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::marker::PhantomData;

use crate::{Actor, MessageId};

/// A message the broker has taken, typed by the actor `A` that will run it:
/// what [`Actor::send`] returns.
///
/// It is a [`MessageId`] that remembers whose message it is, so that it
/// cannot be mixed up with another actor's message, and so that what comes
/// of it is typed by `A`'s [`Output`](Actor::Output): the results
/// middleware reads that output back through it (`sent.result(&app)` with
/// `dramaturg::results::SentExt`), and `on_success` callbacks get it as
/// their `result`. It is `Copy`, and
/// [`Sent::id`] gives the plain id (for [`abort`] and the broker's
/// administration), which converts back with [`Sent::from_id`].
///
/// [`abort`]: https://docs.rs/dramaturg/latest/dramaturg/abort/fn.abort.html
///
/// # Examples
///
/// ```
/// use dramaturg_core::{actor::into_job_result, Actor, App, Context, Job, MemoryBroker, Sent};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Serialize, Deserialize)]
/// struct Count { n: u32 }
///
/// impl Actor for Count {
///     const NAME: &'static str = "count";
///     const QUEUE: &'static str = "default";
///     type Output = u32;
///     fn into_job(self, _ctx: Context) -> Job {
///         Box::pin(async move { into_job_result::<Self, _>(Ok::<u32, std::io::Error>(self.n)) })
///     }
/// }
///
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let app = App::builder(MemoryBroker::new()).actor::<Count>().build().unwrap();
/// let sent: Sent<Count> = Count { n: 3 }.send(&app).await.unwrap();
/// assert_eq!(Sent::<Count>::from_id(sent.id()), sent);
/// # });
/// ```
pub struct Sent<A> {
    id: MessageId,
    actor: PhantomData<fn() -> A>,
}

impl<A: Actor> Sent<A> {
    /// The handle of the message `id`, which the caller knows to be one of
    /// `A`'s (an id kept from an earlier send, for one).
    pub fn from_id(id: MessageId) -> Self {
        Self { id, actor: PhantomData }
    }

    /// The message's id.
    pub fn id(&self) -> MessageId {
        self.id
    }

    /// The name of the actor that runs it.
    pub fn actor_name(&self) -> &'static str {
        A::NAME
    }
}

impl<A> Clone for Sent<A> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<A> Copy for Sent<A> {}

impl<A> PartialEq for Sent<A> {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
    }
}

impl<A> Eq for Sent<A> {}

impl<A> Hash for Sent<A> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.id.hash(state);
    }
}

impl<A: Actor> fmt::Debug for Sent<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sent").field("actor", &A::NAME).field("id", &self.id).finish()
    }
}

impl<A: Actor> fmt::Display for Sent<A> {
    /// The message id, as [`MessageId`] displays it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.id, f)
    }
}

impl<A> From<Sent<A>> for MessageId {
    fn from(sent: Sent<A>) -> Self {
        sent.id
    }
}
