use dramaturg::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Actor, Serialize, Deserialize)]
struct Sync;

impl Sync {
    fn perform(self, _ctx: &Context) -> Result<(), std::io::Error> {
        Ok(())
    }
}

fn main() {}
