//! Versions: an invocation runs the version of its function it was started with, on
//! a worker that registers that version; several versions of one function are
//! registered side by side.

mod common;

use std::time::Duration;

use common::{arrived, builder, gate, memory, open};
use durable::prelude::*;
use durable::{State, TaskState};

#[durable::function(name = "greet")]
async fn greet_v1(_ctx: &mut Context, who: String) -> durable::Result<String> {
    gate(&who).await;
    Ok(format!("hello {who}"))
}

#[durable::function(name = "greet", version = 2)]
async fn greet_v2(_ctx: &mut Context, who: String) -> durable::Result<String> {
    Ok(format!("good day, {who}"))
}

#[tokio::test(start_paused = true)]
async fn an_invocation_runs_the_version_it_started_with() {
    let store = memory();
    let old = builder(&store).register(greet_v1).build().unwrap();
    let started = old.run("greet-ada", greet_v1, "ada".into()).await.unwrap();
    arrived("ada").await;
    drop(old); // the old deploy goes, the invocation half done
    open("ada");

    // A deploy with only version 2 leaves it alone: it waits for version 1.
    let new = builder(&store).register(greet_v2).build().unwrap();
    tokio::time::sleep(Duration::from_secs(120)).await;
    let task = store.task("greet-ada").await.unwrap().unwrap();
    assert_eq!(task.state, TaskState::Pending, "no worker of version 1: still waiting, never run by version 2");
    assert_eq!(store.get("greet-ada").await.unwrap().unwrap().state, State::Pending);
    let unserved = new.promises().unserved(Duration::from_secs(60)).await.unwrap();
    assert_eq!(unserved.iter().map(|t| t.id.as_str()).collect::<Vec<_>>(), ["greet-ada"]);
    // New invocations run version 2.
    assert_eq!(new.run("greet-bob", greet_v2, "bob".into()).await.unwrap().await.unwrap(), "good day, bob");
    drop(new);

    // A deploy that keeps version 1 beside version 2 finishes it with version 1.
    let both = builder(&store).register(greet_v1).register(greet_v2).build().unwrap();
    assert_eq!(started.await.unwrap(), "hello ada");
    assert_eq!(both.run("greet-cy", greet_v2, "cy".into()).await.unwrap().await.unwrap(), "good day, cy");
    let workers = store.workers().await.unwrap();
    let mut functions = workers.iter().find(|w| w.process == both.process()).unwrap().functions.clone();
    functions.sort();
    assert_eq!(functions, ["greet", "greet@2"], "a worker announces each version it runs");
}

#[tokio::test(start_paused = true)]
async fn a_remote_call_of_a_version_goes_to_a_worker_that_registers_it() {
    let store = memory();
    open("eve");
    let _v1 = builder(&store).group("people").register(greet_v1).build().unwrap();
    let _v2 = builder(&store).group("people").register(greet_v2).build().unwrap();
    let client = builder(&store).group("client").build().unwrap();
    for _ in 0..4 {
        let call = |id: &str, version| {
            client
                .rpc(id, Remote::<String, String>::named("greet").version(version), "eve".into())
                .target("poll://any@people")
        };
        let (one, two) = (call("v1-call", 1).await.unwrap(), call("v2-call", 2).await.unwrap());
        assert_eq!(one.await.unwrap(), "hello eve");
        assert_eq!(two.await.unwrap(), "good day, eve");
        store.purge(durable::store::Purge::Root("v1-call".into())).await.unwrap();
        store.purge(durable::store::Purge::Root("v2-call".into())).await.unwrap();
    }
}

#[tokio::test(start_paused = true)]
async fn registering_a_version_twice_or_a_name_with_an_at_sign_is_refused() {
    let store = memory();
    let twice = builder(&store).register(greet_v2).register(greet_v2).build().unwrap_err().to_string();
    assert!(twice.contains("function \"greet\" version 2 is registered twice"), "{twice}");

    #[durable::function(name = "greet@3")]
    async fn sneaky(_ctx: &mut Context, _x: u32) -> durable::Result<u32> {
        Ok(0)
    }
    let at = builder(&store).register(sneaky).build().unwrap_err().to_string();
    assert!(at.contains("\"greet@3\"") && at.contains("may not contain '@'"), "{at}");
}
