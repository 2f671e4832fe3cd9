//! Importing a history writes one invocation's family, checked as a runtime write
//! would be, all of it or none, and so that a live worker takes none of it before all
//! of it is there.

mod common;

use std::sync::Arc;

use common::{builder, ran, runs, tree};
use durable::prelude::*;
use durable::{Error, History, Param};

#[durable::function(name = "step")]
async fn step(_ctx: &mut Context, (order, n): (u64, u64)) -> durable::Result<u64> {
    ran(&format!("step-{order}"));
    Ok(n)
}

/// Ten steps, then waits for an approval.
#[durable::function(name = "steps")]
async fn steps(ctx: &mut Context, order: u64) -> durable::Result<u64> {
    let mut sum = 0;
    for n in 0..10 {
        sum += ctx.lfc(step, (order, n)).await?;
    }
    let approval = ctx.promise::<u64>().id(format!("approval-{order}")).await?;
    Ok(sum + approval.await?)
}

/// The history of `steps` for `order`, half done: ten steps recorded, waiting.
async fn recorded(order: u64) -> History {
    let store: Arc<dyn Store> = common::memory();
    let durable = builder(&store).register(steps).register(step).build().unwrap();
    let id = format!("order-{order}");
    let _running = durable.run(&id, steps, order).await.unwrap();
    while durable.get(&format!("approval-{order}")).await.unwrap().is_none() {
        tokio::task::yield_now().await;
    }
    durable.promises().history(&id).await.unwrap()
}

async fn a_live_worker_replays_an_import_whole(store: Arc<dyn Store>) {
    let history = recorded(1).await;
    assert_eq!(runs("step-1"), 10);
    // A worker that can run it is live and waiting when the import begins.
    let durable = builder(&store).register(steps).register(step).build().unwrap();
    durable.promises().import(&history).await.unwrap();
    durable.promises().resolve("approval-1", &100).await.unwrap();
    let mut done = durable.get("order-1").await.unwrap().unwrap();
    while !done.state.is_settled() {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        done = durable.get("order-1").await.unwrap().unwrap();
    }
    assert_eq!(done.value::<u64>().unwrap().unwrap(), 145);
    assert_eq!(runs("step-1"), 10, "no recorded step ran again");
}

async fn a_refused_import_writes_nothing(store: Arc<dyn Store>) {
    let history = recorded(2).await;
    // The store has one id of the history already, another invocation's.
    let durable = builder(&store).build().unwrap();
    store.create(durable::store::CreatePromise::new("approval-2", Param::External)).await.unwrap();
    let refused = durable.promises().import(&history).await.unwrap_err();
    assert!(
        matches!(&refused, Error::Store(durable::StoreError::Conflict { id, .. }) if id == "approval-2"),
        "{refused}"
    );
    assert!(durable.get("order-2").await.unwrap().is_none(), "not the invocation, nor its task");
    assert!(tree(&*store, "order-2").await.is_empty(), "nor any of its promises");
}

/// Runs `change` on a copy of a good history and imports it: the error, and what
/// the store has afterwards.
async fn import_changed(store: &Arc<dyn Store>, order: u64, change: impl FnOnce(&mut History)) -> String {
    let mut history = recorded(order).await;
    change(&mut history);
    let durable = builder(store).build().unwrap();
    let refused = durable.promises().import(&history).await.unwrap_err().to_string();
    assert!(store.get(&history.id).await.unwrap().is_none(), "a refused import wrote {}: {refused}", history.id);
    refused
}

async fn an_import_checks_the_file(store: Arc<dyn Store>) {
    // A promise of another invocation planted in the file.
    let planted = import_changed(&store, 3, |h| {
        let mut victim = h.promises[1].clone();
        victim.promise.id = "victim-order-42".into();
        victim.promise.parent = None;
        victim.promise.root = "victim-order-42".into();
        h.promises.push(victim);
    })
    .await;
    assert!(planted.contains("victim-order-42") && planted.contains("family"), "{planted}");
    assert!(store.get("victim-order-42").await.unwrap().is_none());

    let bad_id = import_changed(&store, 4, |h| {
        let approval = h.promises.iter_mut().find(|r| r.promise.id == "approval-4").unwrap();
        approval.promise.id = "approval\u{1b}]0;pwned\u{7}".into();
    })
    .await;
    assert!(bad_id.contains("control characters"), "{bad_id}");

    let dotted = import_changed(&store, 5, |h| {
        let approval = h.promises.iter_mut().find(|r| r.promise.id == "approval-5").unwrap();
        approval.promise.id = "approval.5".into();
    })
    .await;
    assert!(dotted.contains("'.'"), "{dotted}");

    let huge = import_changed(&store, 6, |h| {
        if let Param::Call { args, .. } = &mut h.promises[1].promise.param {
            *args = format!("[6, \"{}\"]", "x".repeat(5 << 20));
        }
    })
    .await;
    assert!(huge.contains("over the limit"), "{huge}");

    let not_json = import_changed(&store, 7, |h| h.promises[1].promise.value = Some("{not json".into())).await;
    assert!(not_json.contains("not JSON"), "{not_json}");

    // A forged digest is not kept: the store's is computed from the arguments.
    let mut history = recorded(8).await;
    if let Param::Call { digest, .. } = &mut history.promises[1].promise.param {
        *digest = 12345;
    }
    let durable = builder(&store).build().unwrap();
    durable.promises().import(&history).await.unwrap();
    let stored = durable.get(&history.promises[1].promise.id).await.unwrap().unwrap();
    let Param::Call { args, .. } = &stored.param else { panic!("a call") };
    assert_eq!(stored.param, Param::call("step", 1, args.clone()), "the digest of its arguments");
}

on_every_store!(a_live_worker_replays_an_import_whole, a_refused_import_writes_nothing, an_import_checks_the_file);
