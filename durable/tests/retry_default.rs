//! The default retry: a failed attempt that made no durable call (a step) is retried;
//! one that made a call is not, unless its function asks, and then its calls run
//! again as new ones, as the `Retry` docs say.

mod common;

use std::time::Duration;

use common::{builder, memory, ran, runs};
use durable::prelude::*;

/// A step with the default policy: fails until its third run.
#[durable::function]
async fn flaky_step(_ctx: &mut Context, key: String) -> durable::Result<u32> {
    let n = ran(&key);
    if n < 3 { Err(Error::new(format!("run {n} failed"))) } else { Ok(n) }
}

#[durable::function]
async fn debit(_ctx: &mut Context, key: String) -> durable::Result<()> {
    ran(&key);
    Ok(())
}

/// Debits, then fails on its first attempt: the default policy.
#[durable::function]
async fn transfer(ctx: &mut Context, key: String) -> durable::Result<u32> {
    ctx.lfc(debit, format!("{key}-debit")).await?;
    if ctx.attempt() == 1 { Err(Error::new("the credit failed")) } else { Ok(ctx.attempt()) }
}

/// The same, with a policy of its own.
#[durable::function(retry = Retry::Constant { delay: Duration::from_secs(1), max_attempts: 2 })]
async fn transfer_retried(ctx: &mut Context, key: String) -> durable::Result<u32> {
    ctx.lfc(debit, format!("{key}-debit")).await?;
    if ctx.attempt() == 1 { Err(Error::new("the credit failed")) } else { Ok(ctx.attempt()) }
}

/// Sleeps, then fails: a sleep is a durable call too.
#[durable::function]
async fn nap_then_fail(ctx: &mut Context, key: String) -> durable::Result<()> {
    ran(&key);
    ctx.sleep(Duration::from_secs(1)).await?;
    Err(Error::new("woke up failing"))
}

#[tokio::test(start_paused = true)]
async fn a_step_is_retried_by_default() {
    let store = memory();
    let durable = builder(&store).register(flaky_step).build().unwrap();
    let n = durable.run("step", flaky_step, "default-step".to_owned()).await.unwrap().await.unwrap();
    assert_eq!((n, runs("default-step")), (3, 3), "two failed runs, then the one that succeeds");
}

#[tokio::test(start_paused = true)]
async fn a_function_that_made_calls_is_not_retried_unless_it_asks() {
    let store = memory();
    let durable = builder(&store).register(transfer).register(debit).register(nap_then_fail).build().unwrap();
    let err = durable.run("t-1", transfer, "unasked".to_owned()).await.unwrap().await.unwrap_err();
    assert!(err.to_string().contains("the credit failed"), "{err}");
    assert_eq!(runs("unasked-debit"), 1, "the debit ran once: no retry ran it again");
    assert!(durable.get("t-1.r1").await.unwrap().is_none(), "no wait before a second attempt was made");

    let err = durable.run("n-1", nap_then_fail, "napper".to_owned()).await.unwrap().await.unwrap_err();
    assert!(err.to_string().contains("woke up failing"), "{err}");
    assert_eq!(runs("napper"), 1, "an attempt that slept is not retried either");
}

#[tokio::test(start_paused = true)]
async fn a_function_that_asks_is_retried_from_the_top_with_new_calls() {
    let store = memory();
    let durable = builder(&store).register(transfer_retried).register(debit).build().unwrap();
    let attempt = durable.run("t-2", transfer_retried, "asked".to_owned()).await.unwrap().await.unwrap();
    assert_eq!(attempt, 2);
    assert_eq!(runs("asked-debit"), 2, "the second attempt debited again, as the docs say");
    let first = durable.get("t-2.1").await.unwrap().expect("the first attempt's debit");
    let second = durable.get("t-2.r1.1").await.unwrap().expect("the second attempt's debit, a new call");
    assert!(first.state.is_settled() && second.state.is_settled());
}
