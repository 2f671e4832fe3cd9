//! The PostgreSQL store: workers on many machines, with no server of our own.
//!
//! Each step is one transaction: it locks the rows the step reads (tasks first, then
//! promises, then the tasks suspended on those promises), runs the same state machine
//! as the in-process stores over them, writes back what changed, and notifies. Claims
//! pick ready tasks with `FOR UPDATE SKIP LOCKED`; `LISTEN/NOTIFY` wakes waiters and
//! pollers at once, with a slow poll as the fallback. Time is the database's clock.

mod batch;
mod pool;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::watch;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Config, Statement};

use self::batch::{Batches, Job};
use self::pool::{Backends, Conn, Pool, quote_ident, unreachable};
use super::cold::MemoryCold;
use super::flow::{Admission, Bucket};
use super::state::{Core, Start};
use super::waiters::{Ready, Waiters};
use super::{
    Acquired, Claim, Clock, CreatePromise, Created, Cursor, FORGET_WORKERS, Invocation, Invocations, Listing, Page,
    Purge, Release, Search, SettlePromise, Tick, Worker,
};
use crate::promise::{Fence, Millis, NEVER, Promise, State, Task, TaskState, is_invocation};
use crate::{Limit, LimitState, Schedule, StoreError};

const SCHEMA_VERSION: i32 = 9;

// The statements of the hot paths, prepared once per connection.
/// The database's clock, in milliseconds since the epoch.
macro_rules! clock {
    () => {
        "(extract(epoch FROM clock_timestamp()) * 1000)::bigint"
    };
}
const CLOCK: &str = concat!("SELECT ", clock!());
// A create cannot lock a row that does not exist yet: it locks the id instead, so that
// of two racing creates the second waits, then reads the row the first committed.
const LOCK_NEW: &str =
    "SELECT pg_advisory_xact_lock(hashtext($1), hashtext(id)) FROM unnest($2::text[]) AS u(id) ORDER BY id";
const LOCK_TASKS: &str = "SELECT data FROM tasks WHERE id = ANY($1) ORDER BY id FOR UPDATE";
const LOCK_PROMISES: &str = "SELECT data FROM promises WHERE id = ANY($1) ORDER BY id FOR UPDATE";
const LOCK_WAITING: &str = "SELECT data FROM tasks WHERE state = 'suspended' AND awaiting && $1 AND NOT (id = ANY($2))
     ORDER BY id FOR UPDATE";
/// The promise is checked by a subquery, a primary-key lookup for each task the index
/// yields: a join would let the generic plan scan every pending promise per task.
const READY: &str = "SELECT t.id FROM tasks t
     WHERE t.state = 'pending' AND t.grp = $1 AND t.ready_at <= $2
       AND (t.pid = $3 OR (NOT t.uni AND (t.pid IS NULL OR t.prefer_until <= $2)))
       AND (SELECT p.state = 'pending' AND p.timeout_at > $2 FROM promises p WHERE p.id = t.id)
       AND (cardinality($5::text[]) = 0 OR t.func = ANY($5::text[]))
       AND NOT EXISTS (SELECT 1 FROM unnest($6::text[], $7::text[]) AS c(f, k)
         WHERE (c.f IS NULL OR split_part(t.func, '@', 1) = c.f) AND (c.k IS NULL OR coalesce(t.key, '') = c.k))
     ORDER BY t.priority DESC, t.ready_at, t.id LIMIT $4 FOR UPDATE SKIP LOCKED";
/// Waits for a row another step holds (a `run` attaching to the id, say) rather than
/// skipping it: a worker resumes its group's halted tasks once, as it starts.
const HALTED: &str = "SELECT id FROM tasks WHERE state = 'halted' AND grp = $1 ORDER BY id FOR UPDATE";
const PREDECESSORS: &str = "SELECT id FROM tasks WHERE state = 'acquired' AND grp = $1
       AND substring(process FROM '^(.*):[^:]*$') = $2 AND process <> $3 FOR UPDATE SKIP LOCKED";
const DUE_PROMISES: &str = "SELECT id FROM promises WHERE state = 'pending' AND timeout_at <= $1
     ORDER BY id LIMIT 1000 FOR UPDATE SKIP LOCKED";
const DUE_TASKS: &str = "SELECT id FROM tasks WHERE state = 'acquired' AND lease_until <= $1
     ORDER BY id LIMIT 1000 FOR UPDATE SKIP LOCKED";
const UPSERT_PROMISES: &str = "INSERT INTO promises
       (id, state, timer, timeout_at, tags, data, settled_at, invoked_at, parent, root)
     SELECT id, state, timer, timeout_at, tags::jsonb, data, settled_at, invoked_at, parent, root
     FROM unnest($1::text[], $2::text[], $3::bool[], $4::int8[], $5::text[], $6::text[], $7::int8[], $8::int8[],
                 $9::text[], $10::text[])
       AS u(id, state, timer, timeout_at, tags, data, settled_at, invoked_at, parent, root)
     ON CONFLICT (id) DO UPDATE SET state = EXCLUDED.state, timeout_at = EXCLUDED.timeout_at, data = EXCLUDED.data,
       settled_at = EXCLUDED.settled_at";
