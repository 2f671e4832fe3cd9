//! The [`Context`]: every durable operation a function body makes goes through it.

use std::collections::BTreeMap;
use std::future::{Future, IntoFuture};
use std::marker::PhantomData;
use std::panic::Location;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::future::BoxFuture;
use serde::Serialize;
use tracing::Instrument;

use crate::promise::{DETACHED_TAG, Millis, Param, validate_id};
use crate::runtime::execute::{Job, Outcome, Scope, outcome};
use crate::runtime::function::Erased;
use crate::runtime::handle::Watch;
use crate::runtime::invocation::{Found, Invocation};
use crate::store::{CreatePromise, NewTask};
use crate::{Callable, Function, Handle, Result, Retry, State, Target, Undo, codec};

/// The context of one execution of a durable function.
///
/// Each operation mints its child id, `{id}.{n}`, when it is called, counting from 1 in
/// program order. Operations take `&mut self` and the futures they return do not
/// borrow the context, so ids never depend on how concurrent futures are polled:
/// `let a = ctx.lfi(f, 1); let b = ctx.lfi(f, 2);` then awaiting both at once is fine,
/// while two branches that each use `ctx` do not compile. Concurrent work that itself
/// makes durable calls goes through [`Context::lfi`], whose child has its own context.
///
/// # Sagas
///
/// A step can carry the call that undoes it ([`Call::compensate`]). If the attempt
/// fails, or the invocation is canceled ([`Promises::cancel`](crate::Promises::cancel)),
/// the undos of the steps that completed run, last step first, each once, before the
/// function settles, and the error says what was undone
/// ([`Error::Compensated`](crate::Error::Compensated)):
///
/// ```
/// # use durable::prelude::*;
/// # #[durable::function] async fn reserve(_ctx: &mut Context, seat: u32) -> durable::Result<()> { Ok(()) }
/// # #[durable::function] async fn release(_ctx: &mut Context, seat: u32) -> durable::Result<()> { Ok(()) }
/// # #[durable::function] async fn charge(_ctx: &mut Context, cents: u64) -> durable::Result<()> { Err(Error::terminal("declined")) }
/// #[durable::function]
/// async fn book(ctx: &mut Context, seat: u32) -> durable::Result<()> {
///     ctx.lfc(reserve, seat).compensate(release, seat).await?;
///     ctx.lfc(charge, 4200).await // declined: the seat is released
/// }
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> durable::Result<()> {
/// # let durable = Durable::builder().store(std::sync::Arc::new(MemoryStore::new())).register(book).build()?;
/// let failed = durable.run("booking-7", book, 7).await?.await;
/// assert!(matches!(failed, Err(Error::Compensated { undone, .. }) if undone == ["booking-7.1"]));
/// # Ok(()) }
/// ```
pub struct Context {
    inv: Arc<Invocation>,
    id: String,
    /// What child ids start with, if not the id: on attempt `k + 1`, the timer that
    /// waited before it (`{id}.r{k}`), so that each attempt runs afresh.
    prefix: Option<String>,
    deadline: Millis,
    next: u32,
    attempt: u32,
    /// This attempt began in this execution: nothing was recorded under it before.
    fresh: bool,
    pub(crate) scope: Arc<Scope>,
}

/// An undo attached to a step ([`Call::compensate`]), kept by the attempt that made
/// the step: if the attempt fails, or its task is canceled, it runs once the step has
/// resolved.
pub(crate) struct Owed {
    /// The step's number in the attempt: undos run from the highest down.
    pub(crate) n: u32,
    /// The step's id.
    pub(crate) step: String,
    pub(crate) undo: UndoCall,
}

/// The call that undoes a step: local for a local step, routed where the step went
/// for a routed one.
pub(crate) struct UndoCall {
    /// The undo's body, for a local step's undo.
    pub(crate) local: Option<Arc<dyn Erased>>,
    /// Where a routed step's undo is delivered: the step's own target.
    pub(crate) target: Option<Target>,
    /// The call, as the step's promise records it.
    pub(crate) record: Undo,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context").field("id", &self.id).field("next", &self.next).finish()
    }
}

impl Context {
    pub(crate) fn new(inv: Arc<Invocation>, id: String, deadline: Millis, attempt: u32, fresh: bool) -> Context {
        let prefix = (attempt > 1).then(|| retry_timer_id(&id, attempt - 1));
        Context { inv, id, prefix, deadline, next: 0, attempt, fresh, scope: Arc::default() }
    }

