//! The store as one generation of workers sees it: every write counted, and at the
//! crash point the whole generation freezes, as a killed process would.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use durable::store::{
    Acquired, Claim, CreatePromise, Created, Invocations, Listing, Page, Purge, Release, Search, SettlePromise, Tick,
    Worker,
};
use durable::{Fence, Limit, LimitState, Millis, Promise, Schedule, State, Store, StoreError, Task};
use tokio::sync::watch;

use crate::CrashPoint;

/// What every generation of one run saw: the settled state of each promise, which
/// must never change once observed, and the first task that halted.
#[derive(Debug, Default)]
pub(crate) struct History {
    settled: Mutex<HashMap<String, (State, Option<String>)>>,
    violations: Mutex<Vec<String>>,
    halt: watch::Sender<Option<String>>,
}

impl History {
    /// Completes with what the first halted task reported, once one has halted.
    pub(crate) async fn halted(&self) -> String {
        let mut rx = self.halt.subscribe();
        let halt = rx.wait_for(Option::is_some).await.expect("the sender lives in self");
        halt.clone().unwrap_or_default()
    }

    fn halt(&self, task: &Task) {
        let error = match task.fault() {
            Some(e @ durable::Error::Halted { .. }) => e.to_string(),
            Some(e) => format!("task {} halted: {e}", task.id),
            None => format!("task {} halted with no reason recorded", task.id),
        };
        self.halt.send_if_modified(|halt| halt.is_none() && halt.replace(error).is_none());
    }

    fn observe(&self, p: &Promise) {
        if !p.state.is_settled() {
            return;
        }
        let mut settled = self.settled.lock().unwrap_or_else(|e| e.into_inner());
        let now = (p.state, p.value.clone());
        match settled.get(&p.id) {
            Some(first) if *first != now => self.violations.lock().unwrap_or_else(|e| e.into_inner()).push(format!(
                "promise {} was settled twice: first {:?} {:?}, then {:?} {:?}",
                p.id, first.0, first.1, now.0, now.1
            )),
            Some(_) => {}
            None => {
                settled.insert(p.id.clone(), now);
            }
        }
    }

