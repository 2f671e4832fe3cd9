//! `durable`: look inside a store and steer its work, from the command line.
//!
//! ```sh
//! durable --store ./calculator-data ls --since 1h    # the invocations of the last hour, newest first
//! durable --store ./calculator-data tree calc-7      # the call tree, with states and times
//! durable --store postgres://… --json get order-7    # one promise, as JSON
//! durable --store … resolve approval-7 true          # the value is JSON
//! ```
//!
//! On PostgreSQL it works beside running workers: every command is a step of the
//! store, as a worker's are. A sled directory is locked by the one process that has it
//! open, so on sled the command reads and steers a store no service is running on,
//! and says so when one is. It does not reach into a running service through an admin
//! endpoint of its own: that would be a network service in every process that embeds
//! the library, with its own port, authentication and attack surface, for a store that
//! is one machine's by design. A service on sled steers itself through
//! `Durable::promises()`, the same calls this command makes.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use durable::store::{Cursor, Invocations, Listing};
use durable::{Millis, Node, Promise, Promises, State, Task};

/// Look inside a durable store and steer its work.
#[derive(Debug, Parser)]
#[command(name = "durable", version)]
struct Cli {
    /// The store: a sled directory, or a PostgreSQL URL.
    #[arg(long, value_name = "DIR|postgres://…")]
    store: String,
    /// The PostgreSQL schema.
    #[arg(long, env = "DURABLE_SCHEMA", default_value = "durable")]
    schema: String,
    /// Print JSON, for scripts.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The invocations, newest first, a page at a time.
    Ls {
        /// Only those in this state.
        #[arg(long, value_enum)]
        state: Option<StateArg>,
        /// Only calls of this function.
        #[arg(long)]
        function: Option<String>,
        /// Only those with this tag (KEY=VALUE); repeat for several.
        #[arg(long, value_name = "KEY=VALUE", value_parser = parse_tag)]
        tag: Vec<(String, String)>,
        /// Only those created within this long ago (`90s`, `15m`, `2h`, `7days`).
        #[arg(long, value_name = "AGO", value_parser = humantime::parse_duration)]
        since: Option<Duration>,
        /// Only those created more than this long ago.
        #[arg(long, value_name = "AGO", value_parser = humantime::parse_duration)]
        before: Option<Duration>,
        /// At most this many (up to 10000).
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..=durable::store::MAX_PAGE as u64))]
        limit: u64,
        /// Go on after this cursor, as the previous page printed it.
        #[arg(long, value_name = "CURSOR")]
        after: Option<Cursor>,
    },
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
    /// The limits on tasks, with what each holds back; set or remove one.
    Limits {
        #[command(subcommand)]
        action: Option<LimitsCommand>,
    },
    /// The schedules, with when each fires next; pause, resume, trigger, backfill or
    /// delete one.
    Schedules {
        #[command(subcommand)]
        action: Option<SchedulesCommand>,
    },
    /// Resolves a pending promise with a JSON value.
    Resolve { id: String, value: String },
    /// Rejects a pending promise with a message.
    Reject { id: String, message: String },
    /// Cancels a promise and what it started; one whose steps owe undos settles once
    /// they have run.
    Cancel { id: String },
    /// Resumes a halted invocation: every halted task in its tree.
    Resume { id: String },
    /// Runs a finished or halted invocation again from the top under a new id.
    Restart { id: String, new_id: String },
    /// Writes an invocation's history as JSON: a fixture for the replay check
    /// (`Checker`, in a build that has the functions), or a file to import.
    Export {
        id: String,
        /// The file to write (default: standard output).
        #[arg(long, short)]
        out: Option<std::path::PathBuf>,
    },
    /// Writes a history exported elsewhere into this store, where a worker takes it
    /// over.
    Import { file: std::path::PathBuf },
    /// Serves the web dashboard over the store until stopped.
    #[cfg(feature = "dashboard")]
    Serve {
        /// The address to listen on: loopback unless you mean otherwise.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: std::net::SocketAddr,
        /// Enables the actions (resolve, reject, cancel, resume, restart) for a browser
        /// signed in with the token printed at start.
        #[arg(long)]
        actions: bool,
        /// The actions' token, instead of a random one (implies --actions).
        #[arg(long, env = "DURABLE_DASHBOARD_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// A host name the dashboard answers to, besides IP addresses and localhost;
        /// repeat for several.
        #[arg(long, value_name = "NAME")]
        host: Vec<String>,
    },
}

