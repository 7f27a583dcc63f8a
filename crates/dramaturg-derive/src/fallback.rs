//! The impl emitted next to a compile error, so that code using the actor
//! does not add errors of its own to the one that matters.

use proc_macro2::TokenStream;
use quote::quote;
use syn::DeriveInput;

pub(crate) fn actor_impl(input: &DeriveInput) -> TokenStream {
    let ident = &input.ident;
    quote! {
        #[automatically_derived]
        impl ::dramaturg::__private::Actor for #ident {
            const NAME: &'static str = "";
            const QUEUE: &'static str = "";
            type Output = ();

            fn into_job(self, _: ::dramaturg::__private::Context) -> ::dramaturg::__private::Job {
                ::core::unreachable!("this actor did not compile")
            }
        }
    }
}
