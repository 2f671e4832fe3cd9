//! [`Durable`]: the runtime of one process, over a store.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio::task::AbortHandle;

use crate::function::Erased;
use crate::promise::{Fence, Millis, Param, Promise};
use crate::store::{CreatePromise, NewTask, Release};
use crate::{Error, Function, Handle, Result, Store, codec};

/// The default limit on an encoded payload: 4 MiB.
pub const DEFAULT_MAX_PAYLOAD: usize = 4 << 20;

/// The durable runtime of one process: it starts invocations, executes the tasks of its
/// group, keeps their leases, and applies deadlines.
///
/// Cloning is cheap and shares the runtime. When the last clone is dropped the runtime
/// stops at once, like a crash: what it held is taken over once the leases expire.
/// [`Durable::shutdown`] stops it gracefully.
///
/// ```
/// use std::sync::Arc;
/// use durable::prelude::*;
///
/// #[durable::function]
/// async fn double(_ctx: &mut Context, x: i64) -> durable::Result<i64> {
///     Ok(2 * x)
/// }
///
/// #[durable::function]
/// async fn quadruple(ctx: &mut Context, x: i64) -> durable::Result<i64> {
///     let twice = ctx.lfc(double, x).await?;
///     ctx.lfc(double, twice).await
/// }
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> durable::Result<()> {
/// let durable = Durable::builder()
///     .store(Arc::new(MemoryStore::new()))
///     .register(quadruple)
///     .build()?;
/// let handle = durable.run("q-1", quadruple, 5).await?;
/// assert_eq!(handle.await?, 20);
/// // The same id never runs twice: a second run attaches to the first.
/// assert_eq!(durable.run("q-1", quadruple, 5).await?.await?, 20);
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Durable {
    shared: Arc<Shared>,
    life: Arc<Life>,
}

/// What the runtime's parts share.
pub(crate) struct Shared {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) group: String,
    pub(crate) process: String,
    pub(crate) registry: HashMap<String, Arc<dyn Erased>>,
    pub(crate) ttl: Millis,
    pub(crate) max_payload: usize,
    pub(crate) concurrency: usize,
    /// Wakes the background loop: a deadline was added or a slot freed.
    pub(crate) wake: Notify,
    /// Executing tasks.
    pub(crate) running: Mutex<HashMap<String, (AbortHandle, Fence)>>,
    stopped: watch::Sender<bool>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Durable")
            .field("group", &self.group)
            .field("process", &self.process)
            .field("functions", &self.registry.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// Stops the background loop and every execution when the last [`Durable`] goes.
#[derive(Debug)]
struct Life {
    shared: Arc<Shared>,
    background: AbortHandle,
}

impl Drop for Life {
    fn drop(&mut self) {
        self.background.abort();
        for (task, _) in self
            .shared
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
        {
            task.abort();
        }
        self.shared.stopped.send_replace(true);
    }
}

impl Durable {
    /// Starts building a runtime.
    pub fn builder() -> Builder {
        Builder {
            store: None,
            group: "default".into(),
            pid: None,
            registry: HashMap::new(),
            ttl: Duration::from_secs(30),
            max_payload: DEFAULT_MAX_PAYLOAD,
            concurrency: 64,
            errors: Vec::new(),
        }
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.shared.store
    }

    /// This run's process id: it holds leases, and is new on every start.
    pub fn process(&self) -> &str {
        &self.shared.process
    }

    /// Starts the invocation `id` of `f`, or attaches to it if it exists: the same id
    /// never runs twice. Returns a handle to its result.
    ///
    /// Ids may not be empty or contain `.`, which child ids use.
    pub async fn run<F: Function>(
        &self,
        id: &str,
        f: F,
        args: F::Args,
    ) -> Result<Handle<F::Output>> {
        validate_id(id)?;
        let shared = &self.shared;
        let Some(func) = shared.registry.get(f.name()) else {
            return Err(Error::NotRegistered {
                name: f.name().to_owned(),
                where_: Some("this Durable (register it with Builder::register)".into()),
            });
        };
        let args = codec::encode(id, "the arguments", &args, shared.max_payload)?;
        let mut req = CreatePromise::new(id, Param::call(f.name(), f.version(), args.clone()));
        req.timeout = f.timeout().map(|t| t.as_millis() as Millis);
        req.task = Some(NewTask {
            group: shared.group.clone(),
            acquire: Some((shared.process.clone(), shared.ttl)),
        });
        let created = shared.store.create(req).await?;
        if created.new && created.promise.timeout_at != crate::NEVER {
            shared.wake.notify_one();
        }
        if let Param::Call { func: existing, .. } = &created.promise.param
            && existing != f.name()
        {
            return Err(Error::Runtime(format!(
                "invocation {id} exists as a call of {existing:?}, not of {:?}",
                f.name()
            )));
        }
        if let Some(task) = created.acquired {
            let fence = Fence {
                task: task.id.clone(),
                version: task.version,
            };
            crate::worker::spawn(
                shared.clone(),
                fence,
                created.promise,
                Vec::new(),
                func.clone(),
                true,
            );
        }
        Ok(Handle::stored(id.to_owned(), shared.store.clone()))
    }

    /// Reads a promise without waiting: its state, and its value once settled.
    pub async fn get(&self, id: &str) -> Result<Option<Promise>> {
        Ok(self.shared.store.get(id).await?)
    }

    /// Runs until [`Durable::shutdown`] is called on a clone, executing the tasks of
    /// this runtime's group meanwhile (which it does from the moment it is built).
    pub async fn serve(&self) -> Result<()> {
        let mut stopped = self.shared.stopped.subscribe();
        let _ = stopped.wait_for(|s| *s).await;
        Ok(())
    }

    /// Stops taking tasks and gives back the ones held, so that another worker takes
    /// them over at once.
    pub async fn shutdown(&self) -> Result<()> {
        self.life.background.abort();
        let running: Vec<_> = self
            .shared
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
            .collect();
        for (_, (task, fence)) in running {
            task.abort();
            // A release refused by the fence means it was no longer ours anyway.
            let _ = self
                .shared
                .store
                .release(
                    &fence,
                    Release::Retry {
                        delay: 0,
                        error: None,
                    },
                )
                .await;
        }
        self.shared.stopped.send_replace(true);
        Ok(())
    }
}

/// Ids of top-level invocations: not empty, and without `.` (child ids use it).
fn validate_id(id: &str) -> Result<()> {
    let reason = if id.is_empty() {
        "an id may not be empty"
    } else if id.contains('.') {
        "a top-level id may not contain '.', which separates child ids"
    } else if id.chars().any(char::is_control) {
        "an id may not contain control characters"
    } else {
        return Ok(());
    };
    Err(Error::InvalidId {
        id: id.to_owned(),
        reason,
    })
}

/// Configures a [`Durable`].
#[must_use]
pub struct Builder {
    store: Option<Arc<dyn Store>>,
    group: String,
    pid: Option<String>,
    registry: HashMap<String, Arc<dyn Erased>>,
    ttl: Duration,
    max_payload: usize,
    concurrency: usize,
    errors: Vec<String>,
}

impl std::fmt::Debug for Builder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Builder")
            .field("group", &self.group)
            .field("pid", &self.pid)
            .finish()
    }
}

