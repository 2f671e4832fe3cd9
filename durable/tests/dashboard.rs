//! The dashboard over HTTP, without a browser: what its pages show, that every value
//! from the store is escaped, that bad addresses get a clear 400 or 404, and that its
//! actions need the token and a request from its own pages. (`examples/tests/
//! dashboard_browser.rs` drives it in a real browser.)

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode, header};
use durable::dashboard::Dashboard;
use durable::prelude::*;
use std::time::Duration;

use durable::{State, Store, TaskState};
use tower::ServiceExt;

#[durable::function(name = "echo")]
async fn echo(_ctx: &mut Context, text: String) -> durable::Result<String> {
    Ok(text)
}

#[durable::function(name = "approve")]
async fn approve(ctx: &mut Context, amount: u64) -> durable::Result<bool> {
    let decision = ctx.promise::<bool>().id(format!("approval-{amount}")).await?;
    decision.await
}

const SCRIPT: &str = "<script>document.title='pwned'</script>";
const TOKEN: &str = "0123456789abcdef0123";

/// A store with a finished `echo` of a script and an `approve` waiting on
/// `approval-7`, and the runtime that ran them.
async fn store() -> (Arc<dyn Store>, Durable) {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let durable = Durable::builder().store(store.clone()).register(echo).register(approve).build().unwrap();
    assert_eq!(durable.run("xss", echo, SCRIPT.to_owned()).await.unwrap().await.unwrap(), SCRIPT);
    // Left waiting for its approval: the handle is not needed.
    let _waiting = durable.run("payment-7", approve, 7).await.unwrap();
    while store.get("approval-7").await.unwrap().is_none() {
        tokio::task::yield_now().await;
    }
    (store, durable)
}

async fn send(router: &Router, request: Request<Body>) -> (StatusCode, HeaderMap, String) {
    let response = router.clone().oneshot(request).await.unwrap();
    let (parts, body) = response.into_parts();
    let body = axum::body::to_bytes(body, 1 << 24).await.unwrap();
    (parts.status, parts.headers, String::from_utf8(body.to_vec()).unwrap())
}

async fn get(router: &Router, uri: &str) -> (StatusCode, HeaderMap, String) {
    send(router, Request::get(uri).body(Body::empty()).unwrap()).await
}

/// A POST of an action form, with these extra headers.
async fn post(router: &Router, form: &str, headers: &[(&str, &str)]) -> (StatusCode, HeaderMap, String) {
    let mut request = Request::post("/action").header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    send(router, request.body(Body::from(form.to_owned())).unwrap()).await
}