/// The function key of the call promise `p` stands for (`Param::function_key`): its
/// name, and `@version` after version 1.
macro_rules! function_key {
    () => {
        "CASE WHEN coalesce((p.data::jsonb #>> '{param,version}')::int, 1) = 1 THEN p.data::jsonb #>> '{param,func}'
         ELSE (p.data::jsonb #>> '{param,func}') || '@' || (p.data::jsonb #>> '{param,version}') END"
    };
}
const UPSERT_TASKS: &str = concat!(
    "INSERT INTO tasks
       (id, state, grp, pid, uni, prefer_until, ready_at, lease_until, process, version, awaiting, data, func, priority, key,
        debounce)
     SELECT id, state, grp, pid, uni, prefer_until, ready_at, lease_until, process, version,
       ARRAY(SELECT jsonb_array_elements_text(data::jsonb -> 'awaiting')), data,
       (SELECT ",
    function_key!(),
    " FROM promises p WHERE p.id = u.id), priority, key, data::jsonb ->> 'debounce'
     FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bool[], $6::int8[], $7::int8[], $8::int8[],
                 $9::text[], $10::int8[], $11::text[], $12::int4[], $13::text[])
       AS u(id, state, grp, pid, uni, prefer_until, ready_at, lease_until, process, version, data, priority, key)
     ON CONFLICT (id) DO UPDATE SET state = EXCLUDED.state, ready_at = EXCLUDED.ready_at,
       lease_until = EXCLUDED.lease_until, process = EXCLUDED.process, version = EXCLUDED.version,
       awaiting = EXCLUDED.awaiting, data = EXCLUDED.data, prefer_until = EXCLUDED.prefer_until,
       debounce = EXCLUDED.debounce"
);
const NOTIFY_SETTLED: &str = "SELECT pg_notify($1, 's:' || id) FROM unnest($2::text[]) AS id";
const NOTIFY_READY: &str = "SELECT pg_notify(c, 'r') FROM unnest($1::text[]) AS c";
const GET_TASK: &str = "SELECT data FROM tasks WHERE id = $1";
const GET_TASKS: &str = "SELECT data FROM tasks WHERE id = ANY($1)";
/// Promises read at once, each with the time it was read at and its task's state:
/// one statement for every `get` and `wait` of a batch.
const LOOK: &str = concat!(
    "SELECT p.id, p.data, ",
    clock!(),
    ", t.state FROM promises p LEFT JOIN tasks t ON t.id = p.id WHERE p.id = ANY($1)"
);
/// The state filter of a search or listing: `$4` a state's name or null, `$5` now (a
/// pending promise past its deadline reads as timed out, a timer as resolved).
macro_rules! state_filter {
    () => {
        "CASE
     WHEN $4::text IS NULL THEN true
     WHEN $4 = 'pending' THEN state = 'pending' AND timeout_at > $5
     WHEN $4 = 'resolved' THEN state = 'resolved' OR (state = 'pending' AND timeout_at <= $5 AND timer)
     WHEN $4 = 'rejected' THEN state LIKE 'rejected%' OR (state = 'pending' AND timeout_at <= $5 AND NOT timer)
     WHEN $4 = 'rejected_timedout' THEN state = $4 OR (state = 'pending' AND timeout_at <= $5 AND NOT timer)
     ELSE state = $4 END"
    };
}
const SEARCH: &str = concat!(
    "SELECT data FROM promises
     WHERE id >= ($1::text COLLATE \"C\") AND id > ($2::text COLLATE \"C\")
     AND left(id, length($1)) = $1
     AND tags @> ($3::text)::jsonb
     AND ($7::text IS NULL OR root = $7)
     AND ",
    state_filter!(),
    " ORDER BY id LIMIT $6"
);
/// A family's promises after `$2`, in id order: the search by root alone, which the
/// planner reads off `promises_root` in order and stops at the limit (the filters of
/// [`SEARCH`], even when they match everything, hide that from its estimates).
const SEARCH_FAMILY: &str =
    "SELECT data FROM promises WHERE root = $1 AND id > ($2::text COLLATE \"C\") ORDER BY id LIMIT $3";
/// Invocations newest first, from those created at or before `$1` (at `$1`, with ids
/// after `$2`), back to `$7`, of function `$8` (or any).
const INVOCATIONS: &str = concat!(
    "SELECT data, (SELECT t.data FROM tasks t WHERE t.id = p.id) FROM promises p
     WHERE invoked_at IS NOT NULL AND invoked_at <= $1
     AND (invoked_at < $1 OR id > ($2::text COLLATE \"C\"))
     AND invoked_at >= $7
     AND ($8::text IS NULL OR data::jsonb #>> '{param,func}' = $8)
     AND tags @> ($3::text)::jsonb
     AND ",
    state_filter!(),
    " ORDER BY invoked_at DESC, id LIMIT $6"
);
const PRELOAD: &str = "SELECT r.id, p.data FROM unnest($1::text[]) AS r(id) JOIN promises p
     ON p.id >= ((r.id || '.') COLLATE \"C\") AND p.id < ((r.id || '/') COLLATE \"C\")
     WHERE p.state <> 'pending' OR p.timeout_at <= $2";
const NEXT_DEADLINE: &str = "SELECT least(
     (SELECT min(timeout_at) FROM promises WHERE state = 'pending'),
     (SELECT min(lease_until) FROM tasks WHERE state = 'acquired'),
     (SELECT min(ready_at) FROM tasks WHERE state = 'pending' AND ready_at > $1),
     (SELECT min(prefer_until) FROM tasks WHERE state = 'pending' AND pid IS NOT NULL AND NOT uni AND prefer_until > $1),
     (SELECT min(open_at) FROM limit_buckets WHERE open_at > $1),
     (SELECT min(due) FROM schedules WHERE due > $1)),
     (SELECT min(due) FROM schedules)";

const MIGRATION_1: &str = r#"
CREATE TABLE IF NOT EXISTS promises (
    id text COLLATE "C" PRIMARY KEY,
    state text NOT NULL,
    timer boolean NOT NULL,
    timeout_at bigint NOT NULL,
    tags jsonb NOT NULL,
    data text NOT NULL
);
CREATE INDEX IF NOT EXISTS promises_deadline ON promises (timeout_at) WHERE state = 'pending';
CREATE TABLE IF NOT EXISTS tasks (
    id text COLLATE "C" PRIMARY KEY,
    state text NOT NULL,
    grp text NOT NULL,
    pid text,
    uni boolean NOT NULL,
    prefer_until bigint NOT NULL,
    ready_at bigint NOT NULL,
    lease_until bigint NOT NULL,
    process text,
    version bigint NOT NULL,
    awaiting text[] NOT NULL,
    data text NOT NULL
);
CREATE INDEX IF NOT EXISTS tasks_ready ON tasks (grp, ready_at, id) WHERE state = 'pending';
CREATE INDEX IF NOT EXISTS tasks_leases ON tasks (lease_until) WHERE state = 'acquired';
CREATE INDEX IF NOT EXISTS tasks_halted ON tasks (grp) WHERE state = 'halted';
CREATE INDEX IF NOT EXISTS tasks_awaiting ON tasks USING gin (awaiting) WHERE state = 'suspended';
"#;

/// Version 2: the settle time, and an index of finished roots by it, for retention.
const MIGRATION_2: &str = r#"
ALTER TABLE promises ADD COLUMN IF NOT EXISTS settled_at bigint;
UPDATE promises SET settled_at = (data::jsonb ->> 'settled_at')::bigint WHERE state <> 'pending';
CREATE INDEX IF NOT EXISTS promises_finished ON promises (settled_at)
    WHERE settled_at IS NOT NULL AND (strpos(id, '.') = 0 OR tags ? 'durable:detached');
"#;

/// Version 3: the workers that announced themselves, and each task's function (a
/// claim takes only tasks of the worker's functions).
const MIGRATION_3: &str = r#"
ALTER TABLE tasks ADD COLUMN IF NOT EXISTS func text;
UPDATE tasks t SET func = p.data::jsonb #>> '{param,func}' FROM promises p WHERE p.id = t.id AND t.func IS NULL;
CREATE TABLE IF NOT EXISTS workers (
    grp text NOT NULL,
    pid text NOT NULL,
    process text NOT NULL,
    functions text[] NOT NULL,
    live_until bigint NOT NULL,
    PRIMARY KEY (grp, pid)
);
"#;

/// Version 4: the creation time of each invocation (a root that calls a function), and
/// an index of invocations by it, newest first, for listings.
const MIGRATION_4: &str = r#"
ALTER TABLE promises ADD COLUMN IF NOT EXISTS invoked_at bigint;
UPDATE promises SET invoked_at = (data::jsonb ->> 'created_at')::bigint
    WHERE (strpos(id, '.') = 0 OR tags ? 'durable:detached') AND data::jsonb #>> '{param,kind}' = 'call';
CREATE INDEX IF NOT EXISTS promises_invocations ON promises (invoked_at DESC, id) WHERE invoked_at IS NOT NULL;
"#;

/// Version 5: a task's function names its version after version 1 (`name@2`), so
/// that a claim takes it only for a worker that registers that version.
const MIGRATION_5: &str = concat!(
    "UPDATE tasks t SET func = ",
    function_key!(),
    " FROM promises p WHERE p.id = t.id AND coalesce((p.data::jsonb #>> '{param,version}')::int, 1) <> 1"
);

/// Version 6: each promise's creator and family, indexed by family; finished
/// families by the settle time of their top-level promise. The rows there are get
/// theirs from [`crate::store::upgrade::relate`], after this. A process of an earlier
/// version still running during a rolling deploy writes rows without them (and, from
/// versions before 5, without a task's function, a settle time or a listing time):
/// the triggers fill in, by the same rules, whatever such a writer leaves out.
const MIGRATION_6: &str = concat!(
    r#"
ALTER TABLE promises ADD COLUMN IF NOT EXISTS parent text COLLATE "C";
ALTER TABLE promises ADD COLUMN IF NOT EXISTS root text COLLATE "C";
DROP INDEX IF EXISTS promises_finished;
CREATE INDEX IF NOT EXISTS promises_top_finished ON promises (settled_at) WHERE settled_at IS NOT NULL AND parent IS NULL;
CREATE INDEX IF NOT EXISTS promises_root ON promises (root, id);
CREATE OR REPLACE FUNCTION durable_relate() RETURNS trigger LANGUAGE plpgsql SET search_path FROM CURRENT AS $body$
DECLARE
    creator text;
    family text;
BEGIN
    IF NEW.root IS NULL THEN
        creator := coalesce(NEW.tags ->> 'durable:parent',
            CASE WHEN strpos(NEW.id, '.') > 0 THEN regexp_replace(NEW.id, '(\.r[0-9]+)?\.[^.]*$', '') END);
        IF creator IS NOT NULL THEN
            SELECT p.root INTO family FROM promises p WHERE p.id = creator;
        END IF;
        IF family IS NULL THEN
            creator := NULL;
            family := NEW.id;
        END IF;
        NEW.parent := creator;
        NEW.root := family;
        NEW.data := jsonb_set(jsonb_set(NEW.data::jsonb, '{parent}', coalesce(to_jsonb(creator), 'null'::jsonb)),
            '{root}', to_jsonb(family))::text;
        IF NEW.settled_at IS NULL AND NEW.state <> 'pending' THEN
            NEW.settled_at := (NEW.data::jsonb ->> 'settled_at')::bigint;
        END IF;
        NEW.invoked_at := CASE
            WHEN NEW.data::jsonb #>> '{param,kind}' = 'call' AND (creator IS NULL OR NEW.tags ? 'durable:detached'
                OR left(NEW.id, length(creator) + 1) <> creator || '.')
            THEN (NEW.data::jsonb ->> 'created_at')::bigint END;
    END IF;
    RETURN NEW;
END
$body$;
DROP TRIGGER IF EXISTS durable_relate ON promises;
CREATE TRIGGER durable_relate BEFORE INSERT ON promises FOR EACH ROW EXECUTE FUNCTION durable_relate();
CREATE OR REPLACE FUNCTION durable_task_function() RETURNS trigger LANGUAGE plpgsql SET search_path FROM CURRENT
AS $body$
BEGIN
    IF NEW.func IS NULL THEN
        SELECT "#,
    function_key!(),
    r#" INTO NEW.func FROM promises p WHERE p.id = NEW.id;
    END IF;
    RETURN NEW;
END
$body$;
DROP TRIGGER IF EXISTS durable_task_function ON tasks;
CREATE TRIGGER durable_task_function BEFORE INSERT ON tasks FOR EACH ROW EXECUTE FUNCTION durable_task_function();
"#
);

/// Version 7: limits on tasks and their rates' state; each task's key and priority,
/// and the ready index by priority.
const MIGRATION_7: &str = r#"
ALTER TABLE tasks ADD COLUMN IF NOT EXISTS priority integer NOT NULL DEFAULT 0;
ALTER TABLE tasks ADD COLUMN IF NOT EXISTS key text;
CREATE INDEX IF NOT EXISTS tasks_ready_priority ON tasks (grp, priority DESC, ready_at, id) WHERE state = 'pending';
DROP INDEX IF EXISTS tasks_ready;
CREATE TABLE IF NOT EXISTS limits (
    name text COLLATE "C" PRIMARY KEY,
    grp text,
    func text,
    data text NOT NULL
);
CREATE TABLE IF NOT EXISTS limit_buckets (
    lim text COLLATE "C" NOT NULL,
    key text COLLATE "C" NOT NULL,
    tat bigint NOT NULL,
    open_at bigint NOT NULL,
    PRIMARY KEY (lim, key)
);
CREATE INDEX IF NOT EXISTS limit_buckets_tat ON limit_buckets (tat);
CREATE INDEX IF NOT EXISTS limit_buckets_open ON limit_buckets (open_at);
"#;

/// Version 8: schedules, and the index of tasks by the time they become ready.
const MIGRATION_8: &str = r#"
CREATE INDEX IF NOT EXISTS tasks_delayed ON tasks (ready_at) WHERE state = 'pending';
CREATE TABLE IF NOT EXISTS schedules (
    id text COLLATE "C" PRIMARY KEY,
    due bigint,
    data text NOT NULL
);
CREATE INDEX IF NOT EXISTS schedules_due ON schedules (due) WHERE due IS NOT NULL;
"#;

// Schedules: written by steps, as the state machine changed them.
const LOCK_SCHEDULE: &str = "SELECT data FROM schedules WHERE id = ANY($1) ORDER BY id FOR UPDATE";
const UPSERT_SCHEDULES: &str = "INSERT INTO schedules (id, due, data)
     SELECT * FROM unnest($1::text[], $2::int8[], $3::text[])
     ON CONFLICT (id) DO UPDATE SET due = EXCLUDED.due, data = EXCLUDED.data";
const DELETE_SCHEDULES: &str = "DELETE FROM schedules WHERE id = ANY($1)";
const GET_SCHEDULE: &str = "SELECT data FROM schedules WHERE id = $1";
const ALL_SCHEDULES: &str = "SELECT data FROM schedules ORDER BY id";
const DUE_SCHEDULES: &str = "SELECT data FROM schedules WHERE due <= $1 ORDER BY due, id LIMIT $2";

/// Version 9: the debounce key of a debounced call.
const MIGRATION_9: &str = r#"
ALTER TABLE tasks ADD COLUMN IF NOT EXISTS debounce text;
CREATE INDEX IF NOT EXISTS tasks_debounce ON tasks (debounce)
    WHERE state = 'pending' AND version = 0 AND debounce IS NOT NULL;
"#;

/// The debounced calls of key `$1` take turns, by a transaction-scoped advisory
/// lock on the key (in store `$2`): each finds the one the last left waiting.
const LOCK_DEBOUNCE: &str = "SELECT pg_advisory_xact_lock(hashtext($2), hashtext('debounce:' || $1))";
/// The debounced call of key `$1` waiting to start.
const DEBOUNCED: &str = "SELECT id FROM tasks WHERE debounce = $1 AND state = 'pending' AND version = 0";

/// The groups with a task that became ready after `$1`, at or before `$2`.
const BECAME_READY: &str =
    "SELECT DISTINCT grp FROM tasks WHERE state = 'pending' AND ready_at > $1 AND ready_at <= $2";

// Limits. A claim by group `$1` locks the limits of its group, so that claims that
// could exceed one take turns, and reads, in the same round trip (the statements run
// in order, each after the locks before it), the acquired tasks they cover and their
// rates' state. With no limit at all, the scan of acquired tasks is skipped. The lock
// is an advisory one, by the limit's name: a row lock would write the row, and make
// every claim, even one that takes nothing, a transaction that waits for a WAL flush.
const LIMITS: &str = "SELECT data FROM limits ORDER BY name";
const LOCK_LIMITS: &str = "SELECT l.data, pg_advisory_xact_lock(hashtext($2), hashtext('limit:' || l.name))
     FROM (SELECT name, data FROM limits WHERE grp IS NULL OR grp = $1 ORDER BY name) AS l";
const EXECUTING: &str = "SELECT t.data, t.func FROM tasks t
     WHERE EXISTS (SELECT 1 FROM limits) AND t.state = 'acquired'
       AND EXISTS (SELECT 1 FROM limits l WHERE (l.grp IS NULL OR (l.grp = $1 AND t.grp = $1))
         AND (l.func IS NULL OR split_part(t.func, '@', 1) = l.func))";
const BUCKETS: &str = "SELECT lim, key, tat, open_at FROM limit_buckets
     WHERE lim IN (SELECT name FROM limits WHERE grp IS NULL OR grp = $1)";
const UPSERT_BUCKETS: &str = "INSERT INTO limit_buckets (lim, key, tat, open_at)
     SELECT * FROM unnest($1::text[], $2::text[], $3::int8[], $4::int8[])
     ON CONFLICT (lim, key) DO UPDATE SET tat = EXCLUDED.tat, open_at = EXCLUDED.open_at";
const DELETE_BUCKETS: &str = "DELETE FROM limit_buckets b USING unnest($1::text[], $2::text[]) AS u(lim, key) WHERE b.lim = u.lim AND b.key = u.key";
const SPENT_BUCKETS: &str = "DELETE FROM limit_buckets WHERE tat <= $1";
const INSERT_LIMIT: &str =
    "INSERT INTO limits (name, grp, func, data) VALUES ($1, $2, $3, $4) ON CONFLICT (name) DO NOTHING";
const REPLACE_LIMIT: &str = "INSERT INTO limits (name, grp, func, data) VALUES ($1, $2, $3, $4)
     ON CONFLICT (name) DO UPDATE SET grp = EXCLUDED.grp, func = EXCLUDED.func, data = EXCLUDED.data";
const GET_LIMIT: &str = "SELECT data FROM limits WHERE name = $1";
const REMOVE_LIMIT: &str = "WITH gone AS (DELETE FROM limits WHERE name = $1 RETURNING name),
     spent AS (DELETE FROM limit_buckets WHERE lim = $1) SELECT count(*) FROM gone";
/// The tasks a limit of function `$1` (or any) and group `$2` (or any) covers: those
/// executing, those waiting, and the oldest ready time of those.
const LIMIT_USE: &str = "SELECT
       count(*) FILTER (WHERE state = 'acquired'),
       count(*) FILTER (WHERE state = 'pending'),
       min(ready_at) FILTER (WHERE state = 'pending')
     FROM tasks t WHERE state IN ('acquired', 'pending')
       AND ($1::text IS NULL OR split_part(t.func, '@', 1) = $1) AND ($2::text IS NULL OR t.grp = $2)";
/// The groups with a task waiting, to be told that a limit changed.
const WAITING_GROUPS: &str = "SELECT DISTINCT grp FROM tasks WHERE state = 'pending'";

const ANNOUNCE: &str = "INSERT INTO workers (grp, pid, process, functions, live_until) VALUES ($1, $2, $3, $4, $5)
     ON CONFLICT (grp, pid) DO UPDATE
     SET process = excluded.process, functions = excluded.functions, live_until = excluded.live_until";
const FORGET: &str = "DELETE FROM workers WHERE live_until < $1";
const WORKERS: &str =
    "SELECT grp, pid, process, functions, live_until FROM workers WHERE live_until >= $1 ORDER BY grp, pid";

// Purging: finished top-level promises (the predicate of `promises_top_finished`),
// what holds a family back (a promise pending, or settled too recently), and the rest
// of the family, a bounded batch at a time.
const PURGE_ROOTS: &str = "SELECT id FROM promises
     WHERE settled_at IS NOT NULL AND parent IS NULL AND settled_at < $1 AND NOT (id = ANY($2))
     ORDER BY settled_at LIMIT $3 FOR UPDATE SKIP LOCKED";
const PURGE_ROOT: &str = "SELECT data FROM promises WHERE id = $1 FOR UPDATE";
const PURGE_HELD: &str = "SELECT r.id FROM unnest($1::text[]) AS r(id) WHERE EXISTS (
       SELECT 1 FROM promises p WHERE p.root = r.id AND (p.state = 'pending' OR p.settled_at >= $2))";
const PURGE_CHILDREN: &str = "WITH doomed AS (
       SELECT p.id FROM promises p WHERE p.root = ANY($1) AND p.id <> p.root
       ORDER BY p.id LIMIT $2 FOR UPDATE OF p),
     gone AS (DELETE FROM promises p USING doomed d WHERE p.id = d.id RETURNING p.id),
     tasks_gone AS (DELETE FROM tasks t USING gone g WHERE t.id = g.id)
     SELECT count(*) FROM gone";
const PURGE_TOPS: &str = "WITH gone AS (DELETE FROM promises WHERE id = ANY($1) RETURNING id),
     tasks_gone AS (DELETE FROM tasks t USING gone g WHERE t.id = g.id)
     SELECT count(*) FROM gone";
/// The most rows one purge transaction deletes.
const PURGE_BATCH: i64 = 1000;

/// How long a waiter trusts notifications before it looks for itself.
const POLL: Duration = Duration::from_secs(5);

/// A store in PostgreSQL, shared by processes on many machines.
///
/// ```no_run
/// # async fn f() -> Result<(), durable::StoreError> {
/// let store = durable::store::PostgresStore::connect("postgres://postgres@127.0.0.1:5432/test").await?;
/// # let _ = store; Ok(()) }
/// ```
#[derive(Debug)]
pub struct PostgresStore {
    /// What its steps use, shared with the transactions it runs: a transaction
    /// carries the steps of other callers too, and finishes even if the caller
    /// whose turn ran it is dropped.
    core: Arc<Backend>,
    listener: tokio::task::AbortHandle,
}

/// The state of a [`PostgresStore`] its steps use.
#[derive(Debug)]
struct Backend {
    pool: Pool,
    channel: String,
    clock: Option<Arc<dyn Clock>>,
    waiters: Arc<Waiters>,
    ready: Arc<Ready>,
    /// Asks the listener to listen for a group's readiness too.
    listen_to: tokio::sync::mpsc::UnboundedSender<String>,
    /// Whether this process's last claim (or a step since) found a limit: then steps
    /// that may free a slot read the limits, to wake the workers one holds back.
    flow_seen: std::sync::atomic::AtomicBool,
    /// Steps on named rows, waiting to share a transaction.
    steps: Batches<Job>,
    /// Reads of one promise, waiting to share a query.
    reads: Batches<Read>,
    /// The store's time at this process's last tick: the tasks that became ready
    /// since are announced by the next.
    ticked: std::sync::atomic::AtomicU64,
}

impl Drop for PostgresStore {
    fn drop(&mut self) {
        self.listener.abort();
    }
}

/// Options for [`PostgresStore`].
#[derive(Debug)]
pub struct PostgresOptions {
    url: String,
    schema: String,
    pool_size: usize,
    clock: Option<Arc<dyn Clock>>,
    create: bool,
}

impl PostgresOptions {
    /// The database schema to keep the tables in (default `durable`); created if
    /// missing. Stores in different schemas are independent.
    pub fn schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = schema.into();
        self
    }

    /// The most connections to hold (default 8).
    pub fn pool_size(mut self, size: usize) -> Self {
        self.pool_size = size.max(1);
        self
    }

    /// Measures time on this clock instead of the database's: for tests on virtual
    /// time. Every process of one store must use the same clock.
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = Some(Arc::new(clock));
        self
    }

    /// Whether [`connect`](PostgresOptions::connect) creates the store where there is
    /// none (the default). `false`, for a tool that looks into a store a service
    /// made: a schema without one is an error that names the schema and database.
    pub fn create(mut self, create: bool) -> Self {
        self.create = create;
        self
    }

    /// Connects, creating (unless told not to) or upgrading the schema.
    pub async fn connect(self) -> Result<PostgresStore, StoreError> {
        let config: Config =
            self.url.parse().map_err(|e| StoreError::backend(format!("invalid PostgreSQL URL: {e}")))?;
        let database = config.get_dbname().unwrap_or("(the user's own)").to_owned();
        let pool = Pool::new(config, self.schema.clone(), self.pool_size);
        let mut conn = pool.get().await?;
        // Every start but a store's first finds it at this version: one round trip,
        // no lock, no transaction.
        if version(&conn).await != Some(SCHEMA_VERSION) {
            self.make(&mut conn, &database).await?;
        }
        drop(conn);
        let channel = settled_channel(&self.schema);
        let waiters = Arc::new(Waiters::default());
        let ready = Arc::new(Ready::default());
        let (listen_to, groups) = tokio::sync::mpsc::unbounded_channel();
        let listener = tokio::spawn(listen(
            pool_listener(&self.url, &self.schema)?,
            pool.backends(),
            channel.clone(),
            waiters.clone(),
            ready.clone(),
            groups,
        ))
        .abort_handle();
        let (flow_seen, steps, reads, ticked) = Default::default();
        let core = Arc::new(Backend {
            pool,
            channel,
            clock: self.clock,
            waiters,
            ready,
            listen_to,
            flow_seen,
            steps,
            reads,
            ticked,
        });
        Ok(PostgresStore { core, listener })
    }

    /// Creates the store, unless told not to, or upgrades it.
    async fn make(&self, conn: &mut tokio_postgres::Client, database: &str) -> Result<(), StoreError> {
        if !self.create {
            let made = "SELECT 1 FROM pg_catalog.pg_tables WHERE schemaname = $1 AND tablename = 'durable_schema'";
            if conn.query_opt(made, &[&self.schema]).await.map_err(db)?.is_none() {
                return Err(StoreError::NotFound {
                    what: "store",
                    id: format!("schema {:?} of database {database:?}", self.schema),
                });
            }
        }
        migrate(conn, &self.schema).await
    }
}

