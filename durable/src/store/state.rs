//! The promise and task state machine, shared by every backend.
//!
//! `Core` is pure: every operation takes the store's `now` and changes only memory.
//! It holds the live records (pending promises, unfulfilled tasks) and the indexes
//! over them; finished records are the backend's ([`Cold`]), read when needed. After
//! each step the backend takes its [`Changes`] and writes them: `MemoryStore` keeps
//! them in memory, `SledStore` appends them to its log, PostgreSQL upserts the rows.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::{Bound, ControlFlow};
use std::sync::Arc;

use super::cold::Cold;
use super::flow::{Admission, Bucket, Limit, LimitState};
use super::{
    Acquired, Claim, CreatePromise, Created, Cursor, Invocation, Invocations, Listing, Page, Purge, Release, Search,
    SettlePromise, Tick,
};
use crate::StoreError;
use crate::promise::{Fence, Millis, NEVER, Param, Promise, State, Task, TaskState, is_invocation};
use crate::schedule::Schedule;

/// The most finished invocations one listing reads before it answers with what it
/// found and a cursor: it holds the state's lock meanwhile.
const LIST_SCAN: usize = 4096;

#[derive(Debug)]
pub(crate) struct Core {
    /// Live promises: pending ones, and within a step those it settled.
    promises: BTreeMap<String, Promise>,
    /// Live invocations (pending roots that call a function), newest first.
    invocations: BTreeSet<(Reverse<Millis>, String)>,
    /// How many live promises each family has; a family with none is finished.
    live_families: HashMap<String, usize>,
    /// Live tasks: every one not fulfilled, and within a step those it fulfilled.
    tasks: HashMap<String, Task>,
    /// Finished records.
    cold: Arc<dyn Cold>,
    /// Pending promises with a deadline.
    deadlines: BTreeSet<(Millis, String)>,
    /// Acquired tasks by lease end.
    leases: BTreeSet<(Millis, String)>,
    /// Pending tasks per route (a group, and a pid while routed to one), by priority
    /// and the time they become ready.
    ready: HashMap<Route, Queue>,
    /// Pending tasks whose pid preference ends, by when.
    preferences: BTreeSet<(Millis, String)>,
    /// Pending tasks not ready when queued (a delayed start, a backoff), by when they
    /// become ready: the tick that passes that time tells their group.
    delayed: BTreeSet<(Millis, String)>,
    /// Suspended tasks by the promises they await.
    callbacks: HashMap<String, BTreeSet<String>>,
    /// The limits on tasks, by name.
    limits: BTreeMap<String, Limit>,
    /// The rates' state, by limit and key: only of keys started recently.
    buckets: HashMap<(String, String), Bucket>,
    /// The schedules, by id (a PostgreSQL step holds those it loaded).
    schedules: BTreeMap<String, Schedule>,
    /// The schedules by when they are next due (not paused, not ended).
    schedules_due: BTreeSet<(Millis, String)>,
    /// The debounced calls not yet started, by debounce key ([`Task::debounce`]).
    debounced: HashMap<String, String>,
    /// What the step in progress changed.
    dirty: Dirty,
}

/// A ready queue: its tasks by priority, highest first, and within a priority by the
/// time they become ready.
#[derive(Debug, Default)]
struct Queue(BTreeMap<Reverse<i32>, BTreeSet<(Millis, String)>>);

impl Queue {
    fn insert(&mut self, priority: i32, entry: (Millis, String)) {
        self.0.entry(Reverse(priority)).or_default().insert(entry);
    }

    fn remove(&mut self, priority: i32, entry: &(Millis, String)) {
        if let Some(level) = self.0.get_mut(&Reverse(priority)) {
            level.remove(entry);
            if level.is_empty() {
                self.0.remove(&Reverse(priority));
            }
        }
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.0.values().map(BTreeSet::len).sum()
    }

    /// The tasks ready at `now`, in the order a claim takes them.
    fn due(&self, now: Millis) -> impl Iterator<Item = (Reverse<i32>, &(Millis, String))> {
        self.0
            .iter()
            .flat_map(move |(p, level)| level.iter().take_while(move |(at, _)| *at <= now).map(move |e| (*p, e)))
    }

    /// Every task in it.
    fn all(&self) -> impl Iterator<Item = &(Millis, String)> {
        self.0.values().flatten()
    }

    /// When the first task of each priority becomes ready.
    fn firsts(&self) -> impl Iterator<Item = Millis> + '_ {
        self.0.values().filter_map(|level| level.first()).map(|(at, _)| *at)
    }
}

/// A ready queue: a group, and the pid a task is routed to (none: any worker).
type Route = (String, Option<String>);

#[derive(Debug, Default)]
struct Dirty {
    promises: Vec<String>,
    tasks: Vec<String>,
    finished: Vec<(Millis, String)>,
    chosen: Vec<(String, String)>,
    invoked: Vec<(Millis, String)>,
    purged: Purged,
    woken: Vec<String>,
    ready: BTreeSet<String>,
    limits: Vec<String>,
    buckets: Vec<(String, String)>,
    schedules: Vec<String>,
}

/// What one step changed: the records to write, and whom to wake.
#[derive(Debug, Default)]
pub(crate) struct Changes {
    /// Each promise the step changed, as it is now: pending (live) or settled
    /// (finished, no longer in the state's memory).
    pub(crate) promises: Vec<Promise>,
    /// Each task the step changed, as it is now; a fulfilled one is finished.
    pub(crate) tasks: Vec<Task>,
    /// Families the step finished (left with nothing pending), by that time: the
    /// index retention reads. A family may be entered more than once.
    pub(crate) finished: Vec<(Millis, String)>,
    /// Promises the step created with a chosen id in a family, as (root, id): the
    /// index a family's promises are found by, besides their ids' prefixes.
    pub(crate) chosen: Vec<(String, String)>,
    /// Invocations the step finished, by creation time: the index listings read.
    pub(crate) invoked: Vec<(Millis, String)>,
    /// What the step purged.
    pub(crate) purged: Purged,
    /// Promises settled or tasks halted: their waiters are to be woken.
    pub(crate) woken: Vec<String>,
    /// The groups a task became ready in.
    pub(crate) ready: BTreeSet<String>,
    /// Each limit the step set or removed (`None`), by name.
    pub(crate) limits: Vec<(String, Option<Limit>)>,
    /// Each rate's state the step changed or dropped (`None`), by limit and key.
    pub(crate) buckets: Vec<((String, String), Option<Bucket>)>,
    /// Each schedule the step wrote or removed (`None`), by id.
    pub(crate) schedules: Vec<(String, Option<Schedule>)>,
}

impl Changes {
    /// True if nothing is to be written.
    pub(crate) fn is_empty(&self) -> bool {
        self.promises.is_empty()
            && self.tasks.is_empty()
            && self.finished.is_empty()
            && self.chosen.is_empty()
            && self.invoked.is_empty()
            && self.purged.is_empty()
            && self.limits.is_empty()
            && self.buckets.is_empty()
            && self.schedules.is_empty()
    }
}

/// Finished records a purge deletes.
#[derive(Debug, Default)]
pub(crate) struct Purged {
    pub(crate) promises: Vec<String>,
    pub(crate) tasks: Vec<String>,
    /// Entries of the finished-families index.
    pub(crate) finished: Vec<(Millis, String)>,
    /// Entries of the chosen-id index.
    pub(crate) chosen: Vec<(String, String)>,
    /// Entries of the finished-invocations index.
    pub(crate) invoked: Vec<(Millis, String)>,
}

impl Purged {
    fn is_empty(&self) -> bool {
        self.promises.is_empty()
            && self.tasks.is_empty()
            && self.finished.is_empty()
            && self.chosen.is_empty()
            && self.invoked.is_empty()
    }

