//! Timeouts: a child's deadline is capped by its parent's, and a call past its deadline
//! fails with `Error::Timeout` while its body is stopped.

mod common;

use std::time::Duration;

use common::{builder, gate, memory};
use durable::State;
use durable::prelude::*;

#[durable::function]
async fn hang(_ctx: &mut Context, key: String) -> durable::Result<u32> {
    gate(&key).await;
    Ok(1)
}

#[durable::function(timeout = Duration::from_secs(10))]
async fn bounded(ctx: &mut Context, key: String) -> durable::Result<String> {
    let result = ctx.lfc(hang, key).timeout(Duration::from_secs(3600)).await;
    match result {
        Err(Error::Timeout { id }) => Ok(format!("{id} timed out")),
        other => Err(Error::terminal(format!("expected a timeout, got {other:?}"))),
    }
}

#[durable::function]
async fn patient(ctx: &mut Context, key: String) -> durable::Result<String> {
    match ctx.lfc(hang, key).timeout(Duration::from_secs(5)).await {
        Err(Error::Timeout { id }) => Ok(format!("{id} timed out")),
        other => Err(Error::terminal(format!("expected a timeout, got {other:?}"))),
    }
}

#[tokio::test(start_paused = true)]
async fn a_child_deadline_is_capped_by_the_parent_deadline() {
    let store = memory();
    let durable = builder(&store).register(bounded).build().unwrap();
    let handle = durable.run("cap", bounded, "cap".into()).await.unwrap();
    let error = handle.await.unwrap_err();
    assert!(matches!(&error, Error::Timeout { id } if id == "cap"), "the parent times out: {error:?}");
    let root = store.get("cap").await.unwrap().unwrap();
    let child = store.get("cap.1").await.unwrap().unwrap();
    assert_eq!(child.timeout_at, root.timeout_at, "an hour is capped at the parent's ten seconds");
    assert_eq!(child.state, State::RejectedTimedout);
}

#[tokio::test(start_paused = true)]
async fn a_call_past_its_deadline_fails_with_timeout() {
    let store = memory();
    let durable = builder(&store).register(patient).build().unwrap();
    let started = tokio::time::Instant::now();
    let message = durable.run("late", patient, "late".into()).await.unwrap().await.unwrap();
    assert_eq!(message, "late.1 timed out");
    let waited = started.elapsed();
    assert!(waited >= Duration::from_secs(5) && waited < Duration::from_secs(6), "{waited:?}");
    assert_eq!(store.get("late").await.unwrap().unwrap().state, State::Resolved);
}

/// Hangs; its attribute bounds every call of it at five seconds.
#[durable::function(timeout = Duration::from_secs(5))]
async fn slow(_ctx: &mut Context, key: String) -> durable::Result<u32> {
    gate(&key).await;
    Ok(1)
}

fn timed_out<T: std::fmt::Debug>(result: durable::Result<T>) -> String {
    match result {
        Err(Error::Timeout { id }) => id,
        other => format!("not a timeout: {other:?}"),
    }
}

#[durable::function]
async fn calls_slow_every_way(ctx: &mut Context) -> durable::Result<Vec<String>> {
    let local = ctx.lfi(slow, "lfi".into()).await?;
    let remote = ctx.rfi(slow, "rfi".into()).await?;
    ctx.detached(slow, "detached".into()).await?;
    let called = timed_out(ctx.lfc(slow, "lfc".into()).await);
    let remote_called = timed_out(ctx.rfc(slow, "rfc".into()).await);
    Ok(vec![timed_out(local.await), timed_out(remote.await), called, remote_called])
}

#[tokio::test(start_paused = true)]
async fn the_attribute_timeout_bounds_every_kind_of_call() {
    let store = memory();
    let durable = builder(&store).register(calls_slow_every_way).register(slow).build().unwrap();
    let started = tokio::time::Instant::now();
    let ids = durable.run("every", calls_slow_every_way, ()).await.unwrap().await.unwrap();
    assert_eq!(ids, ["every.1", "every.2", "every.4", "every.5"]);
    assert!(started.elapsed() < Duration::from_secs(60), "five-second timeouts, not hours: {:?}", started.elapsed());
    for id in ["every.1", "every.2", "every.3", "every.4", "every.5"] {
        let p = store.get(id).await.unwrap().unwrap();
        assert_eq!(p.timeout_at - p.created_at, 5_000, "{id} has the attribute's timeout");
        assert_eq!(p.state, State::RejectedTimedout, "{id}");
    }
    let run = durable.run("direct", slow, "direct".into()).await.unwrap();
    assert_eq!(timed_out(run.await), "direct", "Durable::run reads it too");
}
