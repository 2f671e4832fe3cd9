//! Helpers shared by the integration tests.
#![allow(dead_code, unreachable_pub)]

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};

use durable::{Builder, Durable, MemoryStore, Store};
use tokio::sync::Notify;

static RUNS: LazyLock<Mutex<HashMap<String, u32>>> = LazyLock::new(Mutex::default);
static SIGNALS: LazyLock<Mutex<HashMap<String, Arc<Notify>>>> = LazyLock::new(Mutex::default);
static OPEN: LazyLock<Mutex<HashMap<String, bool>>> = LazyLock::new(Mutex::default);

/// Counts a run of the body named `key`; returns the count so far.
pub fn ran(key: &str) -> u32 {
    let mut runs = RUNS.lock().unwrap();
    let n = runs.entry(key.to_owned()).or_default();
    *n += 1;
    *n
}

/// How often the body named `key` ran.
pub fn runs(key: &str) -> u32 {
    RUNS.lock().unwrap().get(key).copied().unwrap_or(0)
}

fn signal(key: &str) -> Arc<Notify> {
    SIGNALS.lock().unwrap().entry(key.to_owned()).or_default().clone()
}

/// In a function body: says it got here, then waits forever unless `key` is open.
pub async fn gate(key: &str) {
    signal(&format!("{key}:arrived")).notify_one();
    if !OPEN.lock().unwrap().get(key).copied().unwrap_or(false) {
        std::future::pending::<()>().await;
    }
}

/// Waits until a body reached the gate `key`.
pub async fn arrived(key: &str) {
    signal(&format!("{key}:arrived")).notified().await;
}

/// Lets later runs through the gate `key`.
pub fn open(key: &str) {
    OPEN.lock().unwrap().insert(key.to_owned(), true);
}

pub fn memory() -> Arc<dyn Store> {
    Arc::new(MemoryStore::new())
}

pub fn builder(store: &Arc<dyn Store>) -> Builder {
    Durable::builder().store(store.clone())
}

/// A way to `store` of a runtime's own, which [`crash`] kills.
pub fn line(store: &Arc<dyn Store>) -> Arc<durable_testkit::FaultyStore> {
    Arc::new(durable_testkit::FaultyStore::new(store.clone()))
}

/// Kills `durable`, built over `line`, as a crashed process dies: it gives nothing
/// back, so its tasks wait for their leases to end. (Dropping it alone releases them.)
pub fn crash(durable: Durable, line: &durable_testkit::FaultyStore) {
    line.kill();
    drop(durable);
}

/// Every promise in the store whose id starts with `prefix`, as (id, state, value).
pub async fn tree(store: &dyn Store, prefix: &str) -> Vec<(String, durable::State, Option<String>)> {
    let mut out = Vec::new();
    let mut cursor = None;
    loop {
        let search = durable::store::Search { prefix: prefix.into(), cursor, ..Default::default() };
        let page = store.search(search).await.unwrap();
        out.extend(page.promises.into_iter().map(|p| (p.id, p.state, p.value)));
        match page.cursor {
            Some(c) => cursor = Some(c),
            None => return out,
        }
    }
}

/// A SledStore in a fresh directory on the virtual clock; keep the directory alive.
pub fn sled() -> (Arc<dyn Store>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = durable::SledStore::open_with_clock(dir.path(), durable::store::VirtualClock::new()).unwrap();
    (Arc::new(store), dir)
}

/// Runs each `async fn name(store: Arc<dyn Store>)` of the file on MemoryStore and on
/// SledStore, under paused time.
#[macro_export]
macro_rules! on_every_store {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test(start_paused = true)]
                async fn $name() {
                    super::$name(super::common::memory()).await
                }
            )*
        }
        mod sled {
            $(
                #[tokio::test(start_paused = true)]
                async fn $name() {
                    let (store, _dir) = super::common::sled();
                    super::$name(store).await
                }
            )*
        }
    };
}
