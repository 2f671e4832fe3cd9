//! A runtime dropped while the tokio runtime still runs gives back what it holds at
//! once, as `shutdown()` does (`replay_recovery.rs`
//! `shutdown_hands_the_task_over_at_once`): another worker takes the invocation
//! without waiting for the lease to end.

mod common;

use std::time::Duration;

use common::{arrived, builder, gate, memory, open, ran};
use durable::prelude::*;

#[durable::function]
async fn held(_ctx: &mut Context, key: String) -> durable::Result<u32> {
    let n = ran(&key);
    gate(&key).await;
    Ok(n)
}

/// The lease: long, so that a release is what lets the second worker in.
const TTL: Duration = Duration::from_secs(600);

#[tokio::test(start_paused = true)]
async fn dropping_the_runtime_releases_what_it_holds() {
    let store = memory();
    let first = builder(&store).pid("first").lease(TTL).register(held).build().unwrap();
    let handle = first.rpc("d-1", held, "drop-release".to_owned()).await.unwrap();
    arrived("drop-release").await;
    open("drop-release");
    drop(first);
    let started = tokio::time::Instant::now();
    let _second = builder(&store).pid("second").lease(TTL).register(held).build().unwrap();
    assert_eq!(handle.await.unwrap(), 2, "the second runtime ran it again");
    let took = started.elapsed();
    assert!(took < TTL / 10, "the second runtime waited {took:?}: the lease was not released");
}
