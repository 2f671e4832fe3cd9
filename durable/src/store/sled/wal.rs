//! The write-ahead log in front of sled.
//!
//! Every step appends one entry, under the state lock, so entries are in the order
//! the state changed. A commit writes everything staged so far and makes it durable
//! with one `fdatasync`, shared by every step waiting (group commit). sled itself is
//! only written by checkpoints: when a segment is full the log moves to a new one, and
//! a background thread applies the full segment to sled, flushes sled, records the
//! segment as applied and deletes it. Opening a store reads sled, then the segments not
//! yet applied over it, and hands those segments to the same thread.
//!
//! An entry is `[length: u32][crc32: u32][records]`, a record
//! `[key length: u32][key][value length: u32][value]`, all little-endian; an empty
//! value deletes the key. A crash can leave the last entry torn; its checksum shows
//! it, and it was never acknowledged.
//!
//! Until a checkpoint has applied an entry, sled does not have its records: the log
//! keeps those the store reads from sled (finished records) in an overlay, read over
//! sled, and drops them once their segment is applied.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::StoreError;

/// Where sled records which segments it holds, in its default tree.
const APPLIED_KEY: &[u8] = b"wal-applied";
const PREFIX: &str = "wal-";
const HEADER: usize = 8;

/// Records by key, `None` for a deleted one: what a log holds for sled.
pub(super) type Records = BTreeMap<Vec<u8>, Option<Vec<u8>>>;

/// The records of entries not yet applied to sled that readers look for there, each
/// with the number of the entry that wrote it last.
#[derive(Debug, Default)]
pub(super) struct Overlay {
    records: BTreeMap<Vec<u8>, (u64, Option<Vec<u8>>)>,
}

impl Overlay {
    /// What the log holds for `key`: `Some(None)` if it deleted it, `None` if it holds
    /// nothing (read sled).
    pub(super) fn get(&self, key: &[u8]) -> Option<Option<&[u8]>> {
        self.records.get(key).map(|(_, v)| v.as_deref())
    }

    /// The first `limit` records from `start` on whose keys start with `prefix`, in
    /// key order.
    pub(super) fn range(&self, start: Bound<&[u8]>, prefix: &[u8], limit: usize) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
        self.records
            .range::<[u8], _>((start, Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(prefix))
            .take(limit)
            .map(|(k, (_, v))| (k.clone(), v.clone()))
            .collect()
    }

    pub(super) fn insert(&mut self, entry: u64, key: Vec<u8>, value: Option<Vec<u8>>) {
        self.records.insert(key, (entry, value));
    }

    /// Drops the records last written by entries up to `entry`: sled has them now.
    fn applied(&mut self, entry: u64) {
        self.records.retain(|_, (n, _)| *n > entry);
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.records.len()
    }
}

/// The log of one open store.
#[derive(Debug)]
pub(super) struct Wal {
    files: Arc<Files>,
    /// The last entry known durable. Its lock is held by the one commit in progress,
    /// so the steps that wait meanwhile share the next.
    durable: tokio::sync::Mutex<u64>,
    /// The last entry known durable, readable without waiting for a commit in
    /// progress.
    durable_hint: AtomicU64,
    /// Syncs done, to show that steps share them.
    pub(super) syncs: AtomicU64,
    pub(super) checkpoints: Option<JoinHandle<()>>,
    /// Finished records not yet in sled.
    pub(super) overlay: Arc<Mutex<Overlay>>,
}

/// What the blocking writes share with the log.
#[derive(Debug)]
struct Files {
    /// Entries staged and not yet written, and the number of the last one staged.
    pending: Mutex<(Vec<u8>, u64)>,
    /// The segment being written; its lock puts the writes in staging order.
    segment: Mutex<Segment>,
    /// Why the log stopped, once a write, a sync or a checkpoint failed: what was
    /// taken for a failed write is in no file, so no later entry may be acknowledged
    /// either, and a segment that cannot be applied to sled may never be deleted.
    failed: Mutex<Option<String>>,
    /// Sealed segments go to the checkpoint thread, each with the number of its last
    /// entry.
    sealed: Mutex<Option<mpsc::Sender<(PathBuf, u64)>>>,
    /// Set when the store closes: the checkpoint stops at its next entry, leaving the
    /// rest of its segment to the next open (applying a segment again is harmless).
    closing: AtomicBool,
}

