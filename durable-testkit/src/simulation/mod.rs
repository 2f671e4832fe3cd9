//! A deterministic simulation of everything at once: from one seed, random
//! invocations that use every operation (some started later, some debounced),
//! a schedule firing every 30 s, interleaved on virtual time with worker crashes and
//! restarts, store faults, retention, explicit purges, cancels, resumes, restarts,
//! exports and imports into another store, and a deploy of a patched body while
//! invocations are in flight; then invariants are checked.
//!
//! ```
//! use durable_testkit::simulation::Simulation;
//!
//! #[tokio::main(flavor = "current_thread", start_paused = true)]
//! async fn main() {
//!     let summary = Simulation::new(7).steps(20).run().await.unwrap_or_else(|failure| panic!("{failure}"));
//!     assert!(summary.invocations > 0);
//! }
//! ```
//!
//! Invariants, checked as it runs and at its end:
//!
//! * every promise settles at most once, and a settled value never changes;
//! * a call whose result was recorded never runs again;
//! * no promise a body created is created a second time (nothing an invocation could
//!   still replay was deleted);
//! * every invocation ends with the result its program must give (or as canceled, if
//!   it was), and so does every detached invocation it started and every restart;
//! * nothing is stranded: once the simulation drains, nothing is pending, and every
//!   call's task is fulfilled;
//! * no task waits longer than [`MAX_WAIT`] for a worker while its group has one;
//! * an exported invocation imported into another store finishes there with the
//!   same result;
//! * every fire of the schedule, from its first to its end, started one invocation,
//!   which gave its value, and none was skipped or missed;
//! * every debounced invocation gave the value of the last call that joined it;
//! * what a [`Workload`] of your own checks.
//!
//! The same seed gives the same workload and the same events at the same virtual
//! times. On MemoryStore that is the same run; on a store whose writes take real time
//! (sled's disk, PostgreSQL's server) the interleaving of workers may differ from run
//! to run, so a seed reproduces the workload and events, not every instruction. A
//! store call takes no virtual time on any store: while one is in flight, the clock
//! stands still.

mod observe;
mod workload;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use durable::store::Search;
use durable::{Builder, Durable, MemoryStore, Millis, Param, State, Store, TaskState};
use futures::future::BoxFuture;
use proptest::prelude::RngCore;
use proptest::test_runner::{RngAlgorithm, TestRng};

use self::observe::Observed;
use self::workload::{GROUPS, sim_flow, sim_flow_patched, sim_leaf, sim_limited, sim_refuse, sim_saga, sim_undo};
use crate::FaultyStore;

/// The longest a task may wait for a worker while its group has one: a few leases,
/// for a worker that died holding it.
pub const MAX_WAIT: Duration = Duration::from_secs(600);

/// The lease of the simulation's workers.
const LEASE: Duration = Duration::from_secs(10);

/// Its retention: an hour, shorter than its longest sleeps and retry waits.
const RETENTION: Duration = Duration::from_secs(3600);

/// Its schedule: its id, how often it fires and for how long, in ms, and its leaf's
/// argument.
const SCHEDULE: &str = "sim-every-30s";
const SCHEDULE_EVERY: Millis = 30_000;
const SCHEDULE_FOR: Millis = 240_000;
const SCHEDULE_LEAF: u64 = 21;

/// The simulation's random numbers, from its seed.
#[derive(Debug)]
pub struct SimRng(TestRng);

impl SimRng {
    fn new(seed: u64) -> SimRng {
        let mut bytes = [0; 32];
        bytes[..8].copy_from_slice(&seed.to_le_bytes());
        SimRng(TestRng::from_seed(RngAlgorithm::ChaCha, &bytes))
    }

    /// A number in `0..n` (0 if `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.0.next_u64() % n }
    }
}

/// Functions, invocations and invariants of your own, mixed into a simulation.
pub trait Workload: Send + Sync + 'static {
    /// Registers your functions on a worker (of group `a` or `b`).
    fn register(&self, builder: Builder) -> Builder;

    /// Starts invocation `n` through `client` (a runtime with no functions: use
    /// [`Durable::rpc`]), with arguments drawn from `rng`; returns its id. Started
    /// again on a fresh store with the same draws, crash-free, it gives the result
    /// the simulated one must give.
    fn start<'a>(&'a self, client: &'a Durable, n: usize, rng: &'a mut SimRng)
    -> BoxFuture<'a, Result<String, String>>;

    /// Checks the store once the simulation has drained: your invariants.
    fn check<'a>(&'a self, store: &'a dyn Store) -> BoxFuture<'a, Result<(), String>> {
        let _ = store;
        Box::pin(async { Ok(()) })
    }
}

