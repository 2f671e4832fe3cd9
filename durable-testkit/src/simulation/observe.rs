//! A store wrapper that watches every answer for what must never happen: a settled
//! promise that changes, a promise created a second time, a write taken under a fence
//! a newer claim superseded, a task that waits too long for a worker. Every call it passes on takes no virtual time.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use durable::store::{
    Acquired, Claim, CreatePromise, Created, Invocations, Listing, Page, Purge, Release, Search, SettlePromise, Tick,
    Worker,
};
use durable::{Fence, Limit, LimitState, Millis, Promise, Schedule, State, Store, StoreError, Task};
use tokio::sync::watch;

/// What the observer saw.
#[derive(Debug, Default)]
struct Seen {
    /// Every promise ever created, with its first settlement once seen.
    promises: HashMap<String, Option<Promise>>,
    /// The family each promise was created in.
    families: HashMap<String, String>,
    /// When each task was created or last made pending, by its promise, until claimed.
    waiting: HashMap<String, Millis>,
    /// The longest a task waited for a claim, and which.
    longest_wait: (Millis, String),
    /// The newest version each task was seen claimed at.
    claimed: HashMap<String, u64>,
    /// The tasks of limited calls ever claimed.
    limited: std::collections::BTreeSet<String>,
    violations: Vec<String>,
}

/// A [`Store`] that passes everything to `inner` and checks the answers.
#[derive(Debug)]
pub(crate) struct Observed {
    inner: Arc<dyn Store>,
    seen: Mutex<Seen>,
}

impl Observed {
    pub(crate) fn new(inner: Arc<dyn Store>) -> Observed {
        Observed { inner, seen: Mutex::default() }
    }

