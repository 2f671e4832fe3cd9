//! An invocation suspends only when it makes no progress: while its local children
//! keep writing, awaiting a remote promise next to them does not suspend it (which
//! would abort them and replay).

mod common;

use std::time::Duration;

use common::{builder, memory, ran, runs};
use durable::prelude::*;

/// Local work: a tenth of the suspend window per step.
#[durable::function]
async fn step(_ctx: &mut Context, i: u32) -> durable::Result<u32> {
    tokio::time::sleep(Duration::from_millis(300)).await;
    ran("step");
    Ok(i)
}

#[durable::function]
async fn grind(ctx: &mut Context, steps: u32) -> durable::Result<u32> {
    let mut sum = 0;
    for i in 0..steps {
        sum += ctx.lfc(step, i).await?;
    }
    Ok(sum)
}

#[durable::function]
async fn supervised(ctx: &mut Context) -> durable::Result<u32> {
    let approval = ctx.promise::<u32>().await?;
    let work = ctx.lfi(grind, 10).await?;
    let (approved, done) = tokio::join!(approval, work);
    Ok(approved? + done?)
}

#[tokio::test(start_paused = true)]
async fn local_children_writing_keep_an_invocation_awaiting_a_remote_promise_in_memory() {
    let store = memory();
    let durable = builder(&store).register(supervised).build().unwrap();
    let handle = durable.run("s", supervised, ()).await.unwrap();
    // Three seconds of local work, three times the suspend window.
    let finished = async {
        // `s.2` is in the store from its first step's result on: look each
        // (virtual) millisecond.
        while store.get("s.2").await.unwrap().is_none() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        while store.get("s.2").await.unwrap().is_some_and(|p| p.state == durable::State::Pending) {
            store.wait("s.2", false).await.unwrap();
        }
    };
    tokio::time::timeout(Duration::from_secs(60), finished)
        .await
        .expect("the local work finishes before the approval comes: a suspension would have aborted it");
    durable.promises().resolve("s.1", &100).await.unwrap();
    assert_eq!(handle.await.unwrap(), 100 + 45);
    assert_eq!(runs("step"), 10, "no step ran twice: the local work was never aborted");
    assert_eq!(store.task("s").await.unwrap().unwrap().version, 1, "the task never suspended");
}