    /// The undos this attempt's steps carry.
    pub(crate) fn take_undos(&self) -> Vec<Owed> {
        std::mem::take(&mut *self.scope.undos.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Whether this attempt made a durable call (or sleep, or promise) under its own
    /// id.
    pub(crate) fn made_calls(&self) -> bool {
        self.next > 0
    }

    /// Which attempt of the body this is, from 1: retries count up, replays of the
    /// same attempt after a crash do not.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The id of the promise this body settles.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The application state of type `T` that the builder of the runtime executing
    /// this body set ([`Builder::state`](crate::Builder::state)): the same value for
    /// every call it executes, local or remote. It is not recorded, so what a body
    /// does with it is outside replay, like any code between durable calls: reach
    /// outside effects through steps.
    ///
    /// A runtime with no state of this type cannot run the body: the task is released
    /// to run again (here after a fixed deploy, or on a worker that has the state),
    /// and halts after repeated tries, as on any platform fault; the body gets
    /// [`Error::Halted`](crate::Error::Halted) and should return it.
    pub fn state<T: Send + Sync + 'static>(&self) -> Result<Arc<T>> {
        self.inv.rt.states.get::<T>().ok_or_else(|| {
            self.inv.fail(crate::runtime::invocation::Fault::Platform(format!(
                "{} needs state of type {}, which the runtime's builder does not set (Builder::state)",
                self.id,
                std::any::type_name::<T>()
            )))
        })
    }

    fn mint(&mut self) -> String {
        self.next += 1;
        format!("{}.{}", self.base(), self.next)
    }

    /// What the ids of this attempt's children start with.
    fn base(&self) -> &str {
        self.prefix.as_deref().unwrap_or(&self.id)
    }

    /// Whether this execution runs the code after patch `name`: true for an execution
    /// that reaches this point anew, false for a replay of a history recorded before
    /// the patch was deployed, which went on past this point with the old code.
    ///
    /// Change a function that has invocations in flight by putting the new code
    /// behind a patch and keeping the old:
    ///
    /// ```
    /// # use durable::prelude::*;
    /// # #[durable::function] async fn notify(_ctx: &mut Context, _order: u64) -> durable::Result<()> { Ok(()) }
    /// # #[durable::function] async fn ship(_ctx: &mut Context, _order: u64) -> durable::Result<()> { Ok(()) }
    /// #[durable::function]
    /// async fn fulfil(ctx: &mut Context, order: u64) -> durable::Result<()> {
    ///     if ctx.patched("notify-first").await? {
    ///         ctx.lfc(notify, order).await?; // the new code
    ///     }
    ///     ctx.lfc(ship, order).await // what the old code did
    /// }
    /// ```
    ///
    /// The answer is recorded (a resolved promise `{id}.patched:{name}` that takes no
    /// call number, so the ids of the calls around it do not move) and replayed, and
    /// a body asks each patch once: asked again, it answers the same. A history is
    /// *old* at a patch when it holds a call of the body numbered after it, settled or
    /// not. (A call made with a chosen id, [`Call::id`], takes a number but has none
    /// in its id: a history whose only step past the patch is such a call counts as
    /// new. It stays deterministic, since what the new path calls is checked against
    /// the history by id, but the new path should make that call too.) Once no
    /// invocation in flight takes the old path (the replay check,
    /// [`Checker`](crate::Checker), names the patches each one takes the old path of),
    /// delete the old code and the `patched` call with it: the recorded answers then
    /// go unread.
    ///
    /// A name follows the rules of an id (not empty, no `.`, no control characters);
    /// a malformed one is [`Error::InvalidId`](crate::Error::InvalidId).
    #[track_caller]
    pub fn patched(&mut self, name: &str) -> impl Future<Output = Result<bool>> + Send + 'static {
        let location = Location::caller();
        let ask = Patch {
            inv: self.inv.clone(),
            marker: format!("{}.patched:{name}", self.base()),
            next: format!("{}.{}", self.base(), self.next + 1),
            fresh: self.fresh,
            name: name.to_owned(),
        };
        let span = tracing::debug_span!("call", id = %ask.marker, kind = "patched", replayed = tracing::field::Empty);
        ask.answer(location).instrument(span)
    }

    pub(crate) fn encode_result<T: Serialize>(&self, value: &T) -> Result<String> {
        match codec::encode(&self.id, "the result", value, self.inv.rt.max_payload) {
            Err(crate::Error::Codec { message, .. }) => {
                Err(self.inv.fail(crate::runtime::invocation::Fault::Platform(format!(
                    "the result of {} does not encode: {message}",
                    self.id
                ))))
            }
            other => other,
        }
    }

    /// Local function invocation: starts `f` as a child in this process and returns a
    /// [`Handle`] to await its result later.
    #[track_caller]
    pub fn lfi<F: Function>(&mut self, f: F, args: F::Args) -> Call<F, Lfi> {
        self.call(f, args)
    }

    /// Local function call: runs `f` as a child in this process and returns its result.
    #[track_caller]
    pub fn lfc<F: Function>(&mut self, f: F, args: F::Args) -> Call<F, Lfc> {
        self.call(f, args)
    }

    /// Remote function invocation: a child promise plus a task routed to
    /// [`Call::target`] (default: this runtime's own group); returns a [`Handle`].
    /// `f` may be a [`Remote`](crate::Remote): the function need not exist here.
    #[track_caller]
    pub fn rfi<C: Callable>(&mut self, f: C, args: C::Args) -> Call<C, Rfi> {
        self.call(f, args)
    }

    /// Remote function call: like [`Context::rfi`], and waits for the result.
    #[track_caller]
    pub fn rfc<C: Callable>(&mut self, f: C, args: C::Args) -> Call<C, Rfc> {
        self.call(f, args)
    }

    /// Starts `f` as a new top-level invocation that outlives this one; returns its id.
    /// The id is derived (`{id}.{n}`) unless [`Call::id`] sets one; its timeout is its
    /// own, not capped by the caller's, and cancelling the caller does not cancel it.
    #[track_caller]
    pub fn detached<C: Callable>(&mut self, f: C, args: C::Args) -> Call<C, Detach> {
        self.call(f, args)
    }

