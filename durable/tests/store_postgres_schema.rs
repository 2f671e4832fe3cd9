//! The PostgreSQL schema is created on first connect, by any number of processes at
//! once, and a schema from a newer release is refused with a clear error.

use durable::store::{CreatePromise, PostgresStore, SettlePromise};
use durable::{Param, State, Store};

fn url() -> String {
    std::env::var("DURABLE_POSTGRES_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// A store in `schema`, made anew.
async fn fresh(admin: &tokio_postgres::Client, schema: &str) -> PostgresStore {
    admin.batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE")).await.unwrap();
    PostgresStore::options(&url()).schema(schema).connect().await.expect("connect")
}

/// A client of the server the tests use; PostgreSQL must run there.
async fn admin() -> tokio_postgres::Client {
    match tokio_postgres::connect(&url(), tokio_postgres::NoTls).await {
        Ok((client, connection)) => {
            tokio::spawn(connection);
            client
        }
        Err(e) => panic!("PostgreSQL at {} is unreachable: {e}", url()),
    }
}

#[tokio::test]
async fn many_first_connects_at_once_create_the_schema_once() {
    let admin = admin().await;
    let schema = format!("durable_schema_race_{}", std::process::id());
    admin.batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE")).await.unwrap();
    let connects: Vec<_> = (0..8)
        .map(|_| {
            let schema = schema.clone();
            tokio::spawn(async move { PostgresStore::options(&url()).schema(schema).connect().await })
        })
        .collect();
    for connect in connects {
        connect.await.unwrap().expect("every concurrent first connect succeeds");
    }
    let versions: i64 =
        admin.query_one(&format!("SELECT count(*) FROM {schema}.durable_schema"), &[]).await.unwrap().get(0);
    assert_eq!(versions, 1);
    admin.batch_execute(&format!("UPDATE {schema}.durable_schema SET version = 99")).await.unwrap();
    let error = PostgresStore::options(&url()).schema(&schema).connect().await.unwrap_err().to_string();
    assert!(error.contains("version 99") && error.contains("upgrade durable"), "{error}");
    admin.batch_execute(&format!("DROP SCHEMA {schema} CASCADE")).await.unwrap();
}

#[tokio::test]
async fn a_bad_url_is_a_clear_error() {
    let error = PostgresStore::connect("postgres://nobody@127.0.0.1:1/none").await.unwrap_err().to_string();
    assert!(error.contains("cannot connect to PostgreSQL"), "{error}");
    let error = PostgresStore::connect("not a url").await.unwrap_err().to_string();
    assert!(error.contains("invalid PostgreSQL URL"), "{error}");
}

/// A schema name as long as PostgreSQL allows (63 bytes): its notification channel
/// still fits, so settles commit and wake their waiters.
#[tokio::test]
async fn a_long_schema_name_settles_and_wakes() {
    let admin = admin().await;
    let mut schema = format!("durable_long_{}_", std::process::id());
    while schema.len() < 63 {
        schema.push('x');
    }
    let store = fresh(&admin, &schema).await;
    store.create(CreatePromise::new("p", Param::External)).await.expect("create");
    let waiter = tokio::spawn({
        let store = std::sync::Arc::new(store);
        let waiting = store.clone();
        async move {
            let wait = tokio::spawn(async move { waiting.wait("p", false).await });
            let settle = SettlePromise {
                id: "p".into(),
                state: State::Resolved,
                value: "1".into(),
                ikey: None,
                strict: false,
                fence: None,
            };
            store.settle(settle).await.expect("a settle in a schema with a long name");
            wait.await.unwrap()
        }
    });
    tokio::time::timeout(std::time::Duration::from_secs(20), waiter).await.expect("woken").unwrap().unwrap();
    admin.batch_execute(&format!("DROP SCHEMA {schema} CASCADE")).await.unwrap();
}

/// An error of the server reaches the caller with the server's message, not only
/// "db error".
#[tokio::test]
async fn a_server_error_says_what_the_server_said() {
    let admin = admin().await;
    let schema = format!("durable_error_{}", std::process::id());
    let store = fresh(&admin, &schema).await;
    admin.batch_execute(&format!("DROP TABLE {schema}.promises CASCADE")).await.unwrap();
    let error = store.get("p").await.unwrap_err().to_string();
    assert!(error.contains("relation \"promises\" does not exist") && error.contains("42P01"), "{error}");
    admin.batch_execute(&format!("DROP SCHEMA {schema} CASCADE")).await.unwrap();
}

/// A worker that starts resumes every halted task of its group, even one another
/// step holds at that moment: it waits for the row rather than skip it.
#[tokio::test]
async fn resuming_halted_tasks_waits_for_a_row_held_elsewhere() {
    let admin = admin().await;
    let schema = format!("durable_resume_{}", std::process::id());
    let store = std::sync::Arc::new(fresh(&admin, &schema).await);
    let mut req = CreatePromise::new("h", Param::call("f", 1, "1".into()));
    req.task = Some(durable::store::NewTask::new(durable::Target::any("g")));
    store.create(req).await.unwrap();
    let claim = durable::store::Claim {
        group: "g".into(),
        pid: "w".into(),
        process: "w:1".into(),
        ttl: 60_000,
        max: 1,
        functions: Vec::new(),
    };
    let held = store.claim(claim).await.unwrap().remove(0);
    let halt = durable::store::Release::Halt { error: "a platform fault".into(), code: None };
    store.release(&held.fence(), halt).await.unwrap();

    let (mut holder, connection) = tokio_postgres::connect(&url(), tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    let lock = holder.transaction().await.unwrap();
    lock.execute(&format!("SELECT 1 FROM {schema}.tasks WHERE id = 'h' FOR UPDATE"), &[]).await.unwrap();
    let resume = tokio::spawn({
        let store = store.clone();
        async move { store.resume_halted("g", &Default::default()).await }
    });
    // Until the resume waits for the row (or, skipping it, is done already).
    let waiting = "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE '%halted%'";
    while !resume.is_finished() && admin.query_one(waiting, &[]).await.unwrap().get::<_, i64>(0) == 0 {
        tokio::task::yield_now().await;
    }
    lock.commit().await.unwrap();
    assert_eq!(resume.await.unwrap().unwrap(), 1, "the held row was waited for, not skipped");
    assert_eq!(store.task("h").await.unwrap().unwrap().state, durable::TaskState::Pending);
    admin.batch_execute(&format!("DROP SCHEMA {schema} CASCADE")).await.unwrap();
}
