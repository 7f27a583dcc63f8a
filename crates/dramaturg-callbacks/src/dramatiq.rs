//! Python Dramatiq's shapes, for apps on the Dramatiq encoder: the
//! arguments its callbacks get, and the next step of its pipelines.

use std::time::Duration;

use dramaturg_core::dramatiq::Dramatiq;
use dramaturg_core::{Call, Context, Encoder as _, ErrorRecord, Message, OptionKey, Output};

use crate::{ON_FAILURE, ON_SUCCESS};

/// Options of Dramatiq's pipelines and groups: they belong to the message
/// that carries them, never to its callbacks.
pub(crate) const COMPOSITION: [&str; 4] =
    ["pipe_target", "pipe_ignore", "group_completion_uuid", "group_completion_callbacks"];

/// The arguments Python Dramatiq gives a callback, for apps on the Dramatiq
/// encoder: the original message as a dict, then the result (`on_success`),
/// `{"type", "message"}` of the error (`on_failure`), or `{"retries",
/// "max_retries"}` (`on_retry_exhausted`), positionally.
pub(crate) fn payload(
    ctx: &Context,
    key: OptionKey<String>,
    result: Option<&Output>,
    error: Option<&ErrorRecord>,
) -> Result<Vec<u8>, String> {
    let encoder = ctx.app().encoder();
    let original = ctx.message();
    let message: serde_json::Value =
        serde_json::from_slice(&encoder.encode_message(original).map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    let second = if key.name() == ON_SUCCESS.name() {
        serde_json::to_value(result).map_err(|e| e.to_string())?
    } else if key.name() == ON_FAILURE.name() {
        // Python gives the class's bare name: `io::Error` → `Error`.
        let bare = |name: &'_ str| name.split('<').next().and_then(|n| n.rsplit("::").next()).unwrap_or("").to_owned();
        let (type_name, text) = error.map_or((String::new(), ""), |e| (bare(&e.type_name), e.message.as_str()));
        serde_json::json!({ "type": type_name, "message": text })
    } else {
        let max_retries = ctx.options().max_retries.filter(|max| *max != u32::MAX);
        serde_json::json!({ "retries": original.retries, "max_retries": max_retries })
    };
    encoder.encode_call(&Call::positional([message, second])).map_err(|e| e.to_string())
}

/// The next step of the Python pipeline that `ctx`'s message belongs to
/// (its `pipe_target`), with the result appended to its positional
/// arguments unless it says `pipe_ignore`, and its `delay` (ms) — what
/// Dramatiq's `Pipelines` middleware sends. `None` when the message is no
/// pipeline step.
pub(crate) fn pipe_next(ctx: &Context, output: &Output) -> Result<Option<(Message, Option<Duration>)>, String> {
    let Some(target) = ctx.message().options.extra.get("pipe_target") else { return Ok(None) };
    let mut next = target.as_object().cloned().ok_or("pipe_target is not a message")?;
    let ignore = next.get("options").and_then(|o| o.get("pipe_ignore")).and_then(serde_json::Value::as_bool);
    let ignore = ignore.or_else(|| ctx.options().extra.get("pipe_ignore").and_then(serde_json::Value::as_bool));
    if !ignore.unwrap_or(false) {
        let result = serde_json::to_value(output).map_err(|e| e.to_string())?;
        match next.get_mut("args") {
            Some(serde_json::Value::Array(args)) => args.push(result),
            _ => return Err("pipe_target has no positional arguments".into()),
        }
    }
    let body = serde_json::to_vec(&next).map_err(|e| e.to_string())?;
    let message = Dramatiq.decode_message(&body).map_err(|e| format!("pipe_target: {e}"))?;
    let delay = message.options.extra.get("delay").and_then(serde_json::Value::as_u64).map(Duration::from_millis);
    Ok(Some((message, delay)))
}
