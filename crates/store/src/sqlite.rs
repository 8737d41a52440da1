//! The embedded SQLite backend.
//!
//! One file in WAL mode (`synchronous = NORMAL`, foreign keys on), schema versioned by
//! `PRAGMA user_version` and recognized by `PRAGMA application_id`.
//!
//! Writes: one writer thread owns the write connection. Every write operation runs in a
//! savepoint of its own inside a `BEGIN IMMEDIATE` transaction; the transaction carries
//! every operation that arrives while it is open (group commit), and commits as soon as
//! none is waiting. Each operation is all or nothing, and no caller hears back before
//! the commit that holds its operation. Reads run on a second connection and see the
//! last commit. Several processes may share the file: SQLite's write lock serializes
//! their transactions and `busy_timeout` makes them wait.
//!
//! Hot-path notes (measured with `examples/queue_bench.rs`; the writer thread bounds
//! the store's throughput, so what it does per claim and finish is kept small):
//! - Commits are written to the WAL in one system call each (see [`crate::vfs`]), and
//!   the WAL is checkpointed often enough to be rewritten in place rather than grown.
//! - Pages are 2 KiB and the `jobs` rows that claims and finishes rewrite are narrow;
//!   the spec, title and deps live in `job_specs`, written once at submit and read by
//!   the caller on the read connection after the commit, never by the writer.
//! - A job's state change records its events with one update of the job (which also
//!   takes their seqs) and one insert; finish returns the job row it read for the fence
//!   with the same change applied, rather than reading it again.
//! - The statements claims and finishes run are never re-prepared and build no
//!   temporary table (see "The hot path's statements" below, and its test).
//! - The claim query walks the partial index `jobs_claim` in claim order; there is no
//!   index on `state` alone, and events carry no foreign keys, because each index or
//!   check costs every claim and finish a page write or a lookup.

use crate::rules::{self, AttemptEnd, Target, attempt_end, topo_order};
use crate::{Binding, FactoryInfo, JobFilter, Result, Store, StoreError};
use async_trait::async_trait;
use gantry_core::api::{
    Checkpoint, Claim, ClaimedJob, FinishReport, Heartbeat, Lease, RegisterFactory, Renewed, Scope,
    Status, Submitted, TokenInfo,
};
use gantry_core::event::{self as ev, Event, NewEvent};
use gantry_core::state::{self, Effect, Input};
use gantry_core::time::{Millis, now_millis};
use gantry_core::{
    DepRef, DepsMode, FactoryId, Job, JobId, JobSpec, JobState, Outcome, ParsedJob, Run, RunId,
    StopKind, caps,
};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use serde_json::json;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;
use tokio::sync::watch;

/// How long a connection waits for another process's write lock before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// Schema migrations: entry `i` takes the database from `user_version` `i` to `i + 1`.
/// Never edit a released entry; append a new one instead. Public so tests can build a
/// database at an older version and check that opening it migrates it intact.
pub const MIGRATIONS: &[&str] = &[
    SCHEMA_V1, SCHEMA_V2, SCHEMA_V3, SCHEMA_V4, SCHEMA_V5, SCHEMA_V6,
];

/// `PRAGMA application_id` of a Gantry database ("GANT"), so a foreign SQLite file is
/// recognized before anything is written to it.
pub const APPLICATION_ID: i32 = 0x4741_4E54;

/// Queue depth (issue 10): the queued jobs' capability lists in an index of their own,
/// so that `/metrics` counts them by set with a scan of this index alone, in order and
/// without reading a row. It is partial, like `jobs_claim`: a job enters it when it is
/// queued and leaves it when it is claimed or ended, and the rest of the table never
/// does.
const SCHEMA_V6: &str = r#"
CREATE INDEX jobs_queued_caps ON jobs (capabilities) WHERE state = 'queued';
"#;

/// Identities (issue 15):
/// - `factories.token_id`: the token a factory name belongs to (the first to register
///   it), so another token cannot take the name, and with it the factory's runs, over.
///   NULL for names the server registered itself (its embedded factory). A factory
///   registered before this version belongs to the factory token bound to it (the live
///   one, else the latest), or to no token when none is (only an admin token may then
///   take it).
/// - Idempotency keys are per submitting token (`jobs.submitter`, the token's id; -1
///   for no token; 0 for every key stored before this version, which every token still
///   sees). SQLite cannot drop the old column's UNIQUE constraint without rebuilding
///   the table, so that column is renamed, emptied and left unused, and the keys move
///   to a new column under a unique index per submitter. Both new `jobs` columns stay
///   NULL for keyless jobs, which keeps the index partial and the rows narrow.
const SCHEMA_V5: &str = r#"
ALTER TABLE factories ADD COLUMN token_id INTEGER REFERENCES tokens (id);
UPDATE factories SET token_id = (
    SELECT t.id FROM tokens t WHERE t.factory_id = factories.id
    ORDER BY t.revoked_at IS NULL DESC, t.id DESC LIMIT 1);
ALTER TABLE jobs RENAME COLUMN idempotency_key TO unscoped_key;
ALTER TABLE jobs ADD COLUMN idempotency_key TEXT;
ALTER TABLE jobs ADD COLUMN submitter INTEGER;
UPDATE jobs SET idempotency_key = unscoped_key, unscoped_key = NULL, submitter = 0
    WHERE unscoped_key IS NOT NULL;
CREATE UNIQUE INDEX jobs_idempotency ON jobs (submitter, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
"#;

/// Remote factories (issue 4): why a factory does not claim (its admission, from its
/// heartbeats), and each run's diff, reported by the factory that ran it so that any
/// server can show it. Diffs live in a table of their own, written once per run, so the
/// `runs` rows that renewals rewrite stay narrow.
const SCHEMA_V4: &str = r#"
ALTER TABLE factories ADD COLUMN admission TEXT;
CREATE TABLE run_diffs (
    run_id INTEGER PRIMARY KEY REFERENCES runs (id),
    patch  TEXT NOT NULL
);
"#;

/// Many machines (issue 4): the figures of each factory's last heartbeat, and the
/// factory each factory token is bound to (the first it registered; it may act for no
/// other). At most one live token is bound to a factory, enforced by a unique index
/// rather than by checking, so two tokens racing for one name cannot both win.
const SCHEMA_V3: &str = r#"
ALTER TABLE factories ADD COLUMN load_1m REAL;
ALTER TABLE factories ADD COLUMN free_memory_mb INTEGER;
ALTER TABLE factories ADD COLUMN free_disk_mb INTEGER;
ALTER TABLE tokens ADD COLUMN factory_id INTEGER REFERENCES factories (id);
CREATE UNIQUE INDEX tokens_live_factory ON tokens (factory_id)
    WHERE factory_id IS NOT NULL AND revoked_at IS NULL;
"#;

/// Agents (issue 3): the insights of each run, and per job the agent session to resume
/// and the latest checkpoint. The job side lives in its own table, written only for jobs
/// that have one, so the narrow `jobs` rows that every claim rewrites stay narrow.
const SCHEMA_V2: &str = r#"
ALTER TABLE runs ADD COLUMN insights TEXT;
CREATE TABLE job_agent (
    job_id     INTEGER PRIMARY KEY REFERENCES jobs (id),
    session_id TEXT,
    wip_branch TEXT,
    wip_base   TEXT,
    wip_commit TEXT
);
"#;

const SCHEMA_V1: &str = r#"
-- What claims and finishes rewrite, kept narrow: every update rewrites the whole row,
-- and the narrower the rows, the fewer pages a commit of neighbouring jobs touches.
CREATE TABLE jobs (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    -- Written as ORs, not `IN (...)`: SQLite builds an ephemeral table for an IN list at
    -- every execution of a statement that checks it, which every claim and finish is.
    state           TEXT NOT NULL CHECK (state = 'blocked' OR state = 'queued'
                      OR state = 'running' OR state = 'succeeded' OR state = 'failed'
                      OR state = 'canceled' OR state = 'killed'),
    priority        INTEGER NOT NULL,
    attempt         INTEGER NOT NULL DEFAULT 0,
    max_attempts    INTEGER NOT NULL,
    epoch           INTEGER NOT NULL DEFAULT 0,
    current_run     INTEGER,
    event_seq       INTEGER NOT NULL DEFAULT 0,
    lock_key        TEXT,
    not_before      INTEGER,
    stop_requested  TEXT,
    reason          TEXT,
    created_at      INTEGER NOT NULL,
    started_at      INTEGER,
    finished_at     INTEGER,
    retry_on        TEXT NOT NULL,
    backoff_ms      INTEGER NOT NULL,
    deps_mode       TEXT NOT NULL,
    capabilities    TEXT NOT NULL DEFAULT '[]',
    idempotency_key TEXT UNIQUE
);
-- The claim query walks this index in claim order and stops at the first fit.
CREATE INDEX jobs_claim ON jobs (priority DESC, id) WHERE state = 'queued';
-- At most one running job per lock key, whatever the code above it does. (NULL keys
-- never collide. The condition has no `lock_key IS NOT NULL`: the planner checks that
-- term against every query's comparisons with bound values, and marks those statements
-- for re-preparing at each new binding, which costs more than the NULL entries.)
-- It also lists the running jobs for the reaper. There is deliberately no index on
-- state alone: every claim and finish would rewrite two of its pages, and only rare
-- listings would use it.
CREATE UNIQUE INDEX jobs_running_lock ON jobs (lock_key) WHERE state = 'running';

-- The large, immutable part of a job, written once at submit and never rewritten.
CREATE TABLE job_specs (
    job_id INTEGER PRIMARY KEY REFERENCES jobs (id),
    title  TEXT NOT NULL,
    deps   TEXT NOT NULL DEFAULT '[]',
    spec   TEXT NOT NULL
);

CREATE TABLE job_deps (
    job_id INTEGER NOT NULL REFERENCES jobs (id),
    dep_id INTEGER NOT NULL REFERENCES jobs (id),
    PRIMARY KEY (job_id, dep_id)
) WITHOUT ROWID;
CREATE INDEX job_deps_dep ON job_deps (dep_id, job_id);

CREATE TABLE factories (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    name         TEXT NOT NULL UNIQUE,
    seats        INTEGER NOT NULL,
    capabilities TEXT NOT NULL DEFAULT '[]',
    last_seen    INTEGER NOT NULL
);

CREATE TABLE runs (
    id               INTEGER PRIMARY KEY,
    job_id           INTEGER NOT NULL REFERENCES jobs (id),
    attempt          INTEGER NOT NULL,
    epoch            INTEGER NOT NULL,
    factory_id       INTEGER REFERENCES factories (id),
    outcome          TEXT,
    exit_code        INTEGER,
    error            TEXT,
    branch           TEXT,
    base_commit      TEXT,
    commit_sha       TEXT,
    files_changed    INTEGER,
    lines_added      INTEGER,
    lines_deleted    INTEGER,
    started_at       INTEGER NOT NULL,
    finished_at      INTEGER,
    lease_expires_at INTEGER NOT NULL,
    UNIQUE (job_id, epoch)
);

CREATE TABLE events (
    id     INTEGER PRIMARY KEY,
    job_id INTEGER,
    run_id INTEGER,
    seq    INTEGER NOT NULL,
    kind   TEXT NOT NULL,
    at     INTEGER NOT NULL,
    data   TEXT NOT NULL
);
-- No foreign keys here: events are the most written rows, and every writer of an
-- event has just read (or locked) its job and run; `record_event` checks them itself.
-- A job's events are found through two partial indexes. Its first event (seq 1,
-- `job.submitted`) is written at submit, in job order, so it lands at the end of
-- `events_job_first`. Its later events go to `events_job`; as jobs are worked in
-- roughly submission order, those land near the end of that index too. (One index
-- over both would put every later event into the middle of pages packed with the
-- first events of the jobs after it, splitting a page every few commits.)
CREATE INDEX events_job_first ON events (job_id) WHERE seq = 1;
CREATE INDEX events_job ON events (job_id, id) WHERE seq > 1;

CREATE TABLE tokens (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    name       TEXT NOT NULL UNIQUE,
    scope      TEXT NOT NULL,
    hash       TEXT NOT NULL UNIQUE,
    created_at INTEGER NOT NULL,
    revoked_at INTEGER
);

CREATE TABLE queue (
    id     INTEGER PRIMARY KEY CHECK (id = 1),
    paused INTEGER NOT NULL DEFAULT 0
);
INSERT INTO queue (id, paused) VALUES (1, 0);
"#;

/// The columns of `jobs` that [`JobRow::read`] expects, in order (no name is also a
/// column of `job_specs`, so they read unqualified from the join too).
const JOB_ROW_COLS: &str = "id, state, priority, attempt, max_attempts, epoch, lock_key, \
     deps_mode, idempotency_key, stop_requested, reason, not_before, created_at, \
     started_at, finished_at";

/// The columns [`RawJob::read`] expects, in order, from [`JOB_FROM`].
const JOB_COLS: &str = "id, state, priority, attempt, max_attempts, epoch, lock_key, \
     deps_mode, idempotency_key, stop_requested, reason, not_before, created_at, \
     started_at, finished_at, title, deps, spec, session_id, wip_branch, wip_base, wip_commit";

