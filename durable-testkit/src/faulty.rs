//! A store wrapper that injects faults, to show that the runtime's handling of store
//! failures is safe.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use durable::store::{
    Acquired, Claim, CreatePromise, Created, Invocations, Listing, Page, Purge, Release, Search, SettlePromise, Tick,
    Worker,
};
use durable::{Fence, Limit, LimitState, Millis, Promise, Schedule, Store, StoreError, Task};
use tokio::sync::watch;

/// A fault to inject into one store operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The operation fails; nothing happened.
    Fail,
    /// The operation happens, then reports failure: its outcome is unknown to the caller.
    Unknown,
    /// The operation happens after this delay.
    Delay(Duration),
}

/// A [`Store`] that injects [`Fault`]s into chosen operations, counted from 1 over
/// every call (reads included) except `now` and `ready`.
///
/// ```
/// use std::sync::Arc;
/// use durable_testkit::{Fault, FaultyStore};
///
/// let store = FaultyStore::new(Arc::new(durable::MemoryStore::new()))
///     .inject(3, Fault::Unknown)
///     .inject(7, Fault::Fail);
/// assert_eq!(store.operations(), 0);
/// ```
#[derive(Debug)]
pub struct FaultyStore {
    inner: Arc<dyn Store>,
    faults: Mutex<BTreeMap<usize, Fault>>,
    /// Faults drawn for every operation: `(seed, per thousand, delays only)`.
    random: Option<(u64, u64, bool)>,
    calls: AtomicUsize,
    /// Delays for the next operation of a name, each taken once.
    named: Mutex<BTreeMap<&'static str, Duration>>,
    injected: AtomicUsize,
    /// Until when every operation waits before it starts.
    stalled_until: Mutex<Option<tokio::time::Instant>>,
    /// Set by [`FaultyStore::kill`]: no operation returns again.
    killed: std::sync::atomic::AtomicBool,
}

