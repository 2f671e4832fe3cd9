//! The `durable` command line on a sled store a service left: the tree, a promise as
//! JSON, the promises waiting for a person, resolving one, and clear errors.

use std::process::{Command, Output};
use std::sync::Arc;
use std::time::Duration;

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

    let resolved = stdout(&durable(dir.path(), &["resolve", "approval-7", "true"]));
    assert!(resolved.starts_with("approval-7  promise  resolved  = true"), "{resolved}");
    assert_eq!(stdout(&durable(dir.path(), &["external"])), "", "nothing waits any more");

    let bad = durable(dir.path(), &["resolve", "approval-7", "not json"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("the value must be JSON"), "{bad:?}");
    let missing = durable(dir.path(), &["tree", "nope"]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no promise nope"), "{missing:?}");
}
