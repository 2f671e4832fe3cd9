use durable::prelude::*;

#[durable::function]
async fn lookup(_ctx: &mut Context, key: String) -> Result<String, String> {
    Ok(key)
}

fn main() {}
