//! Running a function body to a settled promise: attempts, durable backoff, settling.

use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt;
use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::error::Failure;
use crate::promise::{Millis, Param, Promise, State};
use crate::runtime::context::{Owed, retry_timer_id};
use crate::runtime::function::Erased;
use crate::runtime::invocation::{Fault, Invocation, under_undo};
use crate::runtime::wait::{self, Done};
use crate::store::{CreatePromise, NewTask, SettlePromise};
use crate::{Context, Error, Result, Retry};

/// A settled outcome: the JSON value, or the error.
pub(crate) type Outcome = Result<String>;

/// The outcome a settled promise holds.
pub(crate) fn outcome(p: &Promise) -> Outcome {
    match p.outcome() {
        Some(Ok(json)) => Ok(json.to_owned()),
        Some(Err(e)) => Err(e),
        None => Err(Error::Runtime(format!("promise {} is still pending", p.id))),
    }
}

/// One promise to run: its body, arguments and policy.
pub(crate) struct Job {
    pub(crate) inv: Arc<Invocation>,
    pub(crate) id: String,
    pub(crate) deadline: Millis,
    pub(crate) func: Arc<dyn Erased>,
    pub(crate) args: String,
    /// Its policy, if the call or the function set one; else the default, for an
    /// attempt that made no durable call.
    pub(crate) retry: Option<Retry>,
    /// Created just now: no earlier attempt can exist.
    pub(crate) fresh: bool,
    /// For a child whose creation is deferred: turns true once it is created.
    pub(crate) deferred: Option<tokio::sync::watch::Receiver<bool>>,
}

impl Job {
    /// Runs attempts until the promise settles: by one of them, or otherwise (its
    /// deadline passed, it was canceled), which stops the body. `None` if a fault
    /// stopped it: then nothing was settled.
    pub(crate) async fn run(self) -> Option<Outcome> {
        let store = self.inv.rt.store.clone();
        if self.inv.rt.checking && !self.holds_under(&self.id).await.unwrap_or(false) {
            // A replay check runs only bodies that replay something: this one would
            // run anew, with whatever effects its code has.
            self.inv.fail(crate::runtime::invocation::Fault::Frontier);
            return None;
        }
        let id = self.id.clone();
        // Set once an attempt settles the promise itself: from then on the outcome is
        // the one its settle returns, after the store made it durable. A store shows a
        // settle to readers before it is durable, so watching for it here would let
        // the caller go on with a result a crash could still take back.
        let settling = std::sync::atomic::AtomicBool::new(false);
        let mut deferred = self.deferred.clone();
        // The task's own promise: a request to cancel it stops this execution, and the
        // next one compensates.
        let report_cancel = self.id == self.inv.fence.task && !self.inv.canceling;
        let settled_elsewhere = async {
            // Until its promise exists, nobody else can settle it.
            if let Some(created) = &mut deferred {
                created.wait_for(|created| *created).await.ok()?;
            }
            let p = match wait::settled_unless(&*store, &id, false, Some(&settling), report_cancel).await.ok()? {
                Done::Settled(p) => p,
                Done::Canceling => {
                    self.inv.fail(Fault::Canceling);
                    return None;
                }
                Done::Halted(_) => return None,
            };
            if settling.load(std::sync::atomic::Ordering::SeqCst) {
                std::future::pending::<()>().await;
            }
            Some(outcome(&p))
        };
        tokio::select! {
            biased;
            outcome = self.attempts(&settling) => outcome,
            Some(outcome) = settled_elsewhere => {
                match &outcome {
                    Err(Error::Timeout { .. }) => tracing::info!(id = %self.id, "timed out: its deadline passed"),
                    Err(Error::Canceled { .. }) => tracing::info!(id = %self.id, "canceled"),
                    _ => {}
                }
                Some(outcome)
            }
        }
    }

