//! The in-process engine: the state machine behind a lock, a log that makes its
//! changes durable, waiters and the ready signal. MemoryStore and SledStore are this
//! engine with two logs.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::watch;

use super::state::{Changes, Core};
use super::waiters::{Ready, Waiters};
use super::{
    Acquired, Claim, Clock, CreatePromise, Created, FORGET_WORKERS, Page, Purge, Release, Search, SettlePromise, Tick,
    Worker,
};
use crate::StoreError;
use crate::promise::{Fence, Millis, Promise, Task};

/// Where an engine's changes go.
pub(crate) trait Log: Send + Sync + 'static {
    /// Writes the changed records atomically, under the state lock so that logs apply
    /// in the order the state changed, and from then on answers the state's reads of
    /// the finished ones. Returns a token for [`Log::commit`].
    fn stage(&self, changes: &Changes) -> Result<u64, StoreError>;

    /// The token of the last step staged. Called under the state lock, it covers
    /// every change a reader under that lock can see.
    fn staged(&self) -> u64;

    /// Completes once everything staged up to `token` is durable.
    fn commit(&self, token: u64) -> impl Future<Output = Result<(), StoreError>> + Send;
}

#[derive(Debug)]
pub(crate) struct Engine<L> {
    core: Mutex<Core>,
    pub(crate) log: L,
    clock: Arc<dyn Clock>,
    waiters: Waiters,
    ready: Ready,
    /// The workers that announced themselves, by group and pid: not durable, as every
    /// worker of an in-process store runs in this process and announces itself again.
    workers: Mutex<BTreeMap<(String, String), Worker>>,
}

