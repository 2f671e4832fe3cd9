//! Operating the examples with the `durable` command, as a new user would, beside their
//! live workers on PostgreSQL: the calculator waits for an operator group nobody runs,
//! and is listed, drawn, found unserved, canceled and restarted; a faas job sent to a
//! group with no worker is canceled and restarted, and runs once a worker starts.
//! Reads `DURABLE_POSTGRES_URL`; under `CI=true` an unreachable server fails the tests.

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

mod common;

use common::{Processes, connect, url};

/// The `durable` binary of this build: beside the examples' binaries, built first if
/// this test run did not build it (it needs the `cli` feature of the durable crate).
fn durable_binary() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_BIN_EXE_calculator")).parent().expect("a directory").to_path_buf();
    let binary = dir.join(format!("durable{}", std::env::consts::EXE_SUFFIX));
    if !binary.exists() {
        let mut build = Command::new(env!("CARGO"));
        build.args(["build", "-p", "durable-exec", "--features", "cli", "--bin", "durable"]);
        if dir.ends_with("release") {
            build.arg("--release");
        }
        assert!(build.status().expect("run cargo").success(), "cargo could not build the durable binary");
    }
    binary
}

/// Runs the `durable` command on a schema, off the runtime's thread.
async fn run_durable(schema: &str, args: &[&str]) -> Output {
    let mut command = Command::new(durable_binary());
    command.args(["--store", &url(), "--schema", schema]).args(args);
    tokio::task::spawn_blocking(move || command.output().expect("run durable")).await.unwrap()
}

