//! Bad input is a clear error that says what was wrong and where; nothing panics, and
//! nothing is written for a call that is refused.

mod common;

use std::sync::Arc;

use common::{builder, memory};
use durable::State;
use durable::Target;
use durable::prelude::*;
use durable::store::{CreatePromise, NewTask};

#[durable::function]
async fn double(_ctx: &mut Context, x: i64) -> durable::Result<i64> {
    Ok(2 * x)
}

#[durable::function]
async fn echo(_ctx: &mut Context, s: String) -> durable::Result<String> {
    Ok(s)
}

#[durable::function]
async fn grow(_ctx: &mut Context, n: usize) -> durable::Result<String> {
    Ok("x".repeat(n))
}

#[durable::function(retry = Retry::Never)]
async fn forward(ctx: &mut Context, s: String) -> durable::Result<String> {
    ctx.lfc(echo, s.repeat(10)).await
}

#[tokio::test(start_paused = true)]
async fn an_unregistered_function_is_refused_before_anything_is_written() {
    let store = memory();
    let durable = builder(&store).register(echo).build().unwrap();
    let error = durable.run("u", double, 1).await.unwrap_err();
    assert!(matches!(&error, Error::NotRegistered { name, .. } if name == "double"), "{error:?}");
    assert!(error.to_string().contains("\"double\" is not registered"), "{error}");
    assert!(store.get("u").await.unwrap().is_none());
}

#[durable::function(retry = Retry::Never)]
async fn parse(_ctx: &mut Context, text: String) -> durable::Result<u64> {
    Ok(text.trim().parse::<u64>()?)
}

#[tokio::test(start_paused = true)]
async fn question_mark_takes_any_error_as_a_retryable_failure_with_its_message() {
    let store = memory();
    let durable = builder(&store).register(parse).build().unwrap();
    assert_eq!(durable.run("ok", parse, " 42 ".into()).await.unwrap().await.unwrap(), 42);
    let error = durable.run("bad", parse, "4x2".into()).await.unwrap().await.unwrap_err();
    assert!(
        matches!(&error, Error::Application { message, terminal: false } if message == "invalid digit found in string"),
        "{error:?}"
    );
    // And back: a durable::Error goes through `?` into a boxed std error.
    let boxed = || -> Result<(), Box<dyn std::error::Error + Send + Sync>> { Err(error)? };
    assert_eq!(boxed().unwrap_err().to_string(), "invalid digit found in string");
}

#[tokio::test(start_paused = true)]
async fn a_runtime_with_no_functions_takes_no_tasks() {
    let store = memory();
    // A client and a worker in one group: the client has nothing to run.
    let client = builder(&store).pid("client").build().unwrap();
    let _worker = builder(&store).pid("worker").register(echo).build().unwrap();
    for i in 0..5 {
        let handle = client.rpc(&format!("e{i}"), echo, format!("x{i}")).await.unwrap();
        assert_eq!(handle.await.unwrap(), format!("x{i}"));
        let task = store.task(&format!("e{i}")).await.unwrap().unwrap();
        assert_eq!((task.faults, &task.error), (0, &None), "never claimed by the client and given back: {task:?}");
    }
}

/// Registered only by the worker a rolling deploy reaches last.
#[durable::function(name = "nobody-has-me")]
async fn late(_ctx: &mut Context, x: i64) -> durable::Result<i64> {
    Ok(x + 1)
}

#[tokio::test(start_paused = true)]
async fn a_task_for_a_function_this_worker_lacks_waits_for_one_that_has_it() {
    let store = memory();
    let _old = builder(&store).pid("old").register(echo).build().unwrap();
    let mut req = CreatePromise::new("nobody", durable::Param::call("nobody-has-me", 1, "1".into()));
    req.task = Some(NewTask::new(Target::any("default")));
    store.create(req).await.unwrap();
    // An hour on, it still waits: the old worker does not take it, and nothing rejects
    // it; it is listed as waiting for a worker that runs its function.
    tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
    let task = store.task("nobody").await.unwrap().unwrap();
    assert_eq!((task.state, task.version), (durable::TaskState::Pending, 0), "never claimed: {task:?}");
    assert_eq!(store.get("nobody").await.unwrap().unwrap().state, durable::State::Pending);
    let unserved = _old.promises().unserved(std::time::Duration::from_secs(60)).await.unwrap();
    assert_eq!(unserved.iter().map(|t| t.id.as_str()).collect::<Vec<_>>(), ["nobody"]);
    // The deploy reaches a worker that has it.
    let _new = builder(&store).pid("new").register(late).build().unwrap();
    store.wait("nobody", false).await.unwrap();
    assert_eq!(store.get("nobody").await.unwrap().unwrap().value::<i64>().unwrap().unwrap(), 2);
}

