//! Errors: what went wrong, to which id, and what to do about it.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A `Result` whose error is [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in a durable call.
///
/// Inside a durable function `?` takes any `std::error::Error + Send + Sync`, as
/// anyhow and restate's `HandlerError` do: it becomes a retryable
/// [`Error::Application`] with the error's message and its sources (a
/// [`StoreError`] stays [`Error::Store`]). [`Error::terminal`] is the explicit way
/// to fail for good. For the same reason `Error` itself is not a `std::error::Error`;
/// `?` turns it into a `Box<dyn std::error::Error + Send + Sync>`, and
/// [`Error::into_std`] gives one for anything else (`anyhow::Error::from_boxed`).
///
/// ```
/// use durable::prelude::*;
///
/// #[durable::function]
/// async fn parse(_ctx: &mut Context, text: String) -> durable::Result<u64> {
///     Ok(text.trim().parse::<u64>()?) // a ParseIntError, retried like any failure
/// }
///
/// fn reserve() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
///     Err(Error::terminal("out of stock"))?; // a durable::Error through `?`
///     Ok(())
/// }
///
/// fn main() {
///     let e: Error = "x".parse::<u64>().unwrap_err().into();
///     assert!(e.is_retryable());
///     assert_eq!(reserve().unwrap_err().to_string(), "out of stock");
/// }
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// User code failed. Retried by the retry policy unless `terminal`.
    Application {
        /// What the code said.
        message: String,
        /// A terminal error is never retried.
        terminal: bool,
    },
    /// The promise's deadline passed before it settled.
    Timeout {
        /// The promise.
        id: String,
    },
    /// The promise was canceled.
    Canceled {
        /// The promise.
        id: String,
    },
    /// Replay took a different path than the recorded run.
    Nondeterminism(Box<Nondeterminism>),
    /// No function of this name is registered here.
    NotRegistered {
        /// The name asked for.
        name: String,
        /// Where it was looked up (a group), if known.
        where_: Option<String>,
    },
    /// A payload did not encode or decode as the function's types.
    Codec {
        /// The promise.
        id: String,
        /// What was being done, e.g. "decode the arguments of \"add\"".
        what: String,
        /// serde's message.
        message: String,
    },
    /// A payload is bigger than the configured limit; nothing was written.
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
    InvalidId {
        /// The id.
        id: String,
        /// Why.
        reason: &'static str,
    },
    /// A target URL that cannot be routed.
    InvalidTarget {
        /// The URL as given.
        target: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A call's key ([`Call::key`](crate::Call::key)) that cannot be used: it does
    /// not encode, or it is empty, too long or holds control characters. Nothing was
    /// written.
    InvalidKey {
        /// The call.
        id: String,
        /// What is wrong with the key.
        reason: String,
    },
    /// A schedule that cannot work: a cron expression that does not parse (naming the
    /// field), an unknown time zone, an interval that is not whole seconds, an end
    /// before the start, a bad id or target, arguments that do not encode. Nothing
    /// was written.
    InvalidSchedule {
        /// The schedule.
        id: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A function failed, or was canceled, after steps that carry an undo
    /// ([`Call::compensate`](crate::Call::compensate)) completed: their undos ran, last
    /// step first, before it settled.
    Compensated {
        /// The function's promise.
        id: String,
        /// Why it failed: [`Error::Canceled`] if it was canceled.
        cause: Box<Error>,
        /// The steps undone, in the order their undos ran.
        undone: Vec<String>,
    },
    /// The invocation's task was halted; a fixed deploy resumes it.
    Halted {
        /// The invocation.
        id: String,
        /// The fault that halted it.
        reason: String,
    },
    /// An id already names an invocation that differs from this call (another function,
    /// or other arguments): the same id never runs twice.
    Conflict {
        /// The invocation.
        id: String,
        /// How it differs.
        reason: String,
    },
    /// A task waited longer than its caller allows (`Rpc::unserved_after`,
    /// `Call::unserved_after`) for a live worker of its group that runs its function,
    /// and there is none.
    Unserved {
        /// The task.
        id: String,
        /// The group it is routed to.
        group: String,
        /// The function it calls.
        function: String,
        /// How long it had waited, in seconds.
        waited: u64,
    },
    /// The runtime is misconfigured or shut down.
    Runtime(String),
    /// The store failed.
    Store(StoreError),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Application { message, .. } => write!(f, "{message}"),
            Error::Timeout { id } => write!(f, "promise {id} timed out"),
            Error::Canceled { id } => write!(f, "promise {id} was canceled"),
            Error::Compensated { id, cause, undone } => {
                write!(f, "{id} undid {} after: {cause}", undone.join(", "))
            }
            Error::Nondeterminism(n) => fmt::Display::fmt(n, f),
            Error::NotRegistered { name, where_ } => {
                write!(f, "function {name:?} is not registered")?;
                match where_ {
                    Some(w) => write!(f, " in {w}"),
                    None => Ok(()),
                }
            }
            Error::Codec { id, what, message } => write!(f, "cannot {what} for {id}: {message}"),
            Error::PayloadTooLarge { id, what, size, limit } => write!(
                f,
                "{what} of {id} is {size} bytes, over the limit of {limit} bytes (raise it with Builder::max_payload)"
            ),
            Error::InvalidId { id, reason } => write!(f, "invalid id {id:?}: {reason}"),
            Error::InvalidTarget { target, reason } => write!(f, "invalid target {target:?}: {reason}"),
            Error::InvalidKey { id, reason } => write!(f, "invalid key for call {id}: {reason}"),
            Error::InvalidSchedule { id, reason } => write!(f, "invalid schedule {id:?}: {reason}"),
            Error::Halted { id, reason } => write!(f, "invocation {id} halted: {reason}"),
            Error::Conflict { id, reason } => write!(
                f,
                "invocation {id} exists {reason}; an id names one invocation: choose another id for another call"
            ),
            Error::Unserved { id, group, function, waited } => write!(
                f,
                "task {id} has waited {waited} s for a worker of group {group:?} that runs {function:?}, \
                 and no live worker does: start one, or check the target's and the function's spelling"
            ),
            Error::Runtime(message) => write!(f, "{message}"),
            Error::Store(e) => fmt::Display::fmt(e, f),
        }
    }
}

