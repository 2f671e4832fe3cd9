//! The calculator's topology in one process: workers exp/lhs, exp/rhs and ops, and a
//! client, on one store. `=` fans its operands out with `rfi` to group `exp`
//! (preferring lhs and rhs) and calls the operator by name with `rfc` on group `ops`.

mod common;

use std::sync::Arc;
use std::time::Duration;

use durable::prelude::*;
use serde::{Deserialize, Serialize};

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

#[durable::function(name = "+")]
async fn add(_ctx: &mut Context, x: i64, y: i64) -> durable::Result<i64> {
    Ok(x + y)
}

#[durable::function(name = "-")]
async fn sub(_ctx: &mut Context, x: i64, y: i64) -> durable::Result<i64> {
    Ok(x - y)
}

#[durable::function(name = "*")]
async fn mul(_ctx: &mut Context, x: i64, y: i64) -> durable::Result<i64> {
    Ok(x * y)
}

fn op(c: char, l: Expr, r: Expr) -> Expr {
    Expr::Op(c, Box::new(l), Box::new(r))
}

/// A balanced tree of `ops` operators over 1, 2, 3…, and its value.
fn balanced(ops: usize, next: &mut i64) -> (Expr, i64) {
    if ops == 0 {
        *next += 1;
        return (Expr::Num(*next), *next);
    }
    let left = (ops - 1) / 2;
    let (l, lv) = balanced(left, next);
    let (r, rv) = balanced(ops - 1 - left, next);
    match ops % 3 {
        0 => (op('+', l, r), lv + rv),
        1 => (op('-', l, r), lv - rv),
        _ => (op('*', l, r), lv.wrapping_mul(rv)),
    }
}

/// Starts the client and the exp workers; the ops worker comes up ten seconds later,
/// so that every operator call has to wait.
async fn evaluate(store: Arc<dyn Store>, suspend_after: Duration) {
    let base = || Durable::builder().store(store.clone()).suspend_after(suspend_after);
    let client = base().group("client").register(clc).build().unwrap();
    let _lhs = base().group("exp").pid("lhs").register(clc).build().unwrap();
    let _rhs = base().group("exp").pid("rhs").register(clc).build().unwrap();
    let seed = op('*', op('+', Expr::Num(1), Expr::Num(2)), op('-', Expr::Num(3), Expr::Num(4)));
    let handle = client.run("seed", clc, seed).await.unwrap();
    let (expr, value) = balanced(63, &mut 0);
    let big = client.run("big", clc, expr).await.unwrap();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let _ops = base().group("ops").register(add).register(sub).register(mul).build().unwrap();
    assert_eq!(handle.await.unwrap(), -3);

    let lhs = store.task("seed.1").await.unwrap().unwrap();
    assert_eq!(lhs.target.to_string(), "poll://any@exp/lhs");
    let times = store.task("seed.3").await.unwrap().unwrap();
    assert_eq!(times.target.to_string(), "poll://any@ops");
    assert!(
        matches!(store.get("seed.3").await.unwrap().unwrap().param, durable::Param::Call { ref func, .. } if func == "*")
    );

    assert_eq!(big.await.unwrap(), value);
}

/// Waits stay in memory: nothing is suspended, nothing replays.
async fn evaluates_waiting_in_memory(store: Arc<dyn Store>) {
    evaluate(store.clone(), Duration::from_secs(3600)).await;
    let root = store.task("big").await.unwrap().unwrap();
    assert_eq!(root.version, 1, "the root was acquired once and never released");
}

/// Every wait suspends its task, which replays when the awaited promise settles.
async fn evaluates_suspending_on_every_wait(store: Arc<dyn Store>) {
    evaluate(store.clone(), Duration::from_millis(1)).await;
    let root = store.task("big").await.unwrap().unwrap();
    assert!(root.version >= 4, "the root suspended and was redelivered (version {})", root.version);
}

on_every_store!(evaluates_waiting_in_memory, evaluates_suspending_on_every_wait);
