//! The `#[durable::function]` attribute. Use it through the `durable` crate, which
//! re-exports it; the generated code names only `::durable::__private`.

mod ast;
mod attr;
mod expand;

use proc_macro::TokenStream;

/// Turns an `async fn(&mut Context, …) -> durable::Result<T>` into a durable function.
/// See the `durable` crate for the options and an example.
#[proc_macro_attribute]
pub fn function(args: TokenStream, item: TokenStream) -> TokenStream {
    expand::function(args.into(), item.into()).into()
}
