//! Errors: what went wrong, to which id, and what to do about it.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A `Result` whose error is [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in a durable call.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// User code failed. Retried by the retry policy unless `terminal`.
    #[error("{message}")]
    Application {
        /// What the code said.
        message: String,
        /// A terminal error is never retried.
        terminal: bool,
    },
    /// The promise's deadline passed before it settled.
    #[error("promise {id} timed out")]
    Timeout {
        /// The promise.
        id: String,
    },
    /// The promise was canceled.
    #[error("promise {id} was canceled")]
    Canceled {
        /// The promise.
        id: String,
    },
    /// Replay took a different path than the recorded run.
    #[error(transparent)]
    Nondeterminism(Box<Nondeterminism>),
    /// No function of this name is registered here.
    #[error("function {name:?} is not registered{}", where_.as_deref().map(|w| format!(" in {w}")).unwrap_or_default())]
    NotRegistered {
        /// The name asked for.
        name: String,
        /// Where it was looked up (a group), if known.
        where_: Option<String>,
    },
    /// A payload did not encode or decode as the function's types.
    #[error("cannot {what} for {id}: {message}")]
    Codec {
        /// The promise.
        id: String,
        /// What was being done, e.g. "decode the arguments of \"add\"".
        what: String,
        /// serde's message.
        message: String,
    },
    /// A payload is bigger than the configured limit; nothing was written.
    #[error("{what} of {id} is {size} bytes, over the limit of {limit} bytes (raise it with Builder::max_payload)")]
    PayloadTooLarge {
        /// The promise.
        id: String,
        /// "the arguments" or "the result".
        what: &'static str,
        /// Its encoded size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// An id that cannot be used.
    #[error("invalid id {id:?}: {reason}")]
    InvalidId {
        /// The id.
        id: String,
        /// Why.
        reason: &'static str,
    },
    /// A target URL that cannot be routed.
    #[error("invalid target {target:?}: {reason}")]
    InvalidTarget {
        /// The URL as given.
        target: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The invocation's task was halted; a fixed deploy resumes it.
    #[error("invocation {id} halted: {reason}")]
    Halted {
        /// The invocation.
        id: String,
        /// The fault that halted it.
        reason: String,
    },
    /// An id already names an invocation that differs from this call (another function,
    /// or other arguments): the same id never runs twice.
    #[error("invocation {id} exists {reason}; an id names one invocation: choose another id for another call")]
    Conflict {
        /// The invocation.
        id: String,
        /// How it differs.
        reason: String,
    },
    /// The runtime is misconfigured or shut down.
    #[error("{0}")]
    Runtime(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Error {
    /// An application error; the retry policy may retry it.
    pub fn new(message: impl fmt::Display) -> Error {
        Error::Application { message: message.to_string(), terminal: false }
    }

    /// An application error that is never retried.
    pub fn terminal(message: impl fmt::Display) -> Error {
        Error::Application { message: message.to_string(), terminal: true }
    }

    /// Whether a retry policy may retry this error.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::Application { terminal: false, .. } | Error::Timeout { .. })
    }
}

/// A replay that does not match what was recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error(
    "nondeterminism at {id} ({location}): recorded {recorded}, but the code now calls {now}; \
     the task is halted and nothing was settled: deploy code that replays the recorded \
     history (or give the changed call a new version and id) to resume it"
)]
pub struct Nondeterminism {
    /// The id of the diverging operation.
    pub id: String,
    /// What the store has for it.
    pub recorded: String,
    /// What the code did now.
    pub now: String,
    /// The file:line of the call.
    pub location: String,
}

/// An error of a store backend. No backend type appears in it: their errors are boxed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// A write made for a task that is no longer held at that version.
    #[error("task {task} is not held at version {version}: the lease was lost, the write is refused")]
    Fenced {
        /// The task.
        task: String,
        /// The stale version.
        version: u64,
    },
    /// A request that conflicts with what is stored (idempotency keys, strict mode).
    #[error("conflict on promise {id}: {reason}")]
    Conflict {
        /// The promise.
        id: String,
        /// Why.
        reason: String,
    },
    /// No such promise or task.
    #[error("{what} {id} does not exist")]
    NotFound {
        /// "promise" or "task".
        what: &'static str,
        /// The id.
        id: String,
    },
    /// The backend failed; the outcome of a write is unknown.
    #[error("store backend failed: {0}")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl StoreError {
    /// A backend failure from any error.
    pub fn backend(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> StoreError {
        StoreError::Backend(e.into())
    }
}

/// An error as a rejected promise stores it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "error", rename_all = "snake_case")]
pub(crate) enum Failure {
    Application { message: String, terminal: bool },
    Timeout { id: String },
    Canceled { id: String },
    Nondeterminism(Nondeterminism),
    NotRegistered { name: String, where_: Option<String> },
    Codec { id: String, what: String, message: String },
    PayloadTooLarge { id: String, what: String, size: usize, limit: usize },
    Other { message: String },
}

impl Failure {
    pub(crate) fn encode(&self) -> String {
        serde_json::to_string(self).expect("a Failure always encodes")
    }

    pub(crate) fn decode(id: &str, json: Option<&str>) -> Failure {
        json.and_then(|j| serde_json::from_str(j).ok()).unwrap_or_else(|| Failure::Other {
            message: format!("promise {id} was rejected with a value that is not an error: {json:?}"),
        })
    }

    pub(crate) fn into_error(self) -> Error {
        match self {
            Failure::Application { message, terminal } => Error::Application { message, terminal },
            Failure::Timeout { id } => Error::Timeout { id },
            Failure::Canceled { id } => Error::Canceled { id },
            Failure::Nondeterminism(n) => Error::Nondeterminism(Box::new(n)),
            Failure::NotRegistered { name, where_ } => Error::NotRegistered { name, where_ },
            Failure::Codec { id, what, message } => Error::Codec { id, what, message },
            Failure::PayloadTooLarge { id, what, size, limit } => Error::PayloadTooLarge {
                id,
                what: if what == "the arguments" { "the arguments" } else { "the result" },
                size,
                limit,
            },
            Failure::Other { message } => Error::Application { message, terminal: true },
        }
    }
}

impl From<&Error> for Failure {
    fn from(e: &Error) -> Failure {
        match e {
            Error::Application { message, terminal } => {
                Failure::Application { message: message.clone(), terminal: *terminal }
            }
            Error::Timeout { id } => Failure::Timeout { id: id.clone() },
            Error::Canceled { id } => Failure::Canceled { id: id.clone() },
            Error::Nondeterminism(n) => Failure::Nondeterminism((**n).clone()),
            Error::NotRegistered { name, where_ } => {
                Failure::NotRegistered { name: name.clone(), where_: where_.clone() }
            }
            Error::Codec { id, what, message } => {
                Failure::Codec { id: id.clone(), what: what.clone(), message: message.clone() }
            }
            Error::PayloadTooLarge { id, what, size, limit } => {
                Failure::PayloadTooLarge { id: id.clone(), what: (*what).to_owned(), size: *size, limit: *limit }
            }
            other => Failure::Other { message: other.to_string() },
        }
    }
}
