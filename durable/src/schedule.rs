//! Schedules: records in the store, each starting one invocation per fire.
//!
//! A [`Schedule`] holds what it calls, when it fires ([`ScheduleSpec`]), and where it
//! stands: its next fire, the last invocation it started, and what it skipped. Every
//! runtime fires the schedules that are due; a fire's invocation has a deterministic
//! id, the schedule's id and the fire's time (`nightly@2026-12-07T01:00:00Z`), and the
//! record moves on only by a write that names the version it read, so however many
//! processes serve a schedule, each fire starts one invocation.

use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::promise::{Millis, NEVER, Param, epoch_millis};

/// When a schedule fires.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Every {
    /// A cron expression, in an IANA time zone: five fields (minute, hour, day of
    /// month, month, day of week), or six with seconds first, with `L`, `#`, `W` and
    /// the `@daily` kind of names. A time the clocks skip (a spring-forward hour) fires
    /// at the first time after the gap; a time they pass twice (fall back) fires once.
    Cron {
        /// The expression.
        expr: String,
        /// The time zone it reads in (`UTC`, `Europe/Paris`).
        zone: String,
    },
    /// A fixed period, in whole seconds, counted from the schedule's start, or else
    /// from the Unix epoch (every hour fires on the hour).
    Interval {
        /// The period, in ms.
        ms: Millis,
    },
}

/// What a fire does while the invocation of the fire before it still runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Overlap {
    /// Skips the fire (counted in [`Schedule::skipped`]). The default.
    #[default]
    Skip,
    /// Starts the fire once the running one ends; of the fires meanwhile, keeps the
    /// first and skips the rest.
    BufferOne,
    /// Starts each fire once the one before it ends.
    BufferAll,
    /// Cancels the running one (with what it started), then starts the fire.
    CancelRunning,
    /// Starts the fire at once, beside the running one.
    AllowAll,
}

impl std::fmt::Display for Overlap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Overlap::Skip => "skip",
            Overlap::BufferOne => "buffer one",
            Overlap::BufferAll => "buffer all",
            Overlap::CancelRunning => "cancel running",
            Overlap::AllowAll => "allow all",
        })
    }
}

/// How a schedule fires: what a caller writes, checked when the schedule is created.
///
/// ```
/// use std::time::Duration;
/// use durable::{Overlap, ScheduleSpec};
///
/// let nightly = ScheduleSpec::cron("0 2 * * *").zone("Europe/Paris").catch_up(Duration::from_secs(6 * 3600));
/// let every_minute = ScheduleSpec::every(Duration::from_secs(60)).overlap(Overlap::BufferOne);
/// # let _ = (nightly, every_minute);
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduleSpec {
    /// When it fires.
    pub every: Every,
    /// No fire before this time (0: from when the schedule is created).
    pub start: Millis,
    /// No fire after this time ([`NEVER`]: no end).
    pub end: Millis,
    /// Each fire starts up to this long after its time, by an amount drawn from the
    /// schedule's id and the fire's time (so every process draws the same): fires of
    /// many schedules at one time spread out.
    pub jitter: Millis,
    /// What a fire does while the one before it still runs.
    pub overlap: Overlap,
    /// After a time when no process served the schedule, the fires this recent are
    /// started, each once, and older ones are skipped and reported (default an hour).
    pub catch_up: Millis,
    /// Where each fire's invocation is delivered, as a URL (`poll://any@reports`);
    /// `None`: the group of the runtime that creates the schedule.
    pub target: Option<String>,
    /// Each fire's invocation times out this long after it is created.
    pub timeout: Option<Millis>,
}

impl std::fmt::Display for ScheduleSpec {
    /// What it does, in a line: `cron "0 2 * * *" in Europe/Paris, skip when running,
    /// catch up 1h`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let span = |ms: Millis| humanize(ms);
        match &self.every {
            Every::Cron { expr, zone } => write!(f, "cron {expr:?} in {zone}")?,
            Every::Interval { ms } => write!(f, "every {}", span(*ms))?,
        }
        if self.start > 0 {
            write!(f, ", from {}", stamp(self.start))?;
        }
        if self.end != NEVER {
            write!(f, ", until {}", stamp(self.end))?;
        }
        if self.jitter > 0 {
            write!(f, ", jitter {}", span(self.jitter))?;
        }
        write!(f, ", {} when running, catch up {}", self.overlap, span(self.catch_up))?;
        if let Some(target) = &self.target {
            write!(f, ", to {target}")?;
        }
        Ok(())
    }
}

