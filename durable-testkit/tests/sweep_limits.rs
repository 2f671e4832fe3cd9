//! The crash sweep over a function whose remote calls are limited: one at a time per
//! account, and two a second. A crash at any point recovers to the crash-free result,
//! with every charge made once, and no limit leaves a call waiting forever.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use durable::Limit;
use durable::prelude::*;
use durable_testkit::Sweep;

/// The accounts a charge runs on now, and the most charges of one account at once.
static RUNNING: Mutex<(Vec<String>, usize)> = Mutex::new((Vec::new(), 0));

/// Takes an account off [`RUNNING`] when its charge ends, or is dropped by a crash.
struct Running(String);

impl Drop for Running {
    fn drop(&mut self) {
        let mut running = RUNNING.lock().unwrap();
        let at = running.0.iter().position(|a| *a == self.0).unwrap();
        running.0.remove(at);
    }
}

#[durable::function]
async fn charge(_ctx: &mut Context, account: String, cents: u64) -> durable::Result<u64> {
    let _running = {
        let mut running = RUNNING.lock().unwrap();
        running.0.push(account.clone());
        let here = running.0.iter().filter(|a| **a == account).count();
        running.1 = running.1.max(here);
        Running(account)
    };
    // Longer than the rate's spacing: only the per-account limit keeps two apart.
    tokio::time::sleep(Duration::from_secs(2)).await;
    Ok(cents)
}

#[durable::function]
async fn transfer(ctx: &mut Context, cents: u64) -> durable::Result<u64> {
    let pay = "poll://any@pay";
    let debit = ctx.rfi(charge, ("a".into(), cents)).target(pay).key("a").await?;
    let credit = ctx.rfi(charge, ("b".into(), cents)).target(pay).key("b").await?;
    let fee = ctx.rfc(charge, ("a".into(), 1)).target(pay).key("a").priority(5).await?;
    Ok(debit.await? + credit.await? + fee)
}

/// A store with the limits already set, as an operator left them.
fn limited() -> Arc<dyn Store> {
    use futures::FutureExt;
    let store = MemoryStore::new();
    let one = Limit::new("account").function("charge").per_key().concurrency(1);
    let slow = Limit::new("api").function("charge").rate(2, Duration::from_secs(1));
    for limit in [one, slow] {
        // A memory store answers at once.
        store.set_limit(limit, true).now_or_never().expect("answered").unwrap();
    }
    Arc::new(store)
}

fn workers(store: Arc<dyn Store>) -> Vec<Durable> {
    vec![
        Durable::builder().store(store.clone()).register(transfer).build().unwrap(),
        Durable::builder().store(store).group("pay").register(charge).build().unwrap(),
    ]
}

#[tokio::test(start_paused = true)]
async fn every_crash_point_of_limited_calls_recovers() {
    let sweep = Sweep::new("t", transfer, 100).workers(workers).store(limited);
    let report = sweep.run().await.unwrap_or_else(|failure| panic!("{failure}"));
    assert_eq!(report.crash_free_body_runs["charge"], 3, "{report:?}");
    assert!(report.writes >= 8, "{report:?}");
    assert_eq!(RUNNING.lock().unwrap().1, 1, "one charge of an account at a time, through every crash");
}
