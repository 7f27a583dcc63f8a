use dramaturg::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Actor, Serialize, Deserialize)]
#[actor(blocking)]
struct Crunch;

impl Crunch {
    async fn perform(self, _ctx: &Context) -> Result<(), std::io::Error> {
        Ok(())
    }
}

fn main() {}
