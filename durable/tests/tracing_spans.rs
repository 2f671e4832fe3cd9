//! The runtime's `tracing` spans: one per execution of an invocation (id, function,
//! task version), one per attempt of a body (id, function, attempt), and one per
//! durable call (id, kind, function, target, replayed), nested as the work is; faults
//! are events at `warn` and above. The library installs no subscriber: this test
//! installs one that records.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{builder, memory};
use durable::prelude::*;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing_subscriber::layer::{Context as LayerContext, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;

/// A span as recorded: its name, fields, and its parent's index in the list.
#[derive(Clone, Debug)]
struct Recorded {
    name: &'static str,
    fields: BTreeMap<String, String>,
    parent: Option<usize>,
}

/// A span or event's fields, as text.
struct Fields<'a>(&'a mut BTreeMap<String, String>);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}").trim_matches('"').to_owned());
    }
}

/// Records every span (with its parent) and every event at `warn` or above.
#[derive(Clone, Default)]
struct Recorder {
    spans: Arc<Mutex<Vec<Recorded>>>,
    /// Span id to index in `spans`.
    index: Arc<Mutex<BTreeMap<u64, usize>>>,
    warnings: Arc<Mutex<Vec<BTreeMap<String, String>>>>,
    /// Every event's fields, at any level.
    events: Arc<Mutex<Vec<BTreeMap<String, String>>>>,
}

impl<S: tracing::Subscriber + for<'a> LookupSpan<'a>> tracing_subscriber::Layer<S> for Recorder {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: LayerContext<'_, S>) {
        let mut fields = BTreeMap::new();
        attrs.record(&mut Fields(&mut fields));
        let parent = ctx.span(id).and_then(|s| s.parent()).map(|p| p.id().into_u64());
        let mut index = self.index.lock().unwrap();
        let parent = parent.and_then(|p| index.get(&p).copied());
        let mut spans = self.spans.lock().unwrap();
        index.insert(id.into_u64(), spans.len());
        spans.push(Recorded { name: attrs.metadata().name(), fields, parent });
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, _: LayerContext<'_, S>) {
        if let Some(&i) = self.index.lock().unwrap().get(&id.into_u64()) {
            values.record(&mut Fields(&mut self.spans.lock().unwrap()[i].fields));
        }
    }

    fn on_event(&self, event: &tracing::Event<'_>, _: LayerContext<'_, S>) {
        let mut fields = BTreeMap::new();
        event.record(&mut Fields(&mut fields));
        if *event.metadata().level() <= tracing::Level::WARN {
            self.warnings.lock().unwrap().push(fields.clone());
        }
        self.events.lock().unwrap().push(fields);
    }
}

impl Recorder {
    /// A recorder, as this thread's subscriber until the guard drops.
    fn install() -> (Recorder, tracing::subscriber::DefaultGuard) {
        let recorder = Recorder::default();
        let guard = tracing::subscriber::set_default(tracing_subscriber::registry().with(recorder.clone()));
        (recorder, guard)
    }

    fn spans(&self) -> Vec<Recorded> {
        self.spans.lock().unwrap().clone()
    }
}

#[durable::function]
async fn step(_ctx: &mut Context, x: u64) -> durable::Result<u64> {
    Ok(x + 1)
}

#[durable::function(retry = Retry::Constant { delay: Duration::from_secs(1), max_attempts: 2 })]
async fn order(ctx: &mut Context, x: u64) -> durable::Result<u64> {
    let a = ctx.lfc(step, x).await?;
    let b = ctx.rfc(step, a).target("poll://any@remote").await?;
    ctx.sleep(Duration::from_secs(3600)).await?;
    if ctx.attempt() == 1 {
        return Err(Error::new("the first attempt fails"));
    }
    Ok(b)
}

/// The spans named `name` whose field `key` is `value`.
fn find<'a>(spans: &'a [Recorded], name: &str, key: &str, value: &str) -> Vec<(usize, &'a Recorded)> {
    spans
        .iter()
        .enumerate()
        .filter(|(_, s)| s.name == name && s.fields.get(key).map(String::as_str) == Some(value))
        .collect()
}