impl FaultyStore {
    /// Wraps `inner`, with no faults yet.
    pub fn new(inner: Arc<dyn Store>) -> FaultyStore {
        FaultyStore {
            inner,
            faults: Mutex::default(),
            random: None,
            calls: AtomicUsize::new(0),
            named: Mutex::default(),
            injected: AtomicUsize::new(0),
            stalled_until: Mutex::new(None),
            killed: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// From now on no operation returns, and none reaches the store: what the store
    /// sees of a process that was killed. A runtime over it that is then dropped
    /// stands for a crashed process: it gives nothing back (dropping one otherwise
    /// releases its tasks), and its tasks wait for their leases to end.
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # use std::time::Duration;
    /// use durable::Store;
    /// use durable_testkit::FaultyStore;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let store = FaultyStore::new(Arc::new(durable::MemoryStore::new()));
    /// store.kill();
    /// let read = tokio::time::timeout(Duration::from_millis(10), store.get("x")).await;
    /// assert!(read.is_err(), "a killed store never answers");
    /// # }
    /// ```
    pub fn kill(&self) {
        self.killed.store(true, Ordering::SeqCst);
    }

    /// Holds every operation that starts within the next `d` until `d` has passed, as
    /// an operating system's pause of the process or a network partition would: its
    /// heartbeats stop reaching the store, so its leases end, and what it was
    /// writing arrives after others may have claimed its tasks.
    pub fn stall(&self, d: Duration) {
        *self.stalled_until.lock().unwrap_or_else(|e| e.into_inner()) = Some(tokio::time::Instant::now() + d);
    }

    /// Also injects a fault into each operation with probability `per_thousand` /
    /// 1000, of a kind drawn with it (fail, unknown outcome, or a delay of up to a
    /// second), all from `seed` and the operation's number: the same seed and the
    /// same sequence of operations give the same faults.
    pub fn random(mut self, seed: u64, per_thousand: u64) -> FaultyStore {
        self.random = Some((seed, per_thousand, false));
        self
    }

    /// Like [`FaultyStore::random`], but every fault drawn is a delay: operations
    /// take time, and nothing fails.
    pub fn random_delays(mut self, seed: u64, per_thousand: u64) -> FaultyStore {
        self.random = Some((seed, per_thousand, true));
        self
    }

    /// The fault drawn for operation `n`, if any.
    fn drawn(&self, n: usize) -> Option<Fault> {
        let (seed, per_thousand, delays_only) = self.random?;
        let h = splitmix(seed ^ (n as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        if h % 1000 >= per_thousand {
            return None;
        }
        Some(match if delays_only { 2 } else { (h / 1000) % 3 } {
            0 => Fault::Fail,
            1 => Fault::Unknown,
            _ => Fault::Delay(Duration::from_millis((h / 3000) % 1000)),
        })
    }

    /// Injects `fault` into the `n`-th operation.
    pub fn inject(self, n: usize, fault: Fault) -> FaultyStore {
        self.faults.lock().unwrap_or_else(|e| e.into_inner()).insert(n, fault);
        self
    }

    /// Delays the next operation named `name` (as the store's method is: `claim`,
    /// `settle`, `tick`…) by `d` before it starts, counted as injected once it
    /// begins: a test then acts while that operation is in flight.
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # use std::time::Duration;
    /// use durable::Store;
    /// use durable_testkit::FaultyStore;
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// let store = Arc::new(FaultyStore::new(Arc::new(durable::MemoryStore::new())));
    /// store.delay_next("get", Duration::from_secs(2));
    /// let read = tokio::spawn({
    ///     let store = store.clone();
    ///     async move { store.get("x").await }
    /// });
    /// while store.injected() == 0 {
    ///     tokio::task::yield_now().await;
    /// }
    /// // The read is in flight, and waits two seconds before it reaches the store.
    /// assert!(!read.is_finished());
    /// assert_eq!(read.await.unwrap().unwrap(), None);
    /// # }
    /// ```
    pub fn delay_next(&self, name: &'static str, d: Duration) {
        self.named.lock().unwrap_or_else(|e| e.into_inner()).insert(name, d);
    }

    /// Operations so far.
    pub fn operations(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    /// Faults injected so far.
    pub fn injected(&self) -> usize {
        self.injected.load(Ordering::SeqCst)
    }

    async fn op<T>(&self, name: &str, op: impl Future<Output = Result<T, StoreError>>) -> Result<T, StoreError> {
        self.alive().await;
        let result = self.faulted(name, op).await;
        self.alive().await;
        result
    }

    /// Never completes once killed.
    async fn alive(&self) {
        if self.killed.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
    }

    async fn faulted<T>(&self, name: &str, op: impl Future<Output = Result<T, StoreError>>) -> Result<T, StoreError> {
        let stalled = *self.stalled_until.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(until) = stalled.filter(|until| *until > tokio::time::Instant::now()) {
            tokio::time::sleep_until(until).await;
        }
        let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        let fault = self.faults.lock().unwrap_or_else(|e| e.into_inner()).get(&n).copied().or_else(|| self.drawn(n));
        let named = self.named.lock().unwrap_or_else(|e| e.into_inner()).remove(name).map(Fault::Delay);
        let fault = named.or(fault);
        let injected = || {
            self.injected.fetch_add(1, Ordering::SeqCst);
            StoreError::backend(format!("injected fault in operation {n} ({name})"))
        };
        match fault {
            None => op.await,
            Some(Fault::Fail) => Err(injected()),
            Some(Fault::Unknown) => {
                let _ = op.await;
                Err(injected())
            }
            Some(Fault::Delay(d)) => {
                self.injected.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(d).await;
                op.await
            }
        }
    }
}

#[async_trait]
impl Store for FaultyStore {
    async fn now(&self) -> Result<Millis, StoreError> {
        self.alive().await;
        self.inner.now().await
    }

    async fn create(&self, req: CreatePromise) -> Result<Created, StoreError> {
        self.op("create", self.inner.create(req)).await
    }

    async fn settle(&self, req: SettlePromise) -> Result<Promise, StoreError> {
        self.op("settle", self.inner.settle(req)).await
    }

    async fn import(&self, family: Vec<CreatePromise>) -> Result<(), StoreError> {
        self.op("import", self.inner.import(family)).await
    }

    async fn get(&self, id: &str) -> Result<Option<Promise>, StoreError> {
        self.op("get", self.inner.get(id)).await
    }

    async fn search(&self, search: Search) -> Result<Page, StoreError> {
        self.op("search", self.inner.search(search)).await
    }

    async fn invocations(&self, query: Invocations) -> Result<Listing, StoreError> {
        self.op("invocations", self.inner.invocations(query)).await
    }

    async fn task(&self, id: &str) -> Result<Option<Task>, StoreError> {
        self.op("task", self.inner.task(id)).await
    }

    async fn tasks(&self, ids: &[String]) -> Result<Vec<Task>, StoreError> {
        self.op("tasks", self.inner.tasks(ids)).await
    }

    async fn claim(&self, claim: Claim) -> Result<Vec<Acquired>, StoreError> {
        self.op("claim", self.inner.claim(claim)).await
    }

    async fn heartbeat(&self, process: &str, held: &[Fence], ttl: Millis) -> Result<Vec<Fence>, StoreError> {
        self.op("heartbeat", self.inner.heartbeat(process, held, ttl)).await
    }

    async fn release(&self, fence: &Fence, how: Release) -> Result<(), StoreError> {
        self.op("release", self.inner.release(fence, how)).await
    }

    async fn suspend(&self, fence: &Fence, awaiting: &[String]) -> Result<bool, StoreError> {
        self.op("suspend", self.inner.suspend(fence, awaiting)).await
    }

    async fn resume_halted(
        &self,
        group: &str,
        code: &std::collections::BTreeMap<String, u64>,
    ) -> Result<usize, StoreError> {
        self.op("resume_halted", self.inner.resume_halted(group, code)).await
    }

    async fn request_cancel(&self, id: &str) -> Result<Option<Promise>, StoreError> {
        self.op("request_cancel", self.inner.request_cancel(id)).await
    }

    async fn resume(&self, id: &str) -> Result<bool, StoreError> {
        self.op("resume", self.inner.resume(id)).await
    }

    async fn release_predecessors(&self, group: &str, pid: &str, process: &str) -> Result<usize, StoreError> {
        self.op("release_predecessors", self.inner.release_predecessors(group, pid, process)).await
    }

    async fn purge(&self, purge: Purge) -> Result<usize, StoreError> {
        self.op("purge", self.inner.purge(purge)).await
    }

    async fn tick(&self) -> Result<Tick, StoreError> {
        self.op("tick", self.inner.tick()).await
    }

    async fn announce(&self, worker: &Worker, ttl: Millis) -> Result<(), StoreError> {
        self.op("announce", self.inner.announce(worker, ttl)).await
    }

    async fn workers(&self) -> Result<Vec<Worker>, StoreError> {
        self.op("workers", self.inner.workers()).await
    }

    async fn set_limit(&self, limit: Limit, replace: bool) -> Result<Limit, StoreError> {
        self.op("set_limit", self.inner.set_limit(limit, replace)).await
    }

    async fn remove_limit(&self, name: &str) -> Result<bool, StoreError> {
        self.op("remove_limit", self.inner.remove_limit(name)).await
    }

    async fn limits(&self) -> Result<Vec<LimitState>, StoreError> {
        self.op("limits", self.inner.limits()).await
    }

    async fn put_schedule(&self, schedule: Schedule, replace: bool) -> Result<Schedule, StoreError> {
        self.op("put_schedule", self.inner.put_schedule(schedule, replace)).await
    }

    async fn update_schedule(&self, schedule: Schedule, fires: Vec<CreatePromise>) -> Result<bool, StoreError> {
        self.op("update_schedule", self.inner.update_schedule(schedule, fires)).await
    }

    async fn remove_schedule(&self, id: &str) -> Result<bool, StoreError> {
        self.op("remove_schedule", self.inner.remove_schedule(id)).await
    }

    async fn schedule(&self, id: &str) -> Result<Option<Schedule>, StoreError> {
        self.op("schedule", self.inner.schedule(id)).await
    }

    async fn schedules(&self, due: Option<Millis>) -> Result<Vec<Schedule>, StoreError> {
        self.op("schedules", self.inner.schedules(due)).await
    }

    async fn wait(&self, id: &str, halted: bool) -> Result<(), StoreError> {
        self.op("wait", self.inner.wait(id, halted)).await
    }

    fn ready(&self, group: &str) -> watch::Receiver<u64> {
        self.inner.ready(group)
    }
}

/// SplitMix64: a well-mixed 64-bit value from any input.
pub(crate) fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}