impl Builder {
    /// The store (required). Several runtimes may share one.
    pub fn store(mut self, store: Arc<dyn Store>) -> Builder {
        self.store = Some(store);
        self
    }

    /// The worker group this runtime executes tasks of (default `default`).
    pub fn group(mut self, group: impl Into<String>) -> Builder {
        self.group = group.into();
        self
    }

    /// The stable name this worker routes by, kept across restarts (default: random).
    pub fn pid(mut self, pid: impl Into<String>) -> Builder {
        self.pid = Some(pid.into());
        self
    }

    /// Registers a function, so that tasks naming it can run here.
    pub fn register<F: Function>(mut self, f: F) -> Builder {
        let name = f.name().to_owned();
        if self.registry.insert(name.clone(), Arc::new(f)).is_some() {
            self.errors
                .push(format!("function {name:?} is registered twice"));
        }
        self
    }

    /// The lease of a held task (default 30 s); heartbeats renew it every third of it.
    pub fn lease(mut self, ttl: Duration) -> Builder {
        self.ttl = ttl;
        self
    }

    /// The largest encoded arguments or result (default [`DEFAULT_MAX_PAYLOAD`]).
    pub fn max_payload(mut self, bytes: usize) -> Builder {
        self.max_payload = bytes;
        self
    }

    /// How many tasks may execute at once (default 64).
    pub fn concurrency(mut self, tasks: usize) -> Builder {
        self.concurrency = tasks;
        self
    }

    /// Builds the runtime and starts it. Must be called within a tokio runtime.
    pub fn build(mut self) -> Result<Durable> {
        if self.store.is_none() {
            self.errors.push("no store: call Builder::store".into());
        }
        if self.ttl < Duration::from_millis(3) {
            self.errors
                .push(format!("the lease of {:?} is too short", self.ttl));
        }
        if self.concurrency == 0 {
            self.errors
                .push("a concurrency of 0 would never run anything".into());
        }
        if tokio::runtime::Handle::try_current().is_err() {
            self.errors
                .push("Builder::build must be called within a tokio runtime".into());
        }
        if !self.errors.is_empty() {
            return Err(Error::Runtime(format!(
                "cannot build the runtime: {}",
                self.errors.join("; ")
            )));
        }
        let pid = self
            .pid
            .unwrap_or_else(|| format!("{:08x}", crate::context::random() as u32));
        let process = format!("{pid}:{:016x}", crate::context::random());
        let shared = Arc::new(Shared {
            store: self.store.expect("checked above"),
            group: self.group,
            process,
            registry: self.registry,
            ttl: self.ttl.as_millis() as Millis,
            max_payload: self.max_payload,
            concurrency: self.concurrency,
            wake: Notify::new(),
            running: Mutex::new(HashMap::new()),
            stopped: watch::Sender::new(false),
        });
        let background = tokio::spawn(crate::worker::background(shared.clone())).abort_handle();
        Ok(Durable {
            life: Arc::new(Life {
                shared: shared.clone(),
                background,
            }),
            shared,
        })
    }
}
