//! Delayed starts: `rpc`, `run` and `detached` with `start_after` and `start_at`. The
//! invocation exists at once, no worker runs it before its time, and it runs then on
//! a worker that its client never told (the client is gone by then), on virtual time.

mod common;

use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use durable::prelude::*;
use durable::store::VirtualClock;
use durable::{State, TaskState};

/// The store's time at which each body started, by its argument.
static STARTED: LazyLock<Mutex<Vec<(String, u64)>>> = LazyLock::new(Mutex::default);

fn started(what: &str) -> Vec<u64> {
    STARTED.lock().unwrap().iter().filter(|(w, _)| w == what).map(|(_, at)| *at).collect()
}

/// The body given `what` started once, at `due` or within a second after it.
fn ran_once_on_time(what: &str, due: u64) {
    let at = started(what);
    assert_eq!(at.len(), 1, "it ran once");
    assert!(at[0] >= due, "not before its time: {} ms early", due.saturating_sub(at[0]));
    assert!(at[0] <= due + 1_000, "within a second of its time: {} ms after it", at[0] - due);
}

#[durable::function(name = "remind")]
async fn remind(ctx: &mut Context, what: String) -> durable::Result<String> {
    let at = ctx.now().await?.duration_since(UNIX_EPOCH).unwrap().as_millis() as u64;
    STARTED.lock().unwrap().push((what.clone(), at));
    Ok(format!("reminded: {what}"))
}

#[durable::function(name = "plan")]
async fn plan(ctx: &mut Context, what: String) -> durable::Result<String> {
    ctx.detached(remind, what).start_after(Duration::from_secs(600)).await
}

async fn a_delayed_rpc_runs_at_its_time_on_a_worker_its_client_never_told(store: Arc<dyn Store>) {
    let _worker = common::builder(&store).group("g").register(remind).build().unwrap();
    let client = common::builder(&store).group("client").build().unwrap();
    // The worker has started and ticked: the call comes later.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let t0 = store.now().await.unwrap();
    // Sooner than the worker's own tick (a lease, 30 s): it must learn the time.
    let delay = Duration::from_millis(7_250);
    let handle = client.rpc("rpc-later", remind, "rpc".into()).target("poll://any@g").start_after(delay).await.unwrap();
    // It exists at once: pending, listed, with its start recorded on its task.
    let task = store.task("rpc-later").await.unwrap().unwrap();
    assert_eq!((task.state, task.ready_at), (TaskState::Pending, t0 + 7_250));
    let listed = client.promises().invocations(Default::default()).await.unwrap();
    assert!(listed.invocations.iter().any(|i| i.promise.id == "rpc-later"), "listed at once");
    // The client goes away: nothing of it is left to tell the worker when.
    client.shutdown().await.unwrap();
    drop(client);
    assert_eq!(handle.await.unwrap(), "reminded: rpc");
    ran_once_on_time("rpc", t0 + 7_250);
}

/// The signal of a delayed call that comes while the worker's claim is in flight
/// (so the claim cannot see it, and waiting consumes it) still makes the worker learn
/// the call's time, not at its next lease tick, 30 s on.
async fn a_delayed_call_signalled_during_a_claim_runs_at_its_time(store: Arc<dyn Store>) {
    let line = common::line(&store);
    let _worker = common::builder(&(line.clone() as Arc<dyn Store>)).group("g").register(remind).build().unwrap();
    let client = common::builder(&store).group("client").build().unwrap();
    // Past the worker's start-up (its second look for a predecessor's tasks is at 1 s).
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Its next claim, at its next timed wake, waits a second to start; no other timer
    // of the worker is due when it ends.
    line.delay_next("claim", Duration::from_secs(1));
    while line.injected() == 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let t0 = store.now().await.unwrap();
    let handle = client
        .rpc("during-claim", remind, "during a claim".into())
        .target("poll://any@g")
        .start_after(Duration::from_millis(7_250))
        .await
        .unwrap();
    // The client goes away: nothing of it is left to tell the worker when.
    client.shutdown().await.unwrap();
    drop(client);
    assert_eq!(handle.await.unwrap(), "reminded: during a claim");
    ran_once_on_time("during a claim", t0 + 7_250);
}

