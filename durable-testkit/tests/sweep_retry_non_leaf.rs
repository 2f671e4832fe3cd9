//! The crash sweep over a function whose first attempt fails in a child: its second
//! attempt runs the children afresh, and a crash at any point, in either attempt or in
//! the wait between them, recovers to the crash-free result.

use std::sync::Arc;
use std::time::Duration;

use durable::prelude::*;
use durable_testkit::Sweep;

/// Refuses the first attempt of its caller.
#[durable::function(retry = Retry::Never)]
async fn vet(_ctx: &mut Context, attempt: u32) -> durable::Result<u32> {
    if attempt == 1 { Err(Error::new("the first attempt is refused")) } else { Ok(attempt) }
}

#[durable::function]
async fn triple(_ctx: &mut Context, x: u32) -> durable::Result<u32> {
    Ok(3 * x)
}

#[durable::function(retry = Retry::Constant { delay: Duration::from_secs(5), max_attempts: 3 })]
async fn order(ctx: &mut Context, x: u32) -> durable::Result<u32> {
    let attempt = ctx.attempt();
    let tripled = ctx.lfc(triple, x).await?;
    let remote = ctx.rfi(triple, x + 1).target("poll://any@remote").await?;
    let vetted = ctx.lfc(vet, attempt).await?;
    Ok(tripled + remote.await? + vetted)
}

fn workers(store: Arc<dyn Store>) -> Vec<Durable> {
    vec![
        Durable::builder().store(store.clone()).register(order).register(vet).register(triple).build().unwrap(),
        Durable::builder().store(store).group("remote").register(triple).build().unwrap(),
    ]
}

#[tokio::test(start_paused = true)]
async fn every_crash_point_of_a_retried_parent_recovers() {
    let report = Sweep::new("o", order, 2).workers(workers).run().await.unwrap_or_else(|failure| panic!("{failure}"));
    assert_eq!(report.crash_free_body_runs["order"], 2, "one failed attempt, one that succeeds");
    assert_eq!(report.crash_free_body_runs["vet"], 2, "the child is called again, not replayed");
    assert!(report.writes >= 10, "{report:?}");
    assert_eq!(report.crash_points, 2 * report.writes, "{report:?}");
}
