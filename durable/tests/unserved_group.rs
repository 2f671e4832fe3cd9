//! A call routed to a group that no live worker serves is visible, not silent: workers
//! announce themselves, `Promises::unserved` lists such tasks, and a caller may ask for
//! an error after a while. The task itself stays: a worker of that group that starts
//! later runs it.

mod common;

use std::time::Duration;

use common::{builder, memory};
use durable::prelude::*;

#[durable::function(name = "charge")]
async fn charge(_ctx: &mut Context, cents: u64) -> durable::Result<u64> {
    Ok(cents)
}

#[tokio::test(start_paused = true)]
async fn a_group_nobody_serves_is_named_and_a_worker_that_starts_serves_it() {
    let store = memory();
    let shop = builder(&store).group("shop").pid("shop-1").build().unwrap();
    while !store.workers().await.unwrap().iter().any(|w| w.group == "shop" && w.pid == "shop-1") {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // A misspelt group: the caller asked to hear of it after half a minute.
    let typo = shop
        .rpc("pay-1", charge, 100)
        .target("poll://any@payment")
        .unserved_after(Duration::from_secs(30))
        .await
        .unwrap();
    let error = typo.await.unwrap_err();
    assert!(
        matches!(&error, Error::Unserved { id, group, function, waited }
            if id == "pay-1" && group == "payment" && function == "charge" && *waited >= 30),
        "{error:?}"
    );
    assert!(error.to_string().contains("no live worker does"), "{error}");
    let unserved = shop.promises().unserved(Duration::from_secs(10)).await.unwrap();
    assert_eq!(unserved.iter().map(|t| t.id.as_str()).collect::<Vec<_>>(), ["pay-1"]);
    assert_eq!(unserved[0].target.group, "payment");

    // The workers of that group start: the waiting task runs, and nothing is unserved.
    let _payment = builder(&store).group("payment").register(charge).build().unwrap();
    let served = shop.rpc("pay-1", charge, 100).target("poll://any@payment").unserved_after(Duration::from_secs(30));
    assert_eq!(served.await.unwrap().await.unwrap(), 100);
    assert!(shop.promises().unserved(Duration::ZERO).await.unwrap().is_empty());
}