/// Writes the records of one entry.
#[derive(Debug)]
pub(super) struct Entry<'a> {
    buf: &'a mut Vec<u8>,
}

impl Entry<'_> {
    /// Adds the record `key` with `value` (never empty), or its deletion.
    pub(super) fn record(&mut self, key: &[u8], value: Option<&[u8]>) -> Result<(), StoreError> {
        let value = value.unwrap_or_default();
        for field in [key, value] {
            self.buf.extend_from_slice(&len32(field.len())?.to_le_bytes());
            self.buf.extend_from_slice(field);
        }
        Ok(())
    }
}

#[derive(Debug)]
struct Segment {
    dir: PathBuf,
    number: u64,
    file: File,
    len: u64,
    /// A segment this long moves the log to the next one.
    limit: u64,
    /// The number of the last entry written to it.
    last: u64,
}

impl Wal {
    /// Opens the log in `dir`, with segments moving on at `limit` bytes. Returns it
    /// and the records of the segments not yet applied to sled, to be read over sled's
    /// (the latest of each key). Those segments are applied in the background; until
    /// then the overlay holds their records whose keys `read` says the store reads
    /// from sled.
    pub(super) fn open(
        dir: &Path,
        db: &sled::Db,
        records: &sled::Tree,
        limit: u64,
        faults: Faults,
        read: impl Fn(&[u8]) -> bool,
    ) -> Result<(Wal, Records), StoreError> {
        let Replay { last, unapplied, records: replayed, entries } = replay(dir, db)?;
        let mut overlay = Overlay::default();
        for (k, v) in replayed.iter().filter(|(k, _)| read(k)) {
            overlay.insert(entries, k.clone(), v.clone());
        }
        let segment = Segment::create(dir, last + 1, limit, entries)?;

        let (tx, rx) = mpsc::channel::<(PathBuf, u64)>();
        let files = Arc::new(Files {
            pending: Mutex::new((Vec::new(), entries)),
            segment: Mutex::new(segment),
            failed: Mutex::new(None),
            sealed: Mutex::new(Some(tx.clone())),
            closing: AtomicBool::new(false),
        });
        let overlay = Arc::new(Mutex::new(overlay));
        let (db, records, shared, applied) = (db.clone(), records.clone(), files.clone(), overlay.clone());
        let thread = std::thread::Builder::new()
            .name("durable-checkpoint".into())
            .spawn(move || checkpoints(&rx, &db, &records, &shared, &applied, faults))
            .map_err(StoreError::backend)?;
        for sealed in unapplied {
            // The thread runs until the log is dropped.
            let _ = tx.send(sealed);
        }
        let wal = Wal {
            files,
            durable: tokio::sync::Mutex::new(entries),
            durable_hint: AtomicU64::new(entries),
            syncs: AtomicU64::new(0),
            checkpoints: Some(thread),
            overlay,
        };
        Ok((wal, replayed))
    }

    /// Appends one entry, whose records `write` adds; returns its number for
    /// [`Wal::commit`] (and the overlay).
    pub(super) fn stage(
        &self,
        write: impl FnOnce(&mut Entry<'_>) -> Result<(), StoreError>,
    ) -> Result<u64, StoreError> {
        let mut pending = self.files.pending.lock().unwrap_or_else(|e| e.into_inner());
        let (buf, last) = &mut *pending;
        let start = buf.len();
        buf.extend_from_slice(&[0; HEADER]);
        if let Err(e) = write(&mut Entry { buf }) {
            buf.truncate(start);
            return Err(e);
        }
        let body = &buf[start + HEADER..];
        let (n, crc) = (len32(body.len())?, crc32fast::hash(body));
        buf[start..start + 4].copy_from_slice(&n.to_le_bytes());
        buf[start + 4..start + HEADER].copy_from_slice(&crc.to_le_bytes());
        *last += 1;
        Ok(*last)
    }

    /// The number of the last entry staged: a read that saw the state up to it waits
    /// for `commit` of it.
    pub(super) fn staged(&self) -> u64 {
        self.files.pending.lock().unwrap_or_else(|e| e.into_inner()).1
    }

    /// Writes and syncs what is staged, on this thread: for opening, before the
    /// runtime uses the store.
    pub(super) fn sync_blocking(&self) -> Result<(), StoreError> {
        self.files.write_pending().map(drop)
    }

    /// Completes once entry `token` and all before it are durable.
    pub(super) async fn commit(&self, token: u64) -> Result<(), StoreError> {
        if self.durable_hint.load(Ordering::SeqCst) >= token {
            return self.files.check();
        }
        let mut durable = self.durable.lock().await;
        if *durable >= token {
            // A sync that started after this entry was staged covered it.
            return Ok(());
        }
        self.files.check()?;
        self.syncs.fetch_add(1, Ordering::Relaxed);
        // The write and sync run on tokio's blocking pool: they keep the runtime's
        // threads free, and paused test time does not advance while they run. If this
        // future is dropped meanwhile, the next commit's write queues behind this one
        // on the segment lock, so the file stays in order.
        let files = self.files.clone();
        let written =
            tokio::task::spawn_blocking(move || files.write_pending()).await.map_err(StoreError::backend)??;
        *durable = (*durable).max(written);
        self.durable_hint.store(*durable, Ordering::SeqCst);
        if *durable < token {
            return Err(StoreError::backend("the write-ahead log lost an entry it had staged"));
        }
        Ok(())
    }
}

impl Files {
    fn check(&self) -> Result<(), StoreError> {
        match &*self.failed.lock().unwrap_or_else(|e| e.into_inner()) {
            Some(reason) => Err(StoreError::backend(format!(
                "the store stopped: {reason}; reopen it to go on from what is durable"
            ))),
            None => Ok(()),
        }
    }

