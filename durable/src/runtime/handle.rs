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

use crate::runtime::execute::{Outcome, outcome};
use crate::runtime::invocation::Invocation;
use crate::runtime::wait::{self, Done};
use crate::{Error, Result, Store, StoreError, TaskState, codec};

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

    /// Like [`Handle::stored`], but failing with [`Error::Unserved`] once the task has
    /// waited `after`, still pending, with no live worker of `group` that runs
    /// `function`.
    pub(crate) fn watched(
        id: String,
        group: String,
        function: String,
        after: Duration,
        store: Arc<dyn Store>,
    ) -> Handle<T> {
        let key = id.clone();
        let outcome = async move {
            tokio::select! {
                biased;
                outcome = settled(&*store, &key) => outcome,
                unserved = unserved(&*store, &key, &group, &function, after) => Err(unserved),
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

/// Completes once task `id` has waited `after` and is still pending with no live
/// worker of `group` that runs `function`; looks again every quarter of `after` (at
/// least a second).
async fn unserved(store: &dyn Store, id: &str, group: &str, function: &str, after: Duration) -> Error {
    let started = tokio::time::Instant::now();
    tokio::time::sleep(after).await;
    loop {
        let pending = matches!(store.task(id).await, Ok(Some(t)) if t.state == TaskState::Pending);
        let served = match (store.now().await, store.workers().await) {
            (Ok(now), Ok(workers)) => workers.iter().any(|w| w.serves(group, function, now)),
            // A store that cannot answer is no evidence against the group.
            _ => true,
        };
        if pending && !served {
            let waited = started.elapsed().as_secs();
            tracing::warn!(task = %id, %group, %function, waited_s = waited, "no live worker of the group runs the function this task calls");
            return Error::Unserved {
                id: id.to_owned(),
                group: group.to_owned(),
                function: function.to_owned(),
                waited,
            };
        }
        tokio::time::sleep((after / 4).max(Duration::from_secs(1))).await;
    }
}

impl<T: DeserializeOwned> Future for Handle<T> {
    type Output = Result<T>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Result<T>> {
        self.outcome.as_mut().poll(cx).map(|outcome| codec::decode(&self.id, &outcome?))
    }
}