/// `?` on any error: a retryable application error with the error's message and its
/// sources, except that a [`StoreError`] stays one.
impl<E: std::error::Error + Send + Sync + 'static> From<E> for Error {
    fn from(e: E) -> Error {
        let boxed: Box<dyn std::error::Error + Send + Sync> = Box::new(e);
        match boxed.downcast::<StoreError>() {
            Ok(store) => Error::Store(*store),
            Err(other) => {
                let mut message = other.to_string();
                let mut source = other.source();
                while let Some(s) = source {
                    message.push_str(": ");
                    message.push_str(&s.to_string());
                    source = s.source();
                }
                Error::Application { message, terminal: false }
            }
        }
    }
}

/// An [`Error`] as a `std::error::Error`: see [`Error::into_std`].
#[derive(Debug)]
struct StdError(Error);

impl fmt::Display for StdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl std::error::Error for StdError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.0 {
            Error::Store(e) => Some(e),
            Error::Nondeterminism(n) => Some(&**n),
            _ => None,
        }
    }
}

impl From<Error> for Box<dyn std::error::Error + Send + Sync + 'static> {
    fn from(e: Error) -> Self {
        e.into_std()
    }
}

impl From<Error> for Box<dyn std::error::Error + 'static> {
    fn from(e: Error) -> Self {
        e.into_std()
    }
}

impl Error {
    /// This error as a `std::error::Error`, for error types that take one (anyhow's
    /// `Error::from_boxed`, say); its source is the store's error or the
    /// nondeterminism.
    pub fn into_std(self) -> Box<dyn std::error::Error + Send + Sync + 'static> {
        Box::new(StdError(self))
    }

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
        match self {
            Error::Compensated { cause, .. } => cause.is_retryable(),
            _ => matches!(self, Error::Application { terminal: false, .. } | Error::Timeout { .. }),
        }
    }
}

/// A replay that does not match what was recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error(
    "nondeterminism at {id} ({location}): the history recorded {recorded}, but the code now makes {now}; \
     the task is halted and nothing was settled. Deploy code that replays the history: put \
     the change behind `ctx.patched(name)`, which histories recorded before it answer false, \
     or register the old code as this version of the function and the changed code as a \
     higher `version`, which only invocations started on it run. A worker that starts with \
     other code for the function resumes the task (or resume it by hand: `durable resume`)"
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
        /// "promise", "task", or "store".
        what: &'static str,
        /// The id.
        id: String,
    },
    /// A [`Limit`](crate::Limit) that cannot work, refused before anything is written.
    #[error("limit {name:?} is refused: {reason}")]
    InvalidLimit {
        /// The limit's name.
        name: String,
        /// What is wrong with it.
        reason: String,
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
    Compensated { id: String, cause: Box<Failure>, undone: Vec<String> },
    Nondeterminism(Nondeterminism),
    NotRegistered { name: String, where_: Option<String> },
    Codec { id: String, what: String, message: String },
    PayloadTooLarge { id: String, what: String, size: usize, limit: usize },
    InvalidTarget { target: String, reason: String },
    Unserved { id: String, group: String, function: String, waited: u64 },
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
            Failure::Compensated { id, cause, undone } => {
                Error::Compensated { id, cause: Box::new(cause.into_error()), undone }
            }
            Failure::Nondeterminism(n) => Error::Nondeterminism(Box::new(n)),
            Failure::NotRegistered { name, where_ } => Error::NotRegistered { name, where_ },
            Failure::Codec { id, what, message } => Error::Codec { id, what, message },
            Failure::PayloadTooLarge { id, what, size, limit } => Error::PayloadTooLarge {
                id,
                what: if what == "the arguments" { "the arguments" } else { "the result" },
                size,
                limit,
            },
            Failure::InvalidTarget { target, reason } => Error::InvalidTarget { target, reason },
            Failure::Unserved { id, group, function, waited } => Error::Unserved { id, group, function, waited },
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
            Error::Compensated { id, cause, undone } => Failure::Compensated {
                id: id.clone(),
                cause: Box::new(Failure::from(&**cause)),
                undone: undone.clone(),
            },
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
            Error::InvalidTarget { target, reason } => {
                Failure::InvalidTarget { target: target.clone(), reason: reason.clone() }
            }
            Error::Unserved { id, group, function, waited } => {
                Failure::Unserved { id: id.clone(), group: group.clone(), function: function.clone(), waited: *waited }
            }
            other => Failure::Other { message: other.to_string() },
        }
    }
}
