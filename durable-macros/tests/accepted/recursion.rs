//! A function calls itself through its own name.
use std::sync::Arc;

use durable::prelude::*;

#[durable::function(name = "fact")]
async fn factorial(ctx: &mut Context, n: u64) -> durable::Result<u64> {
    if n <= 1 { Ok(1) } else { Ok(n * ctx.lfc(factorial, n - 1).await?) }
}

pub(crate) fn run() {
    assert_eq!(Callable::name(&factorial), "fact");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let durable = Durable::builder().store(Arc::new(MemoryStore::new())).register(factorial).build().unwrap();
        assert_eq!(durable.run("f", factorial, 10).await.unwrap().await.unwrap(), 3_628_800);
    });
}