/// A simulation: see the [module](self).
pub struct Simulation {
    seed: u64,
    steps: usize,
    faults: u64,
    max_wait: Option<Duration>,
    stalls: bool,
    store: Arc<dyn Fn() -> Arc<dyn Store> + Send + Sync>,
    workload: Option<Arc<dyn Workload>>,
}

impl fmt::Debug for Simulation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Simulation").field("seed", &self.seed).field("steps", &self.steps).finish()
    }
}

/// What a simulation did. On MemoryStore a seed gives the same summary every run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// Its seed.
    pub seed: u64,
    /// Invocations started (restarts included).
    pub invocations: usize,
    /// Promises created in the simulated store.
    pub promises: usize,
    /// Leaf bodies run.
    pub leaf_runs: u64,
    /// How often each event and each kind of step happened.
    pub counts: BTreeMap<&'static str, u64>,
    /// Store operations made through the fault injector.
    pub operations: usize,
    /// Store faults injected.
    pub faults: usize,
    /// The longest a task waited for a worker, in ms.
    pub longest_wait: Millis,
}

/// A simulation that broke an invariant.
#[derive(Clone, Debug)]
pub struct SimFailure {
    /// The seed that reproduces it.
    pub seed: u64,
    /// Its number of events ([`Simulation::steps`]).
    pub steps: usize,
    /// The first invariant broken, and how.
    pub invariant: String,
    /// The events that led to it, the last ones last.
    pub events: Vec<String>,
}

impl fmt::Display for SimFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "simulation seed {} broke an invariant: {}", self.seed, self.invariant)?;
        let skip = self.events.len().saturating_sub(40);
        if skip > 0 {
            writeln!(f, "  ({skip} earlier events)")?;
        }
        for event in &self.events[skip..] {
            writeln!(f, "  {event}")?;
        }
        let (seed, steps) = (self.seed, self.steps);
        write!(
            f,
            "reproduce: cargo run --release --bin durable-bench -- simulate --seed {seed} --seeds 1 --events {steps} \
             (and --store as this run's), or Simulation::new({seed}).steps({steps}) with the same store and workload"
        )
    }
}

impl std::error::Error for SimFailure {}

/// A worker the simulation runs: its group and pid, and the runtime while it is up.
struct Slot {
    group: &'static str,
    pid: String,
    durable: Option<Durable>,
    /// Its way to the store, which a stall holds up and a crash kills.
    line: Arc<FaultyStore>,
}

/// What an invocation must end as.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Expect {
    /// This JSON value.
    Value(String),
    /// Canceled (or, if it finished before the cancel, its value).
    Canceled(String),
}

impl Simulation {
    /// The simulation of `seed`: 60 events on a MemoryStore, a store fault in about
    /// one operation of 200, the built-in workload only.
    pub fn new(seed: u64) -> Simulation {
        Simulation {
            seed,
            steps: 60,
            faults: 5,
            max_wait: Some(MAX_WAIT),
            stalls: true,
            store: Arc::new(|| Arc::new(MemoryStore::new()) as Arc<dyn Store>),
            workload: None,
        }
    }

    /// How many events it draws.
    pub fn steps(mut self, steps: usize) -> Simulation {
        self.steps = steps;
        self
    }

    /// Store faults per thousand operations (0: none).
    pub fn faults(mut self, per_thousand: u64) -> Simulation {
        self.faults = per_thousand;
        self
    }

    /// The store to simulate on, made fresh for each run; on virtual time, like the
    /// crash sweep's (a SledStore on a `VirtualClock`, say).
    pub fn store(mut self, store: impl Fn() -> Arc<dyn Store> + Send + Sync + 'static) -> Simulation {
        self.store = Arc::new(store);
        self
    }

    /// Whether to stall a worker now and then (on by default): its store calls are
    /// held for two leases ([`FaultyStore::stall`]), as a paused process's or a
    /// partitioned one's are, so its leases end and its writes arrive after others
    /// claimed its tasks. Off, the seeds draw other events instead.
    pub fn stalls(mut self, on: bool) -> Simulation {
        self.stalls = on;
        self
    }

