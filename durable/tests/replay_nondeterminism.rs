//! Replay that diverges from the recorded history halts the task with an error that
//! names the id, what was recorded, what the code does now, and where; nothing is
//! settled, and a fixed deploy resumes it.

mod common;

use common::{arrived, builder, gate, memory, open, tree};
use durable::prelude::*;
use durable::{State, TaskState};

#[durable::function]
async fn step(_ctx: &mut Context, x: u32) -> durable::Result<u32> {
    Ok(x)
}

#[durable::function]
async fn other(_ctx: &mut Context, x: u32) -> durable::Result<u32> {
    Ok(x)
}

#[durable::function]
async fn blocker(_ctx: &mut Context, key: String) -> durable::Result<()> {
    gate(&key).await;
    Ok(())
}

#[durable::function(name = "wf")]
async fn wf_v1(ctx: &mut Context, key: String) -> durable::Result<u32> {
    let x = ctx.lfc(step, 1).await?;
    ctx.lfc(blocker, key).await?;
    Ok(x)
}

#[durable::function(name = "wf")]
async fn wf_renamed(ctx: &mut Context, key: String) -> durable::Result<u32> {
    let x = ctx.lfc(other, 1).await?; // the line the error must point at
    ctx.lfc(blocker, key).await?;
    Ok(x)
}

#[durable::function(name = "wf")]
async fn wf_new_args(ctx: &mut Context, key: String) -> durable::Result<u32> {
    let x = ctx.lfc(step, 2).await?;
    ctx.lfc(blocker, key).await?;
    Ok(x)
}

#[durable::function]
async fn echo(_ctx: &mut Context, text: String) -> durable::Result<String> {
    Ok(text)
}

#[durable::function(name = "wf")]
async fn wf_long_v1(ctx: &mut Context, key: String) -> durable::Result<u32> {
    ctx.lfc(echo, "x".repeat(500)).await?;
    ctx.lfc(blocker, key).await?;
    Ok(0)
}

#[durable::function(name = "wf")]
async fn wf_long_changed(ctx: &mut Context, key: String) -> durable::Result<u32> {
    ctx.lfc(echo, "y".repeat(500)).await?;
    ctx.lfc(blocker, key).await?;
    Ok(0)
}

/// Runs v1 until it blocks, crashes it, and replays with `changed`.
async fn diverge<F>(
    id: &str,
    changed: F,
) -> (std::sync::Arc<dyn Store>, durable::Error, Vec<(String, State, Option<String>)>)
where
    F: Function<Args = String, Output = u32>,
{
    diverge_from(id, wf_v1, changed).await
}

/// Runs `v1` until it blocks, crashes it, and replays with `changed`.
async fn diverge_from<F, G>(
    id: &str,
    v1: G,
    changed: F,
) -> (std::sync::Arc<dyn Store>, durable::Error, Vec<(String, State, Option<String>)>)
where
    F: Function<Args = String, Output = u32>,
    G: Function<Args = String, Output = u32>,
{
    let store = memory();
    let first = builder(&store).register(v1.clone()).build().unwrap();
    let handle = first.run(id, v1, id.into()).await.unwrap();
    arrived(id).await;
    drop(first);
    let before = tree(&*store, id).await;

    let second = builder(&store).register(changed).build().unwrap();
    let error = handle.await.unwrap_err();
    drop(second);
    (store, error, before)
}

#[tokio::test(start_paused = true)]
async fn a_renamed_call_halts_with_the_id_the_history_and_the_line() {
    let (store, error, before) = diverge("nd-name", wf_renamed).await;
    let durable::Error::Nondeterminism(n) = &error else { panic!("expected nondeterminism, got {error}") };
    assert_eq!(n.id, "nd-name.1");
    assert!(n.recorded.contains("\"step\""), "recorded: {}", n.recorded);
    assert!(n.now.contains("\"other\""), "now: {}", n.now);
    let line = include_str!("replay_nondeterminism.rs")
        .lines()
        .position(|l| l.contains("the line the error must point at"))
        .unwrap()
        + 1;
    assert!(n.location.contains(&format!("replay_nondeterminism.rs:{line}:")), "location: {}", n.location);
    let message = error.to_string();
    assert!(message.contains("nd-name.1") && message.contains("halted"), "{message}");

    assert_eq!(tree(&*store, "nd-name").await, before, "nothing was created or settled by the diverging replay");
    let task = store.task("nd-name").await.unwrap().unwrap();
    assert_eq!(task.state, TaskState::Halted);

    // A fixed deploy resumes it.
    open("nd-name");
    let fixed = builder(&store).register(wf_v1).build().unwrap();
    // A worker resumes its group's halted tasks as it starts.
    while store.task("nd-name").await.unwrap().unwrap().state == TaskState::Halted {
        tokio::task::yield_now().await;
    }
    assert_eq!(fixed.run("nd-name", wf_v1, "nd-name".into()).await.unwrap().await.unwrap(), 1);
}

#[tokio::test(start_paused = true)]
async fn changed_arguments_are_nondeterminism_too() {
    let (store, error, before) = diverge("nd-args", wf_new_args).await;
    let durable::Error::Nondeterminism(n) = &error else { panic!("expected nondeterminism, got {error}") };
    assert_eq!(n.id, "nd-args.1");
    assert_eq!(n.recorded, "a call of \"step\" (version 1) with arguments 1", "the recorded arguments, as JSON");
    assert_eq!(n.now, "a call of \"step\" (version 1) with arguments 2", "the current arguments, as JSON");
    let message = error.to_string();
    assert!(
        message.contains("the history recorded a call of \"step\" (version 1) with arguments 1, but the code now makes a call of \"step\" (version 1) with arguments 2"),
        "{message}"
    );
    assert_eq!(tree(&*store, "nd-args").await, before);
    assert_eq!(store.get("nd-args").await.unwrap().unwrap().state, State::Pending);
}

#[tokio::test(start_paused = true)]
async fn long_arguments_are_shown_truncated() {
    let (_, error, _) = diverge_from("nd-long", wf_long_v1, wf_long_changed).await;
    let durable::Error::Nondeterminism(n) = &error else { panic!("expected nondeterminism, got {error}") };
    assert!(n.now.starts_with("a call of \"echo\" (version 1) with arguments \"yyyy"), "now: {}", n.now);
    assert!(n.now.ends_with("… (502 bytes)"), "a long argument is cut, with its size: {}", n.now);
    assert!(n.now.len() < 200, "now: {}", n.now);
}

#[tokio::test(start_paused = true)]
async fn a_restart_with_the_same_code_leaves_a_nondeterminism_halt_and_resume_retries_it() {
    let (store, _, _) = diverge("nd-same", wf_renamed).await;
    let halted = store.task("nd-same").await.unwrap().unwrap();
    assert_eq!(halted.state, TaskState::Halted);

    // The same diverging code starts again: replaying would diverge again.
    let same = builder(&store).register(wf_renamed).build().unwrap();
    tokio::time::sleep(std::time::Duration::from_secs(10)).await;
    assert_eq!(store.task("nd-same").await.unwrap().unwrap(), halted, "left halted, untouched");

    // An explicit resume replays it anyway, and it halts again the same way.
    assert_eq!(same.promises().resume("nd-same").await.unwrap(), 1);
    let error = same.rpc("nd-same", wf_renamed, "nd-same".into()).await.unwrap().await.unwrap_err();
    assert!(matches!(error, durable::Error::Nondeterminism(_)), "{error:?}");
    assert!(store.task("nd-same").await.unwrap().unwrap().version > halted.version, "it was replayed");
}
