use durable::prelude::*;

#[durable::function(name = "add", retries = 3)]
async fn add(_ctx: &mut Context, x: i64) -> durable::Result<i64> {
    Ok(x)
}

fn main() {}
