//! Histories of invocations, as files, and the replay check that runs them against
//! the functions of a build before it is deployed.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::promise::{NEVER, Promise, State};
use crate::runtime::function::Erased;
use crate::runtime::invocation::Fault;
use crate::runtime::shared::States;
use crate::store::{CreatePromise, Invocations, NewTask};
use crate::{Error, Nondeterminism, Promises, Result, Store, StoreError, Target};

/// The format of a [`History`] this build writes and reads.
pub const HISTORY_FORMAT: u32 = 1;

/// Everything one invocation recorded: its promise and every promise under it, those
/// its bodies created with a chosen id included, each with the target of its task
/// if it has one. As JSON ([`History::to_json`]) it is a file to check into a
/// repository as a test fixture of the replay check ([`Checker`]), or to
/// [`import`](Promises::import) into another store.
///
/// ```
/// # use std::sync::Arc;
/// # use durable::prelude::*;
/// # use durable::History;
/// #[durable::function]
/// async fn double(_ctx: &mut Context, x: i64) -> durable::Result<i64> {
///     Ok(2 * x)
/// }
///
/// #[durable::function]
/// async fn quadruple(ctx: &mut Context, x: i64) -> durable::Result<i64> {
///     let twice = ctx.lfc(double, x).await?;
///     ctx.lfc(double, twice).await
/// }
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> durable::Result<()> {
/// let durable = Durable::builder().store(Arc::new(MemoryStore::new())).register(quadruple).build()?;
/// durable.run("q-1", quadruple, 5).await?.await?;
///
/// let json = durable.promises().history("q-1").await?.to_json();
/// let history = History::from_json(&json)?;
/// assert_eq!(history.promises.len(), 3, "the invocation and its two calls");
///
/// // The replay check: does this build replay it?
/// let checker = Durable::builder().register(quadruple).checker()?;
/// let checked = checker.check(&history).await;
/// assert!(checked[0].is_ok(), "{}", checked[0]);
/// assert_eq!(checked[0].replayed, 3);
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct History {
    /// [`HISTORY_FORMAT`].
    pub format: u32,
    /// The invocation's id.
    pub id: String,
    /// Its promises, the invocation's first, every parent before its children.
    pub promises: Vec<Recorded>,
}

/// One promise of a [`History`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recorded {
    /// The promise as it was stored.
    pub promise: Promise,
    /// Where its task was routed, if it had one (an invocation, a remote call).
    pub target: Option<Target>,
}

impl History {
    /// The history as pretty-printed JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a history is plain data")
    }

    /// Reads a history written by [`History::to_json`]; an error says what is wrong
    /// and where (line and column).
    pub fn from_json(json: &str) -> Result<History> {
        let bad = |message: String| Error::Codec { id: "history".into(), what: "read a history".into(), message };
        let history: History = serde_json::from_str(json).map_err(|e| bad(e.to_string()))?;
        if history.format != HISTORY_FORMAT {
            return Err(bad(format!("it has format {}; this build reads format {HISTORY_FORMAT}", history.format)));
        }
        match history.promises.first() {
            Some(first) if first.promise.id == history.id => Ok(history),
            _ => Err(bad(format!("its first promise is not the invocation {:?}", history.id))),
        }
    }

    /// The invocation's promise.
    pub fn root(&self) -> &Promise {
        &self.promises[0].promise
    }
}

impl Promises<'_> {
    /// The history of invocation `id`, to keep as a file ([`History::to_json`]).
    /// [`Error::Store`] with `NotFound` if there is no such promise. Reads the whole
    /// tree, as [`Promises::tree`] does.
    pub async fn history(&self, id: &str) -> Result<History> {
        let Some(root) = self.tree(id).await? else {
            return Err(StoreError::NotFound { what: "promise", id: id.to_owned() }.into());
        };
        let mut promises = Vec::new();
        let mut stack = vec![root];
        while let Some(mut node) = stack.pop() {
            stack.extend(std::mem::take(&mut node.children).into_iter().rev());
            let target = node.task.take().map(|t| t.target);
            promises.push(Recorded { promise: node.promise.clone(), target });
        }
        Ok(History { format: HISTORY_FORMAT, id: id.to_owned(), promises })
    }

    /// Writes a history into this store, to go on there: every promise of the
    /// invocation's family as it was recorded, a pending one with a task routed as its
    /// was (a worker then takes it over and replays it). Deadlines count afresh from
    /// the import. All of it is written in one step ([`Store::import`]), so no worker
    /// takes any of it before all of it is there, or none of it is.
    ///
    /// The file is checked as a runtime write would be, before anything is written: the
    /// invocation is top-level and first, every other promise was created by one
    /// before it (so nothing outside the invocation's family is written), ids follow
    /// the rules of ids, payloads the limit, values are JSON, and digests are computed
    /// afresh. A file that breaks a rule is [`Error::Codec`] naming the promise and the
    /// rule; an id the store has already is [`Error::Store`] with a conflict.
    pub async fn import(&self, history: &History) -> Result<()> {
        let family = import_requests(history, self.max_payload)?;
        self.store.import(family).await?;
        Ok(())
    }
}

