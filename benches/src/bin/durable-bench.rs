//! `durable-bench`: the workloads other durable-execution systems are measured on,
//! printing one JSON line per run:
//! `{"workload","store","n","seconds","us_per_step"}`.
//!
//! * `durable-bench chain --steps N --store memory|sled|postgres [--concurrency C]`
//! * `durable-bench calc --nodes K --store …`
//! * `durable-bench recover --steps N --store sled|postgres`
//! * `durable-bench soak --invocations N --store … [--retention SECONDS] [--plot PATH]`:
//!   N ten-step invocations, 64 at a time, with one JSON line every 10% of the way
//!   (invocations done, throughput over the interval, RSS, the store's size on disk,
//!   pending promises), then, on sled, how long reopening the store takes; and a PNG
//!   of RSS (top) and throughput (bottom) against invocations done. Retention is
//!   off unless given.
//!
//! * `durable-bench latency --steps N --store … [--concurrency C]`: start to result of
//!   N invocations of three local steps, then N of three calls to a worker of this
//!   process, by C clients one after another each; one line for each with the 50th,
//!   99th and 99.9th percentiles in milliseconds.
//!
//! * `durable-bench schedules --steps N --store …`: N schedules that all fire every
//!   10 s, served by one process, for 40 s; the lateness of their fires (from a fire's
//!   time to its invocation's creation, and to its result) at the 50th and 99th
//!   percentiles and the worst, in milliseconds.
//!
//! * `durable-bench simulate --seeds N [--seed S] --store memory|sled|postgres`: the
//!   deterministic simulation (`durable_testkit::simulation`) of seeds S to S + N - 1,
//!   each on virtual time; stops at the first seed that breaks an invariant, printing
//!   it and how to replay it; else prints seeds per second and what was exercised.
//!
//! Each store keeps its real durability: sled acknowledges after a flush, PostgreSQL
//! after a commit. PostgreSQL is `$DURABLE_POSTGRES_URL` (default
//! `postgres://postgres@127.0.0.1:5432/test`), in a schema of its own.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use durable::prelude::*;
use durable::store::PostgresStore;

use durable_benches::{balanced, calc_roles, chain, clc, runtime, saga, step, unfinished};

/// Ten steps: the invocation the soak runs.
#[durable::function(name = "soak")]
async fn soak(ctx: &mut Context, x: u64) -> durable::Result<u64> {
    let mut x = x;
    for _ in 0..10 {
        x = ctx.lfc(step, x).await?;
    }
    Ok(x)
}

/// Three local steps: the local invocation of the latency workload.
#[durable::function(name = "three-steps")]
async fn three_steps(ctx: &mut Context, x: u64) -> durable::Result<u64> {
    let mut x = x;
    for _ in 0..3 {
        x = ctx.lfc(step, x).await?;
    }
    Ok(x)
}

/// Three calls, one after another, to the group `work`: the remote invocation of the
/// latency workload.
#[durable::function(name = "three-calls")]
async fn three_calls(ctx: &mut Context, x: u64) -> durable::Result<u64> {
    let mut x = x;
    for _ in 0..3 {
        x = ctx.rfc(step, x).target("poll://any@work").await?;
    }
    Ok(x)
}

