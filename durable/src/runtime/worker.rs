//! The background loop of a runtime, and the execution of one task.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tracing::Instrument;

use crate::error::Failure;
use crate::runtime::execute::{AbortOnDrop, Job};
use crate::runtime::function::Erased;
use crate::runtime::invocation::{Fault, Invocation};
use crate::runtime::shared::{Running, Shared, UNSERVED_AFTER};

use crate::promise::{Fence, Millis, Param, Promise};
use crate::store::{Claim, Purge, Release, Worker};
use crate::{Error, Retry, Store, TaskState};

/// Platform faults after which a task halts instead of being retried.
const POISON: u32 = 5;

/// How often at most a readiness signal whose claim took nothing makes a tick.
const SIGNAL_TICK: Duration = Duration::from_secs(1);

/// Heartbeats, ticks and claims until aborted.
pub(crate) async fn background(rt: Arc<Shared>) {
    let store = &rt.store;
    let beat = Duration::from_millis((rt.ttl / 3).max(1));
    let mut ready = store.ready(&rt.group);
    // A worker that starts may be the fixed deploy that halted tasks wait for, and
    // the successor of a process of its pid that died holding tasks.
    let code = rt.registry.iter().map(|(name, f)| (name.clone(), f.code_digest())).collect();
    // Until it succeeds: a pass that failed is tried again every beat.
    let mut resume_halted = true;
    let _ = store.release_predecessors(&rt.group, &rt.pid, &rt.process).await;
    // A claim the killed predecessor sent just before it died can still commit after
    // that: look once more a moment later.
    let mut recheck = Some(tokio::time::Instant::now() + PREDECESSOR_RECHECK);
    let mut next_beat = tokio::time::Instant::now() + beat;
    let mut next_tick = tokio::time::Instant::now();
    // This worker serves its group: say so every beat, whether it holds work or not.
    let mut next_announce = tokio::time::Instant::now();
    let me = Worker {
        group: rt.group.clone(),
        pid: rt.pid.clone(),
        process: rt.process.clone(),
        functions: rt.registry.keys().cloned().collect(),
        live_until: 0,
    };
    // Whether a claim may find something: at the start, on a readiness signal, when
    // the last claim filled every free slot (more may wait for one), and on every
    // timed wake, the poll that covers a signal lost. An invocation that starts or
    // ends wakes the loop too, for its heartbeats, and claims only if so.
    let mut claim_due = true;
    // Whether the last wake was a readiness signal (which waiting for it consumed).
    let mut signal_woke = false;
    let mut last_signal_tick = tokio::time::Instant::now();
    // Stopped with this loop.
    let mut firing: Option<AbortOnDrop> = None;
    loop {
        if tokio::time::Instant::now() >= next_announce {
            let _ = store.announce(&me, rt.ttl).await;
            next_announce = tokio::time::Instant::now() + beat;
            warn_unserved(&rt).await;
            if resume_halted {
                match store.resume_halted(&rt.group, &code).await {
                    Ok(resumed) => {
                        resume_halted = false;
                        if resumed > 0 {
                            tracing::info!(group = %rt.group, resumed, "resumed halted tasks of this group");
                        }
                    }
                    Err(e) => {
                        tracing::warn!(group = %rt.group, error = %e, "resuming halted tasks failed; trying again")
                    }
                }
            }
        }
        if let Some(at) = recheck
            && tokio::time::Instant::now() >= at
        {
            let _ = store.release_predecessors(&rt.group, &rt.pid, &rt.process).await;
            recheck = None;
        }
        // Tick when the store's next deadline is due, when this process added one,
        // and at least once a lease, so that a lease taken elsewhere since the last
        // tick (its holder may die) is noticed when it ends. A readiness signal alone
        // does not tick: it only claims.
        let now = tokio::time::Instant::now();
        if now >= next_tick || rt.tick_soon.swap(false, std::sync::atomic::Ordering::SeqCst) {
            next_tick = now + Duration::from_millis(rt.ttl);
            if let Ok(tick) = store.tick().await {
                if let Some(next) = tick.next {
                    next_tick = next_tick.min(now + Duration::from_millis(next.saturating_sub(tick.now).max(1)));
                }
                // Schedules due: fired beside this loop, one pass at a time.
                if tick.schedules.is_some_and(|due| due <= tick.now)
                    && firing.as_ref().is_none_or(|f| f.0.is_finished())
                {
                    let rt = rt.clone();
                    firing = Some(AbortOnDrop(tokio::spawn(async move {
                        match crate::runtime::fire::fire_due(&*rt.store).await {
                            // The tick that follows learns when the next is due.
                            Ok(true) => rt.deadline_added(),
                            // A schedule that failed is due still: it is tried at the
                            // tick a lease on, not in a loop.
                            Ok(false) => {}
                            Err(e) => tracing::warn!(error = %e, "firing schedules failed; a later tick tries again"),
                        }
                    })));
                }
            }
        }
        // With nothing held there is nothing to heartbeat: sleep until the next
        // tick or a readiness signal.
        let mut sleep = next_tick.saturating_duration_since(tokio::time::Instant::now());
        let holding = !rt.running.lock().unwrap_or_else(|e| e.into_inner()).is_empty();
        if holding && tokio::time::Instant::now() >= next_beat {
            let held: Vec<Fence> = rt.running.lock().unwrap_or_else(|e| e.into_inner()).keys().cloned().collect();
            let sent = tokio::time::Instant::now();
            // Each lease renewed runs from no earlier than the send.
            if let Ok(renewed) = store.heartbeat(&rt.process, &held, rt.ttl).await {
                let running = rt.running.lock().unwrap_or_else(|e| e.into_inner());
                for fence in &renewed {
                    if let Some(running) = running.get(fence) {
                        running.inv.confirm(sent);
                    }
                }
            }
            next_beat = tokio::time::Instant::now() + beat;
        }
        let free = rt.concurrency.saturating_sub(rt.running.lock().unwrap_or_else(|e| e.into_inner()).len());
        // A runtime with no functions (a client) runs nothing: it claims nothing.
        let signalled = std::mem::take(&mut signal_woke) | ready.has_changed().unwrap_or(false);
        claim_due |= signalled;
        if claim_due && free > 0 && !me.functions.is_empty() {
            ready.borrow_and_update();
            let claim = Claim {
                group: rt.group.clone(),
                pid: rt.pid.clone(),
                process: rt.process.clone(),
                ttl: rt.ttl,
                max: free,
                functions: me.functions.clone(),
            };
            let sent = tokio::time::Instant::now();
            if let Ok(acquired) = store.claim(claim).await {
                claim_due = acquired.len() >= free;
                // A signal that found nothing may be a task made to start later (by a
                // process that may not stay to tell): tick, at most once a second, to
                // learn when.
                if signalled && acquired.is_empty() && last_signal_tick.elapsed() >= SIGNAL_TICK {
                    last_signal_tick = tokio::time::Instant::now();
                    next_tick = next_tick.min(last_signal_tick);
                }
                for a in acquired {
                    tracing::debug!(task = %a.task.id, group = %rt.group, version = a.task.version, "claimed");
                    let fence = a.fence();
                    start(rt.clone(), fence, a.task.faults, a.root, a.preload, sent);
                }
            }
        }
        sleep = sleep.min(next_tick.saturating_duration_since(tokio::time::Instant::now()));
        if let Some(at) = recheck {
            sleep = sleep.min(at.saturating_duration_since(tokio::time::Instant::now()));
        }
        sleep = sleep.min(next_announce.saturating_duration_since(tokio::time::Instant::now()));
        if rt.running.lock().unwrap_or_else(|e| e.into_inner()).is_empty() {
            next_beat = tokio::time::Instant::now() + beat;
        } else {
            sleep = sleep.min(next_beat.saturating_duration_since(tokio::time::Instant::now()));
        }
        tokio::select! {
            biased;
            _ = tokio::time::sleep(sleep) => claim_due = true,
            _ = ready.changed() => (claim_due, signal_woke) = (true, true),
            _ = rt.wake.notified() => {}
        }
    }
}