/// The requests that write `history`, checked: see [`Promises::import`].
fn import_requests(history: &History, max_payload: usize) -> Result<Vec<CreatePromise>> {
    let bad = |at: usize, id: &str, rule: String| Error::Codec {
        id: history.id.clone(),
        what: "import a history".into(),
        message: format!("promise {at} ({:?}): {rule}", crate::codec::truncated(id)),
    };
    // A history written before promises recorded their creators: derive them.
    let mut related: std::collections::BTreeMap<String, Promise> =
        history.promises.iter().map(|r| (r.promise.id.clone(), r.promise.clone())).collect();
    crate::store::upgrade::relate(&mut related);
    let mut seen = std::collections::HashSet::new();
    let mut family = Vec::with_capacity(history.promises.len());
    for (at, Recorded { promise: p, target }) in history.promises.iter().enumerate() {
        let parent = related.get(&p.id).and_then(|r| r.parent.clone());
        if at == 0 {
            crate::promise::validate_id(&p.id).map_err(|e| bad(at, &p.id, e.to_string()))?;
            if p.id != history.id || parent.is_some() {
                return Err(bad(at, &p.id, "the first promise must be the invocation, top-level".into()));
            }
        } else {
            let Some(creator) = parent.as_deref().filter(|c| seen.contains(*c)) else {
                return Err(bad(
                    at,
                    &p.id,
                    format!("is not of the family of {:?}: no promise before it created it", history.id),
                ));
            };
            match p.id.strip_prefix(creator).and_then(|rest| rest.strip_prefix('.')) {
                // Minted: its creator's id and a count.
                Some(rest) if !rest.is_empty() && !rest.chars().any(char::is_control) => {
                    if p.id.len() > crate::MAX_ID_LEN {
                        return Err(bad(at, &p.id, "an id may be at most 1024 bytes".into()));
                    }
                }
                Some(_) => return Err(bad(at, &p.id, "a child's id is its creator's, '.' and a count".into())),
                None => crate::promise::validate_id(&p.id).map_err(|e| bad(at, &p.id, e.to_string()))?,
            }
        }
        if !seen.insert(p.id.as_str()) {
            return Err(bad(at, &p.id, "is in the history twice".into()));
        }
        if let Some(key) =
            p.tags.keys().find(|k| k.starts_with("durable:") && k.as_str() != crate::promise::DETACHED_TAG)
        {
            return Err(bad(at, &p.id, format!("the tag {key:?} is the library's own")));
        }
        // Computed afresh, never taken from the file.
        let param = match &p.param {
            crate::Param::Call { func, version, args, .. } => {
                if args.len() > max_payload {
                    return Err(bad(
                        at,
                        &p.id,
                        format!("its arguments are {} bytes, over the limit of {max_payload}", args.len()),
                    ));
                }
                json(args).map_err(|e| bad(at, &p.id, format!("its arguments are not JSON: {e}")))?;
                crate::Param::call(func, *version, args.clone())
            }
            param => param.clone(),
        };
        let mut req = CreatePromise::new(p.id.clone(), param);
        req.parent = if at == 0 { None } else { parent };
        req.tags = p.tags.clone();
        // A step's undo comes with it: what a cancel or failure in the new store owes.
        if let Some(undo) = &p.undo {
            if undo.args.len() > max_payload {
                let size = undo.args.len();
                return Err(bad(
                    at,
                    &p.id,
                    format!("its undo's arguments are {size} bytes, over the limit of {max_payload}"),
                ));
            }
            json(&undo.args).map_err(|e| bad(at, &p.id, format!("its undo's arguments are not JSON: {e}")))?;
            req.undo = Some(undo.clone());
        }
        if p.timeout_at != NEVER {
            req.timeout = Some(p.timeout_at.saturating_sub(p.created_at));
        }
        match (p.state, target) {
            (State::Pending, Some(target)) if matches!(p.param, crate::Param::Call { .. }) => {
                req.task = Some(NewTask::new(target.clone()));
            }
            (State::Pending, Some(_)) => return Err(bad(at, &p.id, "only a call has a task".into())),
            (State::Pending, None) => {}
            (state, _) => {
                let value = p.value.clone().unwrap_or_else(|| "null".into());
                if value.len() > max_payload {
                    return Err(bad(
                        at,
                        &p.id,
                        format!("its value is {} bytes, over the limit of {max_payload}", value.len()),
                    ));
                }
                json(&value).map_err(|e| bad(at, &p.id, format!("its value is not JSON: {e}")))?;
                req.settled = Some((state, value));
            }
        }
        family.push(req);
    }
    Ok(family)
}

