//! The dashboard's pages, as HTML. Every value goes through `maud`'s `(…)`, which
//! escapes it: nothing from the store reaches a page as markup.

use std::collections::BTreeMap;

use axum::http::header;
use axum::response::{IntoResponse, Response};
use maud::{DOCTYPE, Markup, html};

use super::Filter;
use super::timeline;
use crate::store::{Listing, Worker};
use crate::{Millis, Node, Param, Promise, State, Task, TaskState};

pub(super) fn html(page: Markup) -> Response {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], page.into_string()).into_response()
}

/// The list page: `{base}`, or `/` at the root (nested, the router answers its path
/// without a trailing slash).
pub(super) fn home(base: &str) -> &str {
    if base.is_empty() { "/" } else { base }
}

/// `{base}/invocation?id=…[&node=…]`, its values encoded.
pub(super) fn invocation_url(base: &str, id: &str, node: Option<&str>) -> String {
    let mut query = form_urlencoded::Serializer::new(String::new());
    query.append_pair("id", id);
    if let Some(node) = node {
        query.append_pair("node", node);
    }
    format!("{base}/invocation?{}", query.finish())
}

fn layout(base: &str, title: &str, current: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · durable" }
                link rel="stylesheet" href={ (base) "/assets/app.css" };
                script src={ (base) "/assets/app.js" } defer {}
            }
            body {
                nav {
                    span.brand { "durable" }
                    a href=(home(base)) class=[("Invocations" == current).then_some("current")] { "Invocations" }
                    @for (path, name) in [("/attention", "Attention"), ("/workers", "Workers"), ("/schedules", "Schedules")] {
                        a href={ (base) (path) } class=[(name == current).then_some("current")] { (name) }
                    }
                }
                main { (body) }
            }
        }
    }
}

pub(super) fn failed(status: axum::http::StatusCode, message: &str) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head { meta charset="utf-8"; title { (status.as_u16()) " · durable" } }
            body {
                h1 { (status.as_u16()) " " (status.canonical_reason().unwrap_or("")) }
                p.error { (message) }
            }
        }
    }
}

/// A promise's state in a word (a halted task says so), which is also its CSS class.
pub(super) fn state_word(p: &Promise, task: Option<&Task>) -> &'static str {
    match p.state {
        State::Pending if task.is_some_and(|t| t.state == TaskState::Halted) => "halted",
        State::Pending if p.canceling => "canceling",
        State::Pending if task.is_some_and(|t| t.state == TaskState::Suspended) => "suspended",
        State::Pending => "pending",
        State::Resolved => "resolved",
        State::Rejected => "rejected",
        State::RejectedCanceled => "canceled",
        State::RejectedTimedout => "timedout",
    }
}

/// A time of the store's clock, as UTC to the millisecond; past the year 9999, which
/// RFC 3339 cannot write (a deadline set absurdly far, an imported one), in ms.
pub(super) fn time(at: Millis) -> String {
    /// 10000-01-01T00:00:00Z.
    const YEAR_10000: Millis = 253_402_300_800_000;
    if at >= YEAR_10000 {
        return format!("{at} ms after 1970");
    }
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(at);
    humantime::format_rfc3339_millis(at).to_string()
}

/// A span of milliseconds, in the unit that reads best.
pub(super) fn span(ms: Millis) -> String {
    match ms {
        0..1_000 => format!("{ms} ms"),
        1_000..60_000 => format!("{:.2} s", ms as f64 / 1e3),
        60_000..3_600_000 => format!("{:.1} min", ms as f64 / 6e4),
        _ => format!("{:.1} h", ms as f64 / 3.6e6),
    }
}

/// From creation to settlement, or to now while pending.
fn took(p: &Promise, now: Millis) -> String {
    span(p.settled_at.unwrap_or(now).saturating_sub(p.created_at))
}

/// Where a task is routed: `group`, or `group/pid`.
pub(super) fn route(task: &Task) -> String {
    match &task.target.pid {
        Some(pid) => format!("{}/{pid}", task.target.group),
        None => task.target.group.clone(),
    }
}