/// The schema's version as this connection's search path finds it; `None` where there
/// is no store (or the read failed: the caller then takes the long way).
async fn version(client: &tokio_postgres::Client) -> Option<i32> {
    let messages = client.simple_query("SELECT max(version) FROM durable_schema").await.ok()?;
    messages.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0).and_then(|v| v.parse().ok()),
        _ => None,
    })
}

fn pool_listener(url: &str, schema: &str) -> Result<Pool, StoreError> {
    let config: Config = url.parse().map_err(|e| StoreError::backend(format!("invalid PostgreSQL URL: {e}")))?;
    Ok(Pool::new(config, schema.to_owned(), 1))
}

/// Creates the schema, or upgrades it, under an advisory lock: safe when many
/// processes start at once.
async fn migrate(client: &mut tokio_postgres::Client, schema: &str) -> Result<(), StoreError> {
    let tx = client.transaction().await.map_err(db)?;
    tx.execute("SELECT pg_advisory_xact_lock(hashtext('durable:' || $1::text))", &[&schema]).await.map_err(db)?;
    tx.batch_execute(&format!(
        "CREATE SCHEMA IF NOT EXISTS {0}; SET LOCAL search_path TO {0};
         CREATE TABLE IF NOT EXISTS durable_schema (version integer NOT NULL);",
        quote_ident(schema)
    ))
    .await
    .map_err(db)?;
    let version: Option<i32> =
        tx.query_opt("SELECT max(version) FROM durable_schema", &[]).await.map_err(db)?.and_then(|row| row.get(0));
    match version {
        Some(v) if v > SCHEMA_VERSION => {
            return Err(StoreError::backend(format!(
                "the schema {schema:?} is at version {v}; this build knows up to {SCHEMA_VERSION}: upgrade durable"
            )));
        }
        Some(SCHEMA_VERSION) => {}
        version => {
            let version = version.unwrap_or(0);
            let migrations = [
                (1, MIGRATION_1),
                (2, MIGRATION_2),
                (3, MIGRATION_3),
                (4, MIGRATION_4),
                (5, MIGRATION_5),
                (6, MIGRATION_6),
                (7, MIGRATION_7),
                (8, MIGRATION_8),
                (9, MIGRATION_9),
            ];
            for (to, migration) in migrations {
                if version < to {
                    tx.batch_execute(migration).await.map_err(db)?;
                }
            }
            if version < 6 {
                relate_rows(&tx).await?;
            }
            tx.execute("DELETE FROM durable_schema", &[]).await.map_err(db)?;
            tx.execute("INSERT INTO durable_schema VALUES ($1)", &[&SCHEMA_VERSION]).await.map_err(db)?;
        }
    }
    tx.commit().await.map_err(db)
}

/// Gives every promise row without a family its creator and family
/// ([`crate::store::upgrade::relate`]), in the data and the columns, with the listing
/// column by the new rule. Reads every promise: once, in the upgrade to version 6.
async fn relate_rows(tx: &tokio_postgres::Transaction<'_>) -> Result<(), StoreError> {
    let rows = tx.query("SELECT data FROM promises", &[]).await.map_err(db)?;
    let mut all = std::collections::BTreeMap::new();
    for row in rows {
        let p = parse::<Promise>(row.get(0))?;
        all.insert(p.id.clone(), p);
    }
    super::upgrade::relate(&mut all);
    let (mut ids, mut parents, mut roots, mut data, mut invoked) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for p in all.values() {
        ids.push(p.id.clone());
        parents.push(p.parent.clone());
        roots.push(p.root.clone());
        data.push(serde_json::to_string(p).expect("a promise encodes"));
        invoked.push(is_invocation(p).then_some(p.created_at as i64));
    }
    tx.execute(
        "UPDATE promises p SET parent = u.parent, root = u.root, data = u.data, invoked_at = u.invoked
         FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::int8[]) AS u(id, parent, root, data, invoked)
         WHERE p.id = u.id",
        &[&ids, &parents, &roots, &data, &invoked],
    )
    .await
    .map_err(db)?;
    Ok(())
}

/// The channel settlements are notified on: `durable_{schema}`, or, for a schema too
/// long for that to be a channel name (at most 63 bytes), a digest of it.
fn settled_channel(schema: &str) -> String {
    let channel = format!("durable_{schema}");
    if channel.len() <= 63 {
        channel
    } else {
        format!("durable_schema_{:016x}", crate::promise::digest(schema.as_bytes()))
    }
}

/// The channel a group's readiness is notified on: one per group, so that a "ready"
/// wakes only the processes with a worker of that group. (Named by a digest: a channel
/// name is an identifier, at most 63 bytes.)
fn ready_channel(channel: &str, group: &str) -> String {
    format!("durable_ready_{:016x}", crate::promise::digest(format!("{channel}\0{group}").as_bytes()))
}

