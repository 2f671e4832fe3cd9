use std::sync::Arc;
use durable::prelude::*;

#[durable::function]
async fn double(_ctx: &mut Context, x: i64) -> durable::Result<i64> {
    Ok(2 * x)
}

#[durable::function(name = "quad")]
async fn quadruple(ctx: &mut Context, x: i64) -> durable::Result<i64> {
    let twice = ctx.lfc(double, x).await?;
    let h = ctx.lfi(double, twice);
    h.await?.await
}

#[tokio::test(start_paused = true)]
async fn smoke() {
    let d = Durable::builder().store(Arc::new(MemoryStore::new())).register(quadruple).build().unwrap();
    let h = d.run("q", quadruple, 5).await.unwrap();
    assert_eq!(h.await.unwrap(), 20);
}
