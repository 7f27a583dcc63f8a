//! Why a pipeline or group could not be sent or carried on.

use dramaturg_core::store::StoreError;
use dramaturg_core::EnqueueError;

/// A [`Pipeline`](crate::Pipeline) or [`Group`](crate::Group) could not be
/// sent.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ComposeError {
    /// The app has no [`Results`](crate::Results) middleware, which carries
    /// pipelines on and completes groups.
    #[error("this app keeps no results: pipelines and groups need the `Results` middleware")]
    NotEnabled,
    /// A message could not be built or sent (unknown actor, arguments that
    /// do not encode, the broker's error).
    #[error(transparent)]
    Enqueue(#[from] EnqueueError),
    /// The group's completion callback could not be kept in the store.
    #[error("cannot keep the group's completion callback: {0}")]
    Store(#[from] StoreError),
    /// A group of more members than fit in a `u32`.
    #[error("a group of {0} members is more than 4,294,967,295")]
    TooLarge(usize),
}

/// What the results middleware could not do after a message ended: the
/// message's outcome becomes this failure (and it is dead-lettered with
/// it), so that it shows.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CarryOnError {
    /// The next step of the message's pipeline could not be sent; the
    /// pipeline stops with this failure.
    #[error("the pipeline's next step could not be sent: {0}")]
    NextStep(String),
    /// The message finished a group member, but that could not be recorded
    /// (or the group's completion callback could not be sent).
    #[error("the group's completion could not be recorded: {0}")]
    Group(String),
}