pub(super) fn list(base: &str, filter: &Filter, listing: &Listing, now: Millis, live: Option<&str>) -> Markup {
    let state = |s: &str| {
        let chosen = match filter.state {
            None => "",
            Some(State::Pending) => "pending",
            Some(State::Resolved) => "resolved",
            Some(State::Rejected) => "rejected",
            Some(State::RejectedCanceled) => "canceled",
            Some(State::RejectedTimedout) => "timedout",
        };
        chosen == s
    };
    let since = filter.since.map(|s| s.to_string()).unwrap_or_default();
    let body = html! {
        h1 { "Invocations" }
        form.filters method="get" action=(home(base)) {
            label { "State "
                select name="state" {
                    @for s in ["", "pending", "resolved", "rejected", "canceled", "timedout"] {
                        option value=(s) selected[state(s)] { @if s.is_empty() { "any" } @else { (s) } }
                    }
                }
            }
            label { "Function " input name="function" value=[filter.function.as_deref()] placeholder="any"; }
            label { "Created "
                select name="since" {
                    @for (secs, name) in [("", "any time"), ("900", "in the last 15 min"), ("3600", "in the last hour"), ("86400", "in the last day"), ("604800", "in the last week")] {
                        option value=(secs) selected[since == secs] { (name) }
                    }
                }
            }
            button type="submit" { "Filter" }
        }
        table.invocations {
            thead { tr { th { "id" } th { "function" } th { "state" } th { "group" } th { "created" } th { "took" } } }
            tbody #rows data-live=[live] { (rows(base, listing, now)) }
        }
        @if let Some(cursor) = &listing.cursor {
            @let mut next = form_urlencoded::Serializer::new(String::new());
            @let next = {
                if let Some(s) = filter.state { next.append_pair("state", state_name(s)); }
                if let Some(f) = &filter.function { next.append_pair("function", f); }
                if let Some(s) = filter.since { next.append_pair("since", &s.to_string()); }
                next.append_pair("after", &cursor.to_string());
                next.finish()
            };
            p { a.next href={ (home(base)) "?" (next) } { "Older →" } }
        }
    };
    layout(base, "Invocations", "Invocations", body)
}

fn state_name(s: State) -> &'static str {
    match s {
        State::Pending => "pending",
        State::Resolved => "resolved",
        State::Rejected => "rejected",
        State::RejectedCanceled => "canceled",
        State::RejectedTimedout => "timedout",
    }
}

pub(super) fn rows(base: &str, listing: &Listing, now: Millis) -> Markup {
    html! {
        @for inv in &listing.invocations {
            @let p = &inv.promise;
            @let word = state_word(p, inv.task.as_ref());
            tr {
                td { a href=(invocation_url(base, &p.id, None)) { (p.id) } }
                td { (p.param.what()) }
                td {
                    span class={ "state " (word) } { (word) }
                    @if let Some(t) = inv.task.as_ref().filter(|t| t.state == TaskState::Pending && t.ready_at > now) {
                        " starts " (time(t.ready_at))
                    }
                }
                td { (inv.task.as_ref().map(route).unwrap_or_default()) }
                td { (time(p.created_at)) }
                td { (took(p, now)) }
            }
        }
        @if listing.invocations.is_empty() {
            tr { td colspan="6" { "No invocation." } }
        }
    }
}

/// What the invocation page shows.
pub(super) struct InvocationView<'a> {
    pub(super) base: &'a str,
    pub(super) tree: &'a Node,
    /// The promise whose details show.
    pub(super) selected: &'a str,
    pub(super) now: Millis,
    /// The action token, when the browser is signed in for actions.
    pub(super) token: Option<&'a str>,
}

