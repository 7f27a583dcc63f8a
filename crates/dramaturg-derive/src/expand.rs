//! Writes the `Actor` impl for a checked [`Actor`].

use proc_macro2::TokenStream;
use quote::{quote, quote_spanned};
use syn::DeriveInput;

use syn::spanned::Spanned;

use crate::attr::Callback;
use crate::valid::{Actor, Limit};

pub(crate) fn actor_impl(input: &DeriveInput, actor: &Actor) -> TokenStream {
    let ident = &input.ident;
    let Actor { name, queue, handler, blocking, isolated, .. } = actor;
    let private = quote!(::dramaturg::__private);
    let duration = |ms: Option<u64>, setter: &str| {
        ms.map(|ms| {
            let setter = syn::Ident::new(setter, proc_macro2::Span::call_site());
            quote!(let options = options.#setter(::core::time::Duration::from_millis(#ms));)
        })
    };
    let setters = [
        actor.max_retries.map(|n| quote!(let options = options.with_max_retries(#n);)),
        actor.priority.map(|p| quote!(let options = options.with_priority(#p);)),
        duration(actor.min_backoff_ms, "with_min_backoff"),
        duration(actor.max_backoff_ms, "with_max_backoff"),
        duration(actor.time_limit_ms, "with_time_limit"),
        duration(actor.idle_timeout_ms, "with_idle_timeout"),
        duration(actor.max_age_ms, "with_max_age"),
    ];
    let abortable = actor
        .abortable
        .map(|abortable| quote!(let options = options.with_option(#private::abort::ABORTABLE, #abortable);));
    let store_results = actor
        .store_results
        .map(|store| quote!(let options = options.with_option(#private::results::STORE_RESULTS, #store);));
    let result_ttl =
        actor.result_ttl_ms.map(|ms| quote!(let options = options.with_option(#private::results::RESULT_TTL, #ms);));
    let callbacks = actor.callbacks.iter().map(|(key, callback)| {
        let key = syn::Ident::new(key, proc_macro2::Span::call_site());
        let name = match callback {
            Callback::Type(path) => quote_spanned!(path.span()=> <#path as #private::Actor>::NAME),
            Callback::Name(name) => quote!(#name),
        };
        quote!(let options = options.with_option(#private::callbacks::#key, #name.to_owned());)
    });
    let passed = actor.options.iter().map(|(key, value)| {
        let key = key.to_string();
        quote!(let options = options.with_extra(#key, #value);)
    });
    // Passed by name, so that an app without the rate-limits middleware
    // refuses them when it is built, with or without the feature.
    let limits = actor.limits.iter().map(|(key, value)| match value {
        Limit::Text(text) => quote!(let options = options.with_extra(#key, #text);),
        Limit::Count(count) => quote!(let options = options.with_extra(#key, #count);),
    });
    let output = actor.output.as_ref().map_or_else(|| quote!(()), |ty| quote!(#ty));
    let setters = setters.iter().flatten();
    // Errors about the handler (missing, wrong signature) point at the type.
    let job = if actor.batch.is_some() {
        quote!(#private::batch::submit::<Self>(self, ctx))
    } else if *blocking {
        quote_spanned! {ident.span()=>
            #private::run_blocking(ctx, move |ctx| #private::into_job_result::<Self, _>(#ident::#handler(self, ctx)))
        }
    } else {
        quote_spanned! {ident.span()=>
            ::std::boxed::Box::pin(async move {
                #private::into_job_result::<Self, _>(#private::async_handler(#ident::#handler(self, &ctx)).await)
            })
        }
    };
    // The child process of an isolated actor finds it by name here.
    let register = isolated.then(|| {
        quote! {
            #private::inventory::submit! { #private::IsolatedActor::of::<#ident>() }
        }
    });
    let (batch_const, batch_impl) = match actor.batch {
        Some((max, wait_ms)) => {
            let max = usize::try_from(max).unwrap_or(usize::MAX);
            (
                Some(quote! {
                    const BATCH: ::core::option::Option<#private::batch::BatchLimits> = ::core::option::Option::Some(
                        #private::batch::BatchLimits::new(#max, ::core::time::Duration::from_millis(#wait_ms)),
                    );
                }),
                Some(quote_spanned! {ident.span()=>
                    #[automatically_derived]
                    impl #private::batch::BatchActor for #ident {
                        fn perform_batch(batch: #private::batch::Batch<Self>) -> #private::batch::BatchJob {
                            ::std::boxed::Box::pin(async move {
                                #private::batch::into_batch_result(#private::async_handler(#ident::#handler(batch)).await)
                            })
                        }
                    }
                }),
            )
        }
        None => (None, None),
    };
    quote! {
        #register
        #batch_impl

        #[automatically_derived]
        impl #private::Actor for #ident {
            const NAME: &'static str = #name;
            const QUEUE: &'static str = #queue;
            const BLOCKING: bool = #blocking;
            const ISOLATED: bool = #isolated;
            type Output = #output;
            #batch_const

            fn options() -> #private::Options {
                let options = #private::Options::default();
                #(#setters)*
                #(#callbacks)*
                #abortable
                #store_results
                #result_ttl
                #(#limits)*
                #(#passed)*
                options
            }

            fn into_job(self, ctx: #private::Context) -> #private::Job {
                #job
            }
        }
    }
}
