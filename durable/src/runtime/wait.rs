//! Waiting for a promise to settle: the one loop every waiter uses.

use std::sync::atomic::{AtomicBool, Ordering};

use crate::promise::{Promise, Task, TaskState};
use crate::{Store, StoreError};

/// How a wait ended.
#[derive(Debug)]
pub(crate) enum Done {
    /// The promise settled.
    Settled(Promise),
    /// Its task halted (reported only when asked for).
    Halted(Task),
    /// Its cancellation was asked for (reported only when asked for).
    Canceling,
}

/// Waits until the promise `id` settles.
///
/// A halted task is not a settlement: a fixed deploy resumes it, and it settles then.
/// Inside an invocation (`report_halt` false) the wait goes on, holding nothing but
/// memory, and the invocation may suspend on the promise meanwhile. A caller outside
/// every invocation (a [`Handle`](crate::Handle) from [`Durable::run`](crate::Durable::run))
/// sets `report_halt` to be told of the halt instead: nobody else would tell it.
pub(crate) async fn settled(store: &dyn Store, id: &str, report_halt: bool) -> Result<Done, StoreError> {
    settled_unless(store, id, report_halt, None, false).await
}

/// As [`settled`], for the runner of the promise's own attempts: once `settling` is
/// set, the runner settles the promise itself and takes the outcome from that settle,
/// so the wait reads nothing more and never ends. With `report_cancel`, a request to
/// cancel the promise ends the wait too.
pub(crate) async fn settled_unless(
    store: &dyn Store,
    id: &str,
    report_halt: bool,
    settling: Option<&AtomicBool>,
    report_cancel: bool,
) -> Result<Done, StoreError> {
    loop {
        // Completes at once if settled (or halted, when asked); otherwise on a change.
        store.wait(id, report_halt).await?;
        if settling.is_some_and(|s| s.load(Ordering::SeqCst)) {
            std::future::pending::<()>().await;
        }
        let Some(p) = store.get(id).await? else {
            return Err(StoreError::NotFound { what: "promise", id: id.to_owned() });
        };
        if p.state.is_settled() {
            return Ok(Done::Settled(p));
        }
        if report_cancel && p.canceling {
            return Ok(Done::Canceling);
        }
        if report_halt
            && let Some(task) = store.task(id).await?
            && task.state == TaskState::Halted
        {
            return Ok(Done::Halted(task));
        }
    }
}