/// Whether `text` is JSON.
fn json(text: &str) -> std::result::Result<(), serde_json::Error> {
    serde_json::from_str::<serde::de::IgnoredAny>(text).map(drop)
}

/// The replay check: replays recorded histories against the functions of this build,
/// writing nothing, and reports every one that would diverge. Made with
/// [`Builder::checker`](crate::Builder::checker) from the same registrations as the
/// service's runtime.
///
/// A replay runs each body over its history as a replay after a crash would: the
/// code between durable calls runs, and each call is compared with what was recorded
/// (by function, arguments and id). It stops where a real execution would go on with
/// new work: a call the history does not hold, an await of a promise still pending
/// there, or a body's end. A body with nothing recorded under it is not run at all.
/// So nothing is written, and no new call is made; what a body does outside durable
/// calls runs as it does in any replay. The first stop ends the check of that
/// invocation: in a body that runs local calls concurrently (`lfi`), a branch that
/// had not reached its own stop by then goes unchecked past that point.
pub struct Checker {
    registry: HashMap<String, Arc<dyn Erased>>,
    states: States,
    max_payload: usize,
}

impl fmt::Debug for Checker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Checker").field("functions", &self.registry.keys().collect::<Vec<_>>()).finish()
    }
}

/// What the replay check found for one invocation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checked {
    /// The invocation, or a remote call in it: a task, whose body replays.
    pub id: String,
    /// Its function, by [`Param::function_key`](crate::Param::function_key).
    pub function: String,
    /// The promises its body recorded: itself and those under its id, except what
    /// the bodies of remote calls under it recorded (each checked on its own).
    pub recorded: usize,
    /// How many of them the replay reached.
    pub replayed: usize,
    /// The patches ([`Context::patched`](crate::Context::patched)) whose old path it
    /// took: while any invocation in flight does, keep that code.
    pub old_paths: Vec<String>,
    /// The verdict.
    pub verdict: Verdict,
}

/// The verdict of the replay check on one invocation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The build replays what was recorded, as far as the history goes.
    Replays,
    /// The build does something else than what was recorded: deployed, it would halt
    /// the invocation.
    Diverges(Nondeterminism),
    /// This build does not register the function (it runs elsewhere): not checked.
    NotRegistered,
    /// The replay stopped on something else (a payload that does not decode).
    Failed(String),
}

impl Checked {
    /// Whether deploying the build is safe for this invocation: it replays, or it is
    /// not this build's to run.
    pub fn is_ok(&self) -> bool {
        matches!(self.verdict, Verdict::Replays | Verdict::NotRegistered)
    }
}

impl fmt::Display for Checked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({}): ", self.id, self.function)?;
        match &self.verdict {
            Verdict::Replays => {
                write!(f, "replays ({} of {} recorded promises reached)", self.replayed, self.recorded)?
            }
            Verdict::Diverges(n) => write!(
                f,
                "diverges at {} ({}): the history recorded {}, but the code now makes {}",
                n.id, n.location, n.recorded, n.now
            )?,
            Verdict::NotRegistered => write!(f, "not checked: this build does not register {}", self.function)?,
            Verdict::Failed(reason) => write!(f, "the replay failed: {reason}")?,
        }
        if !self.old_paths.is_empty() {
            write!(f, "; takes the old path of patch {}", self.old_paths.join(", "))?;
        }
        Ok(())
    }
}

