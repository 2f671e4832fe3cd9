//! The calculator's roles as separate processes on PostgreSQL: the client waits while
//! the `lhs` worker is killed with SIGKILL mid-run and started again, and the
//! evaluation finishes with the right value. Reads `DURABLE_POSTGRES_URL`; under
//! `CI=true` an unreachable server fails the test.

use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

mod common;

use common::{Processes, connect, url};

fn calculator(schema: &str, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_calculator"));
    command.args(["--store", &url(), "--lease", "1000"]).args(args).env("DURABLE_SCHEMA", schema);
    command
}

fn worker(schema: &str, group: &str, pid: Option<&str>) -> Child {
    let mut args = vec!["worker", "--group", group];
    if let Some(pid) = pid {
        args.extend(["--pid", pid]);
    }
    calculator(schema, &args).stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("spawn a worker")
}

#[tokio::test]
async fn a_worker_killed_mid_run_and_restarted_finishes_the_calculation() {
    let Some(client) = connect().await else { return };
    let schema = format!("durable_calculator_{}", std::process::id());
    client.batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE")).await.unwrap();

    let mut processes = Processes(vec![worker(&schema, "exp", Some("lhs")), worker(&schema, "exp", Some("rhs"))]);
    // No ops worker yet: the evaluation gets as far as the operators and waits.
    let expression = "((1 + 2) * (3 - 4)) - ((5 * 6) + (7 - 8)) * (9 + 10)";
    let evaluation = calculator(&schema, &[expression]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let waiting = client
            .query_opt(&format!("SELECT 1 FROM {schema}.tasks WHERE grp = 'ops' AND state = 'pending' LIMIT 1"), &[])
            .await
            .ok()
            .flatten();
        if waiting.is_some() {
            break;
        }
        assert!(Instant::now() < deadline, "the evaluation never reached the operators");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let lhs = &mut processes.0[0];
    lhs.kill().expect("SIGKILL lhs");
    lhs.wait().unwrap();
    processes.0[0] = worker(&schema, "exp", Some("lhs"));
    processes.0.push(worker(&schema, "ops", None));

    let Output { status, stdout, stderr } =
        tokio::task::spawn_blocking(move || evaluation.wait_with_output()).await.unwrap().unwrap();
    let stderr = String::from_utf8_lossy(&stderr);
    assert!(status.success(), "the client failed: {stderr}");
    assert_eq!(
        String::from_utf8_lossy(&stdout).trim(),
        ((1 + 2) * (3 - 4) - ((5 * 6) + (7 - 8)) * (9 + 10)).to_string()
    );
    drop(processes);
    let held: i64 = client
        .query_one(&format!("SELECT count(*) FROM {schema}.tasks WHERE state = 'acquired'"), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(held, 0, "no task left acquired");
    client.batch_execute(&format!("DROP SCHEMA {schema} CASCADE")).await.unwrap();
}

/// A balanced expression over `leaves` numbers, with its value.
fn balanced(leaves: &[i64], ops: &mut impl Iterator<Item = char>) -> (String, i64) {
    if let [n] = leaves {
        return (n.to_string(), *n);
    }
    let (left, right) = leaves.split_at(leaves.len() / 2);
    let ((l, x), (r, y)) = (balanced(left, ops), balanced(right, ops));
    let op = ops.next().expect("ops cycle");
    let value = match op {
        '+' => x + y,
        '-' => x - y,
        _ => x * y,
    };
    (format!("({l} {op} {r})"), value)
}

#[tokio::test]
async fn a_sigkill_and_restart_loop_never_waits_for_a_lease() {
    let Some(client) = connect().await else { return };
    let schema = format!("durable_calculator_loop_{}", std::process::id());
    client.batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE")).await.unwrap();
    // A minute's lease: waiting out even one would take longer than this whole test.
    let lease = Duration::from_secs(60);
    let with_lease = |args: &[&str]| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_calculator"));
        command.args(["--store", &url(), "--lease", "60000"]).args(args).env("DURABLE_SCHEMA", &schema);
        command
    };
    let role = |pid: &str| {
        with_lease(&["worker", "--group", "exp", "--pid", pid])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn a worker")
    };
    let mut processes = Processes(vec![role("lhs"), role("rhs")]);
    processes
        .0
        .push(with_lease(&["worker", "--group", "ops"]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap());
    let leaves: Vec<i64> = (1..=64).collect();
    let (expression, value) = balanced(&leaves, &mut ['+', '-', '+', '*'].into_iter().cycle());
    let started = Instant::now();
    let mut evaluation = with_lease(&[&expression]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    // Kill lhs and rhs in turn, each time mid-run, and start them again at once.
    let mut kills = 0;
    while evaluation.try_wait().unwrap().is_none() && kills < 20 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        let victim = kills % 2;
        processes.0[victim].kill().expect("SIGKILL");
        processes.0[victim].wait().unwrap();
        processes.0[victim] = role(["lhs", "rhs"][victim]);
        kills += 1;
    }
    let Output { status, stdout, stderr } =
        tokio::task::spawn_blocking(move || evaluation.wait_with_output()).await.unwrap().unwrap();
    let elapsed = started.elapsed();
    assert!(status.success(), "the client failed: {}", String::from_utf8_lossy(&stderr));
    assert_eq!(String::from_utf8_lossy(&stdout).trim(), value.to_string());
    assert!(kills > 0, "the evaluation finished before any kill");
    assert!(elapsed < lease / 2, "{kills} kills; a restarted worker took its tasks back at once: {elapsed:?}");
    drop(processes);
    client.batch_execute(&format!("DROP SCHEMA {schema} CASCADE")).await.unwrap();
}
