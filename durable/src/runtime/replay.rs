//! The store a replay check runs over: a recorded history, read only.
//!
//! Every read answers from the history. A create finds the recorded promise (so the
//! invocation compares it with what the code asks for now, as in any replay); what
//! the history does not hold, a settle, and a wait for what is still pending there
//! are the *frontier*, where a real execution would go on with new work: the check
//! stops there, having written nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

use async_trait::async_trait;

use crate::promise::{Fence, Millis, Promise, State, Task};
use crate::store::{
    Acquired, Claim, CreatePromise, Created, Invocations, Listing, Page, Purge, Release, Search, SettlePromise, Tick,
    Worker,
};
use crate::{Store, StoreError};

/// Where a replay check stops: the history holds nothing more on this path.
#[derive(Debug)]
pub(crate) struct Frontier;

impl std::fmt::Display for Frontier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the replay reached the end of the recorded history")
    }
}

impl std::error::Error for Frontier {}

fn frontier() -> StoreError {
    StoreError::Backend(Box::new(Frontier))
}

/// Whether a store error is a replay check's frontier.
pub(crate) fn is_frontier(e: &StoreError) -> bool {
    matches!(e, StoreError::Backend(source) if source.is::<Frontier>())
}

/// A recorded history as a read-only store.
#[derive(Debug)]
pub(crate) struct HistoryStore {
    promises: BTreeMap<String, Promise>,
    now: Millis,
    /// The recorded promises the replay asked for.
    reached: Mutex<BTreeSet<String>>,
    ready: tokio::sync::watch::Sender<u64>,
}

impl HistoryStore {
    /// The history of invocation `root`. The root reads as pending, so that its body
    /// replays even when the invocation finished.
    pub(crate) fn new(root: &str, promises: impl IntoIterator<Item = Promise>) -> HistoryStore {
        let mut promises: BTreeMap<String, Promise> = promises.into_iter().map(|p| (p.id.clone(), p)).collect();
        let mut now = 0;
        if let Some(p) = promises.get_mut(root) {
            (p.state, p.value, p.settled_at) = (State::Pending, None, None);
            now = p.created_at;
        }
        // The replay starts at the root.
        let reached = Mutex::new(BTreeSet::from([root.to_owned()]));
        HistoryStore { promises, now, reached, ready: tokio::sync::watch::Sender::new(0) }
    }

    /// The recorded promises the replay asked for.
    pub(crate) fn reached(&self) -> BTreeSet<String> {
        self.reached.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn look(&self, id: &str) -> Option<Promise> {
        let p = self.promises.get(id)?;
        self.reached.lock().unwrap_or_else(|e| e.into_inner()).insert(id.to_owned());
        Some(p.clone())
    }
}

#[async_trait]
impl Store for HistoryStore {
    async fn now(&self) -> Result<Millis, StoreError> {
        Ok(self.now)
    }

    async fn create(&self, req: CreatePromise) -> Result<Created, StoreError> {
        let promise = self.look(&req.id).ok_or_else(frontier)?;
        Ok(Created { promise, new: false, acquired: None })
    }

    async fn settle(&self, _: SettlePromise) -> Result<Promise, StoreError> {
        Err(frontier())
    }

    async fn import(&self, _: Vec<CreatePromise>) -> Result<(), StoreError> {
        Err(frontier())
    }

    async fn get(&self, id: &str) -> Result<Option<Promise>, StoreError> {
        Ok(self.look(id))
    }

    async fn search(&self, search: Search) -> Result<Page, StoreError> {
        let limit = crate::store::page_size(search.limit);
        let after = search.cursor.as_deref().unwrap_or("");
        let mut promises: Vec<Promise> = self
            .promises
            .range(search.prefix.clone()..)
            .take_while(|(id, _)| id.starts_with(&search.prefix))
            .filter(|(id, _)| id.as_str() > after)
            .map(|(_, p)| p)
            .filter(|p| search.state.is_none_or(|s| p.state == s))
            .filter(|p| search.tags.iter().all(|(k, v)| p.tags.get(k) == Some(v)))
            .filter(|p| search.root.as_deref().is_none_or(|root| crate::store::state::family_of(p) == root))
            .take(limit + 1)
            .cloned()
            .collect();
        let more = promises.len() > limit;
        promises.truncate(limit);
        let cursor = if more { promises.last().map(|p| p.id.clone()) } else { None };
        Ok(Page { promises, cursor })
    }

    async fn invocations(&self, _: Invocations) -> Result<Listing, StoreError> {
        Ok(Listing { invocations: Vec::new(), cursor: None })
    }

    async fn task(&self, _: &str) -> Result<Option<Task>, StoreError> {
        Ok(None)
    }

    async fn claim(&self, _: Claim) -> Result<Vec<Acquired>, StoreError> {
        Ok(Vec::new())
    }

    async fn set_limit(&self, _: crate::Limit, _: bool) -> Result<crate::Limit, StoreError> {
        Err(frontier())
    }

    async fn remove_limit(&self, _: &str) -> Result<bool, StoreError> {
        Err(frontier())
    }

