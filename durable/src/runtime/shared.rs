//! What every part of one runtime shares: the store, the registry, the running tasks.

use std::any::{Any, TypeId};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio::task::AbortHandle;

use crate::Store;
use crate::promise::{Fence, Millis};
use crate::runtime::function::Erased;
use crate::runtime::invocation::Invocation;

/// What the runtime's parts share.
pub(crate) struct Shared {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) group: String,
    pub(crate) pid: String,
    pub(crate) process: String,
    pub(crate) registry: HashMap<String, Arc<dyn Erased>>,
    /// The application state its functions reach ([`Context::state`](crate::Context::state)).
    pub(crate) states: States,
    pub(crate) ttl: Millis,
    pub(crate) max_payload: usize,
    pub(crate) concurrency: usize,
    /// How long a preferred pid has a task to itself.
    pub(crate) window: Millis,
    /// How long an invocation waits in memory before it suspends.
    pub(crate) suspend_after: Duration,
    /// Wakes the background loop: a deadline was added or a slot freed.
    pub(crate) wake: Notify,
    /// Set when this process added a deadline: the background loop ticks on its next
    /// pass, to learn of it. Otherwise it ticks only when the store's next deadline
    /// is due, or a lease's length after its last tick.
    pub(crate) tick_soon: std::sync::atomic::AtomicBool,
    /// Function bodies run so far, by function name.
    pub(crate) runs: Mutex<BTreeMap<String, u64>>,
    /// Executing tasks, by the fence they hold: one process may hold a task again (a
    /// lost lease, a suspension) while its old execution is still winding down.
    pub(crate) running: Mutex<HashMap<Fence, Running>>,
    pub(crate) stopped: watch::Sender<bool>,
    /// A replay check's runtime: a body runs only over a history recorded under it.
    pub(crate) checking: bool,
    /// The calls this process routed elsewhere, by group and function, that no one
    /// has yet been seen to serve: the background loop warns of those still waiting
    /// after [`UNSERVED_AFTER`]. One entry per group and function, each gone once
    /// served or settled.
    pub(crate) unserved: Mutex<HashMap<(String, String), Noted>>,
}

/// An execution: how to stop it, and the invocation, whose lease the heartbeats
/// confirm.
pub(crate) struct Running {
    pub(crate) abort: AbortHandle,
    pub(crate) inv: Arc<Invocation>,
}

/// How long a call waits for a group that no live worker serves before its caller's
/// runtime warns of it, and then between warnings.
pub(crate) const UNSERVED_AFTER: Duration = Duration::from_secs(60);

/// The newest call to a group and function, when it was created (store time), and
/// when to look at it.
#[derive(Debug)]
pub(crate) struct Noted {
    pub(crate) id: String,
    pub(crate) created_at: Millis,
    pub(crate) due: tokio::time::Instant,
}

/// Application state by type: one value of each type, set on the builder.
#[derive(Clone, Default)]
pub(crate) struct States(HashMap<TypeId, Arc<dyn Any + Send + Sync>>);

impl States {
    /// Sets the value of its type; false if that type had one already.
    pub(crate) fn insert<T: Send + Sync + 'static>(&mut self, value: T) -> bool {
        self.0.insert(TypeId::of::<T>(), Arc::new(value)).is_none()
    }

    pub(crate) fn get<T: Send + Sync + 'static>(&self) -> Option<Arc<T>> {
        self.0.get(&TypeId::of::<T>()).cloned().and_then(|any| any.downcast::<T>().ok())
    }
}

impl Shared {
    /// Tells the background loop that this process added a deadline.
    pub(crate) fn deadline_added(&self) {
        self.tick_soon.store(true, std::sync::atomic::Ordering::SeqCst);
        self.wake.notify_one();
    }

    /// Notes a pending call routed to `group` for `function` ([`Shared::unserved`]),
    /// unless this runtime serves it itself.
    pub(crate) fn note_call(&self, id: &str, group: &str, function: &str, created_at: Millis) {
        if self.checking || (group == self.group && self.registry.contains_key(function)) {
            return;
        }
        let mut noted = self.unserved.lock().unwrap_or_else(|e| e.into_inner());
        noted
            .entry((group.to_owned(), function.to_owned()))
            .and_modify(|n| (n.id, n.created_at) = (id.to_owned(), created_at))
            .or_insert_with(|| Noted {
                id: id.to_owned(),
                created_at,
                due: tokio::time::Instant::now() + UNSERVED_AFTER,
            });
    }

    pub(crate) fn count_run(&self, function: &str) {
        *self.runs.lock().unwrap_or_else(|e| e.into_inner()).entry(function.to_owned()).or_default() += 1;
    }
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Durable")
            .field("group", &self.group)
            .field("process", &self.process)
            .field("functions", &self.registry.keys().collect::<Vec<_>>())
            .finish()
    }
}
