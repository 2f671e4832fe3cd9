//! The store conformance suite: the rules every [`Store`] must keep, checked the same
//! way on every backend.
//!
//! Run it under tokio's paused time, on a store whose clock is a
//! [`VirtualClock`](durable::store::VirtualClock), so that leases and deadlines pass
//! when the suite advances time:
//!
//! ```
//! use std::sync::Arc;
//!
//! #[tokio::main(flavor = "current_thread", start_paused = true)]
//! async fn main() {
//!     durable_testkit::conformance::check(|| async { Arc::new(durable::MemoryStore::new()) as _ }).await;
//! }
//! ```

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use durable::Target;
use durable::store::{
    Claim, CreatePromise, Cursor, Debounce, FORGET_WORKERS, Invocations, NewTask, Purge, Release, Search,
    SettlePromise, Worker,
};
use durable::{Fence, Limit, Param, Schedule, ScheduleSpec, State, Store, StoreError, TaskState};

/// Runs every check, each on a fresh store from `make`. Panics on the first failure,
/// naming the rule that broke.
pub async fn check<F, Fut>(make: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn Store>>,
{
    create_is_idempotent(&*make().await).await;
    idempotency_keys_and_strict_mode(&*make().await).await;
    first_settle_wins(&*make().await).await;
    racing_settlers_settle_once(make().await).await;
    racing_creators_create_once(make().await).await;
    deadlines_time_out_promises_and_resolve_timers(&*make().await).await;
    search_pages_with_a_cursor(&*make().await).await;
    invocations_list_newest_first_by_state_function_tags_and_time(&*make().await).await;
    claim_returns_the_preload(&*make().await).await;
    tasks_are_read_a_page_at_once(&*make().await).await;
    a_promise_is_dated_when_its_work_began(&*make().await).await;
    writes_are_fenced_on_the_task_version(&*make().await).await;
    heartbeats_keep_leases(&*make().await).await;
    release_halt_and_resume(make().await).await;
    a_restarted_worker_takes_back_what_its_predecessor_held(&*make().await).await;
    settle_fulfils_the_task_and_wakes_waiters(make().await).await;
    tasks_route_to_a_preferred_or_required_pid(&*make().await).await;
    suspended_tasks_resume_when_an_awaited_promise_settles(&*make().await).await;
    purge_deletes_finished_roots_with_their_subtrees(&*make().await).await;
    a_promise_joins_its_creators_family(&*make().await).await;
    a_family_goes_whole_once_all_of_it_settled(&*make().await).await;
    families_held_back_hold_up_none_behind_them(&*make().await).await;
    an_import_is_all_or_nothing(&*make().await).await;
    a_task_dies_with_its_promises_deadline(&*make().await).await;
    suspend_needs_a_promise_settled_elsewhere(&*make().await).await;
    purge_counts_from_the_settle_time_and_waits_for_detached_roots(&*make().await).await;
    an_interrupted_purge_leaves_a_root_whole_or_gone(make().await).await;
    workers_announce_themselves_and_are_forgotten_a_day_on(&*make().await).await;
    a_claim_takes_only_tasks_of_its_functions(&*make().await).await;
    limits_are_records_that_are_set_kept_and_removed(&*make().await).await;
    a_concurrency_limit_holds_across_processes_and_slots_come_back(&*make().await).await;
    a_key_runs_its_calls_one_at_a_time_in_order_and_starves_no_other(&*make().await).await;
    a_rate_spaces_starts_over_time(&*make().await).await;
    priorities_order_waiting_tasks(&*make().await).await;
    a_delayed_task_waits_for_its_time(&*make().await).await;
    schedules_are_records_moved_on_by_version(&*make().await).await;
    racing_fires_of_a_schedule_make_one(make().await).await;
    debounced_calls_join_the_one_waiting_to_start(&*make().await).await;
    racing_debounced_calls_make_one(make().await).await;
    a_cancel_request_fences_the_holder_and_marks_the_promise(&*make().await).await;
}

/// A call; an id under another one is created by it (its parent).
fn call(id: &str) -> CreatePromise {
    let mut req = CreatePromise::new(id, Param::call("f", 1, "1".into()));
    req.parent = id.rsplit_once('.').map(|(parent, _)| parent.to_owned());
    req
}

fn settle(id: &str, state: State, value: &str) -> SettlePromise {
    SettlePromise { id: id.into(), state, value: value.into(), ikey: None, strict: false, fence: None }
}

fn with_task(id: &str, group: &str) -> CreatePromise {
    let mut req = call(id);
    req.task = Some(NewTask::new(Target::any(group)));
    req
}

async fn claim_one(store: &dyn Store, group: &str, process: &str, ttl: u64) -> Option<durable::store::Acquired> {
    let claim = Claim {
        pid: "worker".into(),
        group: group.into(),
        process: process.into(),
        ttl,
        max: 1,
        functions: Vec::new(),
    };
    store.claim(claim).await.expect("claim").pop()
}

async fn advance(store: &dyn Store, ms: u64) {
    tokio::time::advance(Duration::from_millis(ms)).await;
    store.tick().await.expect("tick");
}

/// Concurrent creates of one id: exactly one is new, the other gets the stored promise,
/// and only the new one acquires the task. A create never overwrites.
pub async fn racing_creators_create_once(store: Arc<dyn Store>) {
    let create = |id: String, value: &'static str, process: &'static str| {
        let store = store.clone();
        tokio::spawn(async move {
            let mut req = CreatePromise::new(id, Param::call("f", 1, "1".into()));
            req.settled = Some((State::Resolved, value.into()));
            let mut racing = CreatePromise::new(format!("{}-task", req.id), Param::call("f", 1, "1".into()));
            racing.task = Some(NewTask { acquire: Some((process.into(), 10_000)), ..NewTask::new(Target::any("g")) });
            let recorded = store.create(req).await.expect("create a recorded value");
            let task = store.create(racing).await.expect("create with a task");
            (recorded, task)
        })
    };
    for n in 0..50 {
        let (a, b) = (create(format!("race{n}"), "1", "p1"), create(format!("race{n}"), "2", "p2"));
        let ((a, a_task), (b, b_task)) = (a.await.expect("join"), b.await.expect("join"));
        assert!(a.new != b.new, "race{n}: exactly one of two racing creates is new");
        assert_eq!(a.promise, b.promise, "race{n}: both creators are told the one stored value");
        assert!(a_task.new != b_task.new, "race{n}-task: exactly one of two racing creates is new");
        let acquired: Vec<_> = [a_task, b_task].into_iter().filter_map(|c| c.acquired).collect();
        assert_eq!(acquired.len(), 1, "race{n}-task: the task is acquired once, by the creator that made it");
        let stored = store.task(&format!("race{n}-task")).await.expect("task").expect("exists");
        assert_eq!((stored.version, stored.process), (acquired[0].version, acquired[0].process.clone()));
    }
}

/// Creating an existing id returns it, unchanged, and says it was not new.
pub async fn create_is_idempotent(store: &dyn Store) {
    let first = store.create(call("a")).await.expect("create");
    assert!(first.new, "a first create is new");
    assert_eq!(first.promise.state, State::Pending);
    let mut other = call("a");
    other.param = Param::call("g", 2, "2".into());
    let second = store.create(other).await.expect("create again");
    assert!(!second.new, "creating an existing id is not new");
    assert_eq!(second.promise.param, first.promise.param, "the existing promise is returned unchanged");
    assert_eq!(store.get("a").await.expect("get").expect("exists"), first.promise);
    assert!(store.get("missing").await.expect("get").is_none());
}

/// The durable promise specification's rules for idempotency keys and strict mode.
pub async fn idempotency_keys_and_strict_mode(store: &dyn Store) {
    let mut req = call("k");
    req.ikey = Some("c1".into());
    store.create(req.clone()).await.expect("create with a key");
    assert!(!store.create(req.clone()).await.expect("same key").new);
    let mut mismatched = req.clone();
    mismatched.ikey = Some("c2".into());
    assert!(
        matches!(store.create(mismatched).await, Err(StoreError::Conflict { .. })),
        "a mismatched create key conflicts"
    );
    let mut strict = req.clone();
    strict.strict = true;
    assert!(!store.create(strict.clone()).await.expect("strict create of a pending promise with its key").new);

    let mut s = settle("k", State::Resolved, "7");
    s.ikey = Some("s1".into());
    s.strict = true;
    store.settle(s.clone()).await.expect("settle");
    let again = store.settle(s.clone()).await.expect("the same settle key and state are accepted again");
    assert_eq!(again.value.as_deref(), Some("7"));
    let mut other_key = s.clone();
    other_key.ikey = Some("s2".into());
    assert!(
        matches!(store.settle(other_key).await, Err(StoreError::Conflict { .. })),
        "strict settle with another key conflicts"
    );
    let mut other_state = s.clone();
    other_state.state = State::Rejected;
    assert!(
        matches!(store.settle(other_state).await, Err(StoreError::Conflict { .. })),
        "strict settle with another state conflicts"
    );
    assert!(
        matches!(store.create(strict).await, Err(StoreError::Conflict { .. })),
        "strict create of a settled promise conflicts"
    );
}

/// Settling is once: later settles return the first settlement.
pub async fn first_settle_wins(store: &dyn Store) {
    store.create(call("s")).await.expect("create");
    let first = store.settle(settle("s", State::Resolved, "1")).await.expect("settle");
    assert_eq!(first.state, State::Resolved);
    let second = store.settle(settle("s", State::Rejected, "2")).await.expect("a later non-strict settle is answered");
    assert_eq!((second.state, second.value.as_deref()), (State::Resolved, Some("1")), "the first settle wins");
    assert!(matches!(store.settle(settle("nope", State::Resolved, "1")).await, Err(StoreError::NotFound { .. })));
}

/// Many concurrent settlers: exactly one value is stored and everyone sees it.
pub async fn racing_settlers_settle_once(store: Arc<dyn Store>) {
    store.create(call("race")).await.expect("create");
    let settlers: Vec<_> = (0..16)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move { store.settle(settle("race", State::Resolved, &i.to_string())).await })
        })
        .collect();
    let mut seen = Vec::new();
    for s in settlers {
        seen.push(s.await.expect("join").expect("settle").value);
    }
    let stored = store.get("race").await.expect("get").expect("exists").value;
    assert!(seen.iter().all(|v| *v == stored), "every settler sees the one stored value: {seen:?} vs {stored:?}");
}