/// Forwards notifications to local waiters and the groups' ready signals, listening
/// for each group a worker of this process asks for; reconnects when the connection
/// drops, and then wakes everyone to look for themselves. A notification one of
/// `own` sent is passed over: its step woke this process's waiters as it committed.
async fn listen(
    pool: Pool,
    own: Backends,
    channel: String,
    waiters: Arc<Waiters>,
    ready: Arc<Ready>,
    mut groups: tokio::sync::mpsc::UnboundedReceiver<String>,
) {
    use futures::StreamExt;
    loop {
        let connected = async {
            let (client, mut connection) = pool.config().connect(tokio_postgres::NoTls).await.map_err(unreachable)?;
            let (tx, mut rx) = futures::channel::mpsc::unbounded();
            let stream = futures::stream::poll_fn(move |cx| connection.poll_message(cx)).map(move |m| {
                // The receiver only goes when this connection is given up.
                let _ = tx.unbounded_send(m);
            });
            tokio::spawn(stream.for_each(|_| async {}));
            // The group of each ready channel listened to.
            let mut by_channel = std::collections::HashMap::new();
            let mut listen = format!("LISTEN {};", quote_ident(&channel));
            for group in ready.groups() {
                let c = ready_channel(&channel, &group);
                listen.push_str(&format!("LISTEN {};", quote_ident(&c)));
                by_channel.insert(c, group);
            }
            client.batch_execute(&listen).await.map_err(db)?;
            // Anything missed while not listening: look again.
            waiters.wake_all();
            ready.bump_all();
            loop {
                tokio::select! {
                    message = rx.next() => match message {
                        Some(Ok(tokio_postgres::AsyncMessage::Notification(n)))
                            if own.lock().unwrap_or_else(|e| e.into_inner()).contains(&n.process_id()) => {}
                        Some(Ok(tokio_postgres::AsyncMessage::Notification(n))) => match n.payload().split_once(':') {
                            Some(("s", id)) => waiters.wake([id.to_owned()]),
                            _ => ready.bump(by_channel.get(n.channel()).map(String::as_str)),
                        },
                        Some(Ok(_)) => {}
                        Some(Err(_)) | None => break,
                    },
                    Some(group) = groups.recv() => {
                        let c = ready_channel(&channel, &group);
                        if let std::collections::hash_map::Entry::Vacant(entry) = by_channel.entry(c) {
                            let listen = format!("LISTEN {}", quote_ident(entry.key()));
                            client.batch_execute(&listen).await.map_err(db)?;
                            entry.insert(group.clone());
                            // A task that became ready before this took effect.
                            ready.bump([group.as_str()]);
                        }
                    }
                }
            }
            drop(client);
            Ok::<(), StoreError>(())
        };
        let _ = connected.await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The rows one step works on.
#[derive(Default)]
struct Rows {
    promises: Vec<String>,
    tasks: Vec<String>,
}

/// How a step finds its rows.
enum Select<'a> {
    /// These promises (and their tasks) and tasks; `create`: the promises may not
    /// exist yet; `limits`: the step reads the limits too; `schedules`: and these
    /// schedules, locked.
    Ids { promises: &'a [String], tasks: &'a [String], create: bool, limits: bool, schedules: &'a [String] },
    /// Ready tasks for a worker, skipping those another transaction has locked.
    Ready(&'a Claim),
    /// The halted tasks of a group.
    Halted(&'a str),
    /// Tasks held by earlier processes of a worker: group, pid, process.
    Predecessors(&'a str, &'a str, &'a str),
    /// Promises past their deadline and leases that ran out.
    Due,
    /// The debounced call of a key waiting to start, if any, and these promises; the
    /// store's channel names its lock.
    Debounce { key: &'a str, promises: &'a [String], channel: &'a str },
}

impl Select<'_> {
    /// The rows; a claim passes over tasks of the (function, key) pairs `closed`.
    async fn rows(
        &self,
        conn: &mut Conn<'_>,
        now: Millis,
        closed: &[(Option<String>, Option<String>)],
    ) -> Result<Rows, StoreError> {
        let now = now as i64;
        match self {
            Select::Ids { promises, tasks, .. } => Ok(Rows { promises: promises.to_vec(), tasks: tasks.to_vec() }),
            Select::Ready(claim) => {
                let [ready] = conn.statements([READY]).await.map_err(db)?;
                let (functions, keys): (Vec<Option<String>>, Vec<Option<String>>) = closed.iter().cloned().unzip();
                let max = claim.max as i64;
                let params: [&(dyn ToSql + Sync); 7] =
                    [&claim.group, &now, &claim.pid, &max, &claim.functions, &functions, &keys];
                let candidates = conn.query(&ready, &params).await.map_err(db)?;
                let candidates = ids(candidates);
                Ok(Rows { promises: candidates.clone(), tasks: candidates })
            }
            Select::Halted(group) => {
                let [halted] = conn.statements([HALTED]).await.map_err(db)?;
                let rows = conn.query(&halted, &[group]).await.map_err(db)?;
                // Their promises too: which function each is of decides its resume.
                let tasks = ids(rows);
                Ok(Rows { promises: tasks.clone(), tasks })
            }
            Select::Predecessors(group, pid, process) => {
                let [stale] = conn.statements([PREDECESSORS]).await.map_err(db)?;
                let rows = conn.query(&stale, &[group, pid, process]).await.map_err(db)?;
                Ok(Rows { promises: Vec::new(), tasks: ids(rows) })
            }
            Select::Debounce { key, promises, channel } => {
                let [lock, debounced] = conn.statements([LOCK_DEBOUNCE, DEBOUNCED]).await.map_err(db)?;
                conn.execute(&lock, &[key, channel]).await.map_err(db)?;
                let waiting = ids(conn.query(&debounced, &[key]).await.map_err(db)?);
                Ok(Rows { promises: promises.iter().chain(&waiting).cloned().collect(), tasks: waiting })
            }
            Select::Due => {
                let [due, expired] = conn.statements([DUE_PROMISES, DUE_TASKS]).await.map_err(db)?;
                let params: [&(dyn ToSql + Sync); 1] = [&now];
                let (due, expired) =
                    futures::try_join!(conn.query(&due, &params), conn.query(&expired, &params)).map_err(db)?;
                Ok(Rows { promises: ids(due), tasks: ids(expired) })
            }
        }
    }
}

/// A PostgreSQL error that says what the server said: tokio-postgres's own says only
/// "db error", with the server's message in its source.
#[derive(Debug)]
struct Pg(tokio_postgres::Error);

impl std::fmt::Display for Pg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Some(server) = self.0.as_db_error() else {
            write!(f, "{}", self.0)?;
            let mut source = std::error::Error::source(&self.0);
            while let Some(cause) = source {
                write!(f, ": {cause}")?;
                source = cause.source();
            }
            return Ok(());
        };
        write!(f, "PostgreSQL said: {}", server.message())?;
        if let Some(detail) = server.detail() {
            write!(f, " ({detail})")?;
        }
        if let Some(hint) = server.hint() {
            write!(f, "; hint: {hint}")?;
        }
        write!(f, " [SQLSTATE {}]", server.code().code())
    }
}

impl std::error::Error for Pg {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

fn db(e: tokio_postgres::Error) -> StoreError {
    StoreError::backend(Pg(e))
}

fn retryable(e: &StoreError) -> bool {
    let StoreError::Backend(source) = e else { return false };
    source.downcast_ref::<Pg>().and_then(|e| e.0.code()).is_some_and(|c| {
        *c == tokio_postgres::error::SqlState::T_R_SERIALIZATION_FAILURE
            || *c == tokio_postgres::error::SqlState::T_R_DEADLOCK_DETECTED
    })
}

/// Whether the server refused a statement, so that the transaction wrote nothing
/// (not a connection lost, when a commit may have happened).
fn refused(e: &StoreError) -> bool {
    let StoreError::Backend(source) = e else { return false };
    source.downcast_ref::<Pg>().is_some_and(|e| e.0.as_db_error().is_some())
}

fn parse<T: serde::de::DeserializeOwned>(json: &str) -> Result<T, StoreError> {
    serde_json::from_str(json).map_err(|e| StoreError::backend(format!("an unreadable record in PostgreSQL: {e}")))
}

fn state_name(state: State) -> &'static str {
    match state {
        State::Pending => "pending",
        State::Resolved => "resolved",
        State::Rejected => "rejected",
        State::RejectedCanceled => "rejected_canceled",
        State::RejectedTimedout => "rejected_timedout",
    }
}

fn task_state_name(state: TaskState) -> &'static str {
    match state {
        TaskState::Pending => "pending",
        TaskState::Acquired => "acquired",
        TaskState::Suspended => "suspended",
        TaskState::Fulfilled => "fulfilled",
        TaskState::Halted => "halted",
    }
}

impl PostgresStore {
    /// Connects to `url` with the default options, creating or upgrading the schema.
    pub async fn connect(url: &str) -> Result<PostgresStore, StoreError> {
        PostgresStore::options(url).connect().await
    }

    /// Options for a connection to `url`.
    pub fn options(url: &str) -> PostgresOptions {
        PostgresOptions { url: url.to_owned(), schema: "durable".into(), pool_size: 8, clock: None, create: true }
    }
}

impl Backend {
    /// The time, from the injected clock or else the database's (`clock` is the
    /// prepared [`CLOCK`]).
    async fn now_in(&self, client: &Client, clock: &Statement) -> Result<Millis, StoreError> {
        match &self.clock {
            Some(clock) => Ok(clock.now()),
            None => {
                let row = client.query_one(clock, &[]).await.map_err(db)?;
                Ok(row.get::<_, i64>(0) as Millis)
            }
        }
    }

    /// The time, from the injected clock or else the database's as read in column
    /// `column` of `row`.
    fn now_from(&self, row: &tokio_postgres::Row, column: usize) -> Millis {
        match &self.clock {
            Some(clock) => clock.now(),
            None => row.get::<_, i64>(column) as Millis,
        }
    }

    /// Begins a transaction whose statements are planned for the values they are given
    /// (the connection's generic plans would not know which index a search's or a
    /// listing's filters want), and reads the time; [`commit`] ends it.
    async fn begin_custom(&self, conn: &mut Conn<'_>, clock: &Statement) -> Result<Millis, StoreError> {
        conn.in_transaction = true;
        let begin =
            async { conn.batch_execute("BEGIN; SET LOCAL plan_cache_mode TO force_custom_plan").await.map_err(db) };
        let ((), now) = futures::try_join!(begin, self.now_in(conn, clock))?;
        Ok(now)
    }

    /// Runs one step in a transaction of its own, retried on a serialization failure
    /// or deadlock: a step that finds its rows by a query.
    async fn step<R: Send>(
        &self,
        select: Select<'_>,
        op: impl Fn(&mut Core, Millis) -> Result<R, StoreError> + Send + Sync,
    ) -> Result<R, StoreError> {
        let mut out = None;
        self.retried(true, &select, &mut |core, now| out = Some(op(core, now))).await?;
        out.expect("a committed step ran its operation")
    }

    /// Runs a step on the rows it names in the next transaction this process commits,
    /// with the steps queued beside it (see [`batch`]); its commit waits for the disk
    /// if `durable` or another step of the batch is.
    async fn batched<R: Send + 'static>(
        self: &Arc<Self>,
        durable: bool,
        rows: (Vec<String>, Vec<String>),
        flags: (bool, bool),
        op: impl FnMut(&mut Core, Millis) -> Result<R, StoreError> + Send + 'static,
    ) -> Result<R, StoreError> {
        self.batched_with(durable, rows, flags, Vec::new(), op).await
    }

    /// [`batched`](Self::batched), with these schedules locked and loaded too.
    async fn batched_with<R: Send + 'static>(
        self: &Arc<Self>,
        durable: bool,
        (promises, tasks): (Vec<String>, Vec<String>),
        (create, limits): (bool, bool),
        schedules: Vec<String>,
        mut op: impl FnMut(&mut Core, Millis) -> Result<R, StoreError> + Send + 'static,
    ) -> Result<R, StoreError> {
        let out = Arc::new(std::sync::Mutex::new(None));
        let slot = out.clone();
        let (done, committed) = tokio::sync::oneshot::channel();
        let job = Job {
            promises,
            tasks,
            schedules,
            create,
            limits,
            durable,
            op: Box::new(move |core, now| *slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(op(core, now))),
            done,
        };
        // The transaction runs in a task of its own: it carries other callers' steps,
        // and finishes even if this caller is dropped meanwhile.
        let run = |jobs| {
            let core = self.clone();
            async move { drop(tokio::spawn(async move { core.commit_batch(jobs).await }).await) }
        };
        self.steps.submit(job, committed, run).await??;
        out.lock().unwrap_or_else(|e| e.into_inner()).take().expect("a committed step ran its operation")
    }

    /// Commits `jobs` in one transaction and tells each how it went. If the server
    /// refused the transaction, it wrote nothing: each step is then tried alone, so
    /// that one step's bad write fails that step only.
    async fn commit_batch(&self, mut jobs: Vec<Job>) {
        match self.commit_jobs(&mut jobs).await {
            Ok(()) => jobs.into_iter().for_each(|job| drop(job.done.send(Ok(())))),
            Err(e) if jobs.len() > 1 && refused(&e) => {
                for mut job in jobs {
                    let result = self.commit_jobs(std::slice::from_mut(&mut job)).await;
                    let _ = job.done.send(result);
                }
            }
            Err(e) => jobs.into_iter().for_each(|job| drop(job.done.send(Err(batch::shared(&e))))),
        }
    }

    async fn commit_jobs(&self, jobs: &mut [Job]) -> Result<(), StoreError> {
        let durable = jobs.iter().any(|j| j.durable);
        let (create, limits) = (jobs.iter().any(|j| j.create), jobs.iter().any(|j| j.limits));
        let promises = dedup(&jobs.iter().flat_map(|j| j.promises.iter().cloned()).collect::<Vec<_>>());
        let tasks = dedup(&jobs.iter().flat_map(|j| j.tasks.iter().cloned()).collect::<Vec<_>>());
        let schedules = dedup(&jobs.iter().flat_map(|j| j.schedules.iter().cloned()).collect::<Vec<_>>());
        let select = Select::Ids { promises: &promises, tasks: &tasks, create, limits, schedules: &schedules };
        self.retried(durable, &select, &mut |core, now| jobs.iter_mut().for_each(|job| (job.op)(core, now))).await
    }

    /// [`try_step`](Self::try_step), retried on a serialization failure or deadlock.
    async fn retried(
        &self,
        durable: bool,
        select: &Select<'_>,
        run: &mut (dyn FnMut(&mut Core, Millis) + Send),
    ) -> Result<(), StoreError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.try_step(durable, select, run).await {
                Err(e) if attempt < 8 && retryable(&e) => continue,
                other => return other,
            }
        }
    }

    /// One transaction: locks and reads the rows `select` finds, runs `run` on them,
    /// writes what it changed and commits.
    async fn try_step(
        &self,
        durable: bool,
        select: &Select<'_>,
        run: &mut (dyn FnMut(&mut Core, Millis) + Send),
    ) -> Result<(), StoreError> {
        let mut conn = self.pool.get().await?;
        // What this step will run, prepared (where this connection has not yet) in one
        // round trip: a step that locks no schedule, say, prepares no schedule's lock.
        let (create, read_limits, locks_schedules) = match select {
            // A step that may free a slot reads the limits, to wake the workers a
            // limit holds back, once this process has seen one.
            Select::Ids { create, limits, schedules, .. } => {
                (*create, *limits || self.flow_seen.load(std::sync::atomic::Ordering::Relaxed), !schedules.is_empty())
            }
            _ => (false, false, false),
        };
        let claims = matches!(select, Select::Ready(_));
        let [
            Some(clock),
            Some(lock_tasks),
            Some(lock_promises),
            Some(lock_waiting),
            lock_new,
            limits_q,
            lock_schedule,
            lock_limits,
            executing_q,
            buckets_q,
        ] = conn
            .statements_if([
                (true, CLOCK),
                (true, LOCK_TASKS),
                (true, LOCK_PROMISES),
                (true, LOCK_WAITING),
                (create, LOCK_NEW),
                (read_limits, LIMITS),
                (locks_schedules, LOCK_SCHEDULE),
                (claims, LOCK_LIMITS),
                (claims, EXECUTING),
                (claims, BUCKETS),
            ])
            .await
            .map_err(db)?
        else {
            unreachable!("the statements every step runs are wanted")
        };
        let locks = [lock_tasks, lock_promises, lock_waiting];
        conn.in_transaction = true;
        // One round trip to BEGIN, read the clock and lock and read the rows (the
        // statements are pipelined and run in order), one to write and COMMIT.
        let begin = if durable { "BEGIN" } else { "BEGIN; SET LOCAL synchronous_commit TO off" };
        let (mut limits, mut buckets, mut executing, mut schedules) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let (now, (promises, mut tasks)) = match select {
            Select::Ids { promises, tasks, schedules: locked, .. } => {
                let rows = Rows { promises: promises.to_vec(), tasks: tasks.to_vec() };
                // Sent in this order (each future sends when first polled), run in order.
                let ((), now, (), loaded, stored, scheduled) = futures::try_join!(
                    async { conn.batch_execute(begin).await.map_err(db) },
                    self.now_in(&conn, &clock),
                    async {
                        if let Some(lock_new) = &lock_new {
                            conn.execute(lock_new, &[&self.channel, &rows.promises]).await.map_err(db)?;
                        }
                        Ok(())
                    },
                    load(&conn, &locks, &rows),
                    async {
                        match &limits_q {
                            Some(limits_q) => conn.query(limits_q, &[]).await.map_err(db),
                            None => Ok(Vec::new()),
                        }
                    },
                    async {
                        match &lock_schedule {
                            Some(lock_schedule) => conn.query(lock_schedule, &[locked]).await.map_err(db),
                            None => Ok(Vec::new()),
                        }
                    }
                )?;
                schedules = scheduled.iter().map(|r| parse::<Schedule>(r.get(0))).collect::<Result<_, _>>()?;
                limits = stored.iter().map(|r| parse::<Limit>(r.get(0))).collect::<Result<_, _>>()?;
                if !limits.is_empty() {
                    self.flow_seen.store(true, std::sync::atomic::Ordering::Relaxed);
                }
                (now, loaded)
            }
            Select::Ready(claim) => {
                let (Some(lock_limits), Some(executing_q), Some(buckets_q)) = (lock_limits, executing_q, buckets_q)
                else {
                    unreachable!("a claim's statements are wanted")
                };
                let group: [&(dyn ToSql + Sync); 1] = [&claim.group];
                let locking: [&(dyn ToSql + Sync); 2] = [&claim.group, &self.channel];
                let ((), now, locked, running, rates) = futures::try_join!(
                    async { conn.batch_execute(begin).await.map_err(db) },
                    self.now_in(&conn, &clock),
                    async { conn.query(&lock_limits, &locking).await.map_err(db) },
                    async { conn.query(&executing_q, &group).await.map_err(db) },
                    async { conn.query(&buckets_q, &group).await.map_err(db) }
                )?;
                limits = locked.iter().map(|r| parse::<Limit>(r.get(0))).collect::<Result<_, _>>()?;
                self.flow_seen.store(!limits.is_empty(), std::sync::atomic::Ordering::Relaxed);
                for row in running {
                    let mut t = parse::<Task>(row.get(0))?;
                    t.function = t.function.or(row.get(1));
                    executing.push(t);
                }
                for row in rates {
                    let (tat, open_at): (i64, i64) = (row.get(2), row.get(3));
                    buckets.push(((row.get(0), row.get(1)), Bucket { tat: tat as u64, open_at: open_at as Millis }));
                }
                let running = executing.iter().map(|t| (t, t.function.as_deref()));
                let closed = Admission::new(limits.iter(), &claim.group, running).closed(now, &buckets);
                let rows = select.rows(&mut conn, now, &closed).await?;
                (now, load(&conn, &locks, &rows).await?)
            }
            _ => {
                let ((), now) = futures::try_join!(
                    async { conn.batch_execute(begin).await.map_err(db) },
                    self.now_in(&conn, &clock)
                )?;
                let rows = select.rows(&mut conn, now, &[]).await?;
                (now, load(&conn, &locks, &rows).await?)
            }
        };
        // The step reads only the rows it loaded, finished or not; the tasks executing
        // under a limit are read, not locked, and only counted. One of them given back
        // since, and loaded (locked) as a candidate, is taken as loaded.
        let loaded: std::collections::HashSet<String> = tasks.iter().map(|t| t.id.clone()).collect();
        executing.retain(|t| !loaded.contains(&t.id));
        tasks.extend(executing);
        let mut core = Core::restore(Arc::new(MemoryCold::default()), promises, tasks, now);
        core.restore_flow(limits, buckets);
        core.restore_schedules(schedules);
        run(&mut core, now);
        // A claim passes over the tasks this step locked (`SKIP LOCKED`): those still
        // ready to run are announced again as the step ends, so that no claim waits for
        // its poll to find one. (A claim's own candidates are its to take or leave.)
        let passed_over: Vec<String> = match select {
            Select::Ids { .. } => loaded
                .iter()
                .filter_map(|id| core.task(id).ok().flatten())
                .filter(|t| t.state == TaskState::Pending && t.ready_at <= now)
                .map(|t| t.target.group)
                .collect(),
            _ => Vec::new(),
        };
        let mut dirty = core.take_changes();
        dirty.ready.extend(passed_over);
        // Every write of the step: one statement per table, pipelined.
        let (mut p_ids, mut p_states, mut p_timers, mut p_timeouts, mut p_tags, mut p_data) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let (mut p_settled, mut p_invoked, mut p_parents, mut p_roots) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for p in &dirty.promises {
            p_parents.push(p.parent.clone());
            p_roots.push(p.root.clone());
            p_settled.push(p.settled_at.map(|at| at as i64));
            p_invoked.push(is_invocation(p).then_some(p.created_at as i64));
            p_states.push(state_name(p.state).to_owned());
            p_timers.push(p.param == crate::Param::Timer);
            p_timeouts.push(p.timeout_at.min(i64::MAX as u64) as i64);
            p_tags.push(serde_json::to_string(&p.tags).expect("tags encode"));
            p_data.push(serde_json::to_string(p).expect("a promise encodes"));
            p_ids.push(p.id.clone());
        }
        let (mut t_ids, mut t_states, mut t_groups, mut t_pids, mut t_unis, mut t_prefer, mut t_ready, mut t_lease) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let (mut t_process, mut t_versions, mut t_data) = (Vec::new(), Vec::new(), Vec::new());
        let (mut t_priorities, mut t_keys) = (Vec::new(), Vec::new());
        for t in &dirty.tasks {
            t_priorities.push(t.priority);
            t_keys.push(t.key.clone());
            t_states.push(task_state_name(t.state).to_owned());
            t_groups.push(t.target.group.clone());
            t_pids.push(t.target.pid.clone());
            t_unis.push(t.target.uni);
            t_prefer.push(t.prefer_until as i64);
            t_ready.push(t.ready_at as i64);
            t_lease.push(t.lease_until as i64);
            t_process.push(t.process.clone());
            t_versions.push(t.version as i64);
            t_data.push(serde_json::to_string(t).expect("a task encodes"));
            t_ids.push(t.id.clone());
        }
        let promise_params: [&(dyn ToSql + Sync); 10] =
            [&p_ids, &p_states, &p_timers, &p_timeouts, &p_tags, &p_data, &p_settled, &p_invoked, &p_parents, &p_roots];
        let task_params: [&(dyn ToSql + Sync); 13] = [
            &t_ids,
            &t_states,
            &t_groups,
            &t_pids,
            &t_unis,
            &t_prefer,
            &t_ready,
            &t_lease,
            &t_process,
            &t_versions,
            &t_data,
            &t_priorities,
            &t_keys,
        ];
        let (mut b_limits, mut b_keys, mut b_tats, mut b_opens, mut spent_limits, mut spent_keys) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for ((limit, key), bucket) in &dirty.buckets {
            match bucket {
                Some(b) => {
                    b_limits.push(limit.clone());
                    b_keys.push(key.clone());
                    b_tats.push(b.tat as i64);
                    b_opens.push(b.open_at as i64);
                }
                None => {
                    spent_limits.push(limit.clone());
                    spent_keys.push(key.clone());
                }
            }
        }
        let (mut s_ids, mut s_due, mut s_data, mut s_gone) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (id, schedule) in &dirty.schedules {
            match schedule {
                Some(schedule) => {
                    s_ids.push(id.clone());
                    s_due.push(schedule.due().map(|d| d.min(i64::MAX as u64) as i64));
                    s_data.push(serde_json::to_string(schedule).expect("a schedule encodes"));
                }
                None => s_gone.push(id.clone()),
            }
        }
        let schedule_params: [&(dyn ToSql + Sync); 3] = [&s_ids, &s_due, &s_data];
        let gone_params: [&(dyn ToSql + Sync); 1] = [&s_gone];
        let bucket_params: [&(dyn ToSql + Sync); 4] = [&b_limits, &b_keys, &b_tats, &b_opens];
        let spent_params: [&(dyn ToSql + Sync); 2] = [&spent_limits, &spent_keys];
        let notify_params: [&(dyn ToSql + Sync); 2] = [&self.channel, &dirty.woken];
        let ready_channels: Vec<String> = dirty.ready.iter().map(|g| ready_channel(&self.channel, g)).collect();
        let ready_params: [&(dyn ToSql + Sync); 1] = [&ready_channels];
        // One statement for each kind of write the step made.
        let wanted = conn
            .statements_if([
                (!p_ids.is_empty(), UPSERT_PROMISES),
                (!t_ids.is_empty(), UPSERT_TASKS),
                (!b_limits.is_empty(), UPSERT_BUCKETS),
                (!spent_limits.is_empty(), DELETE_BUCKETS),
                (!s_ids.is_empty(), UPSERT_SCHEDULES),
                (!s_gone.is_empty(), DELETE_SCHEDULES),
                (!dirty.woken.is_empty(), NOTIFY_SETTLED),
                (!dirty.ready.is_empty(), NOTIFY_READY),
            ])
            .await
            .map_err(db)?;
        let params: [&[&(dyn ToSql + Sync)]; 8] = [
            &promise_params,
            &task_params,
            &bucket_params,
            &spent_params,
            &schedule_params,
            &gone_params,
            &notify_params,
            &ready_params,
        ];
        let mut writes: Vec<futures::future::BoxFuture<'_, Result<u64, tokio_postgres::Error>>> = wanted
            .iter()
            .zip(params)
            .filter_map(|(statement, params)| Some(Box::pin(conn.execute(statement.as_ref()?, params)) as _))
            .collect();
        // If a write fails, the server turns this COMMIT into a rollback, and the
        // write's error is returned.
        let commit = async { conn.batch_execute("COMMIT").await.map(|()| 0) };
        writes.push(Box::pin(commit));
        let written = futures::future::try_join_all(writes).await;
        // This process's own notifications wake nobody here (the listener passes them
        // over): wake here, also when the commit's answer was lost and it may have
        // committed. A waiter woken for nothing looks and waits again.
        self.waiters.wake(dirty.woken);
        self.ready.bump(dirty.ready.iter().map(String::as_str));
        written.map_err(db)?;
        conn.in_transaction = false;
        Ok(())
    }

    /// Purges in transactions of at most [`PURGE_BATCH`] deleted rows each: a root's
    /// children first, the root last. Roots are locked with `SKIP LOCKED`, so every
    /// worker can purge at once without two taking the same root.
    async fn purge_batched(&self, purge: &Purge) -> Result<usize, StoreError> {
        let (before, limit) = match purge {
            Purge::Root(_) => (NEVER, 1),
            Purge::Before { before, limit } => (*before, *limit),
        };
        let (mut purged, mut held) = (0, Vec::<String>::new());
        while purged < limit {
            let mut attempt = 0;
            let step = loop {
                attempt += 1;
                match self.purge_step(purge, before, (limit - purged).min(100), &mut held).await {
                    Err(e) if attempt < 8 && retryable(&e) => continue,
                    other => break other?,
                }
            };
            match step {
                PurgeStep::Done => break,
                PurgeStep::Deleted(roots) => purged += roots,
            }
        }
        Ok(purged)
    }

    /// One transaction of a purge.
    async fn purge_step(
        &self,
        purge: &Purge,
        before: Millis,
        limit: usize,
        held: &mut Vec<String>,
    ) -> Result<PurgeStep, StoreError> {
        let before_i = before.min(i64::MAX as u64) as i64;
        let mut conn = self.pool.get().await?;
        let [roots_q, root_q, held_q, children_q, tops_q] =
            conn.statements([PURGE_ROOTS, PURGE_ROOT, PURGE_HELD, PURGE_CHILDREN, PURGE_TOPS]).await.map_err(db)?;
        conn.in_transaction = true;
        conn.batch_execute("BEGIN").await.map_err(db)?;
        let mut roots = match purge {
            Purge::Root(id) => {
                let Some(row) = conn.query_opt(&root_q, &[id]).await.map_err(db)? else {
                    conn.batch_execute("COMMIT").await.map_err(db)?;
                    conn.in_transaction = false;
                    return Ok(PurgeStep::Done);
                };
                let p = parse::<Promise>(row.get(0))?;
                let refused = if !p.state.is_settled() {
                    Some("it is pending: only a finished root is purged".to_owned())
                } else if p.parent.is_some() {
                    Some(format!("it is part of the invocation {:?}: purge that", p.root))
                } else {
                    None
                };
                if let Some(reason) = refused {
                    return Err(StoreError::Conflict { id: id.clone(), reason });
                }
                vec![id.clone()]
            }
            Purge::Before { .. } => {
                let rows = conn.query(&roots_q, &[&before_i, &*held, &(limit as i64)]).await.map_err(db)?;
                ids(rows)
            }
        };
        if roots.is_empty() {
            conn.batch_execute("COMMIT").await.map_err(db)?;
            conn.in_transaction = false;
            return Ok(PurgeStep::Done);
        }
        let stuck = ids(conn.query(&held_q, &[&roots, &before_i]).await.map_err(db)?);
        if let (Purge::Root(id), Some(_)) = (purge, stuck.first()) {
            let reason = "a promise in its family is pending".to_owned();
            return Err(StoreError::Conflict { id: id.clone(), reason });
        }
        roots.retain(|r| !stuck.contains(r));
        held.extend(stuck);
        let deleted: i64 = conn.query_one(&children_q, &[&roots, &PURGE_BATCH]).await.map_err(db)?.get(0);
        // A root inside another one (a detached invocation) went with it, uncounted.
        let done = if deleted < PURGE_BATCH {
            let tops: i64 = conn.query_one(&tops_q, &[&roots]).await.map_err(db)?.get(0);
            tops as usize
        } else {
            0
        };
        conn.batch_execute("COMMIT").await.map_err(db)?;
        conn.in_transaction = false;
        Ok(PurgeStep::Deleted(done))
    }

    /// Tells the workers of every group with a task waiting that a limit changed.
    async fn wake_waiting(&self, conn: &Conn<'_>) -> Result<(), StoreError> {
        let groups = ids(conn.query(WAITING_GROUPS, &[]).await.map_err(db)?);
        let channels: Vec<String> = groups.iter().map(|g| ready_channel(&self.channel, g)).collect();
        conn.execute(NOTIFY_READY, &[&channels]).await.map_err(db)?;
        self.ready.bump(groups.iter().map(String::as_str));
        Ok(())
    }

    /// The promise `id` as it is now, and its task's state, read in the next query
    /// this process makes for the reads queued beside it.
    async fn look(self: &Arc<Self>, id: &str) -> Result<Option<Looked>, StoreError> {
        let (done, looked) = tokio::sync::oneshot::channel();
        // As a step's transaction: the query answers other callers' reads too.
        let run = |reads| {
            let core = self.clone();
            async move { drop(tokio::spawn(async move { core.look_all(reads).await }).await) }
        };
        self.reads.submit(Read { id: id.to_owned(), done }, looked, run).await?
    }

    /// Reads the promises of `reads` in one query and answers each; a record that
    /// cannot be read fails only the reads of it.
    async fn look_all(&self, reads: Vec<Read>) {
        let ids = dedup(&reads.iter().map(|r| r.id.clone()).collect::<Vec<_>>());
        let found = async {
            let mut conn = self.pool.get().await?;
            let [look] = conn.statements([LOOK]).await.map_err(db)?;
            let rows = conn.query(&look, &[&ids]).await.map_err(db)?;
            let mut found = std::collections::HashMap::new();
            for row in rows {
                let looked = parse::<Promise>(row.get(1))
                    .map(|p| Looked { promise: p.at(self.now_from(&row, 2)), task: row.get(3) });
                found.insert(row.get::<_, String>(0), looked);
            }
            Ok::<_, StoreError>(found)
        }
        .await;
        for read in reads {
            let answer = match &found {
                Ok(found) => match found.get(&read.id) {
                    Some(Ok(looked)) => Ok(Some(looked.clone())),
                    Some(Err(e)) => Err(batch::shared(e)),
                    None => Ok(None),
                },
                Err(e) => Err(batch::shared(e)),
            };
            let _ = read.done.send(answer);
        }
    }
}

