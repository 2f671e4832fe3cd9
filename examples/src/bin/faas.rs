//! Function as a service on durable.
//!
//! * `faas worker --group gpu` runs scripts sent to group `gpu` (any group name).
//! * `faas submit --script job.py --machine gpu` runs `job.py` on a `gpu` worker and
//!   prints its output; with `--detach` it prints the job id at once.
//! * `faas get --id ID` prints a job's state and result.
//!
//! Every command takes `--store URL` (default `$DURABLE_POSTGRES_URL`, else
//! `postgres://postgres@127.0.0.1:5432/test`): router and workers are separate
//! processes, on any machines that reach the database.

use std::process::ExitCode;
use std::time::Duration;

use durable::{Durable, State};
use durable_examples::faas::{self, Job, Script, Submitted, execute, submit};
use durable_examples::open_store;

/// Function as a service on durable: workers by group, a router, and job lookups.
#[derive(Debug, clap::Parser)]
#[command(name = "faas")]
struct Args {
    /// The PostgreSQL URL (default `$DURABLE_POSTGRES_URL`, else
    /// `postgres://postgres@127.0.0.1:5432/test`).
    #[arg(long, global = true, value_name = "URL")]
    store: Option<String>,
    /// How long a hold on a task outlives its worker, in milliseconds.
    #[arg(long, global = true, default_value_t = 30_000, value_name = "MS")]
    lease: u64,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Runs the scripts sent to a group.
    Worker {
        /// The group it serves (any name, e.g. gpu).
        #[arg(long, value_name = "NAME")]
        group: String,
        /// Its pid, so that jobs can be routed to it.
        #[arg(long, value_name = "NAME")]
        pid: Option<String>,
        /// How long one script may run, in seconds.
        #[arg(long, default_value_t = 120, value_name = "SECONDS")]
        timeout: u64,
    },
    /// Runs a script on a worker of a group and prints its output.
    Submit {
        /// The script.
        #[arg(long, value_name = "FILE")]
        script: String,
        /// The group to run it on.
        #[arg(long, value_name = "GROUP")]
        machine: String,
        /// Print the job's id at once instead of waiting for its output.
        #[arg(long)]
        detach: bool,
    },
    /// Prints a job's state and result.
    Get {
        /// The job's id.
        #[arg(long, value_name = "JOB")]
        id: String,
    },
}

fn main() -> ExitCode {
    let args = <Args as clap::Parser>::parse();
    durable_examples::trace_from_env();
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => return fail(&format!("cannot start the runtime: {e}")),
    };
    runtime.block_on(run(args))
}

async fn run(args: Args) -> ExitCode {
    // A missing script is the caller's mistake: refused before anything is written.
    let script = match &args.command {
        Command::Submit { script: path, .. } => match std::fs::read_to_string(path) {
            Ok(source) => Some(Script { name: path.clone(), source }),
            Err(e) => {
                eprintln!("error: cannot read the script {path}: {e}");
                return ExitCode::from(2);
            }
        },
        _ => None,
    };
    let url = args.store.clone().unwrap_or_else(|| {
        std::env::var("DURABLE_POSTGRES_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
    });
    let store = match open_store(&url).await {
        Ok(store) => store,
        Err(e) => return fail(&e.to_string()),
    };
    let lease = Duration::from_millis(args.lease);
    match args.command {
        Command::Worker { group, pid, timeout } => {
            let name = format!("{group}/{}", pid.as_deref().unwrap_or("any"));
            let worker = faas::Worker { name: name.clone(), timeout: Duration::from_secs(timeout) };
            let mut builder =
                Durable::builder().store(store).group(&group).lease(lease).state(worker).register(execute);
            if let Some(pid) = &pid {
                builder = builder.pid(pid);
            }
            match builder.build() {
                Ok(durable) => {
                    eprintln!("faas worker {name} serving");
                    match durable.serve().await {
                        Ok(()) => ExitCode::SUCCESS,
                        Err(e) => fail(&e.to_string()),
                    }
                }
                Err(e) => fail(&e.to_string()),
            }
        }
        Command::Submit { machine, detach, .. } => {
            let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
            let id = format!("job-{}-{nanos}", std::process::id());
            let router = match Durable::builder().store(store).group("router").lease(lease).register(submit).build() {
                Ok(router) => router,
                Err(e) => return fail(&e.to_string()),
            };
            let job = Job { id: id.clone(), script: script.expect("read above"), machine, detach };
            let result = match router.run(&format!("submit-{id}"), submit, job).await {
                Ok(handle) => handle.await,
                Err(e) => Err(e),
            };
            match result {
                Ok(Submitted::Detached(id)) => {
                    println!("{id}");
                    ExitCode::SUCCESS
                }
                Ok(Submitted::Done(run)) => {
                    print!("{}", run.stdout);
                    eprint!("{}", run.stderr);
                    ExitCode::SUCCESS
                }
                Err(e) => fail(&e.to_string()),
            }
        }
        Command::Get { id } => {
            let promise = match store.get(&id).await {
                Ok(Some(promise)) => promise,
                Ok(None) => return fail(&format!("no job {id}")),
                Err(e) => return fail(&e.to_string()),
            };
            match promise.value::<faas::Run>() {
                None => {
                    println!("pending");
                    ExitCode::SUCCESS
                }
                Some(Ok(run)) => {
                    println!("resolved on {}", run.worker);
                    print!("{}", run.stdout);
                    ExitCode::SUCCESS
                }
                Some(Err(e)) => {
                    let state = if promise.state == State::RejectedTimedout { "timed out" } else { "rejected" };
                    println!("{state}: {e}");
                    ExitCode::SUCCESS
                }
            }
        }
    }
}

fn fail(message: &str) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::FAILURE
}
