//! Routing: `uni@group/pid` waits for that worker, across its absence; `any@group/pid`
//! goes to any worker of the group once the preference window passes; a malformed
//! target fails at the call; the default target is the caller's group.

mod common;

use std::sync::Arc;
use std::time::Duration;

use durable::prelude::*;
use durable::{State, TaskState};

#[durable::function(name = "whoami")]
async fn whoami_lhs(_ctx: &mut Context) -> durable::Result<String> {
    Ok("lhs".into())
}

#[durable::function(name = "whoami")]
async fn whoami_rhs(_ctx: &mut Context) -> durable::Result<String> {
    Ok("rhs".into())
}

fn whoami() -> Remote<(), String> {
    Remote::named("whoami")
}

fn worker(store: &Arc<dyn Store>, pid: &str) -> Durable {
    let builder = Durable::builder().store(store.clone()).group("exp").pid(pid);
    let builder = if pid == "lhs" { builder.register(whoami_lhs) } else { builder.register(whoami_rhs) };
    builder.build().unwrap()
}

async fn a_uni_task_waits_for_its_pid(store: Arc<dyn Store>) {
    let client = Durable::builder().store(store.clone()).group("client").build().unwrap();
    let _rhs = worker(&store, "rhs");
    let handle = client.rpc("uni", whoami(), ()).target("poll://uni@exp/lhs").await.unwrap();
    tokio::time::sleep(Duration::from_secs(3600)).await;
    assert_eq!(store.get("uni").await.unwrap().unwrap().state, State::Pending, "rhs never takes it");
    assert_eq!(store.task("uni").await.unwrap().unwrap().state, TaskState::Pending);

    // lhs "restarts": the same pid, a new process.
    let first = worker(&store, "lhs");
    first.shutdown().await.unwrap();
    let _lhs = worker(&store, "lhs");
    assert_eq!(handle.await.unwrap(), "lhs");
}

async fn an_any_task_goes_to_the_group_after_the_window(store: Arc<dyn Store>) {
    let client = Durable::builder().store(store.clone()).group("client").build().unwrap();
    let _rhs = worker(&store, "rhs");
    let started = tokio::time::Instant::now();
    let handle = client.rpc("any", whoami(), ()).target("poll://any@exp/lhs").await.unwrap();
    assert_eq!(handle.await.unwrap(), "rhs");
    let waited = started.elapsed();
    assert!(waited >= Duration::from_secs(1) && waited < Duration::from_secs(2), "one preference window: {waited:?}");

    let _lhs = worker(&store, "lhs");
    let handle = client.rpc("pref", whoami(), ()).target("poll://any@exp/lhs").await.unwrap();
    assert_eq!(handle.await.unwrap(), "lhs", "the preferred pid takes it when it is there");
}

#[durable::function]
async fn call_with_target(ctx: &mut Context, target: String) -> durable::Result<String> {
    ctx.rfc(whoami(), ()).target(&target).await
}

async fn a_malformed_target_fails_at_the_call(store: Arc<dyn Store>) {
    let client =
        Durable::builder().store(store.clone()).group("exp").pid("lhs").register(call_with_target).build().unwrap();
    for (i, (target, reason)) in [
        ("http://exp", "starts with poll://"),
        ("poll://uni@exp", "uni@ needs a pid"),
        ("poll://some@exp", "unknown mode \"some\""),
        ("poll://any@", "the group must be a non-empty name"),
        ("poll://any@exp/", "the pid must be a non-empty name"),
    ]
    .into_iter()
    .enumerate()
    {
        let id = format!("bad-{i}");
        let error = client.run(&id, call_with_target, target.into()).await.unwrap().await.unwrap_err();
        let message = error.to_string();
        assert!(message.contains(target) && message.contains(reason), "{target}: {message}");
        assert!(matches!(&error, Error::InvalidTarget { target: t, .. } if t == target), "its own kind: {error:?}");
        assert!(store.get(&format!("{id}.1")).await.unwrap().is_none(), "nothing was written for {target}");
    }
    let error = client.rpc("bad-rpc", whoami(), ()).target("poll:/exp").await.unwrap_err();
    assert!(matches!(error, Error::InvalidTarget { .. }), "{error:?}");
    assert!(store.get("bad-rpc").await.unwrap().is_none());
}

#[durable::function]
async fn call_default(ctx: &mut Context) -> durable::Result<String> {
    ctx.rfc(whoami(), ()).await
}

async fn the_default_target_is_the_callers_group(store: Arc<dyn Store>) {
    let worker = Durable::builder()
        .store(store.clone())
        .group("exp")
        .pid("rhs")
        .register(whoami_rhs)
        .register(call_default)
        .build()
        .unwrap();
    assert_eq!(worker.run("default", call_default, ()).await.unwrap().await.unwrap(), "rhs");
    assert_eq!(store.task("default.1").await.unwrap().unwrap().target.to_string(), "poll://any@exp");
}

on_every_store!(
    a_uni_task_waits_for_its_pid,
    an_any_task_goes_to_the_group_after_the_window,
    a_malformed_target_fails_at_the_call,
    the_default_target_is_the_callers_group,
);