impl<L: Log> Engine<L> {
    pub(crate) fn new(core: Core, log: L, clock: Arc<dyn Clock>) -> Engine<L> {
        Engine {
            core: Mutex::new(core),
            log,
            clock,
            waiters: Waiters::default(),
            ready: Ready::default(),
            workers: Mutex::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Core> {
        // The state is only changed by complete, non-panicking steps: a poisoned lock
        // holds a consistent state.
        self.core.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn now(&self) -> Millis {
        self.clock.now()
    }

    /// Runs one atomic step, makes its changes durable, then wakes whoever waits.
    pub(crate) async fn write<R>(
        &self,
        step: impl FnOnce(&mut Core, Millis) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        self.write_when(true, step, |_| true).await
    }

    /// A step acknowledged once durable, or, if `durable` is false, at once, unless
    /// its answer shows state it found (`found`), which must be durable first. Its own
    /// change may wait: the log is written in order, so a later durable step covers
    /// it. Either way the answer never shows a state a crash can take back.
    pub(crate) async fn write_when<R>(
        &self,
        durable: bool,
        step: impl FnOnce(&mut Core, Millis) -> Result<R, StoreError>,
        found: impl FnOnce(&R) -> bool,
    ) -> Result<R, StoreError> {
        let now = self.clock.now();
        let (result, changes, token) = {
            let mut core = self.lock();
            let seen = self.log.staged();
            let result = step(&mut core, now);
            let changes = core.take_changes();
            let own = self.log.stage(&changes)?;
            // A step that changed nothing answers from what it found (a promise
            // already settled, a root already purged): that must be durable too.
            let token = match &result {
                _ if durable && own != 0 => own,
                Ok(answer) if !durable && !found(answer) => 0,
                _ => seen,
            };
            (result, changes, token)
        };
        // Wake whoever waits once the step is durable, or at once if this future is
        // dropped before that: the change is visible to readers either way, and a
        // waiter left asleep would never learn of it.
        let _wake = Wake { engine: self, woken: changes.woken, ready: changes.ready };
        self.log.commit(token).await?;
        result
    }

    /// Reads the state, answering once every change it can see is durable: a reader
    /// never learns of a settle that a crash could still take back.
    pub(crate) async fn read<R>(
        &self,
        f: impl FnOnce(&Core, Millis) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        let (result, token) = {
            let core = self.lock();
            (f(&core, self.clock.now()), self.log.staged())
        };
        self.log.commit(token).await?;
        result
    }

    pub(crate) async fn create(&self, req: CreatePromise) -> Result<Created, StoreError> {
        // A promise that was there already is state found, not made.
        self.write_when(req.durable, |core, now| core.create(req, now), |created| !created.new).await
    }

    pub(crate) async fn settle(&self, req: SettlePromise) -> Result<Promise, StoreError> {
        self.write(|core, now| core.settle(req, now)).await
    }

    pub(crate) async fn import(&self, family: Vec<CreatePromise>) -> Result<(), StoreError> {
        self.write(|core, now| core.import(family, now)).await
    }

    pub(crate) async fn get(&self, id: &str) -> Result<Option<Promise>, StoreError> {
        self.read(|core, now| core.get(id, now)).await
    }

    pub(crate) async fn search(&self, search: &Search) -> Result<Page, StoreError> {
        self.read(|core, now| core.search(search, now)).await
    }

    pub(crate) async fn invocations(&self, query: &super::Invocations) -> Result<super::Listing, StoreError> {
        self.read(|core, now| core.invocations(query, now)).await
    }

    pub(crate) async fn task(&self, id: &str) -> Result<Option<Task>, StoreError> {
        self.read(|core, _| core.task(id)).await
    }

    pub(crate) async fn tasks(&self, ids: &[String]) -> Result<Vec<Task>, StoreError> {
        self.read(|core, _| {
            let mut tasks = Vec::new();
            for id in ids {
                tasks.extend(core.task(id)?);
            }
            Ok(tasks)
        })
        .await
    }

    pub(crate) async fn claim(&self, claim: Claim) -> Result<Vec<Acquired>, StoreError> {
        self.write(|core, now| core.claim(&claim, now)).await
    }

    pub(crate) async fn heartbeat(&self, process: &str, held: &[Fence], ttl: Millis) -> Result<Vec<Fence>, StoreError> {
        self.write(|core, now| Ok(core.heartbeat(process, held, ttl, now))).await
    }

    pub(crate) async fn release(&self, fence: &Fence, how: Release) -> Result<(), StoreError> {
        self.write(|core, now| core.release(fence, how, now)).await
    }

    pub(crate) async fn suspend(&self, fence: &Fence, awaiting: &[String]) -> Result<bool, StoreError> {
        self.write(|core, now| core.suspend(fence, awaiting, now)).await
    }

    pub(crate) async fn resume_halted(
        &self,
        group: &str,
        code: &std::collections::BTreeMap<String, u64>,
    ) -> Result<usize, StoreError> {
        self.write(|core, now| Ok(core.resume_halted(group, code, now))).await
    }

    pub(crate) async fn request_cancel(&self, id: &str) -> Result<Option<crate::Promise>, StoreError> {
        self.write(|core, now| core.request_cancel(id, now)).await
    }

    pub(crate) async fn resume(&self, id: &str) -> Result<bool, StoreError> {
        self.write(|core, now| Ok(core.resume(id, now))).await
    }

    pub(crate) async fn release_predecessors(
        &self,
        group: &str,
        pid: &str,
        process: &str,
    ) -> Result<usize, StoreError> {
        self.write(|core, now| Ok(core.release_predecessors(group, pid, process, now))).await
    }

    pub(crate) async fn purge(&self, purge: &Purge) -> Result<usize, StoreError> {
        self.write(|core, _| core.purge(purge)).await
    }

    pub(crate) async fn tick(&self) -> Result<Tick, StoreError> {
        self.write(|core, now| Ok(core.tick(now))).await
    }

    pub(crate) fn announce(&self, worker: &Worker, ttl: Millis) {
        let now = self.clock.now();
        let mut workers = self.workers.lock().unwrap_or_else(|e| e.into_inner());
        workers.retain(|_, w| w.live_until.saturating_add(FORGET_WORKERS) > now);
        let worker = Worker { live_until: now.saturating_add(ttl), ..worker.clone() };
        workers.insert((worker.group.clone(), worker.pid.clone()), worker);
    }

    pub(crate) fn workers(&self) -> Vec<Worker> {
        let now = self.clock.now();
        let workers = self.workers.lock().unwrap_or_else(|e| e.into_inner());
        workers.values().filter(|w| w.live_until.saturating_add(FORGET_WORKERS) > now).cloned().collect()
    }

    pub(crate) async fn wait(&self, id: &str, halted: bool) -> Result<(), StoreError> {
        let waiter = {
            let core = self.lock();
            if core.is_done(id, halted, self.clock.now()) {
                return Ok(());
            }
            self.waiters.register(id)
        };
        waiter.await;
        Ok(())
    }

    pub(crate) fn ready(&self, group: &str) -> watch::Receiver<u64> {
        self.ready.subscribe(group)
    }

    /// The state's live records and index entries, and how many ids have waiters.
    #[cfg(test)]
    pub(crate) fn footprint(&self) -> ([usize; 9], usize) {
        (self.lock().index_sizes(), self.waiters.len())
    }
}

/// Wakes the waiters of a step when dropped.
struct Wake<'a, L> {
    engine: &'a Engine<L>,
    woken: Vec<String>,
    ready: BTreeSet<String>,
}

impl<L> Drop for Wake<'_, L> {
    fn drop(&mut self) {
        self.engine.waiters.wake(std::mem::take(&mut self.woken));
        self.engine.ready.bump(self.ready.iter().map(String::as_str));
    }
}

/// Implements [`Store`](super::Store) for a type whose field `engine` is an [`Engine`].
macro_rules! engine_store {
    ($ty:ty) => {
        #[async_trait::async_trait]
        impl $crate::Store for $ty {
            async fn now(&self) -> Result<$crate::Millis, $crate::StoreError> {
                Ok(self.engine.now())
            }
            async fn create(
                &self,
                req: $crate::store::CreatePromise,
            ) -> Result<$crate::store::Created, $crate::StoreError> {
                self.engine.create(req).await
            }
            async fn settle(&self, req: $crate::store::SettlePromise) -> Result<$crate::Promise, $crate::StoreError> {
                self.engine.settle(req).await
            }
            async fn import(&self, family: Vec<$crate::store::CreatePromise>) -> Result<(), $crate::StoreError> {
                self.engine.import(family).await
            }
            async fn get(&self, id: &str) -> Result<Option<$crate::Promise>, $crate::StoreError> {
                self.engine.get(id).await
            }
            async fn search(&self, search: $crate::store::Search) -> Result<$crate::store::Page, $crate::StoreError> {
                self.engine.search(&search).await
            }
            async fn invocations(
                &self,
                query: $crate::store::Invocations,
            ) -> Result<$crate::store::Listing, $crate::StoreError> {
                self.engine.invocations(&query).await
            }
            async fn task(&self, id: &str) -> Result<Option<$crate::Task>, $crate::StoreError> {
                self.engine.task(id).await
            }
            async fn tasks(&self, ids: &[String]) -> Result<Vec<$crate::Task>, $crate::StoreError> {
                self.engine.tasks(ids).await
            }
            async fn claim(
                &self,
                claim: $crate::store::Claim,
            ) -> Result<Vec<$crate::store::Acquired>, $crate::StoreError> {
                self.engine.claim(claim).await
            }
            async fn heartbeat(
                &self,
                process: &str,
                held: &[$crate::Fence],
                ttl: $crate::Millis,
            ) -> Result<Vec<$crate::Fence>, $crate::StoreError> {
                self.engine.heartbeat(process, held, ttl).await
            }
            async fn release(
                &self,
                fence: &$crate::Fence,
                how: $crate::store::Release,
            ) -> Result<(), $crate::StoreError> {
                self.engine.release(fence, how).await
            }
            async fn suspend(&self, fence: &$crate::Fence, awaiting: &[String]) -> Result<bool, $crate::StoreError> {
                self.engine.suspend(fence, awaiting).await
            }
            async fn resume_halted(
                &self,
                group: &str,
                code: &std::collections::BTreeMap<String, u64>,
            ) -> Result<usize, $crate::StoreError> {
                self.engine.resume_halted(group, code).await
            }
            async fn request_cancel(&self, id: &str) -> Result<Option<$crate::Promise>, $crate::StoreError> {
                self.engine.request_cancel(id).await
            }
            async fn resume(&self, id: &str) -> Result<bool, $crate::StoreError> {
                self.engine.resume(id).await
            }
            async fn release_predecessors(
                &self,
                group: &str,
                pid: &str,
                process: &str,
            ) -> Result<usize, $crate::StoreError> {
                self.engine.release_predecessors(group, pid, process).await
            }
            async fn purge(&self, purge: $crate::store::Purge) -> Result<usize, $crate::StoreError> {
                self.engine.purge(&purge).await
            }
            async fn tick(&self) -> Result<$crate::store::Tick, $crate::StoreError> {
                self.engine.tick().await
            }
            async fn announce(
                &self,
                worker: &$crate::store::Worker,
                ttl: $crate::Millis,
            ) -> Result<(), $crate::StoreError> {
                self.engine.announce(worker, ttl);
                Ok(())
            }
            async fn workers(&self) -> Result<Vec<$crate::store::Worker>, $crate::StoreError> {
                Ok(self.engine.workers())
            }
            async fn set_limit(
                &self,
                limit: $crate::Limit,
                replace: bool,
            ) -> Result<$crate::Limit, $crate::StoreError> {
                self.engine.write(|core, _| core.set_limit(limit, replace)).await
            }
            async fn remove_limit(&self, name: &str) -> Result<bool, $crate::StoreError> {
                self.engine.write(|core, _| Ok(core.remove_limit(name))).await
            }
            async fn limits(&self) -> Result<Vec<$crate::LimitState>, $crate::StoreError> {
                self.engine.read(|core, _| Ok(core.limit_states())).await
            }
            async fn put_schedule(
                &self,
                schedule: $crate::Schedule,
                replace: bool,
            ) -> Result<$crate::Schedule, $crate::StoreError> {
                self.engine.write(|core, _| core.put_schedule(schedule, replace)).await
            }
            async fn update_schedule(
                &self,
                schedule: $crate::Schedule,
                fires: Vec<$crate::store::CreatePromise>,
            ) -> Result<bool, $crate::StoreError> {
                self.engine.write(|core, now| core.update_schedule(schedule, fires, now)).await
            }
            async fn remove_schedule(&self, id: &str) -> Result<bool, $crate::StoreError> {
                self.engine.write(|core, _| Ok(core.remove_schedule(id))).await
            }
            async fn schedule(&self, id: &str) -> Result<Option<$crate::Schedule>, $crate::StoreError> {
                self.engine.read(|core, _| Ok(core.schedule(id))).await
            }
            async fn schedules(
                &self,
                due: Option<$crate::Millis>,
            ) -> Result<Vec<$crate::Schedule>, $crate::StoreError> {
                self.engine.read(|core, _| Ok(core.schedules(due))).await
            }
            async fn wait(&self, id: &str, halted: bool) -> Result<(), $crate::StoreError> {
                self.engine.wait(id, halted).await
            }
            fn ready(&self, group: &str) -> tokio::sync::watch::Receiver<u64> {
                self.engine.ready(group)
            }
        }
    };
}
pub(crate) use engine_store;

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    use tokio::sync::watch;

