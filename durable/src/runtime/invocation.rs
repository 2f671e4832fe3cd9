//! One execution of a task: its fence, its preload, and the fault that stops it.
//!
//! Every store write made while executing the task goes through here, so a fault
//! (a lost lease, a nondeterministic replay, a failed store, a panic) is seen by all of
//! them: after the first fault nothing more is written, and the task is released or
//! halted instead of settling anything wrongly.

use std::collections::HashMap;
use std::panic::Location;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use crate::error::Failure;
use crate::promise::{Fence, Millis, Param, Promise};
use crate::runtime::shared::Shared;
use crate::runtime::wait::{self, Done};
use crate::store::{CreatePromise, Created, SettlePromise};
use crate::{Error, Nondeterminism, Result, StoreError};

/// Why an execution stopped without settling.
#[derive(Debug, Clone)]
pub(crate) enum Fault {
    /// The lease was lost: someone else holds the task now.
    Fenced,
    /// Replay diverged: the task halts until a fixed deploy resumes it.
    Nondeterminism(Nondeterminism),
    /// The store failed, or a result did not encode: released, retried with backoff.
    Platform(String),
    /// A replay check reached the end of the recorded history: it stops, having
    /// written nothing.
    Frontier,
    /// The task's cancellation was asked for while this execution ran: it stops, and
    /// the task, pending again, runs once more to compensate.
    Canceling,
    /// An undo failed for good: the task halts until a person (or a deploy) resumes
    /// it, and the undo is tried again then.
    Undo(String),
}

impl Fault {
    /// The error user code sees for it.
    pub(crate) fn error(&self, task: &str) -> Error {
        match self {
            Fault::Nondeterminism(n) => Error::Nondeterminism(Box::new(n.clone())),
            Fault::Fenced => Error::Halted { id: task.to_owned(), reason: "the lease was lost".into() },
            Fault::Platform(reason) => Error::Halted { id: task.to_owned(), reason: reason.clone() },
            Fault::Frontier => Error::Halted { id: task.to_owned(), reason: "the replay check stopped".into() },
            Fault::Canceling => Error::Canceled { id: task.to_owned() },
            Fault::Undo(reason) => Error::Halted { id: task.to_owned(), reason: reason.clone() },
        }
    }

    /// What the task records when released or halted for it.
    pub(crate) fn record(&self) -> String {
        match self {
            Fault::Nondeterminism(n) => Failure::Nondeterminism(n.clone()).encode(),
            Fault::Fenced => Failure::Other { message: "the lease was lost".into() }.encode(),
            Fault::Platform(reason) => Failure::Other { message: reason.clone() }.encode(),
            Fault::Frontier => Failure::Other { message: "the replay check stopped".into() }.encode(),
            Fault::Canceling => Failure::Other { message: "its cancellation was asked for".into() }.encode(),
            Fault::Undo(reason) => Failure::Other { message: reason.clone() }.encode(),
        }
    }
}

/// What [`Invocation::find_or_create`] found.
// Lives for one call on the stack; boxing the promise would cost every create an
// allocation.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Found<'a> {
    /// Settled, in the preload: a replay.
    Recorded(&'a Promise),
    /// In the store: created by this call if `new`.
    Stored { promise: Promise, new: bool },
}

impl Found<'_> {
    /// Whether the history had it: recorded, or in the store already.
    pub(crate) fn replayed(&self) -> bool {
        !matches!(self, Found::Stored { new: true, .. })
    }

    pub(crate) fn promise(&self) -> &Promise {
        match self {
            Found::Recorded(p) => p,
            Found::Stored { promise, .. } => promise,
        }
    }
}

