//! Parsing of `#[actor(...)]` attributes into [`Attrs`], one value per key.

use proc_macro2::Span;
use syn::meta::ParseNestedMeta;
use syn::{DeriveInput, Expr, Lit, LitBool, LitInt, Path, Type};

/// The keys `#[actor(...)]` accepts, for error messages.
const KEYS: &str = "name, queue, output, max_retries, min_backoff, max_backoff, time_limit, idle_timeout, \
                    max_age, priority, blocking, isolated, abortable, store_results, result_ttl, handler, \
                    on_success, on_failure, on_retry_exhausted, rate_limit, concurrency, limit_key, batch(...), option(...)";

/// An attribute value together with where it was written.
pub(crate) struct Spanned<T> {
    pub(crate) value: T,
    pub(crate) span: Span,
}

/// The attributes as written; nothing checked beyond literal types.
#[derive(Default)]
pub(crate) struct Attrs {
    pub(crate) name: Option<Spanned<String>>,
    pub(crate) queue: Option<Spanned<String>>,
    pub(crate) handler: Option<Spanned<String>>,
    pub(crate) max_retries: Option<Spanned<u32>>,
    pub(crate) min_backoff: Option<Spanned<String>>,
    pub(crate) max_backoff: Option<Spanned<String>>,
    pub(crate) time_limit: Option<Spanned<String>>,
    pub(crate) idle_timeout: Option<Spanned<String>>,
    pub(crate) max_age: Option<Spanned<String>>,
    pub(crate) priority: Option<Spanned<u8>>,
    pub(crate) blocking: Option<Spanned<bool>>,
    pub(crate) isolated: Option<Spanned<bool>>,
    pub(crate) abortable: Option<Spanned<bool>>,
    pub(crate) store_results: Option<Spanned<bool>>,
    pub(crate) result_ttl: Option<Spanned<String>>,
    /// `rate_limit = "100/s"`: the rate-limits middleware's window.
    pub(crate) rate_limit: Option<Spanned<String>>,
    pub(crate) concurrency: Option<Spanned<u64>>,
    /// `limit_key = "tenant"`: the field whose value keys the limits.
    pub(crate) limit_key: Option<Spanned<String>>,
    pub(crate) on_success: Option<Spanned<Callback>>,
    pub(crate) on_failure: Option<Spanned<Callback>>,
    pub(crate) on_retry_exhausted: Option<Spanned<Callback>>,
    /// `output = Type`: the handler's success type.
    pub(crate) output: Option<Spanned<Type>>,
    /// `option(key = value, ...)`: options of other middleware, in order.
    pub(crate) options: Vec<(syn::Ident, Expr)>,
    /// `batch(max = 100, wait = "200ms")`: a batch actor.
    pub(crate) batch: Option<Spanned<BatchAttr>>,
}

/// `batch(max = …, wait = "…")` as written.
#[derive(Default)]
pub(crate) struct BatchAttr {
    pub(crate) max: Option<Spanned<u64>>,
    pub(crate) wait: Option<Spanned<String>>,
}

/// The actor a callback option names.
pub(crate) enum Callback {
    /// An actor type, `on_failure = ReportFailure`: checked by the compiler.
    Type(Path),
    /// An actor name, `on_failure = "report_failure"`: for an actor that is
    /// not a type in this program; checked when the app is built.
    Name(String),
}

