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

const USAGE: &str = "usage: faas [--store URL] worker --group NAME [--pid NAME] [--timeout SECONDS] [--lease MS]
       faas [--store URL] submit --script FILE --machine GROUP [--detach]
       faas [--store URL] get --id JOB";

#[derive(Default)]
struct Args {
    store: Option<String>,
    command: String,
    group: Option<String>,
    pid: Option<String>,
    timeout: Option<u64>,
    lease: Option<u64>,
    script: Option<String>,
    machine: Option<String>,
    detach: bool,
    id: Option<String>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args::default();
    let mut rest = std::env::args().skip(1);
    let value =
        |rest: &mut std::iter::Skip<std::env::Args>, flag: &str| rest.next().ok_or(format!("{flag} needs a value"));
    while let Some(arg) = rest.next() {
        match arg.as_str() {
            "--store" => args.store = Some(value(&mut rest, "--store")?),
            "--group" => args.group = Some(value(&mut rest, "--group")?),
            "--pid" => args.pid = Some(value(&mut rest, "--pid")?),
            "--script" => args.script = Some(value(&mut rest, "--script")?),
            "--machine" => args.machine = Some(value(&mut rest, "--machine")?),
            "--id" => args.id = Some(value(&mut rest, "--id")?),
            "--detach" => args.detach = true,
            "--timeout" => {
                let v = value(&mut rest, "--timeout")?;
                args.timeout = Some(v.parse().map_err(|_| format!("--timeout takes seconds, not {v:?}"))?);
            }
            "--lease" => {
                let v = value(&mut rest, "--lease")?;
                args.lease = Some(v.parse().map_err(|_| format!("--lease takes milliseconds, not {v:?}"))?);
            }
            "-h" | "--help" => return Err(String::new()),
            "worker" | "submit" | "get" if args.command.is_empty() => args.command = arg,
            other => return Err(format!("unexpected argument {other:?}")),
        }
    }
    if args.command.is_empty() {
        return Err("say worker, submit or get".into());
    }
    Ok(args)
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(problem) if problem.is_empty() => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(problem) => {
            eprintln!("error: {problem}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    durable_examples::trace_from_env();
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => return fail(&format!("cannot start the runtime: {e}")),
    };
    runtime.block_on(run(args))
}

async fn run(args: Args) -> ExitCode {
    // A missing script is the caller's mistake: refused before anything is written.
    let script = match (&args.command[..], &args.script) {
        ("submit", Some(path)) => match std::fs::read_to_string(path) {
            Ok(source) => Some(Script { name: path.clone(), source }),
            Err(e) => {
                eprintln!("error: cannot read the script {path}: {e}");
                return ExitCode::from(2);
            }
        },
        ("submit", None) => return usage("submit needs --script FILE"),
        _ => None,
    };
    let url = args.store.clone().unwrap_or_else(|| {
        std::env::var("DURABLE_POSTGRES_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
    });
    let store = match open_store(&url).await {
        Ok(store) => store,
        Err(e) => return fail(&e.to_string()),
    };
    let lease = Duration::from_millis(args.lease.unwrap_or(30_000));
    match &args.command[..] {
        "worker" => {
            let Some(group) = args.group else { return usage("worker needs --group NAME") };
            let mut builder = Durable::builder().store(store).group(&group).lease(lease).register(execute);
            if let Some(pid) = &args.pid {
                builder = builder.pid(pid);
            }
            let name = format!("{group}/{}", args.pid.as_deref().unwrap_or("any"));
            faas::set_worker(name.clone(), Duration::from_secs(args.timeout.unwrap_or(120)));
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
        "submit" => {
            let Some(machine) = args.machine else { return usage("submit needs --machine GROUP") };
            let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
            let id = format!("job-{}-{nanos}", std::process::id());
            let router = match Durable::builder().store(store).group("router").lease(lease).register(submit).build() {
                Ok(router) => router,
                Err(e) => return fail(&e.to_string()),
            };
            let job = Job { id: id.clone(), script: script.expect("read above"), machine, detach: args.detach };
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
        "get" => {
            let Some(id) = args.id else { return usage("get needs --id JOB") };
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
        _ => usage("say worker, submit or get"),
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
