use dramaturg::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Actor, Serialize, Deserialize)]
#[actor(time_limit = "30 parsecs")]
struct BadUnit;

#[derive(Actor, Serialize, Deserialize)]
#[actor(min_backoff = "10s", max_backoff = "1s")]
struct BackoffsReversed;

#[derive(Actor, Serialize, Deserialize)]
#[actor(time_limit = "0s")]
struct ZeroLimit;

fn main() {}