    #[track_caller]
    fn call<C: Callable, M>(&mut self, f: C, args: C::Args) -> Call<C, M> {
        let id = self.mint();
        let args = codec::encode(&id, "the arguments", &args, self.inv.rt.max_payload);
        Call {
            inv: self.inv.clone(),
            scope: self.scope.clone(),
            n: self.next,
            undo: None,
            fresh: self.fresh && !self.inv.rt.checking,
            deferred: None,
            id,
            deadline: self.deadline,
            f,
            args,
            retry: None,
            timeout: None,
            version: None,
            tags: BTreeMap::new(),
            target: None,
            key: None,
            priority: 0,
            start: (0, 0),
            unserved_after: None,
            watch: None,
            chosen: None,
            location: Location::caller(),
            mode: PhantomData,
        }
    }

    /// A durable timer: resolves after `duration` on the store's clock. A long sleep
    /// suspends the task, so no worker holds anything while it waits.
    #[track_caller]
    pub fn sleep(&mut self, duration: Duration) -> impl Future<Output = Result<()>> + Send + 'static {
        let (inv, id, location) = (self.inv.clone(), self.mint(), Location::caller());
        let span = tracing::debug_span!(
            "call",
            id = %id,
            kind = "sleep",
            duration_ms = duration.as_millis() as u64,
            replayed = tracing::field::Empty,
        );
        async move {
            let mut req = CreatePromise::new(id.clone(), Param::Timer);
            req.timeout = Some(duration.as_millis() as Millis);
            let found = inv.find_or_create(req, location).await?;
            tracing::Span::current().record("replayed", found.replayed());
            Handle::<()>::remote(id, inv).await
        }
        .instrument(span)
    }

    /// A promise that someone outside settles, through
    /// [`Durable::promises`](crate::Durable::promises): hand out [`Handle::id`], then
    /// await the handle.
    #[track_caller]
    pub fn promise<T>(&mut self) -> Promised<T> {
        Promised {
            inv: self.inv.clone(),
            id: self.mint(),
            chosen: None,
            deadline: self.deadline,
            timeout: None,
            tags: BTreeMap::new(),
            location: Location::caller(),
            output: PhantomData,
        }
    }

    /// The store's time, recorded once and replayed.
    #[track_caller]
    pub fn now(&mut self) -> impl Future<Output = Result<SystemTime>> + Send + 'static {
        let record = self.record("now");
        async move {
            let ms: u64 =
                record.run(|inv| async move { inv.rt.store.now().await.map_err(|e| inv.store_fault(e)) }).await?;
            Ok(UNIX_EPOCH + Duration::from_millis(ms))
        }
    }

    /// A random number, recorded once and replayed.
    #[track_caller]
    pub fn random(&mut self) -> impl Future<Output = Result<u64>> + Send + 'static {
        let record = self.record("random");
        async move { record.run(|_| async { Ok(crate::promise::random()) }).await }
    }

    /// A random (version 4) UUID, recorded once and replayed.
    #[track_caller]
    pub fn uuid(&mut self) -> impl Future<Output = Result<String>> + Send + 'static {
        let record = self.record("uuid");
        async move {
            record
                .run(|_| async {
                    let (hi, lo) = (crate::promise::random(), crate::promise::random());
                    let hi = (hi & !0xf000) | 0x4000; // version 4
                    let lo = (lo & !(0xc << 60)) | (0x8 << 60); // RFC 4122 variant
                    Ok(format!(
                        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
                        hi >> 32,
                        (hi >> 16) & 0xffff,
                        hi & 0xffff,
                        lo >> 48,
                        lo & 0xffff_ffff_ffff
                    ))
                })
                .await
        }
    }

    #[track_caller]
    fn record(&mut self, what: &'static str) -> Record {
        Record { inv: self.inv.clone(), id: self.mint(), what, location: Location::caller() }
    }
}

/// Puts the chosen `id` in place of the minted one and, the first time, notes the
/// body that created it, which the id no longer tells: the promise's parent.
fn choose(current: &mut String, chosen: &mut Option<String>, id: String) {
    let minted = std::mem::replace(current, id);
    if chosen.is_none() {
        *chosen = Some(crate::promise::creator_of(&minted).unwrap_or_default().to_owned());
    }
}

/// The id of the durable wait after failed attempt `attempt` of promise `id`; the
/// children of the next attempt live under it.
pub(crate) fn retry_timer_id(id: &str, attempt: u32) -> String {
    format!("{id}.r{attempt}")
}

/// A value recorded once: `now`, `random`, `uuid`.
struct Record {
    inv: Arc<Invocation>,
    id: String,
    what: &'static str,
    location: &'static Location<'static>,
}

impl Record {
    async fn run<T, Fut>(self, make: impl FnOnce(Arc<Invocation>) -> Fut) -> Result<T>
    where
        T: Serialize + serde::de::DeserializeOwned,
        Fut: Future<Output = Result<T>>,
    {
        let span = tracing::debug_span!("call", id = %self.id, kind = self.what, replayed = tracing::field::Empty);
        self.record(make).instrument(span).await
    }

    async fn record<T, Fut>(self, make: impl FnOnce(Arc<Invocation>) -> Fut) -> Result<T>
    where
        T: Serialize + serde::de::DeserializeOwned,
        Fut: Future<Output = Result<T>>,
    {
        let param = Param::Record { what: self.what.to_owned() };
        // Replayed, the value is the recorded one; else it is made once, now.
        if let Some(p) = self.inv.replayed(&self.id, &param, self.location)? {
            tracing::Span::current().record("replayed", true);
            return codec::decode(&self.id, &outcome(p)?);
        }
        tracing::Span::current().record("replayed", false);
        let value = make(self.inv.clone()).await?;
        let mut req = CreatePromise::new(self.id.clone(), param);
        req.settled = Some((State::Resolved, codec::encode(&self.id, "the value", &value, usize::MAX)?));
        let found = self.inv.find_or_create(req, self.location).await?;
        codec::decode(&self.id, &outcome(found.promise())?)
    }
}

