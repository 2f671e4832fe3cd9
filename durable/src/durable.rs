//! [`Durable`]: the runtime of one process, over a store.

use std::collections::{BTreeMap, HashMap};
use std::future::IntoFuture;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::sync::{Notify, watch};
use tokio::task::AbortHandle;

use crate::error::Failure;
use crate::promise::{Fence, Millis, Param, Promise, validate_id};
use crate::promise::{State, Task, TaskState};
use crate::runtime::function::Erased;
use crate::runtime::handle::Watch;
use crate::runtime::shared::{Shared, States};
use crate::runtime::worker::PURGE_BATCH;
use crate::store::{CreatePromise, Invocations, Listing, NewTask, Page, Purge, Release, Search, SettlePromise, Worker};
use crate::{Callable, Error, Function, Handle, Result, Schedule, ScheduleSpec, Store, StoreError, Target, codec};

/// The default limit on an encoded payload: 4 MiB.
pub const DEFAULT_MAX_PAYLOAD: usize = 4 << 20;

/// How long a finished invocation is kept by default: a week. Long enough that a
/// client retrying after a weekend's outage still finds its first try's result, and
/// that a person can look into what went wrong last week; short enough that the store
/// holds days of work, not all of it.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);

/// How many promises, or their tasks, an operator's read asks the store for at once:
/// few enough that one read holds the store (and, on sled, the thread) for a few
/// milliseconds at most.
use crate::runtime::fire::READ_PAGE;

/// The durable runtime of one process: it starts invocations, executes the tasks of its
/// group, keeps their leases, and applies deadlines.
///
/// Cloning is cheap and shares the runtime. When the last clone is dropped the runtime
/// stops at once, like a crash: what it held is taken over once the leases expire.
/// [`Durable::shutdown`] stops it gracefully.
///
/// ```
/// use std::sync::Arc;
/// use durable::prelude::*;
///
/// #[durable::function]
/// async fn double(_ctx: &mut Context, x: i64) -> durable::Result<i64> {
///     Ok(2 * x)
/// }
///
/// #[durable::function]
/// async fn quadruple(ctx: &mut Context, x: i64) -> durable::Result<i64> {
///     let twice = ctx.lfc(double, x).await?;
///     ctx.lfc(double, twice).await
/// }
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> durable::Result<()> {
/// let durable = Durable::builder()
///     .store(Arc::new(MemoryStore::new()))
///     .register(quadruple)
///     .build()?;
/// let handle = durable.run("q-1", quadruple, 5).await?;
/// assert_eq!(handle.await?, 20);
/// // The same id never runs twice: a second run attaches to the first.
/// assert_eq!(durable.run("q-1", quadruple, 5).await?.await?, 20);
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Durable {
    pub(crate) shared: Arc<Shared>,
    life: Arc<Life>,
}

/// Stops the background loop and every execution when the last [`Durable`] goes.
#[derive(Debug)]
struct Life {
    shared: Arc<Shared>,
    background: AbortHandle,
    retention: Option<AbortHandle>,
}

impl Life {
    fn stop_background(&self) {
        self.background.abort();
        if let Some(retention) = &self.retention {
            retention.abort();
        }
    }
}

impl Life {
    /// Stops every execution and returns the tasks they held, to be released.
    fn stop(&self) -> Vec<Fence> {
        self.stop_background();
        let running: Vec<_> = self.shared.running.lock().unwrap_or_else(|e| e.into_inner()).drain().collect();
        let held = running
            .into_iter()
            .map(|(fence, running)| {
                running.abort.abort();
                fence
            })
            .collect();
        self.shared.stopped.send_replace(true);
        held
    }
}

/// Gives back tasks held, so that another worker takes them over at once.
async fn release_all(store: &dyn Store, held: &[Fence]) {
    for fence in held {
        // A release refused by the fence means it was no longer ours anyway.
        let _ = store.release(fence, Release::Retry { delay: 0, error: None }).await;
    }
}

impl Drop for Life {
    /// Releases what it held on the tokio runtime it is dropped in, if that still
    /// runs; a runtime that is shutting down runs nothing more, and the tasks then
    /// wait for their leases to end: call [`Durable::shutdown`] before a process exits.
    fn drop(&mut self) {
        let held = self.stop();
        if held.is_empty() {
            return;
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let store = self.shared.store.clone();
            runtime.spawn(async move { release_all(&*store, &held).await });
        }
    }
}

impl Durable {
    /// Starts building a runtime.
    pub fn builder() -> Builder {
        Builder {
            store: None,
            group: "default".into(),
            pid: None,
            registry: HashMap::new(),
            states: States::default(),
            ttl: Duration::from_secs(30),
            max_payload: DEFAULT_MAX_PAYLOAD,
            concurrency: 64,
            window: Duration::from_secs(1),
            suspend_after: Duration::from_secs(1),
            retention: Some(DEFAULT_RETENTION),
            errors: Vec::new(),
        }
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.shared.store
    }

    /// This run's process id: it holds leases, and is new on every start.
    pub fn process(&self) -> &str {
        &self.shared.process
    }

    /// Starts the invocation `id` of `f`, or attaches to it if it exists: the same id
    /// never runs twice. Await it for a handle to its result; it starts here, at
    /// once, unless [`Run::start_after`] or [`Run::start_at`] delays it.
    ///
    /// Ids may not be empty or contain `.`, which child ids use. Attaching to an id
    /// that holds a call of another function, or of this one with other arguments, is
    /// an [`Error::Conflict`]. After [`Durable::shutdown`] it is an error: nothing here
    /// would keep the invocation's lease.
    pub fn run<F: Function>(&self, id: &str, f: F, args: F::Args) -> Run<F> {
        let args = validate_id(id).and_then(|()| codec::encode(id, "the arguments", &args, self.shared.max_payload));
        Run { shared: self.shared.clone(), id: id.to_owned(), f, args, start: (0, 0) }
    }

    /// Starts the invocation `id` of `f` as a task routed to a target (default: this
    /// runtime's group), or attaches to it if it exists. `f` may be a
    /// [`Remote`](crate::Remote): this process needs no stub of it.
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # use durable::prelude::*;
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> durable::Result<()> {
    /// # let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    /// #[durable::function(name = "square")]
    /// async fn square(_ctx: &mut Context, x: i64) -> durable::Result<i64> {
    ///     Ok(x * x)
    /// }
    /// let _worker = Durable::builder().store(store.clone()).group("math").register(square).build()?;
    /// let client = Durable::builder().store(store).group("client").build()?;
    /// let handle = client.rpc("sq-1", Remote::<i64, i64>::named("square"), 7).target("poll://any@math").await?;
    /// assert_eq!(handle.await?, 49);
    /// # Ok(()) }
    /// ```
    pub fn rpc<C: Callable>(&self, id: &str, f: C, args: C::Args) -> Rpc<C> {
        let args = validate_id(id).and_then(|()| codec::encode(id, "the arguments", &args, self.shared.max_payload));
        Rpc {
            shared: self.shared.clone(),
            id: id.to_owned(),
            f,
            args,
            target: None,
            timeout: None,
            tags: BTreeMap::new(),
            key: None,
            priority: 0,
            start: (0, 0),
            unserved_after: None,
        }
    }

    /// A debounced call of `f`: calls with one `key` made within `quiet` of each
    /// other (see [`quiet`](crate::Debounced::quiet)) become one invocation, which starts once the
    /// key has been quiet that long, or at its [`max_wait`](crate::Debounced::max_wait)
    /// after the first of them, with the last call's arguments. Await it for a handle
    /// to that invocation's result, which every call that joined it shares.
    ///
    /// A call made once the invocation has started opens the next one. The key is a
    /// string as it is, anything else its JSON; the calls of one function join.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use durable::prelude::*;
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() -> durable::Result<()> {
    /// #[durable::function(name = "reindex")]
    /// async fn reindex(_ctx: &mut Context, version: u32) -> durable::Result<u32> {
    ///     Ok(version)
    /// }
    /// let durable = Durable::builder().store(std::sync::Arc::new(MemoryStore::new())).register(reindex).build()?;
    /// let mut handles = Vec::new();
    /// for version in 1..=5 {
    ///     handles.push(durable.debounce("catalog", reindex, version).quiet(Duration::from_secs(2)).await?);
    ///     tokio::time::sleep(Duration::from_millis(500)).await;
    /// }
    /// for handle in handles {
    ///     assert_eq!(handle.await?, 5, "one run, with the last arguments");
    /// }
    /// assert_eq!(durable.body_runs()["reindex"], 1);
    /// # Ok(()) }
    /// ```
    pub fn debounce<C: Callable, K: serde::Serialize + ?Sized>(&self, key: &K, f: C, args: C::Args) -> Debounced<C> {
        let args = codec::encode(f.name(), "the arguments", &args, self.shared.max_payload);
        Debounced::new(self.shared.clone(), key, f, args, false)
    }

    /// A debounced call of `f` that keeps every call's arguments: as
    /// [`debounce`](Durable::debounce), but the invocation gets the list of the
    /// arguments of every call that joined it, in the order they were made.
    pub fn debounce_all<T, C, K>(&self, key: &K, f: C, item: T) -> Debounced<C>
    where
        T: serde::Serialize,
        C: Callable<Args = Vec<T>>,
        K: serde::Serialize + ?Sized,
    {
        let args = codec::encode(f.name(), "the arguments", &[item], self.shared.max_payload);
        Debounced::new(self.shared.clone(), key, f, args, true)
    }

    /// Resolves, rejects, cancels and searches promises from outside any invocation.
    pub fn promises(&self) -> Promises<'_> {
        Promises { store: &*self.shared.store, max_payload: self.shared.max_payload }
    }

    /// Creates, steers and lists schedules, which this runtime fires with every other
    /// runtime of its store: see [`Schedules`].
    pub fn schedules(&self) -> Schedules<'_> {
        Schedules { store: &*self.shared.store, group: &self.shared.group, shared: Some(&self.shared) }
    }

    /// How many times each function's body ran in this runtime, attempts and replays
    /// included: a measure of the at-least-once in "at-least-once bodies".
    pub fn body_runs(&self) -> BTreeMap<String, u64> {
        self.shared.runs.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Reads a promise without waiting: its state, and its value once settled.
    pub async fn get(&self, id: &str) -> Result<Option<Promise>> {
        Ok(self.shared.store.get(id).await?)
    }

    /// Runs until [`Durable::shutdown`] is called on a clone, executing the tasks of
    /// this runtime's group meanwhile (which it does from the moment it is built).
    pub async fn serve(&self) -> Result<()> {
        let mut stopped = self.shared.stopped.subscribe();
        let _ = stopped.wait_for(|s| *s).await;
        Ok(())
    }

    /// Stops taking tasks and gives back the ones held, so that another worker takes
    /// them over at once. Call it before a process exits: dropping the last handle
    /// releases them too, but only if the tokio runtime still runs then, and one
    /// that is shutting down (at the end of `#[tokio::main]`) runs nothing more,
    /// leaving them to wait for their leases to end.
    pub async fn shutdown(&self) -> Result<()> {
        let held = self.life.stop();
        release_all(&*self.shared.store, &held).await;
        Ok(())
    }
}

/// Configures a [`Durable`].
#[must_use]
pub struct Builder {
    store: Option<Arc<dyn Store>>,
    group: String,
    pid: Option<String>,
    registry: HashMap<String, Arc<dyn Erased>>,
    states: States,
    ttl: Duration,
    max_payload: usize,
    concurrency: usize,
    window: Duration,
    suspend_after: Duration,
    retention: Option<Duration>,
    errors: Vec<String>,
}

impl std::fmt::Debug for Builder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Builder").field("group", &self.group).field("pid", &self.pid).finish()
    }
}

