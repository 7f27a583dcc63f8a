use dramaturg::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Actor, Serialize, Deserialize)]
#[actor(batch(max = 10))]
struct InsertRow {
    id: u64,
}

impl InsertRow {
    async fn perform(batch: Batch<Self>) -> u64 {
        batch.len() as u64
    }
}

fn main() {}