    use super::{Engine, Log};
    use crate::promise::Param;
    use crate::store::cold::MemoryCold;
    use crate::store::state::{Changes, Core};
    use crate::store::{CreatePromise, SettlePromise, VirtualClock};
    use crate::{State, StoreError};

    /// A log whose syncs reach only as far as the test lets them.
    #[derive(Debug)]
    struct Held {
        staged: AtomicU64,
        synced: watch::Sender<u64>,
        cold: Arc<MemoryCold>,
    }

    impl Log for Held {
        fn stage(&self, changes: &Changes) -> Result<u64, StoreError> {
            self.cold.apply(changes);
            if changes.is_empty() {
                return Ok(self.staged.load(Ordering::SeqCst));
            }
            Ok(self.staged.fetch_add(1, Ordering::SeqCst) + 1)
        }

        fn staged(&self) -> u64 {
            self.staged.load(Ordering::SeqCst)
        }

        async fn commit(&self, token: u64) -> Result<(), StoreError> {
            let _ = self.synced.subscribe().wait_for(|synced| *synced >= token).await;
            Ok(())
        }
    }

    fn engine() -> Arc<Engine<Held>> {
        let cold = Arc::new(MemoryCold::default());
        let log = Held { staged: AtomicU64::new(0), synced: watch::Sender::new(u64::MAX), cold: cold.clone() };
        Arc::new(Engine::new(Core::new(cold), log, Arc::new(VirtualClock::new())))
    }