impl Builder {
    /// The store (required). Several runtimes may share one.
    pub fn store(mut self, store: Arc<dyn Store>) -> Builder {
        self.store = Some(store);
        self
    }

    /// The worker group this runtime executes tasks of (default `default`).
    pub fn group(mut self, group: impl Into<String>) -> Builder {
        self.group = group.into();
        self
    }

    /// The stable name this worker routes by, kept across restarts (default: random).
    pub fn pid(mut self, pid: impl Into<String>) -> Builder {
        self.pid = Some(pid.into());
        self
    }

    /// Registers a function, so that tasks calling it can run here.
    ///
    /// Several versions of one function may be registered side by side
    /// (`#[durable::function(name = "f", version = 2)]` beside the old code, kept
    /// as version 1): an invocation or remote call runs the version it was started
    /// with, on a worker that registers that version.
    pub fn register<F: Function>(mut self, f: F) -> Builder {
        let (name, version) = (f.name().to_owned(), f.version());
        if name.contains('@') {
            self.errors.push(format!("function {name:?}: a name may not contain '@', which comes before a version"));
        }
        if version == 0 {
            self.errors.push(format!("function {name:?}: versions count from 1"));
        }
        let key = crate::promise::function_key(&name, version).into_owned();
        if self.registry.insert(key, Arc::new(f)).is_some() {
            self.errors.push(format!("function {name:?} version {version} is registered twice"));
        }
        self
    }

    /// Application state for the functions this runtime executes: a database pool, an
    /// HTTP client, settings. A body reaches it with
    /// [`Context::state`](crate::Context::state), in a local call as in a remote one,
    /// and in a replay check built from this builder ([`Builder::checker`]). One value
    /// of each type: wrap two of one type in types of their own.
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # use durable::prelude::*;
    /// struct Prices {
    ///     per_unit: u64,
    /// }
    ///
    /// #[durable::function]
    /// async fn quote(ctx: &mut Context, units: u64) -> durable::Result<u64> {
    ///     let prices = ctx.state::<Prices>()?;
    ///     Ok(units * prices.per_unit)
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> durable::Result<()> {
    /// let durable = Durable::builder()
    ///     .store(Arc::new(MemoryStore::new()))
    ///     .state(Prices { per_unit: 7 })
    ///     .register(quote)
    ///     .build()?;
    /// assert_eq!(durable.run("quote-1", quote, 3).await?.await?, 21);
    /// # Ok(()) }
    /// ```
    pub fn state<T: Send + Sync + 'static>(mut self, value: T) -> Builder {
        if !self.states.insert(value) {
            self.errors.push(format!("state of type {} is set twice", std::any::type_name::<T>()));
        }
        self
    }

