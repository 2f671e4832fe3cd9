//! Zero, one and three arguments: `()`, the value, and a tuple.
use std::sync::Arc;

use durable::prelude::*;

#[durable::function]
async fn zero(_ctx: &mut Context) -> durable::Result<u32> {
    Ok(0)
}

#[durable::function]
async fn one(_ctx: &mut Context, x: u32) -> durable::Result<u32> {
    Ok(x)
}

#[durable::function]
async fn three(_ctx: &mut Context, a: u32, b: String, c: Vec<u32>) -> durable::Result<String> {
    Ok(format!("{a}{b}{}", c.len()))
}

#[durable::function]
async fn all(ctx: &mut Context) -> durable::Result<String> {
    let z = ctx.lfc(zero, ()).await?;
    let o = ctx.lfc(one, 1).await?;
    ctx.lfc(three, (z + o, "-".to_owned(), vec![1, 2])).await
}

/// Takes a function whose arguments are `A`.
fn with_args<A, F: Callable<Args = A>>(_: F) {}

pub(crate) fn run() {
    with_args::<(), _>(zero);
    with_args::<u32, _>(one);
    with_args::<(u32, String, Vec<u32>), _>(three);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let durable = Durable::builder().store(Arc::new(MemoryStore::new())).register(all).build().unwrap();
        assert_eq!(durable.run("all", all, ()).await.unwrap().await.unwrap(), "1-2");
    });
}
