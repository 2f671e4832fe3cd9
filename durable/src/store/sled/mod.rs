//! The default store: one directory, one process, on sled.
//!
//! The state machine runs in memory (the engine); every step appends the records it
//! changed to a write-ahead log as one entry and is acknowledged only after an
//! `fdatasync`. Concurrent steps share one sync (group commit). The log is applied to
//! sled a segment at a time, in the background; opening reads sled and the rest of the
//! log.

mod wal;

use std::path::Path;
use std::sync::Arc;

use self::wal::{Faults, Records, Wal};
use super::engine::{Engine, Log, engine_store};
use super::state::{Core, Dirty};
use super::{Clock, SystemClock};
use crate::StoreError;
use crate::promise::{Promise, Task};

const FORMAT_KEY: &[u8] = b"format";
/// Format 1 had no write-ahead log; its directories read the same.
const FORMAT: &[u8] = b"2";
/// A write-ahead log segment this long is applied to sled and a new one begun.
const SEGMENT_LIMIT: u64 = 64 << 20;

/// A store in a directory on disk: the default for one machine.
///
/// sled locks the directory, so one process uses it at a time. Opening it therefore
/// proves that every earlier holder is gone, and every task they held is released at
/// once (a new version), to be taken over without waiting for their leases. Opening a
/// directory that is locked waits up to 2 s (a store of this process that was just
/// dropped lets go of it a moment later), then fails naming the directory.
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
        SledStore::open_with(path.as_ref(), Arc::new(clock), SEGMENT_LIMIT, Faults::none())
    }

    fn open_with(
        path: &Path,
        clock: Arc<dyn Clock>,
        segment_limit: u64,
        faults: Faults,
    ) -> Result<SledStore, StoreError> {
        let context = |e: sled::Error| {
            StoreError::backend(format!(
                "cannot open the sled store in {}: {e} (is another process using it?)",
                path.display()
            ))
        };
        let db = open_locked(path).map_err(context)?;
        match db.get(FORMAT_KEY).map_err(context)? {
            None => {
                db.insert(FORMAT_KEY, FORMAT).map_err(context)?;
            }
            Some(v) if v == FORMAT => {}
            Some(v) if v == b"1" => {
                db.insert(FORMAT_KEY, FORMAT).map_err(context)?;
            }
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
        let (wal, overlay) = Wal::open(path, &db, &records, segment_limit, faults)?;
        let mut raw = Records::new();
        for kv in records.iter() {
            let (k, v) = kv.map_err(StoreError::backend)?;
            raw.insert(k.to_vec(), v.to_vec());
        }
        raw.extend(overlay);
        let promises = load::<Promise>(&raw, PROMISE, path)?;
        let tasks = load::<Task>(&raw, TASK, path)?;
        let mut core = Core::restore(promises, tasks, clock.now());
        core.release_all(clock.now());
        let log = SledLog { wal };
        let dirty = std::mem::take(&mut core.dirty);
        log.stage(&core, &dirty)?;
        log.wal.sync_blocking()?;
        Ok(SledStore { engine: Engine::new(core, log, clock) })
    }
}

