//! Sagas: an undo attached to a step runs, last step first and exactly once, for the
//! steps that completed, when the function fails for good or is canceled; the result
//! says what was undone; a failed undo halts for a person; nested functions compose;
//! a bad undo is refused when it is attached.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use durable::prelude::*;
use durable::{MemoryStore, Remote, State, TaskState};

/// The bank: balances, and the bookings applied, each once, by the promise that
/// made it.
static BANK: Mutex<Option<Bank>> = Mutex::new(None);

#[derive(Default)]
struct Bank {
    balances: BTreeMap<String, i64>,
    applied: Vec<String>,
}

fn bank<T>(f: impl FnOnce(&mut Bank) -> T) -> T {
    f(BANK.lock().unwrap().get_or_insert_with(Bank::default))
}

fn balances() -> BTreeMap<String, i64> {
    bank(|b| b.balances.clone())
}

fn applied() -> Vec<String> {
    bank(|b| b.applied.clone())
}

/// Books `delta` to `account`, once per promise; fails for good if told to.
#[durable::function]
async fn book(ctx: &mut Context, account: String, delta: i64, fail: bool) -> durable::Result<i64> {
    if fail {
        return Err(Error::terminal(format!("{account} refuses {delta}")));
    }
    Ok(apply(ctx.id(), &account, delta))
}

/// Books `delta` to `account` unless booking `id` was applied already.
fn apply(id: &str, account: &str, delta: i64) -> i64 {
    bank(|b| {
        if !b.applied.iter().any(|done| done == id) {
            b.applied.push(id.to_owned());
            *b.balances.entry(account.to_owned()).or_default() += delta;
        }
        b.balances[account]
    })
}

/// Moves `amount` from `a` to `b` through a clearing account, in three steps; step
/// `fail_at` fails.
#[durable::function]
async fn transfer(ctx: &mut Context, amount: i64, fail_at: u32) -> durable::Result<i64> {
    let legs = [("alice", -amount), ("clearing", 0), ("bob", amount)];
    let mut last = 0;
    for (n, (account, delta)) in legs.into_iter().enumerate() {
        let fail = n as u32 + 1 == fail_at;
        last = ctx
            .lfc(book, (account.to_owned(), delta, fail))
            .compensate(book, (account.to_owned(), -delta, false))
            .await?;
    }
    Ok(last)
}

fn runtime(store: Arc<dyn Store>) -> Durable {
    Durable::builder()
        .store(store)
        .register(book)
        .register(transfer)
        .register(gated)
        .register(outer)
        .register(flaky_undo)
        .register(careful)
        .register(retried)
        .build()
        .unwrap()
}

fn conserved() {
    let total: i64 = balances().values().sum();
    assert_eq!(total, 0, "money is neither made nor lost: {:?}", balances());
}

#[tokio::test(start_paused = true)]
async fn a_failing_step_undoes_the_steps_before_it_last_first() {
    for fail_at in 1..=3u32 {
        *BANK.lock().unwrap() = None;
        let durable = runtime(Arc::new(MemoryStore::new()));
        let id = format!("t{fail_at}");
        let error = durable.run(&id, transfer, (10, fail_at)).await.unwrap().await.unwrap_err();
        let done: Vec<String> = (1..fail_at).map(|n| format!("{id}.{n}")).collect();
        let undone: Vec<String> = done.iter().rev().cloned().collect();
        if undone.is_empty() {
            assert!(matches!(&error, Error::Application { terminal: true, .. }), "nothing to undo: {error:?}");
        } else {
            let Error::Compensated { id: failed, cause, undone: said } = &error else {
                panic!("step {fail_at} failed: {error:?}")
            };
            assert_eq!((failed, said), (&id, &undone), "the result says what was undone, last step first");
            assert!(cause.to_string().contains("refuses"), "{cause}");
        }
        let mut expected = done.clone();
        expected.extend(undone.iter().map(|step| format!("{step}:undo")));
        assert_eq!(applied(), expected, "each completed step, then its undo, once, in reverse");
        conserved();
        assert!(balances().values().all(|b| *b == 0), "{:?}", balances());
        let stored = durable.promises().get(&id).await.unwrap().unwrap();
        assert_eq!(stored.state, State::Rejected);
        let step = durable.promises().get(&format!("{id}.{fail_at}")).await.unwrap().unwrap();
        let undo = step.undo.expect("the undo is recorded with the step");
        assert_eq!((undo.func.as_str(), undo.version), ("book", 1));
    }
}

