use dramaturg::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Actor, Serialize, Deserialize)]
#[actor(batch(max = 0, wait = "200ms"))]
struct ZeroMax;

#[derive(Actor, Serialize, Deserialize)]
#[actor(batch(max = 10, wait = "soon"))]
struct BadWait;

#[derive(Actor, Serialize, Deserialize)]
#[actor(batch(max = 10, wait = "0s"))]
struct ZeroWait;

#[derive(Actor, Serialize, Deserialize)]
#[actor(batch(wait = "1s"))]
struct NoMax;

#[derive(Actor, Serialize, Deserialize)]
#[actor(batch(max = 10, size = 3))]
struct UnknownSetting;

#[derive(Actor, Serialize, Deserialize)]
#[actor(batch = 10)]
struct NotAList;

#[derive(Actor, Serialize, Deserialize)]
#[actor(batch(max = 10), blocking)]
struct Blocking;

#[derive(Actor, Serialize, Deserialize)]
#[actor(batch(max = 10), output = u64)]
struct WithOutput;

fn main() {}
