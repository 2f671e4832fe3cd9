//! Schedules, on virtual time: every fire starts one invocation however many runtimes
//! serve the schedule, across a crash, after a downtime (within the catch-up window
//! and beyond it), by each overlap policy, and across daylight-saving changes; and
//! pause, resume, trigger, backfill and delete, with the errors bad input gets.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use durable::prelude::*;
use durable::store::VirtualClock;
use durable::{Error, Overlap, Schedule, ScheduleSpec, Schedules, State};

/// Each fire's invocation: when its body started and ended, on the store's clock
/// (recorded values, so a replay reads the same).
type Runs = BTreeMap<String, (u64, Option<u64>)>;

static RUNS: LazyLock<Mutex<Runs>> = LazyLock::new(Mutex::default);

fn runs() -> Runs {
    RUNS.lock().unwrap().clone()
}

fn millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

fn at(rfc3339: &str) -> u64 {
    let t: jiff::Timestamp = rfc3339.parse().unwrap();
    t.as_millisecond() as u64
}

#[durable::function(name = "report")]
async fn report(ctx: &mut Context, what: String) -> durable::Result<String> {
    let start = millis(ctx.now().await?);
    RUNS.lock().unwrap().insert(ctx.id().to_owned(), (start, Some(start)));
    Ok(format!("{what} at {start}"))
}

/// Runs for `secs`, sleeping durably.
#[durable::function(name = "slow")]
async fn slow(ctx: &mut Context, secs: u64) -> durable::Result<()> {
    let start = millis(ctx.now().await?);
    RUNS.lock().unwrap().insert(ctx.id().to_owned(), (start, None));
    ctx.sleep(Duration::from_secs(secs)).await?;
    let end = millis(ctx.now().await?);
    RUNS.lock().unwrap().insert(ctx.id().to_owned(), (start, Some(end)));
    Ok(())
}

fn runtime(store: &Arc<dyn Store>) -> Durable {
    common::builder(store).register(report).register(slow).build().unwrap()
}

async fn schedule(durable: &Durable, id: &str) -> Schedule {
    durable.schedules().get(id).await.unwrap().expect("the schedule exists")
}

async fn every_fire_runs_once_however_many_runtimes_serve_it(store: Arc<dyn Store>) {
    let runtimes: Vec<Durable> = (0..3).map(|_| runtime(&store)).collect();
    let every = ScheduleSpec::every(Duration::from_secs(60));
    let created = runtimes[0].schedules().create("minutely", every, report, "tick".into()).await.unwrap();
    let first = created.next.expect("a first fire");
    tokio::time::sleep(Duration::from_secs(10 * 60 + 30)).await;
    let fired = runs();
    let expected: Vec<String> = (0..=10).map(|k| created.fire_id(first + k * 60_000)).collect();
    assert_eq!(fired.keys().cloned().collect::<Vec<_>>(), expected, "one invocation per minute, none missing");
    for (id, (start, _)) in &fired {
        let time = first + 60_000 * expected.iter().position(|e| e == id).unwrap() as u64;
        assert!(*start >= time && *start < time + 1_000, "{id} started {} ms after its time", start - time);
    }
    let runs: u64 = runtimes.iter().map(|d| d.body_runs().get("report").copied().unwrap_or(0)).sum();
    assert_eq!(runs, 11, "each fire's body ran once, in one of the three runtimes");
    let s = schedule(&runtimes[1], "minutely").await;
    assert_eq!((s.fired, s.skipped, s.last), (11, 0, expected.last().cloned()));
}

