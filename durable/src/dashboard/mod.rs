//! A web dashboard over a store: the invocations, each one's call tree as a timeline,
//! what needs attention, and the workers; with actions (resolve, reject, cancel,
//! resume, restart) when enabled. It reads the store the workers use, through
//! [`Promises`], and needs nothing else: every asset is in the binary.
//!
//! Mount it in a service with one call, which is how a sled store (locked by the one
//! process that has it open) is served by that process:
//!
//! ```no_run
//! # use std::sync::Arc;
//! # use durable::{Durable, MemoryStore};
//! use durable::dashboard::Dashboard;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> std::io::Result<()> {
//! # let durable = Durable::builder().store(Arc::new(MemoryStore::new())).build().unwrap();
//! let app = axum::Router::new().nest("/durable", Dashboard::new(durable.store().clone()).router());
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! axum::serve(listener, app).await
//! # }
//! ```
//!
//! Or serve it alone with [`Dashboard::serve`], as `durable serve --store
//! DIR|postgres://…` does (the `cli` and `dashboard` features).
//!
//! Security: it answers only requests for an IP address, `localhost` or a name
//! allowed with [`Dashboard::host`] (a 403 otherwise: DNS rebinding). It is read-only
//! unless [`Dashboard::actions`] gives it a token. A browser then signs in once at
//! `login?token=…`, which sets a strict same-site cookie; every action form carries
//! the token, and a request from another site (by `Sec-Fetch-Site`, or an `Origin`
//! that is not the request's scheme, host and port) is refused. Every value from the
//! store is escaped (arguments and errors are user data), and a
//! `Content-Security-Policy` allows only the dashboard's own script and style. A
//! malformed id or query is a 400 page, never a panic.

mod pages;
mod timeline;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Form, OriginalUri, Query, State as AxumState};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use serde::Deserialize;

use crate::store::{Cursor, Invocations};
use crate::{Error, Promises, State, Store};

/// The invocations a list page shows.
const PAGE: usize = 50;

/// The connections [`Dashboard::serve`] keeps open at once.
pub const MAX_CONNECTIONS: usize = 256;

/// How long [`Dashboard::serve`] waits for a request's headers.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// The cookie that holds the action token in a signed-in browser.
const COOKIE: &str = "durable_token";

/// The dashboard over a store: build it, then take its [`router`](Dashboard::router).
#[derive(Clone)]
pub struct Dashboard {
    store: Arc<dyn Store>,
    token: Option<String>,
    /// Host names it answers to, besides IP addresses and `localhost`.
    hosts: Vec<String>,
}

impl std::fmt::Debug for Dashboard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dashboard").field("actions", &self.token.is_some()).finish()
    }
}

impl Dashboard {
    /// A read-only dashboard over `store`.
    ///
    /// ```
    /// # use std::sync::Arc;
    /// use durable::MemoryStore;
    /// use durable::dashboard::Dashboard;
    /// use tower::ServiceExt;
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let router = Dashboard::new(Arc::new(MemoryStore::new())).router();
    /// let request = axum::http::Request::get("/").body(axum::body::Body::empty()).unwrap();
    /// let page = router.oneshot(request).await.unwrap();
    /// assert_eq!(page.status(), axum::http::StatusCode::OK);
    /// # }
    /// ```
    pub fn new(store: Arc<dyn Store>) -> Dashboard {
        Dashboard { store, token: None, hosts: Vec::new() }
    }

    /// Answers requests for host `name` too (the name a service is reached by). By
    /// default it answers only to IP addresses and `localhost`: a page elsewhere whose
    /// own name an attacker points at this machine (DNS rebinding) sends its own name
    /// as the `Host`, and gets a 403.
    pub fn host(mut self, name: impl Into<String>) -> Dashboard {
        self.hosts.push(name.into().to_ascii_lowercase());
        self
    }

    /// Enables the actions, for a browser signed in with `token` (at `login?token=…`
    /// under the dashboard's path). Choose a long random one: it is the only key.
    pub fn actions(mut self, token: impl Into<String>) -> Dashboard {
        self.token = Some(token.into());
        self
    }