/// What `limits` does: lists them unless told otherwise.
#[derive(Debug, Subcommand)]
enum LimitsCommand {
    /// Every limit, with the tasks it covers executing and waiting (the default).
    List,
    /// Sets a limit, replacing one of that name: every worker applies it from its
    /// next claim on.
    Set {
        /// Its name.
        name: String,
        /// Covers calls of this function (its registered name).
        #[arg(long)]
        function: Option<String>,
        /// Covers tasks of this group.
        #[arg(long)]
        group: Option<String>,
        /// Counts each call key on its own.
        #[arg(long)]
        per_key: bool,
        /// At most this many executing at once.
        #[arg(long)]
        concurrency: Option<u32>,
        /// At most this many starts per period: `10/1s`, `600/1m`.
        #[arg(long, value_name = "N/PERIOD", value_parser = parse_rate)]
        rate: Option<(u32, Duration)>,
        /// How many of the rate's starts may come at once.
        #[arg(long, default_value_t = 1, requires = "rate")]
        burst: u32,
    },
    /// Removes a limit: the tasks it held back may start.
    Remove { name: String },
}

/// What `schedules` does: lists them unless told otherwise. The services that run
/// the functions create them; every runtime of the store fires them.
#[derive(Debug, Subcommand)]
enum SchedulesCommand {
    /// Every schedule, with its next fire, its last, and what it skipped (the default).
    List,
    /// Pauses a schedule: it fires nothing until resumed.
    Pause { id: String },
    /// Resumes a schedule from its next fire after now.
    Resume { id: String },
    /// Fires a schedule now, as its overlap policy says.
    Trigger { id: String },
    /// Fires a schedule at each of its times in a range, one after another.
    Backfill {
        id: String,
        /// From this time, included (RFC 3339: `2026-12-01T00:00:00Z`).
        #[arg(long, value_parser = humantime::parse_rfc3339_weak)]
        from: std::time::SystemTime,
        /// To this time, included.
        #[arg(long, value_parser = humantime::parse_rfc3339_weak)]
        to: std::time::SystemTime,
    },
    /// Deletes a schedule; the invocations it started stay.
    Delete { id: String },
}

/// `N/PERIOD`, as `--rate` takes it.
fn parse_rate(s: &str) -> Result<(u32, Duration), String> {
    let (n, per) = s.split_once('/').ok_or_else(|| format!("{s:?} is not N/PERIOD, such as 10/1s"))?;
    let n = n.trim().parse().map_err(|e| format!("{n:?} is not a count of starts: {e}"))?;
    let per = humantime::parse_duration(per.trim()).map_err(|e| format!("{per:?} is not a period: {e}"))?;
    Ok((n, per))
}

/// The states `ls --state` takes.
#[derive(Clone, Copy, Debug, ValueEnum)]
enum StateArg {
    Pending,
    /// Pending, with its task halted: waiting for a fix or a resume.
    Halted,
    Resolved,
    /// Every rejection: failed, canceled or timed out.
    Rejected,
    Canceled,
    Timedout,
}

impl From<StateArg> for State {
    fn from(state: StateArg) -> State {
        match state {
            StateArg::Pending | StateArg::Halted => State::Pending,
            StateArg::Resolved => State::Resolved,
            StateArg::Rejected => State::Rejected,
            StateArg::Canceled => State::RejectedCanceled,
            StateArg::Timedout => State::RejectedTimedout,
        }
    }
}

