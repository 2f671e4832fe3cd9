//! A worker that restarts under the same pid takes back what its dead predecessor held
//! at once, instead of waiting for the predecessor's leases to run out.

mod common;

use std::time::Duration;

use common::{builder, crash, line, memory, ran};
use durable::prelude::*;

/// The first run hangs, as in a process that is about to be killed.
#[durable::function]
async fn job(_ctx: &mut Context, key: String) -> durable::Result<u32> {
    if ran(&key) == 1 {
        std::future::pending::<()>().await;
    }
    Ok(7)
}

#[tokio::test(start_paused = true)]
async fn a_restarted_worker_does_not_wait_for_its_predecessors_lease() {
    let store = memory();
    let lease = Duration::from_secs(30);
    let first = builder(&store).pid("w1").lease(lease).register(job).build().unwrap();
    let handle = first.run("job", job, "restart".into()).await.unwrap();
    tokio::task::yield_now().await;
    drop(first); // killed: nothing is given back
    let started = tokio::time::Instant::now();
    let _second = builder(&store).pid("w1").lease(lease).register(job).build().unwrap();
    assert_eq!(handle.await.unwrap(), 7);
    assert!(started.elapsed() < lease / 10, "taken over at once, not after the lease: {:?}", started.elapsed());
}

#[tokio::test(start_paused = true)]
async fn a_worker_of_another_pid_waits_for_the_lease() {
    let store = memory();
    let lease = Duration::from_secs(30);
    let line = line(&store);
    let first = Durable::builder().store(line.clone()).pid("w1").lease(lease).register(job).build().unwrap();
    let _dies_with_it = first.run("job", job, "other-pid".into()).await.unwrap();
    tokio::task::yield_now().await;
    crash(first, &line);
    let started = tokio::time::Instant::now();
    let other = builder(&store).pid("w2").lease(lease).register(job).build().unwrap();
    // The dead runtime's handle died with it: ask the live one.
    assert_eq!(other.run("job", job, "other-pid".into()).await.unwrap().await.unwrap(), 7);
    assert!(started.elapsed() >= lease / 2, "w1 may still live: its lease is waited out: {:?}", started.elapsed());
}