#[tokio::test]
async fn values_from_the_store_are_escaped() {
    let (store, _durable) = store().await;
    let router = Dashboard::new(store).router();
    let (status, headers, body) = get(&router, "/invocation?id=xss").await;
    assert_eq!(status, StatusCode::OK);
    assert!(!body.contains(SCRIPT), "the argument is markup on the page: {body}");
    assert!(body.contains("&lt;script&gt;document.title="), "the argument is not shown as text: {body}");
    let csp = headers.get(header::CONTENT_SECURITY_POLICY).unwrap().to_str().unwrap();
    assert!(csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"), "{csp}");
}

#[tokio::test]
async fn the_invocation_page_draws_every_promise_of_the_tree() {
    let (store, _durable) = store().await;
    let router = Dashboard::new(store).router();
    let (status, _, body) = get(&router, "/invocation?id=payment-7").await;
    assert_eq!(status, StatusCode::OK);
    // The invocation and its external promise, as bars that link to their details.
    assert_eq!(body.matches("class=\"bar\"").count(), 2, "{body}");
    assert!(body.contains("data-id=\"approval-7\""), "{body}");
    assert!(body.contains("2 promises"), "{body}");
    let (_, _, detail) = get(&router, "/invocation?id=payment-7&node=approval-7").await;
    assert!(detail.contains("Promise <code>approval-7</code>"), "{detail}");
}

#[tokio::test]
async fn bad_addresses_get_a_clear_400_or_404() {
    let (store, _durable) = store().await;
    let router = Dashboard::new(store).router();
    for (uri, status, says) in [
        ("/invocation", StatusCode::BAD_REQUEST, "the address names no invocation"),
        ("/invocation?id=", StatusCode::BAD_REQUEST, "the address names no invocation"),
        ("/invocation?id=%FF%FE", StatusCode::NOT_FOUND, "no promise"),
        ("/invocation?id=nobody", StatusCode::NOT_FOUND, "no promise nobody"),
        ("/invocation?id=%00%3Cb%3E", StatusCode::BAD_REQUEST, "id contains a NUL byte"),
        ("/?state=bogus", StatusCode::BAD_REQUEST, "state &quot;bogus&quot; is not one of"),
        ("/?since=soon", StatusCode::BAD_REQUEST, "since &quot;soon&quot; is not a number of seconds"),
        ("/?after=nowhere", StatusCode::BAD_REQUEST, "is not a cursor"),
        ("/rows?state=bogus", StatusCode::BAD_REQUEST, "is not one of"),
    ] {
        let (got, _, body) = get(&router, uri).await;
        assert_eq!(got, status, "{uri}: {body}");
        assert!(body.contains(says), "{uri}: {body}");
    }
    // A node that is not in the tree shows the invocation's own details.
    let (got, _, body) = get(&router, "/invocation?id=xss&node=elsewhere").await;
    assert_eq!(got, StatusCode::OK);
    assert!(body.contains("Promise <code>xss</code>"), "{body}");
}

#[tokio::test]
async fn read_only_unless_given_a_token() {
    let (store, _durable) = store().await;
    let router = Dashboard::new(store.clone()).router();
    let (_, _, page) = get(&router, "/invocation?id=payment-7&node=approval-7").await;
    assert!(!page.contains("method=\"post\""), "a read-only page offers an action: {page}");
    let (status, _, _) = post(&router, &format!("token={TOKEN}&action=resolve&id=approval-7&value=true"), &[]).await;
    assert!(matches!(status, StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED), "{status}");
    let (status, _, _) = get(&router, &format!("/login?token={TOKEN}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(store.get("approval-7").await.unwrap().unwrap().state, State::Pending);
}

#[tokio::test]
async fn actions_need_the_token_and_a_request_from_the_dashboard() {
    let (store, durable) = store().await;
    let router = Dashboard::new(store.clone()).actions(TOKEN).router();
    // Signing in: a wrong token is refused; the right one sets a strict cookie.
    let (status, _, _) = get(&router, "/login?token=guess").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, headers, _) = get(&router, &format!("/login?token={TOKEN}")).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let cookie = headers.get(header::SET_COOKIE).unwrap().to_str().unwrap().to_owned();
    assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"), "{cookie}");
    // Without the cookie a page offers no action; with it, the forms carry the token.
    let (_, _, page) = get(&router, "/invocation?id=payment-7&node=approval-7").await;
    assert!(!page.contains("method=\"post\""), "{page}");
    let request = Request::get("/invocation?id=payment-7&node=approval-7")
        .header(header::COOKIE, cookie.split(';').next().unwrap())
        .body(Body::empty())
        .unwrap();
    let (_, _, page) = send(&router, request).await;
    assert!(page.contains(&format!("name=\"token\" value=\"{TOKEN}\"")), "{page}");
    assert!(page.contains("value=\"resolve\""), "{page}");

    let resolve = format!("token={TOKEN}&action=resolve&id=approval-7&value=true&back=payment-7");
    let host = ("host", "127.0.0.1:8080");
    for (form, headers, status) in [
        (
            "token=guess&action=resolve&id=approval-7&value=true".to_owned(),
            vec![host, ("origin", "http://127.0.0.1:8080")],
            StatusCode::FORBIDDEN,
        ),
        (resolve.clone(), vec![host, ("origin", "http://evil.example")], StatusCode::FORBIDDEN),
        (resolve.clone(), vec![host, ("sec-fetch-site", "cross-site")], StatusCode::FORBIDDEN),
        (
            format!("token={TOKEN}&action=resolve&id=approval-7&value=yes"),
            vec![host, ("origin", "http://127.0.0.1:8080")],
            StatusCode::BAD_REQUEST,
        ),
        (format!("token={TOKEN}&action=explode&id=approval-7"), vec![host], StatusCode::BAD_REQUEST),
    ] {
        let (got, _, body) = post(&router, &form, &headers).await;
        assert_eq!(got, status, "{form} {headers:?}: {body}");
        assert_eq!(store.get("approval-7").await.unwrap().unwrap().state, State::Pending);
    }
    // From the dashboard's own page, with the token: done, and back to the invocation.
    let (status, headers, body) =
        post(&router, &resolve, &[host, ("origin", "http://127.0.0.1:8080"), ("sec-fetch-site", "same-origin")]).await;
    assert_eq!(status, StatusCode::SEE_OTHER, "{body}");
    assert_eq!(headers.get(header::LOCATION).unwrap(), "/invocation?id=payment-7&node=approval-7");
    assert_eq!(store.get("approval-7").await.unwrap().unwrap().state, State::Resolved);
    let handle = durable.run("payment-7", approve, 7).await.unwrap();
    assert!(handle.await.unwrap());
    // A restart goes to the new invocation's page; a cancel settles a running one.
    let (status, headers, body) =
        post(&router, &format!("token={TOKEN}&action=restart&id=payment-7&new_id=payment-7-again"), &[host]).await;
    assert_eq!(status, StatusCode::SEE_OTHER, "{body}");
    assert_eq!(headers.get(header::LOCATION).unwrap(), "/invocation?id=payment-7-again");
    assert!(store.get("payment-7-again").await.unwrap().is_some());
    let _waiting = durable.run("payment-8", approve, 8).await.unwrap();
    let (status, headers, body) =
        post(&router, &format!("token={TOKEN}&action=cancel&id=payment-8&back=attention"), &[host]).await;
    assert_eq!(status, StatusCode::SEE_OTHER, "{body}");
    assert_eq!(headers.get(header::LOCATION).unwrap(), "/attention");
    assert_eq!(store.get("payment-8").await.unwrap().unwrap().state, State::RejectedCanceled);
    let rejected = durable.run("payment-9", approve, 9).await.unwrap();
    while store.get("approval-9").await.unwrap().is_none() {
        tokio::task::yield_now().await;
    }
    let (status, _, body) = post(
        &router,
        &format!("token={TOKEN}&action=reject&id=approval-9&message=over+budget&back=payment-9"),
        &[host],
    )
    .await;
    assert_eq!(status, StatusCode::SEE_OTHER, "{body}");
    assert_eq!(rejected.await.unwrap_err().to_string(), "over budget");
    // An action on a promise that does not exist says so.
    let (status, _, body) = post(&router, &format!("token={TOKEN}&action=cancel&id=nobody"), &[host]).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
}

#[tokio::test]
async fn mounted_under_a_path_its_links_keep_the_path() {
    let (store, _durable) = store().await;
    let app = Router::new().nest("/ops/durable", Dashboard::new(store.clone()).router());
    let (status, _, body) = get(&app, "/ops/durable").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.contains("href=\"/ops/durable/assets/app.css\""), "{body}");
    assert!(body.contains("href=\"/ops/durable/invocation?id=xss\""), "{body}");
    assert!(body.contains("data-live=\"/ops/durable/rows?\""), "{body}");
    // Every link it gives answers: the list's own too.
    assert!(body.contains("<a href=\"/ops/durable\" class=\"current\">Invocations</a>"), "{body}");
    assert!(body.contains("action=\"/ops/durable\""), "{body}");
    let (status, _, _) = get(&app, "/ops/durable?state=pending").await;
    assert_eq!(status, StatusCode::OK);
    // Signed in there, the cookie covers the dashboard's path, and no more.
    let app = Router::new().nest("/ops/durable", Dashboard::new(store.clone()).actions(TOKEN).router());
    let (status, headers, _) = get(&app, &format!("/ops/durable/login?token={TOKEN}")).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(headers.get(header::LOCATION).unwrap(), "/ops/durable");
    let cookie = headers.get(header::SET_COOKIE).unwrap().to_str().unwrap();
    assert!(cookie.contains("; Path=/ops/durable;"), "{cookie}");
    let (status, headers, _) = get(&app, "/ops/durable/assets/app.js").await;
    assert_eq!(status, StatusCode::OK);
    assert!(headers.get(header::CONTENT_TYPE).unwrap().to_str().unwrap().starts_with("text/javascript"));
}

#[tokio::test]
async fn the_list_filters_and_the_other_pages_show_what_needs_a_look() {
    let (store, _durable) = store().await;
    let limit = durable::Limit::new("<b>api</b>").function("echo").per_key().concurrency(3);
    store.set_limit(limit, true).await.unwrap();
    let router = Dashboard::new(store).router();
    let (_, _, pending) = get(&router, "/?state=pending").await;
    assert!(pending.contains(">payment-7<") && !pending.contains(">xss<"), "{pending}");
    let (_, _, echoes) = get(&router, "/rows?function=echo").await;
    assert!(echoes.contains(">xss<") && !echoes.contains(">payment-7<"), "{echoes}");
    let (_, _, attention) = get(&router, "/attention").await;
    assert!(attention.contains("Waiting for someone outside (1)") && attention.contains(">approval-7<"), "{attention}");
    assert!(attention.contains("Halted (0)"), "{attention}");
    let (_, _, workers) = get(&router, "/workers").await;
    assert!(workers.contains("<code>default</code>"), "{workers}");
    // The limits, and what each holds back; a stored name is shown as text.
    assert!(workers.contains("<code>&lt;b&gt;api&lt;/b&gt;</code>"), "{workers}");
    assert!(workers.contains("<td>function echo: 3 at once per key</td>"), "{workers}");
}

static FAILED_ONCE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Fails its first attempt.
#[durable::function(name = "flaky", retry = Retry::Constant { delay: Duration::from_secs(1), max_attempts: 3 })]
async fn flaky(_ctx: &mut Context, x: u64) -> durable::Result<u64> {
    if !FAILED_ONCE.swap(true, std::sync::atomic::Ordering::SeqCst) {
        return Err(Error::new("the first attempt fails"));
    }
    Ok(x)
}

#[tokio::test(start_paused = true)]
async fn a_retry_wait_is_marked_on_the_timeline() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let durable = Durable::builder().store(store.clone()).register(flaky).build().unwrap();
    assert_eq!(durable.run("flaky-1", flaky, 4).await.unwrap().await.unwrap(), 4);
    let (_, _, page) = get(&Dashboard::new(store).router(), "/invocation?id=flaky-1").await;
    assert!(page.contains("r1 retry wait, before attempt 2"), "{page}");
    assert!(page.contains("class=\"s-resolved timer\""), "the wait is drawn as a timer: {page}");
}

