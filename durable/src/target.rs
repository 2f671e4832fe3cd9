//! Targets: where a remote call's task is delivered.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::Error;

/// Where a task goes: a worker group, and optionally one worker of it.
///
/// | URL | meaning |
/// |---|---|
/// | `poll://any@group` | any worker of the group |
/// | `poll://any@group/pid` | worker `pid` first; any worker of the group once the preference window passes |
/// | `poll://uni@group/pid` | only worker `pid`: the task waits for it, across its restarts |
/// | `poll://group` | the older form of `poll://any@group` |
/// | `poll://group/pid` | the older form of `poll://uni@group/pid` |
///
/// ```
/// use durable::Target;
///
/// let t: Target = "poll://any@exp/lhs".parse()?;
/// assert_eq!((t.group.as_str(), t.pid.as_deref(), t.uni), ("exp", Some("lhs"), false));
/// assert_eq!(t.to_string(), "poll://any@exp/lhs");
/// assert!("http://exp".parse::<Target>().is_err());
/// # Ok::<(), durable::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Target {
    /// The worker group.
    pub group: String,
    /// The worker, by its stable pid.
    pub pid: Option<String>,
    /// Only `pid` may take the task.
    pub uni: bool,
}

impl Target {
    /// Any worker of `group`.
    pub fn any(group: impl Into<String>) -> Target {
        Target { group: group.into(), pid: None, uni: false }
    }
}

impl FromStr for Target {
    type Err = Error;

    fn from_str(url: &str) -> Result<Target, Error> {
        let invalid = |reason: &str| Error::InvalidTarget { target: url.to_owned(), reason: reason.to_owned() };
        let rest = url
            .strip_prefix("poll://")
            .ok_or_else(|| invalid("a target starts with poll://, as in poll://any@group or poll://uni@group/pid"))?;
        let (mode, rest) = match rest.split_once('@') {
            Some(("any", rest)) => (Some(false), rest),
            Some(("uni", rest)) => (Some(true), rest),
            Some((other, _)) => return Err(invalid(&format!("unknown mode {other:?}: use any@ or uni@"))),
            None => (None, rest),
        };
        let (group, pid) = match rest.split_once('/') {
            Some((group, pid)) => (group, Some(pid)),
            None => (rest, None),
        };
        let name_ok = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c));
        if !name_ok(group) {
            return Err(invalid("the group must be a non-empty name of letters, digits, '-', '_', '.' or ':'"));
        }
        if let Some(pid) = pid
            && !name_ok(pid)
        {
            return Err(invalid("the pid must be a non-empty name of letters, digits, '-', '_', '.' or ':'"));
        }
        let uni = match mode {
            Some(true) if pid.is_none() => return Err(invalid("uni@ needs a pid: poll://uni@group/pid")),
            Some(uni) => uni,
            // The older forms: poll://group is any@group, poll://group/pid is uni@group/pid.
            None => pid.is_some(),
        };
        Ok(Target { group: group.to_owned(), pid: pid.map(str::to_owned), uni })
    }
}

impl TryFrom<&str> for Target {
    type Error = Error;

    fn try_from(url: &str) -> Result<Target, Error> {
        url.parse()
    }
}

impl TryFrom<&String> for Target {
    type Error = Error;

    fn try_from(url: &String) -> Result<Target, Error> {
        url.parse()
    }
}

impl TryFrom<String> for Target {
    type Error = Error;

    fn try_from(url: String) -> Result<Target, Error> {
        url.parse()
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mode = if self.uni { "uni" } else { "any" };
        write!(f, "poll://{mode}@{}", self.group)?;
        match &self.pid {
            Some(pid) => write!(f, "/{pid}"),
            None => Ok(()),
        }
    }
}
