//! A panic in a body fails that attempt, as an `Err` would: the function's retry
//! policy decides whether another runs, and once it gives up the caller gets the
//! error and may handle it. Platform faults (here a result that does not encode) are
//! what release the task with backoff, and a task that keeps faulting halts with its
//! error visible.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

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

#[tokio::test(start_paused = true)]
async fn a_panic_fails_the_attempt_and_the_retry_policy_runs_another() {
    let store = memory();
    let durable = builder(&store).register(shaky).build().unwrap();
    assert_eq!(durable.run("shaky", shaky, "shaky".into()).await.unwrap().await.unwrap(), 7);
    assert_eq!(runs("shaky"), 2);
    let task = store.task("shaky").await.unwrap().unwrap();
    assert_eq!((task.state, task.faults), (TaskState::Fulfilled, 0), "a failed attempt, not a fault");
}

#[durable::function(retry = Retry::Never)]
async fn fragile(_ctx: &mut Context, key: String) -> durable::Result<u32> {
    ran(&key);
    panic!("the card reader fell over");
}

#[durable::function]
async fn refund(_ctx: &mut Context, key: String) -> durable::Result<String> {
    ran(&format!("{key}:refund"));
    Ok("refunded".into())
}

/// Calls `fragile` locally or on the `payments` group, and compensates when it fails.
#[durable::function]
async fn order(ctx: &mut Context, key: String, remote: bool) -> durable::Result<String> {
    let charged = if remote {
        ctx.rfc(fragile, key.clone()).target("poll://any@payments").await
    } else {
        ctx.lfc(fragile, key.clone()).await
    };
    match charged {
        Ok(_) => Ok("charged".into()),
        Err(e) => {
            let refund = ctx.lfc(refund, key).await?;
            Ok(format!("{refund} after: {e}"))
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_panic_under_retry_never_is_one_attempt_and_an_error_the_parent_handles() {
    let store = memory();
    let _payments = builder(&store).group("payments").register(fragile).build().unwrap();
    let shop = builder(&store).register(order).register(fragile).build().unwrap();
    for (key, remote) in [("local", false), ("remote", true)] {
        let outcome = shop.run(key, order, (key.into(), remote)).await.unwrap().await.unwrap();
        assert_eq!(outcome, format!("refunded after: {key}.1 panicked: the card reader fell over"), "{key}");
        assert_eq!(runs(key), 1, "{key}: Retry::Never is one attempt");
        assert_eq!(runs(&format!("{key}:refund")), 1, "{key}: the compensation ran");
        let child = store.get(&format!("{key}.1")).await.unwrap().unwrap();
        assert_eq!(child.state, State::Rejected, "{key}");
    }
}

#[durable::function(retry = Retry::Constant { delay: Duration::from_secs(1), max_attempts: 3 })]
async fn broken(_ctx: &mut Context, key: String) -> durable::Result<u32> {
    ran(&key);
    panic!("always broken");
}

#[tokio::test(start_paused = true)]
async fn a_body_that_always_panics_is_rejected_once_its_policy_gives_up() {
    let store = memory();
    let durable = builder(&store).register(broken).build().unwrap();
    let error = durable.run("broken", broken, "broken".into()).await.unwrap().await.unwrap_err();
    assert!(
        matches!(&error, Error::Application { message, .. } if message == "broken panicked: always broken"),
        "{error:?}"
    );
    assert_eq!(runs("broken"), 3, "the policy's three attempts");
    assert_eq!(store.get("broken").await.unwrap().unwrap().state, State::Rejected);
}

/// A result JSON cannot hold (its map keys are not strings) while `key` has run at
/// most `bad` times: a platform fault, not a failed attempt.
fn result(key: &str, bad: u32) -> BTreeMap<(u32, u32), u32> {
    if ran(key) <= bad { BTreeMap::from([((1, 2), 3)]) } else { BTreeMap::new() }
}

#[durable::function]
async fn unencodable(_ctx: &mut Context, key: String) -> durable::Result<BTreeMap<(u32, u32), u32>> {
    Ok(result(&key, u32::MAX))
}

#[durable::function]
async fn calls_unencodable(ctx: &mut Context, key: String) -> durable::Result<usize> {
    let handle = ctx.lfi(unencodable, key).await?;
    Ok(handle.await?.len())
}

#[tokio::test(start_paused = true)]
async fn a_task_that_keeps_faulting_halts_with_its_error() {
    let store = memory();
    let durable = builder(&store).register(calls_unencodable).build().unwrap();
    let error = durable.run("poison", calls_unencodable, "poison".into()).await.unwrap().await.unwrap_err();
    assert!(
        matches!(&error, Error::Halted { id, reason } if id == "poison" && reason.contains("does not encode")),
        "{error:?}"
    );
    assert_eq!(runs("poison"), 5, "five faults, then it halts");
    assert_eq!(store.task("poison").await.unwrap().unwrap().state, TaskState::Halted);
    assert_eq!(store.get("poison").await.unwrap().unwrap().state, State::Pending, "nothing settled with garbage");
    assert_eq!(store.get("poison.1").await.unwrap().unwrap().state, State::Pending);
}

/// Faults on its first six runs: five halt it, and one more after it is resumed.
#[durable::function]
async fn stubborn(_ctx: &mut Context, key: String) -> durable::Result<BTreeMap<(u32, u32), u32>> {
    Ok(result(&key, 6))
}

#[tokio::test(start_paused = true)]
async fn a_resumed_task_gets_a_fresh_budget_of_faults() {
    let store = memory();
    let durable = builder(&store).register(stubborn).build().unwrap();
    let error = durable.run("stubborn", stubborn, "stubborn".into()).await.unwrap().await.unwrap_err();
    assert!(matches!(error, Error::Halted { .. }), "{error:?}");
    // A deploy: a new worker of the group resumes it; one more fault is not a halt.
    let halted = store.task("stubborn").await.unwrap().unwrap().version;
    let _deploy = builder(&store).register(stubborn).build().unwrap();
    while store.task("stubborn").await.unwrap().unwrap().version == halted {
        tokio::task::yield_now().await;
    }
    let handle = durable.rpc("stubborn", stubborn, "stubborn".into()).await.unwrap();
    assert_eq!(handle.await.unwrap(), BTreeMap::new());
    assert_eq!(runs("stubborn"), 7);
}
