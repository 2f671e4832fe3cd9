//! SledStore's own crashes, below the `Store` API.
//!
//! * A child process writes at concurrency 64 and prints each write once it is
//!   acknowledged; it is killed with SIGKILL at a random moment (mid group commit, as
//!   64 writers share each sync), again and again over one directory. Every write it
//!   printed is there after reopening.
//! * Power loss: a log whose tail was never synced may be cut anywhere past the last
//!   synced length, or end in garbage. Every acknowledged write survives; of the
//!   others, a prefix of whole writes may show, and nothing else.
//!
//! * A child process finishes invocations (a root and three descendants) and purges
//!   them, one root at a time and by age; it is killed at random moments. Every root
//!   is whole or wholly gone, and every purge it printed took its subtree.
//!
//! The child is this test binary run again with `DURABLE_CRASH_DIR` set, which makes
//! `child_process` (or `purging_child_process`) write instead of returning at once.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use durable::store::{CreatePromise, Purge, SettlePromise, VirtualClock};
use durable::{Param, SledStore, State, Store};
use proptest::prelude::*;

const DIR_VAR: &str = "DURABLE_CRASH_DIR";
const ROUND_VAR: &str = "DURABLE_CRASH_ROUND";
const WRITERS: usize = 64;

/// Writes until killed: each of 64 writers creates a promise, then settles it, and
/// prints `c id` or `s id value` once the store acknowledged the write.
#[test]
fn child_process() {
    let Some(dir) = std::env::var_os(DIR_VAR).map(PathBuf::from) else { return };
    let round: u32 = std::env::var(ROUND_VAR).expect(ROUND_VAR).parse().expect("a round");
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    runtime.block_on(async {
        let store = Arc::new(SledStore::open(&dir).expect("open the store"));
        let writers: Vec<_> = (0..WRITERS)
            .map(|w| {
                let store = store.clone();
                tokio::spawn(async move {
                    for i in 0.. {
                        let id = format!("r{round}-w{w}-{i}");
                        store.create(CreatePromise::new(id.clone(), Param::External)).await.expect("create");
                        println!("c {id}");
                        let value = format!("{}", i * 7 + w as u64);
                        let settle = SettlePromise {
                            id: id.clone(),
                            state: State::Resolved,
                            value: value.clone(),
                            ikey: None,
                            strict: false,
                            fence: None,
                        };
                        store.settle(settle).await.expect("settle");
                        println!("s {id} {value}");
                    }
                })
            })
            .collect();
        for writer in writers {
            writer.await.expect("a writer");
        }
    });
}

/// The descendants of each root the purging child creates.
const DESCENDANTS: [&str; 3] = [".1", ".2", ".2.1"];

/// Finishes invocations until killed: each of 16 writers creates three resolved
/// descendants and then their resolved root and prints `c root`, then purges its previous root
/// and prints `g root`; a 17th purges whatever finished a moment ago, 5 roots at a time.
#[test]
fn purging_child_process() {
    let Some(dir) = std::env::var_os(DIR_VAR).map(PathBuf::from) else { return };
    let round: u32 = std::env::var(ROUND_VAR).expect(ROUND_VAR).parse().expect("a round");
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    runtime.block_on(async {
        let store = Arc::new(SledStore::open(&dir).expect("open the store"));
        let resolved = |id: String, parent: String| {
            let mut req = CreatePromise::new(id, Param::External);
            req.parent = Some(parent);
            req.settled = Some((State::Resolved, "1".into()));
            req
        };
        let mut writers: Vec<_> = (0..16)
            .map(|w| {
                let store = store.clone();
                tokio::spawn(async move {
                    for i in 0u64.. {
                        let root = format!("r{round}-w{w}-{i}");
                        // As an invocation runs: the root, its descendants, then the
                        // root settles; a finished root is whole, and only then may it
                        // be purged.
                        store.create(CreatePromise::new(root.clone(), Param::External)).await.expect("a root");
                        for d in DESCENDANTS {
                            let id = format!("{root}{d}");
                            let parent = id.rsplit_once('.').expect("a child").0.to_owned();
                            store.create(resolved(id, parent)).await.expect("create a descendant");
                        }
                        let settle = SettlePromise {
                            id: root.clone(),
                            state: State::Resolved,
                            value: "1".into(),
                            ikey: None,
                            strict: false,
                            fence: None,
                        };
                        store.settle(settle).await.expect("settle a root");
                        println!("c {root}");
                        if i > 0 {
                            let previous = format!("r{round}-w{w}-{}", i - 1);
                            store.purge(Purge::Root(previous.clone())).await.expect("purge a root");
                            println!("g {previous}");
                        }
                    }
                })
            })
            .collect();
        let sweeper = store.clone();
        writers.push(tokio::spawn(async move {
            loop {
                let now = sweeper.now().await.expect("now");
                sweeper.purge(Purge::Before { before: now, limit: 5 }).await.expect("purge by age");
                tokio::task::yield_now().await;
            }
        }));
        for writer in writers {
            writer.await.expect("a writer");
        }
    });
}

