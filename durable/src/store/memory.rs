//! The reference store: all in memory, on a clock tests control.

use std::sync::Arc;

use super::cold::MemoryCold;
use super::engine::{Engine, Log, engine_store};
use super::state::{Changes, Core};
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
        let cold = Arc::new(MemoryCold::default());
        MemoryStore { engine: Engine::new(Core::new(cold.clone()), Volatile { cold }, Arc::new(clock)) }
    }
}

impl Default for MemoryStore {
    fn default() -> MemoryStore {
        MemoryStore::new()
    }
}

/// A log that keeps the finished records in memory.
#[derive(Debug)]
struct Volatile {
    cold: Arc<MemoryCold>,
}

impl Log for Volatile {
    fn stage(&self, changes: &Changes) -> Result<u64, StoreError> {
        self.cold.apply(changes);
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use futures::future::BoxFuture;

    use super::MemoryStore;
    use crate::store::{CreatePromise, Invocations};
    use crate::{Callable, Context, Durable, Function, Param, Result, Store};

    /// Doubles its argument, on the worker group `kids`.
    #[derive(Clone, Copy, Debug)]
    struct Double;

    impl Callable for Double {
        type Args = u64;
        type Output = u64;
        fn name(&self) -> &str {
            "double"
        }
    }

    impl Function for Double {
        fn call<'a>(&self, _: &'a mut Context, n: u64) -> BoxFuture<'a, Result<u64>> {
            Box::pin(async move { Ok(2 * n) })
        }
    }

    /// A remote call routed by pid, a sleep, and for some an external promise that
    /// times out: every kind of index entry and waiter comes and goes.
    #[derive(Clone, Copy, Debug)]
    struct Parent;

    impl Callable for Parent {
        type Args = u64;
        type Output = u64;
        fn name(&self) -> &str {
            "parent"
        }
    }

    impl Function for Parent {
        fn call<'a>(&self, ctx: &'a mut Context, n: u64) -> BoxFuture<'a, Result<u64>> {
            Box::pin(async move {
                let pid = if n % 2 == 0 { "k1" } else { "k2" };
                let doubled = ctx.rfc(Double, n).target(format!("poll://any@kids/{pid}")).await?;
                ctx.sleep(Duration::from_millis(n % 5)).await?;
                if n % 10 == 0 {
                    let approval = ctx.promise::<u64>().timeout(Duration::from_millis(3)).await?;
                    let _ = approval.await;
                }
                Ok(doubled)
            })
        }
    }

    /// A listing reads a bounded number of finished invocations per call, so that it
    /// holds the state's lock only briefly: past that it answers with what it found, even
    /// nothing, and a cursor to go on from.
    #[tokio::test]
    async fn a_listing_reads_a_bounded_number_of_finished_invocations_per_page() {
        let store = MemoryStore::new();
        for i in 0..5000 {
            let mut req = CreatePromise::new(format!("f{i:04}"), Param::call("f", 1, "1".into()));
            req.settled = Some((crate::State::Resolved, "1".into()));
            store.create(req).await.unwrap();
        }
        let mut rare = CreatePromise::new("g", Param::call("g", 1, "1".into()));
        rare.settled = Some((crate::State::Resolved, "1".into()));
        store.create(rare).await.unwrap();
        // Wherever g falls in the listing, one call cannot read all 5001 to answer.
        let mut query = Invocations { function: Some("g".into()), limit: 10, ..Invocations::default() };
        let (mut pages, mut found) = (Vec::new(), Vec::new());
        loop {
            let page = store.invocations(query.clone()).await.unwrap();
            pages.push(page.invocations.len());
            found.extend(page.invocations.into_iter().map(|i| i.promise.id));
            match page.cursor {
                Some(c) => query.cursor = Some(c),
                None => break,
            }
        }
        assert_eq!(found, ["g"], "paging on finds what one page could not reach");
        assert!(pages.len() >= 2, "5001 finished invocations take more than one call: {pages:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn after_10_000_invocations_the_indexes_and_waiters_are_idle_again() {
        let store = Arc::new(MemoryStore::new());
        let kids: Vec<Durable> = ["k1", "k2"]
            .map(|pid| Durable::builder().store(store.clone()).group("kids").pid(pid).register(Double).build().unwrap())
            .into();
        let parents = Durable::builder().store(store.clone()).register(Parent).build().unwrap();
        let idle = store.engine.footprint();
        // Exactly idle again, so one entry left behind per invocation would show.
        for batch in 0..10_000 / 100 {
            let runs = (0..100).map(|i| {
                let parents = parents.clone();
                let n = batch * 100 + i;
                async move { parents.run(&format!("p{n}"), Parent, n).await.unwrap().await.unwrap() }
            });
            let results = futures::future::join_all(runs).await;
            assert_eq!(results[1], 2 * (batch * 100 + 1));
        }
        // Preference windows and leases run out; every worker goes idle.
        tokio::time::sleep(Duration::from_secs(120)).await;
        assert_eq!(store.engine.footprint(), idle, "index entries and waiters are back where they started");
        for durable in kids.iter().chain([&parents]) {
            assert!(durable.shared.running.lock().unwrap().is_empty(), "nothing is running");
        }
    }
}
