//! Group commit: steps that arrive while others commit share the next transaction.
//!
//! A step on rows it names (a create, a settle, a release…) joins a queue, then waits
//! for a turn; a turn takes everything queued and runs it as one transaction, each
//! step's operation in turn on one state machine, as the in-process stores run them
//! one after another. At most [`TURNS`] transactions run at once, so while they
//! commit the queue fills, and under load a commit carries many steps: 64 chains
//! cost a few statements a step, not eight. A step alone takes a turn at once and
//! costs what it did alone. Every step still returns only once its transaction has
//! committed.

use std::sync::Mutex;

use tokio::sync::{Semaphore, oneshot};

use crate::StoreError;
use crate::promise::Millis;
use crate::store::state::Core;

/// How many batches may be in flight at once.
pub(super) const TURNS: usize = 2;
/// The most steps one transaction carries.
pub(super) const MAX_STEPS: usize = 128;

/// An operation on the state machine, run once per attempt of its transaction.
pub(super) type Op = Box<dyn FnMut(&mut Core, Millis) + Send>;

/// A step waiting for its transaction.
pub(super) struct Job {
    pub(super) promises: Vec<String>,
    pub(super) tasks: Vec<String>,
    pub(super) create: bool,
    pub(super) limits: bool,
    pub(super) durable: bool,
    pub(super) op: Op,
    pub(super) done: oneshot::Sender<Result<(), StoreError>>,
}

/// The queue and the turns.
#[derive(Debug)]
pub(super) struct Batches {
    queue: Mutex<Vec<Job>>,
    turns: Semaphore,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job").field("promises", &self.promises).field("tasks", &self.tasks).finish_non_exhaustive()
    }
}

impl Default for Batches {
    fn default() -> Batches {
        Batches { queue: Mutex::new(Vec::new()), turns: Semaphore::new(TURNS) }
    }
}

impl Batches {
    pub(super) fn push(&self, job: Job) {
        self.queue.lock().unwrap_or_else(|e| e.into_inner()).push(job);
    }

    /// Waits for a turn, then takes what is queued (nothing, if other turns took
    /// it all). The turn ends when the permit is dropped.
    pub(super) async fn turn(&self) -> (tokio::sync::SemaphorePermit<'_>, Vec<Job>) {
        let permit = self.turns.acquire().await.expect("the turns are never closed");
        let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        let take = queue.len().min(MAX_STEPS);
        let rest = queue.split_off(take);
        let jobs = std::mem::replace(&mut *queue, rest);
        (permit, jobs)
    }
}

/// The error for each step of a batch that failed together (the backend's own error
/// can be returned once).
pub(super) fn shared(e: &StoreError) -> StoreError {
    match e {
        StoreError::Backend(source) => StoreError::backend(source.to_string()),
        other => StoreError::backend(other.to_string()),
    }
}