/// A read of one promise, waiting for its query.
#[derive(Debug)]
struct Read {
    id: String,
    done: tokio::sync::oneshot::Sender<Result<Option<Looked>, StoreError>>,
}

/// A promise as read, and the state of its task, if it has one.
#[derive(Clone, Debug)]
struct Looked {
    promise: Promise,
    task: Option<String>,
}

/// What one purge transaction did.
enum PurgeStep {
    /// Nothing left to purge.
    Done,
    /// Deleted this many roots whole (none if it deleted only children).
    Deleted(usize),
}

/// Ends a transaction of reads.
async fn commit(conn: &mut Conn<'_>) -> Result<(), StoreError> {
    conn.batch_execute("COMMIT").await.map_err(db)?;
    conn.in_transaction = false;
    Ok(())
}

fn dedup(ids: &[String]) -> Vec<String> {
    let mut ids = ids.to_vec();
    ids.sort();
    ids.dedup();
    ids
}

/// Locks and reads the rows of a step: tasks, then promises, then the tasks suspended
/// on those promises.
/// `locks` are the prepared [`LOCK_TASKS`], [`LOCK_PROMISES`] and [`LOCK_WAITING`].
async fn load(tx: &Client, locks: &[Statement; 3], rows: &Rows) -> Result<(Vec<Promise>, Vec<Task>), StoreError> {
    let mut task_ids = rows.tasks.clone();
    task_ids.extend(rows.promises.iter().cloned());
    let task_ids = dedup(&task_ids);
    // A task's promise too: its deadline decides whether the task is alive.
    let promise_ids = task_ids.clone();
    // Sent together (tokio-postgres pipelines them), run by the server in this order.
    let [lock_tasks, lock_promises, lock_waiting] = locks;
    let (task_params, promise_params): ([&(dyn ToSql + Sync); 1], [&(dyn ToSql + Sync); 1]) =
        ([&task_ids], [&promise_ids]);
    let tasks = tx.query(lock_tasks, &task_params);
    let promises = tx.query(lock_promises, &promise_params);
    let waiting = async {
        if promise_ids.is_empty() {
            return Ok(Vec::new());
        }
        tx.query(lock_waiting, &[&promise_ids, &task_ids]).await
    };
    let (tasks, promises, waiting) = futures::try_join!(tasks, promises, waiting).map_err(db)?;
    let tasks = tasks.iter().chain(&waiting).map(|r| parse::<Task>(r.get(0))).collect::<Result<Vec<_>, _>>()?;
    let promises = promises.iter().map(|r| parse::<Promise>(r.get(0))).collect::<Result<Vec<_>, _>>()?;
    Ok((promises, tasks))
}

