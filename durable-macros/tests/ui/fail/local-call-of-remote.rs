use durable::prelude::*;

#[durable::function]
async fn order(ctx: &mut Context) -> durable::Result<u64> {
    ctx.lfc(Remote::<u64, u64>::named("charge"), 100).await
}

fn main() {}
