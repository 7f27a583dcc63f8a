use dramaturg::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct Plain;

fn main() {
    let app = App::builder(MemoryBroker::new()).actor::<Plain>().build();
    let _ = app;
}
