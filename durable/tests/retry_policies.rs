//! Failed bodies are retried by their policy, per function or per call; terminal errors
//! never are; the wait between attempts is durable.

mod common;

use std::time::Duration;

use common::{builder, memory, ran, runs};
use durable::State;
use durable::prelude::*;

/// Fails until its `succeed_on`-th run.
#[durable::function(retry = Retry::Constant { delay: Duration::from_secs(1), max_attempts: 5 })]
async fn flaky(_ctx: &mut Context, key: String, succeed_on: u32) -> durable::Result<u32> {
    let n = ran(&key);
    if n < succeed_on { Err(Error::new(format!("attempt {n} failed"))) } else { Ok(n) }
}

#[durable::function]
async fn doomed(_ctx: &mut Context, key: String) -> durable::Result<u32> {
    ran(&key);
    Err(Error::terminal("the input can never work"))
}

#[durable::function(retry = Retry::Never)]
async fn parent(ctx: &mut Context, key: String, policy: Option<u32>) -> durable::Result<u32> {
    let call = ctx.lfc(flaky, (key, 10));
    match policy {
        Some(attempts) => call.retry(Retry::Linear { delay: Duration::from_secs(2), max_attempts: attempts }).await,
        None => call.await,
    }
}

#[tokio::test(start_paused = true)]
async fn a_failing_function_is_retried_by_its_policy() {
    let store = memory();
    let durable = builder(&store).register(flaky).build().unwrap();
    let started = tokio::time::Instant::now();
    let n = durable.run("flaky", flaky, ("flaky".into(), 3)).await.unwrap().await.unwrap();
    assert_eq!((n, runs("flaky")), (3, 3));
    assert!(started.elapsed() >= Duration::from_secs(2), "two constant one-second waits");
    for timer in ["flaky.r1", "flaky.r2"] {
        assert_eq!(store.get(timer).await.unwrap().unwrap().state, State::Resolved, "{timer} is the durable wait");
    }
}

#[tokio::test(start_paused = true)]
async fn a_terminal_error_is_never_retried() {
    let store = memory();
    let durable = builder(&store).register(doomed).build().unwrap();
    let error = durable.run("doomed", doomed, "doomed".into()).await.unwrap().await.unwrap_err();
    assert!(matches!(error, Error::Application { terminal: true, .. }), "{error:?}");
    assert_eq!(runs("doomed"), 1);
    assert_eq!(store.get("doomed").await.unwrap().unwrap().state, State::Rejected);
}

#[tokio::test(start_paused = true)]
async fn a_call_overrides_the_function_policy_and_gives_up_after_max_attempts() {
    let store = memory();
    let durable = builder(&store).register(parent).build().unwrap();
    let started = tokio::time::Instant::now();
    let error = durable.run("per-call", parent, ("per-call".into(), Some(3))).await.unwrap().await.unwrap_err();
    assert_eq!(error.to_string(), "attempt 3 failed", "the last attempt's error rejects the promise");
    assert_eq!(runs("per-call"), 3, "three attempts, as the call's policy says");
    assert!(started.elapsed() >= Duration::from_secs(6), "linear waits of 2 s and 4 s");
    assert_eq!(store.get("per-call.1").await.unwrap().unwrap().state, State::Rejected);
    assert_eq!(store.get("per-call").await.unwrap().unwrap().state, State::Rejected, "the parent does not retry");

    let error = durable.run("per-fn", parent, ("per-fn".into(), None)).await.unwrap().await.unwrap_err();
    assert_eq!(error.to_string(), "attempt 5 failed", "the function's own policy allows five attempts");
}

#[tokio::test(start_paused = true)]
async fn a_crash_during_backoff_does_not_reset_the_attempts() {
    #[durable::function(retry = Retry::Constant { delay: Duration::from_secs(3600), max_attempts: 5 })]
    async fn slow_flaky(_ctx: &mut Context, key: String) -> durable::Result<u32> {
        let n = ran(&key);
        if n < 3 { Err(Error::new("not yet")) } else { Ok(n) }
    }

    let store = memory();
    let first = builder(&store).register(slow_flaky).build().unwrap();
    let handle = first.run("backoff", slow_flaky, "backoff".into()).await.unwrap();
    while store.get("backoff.r1").await.unwrap().is_none() {
        tokio::task::yield_now().await;
    }
    drop(first); // crash while waiting an hour before attempt 2

    let started = tokio::time::Instant::now();
    let _second = builder(&store).register(slow_flaky).build().unwrap();
    assert_eq!(handle.await.unwrap(), 3);
    assert_eq!(runs("backoff"), 3, "attempt 1 did not run again after the crash");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(7200) && waited < Duration::from_secs(7200 + 60),
        "the first wait was not restarted: {waited:?}"
    );
}

#[test]
fn policies_compute_their_delays() {
    let s = Duration::from_secs;
    assert_eq!(Retry::Never.delay(1), None);
    let constant = Retry::Constant { delay: s(2), max_attempts: 3 };
    assert_eq!((constant.delay(1), constant.delay(2), constant.delay(3)), (Some(s(2)), Some(s(2)), None));
    let linear = Retry::Linear { delay: s(2), max_attempts: 4 };
    assert_eq!((linear.delay(1), linear.delay(3), linear.delay(4)), (Some(s(2)), Some(s(6)), None));
    let exp = Retry::Exponential { initial: s(1), factor: 3, max_delay: s(20), max_attempts: 10 };
    assert_eq!((exp.delay(1), exp.delay(3), exp.delay(4), exp.delay(40)), (Some(s(1)), Some(s(9)), Some(s(20)), None));
}

/// Fails its first attempt, then waits an hour before the second.
#[durable::function(retry = Retry::Constant { delay: Duration::from_secs(3600), max_attempts: 2 })]
async fn patient(ctx: &mut Context, n: u32) -> durable::Result<u32> {
    if ctx.attempt() == 1 { Err(Error::new("not yet")) } else { Ok(n) }
}

#[durable::function]
async fn quick(_ctx: &mut Context, n: u32) -> durable::Result<u32> {
    Ok(n)
}

#[tokio::test(start_paused = true)]
async fn the_wait_between_attempts_suspends_and_frees_the_worker() {
    let store = memory();
    let durable = builder(&store).register(patient).register(quick).concurrency(1).build().unwrap();
    let waiting = durable.run("patient", patient, 1).await.unwrap();
    while durable.get("patient.r1").await.unwrap().is_none() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    let task = store.task("patient").await.unwrap().unwrap();
    assert_eq!(task.state, durable::TaskState::Suspended, "the hour's wait holds no worker");
    let started = store.now().await.unwrap();
    assert_eq!(durable.run("quick", quick, 2).await.unwrap().await.unwrap(), 2);
    let took = store.now().await.unwrap() - started;
    assert!(took < 60_000, "the only slot was free: the quick call took {took} ms, not the hour");
    assert_eq!(waiting.await.unwrap(), 1, "the second attempt runs after the wait");
}