/// A span of ms in its largest whole unit: `90s`, `15m`, `2h`, `7d`.
fn humanize(ms: Millis) -> String {
    for (unit, size) in [("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000)] {
        if ms >= size && ms % size == 0 {
            return format!("{}{unit}", ms / size);
        }
    }
    format!("{ms}ms")
}

/// The catch-up window unless a schedule sets its own.
const CATCH_UP: Millis = 3_600_000;

impl ScheduleSpec {
    /// Fires on a cron expression, in UTC unless [`zone`](Self::zone) says otherwise.
    pub fn cron(expr: &str) -> ScheduleSpec {
        ScheduleSpec::new(Every::Cron { expr: expr.to_owned(), zone: "UTC".to_owned() })
    }

    /// Fires every `period` (whole seconds), from the start.
    pub fn every(period: Duration) -> ScheduleSpec {
        ScheduleSpec::new(Every::Interval { ms: period.as_millis() as Millis })
    }

    fn new(every: Every) -> ScheduleSpec {
        ScheduleSpec {
            every,
            start: 0,
            end: NEVER,
            jitter: 0,
            overlap: Overlap::Skip,
            catch_up: CATCH_UP,
            target: None,
            timeout: None,
        }
    }

    /// Reads the cron expression in this IANA time zone.
    pub fn zone(mut self, zone: &str) -> ScheduleSpec {
        if let Every::Cron { zone: z, .. } = &mut self.every {
            *z = zone.to_owned();
        }
        self
    }

    /// No fire before `at`.
    pub fn start_at(mut self, at: SystemTime) -> ScheduleSpec {
        self.start = epoch_millis(at);
        self
    }

    /// No fire after `at`.
    pub fn end_at(mut self, at: SystemTime) -> ScheduleSpec {
        self.end = epoch_millis(at);
        self
    }

    /// Spreads each fire over up to `jitter` after its time.
    pub fn jitter(mut self, jitter: Duration) -> ScheduleSpec {
        self.jitter = jitter.as_millis() as Millis;
        self
    }

    /// What a fire does while the one before it still runs (default [`Overlap::Skip`]).
    pub fn overlap(mut self, overlap: Overlap) -> ScheduleSpec {
        self.overlap = overlap;
        self
    }

    /// How recent a fire missed while nothing served the schedule may be and still
    /// run (default an hour).
    pub fn catch_up(mut self, window: Duration) -> ScheduleSpec {
        self.catch_up = window.as_millis() as Millis;
        self
    }

    /// Delivers each fire's invocation to this target URL (see [`Target`](crate::Target)).
    pub fn target(mut self, target: &str) -> ScheduleSpec {
        self.target = Some(target.to_owned());
        self
    }

    /// Times each fire's invocation out this long after it is created.
    pub fn timeout(mut self, timeout: Duration) -> ScheduleSpec {
        self.timeout = Some(timeout.as_millis() as Millis);
        self
    }

    /// Its fire times, or what is wrong with it: a cron expression that does not
    /// parse (naming the field), an unknown time zone, an interval that is not whole
    /// seconds, an end before the start, a target that is not a URL.
    pub(crate) fn times(&self) -> Result<Times, String> {
        if self.end < self.start {
            return Err(format!("it ends ({}) before it starts ({})", stamp(self.end), stamp(self.start)));
        }
        if let Some(target) = &self.target {
            target.parse::<crate::Target>().map_err(|e| format!("target: {e}"))?;
        }
        let when = match &self.every {
            Every::Cron { expr, zone } => {
                let tz = jiff::tz::TimeZone::get(zone)
                    .map_err(|_| format!("unknown time zone {zone:?} (an IANA name, such as \"Europe/Paris\")"))?;
                When::Cron(Box::new(parse_cron(expr)?), tz)
            }
            Every::Interval { ms } => {
                if *ms == 0 || ms % 1000 != 0 {
                    return Err(format!("an interval is a whole number of seconds, at least one, not {ms} ms"));
                }
                // Counted from the start, or else from the Unix epoch: every hour is on
                // the hour.
                When::Interval { every: *ms, anchor: self.start }
            }
        };
        Ok(Times { when, start: self.start, end: self.end })
    }
}

/// A cron expression, parsed; on an error, the field that is wrong.
fn parse_cron(expr: &str) -> Result<croner::Cron, String> {
    let parser = croner::parser::CronParser::new();
    let error = match parser.parse(expr) {
        Ok(cron) => return Ok(cron),
        Err(e) => e,
    };
    let fields: Vec<&str> = expr.split_whitespace().collect();
    let names: &[&str] = match fields.len() {
        5 => &["minute", "hour", "day of month", "month", "day of week"],
        6 => &["second", "minute", "hour", "day of month", "month", "day of week"],
        7 => &["second", "minute", "hour", "day of month", "month", "day of week", "year"],
        n => {
            return Err(format!(
                "cron expression {expr:?} has {n} fields; it takes 5 (minute hour day-of-month month day-of-week) or 6 (seconds first)"
            ));
        }
    };
    // The field that is wrong is the one that fails alone, the others as `*`.
    for (i, field) in fields.iter().enumerate() {
        let alone: Vec<&str> = (0..fields.len()).map(|j| if j == i { *field } else { "*" }).collect();
        if let Err(e) = parser.parse(&alone.join(" ")) {
            return Err(format!("cron expression {expr:?}: field {} ({}) {field:?}: {e}", i + 1, names[i]));
        }
    }
    Err(format!("cron expression {expr:?}: {error}"))
}

/// A time for people: RFC 3339, in UTC.
pub(crate) fn stamp(at: Millis) -> String {
    match jiff::Timestamp::from_millisecond(at.min(i64::MAX as u64) as i64) {
        Ok(t) if at != NEVER => t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
        _ => "never".to_owned(),
    }
}

/// A schedule's fire times.
#[derive(Debug)]
pub(crate) struct Times {
    when: When,
    start: Millis,
    end: Millis,
}

#[derive(Debug)]
enum When {
    Cron(Box<croner::Cron>, jiff::tz::TimeZone),
    Interval { every: Millis, anchor: Millis },
}

impl Times {
    /// The first fire after `t`, if one comes before the end.
    pub(crate) fn after(&self, t: Millis) -> Option<Millis> {
        // Before the start, the first fire at or after it.
        let t = if t < self.start { self.start.saturating_sub(1) } else { t };
        let next = match &self.when {
            When::Interval { every, anchor } => {
                if t < *anchor {
                    *anchor
                } else {
                    anchor + ((t - anchor) / every + 1) * every
                }
            }
            When::Cron(cron, tz) => {
                // Whole seconds: a fire is at a second.
                let from = jiff::Timestamp::from_second((t / 1000).min(i64::MAX as u64 / 1000) as i64).ok()?;
                let next = cron.find_next_occurrence(&from.to_zoned(tz.clone()), false).ok()?;
                u64::try_from(next.timestamp().as_millisecond()).ok()?
            }
        };
        (next <= self.end).then_some(next)
    }
}

/// A schedule: a record in the store, by id, that every runtime of the store fires.
///
/// Each fire's invocation has a deterministic id, the schedule's id and the fire's
/// time (`nightly@2026-12-07T01:00:00Z`), and the record moves on only by a write that
/// names the version it read, made in the same step as the fire: however many
/// processes serve a schedule, each fire starts one invocation. Create and steer one
/// through [`Durable::schedules`](crate::Durable::schedules).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Schedule {
    /// Its id; each fire's invocation is `{id}@{time}`.
    pub id: String,
    /// When and how it fires.
    pub spec: ScheduleSpec,
    /// The call each fire makes.
    pub call: Param,
    /// Paused: it fires nothing until resumed, and the fires meanwhile are not made up.
    pub paused: bool,
    /// The time of its next fire; `None` once its end has passed.
    pub next: Option<Millis>,
    /// The invocation its last fire started.
    pub last: Option<String>,
    /// Fires that started an invocation.
    pub fired: u64,
    /// Fires skipped because the one before still ran ([`Overlap`]).
    pub skipped: u64,
    /// The last run of fires missed beyond the catch-up window: from the first
    /// missed, up to (not including) the first made.
    pub missed: Option<(Millis, Millis)>,
    /// Why it stopped firing, if a stored record no longer reads as a schedule.
    pub error: Option<String>,
    /// When it was created, on the store's clock.
    pub created_at: Millis,
    /// Bumped by every write: a write names the version it read, and is refused if
    /// another came first.
    pub version: u64,
}

