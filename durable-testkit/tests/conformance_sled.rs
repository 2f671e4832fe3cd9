//! The conformance suite on SledStore, each check in a fresh directory.

use std::sync::{Arc, Mutex};

use durable::SledStore;
use durable::store::VirtualClock;

#[tokio::test(start_paused = true)]
async fn sled_store_conforms() {
    let dirs = Mutex::new(Vec::new());
    durable_testkit::conformance::check(|| async {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let store = SledStore::open_with_clock(dir.path(), VirtualClock::new()).expect("open");
        dirs.lock().unwrap().push(dir);
        Arc::new(store) as _
    })
    .await;
}