    /// Takes `p`, a promise of a family being purged, with its index entries.
    fn push(&mut self, p: &Promise) {
        if is_chosen(p) {
            self.chosen.push((p.root.clone(), p.id.clone()));
        }
        if is_invocation(p) {
            self.invoked.push((p.created_at, p.id.clone()));
        }
        self.promises.push(p.id.clone());
    }
}

impl Core {
    /// An empty state over finished records kept in `cold`.
    pub(crate) fn new(cold: Arc<dyn Cold>) -> Core {
        Core {
            promises: BTreeMap::new(),
            invocations: BTreeSet::new(),
            live_families: HashMap::new(),
            tasks: HashMap::new(),
            cold,
            deadlines: BTreeSet::new(),
            leases: BTreeSet::new(),
            ready: HashMap::new(),
            preferences: BTreeSet::new(),
            delayed: BTreeSet::new(),
            callbacks: HashMap::new(),
            limits: BTreeMap::new(),
            buckets: HashMap::new(),
            schedules: BTreeMap::new(),
            schedules_due: BTreeSet::new(),
            debounced: HashMap::new(),
            dirty: Dirty::default(),
        }
    }

    /// Takes in the stored limits and rates' state, as a backend restores them.
    pub(crate) fn restore_flow(&mut self, limits: Vec<Limit>, buckets: Vec<((String, String), Bucket)>) {
        self.limits = limits.into_iter().map(|l| (l.name.clone(), l)).collect();
        self.buckets = buckets.into_iter().collect();
    }

    /// Rebuilds the state from persisted live records (a PostgreSQL step passes
    /// finished ones too: it reads every record it needs).
    pub(crate) fn restore(cold: Arc<dyn Cold>, promises: Vec<Promise>, tasks: Vec<Task>, now: Millis) -> Core {
        let mut core = Core::new(cold);
        for p in promises {
            if p.state == State::Pending && p.timeout_at != NEVER {
                core.deadlines.insert((p.timeout_at, p.id.clone()));
            }
            if p.state == State::Pending && is_invocation(&p) {
                core.invocations.insert((Reverse(p.created_at), p.id.clone()));
            }
            if p.state == State::Pending {
                core.family_joins(&p.root);
            }
            core.promises.insert(p.id.clone(), p);
        }
        for t in tasks {
            match t.state {
                TaskState::Pending => {
                    if let Some(key) = t.debounce.as_ref().filter(|_| t.version == 0) {
                        core.debounced.insert(key.clone(), t.id.clone());
                    }
                    core.ready_insert(&t, now)
                }
                TaskState::Acquired => {
                    core.leases.insert((t.lease_until, t.id.clone()));
                }
                TaskState::Suspended => {
                    for id in &t.awaiting {
                        core.callbacks.entry(id.clone()).or_default().insert(t.id.clone());
                    }
                }
                TaskState::Fulfilled | TaskState::Halted => {}
            }
            core.tasks.insert(t.id.clone(), t);
        }
        core
    }

    /// Gives back every acquired task: used when the holder is known to be gone.
    pub(crate) fn release_all(&mut self, now: Millis) -> usize {
        let held: Vec<_> = std::mem::take(&mut self.leases).into_iter().map(|(_, id)| id).collect();
        for id in &held {
            self.make_pending(id, now, true);
        }
        held.len()
    }

    /// Ends a step: hands over what it changed, and lets go of the records it
    /// finished (they are the backend's now).
    pub(crate) fn take_changes(&mut self) -> Changes {
        let dirty = std::mem::take(&mut self.dirty);
        let mut changes = Changes {
            finished: dirty.finished,
            chosen: dirty.chosen,
            invoked: dirty.invoked,
            purged: dirty.purged,
            woken: dirty.woken,
            ready: dirty.ready,
            ..Changes::default()
        };
        for id in dedup(dirty.promises) {
            match self.promises.get(&id) {
                Some(p) if p.state.is_settled() => changes.promises.extend(self.promises.remove(&id)),
                Some(p) => changes.promises.push(p.clone()),
                None => {}
            }
        }
        for id in dedup(dirty.tasks) {
            match self.tasks.get(&id) {
                Some(t) if t.state == TaskState::Fulfilled => changes.tasks.extend(self.tasks.remove(&id)),
                Some(t) => changes.tasks.push(t.clone()),
                None => {}
            }
        }
        for name in dedup(dirty.limits) {
            let limit = self.limits.get(&name).cloned();
            changes.limits.push((name, limit));
        }
        let mut buckets = dirty.buckets;
        buckets.sort();
        buckets.dedup();
        for id in buckets {
            let bucket = self.buckets.get(&id).copied();
            changes.buckets.push((id, bucket));
        }
        for id in dedup(dirty.schedules) {
            let schedule = self.schedules.get(&id).cloned();
            changes.schedules.push((id, schedule));
        }
        changes
    }

    /// Restores the schedules of a backend's records.
    pub(crate) fn restore_schedules(&mut self, schedules: Vec<Schedule>) {
        for s in schedules {
            self.schedule_index(&s);
            self.schedules.insert(s.id.clone(), s);
        }
    }

    fn schedule_index(&mut self, s: &Schedule) {
        if let Some(due) = s.due() {
            self.schedules_due.insert((due, s.id.clone()));
        }
    }

    fn schedule_unindex(&mut self, id: &str) {
        if let Some(due) = self.schedules.get(id).and_then(Schedule::due) {
            self.schedules_due.remove(&(due, id.to_owned()));
        }
    }

    /// Stores a new schedule, at version 1; one of its id is a conflict unless
    /// `replace`, which writes over it at the next version.
    pub(crate) fn put_schedule(&mut self, mut s: Schedule, replace: bool) -> Result<Schedule, StoreError> {
        s.version = match self.schedules.get(&s.id) {
            Some(_) if !replace => return Err(conflict(&s.id, "a schedule of this id exists")),
            Some(stored) => stored.version + 1,
            None => 1,
        };
        self.schedule_unindex(&s.id);
        self.schedule_index(&s);
        self.dirty.schedules.push(s.id.clone());
        self.schedules.insert(s.id.clone(), s.clone());
        Ok(s)
    }

    /// Removes a schedule; false if there was none.
    pub(crate) fn remove_schedule(&mut self, id: &str) -> bool {
        self.schedule_unindex(id);
        if self.schedules.remove(id).is_none() {
            return false;
        }
        self.dirty.schedules.push(id.to_owned());
        true
    }

    /// Writes `s` over the stored schedule if that is still at `s.version`, and
    /// creates its fires' invocations in the same step (an id that exists is left as
    /// it is: a fire is made once). False, changing nothing, if another write came
    /// first or the schedule is gone.
    pub(crate) fn update_schedule(
        &mut self,
        mut s: Schedule,
        fires: Vec<CreatePromise>,
        now: Millis,
    ) -> Result<bool, StoreError> {
        if self.schedules.get(&s.id).is_none_or(|stored| stored.version != s.version) {
            return Ok(false);
        }
        for req in &fires {
            if req.parent.is_some() || req.fence.is_some() || req.settled.is_some() {
                return Err(conflict(&req.id, "a fire creates a top-level pending invocation"));
            }
        }
        for req in fires {
            if self.stored(&req.id)?.is_none() {
                self.create(req, now)?;
            }
        }
        s.version += 1;
        self.schedule_unindex(&s.id);
        self.schedule_index(&s);
        self.dirty.schedules.push(s.id.clone());
        self.schedules.insert(s.id.clone(), s);
        Ok(true)
    }

    /// A schedule by id.
    pub(crate) fn schedule(&self, id: &str) -> Option<Schedule> {
        self.schedules.get(id).cloned()
    }

    /// Every schedule by id or, with `due`, those due by then (at most `MAX_DUE`),
    /// soonest first.
    pub(crate) fn schedules(&self, due: Option<Millis>) -> Vec<Schedule> {
        match due {
            None => self.schedules.values().cloned().collect(),
            Some(by) => self
                .schedules_due
                .iter()
                .take_while(|(at, _)| *at <= by)
                .take(super::MAX_DUE)
                .map(|(_, id)| self.schedules[id].clone())
                .collect(),
        }
    }