impl Schedule {
    /// A new schedule `id` of `spec`, each fire calling `call`, created at
    /// `created_at`, next firing at `next`: not paused, nothing fired yet. The store
    /// sets its version when it is stored.
    pub fn new(id: &str, spec: ScheduleSpec, call: Param, created_at: Millis, next: Option<Millis>) -> Schedule {
        Schedule {
            id: id.to_owned(),
            spec,
            call,
            paused: false,
            next,
            last: None,
            fired: 0,
            skipped: 0,
            missed: None,
            error: None,
            created_at,
            version: 0,
        }
    }

    /// When the store starts its next fire: the fire's time, plus its jitter; `None`
    /// while paused or once ended.
    pub fn due(&self) -> Option<Millis> {
        let next = self.next.filter(|_| !self.paused)?;
        let spread = if self.spec.jitter == 0 {
            0
        } else {
            crate::promise::digest(self.fire_id(next).as_bytes()) % (self.spec.jitter + 1)
        };
        Some(next.saturating_add(spread))
    }

    /// The id of the invocation of its fire at `at`.
    pub fn fire_id(&self, at: Millis) -> String {
        format!("{}@{}", self.id, stamp(at))
    }
}

/// The most bytes a schedule's id may take: its fires' ids add a time to it.
pub(crate) const MAX_SCHEDULE_ID: usize = 256;

