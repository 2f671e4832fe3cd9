use durable::prelude::*;

#[durable::function]
async fn charge(_ctx: &mut Context, cents: u64) -> durable::Result<u64> {
    Ok(cents)
}

#[durable::function]
async fn order(ctx: &mut Context) -> durable::Result<u64> {
    ctx.rfc(charge, 100).target("poll://any@payments").retry(Retry::Never).await
}

fn main() {}
