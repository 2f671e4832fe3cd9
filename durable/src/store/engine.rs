//! The in-process engine: the state machine behind a lock, a log that makes its
//! changes durable, waiters and the ready signal. MemoryStore and SledStore are this
//! engine with two logs.

use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::watch;

use super::state::{Core, Dirty};
use super::waiters::Waiters;
use super::{Acquired, Claim, Clock, CreatePromise, Created, Page, Release, Search, SettlePromise, Tick};
use crate::StoreError;
use crate::promise::{Fence, Millis, Promise, Task};

/// Where an engine's changes go.
pub(crate) trait Log: Send + Sync + 'static {
    /// Writes the changed records atomically, under the state lock so that logs apply
    /// in the order the state changed. Returns a token for [`Log::commit`].
    fn stage(&self, core: &Core, dirty: &Dirty) -> Result<u64, StoreError>;

    /// Completes once everything staged up to `token` is durable.
    fn commit(&self, token: u64) -> impl Future<Output = Result<(), StoreError>> + Send;
}

#[derive(Debug)]
pub(crate) struct Engine<L> {
    core: Mutex<Core>,
    pub(crate) log: L,
    clock: Arc<dyn Clock>,
    waiters: Waiters,
    ready: watch::Sender<u64>,
}

impl<L: Log> Engine<L> {
    pub(crate) fn new(core: Core, log: L, clock: Arc<dyn Clock>) -> Engine<L> {
        Engine { core: Mutex::new(core), log, clock, waiters: Waiters::default(), ready: watch::Sender::new(0) }
    }

    fn lock(&self) -> MutexGuard<'_, Core> {
        // The state is only changed by complete, non-panicking steps: a poisoned lock
        // holds a consistent state.
        self.core.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn now(&self) -> Millis {
        self.clock.now()
    }

    /// Runs one atomic step, makes its changes durable, then wakes whoever waits.
    pub(crate) async fn write<R>(
        &self,
        step: impl FnOnce(&mut Core, Millis) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        self.write_when(true, step).await
    }

    /// A step acknowledged once durable, or at once if `durable` is false (a later
    /// durable step covers it: the log is written in order).
    pub(crate) async fn write_when<R>(
        &self,
        durable: bool,
        step: impl FnOnce(&mut Core, Millis) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        let now = self.clock.now();
        let (result, dirty, token) = {
            let mut core = self.lock();
            let result = step(&mut core, now);
            let dirty = std::mem::take(&mut core.dirty);
            let token = self.log.stage(&core, &dirty)?;
            (result, dirty, token)
        };
        // Wake whoever waits once the step is durable, or at once if this future is
        // dropped before that: the change is visible to readers either way, and a
        // waiter left asleep would never learn of it.
        let _wake = Wake { engine: self, woken: dirty.woken, ready: dirty.ready };
        if durable {
            self.log.commit(token).await?;
        }
        result
    }

    pub(crate) fn read<R>(&self, f: impl FnOnce(&Core, Millis) -> R) -> R {
        f(&self.lock(), self.clock.now())
    }

    pub(crate) async fn create(&self, req: CreatePromise) -> Result<Created, StoreError> {
        self.write_when(req.durable, |core, now| core.create(req, now)).await
    }

    pub(crate) async fn settle(&self, req: SettlePromise) -> Result<Promise, StoreError> {
        self.write(|core, now| core.settle(req, now)).await
    }

    pub(crate) fn get(&self, id: &str) -> Option<Promise> {
        self.read(|core, now| core.get(id, now))
    }

    pub(crate) fn search(&self, search: &Search) -> Page {
        self.read(|core, now| core.search(search, now))
    }

    pub(crate) fn task(&self, id: &str) -> Option<Task> {
        self.read(|core, _| core.task_ref(id).cloned())
    }

    pub(crate) async fn claim(&self, claim: Claim) -> Result<Vec<Acquired>, StoreError> {
        self.write(|core, now| Ok(core.claim(&claim, now))).await
    }

    pub(crate) async fn heartbeat(&self, process: &str, held: &[Fence], ttl: Millis) -> Result<usize, StoreError> {
        self.write(|core, now| Ok(core.heartbeat(process, held, ttl, now))).await
    }