async fn a_fire_missed_while_down_runs_once_after_a_restart(store: Arc<dyn Store>) {
    let line = common::line(&store);
    let first = common::builder(&(line.clone() as Arc<dyn Store>)).register(report).build().unwrap();
    let hourly = ScheduleSpec::every(Duration::from_secs(3600));
    let created = first.schedules().create("hourly", hourly, report, "hour".into()).await.unwrap();
    // The virtual clock starts on the hour: the first fire is now, the next an hour on.
    let next = created.next.unwrap() + 3_600_000;
    let now = store.now().await.unwrap();
    // It dies before the next fire, and none serves the schedule for ten minutes past it.
    tokio::time::sleep(Duration::from_millis(next - now - 1_000)).await;
    common::crash(first, &line);
    tokio::time::sleep(Duration::from_secs(11 * 60)).await;
    assert!(!runs().contains_key(&created.fire_id(next)), "nothing fired while down");
    let second = runtime(&store);
    tokio::time::sleep(Duration::from_secs(30)).await;
    let (start, _) = runs()[&created.fire_id(next)];
    assert!(start >= next + 10 * 60_000, "it ran after the restart, within the catch-up window");
    assert_eq!(second.body_runs().get("report"), Some(&1), "once");
    let s = schedule(&second, "hourly").await;
    assert_eq!((s.fired, s.next, s.missed), (2, Some(next + 3_600_000), None));
}

async fn a_downtime_beyond_the_catch_up_window_skips_and_reports_the_older_fires(store: Arc<dyn Store>) {
    // Created by a tool; no runtime serves the store for an hour.
    let spec = ScheduleSpec::every(Duration::from_secs(60))
        .catch_up(Duration::from_secs(5 * 60))
        .overlap(Overlap::AllowAll)
        .target("poll://any@default");
    let created = Schedules::new(&*store).create("minutely", spec, report, "m".into()).await.unwrap();
    let first = created.next.unwrap();
    tokio::time::sleep(Duration::from_secs(3600)).await;
    let durable = runtime(&store);
    tokio::time::sleep(Duration::from_secs(20)).await;
    let fired: Vec<String> = runs().into_keys().collect();
    // The hour's fires older than five minutes are skipped; the rest run once each.
    let kept: Vec<String> = (55..=60).map(|k| created.fire_id(first + k * 60_000)).collect();
    assert_eq!(fired, kept);
    let s = schedule(&durable, "minutely").await;
    assert_eq!(s.missed, Some((first, first + 55 * 60_000)), "the skipped fires are reported: from, until");
    assert_eq!(s.fired, 6);
}

/// Fires every minute of a function that runs 150 s, for eight minutes, under
/// `overlap`; returns the runs and the schedule.
async fn overlapping(store: Arc<dyn Store>, overlap: Overlap) -> (Runs, Schedule) {
    let durable = runtime(&store);
    let spec = ScheduleSpec::every(Duration::from_secs(60)).overlap(overlap);
    let created = durable.schedules().create("slow", spec, slow, 150).await.unwrap();
    tokio::time::sleep(Duration::from_secs(8 * 60 + 30)).await;
    durable.schedules().pause("slow").await.unwrap();
    // What was started finishes.
    tokio::time::sleep(Duration::from_secs(20 * 60)).await;
    let s = schedule(&durable, "slow").await;
    assert_eq!(s.fired + s.skipped, 9, "each of the nine fire times started or skipped a fire");
    assert!(created.next.is_some());
    (runs(), s)
}

/// No run started before the one before it ended.
fn one_at_a_time(runs: &Runs) {
    let mut spans: Vec<(u64, u64)> = runs.values().map(|(s, e)| (*s, e.expect("it ended"))).collect();
    spans.sort();
    for pair in spans.windows(2) {
        assert!(pair[1].0 >= pair[0].1, "overlapping runs: {pair:?}");
    }
}

async fn overlap_skip_skips_fires_while_one_runs(store: Arc<dyn Store>) {
    let (runs, s) = overlapping(store, Overlap::Skip).await;
    one_at_a_time(&runs);
    // 0 runs to 150; 60 and 120 skipped; 180 runs to 330; 240, 300 skipped; 360 runs; 420, 480 skipped.
    assert_eq!((s.fired, s.skipped, runs.len()), (3, 6, 3));
}