/// What the child said was acknowledged: ids created, ids settled with values, and
/// roots purged.
#[derive(Default)]
struct Acknowledged {
    created: Vec<String>,
    settled: Vec<(String, String)>,
    purged: Vec<String>,
}

impl Acknowledged {
    /// Takes in one line the child printed; false if it was not about a write.
    fn read(&mut self, line: &str) -> bool {
        let mut words = line.split(' ');
        match (words.next(), words.next(), words.next()) {
            (Some("c"), Some(id), None) => self.created.push(id.to_owned()),
            (Some("s"), Some(id), Some(value)) => self.settled.push((id.to_owned(), value.to_owned())),
            (Some("g"), Some(id), None) => self.purged.push(id.to_owned()),
            _ => return false, // the test harness's own output
        }
        true
    }
}

/// Runs `child` (a test of this binary) for round `round` until it has acknowledged
/// `writes` writes, then kills it; returns what it printed.
fn run_and_kill(dir: &Path, child: &str, round: u32, writes: usize, acked: &mut Acknowledged) {
    let mut child = Command::new(std::env::current_exe().expect("this test binary"))
        .args([child, "--exact", "--nocapture", "--test-threads=1"])
        .env(DIR_VAR, dir)
        .env(ROUND_VAR, round.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn the child");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut seen = 0;
    while seen < writes {
        let Some(line) = lines.next() else { panic!("the child stopped after {seen} writes") };
        if acked.read(&line.expect("a line")) {
            seen += 1;
        }
    }
    child.kill().expect("SIGKILL");
    // Whatever it printed before it died was acknowledged too.
    for line in lines.map_while(Result::ok) {
        acked.read(&line);
    }
    child.wait().expect("reap the child");
}

#[test]
fn a_writer_killed_mid_group_commit_loses_no_acknowledged_write() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut acked = Acknowledged::default();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    // Kill points spread over the run: after a few hundred to a few thousand writes.
    for (round, writes) in [300, 1_700, 90, 2_500, 640, 1_200, 40, 3_100].into_iter().enumerate() {
        run_and_kill(dir.path(), "child_process", round as u32, writes, &mut acked);
        let store = SledStore::open(dir.path()).expect("reopen after the kill");
        runtime.block_on(async {
            for id in &acked.created {
                assert!(store.get(id).await.expect("get").is_some(), "round {round}: {id} was acknowledged as created");
            }
            for (id, value) in &acked.settled {
                let p = store.get(id).await.expect("get").expect("acknowledged, so it exists");
                assert_eq!(
                    (p.state, p.value.as_deref()),
                    (State::Resolved, Some(value.as_str())),
                    "round {round}: {id}"
                );
            }
        });
    }
    assert!(acked.settled.len() > 3_000, "{} settles were acknowledged", acked.settled.len());
}

