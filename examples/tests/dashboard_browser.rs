//! The dashboard in a real browser: headless Chromium (Debian's `chromium` and
//! `chromium-driver`, which `bash .ci/test` installs), driven over WebDriver. It runs the
//! calculator, finds the evaluation's tree on its page, resolves a pending external
//! promise through the page, checks that an argument holding a script is shown as
//! text, not run, and sees the list refresh itself with a new invocation.
//!
//! `DURABLE_UPDATE_SCREENSHOT=1` writes the timeline's screenshot to
//! `docs/dashboard-timeline.png`, the README's picture.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use durable::dashboard::Dashboard;
use durable::prelude::*;
use durable::{State, Store};
use durable_examples::calculator::{self, clc, parse};
use fantoccini::{Client, ClientBuilder, Locator};

#[durable::function(name = "approve")]
async fn approve(ctx: &mut Context, amount: u64) -> durable::Result<bool> {
    let decision = ctx.promise::<bool>().id(format!("approval-{amount}")).await?;
    decision.await
}

#[durable::function(name = "echo")]
async fn echo(_ctx: &mut Context, text: String) -> durable::Result<String> {
    Ok(text)
}

const SCRIPT: &str = "<script>document.title='pwned'</script>";
const TOKEN: &str = "browser0test0token0123";

/// The WebDriver for Chromium; a missing browser fails the test, which cannot test
/// without it.
fn chromedriver() -> PathBuf {
    let path = std::env::var_os("CHROMEDRIVER").map(PathBuf::from).unwrap_or_else(|| "/usr/bin/chromedriver".into());
    assert!(
        path.exists() && std::path::Path::new("/usr/bin/chromium").exists(),
        "{} or /usr/bin/chromium is missing: install Debian's chromium and chromium-driver (`bash .ci/test` does)",
        path.display()
    );
    path
}

