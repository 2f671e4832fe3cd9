//! A durable timer of a day, then a promise a person settles: under virtual time the
//! whole run takes milliseconds, and while it sleeps no worker holds the task.

mod common;

use std::sync::Arc;
use std::time::Duration;

use durable::prelude::*;
use durable::store::Search;
use durable::{State, TaskState};

#[durable::function]
async fn approval(ctx: &mut Context, amount: u64) -> durable::Result<String> {
    ctx.sleep(Duration::from_secs(24 * 3600)).await?;
    let decision = ctx.promise::<bool>().tags([("kind", "approval")]).await?;
    let approved = decision.await?;
    let reviewer = ctx.promise::<String>().id(format!("reviewer-{amount}")).await?;
    Ok(format!("{amount} {} by {}", if approved { "approved" } else { "refused" }, reviewer.await?))
}

async fn a_day_long_sleep_and_an_external_promise(store: Arc<dyn Store>) {
    let real = std::time::Instant::now();
    let started = tokio::time::Instant::now();
    let durable = Durable::builder().store(store.clone()).register(approval).build().unwrap();
    let handle = durable.run("pay", approval, 500).await.unwrap();

    // While it sleeps, the task is suspended: nobody holds it.
    while store.task("pay").await.unwrap().unwrap().state != TaskState::Suspended {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(started.elapsed() < Duration::from_secs(3600), "it suspended long before the day was over");

    let pending = loop {
        let search = Search {
            prefix: "pay.".into(),
            state: Some(State::Pending),
            tags: [("kind".into(), "approval".into())].into(),
            ..Search::default()
        };
        if let Some(p) = durable.promises().search(search).await.unwrap().promises.pop() {
            break p;
        }
        tokio::time::sleep(Duration::from_secs(60)).await;
    };
    assert!(started.elapsed() >= Duration::from_secs(24 * 3600), "the promise exists only after the day");
    assert_eq!(store.get("pay.1").await.unwrap().unwrap().state, State::Resolved, "the timer resolved");
    durable.promises().resolve(&pending.id, &true).await.unwrap();

    while durable.promises().get("reviewer-500").await.unwrap().is_none() {
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let settled = durable.promises().resolve("reviewer-500", &"ada").await.unwrap();
    assert_eq!(settled.state, State::Resolved);
    let again = durable.promises().resolve("reviewer-500", &"bob").await.unwrap();
    assert_eq!(again.value.as_deref(), Some("\"ada\""), "the first settle wins");

    assert_eq!(handle.await.unwrap(), "500 approved by ada");
    assert!(real.elapsed() < Duration::from_secs(1), "a virtual day took {:?} of real time", real.elapsed());
}

#[durable::function]
async fn wait_for_decision(ctx: &mut Context) -> durable::Result<bool> {
    let decision = ctx.promise::<bool>().id("decision").await?;
    decision.await
}

async fn a_rejected_external_promise_fails_the_await(store: Arc<dyn Store>) {
    let durable = Durable::builder().store(store.clone()).register(wait_for_decision).build().unwrap();
    let handle = durable.run("decide", wait_for_decision, ()).await.unwrap();
    while durable.promises().get("decision").await.unwrap().is_none() {
        tokio::task::yield_now().await;
    }
    durable.promises().reject("decision", "not allowed").await.unwrap();
    let error = handle.await.unwrap_err();
    assert_eq!(error.to_string(), "not allowed");
    let error = durable.promises().resolve("nope", &1).await.unwrap_err();
    assert!(error.to_string().contains("promise nope does not exist"), "{error}");
}

on_every_store!(a_day_long_sleep_and_an_external_promise, a_rejected_external_promise_fails_the_await);
