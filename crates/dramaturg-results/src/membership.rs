//! A group member's place in its group (the `group` option of its last
//! message), and recording that it finished.
//!
//! # Exactly once, across workers and redeliveries
//!
//! Each member's last message carries its place in the group (the `group`
//! option: [`Membership`]). When a member finishes for good — its result
//! kept, whatever it was — the results middleware, before the member's
//! delivery is settled:
//!
//! 1. adds the member's index to the set `group:{<id>}:done` (a set, not a
//!    counter: a member redelivered after a crash adds itself again and
//!    changes nothing);
//! 2. if the set is now full, claims the callback with a write of its
//!    index to `group:{<id>}:fired` that succeeds only if the key is
//!    absent — of all members only one can hold the claim;
//! 3. the claim's holder (also the holder redelivered after dying between
//!    claim and send) reads the callback message kept at send time under
//!    `group:{<id>}:callback`, sends it, and writes `group:{<id>}:sent`;
//!    a member that finds `sent` written does nothing.
//!
//! So the callback is sent when the last member finishes, by one member,
//! and never twice — except when the holder's process dies in the one
//! round trip between the broker taking the callback and `sent` being
//! written: its redelivery sends the callback again, with the same message
//! id (at least once, never never). All keys of a group share one hash
//! tag, and expire after the group's TTL (default 24 hours).

use std::time::Duration;

use dramaturg_core::store::{SetMode, Store, StoreError};
use dramaturg_core::{App, MessageId, OptionKey};
use serde::{Deserialize, Serialize};

/// The option that makes a message the last of a group's member.
pub(crate) const GROUP: OptionKey<Membership> = OptionKey::new("group");

/// How long a group's keys live unless [`Group::ttl`] says otherwise.
pub(crate) const DEFAULT_TTL: Duration = Duration::from_secs(24 * 3600);

/// How long a store call of the completion is tried again while the store
/// fails for a reason that may pass.
const STORE_RETRY_FOR: Duration = Duration::from_secs(5);

/// A member's place in its group.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Membership {
    /// The group's id.
    pub(crate) id: MessageId,
    /// How many members it has.
    pub(crate) size: u32,
    /// This member's index.
    pub(crate) member: u32,
    /// How long the group's keys live, in milliseconds.
    pub(crate) ttl_ms: u64,
    /// Whether a completion callback is kept for the group.
    pub(crate) callback: bool,
    /// The callback's delay, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) callback_delay_ms: Option<u64>,
}

/// The keys of group `id`.
pub(crate) struct Keys {
    pub(crate) done: String,
    fired: String,
    sent: String,
    pub(crate) callback: String,
}

impl Keys {
    pub(crate) fn of(id: MessageId) -> Self {
        let key = |part: &str| format!("group:{{{id}}}:{part}");
        Self { done: key("done"), fired: key("fired"), sent: key("sent"), callback: key("callback") }
    }
}

impl Membership {
    /// Records that this member finished, and sends the group's callback if
    /// it was the last (see the module docs).
    ///
    /// # Errors
    ///
    /// Why completion could not be recorded or the callback not sent (after
    /// trying again for a while when the store or broker may come back).
    pub(crate) async fn finished(&self, app: &App, store: &dyn Store) -> Result<(), String> {
        let keys = Keys::of(self.id);
        let ttl = Duration::from_millis(self.ttl_ms);
        let me = self.member.to_string();
        let done = retrying(|| store.set_add(&keys.done, &me, ttl)).await?;
        if done < u64::from(self.size) || !self.callback {
            return Ok(());
        }
        let claimed = retrying(|| store.set(&keys.fired, me.as_bytes(), ttl, SetMode::IfAbsent)).await?;
        if !claimed {
            let holder = retrying(|| store.get(&keys.fired)).await?;
            if holder.as_deref() != Some(me.as_bytes()) {
                return Ok(());
            }
        }
        if retrying(|| store.get(&keys.sent)).await?.is_some() {
            return Ok(());
        }
        let Some(bytes) = retrying(|| store.get(&keys.callback)).await? else {
            return Err(format!("the callback of group {} is gone (its keys expired?)", self.id));
        };
        let message = app.encoder().decode_message(&bytes).map_err(|e| format!("the kept callback: {e}"))?;
        let delay = self.callback_delay_ms.map(Duration::from_millis);
        app.enqueue_retrying(message, delay, STORE_RETRY_FOR).await.map_err(|e| e.to_string())?;
        retrying(|| store.set(&keys.sent, b"1", ttl, SetMode::Always)).await?;
        Ok(())
    }
}

