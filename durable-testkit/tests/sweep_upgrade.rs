//! The crash sweep over an upgrade: an invocation recorded by the old code, half
//! done, is finished by the new code (a change behind a patch) through a crash at
//! every write, on the old path; a new invocation of the new code is swept on the
//! new path.

use std::sync::Arc;
use std::time::Duration;

use durable::prelude::*;
use durable::store::Search;
use durable_testkit::Sweep;

#[durable::function]
async fn ship(_ctx: &mut Context, order: u64) -> durable::Result<u64> {
    Ok(order * 10)
}

#[durable::function]
async fn notify(_ctx: &mut Context, order: u64) -> durable::Result<u64> {
    Ok(order)
}

/// The old code: ship, then wait for an approval.
#[durable::function(name = "fulfil")]
async fn fulfil_old(ctx: &mut Context, order: u64) -> durable::Result<u64> {
    let shipped = ctx.lfc(ship, order).await?;
    let approved = ctx.promise::<u64>().tags([("kind", "approval")]).await?.await?;
    Ok(shipped + approved)
}

/// The new code notifies first, behind a patch.
#[durable::function(name = "fulfil")]
async fn fulfil_new(ctx: &mut Context, order: u64) -> durable::Result<u64> {
    let notified = if ctx.patched("notify-first").await? { ctx.lfc(notify, order).await? } else { 0 };
    let shipped = ctx.lfc(ship, order).await?;
    let approved = ctx.promise::<u64>().tags([("kind", "approval")]).await?.await?;
    Ok(notified * 1000 + shipped + approved)
}

fn workers(store: Arc<dyn Store>) -> Vec<Durable> {
    vec![Durable::builder().store(store).register(fulfil_new).build().unwrap()]
}

/// A person who approves every pending approval with 1.
async fn approver(durable: Durable) {
    loop {
        let search = Search {
            tags: [("kind".into(), "approval".into())].into(),
            state: Some(durable::State::Pending),
            ..Search::default()
        };
        if let Ok(page) = durable.promises().search(search).await {
            for p in page.promises {
                let _ = durable.promises().resolve(&p.id, &1).await;
            }
        }
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
}

/// The old code's invocation `id`, up to its wait for the approval.
async fn recorded_by_the_old_code(id: &str) -> durable::History {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let old = Durable::builder().store(store).register(fulfil_old).build().unwrap();
    let _handle = old.run(id, fulfil_old, 7).await.unwrap();
    while old.get(&format!("{id}.2")).await.unwrap().is_none() {
        tokio::task::yield_now().await;
    }
    old.promises().history(id).await.unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_half_done_invocation_of_the_old_code_finishes_on_the_old_path_through_every_crash() {
    let history = recorded_by_the_old_code("old").await;
    // Without a crash: the old path, shipped and approved, not notified.
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let new = workers(store.clone()).remove(0);
    new.promises().import(&history).await.unwrap();
    let approving = tokio::spawn(approver(new.clone()));
    assert_eq!(new.run("old", fulfil_new, 7).await.unwrap().await.unwrap(), 71);
    approving.abort();

    let sweep = Sweep::new("old", fulfil_new, 7).workers(workers).outside(approver).history(history);
    let report = sweep.run().await.unwrap_or_else(|failure| panic!("{failure}"));
    assert!(report.writes >= 3, "{report:?}");
    assert!(!report.body_runs.contains_key("notify"), "{report:?}");
}

#[tokio::test(start_paused = true)]
async fn a_new_invocation_takes_the_new_path_through_every_crash() {
    let sweep = Sweep::new("new", fulfil_new, 7).workers(workers).outside(approver);
    let report = sweep.run().await.unwrap_or_else(|failure| panic!("{failure}"));
    assert_eq!(report.crash_free_body_runs.get("notify"), Some(&1), "{report:?}");
}
