//! A small connection pool: at most `size` connections, made on demand, dropped when
//! broken.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use tokio::sync::{Semaphore, SemaphorePermit};
use tokio_postgres::{Client, Config, NoTls, SimpleQueryMessage, Statement};

use crate::StoreError;

pub(crate) struct Pool {
    config: Config,
    schema: String,
    idle: Mutex<Vec<Pooled>>,
    slots: Semaphore,
    /// The server's process ids of this pool's live connections.
    backends: Backends,
}

/// The server's process ids of a pool's live connections: a notification one of them
/// sent is this process's own.
pub(crate) type Backends = Arc<Mutex<HashSet<i32>>>;

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool").field("schema", &self.schema).field("free", &self.slots.available_permits()).finish()
    }
}

/// A connection on loan; it goes back to the pool when dropped, unless it broke or
/// is inside a transaction it did not finish.
pub(crate) struct Conn<'a> {
    pool: &'a Pool,
    client: Option<Pooled>,
    /// Set from BEGIN until COMMIT completes. A transaction runs on the raw client, so
    /// that BEGIN and COMMIT travel with the statements beside them; a connection left
    /// inside one (an error, or a dropped future) is closed, which rolls it back.
    pub(crate) in_transaction: bool,
    _slot: SemaphorePermit<'a>,
}

/// A connection and the statements prepared on it.
struct Pooled {
    client: Client,
    /// The server's process id for it.
    backend: i32,
    prepared: HashMap<&'static str, Statement>,
}

impl std::ops::Deref for Conn<'_> {
    type Target = Client;

    fn deref(&self) -> &Client {
        &self.client.as_ref().expect("present until dropped").client
    }
}

impl std::ops::DerefMut for Conn<'_> {
    fn deref_mut(&mut self) -> &mut Client {
        &mut self.client.as_mut().expect("present until dropped").client
    }
}

impl Conn<'_> {
    /// The statements for `sql`, each prepared once per connection and kept: the
    /// server plans it once, and running it needs no round trip of its own, so the
    /// statements of a step can be pipelined.
    pub(crate) async fn statements<const N: usize>(
        &mut self,
        sql: [&'static str; N],
    ) -> Result<[Statement; N], tokio_postgres::Error> {
        let wanted = self.statements_if(sql.map(|sql| (true, sql))).await?;
        Ok(wanted.map(|statement| statement.expect("every statement was wanted")))
    }

    /// The statements for those `sql` marked wanted, as [`statements`](Self::statements)
    /// gives them; those this connection has not prepared yet are prepared together,
    /// in one round trip.
    pub(crate) async fn statements_if<const N: usize>(
        &mut self,
        sql: [(bool, &'static str); N],
    ) -> Result<[Option<Statement>; N], tokio_postgres::Error> {
        let pooled = self.client.as_mut().expect("present until dropped");
        let mut missing: Vec<&'static str> = Vec::new();
        for (wanted, sql) in sql {
            if wanted && !pooled.prepared.contains_key(sql) && !missing.contains(&sql) {
                missing.push(sql);
            }
        }
        let client = &pooled.client;
        let made = futures::future::try_join_all(missing.iter().map(|sql| client.prepare(sql))).await?;
        pooled.prepared.extend(missing.into_iter().zip(made));
        Ok(sql.map(|(wanted, sql)| wanted.then(|| pooled.prepared[sql].clone())))
    }
}

impl Drop for Conn<'_> {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            if !client.client.is_closed() && !self.in_transaction {
                self.pool.idle.lock().unwrap_or_else(|e| e.into_inner()).push(client);
            } else {
                self.pool.forget(&client);
            }
        }
    }
}

impl Pool {
    pub(crate) fn new(config: Config, schema: String, size: usize) -> Pool {
        let backends = Backends::default();
        Pool { config, schema, idle: Mutex::new(Vec::new()), slots: Semaphore::new(size), backends }
    }

    /// The server's process ids of this pool's live connections.
    pub(crate) fn backends(&self) -> Backends {
        self.backends.clone()
    }

    fn forget(&self, pooled: &Pooled) {
        self.backends.lock().unwrap_or_else(|e| e.into_inner()).remove(&pooled.backend);
    }

    pub(crate) fn config(&self) -> &Config {
        &self.config
    }

    pub(crate) async fn get(&self) -> Result<Conn<'_>, StoreError> {
        let slot = self.slots.acquire().await.map_err(StoreError::backend)?;
        loop {
            let idle = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
            match idle {
                Some(client) if client.client.is_closed() => {
                    self.forget(&client);
                    continue;
                }
                Some(client) => {
                    return Ok(Conn { pool: self, client: Some(client), in_transaction: false, _slot: slot });
                }
                None => break,
            }
        }
        let (client, backend) = self.connect().await?;
        self.backends.lock().unwrap_or_else(|e| e.into_inner()).insert(backend);
        let client = Pooled { client, backend, prepared: HashMap::new() };
        Ok(Conn { pool: self, client: Some(client), in_transaction: false, _slot: slot })
    }

    /// A new connection with the store's schema first on its search path, and the
    /// server's process id for it (read in the round trip that sets up the session).
    pub(crate) async fn connect(&self) -> Result<(Client, i32), StoreError> {
        let (client, connection) = self.config.connect(NoTls).await.map_err(unreachable)?;
        tokio::spawn(async move {
            // Ends when the connection closes; the client then reports is_closed.
            let _ = connection.await;
        });
        // Index plans always: a prepared statement's generic plan, made while the
        // tables were small, would otherwise scan them for the connection's life. And
        // no JIT: a disabled scan's cost, where a small table has no index, would
        // pass its threshold and compile a query that takes microseconds to run.
        let session = client
            .simple_query(&format!(
                "SET search_path TO {}; SET enable_seqscan TO off; SET jit TO off; SET plan_cache_mode TO force_generic_plan;
                 SELECT pg_backend_pid()",
                quote_ident(&self.schema)
            ))
            .await
            .map_err(super::db)?;
        let backend = session
            .iter()
            .find_map(|m| match m {
                SimpleQueryMessage::Row(row) => row.get(0).and_then(|pid| pid.parse().ok()),
                _ => None,
            })
            .ok_or_else(|| StoreError::backend("the server did not give its process id for a new connection"))?;
        Ok((client, backend))
    }
}

pub(crate) fn unreachable(e: tokio_postgres::Error) -> StoreError {
    StoreError::backend(format!("cannot connect to PostgreSQL: {}", super::Pg(e)))
}

/// Quotes an SQL identifier.
pub(crate) fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}
