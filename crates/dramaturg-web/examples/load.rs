//! How long the dashboard's pages take with 100,000 messages queued on the
//! real Redis (and 2,000 delayed, 2,000 dead): each page asked 20 times
//! through the router, median and slowest printed. The figures are in
//! docs/benchmarks.md.
//!
//! ```sh
//! cargo run --release -p dramaturg-web --example load
//! ```
//!
//! `DRAMATURG_REDIS` (default `redis://127.0.0.1:6379`) names the server; the
//! run uses a namespace of its own and purges it at the end.

#![allow(clippy::unwrap_used)] // A bench may panic on the unexpected.

use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use dramaturg::prelude::*;
use dramaturg::{Bounded, MessageId, SendOptions, Settlement};
use dramaturg_web::Dashboard;
use http_body_util::BodyExt;
use serde::{Deserialize, Serialize};
use tower::ServiceExt;

#[derive(Actor, Serialize, Deserialize)]
#[actor(queue = "load")]
struct Invoice {
    customer: String,
    lines: Vec<u32>,
}

impl Invoice {
    async fn perform(self, _ctx: &Context) -> Result<(), std::io::Error> {
        std::hint::black_box(self);
        Ok(())
    }
}

const READY: usize = 100_000;
const OTHER: usize = 2_000;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let server = std::env::var("DRAMATURG_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    let namespace = format!("load-{}", MessageId::new().to_string().to_lowercase());
    let url = format!("{server}?namespace={namespace}");
    let app = dramaturg::app_shared(dramaturg::connect(&url).await.unwrap()).actor::<Invoice>().build().unwrap();
    let invoice = |i: usize| Invoice { customer: format!("customer-{i}"), lines: vec![1, 2, 3] };

    let started = Instant::now();
    // Dead letters first (the first messages, dead-lettered), then the rest.
    let batch: Vec<Invoice> = (0..OTHER).map(invoice).collect();
    app.send_many(&batch).await.unwrap();
    let mut consumer = app.broker().consume("load", 500).await.unwrap();
    for _ in 0..OTHER {
        consumer.next().await.unwrap().settle(Settlement::DeadLetter(Bounded::reason("boom"))).await.unwrap();
    }
    consumer.close().await.unwrap();
    app.broker().release().await.unwrap();
    let mut last = None;
    for chunk in (0..READY).collect::<Vec<_>>().chunks(5_000) {
        let batch: Vec<Invoice> = chunk.iter().map(|&i| invoice(i)).collect();
        last = app.send_many(&batch).await.unwrap().pop().map(|sent| sent.id());
    }
    for i in 0..OTHER {
        let later = SendOptions::default().with_delay(Duration::from_secs(3600 + i as u64));
        invoice(i).send_with(&app, later).await.unwrap();
    }
    let stats = app.stats("load").await.unwrap();
    println!(
        "queued in {:.1}s: {} ready, {} delayed, {} dead",
        started.elapsed().as_secs_f64(),
        stats.ready,
        stats.delayed,
        stats.dead
    );

    let router = Dashboard::new(app.clone()).router();
    let last = last.unwrap();
    let pages = [
        ("overview", "/".to_owned()),
        ("queue, first page", "/queues/load".to_owned()),
        ("queue, page 1000", "/queues/load?page=1000".to_owned()),
        ("delayed, first page", "/queues/load?state=delayed".to_owned()),
        ("dead letters, first page", "/queues/load/dead".to_owned()),
        ("dead letters, page 39", "/queues/load/dead?page=39".to_owned()),
        ("workers", "/workers".to_owned()),
        ("lookup of the last message", format!("/lookup?id={last}")),
    ];
    println!("{:<28} {:>10} {:>10}", "page", "median", "slowest");
    for (name, path) in pages {
        let mut times = Vec::new();
        for _ in 0..20 {
            let request = Request::get(&path).body(Body::empty()).unwrap();
            let at = Instant::now();
            let response = router.clone().oneshot(request).await.unwrap();
            let status = response.status();
            let bytes = response.into_body().collect().await.unwrap().to_bytes();
            times.push(at.elapsed());
            assert_eq!(status, StatusCode::OK, "{path}: {}", String::from_utf8_lossy(&bytes));
        }
        times.sort();
        println!("{name:<28} {:>8.1}ms {:>8.1}ms", ms(times[times.len() / 2]), ms(times[times.len() - 1]));
    }
    app.admin().unwrap().purge("load").await.unwrap();
    app.dead_letters().unwrap().delete("load", dramaturg::Replay::All).await.unwrap();
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
