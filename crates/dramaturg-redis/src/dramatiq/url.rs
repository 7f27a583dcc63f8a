//! The `?protocol=` parameter of a broker URL.
//!
//! The Redis client reads a `protocol` parameter of its own (`resp2`,
//! `resp3`), so only this crate's values are taken out; the client's pass
//! through untouched.

use dramaturg_core::Protocol;

/// `url` without its `protocol=native|dramatiq` parameter, and what that
/// parameter chose: `Some(Ok(_))` for one of ours, `Some(Err(value))` for a
/// value that is neither ours nor the Redis client's, `None` when absent.
pub(crate) fn take_protocol(url: &str) -> (String, Option<Result<Protocol, String>>) {
    let Some((base, query)) = url.split_once('?') else { return (url.to_owned(), None) };
    let mut chosen = None;
    let mut kept = Vec::new();
    for pair in query.split('&') {
        match pair.split_once('=') {
            Some(("protocol", value)) if !matches!(value, "resp2" | "resp3") => {
                chosen = Some(value.parse::<Protocol>().map_err(|_| value.to_owned()));
            }
            _ => kept.push(pair),
        }
    }
    let url = if kept.is_empty() { base.to_owned() } else { format!("{base}?{}", kept.join("&")) };
    (url, chosen)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_protocol_is_taken_out_and_the_clients_kept() {
        assert_eq!(take_protocol("redis://h:6379/0"), ("redis://h:6379/0".into(), None));
        assert_eq!(
            take_protocol("redis://h/0?protocol=dramatiq"),
            ("redis://h/0".into(), Some(Ok(Protocol::Dramatiq)))
        );
        assert_eq!(
            take_protocol("redis://h/0?protocol=native&protocol=resp3"),
            ("redis://h/0?protocol=resp3".into(), Some(Ok(Protocol::Native)))
        );
        assert_eq!(take_protocol("redis://h/0?protocol=celery"), ("redis://h/0".into(), Some(Err("celery".into()))));
    }
}
