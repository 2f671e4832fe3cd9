//! The programs `durable` must make easy: the distributed calculator and the
//! function-as-a-service router.

use std::sync::Arc;

use durable::{Store, StoreError};

pub mod calculator;
pub mod faas;

/// Prints the library's `tracing` events and spans on stderr as `RUST_LOG` selects
/// (`RUST_LOG=durable=debug`, say); nothing when it is unset.
pub fn trace_from_env() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("off"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
}

/// Opens the store a `--store` flag names: a `postgres://` URL (in the schema
/// `DURABLE_SCHEMA`, default `durable`), or a directory for the embedded sled store
/// (created if missing).
pub async fn open_store(spec: &str) -> Result<Arc<dyn Store>, StoreError> {
    let schema = std::env::var("DURABLE_SCHEMA").unwrap_or_else(|_| "durable".into());
    durable::store::open(spec, &schema).await
}
