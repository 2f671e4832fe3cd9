//! The store's clock. Leases, timeouts, timers and backoff are all measured on it.

use std::fmt::Debug;

use crate::promise::Millis;

/// A source of the store's time, in milliseconds.
pub trait Clock: Debug + Send + Sync + 'static {
    /// Now.
    fn now(&self) -> Millis;
}

/// Wall-clock time since the Unix epoch.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Millis {
        crate::promise::epoch_millis(std::time::SystemTime::now())
    }
}

/// Time that follows tokio's clock from a fixed start, so a test that pauses tokio's
/// time (`#[tokio::test(start_paused = true)]`, `tokio::time::advance`) controls the
/// store and the runtime with one clock: a day-long timer takes no real time.
#[derive(Clone, Copy, Debug)]
pub struct VirtualClock {
    origin: tokio::time::Instant,
    start: Millis,
}

impl VirtualClock {
    /// 2024-01-01T00:00:00Z: a fixed start keeps test runs identical.
    pub const START: Millis = 1_704_067_200_000;

    /// A clock reading [`VirtualClock::START`] now.
    pub fn new() -> VirtualClock {
        VirtualClock::starting_at(Self::START)
    }

    /// A clock reading `start` (ms since the Unix epoch) now: a test of a schedule
    /// starts where its dates are.
    pub fn starting_at(start: Millis) -> VirtualClock {
        VirtualClock { origin: tokio::time::Instant::now(), start }
    }
}

impl Default for VirtualClock {
    fn default() -> VirtualClock {
        VirtualClock::new()
    }
}

impl Clock for VirtualClock {
    fn now(&self) -> Millis {
        self.start + self.origin.elapsed().as_millis() as Millis
    }
}
