//! Firing schedules, and canceling an invocation with what it started.
//!
//! Every runtime fires the schedules that are due. A fire's invocation has a
//! deterministic id ([`Schedule::fire_id`]), and the schedule moves on only by a write
//! that names the version it read ([`Store::update_schedule`]), in the same step as the
//! fire's creation: of the processes that fire a schedule at once, one write succeeds
//! and the rest find it moved on. A process that dies between reading and writing
//! wrote nothing, and the next pass fires again, with the same id.

use std::collections::{BTreeMap, HashMap};

use crate::promise::{DETACHED_TAG, Millis, Promise, State};
use crate::schedule::{Overlap, Schedule, Times, stamp};
use crate::store::{CreatePromise, NewTask, Search, SettlePromise};
use crate::{Error, Result, Store, StoreError, TaskState};

/// Promises read a page at a time.
pub(crate) const READ_PAGE: usize = 256;

/// The most fires one pass makes of one schedule: a schedule that is far behind
/// catches up over several passes, and holds up no other.
const MAX_FIRES: usize = 100;

/// The most fires one backfill makes.
const MAX_BACKFILL: usize = 1000;

/// The tag a fire's invocation carries: its schedule's id.
pub(crate) const SCHEDULE_TAG: &str = "durable:schedule";

/// Every promise `search` finds, a page at a time.
pub(crate) async fn search_all(store: &dyn Store, mut search: Search) -> Result<Vec<Promise>> {
    search.limit = READ_PAGE;
    let mut all = Vec::new();
    loop {
        let page = store.search(search.clone()).await?;
        all.extend(page.promises);
        match page.cursor {
            Some(c) => search.cursor = Some(c),
            None => return Ok(all),
        }
        tokio::task::yield_now().await;
    }
}

/// Cancels `id` and what it created that is pending, at any depth, but not the
/// detached invocations it started nor what they created ([`crate::Promises::cancel`]).
///
/// Each call with a task is asked to cancel first ([`Store::request_cancel`]): from
/// then on no execution of it starts a new call, and one that never started is
/// settled canceled at once. If nothing in the family carries an undo, everything is
/// then settled canceled at once. Otherwise the promises settled from outside
/// (sleeps, external promises) are, and the calls are left to their workers, which
/// run the undos owed and settle them canceled, each after what it started: the
/// answer is then `id` still pending, marked [`Promise::canceling`].
pub(crate) async fn cancel(store: &dyn Store, id: &str) -> Result<Promise> {
    let Some(top) = store.request_cancel(id).await? else {
        return Err(StoreError::NotFound { what: "promise", id: id.to_owned() }.into());
    };
    tracing::info!(%id, "cancel asked for, with what it started");
    // Promises can still appear while a worker learns its task was canceled (its
    // next write is refused): look again until nothing new is asked.
    let mut below = loop {
        let below = started(store, &top).await?;
        let mut asked = 0;
        let calls = below.iter().filter(|p| p.state == State::Pending && !p.canceling);
        for p in calls.filter(|p| matches!(p.param, crate::Param::Call { .. })) {
            if store.request_cancel(&p.id).await?.is_some_and(|now| now.canceling || now.state.is_settled()) {
                asked += 1;
            }
        }
        if asked == 0 {
            break below;
        }
    };
    // A settled promise may still have started something that is pending: a crash
    // between its settle and the rest of an earlier cancel.
    let owes = below.iter().any(|p| p.undo.is_some());
    if owes && (top.canceling || top.state.is_settled()) {
        for p in below.iter().filter(|p| matches!(p.param, crate::Param::Timer | crate::Param::External)) {
            settle_canceled(store, &p.id).await?;
        }
        return Ok(top);
    }
    let top = if top.state.is_settled() { top } else { settle_canceled(store, id).await? };
    loop {
        below.retain(|p| p.state == State::Pending);
        if below.is_empty() {
            return Ok(top);
        }
        for p in &below {
            settle_canceled(store, &p.id).await?;
        }
        below = started(store, &top).await?;
    }
}

