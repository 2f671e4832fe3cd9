//! The simulation in CI: a fixed set of seeds on MemoryStore and on SledStore, and a
//! short one on PostgreSQL. `DURABLE_SIM_SEEDS` sets how many seeds the memory run
//! takes (default 16); the long runs are `durable-bench simulate`.

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

/// One thread under paused time: a seed is one run, operation for operation.
#[test]
fn a_seed_on_memory_replays_exactly() {
    for seed in [3, 11] {
        let first = block_on(Simulation::new(seed).run()).unwrap_or_else(|failure| panic!("{failure}"));
        let again = block_on(Simulation::new(seed).run()).unwrap_or_else(|failure| panic!("{failure}"));
        assert_eq!(first, again, "seed {seed} ran differently the second time");
    }
}

/// Stalls: a worker's store calls held past its leases, as a paused process's are. Seed
/// 1263 stalls a worker in a retry wait; its lease runs out and a successor runs the
/// next attempt; the stalled worker must not then run that attempt's step again.
#[test]
fn a_stalled_worker_starts_no_body_once_its_lease_ran_out() {
    for seed in [1263, 0, 1, 2, 3] {
        let summary = block_on(Simulation::new(seed).stalls(true).run()).unwrap_or_else(|failure| panic!("{failure}"));
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

mod your_workload {
    use durable::prelude::*;
    use durable_testkit::simulation::{SimRng, Simulation, Workload};
    use futures::future::BoxFuture;

    #[durable::function(name = "debit")]
    async fn debit(_ctx: &mut Context, account: u64, cents: u64) -> durable::Result<u64> {
        Ok(account * 1000 + cents)
    }

    #[durable::function(name = "transfer")]
    async fn transfer(ctx: &mut Context, from: u64, to: u64, cents: u64) -> durable::Result<u64> {
        let debited = ctx.lfc(debit, (from, cents)).await?;
        ctx.sleep(std::time::Duration::from_secs(90 * 60)).await?;
        let credited = ctx.rfc(debit, (to, cents)).target("poll://any@b").await?;
        Ok(debited + credited)
    }

    /// Transfers, mixed into the simulation, with an invariant of their own.
    struct Transfers;

    impl Workload for Transfers {
        fn register(&self, builder: durable::Builder) -> durable::Builder {
            builder.register(transfer).register(debit)
        }

        fn start<'a>(
            &'a self,
            client: &'a Durable,
            n: usize,
            rng: &'a mut SimRng,
        ) -> BoxFuture<'a, Result<String, String>> {
            Box::pin(async move {
                let id = format!("transfer-{n}");
                let args = (rng.below(10), rng.below(10), 1 + rng.below(500));
                // Started: the simulation awaits its end itself.
                let _started =
                    client.rpc(&id, transfer, args).target("poll://any@a").await.map_err(|e| e.to_string())?;
                Ok(id)
            })
        }

        fn check<'a>(&'a self, store: &'a dyn Store) -> BoxFuture<'a, Result<(), String>> {
            Box::pin(async move {
                let search = durable::store::Search { prefix: "transfer-".into(), ..Default::default() };
                let page = store.search(search).await.map_err(|e| e.to_string())?;
                match page.promises.iter().find(|p| p.param.what() == "transfer" && !p.state.is_settled()) {
                    Some(p) => Err(format!("{} never finished", p.id)),
                    None => Ok(()),
                }
            })
        }
    }

    #[test]
    fn your_own_functions_and_invariants_run_in_the_simulation() {
        for seed in 300..304 {
            let summary = durable_testkit::block_on(Simulation::new(seed).workload(Transfers).run())
                .unwrap_or_else(|failure| panic!("{failure}"));
            assert!(summary.counts.get("start (your workload)").copied().unwrap_or(0) > 0, "seed {seed}: {summary:?}");
        }
    }
}

/// On PostgreSQL: real concurrency, so a seed reproduces its workload and events,
/// not every interleaving. Each seed in a schema of its own, dropped when it passes.
#[tokio::test(start_paused = true)]
async fn a_seed_on_postgres_keeps_every_invariant() {
    let url =
        std::env::var("DURABLE_POSTGRES_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let seed = 204;
    let schema = format!("durable_sim_{}_{seed}", std::process::id());
    let store = durable::store::PostgresStore::options(&url)
        .schema(&schema)
        .clock(VirtualClock::new())
        .connect()
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL at {url} is unreachable: {e}"));
    let store: Arc<dyn durable::Store> = Arc::new(store);
    let outcome = Simulation::new(seed).steps(8).store(move || store.clone()).run().await;
    if outcome.is_ok() {
        let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(connection);
        client.batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE")).await.unwrap();
    }
    let summary = outcome.unwrap_or_else(|failure| panic!("{failure}"));
    assert!(summary.invocations > 0, "seed {seed} started nothing");
}