/// Runs a store call, trying again for a while when it fails for a reason
/// that may pass.
async fn retrying<T, F, Fut>(call: F) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, StoreError>>,
{
    dramaturg_core::broker::retry_sends(STORE_RETRY_FOR, call).await.map_err(|error| error.to_string())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use dramaturg_core::store::MemoryStore;
    use dramaturg_core::{actor::into_job_result, Context, Job, MemoryBroker, Message};
    use serde::{Deserialize, Serialize};

    use super::*;
    use dramaturg_core::Actor;

    #[derive(Serialize, Deserialize)]
    struct Done;

    impl Actor for Done {
        const NAME: &'static str = "done";
        const QUEUE: &'static str = "callbacks";
        type Output = ();
        fn into_job(self, _ctx: Context) -> dramaturg_core::Job {
            let job: Job = Box::pin(async move { into_job_result::<Self, _>(Ok::<(), std::io::Error>(())) });
            job
        }
    }

    /// An app, its store, and a group of `size` whose callback is kept.
    async fn group(size: u32) -> (App, Arc<dyn Store>, Vec<Membership>) {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let app = App::builder(MemoryBroker::new())
            .middleware(crate::Results::with_shared_store(Arc::clone(&store)))
            .actor::<Done>()
            .build()
            .unwrap();
        let id = MessageId::new();
        let callback: Message = app.message(&Done, dramaturg_core::Options::default()).unwrap();
        let bytes = app.encoder().encode_message(&callback).unwrap();
        store.set(&Keys::of(id).callback, &bytes, DEFAULT_TTL, SetMode::Always).await.unwrap();
        let members = (0..size)
            .map(|member| Membership { id, size, member, ttl_ms: 60_000, callback: true, callback_delay_ms: None })
            .collect();
        (app, store, members)
    }

    async fn callbacks_sent(app: &App) -> u64 {
        app.stats("callbacks").await.unwrap().ready
    }

    use std::sync::Arc;

    #[tokio::test]
    async fn a_member_finishing_again_sends_nothing_more() {
        let (app, store, members) = group(3).await;
        for member in &members[..2] {
            member.finished(&app, store.as_ref()).await.unwrap();
        }
        // A redelivered member before the last: the set does not grow.
        members[0].finished(&app, store.as_ref()).await.unwrap();
        assert_eq!(callbacks_sent(&app).await, 0);
        members[2].finished(&app, store.as_ref()).await.unwrap();
        assert_eq!(callbacks_sent(&app).await, 1);
        for member in &members {
            member.finished(&app, store.as_ref()).await.unwrap();
        }
        assert_eq!(callbacks_sent(&app).await, 1, "redeliveries after completion send nothing");
    }

    #[tokio::test]
    async fn the_claim_holder_that_died_before_sending_sends_on_redelivery() {
        let (app, store, members) = group(2).await;
        let keys = Keys::of(members[0].id);
        // Both finished; member 1 claimed the callback and died before sending.
        store.set_add(&keys.done, "0", DEFAULT_TTL).await.unwrap();
        store.set_add(&keys.done, "1", DEFAULT_TTL).await.unwrap();
        store.set(&keys.fired, b"1", DEFAULT_TTL, SetMode::IfAbsent).await.unwrap();
        // Member 0 redelivered: not its claim.
        members[0].finished(&app, store.as_ref()).await.unwrap();
        assert_eq!(callbacks_sent(&app).await, 0);
        // Member 1 redelivered: its claim, not sent yet.
        members[1].finished(&app, store.as_ref()).await.unwrap();
        assert_eq!(callbacks_sent(&app).await, 1);
        members[1].finished(&app, store.as_ref()).await.unwrap();
        assert_eq!(callbacks_sent(&app).await, 1);
    }

    #[tokio::test]
    async fn a_callback_that_expired_is_an_error_not_a_silent_skip() {
        let (app, store, members) = group(1).await;
        store.delete(&Keys::of(members[0].id).callback).await.unwrap();
        let error = members[0].finished(&app, store.as_ref()).await.unwrap_err();
        assert!(error.contains("is gone"), "{error}");
    }
}