/// A transfer that waits at a gate between its steps: a person opens each gate.
#[durable::function]
async fn gated(ctx: &mut Context, amount: i64) -> durable::Result<i64> {
    let legs = [("alice", -amount), ("clearing", 0), ("bob", amount)];
    let mut last = 0;
    for (n, (account, delta)) in legs.into_iter().enumerate() {
        ctx.promise::<()>().id(format!("{}-gate{n}", ctx.id())).await?.await?;
        last = ctx
            .lfc(book, (account.to_owned(), delta, false))
            .compensate(book, (account.to_owned(), -delta, false))
            .await?;
    }
    Ok(last)
}

/// Waits until `id` exists.
async fn appears(durable: &Durable, id: &str) {
    while durable.promises().get(id).await.unwrap().is_none() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(start_paused = true)]
async fn cancel_waits_for_the_undos_of_the_steps_done() {
    for cancel_at in 0..=2usize {
        *BANK.lock().unwrap() = None;
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let durable = runtime(store.clone());
        let id = format!("g{cancel_at}");
        let handle = durable.run(&id, gated, 10).await.unwrap();
        for n in 0..cancel_at {
            let gate = format!("{id}-gate{n}");
            appears(&durable, &gate).await;
            durable.promises().resolve(&gate, &()).await.unwrap();
        }
        appears(&durable, &format!("{id}-gate{cancel_at}")).await;
        let asked = durable.promises().cancel(&id).await.unwrap();
        let error = handle.await.unwrap_err();
        let done: Vec<String> = (1..=cancel_at).map(|n| format!("{id}.{}", 2 * n)).collect();
        let undone: Vec<String> = done.iter().rev().cloned().collect();
        if undone.is_empty() {
            assert_eq!(asked.state, State::RejectedCanceled, "nothing owes an undo: canceled at once");
            assert!(matches!(&error, Error::Canceled { .. }), "{error:?}");
        } else {
            assert!(asked.canceling && asked.state == State::Pending, "it settles after its undos: {asked:?}");
            let Error::Compensated { cause, undone: said, .. } = &error else { panic!("{error:?}") };
            assert!(matches!(**cause, Error::Canceled { .. }), "{cause:?}");
            assert_eq!(said, &undone);
        }
        let mut expected = done.clone();
        expected.extend(undone.iter().map(|step| format!("{step}:undo")));
        assert_eq!(applied(), expected);
        conserved();
        let stored = store.get(&id).await.unwrap().unwrap();
        assert_eq!(stored.state, State::RejectedCanceled, "settled as canceled, after the undos");
        assert_eq!(store.task(&id).await.unwrap().unwrap().state, TaskState::Fulfilled);
    }
}

/// A step before and after a transfer that fails: the transfer undoes its own
/// steps, then the caller undoes its own.
#[durable::function]
async fn outer(ctx: &mut Context) -> durable::Result<i64> {
    ctx.lfc(book, ("fees".to_owned(), 1, false)).compensate(book, ("fees".to_owned(), -1, false)).await?;
    ctx.lfc(transfer, (10, 3)).await
}

