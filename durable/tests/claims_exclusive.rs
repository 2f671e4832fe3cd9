//! Property: however workers interleave claims, heartbeats, completions, releases and
//! the passing of time, no two ever hold the same task at once, versions only grow,
//! and a write is accepted exactly when its writer still holds the task.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use durable::store::{Claim, CreatePromise, NewTask, Release, SettlePromise};
use durable::{Fence, Param, State, Store, StoreError, Target};
use proptest::prelude::*;

const TTL: u64 = 10_000;
const WORKERS: usize = 4;

#[derive(Clone, Debug)]
enum Op {
    Claim {
        worker: usize,
        max: usize,
    },
    Heartbeat {
        worker: usize,
    },
    /// Time passes; `tick` says whether a tick applies the deadlines right after.
    Advance {
        ms: u64,
        tick: bool,
    },
    Finish {
        worker: usize,
        pick: usize,
    },
    Release {
        worker: usize,
        pick: usize,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..WORKERS, 1..4usize).prop_map(|(worker, max)| Op::Claim { worker, max }),
        2 => (0..WORKERS).prop_map(|worker| Op::Heartbeat { worker }),
        3 => (0..2 * TTL, any::<bool>()).prop_map(|(ms, tick)| Op::Advance { ms, tick }),
        2 => (0..WORKERS, any::<usize>()).prop_map(|(worker, pick)| Op::Finish { worker, pick }),
        1 => (0..WORKERS, any::<usize>()).prop_map(|(worker, pick)| Op::Release { worker, pick }),
    ]
}

/// The model's view of one task.
#[derive(Default)]
struct Model {
    /// (worker, version, lease end) of the holder the model believes in.
    holder: Option<(usize, u64, u64)>,
    version: u64,
    done: bool,
}

async fn check(store: Arc<dyn Store>, tasks: usize, ops: Vec<Op>) {
    for t in 0..tasks {
        let mut req = CreatePromise::new(format!("t{t}"), Param::call("f", 1, "null".into()));
        req.task = Some(NewTask::new(Target::any("g")));
        store.create(req).await.unwrap();
    }
    let mut model: HashMap<String, Model> = (0..tasks).map(|t| (format!("t{t}"), Model::default())).collect();
    let mut held: Vec<Vec<Fence>> = vec![Vec::new(); WORKERS];
    let process = |w: usize| format!("process-{w}");
    for op in ops {
        let now = store.now().await.unwrap();
        match op {
            Op::Claim { worker, max } => {
                let claim = Claim {
                    group: "g".into(),
                    pid: format!("w{worker}"),
                    process: process(worker),
                    ttl: TTL,
                    max,
                    functions: Vec::new(),
                };
                for a in store.claim(claim).await.unwrap() {
                    let m = model.get_mut(&a.task.id).unwrap();
                    assert!(!m.done, "{} was handed out after it was done", a.task.id);
                    if let Some((other, _, until)) = m.holder {
                        assert!(
                            until <= now,
                            "{} handed to worker {worker} while worker {other} held it until {until} (now {now})",
                            a.task.id
                        );
                    }
                    assert!(a.task.version > m.version, "versions only grow");
                    m.version = a.task.version;
                    m.holder = Some((worker, a.task.version, now + TTL));
                    held[worker].push(a.fence());
                }
            }
            Op::Heartbeat { worker } => {
                let mut expected = 0;
                let named: Vec<Fence> = held[worker].clone();
                for m in model.values_mut() {
                    if let Some((w, v, until)) = m.holder
                        && w == worker
                        && until > now
                    {
                        m.holder = Some((w, v, now + TTL));
                        expected += 1;
                    }
                }
                assert_eq!(store.heartbeat(&process(worker), &named, TTL).await.unwrap().len(), expected);
            }
            Op::Advance { ms, tick } => {
                tokio::time::advance(Duration::from_millis(ms)).await;
                if tick {
                    store.tick().await.unwrap();
                }
            }
            Op::Finish { worker, pick } | Op::Release { worker, pick } if !held[worker].is_empty() => {
                let fence = held[worker][pick % held[worker].len()].clone();
                let m = model.get_mut(&fence.task).unwrap();
                let holds =
                    !m.done && m.holder.is_some_and(|(w, v, until)| w == worker && v == fence.version && until > now);
                let result = if matches!(op, Op::Finish { .. }) {
                    let settle = SettlePromise {
                        id: fence.task.clone(),
                        state: State::Resolved,
                        value: "1".into(),
                        ikey: None,
                        strict: false,
                        fence: Some(fence.clone()),
                    };
                    store.settle(settle).await.map(drop)
                } else {
                    store.release(&fence, Release::Retry { delay: 0, error: None }).await
                };
                match result {
                    Ok(()) => {
                        assert!(
                            holds,
                            "a write for {} at version {} was accepted from a worker that lost it",
                            fence.task, fence.version
                        );
                        m.holder = None;
                        if matches!(op, Op::Finish { .. }) {
                            m.done = true;
                        } else {
                            m.version += 1;
                        }
                    }
                    Err(StoreError::Fenced { .. }) => {
                        assert!(!holds, "the holder of {} at version {} was refused", fence.task, fence.version);
                    }
                    Err(e) => panic!("unexpected error {e}"),
                }
            }
            Op::Finish { .. } | Op::Release { .. } => {}
        }
    }
}

fn run(store: impl FnOnce() -> (Arc<dyn Store>, Option<tempfile::TempDir>), tasks: usize, ops: Vec<Op>) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().unwrap();
    rt.block_on(async {
        let (store, _dir) = store();
        check(store, tasks, ops).await;
    });
}

proptest! {
    #![proptest_config(durable_testkit::strategy::config(128))]

    #[test]
    fn memory_workers_never_share_a_task(tasks in 1..10usize, ops in prop::collection::vec(op(), 1..200)) {
        run(|| (common::memory(), None), tasks, ops);
    }
}

proptest! {
    #![proptest_config(durable_testkit::strategy::config(24))]

    #[test]
    fn sled_workers_never_share_a_task(tasks in 1..10usize, ops in prop::collection::vec(op(), 1..200)) {
        run(|| { let (store, dir) = common::sled(); (store, Some(dir)) }, tasks, ops);
    }
}