    /// The function key of the call `t` executes: recorded on the task, or, for a
    /// task recorded before tasks named it, read from its promise.
    fn function_of<'a>(&'a self, t: &'a Task) -> Option<std::borrow::Cow<'a, str>> {
        match &t.function {
            Some(f) => Some(f.as_str().into()),
            None => self.promises.get(&t.id).and_then(|p| p.param.function_key()),
        }
    }

    /// Whether a limit covers `t`.
    fn limited(&self, t: &Task) -> bool {
        !self.limits.is_empty() && {
            let function = self.function_of(t);
            self.limits.values().any(|l| l.covers(&t.target.group, function.as_deref()))
        }
    }

    /// Sets a limit; keeps the one stored under its name unless `replace`.
    pub(crate) fn set_limit(&mut self, limit: Limit, replace: bool) -> Result<Limit, StoreError> {
        limit.check()?;
        if let Some(stored) = self.limits.get(&limit.name).filter(|_| !replace) {
            return Ok(stored.clone());
        }
        self.dirty.limits.push(limit.name.clone());
        self.limits.insert(limit.name.clone(), limit.clone());
        self.wake_all_groups();
        Ok(limit)
    }

    /// Removes a limit and its rate's state; false if there was none.
    pub(crate) fn remove_limit(&mut self, name: &str) -> bool {
        if self.limits.remove(name).is_none() {
            return false;
        }
        self.dirty.limits.push(name.to_owned());
        let dropped: Vec<(String, String)> = self.buckets.keys().filter(|(l, _)| l == name).cloned().collect();
        for id in dropped {
            self.buckets.remove(&id);
            self.dirty.buckets.push(id);
        }
        self.wake_all_groups();
        true
    }

    /// Every limit with the tasks it covers executing and waiting.
    pub(crate) fn limit_states(&self) -> Vec<LimitState> {
        self.limits
            .values()
            .map(|limit| {
                let covers = |t: &Task| limit.covers(&t.target.group, self.function_of(t).as_deref());
                let executing = self.leases.iter().filter(|(_, id)| covers(&self.tasks[id])).count();
                let mut waiting = 0;
                let mut oldest: Option<Millis> = None;
                for (at, id) in self.ready.values().flat_map(Queue::all) {
                    if covers(&self.tasks[id]) {
                        waiting += 1;
                        oldest = Some(oldest.map_or(*at, |o| o.min(*at)));
                    }
                }
                LimitState { limit: limit.clone(), executing, waiting, oldest }
            })
            .collect()
    }

    /// Signals every group with a queue: a limit changed, or a slot came free.
    fn wake_all_groups(&mut self) {
        let groups: BTreeSet<String> = self.ready.keys().map(|(group, _)| group.clone()).collect();
        self.dirty.ready.extend(groups);
    }

    /// A promise, live or finished, as stored.
    fn stored(&self, id: &str) -> Result<Option<Promise>, StoreError> {
        match self.promises.get(id) {
            Some(p) => Ok(Some(p.clone())),
            None => self.cold.promise(id),
        }
    }

    /// A task, live or finished.
    pub(crate) fn task(&self, id: &str) -> Result<Option<Task>, StoreError> {
        match self.tasks.get(id) {
            Some(t) => Ok(Some(t.clone())),
            None => self.cold.task(id),
        }
    }

    /// A write under `fence` is refused unless its task is held at that version, its
    /// lease runs, and its promise's deadline has not passed (then the task is dead,
    /// whether or not a tick has said so yet).
    fn check_fence(&mut self, fence: Option<&Fence>, now: Millis) -> Result<(), StoreError> {
        let Some(fence) = fence else { return Ok(()) };
        self.expire(&fence.task, now);
        match self.tasks.get(&fence.task) {
            Some(t) if t.state == TaskState::Acquired && t.version == fence.version && now < t.lease_until => Ok(()),
            _ => Err(StoreError::Fenced { task: fence.task.clone(), version: fence.version }),
        }
    }

    pub(crate) fn create(&mut self, req: CreatePromise, now: Millis) -> Result<Created, StoreError> {
        self.check_fence(req.fence.as_ref(), now)?;
        self.expire(&req.id, now);
        // A local child (a create under the fenced task that skips its sync) that is
        // not live is new: had it settled before the task was claimed, the claim's
        // preload held it and the runtime replays it instead of creating it, and
        // since then only the holder of the fence writes under the task. So it skips
        // the read of the finished records.
        let local = !req.durable
            && req
                .fence
                .as_ref()
                .is_some_and(|f| req.id.strip_prefix(f.task.as_str()).is_some_and(|r| r.starts_with('.')));
        let existing = if local { self.promises.get(&req.id).cloned() } else { self.stored(&req.id)? };
        if let Some(p) = existing {
            if req.ikey.is_some() && req.ikey != p.ikey_create {
                return Err(conflict(&req.id, "it exists with another idempotency key"));
            }
            if req.strict && (req.ikey != p.ikey_create || p.state != State::Pending) {
                return Err(conflict(&req.id, "it exists and strict mode requires it pending with the same key"));
            }
            return Ok(Created { promise: p, new: false, acquired: None });
        }
        if let Some(debounce) = req.task.as_ref().and_then(|t| t.debounce.as_ref())
            && let Some(joined) = self.join(debounce, &req, now)?
        {
            return Ok(Created { promise: joined, new: false, acquired: None });
        }
        // The family: the creator's, which must exist; a promise without one is a
        // family of its own.
        let root = match &req.parent {
            None => req.id.clone(),
            Some(parent) if *parent == req.id => return Err(conflict(&req.id, "a promise cannot create itself")),
            // The creator is live while its body runs: no copy of it is made.
            Some(parent) => match self.promises.get(parent) {
                Some(creator) => family_of(creator).to_owned(),
                None => match self.cold.promise(parent)? {
                    Some(creator) => family_of(&creator).to_owned(),
                    None => return Err(conflict(&req.id, &format!("its creator {parent:?} does not exist"))),
                },
            },
        };
        let timeout_at = req.timeout.map_or(NEVER, |t| now.saturating_add(t)).min(req.deadline_cap);
        let (state, settled_at, value) = match req.settled {
            Some((State::Pending, _)) => {
                return Err(conflict(&req.id, "a promise cannot be created settled as pending"));
            }
            Some((state, value)) => (state, Some(now), Some(value)),
            None => (State::Pending, None, None),
        };
        let promise = Promise {
            id: req.id.clone(),
            parent: req.parent,
            root,
            state,
            param: req.param,
            value,
            timeout_at,
            tags: req.tags,
            ikey_create: req.ikey,
            ikey_settle: None,
            created_at: now.saturating_sub(req.ran_for),
            settled_at,
            undo: req.undo,
            canceling: false,
        };
        if state == State::Pending && timeout_at != NEVER {
            self.deadlines.insert((timeout_at, req.id.clone()));
        }
        if is_chosen(&promise) {
            self.dirty.chosen.push((promise.root.clone(), promise.id.clone()));
        }
        if state.is_settled() {
            self.finish(&promise, now);
        } else {
            self.family_joins(&promise.root);
            if is_invocation(&promise) {
                self.invocations.insert((Reverse(promise.created_at), req.id.clone()));
            }
        }
        self.promises.insert(req.id.clone(), promise);
        self.dirty.promises.push(req.id.clone());
        let mut acquired = None;
        if let Some(new_task) = req.task {
            let function = self.promises[&req.id].param.function_key().map(std::borrow::Cow::into_owned);
            // A delayed start: delivered from then on, and preferred from then on.
            let ready_at = now.saturating_add(new_task.delay).max(new_task.not_before);
            let mut task = Task {
                id: req.id.clone(),
                state: TaskState::Pending,
                version: 0,
                target: new_task.target,
                prefer_until: ready_at.saturating_add(new_task.window),
                process: None,
                lease_until: 0,
                ready_at,
                faults: 0,
                error: None,
                awaiting: Vec::new(),
                halted_code: None,
                function,
                key: new_task.key,
                priority: new_task.priority,
                debounce: None,
            };
            if let Some(d) = new_task.debounce {
                // It starts once quiet, or at its longest wait.
                task.ready_at = now.saturating_add(d.quiet.min(d.max_wait)).max(task.ready_at);
                task.prefer_until = task.ready_at.saturating_add(new_task.window);
                self.debounced.insert(d.key.clone(), req.id.clone());
                task.debounce = Some(d.key);
            }
            let ready_at = task.ready_at;
            // A limited task starts only through a claim, which admits it; a delayed
            // one, through a claim once its time comes.
            let acquire = new_task.acquire.filter(|_| !self.limited(&task) && ready_at <= now);
            let after = new_task.after.filter(|a| self.promises.get(a).is_some_and(|p| p.state == State::Pending));
            if state.is_settled() {
                task.state = TaskState::Fulfilled;
            } else if let Some(after) = after {
                task.state = TaskState::Suspended;
                self.callbacks.entry(after.clone()).or_default().insert(task.id.clone());
                task.awaiting = vec![after];
            } else if let Some((process, ttl)) = acquire {
                task.state = TaskState::Acquired;
                task.version = 1;
                task.process = Some(process);
                task.lease_until = now.saturating_add(ttl);
                self.leases.insert((task.lease_until, task.id.clone()));
                acquired = Some(task.clone());
            } else {
                self.ready_insert(&task, now);
                self.dirty.ready.insert(task.target.group.clone());
            }
            self.tasks.insert(req.id.clone(), task);
            self.dirty.tasks.push(req.id.clone());
        }
        if self.expire(&req.id, now) {
            acquired = None;
        }
        Ok(Created { promise: self.promises[&req.id].clone(), new: true, acquired })
    }