fn parse_tag(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err(format!("{text:?} is not a tag: write KEY=VALUE")),
    }
}

fn main() -> ExitCode {
    let matches = <Cli as clap::CommandFactory>::command().get_matches();
    let cli = match <Cli as clap::FromArgMatches>::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    if let Some(("serve", serve)) = matches.subcommand()
        && serve.value_source("token") == Some(clap::parser::ValueSource::CommandLine)
    {
        eprintln!(
            "warning: --token shows in the process list to every user of this machine; \
             set DURABLE_DASHBOARD_TOKEN instead"
        );
    }
    // The dashboard answers on every core: a slow page holds one thread, not all.
    let runtime = match &cli.command {
        #[cfg(feature = "dashboard")]
        Command::Serve { .. } => tokio::runtime::Builder::new_multi_thread().enable_all().build(),
        _ => tokio::runtime::Builder::new_current_thread().enable_all().build(),
    };
    let runtime = match runtime {
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
    // Only an import writes: every other command reads or steers a store that is
    // there, and never makes one (a misspelt URL is not a new sled directory).
    let postgres = cli.store.starts_with("postgres://") || cli.store.starts_with("postgresql://");
    if !postgres && !matches!(cli.command, Command::Import { .. }) && !std::path::Path::new(&cli.store).is_dir() {
        return Err(format!(
            "no store at {:?}: give the directory of a sled store a service made, or a postgres:// URL",
            cli.store
        ));
    }
    let store: std::sync::Arc<dyn durable::Store> = if postgres {
        let options = durable::store::PostgresStore::options(&cli.store).schema(&cli.schema);
        let options = options.create(matches!(cli.command, Command::Import { .. }));
        std::sync::Arc::new(options.connect().await.map_err(|e| e.to_string())?)
    } else {
        std::sync::Arc::new(durable::SledStore::open(&cli.store).map_err(|e| e.to_string())?)
    };
    let promises = Promises::new(&*store);
    let now = store.now().await.map_err(|e| e.to_string())?;
    let out = Output { json: cli.json, colour: !cli.json && std::io::stdout().is_terminal(), now };
    let e = |e: durable::Error| e.to_string();
    match &cli.command {
        Command::Ls { state, function, tag, since, before, limit, after } => {
            let ago = |d: &Duration| now.saturating_sub(d.as_millis() as Millis);
            let query = Invocations {
                state: state.map(State::from),
                function: function.clone(),
                tags: tag.iter().cloned().collect(),
                since: since.as_ref().map(ago),
                before: before.as_ref().map(ago),
                limit: *limit as usize,
                cursor: after.clone(),
            };
            // Halted is a pending invocation whose task halted: the listing shows tasks.
            let halted_only = matches!(state, Some(StateArg::Halted));
            let keep = |i: &durable::store::Invocation| {
                !halted_only || i.task.as_ref().is_some_and(|t| t.state == durable::TaskState::Halted)
            };
            out.listing(&list(&promises, query, keep).await.map_err(e)?)
        }
        Command::Get { id } => match promises.get(id).await.map_err(e)? {
            Some(p) => out.promise(&p),
            None => Err(format!("no promise {id}")),
        },
        Command::Tree { id } => match promises.tree(id).await.map_err(e)? {
            Some(tree) if out.json => out.print_tree_json(&tree),
            Some(tree) => {
                out.tree(&tree);
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
                say(format!("{}  waits for a worker of group {}", clean(&t.id), clean(&t.target.group)));
            }
            Ok(())
        }
        Command::Limits { action } => limits(&*store, &out, action.as_ref().unwrap_or(&LimitsCommand::List)).await,
        Command::Schedules { action } => {
            schedules(&*store, &out, action.as_ref().unwrap_or(&SchedulesCommand::List)).await
        }
        Command::Resolve { id, value } => {
            let value: serde_json::Value = serde_json::from_str(value)
                .map_err(|err| format!("the value must be JSON (\"text\" in quotes): {err}"))?;
            out.promise(&promises.resolve(id, &value).await.map_err(e)?)
        }
        Command::Reject { id, message } => out.promise(&promises.reject(id, message).await.map_err(e)?),
        Command::Cancel { id } => {
            let p = promises.cancel(id).await.map_err(e)?;
            if p.canceling && !p.state.is_settled() {
                say(format!(
                    "{}  canceling: it settles as canceled once the undos of its steps have run",
                    clean(&p.id)
                ));
                return Ok(());
            }
            out.promise(&p)
        }
        Command::Resume { id } => match promises.resume(id).await.map_err(e)? {
            0 => Err(format!("nothing in {id} is halted")),
            n => {
                if !out.json {
                    say(format!("resumed {n} halted task{}", if n == 1 { "" } else { "s" }));
                }
                out.promise(&promises.get(id).await.map_err(e)?.ok_or(format!("no promise {id}"))?)
            }
        },
        Command::Restart { id, new_id } => out.promise(&promises.restart(id, new_id).await.map_err(e)?),
        Command::Export { id, out: file } => {
            let json = promises.history(id).await.map_err(e)?.to_json();
            match file {
                Some(path) => {
                    std::fs::write(path, json + "\n").map_err(|err| format!("cannot write {}: {err}", path.display()))
                }
                None => {
                    say(json);
                    Ok(())
                }
            }
        }
        #[cfg(feature = "dashboard")]
        Command::Serve { listen, actions, token, host } => {
            serve(store.clone(), *listen, *actions, token.clone(), host).await
        }
        Command::Import { file } => {
            let json = std::fs::read_to_string(file).map_err(|err| format!("cannot read {}: {err}", file.display()))?;
            let history = durable::History::from_json(&json).map_err(|err| format!("{}: {err}", file.display()))?;
            promises.import(&history).await.map_err(e)?;
            if !out.json {
                say(format!("imported {} ({} promises)", clean(&history.id), history.promises.len()));
            }
            out.promise(history.root())
        }
    }
}

/// Lists, sets or removes limits.
async fn limits(store: &dyn durable::Store, out: &Output, action: &LimitsCommand) -> Result<(), String> {
    let e = |e: durable::StoreError| e.to_string();
    match action {
        LimitsCommand::List => {
            let limits = store.limits().await.map_err(e)?;
            if out.json {
                return out.print_json(&limits);
            }
            if limits.is_empty() {
                say("no limits");
            }
            for l in &limits {
                let waited = |at: Millis| Duration::from_secs(out.now.saturating_sub(at) / 1000);
                let oldest = l.oldest.map(|at| format!(", the oldest for {}", humantime::format_duration(waited(at))));
                let oldest = oldest.unwrap_or_default();
                say(format!(
                    "{}  {}: {} executing, {} waiting{oldest}",
                    clean(&l.limit.name),
                    clean(&l.limit.to_string()),
                    l.executing,
                    l.waiting
                ));
            }
            Ok(())
        }
        LimitsCommand::Set { name, function, group, per_key, concurrency, rate, burst } => {
            let limit = durable::Limit {
                name: name.clone(),
                function: function.clone(),
                group: group.clone(),
                per_key: *per_key,
                concurrency: *concurrency,
                rate: rate.map(|(starts, per)| durable::Rate {
                    starts,
                    per: per.as_millis().min(u128::from(u64::MAX)) as Millis,
                    burst: *burst,
                }),
            };
            let stored = store.set_limit(limit, true).await.map_err(e)?;
            if out.json {
                return out.print_json(&stored);
            }
            say(format!("{}  {}", clean(&stored.name), clean(&stored.to_string())));
            Ok(())
        }
        LimitsCommand::Remove { name } => match store.remove_limit(name).await.map_err(e)? {
            true => {
                if !out.json {
                    say(format!("removed {}", clean(name)));
                }
                Ok(())
            }
            false => Err(format!("no limit {name}")),
        },
    }
}

/// Lists or steers schedules.
async fn schedules(store: &dyn durable::Store, out: &Output, action: &SchedulesCommand) -> Result<(), String> {
    let schedules = durable::Schedules::new(store);
    let e = |e: durable::Error| e.to_string();
    let stored = match action {
        SchedulesCommand::List => {
            let all = schedules.list().await.map_err(e)?;
            if out.json {
                return out.print_json(&all);
            }
            if all.is_empty() {
                say("no schedules");
            }
            for s in &all {
                out.schedule(s);
            }
            return Ok(());
        }
        SchedulesCommand::Pause { id } => schedules.pause(id).await.map_err(e)?,
        SchedulesCommand::Resume { id } => schedules.resume(id).await.map_err(e)?,
        SchedulesCommand::Trigger { id } => {
            let fire = schedules.trigger(id).await.map_err(e)?;
            if out.json {
                return out.print_json(&fire);
            }
            match fire {
                Some(fire) => say(format!("fired {}", clean(&fire))),
                None => say("skipped: the fire before still runs, and the schedule skips then"),
            }
            return Ok(());
        }
        SchedulesCommand::Backfill { id, from, to } => {
            let fires = schedules.backfill(id, *from, *to).await.map_err(e)?;
            if out.json {
                return out.print_json(&fires);
            }
            say(format!("{} fires, one after another", fires.len()));
            for fire in &fires {
                say(clean(fire));
            }
            return Ok(());
        }
        SchedulesCommand::Delete { id } => {
            return match schedules.delete(id).await.map_err(e)? {
                true => {
                    if !out.json {
                        say(format!("deleted {}", clean(id)));
                    }
                    Ok(())
                }
                false => Err(format!("no schedule {id}")),
            };
        }
    };
    if out.json {
        return out.print_json(&stored);
    }
    out.schedule(&stored);
    Ok(())
}

/// The levels of a tree drawn indented; deeper lines say their level.
const MAX_INDENT: usize = 32;

/// Serves the dashboard on `listen` until the process is stopped.
#[cfg(feature = "dashboard")]
async fn serve(
    store: std::sync::Arc<dyn durable::Store>,
    listen: std::net::SocketAddr,
    actions: bool,
    token: Option<String>,
    hosts: &[String],
) -> Result<(), String> {
    let mut dashboard = durable::dashboard::Dashboard::new(store);
    for host in hosts {
        dashboard = dashboard.host(host);
    }
    let token = match token {
        Some(t) if t.len() < 16 || !t.bytes().all(|b| b.is_ascii_alphanumeric()) => {
            return Err("the token must be at least 16 letters and digits".into());
        }
        Some(t) => Some(t),
        None if actions => {
            let mut bytes = [0u8; 20];
            getrandom::fill(&mut bytes).map_err(|e| format!("cannot make a token: {e}"))?;
            Some(bytes.iter().map(|b| format!("{b:02x}")).collect())
        }
        None => None,
    };
    if let Some(token) = &token {
        dashboard = dashboard.actions(token.clone());
    }
    let listener =
        tokio::net::TcpListener::bind(listen).await.map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    let address = listener.local_addr().map_err(|e| e.to_string())?;
    match &token {
        Some(token) => println!("the dashboard, with actions: http://{address}/login?token={token}"),
        None => println!("the dashboard, read-only: http://{address}/"),
    }
    if !address.ip().is_loopback() {
        eprintln!("warning: {address} is reachable from other machines; the dashboard has no TLS");
    }
    dashboard.serve(listener).await;
    Ok(())
}

/// A page of `limit` invocations that `keep` keeps: a store may answer with fewer and
/// a cursor (it bounds the work of one call), so this asks again until the page is
/// full or the listing ends.
async fn list(
    promises: &Promises<'_>,
    mut query: Invocations,
    keep: impl Fn(&durable::store::Invocation) -> bool,
) -> durable::Result<Listing> {
    let limit = query.limit.max(1);
    let mut listing = Listing { invocations: Vec::new(), cursor: None };
    loop {
        query.limit = limit - listing.invocations.len();
        let page = promises.invocations(query.clone()).await?;
        listing.invocations.extend(page.invocations.into_iter().filter(|i| keep(i)));
        listing.cursor = page.cursor;
        match &listing.cursor {
            Some(c) if listing.invocations.len() < limit => query.cursor = Some(c.clone()),
            _ => return Ok(listing),
        }
    }
}

/// How results are printed.
struct Output {
    json: bool,
    colour: bool,
    now: Millis,
}

impl Output {
    /// JSON exactly as stored, except that a deadline that never comes is `null`.
    fn print_json(&self, value: &impl serde::Serialize) -> Result<(), String> {
        say(serde_json::to_string_pretty(&json(value)?).map_err(|e| e.to_string())?);
        Ok(())
    }

    /// A tree as JSON, `{"promise": …, "task": …, "children": […]}` nested, written
    /// one level at a time: a chain of chosen ids can be deeper than a recursive
    /// writer's stack.
    fn print_tree_json(&self, root: &Node) -> Result<(), String> {
        enum Step<'a> {
            Open(&'a Node, bool),
            Close,
        }
        let mut text = String::new();
        let mut steps = vec![Step::Open(root, false)];
        while let Some(step) = steps.pop() {
            match step {
                Step::Open(node, comma) => {
                    let promise = serde_json::to_string(&json(&node.promise)?).map_err(|e| e.to_string())?;
                    let task = serde_json::to_string(&json(&node.task)?).map_err(|e| e.to_string())?;
                    text.push_str(if comma { "," } else { "" });
                    text.push_str(&format!("{{\"promise\":{promise},\"task\":{task},\"children\":["));
                    steps.push(Step::Close);
                    steps.extend(node.children.iter().enumerate().rev().map(|(i, c)| Step::Open(c, i > 0)));
                }
                Step::Close => text.push_str("]}"),
            }
        }
        say(text);
        Ok(())
    }
}

/// `value` as JSON, with a deadline that never comes as `null`.
fn json(value: &impl serde::Serialize) -> Result<serde_json::Value, String> {
    {
        let mut value = serde_json::to_value(value).map_err(|e| e.to_string())?;
        let mut stack = vec![&mut value];
        while let Some(v) = stack.pop() {
            match v {
                serde_json::Value::Object(fields) => {
                    for (key, field) in fields.iter_mut() {
                        if key == "timeout_at" && field.as_u64() == Some(durable::NEVER) {
                            *field = serde_json::Value::Null;
                        } else {
                            stack.push(field);
                        }
                    }
                }
                serde_json::Value::Array(items) => stack.extend(items.iter_mut()),
                _ => {}
            }
        }
        Ok(value)
    }
}

impl Output {
    /// A schedule in two lines: its id, what it calls, whether it fires, and its spec;
    /// then its next fire, what it fired and skipped, its last fire, and what it
    /// missed.
    fn schedule(&self, s: &durable::Schedule) {
        let time = |at: Millis| {
            let at = std::time::UNIX_EPOCH + Duration::from_millis(at);
            humantime::format_rfc3339_seconds(at).to_string()
        };
        let state = match (s.paused, s.next) {
            (true, _) => "paused",
            (false, None) => "ended",
            (false, Some(_)) => "active",
        };
        say(format!("{}  {}  {state}  {}", clean(&s.id), clean(s.call.what()), clean(&s.spec.to_string())));
        let next = s.next.map_or_else(|| "none".to_owned(), time);
        let mut line = format!("    next {next}, fired {}, skipped {}", s.fired, s.skipped);
        if let Some(last) = &s.last {
            line += &format!(", last {}", clean(last));
        }
        if let Some((from, until)) = s.missed {
            line += &format!(", missed {} to {}", time(from), time(until));
        }
        if let Some(error) = &s.error {
            line += &format!(", stopped: {}", clean(error));
        }
        say(line);
    }

    fn promise(&self, p: &Promise) -> Result<(), String> {
        if self.json {
            return self.print_json(p);
        }
        say(format!("{}  {}  {}{}", clean(&p.id), clean(p.param.what()), self.state(p, None), self.outcome(p)));
        Ok(())
    }

    fn promises(&self, ps: &[Promise]) -> Result<(), String> {
        if self.json {
            return self.print_json(&ps);
        }
        ps.iter().try_for_each(|p| self.promise(p))
    }

    /// One line per invocation: id, function, state, when created, how long it took or
    /// has taken, and its value or error; then the cursor of the next page, if any.
    fn listing(&self, listing: &Listing) -> Result<(), String> {
        if self.json {
            let invocations = &listing.invocations;
            let cursor = listing.cursor.as_ref().map(Cursor::to_string);
            return self.print_json(&serde_json::json!({ "invocations": invocations, "cursor": cursor }));
        }
        let rows: Vec<[String; 6]> = listing
            .invocations
            .iter()
            .map(|i| {
                let p = &i.promise;
                let created = std::time::UNIX_EPOCH + Duration::from_millis(p.created_at);
                [
                    clean(&p.id),
                    clean(p.param.what()),
                    state_word(p, i.task.as_ref()).0.to_owned(),
                    humantime::format_rfc3339_seconds(created).to_string(),
                    duration(p, self.now),
                    self.outcome(p) + &self.starts(i.task.as_ref()),
                ]
            })
            .collect();
        // Columns line up to a point: a very long id or name is not padded to.
        let width = |c: usize| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0).min(64);
        let widths = [width(0), width(1), width(2), width(3), width(4)];
        for (row, i) in rows.iter().zip(&listing.invocations) {
            let state = format!("{:w$}", row[2], w = widths[2]);
            let state = self.paint(&state, state_word(&i.promise, i.task.as_ref()).1);
            let [id, what, created, took] = [0, 1, 3, 4].map(|c| format!("{:w$}", row[c], w = widths[c]));
            say(format!("{id}  {what}  {state}  {created}  {took}{}", row[5]));
        }
        if let Some(cursor) = &listing.cursor {
            say(format!("more: ls --after {}", clean(&cursor.to_string())));
        }
        Ok(())
    }

    /// One line per promise, drawn as a tree, one level at a time (a chain of chosen
    /// ids can be deeper than a recursive walk's stack). Past [`MAX_INDENT`] levels a
    /// line says its level instead of indenting further.
    fn tree(&self, root: &Node) {
        // Each promise with its level and whether it is its parent's last; the
        // indents of the levels above the one being drawn.
        let mut stack = vec![(root, 0usize, true)];
        let mut indents: Vec<&str> = Vec::new();
        while let Some((node, level, last)) = stack.pop() {
            indents.truncate(level.saturating_sub(1));
            let shown = indents.len().saturating_sub(MAX_INDENT);
            let prefix = match shown {
                0 => indents.concat(),
                _ => format!("(level {level}) {}", indents[shown..].concat()),
            };
            self.line(node, &prefix, last, level == 0);
            if level > 0 {
                indents.push(if last { "   " } else { "│  " });
            }
            let n = node.children.len();
            stack.extend(node.children.iter().enumerate().rev().map(|(i, c)| (c, level + 1, i + 1 == n)));
        }
    }

    /// A promise's line of a tree, under `prefix`.
    fn line(&self, node: &Node, prefix: &str, last: bool, root: bool) {
        let p = &node.promise;
        let branch = match (root, last) {
            (true, _) => "",
            (false, true) => "└─ ",
            (false, false) => "├─ ",
        };
        let name = clean(if root { p.id.as_str() } else { p.id.rsplit('.').next().unwrap_or(&p.id) });
        let target = node.task.as_ref().map(|t| format!(" → {}", clean(&t.target.to_string()))).unwrap_or_default();
        // A halted task's fault is why it halted: a nondeterminism names the call,
        // both sides and file:line.
        let halt = match &node.task {
            Some(t) if t.state == durable::TaskState::Halted && p.state == State::Pending => {
                t.fault().map(|e| format!("  ! {}", clean(&e.to_string()))).unwrap_or_default()
            }
            _ => String::new(),
        };
        let undo = p.undo.as_ref().map(|u| format!(" (undo: {})", clean(&u.func))).unwrap_or_default();
        say(format!(
            "{prefix}{branch}{name}  {}{undo}{target}  {}  {}{}{halt}",
            clean(p.param.what()),
            self.state(p, node.task.as_ref()),
            duration(p, self.now),
            self.outcome(p) + &self.starts(node.task.as_ref())
        ));
    }

    /// The state, coloured where the terminal shows colour; a halted task says so.
    fn state(&self, p: &Promise, task: Option<&Task>) -> String {
        let (text, code) = state_word(p, task);
        self.paint(text, code)
    }

    /// When a pending task starts, if that is later (a delayed start, a debounced
    /// call, a retry's wait).
    fn starts(&self, task: Option<&Task>) -> String {
        match task {
            Some(t) if t.state == durable::TaskState::Pending && t.ready_at > self.now => {
                let at = std::time::UNIX_EPOCH + Duration::from_millis(t.ready_at);
                format!("  starts {}", humantime::format_rfc3339_seconds(at))
            }
            _ => String::new(),
        }
    }

    /// `text` in the colour of an ANSI `code`, where the terminal shows colour.
    fn paint(&self, text: &str, code: &str) -> String {
        if self.colour { format!("\x1b[{code}m{text}\x1b[0m") } else { text.to_owned() }
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

/// A promise's state in a word, and its colour; a halted task says so.
fn state_word(p: &Promise, task: Option<&Task>) -> (&'static str, &'static str) {
    let halted = task.is_some_and(|t| t.state == durable::TaskState::Halted);
    match p.state {
        State::Pending if halted => ("halted", "35"),
        State::Pending if p.canceling => ("canceling", "33"),
        State::Pending => ("pending", "33"),
        State::Resolved => ("resolved", "32"),
        State::Rejected => ("rejected", "31"),
        State::RejectedCanceled => ("canceled", "31"),
        State::RejectedTimedout => ("timedout", "31"),
    }
}

/// From creation to settlement, or to now while pending.
fn duration(p: &Promise, now: Millis) -> String {
    let ms = p.settled_at.unwrap_or(now).saturating_sub(p.created_at);
    if ms < 1000 { format!("{ms} ms") } else { format!("{:.1} s", ms as f64 / 1000.0) }
}

/// The first 80 characters of `text`, control characters shown escaped.
fn cut(text: &str) -> String {
    match text.char_indices().nth(80) {
        Some((end, _)) => format!("{}…", clean(&text[..end])),
        None => clean(text),
    }
}

/// `text` with its control characters escaped (`\u{1b}`): a stored string goes to a
/// terminal as text, never as a command to it.
fn clean(text: &str) -> String {
    if !text.chars().any(char::is_control) {
        return text.to_owned();
    }
    text.chars().map(|c| if c.is_control() { c.escape_default().to_string() } else { c.to_string() }).collect()
}

/// Prints a line; a reader that has gone (`| head`) ends the command quietly.
fn say(line: impl std::fmt::Display) {
    use std::io::Write;
    if let Err(e) = writeln!(std::io::stdout().lock(), "{line}") {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("error: cannot write the output: {e}");
        std::process::exit(1);
    }
}