/// Warns of each call this process routed that has waited [`UNSERVED_AFTER`] (and then
/// again every [`UNSERVED_AFTER`]) still pending, for a group and function that no live
/// worker serves; forgets those served or settled. Reads the store only when a noted
/// call is due.
async fn warn_unserved(rt: &Shared) {
    let due: Vec<((String, String), String, Millis)> = {
        let now = Instant::now();
        let noted = rt.unserved.lock().unwrap_or_else(|e| e.into_inner());
        noted.iter().filter(|(_, n)| n.due <= now).map(|(key, n)| (key.clone(), n.id.clone(), n.created_at)).collect()
    };
    if due.is_empty() {
        return;
    }
    let (Ok(now), Ok(workers)) = (rt.store.now().await, rt.store.workers().await) else { return };
    for ((group, function), id, created_at) in due {
        let served = workers.iter().any(|w| w.serves(&group, &function, now));
        let waiting = !served
            && match rt.store.task(&id).await {
                Ok(task) => task.is_some_and(|t| t.state == TaskState::Pending),
                // Not known: look again next time.
                Err(_) => continue,
            };
        let mut noted = rt.unserved.lock().unwrap_or_else(|e| e.into_inner());
        let key = (group, function);
        if waiting {
            let (group, function) = &key;
            let waited_s = now.saturating_sub(created_at) / 1000;
            tracing::warn!(call = %id, %group, %function, waited_s, "a call waits for a group in which no live worker runs its function: start one, or check the target's and the function's spelling (`durable unserved` lists every such task)");
            if let Some(n) = noted.get_mut(&key) {
                n.due = Instant::now() + UNSERVED_AFTER;
            }
        } else if noted.get(&key).is_some_and(|n| n.id == id) {
            // Served, or no longer waiting: forgotten, unless a newer call came since.
            noted.remove(&key);
        }
    }
}

