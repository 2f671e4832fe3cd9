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

fn main() {
    let _: fn() = || {
        let _: <zero as Callable>::Args = ();
        let _: <one as Callable>::Args = 1u32;
        let _: <three as Callable>::Args = (1u32, String::new(), Vec::<u32>::new());
    };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let durable = Durable::builder().store(Arc::new(MemoryStore::new())).register(all).build().unwrap();
        assert_eq!(durable.run("all", all, ()).await.unwrap().await.unwrap(), "1-2");
    });
}