#[tokio::test(start_paused = true)]
async fn a_nested_function_undoes_its_steps_before_its_caller_does() {
    *BANK.lock().unwrap() = None;
    let durable = runtime(Arc::new(MemoryStore::new()));
    let error = durable.run("o", outer, ()).await.unwrap().await.unwrap_err();
    let Error::Compensated { undone, cause, .. } = &error else { panic!("{error:?}") };
    assert_eq!(undone, &["o.1"]);
    assert!(matches!(&**cause, Error::Compensated { undone, .. } if undone == &["o.2.2", "o.2.1"]), "{cause:?}");
    assert_eq!(applied(), ["o.1", "o.2.1", "o.2.2", "o.2.2:undo", "o.2.1:undo", "o.1:undo"]);
    conserved();
}

/// Tells the undo of the first step to fail for good until it is allowed.
static UNDO_MAY_WORK: Mutex<bool> = Mutex::new(false);

#[durable::function]
async fn flaky_undo(ctx: &mut Context, account: String, delta: i64) -> durable::Result<i64> {
    if !*UNDO_MAY_WORK.lock().unwrap() {
        return Err(Error::terminal("the bank is closed"));
    }
    ctx.lfc(book, (account, delta, false)).await
}

#[durable::function]
async fn careful(ctx: &mut Context) -> durable::Result<i64> {
    ctx.lfc(book, ("alice".to_owned(), -5, false)).compensate(flaky_undo, ("alice".to_owned(), 5)).await?;
    ctx.lfc(book, ("bob".to_owned(), 5, true)).await
}

#[tokio::test(start_paused = true)]
async fn an_undo_that_fails_for_good_halts_until_resumed() {
    *BANK.lock().unwrap() = None;
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let durable = runtime(store.clone());
    let error = durable.run("c", careful, ()).await.unwrap().await.unwrap_err();
    assert!(
        matches!(&error, Error::Halted { reason, .. } if reason.contains("c.1:undo") && reason.contains("the bank is closed")),
        "{error:?}"
    );
    let task = store.task("c").await.unwrap().unwrap();
    assert_eq!(task.state, TaskState::Halted);
    assert_eq!(store.get("c").await.unwrap().unwrap().state, State::Pending, "not settled while an undo is owed");
    // A replay for any other reason halts again: nothing runs the undo by itself.
    tokio::time::sleep(Duration::from_secs(300)).await;
    assert_eq!(store.task("c").await.unwrap().unwrap().state, TaskState::Halted);
    assert_eq!(store.get("c.1:undo2").await.unwrap(), None);
    *UNDO_MAY_WORK.lock().unwrap() = true;
    assert_eq!(durable.promises().resume("c").await.unwrap(), 1);
    let error = durable.run("c", careful, ()).await.unwrap().await.unwrap_err();
    let Error::Compensated { undone, .. } = &error else { panic!("{error:?}") };
    assert_eq!(undone, &["c.1"]);
    assert_eq!(store.get("c.1:undo").await.unwrap().unwrap().state, State::Rejected, "the first try failed");
    assert_eq!(
        store.get("c.1:undo2").await.unwrap().unwrap().state,
        State::Resolved,
        "the second, after the resume, did not"
    );
    conserved();
}

/// Its first attempt books, then fails in a way its policy retries.
#[durable::function(retry = Retry::Constant { delay: Duration::from_secs(1), max_attempts: 2 })]
async fn retried(ctx: &mut Context) -> durable::Result<i64> {
    let attempt = ctx.attempt();
    ctx.lfc(book, ("alice".to_owned(), -3, false)).compensate(book, ("alice".to_owned(), 3, false)).await?;
    if attempt == 1 {
        return Err(Error::new("a passing fault"));
    }
    ctx.lfc(book, ("bob".to_owned(), 3, false)).await
}

#[tokio::test(start_paused = true)]
async fn a_failed_attempt_is_undone_before_it_is_retried() {
    *BANK.lock().unwrap() = None;
    let durable = runtime(Arc::new(MemoryStore::new()));
    assert_eq!(durable.run("r", retried, ()).await.unwrap().await.unwrap(), 3);
    assert_eq!(applied(), ["r.1", "r.1:undo", "r.r1.1", "r.r1.2"]);
    conserved();
}

/// Arguments that cannot be JSON.
struct Unencodable;

