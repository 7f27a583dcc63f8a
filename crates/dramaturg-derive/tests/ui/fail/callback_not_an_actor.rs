use dramaturg::prelude::*;
use serde::{Deserialize, Serialize};

struct NotAnActor;

#[derive(Actor, Serialize, Deserialize)]
#[actor(on_failure = NotAnActor)]
struct Export;

impl Export {
    async fn perform(self, _ctx: &Context) -> Result<(), std::io::Error> {
        Ok(())
    }
}

fn main() {}
