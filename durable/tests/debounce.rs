//! Debounced calls, on virtual time: bursts of calls of one key become one
//! invocation with the last arguments, or all of them; a stream that never goes quiet
//! starts at its longest wait; a call once it started opens the next; calls from two
//! runtimes join; and keys do not mix.

mod common;

use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use durable::prelude::*;

/// Each run of `reindex`: its key, what it got, and when (store time).
type Run = (String, Vec<u32>, u64);

static RUNS: LazyLock<Mutex<Vec<Run>>> = LazyLock::new(Mutex::default);

fn runs() -> Vec<Run> {
    RUNS.lock().unwrap().clone()
}

#[durable::function(name = "reindex")]
async fn reindex(ctx: &mut Context, docs: Vec<u32>) -> durable::Result<usize> {
    let at = ctx.now().await?.duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    RUNS.lock().unwrap().push((ctx.id().split('~').next().unwrap().to_owned(), docs.clone(), at));
    Ok(docs.len())
}

const QUIET: Duration = Duration::from_secs(2);

fn runtime(store: &Arc<dyn Store>) -> Durable {
    common::builder(store).register(reindex).build().unwrap()
}

async fn a_burst_becomes_one_run_with_the_last_arguments(store: Arc<dyn Store>) {
    let durable = runtime(&store);
    let t0 = store.now().await.unwrap();
    let mut handles = Vec::new();
    for doc in 1..=5 {
        handles.push(durable.debounce("catalog", reindex, vec![doc]).quiet(QUIET).await.unwrap());
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let ids: Vec<&str> = handles.iter().map(|h| h.id()).collect();
    assert!(ids.iter().all(|id| *id == ids[0]), "every call joined one invocation: {ids:?}");
    for handle in handles {
        assert_eq!(handle.await.unwrap(), 1, "the last call's arguments");
    }
    let runs = runs();
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert_eq!(runs[0].1, [5]);
    // The last call came at 2 s; quiet for 2 s after it.
    assert!((4_000..5_000).contains(&(runs[0].2 - t0)), "started {} ms after the first call", runs[0].2 - t0);
}

async fn keeping_all_gives_every_calls_arguments_in_order(store: Arc<dyn Store>) {
    let durable = runtime(&store);
    let mut handles = Vec::new();
    for doc in [7, 3, 9, 3] {
        handles.push(durable.debounce_all("catalog", reindex, doc).quiet(QUIET).await.unwrap());
    }
    for handle in handles {
        assert_eq!(handle.await.unwrap(), 4);
    }
    assert_eq!(runs().iter().map(|r| r.1.clone()).collect::<Vec<_>>(), [vec![7, 3, 9, 3]]);
}

async fn a_key_that_never_goes_quiet_starts_at_its_longest_wait(store: Arc<dyn Store>) {
    let durable = runtime(&store);
    let t0 = store.now().await.unwrap();
    // A call every second for 25 s, quiet 2 s, at most 10 s.
    for doc in 0..25 {
        let call = durable.debounce_all("busy", reindex, doc).quiet(QUIET).max_wait(Duration::from_secs(10));
        let _joined = call.await.unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    let runs = runs();
    let starts: Vec<u64> = runs.iter().map(|r| (r.2 - t0) / 1000).collect();
    assert_eq!(starts, [10, 21, 26], "each at its first call's longest wait, the last when quiet");
    let all: Vec<u32> = runs.iter().flat_map(|r| r.1.clone()).collect();
    assert_eq!(all, (0..25).collect::<Vec<_>>(), "every call's arguments, each in one run, in order");
}

async fn calls_from_two_runtimes_join_and_keys_do_not_mix(store: Arc<dyn Store>) {
    let (a, b) = (runtime(&store), runtime(&store));
    let first = a.debounce("shared", reindex, vec![1]).quiet(QUIET).await.unwrap();
    let second = b.debounce("shared", reindex, vec![2]).quiet(QUIET).await.unwrap();
    let other = b.debounce("other", reindex, vec![3]).quiet(QUIET).await.unwrap();
    assert_eq!(first.id(), second.id());
    assert_ne!(first.id(), other.id());
    assert_eq!((first.await.unwrap(), second.await.unwrap(), other.await.unwrap()), (1, 1, 1));
    let mut got: Vec<(String, Vec<u32>)> = runs().into_iter().map(|r| (r.0, r.1)).collect();
    got.sort();
    assert_eq!(got, [("other".to_owned(), vec![3]), ("shared".to_owned(), vec![2])]);
    // Once it ran, a call of the key opens the next.
    let next = a.debounce("shared", reindex, vec![4]).quiet(QUIET).await.unwrap();
    assert_eq!(next.await.unwrap(), 1);
    assert_eq!(runs().len(), 3);
    let bad = a.debounce("", reindex, vec![5]).await.unwrap_err();
    assert!(matches!(bad, durable::Error::InvalidKey { .. }), "{bad:?}");
}

on_every_store!(
    a_burst_becomes_one_run_with_the_last_arguments,
    keeping_all_gives_every_calls_arguments_in_order,
    a_key_that_never_goes_quiet_starts_at_its_longest_wait,
    calls_from_two_runtimes_join_and_keys_do_not_mix,
);