pub(crate) struct Invocation {
    pub(crate) rt: Arc<Shared>,
    pub(crate) fence: Fence,
    /// The task's cancellation was asked for before this execution began
    /// ([`Promise::canceling`]): no new promise is created but undos, and what it
    /// awaits is canceled.
    pub(crate) canceling: bool,
    preload: HashMap<String, Promise>,
    fault: Mutex<Option<Fault>>,
    faulted: watch::Sender<bool>,
    /// Promises being awaited that something else settles, with how many awaiters.
    waiting: Mutex<HashMap<String, usize>>,
    /// Writes so far: the invocation is making progress while this grows.
    progress: AtomicU64,
    /// The answers of `Context::patched`, by the promise that records a yes.
    patches: Mutex<HashMap<String, bool>>,
    /// The patches this execution took the old path of.
    old_paths: Mutex<std::collections::BTreeSet<String>>,
    /// Local children whose promises are not created yet, by id.
    deferred: Mutex<HashMap<String, Arc<Deferred>>>,
    /// Awaited calls whose unserved check has not looked yet ([`Invocation::hold`]).
    holds: AtomicU64,
    /// When the store last confirmed this task's lease, by this process's clock: the
    /// lease runs from no earlier than then ([`Invocation::lease_holds`]).
    confirmed: Mutex<tokio::time::Instant>,
}

/// A local child of a fresh attempt whose promise is not created yet. Nothing can
/// be recorded of it before (the attempt is fresh) and nobody else writes under this
/// task, so it need not be: it is created, pending, before the first write under
/// it, and if its body writes nothing, its creation and its result are one write.
/// So whatever the store holds under a promise, it holds the promise too.
pub(crate) struct Deferred {
    req: CreatePromise,
    /// When the call began: its promise is dated then ([`CreatePromise::ran_for`]).
    began: tokio::time::Instant,
    created: tokio::sync::OnceCell<()>,
    /// True once created: only then can anyone else settle it.
    signal: watch::Sender<bool>,
}

impl Deferred {
    /// How long the call has run, in ms.
    fn ran_for(&self) -> Millis {
        self.began.elapsed().as_millis().try_into().unwrap_or(Millis::MAX)
    }
}

/// Keeps the task in memory for as long as it lives ([`Invocation::hold`]).
pub(crate) struct Hold<'a>(&'a Invocation);

impl Drop for Hold<'_> {
    fn drop(&mut self) {
        self.0.holds.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Marks a promise as awaited for as long as it lives.
pub(crate) struct Waiting<'a> {
    inv: &'a Invocation,
    id: String,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let mut waiting = self.inv.waiting.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = waiting.get_mut(&self.id) {
            *n -= 1;
            if *n == 0 {
                waiting.remove(&self.id);
            }
        }
    }
}

impl std::fmt::Debug for Invocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Invocation").field("fence", &self.fence).field("preload", &self.preload.len()).finish()
    }
}

impl Invocation {
    pub(crate) fn new(
        rt: Arc<Shared>,
        fence: Fence,
        preload: Vec<Promise>,
        acquired: tokio::time::Instant,
        canceling: bool,
    ) -> Invocation {
        let preload = preload.into_iter().map(|p| (p.id.clone(), p)).collect();
        Invocation {
            rt,
            fence,
            canceling,
            preload,
            fault: Mutex::new(None),
            faulted: watch::Sender::new(false),
            waiting: Mutex::new(HashMap::new()),
            progress: AtomicU64::new(0),
            patches: Mutex::new(HashMap::new()),
            old_paths: Mutex::new(std::collections::BTreeSet::new()),
            deferred: Mutex::new(HashMap::new()),
            holds: AtomicU64::new(0),
            confirmed: Mutex::new(acquired),
        }
    }

    /// The store renewed this task's lease at a request sent at `sent`.
    pub(crate) fn confirm(&self, sent: tokio::time::Instant) {
        let mut confirmed = self.confirmed.lock().unwrap_or_else(|e| e.into_inner());
        *confirmed = (*confirmed).max(sent);
    }

