//! The programs `durable` must make easy: the distributed calculator and the
//! function-as-a-service router.

use std::sync::Arc;

use durable::store::PostgresStore;
use durable::{SledStore, Store, StoreError};

pub mod calculator;
pub mod faas;

/// Opens the store a `--store` flag names: a `postgres://` URL (in the schema
/// `DURABLE_SCHEMA`, default `durable`), or a directory for the embedded sled store
/// (created if missing).
pub async fn open_store(spec: &str) -> Result<Arc<dyn Store>, StoreError> {
    if spec.starts_with("postgres://") || spec.starts_with("postgresql://") {
        let schema = std::env::var("DURABLE_SCHEMA").unwrap_or_else(|_| "durable".into());
        Ok(Arc::new(PostgresStore::options(spec).schema(schema).connect().await?))
    } else {
        Ok(Arc::new(SledStore::open(spec)?))
    }
}