async fn overlap_buffer_one_keeps_one_fire_waiting(store: Arc<dyn Store>) {
    let (runs, s) = overlapping(store.clone(), Overlap::BufferOne).await;
    one_at_a_time(&runs);
    assert!(s.skipped > 0, "a second fire while one waits is skipped");
    assert_eq!(runs.len() as u64, s.fired, "every buffered fire ran");
    // Each buffered fire starts as the one before it ends.
    let mut spans: Vec<(u64, u64)> = runs.values().map(|(s, e)| (*s, e.unwrap())).collect();
    spans.sort();
    assert!(spans.windows(2).any(|p| p[1].0 - p[0].1 < 1_000), "a buffered fire starts as its predecessor ends");
}

async fn overlap_buffer_all_runs_every_fire_one_after_another(store: Arc<dyn Store>) {
    let (runs, s) = overlapping(store, Overlap::BufferAll).await;
    one_at_a_time(&runs);
    assert_eq!((s.fired, s.skipped, runs.len()), (9, 0, 9));
}

async fn overlap_cancel_running_cancels_the_one_before(store: Arc<dyn Store>) {
    let (runs, s) = overlapping(store.clone(), Overlap::CancelRunning).await;
    assert_eq!((s.fired, s.skipped, runs.len()), (9, 0, 9));
    let mut ended = 0;
    for id in runs.keys() {
        let p = store.get(id).await.unwrap().unwrap();
        if Some(id) == s.last.as_ref() {
            assert_eq!(p.state, State::Resolved, "the last one ran to its end");
        } else {
            assert_eq!(p.state, State::RejectedCanceled, "{id}: canceled by the next fire");
            ended += 1;
        }
    }
    assert_eq!(ended, 8);
}

async fn overlap_allow_all_runs_fires_side_by_side(store: Arc<dyn Store>) {
    let (runs, s) = overlapping(store, Overlap::AllowAll).await;
    assert_eq!((s.fired, s.skipped, runs.len()), (9, 0, 9));
    let mut spans: Vec<(u64, u64)> = runs.values().map(|(s, e)| (*s, e.unwrap())).collect();
    spans.sort();
    assert!(spans.windows(2).all(|p| p[1].0 < p[0].1), "each starts while the one before runs");
}

/// Fires of a cron expression in `zone` from `start` for `days`, as their ids'
/// times.
async fn fires_in(start: &str, expr: &str, zone: &str, days: u64) -> Vec<String> {
    let store: Arc<dyn Store> = Arc::new(durable::MemoryStore::with_clock(VirtualClock::starting_at(at(start))));
    let durable = runtime(&store);
    let spec = ScheduleSpec::cron(expr).zone(zone);
    durable.schedules().create("nightly", spec, report, "report".into()).await.unwrap();
    tokio::time::sleep(Duration::from_secs(days * 24 * 3600)).await;
    let runs = runs();
    for (id, (started, _)) in &runs {
        let time = at(id.strip_prefix("nightly@").unwrap());
        assert!(*started >= time && *started < time + 1_000, "{id} ran on time");
    }
    runs.into_keys().map(|id| id.strip_prefix("nightly@").unwrap().to_owned()).collect()
}

#[tokio::test(start_paused = true)]
async fn a_nightly_report_at_two_in_paris_fires_once_a_day_across_spring_forward() {
    // 2026-03-29: Paris goes from 02:00 to 03:00; the 02:00 fire is at 03:00.
    let fires = fires_in("2026-03-27T12:00:00Z", "0 2 * * *", "Europe/Paris", 4).await;
    assert_eq!(fires, ["2026-03-28T01:00:00Z", "2026-03-29T01:00:00Z", "2026-03-30T00:00:00Z", "2026-03-31T00:00:00Z"]);
}

#[tokio::test(start_paused = true)]
async fn a_fire_in_the_hour_paris_passes_twice_fires_once() {
    // 2026-10-25: Paris goes from 03:00 back to 02:00; 02:30 happens twice.
    let fires = fires_in("2026-10-24T12:00:00Z", "30 2 * * *", "Europe/Paris", 3).await;
    assert_eq!(fires, ["2026-10-25T00:30:00Z", "2026-10-26T01:30:00Z", "2026-10-27T01:30:00Z"]);
}

