//! Concurrent clients: several runtimes over one store start the same ids at once.
//! Every body runs once per id, and every caller gets the same value, on every store;
//! on PostgreSQL each client has a store of its own (its own connections), as separate
//! processes would.
//!
//! Reads `DURABLE_POSTGRES_URL`; under `CI=true` an unreachable server fails the test.

mod common;

use std::sync::Arc;

use common::{ran, runs};
use durable::prelude::*;
use durable::store::PostgresStore;

const CLIENTS: usize = 3;
const IDS: usize = 40;

/// Runs once per id: its value holds a recorded uuid, so two runs would differ.
#[durable::function]
async fn mint(ctx: &mut Context, key: String) -> durable::Result<String> {
    ran(&key);
    let token = ctx.uuid().await?;
    Ok(format!("{key}:{token}"))
}

/// Each client runs every id at once; returns, per client, the values it was given.
async fn race(stores: Vec<Arc<dyn Store>>, label: &str) {
    let clients: Vec<Durable> =
        stores.into_iter().map(|s| Durable::builder().store(s).register(mint).build().unwrap()).collect();
    let mut calls = Vec::new();
    for n in 0..IDS {
        for client in &clients {
            let (client, key) = (client.clone(), format!("{label}-{n}"));
            calls.push(tokio::spawn(async move {
                let value = client.run(&key, mint, key.clone()).await.unwrap().await.unwrap();
                (key, value)
            }));
        }
    }
    let mut values = std::collections::BTreeMap::<String, Vec<String>>::new();
    for call in calls {
        let (key, value) = call.await.unwrap();
        values.entry(key).or_default().push(value);
    }
    for (key, seen) in values {
        assert_eq!(seen.len(), CLIENTS);
        assert!(seen.iter().all(|v| *v == seen[0]), "{key}: every caller gets the one value: {seen:?}");
        assert_eq!(runs(&key), 1, "{key}: the body ran once");
    }
}

#[tokio::test(start_paused = true)]
async fn clients_of_one_memory_store_run_each_id_once() {
    let store = common::memory();
    race(vec![store; CLIENTS], "memory").await;
}

#[tokio::test(start_paused = true)]
async fn clients_of_one_sled_store_run_each_id_once() {
    let (store, _dir) = common::sled();
    race(vec![store; CLIENTS], "sled").await;
}

#[tokio::test]
async fn clients_of_one_postgres_database_run_each_id_once() {
    let url =
        std::env::var("DURABLE_POSTGRES_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let schema = format!("durable_clients_{}", std::process::id());
    let mut stores: Vec<Arc<dyn Store>> = Vec::new();
    for _ in 0..CLIENTS {
        match PostgresStore::options(&url).schema(&schema).connect().await {
            Ok(store) => stores.push(Arc::new(store)),
            Err(e) if std::env::var("CI").as_deref() == Ok("true") => {
                panic!("PostgreSQL at {url} is unreachable under CI=true: {e}")
            }
            Err(e) => return eprintln!("skipped: PostgreSQL at {url} is unreachable: {e}"),
        }
    }
    race(stores, "postgres").await;
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    client.batch_execute(&format!("DROP SCHEMA {schema} CASCADE")).await.unwrap();
}