    /// The lease of a held task (default 30 s); heartbeats renew it every third of it.
    pub fn lease(mut self, ttl: Duration) -> Builder {
        self.ttl = ttl;
        self
    }

    /// The largest encoded arguments or result (default [`DEFAULT_MAX_PAYLOAD`]).
    pub fn max_payload(mut self, bytes: usize) -> Builder {
        self.max_payload = bytes;
        self
    }

    /// How many tasks may execute at once (default 64).
    pub fn concurrency(mut self, tasks: usize) -> Builder {
        self.concurrency = tasks;
        self
    }

    /// How long a task routed to `poll://any@group/pid` waits for worker `pid` before
    /// any worker of the group may take it (default 1 s).
    pub fn preference_window(mut self, window: Duration) -> Builder {
        self.window = window;
        self
    }

    /// How long an invocation blocked on promises settled elsewhere (remote calls,
    /// sleeps, external promises) stays in memory before its task suspends, freeing
    /// its slot and lease until one settles (default 1 s). In memory it continues
    /// without replay; suspended it replays when redelivered.
    pub fn suspend_after(mut self, after: Duration) -> Builder {
        self.suspend_after = after;
        self
    }

    /// How long a finished invocation is kept, counted from when it settled (default
    /// [`DEFAULT_RETENTION`], a week); `None` keeps everything. Once it is over, the
    /// runtime deletes the invocation with everything under it: its id may then run
    /// again, afresh. So "the same id never runs twice" holds within the retention.
    ///
    /// Every runtime of a store takes part in deleting (the shortest retention among
    /// them wins); a root is deleted only when nothing under it is pending, and a
    /// detached invocation is kept as long as its own retention says.
    pub fn retention(mut self, keep: Option<Duration>) -> Builder {
        self.retention = keep;
        self
    }

    /// The replay check of these functions ([`Checker`]), instead of a runtime: it
    /// needs no store and starts nothing, so it may be built from the service's own
    /// registrations without taking any task.
    ///
    /// [`Checker`]: crate::Checker
    pub fn checker(self) -> Result<crate::Checker> {
        if !self.errors.is_empty() {
            return Err(Error::Runtime(format!("cannot build the checker: {}", self.errors.join("; "))));
        }
        Ok(crate::Checker::new(self.registry, self.states, self.max_payload))
    }

    /// Builds the runtime and starts it. Must be called within a tokio runtime.
    pub fn build(mut self) -> Result<Durable> {
        if self.store.is_none() {
            self.errors.push("no store: call Builder::store".into());
        }
        if self.ttl < Duration::from_millis(3) {
            self.errors.push(format!("the lease of {:?} is too short", self.ttl));
        }
        if self.concurrency == 0 {
            self.errors.push("a concurrency of 0 would never run anything".into());
        }
        if let Some(keep) = self.retention.filter(|keep| *keep < Duration::from_secs(1)) {
            self.errors.push(format!(
                "a retention of {keep:?} could delete a result before its caller reads it: keep at least 1 s, or None"
            ));
        }
        if tokio::runtime::Handle::try_current().is_err() {
            self.errors.push("Builder::build must be called within a tokio runtime".into());
        }
        if let Err(e) = format!("poll://any@{}/{}", self.group, self.pid.as_deref().unwrap_or("x")).parse::<Target>() {
            self.errors.push(format!("the group or pid is not a valid name: {e}"));
        }
        if !self.errors.is_empty() {
            return Err(Error::Runtime(format!("cannot build the runtime: {}", self.errors.join("; "))));
        }
        let pid = self.pid.unwrap_or_else(|| format!("{:08x}", crate::promise::random() as u32));
        let process = format!("{pid}:{:016x}", crate::promise::random());
        let shared = Arc::new(Shared {
            store: self.store.expect("checked above"),
            group: self.group,
            pid,
            process,
            registry: self.registry,
            states: self.states,
            ttl: self.ttl.as_millis() as Millis,
            max_payload: self.max_payload,
            concurrency: self.concurrency,
            window: self.window.as_millis() as Millis,
            suspend_after: self.suspend_after,
            wake: Notify::new(),
            tick_soon: std::sync::atomic::AtomicBool::new(false),
            runs: Mutex::new(BTreeMap::new()),
            running: Mutex::new(HashMap::new()),
            stopped: watch::Sender::new(false),
            checking: false,
            unserved: Mutex::new(HashMap::new()),
        });
        let background = tokio::spawn(crate::runtime::worker::background(shared.clone())).abort_handle();
        let retention = self
            .retention
            .map(|keep| tokio::spawn(crate::runtime::worker::retention(shared.store.clone(), keep)).abort_handle());
        Ok(Durable { life: Arc::new(Life { shared: shared.clone(), background, retention }), shared })
    }
}

/// A top-level invocation routed to a target: see [`Durable::rpc`].
#[must_use = "an rpc does nothing until it is awaited"]
pub struct Rpc<C: Callable> {
    shared: Arc<Shared>,
    id: String,
    f: C,
    args: Result<String>,
    target: Option<Result<Target>>,
    timeout: Option<Duration>,
    tags: BTreeMap<String, String>,
    key: Option<Result<String>>,
    priority: i32,
    start: (Millis, Millis),
    unserved_after: Option<Duration>,
}

impl<C: Callable> std::fmt::Debug for Rpc<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rpc").field("id", &self.id).field("function", &self.f.name()).finish()
    }
}

impl<C: Callable> Rpc<C> {
    /// Routes the task to this target: a URL such as `"poll://any@gpu"` (see
    /// [`Target`]), or a `Target`. A malformed URL is an [`Error::InvalidTarget`]
    /// when awaited, before anything is written.
    pub fn target<T>(mut self, target: T) -> Self
    where
        T: TryInto<Target>,
        T::Error: Into<Error>,
    {
        self.target = Some(target.try_into().map_err(Into::into));
        self
    }

    /// Times the invocation out after this long.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Adds tags to the invocation's promise.
    pub fn tags<K: Into<String>, V: Into<String>>(mut self, tags: impl IntoIterator<Item = (K, V)>) -> Self {
        self.tags.extend(tags.into_iter().map(|(k, v)| (k.into(), v.into())));
        self
    }

    /// Gives the invocation a key, such as an account id, that a per-key
    /// [`Limit`](crate::Limit) counts by: as [`Call::key`](crate::Call::key).
    pub fn key<K: serde::Serialize + ?Sized>(mut self, key: &K) -> Self {
        self.key = Some(crate::codec::call_key(&self.id, key));
        self
    }

