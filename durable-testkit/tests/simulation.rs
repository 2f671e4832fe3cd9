//! The simulation in CI: a fixed set of seeds on MemoryStore and on SledStore, and a
//! few on PostgreSQL. `DURABLE_SIM_SEEDS` sets how many seeds the memory run takes
//! (default 16); the long runs are `durable-bench simulate`.

use std::sync::Arc;

use durable::store::VirtualClock;
use durable_testkit::block_on;
use durable_testkit::simulation::Simulation;

fn seeds(default: u64) -> u64 {
    std::env::var("DURABLE_SIM_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(default)
}

#[test]
fn seeds_on_memory_keep_every_invariant() {
    for seed in 0..seeds(16) {
        let summary = block_on(Simulation::new(seed).run()).unwrap_or_else(|failure| panic!("{failure}"));
        assert!(summary.invocations > 0, "seed {seed} started nothing");
    }
}

#[test]
fn seeds_on_sled_keep_every_invariant() {
    for seed in 100..104 {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_owned();
        let store = move || {
            let store = durable::SledStore::open_with_clock(path.join("store"), VirtualClock::new()).unwrap();
            Arc::new(store) as Arc<dyn durable::Store>
        };
        block_on(Simulation::new(seed).store(store).run()).unwrap_or_else(|failure| panic!("{failure}"));
    }
}