/// When a starting worker looks again for tasks its predecessor held.
const PREDECESSOR_RECHECK: Duration = Duration::from_secs(1);

/// How many roots one purge deletes at most.
pub(crate) const PURGE_BATCH: usize = 100;

/// Deletes the roots that finished longer than `keep` ago, every tenth of `keep`, until
/// aborted: a root goes at most a tenth of the retention late. A failed pass is tried
/// again at the next.
pub(crate) async fn retention(store: Arc<dyn Store>, keep: Duration) {
    let every = keep / 10;
    loop {
        if let Ok(now) = store.now().await {
            let before = now.saturating_sub(keep.as_millis() as Millis);
            while let Ok(n) = store.purge(Purge::Before { before, limit: PURGE_BATCH }).await
                && n == PURGE_BATCH
            {
                // Let the work that creates promises go on between batches.
                tokio::task::yield_now().await;
            }
        }
        tokio::time::sleep(every).await;
    }
}

/// Runs a claimed task. One for a function this runtime lacks is released for a worker
/// that has it (a rolling deploy may not have reached this one yet): never rejected,
/// it waits with backoff (1 s doubling to a minute) and the error on the task says why.
fn start(rt: Arc<Shared>, fence: Fence, faults: u32, root: Promise, preload: Vec<Promise>, claimed: Instant) {
    let Some(func) = root.param.function_key() else {
        // Only calls have tasks.
        return;
    };
    match rt.registry.get(func.as_ref()).cloned() {
        Some(f) => spawn(rt, fence, root, preload, f, false, claimed),
        None => {
            let error = Error::NotRegistered {
                name: func.clone().into_owned(),
                where_: Some(format!("group {:?} (worker {:?})", rt.group, rt.pid)),
            };
            let delay = backoff().delay(faults + 1).unwrap_or_default().as_millis() as Millis;
            tracing::warn!(
                task = %fence.task, function = %func, group = %rt.group, pid = %rt.pid, delay_ms = delay,
                "the function is not registered here: the task is given back for a worker that has it"
            );
            let how = Release::Retry { delay, error: Some(Failure::from(&error).encode()) };
            tokio::spawn(async move {
                if rt.store.release(&fence, how).await.is_ok() {
                    rt.deadline_added();
                }
            });
        }
    }
}

/// Executes a task: runs its root promise to settlement, or releases or halts it.
/// Its lease was taken no earlier than `acquired`, by this process's clock.
pub(crate) fn spawn(
    rt: Arc<Shared>,
    fence: Fence,
    root: Promise,
    preload: Vec<Promise>,
    func: Arc<dyn Erased>,
    fresh: bool,
    acquired: Instant,
) {
    let span = tracing::info_span!("invocation", id = %root.id, function = func.name(), task_version = fence.version);
    let inv = Arc::new(Invocation::new(rt.clone(), fence.clone(), preload, acquired, root.canceling));
    let code = func.code_digest();
    let Param::Call { args, .. } = &root.param else {
        return;
    };
    let job = Job {
        inv: inv.clone(),
        id: root.id.clone(),
        deadline: root.timeout_at,
        retry: func.retry(),
        func,
        args: args.clone(),
        fresh,
        deferred: None,
    };
    // Held until the entry is in: the task removes it when done, which must come after.
    let mut running = rt.running.lock().unwrap_or_else(|e| e.into_inner());
    let (shared, execution) = (rt.clone(), inv.clone());
    let handle = tokio::spawn(
        async move {
            tokio::select! {
                biased;
                _ = job.run() => {}
                () = inv.faulted() => {}
                // Suspended: the store holds the task for the promises it awaits.
                () = inv.suspend_when_idle(shared.suspend_after) => {}
            }
            if let Some(fault) = inv.fault() {
                after_fault(&shared, &inv.fence, fault, code).await;
            }
            shared.running.lock().unwrap_or_else(|e| e.into_inner()).remove(&inv.fence);
            shared.wake.notify_one();
        }
        .instrument(span),
    );
    running.insert(fence, Running { abort: handle.abort_handle(), inv: execution });
    drop(running);
    // The background loop heartbeats only while something is held: tell it.
    rt.wake.notify_one();
}

/// The wait before a released task is delivered again: 1 s doubling to a minute.
fn backoff() -> Retry {
    Retry::Exponential {
        initial: Duration::from_secs(1),
        factor: 2,
        max_delay: Duration::from_secs(60),
        max_attempts: u32::MAX,
    }
}

