//! Checking the annotated function: async, a context first, no receiver, no generics.

use syn::{FnArg, ItemFn, Pat, PatType, ReturnType, Type};

/// The parts of a valid durable function.
pub(crate) struct DurableFn<'a> {
    pub(crate) item: &'a ItemFn,
    /// The parameters after the context.
    pub(crate) params: Vec<&'a PatType>,
}

/// Validates `item`, collecting every error into `errors`.
pub(crate) fn validate<'a>(item: &'a ItemFn, errors: &mut Vec<syn::Error>) -> Option<DurableFn<'a>> {
    let before = errors.len();
    let sig = &item.sig;
    if sig.asyncness.is_none() {
        errors.push(syn::Error::new_spanned(sig.fn_token, "a durable function must be `async fn`"));
    }
    if !sig.generics.params.is_empty() || sig.generics.where_clause.is_some() {
        errors.push(syn::Error::new_spanned(
            &sig.generics,
            "a durable function cannot be generic: it is registered and called by one name",
        ));
    }
    if let ReturnType::Default = sig.output {
        errors.push(syn::Error::new_spanned(sig, "a durable function returns `durable::Result<T>`"));
    }
    let mut inputs = sig.inputs.iter();
    match inputs.next() {
        Some(FnArg::Receiver(r)) => {
            errors.push(syn::Error::new_spanned(
                r,
                "a durable function cannot take `self`: make it a free `async fn(ctx: &mut Context, …)`",
            ));
        }
        Some(FnArg::Typed(pt)) if is_context(&pt.ty) => {}
        Some(FnArg::Typed(pt)) => errors.push(syn::Error::new_spanned(
            pt,
            "the first parameter of a durable function is its context: `ctx: &mut Context`",
        )),
        None => errors.push(
            syn::Error::new_spanned(
                &sig.inputs,
                "a durable function takes its context first: `async fn f(ctx: &mut Context, …)`",
            )
            .combine_into(sig),
        ),
    }
    let mut params = Vec::new();
    for input in inputs {
        match input {
            FnArg::Receiver(r) => errors.push(syn::Error::new_spanned(r, "a durable function cannot take `self`")),
            FnArg::Typed(pt) => {
                if let Pat::Ident(ident) = &*pt.pat
                    && ident.by_ref.is_some()
                {
                    errors.push(syn::Error::new_spanned(ident, "arguments are passed by value"));
                }
                params.push(pt);
            }
        }
    }
    (errors.len() == before).then_some(DurableFn { item, params })
}

/// `&mut Context`, however the path to `Context` is written.
fn is_context(ty: &Type) -> bool {
    match ty {
        Type::Reference(r) if r.mutability.is_some() => match &*r.elem {
            Type::Path(p) => p.path.segments.last().is_some_and(|s| s.ident == "Context"),
            _ => false,
        },
        _ => false,
    }
}

trait CombineInto {
    fn combine_into(self, sig: &syn::Signature) -> syn::Error;
}

impl CombineInto for syn::Error {
    /// An empty parameter list has no tokens to point at: point at the signature.
    fn combine_into(self, sig: &syn::Signature) -> syn::Error {
        if sig.inputs.is_empty() { syn::Error::new_spanned(&sig.ident, self.to_string()) } else { self }
    }
}
