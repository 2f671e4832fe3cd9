//! Recovery: a new runtime takes over an invocation with N settled steps, replays them
//! from the preload, and finishes. Reported per invocation; divide by N for per step.
//! On memory, on sled and on PostgreSQL when it is reachable.

use std::sync::Arc;

use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_main};
use durable::{MemoryStore, SledStore, Store};
use durable_benches::{runtime, unfinished};

fn replay(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let postgres = rt.block_on(durable_benches::postgres("replay")).is_some();
    let mut stores = vec!["memory", "sled"];
    if postgres {
        stores.push("postgres");
    }
    for store in stores {
        let mut group = c.benchmark_group(format!("replay/{store}"));
        if store != "memory" {
            group.sample_size(10);
        }
        let sizes: &[u64] = if store == "postgres" { &[10, 100] } else { &[10, 100, 1000] };
        for &n in sizes {
            group.throughput(Throughput::Elements(n));
            group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, &n| {
                b.iter_batched(
                    || {
                        rt.block_on(async {
                            let dir = tempfile::tempdir().expect("a temporary directory");
                            let store: Arc<dyn Store> = match store {
                                "memory" => Arc::new(MemoryStore::new()),
                                "sled" => Arc::new(SledStore::open(dir.path()).expect("open")),
                                _ => durable_benches::postgres("replay").await.expect("reachable"),
                            };
                            let handle = unfinished(&store, "bench", n).await;
                            (store, handle, dir)
                        })
                    },
                    // What the routine returns is dropped outside the measurement.
                    |(store, handle, dir)| {
                        let durable = rt.block_on(async {
                            let durable = runtime(&store);
                            assert_eq!(handle.await.expect("result"), n);
                            durable
                        });
                        (durable, store, dir)
                    },
                    BatchSize::PerIteration,
                );
            });
        }
        group.finish();
    }
}

#[allow(missing_docs)]
mod harness {
    criterion::criterion_group!(benches, super::replay);
}
criterion_main!(harness::benches);
