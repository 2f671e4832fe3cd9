//! Generating the function item that names a durable function, and the hidden type
//! behind it that carries its body and options.

use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{ItemFn, ReturnType};

use crate::ast::{self, DurableFn};
use crate::attr::{self, Options};

pub(crate) fn function(args: TokenStream, item: TokenStream) -> TokenStream {
    let mut errors = Vec::new();
    let options = attr::parse(args, &mut errors);
    let item_fn: ItemFn = match syn::parse2(item.clone()) {
        Ok(item_fn) => item_fn,
        Err(_) => {
            let e = syn::Error::new(Span::call_site(), "#[durable::function] applies to an `async fn`");
            return with_errors(item, vec![e]);
        }
    };
    match ast::validate(&item_fn, &mut errors) {
        Some(f) if errors.is_empty() => generate(&f, &options),
        _ => with_errors(item, errors),
    }
}

/// The original item, so that IDEs keep working, plus every error.
fn with_errors(item: TokenStream, errors: Vec<syn::Error>) -> TokenStream {
    let errors = errors.into_iter().map(|e| e.to_compile_error());
    quote! { #item #(#errors)* }
}

fn generate(f: &DurableFn<'_>, options: &Options) -> TokenStream {
    let item = f.item;
    let vis = &item.vis;
    let ident = &item.sig.ident;
    let attrs = &item.attrs;
    let p = quote!(::durable::__private);
    let name = options.name.as_ref().map_or_else(|| ident.to_string(), syn::LitStr::value);
    let version = options.version.as_ref().map_or_else(|| quote!(1), |v| quote!(#v));
    let ret = match &item.sig.output {
        ReturnType::Type(_, ty) => ty,
        ReturnType::Default => unreachable!("validated"),
    };
    let types: Vec<_> = f.params.iter().map(|pt| &pt.ty).collect();
    let args_ty = match types.as_slice() {
        [] => quote!(()),
        [one] => quote!(#one),
        many => quote!((#(#many),*)),
    };
    let vars: Vec<_> = (0..types.len()).map(|i| format_ident!("__arg{i}")).collect();
    let bind = match vars.as_slice() {
        [] => quote!(let () = args;),
        [one] => quote!(let #one = args;),
        many => quote!(let (#(#many),*) = args;),
    };
    let asserts = types.iter().map(|ty| quote_spanned!(ty.span()=> #p::assert_payload::<#ty>();));
    let ret_assert = quote_spanned!(ret.span()=> #p::assert_payload::<<#ret as #p::Returns>::Ok>(););
    let retry = options.retry.as_ref().map(|r| {
        quote! {
            fn retry() -> ::core::option::Option<#p::Retry> { ::core::option::Option::Some(#r) }
        }
    });
    let timeout = options.timeout.as_ref().map(|t| {
        quote! {
            fn timeout() -> ::core::option::Option<#p::Duration> { ::core::option::Option::Some(#t) }
        }
    });
    // What a deploy changed: a digest of the function as written.
    let code = fnv(quote!(#item).to_string().as_bytes());
    let mut body_fn = item.clone();
    body_fn.attrs.clear();
    body_fn.vis = syn::Visibility::Inherited;
    body_fn.sig.ident = format_ident!("__durable_body");
    // The durable function is a function item: a `let` binding or a pattern may reuse
    // its name, which a unit struct or a const would forbid. The type it returns
    // carries the body and the options.
    let descriptor = format_ident!("__durable_fn_{}", ident);
    quote! {
        #[doc(hidden)]
        #[allow(non_camel_case_types, dead_code)]
        #[derive(Clone, Copy, Debug, Default)]
        #vis struct #descriptor;

        #(#attrs)*
        #vis fn #ident() -> #descriptor {
            #descriptor
        }

        const _: () = {
            #(#asserts)*
            #ret_assert
        };

        impl #p::Descriptor for #descriptor {
            type Args = #args_ty;
            type Output = <#ret as #p::Returns>::Ok;
            const NAME: &'static str = #name;
            const VERSION: u32 = #version;
            const CODE: u64 = #code;

            #timeout
            #retry

            fn call<'a>(
                ctx: &'a mut #p::Context,
                args: Self::Args,
            ) -> #p::BoxFuture<'a, #p::Result<Self::Output>> {
                #[allow(clippy::too_many_arguments)]
                #body_fn
                #bind
                #p::Box::pin(__durable_body(ctx, #(#vars),*))
            }
        }
    }
}

/// FNV-1a, 64 bits: the same digest for the same tokens on every build.
fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3))
}
