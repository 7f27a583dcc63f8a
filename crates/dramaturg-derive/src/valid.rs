//! Checks the parsed attributes and resolves defaults into an [`Actor`].

use proc_macro2::Span;
use syn::{Data, DeriveInput, Ident};

use crate::attr::{Attrs, BatchAttr, Callback, Spanned};
use crate::duration::parse_millis;

/// Everything the expansion needs, checked.
pub(crate) struct Actor {
    pub(crate) name: String,
    pub(crate) queue: String,
    pub(crate) handler: Ident,
    pub(crate) blocking: bool,
    /// Runs in a child process the worker can kill.
    pub(crate) isolated: bool,
    /// `Some` when the actor says whether its messages can be aborted.
    pub(crate) abortable: Option<bool>,
    /// `Some` when the actor says whether its results are kept.
    pub(crate) store_results: Option<bool>,
    pub(crate) result_ttl_ms: Option<u64>,
    pub(crate) max_retries: Option<u32>,
    pub(crate) priority: Option<u8>,
    pub(crate) min_backoff_ms: Option<u64>,
    pub(crate) max_backoff_ms: Option<u64>,
    pub(crate) time_limit_ms: Option<u64>,
    pub(crate) idle_timeout_ms: Option<u64>,
    pub(crate) max_age_ms: Option<u64>,
    /// Callback options: (the callbacks crate's key constant, the actor).
    pub(crate) callbacks: Vec<(&'static str, Callback)>,
    /// The handler's success type (`()` unless given).
    pub(crate) output: Option<syn::Type>,
    /// Options of other middleware, passed through.
    pub(crate) options: Vec<(Ident, syn::Expr)>,
    /// The rate-limits middleware's options, as (option name, value).
    pub(crate) limits: Vec<(&'static str, Limit)>,
    /// A batch actor's `max` and `wait` (in milliseconds).
    pub(crate) batch: Option<(u64, u64)>,
}

/// How long a batch waits for more messages when `wait` is not given.
const DEFAULT_BATCH_WAIT_MS: u64 = 100;

/// A value of one of the rate-limits middleware's options.
pub(crate) enum Limit {
    Text(String),
    Count(u64),
}

pub(crate) fn check(input: &DeriveInput, attrs: Attrs) -> syn::Result<Actor> {
    if let Data::Union(_) = input.data {
        return Err(syn::Error::new_spanned(&input.ident, "an actor's arguments must be a struct or an enum"));
    }
    if !input.generics.params.is_empty() {
        return Err(syn::Error::new_spanned(
            &input.generics,
            "an actor cannot be generic: its name and argument type must be fixed",
        ));
    }
    let batch = batch(&attrs)?;
    let name = non_empty(attrs.name, "name")?.unwrap_or_else(|| snake_case(&input.ident.to_string()));
    let queue = non_empty(attrs.queue, "queue")?.unwrap_or_else(|| "default".to_owned());
    let handler = match attrs.handler {
        Some(handler) => syn::parse_str::<Ident>(&handler.value)
            .map_err(|_| syn::Error::new(handler.span, "`handler` must name a method, like handler = \"perform\""))?,
        None => Ident::new("perform", Span::call_site()),
    };
    let min_backoff_ms = millis(attrs.min_backoff)?;
    let max_backoff_ms = millis(attrs.max_backoff)?;
    if let (Some(min), Some(max)) = (&min_backoff_ms, &max_backoff_ms) {
        if min.value > max.value {
            return Err(syn::Error::new(max.span, "`max_backoff` must not be shorter than `min_backoff`"));
        }
    }
    let time_limit_ms = positive(millis(attrs.time_limit)?, "time_limit")?;
    let idle_timeout_ms = positive(millis(attrs.idle_timeout)?, "idle_timeout")?;
    let mut callbacks = Vec::new();
    for (key, value) in [
        ("ON_SUCCESS", attrs.on_success),
        ("ON_FAILURE", attrs.on_failure),
        ("ON_RETRY_EXHAUSTED", attrs.on_retry_exhausted),
    ] {
        match value {
            Some(Spanned { value: Callback::Name(name), span }) if name.trim().is_empty() => {
                return Err(syn::Error::new(span, "a callback actor's name must not be empty"));
            }
            Some(callback) => callbacks.push((key, callback.value)),
            None => {}
        }
    }
    let limits = limits(input, attrs.rate_limit, attrs.concurrency, attrs.limit_key)?;
    Ok(Actor {
        batch,
        limits,
        name,
        queue,
        handler,
        blocking: attrs.blocking.is_some_and(|b| b.value),
        isolated: attrs.isolated.is_some_and(|b| b.value),
        abortable: attrs.abortable.map(|a| a.value),
        store_results: attrs.store_results.map(|a| a.value),
        result_ttl_ms: millis(attrs.result_ttl)?.map(|d| d.value),
        max_retries: attrs.max_retries.map(|r| r.value),
        priority: attrs.priority.map(|p| p.value),
        min_backoff_ms: min_backoff_ms.map(|d| d.value),
        max_backoff_ms: max_backoff_ms.map(|d| d.value),
        time_limit_ms,
        idle_timeout_ms,
        callbacks,
        output: attrs.output.map(|o| o.value),
        options: attrs.options,
        max_age_ms: millis(attrs.max_age)?.map(|d| d.value),
    })
}

/// Checks `batch(...)`: a `max` of at least 1, a `wait` longer than zero,
/// and nothing that a batch actor cannot be.
fn batch(attrs: &Attrs) -> syn::Result<Option<(u64, u64)>> {
    let Some(Spanned { value: BatchAttr { max, wait }, span }) = &attrs.batch else { return Ok(None) };
    let Some(max) = max else {
        return Err(syn::Error::new(*span, "`batch` needs a `max`, like batch(max = 100, wait = \"200ms\")"));
    };
    if max.value == 0 {
        return Err(syn::Error::new(max.span, "`batch(max)` must be at least 1"));
    }
    let wait =
        positive(millis(wait.as_ref().map(|w| Spanned { value: w.value.clone(), span: w.span }))?, "batch(wait)")?;
    let conflicts = [
        (attrs.blocking.as_ref().filter(|b| b.value).map(|b| b.span), "blocking"),
        (attrs.isolated.as_ref().filter(|b| b.value).map(|b| b.span), "isolated"),
        (attrs.output.as_ref().map(|o| o.span), "output"),
    ];
    if let Some((span, key)) = conflicts.into_iter().find_map(|(span, key)| span.map(|s| (s, key))) {
        return Err(syn::Error::new(
            span,
            format_args!(
                "a batch actor cannot take `{key}`: its handler is async and takes the whole batch, and its output is `()`"
            ),
        ));
    }
    Ok(Some((max.value, wait.unwrap_or(DEFAULT_BATCH_WAIT_MS))))
}

fn non_empty(value: Option<Spanned<String>>, key: &str) -> syn::Result<Option<String>> {
    match value {
        Some(v) if v.value.trim().is_empty() => Err(syn::Error::new(v.span, format_args!("`{key}` must not be empty"))),
        Some(v) => Ok(Some(v.value)),
        None => Ok(None),
    }
}

fn positive(value: Option<Spanned<u64>>, key: &str) -> syn::Result<Option<u64>> {
    match value {
        Some(v) if v.value == 0 => Err(syn::Error::new(v.span, format_args!("`{key}` must be longer than zero"))),
        other => Ok(other.map(|v| v.value)),
    }
}

fn millis(value: Option<Spanned<String>>) -> syn::Result<Option<Spanned<u64>>> {
    value
        .map(|v| {
            parse_millis(&v.value).map(|ms| Spanned { value: ms, span: v.span }).map_err(|e| syn::Error::new(v.span, e))
        })
        .transpose()
}

/// `SendWelcomeEmail` → `send_welcome_email`, `HTTPFetch` → `http_fetch`.
fn snake_case(name: &str) -> String {
    let chars: Vec<char> = name.chars().collect();
    let mut out = String::with_capacity(name.len() + 4);
    for (i, &c) in chars.iter().enumerate() {
        if c.is_uppercase() && i > 0 {
            let prev = chars[i - 1];
            let next_lower = chars.get(i + 1).is_some_and(|n| n.is_lowercase());
            if prev.is_lowercase() || prev.is_ascii_digit() || (prev.is_uppercase() && next_lower) {
                out.push('_');
            }
        }
        out.extend(c.to_lowercase());
    }
    out
}

/// Checks the limit attributes: a rate of the form `"<n>/<period>"` (the
/// period is checked when the app is built), a concurrency above zero, a
/// limit key that names a field of the struct.
fn limits(
    input: &DeriveInput,
    rate_limit: Option<Spanned<String>>,
    concurrency: Option<Spanned<u64>>,
    limit_key: Option<Spanned<String>>,
) -> syn::Result<Vec<(&'static str, Limit)>> {
    let mut limits = Vec::new();
    if let Some(rate) = rate_limit {
        let count = rate.value.split_once('/').and_then(|(n, _)| n.trim().parse::<u64>().ok());
        if count.is_none_or(|n| n == 0) {
            return Err(syn::Error::new(rate.span, "`rate_limit` is a count per period, like rate_limit = \"100/s\""));
        }
        limits.push(("rate_limit", Limit::Text(rate.value)));
    }
    if let Some(concurrency) = concurrency {
        if concurrency.value == 0 {
            return Err(syn::Error::new(concurrency.span, "`concurrency` must be at least 1"));
        }
        limits.push(("concurrency", Limit::Count(concurrency.value)));
    }
    if let Some(key) = limit_key {
        let named = match &input.data {
            Data::Struct(data) => data.fields.iter().any(|f| f.ident.as_ref().is_some_and(|i| *i == key.value)),
            _ => false,
        };
        if !named {
            return Err(syn::Error::new(
                key.span,
                format_args!("`limit_key` must name a field of this struct; it has no field `{}`", key.value),
            ));
        }
        limits.push(("limit_key", Limit::Text(key.value)));
    }
    Ok(limits)
}

#[cfg(test)]
mod tests {
    use super::snake_case;

    #[test]
    fn names_become_snake_case() {
        assert_eq!(snake_case("SendWelcomeEmail"), "send_welcome_email");
        assert_eq!(snake_case("HTTPFetch"), "http_fetch");
        assert_eq!(snake_case("Resize2x"), "resize2x");
        assert_eq!(snake_case("Export2Csv"), "export2_csv");
        assert_eq!(snake_case("noop"), "noop");
    }
}