    /// The dashboard's routes, to serve or to [`nest`](Router::nest) under a path of a
    /// service's own.
    pub fn router(self) -> Router {
        let router = Router::new()
            .route("/", get(list))
            .route("/rows", get(rows))
            .route("/invocation", get(invocation))
            .route("/attention", get(attention))
            .route("/workers", get(workers))
            .route("/schedules", get(schedules))
            .route("/assets/app.css", get(css))
            .route("/assets/app.js", get(js));
        let router = if self.token.is_some() {
            router.route("/login", get(login)).route("/action", post(action))
        } else {
            router
        };
        let app = Arc::new(self);
        router
            .layer(axum::middleware::from_fn_with_state(app.clone(), known_host))
            .layer(axum::middleware::map_response(secure))
            .with_state(app)
    }

    /// Serves the dashboard on `listener` until the returned future is dropped, as
    /// `durable serve` does: each connection on a task of its own (on a multi-thread
    /// runtime a slow page holds one thread, not the others), at most
    /// [`MAX_CONNECTIONS`] at once (one more is closed as it comes, so a flood cannot
    /// use up the process's files), and a connection that has not sent a request's
    /// headers within [`HEADER_TIMEOUT`] of connecting or of its last answer is closed.
    /// Nested in a service's own router instead, the service's server settings apply.
    ///
    /// ```no_run
    /// # use std::sync::Arc;
    /// use durable::MemoryStore;
    /// use durable::dashboard::Dashboard;
    ///
    /// # #[tokio::main] async fn main() -> std::io::Result<()> {
    /// let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
    /// Dashboard::new(Arc::new(MemoryStore::new())).serve(listener).await;
    /// # Ok(()) }
    /// ```
    pub async fn serve(self, listener: tokio::net::TcpListener) {
        let router = self.router();
        let open = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
        let mut http = hyper::server::conn::http1::Builder::new();
        http.timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(HEADER_TIMEOUT);
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                // Out of files, or a connection reset before it was taken: go on
                // once the moment has passed.
                Err(e) => {
                    tracing::warn!(error = %e, "the dashboard could not take a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Ok(permit) = open.clone().try_acquire_owned() else {
                tracing::warn!(
                    limit = MAX_CONNECTIONS,
                    "the dashboard has as many connections as it takes: closed one more"
                );
                continue;
            };
            let service = hyper_util::service::TowerToHyperService::new(router.clone());
            let connection = http.serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            tokio::spawn(async move {
                let _ = connection.await;
                drop(permit);
            });
        }
    }

    /// Whether a request's `Host` (name and port) is one this dashboard answers to.
    fn answers_to(&self, host: &str) -> bool {
        let name = match host.rsplit_once(':') {
            // `[::1]:8080`, `127.0.0.1:8080`, `name:8080`; a bare IPv6 literal has no port.
            Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) && !name.ends_with(':') => name,
            _ => host,
        };
        let name = name.trim_start_matches('[').trim_end_matches(']').to_ascii_lowercase();
        name == "localhost" || name.parse::<std::net::IpAddr>().is_ok() || self.hosts.contains(&name)
    }

    /// The action token, for a request from a browser signed in for actions.
    fn token_for(&self, headers: &HeaderMap) -> Option<&str> {
        let token = self.token.as_deref()?;
        headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|c| c.trim().split_once('='))
            .any(|(name, value)| name == COOKIE && same(value, token))
            .then_some(token)
    }
}

type App = AxumState<Arc<Dashboard>>;

