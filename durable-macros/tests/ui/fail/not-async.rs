use durable::prelude::*;

#[durable::function]
fn add(_ctx: &mut Context, x: i64) -> durable::Result<i64> {
    Ok(x)
}

fn main() {}
