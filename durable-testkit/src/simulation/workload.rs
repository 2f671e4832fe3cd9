//! The simulation's own workload: two functions that together use every operation a
//! body has, driven by a small program in their arguments, and the result each
//! program must give.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use durable::prelude::*;
use durable::{Error, Retry};
use serde::{Deserialize, Serialize};

use super::observe::Observed;

/// One step of a flow's program.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Step {
    /// A local call of a leaf (`lfc`).
    Leaf(u64),
    /// A local call of a leaf whose first attempt fails, retried after an hour.
    LongRetry(u64),
    /// Local leaves started together (`lfi`), then awaited.
    Fanout(Vec<u64>),
    /// A leaf on a worker group (`rfc`).
    Remote(u64, String),
    /// A leaf started (`rfi`) for a worker group's pid, which has it first and the
    /// rest of the group after its preference window, then awaited.
    RemoteLater(u64, String),
    /// A leaf called with a chosen id.
    Chosen(u64),
    /// A detached leaf with a chosen id: its own invocation, not awaited.
    Detached(u64),
    /// A durable sleep, in seconds.
    Sleep(u64),
    /// A promise with a chosen id, resolved from outside.
    Approval,
    /// `now`, `random` and `uuid`.
    Records,
    /// A nested flow, local.
    Nested(Vec<Step>),
    /// A nested flow on a worker group.
    RemoteFlow(Vec<Step>, String),
    /// A call that times out: a flow that sleeps two hours, given a minute.
    TimesOut,
    /// The flow's first attempt fails here: it is retried afresh.
    FailOnce,
    /// A saga: local leaves, each with an undo; step `fail_at` (from 1; 0 for none)
    /// fails for good, and the steps before it are undone.
    Saga(Vec<u64>, u32),
}

/// What the functions' bodies of one simulated store share: the store, and what
/// broke. (An invocation imported into another store is of another world: its
/// history names that world.)
#[derive(Debug, Default)]
pub(crate) struct World {
    pub(crate) store: Mutex<Option<Arc<Observed>>>,
    pub(crate) violations: Mutex<Vec<String>>,
    pub(crate) leaf_runs: AtomicU64,
}

impl World {
    pub(crate) fn violate(&self, message: String) {
        self.violations.lock().unwrap_or_else(|e| e.into_inner()).push(message);
    }
}

static WORLDS: LazyLock<Mutex<HashMap<String, Arc<World>>>> = LazyLock::new(Mutex::default);

/// The world named `key`, made on first use.
pub(crate) fn world(key: &str) -> Arc<World> {
    WORLDS.lock().unwrap_or_else(|e| e.into_inner()).entry(key.to_owned()).or_default().clone()
}

/// Forgets the world named `key`.
pub(crate) fn forget(key: &str) {
    WORLDS.lock().unwrap_or_else(|e| e.into_inner()).remove(key);
}

/// A leaf: doubles `n`. Its result, once recorded, must never be computed again.
#[durable::function(name = "sim_leaf")]
pub(crate) async fn sim_leaf(ctx: &mut Context, world_key: String, n: u64, fail_first: u32) -> durable::Result<u64> {
    leaf(ctx, world_key, n, fail_first)
}

/// A leaf's body: doubles `n`, checks it was not recorded already, fails its first
/// `fail_first` attempts.
fn leaf(ctx: &mut Context, world_key: String, n: u64, fail_first: u32) -> durable::Result<u64> {
    let world = world(&world_key);
    let recorded = world.store.lock().unwrap_or_else(|e| e.into_inner()).as_ref().is_some_and(|o| o.resolved(ctx.id()));
    if recorded {
        world.violate(format!("{} ran again after its result was recorded", ctx.id()));
    }
    world.leaf_runs.fetch_add(1, Ordering::SeqCst);
    if ctx.attempt() <= fail_first {
        return Err(Error::new("a planned failure"));
    }
    Ok(n * 2)
}