impl Checker {
    pub(crate) fn new(registry: HashMap<String, Arc<dyn Erased>>, states: States, max_payload: usize) -> Checker {
        Checker { registry, states, max_payload }
    }

    /// Replays one history: the invocation's body, and the body of each remote call
    /// in it (each a task with a history of its own), the invocation's first.
    pub async fn check(&self, history: &History) -> Vec<Checked> {
        let tasks: Vec<&Promise> = history
            .promises
            .iter()
            .filter(|r| r.promise.id == history.id || r.target.is_some())
            .map(|r| &r.promise)
            .filter(|p| p.param.function_key().is_some())
            .collect();
        // Each promise is its nearest task's to replay.
        let owner = |id: &str| -> Option<String> {
            tasks
                .iter()
                .map(|t| t.id.as_str())
                .filter(|t| id.starts_with(&format!("{t}.")))
                .max_by_key(|t| t.len())
                .map(str::to_owned)
        };
        let owned = |task: &str| -> std::collections::BTreeSet<String> {
            history
                .promises
                .iter()
                .map(|r| r.promise.id.clone())
                .filter(|id| id == task || owner(id).as_deref() == Some(task))
                .collect()
        };
        let promises: Vec<Promise> = history.promises.iter().map(|r| r.promise.clone()).collect();
        let mut out = Vec::new();
        for task in &tasks {
            let function = task.param.function_key().map(|k| k.into_owned()).unwrap_or_default();
            let mine = owned(&task.id);
            let mut checked = Checked {
                id: task.id.clone(),
                function,
                recorded: mine.len(),
                replayed: 0,
                old_paths: Vec::new(),
                verdict: Verdict::NotRegistered,
            };
            if let Some(func) = self.registry.get(&checked.function).cloned() {
                let replayed =
                    crate::runtime::replay::replay(func, task, promises.clone(), &self.states, self.max_payload).await;
                checked.replayed = replayed.reached.intersection(&mine).count();
                checked.old_paths = replayed.old_paths;
                checked.verdict = match replayed.fault {
                    None | Some(Fault::Frontier) => Verdict::Replays,
                    Some(Fault::Nondeterminism(n)) => Verdict::Diverges(n),
                    Some(fault) => Verdict::Failed(fault.error(&task.id).to_string()),
                };
            }
            out.push(checked);
        }
        out
    }

    /// Replays, from a store, every invocation in flight and the `finished` newest
    /// finished ones, each with its remote calls ([`Checker::check`]). Reads each
    /// whole; writes nothing.
    pub async fn check_store(&self, store: &dyn Store, finished: usize) -> Result<Vec<Checked>> {
        let mut ids = Vec::new();
        let listed = |state: State, limit: usize| {
            let query = Invocations { state: Some(state), limit: limit.clamp(1, 1000), ..Invocations::default() };
            async move {
                let mut found = Vec::new();
                let mut query = query;
                loop {
                    let page = store.invocations(query.clone()).await?;
                    found.extend(page.invocations.into_iter().map(|i| (i.promise.created_at, i.promise.id)));
                    match page.cursor {
                        Some(cursor) if found.len() < limit => query.cursor = Some(cursor),
                        _ => return Ok::<_, Error>(found),
                    }
                }
            }
        };
        ids.extend(listed(State::Pending, usize::MAX).await?.into_iter().map(|(_, id)| id));
        if finished > 0 {
            let mut done = listed(State::Resolved, finished).await?;
            done.extend(listed(State::Rejected, finished).await?);
            done.sort_by(|a, b| b.cmp(a));
            ids.extend(done.into_iter().take(finished).map(|(_, id)| id));
        }
        let promises = Promises::new(store);
        let mut checked = Vec::new();
        for id in ids {
            match promises.history(&id).await {
                Ok(history) => checked.extend(self.check(&history).await),
                // Purged between the listing and the read.
                Err(Error::Store(StoreError::NotFound { .. })) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(checked)
    }
}