pub(super) fn invocation(view: &InvocationView<'_>) -> Markup {
    let root = view.tree;
    let rows = timeline::flatten(root);
    let selected = rows.iter().map(|(_, n)| *n).find(|n| n.promise.id == view.selected).unwrap_or(root);
    let halted = rows.iter().any(|(_, n)| n.task.as_ref().is_some_and(|t| t.state == TaskState::Halted));
    let drawn = &rows[..rows.len().min(timeline::DRAWN)];
    let body = html! {
        h1 { "Invocation " code { (root.promise.id) } }
        p.summary {
            span class={ "state " (state_word(&root.promise, root.task.as_ref())) } { (state_word(&root.promise, root.task.as_ref())) }
            " " (root.promise.param.what()) " · created " (time(root.promise.created_at)) " · " (took(&root.promise, view.now))
            " · " (rows.len()) " promises"
        }
        @if drawn.len() < rows.len() {
            p.note { "The timeline is long: the first " (drawn.len()) " are drawn, and " (rows.len() - drawn.len())
                " more are left out. " code { "durable tree" } " or " code { "durable export" } " shows them all." }
        }
        div.timeline { (timeline::svg(view.base, &root.promise.id, drawn, selected, view.now)) }
        (details(view, selected))
        @if let Some(token) = view.token {
            section.actions {
                h2 { "Invocation" }
                @if root.promise.state == State::Pending {
                    (action_form(view.base, token, "cancel", &root.promise.id, &root.promise.id, html! {}, "Cancel"))
                }
                @if halted {
                    (action_form(view.base, token, "resume", &root.promise.id, &root.promise.id, html! {}, "Resume"))
                }
                @if root.promise.state.is_settled() || halted {
                    (action_form(view.base, token, "restart", &root.promise.id, &root.promise.id,
                        html! { input name="new_id" required placeholder="new id" value={ (root.promise.id) "-again" }; }, "Restart"))
                }
            }
        }
    };
    layout(view.base, &root.promise.id, "", body)
}

/// A form for one action on promise `id`, coming back to invocation `back`.
fn action_form(base: &str, token: &str, action: &str, id: &str, back: &str, fields: Markup, label: &str) -> Markup {
    html! {
        form.action method="post" action={ (base) "/action" } {
            input type="hidden" name="token" value=(token);
            input type="hidden" name="action" value=(action);
            input type="hidden" name="id" value=(id);
            input type="hidden" name="back" value=(back);
            (fields)
            button type="submit" name="do" value=(action) { (label) }
        }
    }
}

/// The forms that settle a pending external promise.
fn settle_forms(base: &str, token: &str, p: &Promise, back: &str) -> Markup {
    html! {
        (action_form(base, token, "resolve", &p.id, back,
            html! { input name="value" required placeholder="a JSON value" aria-label="value"; }, "Resolve"))
        (action_form(base, token, "reject", &p.id, back,
            html! { input name="message" required placeholder="why" aria-label="message"; }, "Reject"))
    }
}

fn details(view: &InvocationView<'_>, node: &Node) -> Markup {
    let p = &node.promise;
    let word = state_word(p, node.task.as_ref());
    html! {
        section #details.details {
            h2 { "Promise " code { (p.id) } }
            dl {
                dt { "what" } dd { (p.param.what()) @if let Param::Call { version, .. } = &p.param { @if *version > 1 { " (version " (version) ")" } } }
                dt { "state" } dd { span class={ "state " (word) } { (word) } }
                dt { "created" } dd { (time(p.created_at)) }
                @if let Some(at) = p.settled_at { dt { "settled" } dd { (time(at)) " · after " (span(at.saturating_sub(p.created_at))) } }
                @if p.timeout_at < crate::NEVER { dt { "deadline" } dd { (time(p.timeout_at)) } }
                @if let Param::Call { args, .. } = &p.param { dt { "arguments" } dd { pre.value { (args) } } }
                @if let Some(undo) = &p.undo { dt { "undo" } dd { code { (undo.func) } pre.value { (undo.args) } } }
                @match p.outcome() {
                    Some(Ok(json)) => { dt { "value" } dd { pre.value { (json) } } }
                    Some(Err(e)) => { dt { "error" } dd { pre.error { (e) } } }
                    None => {}
                }
                @for (k, v) in &p.tags { dt { "tag " (k) } dd { (v) } }
                @if let Some(task) = &node.task {
                    dt { "task" } dd { (task_state(task.state)) " · routed to " (route(task)) @if let Some(process) = &task.process { " · process " (process) } }
                    @if !task.awaiting.is_empty() { dt { "awaiting" } dd { (task.awaiting.join(", ")) } }
                    @if task.faults > 0 { dt { "faults" } dd { (task.faults) } }
                    @if let Some(fault) = task.fault() { dt { "fault" } dd { pre.error { (fault) } } }
                }
            }
            @if let (Some(token), Param::External, State::Pending) = (view.token, &p.param, p.state) {
                (settle_forms(view.base, token, p, &view.tree.promise.id))
            }
        }
    }
}