    /// Sets the task's priority (default 0): of the tasks ready for a worker, those
    /// of the highest priority are taken first.
    pub fn priority(mut self, priority: i32) -> Self {
        self.priority = priority;
        self
    }

    /// Starts the invocation no sooner than `delay` from now, on the store's clock:
    /// it exists at once (its id is taken, it is listed, it can be canceled), and no
    /// worker runs it before then.
    ///
    /// ```
    /// # use std::{sync::Arc, time::Duration};
    /// # use durable::prelude::*;
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() -> durable::Result<()> {
    /// # let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    /// #[durable::function(name = "remind")]
    /// async fn remind(_ctx: &mut Context, who: String) -> durable::Result<String> {
    ///     Ok(format!("reminded {who}"))
    /// }
    /// let durable = Durable::builder().store(store).register(remind).build()?;
    /// let handle = durable.rpc("remind-ada", remind, "ada".into()).start_after(Duration::from_secs(3600)).await?;
    /// let promise = durable.get("remind-ada").await?.expect("it exists at once");
    /// assert!(!promise.state.is_settled());
    /// assert_eq!(handle.await?, "reminded ada"); // an hour later, on the virtual clock
    /// # Ok(()) }
    /// ```
    pub fn start_after(mut self, delay: Duration) -> Self {
        self.start.0 = delay.as_millis() as Millis;
        self
    }

    /// Starts the invocation no sooner than `at`, on the store's clock: as
    /// [`start_after`](Self::start_after), at a time.
    pub fn start_at(mut self, at: std::time::SystemTime) -> Self {
        self.start.1 = crate::promise::epoch_millis(at);
        self
    }

    /// Makes the handle fail with [`Error::Unserved`] once the task has waited this
    /// long since it was created, still undelivered, for a group that no live worker
    /// serves (a misspelt group, or workers not started). The task itself stays: a
    /// worker that starts later still runs it. Without this a handle waits for as long
    /// as the task does, and this runtime logs a warning once a minute while it does.
    pub fn unserved_after(mut self, after: Duration) -> Self {
        self.unserved_after = Some(after);
        self
    }
}

impl<C: Callable> IntoFuture for Rpc<C> {
    type Output = Result<Handle<C::Output>>;
    type IntoFuture = BoxFuture<'static, Self::Output>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(async move {
            let args = self.args?;
            let target = match self.target {
                Some(target) => target?,
                None => Target::any(self.shared.group.clone()),
            };
            let param = Param::call(self.f.name(), self.f.version(), args);
            let mut req = CreatePromise::new(self.id.clone(), param.clone());
            req.timeout = self.timeout.or_else(|| self.f.timeout()).map(|t| t.as_millis() as Millis);
            req.tags = self.tags;
            let group = target.group.clone();
            let key = self.key.transpose()?;
            let (delay, not_before) = self.start;
            req.task = Some(NewTask {
                window: self.shared.window,
                key,
                priority: self.priority,
                delay,
                not_before,
                ..NewTask::new(target)
            });
            let created = self.shared.store.create(req).await?;
            if created.new && (created.promise.timeout_at != crate::NEVER || delay > 0 || not_before > 0) {
                self.shared.deadline_added();
            }
            check_same_call(&self.id, &created.promise, &param)?;
            let function = crate::promise::function_key(self.f.name(), self.f.version()).into_owned();
            if !created.promise.state.is_settled() {
                self.shared.note_call(&self.id, &group, &function, created.promise.created_at);
            }
            Ok(match self.unserved_after {
                Some(after) => {
                    let watch = Watch { id: self.id, group, function, after, created_at: created.promise.created_at };
                    Handle::watched(watch, self.shared.store.clone())
                }
                None => Handle::stored(self.id, self.shared.store.clone()),
            })
        })
    }
}

/// An invocation run by this runtime: see [`Durable::run`].
#[must_use = "a run does nothing until it is awaited"]
pub struct Run<F: Function> {
    shared: Arc<Shared>,
    id: String,
    f: F,
    args: Result<String>,
    start: (Millis, Millis),
}

impl<F: Function> std::fmt::Debug for Run<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Run").field("id", &self.id).field("function", &self.f.name()).finish()
    }
}

impl<F: Function> Run<F> {
    /// Starts the invocation no sooner than `delay` from now, on the store's clock:
    /// it exists at once (its id is taken, it is listed, it can be canceled), and a
    /// worker of this runtime's group runs it then.
    pub fn start_after(mut self, delay: Duration) -> Self {
        self.start.0 = delay.as_millis() as Millis;
        self
    }

    /// Starts the invocation no sooner than `at`, on the store's clock: as
    /// [`start_after`](Self::start_after), at a time.
    pub fn start_at(mut self, at: std::time::SystemTime) -> Self {
        self.start.1 = crate::promise::epoch_millis(at);
        self
    }
}

impl<F: Function> IntoFuture for Run<F> {
    type Output = Result<Handle<F::Output>>;
    type IntoFuture = BoxFuture<'static, Self::Output>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(async move {
            let Run { shared, id, f, args, start: (delay, not_before) } = self;
            let id = id.as_str();
            let args = args?;
            let shared = &shared;
            if *shared.stopped.borrow() {
                return Err(Error::Runtime(format!(
                    "cannot run {id}: this Durable was shut down; build a new one (or use rpc, which any worker runs)"
                )));
            }
            let key = crate::promise::function_key(f.name(), f.version());
            let Some(func) = shared.registry.get(key.as_ref()) else {
                return Err(Error::NotRegistered {
                    name: key.into_owned(),
                    where_: Some("this Durable (register it with Builder::register)".into()),
                });
            };
            let param = Param::call(f.name(), f.version(), args);
            let mut req = CreatePromise::new(id, param.clone());
            req.timeout = f.timeout().map(|t| t.as_millis() as Millis);
            req.task = Some(NewTask {
                acquire: Some((shared.process.clone(), shared.ttl)),
                delay,
                not_before,
                ..NewTask::new(Target::any(shared.group.clone()))
            });
            // The lease the create takes runs from no earlier than this.
            let sent = tokio::time::Instant::now();
            let created = shared.store.create(req).await?;
            let delayed = delay > 0 || not_before > 0;
            if (created.new && created.promise.timeout_at != crate::NEVER) || delayed {
                shared.deadline_added();
            }
            check_same_call(id, &created.promise, &param)?;
            if let Some(task) = created.acquired {
                let fence = Fence { task: task.id.clone(), version: task.version };
                crate::runtime::worker::spawn(
                    shared.clone(),
                    fence,
                    created.promise,
                    Vec::new(),
                    func.clone(),
                    true,
                    sent,
                );
            }
            Ok(Handle::stored(id.to_owned(), shared.store.clone()))
        })
    }
}

/// A debounced call: see [`Durable::debounce`].
#[must_use = "a debounced call does nothing until it is awaited"]
pub struct Debounced<C: Callable> {
    shared: Arc<Shared>,
    key: Result<String>,
    f: C,
    args: Result<String>,
    all: bool,
    quiet: Duration,
    max_wait: Option<Duration>,
    target: Option<Result<Target>>,
}