fn ids(rows: Vec<tokio_postgres::Row>) -> Vec<String> {
    rows.into_iter().map(|r| r.get(0)).collect()
}

#[async_trait]
impl super::Store for PostgresStore {
    async fn now(&self) -> Result<Millis, StoreError> {
        let mut conn = self.core.pool.get().await?;
        let [clock] = conn.statements([CLOCK]).await.map_err(db)?;
        self.core.now_in(&conn, &clock).await
    }

    async fn create(&self, req: CreatePromise) -> Result<Created, StoreError> {
        if let Some(key) = req.task.as_ref().and_then(|t| t.debounce.as_ref()).map(|d| d.key.clone()) {
            let promises: Vec<String> = std::iter::once(&req.id).chain(&req.parent).cloned().collect();
            let select = Select::Debounce { key: &key, promises: &promises, channel: &self.core.channel };
            return self.core.step(select, |core, now| core.create(req.clone(), now)).await;
        }
        // The creator too: the new promise joins its family.
        // And the promise its task waits for.
        let after = req.task.as_ref().and_then(|t| t.after.as_ref());
        let promises: Vec<String> = std::iter::once(&req.id).chain(&req.parent).chain(after).cloned().collect();
        let tasks = req.fence.iter().map(|f| f.task.clone()).collect::<Vec<_>>();
        // A create that acquires its task reads the limits: a limited task waits for a claim.
        let limits = req.task.as_ref().is_some_and(|t| t.acquire.is_some());
        self.core
            .batched(req.durable, (promises, tasks), (true, limits), move |core, now| core.create(req.clone(), now))
            .await
    }

    async fn import(&self, family: Vec<CreatePromise>) -> Result<(), StoreError> {
        let mut promises: Vec<String> = family.iter().map(|r| r.id.clone()).collect();
        promises.extend(family.iter().filter_map(|r| r.parent.clone()));
        let promises = dedup(&promises);
        let select = Select::Ids { promises: &promises, tasks: &[], create: true, limits: false, schedules: &[] };
        self.core.step(select, |core, now| core.import(family.clone(), now)).await
    }

    async fn settle(&self, req: SettlePromise) -> Result<Promise, StoreError> {
        let (promises, tasks) = ([req.id.clone()], req.fence.iter().map(|f| f.task.clone()).collect::<Vec<_>>());
        let rows = (promises.to_vec(), tasks);
        self.core.batched(true, rows, (false, false), move |core, now| core.settle(req.clone(), now)).await
    }

    async fn get(&self, id: &str) -> Result<Option<Promise>, StoreError> {
        Ok(self.core.look(id).await?.map(|looked| looked.promise))
    }

    async fn search(&self, search: Search) -> Result<Page, StoreError> {
        let mut conn = self.core.pool.get().await?;
        let [clock, find, family] = conn.statements([CLOCK, SEARCH, SEARCH_FAMILY]).await.map_err(db)?;
        let now = self.core.begin_custom(&mut conn, &clock).await? as i64;
        let limit = super::page_size(search.limit);
        let after = search.cursor.clone().filter(|c| c.as_str() >= search.prefix.as_str()).unwrap_or_default();
        let state = search.state.map(state_name);
        let rows = match &search.root {
            Some(root) if search.prefix.is_empty() && search.tags.is_empty() && state.is_none() => {
                conn.query(&family, &[root, &after, &((limit + 1) as i64)]).await.map_err(db)?
            }
            _ => {
                let tags = serde_json::to_string(&search.tags).expect("tags encode");
                let params: [&(dyn ToSql + Sync); 7] =
                    [&search.prefix, &after, &tags, &state, &now, &((limit + 1) as i64), &search.root];
                conn.query(&find, &params).await.map_err(db)?
            }
        };
        commit(&mut conn).await?;
        let mut promises = rows
            .iter()
            .map(|r| parse::<Promise>(r.get(0)).map(|p| p.at(now as Millis)))
            .collect::<Result<Vec<_>, _>>()?;
        let cursor = if promises.len() > limit {
            promises.truncate(limit);
            promises.last().map(|p| p.id.clone())
        } else {
            None
        };
        Ok(Page { promises, cursor })
    }