    /// Joins a debounced call to the call of its key not yet started, if there is
    /// one: its arguments become the call's (or are added to them), and it starts
    /// once the key is quiet, or at the first call's longest wait. Arguments that
    /// would grow too large start the waiting call at once instead, and the call
    /// opens a new one (`None`).
    fn join(&mut self, d: &super::Debounce, req: &CreatePromise, now: Millis) -> Result<Option<Promise>, StoreError> {
        let Some(id) = self.debounced.get(&d.key).cloned() else { return Ok(None) };
        let waiting = self.tasks.get(&id).is_some_and(|t| t.state == TaskState::Pending && t.version == 0);
        let Some(p) = self.promises.get(&id).filter(|p| waiting && p.state == State::Pending).cloned() else {
            self.debounced.remove(&d.key);
            return Ok(None);
        };
        let (Param::Call { func, version, args, .. }, Param::Call { args: more, .. }) = (&p.param, &req.param) else {
            return Err(conflict(&req.id, "a debounced call is a call of a function"));
        };
        let args = if d.all {
            let list = |text: &str| serde_json::from_str::<Vec<serde_json::Value>>(text);
            let (Ok(mut all), Ok(more)) = (list(args), list(more)) else {
                return Err(conflict(&req.id, "a call that keeps all arguments passes them as a JSON array"));
            };
            all.extend(more);
            serde_json::to_string(&all).expect("JSON values encode")
        } else {
            more.clone()
        };
        let t = self.tasks[&id].clone();
        self.unindex(&t);
        let mut t = t;
        if args.len() > d.max_args {
            // Full: it starts now with what it has, joinable no more; this call opens
            // the next.
            t.ready_at = now.min(t.ready_at);
            t.debounce = None;
            self.ready_insert(&t, now);
            self.dirty.ready.insert(t.target.group.clone());
            self.tasks.insert(id.clone(), t);
            self.dirty.tasks.push(id);
            return Ok(None);
        }
        let promise = self.promises.get_mut(&id).expect("the joined promise is live");
        promise.param = Param::call(func, *version, args);
        let first = promise.created_at;
        self.dirty.promises.push(id.clone());
        // Past its longest wait, it is ready already, and keeps its place in line.
        t.ready_at = now.saturating_add(d.quiet).min(first.saturating_add(d.max_wait));
        t.prefer_until = t.prefer_until.max(t.ready_at);
        self.debounced.insert(d.key.clone(), id.clone());
        self.ready_insert(&t, now);
        self.tasks.insert(id.clone(), t);
        self.dirty.tasks.push(id.clone());
        Ok(Some(self.promises[&id].clone()))
    }

    /// Takes a task out of the debounced calls waiting to start.
    fn undebounce(&mut self, id: &str) {
        if let Some(key) = self.tasks.get(id).and_then(|t| t.debounce.as_ref())
            && self.debounced.get(key).is_some_and(|waiting| waiting == id)
        {
            self.debounced.remove(key);
        }
    }

    /// Creates a family in one step: every request is checked before anything is
    /// changed, so that a refusal changes nothing.
    pub(crate) fn import(&mut self, family: Vec<CreatePromise>, now: Millis) -> Result<(), StoreError> {
        let mut seen = std::collections::HashSet::new();
        for req in &family {
            if req.fence.is_some() {
                return Err(conflict(&req.id, "an import is not made under a task's fence"));
            }
            if matches!(req.settled, Some((State::Pending, _))) {
                return Err(conflict(&req.id, "a promise cannot be created settled as pending"));
            }
            if !seen.insert(req.id.as_str()) || self.stored(&req.id)?.is_some() {
                return Err(conflict(&req.id, "is in this store already: an import writes only new promises"));
            }
            if let Some(parent) = &req.parent
                && (*parent == req.id || (!seen.contains(parent.as_str()) && self.stored(parent)?.is_none()))
            {
                return Err(conflict(
                    &req.id,
                    &format!("its creator {parent:?} is neither stored nor imported before it"),
                ));
            }
        }
        // A call that created something began in the store it came from: its task is
        // past version 0, as one delivered before, so that a cancel undoes what it did
        // rather than dropping it as never started, and no debounced call joins it.
        let begun: std::collections::HashSet<String> = family.iter().filter_map(|r| r.parent.clone()).collect();
        for req in family {
            self.create(req, now)?;
        }
        for id in &begun {
            if let Some(t) = self.tasks.get_mut(id)
                && t.version == 0
            {
                t.version = 1;
                self.dirty.tasks.push(id.clone());
            }
        }
        Ok(())
    }

    pub(crate) fn settle(&mut self, req: SettlePromise, now: Millis) -> Result<Promise, StoreError> {
        self.check_fence(req.fence.as_ref(), now)?;
        if req.state == State::Pending {
            return Err(conflict(&req.id, "a promise cannot be settled as pending"));
        }
        if req.state == State::RejectedTimedout {
            return Err(conflict(&req.id, "only its deadline times a promise out"));
        }
        self.expire(&req.id, now);
        let Some(p) = self.promises.get_mut(&req.id) else {
            // Not live: settled already, or never created.
            let Some(p) = self.cold.promise(&req.id)? else {
                return Err(StoreError::NotFound { what: "promise", id: req.id });
            };
            return settled_again(&req, p);
        };
        if p.state == State::Pending {
            p.state = req.state;
            p.value = Some(req.value);
            p.ikey_settle = req.ikey;
            p.settled_at = Some(now);
            let p = p.clone();
            self.on_settled(&p, now);
            return Ok(p);
        }
        let p = p.clone();
        settled_again(&req, p)
    }

    /// Settles a pending promise whose deadline passed; true if it did.
    fn expire(&mut self, id: &str, now: Millis) -> bool {
        let Some(p) = self.promises.get_mut(id) else {
            return false;
        };
        if !p.expire(now) {
            return false;
        }
        let p = p.clone();
        self.on_settled(&p, now);
        true
    }

