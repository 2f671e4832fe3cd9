//! The crash sweep: run a scenario once, then once more for every point just before
//! and just after each store write, killing every worker there and finishing with
//! fresh ones.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use durable::store::Search;
use durable::{Durable, Function, MemoryStore, Param, State, Store, TaskState};
use futures::future::BoxFuture;

use crate::gate::{Gate, History};

/// Where a worker generation dies: just before or just after its `write`-th store
/// write (counted from 1, in that generation).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CrashPoint {
    /// The write, counted from 1.
    pub write: usize,
    /// Before it is applied, or after (applied, but its caller never learns it).
    pub after: bool,
}

impl CrashPoint {
    /// Just before write `n`.
    pub fn before(n: usize) -> CrashPoint {
        CrashPoint { write: n, after: false }
    }

    /// Just after write `n`.
    pub fn after(n: usize) -> CrashPoint {
        CrashPoint { write: n, after: true }
    }
}

impl fmt::Display for CrashPoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} write {}", if self.after { "after" } else { "before" }, self.write)
    }
}

/// What a sweep explored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    /// Store writes of the crash-free run.
    pub writes: usize,
    /// Crash points explored: two per write.
    pub crash_points: usize,
    /// Function bodies run, by function, over every run of the sweep.
    pub body_runs: BTreeMap<String, u64>,
    /// Function bodies run in the crash-free run.
    pub crash_free_body_runs: BTreeMap<String, u64>,
}

/// A run that did not come out as the crash-free run did.
#[derive(Clone, Debug)]
pub struct Failure {
    /// The crash schedule of the run.
    pub schedule: Vec<CrashPoint>,
    /// What the write at the (first) crash point was, in the crash-free run.
    pub write: Option<String>,
    /// What went wrong.
    pub problem: String,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.schedule.is_empty() {
            write!(f, "in the crash-free run")?;
        } else {
            let points: Vec<String> = self.schedule.iter().map(ToString::to_string).collect();
            write!(f, "after a crash {}", points.join(", then "))?;
            if let Some(write) = &self.write {
                write!(f, " ({write})")?;
            }
        }
        let schedule: Vec<String> = self
            .schedule
            .iter()
            .map(|p| format!("CrashPoint::{}({})", if p.after { "after" } else { "before" }, p.write))
            .collect();
        write!(f, ": {}\n  reproduce: sweep.run_schedule(&[{}]).await", self.problem, schedule.join(", "))
    }
}

impl std::error::Error for Failure {}

type Workers = Arc<dyn Fn(Arc<dyn Store>) -> Vec<Durable> + Send + Sync>;
type Outside = Arc<dyn Fn(Durable) -> BoxFuture<'static, ()> + Send + Sync>;
type Stores = Arc<dyn Fn() -> Arc<dyn Store> + Send + Sync>;

/// A crash sweep of one invocation.
///
/// Every run starts from an empty store, builds the workers, and starts the
/// invocation on the first worker with [`Durable::run`]. When a generation of workers
/// reaches its crash point it freezes (no call of it returns again) and is dropped;
/// fresh workers are built over the same store, the invocation is run again under the
/// same id (attaching to it), virtual time carries past the leases, and the run goes
/// on until the invocation and everything it started have settled. Then it must have
/// the crash-free result, the same promise ids with the same settled values (values
/// recorded by `now`, `random` and `uuid` excepted), no promise settled twice, and no
/// task or promise left unfinished.
///
/// A task that halts (a nondeterminism, or a task that faulted too often) ends the
/// run at once: the failure is the halt's own error, with the call, both sides and
/// file:line for a nondeterminism, and says whether the crash-free run or which
/// crash brought it.
///
/// Runs need tokio's paused time: call [`Sweep::run`] from
/// `#[tokio::test(start_paused = true)]`, or through [`block_on`](crate::block_on).
pub struct Sweep<F: Function> {
    id: String,
    f: F,
    args: F::Args,
    workers: Workers,
    outside: Option<Outside>,
    stores: Stores,
    start: Option<durable::History>,
    patience: Duration,
    /// The invocation is a schedule's fire: each generation waits for it.
    scheduled: bool,
}

impl<F: Function> fmt::Debug for Sweep<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sweep").field("id", &self.id).field("function", &self.f.name()).finish()
    }
}

/// Every promise of a finished run, by id.
type Tree = BTreeMap<String, Node>;

/// A promise of a finished run: what it is, its state and its value.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Node {
    /// The function called, or `sleep`, `promise`, `now`, `random`, `uuid`.
    what: String,
    state: State,
    value: Option<String>,
}

impl fmt::Display for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.state)?;
        match &self.value {
            Some(value) => write!(f, " {}", shortened(value)),
            None => Ok(()),
        }
    }
}

/// A value for a message: whole if short, else its first 120 characters.
fn shortened(value: &str) -> String {
    match value.char_indices().nth(120) {
        Some((end, _)) => format!("{}… ({} bytes)", &value[..end], value.len()),
        None => value.to_owned(),
    }
}