    #[tokio::test(start_paused = true)]
    async fn no_reader_sees_a_settle_before_it_is_durable() {
        let engine = engine();
        engine.create(CreatePromise::new("p", Param::External)).await.unwrap();
        // From here on, syncs hang: the settle is staged, not durable.
        engine.log.synced.send_replace(engine.log.staged());
        let settle = tokio::spawn({
            let engine = engine.clone();
            async move {
                let req = SettlePromise {
                    id: "p".into(),
                    state: State::Resolved,
                    value: "1".into(),
                    ikey: None,
                    strict: false,
                    fence: None,
                };
                engine.settle(req).await
            }
        });
        tokio::task::yield_now().await;
        let get = tokio::spawn({
            let engine = engine.clone();
            async move { engine.get("p").await }
        });
        // A local child's create of the same id does not wait for its own sync, but
        // does wait for the sync of what it found.
        let create = tokio::spawn({
            let engine = engine.clone();
            async move {
                let mut req = CreatePromise::new("p", Param::External);
                req.durable = false;
                engine.create(req).await
            }
        });
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert!(!get.is_finished(), "a read of a settle waits until it is durable");
        assert!(!create.is_finished(), "a create that finds a settle waits until it is durable");
        engine.log.synced.send_replace(u64::MAX);
        settle.await.unwrap().unwrap();
        assert_eq!(get.await.unwrap().unwrap().unwrap().state, State::Resolved);
        assert_eq!(create.await.unwrap().unwrap().promise.state, State::Resolved);
    }
}