    fn on_settled(&mut self, p: &Promise, now: Millis) {
        self.deadlines.remove(&(p.timeout_at, p.id.clone()));
        self.dirty.promises.push(p.id.clone());
        self.dirty.woken.push(p.id.clone());
        self.invocations.remove(&(Reverse(p.created_at), p.id.clone()));
        self.family_leaves(&p.root);
        self.finish(p, now);
        if let Some(t) = self.tasks.get(&p.id).cloned() {
            self.unindex(&t);
            let t = self.tasks.get_mut(&p.id).expect("task exists");
            t.state = TaskState::Fulfilled;
            t.process = None;
            self.dirty.tasks.push(p.id.clone());
        }
        // Resume the tasks suspended on it.
        for task in self.callbacks.remove(&p.id).unwrap_or_default() {
            if self.tasks.get(&task).is_some_and(|t| t.state == TaskState::Suspended) {
                self.make_pending(&task, p.settled_at.unwrap_or_default(), false);
            }
        }
    }

    /// Enters a settled promise in the index of finished invocations, and its family,
    /// if nothing in it is pending any more, in the index of finished families, at
    /// `now`: no promise of the family settled later.
    fn finish(&mut self, p: &Promise, now: Millis) {
        if !self.family_live(&p.root) {
            self.dirty.finished.push((now, p.root.clone()));
        }
        if is_invocation(p) {
            self.dirty.invoked.push((p.created_at, p.id.clone()));
        }
    }

    pub(crate) fn get(&self, id: &str, now: Millis) -> Result<Option<Promise>, StoreError> {
        Ok(self.stored(id)?.map(|p| p.at(now)))
    }

    /// True once the promise is settled, or, if `halted`, its task halted. A promise
    /// that is not live is settled (or was never created).
    pub(crate) fn is_done(&self, id: &str, halted: bool, now: Millis) -> bool {
        let settled = self.promises.get(id).is_none_or(|p| p.at(now).state.is_settled());
        settled || (halted && self.tasks.get(id).is_some_and(|t| t.state == TaskState::Halted))
    }

    pub(crate) fn search(&self, q: &Search, now: Millis) -> Result<Page, StoreError> {
        let limit = super::page_size(q.limit);
        let matches = |p: &Promise| {
            let state_ok = match q.state {
                None => true,
                Some(State::Rejected) => p.state.is_settled() && p.state != State::Resolved,
                Some(s) => p.state == s,
            };
            state_ok && q.tags.iter().all(|(k, v)| p.tags.get(k) == Some(v))
        };
        if let Some(root) = &q.root {
            let keep = |p: &Promise| p.id.starts_with(&q.prefix) && matches(&p.at(now));
            let mut found: Vec<Promise> = self
                .family_after(root, q.cursor.as_deref(), limit + 1, &keep)?
                .into_iter()
                .map(|p| p.at(now))
                .collect();
            let more = found.len() > limit;
            found.truncate(limit);
            let cursor = if more { found.last().map(|p| p.id.clone()) } else { None };
            return Ok(Page { promises: found, cursor });
        }
        // The first `limit + 1` matches of each side, merged in id order.
        let start = match &q.cursor {
            Some(c) if c.as_str() >= q.prefix.as_str() => std::ops::Bound::Excluded(c.clone()),
            _ => std::ops::Bound::Included(q.prefix.clone()),
        };
        let mut found: Vec<Promise> = self
            .promises
            .range((start, std::ops::Bound::Unbounded))
            .take_while(|(id, _)| id.starts_with(&q.prefix))
            .map(|(_, p)| p.at(now))
            .filter(matches)
            .take(limit + 1)
            .collect();
        let mut cold = Vec::new();
        // Finished records are never pending.
        if q.state != Some(State::Pending) {
            self.cold.promises(&q.prefix, q.cursor.as_deref(), &mut |p| {
                if matches(&p) {
                    cold.push(p);
                }
                if cold.len() > limit { ControlFlow::Break(()) } else { ControlFlow::Continue(()) }
            })?;
        }
        found.extend(cold);
        found.sort_by(|a, b| a.id.cmp(&b.id));
        let more = found.len() > limit;
        found.truncate(limit);
        let cursor = if more { found.last().map(|p| p.id.clone()) } else { None };
        Ok(Page { promises: found, cursor })
    }

    /// Lists invocations newest first: the live ones from memory, the finished ones
    /// from their index, merged; reads at most [`LIST_SCAN`] finished ones.
    pub(crate) fn invocations(&self, q: &Invocations, now: Millis) -> Result<Listing, StoreError> {
        let limit = super::page_size(q.limit);
        let Some(start) = Start::of(q) else { return Ok(Listing { invocations: Vec::new(), cursor: None }) };
        let since = q.since.unwrap_or(0);
        let matches = |p: &Promise| {
            let state_ok = match q.state {
                None => true,
                Some(State::Rejected) => p.state.is_settled() && p.state != State::Resolved,
                Some(s) => p.state == s,
            };
            state_ok
                && q.function.as_deref().is_none_or(|f| p.param.what() == f)
                && q.tags.iter().all(|(k, v)| p.tags.get(k) == Some(v))
        };
        let mut found: Vec<Promise> = self
            .invocations
            .range((start.live(), Bound::Unbounded))
            .take_while(|(Reverse(at), _)| *at >= since)
            .filter_map(|(_, id)| self.promises.get(id).map(|p| p.at(now)))
            .filter(matches)
            .take(limit + 1)
            .collect();
        // Finished invocations are never pending.
        let mut stopped = None;
        if q.state != Some(State::Pending) {
            let (mut cold, mut read) = (Vec::new(), 0);
            self.cold.invoked(&start, &mut |p| {
                if p.created_at < since {
                    return ControlFlow::Break(());
                }
                read += 1;
                if read == LIST_SCAN {
                    stopped = Some(Cursor::after(&p));
                }
                if matches(&p) {
                    cold.push(p);
                }
                if stopped.is_some() || cold.len() > limit { ControlFlow::Break(()) } else { ControlFlow::Continue(()) }
            })?;
            found.extend(cold);
        }
        found.sort_by(|a, b| Cursor::after(a).key().cmp(&Cursor::after(b).key()));
        // Past where the finished side stopped, the live side is not complete either.
        if let Some(stop) = &stopped {
            found.retain(|p| Cursor::after(p).key() <= stop.key());
        }
        let cursor = if found.len() > limit {
            found.truncate(limit);
            found.last().map(Cursor::after)
        } else {
            stopped
        };
        let invocations = found
            .into_iter()
            .map(|promise| Ok(Invocation { task: self.task(&promise.id)?, promise }))
            .collect::<Result<_, StoreError>>()?;
        Ok(Listing { invocations, cursor })
    }

