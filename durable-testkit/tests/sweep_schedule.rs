//! The crash sweep over a scheduled function: a schedule's fire starts the invocation
//! the sweep follows, and a crash at any point (the fire's write among them) recovers
//! to the crash-free result, with the fire made once.

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use durable::prelude::*;
use durable::store::VirtualClock;
use durable::{ScheduleSpec, Schedules};
use durable_testkit::Sweep;

#[durable::function]
async fn count_rows(_ctx: &mut Context, table: String) -> durable::Result<u64> {
    Ok(table.len() as u64 * 1000)
}

#[durable::function]
async fn send(_ctx: &mut Context, to: String, rows: u64) -> durable::Result<String> {
    Ok(format!("{rows} rows to {to}"))
}

/// The nightly report: a local step, then a remote one.
#[durable::function]
async fn nightly(ctx: &mut Context, table: String) -> durable::Result<String> {
    let rows = ctx.lfc(count_rows, table).await?;
    ctx.rfc(send, ("ops@example.com".to_owned(), rows)).target("poll://any@mail").await
}

/// The fire the sweep follows: the schedule's only one, at the virtual clock's start
/// (2024-01-01T00:00:00Z).
const FIRE: &str = "nightly@2024-01-01T00:00:00Z";

/// A store holding the schedule, made by an operator's tool before any worker starts.
fn scheduled() -> Arc<dyn Store> {
    use futures::FutureExt;
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let once = UNIX_EPOCH + Duration::from_millis(VirtualClock::START);
    let spec = ScheduleSpec::every(Duration::from_secs(3600)).start_at(once).end_at(once);
    let schedules = Schedules::new(&*store);
    let create = schedules.create("nightly", spec, nightly, "orders".into());
    // A memory store answers at once.
    let created = create.now_or_never().expect("answered").expect("the schedule");
    assert_eq!(created.fire_id(created.next.expect("one fire")), FIRE);
    store
}

fn workers(store: Arc<dyn Store>) -> Vec<Durable> {
    vec![
        Durable::builder().store(store.clone()).register(nightly).register(count_rows).build().unwrap(),
        Durable::builder().store(store).group("mail").register(send).build().unwrap(),
    ]
}

#[tokio::test(start_paused = true)]
async fn every_crash_point_of_a_scheduled_function_recovers_with_the_fire_made_once() {
    let sweep = Sweep::new(FIRE, nightly, "orders".into()).workers(workers).store(scheduled).scheduled();
    let report = sweep.run().await.unwrap_or_else(|failure| panic!("{failure}"));
    assert_eq!(report.crash_free_body_runs["nightly"], 1, "{report:?}");
    assert!(report.writes >= 4, "the fire's write and the invocation's: {report:?}");
}

/// Without the sweep starting it, the fire is the schedule's: tagged with it, and
/// counted once.
#[tokio::test(start_paused = true)]
async fn the_swept_invocation_is_made_by_the_fire() {
    let store = scheduled();
    let _workers = workers(store.clone());
    tokio::time::sleep(Duration::from_secs(5)).await;
    let fire = store.get(FIRE).await.unwrap().expect("fired");
    assert_eq!(
        (fire.state, fire.tags.get("durable:schedule").map(String::as_str)),
        (durable::State::Resolved, Some("nightly"))
    );
    let schedule = store.schedule("nightly").await.unwrap().unwrap();
    assert_eq!((schedule.fired, schedule.next), (1, None), "fired once, and ended");
}
