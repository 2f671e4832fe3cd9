//! Finished records: settled promises, fulfilled tasks, the index of finished
//! families by when they finished, and the index of promises created with a chosen
//! id. The state machine keeps only live records in memory and reads these from the
//! backend when it needs them: a claim's preload, a create or settle
//! that finds its promise settled, a read, a search, a purge.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::ops::{Bound, ControlFlow};
use std::sync::Mutex;

use super::state::{Changes, Start};
use crate::StoreError;
use crate::promise::{Millis, Promise, Task, TaskState};

/// Where a backend keeps finished records.
pub(crate) trait Cold: Debug + Send + Sync {
    /// A settled promise.
    fn promise(&self, id: &str) -> Result<Option<Promise>, StoreError>;

    /// A fulfilled task.
    fn task(&self, id: &str) -> Result<Option<Task>, StoreError>;

    /// The settled promises whose ids start with `prefix` (and come after `after`),
    /// in id order, each passed to `each` until it breaks.
    fn promises(
        &self,
        prefix: &str,
        after: Option<&str>,
        each: &mut dyn FnMut(Promise) -> ControlFlow<()>,
    ) -> Result<(), StoreError>;

    /// The ids of the promises of family `root` created with a chosen id, settled or
    /// not (the index is written when they are created).
    fn chosen(&self, root: &str) -> Result<Vec<String>, StoreError>;

    /// Entries of the index of finished families, (when, root), from after `after`
    /// on, those before `before`, oldest first, at most `limit`.
    fn finished(
        &self,
        after: Option<&(Millis, String)>,
        before: Millis,
        limit: usize,
    ) -> Result<Vec<(Millis, String)>, StoreError>;

    /// The finished invocations from `start` on, newest first (then by id), each
    /// passed to `each` until it breaks.
    fn invoked(&self, start: &Start, each: &mut dyn FnMut(Promise) -> ControlFlow<()>) -> Result<(), StoreError>;
}

/// Finished records in memory: the memory store's, and an empty one for a state that
/// holds every record it reads (a PostgreSQL step).
#[derive(Debug, Default)]
pub(crate) struct MemoryCold {
    maps: Mutex<Maps>,
}

#[derive(Debug, Default)]
struct Maps {
    promises: BTreeMap<String, Promise>,
    tasks: BTreeMap<String, Task>,
    finished: BTreeSet<(Millis, String)>,
    chosen: BTreeSet<(String, String)>,
    invoked: BTreeSet<(Reverse<Millis>, String)>,
}

impl MemoryCold {
    fn maps(&self) -> std::sync::MutexGuard<'_, Maps> {
        self.maps.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes in the finished records of a step, and drops what it purged.
    pub(crate) fn apply(&self, changes: &Changes) {
        let mut maps = self.maps();
        for p in changes.promises.iter().filter(|p| p.state.is_settled()) {
            maps.promises.insert(p.id.clone(), p.clone());
        }
        for t in changes.tasks.iter().filter(|t| t.state == TaskState::Fulfilled) {
            maps.tasks.insert(t.id.clone(), t.clone());
        }
        maps.finished.extend(changes.finished.iter().cloned());
        maps.chosen.extend(changes.chosen.iter().cloned());
        maps.invoked.extend(changes.invoked.iter().map(|(at, id)| (Reverse(*at), id.clone())));
        for id in &changes.purged.promises {
            maps.promises.remove(id);
        }
        for id in &changes.purged.tasks {
            maps.tasks.remove(id);
        }
        for entry in &changes.purged.finished {
            maps.finished.remove(entry);
        }
        for entry in &changes.purged.chosen {
            maps.chosen.remove(entry);
        }
        for (at, id) in &changes.purged.invoked {
            maps.invoked.remove(&(Reverse(*at), id.clone()));
        }
    }
}

impl Cold for MemoryCold {
    fn promise(&self, id: &str) -> Result<Option<Promise>, StoreError> {
        Ok(self.maps().promises.get(id).cloned())
    }

    fn task(&self, id: &str) -> Result<Option<Task>, StoreError> {
        Ok(self.maps().tasks.get(id).cloned())
    }

    fn promises(
        &self,
        prefix: &str,
        after: Option<&str>,
        each: &mut dyn FnMut(Promise) -> ControlFlow<()>,
    ) -> Result<(), StoreError> {
        let maps = self.maps();
        let start = match after {
            Some(after) if after >= prefix => Bound::Excluded(after),
            _ => Bound::Included(prefix),
        };
        for (id, p) in maps.promises.range::<str, _>((start, Bound::Unbounded)) {
            if !id.starts_with(prefix) || each(p.clone()).is_break() {
                break;
            }
        }
        Ok(())
    }

    fn chosen(&self, root: &str) -> Result<Vec<String>, StoreError> {
        let maps = self.maps();
        let family = maps.chosen.range((root.to_owned(), String::new())..).take_while(|(r, _)| r == root);
        Ok(family.map(|(_, id)| id.clone()).collect())
    }

    fn finished(
        &self,
        after: Option<&(Millis, String)>,
        before: Millis,
        limit: usize,
    ) -> Result<Vec<(Millis, String)>, StoreError> {
        let maps = self.maps();
        let start = after.map_or(Bound::Unbounded, Bound::Excluded);
        let entries = maps.finished.range((start, Bound::Unbounded));
        Ok(entries.take_while(|(at, _)| *at < before).take(limit).cloned().collect())
    }

    fn invoked(&self, start: &Start, each: &mut dyn FnMut(Promise) -> ControlFlow<()>) -> Result<(), StoreError> {
        let maps = self.maps();
        for (_, id) in maps.invoked.range((start.live(), Bound::Unbounded)) {
            if let Some(p) = maps.promises.get(id)
                && each(p.clone()).is_break()
            {
                break;
            }
        }
        Ok(())
    }
}