/// Every promise `top` created, at any depth, but the detached invocations and what
/// they created; pending ones, and, among settled ones, those that carry an undo.
async fn started(store: &dyn Store, top: &Promise) -> Result<Vec<Promise>> {
    let root = crate::store::state::family_of(top).to_owned();
    let family = search_all(store, Search { root: Some(root), ..Search::default() }).await?;
    let mut created: HashMap<&str, Vec<&Promise>> = HashMap::new();
    for p in &family {
        if let Some(parent) = p.parent.as_deref() {
            created.entry(parent).or_default().push(p);
        }
    }
    let (mut below, mut found) = (vec![top.id.as_str()], Vec::new());
    while let Some(creator) = below.pop() {
        for p in created.remove(creator).unwrap_or_default() {
            if p.tags.contains_key(DETACHED_TAG) {
                continue;
            }
            below.push(&p.id);
            if p.state == State::Pending || p.undo.is_some() {
                found.push(p.clone());
            }
        }
    }
    Ok(found)
}

async fn settle_canceled(store: &dyn Store, id: &str) -> Result<Promise> {
    Ok(store.settle(SettlePromise::canceled(id)).await?)
}

/// Fires every schedule due by now, each as far as [`MAX_FIRES`]. A schedule that
/// fails is logged and left for a later pass; the answer says whether every one went
/// through, so that a failing store is not asked again at once.
pub(crate) async fn fire_due(store: &dyn Store) -> Result<bool> {
    use futures::StreamExt;
    let now = store.now().await?;
    let due = store.schedules(Some(now)).await?;
    let failed = std::sync::atomic::AtomicBool::new(false);
    // Schedules of one time fire side by side: on PostgreSQL their writes share the
    // pool, not one connection's round trips.
    futures::stream::iter(due)
        .for_each_concurrent(FIRING_AT_ONCE, |s| {
            let failed = &failed;
            async move {
                let id = s.id.clone();
                if let Err(e) = fire(store, s, now).await {
                    failed.store(true, std::sync::atomic::Ordering::Relaxed);
                    tracing::warn!(schedule = %id, error = %e, "firing a schedule failed; a later pass tries again");
                }
            }
        })
        .await;
    Ok(!failed.into_inner())
}

/// How many schedules one pass fires at once.
const FIRING_AT_ONCE: usize = 64;

/// Makes the fires of `s` that are due by `now`.
async fn fire(store: &dyn Store, mut s: Schedule, now: Millis) -> Result<()> {
    for _ in 0..MAX_FIRES {
        let (Some(due), Some(at)) = (s.due(), s.next) else { return Ok(()) };
        if due > now {
            return Ok(());
        }
        let times = match s.spec.times() {
            Ok(times) => times,
            Err(e) => {
                // A stored record that no longer reads as a schedule stops, saying why.
                tracing::error!(schedule = %s.id, error = %e, "a stored schedule does not read; it stops firing");
                s.error = Some(e);
                s.next = None;
                store.update_schedule(s, Vec::new()).await?;
                return Ok(());
            }
        };
        let mut fires = Vec::new();
        if now.saturating_sub(at) > s.spec.catch_up {
            // Nothing served it for longer than its window: the fires older than the
            // window are skipped, and reported.
            let kept = times.after(now.saturating_sub(s.spec.catch_up).saturating_sub(1));
            tracing::warn!(
                schedule = %s.id,
                from = %stamp(at),
                until = %kept.map_or("its end".to_owned(), stamp),
                "fires missed beyond the catch-up window are skipped",
            );
            s.missed = Some((at, kept.unwrap_or(now)));
            s.next = kept;
        } else {
            start(store, &mut s, at, &mut fires).await?;
            s.next = times.after(at);
        }
        if !store.update_schedule(s.clone(), fires).await? {
            // Another process moved it on first: its write made this fire.
            return Ok(());
        }
        s.version += 1;
    }
    Ok(())
}

/// Makes the fire of `s` at `at`, as its overlap policy says, into `fires`, and
/// notes it on `s`.
pub(crate) async fn start(
    store: &dyn Store,
    s: &mut Schedule,
    at: Millis,
    fires: &mut Vec<CreatePromise>,
) -> Result<()> {
    let running = match &s.last {
        Some(last) => store.get(last).await?.is_some_and(|p| !p.state.is_settled()),
        None => false,
    };
    let last = s.last.clone().filter(|_| running);
    let after = match (s.spec.overlap, last) {
        (_, None) | (Overlap::AllowAll, _) => None,
        (Overlap::Skip, Some(last)) => return skip(s, at, &last),
        (Overlap::BufferAll, Some(last)) => Some(last),
        (Overlap::BufferOne, Some(last)) => {
            // One waits already: a fire not yet started.
            let task = store.task(&last).await?;
            if task.is_some_and(|t| t.version == 0 && matches!(t.state, TaskState::Pending | TaskState::Suspended)) {
                return skip(s, at, &last);
            }
            Some(last)
        }
        (Overlap::CancelRunning, Some(last)) => {
            cancel(store, &last).await?;
            None
        }
    };
    let id = s.fire_id(at);
    fires.push(request(s, &id, after)?);
    tracing::info!(schedule = %s.id, fire = %id, "a schedule fired");
    s.last = Some(id);
    s.fired += 1;
    Ok(())
}

