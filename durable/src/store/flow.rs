//! Flow control: limits on how many tasks execute at once and how fast they start,
//! kept in the store as records and enforced where tasks are claimed.
//!
//! A [`Limit`] covers the tasks of a function, of a group, or of both, and counts
//! them all together or per call key ([`Task::key`](crate::Task::key)). Its
//! concurrency counts acquired tasks: a suspended or sleeping invocation holds no
//! slot, and one whose holder died holds its slot until a tick gives the task back. Its rate is a generic cell rate algorithm: one record per
//! limit and key, its theoretical arrival time, which is dropped once it is in the
//! past (a full bucket), so the records kept are those of keys started recently.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::StoreError;
use crate::promise::{Millis, Task};

/// The longest limit name.
const MAX_NAME: usize = 128;

/// A limit on the tasks of a function, of a group, or of both: at most `concurrency`
/// of them executing at once, and at most `rate` of them started per period, across
/// every process of the store, counted together or per call key.
///
/// ```
/// use std::time::Duration;
/// use durable::Limit;
///
/// // A payment API: 10 calls a second, one operation per account at a time.
/// let api = Limit::new("payment-api").function("charge").rate(10, Duration::from_secs(1));
/// let accounts = Limit::new("one-per-account").function("charge").per_key().concurrency(1);
/// assert!(api.check().is_ok() && accounts.check().is_ok());
/// assert!(Limit::new("none").function("charge").concurrency(0).check().is_err());
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limit {
    /// Its name: what lists show and what replaces or removes it.
    pub name: String,
    /// The tasks of calls of this function (its registered name, every version);
    /// `None`: of every function.
    pub function: Option<String>,
    /// The tasks routed to this group; `None`: to every group.
    pub group: Option<String>,
    /// Counted per call key: each key has its own slots and its own rate. Calls made
    /// without a key share one count.
    pub per_key: bool,
    /// At most this many executing at once (per key, if `per_key`).
    pub concurrency: Option<u32>,
    /// At most this many started per period (per key, if `per_key`).
    pub rate: Option<Rate>,
}

/// A rate: at most `starts` task starts per `per` ms, spaced evenly, with `burst` of
/// them allowed at once after a quiet spell. Over any span of `w` ms there are at
/// most `burst + starts * w / per` starts. Every time a worker is handed the task
/// counts: a retry and a resumption after a suspension start it again.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rate {
    /// Starts per period.
    pub starts: u32,
    /// The period, in ms.
    pub per: Millis,
    /// How many may start at once.
    pub burst: u32,
}

impl Limit {
    /// A limit named `name` that covers every task and limits nothing yet: name what
    /// it covers and set a concurrency or a rate.
    pub fn new(name: impl Into<String>) -> Limit {
        Limit { name: name.into(), function: None, group: None, per_key: false, concurrency: None, rate: None }
    }

    /// Covers calls of this function only.
    pub fn function(mut self, function: impl Into<String>) -> Limit {
        self.function = Some(function.into());
        self
    }

    /// Covers tasks of this group only.
    pub fn group(mut self, group: impl Into<String>) -> Limit {
        self.group = Some(group.into());
        self
    }

    /// Counts each call key on its own.
    pub fn per_key(mut self) -> Limit {
        self.per_key = true;
        self
    }

    /// At most `n` executing at once.
    pub fn concurrency(mut self, n: u32) -> Limit {
        self.concurrency = Some(n);
        self
    }

    /// At most `starts` started per `per`, one at a time (a burst of 1).
    pub fn rate(mut self, starts: u32, per: std::time::Duration) -> Limit {
        let per = per.as_millis().min(u128::from(u64::MAX)) as Millis;
        self.rate = Some(Rate { starts, per, burst: 1 });
        self
    }

    /// Lets `burst` start at once after a quiet spell (set after [`Limit::rate`]).
    pub fn burst(mut self, burst: u32) -> Limit {
        if let Some(rate) = &mut self.rate {
            rate.burst = burst;
        }
        self
    }

    /// Whether it can work: a name of 1 to 128 printable characters, something it
    /// covers, something it limits, a concurrency of at least 1, and a rate of at
    /// least one start, at most one a microsecond, over a period of at least 1 ms,
    /// with a burst of at least 1. The error says what is wrong.
    pub fn check(&self) -> Result<(), StoreError> {
        let refuse = |reason: String| Err(StoreError::InvalidLimit { name: self.name.clone(), reason });
        if self.name.is_empty() || self.name.len() > MAX_NAME || self.name.chars().any(char::is_control) {
            return refuse(format!("a limit's name has 1 to {MAX_NAME} bytes and no control characters"));
        }
        for (what, value) in [("function", &self.function), ("group", &self.group)] {
            if value.as_deref().is_some_and(|v| v.is_empty() || v.chars().any(char::is_control)) {
                return refuse(format!("its {what} is empty or holds control characters"));
            }
        }
        if self.function.is_none() && self.group.is_none() {
            return refuse("it covers nothing in particular: name a function, a group, or both".into());
        }
        if self.concurrency.is_none() && self.rate.is_none() {
            return refuse("it limits nothing: set a concurrency, a rate, or both".into());
        }
        if self.concurrency == Some(0) {
            return refuse("a concurrency of 0 would never run anything: the least is 1".into());
        }
        if let Some(rate) = self.rate {
            if rate.starts == 0 {
                return refuse("a rate of 0 starts would never run anything: the least is 1".into());
            }
            if rate.per == 0 {
                return refuse("a rate's period is 0 ms: the least is 1 ms".into());
            }
            if u128::from(rate.starts) > u128::from(rate.per) * 1000 {
                return refuse(format!(
                    "{} starts per {} ms is more than one a microsecond, the finest rate kept",
                    rate.starts, rate.per
                ));
            }
            if rate.burst == 0 {
                return refuse("a burst of 0 would never run anything: the least is 1".into());
            }
        }
        Ok(())
    }

