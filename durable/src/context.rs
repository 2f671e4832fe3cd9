//! The [`Context`]: every durable operation a function body makes goes through it.

use std::collections::BTreeMap;
use std::future::{Future, IntoFuture};
use std::hash::{BuildHasher, Hasher};
use std::marker::PhantomData;
use std::panic::Location;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::future::BoxFuture;
use serde::Serialize;

use crate::execute::{Job, Outcome, Scope, outcome};
use crate::invocation::Invocation;
use crate::promise::{Millis, Param};
use crate::store::CreatePromise;
use crate::{Function, Handle, Result, Retry, codec};

/// The context of one execution of a durable function.
///
/// Each operation mints its child id, `{id}.{n}`, when it is called, counting from 1 in
/// program order. Operations take `&mut self` and the futures they return do not
/// borrow the context, so ids never depend on how concurrent futures are polled:
/// `let a = ctx.lfi(f, 1); let b = ctx.lfi(f, 2);` then awaiting both at once is fine,
/// while two branches that each use `ctx` do not compile. Concurrent work that itself
/// makes durable calls goes through [`Context::lfi`], whose child has its own context.
pub struct Context {
    inv: Arc<Invocation>,
    id: String,
    deadline: Millis,
    next: u32,
    pub(crate) scope: Arc<Scope>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("id", &self.id)
            .field("next", &self.next)
            .finish()
    }
}

impl Context {
    pub(crate) fn new(inv: Arc<Invocation>, id: String, deadline: Millis) -> Context {
        Context {
            inv,
            id,
            deadline,
            next: 0,
            scope: Arc::default(),
        }
    }

    /// The id of the promise this body settles.
    pub fn id(&self) -> &str {
        &self.id
    }

    fn mint(&mut self) -> String {
        self.next += 1;
        format!("{}.{}", self.id, self.next)
    }

    pub(crate) fn encode_result<T: Serialize>(&self, value: &T) -> Result<String> {
        match codec::encode(&self.id, "the result", value, self.inv.rt.max_payload) {
            Err(crate::Error::Codec { message, .. }) => {
                Err(self.inv.fail(crate::invocation::Fault::Platform(format!(
                    "the result of {} does not encode: {message}",
                    self.id
                ))))
            }
            other => other,
        }
    }

    /// Local function invocation: starts `f` as a child in this process and returns a
    /// [`Handle`] to await its result later.
    #[track_caller]
    pub fn lfi<F: Function>(&mut self, f: F, args: F::Args) -> Call<F, Invoke> {
        self.call(f, args)
    }

    /// Local function call: runs `f` as a child in this process and returns its result.
    #[track_caller]
    pub fn lfc<F: Function>(&mut self, f: F, args: F::Args) -> Call<F, Wait> {
        self.call(f, args)
    }

    #[track_caller]
    fn call<F: Function, M>(&mut self, f: F, args: F::Args) -> Call<F, M> {
        let id = self.mint();
        let args = codec::encode(&id, "the arguments", &args, self.inv.rt.max_payload);
        Call {
            inv: self.inv.clone(),
            scope: self.scope.clone(),
            id,
            deadline: self.deadline,
            f,
            args,
            retry: None,
            timeout: None,
            version: None,
            tags: BTreeMap::new(),
            location: Location::caller(),
            mode: PhantomData,
        }
    }

    /// The store's time, recorded once and replayed.
    #[track_caller]
    pub fn now(&mut self) -> impl Future<Output = Result<SystemTime>> + Send + 'static {
        let record = self.record("now");
        async move {
            let ms: u64 = record
                .run(|inv| async move { inv.rt.store.now().await.map_err(|e| inv.store_fault(e)) })
                .await?;
            Ok(UNIX_EPOCH + Duration::from_millis(ms))
        }
    }

    /// A random number, recorded once and replayed.
    #[track_caller]
    pub fn random(&mut self) -> impl Future<Output = Result<u64>> + Send + 'static {
        let record = self.record("random");
        async move { record.run(|_| async { Ok(random()) }).await }
    }

    /// A random (version 4) UUID, recorded once and replayed.
    #[track_caller]
    pub fn uuid(&mut self) -> impl Future<Output = Result<String>> + Send + 'static {
        let record = self.record("uuid");
        async move {
            record
                .run(|_| async {
                    let (hi, lo) = (random(), random());
                    let hi = (hi & !0xf000) | 0x4000; // version 4
                    let lo = (lo & !(0xc << 60)) | (0x8 << 60); // RFC 4122 variant
                    Ok(format!(
                        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
                        hi >> 32,
                        (hi >> 16) & 0xffff,
                        hi & 0xffff,
                        lo >> 48,
                        lo & 0xffff_ffff_ffff
                    ))
                })
                .await
        }
    }

    #[track_caller]
    fn record(&mut self, what: &'static str) -> Record {
        Record {
            inv: self.inv.clone(),
            id: self.mint(),
            what,
            location: Location::caller(),
        }
    }
}

/// A fresh random number from the standard library's randomly keyed hasher.
pub(crate) fn random() -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64),
    );
    h.finish()
}

/// A value recorded once: `now`, `random`, `uuid`.
struct Record {
    inv: Arc<Invocation>,
    id: String,
    what: &'static str,
    location: &'static Location<'static>,
}