async fn a_delayed_run_and_a_start_at_a_time(store: Arc<dyn Store>) {
    let durable = common::builder(&store).register(remind).build().unwrap();
    let t0 = store.now().await.unwrap();
    let later = durable.run("run-later", remind, "run".into()).start_after(Duration::from_secs(90)).await.unwrap();
    let at_time = UNIX_EPOCH + Duration::from_millis(t0 + 120_000);
    let at = durable.rpc("at-time", remind, "at".into()).start_at(at_time).await.unwrap();
    assert!(!store.get("run-later").await.unwrap().unwrap().state.is_settled());
    assert_eq!(later.await.unwrap(), "reminded: run");
    assert_eq!(at.await.unwrap(), "reminded: at");
    let (run, at) = (started("run")[0] - t0, started("at")[0] - t0);
    assert!((90_000..=91_000).contains(&run), "run started {run} ms after the call");
    assert!((120_000..=121_000).contains(&at), "start_at started {at} ms after the call");
    // A start in the past is a start now.
    let past = durable.rpc("past", remind, "past".into()).start_at(UNIX_EPOCH).await.unwrap();
    assert_eq!(past.await.unwrap(), "reminded: past");
    assert!(VirtualClock::START <= t0, "the virtual clock starts at its fixed time");
}

async fn a_detached_start_after_runs_later_and_its_caller_does_not_wait(store: Arc<dyn Store>) {
    let durable = common::builder(&store).register(plan).register(remind).build().unwrap();
    let t0 = store.now().await.unwrap();
    let detached = durable.run("plan-1", plan, "detached".into()).await.unwrap().await.unwrap();
    let planned = store.now().await.unwrap();
    assert!(planned - t0 < 600_000, "the caller returned before the detached call's time");
    assert!(started("detached").is_empty(), "not started before its time");
    let settled = loop {
        match store.get(&detached).await.unwrap() {
            Some(p) if p.state.is_settled() => break p,
            _ => tokio::time::sleep(Duration::from_secs(1)).await,
        }
    };
    assert_eq!(settled.value.as_deref(), Some("\"reminded: detached\""));
    let at = started("detached")[0] - t0;
    assert!((600_000..=601_000).contains(&at), "started {at} ms after its caller made it");
}

async fn a_delayed_start_canceled_before_its_time_never_runs(store: Arc<dyn Store>) {
    let durable = common::builder(&store).register(remind).build().unwrap();
    let handle = durable.rpc("doomed", remind, "doomed".into()).start_after(Duration::from_secs(60)).await.unwrap();
    tokio::time::sleep(Duration::from_secs(30)).await;
    durable.promises().cancel("doomed").await.unwrap();
    assert!(matches!(handle.await, Err(durable::Error::Canceled { .. })), "its handle sees the cancel");
    tokio::time::sleep(Duration::from_secs(120)).await;
    assert!(started("doomed").is_empty(), "a canceled delayed start never runs");
    let task = store.task("doomed").await.unwrap().unwrap();
    assert_eq!(task.state, TaskState::Fulfilled);
    assert_eq!(store.get("doomed").await.unwrap().unwrap().state, State::RejectedCanceled);
}

on_every_store!(
    a_delayed_rpc_runs_at_its_time_on_a_worker_its_client_never_told,
    a_delayed_call_signalled_during_a_claim_runs_at_its_time,
    a_delayed_run_and_a_start_at_a_time,
    a_detached_start_after_runs_later_and_its_caller_does_not_wait,
    a_delayed_start_canceled_before_its_time_never_runs,
);
