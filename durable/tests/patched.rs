//! `ctx.patched`: an invocation recorded with the old code, half done, replays under
//! the new code and finishes on the old path; a new one takes the new path; the
//! answer is recorded, replayed, and the same each time a body asks.

mod common;

use common::{arrived, builder, gate, memory, open, ran, runs, tree};
use durable::State;
use durable::prelude::*;

#[durable::function]
async fn ship(_ctx: &mut Context, order: u64) -> durable::Result<u64> {
    Ok(order * 10)
}

#[durable::function]
async fn notify(_ctx: &mut Context, order: u64) -> durable::Result<String> {
    ran(&format!("notify-{order}"));
    Ok(format!("notified {order}"))
}

#[durable::function]
async fn wait_for(_ctx: &mut Context, key: String) -> durable::Result<()> {
    gate(&key).await;
    Ok(())
}

/// The old code: ship, then wait.
#[durable::function(name = "fulfil")]
async fn fulfil_old(ctx: &mut Context, order: u64) -> durable::Result<String> {
    let shipped = ctx.lfc(ship, order).await?;
    ctx.lfc(wait_for, format!("fulfil-{order}")).await?;
    Ok(format!("shipped {shipped}"))
}

/// The new code notifies first, behind a patch, and asks twice.
#[durable::function(name = "fulfil")]
async fn fulfil_new(ctx: &mut Context, order: u64) -> durable::Result<String> {
    let patched = ctx.patched("notify-first").await?;
    if patched {
        ctx.lfc(notify, order).await?;
    }
    let shipped = ctx.lfc(ship, order).await?;
    ctx.lfc(wait_for, format!("fulfil-{order}")).await?;
    // Past the end of an old history, the same question has the same answer.
    assert_eq!(ctx.patched("notify-first").await?, patched, "asked again, a patch answers the same");
    Ok(format!("shipped {shipped}{}", if patched { ", notified" } else { "" }))
}

fn ids(tree: &[(String, State, Option<String>)]) -> Vec<&str> {
    tree.iter().map(|(id, ..)| id.as_str()).collect()
}

#[tokio::test(start_paused = true)]
async fn a_history_recorded_before_the_patch_finishes_on_the_old_path() {
    let store = memory();
    let old = builder(&store).register(fulfil_old).build().unwrap();
    let handle = old.run("order-1", fulfil_old, 1).await.unwrap();
    arrived("fulfil-1").await;
    drop(old); // the old deploy stops with the invocation half done
    // The wait in flight has written nothing under it: it is recorded when it ends.
    assert_eq!(ids(&tree(&*store, "order-1").await), ["order-1", "order-1.1"]);

    open("fulfil-1");
    let new = builder(&store).register(fulfil_new).build().unwrap();
    assert_eq!(handle.await.unwrap(), "shipped 10", "the old path, to the end");
    assert_eq!(runs("notify-1"), 0, "the new code's call was not made");
    assert_eq!(
        ids(&tree(&*store, "order-1").await),
        ["order-1", "order-1.1", "order-1.2"],
        "nothing recorded a yes, and the old ids held"
    );

    // A new invocation takes the new path, and records that it did.
    open("fulfil-2");
    assert_eq!(new.run("order-2", fulfil_new, 2).await.unwrap().await.unwrap(), "shipped 20, notified");
    assert_eq!(runs("notify-2"), 1);
    let recorded = tree(&*store, "order-2").await;
    assert_eq!(ids(&recorded), ["order-2", "order-2.1", "order-2.2", "order-2.3", "order-2.patched:notify-first"]);
    let marker = recorded.iter().find(|(id, ..)| id.ends_with("notify-first")).unwrap();
    assert_eq!((marker.1, marker.2.as_deref()), (State::Resolved, Some("true")));
}