    /// The longest a task may wait for a worker ([`MAX_WAIT`] unless set); `None`
    /// checks no bound (for a workload whose functions run longer than that).
    pub fn max_wait(mut self, max_wait: Option<Duration>) -> Simulation {
        self.max_wait = max_wait;
        self
    }

    /// Mixes your own functions, invocations and invariants in.
    pub fn workload(mut self, workload: impl Workload) -> Simulation {
        self.workload = Some(Arc::new(workload));
        self
    }

    /// Runs it; under tokio's paused time (`#[tokio::test(start_paused = true)]`, or
    /// [`block_on`](crate::block_on)).
    pub async fn run(&self) -> Result<Summary, SimFailure> {
        let key = format!("sim-{}-{}", self.seed, next_run());
        let mut run = Run::new(self, key.clone());
        let outcome = run.simulate().await;
        workload::forget(&key);
        outcome
    }
}

/// A distinct number for each run in a process, so that runs at once never share a
/// world.
fn next_run() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
}

/// One run of a simulation.
struct Run<'a> {
    sim: &'a Simulation,
    rng: SimRng,
    key: String,
    world: Arc<workload::World>,
    observed: Arc<Observed>,
    faulty: Arc<FaultyStore>,
    slots: Vec<Slot>,
    client: Durable,
    patched: bool,
    expect: BTreeMap<String, Expect>,
    detached: Vec<(String, u64)>,
    /// Each debounced invocation, and the argument of the last call that joined it.
    debounced: BTreeMap<String, u64>,
    events: Vec<String>,
    counts: BTreeMap<&'static str, u64>,
    started: usize,
}