    /// Whether it covers task `t`, a call of `function` (its function key).
    pub(crate) fn covers(&self, group: &str, function: Option<&str>) -> bool {
        self.group.as_deref().is_none_or(|g| g == group)
            && self.function.as_deref().is_none_or(|f| function.is_some_and(|key| name_of(key) == f))
    }

    /// The key `t` is counted under.
    pub(crate) fn key_of<'a>(&self, t: &'a Task) -> &'a str {
        if self.per_key { t.key.as_deref().unwrap_or("") } else { "" }
    }
}

/// What it covers and what it allows, in words: `function charge: 1 at once per key`.
impl std::fmt::Display for Limit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut covers = Vec::new();
        if let Some(function) = &self.function {
            covers.push(format!("function {function}"));
        }
        if let Some(group) = &self.group {
            covers.push(format!("group {group}"));
        }
        let mut allows = Vec::new();
        if let Some(n) = self.concurrency {
            allows.push(format!("{n} at once"));
        }
        if let Some(r) = self.rate {
            let per = std::time::Duration::from_millis(r.per);
            let burst = if r.burst > 1 { format!(", {} at once after a pause", r.burst) } else { String::new() };
            allows.push(format!("{} per {per:?}{burst}", r.starts));
        }
        let per_key = if self.per_key { " per key" } else { "" };
        write!(f, "{}: {}{per_key}", covers.join(", "), allows.join(", "))
    }
}

/// The name in a function key (`name` or `name@version`).
pub(crate) fn name_of(key: &str) -> &str {
    key.split_once('@').map_or(key, |(name, _)| name)
}

/// A rate's state for one limit and key: the theoretical arrival time of the next
/// start, in µs of store time, and when a start is next allowed, in ms (what a tick
/// reports as the next deadline).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Bucket {
    pub(crate) tat: u64,
    pub(crate) open_at: Millis,
}

impl Rate {
    /// The spacing of starts, in µs. (A stored rate is read as it is, checked or not:
    /// 0 starts counts as 1, and a spacing past `u64::MAX` as that.)
    fn interval(&self) -> u64 {
        let interval = u128::from(self.per) * 1000 / u128::from(self.starts.max(1));
        interval.clamp(1, u128::from(u64::MAX)) as u64
    }

    /// How far ahead of now the arrival time may run: `burst - 1` intervals.
    fn tolerance(&self) -> u64 {
        self.interval().saturating_mul(u64::from(self.burst.saturating_sub(1)))
    }

    /// Whether a start is allowed at `now` with the bucket `b`.
    pub(crate) fn allows(&self, b: Option<&Bucket>, now: Millis) -> bool {
        b.is_none_or(|b| b.tat <= now.saturating_mul(1000).saturating_add(self.tolerance()))
    }

    /// The bucket after a start at `now`.
    pub(crate) fn start(&self, b: Option<&Bucket>, now: Millis) -> Bucket {
        let now_us = now.saturating_mul(1000);
        let tat = b.map_or(now_us, |b| b.tat.max(now_us)).saturating_add(self.interval());
        let open_us = tat.saturating_sub(self.tolerance());
        Bucket { tat, open_at: open_us.div_ceil(1000) }
    }
}

/// A limit as an operator sees it: the record, and the tasks it holds back.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LimitState {
    /// The limit.
    pub limit: Limit,
    /// Tasks it covers that are acquired now.
    pub executing: usize,
    /// Tasks it covers that wait for a worker: held back by it or another limit, or
    /// waiting their turn.
    pub waiting: usize,
    /// The ready time of the oldest of those (store time, ms).
    pub oldest: Option<Millis>,
}

/// What a claim admits: the limits that apply to it, how many each key executes, and
/// the rates' state. Built from the acquired tasks at the start of a claim and
/// counted on as it takes tasks.
#[derive(Debug)]
pub(crate) struct Admission<'a> {
    limits: Vec<&'a Limit>,
    executing: HashMap<(&'a str, String), u32>,
    buckets: HashMap<(String, String), Bucket>,
    /// The limits and keys this claim found closed, with how many tasks each held back.
    pub(crate) held: HashMap<(String, String), usize>,
}

