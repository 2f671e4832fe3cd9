//! Retry policies: how often a failed function body runs again, and when.

use std::time::Duration;

/// How a function whose body failed is retried.
///
/// A retry is a new attempt: the body runs again from the top, and every durable call
/// it makes is a new call, under the wait that preceded the attempt (`{id}.r{k}.1`,
/// …), so a step the failed attempt completed runs again. (A crash is not a retry:
/// the attempt it interrupted resumes, and its settled calls replay.) Errors made with
/// [`Error::terminal`](crate::Error::terminal) are never retried. The wait before a
/// retry is a durable timer: a crash during it does not reset the attempt count.
///
/// Which policy applies: the call's (`ctx.lfc(f, x).retry(…)`), else the function's
/// (`#[durable::function(retry = …)]`), else the default, which depends on what the
/// failed attempt did:
/// - an attempt that made no durable call (a step) is retried as
///   [`Retry::default()`] says: five attempts, one second apart and doubling;
/// - an attempt that made a durable call (a call, a sleep, a promise) fails for good,
///   since a retry would run its completed steps again. Give its function a policy to
///   retry it anyway, knowing that it runs again from the top.
///
/// ```
/// use std::time::Duration;
/// use durable::Retry;
///
/// let retry = Retry::Exponential {
///     initial: Duration::from_millis(100),
///     factor: 2,
///     max_delay: Duration::from_secs(10),
///     max_attempts: 5,
/// };
/// assert_eq!(retry.delay(1), Some(Duration::from_millis(100)));
/// assert_eq!(retry.delay(3), Some(Duration::from_millis(400)));
/// assert_eq!(retry.delay(5), None); // the fifth attempt was the last
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Retry {
    /// Run once.
    Never,
    /// The same delay before every retry.
    Constant {
        /// The delay.
        delay: Duration,
        /// Attempts in all, the first included.
        max_attempts: u32,
    },
    /// `delay`, then `2 × delay`, then `3 × delay`…
    Linear {
        /// The step.
        delay: Duration,
        /// Attempts in all, the first included.
        max_attempts: u32,
    },
    /// `initial`, then times `factor` each retry, capped at `max_delay`.
    Exponential {
        /// The first delay.
        initial: Duration,
        /// The growth factor.
        factor: u32,
        /// The cap.
        max_delay: Duration,
        /// Attempts in all, the first included.
        max_attempts: u32,
    },
}

impl Default for Retry {
    /// Exponential from one second, doubling, capped at one minute, five attempts:
    /// the policy of a function that sets none, for an attempt that made no durable
    /// call.
    fn default() -> Retry {
        Retry::Exponential {
            initial: Duration::from_secs(1),
            factor: 2,
            max_delay: Duration::from_secs(60),
            max_attempts: 5,
        }
    }
}

impl Retry {
    /// The wait after failed attempt `attempt` (from 1), or `None` if it was the last.
    pub fn delay(&self, attempt: u32) -> Option<Duration> {
        match *self {
            Retry::Never => None,
            Retry::Constant { delay, max_attempts } => (attempt < max_attempts).then_some(delay),
            Retry::Linear { delay, max_attempts } => (attempt < max_attempts).then(|| delay.saturating_mul(attempt)),
            Retry::Exponential { initial, factor, max_delay, max_attempts } => (attempt < max_attempts).then(|| {
                let growth = factor.checked_pow(attempt - 1).unwrap_or(u32::MAX);
                initial.saturating_mul(growth).min(max_delay)
            }),
        }
    }
}
