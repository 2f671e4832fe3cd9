//! Promises and tasks: the records a [`Store`](crate::Store) keeps.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::Failure;
use crate::{Error, Target};

/// Milliseconds on the store's clock.
pub type Millis = u64;

/// A deadline that never comes.
pub const NEVER: Millis = u64::MAX;

/// The state of a [`Promise`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Not settled yet.
    Pending,
    /// Settled with a value.
    Resolved,
    /// Settled with an error.
    Rejected,
    /// Settled by cancellation.
    RejectedCanceled,
    /// Settled because its deadline passed.
    RejectedTimedout,
}

impl State {
    /// True for every state but [`State::Pending`].
    pub fn is_settled(self) -> bool {
        self != State::Pending
    }
}

/// `at` on the store's clock: milliseconds since the Unix epoch (0 before it).
pub(crate) fn epoch_millis(at: std::time::SystemTime) -> Millis {
    at.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as Millis)
}

/// What a promise stands for: recorded when it is created, checked on replay.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Param {
    /// A call of a durable function.
    Call {
        /// The function's registered name.
        func: String,
        /// The function's version.
        version: u32,
        /// The arguments, as JSON.
        args: String,
        /// A digest of `args`, compared on replay.
        digest: u64,
    },
    /// A durable timer: it resolves at its deadline.
    Timer,
    /// A promise settled from outside (`ctx.promise()`, `Durable::promises()`).
    External,
    /// A value recorded once and replayed (`now`, `random`, `uuid`).
    Record {
        /// Which value: `now`, `random` or `uuid`.
        what: String,
    },
}

impl Param {
    /// What the promise is, in a word: the function called, or `sleep`, `promise`,
    /// `now`, `random`, `uuid`.
    pub fn what(&self) -> &str {
        match self {
            Param::Call { func, .. } => func,
            Param::Timer => "sleep",
            Param::External => "promise",
            Param::Record { what } => what,
        }
    }

    /// A call of `func` with JSON `args`.
    pub fn call(func: &str, version: u32, args: String) -> Param {
        let digest = digest(args.as_bytes());
        Param::Call { func: func.to_owned(), version, args, digest }
    }

    /// The function a call runs, as workers register it: its name, and for a
    /// version after 1, `name@version`. A task runs only on a worker that registers
    /// this key, so an invocation runs the version it started with. `None` for what
    /// is not a call.
    pub fn function_key(&self) -> Option<std::borrow::Cow<'_, str>> {
        match self {
            Param::Call { func, version, .. } => Some(function_key(func, *version)),
            _ => None,
        }
    }

    /// What replay compares: a name and a digest.
    pub(crate) fn signature(&self) -> (&str, u64) {
        match self {
            Param::Call { func, digest, .. } => (func, *digest),
            Param::Timer => ("sleep", 0),
            Param::External => ("promise", 0),
            Param::Record { what } => (what, 0),
        }
    }
}

/// The key of version `version` of function `func`: its name for version 1, else
/// `name@version`.
pub(crate) fn function_key(func: &str, version: u32) -> std::borrow::Cow<'_, str> {
    if version == 1 { func.into() } else { format!("{func}@{version}").into() }
}

/// FNV-1a, 64 bits: stable across builds and platforms, which `std`'s hasher is not.
pub(crate) fn digest(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3))
}

/// The creator of the promise minted as `minted`: the creating body's promise id,
/// `minted` without its count and, for a retry's child (`{id}.r{k}.{n}`) or wait
/// (`{id}.r{k}`), without the retry's segment. Recorded as [`Promise::parent`] of
/// whatever the body creates there, minted or with a chosen id.
pub(crate) fn creator_of(minted: &str) -> Option<&str> {
    let (parent, _) = minted.rsplit_once('.')?;
    match parent.rsplit_once('.') {
        Some((body, retry))
            if retry.strip_prefix('r').is_some_and(|k| !k.is_empty() && k.bytes().all(|b| b.is_ascii_digit())) =>
        {
            Some(body)
        }
        _ => Some(parent),
    }
}

/// The tag that marks a detached invocation: cancelling its creator leaves it alone.
pub(crate) const DETACHED_TAG: &str = "durable:detached";

/// Whether a promise is an invocation as `Store::invocations` lists them: a call
/// that is top-level, detached, or made with a chosen id (not under its creator's
/// id).
pub(crate) fn is_invocation(p: &Promise) -> bool {
    let chosen = |parent: &str| !p.id.strip_prefix(parent).is_some_and(|rest| rest.starts_with('.'));
    matches!(p.param, Param::Call { .. })
        && (p.parent.as_deref().is_none_or(chosen) || p.tags.contains_key(DETACHED_TAG))
}

