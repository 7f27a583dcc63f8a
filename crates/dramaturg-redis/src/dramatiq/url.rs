//! This crate's parameters of a broker URL: `?protocol=` and
//! `?namespace=`.
//!
//! The Redis client reads a `protocol` parameter of its own (`resp2`,
//! `resp3`), so only this crate's values are taken out; the client's pass
//! through untouched.

use dramaturg_core::Protocol;

/// What this crate's URL parameters chose.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Params {
    /// `Some(Ok(_))` for `protocol=native|dramatiq`, `Some(Err(value))` for
    /// a value that is neither ours nor the Redis client's, `None` when
    /// absent.
    pub(crate) protocol: Option<Result<Protocol, String>>,
    /// `namespace=…`, when given.
    pub(crate) namespace: Option<String>,
}

/// `url` without this crate's parameters, and what they chose. The
/// fragment (`#insecure`, read by the client for `rediss://`) is kept, not
/// read as part of a value; a parameter of ours given twice is left in the
/// URL, unread, so that connecting refuses it.
pub(crate) fn take_params(url: &str) -> (String, Params) {
    let (url, fragment) = url.split_once('#').map_or((url, None), |(url, fragment)| (url, Some(fragment)));
    let fragment = fragment.map(|fragment| format!("#{fragment}")).unwrap_or_default();
    let Some((base, query)) = url.split_once('?') else { return (format!("{url}{fragment}"), Params::default()) };
    let mut params = Params::default();
    let mut kept = Vec::new();
    // The client's own `protocol=resp2|resp3` shares the name: not ours.
    let ours =
        |name: &str, value: &str| name == "namespace" || (name == "protocol" && !matches!(value, "resp2" | "resp3"));
    let given = |name: &str| {
        query.split('&').filter_map(|pair| pair.split_once('=')).filter(|(n, v)| *n == name && ours(n, v)).count()
    };
    let once = |name: &str| given(name) == 1;
    for pair in query.split('&') {
        match pair.split_once('=') {
            Some(("protocol", value)) if !matches!(value, "resp2" | "resp3") && once("protocol") => {
                params.protocol = Some(value.parse::<Protocol>().map_err(|_| value.to_owned()));
            }
            Some(("namespace", value)) if once("namespace") => params.namespace = Some(value.to_owned()),
            _ => kept.push(pair),
        }
    }
    let url = if kept.is_empty() { base.to_owned() } else { format!("{base}?{}", kept.join("&")) };
    (format!("{url}{fragment}"), params)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_parameters_are_taken_out_and_the_clients_kept() {
        let protocol = |url: &str| {
            let (url, params) = take_params(url);
            (url, params.protocol)
        };
        assert_eq!(protocol("redis://h:6379/0"), ("redis://h:6379/0".into(), None));
        assert_eq!(protocol("redis://h/0?protocol=dramatiq"), ("redis://h/0".into(), Some(Ok(Protocol::Dramatiq))));
        assert_eq!(
            protocol("redis://h/0?protocol=native&protocol=resp3"),
            ("redis://h/0?protocol=resp3".into(), Some(Ok(Protocol::Native)))
        );
        assert_eq!(protocol("redis://h/0?protocol=celery"), ("redis://h/0".into(), Some(Err("celery".into()))));
        let (url, params) = take_params("redis://h/0?protocol=dramatiq&namespace=billing");
        assert_eq!(url, "redis://h/0");
        assert_eq!(params.namespace.as_deref(), Some("billing"));
        let (url, params) = take_params("rediss://h/0?namespace=billing#insecure");
        assert_eq!((url.as_str(), params.namespace.as_deref()), ("rediss://h/0#insecure", Some("billing")));
        let (url, params) = take_params("redis://h/0?namespace=a&namespace=b");
        assert_eq!((url.as_str(), params.namespace), ("redis://h/0?namespace=a&namespace=b", None));
    }
}
