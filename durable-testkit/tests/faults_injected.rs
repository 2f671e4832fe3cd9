//! The runtime survives store faults at every operation of a workflow: a failure, or
//! a write that happened but reported an error (unknown outcome). The result is the
//! fault-free one and no promise is settled twice.

use std::sync::Arc;

use durable::prelude::*;
use durable::store::Search;
use durable_testkit::{Fault, FaultyStore};

#[durable::function]
async fn inc(_ctx: &mut Context, x: i64) -> durable::Result<i64> {
    Ok(x + 1)
}

#[durable::function]
async fn flow(ctx: &mut Context, x: i64) -> durable::Result<i64> {
    let a = ctx.lfc(inc, x).await?;
    let b = ctx.rfc(inc, a).target("poll://any@remote").await?;
    let c = ctx.lfi(inc, b).await?;
    c.await
}

/// Runs the workflow to its result as a client would: a failed call is tried again
/// under the same id.
async fn run(store: Arc<dyn Store>, inner: &dyn Store) -> (i64, Vec<(String, Option<String>)>) {
    let local = Durable::builder().store(store.clone()).register(flow).build().unwrap();
    let _remote = Durable::builder().store(store.clone()).group("remote").register(inc).build().unwrap();
    let result = loop {
        match local.run("flow", flow, 1).await {
            Ok(handle) => match handle.await {
                Ok(value) => break value,
                Err(Error::Store(_)) => continue,
                Err(e) => panic!("the workflow failed: {e}"),
            },
            Err(Error::Store(_)) => continue,
            Err(e) => panic!("the workflow could not start: {e}"),
        }
    };
    let page = inner.search(Search::default()).await.unwrap();
    (result, page.promises.into_iter().map(|p| (p.id, p.value)).collect())
}

#[tokio::test(start_paused = true)]
async fn every_operation_may_fail_or_have_an_unknown_outcome() {
    let memory: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let clean = Arc::new(FaultyStore::new(memory.clone()));
    let expected = run(clean.clone(), &*memory).await;
    assert_eq!(expected.0, 4);
    let operations = clean.operations();
    assert!(operations >= 10, "{operations} operations");
    let mut injected = 0;
    for n in 1..=operations {
        for fault in [Fault::Fail, Fault::Unknown] {
            let memory: Arc<dyn Store> = Arc::new(MemoryStore::new());
            let store = Arc::new(FaultyStore::new(memory.clone()).inject(n, fault));
            let got = run(store.clone(), &*memory).await;
            assert_eq!(got, expected, "{fault:?} at operation {n}");
            injected += store.injected();
        }
    }
    // Timing differs from run to run, so a late operation number may not be reached.
    assert!(injected * 10 >= 2 * operations * 9, "only {injected} of {} faults were injected", 2 * operations);
}
