use dramaturg::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Actor, Serialize, Deserialize)]
struct Count;

impl Count {
    async fn perform(self, _ctx: &Context) -> Result<u64, std::io::Error> {
        Ok(1)
    }
}

fn main() {}
