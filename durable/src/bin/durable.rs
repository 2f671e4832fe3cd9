//! `durable`: look inside a store and steer its work, from the command line.
//!
//! ```sh
//! durable --store ./calculator-data tree calc-7      # the call tree, with states and times
//! durable --store postgres://… --json get order-7    # one promise, as JSON
//! durable --store … resolve approval-7 true          # the value is JSON
//! ```
//!
//! A sled directory is locked by the process that has it open: while a service runs
//! on it, ask that service (its `Durable::promises()`). PostgreSQL works beside running
//! workers.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use durable::{Millis, Node, Promise, Promises, State, Task};

/// Look inside a durable store and steer its work.
#[derive(Debug, Parser)]
#[command(name = "durable", version)]
struct Cli {
    /// The store: a sled directory, or a PostgreSQL URL.
    #[arg(long, value_name = "DIR|postgres://…")]
    store: String,
    /// The PostgreSQL schema.
    #[arg(long, default_value = "durable")]
    schema: String,
    /// Print JSON, for scripts.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// One promise.
    Get { id: String },
    /// An invocation's promises as a tree, with states, durations and errors.
    Tree { id: String },
    /// The promises waiting for someone outside.
    External,
    /// The tasks that waited this long with no live worker that runs them.
    Unserved {
        /// Seconds waited at least.
        #[arg(long, default_value_t = 60)]
        after: u64,
    },
    /// Resolves a pending promise with a JSON value.
    Resolve { id: String, value: String },
    /// Rejects a pending promise with a message.
    Reject { id: String, message: String },
    /// Cancels a promise and what it started.
    Cancel { id: String },
    /// Resumes a halted invocation.
    Resume { id: String },
    /// Runs a finished or halted invocation again from the top under a new id.
    Restart { id: String, new_id: String },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => return fail(&format!("cannot start the runtime: {e}")),
    };
    match runtime.block_on(run(&cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

fn fail(message: &str) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::FAILURE
}

async fn run(cli: &Cli) -> Result<(), String> {
    let store = durable::store::open(&cli.store, &cli.schema).await.map_err(|e| e.to_string())?;
    let promises = Promises::new(&*store);
    let now = store.now().await.map_err(|e| e.to_string())?;
    let out = Output { json: cli.json, colour: !cli.json && std::io::stdout().is_terminal(), now };
    let e = |e: durable::Error| e.to_string();
    match &cli.command {
        Command::Get { id } => match promises.get(id).await.map_err(e)? {
            Some(p) => out.promise(&p),
            None => Err(format!("no promise {id}")),
        },
        Command::Tree { id } => match promises.tree(id).await.map_err(e)? {
            Some(tree) if out.json => out.print_json(&tree),
            Some(tree) => {
                out.tree(&tree, "", true, true);
                Ok(())
            }
            None => Err(format!("no promise {id}")),
        },
        Command::External => out.promises(&promises.external().await.map_err(e)?),
        Command::Unserved { after } => {
            let tasks = promises.unserved(Duration::from_secs(*after)).await.map_err(e)?;
            if out.json {
                return out.print_json(&tasks);
            }
            for t in &tasks {
                println!("{}  waits for a worker of group {}", t.id, t.target.group);
            }
            Ok(())
        }
        Command::Resolve { id, value } => {
            let value: serde_json::Value = serde_json::from_str(value)
                .map_err(|err| format!("the value must be JSON (\"text\" in quotes): {err}"))?;
            out.promise(&promises.resolve(id, &value).await.map_err(e)?)
        }
        Command::Reject { id, message } => out.promise(&promises.reject(id, message).await.map_err(e)?),
        Command::Cancel { id } => out.promise(&promises.cancel(id).await.map_err(e)?),
        Command::Resume { id } => match promises.resume(id).await.map_err(e)? {
            true => out.promise(&promises.get(id).await.map_err(e)?.ok_or(format!("no promise {id}"))?),
            false => Err(format!("{id} is not halted")),
        },
        Command::Restart { id, new_id } => out.promise(&promises.restart(id, new_id).await.map_err(e)?),
    }
}

/// How results are printed.
struct Output {
    json: bool,
    colour: bool,
    now: Millis,
}

impl Output {
    fn print_json(&self, value: &impl serde::Serialize) -> Result<(), String> {
        println!("{}", serde_json::to_string_pretty(value).map_err(|e| e.to_string())?);
        Ok(())
    }

    fn promise(&self, p: &Promise) -> Result<(), String> {
        if self.json {
            return self.print_json(p);
        }
        println!("{}  {}  {}{}", p.id, p.param.what(), self.state(p, None), self.outcome(p));
        Ok(())
    }

    fn promises(&self, ps: &[Promise]) -> Result<(), String> {
        if self.json {
            return self.print_json(&ps);
        }
        ps.iter().try_for_each(|p| self.promise(p))
    }

    /// One line per promise, drawn as a tree.
    fn tree(&self, node: &Node, prefix: &str, last: bool, root: bool) {
        let p = &node.promise;
        let (branch, indent) = match (root, last) {
            (true, _) => ("", ""),
            (false, true) => ("└─ ", "   "),
            (false, false) => ("├─ ", "│  "),
        };
        let name = if root { p.id.as_str() } else { p.id.rsplit('.').next().unwrap_or(&p.id) };
        let target = node.task.as_ref().map(|t| format!(" → {}", t.target)).unwrap_or_default();
        println!(
            "{prefix}{branch}{name}  {}{target}  {}  {}{}",
            p.param.what(),
            self.state(p, node.task.as_ref()),
            duration(p, self.now),
            self.outcome(p)
        );
        let prefix = format!("{prefix}{indent}");
        for (i, child) in node.children.iter().enumerate() {
            self.tree(child, &prefix, i + 1 == node.children.len(), false);
        }
    }

    /// The state, coloured where the terminal shows colour; a halted task says so.
    fn state(&self, p: &Promise, task: Option<&Task>) -> String {
        let halted = task.is_some_and(|t| t.state == durable::TaskState::Halted);
        let (text, code) = match p.state {
            State::Pending if halted => ("halted".to_owned(), "35"),
            State::Pending => ("pending".to_owned(), "33"),
            State::Resolved => ("resolved".to_owned(), "32"),
            other => (format!("{other:?}").to_lowercase(), "31"),
        };
        if self.colour { format!("\x1b[{code}m{text}\x1b[0m") } else { text }
    }

    /// The value or the error, cut to a line.
    fn outcome(&self, p: &Promise) -> String {
        match p.outcome() {
            None => String::new(),
            Some(Ok(json)) => format!("  = {}", cut(json)),
            Some(Err(e)) => format!("  ! {}", cut(&e.to_string())),
        }
    }
}

/// From creation to settlement, or to now while pending.
fn duration(p: &Promise, now: Millis) -> String {
    let ms = p.settled_at.unwrap_or(now).saturating_sub(p.created_at);
    if ms < 1000 { format!("{ms} ms") } else { format!("{:.1} s", ms as f64 / 1000.0) }
}

fn cut(text: &str) -> String {
    match text.char_indices().nth(80) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_owned(),
    }
}
