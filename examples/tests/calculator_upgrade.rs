//! An upgrade of the calculator while evaluations are in flight: the new `=` records
//! the text of what it evaluates (an extra call) behind a patch. The replay check,
//! run against the store before the deploy, passes for the patched code and names
//! every divergence of the same change made without the patch; evaluations started
//! on the old code then finish correctly on the new, on the old path, and new ones
//! take the new path.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use durable::prelude::*;
use durable::{Builder, Verdict};
use durable_examples::calculator::{self, Expr, Role, add, div, mul, parse, sub};

/// How often the new `=` recorded a text.
static RECORDED: AtomicUsize = AtomicUsize::new(0);

#[durable::function]
async fn record(_ctx: &mut Context, text: String) -> durable::Result<String> {
    RECORDED.fetch_add(1, Ordering::SeqCst);
    Ok(text)
}

/// The new `=`: what it evaluates is recorded first, behind a patch.
#[durable::function(name = "=")]
async fn clc_v2(ctx: &mut Context, expr: Expr) -> durable::Result<i64> {
    match expr {
        Expr::Num(n) => Ok(n),
        Expr::Op(op, lhs, rhs) => {
            if ctx.patched("record-text").await? {
                ctx.lfc(record, format!("({lhs} {} {rhs})", op.symbol())).await?;
            }
            let px = ctx.rfi(clc_v2, *lhs).target("poll://any@exp/lhs").await?;
            let py = ctx.rfi(clc_v2, *rhs).target("poll://any@exp/rhs").await?;
            let (x, y) = (px.await?, py.await?);
            ctx.rfc(Remote::<(i64, i64), i64>::named(op.symbol()), (x, y)).target("poll://any@ops").await
        }
    }
}

/// The same change with no patch.
#[durable::function(name = "=")]
async fn clc_unpatched(ctx: &mut Context, expr: Expr) -> durable::Result<i64> {
    match expr {
        Expr::Num(n) => Ok(n),
        Expr::Op(op, lhs, rhs) => {
            ctx.lfc(record, format!("({lhs} {} {rhs})", op.symbol())).await?;
            let px = ctx.rfi(clc_unpatched, *lhs).target("poll://any@exp/lhs").await?;
            let py = ctx.rfi(clc_unpatched, *rhs).target("poll://any@exp/rhs").await?;
            let (x, y) = (px.await?, py.await?);
            ctx.rfc(Remote::<(i64, i64), i64>::named(op.symbol()), (x, y)).target("poll://any@ops").await
        }
    }
}

/// The new deploy: every role, with the new `=`.
fn new_roles(store: &Arc<dyn Store>) -> Vec<Durable> {
    let with = |group: &str, pid: &str| Durable::builder().store(store.clone()).group(group).pid(pid);
    vec![
        with("client", "client").register(clc_v2).register(record).build().unwrap(),
        with("exp", "lhs").register(clc_v2).register(record).build().unwrap(),
        with("exp", "rhs").register(clc_v2).register(record).build().unwrap(),
        with("ops", "ops").register(add).register(sub).register(mul).register(div).build().unwrap(),
    ]
}

#[tokio::test(start_paused = true)]
async fn evaluations_started_on_the_old_code_finish_on_the_new() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let lease = Duration::from_secs(30);
    // The old deploy, without its operators yet: every `=` waits for one.
    let old: Vec<Durable> = [Role::Client, Role::Lhs, Role::Rhs]
        .into_iter()
        .map(|role| role.runtime(store.clone(), lease).unwrap())
        .collect();
    let expression = "(1 + 2) * (3 - 4) + 10 / 5";
    let started = old[0].run("upgrade-1", calculator::clc, parse(expression).unwrap()).await.unwrap();
    // Half done: the operands of both leaves' operators are in, the operators pending.
    for waiting in ["upgrade-1.1.1.3", "upgrade-1.1.2.3", "upgrade-1.2.3"] {
        while store.get(waiting).await.unwrap().is_none() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    drop(old);

    // Before the deploy, the replay check over the store.
    let check = |builder: Builder| {
        let store = store.clone();
        async move { builder.checker().unwrap().check_store(&*store, 0).await.unwrap() }
    };
    let unpatched = check(Durable::builder().register(clc_unpatched).register(record)).await;
    let diverged: Vec<&str> =
        unpatched.iter().filter(|c| matches!(c.verdict, Verdict::Diverges(_))).map(|c| c.id.as_str()).collect();
    assert_eq!(
        diverged,
        ["upgrade-1", "upgrade-1.1", "upgrade-1.1.1", "upgrade-1.1.2", "upgrade-1.2"],
        "every `=` in flight: {unpatched:#?}"
    );
    let patched = check(Durable::builder().register(clc_v2).register(record)).await;
    assert!(patched.iter().all(|c| c.is_ok()), "{patched:#?}");
    let old_path: Vec<&str> = patched.iter().filter(|c| !c.old_paths.is_empty()).map(|c| c.id.as_str()).collect();
    assert_eq!(old_path, diverged, "each takes the old path of the patch");
    assert_eq!(RECORDED.load(Ordering::SeqCst), 0, "the check made no new call");

    // The deploy: the evaluation finishes, correctly, on the old path.
    let new = new_roles(&store);
    assert_eq!(started.await.unwrap(), -1, "{expression}");
    assert_eq!(RECORDED.load(Ordering::SeqCst), 0, "no evaluation in flight took the new path");

    // A new evaluation takes the new path: one record per operator.
    let handle = new[0].run("upgrade-2", clc_v2, parse("(1 + 2) * 3").unwrap()).await.unwrap();
    assert_eq!(handle.await.unwrap(), 9);
    assert_eq!(RECORDED.load(Ordering::SeqCst), 2);
    let text = new[0].get("upgrade-2.1").await.unwrap().unwrap().value;
    assert_eq!(text.as_deref(), Some("\"((1 + 2) * 3)\""), "the root recorded its text first");
}