    async fn invocations(&self, query: Invocations) -> Result<Listing, StoreError> {
        let mut conn = self.core.pool.get().await?;
        let [clock, list] = conn.statements([CLOCK, INVOCATIONS]).await.map_err(db)?;
        let now = self.core.begin_custom(&mut conn, &clock).await? as i64;
        let limit = super::page_size(query.limit);
        let Some(start) = Start::of(&query) else { return Ok(Listing { invocations: Vec::new(), cursor: None }) };
        let (at, after) = (start.at.min(i64::MAX as u64) as i64, start.after.unwrap_or_default());
        let since = query.since.unwrap_or(0).min(i64::MAX as u64) as i64;
        let state = query.state.map(state_name);
        let tags = serde_json::to_string(&query.tags).expect("tags encode");
        let params: [&(dyn ToSql + Sync); 8] =
            [&at, &after, &tags, &state, &now, &((limit + 1) as i64), &since, &query.function];
        let rows = conn.query(&list, &params).await.map_err(db)?;
        commit(&mut conn).await?;
        let mut invocations = rows
            .iter()
            .map(|r| {
                let promise = parse::<Promise>(r.get(0))?.at(now as Millis);
                let task = r.get::<_, Option<&str>>(1).map(parse::<Task>).transpose()?;
                Ok(Invocation { promise, task })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        let cursor = if invocations.len() > limit {
            invocations.truncate(limit);
            invocations.last().map(|i| Cursor::after(&i.promise))
        } else {
            None
        };
        Ok(Listing { invocations, cursor })
    }

    async fn task(&self, id: &str) -> Result<Option<Task>, StoreError> {
        let mut conn = self.core.pool.get().await?;
        let [get] = conn.statements([GET_TASK]).await.map_err(db)?;
        let row = conn.query_opt(&get, &[&id]).await.map_err(db)?;
        row.map(|r| parse::<Task>(r.get(0))).transpose()
    }

    async fn tasks(&self, ids: &[String]) -> Result<Vec<Task>, StoreError> {
        let mut conn = self.core.pool.get().await?;
        let [get] = conn.statements([GET_TASKS]).await.map_err(db)?;
        let rows = conn.query(&get, &[&ids]).await.map_err(db)?;
        rows.into_iter().map(|r| parse::<Task>(r.get(0))).collect()
    }

    async fn claim(&self, claim: Claim) -> Result<Vec<Acquired>, StoreError> {
        let acquired = self
            .core
            .step(Select::Ready(&claim), |core, now| {
                // The ready queues hold only the candidates: claim them all.
                let mut all = claim.clone();
                all.max = usize::MAX;
                core.claim(&all, now)
            })
            .await?;
        if acquired.is_empty() {
            return Ok(acquired);
        }
        // The preload of every claimed task, in one query.
        let mut conn = self.core.pool.get().await?;
        let [clock, preload] = conn.statements([CLOCK, PRELOAD]).await.map_err(db)?;
        let now = self.core.now_in(&conn, &clock).await? as i64;
        let roots: Vec<String> = acquired.iter().map(|a| a.root.id.clone()).collect();
        let rows = conn.query(&preload, &[&roots, &now]).await.map_err(db)?;
        let mut acquired = acquired;
        for row in rows {
            let root: String = row.get(0);
            let p = parse::<Promise>(row.get(1))?.at(now as Millis);
            if let Some(a) = acquired.iter_mut().find(|a| a.root.id == root) {
                a.preload.push(p);
            }
        }
        Ok(acquired)
    }

    async fn heartbeat(&self, process: &str, held: &[Fence], ttl: Millis) -> Result<Vec<Fence>, StoreError> {
        let tasks: Vec<String> = held.iter().map(|f| f.task.clone()).collect();
        let (process, held) = (process.to_owned(), held.to_vec());
        self.core
            .batched(true, (Vec::new(), tasks), (false, false), move |core, now| {
                Ok(core.heartbeat(&process, &held, ttl, now))
            })
            .await
    }

    async fn release(&self, fence: &Fence, how: Release) -> Result<(), StoreError> {
        let tasks = [fence.task.clone()];
        let fence = fence.clone();
        self.core
            .batched(true, (Vec::new(), tasks.to_vec()), (false, false), move |core, now| {
                core.release(&fence, how.clone(), now)
            })
            .await
    }

    async fn suspend(&self, fence: &Fence, awaiting: &[String]) -> Result<bool, StoreError> {
        let tasks = [fence.task.clone()];
        let (fence, awaiting) = (fence.clone(), awaiting.to_vec());
        self.core
            .batched(true, (awaiting.clone(), tasks.to_vec()), (false, false), move |core, now| {
                core.suspend(&fence, &awaiting, now)
            })
            .await
    }

    async fn resume_halted(&self, group: &str, code: &BTreeMap<String, u64>) -> Result<usize, StoreError> {
        self.core.step(Select::Halted(group), |core, now| Ok(core.resume_halted(group, code, now))).await
    }

    async fn request_cancel(&self, id: &str) -> Result<Option<Promise>, StoreError> {
        let rows = (vec![id.to_owned()], vec![id.to_owned()]);
        let id = id.to_owned();
        self.core.batched(true, rows, (false, false), move |core, now| core.request_cancel(&id, now)).await
    }

    async fn resume(&self, id: &str) -> Result<bool, StoreError> {
        let tasks = [id.to_owned()];
        let id = id.to_owned();
        self.core
            .batched(true, (Vec::new(), tasks.to_vec()), (false, false), move |core, now| Ok(core.resume(&id, now)))
            .await
    }

    async fn release_predecessors(&self, group: &str, pid: &str, process: &str) -> Result<usize, StoreError> {
        self.core
            .step(Select::Predecessors(group, pid, process), |core, now| {
                Ok(core.release_predecessors(group, pid, process, now))
            })
            .await
    }

    async fn purge(&self, purge: Purge) -> Result<usize, StoreError> {
        self.core.purge_batched(&purge).await
    }

    async fn tick(&self) -> Result<Tick, StoreError> {
        let mut tick = self.core.step(Select::Due, |core, now| Ok(core.tick(now))).await?;
        // The next deadline of the whole store, not just of the rows this step saw;
        // and a rate's state that let its next start through by now is as good as none.
        let mut conn = self.core.pool.get().await?;
        let [next, spent] = conn.statements([NEXT_DEADLINE, SPENT_BUCKETS]).await.map_err(db)?;
        let now = tick.now as i64;
        let now_us = tick.now.saturating_mul(1000) as i64;
        let (at, before): ([&(dyn ToSql + Sync); 1], [&(dyn ToSql + Sync); 1]) = ([&now], [&now_us]);
        let (row, _) = futures::try_join!(conn.query_one(&next, &at), conn.execute(&spent, &before)).map_err(db)?;
        tick.next = row.get::<_, Option<i64>>(0).map(|n| n as Millis);
        tick.schedules = row.get::<_, Option<i64>>(1).map(|n| n as Millis);
        // The tasks that became ready since this process's last tick (a delayed start,
        // a backoff): their workers may know of no deadline then, so they are told.
        // (The first tick of a process only notes the time: its workers claim as they
        // start.)
        let since = self.core.ticked.fetch_max(tick.now, std::sync::atomic::Ordering::Relaxed).min(tick.now) as i64;
        if since > 0 && since < now {
            let [became, notify] = conn.statements([BECAME_READY, NOTIFY_READY]).await.map_err(db)?;
            let groups: Vec<String> = ids(conn.query(&became, &[&since, &now]).await.map_err(db)?);
            if !groups.is_empty() {
                let channels: Vec<String> = groups.iter().map(|g| ready_channel(&self.core.channel, g)).collect();
                conn.execute(&notify, &[&channels]).await.map_err(db)?;
                self.core.ready.bump(groups.iter().map(String::as_str));
            }
        }
        Ok(tick)
    }

    async fn announce(&self, worker: &Worker, ttl: Millis) -> Result<(), StoreError> {
        let mut conn = self.core.pool.get().await?;
        let [clock, announce, forget] = conn.statements([CLOCK, ANNOUNCE, FORGET]).await.map_err(db)?;
        let now = self.core.now_in(&conn, &clock).await?;
        let until = now.saturating_add(ttl) as i64;
        let w = worker;
        conn.execute(&announce, &[&w.group, &w.pid, &w.process, &w.functions, &until]).await.map_err(db)?;
        let forgotten = now.saturating_sub(FORGET_WORKERS) as i64;
        conn.execute(&forget, &[&forgotten]).await.map_err(db)?;
        Ok(())
    }

    async fn workers(&self) -> Result<Vec<Worker>, StoreError> {
        let mut conn = self.core.pool.get().await?;
        let [clock, workers] = conn.statements([CLOCK, WORKERS]).await.map_err(db)?;
        let now = self.core.now_in(&conn, &clock).await?;
        let since = now.saturating_sub(FORGET_WORKERS) as i64;
        let rows = conn.query(&workers, &[&since]).await.map_err(db)?;
        Ok(rows
            .iter()
            .map(|row| Worker {
                group: row.get(0),
                pid: row.get(1),
                process: row.get(2),
                functions: row.get(3),
                live_until: row.get::<_, i64>(4) as Millis,
            })
            .collect())
    }

    async fn set_limit(&self, limit: Limit, replace: bool) -> Result<Limit, StoreError> {
        limit.check()?;
        let mut conn = self.core.pool.get().await?;
        let [insert, get] =
            conn.statements([if replace { REPLACE_LIMIT } else { INSERT_LIMIT }, GET_LIMIT]).await.map_err(db)?;
        let data = serde_json::to_string(&limit).expect("a limit encodes");
        conn.execute(&insert, &[&limit.name, &limit.group, &limit.function, &data]).await.map_err(db)?;
        let row = conn.query_one(&get, &[&limit.name]).await.map_err(db)?;
        self.core.flow_seen.store(true, std::sync::atomic::Ordering::Relaxed);
        self.core.wake_waiting(&conn).await?;
        parse(row.get(0))
    }

    async fn remove_limit(&self, name: &str) -> Result<bool, StoreError> {
        let mut conn = self.core.pool.get().await?;
        let [remove] = conn.statements([REMOVE_LIMIT]).await.map_err(db)?;
        let gone: i64 = conn.query_one(&remove, &[&name]).await.map_err(db)?.get(0);
        self.core.wake_waiting(&conn).await?;
        Ok(gone > 0)
    }

    async fn limits(&self) -> Result<Vec<LimitState>, StoreError> {
        let mut conn = self.core.pool.get().await?;
        let [limits, usage] = conn.statements([LIMITS, LIMIT_USE]).await.map_err(db)?;
        let rows = conn.query(&limits, &[]).await.map_err(db)?;
        let mut states = Vec::new();
        for row in rows {
            let limit = parse::<Limit>(row.get(0))?;
            let row = conn.query_one(&usage, &[&limit.function, &limit.group]).await.map_err(db)?;
            let (executing, waiting, oldest): (i64, i64, Option<i64>) = (row.get(0), row.get(1), row.get(2));
            let (executing, waiting, oldest) = (executing as usize, waiting as usize, oldest.map(|o| o as Millis));
            states.push(LimitState { limit, executing, waiting, oldest });
        }
        Ok(states)
    }

    async fn put_schedule(&self, schedule: Schedule, replace: bool) -> Result<Schedule, StoreError> {
        let ids = vec![schedule.id.clone()];
        let put = move |core: &mut Core, _| core.put_schedule(schedule.clone(), replace);
        self.core.batched_with(true, (Vec::new(), Vec::new()), (false, false), ids, put).await
    }

    async fn update_schedule(&self, schedule: Schedule, fires: Vec<CreatePromise>) -> Result<bool, StoreError> {
        let ids = vec![schedule.id.clone()];
        // The fires, and the promises they wait for.
        let after = fires.iter().filter_map(|f| f.task.as_ref().and_then(|t| t.after.clone()));
        let promises: Vec<String> = dedup(&fires.iter().map(|f| f.id.clone()).chain(after).collect::<Vec<_>>());
        let update = move |core: &mut Core, now| core.update_schedule(schedule.clone(), fires.clone(), now);
        self.core.batched_with(true, (promises, Vec::new()), (true, false), ids, update).await
    }

    async fn remove_schedule(&self, id: &str) -> Result<bool, StoreError> {
        let (ids, owned) = (vec![id.to_owned()], id.to_owned());
        let remove = move |core: &mut Core, _| Ok(core.remove_schedule(&owned));
        self.core.batched_with(true, (Vec::new(), Vec::new()), (false, false), ids, remove).await
    }

    async fn schedule(&self, id: &str) -> Result<Option<Schedule>, StoreError> {
        let mut conn = self.core.pool.get().await?;
        let [get] = conn.statements([GET_SCHEDULE]).await.map_err(db)?;
        conn.query_opt(&get, &[&id]).await.map_err(db)?.map(|row| parse(row.get(0))).transpose()
    }

    async fn schedules(&self, due: Option<Millis>) -> Result<Vec<Schedule>, StoreError> {
        let mut conn = self.core.pool.get().await?;
        let rows = match due {
            None => {
                let [all] = conn.statements([ALL_SCHEDULES]).await.map_err(db)?;
                conn.query(&all, &[]).await.map_err(db)?
            }
            Some(by) => {
                let [due] = conn.statements([DUE_SCHEDULES]).await.map_err(db)?;
                let (by, max) = (by.min(i64::MAX as u64) as i64, super::MAX_DUE as i64);
                conn.query(&due, &[&by, &max]).await.map_err(db)?
            }
        };
        rows.iter().map(|row| parse(row.get(0))).collect()
    }

    async fn wait(&self, id: &str, halted: bool) -> Result<(), StoreError> {
        // Registered before the read, so a settle between the two is not missed; it
        // leaves the waiters however this ends.
        let waiter = self.core.waiters.register(id);
        let done = match self.core.look(id).await? {
            None => true,
            Some(looked) => {
                looked.promise.state.is_settled()
                    || (halted && looked.task.as_deref() == Some(task_state_name(TaskState::Halted)))
            }
        };
        if !done {
            // Notifications wake it; a slow poll covers a listener that was down.
            let _ = tokio::time::timeout(POLL, waiter).await;
        }
        Ok(())
    }

    fn ready(&self, group: &str) -> watch::Receiver<u64> {
        let signal = self.core.ready.subscribe(group);
        // The listener may be reconnecting: it listens to every subscribed group then.
        let _ = self.core.listen_to.send(group.to_owned());
        signal
    }
}

#[cfg(test)]
mod tests {
    use super::PostgresStore;
    use crate::store::{CreatePromise, SettlePromise};
    use crate::{Param, State, Store};

    fn url() -> String {
        std::env::var("DURABLE_POSTGRES_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
    }

    #[tokio::test]
    async fn waiting_on_settled_promises_leaves_no_waiter_behind() {
        let schema = format!("durable_waiters_{}", std::process::id());
        let store = match PostgresStore::options(&url()).schema(&schema).connect().await {
            Ok(store) => store,
            Err(e) if std::env::var("CI").as_deref() == Ok("true") => {
                panic!("PostgreSQL at {} is unreachable under CI=true: {e}", url())
            }
            Err(e) => return eprintln!("skipped: PostgreSQL at {} is unreachable: {e}", url()),
        };
        for i in 0..200 {
            let id = format!("p{i}");
            store.create(CreatePromise::new(id.clone(), Param::External)).await.unwrap();
            let settle = SettlePromise {
                id: id.clone(),
                state: State::Resolved,
                value: "1".into(),
                ikey: None,
                strict: false,
                fence: None,
            };
            store.settle(settle).await.unwrap();
            store.wait(&id, false).await.unwrap();
        }
        assert_eq!(store.core.waiters.len(), 0, "a wait that found its promise settled registered nothing for good");
        let (client, connection) = tokio_postgres::connect(&url(), tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(connection);
        client.batch_execute(&format!("DROP SCHEMA {schema} CASCADE")).await.unwrap();
    }

    /// A store in a fresh schema named after `name`, and a client of the database.
    async fn fresh(name: &str) -> (PostgresStore, tokio_postgres::Client, String) {
        let schema = format!("durable_{name}_{}", std::process::id());
        let (client, connection) = tokio_postgres::connect(&url(), tokio_postgres::NoTls)
            .await
            .unwrap_or_else(|e| panic!("PostgreSQL at {} is unreachable: {e}", url()));
        tokio::spawn(connection);
        client.batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE")).await.unwrap();
        let store = PostgresStore::options(&url()).schema(&schema).connect().await.unwrap();
        (store, client, schema)
    }

    /// Steps made at once share transactions (each row's `xmin` is the transaction
    /// that wrote it last), and each returns only what its transaction committed.
    #[tokio::test]
    async fn steps_made_at_once_share_transactions() {
        let (store, client, schema) = fresh("batches").await;
        let ids: Vec<String> = (0..64).map(|i| format!("b{i}")).collect();
        let creates = ids.iter().map(|id| store.create(CreatePromise::new(id.clone(), Param::External)));
        for created in futures::future::try_join_all(creates).await.unwrap() {
            assert!(created.new && created.promise.state == State::Pending);
        }
        let writers = format!("SELECT count(*), count(DISTINCT xmin::text) FROM {schema}.promises");
        let row = client.query_one(&writers, &[]).await.unwrap();
        let (rows, transactions): (i64, i64) = (row.get(0), row.get(1));
        assert_eq!(rows, 64);
        assert!(transactions <= 4, "64 creates at once took {transactions} transactions");
        let settles = ids.iter().map(|id| {
            let value = format!("\"{id}\"");
            store.settle(SettlePromise {
                id: id.clone(),
                state: State::Resolved,
                value,
                ikey: None,
                strict: false,
                fence: None,
            })
        });
        for (id, settled) in ids.iter().zip(futures::future::try_join_all(settles).await.unwrap()) {
            assert_eq!(settled.value.as_deref(), Some(format!("\"{id}\"").as_str()), "each settle returns its own");
        }
        let row = client.query_one(&writers, &[]).await.unwrap();
        let transactions: i64 = row.get(1);
        assert!(transactions <= 4, "64 settles at once took {transactions} transactions");
        client.batch_execute(&format!("DROP SCHEMA {schema} CASCADE")).await.unwrap();
    }

    /// A caller dropped while its turn runs a transaction carrying other callers'
    /// steps leaves them to finish: each of those gets its own answer, not an error of
    /// unknown outcome. (Every second caller here is dropped soon after it starts.)
    #[tokio::test]
    async fn a_caller_dropped_mid_batch_leaves_the_other_steps_to_finish() {
        let (store, client, schema) = fresh("dropped").await;
        let store = std::sync::Arc::new(store);
        for round in 0..16 {
            let calls: Vec<_> = (0..32)
                .map(|i| {
                    let store = store.clone();
                    let id = format!("d{round}-{i}");
                    tokio::spawn(async move { store.create(CreatePromise::new(id, Param::External)).await })
                })
                .collect();
            // Dropped at different points of their batches' transactions.
            tokio::time::sleep(std::time::Duration::from_micros(150 * round)).await;
            for (i, call) in calls.iter().enumerate() {
                if i % 2 == 0 {
                    call.abort();
                }
            }
            for (i, call) in calls.into_iter().enumerate() {
                match call.await {
                    Ok(created) => {
                        created.unwrap_or_else(|e| panic!("round {round}, call {i}: {e}"));
                    }
                    Err(aborted) => assert!(i % 2 == 0 && aborted.is_cancelled()),
                }
            }
        }
        client.batch_execute(&format!("DROP SCHEMA {schema} CASCADE")).await.unwrap();
    }

    /// A step whose write the server refuses fails alone: the steps that shared its
    /// transaction are committed without it.
    #[tokio::test]
    async fn a_refused_step_fails_alone() {
        let (store, client, schema) = fresh("refused").await;
        let ids: Vec<String> = (0..16).map(|i| if i == 7 { "bad\0id".to_owned() } else { format!("ok{i}") }).collect();
        let creates = ids.iter().map(|id| store.create(CreatePromise::new(id.clone(), Param::External)));
        let results = futures::future::join_all(creates).await;
        for (id, result) in ids.iter().zip(results) {
            match result {
                Ok(_) => assert!(!id.contains('\0'), "PostgreSQL took a NUL byte"),
                Err(e) => assert!(id.contains('\0'), "{id} failed beside a refused step: {e}"),
            }
        }
        let count = format!("SELECT count(*) FROM {schema}.promises");
        assert_eq!(client.query_one(&count, &[]).await.unwrap().get::<_, i64>(0), 15);
        client.batch_execute(&format!("DROP SCHEMA {schema} CASCADE")).await.unwrap();
    }

    /// Reads made at once share a query, and each gets its own promise; a record
    /// that cannot be read fails only the reads of it.
    #[tokio::test]
    async fn reads_made_at_once_each_get_their_own() {
        let (store, client, schema) = fresh("reads").await;
        for i in 0..32 {
            store.create(CreatePromise::new(format!("r{i}"), Param::External)).await.unwrap();
        }
        client.batch_execute(&format!("UPDATE {schema}.promises SET data = 'not json' WHERE id = 'r7'")).await.unwrap();
        let ids: Vec<String> = (0..40).map(|i| format!("r{i}")).collect();
        let reads = futures::future::join_all(ids.iter().map(|id| store.get(id))).await;
        for (i, (id, read)) in ids.iter().zip(reads).enumerate() {
            match read {
                Ok(Some(p)) => assert_eq!(&p.id, id, "a read got another's promise"),
                Ok(None) => assert!(i >= 32, "{id} exists"),
                Err(e) => assert!(i == 7 && e.to_string().contains("unreadable"), "{id}: {e}"),
            }
        }
        client.batch_execute(&format!("DROP SCHEMA {schema} CASCADE")).await.unwrap();
    }

    /// A step that locked a task ready to run (a suspend on the call of it) announces
    /// it again as it ends: a claim made meanwhile passed over it (`SKIP LOCKED`) and
    /// would otherwise find it only at its next poll.
    #[tokio::test]
    async fn a_step_that_held_a_ready_task_announces_it() {
        use crate::store::NewTask;
        use crate::target::Target;
        let (store, client, schema) = fresh("passed_over").await;
        let mut root = CreatePromise::new("root", Param::call("f", 1, "1".into()));
        root.task = Some(NewTask { acquire: Some(("p1".into(), 60_000)), ..NewTask::new(Target::any("client")) });
        let held = store.create(root).await.unwrap().acquired.expect("acquired at once");
        let fence = crate::promise::Fence { task: held.id.clone(), version: held.version };
        let mut call = CreatePromise::new("root.1", Param::call("g", 1, "2".into()));
        call.parent = Some("root".into());
        call.task = Some(NewTask::new(Target::any("work")));
        call.fence = Some(fence.clone());
        store.create(call).await.unwrap();
        // Another process's view: a connection of its own, listening to the group.
        use futures::StreamExt;
        let (listener, mut connection) = tokio_postgres::connect(&url(), tokio_postgres::NoTls).await.unwrap();
        let (tx, mut notes) = futures::channel::mpsc::unbounded();
        let messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx)).map(move |m| {
            if let Ok(tokio_postgres::AsyncMessage::Notification(n)) = m {
                let _ = tx.unbounded_send(n.channel().to_owned());
            }
        });
        tokio::spawn(messages.for_each(|_| async {}));
        let channel = super::ready_channel(&store.core.channel, "work");
        listener.batch_execute(&format!("LISTEN {}", super::quote_ident(&channel))).await.unwrap();
        assert!(store.suspend(&fence, &["root.1".to_owned()]).await.unwrap(), "suspended on the call");
        let announced = tokio::time::timeout(std::time::Duration::from_secs(10), notes.next()).await;
        assert_eq!(announced.ok().flatten(), Some(channel), "the call the suspend held locked is announced again");
        client.batch_execute(&format!("DROP SCHEMA {schema} CASCADE")).await.unwrap();
    }

    /// The listener passes over what this store's own connections notify (their steps
    /// woke this process as they committed), and forwards what others notify.
    #[tokio::test]
    async fn notifications_of_its_own_connections_are_passed_over() {
        use futures::FutureExt;
        let (store, client, schema) = fresh("own_notes").await;
        let notify = "SELECT pg_notify($1, $2)";
        // Until the listener listens, a notification is lost: send one until it is heard.
        let heard = store.core.waiters.register("heard");
        let mut heard = std::pin::pin!(heard);
        loop {
            client.execute(notify, &[&store.core.channel, &"s:heard"]).await.unwrap();
            if tokio::time::timeout(std::time::Duration::from_millis(200), &mut heard).await.is_ok() {
                break;
            }
        }
        // The own notification commits before the foreign one, and arrives first.
        let (own, foreign) = (store.core.waiters.register("own"), store.core.waiters.register("foreign"));
        let conn = store.core.pool.get().await.unwrap();
        conn.execute(notify, &[&store.core.channel, &"s:own"]).await.unwrap();
        drop(conn);
        client.execute(notify, &[&store.core.channel, &"s:foreign"]).await.unwrap();
        let foreign = tokio::time::timeout(std::time::Duration::from_secs(10), foreign).await;
        assert!(foreign.is_ok(), "another connection's notification wakes its waiter");
        assert!(own.now_or_never().is_none(), "a notification of this store's own connection woke a waiter");
        client.batch_execute(&format!("DROP SCHEMA {schema} CASCADE")).await.unwrap();
    }

    /// How a process of schema version 5 wrote a promise: no creator, no family.
    const UPSERT_V5: &str = "INSERT INTO promises (id, state, timer, timeout_at, tags, data, settled_at, invoked_at)
         VALUES ($1, $2, false, 9223372036854775807, $3::text::jsonb, $4, $5, $6)
         ON CONFLICT (id) DO UPDATE SET state = EXCLUDED.state, data = EXCLUDED.data, settled_at = EXCLUDED.settled_at";

    async fn write_v5(client: &tokio_postgres::Client, id: &str, settled: bool, tags: serde_json::Value) {
        let p = serde_json::json!({
            "id": id, "state": if settled { "resolved" } else { "pending" },
            "param": {"kind": "call", "func": "f", "version": 1, "args": "1", "digest": 1},
            "value": if settled { Some("1") } else { None }, "timeout_at": u64::MAX,
            "tags": tags, "ikey_create": null, "ikey_settle": null,
            "created_at": 1, "settled_at": if settled { Some(2) } else { None },
        });
        let (state, settled_at) = if settled { ("resolved", Some(2i64)) } else { ("pending", None) };
        let invoked = (!id.contains('.')).then_some(1i64);
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 6] =
            [&id, &state, &tags.to_string(), &p.to_string(), &settled_at, &invoked];
        client.execute(UPSERT_V5, &params).await.unwrap();
    }

    #[tokio::test]
    async fn schema_5_rows_and_writers_get_their_family() {
        let schema = format!("durable_upgrade6_{}", std::process::id());
        let (client, connection) = tokio_postgres::connect(&url(), tokio_postgres::NoTls)
            .await
            .unwrap_or_else(|e| panic!("PostgreSQL at {} is unreachable: {e}", url()));
        tokio::spawn(connection);
        client
            .batch_execute(&format!(
                "DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}; SET search_path TO {schema}"
            ))
            .await
            .unwrap();
        for migration in
            [super::MIGRATION_1, super::MIGRATION_2, super::MIGRATION_3, super::MIGRATION_4, super::MIGRATION_5]
        {
            client.batch_execute(migration).await.unwrap();
        }
        client
            .batch_execute(
                "CREATE TABLE durable_schema (version integer NOT NULL); INSERT INTO durable_schema VALUES (5)",
            )
            .await
            .unwrap();
        write_v5(&client, "a", true, serde_json::json!({})).await;
        write_v5(&client, "a.1", true, serde_json::json!({})).await;
        write_v5(&client, "charge-a", true, serde_json::json!({"durable:parent": "a.1"})).await;
        write_v5(&client, "b", false, serde_json::json!({})).await;
        write_v5(&client, "approval-b", true, serde_json::json!({"durable:parent": "b"})).await;

        let store = PostgresStore::options(&url()).schema(&schema).connect().await.expect("upgrade to 6");
        let family = |p: Option<crate::Promise>| p.map(|p| (p.parent, p.root)).unwrap();
        assert_eq!(family(store.get("charge-a").await.unwrap()), (Some("a.1".into()), "a".into()));
        assert_eq!(family(store.get("approval-b").await.unwrap()), (Some("b".into()), "b".into()));
        // A process of version 5 still running during the deploy writes as it did.
        write_v5(&client, "b.1", true, serde_json::json!({})).await;
        write_v5(&client, "label-b", false, serde_json::json!({"durable:parent": "b.1"})).await;
        assert_eq!(family(store.get("label-b").await.unwrap()), (Some("b.1".into()), "b".into()), "by the trigger");
        // Its task, as a process from before tasks named their function wrote it.
        let task = crate::Task {
            id: "label-b".into(),
            state: crate::TaskState::Pending,
            version: 0,
            target: crate::Target::any("g"),
            prefer_until: 0,
            process: None,
            lease_until: 0,
            ready_at: 0,
            faults: 0,
            error: None,
            awaiting: Vec::new(),
            halted_code: None,
            function: None,
            key: None,
            priority: 0,
            debounce: None,
        };
        let data = serde_json::to_string(&task).unwrap();
        client
            .execute(
                "INSERT INTO tasks (id, state, grp, pid, uni, prefer_until, ready_at, lease_until, process, version,
                   awaiting, data) VALUES ('label-b', 'pending', 'g', NULL, false, 0, 0, 0, NULL, 0, '{}', $1)",
                &[&data],
            )
            .await
            .unwrap();
        let claim = crate::store::Claim {
            group: "g".into(),
            pid: "w".into(),
            process: "w:1".into(),
            ttl: 60_000,
            max: 1,
            functions: vec!["f".into()],
        };
        let claimed = store.claim(claim).await.unwrap();
        assert_eq!(claimed.len(), 1, "a worker of its function takes it: nothing is stranded");
        let search = crate::store::Search { root: Some("b".into()), ..Default::default() };
        let ids: Vec<String> = store.search(search).await.unwrap().promises.into_iter().map(|p| p.id).collect();
        assert_eq!(ids, ["approval-b", "b", "b.1", "label-b"]);
        let purged = store.purge(crate::store::Purge::Before { before: u64::MAX, limit: 100 }).await.unwrap();
        assert_eq!(purged, 1, "family a, whole; b runs");
        assert!(store.get("charge-a").await.unwrap().is_none());
        assert!(store.get("approval-b").await.unwrap().is_some(), "an approval b waits on stays");
        client.batch_execute(&format!("DROP SCHEMA {schema} CASCADE")).await.unwrap();
    }
}
