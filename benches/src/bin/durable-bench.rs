//! `durable-bench`: the workloads other durable-execution systems are measured on,
//! printing one JSON line per run:
//! `{"workload","store","n","seconds","us_per_step"}`.
//!
//! * `durable-bench chain --steps N --store memory|sled|postgres [--concurrency C]`
//! * `durable-bench calc --nodes K --store …`
//! * `durable-bench recover --steps N --store sled|postgres`
//!
//! Each store keeps its real durability: sled acknowledges after a flush, PostgreSQL
//! after a commit. PostgreSQL is `$DURABLE_POSTGRES_URL` (default
//! `postgres://postgres@127.0.0.1:5432/test`), in a schema of its own.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use durable::prelude::*;
use durable::store::PostgresStore;

use durable_benches::{balanced, calc_roles, chain, clc, runtime, unfinished};

const USAGE: &str = "usage: durable-bench chain --steps N --store memory|sled|postgres [--concurrency C]
       durable-bench calc --nodes K --store memory|sled|postgres
       durable-bench recover --steps N --store sled|postgres";

struct Args {
    workload: String,
    store: String,
    n: u64,
    concurrency: u64,
}

fn parse_args() -> Result<Args, String> {
    let mut argv = std::env::args().skip(1);
    let workload = argv.next().ok_or("say chain, calc or recover")?;
    let mut args = Args { workload, store: "memory".into(), n: 0, concurrency: 1 };
    while let Some(flag) = argv.next() {
        let value = argv.next().ok_or(format!("{flag} needs a value"))?;
        let number = || value.parse::<u64>().map_err(|_| format!("{flag} takes a number, not {value:?}"));
        match flag.as_str() {
            "--store" => args.store = value.clone(),
            "--steps" | "--nodes" => args.n = number()?,
            "--concurrency" => args.concurrency = number()?.max(1),
            other => return Err(format!("unknown option {other}")),
        }
    }
    match (args.workload.as_str(), args.store.as_str()) {
        ("chain" | "calc" | "recover-prepare", "memory" | "sled" | "postgres") | ("recover", "sled" | "postgres") => {}
        ("recover", other) => return Err(format!("recover needs a store that outlives a process, not {other}")),
        (_, "memory" | "sled" | "postgres") => return Err(format!("unknown workload {}", args.workload)),
        (_, other) => return Err(format!("unknown store {other}: memory, sled or postgres")),
    }
    if args.n == 0 {
        return Err("give --steps N or --nodes K (at least 1)".into());
    }
    Ok(args)
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(problem) => {
            eprintln!("error: {problem}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a tokio runtime");
    match rt.block_on(run(&args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Where a store lives for one run, so a second process can open the same one.
fn location(store: &str) -> String {
    std::env::var("DURABLE_BENCH_LOCATION").unwrap_or_else(|_| match store {
        "sled" => std::env::temp_dir().join(format!("durable-bench-{}", std::process::id())).display().to_string(),
        _ => format!("durable_bench_{}", std::process::id()),
    })
}

async fn open(store: &str, location: &str, fresh: bool) -> Result<Arc<dyn Store>, String> {
    match store {
        "memory" => Ok(Arc::new(MemoryStore::with_clock(durable::store::SystemClock))),
        "sled" => {
            if fresh {
                let _ = std::fs::remove_dir_all(location);
            }
            Ok(Arc::new(SledStore::open(location).map_err(|e| e.to_string())?))
        }
        _ => {
            let url = std::env::var("DURABLE_POSTGRES_URL")
                .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
            if fresh {
                let (client, connection) =
                    tokio_postgres::connect(&url, tokio_postgres::NoTls).await.map_err(|e| e.to_string())?;
                tokio::spawn(connection);
                client
                    .batch_execute(&format!("DROP SCHEMA IF EXISTS {location} CASCADE"))
                    .await
                    .map_err(|e| e.to_string())?;
            }
            let store = PostgresStore::options(&url).schema(location).connect().await.map_err(|e| e.to_string())?;
            Ok(Arc::new(store))
        }
    }
}

async fn cleanup(store: &str, location: &str) {
    match store {
        "sled" => {
            let _ = std::fs::remove_dir_all(location);
        }
        "postgres" => {
            let url = std::env::var("DURABLE_POSTGRES_URL")
                .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
            if let Ok((client, connection)) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await {
                tokio::spawn(connection);
                let _ = client.batch_execute(&format!("DROP SCHEMA IF EXISTS {location} CASCADE")).await;
            }
        }
        _ => {}
    }
}

fn report(workload: &str, store: &str, n: u64, steps: u64, seconds: f64, extra: &str) {
    println!(
        "{{\"workload\":\"{workload}\",\"store\":\"{store}\",\"n\":{n},\"seconds\":{seconds:.6},\"us_per_step\":{:.3}{extra}}}",
        seconds * 1e6 / steps as f64
    );
}

async fn run(args: &Args) -> Result<(), String> {
    let location = location(&args.store);
    match args.workload.as_str() {
        "chain" => {
            let store = open(&args.store, &location, true).await?;
            let durable = runtime(&store);
            let started = Instant::now();
            let mut handles = Vec::new();
            for c in 0..args.concurrency {
                handles.push(durable.run(&format!("chain-{c}"), chain, args.n).await.map_err(|e| e.to_string())?);
            }
            for handle in handles {
                handle.await.map_err(|e| e.to_string())?;
            }
            let seconds = started.elapsed().as_secs_f64();
            let steps = args.n * args.concurrency;
            let extra =
                format!(",\"concurrency\":{},\"steps_per_second\":{:.0}", args.concurrency, steps as f64 / seconds);
            report("chain", &args.store, args.n, steps, seconds, &extra);
            drop(durable);
            cleanup(&args.store, &location).await;
        }
        "calc" => {
            let store = open(&args.store, &location, true).await?;
            let nodes = args.n | 1;
            let (expr, value) = balanced((nodes as usize - 1) / 2, &mut 0);
            let runtimes = calc_roles(&store);
            let started = Instant::now();
            let got = runtimes[0]
                .run("calc", clc, expr)
                .await
                .map_err(|e| e.to_string())?
                .await
                .map_err(|e| e.to_string())?;
            let seconds = started.elapsed().as_secs_f64();
            if got != value {
                return Err(format!("the calculation gave {got}, not {value}"));
            }
            report("calc", &args.store, nodes, nodes, seconds, "");
            drop(runtimes);
            cleanup(&args.store, &location).await;
        }
        "recover" => {
            // A first process runs the chain to its last step and stops there.
            let status = std::process::Command::new(std::env::current_exe().map_err(|e| e.to_string())?)
                .args(["recover-prepare", "--steps", &args.n.to_string(), "--store", &args.store])
                .env("DURABLE_BENCH_LOCATION", &location)
                .status()
                .map_err(|e| e.to_string())?;
            if !status.success() {
                return Err("the preparing process failed".into());
            }
            // This process takes over: from its start to the result.
            let started = Instant::now();
            let store = open(&args.store, &location, false).await?;
            let durable = runtime(&store);
            let result = durable.run("recover", chain, args.n).await.map_err(|e| e.to_string())?.await;
            let seconds = started.elapsed().as_secs_f64();
            if result.map_err(|e| e.to_string())? != args.n {
                return Err("the recovered chain gave a wrong result".into());
            }
            report("recover", &args.store, args.n, args.n, seconds, "");
            drop(durable);
            drop(store);
            cleanup(&args.store, &location).await;
        }
        "recover-prepare" => {
            let store = open(&args.store, &location, true).await?;
            // Runs the chain to the gate, then releases it (PostgreSQL); sled's next
            // opener releases what this process held.
            let handle = unfinished(&store, "recover", args.n).await;
            drop(handle);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        _ => unreachable!("checked by parse_args"),
    }
    Ok(())
}
