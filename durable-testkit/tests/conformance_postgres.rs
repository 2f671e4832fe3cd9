//! The conformance suite on PostgresStore, each check in a schema of its own.
//!
//! Reads `DURABLE_POSTGRES_URL` (default `postgres://postgres@127.0.0.1:5432/test`).
//! Under `CI=true` an unreachable server fails the test; elsewhere it is reported and
//! the test returns.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use durable::store::{PostgresStore, VirtualClock};

fn url() -> String {
    std::env::var("DURABLE_POSTGRES_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// A unique schema name for this run of this test.
fn schema(n: usize) -> String {
    format!("durable_conformance_{}_{n}", std::process::id())
}

#[tokio::test(start_paused = true)]
async fn postgres_store_conforms() {
    if let Err(e) = PostgresStore::options(&url()).schema(schema(0)).connect().await {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("PostgreSQL at {} is unreachable under CI=true: {e}", url());
        }
        eprintln!("skipped: PostgreSQL at {} is unreachable: {e}", url());
        return;
    }
    let next = AtomicUsize::new(1);
    durable_testkit::conformance::check(|| async {
        let n = next.fetch_add(1, Ordering::SeqCst);
        let store = PostgresStore::options(&url())
            .schema(schema(n))
            .clock(VirtualClock::new())
            .connect()
            .await
            .expect("connect");
        Arc::new(store) as _
    })
    .await;
    let (client, connection) = tokio_postgres::connect(&url(), tokio_postgres::NoTls).await.expect("connect");
    tokio::spawn(connection);
    for n in 0..next.load(Ordering::SeqCst) {
        client
            .batch_execute(&format!("DROP SCHEMA IF EXISTS {} CASCADE", schema(n)))
            .await
            .expect("drop the test schema");
    }
}
