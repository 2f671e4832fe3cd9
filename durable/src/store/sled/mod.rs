//! The default store: one directory, one process, on sled.
//!
//! The state machine runs in memory (the engine) over the live records only; every
//! step appends the records it changed to a write-ahead log as one entry and is
//! acknowledged only after an `fdatasync`. Concurrent steps share one sync (group
//! commit). The log is applied to sled a segment at a time, in the background.
//!
//! Live and finished records have their own keys: `P{id}` and `T{id}` for pending
//! promises and unfulfilled tasks, `p{id}` and `t{id}` for settled promises and
//! fulfilled tasks, `f{settled_at}{id}` (the time as 8 big-endian bytes) for each
//! finished root, and `i{!created_at}{id}` (the time's complement, so that the newest
//! sorts first) for each finished invocation. Opening reads the live keys and the log, never the finished records;
//! those are read when a step needs them, through the log's overlay, then sled.

mod wal;

use std::ops::{Bound, ControlFlow};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use self::wal::{Faults, Overlay, Records, Wal};
use super::cold::Cold;
use super::engine::{Engine, Log, engine_store};
use super::state::Start;
use super::state::{Changes, Core};
use super::{Clock, SystemClock};
use crate::StoreError;
use crate::promise::{Millis, Promise, Task, TaskState, is_invocation};

const FORMAT_KEY: &[u8] = b"format";
/// Formats 1 and 2 kept every record under `p` and `t`, format 3 had no index of
/// finished invocations, and formats before 5 recorded no promise's creator and
/// family; opening one brings it up to date.
const FORMAT: &[u8] = b"5";
/// A write-ahead log segment this long is applied to sled and a new one begun. It
/// bounds the memory the overlay of finished records not yet in sled takes.
const SEGMENT_LIMIT: u64 = 8 << 20;
/// At most this many of the overlay's records are copied at once by a scan.
const OVERLAY_WINDOW: usize = 256;
/// sled's page cache: finished records are read from it.
const CACHE: u64 = 64 << 20;

/// A store in a directory on disk: the default for one machine.
///
/// sled locks the directory, so one process uses it at a time. Opening it therefore
/// proves that every earlier holder is gone, and every task they held is released at
/// once (a new version), to be taken over without waiting for their leases. Opening a
/// directory that is locked waits up to 2 s (a store of this process that was just
/// dropped lets go of it a moment later), then fails naming the directory.
///
/// Memory holds the live state (pending promises, unfulfilled tasks and their
/// indexes), finished records written since the last checkpoint (a few MB at most),
/// and sled's cache (32 MB); settled promises live on disk. Opening reads only the
/// live records.
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
        let context = |e: sled::Error| match e {
            sled::Error::Io(e) if is_locked(&e) => StoreError::backend(format!(
                "the sled store in {} is in use: another process holds its lock (a service running on it), and \
                 one process at a time opens a sled store; steer that service from inside (Durable::promises()), \
                 or stop it first",
                path.display()
            )),
            e => StoreError::backend(format!("cannot open the sled store in {}: {e}", path.display())),
        };
        let db = open_locked(path).map_err(context)?;
        let records = db.open_tree("records").map_err(context)?;
        match db.get(FORMAT_KEY).map_err(context)? {
            None => {
                db.insert(FORMAT_KEY, FORMAT).map_err(context)?;
            }
            Some(v) if v == FORMAT => {}
            Some(v) if v == b"1" || v == b"2" => {
                split_live(path, &db, &records)?;
                relate_families(path, &db, &records)?;
            }
            Some(v) if v == b"3" || v == b"4" => relate_families(path, &db, &records)?,
            Some(v) => {
                return Err(StoreError::backend(format!(
                    "the sled store in {} has format {:?}; this version reads format {:?}",
                    path.display(),
                    String::from_utf8_lossy(&v),
                    String::from_utf8_lossy(FORMAT)
                )));
            }
        }
        let (wal, replayed) = Wal::open(path, &db, &records, segment_limit, faults, is_finished)?;
        // The live records: sled's, with the log's over them.
        let mut live = Records::new();
        for kind in [LIVE_PROMISE, LIVE_TASK, LIMIT, BUCKET, SCHEDULE] {
            for kv in records.scan_prefix([kind]) {
                let (k, v) = kv.map_err(StoreError::backend)?;
                live.insert(k.to_vec(), Some(v.to_vec()));
            }
        }
        live.extend(replayed.into_iter().filter(|(k, _)| !is_finished(k)));
        let promises = load::<Promise>(&live, LIVE_PROMISE, path)?;
        let tasks = load::<Task>(&live, LIVE_TASK, path)?;
        let cold = Arc::new(SledCold { overlay: wal.overlay.clone(), records, path: path.to_path_buf() });
        let limits = load::<crate::Limit>(&live, LIMIT, path)?;
        let buckets = load::<((String, String), super::flow::Bucket)>(&live, BUCKET, path)?;
        let schedules = load::<crate::Schedule>(&live, SCHEDULE, path)?;
        let mut core = Core::restore(cold, promises, tasks, clock.now());
        core.restore_flow(limits, buckets);
        core.restore_schedules(schedules);
        core.release_all(clock.now());
        let log = SledLog { wal };
        log.stage(&core.take_changes())?;
        log.wal.sync_blocking()?;
        Ok(SledStore { engine: Engine::new(core, log, clock) })
    }

    /// How many finished records not yet applied to sled the log holds in memory.
    #[cfg(test)]
    fn overlay_len(&self) -> usize {
        self.engine.log.wal.overlay.lock().unwrap().len()
    }
}

