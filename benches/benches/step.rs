//! A fresh local step: one invocation makes N sequential `lfc` calls, each creating
//! and settling a promise. Reported per invocation of 100 steps; divide by 100.

use criterion::{Criterion, Throughput, criterion_main};
use durable::prelude::*;

#[durable::function]
async fn step(_ctx: &mut Context, x: u64) -> durable::Result<u64> {
    Ok(x + 1)
}

#[durable::function]
async fn chain(ctx: &mut Context, n: u64) -> durable::Result<u64> {
    let mut x = 0;
    for _ in 0..n {
        x = ctx.lfc(step, x).await?;
    }
    Ok(x)
}

const STEPS: u64 = 100;

fn fresh_steps(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let (stores, _dir) = durable_benches::stores(&rt, "step");
    let mut group = c.benchmark_group("fresh_local_steps");
    group.throughput(Throughput::Elements(STEPS));
    for (name, store) in stores {
        let durable = rt.block_on(async { Durable::builder().store(store).register(chain).build().expect("runtime") });
        let mut n = 0u64;
        group.bench_function(name, |b| {
            b.iter(|| {
                n += 1;
                rt.block_on(async {
                    let handle = durable.run(&format!("chain-{n}"), chain, STEPS).await.expect("run");
                    assert_eq!(handle.await.expect("result"), STEPS);
                })
            })
        });
    }
    group.finish();
}

#[allow(missing_docs)]
mod harness {
    criterion::criterion_group! {
        name = benches;
        config = criterion::Criterion::default().sample_size(10);
        targets = super::fresh_steps
    }
}
criterion_main!(harness::benches);