    pub(crate) fn violations(&self) -> Vec<String> {
        self.violations.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// A store wrapper for one generation of workers.
#[derive(Debug)]
pub(crate) struct Gate {
    inner: Arc<dyn Store>,
    crash: Option<CrashPoint>,
    writes: AtomicUsize,
    /// What each write was, e.g. `create calc.3`.
    log: Mutex<Vec<String>>,
    dead: watch::Sender<bool>,
    history: Arc<History>,
}

impl Gate {
    pub(crate) fn new(inner: Arc<dyn Store>, crash: Option<CrashPoint>, history: Arc<History>) -> Gate {
        Gate {
            inner,
            crash,
            writes: AtomicUsize::new(0),
            log: Mutex::new(Vec::new()),
            dead: watch::Sender::new(false),
            history,
        }
    }

    /// The writes made through this gate, described.
    pub(crate) fn log(&self) -> Vec<String> {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Completes when the crash point is reached.
    pub(crate) async fn died(&self) {
        let _ = self.dead.subscribe().wait_for(|d| *d).await;
    }

    fn is_dead(&self) -> bool {
        *self.dead.borrow()
    }

    /// A generation that died makes no more calls: they never return.
    async fn alive(&self) {
        if self.is_dead() {
            std::future::pending::<()>().await;
        }
    }

    /// Runs one write, crashing just before or just after it if it is the crash point.
    async fn write<T>(&self, what: String, op: impl Future<Output = Result<T, StoreError>>) -> Result<T, StoreError> {
        self.alive().await;
        let n = self.writes.fetch_add(1, Ordering::SeqCst) + 1;
        self.log.lock().unwrap_or_else(|e| e.into_inner()).push(what);
        if self.crash == Some(CrashPoint::before(n)) {
            self.dead.send_replace(true);
        }
        self.alive().await;
        let result = op.await;
        if self.crash == Some(CrashPoint::after(n)) {
            self.dead.send_replace(true);
        }
        self.alive().await;
        result
    }

    async fn read<T>(&self, op: impl Future<Output = Result<T, StoreError>>) -> Result<T, StoreError> {
        self.alive().await;
        let result = op.await;
        self.alive().await;
        result
    }
}

#[async_trait]
impl Store for Gate {
    async fn now(&self) -> Result<Millis, StoreError> {
        self.read(self.inner.now()).await
    }

    async fn create(&self, req: CreatePromise) -> Result<Created, StoreError> {
        let created = self.write(format!("create {}", req.id), self.inner.create(req)).await?;
        self.history.observe(&created.promise);
        Ok(created)
    }

    async fn settle(&self, req: SettlePromise) -> Result<Promise, StoreError> {
        let p = self.write(format!("settle {} as {:?}", req.id, req.state), self.inner.settle(req)).await?;
        self.history.observe(&p);
        Ok(p)
    }

    async fn import(&self, family: Vec<CreatePromise>) -> Result<(), StoreError> {
        let what = format!("import {}", family.first().map_or("nothing", |r| r.id.as_str()));
        let ids: Vec<String> = family.iter().map(|r| r.id.clone()).collect();
        self.write(what, self.inner.import(family)).await?;
        for id in ids {
            if let Some(p) = self.inner.get(&id).await? {
                self.history.observe(&p);
            }
        }
        Ok(())
    }

    async fn get(&self, id: &str) -> Result<Option<Promise>, StoreError> {
        let p = self.read(self.inner.get(id)).await?;
        if let Some(p) = &p {
            self.history.observe(p);
        }
        Ok(p)
    }

    async fn search(&self, search: Search) -> Result<Page, StoreError> {
        self.read(self.inner.search(search)).await
    }

    async fn invocations(&self, query: Invocations) -> Result<Listing, StoreError> {
        self.read(self.inner.invocations(query)).await
    }

    async fn task(&self, id: &str) -> Result<Option<Task>, StoreError> {
        self.read(self.inner.task(id)).await
    }

    async fn tasks(&self, ids: &[String]) -> Result<Vec<Task>, StoreError> {
        self.read(self.inner.tasks(ids)).await
    }

    async fn claim(&self, claim: Claim) -> Result<Vec<Acquired>, StoreError> {
        let acquired = self.read(self.inner.claim(claim)).await?;
        for a in &acquired {
            a.preload.iter().for_each(|p| self.history.observe(p));
        }
        Ok(acquired)
    }

    async fn heartbeat(&self, process: &str, held: &[Fence], ttl: Millis) -> Result<Vec<Fence>, StoreError> {
        self.read(self.inner.heartbeat(process, held, ttl)).await
    }

    async fn release(&self, fence: &Fence, how: Release) -> Result<(), StoreError> {
        let halts = matches!(how, Release::Halt { .. });
        self.write(format!("release {}", fence.task), self.inner.release(fence, how)).await?;
        if halts && let Some(task) = self.inner.task(&fence.task).await? {
            self.history.halt(&task);
        }
        Ok(())
    }

    async fn suspend(&self, fence: &Fence, awaiting: &[String]) -> Result<bool, StoreError> {
        self.write(format!("suspend {}", fence.task), self.inner.suspend(fence, awaiting)).await
    }

    async fn resume_halted(
        &self,
        group: &str,
        code: &std::collections::BTreeMap<String, u64>,
    ) -> Result<usize, StoreError> {
        self.read(self.inner.resume_halted(group, code)).await
    }

    async fn request_cancel(&self, id: &str) -> Result<Option<Promise>, StoreError> {
        self.write(format!("request_cancel {id}"), self.inner.request_cancel(id)).await
    }

    async fn resume(&self, id: &str) -> Result<bool, StoreError> {
        self.write(format!("resume {id}"), self.inner.resume(id)).await
    }

    async fn release_predecessors(&self, group: &str, pid: &str, process: &str) -> Result<usize, StoreError> {
        self.read(self.inner.release_predecessors(group, pid, process)).await
    }

    async fn purge(&self, purge: Purge) -> Result<usize, StoreError> {
        // Not a crash point: it deletes only finished work, which no execution reads
        // again, and it runs on the retention's timer, not the schedule's.
        self.read(self.inner.purge(purge)).await
    }

    async fn tick(&self) -> Result<Tick, StoreError> {
        self.read(self.inner.tick()).await
    }

    async fn announce(&self, worker: &Worker, ttl: Millis) -> Result<(), StoreError> {
        self.read(self.inner.announce(worker, ttl)).await
    }

    async fn workers(&self) -> Result<Vec<Worker>, StoreError> {
        self.read(self.inner.workers()).await
    }

    async fn set_limit(&self, limit: Limit, replace: bool) -> Result<Limit, StoreError> {
        self.write(format!("set limit {}", limit.name), self.inner.set_limit(limit, replace)).await
    }

    async fn remove_limit(&self, name: &str) -> Result<bool, StoreError> {
        self.write(format!("remove limit {name}"), self.inner.remove_limit(name)).await
    }

    async fn limits(&self) -> Result<Vec<LimitState>, StoreError> {
        self.read(self.inner.limits()).await
    }

    async fn put_schedule(&self, schedule: Schedule, replace: bool) -> Result<Schedule, StoreError> {
        self.write(format!("put schedule {}", schedule.id), self.inner.put_schedule(schedule, replace)).await
    }

    async fn update_schedule(&self, schedule: Schedule, fires: Vec<CreatePromise>) -> Result<bool, StoreError> {
        self.write(format!("update schedule {}", schedule.id), self.inner.update_schedule(schedule, fires)).await
    }

    async fn remove_schedule(&self, id: &str) -> Result<bool, StoreError> {
        self.write(format!("remove schedule {id}"), self.inner.remove_schedule(id)).await
    }

    async fn schedule(&self, id: &str) -> Result<Option<Schedule>, StoreError> {
        self.read(self.inner.schedule(id)).await
    }

    async fn schedules(&self, due: Option<Millis>) -> Result<Vec<Schedule>, StoreError> {
        self.read(self.inner.schedules(due)).await
    }

    async fn wait(&self, id: &str, halted: bool) -> Result<(), StoreError> {
        self.read(self.inner.wait(id, halted)).await
    }

    fn ready(&self, group: &str) -> watch::Receiver<u64> {
        self.inner.ready(group)
    }
}
