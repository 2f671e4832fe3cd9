//! Workers in separate processes on one PostgreSQL database: they share the work
//! without ever running a task at the same version twice, a worker killed with SIGKILL
//! mid-run is replaced and the results stay right, and a worker whose connections are
//! cut recovers. SQL triggers audit every settle and every acquisition.
//!
//! The worker processes are this test binary run again with `DURABLE_ROLE` set, which
//! makes `child_process` serve instead of returning at once. Reads
//! `DURABLE_POSTGRES_URL`; under `CI=true` an unreachable server fails the tests.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use durable::prelude::*;
use durable::store::PostgresStore;
use serde::{Deserialize, Serialize};

const LEASE: Duration = Duration::from_secs(2);

fn url() -> String {
    std::env::var("DURABLE_POSTGRES_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

#[durable::function]
async fn job(_ctx: &mut Context, n: u64) -> durable::Result<u64> {
    tokio::time::sleep(Duration::from_millis(n % 7)).await;
    Ok(n * 2)
}

#[derive(Clone, Debug, Serialize, Deserialize)]
enum Expr {
    Num(i64),
    Op(char, Box<Expr>, Box<Expr>),
}

#[durable::function(name = "=")]
async fn clc(ctx: &mut Context, expr: Expr) -> durable::Result<i64> {
    match expr {
        Expr::Num(n) => Ok(n),
        Expr::Op(op, lhs, rhs) => {
            let px = ctx.rfi(clc, *lhs).target("poll://any@exp/lhs").await?;
            let py = ctx.rfi(clc, *rhs).target("poll://any@exp/rhs").await?;
            let (x, y) = (px.await?, py.await?);
            ctx.rfc(Remote::<(i64, i64), i64>::named(op.to_string()), (x, y)).target("poll://any@ops").await
        }
    }
}

/// Runs once per id: says so on stdout, and its value holds a recorded uuid, so two
/// runs would give two values.
#[durable::function]
async fn minted(ctx: &mut Context, n: u64) -> durable::Result<String> {
    println!("ran {}", ctx.id());
    let token = ctx.uuid().await?;
    Ok(format!("{n}:{token}"))
}

/// Where a `pay` body records when it ran, by the database's clock.
struct Ledger {
    client: tokio_postgres::Client,
    schema: String,
}

/// Runs for 100 ms, and records its start and end.
#[durable::function]
async fn pay(ctx: &mut Context, account: String, n: u32) -> durable::Result<u32> {
    let ledger = ctx.state::<Ledger>()?;
    let schema = &ledger.schema;
    let insert = format!("INSERT INTO {schema}.runs VALUES ($1, $2, clock_timestamp()) RETURNING run");
    let run: i64 = ledger.client.query_one(&insert, &[&account, &(n as i32)]).await?.get(0);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let end = format!("UPDATE {schema}.runs SET ended = clock_timestamp() WHERE run = $1");
    ledger.client.execute(&end, &[&run]).await?;
    Ok(n)
}

/// How many ids each client process runs, all at once.
const CLIENT_IDS: u64 = 100;
/// The advisory lock the test holds until every client process is ready.
const START_LOCK: i64 = 0x0064_7572_6162_6c65;

/// An operator that takes a while, so that a kill lands mid-run.
async fn slow(x: i64, y: i64, op: char) -> durable::Result<i64> {
    tokio::time::sleep(Duration::from_millis(20)).await;
    Ok(match op {
        '+' => x + y,
        '-' => x - y,
        _ => x * y,
    })
}

#[durable::function(name = "+")]
async fn add(_ctx: &mut Context, x: i64, y: i64) -> durable::Result<i64> {
    slow(x, y, '+').await
}

#[durable::function(name = "-")]
async fn sub(_ctx: &mut Context, x: i64, y: i64) -> durable::Result<i64> {
    slow(x, y, '-').await
}

#[durable::function(name = "*")]
async fn mul(_ctx: &mut Context, x: i64, y: i64) -> durable::Result<i64> {
    slow(x, y, '*').await
}

/// The bank of the saga test: accounts in PostgreSQL.
struct Bank {
    client: tokio_postgres::Client,
    schema: String,
}

/// Books `delta` to `account`, once per promise, in one transaction; takes 30 ms, so
/// that kills and cancels land mid-flight.
#[durable::function]
async fn post(ctx: &mut Context, account: String, delta: i64) -> durable::Result<()> {
    let bank = ctx.state::<Bank>()?;
    let schema = &bank.schema;
    tokio::time::sleep(Duration::from_millis(30)).await;
    bank.client
        .batch_execute(&format!(
            "WITH booked AS (INSERT INTO {schema}.bookings VALUES ('{id}', '{account}', {delta}) ON CONFLICT DO NOTHING RETURNING account, delta)
             UPDATE {schema}.accounts a SET balance = balance + b.delta FROM booked b WHERE a.name = b.account",
            id = ctx.id()
        ))
        .await?;
    Ok(())
}

/// Moves money in two steps, each with its undo, and waits for a go between them.
#[durable::function]
async fn move_money(ctx: &mut Context, from: String, to: String, amount: i64) -> durable::Result<()> {
    ctx.lfc(post, (from.clone(), -amount)).compensate(post, (from, amount)).await?;
    ctx.promise::<()>().id(format!("{}-go", ctx.id())).await?.await?;
    ctx.lfc(post, (to.clone(), amount)).compensate(post, (to, -amount)).await
}

async fn store(schema: &str, app: &str) -> Arc<dyn Store> {
    let url = format!("{}?application_name={app}", url());
    Arc::new(PostgresStore::options(&url).schema(schema).connect().await.expect("connect to PostgreSQL"))
}

/// A worker process: `DURABLE_ROLE` is `work`, `exp/lhs`, `exp/rhs` or `ops`.
#[test]
fn child_process() {
    let Ok(role) = std::env::var("DURABLE_ROLE") else { return };
    let schema = std::env::var("DURABLE_SCHEMA").expect("DURABLE_SCHEMA");
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    if role == "client" {
        return runtime.block_on(client_process(&schema));
    }
    runtime.block_on(async {
        let store = store(&schema, &role.replace('/', "-")).await;
        let builder = Durable::builder().store(store).lease(LEASE);
        let builder = match role.as_str() {
            "work" => builder.group("work").register(job),
            "exp/lhs" => builder.group("exp").pid("lhs").register(clc),
            "exp/rhs" => builder.group("exp").pid("rhs").register(clc),
            "ops" => builder.group("ops").register(add).register(sub).register(mul),
            "bank" => {
                let (client, connection) =
                    tokio_postgres::connect(&url(), tokio_postgres::NoTls).await.expect("connect");
                tokio::spawn(connection);
                let pid = format!("os{}", std::process::id());
                let bank = Bank { client, schema: schema.clone() };
                builder.group("bank").pid(pid).register(move_money).register(post).state(bank)
            }
            "limited" => {
                let (client, connection) =
                    tokio_postgres::connect(&url(), tokio_postgres::NoTls).await.expect("connect");
                tokio::spawn(connection);
                let pid = format!("os{}", std::process::id());
                builder.group("pay").pid(pid).register(pay).state(Ledger { client, schema: schema.clone() })
            }
            other => panic!("unknown role {other}"),
        };
        builder.build().expect("build").serve().await.expect("serve");
    });
}

/// A client process: waits for the start, runs every id at once, prints what it got.
async fn client_process(schema: &str) {
    let durable =
        Durable::builder().store(store(schema, "client").await).group("clients").register(minted).build().unwrap();
    let (client, connection) = tokio_postgres::connect(&url(), tokio_postgres::NoTls).await.expect("connect");
    tokio::spawn(connection);
    client.execute("SELECT pg_advisory_lock_shared($1)", &[&START_LOCK]).await.expect("wait for the start");
    let calls: Vec<_> = (0..CLIENT_IDS)
        .map(|n| {
            let durable = durable.clone();
            tokio::spawn(async move { (n, durable.run(&format!("id-{n}"), minted, n).await.unwrap().await.unwrap()) })
        })
        .collect();
    for call in calls {
        let (n, value) = call.await.expect("a call");
        println!("got id-{n} {value}");
    }
}

fn spawn(role: &str, schema: &str) -> Child {
    Command::new(std::env::current_exe().expect("this test binary"))
        .args(["child_process", "--exact", "--nocapture", "--test-threads=1"])
        .env("DURABLE_ROLE", role)
        .env("DURABLE_SCHEMA", schema)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn a worker")
}

/// Kills the children when dropped, so a failing test leaves no process behind.
struct Processes(Vec<Child>);

impl Drop for Processes {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A fresh schema with the store's tables and audit triggers; `None` (test skipped)
/// if the server is unreachable outside CI.
async fn setup(name: &str) -> Option<(String, tokio_postgres::Client)> {
    let schema = format!("durable_{name}_{}", std::process::id());
    let (client, connection) = match tokio_postgres::connect(&url(), tokio_postgres::NoTls).await {
        Ok(c) => c,
        Err(e) if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("PostgreSQL at {} is unreachable under CI=true: {e}", url())
        }
        Err(e) => {
            eprintln!("skipped: PostgreSQL at {} is unreachable: {e}", url());
            return None;
        }
    };
    tokio::spawn(connection);
    client.batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE")).await.expect("drop");
    drop(store(&schema, "setup").await);
    client
        .batch_execute(&format!(
            "SET search_path TO {schema};
             CREATE TABLE settles (id text, state text, data text);
             CREATE TABLE acquisitions (id text, version bigint, process text);
             CREATE FUNCTION audit_settle() RETURNS trigger AS $$ BEGIN
               IF NEW.state <> 'pending' AND (TG_OP = 'INSERT' OR OLD.state = 'pending' OR OLD.data <> NEW.data) THEN
                 INSERT INTO settles VALUES (NEW.id, NEW.state, NEW.data);
               END IF;
               RETURN NEW;
             END $$ LANGUAGE plpgsql;
             CREATE TRIGGER audit_settle AFTER INSERT OR UPDATE ON promises FOR EACH ROW EXECUTE FUNCTION audit_settle();
             CREATE FUNCTION audit_acquire() RETURNS trigger AS $$ BEGIN
               IF NEW.state = 'acquired' AND (TG_OP = 'INSERT' OR OLD.state <> 'acquired' OR OLD.version <> NEW.version) THEN
                 INSERT INTO acquisitions VALUES (NEW.id, NEW.version, NEW.process);
               END IF;
               RETURN NEW;
             END $$ LANGUAGE plpgsql;
             CREATE TRIGGER audit_acquire AFTER INSERT OR UPDATE ON tasks FOR EACH ROW EXECUTE FUNCTION audit_acquire();"
        ))
        .await
        .expect("install the audit triggers");
    Some((schema, client))
}

/// What SQL says about the run: no promise settled twice, no task acquired twice at
/// one version, none left acquired.
async fn audit(client: &tokio_postgres::Client, schema: &str) {
    let twice = client
        .query(&format!("SELECT id, count(*) FROM {schema}.settles GROUP BY id HAVING count(*) > 1"), &[])
        .await
        .expect("query");
    assert!(
        twice.is_empty(),
        "promises settled twice: {:?}",
        twice.iter().map(|r| r.get::<_, String>(0)).collect::<Vec<_>>()
    );
    let doubled = client
        .query(&format!("SELECT id, version FROM {schema}.acquisitions GROUP BY id, version HAVING count(*) > 1"), &[])
        .await
        .expect("query");
    assert!(doubled.is_empty(), "tasks acquired twice at one version: {} of them", doubled.len());
    let held: i64 = client
        .query_one(&format!("SELECT count(*) FROM {schema}.tasks WHERE state = 'acquired'"), &[])
        .await
        .expect("query")
        .get(0);
    assert_eq!(held, 0, "tasks left acquired");
    client.batch_execute(&format!("DROP SCHEMA {schema} CASCADE")).await.expect("drop the test schema");
}

#[tokio::test]
async fn separate_worker_processes_never_run_a_task_at_one_version_twice() {
    let Some((schema, client)) = setup("claims").await else { return };
    let workers = Processes((0..4).map(|_| spawn("work", &schema)).collect());
    let durable = Durable::builder().store(store(&schema, "client").await).group("client").build().unwrap();
    let mut handles = Vec::new();
    for n in 0..200u64 {
        handles.push((n, durable.rpc(&format!("job-{n}"), job, n).target("poll://any@work").await.unwrap()));
    }
    for (n, handle) in handles {
        assert_eq!(handle.await.unwrap(), 2 * n);
    }
    let processes: i64 = client
        .query_one(&format!("SELECT count(DISTINCT process) FROM {schema}.acquisitions"), &[])
        .await
        .unwrap()
        .get(0);
    assert!(processes >= 2, "the work was shared: {processes} processes took tasks");
    // Every process stops before the audit drops the schema: a worker's next step
    // would deadlock with the DROP.
    drop(durable);
    drop(workers);
    audit(&client, &schema).await;
}

fn balanced(ops: usize, next: &mut i64) -> (Expr, i64) {
    if ops == 0 {
        *next += 1;
        return (Expr::Num(*next), *next);
    }
    let left = (ops - 1) / 2;
    let (l, lv) = balanced(left, next);
    let (r, rv) = balanced(ops - 1 - left, next);
    let op = ['+', '-', '*'][ops % 3];
    let value = match op {
        '+' => lv + rv,
        '-' => lv - rv,
        _ => lv * rv,
    };
    (Expr::Op(op, Box::new(l), Box::new(r)), value)
}

#[tokio::test]
async fn the_calculator_roles_survive_a_worker_killed_mid_run() {
    let Some((schema, client)) = setup("calc").await else { return };
    let mut processes = Processes(vec![spawn("exp/lhs", &schema), spawn("exp/rhs", &schema), spawn("ops", &schema)]);
    let durable = Durable::builder()
        .store(store(&schema, "client").await)
        .group("client")
        .lease(LEASE)
        .register(clc)
        .build()
        .unwrap();
    let mut handles = Vec::new();
    for k in 0..8 {
        let (expr, value) = balanced(7 + k, &mut (k as i64 * 3));
        handles.push((value, durable.run(&format!("calc-{k}"), clc, expr).await.unwrap()));
    }
    // Kill the operator worker once it has done some of the work, then start it again.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let done: i64 = client
            .query_one(&format!("SELECT count(*) FROM {schema}.settles WHERE data LIKE '%\"func\":\"*\"%' OR data LIKE '%\"func\":\"+\"%'"), &[])
            .await
            .unwrap()
            .get(0);
        if done >= 5 {
            break;
        }
        assert!(Instant::now() < deadline, "no operator settled in a minute");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let ops = &mut processes.0[2];
    ops.kill().expect("SIGKILL the ops worker");
    ops.wait().expect("reap it");
    processes.0[2] = spawn("ops", &schema);
    for (value, handle) in handles {
        assert_eq!(handle.await.unwrap(), value);
    }
    drop(durable);
    drop(processes);
    audit(&client, &schema).await;
}

#[durable::function]
async fn two_steps(ctx: &mut Context, n: u64) -> durable::Result<u64> {
    let a = ctx.lfc(job, n).await?;
    // Long enough for the test to cut this worker's connections mid-task.
    tokio::time::sleep(Duration::from_millis(500)).await;
    ctx.lfc(job, a).await
}

#[tokio::test]
async fn a_worker_whose_connections_are_cut_recovers() {
    let Some((schema, client)) = setup("cut").await else { return };
    let durable =
        Durable::builder().store(store(&schema, "victim").await).lease(LEASE).register(two_steps).build().unwrap();
    let handle = durable.run("cut", two_steps, 5).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while client
        .query_opt(&format!("SELECT 1 FROM {schema}.promises WHERE id = 'cut.1' AND state = 'resolved'"), &[])
        .await
        .unwrap()
        .is_none()
    {
        assert!(Instant::now() < deadline, "the first step never settled");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let cut: i64 = client
        .query_one(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = 'victim'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(cut >= 1, "connections were cut");
    assert_eq!(handle.await.unwrap(), 20);
    drop(durable);
    audit(&client, &schema).await;
}

#[tokio::test]
async fn client_processes_running_the_same_ids_at_once_run_each_body_once() {
    let Some((schema, client)) = setup("clients").await else { return };
    client.execute("SELECT pg_advisory_lock($1)", &[&START_LOCK]).await.unwrap();
    let clients: Vec<Child> = (0..3)
        .map(|_| {
            Command::new(std::env::current_exe().expect("this test binary"))
                .args(["child_process", "--exact", "--nocapture", "--test-threads=1"])
                .env("DURABLE_ROLE", "client")
                .env("DURABLE_SCHEMA", &schema)
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("spawn a client")
        })
        .collect();
    // Start them together: once all three wait on the lock, let it go.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let waiting: i64 = client
            .query_one("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted", &[])
            .await
            .unwrap()
            .get(0);
        if waiting >= 3 {
            break;
        }
        assert!(Instant::now() < deadline, "the clients never got ready");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    client.execute("SELECT pg_advisory_unlock($1)", &[&START_LOCK]).await.unwrap();
    let outputs = tokio::task::spawn_blocking(move || {
        clients.into_iter().map(|c| c.wait_with_output().expect("a client")).collect::<Vec<_>>()
    })
    .await
    .unwrap();
    let mut ran = std::collections::BTreeMap::<String, usize>::new();
    let mut got = std::collections::BTreeMap::<String, Vec<String>>::new();
    for output in outputs {
        assert!(output.status.success(), "a client failed");
        for line in String::from_utf8_lossy(&output.stdout).lines() {
            // The test harness starts the first line with its own words.
            let line = line.trim_start_matches("test child_process ... ");
            match line.split(' ').collect::<Vec<_>>().as_slice() {
                ["ran", id] => *ran.entry((*id).to_owned()).or_default() += 1,
                ["got", id, value] => got.entry((*id).to_owned()).or_default().push((*value).to_owned()),
                _ => {}
            }
        }
    }
    assert_eq!(got.len() as u64, CLIENT_IDS);
    for (id, values) in &got {
        assert_eq!(values.len(), 3, "{id}: every client got an answer");
        assert!(values.iter().all(|v| *v == values[0]), "{id}: every client got the one value: {values:?}");
        assert_eq!(ran.get(id), Some(&1), "{id}: the body ran once across the three processes");
    }
    audit(&client, &schema).await;
}

#[tokio::test]
async fn limits_hold_across_worker_processes_and_a_killed_holders_slot_comes_back() {
    let Some((schema, client)) = setup("limits").await else { return };
    client
        .batch_execute(&format!(
            "CREATE TABLE {schema}.runs (key text, n int, started timestamptz, ended timestamptz, run bigserial)"
        ))
        .await
        .unwrap();
    let durable = Durable::builder().store(store(&schema, "client").await).group("client").build().unwrap();
    let store = durable.store();
    store.set_limit(durable::Limit::new("two").function("pay").concurrency(2), true).await.unwrap();
    store.set_limit(durable::Limit::new("account").function("pay").per_key().concurrency(1), true).await.unwrap();
    let mut workers = Processes((0..3).map(|_| spawn("limited", &schema)).collect());
    let mut handles = Vec::new();
    for n in 0..24u32 {
        let account = ["a", "b", "c"][n as usize % 3];
        let call = durable.rpc(&format!("pay-{n}"), pay, (account.to_owned(), n)).target("poll://any@pay");
        handles.push((n, call.key(account).await.unwrap()));
    }
    // SIGKILL a worker that holds a task once the work is under way: its slot comes
    // back when its lease ends.
    let holder = format!("SELECT process FROM {schema}.tasks WHERE state = 'acquired' AND id LIKE 'pay-%' LIMIT 1");
    let victim = loop {
        if let Some(row) = client.query_opt(&holder, &[]).await.unwrap() {
            let process: String = row.get(0);
            let os_pid: u32 = process.strip_prefix("os").and_then(|p| p.split(':').next()?.parse().ok()).unwrap();
            if let Some(i) = workers.0.iter().position(|c| c.id() == os_pid) {
                break i;
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let killed_at = Instant::now();
    workers.0[victim].kill().unwrap();
    workers.0[victim].wait().unwrap();
    let all = async {
        for (n, handle) in handles {
            assert_eq!(handle.await.unwrap(), n);
        }
    };
    tokio::time::timeout(Duration::from_secs(25), all).await.expect("every call finished: the slots came back");
    assert!(killed_at.elapsed() >= LEASE, "the killed holder's task waited for its lease");
    let finished = "a.ended IS NOT NULL AND b.ended IS NOT NULL AND a.started < b.ended AND b.started < a.ended";
    let overlapping: i64 = client
        .query_one(
            &format!("SELECT count(*) FROM {schema}.runs a JOIN {schema}.runs b ON a.key = b.key AND a.n < b.n AND {finished}"),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(overlapping, 0, "two calls of one account ran at once");
    let peak: i64 = client
        .query_one(
            &format!(
                "SELECT max((SELECT count(*) FROM {schema}.runs b WHERE b.ended IS NOT NULL
                   AND b.started <= a.started AND a.started < b.ended)) FROM {schema}.runs a WHERE a.ended IS NOT NULL"
            ),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(peak <= 2, "{peak} ran at once under a limit of two");
    // Each account's calls ran in the order they were made: the killed one kept its
    // place in line.
    let mut reruns = 0;
    for account in ["a", "b", "c"] {
        let rows = client
            .query(
                &format!("SELECT n FROM {schema}.runs WHERE key = $1 AND ended IS NOT NULL ORDER BY started"),
                &[&account],
            )
            .await
            .unwrap();
        let order: Vec<i32> = rows.iter().map(|r| r.get(0)).collect();
        let mut sorted = order.clone();
        sorted.sort();
        assert_eq!(order, sorted, "account {account}'s calls ran out of order");
        // A body is at least once for what it does outside the store: the killed
        // holder may have ended its run and died before its result was committed,
        // and then that one call runs again, right after itself.
        let mut calls = order.clone();
        calls.dedup();
        assert_eq!(calls.len(), 8, "each call of account {account} finished: {order:?}");
        reruns += order.len() - calls.len();
    }
    assert!(reruns <= 1, "only the killed holder's call ran twice, {reruns} did");
    drop(durable);
    drop(workers);
    audit(&client, &schema).await;
}

/// Three worker processes serve one schedule that fires every second, and every one
/// of them fires it; one is SIGKILLed and another starts. Every second from the first
/// fire to the last started exactly one invocation, and each ran to its end once.
#[tokio::test]
async fn worker_processes_serving_one_schedule_start_one_invocation_per_fire_across_a_sigkill() {
    let Some((schema, client)) = setup("schedules").await else { return };
    let store = store(&schema, "client").await;
    let schedules = durable::Schedules::new(&*store);
    let spec = durable::ScheduleSpec::every(Duration::from_secs(1))
        .overlap(durable::Overlap::AllowAll)
        .target("poll://any@work");
    schedules.create("each-second", spec, job, 3).await.expect("create the schedule");
    let mut workers = Processes((0..3).map(|_| spawn("work", &schema)).collect());
    tokio::time::sleep(Duration::from_secs(4)).await;
    let mut killed = workers.0.remove(1);
    killed.kill().expect("SIGKILL a worker");
    killed.wait().expect("reap it");
    workers.0.push(spawn("work", &schema));
    tokio::time::sleep(Duration::from_secs(4)).await;
    let paused = schedules.pause("each-second").await.expect("pause");
    // Every fire made runs to its end (a task the killed worker held, after its lease).
    let fires = format!("SELECT id, state FROM {schema}.promises WHERE id LIKE 'each-second@%' ORDER BY id");
    let deadline = Instant::now() + Duration::from_secs(20);
    let rows = loop {
        let rows = client.query(&fires, &[]).await.expect("query");
        if rows.iter().all(|r| r.get::<_, String>(1) == "resolved") || Instant::now() > deadline {
            break rows;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    drop(workers);
    let ids: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    assert!(rows.iter().all(|r| r.get::<_, String>(1) == "resolved"), "every fire resolved: {ids:?}");
    assert!(ids.len() >= 6, "fires over eight seconds: {ids:?}");
    assert_eq!(ids.len() as u64, paused.fired, "the schedule counts each fire it made once");
    let seconds: Vec<i64> = ids
        .iter()
        .map(|id| {
            let time: jiff::Timestamp = id.strip_prefix("each-second@").unwrap().parse().unwrap();
            time.as_second()
        })
        .collect();
    assert!(seconds.windows(2).all(|w| w[1] == w[0] + 1), "one fire each second, none missing: {ids:?}");
    audit(&client, &schema).await;
}

/// Transfers run as sagas on three worker processes. Once every transfer has made
/// its first step, a worker is SIGKILLed, every other transfer is canceled from
/// outside (half of those from the command line), and the rest are let go: each canceled one ends canceled with its first
/// step undone, each other one books both steps, and no money is made or lost.
#[tokio::test]
async fn sagas_canceled_mid_flight_across_a_sigkill_conserve_the_balances() {
    let Some((schema, client)) = setup("saga").await else { return };
    client
        .batch_execute(&format!(
            "CREATE TABLE {schema}.accounts (name text PRIMARY KEY, balance bigint);
             CREATE TABLE {schema}.bookings (id text PRIMARY KEY, account text, delta bigint);
             INSERT INTO {schema}.accounts VALUES ('a', 1000), ('b', 1000), ('c', 1000);"
        ))
        .await
        .unwrap();
    let mut workers = Processes((0..3).map(|_| spawn("bank", &schema)).collect());
    let durable = Durable::builder().store(store(&schema, "client").await).group("client").build().unwrap();
    let accounts = ["a", "b", "c"];
    const TRANSFERS: usize = 24;
    let mut handles = Vec::new();
    for n in 0..TRANSFERS {
        let (from, to) = (accounts[n % 3].to_owned(), accounts[(n + 1) % 3].to_owned());
        let call = durable.rpc(&format!("move-{n}"), move_money, (from, to, n as i64 + 1)).target("poll://any@bank");
        handles.push((n, call.await.unwrap()));
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    // Made: its debit booked and recorded, and the promise it waits on next created
    // (a booking alone can precede its step's record, and a resolve of a promise not
    // yet created finds nothing).
    let made = format!("SELECT count(*) FROM {schema}.promises WHERE id LIKE 'move-%-go'");
    while client.query_one(&made, &[]).await.unwrap().get::<_, i64>(0) < TRANSFERS as i64 {
        assert!(Instant::now() < deadline, "the first steps were not all made in 20 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // A worker that holds a transfer, if one still does.
    let holder = format!("SELECT process FROM {schema}.tasks WHERE state = 'acquired' AND id LIKE 'move-%' LIMIT 1");
    let victim = match client.query_opt(&holder, &[]).await.unwrap() {
        Some(row) => {
            let process: String = row.get(0);
            let os_pid: u32 = process.strip_prefix("os").and_then(|p| p.split(':').next()?.parse().ok()).unwrap();
            workers.0.iter().position(|c| c.id() == os_pid).unwrap_or(0)
        }
        None => 0,
    };
    workers.0[victim].kill().unwrap();
    workers.0[victim].wait().unwrap();
    for n in 0..TRANSFERS {
        let id = format!("move-{n}");
        if n % 4 == 0 {
            // From the command line.
            let mut command = Command::new(env!("CARGO_BIN_EXE_durable"));
            command.args(["--store", &url(), "--schema", &schema, "cancel", &id]);
            let output = tokio::task::spawn_blocking(move || command.output().expect("run durable")).await.unwrap();
            let said = String::from_utf8_lossy(&output.stdout);
            assert!(output.status.success() && said.contains("canceling"), "{id}: {said}");
        } else if n % 2 == 0 {
            let asked = durable.promises().cancel(&id).await.unwrap();
            assert!(asked.canceling, "{id} settles once its undo ran: {asked:?}");
        } else {
            durable.promises().resolve(&format!("{id}-go"), &()).await.unwrap();
        }
    }
    workers.0[victim] = spawn("bank", &schema);
    let all = async {
        let mut outcomes = Vec::new();
        for (n, handle) in handles {
            outcomes.push((n, handle.await));
        }
        outcomes
    };
    let outcomes = tokio::time::timeout(Duration::from_secs(25), all).await.expect("every transfer ended");
    for (n, outcome) in outcomes {
        let id = format!("move-{n}");
        let net: Vec<(String, i64)> = client
            .query(
                &format!("SELECT account, sum(delta)::bigint FROM {schema}.bookings WHERE id LIKE $1 GROUP BY account ORDER BY account"),
                &[&format!("{id}.%")],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        let (from, to, amount) = (accounts[n % 3].to_owned(), accounts[(n + 1) % 3].to_owned(), n as i64 + 1);
        if n % 2 == 0 {
            let error = outcome.expect_err(&id);
            let Error::Compensated { cause, undone, .. } = &error else { panic!("{id}: {error:?}") };
            assert!(matches!(**cause, Error::Canceled { .. }), "{id}: {cause:?}");
            assert_eq!(undone, &[format!("{id}.1")], "{id}");
            assert_eq!(net, [(from, 0)], "{id} was canceled: its first step is undone");
            let state = durable.promises().get(&id).await.unwrap().unwrap().state;
            assert_eq!(state, durable::State::RejectedCanceled, "{id}");
        } else {
            outcome.unwrap_or_else(|e| panic!("{id}: {e}"));
            let mut both = vec![(from, -amount), (to, amount)];
            both.sort();
            assert_eq!(net, both, "{id} finished: both steps booked once");
        }
    }
    let total: i64 =
        client.query_one(&format!("SELECT sum(balance)::bigint FROM {schema}.accounts"), &[]).await.unwrap().get(0);
    assert_eq!(total, 3000, "no money is made or lost");
    drop(durable);
    drop(workers);
    audit(&client, &schema).await;
}
