//! A real crash: a workflow of local calls on sled runs in a child process that is
//! killed with SIGKILL mid-run, then started again over the same directory. It
//! finishes with the right result, and no step that had settled ran again.
//!
//! The child is this test binary run again with `DURABLE_KILL_DIR` set, which makes
//! `child_process` do the work instead of returning at once.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use durable::State;
use durable::prelude::*;
use durable::store::Search;

const DIR_VAR: &str = "DURABLE_KILL_DIR";
const STEPS: u64 = 2_000;
static LOG: OnceLock<PathBuf> = OnceLock::new();

/// Appends `k` to the run log, so the test sees every execution of a body.
#[durable::function]
async fn step(_ctx: &mut Context, k: u64, acc: u64) -> durable::Result<u64> {
    let mut log =
        std::fs::OpenOptions::new().append(true).create(true).open(LOG.get().expect("log path")).map_err(Error::new)?;
    writeln!(log, "{k}").map_err(Error::new)?;
    Ok(acc + k)
}

#[durable::function]
async fn chain(ctx: &mut Context, n: u64) -> durable::Result<u64> {
    let mut acc = 0;
    for k in 0..n {
        acc = ctx.lfc(step, (k, acc)).await?;
    }
    Ok(acc)
}

#[test]
fn child_process() {
    let Some(dir) = std::env::var_os(DIR_VAR).map(PathBuf::from) else {
        return;
    };
    LOG.set(dir.join("runs.log")).expect("set once");
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    runtime.block_on(async {
        let store = SledStore::open(dir.join("store")).expect("open the store");
        let durable = Durable::builder().store(Arc::new(store)).register(chain).build().expect("build");
        let result = durable.run("chain", chain, STEPS).await.expect("run").await.expect("result");
        std::fs::write(dir.join("result"), result.to_string()).expect("write the result");
    });
}

fn spawn_child(dir: &Path) -> Child {
    Command::new(std::env::current_exe().expect("this test binary"))
        .args(["child_process", "--exact", "--nocapture", "--test-threads=1"])
        .env(DIR_VAR, dir)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn the child")
}

fn log_counts(dir: &Path) -> BTreeMap<u64, u32> {
    let text = std::fs::read_to_string(dir.join("runs.log")).unwrap_or_default();
    let mut counts = BTreeMap::new();
    for line in text.lines() {
        *counts.entry(line.parse().expect("a step number")).or_default() += 1;
    }
    counts
}

#[test]
fn a_workflow_killed_mid_run_finishes_after_restart_without_rerunning_settled_steps() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut child = spawn_child(dir.path());
    // Wait for real progress, then kill. The deadline only bounds a broken run.
    let deadline = Instant::now() + Duration::from_secs(120);
    while log_counts(dir.path()).len() < 20 {
        assert!(Instant::now() < deadline, "the child made no progress");
        assert!(child.try_wait().expect("poll the child").is_none(), "the child exited before it was killed");
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().expect("SIGKILL");
    let status = child.wait().expect("reap the child");
    assert!(!status.success(), "the child was killed, not finished");
    assert!(!dir.path().join("result").exists(), "killed mid-run");

    // What had settled when it died.
    let settled: BTreeSet<u64> = {
        let store = SledStore::open(dir.path().join("store")).expect("reopen after the kill");
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let page = runtime
            .block_on(store.search(Search {
                prefix: "chain.".into(),
                state: Some(State::Resolved),
                limit: 10_000,
                ..Search::default()
            }))
            .expect("search");
        page.promises.iter().map(|p| p.id["chain.".len()..].parse::<u64>().expect("a step id") - 1).collect()
    };
    assert!(settled.len() >= 19 && (settled.len() as u64) < STEPS, "{} steps had settled", settled.len());

    let status = spawn_child(dir.path()).wait().expect("the restarted child");
    assert!(status.success(), "the restarted child finished");
    let result: u64 = std::fs::read_to_string(dir.path().join("result")).expect("a result").parse().expect("a number");
    assert_eq!(result, (0..STEPS).sum::<u64>());

    let counts = log_counts(dir.path());
    assert_eq!(counts.len() as u64, STEPS, "every step ran");
    for k in &settled {
        assert_eq!(counts[k], 1, "step {k} had settled before the kill and must not run again");
    }
    let reran: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).map(|(k, _)| *k).collect();
    assert!(reran.len() <= 1, "only the step in flight at the kill may run twice: {reran:?}");
}