impl<'a> Admission<'a> {
    /// The admission of a claim by `group` over `limits`, with `executing`, the tasks
    /// acquired now, as (task, its function key).
    pub(crate) fn new<'t>(
        limits: impl Iterator<Item = &'a Limit>,
        group: &str,
        executing: impl Iterator<Item = (&'t Task, Option<&'t str>)>,
    ) -> Admission<'a> {
        let limits: Vec<&Limit> = limits.filter(|l| l.group.as_deref().is_none_or(|g| g == group)).collect();
        let mut counts = HashMap::new();
        if limits.iter().any(|l| l.concurrency.is_some()) {
            for (t, function) in executing {
                for l in limits.iter().filter(|l| l.concurrency.is_some()) {
                    if l.covers(&t.target.group, function) {
                        *counts.entry((l.name.as_str(), l.key_of(t).to_owned())).or_insert(0) += 1;
                    }
                }
            }
        }
        Admission { limits, executing: counts, buckets: HashMap::new(), held: HashMap::new() }
    }

    /// What no task can pass now, as (function, key) pairs (`None`: any): the keys
    /// of a limit that execute as many as it allows, or whose rate (its state in
    /// `buckets`) lets none start. A PostgreSQL claim skips their tasks before it
    /// reads them.
    #[cfg(feature = "postgres")]
    pub(crate) fn closed(
        &self,
        now: Millis,
        buckets: &[((String, String), Bucket)],
    ) -> Vec<(Option<String>, Option<String>)> {
        let mut closed = Vec::new();
        for l in &self.limits {
            let entry = |key: &str| (l.function.clone(), l.per_key.then(|| key.to_owned()));
            if let Some(n) = l.concurrency {
                let full = self.executing.iter().filter(|((name, _), count)| *name == l.name && **count >= n);
                closed.extend(full.map(|((_, key), _)| entry(key)));
            }
            if let Some(rate) = l.rate {
                let slow = buckets.iter().filter(|((name, _), b)| *name == l.name && !rate.allows(Some(b), now));
                closed.extend(slow.map(|((_, key), _)| entry(key)));
            }
        }
        closed
    }

    /// Whether nothing is limited.
    pub(crate) fn is_open(&self) -> bool {
        self.limits.is_empty()
    }

    /// Admits `t`, a call of `function`, at `now` if every limit that covers it does,
    /// reading a rate's stored state with `bucket`, and counts it as started: returns
    /// the rates' states its start changed. `None` if a limit holds it back, which is
    /// noted in `held`.
    pub(crate) fn admit(
        &mut self,
        t: &Task,
        function: Option<&str>,
        now: Millis,
        bucket: &dyn Fn(&str, &str) -> Option<Bucket>,
    ) -> Option<Vec<((String, String), Bucket)>> {
        let covering: Vec<(&'a Limit, (String, String))> = self
            .limits
            .iter()
            .filter(|l| l.covers(&t.target.group, function))
            .map(|l| (*l, (l.name.clone(), l.key_of(t).to_owned())))
            .collect();
        let mut started = Vec::new();
        for (l, id) in &covering {
            let running = self.executing.get(&(l.name.as_str(), id.1.clone())).copied().unwrap_or(0);
            let full = l.concurrency.is_some_and(|n| running >= n);
            let state = self.buckets.get(id).copied().or_else(|| bucket(&id.0, &id.1));
            let slow = l.rate.is_some_and(|rate| !rate.allows(state.as_ref(), now));
            if full || slow {
                *self.held.entry(id.clone()).or_insert(0) += 1;
                return None;
            }
            if let Some(rate) = l.rate {
                started.push((id.clone(), rate.start(state.as_ref(), now)));
            }
        }
        for (l, id) in covering {
            if l.concurrency.is_some() {
                *self.executing.entry((l.name.as_str(), id.1)).or_insert(0) += 1;
            }
        }
        self.buckets.extend(started.iter().cloned());
        Some(started)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rate_spaces_starts_and_lets_a_burst_through_after_a_quiet_spell() {
        // 10 a second, a burst of 3.
        let rate = Rate { starts: 10, per: 1000, burst: 3 };
        let mut b = None;
        let mut started = Vec::new();
        for now in 0..2000 {
            while rate.allows(b.as_ref(), now) {
                b = Some(rate.start(b.as_ref(), now));
                started.push(now);
            }
        }
        // Three at once, then one every 100 ms.
        let expected: Vec<Millis> = [0, 0].into_iter().chain((0..20).map(|i| i * 100)).collect();
        assert_eq!(started, expected);
    }

    #[test]
    fn a_stored_rate_that_was_never_checked_neither_panics_nor_overflows() {
        for rate in [
            Rate { starts: 0, per: 0, burst: 0 },
            Rate { starts: 1, per: Millis::MAX, burst: u32::MAX },
            Rate { starts: u32::MAX, per: 1, burst: 1 },
        ] {
            let first = rate.start(None, Millis::MAX);
            assert!(first.tat >= first.open_at, "{rate:?}: {first:?}");
            let _ = rate.allows(Some(&first), Millis::MAX);
            let _ = rate.start(Some(&first), 0);
        }
    }
}