    fn seen(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// What was broken so far.
    pub(crate) fn violations(&self) -> Vec<String> {
        self.seen().violations.clone()
    }

    /// Whether `id` was seen resolved: a result was recorded for it.
    pub(crate) fn resolved(&self, id: &str) -> bool {
        matches!(self.seen().promises.get(id), Some(Some(p)) if p.state == State::Resolved)
    }

    /// `id` as it was first seen settled.
    pub(crate) fn settled(&self, id: &str) -> Option<Promise> {
        self.seen().promises.get(id).cloned().flatten()
    }

    /// The steps seen resolved with an undo under a body seen failed or canceled
    /// (which compensates before it settles), whose undo was never seen resolved:
    /// undos owed and not run.
    pub(crate) fn undos_not_run(&self) -> Vec<String> {
        let seen = self.seen();
        let settled = |id: &str| seen.promises.get(id).cloned().flatten();
        let mut owed = Vec::new();
        for p in seen.promises.values().flatten() {
            if p.undo.is_none() || p.state != State::Resolved {
                continue;
            }
            let failed = p
                .parent
                .as_deref()
                .and_then(settled)
                .is_some_and(|body| matches!(body.state, State::Rejected | State::RejectedCanceled));
            let undo = |k: u32| if k == 1 { format!("{}:undo", p.id) } else { format!("{}:undo{k}", p.id) };
            if failed && !(1..=8).any(|k| settled(&undo(k)).is_some_and(|u| u.state == State::Resolved)) {
                owed.push(p.id.clone());
            }
        }
        owed.sort();
        owed
    }

    /// The longest any task waited from becoming ready to its claim, and which.
    pub(crate) fn longest_wait(&self) -> (Millis, String) {
        self.seen().longest_wait.clone()
    }

    /// How many promises were created.
    pub(crate) fn promises(&self) -> usize {
        self.seen().promises.len()
    }

    /// Records `p` as read or written: a settled promise never changes.
    fn observe(&self, p: &Promise) {
        if !p.state.is_settled() {
            return;
        }
        let mut seen = self.seen();
        let entry = seen.promises.entry(p.id.clone()).or_default();
        match entry {
            None => *entry = Some(p.clone()),
            Some(first) if first.state != p.state || first.value != p.value => {
                let message = format!(
                    "{} was settled as {:?} with {:?}, and later read as {:?} with {:?}",
                    p.id, first.state, first.value, p.state, p.value
                );
                seen.violations.push(message);
            }
            Some(_) => {}
        }
    }

    /// Records a created promise: one created anew in the family it was created in
    /// before was deleted while that family could still replay it. (Once retention
    /// has deleted a family, its ids may be used again, by another.)
    fn created(&self, created: &Created, now: Millis, ready: bool) {
        {
            let mut seen = self.seen();
            let p = &created.promise;
            let id = &p.id;
            if created.new {
                if p.parent.is_some() && seen.families.get(id) == Some(&p.root) {
                    let message =
                        format!("{id} was created a second time: it was deleted while its invocation could replay it");
                    seen.violations.push(message);
                }
                seen.families.insert(id.clone(), p.root.clone());
                seen.promises.insert(id.clone(), None);
                // A store that answers late may have handed the task out before
                // this answer came: then it waits for nothing.
                if ready && !seen.claimed.contains_key(id) {
                    seen.waiting.insert(id.clone(), now);
                }
            }
        }
        self.observe(&created.promise);
    }

    /// Records that a worker holds `task` at `version`.
    /// The limits the simulation sets ([`super::workload::limits`]) hold: of the
    /// limited calls' tasks, at most one acquired per key, and at most two in all.
    async fn check_limits(&self) -> Result<(), StoreError> {
        let ids: Vec<String> = self.seen().limited.iter().cloned().collect();
        let tasks = instant(self.inner.tasks(&ids)).await?;
        let mut keys: HashMap<Option<String>, Vec<String>> = HashMap::new();
        for t in tasks.into_iter().filter(|t| t.state == durable::TaskState::Acquired) {
            keys.entry(t.key).or_default().push(t.id);
        }
        let mut seen = self.seen();
        for (key, held) in &keys {
            if held.len() > 1 {
                seen.violations.push(format!("limited calls of one key {key:?} acquired at once: {held:?}"));
            }
        }
        let all: usize = keys.values().map(Vec::len).sum();
        if all > 2 {
            seen.violations.push(format!("{all} limited calls acquired at once, over a limit of two: {keys:?}"));
        }
        Ok(())
    }

    fn holds(&self, task: &str, version: u64) {
        let mut seen = self.seen();
        let newest = seen.claimed.entry(task.to_owned()).or_default();
        *newest = (*newest).max(version);
    }

    /// A write under `fence` that the store took: one under a fence older than a
    /// claim seen before it was sent is a holder the store should have refused. Only
    /// a call answered at once is judged: on one thread it ran whole between the calls
    /// around it, while one that waited (for a disk, a server) may have run before a
    /// claim it is answered after.
    fn fenced_write(&self, what: &str, fence: Option<&Fence>, newest_before: Option<u64>, at_once: bool) {
        if let (Some(fence), Some(newest), true) = (fence, newest_before, at_once)
            && fence.version < newest
        {
            let message = format!(
                "a {what} under {}'s fence of version {} was taken after the task was claimed at version {newest}",
                fence.task, fence.version
            );
            self.seen().violations.push(message);
        }
    }

    /// The newest claim of `fence`'s task seen so far.
    fn newest(&self, fence: Option<&Fence>) -> Option<u64> {
        fence.and_then(|f| self.seen().claimed.get(&f.task).copied())
    }

    fn claimed(&self, acquired: &[Acquired], now: Millis) {
        for a in acquired {
            self.holds(&a.task.id, a.task.version);
        }
        let mut seen = self.seen();
        for a in acquired {
            if let Some(since) = seen.waiting.remove(&a.task.id) {
                let waited = now.saturating_sub(since);
                if waited > seen.longest_wait.0 {
                    seen.longest_wait = (waited, a.task.id.clone());
                }
            }
        }
    }
}

/// Awaits a store call `f` and keeps the runtime busy meanwhile, so that it takes no
/// virtual time: under tokio's paused clock time jumps ahead whenever every task
/// waits, and a store that waits for a server or a disk would otherwise see leases
/// and timers expire during each of its answers. (A call that answers at once costs
/// nothing more.)
async fn instant<T>(f: impl Future<Output = T>) -> T {
    timed(f).await.0
}

/// [`instant`], and whether the call was answered at once (at its first poll).
async fn timed<T>(f: impl Future<Output = T>) -> (T, bool) {
    let mut f = std::pin::pin!(f);
    let mut at_once = true;
    loop {
        tokio::select! {
            biased;
            out = &mut f => return (out, at_once),
            () = tokio::task::yield_now() => at_once = false,
        }
    }
}

#[async_trait]
impl Store for Observed {
    async fn now(&self) -> Result<Millis, StoreError> {
        instant(self.inner.now()).await
    }