impl<C: Callable> std::fmt::Debug for Debounced<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Debounced").field("key", &self.key).field("function", &self.f.name()).finish()
    }
}

impl<C: Callable> Debounced<C> {
    fn new<K: serde::Serialize + ?Sized>(shared: Arc<Shared>, key: &K, f: C, args: Result<String>, all: bool) -> Self {
        let key = codec::call_key(f.name(), key);
        Debounced { shared, key, f, args, all, quiet: Duration::from_secs(1), max_wait: None, target: None }
    }

    /// How long the key must be quiet before the invocation starts (default a second).
    pub fn quiet(mut self, quiet: Duration) -> Self {
        self.quiet = quiet;
        self
    }

    /// How long after the first call the invocation starts at the latest, however
    /// busy its key (default: no limit).
    pub fn max_wait(mut self, max_wait: Duration) -> Self {
        self.max_wait = Some(max_wait);
        self
    }

    /// Routes the invocation to this target (default: this runtime's group).
    pub fn target<T>(mut self, target: T) -> Self
    where
        T: TryInto<Target>,
        T::Error: Into<Error>,
    {
        self.target = Some(target.try_into().map_err(Into::into));
        self
    }
}

impl<C: Callable> IntoFuture for Debounced<C> {
    type Output = Result<Handle<C::Output>>;
    type IntoFuture = BoxFuture<'static, Self::Output>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(async move {
            let (key, args) = (self.key?, self.args?);
            let target = match self.target {
                Some(target) => target?,
                None => Target::any(self.shared.group.clone()),
            };
            let function = crate::promise::function_key(self.f.name(), self.f.version());
            let id = format!("{key}~{:016x}", crate::promise::random());
            validate_id(&id)?;
            let param = Param::call(self.f.name(), self.f.version(), args);
            let mut req = CreatePromise::new(id, param);
            req.timeout = self.f.timeout().map(|t| t.as_millis() as Millis);
            let millis = |d: Duration| d.as_millis().min(u128::from(u64::MAX)) as Millis;
            let debounce = crate::store::Debounce {
                key: format!("{function}/{key}"),
                quiet: millis(self.quiet),
                max_wait: self.max_wait.map_or(crate::NEVER, millis),
                all: self.all,
                max_args: self.shared.max_payload,
            };
            let group = target.group.clone();
            req.task = Some(NewTask { window: self.shared.window, debounce: Some(debounce), ..NewTask::new(target) });
            let created = self.shared.store.create(req).await?;
            // Its start is a deadline: this runtime's loop learns it.
            self.shared.deadline_added();
            let id = created.promise.id;
            if !created.promise.state.is_settled() {
                self.shared.note_call(&id, &group, &function, created.promise.created_at);
            }
            Ok(Handle::stored(id, self.shared.store.clone()))
        })
    }
}

/// An existing invocation must be of the function asked for.
fn check_same_call(id: &str, existing: &Promise, asked: &Param) -> Result<()> {
    let (Param::Call { func, digest, args, .. }, Param::Call { func: name, digest: now, args: now_args, .. }) =
        (&existing.param, asked)
    else {
        return Err(Error::Conflict { id: id.to_owned(), reason: "and is not an invocation".into() });
    };
    let reason = if func != name {
        format!("as a call of {func:?}, not of {name:?}")
    } else if digest != now {
        format!(
            "with other arguments: {} then, {} now",
            crate::codec::truncated(args),
            crate::codec::truncated(now_args)
        )
    } else {
        return Ok(());
    };
    Err(Error::Conflict { id: id.to_owned(), reason })
}

/// One promise of an invocation's tree ([`Promises::tree`]): the promise, its task if
/// it has one (a remote call, an invocation, a detached one), and the promises its
/// body created.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Node {
    /// The promise: its id, what it is (`param`), state, value or error, and times.
    pub promise: Promise,
    /// Its task: where it was routed, its state, attempts at delivery, last fault.
    pub task: Option<Task>,
    /// The promises it created, in call order.
    pub children: Vec<Node>,
}

/// Taken apart one level at a time: a tree as deep as a chain of chosen ids can be
/// is dropped without a call per level.
impl Drop for Node {
    fn drop(&mut self) {
        let mut below = std::mem::take(&mut self.children);
        while let Some(mut node) = below.pop() {
            below.append(&mut node.children);
        }
    }
}

/// Where a promise of a family shows in its tree: under the promise its id is under
/// (a retry's children under the wait before their attempt), or, for a chosen id,
/// under its creator.
fn shown_under(p: &Promise) -> Option<&str> {
    let parent = p.parent.as_deref()?;
    match p.id.rsplit_once('.') {
        Some((above, _)) if p.id.strip_prefix(parent).is_some_and(|rest| rest.starts_with('.')) => Some(above),
        _ => Some(parent),
    }
}

/// Call order: by the last id segment, numbers as numbers, a retry's wait after the
/// calls of the attempt before it.
fn call_order(p: &Promise) -> (bool, bool, Option<u64>, &str) {
    let last = p.id.rsplit('.').next().unwrap_or_default();
    // An undo (`{n}:undo`, `{n}:undo2`, …) follows the step it undoes.
    let step = last.split(':').next().unwrap_or(last);
    let number = step.trim_start_matches('r').parse::<u64>().ok();
    (number.is_none(), step.starts_with('r'), number, last)
}

/// The tasks of `pending` ([`Promises::pending`]) that have waited at least `waited`
/// since their promise was created, still pending, with no worker of `workers` live
/// at `now` that runs their function: see [`Promises::unserved`].
pub(crate) fn unserved(
    pending: &[(Promise, Option<Task>)],
    workers: &[Worker],
    now: Millis,
    waited: Duration,
) -> Vec<Task> {
    let mut unserved = Vec::new();
    for (p, task) in pending {
        if now.saturating_sub(p.created_at) < waited.as_millis() as Millis {
            continue;
        }
        let (Some(func), Some(task)) = (p.param.function_key(), task) else { continue };
        if task.state == TaskState::Pending && !workers.iter().any(|w| w.serves(&task.target.group, &func, now)) {
            unserved.push(task.clone());
        }
    }
    unserved
}

/// Promises from outside any invocation: see [`Durable::promises`].
///
/// ```
/// # use std::sync::Arc;
/// # use durable::prelude::*;
/// #[durable::function]
/// async fn approve(ctx: &mut Context, amount: u64) -> durable::Result<bool> {
///     let decision = ctx.promise::<bool>().id(format!("approval-{amount}")).await?;
///     decision.await
/// }
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> durable::Result<()> {
/// let durable = Durable::builder().store(Arc::new(MemoryStore::new())).register(approve).build()?;
/// let handle = durable.run("payment-1", approve, 500).await?;
/// // Elsewhere, a person decides:
/// # while durable.get("approval-500").await?.is_none() { tokio::task::yield_now().await; }
/// durable.promises().resolve("approval-500", &true).await?;
/// assert!(handle.await?);
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Promises<'a> {
    pub(crate) store: &'a dyn Store,
    pub(crate) max_payload: usize,
}