/// Whether the setting `quote` reads is the changed one.
static DISCOUNTS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

#[durable::function(name = "price")]
async fn price(_ctx: &mut Context, x: u64) -> durable::Result<u64> {
    Ok(x * 2)
}

#[durable::function(name = "discount")]
async fn discount(_ctx: &mut Context, x: u64) -> durable::Result<u64> {
    Ok(x / 2)
}

/// Reads a setting the history does not record: a change of it between a run and its
/// replay is a nondeterminism.
#[durable::function(name = "quote")]
async fn quote(ctx: &mut Context, x: u64) -> durable::Result<u64> {
    let discounts = DISCOUNTS.load(std::sync::atomic::Ordering::SeqCst);
    let base = if discounts { ctx.lfc(discount, x).await? } else { ctx.lfc(price, x).await? };
    let approved = ctx.promise::<bool>().id(format!("quote-approval-{x}")).await?.await?;
    Ok(if approved { base } else { 0 })
}

/// A suspended invocation is drawn dashed; once it halts on nondeterminism, the
/// attention page lists it, its details give the call and file:line, and a resume
/// through the page delivers it again.
#[tokio::test(start_paused = true)]
async fn suspension_and_a_nondeterminism_halt_show_and_a_resume_works() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let durable = Durable::builder()
        .store(store.clone())
        .register(quote)
        .register(price)
        .register(discount)
        .suspend_after(Duration::ZERO)
        .build()
        .unwrap();
    let router = Dashboard::new(store.clone()).actions(TOKEN).router();
    let handle = durable.run("quote-7", quote, 7).await.unwrap();
    while store.task("quote-7").await.unwrap().is_none_or(|t| t.state != TaskState::Suspended) {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let (_, _, page) = get(&router, "/invocation?id=quote-7").await;
    assert!(page.contains("class=\"s-suspended\""), "{page}");

    // The setting changes, the approval comes, and the replay calls another function.
    DISCOUNTS.store(true, std::sync::atomic::Ordering::SeqCst);
    durable.promises().resolve("quote-approval-7", &true).await.unwrap();
    while store.task("quote-7").await.unwrap().is_none_or(|t| t.state != TaskState::Halted) {
        store.wait("quote-7", true).await.unwrap();
    }
    let (_, _, attention) = get(&router, "/attention").await;
    assert!(attention.contains("Halted (1)") && attention.contains(">quote-7<"), "{attention}");
    let (_, _, page) = get(&router, "/invocation?id=quote-7").await;
    assert!(page.contains("class=\"s-halted\""), "{page}");
    assert!(
        page.contains("the history recorded a call of &quot;price&quot;") && page.contains("dashboard.rs:"),
        "the details say what differed and where: {page}"
    );

    // Put back, and resumed through the page: it finishes.
    DISCOUNTS.store(false, std::sync::atomic::Ordering::SeqCst);
    let host = ("host", "127.0.0.1:8080");
    let (status, _, body) =
        post(&router, &format!("token={TOKEN}&action=resume&id=quote-7&back=quote-7"), &[host]).await;
    assert_eq!(status, StatusCode::SEE_OTHER, "{body}");
    assert_eq!(handle.await.unwrap(), 14);
    let (status, _, body) = post(&router, &format!("token={TOKEN}&action=resume&id=quote-7"), &[host]).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(body.contains("nothing in quote-7 is halted"), "{body}");
}