/// Releases or halts a task whose execution stopped on a fault; `code` is the digest
/// of its function's code in this build.
async fn after_fault(rt: &Shared, fence: &Fence, fault: Fault, code: u64) {
    let how = match &fault {
        // Only a replay check reaches a frontier, and it holds no task.
        Fault::Frontier => return,
        Fault::Fenced => {
            tracing::warn!(task = %fence.task, "the lease was lost: another worker holds the task now; this execution stops");
            return;
        }
        Fault::Canceling => {
            tracing::info!(task = %fence.task, "its cancellation was asked for: this execution stops, and the task runs again to compensate");
            // The request made the task pending already, and this release is refused;
            // a wait canceled on its own gives the task back to run again now.
            let _ = rt.store.release(fence, Release::Retry { delay: 0, error: None }).await;
            return;
        }
        // Replay would diverge again: only other code, or an explicit resume, helps.
        Fault::Nondeterminism(_) => Release::Halt { error: fault.record(), code: Some(code) },
        // A person decides: `durable resume` (or a deploy) tries the undo again.
        Fault::Undo(_) => Release::Halt { error: fault.record(), code: None },
        Fault::Platform(_) => {
            let faults = match rt.store.task(&fence.task).await {
                Ok(Some(task)) => task.faults + 1,
                _ => 1,
            };
            if faults >= POISON {
                Release::Halt { error: fault.record(), code: None }
            } else {
                let delay = backoff().delay(faults).unwrap_or_default().as_millis() as u64;
                Release::Retry { delay, error: Some(fault.record()) }
            }
        }
    };
    match &how {
        Release::Halt { error, .. } => {
            let error = Failure::decode(&fence.task, Some(error)).into_error();
            tracing::error!(task = %fence.task, %error, "halted until a deploy or an operator resumes it");
        }
        Release::Retry { delay, .. } => {
            tracing::warn!(task = %fence.task, error = %fault.error(&fence.task), delay_ms = delay, "a platform fault: released, to run again");
        }
    }
    if rt.store.release(fence, how).await.is_ok() {
        // A retry is delivered again after its delay: a deadline.
        rt.deadline_added();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    use futures::future::BoxFuture;
    use tokio::sync::Notify;

    use crate::store::{Claim, Release};
    use crate::{Callable, Context, Durable, Function, MemoryStore, Result, Store};

    static RUNS: AtomicU32 = AtomicU32::new(0);
    static FIRST_MAY_GO: Notify = Notify::const_new();

    /// The first run waits to be let go; later runs hang.
    #[derive(Clone, Copy, Debug)]
    struct Hold;

    impl Callable for Hold {
        type Args = ();
        type Output = u32;
        fn name(&self) -> &str {
            "hold"
        }
    }

    impl Function for Hold {
        fn call<'a>(&self, _: &'a mut Context, (): ()) -> BoxFuture<'a, Result<u32>> {
            Box::pin(async {
                if RUNS.fetch_add(1, Ordering::SeqCst) == 0 {
                    FIRST_MAY_GO.notified().await;
                    Ok(1)
                } else {
                    std::future::pending().await
                }
            })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_old_execution_ending_leaves_the_new_one_of_the_same_task_running() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let durable = Durable::builder().store(store.clone()).register(Hold).build().unwrap();
        let _handle = durable.run("t", Hold, ()).await.unwrap();
        tokio::task::yield_now().await;
        let shared = durable.shared.clone();
        let old = shared.running.lock().unwrap().keys().next().cloned().expect("the first execution runs");

        // Its lease is lost, and this same process claims the task again.
        store.release(&old, Release::Retry { delay: 0, error: None }).await.unwrap();
        let claim = Claim {
            group: "default".into(),
            pid: shared.pid.clone(),
            process: shared.process.clone(),
            ttl: shared.ttl,
            max: 1,
            functions: Vec::new(),
        };
        let again = store.claim(claim).await.unwrap().pop().expect("claimed again");
        let new = again.fence();
        let now = tokio::time::Instant::now();
        super::spawn(shared.clone(), new.clone(), again.root, again.preload, Arc::new(Hold), false, now);
        tokio::task::yield_now().await;

        // The old execution goes on to its settle, is refused by the fence, and ends.
        FIRST_MAY_GO.notify_one();
        while shared.running.lock().unwrap().contains_key(&old) {
            tokio::task::yield_now().await;
        }
        let running: Vec<_> = shared.running.lock().unwrap().keys().cloned().collect();
        assert_eq!(
            running,
            std::slice::from_ref(&new),
            "the new execution is still known, so it is heartbeaten and counted"
        );
        assert_eq!(store.heartbeat(&shared.process, &running, shared.ttl).await.unwrap(), running);
    }
}