/// Refuses a request for a host this dashboard does not answer to.
async fn known_host(
    AxumState(app): App,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Result<Response, Failed> {
    let host = request.headers().get(header::HOST).map(|h| h.to_str().unwrap_or("\u{fffd}").to_owned());
    match host {
        Some(host) if !app.answers_to(&host) => Err(Failed(
            StatusCode::FORBIDDEN,
            format!(
                "this dashboard does not answer to the host {host:?}: a page elsewhere may be reaching it through \
                 a name pointed at this machine; to serve it under that name, allow it (Dashboard::host, durable \
                 serve --host)"
            ),
        )),
        _ => Ok(next.run(request).await),
    }
}

/// Headers on every response: a strict content policy (only the dashboard's own script
/// and style run, whatever a page holds), no framing, no sniffing, no referrer to
/// other sites.
async fn secure(mut response: Response) -> Response {
    let headers = response.headers_mut();
    for (name, value) in [
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; \
             form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "same-origin"),
        (header::CACHE_CONTROL, "no-store"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

/// Compares in time independent of where the strings differ.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The path the dashboard is mounted at ("" at the root), from the request's original
/// path and the path the dashboard's router saw.
fn base(original: &OriginalUri, uri: &Uri) -> String {
    let (path, inner) = (original.path(), uri.path());
    // Nested at `/ops`, the dashboard's `/` answers `/ops` too.
    let base = path.strip_suffix(inner).or_else(|| (inner == "/").then_some(path)).unwrap_or("");
    base.trim_end_matches('/').to_owned()
}

/// A request the dashboard cannot answer: a page saying why, with its status.
struct Failed(StatusCode, String);

impl From<Error> for Failed {
    fn from(e: Error) -> Failed {
        let status = match &e {
            Error::Store(crate::StoreError::NotFound { .. }) => StatusCode::NOT_FOUND,
            Error::Conflict { .. } | Error::Store(crate::StoreError::Conflict { .. }) => StatusCode::CONFLICT,
            Error::Codec { .. } | Error::InvalidId { .. } | Error::PayloadTooLarge { .. } => StatusCode::BAD_REQUEST,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Failed(status, e.to_string())
    }
}

impl IntoResponse for Failed {
    fn into_response(self) -> Response {
        (self.0, pages::html(pages::failed(self.0, &self.1))).into_response()
    }
}

fn bad(message: impl Into<String>) -> Failed {
    Failed(StatusCode::BAD_REQUEST, message.into())
}

/// Refuses a NUL byte in parameter `name`: no id, name or cursor has one, and
/// PostgreSQL cannot even look for it.
fn no_nul<'a>(name: &str, value: &'a str) -> Result<&'a str, Failed> {
    if value.contains('\0') {
        Err(bad(format!("{name} contains a NUL byte, which no id or name has")))
    } else {
        Ok(value)
    }
}

/// The list page's filters, as its form sends them.
#[derive(Debug, Default, Deserialize)]
struct ListQuery {
    state: Option<String>,
    function: Option<String>,
    /// Created within this many seconds.
    since: Option<String>,
    /// The cursor of the previous page.
    after: Option<String>,
}

/// The filters, checked.
#[derive(Debug, Default)]
pub(crate) struct Filter {
    pub(crate) state: Option<State>,
    pub(crate) function: Option<String>,
    pub(crate) since: Option<u64>,
    pub(crate) after: Option<Cursor>,
}

impl ListQuery {
    fn check(self) -> Result<Filter, Failed> {
        let state = match self.state.as_deref().unwrap_or("") {
            "" => None,
            "pending" => Some(State::Pending),
            "resolved" => Some(State::Resolved),
            "rejected" => Some(State::Rejected),
            "canceled" => Some(State::RejectedCanceled),
            "timedout" => Some(State::RejectedTimedout),
            other => {
                return Err(bad(format!(
                    "state {other:?} is not one of pending, resolved, rejected, canceled, timedout"
                )));
            }
        };
        let since = match self.since.as_deref().unwrap_or("") {
            "" => None,
            s => Some(s.parse::<u64>().map_err(|_| bad(format!("since {s:?} is not a number of seconds")))?),
        };
        let after = match no_nul("after", self.after.as_deref().unwrap_or(""))? {
            "" => None,
            s => Some(s.parse::<Cursor>().map_err(bad)?),
        };
        no_nul("function", self.function.as_deref().unwrap_or(""))?;
        let function = self.function.filter(|f| !f.is_empty());
        Ok(Filter { state, function, since, after })
    }
}

impl Dashboard {
    /// The page of invocations `filter` asks for, and the time it was read.
    async fn listing(&self, filter: &Filter) -> Result<(crate::store::Listing, crate::Millis), Failed> {
        let promises = Promises::new(&*self.store);
        let now = self.store.now().await.map_err(Error::from)?;
        let mut query = Invocations {
            state: filter.state,
            function: filter.function.clone(),
            since: filter.since.map(|s| now.saturating_sub(s.saturating_mul(1000))),
            limit: PAGE,
            cursor: filter.after.clone(),
            ..Invocations::default()
        };
        // A store may answer with fewer and a cursor: ask again until the page is full.
        let mut listing = promises.invocations(query.clone()).await?;
        while listing.invocations.len() < PAGE
            && let Some(cursor) = listing.cursor.take()
        {
            query.cursor = Some(cursor);
            query.limit = PAGE - listing.invocations.len();
            let more = promises.invocations(query.clone()).await?;
            listing.invocations.extend(more.invocations);
            listing.cursor = more.cursor;
        }
        Ok((listing, now))
    }
}

async fn list(
    AxumState(app): App,
    original: OriginalUri,
    uri: Uri,
    Query(query): Query<ListQuery>,
) -> Result<Response, Failed> {
    let filter = query.check()?;
    let (listing, now) = app.listing(&filter).await?;
    let base = base(&original, &uri);
    let live = (filter.after.is_none()).then(|| format!("{base}/rows?{}", uri.query().unwrap_or("")));
    Ok(pages::html(pages::list(&base, &filter, &listing, now, live.as_deref())).into_response())
}

/// The rows of the list page's first page, for its live updates.
async fn rows(
    AxumState(app): App,
    original: OriginalUri,
    uri: Uri,
    Query(query): Query<ListQuery>,
) -> Result<Response, Failed> {
    let (listing, now) = app.listing(&query.check()?).await?;
    Ok(pages::html(pages::rows(&base(&original, &uri), &listing, now)).into_response())
}

#[derive(Debug, Deserialize)]
struct InvocationQuery {
    id: Option<String>,
    /// The promise whose details show.
    node: Option<String>,
}

async fn invocation(
    AxumState(app): App,
    original: OriginalUri,
    uri: Uri,
    headers: HeaderMap,
    Query(query): Query<InvocationQuery>,
) -> Result<Response, Failed> {
    let id = query.id.filter(|id| !id.is_empty()).ok_or_else(|| bad("the address names no invocation: ?id=…"))?;
    no_nul("id", &id)?;
    no_nul("node", query.node.as_deref().unwrap_or(""))?;
    let promises = Promises::new(&*app.store);
    let Some(tree) = promises.tree(&id).await? else {
        return Err(Failed(StatusCode::NOT_FOUND, format!("no promise {id}")));
    };
    let now = app.store.now().await.map_err(Error::from)?;
    let (base, token) = (base(&original, &uri), app.token_for(&headers).map(str::to_owned));
    // Drawn off the async thread: a big tree's page takes milliseconds of CPU that
    // the service embedding the dashboard should not wait for.
    let page = tokio::task::spawn_blocking(move || {
        let view = pages::InvocationView {
            base: &base,
            tree: &tree,
            selected: query.node.as_deref().unwrap_or(&id),
            now,
            token: token.as_deref(),
        };
        pages::html(pages::invocation(&view))
    });
    page.await.map_err(|e| Failed(StatusCode::INTERNAL_SERVER_ERROR, format!("drawing the page failed: {e}")))
}

async fn attention(
    AxumState(app): App,
    original: OriginalUri,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, Failed> {
    let promises = Promises::new(&*app.store);
    let now = app.store.now().await.map_err(Error::from)?;
    let workers = app.store.workers().await.map_err(Error::from)?;
    let pending = promises.pending().await?;
    let unserved = crate::durable::unserved(&pending, &workers, now, crate::runtime::shared::UNSERVED_AFTER);
    let view = pages::AttentionView {
        base: &base(&original, &uri),
        pending: &pending,
        unserved: &unserved,
        now,
        token: app.token_for(&headers),
    };
    Ok(pages::html(pages::attention(&view)).into_response())
}

async fn workers(AxumState(app): App, original: OriginalUri, uri: Uri) -> Result<Response, Failed> {
    let promises = Promises::new(&*app.store);
    let now = app.store.now().await.map_err(Error::from)?;
    let workers = app.store.workers().await.map_err(Error::from)?;
    let pending = promises.pending().await?;
    let limits = app.store.limits().await.map_err(Error::from)?;
    let view =
        pages::WorkersView { base: &base(&original, &uri), workers: &workers, pending: &pending, limits: &limits, now };
    Ok(pages::html(pages::workers(&view)).into_response())
}

async fn schedules(
    AxumState(app): App,
    original: OriginalUri,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, Failed> {
    let schedules = crate::Schedules::new(&*app.store).list().await?;
    let view =
        pages::SchedulesView { base: &base(&original, &uri), schedules: &schedules, token: app.token_for(&headers) };
    Ok(pages::html(pages::schedules(&view)).into_response())
}

async fn css() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], include_str!("app.css"))
}

async fn js() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/javascript; charset=utf-8")], include_str!("app.js"))
}

