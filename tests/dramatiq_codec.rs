//! The Dramatiq encoder against Python Dramatiq's own `Message.encode` and
//! `Message.decode` (the venv `scripts/services` makes): what Python writes,
//! Rust reads typed; what Rust writes, Python reads.

#![allow(clippy::unwrap_used)] // Tests may panic on the unexpected.

mod support;

use std::time::Duration;

use dramaturg::dramatiq::Dramatiq;
use dramaturg::encoder::{decode_value, encode_value};
use dramaturg::{Encoder, Message, MessageId, Options};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use support::python;

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Step {
    seq: u64,
    label: String,
    #[serde(default)]
    payload: Option<Value>,
}

/// Messages as Python Dramatiq encodes them, one JSON document per line.
const PYTHON_ENCODES: &str = r#"
import dramatiq, json
from dramatiq import Message
rows = [
    Message(queue_name="q", actor_name="step", args=(1, "plain"), kwargs={}, options={}),
    Message(queue_name="q", actor_name="step", args=(), kwargs={"seq": 2, "label": "héllo ☃ 🎉"}, options={}),
    Message(queue_name="q", actor_name="step", args=(3,), kwargs={"label": "mixed", "payload": {"a": [1, 2.5, None, True], "b": {"c": "d"}}}, options={}),
    Message(queue_name="q.DQ", actor_name="step", args=(4, "delayed"), kwargs={}, options={"eta": 1717000060000, "redis_message_id": "r", "retries": 2, "max_retries": 5, "min_backoff": 1000, "max_backoff": 60000, "time_limit": 30000, "max_age": 3600000, "on_success": "done", "pipe_target": {"actor_name": "next"}}),
]
for m in rows:
    print(m.encode().decode())
"#;

#[test]
fn what_python_encodes_rust_decodes_typed() {
    let out = python::run(PYTHON_ENCODES, &[]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 4, "{out}");
    let messages: Vec<Message> = lines.iter().map(|l| Dramatiq.decode_message(l.as_bytes()).unwrap()).collect();
    let steps: Vec<Step> = messages.iter().map(|m| decode_value(&Dramatiq, &m.args).unwrap()).collect();
    assert_eq!(steps[0], Step { seq: 1, label: "plain".into(), payload: None });
    assert_eq!(steps[1], Step { seq: 2, label: "héllo ☃ 🎉".into(), payload: None });
    assert_eq!(
        steps[2],
        Step { seq: 3, label: "mixed".into(), payload: Some(json!({"a": [1, 2.5, null, true], "b": {"c": "d"}})) }
    );
    let delayed = &messages[3];
    assert_eq!(delayed.queue, "q");
    assert_eq!(delayed.retries, 2);
    assert_eq!(delayed.options.max_retries, Some(5));
    assert_eq!(delayed.options.min_backoff, Some(Duration::from_secs(1)));
    assert_eq!(delayed.options.max_backoff, Some(Duration::from_secs(60)));
    assert_eq!(delayed.options.time_limit, Some(Duration::from_secs(30)));
    assert_eq!(delayed.options.max_age, Some(Duration::from_secs(3600)));
    assert_eq!(delayed.options.option(dramaturg::ETA).unwrap(), Some(1_717_000_060_000));
    assert_eq!(delayed.options.extra["pipe_target"], json!({"actor_name": "next"}));
    // Python's id survives the trip.
    let id: Value = serde_json::from_str(lines[3]).unwrap();
    assert_eq!(delayed.id.to_uuid_string(), id["message_id"]);
}

/// Reads messages (one JSON document per argument) with Python Dramatiq and
/// prints what it sees.
const PYTHON_DECODES: &str = r#"
import sys, json
from dramatiq import Message
for raw in sys.argv[1:]:
    m = Message.decode(raw.encode())
    print(json.dumps({"queue_name": m.queue_name, "actor_name": m.actor_name, "args": list(m.args),
                      "kwargs": m.kwargs, "options": m.options, "message_id": m.message_id,
                      "message_timestamp": m.message_timestamp}, ensure_ascii=False))
"#;

#[test]
fn what_rust_encodes_python_decodes() {
    #[derive(Serialize)]
    struct Add(i64, i64);
    let step = encode_value(&Dramatiq, &Step { seq: 9, label: "ünïcode".into(), payload: Some(json!({"k": [1]})) });
    let mut keyword = Message::new("mail", "step", step.unwrap().into());
    keyword.options =
        Options::default().with_max_retries(3).with_time_limit(Duration::from_secs(5)).with_extra("tenant", "acme");
    keyword.retries = 1;
    let positional = Message::new("math", "add", encode_value(&Dramatiq, &Add(2, 3)).unwrap().into());
    let encoded: Vec<String> = [&keyword, &positional]
        .iter()
        .map(|m| String::from_utf8(Dramatiq.encode_message(m).unwrap()).unwrap())
        .collect();
    let out = python::run(PYTHON_DECODES, &encoded.iter().map(String::as_str).collect::<Vec<_>>());
    let seen: Vec<Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(seen[0]["actor_name"], "step");
    assert_eq!(seen[0]["kwargs"], json!({"seq": 9, "label": "ünïcode", "payload": {"k": [1]}}));
    assert_eq!(seen[0]["options"]["retries"], 1);
    assert_eq!(seen[0]["options"]["max_retries"], 3);
    assert_eq!(seen[0]["options"]["time_limit"], 5000);
    assert_eq!(seen[0]["options"]["tenant"], "acme");
    assert_eq!(seen[0]["message_id"], keyword.id.to_uuid_string());
    assert_eq!(seen[0]["message_timestamp"], keyword.enqueued_at_ms);
    assert_eq!(seen[1]["args"], json!([2, 3]));
    assert_eq!(seen[1]["kwargs"], json!({}));
    assert_eq!(seen[1]["message_id"].as_str().unwrap().parse::<MessageId>().unwrap(), positional.id);
}
