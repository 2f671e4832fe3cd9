//! The distributed calculator.
//!
//! * `calculator "(1 + 2) * (3 - 4)"` prints `-3`. On the embedded store (the
//!   default, in `./calculator-data`) every role runs in this process.
//! * `calculator` alone is a prompt: each line is a new evaluation.
//! * `calculator --store postgres://… worker --group exp --pid lhs` runs one role (also
//!   `--pid rhs`, and `--group ops`) as its own process; `calculator --store
//!   postgres://… EXPR` is then only the client.
//! * `--trace` prints the durable calls as they unfold.

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use durable::store::Search;
use durable::{Durable, Param, State, Store};
use durable_examples::calculator::{self, Role, clc};
use durable_examples::open_store;

/// Evaluates arithmetic durably: integers, + - * /, parentheses.
#[derive(Debug, clap::Parser)]
#[command(name = "calculator")]
struct Args {
    /// The sled store's directory, or a PostgreSQL URL (where each role can run as its
    /// own process).
    #[arg(long, global = true, default_value = "calculator-data", value_name = "DIR|postgres://…")]
    store: String,
    /// How long a worker's hold on a task outlives the worker, in milliseconds.
    #[arg(long, global = true, default_value_t = 30_000, value_name = "MS")]
    lease: u64,
    /// Print the durable calls as they unfold.
    #[arg(long)]
    trace: bool,
    /// The expression; without one, a prompt reads one per line. Put `--` before one
    /// that starts with `-`.
    expression: Option<String>,
    #[command(subcommand)]
    worker: Option<Worker>,
}

#[derive(Debug, clap::Subcommand)]
enum Worker {
    /// Runs one role as its own process, over a shared store: `--group exp --pid lhs`
    /// (or `rhs`), or `--group ops`.
    Worker {
        /// The role's group: exp or ops.
        #[arg(long)]
        group: String,
        /// The role's pid within exp: lhs or rhs.
        #[arg(long)]
        pid: Option<String>,
    },
}

fn main() -> ExitCode {
    let args = <Args as clap::Parser>::parse();
    durable_examples::trace_from_env();
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => return fail(&format!("cannot start the runtime: {e}")),
    };
    // A malformed expression is reported before any store is opened.
    if let Some(expression) = &args.expression
        && let Err(e) = calculator::parse(expression)
    {
        eprintln!("error: {e}\n  {expression}\n  {:>width$}", "^", width = e.column);
        return ExitCode::from(2);
    }
    runtime.block_on(async {
        let store = match open_store(&args.store).await {
            Ok(store) => store,
            Err(e) => return fail(&e.to_string()),
        };
        let lease = Duration::from_millis(args.lease);
        if let Some(Worker::Worker { group, pid }) = &args.worker {
            let role = match Role::parse(group, pid.as_deref()) {
                Ok(role) => role,
                Err(problem) => return fail(&problem),
            };
            return match role.runtime(store, lease) {
                Ok(durable) => {
                    eprintln!(
                        "calculator worker {group}{} serving",
                        pid.as_deref().map(|p| format!("/{p}")).unwrap_or_default()
                    );
                    match durable.serve().await {
                        Ok(()) => ExitCode::SUCCESS,
                        Err(e) => fail(&e.to_string()),
                    }
                }
                Err(e) => fail(&e.to_string()),
            };
        }
        // On the embedded store every role runs here; on a shared store, only the client.
        let embedded = !args.store.starts_with("postgres");
        let runtimes =
            if embedded { calculator::all_roles(store) } else { Role::Client.runtime(store, lease).map(|d| vec![d]) };
        let runtimes = match runtimes {
            Ok(runtimes) => runtimes,
            Err(e) => return fail(&e.to_string()),
        };
        match args.expression {
            Some(expression) => evaluate(&runtimes[0], &expression, args.trace).await,
            None => prompt(&runtimes[0], args.trace).await,
        }
    })
}

/// Parses and evaluates one expression as a new invocation; prints the result.
async fn evaluate(durable: &Durable, input: &str, trace: bool) -> ExitCode {
    let expr = match calculator::parse(input) {
        Ok(expr) => expr,
        Err(e) => {
            eprintln!("error: {e}\n  {input}\n  {:>width$}", "^", width = e.column);
            return ExitCode::from(2);
        }
    };
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let id = format!("calc-{}-{nanos}", std::process::id());
    let tracer = trace.then(|| tokio::spawn(follow(durable.store().clone(), id.clone())));
    let result = match durable.run(&id, clc, expr).await {
        Ok(handle) => handle.await,
        Err(e) => Err(e),
    };
    if let Some(tracer) = tracer {
        // One last look, so the trace ends with the root's settlement.
        tokio::time::sleep(Duration::from_millis(60)).await;
        tracer.abort();
    }
    match result {
        Ok(value) => {
            println!("{value}");
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e.to_string()),
    }
}

/// Prints the tree of durable calls under `root` as it unfolds: a line when a call
/// starts (its function, arguments and where it runs) and when it settles.
async fn follow(store: Arc<dyn Store>, root: String) {
    let mut seen: BTreeMap<String, State> = BTreeMap::new();
    loop {
        let mut cursor = None;
        loop {
            let search = Search { prefix: root.clone(), cursor, limit: 1000, ..Search::default() };
            let Ok(page) = store.search(search).await else { break };
            for p in &page.promises {
                let depth = p.id.matches('.').count();
                let indent = "  ".repeat(depth);
                if !seen.contains_key(&p.id) {
                    let Param::Call { func, args, .. } = &p.param else { continue };
                    let target = match store.task(&p.id).await {
                        Ok(Some(task)) => format!(" on {}", task.target),
                        _ => String::new(),
                    };
                    eprintln!("{indent}→ {} {func}({args}){target}", p.id);
                    seen.insert(p.id.clone(), State::Pending);
                }
                if p.state.is_settled() && seen.get(&p.id) == Some(&State::Pending) {
                    let value = p.value.as_deref().unwrap_or("");
                    eprintln!("{indent}← {} {:?} {value}", p.id, p.state);
                    seen.insert(p.id.clone(), p.state);
                }
            }
            match page.cursor {
                Some(c) => cursor = Some(c),
                None => break,
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn prompt(durable: &Durable, trace: bool) -> ExitCode {
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    loop {
        print!("❯ ");
        let _ = std::io::stdout().flush();
        match lines.next() {
            Some(Ok(line)) if line.trim().is_empty() => continue,
            Some(Ok(line)) => {
                evaluate(durable, line.trim(), trace).await;
            }
            Some(Err(e)) => return fail(&format!("cannot read the prompt: {e}")),
            None => {
                println!();
                return ExitCode::SUCCESS;
            }
        }
    }
}

fn fail(message: &str) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::FAILURE
}
