//! The [`Store`] trait, the only thing a backend implements, and its backends.
//!
//! Each method is one atomic step. Settling a promise, fulfilling its task and waking
//! whoever waits on it happen together or not at all; every write made while executing
//! a task carries a [`Fence`] and is refused unless the task is still held at that
//! version. Time is the store's own clock, never the caller's.

mod clock;
mod cold;
mod engine;
pub(crate) mod flow;
mod memory;
#[cfg(feature = "postgres")]
mod postgres;
mod sled;
pub(crate) mod state;
pub(crate) mod upgrade;
mod waiters;

use std::collections::BTreeMap;
use std::fmt::Debug;

use async_trait::async_trait;

pub use self::clock::{Clock, SystemClock, VirtualClock};
pub use self::flow::{Limit, LimitState, Rate};
pub use self::memory::MemoryStore;
#[cfg(feature = "postgres")]
pub use self::postgres::{PostgresOptions, PostgresStore};
pub use self::sled::SledStore;
use crate::promise::{Fence, Millis, Param, Promise, State, Task};
use crate::schedule::Schedule;
use crate::{StoreError, Target};

/// Opens the store `spec` names: a `postgres://` (or `postgresql://`) URL, in `schema`
/// (with the `postgres` feature), or else a directory for a [`SledStore`] (created if
/// missing).
pub async fn open(spec: &str, schema: &str) -> Result<std::sync::Arc<dyn Store>, StoreError> {
    if spec.starts_with("postgres://") || spec.starts_with("postgresql://") {
        #[cfg(feature = "postgres")]
        return Ok(std::sync::Arc::new(PostgresStore::options(spec).schema(schema).connect().await?));
        #[cfg(not(feature = "postgres"))]
        return Err(StoreError::backend(format!(
            "{spec} is a PostgreSQL URL, and this build has no PostgreSQL (feature `postgres`); schema {schema:?} unused"
        )));
    }
    Ok(std::sync::Arc::new(SledStore::open(spec)?))
}

/// The most promises or invocations one page of a search or listing holds.
pub const MAX_PAGE: usize = 10_000;

/// The size of a page asked for as `limit`: 0 means 100, and no page is larger than
/// [`MAX_PAGE`].
pub(crate) fn page_size(limit: usize) -> usize {
    if limit == 0 { 100 } else { limit.min(MAX_PAGE) }
}

/// A request to create a promise, and with it, optionally, its task.
#[derive(Clone, Debug)]
pub struct CreatePromise {
    /// The promise id.
    pub id: String,
    /// What it stands for.
    pub param: Param,
    /// The promise whose body creates it ([`Promise::parent`]): it must exist, and
    /// the new promise joins its family. `None`: a top-level promise, a family of its
    /// own.
    pub parent: Option<String>,
    /// Its timeout, relative to the store's now (`None`: no timeout of its own).
    pub timeout: Option<Millis>,
    /// An absolute cap on its deadline (a parent's deadline).
    pub deadline_cap: Millis,
    /// Tags.
    pub tags: BTreeMap<String, String>,
    /// Idempotency key for the creation.
    pub ikey: Option<String>,
    /// Strict mode: creating an existing promise is a conflict unless it is pending and
    /// the keys match.
    pub strict: bool,
    /// Create it already settled: in this state (not pending), with this JSON value
    /// (an encoded error for a rejection). Recorded values, and a local call's
    /// result when its promise was never created before it finished.
    pub settled: Option<(State, String)>,
    /// How long, in ms, its work has run before this write: the store dates its
    /// creation that much before its now ([`Promise::created_at`]). A local call's
    /// promise is written only once the call writes or finishes, so its record still
    /// shows when it began. 0 for anything created as it begins.
    pub ran_for: Millis,
    /// Create a task for it too.
    pub task: Option<NewTask>,
    /// The fence of the task this write is made for.
    pub fence: Option<Fence>,
    /// Acknowledge only once durable (the default). A create whose loss is harmless
    /// until a later durable write of the same store covers it (a local child, which
    /// replay creates again) may set false to skip waiting for the disk. A fenced
    /// create that sets false, of an id under the fenced task, also tells the store
    /// that the id is not among the task's settled promises unless it is live: the
    /// caller creates only ids its claim did not preload.
    pub durable: bool,
    /// The call that undoes this one ([`Promise::undo`]).
    pub undo: Option<Box<crate::Undo>>,
}

