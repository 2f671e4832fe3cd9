#![doc = include_str!("../README.md")]
//!
//! # Modules
//!
//! * [`store`]: the [`Store`] trait and its backends, [`MemoryStore`] and [`SledStore`].
//! * The crate root: [`Durable`] (the runtime), [`Context`] (durable operations inside a
//!   function), [`Function`] and [`Remote`] (what can be called), [`Handle`], [`Retry`],
//!   [`Error`].

mod codec;
#[cfg(feature = "dashboard")]
pub mod dashboard;
mod durable;
mod error;
mod history;
mod promise;
mod retry;
mod runtime;
mod schedule;
pub mod store;
mod target;

pub use crate::durable::{
    Builder, DEFAULT_MAX_PAYLOAD, DEFAULT_RETENTION, Debounced, Durable, Node, Promises, Rpc, Run, Schedules,
};
pub use crate::error::{Error, Nondeterminism, Result, StoreError};
pub use crate::history::{Checked, Checker, HISTORY_FORMAT, History, Recorded, Verdict};
pub use crate::promise::{Fence, MAX_ID_LEN, Millis, NEVER, Param, Promise, State, Task, TaskState, Undo};
pub use crate::retry::Retry;
pub use crate::runtime::context::{Call, Context, Detach, Lfc, Lfi, Promised, Rfc, Rfi};
pub use crate::runtime::function::{Callable, Function, Remote};
pub use crate::runtime::handle::Handle;
pub use crate::schedule::{Every, Overlap, Schedule, ScheduleSpec};
pub use crate::store::{Limit, LimitState, MemoryStore, Rate, SledStore, Store};
pub use crate::target::Target;

/// Turns an `async fn(&mut Context, …) -> durable::Result<T>` into a durable function.
///
/// See the crate documentation for the options.
#[cfg(feature = "macros")]
#[doc(inline)]
pub use durable_macros::function;

/// The names most programs need.
pub mod prelude {
    pub use crate::{
        Callable, Context, Durable, Error, Function, Handle, MemoryStore, Promises, Remote, Retry, SledStore, State,
        Store,
    };
}

/// Used by the code `#[durable::function]` generates. Not public API: it may change in
/// any release.
#[doc(hidden)]
pub mod __private {
    pub use crate::runtime::function::{Descriptor, Returns};
    pub use crate::{Callable, Context, Function, Result, Retry};
    pub use futures::future::BoxFuture;
    pub use serde::Serialize;
    pub use serde::de::DeserializeOwned;
    pub use std::boxed::Box;
    pub use std::time::Duration;

    /// Names a type that cannot be an argument or result of a durable function.
    #[diagnostic::on_unimplemented(
        message = "`{Self}` cannot be an argument or result of a durable function",
        label = "not serde",
        note = "arguments and results are stored as JSON: derive `serde::Serialize` and `serde::Deserialize` for it"
    )]
    pub trait Payload {}
    impl<T: Serialize + DeserializeOwned> Payload for T {}

    /// Asserts at compile time that `T` is a payload; called on the span of the type.
    pub const fn assert_payload<T: Payload>() {}
}
