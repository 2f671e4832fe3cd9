//! Retention: a finished invocation is deleted, with everything under it, once it has
//! been settled longer than the retention; its id then runs afresh. Nothing pending is
//! deleted, "off" keeps everything, and an explicit purge does not wait.

mod common;

use std::time::Duration;

use common::{builder, memory, tree};
use durable::prelude::*;

const HOUR: Duration = Duration::from_secs(3600);

#[durable::function(name = "double")]
async fn double(_ctx: &mut Context, n: u64) -> durable::Result<u64> {
    Ok(n * 2)
}

/// Doubles twice, in two children.
#[durable::function(name = "job")]
async fn job(ctx: &mut Context, n: u64) -> durable::Result<u64> {
    let once = ctx.lfc(double, n).await?;
    ctx.lfc(double, once).await
}

/// Waits for an approval, then doubles.
#[durable::function(name = "approved")]
async fn approved(ctx: &mut Context, n: u64) -> durable::Result<u64> {
    let approval = ctx.promise::<bool>().id("approval").await?;
    approval.await?;
    ctx.lfc(double, n).await
}

#[tokio::test(start_paused = true)]
async fn a_finished_invocation_goes_after_the_retention_and_its_id_runs_afresh() {
    let store = memory();
    let durable = builder(&store).register(job).register(double).retention(Some(HOUR)).build().unwrap();
    assert_eq!(durable.run("job-1", job, 1).await.unwrap().await.unwrap(), 4);
    tokio::time::sleep(HOUR / 2).await;
    assert_eq!(durable.run("job-1", job, 1).await.unwrap().await.unwrap(), 4, "within the retention, the same result");
    let refused = durable.run("job-1", job, 5).await.unwrap_err();
    assert!(matches!(refused, durable::Error::Conflict { .. }), "within the retention the id is taken: {refused}");
    let runs = durable.body_runs()["double"];

    // Past the retention, and the tenth of it a purge may be late.
    tokio::time::sleep(HOUR).await;
    assert!(durable.get("job-1").await.unwrap().is_none(), "the invocation went");
    assert!(tree(&*store, "job-1").await.is_empty(), "everything under it went too");
    assert_eq!(
        durable.run("job-1", job, 5).await.unwrap().await.unwrap(),
        20,
        "the id runs afresh: a leftover child would have given its old value"
    );
    assert_eq!(durable.body_runs()["double"], runs + 2, "both children ran again");
}

#[tokio::test(start_paused = true)]
async fn retention_counts_from_the_settle_time_and_spares_what_is_pending() {
    let store = memory();
    let durable = builder(&store).register(approved).register(double).retention(Some(HOUR)).build().unwrap();
    let handle = durable.run("order-1", approved, 3).await.unwrap();
    while durable.get("approval").await.unwrap().is_none() {
        tokio::task::yield_now().await;
    }
    tokio::time::sleep(3 * HOUR).await;
    assert!(durable.get("order-1").await.unwrap().is_some(), "a pending invocation is never deleted");
    durable.promises().resolve("approval", &true).await.unwrap();
    assert_eq!(handle.await.unwrap(), 6);
    tokio::time::sleep(HOUR / 2).await;
    assert!(durable.get("order-1").await.unwrap().is_some(), "counted from its settle, not its creation");
    tokio::time::sleep(HOUR).await;
    assert!(durable.get("order-1").await.unwrap().is_none(), "gone once settled for longer than the retention");
    assert!(durable.get("approval").await.unwrap().is_none(), "a promise with a chosen id is a root of its own");
}

#[tokio::test(start_paused = true)]
async fn with_retention_off_everything_stays() {
    let store = memory();
    let durable = builder(&store).register(job).register(double).retention(None).build().unwrap();
    durable.run("job-1", job, 1).await.unwrap().await.unwrap();
    tokio::time::sleep(Duration::from_secs(30 * 24 * 3600)).await;
    assert_eq!(tree(&*store, "job-1").await.len(), 3, "the invocation and its two children stay");
}

#[tokio::test(start_paused = true)]
async fn an_explicit_purge_deletes_at_once_and_refuses_what_is_pending() {
    let store = memory();
    let durable = builder(&store).register(job).register(approved).register(double).build().unwrap();
    durable.run("job-1", job, 1).await.unwrap().await.unwrap();
    durable.run("job-2", job, 1).await.unwrap().await.unwrap();
    let _pending = durable.run("order-1", approved, 1).await.unwrap();
    while durable.get("approval").await.unwrap().is_none() {
        tokio::task::yield_now().await;
    }
    assert!(durable.promises().purge("job-1").await.unwrap());
    assert!(tree(&*store, "job-1").await.is_empty());
    assert!(!durable.promises().purge("job-1").await.unwrap(), "a purged root is not found again");
    let refused = durable.promises().purge("order-1").await.unwrap_err().to_string();
    assert!(refused.contains("order-1") && refused.contains("pending"), "{refused}");
    let child = durable.promises().purge("job-2.1").await.unwrap_err().to_string();
    assert!(child.contains("part of the invocation \"job-2\""), "{child}");
    let now = store.now().await.unwrap();
    assert_eq!(durable.promises().purge_finished_before(now + 1).await.unwrap(), 1, "job-2 only");
    assert!(tree(&*store, "job-2").await.is_empty());
    assert!(durable.get("order-1").await.unwrap().is_some());
}

#[tokio::test]
async fn a_retention_under_a_second_is_refused() {
    let store = memory();
    let error = builder(&store).retention(Some(Duration::from_millis(10))).build().unwrap_err().to_string();
    assert!(error.contains("retention of 10ms"), "{error}");
}
