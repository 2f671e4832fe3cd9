//! Workloads shared by the criterion benchmarks: a chain of local durable steps, and a
//! way to leave one unfinished so that a new runtime recovers it by replay.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use durable::prelude::*;
use durable::store::PostgresStore;
use tokio::sync::Notify;

static HOLD: AtomicBool = AtomicBool::new(false);
static HELD: Notify = Notify::const_new();

/// One step: its input plus one.
#[durable::function]
pub async fn step(_ctx: &mut Context, x: u64) -> durable::Result<u64> {
    Ok(x + 1)
}

/// Holds the chain open while [`unfinished`] prepares a run, so a runtime can be stopped mid-run.
#[durable::function]
pub async fn gate(_ctx: &mut Context) -> durable::Result<()> {
    if HOLD.load(Ordering::SeqCst) {
        HELD.notify_one();
        std::future::pending::<()>().await;
    }
    Ok(())
}

/// `n` sequential local steps, then the gate.
#[durable::function]
pub async fn chain(ctx: &mut Context, n: u64) -> durable::Result<u64> {
    let mut x = 0;
    for _ in 0..n {
        x = ctx.lfc(step, x).await?;
    }
    ctx.lfc(gate, ()).await?;
    Ok(x)
}

/// A runtime over `store` with the chain registered.
pub fn runtime(store: &Arc<dyn Store>) -> Durable {
    Durable::builder().store(store.clone()).register(chain).build().expect("build")
}

/// Runs a chain of `n` steps to the gate on `store`, then stops the runtime, releasing
/// the invocation for another to recover: `n` settled steps to replay.
pub async fn unfinished(store: &Arc<dyn Store>, id: &str, n: u64) -> Handle<u64> {
    HOLD.store(true, Ordering::SeqCst);
    let durable = runtime(store);
    let handle = durable.run(id, chain, n).await.expect("run");
    HELD.notified().await;
    durable.shutdown().await.expect("shutdown");
    HOLD.store(false, Ordering::SeqCst);
    handle
}

/// A PostgresStore in a fresh schema `name`, if `DURABLE_POSTGRES_URL` (default
/// `postgres://postgres@127.0.0.1:5432/test`) is reachable.
pub async fn postgres(name: &str) -> Option<Arc<dyn Store>> {
    let url =
        std::env::var("DURABLE_POSTGRES_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let (client, connection) = match tokio_postgres::connect(&url, tokio_postgres::NoTls).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("PostgreSQL benchmarks skipped: {url} is unreachable: {e}");
            return None;
        }
    };
    tokio::spawn(connection);
    let schema = format!("durable_bench_{name}");
    client.batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE")).await.ok()?;
    let store = PostgresStore::options(&url).schema(schema).connect().await.ok()?;
    Some(Arc::new(store))
}
