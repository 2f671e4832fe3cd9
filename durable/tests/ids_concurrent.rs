//! Child ids do not depend on the order concurrent branches run in.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use durable::prelude::*;

static ORDER: Mutex<Vec<String>> = Mutex::new(Vec::new());

#[durable::function]
async fn leaf(_ctx: &mut Context, tag: String, n: u32) -> durable::Result<String> {
    ORDER.lock().unwrap().push(format!("{tag}{n}"));
    Ok(format!("{tag}{n}"))
}

#[durable::function]
async fn branch(ctx: &mut Context, tag: String, delay_ms: u64) -> durable::Result<String> {
    tokio::time::sleep(Duration::from_millis(delay_ms)).await;
    let a = ctx.lfc(leaf, (tag.clone(), 1)).await?;
    let b = ctx.lfc(leaf, (tag, 2)).await?;
    Ok(a + &b)
}

#[durable::function]
async fn fork(ctx: &mut Context, delay_a: u64, delay_b: u64) -> durable::Result<String> {
    let a = ctx.lfi(branch, ("a".into(), delay_a)).await?;
    let b = ctx.lfi(branch, ("b".into(), delay_b)).await?;
    let (a, b) = tokio::join!(a, b);
    Ok(a? + &b?)
}

async fn run(delay_a: u64, delay_b: u64) -> (Vec<String>, Vec<(String, Option<String>)>) {
    ORDER.lock().unwrap().clear();
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let durable = Durable::builder().store(store.clone()).register(fork).build().unwrap();
    let result = durable.run("fork", fork, (delay_a, delay_b)).await.unwrap().await.unwrap();
    assert_eq!(result, "a1a2b1b2");
    let search = durable::store::Search { prefix: "fork.".into(), ..Default::default() };
    let page = store.search(search).await.unwrap();
    let tree = page.promises.into_iter().map(|p| (p.id, p.value)).collect();
    (ORDER.lock().unwrap().clone(), tree)
}

#[tokio::test(start_paused = true)]
async fn joined_branches_mint_the_same_ids_whichever_runs_first() {
    let (order_a_first, tree_a_first) = run(0, 10).await;
    let (order_b_first, tree_b_first) = run(10, 0).await;
    assert_eq!(order_a_first, ["a1", "a2", "b1", "b2"]);
    assert_eq!(order_b_first, ["b1", "b2", "a1", "a2"], "the branches really ran in the other order");
    let ids: Vec<_> = tree_a_first.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(ids, ["fork.1", "fork.1.1", "fork.1.2", "fork.2", "fork.2.1", "fork.2.2"]);
    // Same ids, same settled values (the branches' own arguments differ in delay only,
    // which is not part of any id).
    assert_eq!(tree_a_first, tree_b_first);
}