impl<'a> Run<'a> {
    fn new(sim: &'a Simulation, key: String) -> Run<'a> {
        let observed = Arc::new(Observed::new((sim.store)()));
        let faulty = Arc::new(FaultyStore::new(observed.clone()).random(sim.seed, sim.faults));
        let world = workload::world(&key);
        *world.store.lock().unwrap_or_else(|e| e.into_inner()) = Some(observed.clone());
        let client = Durable::builder().store(observed.clone()).group("client").build().expect("a client runtime");
        let slots = [("a", "a1"), ("a", "a2"), ("b", "b1")]
            .into_iter()
            .map(|(group, pid)| Slot {
                group,
                pid: pid.into(),
                durable: None,
                line: Arc::new(FaultyStore::new(faulty.clone())),
            })
            .collect();
        Run {
            sim,
            rng: SimRng::new(sim.seed),
            key,
            world,
            observed,
            faulty,
            slots,
            client,
            patched: false,
            expect: BTreeMap::new(),
            detached: Vec::new(),
            debounced: BTreeMap::new(),
            events: Vec::new(),
            counts: BTreeMap::new(),
            started: 0,
        }
    }

    /// A worker of `group` on `store`, with the build deployed.
    fn worker(&self, group: &str, pid: &str, store: Arc<dyn Store>) -> Durable {
        let builder = Durable::builder()
            .store(store)
            .group(group)
            .pid(pid)
            .lease(LEASE)
            .concurrency(2)
            .retention(Some(RETENTION));
        let builder = builder.register(sim_leaf).register(sim_limited).register(sim_saga).register(sim_refuse);
        let builder = builder.register(sim_undo);
        let builder = if self.patched { builder.register(sim_flow_patched) } else { builder.register(sim_flow) };
        let builder = match &self.sim.workload {
            Some(w) => w.register(builder),
            None => builder,
        };
        builder.build().expect("a simulated worker")
    }

    fn note(&mut self, what: &'static str, detail: String) {
        *self.counts.entry(what).or_default() += 1;
        let at = tokio::time::Instant::now();
        self.events.push(format!("{at:?} {what}: {detail}"));
    }

    fn fail(&self, invariant: String) -> SimFailure {
        SimFailure { seed: self.sim.seed, steps: self.sim.steps, invariant, events: self.events.clone() }
    }

    /// The first violation seen so far, as a failure.
    fn check_violations(&self) -> Result<(), SimFailure> {
        let world = self.world.violations.lock().unwrap_or_else(|e| e.into_inner()).first().cloned();
        let mut all: Vec<String> = world.into_iter().collect();
        all.extend(self.observed.violations());
        match all.into_iter().next() {
            Some(v) => Err(self.fail(v)),
            None => Ok(()),
        }
    }

    async fn simulate(&mut self) -> Result<Summary, SimFailure> {
        for limit in workload::limits() {
            self.observed.set_limit(limit, true).await.map_err(|e| self.fail(format!("setting a limit: {e}")))?;
        }
        self.schedule().await?;
        for i in 0..self.slots.len() {
            let slot = &self.slots[i];
            let durable = self.worker(slot.group, &slot.pid.clone(), slot.line.clone());
            self.slots[i].durable = Some(durable);
        }
        for _ in 0..self.sim.steps {
            tokio::time::sleep(Duration::from_millis(self.rng.below(3000))).await;
            self.event().await?;
            self.check_violations()?;
        }
        self.drain().await?;
        self.check().await
    }

    async fn event(&mut self) -> Result<(), SimFailure> {
        match self.rng.below(100) {
            0..30 => self.start().await,
            30..40 => self.crash(),
            40..55 => self.approve().await,
            55..58 => self.cancel().await,
            58..63 => self.purge().await,
            63..67 => return self.export_import().await,
            67..69 if !self.patched => self.deploy(),
            69..72 => self.resume().await,
            72..76 => self.restart().await,
            76..79 if self.sim.stalls => self.stall(),
            79..85 => self.debounce().await,
            _ => self.note("quiet", String::new()),
        }
        Ok(())
    }

    async fn start(&mut self) {
        let n = self.started;
        self.started += 1;
        if let Some(workload) = self.sim.workload.clone()
            && self.rng.below(2) == 0
        {
            let mut draws = SimRng::new(self.rng.0.next_u64());
            let mut reference_draws = SimRng(draws.0.clone());
            match workload.start(&self.client, n, &mut draws).await {
                Ok(id) => {
                    let expected = reference(&*workload, n, &mut reference_draws).await;
                    self.note("start (your workload)", id.clone());
                    match expected {
                        Ok(value) => {
                            self.expect.insert(id, Expect::Value(value));
                        }
                        Err(e) => self.world.violate(format!("no result to compare {id} with: {e}")),
                    }
                }
                Err(e) => self.note("start refused", e),
            }
            return;
        }
        let id = format!("sim-{n}");
        let steps = workload::program(&mut self.rng, 6, 2);
        workload::count(&steps, &mut self.counts);
        let value = workload::expected(&id, &steps, &mut self.detached);
        let group = GROUPS[self.rng.below(2) as usize];
        // One in four starts later.
        let later = Duration::from_secs(if self.rng.below(4) == 0 { self.rng.below(90) + 1 } else { 0 });
        let call = self
            .client
            .rpc(&id, sim_flow, (self.key.clone(), id.clone(), steps.clone()))
            .target(format!("poll://any@{group}"))
            .start_after(later);
        match call.await {
            Ok(_) => {
                self.expect.insert(id.clone(), Expect::Value(value.to_string()));
                let what = if later.is_zero() { "start" } else { "start later" };
                self.note(what, format!("{id} on {group} after {later:?}: {steps:?}"));
            }
            Err(e) => self.note("start refused", format!("{id}: {e}")),
        }
    }

    fn crash(&mut self) {
        let i = self.rng.below(self.slots.len() as u64) as usize;
        let same_pid = self.rng.below(2) == 0;
        let (group, old) = (self.slots[i].group, self.slots[i].pid.clone());
        // Killed, not shut down: it gives nothing back, and its successor comes up
        // on a line of its own.
        self.slots[i].line.kill();
        self.slots[i].durable = None;
        self.slots[i].line = Arc::new(FaultyStore::new(self.faulty.clone()));
        if !same_pid {
            self.slots[i].pid = format!("{group}{}", 10 + self.rng.below(1000));
        }
        let pid = self.slots[i].pid.clone();
        let durable = self.worker(group, &pid, self.slots[i].line.clone());
        self.slots[i].durable = Some(durable);
        self.note("crash and restart", format!("{old} restarted as {pid}"));
    }

    /// Pending approvals of the built-in workload.
    async fn approvals(&self) -> Vec<String> {
        let search = Search { state: Some(State::Pending), limit: 1000, ..Search::default() };
        match self.observed.search(search).await {
            Ok(page) => page
                .promises
                .into_iter()
                .filter(|p| p.param == Param::External && p.id.ends_with("-approval"))
                .map(|p| p.id)
                .collect(),
            Err(_) => Vec::new(),
        }
    }

    async fn approve(&mut self) {
        let pending = self.approvals().await;
        if pending.is_empty() {
            return self.note("quiet", "no approval to give".into());
        }
        let id = pending[self.rng.below(pending.len() as u64) as usize].clone();
        let value = workload::approval_value(&id);
        let _ = self.client.promises().resolve(&id, &value).await;
        self.note("approve", format!("{id} = {value}"));
        // Now and then a client resolves it again, with another value: the first
        // settle stands.
        if value % 4 == 0 {
            let again = self.client.promises().resolve(&id, &(value + 1)).await;
            self.note("approve again", format!("{id} = {}: {again:?}", value + 1));
        }
    }

    /// An invocation the simulation started, at random.
    fn some_invocation(&mut self) -> Option<String> {
        let ids: Vec<&String> = self.expect.keys().collect();
        if ids.is_empty() {
            return None;
        }
        Some(ids[self.rng.below(ids.len() as u64) as usize].clone())
    }

    async fn cancel(&mut self) {
        let Some(id) = self.some_invocation() else { return };
        let Some(Expect::Value(value)) = self.expect.get(&id).cloned() else { return };
        match self.client.promises().cancel(&id).await {
            Ok(_) => {
                self.expect.insert(id.clone(), Expect::Canceled(value));
                self.note("cancel", id);
            }
            Err(e) => self.note("cancel refused", format!("{id}: {e}")),
        }
    }

    async fn purge(&mut self) {
        let Ok(now) = self.observed.now().await else { return };
        let before = now.saturating_sub(RETENTION.as_millis() as Millis);
        let purged = self.client.promises().purge_finished_before(before).await;
        self.note("purge", format!("{purged:?} families settled an hour ago"));
    }

    async fn resume(&mut self) {
        let Some(id) = self.some_invocation() else { return };
        let resumed = self.client.promises().resume(&id).await;
        self.note("resume", format!("{id}: {resumed:?}"));
    }

    async fn restart(&mut self) {
        let Some(id) = self.some_invocation() else { return };
        let Some(Expect::Value(value)) = self.expect.get(&id).cloned() else { return };
        let new_id = format!("{id}-again{}", self.rng.below(1_000_000));
        match self.client.promises().restart(&id, &new_id).await {
            Ok(_) => {
                self.expect.insert(new_id.clone(), Expect::Value(value));
                self.started += 1;
                self.note("restart", format!("{id} as {new_id}"));
            }
            Err(e) => self.note("restart refused", format!("{id}: {e}")),
        }
    }

    /// The schedule every run has: every 30 s for four minutes, each fire a leaf that
    /// fails its first attempt, one fire after another.
    async fn schedule(&mut self) -> Result<(), SimFailure> {
        let now = self.observed.now().await.map_err(|e| self.fail(format!("the store's clock: {e}")))?;
        let end = std::time::UNIX_EPOCH + Duration::from_millis(now + SCHEDULE_FOR);
        let spec = durable::ScheduleSpec::every(Duration::from_millis(SCHEDULE_EVERY))
            .end_at(end)
            .overlap(durable::Overlap::BufferAll)
            .target(&format!("poll://any@{}", GROUPS[self.rng.below(2) as usize]));
        let args = (self.key.clone(), SCHEDULE_LEAF, 1);
        let made = self.client.schedules().create(SCHEDULE, spec, sim_leaf, args).await;
        let made = made.map_err(|e| self.fail(format!("creating the schedule: {e}")))?;
        self.note("schedule", format!("{SCHEDULE} from {:?} every {SCHEDULE_EVERY} ms", made.next));
        Ok(())
    }

    /// A debounced call of a leaf, on one of two keys: quiet 5 s, at most 20 s.
    async fn debounce(&mut self) {
        let key = ["k0", "k1"][self.rng.below(2) as usize];
        let n = self.rng.below(100);
        let group = GROUPS[self.rng.below(2) as usize];
        let call = self
            .client
            .debounce(key, sim_leaf, (self.key.clone(), n, 0))
            .quiet(Duration::from_secs(5))
            .max_wait(Duration::from_secs(20))
            .target(format!("poll://any@{group}"));
        match call.await {
            Ok(handle) => {
                self.debounced.insert(handle.id().to_owned(), n);
                self.note("debounce", format!("{key} = {n}: {}", handle.id()));
            }
            Err(e) => self.note("debounce refused", format!("{key}: {e}")),
        }
    }

    /// Every fire of the schedule made one invocation, which gave the leaf's value.
    async fn check_schedule(&self) -> Result<(), SimFailure> {
        let Ok(Some(s)) = self.observed.schedule(SCHEDULE).await else {
            return Err(self.fail(format!("the schedule {SCHEDULE} is gone")));
        };
        let first = s.created_at.div_ceil(SCHEDULE_EVERY) * SCHEDULE_EVERY;
        let times: Vec<Millis> =
            (0..).map(|k| first + k * SCHEDULE_EVERY).take_while(|t| *t <= s.created_at + SCHEDULE_FOR).collect();
        if (s.fired, s.skipped, s.missed, s.next) != (times.len() as u64, 0, None, None) {
            return Err(self.fail(format!(
                "the schedule fired {} of {} times, skipped {}, missed {:?}, next {:?}",
                s.fired,
                times.len(),
                s.skipped,
                s.missed,
                s.next
            )));
        }
        for at in times {
            let id = s.fire_id(at);
            let value = self.observed.settled(&id).and_then(|p| p.value);
            if value != Some((2 * SCHEDULE_LEAF).to_string()) {
                return Err(self.fail(format!("the fire {id} ended with {value:?}")));
            }
        }
        for (id, n) in &self.debounced {
            let value = self.observed.settled(id).and_then(|p| p.value);
            if value != Some((2 * n).to_string()) {
                return Err(self.fail(format!("the debounced {id} ended with {value:?}, not the last call's")));
            }
        }
        Ok(())
    }

    /// A worker stops reaching the store for two leases, then goes on where it was.
    fn stall(&mut self) {
        let i = self.rng.below(self.slots.len() as u64) as usize;
        self.slots[i].line.stall(2 * LEASE);
        self.note("stall", format!("{} reaches the store again in {:?}", self.slots[i].pid, 2 * LEASE));
    }

    fn deploy(&mut self) {
        self.patched = true;
        for i in 0..self.slots.len() {
            self.slots[i].durable = None;
            let (group, pid) = (self.slots[i].group, self.slots[i].pid.clone());
            self.slots[i].durable = Some(self.worker(group, &pid, self.slots[i].line.clone()));
        }
        self.note("deploy", "every worker now runs the flow with a patch".into());
    }

    /// Exports an invocation, imports it into a fresh store with workers of its own,
    /// and runs it to its end there: it must give the same result.
    async fn export_import(&mut self) -> Result<(), SimFailure> {
        let Some(id) = self.some_invocation() else { return Ok(()) };
        let Some(Expect::Value(value)) = self.expect.get(&id).cloned() else { return Ok(()) };
        let Ok(mut history) = self.client.promises().history(&id).await else { return Ok(()) };
        // The other store is another world: the history's calls name it.
        let key = format!("{}-elsewhere{}", self.key, self.counts.get("export and import").copied().unwrap_or(0));
        let (ours, theirs) = (serde_json::to_string(&self.key), serde_json::to_string(&key));
        let (Ok(ours), Ok(theirs)) = (ours, theirs) else { return Ok(()) };
        for recorded in &mut history.promises {
            if let Param::Call { args, .. } = &mut recorded.promise.param {
                *args = args.replace(&ours, &theirs);
            }
        }
        let elsewhere = Arc::new(Observed::new(Arc::new(MemoryStore::new())));
        let world = workload::world(&key);
        *world.store.lock().unwrap_or_else(|e| e.into_inner()) = Some(elsewhere.clone());
        // Its operations take time now and then, so that its workers run while the
        // import is under way.
        let slow: Arc<dyn Store> = Arc::new(FaultyStore::new(elsewhere.clone()).random_delays(self.sim.seed, 200));
        let workers: Vec<Durable> =
            GROUPS.iter().map(|g| self.worker(g, &format!("{g}-elsewhere"), slow.clone())).collect();
        let client = Durable::builder().store(slow.clone()).group("client").build().expect("a client");
        if let Err(e) = client.promises().import(&history).await {
            return Err(self.fail(format!("the history of {id} does not import into an empty store: {e}")));
        }
        self.note("export and import", format!("{id}, {} promises", history.promises.len()));
        let outcome = finish(&client, &id, Duration::from_secs(7 * 24 * 3600)).await;
        drop(workers);
        let broken = world.violations.lock().unwrap_or_else(|e| e.into_inner()).first().cloned();
        workload::forget(&key);
        if let Some(v) = broken.or_else(|| elsewhere.violations().first().cloned()) {
            return Err(self.fail(format!("in the store {id} was imported into: {v}")));
        }
        match outcome {
            Some(Ok(got)) if got == value => Ok(()),
            // Canceled meanwhile in the original store: its history said so.
            Some(Err(e)) if e.contains("canceled") => Ok(()),
            other => Err(self.fail(format!("{id} imported elsewhere gave {other:?}, not {value}"))),
        }
    }

    /// Lets everything finish: every worker up, every approval given, halted tasks
    /// resumed, for up to a week of virtual time.
    async fn drain(&mut self) -> Result<(), SimFailure> {
        self.note("drain", String::new());
        for minute in 0..3 * 24 * 60 {
            tokio::time::sleep(Duration::from_secs(60)).await;
            for id in self.approvals().await {
                let value = workload::approval_value(&id);
                let _ = self.client.promises().resolve(&id, &value).await;
            }
            let pending = Search { state: Some(State::Pending), limit: 1, ..Search::default() };
            let ended = self.observed.schedule(SCHEDULE).await.is_ok_and(|s| s.is_none_or(|s| s.next.is_none()));
            if ended && self.observed.search(pending).await.is_ok_and(|p| p.promises.is_empty()) {
                return Ok(());
            }
            if minute % 60 == 59 {
                for id in self.expect.keys().cloned().collect::<Vec<_>>() {
                    let _ = self.client.promises().resume(&id).await;
                }
            }
            self.check_violations()?;
        }
        Ok(())
    }

    async fn check(&mut self) -> Result<Summary, SimFailure> {
        // Nothing changes the store while it is checked (retention would).
        for slot in &mut self.slots {
            slot.durable = None;
        }
        let _ = self.client.shutdown().await;
        self.check_violations()?;
        if let Some(step) = self.observed.undos_not_run().first() {
            return Err(self.fail(format!("step {step} completed under a body that failed, and was never undone")));
        }
        for (id, expect) in self.expect.clone() {
            // As it settled: retention may have deleted it since.
            let Some(p) = self.observed.settled(&id) else {
                return Err(self.fail(stranded(&*self.observed, &id).await));
            };
            let got = match p.outcome() {
                None => return Err(self.fail(stranded(&*self.observed, &id).await)),
                Some(Ok(json)) => Ok(json.to_owned()),
                Some(Err(e)) => Err(e.to_string()),
            };
            let fine = match (&expect, &got) {
                (Expect::Value(v), Ok(got)) => got == v,
                (Expect::Canceled(v), Ok(got)) => got == v,
                (Expect::Canceled(_), Err(e)) => e.contains("canceled"),
                (Expect::Value(_), Err(_)) => false,
            };
            if !fine {
                return Err(self.fail(format!("{id} ended as {got:?}; it must give {expect:?}")));
            }
        }
        for (id, value) in self.detached.clone() {
            if let Some(p) = self.observed.settled(&id)
                && p.outcome().map(|o| o.map(str::to_owned).map_err(|e| e.to_string())) != Some(Ok(value.to_string()))
            {
                return Err(self.fail(format!("the detached {id} ended as {:?}, not {value}", p.outcome())));
            }
        }
        self.check_store().await?;
        self.check_listing().await?;
        self.check_schedule().await?;
        if let Some(workload) = &self.sim.workload {
            workload.check(&*self.observed).await.map_err(|e| self.fail(format!("your invariant: {e}")))?;
        }
        let (longest, task) = self.observed.longest_wait();
        if let Some(max) = self.sim.max_wait
            && longest > max.as_millis() as Millis
        {
            return Err(self.fail(format!("{task} waited {longest} ms for a worker of its group, over {max:?}")));
        }
        Ok(Summary {
            seed: self.sim.seed,
            invocations: self.started,
            promises: self.observed.promises(),
            leaf_runs: self.world.leaf_runs.load(std::sync::atomic::Ordering::SeqCst),
            counts: self.counts.clone(),
            operations: self.faulty.operations(),
            faults: self.faulty.injected(),
            longest_wait: longest,
        })
    }

    /// Nothing pending, and every call's task fulfilled with its promise.
    async fn check_store(&self) -> Result<(), SimFailure> {
        let mut cursor = None;
        loop {
            let search = Search { cursor, limit: 1000, ..Search::default() };
            let page = self.observed.search(search).await.map_err(|e| self.fail(format!("a search failed: {e}")))?;
            for p in &page.promises {
                if p.state == State::Pending {
                    return Err(self.fail(stranded(&*self.observed, &p.id).await));
                }
                if let Ok(Some(task)) = self.observed.task(&p.id).await
                    && task.state != TaskState::Fulfilled
                {
                    return Err(self.fail(format!("{} settled, and its task is {:?}", p.id, task.state)));
                }
            }
            match page.cursor {
                Some(c) => cursor = Some(c),
                None => return Ok(()),
            }
        }
    }
}

impl Run<'_> {
    /// The listing's index agrees with the records: every invocation the simulation
    /// started that is still in the store is listed once, and everything listed is
    /// in the store.
    async fn check_listing(&self) -> Result<(), SimFailure> {
        let (mut listed, mut cursor) = (std::collections::BTreeSet::new(), None);
        loop {
            let query = durable::store::Invocations { cursor, limit: 500, ..Default::default() };
            let page =
                self.observed.invocations(query).await.map_err(|e| self.fail(format!("a listing failed: {e}")))?;
            for i in page.invocations {
                if !listed.insert(i.promise.id.clone()) {
                    return Err(self.fail(format!("{} is listed twice", i.promise.id)));
                }
                if self.observed.get(&i.promise.id).await.ok().flatten().is_none() {
                    return Err(self.fail(format!("{} is listed, and not in the store", i.promise.id)));
                }
            }
            match page.cursor {
                Some(c) => cursor = Some(c),
                None => break,
            }
        }
        for id in self.expect.keys() {
            if self.observed.get(id).await.ok().flatten().is_some() && !listed.contains(id) {
                return Err(self.fail(format!("{id} is in the store and not listed")));
            }
        }
        Ok(())
    }
}

