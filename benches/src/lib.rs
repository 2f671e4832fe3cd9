//! Workloads shared by the criterion benchmarks: a chain of local durable steps, and a
//! way to leave one unfinished so that a new runtime recovers it by replay.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use durable::prelude::*;
use durable::store::PostgresStore;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

static HOLD: AtomicBool = AtomicBool::new(false);
static HELD: Notify = Notify::const_new();

/// One step: its input plus one.
#[durable::function]
pub async fn step(_ctx: &mut Context, x: u64) -> durable::Result<u64> {
    Ok(x + 1)
}

/// Holds the chain open while [`unfinished`] prepares a run, so a runtime can be stopped mid-run.
#[durable::function]
pub async fn gate(_ctx: &mut Context) -> durable::Result<()> {
    if HOLD.load(Ordering::SeqCst) {
        HELD.notify_one();
        std::future::pending::<()>().await;
    }
    Ok(())
}

/// `n` sequential local steps, then the gate.
#[durable::function]
pub async fn chain(ctx: &mut Context, n: u64) -> durable::Result<u64> {
    let mut x = 0;
    for _ in 0..n {
        x = ctx.lfc(step, x).await?;
    }
    ctx.lfc(gate, ()).await?;
    Ok(x)
}

/// `n` sequential local steps, each carrying an undo; if `fail`, it fails at its end
/// and every step is undone.
#[durable::function]
pub async fn saga(ctx: &mut Context, n: u64, fail: bool) -> durable::Result<u64> {
    let mut x = 0;
    for _ in 0..n {
        x = ctx.lfc(step, x).compensate(step, x).await?;
    }
    if fail {
        return Err(Error::terminal("the saga fails at its end"));
    }
    Ok(x)
}

/// A runtime over `store` with the chain and the saga registered.
pub fn runtime(store: &Arc<dyn Store>) -> Durable {
    Durable::builder().store(store.clone()).register(chain).register(saga).build().expect("build")
}

/// Runs a chain of `n` steps to the gate on `store`, then stops the runtime, releasing
/// the invocation for another to recover: `n` settled steps to replay.
pub async fn unfinished(store: &Arc<dyn Store>, id: &str, n: u64) -> Handle<u64> {
    HOLD.store(true, Ordering::SeqCst);
    let durable = runtime(store);
    let handle = durable.run(id, chain, n).await.expect("run");
    HELD.notified().await;
    durable.shutdown().await.expect("shutdown");
    HOLD.store(false, Ordering::SeqCst);
    handle
}

/// A store and the name it is reported under.
pub type Named = (&'static str, Arc<dyn Store>);

/// The stores a benchmark runs on: memory, sled (in the returned directory, which
/// must outlive them) and PostgreSQL in the schema `durable_bench_{name}` when it is
/// reachable. Each keeps its real durability; memory runs on the system clock.
pub fn stores(rt: &tokio::runtime::Runtime, name: &str) -> (Vec<Named>, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut stores: Vec<Named> = vec![
        ("memory", Arc::new(MemoryStore::with_clock(durable::store::SystemClock))),
        ("sled", Arc::new(SledStore::open(dir.path()).expect("open sled"))),
    ];
    if let Some(pg) = rt.block_on(postgres(name)) {
        stores.push(("postgres", pg));
    }
    (stores, dir)
}

/// A PostgresStore in a fresh schema `name`, if `DURABLE_POSTGRES_URL` (default
/// `postgres://postgres@127.0.0.1:5432/test`) is reachable.
pub async fn postgres(name: &str) -> Option<Arc<dyn Store>> {
    let url =
        std::env::var("DURABLE_POSTGRES_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let (client, connection) = match tokio_postgres::connect(&url, tokio_postgres::NoTls).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("PostgreSQL benchmarks skipped: {url} is unreachable: {e}");
            return None;
        }
    };
    tokio::spawn(connection);
    let schema = format!("durable_bench_{name}");
    client.batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE")).await.ok()?;
    let store = PostgresStore::options(&url).schema(schema).connect().await.ok()?;
    Some(Arc::new(store))
}

/// A calculator expression.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Expr {
    /// An integer.
    Num(i64),
    /// An operator and its operands.
    Op(char, Box<Expr>, Box<Expr>),
}

/// The calculator's `=`, as in the example: operands by `rfi` to group exp, the
/// operator by `rfc` to group ops.
#[durable::function(name = "=")]
pub async fn clc(ctx: &mut Context, expr: Expr) -> durable::Result<i64> {
    match expr {
        Expr::Num(n) => Ok(n),
        Expr::Op(op, lhs, rhs) => {
            let px = ctx.rfi(clc, *lhs).target("poll://any@exp/lhs").await?;
            let py = ctx.rfi(clc, *rhs).target("poll://any@exp/rhs").await?;
            let (x, y) = (px.await?, py.await?);
            ctx.rfc(Remote::<(i64, i64), i64>::named(op.to_string()), (x, y)).target("poll://any@ops").await
        }
    }
}

/// `+`
#[durable::function(name = "+")]
pub async fn add(_ctx: &mut Context, x: i64, y: i64) -> durable::Result<i64> {
    Ok(x.wrapping_add(y))
}

/// `-`
#[durable::function(name = "-")]
pub async fn sub(_ctx: &mut Context, x: i64, y: i64) -> durable::Result<i64> {
    Ok(x.wrapping_sub(y))
}

/// The calculator's client, exp/lhs, exp/rhs and ops workers over one store.
pub fn calc_roles(store: &Arc<dyn Store>) -> Vec<Durable> {
    let base = || Durable::builder().store(store.clone()).concurrency(4096);
    vec![
        base().group("client").register(clc).build().expect("client"),
        base().group("exp").pid("lhs").register(clc).build().expect("lhs"),
        base().group("exp").pid("rhs").register(clc).build().expect("rhs"),
        base().group("ops").register(add).register(sub).build().expect("ops"),
    ]
}

/// A balanced expression of `ops` operators over 1, 2, 3…, and its value.
pub fn balanced(ops: usize, next: &mut i64) -> (Expr, i64) {
    if ops == 0 {
        *next += 1;
        return (Expr::Num(*next), *next);
    }
    let left = (ops - 1) / 2;
    let (l, lv) = balanced(left, next);
    let (r, rv) = balanced(ops - 1 - left, next);
    if ops % 2 == 0 {
        (Expr::Op('+', Box::new(l), Box::new(r)), lv.wrapping_add(rv))
    } else {
        (Expr::Op('-', Box::new(l), Box::new(r)), lv.wrapping_sub(rv))
    }
}
