//! Durable functions: what `#[durable::function]` implements, and calls by name.

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;
use std::time::Duration;

use futures::future::BoxFuture;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::{Context, Error, Result, Retry};

/// Something that can be called durably: a name and the types of its arguments and
/// result. Every [`Function`] is one; so is [`Remote`], a function that runs elsewhere.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a durable function",
    note = "annotate an `async fn` with `#[durable::function]`, or call a function of another process with `Remote::<Args, Output>::named(\"name\")`"
)]
pub trait Callable: Send + Sync + 'static {
    /// The arguments: `()` for none, the value for one, a tuple for several.
    type Args: Serialize + DeserializeOwned + Send + 'static;
    /// The result.
    type Output: Serialize + DeserializeOwned + Send + 'static;

    /// The name it is registered and called by.
    fn name(&self) -> &str;

    /// Its version, recorded with each call.
    fn version(&self) -> u32 {
        1
    }

    /// The timeout of its calls, unless a call sets its own (`#[durable::function(timeout
    /// = …)]`). Every kind of call reads it: `run`, `rpc`, `lfi`, `lfc`, `rfi`, `rfc` and
    /// `detached`.
    fn timeout(&self) -> Option<Duration> {
        None
    }
}

/// A durable function with a body this process can run.
///
/// `#[durable::function] async fn ship(…)` defines `ship`, a function item that is a
/// `Function`: pass it by name, `ctx.lfc(ship, order)`. Being a function item, not a
/// unit struct, its name may be reused by a `let` binding or a pattern
/// (`let ship = ctx.lfc(ship, order).await?`). Implementing the trait by hand is
/// possible but rarely needed.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a durable function with a body in this process",
    note = "annotate an `async fn` with `#[durable::function]`; a `Remote` function has no body here: call it with `ctx.rfc` or `ctx.rfi`"
)]
pub trait Function: Callable + Clone {
    /// The retry policy of its calls, unless a call sets its own; `None` for the
    /// default, which retries a failed attempt only if it made no durable call
    /// ([`Retry`] says what an attempt runs again).
    fn retry(&self) -> Option<Retry> {
        None
    }

    /// Runs the body.
    fn call<'a>(&self, ctx: &'a mut Context, args: Self::Args) -> BoxFuture<'a, Result<Self::Output>>;

    /// A digest of the function's code, which `#[durable::function]` computes: a task
    /// halted by nondeterminism is resumed when a worker starts with other code for
    /// its function (0, the default, is never other code).
    #[doc(hidden)]
    fn code_digest(&self) -> u64 {
        0
    }
}

/// A function of another process, called by name with no stub on this side.
///
/// ```
/// use durable::Remote;
///
/// let add = Remote::<(i64, i64), i64>::named("+");
/// assert_eq!(durable::Callable::name(&add), "+");
/// ```
pub struct Remote<A, O> {
    name: Cow<'static, str>,
    version: u32,
    types: PhantomData<fn(A) -> O>,
}

impl<A, O> Remote<A, O> {
    /// The function registered as `name`, version 1.
    pub fn named(name: impl Into<Cow<'static, str>>) -> Remote<A, O> {
        Remote { name: name.into(), version: 1, types: PhantomData }
    }

    /// The same function at another version.
    pub fn version(mut self, version: u32) -> Remote<A, O> {
        self.version = version;
        self
    }
}

impl<A, O> Clone for Remote<A, O> {
    fn clone(&self) -> Self {
        Remote { name: self.name.clone(), version: self.version, types: PhantomData }
    }
}

impl<A, O> fmt::Debug for Remote<A, O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Remote").field("name", &self.name).field("version", &self.version).finish()
    }
}

impl<A, O> Callable for Remote<A, O>
where
    A: Serialize + DeserializeOwned + Send + 'static,
    O: Serialize + DeserializeOwned + Send + 'static,
{
    type Args = A;
    type Output = O;

    fn name(&self) -> &str {
        &self.name
    }

    fn version(&self) -> u32 {
        self.version
    }
}

/// A function with its types erased: JSON in, JSON out. The registry holds these.
pub(crate) trait Erased: Send + Sync + 'static {
    fn name(&self) -> &str;
    fn code_digest(&self) -> u64;
    fn retry(&self) -> Option<Retry>;
    /// Decodes the arguments, runs the body, encodes the result.
    fn call<'a>(&'a self, ctx: &'a mut Context, args: &'a str) -> BoxFuture<'a, Result<String>>;
}

impl<F: Function> Erased for F {
    fn name(&self) -> &str {
        Callable::name(self)
    }

    fn retry(&self) -> Option<Retry> {
        Function::retry(self)
    }

    fn code_digest(&self) -> u64 {
        Function::code_digest(self)
    }

    fn call<'a>(&'a self, ctx: &'a mut Context, args: &'a str) -> BoxFuture<'a, Result<String>> {
        Box::pin(async move {
            let args: F::Args = serde_json::from_str(args).map_err(|e| Error::Codec {
                id: ctx.id().to_owned(),
                what: format!(
                    "decode the arguments of {:?} as {}",
                    Callable::name(self),
                    std::any::type_name::<F::Args>()
                ),
                message: e.to_string(),
            })?;
            let output = Function::call(self, ctx, args).await?;
            ctx.encode_result(&output)
        })
    }
}

/// What `#[durable::function]` implements for the type its function item returns:
/// the body and options, with no `self`, so that the function item is the durable
/// function.
#[doc(hidden)]
pub trait Descriptor: Send + Sync + 'static {
    type Args: Serialize + DeserializeOwned + Send + 'static;
    type Output: Serialize + DeserializeOwned + Send + 'static;
    const NAME: &'static str;
    const VERSION: u32;
    const CODE: u64;

    fn timeout() -> Option<Duration> {
        None
    }

    fn retry() -> Option<Retry> {
        None
    }

    fn call<'a>(ctx: &'a mut Context, args: Self::Args) -> BoxFuture<'a, Result<Self::Output>>;
}

impl<G, D> Callable for G
where
    G: Fn() -> D + Clone + Send + Sync + 'static,
    D: Descriptor,
{
    type Args = D::Args;
    type Output = D::Output;

    fn name(&self) -> &str {
        D::NAME
    }

    fn version(&self) -> u32 {
        D::VERSION
    }

    fn timeout(&self) -> Option<Duration> {
        D::timeout()
    }
}

impl<G, D> Function for G
where
    G: Fn() -> D + Clone + Send + Sync + 'static,
    D: Descriptor,
{
    fn retry(&self) -> Option<Retry> {
        D::retry()
    }

    fn call<'a>(&self, ctx: &'a mut Context, args: D::Args) -> BoxFuture<'a, Result<D::Output>> {
        D::call(ctx, args)
    }

    fn code_digest(&self) -> u64 {
        D::CODE
    }
}

#[doc(hidden)]
/// Used by `#[durable::function]` to name the `T` of a `Result<T, E>` return type.
#[diagnostic::on_unimplemented(
    message = "a durable function returns `durable::Result<T>`, not `{Self}`",
    label = "not `durable::Result<T>`",
    note = "return `durable::Result<T>` (`Result<T, durable::Error>`) for a serde type `T`; inside the body `?` takes any `std::error::Error`, and `Error::terminal(…)` fails for good"
)]
pub trait Returns {
    type Ok;
}

impl<T> Returns for Result<T> {
    type Ok = T;
}
