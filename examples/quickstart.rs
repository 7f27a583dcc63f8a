//! dramaturg in one file, with no server: three actors on the in-memory
//! broker, a few hundred messages, a worker that runs until the queues are
//! drained, and a summary.
//!
//! ```sh
//! cargo run --example quickstart
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use dramaturg::prelude::*;
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

/// Makes a thumbnail; one image in thirteen is corrupt and fails.
#[derive(Actor, Serialize, Deserialize)]
#[actor(queue = "media")]
struct MakeThumbnail {
    image_id: u64,
}

impl MakeThumbnail {
    async fn perform(self, ctx: &Context) -> Result<(), CorruptImage> {
        if self.image_id % 13 == 0 {
            return Err(CorruptImage(self.image_id));
        }
        // Follow-up work goes through the same app.
        Checksum { bytes: self.image_id * 1000 }.send(ctx.app()).await.map_err(|_| CorruptImage(self.image_id))?;
        Ok(())
    }
}

/// CPU-bound work: runs on the blocking thread pool, off the async threads.
#[derive(Actor, Serialize, Deserialize)]
#[actor(queue = "media", blocking)]
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
    let broker = MemoryBroker::new();
    let app =
        App::builder(broker.clone()).actor::<SendWelcome>().actor::<MakeThumbnail>().actor::<Checksum>().build()?;

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
    println!("  processed:     {}", report.succeeded + report.failed);
    println!("  succeeded:     {} ({} welcome e-mails)", report.succeeded, WELCOMED.load(Ordering::Relaxed));
    println!("  failed:        {}", report.failed);
    println!("  dead-lettered: {}", report.dead_lettered());
    for letter in dead {
        println!("    e.g. {}", letter.reason);
    }
    Ok(())
}