/// A question [`Context::patched`] asks: does this execution run the code after
/// patch `name`?
struct Patch {
    inv: Arc<Invocation>,
    /// The promise that records a yes: `{base}.patched:{name}`.
    marker: String,
    /// The call numbered next: a history that holds it went on past this point.
    next: String,
    fresh: bool,
    name: String,
}

impl Patch {
    async fn answer(self, location: &'static Location<'static>) -> Result<bool> {
        validate_patch(&self.name)?;
        if let Some(known) = self.inv.patch_answer(&self.marker) {
            return Ok(known);
        }
        let param = Param::Record { what: "patched".into() };
        if self.inv.replayed(&self.marker, &param, location)?.is_some() {
            tracing::Span::current().record("replayed", true);
            return Ok(self.inv.answer_patch(&self.marker, true));
        }
        // Not recorded: a history that went on past this point was recorded before
        // the patch. A fresh attempt has no history, and a settled call would be in
        // the preload; a pending one only the store knows of. The call numbered next
        // may have taken a chosen id, and so not be found by its number: any call
        // numbered later shows the history went on too.
        let old = !self.fresh
            && (self.inv.is_preloaded(&self.next)
                || self.inv.rt.store.get(&self.next).await.map_err(|e| self.inv.store_fault(e))?.is_some()
                || self.inv.holds_call_after(&self.next).await?);
        if old {
            // The answer may be recorded where the preload does not reach: a history
            // the replay check reads from the store, not the claim's preload.
            let recorded = self.inv.rt.store.get(&self.marker).await.map_err(|e| self.inv.store_fault(e))?;
            if let Some(p) = recorded {
                self.inv.verify(&self.marker, &p.param, &param, location)?;
                tracing::Span::current().record("replayed", true);
                return Ok(self.inv.answer_patch(&self.marker, true));
            }
        }
        tracing::Span::current().record("replayed", old);
        if old {
            self.inv.old_path(&self.name);
            return Ok(self.inv.answer_patch(&self.marker, false));
        }
        let mut req = CreatePromise::new(self.marker.clone(), param);
        req.settled = Some((State::Resolved, "true".into()));
        // Lost in a crash, it is made again: the history then holds nothing past here
        // either, unless a later durable write covered it.
        req.durable = false;
        self.inv.find_or_create(req, location).await?;
        Ok(self.inv.answer_patch(&self.marker, true))
    }
}

/// A patch's name follows the rules of an id.
fn validate_patch(name: &str) -> Result<()> {
    validate_id(name).map_err(|_| crate::Error::InvalidId {
        id: name.to_owned(),
        reason: "a patch name may not be empty, contain '.' or control characters, or exceed 1024 bytes",
    })
}

mod sealed {
    #[diagnostic::on_unimplemented(
        message = "`.retry(…)` applies to local calls (`lfc`, `lfi`) only",
        label = "a remote call",
        note = "a remote call (`rfc`, `rfi`, `detached`) is retried by the remote function's own policy, the one its worker registers with `#[durable::function(retry = …)]`"
    )]
    pub trait Local {}
    #[diagnostic::on_unimplemented(
        message = "`.target(…)` applies to remote calls (`rfc`, `rfi`, `detached`) only",
        label = "a local call",
        note = "a local call (`lfc`, `lfi`) runs in this process; call `rfc` or `rfi` to route it to a group"
    )]
    pub trait Routed {}
    #[diagnostic::on_unimplemented(
        message = "`.unserved_after(…)` applies to remote calls that are awaited (`rfc`, `rfi`) only",
        label = "not an awaited remote call",
        note = "a detached call outlives its caller, which does not wait for it; a local call runs in this process"
    )]
    pub trait Awaited {}
}

/// A [`Call`] made with [`Context::lfi`]: yields a [`Handle`].
#[derive(Debug)]
pub struct Lfi;
/// A [`Call`] made with [`Context::lfc`]: yields the result.
#[derive(Debug)]
pub struct Lfc;
/// A [`Call`] made with [`Context::rfi`]: yields a [`Handle`].
#[derive(Debug)]
pub struct Rfi;
/// A [`Call`] made with [`Context::rfc`]: yields the result.
#[derive(Debug)]
pub struct Rfc;
/// A [`Call`] made with [`Context::detached`]: yields the new invocation's id.
#[derive(Debug)]
pub struct Detach;

impl sealed::Local for Lfi {}
impl sealed::Local for Lfc {}
impl sealed::Routed for Rfi {}
impl sealed::Routed for Rfc {}
impl sealed::Routed for Detach {}
impl sealed::Awaited for Rfi {}
impl sealed::Awaited for Rfc {}