async fn pause_resume_trigger_backfill_and_delete(store: Arc<dyn Store>) {
    let durable = runtime(&store);
    let schedules = durable.schedules();
    let spec = ScheduleSpec::every(Duration::from_secs(60)).overlap(Overlap::AllowAll);
    let created = schedules.create("steered", spec, report, "s".into()).await.unwrap();
    let first = created.next.unwrap();
    assert!(schedules.pause("steered").await.unwrap().paused);
    tokio::time::sleep(Duration::from_secs(5 * 60 + 30)).await;
    assert!(runs().is_empty(), "a paused schedule fires nothing");
    let resumed = schedules.resume("steered").await.unwrap();
    let now = store.now().await.unwrap();
    assert!(!resumed.paused && resumed.next.unwrap() > now, "it resumes from its next fire after now");
    // Trigger: a fire now, at this second; the next fire stays.
    let fire = schedules.trigger("steered").await.unwrap().expect("allow all starts it");
    assert_eq!(fire, created.fire_id(now / 1000 * 1000));
    assert_eq!(schedules.get("steered").await.unwrap().unwrap().next, resumed.next);
    // Backfill the minutes it was paused for: each once, one after another.
    let paused_from = UNIX_EPOCH + Duration::from_millis(first);
    let backfilled = schedules.backfill("steered", paused_from, paused_from + Duration::from_secs(120)).await.unwrap();
    let minutes: Vec<String> = (0..=2).map(|k| created.fire_id(first + k * 60_000)).collect();
    assert_eq!(backfilled, minutes);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let fired = runs();
    assert!(minutes.iter().chain([&fire]).all(|id| fired.contains_key(id)), "{fired:?}");
    // Backfilled again: nothing runs twice.
    schedules.backfill("steered", paused_from, paused_from + Duration::from_secs(120)).await.unwrap();
    let too_long = schedules.backfill("steered", UNIX_EPOCH, paused_from).await.unwrap_err();
    assert!(too_long.to_string().contains("backfill it in parts"), "{too_long}");
    assert!(schedules.delete("steered").await.unwrap());
    assert!(!schedules.delete("steered").await.unwrap());
    let before = runs().len();
    tokio::time::sleep(Duration::from_secs(10 * 60)).await;
    assert_eq!(runs().len(), before, "a deleted schedule fires nothing");
    assert_eq!(durable.body_runs()["report"], before as u64, "each fire ran once");
    let missing = schedules.pause("steered").await.unwrap_err();
    assert!(missing.to_string().contains("steered"), "{missing}");
}

async fn bad_schedules_are_refused_saying_what_is_wrong(store: Arc<dyn Store>) {
    let durable = runtime(&store);
    let schedules = durable.schedules();
    let refused =
        async |id: &str, spec: ScheduleSpec| schedules.create(id, spec, report, "x".into()).await.unwrap_err();
    let e = refused("bad-hour", ScheduleSpec::cron("0 25 * * *")).await;
    assert!(matches!(&e, Error::InvalidSchedule { id, .. } if id == "bad-hour"), "{e:?}");
    assert!(e.to_string().contains("field 2 (hour) \"25\""), "{e}");
    let e = refused("bad-zone", ScheduleSpec::cron("0 2 * * *").zone("Mars/Olympus")).await;
    assert!(e.to_string().contains("unknown time zone \"Mars/Olympus\""), "{e}");
    let start = UNIX_EPOCH + Duration::from_secs(2_000_000_000);
    let e = refused("backwards", ScheduleSpec::cron("0 2 * * *").start_at(start).end_at(UNIX_EPOCH)).await;
    assert!(e.to_string().contains("ends (1970-01-01T00:00:00Z) before it starts"), "{e}");
    let e = refused("a.b", ScheduleSpec::every(Duration::from_secs(60))).await;
    assert!(e.to_string().contains("'.'"), "{e}");
    let e = refused("nowhere", ScheduleSpec::every(Duration::from_secs(60)).target("gpu")).await;
    assert!(e.to_string().contains("target"), "{e}");
    assert!(schedules.list().await.unwrap().is_empty(), "nothing was written");
    schedules.create("taken", ScheduleSpec::every(Duration::from_secs(60)), report, "x".into()).await.unwrap();
    let e = refused("taken", ScheduleSpec::every(Duration::from_secs(120))).await;
    assert!(matches!(&e, Error::Conflict { id, .. } if id == "taken"), "{e:?}");
    assert!(e.to_string().contains("replace"), "{e}");
    let replaced =
        schedules.replace("taken", ScheduleSpec::every(Duration::from_secs(120)), report, "y".into()).await.unwrap();
    assert_eq!(replaced.spec.every, durable::Every::Interval { ms: 120_000 });
}

