//! Parsing the options of `#[durable::function(…)]`.

use syn::parse::Parser;
use syn::punctuated::Punctuated;
use syn::{Expr, ExprLit, Lit, LitInt, LitStr, Meta, Token};

const OPTIONS: &str =
    "the options are `name = \"…\"`, `version = 1`, `retry = <durable::Retry>` and `timeout = <std::time::Duration>`";

/// The options, each as written.
#[derive(Default)]
pub(crate) struct Options {
    pub(crate) name: Option<LitStr>,
    pub(crate) version: Option<LitInt>,
    pub(crate) retry: Option<Expr>,
    pub(crate) timeout: Option<Expr>,
}

/// Parses the options, collecting every error into `errors`.
pub(crate) fn parse(args: proc_macro2::TokenStream, errors: &mut Vec<syn::Error>) -> Options {
    let mut options = Options::default();
    let metas = match Punctuated::<Meta, Token![,]>::parse_terminated.parse2(args) {
        Ok(metas) => metas,
        Err(e) => {
            errors.push(syn::Error::new(e.span(), format!("{e}; {OPTIONS}")));
            return options;
        }
    };
    for meta in metas {
        let Meta::NameValue(nv) = meta else {
            errors.push(syn::Error::new_spanned(&meta, format!("expected `option = value`; {OPTIONS}")));
            continue;
        };
        let key = nv.path.get_ident().map(ToString::to_string).unwrap_or_default();
        let duplicate = || syn::Error::new_spanned(&nv.path, format!("the option `{key}` is given twice"));
        match key.as_str() {
            "name" => match &nv.value {
                Expr::Lit(ExprLit { lit: Lit::Str(s), .. }) if !s.value().is_empty() => {
                    if options.name.replace(s.clone()).is_some() {
                        errors.push(duplicate());
                    }
                }
                other => errors.push(syn::Error::new_spanned(
                    other,
                    "`name` takes a non-empty string literal, e.g. `name = \"add\"`",
                )),
            },
            "version" => match &nv.value {
                Expr::Lit(ExprLit { lit: Lit::Int(i), .. }) if i.base10_parse::<u32>().is_ok_and(|v| v > 0) => {
                    if options.version.replace(i.clone()).is_some() {
                        errors.push(duplicate());
                    }
                }
                other => errors.push(syn::Error::new_spanned(
                    other,
                    "`version` takes a positive integer literal, e.g. `version = 2`",
                )),
            },
            "retry" => {
                if options.retry.replace(nv.value.clone()).is_some() {
                    errors.push(duplicate());
                }
            }
            "timeout" => {
                if options.timeout.replace(nv.value.clone()).is_some() {
                    errors.push(duplicate());
                }
            }
            _ => errors.push(syn::Error::new_spanned(
                &nv.path,
                format!("unknown option `{}`; {OPTIONS}", quote::ToTokens::to_token_stream(&nv.path)),
            )),
        }
    }
    options
}