/// Values the store accepts but that are far from ordinary: a deadline past the
/// year 9999, a retry wait numbered `u32::MAX`, a creator tag that names the
/// promise itself. Each page still answers.
#[tokio::test(start_paused = true)]
async fn extreme_stored_values_still_draw() {
    let (store, durable) = store().await;
    // A deadline 300e9 seconds on: past the year 9999.
    let far = durable.rpc("far", echo, "x".to_owned()).timeout(Duration::from_secs(300_000_000_000));
    let _far = far.tags([("durable:parent", "far")]).await.unwrap();
    let mut wait = durable::store::CreatePromise::new("xss.r4294967295", durable::Param::Timer);
    wait.parent = Some("xss".into());
    wait.settled = Some((State::Resolved, "null".into()));
    store.create(wait).await.unwrap();
    let router = Dashboard::new(store.clone()).router();
    let (status, _, body) = get(&router, "/invocation?id=far&node=far").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.contains("ms after 1970"), "the far deadline, written in ms");
    let (status, _, body) = get(&router, "/invocation?id=xss").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.contains("retry wait, before attempt 4294967296"), "{body}");
    let (status, _, _) = get(&router, "/").await;
    assert_eq!(status, StatusCode::OK);
}

/// A NUL byte in an id, a function or a cursor is a 400 that says so, on
/// PostgreSQL too (which cannot look for one).
#[tokio::test]
async fn a_nul_byte_is_a_clear_400_on_postgres() {
    let url =
        std::env::var("DURABLE_POSTGRES_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let schema = format!("durable_dashboard_nul_{}", std::process::id());
    let store = durable::store::PostgresStore::options(&url)
        .schema(&schema)
        .connect()
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL at {url} is unreachable: {e}"));
    let router = Dashboard::new(Arc::new(store)).router();
    for uri in ["/invocation?id=a%00b", "/invocation?id=a&node=%00", "/?function=f%00", "/rows?after=1:%00"] {
        let (status, _, body) = get(&router, uri).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{uri}: {body}");
        assert!(body.contains("NUL byte"), "{uri}: {body}");
    }
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    client.batch_execute(&format!("DROP SCHEMA {schema} CASCADE")).await.unwrap();
}

/// The dashboard answers to IP addresses and localhost, and to names it is told of;
/// a request for another name (a page that rebound its own name to this machine) is
/// refused.
#[tokio::test]
async fn a_request_for_another_host_is_refused() {
    let (store, _durable) = store().await;
    let with_host = |host: &str| Request::get("/").header(header::HOST, host).body(Body::empty()).unwrap();
    let router = Dashboard::new(store.clone()).router();
    for host in ["127.0.0.1:8080", "localhost:8080", "LOCALHOST", "[::1]:8080", "10.1.2.3"] {
        let (status, _, body) = send(&router, with_host(host)).await;
        assert_eq!(status, StatusCode::OK, "{host}: {body}");
    }
    for host in ["rebind.attacker.example", "rebind.attacker.example:8080", "dash.example"] {
        let (status, _, body) = send(&router, with_host(host)).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{host}");
        assert!(body.contains("does not answer to the host"), "{body}");
        assert!(!body.contains("payment-7"), "nothing of the store is shown");
    }
    let named = Dashboard::new(store).host("dash.example").router();
    let (status, _, _) = send(&named, with_host("dash.example:443")).await;
    assert_eq!(status, StatusCode::OK, "a name it was told of");
}

mod served {
    //! `Dashboard::serve` over real connections.

    use std::sync::Arc;
    use std::time::Duration;

    use durable::dashboard::{Dashboard, HEADER_TIMEOUT, MAX_CONNECTIONS};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    /// Serves a dashboard over `store` on a free loopback port.
    async fn serve(store: Arc<dyn durable::Store>) -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(Dashboard::new(store).serve(listener));
        address
    }

    /// The status line of a whole GET of `path` on a new connection.
    async fn status_of(address: std::net::SocketAddr, path: &str) -> String {
        let mut stream = TcpStream::connect(address).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await.unwrap();
        String::from_utf8_lossy(&answer).lines().next().unwrap_or_default().to_owned()
    }

    /// A connection that has sent half a request's headers.
    async fn half_sent(address: std::net::SocketAddr) -> TcpStream {
        let mut stream = TcpStream::connect(address).await.unwrap();
        stream.write_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n").await.unwrap();
        stream
    }

    /// Whether the server closed `stream` within `patience` (virtual time).
    async fn closed_within(stream: &mut TcpStream, patience: Duration) -> bool {
        let mut byte = [0u8; 1];
        matches!(tokio::time::timeout(patience, stream.read(&mut byte)).await, Ok(Ok(0) | Err(_)))
    }

    #[tokio::test(start_paused = true)]
    async fn a_half_sent_request_is_closed_after_the_header_timeout() {
        let address = serve(Arc::new(durable::MemoryStore::new())).await;
        let mut stream = half_sent(address).await;
        let started = tokio::time::Instant::now();
        assert!(closed_within(&mut stream, HEADER_TIMEOUT * 6).await, "a half-sent request stays open");
        assert!(started.elapsed() >= HEADER_TIMEOUT, "closed only once its time was up");
        assert_eq!(status_of(address, "/").await, "HTTP/1.1 200 OK");
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_over_the_limit_is_closed_and_the_others_are_answered_later() {
        let address = serve(Arc::new(durable::MemoryStore::new())).await;
        let mut held = Vec::new();
        for _ in 0..MAX_CONNECTIONS {
            held.push(half_sent(address).await);
        }
        let mut one_more = half_sent(address).await;
        let started = tokio::time::Instant::now();
        assert!(closed_within(&mut one_more, HEADER_TIMEOUT / 2).await, "a connection over the limit is kept");
        assert!(started.elapsed() < HEADER_TIMEOUT / 2);
        // The held ones time out, and their places are free again.
        for stream in &mut held {
            assert!(closed_within(stream, HEADER_TIMEOUT * 2).await);
        }
        assert_eq!(status_of(address, "/").await, "HTTP/1.1 200 OK");
    }

    /// A store whose `get` of `slow` says so and blocks its thread until let go, as a
    /// long read of a disk-backed store does.
    #[derive(Debug)]
    struct Blocking {
        inner: Arc<dyn durable::Store>,
        entered: tokio::sync::mpsc::UnboundedSender<()>,
        go: std::sync::Mutex<std::sync::mpsc::Receiver<()>>,
    }

    #[async_trait::async_trait]
    impl durable::Store for Blocking {
        async fn now(&self) -> Result<durable::Millis, durable::StoreError> {
            self.inner.now().await
        }
        async fn create(
            &self,
            r: durable::store::CreatePromise,
        ) -> Result<durable::store::Created, durable::StoreError> {
            self.inner.create(r).await
        }
        async fn settle(&self, r: durable::store::SettlePromise) -> Result<durable::Promise, durable::StoreError> {
            self.inner.settle(r).await
        }
        async fn import(&self, f: Vec<durable::store::CreatePromise>) -> Result<(), durable::StoreError> {
            self.inner.import(f).await
        }
        async fn get(&self, id: &str) -> Result<Option<durable::Promise>, durable::StoreError> {
            if id == "slow" {
                self.entered.send(()).unwrap();
                self.go.lock().unwrap().recv().unwrap();
            }
            self.inner.get(id).await
        }
        async fn search(&self, s: durable::store::Search) -> Result<durable::store::Page, durable::StoreError> {
            self.inner.search(s).await
        }
        async fn invocations(
            &self,
            q: durable::store::Invocations,
        ) -> Result<durable::store::Listing, durable::StoreError> {
            self.inner.invocations(q).await
        }
        async fn task(&self, id: &str) -> Result<Option<durable::Task>, durable::StoreError> {
            self.inner.task(id).await
        }
        async fn claim(&self, c: durable::store::Claim) -> Result<Vec<durable::store::Acquired>, durable::StoreError> {
            self.inner.claim(c).await
        }
        async fn heartbeat(
            &self,
            p: &str,
            h: &[durable::Fence],
            t: durable::Millis,
        ) -> Result<Vec<durable::Fence>, durable::StoreError> {
            self.inner.heartbeat(p, h, t).await
        }
        async fn release(&self, f: &durable::Fence, how: durable::store::Release) -> Result<(), durable::StoreError> {
            self.inner.release(f, how).await
        }
        async fn suspend(&self, f: &durable::Fence, a: &[String]) -> Result<bool, durable::StoreError> {
            self.inner.suspend(f, a).await
        }
        async fn resume_halted(
            &self,
            g: &str,
            c: &std::collections::BTreeMap<String, u64>,
        ) -> Result<usize, durable::StoreError> {
            self.inner.resume_halted(g, c).await
        }
        async fn request_cancel(&self, id: &str) -> Result<Option<durable::Promise>, durable::StoreError> {
            self.inner.request_cancel(id).await
        }
        async fn resume(&self, id: &str) -> Result<bool, durable::StoreError> {
            self.inner.resume(id).await
        }
        async fn release_predecessors(&self, g: &str, p: &str, q: &str) -> Result<usize, durable::StoreError> {
            self.inner.release_predecessors(g, p, q).await
        }
        async fn purge(&self, p: durable::store::Purge) -> Result<usize, durable::StoreError> {
            self.inner.purge(p).await
        }
        async fn tick(&self) -> Result<durable::store::Tick, durable::StoreError> {
            self.inner.tick().await
        }
        async fn announce(&self, w: &durable::store::Worker, ttl: durable::Millis) -> Result<(), durable::StoreError> {
            self.inner.announce(w, ttl).await
        }
        async fn workers(&self) -> Result<Vec<durable::store::Worker>, durable::StoreError> {
            self.inner.workers().await
        }
        async fn set_limit(&self, limit: durable::Limit, replace: bool) -> Result<durable::Limit, durable::StoreError> {
            self.inner.set_limit(limit, replace).await
        }
        async fn remove_limit(&self, name: &str) -> Result<bool, durable::StoreError> {
            self.inner.remove_limit(name).await
        }
        async fn limits(&self) -> Result<Vec<durable::LimitState>, durable::StoreError> {
            self.inner.limits().await
        }
        async fn put_schedule(
            &self,
            schedule: durable::Schedule,
            replace: bool,
        ) -> Result<durable::Schedule, durable::StoreError> {
            self.inner.put_schedule(schedule, replace).await
        }
        async fn update_schedule(
            &self,
            schedule: durable::Schedule,
            fires: Vec<durable::store::CreatePromise>,
        ) -> Result<bool, durable::StoreError> {
            self.inner.update_schedule(schedule, fires).await
        }
        async fn remove_schedule(&self, id: &str) -> Result<bool, durable::StoreError> {
            self.inner.remove_schedule(id).await
        }
        async fn schedule(&self, id: &str) -> Result<Option<durable::Schedule>, durable::StoreError> {
            self.inner.schedule(id).await
        }
        async fn schedules(&self, due: Option<durable::Millis>) -> Result<Vec<durable::Schedule>, durable::StoreError> {
            self.inner.schedules(due).await
        }
        async fn wait(&self, id: &str, halted: bool) -> Result<(), durable::StoreError> {
            self.inner.wait(id, halted).await
        }
        fn ready(&self, group: &str) -> tokio::sync::watch::Receiver<u64> {
            self.inner.ready(group)
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_page_that_blocks_its_thread_holds_up_no_other_request() {
        let (go, wait) = std::sync::mpsc::channel();
        let (entered, mut inside) = tokio::sync::mpsc::unbounded_channel();
        let store = Arc::new(Blocking { inner: Arc::new(durable::MemoryStore::new()), entered, go: wait.into() });
        let address = serve(store).await;
        let slow = tokio::spawn(status_of(address, "/invocation?id=slow"));
        inside.recv().await.unwrap();
        // Answered while the slow page holds a thread.
        for _ in 0..5 {
            assert_eq!(status_of(address, "/").await, "HTTP/1.1 200 OK");
        }
        go.send(()).unwrap();
        assert_eq!(slow.await.unwrap(), "HTTP/1.1 404 Not Found");
    }
}

/// A chain of `depth` promises with chosen ids under `chain`, each created by the one
/// before, all settled: one family, as an import can bring in.
async fn chain(store: &Arc<dyn Store>, depth: usize) {
    let call = || durable::Param::call("echo", 1, "[\"x\"]".into());
    let mut family = Vec::with_capacity(depth + 1);
    let mut root = durable::store::CreatePromise::new("chain", call());
    root.settled = Some((State::Resolved, "\"x\"".into()));
    family.push(root);
    for level in 1..=depth {
        let mut p = durable::store::CreatePromise::new(format!("link-{level}"), call());
        p.parent = Some(if level == 1 { "chain".into() } else { format!("link-{}", level - 1) });
        p.settled = Some((State::Resolved, "\"x\"".into()));
        family.push(p);
    }
    store.import(family).await.unwrap();
}

#[tokio::test]
async fn a_ten_thousand_level_chain_draws_with_a_note_of_what_it_left_out() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    chain(&store, 10_000).await;
    let router = Dashboard::new(store.clone()).router();
    let (status, _, body) = get(&router, "/invocation?id=chain").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.contains("10001 promises"), "the count is of the whole tree");
    assert!(body.contains("the first 1000 are drawn"), "it says what it left out");
    assert_eq!(body.matches("class=\"bar\"").count(), 1000);
    // The deepest one's details show, though its row is not drawn.
    let (status, _, body) = get(&router, "/invocation?id=chain&node=link-10000").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.contains("Promise <code>link-10000</code>"), "{}", &body[..body.len().min(2000)]);
}