/// [`JOB_COLS`] for lists: the spec without its body (instructions may be large, and
/// a list is read often; the body comes with one job).
const JOB_LIST_COLS: &str = "id, state, priority, attempt, max_attempts, epoch, lock_key, \
     deps_mode, idempotency_key, stop_requested, reason, not_before, created_at, \
     started_at, finished_at, title, deps, json_set(spec, '$.body', ''), session_id, \
     wip_branch, wip_base, wip_commit";

/// A job's row joined with its spec and its agent state.
const JOB_FROM: &str = "jobs JOIN job_specs ON job_specs.job_id = jobs.id \
     LEFT JOIN job_agent ON job_agent.job_id = jobs.id";

/// The columns [`read_run`] expects, in order.
const RUN_COLS: &str = "id, job_id, attempt, epoch, factory_id, outcome, exit_code, error, \
     branch, base_commit, commit_sha, files_changed, lines_added, lines_deleted, started_at, \
     finished_at, lease_expires_at, insights";

/// Read connections of a store.
const READERS: usize = 4;

/// Most write operations one commit carries.
const MAX_BATCH: usize = 256;

/// How long the writer polls for the next operation before it sleeps. Callers answered
/// by a commit usually send their next operation within tens of microseconds; being
/// put to sleep and woken again (a futex, and the scheduler's latency) costs the
/// writer more than polling for that long, and an idle store polls only this long.
const WRITER_SPIN: Duration = Duration::from_micros(50);

/// Page size of a new database file. Smaller pages than SQLite's 4 KiB mean fewer bytes
/// per commit (each changed page is written whole to the WAL, and copied once into the
/// savepoint journal by every operation that changes it); the hot rows are small and
/// specs are read rarely, so the deeper trees and the overflow pages of long specs
/// cost less than that saves.
const PAGE_SIZE: i64 = 2048;

/// How long the idle writer must have committed nothing before the checkpointer copies
/// the WAL into the database file.
const CHECKPOINT_IDLE: Duration = Duration::from_millis(100);

/// WAL size after which the writer checkpoints itself after a commit, under load that
/// never pauses (the checkpointer handles pauses). Kept small on purpose: once the WAL
/// has been checkpointed SQLite writes it again from its start, and overwriting pages
/// of a file that the OS already holds costs about half as much as growing the file,
/// which outweighs the checkpoints' copies and fsyncs.
const WRITER_AUTOCHECKPOINT_BYTES: i64 = 8 << 20;

/// The embedded SQLite store (one file, WAL mode).
///
/// Writes go to one writer thread that owns the write connection. It runs each
/// operation in a savepoint of its own (so each is all or nothing) and commits all the
/// operations that arrived together in one transaction (group commit) before answering
/// any of them: a commit writes each touched page once however many operations touched
/// it, which is what makes the store fast on a small machine. Reads run on tokio's
/// blocking pool over read connections of their own, and never wait for the writer.
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    /// Read connections ([`READERS`] of them): reads never wait for the writer, and
    /// several may run at once on the blocking pool.
    readers: Vec<Mutex<Connection>>,
    writer: Option<mpsc::Sender<Op>>,
    thread: Option<std::thread::JoinHandle<()>>,
    checkpointer: Option<(mpsc::Sender<()>, std::thread::JoinHandle<()>)>,
    changes: Arc<watch::Sender<u64>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Closing the channel ends the writer loop; joining it closes the write
        // connection before the store is gone, so the file can be reopened at once.
        self.writer.take();
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!(path = %self.path.display(), "the store writer thread panicked");
        }
        if let Some((stop, thread)) = self.checkpointer.take() {
            drop(stop);
            if thread.join().is_err() {
                tracing::error!(path = %self.path.display(), "the store checkpointer panicked");
            }
        }
    }
}

/// What the writer thread does with one queued operation: run it on the open
/// transaction (or learn that the transaction could not begin) and return what to do
/// once the commit is known.
type Op = Box<dyn FnOnce(std::result::Result<&Connection, &str>) -> Completion + Send>;

/// Answers an operation's caller, given the commit's error (if it failed).
type Completion = Box<dyn FnOnce(Option<&str>) + Send>;

/// How an operation ended inside its savepoint.
enum Done<R> {
    /// Applied.
    Ok(R),
    /// Refused; nothing of it is kept.
    Fail(StoreError),
    /// Refused, but what it wrote (the record of the refusal) is kept.
    FailKeep(StoreError),
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.inner.path)
            .finish()
    }
}

fn open_connection(path: &Path) -> Result<Connection> {
    let shown = path.display();
    let vfs = crate::vfs::name()
        .map_err(|e| StoreError::Backend(format!("cannot open database {shown}: {e}")))?;
    let opened = match vfs {
        Some(vfs) => Connection::open_with_flags_and_vfs(path, rusqlite::OpenFlags::default(), vfs),
        None => Connection::open(path),
    };
    let conn =
        opened.map_err(|e| StoreError::Backend(format!("cannot open database {shown}: {e}")))?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

fn configure(conn: &Connection) -> Result<()> {
    conn.execute_batch(
        "PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON; PRAGMA temp_store = MEMORY;
         PRAGMA journal_size_limit = 67108864;",
    )?;
    Ok(())
}

impl SqliteStore {
    /// Opens the database file at `path`, creating it (and its schema) when it does not
    /// exist, and migrating an older schema to the current one.
    ///
    /// Fails, naming the path, when the file is not a Gantry database or was written by
    /// a newer Gantry.
    pub fn open(path: &Path) -> Result<SqliteStore> {
        let shown = path.display();
        let mut conn = open_connection(path)?;
        // Identify the file before changing anything: switching to WAL would write to it.
        let (app_id, version, tables) = identify(&conn)
            .map_err(|e| StoreError::Corrupt(format!("{shown} is not a Gantry database: {e}")))?;
        check_identity(path, app_id, version, tables)?;
        if tables == 0 {
            // Only a new file takes it: the size of an existing one is fixed.
            conn.pragma_update(None, "page_size", PAGE_SIZE)?;
        }
        let mode: String = conn
            .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
            .map_err(|e| StoreError::Backend(format!("cannot enable WAL on {shown}: {e}")))?;
        if !mode.eq_ignore_ascii_case("wal") {
            tracing::warn!(path = %shown, mode, "SQLite refused WAL mode");
        }
        configure(&conn)?;
        migrate(&mut conn, path)?;
        let mut readers = Vec::with_capacity(READERS);
        for _ in 0..READERS {
            let reader = open_connection(path)?;
            configure(&reader)?;
            readers.push(Mutex::new(reader));
        }

        let page_size: i64 = conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
        conn.pragma_update(
            None,
            "wal_autocheckpoint",
            WRITER_AUTOCHECKPOINT_BYTES / page_size.max(512),
        )?;
        let changes = Arc::new(watch::channel(0).0);
        let checkpointer = {
            let conn = open_connection(path)?;
            let commits = changes.subscribe();
            let (stop, stopped) = mpsc::channel::<()>();
            let thread = std::thread::Builder::new()
                .name("gantry-store-checkpoint".into())
                .spawn(move || checkpoint_loop(&conn, &stopped, commits))
                .map_err(|e| {
                    StoreError::Backend(format!("cannot start the store checkpointer: {e}"))
                })?;
            (stop, thread)
        };
        let (tx, rx) = mpsc::channel::<Op>();
        let thread = {
            let changes = Arc::clone(&changes);
            std::thread::Builder::new()
                .name("gantry-store-writer".into())
                .spawn(move || writer_loop(conn, rx, &changes))
                .map_err(|e| StoreError::Backend(format!("cannot start the store writer: {e}")))?
        };
        Ok(SqliteStore {
            inner: Arc::new(Inner {
                path: path.to_path_buf(),
                readers,
                writer: Some(tx),
                thread: Some(thread),
                checkpointer: Some(checkpointer),
                changes,
            }),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Queues `f` for the writer thread and waits for the commit that carries it.
    async fn submit_op<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection, Millis) -> Done<R> + Send + 'static,
    ) -> Result<R> {
        let (answer, answered) = tokio::sync::oneshot::channel::<Result<R>>();
        let op: Op = Box::new(move |conn| {
            let done = match conn {
                Ok(conn) => run_in_savepoint(conn, f),
                Err(e) => Done::Fail(StoreError::Backend(e.to_string())),
            };
            Box::new(move |commit_error: Option<&str>| {
                let result = match (commit_error, done) {
                    (Some(e), _) => Err(StoreError::Backend(format!("commit failed: {e}"))),
                    (None, Done::Ok(r)) => Ok(r),
                    (None, Done::Fail(e) | Done::FailKeep(e)) => Err(e),
                };
                // The caller may have gone away (a dropped future); the work is done.
                let _ = answer.send(result);
            })
        });
        let gone = || StoreError::Backend("the store writer thread has stopped".into());
        self.inner
            .writer
            .as_ref()
            .ok_or_else(gone)?
            .send(op)
            .map_err(|_| gone())?;
        answered.await.map_err(|_| gone())?
    }

    /// Runs `f` as one atomic write operation.
    async fn write<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection, Millis) -> Result<R> + Send + 'static,
    ) -> Result<R> {
        self.submit_op(move |conn, now| match f(conn, now) {
            Ok(r) => Done::Ok(r),
            Err(e) => Done::Fail(e),
        })
        .await
    }

    /// Runs a fenced write of `run` under `epoch`. When the lease is stale, nothing of
    /// `f` is applied, the rejection event is kept and [`StoreError::StaleLease`] is
    /// returned.
    async fn fenced<R: Send + 'static>(
        &self,
        run: RunId,
        epoch: i64,
        op: &'static str,
        f: impl FnOnce(&Connection, &Live, Millis) -> Result<R> + Send + 'static,
    ) -> Result<R> {
        self.submit_op(
            move |conn, now| match check_fence(conn, run, epoch, op, now) {
                Ok(Ok(live)) => match f(conn, &live, now) {
                    Ok(r) => Done::Ok(r),
                    Err(e) => Done::Fail(e),
                },
                Ok(Err(stale)) => Done::FailKeep(stale),
                Err(e) => Done::Fail(e),
            },
        )
        .await
    }

    /// Runs `f` in one read transaction on the read connection, so multi-statement
    /// reads see one snapshot.
    async fn read<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<R> + Send + 'static,
    ) -> Result<R> {
        self.read_on(true, f).await
    }

    /// Runs `f`, which must read with a single statement (its own snapshot), on the read
    /// connection without a transaction around it.
    async fn read_one<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<R> + Send + 'static,
    ) -> Result<R> {
        self.read_on(false, f).await
    }

    /// Runs a read on the blocking pool, on a free read connection: a slow read (a big
    /// list, a cold page cache) must not hold up the async workers that serve every
    /// other request, nor the other reads.
    async fn read_on<R: Send + 'static>(
        &self,
        snapshot: bool,
        f: impl FnOnce(&Connection) -> Result<R> + Send + 'static,
    ) -> Result<R> {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || read_blocking(&inner, snapshot, f))
            .await
            .map_err(|e| StoreError::Backend(format!("a read of the store failed: {e}")))?
    }
}

/// A free read connection of `inner` (or, when all are busy, the first to free up).
fn reader(inner: &Inner) -> std::sync::MutexGuard<'_, Connection> {
    for conn in &inner.readers {
        if let Ok(guard) = conn.try_lock() {
            return guard;
        }
    }
    // Every reader is busy: queue on one of them, chosen by the thread, so that waits
    // spread over the readers.
    let n = inner.readers.len().max(1);
    let pick = std::hash::BuildHasher::hash_one(
        &std::collections::hash_map::RandomState::new(),
        std::thread::current().id(),
    ) as usize
        % n;
    inner.readers[pick]
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// [`SqliteStore::read_on`], on the calling (blocking) thread.
fn read_blocking<R>(
    inner: &Inner,
    snapshot: bool,
    f: impl FnOnce(&Connection) -> Result<R>,
) -> Result<R> {
    let conn = reader(inner);
    if !conn.is_autocommit() {
        // A read that panicked left its transaction open; end it, so this read sees
        // the latest commit.
        conn.prepare_cached("ROLLBACK")?.execute([])?;
    }
    if !snapshot {
        return f(&conn);
    }
    // Cached statements rather than `Connection::transaction`, which prepares its
    // BEGIN and COMMIT anew every time.
    conn.prepare_cached("BEGIN")?.execute([])?;
    let out = f(&conn);
    // The transaction only read: committing it and rolling it back are the same.
    let end = conn
        .prepare_cached("COMMIT")
        .and_then(|mut s| s.execute([]));
    let out = out?;
    end?;
    Ok(out)
}

/// Runs one operation inside a savepoint: released when it succeeds (or failed but
/// keeps its record), rolled back when it failed or panicked.
fn run_in_savepoint<R>(
    conn: &Connection,
    f: impl FnOnce(&Connection, Millis) -> Done<R>,
) -> Done<R> {
    let sp = |sql: &str| -> Result<()> {
        conn.prepare_cached(sql)?.execute([])?;
        Ok(())
    };
    if let Err(e) = sp("SAVEPOINT op") {
        return Done::Fail(e);
    }
    let now = now_millis();
    let done = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(conn, now))) {
        Ok(done) => done,
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            tracing::error!(panic = %what, "a store operation panicked; rolled back");
            Done::Fail(StoreError::Backend(format!(
                "store operation panicked: {what}"
            )))
        }
    };
    let end = match &done {
        Done::Ok(_) | Done::FailKeep(_) => sp("RELEASE op"),
        Done::Fail(_) => sp("ROLLBACK TO op").and_then(|()| sp("RELEASE op")),
    };
    match end {
        Ok(()) => done,
        Err(e) => Done::Fail(e),
    }
}