    async fn create(&self, req: CreatePromise) -> Result<Created, StoreError> {
        let ready = req.task.as_ref().is_some_and(|t| t.acquire.is_none());
        let (fence, newest) = (req.fence.clone(), self.newest(req.fence.as_ref()));
        let (created, at_once) = timed(self.inner.create(req)).await;
        let created = created?;
        self.fenced_write("create", fence.as_ref(), newest, at_once);
        if let Some(task) = &created.acquired {
            self.holds(&task.id, task.version);
        }
        let now = instant(self.inner.now()).await?;
        self.created(&created, now, ready);
        Ok(created)
    }

    async fn settle(&self, req: SettlePromise) -> Result<Promise, StoreError> {
        let (fence, newest) = (req.fence.clone(), self.newest(req.fence.as_ref()));
        let (p, at_once) = timed(self.inner.settle(req)).await;
        let p = p?;
        self.fenced_write("settle", fence.as_ref(), newest, at_once);
        self.observe(&p);
        Ok(p)
    }

    async fn import(&self, family: Vec<CreatePromise>) -> Result<(), StoreError> {
        let ids: Vec<(String, bool)> = family.iter().map(|r| (r.id.clone(), r.task.is_some())).collect();
        instant(self.inner.import(family)).await?;
        let now = instant(self.inner.now()).await?;
        for (id, ready) in ids {
            if let Some(promise) = instant(self.inner.get(&id)).await? {
                self.created(&Created { promise, new: true, acquired: None }, now, ready);
            }
        }
        Ok(())
    }

    async fn get(&self, id: &str) -> Result<Option<Promise>, StoreError> {
        let p = instant(self.inner.get(id)).await?;
        if let Some(p) = &p {
            self.observe(p);
        }
        Ok(p)
    }

    async fn search(&self, search: Search) -> Result<Page, StoreError> {
        let page = instant(self.inner.search(search)).await?;
        page.promises.iter().for_each(|p| self.observe(p));
        Ok(page)
    }

    async fn invocations(&self, query: Invocations) -> Result<Listing, StoreError> {
        instant(self.inner.invocations(query)).await
    }

    async fn task(&self, id: &str) -> Result<Option<Task>, StoreError> {
        instant(self.inner.task(id)).await
    }

    async fn tasks(&self, ids: &[String]) -> Result<Vec<Task>, StoreError> {
        instant(self.inner.tasks(ids)).await
    }

    async fn claim(&self, claim: Claim) -> Result<Vec<Acquired>, StoreError> {
        let acquired = instant(self.inner.claim(claim)).await?;
        let now = instant(self.inner.now()).await?;
        self.claimed(&acquired, now);
        for a in &acquired {
            self.observe(&a.root);
            a.preload.iter().for_each(|p| self.observe(p));
        }
        let limited: Vec<&str> = acquired
            .iter()
            .filter(|a| a.task.function.as_deref() == Some(super::workload::LIMITED))
            .map(|a| a.task.id.as_str())
            .collect();
        if !limited.is_empty() {
            self.seen().limited.extend(limited.into_iter().map(str::to_owned));
            self.check_limits().await?;
        }
        Ok(acquired)
    }

    async fn heartbeat(&self, process: &str, held: &[Fence], ttl: Millis) -> Result<Vec<Fence>, StoreError> {
        instant(self.inner.heartbeat(process, held, ttl)).await
    }