#[derive(Debug, Deserialize)]
struct LoginQuery {
    token: Option<String>,
}

/// Signs a browser in for actions: a right token sets the cookie.
async fn login(
    AxumState(app): App,
    original: OriginalUri,
    uri: Uri,
    Query(query): Query<LoginQuery>,
) -> Result<Response, Failed> {
    let token = app.token.as_deref().unwrap_or_default();
    if !query.token.as_deref().is_some_and(|t| same(t, token)) {
        return Err(Failed(StatusCode::FORBIDDEN, "that is not the dashboard's token".into()));
    }
    let base = base(&original, &uri);
    let cookie = format!("{COOKIE}={token}; Path={}; HttpOnly; SameSite=Strict", pages::home(&base));
    let cookie = HeaderValue::from_str(&cookie).map_err(|_| bad("the token must be printable ASCII"))?;
    Ok(([(header::SET_COOKIE, cookie)], Redirect::to(pages::home(&base))).into_response())
}

/// An action's form.
#[derive(Debug, Deserialize)]
struct ActionForm {
    token: String,
    action: String,
    id: String,
    /// resolve: the value, as JSON.
    value: Option<String>,
    /// reject: the message.
    message: Option<String>,
    /// restart: the new invocation's id.
    new_id: Option<String>,
    /// schedule-backfill: the range, in RFC 3339.
    from: Option<String>,
    to: Option<String>,
    /// Where to go after: "attention", or the invocation whose page it came from.
    back: Option<String>,
}