/// The schedules page lists each schedule, its spec and next fire, with a hostile id
/// shown as text; with the token, its forms pause, resume, trigger, backfill and
/// delete.
#[tokio::test]
async fn schedules_are_listed_and_steered_from_the_schedules_page() {
    let (store, durable) = store().await;
    let schedules = durable.schedules();
    let spec = durable::ScheduleSpec::cron("0 2 * * *").zone("Europe/Paris");
    schedules.create("nightly", spec, echo, "report".into()).await.unwrap();
    schedules
        .create("<b>x</b>", durable::ScheduleSpec::every(Duration::from_secs(3600)), echo, "x".into())
        .await
        .unwrap();
    // A delayed start says when it starts, in the list.
    drop(durable.rpc("later", echo, "l".into()).start_after(Duration::from_secs(3600)).await.unwrap());
    let (_, _, list) = get(&Dashboard::new(store.clone()).router(), "/rows").await;
    let row = list.split("<tr>").find(|r| r.contains("later")).expect("listed");
    assert!(row.contains("pending") && row.contains(" starts 20"), "{row}");
    let (status, _, page) = get(&Dashboard::new(store.clone()).router(), "/schedules").await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("cron &quot;0 2 * * *&quot; in Europe/Paris, skip when running, catch up 1h"), "{page}");
    assert!(page.contains("&lt;b&gt;x&lt;/b&gt;") && !page.contains("<b>x</b>"), "a stored id is text: {page}");
    assert!(!page.contains("method=\"post\""), "read-only without the token");
    let router = Dashboard::new(store.clone()).actions(TOKEN).router();
    let host = [("host", "127.0.0.1:8080")];
    let act = async |action: &str, extra: &str| {
        let form = format!("token={TOKEN}&action={action}&id=nightly&back=schedules{extra}");
        let (status, headers, body) = post(&router, &form, &host).await;
        assert_eq!(status, StatusCode::SEE_OTHER, "{action}: {body}");
        assert_eq!(headers.get(header::LOCATION).unwrap(), "/schedules");
    };
    act("schedule-pause", "").await;
    assert!(schedules.get("nightly").await.unwrap().unwrap().paused);
    act("schedule-resume", "").await;
    assert!(!schedules.get("nightly").await.unwrap().unwrap().paused);
    act("schedule-trigger", "").await;
    act("schedule-backfill", "&from=2026-03-28T00:00:00Z&to=2026-03-29T23:00:00Z").await;
    let s = schedules.get("nightly").await.unwrap().unwrap();
    assert_eq!((s.fired, s.last.as_deref()), (3, Some("nightly@2026-03-29T01:00:00Z")));
    assert!(store.get("nightly@2026-03-28T01:00:00Z").await.unwrap().is_some());
    let form = format!("token={TOKEN}&action=schedule-backfill&id=nightly&from=yesterday&to=now");
    let (status, _, body) = post(&router, &form, &host).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.contains("from &quot;yesterday&quot; is not a time"), "{body}");
    act("schedule-delete", "").await;
    assert!(schedules.get("nightly").await.unwrap().is_none());
    let (status, _, body) = post(&router, &format!("token={TOKEN}&action=schedule-pause&id=nightly"), &host).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
}

