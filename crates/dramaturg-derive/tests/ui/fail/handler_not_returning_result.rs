use dramaturg::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Actor, Serialize, Deserialize)]
struct Plain;

impl Plain {
    async fn perform(self, _ctx: &Context) -> u64 {
        1
    }
}

fn main() {}
