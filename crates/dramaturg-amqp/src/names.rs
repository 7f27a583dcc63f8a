//! Names that reach AMQP short strings (at most 255 bytes): queue names and
//! the names derived from them. lapin panics on a longer short string, so
//! every name a user gives is checked here first and refused with a typed
//! error.

use dramaturg_core::{Bounded, BrokerError, BrokerErrorKind};
use lapin::types::ShortString;

/// The longest suffix appended to a queue's name (`.delay.22`; `.dq` is
/// shorter).
const LONGEST_SUFFIX: usize = ".delay.22".len();

/// The longest queue name this broker accepts: RabbitMQ's 255 bytes minus
/// the longest suffix of a companion queue.
pub const MAX_QUEUE_NAME_BYTES: usize = 255 - LONGEST_SUFFIX;

/// Checks that `queue` can be used with every companion queue derived from
/// it.
pub(crate) fn check_queue(queue: &str) -> Result<(), BrokerError> {
    if queue.is_empty() {
        return Err(BrokerError::new(BrokerErrorKind::InvalidInput, "amqp: a queue name cannot be empty"));
    }
    if queue.len() > MAX_QUEUE_NAME_BYTES {
        return Err(BrokerError::new(
            BrokerErrorKind::InvalidInput,
            format!(
                "amqp: the queue name {} is {} bytes; RabbitMQ allows 255 and the broker appends up to \
                 {LONGEST_SUFFIX} (`.delay.22`), so the limit is {MAX_QUEUE_NAME_BYTES} bytes",
                Bounded::new(&format!("{queue:?}"), 64),
                queue.len(),
            ),
        ));
    }
    Ok(())
}

/// `text` as a short string, or a typed error naming `what`.
pub(crate) fn short(text: &str, what: &str) -> Result<ShortString, BrokerError> {
    ShortString::try_new(text).map_err(|error| {
        BrokerError::new(
            BrokerErrorKind::InvalidInput,
            format!("amqp: {what} {} does not fit an AMQP short string: {error}", Bounded::new(text, 64)),
        )
    })
}

/// The name of `queue`'s dead-letter queue.
pub(crate) fn dead_queue(queue: &str) -> String {
    format!("{queue}.dq")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_leaves_room_for_the_longest_suffix() {
        assert_eq!(MAX_QUEUE_NAME_BYTES, 246);
        assert!(check_queue(&"q".repeat(246)).is_ok());
        let error = check_queue(&"q".repeat(247)).unwrap_err();
        assert_eq!(error.kind(), BrokerErrorKind::InvalidInput);
        assert!(error.to_string().contains("246"), "{error}");
        assert!(error.to_string().len() < 400, "{error}");
        assert!(check_queue("").is_err());
        assert!(short(&"k".repeat(256), "header key").is_err());
    }
}