impl CreatePromise {
    /// A request with no timeout, tags, keys or task.
    pub fn new(id: impl Into<String>, param: Param) -> CreatePromise {
        CreatePromise {
            id: id.into(),
            param,
            parent: None,
            timeout: None,
            deadline_cap: crate::promise::NEVER,
            tags: BTreeMap::new(),
            ikey: None,
            strict: false,
            settled: None,
            ran_for: 0,
            task: None,
            fence: None,
            durable: true,
            undo: None,
        }
    }
}

/// The task to create with a promise.
#[derive(Clone, Debug)]
pub struct NewTask {
    /// Where it is delivered.
    pub target: Target,
    /// How long a preferred pid (any@group/pid) has it to itself, in ms.
    pub window: Millis,
    /// Acquire it at once for this process, with a lease of this many ms, unless a
    /// [`Limit`] covers it or its start is delayed: then it waits, pending, for a
    /// claim.
    pub acquire: Option<(String, Millis)>,
    /// The call's key ([`Task::key`]).
    pub key: Option<String>,
    /// Its priority ([`Task::priority`]).
    pub priority: i32,
    /// Not delivered until this many ms after the store's now: a delayed start.
    pub delay: Millis,
    /// Not delivered before this time on the store's clock: a start at a time.
    pub not_before: Millis,
    /// Not delivered until this promise settles: the task is created suspended on
    /// it, if it is pending (a schedule's fire that waits for the one before).
    pub after: Option<String>,
    /// A debounced call: joins the call of the same key not yet started, if there is
    /// one, instead of making a new one.
    pub debounce: Option<Debounce>,
}

/// How a call is debounced: calls of one key made close together become one
/// invocation, which starts once the key has been quiet for `quiet` ms, and at the
/// latest `max_wait` ms after the first of them.
#[derive(Clone, Debug)]
pub struct Debounce {
    /// The key: the calls of one key (and one function) join.
    pub key: String,
    /// How long the key must be quiet before the invocation starts, in ms.
    pub quiet: Millis,
    /// How long after the first call it starts at the latest, in ms.
    pub max_wait: Millis,
    /// Keep every call's arguments, in order (the arguments are a JSON array of
    /// them), rather than the last call's.
    pub all: bool,
    /// Arguments that would grow past this many bytes start the invocation at once
    /// with what it has, and the call opens a new one.
    pub max_args: usize,
}

impl NewTask {
    /// A task for `target`, not acquired, with no preference window, key, priority or
    /// delay.
    pub fn new(target: Target) -> NewTask {
        NewTask {
            target,
            window: 0,
            acquire: None,
            key: None,
            priority: 0,
            delay: 0,
            not_before: 0,
            after: None,
            debounce: None,
        }
    }
}

/// The answer to [`Store::create`].
#[derive(Clone, Debug)]
pub struct Created {
    /// The promise as stored.
    pub promise: Promise,
    /// False if it existed already.
    pub new: bool,
    /// The task, if it was created and acquired in this step.
    pub acquired: Option<Task>,
}

/// A request to settle a promise.
#[derive(Clone, Debug)]
pub struct SettlePromise {
    /// The promise id.
    pub id: String,
    /// The settled state (not pending).
    pub state: State,
    /// The value as JSON (an encoded error for a rejection).
    pub value: String,
    /// Idempotency key for the settlement.
    pub ikey: Option<String>,
    /// Strict mode: settling a settled promise is a conflict unless key and state match.
    pub strict: bool,
    /// The fence of the task this write is made for.
    pub fence: Option<Fence>,
}

impl SettlePromise {
    /// Settles `id` as canceled ([`State::RejectedCanceled`]), unfenced.
    pub(crate) fn canceled(id: &str) -> SettlePromise {
        SettlePromise {
            id: id.to_owned(),
            state: State::RejectedCanceled,
            value: crate::error::Failure::Canceled { id: id.to_owned() }.encode(),
            ikey: None,
            strict: false,
            fence: None,
        }
    }
}