/// A durable call, ready to be configured and awaited.
///
/// Its id was minted when it was made. Awaiting it creates the child promise (or, on
/// replay, finds it recorded) and starts it. What awaiting yields depends on how it
/// was made: see [`Lfi`], [`Lfc`], [`Rfi`], [`Rfc`] and [`Detach`].
#[must_use = "a call does nothing until it is awaited"]
pub struct Call<C: Callable, M> {
    inv: Arc<Invocation>,
    /// The caller's attempt: its local children, and the undos its steps carry.
    scope: Arc<Scope>,
    /// The call's number in its attempt.
    n: u32,
    /// Set by `compensate`.
    undo: Option<Box<Result<UndoCall>>>,
    /// Made by a fresh attempt: nothing is recorded under the caller.
    fresh: bool,
    /// Set by `begin` when the creation of a local child is deferred.
    deferred: Option<tokio::sync::watch::Receiver<bool>>,
    id: String,
    deadline: Millis,
    f: C,
    args: Result<String>,
    retry: Option<Retry>,
    timeout: Option<Duration>,
    version: Option<u32>,
    tags: BTreeMap<String, String>,
    target: Option<Result<Target>>,
    key: Option<Result<String>>,
    priority: i32,
    /// A delayed start: not delivered until this long after it is created, nor
    /// before this time.
    start: (Millis, Millis),
    unserved_after: Option<Duration>,
    /// Set by `begin` for a pending routed call made with `unserved_after`.
    watch: Option<Watch>,
    /// Set by [`Call::id`] to the creator's id: the id was chosen, not minted, and is
    /// checked when awaited.
    chosen: Option<String>,
    location: &'static Location<'static>,
    mode: PhantomData<M>,
}

impl<C: Callable, M> std::fmt::Debug for Call<C, M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Call").field("id", &self.id).field("function", &self.f.name()).finish()
    }
}

impl<C: Callable, M> Call<C, M> {
    /// Uses this id instead of the minted one (the count still advances). It follows
    /// the rules of a top-level id; a malformed one is an error when the call is
    /// awaited, before anything is written. The promise is not under this
    /// invocation's prefix, but it is of its family: its
    /// [`Promise::parent`](crate::Promise::parent) is the body that created it,
    /// retention keeps it as long as the invocation, and cancelling that body cancels
    /// it too (unless it is detached).
    pub fn id(mut self, id: impl Into<String>) -> Self {
        choose(&mut self.id, &mut self.chosen, id.into());
        self
    }

    /// Times out after this long (capped by the caller's own deadline, except for a
    /// detached call).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Records this version instead of the function's.
    pub fn version(mut self, version: u32) -> Self {
        self.version = Some(version);
        self
    }

    /// Adds tags to the child promise.
    pub fn tags<K: Into<String>, V: Into<String>>(mut self, tags: impl IntoIterator<Item = (K, V)>) -> Self {
        self.tags.extend(tags.into_iter().map(|(k, v)| (k.into(), v.into())));
        self
    }
}

impl<C: Callable, M> Call<C, M> {
    /// Retries with this policy instead of the function's. Local calls only: a remote
    /// call is retried by the policy its worker registers.
    pub fn retry(mut self, retry: Retry) -> Self
    where
        M: sealed::Local,
    {
        self.retry = Some(retry);
        self
    }
}

impl<C: Callable, M> Call<C, M> {
    /// Routes the task to this target: a URL such as `"poll://any@exp/lhs"` (see
    /// [`Target`]), or a `Target`. A malformed URL is an [`Error::InvalidTarget`]
    /// when the call is awaited, before anything is written.
    ///
    /// [`Error::InvalidTarget`]: crate::Error::InvalidTarget
    pub fn target<T>(mut self, target: T) -> Self
    where
        M: sealed::Routed,
        T: TryInto<Target>,
        T::Error: Into<crate::Error>,
    {
        self.target = Some(target.try_into().map_err(Into::into));
        self
    }

    /// Gives the call a key, such as an account id: a per-key
    /// [`Limit`](crate::Limit) counts each key on its own, so that, at a concurrency
    /// of 1, the calls of one key run one at a time, in the order they were made. A
    /// string is the key as it is; anything else, its JSON. A key that does not
    /// encode, is empty or longer than 256 bytes, or holds control characters is an
    /// [`Error::InvalidKey`](crate::Error::InvalidKey) when the call is awaited,
    /// before anything is written.
    pub fn key<K: serde::Serialize + ?Sized>(mut self, key: &K) -> Self
    where
        M: sealed::Routed,
    {
        self.key = Some(crate::codec::call_key(&self.id, key));
        self
    }

    /// Sets the task's priority (default 0): of the tasks ready for a worker, those
    /// of the highest priority are taken first.
    pub fn priority(mut self, priority: i32) -> Self
    where
        M: sealed::Routed,
    {
        self.priority = priority;
        self
    }

    /// Starts the call no sooner than `delay` after it is created, on the store's
    /// clock: it exists at once (its id is taken, it is listed, it can be canceled),
    /// and no worker runs it before then. A replay finds it created, with the start
    /// it was given.
    pub fn start_after(mut self, delay: Duration) -> Self
    where
        M: sealed::Routed,
    {
        self.start.0 = delay.as_millis() as Millis;
        self
    }

    /// Starts the call no sooner than `at`, on the store's clock: as
    /// [`start_after`](Self::start_after), at a time.
    pub fn start_at(mut self, at: std::time::SystemTime) -> Self
    where
        M: sealed::Routed,
    {
        self.start.1 = crate::promise::epoch_millis(at);
        self
    }
}