fn skip(s: &mut Schedule, at: Millis, last: &str) -> Result<()> {
    tracing::info!(schedule = %s.id, at = %stamp(at), running = %last, "a fire is skipped: the one before still runs");
    s.skipped += 1;
    Ok(())
}

/// The creation of the invocation `id` of a fire of `s`, waiting for `after` if set.
fn request(s: &Schedule, id: &str, after: Option<String>) -> Result<CreatePromise> {
    let target = match &s.spec.target {
        Some(url) => url
            .parse()
            .map_err(|e| StoreError::Conflict { id: s.id.clone(), reason: format!("its target does not read: {e}") })?,
        None => crate::Target::any("default"),
    };
    let mut req = CreatePromise::new(id, s.call.clone());
    req.timeout = s.spec.timeout;
    req.tags = BTreeMap::from([(SCHEDULE_TAG.to_owned(), s.id.clone())]);
    req.task = Some(NewTask { after, ..NewTask::new(target) });
    Ok(req)
}

/// Schedule `id` as stored, its fire times, and the store's now; a missing schedule
/// or one that no longer reads is an error.
async fn read(store: &dyn Store, id: &str) -> Result<(Schedule, Times, Millis)> {
    let Some(s) = store.schedule(id).await? else {
        return Err(StoreError::NotFound { what: "schedule", id: id.to_owned() }.into());
    };
    let times = s.spec.times().map_err(|reason| Error::InvalidSchedule { id: id.to_owned(), reason })?;
    Ok((s, times, store.now().await?))
}

/// Changes schedule `id` by `change` until a write of it succeeds: another process
/// may write it between a read and a write.
pub(crate) async fn steer(
    store: &dyn Store,
    id: &str,
    change: impl Fn(&mut Schedule, &Times, Millis),
) -> Result<Schedule> {
    loop {
        let (mut s, times, now) = read(store, id).await?;
        change(&mut s, &times, now);
        if store.update_schedule(s.clone(), Vec::new()).await? {
            s.version += 1;
            return Ok(s);
        }
    }
}

/// Fires schedule `id` at `now`, to the second, as its overlap policy says, leaving
/// its next fire; the fire's id, or `None` if the policy skipped it.
pub(crate) async fn trigger(store: &dyn Store, id: &str) -> Result<Option<String>> {
    loop {
        let (mut s, _, now) = read(store, id).await?;
        let (mut fires, fired) = (Vec::new(), s.fired);
        start(store, &mut s, now / 1000 * 1000, &mut fires).await?;
        let made = s.last.clone().filter(|_| s.fired > fired);
        if store.update_schedule(s, fires).await? {
            return Ok(made);
        }
    }
}

/// Fires schedule `id` at each of its times from `from` to `to`, both included, each
/// waiting for the one before; their ids.
pub(crate) async fn backfill(store: &dyn Store, id: &str, from: Millis, to: Millis) -> Result<Vec<String>> {
    loop {
        let (mut s, times, _) = read(store, id).await?;
        let mut at = times.after(from.saturating_sub(1));
        let mut all = Vec::new();
        while let Some(t) = at.filter(|t| *t <= to) {
            if all.len() == MAX_BACKFILL {
                let reason = format!(
                    "{} to {} holds more than {MAX_BACKFILL} fires: backfill it in parts",
                    stamp(from),
                    stamp(to)
                );
                return Err(Error::InvalidSchedule { id: id.to_owned(), reason });
            }
            all.push(t);
            at = times.after(t);
        }
        let running = match &s.last {
            Some(last) => store.get(last).await?.is_some_and(|p| !p.state.is_settled()),
            None => false,
        };
        let mut after = s.last.clone().filter(|_| running);
        let (mut fires, mut made) = (Vec::new(), Vec::new());
        for t in all {
            let fire = s.fire_id(t);
            fires.push(request(&s, &fire, after.replace(fire.clone()))?);
            made.push(fire);
        }
        if let Some(last) = made.last() {
            s.last = Some(last.clone());
            s.fired += made.len() as u64;
        }
        if store.update_schedule(s, fires).await? {
            return Ok(made);
        }
    }
}