async fn a_fire_that_no_worker_serves_is_reported_and_runs_once_one_starts(store: Arc<dyn Store>) {
    let durable = common::builder(&store).build().unwrap();
    let nobody = Remote::<String, String>::named("report");
    let spec = ScheduleSpec::every(Duration::from_secs(3600)).target("poll://any@reports");
    let created = durable.schedules().create("orphan", spec, nobody, "o".into()).await.unwrap();
    let fire = created.fire_id(created.next.unwrap());
    tokio::time::sleep(Duration::from_secs(3600 + 120)).await;
    let unserved = durable.promises().unserved(Duration::from_secs(60)).await.unwrap();
    assert!(unserved.iter().any(|t| t.id == fire), "the fire waits, reported as unserved: {unserved:?}");
    let _worker = common::builder(&store).group("reports").register(report).build().unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(runs().contains_key(&fire), "a worker that starts later runs it");
    assert_eq!(store.get(&fire).await.unwrap().unwrap().state, State::Resolved);
}

/// A stored schedule that no longer reads (written by hand, or by another build)
/// stops with why, and holds up no other.
async fn a_stored_schedule_that_does_not_read_stops_saying_why(store: Arc<dyn Store>) {
    let now = store.now().await.unwrap();
    let bad = |id: &str, spec: ScheduleSpec| {
        Schedule::new(id, spec, durable::Param::call("report", 1, "\"x\"".into()), now, Some(now))
    };
    store.put_schedule(bad("bad-cron", ScheduleSpec::cron("0 25 * * *")), false).await.unwrap();
    store
        .put_schedule(bad("bad-target", ScheduleSpec::every(Duration::from_secs(60)).target("gpu")), false)
        .await
        .unwrap();
    let durable = runtime(&store);
    let fine = ScheduleSpec::every(Duration::from_secs(60)).overlap(Overlap::AllowAll);
    let created = durable.schedules().create("fine", fine, report, "f".into()).await.unwrap();
    tokio::time::sleep(Duration::from_secs(5 * 60 + 30)).await;
    for (id, why) in [("bad-cron", "field 2 (hour)"), ("bad-target", "target")] {
        let s = schedule(&durable, id).await;
        assert_eq!((s.next, s.fired), (None, 0), "{id} stops");
        assert!(s.error.as_deref().is_some_and(|e| e.contains(why)), "{id}: {:?}", s.error);
    }
    let first = created.next.unwrap();
    let fired: Vec<String> = runs().into_keys().collect();
    assert_eq!(fired, (0..=5).map(|k| created.fire_id(first + k * 60_000)).collect::<Vec<_>>());
}

on_every_store!(
    a_stored_schedule_that_does_not_read_stops_saying_why,
    every_fire_runs_once_however_many_runtimes_serve_it,
    a_fire_missed_while_down_runs_once_after_a_restart,
    a_downtime_beyond_the_catch_up_window_skips_and_reports_the_older_fires,
    overlap_skip_skips_fires_while_one_runs,
    overlap_buffer_one_keeps_one_fire_waiting,
    overlap_buffer_all_runs_every_fire_one_after_another,
    overlap_cancel_running_cancels_the_one_before,
    overlap_allow_all_runs_fires_side_by_side,
    pause_resume_trigger_backfill_and_delete,
    bad_schedules_are_refused_saying_what_is_wrong,
    a_fire_that_no_worker_serves_is_reported_and_runs_once_one_starts,
);