/// The checkpointer thread: once the writer has been idle for [`CHECKPOINT_IDLE`] after
/// some commits, copies the WAL into the database file, off the writer's path, so the
/// WAL restarts small at the next write. Ends when the store closes its stop channel.
fn checkpoint_loop(
    conn: &Connection,
    stop: &mpsc::Receiver<()>,
    mut commits: watch::Receiver<u64>,
) {
    let mut dirty = false;
    while let Err(mpsc::RecvTimeoutError::Timeout) = stop.recv_timeout(CHECKPOINT_IDLE) {
        if commits.has_changed().unwrap_or(false) {
            // Still busy: checkpointing now would compete with the writer for the disk
            // and never catch up with it.
            commits.borrow_and_update();
            dirty = true;
            continue;
        }
        if !dirty {
            continue;
        }
        match conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get::<_, i64>(0)) {
            Ok(_) => dirty = false,
            Err(e) => tracing::warn!(error = %e, "WAL checkpoint failed; will retry"),
        }
    }
}

/// The next queued operation: polls for [`WRITER_SPIN`], then sleeps until one comes.
/// `None` once the store is closed.
fn next_op(ops: &mpsc::Receiver<Op>) -> Option<Op> {
    let mut since: Option<std::time::Instant> = None;
    loop {
        match ops.try_recv() {
            Ok(op) => return Some(op),
            Err(mpsc::TryRecvError::Disconnected) => return None,
            Err(mpsc::TryRecvError::Empty) => {}
        }
        let start = *since.get_or_insert_with(std::time::Instant::now);
        if start.elapsed() >= WRITER_SPIN {
            return ops.recv().ok();
        }
        std::hint::spin_loop();
    }
}

/// The writer thread: opens a transaction for the first queued operation, runs it and
/// every operation that arrives while the transaction is open (up to [`MAX_BATCH`]),
/// commits, answers them all, and bumps the change counter.
fn writer_loop(conn: Connection, ops: mpsc::Receiver<Op>, changes: &watch::Sender<u64>) {
    while let Some(first) = next_op(&ops) {
        let rows_before = conn.total_changes();
        let begin = conn
            .prepare_cached("BEGIN IMMEDIATE")
            .and_then(|mut s| s.execute([]).map(|_| ()));
        let begin_error = begin
            .as_ref()
            .err()
            .map(|e| format!("cannot begin a write transaction: {e}"));
        let run = |op: Op| -> Completion {
            if let Some(msg) = &begin_error {
                op(Err(msg))
            } else if conn.is_autocommit() {
                // Some errors (disk full, I/O) make SQLite roll the whole transaction
                // back; what follows must not run outside it, in autocommit mode.
                op(Err(
                    "the write transaction was rolled back by an earlier error",
                ))
            } else {
                op(Ok(&conn))
            }
        };
        // Operations run as they arrive: while one runs, the callers answered by the
        // last commit send their next ones, which then share this commit. The commit
        // happens as soon as none is waiting, so callers never wait for latecomers.
        let mut completions: Vec<Completion> = vec![run(first)];
        while completions.len() < MAX_BATCH {
            match ops.try_recv() {
                Ok(op) => completions.push(run(op)),
                Err(_) => break,
            }
        }
        let commit_error = match begin {
            Err(_) => None,
            Ok(()) => match conn
                .prepare_cached("COMMIT")
                .and_then(|mut s| s.execute([]))
            {
                Ok(_) => None,
                Err(e) => {
                    tracing::error!(error = %e, "store commit failed; rolling back");
                    if let Err(e) = conn.execute_batch("ROLLBACK") {
                        tracing::error!(error = %e, "store rollback failed");
                    }
                    Some(e.to_string())
                }
            },
        };
        // Bump before answering, so a caller that waits for changes after its write
        // returns never misses its own. A batch that changed no row (a claim that found
        // nothing, an empty reap) does not bump: waiters woken by it would query,
        // find nothing, and wake each other forever (issue 2: an idle server spun).
        if conn.total_changes() != rows_before {
            changes.send_modify(|n| *n = n.wrapping_add(1));
        }
        for done in completions {
            done(commit_error.as_deref());
        }
    }
}

fn identify(conn: &Connection) -> rusqlite::Result<(i32, i64, i64)> {
    let app_id: i32 = conn.query_row("PRAGMA application_id", [], |r| r.get(0))?;
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let tables: i64 = conn.query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))?;
    Ok((app_id, version, tables))
}

fn check_identity(path: &Path, app_id: i32, version: i64, tables: i64) -> Result<()> {
    let shown = path.display();
    let fresh = app_id == 0 && version == 0 && tables == 0;
    if app_id != APPLICATION_ID && !fresh {
        return Err(StoreError::Corrupt(format!(
            "{shown} is not a Gantry database (application_id {app_id:#x}, \
             user_version {version}, {tables} schema objects)"
        )));
    }
    let known = MIGRATIONS.len() as i64;
    if version > known {
        return Err(StoreError::Corrupt(format!(
            "{shown} has schema version {version}, newer than this Gantry knows ({known}); \
             upgrade Gantry to open it"
        )));
    }
    Ok(())
}

/// Brings the schema up to date, one migration per transaction. The version is read
/// again inside each write transaction, so two processes opening a new file at once do
/// not both migrate it.
fn migrate(conn: &mut Connection, path: &Path) -> Result<()> {
    loop {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let (app_id, version, tables) = identify(&tx)?;
        check_identity(path, app_id, version, tables)?;
        let Some(sql) = MIGRATIONS.get(version as usize) else {
            return Ok(());
        };
        tx.execute_batch(sql).map_err(|e| {
            StoreError::Backend(format!(
                "migrating {} to schema version {}: {e}",
                path.display(),
                version + 1
            ))
        })?;
        tx.pragma_update(None, "user_version", version + 1)?;
        tx.pragma_update(None, "application_id", APPLICATION_ID)?;
        tx.commit()?;
        tracing::info!(path = %path.display(), version = version + 1, "migrated store schema");
    }
}

// ---------------------------------------------------------------------------------------
// Row mapping
// ---------------------------------------------------------------------------------------

fn corrupt(what: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(what.to_string())
}

fn parse_state(s: &str) -> Result<JobState> {
    s.parse().map_err(corrupt)
}

fn parse_outcome(s: &str) -> Result<Outcome> {
    s.parse().map_err(corrupt)
}

fn parse_stop(s: Option<&str>) -> Result<Option<StopKind>> {
    s.map(|s| StopKind::parse(s).ok_or_else(|| corrupt(format!("unknown stop request {s:?}"))))
        .transpose()
}

fn parse_deps_mode(s: &str) -> Result<DepsMode> {
    match s {
        "succeeded" => Ok(DepsMode::Succeeded),
        "finished" => Ok(DepsMode::Finished),
        other => Err(corrupt(format!("unknown deps_mode {other:?}"))),
    }
}

fn deps_mode_str(m: DepsMode) -> &'static str {
    match m {
        DepsMode::Succeeded => "succeeded",
        DepsMode::Finished => "finished",
    }
}

fn parse_retry_on(s: &str) -> Result<Vec<Outcome>> {
    s.split(',')
        .filter(|p| !p.is_empty())
        .map(parse_outcome)
        .collect()
}

fn parse_json<T: serde::de::DeserializeOwned>(what: &str, s: &str) -> Result<T> {
    serde_json::from_str(s).map_err(|e| corrupt(format!("{what}: {e}")))
}

fn parse_scope(s: &str) -> Result<Scope> {
    s.parse().map_err(corrupt)
}

fn to_u32(what: &str, v: i64) -> Result<u32> {
    u32::try_from(v).map_err(|_| corrupt(format!("{what} {v} out of range")))
}

fn opt_u32(what: &str, v: Option<i64>) -> Result<Option<u32>> {
    v.map(|v| to_u32(what, v)).transpose()
}

/// A `jobs` row as stored, before its text columns are parsed.
#[derive(Clone)]
struct JobRow {
    id: i64,
    state: String,
    priority: i64,
    attempt: i64,
    max_attempts: i64,
    epoch: i64,
    lock_key: Option<String>,
    deps_mode: String,
    idempotency_key: Option<String>,
    stop_requested: Option<String>,
    reason: Option<String>,
    not_before: Option<i64>,
    created_at: i64,
    started_at: Option<i64>,
    finished_at: Option<i64>,
}

impl JobRow {
    /// Reads [`JOB_ROW_COLS`].
    fn read(r: &rusqlite::Row<'_>) -> rusqlite::Result<JobRow> {
        Ok(JobRow {
            id: r.get(0)?,
            state: r.get(1)?,
            priority: r.get(2)?,
            attempt: r.get(3)?,
            max_attempts: r.get(4)?,
            epoch: r.get(5)?,
            lock_key: r.get(6)?,
            deps_mode: r.get(7)?,
            idempotency_key: r.get(8)?,
            stop_requested: r.get(9)?,
            reason: r.get(10)?,
            not_before: r.get(11)?,
            created_at: r.get(12)?,
            started_at: r.get(13)?,
            finished_at: r.get(14)?,
        })
    }
}

impl JobRow {
    /// Makes to this row (read before a [`step`] in the same transaction) the change
    /// that `step` made to the stored one.
    fn apply_step(
        &mut self,
        to: JobState,
        reason: Option<&str>,
        not_before: Option<Millis>,
        now: Millis,
    ) {
        self.state = to.as_str().to_string();
        self.reason = reason.map(str::to_string);
        self.not_before = not_before;
        self.finished_at = to.is_terminal().then_some(now);
        if to != JobState::Running {
            self.stop_requested = None;
        }
    }
}

/// A job's `job_specs` row as stored: written once at submit, never changed after.
struct SpecRow {
    title: String,
    deps: String,
    spec: String,
}

/// A whole job as stored, before its text columns are parsed.
struct RawJob {
    row: JobRow,
    spec: SpecRow,
    agent: AgentRow,
}

/// A job's agent state (`job_agent`), absent for most jobs.
#[derive(Debug, Default)]
struct AgentRow {
    session_id: Option<String>,
    wip_branch: Option<String>,
    wip_base: Option<String>,
    wip_commit: Option<String>,
}

impl AgentRow {
    fn checkpoint(&self) -> Option<Checkpoint> {
        match (&self.wip_branch, &self.wip_base, &self.wip_commit) {
            (Some(branch), Some(base), Some(commit)) => Some(Checkpoint {
                branch: branch.clone(),
                base: base.clone(),
                commit: commit.clone(),
            }),
            _ => None,
        }
    }
}

impl RawJob {
    /// Reads [`JOB_COLS`].
    fn read(r: &rusqlite::Row<'_>) -> rusqlite::Result<RawJob> {
        Ok(RawJob {
            row: JobRow::read(r)?,
            spec: SpecRow {
                title: r.get(15)?,
                deps: r.get(16)?,
                spec: r.get(17)?,
            },
            agent: AgentRow {
                session_id: r.get(18)?,
                wip_branch: r.get(19)?,
                wip_base: r.get(20)?,
                wip_commit: r.get(21)?,
            },
        })
    }

    fn into_job(self) -> Result<Job> {
        let RawJob { row, spec, agent } = self;
        let deps: Vec<i64> = parse_json("job deps", &spec.deps)?;
        Ok(Job {
            id: JobId(row.id),
            state: parse_state(&row.state)?,
            title: spec.title,
            priority: u8::try_from(row.priority)
                .map_err(|_| corrupt(format!("priority {} out of range", row.priority)))?,
            attempt: to_u32("attempt", row.attempt)?,
            max_attempts: to_u32("max_attempts", row.max_attempts)?,
            epoch: row.epoch,
            lock: row.lock_key,
            deps: deps.into_iter().map(JobId).collect(),
            deps_mode: parse_deps_mode(&row.deps_mode)?,
            idempotency_key: row.idempotency_key,
            stop_requested: parse_stop(row.stop_requested.as_deref())?,
            reason: row.reason,
            not_before: row.not_before,
            created_at: row.created_at,
            started_at: row.started_at,
            finished_at: row.finished_at,
            spec: parse_json("job spec", &spec.spec)?,
            checkpoint: agent.checkpoint(),
            session_id: agent.session_id,
            insights: None,
            runs: Vec::new(),
        })
    }
}

/// A run row as stored, before its text columns are parsed.
struct RawRun {
    id: i64,
    job_id: i64,
    attempt: i64,
    epoch: i64,
    factory_id: Option<i64>,
    outcome: Option<String>,
    exit_code: Option<i32>,
    error: Option<String>,
    branch: Option<String>,
    base_commit: Option<String>,
    commit: Option<String>,
    files_changed: Option<i64>,
    lines_added: Option<i64>,
    lines_deleted: Option<i64>,
    started_at: i64,
    finished_at: Option<i64>,
    lease_expires_at: i64,
    insights: Option<String>,
}

fn read_run(r: &rusqlite::Row<'_>) -> rusqlite::Result<RawRun> {
    Ok(RawRun {
        id: r.get(0)?,
        job_id: r.get(1)?,
        attempt: r.get(2)?,
        epoch: r.get(3)?,
        factory_id: r.get(4)?,
        outcome: r.get(5)?,
        exit_code: r.get(6)?,
        error: r.get(7)?,
        branch: r.get(8)?,
        base_commit: r.get(9)?,
        commit: r.get(10)?,
        files_changed: r.get(11)?,
        lines_added: r.get(12)?,
        lines_deleted: r.get(13)?,
        started_at: r.get(14)?,
        finished_at: r.get(15)?,
        lease_expires_at: r.get(16)?,
        insights: r.get(17)?,
    })
}

