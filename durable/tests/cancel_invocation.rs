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
    // With a deadline of its own, a local child is in the store while it runs.
    let local = ctx.lfi(never, ()).timeout(Duration::from_secs(3600)).await?;
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

/// A detached invocation that starts remote work and returns without awaiting it.
#[durable::function]
async fn spawner(ctx: &mut Context) -> durable::Result<String> {
    let started = ctx.rfi(never, ()).target("poll://any@nobody").await?;
    Ok(started.id().to_owned())
}

#[durable::function]
async fn starts_a_spawner(ctx: &mut Context) -> durable::Result<u32> {
    ctx.detached(spawner, ()).await?;
    ctx.promise::<u32>().await?.await
}

async fn cancelling_spares_what_a_finished_detached_invocation_started(store: Arc<dyn Store>) {
    let durable = Durable::builder().store(store.clone()).register(starts_a_spawner).register(spawner).build().unwrap();
    let handle = durable.run("d", starts_a_spawner, ()).await.unwrap();
    while store.get("d.2").await.unwrap().is_none()
        || store.get("d.1").await.unwrap().is_none_or(|p| p.state == State::Pending)
    {
        tokio::task::yield_now().await;
    }
    assert_eq!(store.get("d.1.1").await.unwrap().unwrap().state, State::Pending, "the spawner's work is pending");
    durable.promises().cancel("d").await.unwrap();
    assert!(matches!(handle.await, Err(Error::Canceled { .. })));
    assert_eq!(store.get("d.2").await.unwrap().unwrap().state, State::RejectedCanceled, "d's own child");
    assert_eq!(
        store.get("d.1.1").await.unwrap().unwrap().state,
        State::Pending,
        "the detached invocation is settled, and what it started is still its own"
    );
}

/// Asks a person for approval under a chosen id, from its second attempt (its
/// children live under `{id}.r1.`), and starts a chosen-id remote call and a
/// chosen-id detached job.
#[durable::function(retry = Retry::Constant { delay: Duration::from_secs(1), max_attempts: 2 })]
async fn approval(ctx: &mut Context, order: u32) -> durable::Result<bool> {
    if ctx.attempt() == 1 {
        return Err(Error::new("the first attempt fails"));
    }
    let label = ctx.rfi(never, ()).id(format!("label-{order}")).target("poll://any@nobody").await?;
    ctx.detached(never, ()).id(format!("audit-{order}")).target("poll://any@nobody").await?;
    let approved = ctx.promise::<bool>().id(format!("approval-{order}")).await?;
    label.await?;
    approved.await
}

async fn chosen_ids_are_found_by_their_creator_and_canceled_with_it(store: Arc<dyn Store>) {
    let durable = Durable::builder().store(store.clone()).register(approval).build().unwrap();
    let handle = durable.run("order-5", approval, 5).await.unwrap();
    // Virtual time passes while this waits: the first attempt's backoff is a second.
    while store.get("approval-5").await.unwrap().is_none() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let search = durable::store::Search { root: Some("order-5".to_owned()), ..Default::default() };
    let family = durable.promises().search(search).await.unwrap().promises;
    let created: Vec<&str> =
        family.iter().filter(|p| p.parent.as_deref() == Some("order-5")).map(|p| p.id.as_str()).collect();
    assert_eq!(
        created,
        ["approval-5", "audit-5", "label-5", "order-5.r1"],
        "a search of the family finds every chosen id, each with its creator"
    );

    durable.promises().cancel("order-5").await.unwrap();
    assert!(matches!(handle.await, Err(Error::Canceled { .. })));
    for id in ["approval-5", "label-5"] {
        assert_eq!(store.get(id).await.unwrap().unwrap().state, State::RejectedCanceled, "{id}");
    }
    assert_eq!(store.get("audit-5").await.unwrap().unwrap().state, State::Pending, "a detached job lives on");
}

on_every_store!(
    chosen_ids_are_found_by_their_creator_and_canceled_with_it,
    cancelling_spares_what_a_finished_detached_invocation_started,
    cancelling_an_invocation_cancels_its_children,
    an_awaiter_of_a_canceled_child_gets_canceled,
    a_detached_invocation_outlives_its_caller,
);