    /// Ok if this process still holds the task's lease with at least a third of it to
    /// run, by its own clock, before a body starts: a process that was paused (or cut
    /// off from the store) past its lease may have a successor that already ran that
    /// body, and the fence refuses only writes, not what a body does. A lease not
    /// confirmed for two thirds of it is renewed here first; one that cannot be (it
    /// ran out) stops this execution as lost (`Fault::Fenced`).
    pub(crate) async fn lease_holds(&self) -> Result<()> {
        if self.rt.checking {
            return Ok(());
        }
        let ttl = std::time::Duration::from_millis(self.rt.ttl);
        let confirmed = *self.confirmed.lock().unwrap_or_else(|e| e.into_inner());
        if confirmed.elapsed() < ttl - ttl / 3 {
            return Ok(());
        }
        let sent = tokio::time::Instant::now();
        match self.rt.store.heartbeat(&self.rt.process, std::slice::from_ref(&self.fence), self.rt.ttl).await {
            Ok(renewed) if renewed.contains(&self.fence) => {
                self.confirm(sent);
                Ok(())
            }
            Ok(_) => {
                tracing::warn!(task = %self.fence.task, unconfirmed_ms = confirmed.elapsed().as_millis() as u64, "the lease ran out unrenewed (a paused process, or a store out of reach): no body starts under it");
                Err(self.fail(Fault::Fenced))
            }
            Err(e) => Err(self.store_fault(e)),
        }
    }

