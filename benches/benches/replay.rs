//! Recovery: a new runtime takes over an invocation with N settled steps, replays them
//! from the preload, and finishes. Reported per invocation; divide by N for per step.

use std::sync::Arc;

use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_main};
use durable::{MemoryStore, Store};
use durable_benches::{runtime, unfinished};

fn replay(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let mut group = c.benchmark_group("replay/memory");
    for n in [10u64, 100, 1000] {
        group.throughput(Throughput::Elements(n));
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, &n| {
            b.iter_batched(
                || {
                    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
                    let handle = rt.block_on(unfinished(&store, "bench", n));
                    (store, handle)
                },
                |(store, handle)| {
                    rt.block_on(async {
                        let _durable = runtime(&store);
                        assert_eq!(handle.await.expect("result"), n);
                    })
                },
                BatchSize::PerIteration,
            );
        });
    }
    group.finish();
}

#[allow(missing_docs)]
mod harness {
    criterion::criterion_group!(benches, super::replay);
}
criterion_main!(harness::benches);
