//! The name a durable function defines may be reused: by a `let` binding (often the
//! result of calling it), by a pattern, and by the fields and variants that serde
//! derives code for.
use std::sync::Arc;

use durable::prelude::*;
use serde::{Deserialize, Serialize};

#[allow(non_camel_case_types)]
#[derive(Debug, PartialEq, Serialize, Deserialize)]
enum Step {
    ship,
    refund,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Outcome {
    ship: Option<u64>,
    refund: Option<u64>,
    steps: Vec<Step>,
}

#[durable::function]
async fn ship(_ctx: &mut Context, order: u64) -> durable::Result<u64> {
    Ok(order * 10)
}

#[durable::function]
async fn refund(_ctx: &mut Context, order: u64) -> durable::Result<u64> {
    Ok(order)
}

#[durable::function]
async fn order(ctx: &mut Context, order: u64) -> durable::Result<Outcome> {
    if order == 0 {
        let refund = ctx.lfc(refund, order).await?;
        return Ok(Outcome { ship: None, refund: Some(refund), steps: vec![Step::refund] });
    }
    let ship = ctx.lfc(ship, order).await?;
    match Some(ship) {
        Some(ship) => Ok(Outcome { ship: Some(ship), refund: None, steps: vec![Step::ship] }),
        None => Ok(Outcome { ship: None, refund: None, steps: Vec::new() }),
    }
}

pub(crate) fn run() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let durable = Durable::builder().store(Arc::new(MemoryStore::new())).register(order).build().unwrap();
        let shipped = durable.run("o7", order, 7).await.unwrap().await.unwrap();
        assert_eq!(shipped, Outcome { ship: Some(70), refund: None, steps: vec![Step::ship] });
        let refunded = durable.run("o0", order, 0).await.unwrap().await.unwrap();
        assert_eq!(refunded, Outcome { ship: None, refund: Some(0), steps: vec![Step::refund] });
    });
}
