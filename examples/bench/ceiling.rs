//! What the broker's server allows: the same messages through the same
//! server with the least work a correct at-least-once queue needs, written
//! directly with the client library, for the `ceiling` scenario.
//!
//! - Redis (the redis crate): enqueue with one `LPUSH` of up to 1,000
//!   bodies per call; claim with `LMOVE ready → in-flight` (a claim that
//!   survives the consumer's death) and acknowledge with `LREM` from the
//!   in-flight list, the acks of one batch and the claims of the next in
//!   one pipeline: one round trip per batch of `prefetch` messages.
//! - RabbitMQ (lapin): persistent publishes with publisher confirms, up to
//!   1,000 awaited together; a consumer with manual acks and a prefetch of
//!   `prefetch`, acknowledging with `multiple` every half prefetch.
//!
//! Each message body is unique and as large as dramaturg's message of the
//! bench's no-op actor.

use std::time::Instant;

use dramaturg::BoxError;
use futures_util::StreamExt;

use crate::cpu::{CpuMeter, CpuPerMessage, Server};

/// One run's figures.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Run {
    pub(crate) enqueue_per_s: f64,
    pub(crate) process_per_s: f64,
    /// CPU time per message while processing.
    pub(crate) cpu: CpuPerMessage,
}

/// Messages per enqueue call (as the bench's `send_many` batches).
const ENQUEUE_CHUNK: u64 = 1000;

/// The body of message `n`, `size` bytes long.
fn body(n: u64, size: usize) -> Vec<u8> {
    let mut body = format!("{n:020}").into_bytes();
    body.resize(size.max(body.len()), b'x');
    body
}

/// The raw Redis path on `url` for `messages` bodies of `size` bytes, with
/// `loops` consumers claiming `prefetch` at a time.
pub(crate) async fn redis(
    url: &str,
    messages: u64,
    size: usize,
    prefetch: usize,
    loops: usize,
    server: Option<Server>,
) -> Result<Run, BoxError> {
    let client = redis::Client::open(url.split('?').next().unwrap_or(url))?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let ready = format!("bench-ceiling:{{{}}}:ready", std::process::id());
    let _: () = redis::cmd("DEL").arg(&ready).query_async(&mut conn).await?;

    let started = Instant::now();
    let mut n = 0;
    while n < messages {
        let end = (n + ENQUEUE_CHUNK).min(messages);
        let bodies: Vec<Vec<u8>> = (n..end).map(|n| body(n, size)).collect();
        let _: () = redis::cmd("LPUSH").arg(&ready).arg(bodies).query_async(&mut conn).await?;
        n = end;
    }
    let enqueue_secs = started.elapsed().as_secs_f64();

    let meter = CpuMeter::start(server);
    let started = Instant::now();
    let consumers = (0..loops).map(|i| {
        let mut conn = conn.clone();
        let ready = ready.clone();
        let in_flight = format!("{ready}:inflight:{i}");
        async move {
            let mut done = 0u64;
            let mut held: Vec<Vec<u8>> = Vec::new();
            loop {
                let mut pipe = redis::pipe();
                for body in &held {
                    pipe.cmd("LREM").arg(&in_flight).arg(1).arg(body).ignore();
                }
                done += held.len() as u64;
                for _ in 0..prefetch {
                    pipe.cmd("LMOVE").arg(&ready).arg(&in_flight).arg("RIGHT").arg("LEFT");
                }
                let claimed: Vec<Option<Vec<u8>>> = pipe.query_async(&mut conn).await?;
                held = claimed.into_iter().flatten().collect();
                if held.is_empty() {
                    return Ok::<u64, redis::RedisError>(done);
                }
                // The no-op work: look at each message.
                for body in &held {
                    std::hint::black_box(body);
                }
            }
        }
    });
    let processed: u64 = futures_util::future::try_join_all(consumers).await?.into_iter().sum();
    let process_secs = started.elapsed().as_secs_f64();
    let cpu = meter.per_message(messages);
    if processed != messages {
        return Err(format!("the Redis ceiling processed {processed} of {messages}").into());
    }
    Ok(Run { enqueue_per_s: messages as f64 / enqueue_secs, process_per_s: messages as f64 / process_secs, cpu })
}

/// The raw RabbitMQ path on `url` for `messages` bodies of `size` bytes,
/// with a consumer of prefetch `prefetch`.
pub(crate) async fn amqp(
    url: &str,
    messages: u64,
    size: usize,
    prefetch: u16,
    server: Option<Server>,
) -> Result<Run, BoxError> {
    use lapin::options::{
        BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions,
        QueueDeclareOptions, QueueDeleteOptions,
    };
    use lapin::types::FieldTable;
    use lapin::{BasicProperties, Connection, ConnectionProperties};

    let url = url.split('?').next().unwrap_or(url);
    let runtime = async_rs::Runtime::tokio_current();
    let connection = Connection::connect_with_runtime(url, ConnectionProperties::default(), runtime).await?;
    let queue = format!("bench-ceiling-{}", std::process::id());
    let publisher = connection.create_channel().await?;
    publisher.queue_declare(queue.as_str().into(), QueueDeclareOptions::durable(), FieldTable::default()).await?;
    publisher.confirm_select(ConfirmSelectOptions::default()).await?;

    let started = Instant::now();
    let persistent = BasicProperties::default().with_delivery_mode(2);
    let mut n = 0;
    while n < messages {
        let end = (n + ENQUEUE_CHUNK).min(messages);
        let mut confirms = Vec::with_capacity((end - n) as usize);
        for n in n..end {
            let body = body(n, size);
            let options = BasicPublishOptions::default();
            confirms.push(
                publisher.basic_publish("".into(), queue.as_str().into(), options, &body, persistent.clone()).await?,
            );
        }
        for confirm in futures_util::future::try_join_all(confirms).await? {
            if !confirm.is_ack() {
                return Err("RabbitMQ refused a publish of the ceiling run".into());
            }
        }
        n = end;
    }
    let enqueue_secs = started.elapsed().as_secs_f64();

    let consumer_channel = connection.create_channel().await?;
    consumer_channel.basic_qos(prefetch, BasicQosOptions::default()).await?;
    let meter = CpuMeter::start(server);
    let started = Instant::now();
    let mut consumer = consumer_channel
        .basic_consume(queue.as_str().into(), "".into(), BasicConsumeOptions::default(), FieldTable::default())
        .await?;
    let every = u64::from(prefetch / 2).max(1);
    let mut processed = 0u64;
    while processed < messages {
        let delivery = consumer.next().await.ok_or("the ceiling's consumer was cancelled")??;
        std::hint::black_box(&delivery.data);
        processed += 1;
        if processed.is_multiple_of(every) || processed == messages {
            consumer_channel.basic_ack(delivery.delivery_tag, BasicAckOptions { multiple: true }).await?;
        }
    }
    let process_secs = started.elapsed().as_secs_f64();
    let cpu = meter.per_message(messages);
    publisher.queue_delete(queue.as_str().into(), QueueDeleteOptions::default()).await?;
    connection.close(200, "done".into()).await?;
    Ok(Run { enqueue_per_s: messages as f64 / enqueue_secs, process_per_s: messages as f64 / process_secs, cpu })
}
