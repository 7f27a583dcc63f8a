//! dramaturg in one file, with no server: three actors on the in-memory
//! broker with the default middleware stack, a few hundred messages, a
//! worker that runs until the queues are drained, and a summary. Some
//! thumbnails fail for good, some fail once and succeed on retry, and some
//! run past their time limit once.
//!
//! ```sh
//! cargo run --example quickstart
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use dramaturg::prelude::*;
use dramaturg::retries::Retries;
use dramaturg::{BoxError, DeadLetters};
use serde::{Deserialize, Serialize};

/// Sends a welcome e-mail (here: pretends to, for a few milliseconds).
#[derive(Actor, Serialize, Deserialize)]
#[actor(queue = "mail")]
struct SendWelcome {
    user_id: u64,
}

static WELCOMED: AtomicU64 = AtomicU64::new(0);

impl SendWelcome {
    async fn perform(self, _ctx: &Context) -> Result<(), BoxError> {
        tokio::time::sleep(Duration::from_millis(5)).await;
        WELCOMED.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// A typed error, so that failures are easy to see and to match.
#[derive(Debug, thiserror::Error)]
#[error("image {0} is corrupt")]
struct CorruptImage(u64);

/// A transient failure: worth a retry.
#[derive(Debug, thiserror::Error)]
#[error("storage timed out")]
struct StorageTimeout;

/// Makes a thumbnail. One image in thirteen is corrupt (fails for good, no
/// retry); one in seven meets a storage timeout on its first attempt (the
/// retry succeeds); one in eleven is slow on its first attempt and runs past
/// the 100 ms time limit (the retry is fast).
#[derive(Actor, Serialize, Deserialize)]
#[actor(queue = "media", time_limit = "100ms")]
struct MakeThumbnail {
    image_id: u64,
}

impl MakeThumbnail {
    async fn perform(self, ctx: &Context) -> Result<(), Fail> {
        let first_attempt = ctx.retries() == 0;
        if self.image_id.is_multiple_of(13) {
            return Err(Fail::permanent(CorruptImage(self.image_id)));
        }
        if self.image_id.is_multiple_of(7) && first_attempt {
            return Err(StorageTimeout.into());
        }
        if self.image_id.is_multiple_of(11) && first_attempt {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        // Follow-up work goes through the same app.
        Checksum { bytes: self.image_id * 1000 }.send(ctx.app()).await?;
        Ok(())
    }
}

/// CPU-bound work: runs on the blocking thread pool, off the async threads.
#[derive(Actor, Serialize, Deserialize)]
#[actor(queue = "media", blocking, output = u64)]
struct Checksum {
    bytes: u64,
}

impl Checksum {
    fn perform(self, _ctx: &Context) -> Result<u64, BoxError> {
        Ok((0..self.bytes).fold(0u64, |sum, b| sum.wrapping_mul(31).wrapping_add(b)))
    }
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    // Warnings show the time limits and the messages given up on, each in
    // its message's span (id, actor, queue, retries).
    tracing_subscriber::fmt().with_max_level(tracing::Level::WARN).with_target(false).compact().init();
    let broker = MemoryBroker::new();
    // The default stack (callbacks, age limit, abort, retries, time limit,
    // error capture), with retries quick enough for a demo.
    let app = dramaturg::app(broker.clone())
        .replace("retries", Retries::new().backoff(Duration::from_millis(20), Duration::from_millis(200)))
        .actor::<SendWelcome>()
        .actor::<MakeThumbnail>()
        .actor::<Checksum>()
        .build()?;
    println!("middleware: {:?}", app.middleware_names());

    let started = Instant::now();
    for user_id in 0..200 {
        SendWelcome { user_id }.send(&app).await?;
    }
    for image_id in 1..=100 {
        MakeThumbnail { image_id }.send(&app).await?;
    }
    println!("sent 300 messages to {:?}", app.queues());

    let report = Worker::new(app.clone()).concurrency(32).run_until_drained(Duration::from_secs(30)).await?;

    let dead = broker.list("media", 3).await?;
    println!("done in {:.0?}", started.elapsed());
    println!("  processed:     {} messages", report.succeeded + report.failed);
    println!("  succeeded:     {} ({} welcome e-mails)", report.succeeded, WELCOMED.load(Ordering::Relaxed));
    println!("  retried:       {} (storage timeouts and time-limit overruns, tried again)", report.retried);
    println!("  failed:        {}", report.failed);
    println!("  dead-lettered: {}", report.dead_lettered());
    for letter in dead {
        println!("    e.g. {}", letter.reason);
    }
    Ok(())
}