pub(crate) fn parse(input: &DeriveInput) -> syn::Result<Attrs> {
    let mut attrs = Attrs::default();
    for attr in input.attrs.iter().filter(|a| a.path().is_ident("actor")) {
        attr.parse_nested_meta(|meta| {
            let Some(key) = meta.path.get_ident().map(ToString::to_string) else {
                return Err(meta.error(format_args!("unknown actor attribute; expected one of: {KEYS}")));
            };
            match key.as_str() {
                "name" => set(&meta, &mut attrs.name, string(&meta, &key)?),
                "queue" => set(&meta, &mut attrs.queue, string(&meta, &key)?),
                "handler" => set(&meta, &mut attrs.handler, string(&meta, &key)?),
                "min_backoff" => set(&meta, &mut attrs.min_backoff, duration(&meta, &key)?),
                "max_backoff" => set(&meta, &mut attrs.max_backoff, duration(&meta, &key)?),
                "time_limit" => set(&meta, &mut attrs.time_limit, duration(&meta, &key)?),
                "idle_timeout" => set(&meta, &mut attrs.idle_timeout, duration(&meta, &key)?),
                "on_success" => set(&meta, &mut attrs.on_success, callback(&meta, &key)?),
                "on_failure" => set(&meta, &mut attrs.on_failure, callback(&meta, &key)?),
                "on_retry_exhausted" => set(&meta, &mut attrs.on_retry_exhausted, callback(&meta, &key)?),
                "output" => set(&meta, &mut attrs.output, output(&meta)?),
                "option" => options(&meta, &mut attrs.options),
                "batch" => set(&meta, &mut attrs.batch, batch(&meta)?),
                "max_age" => set(&meta, &mut attrs.max_age, duration(&meta, &key)?),
                "max_retries" => set(&meta, &mut attrs.max_retries, integer(&meta, &key, "0 to 4294967295")?),
                "priority" => set(&meta, &mut attrs.priority, integer(&meta, &key, "0 to 255")?),
                "blocking" => set(&meta, &mut attrs.blocking, flag(&meta, &key)?),
                "isolated" => set(&meta, &mut attrs.isolated, flag(&meta, &key)?),
                "abortable" => set(&meta, &mut attrs.abortable, flag(&meta, &key)?),
                "store_results" => set(&meta, &mut attrs.store_results, flag(&meta, &key)?),
                "result_ttl" => set(&meta, &mut attrs.result_ttl, duration(&meta, &key)?),
                "rate_limit" => set(&meta, &mut attrs.rate_limit, string(&meta, &key)?),
                "concurrency" => set(&meta, &mut attrs.concurrency, integer(&meta, &key, "1 to 18446744073709551615")?),
                "limit_key" => set(&meta, &mut attrs.limit_key, string(&meta, &key)?),
                other => Err(meta.error(format_args!(
                    "unknown actor attribute `{other}`; expected one of: {KEYS} \
                     (an option of another middleware goes in option({other} = ...))"
                ))),
            }
        })?;
    }
    Ok(attrs)
}

fn set<T>(meta: &ParseNestedMeta<'_>, slot: &mut Option<Spanned<T>>, value: Spanned<T>) -> syn::Result<()> {
    if slot.is_some() {
        return Err(meta.error("this actor attribute is given twice"));
    }
    *slot = Some(value);
    Ok(())
}

fn lit(meta: &ParseNestedMeta<'_>, key: &str, example: &str) -> syn::Result<Lit> {
    let value = meta.value().map_err(|_| meta.error(format_args!("`{key}` needs a value, like {example}")))?;
    value.parse::<Lit>()
}

fn string(meta: &ParseNestedMeta<'_>, key: &str) -> syn::Result<Spanned<String>> {
    match lit(meta, key, &format!("{key} = \"...\""))? {
        Lit::Str(s) => Ok(Spanned { value: s.value(), span: s.span() }),
        other => Err(syn::Error::new(other.span(), format_args!("`{key}` expects a string, like {key} = \"...\""))),
    }
}

fn callback(meta: &ParseNestedMeta<'_>, key: &str) -> syn::Result<Spanned<Callback>> {
    let value =
        meta.value().map_err(|_| meta.error(format_args!("`{key}` needs a value, like {key} = ReportFailure")))?;
    if value.peek(Lit) {
        return match value.parse::<Lit>()? {
            Lit::Str(s) => Ok(Spanned { value: Callback::Name(s.value()), span: s.span() }),
            other => Err(syn::Error::new(
                other.span(),
                format_args!("`{key}` names an actor: its type, like {key} = ReportFailure, or its name in a string"),
            )),
        };
    }
    let path: Path = value.parse()?;
    let span = syn::spanned::Spanned::span(&path);
    Ok(Spanned { value: Callback::Type(path), span })
}

