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

mod lifecycle;
mod ops;
mod rows;
mod schema;
mod writer;

use crate::codec::*;
use crate::lifecycle::{
    self as life, EventRef, Expired, Live, Pending, end_attempt, insights_text, run_sync,
};
use crate::rules;
use crate::submit;
use crate::{Binding, Clock, FactoryInfo, JobFilter, Result, Store, StoreError};
use async_trait::async_trait;
use gantry_core::api::{
    Claim, ClaimedJob, FinishReport, Heartbeat, RegisterFactory, Renewed, Scope, Status, Submitted,
    TokenInfo,
};
use gantry_core::event::{Event, NewEvent};
use gantry_core::time::Millis;
use gantry_core::{FactoryId, Job, JobId, JobSpec, JobState, ParsedJob, Run, RunId, StopKind};
use lifecycle::*;
use ops::*;
use rows::*;
use rusqlite::{Connection, OptionalExtension, params};
use schema::*;
pub use schema::{APPLICATION_ID, MIGRATIONS};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;
use tokio::sync::watch;
use writer::*;
/// How long a connection waits for another process's write lock before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

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
    /// Where writes and the factory listing read the time.
    clock: Clock,
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
        SqliteStore::open_with_clock(path, Clock::system())
    }

    /// Opens (creating if needed) the store at `path` as [`SqliteStore::open`] does,
    /// reading the time from `clock`.
    pub fn open_with_clock(path: &Path, clock: Clock) -> Result<SqliteStore> {
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
                clock,
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
        let clock = self.inner.clock.clone();
        let op: Op = Box::new(move |conn| {
            let done = match conn {
                Ok(conn) => run_in_savepoint(conn, &clock, f),
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
            move |conn, now| match fence(&Lite { conn, now }, run, epoch, op) {
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
                    .query_map(params![st.as_str(), before, limit], |r| RawJob::read(r))?
                    .collect::<rusqlite::Result<Vec<_>>>()?,
                None => tx
                    .prepare_cached(&format!(
                        "SELECT {JOB_LIST_COLS} FROM {JOB_FROM}
                         WHERE id < ?1 ORDER BY id DESC LIMIT ?2"
                    ))?
                    .query_map(params![before, limit], |r| RawJob::read(r))?
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
            .query_map([job.0], |r| RawRun::read(r))?
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
                .query_row([id.0], |r| RawRun::read(r))
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
        let clock = self.inner.clock.clone();
        self.read(move |tx| {
            let now = clock.now();
            // Running jobs are found through `jobs_running_lock`, whose condition is
            // `state = 'running'`: it holds every running job, locked or not.
            let rows: Vec<FactoryRow> = tx
                .prepare_cached(&factories_sql("?1"))?
                .query_map([now], |r| FactoryRow::read(r))?
                .collect::<rusqlite::Result<_>>()?;
            rows.into_iter().map(FactoryRow::into_info).collect()
        })
        .await
    }

    async fn claim(&self, factory: FactoryId, ttl: Duration) -> Result<Option<Claim>> {
        // The spec and the agent's state are read in the claim's own transaction on the
        // writer thread: they cannot have changed since, and a claim then costs one
        // hand-over between threads instead of two (a read on the blocking pool).
        let claimed = self
            .write(move |tx, now| {
                let Some(raw) = claim_tx(tx, factory, ttl, now)? else {
                    return Ok(None);
                };
                let (spec, agent) = (load_spec(tx, raw.job)?, load_agent(tx, raw.job)?);
                Ok(Some((raw, spec, agent)))
            })
            .await?;
        let Some((raw, spec, agent)) = claimed else {
            return Ok(None);
        };
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
            // Every event is recorded before what it means is applied, so a state change
            // an event makes is logged after the events of the upload, as PostgreSQL's is.
            for ((kind, data), seq) in events.iter().zip(last - n + 1..) {
                let row = EventRow {
                    run: Some(run.0),
                    seq,
                    kind,
                    data,
                };
                insert_events(tx, Some(live.job), &[row], now)?;
            }
            let pairs: Vec<(&str, &str)> = events
                .iter()
                .map(|(k, d)| (k.as_str(), d.as_str()))
                .collect();
            run_sync(life::apply_run_events(
                &Lite { conn: tx, now },
                live,
                &pairs,
            ))?;
            Ok(())
        })
        .await
    }

    async fn finish(&self, run: RunId, report: FinishReport) -> Result<Job> {
        // As in `claim`: the job is read back in the finish's own transaction.
        let (row, spec, agent) = self
            .fenced(run, report.epoch, "finish", move |tx, live, now| {
                let row = finish_tx(tx, live, &report, now)?;
                let id = JobId(row.id);
                let (spec, agent) = (load_spec(tx, id)?, load_agent(tx, id)?);
                Ok((row, spec, agent))
            })
            .await?;
        RawJob { row, spec, agent }.into_job()
    }

    async fn reap(&self) -> Result<Vec<RunId>> {
        self.write(|conn, now| run_sync(life::reap(&Lite { conn, now })))
            .await
    }

    async fn expire_leases_of(&self, factory: FactoryId) -> Result<Vec<RunId>> {
        self.write(move |tx, now| {
            let runs: Vec<i64> = tx
                .prepare_cached(
                    "UPDATE runs SET lease_expires_at = ?2
                     WHERE factory_id = ?1 AND id IN
                         (SELECT current_run FROM jobs
                          WHERE state = 'running' OR state = 'checking')
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
        self.write(move |conn, now| run_sync(life::stop(&Lite { conn, now }, id, StopKind::Cancel)))
            .await
    }

    async fn kill(&self, id: JobId) -> Result<Job> {
        self.write(move |conn, now| run_sync(life::stop(&Lite { conn, now }, id, StopKind::Kill)))
            .await
    }

    async fn kill_all(&self) -> Result<Vec<JobId>> {
        self.write(|conn, now| run_sync(life::kill_all(&Lite { conn, now })))
            .await
    }

    async fn retry(&self, id: JobId) -> Result<Job> {
        self.write(move |conn, now| run_sync(life::retry(&Lite { conn, now }, id)))
            .await
    }

    async fn set_paused(&self, paused: bool) -> Result<()> {
        self.write(move |conn, now| {
            run_sync(life::set_paused(&Lite { conn, now }, paused)).map(|_| ())
        })
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
        NewEvent { kind, data }: NewEvent,
    ) -> Result<Event> {
        let at = self
            .write(move |conn, now| {
                let text = data.to_string();
                let e = EventRef {
                    job,
                    run,
                    kind: &kind,
                    data: &text,
                };
                let (id, seq) = run_sync(life::record_event(&Lite { conn, now }, e))?;
                Ok((id, seq, now, NewEvent { kind, data }))
            })
            .await?;
        Ok(recorded_event(job, run, at))
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
                    .query_map(params![job.0, after, limit], |r| RawEvent::read(r))?
                    .collect::<rusqlite::Result<Vec<_>>>()?,
                None => tx
                    .prepare_cached(
                        "SELECT id, job_id, run_id, seq, kind, at, data FROM events
                         WHERE id > ?1 ORDER BY id LIMIT ?2",
                    )?
                    .query_map(params![after, limit], |r| RawEvent::read(r))?
                    .collect::<rusqlite::Result<Vec<_>>>()?,
            };
            rows.into_iter().map(RawEvent::into_event).collect()
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
                .query_row(params![name, scope.as_str(), hash, now], |r| {
                    TokenRow::read(r)
                })
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
            row.into_token()
        })
        .await
    }

    async fn token_by_hash(&self, hash: &str) -> Result<Option<TokenInfo>> {
        let hash = hash.to_string();
        self.read(move |tx| {
            tx.prepare_cached(&format!(
                "SELECT {TOKEN_COLS} FROM tokens WHERE hash = ?1 AND revoked_at IS NULL"
            ))?
            .query_row([hash], |r| TokenRow::read(r))
            .optional()?
            .map(TokenRow::into_token)
            .transpose()
        })
        .await
    }

    async fn tokens(&self) -> Result<Vec<TokenInfo>> {
        self.read(move |tx| {
            tx.prepare_cached(&format!("SELECT {TOKEN_COLS} FROM tokens ORDER BY id"))?
                .query_map([], |r| TokenRow::read(r))?
                .collect::<rusqlite::Result<Vec<_>>>()?
                .into_iter()
                .map(TokenRow::into_token)
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
                .query_row([&name], |r| TokenRow::read(r))
                .optional()?
                .ok_or_else(|| not_found("token", &name))
                .and_then(TokenRow::into_token)
        })
        .await
    }

    fn changes(&self) -> watch::Receiver<u64> {
        self.inner.changes.subscribe()
    }
}