/// The longest id, in bytes: far below what an index or a notification can carry.
pub const MAX_ID_LEN: usize = 1024;

/// A name chosen by a caller (a top-level id, or one set with `.id(…)`): not empty,
/// without `.` (which separates child ids) or control characters, at most
/// [`MAX_ID_LEN`] bytes.
pub(crate) fn validate_id(id: &str) -> Result<(), Error> {
    let reason = if id.is_empty() {
        "an id may not be empty"
    } else if id.contains('.') {
        "a chosen id may not contain '.', which separates child ids"
    } else if id.chars().any(char::is_control) {
        "an id may not contain control characters"
    } else if id.len() > MAX_ID_LEN {
        "an id may be at most 1024 bytes"
    } else {
        return Ok(());
    };
    Err(Error::InvalidId { id: id.to_owned(), reason })
}

/// A fresh random number: a counter hashed with the standard library's randomly
/// keyed hasher (no clock is read, and no dependency is needed).
pub(crate) fn random() -> u64 {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut h = std::hash::BuildHasher::build_hasher(&std::collections::hash_map::RandomState::new());
    std::hash::Hasher::write_u64(&mut h, COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
    std::hash::Hasher::finish(&h)
}

/// A durable promise.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Promise {
    /// Its id: a top-level id, `{creator}.{n}` for a child, or an id its creator
    /// chose.
    pub id: String,
    /// The promise whose body created it (for a retry's child, the body's own
    /// promise, not the wait before the attempt); `None` for a top-level one.
    #[serde(default)]
    pub parent: Option<String>,
    /// The top-level promise of its family: its own id if it has no parent, else its
    /// parent's root. Retention deletes a family as one, and trees, cancellation and
    /// histories follow it ([`Search::root`](crate::store::Search::root)).
    #[serde(default)]
    pub root: String,
    /// Its state.
    pub state: State,
    /// What it stands for.
    pub param: Param,
    /// The settled value as JSON: the result if resolved, an encoded error if rejected.
    pub value: Option<String>,
    /// When it times out, on the store clock ([`NEVER`] for no timeout).
    pub timeout_at: Millis,
    /// Free-form tags, searchable.
    pub tags: BTreeMap<String, String>,
    /// The idempotency key it was created with.
    pub ikey_create: Option<String>,
    /// The idempotency key it was settled with.
    pub ikey_settle: Option<String>,
    /// When it was created.
    pub created_at: Millis,
    /// When it was settled.
    pub settled_at: Option<Millis>,
    /// The call that undoes this one, attached when it was made
    /// ([`Call::compensate`](crate::Call::compensate)): owed once it resolves, run if
    /// its caller then fails or is canceled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub undo: Option<Box<Undo>>,
    /// Its cancellation was asked for ([`Store::request_cancel`](crate::Store::request_cancel))
    /// and its body has not settled it yet: the next execution of its task makes no
    /// new call, runs the undos it owes, and settles it canceled.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub canceling: bool,
}

/// An undo: the call that reverses a step ([`Promise::undo`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Undo {
    /// The function's registered name.
    pub func: String,
    /// The function's version.
    pub version: u32,
    /// The arguments, as JSON.
    pub args: String,
}

impl Promise {
    /// The promise as it stands at `now`: a pending promise past its deadline counts as
    /// timed out (a timer as resolved).
    pub fn at(&self, now: Millis) -> Promise {
        let mut p = self.clone();
        p.expire(now);
        p
    }

    /// Applies the deadline in place; true if that settled it.
    pub(crate) fn expire(&mut self, now: Millis) -> bool {
        if self.state != State::Pending || now < self.timeout_at {
            return false;
        }
        if self.param == Param::Timer {
            self.state = State::Resolved;
            self.value = Some("null".into());
        } else {
            self.state = State::RejectedTimedout;
            self.value = Some(Failure::Timeout { id: self.id.clone() }.encode());
        }
        self.settled_at = Some(self.timeout_at);
        true
    }

