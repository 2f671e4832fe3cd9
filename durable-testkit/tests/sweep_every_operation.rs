//! The full single-crash sweep, and random multi-crash schedules, of a workflow that
//! uses every context operation: lfi, lfc, rfi, rfc, detached, sleep, an external
//! promise, now, random, uuid, a patch, and a failure that is retried.

use std::sync::Arc;
use std::time::Duration;

use durable::prelude::*;
use durable::store::Search;
use durable_testkit::strategy::crash_schedule;
use durable_testkit::{Sweep, block_on};
use proptest::prelude::*;

#[durable::function]
async fn double(_ctx: &mut Context, x: i64) -> durable::Result<i64> {
    Ok(2 * x)
}

/// Fails its first attempt, so the retry policy and its durable wait are exercised.
#[durable::function(retry = Retry::Constant { delay: Duration::from_secs(5), max_attempts: 3 })]
async fn flaky(ctx: &mut Context, x: i64) -> durable::Result<i64> {
    if ctx.attempt() == 1 { Err(Error::new("the first attempt fails")) } else { Ok(x + 1) }
}

#[durable::function]
async fn audit(ctx: &mut Context, entry: String) -> durable::Result<String> {
    ctx.sleep(Duration::from_secs(60)).await?;
    Ok(format!("audited {entry}"))
}

#[durable::function]
async fn everything(ctx: &mut Context, x: i64) -> durable::Result<(i64, String)> {
    let started = ctx.now().await?;
    let coin = ctx.random().await?;
    let token = ctx.uuid().await?;
    let local = ctx.lfi(double, x).await?;
    let called = ctx.lfc(double, x + 1).await?;
    let remote = ctx.rfi(double, x + 2).target("poll://any@remote").await?;
    let remote_called = ctx.rfc(Remote::<i64, i64>::named("double"), x + 3).target("poll://any@remote").await?;
    let retried = ctx.lfc(flaky, x).await?;
    let audit_id = ctx.detached(audit, format!("run {x}")).await?;
    ctx.sleep(Duration::from_secs(24 * 3600)).await?;
    // After the day's sleep the task was suspended: this runs in a replay, which
    // must find the patch's answer recorded.
    let patch = if ctx.patched("double-again").await? { ctx.lfc(double, x + 4).await? } else { 0 };
    let approval = ctx.promise::<i64>().tags([("kind", "approval")]).await?;
    let approved = approval.await?;
    let _ = (started, coin, token);
    let total = local.await? + called + remote.await? + remote_called + retried + approved + patch;
    Ok((total, audit_id))
}

fn workers(store: Arc<dyn Store>) -> Vec<Durable> {
    vec![
        Durable::builder()
            .store(store.clone())
            .register(everything)
            .register(double)
            .register(flaky)
            .register(audit)
            .build()
            .unwrap(),
        Durable::builder().store(store).group("remote").register(double).build().unwrap(),
    ]
}

/// A person who approves every pending approval with 100.
async fn approver(durable: Durable) {
    loop {
        let search = Search {
            tags: [("kind".into(), "approval".into())].into(),
            state: Some(durable::State::Pending),
            ..Search::default()
        };
        if let Ok(page) = durable.promises().search(search).await {
            for p in page.promises {
                let _ = durable.promises().resolve(&p.id, &100).await;
            }
        }
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
}

fn sweep() -> Sweep<impl Function<Args = i64, Output = (i64, String)>> {
    Sweep::new("all", everything, 1).workers(workers).outside(approver)
}

#[tokio::test(start_paused = true)]
async fn every_single_crash_point_of_every_operation_recovers() {
    let real = std::time::Instant::now();
    let report = sweep().run().await.unwrap_or_else(|failure| panic!("{failure}"));
    assert!(report.writes >= 20, "{report:?}");
    assert_eq!(report.crash_free_body_runs["flaky"], 2, "one failure, one retry");
    println!(
        "{} writes, {} crash points in {:?}; bodies run {:?}",
        report.writes,
        report.crash_points,
        real.elapsed(),
        report.body_runs
    );
}

#[test]
fn the_crash_free_result_is_what_the_workflow_computes() {
    let result = block_on(async {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let runtimes = workers(store);
        tokio::spawn(approver(runtimes[0].clone()));
        runtimes[0].run("all", everything, 1).await.unwrap().await.unwrap()
    });
    assert_eq!(result, (2 + 4 + 6 + 8 + 2 + 100 + 10, "all.9".to_owned()));
}

/// Random schedules per run: `DURABLE_SWEEP_CASES`, or 24 (seconds here; `.ci/run`
/// runs 512 in a release build as a step of its own).
fn cases() -> u32 {
    std::env::var("DURABLE_SWEEP_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(24)
}

proptest! {
    #![proptest_config(durable_testkit::strategy::config(cases()))]

    #[test]
    fn random_multi_crash_schedules_recover(schedule in crash_schedule(4, 40)) {
        let outcome = block_on(sweep().run_schedule(&schedule));
        prop_assert!(outcome.is_ok(), "{}", outcome.unwrap_err());
    }
}