impl serde::Serialize for Unencodable {
    fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
        Err(serde::ser::Error::custom("not today"))
    }
}

impl<'de> serde::Deserialize<'de> for Unencodable {
    fn deserialize<D: serde::Deserializer<'de>>(_: D) -> Result<Self, D::Error> {
        Ok(Unencodable)
    }
}

#[durable::function]
async fn takes_unencodable(_ctx: &mut Context, _x: Unencodable) -> durable::Result<()> {
    Ok(())
}

#[durable::function]
async fn bad_undos(ctx: &mut Context) -> durable::Result<String> {
    let unencodable = ctx.lfc(book, ("alice".to_owned(), 1, false)).compensate(takes_unencodable, Unencodable).await;
    let unserved = ctx
        .rfc(book, ("alice".to_owned(), 1, false))
        .target("poll://any@bank")
        .compensate(Remote::<(String, i64), i64>::named("refund"), ("alice".to_owned(), -1))
        .await;
    Ok(format!("{}\n{}", unencodable.unwrap_err(), unserved.unwrap_err()))
}

#[tokio::test(start_paused = true)]
async fn a_bad_undo_is_an_error_where_it_is_attached() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let durable = Durable::builder().store(store.clone()).register(bad_undos).build().unwrap();
    let bank = Durable::builder().store(store.clone()).group("bank").register(book).build().unwrap();
    let said = durable.run("b", bad_undos, ()).await.unwrap().await.unwrap();
    let lines: Vec<&str> = said.lines().collect();
    assert!(lines[0].contains("b.1") && lines[0].contains("not today"), "{said}");
    assert!(lines[1].contains("refund") && lines[1].contains("bank") && lines[1].contains("b.2"), "{said}");
    for step in ["b.1", "b.2"] {
        assert_eq!(store.get(step).await.unwrap(), None, "{step}: nothing is written");
    }
    drop(bank);
}

/// An undo that makes a durable call of its own, and sleeps.
#[durable::function]
async fn refund_in_steps(ctx: &mut Context, account: String, delta: i64) -> durable::Result<i64> {
    ctx.sleep(Duration::from_secs(1)).await?;
    ctx.lfc(book, (account, delta, false)).await
}

#[durable::function]
async fn waits_after_a_step(ctx: &mut Context) -> durable::Result<i64> {
    ctx.lfc(book, ("alice".to_owned(), -7, false)).compensate(refund_in_steps, ("alice".to_owned(), 7)).await?;
    ctx.promise::<()>().id("never").await?.await?;
    Ok(0)
}

#[tokio::test(start_paused = true)]
async fn an_undo_makes_its_own_calls_in_a_canceled_invocation() {
    *BANK.lock().unwrap() = None;
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let durable = Durable::builder()
        .store(store.clone())
        .register(book)
        .register(refund_in_steps)
        .register(waits_after_a_step)
        .build()
        .unwrap();
    let handle = durable.run("w", waits_after_a_step, ()).await.unwrap();
    appears(&durable, "never").await;
    durable.promises().cancel("w").await.unwrap();
    let error = handle.await.unwrap_err();
    assert!(matches!(&error, Error::Compensated { undone, .. } if undone == &["w.1"]), "{error:?}");
    assert_eq!(applied(), ["w.1", "w.1:undo.2"], "the undo's own step ran, after its sleep");
    assert_eq!(store.get("w.1:undo.1").await.unwrap().unwrap().state, State::Resolved, "its sleep was not canceled");
    conserved();
}

/// Books after a while (a leaf: no durable call of its own): long enough for a cancel
/// to land while it runs.
#[durable::function]
async fn slow_book(ctx: &mut Context, account: String, delta: i64) -> durable::Result<i64> {
    tokio::time::sleep(Duration::from_secs(10)).await;
    Ok(apply(ctx.id(), &account, delta))
}