/// The workloads other durable-execution systems are measured on, one JSON line per run.
#[derive(Debug, clap::Parser)]
#[command(name = "durable-bench")]
struct Args {
    /// chain: N local steps (C chains at once); calc: the calculator over K nodes, all
    /// workers in this process; recover: a new process replays N settled steps; soak: N
    /// ten-step invocations, 64 at a time; list: pages of a listing over N invocations
    /// (1% pending, one of a rare function).
    /// simulate: N seeds of the simulation.
    /// page: the dashboard's page of an invocation of N promises among others.
    /// claims: N one-step tasks through a worker of 64, each with a key of 1000.
    /// latency: N invocations of three local steps, then of three remote calls, C at once.
    /// schedules: N schedules firing every 10 s, served by one process.
    /// saga: N local steps that each carry an undo, then N more that fail at their end
    /// and are undone.
    #[arg(value_parser = ["chain", "saga", "calc", "recover", "soak", "list", "page", "simulate", "claims", "latency", "schedules", "recover-prepare"], hide_possible_values = true)]
    workload: String,
    /// The store: memory, sled or postgres (`$DURABLE_POSTGRES_URL`).
    #[arg(long, default_value = "memory", value_parser = ["memory", "sled", "postgres"])]
    store: String,
    /// Steps (chain, recover), nodes (calc) or invocations (soak, list).
    #[arg(long = "steps", visible_aliases = ["nodes", "invocations", "seeds"], value_name = "N",
          value_parser = clap::value_parser!(u64).range(1..))]
    n: u64,
    /// Chains at once (chain); clients at once (latency).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    concurrency: u64,
    /// Seconds a finished invocation is kept (soak; off unless given).
    #[arg(long, value_name = "SECONDS")]
    retention: Option<u64>,
    /// Where the soak's PNG goes (default `soak-{store}.png`).
    #[arg(long, value_name = "PATH")]
    plot: Option<String>,
    /// The first seed (simulate).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Promises in the store besides the invocation (page).
    #[arg(long, default_value_t = 1_000_000, value_name = "N")]
    around: u64,
    /// Limits on the claims: none; keys (one at a time per key); hot (the same, with
    /// half of the tasks on one key).
    #[arg(long, default_value = "none", value_parser = ["none", "keys", "hot"])]
    limits: String,
    /// Random events in each seed (simulate; the simulation's default unless given).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..10_000))]
    events: Option<u64>,
}

