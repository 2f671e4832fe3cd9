//! The reference store: all in memory, on a clock tests control.

use std::sync::Arc;

use super::engine::{Engine, Log, engine_store};
use super::state::{Core, Dirty};
use super::{Clock, VirtualClock};
use crate::StoreError;

/// A store in memory: the reference backend, and the one tests use.
///
/// Its clock is a [`VirtualClock`] by default, so under tokio's paused time a test
/// controls leases, timeouts and timers. Nothing survives the value.
///
/// ```
/// let store = durable::MemoryStore::new();
/// # let _ = store;
/// ```
#[derive(Debug)]
pub struct MemoryStore {
    engine: Engine<Volatile>,
}

impl MemoryStore {
    /// An empty store on a [`VirtualClock`].
    pub fn new() -> MemoryStore {
        MemoryStore::with_clock(VirtualClock::new())
    }

    /// An empty store on the given clock.
    pub fn with_clock(clock: impl Clock) -> MemoryStore {
        MemoryStore { engine: Engine::new(Core::default(), Volatile, Arc::new(clock)) }
    }
}

impl Default for MemoryStore {
    fn default() -> MemoryStore {
        MemoryStore::new()
    }
}

#[derive(Debug)]
struct Volatile;

impl Log for Volatile {
    fn stage(&self, _: &Core, _: &Dirty) -> Result<u64, StoreError> {
        Ok(0)
    }

    fn staged(&self) -> u64 {
        0
    }

    async fn commit(&self, _: u64) -> Result<(), StoreError> {
        Ok(())
    }
}

engine_store!(MemoryStore);
