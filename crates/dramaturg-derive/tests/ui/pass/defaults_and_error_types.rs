use dramaturg::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Debug)]
struct MyError;

impl std::fmt::Display for MyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("my error")
    }
}

impl std::error::Error for MyError {}

/// Typed error, unit struct, default name and queue.
#[derive(Actor, Serialize, Deserialize)]
struct HTTPPing;

impl HTTPPing {
    async fn perform(self, _ctx: &Context) -> Result<(), MyError> {
        Err(MyError)
    }
}

/// Boxed error and a returned value.
#[derive(Actor, Serialize, Deserialize)]
#[actor(output = i64)]
struct Add {
    a: i64,
    b: i64,
}

impl Add {
    async fn perform(self, _ctx: &Context) -> Result<i64, Box<dyn std::error::Error + Send + Sync>> {
        Ok(self.a + self.b)
    }
}

/// A String error, an enum for arguments, a handler of another name.
#[derive(Actor, Serialize, Deserialize)]
#[actor(handler = "run")]
enum Command {
    Start,
    Stop { force: bool },
}

impl Command {
    async fn run(self, _ctx: &Context) -> Result<(), String> {
        match self {
            Command::Start => Ok(()),
            Command::Stop { force } => Err(format!("cannot stop (force: {force})")),
        }
    }
}

/// A blocking handler is a plain fn.
#[derive(Actor, Serialize, Deserialize)]
#[actor(blocking = true, queue = "cpu", output = u64)]
struct Crunch {
    n: u64,
}

impl Crunch {
    fn perform(self, _ctx: &Context) -> Result<u64, std::io::Error> {
        Ok((0..self.n).sum())
    }
}

fn main() {
    assert_eq!(HTTPPing::NAME, "http_ping");
    assert_eq!(HTTPPing::QUEUE, "default");
    assert!(!HTTPPing::BLOCKING);
    assert_eq!(Add::NAME, "add");
    assert_eq!(Command::NAME, "command");
    assert!(Crunch::BLOCKING);
    assert_eq!(Crunch::QUEUE, "cpu");
    assert_eq!(HTTPPing::options(), dramaturg::Options::default());
}