/// The old code's first call waits on a person (`{id}.1`): pending, so in no preload.
#[durable::function(name = "approve")]
async fn approve_old(ctx: &mut Context, order: u64) -> durable::Result<bool> {
    let answer = ctx.promise::<bool>().await?;
    let approved = answer.await?;
    ctx.lfc(ship, order).await?;
    Ok(approved)
}

#[durable::function(name = "approve")]
async fn approve_new(ctx: &mut Context, order: u64) -> durable::Result<bool> {
    if ctx.patched("notify-first").await? {
        ctx.lfc(notify, order).await?;
    }
    let answer = ctx.promise::<bool>().await?;
    let approved = answer.await?;
    ctx.lfc(ship, order).await?;
    Ok(approved)
}

#[tokio::test(start_paused = true)]
async fn a_history_whose_next_call_is_pending_is_old_too() {
    let store = memory();
    let old = builder(&store).register(approve_old).build().unwrap();
    let handle = old.run("approve-3", approve_old, 3).await.unwrap();
    while old.get("approve-3.1").await.unwrap().is_none() {
        tokio::task::yield_now().await;
    }
    drop(old);

    let new = builder(&store).register(approve_new).build().unwrap();
    // Let the new deploy take the task over and replay it up to the wait.
    tokio::time::sleep(std::time::Duration::from_secs(60)).await;
    new.promises().resolve("approve-3.1", &true).await.unwrap();
    assert!(handle.await.unwrap());
    assert_eq!(runs("notify-3"), 0, "the pending call numbered next made the history old");
    assert!(new.get("approve-3.patched:notify-first").await.unwrap().is_none());
}

#[durable::function]
async fn badly_named(ctx: &mut Context, _x: u64) -> durable::Result<bool> {
    ctx.patched("two.parts").await
}

#[tokio::test(start_paused = true)]
async fn a_malformed_patch_name_is_an_error_that_says_so() {
    let store = memory();
    let durable = builder(&store).register(badly_named).build().unwrap();
    let error = durable.run("bad-name", badly_named, 0).await.unwrap().await.unwrap_err();
    let message = error.to_string();
    assert!(message.contains("\"two.parts\"") && message.contains("a patch name may not"), "{message}");
}

/// The old code of a second change: a call with a chosen id first, then ship, then
/// wait.
#[durable::function(name = "label")]
async fn label_old(ctx: &mut Context, order: u64) -> durable::Result<String> {
    ctx.lfc(ship, order).id(format!("label-{order}")).await?;
    let shipped = ctx.lfc(ship, order).await?;
    ctx.lfc(wait_for, format!("label-{order}")).await?;
    Ok(format!("shipped {shipped}"))
}

/// The change behind a patch, before the chosen-id call.
#[durable::function(name = "label")]
async fn label_new(ctx: &mut Context, order: u64) -> durable::Result<String> {
    if ctx.patched("notify-first").await? {
        ctx.lfc(notify, order).await?;
    }
    ctx.lfc(ship, order).id(format!("label-{order}")).await?;
    let shipped = ctx.lfc(ship, order).await?;
    ctx.lfc(wait_for, format!("label-{order}")).await?;
    Ok(format!("shipped {shipped}"))
}

#[tokio::test(start_paused = true)]
async fn a_history_whose_next_call_took_a_chosen_id_is_old_by_the_calls_after_it() {
    let store = memory();
    let old = builder(&store).register(label_old).build().unwrap();
    let handle = old.run("order-7", label_old, 7).await.unwrap();
    arrived("label-7").await;
    drop(old);
    // The chosen-id call took number 1 but not its id: the history holds `order-7.2`.
    assert_eq!(ids(&tree(&*store, "order-7").await), ["order-7", "order-7.2"]);

    open("label-7");
    let _new = builder(&store).register(label_new).build().unwrap();
    assert_eq!(handle.await.unwrap(), "shipped 70", "the old path: no nondeterminism at order-7.2");
    assert_eq!(runs("notify-7"), 0, "the new code's call was not made");
}
