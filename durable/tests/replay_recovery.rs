//! A runtime that dies mid-invocation is replaced by another over the same store,
//! which replays the settled steps without running them again and finishes.

mod common;

use std::time::Duration;

use common::{arrived, builder, crash, gate, line, memory, open, ran, runs, tree};
use durable::State;
use durable::prelude::*;

#[durable::function]
async fn step(_ctx: &mut Context, key: String, k: u32) -> durable::Result<u32> {
    ran(&format!("{key}:{k}"));
    Ok(k * 10)
}

#[durable::function]
async fn blocker(_ctx: &mut Context, key: String) -> durable::Result<()> {
    gate(&key).await;
    Ok(())
}

#[durable::function]
async fn flow(ctx: &mut Context, key: String) -> durable::Result<u32> {
    let a = ctx.lfc(step, (key.clone(), 1)).await?;
    let b = ctx.lfc(step, (key.clone(), 2)).await?;
    ctx.lfc(blocker, key.clone()).await?;
    let c = ctx.lfc(step, (key, 3)).await?;
    Ok(a + b + c)
}

#[tokio::test(start_paused = true)]
async fn a_new_runtime_takes_over_after_the_lease_and_replays() {
    let store = memory();
    let line = line(&store);
    let first = Durable::builder().store(line.clone()).register(flow).build().unwrap();
    let _dies_with_it = first.run("rec", flow, "rec".into()).await.unwrap();
    arrived("rec").await;
    crash(first, &line); // nothing is released: the lease must expire
    open("rec");

    let started = tokio::time::Instant::now();
    let second = builder(&store).register(flow).build().unwrap();
    // The dead runtime's handle died with it: ask the live one.
    assert_eq!(second.run("rec", flow, "rec".into()).await.unwrap().await.unwrap(), 60);
    assert!(started.elapsed() >= Duration::from_secs(30), "the task was taken over only after its lease expired");
    assert_eq!((runs("rec:1"), runs("rec:2"), runs("rec:3")), (1, 1, 1), "settled steps replay without running again");
    let ids: Vec<_> = tree(&*store, "rec").await.into_iter().map(|(id, state, _)| (id, state)).collect();
    let expected = ["rec", "rec.1", "rec.2", "rec.3", "rec.4"].map(|id| (id.to_owned(), State::Resolved));
    assert_eq!(ids, expected);
}

#[tokio::test(start_paused = true)]
async fn shutdown_hands_the_task_over_at_once() {
    let store = memory();
    let first = builder(&store).register(flow).build().unwrap();
    let handle = first.run("shut", flow, "shut".into()).await.unwrap();
    arrived("shut").await;
    first.shutdown().await.unwrap();
    open("shut");

    let started = tokio::time::Instant::now();
    let _second = builder(&store).register(flow).build().unwrap();
    assert_eq!(handle.await.unwrap(), 60);
    assert!(started.elapsed() < Duration::from_secs(1), "a released task needs no lease to expire");
}

#[tokio::test(start_paused = true)]
async fn the_same_id_never_runs_twice() {
    let store = memory();
    open("twice");
    let durable = builder(&store).register(flow).build().unwrap();
    let a = durable.run("twice", flow, "twice".into()).await.unwrap();
    let b = durable.run("twice", flow, "twice".into()).await.unwrap();
    assert_eq!((a.await.unwrap(), b.await.unwrap()), (60, 60));
    let c = durable.run("twice", flow, "twice".into()).await.unwrap();
    assert_eq!(c.await.unwrap(), 60);
    assert_eq!(runs("twice:1"), 1);
    let state = durable.get("twice").await.unwrap().unwrap();
    assert_eq!(state.value::<u32>().unwrap().unwrap(), 60);
}

#[tokio::test(start_paused = true)]
async fn several_runtimes_share_one_store() {
    let store = memory();
    open("share-a");
    open("share-b");
    let a = builder(&store).register(flow).build().unwrap();
    let b = builder(&store).register(flow).build().unwrap();
    let ha = a.run("share-a", flow, "share-a".into()).await.unwrap();
    let hb = b.run("share-b", flow, "share-b".into()).await.unwrap();
    assert_eq!((ha.await.unwrap(), hb.await.unwrap()), (60, 60));
    // Each attaches to the other's invocation.
    assert_eq!(b.run("share-a", flow, "share-a".into()).await.unwrap().await.unwrap(), 60);
}
