//! The calculator on a balanced 1023-node expression, every role in one process:
//! each sub-expression an `rfi` to group exp, each operator an `rfc` to group ops.

use criterion::criterion_main;
use durable_benches::{balanced, calc_roles, clc};

fn calculator(c: &mut criterion::Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let (stores, _dir) = durable_benches::stores(&rt, "calc");
    let (expr, value) = balanced(511, &mut 0);
    let mut group = c.benchmark_group("calculator_1023_nodes");
    group.sample_size(10);
    for (name, store) in stores {
        let runtimes = rt.block_on(async { calc_roles(&store) });
        let mut n = 0u64;
        group.bench_function(name, |b| {
            b.iter(|| {
                n += 1;
                rt.block_on(async {
                    let handle = runtimes[0].run(&format!("calc-{n}"), clc, expr.clone()).await.expect("run");
                    assert_eq!(handle.await.expect("result"), value);
                })
            })
        });
    }
    group.finish();
}

#[allow(missing_docs)]
mod harness {
    criterion::criterion_group!(benches, super::calculator);
}
criterion_main!(harness::benches);
