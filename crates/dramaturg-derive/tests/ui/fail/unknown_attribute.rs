use dramaturg::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Actor, Serialize, Deserialize)]
#[actor(queue = "mail", max_retry = 5)]
struct SendWelcome;

impl SendWelcome {
    async fn perform(self, _ctx: &Context) -> Result<(), String> {
        Ok(())
    }
}

fn main() {}
