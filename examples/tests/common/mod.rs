//! Helpers shared by the examples' tests on PostgreSQL.
#![allow(dead_code, unreachable_pub)]

use std::process::Child;

/// The test database: `DURABLE_POSTGRES_URL`, or the local server.
pub fn url() -> String {
    std::env::var("DURABLE_POSTGRES_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// A connection to the test database; `None` (the test is skipped) if the server is
/// unreachable outside CI. Under `CI=true` an unreachable server fails the test.
pub async fn connect() -> Option<tokio_postgres::Client> {
    match tokio_postgres::connect(&url(), tokio_postgres::NoTls).await {
        Ok((client, connection)) => {
            tokio::spawn(connection);
            Some(client)
        }
        Err(e) if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("PostgreSQL at {} is unreachable under CI=true: {e}", url())
        }
        Err(e) => {
            eprintln!("skipped: PostgreSQL at {} is unreachable: {e}", url());
            None
        }
    }
}

/// Child processes, killed when dropped.
pub struct Processes(pub Vec<Child>);

impl Drop for Processes {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
