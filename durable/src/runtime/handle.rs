//! [`Handle`]: a promise's result, to await.

use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use futures::future::BoxFuture;
use serde::de::DeserializeOwned;
use tokio::sync::oneshot;

use crate::error::Failure;
use crate::promise::Millis;
use crate::runtime::execute::{Outcome, outcome};
use crate::runtime::invocation::{Hold, Invocation};
use crate::runtime::wait::{self, Done};
use crate::store::SettlePromise;
use crate::{Error, Result, State, Store, StoreError, TaskState, codec};

/// The result of a durable invocation, to await when it is needed.
///
/// Awaiting gives the decoded value, or the error the promise was rejected with. A
/// handle does not borrow anything, so several can be awaited at once.
#[must_use = "a handle does nothing unless awaited"]
pub struct Handle<T> {
    id: String,
    outcome: BoxFuture<'static, Outcome>,
    output: PhantomData<fn() -> T>,
}

impl<T> std::fmt::Debug for Handle<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handle").field("id", &self.id).finish()
    }
}

impl<T> Handle<T> {
    /// The id of the promise.
    pub fn id(&self) -> &str {
        &self.id
    }

    pub(crate) fn ready(id: String, outcome: Outcome) -> Handle<T> {
        Handle { id, outcome: Box::pin(std::future::ready(outcome)), output: PhantomData }
    }

    /// A child running in this process.
    pub(crate) fn local(id: String, rx: oneshot::Receiver<Outcome>, inv: Arc<Invocation>) -> Handle<T> {
        let outcome = async move {
            match rx.await {
                Ok(outcome) => outcome,
                // The child stopped without settling: the invocation has a fault.
                Err(_) => Err(inv.check().err().unwrap_or_else(|| Error::Runtime("the child was stopped".into()))),
            }
        };
        Handle { id, outcome: Box::pin(outcome), output: PhantomData }
    }

    /// A promise settled elsewhere (a remote task, a timer, someone outside), awaited
    /// from inside an invocation: while it waits, the invocation may suspend.
    pub(crate) fn remote(id: String, inv: Arc<Invocation>) -> Handle<T> {
        let key = id.clone();
        let outcome = async move {
            let _waiting = inv.waiting(&key);
            outcome(&inv.settled(&key).await?)
        };
        Handle { id, outcome: Box::pin(outcome), output: PhantomData }
    }

    /// Like [`Handle::remote`], for a call made with `unserved_after`: once it has
    /// waited that long with no live worker that serves it, the caller records the
    /// call as rejected with [`Error::Unserved`] (the first settle wins), so that a
    /// replay sees the same and a worker that starts later finds it settled. Until the
    /// first look the task stays in memory: a suspended caller could not look.
    pub(crate) fn remote_watched(watch: Watch, inv: Arc<Invocation>) -> Handle<T> {
        let id = watch.id.clone();
        let outcome = async move {
            let _waiting = inv.waiting(&watch.id);
            let settled = tokio::select! {
                biased;
                settled = inv.settled(&watch.id) => settled?,
                unserved = unserved(&*inv.rt.store, &watch, Some(inv.hold())) => {
                    let rejection = SettlePromise {
                        id: watch.id.clone(),
                        state: State::Rejected,
                        value: Failure::from(&unserved).encode(),
                        ikey: None,
                        strict: false,
                        fence: None,
                    };
                    inv.settle(rejection).await?
                }
            };
            outcome(&settled)
        };
        Handle { id, outcome: Box::pin(outcome), output: PhantomData }
    }

    /// Like [`Handle::stored`], but failing with [`Error::Unserved`] once the task has
    /// waited as `watch` says (the task itself stays).
    pub(crate) fn watched(watch: Watch, store: Arc<dyn Store>) -> Handle<T> {
        let id = watch.id.clone();
        let outcome = async move {
            tokio::select! {
                biased;
                outcome = settled(&*store, &watch.id) => outcome,
                unserved = unserved(&*store, &watch, None) => Err(unserved),
            }
        };
        Handle { id, outcome: Box::pin(outcome), output: PhantomData }
    }

