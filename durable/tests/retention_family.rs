//! Retention keeps a family whole while any of it runs: a promise an invocation made
//! with a chosen id, the detached invocations it started and the approval it waits
//! for are kept as long as the invocation, so its replay after a long sleep finds
//! them and runs nothing twice. Cancelling and restarting follow the same links.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{builder, ran, runs};
use durable::State;
use durable::prelude::*;

const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(24 * 3600);

#[durable::function(name = "charge")]
async fn charge(_ctx: &mut Context, order: u64) -> durable::Result<u64> {
    ran(&format!("charge-{order}"));
    Ok(order * 100)
}

#[durable::function(name = "report")]
async fn report(_ctx: &mut Context, order: u64) -> durable::Result<()> {
    ran(&format!("report-{order}"));
    Ok(())
}

/// Charges under a chosen id, starts a detached report, waits for an approval, sleeps
/// a month, and charges what it charged again, by the same id.
#[durable::function(name = "subscription")]
async fn subscription(ctx: &mut Context, order: u64) -> durable::Result<u64> {
    let cents = ctx.lfc(charge, order).id(format!("charge-{order}")).await?;
    ctx.detached(report, order).id(format!("report-{order}")).await?;
    let approval = ctx.promise::<bool>().id(format!("approval-{order}")).await?;
    approval.await?;
    ctx.sleep(30 * DAY).await?;
    let again = ctx.lfc(charge, order).id(format!("charge-{order}")).await?;
    Ok(cents + again)
}

async fn a_month_long_sleep_past_the_retention_replays_without_running_anything_twice(store: Arc<dyn Store>) {
    let order = 1;
    let durable =
        builder(&store).register(subscription).register(charge).register(report).retention(Some(HOUR)).build().unwrap();
    let handle = durable.run("sub-1", subscription, order).await.unwrap();
    while durable.get("approval-1").await.unwrap().is_none() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    durable.promises().resolve("approval-1", &true).await.unwrap();
    // The sleep suspends the invocation; a day later the report and the approval
    // have been settled for far longer than the retention.
    tokio::time::sleep(DAY).await;
    for id in ["charge-1", "report-1", "approval-1"] {
        let p = durable.get(id).await.unwrap().unwrap_or_else(|| panic!("{id} was purged while sub-1 sleeps"));
        assert_eq!((p.parent.as_deref(), p.root.as_str()), (Some("sub-1"), "sub-1"), "{id}");
    }
    assert_eq!(handle.await.unwrap(), 200, "the replay finds the charge and the approval");
    assert_eq!(runs("charge-1"), 1, "the charge ran once");
    assert_eq!(runs("report-1"), 1, "the detached report ran once");
    // Once all of it finished, the family goes as one.
    tokio::time::sleep(2 * HOUR).await;
    for id in ["sub-1", "charge-1", "report-1", "approval-1"] {
        assert!(durable.get(id).await.unwrap().is_none(), "{id} went with its family");
    }
}

#[durable::function(name = "hold")]
async fn hold(ctx: &mut Context, order: u64) -> durable::Result<()> {
    ctx.promise::<()>().id(format!("hold-{order}")).await?.await
}

/// A child that creates a chosen-id promise and then finishes: the promise outlives it.
#[durable::function(name = "asks")]
async fn asks(ctx: &mut Context, order: u64) -> durable::Result<()> {
    // Started, not awaited: the child ends while what it started runs on.
    let _started = ctx.rfi(hold, order).id(format!("held-{order}")).await?;
    Ok(())
}

#[durable::function(name = "parent")]
async fn parent(ctx: &mut Context, order: u64) -> durable::Result<()> {
    ctx.lfc(asks, order).await?;
    ctx.promise::<()>().await?.await
}

async fn cancel_reaches_what_a_finished_child_created_with_a_chosen_id(store: Arc<dyn Store>) {
    let durable = builder(&store).register(parent).register(asks).register(hold).build().unwrap();
    let handle = durable.run("p-2", parent, 2).await.unwrap();
    while durable.get("hold-2").await.unwrap().is_none() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(durable.get("p-2.1").await.unwrap().unwrap().state.is_settled(), "the child that asked finished");
    durable.promises().cancel("p-2").await.unwrap();
    assert!(matches!(handle.await, Err(Error::Canceled { .. })));
    for id in ["held-2", "hold-2"] {
        assert_eq!(durable.get(id).await.unwrap().unwrap().state, State::RejectedCanceled, "{id} was canceled");
    }
}

async fn a_restart_is_a_family_of_its_own(store: Arc<dyn Store>) {
    let durable = builder(&store).register(subscription).register(charge).register(report).build().unwrap();
    let handle = durable.run("sub-3", subscription, 3).await.unwrap();
    while durable.get("report-3").await.unwrap().is_none() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    durable.promises().cancel("sub-3").await.unwrap();
    assert!(matches!(handle.await, Err(Error::Canceled { .. })));
    // The detached report is an invocation of its own: restarted, it is nobody's.
    while !durable.get("report-3").await.unwrap().unwrap().state.is_settled() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let restarted = durable.promises().restart("report-3", "report-3-again").await.unwrap();
    assert_eq!((restarted.parent.as_deref(), restarted.root.as_str()), (None, "report-3-again"));
    assert!(restarted.tags.keys().all(|k| !k.starts_with("durable:")), "{:?}", restarted.tags);
    let tree = durable.promises().tree("sub-3").await.unwrap().unwrap();
    let mut ids = vec![];
    let mut nodes = vec![&tree];
    while let Some(node) = nodes.pop() {
        ids.push(node.promise.id.clone());
        nodes.extend(&node.children);
    }
    assert!(!ids.contains(&"report-3-again".to_owned()), "the restart is not in its original creator's tree: {ids:?}");
    assert!(ids.contains(&"report-3".to_owned()), "the original is: {ids:?}");
}

on_every_store!(
    a_month_long_sleep_past_the_retention_replays_without_running_anything_twice,
    cancel_reaches_what_a_finished_child_created_with_a_chosen_id,
    a_restart_is_a_family_of_its_own,
);
