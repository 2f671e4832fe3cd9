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