/// A pending promise past its deadline is timed out; a timer resolves.
pub async fn deadlines_time_out_promises_and_resolve_timers(store: &dyn Store) {
    let mut req = call("t");
    req.timeout = Some(1_000);
    store.create(req).await.expect("create");
    let mut timer = CreatePromise::new("timer", Param::Timer);
    timer.timeout = Some(1_000);
    store.create(timer).await.expect("create timer");
    let mut capped = call("capped");
    capped.timeout = Some(60_000);
    capped.deadline_cap = store.now().await.expect("now") + 500;
    let capped = store.create(capped).await.expect("create capped").promise;
    assert_eq!(capped.timeout_at, store.now().await.expect("now") + 500, "the deadline is capped");

    tokio::time::advance(Duration::from_millis(1_000)).await;
    // Before any tick, reads already count a promise past its deadline as timed out.
    assert_eq!(store.get("t").await.expect("get").expect("exists").state, State::RejectedTimedout);
    let late = store.settle(settle("t", State::Resolved, "1")).await.expect("settle after the deadline");
    assert_eq!(late.state, State::RejectedTimedout, "a settle after the deadline finds it timed out");
    store.tick().await.expect("tick");
    assert_eq!(store.get("timer").await.expect("get").expect("exists").state, State::Resolved, "a timer resolves");
    assert_eq!(store.get("capped").await.expect("get").expect("exists").state, State::RejectedTimedout);
}