#[tokio::test(start_paused = true)]
async fn arguments_that_do_not_decode_reject_with_the_function_and_type() {
    let store = memory();
    let _worker = builder(&store).register(double).build().unwrap();
    let mut req = CreatePromise::new("bad-args", durable::Param::call("double", 1, "\"seven\"".into()));
    req.task = Some(NewTask::new(Target::any("default")));
    store.create(req).await.unwrap();
    store.wait("bad-args", false).await.unwrap();
    let p = store.get("bad-args").await.unwrap().unwrap();
    assert_eq!(p.state, State::Rejected, "a deterministic decode failure rejects, it is not retried");
    let error = p.value::<i64>().unwrap().unwrap_err();
    let message = error.to_string();
    assert!(matches!(error, Error::Codec { .. }), "{error:?}");
    assert!(message.contains("bad-args") && message.contains("\"double\"") && message.contains("i64"), "{message}");
}

#[tokio::test(start_paused = true)]
async fn payloads_over_the_limit_are_refused_before_they_are_written() {
    let store = memory();
    let durable = builder(&store).register(echo).register(grow).register(forward).max_payload(100).build().unwrap();

    let error = durable.run("big", echo, "y".repeat(200)).await.unwrap_err();
    assert!(matches!(error, Error::PayloadTooLarge { size: 202, limit: 100, .. }), "{error:?}");
    assert!(error.to_string().contains("the arguments of big"), "{error}");
    assert!(store.get("big").await.unwrap().is_none(), "nothing was written");

    let error = durable.run("child", forward, "z".repeat(20)).await.unwrap().await.unwrap_err();
    assert!(matches!(&error, Error::PayloadTooLarge { id, .. } if id == "child.1"), "{error:?}");
    assert!(store.get("child.1").await.unwrap().is_none(), "the child was not written");

    let error = durable.run("result", grow, 500).await.unwrap().await.unwrap_err();
    assert!(matches!(&error, Error::PayloadTooLarge { what: "the result", .. }), "{error:?}");
    assert_eq!(store.get("result").await.unwrap().unwrap().state, State::Rejected);
}

#[tokio::test(start_paused = true)]
async fn bad_ids_and_builders_are_clear_errors() {
    let store = memory();
    let durable = builder(&store).register(echo).build().unwrap();
    let long = "x".repeat(durable::MAX_ID_LEN + 1);
    for (id, reason) in [
        ("a.b", "may not contain '.'"),
        ("", "may not be empty"),
        ("a\nb", "control characters"),
        (long.as_str(), "at most 1024 bytes"),
    ] {
        let error = durable.run(id, echo, String::new()).await.unwrap_err();
        assert!(matches!(error, Error::InvalidId { .. }) && error.to_string().contains(reason), "{error}");
    }
    durable.run("taken", echo, "x".into()).await.unwrap().await.unwrap();
    let other = builder(&store).register(double).build().unwrap();
    let error = other.run("taken", double, 1).await.unwrap_err();
    assert!(matches!(error, Error::Conflict { .. }), "{error:?}");
    assert!(error.to_string().contains("exists as a call of \"echo\""), "{error}");
    let error = durable.run("taken", echo, "y".into()).await.unwrap_err();
    assert!(matches!(error, Error::Conflict { .. }), "{error:?}");
    assert!(error.to_string().contains("with other arguments: \"x\" then, \"y\" now"), "{error}");
    assert_eq!(durable.run("taken", echo, "x".into()).await.unwrap().await.unwrap(), "x", "the same call attaches");

    let error = Durable::builder().register(echo).register(echo).build().unwrap_err();
    let message = error.to_string();
    assert!(message.contains("no store") && message.contains("\"echo\" version 1 is registered twice"), "{message}");
    let _ = Arc::clone(&store);
}

#[durable::function]
async fn chosen(ctx: &mut Context, id: String) -> durable::Result<String> {
    match ctx.lfc(echo, "x".into()).id(id).await {
        Err(Error::InvalidId { id, reason }) => Ok(format!("{id:?}: {reason}")),
        other => Err(Error::terminal(format!("expected an invalid id, got {other:?}"))),
    }
}

#[durable::function]
async fn deep(ctx: &mut Context, depth: u32) -> durable::Result<u32> {
    match ctx.lfc(deep, depth + 1).await {
        Err(Error::InvalidId { reason, .. }) if reason.contains("nested") => Ok(depth),
        other => other,
    }
}

#[tokio::test(start_paused = true)]
async fn chosen_and_minted_ids_are_checked_before_anything_is_written() {
    let store = memory();
    let durable = builder(&store).register(chosen).register(deep).build().unwrap();
    for (id, reason) in [("a.b", "'.'"), ("", "empty")] {
        let said = durable.run(&format!("c{}", id.len()), chosen, id.into()).await.unwrap().await.unwrap();
        assert!(said.contains(reason), "{said}");
    }
    assert_eq!(common::tree(&*store, "c").await.len(), 2, "no child was written, only the two roots");
    // Each level adds two bytes to a 1000-byte root id: the 13th would be too long.
    let root = "r".repeat(1000);
    assert_eq!(durable.run(&root, deep, 0).await.unwrap().await.unwrap(), 12);
}

#[tokio::test(start_paused = true)]
async fn a_durable_that_was_shut_down_runs_nothing() {
    let store = memory();
    let durable = builder(&store).register(echo).build().unwrap();
    durable.shutdown().await.unwrap();
    let error = durable.run("late", echo, "x".into()).await.unwrap_err();
    assert!(error.to_string().contains("shut down"), "{error}");
    assert!(store.get("late").await.unwrap().is_none(), "nothing was written");
}