    pub(crate) async fn release(&self, fence: &Fence, how: Release) -> Result<(), StoreError> {
        self.write(|core, now| core.release(fence, how, now)).await
    }

    pub(crate) async fn suspend(&self, fence: &Fence, awaiting: &[String]) -> Result<bool, StoreError> {
        self.write(|core, now| core.suspend(fence, awaiting, now)).await
    }

    pub(crate) async fn resume_halted(&self, group: &str) -> Result<usize, StoreError> {
        self.write(|core, now| Ok(core.resume_halted(group, now))).await
    }

    pub(crate) async fn tick(&self) -> Result<Tick, StoreError> {
        self.write(|core, now| Ok(core.tick(now))).await
    }

    pub(crate) async fn wait(&self, id: &str, halted: bool) -> Result<(), StoreError> {
        let rx = {
            let core = self.lock();
            if core.is_done(id, halted, self.clock.now()) {
                return Ok(());
            }
            self.waiters.register(id)
        };
        // A dropped sender means the store itself is gone; the caller re-reads.
        let _ = rx.await;
        Ok(())
    }

    pub(crate) fn ready(&self) -> watch::Receiver<u64> {
        self.ready.subscribe()
    }
}

/// Wakes the waiters of a step when dropped.
struct Wake<'a, L> {
    engine: &'a Engine<L>,
    woken: Vec<String>,
    ready: bool,
}

impl<L> Drop for Wake<'_, L> {
    fn drop(&mut self) {
        self.engine.waiters.wake(std::mem::take(&mut self.woken));
        if self.ready {
            self.engine.ready.send_modify(|n| *n += 1);
        }
    }
}

/// Implements [`Store`](super::Store) for a type whose field `engine` is an [`Engine`].
macro_rules! engine_store {
    ($ty:ty) => {
        #[async_trait::async_trait]
        impl $crate::Store for $ty {
            async fn now(&self) -> Result<$crate::Millis, $crate::StoreError> {
                Ok(self.engine.now())
            }
            async fn create(
                &self,
                req: $crate::store::CreatePromise,
            ) -> Result<$crate::store::Created, $crate::StoreError> {
                self.engine.create(req).await
            }
            async fn settle(&self, req: $crate::store::SettlePromise) -> Result<$crate::Promise, $crate::StoreError> {
                self.engine.settle(req).await
            }
            async fn get(&self, id: &str) -> Result<Option<$crate::Promise>, $crate::StoreError> {
                Ok(self.engine.get(id))
            }
            async fn search(&self, search: $crate::store::Search) -> Result<$crate::store::Page, $crate::StoreError> {
                Ok(self.engine.search(&search))
            }
            async fn task(&self, id: &str) -> Result<Option<$crate::Task>, $crate::StoreError> {
                Ok(self.engine.task(id))
            }
            async fn claim(
                &self,
                claim: $crate::store::Claim,
            ) -> Result<Vec<$crate::store::Acquired>, $crate::StoreError> {
                self.engine.claim(claim).await
            }
            async fn heartbeat(
                &self,
                process: &str,
                held: &[$crate::Fence],
                ttl: $crate::Millis,
            ) -> Result<usize, $crate::StoreError> {
                self.engine.heartbeat(process, held, ttl).await
            }
            async fn release(
                &self,
                fence: &$crate::Fence,
                how: $crate::store::Release,
            ) -> Result<(), $crate::StoreError> {
                self.engine.release(fence, how).await
            }
            async fn suspend(&self, fence: &$crate::Fence, awaiting: &[String]) -> Result<bool, $crate::StoreError> {
                self.engine.suspend(fence, awaiting).await
            }
            async fn resume_halted(&self, group: &str) -> Result<usize, $crate::StoreError> {
                self.engine.resume_halted(group).await
            }
            async fn tick(&self) -> Result<$crate::store::Tick, $crate::StoreError> {
                self.engine.tick().await
            }
            async fn wait(&self, id: &str, halted: bool) -> Result<(), $crate::StoreError> {
                self.engine.wait(id, halted).await
            }
            fn ready(&self) -> tokio::sync::watch::Receiver<u64> {
                self.engine.ready()
            }
        }
    };
}
pub(crate) use engine_store;