    pub(crate) fn claim(&mut self, c: &Claim, now: Millis) -> Result<Vec<Acquired>, StoreError> {
        let mine = (c.group.clone(), Some(c.pid.clone()));
        let anyone = (c.group.clone(), None);
        // A task of a function the worker lacks is left for one that has it.
        let runs = |p: &Promise| match &p.param {
            _ if c.functions.is_empty() => true,
            p @ Param::Call { .. } => p.function_key().is_some_and(|key| c.functions.iter().any(|f| *f == key)),
            _ => false,
        };
        // One pass over the ready tasks of both queues, in the order they are taken:
        // each is admitted by every limit that covers it, counted as it is taken, or
        // passed over, so a key held back holds back no other.
        let (picked, expired, held) = {
            // Every acquired task holds its slot until it leaves `acquired`: one whose
            // lease ran out is given back by the next tick, and keeps its place in line.
            let executing: Vec<(&Task, Option<std::borrow::Cow<'_, str>>)> = if self.limits.is_empty() {
                Vec::new()
            } else {
                self.leases.iter().map(|(_, id)| &self.tasks[id]).map(|t| (t, self.function_of(t))).collect()
            };
            let executing = executing.iter().map(|(t, f)| (*t, f.as_deref()));
            let mut admission = Admission::new(self.limits.values(), &c.group, executing);
            let bucket = |name: &str, key: &str| self.buckets.get(&(name.to_owned(), key.to_owned())).copied();
            let queue = |route: &Route| self.ready.get(route).into_iter().flat_map(|q| q.due(now)).peekable();
            let (mut a, mut b) = (queue(&mine), queue(&anyone));
            let (mut picked, mut expired) = (Vec::new(), Vec::<String>::new());
            while picked.len() < c.max {
                let take_a = match (a.peek(), b.peek()) {
                    (Some(x), Some(y)) => (x.0, &x.1.0, &x.1.1) <= (y.0, &y.1.0, &y.1.1),
                    (Some(_), None) => true,
                    (None, Some(_)) => false,
                    (None, None) => break,
                };
                let (route, next) = if take_a { (&mine, a.next()) } else { (&anyone, b.next()) };
                let Some((priority, entry)) = next else { break };
                let id = &entry.1;
                // A task whose promise is not live is not delivered (a store's records
                // that disagree are read, not trusted).
                let Some(p) = self.promises.get(id) else { continue };
                if now >= p.timeout_at {
                    expired.push(id.clone());
                    continue;
                }
                if !runs(p) {
                    continue;
                }
                let t = &self.tasks[id];
                let started = if admission.is_open() {
                    Vec::new()
                } else {
                    let function = self.function_of(t);
                    let Some(started) = admission.admit(t, function.as_deref(), now, &bucket) else { continue };
                    started
                };
                picked.push((route.clone(), priority.0, entry.clone(), started));
            }
            (picked, expired, admission.held)
        };
        for ((limit, key), waiting) in held {
            tracing::debug!(%limit, %key, waiting, group = %c.group, "tasks wait on a limit");
        }
        for id in expired {
            self.expire(&id, now);
        }
        let mut out = Vec::new();
        for (route, priority, (ready_at, id), started) in picked {
            self.unqueue(&route, priority, &(ready_at, id.clone()));
            for (bucket, state) in started {
                self.buckets.insert(bucket.clone(), state);
                self.dirty.buckets.push(bucket);
            }
            self.undebounce(&id);
            let t = self.tasks.get_mut(&id).expect("a ready task exists");
            t.state = TaskState::Acquired;
            t.version += 1;
            t.process = Some(c.process.clone());
            t.lease_until = now.saturating_add(c.ttl);
            let task = t.clone();
            self.leases.insert((task.lease_until, id.clone()));
            self.dirty.tasks.push(id.clone());
            out.push(Acquired { root: self.promises[&id].clone(), preload: self.preload(&id, now)?, task });
        }
        Ok(out)
    }

    /// The settled promises under `id`: everything a replay of it reads. The live
    /// ones past their deadline read as timed out; the finished ones are one range
    /// of the backend's.
    fn preload(&self, id: &str, now: Millis) -> Result<Vec<Promise>, StoreError> {
        let prefix = format!("{id}.");
        let mut preload: Vec<Promise> = self
            .promises
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .filter(|(_, p)| p.state.is_settled() || now >= p.timeout_at)
            .map(|(_, p)| p.at(now))
            .collect();
        self.cold.promises(&prefix, None, &mut |p| {
            preload.push(p);
            ControlFlow::Continue(())
        })?;
        Ok(preload)
    }

    pub(crate) fn heartbeat(&mut self, process: &str, held: &[Fence], ttl: Millis, now: Millis) -> Vec<Fence> {
        // A task whose promise's deadline passed is dead: its lease is not extended.
        for f in held {
            self.expire(&f.task, now);
        }
        let held: Vec<(Millis, Fence)> = held
            .iter()
            .filter_map(|f| self.tasks.get(&f.task).filter(|t| t.version == f.version).map(|t| (t, f)))
            .filter(|(t, _)| {
                t.state == TaskState::Acquired && t.lease_until > now && t.process.as_deref() == Some(process)
            })
            .map(|(t, f)| (t.lease_until, f.clone()))
            .collect();
        let mut renewed = Vec::with_capacity(held.len());
        for (until, fence) in held {
            self.leases.remove(&(until, fence.task.clone()));
            let t = self.tasks.get_mut(&fence.task).expect("a leased task exists");
            t.lease_until = now.saturating_add(ttl);
            self.leases.insert((t.lease_until, fence.task.clone()));
            self.dirty.tasks.push(fence.task.clone());
            renewed.push(fence);
        }
        renewed
    }

    pub(crate) fn release(&mut self, fence: &Fence, how: Release, now: Millis) -> Result<(), StoreError> {
        self.check_fence(Some(fence), now)?;
        let t = self.tasks[&fence.task].clone();
        self.unindex(&t);
        let t = self.tasks.get_mut(&fence.task).expect("a fenced task exists");
        t.version += 1;
        t.process = None;
        match how {
            Release::Retry { delay, error } => {
                if error.is_some() {
                    t.faults += 1;
                    t.error = error;
                }
                t.state = TaskState::Pending;
                t.ready_at = now.saturating_add(delay);
                let t = t.clone();
                self.ready_insert(&t, now);
                self.dirty.ready.insert(t.target.group.clone());
            }
            Release::Halt { error, code } => {
                t.state = TaskState::Halted;
                t.error = Some(error);
                t.halted_code = code;
                self.dirty.woken.push(fence.task.clone());
            }
        }
        self.dirty.tasks.push(fence.task.clone());
        Ok(())
    }

    pub(crate) fn suspend(&mut self, fence: &Fence, awaiting: &[String], now: Millis) -> Result<bool, StoreError> {
        self.check_fence(Some(fence), now)?;
        if awaiting.is_empty() {
            return Err(conflict(
                &fence.task,
                "a task suspends awaiting at least one promise, or it would wait forever",
            ));
        }
        for id in awaiting {
            // A call without a task runs inside the task that awaits it: suspended,
            // that task would never see it settle.
            if let Some(p) = self.promises.get(id)
                && matches!(p.param, Param::Call { .. })
                && !self.tasks.contains_key(id)
            {
                return Err(conflict(
                    id,
                    "it runs inside the suspending task: only a promise settled elsewhere is awaited so",
                ));
            }
        }
        for id in awaiting {
            self.expire(id, now);
            if self.promises.get(id).is_none_or(|p| p.state.is_settled()) {
                return Ok(false);
            }
        }
        let t = self.tasks[&fence.task].clone();
        self.unindex(&t);
        let t = self.tasks.get_mut(&fence.task).expect("a fenced task exists");
        t.state = TaskState::Suspended;
        t.version += 1;
        t.process = None;
        t.awaiting = awaiting.to_vec();
        for id in awaiting {
            self.callbacks.entry(id.clone()).or_default().insert(fence.task.clone());
        }
        self.dirty.tasks.push(fence.task.clone());
        Ok(true)
    }

    pub(crate) fn resume_halted(&mut self, group: &str, code: &BTreeMap<String, u64>, now: Millis) -> usize {
        let halted: Vec<String> = self
            .tasks
            .values()
            .filter(|t| t.state == TaskState::Halted && t.target.group == group)
            .filter(|t| match t.halted_code {
                None => true,
                // Nondeterminism: resumed only by other code for its function.
                Some(halted) => match self.promises.get(&t.id).map(|p| &p.param) {
                    Some(p) => {
                        p.function_key().and_then(|key| code.get(key.as_ref())).is_some_and(|now| *now != halted)
                    }
                    None => false,
                },
            })
            .map(|t| t.id.clone())
            .collect();
        halted.iter().filter(|id| self.resume(id, now)).count()
    }