    fn fail(&self, reason: String) {
        self.failed.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert(reason);
    }

    /// Writes and syncs everything staged; returns the number of the last entry
    /// written.
    fn write_pending(&self) -> Result<u64, StoreError> {
        let mut segment = self.segment.lock().unwrap_or_else(|e| e.into_inner());
        self.check()?;
        let (buf, last) = {
            let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            (std::mem::take(&mut pending.0), pending.1)
        };
        if buf.is_empty() {
            return Ok(last);
        }
        let result = segment.append(&buf, last).and_then(|()| {
            if segment.len >= segment.limit {
                let sealed = segment.next()?;
                if let Some(tx) = &*self.sealed.lock().unwrap_or_else(|e| e.into_inner()) {
                    // The thread only stops when the log is dropped.
                    let _ = tx.send(sealed);
                }
            }
            Ok(())
        });
        if let Err(e) = &result {
            self.fail(format!("a write to the write-ahead log failed: {e}"));
        }
        result.map(|()| last)
    }
}

impl Drop for Wal {
    fn drop(&mut self) {
        // The checkpoint thread holds sled open, so the store is closed only once it
        // is done; told to stop, it ends within one entry, so this join is brief even
        // on a runtime's thread.
        self.files.closing.store(true, Ordering::SeqCst);
        self.files.sealed.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(thread) = self.checkpoints.take() {
            let _ = thread.join();
        }
    }
}

impl Segment {
    /// A new segment, after the entry numbered `last`.
    fn create(dir: &Path, number: u64, limit: u64, last: u64) -> Result<Segment, StoreError> {
        let path = dir.join(format!("{PREFIX}{number:020}"));
        let file = OpenOptions::new().append(true).create_new(true).open(&path).map_err(|e| io(&path, e))?;
        // The new name must survive a crash as well as what is written under it.
        File::open(dir).and_then(|d| d.sync_all()).map_err(|e| io(dir, e))?;
        Ok(Segment { dir: dir.to_path_buf(), number, file, len: 0, limit, last })
    }

    fn path(&self) -> PathBuf {
        self.dir.join(format!("{PREFIX}{:020}", self.number))
    }

    /// Appends entries up to the one numbered `last`, and syncs.
    fn append(&mut self, buf: &[u8], last: u64) -> Result<(), StoreError> {
        self.file.write_all(buf).and_then(|()| self.file.sync_data()).map_err(|e| io(&self.path(), e))?;
        self.len += buf.len() as u64;
        self.last = last;
        Ok(())
    }

