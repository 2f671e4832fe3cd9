//! The default store: one directory, one process, on sled.
//!
//! The state machine runs in memory (the engine); every step writes the records it
//! changed to sled in one atomic batch and is acknowledged only after a flush.
//! Concurrent steps share one flush (group commit).

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::engine::{Engine, Log, engine_store};
use super::state::{Core, Dirty};
use super::{Clock, SystemClock};
use crate::StoreError;
use crate::promise::{Promise, Task};

const FORMAT_KEY: &[u8] = b"format";
const FORMAT: &[u8] = b"1";

/// A store in a directory on disk: the default for one machine.
///
/// sled locks the directory, so one process uses it at a time. Opening it therefore
/// proves that every earlier holder is gone, and every task they held is released at
/// once (a new version), to be taken over without waiting for their leases.
///
/// ```
/// let dir = tempfile::tempdir()?;
/// let store = durable::SledStore::open(dir.path())?;
/// # let _ = store;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct SledStore {
    engine: Engine<SledLog>,
}

impl SledStore {
    /// Opens (or creates) the store in `path`, on the system clock.
    pub fn open(path: impl AsRef<Path>) -> Result<SledStore, StoreError> {
        SledStore::open_with_clock(path, SystemClock)
    }

    /// Opens (or creates) the store in `path`, on the given clock.
    pub fn open_with_clock(path: impl AsRef<Path>, clock: impl Clock) -> Result<SledStore, StoreError> {
        let path = path.as_ref();
        let context = |e: sled::Error| {
            StoreError::backend(format!(
                "cannot open the sled store in {}: {e} (is another process using it?)",
                path.display()
            ))
        };
        let db = sled::Config::new().path(path).open().map_err(context)?;
        match db.get(FORMAT_KEY).map_err(context)? {
            None => {
                db.insert(FORMAT_KEY, FORMAT).map_err(context)?;
            }
            Some(v) if v == FORMAT => {}
            Some(v) => {
                return Err(StoreError::backend(format!(
                    "the sled store in {} has format {:?}; this version reads format {:?}",
                    path.display(),
                    String::from_utf8_lossy(&v),
                    String::from_utf8_lossy(FORMAT)
                )));
            }
        }
        let records = db.open_tree("records").map_err(context)?;
        let promises = load::<Promise>(&records, PROMISE, path)?;
        let tasks = load::<Task>(&records, TASK, path)?;
        let clock: Arc<dyn Clock> = Arc::new(clock);
        let mut core = Core::restore(promises, tasks, clock.now());
        core.release_all(clock.now());
        let log = SledLog {
            db,
            records,
            staged: AtomicU64::new(0),
            flushed: tokio::sync::Mutex::new(0),
            flushes: AtomicU64::new(0),
        };
        let dirty = std::mem::take(&mut core.dirty);
        log.stage(&core, &dirty)?;
        log.db.flush().map_err(StoreError::backend)?;
        Ok(SledStore { engine: Engine::new(core, log, clock) })
    }
}

/// Record keys: `p` or `t`, then the id.
const PROMISE: u8 = b'p';
const TASK: u8 = b't';

fn key(kind: u8, id: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(id.len() + 1);
    key.push(kind);
    key.extend_from_slice(id.as_bytes());
    key
}

fn load<T: serde::de::DeserializeOwned>(tree: &sled::Tree, kind: u8, path: &Path) -> Result<Vec<T>, StoreError> {
    tree.scan_prefix([kind])
        .map(|kv| {
            let (k, v) = kv.map_err(StoreError::backend)?;
            serde_json::from_slice(&v).map_err(|e| {
                StoreError::backend(format!(
                    "the sled store in {} has an unreadable record {:?}: {e}",
                    path.display(),
                    String::from_utf8_lossy(&k)
                ))
            })
        })
        .collect()
}

#[derive(Debug)]
struct SledLog {
    db: sled::Db,
    /// Promises under `p{id}`, tasks under `t{id}`: one tree, so one step is one
    /// atomic batch.
    records: sled::Tree,
    /// Steps staged so far.
    staged: AtomicU64,
    /// Steps known durable; the lock is held by the one flush in progress.
    flushed: tokio::sync::Mutex<u64>,
    /// Flushes done, to show that steps share them.
    flushes: AtomicU64,
}

impl Log for SledLog {
    fn stage(&self, core: &Core, dirty: &Dirty) -> Result<u64, StoreError> {
        if dirty.promises.is_empty() && dirty.tasks.is_empty() {
            return Ok(0);
        }
        let mut batch = sled::Batch::default();
        for id in &dirty.promises {
            let p = core.promise(id).expect("a dirty promise exists");
            batch.insert(key(PROMISE, id), serde_json::to_vec(p).map_err(StoreError::backend)?);
        }
        for id in &dirty.tasks {
            let t = core.task_ref(id).expect("a dirty task exists");
            batch.insert(key(TASK, id), serde_json::to_vec(t).map_err(StoreError::backend)?);
        }
        self.records.apply_batch(batch).map_err(StoreError::backend)?;
        Ok(self.staged.fetch_add(1, Ordering::SeqCst) + 1)
    }

    async fn commit(&self, token: u64) -> Result<(), StoreError> {
        if token == 0 {
            return Ok(());
        }
        let mut flushed = self.flushed.lock().await;
        if *flushed >= token {
            // A flush that started after this step was staged covered it.
            return Ok(());
        }
        let target = self.staged.load(Ordering::SeqCst);
        self.flushes.fetch_add(1, Ordering::Relaxed);
        // A blocking flush on tokio's blocking pool: it keeps the runtime's threads
        // free, and paused test time does not advance while it runs.
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || db.flush())
            .await
            .map_err(StoreError::backend)?
            .map_err(StoreError::backend)?;
        *flushed = target;
        Ok(())
    }
}

engine_store!(SledStore);

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::Ordering;

    use super::SledStore;
    use crate::Store;
    use crate::promise::Param;
    use crate::store::CreatePromise;

    #[tokio::test]
    async fn concurrent_writes_share_flushes_and_all_are_durable() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SledStore::open(dir.path()).unwrap());
        let before = store.engine.log.flushes.load(Ordering::Relaxed);
        let writes: Vec<_> = (0..64)
            .map(|i| {
                let store = store.clone();
                tokio::spawn(async move { store.create(CreatePromise::new(format!("p{i}"), Param::Timer)).await })
            })
            .collect();
        for write in writes {
            write.await.unwrap().unwrap();
        }
        let flushes = store.engine.log.flushes.load(Ordering::Relaxed) - before;
        assert!((1..=8).contains(&flushes), "64 concurrent writes took {flushes} flushes");
        drop(store);
        let reopened = SledStore::open(dir.path()).unwrap();
        for i in 0..64 {
            assert!(reopened.get(&format!("p{i}")).await.unwrap().is_some(), "p{i} was acknowledged, so it is there");
        }
    }
}
