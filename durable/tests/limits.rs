//! Limits on tasks, with real workers: a concurrency limit holds across runtimes that
//! share a store, the calls of one key run one at a time in the order they were made,
//! a limit changed live takes effect, a limited `run` waits for a claim, a key that
//! cannot be used fails its call, never the worker, and a restart keeps its key.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use durable::prelude::*;
use durable::{Error, Limit};

/// Per test: (bodies running now, the most that ever ran at once, the order bodies
/// started in, as (key, n)).
#[derive(Default)]
struct Load {
    active: usize,
    peak: usize,
    started: Vec<(String, u32)>,
    active_keys: HashMap<String, usize>,
    key_peak: usize,
}

static LOAD: LazyLock<Mutex<HashMap<String, Load>>> = LazyLock::new(Mutex::default);

#[durable::function]
async fn charge(_ctx: &mut Context, test: String, account: String, n: u32) -> durable::Result<u32> {
    {
        let mut load = LOAD.lock().unwrap();
        let load = load.entry(test.clone()).or_default();
        load.active += 1;
        load.peak = load.peak.max(load.active);
        load.started.push((account.clone(), n));
        let on_key = load.active_keys.entry(account.clone()).or_default();
        *on_key += 1;
        load.key_peak = load.key_peak.max(*on_key);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut load = LOAD.lock().unwrap();
    let load = load.get_mut(&test).unwrap();
    load.active -= 1;
    *load.active_keys.get_mut(&account).unwrap() -= 1;
    Ok(n)
}

fn worker(store: &Arc<dyn Store>) -> Durable {
    Durable::builder().store(store.clone()).group("pay").concurrency(8).register(charge).build().unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_concurrency_limit_holds_across_runtimes() {
    let store = common::memory();
    store.set_limit(Limit::new("api").function("charge").concurrency(2), true).await.unwrap();
    let workers: Vec<Durable> = (0..3).map(|_| worker(&store)).collect();
    let client = Durable::builder().store(store.clone()).group("client").build().unwrap();
    let mut handles = Vec::new();
    for n in 0..12 {
        let args = ("limit".to_owned(), format!("acct{n}"), n);
        handles.push(client.rpc(&format!("c{n}"), charge, args).target("poll://any@pay").await.unwrap());
    }
    for (n, h) in handles.into_iter().enumerate() {
        assert_eq!(h.await.unwrap(), n as u32);
    }
    assert_eq!(LOAD.lock().unwrap()["limit"].peak, 2, "never more than two at once across three runtimes");
    drop(workers);
}

#[tokio::test(start_paused = true)]
async fn the_calls_of_one_key_run_one_at_a_time_in_the_order_they_were_made() {
    let store = common::memory();
    store.set_limit(Limit::new("account").function("charge").per_key().concurrency(1), true).await.unwrap();
    let _workers: Vec<Durable> = (0..2).map(|_| worker(&store)).collect();
    let client = Durable::builder().store(store.clone()).group("client").build().unwrap();
    let mut handles = Vec::new();
    for n in 0..12u32 {
        let account = if n % 3 == 0 { "b" } else { "a" };
        let args = ("keys".to_owned(), account.to_owned(), n);
        let call = client.rpc(&format!("k{n}"), charge, args).target("poll://any@pay").key(account);
        handles.push(call.await.unwrap());
        tokio::time::advance(Duration::from_millis(1)).await;
    }
    for h in handles {
        h.await.unwrap();
    }
    let load = LOAD.lock().unwrap();
    let load = &load["keys"];
    assert_eq!(load.key_peak, 1, "one at a time per key");
    assert_eq!(load.peak, 2, "the two keys run side by side");
    for account in ["a", "b"] {
        let order: Vec<u32> = load.started.iter().filter(|(k, _)| k == account).map(|(_, n)| *n).collect();
        let mut sorted = order.clone();
        sorted.sort();
        assert_eq!(order, sorted, "key {account} in the order its calls were made");
    }
}

#[tokio::test(start_paused = true)]
async fn a_limit_raised_live_lets_waiting_work_start_and_a_limited_run_waits_for_a_claim() {
    let store = common::memory();
    store.set_limit(Limit::new("one").function("charge").concurrency(1), true).await.unwrap();
    let durable = worker(&store);
    let mut handles = Vec::new();
    for n in 0..4 {
        handles.push(durable.run(&format!("r{n}"), charge, ("live".to_owned(), "x".to_owned(), n)).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(LOAD.lock().unwrap()["live"].active, 1, "run takes its turn like any task");
    store.set_limit(Limit::new("one").function("charge").concurrency(4), true).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(LOAD.lock().unwrap()["live"].active, 4, "raised live, without a restart");
    for h in handles {
        h.await.unwrap();
    }
}

#[tokio::test(start_paused = true)]
async fn a_key_that_cannot_be_used_fails_its_call_and_nothing_else() {
    let store = common::memory();
    let _worker = worker(&store);
    let client = Durable::builder().store(store.clone()).group("client").build().unwrap();
    let args = || ("bad".to_owned(), "x".to_owned(), 1);
    let empty = client.rpc("e", charge, args()).target("poll://any@pay").key("").await;
    assert!(matches!(&empty, Err(Error::InvalidKey { id, reason }) if id == "e" && reason.contains("1 to 256 bytes")));
    let tuple_keys: HashMap<(u8, u8), u8> = HashMap::from([((1, 2), 3)]);
    let unencodable = client.rpc("u", charge, args()).target("poll://any@pay").key(&tuple_keys).await;
    match unencodable {
        Err(e @ Error::InvalidKey { .. }) => assert!(e.to_string().contains("does not encode"), "{e}"),
        other => panic!("not refused: {other:?}"),
    }
    assert!(store.get("e").await.unwrap().is_none() && store.get("u").await.unwrap().is_none(), "nothing written");
    let fine = client.rpc("f", charge, args()).target("poll://any@pay").key(&42).await.unwrap();
    assert_eq!(fine.await.unwrap(), 1, "the worker serves on");
    assert_eq!(store.task("f").await.unwrap().unwrap().key.as_deref(), Some("42"), "a number's key is its JSON");
    // A restart is limited as its original was: same key, same priority.
    let urgent = client.rpc("p", charge, args()).target("poll://any@pay").key("acct").priority(7).await.unwrap();
    urgent.await.unwrap();
    client.promises().restart("p", "p-again").await.unwrap();
    let again = store.task("p-again").await.unwrap().unwrap();
    assert_eq!((again.key.as_deref(), again.priority), (Some("acct"), 7));
}