    /// A promise settled by whoever executes it, anywhere.
    pub(crate) fn stored(id: String, store: Arc<dyn Store>) -> Handle<T> {
        let key = id.clone();
        Handle { id, outcome: Box::pin(async move { settled(&*store, &key).await }), output: PhantomData }
    }
}

/// Waits until the promise settles, or its task halts: a caller outside every
/// invocation is told of a halt. A store that fails (a connection cut) is asked again
/// with backoff for up to half a minute before its error is the answer.
pub(crate) async fn settled(store: &dyn Store, id: &str) -> Outcome {
    let mut failing_since = None;
    loop {
        match wait::settled(store, id, true).await {
            Ok(Done::Settled(p)) => return outcome(&p),
            Ok(Done::Canceling) => unreachable!("cancels are reported only when asked for"),
            Ok(Done::Halted(task)) => {
                return Err(task
                    .fault()
                    .unwrap_or_else(|| Error::Halted { id: id.to_owned(), reason: "no reason was recorded".into() }));
            }
            Err(StoreError::Backend(e)) => {
                let since = *failing_since.get_or_insert_with(tokio::time::Instant::now);
                if since.elapsed() > std::time::Duration::from_secs(30) {
                    return Err(Error::Store(StoreError::Backend(e)));
                }
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// A routed call to watch for a group that serves it: `Rpc::unserved_after`,
/// `Call::unserved_after`.
pub(crate) struct Watch {
    /// The call: its promise and task.
    pub(crate) id: String,
    pub(crate) group: String,
    /// Its function key.
    pub(crate) function: String,
    /// How long it may wait for a live worker that serves it.
    pub(crate) after: Duration,
    /// When its promise was created, on the store's clock: the wait counts from then,
    /// whoever watches it and however often it was taken over.
    pub(crate) created_at: Millis,
}

/// Completes once `watch`'s task has waited `watch.after` since it was created and is
/// still pending with no live worker of its group that runs its function; looks again
/// every quarter of `after` (at least a second). `hold` is dropped at the first look.
async fn unserved(store: &dyn Store, watch: &Watch, mut hold: Option<Hold<'_>>) -> Error {
    let due = watch.created_at.saturating_add(watch.after.as_millis().try_into().unwrap_or(Millis::MAX));
    loop {
        match store.now().await {
            Ok(now) if now >= due => break,
            Ok(now) => tokio::time::sleep(Duration::from_millis(due - now)).await,
            Err(_) => tokio::time::sleep(Duration::from_secs(1)).await,
        }
    }
    loop {
        let pending = matches!(store.task(&watch.id).await, Ok(Some(t)) if t.state == TaskState::Pending);
        let (served, now) = match (store.now().await, store.workers().await) {
            (Ok(now), Ok(workers)) => (workers.iter().any(|w| w.serves(&watch.group, &watch.function, now)), now),
            // A store that cannot answer is no evidence against the group.
            _ => (true, 0),
        };
        if pending && !served {
            let waited = now.saturating_sub(watch.created_at) / 1000;
            tracing::warn!(task = %watch.id, group = %watch.group, function = %watch.function, waited_s = waited, "no live worker of the group runs the function this task calls");
            return Error::Unserved {
                id: watch.id.clone(),
                group: watch.group.clone(),
                function: watch.function.clone(),
                waited,
            };
        }
        drop(hold.take());
        tokio::time::sleep((watch.after / 4).max(Duration::from_secs(1))).await;
    }
}

impl<T: DeserializeOwned> Future for Handle<T> {
    type Output = Result<T>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Result<T>> {
        self.outcome.as_mut().poll(cx).map(|outcome| codec::decode(&self.id, &outcome?))
    }
}
