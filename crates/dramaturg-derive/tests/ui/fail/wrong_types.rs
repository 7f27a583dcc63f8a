use dramaturg::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Actor, Serialize, Deserialize)]
#[actor(queue = 5)]
struct QueueNotString;

#[derive(Actor, Serialize, Deserialize)]
#[actor(max_retries = "five")]
struct RetriesNotInteger;

#[derive(Actor, Serialize, Deserialize)]
#[actor(priority = 300)]
struct PriorityTooHigh;

#[derive(Actor, Serialize, Deserialize)]
#[actor(blocking = "yes")]
struct BlockingNotBool;

#[derive(Actor, Serialize, Deserialize)]
#[actor(time_limit = 30)]
struct DurationNotString;

fn main() {}
