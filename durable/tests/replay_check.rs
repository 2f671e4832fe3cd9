//! The replay check and history files: a history recorded with the old code is
//! checked against a build before it is deployed, writing nothing; every divergence
//! is reported with the call, both sides and file:line; a history goes to a JSON
//! file and back, and into another store, where it goes on.

mod common;

use std::time::Duration;

use common::{arrived, builder, gate, memory, open, ran, runs, tree};
use durable::prelude::*;
use durable::{History, Verdict};

#[durable::function]
async fn ship(_ctx: &mut Context, order: u64) -> durable::Result<u64> {
    ran(&format!("ship-{order}"));
    Ok(order * 10)
}

#[durable::function]
async fn notify(_ctx: &mut Context, order: u64) -> durable::Result<String> {
    ran(&format!("notify-{order}"));
    Ok(format!("notified {order}"))
}

#[durable::function]
async fn wait_for(_ctx: &mut Context, key: String) -> durable::Result<()> {
    gate(&key).await;
    Ok(())
}

#[durable::function(name = "fulfil")]
async fn fulfil_old(ctx: &mut Context, order: u64) -> durable::Result<String> {
    let shipped = ctx.lfc(ship, order).await?;
    ctx.lfc(wait_for, format!("check-{order}")).await?;
    Ok(format!("shipped {shipped}"))
}

/// Changed without a patch: a history of the old code diverges.
#[durable::function(name = "fulfil")]
async fn fulfil_unpatched(ctx: &mut Context, order: u64) -> durable::Result<String> {
    ctx.lfc(notify, order).await?; // the divergent call
    let shipped = ctx.lfc(ship, order).await?;
    ctx.lfc(wait_for, format!("check-{order}")).await?;
    Ok(format!("shipped {shipped}"))
}

/// The same change behind a patch.
#[durable::function(name = "fulfil")]
async fn fulfil_patched(ctx: &mut Context, order: u64) -> durable::Result<String> {
    if ctx.patched("notify-first").await? {
        ctx.lfc(notify, order).await?;
    }
    let shipped = ctx.lfc(ship, order).await?;
    ctx.lfc(wait_for, format!("check-{order}")).await?;
    Ok(format!("shipped {shipped}"))
}

/// The old code's invocation `id`, half done: shipped, waiting.
async fn half_done(store: &std::sync::Arc<dyn Store>, order: u64) -> History {
    let old = builder(store).register(fulfil_old).build().unwrap();
    let id = format!("order-{order}");
    let _handle = old.run(&id, fulfil_old, order).await.unwrap();
    arrived(&format!("check-{order}")).await;
    let history = old.promises().history(&id).await.unwrap();
    drop(old);
    history
}

#[tokio::test(start_paused = true)]
async fn a_change_without_a_patch_is_reported_with_the_call_both_sides_and_the_line() {
    let store = memory();
    let history = half_done(&store, 1).await;
    // The invocation and ship: the wait in flight has nothing written under it, so
    // it is recorded only once it finishes.
    assert_eq!(history.promises.len(), 2);

    let checker = builder(&store).register(fulfil_unpatched).checker().unwrap();
    let checked = checker.check(&history).await.remove(0);
    let Verdict::Diverges(n) = &checked.verdict else { panic!("expected a divergence: {checked}") };
    assert_eq!(n.id, "order-1.1");
    assert_eq!(n.recorded, "a call of \"ship\" (version 1) with arguments 1");
    assert_eq!(n.now, "a call of \"notify\" (version 1) with arguments 1");
    let line = include_str!("replay_check.rs").lines().position(|l| l.ends_with("// the divergent call")).unwrap() + 1;
    assert!(n.location.contains(&format!("replay_check.rs:{line}:")), "{}", n.location);
    assert!(!checked.is_ok());
    let report = checked.to_string();
    assert!(
        report.starts_with("order-1 (fulfil): diverges at order-1.1 (") && report.contains("but the code now makes"),
        "{report}"
    );
    assert_eq!(runs("notify-1"), 0, "the check made no new call");
}