    async fn release(&self, fence: &Fence, how: Release) -> Result<(), StoreError> {
        let retry = matches!(how, Release::Retry { delay: 0, .. });
        let newest = self.newest(Some(fence));
        let (released, at_once) = timed(self.inner.release(fence, how)).await;
        released?;
        self.fenced_write("release", Some(fence), newest, at_once);
        if retry {
            let now = instant(self.inner.now()).await?;
            let mut seen = self.seen();
            // Claimed again before this answer came (a store that answers late): it
            // waits for nothing. Left waiting, its next claim, after an hour's retry
            // wait say, would count the hour.
            if seen.claimed.get(&fence.task).is_none_or(|newest| *newest <= fence.version) {
                seen.waiting.insert(fence.task.clone(), now);
            }
        }
        Ok(())
    }

    async fn suspend(&self, fence: &Fence, awaiting: &[String]) -> Result<bool, StoreError> {
        let newest = self.newest(Some(fence));
        let (suspended, at_once) = timed(self.inner.suspend(fence, awaiting)).await;
        let suspended = suspended?;
        self.fenced_write("suspend", Some(fence), newest, at_once);
        Ok(suspended)
    }

    async fn resume_halted(&self, group: &str, code: &BTreeMap<String, u64>) -> Result<usize, StoreError> {
        instant(self.inner.resume_halted(group, code)).await
    }

    async fn request_cancel(&self, id: &str) -> Result<Option<Promise>, StoreError> {
        let p = instant(self.inner.request_cancel(id)).await?;
        if let Some(p) = &p {
            self.observe(p);
        }
        Ok(p)
    }

    async fn resume(&self, id: &str) -> Result<bool, StoreError> {
        instant(self.inner.resume(id)).await
    }

    async fn release_predecessors(&self, group: &str, pid: &str, process: &str) -> Result<usize, StoreError> {
        instant(self.inner.release_predecessors(group, pid, process)).await
    }

    async fn purge(&self, purge: Purge) -> Result<usize, StoreError> {
        instant(self.inner.purge(purge)).await
    }

    async fn tick(&self) -> Result<Tick, StoreError> {
        instant(self.inner.tick()).await
    }

    async fn announce(&self, worker: &Worker, ttl: Millis) -> Result<(), StoreError> {
        instant(self.inner.announce(worker, ttl)).await
    }

    async fn workers(&self) -> Result<Vec<Worker>, StoreError> {
        instant(self.inner.workers()).await
    }

    async fn set_limit(&self, limit: Limit, replace: bool) -> Result<Limit, StoreError> {
        instant(self.inner.set_limit(limit, replace)).await
    }

    async fn remove_limit(&self, name: &str) -> Result<bool, StoreError> {
        instant(self.inner.remove_limit(name)).await
    }

    async fn limits(&self) -> Result<Vec<LimitState>, StoreError> {
        instant(self.inner.limits()).await
    }

    async fn put_schedule(&self, schedule: Schedule, replace: bool) -> Result<Schedule, StoreError> {
        instant(self.inner.put_schedule(schedule, replace)).await
    }

    async fn update_schedule(&self, schedule: Schedule, fires: Vec<CreatePromise>) -> Result<bool, StoreError> {
        instant(self.inner.update_schedule(schedule, fires)).await
    }

    async fn remove_schedule(&self, id: &str) -> Result<bool, StoreError> {
        instant(self.inner.remove_schedule(id)).await
    }

    async fn schedule(&self, id: &str) -> Result<Option<Schedule>, StoreError> {
        instant(self.inner.schedule(id)).await
    }

    async fn schedules(&self, due: Option<Millis>) -> Result<Vec<Schedule>, StoreError> {
        instant(self.inner.schedules(due)).await
    }

    async fn wait(&self, id: &str, halted: bool) -> Result<(), StoreError> {
        self.inner.wait(id, halted).await
    }

    fn ready(&self, group: &str) -> watch::Receiver<u64> {
        self.inner.ready(group)
    }
}
