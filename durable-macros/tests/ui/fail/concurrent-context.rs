//! Two concurrent branches cannot mint ids from one context.
use durable::prelude::*;

#[durable::function]
async fn leaf(_ctx: &mut Context, x: u32) -> durable::Result<u32> {
    Ok(x)
}

#[durable::function]
async fn both(ctx: &mut Context) -> durable::Result<u32> {
    let (a, b) = tokio::join!(async { ctx.lfc(leaf, 1).await }, async { ctx.lfc(leaf, 2).await });
    Ok(a? + b?)
}

fn main() {}
