//! Statistics, purge and join in Dramatiq's layout: ready = `q`'s ready
//! messages, delayed = `q.DQ`'s plus those this broker value's consumers
//! hold (see [`mover`](super::mover)), in flight = this broker value's own
//! unsettled deliveries of `q` (RabbitMQ does not count unacknowledged
//! messages over AMQP), dead = `q.XQ`'s messages.

use std::time::Duration;

use dramaturg_core::dramatiq::delay_queue;
use dramaturg_core::{BrokerError, QueueStats};
use lapin::options::QueuePurgeOptions;

use crate::error::amqp_error;
use crate::names::{check_queue, short};
use crate::Shared;

/// Counts of `queue`'s messages.
pub(crate) async fn stats(shared: &Shared, queue: &str) -> Result<QueueStats, BrokerError> {
    let counts = shared.declare_dramatiq(queue).await?;
    let held = shared.in_flight(&delay_queue(queue));
    Ok(QueueStats::new(counts.ready, counts.delayed + held, shared.in_flight(queue), counts.dead)
        .with_in_flight_scope(dramaturg_core::InFlightScope::Process))
}

/// Waits until `queue` is drained, for at most `timeout`. A message moved
/// from `q.DQ` to `q` is counted in both for a moment, never in neither
/// (published to `q`, confirmed, then acknowledged); but the queues are
/// read one after the other, so drained only when two looks 100 ms apart
/// both find nothing.
pub(crate) async fn join(shared: &Shared, queue: &str, timeout: Duration) -> Result<(), BrokerError> {
    check_queue(queue)?;
    let deadline = tokio::time::Instant::now() + timeout;
    let mut empty_looks = 0;
    loop {
        if stats(shared, queue).await?.is_drained() {
            empty_looks += 1;
            if empty_looks == 2 {
                return Ok(());
            }
        } else {
            empty_looks = 0;
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(BrokerError::join_timeout(queue, timeout));
        }
        let pause = if empty_looks > 0 { 100 } else { 20 };
        tokio::time::sleep(Duration::from_millis(pause)).await;
    }
}

/// Removes the ready messages of `q` and `q.DQ` (not those held by
/// consumers); returns how many.
pub(crate) async fn purge(shared: &Shared, queue: &str) -> Result<u64, BrokerError> {
    shared.declare_dramatiq(queue).await?;
    let channel = shared.consuming_channel().await?;
    let mut purged = 0;
    let result = async {
        for name in [queue.to_owned(), delay_queue(queue)] {
            let count = channel
                .queue_purge(short(&name, "queue name")?, QueuePurgeOptions::default())
                .await
                .map_err(|e| amqp_error(e, "purge"))?;
            purged += u64::from(count);
        }
        Ok::<_, BrokerError>(purged)
    }
    .await;
    let _ = channel.close(200, "done".into()).await;
    result
}