fn main() -> ExitCode {
    let args = <Args as clap::Parser>::parse();
    // `RUST_LOG` (for example `durable=debug`) shows the library's events on stderr.
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    if args.workload == "recover" && args.store == "memory" {
        eprintln!("error: recover needs a store that outlives a process: sled or postgres");
        return ExitCode::from(2);
    }
    if args.workload == "simulate" {
        return simulate(&args);
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a tokio runtime");
    match rt.block_on(run(&args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Runs seeds `args.seed..args.seed + args.n` of the simulation, each on a fresh
/// runtime with virtual time.
fn simulate(args: &Args) -> ExitCode {
    use durable_testkit::simulation::Simulation;
    let started = Instant::now();
    let mut counts = std::collections::BTreeMap::<&str, u64>::new();
    let (mut invocations, mut promises, mut faults, mut leaf_runs) = (0, 0, 0, 0);
    for seed in args.seed..args.seed + args.n {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join("store");
        let mut simulation = Simulation::new(seed);
        if let Some(events) = args.events {
            simulation = simulation.steps(events as usize);
        }
        let outcome = match args.store.as_str() {
            "sled" => durable_testkit::block_on(
                simulation
                    .store(move || {
                        let clock = durable::store::VirtualClock::new();
                        Arc::new(SledStore::open_with_clock(&path, clock).expect("open sled")) as Arc<dyn Store>
                    })
                    .run(),
            ),
            "postgres" => durable_testkit::block_on(simulate_on_postgres(simulation, seed)),
            _ => durable_testkit::block_on(simulation.run()),
        };
        match outcome {
            Ok(summary) => {
                for (what, n) in summary.counts {
                    *counts.entry(what).or_default() += n;
                }
                invocations += summary.invocations;
                promises += summary.promises;
                faults += summary.faults;
                leaf_runs += summary.leaf_runs;
            }
            Err(failure) => {
                eprintln!("{failure}");
                return ExitCode::FAILURE;
            }
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "{{\"workload\":\"simulate\",\"store\":\"{}\",\"n\":{},\"seconds\":{seconds:.3},\"seeds_per_second\":{:.1},\"invocations\":{invocations},\"promises\":{promises},\"store_faults\":{faults},\"leaf_runs\":{leaf_runs}}}",
        args.store,
        args.n,
        args.n as f64 / seconds
    );
    for (what, n) in counts {
        println!("  {n:>8}  {what}");
    }
    ExitCode::SUCCESS
}

/// One seed on PostgreSQL, in a schema of its own, dropped when the seed passes (a
/// failing seed's schema stays, to be read).
async fn simulate_on_postgres(
    simulation: durable_testkit::simulation::Simulation,
    seed: u64,
) -> Result<durable_testkit::simulation::Summary, durable_testkit::simulation::SimFailure> {
    let url =
        std::env::var("DURABLE_POSTGRES_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let schema = format!("durable_sim_{}_{seed}", std::process::id());
    let store = PostgresStore::options(&url)
        .schema(&schema)
        .clock(durable::store::VirtualClock::new())
        .connect()
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL at {url} is unreachable: {e}"));
    let store: Arc<dyn Store> = Arc::new(store);
    let outcome = simulation.store(move || store.clone()).run().await;
    if outcome.is_ok() {
        cleanup("postgres", &schema).await;
    } else {
        eprintln!("the store is kept in schema {schema}");
    }
    outcome
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
        "saga" => {
            let store = open(&args.store, &location, true).await?;
            let durable = runtime(&store);
            let started = Instant::now();
            durable
                .run("saga-kept", saga, (args.n, false))
                .await
                .map_err(|e| e.to_string())?
                .await
                .map_err(|e| e.to_string())?;
            let kept = started.elapsed().as_secs_f64();
            let started = Instant::now();
            match durable.run("saga-undone", saga, (args.n, true)).await.map_err(|e| e.to_string())?.await {
                Err(durable::Error::Compensated { undone, .. }) if undone.len() as u64 == args.n => {}
                other => return Err(format!("expected every step undone, got {other:?}")),
            }
            // The failed run made the same steps, then undid each.
            let undoing = (started.elapsed().as_secs_f64() - kept).max(0.0);
            let extra = format!(",\"undo_us_per_step\":{:.3}", undoing * 1e6 / args.n as f64);
            report("saga", &args.store, args.n, args.n, kept, &extra);
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
        "soak" => run_soak(args, &location).await?,
        "latency" => {
            let store = open(&args.store, &location, true).await?;
            run_latency(&store, args).await?;
            drop(store);
            cleanup(&args.store, &location).await;
        }
        "schedules" => {
            let store = open(&args.store, &location, true).await?;
            run_schedules(&store, args).await?;
            drop(store);
            cleanup(&args.store, &location).await;
        }
        "claims" => {
            let store = open(&args.store, &location, true).await?;
            if args.limits != "none" {
                let limit = durable::Limit::new("per-key").function("step").per_key().concurrency(1);
                store.set_limit(limit, true).await.map_err(|e| e.to_string())?;
            }
            let worker = Durable::builder()
                .store(store.clone())
                .group("work")
                .concurrency(64)
                .register(step)
                .build()
                .map_err(|e| e.to_string())?;
            let client = Durable::builder().store(store).group("client").build().map_err(|e| e.to_string())?;
            let started = Instant::now();
            let mut handles = Vec::new();
            for n in 0..args.n {
                let key = if args.limits == "hot" && n % 2 == 0 { "hot".to_owned() } else { (n % 1000).to_string() };
                let call = client.rpc(&format!("claim-{n}"), step, n).target("poll://any@work").key(&key);
                handles.push(call.await.map_err(|e| e.to_string())?);
            }
            for handle in handles {
                handle.await.map_err(|e| e.to_string())?;
            }
            let seconds = started.elapsed().as_secs_f64();
            let extra = format!(",\"limits\":\"{}\",\"tasks_per_second\":{:.0}", args.limits, args.n as f64 / seconds);
            report("claims", &args.store, args.n, args.n, seconds, &extra);
            drop((worker, client));
            cleanup(&args.store, &location).await;
        }
        "list" => {
            let store = open(&args.store, &location, true).await?;
            run_list(&store, args).await?;
            drop(store);
            cleanup(&args.store, &location).await;
        }
        "page" => {
            let store = open(&args.store, &location, true).await?;
            run_page(&store, args).await?;
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

/// Times `args.n` invocations of each kind from start to result, `args.concurrency`
/// clients at a time, after a warm-up of a tenth as many (at least one per client).
async fn run_latency(store: &Arc<dyn Store>, args: &Args) -> Result<(), String> {
    let client = Durable::builder()
        .store(store.clone())
        .group("client")
        .register(three_steps)
        .register(three_calls)
        .build()
        .map_err(|e| e.to_string())?;
    let worker = Durable::builder()
        .store(store.clone())
        .group("work")
        .concurrency(4096)
        .register(step)
        .build()
        .map_err(|e| e.to_string())?;
    let clients = args.concurrency;
    for kind in ["local", "remote"] {
        let round = |prefix: String, n: u64| {
            let client = &client;
            async move {
                let started = Instant::now();
                let each = (0..clients).map(|c| {
                    let prefix = &prefix;
                    async move {
                        let mut times = Vec::new();
                        for i in (c..n).step_by(clients as usize) {
                            let id = format!("{prefix}-{i}");
                            let begun = Instant::now();
                            let handle = match kind {
                                "local" => client.run(&id, three_steps, i).await,
                                _ => client.run(&id, three_calls, i).await,
                            };
                            let got = handle.map_err(|e| e.to_string())?.await.map_err(|e| e.to_string())?;
                            times.push(begun.elapsed());
                            if got != i + 3 {
                                return Err(format!("{id} gave {got}, not {}", i + 3));
                            }
                        }
                        Ok::<_, String>(times)
                    }
                });
                let times: Vec<Duration> = futures::future::try_join_all(each).await?.into_iter().flatten().collect();
                Ok::<_, String>((times, started.elapsed()))
            }
        };
        round(format!("warm-{kind}"), (args.n / 10).max(clients)).await?;
        let (mut times, took) = round(kind.to_owned(), args.n).await?;
        times.sort();
        let at = |q: f64| quantile(&times, q);
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        println!(
            "{{\"workload\":\"latency\",\"store\":\"{}\",\"kind\":\"{kind}\",\"n\":{},\"concurrency\":{clients},\"p50_ms\":{:.3},\"p99_ms\":{:.3},\"p999_ms\":{:.3},\"invocations_per_second\":{:.0}}}",
            args.store,
            args.n,
            ms(at(0.5)),
            ms(at(0.99)),
            ms(at(0.999)),
            args.n as f64 / took.as_secs_f64()
        );
    }
    drop((client, worker));
    Ok(())
}

/// Creates `args.n` schedules that fire every 10 s, all at once, served by one
/// runtime; after 40 s, the lateness of the fires of the last 30 (the first may meet
/// a store still warming up).
async fn run_schedules(store: &Arc<dyn Store>, args: &Args) -> Result<(), String> {
    const PERIOD: u64 = 10_000;
    let durable = Durable::builder()
        .store(store.clone())
        .group("work")
        .concurrency(4096)
        .register(step)
        .build()
        .map_err(|e| e.to_string())?;
    let every = durable::ScheduleSpec::every(Duration::from_millis(PERIOD));
    for n in 0..args.n {
        durable.schedules().create(&format!("s{n}"), every.clone(), step, n).await.map_err(|e| e.to_string())?;
    }
    let start = store.now().await.map_err(|e| e.to_string())?;
    tokio::time::sleep(Duration::from_secs(40)).await;
    let from = start.div_ceil(PERIOD) * PERIOD + PERIOD;
    let (mut made, mut done, mut missing) = (Vec::new(), Vec::new(), 0);
    for n in 0..args.n {
        let mut at = from;
        while at + PERIOD <= start + 40_000 {
            let id = format!("s{n}@{}", stamp(at));
            match store.get(&id).await.map_err(|e| e.to_string())? {
                Some(p) => {
                    made.push(p.created_at.saturating_sub(at));
                    done.push(p.settled_at.map_or(u64::MAX, |s| s.saturating_sub(at)));
                }
                None => missing += 1,
            }
            at += PERIOD;
        }
    }
    if missing > 0 {
        return Err(format!("{missing} fires were not made"));
    }
    made.sort_unstable();
    done.sort_unstable();
    let at = quantile::<u64>;
    println!(
        "{{\"workload\":\"schedules\",\"store\":\"{}\",\"schedules\":{},\"fires\":{},\"made_p50_ms\":{},\"made_p99_ms\":{},\"made_max_ms\":{},\"done_p50_ms\":{},\"done_p99_ms\":{},\"done_max_ms\":{}}}",
        args.store,
        args.n,
        made.len(),
        at(&made, 0.5),
        at(&made, 0.99),
        made.last().copied().unwrap_or(0),
        at(&done, 0.5),
        at(&done, 0.99),
        done.last().copied().unwrap_or(0),
    );
    drop(durable);
    Ok(())
}

/// The `q` quantile of `sorted` (not empty): the value at or below which that share
/// of them lies.
fn quantile<T: Copy>(sorted: &[T], q: f64) -> T {
    sorted[((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1]
}

/// A fire's time as its id writes it.
fn stamp(at: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_millis(at)).to_string()
}

/// Fills the store with `args.n` invocations, 64 creates at a time, and times a
/// listing's pages: the first page, the first page of pending ones, and a function
/// called once, which takes paging through all of them.
async fn run_list(store: &Arc<dyn Store>, args: &Args) -> Result<(), String> {
    let mut fill = tokio::task::JoinSet::new();
    for w in 0..64 {
        let (store, n) = (store.clone(), args.n);
        fill.spawn(async move {
            for i in (w..n).step_by(64) {
                let func = if i == 0 { "rare" } else { "f" };
                let mut req = durable::store::CreatePromise::new(
                    format!("inv-{i}"),
                    durable::Param::call(func, 1, i.to_string()),
                );
                if i % 100 != 1 {
                    req.settled = Some((durable::State::Resolved, "1".into()));
                }
                store.create(req).await.map_err(|e| e.to_string())?;
            }
            Ok::<_, String>(())
        });
    }
    while let Some(done) = fill.join_next().await {
        done.map_err(|e| e.to_string())??;
    }
    let timed = |query: durable::store::Invocations| async move {
        let (started, mut query, mut found, mut calls) = (Instant::now(), query, 0, 0);
        let first = loop {
            let page = store.invocations(query.clone()).await.map_err(|e| e.to_string())?;
            calls += 1;
            found += page.invocations.len();
            match page.cursor {
                Some(c) if found < query.limit.max(1) => query.cursor = Some(c),
                _ => break started.elapsed().as_secs_f64() * 1e3,
            }
        };
        Ok::<_, String>((first, found, calls))
    };
    let page = durable::store::Invocations { limit: 100, ..Default::default() };
    // The first call prepares statements and warms caches: time the second.
    timed(page.clone()).await?;
    let (first_ms, _, _) = timed(page.clone()).await?;
    let pending = durable::store::Invocations { state: Some(durable::State::Pending), ..page.clone() };
    let (pending_ms, pending_found, _) = timed(pending).await?;
    let rare = durable::store::Invocations { function: Some("rare".into()), ..page };
    let (rare_ms, rare_found, rare_calls) = timed(rare).await?;
    if rare_found != 1 || pending_found != 100.min(args.n as usize / 100) {
        return Err(format!("the listing found {rare_found} rare and {pending_found} pending invocations"));
    }
    // The dashboard's list page, rendered whole, as a browser asks for it.
    let router = durable::dashboard::Dashboard::new(store.clone()).router();
    page_ms(&router, "/").await?;
    let (page_first, page_pending) = (page_ms(&router, "/").await?, page_ms(&router, "/?state=pending").await?);
    println!(
        "{{\"workload\":\"list\",\"store\":\"{}\",\"n\":{},\"first_page_ms\":{first_ms:.1},\"pending_page_ms\":{pending_ms:.1},\"rare_ms\":{rare_ms:.1},\"rare_calls\":{rare_calls},\"dashboard_page_ms\":{page_first:.1},\"dashboard_pending_page_ms\":{page_pending:.1}}}",
        args.store, args.n
    );
    Ok(())
}

/// Fills the store with `args.around` promises in families of 1,000 and one
/// invocation `big` of `args.n` promises, then times the dashboard's page of `big`
/// alone, the list page alone, and, while `big`'s page is drawn again and again, how
/// late a list page, a store read every millisecond and a timer every millisecond
/// come (the delay an embedding service sees), all on one thread.
async fn run_page(store: &Arc<dyn Store>, args: &Args) -> Result<(), String> {
    use durable::store::CreatePromise;
    let family = |root: String, children: u64| {
        let settled = |id: String, parent: Option<String>| {
            let mut p = CreatePromise::new(id, durable::Param::call("f", 1, "1".into()));
            p.parent = parent;
            p.settled = Some((durable::State::Resolved, "1".into()));
            p
        };
        let mut all = vec![settled(root.clone(), None)];
        all.extend((1..=children).map(|k| settled(format!("{root}.{k}"), Some(root.clone()))));
        all
    };
    let started = Instant::now();
    let mut filled = 0;
    while filled < args.around {
        let size = 1000.min(args.around - filled);
        store.import(family(format!("fill-{filled}"), size - 1)).await.map_err(|e| e.to_string())?;
        filled += size;
    }
    store.import(family("big".into(), args.n - 1)).await.map_err(|e| e.to_string())?;
    let fill_s = started.elapsed().as_secs_f64();
    let router = durable::dashboard::Dashboard::new(store.clone()).router();
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (mut alone, mut list_alone) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        alone.push(page_ms(&router, "/invocation?id=big").await?);
        list_alone.push(page_ms(&router, "/").await?);
    }
    // A read every ms for half a second with nothing else to do: the store's own
    // hiccups, to compare with.
    let (mut idle_late, mut due) = (0f64, tokio::time::Instant::now());
    for _ in 0..500 {
        due = due.max(tokio::time::Instant::now()) + Duration::from_millis(1);
        tokio::time::sleep_until(due).await;
        store.get("fill-0").await.map_err(|e| e.to_string())?;
        idle_late = idle_late.max(due.elapsed().as_secs_f64() * 1e3);
    }
    // The big page drawn over and over; meanwhile list pages, and a read every ms.
    let drawn = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let drawing = tokio::spawn({
        let (router, drawn) = (router.clone(), drawn.clone());
        async move {
            for _ in 0..5 {
                page_ms(&router, "/invocation?id=big").await?;
            }
            drawn.store(true, std::sync::atomic::Ordering::Relaxed);
            Ok::<_, String>(())
        }
    });
    // How late a timer fires (µs): how long the thread is held, whatever the store does.
    let timer_late = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let ticking = tokio::spawn({
        let timer_late = timer_late.clone();
        async move {
            let mut due = tokio::time::Instant::now();
            loop {
                due += Duration::from_millis(1);
                tokio::time::sleep_until(due).await;
                timer_late.fetch_max(due.elapsed().as_micros() as u64, std::sync::atomic::Ordering::Relaxed);
            }
        }
    });
    // List pages one after another, each timed from its start.
    let listing = tokio::spawn({
        let (router, drawn) = (router.clone(), drawn.clone());
        async move {
            let mut during = Vec::new();
            while !drawn.load(std::sync::atomic::Ordering::Relaxed) {
                during.push(page_ms(&router, "/").await?);
                // A store that answers at once never makes this wait.
                tokio::task::yield_now().await;
            }
            Ok::<_, String>(during)
        }
    });
    // A read due every millisecond, each timed from when it was due (a late one does
    // not make the next late).
    let (mut read_late, mut due) = (0f64, tokio::time::Instant::now());
    while !drawing.is_finished() {
        due = due.max(tokio::time::Instant::now()) + Duration::from_millis(1);
        tokio::time::sleep_until(due).await;
        store.get("fill-0").await.map_err(|e| e.to_string())?;
        read_late = read_late.max(due.elapsed().as_secs_f64() * 1e3);
    }
    let list_during = listing.await.map_err(|e| e.to_string())??;
    drawing.await.map_err(|e| e.to_string())??;
    ticking.abort();
    let timer_late = timer_late.load(std::sync::atomic::Ordering::Relaxed) as f64 / 1e3;
    println!(
        "{{\"workload\":\"page\",\"store\":\"{}\",\"n\":{},\"around\":{},\"fill_s\":{fill_s:.1},\"page_ms\":{:.1},\"list_ms\":{:.1},\"list_during_ms_max\":{:.1},\"read_late_ms_max\":{read_late:.1},\"timer_late_ms_max\":{timer_late:.1},\"read_late_idle_ms_max\":{idle_late:.1}}}",
        args.store,
        args.n,
        args.around,
        median(alone),
        median(list_alone),
        list_during.iter().copied().fold(0.0, f64::max),
    );
    Ok(())
}

/// How long the dashboard's page at `uri` takes, answered and read whole, in ms.
async fn page_ms(router: &axum::Router, uri: &str) -> Result<f64, String> {
    use tower::ServiceExt;
    let started = Instant::now();
    let request = axum::http::Request::get(uri).body(axum::body::Body::empty()).map_err(|e| e.to_string())?;
    let response = router.clone().oneshot(request).await.map_err(|e| e.to_string())?;
    if !response.status().is_success() {
        return Err(format!("{uri} answered {}", response.status()));
    }
    axum::body::to_bytes(response.into_body(), usize::MAX).await.map_err(|e| e.to_string())?;
    Ok(started.elapsed().as_secs_f64() * 1e3)
}

/// One sample of a soak.
struct Sample {
    done: u64,
    per_second: f64,
    rss_mb: f64,
}

async fn run_soak(args: &Args, location: &str) -> Result<(), String> {
    let store = open(&args.store, location, true).await?;
    let durable = Durable::builder()
        .store(store.clone())
        .register(soak)
        .register(step)
        .concurrency(64)
        .retention(args.retention.map(Duration::from_secs))
        .build()
        .map_err(|e| e.to_string())?;
    let (n, every) = (args.n, (args.n / 10).max(1));
    let mut running = tokio::task::JoinSet::new();
    let (mut started, mut done, mut samples) = (0, 0, Vec::new());
    let mut interval = (Instant::now(), 0);
    while done < n {
        while started < n && running.len() < 64 {
            let handle = durable.run(&format!("soak-{started}"), soak, started).await.map_err(|e| e.to_string())?;
            running.spawn(handle);
            started += 1;
        }
        let result = running.join_next().await.expect("invocations are running");
        result.map_err(|e| e.to_string())?.map_err(|e| e.to_string())?;
        done += 1;
        if done % every == 0 || done == n {
            let per_second = (done - interval.1) as f64 / interval.0.elapsed().as_secs_f64();
            let sample = Sample { done, per_second, rss_mb: rss_mb() };
            let pending = pending(&*store).await?;
            let disk_mb = disk_mb(&args.store, location).await;
            println!(
                "{{\"workload\":\"soak\",\"store\":\"{}\",\"done\":{done},\"invocations_per_second\":{per_second:.0},\
                 \"steps_per_second\":{:.0},\"rss_mb\":{:.1},\"disk_mb\":{disk_mb:.1},\"pending\":{pending}}}",
                args.store,
                per_second * 10.0,
                sample.rss_mb
            );
            samples.push(sample);
            interval = (Instant::now(), done);
        }
    }
    let path = args.plot.clone().unwrap_or_else(|| format!("soak-{}.png", args.store));
    plot(&path, &samples)?;
    drop(durable);
    // The runtime's tasks let go of the store once this runtime drops them.
    while Arc::strong_count(&store) > 1 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    drop(store);
    if args.store == "sled" {
        // Opening the store afterwards: it reads the live records only.
        let opened = Instant::now();
        let store = open(&args.store, location, false).await?;
        println!(
            "{{\"workload\":\"soak-reopen\",\"store\":\"sled\",\"seconds\":{:.6}}}",
            opened.elapsed().as_secs_f64()
        );
        drop(store);
    }
    cleanup(&args.store, location).await;
    Ok(())
}

/// This process's resident memory, in MB.
fn rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok());
    kb.unwrap_or(0.0) / 1024.0
}

/// How many promises are pending: the live state.
async fn pending(store: &dyn Store) -> Result<usize, String> {
    let (mut count, mut cursor) = (0, None);
    loop {
        let search =
            durable::store::Search { state: Some(durable::State::Pending), limit: 1000, cursor, ..Default::default() };
        let page = store.search(search).await.map_err(|e| e.to_string())?;
        count += page.promises.len();
        match page.cursor {
            Some(c) => cursor = Some(c),
            None => return Ok(count),
        }
    }
}

/// The store's size on disk, in MB: sled's directory, or PostgreSQL's tables.
async fn disk_mb(store: &str, location: &str) -> f64 {
    let bytes = match store {
        "sled" => dir_size(std::path::Path::new(location)),
        "postgres" => {
            let url = std::env::var("DURABLE_POSTGRES_URL")
                .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
            let Ok((client, connection)) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await else {
                return 0.0;
            };
            tokio::spawn(connection);
            let query = "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0)::bigint FROM pg_class c
                 JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relkind = 'r'";
            client.query_one(query, &[&location]).await.map_or(0, |row| row.get::<_, i64>(0) as u64)
        }
        _ => 0,
    };
    bytes as f64 / (1 << 20) as f64
}

fn dir_size(path: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(path) else { return 0 };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_size(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// Fonts the plot's labels are drawn in, the first found: `$DURABLE_BENCH_FONT`, then
/// DejaVu Sans or Liberation Sans where Debian puts them.
const FONTS: [&str; 2] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
];

/// Registers the first font found as plotters' `sans-serif`; false if there is none.
fn register_font() -> bool {
    let paths = std::env::var("DURABLE_BENCH_FONT").into_iter().chain(FONTS.iter().map(|p| p.to_string()));
    for path in paths {
        if let Ok(bytes) = std::fs::read(&path) {
            // plotters keeps fonts for the life of the process.
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            if plotters::style::register_font("sans-serif", plotters::style::FontStyle::Normal, bytes).is_ok() {
                return true;
            }
        }
    }
    false
}

/// Draws RSS (top, red) and throughput (bottom, blue) against invocations done, each
/// from zero to a fifth above its largest value, with titled and labelled axes when a
/// font is found (see [`FONTS`]), bare axes otherwise.
fn plot(path: &str, samples: &[Sample]) -> Result<(), String> {
    use plotters::prelude::*;
    let fail = |e: &dyn std::fmt::Display| format!("cannot draw {path}: {e}");
    let labelled = register_font();
    if !labelled {
        eprintln!("no font found (set DURABLE_BENCH_FONT to a .ttf): {path} has no labels");
    }
    let root = BitMapBackend::new(path, (800, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| fail(&e))?;
    let (top, bottom) = root.split_vertically(300);
    let max_x = samples.last().map_or(1, |s| s.done) as f64;
    let rss: Vec<(f64, f64)> = samples.iter().map(|s| (s.done as f64, s.rss_mb)).collect();
    let rate: Vec<(f64, f64)> = samples.iter().map(|s| (s.done as f64, s.per_second)).collect();
    let panels = [
        (top, rss, RED, "resident memory", "RSS (MB)"),
        (bottom, rate, BLUE, "throughput over each tenth", "invocations/s"),
    ];
    for (area, points, color, title, unit) in panels {
        let max_y = points.iter().map(|p| p.1).fold(1.0, f64::max) * 1.2;
        let mut builder = ChartBuilder::on(&area);
        builder.margin(20);
        if labelled {
            builder.caption(title, ("sans-serif", 20)).x_label_area_size(40).y_label_area_size(70);
        }
        let mut chart = builder.build_cartesian_2d(0.0..max_x, 0.0..max_y).map_err(|e| fail(&e))?;
        if labelled {
            chart
                .configure_mesh()
                .x_desc("invocations done")
                .y_desc(unit)
                .x_label_formatter(&|x| format!("{x:.0}"))
                .y_label_formatter(&|y| format!("{y:.0}"))
                .draw()
                .map_err(|e| fail(&e))?;
        } else {
            let axes = [vec![(0.0, max_y), (0.0, 0.0), (max_x, 0.0)]];
            chart.draw_series(axes.map(|a| PathElement::new(a, BLACK))).map_err(|e| fail(&e))?;
        }
        chart.draw_series(LineSeries::new(points, color.stroke_width(2))).map_err(|e| fail(&e))?;
    }
    root.present().map_err(|e| fail(&e))
}
