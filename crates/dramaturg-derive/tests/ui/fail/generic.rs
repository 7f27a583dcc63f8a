use dramaturg::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Actor, Serialize, Deserialize)]
struct Wrapper<T> {
    value: T,
}

fn main() {}