impl RawRun {
    fn into_run(self) -> Result<Run> {
        Ok(Run {
            id: RunId(self.id),
            job_id: JobId(self.job_id),
            attempt: to_u32("attempt", self.attempt)?,
            epoch: self.epoch,
            factory_id: self.factory_id.map(FactoryId),
            outcome: self.outcome.as_deref().map(parse_outcome).transpose()?,
            exit_code: self.exit_code,
            error: self.error,
            branch: self.branch,
            base_commit: self.base_commit,
            commit: self.commit,
            files_changed: opt_u32("files_changed", self.files_changed)?,
            lines_added: opt_u32("lines_added", self.lines_added)?,
            lines_deleted: opt_u32("lines_deleted", self.lines_deleted)?,
            started_at: self.started_at,
            finished_at: self.finished_at,
            lease_expires_at: self.lease_expires_at,
            insights: self
                .insights
                .as_deref()
                .map(|text| parse_json("run insights", text))
                .transpose()?,
        })
    }
}

/// The columns [`read_token`] expects, in order.
const TOKEN_COLS: &str = "id, name, scope, created_at, revoked_at, factory_id";

/// A `tokens` row as stored, before its scope is parsed.
type TokenRow = (i64, String, String, i64, Option<i64>, Option<i64>);

fn read_token(r: &rusqlite::Row<'_>) -> rusqlite::Result<TokenRow> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
    ))
}

fn into_token(t: TokenRow) -> Result<TokenInfo> {
    Ok(TokenInfo {
        id: t.0,
        name: t.1,
        scope: parse_scope(&t.2)?,
        created_at: t.3,
        revoked_at: t.4,
        factory: t.5.map(FactoryId),
    })
}

/// A figure of a heartbeat as SQLite stores it (an INTEGER is signed).
fn mb_to_sql(v: Option<u64>) -> Option<i64> {
    v.map(|v| i64::try_from(v).unwrap_or(i64::MAX))
}

/// A stored figure of a heartbeat, refusing what no heartbeat could have sent.
fn mb_from_sql(what: &str, v: Option<i64>) -> Result<Option<u64>> {
    v.map(|v| u64::try_from(v).map_err(|_| corrupt(format!("{what} {v} is negative"))))
        .transpose()
}

/// Registers a factory by name (or updates the one of that name) and returns its id.
fn register_tx(
    tx: &Connection,
    reg: &RegisterFactory,
    caps_json: &str,
    now: Millis,
) -> Result<i64> {
    Ok(tx
        .prepare_cached(
            "INSERT INTO factories (name, seats, capabilities, last_seen)
             VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (name) DO UPDATE SET seats = excluded.seats,
                 capabilities = excluded.capabilities, last_seen = excluded.last_seen
             RETURNING id",
        )?
        .query_row(params![reg.name, reg.seats, caps_json, now], |r| r.get(0))?)
}

/// Registers a factory for the token `token` (see
/// [`Store::register_factory_for_token`] and [`rules::registration`], which decides);
/// changes nothing when a binding is in the way.
fn register_for_token_tx(
    tx: &Connection,
    reg: &RegisterFactory,
    caps_json: &str,
    token: i64,
    now: Millis,
) -> Result<Binding> {
    let (name, scope, bound_to): (String, String, Option<String>) = tx
        .prepare_cached(
            "SELECT t.name, t.scope, f.name FROM tokens t
             LEFT JOIN factories f ON f.id = t.factory_id WHERE t.id = ?1",
        )?
        .query_row([token], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .optional()?
        .ok_or_else(|| not_found("token", token))?;
    let who = rules::Registrant {
        id: token,
        name,
        scope: parse_scope(&scope)?,
        bound_to,
    };
    type HolderRow = (Option<i64>, Option<String>, bool, Option<String>);
    let existing: Option<HolderRow> = tx
        .prepare_cached(
            "SELECT f.token_id, r.name, r.revoked_at IS NULL,
                 (SELECT t.name FROM tokens t WHERE t.factory_id = f.id
                      AND t.revoked_at IS NULL AND t.id <> ?2 LIMIT 1)
             FROM factories f LEFT JOIN tokens r ON r.id = f.token_id
             WHERE f.name = ?1",
        )?
        .query_row(params![reg.name, token], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })
        .optional()?;
    let holder = existing.map(
        |(registrar, registrar_name, live, bound_live)| rules::NameHolder {
            registrar: registrar.map(|id| (id, registrar_name.unwrap_or_default(), live)),
            bound_live,
        },
    );
    let (own, bind) = match rules::registration(&reg.name, &who, holder.as_ref()) {
        rules::Registration::Go { own, bind } => (own, bind),
        rules::Registration::Refused(binding) => return Ok(binding),
    };
    let id = register_tx(tx, reg, caps_json, now)?;
    if own {
        tx.prepare_cached("UPDATE factories SET token_id = ?2 WHERE id = ?1")?
            .execute(params![id, token])?;
    }
    if bind {
        tx.prepare_cached("UPDATE tokens SET factory_id = ?2 WHERE id = ?1")?
            .execute(params![token, id])?;
    }
    Ok(Binding::Bound(FactoryId(id)))
}

fn read_event(r: &rusqlite::Row<'_>) -> rusqlite::Result<(Event, String)> {
    Ok((
        Event {
            id: r.get(0)?,
            job_id: r.get::<_, Option<i64>>(1)?.map(JobId),
            run_id: r.get::<_, Option<i64>>(2)?.map(RunId),
            seq: r.get(3)?,
            kind: r.get(4)?,
            at: r.get(5)?,
            data: serde_json::Value::Null,
        },
        r.get(6)?,
    ))
}

fn load_job(tx: &Connection, id: JobId) -> Result<Job> {
    tx.prepare_cached(&format!("SELECT {JOB_COLS} FROM {JOB_FROM} WHERE id = ?1"))?
        .query_row([id.0], RawJob::read)
        .optional()?
        .ok_or_else(|| not_found("job", id))?
        .into_job()
}

/// The immutable part of a job. Writes that return a job return its `jobs` row (see
/// [`JobRow`]) and their callers read this on the read connection, after the commit:
/// the one thread that all writes share then spends no time copying or decoding it.
fn load_spec(tx: &Connection, id: JobId) -> Result<SpecRow> {
    tx.prepare_cached(LOAD_SPEC_SQL)?
        .query_row([id.0], |r| {
            Ok(SpecRow {
                title: r.get(0)?,
                deps: r.get(1)?,
                spec: r.get(2)?,
            })
        })
        .optional()?
        .ok_or_else(|| not_found("job", id))
}

/// Reads a job's agent state; the default when it has none.
fn load_agent(tx: &Connection, id: JobId) -> Result<AgentRow> {
    Ok(tx
        .prepare_cached(
            "SELECT session_id, wip_branch, wip_base, wip_commit FROM job_agent WHERE job_id = ?1",
        )?
        .query_row([id.0], |r| {
            Ok(AgentRow {
                session_id: r.get(0)?,
                wip_branch: r.get(1)?,
                wip_base: r.get(2)?,
                wip_commit: r.get(3)?,
            })
        })
        .optional()?
        .unwrap_or_default())
}

/// Applies what some events uploaded by a run mean for the store: a checkpoint moves the
/// job's work-in-progress pointer, an insights snapshot becomes the run's live figures.
fn apply_run_event(tx: &Connection, live: &Live, kind: &str, data: &str) -> Result<()> {
    match kind {
        ev::RUN_CHECKPOINT => {
            let cp: Checkpoint = serde_json::from_str(data).map_err(|e| {
                StoreError::Invalid(gantry_core::SpecError {
                    file: format!("event {kind} of run {}", live.run),
                    line: None,
                    field: Some("data".into()),
                    message: format!("a checkpoint needs wip_branch, wip_base and wip_commit: {e}"),
                })
            })?;
            tx.prepare_cached(
                "INSERT INTO job_agent (job_id, wip_branch, wip_base, wip_commit)
                 VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (job_id) DO UPDATE SET wip_branch = ?2, wip_base = ?3, wip_commit = ?4",
            )?
            .execute(params![live.job.0, cp.branch, cp.base, cp.commit])?;
        }
        ev::AGENT_INSIGHTS => {
            // Checked to be insights before it is kept as the run's figures.
            let insights: gantry_core::engine::Insights =
                serde_json::from_str(data).map_err(|e| {
                    StoreError::Invalid(gantry_core::SpecError {
                        file: format!("event {kind} of run {}", live.run),
                        line: None,
                        field: Some("data".into()),
                        message: format!("not a valid insights snapshot: {e}"),
                    })
                })?;
            save_insights(tx, live, &insights)?;
        }
        _ => {}
    }
    Ok(())
}

/// Stores a run's insights, and the agent session on its job so a retry can resume it.
fn save_insights(
    tx: &Connection,
    live: &Live,
    insights: &gantry_core::engine::Insights,
) -> Result<()> {
    let text = serde_json::to_string(insights)
        .map_err(|e| corrupt(format!("cannot encode insights: {e}")))?;
    tx.prepare_cached("UPDATE runs SET insights = ?2 WHERE id = ?1")?
        .execute(params![live.run.0, text])?;
    if let Some(session) = &insights.session_id {
        tx.prepare_cached(
            "INSERT INTO job_agent (job_id, session_id) VALUES (?1, ?2)
             ON CONFLICT (job_id) DO UPDATE SET session_id = ?2",
        )?
        .execute(params![live.job.0, session])?;
    }
    Ok(())
}

fn not_found(what: &'static str, id: impl std::fmt::Display) -> StoreError {
    StoreError::NotFound {
        what,
        id: id.to_string(),
    }
}

// ---------------------------------------------------------------------------------------
// The hot path's statements
//
// Claims and finishes run these for every job, so each is checked by a test: it must
// not be re-prepared when its bound values change, and must need no temporary table.
// Two rules keep them so. (1) No join with `= ?` terms: SQLite plans a join by the
// bound value and re-prepares it whenever that value moves to or from 0 or 1. (2) No
// RETURNING and no `IN (...)` list in a checked constraint: both build a temporary
// table at every execution.
// ---------------------------------------------------------------------------------------

/// A factory's capabilities and whether claiming is paused (one table and a scalar
/// subquery, not a join).
const CLAIM_FACTORY_SQL: &str =
    "SELECT capabilities, (SELECT paused FROM queue WHERE id = 1) FROM factories WHERE id = ?1";

/// The queued jobs in claim order (a range scan of `jobs_claim`), skipping those not
/// yet due and those whose lock a running job holds.
const CLAIM_SCAN_SQL: &str = "SELECT q.id, q.attempt, q.epoch, q.event_seq, q.capabilities
     FROM jobs q INDEXED BY jobs_claim
     WHERE q.state = 'queued'
       AND (q.not_before IS NULL OR q.not_before <= ?1)
       AND (q.lock_key IS NULL OR NOT EXISTS
             (SELECT 1 FROM jobs r WHERE r.state = 'running' AND r.lock_key = q.lock_key))
     ORDER BY q.priority DESC, q.id";

const RUN_INSERT_SQL: &str =
    "INSERT INTO runs (job_id, attempt, epoch, factory_id, started_at, lease_expires_at)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6)";

/// Claims a queued job (`to` is what [`state::next`] says a claim leads to).
fn claim_update_sql(to: JobState) -> String {
    format!(
        "UPDATE jobs SET state = '{to}', attempt = ?2, epoch = ?3, current_run = ?4,
             started_at = COALESCE(started_at, ?5), not_before = NULL, reason = NULL,
             stop_requested = NULL, event_seq = ?6
         WHERE id = ?1 AND state = 'queued'"
    )
}

/// The fence's first lookup: a run's job and epoch.
const FENCE_RUN_SQL: &str = "SELECT job_id, epoch FROM runs WHERE id = ?1";

/// The fence's second lookup: the job's row and what ending its attempt needs.
fn fence_job_sql() -> String {
    format!(
        "SELECT {JOB_ROW_COLS}, current_run, retry_on, backoff_ms, event_seq
         FROM jobs WHERE id = ?1"
    )
}

const FINISH_RUN_SQL: &str =
    "UPDATE runs SET outcome = ?2, exit_code = ?3, error = ?4, branch = ?5, base_commit = ?6,
         commit_sha = ?7, files_changed = ?8, lines_added = ?9, lines_deleted = ?10,
         finished_at = ?11
     WHERE id = ?1";

/// Moves a job between states. The states are written into the SQL, not bound: a bound
/// value compared with a partial index's condition makes SQLite re-prepare the
/// statement whenever the value changes. They come from a closed enum, and there are
/// few combinations.
fn step_sql(from: JobState, to: JobState) -> String {
    let keep_stop = if to == JobState::Running {
        "stop_requested"
    } else {
        "NULL"
    };
    format!(
        "UPDATE jobs SET state = '{to}', reason = ?2, not_before = ?3, finished_at = ?4,
             stop_requested = {keep_stop}, event_seq = ?5
         WHERE id = ?1 AND state = '{from}'"
    )
}