#[durable::function(name = "debit")]
async fn debit(_ctx: &mut Context, cents: u64) -> durable::Result<u64> {
    Ok(cents)
}

#[durable::function(name = "refund")]
async fn refund(_ctx: &mut Context, _cents: u64) -> durable::Result<u64> {
    Err(Error::terminal("the refund service is down"))
}

#[durable::function(name = "pay")]
async fn pay(ctx: &mut Context, cents: u64) -> durable::Result<u64> {
    ctx.lfc(debit, cents).compensate(refund, cents).await?;
    ctx.promise::<()>().id(format!("ship-{cents}")).await?.await?;
    Ok(cents)
}

/// A saga canceled while it waits shows as canceling until its undo has run; an
/// undo that fails for good halts it, and the attention page lists it with why; the
/// step shows the undo it carries.
#[tokio::test(start_paused = true)]
async fn a_canceling_saga_and_its_failed_undo_show_for_a_person() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let router = Dashboard::new(store.clone()).actions(TOKEN).router();
    // Asked to cancel while no worker serves it: it shows as canceling.
    let durable =
        Durable::builder().store(store.clone()).register(pay).register(debit).register(refund).build().unwrap();
    let _handle = durable.run("pay-5", pay, 5).await.unwrap();
    while store.get("ship-5").await.unwrap().is_none() {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    durable.shutdown().await.unwrap();
    let asked = durable.promises().cancel("pay-5").await.unwrap();
    assert!(asked.canceling, "{asked:?}");
    let (_, _, page) = get(&router, "/invocation?id=pay-5").await;
    assert!(page.contains("class=\"state canceling\""), "{page}");
    let (_, _, details) = get(&router, "/invocation?id=pay-5&node=pay-5.1").await;
    assert!(details.contains("<dt>undo</dt>") && details.contains("refund"), "{details}");
    // A worker runs its undo, which fails for good: halted, for a person.
    let worker =
        Durable::builder().store(store.clone()).register(pay).register(debit).register(refund).build().unwrap();
    while store.task("pay-5").await.unwrap().is_none_or(|t| t.state != TaskState::Halted) {
        store.wait("pay-5", true).await.unwrap();
    }
    let (_, _, attention) = get(&router, "/attention").await;
    assert!(attention.contains("Halted (1)") && attention.contains(">pay-5<"), "{attention}");
    assert!(attention.contains("the refund service is down"), "the attention page says why: {attention}");
    drop(worker);
}
