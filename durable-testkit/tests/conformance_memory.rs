//! The conformance suite on MemoryStore.

use std::sync::Arc;

#[tokio::test(start_paused = true)]
async fn memory_store_conforms() {
    durable_testkit::conformance::check(|| async { Arc::new(durable::MemoryStore::new()) as _ }).await;
}
