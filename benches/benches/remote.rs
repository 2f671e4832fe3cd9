//! A remote round trip: a client starts an invocation on another worker group and
//! awaits its result, through the store's task queue. On memory, on sled (where each
//! write waits for its flush) and on PostgreSQL when it is reachable.

use criterion::{Criterion, criterion_main};
use durable::prelude::*;

#[durable::function]
async fn echo(_ctx: &mut Context, x: u64) -> durable::Result<u64> {
    Ok(x)
}

fn round_trip(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let (stores, _dir) = durable_benches::stores(&rt, "remote");
    let mut group = c.benchmark_group("remote_round_trip");
    for (name, store) in stores {
        let (client, _worker) = rt.block_on(async {
            let worker = Durable::builder().store(store.clone()).group("echo").register(echo).build().expect("worker");
            let client = Durable::builder().store(store.clone()).group("client").build().expect("client");
            (client, worker)
        });
        let mut n = 0u64;
        group.bench_function(name, |b| {
            b.iter(|| {
                n += 1;
                rt.block_on(async {
                    let handle = client.rpc(&format!("rt-{n}"), echo, n).target("poll://any@echo").await.expect("rpc");
                    assert_eq!(handle.await.expect("result"), n);
                })
            })
        });
    }
    group.finish();
}

#[allow(missing_docs)]
mod harness {
    criterion::criterion_group!(benches, super::round_trip);
}
criterion_main!(harness::benches);