/// A saga ([`Step::Saga`]): its leaves, each with its undo ([`sim_undo`]); step
/// `fail_at` fails for good.
#[durable::function(name = "sim_saga")]
pub(crate) async fn sim_saga(ctx: &mut Context, world: String, ns: Vec<u64>, fail_at: u32) -> durable::Result<u64> {
    let mut sum = 0;
    for (i, n) in ns.into_iter().enumerate() {
        if i as u32 + 1 == fail_at {
            ctx.lfc(sim_refuse, ()).compensate(sim_undo, (world.clone(), n)).await?;
        }
        sum += ctx.lfc(sim_leaf, (world.clone(), n, 0)).compensate(sim_undo, (world.clone(), n)).await?;
    }
    Ok(sum)
}

/// A saga's step that fails for good.
#[durable::function(name = "sim_refuse")]
pub(crate) async fn sim_refuse(_ctx: &mut Context) -> durable::Result<u64> {
    Err(Error::terminal("a planned refusal"))
}

/// An undo: runs only for a step that resolved, and, like a leaf, never again once
/// its own result is recorded.
#[durable::function(name = "sim_undo")]
pub(crate) async fn sim_undo(ctx: &mut Context, world_key: String, n: u64) -> durable::Result<u64> {
    let step = ctx.id().split_once(":undo").map_or(ctx.id(), |(step, _)| step).to_owned();
    let world_of = world(&world_key);
    let completed = world_of.store.lock().unwrap_or_else(|e| e.into_inner()).as_ref().is_none_or(|o| o.resolved(&step));
    if !completed {
        world_of.violate(format!("{} ran, but step {step} did not complete", ctx.id()));
    }
    leaf(ctx, world_key, n, 0)
}

/// The function of the limited calls: a remote leaf (`Step::Remote`) whose argument
/// is a multiple of 5 is a call of it instead, with a key of three.
pub(crate) const LIMITED: &str = "sim_limited";

/// A leaf under limits ([`limits`]) that works for 20 s first: long enough for calls
/// of one key to meet, were a store to let them.
#[durable::function(name = "sim_limited")]
pub(crate) async fn sim_limited(ctx: &mut Context, world_key: String, n: u64) -> durable::Result<u64> {
    tokio::time::sleep(Duration::from_secs(20)).await;
    leaf(ctx, world_key, n, 0)
}

/// The limits every simulation sets as it starts: one limited call of a key at a time,
/// two in all, and twenty starts a second with bursts of five.
pub(crate) fn limits() -> [durable::Limit; 3] {
    let limit = |name: &str| durable::Limit::new(name).function(LIMITED);
    [
        limit("sim-per-key").per_key().concurrency(1),
        limit("sim-two").concurrency(2),
        limit("sim-rate").rate(20, Duration::from_secs(1)).burst(5),
    ]
}

/// A flow: runs its program, and sums what its steps give.
#[durable::function(name = "sim_flow", retry = Retry::Constant { delay: Duration::from_secs(5), max_attempts: 3 })]
pub(crate) async fn sim_flow(ctx: &mut Context, world: String, path: String, steps: Vec<Step>) -> durable::Result<u64> {
    run_steps(ctx, world, path, steps).await
}

/// The same flow after a change behind a patch: a new call first, whose result it
/// does not use, so every history gives the same result on either path.
#[durable::function(name = "sim_flow", retry = Retry::Constant { delay: Duration::from_secs(5), max_attempts: 3 })]
pub(crate) async fn sim_flow_patched(
    ctx: &mut Context,
    world: String,
    path: String,
    steps: Vec<Step>,
) -> durable::Result<u64> {
    if ctx.patched("sim-patch").await? {
        ctx.lfc(sim_leaf, (world.clone(), 0, 0)).await?;
    }
    run_steps(ctx, world, path, steps).await
}

