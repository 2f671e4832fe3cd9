//! Public types and futures are `Send` (and `Sync` where they can be), so they work on
//! any tokio runtime.

use durable::prelude::*;

fn send<T: Send>(_: &T) {}
fn send_sync<T: Send + Sync>() {}

#[durable::function]
async fn leaf(_ctx: &mut Context, x: u32) -> durable::Result<u32> {
    Ok(x)
}

#[durable::function]
async fn futures_are_send(ctx: &mut Context) -> durable::Result<u32> {
    let call = ctx.lfi(leaf, 1);
    send(&call);
    let fut = std::future::IntoFuture::into_future(call);
    send(&fut);
    let handle = fut.await?;
    send(&handle);
    let now = ctx.now();
    send(&now);
    now.await?;
    handle.await
}

#[test]
fn types_are_send_and_sync() {
    send_sync::<Durable>();
    send_sync::<MemoryStore>();
    send_sync::<SledStore>();
    send_sync::<durable::Error>();
    send_sync::<durable::Promise>();
    send_sync::<Remote<(i64, i64), i64>>();
    fn send_only<T: Send>() {}
    send_only::<Context>();
    send_only::<Handle<u32>>();
    let _ = futures_are_send;
}
