//! Prove durable functions crash-safe, in your own tests.
//!
//! * [`Sweep`]: runs an invocation once, then again for every point just before and
//!   just after each store write, killing every worker there and finishing with fresh
//!   ones; each run must come out as the crash-free one did.
//! * [`strategy`]: proptest strategies for schedules of several crashes in one run.
//! * [`FaultyStore`]: a store that fails, delays, or reports an unknown outcome for
//!   chosen operations.
//! * [`conformance`]: the rules every [`Store`](durable::Store) must keep.
//! * [`simulation`]: everything at once from one seed (random invocations, crashes,
//!   store faults, retention, imports, a deploy), checked against invariants.
//!
//! Time in these tools is tokio's: run tests with `#[tokio::test(start_paused = true)]`
//! and stores on a [`VirtualClock`](durable::store::VirtualClock) (MemoryStore's
//! default), and a lease of a minute or a timer of a day passes as soon as everything
//! else is idle.
//!
//! ```
//! use durable::prelude::*;
//! use durable_testkit::Sweep;
//!
//! #[durable::function]
//! async fn add(_ctx: &mut Context, x: i64, y: i64) -> durable::Result<i64> {
//!     Ok(x + y)
//! }
//!
//! #[durable::function]
//! async fn sum(ctx: &mut Context, xs: Vec<i64>) -> durable::Result<i64> {
//!     let mut total = 0;
//!     for x in xs {
//!         total = ctx.lfc(add, (total, x)).await?;
//!     }
//!     Ok(total)
//! }
//!
//! #[tokio::main(flavor = "current_thread", start_paused = true)]
//! async fn main() {
//!     let report = Sweep::new("sum", sum, vec![1, 2, 3]).run().await.unwrap();
//!     assert_eq!(report.crash_points, 2 * report.writes);
//!     assert!(report.body_runs["add"] >= 3);
//! }
//! ```

pub mod conformance;
mod faulty;
mod gate;
pub mod simulation;
pub mod strategy;
mod sweep;

pub use crate::faulty::{Fault, FaultyStore};
pub use crate::sweep::{CrashPoint, Failure, Report, Sweep};

/// Runs a future on a fresh single-threaded runtime with paused time: for a sweep
/// inside a `proptest!` body or a plain `#[test]`.
pub fn block_on<T>(future: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("a tokio runtime")
        .block_on(future)
}