/// Runs the `durable` command on a schema; asserts success and gives its output.
async fn durable(schema: &str, args: &[&str]) -> String {
    let out = run_durable(schema, args).await;
    assert!(out.status.success(), "durable {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("UTF-8")
}

/// Runs `durable` until it succeeds with output that satisfies `done` (the processes
/// just started make the store); gives that output.
async fn until(schema: &str, args: &[&str], done: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = run_durable(schema, args).await;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() && done(&text) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "durable {args:?} never showed what was awaited; last: {text} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A fresh schema; `None` (the test is skipped) if the server is unreachable outside CI.
async fn schema(name: &str) -> Option<(String, tokio_postgres::Client)> {
    let client = connect().await?;
    let schema = format!("durable_operate_{name}_{}", std::process::id());
    client.batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE")).await.unwrap();
    Some((schema, client))
}

fn spawn(binary: &str, schema: &str, args: &[&str]) -> Child {
    Command::new(binary)
        .args(["--store", &url()])
        .args(args)
        .env("DURABLE_SCHEMA", schema)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn")
}

#[tokio::test]
async fn the_calculator_is_listed_drawn_canceled_and_restarted_from_the_command_line() {
    let Some((schema, client)) = schema("calculator").await else { return };
    let calculator = env!("CARGO_BIN_EXE_calculator");
    let mut processes = Processes(vec![
        spawn(calculator, &schema, &["worker", "--group", "exp", "--pid", "lhs"]),
        spawn(calculator, &schema, &["worker", "--group", "exp", "--pid", "rhs"]),
    ]);
    // No ops worker: the evaluation gets as far as the operators and waits.
    let evaluation = Command::new(calculator)
        .args(["--store", &url(), "(1 + 2) * (3 - 4)"])
        .env("DURABLE_SCHEMA", &schema)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the client");
    let unserved = until(&schema, &["unserved", "--after", "0"], |out| out.contains("group ops")).await;
    let listed = durable(&schema, &["ls"]).await;
    assert_eq!(listed.lines().count(), 1, "{listed}");
    let id = listed.split_whitespace().next().expect("an id").to_owned();
    assert!(listed.starts_with(&format!("{id}  =  pending")), "{listed}");
    assert!(unserved.lines().all(|line| line.starts_with(&format!("{id}."))), "{unserved}");

    let tree = durable(&schema, &["tree", &id]).await;
    assert!(tree.starts_with(&format!("{id}  = → poll://any@client  pending")), "{tree}");
    assert!(tree.contains("├─ 1  = → poll://any@exp/lhs  pending"), "{tree}");
    assert!(tree.contains("│  ├─ 1  = → poll://any@exp/lhs  resolved") && tree.contains("= 1"), "{tree}");

    let canceled = durable(&schema, &["cancel", &id]).await;
    assert!(canceled.starts_with(&format!("{id}  =  canceled")), "{canceled}");
    let Output { status, stderr, .. } =
        tokio::task::spawn_blocking(move || evaluation.wait_with_output()).await.unwrap().unwrap();
    assert!(!status.success(), "the canceled evaluation fails");
    assert!(String::from_utf8_lossy(&stderr).contains("canceled"), "{}", String::from_utf8_lossy(&stderr));
    assert_eq!(durable(&schema, &["unserved", "--after", "0"]).await, "", "nothing waits for ops any more");
    assert!(durable(&schema, &["ls", "--state", "canceled"]).await.starts_with(&id));

    // Restarted from the top under a new id; a client worker and an ops worker start.
    let again = format!("{id}-again");
    let restarted = durable(&schema, &["restart", &id, &again]).await;
    assert!(restarted.starts_with(&format!("{again}  =  pending")), "{restarted}");
    processes.0.push(spawn(calculator, &schema, &["worker", "--group", "client"]));
    processes.0.push(spawn(calculator, &schema, &["worker", "--group", "ops"]));
    let got = until(&schema, &["get", &again], |out| !out.contains("pending")).await;
    assert_eq!(got, format!("{again}  =  resolved  = -3\n"));
    let tree = durable(&schema, &["tree", &again]).await;
    assert_eq!(tree.lines().count(), 10, "the root and its nine calls: {tree}");
    assert!(tree.contains("└─ 3  * → poll://any@ops  resolved"), "{tree}");
    let listed = durable(&schema, &["ls"]).await;
    let ids: Vec<&str> = listed.lines().filter_map(|l| l.split_whitespace().next()).collect();
    assert_eq!(ids, [again.as_str(), id.as_str()], "newest first: {listed}");
    drop(processes);
    client.batch_execute(&format!("DROP SCHEMA {schema} CASCADE")).await.unwrap();
}

#[tokio::test]
async fn a_faas_job_nobody_serves_is_canceled_and_restarted_from_the_command_line() {
    let Some((schema, client)) = schema("faas").await else { return };
    let faas = env!("CARGO_BIN_EXE_faas");
    let dir = std::env::temp_dir().join(&schema);
    std::fs::create_dir_all(&dir).unwrap();
    let script = dir.join("hello.py");
    std::fs::write(&script, "print('hello', 6 * 7)\n").unwrap();
    let submit = |schema: &str| {
        let mut command = Command::new(faas);
        command
            .args(["--store", &url(), "submit", "--machine", "gpu", "--detach", "--script"])
            .arg(&script)
            .env("DURABLE_SCHEMA", schema);
        command.output().expect("submit")
    };
    let out = submit(&schema);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let job = String::from_utf8(out.stdout).unwrap().trim().to_owned();

    let unserved = until(&schema, &["unserved", "--after", "0"], |out| !out.is_empty()).await;
    assert_eq!(unserved, format!("{job}  waits for a worker of group gpu\n"));
    let listed = durable(&schema, &["ls", "--function", "execute"]).await;
    assert!(listed.starts_with(&format!("{job}  execute  pending")), "{listed}");
    let canceled = durable(&schema, &["cancel", &job]).await;
    assert!(canceled.starts_with(&format!("{job}  execute  canceled")), "{canceled}");
    let shown =
        Command::new(faas).args(["--store", &url(), "get", "--id", &job]).env("DURABLE_SCHEMA", &schema).output();
    let shown = String::from_utf8(shown.unwrap().stdout).unwrap();
    assert!(shown.contains("canceled"), "faas sees the cancel: {shown}");

    let again = format!("{job}-again");
    durable(&schema, &["restart", &job, &again]).await;
    let processes = Processes(vec![spawn(faas, &schema, &["worker", "--group", "gpu", "--pid", "g1"])]);
    let got = until(&schema, &["get", &again], |out| !out.contains("pending")).await;
    assert!(got.starts_with(&format!("{again}  execute  resolved  = ")) && got.contains("hello 42"), "{got}");
    let tree = durable(&schema, &["tree", &again]).await;
    assert!(tree.starts_with(&format!("{again}  execute → poll://any@gpu  resolved")), "{tree}");
    drop(processes);
    let _ = std::fs::remove_dir_all(&dir);
    client.batch_execute(&format!("DROP SCHEMA {schema} CASCADE")).await.unwrap();
}
