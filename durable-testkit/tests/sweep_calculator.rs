//! The full single-crash sweep of the calculator's topology (exp/lhs, exp/rhs and ops
//! workers, and a client) for balanced expressions of 1 to 15 operators.

use std::sync::Arc;

use durable::prelude::*;
use durable_testkit::strategy::crash_schedule;
use durable_testkit::{Sweep, block_on};
use proptest::prelude::*;
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

/// A balanced expression of `ops` operators over 1, 2, 3…
fn balanced(ops: usize, next: &mut i64) -> Expr {
    if ops == 0 {
        *next += 1;
        return Expr::Num(*next);
    }
    let left = (ops - 1) / 2;
    let l = balanced(left, next);
    let r = balanced(ops - 1 - left, next);
    Expr::Op(['+', '-', '*'][ops % 3], Box::new(l), Box::new(r))
}

fn topology(store: Arc<dyn Store>) -> Vec<Durable> {
    let base = || Durable::builder().store(store.clone());
    vec![
        base().group("client").register(clc).build().unwrap(),
        base().group("exp").pid("lhs").register(clc).build().unwrap(),
        base().group("exp").pid("rhs").register(clc).build().unwrap(),
        base().group("ops").register(add).register(sub).register(mul).build().unwrap(),
    ]
}

#[tokio::test(start_paused = true)]
async fn every_single_crash_point_of_the_calculator_recovers() {
    let real = std::time::Instant::now();
    let mut explored = 0;
    for ops in [1, 3, 7, 15] {
        let sweep = Sweep::new("calc", clc, balanced(ops, &mut 0)).workers(topology);
        let report = sweep.run().await.unwrap_or_else(|failure| panic!("{ops} operators: {failure}"));
        assert_eq!(report.crash_points, 2 * report.writes);
        assert!(report.writes >= 3 * ops, "{ops} operators made only {} writes", report.writes);
        let operators: u64 = ["+", "-", "*"].iter().filter_map(|op| report.crash_free_body_runs.get(*op)).sum();
        assert_eq!(operators, ops as u64, "each operator ran once without crashes");
        explored += report.crash_points;
        println!(
            "{ops:>2} operators: {} writes, {} crash points, bodies run {:?}",
            report.writes, report.crash_points, report.body_runs
        );
    }
    println!("{explored} crash points in {:?}", real.elapsed());
}

proptest! {
    #![proptest_config(durable_testkit::strategy::config(256))]

    #[test]
    fn random_multi_crash_schedules_of_the_calculator_recover(schedule in crash_schedule(4, 44), ops in 1..8usize) {
        let sweep = Sweep::new("calc", clc, balanced(ops, &mut 0)).workers(topology);
        let outcome = block_on(sweep.run_schedule(&schedule));
        prop_assert!(outcome.is_ok(), "{}", outcome.unwrap_err());
    }
}
