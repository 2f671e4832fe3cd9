//! The crash sweep over a three-step saga: failing at each step in turn, and canceled
//! at each point between its steps, a crash at any point of the run ends as the
//! crash-free run does: the undos of the steps that completed, each once, last step
//! first, and none for a step that did not complete.

use std::sync::Arc;

use durable::prelude::*;
use durable_testkit::Sweep;

/// A booking: a step whose effect is its promise's value.
#[durable::function]
async fn book(_ctx: &mut Context, account: String, delta: i64, fail: bool) -> durable::Result<i64> {
    if fail {
        return Err(Error::terminal(format!("{account} refuses {delta}")));
    }
    Ok(delta)
}

/// Three bookings, each with its undo; step `fail_at` fails, and with `gates`, the
/// saga waits for a person before each step and after the last.
#[durable::function]
async fn saga(ctx: &mut Context, fail_at: u32, gates: bool) -> durable::Result<i64> {
    let legs = [("alice", -10), ("clearing", 0), ("bob", 10)];
    let mut total = 0;
    for (n, (account, delta)) in legs.into_iter().enumerate() {
        if gates {
            ctx.promise::<()>().id(format!("gate{n}")).await?.await?;
        }
        let fail = n as u32 + 1 == fail_at;
        total += ctx
            .lfc(book, (account.to_owned(), delta, fail))
            .compensate(book, (account.to_owned(), -delta, false))
            .await?;
    }
    if gates {
        ctx.promise::<()>().id("gate3").await?.await?;
    }
    Ok(total)
}

/// Runs the saga as a call of its own (so that it can be canceled) and says how it
/// ended.
#[durable::function]
async fn report(ctx: &mut Context, fail_at: u32, gates: bool) -> durable::Result<String> {
    Ok(match ctx.rfc(saga, (fail_at, gates)).id("transfer").await {
        Ok(total) => format!("booked {total}"),
        Err(e) => e.to_string(),
    })
}

fn workers(store: Arc<dyn Store>) -> Vec<Durable> {
    vec![Durable::builder().store(store).register(report).register(saga).register(book).build().unwrap()]
}

#[tokio::test(start_paused = true)]
async fn a_saga_failing_at_each_step_undoes_what_completed_through_every_crash() {
    for fail_at in 1..=3u32 {
        let sweep = Sweep::new("r", report, (fail_at, false)).workers(workers);
        let report = sweep.run().await.unwrap_or_else(|failure| panic!("failing at step {fail_at}: {failure}"));
        assert_eq!(report.crash_points, 2 * report.writes);
        let undos = report.crash_free_body_runs.get("book").copied().unwrap_or(0) - u64::from(fail_at);
        assert_eq!(undos, u64::from(fail_at - 1), "one undo per completed step: {report:?}");
    }
    // What the result says, checked once without crashes: the undos ran last first.
    let store: Arc<dyn Store> = Arc::new(durable::MemoryStore::new());
    let durable = workers(store).remove(0);
    let said = durable.run("r", report, (3, false)).await.unwrap().await.unwrap();
    assert_eq!(said, "transfer undid transfer.2, transfer.1 after: bob refuses 10");
}

/// A person who opens gates `0..cancel_at`, then cancels the saga at gate
/// `cancel_at`.
async fn canceler(durable: Durable, cancel_at: usize) {
    for n in 0..=cancel_at {
        let gate = format!("gate{n}");
        while durable.promises().get(&gate).await.ok().flatten().is_none() {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        if n < cancel_at {
            let _ = durable.promises().resolve(&gate, &()).await;
        }
    }
    let _ = durable.promises().cancel("transfer").await;
}

#[tokio::test(start_paused = true)]
async fn a_saga_canceled_at_each_point_undoes_what_completed_through_every_crash() {
    let mut said = Vec::new();
    for cancel_at in 0..=3usize {
        let sweep =
            Sweep::new("r", report, (0, true)).workers(workers).outside(move |durable| canceler(durable, cancel_at));
        let explored = sweep.run().await.unwrap_or_else(|failure| panic!("canceled at gate {cancel_at}: {failure}"));
        let booked = explored.crash_free_body_runs.get("book").copied().unwrap_or(0);
        assert_eq!(booked, 2 * cancel_at as u64, "each step before the cancel, and its undo: {explored:?}");
        let store: Arc<dyn Store> = Arc::new(durable::MemoryStore::new());
        let durable = workers(store.clone()).remove(0);
        let outside = tokio::spawn(canceler(durable.clone(), cancel_at));
        said.push(durable.run("r", report, (0, true)).await.unwrap().await.unwrap());
        outside.await.unwrap();
        let transfer = store.get("transfer").await.unwrap().unwrap();
        assert_eq!(transfer.state, durable::State::RejectedCanceled, "canceled at gate {cancel_at}");
    }
    assert_eq!(
        said,
        [
            "promise transfer was canceled",
            "transfer undid transfer.2 after: promise transfer was canceled",
            "transfer undid transfer.4, transfer.2 after: promise transfer was canceled",
            "transfer undid transfer.6, transfer.4, transfer.2 after: promise transfer was canceled",
        ]
    );
}