/// Search filters by prefix, state and tags, in id order, a page at a time.
pub async fn search_pages_with_a_cursor(store: &dyn Store) {
    for i in 0..25 {
        let mut req = call(&format!("p{i:02}"));
        if i % 2 == 0 {
            req.tags.insert("even".into(), "yes".into());
        }
        store.create(req).await.expect("create");
    }
    store.create(call("q")).await.expect("create");
    store.settle(settle("p03", State::Resolved, "1")).await.expect("settle");
    store.settle(settle("p04", State::RejectedCanceled, "null")).await.expect("settle");

    let mut all = Vec::new();
    let mut cursor = None;
    loop {
        let page =
            store.search(Search { prefix: "p".into(), limit: 10, cursor, ..Search::default() }).await.expect("search");
        assert!(page.promises.len() <= 10);
        all.extend(page.promises.into_iter().map(|p| p.id));
        match page.cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    let expected: Vec<_> = (0..25).map(|i| format!("p{i:02}")).collect();
    assert_eq!(all, expected, "pages cover every match once, in order");

    let even = store
        .search(Search { prefix: "p".into(), tags: [("even".into(), "yes".into())].into(), ..Search::default() })
        .await
        .expect("search");
    assert_eq!(even.promises.len(), 13);
    let resolved = store
        .search(Search { prefix: "p".into(), state: Some(State::Resolved), ..Search::default() })
        .await
        .expect("search");
    assert_eq!(resolved.promises.iter().map(|p| p.id.as_str()).collect::<Vec<_>>(), ["p03"]);
    let rejected = store
        .search(Search { prefix: "p".into(), state: Some(State::Rejected), ..Search::default() })
        .await
        .expect("search");
    assert_eq!(
        rejected.promises.iter().map(|p| p.id.as_str()).collect::<Vec<_>>(),
        ["p04"],
        "a rejected filter matches every rejection"
    );
}

/// Listing invocations: only roots that call a function (not children, not promises
/// waiting for a person), newest first then by id, each with its task, a page at a
/// time with a cursor, filtered by state, function, tags and creation time; a purged
/// one is gone from the listing.
pub async fn invocations_list_newest_first_by_state_function_tags_and_time(store: &dyn Store) {
    let listed = |query: Invocations| async move {
        let mut ids = Vec::new();
        let mut query = Invocations { limit: 2, ..query };
        loop {
            let page = store.invocations(query.clone()).await.expect("list invocations");
            assert!(page.invocations.len() <= 2, "a page holds at most its limit");
            ids.extend(page.invocations.into_iter().map(|i| i.promise.id));
            match page.cursor {
                Some(c) => query.cursor = Some(c),
                None => return ids,
            }
        }
    };
    let start = store.now().await.expect("now");
    // At each time step, in this order: a; b and c together (their ids order them);
    // d, of another function, tagged; e, with a child and a detached child; then
    // a promise that waits for a person, which is no invocation.
    store.create(with_task("a", "g")).await.expect("create");
    advance(store, 10).await;
    store.create(call("c")).await.expect("create");
    store.create(with_task("b", "g")).await.expect("create");
    advance(store, 10).await;
    let mut d = CreatePromise::new("d", Param::call("other", 1, "2".into()));
    d.tags.insert("team".into(), "blue".into());
    store.create(d).await.expect("create");
    advance(store, 10).await;
    store.create(call("e")).await.expect("create");
    store.create(call("e.1")).await.expect("create a child");
    let mut detached = call("e.2");
    detached.tags.insert("durable:detached".into(), "true".into());
    store.create(detached).await.expect("create a detached child");
    advance(store, 10).await;
    store.create(CreatePromise::new("approval", Param::External)).await.expect("create");
    store.settle(settle("b", State::Resolved, "1")).await.expect("settle");
    store.settle(settle("c", State::Rejected, "\"no\"")).await.expect("settle");
    store.settle(settle("e.1", State::Resolved, "1")).await.expect("settle");

    let all = listed(Invocations::default()).await;
    assert_eq!(all, ["e", "e.2", "d", "b", "c", "a"], "newest first, then by id; live and finished merged");
    let page = store.invocations(Invocations::default()).await.expect("list");
    let task = |id: &str| page.invocations.iter().find(|i| i.promise.id == id).map(|i| i.task.is_some());
    assert_eq!((task("a"), task("b"), task("e")), (Some(true), Some(true), Some(false)), "each with its task, if any");
    assert_eq!(page.invocations[3].promise.state, State::Resolved, "as stored: b resolved");

    let pending = listed(Invocations { state: Some(State::Pending), ..Invocations::default() }).await;
    assert_eq!(pending, ["e", "e.2", "d", "a"]);
    let resolved = listed(Invocations { state: Some(State::Resolved), ..Invocations::default() }).await;
    assert_eq!(resolved, ["b"]);
    let rejected = listed(Invocations { state: Some(State::Rejected), ..Invocations::default() }).await;
    assert_eq!(rejected, ["c"], "a rejected filter matches every rejection");
    let other = listed(Invocations { function: Some("other".into()), ..Invocations::default() }).await;
    assert_eq!(other, ["d"], "by function");
    let blue = listed(Invocations { tags: [("team".into(), "blue".into())].into(), ..Invocations::default() }).await;
    assert_eq!(blue, ["d"], "by tags");
    let window = Invocations { since: Some(start + 10), before: Some(start + 30), ..Invocations::default() };
    assert_eq!(listed(window.clone()).await, ["d", "b", "c"], "created in [since, before)");
    let after_b = Cursor { created_at: start + 10, id: "b".into() };
    let resumed = Invocations { cursor: Some(after_b.clone()), ..window };
    assert_eq!(listed(resumed).await, ["c"], "a cursor and a time window together");
    assert_eq!(after_b.to_string().parse::<Cursor>(), Ok(after_b), "a cursor reads back from its text");

    store.settle(settle("a", State::Resolved, "1")).await.expect("settle");
    assert_eq!(store.purge(Purge::Root("b".into())).await.expect("purge"), 1);
    assert_eq!(listed(Invocations::default()).await, ["e", "e.2", "d", "c", "a"], "a purged invocation is gone");
    let finished = listed(Invocations { state: Some(State::Resolved), ..Invocations::default() }).await;
    assert_eq!(finished, ["a"], "a settled invocation moves to the finished side, in its place");
}

/// Claiming hands out the task with its promise and every settled promise under it.
pub async fn claim_returns_the_preload(store: &dyn Store) {
    store.create(with_task("root", "g")).await.expect("create");
    let other = store.create(with_task("other", "h")).await.expect("create");
    assert!(other.acquired.is_none());
    let a = claim_one(store, "g", "p1", 10_000).await.expect("a ready task");
    let fence = a.fence();
    for (id, settled) in [("root.1", true), ("root.2", false), ("root.10", true), ("rootx", true)] {
        let mut req = call(id);
        req.fence = Some(fence.clone());
        store.create(req).await.expect("fenced create");
        if settled {
            let mut s = settle(id, State::Resolved, "1");
            s.fence = Some(fence.clone());
            store.settle(s).await.expect("fenced settle");
        }
    }
    assert!(claim_one(store, "g", "p2", 10_000).await.is_none(), "an acquired task is not handed out twice");
    store.release(&fence, Release::Retry { delay: 0, error: None }).await.expect("release");
    let again = claim_one(store, "g", "p2", 10_000).await.expect("released task");
    assert_eq!(again.root.id, "root");
    assert_eq!(again.task.version, fence.version + 2, "a release and an acquire each bump the version");
    let mut preload: Vec<_> = again.preload.iter().map(|p| p.id.as_str()).collect();
    preload.sort_unstable();
    assert_eq!(preload, ["root.1", "root.10"], "the preload is the settled promises under the root");
}

/// `tasks` reads what `task` reads, for many ids at once: pending, acquired and
/// fulfilled tasks, and nothing for a promise without a task or an id not stored.
pub async fn tasks_are_read_a_page_at_once(store: &dyn Store) {
    for (id, group) in [("a", "g"), ("b", "g"), ("c", "h")] {
        store.create(with_task(id, group)).await.expect("create");
    }
    store.create(call("d")).await.expect("create");
    let held = claim_one(store, "g", "p1", 10_000).await.expect("a ready task");
    store.settle(settle("c", State::Resolved, "1")).await.expect("settle");
    let ids: Vec<String> = ["a", "b", "c", "d", "e"].map(String::from).into();
    let mut read = store.tasks(&ids).await.expect("tasks");
    read.sort_by(|x, y| x.id.cmp(&y.id));
    let mut one_by_one = Vec::new();
    for id in &ids {
        one_by_one.extend(store.task(id).await.expect("task"));
    }
    assert_eq!(read, one_by_one, "tasks reads each task as task does");
    let states: Vec<_> = read.iter().map(|t| (t.id.as_str(), t.state)).collect();
    assert!(states.contains(&(held.task.id.as_str(), TaskState::Acquired)), "{states:?}");
    assert!(states.contains(&("c", TaskState::Fulfilled)), "a settled promise's task is fulfilled: {states:?}");
    assert_eq!(read.len(), 3, "no task for a promise without one or an id not stored: {states:?}");
    assert!(store.tasks(&[]).await.expect("no ids").is_empty());
}

/// A create that says how long its work ran before the write (`ran_for`: a local
/// call written only when it finishes or first writes) is dated back that long, settled
/// or pending, and listed and filtered by that date; its settle time is the write's.
pub async fn a_promise_is_dated_when_its_work_began(store: &dyn Store) {
    let now = store.now().await.expect("now");
    let mut step = call("step");
    step.settled = Some((State::Resolved, "1".into()));
    step.ran_for = 150;
    let p = store.create(step).await.expect("create").promise;
    assert_eq!((p.created_at, p.settled_at), (now - 150, Some(now)), "a settled create dated back");
    let mut running = call("running");
    running.ran_for = 40;
    store.create(running).await.expect("create");
    let read = store.get("running").await.expect("get").expect("stored");
    assert_eq!((read.created_at, read.state), (now - 40, State::Pending), "a pending create dated back, as read");
    let listed = |since| async move {
        let page = store.invocations(Invocations { since: Some(since), ..Invocations::default() }).await;
        page.expect("list").invocations.into_iter().map(|i| i.promise.id).collect::<Vec<_>>()
    };
    assert_eq!(listed(now - 40).await, ["running"], "listed by the date it was given");
    assert_eq!(listed(now - 150).await, ["running", "step"], "newest first by that date");
}

/// A task that lost its lease and was acquired again refuses every write of the old
/// holder: create, settle and fulfil.
pub async fn writes_are_fenced_on_the_task_version(store: &dyn Store) {
    store.create(with_task("w", "g")).await.expect("create");
    let old = claim_one(store, "g", "p1", 1_000).await.expect("claim").fence();
    let mut child = call("w.1");
    child.fence = Some(old.clone());
    store.create(child).await.expect("the holder writes");

    advance(store, 1_000).await;
    let new = claim_one(store, "g", "p2", 1_000).await.expect("the expired task is claimable").fence();
    assert_eq!(new.version, old.version + 2, "lease expiry and the new acquire each bump the version");

    let fenced = |r: Result<(), StoreError>, what: &str| {
        assert!(matches!(r, Err(StoreError::Fenced { .. })), "a stale holder's {what} must be refused, got {r:?}");
    };
    let mut create = call("w.2");
    create.fence = Some(old.clone());
    fenced(store.create(create).await.map(drop), "create");
    let mut settle_child = settle("w.1", State::Resolved, "1");
    settle_child.fence = Some(old.clone());
    fenced(store.settle(settle_child.clone()).await.map(drop), "settle");
    let mut fulfil = settle("w", State::Resolved, "1");
    fulfil.fence = Some(old.clone());
    fenced(store.settle(fulfil.clone()).await.map(drop), "fulfil");
    fenced(store.release(&old, Release::Retry { delay: 0, error: None }).await, "release");
    assert!(store.get("w.2").await.expect("get").is_none(), "nothing of the refused create was written");
    assert_eq!(store.get("w.1").await.expect("get").expect("exists").state, State::Pending);
    assert_eq!(store.get("w").await.expect("get").expect("exists").state, State::Pending);

    settle_child.fence = Some(new.clone());
    store.settle(settle_child).await.expect("the new holder writes");
    fulfil.fence = Some(new.clone());
    store.settle(fulfil).await.expect("the new holder fulfils");
    let task = store.task("w").await.expect("task").expect("exists");
    assert_eq!(task.state, TaskState::Fulfilled);
    let stale = Fence { task: "w".into(), version: new.version };
    let mut after = call("w.3");
    after.fence = Some(stale);
    fenced(store.create(after).await.map(drop), "create after fulfilment");
}

/// One heartbeat per process extends the leases it names and holds, and no other,
/// and answers with the fences it renewed.
pub async fn heartbeats_keep_leases(store: &dyn Store) {
    for id in ["h1", "h2", "h3"] {
        store.create(with_task(id, "g")).await.expect("create");
    }
    let claim = Claim {
        pid: "worker".into(),
        group: "g".into(),
        process: "p1".into(),
        ttl: 1_000,
        max: 3,
        functions: Vec::new(),
    };
    let held = store.claim(claim).await.expect("claim");
    assert_eq!(held.len(), 3);
    // h3's claim answer was lost: its holder does not know it has it.
    let known: Vec<Fence> = held.iter().filter(|a| a.root.id != "h3").map(|a| a.fence()).collect();
    let stale = Fence { task: "h1".into(), version: known[0].version + 7 };
    assert!(
        store.heartbeat("p2", &known, 1_000).await.expect("heartbeat").is_empty(),
        "another process extends nothing"
    );
    for _ in 0..5 {
        tokio::time::advance(Duration::from_millis(600)).await;
        let mut named = known.clone();
        named.insert(1, stale.clone());
        assert_eq!(store.heartbeat("p1", &named, 1_000).await.expect("heartbeat"), known, "the renewed, in order");
        store.tick().await.expect("tick");
    }
    for a in held.iter().filter(|a| a.root.id != "h3") {
        let mut req = call(&format!("{}.1", a.root.id));
        req.fence = Some(a.fence());
        store.create(req).await.expect("a kept lease still writes");
    }
    assert_eq!(
        store.task("h3").await.expect("task").expect("exists").state,
        TaskState::Pending,
        "an unnamed lease expired"
    );
    advance(store, 1_000).await;
    assert!(
        store.heartbeat("p1", &known, 1_000).await.expect("heartbeat").is_empty(),
        "an expired lease is not revived"
    );
    assert_eq!(store.task("h1").await.expect("task").expect("exists").state, TaskState::Pending);
}

/// Release with a delay, halt, and resume.
pub async fn release_halt_and_resume(store: Arc<dyn Store>) {
    store.create(with_task("r", "g")).await.expect("create");
    let a = claim_one(&*store, "g", "p1", 10_000).await.expect("claim");
    store.release(&a.fence(), Release::Retry { delay: 5_000, error: Some("boom".into()) }).await.expect("release");
    let task = store.task("r").await.expect("task").expect("exists");
    assert_eq!((task.faults, task.error.as_deref()), (1, Some("boom")));
    assert!(claim_one(&*store, "g", "p1", 10_000).await.is_none(), "not delivered before its delay");
    advance(&*store, 5_000).await;
    let b = claim_one(&*store, "g", "p1", 10_000).await.expect("delivered after its delay");
    store.release(&b.fence(), Release::Halt { error: "bad".into(), code: None }).await.expect("halt");
    store.wait("r", true).await.expect("a halted task ends a wait that asks for halts");
    assert_eq!(store.task("r").await.expect("task").expect("exists").state, TaskState::Halted);
    let waiter = tokio::spawn({
        let store = store.clone();
        async move { store.wait("r", false).await }
    });
    tokio::task::yield_now().await;
    assert!(!waiter.is_finished(), "a halted task is no settlement for a wait that does not ask for halts");
    waiter.abort();
    assert!(claim_one(&*store, "g", "p1", 10_000).await.is_none(), "a halted task is not delivered");
    let code = |digest: u64| std::collections::BTreeMap::from([("f".to_owned(), digest)]);
    assert_eq!(store.resume_halted("other", &code(1)).await.expect("resume"), 0);
    assert_eq!(store.resume_halted("g", &code(1)).await.expect("resume"), 1, "a platform halt resumes on any start");
    let c = claim_one(&*store, "g", "p1", 10_000).await.expect("a resumed task is delivered");
    assert!(c.task.version > b.task.version);
    assert_eq!(store.task("r").await.expect("task").expect("exists").faults, 0, "a fresh budget of faults");

    // A nondeterminism halt records the code that halted; only other code resumes it.
    store.release(&c.fence(), Release::Halt { error: "diverged".into(), code: Some(7) }).await.expect("halt");
    assert_eq!(store.resume_halted("g", &code(7)).await.expect("resume"), 0, "the same code would diverge again");
    assert_eq!(store.resume_halted("g", &std::collections::BTreeMap::new()).await.expect("resume"), 0);
    assert_eq!(store.resume_halted("g", &code(8)).await.expect("resume"), 1, "other code for f resumes it");
    let d = claim_one(&*store, "g", "p1", 10_000).await.expect("delivered");
    store.release(&d.fence(), Release::Halt { error: "diverged".into(), code: Some(8) }).await.expect("halt");
    assert!(store.resume("r").await.expect("resume"), "an explicit resume resumes whatever halted it");
    assert!(!store.resume("r").await.expect("resume"), "a task that is not halted is not resumed");
    assert!(claim_one(&*store, "g", "p1", 10_000).await.is_some());
}

/// A worker that starts again releases the tasks its pid's earlier processes held in
/// its group, and nothing else: not another pid's, another group's, or its own.
pub async fn a_restarted_worker_takes_back_what_its_predecessor_held(store: &dyn Store) {
    for (id, group) in [("w1", "g"), ("w2", "g"), ("x1", "g"), ("h1", "h"), ("own", "g"), ("w:1", "g")] {
        store.create(with_task(id, group)).await.expect("create");
    }
    let mut held = std::collections::BTreeMap::new();
    // A process id is `{pid}:{random}`; the worker with pid "w:1" is not w's
    // predecessor, though its process ids start with "w:".
    let processes =
        [("g", "w:dead"), ("g", "w:dead"), ("g", "wx:other"), ("h", "w:dead"), ("g", "w:new"), ("g", "w:1:live")];
    for (group, process) in processes {
        let a = claim_one(store, group, process, 60_000).await.expect("claim");
        held.insert(a.task.id.clone(), a);
    }
    assert_eq!(store.release_predecessors("g", "w", "w:new").await.expect("release"), 2);
    for (id, a) in &held {
        let task = store.task(id).await.expect("task").expect("exists");
        let released = a.task.process.as_deref() == Some("w:dead") && a.task.target.group == "g";
        let expected = if released { TaskState::Pending } else { TaskState::Acquired };
        assert_eq!(task.state, expected, "{id} held by {:?}", a.task.process);
        if released {
            let write =
                store.settle(SettlePromise { fence: Some(a.fence()), ..settle(id, State::Resolved, "1") }).await;
            assert!(matches!(write, Err(StoreError::Fenced { .. })), "the dead holder's fence is void: {write:?}");
        }
    }
}

/// Settling a promise fulfils its task and wakes waiters, in one step.
pub async fn settle_fulfils_the_task_and_wakes_waiters(store: Arc<dyn Store>) {
    store.create(with_task("f", "g")).await.expect("create");
    let mut ready = store.ready("g");
    ready.borrow_and_update();
    store.create(with_task("f2", "g")).await.expect("create");
    assert!(ready.has_changed().expect("ready signal"), "a new task bumps its group's ready signal");
    let waiter = tokio::spawn({
        let store = store.clone();
        async move { store.wait("f", false).await }
    });
    tokio::task::yield_now().await;
    assert!(!waiter.is_finished(), "a wait on a pending promise waits");
    store.settle(settle("f", State::Resolved, "1")).await.expect("settle");
    waiter.await.expect("join").expect("the settle wakes the waiter");
    assert_eq!(store.task("f").await.expect("task").expect("exists").state, TaskState::Fulfilled);
    assert!(
        claim_one(&*store, "g", "p", 1_000).await.is_some_and(|a| a.root.id == "f2"),
        "a fulfilled task is not delivered"
    );
}

fn routed(id: &str, target: &str, window: u64) -> CreatePromise {
    let mut req = call(id);
    let target = target.parse().expect("a valid target");
    req.task = Some(NewTask { window, ..NewTask::new(target) });
    req
}

async fn claim_as(store: &dyn Store, group: &str, pid: &str) -> Vec<String> {
    let claim = Claim {
        group: group.into(),
        pid: pid.into(),
        process: format!("{pid}-process"),
        ttl: 1 << 40,
        max: 10,
        functions: Vec::new(),
    };
    store.claim(claim).await.expect("claim").into_iter().map(|a| a.root.id).collect()
}

/// `any@g/pid` goes to pid first and to the group after the window; `uni@g/pid` only
/// ever to pid.
pub async fn tasks_route_to_a_preferred_or_required_pid(store: &dyn Store) {
    store.create(routed("pref", "poll://any@exp/lhs", 1_000)).await.expect("create");
    store.create(routed("only", "poll://uni@exp/lhs", 1_000)).await.expect("create");
    store.create(routed("old", "poll://exp/lhs", 0)).await.expect("create: the older form means uni");
    assert!(claim_as(store, "exp", "rhs").await.is_empty(), "within the window another pid gets nothing");
    advance(store, 1_000).await;
    assert_eq!(claim_as(store, "exp", "rhs").await, ["pref"], "after the window any pid of the group may take it");
    advance(store, 3_600_000).await;
    assert!(claim_as(store, "exp", "rhs").await.is_empty(), "uni tasks wait for their pid");
    assert!(claim_as(store, "ops", "lhs").await.is_empty(), "a group gets only its own tasks");
    let mut mine = claim_as(store, "exp", "lhs").await;
    mine.sort();
    assert_eq!(mine, ["old", "only"]);

    store.create(routed("first", "poll://any@exp/lhs", 1_000)).await.expect("create");
    assert_eq!(claim_as(store, "exp", "lhs").await, ["first"], "the preferred pid takes it at once");
}

/// Suspend registers callbacks and frees the task; a settle of an awaited promise
/// makes it pending again at a new version; suspending on a settled promise is
/// refused (resume now).
pub async fn suspended_tasks_resume_when_an_awaited_promise_settles(store: &dyn Store) {
    store.create(with_task("s", "g")).await.expect("create");
    let a = claim_one(store, "g", "p1", 10_000).await.expect("claim");
    // Promises settled from outside (a local call would run in the task itself).
    for child in ["s.1", "s.2", "s.3"] {
        let req = created_by(CreatePromise::new(child, Param::External), "s", &a.fence());
        store.create(req).await.expect("fenced create");
    }
    let mut s3 = settle("s.3", State::Resolved, "3");
    s3.fence = Some(a.fence());
    store.settle(s3).await.expect("settle");
    let awaiting = ["s.1".to_owned(), "s.3".to_owned()];
    assert!(!store.suspend(&a.fence(), &awaiting).await.expect("suspend"), "s.3 settled: resume now");
    assert_eq!(
        store.task("s").await.expect("task").expect("exists").state,
        TaskState::Acquired,
        "resume now changes nothing"
    );

    let awaiting = ["s.1".to_owned(), "s.2".to_owned()];
    assert!(store.suspend(&a.fence(), &awaiting).await.expect("suspend"));
    let task = store.task("s").await.expect("task").expect("exists");
    assert_eq!(
        (task.state, task.version, task.awaiting.clone()),
        (TaskState::Suspended, a.task.version + 1, awaiting.to_vec())
    );
    assert!(claim_one(store, "g", "p2", 10_000).await.is_none(), "a suspended task is not delivered");
    let mut stale = call("s.4");
    stale.fence = Some(a.fence());
    assert!(matches!(store.create(stale).await, Err(StoreError::Fenced { .. })), "suspension fences the old holder");

    store.settle(settle("s.2", State::Resolved, "2")).await.expect("settle");
    let b = claim_one(store, "g", "p2", 10_000).await.expect("the settle resumed it");
    assert!(b.task.version > task.version);
    assert!(b.task.awaiting.is_empty());
    assert!(b.preload.iter().any(|p| p.id == "s.2"), "the preload has what it awaited");
    store.settle(settle("s.1", State::Resolved, "1")).await.expect("settle");
    assert_eq!(
        store.task("s").await.expect("task").expect("exists").version,
        b.task.version,
        "a second callback fires nothing"
    );

    // A suspended task whose own promise settles is fulfilled, and stays so.
    store.create(with_task("t", "g")).await.expect("create");
    let c = claim_one(store, "g", "p1", 10_000).await.expect("claim");
    let child = created_by(CreatePromise::new("t.1", Param::External), "t", &c.fence());
    store.create(child).await.expect("create");
    assert!(store.suspend(&c.fence(), &["t.1".to_owned()]).await.expect("suspend"));
    store.settle(settle("t", State::RejectedCanceled, "null")).await.expect("cancel");
    store.settle(settle("t.1", State::Resolved, "1")).await.expect("settle");
    assert_eq!(store.task("t").await.expect("task").expect("exists").state, TaskState::Fulfilled);
}

/// A promise created already resolved, with these tags.
fn recorded(id: &str, tags: &[(&str, &str)]) -> CreatePromise {
    let mut req = call(id);
    req.settled = Some((State::Resolved, "1".into()));
    req.tags = tags.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    req
}

/// The ids of every promise under `prefix`, settled or not.
async fn ids_under(store: &dyn Store, prefix: &str) -> Vec<String> {
    let (mut ids, mut cursor) = (Vec::new(), None);
    loop {
        let search = Search { prefix: prefix.into(), limit: 1000, cursor, ..Search::default() };
        let page = store.search(search).await.expect("search");
        ids.extend(page.promises.into_iter().map(|p| p.id));
        match page.cursor {
            Some(c) => cursor = Some(c),
            None => return ids,
        }
    }
}

/// A request made by a running body of `creator`: under its fence, with it as parent.
fn created_by(mut req: CreatePromise, creator: &str, fence: &Fence) -> CreatePromise {
    req.parent = Some(creator.to_owned());
    req.fence = Some(fence.clone());
    req
}

/// Every promise of family `root`, a page of two at a time, as (id, parent).
async fn family(store: &dyn Store, root: &str) -> Vec<(String, Option<String>)> {
    let (mut found, mut cursor) = (Vec::new(), None);
    loop {
        let search = Search { root: Some(root.into()), limit: 2, cursor, ..Search::default() };
        let page = store.search(search).await.expect("search a family");
        found.extend(page.promises.into_iter().map(|p| (p.id, p.parent)));
        match page.cursor {
            Some(c) => cursor = Some(c),
            None => return found,
        }
    }
}

/// A promise records its creator and the family of its creator's top-level promise,
/// whatever its id; a creator must exist; a search by family finds every member, in id
/// order, and nothing else.
pub async fn a_promise_joins_its_creators_family(store: &dyn Store) {
    store.create(with_task("sub", "g")).await.expect("create");
    store.create(call("sub2")).await.expect("another family");
    let fence = claim_one(store, "g", "p1", 60_000).await.expect("the task").fence();
    let charge = store.create(created_by(recorded("charge-1", &[]), "sub", &fence)).await.expect("a chosen id");
    assert_eq!(
        (charge.promise.parent.as_deref(), charge.promise.root.as_str()),
        (Some("sub"), "sub"),
        "a chosen id joins its creator's family"
    );
    let mut nested = recorded("charge-1.1", &[]);
    nested.parent = Some("charge-1".into());
    let nested = store.create(nested).await.expect("created by a chosen id");
    assert_eq!(nested.promise.root, "sub", "its family is its creator's, at any depth");
    let approval = CreatePromise::new("approval-1", Param::External);
    store.create(created_by(approval, "charge-1.1", &fence)).await.expect("a chosen id under a chosen id");
    let mut orphan = call("lost");
    orphan.parent = Some("nobody".into());
    let refused = store.create(orphan).await;
    assert!(matches!(refused, Err(StoreError::Conflict { .. })), "a creator must exist: {refused:?}");
    assert!(store.get("lost").await.expect("get").is_none(), "a refused create writes nothing");
    let mut selfish = call("me");
    selfish.parent = Some("me".into());
    assert!(store.create(selfish).await.is_err(), "a promise cannot create itself");
    let top = store.get("sub").await.expect("get").expect("sub");
    assert_eq!((top.parent, top.root.as_str()), (None, "sub"), "a top-level promise is its own family");
    assert_eq!(
        family(store, "sub").await,
        [
            ("approval-1".to_owned(), Some("charge-1.1".to_owned())),
            ("charge-1".to_owned(), Some("sub".to_owned())),
            ("charge-1.1".to_owned(), Some("charge-1".to_owned())),
            ("sub".to_owned(), None),
        ],
        "the family, in id order, without sub2"
    );
    let pending = Search { root: Some("sub".into()), state: Some(State::Pending), ..Search::default() };
    let pending: Vec<String> =
        store.search(pending).await.expect("search").promises.into_iter().map(|p| p.id).collect();
    assert_eq!(pending, ["approval-1", "sub"], "a family search filters by state too");
}

/// Retention takes a family as one: nothing of it while any of it is pending (a
/// chosen id, a detached invocation, the top-level promise), all of it once every
/// promise settled before the time, tasks included. A promise that is not top-level is
/// purged only with its family.
pub async fn a_family_goes_whole_once_all_of_it_settled(store: &dyn Store) {
    store.create(with_task("sub", "g")).await.expect("create");
    let fence = claim_one(store, "g", "p1", 600_000).await.expect("the task").fence();
    store.create(created_by(recorded("charge-1", &[]), "sub", &fence)).await.expect("a chosen id, settled");
    let mut job = with_task("sub.2", "jobs");
    job.tags.insert("durable:detached".into(), "true".into());
    store.create(created_by(job, "sub", &fence)).await.expect("a detached invocation");
    let approval = CreatePromise::new("approval-1", Param::External);
    store.create(created_by(approval, "sub", &fence)).await.expect("an external promise");
    store.settle(settle("approval-1", State::Resolved, "true")).await.expect("approve");
    advance(store, 1000).await;
    let purge = |before| store.purge(Purge::Before { before, limit: 100 });
    let later = store.now().await.expect("now") + 1;
    assert_eq!(purge(later).await.expect("purge"), 0, "the creator is pending: nothing of its family goes");
    for id in ["charge-1", "approval-1"] {
        assert!(store.get(id).await.expect("get").is_some(), "{id} stays while its creator runs");
    }
    let part = store.purge(Purge::Root("charge-1".into())).await;
    assert!(matches!(&part, Err(StoreError::Conflict { reason, .. }) if reason.contains("sub")), "{part:?}");

    let mut done = settle("sub", State::Resolved, "1");
    done.fence = Some(fence);
    store.settle(done).await.expect("settle the top");
    advance(store, 1000).await;
    let later = store.now().await.expect("now") + 1;
    assert_eq!(purge(later).await.expect("purge"), 0, "the detached invocation is pending: the family stays");
    assert!(store.get("charge-1").await.expect("get").is_some());
    assert!(is_conflict(store.purge(Purge::Root("sub".into())).await), "nor does an explicit purge take it");

    store.settle(settle("sub.2", State::Resolved, "2")).await.expect("the detached job ends");
    let ended = store.now().await.expect("now");
    assert_eq!(purge(ended).await.expect("purge"), 0, "counted from the last settle in the family");
    advance(store, 1000).await;
    assert_eq!(purge(ended + 1).await.expect("purge"), 1, "then the family goes, as one");
    for id in ["sub", "charge-1", "approval-1", "sub.2"] {
        assert!(store.get(id).await.expect("get").is_none(), "{id} went with its family");
    }
    for id in ["sub", "sub.2"] {
        assert!(store.task(id).await.expect("task").is_none(), "the task of {id} went too");
    }
    let again = store.create(recorded("charge-1", &[])).await.expect("the chosen id again");
    assert!(again.new, "a chosen id of a purged family is free");
}

/// Families that cannot go yet (something in them is pending) do not hold up those
/// behind them, however many.
pub async fn families_held_back_hold_up_none_behind_them(store: &dyn Store) {
    for n in 0..450 {
        let top = format!("held{n}");
        store.create(recorded(&top, &[])).await.expect("a finished top");
        store.create(call(&format!("{top}.1"))).await.expect("with a pending child");
    }
    store.create(recorded("free", &[])).await.expect("a finished family");
    advance(store, 1000).await;
    let before = store.now().await.expect("now");
    let purged = store.purge(Purge::Before { before, limit: 100 }).await.expect("purge");
    assert_eq!(purged, 1, "the finished family behind 450 held ones goes");
    assert!(store.get("free").await.expect("get").is_none());
    assert!(store.get("held0").await.expect("get").is_some());
}

/// An import writes a whole family in one step: refused (an id there already, a
/// creator missing, a request fenced), it writes nothing; accepted, the top-level
/// task is ready only with everything under it there, and the claim's preload holds
/// every settled promise under it.
pub async fn an_import_is_all_or_nothing(store: &dyn Store) {
    let family = |last: &str| {
        let mut top = with_task("imp", "g");
        top.parent = None;
        let mut child = recorded("imp.1", &[]);
        child.parent = Some("imp".into());
        let mut chosen = recorded(last, &[]);
        chosen.parent = Some("imp.1".into());
        vec![top, child, chosen]
    };
    store.create(call("taken")).await.expect("create");
    let refused = store.import(family("taken")).await;
    assert!(matches!(&refused, Err(StoreError::Conflict { id, .. }) if id == "taken"), "{refused:?}");
    for id in ["imp", "imp.1"] {
        assert!(store.get(id).await.expect("get").is_none(), "a refused import writes nothing: {id} is there");
    }
    assert!(store.task("imp").await.expect("task").is_none(), "a refused import writes nothing: a task");
    let mut orphan = family("chosen");
    orphan[2].parent = Some("nobody".into());
    assert!(store.import(orphan).await.is_err(), "a creator must be in the store or the family");
    assert!(store.get("imp").await.expect("get").is_none(), "a refused import writes nothing");

    store.import(family("chosen")).await.expect("import");
    let claimed = claim_one(store, "g", "p1", 60_000).await.expect("the imported task");
    let preload: Vec<&str> = claimed.preload.iter().map(|p| p.id.as_str()).collect();
    assert_eq!(preload, ["imp.1"], "the claim's preload");
    let chosen = store.get("chosen").await.expect("get").expect("the chosen id");
    assert_eq!((chosen.parent.as_deref(), chosen.root.as_str()), (Some("imp.1"), "imp"));
}

/// Once its promise's deadline has passed a task is dead, before any tick says so:
/// every write of its holder is refused (create, settle, suspend, release, halt), its
/// heartbeat extends nothing, and a halted one is not resumed. Only a deadline times
/// a promise out: a client may not settle one so.
pub async fn a_task_dies_with_its_promises_deadline(store: &dyn Store) {
    for id in ["d1", "d2", "d3", "d4", "d5", "d6", "d7"] {
        let mut req = with_task(id, "g");
        req.timeout = Some(1_000);
        store.create(req).await.expect("create");
    }
    let claim = Claim {
        pid: "worker".into(),
        group: "g".into(),
        process: "p1".into(),
        ttl: 60_000,
        max: 7,
        functions: Vec::new(),
    };
    let held: Vec<Fence> = store.claim(claim).await.expect("claim").iter().map(|a| a.fence()).collect();
    assert_eq!(held.len(), 7);
    store.release(&held[6], Release::Halt { error: "a fault".into(), code: None }).await.expect("halt d7");
    // Past the deadline, with no tick.
    tokio::time::advance(Duration::from_millis(2_000)).await;
    let fenced = |r: Result<(), StoreError>, what: &str| {
        assert!(matches!(r, Err(StoreError::Fenced { .. })), "a dead task's {what} must be refused, got {r:?}");
    };
    fenced(store.create(created_by(call("d1.1"), "d1", &held[0])).await.map(drop), "create");
    let settle_own = SettlePromise { fence: Some(held[1].clone()), ..settle("d2", State::Resolved, "1") };
    fenced(store.settle(settle_own).await.map(drop), "settle");
    store.create(call("elsewhere")).await.expect("create");
    fenced(store.suspend(&held[2], &["elsewhere".into()]).await.map(drop), "suspend");
    fenced(store.release(&held[3], Release::Retry { delay: 0, error: None }).await, "release");
    fenced(store.release(&held[4], Release::Halt { error: "x".into(), code: None }).await, "halt");
    assert!(store.heartbeat("p1", &held[5..6], 60_000).await.expect("heartbeat").is_empty(), "a dead task's lease");
    assert!(!store.resume("d7").await.expect("resume"), "a dead halted task is not resumed");
    assert!(store.get("d1.1").await.expect("get").is_none(), "the refused create wrote nothing");
    for id in ["d1", "d2", "d7"] {
        let p = store.get(id).await.expect("get").expect("exists");
        assert_eq!(p.state, State::RejectedTimedout, "{id} timed out");
    }
    store.create(call("plain")).await.expect("create");
    let timed_out = store.settle(settle("plain", State::RejectedTimedout, "null")).await;
    assert!(matches!(timed_out, Err(StoreError::Conflict { .. })), "a client times nothing out: {timed_out:?}");
}

/// A task suspends awaiting at least one promise that something else settles: not
/// none (it would wait forever), and not a call it runs itself (a local child).
pub async fn suspend_needs_a_promise_settled_elsewhere(store: &dyn Store) {
    store.create(with_task("s", "g")).await.expect("create");
    let fence = claim_one(store, "g", "p1", 60_000).await.expect("claim").fence();
    let none = store.suspend(&fence, &[]).await;
    assert!(matches!(none, Err(StoreError::Conflict { .. })), "suspending on nothing: {none:?}");
    store.create(created_by(call("s.1"), "s", &fence)).await.expect("a local child");
    let local = store.suspend(&fence, &["s.1".into()]).await;
    assert!(matches!(local, Err(StoreError::Conflict { .. })), "suspending on a local child: {local:?}");
    let mut timer = CreatePromise::new("s.2", Param::Timer);
    timer.timeout = Some(10_000);
    store.create(created_by(timer, "s", &fence)).await.expect("a timer");
    assert!(store.suspend(&fence, &["s.2".into()]).await.expect("suspend on a timer"), "a timer settles itself");
}

fn is_conflict(result: Result<usize, StoreError>) -> bool {
    matches!(result, Err(StoreError::Conflict { .. }))
}

/// A finished root goes with its whole subtree (children, grandchildren, their tasks,
/// detached invocations under it); a pending root, or one with anything pending under
/// it, stays. A purged id starts afresh when created again.
pub async fn purge_deletes_finished_roots_with_their_subtrees(store: &dyn Store) {
    store.create(with_task("r", "g")).await.expect("create");
    let fence = claim_one(store, "g", "p1", 60_000).await.expect("the root's task").fence();
    for child in ["r.1", "r.2", "r.2.1"] {
        let mut req = recorded(child, &[]);
        req.fence = Some(fence.clone());
        store.create(req).await.expect("a child");
    }
    let mut routed = with_task("r.3", "g");
    routed.fence = Some(fence.clone());
    store.create(routed).await.expect("a routed child");
    store.settle(settle("r.3", State::Resolved, "3")).await.expect("settle the routed child");
    store.create(recorded("r.4", &[("durable:detached", "true")])).await.expect("a detached child");
    let mut done = settle("r", State::Resolved, "1");
    done.fence = Some(fence);
    store.settle(done).await.expect("settle the root");
    // A pending root with a settled child, and a settled root with a pending child.
    store.create(call("s")).await.expect("create");
    store.create(recorded("s.1", &[])).await.expect("create");
    store.create(recorded("q", &[])).await.expect("create");
    store.create(call("q.1")).await.expect("create");
    advance(store, 1000).await;
    let now = store.now().await.expect("now");

    let purged = store.purge(Purge::Before { before: now, limit: 100 }).await.expect("purge");
    assert_eq!(purged, 1, "only r is finished with nothing pending under it");
    for id in ["r", "r.1", "r.2", "r.2.1", "r.3", "r.4"] {
        assert!(store.get(id).await.expect("get").is_none(), "{id} went with its root");
    }
    for id in ["r", "r.3"] {
        assert!(store.task(id).await.expect("task").is_none(), "the task of {id} went with its root");
    }
    for id in ["s", "s.1", "q", "q.1"] {
        assert!(store.get(id).await.expect("get").is_some(), "{id} stays: its tree has something pending");
    }
    assert!(is_conflict(store.purge(Purge::Root("s".into())).await), "purging a pending root is refused");
    assert!(is_conflict(store.purge(Purge::Root("q".into())).await), "purging a root with a pending child is refused");
    store.settle(settle("q.1", State::Resolved, "1")).await.expect("settle");
    assert!(is_conflict(store.purge(Purge::Root("q.1".into())).await), "a child is purged only with its root");
    assert_eq!(store.purge(Purge::Root("q".into())).await.expect("purge q"), 1, "an explicit purge ignores the time");
    assert!(ids_under(store, "q").await.is_empty(), "q went whole");
    assert_eq!(store.purge(Purge::Root("q".into())).await.expect("purge q again"), 0, "a purged root is not found");

    // The id again: a new root, with nothing left under it.
    let again = store.create(with_task("r", "g")).await.expect("create r again");
    assert!(again.new, "a purged id is created afresh");
    let a = claim_one(store, "g", "p1", 60_000).await.expect("the new root's task");
    assert!(a.preload.is_empty(), "nothing under the new root: {:?}", a.preload);
    assert_eq!(ids_under(store, "r").await, ["r"]);

    // A bounded batch at a time.
    for n in 0..5 {
        store.create(recorded(&format!("b{n}"), &[])).await.expect("create");
    }
    advance(store, 1000).await;
    let before = store.now().await.expect("now");
    let batches: Vec<usize> = [
        store.purge(Purge::Before { before, limit: 2 }).await.expect("purge"),
        store.purge(Purge::Before { before, limit: 2 }).await.expect("purge"),
        store.purge(Purge::Before { before, limit: 2 }).await.expect("purge"),
        store.purge(Purge::Before { before, limit: 2 }).await.expect("purge"),
    ]
    .into();
    assert_eq!(batches, [2, 2, 1, 0], "at most `limit` roots a call");
}

/// Retention counts from the settle time, never the creation; a detached invocation
/// under a root is a root of its own, and holds its creator back until it may go too.
pub async fn purge_counts_from_the_settle_time_and_waits_for_detached_roots(store: &dyn Store) {
    let created = store.now().await.expect("now");
    store.create(call("slow")).await.expect("create");
    store.create(call("d")).await.expect("create");
    store.create(call("d.1").clone()).await.expect("create");
    advance(store, 10_000).await;
    store.settle(settle("slow", State::Resolved, "1")).await.expect("settle");
    store.settle(settle("d", State::Resolved, "1")).await.expect("settle");
    let d_settled = store.now().await.expect("now");
    // d.1 is a detached invocation, settled later than its creator.
    store.settle(settle("d.1", State::Resolved, "1")).await.expect("settle");
    let mut detached = recorded("d.2", &[("durable:detached", "true")]);
    detached.settled = None;
    store.create(detached).await.expect("create");
    advance(store, 10_000).await;
    store.settle(settle("d.2", State::Resolved, "1")).await.expect("settle");
    let d2_settled = store.now().await.expect("now");

    let purged = store.purge(Purge::Before { before: created + 5_000, limit: 100 }).await.expect("purge");
    assert_eq!(purged, 0, "a root created long ago but settled since is kept");
    assert!(store.get("slow").await.expect("get").is_some());
    store.purge(Purge::Before { before: d_settled + 1, limit: 100 }).await.expect("purge");
    assert!(store.get("slow").await.expect("get").is_none(), "slow settled before the time, so it went");
    assert_eq!(
        ids_under(store, "d").await,
        ["d", "d.1", "d.2"],
        "d waits for the detached d.2 under it, which settled later"
    );
    advance(store, 1000).await;
    let purged = store.purge(Purge::Before { before: d2_settled + 1, limit: 100 }).await.expect("purge");
    assert!(purged >= 1, "d goes once d.2 may go too");
    assert!(ids_under(store, "d").await.is_empty(), "d went with everything under it");
}

/// A purge interrupted at any point (its caller gone, as a crashed process) leaves the
/// root either there, still finished, so that its id finds it and runs nothing, or gone
/// with everything under it. A store that deletes a large subtree in several
/// transactions deletes the root last.
pub async fn an_interrupted_purge_leaves_a_root_whole_or_gone(store: Arc<dyn Store>) {
    let children = 1200;
    store.create(recorded("big", &[])).await.expect("create");
    let creates = (0..children).map(|n| {
        let store = store.clone();
        async move { store.create(recorded(&format!("big.{n}"), &[])).await.expect("create") }
    });
    futures::future::join_all(creates).await;
    let purge = tokio::spawn({
        let store = store.clone();
        async move { store.purge(Purge::Root("big".into())).await }
    });
    // Interrupt it once the first children are gone (or it is done).
    while store.get("big.0").await.expect("get").is_some() && !purge.is_finished() {
        tokio::task::yield_now().await;
    }
    purge.abort();
    let _ = purge.await;
    let root = store.get("big").await.expect("get");
    let left = ids_under(store.as_ref(), "big.").await.len();
    match root {
        Some(root) => {
            assert!(root.state.is_settled(), "a root being purged is still finished");
            let found = store.create(recorded("big", &[])).await.expect("create");
            assert!(!found.new, "its id finds it: nothing runs again");
        }
        None => assert_eq!(left, 0, "a root that is gone left nothing under it"),
    }
    // Purging again finishes the job.
    store.purge(Purge::Root("big".into())).await.expect("purge again");
    assert!(store.get("big").await.expect("get").is_none());
    assert!(ids_under(store.as_ref(), "big").await.is_empty(), "nothing of big is left");
    assert!(store.create(recorded("big", &[])).await.expect("create").new, "the id starts afresh");
}

/// Announced workers are listed by group and pid, live for the time announced; an
/// announcement again moves that on and names the latest process; a worker that went
/// quiet is still listed, not live; one quiet for [`FORGET_WORKERS`] is gone.
pub async fn workers_announce_themselves_and_are_forgotten_a_day_on(store: &dyn Store) {
    let worker = |group: &str, pid: &str, process: &str| Worker {
        group: group.into(),
        pid: pid.into(),
        process: process.into(),
        functions: vec![format!("{group}-work")],
        live_until: 0,
    };
    let listed = |workers: &[Worker]| {
        let mut seen: Vec<(String, String, String)> =
            workers.iter().map(|w| (w.group.clone(), w.pid.clone(), w.process.clone())).collect();
        seen.sort();
        seen
    };
    let start = store.now().await.expect("now");
    store.announce(&worker("gpu", "g1", "g1:a"), 1000).await.expect("announce");
    store.announce(&worker("cpu", "c1", "c1:a"), 1000).await.expect("announce");
    let workers = store.workers().await.expect("workers");
    assert_eq!(
        listed(&workers),
        [("cpu".into(), "c1".into(), "c1:a".into()), ("gpu".into(), "g1".into(), "g1:a".into())],
        "both workers are listed"
    );
    assert!(workers.iter().all(|w| w.live_until >= start + 1000), "live for the time announced: {workers:?}");
    let gpu = workers.iter().find(|w| w.group == "gpu").expect("gpu");
    assert!(gpu.serves("gpu", "gpu-work", start) && !gpu.serves("gpu", "cpu-work", start), "with its functions");

    advance(store, 2000).await;
    store.announce(&worker("gpu", "g1", "g1:b"), 1000).await.expect("announce again");
    let now = store.now().await.expect("now");
    let workers = store.workers().await.expect("workers");
    let gpu = workers.iter().find(|w| w.group == "gpu").expect("gpu is listed");
    let cpu = workers.iter().find(|w| w.group == "cpu").expect("a quiet worker is still listed");
    assert!(gpu.live_until > now && gpu.process == "g1:b", "announcing again moves its time on: {gpu:?}");
    assert!(cpu.live_until <= now, "a worker that went quiet is not live: {cpu:?}");

    advance(store, FORGET_WORKERS).await;
    store.announce(&worker("gpu", "g1", "g1:c"), 1000).await.expect("announce after a day");
    let workers = store.workers().await.expect("workers");
    assert_eq!(listed(&workers), [("gpu".into(), "g1".into(), "g1:c".into())], "a worker quiet for a day is forgotten");
}

/// A claim that names its functions takes only tasks of calls of those, in ready
/// order past the others, which wait for a worker that has them.
pub async fn a_claim_takes_only_tasks_of_its_functions(store: &dyn Store) {
    // Names with what a pattern language might read as its own: `_`, `%`, `\`.
    // A version after 1 is part of the function a task needs (`name@version`).
    let tasks = [("a", "other_1", 1), ("b", "mine%_\\1", 1), ("c", "mine%_\\2", 1), ("d", "mine%_\\1", 1)];
    let versioned = [("e", "mine%_\\1", 2), ("f", "mine%_\\1", 3)];
    for (id, func, version) in tasks.into_iter().chain(versioned) {
        let mut req = CreatePromise::new(id, Param::call(func, version, "1".into()));
        req.task = Some(NewTask::new(Target::any("g")));
        store.create(req).await.expect("create");
    }
    let claim = |functions: &[&str]| Claim {
        pid: "worker".into(),
        group: "g".into(),
        process: "p1".into(),
        ttl: 60_000,
        max: 10,
        functions: functions.iter().map(|f| (*f).to_owned()).collect(),
    };
    let ids = |acquired: Vec<durable::store::Acquired>| acquired.into_iter().map(|a| a.root.id).collect::<Vec<_>>();
    let mine = ["mine%_\\1"];
    assert_eq!(ids(store.claim(claim(&mine)).await.expect("claim")), ["b", "d"], "only its functions");
    assert_eq!(ids(store.claim(claim(&mine)).await.expect("claim")), Vec::<String>::new(), "the rest wait");
    assert_eq!(ids(store.claim(claim(&["mine%_\\1@2"])).await.expect("claim")), ["e"], "its version only");
    assert_eq!(ids(store.claim(claim(&[])).await.expect("claim")), ["a", "c", "f"], "no list: any function");
}

/// A task of a call of `function`, in group `g`, with a key and priority.
fn limited(id: &str, function: &str, key: Option<&str>, priority: i32) -> CreatePromise {
    let mut req = CreatePromise::new(id, Param::call(function, 1, "1".into()));
    req.task = Some(NewTask { key: key.map(str::to_owned), priority, ..NewTask::new(Target::any("g")) });
    req
}

/// Claims up to `max` tasks of group `g` for `process`: their ids, in the order taken.
async fn claim_ids(store: &dyn Store, process: &str, max: usize) -> Vec<String> {
    let claim = Claim {
        pid: process.into(),
        group: "g".into(),
        process: process.into(),
        ttl: 10_000,
        max,
        functions: Vec::new(),
    };
    store.claim(claim).await.expect("claim").into_iter().map(|a| a.root.id).collect()
}

/// Limits are records: set (a name taken is kept unless replaced), listed with what
/// they cover, removed; one that cannot work is refused, naming what is wrong.
pub async fn limits_are_records_that_are_set_kept_and_removed(store: &dyn Store) {
    let first = Limit::new("pay").function("charge").concurrency(2);
    assert_eq!(store.set_limit(first.clone(), false).await.expect("set"), first);
    let other = Limit::new("pay").function("charge").concurrency(5);
    assert_eq!(store.set_limit(other.clone(), false).await.expect("set"), first, "kept: not replaced");
    assert_eq!(store.set_limit(other.clone(), true).await.expect("set"), other, "replaced");
    for (bad, says) in [
        (Limit::new("zero").function("charge").concurrency(0), "concurrency of 0"),
        (Limit::new("never").function("charge").rate(3, Duration::ZERO), "period is 0 ms"),
        (Limit::new("all").concurrency(1), "covers nothing"),
        (Limit::new("idle").function("charge"), "limits nothing"),
        (Limit::new("").function("charge").concurrency(1), "name"),
    ] {
        match store.set_limit(bad.clone(), true).await {
            Err(e @ StoreError::InvalidLimit { .. }) => assert!(e.to_string().contains(says), "{e}"),
            other => panic!("{bad:?} was not refused: {other:?}"),
        }
    }
    store.create(limited("c1", "charge", None, 0)).await.expect("create");
    store.create(limited("o1", "other", None, 0)).await.expect("create");
    let states = store.limits().await.expect("limits");
    assert_eq!(states.len(), 1, "only what was set: {states:?}");
    assert_eq!((states[0].limit.clone(), states[0].executing, states[0].waiting), (other, 0, 1));
    claim_ids(store, "p1", 10).await;
    let states = store.limits().await.expect("limits");
    assert_eq!((states[0].executing, states[0].waiting), (1, 0), "the task it covers executes");
    assert!(store.remove_limit("pay").await.expect("remove"));
    assert!(!store.remove_limit("pay").await.expect("remove"), "gone already");
    assert!(store.limits().await.expect("limits").is_empty());
}

/// At most a limit's concurrency of the tasks it covers are acquired at once, across
/// claims of several processes; a slot comes back when its task settles, suspends,
/// or its lease ends; a create that would acquire a limited task leaves it to a claim;
/// a limit raised lets more start at once, and one lowered below what executes lets
/// none start until they are within it.
pub async fn a_concurrency_limit_holds_across_processes_and_slots_come_back(store: &dyn Store) {
    store.set_limit(Limit::new("two").function("charge").concurrency(2), true).await.expect("set");
    for id in ["a", "b", "c", "d", "e"] {
        store.create(limited(id, "charge", None, 0)).await.expect("create");
    }
    store.create(limited("free", "other", None, 0)).await.expect("create");
    let mut run = limited("run", "charge", None, 0);
    run.task.as_mut().expect("a task").acquire = Some(("p0".into(), 10_000));
    assert!(store.create(run).await.expect("create").acquired.is_none(), "a limited task waits for a claim");
    assert_eq!(claim_ids(store, "p1", 10).await, ["a", "b", "free"], "two of it, and the unlimited one");
    assert!(claim_ids(store, "p2", 10).await.is_empty(), "another process gets none of it");
    store.settle(settle("a", State::Resolved, "1")).await.expect("settle");
    assert_eq!(claim_ids(store, "p2", 10).await, ["c"], "a settled task's slot");
    let b = store.task("b").await.expect("task").expect("b");
    let fence = Fence { task: "b".into(), version: b.version };
    store.create(CreatePromise::new("b.1", Param::External)).await.expect("create");
    assert!(store.suspend(&fence, &["b.1".into()]).await.expect("suspend"));
    assert_eq!(claim_ids(store, "p2", 10).await, ["d"], "a suspended task holds no slot");
    // p1 and p2 die: their leases end and the slots come back.
    advance(store, 10_001).await;
    let again = claim_ids(store, "p3", 10).await;
    assert_eq!(again, ["c", "d", "free"], "the slots of the dead; the expired ones keep their place in line");
    assert!(claim_ids(store, "p3", 10).await.is_empty(), "still two at once");
    store.set_limit(Limit::new("two").function("charge").concurrency(4), true).await.expect("raise it");
    assert_eq!(claim_ids(store, "p3", 10).await, ["e", "run"], "raised live");
    // Lowered below what executes: those go on, and none starts until they are within it.
    store.create(limited("f", "charge", None, 0)).await.expect("create");
    store.set_limit(Limit::new("two").function("charge").concurrency(1), true).await.expect("lower it");
    assert!(claim_ids(store, "p3", 10).await.is_empty(), "four execute under a limit of one");
    for id in ["c", "d", "e"] {
        store.settle(settle(id, State::Resolved, "1")).await.expect("settle");
        assert!(claim_ids(store, "p3", 10).await.is_empty(), "still at or over one after {id}");
    }
    store.settle(settle("run", State::Resolved, "1")).await.expect("settle");
    assert_eq!(claim_ids(store, "p3", 10).await, ["f"], "within the lowered limit again");
}

/// A per-key limit of one runs the calls of each key one at a time, in the order they
/// were made, and a key with a long queue holds back no other key.
pub async fn a_key_runs_its_calls_one_at_a_time_in_order_and_starves_no_other(store: &dyn Store) {
    store.set_limit(Limit::new("account").function("charge").per_key().concurrency(1), true).await.expect("set");
    for n in 0..20 {
        store.create(limited(&format!("hot{n:02}"), "charge", Some("42"), 0)).await.expect("create");
        tokio::time::advance(Duration::from_millis(1)).await;
    }
    store.create(limited("cold", "charge", Some("7"), 0)).await.expect("create");
    store.create(limited("keyless", "charge", None, 0)).await.expect("create");
    assert_eq!(claim_ids(store, "p1", 1).await, ["hot00"]);
    assert_eq!(claim_ids(store, "p2", 1).await, ["cold"], "the next key, past the hot key's queue");
    assert_eq!(claim_ids(store, "p2", 5).await, ["keyless"]);
    for n in 1..20 {
        store.settle(settle(&format!("hot{:02}", n - 1), State::Resolved, "1")).await.expect("settle");
        assert_eq!(claim_ids(store, "p1", 5).await, [format!("hot{n:02}")], "one at a time, in order");
    }
}

/// A rate holds over time: starts spaced by its period over its count, a burst at
/// once after a quiet spell, and a tick names when the next start is allowed.
pub async fn a_rate_spaces_starts_over_time(store: &dyn Store) {
    let rate = Limit::new("api").function("charge").rate(2, Duration::from_secs(1)).burst(2);
    store.set_limit(rate, true).await.expect("set");
    for n in 0..8 {
        store.create(limited(&format!("r{n}"), "charge", None, 0)).await.expect("create");
    }
    let start = store.now().await.expect("now");
    let mut started = Vec::new();
    while started.len() < 8 {
        let now = store.now().await.expect("now");
        for _ in claim_ids(store, "p1", 10).await {
            started.push(now - start);
        }
        let tick = store.tick().await.expect("tick");
        let next = tick.next.expect("the rate's next start is a deadline");
        assert!(next > tick.now && next <= tick.now + 500, "{next} from {}", tick.now);
        tokio::time::advance(Duration::from_millis(next - tick.now)).await;
    }
    assert_eq!(started, [0, 0, 500, 1000, 1500, 2000, 2500, 3000], "a burst of 2, then one each 500 ms");
}

/// Of the tasks ready, a claim takes the highest priority first, then the longest ready.
pub async fn priorities_order_waiting_tasks(store: &dyn Store) {
    for (id, priority) in [("low", -1), ("plain", 0), ("high", 5), ("plain2", 0), ("high2", 5)] {
        store.create(limited(id, "charge", None, priority)).await.expect("create");
        tokio::time::advance(Duration::from_millis(1)).await;
    }
    let mut order = Vec::new();
    for _ in 0..5 {
        order.extend(claim_ids(store, "p1", 1).await);
    }
    assert_eq!(order, ["high", "high2", "plain", "plain2", "low"]);
}

/// A task created to start later is pending and listed at once, is not delivered
/// (nor acquired by its creator) before its time, is a deadline of the tick, and is
/// announced to its group by the tick that passes its time. One canceled before its
/// time is never delivered.
pub async fn a_delayed_task_waits_for_its_time(store: &dyn Store) {
    let mut ready = store.ready("g");
    let now = store.now().await.expect("now");
    let mut later = call("later");
    later.task = Some(NewTask { delay: 5_000, acquire: Some(("p1".into(), 10_000)), ..NewTask::new(Target::any("g")) });
    let created = store.create(later).await.expect("create");
    assert!(created.new && created.acquired.is_none(), "a delayed task is not acquired by its creator");
    let mut at = call("at");
    at.task = Some(NewTask { not_before: now + 8_000, ..NewTask::new(Target::any("g")) });
    store.create(at).await.expect("create");
    let mut canceled = call("canceled");
    canceled.task = Some(NewTask { delay: 2_000, ..NewTask::new(Target::any("g")) });
    store.create(canceled).await.expect("create");
    let task = store.task("later").await.expect("task").expect("the task exists at once");
    assert_eq!((task.state, task.ready_at), (TaskState::Pending, now + 5_000));
    let listed = store.invocations(Invocations::default()).await.expect("list");
    assert_eq!(listed.invocations.len(), 3, "delayed invocations are listed at once");
    assert!(claim_one(store, "g", "p1", 10_000).await.is_none(), "nothing is delivered before its time");
    store.settle(settle("canceled", State::RejectedCanceled, "\"canceled\"")).await.expect("cancel");
    let tick = store.tick().await.expect("tick");
    assert_eq!(tick.next, Some(now + 5_000), "the first start is the tick's next deadline");
    tokio::time::advance(Duration::from_millis(4_999)).await;
    assert!(claim_one(store, "g", "p1", 10_000).await.is_none(), "not a millisecond early");
    ready.borrow_and_update();
    advance(store, 1).await;
    assert!(ready.has_changed().expect("signal"), "the tick that passes a start tells the group");
    let claimed = claim_one(store, "g", "p1", 10_000).await.expect("delivered at its time");
    assert_eq!(claimed.task.id, "later");
    assert_eq!(store.tick().await.expect("tick").next.map(|n| n > now + 5_000), Some(true));
    tokio::time::advance(Duration::from_millis(3_000)).await;
    let claimed = claim_one(store, "g", "p1", 10_000).await.expect("a start at a time");
    assert_eq!(claimed.task.id, "at");
    for id in ["later", "at"] {
        store.settle(settle(id, State::Resolved, "1")).await.expect("settle");
    }
    advance(store, 60_000).await;
    assert!(claim_one(store, "g", "p1", 10_000).await.is_none(), "a canceled delayed task never starts");
}

/// A schedule due at `next`, firing every minute.
fn schedule(id: &str, next: u64) -> Schedule {
    let every = ScheduleSpec::every(Duration::from_secs(60));
    Schedule::new(id, every, Param::call("report", 1, "null".into()), 0, Some(next))
}

/// The invocation of a fire, delivered to group `g`.
fn fire(id: &str) -> CreatePromise {
    let mut req = CreatePromise::new(id, Param::call("report", 1, "null".into()));
    req.task = Some(NewTask::new(Target::any("g")));
    req
}

/// A schedule is a record by id: created once (a second create of its id is a
/// conflict), replaced at the next version, read, listed by id and by when it is due
/// (a paused one is not due), and removed. A write that names an old version is
/// refused and creates nothing; one that names the stored version moves it on and
/// creates its fires in the same step, leaving a fire that exists as it is. A fire
/// made to wait for the one before is suspended on it until it settles. The tick
/// names the next schedule due.
pub async fn schedules_are_records_moved_on_by_version(store: &dyn Store) {
    let now = store.now().await.expect("now");
    let stored = store.put_schedule(schedule("b", now + 60_000), false).await.expect("put");
    assert_eq!(stored.version, 1);
    let taken = store.put_schedule(schedule("b", now), false).await;
    assert!(matches!(taken, Err(StoreError::Conflict { .. })), "a taken id: {taken:?}");
    let replaced = store.put_schedule(schedule("b", now + 120_000), true).await.expect("replace");
    assert_eq!((replaced.version, replaced.next), (2, Some(now + 120_000)));
    store.put_schedule(schedule("a", now + 30_000), false).await.expect("put");
    let mut paused = schedule("c", now);
    paused.paused = true;
    store.put_schedule(paused, false).await.expect("put");
    let all: Vec<String> = store.schedules(None).await.expect("list").into_iter().map(|s| s.id).collect();
    assert_eq!(all, ["a", "b", "c"], "every schedule, by id");
    let due: Vec<String> = store.schedules(Some(now + 60_000)).await.expect("due").into_iter().map(|s| s.id).collect();
    assert_eq!(due, ["a"], "due by then, not paused");
    let tick = store.tick().await.expect("tick");
    assert_eq!(tick.schedules, Some(now + 30_000), "the tick names the next schedule due");
    assert!(tick.next.is_some_and(|n| n <= now + 30_000), "and it is a deadline");

    let mut a = store.schedule("a").await.expect("get").expect("stored");
    let stale = Schedule { version: 0, next: Some(now + 90_000), ..a.clone() };
    assert!(!store.update_schedule(stale, vec![fire("a@1")]).await.expect("update"), "an old version is refused");
    assert!(store.get("a@1").await.expect("get").is_none(), "and creates nothing");
    a.next = Some(now + 90_000);
    a.last = Some("a@1".into());
    assert!(store.update_schedule(a.clone(), vec![fire("a@1")]).await.expect("update"));
    let made = store.get("a@1").await.expect("get").expect("the fire is made with the write");
    assert_eq!(made.state, State::Pending);
    assert_eq!(store.task("a@1").await.expect("task").expect("its task").state, TaskState::Pending);
    let a = store.schedule("a").await.expect("get").expect("stored");
    assert_eq!((a.version, a.next), (2, Some(now + 90_000)));
    // A fire that waits for the one before; a fire that exists is left as it is.
    let mut waits = fire("a@2");
    waits.task.as_mut().expect("task").after = Some("a@1".into());
    let mut again = fire("a@1");
    again.tags.insert("again".into(), "yes".into());
    assert!(store.update_schedule(a, vec![again, waits]).await.expect("update"));
    assert!(store.get("a@1").await.expect("get").expect("stored").tags.is_empty(), "a fire is made once");
    let waiting = store.task("a@2").await.expect("task").expect("its task");
    assert_eq!((waiting.state, waiting.awaiting), (TaskState::Suspended, vec!["a@1".to_owned()]));
    store.settle(settle("a@1", State::Resolved, "1")).await.expect("settle");
    assert_eq!(store.task("a@2").await.expect("task").expect("its task").state, TaskState::Pending);
    // Removed: gone, and its fires stay.
    assert!(store.remove_schedule("a").await.expect("remove"));
    assert!(!store.remove_schedule("a").await.expect("remove"), "removed once");
    assert!(store.schedule("a").await.expect("get").is_none());
    assert!(store.get("a@2").await.expect("get").is_some(), "its fires stay");
}

/// Processes that fire one schedule at once, each from the version it read: exactly
/// one write succeeds, and the fire is made once.
pub async fn racing_fires_of_a_schedule_make_one(store: Arc<dyn Store>) {
    let now = store.now().await.expect("now");
    let read = store.put_schedule(schedule("race", now), false).await.expect("put");
    let racers = (0..4).map(|n| {
        let (store, mut s) = (store.clone(), read.clone());
        async move {
            s.next = Some(now + 60_000);
            s.last = Some(format!("race@{n}"));
            s.fired += 1;
            let mut made = fire("race@fire");
            made.tags.insert("by".into(), n.to_string());
            store.update_schedule(s, vec![made]).await.expect("update")
        }
    });
    let won: Vec<bool> = futures::future::join_all(racers).await;
    assert_eq!(won.iter().filter(|w| **w).count(), 1, "one write of one version: {won:?}");
    let winner = won.iter().position(|w| *w).expect("a winner");
    let stored = store.schedule("race").await.expect("get").expect("stored");
    assert_eq!((stored.version, stored.fired), (2, 1));
    assert_eq!(stored.last, Some(format!("race@{winner}")));
    let made = store.get("race@fire").await.expect("get").expect("the fire");
    assert_eq!(made.tags.get("by"), Some(&winner.to_string()), "the fire is the winner's");
}

/// A debounced call `id` of key `key` with `args`: quiet 1 s, at most 5 s.
fn debounced(id: &str, key: &str, args: &str, all: bool, max_args: usize) -> CreatePromise {
    let mut req = CreatePromise::new(id, Param::call("reindex", 1, args.into()));
    let debounce = Debounce { key: key.into(), quiet: 1_000, max_wait: 5_000, all, max_args };
    req.task = Some(NewTask { debounce: Some(debounce), ..NewTask::new(Target::any("g")) });
    req
}

/// The arguments of promise `id`.
async fn args_of(store: &dyn Store, id: &str) -> String {
    match store.get(id).await.expect("get").expect("stored").param {
        Param::Call { args, .. } => args,
        other => panic!("{id} is not a call: {other:?}"),
    }
}

/// Debounced calls of one key join the call waiting to start: it takes the last
/// arguments (or, keeping all, every call's in order), and starts once the key is
/// quiet, or at the first call's longest wait. Once it started, the next call opens
/// another; a call that would grow the arguments too large starts the waiting one at
/// once and opens another; another key is another call.
pub async fn debounced_calls_join_the_one_waiting_to_start(store: &dyn Store) {
    let t0 = store.now().await.expect("now");
    let first = store.create(debounced("d1", "k", "1", false, 1024)).await.expect("create");
    assert!(first.new);
    assert_eq!(store.task("d1").await.expect("task").expect("its task").ready_at, t0 + 1_000);
    tokio::time::advance(Duration::from_millis(600)).await;
    let joined = store.create(debounced("d2", "k", "2", false, 1024)).await.expect("create");
    assert_eq!((joined.new, joined.promise.id.as_str()), (false, "d1"), "a call of the key joins the waiting one");
    assert!(store.get("d2").await.expect("get").is_none(), "and makes nothing of its own");
    assert_eq!(args_of(store, "d1").await, "2", "with the last arguments");
    assert_eq!(store.task("d1").await.expect("task").expect("its task").ready_at, t0 + 1_600, "quiet again");
    assert!(claim_one(store, "g", "p1", 60_000).await.is_none(), "not before the key is quiet");
    // A steady stream of calls: it starts at the first call's longest wait.
    for n in 3..12 {
        tokio::time::advance(Duration::from_millis(600)).await;
        store.create(debounced(&format!("d{n}"), "k", &n.to_string(), false, 1024)).await.expect("create");
    }
    assert_eq!(store.task("d1").await.expect("task").expect("its task").ready_at, t0 + 5_000, "at most 5 s");
    assert_eq!(store.now().await.expect("now"), t0 + 6_000, "calls went on past it");
    let other = store.create(debounced("o1", "other", "9", false, 1024)).await.expect("create");
    assert!(other.new, "another key is another call");
    let started = claim_one(store, "g", "p1", 60_000).await.expect("it starts");
    assert_eq!((started.task.id.as_str(), args_of(store, "d1").await.as_str()), ("d1", "11"));
    let next = store.create(debounced("d20", "k", "20", false, 1024)).await.expect("create");
    assert!(next.new, "a call once the waiting one started opens the next");
    // Keeping all: every call's arguments, in order; too many start what waits.
    store.create(debounced("a1", "all", "[1]", true, 12)).await.expect("create");
    let joined = store.create(debounced("a2", "all", "[2]", true, 12)).await.expect("create");
    assert_eq!(joined.promise.id, "a1");
    store.create(debounced("a3", "all", "[3]", true, 12)).await.expect("create");
    assert_eq!(args_of(store, "a1").await, "[1,2,3]");
    let now = store.now().await.expect("now");
    let full = store.create(debounced("a4", "all", "[40000]", true, 12)).await.expect("create");
    assert!(full.new, "arguments past the bound open another call");
    assert_eq!(store.task("a1").await.expect("task").expect("its task").ready_at, now, "and the full one starts now");
    assert_eq!(args_of(store, "a4").await, "[40000]");
    let bad = store.create(debounced("a5", "all", "7", true, 1024)).await;
    assert!(matches!(bad, Err(StoreError::Conflict { .. })), "all arguments are a JSON array: {bad:?}");
}

/// Debounced calls of one key made at once make one call.
pub async fn racing_debounced_calls_make_one(store: Arc<dyn Store>) {
    let racers = (0..6).map(|n| {
        let store = store.clone();
        async move { store.create(debounced(&format!("r{n}"), "race", &n.to_string(), false, 1024)).await }
    });
    let made: Vec<_> = futures::future::join_all(racers).await.into_iter().map(|c| c.expect("create")).collect();
    assert_eq!(made.iter().filter(|c| c.new).count(), 1, "one call for the key");
    let id = &made.iter().find(|c| c.new).expect("the new one").promise.id;
    assert!(made.iter().all(|c| c.promise.id == *id), "every call joined it");
}

/// `request_cancel` settles a call that never started; marks one that did
/// `canceling`, fences its holder and makes its task pending for a claim that sees the
/// mark (held or suspended; a halted task stays halted); and leaves a promise without
/// a task, or a settled one, as it is.
pub async fn a_cancel_request_fences_the_holder_and_marks_the_promise(store: &dyn Store) {
    store.create(with_task("never", "g")).await.expect("create");
    let canceled = store.request_cancel("never").await.expect("request").expect("it exists");
    assert_eq!(canceled.state, State::RejectedCanceled, "a call that never started is canceled at once");
    assert_eq!(store.task("never").await.unwrap().unwrap().state, TaskState::Fulfilled);

    store.create(with_task("held", "g")).await.expect("create");
    let held = claim_one(store, "g", "p1", 60_000).await.expect("claimed");
    let asked = store.request_cancel("held").await.expect("request").expect("it exists");
    assert!(asked.canceling && asked.state == State::Pending, "{asked:?}");
    assert!(store.get("held").await.unwrap().unwrap().canceling, "the mark is stored");
    let task = store.task("held").await.unwrap().unwrap();
    assert_eq!((task.state, task.version), (TaskState::Pending, held.task.version + 1), "the holder is fenced");
    let mut child = call("held.1");
    child.fence = Some(held.fence());
    assert!(matches!(store.create(child).await, Err(StoreError::Fenced { .. })), "the old holder writes nothing more");
    let again = claim_one(store, "g", "p2", 60_000).await.expect("claimed again");
    assert!(again.root.canceling, "the next claim sees the mark");
    let repeated = store.request_cancel("held").await.unwrap().unwrap();
    assert_eq!(store.task("held").await.unwrap().unwrap().version, again.task.version, "asking again changes nothing");
    assert!(repeated.canceling);

    store.create(with_task("asleep", "s")).await.expect("create");
    let asleep = claim_one(store, "s", "p1", 60_000).await.expect("claimed");
    let mut timer = CreatePromise::new("asleep.1", Param::Timer);
    timer.parent = Some("asleep".into());
    timer.timeout = Some(3_600_000);
    timer.fence = Some(asleep.fence());
    store.create(timer).await.expect("a timer");
    assert!(store.suspend(&asleep.fence(), &["asleep.1".into()]).await.expect("suspend"));
    store.request_cancel("asleep").await.expect("request");
    assert_eq!(store.task("asleep").await.unwrap().unwrap().state, TaskState::Pending, "a suspended task runs again");
    assert!(claim_one(store, "s", "p2", 60_000).await.expect("claimed").root.canceling);

    store.create(with_task("stuck", "h")).await.expect("create");
    let stuck = claim_one(store, "h", "p1", 60_000).await.expect("claimed");
    store.release(&stuck.fence(), Release::Halt { error: "{}".into(), code: None }).await.expect("halt");
    assert!(store.request_cancel("stuck").await.unwrap().unwrap().canceling);
    assert_eq!(store.task("stuck").await.unwrap().unwrap().state, TaskState::Halted, "a halted task stays halted");

    store.create(call("local")).await.expect("create");
    let local = store.request_cancel("local").await.unwrap().unwrap();
    assert!(!local.canceling && local.state == State::Pending, "no task: returned as it is");
    store.settle(settle("local", State::Resolved, "1")).await.expect("settle");
    assert_eq!(store.request_cancel("local").await.unwrap().unwrap().state, State::Resolved);
    assert_eq!(store.request_cancel("missing").await.unwrap(), None);
}
