//! A local call of a fresh attempt is written once: its promise is created only when
//! something is written under it, or else together with its result. Whatever the
//! store holds under a promise, it holds the promise too.

mod common;

use common::{builder, memory, tree};
use durable::State;
use durable::prelude::*;
use tokio::sync::Notify;

/// Where each leaf waits: (it arrived, it may go on), for "leaf" and "inner".
static STOPS: [(Notify, Notify); 2] =
    [(Notify::const_new(), Notify::const_new()), (Notify::const_new(), Notify::const_new())];

fn stop(key: &str) -> &'static (Notify, Notify) {
    &STOPS[usize::from(key == "inner")]
}

#[durable::function]
async fn leaf(_ctx: &mut Context, key: String) -> durable::Result<u32> {
    let (arrived, go) = stop(&key);
    arrived.notify_one();
    go.notified().await;
    Ok(7)
}

#[durable::function]
async fn fails(_ctx: &mut Context) -> durable::Result<u32> {
    Err(durable::Error::terminal("no"))
}

#[durable::function]
async fn nested(ctx: &mut Context) -> durable::Result<u32> {
    let inner = ctx.lfc(leaf, "inner".to_owned()).await?;
    Ok(inner + 1)
}

#[durable::function]
async fn outer(ctx: &mut Context) -> durable::Result<u32> {
    let a = ctx.lfc(leaf, "leaf".to_owned()).await?;
    let b = ctx.lfc(nested, ()).await?;
    let c = ctx.lfc(fails, ()).await.unwrap_or(100);
    Ok(a + b + c)
}

fn ids(tree: &[(String, State, Option<String>)]) -> Vec<(&str, State)> {
    tree.iter().map(|(id, state, _)| (id.as_str(), *state)).collect()
}

#[tokio::test(start_paused = true)]
async fn a_local_call_is_written_with_its_result_or_before_anything_under_it() {
    let store = memory();
    let durable = builder(&store).register(outer).register(leaf).register(nested).register(fails).build().unwrap();
    let handle = durable.run("o", outer, ()).await.unwrap();

    stop("leaf").0.notified().await;
    assert_eq!(ids(&tree(&*store, "o").await), [("o", State::Pending)], "a running leaf is not written yet");
    stop("leaf").1.notify_one();

    // `o.2` calls `o.2.1`: neither is written while it runs; `o.2` is created,
    // pending, before its child's result, and settled after it.
    stop("inner").0.notified().await;
    assert_eq!(ids(&tree(&*store, "o").await), [("o", State::Pending), ("o.1", State::Resolved)]);
    stop("inner").1.notify_one();
    assert_eq!(handle.await.unwrap(), 7 + 8 + 100);

    let recorded = tree(&*store, "o").await;
    assert_eq!(
        ids(&recorded),
        [
            ("o", State::Resolved),
            ("o.1", State::Resolved),
            ("o.2", State::Resolved),
            ("o.2.1", State::Resolved),
            ("o.3", State::Rejected),
        ],
        "each call recorded with its outcome, a failure too"
    );
    assert_eq!(recorded[1].2.as_deref(), Some("7"));
    assert!(recorded[4].2.as_deref().is_some_and(|e| e.contains("no")), "{:?}", recorded[4].2);
}

/// Works for 150 ms of the process's time, durable calls aside.
#[durable::function]
async fn slow_step(_ctx: &mut Context) -> durable::Result<u32> {
    tokio::time::sleep(std::time::Duration::from_millis(150)).await;
    Ok(1)
}

/// A slow step, then a nested call whose promise is written at its first write.
#[durable::function]
async fn slow_then_nested(ctx: &mut Context) -> durable::Result<u32> {
    let one = ctx.lfc(slow_step, ()).await?;
    tokio::time::sleep(std::time::Duration::from_millis(40)).await;
    Ok(one + ctx.lfc(slow_step, ()).await?)
}

#[durable::function]
async fn times(ctx: &mut Context) -> durable::Result<u32> {
    ctx.lfc(slow_then_nested, ()).await
}

#[tokio::test(start_paused = true)]
async fn a_local_call_written_late_is_dated_when_it_began() {
    let store = memory();
    let durable = builder(&store).register(times).register(slow_then_nested).register(slow_step).build().unwrap();
    assert_eq!(durable.run("t", times, ()).await.unwrap().await.unwrap(), 2);
    let took = |id: &'static str| {
        let store = store.clone();
        async move {
            let p = store.get(id).await.unwrap().unwrap();
            p.settled_at.unwrap() - p.created_at
        }
    };
    assert_eq!(took("t.1.1").await, 150, "a step written with its result shows how long it ran");
    // Created pending at the first write under it (its first step, 150 ms in), and
    // dated from its start.
    assert_eq!(took("t.1").await, 340, "a nested call shows its whole run");
    let tree = durable.promises().tree("t").await.unwrap().unwrap();
    let nested = &tree.children[0].promise;
    assert_eq!(nested.settled_at.unwrap() - nested.created_at, 340, "and the tree shows it");
}
