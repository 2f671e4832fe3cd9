use durable::prelude::*;

struct Connection;

#[durable::function]
async fn query(_ctx: &mut Context, conn: Connection) -> durable::Result<i64> {
    let _ = conn;
    Ok(1)
}

fn main() {}
