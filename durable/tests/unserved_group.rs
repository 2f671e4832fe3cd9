//! A call routed to a group that no live worker serves is visible, not silent: workers
//! announce themselves, `Promises::unserved` lists such tasks, and a caller may ask for
//! an error after a while. From outside (`Rpc`) the task itself stays: a worker of that
//! group that starts later runs it. From a body (`Call::unserved_after`) the failure is
//! the call's recorded result: replayed, and never run later.

mod common;

use std::time::Duration;

use common::{builder, crash, line, memory, ran, runs};
use durable::prelude::*;
use durable::{Promise, TaskState};

#[durable::function(name = "charge")]
async fn charge(_ctx: &mut Context, cents: u64) -> durable::Result<u64> {
    Ok(cents)
}

/// Charges through group `payment`, and says so if nobody serves it within 30 s.
#[durable::function]
async fn checkout(ctx: &mut Context, cents: u64) -> durable::Result<String> {
    let charged = ctx.rfc(charge, cents).target("poll://any@payment").unserved_after(Duration::from_secs(30)).await;
    match charged {
        Ok(cents) => Ok(format!("charged {cents}")),
        Err(Error::Unserved { group, waited, .. }) => Ok(format!("no {group} after {waited} s")),
        Err(e) => Err(e),
    }
}

/// A charge that counts its runs and takes a minute.
#[durable::function(name = "charge")]
async fn slow_charge(_ctx: &mut Context, cents: u64) -> durable::Result<u64> {
    ran("slow-charge");
    tokio::time::sleep(Duration::from_secs(60)).await;
    Ok(cents)
}

/// Counts its runs: must never run.
#[durable::function(name = "charge")]
async fn counted_charge(_ctx: &mut Context, cents: u64) -> durable::Result<u64> {
    ran("counted-charge");
    Ok(cents)
}

async fn settled(store: &std::sync::Arc<dyn Store>, id: &str) -> Promise {
    loop {
        match store.get(id).await.unwrap() {
            Some(p) if p.state.is_settled() => return p,
            _ => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_group_nobody_serves_is_named_and_a_worker_that_starts_serves_it() {
    let store = memory();
    let shop = builder(&store).group("shop").pid("shop-1").build().unwrap();
    while !store.workers().await.unwrap().iter().any(|w| w.group == "shop" && w.pid == "shop-1") {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // A misspelt group: the caller asked to hear of it after half a minute.
    let typo = shop
        .rpc("pay-1", charge, 100)
        .target("poll://any@payment")
        .unserved_after(Duration::from_secs(30))
        .await
        .unwrap();
    let error = typo.await.unwrap_err();
    assert!(
        matches!(&error, Error::Unserved { id, group, function, waited }
            if id == "pay-1" && group == "payment" && function == "charge" && *waited >= 30),
        "{error:?}"
    );
    assert!(error.to_string().contains("no live worker does"), "{error}");
    let unserved = shop.promises().unserved(Duration::from_secs(10)).await.unwrap();
    assert_eq!(unserved.iter().map(|t| t.id.as_str()).collect::<Vec<_>>(), ["pay-1"]);
    assert_eq!(unserved[0].target.group, "payment");

    // The workers of that group start: the waiting task runs, and nothing is unserved.
    let _payment = builder(&store).group("payment").register(charge).build().unwrap();
    while !store.workers().await.unwrap().iter().any(|w| w.group == "payment") {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Asked again, the wait counts from the task's creation, long past: the worker
    // that now serves it is what keeps the handle from failing.
    let served = shop.rpc("pay-1", charge, 100).target("poll://any@payment").unserved_after(Duration::from_secs(30));
    assert_eq!(served.await.unwrap().await.unwrap(), 100);
    assert!(shop.promises().unserved(Duration::ZERO).await.unwrap().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_call_from_a_body_fails_as_unserved_and_the_failure_is_its_recorded_result() {
    let store = memory();
    let shop = builder(&store).group("shop").register(checkout).build().unwrap();
    let handle = shop.run("co-1", checkout, 100).await.unwrap();
    // Until the check, the caller stays in memory (it would suspend after 1 s).
    tokio::time::sleep(Duration::from_secs(15)).await;
    assert_eq!(store.task("co-1").await.unwrap().unwrap().state, TaskState::Acquired);
    assert_eq!(handle.await.unwrap(), "no payment after 30 s");

    let call = store.get("co-1.1").await.unwrap().unwrap();
    assert_eq!(call.state, State::Rejected, "the failure is recorded as the call's result");
    assert_eq!(call.settled_at.unwrap() - call.created_at, 30_000);
    assert!(call.value.unwrap().contains("unserved"));
    assert_eq!(store.task("co-1.1").await.unwrap().unwrap().state, TaskState::Fulfilled);

    // A worker of the group that starts later does not run the call.
    let _payment = builder(&store).group("payment").register(counted_charge).build().unwrap();
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(runs("counted-charge"), 0);
}

#[tokio::test(start_paused = true)]
async fn a_caller_taken_over_counts_the_wait_from_the_calls_creation() {
    let store = memory();
    let first_line = line(&store);
    let first = builder(&(first_line.clone() as _))
        .group("shop")
        .lease(Duration::from_secs(6))
        .register(checkout)
        .build()
        .unwrap();
    let _handle = first.run("co-2", checkout, 200).await.unwrap();
    tokio::time::sleep(Duration::from_secs(10)).await;
    crash(first, &first_line);
    // Its successor replays the body and watches the same call, from its creation.
    let _second = builder(&store).group("shop").lease(Duration::from_secs(6)).register(checkout).build().unwrap();
    let result = settled(&store, "co-2").await;
    assert_eq!(result.value.as_deref(), Some("\"no payment after 30 s\""));
    let call = store.get("co-2.1").await.unwrap().unwrap();
    assert_eq!(call.settled_at.unwrap() - call.created_at, 30_000, "not 30 s after the takeover");
}

#[tokio::test(start_paused = true)]
async fn a_served_call_is_not_failed_and_its_caller_suspends_after_the_check() {
    let store = memory();
    let _payment = builder(&store).group("payment").register(slow_charge).build().unwrap();
    let shop = builder(&store).group("shop").register(checkout).build().unwrap();
    let handle = shop.run("co-3", checkout, 300).await.unwrap();
    tokio::time::sleep(Duration::from_secs(45)).await;
    assert_eq!(runs("slow-charge"), 1);
    assert_eq!(
        store.task("co-3").await.unwrap().unwrap().state,
        TaskState::Suspended,
        "once the check found a worker on it, the caller suspends as any caller does"
    );
    assert_eq!(handle.await.unwrap(), "charged 300");
    assert_eq!(runs("slow-charge"), 1);
}