#[durable::function]
async fn slow_transfer(ctx: &mut Context) -> durable::Result<i64> {
    ctx.lfc(slow_book, ("alice".to_owned(), -4)).compensate(book, ("alice".to_owned(), 4, false)).await?;
    ctx.lfc(book, ("bob".to_owned(), 4, false)).await
}

#[tokio::test(start_paused = true)]
async fn a_step_running_when_the_cancel_comes_runs_to_its_end_and_is_undone() {
    *BANK.lock().unwrap() = None;
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let durable = Durable::builder()
        .store(store.clone())
        .register(book)
        .register(slow_book)
        .register(slow_transfer)
        .build()
        .unwrap();
    let handle = durable.run("s", slow_transfer, ()).await.unwrap();
    // The step is written before it runs.
    appears(&durable, "s.1").await;
    let asked = durable.promises().cancel("s").await.unwrap();
    assert!(asked.canceling, "{asked:?}");
    let error = handle.await.unwrap_err();
    assert!(matches!(&error, Error::Compensated { undone, .. } if undone == &["s.1"]), "{error:?}");
    assert_eq!(applied(), ["s.1", "s.1:undo"], "the step ran to its end, then was undone; bob was never credited");
    conserved();
}

/// A worker group that books, for routed steps.
fn bank_worker(store: Arc<dyn Store>) -> Durable {
    Durable::builder().store(store).group("bank").register(book).build().unwrap()
}

#[durable::function]
async fn routed_transfer(ctx: &mut Context, fail: bool) -> durable::Result<i64> {
    let bank = "poll://any@bank";
    ctx.rfc(book, ("alice".to_owned(), -6, false))
        .target(bank)
        .compensate(book, ("alice".to_owned(), 6, false))
        .await?;
    ctx.rfc(book, ("bob".to_owned(), 6, fail)).target(bank).compensate(book, ("bob".to_owned(), -6, false)).await
}

#[tokio::test(start_paused = true)]
async fn a_routed_step_is_undone_where_it_ran() {
    *BANK.lock().unwrap() = None;
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let bank = bank_worker(store.clone());
    let durable = Durable::builder().store(store.clone()).register(routed_transfer).build().unwrap();
    // The bank's worker announces itself before a step names it as an undo's.
    while durable.store().workers().await.unwrap().is_empty() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let error = durable.run("rt", routed_transfer, true).await.unwrap().await.unwrap_err();
    assert!(matches!(&error, Error::Compensated { undone, .. } if undone == &["rt.1"]), "{error:?}");
    assert_eq!(applied(), ["rt.1", "rt.1:undo"]);
    let undo = store.task("rt.1:undo").await.unwrap().expect("the undo is a routed call");
    assert_eq!(undo.target.group, "bank");
    conserved();
    drop(bank);
}

#[tokio::test(start_paused = true)]
async fn a_saga_imported_into_another_store_owes_its_undos_there() {
    *BANK.lock().unwrap() = None;
    let first = runtime(Arc::new(MemoryStore::new()));
    let _handle = first.run("i", gated, 3).await.unwrap();
    appears(&first, "i-gate0").await;
    first.promises().resolve("i-gate0", &()).await.unwrap();
    appears(&first, "i-gate1").await;
    first.shutdown().await.unwrap();
    let history = first.promises().history("i").await.unwrap();
    assert!(history.promises.iter().any(|r| r.promise.undo.is_some()), "the export carries the step's undo");
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let second = runtime(store.clone());
    second.promises().import(&history).await.unwrap();
    assert!(store.get("i.2").await.unwrap().unwrap().undo.is_some(), "the import keeps it");
    let asked = second.promises().cancel("i").await.unwrap();
    assert!(asked.canceling, "a step there owes an undo: {asked:?}");
    let error = second.run("i", gated, 3).await.unwrap().await.unwrap_err();
    assert!(matches!(&error, Error::Compensated { undone, .. } if undone == &["i.2"]), "{error:?}");
    assert_eq!(applied(), ["i.2", "i.2:undo"]);
    conserved();
}