/// Which promises to search.
#[derive(Clone, Debug, Default)]
pub struct Search {
    /// Ids starting with this.
    pub prefix: String,
    /// Only the family of this top-level promise ([`Promise::root`]): it, and
    /// everything created under it, at any depth, whatever its id.
    pub root: Option<String>,
    /// In this state (a rejected filter matches every rejected state).
    pub state: Option<State>,
    /// With all these tags.
    pub tags: BTreeMap<String, String>,
    /// At most this many (0 means 100; more than [`MAX_PAGE`] means [`MAX_PAGE`]).
    pub limit: usize,
    /// Only ids after this one: the cursor of the previous page.
    pub cursor: Option<String>,
}

/// One page of search results.
#[derive(Clone, Debug)]
pub struct Page {
    /// The promises, in id order.
    pub promises: Vec<Promise>,
    /// Pass this as [`Search::cursor`] for the next page; `None` on the last page.
    pub cursor: Option<String>,
}

/// Which invocations [`Store::invocations`] lists: roots that are calls of a function
/// (an invocation run by id, a call with a chosen id, a detached invocation), newest
/// first.
#[derive(Clone, Debug, Default)]
pub struct Invocations {
    /// In this state (a rejected filter matches every rejected state).
    pub state: Option<State>,
    /// Calls of this function (its registered name).
    pub function: Option<String>,
    /// With all these tags.
    pub tags: BTreeMap<String, String>,
    /// Created at or after this (store time, ms).
    pub since: Option<Millis>,
    /// Created before this (store time, ms).
    pub before: Option<Millis>,
    /// At most this many (0 means 100; more than [`MAX_PAGE`] means [`MAX_PAGE`]).
    pub limit: usize,
    /// Only invocations after this one in the listing: the cursor of the previous page.
    pub cursor: Option<Cursor>,
}

/// A place in a listing of invocations: the creation time and id of the last one
/// listed. Its text form, `{created_at}:{id}`, is what the command line prints and
/// reads.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Cursor {
    /// When the invocation was created (store time, ms).
    pub created_at: Millis,
    /// Its id.
    pub id: String,
}

impl Cursor {
    /// The cursor just past `p` in a listing.
    pub fn after(p: &Promise) -> Cursor {
        Cursor { created_at: p.created_at, id: p.id.clone() }
    }

    /// Where it sorts in a listing: newest first, then by id.
    pub(crate) fn key(&self) -> (std::cmp::Reverse<Millis>, &str) {
        (std::cmp::Reverse(self.created_at), &self.id)
    }
}

impl std::fmt::Display for Cursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.created_at, self.id)
    }
}

impl std::str::FromStr for Cursor {
    type Err = String;

    fn from_str(s: &str) -> Result<Cursor, String> {
        let parsed = s.split_once(':').and_then(|(at, id)| Some((at.parse().ok()?, id)));
        match parsed {
            Some((created_at, id)) if !id.is_empty() => Ok(Cursor { created_at, id: id.to_owned() }),
            _ => Err(format!("{s:?} is not a cursor: one reads {{created_at}}:{{id}}, as a listing prints it")),
        }
    }
}

/// An invocation as listed: its promise, and its task if it has one (a local call
/// with a chosen id has none).
#[derive(Clone, Debug, serde::Serialize)]
pub struct Invocation {
    /// Its promise: what it calls, its state, value or error, and times.
    pub promise: Promise,
    /// Its task: where it was routed, whether it runs, waits, or halted.
    pub task: Option<Task>,
}

/// One page of a listing of invocations.
#[derive(Clone, Debug)]
pub struct Listing {
    /// The invocations, newest first.
    pub invocations: Vec<Invocation>,
    /// Pass this as [`Invocations::cursor`] for the next page; `None` on the last page.
    /// A page may hold fewer than asked for, even none, and still have a next one: a
    /// backend may bound the work one call does.
    pub cursor: Option<Cursor>,
}

