//! A worker that dies mid-task (all its in-memory state gone) has the task redelivered
//! after its lease: the result is right and the body ran at most twice.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{arrived, gate, open, ran, runs};
use durable::prelude::*;

#[durable::function]
async fn work(_ctx: &mut Context, key: String, x: u64) -> durable::Result<u64> {
    ran(&key);
    gate(&key).await;
    Ok(x * 3)
}

#[durable::function]
async fn orchestrate(ctx: &mut Context, key: String) -> durable::Result<u64> {
    let a = ctx.rfc(work, (key.clone(), 5)).target("poll://any@work").await?;
    Ok(a + 1)
}

async fn a_dead_workers_task_is_redelivered_after_its_lease(store: Arc<dyn Store>, key: &str) {
    let client = Durable::builder().store(store.clone()).group("client").register(orchestrate).build().unwrap();
    let line = common::line(&store);
    let first = Durable::builder().store(line.clone()).group("work").register(work).build().unwrap();
    let handle = client.run(key, orchestrate, key.into()).await.unwrap();
    arrived(key).await;
    common::crash(first, &line);
    open(key);
    let started = tokio::time::Instant::now();
    let _second = Durable::builder().store(store.clone()).group("work").register(work).build().unwrap();
    assert_eq!(handle.await.unwrap(), 16);
    assert!(started.elapsed() >= Duration::from_secs(29), "redelivered after the lease: {:?}", started.elapsed());
    assert_eq!(runs(key), 2, "at most twice: once before the crash, once after");
    let task = store.task(&format!("{key}.1")).await.unwrap().unwrap();
    assert!(task.version >= 3, "acquired, expired, acquired again: version {}", task.version);
}

#[tokio::test(start_paused = true)]
async fn on_memory() {
    a_dead_workers_task_is_redelivered_after_its_lease(common::memory(), "redeliver-memory").await;
}

#[tokio::test(start_paused = true)]
async fn on_sled() {
    let (store, _dir) = common::sled();
    a_dead_workers_task_is_redelivered_after_its_lease(store, "redeliver-sled").await;
}