/// How a run's promises differ from the crash-free run's, one line per promise.
fn differences(expected: &Tree, found: &Tree) -> String {
    let mut lines = Vec::new();
    for (id, want) in expected {
        match found.get(id) {
            None => lines.push(format!("{id} ({}) is missing: the crash-free run has it {want}", want.what)),
            Some(got) if got != want => {
                lines.push(format!("{id} ({}): the crash-free run has it {want}, this run {got}", want.what));
            }
            Some(_) => {}
        }
    }
    for (id, got) in found {
        if !expected.contains_key(id) {
            lines.push(format!("{id} ({}) is new: {got}", got.what));
        }
    }
    lines.iter().map(|l| format!("\n    {l}")).collect()
}

/// One finished run.
struct Finished<T> {
    result: durable::Result<T>,
    tree: Tree,
    log: Vec<String>,
    body_runs: BTreeMap<String, u64>,
}

impl<F> Sweep<F>
where
    F: Function,
    F::Args: Clone + Sync,
    F::Output: PartialEq + fmt::Debug,
{
    /// A sweep of the invocation `id` of `f` with `args`. Set the workers with
    /// [`Sweep::workers`]; the first must have `f` registered.
    pub fn new(id: impl Into<String>, f: F, args: F::Args) -> Sweep<F> {
        let f2 = f.clone();
        Sweep {
            id: id.into(),
            f,
            args,
            workers: Arc::new(move |store| {
                vec![Durable::builder().store(store).register(f2.clone()).build().expect("a runtime with the function")]
            }),
            outside: None,
            stores: Arc::new(|| Arc::new(MemoryStore::new()) as Arc<dyn Store>),
            start: None,
            patience: Duration::from_secs(7 * 24 * 3600),
            scheduled: false,
        }
    }

    /// How to build one generation of workers over a store (the first runs the
    /// invocation). Called again after every crash.
    pub fn workers(mut self, workers: impl Fn(Arc<dyn Store>) -> Vec<Durable> + Send + Sync + 'static) -> Self {
        self.workers = Arc::new(workers);
        self
    }

    /// Something outside the workers that the scenario needs, e.g. a person who
    /// resolves an external promise. Started with the first worker of every
    /// generation, and stopped with it.
    pub fn outside<Fut>(mut self, outside: impl Fn(Durable) -> Fut + Send + Sync + 'static) -> Self
    where
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.outside = Some(Arc::new(move |d| Box::pin(outside(d))));
        self
    }

    /// The store each run starts from (default: an empty [`MemoryStore`]).
    pub fn store(mut self, store: impl Fn() -> Arc<dyn Store> + Send + Sync + 'static) -> Self {
        self.stores = Arc::new(store);
        self
    }

    /// Starts every run from a store holding this history of the invocation (one
    /// recorded by older code and half done, say, exported with
    /// [`Promises::history`](durable::Promises::history)): the sweep then shows that
    /// the current code takes it over and finishes it through a crash at every point.
    pub fn history(mut self, history: durable::History) -> Self {
        self.start = Some(history);
        self
    }

    /// The invocation is the fire of a schedule the store holds (see
    /// [`Sweep::store`]): the sweep does not start it, but waits in each generation
    /// for the workers to fire it, then attaches to it. The fire's write is then a
    /// crash point like any other.
    pub fn scheduled(mut self) -> Self {
        self.scheduled = true;
        self
    }

    /// How much virtual time one generation may take before the run counts as hung
    /// (default a week).
    pub fn patience(mut self, patience: Duration) -> Self {
        self.patience = patience;
        self
    }

    /// The crash-free run, then every single crash point. The first run that differs
    /// is the error.
    pub async fn run(&self) -> Result<Report, Failure> {
        let baseline = self.execute(&[]).await?;
        let expected = self.expectation(&baseline)?;
        let writes = baseline.log.len();
        let mut body_runs = baseline.body_runs.clone();
        for write in 1..=writes {
            for point in [CrashPoint::before(write), CrashPoint::after(write)] {
                let finished = self.check(&[point], &expected, &baseline.log).await?;
                for (f, n) in finished.body_runs {
                    *body_runs.entry(f).or_default() += n;
                }
            }
        }
        Ok(Report { writes, crash_points: 2 * writes, body_runs, crash_free_body_runs: baseline.body_runs })
    }

    /// One run that crashes at each point of `schedule` in turn (a point counts the
    /// writes of its own generation), checked against the crash-free run.
    pub async fn run_schedule(&self, schedule: &[CrashPoint]) -> Result<(), Failure> {
        let baseline = self.execute(&[]).await?;
        let expected = self.expectation(&baseline)?;
        self.check(schedule, &expected, &baseline.log).await.map(drop)
    }

    fn expectation(&self, baseline: &Finished<F::Output>) -> Result<(F::Output, Tree), Failure> {
        let value = match &baseline.result {
            Ok(value) => value,
            Err(e) => {
                let problem = format!("the crash-free run failed: {e}");
                return Err(Failure { schedule: Vec::new(), write: None, problem });
            }
        };
        // Results are compared through JSON: outputs need not be Clone.
        let json = serde_json::to_string(value).expect("an output encodes");
        let output = serde_json::from_str(&json).expect("an output decodes");
        Ok((output, baseline.tree.clone()))
    }

    async fn check(
        &self,
        schedule: &[CrashPoint],
        expected: &(F::Output, Tree),
        log: &[String],
    ) -> Result<Finished<F::Output>, Failure> {
        let fail = |problem: String| Failure {
            schedule: schedule.to_vec(),
            write: schedule.first().and_then(|p| log.get(p.write - 1).cloned()),
            problem,
        };
        let finished = self.execute(schedule).await.map_err(|f| fail(f.problem))?;
        match &finished.result {
            Ok(value) if *value == expected.0 => {}
            other => return Err(fail(format!("expected the result {:?}, got {other:?}", expected.0))),
        }
        if finished.tree != expected.1 {
            let lines = differences(&expected.1, &finished.tree);
            return Err(fail(format!("the promise tree differs from the crash-free run's:{lines}")));
        }
        Ok(finished)
    }

    /// Runs the scenario with a crash schedule; checks what does not need the
    /// crash-free run.
    async fn execute(&self, schedule: &[CrashPoint]) -> Result<Finished<F::Output>, Failure> {
        let fail = |problem: String| Failure { schedule: schedule.to_vec(), write: None, problem };
        let store = (self.stores)();
        if let Some(start) = &self.start {
            durable::Promises::new(&*store)
                .import(start)
                .await
                .map_err(|e| fail(format!("the history does not import: {e}")))?;
        }
        let history = Arc::new(History::default());
        let mut body_runs = BTreeMap::new();
        let mut log = Vec::new();
        for generation in 0..=schedule.len() {
            let gate = Arc::new(Gate::new(store.clone(), schedule.get(generation).copied(), history.clone()));
            let workers = (self.workers)(gate.clone());
            let Some(first) = workers.first().cloned() else {
                return Err(fail("the workers closure built no worker".into()));
            };
            let outside = self.outside.as_ref().map(|o| tokio::spawn(o(first.clone())));
            let (id, f, args) = (self.id.clone(), self.f.clone(), self.args.clone());
            let scheduled = self.scheduled;
            let run = async move {
                while scheduled && first.get(&id).await?.is_none() {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                let handle = first.run(&id, f, args).await?;
                let result = handle.await;
                // Let everything the invocation started finish too.
                quiesce(&*first.store().clone()).await;
                result
            };
            let outcome = tokio::select! {
                biased;
                halt = history.halted() => Some(Err(halt)),
                () = gate.died() => None,
                outcome = tokio::time::timeout(self.patience, run) => Some(Ok(outcome)),
            };
            for w in &workers {
                for (f, n) in w.body_runs() {
                    *body_runs.entry(f).or_default() += n;
                }
            }
            if generation == 0 {
                log = gate.log();
            }
            if let Some(outside) = outside {
                outside.abort();
            }
            drop(workers);
            let outcome = match outcome {
                None => continue,
                Some(Err(halt)) => return Err(fail(halt)),
                Some(Ok(outcome)) => outcome,
            };
            let Ok(result) = outcome else {
                return Err(fail(format!("no result within {:?} of virtual time: the run hung", self.patience)));
            };
            let tree = leftovers(&*store).await.map_err(fail)?;
            let violations = history.violations();
            if !violations.is_empty() {
                return Err(fail(violations.join("; ")));
            }
            return Ok(Finished { result, tree, log, body_runs });
        }
        Err(fail("the last generation crashed too".into()))
    }
}

/// Waits until no promise is pending.
async fn quiesce(store: &dyn Store) {
    loop {
        let pending = Search { state: Some(State::Pending), limit: 1, ..Search::default() };
        match store.search(pending).await {
            Ok(page) if page.promises.is_empty() => return,
            _ => tokio::time::sleep(Duration::from_secs(1)).await,
        }
    }
}

/// Every promise as (state, value), recorded values masked; an error for anything
/// left unfinished.
async fn leftovers(store: &dyn Store) -> Result<Tree, String> {
    let mut tree = BTreeMap::new();
    let mut cursor = None;
    loop {
        let page =
            store.search(Search { cursor, limit: 1000, ..Search::default() }).await.map_err(|e| e.to_string())?;
        for p in page.promises {
            if p.state == State::Pending {
                return Err(format!("promise {} was left pending", p.id));
            }
            if let Some(task) = store.task(&p.id).await.map_err(|e| e.to_string())?
                && task.state != TaskState::Fulfilled
            {
                return Err(format!("the task of {} was left {:?}", p.id, task.state));
            }
            let what = p.param.what().to_owned();
            let value = match p.param {
                Param::Record { .. } => Some(format!("<recorded {what}>")),
                _ => p.value,
            };
            tree.insert(p.id, Node { what, state: p.state, value });
        }
        match page.cursor {
            Some(c) => cursor = Some(c),
            None => return Ok(tree),
        }
    }
}
