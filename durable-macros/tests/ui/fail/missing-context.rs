#[durable::function]
async fn add(x: i64, y: i64) -> durable::Result<i64> {
    Ok(x + y)
}

#[durable::function]
async fn nothing() -> durable::Result<i64> {
    Ok(0)
}

fn main() {}