    async fn limits(&self) -> Result<Vec<crate::LimitState>, StoreError> {
        Ok(Vec::new())
    }

    async fn heartbeat(&self, _: &str, _: &[Fence], _: Millis) -> Result<Vec<Fence>, StoreError> {
        Ok(Vec::new())
    }

    async fn release(&self, _: &Fence, _: Release) -> Result<(), StoreError> {
        Err(frontier())
    }

    async fn suspend(&self, _: &Fence, _: &[String]) -> Result<bool, StoreError> {
        Err(frontier())
    }

    async fn resume_halted(&self, _: &str, _: &BTreeMap<String, u64>) -> Result<usize, StoreError> {
        Ok(0)
    }

    async fn resume(&self, _: &str) -> Result<bool, StoreError> {
        Err(frontier())
    }

    async fn request_cancel(&self, _: &str) -> Result<Option<Promise>, StoreError> {
        Err(frontier())
    }

    async fn release_predecessors(&self, _: &str, _: &str, _: &str) -> Result<usize, StoreError> {
        Ok(0)
    }

    async fn purge(&self, _: Purge) -> Result<usize, StoreError> {
        Err(frontier())
    }

    async fn tick(&self) -> Result<Tick, StoreError> {
        Ok(Tick { now: self.now, ..Tick::default() })
    }

    async fn announce(&self, _: &Worker, _: Millis) -> Result<(), StoreError> {
        Ok(())
    }

    async fn workers(&self) -> Result<Vec<Worker>, StoreError> {
        Ok(Vec::new())
    }

    async fn put_schedule(&self, _: crate::Schedule, _: bool) -> Result<crate::Schedule, StoreError> {
        Err(frontier())
    }

    async fn update_schedule(&self, _: crate::Schedule, _: Vec<CreatePromise>) -> Result<bool, StoreError> {
        Err(frontier())
    }

    async fn remove_schedule(&self, _: &str) -> Result<bool, StoreError> {
        Err(frontier())
    }

    async fn schedule(&self, _: &str) -> Result<Option<crate::Schedule>, StoreError> {
        Ok(None)
    }

    async fn schedules(&self, _: Option<Millis>) -> Result<Vec<crate::Schedule>, StoreError> {
        Ok(Vec::new())
    }

    async fn wait(&self, id: &str, _: bool) -> Result<(), StoreError> {
        match self.look(id) {
            Some(p) if p.state.is_settled() => Ok(()),
            _ => Err(frontier()),
        }
    }

    fn ready(&self, _: &str) -> tokio::sync::watch::Receiver<u64> {
        self.ready.subscribe()
    }
}

/// What replaying one invocation's history found.
pub(crate) struct Replayed {
    /// Why it stopped: the frontier, a nondeterminism, or another fault.
    pub(crate) fault: Option<crate::runtime::invocation::Fault>,
    /// The recorded promises the replay asked for, the root included.
    pub(crate) reached: BTreeSet<String>,
    /// The patches it took the old path of.
    pub(crate) old_paths: Vec<String>,
}

/// Replays the invocation `root` of `func` over `history` (its promises, the root's
/// included), writing nothing.
pub(crate) async fn replay(
    func: std::sync::Arc<dyn crate::runtime::function::Erased>,
    root: &Promise,
    history: Vec<Promise>,
    states: &crate::runtime::shared::States,
    max_payload: usize,
) -> Replayed {
    use std::sync::Arc;

    use crate::runtime::execute::Job;
    use crate::runtime::invocation::Invocation;
    use crate::runtime::shared::Shared;

    let store = Arc::new(HistoryStore::new(&root.id, history));
    let shared = Arc::new(Shared {
        store: store.clone(),
        group: "check".into(),
        pid: "check".into(),
        process: "check:0".into(),
        registry: std::collections::HashMap::new(),
        states: states.clone(),
        ttl: 30_000,
        max_payload,
        concurrency: 1,
        window: 0,
        suspend_after: std::time::Duration::MAX,
        wake: tokio::sync::Notify::new(),
        tick_soon: std::sync::atomic::AtomicBool::new(false),
        runs: Mutex::default(),
        running: Mutex::default(),
        stopped: tokio::sync::watch::Sender::new(false),
        checking: true,
        unserved: Mutex::default(),
    });
    let fence = Fence { task: root.id.clone(), version: 0 };
    let inv = Arc::new(Invocation::new(shared, fence, Vec::new(), tokio::time::Instant::now(), false));
    let crate::promise::Param::Call { args, .. } = &root.param else {
        return Replayed { fault: None, reached: BTreeSet::new(), old_paths: Vec::new() };
    };
    let job = Job {
        inv: inv.clone(),
        id: root.id.clone(),
        deadline: crate::NEVER,
        retry: func.retry(),
        func,
        args: args.clone(),
        fresh: false,
        deferred: None,
    };
    tokio::select! {
        biased;
        _ = job.run() => {}
        () = inv.faulted() => {}
    }
    Replayed { fault: inv.fault(), reached: store.reached(), old_paths: inv.old_paths() }
}
