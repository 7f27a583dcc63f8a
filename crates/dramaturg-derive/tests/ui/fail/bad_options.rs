use dramaturg::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Actor, Serialize, Deserialize)]
#[actor(option = 3)]
struct NotAList;

#[derive(Actor, Serialize, Deserialize)]
#[actor(option(tenant = "a", tenant = "b"))]
struct Twice;

#[derive(Actor, Serialize, Deserialize)]
#[actor(on_success = 3)]
struct NumberCallback;

fn main() {}