    /// Moves to the next segment; returns the path of the sealed one and the number
    /// of its last entry.
    fn next(&mut self) -> Result<(PathBuf, u64), StoreError> {
        let sealed = (self.path(), self.last);
        *self = Segment::create(&self.dir, self.number + 1, self.limit, self.last)?;
        Ok(sealed)
    }
}

/// What the segments not yet applied to sled hold.
pub(super) struct Replay {
    /// The number of the last segment.
    pub(super) last: u64,
    /// The segments, each with the number of its last entry (entries are numbered
    /// from 1 across them).
    unapplied: Vec<(PathBuf, u64)>,
    /// Their records, the latest of each key.
    pub(super) records: Records,
    /// How many entries they hold.
    entries: u64,
}

/// Reads the segments not yet applied to sled, deleting those that are and cutting off
/// a torn last entry.
pub(super) fn replay(dir: &Path, db: &sled::Db) -> Result<Replay, StoreError> {
    let applied = match db.get(APPLIED_KEY).map_err(StoreError::backend)? {
        Some(v) => u64::from_be_bytes(v.as_ref().try_into().map_err(|_| corrupt(dir, "the applied segment number"))?),
        None => 0,
    };
    let mut segments = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| io(dir, e))? {
        let entry = entry.map_err(|e| io(dir, e))?;
        let name = entry.file_name();
        if let Some(n) = name.to_str().and_then(|s| s.strip_prefix(PREFIX)).and_then(|s| s.parse::<u64>().ok()) {
            segments.push((n, entry.path()));
        }
    }
    segments.sort();
    let last = segments.last().map_or(applied, |(n, _)| (*n).max(applied));
    let count = segments.len();
    let (mut unapplied, mut records, mut entries) = (Vec::new(), BTreeMap::new(), 0);
    for (i, (n, path)) in segments.into_iter().enumerate() {
        // A segment at or below the applied mark is already in sled; applying it
        // again would put older records over newer ones.
        if n <= applied {
            std::fs::remove_file(&path).map_err(|e| io(&path, e))?;
            continue;
        }
        let bytes = std::fs::read(&path).map_err(|e| io(&path, e))?;
        let whole = read(&bytes, &path, |entry| {
            entries += 1;
            records.extend(entry.into_iter().map(|(k, v)| (k.to_vec(), v.map(<[u8]>::to_vec))));
            Ok(())
        })?;
        if whole < bytes.len() {
            if i + 1 < count {
                return Err(corrupt(&path, "a damaged entry before the end of a sealed segment"));
            }
            // A write torn by a crash, never acknowledged: cut it off, so that this
            // segment reads whole once later ones follow it.
            let file = OpenOptions::new().write(true).open(&path).map_err(|e| io(&path, e))?;
            file.set_len(whole as u64).and_then(|()| file.sync_all()).map_err(|e| io(&path, e))?;
        }
        unapplied.push((path, entries));
    }
    Ok(Replay { last, unapplied, records, entries })
}

/// Records that sled holds every segment up to `last`: opening deletes them.
pub(super) fn mark_applied(db: &sled::Db, last: u64) -> Result<(), StoreError> {
    db.insert(APPLIED_KEY, &last.to_be_bytes()).map_err(StoreError::backend)?;
    Ok(())
}

/// How often a failed checkpoint is tried again before the store stops.
const CHECKPOINT_TRIES: u32 = 6;

/// Failures to inject into checkpoints, for tests.
#[derive(Clone, Debug, Default)]
pub(super) struct Faults {
    /// How many checkpoint attempts fail (after applying half of their segment).
    pub(super) checkpoints: Arc<AtomicU64>,
    /// The wait before the first retry; it doubles with each.
    pub(super) backoff: Duration,
}

impl Faults {
    pub(super) fn none() -> Faults {
        Faults { checkpoints: Arc::default(), backoff: Duration::from_millis(100) }
    }
}

/// The checkpoint thread: applies sealed segments strictly in the order they were
/// written. A failure is tried again with backoff, never skipped (a later segment
/// applied and marked would make opening delete the earlier one unapplied); one that
/// persists stops the store with its error, leaving the segment for the next open.
fn checkpoints(
    rx: &mpsc::Receiver<(PathBuf, u64)>,
    db: &sled::Db,
    records: &sled::Tree,
    files: &Files,
    overlay: &Mutex<Overlay>,
    faults: Faults,
) {
    for (path, last) in rx {
        let mut delay = faults.backoff;
        let mut tries = 0;
        while let Err(e) = checkpoint(&path, db, records, &files.closing, &faults) {
            if files.closing.load(Ordering::SeqCst) {
                return;
            }
            tries += 1;
            if tries == CHECKPOINT_TRIES {
                files.fail(format!("applying {} to sled failed {tries} times: {e}", path.display()));
                return;
            }
            std::thread::sleep(delay);
            delay *= 2;
        }
        overlay.lock().unwrap_or_else(|e| e.into_inner()).applied(last);
    }
}

