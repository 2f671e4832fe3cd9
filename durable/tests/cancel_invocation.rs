//! Cancellation rejects a promise as canceled, stops its task, reaches its awaiters as
//! `Error::Canceled`, and cancels an invocation's pending children, but not the
//! detached invocations it started.

mod common;

use std::sync::Arc;
use std::time::Duration;

use durable::prelude::*;
use durable::{State, TaskState};

#[durable::function]
async fn never(_ctx: &mut Context) -> durable::Result<u32> {
    std::future::pending::<()>().await;
    Ok(0)
}

#[durable::function]
async fn parent(ctx: &mut Context) -> durable::Result<u32> {
    let detached = ctx.detached(never, ()).target("poll://any@nobody").await?;
    assert_eq!(detached, format!("{}.1", ctx.id()));
    let remote = ctx.rfi(never, ()).target("poll://any@nobody").await?;
    let local = ctx.lfi(never, ()).await?;
    let (a, b) = tokio::join!(remote, local);
    Ok(a? + b?)
}

async fn cancelling_an_invocation_cancels_its_children(store: Arc<dyn Store>) {
    let durable = Durable::builder().store(store.clone()).register(parent).register(never).build().unwrap();
    let handle = durable.run("c", parent, ()).await.unwrap();
    while store.get("c.3").await.unwrap().is_none() {
        tokio::task::yield_now().await;
    }
    let canceled = durable.promises().cancel("c").await.unwrap();
    assert_eq!(canceled.state, State::RejectedCanceled);
    let error = handle.await.unwrap_err();
    assert!(matches!(&error, Error::Canceled { id } if id == "c"), "{error:?}");
    for child in ["c.2", "c.3"] {
        assert_eq!(store.get(child).await.unwrap().unwrap().state, State::RejectedCanceled, "{child}");
    }
    assert_eq!(
        store.task("c.2").await.unwrap().unwrap().state,
        TaskState::Fulfilled,
        "its task is no longer delivered"
    );
    assert_eq!(store.task("c").await.unwrap().unwrap().state, TaskState::Fulfilled);
    assert_eq!(store.get("c.1").await.unwrap().unwrap().state, State::Pending, "the detached invocation lives on");
    // Nothing more happens: the canceled tree stays as it is.
    tokio::time::sleep(Duration::from_secs(120)).await;
    assert_eq!(store.get("c.4").await.unwrap(), None);
}

#[durable::function]
async fn await_remote(ctx: &mut Context) -> durable::Result<String> {
    match ctx.rfc(never, ()).target("poll://any@nobody").await {
        Err(Error::Canceled { id }) => Ok(format!("{id} was canceled")),
        other => Err(Error::terminal(format!("{other:?}"))),
    }
}

async fn an_awaiter_of_a_canceled_child_gets_canceled(store: Arc<dyn Store>) {
    let durable = Durable::builder().store(store.clone()).register(await_remote).build().unwrap();
    let handle = durable.run("w", await_remote, ()).await.unwrap();
    while store.get("w.1").await.unwrap().is_none() {
        tokio::task::yield_now().await;
    }
    durable.promises().cancel("w.1").await.unwrap();
    assert_eq!(handle.await.unwrap(), "w.1 was canceled");
}

#[durable::function(timeout = Duration::from_secs(60))]
async fn short_lived(ctx: &mut Context) -> durable::Result<String> {
    ctx.detached(slow, ()).id("background-job").timeout(Duration::from_secs(3600)).await
}

#[durable::function]
async fn slow(ctx: &mut Context) -> durable::Result<u32> {
    ctx.sleep(Duration::from_secs(600)).await?;
    Ok(7)
}

async fn a_detached_invocation_outlives_its_caller(store: Arc<dyn Store>) {
    let durable = Durable::builder().store(store.clone()).register(short_lived).register(slow).build().unwrap();
    assert_eq!(durable.run("s", short_lived, ()).await.unwrap().await.unwrap(), "background-job");
    let caller = store.get("s").await.unwrap().unwrap();
    let job = store.get("background-job").await.unwrap().unwrap();
    assert!(job.timeout_at > caller.timeout_at, "its timeout is its own, not capped by the caller's");
    let handle = durable.rpc("background-job", slow, ()).await.unwrap();
    assert_eq!(handle.await.unwrap(), 7, "it finished after its caller did");
}

on_every_store!(
    cancelling_an_invocation_cancels_its_children,
    an_awaiter_of_a_canceled_child_gets_canceled,
    a_detached_invocation_outlives_its_caller,
);