async fn action(
    AxumState(app): App,
    original: OriginalUri,
    uri: Uri,
    headers: HeaderMap,
    Form(form): Form<ActionForm>,
) -> Result<Response, Failed> {
    let forbidden = |why: &str| Failed(StatusCode::FORBIDDEN, why.to_owned());
    if cross_site(&headers) {
        return Err(forbidden("a request from another site: actions come only from the dashboard's own pages"));
    }
    if !app.token.as_deref().is_some_and(|t| same(&form.token, t)) {
        return Err(forbidden("the action's token is wrong: sign in again at the address printed at start"));
    }
    let promises = Promises::new(&*app.store);
    let id = no_nul("id", form.id.as_str())?;
    no_nul("new_id", form.new_id.as_deref().unwrap_or(""))?;
    match form.action.as_str() {
        "resolve" => {
            let text = form.value.as_deref().unwrap_or("");
            let value: serde_json::Value = serde_json::from_str(text)
                .map_err(|e| bad(format!("the value must be JSON (\"text\" in quotes): {e}")))?;
            promises.resolve(id, &value).await?;
        }
        "reject" => {
            promises.reject(id, form.message.as_deref().unwrap_or("rejected from the dashboard")).await?;
        }
        "cancel" => {
            promises.cancel(id).await?;
        }
        "resume" => {
            if promises.resume(id).await? == 0 {
                return Err(Failed(StatusCode::CONFLICT, format!("nothing in {id} is halted")));
            }
        }
        "restart" => {
            let new_id = form.new_id.as_deref().unwrap_or("");
            let restarted = promises.restart(id, new_id).await?;
            return Ok(
                Redirect::to(&pages::invocation_url(&base(&original, &uri), &restarted.id, None)).into_response()
            );
        }
        "schedule-pause" | "schedule-resume" | "schedule-trigger" | "schedule-backfill" | "schedule-delete" => {
            let schedules = crate::Schedules::new(&*app.store);
            match form.action.as_str() {
                "schedule-pause" => drop(schedules.pause(id).await?),
                "schedule-resume" => drop(schedules.resume(id).await?),
                "schedule-trigger" => drop(schedules.trigger(id).await?),
                "schedule-delete" => drop(schedules.delete(id).await?),
                _ => {
                    let time = |name: &str, text: Option<&str>| {
                        let text = no_nul(name, text.unwrap_or(""))?;
                        humantime::parse_rfc3339_weak(text).map_err(|e| {
                            bad(format!("{name} {text:?} is not a time such as 2026-12-01T00:00:00Z: {e}"))
                        })
                    };
                    let (from, to) = (time("from", form.from.as_deref())?, time("to", form.to.as_deref())?);
                    schedules.backfill(id, from, to).await?;
                }
            }
        }
        other => return Err(bad(format!("{other:?} is not an action"))),
    }
    tracing::info!(action = %form.action, %id, "done from the dashboard");
    let base = base(&original, &uri);
    let back = match form.back.as_deref() {
        Some("attention") => format!("{base}/attention"),
        Some("schedules") => format!("{base}/schedules"),
        Some(invocation) if !invocation.is_empty() => pages::invocation_url(&base, invocation, Some(id)),
        _ => pages::home(&base).to_owned(),
    };
    Ok(Redirect::to(&back).into_response())
}