/// How long opening waits for the directory's lock: a store of this process that was
/// just dropped lets go of it once sled's own threads finish with it.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Opens sled, waiting up to [`LOCK_WAIT`] while its directory is locked.
fn open_locked(path: &Path) -> Result<sled::Db, sled::Error> {
    let started = std::time::Instant::now();
    loop {
        match sled::Config::new().path(path).open() {
            // sled 0.34 says so only in the message of an `Other` error.
            Err(sled::Error::Io(e))
                if e.to_string().starts_with("could not acquire lock") && started.elapsed() < LOCK_WAIT =>
            {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            other => return other,
        }
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

fn load<T: serde::de::DeserializeOwned>(raw: &Records, kind: u8, path: &Path) -> Result<Vec<T>, StoreError> {
    raw.range(vec![kind]..vec![kind + 1])
        .map(|(k, v)| {
            serde_json::from_slice(v).map_err(|e| {
                StoreError::backend(format!(
                    "the sled store in {} has an unreadable record {:?}: {e}",
                    path.display(),
                    String::from_utf8_lossy(k)
                ))
            })
        })
        .collect()
}

#[derive(Debug)]
struct SledLog {
    /// Promises under `p{id}`, tasks under `t{id}`, in one tree, so one step is one
    /// atomic batch when a checkpoint applies it.
    wal: Wal,
}

impl Log for SledLog {
    fn stage(&self, core: &Core, dirty: &Dirty) -> Result<u64, StoreError> {
        if dirty.promises.is_empty() && dirty.tasks.is_empty() {
            return Ok(0);
        }
        self.wal.stage(|entry| {
            for id in &dirty.promises {
                entry.record(&key(PROMISE, id), core.promise(id).expect("a dirty promise exists"))?;
            }
            for id in &dirty.tasks {
                entry.record(&key(TASK, id), core.task_ref(id).expect("a dirty task exists"))?;
            }
            Ok(())
        })
    }

    fn staged(&self) -> u64 {
        self.wal.staged()
    }

    async fn commit(&self, token: u64) -> Result<(), StoreError> {
        if token == 0 {
            return Ok(());
        }
        self.wal.commit(token).await
    }
}

engine_store!(SledStore);

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::Arc;
    use std::sync::atomic::Ordering;

    use super::SledStore;
    use super::wal::Faults;
    use crate::promise::Param;
    use crate::store::{CreatePromise, SettlePromise, SystemClock};
    use crate::{State, Store};

    fn open_small(dir: &Path, segment_limit: u64) -> SledStore {
        SledStore::open_with(dir, Arc::new(SystemClock), segment_limit, Faults::none()).unwrap()
    }

    fn segments(dir: &Path) -> Vec<std::path::PathBuf> {
        let mut found: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.file_name().unwrap().to_str().unwrap().starts_with("wal-"))
            .collect();
        found.sort();
        found
    }

    /// Waits until the checkpoint thread has applied and deleted every sealed segment.
    fn wait_for_checkpoints(dir: &Path) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while segments(dir).len() > 1 {
            assert!(std::time::Instant::now() < deadline, "checkpoints never finished: {:?}", segments(dir));
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }

    fn resolve(id: &str) -> SettlePromise {
        SettlePromise {
            id: id.into(),
            state: State::Resolved,
            value: "1".into(),
            ikey: None,
            strict: false,
            fence: None,
        }
    }

    #[tokio::test]
    async fn concurrent_writes_share_syncs_and_all_are_durable() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SledStore::open(dir.path()).unwrap());
        let before = store.engine.log.wal.syncs.load(Ordering::Relaxed);
        let writes: Vec<_> = (0..64)
            .map(|i| {
                let store = store.clone();
                tokio::spawn(async move { store.create(CreatePromise::new(format!("p{i}"), Param::Timer)).await })
            })
            .collect();
        for write in writes {
            write.await.unwrap().unwrap();
        }
        let syncs = store.engine.log.wal.syncs.load(Ordering::Relaxed) - before;
        assert!((1..=8).contains(&syncs), "64 concurrent writes took {syncs} syncs");
        drop(store);
        let reopened = SledStore::open(dir.path()).unwrap();
        for i in 0..64 {
            assert!(reopened.get(&format!("p{i}")).await.unwrap().is_some(), "p{i} was acknowledged, so it is there");
        }
    }

    /// Writes 200 promises over many small segments, waits until every sealed one is
    /// applied and deleted, and checks that a reopened store has them all.
    async fn checkpoint_200_and_reopen(store: SledStore, dir: &Path) {
        for i in 0..200 {
            store.create(CreatePromise::new(format!("p{i}"), Param::Timer)).await.unwrap();
        }
        wait_for_checkpoints(dir);
        drop(store);
        let reopened = open_small(dir, 2048);
        for i in 0..200 {
            assert!(reopened.get(&format!("p{i}")).await.unwrap().is_some(), "p{i} was acknowledged, so it is there");
        }
    }

    #[tokio::test]
    async fn full_segments_are_applied_to_sled_and_deleted() {
        let dir = tempfile::tempdir().unwrap();
        checkpoint_200_and_reopen(open_small(dir.path(), 2048), dir.path()).await;
    }

    fn open_faulty(dir: &Path, failures: u64) -> SledStore {
        let faults = Faults { checkpoints: Arc::new(failures.into()), backoff: std::time::Duration::from_millis(1) };
        SledStore::open_with(dir, Arc::new(SystemClock), 2048, faults).unwrap()
    }

    #[tokio::test]
    async fn a_checkpoint_that_fails_is_tried_again_and_loses_nothing() {
        let dir = tempfile::tempdir().unwrap();
        // The first two tries apply half a segment each, then fail.
        checkpoint_200_and_reopen(open_faulty(dir.path(), 2), dir.path()).await;
    }

    #[tokio::test]
    async fn a_checkpoint_that_keeps_failing_stops_the_store_and_loses_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_faulty(dir.path(), u64::MAX);
        let mut acknowledged = Vec::new();
        let error = loop {
            let id = format!("p{}", acknowledged.len());
            match store.create(CreatePromise::new(id.clone(), Param::Timer)).await {
                Ok(_) => acknowledged.push(id),
                Err(e) => break e.to_string(),
            }
            // Once the checkpoint thread gave up, the next write must be refused.
            let checkpoints = store.engine.log.wal.checkpoints.as_ref().unwrap();
            if checkpoints.is_finished() {
                let refused = store.create(CreatePromise::new("after", Param::Timer)).await;
                break refused.expect_err("a store whose checkpoint failed refuses writes").to_string();
            }
        };
        assert!(error.contains("applying") && error.contains("wal-"), "the error names the segment: {error}");
        assert!(store.get("p0").await.is_err(), "reads are refused too: the store stopped");
        drop(store);
        let reopened = open_small(dir.path(), 2048);
        for id in &acknowledged {
            assert!(reopened.get(id).await.unwrap().is_some(), "{id} was acknowledged, so it is there");
        }
        wait_for_checkpoints(dir.path());
    }

    #[tokio::test]
    async fn a_torn_last_entry_is_ignored_and_what_came_before_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        store.create(CreatePromise::new("p", Param::Timer)).await.unwrap();
        drop(store);
        // Half an entry, as a crash in the middle of a write leaves it.
        let segment = segments(dir.path()).pop().unwrap();
        let mut bytes = std::fs::read(&segment).unwrap();
        bytes.extend_from_slice(&[200, 0, 0, 0, 1, 2, 3, 4, b'{']);
        std::fs::write(&segment, bytes).unwrap();
        let reopened = SledStore::open(dir.path()).unwrap();
        assert!(reopened.get("p").await.unwrap().is_some());
        reopened.create(CreatePromise::new("q", Param::Timer)).await.unwrap();
        drop(reopened);
        let again = SledStore::open(dir.path()).unwrap();
        assert!(again.get("q").await.unwrap().is_some(), "the log goes on after a torn entry");
    }

    #[tokio::test]
    async fn a_segment_already_applied_is_not_applied_again() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        store.create(CreatePromise::new("p", Param::Timer)).await.unwrap();
        drop(store);
        // A copy of the segment that holds p pending, as a crash between the
        // checkpoint and the deletion of the segment leaves it.
        let stale = segments(dir.path()).pop().unwrap();
        let copy = std::fs::read(&stale).unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        store.settle(resolve("p")).await.unwrap();
        drop(store);
        // Opening applies the segment that resolved p, and deletes it.
        let store = SledStore::open(dir.path()).unwrap();
        wait_for_checkpoints(dir.path());
        drop(store);
        std::fs::write(&stale, copy).unwrap();
        let reopened = SledStore::open(dir.path()).unwrap();
        assert_eq!(reopened.get("p").await.unwrap().unwrap().state, State::Resolved);
    }

    #[tokio::test]
    async fn a_damaged_segment_before_the_last_is_an_error_that_names_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        store.create(CreatePromise::new("p", Param::Timer)).await.unwrap();
        drop(store);
        let segment = segments(dir.path()).pop().unwrap();
        let mut bytes = std::fs::read(&segment).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        std::fs::write(&segment, bytes).unwrap();
        // A later segment: the damaged entry cannot be a torn write at the end.
        std::fs::write(dir.path().join("wal-00000000000000000009"), b"").unwrap();
        let err = SledStore::open(dir.path()).unwrap_err().to_string();
        assert!(err.contains("damaged") && err.contains(&segment.display().to_string()), "{err}");
    }
}
