//! A panic in user code never settles a promise: the task is released and retried
//! with backoff, and a task that keeps panicking halts with its error visible.

mod common;

use common::{builder, memory, ran, runs};
use durable::prelude::*;
use durable::{State, TaskState};

#[durable::function]
async fn shaky(_ctx: &mut Context, key: String) -> durable::Result<u32> {
    if ran(&key) == 1 {
        panic!("first run of {key} panics");
    }
    Ok(7)
}

#[durable::function]
async fn broken(_ctx: &mut Context, key: String) -> durable::Result<u32> {
    ran(&key);
    panic!("always broken");
}

#[durable::function]
async fn calls_broken(ctx: &mut Context, key: String) -> durable::Result<u32> {
    let handle = ctx.lfi(broken, key).await?;
    handle.await
}

#[tokio::test(start_paused = true)]
async fn a_panic_releases_the_task_and_a_retry_finishes_it() {
    let store = memory();
    let durable = builder(&store).register(shaky).build().unwrap();
    assert_eq!(durable.run("shaky", shaky, "shaky".into()).await.unwrap().await.unwrap(), 7);
    assert_eq!(runs("shaky"), 2);
    let task = store.task("shaky").await.unwrap().unwrap();
    assert_eq!(task.faults, 1);
    assert!(task.error.unwrap().contains("first run of shaky panics"));
}

#[tokio::test(start_paused = true)]
async fn a_task_that_keeps_panicking_halts_with_its_error() {
    let store = memory();
    let durable = builder(&store).register(calls_broken).build().unwrap();
    let error = durable.run("poison", calls_broken, "poison".into()).await.unwrap().await.unwrap_err();
    assert!(
        matches!(&error, Error::Halted { id, reason } if id == "poison" && reason.contains("always broken")),
        "{error:?}"
    );
    assert_eq!(runs("poison"), 5, "five faults, then it halts");
    assert_eq!(store.task("poison").await.unwrap().unwrap().state, TaskState::Halted);
    assert_eq!(store.get("poison").await.unwrap().unwrap().state, State::Pending, "nothing settled with garbage");
    assert_eq!(store.get("poison.1").await.unwrap().unwrap().state, State::Pending);
}

/// Panics on its first six runs: five halt it, and one more after it is resumed.
#[durable::function]
async fn stubborn(_ctx: &mut Context, key: String) -> durable::Result<u32> {
    if ran(&key) <= 6 {
        panic!("run {} of stubborn panics", runs(&key));
    }
    Ok(9)
}

#[tokio::test(start_paused = true)]
async fn a_resumed_task_gets_a_fresh_budget_of_faults() {
    let store = memory();
    let durable = builder(&store).register(stubborn).build().unwrap();
    let error = durable.run("stubborn", stubborn, "stubborn".into()).await.unwrap().await.unwrap_err();
    assert!(matches!(error, Error::Halted { .. }), "{error:?}");
    // A deploy: a new worker of the group resumes it; one more panic is a fault, not a halt.
    let halted = store.task("stubborn").await.unwrap().unwrap().version;
    let _deploy = builder(&store).register(stubborn).build().unwrap();
    while store.task("stubborn").await.unwrap().unwrap().version == halted {
        tokio::task::yield_now().await;
    }
    let handle = durable.rpc("stubborn", stubborn, "stubborn".into()).await.unwrap();
    assert_eq!(handle.await.unwrap(), 9);
    assert_eq!(runs("stubborn"), 7);
}