/// Holds its first runs until let go.
static BANK_OPEN: tokio::sync::Notify = tokio::sync::Notify::const_new();
static BANK_MAY_WORK: Mutex<bool> = Mutex::new(false);

#[durable::function]
async fn careful_book(ctx: &mut Context, account: String, delta: i64) -> durable::Result<i64> {
    if !*BANK_MAY_WORK.lock().unwrap() {
        BANK_OPEN.notified().await;
    }
    Ok(apply(ctx.id(), &account, delta))
}

#[durable::function]
async fn one_routed_step(ctx: &mut Context) -> durable::Result<i64> {
    let bank = "poll://any@bank";
    ctx.rfc(careful_book, ("alice".to_owned(), -2)).target(bank).compensate(careful_book, ("alice".to_owned(), 2)).await
}

/// The check that a routed undo is served is made when the step is made: a replay
/// that finds the step pending while no worker of its group is live goes on as the
/// first run did.
#[tokio::test(start_paused = true)]
async fn a_replay_does_not_check_again_that_a_routed_undo_is_served() {
    *BANK.lock().unwrap() = None;
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let worker = |group: &str| {
        Durable::builder()
            .store(store.clone())
            .group(group)
            .register(careful_book)
            .register(one_routed_step)
            .build()
            .unwrap()
    };
    let bank = worker("bank");
    while store.workers().await.unwrap().is_empty() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let caller = worker("default");
    let _first = caller.run("c", one_routed_step, ()).await.unwrap();
    while store.task("c.1").await.unwrap().is_none_or(|t| t.state != TaskState::Acquired) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    caller.shutdown().await.unwrap();
    bank.shutdown().await.unwrap();
    // Long enough for the bank's worker to be gone from the live ones.
    tokio::time::sleep(Duration::from_secs(3600)).await;
    let now = store.now().await.unwrap();
    assert!(!store.workers().await.unwrap().iter().any(|w| w.serves("bank", "careful_book", now)));
    let caller = worker("default");
    let handle = caller.run("c", one_routed_step, ()).await.unwrap();
    // The replay reaches the step while no bank worker is live.
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert!(!store.get("c.1").await.unwrap().unwrap().canceling, "the caller did not give up on its step");
    *BANK_MAY_WORK.lock().unwrap() = true;
    let bank = worker("bank");
    assert_eq!(handle.await.unwrap(), -2, "the replay waited for the step, as the first run did");
    drop(bank);
}

/// A leaf retried after a minute: its second attempt charges.
#[durable::function(retry = Retry::Constant { delay: Duration::from_secs(60), max_attempts: 3 })]
async fn charge_card(ctx: &mut Context, cents: i64) -> durable::Result<i64> {
    if ctx.attempt() == 1 {
        return Err(Error::new("the card service is busy"));
    }
    Ok(apply(ctx.id(), "card", cents))
}

#[durable::function]
async fn order(ctx: &mut Context) -> durable::Result<i64> {
    ctx.lfc(book, ("stock".to_owned(), -1, false)).compensate(book, ("stock".to_owned(), 1, false)).await?;
    ctx.rfc(charge_card, 5).await
}

#[tokio::test(start_paused = true)]
async fn a_call_canceled_in_its_retry_wait_starts_no_other_attempt() {
    *BANK.lock().unwrap() = None;
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let durable =
        Durable::builder().store(store.clone()).register(book).register(charge_card).register(order).build().unwrap();
    let handle = durable.run("o", order, ()).await.unwrap();
    // The charge's first attempt failed; it waits a minute for the next.
    appears(&durable, "o.2.r1").await;
    durable.promises().cancel("o").await.unwrap();
    let error = handle.await.unwrap_err();
    assert!(matches!(&error, Error::Compensated { undone, .. } if undone == &["o.1"]), "{error:?}");
    assert_eq!(applied(), ["o.1", "o.1:undo"], "the card was never charged");
    assert_eq!(store.get("o.2").await.unwrap().unwrap().state, State::RejectedCanceled);
}