/// How long opening waits for the directory's lock: a store of this process that was
/// just dropped lets go of it once sled's own threads finish with it.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Opens sled, waiting up to [`LOCK_WAIT`] while its directory is locked.
fn open_locked(path: &Path) -> Result<sled::Db, sled::Error> {
    let started = std::time::Instant::now();
    loop {
        match sled::Config::new().path(path).cache_capacity(CACHE).open() {
            Err(sled::Error::Io(e)) if is_locked(&e) && started.elapsed() < LOCK_WAIT => {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            other => return other,
        }
    }
}

/// Whether opening failed because another process holds the directory's lock: sled
/// 0.34 says so only in the message of an `Other` error.
fn is_locked(e: &std::io::Error) -> bool {
    e.to_string().starts_with("could not acquire lock")
}

/// Record keys: a kind, then the id.
const LIVE_PROMISE: u8 = b'P';
const LIVE_TASK: u8 = b'T';
const PROMISE: u8 = b'p';
const TASK: u8 = b't';
/// The finished-roots index: `f`, the settle time (8 bytes, big-endian), the id.
const FINISHED: u8 = b'f';
/// The finished-invocations index: `i`, the creation time's complement (8 bytes,
/// big-endian: newest first), the id.
const INVOKED: u8 = b'i';
/// The chosen-id index: `c`, the family's root's length (4 bytes, big-endian), the
/// root, the id of a promise of that family created with a chosen id.
const CHOSEN: u8 = b'c';
/// A limit: `L`, its name.
const LIMIT: u8 = b'L';
/// A schedule: `S`, its id.
const SCHEDULE: u8 = b'S';
/// A rate's state: `B`, the limit's name's length (4 bytes, big-endian), the name,
/// the key; the value holds both with the state.
const BUCKET: u8 = b'B';

/// Whether a key is of a finished record (or an index of them): one the store reads
/// from sled, not from memory.
fn is_finished(key: &[u8]) -> bool {
    matches!(key.first(), Some(&PROMISE | &TASK | &FINISHED | &INVOKED | &CHOSEN))
}

/// The prefix of the chosen-id index entries of family `root`.
fn chosen_prefix(root: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(root.len() + 5);
    key.push(CHOSEN);
    key.extend_from_slice(&(root.len() as u32).to_be_bytes());
    key.extend_from_slice(root.as_bytes());
    key
}

fn chosen_key(root: &str, id: &str) -> Vec<u8> {
    let mut key = chosen_prefix(root);
    key.extend_from_slice(id.as_bytes());
    key
}

fn key(kind: u8, id: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(id.len() + 1);
    key.push(kind);
    key.extend_from_slice(id.as_bytes());
    key
}

fn finished_key(at: Millis, id: &str) -> Vec<u8> {
    timed_key(FINISHED, at, id)
}

fn invoked_key(created_at: Millis, id: &str) -> Vec<u8> {
    timed_key(INVOKED, !created_at, id)
}

fn timed_key(kind: u8, at: u64, id: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(id.len() + 9);
    key.push(kind);
    key.extend_from_slice(&at.to_be_bytes());
    key.extend_from_slice(id.as_bytes());
    key
}

fn parse<T: serde::de::DeserializeOwned>(key: &[u8], value: &[u8], path: &Path) -> Result<T, StoreError> {
    serde_json::from_slice(value).map_err(|e| {
        StoreError::backend(format!(
            "the sled store in {} has an unreadable record {:?}: {e}",
            path.display(),
            String::from_utf8_lossy(key)
        ))
    })
}

fn load<T: serde::de::DeserializeOwned>(raw: &Records, kind: u8, path: &Path) -> Result<Vec<T>, StoreError> {
    raw.range(vec![kind]..vec![kind + 1]).filter_map(|(k, v)| v.as_ref().map(|v| parse(k, v, path))).collect()
}

/// Moves the live records of a store of format 1 or 2, which kept every record under
/// `p` and `t`, to their own keys, once: its log is applied first, so that no old
/// record is applied over a new one later.
fn split_live(path: &Path, db: &sled::Db, records: &sled::Tree) -> Result<(), StoreError> {
    let replay = wal::replay(path, db)?;
    let mut all = Records::new();
    for kv in records.iter() {
        let (k, v) = kv.map_err(StoreError::backend)?;
        all.insert(k.to_vec(), Some(v.to_vec()));
    }
    all.extend(replay.records);
    let mut batch = sled::Batch::default();
    for (k, v) in &all {
        let Some(v) = v else {
            batch.remove(k.as_slice());
            continue;
        };
        match k.first() {
            Some(&PROMISE) => {
                let p: Promise = parse(k, v, path)?;
                if !p.state.is_settled() {
                    batch.remove(k.as_slice());
                    batch.insert(key(LIVE_PROMISE, &p.id), v.as_slice());
                }
            }
            Some(&TASK) => {
                let t: Task = parse(k, v, path)?;
                if t.state != TaskState::Fulfilled {
                    batch.remove(k.as_slice());
                    batch.insert(key(LIVE_TASK, &t.id), v.as_slice());
                }
            }
            _ => {}
        }
    }
    records.apply_batch(batch).map_err(StoreError::backend)?;
    wal::mark_applied(db, replay.last)?;
    db.flush().map_err(StoreError::backend)?;
    Ok(())
}

/// Brings a store of format 3 or 4 (or one just split) to this format, once: gives
/// every promise its creator and family ([`super::upgrade::relate`]) and rebuilds
/// the indexes of finished families, finished invocations and chosen ids. Its log is
/// applied first. Holds every promise in memory meanwhile.
fn relate_families(path: &Path, db: &sled::Db, records: &sled::Tree) -> Result<(), StoreError> {
    let replay = wal::replay(path, db)?;
    let mut batch = sled::Batch::default();
    for (k, v) in &replay.records {
        match v {
            Some(v) => batch.insert(k.as_slice(), v.as_slice()),
            None => batch.remove(k.as_slice()),
        }
    }
    records.apply_batch(batch).map_err(StoreError::backend)?;
    wal::mark_applied(db, replay.last)?;
    let mut all = std::collections::BTreeMap::new();
    let mut batch = sled::Batch::default();
    for kv in records.iter() {
        let (k, v) = kv.map_err(StoreError::backend)?;
        match k.first() {
            Some(&PROMISE | &LIVE_PROMISE) => {
                let p: Promise = parse(&k, &v, path)?;
                all.insert(p.id.clone(), p);
            }
            Some(&FINISHED | &INVOKED | &CHOSEN) => batch.remove(k),
            _ => {}
        }
    }
    super::upgrade::relate(&mut all);
    let mut pending: std::collections::HashSet<&str> = std::collections::HashSet::new();
    let mut finished: std::collections::HashMap<&str, Millis> = std::collections::HashMap::new();
    for p in all.values() {
        let kind = if p.state.is_settled() { PROMISE } else { LIVE_PROMISE };
        batch.insert(key(kind, &p.id), json(p)?);
        if super::state::is_chosen(p) {
            batch.insert(chosen_key(&p.root, &p.id), FINISHED_VALUE);
        }
        match p.settled_at {
            Some(at) => {
                let latest = finished.entry(p.root.as_str()).or_default();
                *latest = (*latest).max(at);
                if is_invocation(p) {
                    batch.insert(invoked_key(p.created_at, &p.id), FINISHED_VALUE);
                }
            }
            None => {
                pending.insert(p.root.as_str());
            }
        }
    }
    for (root, at) in finished.into_iter().filter(|(root, _)| !pending.contains(root)) {
        batch.insert(finished_key(at, root), FINISHED_VALUE);
    }
    records.apply_batch(batch).map_err(StoreError::backend)?;
    db.insert(FORMAT_KEY, FORMAT).map_err(StoreError::backend)?;
    db.flush().map_err(StoreError::backend)?;
    Ok(())
}

/// The value of an index entry (an empty value would be a deletion).
const FINISHED_VALUE: &[u8] = b"1";

#[derive(Debug)]
struct SledLog {
    /// The log in front of sled's one tree of records.
    wal: Wal,
}

impl Log for SledLog {
    fn stage(&self, changes: &Changes) -> Result<u64, StoreError> {
        if changes.is_empty() {
            return Ok(0);
        }
        let mut records: Vec<(Vec<u8>, Option<Vec<u8>>)> = Vec::new();
        for p in &changes.promises {
            if p.state.is_settled() {
                records.push((key(LIVE_PROMISE, &p.id), None));
                records.push((key(PROMISE, &p.id), Some(json(p)?)));
            } else {
                records.push((key(LIVE_PROMISE, &p.id), Some(json(p)?)));
            }
        }
        for t in &changes.tasks {
            if t.state == TaskState::Fulfilled {
                records.push((key(LIVE_TASK, &t.id), None));
                records.push((key(TASK, &t.id), Some(json(t)?)));
            } else {
                records.push((key(LIVE_TASK, &t.id), Some(json(t)?)));
            }
        }
        for (at, id) in &changes.finished {
            records.push((finished_key(*at, id), Some(FINISHED_VALUE.to_vec())));
        }
        for (at, id) in &changes.invoked {
            records.push((invoked_key(*at, id), Some(FINISHED_VALUE.to_vec())));
        }
        for (root, id) in &changes.chosen {
            records.push((chosen_key(root, id), Some(FINISHED_VALUE.to_vec())));
        }
        for (name, limit) in &changes.limits {
            records.push((key(LIMIT, name), limit.as_ref().map(json).transpose()?));
        }
        for (id, schedule) in &changes.schedules {
            records.push((key(SCHEDULE, id), schedule.as_ref().map(json).transpose()?));
        }
        for (id, bucket) in &changes.buckets {
            let mut k = vec![BUCKET];
            k.extend_from_slice(&(id.0.len() as u32).to_be_bytes());
            k.extend_from_slice(id.0.as_bytes());
            k.extend_from_slice(id.1.as_bytes());
            records.push((k, bucket.map(|b| json(&(id, b))).transpose()?));
        }
        let purged = &changes.purged;
        records.extend(purged.promises.iter().map(|id| (key(PROMISE, id), None)));
        records.extend(purged.tasks.iter().map(|id| (key(TASK, id), None)));
        records.extend(purged.finished.iter().map(|(at, id)| (finished_key(*at, id), None)));
        records.extend(purged.invoked.iter().map(|(at, id)| (invoked_key(*at, id), None)));
        records.extend(purged.chosen.iter().map(|(root, id)| (chosen_key(root, id), None)));
        let entry = self.wal.stage(|entry| {
            for (k, v) in &records {
                entry.record(k, v.as_deref())?;
            }
            Ok(())
        })?;
        // Finished records are read from sled: until a checkpoint puts them there,
        // from the overlay.
        let mut overlay = self.wal.overlay.lock().unwrap_or_else(|e| e.into_inner());
        for (k, v) in records {
            if is_finished(&k) {
                overlay.insert(entry, k, v);
            }
        }
        Ok(entry)
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

fn json(record: &impl serde::Serialize) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(record).map_err(StoreError::backend)
}

/// Called with each record of a scan, key and value, until it breaks.
type Visit<'a> = dyn FnMut(&[u8], &[u8]) -> Result<ControlFlow<()>, StoreError> + 'a;

/// The finished records: the log's overlay over sled's tree.
#[derive(Debug)]
struct SledCold {
    overlay: Arc<Mutex<Overlay>>,
    records: sled::Tree,
    path: PathBuf,
}

impl SledCold {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        if let Some(value) = self.overlay.lock().unwrap_or_else(|e| e.into_inner()).get(key) {
            return Ok(value.map(<[u8]>::to_vec));
        }
        Ok(self.records.get(key).map_err(StoreError::backend)?.map(|v| v.to_vec()))
    }

    /// The records from `start` on whose keys start with `prefix`, in key order: the
    /// overlay's over sled's.
    fn scan(&self, start: Bound<&[u8]>, prefix: &[u8], each: &mut Visit<'_>) -> Result<(), StoreError> {
        let mut from = start.map(<[u8]>::to_vec);
        loop {
            // A window of keys at a time, the overlay's first: a record a checkpoint
            // moves from it to sled meanwhile is then in sled's part of the window,
            // read after. A window holds at most `OVERLAY_WINDOW` of the overlay's
            // records, so a scan that stops early copies few of them, however many
            // the overlay holds.
            let overlay = self.overlay.lock().unwrap_or_else(|e| e.into_inner()).range(
                from.as_ref().map(Vec::as_slice),
                prefix,
                OVERLAY_WINDOW,
            );
            let end = match overlay.last() {
                Some((k, _)) if overlay.len() == OVERLAY_WINDOW => Bound::Included(k.clone()),
                _ => Bound::Unbounded,
            };
            let mut overlay = overlay.into_iter().peekable();
            let mut sled = self
                .records
                .range::<&[u8], _>((from.as_ref().map(Vec::as_slice), end.as_ref().map(Vec::as_slice)))
                .take_while(|kv| kv.as_ref().map_or(true, |(k, _)| k.starts_with(prefix)))
                .peekable();
            loop {
                let next_sled = match sled.peek() {
                    Some(Ok((k, _))) => Some(k.to_vec()),
                    Some(Err(_)) => return Err(StoreError::backend(sled.next().expect("peeked").unwrap_err())),
                    None => None,
                };
                let from_overlay = match (overlay.peek(), &next_sled) {
                    (Some((ok, _)), Some(sk)) => ok <= sk,
                    (Some(_), None) => true,
                    (None, Some(_)) => false,
                    (None, None) => break,
                };
                let flow = if from_overlay {
                    let (k, v) = overlay.next().expect("peeked");
                    if next_sled.as_deref() == Some(k.as_slice()) {
                        sled.next();
                    }
                    match v {
                        Some(v) => each(&k, &v)?,
                        None => ControlFlow::Continue(()),
                    }
                } else {
                    let (k, v) = sled.next().expect("peeked").map_err(StoreError::backend)?;
                    each(&k, &v)?
                };
                if flow.is_break() {
                    return Ok(());
                }
            }
            match end {
                Bound::Included(last) => from = Bound::Excluded(last),
                _ => return Ok(()),
            }
        }
    }
}

impl Cold for SledCold {
    fn promise(&self, id: &str) -> Result<Option<Promise>, StoreError> {
        let k = key(PROMISE, id);
        self.get(&k)?.map(|v| parse(&k, &v, &self.path)).transpose()
    }

    fn task(&self, id: &str) -> Result<Option<Task>, StoreError> {
        let k = key(TASK, id);
        self.get(&k)?.map(|v| parse(&k, &v, &self.path)).transpose()
    }

    fn promises(
        &self,
        prefix: &str,
        after: Option<&str>,
        each: &mut dyn FnMut(Promise) -> ControlFlow<()>,
    ) -> Result<(), StoreError> {
        let prefix = key(PROMISE, prefix);
        let after = after.map(|a| key(PROMISE, a)).filter(|a| *a >= prefix);
        let start = match &after {
            Some(a) => Bound::Excluded(a.as_slice()),
            None => Bound::Included(prefix.as_slice()),
        };
        self.scan(start, &prefix, &mut |k, v| Ok(each(parse(k, v, &self.path)?)))
    }

    fn chosen(&self, root: &str) -> Result<Vec<String>, StoreError> {
        let prefix = chosen_prefix(root);
        let mut ids = Vec::new();
        self.scan(Bound::Included(&prefix), &prefix, &mut |k, _| {
            ids.push(String::from_utf8_lossy(&k[prefix.len()..]).into_owned());
            Ok(ControlFlow::Continue(()))
        })?;
        Ok(ids)
    }

    fn finished(
        &self,
        after: Option<&(Millis, String)>,
        before: Millis,
        limit: usize,
    ) -> Result<Vec<(Millis, String)>, StoreError> {
        let mut found = Vec::new();
        if limit == 0 {
            return Ok(found);
        }
        let after = after.map(|(at, id)| finished_key(*at, id));
        let start = match &after {
            Some(a) => Bound::Excluded(a.as_slice()),
            None => Bound::Included(&[FINISHED][..]),
        };
        self.scan(start, &[FINISHED], &mut |k, _| {
            let at = k.get(1..9).and_then(|b| b.try_into().ok()).map(u64::from_be_bytes);
            let Some(at) = at.filter(|at| *at < before) else { return Ok(ControlFlow::Break(())) };
            found.push((at, String::from_utf8_lossy(&k[9..]).into_owned()));
            Ok(if found.len() == limit { ControlFlow::Break(()) } else { ControlFlow::Continue(()) })
        })?;
        Ok(found)
    }

    fn invoked(&self, start: &Start, each: &mut dyn FnMut(Promise) -> ControlFlow<()>) -> Result<(), StoreError> {
        let from = invoked_key(start.at, start.after.as_deref().unwrap_or(""));
        let start =
            if start.after.is_some() { Bound::Excluded(from.as_slice()) } else { Bound::Included(from.as_slice()) };
        self.scan(start, &[INVOKED], &mut |k, _| {
            let id = String::from_utf8_lossy(k.get(9..).unwrap_or_default());
            Ok(match self.promise(&id)? {
                Some(p) => each(p),
                None => ControlFlow::Continue(()),
            })
        })
    }
}

engine_store!(SledStore);

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::Arc;
    use std::sync::atomic::Ordering;

    use super::wal::Faults;
    use super::{FINISHED_VALUE, FORMAT, FORMAT_KEY, LIVE_PROMISE, PROMISE, SledStore, TASK, finished_key, key};
    use crate::promise::{Param, Promise};
    use crate::store::{CreatePromise, Invocations, Purge, Search, SettlePromise, SystemClock};
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

    /// The live records and index entries the store's state holds in memory.
    fn live(store: &SledStore) -> usize {
        store.engine.footprint().0[..2].iter().sum()
    }

    /// Waits until the overlay holds at most `n` records: checkpoints moved the rest
    /// to sled.
    fn wait_for_overlay(store: &SledStore, n: usize) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while store.overlay_len() > n {
            assert!(std::time::Instant::now() < deadline, "the overlay kept {} records", store.overlay_len());
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }

    /// 100 finished invocations with three children each, and five pending ones.
    async fn finished_and_pending(store: &SledStore) {
        for i in 0..100 {
            for id in [format!("done{i}"), format!("done{i}.1"), format!("done{i}.2"), format!("done{i}.2.1")] {
                let param = if id.contains('.') { Param::External } else { Param::call("f", 1, i.to_string()) };
                let parent = id.rsplit_once('.').map(|(parent, _)| parent.to_owned());
                let mut req = CreatePromise::new(id, param);
                req.parent = parent;
                req.settled = Some((State::Resolved, i.to_string()));
                store.create(req).await.unwrap();
            }
        }
        for i in 0..5 {
            store.create(CreatePromise::new(format!("open{i}"), Param::call("f", 1, "1".into()))).await.unwrap();
        }
    }

    /// Every invocation a listing finds, page after page.
    async fn invocations(store: &SledStore) -> Vec<String> {
        let (mut ids, mut cursor) = (Vec::new(), None);
        loop {
            let page = store.invocations(Invocations { cursor, limit: 30, ..Invocations::default() }).await.unwrap();
            ids.extend(page.invocations.into_iter().map(|i| i.promise.id));
            match page.cursor {
                Some(c) => cursor = Some(c),
                None => return ids,
            }
        }
    }

    #[tokio::test]
    async fn finished_records_live_on_disk_and_opening_reads_only_the_live_ones() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_small(dir.path(), 4096);
        finished_and_pending(&store).await;
        assert_eq!(live(&store), 5, "memory holds the pending promises only");
        wait_for_checkpoints(dir.path());
        // What the current segment holds; everything before it is in sled.
        wait_for_overlay(&store, 60);
        let (promise, page) = (store.get("done42.2.1").await.unwrap(), store.search(Search::default()).await.unwrap());
        assert_eq!(promise.unwrap().value.as_deref(), Some("42"), "a finished record is read from sled");
        assert_eq!(page.promises.len(), 100, "a search pages over sled's records and the live ones");
        drop(store);

        let store = open_small(dir.path(), 4096);
        assert_eq!(live(&store), 5, "opening reads the live records, not the finished ones");
        wait_for_overlay(&store, 0);
        let (mut all, mut cursor) = (Vec::new(), None);
        loop {
            let page = store.search(Search { cursor, ..Search::default() }).await.unwrap();
            all.extend(page.promises.into_iter().map(|p| p.id));
            match page.cursor {
                Some(c) => cursor = Some(c),
                None => break,
            }
        }
        assert_eq!(all.len(), 405, "every promise is found, live or finished");
        assert!(all.windows(2).all(|w| w[0] < w[1]), "in id order");
        assert_eq!(invocations(&store).await.len(), 105, "every invocation is listed, from sled and from memory");
        let now = store.now().await.unwrap();
        assert_eq!(store.purge(Purge::Before { before: now + 1, limit: 1000 }).await.unwrap(), 100);
        assert!(store.get("done42.2.1").await.unwrap().is_none(), "purged from sled as well");
        drop(store);
        let store = open_small(dir.path(), 4096);
        let left = store.search(Search::default()).await.unwrap().promises;
        assert_eq!(
            left.iter().map(|p| p.id.as_str()).collect::<Vec<_>>(),
            ["open0", "open1", "open2", "open3", "open4"]
        );
        let mut listed = invocations(&store).await;
        listed.sort();
        assert_eq!(listed, ["open0", "open1", "open2", "open3", "open4"], "the purged left the listing too");
    }

    /// A family's settled promises, odd ones moved to sled by checkpoints, even ones
    /// still in the overlay (more of them than a scan copies at once).
    #[tokio::test]
    async fn a_scan_merges_sled_and_an_overlay_larger_than_its_window() {
        let dir = tempfile::tempdir().unwrap();
        let settled = |id: String| {
            let mut req = CreatePromise::new(id.clone(), Param::call("f", 1, "1".into()));
            req.parent = (id != "fam").then(|| "fam".to_owned());
            req.settled = Some((State::Resolved, "1".into()));
            req
        };
        let store = open_small(dir.path(), 4096);
        store.create(settled("fam".into())).await.unwrap();
        for k in (1..=1400).step_by(2) {
            store.create(settled(format!("fam.{k}"))).await.unwrap();
        }
        wait_for_checkpoints(dir.path());
        drop(store);
        let store = open_small(dir.path(), 64 << 20);
        for k in (2..=1400).step_by(2) {
            store.create(settled(format!("fam.{k}"))).await.unwrap();
        }
        assert!(store.overlay_len() > 2 * super::OVERLAY_WINDOW, "the overlay holds {}", store.overlay_len());
        let mut expected: Vec<String> = (1..=1400).map(|k| format!("fam.{k}")).collect();
        expected.push("fam".into());
        expected.sort();
        for limit in [1000, 100, 7] {
            let (mut ids, mut cursor) = (Vec::new(), None);
            loop {
                let search = Search { root: Some("fam".into()), limit, cursor, ..Search::default() };
                let page = store.search(search).await.unwrap();
                ids.extend(page.promises.into_iter().map(|p| p.id));
                match page.cursor {
                    Some(c) => cursor = Some(c),
                    None => break,
                }
            }
            assert_eq!(ids, expected, "pages of {limit}: each promise once, in id order");
        }
    }

    #[tokio::test]
    async fn a_store_of_format_3_gets_its_index_of_finished_invocations() {
        let dir = tempfile::tempdir().unwrap();
        {
            // Format 3 had every key of format 4 but the `i` index.
            let db = sled::open(dir.path()).unwrap();
            let records = db.open_tree("records").unwrap();
            let mut core = crate::store::state::Core::restore(
                Arc::new(crate::store::cold::MemoryCold::default()),
                Vec::new(),
                Vec::new(),
                1,
            );
            for (id, param) in [("old-done", Param::call("f", 1, "1".into())), ("old-wait", Param::External)] {
                let mut req = CreatePromise::new(id, param);
                req.settled = Some((State::Resolved, "7".into()));
                core.create(req, 1).unwrap();
            }
            core.create(CreatePromise::new("old-open", Param::call("f", 1, "2".into())), 2).unwrap();
            let changes = core.take_changes();
            for p in &changes.promises {
                let kind = if p.state.is_settled() { PROMISE } else { LIVE_PROMISE };
                records.insert(key(kind, &p.id), serde_json::to_vec(p).unwrap()).unwrap();
            }
            for (at, id) in &changes.finished {
                records.insert(finished_key(*at, id), FINISHED_VALUE).unwrap();
            }
            db.insert(FORMAT_KEY, b"3").unwrap();
            db.flush().unwrap();
        }
        let store = SledStore::open(dir.path()).unwrap();
        assert_eq!(invocations(&store).await, ["old-open", "old-done"], "the finished invocation is indexed");
        drop(store);
        let db = sled::open(dir.path()).unwrap();
        assert_eq!(db.get(FORMAT_KEY).unwrap().as_deref(), Some(FORMAT), "upgraded once, for good");
    }

    #[tokio::test]
    async fn a_store_of_format_4_learns_each_promises_family() {
        let dir = tempfile::tempdir().unwrap();
        {
            // Format 4 recorded no creator nor family: a chosen id named its creator in
            // a tag, and every promise with no `.` in its id (and every detached one)
            // was a root of its own, in the index of finished roots.
            let db = sled::open(dir.path()).unwrap();
            let records = db.open_tree("records").unwrap();
            let old = |id: &str, settled: bool, tags: &[(&str, &str)]| {
                let mut p = serde_json::json!({
                    "id": id, "state": if settled { "resolved" } else { "pending" },
                    "param": {"kind": "call", "func": "f", "version": 1, "args": "1", "digest": 1},
                    "value": if settled { Some("1") } else { None }, "timeout_at": u64::MAX,
                    "tags": {}, "ikey_create": null, "ikey_settle": null,
                    "created_at": 1, "settled_at": if settled { Some(2) } else { None },
                });
                for (k, v) in tags {
                    p["tags"][*k] = (*v).into();
                }
                let kind = if settled { PROMISE } else { LIVE_PROMISE };
                records.insert(key(kind, id), serde_json::to_vec(&p).unwrap()).unwrap();
                if settled && (!id.contains('.') || tags.iter().any(|(k, _)| *k == "durable:detached")) {
                    records.insert(finished_key(2, id), FINISHED_VALUE).unwrap();
                }
            };
            old("a", true, &[]);
            old("a.1", true, &[]);
            old("a.2", true, &[("durable:detached", "true")]);
            old("charge-a", true, &[("durable:parent", "a.1")]);
            old("b", false, &[]);
            old("approval-b", true, &[("durable:parent", "b")]);
            db.insert(FORMAT_KEY, b"4").unwrap();
            db.flush().unwrap();
        }
        let store = SledStore::open(dir.path()).unwrap();
        let family = |p: Option<Promise>| p.map(|p| (p.parent, p.root)).unwrap();
        assert_eq!(family(store.get("charge-a").await.unwrap()), (Some("a.1".into()), "a".into()));
        assert_eq!(family(store.get("a.2").await.unwrap()), (Some("a".into()), "a".into()));
        assert_eq!(family(store.get("approval-b").await.unwrap()), (Some("b".into()), "b".into()));
        assert_eq!(family(store.get("b").await.unwrap()), (None, "b".into()), "a live record learns it too");
        let search = Search { root: Some("a".into()), ..Search::default() };
        let ids: Vec<String> = store.search(search).await.unwrap().promises.into_iter().map(|p| p.id).collect();
        assert_eq!(ids, ["a", "a.1", "a.2", "charge-a"]);
        let purged = store.purge(Purge::Before { before: u64::MAX, limit: 100 }).await.unwrap();
        assert_eq!(purged, 1, "the finished family a, whole; b runs");
        assert!(store.get("charge-a").await.unwrap().is_none());
        assert!(store.get("approval-b").await.unwrap().is_some(), "an approval b waits on stays");
        drop(store);
        let db = sled::open(dir.path()).unwrap();
        assert_eq!(db.get(FORMAT_KEY).unwrap().as_deref(), Some(FORMAT), "upgraded once, for good");
    }

    #[tokio::test]
    async fn a_checkpoint_leaves_each_key_as_the_last_write_of_its_segment_left_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_small(dir.path(), 4096);
        // Each promise is written live, then deleted there and written finished,
        // within one segment or across two.
        for i in 0..100 {
            store.create(CreatePromise::new(format!("p{i}"), Param::External)).await.unwrap();
            store.settle(resolve(&format!("p{i}"))).await.unwrap();
        }
        wait_for_checkpoints(dir.path());
        drop(store);
        let store = open_small(dir.path(), 4096);
        assert_eq!(live(&store), 0, "no live record of a settled promise comes back");
        for i in 0..100 {
            let p = store.get(&format!("p{i}")).await.unwrap().unwrap();
            assert_eq!((p.state, p.value.as_deref()), (State::Resolved, Some("1")), "p{i}");
        }
    }

    #[tokio::test]
    async fn a_store_of_format_2_is_rewritten_and_loses_nothing() {
        let dir = tempfile::tempdir().unwrap();
        {
            // Format 2 kept every record under `p` and `t`.
            let db = sled::open(dir.path()).unwrap();
            let records = db.open_tree("records").unwrap();
            let clock = SystemClock;
            let mut core = crate::store::state::Core::restore(
                Arc::new(crate::store::cold::MemoryCold::default()),
                Vec::new(),
                Vec::new(),
                crate::store::Clock::now(&clock),
            );
            let mut req = CreatePromise::new("old-done", Param::External);
            req.settled = Some((State::Resolved, "7".into()));
            core.create(req, 1).unwrap();
            let mut req = CreatePromise::new("old-open", Param::call("f", 1, "1".into()));
            req.task = Some(crate::store::NewTask::new(crate::Target::any("g")));
            core.create(req, 1).unwrap();
            let changes = core.take_changes();
            for p in &changes.promises {
                records.insert(key(PROMISE, &p.id), serde_json::to_vec(p).unwrap()).unwrap();
            }
            for t in &changes.tasks {
                records.insert(key(TASK, &t.id), serde_json::to_vec(t).unwrap()).unwrap();
            }
            db.insert(FORMAT_KEY, b"2").unwrap();
            db.flush().unwrap();
        }
        let store = SledStore::open(dir.path()).unwrap();
        assert_eq!(live(&store), 2, "the pending promise and its task are live");
        assert_eq!(store.get("old-done").await.unwrap().unwrap().value.as_deref(), Some("7"));
        let claim = crate::store::Claim {
            group: "g".into(),
            pid: "w".into(),
            process: "w:1".into(),
            ttl: 10_000,
            max: 10,
            functions: Vec::new(),
        };
        assert_eq!(store.claim(claim).await.unwrap().len(), 1, "the pending task is delivered");
        let now = store.now().await.unwrap();
        let purged = store.purge(Purge::Before { before: now + 1, limit: 10 }).await.unwrap();
        assert_eq!(purged, 1, "the finished root is in the index retention reads");
        drop(store);
        let reopened = SledStore::open(dir.path()).unwrap();
        assert!(reopened.get("old-open").await.unwrap().is_some());
        assert!(reopened.get("old-done").await.unwrap().is_none());
        assert_eq!(invocations(&reopened).await, ["old-open"]);
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