#[tokio::test(start_paused = true)]
async fn an_invocation_traces_its_executions_attempts_and_calls_as_a_tree() {
    let (recorder, _default) = Recorder::install();

    let store = memory();
    let _remote = builder(&store).group("remote").register(step).build().unwrap();
    let durable = builder(&store).register(order).build().unwrap();
    assert_eq!(durable.run("o", order, 1).await.unwrap().await.unwrap(), 3);
    let spans = recorder.spans();

    // Executions of the root: the first, and the ones after each suspension (the
    // sleep and the retry's wait), each with the task's version.
    let executions = find(&spans, "invocation", "id", "o");
    assert!(executions.len() >= 2, "the root runs again after it suspends: {executions:?}");
    assert!(executions.iter().all(|(_, s)| s.fields["function"] == "order" && s.parent.is_none()));
    let versions: Vec<u64> = executions.iter().map(|(_, s)| s.fields["task_version"].parse().unwrap()).collect();
    assert!(versions.windows(2).all(|w| w[0] < w[1]), "a new task version each time: {versions:?}");

    // Under the first execution: attempt 1 of the body, and its calls.
    let (first, _) = executions[0];
    let attempts = find(&spans, "attempt", "id", "o");
    let (attempt, _) = attempts.iter().find(|(_, s)| s.parent == Some(first)).copied().expect("attempt 1 under it");
    assert_eq!(spans[attempt].fields["attempt"], "1");
    let calls: Vec<&Recorded> = spans.iter().filter(|s| s.name == "call" && s.parent == Some(attempt)).collect();
    let kinds: Vec<(&str, &str)> =
        calls.iter().map(|c| (c.fields["kind"].as_str(), c.fields["replayed"].as_str())).collect();
    assert_eq!(kinds[..2], [("lfc", "false"), ("rfc", "false")], "made, not replayed: {calls:?}");
    assert_eq!(calls[0].fields["function"], "step");
    assert_eq!(calls[1].fields["target"], "poll://any@remote");
    assert_eq!(calls[1].fields["id"], "o.2");

    // The local child's body runs under its call span.
    let lfc = spans.iter().position(|s| s.name == "call" && s.fields["id"] == "o.1").unwrap();
    let child = find(&spans, "attempt", "id", "o.1");
    assert!(child.iter().any(|(_, s)| s.parent == Some(lfc)), "the child's attempt is under its call: {child:?}");

    // The remote child is an invocation of its own, on the other worker.
    let remote = find(&spans, "invocation", "id", "o.2");
    assert_eq!(remote.len(), 1, "{remote:?}");
    assert_eq!(remote[0].1.fields["function"], "step");

    // The execution after the sleep replays what the first recorded.
    let (later, _) = executions[1];
    let replayed: Vec<&Recorded> = spans
        .iter()
        .filter(|s| s.name == "call" && s.fields["id"] == "o.1")
        .filter(|s| s.parent.is_some_and(|p| spans[p].parent == Some(later)))
        .collect();
    assert!(replayed.iter().any(|c| c.fields["replayed"] == "true"), "replayed in a later execution: {replayed:?}");

    // The failed attempt is a warning with its error and delay.
    let warnings = recorder.warnings.lock().unwrap().clone();
    assert!(
        warnings.iter().any(|w| w.get("id").map(String::as_str) == Some("o")
            && w.get("error").map(String::as_str) == Some("the first attempt fails")
            && w.get("delay_ms").map(String::as_str) == Some("1000")),
        "{warnings:?}"
    );
}

/// A result JSON cannot hold (its map keys are not strings): a platform fault.
#[durable::function]
async fn unencodable(_ctx: &mut Context) -> durable::Result<BTreeMap<(u32, u32), u32>> {
    Ok(BTreeMap::from([((1, 2), 3)]))
}

