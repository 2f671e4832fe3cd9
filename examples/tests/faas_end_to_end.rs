//! The function-as-a-service programs end to end, as separate processes on
//! PostgreSQL with real python3 scripts: success, failure, timeout, routing by
//! machine, and a worker killed mid-script whose job finishes on another worker of its
//! group. Reads `DURABLE_POSTGRES_URL`; under `CI=true` an unreachable server fails.

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

mod common;

use common::url;

/// A test's world: its own schema, temporary directory and worker processes.
struct World {
    schema: String,
    dir: PathBuf,
    workers: Vec<Child>,
    client: tokio_postgres::Client,
}

impl Drop for World {
    fn drop(&mut self) {
        for child in &mut self.workers {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl World {
    async fn new(name: &str) -> Option<World> {
        let (client, connection) = match tokio_postgres::connect(&url(), tokio_postgres::NoTls).await {
            Ok(c) => c,
            Err(e) if std::env::var("CI").as_deref() == Ok("true") => {
                panic!("PostgreSQL at {} is unreachable under CI=true: {e}", url())
            }
            Err(e) => {
                eprintln!("skipped: PostgreSQL at {} is unreachable: {e}", url());
                return None;
            }
        };
        tokio::spawn(connection);
        let schema = format!("durable_faas_{name}_{}", std::process::id());
        client.batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE")).await.unwrap();
        let dir = std::env::temp_dir().join(&schema);
        std::fs::create_dir_all(dir.join("tmp")).unwrap();
        Some(World { schema, dir, workers: Vec::new(), client })
    }

    fn faas(&self, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_faas"));
        command
            .args(["--store", &url()])
            .args(args)
            .env("DURABLE_SCHEMA", &self.schema)
            .env("TMPDIR", self.dir.join("tmp"));
        command
    }

    fn worker(&mut self, group: &str, pid: &str, timeout: &str) -> usize {
        let child = self
            .faas(&["worker", "--group", group, "--pid", pid, "--timeout", timeout, "--lease", "1000"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.workers.push(child);
        self.workers.len() - 1
    }

    fn script(&self, name: &str, source: &str) -> String {
        let path = self.dir.join(name);
        std::fs::write(&path, source).unwrap();
        path.display().to_string()
    }

    async fn submit(&self, script: &str, machine: &str, detach: bool) -> Output {
        let mut args = vec!["submit", "--script", script, "--machine", machine];
        if detach {
            args.push("--detach");
        }
        let command = self.faas(&args).output();
        tokio::task::spawn_blocking(move || command).await.unwrap().unwrap()
    }

    fn leftovers(&self) -> usize {
        std::fs::read_dir(self.dir.join("tmp")).unwrap().count()
    }

    async fn finish(self) {
        self.client.batch_execute(&format!("DROP SCHEMA {} CASCADE", self.schema)).await.unwrap();
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test]
async fn scripts_succeed_fail_and_time_out_as_such() {
    let Some(mut world) = World::new("outcomes").await else { return };
    world.worker("gpu", "g1", "1");
    let hello = world.script("hello.py", "print('hello', 6 * 7)\n");
    let out = world.submit(&hello, "gpu", false).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "hello 42\n");

    let failing = world.script(
        "failing.py",
        "import sys\nprint('working')\nsys.stderr.write('first\\nboom: bad input\\n')\nsys.exit(3)\n",
    );
    let out = world.submit(&failing, "gpu", false).await;
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        err.contains("failing.py failed on gpu/g1")
            && err.contains("exit status: 3")
            && err.contains("boom: bad input"),
        "{err}"
    );

    let slow = world.script("slow.py", "import time\ntime.sleep(30)\n");
    let started = Instant::now();
    let out = world.submit(&slow, "gpu", false).await;
    let err = text(&out.stderr);
    assert!(err.contains("slow.py timed out after 1 s on gpu/g1"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(20), "the timeout stopped it");

    let missing = world.dir.join("missing.py").display().to_string();
    let out = world.submit(&missing, "gpu", false).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("cannot read the script"), "{}", text(&out.stderr));
    let jobs: i64 = world
        .client
        .query_one(&format!("SELECT count(*) FROM {}.promises WHERE id LIKE 'submit-%'", world.schema), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(jobs, 3, "the missing script started no job");
    assert_eq!(world.leftovers(), 0, "every run's temporary directory was removed");
    world.finish().await;
}

#[tokio::test]
async fn the_machine_type_routes_jobs() {
    let Some(mut world) = World::new("routing").await else { return };
    world.worker("gpu", "g1", "60");
    world.worker("cpu", "c1", "60");
    let script = world.script("where.py", "print('ran')\n");
    for machine in ["cpu", "gpu", "cpu"] {
        let out = world.submit(&script, machine, true).await;
        assert!(out.status.success(), "{}", text(&out.stderr));
        let id = text(&out.stdout).trim().to_owned();
        let shown = wait_for(&world, &id).await;
        assert!(shown.starts_with(&format!("resolved on {machine}/")), "{machine} job: {shown}");
    }
    world.finish().await;
}

/// `faas get` until the job is no longer pending.
async fn wait_for(world: &World, id: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let command = world.faas(&["get", "--id", id]).output();
        let out = tokio::task::spawn_blocking(move || command).await.unwrap().unwrap();
        let shown = text(&out.stdout);
        if out.status.success() && !shown.starts_with("pending") {
            return shown;
        }
        assert!(Instant::now() < deadline, "job {id} never finished");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_worker_killed_mid_script_hands_the_job_to_another_of_its_group() {
    let Some(mut world) = World::new("kill").await else { return };
    world.worker("gpu", "a", "60");
    world.worker("gpu", "b", "60");
    let script = world.script("long.py", "import time\ntime.sleep(2)\nprint('done')\n");
    let out = world.submit(&script, "gpu", true).await;
    let id = text(&out.stdout).trim().to_owned();
    let deadline = Instant::now() + Duration::from_secs(30);
    let holder: String = loop {
        let row = world
            .client
            .query_opt(
                &format!("SELECT process FROM {}.tasks WHERE id = $1 AND state = 'acquired'", world.schema),
                &[&id],
            )
            .await
            .unwrap();
        if let Some(row) = row {
            break row.get(0);
        }
        assert!(Instant::now() < deadline, "no worker took the job");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let (victim, survivor) = if holder.starts_with("a:") { (0, "b") } else { (1, "a") };
    world.workers[victim].kill().unwrap();
    world.workers[victim].wait().unwrap();
    let shown = wait_for(&world, &id).await;
    assert_eq!(shown, format!("resolved on gpu/{survivor}\ndone\n"));
    world.finish().await;
}