/// Applies a sealed segment to sled, makes it durable there, and deletes it.
fn checkpoint(
    path: &Path,
    db: &sled::Db,
    records: &sled::Tree,
    closing: &AtomicBool,
    faults: &Faults,
) -> Result<(), StoreError> {
    let fail = faults.checkpoints.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok();
    apply(path, records, closing, fail)?;
    let number = path
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix(PREFIX))
        .and_then(|n| n.parse::<u64>().ok())
        .ok_or_else(|| corrupt(path, "a segment name"))?;
    mark_applied(db, number)?;
    db.flush().map_err(StoreError::backend)?;
    std::fs::remove_file(path).map_err(|e| io(path, e))
}

/// Applies a segment to sled: for each key the last value the segment gives it, in key
/// order, unless the store closes meanwhile; with `fail`, only the first half of them,
/// then fails (an injected fault).
///
/// Only each key's last value matters, as the segment is applied again in full, over
/// whatever part of it sled holds, until it is marked applied. Most records of a
/// segment are overwritten within it (a local step's live record is written and
/// deleted before its finished one), so this writes sled about a third as often as
/// applying entry by entry. Record by record, not as one batch: a batch locks sled
/// against every reader while it applies.
fn apply(path: &Path, records: &sled::Tree, closing: &AtomicBool, fail: bool) -> Result<(), StoreError> {
    let bytes = std::fs::read(path).map_err(|e| io(path, e))?;
    let mut last = BTreeMap::new();
    read(&bytes, path, |entry| {
        last.extend(entry);
        Ok(())
    })?;
    let stop = if fail { last.len() / 2 } else { last.len() };
    for (key, value) in last.into_iter().take(stop) {
        if closing.load(Ordering::SeqCst) {
            return Err(StoreError::backend("the store closed"));
        }
        match value {
            Some(value) => records.insert(key, value).map(drop),
            None => records.remove(key).map(drop),
        }
        .map_err(StoreError::backend)?;
    }
    if fail {
        return Err(StoreError::backend(format!("an injected failure after applying half of {}", path.display())));
    }
    Ok(())
}

/// Calls `each` with the records of every whole entry of a segment, in order (`None`
/// for a deletion); returns the length of the whole entries (shorter than the segment
/// if it ends in a damaged one).
fn read<'a>(
    bytes: &'a [u8],
    path: &Path,
    mut each: impl FnMut(Vec<(&'a [u8], Option<&'a [u8]>)>) -> Result<(), StoreError>,
) -> Result<usize, StoreError> {
    let mut rest = bytes;
    while let Some((mut body, after)) = entry(rest) {
        let mut records = Vec::new();
        while !body.is_empty() {
            let (key, after) = field(body).ok_or_else(|| corrupt(path, "a record key"))?;
            let (value, after) = field(after).ok_or_else(|| corrupt(path, "a record value"))?;
            records.push((key, (!value.is_empty()).then_some(value)));
            body = after;
        }
        each(records)?;
        rest = after;
    }
    Ok(bytes.len() - rest.len())
}

/// Splits one checked entry off the front: its records and what follows.
fn entry(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let header = bytes.get(..HEADER)?;
    let len = u32::from_le_bytes(header[..4].try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(header[4..].try_into().ok()?);
    let body = bytes.get(HEADER..HEADER + len)?;
    (crc32fast::hash(body) == crc).then(|| (body, &bytes[HEADER + len..]))
}

/// Splits one length-prefixed field off the front.
fn field(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let len = u32::from_le_bytes(bytes.get(..4)?.try_into().ok()?) as usize;
    Some((bytes.get(4..4 + len)?, &bytes[4 + len..]))
}

fn len32(n: usize) -> Result<u32, StoreError> {
    u32::try_from(n).map_err(|_| StoreError::backend(format!("a write-ahead log entry of {n} bytes is too large")))
}

fn io(path: &Path, e: std::io::Error) -> StoreError {
    StoreError::backend(format!("the write-ahead log at {}: {e}", path.display()))
}

fn corrupt(path: &Path, what: &str) -> StoreError {
    StoreError::backend(format!("the write-ahead log at {} is damaged: cannot read {what}", path.display()))
}
