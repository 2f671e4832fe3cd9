//! The `durable` command line: on a sled store a service left (the listing, the tree,
//! a promise as JSON, the promises waiting for a person, a history exported and
//! imported into another store, resolving one, clear errors,
//! and a store in use), and on PostgreSQL beside a live worker (a halted invocation
//! fixed and resumed). Reads `DURABLE_POSTGRES_URL`; under `CI=true` an unreachable
//! server fails the test.

use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use durable::TaskState;
use durable::prelude::*;

#[durable::function]
async fn step(_ctx: &mut Context, x: u64) -> durable::Result<u64> {
    Ok(x + 1)
}

#[durable::function]
async fn order(ctx: &mut Context, x: u64) -> durable::Result<u64> {
    let y = ctx.lfc(step, x).await?;
    let approved = ctx.promise::<bool>().id(format!("approval-{x}")).await?.await?;
    Ok(if approved { y } else { 0 })
}

fn durable(dir: &std::path::Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_durable"))
        .arg("--store")
        .arg(dir)
        .args(args)
        .output()
        .expect("run the durable binary")
}

fn stdout(output: &Output) -> String {
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout.clone()).expect("UTF-8")
}

#[test]
fn the_command_line_shows_and_steers_what_a_service_left() {
    let dir = tempfile::tempdir().expect("a directory");
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    // A service runs an order up to its approval, and stops.
    runtime.block_on(async {
        let store: Arc<dyn Store> = Arc::new(SledStore::open(dir.path()).unwrap());
        let service = Durable::builder().store(store.clone()).register(order).build().unwrap();
        let _handle = service.run("order-7", order, 7).await.unwrap();
        while store.get("approval-7").await.unwrap().is_none() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        service.shutdown().await.unwrap();
    });

    let listed = stdout(&durable(dir.path(), &["ls"]));
    assert!(listed.starts_with("order-7  order  pending  20"), "{listed}");
    assert_eq!(listed.lines().count(), 1, "the chosen-id promise and the local call are no invocations: {listed}");
    let json: serde_json::Value = serde_json::from_str(&stdout(&durable(dir.path(), &["--json", "ls"]))).unwrap();
    assert_eq!(json["invocations"][0]["promise"]["id"], "order-7", "{json}");
    assert_eq!(json["invocations"][0]["task"]["state"], "pending", "{json}");
    assert_eq!(stdout(&durable(dir.path(), &["ls", "--state", "resolved"])), "", "none resolved yet");

    let tree = stdout(&durable(dir.path(), &["tree", "order-7"]));
    let lines: Vec<&str> = tree.lines().collect();
    assert_eq!(lines.len(), 3, "{tree}");
    assert!(lines[0].starts_with("order-7  order → poll://any@default  pending"), "{tree}");
    assert!(lines[1].starts_with("├─ 1  step  resolved") && lines[1].ends_with("= 8"), "{tree}");
    assert!(lines[2].starts_with("└─ approval-7  promise  pending"), "{tree}");

    let json: serde_json::Value = serde_json::from_str(&stdout(&durable(dir.path(), &["--json", "get", "order-7"])))
        .expect("get --json prints JSON");
    assert_eq!((json["id"].as_str(), json["state"].as_str()), (Some("order-7"), Some("pending")), "{json}");

    let external = stdout(&durable(dir.path(), &["external"]));
    assert!(external.starts_with("approval-7  promise  pending"), "{external}");

    // Its history goes to a file, and from there into another store.
    let file = dir.path().join("order-7.json");
    stdout(&durable(dir.path(), &["export", "order-7", "--out", file.to_str().unwrap()]));
    let history = durable::History::from_json(&std::fs::read_to_string(&file).unwrap()).unwrap();
    let ids: Vec<&str> = history.promises.iter().map(|r| r.promise.id.as_str()).collect();
    assert_eq!(ids, ["order-7", "order-7.1", "approval-7"], "the invocation, its call, its chosen-id promise");
    let elsewhere = tempfile::tempdir().expect("a directory");
    let imported = stdout(&durable(elsewhere.path(), &["import", file.to_str().unwrap()]));
    assert!(imported.starts_with("imported order-7 (3 promises)"), "{imported}");
    assert_eq!(stdout(&durable(elsewhere.path(), &["tree", "order-7"])).lines().count(), 3);
    let twice = durable(elsewhere.path(), &["import", file.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&twice.stderr).contains("is in this store already"), "{twice:?}");
    std::fs::write(&file, "{}").unwrap();
    let malformed = durable(elsewhere.path(), &["import", file.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&malformed.stderr).contains("order-7.json: "), "{malformed:?}");

    let resolved = stdout(&durable(dir.path(), &["resolve", "approval-7", "true"]));
    assert!(resolved.starts_with("approval-7  promise  resolved  = true"), "{resolved}");
    assert_eq!(stdout(&durable(dir.path(), &["external"])), "", "nothing waits any more");

    let bad = durable(dir.path(), &["resolve", "approval-7", "not json"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("the value must be JSON"), "{bad:?}");
    let missing = durable(dir.path(), &["tree", "nope"]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no promise nope"), "{missing:?}");

    // A service holds the store: the command says so.
    let held = SledStore::open(dir.path()).unwrap();
    let busy = durable(dir.path(), &["ls"]);
    assert!(!busy.status.success());
    let said = String::from_utf8_lossy(&busy.stderr);
    assert!(said.contains("is in use: another process holds its lock"), "{said}");
    drop(held);
}

/// Whether the setting `quote` reads is the changed one.
static DISCOUNTS: AtomicBool = AtomicBool::new(false);

#[durable::function]
async fn price(_ctx: &mut Context, x: u64) -> durable::Result<u64> {
    Ok(x * 2)
}

#[durable::function]
async fn discount(_ctx: &mut Context, x: u64) -> durable::Result<u64> {
    Ok(x / 2)
}

/// Reads a setting the history does not record: a change of it between a run and its
/// replay makes the replay call another function, a nondeterminism.
#[durable::function]
async fn quote(ctx: &mut Context, x: u64) -> durable::Result<u64> {
    let base = if DISCOUNTS.load(Ordering::SeqCst) { ctx.lfc(discount, x).await? } else { ctx.lfc(price, x).await? };
    let approved = ctx.promise::<bool>().id(format!("quote-approval-{x}")).await?.await?;
    Ok(if approved { base } else { 0 })
}

fn postgres_url() -> String {
    std::env::var("DURABLE_POSTGRES_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// The command on a PostgreSQL schema, run off the runtime's thread.
async fn durable_pg(schema: &str, args: &[&str]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_durable"));
    command.args(["--store", &postgres_url(), "--schema", schema]).args(args);
    tokio::task::spawn_blocking(move || command.output().expect("run the durable binary")).await.expect("joined")
}

/// Beside a live worker on PostgreSQL: an invocation halts on nondeterminism after a
/// setting changed under it; the command line lists it as halted and shows why in its
/// tree; once the setting is put back (a fix the worker's code cannot see, so no
/// worker resumes it by itself), `durable resume` resumes it and it finishes.
#[tokio::test]
async fn a_halted_invocation_fixed_and_resumed_through_the_command_line_finishes() {
    let schema = format!("durable_cli_{}", std::process::id());
    let store: Arc<dyn Store> = match durable::store::open(&postgres_url(), &schema).await {
        Ok(store) => store,
        Err(e) if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("PostgreSQL at {} is unreachable under CI=true: {e}", postgres_url())
        }
        Err(e) => return eprintln!("skipped: PostgreSQL at {} is unreachable: {e}", postgres_url()),
    };
    let worker = Durable::builder()
        .store(store.clone())
        .register(quote)
        .register(price)
        .register(discount)
        .suspend_after(Duration::ZERO)
        .build()
        .unwrap();
    let handle = worker.run("quote-7", quote, 7).await.unwrap();
    // It records its price, then suspends on the approval.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while store.task("quote-7").await.unwrap().is_none_or(|t| t.state != TaskState::Suspended) {
        assert!(std::time::Instant::now() < deadline, "quote-7 never suspended");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // The setting changes; the approval comes; the replay calls discount, not price.
    DISCOUNTS.store(true, Ordering::SeqCst);
    stdout(&durable_pg(&schema, &["resolve", "quote-approval-7", "true"]).await);
    while store.task("quote-7").await.unwrap().is_none_or(|t| t.state != TaskState::Halted) {
        store.wait("quote-7", true).await.unwrap();
    }
    let listed = stdout(&durable_pg(&schema, &["ls", "--function", "quote"]).await);
    assert!(listed.starts_with("quote-7  quote  halted"), "{listed}");
    let tree = stdout(&durable_pg(&schema, &["tree", "quote-7"]).await);
    let root = tree.lines().next().unwrap_or_default();
    assert!(root.starts_with("quote-7  quote → poll://any@default  halted"), "{tree}");
    assert!(
        root.contains("the history recorded a call of \"price\"")
            && root.contains("\"discount\"")
            && root.contains("cli.rs:"),
        "the tree says why it halted: {tree}"
    );

    // The fix: the setting is put back. The worker runs on; only a resume replays it.
    DISCOUNTS.store(false, Ordering::SeqCst);
    let resumed = stdout(&durable_pg(&schema, &["resume", "quote-7"]).await);
    assert!(resumed.starts_with("resumed 1 halted task\nquote-7  quote  pending"), "{resumed}");
    let value = tokio::time::timeout(Duration::from_secs(60), handle).await.expect("it finishes once resumed");
    assert_eq!(value.unwrap(), 14);
    let got = stdout(&durable_pg(&schema, &["get", "quote-7"]).await);
    assert!(got.starts_with("quote-7  quote  resolved  = 14"), "{got}");
    let nothing = durable_pg(&schema, &["resume", "quote-7"]).await;
    assert!(String::from_utf8_lossy(&nothing.stderr).contains("nothing in quote-7 is halted"), "{nothing:?}");
    worker.shutdown().await.unwrap();
    drop(store);
    let (client, connection) = tokio_postgres::connect(&postgres_url(), tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    client.batch_execute(&format!("DROP SCHEMA {schema} CASCADE")).await.unwrap();
}

/// `durable serve`: on loopback by default, it prints where it listens (with the
/// sign-in address when actions are on) and serves the dashboard there; a short token
/// is refused.
#[cfg(feature = "dashboard")]
#[test]
fn serve_prints_its_address_and_serves_the_dashboard() {
    use std::io::{BufRead, Read, Write};
    let dir = tempfile::tempdir().unwrap();
    drop(SledStore::open(dir.path()).unwrap());
    let short = durable(dir.path(), &["serve", "--listen", "127.0.0.1:0", "--token", "abc"]);
    assert!(!short.status.success());
    assert!(String::from_utf8_lossy(&short.stderr).contains("at least 16 letters and digits"), "{short:?}");

    let mut server = Command::new(env!("CARGO_BIN_EXE_durable"))
        .arg("--store")
        .arg(dir.path())
        .args(["serve", "--listen", "127.0.0.1:0", "--actions"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("run the durable binary");
    let mut line = String::new();
    std::io::BufReader::new(server.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let url = line.trim().rsplit(' ').next().unwrap().to_owned();
    assert!(line.starts_with("the dashboard, with actions: http://127.0.0.1:"), "{line}");
    assert!(url.contains("/login?token=") && url.len() > 60, "a long random token: {url}");
    let address = url.trim_start_matches("http://").split('/').next().unwrap().to_owned();
    let mut stream = std::net::TcpStream::connect(&address).unwrap();
    write!(stream, "GET / HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    server.kill().unwrap();
    server.wait().unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains("<h1>Invocations</h1>"), "{response}");
}

#[durable::function(name = "hostile")]
async fn hostile(_ctx: &mut Context, _x: u64) -> durable::Result<u64> {
    Err(Error::terminal("\u{1b}]0;pwned\u{7}\u{1b}[2K\rall is well"))
}

/// Stored strings are shown as text: control characters escaped, long ids without
/// a panic; a limit out of range is refused; a deadline that never comes is `null` in
/// JSON; a reader that goes away ends the command quietly; a store that is not there
/// is an error, not a new store.
#[test]
fn hostile_stored_strings_and_arguments_stay_text_and_errors() {
    let dir = tempfile::tempdir().expect("a directory");
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let long = "x".repeat(70_000);
    runtime.block_on(async {
        let store: Arc<dyn Store> = Arc::new(SledStore::open(dir.path()).unwrap());
        let service = Durable::builder().store(store.clone()).register(hostile).max_payload(1 << 20).build().unwrap();
        assert!(service.run("evil", hostile, 1).await.unwrap().await.is_err());
        // An id of 70,000 bytes: only the store's own limit applies to a raw create.
        store
            .create(durable::store::CreatePromise::new(long.clone(), durable::Param::call("f", 1, "1".into())))
            .await
            .unwrap();
        for i in 0..300 {
            store
                .create(durable::store::CreatePromise::new(
                    format!("many-{i}"),
                    durable::Param::call("f", 1, "1".into()),
                ))
                .await
                .unwrap();
        }
        service.shutdown().await.unwrap();
    });
    // Whatever the runtime still holds of the store goes with it.
    drop(runtime);
    let listed = stdout(&durable(dir.path(), &["ls", "--limit", "1000"]));
    assert!(!listed.contains('\u{1b}') && !listed.contains('\r') && !listed.contains('\u{7}'), "{listed:?}");
    assert!(listed.contains("\\u{1b}]0;pwned\\u{7}"), "escaped, and shown: {listed}");
    assert!(listed.contains(&long), "the long id is listed whole");
    for args in [&["get", "evil"][..], &["tree", "evil"]] {
        let shown = stdout(&durable(dir.path(), args));
        assert!(!shown.contains('\u{1b}') && shown.contains("\\u{1b}"), "{args:?}: {shown:?}");
    }
    let json = stdout(&durable(dir.path(), &["--json", "get", "evil"]));
    let value: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert!(value["timeout_at"].is_null(), "never is null: {json}");
    let error: serde_json::Value = serde_json::from_str(value["value"].as_str().unwrap()).unwrap();
    assert!(error["message"].as_str().unwrap().contains('\u{1b}'), "JSON stays exact: {error}");

    for limit in ["0", "18446744073709551615", "10001"] {
        let refused = durable(dir.path(), &["ls", "--limit", limit]);
        assert!(!refused.status.success(), "--limit {limit}");
        assert!(String::from_utf8_lossy(&refused.stderr).contains("--limit"), "names the flag");
    }

    // `| head -1`: the reader goes after one line.
    let mut child = Command::new(env!("CARGO_BIN_EXE_durable"))
        .arg("--store")
        .arg(dir.path())
        .args(["ls", "--limit", "300"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let ended = child.wait_with_output().unwrap();
    assert!(ended.status.success(), "a broken pipe ends it quietly: {}", String::from_utf8_lossy(&ended.stderr));
    assert!(ended.stderr.is_empty(), "{}", String::from_utf8_lossy(&ended.stderr));

    let typo = dir.path().join("postgress:");
    let missing = durable(&typo, &["ls"]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no store at"), "{missing:?}");
    assert!(!typo.exists(), "no store was made");
}

#[cfg(feature = "dashboard")]
#[test]
fn a_token_on_the_command_line_is_warned_of() {
    let dir = tempfile::tempdir().expect("a directory");
    drop(SledStore::open(dir.path()).unwrap());
    let mut serve = Command::new(env!("CARGO_BIN_EXE_durable"))
        .arg("--store")
        .arg(dir.path())
        .args(["serve", "--listen", "127.0.0.1:0", "--token", "0123456789abcdef0123"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = std::io::BufReader::new(serve.stderr.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut stderr, &mut line).unwrap();
    serve.kill().unwrap();
    serve.wait().unwrap();
    assert!(line.contains("DURABLE_DASHBOARD_TOKEN"), "{line}");
}

/// `ls --state halted` lists the pending invocations whose task halted, and only
/// those.
#[test]
fn ls_lists_halted_invocations() {
    let dir = tempfile::tempdir().expect("a directory");
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    runtime.block_on(async {
        let store: Arc<dyn Store> = Arc::new(SledStore::open(dir.path()).unwrap());
        for id in ["stuck", "waiting"] {
            let mut req = durable::store::CreatePromise::new(id, durable::Param::call("f", 1, "1".into()));
            req.task = Some(durable::store::NewTask::new(durable::Target::any("g")));
            store.create(req).await.unwrap();
        }
        let claim = durable::store::Claim {
            group: "g".into(),
            pid: "w".into(),
            process: "w:1".into(),
            ttl: 60_000,
            max: 1,
            functions: Vec::new(),
        };
        let held = store.claim(claim).await.unwrap().remove(0);
        assert_eq!(held.task.id, "stuck", "the older one");
        let halt = durable::store::Release::Halt { error: "a fault".into(), code: None };
        store.release(&held.fence(), halt).await.unwrap();
    });
    drop(runtime);
    let halted = stdout(&durable(dir.path(), &["ls", "--state", "halted"]));
    assert!(halted.starts_with("stuck  f  halted"), "{halted}");
    assert_eq!(halted.lines().count(), 1, "{halted}");
    let pending = stdout(&durable(dir.path(), &["ls", "--state", "pending"]));
    assert_eq!(pending.lines().count(), 2, "{pending}");
}

#[test]
fn a_ten_thousand_level_chain_prints_as_a_tree_and_as_json() {
    let dir = tempfile::tempdir().expect("a directory");
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    runtime.block_on(async {
        let store = SledStore::open(dir.path()).unwrap();
        // Chosen ids, each created by the one before: one family of 10,001.
        let settled = |id: String, parent: Option<String>| {
            let mut p = durable::store::CreatePromise::new(id, durable::Param::call("f", 1, "1".into()));
            p.parent = parent;
            p.settled = Some((durable::State::Resolved, "1".into()));
            p
        };
        let mut family = vec![settled("chain".into(), None)];
        family.extend((1..=10_000).map(|n| {
            settled(format!("link-{n}"), Some(if n == 1 { "chain".into() } else { format!("link-{}", n - 1) }))
        }));
        store.import(family).await.unwrap();
    });
    drop(runtime);
    let tree = stdout(&durable(dir.path(), &["tree", "chain"]));
    let lines: Vec<&str> = tree.lines().collect();
    assert_eq!(lines.len(), 10_001);
    assert!(lines[10_000].starts_with("(level 10000) ") && lines[10_000].contains("link-10000"), "{}", lines[10_000]);
    assert!(lines[10_000].len() < 300, "the indent is capped: {} bytes", lines[10_000].len());
    let json = stdout(&durable(dir.path(), &["--json", "tree", "chain"]));
    assert_eq!(json.matches("\"promise\":").count(), 10_001);
    assert!(json.trim_end().ends_with(&"]}".repeat(10_001)), "every level is closed");
    assert!(json.contains("\"id\":\"link-10000\""));
}

/// A read command on a PostgreSQL schema without a store says so, and makes none.
#[tokio::test]
async fn a_read_command_on_a_missing_postgres_schema_is_an_error_and_creates_nothing() {
    let schema = format!("durable_cli_missing_{}", std::process::id());
    let refused = durable_pg(&schema, &["ls"]).await;
    assert!(!refused.status.success());
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(said.contains(&format!("store schema {schema:?}")) && said.contains("does not exist"), "{said}");
    let (client, connection) = tokio_postgres::connect(&postgres_url(), tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL at {} is unreachable: {e}", postgres_url()));
    tokio::spawn(connection);
    let made = client.query_opt("SELECT 1 FROM pg_namespace WHERE nspname = $1", &[&schema]).await.unwrap();
    assert!(made.is_none(), "the schema was created");
}

#[test]
fn limits_are_set_listed_and_removed_from_the_command_line() {
    let dir = tempfile::tempdir().expect("a directory");
    drop(SledStore::open(dir.path()).unwrap());
    let set = &["limits", "set", "payments", "--function", "charge", "--per-key", "--concurrency", "1"];
    assert_eq!(stdout(&durable(dir.path(), set)), "payments  function charge: 1 at once per key\n");
    let api = &["limits", "set", "api", "--function", "charge", "--rate", "10/1s", "--burst", "5"];
    assert_eq!(stdout(&durable(dir.path(), api)), "api  function charge: 10 per 1s, 5 at once after a pause\n");
    let listed = stdout(&durable(dir.path(), &["limits"]));
    assert_eq!(
        listed,
        "api  function charge: 10 per 1s, 5 at once after a pause: 0 executing, 0 waiting\n\
         payments  function charge: 1 at once per key: 0 executing, 0 waiting\n"
    );
    let json: serde_json::Value =
        serde_json::from_str(&stdout(&durable(dir.path(), &["--json", "limits", "list"]))).unwrap();
    assert_eq!(json[1]["limit"]["concurrency"], 1, "{json}");
    // A limit that cannot work is refused with what is wrong; nothing is written.
    let zero = durable(dir.path(), &["limits", "set", "none", "--function", "charge", "--concurrency", "0"]);
    assert!(!zero.status.success());
    let said = String::from_utf8_lossy(&zero.stderr);
    assert!(said.contains("limit \"none\" is refused: a concurrency of 0 would never run anything"), "{said}");
    let bad_rate = durable(dir.path(), &["limits", "set", "r", "--function", "charge", "--rate", "ten/1s"]);
    assert!(String::from_utf8_lossy(&bad_rate.stderr).contains("\"ten\" is not a count of starts"));
    assert_eq!(stdout(&durable(dir.path(), &["limits", "remove", "api"])), "removed api\n");
    let again = durable(dir.path(), &["limits", "remove", "api"]);
    assert!(String::from_utf8_lossy(&again.stderr).contains("no limit api"));
    assert_eq!(stdout(&durable(dir.path(), &["limits"])).lines().count(), 1);
}

#[test]
fn schedules_are_listed_paused_resumed_triggered_backfilled_and_deleted_from_the_command_line() {
    let dir = tempfile::tempdir().expect("a directory");
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    runtime.block_on(async {
        let store = SledStore::open(dir.path()).unwrap();
        let spec = durable::ScheduleSpec::cron("0 2 * * *").zone("Europe/Paris").target("poll://any@reports");
        let report = Remote::<String, String>::named("report");
        durable::Schedules::new(&store).create("nightly", spec, report.clone(), "sales".into()).await.unwrap();
        // And a call that starts in a day.
        let store: Arc<dyn Store> = Arc::new(store);
        let client = Durable::builder().store(store).group("client").build().unwrap();
        let later = client.rpc("tomorrow", report, "later".into()).target("poll://any@reports");
        drop(later.start_after(Duration::from_secs(24 * 3600)).await.unwrap());
        client.shutdown().await.unwrap();
    });
    // Its tasks, and the store they hold, go with the runtime.
    drop(runtime);
    let listed = stdout(&durable(dir.path(), &["ls"]));
    let tomorrow = listed.lines().find(|l| l.starts_with("tomorrow")).expect("listed at once");
    assert!(tomorrow.contains("pending") && tomorrow.contains("  starts 20"), "{tomorrow}");
    let listed = stdout(&durable(dir.path(), &["schedules"]));
    let mut lines = listed.lines();
    assert_eq!(
        lines.next(),
        Some(
            "nightly  report  active  cron \"0 2 * * *\" in Europe/Paris, skip when running, catch up 1h, \
             to poll://any@reports"
        )
    );
    let next = lines.next().expect("a second line");
    assert!(next.starts_with("    next 20") && next.contains(":00:00Z, fired 0, skipped 0"), "{next}");
    let paused = stdout(&durable(dir.path(), &["schedules", "pause", "nightly"]));
    assert!(paused.starts_with("nightly  report  paused  "), "{paused}");
    let resumed = stdout(&durable(dir.path(), &["schedules", "resume", "nightly"]));
    assert!(resumed.starts_with("nightly  report  active  "), "{resumed}");
    let fired = stdout(&durable(dir.path(), &["schedules", "trigger", "nightly"]));
    assert!(fired.starts_with("fired nightly@20"), "{fired}");
    let backfill =
        ["schedules", "backfill", "nightly", "--from", "2026-03-28T00:00:00Z", "--to", "2026-03-29T23:00:00Z"];
    assert_eq!(
        stdout(&durable(dir.path(), &backfill)),
        "2 fires, one after another\nnightly@2026-03-28T01:00:00Z\nnightly@2026-03-29T01:00:00Z\n"
    );
    let json: serde_json::Value =
        serde_json::from_str(&stdout(&durable(dir.path(), &["--json", "schedules", "list"]))).unwrap();
    assert_eq!((json[0]["fired"].as_u64(), json[0]["last"].as_str()), (Some(3), Some("nightly@2026-03-29T01:00:00Z")));
    let fire = stdout(&durable(dir.path(), &["get", "nightly@2026-03-28T01:00:00Z"]));
    assert!(fire.starts_with("nightly@2026-03-28T01:00:00Z  report  pending"), "{fire}");
    let bad = durable(dir.path(), &["schedules", "backfill", "nightly", "--from", "yesterday", "--to", "now"]);
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--from"), "{}", String::from_utf8_lossy(&bad.stderr));
    assert_eq!(stdout(&durable(dir.path(), &["schedules", "delete", "nightly"])), "deleted nightly\n");
    let again = durable(dir.path(), &["schedules", "pause", "nightly"]);
    assert!(String::from_utf8_lossy(&again.stderr).contains("nightly"), "{}", String::from_utf8_lossy(&again.stderr));
    assert_eq!(stdout(&durable(dir.path(), &["schedules"])), "no schedules\n");
}

#[durable::function]
async fn book(_ctx: &mut Context, account: String, delta: i64) -> durable::Result<i64> {
    Ok(if account.is_empty() { 0 } else { delta })
}

/// One step with its undo, then a wait for a person.
#[durable::function]
async fn transfer(ctx: &mut Context, amount: i64) -> durable::Result<i64> {
    let booked = ctx.lfc(book, ("alice".to_owned(), -amount)).compensate(book, ("alice".to_owned(), amount)).await?;
    ctx.promise::<()>().id("go").await?.await?;
    Ok(booked)
}

#[test]
fn a_saga_canceled_from_the_command_line_settles_after_its_undo() {
    let dir = tempfile::tempdir().expect("a directory");
    // Each service has a runtime of its own: dropped, it lets go of the store.
    let service = |wait_for: &'static str| {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        runtime.block_on(async {
            let store: Arc<dyn Store> = Arc::new(SledStore::open(dir.path()).unwrap());
            let service = Durable::builder().store(store.clone()).register(transfer).register(book).build().unwrap();
            if wait_for == "go" {
                let _handle = service.run("t", transfer, 5).await.unwrap();
            }
            while store.get(wait_for).await.unwrap().is_none_or(|p| !p.state.is_settled() && wait_for == "t") {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            service.shutdown().await.unwrap();
        })
    };
    service("go");
    let asked = stdout(&durable(dir.path(), &["cancel", "t"]));
    assert!(asked.contains("t  canceling"), "{asked}");
    let tree = stdout(&durable(dir.path(), &["tree", "t"]));
    assert!(tree.starts_with("t  transfer → poll://any@default  canceling"), "{tree}");
    assert!(tree.contains("1  book (undo: book)  resolved"), "{tree}");
    // A service starts again, runs the undo, and settles it canceled.
    service("t");
    let tree = stdout(&durable(dir.path(), &["tree", "t"]));
    let lines: Vec<&str> = tree.lines().collect();
    assert!(lines[0].starts_with("t  transfer → poll://any@default  canceled"), "{tree}");
    assert!(lines[1].contains("1  book (undo: book)  resolved"), "{tree}");
    assert!(lines[2].contains("1:undo  book  resolved"), "the undo follows its step: {tree}");
    assert!(tree.contains("t undid t.1 after: promise t was canceled"), "{tree}");
}