/// A schedule's id must make valid invocation ids: not empty, no `.`, no control
/// characters, at most [`MAX_SCHEDULE_ID`] bytes.
pub(crate) fn check_id(id: &str) -> Result<(), String> {
    crate::promise::validate_id(id).map_err(|e| e.to_string())?;
    if id.len() > MAX_SCHEDULE_ID {
        return Err(format!("a schedule id may be at most {MAX_SCHEDULE_ID} bytes"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Millis {
        s.parse::<jiff::Timestamp>().unwrap().as_millisecond() as Millis
    }

    #[test]
    fn a_wrong_cron_field_is_named() {
        let e = ScheduleSpec::cron("0 25 * * *").times().unwrap_err();
        assert!(e.contains("field 2 (hour) \"25\""), "{e}");
        let e = ScheduleSpec::cron("0 2 * * MOON").times().unwrap_err();
        assert!(e.contains("field 5 (day of week)"), "{e}");
        let e = ScheduleSpec::cron("0 2 *").times().unwrap_err();
        assert!(e.contains("has 3 fields"), "{e}");
        let e = ScheduleSpec::cron("0 2 * * *").zone("Europe/Pariss").times().unwrap_err();
        assert!(e.contains("unknown time zone \"Europe/Pariss\""), "{e}");
        let e = ScheduleSpec::every(Duration::from_millis(1500)).times().unwrap_err();
        assert!(e.contains("whole number of seconds"), "{e}");
        let spec = ScheduleSpec::cron("0 2 * * *").start_at(SystemTime::UNIX_EPOCH + Duration::from_secs(100));
        let e = spec.end_at(SystemTime::UNIX_EPOCH + Duration::from_secs(50)).times().unwrap_err();
        assert!(e.contains("ends (1970-01-01T00:00:50Z) before it starts (1970-01-01T00:01:40Z)"), "{e}");
        let e = ScheduleSpec::cron("0 2 * * *").target("gpu").times().unwrap_err();
        assert!(e.starts_with("target: "), "{e}");
    }

    #[test]
    fn two_in_the_morning_in_paris_across_both_daylight_saving_changes() {
        let times = ScheduleSpec::cron("0 2 * * *").zone("Europe/Paris").times().unwrap();
        // 2026-03-29: clocks go from 02:00 to 03:00; 02:00 does not exist that day.
        let mut t = at("2026-03-27T12:00:00Z");
        let mut fires = Vec::new();
        for _ in 0..4 {
            t = times.after(t).unwrap();
            fires.push(stamp(t));
        }
        assert_eq!(
            fires,
            [
                "2026-03-28T01:00:00Z", // 02:00 CET
                "2026-03-29T01:00:00Z", // the gap: 03:00 CEST, the first time after it
                "2026-03-30T00:00:00Z", // 02:00 CEST
                "2026-03-31T00:00:00Z",
            ]
        );
        // 2026-10-25: clocks go from 03:00 back to 02:00; 02:00 happens twice, fires once.
        let times = ScheduleSpec::cron("30 2 * * *").zone("Europe/Paris").times().unwrap();
        let mut t = at("2026-10-24T12:00:00Z");
        let mut fires = Vec::new();
        for _ in 0..3 {
            t = times.after(t).unwrap();
            fires.push(stamp(t));
        }
        assert_eq!(fires, ["2026-10-25T00:30:00Z", "2026-10-26T01:30:00Z", "2026-10-27T01:30:00Z"]);
    }

    #[test]
    fn an_interval_counts_from_its_start_and_stops_at_its_end() {
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        let spec = ScheduleSpec::every(Duration::from_secs(60)).start_at(start);
        let times = spec.clone().end_at(start + Duration::from_secs(120)).times().unwrap();
        assert_eq!(times.after(0), Some(1_000_000));
        assert_eq!(times.after(1_000_000), Some(1_060_000));
        assert_eq!(times.after(1_060_500), Some(1_120_000));
        assert_eq!(times.after(1_120_000), None, "past its end");
        // Without a start, from the Unix epoch.
        let times = ScheduleSpec::every(Duration::from_secs(3600)).times().unwrap();
        assert_eq!(times.after(5_499), Some(3_600_000));
        assert_eq!(times.after(3_600_000), Some(7_200_000));
    }

    #[test]
    fn a_spec_says_what_it_does_in_a_line() {
        let spec = ScheduleSpec::cron("0 2 * * *").zone("Europe/Paris").catch_up(Duration::from_secs(6 * 3600));
        assert_eq!(spec.to_string(), "cron \"0 2 * * *\" in Europe/Paris, skip when running, catch up 6h");
        let spec = ScheduleSpec::every(Duration::from_secs(90))
            .jitter(Duration::from_millis(1500))
            .overlap(Overlap::BufferAll)
            .target("poll://any@reports");
        assert_eq!(
            spec.to_string(),
            "every 90s, jitter 1500ms, buffer all when running, catch up 1h, to poll://any@reports"
        );
    }

    #[test]
    fn jitter_is_the_same_everywhere_and_within_its_bound() {
        let spec = ScheduleSpec::every(Duration::from_secs(60)).jitter(Duration::from_secs(10));
        let mut s = Schedule::new("s", spec, Param::call("f", 1, "null".into()), 0, Some(60_000));
        let due = s.due().unwrap();
        assert!((60_000..=70_000).contains(&due));
        assert_eq!(s.clone().due(), Some(due), "drawn, not random");
        let spread: std::collections::BTreeSet<Millis> =
            (1..50).map(|k| Schedule { next: Some(k * 60_000), ..s.clone() }.due().unwrap() % 60_000).collect();
        assert!(spread.len() > 10, "fires spread over the window: {spread:?}");
        s.paused = true;
        assert_eq!(s.due(), None, "a paused schedule is not due");
        assert_eq!(Schedule { paused: false, ..s }.fire_id(60_000), "s@1970-01-01T00:01:00Z");
    }
}