    async fn attempts(&self, settling: &std::sync::atomic::AtomicBool) -> Option<Outcome> {
        let inv = &self.inv;
        let mut attempt = if self.fresh { 1 } else { self.resume().await.ok()? };
        // An attempt begun after a failure in this execution has no history either.
        let mut fresh = self.fresh;
        loop {
            let retried = (attempt > 1).then(|| self.timer_id(attempt - 1));
            if let Some(wait) = retried.filter(|_| self.canceled())
                && !self.holds_under(&wait).await.map_err(|e| self.inv.store_fault(e)).ok()?
            {
                // Canceled in a retry's wait: the next attempt does not start.
                settling.store(true, std::sync::atomic::Ordering::SeqCst);
                return Some(outcome(&inv.settle(SettlePromise::canceled(&self.id)).await.ok()?));
            }
            inv.lease_holds().await.ok()?;
            inv.rt.count_run(self.func.name());
            let mut ctx = Context::new(inv.clone(), self.id.clone(), self.deadline, attempt, fresh);
            let span = tracing::debug_span!("attempt", id = %self.id, function = self.func.name(), attempt);
            let result = AssertUnwindSafe(self.func.call(&mut ctx, &self.args)).catch_unwind().instrument(span).await;
            ctx.scope.join().await;
            let made_calls = ctx.made_calls();
            let owed = ctx.take_undos();
            // A panic fails the attempt, as an `Err` would: the retry policy decides
            // whether another runs, and then the caller gets the error to handle.
            let result = result
                .unwrap_or_else(|panic| Err(Error::new(format!("{} panicked: {}", self.id, panic_message(&*panic)))));
            inv.check().ok()?;
            let (state, value) = match result {
                Ok(json) => (State::Resolved, json),
                Err(e) => {
                    // The steps this attempt completed are undone first, last first.
                    let undone = if owed.is_empty() { Vec::new() } else { self.compensate(owed).await? };
                    let e = if self.canceled() { Error::Canceled { id: self.id.clone() } } else { e };
                    let e = if undone.is_empty() {
                        e
                    } else {
                        Error::Compensated { id: self.id.clone(), cause: Box::new(e), undone }
                    };
                    // Unasked, an attempt that made durable calls is not run again:
                    // its calls would run again, as new ones.
                    let retry = match self.retry {
                        Some(retry) => retry,
                        None if made_calls => {
                            if e.is_retryable() {
                                tracing::info!(id = %self.id, error = %e, "not retried: the attempt made durable calls, and its function sets no retry policy");
                            }
                            Retry::Never
                        }
                        None => Retry::default(),
                    };
                    // A canceled execution is not retried.
                    if !self.canceled()
                        && e.is_retryable()
                        && let Some(delay) = retry.delay(attempt)
                    {
                        tracing::warn!(id = %self.id, attempt, delay_ms = delay.as_millis() as u64, error = %e, "the attempt failed; the next runs after the delay");
                        self.backoff(attempt, delay).await.ok()?;
                        attempt += 1;
                        fresh = true;
                        continue;
                    }
                    let state = if self.canceled() { State::RejectedCanceled } else { State::Rejected };
                    (state, Failure::from(&e).encode())
                }
            };
            let req = SettlePromise { id: self.id.clone(), state, value, ikey: None, strict: false, fence: None };
            settling.store(true, std::sync::atomic::Ordering::SeqCst);
            let settled = inv.settle(req).await.ok()?;
            return Some(outcome(&settled));
        }
    }

    /// Whether this body runs under its task's cancel: not an undo, nor under one.
    fn canceled(&self) -> bool {
        self.inv.canceling && !under_undo(&self.id)
    }

