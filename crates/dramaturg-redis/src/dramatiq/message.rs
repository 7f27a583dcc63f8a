//! What Dramatiq's brokers write into a message on its way into Redis: a
//! new `options.redis_message_id` per enqueue, and the queue it sits on
//! (`queue_name`: `q`, or `q.DQ` with `options.eta` while delayed), done
//! with [`Body`]. Bytes that are not a JSON object cannot carry these:
//! they go in as they are, with their due time beside them (see
//! `keys.rs`), and reach a worker, which dead-letters them with a reason.

use bytes::Bytes;
use dramaturg_core::dramatiq::Body;

/// The option Dramatiq's Redis broker keys a message by.
pub(crate) const REDIS_MESSAGE_ID: &str = "redis_message_id";
/// The option of a delayed message's due time (ms since the epoch).
pub(crate) const ETA: &str = "eta";
/// The option where Dramatiq's tools find why a message failed.
pub(crate) const TRACEBACK: &str = "traceback";

/// A message ready to be stored under a fresh id.
#[derive(Debug)]
pub(crate) struct Stored {
    /// Its `redis_message_id`.
    pub(crate) id: String,
    pub(crate) body: Bytes,
    /// Its due time, to keep beside a body that cannot carry it ('' when
    /// the body carries it or it is not delayed).
    pub(crate) raw_eta: String,
}

/// A new `redis_message_id` (a UUID4, as Dramatiq's).
pub(crate) fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// `body` as stored in `list_name` (Dramatiq's `q` or `q.DQ`), due at
/// `eta` (`None`: ready now, and any `eta` it had is removed, as
/// Dramatiq's worker does when it moves a due message to its queue).
pub(crate) fn stored(body: &[u8], list_name: &str, eta: Option<u64>) -> Stored {
    let id = new_id();
    match Body::parse(body) {
        Ok(mut message) => {
            message.set_option(REDIS_MESSAGE_ID, id.as_str());
            message.set_queue_name(list_name);
            match eta {
                Some(eta) => message.set_option(ETA, eta),
                None => {
                    message.remove_option(ETA);
                }
            }
            Stored { id, body: Bytes::from(message.to_vec()), raw_eta: String::new() }
        }
        Err(_) => Stored {
            id,
            body: Bytes::copy_from_slice(body),
            raw_eta: eta.map(|eta| eta.to_string()).unwrap_or_default(),
        },
    }
}

/// What a dead letter stores: the message with `options.traceback` set to
/// the reason, or — for bytes that cannot carry it — the bytes as they
/// are (an empty message: "as stored") and the reason beside them.
pub(crate) fn dead_letter(body: &[u8], reason: &str) -> (Bytes, String) {
    match Body::parse(body) {
        Ok(mut message) => {
            message.set_option(TRACEBACK, reason);
            (Bytes::from(message.to_vec()), String::new())
        }
        Err(_) => (Bytes::new(), reason.to_owned()),
    }
}

/// The reason of a dead letter: kept beside it, or its `traceback`.
pub(crate) fn reason(body: &[u8], kept: Option<String>) -> String {
    kept.filter(|r| !r.is_empty())
        .or_else(|| {
            Body::parse(body).ok().and_then(|m| m.option(TRACEBACK).and_then(|t| t.as_str()).map(str::to_owned))
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MESSAGE: &str = r#"{"queue_name":"q","actor_name":"a","args":[],"kwargs":{},"options":{"eta":5},"message_id":"m","message_timestamp":1}"#;

    #[test]
    fn messages_get_an_id_a_queue_and_an_eta() {
        let delayed = stored(MESSAGE.as_bytes(), "q.DQ", Some(1234));
        let body = Body::parse(&delayed.body).unwrap();
        assert_eq!(body.queue_name(), Some("q.DQ"));
        assert_eq!(body.eta(), Some(1234));
        assert_eq!(body.option(REDIS_MESSAGE_ID).and_then(|v| v.as_str()), Some(delayed.id.as_str()));
        assert!(delayed.raw_eta.is_empty());
        let ready = stored(&delayed.body, "q", None);
        let body = Body::parse(&ready.body).unwrap();
        assert_eq!((body.queue_name(), body.eta()), (Some("q"), None));
        assert_ne!(ready.id, delayed.id);
    }

    #[test]
    fn other_bytes_stay_as_they_are() {
        let raw = stored(b"\x01garbage", "q.DQ", Some(99));
        assert_eq!(&raw.body[..], b"\x01garbage");
        assert_eq!(raw.raw_eta, "99");
        assert_eq!(dead_letter(b"[1]", "bad"), (Bytes::new(), "bad".to_owned()));
        let (body, kept) = dead_letter(MESSAGE.as_bytes(), "boom");
        assert!(kept.is_empty());
        assert_eq!(reason(&body, None), "boom");
        assert_eq!(reason(b"x", Some("why".into())), "why");
    }
}