fn task_state(state: TaskState) -> &'static str {
    match state {
        TaskState::Pending => "queued",
        TaskState::Acquired => "running",
        TaskState::Suspended => "suspended",
        TaskState::Halted => "halted",
        TaskState::Fulfilled => "done",
    }
}

/// What the attention page shows.
pub(super) struct AttentionView<'a> {
    pub(super) base: &'a str,
    pub(super) pending: &'a [(Promise, Option<Task>)],
    pub(super) unserved: &'a [Task],
    pub(super) now: Millis,
    pub(super) token: Option<&'a str>,
}

pub(super) fn attention(view: &AttentionView<'_>) -> Markup {
    let halted: Vec<_> =
        view.pending.iter().filter(|(_, t)| t.as_ref().is_some_and(|t| t.state == TaskState::Halted)).collect();
    let external: Vec<_> = view.pending.iter().filter(|(p, _)| p.param == Param::External).collect();
    let invocation_of = |id: &str| id.split('.').next().unwrap_or(id).to_owned();
    let body = html! {
        h1 { "Attention" }
        section #halted {
            h2 { "Halted (" (halted.len()) ")" }
            @if halted.is_empty() { p { "Nothing is halted." } }
            ul {
                @for (p, task) in &halted {
                    li {
                        a href=(invocation_url(view.base, &invocation_of(&p.id), Some(&p.id))) { (p.id) }
                        " " (p.param.what())
                        @if let Some(fault) = task.as_ref().and_then(Task::fault) { pre.error { (fault) } }
                    }
                }
            }
        }
        section #external {
            h2 { "Waiting for someone outside (" (external.len()) ")" }
            @if external.is_empty() { p { "No promise waits for a person or a system outside." } }
            ul {
                @for (p, _) in &external {
                    li {
                        a href=(invocation_url(view.base, &invocation_of(&p.id), Some(&p.id))) { (p.id) }
                        " · waiting " (took(p, view.now))
                        @if let Some(token) = view.token { (settle_forms(view.base, token, p, "attention")) }
                    }
                }
            }
        }
        section #unserved {
            h2 { "No live worker (" (view.unserved.len()) ")" }
            @if view.unserved.is_empty() { p { "Every queued task has a live worker that runs it." } }
            ul {
                @for t in view.unserved {
                    li { a href=(invocation_url(view.base, &invocation_of(&t.id), Some(&t.id))) { (t.id) } " waits for a worker of " code { (route(t)) } }
                }
            }
        }
    };
    layout(view.base, "Attention", "Attention", body)
}

/// What the workers page shows.
pub(super) struct WorkersView<'a> {
    pub(super) base: &'a str,
    pub(super) workers: &'a [Worker],
    pub(super) pending: &'a [(Promise, Option<Task>)],
    pub(super) limits: &'a [crate::LimitState],
    pub(super) now: Millis,
}