impl Record {
    async fn run<T, Fut>(self, make: impl FnOnce(Arc<Invocation>) -> Fut) -> Result<T>
    where
        T: Serialize + serde::de::DeserializeOwned,
        Fut: Future<Output = Result<T>>,
    {
        let param = Param::Record {
            what: self.what.to_owned(),
        };
        if let Some(p) = self.inv.replayed(&self.id, &param, self.location)? {
            return codec::decode(&self.id, &outcome(p)?);
        }
        let value = make(self.inv.clone()).await?;
        let mut req = CreatePromise::new(self.id.clone(), param.clone());
        req.resolved = Some(codec::encode(&self.id, "the value", &value, usize::MAX)?);
        let created = self.inv.create(req).await?;
        self.inv
            .verify(&self.id, &created.promise.param, &param, self.location)?;
        codec::decode(&self.id, &outcome(&created.promise)?)
    }
}

/// Marks a [`Call`] that yields a [`Handle`].
#[derive(Debug)]
pub struct Invoke;

/// Marks a [`Call`] that yields the result.
#[derive(Debug)]
pub struct Wait;

/// A durable call, ready to be configured and awaited.
///
/// Its id was minted when it was made. Awaiting it creates the child promise (or, on
/// replay, finds it settled) and starts the body.
#[must_use = "a call does nothing until it is awaited"]
pub struct Call<F: Function, M> {
    inv: Arc<Invocation>,
    scope: Arc<Scope>,
    id: String,
    deadline: Millis,
    f: F,
    args: Result<String>,
    retry: Option<Retry>,
    timeout: Option<Duration>,
    version: Option<u32>,
    tags: BTreeMap<String, String>,
    location: &'static Location<'static>,
    mode: PhantomData<M>,
}

impl<F: Function, M> std::fmt::Debug for Call<F, M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Call")
            .field("id", &self.id)
            .field("function", &self.f.name())
            .finish()
    }
}

impl<F: Function, M> Call<F, M> {
    /// Uses this id instead of the minted one (the count still advances).
    pub fn id(mut self, id: impl Into<String>) -> Self {
        self.id = id.into();
        self
    }

    /// Retries with this policy instead of the function's.
    pub fn retry(mut self, retry: Retry) -> Self {
        self.retry = Some(retry);
        self
    }

    /// Times out after this long (capped by the caller's own deadline).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Records this version instead of the function's.
    pub fn version(mut self, version: u32) -> Self {
        self.version = Some(version);
        self
    }

    /// Adds tags to the child promise.
    pub fn tags<K: Into<String>, V: Into<String>>(
        mut self,
        tags: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        self.tags
            .extend(tags.into_iter().map(|(k, v)| (k.into(), v.into())));
        self
    }

    /// Creates the child (or finds it recorded); a job to run if it is not settled.
    async fn begin(self) -> Result<(String, std::result::Result<Outcome, Job>)> {
        let args = self.args?;
        let version = self.version.unwrap_or_else(|| self.f.version());
        let param = Param::call(self.f.name(), version, args.clone());
        if let Some(p) = self.inv.replayed(&self.id, &param, self.location)? {
            return Ok((self.id, Ok(outcome(p))));
        }
        let timeout = self.timeout.or_else(|| self.f.timeout());
        let mut req = CreatePromise::new(self.id.clone(), param.clone());
        req.timeout = timeout.map(|t| t.as_millis() as Millis);
        req.deadline_cap = self.deadline;
        req.tags = self.tags;
        let created = self.inv.create(req).await?;
        self.inv
            .verify(&self.id, &created.promise.param, &param, self.location)?;
        if created.promise.state.is_settled() {
            return Ok((self.id, Ok(outcome(&created.promise))));
        }
        let job = Job {
            inv: self.inv,
            id: self.id.clone(),
            deadline: created.promise.timeout_at,
            retry: self.retry.unwrap_or_else(|| self.f.retry()),
            func: Arc::new(self.f),
            args,
            fresh: created.new,
        };
        Ok((self.id, Err(job)))
    }
}

impl<F: Function> IntoFuture for Call<F, Invoke> {
    type Output = Result<Handle<F::Output>>;
    type IntoFuture = BoxFuture<'static, Self::Output>;

    fn into_future(self) -> Self::IntoFuture {
        let scope = self.scope.clone();
        Box::pin(async move {
            let (id, started) = self.begin().await?;
            Ok(match started {
                Ok(outcome) => Handle::ready(id, outcome),
                Err(job) => {
                    let (tx, rx) = tokio::sync::oneshot::channel();
                    let inv = job.inv.clone();
                    scope.spawn(async move {
                        if let Some(outcome) = job.run().await {
                            let _ = tx.send(outcome);
                        }
                    });
                    Handle::local(id, rx, inv)
                }
            })
        })
    }
}

impl<F: Function> IntoFuture for Call<F, Wait> {
    type Output = Result<F::Output>;
    type IntoFuture = BoxFuture<'static, Self::Output>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(async move {
            let (id, started) = self.begin().await?;
            let outcome = match started {
                Ok(outcome) => outcome,
                Err(job) => {
                    let inv = job.inv.clone();
                    match job.run().await {
                        Some(outcome) => outcome,
                        None => Err(inv
                            .check()
                            .err()
                            .unwrap_or_else(|| crate::Error::Runtime("stopped".into()))),
                    }
                }
            };
            codec::decode(&id, &outcome?)
        })
    }
}
