//! lapin's errors as dramaturg's [`BrokerError`]s.

use dramaturg_core::{BrokerError, BrokerErrorKind};
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::ErrorKind;

/// A lapin error as a [`BrokerError`], classified, without the URL.
pub(crate) fn amqp_error(error: lapin::Error, what: &str) -> BrokerError {
    let kind = match error.kind() {
        ErrorKind::IOError(_)
        | ErrorKind::InvalidConnectionState(_)
        | ErrorKind::InvalidChannelState(..)
        | ErrorKind::MissingHeartbeatError
        | ErrorKind::InvalidChannel(_) => BrokerErrorKind::Connection,
        ErrorKind::ProtocolError(_) => BrokerErrorKind::Protocol,
        _ => BrokerErrorKind::Other,
    };
    BrokerError::new(kind, format!("amqp: {what} failed: {error}")).with_source(error)
}

/// Whether `error` is RabbitMQ's 404: the queue does not exist.
pub(crate) fn is_not_found(error: &lapin::Error) -> bool {
    matches!(error.kind(), ErrorKind::ProtocolError(e) if *e.kind() == AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND))
}
