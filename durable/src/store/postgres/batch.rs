//! Group commit: steps that arrive while others commit share the next transaction,
//! and reads that arrive while others run share the next query.
//!
//! A step on rows it names (a create, a settle, a release…) joins a queue, then waits
//! until another turn has committed it or it gets a turn itself; a turn takes what is
//! queued and runs it as one transaction, each step's operation in turn on one state
//! machine, as the in-process stores run them one after another. At most [`TURNS`]
//! batches run at once, so while they commit the queue fills, and under load a commit
//! carries many steps: 64 chains cost a few statements a step, not eight. A step alone
//! takes a turn at once and costs what it did alone. Every step still returns only
//! once its transaction has committed. Reads of one promise (a `get`, the first look
//! of a `wait`) queue the same way and share one query.

use std::future::Future;
use std::sync::Mutex;

use tokio::sync::{Semaphore, oneshot};

use crate::StoreError;
use crate::promise::Millis;
use crate::store::state::Core;

/// How many batches of one kind may be in flight at once.
const TURNS: usize = 2;
/// The most jobs one batch carries.
const MAX_JOBS: usize = 128;

/// An operation on the state machine, run once per attempt of its transaction.
pub(super) type Op = Box<dyn FnMut(&mut Core, Millis) + Send>;

/// A step waiting for its transaction.
pub(super) struct Job {
    pub(super) promises: Vec<String>,
    pub(super) tasks: Vec<String>,
    pub(super) schedules: Vec<String>,
    pub(super) create: bool,
    pub(super) limits: bool,
    pub(super) durable: bool,
    pub(super) op: Op,
    pub(super) done: oneshot::Sender<Result<(), StoreError>>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job").field("promises", &self.promises).field("tasks", &self.tasks).finish_non_exhaustive()
    }
}

/// A queue of jobs of one kind, and the turns to run them.
#[derive(Debug)]
pub(super) struct Batches<J> {
    queue: Mutex<Vec<J>>,
    turns: Semaphore,
}

impl<J> Default for Batches<J> {
    fn default() -> Batches<J> {
        Batches { queue: Mutex::new(Vec::new()), turns: Semaphore::new(TURNS) }
    }
}

impl<J> Batches<J> {
    /// Queues `job`, whose sender of `done` the batch that runs it completes, and
    /// returns what that batch sent. Until then it takes turns running the queue
    /// with `run`. An error if the batch that took the job was dropped unfinished.
    pub(super) async fn submit<T, F: Future<Output = ()>>(
        &self,
        job: J,
        done: oneshot::Receiver<T>,
        run: impl Fn(Vec<J>) -> F,
    ) -> Result<T, StoreError> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner()).push(job);
        let mut done = std::pin::pin!(done);
        loop {
            let (turn, jobs) = tokio::select! {
                biased;
                result = &mut done => {
                    return result.map_err(|_| {
                        StoreError::backend("the batch that carried this request was interrupted: its outcome is unknown")
                    });
                }
                turn = self.turn() => turn,
            };
            if !jobs.is_empty() {
                run(jobs).await;
            }
            drop(turn);
        }
    }

    /// Waits for a turn, then takes what is queued (nothing, if other turns took
    /// it all). The turn ends when the permit is dropped.
    async fn turn(&self) -> (tokio::sync::SemaphorePermit<'_>, Vec<J>) {
        let permit = self.turns.acquire().await.expect("the turns are never closed");
        let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        let take = queue.len().min(MAX_JOBS);
        let rest = queue.split_off(take);
        (permit, std::mem::replace(&mut *queue, rest))
    }
}

/// The error for each request of a batch that failed together (the backend's own
/// error can be returned once).
pub(super) fn shared(e: &StoreError) -> StoreError {
    match e {
        StoreError::Backend(source) => StoreError::backend(source.to_string()),
        other => StoreError::backend(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Jobs submitted at once share batches: two turns take the first two, and the
    /// next takes all the rest; each gets its own answer.
    #[tokio::test]
    async fn jobs_submitted_at_once_share_batches() {
        let batches = Batches::<(u32, oneshot::Sender<u32>)>::default();
        let sizes = Mutex::new(Vec::new());
        let run = |jobs: Vec<(u32, oneshot::Sender<u32>)>| {
            sizes.lock().unwrap().push(jobs.len());
            async move {
                tokio::task::yield_now().await;
                for (n, done) in jobs {
                    let _ = done.send(n * 2);
                }
            }
        };
        let submits = (0..64).map(|n| {
            let (done, answer) = oneshot::channel();
            batches.submit((n, done), answer, run)
        });
        let answers = futures::future::try_join_all(submits).await.unwrap();
        assert_eq!(answers, (0..64).map(|n| n * 2).collect::<Vec<_>>());
        let sizes = sizes.into_inner().unwrap();
        assert_eq!(sizes.iter().sum::<usize>(), 64);
        assert!(sizes.len() <= 3, "64 jobs at once took {} batches: {sizes:?}", sizes.len());
    }

    /// A job that another caller's turn ran returns at once, though every turn is
    /// taken: it does not wait for a turn of its own.
    #[tokio::test(start_paused = true)]
    async fn a_job_another_turn_ran_returns_without_a_turn_of_its_own() {
        type Named = (&'static str, oneshot::Sender<&'static str>);
        let batches = std::sync::Arc::new(Batches::<Named>::default());
        let open_b = std::sync::Arc::new(tokio::sync::Notify::new());
        let run = {
            let open_b = open_b.clone();
            move |jobs: Vec<Named>| {
                let open_b = open_b.clone();
                async move {
                    let first = jobs[0].0;
                    for (name, done) in jobs {
                        let _ = done.send(name);
                    }
                    // The batch answered, and holds its turn: b's until opened, the others' for good.
                    match first {
                        "b" => open_b.notified().await,
                        _ => std::future::pending().await,
                    }
                }
            }
        };
        let submit = |name: &'static str| {
            let (batches, run) = (batches.clone(), run.clone());
            tokio::spawn(async move {
                let (done, answer) = oneshot::channel();
                batches.submit((name, done), answer, run).await
            })
        };
        let settle = || tokio::time::sleep(std::time::Duration::from_millis(1));
        let _a = submit("a");
        settle().await;
        let _b = submit("b");
        settle().await;
        let (_c, d) = (submit("c"), submit("d"));
        settle().await;
        // b's turn ends; c takes it, runs d's job with its own, and keeps the turn.
        open_b.notify_one();
        let answer = tokio::time::timeout(std::time::Duration::from_secs(10), d).await;
        assert_eq!(answer.expect("d returned without a turn").unwrap().unwrap(), "d");
    }

    /// A job whose batch ends without answering it gets an error, not a hang.
    #[tokio::test]
    async fn a_job_its_batch_drops_gets_an_error() {
        let batches = Batches::<oneshot::Sender<()>>::default();
        let (done, answer) = oneshot::channel();
        let dropped = batches.submit(done, answer, |jobs| async move { drop(jobs) }).await;
        assert!(dropped.unwrap_err().to_string().contains("outcome is unknown"));
    }
}
