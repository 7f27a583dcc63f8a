//! `#[derive(Actor)]` for dramaturg. Use it through the `dramaturg` crate,
//! whose documentation describes the attributes.
//!
//! The macro works in three steps, each a module: `attr` parses the
//! `#[actor(...)]` attributes, `valid` checks them, `expand` writes the
//! impl. On an error it reports the error at the attribute and still emits a
//! `fallback` impl, so that the rest of the user's code does not pile up
//! errors of its own.

mod attr;
mod duration;
mod expand;
mod fallback;
mod valid;

use proc_macro::TokenStream;
use syn::{parse_macro_input, DeriveInput};

/// Derives `dramaturg::Actor`. See the `dramaturg` crate for the attributes.
#[proc_macro_derive(Actor, attributes(actor))]
pub fn derive_actor(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    match attr::parse(&input).and_then(|attrs| valid::check(&input, attrs)) {
        Ok(actor) => expand::actor_impl(&input, &actor).into(),
        Err(error) => {
            let mut tokens = error.into_compile_error();
            // A generic type cannot meet the trait's bounds; it gets the
            // error alone.
            if input.generics.params.is_empty() {
                tokens.extend(fallback::actor_impl(&input));
            }
            tokens.into()
        }
    }
}