/// Inserts `n` events of one job: `?1` job, `?2` time, then run, seq, kind and data of
/// each.
fn events_insert_sql(n: usize) -> String {
    let mut sql = String::from("INSERT INTO events (job_id, at, run_id, seq, kind, data) VALUES ");
    for i in 0..n {
        let p = 3 + 4 * i;
        if i > 0 {
            sql.push_str(", ");
        }
        sql.push_str(&format!(
            "(?1, ?2, ?{}, ?{}, ?{}, ?{})",
            p,
            p + 1,
            p + 2,
            p + 3
        ));
    }
    sql
}

const LOAD_SPEC_SQL: &str = "SELECT title, deps, spec FROM job_specs WHERE job_id = ?1";

// ---------------------------------------------------------------------------------------
// Events and transitions
// ---------------------------------------------------------------------------------------

/// Appends an event whose data is JSON text; a job's event takes the job's next `seq`.
/// Returns (id, seq).
fn add_event(
    tx: &Connection,
    job: Option<JobId>,
    run: Option<RunId>,
    kind: &str,
    data: &str,
    now: Millis,
) -> Result<(i64, i64)> {
    let seq = match job {
        Some(job) => take_seqs(tx, job, 1)?,
        None => 0,
    };
    insert_events(
        tx,
        job,
        &[EventRow {
            run: run.map(|r| r.0),
            seq,
            kind,
            data,
        }],
        now,
    )?;
    Ok((tx.last_insert_rowid(), seq))
}

/// Takes the next `n` seqs of a job's events; returns the last one.
fn take_seqs(tx: &Connection, job: JobId, n: i64) -> Result<i64> {
    tx.prepare_cached(
        "UPDATE jobs SET event_seq = event_seq + ?2 WHERE id = ?1 RETURNING event_seq",
    )?
    .query_row([job.0, n], |r| r.get::<_, i64>(0))
    .optional()?
    .ok_or_else(|| not_found("job", job))
}

/// An event row to insert, whose `seq` the caller already took from its job.
struct EventRow<'a> {
    run: Option<i64>,
    seq: i64,
    kind: &'a str,
    /// JSON text.
    data: &'a str,
}

/// Inserts event rows of one job (or job-less ones) in one statement.
fn insert_events(
    tx: &Connection,
    job: Option<JobId>,
    rows: &[EventRow<'_>],
    now: Millis,
) -> Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let job = job.map(|j| j.0);
    let mut values: Vec<&dyn rusqlite::ToSql> = Vec::with_capacity(2 + 4 * rows.len());
    values.push(&job);
    values.push(&now);
    for r in rows {
        values.extend([&r.run as &dyn rusqlite::ToSql, &r.seq, &r.kind, &r.data]);
    }
    tx.prepare_cached(&events_insert_sql(rows.len()))?
        .execute(values.as_slice())?;
    Ok(())
}

/// The data of a `job.state` event.
fn state_data(from: JobState, to: JobState, reason: Option<&str>) -> String {
    // The states are plain words; only the reason needs JSON quoting.
    let reason = serde_json::to_string(&reason).unwrap_or_else(|_| "null".into());
    format!(r#"{{"from":"{from}","to":"{to}","reason":{reason}}}"#)
}

/// An event recorded together with a state change, just before its `job.state`.
struct Pending<'a> {
    run: Option<RunId>,
    kind: &'a str,
    /// JSON text.
    data: String,
}

fn action_of(input: Input) -> &'static str {
    match input {
        Input::DepsMet | Input::DepFailed => "settle dependencies",
        Input::Claim => "claim",
        Input::AttemptEnded { .. } => "end attempt",
        Input::Cancel => "cancel",
        Input::Kill => "kill",
        Input::Retry { .. } => "retry",
    }
}

/// A job after [`step`].
struct Stepped {
    to: JobState,
    effect: Effect,
}