    /// Deletes finished families, each whole, in this one step.
    pub(crate) fn purge(&mut self, which: &Purge) -> Result<usize, StoreError> {
        match which {
            Purge::Root(id) => {
                let Some(p) = self.stored(id)? else { return Ok(0) };
                if p.parent.is_some() {
                    let reason = format!("it is part of the invocation {:?}: purge that", family_of(&p));
                    return Err(conflict(id, &reason));
                }
                if self.family_live(id) {
                    let reason = if self.promises.contains_key(id) {
                        "it is pending: only a finished invocation is purged"
                    } else {
                        "a promise in its family is pending"
                    };
                    return Err(conflict(id, reason));
                }
                let members = self.family(id)?;
                self.purge_family(members);
                Ok(1)
            }
            Purge::Before { before, limit } => {
                let (mut purged, mut after) = (0, None);
                // Each entry is dropped once read: its family goes, or was gone, or
                // has something pending again or settled since (and so an entry of
                // its own, later). So no family held back holds up those behind it.
                while purged < *limit {
                    let entries = self.cold.finished(after.as_ref(), *before, *limit)?;
                    let Some(last) = entries.last().cloned() else { break };
                    after = Some(last);
                    for entry in entries {
                        self.dirty.purged.finished.push(entry.clone());
                        let (_, root) = entry;
                        if purged == *limit {
                            break;
                        }
                        if self.dirty.purged.promises.contains(&root) || self.family_live(&root) {
                            continue;
                        }
                        let Some(top) = self.cold.promise(&root)? else { continue };
                        if top.parent.is_some() {
                            continue;
                        }
                        let members = self.family(&root)?;
                        if members.iter().all(|p| p.settled_at.is_some_and(|at| at < *before)) {
                            self.purge_family(members);
                            purged += 1;
                        }
                    }
                }
                Ok(purged)
            }
        }
    }

    /// Deletes the promises of a finished family, with their tasks and index entries.
    fn purge_family(&mut self, members: Vec<Promise>) {
        for p in &members {
            self.dirty.purged.push(p);
            self.dirty.purged.tasks.push(p.id.clone());
        }
    }

    /// Whether a promise of family `root` is pending.
    fn family_live(&self, root: &str) -> bool {
        self.live_families.contains_key(root)
    }

    /// A promise of family `root` became live.
    fn family_joins(&mut self, root: &str) {
        match self.live_families.get_mut(root) {
            Some(live) => *live += 1,
            None => {
                self.live_families.insert(root.to_owned(), 1);
            }
        }
    }

    /// A live promise of family `root` settled.
    fn family_leaves(&mut self, root: &str) {
        if let Some(live) = self.live_families.get_mut(root) {
            *live -= 1;
            if *live == 0 {
                self.live_families.remove(root);
            }
        }
    }

    /// Every promise of family `root`, live or finished, in id order: the top-level
    /// promise and what is under its id, and each promise created with a chosen id
    /// and what is under that.
    fn family(&self, root: &str) -> Result<Vec<Promise>, StoreError> {
        self.family_after(root, None, usize::MAX, &|_| true)
    }

    /// The first `limit` promises of family `root` that come after `after` in id order
    /// and that `keep` keeps: a page's worth, read from each member's range from the
    /// cursor on, not the whole family.
    fn family_after(
        &self,
        root: &str,
        after: Option<&str>,
        limit: usize,
        keep: &dyn Fn(&Promise) -> bool,
    ) -> Result<Vec<Promise>, StoreError> {
        // An id under a member's that another family holds (created by id, raw) is
        // not of this one.
        let wanted = |p: &Promise| family_of(p) == root && keep(p);
        let mut found = BTreeMap::new();
        let mut heads = vec![root.to_owned()];
        heads.extend(self.cold.chosen(root)?);
        for head in heads {
            if after.is_none_or(|c| head.as_str() > c)
                && let Some(p) = self.stored(&head)?.filter(|p| wanted(p))
            {
                found.insert(p.id.clone(), p);
            }
            let prefix = format!("{head}.");
            let start = match after {
                Some(c) if c >= prefix.as_str() => std::ops::Bound::Excluded(c.to_owned()),
                _ => std::ops::Bound::Included(prefix.clone()),
            };
            let live = self.promises.range((start, std::ops::Bound::Unbounded));
            let live = live.take_while(|(id, _)| id.starts_with(&prefix)).filter(|(_, p)| wanted(p)).take(limit);
            for (id, p) in live {
                found.insert(id.clone(), p.clone());
            }
            let mut taken = 0;
            self.cold.promises(&prefix, after.filter(|c| *c >= prefix.as_str()), &mut |p| {
                if wanted(&p) {
                    found.insert(p.id.clone(), p);
                    taken += 1;
                }
                if taken >= limit { ControlFlow::Break(()) } else { ControlFlow::Continue(()) }
            })?;
        }
        Ok(found.into_values().take(limit).collect())
    }

    /// Marks a pending promise with a task as canceling, or cancels it if its task
    /// never started ([`Store::request_cancel`]).
    pub(crate) fn request_cancel(&mut self, id: &str, now: Millis) -> Result<Option<Promise>, StoreError> {
        self.expire(id, now);
        let Some(p) = self.promises.get_mut(id) else {
            return self.cold.promise(id);
        };
        let Some(t) = self.tasks.get(id) else {
            return Ok(Some(p.clone()));
        };
        if p.state.is_settled() || p.canceling {
            return Ok(Some(p.clone()));
        }
        if t.state == TaskState::Pending && t.version == 0 {
            // Never started: nothing to undo, and no execution to tell.
            return self.settle(SettlePromise::canceled(id), now).map(Some);
        }
        p.canceling = true;
        let p = p.clone();
        self.dirty.promises.push(id.to_owned());
        self.dirty.woken.push(id.to_owned());
        if matches!(t.state, TaskState::Acquired | TaskState::Suspended) {
            self.make_pending(id, now, false);
        }
        Ok(Some(p))
    }

    /// Makes a halted task pending, with a fresh budget of faults; false if it was not
    /// halted.
    pub(crate) fn resume(&mut self, id: &str, now: Millis) -> bool {
        // A task whose promise's deadline passed is done, not resumed.
        self.expire(id, now);
        if self.tasks.get(id).is_none_or(|t| t.state != TaskState::Halted) {
            return false;
        }
        self.make_pending(id, now, false);
        let t = self.tasks.get_mut(id).expect("a halted task exists");
        t.faults = 0;
        t.halted_code = None;
        true
    }

    pub(crate) fn release_predecessors(&mut self, group: &str, pid: &str, process: &str, now: Millis) -> usize {
        // A process id is `{pid}:{random}`: the worker is what precedes the last ':'.
        let of_pid = |p: &str| p.rsplit_once(':').is_some_and(|(worker, _)| worker == pid);
        let stale: Vec<String> = self
            .leases
            .iter()
            .map(|(_, id)| &self.tasks[id])
            .filter(|t| t.target.group == group)
            .filter(|t| t.process.as_deref().is_some_and(|p| of_pid(p) && p != process))
            .map(|t| t.id.clone())
            .collect();
        for id in &stale {
            self.make_pending(id, now, true);
        }
        stale.len()
    }