#[tokio::test(start_paused = true)]
async fn platform_faults_are_warnings_and_a_halt_is_an_error() {
    let (recorder, _default) = Recorder::install();

    let store = memory();
    let durable = builder(&store).register(unencodable).build().unwrap();
    let error = durable.run("u", unencodable, ()).await.unwrap().await.unwrap_err();
    assert!(matches!(error, Error::Halted { .. }), "{error:?}");

    let warnings = recorder.warnings.lock().unwrap().clone();
    let faults: Vec<_> =
        warnings.iter().filter(|w| w.get("message").is_some_and(|m| m.starts_with("a platform fault"))).collect();
    assert_eq!(faults.len(), 4, "four faults released before the fifth halts: {warnings:?}");
    assert!(faults.iter().all(|w| w["task"] == "u" && w["error"].contains("does not encode")), "{faults:?}");
    let halts: Vec<_> = warnings.iter().filter(|w| w.get("message").is_some_and(|m| m.starts_with("halted"))).collect();
    assert_eq!(halts.len(), 1, "{warnings:?}");
    assert!(halts[0]["error"].contains("does not encode"), "{halts:?}");
}

/// Calls `step` in group `remote`, and waits for as long as that group has no worker.
#[durable::function]
async fn forwards(ctx: &mut Context, x: u64) -> durable::Result<u64> {
    ctx.rfc(step, x).target("poll://any@remote").await
}

#[tokio::test(start_paused = true)]
async fn a_call_that_waits_for_a_group_nobody_serves_is_a_warning_once_a_minute() {
    let (recorder, _default) = Recorder::install();
    let unserved = |recorder: &Recorder| {
        let warnings = recorder.warnings.lock().unwrap().clone();
        warnings
            .into_iter()
            .filter(|w| w.get("message").is_some_and(|m| m.contains("no live worker")))
            .collect::<Vec<_>>()
    };

    let store = memory();
    let caller = builder(&store).register(forwards).build().unwrap();
    let handle = caller.run("fw-1", forwards, 1).await.unwrap();
    tokio::time::sleep(Duration::from_secs(50)).await;
    assert!(unserved(&recorder).is_empty(), "not before a minute");
    tokio::time::sleep(Duration::from_secs(20)).await;
    let warned = unserved(&recorder);
    assert_eq!(warned.len(), 1, "{warned:?}");
    assert_eq!((warned[0]["call"].as_str(), warned[0]["group"].as_str()), ("fw-1.1", "remote"));
    assert_eq!(warned[0]["function"], "step");
    assert!(warned[0]["waited_s"].parse::<u64>().unwrap() >= 60, "{warned:?}");
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(unserved(&recorder).len(), 2, "again a minute later while it still waits");

    // A worker of the group starts: the call runs, and the warnings stop.
    let _remote = builder(&store).group("remote").register(step).build().unwrap();
    assert_eq!(handle.await.unwrap(), 2);
    tokio::time::sleep(Duration::from_secs(180)).await;
    assert_eq!(unserved(&recorder).len(), 2);

    // A call to a served group is never a warning.
    caller.run("fw-2", forwards, 2).await.unwrap().await.unwrap();
    tokio::time::sleep(Duration::from_secs(180)).await;
    assert_eq!(unserved(&recorder).len(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_task_held_back_by_a_limit_is_a_debug_event_naming_the_limit_and_key() {
    let (recorder, _default) = Recorder::install();
    let store = memory();
    let limit = durable::Limit::new("one-per-account").function("slow").per_key().concurrency(1);
    store.set_limit(limit, true).await.unwrap();
    let _worker = builder(&store).group("remote").register(slow).build().unwrap();
    let client = builder(&store).group("client").build().unwrap();
    let mut handles = Vec::new();
    for n in 0..3 {
        let call = client.rpc(&format!("s{n}"), slow, n).target("poll://any@remote").key("acct-42");
        handles.push(call.await.unwrap());
    }
    for handle in handles {
        handle.await.unwrap();
    }
    let events = recorder.events.lock().unwrap().clone();
    let held: Vec<_> =
        events.iter().filter(|e| e.get("message").is_some_and(|m| m == "tasks wait on a limit")).collect();
    assert!(!held.is_empty(), "no event for the tasks held back");
    assert_eq!((held[0]["limit"].as_str(), held[0]["key"].as_str()), ("one-per-account", "acct-42"), "{held:?}");
    assert_eq!((held[0]["group"].as_str(), held[0]["waiting"].as_str()), ("remote", "2"), "{held:?}");
}

/// Takes a second.
#[durable::function]
async fn slow(_ctx: &mut Context, x: u64) -> durable::Result<u64> {
    tokio::time::sleep(Duration::from_secs(1)).await;
    Ok(x)
}
