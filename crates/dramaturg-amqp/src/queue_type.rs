//! Which kind of RabbitMQ queue a queue's messages wait in: classic or
//! quorum (replicated), and the quorum queue's delivery limit.

use std::fmt;
use std::str::FromStr;

use dramaturg_core::{BrokerError, BrokerErrorKind};
use lapin::types::AMQPValue;

/// The RabbitMQ queue type of the queues messages wait in (`x-queue-type`),
/// set with [`AmqpConfig::queue_type`](crate::AmqpConfig::queue_type) or
/// `?queue_type=quorum` in the URL.
///
/// Only the queue the workers consume is of this type. Its dead-letter
/// queue (`q.dq`) and its delay buckets stay classic queues on the node
/// they are declared on: the dead letters are read a message at a time
/// and put back (which a quorum queue counts as a delivery, and reorders),
/// and delayed messages leave their bucket by RabbitMQ's own
/// dead-lettering, which a quorum queue does only at most once unless its
/// overflow rejects publishes. See the RabbitMQ guide, "Quorum Queues".
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum QueueType {
    /// A classic queue (the default): one Erlang process on the node it is
    /// declared on, not replicated.
    #[default]
    Classic,
    /// A quorum queue: replicated on a Raft majority of the cluster's nodes
    /// (on one node, one replica), durable only, without message
    /// priorities (RabbitMQ 3.x), with an optional
    /// [delivery limit](crate::AmqpConfig::delivery_limit).
    Quorum,
}

impl QueueType {
    /// The value of `x-queue-type`.
    pub(crate) fn argument(self) -> AMQPValue {
        AMQPValue::LongString(self.to_string().into())
    }
}

impl fmt::Display for QueueType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Classic => "classic",
            Self::Quorum => "quorum",
        })
    }
}

impl FromStr for QueueType {
    type Err = BrokerError;

    /// `classic` or `quorum`; anything else is an error of kind
    /// [`InvalidInput`](BrokerErrorKind::InvalidInput).
    fn from_str(s: &str) -> Result<Self, BrokerError> {
        match s {
            "classic" => Ok(Self::Classic),
            "quorum" => Ok(Self::Quorum),
            other => Err(BrokerError::new(
                BrokerErrorKind::InvalidInput,
                format!("amqp: queue type {other:?}: expected \"classic\" or \"quorum\""),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::QueueType;

    #[test]
    fn queue_types_read_and_write_as_rabbitmq_names_them() {
        for queue_type in [QueueType::Classic, QueueType::Quorum] {
            assert_eq!(queue_type.to_string().parse::<QueueType>().unwrap(), queue_type);
        }
        assert!("stream".parse::<QueueType>().is_err());
    }
}