/// A free port on loopback.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Starts the WebDriver and connects a headless Chromium to it.
async fn browser(driver: &PathBuf) -> (Client, tokio::process::Child, tempfile::TempDir) {
    let port = free_port();
    let child = tokio::process::Command::new(driver)
        .arg(format!("--port={port}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start chromedriver");
    let profile = tempfile::tempdir().unwrap();
    let args = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1200,760",
    ]
    .into_iter()
    .map(String::from)
    .chain([format!("--user-data-dir={}", profile.path().display())])
    .collect::<Vec<_>>();
    let mut caps = serde_json::Map::new();
    caps.insert("goog:chromeOptions".into(), serde_json::json!({ "binary": "/usr/bin/chromium", "args": args }));
    // The driver takes a moment to listen: try for up to ten seconds.
    let url = format!("http://127.0.0.1:{port}");
    let mut tries = 0;
    let client = loop {
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        match ClientBuilder::new(connector).capabilities(caps.clone()).connect(&url).await {
            Ok(client) => break client,
            Err(e) if tries < 100 => {
                tries += 1;
                if tries == 100 {
                    panic!("chromedriver at {url} did not answer: {e}");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("chromedriver at {url}: {e}"),
        }
    };
    (client, child, profile)
}

/// Serves the dashboard, with actions, on a free port of loopback.
async fn serve(store: Arc<dyn Store>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let router = Dashboard::new(store).actions(TOKEN).router();
    tokio::spawn(async move { axum::serve(listener, router).await });
    address
}

#[tokio::test(flavor = "current_thread")]
async fn the_dashboard_in_a_browser() {
    let driver = chromedriver();
    // On sled, as the calculator runs by default: the timeline shows real times.
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(durable::SledStore::open(dir.path()).unwrap());
    // The calculator's evaluation, a payment that waits for an approval, and a call
    // whose argument is a script.
    let roles = calculator::all_roles(store.clone()).unwrap();
    let seed = roles[0].run("seed", clc, parse("(1 + 2) * (3 - 4)").unwrap()).await.unwrap();
    assert_eq!(seed.await.unwrap(), -3);
    let durable = Durable::builder().store(store.clone()).register(approve).register(echo).build().unwrap();
    durable.run("xss", echo, SCRIPT.to_owned()).await.unwrap().await.unwrap();
    let payment = durable.run("payment-7", approve, 7).await.unwrap();
    let tree = durable.promises().tree("seed").await.unwrap().unwrap();
    let promises = count(&tree);
    let address = serve(store.clone()).await;
    let (client, _driver, _profile) = browser(&driver).await;
    let page = |path: &str| format!("http://{address}{path}");

    // The evaluation's tree: a bar for each of its promises.
    client.goto(&page("/invocation?id=seed")).await.unwrap();
    let bars = client.find_all(Locator::Css("svg a.bar")).await.unwrap();
    assert_eq!(bars.len(), promises, "a bar for each promise of the evaluation");
    assert_eq!(promises, 10, "the root, six operands and three operators");
    let summary = client.find(Locator::Css("p.summary")).await.unwrap().text().await.unwrap();
    assert!(summary.contains("10 promises"), "{summary}");
    if std::env::var_os("DURABLE_UPDATE_SCREENSHOT").is_some() {
        let png = client.screenshot().await.unwrap();
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/dashboard-timeline.png");
        std::fs::write(&path, png).unwrap();
    }
    // Clicking the operator's bar shows its arguments and value.
    client.find(Locator::Css("a.bar[data-id='seed.3']")).await.unwrap().click().await.unwrap();
    let details = client.wait().for_element(Locator::Css("#details h2")).await.unwrap().text().await.unwrap();
    assert_eq!(details, "Promise seed.3");
    let shown = client.find(Locator::Css("#details")).await.unwrap().text().await.unwrap();
    assert!(shown.contains("[3,-1]") && shown.contains("-3"), "{shown}");

    // Signed in with the token, the page resolves the pending approval.
    client.goto(&page(&format!("/login?token={TOKEN}"))).await.unwrap();
    client.goto(&page("/invocation?id=payment-7&node=approval-7")).await.unwrap();
    let state = client.find(Locator::Css("#details .state")).await.unwrap().text().await.unwrap();
    assert_eq!(state, "pending");
    client.find(Locator::Css("input[name='value']")).await.unwrap().send_keys("true").await.unwrap();
    client.find(Locator::Css("button[value='resolve']")).await.unwrap().click().await.unwrap();
    let state = match client
        .wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css("#details .state.resolved"))
        .await
    {
        Ok(state) => state,
        Err(e) => panic!("the page did not show the promise resolved ({e}): {}", client.source().await.unwrap()),
    };
    assert_eq!(state.text().await.unwrap(), "resolved");
    assert_eq!(store.get("approval-7").await.unwrap().unwrap().state, State::Resolved);
    assert!(payment.await.unwrap(), "the payment went on with the approval");

    // A script in an argument is shown as text and does not run.
    client.goto(&page("/invocation?id=xss")).await.unwrap();
    let argument = client.find(Locator::Css("#details pre.value")).await.unwrap().text().await.unwrap();
    assert_eq!(argument, serde_json::to_string(SCRIPT).unwrap());
    let title = client.execute("return document.title", vec![]).await.unwrap();
    assert_eq!(title.as_str(), Some("xss · durable"));

    // The list refreshes itself: an invocation started after the page loaded appears.
    client.goto(&page("/")).await.unwrap();
    assert!(client.find(Locator::Css("a[href='/invocation?id=late']")).await.is_err());
    durable.run("late", echo, "late".to_owned()).await.unwrap().await.unwrap();
    let late =
        client.wait().at_most(Duration::from_secs(10)).for_element(Locator::Css("a[href='/invocation?id=late']"));
    assert_eq!(late.await.expect("the new invocation appears within a refresh").text().await.unwrap(), "late");

    client.close().await.unwrap();
}

fn count(node: &durable::Node) -> usize {
    1 + node.children.iter().map(count).sum::<usize>()
}