#[tokio::test(start_paused = true)]
async fn the_same_change_behind_a_patch_replays_and_names_the_old_path() {
    let store = memory();
    let history = half_done(&store, 2).await;
    let before = tree(&*store, "order-2").await;
    let ships = runs("ship-2");

    let checked = builder(&store).register(fulfil_patched).checker().unwrap().check(&history).await.remove(0);
    assert_eq!(checked.verdict, Verdict::Replays, "{checked}");
    assert_eq!(checked.old_paths, ["notify-first"]);
    assert_eq!((checked.replayed, checked.recorded), (2, 2), "the invocation and ship");
    assert_eq!(runs("ship-2"), ships, "a recorded call is replayed, not run");
    assert_eq!(tree(&*store, "order-2").await, before, "nothing was written");

    // The old code replays its own history too, and has no patch to name.
    let checked = builder(&store).register(fulfil_old).checker().unwrap().check(&history).await.remove(0);
    assert!(checked.is_ok() && checked.old_paths.is_empty(), "{checked}");
}

#[tokio::test(start_paused = true)]
async fn a_history_recorded_with_the_patch_replays_on_the_new_path() {
    let store = memory();
    let patched = builder(&store).register(fulfil_patched).build().unwrap();
    let _handle = patched.run("order-9", fulfil_patched, 9).await.unwrap();
    arrived("check-9").await;
    let history = patched.promises().history("order-9").await.unwrap();
    drop(patched);
    let ids: Vec<&str> = history.promises.iter().map(|r| r.promise.id.as_str()).collect();
    assert!(ids.contains(&"order-9.patched:notify-first"), "the answer is recorded: {ids:?}");
    let checked = builder(&store).register(fulfil_patched).checker().unwrap().check(&history).await.remove(0);
    assert_eq!(checked.verdict, Verdict::Replays, "{checked}");
    assert!(checked.old_paths.is_empty(), "it took the new path: {checked}");
    assert_eq!(runs("notify-9"), 1, "the check replayed notify, and ran nothing");
}

#[tokio::test(start_paused = true)]
async fn a_store_is_checked_whole_in_flight_and_a_sample_of_the_finished() {
    let store = memory();
    half_done(&store, 3).await;
    open("check-4");
    let done = builder(&store).register(fulfil_old).build().unwrap();
    assert_eq!(done.run("order-4", fulfil_old, 4).await.unwrap().await.unwrap(), "shipped 40");
    let other = builder(&store).register(notify).build().unwrap();
    other.run("note-5", notify, 5).await.unwrap().await.unwrap();
    drop((done, other));
    tokio::time::sleep(Duration::from_secs(60)).await;

    let checker = builder(&store).register(fulfil_unpatched).checker().unwrap();
    let mut checked = checker.check_store(&*store, 10).await.unwrap();
    checked.sort_by(|a, b| a.id.cmp(&b.id));
    let verdicts: Vec<(&str, bool)> = checked.iter().map(|c| (c.id.as_str(), c.is_ok())).collect();
    assert_eq!(verdicts, [("note-5", true), ("order-3", false), ("order-4", false)]);
    assert_eq!(checked[0].verdict, Verdict::NotRegistered, "{}", checked[0]);
    // Only what is in flight, when no finished one is asked for.
    let in_flight = checker.check_store(&*store, 0).await.unwrap();
    assert_eq!(in_flight.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(), ["order-3"]);
}

#[tokio::test(start_paused = true)]
async fn a_history_goes_to_a_file_and_back_and_into_another_store_where_it_finishes() {
    let store = memory();
    let history = half_done(&store, 6).await;
    let json = history.to_json();
    assert_eq!(History::from_json(&json).unwrap(), history);

    let elsewhere = memory();
    let durable = builder(&elsewhere).register(fulfil_old).build().unwrap();
    durable.promises().import(&history).await.unwrap();
    open("check-6");
    let ships = runs("ship-6");
    let handle = durable.run("order-6", fulfil_old, 6).await.unwrap();
    assert_eq!(handle.await.unwrap(), "shipped 60");
    assert_eq!(runs("ship-6"), ships, "the imported call's result was replayed");
    let again = durable.promises().import(&history).await.unwrap_err().to_string();
    assert!(again.contains("order-6") && again.contains("is in this store already"), "{again}");
}

#[test]
fn a_malformed_history_file_says_what_is_wrong_and_where() {
    let error = History::from_json("{\"format\": 1, \"id\": \"x\",\n \"promises\": [}").unwrap_err().to_string();
    assert!(error.contains("line 2"), "{error}");
    let error = History::from_json("{\"format\": 9, \"id\": \"x\", \"promises\": []}").unwrap_err().to_string();
    assert!(error.contains("format 9") && error.contains("reads format 1"), "{error}");
    let error = History::from_json("{\"format\": 1, \"id\": \"x\", \"promises\": []}").unwrap_err().to_string();
    assert!(error.contains("not the invocation \"x\""), "{error}");
}