    /// The settled outcome, decoded: `Ok(json)` if resolved, the error if rejected,
    /// `None` while pending.
    pub fn outcome(&self) -> Option<Result<&str, Error>> {
        let value = self.value.as_deref();
        match self.state {
            State::Pending => None,
            State::Resolved => Some(Ok(value.unwrap_or("null"))),
            State::Rejected => Some(Err(Failure::decode(&self.id, value).into_error())),
            // Canceled after undoing steps: the value says which.
            State::RejectedCanceled => Some(Err(match Failure::decode(&self.id, value) {
                compensated @ Failure::Compensated { .. } => compensated.into_error(),
                _ => Error::Canceled { id: self.id.clone() },
            })),
            State::RejectedTimedout => Some(Err(Error::Timeout { id: self.id.clone() })),
        }
    }

    /// The resolved value decoded as `T`, or the error it was rejected with;
    /// `None` while pending.
    pub fn value<T: serde::de::DeserializeOwned>(&self) -> Option<Result<T, Error>> {
        self.outcome().map(|outcome| outcome.and_then(|json| crate::codec::decode(&self.id, json)))
    }
}

/// The state of a [`Task`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    /// Waiting for a worker of its group.
    Pending,
    /// Held by a process under a lease.
    Acquired,
    /// Waiting, held by nobody, for one of the promises it awaits to settle.
    Suspended,
    /// Its promise settled: nothing more to do.
    Fulfilled,
    /// Stopped by a fault that replay would repeat (nondeterminism, a poison task); a
    /// worker of its group resumes it when it starts.
    Halted,
}

/// The work of executing a promise, delivered to a worker of a group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Task {
    /// Its id: the id of its promise.
    pub id: String,
    /// Its state.
    pub state: TaskState,
    /// Bumped by every acquire, release, expiry, suspension and resume; writes are
    /// fenced on it.
    pub version: u64,
    /// Where it is delivered.
    pub target: Target,
    /// A preferred worker (`target.pid`, not `uni`) has it to itself until then.
    pub prefer_until: Millis,
    /// The process holding it, while acquired.
    pub process: Option<String>,
    /// When the lease ends, while acquired.
    pub lease_until: Millis,
    /// Not delivered before this time (backoff after a fault).
    pub ready_at: Millis,
    /// Faults so far (panics, store errors): a poison task halts.
    pub faults: u32,
    /// The last fault, for whoever looks.
    pub error: Option<String>,
    /// While suspended: the promises whose settlement makes it pending again.
    #[serde(default)]
    pub awaiting: Vec<String>,
    /// While halted by nondeterminism: the digest of the code that halted it. A worker
    /// resumes the task when it starts with other code for the task's function.
    #[serde(default)]
    pub halted_code: Option<u64>,
    /// The function key of the call it executes ([`Param::function_key`]): what a
    /// [`Limit`](crate::Limit) of a function covers. `None` for a task recorded
    /// before tasks named their function.
    #[serde(default)]
    pub function: Option<String>,
    /// The key its caller gave the call: what a per-key [`Limit`](crate::Limit)
    /// counts by.
    #[serde(default)]
    pub key: Option<String>,
    /// Its priority: of the tasks ready for a worker, a claim takes those of the
    /// highest priority first, then the longest ready. 0 unless the caller set one.
    #[serde(default)]
    pub priority: i32,
    /// The debounce key of a debounced call (its function's key, `/`, the caller's
    /// key): until the task first starts, a call with the same key joins it instead
    /// of making another ([`NewTask::debounce`](crate::store::NewTask::debounce)).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub debounce: Option<String>,
}

impl Task {
    /// The fault recorded on the task (why it halted, or why it was last released),
    /// as the error it reports: a nondeterminism with its call, both sides and
    /// file:line, or [`Error::Halted`] with the reason.
    pub fn fault(&self) -> Option<Error> {
        let error = self.error.as_deref()?;
        Some(match Failure::decode(&self.id, Some(error)) {
            Failure::Other { message } => Error::Halted { id: self.id.clone(), reason: message },
            failure => failure.into_error(),
        })
    }
}

/// The proof that a write is made by the current holder of a task.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Fence {
    /// The task id.
    pub task: String,
    /// The version it was acquired at.
    pub version: u64,
}

#[cfg(test)]
mod tests {
    use super::creator_of;

    #[test]
    fn the_creator_of_a_chosen_id_is_the_body_that_minted_it() {
        assert_eq!(creator_of("order.3"), Some("order"));
        assert_eq!(creator_of("order.2.7"), Some("order.2"));
        assert_eq!(creator_of("order.r1.3"), Some("order"), "a retry's child belongs to the body");
        assert_eq!(creator_of("order.2.r12.1"), Some("order.2"));
        assert_eq!(creator_of("r1.4"), Some("r1"), "a root may be called r1");
        assert_eq!(creator_of("order"), None);
    }
}