/// Why `id` is still pending: its task's state and last fault.
async fn stranded(store: &dyn Store, id: &str) -> String {
    let task = store.task(id).await.ok().flatten();
    format!(
        "{id} is still pending after a week of draining (its task: {:?}, last fault {:?}): stranded",
        task.as_ref().map(|t| t.state),
        task.and_then(|t| t.error)
    )
}

/// Waits up to `patience` of virtual time for `id` to settle in `client`'s store,
/// giving every approval there meanwhile; its JSON value or its error.
async fn finish(client: &Durable, id: &str, patience: Duration) -> Option<Result<String, String>> {
    let deadline = tokio::time::Instant::now() + patience;
    while tokio::time::Instant::now() < deadline {
        if let Ok(Some(p)) = client.get(id).await
            && let Some(outcome) = p.outcome()
        {
            return Some(outcome.map(str::to_owned).map_err(|e| e.to_string()));
        }
        let search = Search { state: Some(State::Pending), limit: 1000, ..Search::default() };
        if let Ok(page) = client.promises().search(search).await {
            for p in page.promises.iter().filter(|p| p.param == Param::External && p.id.ends_with("-approval")) {
                let _ = client.promises().resolve(&p.id, &workload::approval_value(&p.id)).await;
            }
        }
        tokio::time::sleep(Duration::from_secs(60)).await;
    }
    None
}

/// The crash-free result of a workload's invocation `n`: started with the same draws
/// on a fresh MemoryStore, with a worker of each group.
async fn reference(workload: &dyn Workload, n: usize, rng: &mut SimRng) -> Result<String, String> {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let workers: Vec<Durable> = GROUPS
        .iter()
        .map(|g| workload.register(Durable::builder().store(store.clone()).group(*g)).build())
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    let client = Durable::builder().store(store.clone()).group("client").build().map_err(|e| e.to_string())?;
    let id = workload.start(&client, n, rng).await?;
    let outcome = finish(&client, &id, Duration::from_secs(30 * 24 * 3600)).await;
    drop(workers);
    match outcome {
        Some(Ok(value)) => Ok(value),
        Some(Err(e)) => Err(format!("the crash-free run of {id} failed: {e}")),
        None => Err(format!("the crash-free run of {id} did not finish within 30 days")),
    }
}