/// Whether a request came from another site's page: by `Sec-Fetch-Site`, which
/// browsers set, or else an `Origin` that is not the request's own.
fn cross_site(headers: &HeaderMap) -> bool {
    let text = |name| headers.get(name).and_then(|v: &HeaderValue| v.to_str().ok());
    // Browsers that send it say it best; an older one is judged by its Origin.
    if let Some(site) = text(header::HeaderName::from_static("sec-fetch-site")) {
        return !matches!(site, "same-origin" | "none");
    }
    match (text(header::ORIGIN), text(header::HOST)) {
        (Some(origin), Some(host)) => !same_origin(origin, host),
        (Some(_), None) => true,
        (None, _) => false,
    }
}

/// Whether `origin` (`scheme://host[:port]`) is the origin of a page served for
/// `host` (the request's `Host`, `host[:port]`): the same host and port, the port
/// being the scheme's default where either leaves it out. Plain HTTP, or HTTPS
/// through a proxy in front; any other scheme, `null`, or a path is another origin.
fn same_origin(origin: &str, host: &str) -> bool {
    let Some((scheme, authority)) = origin.split_once("://") else { return false };
    let default = match scheme.to_ascii_lowercase().as_str() {
        "http" => "80",
        "https" => "443",
        _ => return false,
    };
    let split = |a: &str| -> Option<(String, String)> {
        if a.is_empty() || a.contains(['/', '@', '?', '#']) {
            return None;
        }
        let (name, port) = match a.rsplit_once(':') {
            Some((name, port))
                if !name.is_empty() && !name.ends_with(':') && port.bytes().all(|b| b.is_ascii_digit()) =>
            {
                (name, port)
            }
            _ => (a, ""),
        };
        let port = if port.is_empty() { default } else { port.trim_start_matches('0') };
        Some((name.to_ascii_lowercase(), port.to_owned()))
    };
    matches!((split(authority), split(host)), (Some(a), Some(b)) if a == b)
}

#[cfg(test)]
mod tests {
    use super::{cross_site, same};
    use axum::http::{HeaderMap, HeaderValue};

    #[test]
    fn same_compares_whole_strings() {
        assert!(same("abc", "abc"));
        assert!(!same("abc", "abd"));
        assert!(!same("abc", "ab"));
        assert!(!same("", "a"));
    }

    #[test]
    fn a_request_from_another_site_is_told_apart() {
        let headers = |pairs: &[(&'static str, &'static str)]| {
            let mut h = HeaderMap::new();
            for (k, v) in pairs {
                h.insert(*k, HeaderValue::from_static(v));
            }
            h
        };
        assert!(!cross_site(&headers(&[("host", "127.0.0.1:8080")])));
        assert!(!cross_site(&headers(&[("host", "127.0.0.1:8080"), ("origin", "http://127.0.0.1:8080")])));
        assert!(!cross_site(&headers(&[("sec-fetch-site", "same-origin"), ("host", "h")])));
        // A same-origin form under a strict referrer policy sends `Origin: null`.
        assert!(!cross_site(&headers(&[("sec-fetch-site", "same-origin"), ("origin", "null"), ("host", "h")])));
        assert!(cross_site(&headers(&[("host", "127.0.0.1:8080"), ("origin", "http://evil.example")])));
        assert!(cross_site(&headers(&[("host", "127.0.0.1:8080"), ("origin", "null")])));
        assert!(cross_site(&headers(&[("sec-fetch-site", "cross-site"), ("host", "h")])));
        assert!(cross_site(&headers(&[("sec-fetch-site", "same-site"), ("host", "h")])));
    }

    #[test]
    fn an_origin_is_its_scheme_host_and_port() {
        use super::same_origin;
        assert!(same_origin("http://127.0.0.1:8080", "127.0.0.1:8080"));
        assert!(same_origin("http://LOCALHOST", "localhost:80"));
        assert!(same_origin("https://dash.example", "dash.example"));
        assert!(same_origin("http://[::1]:8080", "[::1]:8080"));
        // Another port, another scheme's default, another host, or no origin at all.
        assert!(!same_origin("http://127.0.0.1:8081", "127.0.0.1:8080"));
        assert!(!same_origin("https://localhost", "localhost:80"));
        assert!(!same_origin("http://localhost", "localhost:443"));
        assert!(!same_origin("http://127.0.0.1.evil.example:8080", "127.0.0.1:8080"));
        assert!(!same_origin("ftp://127.0.0.1:8080", "127.0.0.1:8080"));
        assert!(!same_origin("null", "127.0.0.1:8080"));
        assert!(!same_origin("http://user@127.0.0.1:8080", "127.0.0.1:8080"));
        assert!(!same_origin("http://127.0.0.1:8080/", "127.0.0.1:8080"));
        assert!(!same_origin("http://", ""));
    }
}