    /// Runs the undos `owed` of the steps that resolved, last step first; returns the
    /// steps undone. `None` if a fault stopped it (an undo that failed for good halts
    /// the task).
    async fn compensate(&self, mut owed: Vec<Owed>) -> Option<Vec<String>> {
        owed.sort_by_key(|o| std::cmp::Reverse(o.n));
        let mut undone = Vec::new();
        for o in owed {
            if self.completed(&o).await.ok()? {
                self.undo(&o).await.ok()?;
                undone.push(o.step);
            }
        }
        if !undone.is_empty() {
            tracing::info!(id = %self.id, ?undone, "compensated: the undos of its completed steps ran");
        }
        Some(undone)
    }

    /// Whether a step resolved. A routed step still running is asked to cancel (it
    /// undoes its own steps) and waited for: one that resolves anyway is undone.
    async fn completed(&self, o: &Owed) -> Result<bool> {
        let inv = &self.inv;
        let Some(p) = inv.lookup(&o.step).await? else {
            // Never begun: refused, or its caller failed before making it.
            return Ok(false);
        };
        if p.state.is_settled() || o.undo.local.is_some() {
            // A local step ran in this attempt, which waited for it.
            return Ok(p.state == State::Resolved);
        }
        inv.rt.store.request_cancel(&o.step).await.map_err(|e| inv.store_fault(e))?;
        let _waiting = inv.waiting(&o.step);
        Ok(inv.settled(&o.step).await?.state == State::Resolved)
    }

    /// Runs the undo of step `o` to success. An undo that fails for good halts the
    /// task for a person: resumed, it runs again, as try `k + 1` (`{step}:undo{k+1}`);
    /// the marker `{undo}:halted` records that the halt was made, so that a replay
    /// for any other reason halts again rather than trying again.
    async fn undo(&self, o: &Owed) -> Result<()> {
        let inv = &self.inv;
        for k in 1.. {
            let id = undo_id(&o.step, k);
            let outcome = match inv.lookup(&id).await? {
                Some(p) if p.state.is_settled() => outcome(&p),
                found => self.run_undo(o, &id, found.is_none()).await?,
            };
            let error = match outcome {
                Ok(_) => return Ok(()),
                Err(error) => error,
            };
            let marker = format!("{id}:halted");
            if inv.lookup(&marker).await?.is_some() {
                continue;
            }
            let mut req = CreatePromise::new(marker, Param::Record { what: "halted".into() });
            req.parent = Some(self.id.clone());
            req.settled = Some((State::Resolved, "null".into()));
            inv.create(req).await?;
            let reason = format!(
                "the undo {id} of step {} failed for good: {error}; once what it needs is fixed, resume the task \
                 (`durable resume {}`) to run the undo again",
                o.step, inv.fence.task
            );
            return Err(inv.fail(Fault::Undo(reason)));
        }
        unreachable!("tries are counted without end")
    }

    /// Runs (or, begun before, finishes) try `id` of the undo of step `o`.
    async fn run_undo(&self, o: &Owed, id: &str, new: bool) -> Result<Outcome> {
        let inv = &self.inv;
        let undo = &o.undo;
        if new {
            let mut req =
                CreatePromise::new(id, Param::call(&undo.record.func, undo.record.version, undo.record.args.clone()));
            req.parent = Some(self.id.clone());
            req.task = undo.target.clone().map(|target| NewTask { window: inv.rt.window, ..NewTask::new(target) });
            // A local undo lost in a crash is made again by the replay, and its settle
            // is durable: only a routed one, which another process runs, must be on
            // disk first.
            req.durable = req.task.is_some();
            inv.create(req).await?;
        }
        let Some(func) = &undo.local else {
            let _waiting = inv.waiting(id);
            return Ok(outcome(&inv.settled(id).await?));
        };
        let job = Job {
            inv: inv.clone(),
            id: id.to_owned(),
            deadline: crate::NEVER,
            func: func.clone(),
            args: undo.record.args.clone(),
            retry: func.retry(),
            fresh: new,
            deferred: None,
        };
        match Box::pin(job.run()).await {
            Some(outcome) => Ok(outcome),
            None => Err(inv.check().err().unwrap_or_else(|| Error::Runtime("stopped".into()))),
        }
    }