    pub(crate) fn tick(&mut self, now: Millis) -> Tick {
        let mut tick = Tick { now, ..Tick::default() };
        while let Some((at, id)) = self.deadlines.first().cloned() {
            if at > now {
                break;
            }
            self.deadlines.remove(&(at, id.clone()));
            if self.expire(&id, now) {
                tick.timed_out += 1;
            }
        }
        while let Some((until, id)) = self.leases.first().cloned() {
            if until > now {
                break;
            }
            self.leases.remove(&(until, id.clone()));
            self.make_pending(&id, now, true);
            tick.expired += 1;
        }
        while let Some((until, id)) = self.preferences.first().cloned() {
            if until > now {
                break;
            }
            self.preferences.remove(&(until, id.clone()));
            // The preferred worker did not take it in time: any worker of the group may.
            if let Some(t) = self.tasks.get(&id).cloned()
                && t.state == TaskState::Pending
            {
                self.unindex(&t);
                self.ready_insert(&t, now);
                self.dirty.ready.insert(t.target.group.clone());
            }
        }
        // A task that became ready since: its group's workers may know of no deadline
        // then (another process created it), so they are told now.
        while let Some((at, id)) = self.delayed.first().cloned() {
            if at > now {
                break;
            }
            self.delayed.remove(&(at, id.clone()));
            if let Some(t) = self.tasks.get(&id).filter(|t| t.state == TaskState::Pending && t.ready_at == at) {
                self.dirty.ready.insert(t.target.group.clone());
            }
        }
        // A rate's state that let its next start through by now is as good as none.
        let now_us = now.saturating_mul(1000);
        let spent: Vec<(String, String)> =
            self.buckets.iter().filter(|(_, b)| b.tat <= now_us).map(|(id, _)| id.clone()).collect();
        for id in spent {
            self.buckets.remove(&id);
            self.dirty.buckets.push(id);
        }
        let opening = self.buckets.values().map(|b| b.open_at).filter(|at| *at > now);
        let delayed = self.ready.values().flat_map(Queue::firsts).filter(|at| *at > now);
        // A schedule due already is the firing's to move on, not a deadline.
        tick.schedules = self.schedules_due.first().map(|d| d.0);
        let schedule_next = self.schedules_due.range((now + 1, String::new())..).next().map(|d| d.0);
        tick.next = [
            self.deadlines.first().map(|d| d.0),
            self.leases.first().map(|l| l.0),
            self.preferences.first().map(|p| p.0),
            schedule_next,
        ]
        .into_iter()
        .flatten()
        .chain(delayed)
        .chain(opening)
        .min();
        tick
    }

    /// Back to pending at a new version, ready now. A task taken from a holder that
    /// is gone (its lease ended, or its worker restarted) keeps its place in line
    /// (`keep_place`): the calls made after it, of its key, say, do not overtake it.
    fn make_pending(&mut self, id: &str, now: Millis, keep_place: bool) {
        let t = self.tasks[id].clone();
        self.unindex(&t);
        let t = self.tasks.get_mut(id).expect("task exists");
        t.state = TaskState::Pending;
        t.version += 1;
        t.process = None;
        t.ready_at = if keep_place { t.ready_at.min(now) } else { now };
        t.awaiting.clear();
        let t = t.clone();
        self.ready_insert(&t, now);
        self.dirty.tasks.push(id.to_owned());
        self.dirty.ready.insert(t.target.group.clone());
    }

    /// Queues a pending task where its target routes it: to its pid while the pid is
    /// required (uni) or preferred (until `prefer_until`), else to the whole group.
    fn ready_insert(&mut self, t: &Task, now: Millis) {
        let preferred = !t.target.uni && t.target.pid.is_some() && t.ready_at.max(now) < t.prefer_until;
        if preferred {
            self.preferences.insert((t.prefer_until, t.id.clone()));
        }
        if t.ready_at > now {
            self.delayed.insert((t.ready_at, t.id.clone()));
        }
        let pid = if t.target.uni || preferred { t.target.pid.clone() } else { None };
        self.ready.entry((t.target.group.clone(), pid)).or_default().insert(t.priority, (t.ready_at, t.id.clone()));
    }

    /// Takes an entry off a ready queue, and the queue away once empty: routes come
    /// and go with the pids that tasks name.
    fn unqueue(&mut self, route: &Route, priority: i32, entry: &(Millis, String)) {
        if let Some(q) = self.ready.get_mut(route) {
            q.remove(priority, entry);
            if q.is_empty() {
                self.ready.remove(route);
            }
        }
    }

    /// How many live records and index entries it holds: its memory.
    #[cfg(test)]
    pub(crate) fn index_sizes(&self) -> [usize; 9] {
        let queued = self.ready.values().map(Queue::len).sum();
        let callbacks = self.callbacks.values().map(BTreeSet::len).sum::<usize>() + self.callbacks.len();
        let (deadlines, leases, routes, preferences) =
            (self.deadlines.len(), self.leases.len(), self.ready.len(), self.preferences.len());
        let invocations = self.invocations.len();
        [self.promises.len(), self.tasks.len(), deadlines, leases, routes, queued, preferences, callbacks, invocations]
    }

    /// Removes a task from the index its state puts it in.
    fn unindex(&mut self, t: &Task) {
        match t.state {
            TaskState::Pending => {
                self.undebounce(&t.id);
                self.delayed.remove(&(t.ready_at, t.id.clone()));
                for pid in [None, t.target.pid.clone()] {
                    self.unqueue(&(t.target.group.clone(), pid), t.priority, &(t.ready_at, t.id.clone()));
                }
            }
            TaskState::Acquired => {
                self.leases.remove(&(t.lease_until, t.id.clone()));
                // Its slot comes free: the tasks a limit held back may start.
                if self.limited(t) {
                    self.dirty.ready.insert(t.target.group.clone());
                    self.wake_all_groups();
                }
            }
            TaskState::Suspended => {
                for id in &t.awaiting {
                    if let Some(tasks) = self.callbacks.get_mut(id) {
                        tasks.remove(&t.id);
                        if tasks.is_empty() {
                            self.callbacks.remove(id);
                        }
                    }
                }
            }
            TaskState::Fulfilled | TaskState::Halted => {}
        }
    }
}

/// The answer to a settle of a promise that is settled already: the first settle
/// won; in strict mode, only the same settle again is not a conflict.
/// Where a listing of invocations starts: at those created at or before `at`, and
/// if `after` is set, at that time only those with ids after it.
#[derive(Debug)]
pub(crate) struct Start {
    pub(crate) at: Millis,
    pub(crate) after: Option<String>,
}

impl Start {
    /// The later of the query's cursor and its `before`; `None` if nothing can match.
    pub(crate) fn of(q: &Invocations) -> Option<Start> {
        let from_before = match q.before {
            Some(0) => return None,
            Some(before) => Some(Start { at: before - 1, after: None }),
            None => None,
        };
        let from_cursor = q.cursor.as_ref().map(|c| Start { at: c.created_at, after: Some(c.id.clone()) });
        Some(match (from_before, from_cursor) {
            (Some(b), Some(c)) => {
                if (Reverse(c.at), c.after.as_deref().unwrap_or("")) >= (Reverse(b.at), "") {
                    c
                } else {
                    b
                }
            }
            (b, c) => b.or(c).unwrap_or(Start { at: Millis::MAX, after: None }),
        })
    }

    /// The bound in a set ordered as listings are.
    pub(crate) fn live(&self) -> Bound<(Reverse<Millis>, String)> {
        match &self.after {
            Some(id) => Bound::Excluded((Reverse(self.at), id.clone())),
            None => Bound::Included((Reverse(self.at), String::new())),
        }
    }
}

fn settled_again(req: &SettlePromise, p: Promise) -> Result<Promise, StoreError> {
    let same = req.ikey.is_some() && req.ikey == p.ikey_settle && req.state == p.state;
    if req.strict && !same {
        return Err(conflict(&req.id, &format!("it is already settled as {:?}", p.state)));
    }
    Ok(p)
}

fn dedup(mut ids: Vec<String>) -> Vec<String> {
    ids.sort();
    ids.dedup();
    ids
}

fn conflict(id: &str, reason: &str) -> StoreError {
    StoreError::Conflict { id: id.to_owned(), reason: reason.to_owned() }
}

/// The family a promise belongs to: its root (a record of a store from before
/// families were recorded that no upgrade reached counts as its own).
pub(crate) fn family_of(p: &Promise) -> &str {
    if p.root.is_empty() { &p.id } else { &p.root }
}

/// Whether a promise was created with a chosen id: it has a creator, and its id is not
/// under the creator's. A family's promises are found by their ids' prefixes, and
/// these, which are not under their family's id, by an index of their own.
pub(crate) fn is_chosen(p: &Promise) -> bool {
    p.parent.as_deref().is_some_and(|parent| !p.id.strip_prefix(parent).is_some_and(|rest| rest.starts_with('.')))
}
