//! Looking inside an invocation and steering it from outside: its tree of promises
//! with their tasks, the promises waiting for a person, and a restart from the top
//! under a new id.

mod common;

use std::time::Duration;

use common::{builder, memory};
use durable::prelude::*;
use durable::{Node, State, TaskState};

#[durable::function]
async fn step(_ctx: &mut Context, x: u64) -> durable::Result<u64> {
    Ok(x + 1)
}

/// A local call, a remote one, a sleep and an approval under a chosen id, in its
/// second attempt (the first fails after one call).
#[durable::function(retry = Retry::Constant { delay: Duration::from_secs(1), max_attempts: 2 })]
async fn order(ctx: &mut Context, x: u64) -> durable::Result<u64> {
    let a = ctx.lfc(step, x).await?;
    if ctx.attempt() == 1 {
        return Err(Error::new("the first attempt fails"));
    }
    let b = ctx.rfc(step, a).target("poll://any@remote").await?;
    ctx.sleep(Duration::from_secs(60)).await?;
    let approved = ctx.promise::<bool>().id(format!("approval-{x}")).await?.await?;
    Ok(if approved { b } else { 0 })
}

/// The tree as (depth, id, what, state) lines.
fn lines(node: &Node, depth: usize, out: &mut Vec<(usize, String, String, State)>) {
    out.push((depth, node.promise.id.clone(), node.promise.param.what().to_owned(), node.promise.state));
    node.children.iter().for_each(|c| lines(c, depth + 1, out));
}

#[tokio::test(start_paused = true)]
async fn an_invocations_tree_its_waiting_promises_and_a_restart() {
    let store = memory();
    let _remote = builder(&store).group("remote").register(step).build().unwrap();
    let durable = builder(&store).register(order).build().unwrap();
    let handle = durable.run("o", order, 1).await.unwrap();
    while store.get("approval-1").await.unwrap().is_none() {
        tokio::time::sleep(Duration::from_secs(1)).await;
    }

    // What waits for a person.
    let external: Vec<String> = durable.promises().external().await.unwrap().into_iter().map(|p| p.id).collect();
    assert_eq!(external, ["approval-1"]);

    // The tree while it waits: attempt 1's call, the retry's wait holding attempt 2's
    // calls, and the approval under the body that created it.
    let tree = durable.promises().tree("o").await.unwrap().expect("the invocation exists");
    let mut got = Vec::new();
    lines(&tree, 0, &mut got);
    let expected = [
        (0, "o", "order", State::Pending),
        (1, "o.1", "step", State::Resolved),
        (1, "o.r1", "sleep", State::Resolved),
        (2, "o.r1.1", "step", State::Resolved),
        (2, "o.r1.2", "step", State::Resolved),
        (2, "o.r1.3", "sleep", State::Resolved),
        (1, "approval-1", "promise", State::Pending),
    ];
    let expected: Vec<_> = expected.iter().map(|(d, id, w, s)| (*d, id.to_string(), w.to_string(), *s)).collect();
    assert_eq!(got, expected);
    let remote = &tree.children[1].children[1];
    let task = remote.task.as_ref().expect("a remote call has a task");
    assert_eq!((task.target.group.as_str(), task.state), ("remote", TaskState::Fulfilled));
    assert!(tree.children[0].task.is_none(), "a local call has none");

    // A running invocation does not restart; a finished one does, with its arguments.
    let running = durable.promises().restart("o", "o-again").await.unwrap_err();
    assert!(matches!(&running, Error::Conflict { .. }), "{running:?}");
    durable.promises().resolve("approval-1", &true).await.unwrap();
    assert_eq!(handle.await.unwrap(), 3);
    let again = durable.promises().restart("o", "o-again").await.unwrap();
    assert_eq!((again.id.as_str(), &again.param), ("o-again", &store.get("o").await.unwrap().unwrap().param));
    // It runs from the top; the approval it asks for by the same id is settled already.
    store.wait("o-again", false).await.unwrap();
    assert_eq!(store.get("o-again").await.unwrap().unwrap().value::<u64>().unwrap().unwrap(), 3);
    let taken = durable.promises().restart("o", "o-again").await.unwrap_err();
    assert!(matches!(&taken, Error::Conflict { id, .. } if id == "o-again"), "{taken:?}");
}
