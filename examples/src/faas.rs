//! Function as a service: a router sends Python scripts to a worker group (`gpu`,
//! `cpu`, any name), which runs each in a fresh temporary directory with a timeout.

use std::path::PathBuf;
use std::time::Duration;

use durable::prelude::*;
use serde::{Deserialize, Serialize};

/// A script to run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Script {
    /// Its file name, for messages.
    pub name: String,
    /// Its source.
    pub source: String,
}

/// What a script printed, and where it ran.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Run {
    /// Its standard output.
    pub stdout: String,
    /// Its standard error.
    pub stderr: String,
    /// The worker (group/pid) that ran it.
    pub worker: String,
}

/// A submission to the router.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Job {
    /// The job's id: the promise that holds its result.
    pub id: String,
    /// The script.
    pub script: Script,
    /// The worker group to run it on.
    pub machine: String,
    /// Return the job id at once instead of waiting for the run.
    pub detach: bool,
}

/// What the router answers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Submitted {
    /// The run finished.
    Done(Run),
    /// The run goes on as its own invocation, under this id.
    Detached(String),
}

/// A worker's settings: its state on the runtime's builder (`.state(Worker { … })`),
/// which `execute` reads.
#[derive(Clone, Debug)]
pub struct Worker {
    /// Its group and pid, which a run names.
    pub name: String,
    /// How long a script may run.
    pub timeout: Duration,
}

/// The worker side: runs the script with `python3 -I -S` in a fresh temporary
/// directory, which is always removed. A timeout or a non-zero exit is a terminal
/// error carrying the end of stderr.
#[durable::function(name = "execute")]
pub async fn execute(ctx: &mut Context, script: Script) -> durable::Result<Run> {
    let Worker { name: worker, timeout } = Worker::clone(&*ctx.state::<Worker>()?);
    let dir = TempDir::new()?;
    let path = dir.0.join("script.py");
    std::fs::write(&path, &script.source).map_err(|e| Error::new(format!("cannot write {}: {e}", path.display())))?;
    let child = tokio::process::Command::new("python3")
        .args(["-I", "-S", "script.py"])
        .current_dir(&dir.0)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| Error::new(format!("cannot start python3 for {}: {e}", script.name)))?;
    let output = match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Err(_) => {
            return Err(Error::terminal(format!(
                "{} timed out after {} s on {worker}",
                script.name,
                timeout.as_secs()
            )));
        }
        Ok(Err(e)) => return Err(Error::new(format!("cannot wait for {}: {e}", script.name))),
        Ok(Ok(output)) => output,
    };
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    if !output.status.success() {
        return Err(Error::terminal(format!(
            "{} failed on {worker} ({}); stderr ends:\n{}",
            script.name,
            output.status,
            tail(&stderr, 20)
        )));
    }
    Ok(Run { stdout: String::from_utf8_lossy(&output.stdout).into_owned(), stderr, worker })
}

/// The router: sends the script to `poll://any@{machine}` and waits for the run, or
/// starts it detached and answers with its id.
#[durable::function(name = "submit", retry = Retry::Never)]
pub async fn submit(ctx: &mut Context, job: Job) -> durable::Result<Submitted> {
    let target = format!("poll://any@{}", job.machine);
    let run = Remote::<Script, Run>::named("execute");
    if job.detach {
        let id = ctx.detached(run, job.script).id(job.id).target(&target).await?;
        Ok(Submitted::Detached(id))
    } else {
        Ok(Submitted::Done(ctx.rfc(run, job.script).id(job.id).target(&target).await?))
    }
}

/// The last `lines` lines of `text`.
pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A directory removed when dropped, whatever happened in it.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> durable::Result<TempDir> {
        use std::sync::atomic::{AtomicU64, Ordering};
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let dir = std::env::temp_dir().join(format!(
            "durable-faas-{}-{nanos}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir(&dir).map_err(|e| Error::new(format!("cannot create {}: {e}", dir.display())))?;
        Ok(TempDir(dir))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