async fn run_steps(ctx: &mut Context, world: String, path: String, steps: Vec<Step>) -> durable::Result<u64> {
    let mut sum = 0;
    for (i, step) in steps.into_iter().enumerate() {
        let here = format!("{path}-{i}");
        sum += match step {
            Step::Leaf(n) => ctx.lfc(sim_leaf, (world.clone(), n, 0)).await?,
            Step::LongRetry(n) => {
                let retry = Retry::Constant { delay: Duration::from_secs(3600), max_attempts: 2 };
                ctx.lfc(sim_leaf, (world.clone(), n, 1)).retry(retry).await?
            }
            Step::Fanout(ns) => {
                let mut handles = Vec::new();
                for n in ns {
                    handles.push(ctx.lfi(sim_leaf, (world.clone(), n, 0)).await?);
                }
                let mut total = 0;
                for handle in handles {
                    total += handle.await?;
                }
                total
            }
            Step::Remote(n, group) if n % 2 == 0 => {
                let call = ctx.rfc(sim_limited, (world.clone(), n)).target(format!("poll://any@{group}"));
                call.key(&(n % 3)).await?
            }
            Step::Remote(n, group) => {
                ctx.rfc(sim_leaf, (world.clone(), n, 0)).target(format!("poll://any@{group}")).await?
            }
            Step::RemoteLater(n, group) => {
                let target = format!("poll://any@{group}/{group}1");
                let handle = ctx.rfi(sim_leaf, (world.clone(), n, 0)).target(target).await?;
                handle.await?
            }
            Step::Chosen(n) => ctx.lfc(sim_leaf, (world.clone(), n, 0)).id(format!("{here}-chosen")).await?,
            Step::Detached(n) => {
                ctx.detached(sim_leaf, (world.clone(), n, 0)).id(format!("{here}-detached")).await?;
                0
            }
            Step::Sleep(secs) => {
                ctx.sleep(Duration::from_secs(secs)).await?;
                0
            }
            Step::Approval => ctx.promise::<u64>().id(approval_id(&here)).await?.await?,
            Step::Records => {
                ctx.now().await?;
                ctx.random().await?;
                ctx.uuid().await?;
                0
            }
            Step::Nested(steps) => ctx.lfc(sim_flow, (world.clone(), here, steps)).await?,
            Step::RemoteFlow(steps, group) => {
                ctx.rfc(sim_flow, (world.clone(), here, steps)).target(format!("poll://any@{group}")).await?
            }
            Step::TimesOut => {
                let call = ctx.lfc(sim_flow, (world.clone(), here, vec![Step::Sleep(7200)]));
                match call.timeout(Duration::from_secs(60)).await {
                    Err(Error::Timeout { .. }) => 0,
                    other => return Err(Error::terminal(format!("expected a timeout, got {other:?}"))),
                }
            }
            Step::FailOnce => {
                if ctx.attempt() == 1 {
                    return Err(Error::new("the first attempt fails here"));
                }
                0
            }
            Step::Saga(ns, fail_at) => match ctx.lfc(sim_saga, (world.clone(), ns, fail_at)).await {
                Ok(sum) => sum,
                // Undone because it failed, not because the flow was canceled.
                Err(Error::Compensated { undone, cause, .. }) if !matches!(*cause, Error::Canceled { .. }) => {
                    100 * undone.len() as u64
                }
                Err(Error::Application { terminal: true, .. }) if fail_at == 1 => 0,
                Err(e) => return Err(e),
            },
        };
    }
    Ok(sum)
}

/// The id of the approval asked for at `here`.
pub(crate) fn approval_id(here: &str) -> String {
    format!("{here}-approval")
}

/// The value a person gives approval `id`: any, as long as it is always the same.
pub(crate) fn approval_value(id: &str) -> u64 {
    crate::faulty::splitmix(id.bytes().fold(0, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)))) % 100
}