impl<'a> Promises<'a> {
    /// The promises of `store`, for a program that runs no worker (an operator's tool);
    /// payloads up to [`DEFAULT_MAX_PAYLOAD`].
    pub fn new(store: &'a dyn Store) -> Promises<'a> {
        Promises { store, max_payload: DEFAULT_MAX_PAYLOAD }
    }

    /// Reads a promise.
    pub async fn get(&self, id: &str) -> Result<Option<Promise>> {
        Ok(self.store.get(id).await?)
    }

    /// Searches promises by id prefix, state and tags, a page at a time.
    pub async fn search(&self, search: Search) -> Result<Page> {
        Ok(self.store.search(search).await?)
    }

    /// Resolves a pending promise with `value`. The first settle wins: the promise as
    /// stored afterwards is returned, whoever settled it.
    pub async fn resolve<T: serde::Serialize>(&self, id: &str, value: &T) -> Result<Promise> {
        let value = codec::encode(id, "the value", value, self.max_payload)?;
        self.settle(id, State::Resolved, value).await
    }

    /// Rejects a pending promise with an application error carrying `message`.
    pub async fn reject(&self, id: &str, message: impl std::fmt::Display) -> Result<Promise> {
        let failure = Failure::Application { message: message.to_string(), terminal: true };
        self.settle(id, State::Rejected, failure.encode()).await
    }

    /// Cancels a promise and, if it is an invocation, what it created that is still
    /// pending, at any depth (its children, the promises its bodies created with a
    /// chosen id, theirs), but not the detached invocations it started nor what they
    /// created: they are rejected as canceled, their tasks are no longer delivered,
    /// and whoever awaits them gets [`Error::Canceled`].
    ///
    /// An invocation whose steps carry undos ([`Call::compensate`](crate::Call::compensate))
    /// is asked to cancel instead ([`Store::request_cancel`]): the answer is the
    /// promise still pending and marked [`Promise::canceling`]. Its body stops, runs
    /// again at once with no new call allowed, the undos of its completed steps run,
    /// and then it settles as canceled, with [`Error::Compensated`] saying what was
    /// undone; each routed call under it does the same for its own steps. A call that
    /// never started is canceled at once.
    pub async fn cancel(&self, id: &str) -> Result<Promise> {
        crate::runtime::fire::cancel(self.store, id).await
    }

    /// Every promise of the family of top-level promise `root`, in id order.
    pub(crate) async fn family(&self, root: &str) -> Result<Vec<Promise>> {
        self.search_all(Search { root: Some(root.to_owned()), ..Search::default() }).await
    }

    /// Resumes a halted invocation, whatever halted it: every halted task in its tree
    /// (its own, and those of the remote calls under it) is delivered again, with a
    /// fresh budget of faults. Returns how many; 0 if none was halted.
    ///
    /// A worker that starts resumes its group's halted tasks by itself, except those
    /// halted by nondeterminism, which it resumes only if its code for the task's
    /// function differs from the code that halted (a fixed deploy). This resumes them
    /// regardless: after a fix outside the function's code (a setting it reads, a
    /// function it calls), say.
    pub async fn resume(&self, id: &str) -> Result<usize> {
        let Some(tree) = self.tree(id).await? else {
            return Err(StoreError::NotFound { what: "promise", id: id.to_owned() }.into());
        };
        let (mut nodes, mut resumed) = (vec![&tree], 0);
        while let Some(node) = nodes.pop() {
            nodes.extend(&node.children);
            let Some(task) = node.task.as_ref().filter(|t| t.state == TaskState::Halted) else { continue };
            if self.store.resume(&task.id).await? {
                tracing::info!(id = %task.id, "resumed: its task is delivered again");
                resumed += 1;
            }
        }
        Ok(resumed)
    }

    /// Lists invocations (roots that call a function: those run by id, calls with a
    /// chosen id, detached ones) by state, function, tags and creation time, newest
    /// first, each with its task, a page at a time ([`Store::invocations`]).
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # use durable::prelude::*;
    /// use durable::store::Invocations;
    ///
    /// #[durable::function(name = "greet")]
    /// async fn greet(_ctx: &mut Context, name: String) -> durable::Result<String> {
    ///     Ok(format!("hello, {name}"))
    /// }
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> durable::Result<()> {
    /// let durable = Durable::builder().store(Arc::new(MemoryStore::new())).register(greet).build()?;
    /// for name in ["ada", "alan"] {
    ///     durable.run(&format!("greet-{name}"), greet, name.to_owned()).await?.await?;
    /// }
    /// let query = Invocations { function: Some("greet".into()), limit: 1, ..Invocations::default() };
    /// let first = durable.promises().invocations(query.clone()).await?;
    /// let next = durable.promises().invocations(Invocations { cursor: first.cursor, ..query }).await?;
    /// let ids: Vec<_> = first.invocations.iter().chain(&next.invocations).map(|i| i.promise.id.as_str()).collect();
    /// assert_eq!(ids.len(), 2);
    /// # Ok(()) }
    /// ```
    pub async fn invocations(&self, query: Invocations) -> Result<Listing> {
        Ok(self.store.invocations(query).await?)
    }

    /// The tasks that have waited at least `waited` since their promise was created,
    /// still pending, with no live worker of their group that runs their function
    /// ([`Store::workers`]): a misspelt target or function, workers not running, or a
    /// deploy that has not reached any worker yet. Reads every pending promise: an
    /// operator's question, not a hot path.
    pub async fn unserved(&self, waited: Duration) -> Result<Vec<Task>> {
        let now = self.store.now().await?;
        let workers = self.store.workers().await?;
        Ok(unserved(&self.pending().await?, &workers, now, waited))
    }

    /// Every pending promise, with its task if it has one, in id order: the read
    /// behind the operator's questions (unserved tasks, halted invocations, queues).
    pub(crate) async fn pending(&self) -> Result<Vec<(Promise, Option<Task>)>> {
        let promises = self.search_all(Search { state: Some(State::Pending), ..Search::default() }).await?;
        let mut pending = Vec::with_capacity(promises.len());
        for page in promises.chunks(READ_PAGE) {
            let mut tasks = self.tasks_of(page).await?;
            pending.extend(page.iter().map(|p| (p.clone(), tasks.remove(&p.id))));
        }
        Ok(pending)
    }

    /// Deletes a finished root at once, whatever the retention, with everything under
    /// it: its children, their tasks, and the detached invocations it started. Its id
    /// may then be used again, afresh. Returns false if there was no such promise.
    ///
    /// A root is an invocation run by id, a promise created with a chosen id, or a
    /// detached invocation. Purging one that is pending, or has something pending
    /// under it, or a promise that is not a root, is a conflict, and deletes nothing.
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # use durable::{Durable, MemoryStore};
    /// #[durable::function(name = "greet")]
    /// async fn greet(_ctx: &mut durable::Context, name: String) -> durable::Result<String> {
    ///     Ok(format!("hello, {name}"))
    /// }
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> durable::Result<()> {
    /// let durable = Durable::builder().store(Arc::new(MemoryStore::new())).register(greet).build()?;
    /// durable.run("greet-1", greet, "ada".to_string()).await?.await?;
    /// assert!(durable.promises().purge("greet-1").await?);
    /// assert!(durable.get("greet-1").await?.is_none());
    /// # Ok(()) }
    /// ```
    pub async fn purge(&self, id: &str) -> Result<bool> {
        Ok(self.store.purge(Purge::Root(id.to_owned())).await? == 1)
    }

    /// Deletes every root that settled before `before` (store time, in ms since the
    /// epoch, as [`Promise::settled_at`] gives it), each as [`Promises::purge`] would,
    /// except that a root with something pending under it is left for later. Returns
    /// how many roots it deleted.
    pub async fn purge_finished_before(&self, before: Millis) -> Result<usize> {
        let mut purged = 0;
        loop {
            let n = self.store.purge(Purge::Before { before, limit: PURGE_BATCH }).await?;
            purged += n;
            if n < PURGE_BATCH {
                return Ok(purged);
            }
        }
    }

    /// Invocation `id` as a tree: its promise and task, and under each promise the
    /// promises its body created (the calls under its id, in call order, and those
    /// with a chosen id), each with its task if it has one. A retry's children sit
    /// under the wait that preceded the attempt (`{id}.r{k}`). `None` if there is no
    /// such promise. Reads the family `id` is of ([`Search::root`]): an operator's
    /// question, not a hot path.
    pub async fn tree(&self, id: &str) -> Result<Option<Node>> {
        let Some(top) = self.store.get(id).await? else { return Ok(None) };
        let mut family = self.family(crate::store::state::family_of(&top)).await?;
        let top_at = match family.iter().position(|p| p.id == top.id) {
            Some(at) => at,
            None => {
                family.push(top);
                family.len() - 1
            }
        };
        // Breadth first from `id`, each promise once, by its place in `family`, with
        // where it goes: positions, not promises, are moved and sorted.
        let mut order: Vec<(usize, usize)> = vec![(top_at, 0)];
        {
            let mut under: HashMap<&str, Vec<usize>> = HashMap::new();
            for (at, p) in family.iter().enumerate().filter(|(at, _)| *at != top_at) {
                if let Some(shown) = shown_under(p) {
                    under.entry(shown).or_default().push(at);
                }
            }
            tokio::task::yield_now().await;
            let mut next = 0;
            while next < order.len() {
                let mut children = under.remove(family[order[next].0].id.as_str()).unwrap_or_default();
                children.sort_by_cached_key(|at| call_order(&family[*at]));
                order.extend(children.into_iter().map(|at| (at, next)));
                next += 1;
                if next % 1024 == 0 {
                    tokio::task::yield_now().await;
                }
            }
        }
        tokio::task::yield_now().await;
        // Then the nodes, deepest first into their parents: no recursion, whatever
        // the depth.
        let mut family: Vec<Option<Promise>> = family.into_iter().map(Some).collect();
        let mut nodes = Vec::with_capacity(order.len());
        let mut parents = Vec::with_capacity(order.len());
        // The tasks a page of promises at a time, in one read each.
        for page in order.chunks(READ_PAGE) {
            let promises: Vec<Promise> =
                page.iter().map(|(at, _)| family[*at].take().expect("each promise is placed once")).collect();
            let mut tasks = self.tasks_of(&promises).await?;
            for (promise, (_, parent)) in promises.into_iter().zip(page) {
                let task = tasks.remove(&promise.id);
                nodes.push(Node { promise, task, children: Vec::new() });
                parents.push(*parent);
            }
            tokio::task::yield_now().await;
        }
        while nodes.len() > 1 {
            let mut node = nodes.pop().expect("more than one");
            node.children.reverse();
            let parent = parents[nodes.len()];
            nodes[parent].children.push(node);
            if nodes.len() % 1024 == 0 {
                tokio::task::yield_now().await;
            }
        }
        let mut root = nodes.pop().expect("the top is there");
        root.children.reverse();
        Ok(Some(root))
    }

    /// The tasks of `promises` (those that call a function), by id, in one read.
    async fn tasks_of(&self, promises: &[Promise]) -> Result<HashMap<String, Task>> {
        let calls: Vec<String> =
            promises.iter().filter(|p| matches!(p.param, Param::Call { .. })).map(|p| p.id.clone()).collect();
        if calls.is_empty() {
            return Ok(HashMap::new());
        }
        Ok(self.store.tasks(&calls).await?.into_iter().map(|t| (t.id.clone(), t)).collect())
    }

    /// The promises that wait for someone outside (`ctx.promise()`, or created by
    /// hand with `Param::External`), pending, in id order.
    pub async fn external(&self) -> Result<Vec<Promise>> {
        let pending = self.search_all(Search { state: Some(State::Pending), ..Search::default() }).await?;
        Ok(pending.into_iter().filter(|p| p.param == Param::External).collect())
    }

    /// Every promise `search` finds, page after page.
    async fn search_all(&self, search: Search) -> Result<Vec<Promise>> {
        crate::runtime::fire::search_all(self.store, search).await
    }

    /// Runs invocation `id` again from the top as a new invocation `new_id`: the same
    /// function, version and arguments, routed as the original was. Only a finished
    /// or halted invocation restarts (a running one would run twice); the original is
    /// left as it is. Returns the new invocation's promise; await it with
    /// [`Durable::get`] or a [`Store::wait`].
    pub async fn restart(&self, id: &str, new_id: &str) -> Result<Promise> {
        validate_id(new_id)?;
        let Some(old) = self.store.get(id).await? else {
            return Err(StoreError::NotFound { what: "promise", id: id.to_owned() }.into());
        };
        let task = self.store.task(id).await?;
        let halted = task.as_ref().is_some_and(|t| t.state == TaskState::Halted);
        if !(old.state.is_settled() || halted) {
            return Err(Error::Conflict {
                id: id.to_owned(),
                reason: "and is still running: only a finished or halted invocation restarts".into(),
            });
        }
        let (Param::Call { .. }, Some(task)) = (&old.param, task) else {
            return Err(Error::Conflict { id: id.to_owned(), reason: "and is not an invocation".into() });
        };
        let mut req = CreatePromise::new(new_id, old.param.clone());
        // A family of its own: not its original's creator's, and not detached.
        req.tags =
            old.tags.iter().filter(|(k, _)| !k.starts_with("durable:")).map(|(k, v)| (k.clone(), v.clone())).collect();
        // The same key and priority: a restart is limited as its original was.
        req.task = Some(NewTask { key: task.key, priority: task.priority, ..NewTask::new(task.target) });
        let created = self.store.create(req).await?;
        if !created.new {
            return Err(Error::Conflict { id: new_id.to_owned(), reason: "already: a restart needs a new id".into() });
        }
        tracing::info!(%id, %new_id, "restarted from the top as a new invocation");
        Ok(created.promise)
    }

    async fn settle(&self, id: &str, state: State, value: String) -> Result<Promise> {
        let req = SettlePromise { id: id.to_owned(), state, value, ikey: None, strict: false, fence: None };
        Ok(self.store.settle(req).await?)
    }
}

/// The schedules of a store: records that start an invocation at each fire, which
/// every runtime of the store fires, each fire once. See [`Durable::schedules`].
///
/// ```
/// # use std::time::Duration;
/// # use durable::prelude::*;
/// # use durable::ScheduleSpec;
/// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() -> durable::Result<()> {
/// #[durable::function(name = "tidy")]
/// async fn tidy(_ctx: &mut Context, what: String) -> durable::Result<String> {
///     Ok(format!("tidied {what}"))
/// }
/// let durable = Durable::builder().store(std::sync::Arc::new(MemoryStore::new())).register(tidy).build()?;
/// let every = ScheduleSpec::every(Duration::from_secs(60));
/// let schedule = durable.schedules().create("tidy-tmp", every, tidy, "/tmp".into()).await?;
/// // Every minute, on the minute: the virtual clock starts on one.
/// tokio::time::sleep(Duration::from_secs(150)).await;
/// let fired = durable.schedules().get("tidy-tmp").await?.expect("it exists");
/// assert_eq!(fired.fired, 3);
/// let first = durable.get(&schedule.fire_id(schedule.next.unwrap())).await?.expect("the first fire");
/// assert_eq!(first.value.as_deref(), Some("\"tidied /tmp\""));
/// # Ok(()) }
/// ```
#[derive(Clone, Copy)]
pub struct Schedules<'a> {
    store: &'a dyn Store,
    /// Where a schedule's fires go unless its spec names a target.
    group: &'a str,
    /// The runtime, told of a schedule it should fire.
    shared: Option<&'a Arc<Shared>>,
}

impl std::fmt::Debug for Schedules<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Schedules").field("group", &self.group).finish()
    }
}