impl<C: Callable, M: sealed::Awaited> Call<C, M> {
    /// Fails the call with [`Error::Unserved`](crate::Error::Unserved) once it has
    /// waited this long, counted from its creation, still undelivered, with no live
    /// worker of its group that runs its function (a misspelt target or function,
    /// workers not started). It is checked then, and again every quarter of it (at
    /// least a second) while the caller waits in memory; until that first check the
    /// caller does not suspend. The failure is recorded as the call's result, like a
    /// timeout: a replay gets it again, and a worker that starts later does not run
    /// the call.
    ///
    /// Without it the call waits for as long as its group has no worker, and the
    /// caller's runtime logs a warning once a minute while it does.
    pub fn unserved_after(mut self, after: Duration) -> Self {
        self.unserved_after = Some(after);
        self
    }
}

impl<C: Callable, M> Call<C, M> {
    fn attach<U: Callable>(mut self, undo: &U, args: &U::Args, local: Option<Arc<dyn Erased>>) -> Self {
        let encoded = codec::encode(&self.id, "the arguments", args, self.inv.rt.max_payload).map(|args| UndoCall {
            local,
            target: None,
            record: Undo { func: undo.name().to_owned(), version: undo.version(), args },
        });
        self.undo = Some(Box::new(encoded));
        self
    }
}

/// `compensate` for a local step: the undo is a local call too.
macro_rules! compensate_local {
    ($mode:ty) => {
        impl<F: Function> Call<F, $mode> {
            /// Attaches an undo: once this step has resolved, if the attempt that
            /// makes it fails (before the function settles, or before its retry
            /// policy runs it again) or the invocation is canceled, `undo(args)` runs,
            /// as a local call with its own retry policy, exactly once; the undos of
            /// an attempt's steps run last step first. The undo is
            /// recorded with the step ([`Promise::undo`](crate::Promise::undo)).
            ///
            /// The step is written before it runs, so that a step begun before a
            /// crash or a cancel is found, finished and undone. Arguments that do not
            /// encode are an error when the call is awaited, before anything is
            /// written. See the [saga example](crate::Context#sagas).
            pub fn compensate<U: Function>(self, undo: U, args: U::Args) -> Self {
                let local: Arc<dyn Erased> = Arc::new(undo.clone());
                self.attach(&undo, &args, Some(local))
            }
        }
    };
}

/// `compensate` for a routed step: the undo goes where the step went.
macro_rules! compensate_routed {
    ($mode:ty) => {
        impl<C: Callable> Call<C, $mode> {
            /// Attaches an undo: once this step has resolved, if the attempt that
            /// makes it fails (before the function settles, or before its retry
            /// policy runs it again) or the invocation is canceled, `undo(args)` runs,
            /// routed to the step's target and retried by its worker's policy, exactly
            /// once; the undos of an attempt's steps run last step first. A step still running then is asked to cancel first (it undoes
            /// its own steps), and undone if it resolved anyway. The undo is recorded
            /// with the step ([`Promise::undo`](crate::Promise::undo)).
            ///
            /// Arguments that do not encode, or an undo that no live worker of the
            /// target's group serves ([`Error::NotRegistered`](crate::Error::NotRegistered)),
            /// are an error when the call is awaited, before anything is written.
            pub fn compensate<U: Callable>(self, undo: U, args: U::Args) -> Self {
                self.attach(&undo, &args, None)
            }
        }
    };
}

compensate_local!(Lfc);
compensate_local!(Lfi);
compensate_routed!(Rfc);
compensate_routed!(Rfi);

/// What creating a call's promise found.
enum Begun {
    /// Settled already (recorded, or settled before this run).
    Settled(Outcome),
    /// Pending: `new` if this run created it.
    Pending { timeout_at: Millis, new: bool },
}

impl<C: Callable, M> Call<C, M> {
    /// The span of this call: its id, kind, function, and, once known, its target and
    /// whether it was replayed.
    fn span(&self, kind: &'static str) -> tracing::Span {
        tracing::debug_span!(
            "call",
            id = %self.id,
            kind,
            function = self.f.name(),
            target = tracing::field::Empty,
            replayed = tracing::field::Empty,
        )
    }

