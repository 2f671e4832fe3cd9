//! `now`, `random` and `uuid` are recorded once and replayed after a crash.

mod common;

use std::sync::Mutex;
use std::time::SystemTime;

use common::{arrived, builder, gate, memory, open};
use durable::prelude::*;

static FIRST: Mutex<Option<(SystemTime, u64, String)>> = Mutex::new(None);

#[durable::function]
async fn blocker(_ctx: &mut Context, key: String) -> durable::Result<()> {
    gate(&key).await;
    Ok(())
}

#[durable::function]
async fn values(ctx: &mut Context, key: String) -> durable::Result<(SystemTime, u64, String)> {
    let now = ctx.now().await?;
    let random = ctx.random().await?;
    let uuid = ctx.uuid().await?;
    FIRST.lock().unwrap().get_or_insert_with(|| (now, random, uuid.clone()));
    ctx.lfc(blocker, key).await?;
    Ok((now, random, uuid))
}

#[tokio::test(start_paused = true)]
async fn recorded_values_replay_unchanged_after_a_crash() {
    let store = memory();
    let first = builder(&store).register(values).build().unwrap();
    let handle = first.run("vals", values, "vals".into()).await.unwrap();
    arrived("vals").await;
    drop(first);
    open("vals");
    let _second = builder(&store).register(values).build().unwrap();
    let replayed = handle.await.unwrap();
    let recorded = FIRST.lock().unwrap().clone().unwrap();
    assert_eq!(replayed, recorded, "the second run saw the first run's values, 30 s later");

    let (_, _, uuid) = replayed;
    let groups: Vec<_> = uuid.split('-').map(str::len).collect();
    assert_eq!(groups, [8, 4, 4, 4, 12], "{uuid}");
    assert_eq!(&uuid[14..15], "4", "a version 4 uuid: {uuid}");
    assert!("89ab".contains(&uuid[19..20]), "the RFC 4122 variant: {uuid}");
}
