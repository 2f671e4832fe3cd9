use durable::prelude::*;

struct Calculator;

impl Calculator {
    #[durable::function]
    async fn add(&self, _ctx: &mut Context, x: i64) -> durable::Result<i64> {
        Ok(x)
    }
}

fn main() {}