    /// Creates the child promise (and its task, for a routed call), or finds it.
    async fn begin(&mut self, routed: bool, detached: bool) -> Result<(String, Begun)> {
        if self.chosen.is_some() {
            validate_id(&self.id)?;
        }
        let args = match &self.args {
            Ok(args) => args.clone(),
            Err(e) => return Err(clone_error(e)),
        };
        let mut undo = match self.undo.take().map(|undo| *undo) {
            Some(Ok(undo)) => Some(undo),
            Some(Err(e)) => return Err(e),
            None => None,
        };
        let task = if routed {
            let target = match self.target.take() {
                Some(target) => target?,
                None => Target::any(self.inv.rt.group.clone()),
            };
            if let Some(undo) = &mut undo {
                self.served(&target.group, undo).await?;
                undo.target = Some(target.clone());
            }
            let key = match self.key.take() {
                Some(key) => Some(key?),
                None => None,
            };
            let (delay, not_before) = self.start;
            Some(NewTask {
                window: self.inv.rt.window,
                key,
                priority: self.priority,
                delay,
                not_before,
                ..NewTask::new(target)
            })
        } else {
            None
        };
        let version = self.version.unwrap_or_else(|| self.f.version());
        let mut req = CreatePromise::new(self.id.clone(), Param::call(self.f.name(), version, args));
        req.parent = self.chosen.clone();
        req.timeout = self.timeout.or_else(|| self.f.timeout()).map(|t| t.as_millis() as Millis);
        if !detached {
            req.deadline_cap = self.deadline;
        }
        req.tags = std::mem::take(&mut self.tags);
        if detached {
            req.tags.insert(DETACHED_TAG.into(), "true".into());
        }
        // A local child's creation need not be on disk before it runs: replay creates
        // it again, and the durable settle of its result covers it.
        // A step with an undo is written before it runs: one begun is finished and
        // undone, whatever stops its caller.
        req.durable = routed || undo.is_some();
        req.task = task;
        req.undo = undo.as_ref().map(|u| Box::new(u.record.clone()));
        if let Some(undo) = undo {
            let owed = Owed { n: self.n, step: self.id.clone(), undo };
            self.scope.undos.lock().unwrap_or_else(|e| e.into_inner()).push(owed);
        }
        // A local child of a fresh attempt, with no deadline of its own and an id
        // under its caller, is created only when something is written under it, or
        // else settled in one write with its result.
        if !routed && self.fresh && self.chosen.is_none() && req.timeout.is_none() && req.undo.is_none() {
            let timeout_at = req.deadline_cap;
            self.deferred = Some(self.inv.defer(req)?);
            tracing::Span::current().record("replayed", false);
            return Ok((self.id.clone(), Begun::Pending { timeout_at, new: true }));
        }
        if let Some(task) = &req.task {
            tracing::Span::current().record("target", tracing::field::display(&task.target));
        }
        let group = req.task.as_ref().map(|task| task.target.group.clone());
        let found = self.inv.find_or_create(req, self.location).await?;
        let replayed = found.replayed();
        tracing::Span::current().record("replayed", replayed);
        if replayed {
            tracing::trace!("replayed: the history has it");
        }
        let begun = match found {
            Found::Stored { promise, new } if !promise.state.is_settled() => {
                if let (Some(group), Some(function)) = (group, promise.param.function_key()) {
                    let function = function.into_owned();
                    self.inv.rt.note_call(&promise.id, &group, &function, promise.created_at);
                    // A replay check stops at a pending call anyway.
                    if let Some(after) = self.unserved_after.filter(|_| !self.inv.rt.checking) {
                        let (id, created_at) = (promise.id.clone(), promise.created_at);
                        self.watch = Some(Watch { id, group, function, after, created_at });
                    }
                }
                Begun::Pending { timeout_at: promise.timeout_at, new }
            }
            found => Begun::Settled(outcome(found.promise())),
        };
        Ok((self.id.clone(), begun))
    }
}

impl<C: Callable, M> Call<C, M> {
    /// Ok if a live worker of the routed undo's group serves its function: checked
    /// when the step is made, not when it is replayed (a replay takes the path the
    /// first run took, whoever is live now).
    async fn served(&self, group: &str, undo: &UndoCall) -> Result<()> {
        if self.inv.is_preloaded(&self.id) || self.inv.rt.checking {
            return Ok(());
        }
        let store = &self.inv.rt.store;
        // A fresh attempt has made nothing yet; a replay may have made this step.
        if !self.fresh && store.get(&self.id).await.map_err(|e| self.inv.store_fault(e))?.is_some() {
            return Ok(());
        }
        let function = crate::promise::function_key(&undo.record.func, undo.record.version);
        let (now, workers) = futures::try_join!(store.now(), store.workers()).map_err(|e| self.inv.store_fault(e))?;
        if workers.iter().any(|w| w.serves(group, &function, now)) {
            return Ok(());
        }
        Err(crate::Error::NotRegistered {
            name: function.into_owned(),
            where_: Some(format!("group {group:?}: no live worker serves it, so it cannot undo {}", self.id)),
        })
    }
}

/// Errors are not `Clone`; an encoding error is reported as what it says.
fn clone_error(e: &crate::Error) -> crate::Error {
    match e {
        crate::Error::PayloadTooLarge { id, what, size, limit } => {
            crate::Error::PayloadTooLarge { id: id.clone(), what, size: *size, limit: *limit }
        }
        crate::Error::Codec { id, what, message } => {
            crate::Error::Codec { id: id.clone(), what: what.clone(), message: message.clone() }
        }
        other => crate::Error::Runtime(other.to_string()),
    }
}

impl<F: Function, M: sealed::Local> Call<F, M> {
    fn job(self, timeout_at: Millis, new: bool) -> Job {
        Job {
            inv: self.inv,
            id: self.id,
            deadline: timeout_at,
            retry: self.retry.or_else(|| self.f.retry()),
            func: Arc::new(self.f),
            args: self.args.expect("checked by begin"),
            fresh: new,
            deferred: self.deferred,
        }
    }
}

impl<F: Function> IntoFuture for Call<F, Lfi> {
    type Output = Result<Handle<F::Output>>;
    type IntoFuture = BoxFuture<'static, Self::Output>;

    fn into_future(mut self) -> Self::IntoFuture {
        let span = self.span("lfi");
        Box::pin(
            async move {
                let (id, begun) = self.begin(false, false).await?;
                Ok(match begun {
                    Begun::Settled(outcome) => Handle::ready(id, outcome),
                    Begun::Pending { timeout_at, new } => {
                        let (tx, rx) = tokio::sync::oneshot::channel();
                        let scope = self.scope.clone();
                        let job = self.job(timeout_at, new);
                        let inv = job.inv.clone();
                        let call = tracing::Span::current();
                        scope.spawn(
                            async move {
                                if let Some(outcome) = job.run().await {
                                    let _ = tx.send(outcome);
                                }
                            }
                            .instrument(call),
                        );
                        Handle::local(id, rx, inv)
                    }
                })
            }
            .instrument(span),
        )
    }
}

