//! The PostgreSQL schema is created on first connect, by any number of processes at
//! once, and a schema from a newer release is refused with a clear error.

use durable::store::PostgresStore;

fn url() -> String {
    std::env::var("DURABLE_POSTGRES_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

async fn admin() -> Option<tokio_postgres::Client> {
    match tokio_postgres::connect(&url(), tokio_postgres::NoTls).await {
        Ok((client, connection)) => {
            tokio::spawn(connection);
            Some(client)
        }
        Err(e) if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("PostgreSQL at {} is unreachable under CI=true: {e}", url())
        }
        Err(e) => {
            eprintln!("skipped: PostgreSQL at {} is unreachable: {e}", url());
            None
        }
    }
}

#[tokio::test]
async fn many_first_connects_at_once_create_the_schema_once() {
    let Some(admin) = admin().await else { return };
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
