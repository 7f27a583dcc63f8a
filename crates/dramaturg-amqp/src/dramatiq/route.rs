//! What Dramatiq's RabbitMQ broker writes into a message on its way, and
//! where the message goes: a message for now to `q`; a delayed one to
//! `q.DQ` with `queue_name` = `q.DQ` and `options.eta` = now + delay; a
//! due one from `q.DQ` back to `q` with `queue_name` = `q` and no `eta` (as
//! Dramatiq's worker does); a dead letter to `q.XQ` with its reason in
//! `options.traceback`, where Dramatiq's tools look.
//!
//! Bytes that are not a JSON object (a producer's mistake, or a test's raw
//! bytes) travel unchanged: a delayed one carries its due time in a
//! header instead, and the worker that receives it dead-letters it with a
//! reason, so its raw bytes land in `q.XQ`.

use bytes::Bytes;
use dramaturg_core::dramatiq::{delay_queue, Body};
use dramaturg_core::Outgoing;

use crate::delay::{millis_rounded_up, DUE_HEADER};
use crate::target::{Extra, Target};
use dramaturg_core::now_ms;

/// Dramatiq's option holding a dead letter's reason (its traceback).
pub(crate) const TRACEBACK: &str = "traceback";
/// Dramatiq's option holding a message's RabbitMQ priority.
const BROKER_PRIORITY: &str = "broker_priority";
/// Dramatiq's option holding a delayed message's due time.
const ETA: &str = "eta";

/// Where `message` goes in Dramatiq's layout, its body as Dramatiq's broker
/// would write it, and its properties (Dramatiq's per-message priority
/// from `options.broker_priority` unless the message has one).
pub(crate) fn route(message: &Outgoing) -> (Target<'_>, Bytes, Extra<'static>) {
    let parsed =
        if message.delay.is_some() || message.priority.is_none() { Body::parse(&message.body).ok() } else { None };
    let priority = message.priority.or_else(|| parsed.as_ref().and_then(priority_of));
    let extra = Extra { priority, ..Extra::default() };
    let Some(delay) = message.delay else { return (Target::Queue(&message.queue), message.body.clone(), extra) };
    let eta = now_ms().saturating_add(millis_rounded_up(delay));
    let target = Target::DelayQueue(&message.queue);
    match parsed {
        Some(mut body) => {
            body.set_queue_name(&delay_queue(&message.queue));
            body.set_option(ETA, eta);
            (target, Bytes::from(body.to_vec()), extra)
        }
        None => (target, message.body.clone(), Extra { due: Some(eta), ..extra }),
    }
}

/// The per-message priority a Dramatiq message asks for.
pub(crate) fn priority_of(body: &Body) -> Option<u8> {
    body.option(BROKER_PRIORITY).and_then(|value| value.as_u64()).and_then(|n| u8::try_from(n).ok())
}

/// When a message of `q.DQ` falls due (milliseconds since the Unix
/// epoch): its `options.eta`, or for bytes that are not a Dramatiq message
/// the header they were sent with; `None`: due now.
pub(crate) fn eta(body: Option<&Body>, properties: &lapin::BasicProperties) -> Option<u64> {
    match body {
        Some(body) => body.eta(),
        None => crate::delay::header_u64(properties, DUE_HEADER),
    }
}

/// The copy of a due message of `q.DQ` that goes to `q`: `queue_name` =
/// `q`, no `eta`, as Dramatiq's worker writes it (bytes that are not a
/// Dramatiq message go unchanged).
pub(crate) fn due_copy(body: Option<Body>, raw: &Bytes, queue: &str) -> Bytes {
    match body {
        Some(mut body) => {
            body.set_queue_name(queue);
            body.remove_option(ETA);
            Bytes::from(body.to_vec())
        }
        None => raw.clone(),
    }
}

/// A dead letter's body: the message with `options.traceback` = `reason`,
/// for every JSON object (one that Python reads but this worker refused —
/// an id that is no UUID, an option of the wrong type — shows its reason
/// to Python's tools too); other bytes go unchanged. The reason travels in
/// a header as well.
pub(crate) fn dead_letter_body(raw: &Bytes, reason: &str) -> Bytes {
    match Body::parse(raw) {
        Ok(mut body) => {
            body.set_option(TRACEBACK, reason);
            Bytes::from(body.to_vec())
        }
        Err(_) => raw.clone(),
    }
}

/// The reason of a dead letter that carries none in a header (dead-lettered
/// by Python Dramatiq or by RabbitMQ): its `options.traceback`.
pub(crate) fn traceback(raw: &[u8]) -> Option<String> {
    let body = Body::parse(raw).ok()?;
    body.option(TRACEBACK).and_then(|value| value.as_str()).map(str::to_owned)
}

/// The message id of a dead letter that carries no key in a header.
pub(crate) fn message_id(raw: &[u8]) -> Option<String> {
    Body::parse(raw).ok()?.message_id().map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const MESSAGE: &str = r#"{"queue_name":"q","actor_name":"a","args":[],"kwargs":{},"options":{"broker_priority":3},"message_id":"0f8f3bc2-62f4-4b5d-a3d1-9e2c4c7f1a10","message_timestamp":1}"#;

    #[test]
    fn delayed_messages_go_to_the_delay_queue_with_their_eta() {
        let before = now_ms();
        let message = Outgoing::new("q", MESSAGE.as_bytes().to_vec()).with_delay(Some(Duration::from_millis(1500)));
        let (target, body, extra) = route(&message);
        assert_eq!(target, Target::DelayQueue("q"));
        assert_eq!(extra.priority, Some(3));
        let body = Body::parse(&body).expect("json");
        assert_eq!(body.queue_name(), Some("q.DQ"));
        let eta = body.eta().expect("eta");
        assert!(eta >= before + 1500 && eta <= now_ms() + 1500, "{eta}");
        let back = Body::parse(&due_copy(Some(body), &Bytes::new(), "q")).expect("json");
        assert_eq!(back.queue_name(), Some("q"));
        assert_eq!(back.eta(), None);
    }

    #[test]
    fn raw_bytes_travel_unchanged() {
        let message = Outgoing::new("q", &b"\x01garbage"[..]).with_delay(Some(Duration::from_secs(1)));
        let (target, body, extra) = route(&message);
        assert_eq!((target, &body[..]), (Target::DelayQueue("q"), &b"\x01garbage"[..]));
        assert!(extra.due.is_some());
        assert_eq!(&dead_letter_body(&body, "why")[..], &b"\x01garbage"[..]);
        let array = Bytes::from_static(b"[1,2,3]");
        assert_eq!(dead_letter_body(&array, "why"), array);
        // A JSON object Python reads but this worker refused shows why too.
        let other_json = Bytes::from_static(br#"{"hello":"world"}"#);
        assert_eq!(traceback(&dead_letter_body(&other_json, "why")).as_deref(), Some("why"));
        let dead = dead_letter_body(&Bytes::from_static(MESSAGE.as_bytes()), "why");
        assert_eq!(traceback(&dead).as_deref(), Some("why"));
    }
}
