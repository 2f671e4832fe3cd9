//! Tools to prove durable functions and stores correct.
//!
//! * [`conformance`]: the rules every [`Store`](durable::Store) must keep, one suite
//!   for every backend.
//!
//! Time in these tools is tokio's: run tests with `#[tokio::test(start_paused = true)]`
//! and stores on a [`VirtualClock`](durable::store::VirtualClock), and a lease of a
//! minute or a timer of a day passes as soon as everything else is idle.

pub mod conformance;