/// A request for ready tasks of a group.
#[derive(Clone, Debug)]
pub struct Claim {
    /// The group.
    pub group: String,
    /// The claiming worker's pid: it also gets the tasks routed to it.
    pub pid: String,
    /// The claiming process.
    pub process: String,
    /// Lease length.
    pub ttl: Millis,
    /// At most this many.
    pub max: usize,
    /// Only tasks of calls of these functions (by [`Param::function_key`]: the name,
    /// `name@version` after version 1), so that a task waits for a worker that can
    /// run it; empty: any.
    pub functions: Vec<String>,
}

/// A task handed to a worker, with everything a replay reads.
#[derive(Clone, Debug)]
pub struct Acquired {
    /// The task, acquired.
    pub task: Task,
    /// Its promise.
    pub root: Promise,
    /// The settled promises whose ids start with `{root}.`.
    pub preload: Vec<Promise>,
}

impl Acquired {
    /// The fence for writes made while executing it.
    pub fn fence(&self) -> Fence {
        Fence { task: self.task.id.clone(), version: self.task.version }
    }
}

/// How a fenced task is given back.
#[derive(Clone, Debug)]
pub enum Release {
    /// Back to pending, to be delivered again after `delay` ms; `error` records a fault.
    Retry {
        /// Delay before redelivery.
        delay: Millis,
        /// The fault, if one caused the release.
        error: Option<String>,
    },
    /// Halted with this error until resumed: by a worker of its group that starts (if
    /// `code` is set, only by one whose code for the task's function differs), or
    /// explicitly ([`Store::resume`]).
    Halt {
        /// Why.
        error: String,
        /// For a nondeterminism halt: the digest of the code that halted it.
        code: Option<u64>,
    },
}

/// Which finished families [`Store::purge`] deletes, each whole: a top-level promise
/// and everything created under it ([`Promise::root`]), its tasks included.
///
/// A family is purged only once every promise in it is settled: its children, the
/// promises its bodies created with a chosen id, and the detached invocations they
/// started, at any depth.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Purge {
    /// The family of this top-level promise, however recently it finished: an error
    /// if anything in it is pending, or if the promise is not top-level.
    Root(String),
    /// Families whose every promise settled before `before` (store time, ms), at
    /// most `limit` of them.
    Before {
        /// Settled before this.
        before: Millis,
        /// At most this many families.
        limit: usize,
    },
}

/// A worker as it last announced itself ([`Store::announce`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Worker {
    /// Its group.
    pub group: String,
    /// Its pid.
    pub pid: String,
    /// The process it runs in.
    pub process: String,
    /// The functions it runs, by [`Param::function_key`].
    pub functions: Vec<String>,
    /// Live until then (store time, ms), unless it announces itself again.
    pub live_until: Millis,
}

impl Worker {
    /// Whether it is live at `now`, in `group`, and runs `function` (a
    /// [`Param::function_key`]).
    pub fn serves(&self, group: &str, function: &str, now: Millis) -> bool {
        self.live_until > now && self.group == group && self.functions.iter().any(|f| f == function)
    }
}

/// How long a store remembers a worker that stopped announcing itself: a day, so a
/// group served yesterday is still known, and pids that come and go do not pile up.
pub const FORGET_WORKERS: Millis = 24 * 3600 * 1000;

/// What [`Store::tick`] did.
#[derive(Clone, Debug, Default)]
pub struct Tick {
    /// The store's now.
    pub now: Millis,
    /// Promises settled by their deadline.
    pub timed_out: usize,
    /// Leases that expired.
    pub expired: usize,
    /// The next deadline of any kind, if there is one.
    pub next: Option<Millis>,
    /// When the next schedule is due, if one is ([`Schedule::due`]): by then a
    /// runtime fires it.
    pub schedules: Option<Millis>,
}

/// The most schedules [`Store::schedules`] returns of those due.
pub const MAX_DUE: usize = 100;

