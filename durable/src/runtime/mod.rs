//! The runtime below the facade: executing tasks, contexts, handles, waiting.
//!
//! Imports flow one way: [`crate::durable`] (the public facade) uses this module, and
//! this module uses the store, never the facade.

pub(crate) mod context;
pub(crate) mod execute;
pub(crate) mod fire;
pub(crate) mod function;
pub(crate) mod handle;
pub(crate) mod invocation;
pub(crate) mod replay;
pub(crate) mod shared;
pub(crate) mod wait;
pub(crate) mod worker;