impl<'a> Schedules<'a> {
    /// The schedules of `store`, for a program that runs no worker (an operator's
    /// tool): it steers them, and the runtimes of the store fire them. A schedule it
    /// creates sends its fires to group `default` unless its spec names a target.
    pub fn new(store: &'a dyn Store) -> Schedules<'a> {
        Schedules { store, group: "default", shared: None }
    }

    /// Creates schedule `id`: each fire calls `f` with `args`. An id that is taken is
    /// an [`Error::Conflict`]; a spec that cannot work, an
    /// [`Error::InvalidSchedule`] that says what is wrong. Returns it as stored, with
    /// its first fire.
    pub async fn create<C: Callable>(&self, id: &str, spec: ScheduleSpec, f: C, args: C::Args) -> Result<Schedule> {
        self.put(id, spec, f, args, false).await
    }

    /// Creates schedule `id`, or writes over the one of that id with a new spec and
    /// call: its next fire is counted anew, and what it fired so far stays.
    pub async fn replace<C: Callable>(&self, id: &str, spec: ScheduleSpec, f: C, args: C::Args) -> Result<Schedule> {
        self.put(id, spec, f, args, true).await
    }

    async fn put<C: Callable>(
        &self,
        id: &str,
        mut spec: ScheduleSpec,
        f: C,
        args: C::Args,
        replace: bool,
    ) -> Result<Schedule> {
        let invalid = |reason: String| Error::InvalidSchedule { id: id.to_owned(), reason };
        crate::schedule::check_id(id).map_err(invalid)?;
        let args = codec::encode(id, "the arguments", &args, DEFAULT_MAX_PAYLOAD)?;
        spec.target.get_or_insert_with(|| format!("poll://any@{}", self.group));
        let now = self.store.now().await?;
        let times = spec.times().map_err(invalid)?;
        let call = Param::call(f.name(), f.version(), args);
        let mut schedule = Schedule::new(id, spec, call, now, times.after(now.saturating_sub(1)));
        if replace && let Some(old) = self.store.schedule(id).await? {
            (schedule.last, schedule.fired, schedule.skipped, schedule.missed) =
                (old.last, old.fired, old.skipped, old.missed);
        }
        let stored = self.store.put_schedule(schedule, replace).await.map_err(|e| match e {
            StoreError::Conflict { id, .. } => Error::Conflict {
                id: id.clone(),
                reason: format!("as schedule {id:?}: schedules().replace writes over one"),
            },
            e => e.into(),
        })?;
        if let Some(shared) = self.shared {
            shared.deadline_added();
        }
        Ok(stored)
    }

    /// Schedule `id`, if there is one.
    pub async fn get(&self, id: &str) -> Result<Option<Schedule>> {
        Ok(self.store.schedule(id).await?)
    }

    /// Every schedule, by id.
    pub async fn list(&self) -> Result<Vec<Schedule>> {
        Ok(self.store.schedules(None).await?)
    }

    /// Pauses schedule `id`: it fires nothing until resumed. Running fires go on.
    pub async fn pause(&self, id: &str) -> Result<Schedule> {
        crate::runtime::fire::steer(self.store, id, |s, _, _| s.paused = true).await
    }

    /// Resumes schedule `id` from its next fire after now: the fires its pause
    /// passed over are not made up.
    pub async fn resume(&self, id: &str) -> Result<Schedule> {
        let resumed = crate::runtime::fire::steer(self.store, id, |s, times, now| {
            s.paused = false;
            if s.next.is_some_and(|next| next <= now) {
                s.next = times.after(now.saturating_sub(1));
            }
        })
        .await?;
        if let Some(shared) = self.shared {
            shared.deadline_added();
        }
        Ok(resumed)
    }

    /// Fires schedule `id` now (at this second), as its overlap policy says, without
    /// moving its next fire. Returns the fire's invocation id, or `None` if the policy
    /// skipped it. Two triggers in one second are one fire.
    pub async fn trigger(&self, id: &str) -> Result<Option<String>> {
        crate::runtime::fire::trigger(self.store, id).await
    }

    /// Fires schedule `id` at each of its times from `from` to `to`, both included:
    /// each fire once (a time it fired already is left as it is), one after another,
    /// each waiting for the one before. Returns the fires' invocation ids, oldest
    /// first. At most 1000 fires at once: a longer range is an
    /// [`Error::InvalidSchedule`], to be backfilled in parts.
    pub async fn backfill(
        &self,
        id: &str,
        from: std::time::SystemTime,
        to: std::time::SystemTime,
    ) -> Result<Vec<String>> {
        let (from, to) = (crate::promise::epoch_millis(from), crate::promise::epoch_millis(to));
        crate::runtime::fire::backfill(self.store, id, from, to).await
    }

    /// Deletes schedule `id`; false if there was none. The invocations it started
    /// stay.
    pub async fn delete(&self, id: &str) -> Result<bool> {
        Ok(self.store.remove_schedule(id).await?)
    }
}
