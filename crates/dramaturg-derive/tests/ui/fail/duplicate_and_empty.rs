use dramaturg::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Actor, Serialize, Deserialize)]
#[actor(queue = "a", queue = "b")]
struct Twice;

#[derive(Actor, Serialize, Deserialize)]
#[actor(name = "")]
struct EmptyName;

fn main() {}