impl<F: Function> IntoFuture for Call<F, Lfc> {
    type Output = Result<F::Output>;
    type IntoFuture = BoxFuture<'static, Self::Output>;

    fn into_future(mut self) -> Self::IntoFuture {
        let span = self.span("lfc");
        Box::pin(
            async move {
                let (id, begun) = self.begin(false, false).await?;
                let outcome = match begun {
                    Begun::Settled(outcome) => outcome,
                    Begun::Pending { timeout_at, new } => {
                        let job = self.job(timeout_at, new);
                        let inv = job.inv.clone();
                        match job.run().await {
                            Some(outcome) => outcome,
                            None => Err(inv.check().err().unwrap_or_else(|| crate::Error::Runtime("stopped".into()))),
                        }
                    }
                };
                codec::decode(&id, &outcome?)
            }
            .instrument(span),
        )
    }
}

impl<C: Callable, M: sealed::Awaited> Call<C, M> {
    /// The handle of a pending routed call: watched if `unserved_after` asked.
    fn waited<T>(self, id: String) -> Handle<T> {
        match self.watch {
            Some(watch) => Handle::remote_watched(watch, self.inv),
            None => Handle::remote(id, self.inv),
        }
    }
}

impl<C: Callable> IntoFuture for Call<C, Rfi> {
    type Output = Result<Handle<C::Output>>;
    type IntoFuture = BoxFuture<'static, Self::Output>;

    fn into_future(mut self) -> Self::IntoFuture {
        let span = self.span("rfi");
        Box::pin(
            async move {
                Ok(match self.begin(true, false).await? {
                    (id, Begun::Settled(outcome)) => Handle::ready(id, outcome),
                    (id, Begun::Pending { .. }) => self.waited(id),
                })
            }
            .instrument(span),
        )
    }
}

impl<C: Callable> IntoFuture for Call<C, Rfc> {
    type Output = Result<C::Output>;
    type IntoFuture = BoxFuture<'static, Self::Output>;

    fn into_future(mut self) -> Self::IntoFuture {
        let span = self.span("rfc");
        Box::pin(
            async move {
                match self.begin(true, false).await? {
                    (id, Begun::Settled(outcome)) => codec::decode(&id, &outcome?),
                    (id, Begun::Pending { .. }) => self.waited(id).await,
                }
            }
            .instrument(span),
        )
    }
}

impl<C: Callable> IntoFuture for Call<C, Detach> {
    type Output = Result<String>;
    type IntoFuture = BoxFuture<'static, Self::Output>;

    fn into_future(mut self) -> Self::IntoFuture {
        let span = self.span("detached");
        Box::pin(async move { self.begin(true, true).await.map(|(id, _)| id) }.instrument(span))
    }
}

/// A promise settled from outside, ready to be configured and awaited: see
/// [`Context::promise`].
#[must_use = "a promise is created only when awaited"]
pub struct Promised<T> {
    inv: Arc<Invocation>,
    id: String,
    /// Set by [`Promised::id`] to the creator's id.
    chosen: Option<String>,
    deadline: Millis,
    timeout: Option<Duration>,
    tags: BTreeMap<String, String>,
    location: &'static Location<'static>,
    output: PhantomData<fn() -> T>,
}

impl<T> std::fmt::Debug for Promised<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Promised").field("id", &self.id).finish()
    }
}

impl<T> Promised<T> {
    /// Uses this id instead of the minted one, e.g. one a person can type. It follows
    /// the rules of a top-level id; a malformed one is an error when awaited. The
    /// promise is not under this invocation's prefix, but it is of its family: its
    /// [`Promise::parent`](crate::Promise::parent) is the body that created it,
    /// retention keeps it as long as the invocation, and cancelling that body cancels
    /// it too.
    pub fn id(mut self, id: impl Into<String>) -> Self {
        choose(&mut self.id, &mut self.chosen, id.into());
        self
    }

    /// Times out after this long (capped by the caller's own deadline).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Adds tags, so that whoever settles it can search for it.
    pub fn tags<K: Into<String>, V: Into<String>>(mut self, tags: impl IntoIterator<Item = (K, V)>) -> Self {
        self.tags.extend(tags.into_iter().map(|(k, v)| (k.into(), v.into())));
        self
    }
}

impl<T: serde::de::DeserializeOwned + Send + 'static> IntoFuture for Promised<T> {
    type Output = Result<Handle<T>>;
    type IntoFuture = BoxFuture<'static, Self::Output>;

    fn into_future(self) -> Self::IntoFuture {
        let span = tracing::debug_span!("call", id = %self.id, kind = "promise", replayed = tracing::field::Empty);
        Box::pin(
            async move {
                if self.chosen.is_some() {
                    validate_id(&self.id)?;
                }
                let mut req = CreatePromise::new(self.id.clone(), Param::External);
                req.parent = self.chosen;
                req.timeout = self.timeout.map(|t| t.as_millis() as Millis);
                req.deadline_cap = self.deadline;
                req.tags = self.tags;
                let found = self.inv.find_or_create(req, self.location).await?;
                tracing::Span::current().record("replayed", found.replayed());
                if let Found::Recorded(p) = found {
                    return Ok(Handle::ready(self.id.clone(), outcome(p)));
                }
                Ok(Handle::remote(self.id, self.inv))
            }
            .instrument(span),
        )
    }
}
