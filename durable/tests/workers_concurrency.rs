//! A worker runs at most `concurrency` tasks at once; the rest wait their turn.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use durable::prelude::*;

/// Per test: (bodies running now, the most that ever ran at once).
static LOAD: LazyLock<Mutex<HashMap<String, (usize, usize)>>> = LazyLock::new(Mutex::default);

#[durable::function]
async fn busy(_ctx: &mut Context, key: String, n: u32) -> durable::Result<u32> {
    {
        let mut load = LOAD.lock().unwrap();
        let (active, peak) = load.entry(key.clone()).or_default();
        *active += 1;
        *peak = (*peak).max(*active);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    LOAD.lock().unwrap().get_mut(&key).unwrap().0 -= 1;
    Ok(n)
}

async fn a_worker_runs_at_most_its_concurrency(store: Arc<dyn Store>, key: &str) {
    let client = Durable::builder().store(store.clone()).group("client").build().unwrap();
    let mut handles = Vec::new();
    for n in 0..10 {
        handles
            .push(client.rpc(&format!("busy-{n}"), busy, (key.to_owned(), n)).target("poll://any@work").await.unwrap());
    }
    let started = tokio::time::Instant::now();
    let _worker = Durable::builder().store(store.clone()).group("work").concurrency(3).register(busy).build().unwrap();
    for (n, handle) in handles.into_iter().enumerate() {
        assert_eq!(handle.await.unwrap(), n as u32);
    }
    assert_eq!(LOAD.lock().unwrap()[key].1, 3, "never more than three at once, and three when there is work");
    assert!(
        started.elapsed() >= Duration::from_secs(4),
        "ten one-second tasks three at a time: {:?}",
        started.elapsed()
    );
}

#[tokio::test(start_paused = true)]
async fn on_memory() {
    a_worker_runs_at_most_its_concurrency(common::memory(), "memory").await;
}

#[tokio::test(start_paused = true)]
async fn on_sled() {
    let (store, _dir) = common::sled();
    a_worker_runs_at_most_its_concurrency(store, "sled").await;
}
