use dramaturg::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Actor, Serialize, Deserialize)]
#[actor(rate_limit = "fast")]
struct NotARate;

#[derive(Actor, Serialize, Deserialize)]
#[actor(concurrency = 0)]
struct NoneAtOnce;

#[derive(Actor, Serialize, Deserialize)]
#[actor(concurrency = 1, limit_key = "tenant")]
struct NoSuchField {
    customer: String,
}

fn main() {}