    /// Whether the history holds anything under `id`: under a retry's wait, the
    /// attempt after it began.
    async fn holds_under(&self, id: &str) -> std::result::Result<bool, crate::StoreError> {
        let search = crate::store::Search { prefix: format!("{id}."), limit: 1, ..Default::default() };
        Ok(!self.inv.rt.store.search(search).await?.promises.is_empty())
    }

    /// The id of the timer that waits after failed attempt `attempt`.
    fn timer_id(&self, attempt: u32) -> String {
        retry_timer_id(&self.id, attempt)
    }

    /// Waits durably before the next attempt.
    async fn backoff(&self, attempt: u32, delay: Duration) -> Result<()> {
        let mut req = CreatePromise::new(self.timer_id(attempt), Param::Timer);
        req.timeout = Some(delay.as_millis() as Millis);
        self.inv.create(req).await?;
        self.wait_timer(attempt).await
    }

    /// Waits for the timer before attempt `attempt + 1`, as an awaited promise: a
    /// long wait suspends the task, holding no worker.
    async fn wait_timer(&self, attempt: u32) -> Result<()> {
        let timer = self.timer_id(attempt);
        let _waiting = self.inv.waiting(&timer);
        let waited = self.inv.settled(&timer).await?;
        // A wait canceled means the cancel of its task is under way: an execution
        // that has not seen it yet stops here, before the next attempt's body runs.
        if waited.state == State::RejectedCanceled && !self.inv.canceling {
            return Err(self.inv.fail(Fault::Canceling));
        }
        Ok(())
    }

    /// Finds the attempt to run after a restart: each failed attempt left a timer.
    async fn resume(&self) -> Result<u32> {
        let mut attempt = 1;
        while self.inv.is_preloaded(&self.timer_id(attempt)) {
            attempt += 1;
        }
        // The last failed attempt's timer may still be pending: wait it out.
        if self.inv.rt.store.get(&self.timer_id(attempt)).await.map_err(|e| self.inv.store_fault(e))?.is_some() {
            self.wait_timer(attempt).await?;
            attempt += 1;
        }
        Ok(attempt)
    }
}

/// The id of try `k` (from 1) of the undo of `step`: `{step}:undo`, then
/// `{step}:undo2`, …
pub(crate) fn undo_id(step: &str, k: u32) -> String {
    if k == 1 { format!("{step}:undo") } else { format!("{step}:undo{k}") }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

/// The local children a function body started, and the undos its steps carry: the
/// body's promise settles only after its children did, and dropping the scope (a
/// crash, a lost lease) aborts them.
#[derive(Default)]
pub(crate) struct Scope {
    children: Mutex<Vec<JoinHandle<()>>>,
    /// The undos the attempt's steps carry, in the order the steps were made.
    pub(crate) undos: Mutex<Vec<Owed>>,
}

impl std::fmt::Debug for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scope").finish_non_exhaustive()
    }
}

impl Scope {
    pub(crate) fn spawn(&self, job: impl Future<Output = ()> + Send + 'static) {
        let mut children = self.children.lock().unwrap_or_else(|e| e.into_inner());
        children.retain(|c| !c.is_finished());
        children.push(tokio::spawn(job));
    }

    pub(crate) async fn join(&self) {
        loop {
            let next = self.children.lock().unwrap_or_else(|e| e.into_inner()).pop();
            match next {
                // Aborted if this wait is dropped, like the children still in the scope.
                Some(child) => {
                    let mut child = AbortOnDrop(child);
                    let _ = (&mut child.0).await;
                }
                None => return,
            }
        }
    }
}

/// A task aborted when this is dropped.
pub(crate) struct AbortOnDrop(pub(crate) JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Drop for Scope {
    fn drop(&mut self) {
        for child in self.children.get_mut().unwrap_or_else(|e| e.into_inner()).drain(..) {
            child.abort();
        }
    }
}
