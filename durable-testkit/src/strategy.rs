//! proptest strategies for crash schedules, to combine with a test's own strategies.

use proptest::prelude::*;

use crate::CrashPoint;

/// One crash point at one of the first `max_write` writes of a generation.
pub fn crash_point(max_write: usize) -> impl Strategy<Value = CrashPoint> {
    (1..=max_write.max(1), any::<bool>()).prop_map(|(write, after)| CrashPoint { write, after })
}

/// Up to `max_crashes` crashes in one run, each counted in its own generation's
/// writes. Shrinks toward fewer and earlier crashes.
///
/// `max_write` bounds where a crash falls: just before or just after one of the first
/// `max_write` writes of its generation (the workers started after the previous
/// crash). A point past the writes a generation makes never fires, and that run has
/// fewer crashes; about the crash-free run's writes (`Report::writes`) is a good value.
///
/// ```
/// use proptest::prelude::*;
/// use durable_testkit::strategy::crash_schedule;
///
/// proptest!(|(schedule in crash_schedule(3, 40), x in 0..100i64)| {
///     prop_assert!(schedule.len() <= 3);
///     prop_assert!(schedule.iter().all(|p| (1..=40).contains(&p.write)));
///     let _ = x; // the test's own input, crashed per `schedule`
/// });
/// ```
pub fn crash_schedule(max_crashes: usize, max_write: usize) -> impl Strategy<Value = Vec<CrashPoint>> {
    prop::collection::vec(crash_point(max_write), 0..=max_crashes)
}

/// proptest's configuration for `cases` cases, with a failing case's seed kept in a
/// file beside the test's source (`tests/foo.rs` keeps `tests/foo.proptest-regressions`,
/// to commit), which proptest runs first next time. proptest's default looks for the
/// crate's `lib.rs` or `main.rs`, which an integration test under `tests/` has none
/// of, and then keeps nothing.
///
/// ```
/// use proptest::prelude::*;
/// use durable_testkit::strategy::config;
///
/// proptest!(config(8), |(x in 0..100i64)| {
///     prop_assert!(x < 100);
/// });
/// ```
pub fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: Some(Box::new(proptest::test_runner::FileFailurePersistence::WithSource(
            "proptest-regressions",
        ))),
        ..ProptestConfig::default()
    }
}