fn output(meta: &ParseNestedMeta<'_>) -> syn::Result<Spanned<Type>> {
    let value = meta.value().map_err(|_| meta.error("`output` needs a type, like output = u64"))?;
    let ty: Type = value.parse()?;
    let span = syn::spanned::Spanned::span(&ty);
    Ok(Spanned { value: ty, span })
}

/// `option(key = value, ...)`: any option, for the middleware that reads it
/// (the app refuses keys no middleware declared when it is built).
fn options(meta: &ParseNestedMeta<'_>, options: &mut Vec<(syn::Ident, Expr)>) -> syn::Result<()> {
    if !meta.input.peek(syn::token::Paren) {
        return Err(meta.error("`option` takes a list, like option(tenant = \"acme\", limit = 10)"));
    }
    meta.parse_nested_meta(|inner| {
        let Some(key) = inner.path.get_ident().cloned() else {
            return Err(inner.error("an option's key is a plain name, like option(limit = 10)"));
        };
        if options.iter().any(|(known, _)| *known == key) {
            return Err(inner.error(format_args!("option `{key}` is given twice")));
        }
        let value = inner.value().map_err(|_| inner.error(format_args!("option `{key}` needs a value")))?;
        options.push((key, value.parse()?));
        Ok(())
    })
}

/// `batch(max = 100, wait = "200ms")`.
fn batch(meta: &ParseNestedMeta<'_>) -> syn::Result<Spanned<BatchAttr>> {
    const EXAMPLE: &str = "batch(max = 100, wait = \"200ms\")";
    let span = meta.path.get_ident().map_or_else(Span::call_site, syn::Ident::span);
    if !meta.input.peek(syn::token::Paren) {
        return Err(meta.error(format_args!("`batch` takes a list, like {EXAMPLE}")));
    }
    let mut batch = BatchAttr::default();
    meta.parse_nested_meta(|inner| {
        let key = inner.path.get_ident().map(ToString::to_string).unwrap_or_default();
        match key.as_str() {
            "max" => set(&inner, &mut batch.max, integer(&inner, "max", "1 to 18446744073709551615")?),
            "wait" => set(&inner, &mut batch.wait, duration(&inner, "wait")?),
            _ => Err(inner.error(format_args!("unknown batch setting; expected max and wait, like {EXAMPLE}"))),
        }
    })?;
    Ok(Spanned { value: batch, span })
}

fn duration(meta: &ParseNestedMeta<'_>, key: &str) -> syn::Result<Spanned<String>> {
    match lit(meta, key, &format!("{key} = \"30s\""))? {
        Lit::Str(s) => Ok(Spanned { value: s.value(), span: s.span() }),
        other => Err(syn::Error::new(
            other.span(),
            format_args!("`{key}` expects a duration string, like {key} = \"30s\" (units: ms, s, m, h, d)"),
        )),
    }
}

fn integer<T>(meta: &ParseNestedMeta<'_>, key: &str, range: &str) -> syn::Result<Spanned<T>>
where
    T: std::str::FromStr,
    T::Err: std::fmt::Display,
{
    match lit(meta, key, &format!("{key} = 3"))? {
        Lit::Int(int) => parse_int(&int, key, range),
        other => Err(syn::Error::new(other.span(), format_args!("`{key}` expects an integer ({range})"))),
    }
}

fn parse_int<T>(int: &LitInt, key: &str, range: &str) -> syn::Result<Spanned<T>>
where
    T: std::str::FromStr,
    T::Err: std::fmt::Display,
{
    int.base10_parse::<T>()
        .map(|value| Spanned { value, span: int.span() })
        .map_err(|_| syn::Error::new(int.span(), format_args!("`{key}` must be an integer from {range}")))
}

fn flag(meta: &ParseNestedMeta<'_>, key: &str) -> syn::Result<Spanned<bool>> {
    let span = meta.path.get_ident().map_or_else(Span::call_site, syn::Ident::span);
    if !meta.input.peek(syn::Token![=]) {
        return Ok(Spanned { value: true, span });
    }
    match meta.value()?.parse::<Lit>()? {
        Lit::Bool(LitBool { value, span }) => Ok(Spanned { value, span }),
        other => Err(syn::Error::new(other.span(), format_args!("`{key}` expects `true` or `false`, or no value"))),
    }
}
