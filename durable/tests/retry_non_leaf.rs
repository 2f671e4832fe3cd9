//! A retried function runs its body afresh: each attempt's children have ids of their
//! own (under the wait before the attempt), so a child that failed once is called
//! again instead of having its rejection replayed, and an attempt may call its
//! children with other arguments than the last one did.

mod common;

use std::time::Duration;

use common::{builder, memory, ran, tree};
use durable::State;
use durable::prelude::*;

/// Fails for the argument 1.
#[durable::function(retry = Retry::Never)]
async fn check(_ctx: &mut Context, attempt: u32) -> durable::Result<u32> {
    if attempt == 1 { Err(Error::new("attempt 1 is refused")) } else { Ok(attempt * 10) }
}

/// Fails on its first run in this test binary, whatever its argument.
#[durable::function(retry = Retry::Never)]
async fn once(_ctx: &mut Context, key: String) -> durable::Result<u32> {
    if ran(&key) == 1 { Err(Error::new("the first run fails")) } else { Ok(7) }
}

#[durable::function(retry = Retry::Constant { delay: Duration::from_secs(1), max_attempts: 3 })]
async fn by_attempt(ctx: &mut Context) -> durable::Result<u32> {
    let attempt = ctx.attempt();
    ctx.lfc(check, attempt).await
}

#[durable::function(retry = Retry::Constant { delay: Duration::from_secs(1), max_attempts: 3 })]
async fn retries_its_child(ctx: &mut Context, key: String) -> durable::Result<u32> {
    let first = ctx.lfc(once, key).await?;
    let second = ctx.lfc(check, 2).await?;
    Ok(first + second)
}

#[tokio::test(start_paused = true)]
async fn an_attempt_may_pass_its_number_to_a_child() {
    let store = memory();
    let durable = builder(&store).register(by_attempt).build().unwrap();
    assert_eq!(durable.run("p", by_attempt, ()).await.unwrap().await.unwrap(), 20);
    let states: Vec<_> = tree(&*store, "p.").await.into_iter().map(|(id, state, _)| (id, state)).collect();
    assert_eq!(
        states,
        [
            ("p.1".to_owned(), State::Rejected),
            ("p.r1".to_owned(), State::Resolved),
            ("p.r1.1".to_owned(), State::Resolved)
        ],
        "attempt 2 calls its child under the wait that preceded it"
    );
}

#[tokio::test(start_paused = true)]
async fn a_child_that_failed_is_called_again_on_the_next_attempt() {
    let store = memory();
    let durable = builder(&store).register(retries_its_child).build().unwrap();
    let key = "a_child_that_failed".to_owned();
    assert_eq!(durable.run("q", retries_its_child, key.clone()).await.unwrap().await.unwrap(), 27);
    assert_eq!(common::runs(&key), 2, "the child ran once per attempt");
}