/// What a flow with these steps gives, and the detached invocations it starts with
/// what each gives.
pub(crate) fn expected(path: &str, steps: &[Step], detached: &mut Vec<(String, u64)>) -> u64 {
    let mut sum = 0;
    for (i, step) in steps.iter().enumerate() {
        let here = format!("{path}-{i}");
        sum += match step {
            Step::Leaf(n) | Step::LongRetry(n) | Step::Remote(n, _) | Step::RemoteLater(n, _) | Step::Chosen(n) => {
                2 * n
            }
            Step::Fanout(ns) => ns.iter().map(|n| 2 * n).sum(),
            Step::Detached(n) => {
                detached.push((format!("{here}-detached"), 2 * n));
                0
            }
            Step::Approval => approval_value(&approval_id(&here)),
            Step::Nested(steps) | Step::RemoteFlow(steps, _) => expected(&here, steps, detached),
            Step::Sleep(_) | Step::Records | Step::TimesOut | Step::FailOnce => 0,
            Step::Saga(ns, fail_at) => match *fail_at as usize {
                0 => ns.iter().map(|n| 2 * n).sum(),
                k if k > ns.len() => ns.iter().map(|n| 2 * n).sum(),
                k => 100 * (k as u64 - 1),
            },
        };
    }
    sum
}

/// The worker groups of the simulation.
pub(crate) const GROUPS: [&str; 2] = ["a", "b"];

/// A random program of up to `len` steps, nesting up to `depth` more levels.
pub(crate) fn program(rng: &mut super::SimRng, len: u64, depth: u32) -> Vec<Step> {
    let group = |rng: &mut super::SimRng| GROUPS[rng.below(2) as usize].to_owned();
    (0..1 + rng.below(len))
        .map(|_| match rng.below(if depth > 0 { 15 } else { 13 }) {
            // A leaf whose number is 3 modulo 7 is a saga of three steps instead (so
            // that the draws, and every seed's program otherwise, stay as they were).
            0 | 1 => match rng.below(50) {
                n if n % 7 == 3 => Step::Saga(vec![n, n + 1, n + 2], (n % 4) as u32),
                n => Step::Leaf(n),
            },
            2 => Step::LongRetry(rng.below(50)),
            3 => Step::Fanout((0..1 + rng.below(3)).map(|_| rng.below(50)).collect()),
            4 => Step::Remote(rng.below(50), group(rng)),
            5 => Step::RemoteLater(rng.below(50), group(rng)),
            6 => Step::Chosen(rng.below(50)),
            7 => Step::Detached(rng.below(50)),
            8 => Step::Sleep([1, 30, 600, 5400][rng.below(4) as usize]),
            9 => Step::Approval,
            10 => Step::Records,
            11 => Step::TimesOut,
            12 => Step::FailOnce,
            13 => Step::Nested(program(rng, 3, depth - 1)),
            _ => Step::RemoteFlow(program(rng, 3, depth - 1), group(rng)),
        })
        .collect()
}

/// A count of each kind of step in `steps`, nested ones included.
pub(crate) fn count(steps: &[Step], counts: &mut std::collections::BTreeMap<&'static str, u64>) {
    for step in steps {
        let name = match step {
            Step::Leaf(_) => "lfc",
            Step::LongRetry(_) => "retry of a leaf (an hour's wait)",
            Step::Fanout(_) => "lfi",
            Step::Remote(n, _) if n % 2 == 0 => "rfc, limited",
            Step::Remote(..) => "rfc",
            Step::RemoteLater(..) => "rfi",
            Step::Chosen(_) => "call with a chosen id",
            Step::Detached(_) => "detached",
            Step::Sleep(_) => "sleep",
            Step::Approval => "external promise",
            Step::Records => "now, random, uuid",
            Step::Nested(_) => "nested flow",
            Step::RemoteFlow(..) => "remote flow",
            Step::TimesOut => "timeout",
            Step::FailOnce => "retry of a flow that made calls",
            Step::Saga(..) => "saga",
        };
        *counts.entry(name).or_default() += 1;
        if let Step::Nested(inner) | Step::RemoteFlow(inner, _) = step {
            count(inner, counts);
        }
    }
}
