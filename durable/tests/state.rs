//! Application state: set on the builder, reached by a body with `ctx.state`: the
//! executing runtime's own, in a local call as in a remote one, in a replay check and
//! in the crash sweep. A runtime without it gives the task back and records no
//! failure.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::{builder, memory};
use durable::prelude::*;
use durable::{Durable, Verdict};

/// Where a runtime runs.
struct Region(&'static str);

/// A counter shared by every call a runtime executes.
#[derive(Default)]
struct Calls(AtomicU64);

#[durable::function]
async fn whereami(ctx: &mut Context, _: ()) -> durable::Result<String> {
    Ok(ctx.state::<Region>()?.0.to_owned())
}

#[durable::function]
async fn count(ctx: &mut Context, _: ()) -> durable::Result<u64> {
    Ok(ctx.state::<Calls>()?.0.fetch_add(1, Ordering::SeqCst) + 1)
}

/// Its own region, a local call's and a remote call's in `eu`.
#[durable::function]
async fn regions(ctx: &mut Context, _: ()) -> durable::Result<(String, String, String)> {
    let home = ctx.state::<Region>()?.0.to_owned();
    let here = ctx.lfc(whereami, ()).await?;
    let there = ctx.rfc(whereami, ()).target("poll://any@eu").await?;
    Ok((home, here, there))
}

/// A runtime of group `default` in `us` that runs `regions`, and one of group `eu`.
fn us_and_eu(store: &std::sync::Arc<dyn Store>) -> [Durable; 2] {
    let us = builder(store)
        .state(Region("us"))
        .state(Calls::default())
        .register(regions)
        .register(whereami)
        .register(count)
        .build()
        .unwrap();
    let eu = builder(store).group("eu").state(Region("eu")).register(whereami).build().unwrap();
    [us, eu]
}

#[tokio::test(start_paused = true)]
async fn a_body_reaches_the_state_of_the_runtime_that_executes_it() {
    let store = memory();
    let [us, _eu] = us_and_eu(&store);
    let got = us.run("where-1", regions, ()).await.unwrap().await.unwrap();
    assert_eq!(got, ("us".into(), "us".into(), "eu".into()), "the remote call ran in eu, with eu's state");
    // One value for every call the runtime executes.
    assert_eq!(us.run("count-1", count, ()).await.unwrap().await.unwrap(), 1);
    assert_eq!(us.run("count-2", count, ()).await.unwrap().await.unwrap(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_runtime_without_the_state_gives_the_task_back_and_one_with_it_runs_it() {
    let store = memory();
    let bare = builder(&store).register(whereami).build().unwrap();
    let _handle = bare.run("where-2", whereami, ()).await.unwrap();
    let task = loop {
        match store.task("where-2").await.unwrap() {
            Some(task) if task.faults > 0 => break task,
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    let error = task.error.unwrap_or_default();
    assert!(
        error.contains("where-2 needs state of type state::Region") && error.contains("Builder::state"),
        "the task says what is missing: {error}"
    );
    assert_eq!(store.get("where-2").await.unwrap().unwrap().state, State::Pending, "no failure was recorded");
    bare.shutdown().await.unwrap();

    let [us, _eu] = us_and_eu(&store);
    let got = loop {
        match us.get("where-2").await.unwrap() {
            Some(p) if p.state.is_settled() => break p,
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    assert_eq!(got.state, State::Resolved);
    assert_eq!(got.value.as_deref(), Some("\"us\""), "the runtime with the state ran it");
}

#[tokio::test(start_paused = true)]
async fn a_replay_check_reaches_the_state_of_the_builder_it_was_built_from() {
    let store = memory();
    let [us, eu] = us_and_eu(&store);
    us.run("where-3", regions, ()).await.unwrap().await.unwrap();
    let history = us.promises().history("where-3").await.unwrap();
    drop((us, eu));

    let with = builder(&store).state(Region("us")).register(regions).register(whereami).checker().unwrap();
    let checked = with.check(&history).await;
    assert!(checked.iter().all(|c| c.verdict == Verdict::Replays), "{checked:?}");

    let without = builder(&store).register(regions).register(whereami).checker().unwrap();
    let checked = without.check(&history).await.remove(0);
    let Verdict::Failed(reason) = &checked.verdict else { panic!("the body cannot run without its state: {checked}") };
    assert!(reason.contains("needs state of type state::Region"), "{reason}");
}

#[tokio::test(start_paused = true)]
async fn the_crash_sweep_runs_workers_with_their_state() {
    let sweep = durable_testkit::Sweep::new("where-4", regions, ()).workers(|store| us_and_eu(&store).into());
    let report = sweep.run().await.unwrap_or_else(|failure| panic!("{failure}"));
    assert!(report.crash_points >= 6, "{report:?}");
}

#[tokio::test(start_paused = true)]
async fn a_type_set_twice_is_refused() {
    let store = memory();
    let err = builder(&store).state(Region("us")).state(Region("eu")).build().unwrap_err();
    assert!(err.to_string().contains("state of type state::Region is set twice"), "{err}");
}
