use dramaturg::prelude::*;
use dramaturg::BoxError;
use serde::{Deserialize, Serialize};

#[derive(Actor, Serialize, Deserialize)]
#[actor(queue = "rows", batch(max = 100, wait = "200ms"))]
struct InsertRow {
    id: u64,
}

impl InsertRow {
    async fn perform(batch: Batch<Self>) -> Result<BatchOutcome, BoxError> {
        let mut outcome = BatchOutcome::new();
        for (index, row) in batch.args().iter().enumerate() {
            if row.id == 0 {
                outcome.fail(index, "row 0 is reserved");
            }
        }
        Ok(outcome)
    }
}

/// All or nothing, with the default wait and a handler of another name.
#[derive(Actor, Serialize, Deserialize)]
#[actor(batch(max = 5), handler = "write_all", max_retries = 3, time_limit = "1m 30s")]
struct WriteAll(String);

impl WriteAll {
    async fn write_all(batch: Batch<Self>) -> Result<(), std::io::Error> {
        let _lines: Vec<WriteAll> = batch.into_args();
        Ok(())
    }
}

fn main() {
    use dramaturg::batch::BatchLimits;
    use std::time::Duration;
    assert_eq!(InsertRow::BATCH, Some(BatchLimits::new(100, Duration::from_millis(200))));
    assert_eq!(WriteAll::BATCH, Some(BatchLimits::new(5, Duration::from_millis(100))));
    assert_eq!(WriteAll::options().time_limit, Some(Duration::from_secs(90)));
}
