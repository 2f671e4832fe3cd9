//! An invocation's call tree as a timeline, in SVG: a row for each promise, in call
//! order, each a bar from its creation to its settlement (to now while pending),
//! coloured by state. Timers are hatched, a retry's wait says which attempt it
//! preceded, a suspended task's bar is dashed, and a remote call is marked with the
//! group (and pid) it went to. A step's undo (`{n}:undo`) follows the step, and the
//! step names it. Each bar links to its details.

use maud::{Markup, html};

use super::pages::{invocation_url, route, span, state_word};
use crate::{Millis, Node, Param};

/// Pixels: the label column, the bars' width, a row's height.
const LABEL: f64 = 330.0;
const BARS: f64 = 640.0;
const ROW: f64 = 22.0;
const TOP: f64 = 24.0;

/// The rows a timeline draws at most: past that, a page stays quick to draw and to
/// send, and says what it left out.
pub(super) const DRAWN: usize = 1000;

/// The tree's promises in call order, each with its depth.
pub(super) fn flatten(root: &Node) -> Vec<(usize, &Node)> {
    let mut rows = Vec::new();
    let mut stack = vec![(0, root)];
    while let Some((depth, node)) = stack.pop() {
        rows.push((depth, node));
        stack.extend(node.children.iter().rev().map(|c| (depth + 1, c)));
    }
    rows
}

/// A row's label: the last segment of its id, what it is, where it ran.
fn label(node: &Node) -> String {
    let p = &node.promise;
    let last = p.id.rsplit('.').next().unwrap_or(&p.id);
    let mut what = match (&p.param, last.strip_prefix('r').and_then(|k| k.parse::<u64>().ok())) {
        (Param::Timer, Some(k)) => format!("retry wait, before attempt {}", u128::from(k) + 1),
        (param, _) => param.what().to_owned(),
    };
    if let Some(undo) = &p.undo {
        what = format!("{what} (undo: {})", undo.func);
    }
    let mut text = if node.promise.id.contains('.') { format!("{last} {what}") } else { what };
    if let Some(task) = &node.task {
        text.push_str(" @");
        text.push_str(&route(task));
    }
    text
}

/// The timeline of `rows` (the first of a tree's, in call order) of invocation `root`.
pub(super) fn svg(base: &str, root: &str, rows: &[(usize, &Node)], selected: &Node, now: Millis) -> Markup {
    let start = rows.iter().map(|(_, n)| n.promise.created_at).min().unwrap_or(now);
    let end = rows.iter().map(|(_, n)| n.promise.settled_at.unwrap_or(now)).max().unwrap_or(now).max(start + 1);
    let scale = BARS / (end - start) as f64;
    let x = |at: Millis| LABEL + (at.saturating_sub(start)) as f64 * scale;
    let height = TOP + rows.len() as f64 * ROW + 8.0;
    let width = LABEL + BARS + 90.0;
    let ticks: Vec<(f64, String)> =
        (0..=4).map(|i| (LABEL + BARS * i as f64 / 4.0, span((end - start) * i / 4))).collect();
    html! {
        svg xmlns="http://www.w3.org/2000/svg" width=(width) height=(height) viewBox={ "0 0 " (width) " " (height) }
            role="img" aria-label="the invocation's promises over time" {
            defs {
                pattern #hatch width="6" height="6" patternUnits="userSpaceOnUse" patternTransform="rotate(45)" {
                    rect width="3" height="6" class="hatch" {}
                }
            }
            @for (tx, text) in &ticks {
                line.tick x1=(tx) y1="16" x2=(tx) y2=(height) {}
                text.tick x=(tx) y="12" text-anchor="middle" { (text) }
            }
            @for (i, (depth, node)) in rows.iter().enumerate() {
                @let p = &node.promise;
                @let y = TOP + i as f64 * ROW;
                @let x0 = x(p.created_at);
                @let w = (x(p.settled_at.unwrap_or(now)) - x0).max(2.0);
                @let word = state_word(p, node.task.as_ref());
                @let timer = p.param == Param::Timer;
                a href={ (invocation_url(base, root, Some(&p.id))) "#details" } class="bar" data-id=(p.id) {
                    title { (p.id) " · " (word) " · " (span(p.settled_at.unwrap_or(now).saturating_sub(p.created_at))) }
                    // The whole row takes the click; the selected one is highlighted.
                    rect x="0" y=(y) width=(width) height=(ROW)
                        class={ "row" @if std::ptr::eq(*node, selected) { " selected" } } {}
                    text.label x={ (4 + depth * 14) } y=(y + 15.0) { (label(node)) }
                    rect x=(x0) y=(y + 4.0) width=(w) height=(ROW - 8.0) rx="2"
                        class={ "s-" (word) @if timer { " timer" } } {}
                    @if timer { rect x=(x0) y=(y + 4.0) width=(w) height=(ROW - 8.0) fill="url(#hatch)" {} }
                    text.duration x=(x0 + w + 4.0) y=(y + 15.0) { (span(p.settled_at.unwrap_or(now).saturating_sub(p.created_at))) }
                }
            }
        }
    }
}