/// Moves a job from `from` by `input` through [`state::next`], recording the `pending`
/// events and then `job.state` (one update of the job, one insert of the events), and
/// returns the new state and the effect. `seq` is the job's `event_seq` when the
/// caller has just read it in this transaction (else it is read here). Does not settle
/// dependents: see [`transition`]. [`JobRow::apply_step`] makes the same change to a
/// row read before.
#[allow(clippy::too_many_arguments)]
fn step(
    tx: &Connection,
    job: JobId,
    from: JobState,
    input: Input,
    reason: Option<&str>,
    not_before: Option<Millis>,
    now: Millis,
    seq: Option<i64>,
    pending: &[Pending<'_>],
) -> Result<Stepped> {
    let (to, effect) = state::next(from, input).map_err(|_| StoreError::WrongState {
        job,
        state: from,
        action: action_of(input),
    })?;
    if to == from {
        for p in pending {
            add_event(tx, Some(job), p.run, p.kind, &p.data, now)?;
        }
        return Ok(Stepped { to, effect });
    }
    let seq = match seq {
        Some(seq) => seq,
        None => tx
            .prepare_cached("SELECT event_seq FROM jobs WHERE id = ?1")?
            .query_row([job.0], |r| r.get::<_, i64>(0))
            .optional()?
            .ok_or_else(|| not_found("job", job))?,
    };
    let finished_at = to.is_terminal().then_some(now);
    let n = pending.len() as i64 + 1;
    let last_seq = seq + n;
    let updated = tx.prepare_cached(&step_sql(from, to))?.execute(params![
        job.0,
        reason,
        not_before,
        finished_at,
        last_seq
    ])?;
    if updated != 1 {
        return Err(corrupt(format!(
            "job {job} was not {from} when moving it to {to}"
        )));
    }
    let state = state_data(from, to, reason);
    let first_seq = last_seq - n + 1;
    let rows: Vec<EventRow<'_>> = pending
        .iter()
        .map(|p| (p.run.map(|r| r.0), p.kind, p.data.as_str()))
        .chain(std::iter::once((None, ev::JOB_STATE, state.as_str())))
        .zip(first_seq..)
        .map(|((run, kind, data), seq)| EventRow {
            run,
            seq,
            kind,
            data,
        })
        .collect();
    insert_events(tx, Some(job), &rows, now)?;
    Ok(Stepped { to, effect })
}

/// [`step`], then, when the job reached a terminal state, re-evaluates its blocked
/// dependents (transitively) in the same transaction.
#[allow(clippy::too_many_arguments)]
fn transition(
    tx: &Connection,
    job: JobId,
    from: JobState,
    input: Input,
    reason: Option<&str>,
    not_before: Option<Millis>,
    now: Millis,
    seq: Option<i64>,
    pending: &[Pending<'_>],
) -> Result<Stepped> {
    let stepped = step(tx, job, from, input, reason, not_before, now, seq, pending)?;
    if stepped.to != from && stepped.to.is_terminal() {
        settle_dependents(tx, job, now)?;
    }
    Ok(stepped)
}

/// What a blocked job's dependencies say.
#[derive(Debug, PartialEq)]
enum DepsVerdict {
    /// Some dependency has not finished (well enough) yet.
    Wait,
    /// Every dependency is satisfied.
    Met,
    /// A dependency ended badly and the job needs every one to succeed.
    Failed(String),
}

fn judge_deps(mode: DepsMode, deps: &[(i64, JobState)]) -> DepsVerdict {
    match mode {
        DepsMode::Succeeded => {
            if let Some((id, st)) = deps
                .iter()
                .find(|(_, st)| st.is_terminal() && *st != JobState::Succeeded)
            {
                return DepsVerdict::Failed(format!("dependency {id} {st}"));
            }
            if deps.iter().all(|(_, st)| *st == JobState::Succeeded) {
                DepsVerdict::Met
            } else {
                DepsVerdict::Wait
            }
        }
        DepsMode::Finished => {
            if deps.iter().all(|(_, st)| st.is_terminal()) {
                DepsVerdict::Met
            } else {
                DepsVerdict::Wait
            }
        }
    }
}

fn deps_verdict(tx: &Connection, job: JobId, mode: DepsMode) -> Result<DepsVerdict> {
    let mut stmt = tx.prepare_cached(
        "SELECT d.dep_id, (SELECT j.state FROM jobs j WHERE j.id = d.dep_id) FROM job_deps d
         WHERE d.job_id = ?1",
    )?;
    let rows = stmt
        .query_map([job.0], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let deps = rows
        .into_iter()
        .map(|(id, st)| Ok((id, parse_state(&st)?)))
        .collect::<Result<Vec<_>>>()?;
    Ok(judge_deps(mode, &deps))
}

/// Re-evaluates a blocked job; returns its new state when it moved.
fn settle_blocked(tx: &Connection, job: JobId, now: Millis) -> Result<Option<JobState>> {
    let mode: Option<String> = tx
        .prepare_cached("SELECT deps_mode FROM jobs WHERE id = ?1 AND state = 'blocked'")?
        .query_row([job.0], |r| r.get(0))
        .optional()?;
    let Some(mode) = mode else {
        return Ok(None);
    };
    let (input, reason) = match deps_verdict(tx, job, parse_deps_mode(&mode)?)? {
        DepsVerdict::Wait => return Ok(None),
        DepsVerdict::Met => (Input::DepsMet, None),
        DepsVerdict::Failed(reason) => (Input::DepFailed, Some(reason)),
    };
    let stepped = step(
        tx,
        job,
        JobState::Blocked,
        input,
        reason.as_deref(),
        None,
        now,
        None,
        &[],
    )?;
    Ok(Some(stepped.to))
}

/// Re-evaluates the blocked dependents of a job that just reached a terminal state,
/// following cancellations transitively (with a work list, so long chains do not
/// deepen the stack).
fn settle_dependents(tx: &Connection, job: JobId, now: Millis) -> Result<()> {
    let mut work = vec![job];
    while let Some(done) = work.pop() {
        let dependents: Vec<i64> = tx
            .prepare_cached("SELECT job_id FROM job_deps WHERE dep_id = ?1")?
            .query_map([done.0], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        for dep in dependents {
            if let Some(to) = settle_blocked(tx, JobId(dep), now)?
                && to.is_terminal()
            {
                work.push(JobId(dep));
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Fencing
// ---------------------------------------------------------------------------------------

/// A running job as a fenced write sees it.
struct Live {
    job: JobId,
    run: RunId,
    attempt: u32,
    max_attempts: u32,
    retry_on: String,
    backoff_ms: u64,
    stop: Option<StopKind>,
    /// The job's `event_seq`.
    seq: i64,
    /// The job's row, when the fence read it (a finish returns it, changed).
    row: Option<JobRow>,
}

/// Checks that `run` is the current run of a job running under `epoch`. When it is not,
/// records `lease.stale_write_rejected` and returns the error to give the writer.
fn check_fence(
    tx: &Connection,
    run: RunId,
    epoch: i64,
    op: &str,
    now: Millis,
) -> Result<Result<Live, StoreError>> {
    // Two primary-key lookups rather than a join: SQLite plans a join with `= ?` terms
    // by the bound value and re-prepares it whenever that value moves to or from 0 or 1,
    // which costs more than the second lookup.
    let (job, run_epoch): (i64, i64) = tx
        .prepare_cached(FENCE_RUN_SQL)?
        .query_row([run.0], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?
        .ok_or_else(|| not_found("run", run))?;
    let (row, current, retry_on, backoff, seq): (JobRow, Option<i64>, String, i64, i64) =
        tx.prepare_cached(&fence_job_sql())?.query_row([job], |r| {
            Ok((
                JobRow::read(r)?,
                r.get(15)?,
                r.get(16)?,
                r.get(17)?,
                r.get(18)?,
            ))
        })?;
    let job_epoch = row.epoch;
    let job = JobId(job);
    let state = parse_state(&row.state)?;
    let live = state == JobState::Running
        && job_epoch == epoch
        && run_epoch == epoch
        && current == Some(run.0);
    if !live {
        let data = json!({"run": run.0, "epoch": epoch, "current_epoch": job_epoch, "op": op});
        add_event(
            tx,
            Some(job),
            Some(run),
            ev::STALE_WRITE_REJECTED,
            &data.to_string(),
            now,
        )?;
        tracing::warn!(%job, %run, epoch, current_epoch = job_epoch, %state, op, "stale write rejected");
        return Ok(Err(StoreError::StaleLease {
            job,
            run,
            epoch,
            current_epoch: job_epoch,
            state,
        }));
    }
    Ok(Ok(Live {
        job,
        run,
        attempt: to_u32("attempt", row.attempt)?,
        max_attempts: to_u32("max_attempts", row.max_attempts)?,
        retry_on,
        backoff_ms: u64::try_from(backoff).map_err(|_| corrupt(format!("backoff_ms {backoff}")))?,
        stop: parse_stop(row.stop_requested.as_deref())?,
        seq,
        row: Some(row),
    }))
}

/// Ends the running attempt of `live` with `outcome`: applies the retry policy (a stop
/// request wins over it and decides the state), and moves the job on, recording the
/// `pending` events (what ended the attempt) before its `job.state`.
fn end_attempt(
    tx: &Connection,
    live: &Live,
    outcome: Outcome,
    now: Millis,
    pending: &[Pending<'_>],
) -> Result<(JobState, Option<JobRow>)> {
    let retry_on = parse_retry_on(&live.retry_on)?;
    let AttemptEnd {
        outcome,
        retry,
        not_before,
        reason,
    } = attempt_end(
        outcome,
        live.stop,
        (live.attempt, live.max_attempts),
        &retry_on,
        live.backoff_ms,
        now,
    );
    let stepped = transition(
        tx,
        live.job,
        JobState::Running,
        Input::AttemptEnded { outcome, retry },
        reason.as_deref(),
        not_before,
        now,
        Some(live.seq),
        pending,
    )?;
    let row = live.row.clone().map(|mut row| {
        row.apply_step(stepped.to, reason.as_deref(), not_before, now);
        row
    });
    Ok((stepped.to, row))
}

// ---------------------------------------------------------------------------------------
// Operations
// ---------------------------------------------------------------------------------------

/// The job stored under the idempotency key `key` of `owner` (see
/// [`rules::key_owner`]); keys stored before keys were scoped
/// ([`rules::UNSCOPED_KEYS`]) are every owner's, the owner's own first.
fn lookup_key(tx: &Connection, owner: i64, key: &str) -> Result<Option<JobId>> {
    Ok(tx
        .prepare_cached(
            "SELECT id FROM jobs WHERE idempotency_key = ?2 AND submitter IN (?1, ?3)
             ORDER BY submitter = ?1 DESC LIMIT 1",
        )?
        .query_row(params![owner, key, rules::UNSCOPED_KEYS], |r| r.get(0))
        .optional()?
        .map(JobId))
}

/// The spec (JSON text) of a stored job.
fn stored_spec(tx: &Connection, id: JobId) -> Result<String> {
    tx.prepare_cached("SELECT spec FROM job_specs WHERE job_id = ?1")?
        .query_row([id.0], |r| r.get(0))
        .optional()?
        .ok_or_else(|| corrupt(format!("job {id} has no spec")))
}

fn job_exists(tx: &Connection, id: JobId) -> Result<bool> {
    Ok(tx
        .prepare_cached("SELECT 1 FROM jobs WHERE id = ?1")?
        .exists([id.0])?)
}

fn run_exists(tx: &Connection, id: RunId) -> Result<bool> {
    Ok(tx
        .prepare_cached("SELECT 1 FROM runs WHERE id = ?1")?
        .exists([id.0])?)
}

fn submit_tx(
    tx: &Connection,
    jobs: &[ParsedJob],
    submitter: Option<i64>,
    now: Millis,
) -> Result<Vec<Submitted>> {
    let owner = rules::key_owner(submitter);
    // 1. Idempotency: which entries are new, and which name a job stored earlier (or an
    //    earlier entry of this batch with the same key); a key reused with a different
    //    spec refuses the batch.
    enum Slot {
        Existing(JobId),
        SameAs(usize),
        New(usize),
    }
    let mut slots = Vec::with_capacity(jobs.len());
    let mut news: Vec<usize> = Vec::new();
    let mut batch_keys: HashMap<&str, usize> = HashMap::new();
    for (i, pj) in jobs.iter().enumerate() {
        if let Some(key) = pj.spec.idempotency_key.as_deref() {
            if let Some(&n) = batch_keys.get(key) {
                rules::check_batch_key_reuse(pj, key, &jobs[news[n]])?;
                slots.push(Slot::SameAs(n));
                continue;
            }
            if let Some(id) = lookup_key(tx, owner, key)? {
                rules::check_key_reuse(pj, key, id, &stored_spec(tx, id)?)?;
                slots.push(Slot::Existing(id));
                continue;
            }
            batch_keys.insert(key, news.len());
        }
        slots.push(Slot::New(news.len()));
        news.push(i);
    }

    // 2. Resolve every new job's deps.
    let mut edges: Vec<Vec<(Target, &DepRef)>> = Vec::with_capacity(news.len());
    for &i in &news {
        let pj = &jobs[i];
        let mut targets: Vec<(Target, &DepRef)> = Vec::new();
        for dep in &pj.spec.deps {
            let target = match dep {
                DepRef::Id(id) => job_exists(tx, *id)?.then_some(Target::Stored(*id)),
                DepRef::Key(key) => match batch_keys.get(key.as_str()) {
                    Some(&n) => Some(Target::New(n)),
                    None => match lookup_key(tx, owner, key)? {
                        Some(id) => Some(Target::Stored(id)),
                        // A number written as a string ("12") matching no key is an id.
                        None => match key.trim().parse::<JobId>() {
                            Ok(id) if job_exists(tx, id)? => Some(Target::Stored(id)),
                            _ => None,
                        },
                    },
                },
            };
            let Some(target) = target else {
                return Err(pj
                    .error(
                        "deps",
                        format!("unknown dependency {dep}: no job has this id or idempotency key"),
                    )
                    .into());
            };
            targets.push((target, dep));
        }
        edges.push(targets);
    }

    // 3. Cycles among the new jobs (stored jobs cannot depend on new ones), and an order
    //    in which every new job comes after its new deps.
    let order = topo_order(jobs, &news, &edges)?;

    // 4. Store the new jobs in batch order, so ids follow submission order.
    let mut ids = Vec::with_capacity(news.len());
    for &i in &news {
        let spec = &jobs[i].spec;
        let state = if spec.deps.is_empty() {
            JobState::Queued
        } else {
            JobState::Blocked
        };
        let retry_on: Vec<&str> = spec.retry_on.iter().map(|o| o.as_str()).collect();
        let spec_json = serde_json::to_string(spec)
            .map_err(|e| corrupt(format!("cannot encode job spec: {e}")))?;
        let caps_json = serde_json::to_string(&spec.capabilities)
            .map_err(|e| corrupt(format!("cannot encode capabilities: {e}")))?;
        tx.prepare_cached(
            "INSERT INTO jobs (state, priority, max_attempts, lock_key, deps_mode,
                 idempotency_key, submitter, capabilities, retry_on, backoff_ms, created_at,
                 event_seq)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, 1)",
        )?
        .execute(params![
            state.as_str(),
            spec.priority,
            spec.max_attempts.max(1),
            spec.lock,
            deps_mode_str(spec.deps_mode),
            spec.idempotency_key,
            spec.idempotency_key.as_ref().map(|_| owner),
            caps_json,
            retry_on.join(","),
            i64::try_from(spec.backoff_ms).unwrap_or(i64::MAX),
            now,
        ])?;
        let id = tx.last_insert_rowid();
        tx.prepare_cached("INSERT INTO job_specs (job_id, title, spec) VALUES (?1, ?2, ?3)")?
            .execute(params![id, spec.title, spec_json])?;
        let data = json!({"title": spec.title, "state": state.as_str()}).to_string();
        tx.prepare_cached(
            "INSERT INTO events (job_id, run_id, seq, kind, at, data) VALUES (?1, NULL, 1, ?2, ?3, ?4)",
        )?
        .execute(params![id, ev::JOB_SUBMITTED, now, data])?;
        ids.push(JobId(id));
    }

    // 5. Dependency rows, then settle the blocked jobs, deps first.
    for (n, targets) in edges.iter().enumerate() {
        if targets.is_empty() {
            continue;
        }
        let mut seen = HashSet::new();
        let mut dep_ids = Vec::new();
        for (t, _) in targets {
            let id = match *t {
                Target::Stored(id) => id,
                Target::New(m) => ids[m],
            };
            if seen.insert(id) {
                dep_ids.push(id.0);
                tx.prepare_cached("INSERT INTO job_deps (job_id, dep_id) VALUES (?1, ?2)")?
                    .execute(params![ids[n].0, id.0])?;
            }
        }
        let json = serde_json::to_string(&dep_ids).map_err(|e| corrupt(e.to_string()))?;
        tx.prepare_cached("UPDATE job_specs SET deps = ?2 WHERE job_id = ?1")?
            .execute(params![ids[n].0, json])?;
    }
    for n in order {
        if edges[n].is_empty() {
            continue;
        }
        if let Some(to) = settle_blocked(tx, ids[n], now)?
            && to.is_terminal()
        {
            settle_dependents(tx, ids[n], now)?;
        }
    }

    Ok(slots
        .into_iter()
        .map(|s| match s {
            Slot::Existing(id) => Submitted { id, existing: true },
            Slot::SameAs(n) => Submitted {
                id: ids[n],
                existing: true,
            },
            Slot::New(n) => Submitted {
                id: ids[n],
                existing: false,
            },
        })
        .collect())
}

/// A claim as the writer makes it: the caller reads the job's spec after the commit
/// (see [`load_spec`]).
struct RawClaim {
    job: JobId,
    run: Lease,
}

fn claim_tx(
    tx: &Connection,
    factory: FactoryId,
    ttl: Duration,
    now: Millis,
) -> Result<Option<RawClaim>> {
    let (fcaps, paused): (String, bool) = tx
        .prepare_cached(CLAIM_FACTORY_SQL)?
        .query_row([factory.0], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?
        .ok_or_else(|| not_found("factory", factory))?;
    if paused {
        return Ok(None);
    }
    let mut fcaps_parsed: Option<Vec<String>> = None;
    // Walk the queued jobs in claim order (an index range scan on jobs_claim), skipping
    // those not yet due and those whose lock a running job holds; capabilities are
    // checked here because their matching rule is not SQL.
    let chosen = {
        let mut stmt = tx.prepare_cached(CLAIM_SCAN_SQL)?;
        let mut rows = stmt.query([now])?;
        let mut chosen = None;
        while let Some(row) = rows.next()? {
            let need = row.get_ref(4)?.as_str().map_err(rusqlite::Error::from)?;
            if need != "[]" {
                let need: Vec<String> = parse_json("job capabilities", need)?;
                let have = match &mut fcaps_parsed {
                    Some(have) => have,
                    none => none.insert(parse_json("factory capabilities", &fcaps)?),
                };
                if !caps::satisfies(have, &need) {
                    continue;
                }
            }
            chosen = Some((
                JobId(row.get(0)?),
                row.get::<_, i64>(1)?,
                row.get::<_, i64>(2)?,
                row.get::<_, i64>(3)?,
            ));
            break;
        }
        chosen
    };
    let Some((job, attempt, epoch, seq)) = chosen else {
        return Ok(None);
    };
    let (to, _) =
        state::next(JobState::Queued, Input::Claim).map_err(|e| corrupt(e.to_string()))?;
    let attempt = attempt + 1;
    let epoch = epoch + 1;
    let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
    let expires = now.saturating_add(i64::try_from(ttl_ms).unwrap_or(i64::MAX));
    tx.prepare_cached(RUN_INSERT_SQL)?
        .execute(params![job.0, attempt, epoch, factory.0, now, expires])?;
    let run = RunId(tx.last_insert_rowid());
    // The job's two new events take the next two seqs; the job was read in this
    // transaction, which holds the write lock, so nothing moved it in between.
    let updated = tx.prepare_cached(&claim_update_sql(to))?.execute(params![
        job.0,
        attempt,
        epoch,
        run.0,
        now,
        seq + 2
    ])?;
    if updated != 1 {
        return Err(corrupt(format!(
            "job {job} was not queued when claiming it"
        )));
    }
    let state = state_data(JobState::Queued, to, None);
    let claimed = format!(
        r#"{{"run":{},"attempt":{attempt},"epoch":{epoch},"factory":{},"lease_expires_at":{expires}}}"#,
        run.0, factory.0
    );
    insert_events(
        tx,
        Some(job),
        &[
            EventRow {
                run: None,
                seq: seq + 1,
                kind: ev::JOB_STATE,
                data: &state,
            },
            EventRow {
                run: Some(run.0),
                seq: seq + 2,
                kind: ev::RUN_CLAIMED,
                data: &claimed,
            },
        ],
        now,
    )?;
    Ok(Some(RawClaim {
        job,
        run: Lease {
            id: run,
            attempt: to_u32("attempt", attempt)?,
            epoch,
            lease_expires_at: expires,
            lease_ttl_ms: ttl_ms,
        },
    }))
}

fn finish_tx(tx: &Connection, live: &Live, report: &FinishReport, now: Millis) -> Result<JobRow> {
    let outcome = crate::rules::report_outcome(live.run, report)?;
    tx.prepare_cached(FINISH_RUN_SQL)?.execute(params![
        live.run.0,
        outcome.as_str(),
        report.exit_code,
        report.error,
        report.branch,
        report.base_commit,
        report.commit,
        report.files_changed,
        report.lines_added,
        report.lines_deleted,
        now,
    ])?;
    if let Some(diff) = &report.diff {
        tx.prepare_cached("INSERT INTO run_diffs (run_id, patch) VALUES (?1, ?2)")?
            .execute(params![live.run.0, diff])?;
    }
    let data = crate::rules::finished_data(outcome, report)?;
    if let Some(insights) = &report.insights {
        save_insights(tx, live, insights)?;
    }
    let finished = Pending {
        run: Some(live.run),
        kind: ev::RUN_FINISHED,
        data,
    };
    end_attempt(tx, live, outcome, now, &[finished])?
        .1
        .ok_or_else(|| corrupt(format!("job {} was read without its row", live.job)))
}

fn reap_tx(tx: &Connection, now: Millis) -> Result<Vec<RunId>> {
    type Row = (i64, i64, i64, i64, i64, String, i64, Option<String>, i64);
    let expired: Vec<Row> = tx
        .prepare_cached(
            "SELECT j.id, r.id, j.epoch, j.attempt, j.max_attempts, j.retry_on, j.backoff_ms,
                    j.stop_requested, j.event_seq
             FROM jobs j INDEXED BY jobs_running_lock JOIN runs r ON r.id = j.current_run
             WHERE j.state = 'running' AND r.lease_expires_at < ?1 ORDER BY j.id",
        )?
        .query_map([now], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
                r.get(6)?,
                r.get(7)?,
                r.get(8)?,
            ))
        })?
        .collect::<rusqlite::Result<_>>()?;
    let mut reaped = Vec::with_capacity(expired.len());
    // Each job's events only change below, once, so the seqs read above stay current.
    for (job, run, epoch, attempt, max_attempts, retry_on, backoff, stop, seq) in expired {
        let live = Live {
            job: JobId(job),
            run: RunId(run),
            attempt: to_u32("attempt", attempt)?,
            max_attempts: to_u32("max_attempts", max_attempts)?,
            retry_on,
            backoff_ms: u64::try_from(backoff).unwrap_or(0),
            stop: parse_stop(stop.as_deref())?,
            seq,
            row: None,
        };
        tx.prepare_cached(
            "UPDATE runs SET outcome = 'lost', finished_at = ?2 WHERE id = ?1 AND outcome IS NULL",
        )?
        .execute(params![run, now])?;
        let expired = Pending {
            run: Some(live.run),
            kind: ev::LEASE_EXPIRED,
            data: format!(r#"{{"run":{run},"epoch":{epoch}}}"#),
        };
        let to = end_attempt(tx, &live, Outcome::Lost, now, &[expired])?.0;
        tracing::info!(job, run, epoch, %to, "lease expired");
        reaped.push(live.run);
    }
    Ok(reaped)
}

/// Cancels or kills a job: at once when it is not running, else by recording the stop
/// request that its factory sees on its next renew.
fn stop_tx(tx: &Connection, id: JobId, kind: StopKind, now: Millis) -> Result<Job> {
    let row: Option<(String, Option<String>, Option<i64>)> = tx
        .prepare_cached("SELECT state, stop_requested, current_run FROM jobs WHERE id = ?1")?
        .query_row([id.0], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .optional()?;
    let (st, stop, current_run) = row.ok_or_else(|| not_found("job", id))?;
    let state = parse_state(&st)?;
    let (input, reason) = match kind {
        StopKind::Cancel => (Input::Cancel, "canceled on request"),
        StopKind::Kill => (Input::Kill, "killed on request"),
    };
    let effect = transition(tx, id, state, input, Some(reason), None, now, None, &[])?.effect;
    let requested = match effect {
        Effect::None => None,
        Effect::RequestCancel => Some((StopKind::Cancel, ev::JOB_CANCEL_REQUESTED)),
        Effect::RequestKill => Some((StopKind::Kill, ev::JOB_KILL_REQUESTED)),
    };
    if let Some((want, kind)) = requested {
        // A kill already asked for is stronger than a later cancel: keep it.
        let keep_kill = parse_stop(stop.as_deref())? == Some(StopKind::Kill);
        if !keep_kill {
            tx.prepare_cached("UPDATE jobs SET stop_requested = ?2 WHERE id = ?1")?
                .execute(params![id.0, want.as_str()])?;
        }
        add_event(tx, Some(id), current_run.map(RunId), kind, "{}", now)?;
    }
    load_job(tx, id)
}

fn retry_tx(tx: &Connection, id: JobId, now: Millis) -> Result<Job> {
    let job = load_job(tx, id)?;
    if !matches!(
        job.state,
        JobState::Failed | JobState::Canceled | JobState::Killed
    ) {
        return Err(StoreError::WrongState {
            job: id,
            state: job.state,
            action: "retry",
        });
    }
    let deps_met = deps_verdict(tx, id, job.deps_mode)? == DepsVerdict::Met;
    tx.prepare_cached(
        "UPDATE jobs SET max_attempts = max(max_attempts, attempt + 1), stop_requested = NULL
         WHERE id = ?1",
    )?
    .execute([id.0])?;
    let reason = if deps_met {
        "retry requested"
    } else {
        "retry requested; waiting for dependencies"
    };
    transition(
        tx,
        id,
        job.state,
        Input::Retry { deps_met },
        Some(reason),
        None,
        now,
        None,
        &[],
    )?;
    load_job(tx, id)
}

fn set_paused_tx(tx: &Connection, paused: bool, now: Millis) -> Result<()> {
    let changed = tx
        .prepare_cached("UPDATE queue SET paused = ?1 WHERE id = 1 AND paused != ?1")?
        .execute([paused])?;
    if changed > 0 {
        let kind = if paused {
            ev::QUEUE_PAUSED
        } else {
            ev::QUEUE_RESUMED
        };
        add_event(tx, None, None, kind, "{}", now)?;
    }
    Ok(())
}

fn is_unique_violation(e: &rusqlite::Error) -> bool {
    matches!(
        e,
        rusqlite::Error::SqliteFailure(f, _)
            if f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
    )
}

#[async_trait]
impl Store for SqliteStore {
    async fn submit_as(
        &self,
        jobs: Vec<ParsedJob>,
        submitter: Option<i64>,
    ) -> Result<Vec<Submitted>> {
        self.write(move |tx, now| submit_tx(tx, &jobs, submitter, now))
            .await
    }

    async fn job(&self, id: JobId) -> Result<Job> {
        self.read_one(move |tx| load_job(tx, id)).await
    }

    async fn jobs(&self, filter: &JobFilter) -> Result<Vec<Job>> {
        let limit = filter
            .limit
            .map(|l| i64::try_from(l).unwrap_or(i64::MAX))
            .unwrap_or(-1);
        // With no cursor, every id is below the largest one: one range scan either way.
        let before = filter.before.map_or(i64::MAX, |id| id.0);
        let state = filter.state;
        self.read(move |tx| {
            let raws = match state {
                Some(st) => tx
                    .prepare_cached(&format!(
                        "SELECT {JOB_LIST_COLS} FROM {JOB_FROM}
                         WHERE state = ?1 AND id < ?2 ORDER BY id DESC LIMIT ?3"
                    ))?
                    .query_map(params![st.as_str(), before, limit], RawJob::read)?
                    .collect::<rusqlite::Result<Vec<_>>>()?,
                None => tx
                    .prepare_cached(&format!(
                        "SELECT {JOB_LIST_COLS} FROM {JOB_FROM}
                         WHERE id < ?1 ORDER BY id DESC LIMIT ?2"
                    ))?
                    .query_map(params![before, limit], RawJob::read)?
                    .collect::<rusqlite::Result<Vec<_>>>()?,
            };
            raws.into_iter().map(RawJob::into_job).collect()
        })
        .await
    }

    async fn run_diff(&self, run: RunId) -> Result<Option<String>> {
        self.read(move |tx| {
            let patch = tx
                .prepare_cached("SELECT patch FROM run_diffs WHERE run_id = ?1")?
                .query_row([run.0], |r| r.get(0))
                .optional()?;
            if patch.is_none() && !run_exists(tx, run)? {
                return Err(not_found("run", run));
            }
            Ok(patch)
        })
        .await
    }

    async fn runs(&self, job: JobId) -> Result<Vec<Run>> {
        self.read(move |tx| {
            if !job_exists(tx, job)? {
                return Err(not_found("job", job));
            }
            tx.prepare_cached(&format!(
                "SELECT {RUN_COLS} FROM runs WHERE job_id = ?1 ORDER BY id"
            ))?
            .query_map([job.0], read_run)?
            .collect::<rusqlite::Result<Vec<_>>>()?
            .into_iter()
            .map(RawRun::into_run)
            .collect()
        })
        .await
    }

    async fn run(&self, id: RunId) -> Result<Run> {
        self.read(move |tx| {
            tx.prepare_cached(&format!("SELECT {RUN_COLS} FROM runs WHERE id = ?1"))?
                .query_row([id.0], read_run)
                .optional()?
                .ok_or_else(|| not_found("run", id))?
                .into_run()
        })
        .await
    }

    async fn register_factory(&self, reg: &RegisterFactory) -> Result<FactoryId> {
        let reg = reg.clone();
        let caps_json = serde_json::to_string(&reg.capabilities)
            .map_err(|e| corrupt(format!("cannot encode capabilities: {e}")))?;
        self.write(move |tx, now| Ok(FactoryId(register_tx(tx, &reg, &caps_json, now)?)))
            .await
    }

    async fn register_factory_for_token(
        &self,
        reg: &RegisterFactory,
        token: i64,
    ) -> Result<Binding> {
        let reg = reg.clone();
        let caps_json = serde_json::to_string(&reg.capabilities)
            .map_err(|e| corrupt(format!("cannot encode capabilities: {e}")))?;
        self.write(move |tx, now| register_for_token_tx(tx, &reg, &caps_json, token, now))
            .await
    }

    async fn heartbeat(&self, factory: FactoryId, hb: &Heartbeat) -> Result<()> {
        let hb = hb.clone();
        self.write(move |tx, now| {
            let n = tx
                .prepare_cached(
                    "UPDATE factories SET last_seen = ?2, load_1m = ?3, free_memory_mb = ?4,
                         free_disk_mb = ?5, admission = ?6
                     WHERE id = ?1",
                )?
                .execute(params![
                    factory.0,
                    now,
                    hb.load_1m,
                    mb_to_sql(hb.free_memory_mb),
                    mb_to_sql(hb.free_disk_mb),
                    hb.admission,
                ])?;
            if n == 0 {
                return Err(not_found("factory", factory));
            }
            Ok(())
        })
        .await
    }

    async fn factories(&self) -> Result<Vec<FactoryInfo>> {
        type Row = (
            i64,
            String,
            i64,
            String,
            i64,
            Option<f64>,
            Option<i64>,
            Option<i64>,
            i64,
            Option<String>,
        );
        self.read(move |tx| {
            let now = now_millis();
            // Running jobs are found through `jobs_running_lock`, whose condition is
            // `state = 'running'`: it holds every running job, locked or not.
            let rows: Vec<Row> = tx
                .prepare_cached(
                    "SELECT f.id, f.name, f.seats, f.capabilities, f.last_seen, f.load_1m,
                            f.free_memory_mb, f.free_disk_mb, coalesce(c.n, 0), f.admission
                     FROM factories f
                     LEFT JOIN (SELECT r.factory_id AS fid, count(*) AS n
                                FROM jobs j JOIN runs r ON r.id = j.current_run
                                WHERE j.state = 'running'
                                GROUP BY r.factory_id) c ON c.fid = f.id
                     ORDER BY f.id",
                )?
                .query_map([], |r| {
                    Ok((
                        r.get(0)?,
                        r.get(1)?,
                        r.get(2)?,
                        r.get(3)?,
                        r.get(4)?,
                        r.get(5)?,
                        r.get(6)?,
                        r.get(7)?,
                        r.get(8)?,
                        r.get(9)?,
                    ))
                })?
                .collect::<rusqlite::Result<_>>()?;
            rows.into_iter()
                .map(
                    |(id, name, seats, caps, last_seen, load, mem, disk, running, admission)| {
                        Ok(FactoryInfo {
                            id: FactoryId(id),
                            name,
                            seats: to_u32("seats", seats)?,
                            capabilities: parse_json("factory capabilities", &caps)?,
                            last_seen,
                            last_seen_ago_ms: u64::try_from(now - last_seen).unwrap_or(0),
                            running: to_u32("running", running)?,
                            stats: Heartbeat {
                                load_1m: load,
                                free_memory_mb: mb_from_sql("free_memory_mb", mem)?,
                                free_disk_mb: mb_from_sql("free_disk_mb", disk)?,
                                admission,
                            },
                        })
                    },
                )
                .collect()
        })
        .await
    }

    async fn claim(&self, factory: FactoryId, ttl: Duration) -> Result<Option<Claim>> {
        let Some(raw) = self
            .write(move |tx, now| claim_tx(tx, factory, ttl, now))
            .await?
        else {
            return Ok(None);
        };
        let (spec, agent) = self
            .read_one(move |tx| Ok((load_spec(tx, raw.job)?, load_agent(tx, raw.job)?)))
            .await?;
        Ok(Some(Claim {
            job: ClaimedJob {
                id: raw.job,
                spec: parse_json::<JobSpec>("job spec", &spec.spec)?,
                checkpoint: agent.checkpoint(),
                resume_session: agent.session_id,
            },
            run: raw.run,
            // The server decides delivery, not the store.
            deliver: false,
        }))
    }

    async fn renew(&self, run: RunId, epoch: i64, ttl: Duration) -> Result<Renewed> {
        self.fenced(run, epoch, "renew", move |tx, live, now| {
            let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
            let expires = now.saturating_add(ttl_ms);
            let factory: Option<i64> = tx
                .prepare_cached(
                    "UPDATE runs SET lease_expires_at = ?2 WHERE id = ?1 RETURNING factory_id",
                )?
                .query_row(params![run.0, expires], |r| r.get(0))?;
            if let Some(f) = factory {
                tx.prepare_cached("UPDATE factories SET last_seen = ?2 WHERE id = ?1")?
                    .execute(params![f, now])?;
            }
            Ok(Renewed {
                lease_expires_at: expires,
                stop: live.stop,
            })
        })
        .await
    }

    async fn append_events(&self, run: RunId, epoch: i64, events: Vec<NewEvent>) -> Result<()> {
        // Encoded by the caller, off the writer thread.
        let events: Vec<(String, String)> = events
            .into_iter()
            .map(|e| (e.kind, e.data.to_string()))
            .collect();
        self.fenced(run, epoch, "events", move |tx, live, now| {
            let n = i64::try_from(events.len()).unwrap_or(i64::MAX);
            if n == 0 {
                return Ok(());
            }
            let last = take_seqs(tx, live.job, n)?;
            for ((kind, data), seq) in events.iter().zip(last - n + 1..) {
                apply_run_event(tx, live, kind, data)?;
                let row = EventRow {
                    run: Some(run.0),
                    seq,
                    kind,
                    data,
                };
                insert_events(tx, Some(live.job), &[row], now)?;
            }
            Ok(())
        })
        .await
    }

    async fn finish(&self, run: RunId, report: FinishReport) -> Result<Job> {
        let row = self
            .fenced(run, report.epoch, "finish", move |tx, live, now| {
                finish_tx(tx, live, &report, now)
            })
            .await?;
        let (spec, agent) = self
            .read_one(move |tx| {
                let id = JobId(row.id);
                Ok((load_spec(tx, id)?, load_agent(tx, id)?))
            })
            .await?;
        RawJob { row, spec, agent }.into_job()
    }

    async fn reap(&self) -> Result<Vec<RunId>> {
        self.write(reap_tx).await
    }

    async fn expire_leases_of(&self, factory: FactoryId) -> Result<Vec<RunId>> {
        self.write(move |tx, now| {
            let runs: Vec<i64> = tx
                .prepare_cached(
                    "UPDATE runs SET lease_expires_at = ?2
                     WHERE factory_id = ?1 AND id IN
                         (SELECT current_run FROM jobs WHERE state = 'running')
                     RETURNING id",
                )?
                .query_map(params![factory.0, now - 1], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?;
            let mut runs: Vec<RunId> = runs.into_iter().map(RunId).collect();
            runs.sort();
            Ok(runs)
        })
        .await
    }

    async fn cancel(&self, id: JobId) -> Result<Job> {
        self.write(move |tx, now| stop_tx(tx, id, StopKind::Cancel, now))
            .await
    }

    async fn kill(&self, id: JobId) -> Result<Job> {
        self.write(move |tx, now| stop_tx(tx, id, StopKind::Kill, now))
            .await
    }

    async fn kill_all(&self) -> Result<Vec<JobId>> {
        self.write(move |tx, now| {
            set_paused_tx(tx, true, now)?;
            let running: Vec<i64> = tx
                .prepare_cached("SELECT id FROM jobs WHERE state = 'running' ORDER BY id")?
                .query_map([], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?;
            for &id in &running {
                stop_tx(tx, JobId(id), StopKind::Kill, now)?;
            }
            Ok(running.into_iter().map(JobId).collect())
        })
        .await
    }

    async fn retry(&self, id: JobId) -> Result<Job> {
        self.write(move |tx, now| retry_tx(tx, id, now)).await
    }

    async fn set_paused(&self, paused: bool) -> Result<()> {
        self.write(move |tx, now| set_paused_tx(tx, paused, now))
            .await
    }

    async fn status(&self) -> Result<Status> {
        self.read(move |tx| {
            let paused: bool = tx
                .prepare_cached("SELECT paused FROM queue WHERE id = 1")?
                .query_row([], |r| r.get(0))?;
            let mut jobs: BTreeMap<String, u64> = JobState::ALL
                .iter()
                .map(|s| (s.as_str().to_string(), 0))
                .collect();
            let counts: Vec<(String, i64)> = tx
                .prepare_cached("SELECT state, count(*) FROM jobs GROUP BY state")?
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<rusqlite::Result<_>>()?;
            for (state, n) in counts {
                jobs.insert(state, u64::try_from(n).unwrap_or(0));
            }
            Ok(Status { paused, jobs })
        })
        .await
    }

    async fn queue_depth(&self) -> Result<BTreeMap<String, u64>> {
        let groups = self
            .read_one(move |conn| {
                // Grouped by the stored JSON list, so only one row per distinct list leaves
                // SQLite; the lists are parsed and merged into sets afterwards.
                let mut stmt = conn.prepare_cached(
                    "SELECT capabilities, count(*) FROM jobs WHERE state = 'queued' \
                 GROUP BY capabilities",
                )?;
                let rows: Vec<(String, i64)> = stmt
                    .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                    .collect::<rusqlite::Result<_>>()?;
                rows.into_iter()
                    .map(|(caps, n)| Ok((parse_json::<Vec<String>>("job capabilities", &caps)?, n)))
                    .collect::<Result<Vec<_>>>()
            })
            .await?;
        Ok(rules::queue_depth_of(groups))
    }

    async fn record_event(
        &self,
        job: Option<JobId>,
        run: Option<RunId>,
        event: NewEvent,
    ) -> Result<Event> {
        let data = event.data.to_string();
        self.write(move |tx, now| {
            if let Some(run) = run {
                let owner: Option<i64> = tx
                    .prepare_cached("SELECT job_id FROM runs WHERE id = ?1")?
                    .query_row([run.0], |r| r.get(0))
                    .optional()?;
                match (owner, job) {
                    (None, _) => return Err(not_found("run", run)),
                    (Some(owner), Some(job)) if owner != job.0 => {
                        return Err(not_found("run", format!("{run} of job {job}")));
                    }
                    _ => {}
                }
            }
            let (id, seq) = add_event(tx, job, run, &event.kind, &data, now)?;
            Ok(Event {
                id,
                job_id: job,
                run_id: run,
                seq,
                kind: event.kind,
                at: now,
                data: event.data,
            })
        })
        .await
    }

    async fn events(&self, after: i64, job: Option<JobId>, limit: usize) -> Result<Vec<Event>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.read(move |tx| {
            let rows = match job {
                Some(job) => tx
                    // The two partial indexes of a job's events (see the schema): its
                    // first event, then the rest.
                    .prepare_cached(
                        "SELECT id, job_id, run_id, seq, kind, at, data FROM events
                         WHERE job_id = ?1 AND seq = 1 AND id > ?2
                         UNION ALL
                         SELECT id, job_id, run_id, seq, kind, at, data FROM events
                         WHERE job_id = ?1 AND seq > 1 AND id > ?2
                         ORDER BY id LIMIT ?3",
                    )?
                    .query_map(params![job.0, after, limit], read_event)?
                    .collect::<rusqlite::Result<Vec<_>>>()?,
                None => tx
                    .prepare_cached(
                        "SELECT id, job_id, run_id, seq, kind, at, data FROM events
                         WHERE id > ?1 ORDER BY id LIMIT ?2",
                    )?
                    .query_map(params![after, limit], read_event)?
                    .collect::<rusqlite::Result<Vec<_>>>()?,
            };
            rows.into_iter()
                .map(|(mut e, data)| {
                    e.data = parse_json("event data", &data)?;
                    Ok(e)
                })
                .collect()
        })
        .await
    }

    async fn create_token(&self, name: &str, scope: Scope, hash: &str) -> Result<TokenInfo> {
        let (name, hash) = (name.to_string(), hash.to_string());
        self.write(move |tx, now| {
            let taken = |col: &str, v: &str| -> Result<bool> {
                Ok(tx
                    .prepare_cached(&format!("SELECT 1 FROM tokens WHERE {col} = ?1"))?
                    .exists([v])?)
            };
            if taken("name", &name)? {
                return Err(StoreError::Exists {
                    what: "token",
                    name: name.to_string(),
                });
            }
            if taken("hash", &hash)? {
                return Err(StoreError::Exists {
                    what: "token with the same secret as",
                    name: name.to_string(),
                });
            }
            let row = tx
                .prepare_cached(&format!(
                    "INSERT INTO tokens (name, scope, hash, created_at) VALUES (?1, ?2, ?3, ?4)
                         RETURNING {TOKEN_COLS}"
                ))?
                .query_row(params![name, scope.as_str(), hash, now], read_token)
                .map_err(|e| {
                    if is_unique_violation(&e) {
                        StoreError::Exists {
                            what: "token",
                            name: name.to_string(),
                        }
                    } else {
                        e.into()
                    }
                })?;
            into_token(row)
        })
        .await
    }

    async fn token_by_hash(&self, hash: &str) -> Result<Option<TokenInfo>> {
        let hash = hash.to_string();
        self.read(move |tx| {
            tx.prepare_cached(&format!(
                "SELECT {TOKEN_COLS} FROM tokens WHERE hash = ?1 AND revoked_at IS NULL"
            ))?
            .query_row([hash], read_token)
            .optional()?
            .map(into_token)
            .transpose()
        })
        .await
    }

    async fn tokens(&self) -> Result<Vec<TokenInfo>> {
        self.read(move |tx| {
            tx.prepare_cached(&format!("SELECT {TOKEN_COLS} FROM tokens ORDER BY id"))?
                .query_map([], read_token)?
                .collect::<rusqlite::Result<Vec<_>>>()?
                .into_iter()
                .map(into_token)
                .collect()
        })
        .await
    }

    async fn revoke_token(&self, name: &str) -> Result<TokenInfo> {
        let name = name.to_string();
        self.write(move |tx, now| {
            tx.prepare_cached(
                "UPDATE tokens SET revoked_at = coalesce(revoked_at, ?2) WHERE name = ?1",
            )?
            .execute(params![name, now])?;
            tx.prepare_cached(&format!("SELECT {TOKEN_COLS} FROM tokens WHERE name = ?1"))?
                .query_row([&name], read_token)
                .optional()?
                .ok_or_else(|| not_found("token", &name))
                .and_then(into_token)
        })
        .await
    }

    fn changes(&self) -> watch::Receiver<u64> {
        self.inner.changes.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn judge_deps_by_mode() {
        use JobState::*;
        let s = DepsMode::Succeeded;
        let f = DepsMode::Finished;
        assert_eq!(judge_deps(s, &[]), DepsVerdict::Met);
        assert_eq!(
            judge_deps(s, &[(1, Succeeded), (2, Running)]),
            DepsVerdict::Wait
        );
        assert_eq!(
            judge_deps(s, &[(1, Succeeded), (2, Succeeded)]),
            DepsVerdict::Met
        );
        assert_eq!(
            judge_deps(s, &[(1, Queued), (2, Killed)]),
            DepsVerdict::Failed("dependency 2 killed".into())
        );
        assert_eq!(
            judge_deps(f, &[(1, Failed), (2, Canceled)]),
            DepsVerdict::Met
        );
        assert_eq!(
            judge_deps(f, &[(1, Failed), (2, Blocked)]),
            DepsVerdict::Wait
        );
    }

    /// Every hot-path statement, with how many parameters it binds.
    fn hot_statements() -> Vec<String> {
        let mut sqls = vec![
            CLAIM_FACTORY_SQL.to_string(),
            CLAIM_SCAN_SQL.to_string(),
            RUN_INSERT_SQL.to_string(),
            claim_update_sql(JobState::Running),
            FENCE_RUN_SQL.to_string(),
            fence_job_sql(),
            FINISH_RUN_SQL.to_string(),
            events_insert_sql(1),
            events_insert_sql(2),
            LOAD_SPEC_SQL.to_string(),
            "UPDATE jobs SET event_seq = event_seq + ?2 WHERE id = ?1 RETURNING event_seq".into(),
        ];
        for from in JobState::ALL {
            for to in JobState::ALL {
                sqls.push(step_sql(from, to));
            }
        }
        sqls
    }

    #[test]
    fn hot_statements_are_not_re_prepared_and_need_no_temporary_table() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("gantry.db");
        let mut conn = Connection::open(&path).expect("open");
        migrate(&mut conn, &path).expect("migrate");
        // This checks plans, not data: the made-up values need not reference rows.
        conn.execute_batch("PRAGMA foreign_keys = OFF")
            .expect("pragma");
        // `take_seqs` is the one hot statement that needs RETURNING: it is used only for
        // events a worker uploads, never by claims and finishes.
        let returning =
            "UPDATE jobs SET event_seq = event_seq + ?2 WHERE id = ?1 RETURNING event_seq";
        for sql in hot_statements() {
            let mut stmt = conn.prepare(&sql).expect("prepare");
            let n = stmt.parameter_count();
            // Values that cross 0 and 1, which is where SQLite re-plans value-sensitive
            // statements.
            for v in [5_i64, 1, 0, 2, 7, 3] {
                let values = vec![v; n];
                let mut rows = stmt.query(rusqlite::params_from_iter(values)).expect("run");
                while rows.next().expect("step").is_some() {}
            }
            assert_eq!(
                stmt.get_status(rusqlite::StatementStatus::RePrepare),
                0,
                "re-prepared: {sql}"
            );
            let mut explain = conn.prepare(&format!("EXPLAIN {sql}")).expect("explain");
            let ops: Vec<String> = explain
                .query_map(rusqlite::params_from_iter(vec![0_i64; n]), |r| r.get(1))
                .expect("explain")
                .collect::<rusqlite::Result<_>>()
                .expect("opcodes");
            if sql != returning {
                assert!(
                    !ops.iter().any(|op| op == "OpenEphemeral"),
                    "needs a temporary table: {sql}"
                );
            }
        }
    }

    #[test]
    fn retry_on_round_trips() {
        assert_eq!(
            parse_retry_on("lost,timed_out").expect("valid list"),
            vec![Outcome::Lost, Outcome::TimedOut]
        );
        assert!(parse_retry_on("").expect("empty list").is_empty());
        let err = parse_retry_on("lost,bogus").expect_err("bogus outcome");
        assert!(err.to_string().contains("bogus"), "{err}");
    }
}