    /// Keeps the task from suspending until the guard is dropped: a call's unserved
    /// check needs the caller in memory until it has looked.
    pub(crate) fn hold(&self) -> Hold<'_> {
        self.holds.fetch_add(1, Ordering::SeqCst);
        Hold(self)
    }

    /// Defers the creation of the local child `req` (see [`Deferred`]); the receiver
    /// turns true once it is created.
    pub(crate) fn defer(&self, mut req: CreatePromise) -> Result<watch::Receiver<bool>> {
        check_len(&req.id)?;
        if self.canceling && !under_undo(&req.id) {
            return Err(self.refused());
        }
        relate(&mut req);
        let (signal, created) = watch::channel(false);
        let began = tokio::time::Instant::now();
        let deferred = Arc::new(Deferred { req, began, created: tokio::sync::OnceCell::new(), signal });
        self.deferred.lock().unwrap_or_else(|e| e.into_inner()).insert(deferred.req.id.clone(), deferred);
        Ok(created)
    }

    /// Creates, pending, the deferred children `id` is under, outermost first.
    async fn create_deferred_above(&self, id: &str) -> Result<()> {
        let above: Vec<Arc<Deferred>> = {
            let deferred = self.deferred.lock().unwrap_or_else(|e| e.into_inner());
            if deferred.is_empty() {
                return Ok(());
            }
            let mut above: Vec<_> =
                id.rmatch_indices('.').filter_map(|(at, _)| deferred.get(&id[..at]).cloned()).collect();
            above.reverse();
            above
        };
        for d in above {
            d.created
                .get_or_try_init(|| async {
                    let mut req = d.req.clone();
                    req.ran_for = d.ran_for();
                    req.fence = Some(self.fence.clone());
                    self.rt.store.create(req).await.map_err(|e| self.store_fault(e))?;
                    d.signal.send_replace(true);
                    Ok::<(), Error>(())
                })
                .await?;
        }
        Ok(())
    }

    /// What the patch recorded by `marker` answered in this execution, if it was asked.
    pub(crate) fn patch_answer(&self, marker: &str) -> Option<bool> {
        self.patches.lock().unwrap_or_else(|e| e.into_inner()).get(marker).copied()
    }

    /// Keeps a patch's answer, so that the body gets it again; the first one stands.
    pub(crate) fn answer_patch(&self, marker: &str, answer: bool) -> bool {
        *self.patches.lock().unwrap_or_else(|e| e.into_inner()).entry(marker.to_owned()).or_insert(answer)
    }

    /// Notes that this execution took the old path of patch `name`.
    pub(crate) fn old_path(&self, name: &str) {
        self.old_paths.lock().unwrap_or_else(|e| e.into_inner()).insert(name.to_owned());
    }

    /// The patches this execution took the old path of.
    pub(crate) fn old_paths(&self) -> Vec<String> {
        self.old_paths.lock().unwrap_or_else(|e| e.into_inner()).iter().cloned().collect()
    }

    /// Marks `id` as awaited until the guard is dropped.
    pub(crate) fn waiting(&self, id: &str) -> Waiting<'_> {
        *self.waiting.lock().unwrap_or_else(|e| e.into_inner()).entry(id.to_owned()).or_default() += 1;
        Waiting { inv: self, id: id.to_owned() }
    }

    /// Suspends the task once it has made no progress for `after` while awaiting
    /// promises settled elsewhere: it is then held by nobody until one settles, and
    /// replays when redelivered. Completes only when the task is suspended.
    pub(crate) async fn suspend_when_idle(&self, after: std::time::Duration) {
        let mut seen = self.progress.load(Ordering::SeqCst);
        loop {
            tokio::time::sleep(after).await;
            let now = self.progress.load(Ordering::SeqCst);
            if now != seen {
                seen = now;
                continue;
            }
            let awaiting: Vec<String> =
                self.waiting.lock().unwrap_or_else(|e| e.into_inner()).keys().cloned().collect();
            if awaiting.is_empty() || self.holds.load(Ordering::SeqCst) > 0 || self.check().is_err() {
                continue;
            }
            match self.rt.store.suspend(&self.fence, &awaiting).await {
                Ok(true) => {
                    tracing::debug!(task = %self.fence.task, ?awaiting, "suspended until one of these settles");
                    return;
                }
                // One settled already: resume now, in memory.
                Ok(false) => {}
                Err(e) => {
                    self.store_fault(e);
                }
            }
        }
    }

    /// Records a fault (the first one wins) and returns the error for user code.
    pub(crate) fn fail(&self, fault: Fault) -> Error {
        let mut slot = self.fault.lock().unwrap_or_else(|e| e.into_inner());
        let fault = slot.get_or_insert(fault).clone();
        self.faulted.send_replace(true);
        fault.error(&self.fence.task)
    }

    pub(crate) fn fault(&self) -> Option<Fault> {
        self.fault.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Err once a fault was recorded: nothing more is written.
    pub(crate) fn check(&self) -> Result<()> {
        match self.fault() {
            Some(fault) => Err(fault.error(&self.fence.task)),
            None => Ok(()),
        }
    }

    /// Completes when a fault is recorded.
    pub(crate) async fn faulted(&self) {
        let mut rx = self.faulted.subscribe();
        let _ = rx.wait_for(|f| *f).await;
    }

    /// The settled promise recorded under `id`, if the preload has it, after checking
    /// that the code asks for the same thing now.
    pub(crate) fn replayed(&self, id: &str, now: &Param, location: &Location<'_>) -> Result<Option<&Promise>> {
        match self.preload.get(id) {
            Some(p) => {
                self.verify(id, &p.param, now, location)?;
                Ok(Some(p))
            }
            None => Ok(None),
        }
    }

    /// Compares what was recorded under `id` with what the code does now.
    pub(crate) fn verify(&self, id: &str, recorded: &Param, now: &Param, location: &Location<'_>) -> Result<()> {
        if recorded.signature() == now.signature() {
            return Ok(());
        }
        Err(self.fail(Fault::Nondeterminism(Nondeterminism {
            id: id.to_owned(),
            recorded: describe(recorded),
            now: describe(now),
            location: format!("{}:{}:{}", location.file(), location.line(), location.column()),
        })))
    }

    /// The promise of `req`: recorded in the preload, or else created now (or found in
    /// the store, `new` false). Either way what is stored must be what the code asks
    /// for now, or the invocation halts with the nondeterminism.
    pub(crate) async fn find_or_create(&self, req: CreatePromise, location: &Location<'_>) -> Result<Found<'_>> {
        if let Some(p) = self.replayed(&req.id, &req.param, location)? {
            return Ok(Found::Recorded(p));
        }
        if self.canceling && !under_undo(&req.id) && !req.parent.as_deref().is_some_and(under_undo) {
            // What was begun goes on; nothing new starts (but what an undo does).
            let Some(promise) = self.rt.store.get(&req.id).await.map_err(|e| self.store_fault(e))? else {
                return Err(self.refused());
            };
            self.verify(&req.id, &promise.param, &req.param, location)?;
            return Ok(Found::Stored { promise, new: false });
        }
        let (id, param) = (req.id.clone(), req.param.clone());
        let created = self.create(req).await?;
        self.verify(&id, &created.promise.param, &param, location)?;
        Ok(Found::Stored { promise: created.promise, new: created.new })
    }

    pub(crate) fn is_preloaded(&self, id: &str) -> bool {
        self.preload.contains_key(id)
    }

    /// Promise `id` as the preload has it (settled), or else as the store has it now.
    pub(crate) async fn lookup(&self, id: &str) -> Result<Option<Promise>> {
        if let Some(p) = self.preload.get(id) {
            return Ok(Some(p.clone()));
        }
        self.rt.store.get(id).await.map_err(|e| self.store_fault(e))
    }

    /// What the body gets for a call, sleep or promise not begun before its task's
    /// cancellation was asked for.
    fn refused(&self) -> Error {
        Error::Canceled { id: self.fence.task.clone() }
    }

    /// Whether the history holds a call of the same body numbered after `{base}.{n}`
    /// (`next`), settled (in the preload) or pending (in the store).
    pub(crate) async fn holds_call_after(&self, next: &str) -> Result<bool> {
        let Some((base, n)) = next.rsplit_once('.').and_then(|(b, n)| Some((b, n.parse::<u64>().ok()?))) else {
            return Ok(false);
        };
        let prefix = format!("{base}.");
        let later = |id: &str| {
            id.strip_prefix(&prefix).and_then(|rest| rest.split('.').next()).and_then(|m| m.parse::<u64>().ok())
                > Some(n)
        };
        if self.preload.keys().any(|id| later(id)) {
            return Ok(true);
        }
        let mut cursor = None;
        loop {
            let search = crate::store::Search {
                prefix: prefix.clone(),
                state: Some(crate::State::Pending),
                cursor,
                limit: 1000,
                ..Default::default()
            };
            let page = self.rt.store.search(search).await.map_err(|e| self.store_fault(e))?;
            if page.promises.iter().any(|p| later(&p.id)) {
                return Ok(true);
            }
            match page.cursor {
                Some(c) => cursor = Some(c),
                None => return Ok(false),
            }
        }
    }

    pub(crate) async fn create(&self, mut req: CreatePromise) -> Result<Created> {
        self.check()?;
        check_len(&req.id)?;
        self.create_deferred_above(&req.id).await?;
        relate(&mut req);
        req.fence = Some(self.fence.clone());
        // A task routed to a preferred pid is open to the rest of its group later.
        // And a delayed start is a deadline: its workers are told when it comes.
        let window = req
            .task
            .as_ref()
            .is_some_and(|t| (t.window > 0 && t.target.pid.is_some()) || t.delay > 0 || t.not_before > 0);
        let created = self.rt.store.create(req).await.map_err(|e| self.store_fault(e))?;
        self.progress.fetch_add(1, Ordering::SeqCst);
        if created.new && (created.promise.timeout_at != crate::NEVER || window) {
            // The background loop applies deadlines: tell it about a new one.
            self.rt.deadline_added();
        }
        Ok(created)
    }

    pub(crate) async fn settle(&self, mut req: SettlePromise) -> Result<Promise> {
        self.check()?;
        let deferred = self.deferred.lock().unwrap_or_else(|e| e.into_inner()).remove(&req.id);
        if let Some(d) = deferred
            && d.created.get().is_none()
        {
            // Never created: it is created settled, in one durable write, after the
            // deferred children it is under.
            self.create_deferred_above(&req.id).await?;
            let mut create = d.req.clone();
            create.settled = Some((req.state, req.value));
            create.ran_for = d.ran_for();
            create.durable = true;
            create.fence = Some(self.fence.clone());
            let created = self.rt.store.create(create).await.map_err(|e| self.store_fault(e))?;
            self.progress.fetch_add(1, Ordering::SeqCst);
            return Ok(created.promise);
        }
        req.fence = Some(self.fence.clone());
        let settled = self.rt.store.settle(req).await.map_err(|e| self.store_fault(e))?;
        self.progress.fetch_add(1, Ordering::SeqCst);
        Ok(settled)
    }

    /// Waits for a promise settled elsewhere. A halted child is not a settlement: the
    /// wait goes on (and the task may suspend) until a fixed deploy settles it.
    pub(crate) async fn settled(&self, id: &str) -> Result<Promise> {
        self.check()?;
        if self.canceling && !under_undo(id) {
            self.cancel_awaited(id).await?;
        }
        match wait::settled(&*self.rt.store, id, false).await.map_err(|e| self.store_fault(e))? {
            Done::Settled(p) => Ok(p),
            Done::Halted(_) | Done::Canceling => unreachable!("halts and cancels are reported only when asked for"),
        }
    }

    /// Cancels a promise this canceled execution awaits: a call (with its task) is
    /// asked to cancel, and compensates before it settles; a sleep or a promise
    /// settled from outside is settled canceled now.
    async fn cancel_awaited(&self, id: &str) -> Result<()> {
        let Some(p) = self.rt.store.get(id).await.map_err(|e| self.store_fault(e))? else {
            return Ok(());
        };
        if p.state.is_settled() {
            return Ok(());
        }
        if matches!(p.param, Param::Call { .. }) {
            self.rt.store.request_cancel(id).await.map_err(|e| self.store_fault(e))?;
            return Ok(());
        }
        self.settle(SettlePromise::canceled(id)).await.map(drop)
    }

    pub(crate) fn store_fault(&self, e: StoreError) -> Error {
        match e {
            StoreError::Fenced { .. } => self.fail(Fault::Fenced),
            e if crate::runtime::replay::is_frontier(&e) => self.fail(Fault::Frontier),
            e => self.fail(Fault::Platform(e.to_string())),
        }
    }
}

/// Whether `id` is an undo (`{step}:undo`, `{step}:undo2`, …) or under one: what an
/// undo does runs as any call does, in an execution canceled or not.
pub(crate) fn under_undo(id: &str) -> bool {
    id.split('.').any(|segment| segment.contains(":undo"))
}

/// An id too long is a deterministic error the body sees, not a fault: replay makes
/// it again.
fn check_len(id: &str) -> Result<()> {
    if id.len() > crate::MAX_ID_LEN {
        let reason = "an id may be at most 1024 bytes: calls nested this deep need a shorter root id";
        return Err(Error::InvalidId { id: id.to_owned(), reason });
    }
    Ok(())
}

/// What an operation is, for a nondeterminism message: a noun phrase with the call's
/// arguments as JSON (truncated when long).
fn describe(param: &Param) -> String {
    match param {
        Param::Call { func, version, args, .. } => {
            format!("a call of {func:?} (version {version}) with arguments {}", crate::codec::truncated(args))
        }
        Param::Timer => "a sleep (ctx.sleep)".into(),
        Param::External => "an external promise (ctx.promise)".into(),
        Param::Record { what } => format!("a recorded value (ctx.{what})"),
    }
}

/// Names the creator of a promise a body creates under its own id: the body that
/// minted it (a chosen id's creator is set where the id is chosen).
fn relate(req: &mut CreatePromise) {
    if req.parent.is_none() {
        req.parent = crate::promise::creator_of(&req.id).map(str::to_owned);
    }
}
