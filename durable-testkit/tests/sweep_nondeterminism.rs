//! The crash sweep names the bugs it exists to find: a planted nondeterminism halts
//! the run at once with the halt's own message (the call, both sides, file:line),
//! whether the crash-free run brought it or a crash did; and a run whose promises
//! differ from the crash-free run's says which, with their functions and values.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use durable::prelude::*;
use durable_testkit::Sweep;

/// Body runs of the workflow under test, each test its own counter.
static REPLAYED: AtomicU64 = AtomicU64::new(0);
static GENERATION: AtomicU64 = AtomicU64::new(0);
static FRESH: AtomicU64 = AtomicU64::new(0);

#[durable::function]
async fn step(_ctx: &mut Context, x: u64) -> durable::Result<u64> {
    Ok(x)
}

/// The line of this file that holds `marker`, counted from 1.
fn line_of(marker: &str) -> usize {
    include_str!("sweep_nondeterminism.rs").lines().position(|l| l.ends_with(marker)).expect("the marker") + 1
}

/// A planted bug: the argument is a count kept outside `ctx`, so a replay asks for
/// another call than the one recorded. The sleep outlasts the wait before suspending,
/// so even the crash-free run replays.
#[durable::function]
async fn sleepy(ctx: &mut Context, _x: u64) -> durable::Result<u64> {
    let n = REPLAYED.fetch_add(1, Ordering::SeqCst);
    ctx.lfc(step, n).await?; // planted: replayed
    ctx.sleep(Duration::from_secs(3600)).await?;
    Ok(7)
}

#[tokio::test(start_paused = true)]
async fn a_nondeterminism_in_the_crash_free_run_is_its_failure_every_time() {
    let line = line_of("// planted: replayed");
    for _ in 0..3 {
        REPLAYED.store(0, Ordering::SeqCst);
        let failure = Sweep::new("sleepy", sleepy, 1).run().await.expect_err("the planted bug is found");
        let message = failure.to_string();
        assert!(failure.schedule.is_empty(), "{message}");
        assert!(
            message.starts_with("in the crash-free run: task sleepy halted: nondeterminism at sleepy.1 ("),
            "{message}"
        );
        assert!(message.contains(&format!("sweep_nondeterminism.rs:{line}:")), "file:line: {message}");
        assert!(
            message.contains(
                "the history recorded a call of \"step\" (version 1) with arguments 0, \
                 but the code now makes a call of \"step\" (version 1) with arguments 1"
            ),
            "both sides: {message}"
        );
        assert!(!message.contains("hung"), "{message}");
    }
}

/// Ignores its argument.
#[durable::function]
async fn constant(_ctx: &mut Context, _x: u64) -> durable::Result<u64> {
    Ok(1)
}

/// A planted bug that shows only on replay after a crash: the argument is the
/// generation of workers running the body, memory a restarted process does not keep.
/// A fresh execution records the same tree whatever it is; a replay in a later
/// generation asks for another call than the recorded one.
#[durable::function]
async fn after_crash(ctx: &mut Context, _x: u64) -> durable::Result<u64> {
    ctx.lfc(constant, GENERATION.load(Ordering::SeqCst)).await?; // planted: after a crash
    Ok(7)
}

/// A sweep of `after_crash` whose every run starts at generation 0 and whose every
/// generation of workers counts one more.
fn after_crash_sweep() -> Sweep<impl Function<Args = u64, Output = u64>> {
    Sweep::new("ac", after_crash, 1)
        .store(|| {
            GENERATION.store(0, Ordering::SeqCst);
            Arc::new(MemoryStore::new())
        })
        .workers(|store| {
            GENERATION.fetch_add(1, Ordering::SeqCst);
            vec![Durable::builder().store(store).register(after_crash).register(constant).build().unwrap()]
        })
}

#[tokio::test(start_paused = true)]
async fn a_nondeterminism_that_only_a_crash_brings_names_the_crash() {
    let line = line_of("// planted: after a crash");
    let sweep = after_crash_sweep();
    for _ in 0..3 {
        let failure = sweep.run().await.expect_err("the planted bug is found");
        let message = failure.to_string();
        assert!(!failure.schedule.is_empty(), "{message}");
        assert!(message.starts_with(&format!("after a crash {}", failure.schedule[0])), "{message}");
        assert!(message.contains("task ac halted: nondeterminism at ac.1 ("), "{message}");
        assert!(message.contains(&format!("sweep_nondeterminism.rs:{line}:")), "file:line: {message}");
        assert!(message.contains("with arguments 1, but the code now makes"), "{message}");
        assert!(message.contains("reproduce: sweep.run_schedule(&[CrashPoint::"), "{message}");
        // The schedule it names brings the same failure again.
        let again = sweep.run_schedule(&failure.schedule).await.expect_err("reproduced");
        assert_eq!(again.problem, failure.problem);
    }
}

/// A planted bug that changes what a fresh execution records: the value of `step`.
#[durable::function]
async fn fresh(ctx: &mut Context, _x: u64) -> durable::Result<u64> {
    let n = FRESH.fetch_add(1, Ordering::SeqCst);
    ctx.lfc(step, n).await?;
    Ok(7)
}

#[tokio::test(start_paused = true)]
async fn a_tree_that_differs_names_each_promise_with_its_function_and_values() {
    let failure = Sweep::new("fr", fresh, 1).run().await.expect_err("the planted bug is found");
    let message = failure.to_string();
    assert!(message.contains("the promise tree differs from the crash-free run's"), "{message}");
    assert!(
        message.contains("fr.1 (step): the crash-free run has it Resolved 0, this run Resolved 1"),
        "the function and both values: {message}"
    );
}

/// Under proptest, the failure proptest reports after shrinking is the halt itself,
/// not only the smallest schedule that brings it.
#[test]
fn proptest_reports_the_nondeterminism_of_the_case_it_shrank_to() {
    use durable_testkit::block_on;
    use durable_testkit::strategy::crash_schedule;
    use proptest::test_runner::{Config, TestCaseError, TestError, TestRunner};

    let line = line_of("// planted: after a crash");
    let mut runner = TestRunner::new(Config { cases: 64, failure_persistence: None, ..Config::default() });
    let result = runner.run(&crash_schedule(3, 8), |schedule| {
        let sweep = after_crash_sweep();
        block_on(sweep.run_schedule(&schedule)).map_err(|failure| TestCaseError::fail(failure.to_string()))
    });
    let Err(TestError::Fail(reason, schedule)) = result else { panic!("the planted bug is found: {result:?}") };
    let reason = reason.to_string();
    assert!(!schedule.is_empty(), "a crash brings it");
    assert!(reason.contains("task ac halted: nondeterminism at ac.1 ("), "{reason}");
    assert!(reason.contains(&format!("sweep_nondeterminism.rs:{line}:")), "{reason}");
}