pub(super) fn workers(view: &WorkersView<'_>) -> Markup {
    let WorkersView { base, workers, pending, limits, now } = *view;
    // Per group: queued tasks, and the live workers.
    let mut groups: BTreeMap<&str, (usize, Vec<&Worker>)> = BTreeMap::new();
    for (_, task) in pending {
        if let Some(task) = task.as_ref().filter(|t| t.state == TaskState::Pending) {
            groups.entry(&task.target.group).or_default().0 += 1;
        }
    }
    for w in workers.iter().filter(|w| w.live_until > now) {
        groups.entry(&w.group).or_default().1.push(w);
    }
    let body = html! {
        h1 { "Workers" }
        table.workers {
            thead { tr { th { "group" } th { "queued" } th { "live workers" } } }
            tbody {
                @for (group, (queued, live)) in &groups {
                    tr {
                        td { code { (group) } }
                        td { (queued) }
                        td {
                            @if live.is_empty() { span.state.halted { "none" } }
                            ul {
                                @for w in live {
                                    li { code { (w.pid) } " in " (w.process) " · " (w.functions.join(", ")) }
                                }
                            }
                        }
                    }
                }
                @if groups.is_empty() { tr { td colspan="3" { "No worker, and nothing queued." } } }
            }
        }
        h2 { "Limits" }
        table.limits {
            thead { tr { th { "limit" } th { "covers and allows" } th { "executing" } th { "waiting" } } }
            tbody {
                @for l in limits {
                    tr {
                        td { code { (l.limit.name) } }
                        td { (l.limit) }
                        td { (l.executing) }
                        td {
                            (l.waiting)
                            @if let Some(at) = l.oldest { " · the oldest for " (now.saturating_sub(at) / 1000) " s" }
                        }
                    }
                }
                @if limits.is_empty() { tr { td colspan="4" { "No limits: set one with " code { "durable limits set" } "." } } }
            }
        }
    };
    layout(base, "Workers", "Workers", body)
}

pub(super) struct SchedulesView<'a> {
    pub(super) base: &'a str,
    pub(super) schedules: &'a [crate::Schedule],
    pub(super) token: Option<&'a str>,
}

/// Every schedule: what it calls and when, its next fire, its last (a link), what it
/// fired, skipped and missed; with the actions, pause or resume, trigger, backfill
/// and delete.
pub(super) fn schedules(view: &SchedulesView<'_>) -> Markup {
    let SchedulesView { base, schedules, token } = *view;
    let body = html! {
        h1 { "Schedules" }
        table.schedules {
            thead { tr {
                th { "schedule" } th { "calls" } th { "when" } th { "next" } th { "last" } th { "fired" } th { "skipped" }
                @if token.is_some() { th { "actions" } }
            } }
            tbody {
                @for s in schedules {
                    tr {
                        td {
                            code { (s.id) }
                            @if s.paused { " " span.state.halted { "paused" } }
                            @if let Some(error) = &s.error { p.error { "stopped: " (error) } }
                        }
                        td { code { (s.call.what()) } }
                        td { (s.spec) }
                        td { @match s.next { Some(at) => (time(at)), None => "ended" } }
                        td {
                            @if let Some(last) = &s.last { a href=(invocation_url(base, last, None)) { code { (last) } } }
                        }
                        td { (s.fired) }
                        td {
                            (s.skipped)
                            @if let Some((from, until)) = s.missed {
                                p { "missed " (time(from)) " to " (time(until)) }
                            }
                        }
                        @if let Some(token) = token {
                            td {
                                @if s.paused {
                                    (action_form(base, token, "schedule-resume", &s.id, "schedules", html! {}, "Resume"))
                                } @else {
                                    (action_form(base, token, "schedule-pause", &s.id, "schedules", html! {}, "Pause"))
                                }
                                (action_form(base, token, "schedule-trigger", &s.id, "schedules", html! {}, "Trigger now"))
                                (action_form(base, token, "schedule-backfill", &s.id, "schedules", html! {
                                    input name="from" required placeholder="from (RFC 3339)" aria-label="from";
                                    input name="to" required placeholder="to (RFC 3339)" aria-label="to";
                                }, "Backfill"))
                                (action_form(base, token, "schedule-delete", &s.id, "schedules", html! {}, "Delete"))
                            }
                        }
                    }
                }
                @if schedules.is_empty() {
                    tr { td colspan="7" { "No schedules: a service creates them with " code { "Durable::schedules" } "." } }
                }
            }
        }
    };
    layout(base, "Schedules", "Schedules", body)
}
