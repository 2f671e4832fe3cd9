//! `calculator "(1 + 2) * (3 - 4)"` prints `-3`; without an expression it prompts.
//! Every evaluation is a durable invocation on the embedded sled store.

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use durable::{Durable, SledStore};
use durable_examples::calculator::{self, clc};

const USAGE: &str = "usage: calculator [--store DIR] [EXPRESSION]\n\
                     evaluates EXPRESSION (integers, + - * /, parentheses) durably; \
                     without one, reads expressions from a prompt.\n\
                     --store DIR  the sled store's directory (default: ./calculator-data)";

fn main() -> ExitCode {
    let mut store_dir = PathBuf::from("calculator-data");
    let mut expression = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--store" => match args.next() {
                Some(dir) => store_dir = dir.into(),
                None => return usage("--store needs a directory"),
            },
            "-h" | "--help" => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            flag if flag.starts_with("--") => return usage(&format!("unknown option {flag}")),
            _ if expression.is_some() => return usage("give one expression (quote it)"),
            _ => expression = Some(arg),
        }
    }
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => return fail(&format!("cannot start the runtime: {e}")),
    };
    runtime.block_on(async {
        let store = match SledStore::open(&store_dir) {
            Ok(store) => store,
            Err(e) => return fail(&e.to_string()),
        };
        let durable = match calculator::register(Durable::builder().store(Arc::new(store))).build() {
            Ok(durable) => durable,
            Err(e) => return fail(&e.to_string()),
        };
        match expression {
            Some(expression) => evaluate(&durable, &expression).await,
            None => prompt(&durable).await,
        }
    })
}

/// Parses and evaluates one expression as a new invocation; prints the result.
async fn evaluate(durable: &Durable, input: &str) -> ExitCode {
    let expr = match calculator::parse(input) {
        Ok(expr) => expr,
        Err(e) => {
            eprintln!("error: {e}\n  {input}\n  {:>width$}", "^", width = e.column);
            return ExitCode::from(2);
        }
    };
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let id = format!("calc-{}-{nanos}", std::process::id());
    let result = match durable.run(&id, clc, expr).await {
        Ok(handle) => handle.await,
        Err(e) => Err(e),
    };
    match result {
        Ok(value) => {
            println!("{value}");
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e.to_string()),
    }
}

async fn prompt(durable: &Durable) -> ExitCode {
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    loop {
        print!("❯ ");
        let _ = std::io::stdout().flush();
        match lines.next() {
            Some(Ok(line)) if line.trim().is_empty() => continue,
            Some(Ok(line)) => {
                evaluate(durable, line.trim()).await;
            }
            Some(Err(e)) => return fail(&format!("cannot read the prompt: {e}")),
            None => {
                println!();
                return ExitCode::SUCCESS;
            }
        }
    }
}

fn usage(problem: &str) -> ExitCode {
    eprintln!("error: {problem}\n{USAGE}");
    ExitCode::from(2)
}

fn fail(message: &str) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::FAILURE
}
