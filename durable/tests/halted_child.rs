//! A halted child is not a settlement: its parent waits without burning CPU (and
//! suspends), and finishes once a fixed deploy resumes the child and it settles.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::{builder, memory};
use durable::TaskState;
use durable::prelude::*;

static FIXED: AtomicBool = AtomicBool::new(false);

/// Until fixed, its result is one JSON cannot hold (a map whose keys are not
/// strings): a platform fault on every attempt.
#[durable::function(name = "render")]
async fn render(_ctx: &mut Context, frame: u32) -> durable::Result<BTreeMap<(u32, u32), String>> {
    if !FIXED.load(Ordering::SeqCst) {
        return Ok(BTreeMap::from([((frame, 0), "broken".to_owned())]));
    }
    Ok(BTreeMap::new())
}

#[durable::function]
async fn movie(ctx: &mut Context) -> durable::Result<usize> {
    Ok(ctx.rfc(render, 7).target("poll://any@gpu").await?.len())
}

#[tokio::test(start_paused = true)]
async fn a_parent_of_a_halted_child_suspends_and_finishes_once_the_child_is_resumed() {
    let store = memory();
    let _gpu = builder(&store).group("gpu").register(render).build().unwrap();
    // The parent stays in memory while the child halts (its five faults take 15 s).
    let studio =
        builder(&store).group("studio").suspend_after(Duration::from_secs(60)).register(movie).build().unwrap();
    let handle = studio.run("movie", movie, ()).await.unwrap();

    // The child faults on every attempt until its task halts.
    while store.get("movie.1").await.unwrap().is_none() {
        tokio::task::yield_now().await;
    }
    loop {
        store.wait("movie.1", true).await.unwrap();
        if store.task("movie.1").await.unwrap().is_some_and(|t| t.state == TaskState::Halted) {
            break;
        }
    }
    assert_eq!(store.task("movie").await.unwrap().unwrap().state, TaskState::Acquired, "in memory");
    // The parent neither settles nor spins: time passes, and it suspends on the child.
    tokio::time::sleep(Duration::from_secs(120)).await;
    assert_eq!(store.get("movie").await.unwrap().unwrap().state, durable::State::Pending);
    assert_eq!(store.task("movie").await.unwrap().unwrap().state, TaskState::Suspended);

    // A fixed deploy starts: it resumes the child, which settles and wakes the parent.
    FIXED.store(true, Ordering::SeqCst);
    let _fixed = builder(&store).group("gpu").register(render).build().unwrap();
    assert_eq!(handle.await.unwrap(), 0);
}