#[test]
fn a_purge_killed_midway_leaves_every_root_whole_or_wholly_gone() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut acked = Acknowledged::default();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    for (round, writes) in [700, 150, 2_300, 40, 1_100, 3_000].into_iter().enumerate() {
        run_and_kill(dir.path(), "purging_child_process", round as u32, writes, &mut acked);
        let store = SledStore::open(dir.path()).expect("reopen after the kill");
        runtime.block_on(async {
            for root in &acked.created {
                let mut present = vec![store.get(root).await.expect("get").is_some()];
                for d in DESCENDANTS {
                    present.push(store.get(&format!("{root}{d}")).await.expect("get").is_some());
                }
                assert!(
                    present.iter().all(|p| *p) || present.iter().all(|p| !p),
                    "round {round}: {root} is half purged: root and descendants present {present:?}"
                );
            }
            for root in &acked.purged {
                assert!(store.get(root).await.expect("get").is_none(), "round {round}: {root} was purged");
                for d in DESCENDANTS {
                    assert!(
                        store.get(&format!("{root}{d}")).await.expect("get").is_none(),
                        "round {round}: {root}{d} was purged with its root"
                    );
                }
            }
        });
    }
    assert!(acked.purged.len() > 1_000, "{} purges were acknowledged", acked.purged.len());
}

/// The log segment being written: the newest `wal-…` file.
fn last_segment(dir: &Path) -> PathBuf {
    let mut segments: Vec<_> = std::fs::read_dir(dir)
        .expect("read the directory")
        .map(|e| e.expect("an entry").path())
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("wal-")))
        .collect();
    segments.sort();
    segments.pop().expect("a segment")
}

/// Writes `acked + extra` resolved promises, one step each; returns the segment's
/// length after each of them.
fn write(dir: &Path, count: usize) -> Vec<u64> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    runtime.block_on(async {
        let store = SledStore::open_with_clock(dir, VirtualClock::new()).expect("open");
        let segment = last_segment(dir);
        let mut lengths = Vec::new();
        for i in 0..count {
            let mut req = CreatePromise::new(format!("p{i}"), Param::External);
            req.settled = Some((State::Resolved, i.to_string()));
            store.create(req).await.expect("create");
            lengths.push(std::fs::metadata(&segment).expect("the segment").len());
        }
        lengths
    })
}

proptest! {
    #![proptest_config(durable_testkit::strategy::config(48))]

    /// The first `acked` writes were synced; the rest reached the file but no sync did,
    /// so power loss may keep any prefix of their bytes, followed by garbage.
    #[test]
    fn power_loss_keeps_every_acknowledged_write_and_no_torn_one(
        acked in 1usize..60,
        extra in 0usize..40,
        keep in 0.0f64..=1.0,
        garbage in proptest::collection::vec(any::<u8>(), 0..48),
    ) {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let lengths = write(dir.path(), acked + extra);
        let segment = last_segment(dir.path());
        let synced = lengths[acked - 1];
        let end = *lengths.last().expect("written");
        let cut = synced + ((end - synced) as f64 * keep) as u64;
        let mut bytes = std::fs::read(&segment).expect("read the segment");
        bytes.truncate(cut as usize);
        bytes.extend_from_slice(&garbage);
        std::fs::write(&segment, bytes).expect("write the damaged segment");

        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let visible: Vec<bool> = runtime.block_on(async {
            let store = SledStore::open_with_clock(dir.path(), VirtualClock::new()).expect("reopen after power loss");
            let mut visible = Vec::new();
            for i in 0..acked + extra {
                let p = store.get(&format!("p{i}")).await.expect("get");
                if let Some(p) = &p {
                    assert_eq!((p.state, p.value.clone()), (State::Resolved, Some(i.to_string())), "p{i} whole");
                }
                visible.push(p.is_some());
            }
            visible
        });
        for (i, shown) in visible.iter().enumerate() {
            let whole = lengths[i] <= cut;
            prop_assert_eq!(*shown, whole, "p{} ends at byte {} of the log, cut at {}", i, lengths[i], cut);
        }
    }
}