/// A durable store of promises and tasks.
///
/// Every method is atomic. Writes are acknowledged only once durable. A write carrying
/// a [`Fence`] is refused with [`StoreError::Fenced`] unless the task is acquired at that
/// version.
#[async_trait]
#[diagnostic::on_unimplemented(
    note = "a backend implements `durable::Store`; the library ships MemoryStore and SledStore"
)]
pub trait Store: Debug + Send + Sync + 'static {
    /// The store's clock.
    async fn now(&self) -> Result<Millis, StoreError>;

    /// Creates a promise (and its task), or returns the existing one with `new: false`.
    async fn create(&self, req: CreatePromise) -> Result<Created, StoreError>;

    /// Settles a promise: the first settle wins. Settling fulfils its task and wakes its
    /// waiters in the same step. Returns the promise as stored afterwards.
    async fn settle(&self, req: SettlePromise) -> Result<Promise, StoreError>;

    /// Creates every promise of `family` (each creator before what it created, with
    /// their tasks) in one step, or none: refused with [`StoreError::Conflict`],
    /// writing nothing, if an id is in the store already or twice in `family`, a
    /// creator is neither in the store nor earlier in `family`, or a request is fenced
    /// or settled as pending. No worker sees part of it: the import of a history.
    async fn import(&self, family: Vec<CreatePromise>) -> Result<(), StoreError>;

    /// Asks a pending promise that has a task to cancel. One whose task never started
    /// (never claimed) is settled canceled at once. Otherwise it is marked
    /// [`Promise::canceling`] and its waiters are woken; its task, if held or suspended,
    /// becomes pending at the next version (a holder's writes are refused from then
    /// on), so that the next execution, told by the mark, starts no new call, runs
    /// the undos its steps owe and settles it canceled. A halted task stays halted
    /// until resumed. A settled promise, or one without a task, is returned as it is.
    /// `None` if there is no such promise.
    async fn request_cancel(&self, id: &str) -> Result<Option<Promise>, StoreError>;

    /// Reads a promise; a pending promise past its deadline reads as timed out.
    async fn get(&self, id: &str) -> Result<Option<Promise>, StoreError>;

    /// Searches promises by id prefix, state and tags, in id order, a page at a time.
    async fn search(&self, search: Search) -> Result<Page, StoreError>;

    /// Lists invocations by state, function, tags and creation time, newest first, a
    /// page at a time, without reading their children.
    async fn invocations(&self, query: Invocations) -> Result<Listing, StoreError>;

    /// Reads a task.
    async fn task(&self, id: &str) -> Result<Option<Task>, StoreError>;

    /// Reads the tasks of those of `ids` (each named once) that have one, in no
    /// particular order, in one read: what an operator's page of promises shows beside them.
    /// Pass a page of ids at a time (up to [`MAX_PAGE`]). The default reads them one
    /// by one with [`Store::task`].
    async fn tasks(&self, ids: &[String]) -> Result<Vec<Task>, StoreError> {
        let mut tasks = Vec::new();
        for id in ids {
            tasks.extend(self.task(id).await?);
        }
        Ok(tasks)
    }

    /// Acquires up to `max` ready tasks of a group.
    async fn claim(&self, claim: Claim) -> Result<Vec<Acquired>, StoreError>;

    /// Extends the leases of the tasks `process` holds and names in `held`, all in one
    /// call; returns the fences whose leases it extended, in `held`'s order. A lease
    /// that ran out is not revived, and a task the process holds but does not name (it
    /// lost the answer to its claim) is left to expire and be redelivered.
    async fn heartbeat(&self, process: &str, held: &[Fence], ttl: Millis) -> Result<Vec<Fence>, StoreError>;

    /// Gives a held task back.
    async fn release(&self, fence: &Fence, how: Release) -> Result<(), StoreError>;

    /// Suspends a held task until one of `awaiting` settles: it is held by nobody
    /// meanwhile. Returns false, changing nothing, if one has settled already (resume
    /// now).
    async fn suspend(&self, fence: &Fence, awaiting: &[String]) -> Result<bool, StoreError>;

    /// Makes the halted tasks of a group pending again, as a worker of the group starts
    /// with `code`, the digests of its functions by name: a task halted with a code
    /// digest is resumed only if `code` has another digest for the task's function.
    /// Returns how many.
    async fn resume_halted(&self, group: &str, code: &BTreeMap<String, u64>) -> Result<usize, StoreError>;

    /// Makes one halted task pending again, whatever halted it; false if it was not
    /// halted.
    async fn resume(&self, id: &str) -> Result<bool, StoreError>;

    /// Gives back, at once, the tasks of `group` held by earlier processes of worker
    /// `pid` (process ids `{pid}:{suffix}`, the suffix without `:`, other than
    /// `process`): a worker that starts again knows its predecessor is gone, and need
    /// not wait for its leases. Returns how many. Fencing makes it safe even if that
    /// predecessor still runs.
    async fn release_predecessors(&self, group: &str, pid: &str, process: &str) -> Result<usize, StoreError>;

    /// Deletes finished families, each whole; returns how many. A family goes as one
    /// unit, even if a crash interrupts the purge: until it is gone its top-level id
    /// finds the finished promise, and once it is gone a create of that id starts
    /// afresh, with nothing of the family left over. (A store may delete a large
    /// family over several transactions, its top-level promise last.)
    async fn purge(&self, purge: Purge) -> Result<usize, StoreError>;

    /// Applies deadlines: times out promises, resolves timers, expires leases.
    async fn tick(&self) -> Result<Tick, StoreError>;

    /// Records `worker` (its group, pid, process and functions) as alive for `ttl` ms
    /// from now; its `live_until` is ignored. Workers announce themselves while they
    /// run, so that a task waiting for a group or function nobody serves can be told
    /// apart from one waiting its turn.
    async fn announce(&self, worker: &Worker, ttl: Millis) -> Result<(), StoreError>;

    /// The workers that announced themselves, by group and pid, live or not: a worker
    /// is live while its `live_until` is ahead of the store's now. One gone for
    /// [`FORGET_WORKERS`] is forgotten.
    async fn workers(&self) -> Result<Vec<Worker>, StoreError>;

    /// Sets a limit on tasks ([`Limit`]), after [`Limit::check`]: a limit of that
    /// name already stored is replaced if `replace`, and kept otherwise (so a process
    /// that sets its limits as it starts does not undo an operator's change). Returns
    /// the limit as stored. It applies from the next claim on, in every process:
    /// tasks executing beyond it go on, and no more start until they are within it.
    async fn set_limit(&self, limit: Limit, replace: bool) -> Result<Limit, StoreError>;

    /// Removes the limit named `name`, with its rate's state; false if there was none.
    async fn remove_limit(&self, name: &str) -> Result<bool, StoreError>;

    /// Every limit, in name order, with how many of the tasks it covers execute and
    /// wait.
    async fn limits(&self) -> Result<Vec<LimitState>, StoreError>;

    /// Stores a new schedule at version 1, or, with `replace`, writes over the one of
    /// its id at the next version; one of its id without `replace` is a
    /// [`StoreError::Conflict`]. Returns it as stored.
    async fn put_schedule(&self, schedule: Schedule, replace: bool) -> Result<Schedule, StoreError>;

    /// Writes `schedule` over the stored one if that is still at `schedule.version`,
    /// and creates `fires` (top-level invocations; an id that exists is left as it
    /// is) in the same step. False, with nothing written, if another write came first
    /// or the schedule is gone.
    async fn update_schedule(&self, schedule: Schedule, fires: Vec<CreatePromise>) -> Result<bool, StoreError>;

    /// Removes a schedule; false if there was none. Its fires' invocations stay.
    async fn remove_schedule(&self, id: &str) -> Result<bool, StoreError>;

    /// A schedule by id.
    async fn schedule(&self, id: &str) -> Result<Option<Schedule>, StoreError>;

    /// Every schedule, by id; or, with `due`, those due by then ([`Schedule::due`]),
    /// soonest first, at most [`MAX_DUE`].
    async fn schedules(&self, due: Option<Millis>) -> Result<Vec<Schedule>, StoreError>;

    /// Completes when the promise is settled (at once if it is), or, if `halted`, when
    /// its task is halted (at once if it is). A backend may also return early (a poll
    /// interval passed, the task halted while `halted` is false): callers read again.
    async fn wait(&self, id: &str, halted: bool) -> Result<(), StoreError>;

    /// A signal bumped whenever a task of `group` may have become ready.
    fn ready(&self, group: &str) -> tokio::sync::watch::Receiver<u64>;
}
