//! The PostgreSQL backend, for many machines: any number of `gantry serve` replicas and
//! factories share one database.
//!
//! Same behaviour as [`crate::SqliteStore`]; what differs is how it is made safe under
//! concurrency, since transactions here really run at once:
//! - **Time** is the database's clock (`gantry_now_ms()`, from `clock_timestamp()`),
//!   read once per operation; no client clock is ever used.
//! - **Claims and simple finishes go in batches** (see [`batch`]): the claims and
//!   finishes asked while earlier ones ran become one statement and one commit, which
//!   is what lets one database serve thousands of them a second. A claim is one step
//!   of that statement: `gantry_claim_batch` picks the best candidates with `FOR UPDATE
//!   SKIP LOCKED` (so concurrent claimers never wait for each other and never get the
//!   same job), then the statement updates them, inserts the runs and the events. The
//!   one-running-job-per-lock rule is the partial unique index `jobs_running_lock`: when
//!   two statements race for one lock, the second violates it and runs again (its new
//!   snapshot sees the lock held and skips that job).
//! - **Fenced writes** (renew, events, finish) lock the job row (`FOR NO KEY UPDATE`)
//!   and check `(run, epoch)` under that lock before writing. A successful finish of a
//!   job nothing depends on needs nothing else from the row, so it goes in a batch,
//!   fenced by the update's own condition; every other finish (and a batched one that
//!   did not apply: stale, or the job gained a dependent) takes the full path.
//! - **Dependencies**: a submit marks the stored jobs it depends on (`has_dependents`,
//!   which locks their rows), and a finish reads that mark under its own row lock, so a
//!   dependent submitted while its dependency finishes is settled by one of the two.
//! - **The reaper** locks expired jobs with `SKIP LOCKED` and re-checks each lease in a
//!   fresh statement, so replicas reaping at once requeue each job once.
//! - **Events** get ids from a sequence, so they may commit out of id order; `events()`
//!   reads only below the settled horizon (see `gantry_settled_event_id` in the schema),
//!   so a follower paging by id never skips one.
//! - **Changes** reach other processes by LISTEN/NOTIFY, with a poll as the fallback
//!   (see [`signal`]).
//! - Deadlocks, serialization failures, unique violations and connections lost before
//!   a commit make an operation run again (bounded); it is all or nothing each time.
//!
//! The driver is tokio-postgres without TLS (`NoTls`); TLS would be added with
//! tokio-postgres-rustls on rustls's aws-lc-rs provider. Connections come from a
//! bounded deadpool pool; one more connection LISTENs, and each batch lane has one.

mod batch;
mod rows;
mod schema;
mod signal;

use crate::rules::{self, AttemptEnd, Target, attempt_end, topo_order};
use crate::{Binding, FactoryInfo, JobFilter, Result, Store, StoreError};
use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod, Runtime};
use gantry_core::api::{
    Checkpoint, Claim, FinishReport, Heartbeat, RegisterFactory, Renewed, Scope, Status, Submitted,
    TokenInfo,
};
use gantry_core::event::{self as ev, Event, NewEvent};
use gantry_core::state::{self, Effect, Input};
use gantry_core::time::Millis;
use gantry_core::{DepRef, FactoryId, Job, JobId, JobState, Outcome, ParsedJob, RunId, StopKind};
use rows::*;
use serde_json::json;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio_postgres::types::ToSql;
use tokio_postgres::{NoTls, Row, Statement};

/// Claims and finishes waiting for a batch lane, at most.
const MAX_QUEUED_ASKS: usize = 4096;

type PgError = tokio_postgres::Error;

/// How often an operation that hit a deadlock, a serialization failure, a unique
/// violation or a lost connection is tried in all.
const MAX_TRIES: u32 = 10;

/// Options of [`PgStore::connect`].
#[derive(Debug, Clone)]
pub struct PgOptions {
    /// Most pooled connections. The listening connection and one connection per batch
    /// lane (two; claims and simple finishes go through them) come on top. Default 16.
    pub max_connections: usize,
    /// How often the change poller looks for changes that no notification announced.
    /// Default 1 s.
    pub poll_interval: Duration,
    /// Whether to LISTEN for other instances' changes (else only the poller sees
    /// them). Default true.
    pub listen: bool,
}

impl Default for PgOptions {
    fn default() -> Self {
        PgOptions {
            max_connections: 16,
            poll_interval: Duration::from_secs(1),
            listen: true,
        }
    }
}

/// The PostgreSQL store. Cheap to clone; every clone shares one pool.
#[derive(Clone)]
pub struct PgStore {
    inner: Arc<Inner>,
}

struct Inner {
    pool: Pool,
    /// `host:port/dbname`, for messages (never the password).
    shown: String,
    changes: Arc<watch::Sender<u64>>,
    /// Wakes the notifier.
    dirty: Arc<Notify>,
    /// Whether the listening connection is up.
    listening: Arc<watch::Sender<bool>>,
    /// Where claims and simple finishes wait for a batch lane (see [`batch`]).
    asks: mpsc::Sender<batch::Ask>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        let tasks = std::mem::take(
            &mut *self
                .tasks
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        );
        for task in tasks {
            task.abort();
        }
    }
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("database", &self.inner.shown)
            .finish()
    }
}

/// A database error as text: the server's code, message and detail when it sent one,
/// else the client's error and its causes.
fn describe(e: &PgError) -> String {
    if let Some(db) = e.as_db_error() {
        let mut s = format!("{} {}: {}", db.severity(), db.code().code(), db.message());
        if let Some(detail) = db.detail() {
            s.push_str(&format!(" ({detail})"));
        }
        return s;
    }
    let mut s = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        s.push_str(&format!(": {c}"));
        cause = c.source();
    }
    s
}

impl From<PgError> for StoreError {
    fn from(e: PgError) -> Self {
        StoreError::Backend(describe(&e))
    }
}

/// An error inside a transaction: the store's own, or the database's (kept whole, so
/// the retry loop can tell a deadlock from a bug).
enum TxError {
    Store(StoreError),
    Db(PgError),
}

impl From<StoreError> for TxError {
    fn from(e: StoreError) -> Self {
        TxError::Store(e)
    }
}

impl From<PgError> for TxError {
    fn from(e: PgError) -> Self {
        TxError::Db(e)
    }
}

impl From<TxError> for StoreError {
    fn from(e: TxError) -> Self {
        match e {
            TxError::Store(e) => e,
            TxError::Db(e) => e.into(),
        }
    }
}

/// Result inside a transaction.
type R<T> = std::result::Result<T, TxError>;

/// Whether an operation that failed this way (before its commit was sent) should simply
/// run again: it lost a race that a new snapshot resolves.
fn retryable(e: &TxError) -> bool {
    use tokio_postgres::error::SqlState;
    let TxError::Db(e) = e else {
        return false;
    };
    e.is_closed()
        || matches!(
            e.code(),
            Some(c) if *c == SqlState::T_R_DEADLOCK_DETECTED
                || *c == SqlState::T_R_SERIALIZATION_FAILURE
                || *c == SqlState::UNIQUE_VIOLATION
        )
}

/// A short, growing pause before trying again.
async fn retry_pause(tries: u32) {
    tokio::time::sleep(Duration::from_millis(u64::from(tries.min(10)))).await;
}

/// One pooled connection, possibly inside a transaction. Dropped inside a transaction
/// (a panic, or a caller that went away), its connection is closed rather than
/// returned to the pool, so the server rolls the transaction back and no later user
/// inherits it.
struct Tx {
    obj: Option<Object>,
    open: bool,
    /// The operation's time, by the database's clock.
    now: Millis,
}

impl Drop for Tx {
    fn drop(&mut self) {
        if self.open
            && let Some(obj) = self.obj.take()
        {
            drop(Object::take(obj));
        }
    }
}

impl Tx {
    fn wrapper(&self) -> &deadpool_postgres::ClientWrapper {
        // Invariant: only `drop` takes the object out.
        self.obj.as_ref().expect("connection present until drop")
    }

    fn client(&self) -> &tokio_postgres::Client {
        self.wrapper()
    }

    async fn prep(&self, sql: &str) -> std::result::Result<Statement, PgError> {
        self.wrapper().prepare_cached(sql).await
    }

    async fn query(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> R<Vec<Row>> {
        let stmt = self.prep(sql).await?;
        Ok(self.client().query(&stmt, params).await?)
    }

    async fn query_opt(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> R<Option<Row>> {
        let stmt = self.prep(sql).await?;
        Ok(self.client().query_opt(&stmt, params).await?)
    }

    async fn query_one(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> R<Row> {
        let stmt = self.prep(sql).await?;
        Ok(self.client().query_one(&stmt, params).await?)
    }

    async fn execute(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> R<u64> {
        let stmt = self.prep(sql).await?;
        Ok(self.client().execute(&stmt, params).await?)
    }

    /// Begins a transaction and reads the database's clock, in one round trip.
    async fn begin(&mut self) -> R<()> {
        let now = self.prep("SELECT gantry_now_ms()").await?;
        self.open = true;
        let c = self.client();
        let (began, row) = tokio::join!(c.batch_execute("BEGIN"), c.query_one(&now, &[]));
        began?;
        self.now = row?.try_get(0)?;
        Ok(())
    }

    /// Commits when `out` is a success, else rolls back; returns `out` (or the commit's
    /// failure, which is not retryable: the commit may have happened).
    async fn end<T>(&mut self, out: R<T>) -> R<T> {
        match out {
            Ok(v) => match self.client().batch_execute("COMMIT").await {
                Ok(()) => {
                    self.open = false;
                    Ok(v)
                }
                Err(e) => Err(TxError::Store(StoreError::Backend(format!(
                    "commit failed: {}",
                    describe(&e)
                )))),
            },
            Err(e) => {
                if self.client().batch_execute("ROLLBACK").await.is_ok() {
                    self.open = false;
                }
                Err(e)
            }
        }
    }
}

/// Runs `$body` (an expression using `$tx: &mut Tx`, of type `R<T>`) in a transaction:
/// committed when it succeeds, rolled back when it fails, run again (a bounded number
/// of times) when it lost a race. Evaluates to `Result<T>`.
macro_rules! in_tx {
    ($store:expr, |$tx:ident| $body:expr) => {{
        let mut tries = 0u32;
        loop {
            tries += 1;
            let mut $tx = $store.conn().await?;
            let out = match $tx.begin().await {
                Ok(()) => {
                    let out = async { $body }.await;
                    $tx.end(out).await
                }
                Err(e) => Err(e),
            };
            match out {
                Err(e) if tries < MAX_TRIES && retryable(&e) => retry_pause(tries).await,
                out => break out.map_err(StoreError::from),
            }
        }
    }};
}

/// Runs a fenced write of `$run` under `$epoch`: `$body` (an expression using
/// `$tx: &Tx` and `$live: &Live`, of type `R<T>`) runs once the fence holds and is
/// committed with it. A stale write commits only its rejection event and evaluates to
/// [`StoreError::StaleLease`]. Lost races run it again. Evaluates to `Result<T>`.
macro_rules! fenced {
    ($store:expr, $run:expr, $epoch:expr, $op:expr, |$tx:ident, $live:ident| $body:expr) => {{
        let mut tries = 0u32;
        loop {
            tries += 1;
            let mut tx = $store.conn().await?;
            let out = match $store.fenced_begin(&mut tx, $run, $epoch, $op).await {
                Ok(Ok($live)) => {
                    let out = async {
                        let $tx = &tx;
                        let $live = &$live;
                        $body
                    }
                    .await;
                    tx.end(out.map(Ok)).await
                }
                Ok(Err(stale)) => tx.end(Ok(Err(stale))).await,
                Err(e) => tx.end(Err(e)).await,
            };
            match out {
                Err(e) if tries < MAX_TRIES && retryable(&e) => retry_pause(tries).await,
                Err(e) => break Err(StoreError::from(e)),
                Ok(Ok(v)) => break Ok(v),
                Ok(Err(stale)) => {
                    $store.changed();
                    break Err(stale);
                }
            }
        }
    }};
}

impl PgStore {
    /// Connects to the database at `url` (`postgres://user[:password]@host[:port]/db`),
    /// migrates its schema (several servers may do this at once), and starts the
    /// change listener, notifier and poller. Must be called inside a tokio runtime.
    pub async fn connect(url: &str, opts: PgOptions) -> Result<PgStore> {
        let config: tokio_postgres::Config = url
            .parse()
            .map_err(|e| StoreError::Backend(format!("invalid PostgreSQL URL: {e}")))?;
        let shown = show_config(&config);
        let mut pool_config = config.clone();
        if pool_config.get_application_name().is_none() {
            pool_config.application_name("gantry");
        }
        let mut lane_config = pool_config.clone();
        lane_config.options(&match lane_config.get_options() {
            Some(options) => format!("{options} {}", batch::LANE_SETTINGS),
            None => batch::LANE_SETTINGS.to_string(),
        });
        let pool = build_pool(pool_config, opts.max_connections.max(1), &shown)?;
        let lane_pool = build_pool(lane_config, batch::LANES, &shown)?;
        {
            let mut conn = pool.get().await.map_err(|e| {
                // The pool's own message is only "db error"; the server's reason (no such
                // database, authentication failed) is in the driver's error.
                let why = match &e {
                    deadpool_postgres::PoolError::Backend(pg) => describe(pg),
                    other => other.to_string(),
                };
                StoreError::Backend(format!("cannot connect to the database {shown}: {why}"))
            })?;
            let client: &mut tokio_postgres::Client = &mut conn;
            schema::migrate(client, &shown).await?;
        }
        let (claim_to, _) =
            state::next(JobState::Queued, Input::Claim).map_err(|e| corrupt(e.to_string()))?;
        // Every ask has a caller waiting for its answer, so the queue is bounded by the
        // callers anyway; the bound makes that explicit and pushes back past it.
        let (asks, queue) = mpsc::channel(MAX_QUEUED_ASKS);
        let lanes = Arc::new(batch::Lanes::new(lane_pool, claim_to, queue));
        let inner = Arc::new(Inner {
            pool,
            shown,
            changes: Arc::new(watch::channel(0).0),
            dirty: Arc::new(Notify::new()),
            listening: Arc::new(watch::channel(false).0),
            asks,
            tasks: Mutex::new(Vec::new()),
        });
        let last = inner.last_event_id().await.ok();
        let instance = format!(
            "{}-{:x}",
            std::process::id(),
            Arc::as_ptr(&inner) as usize ^ gantry_core::time::now_millis() as usize
        );
        let mut tasks = vec![
            tokio::spawn(signal::notifier(
                inner.pool.clone(),
                Arc::clone(&inner.dirty),
                instance.clone(),
            )),
            tokio::spawn(signal::poller(
                Arc::downgrade(&inner),
                opts.poll_interval,
                last,
            )),
        ];
        for _ in 0..batch::LANES {
            tasks.push(tokio::spawn(batch::lane(Arc::clone(&lanes))));
        }
        if opts.listen {
            tasks.push(tokio::spawn(signal::listener(
                config,
                Arc::downgrade(&inner.changes),
                instance,
                Arc::clone(&inner.listening),
            )));
        }
        *inner
            .tasks
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = tasks;
        Ok(PgStore { inner })
    }

    /// Whether the LISTEN connection is up (false while it reconnects, or when
    /// [`PgOptions::listen`] is off).
    pub fn listening(&self) -> watch::Receiver<bool> {
        self.inner.listening.subscribe()
    }

    /// A pooled connection, outside any transaction.
    async fn conn(&self) -> Result<Tx> {
        let obj = self.inner.pool.get().await.map_err(|e| {
            StoreError::Backend(format!(
                "cannot get a connection to the database {}: {e}",
                self.inner.shown
            ))
        })?;
        Ok(Tx {
            obj: Some(obj),
            open: false,
            now: 0,
        })
    }

    /// Signals a committed change: to this process's waiters at once, to the other
    /// instances by a notification.
    fn changed(&self) {
        signal::bump(&self.inner.changes);
        self.inner.dirty.notify_one();
    }

    /// Runs a fenced write: begins, locks and checks the fence, in one round trip. A
    /// stale write records its rejection (the caller commits it) and yields
    /// [`StoreError::StaleLease`].
    async fn fenced_begin(
        &self,
        tx: &mut Tx,
        run: RunId,
        epoch: i64,
        op: &'static str,
    ) -> R<std::result::Result<Live, StoreError>> {
        let fence = tx.prep(&FENCE_SQL).await?;
        tx.open = true;
        let c = tx.client();
        let params: [&(dyn ToSql + Sync); 1] = [&run.0];
        let (began, row) = tokio::join!(c.batch_execute("BEGIN"), c.query_opt(&fence, &params));
        began?;
        let row = row?.ok_or_else(|| not_found("run", run))?;
        let live = read_fence(&row, run, epoch)?;
        tx.now = live.now;
        match live.check {
            Ok(()) => Ok(Ok(live)),
            Err(stale) => {
                let data = json!({"run": run.0, "epoch": epoch, "current_epoch": live.job_epoch, "op": op});
                add_event(
                    tx,
                    Some(live.job),
                    Some(run),
                    ev::STALE_WRITE_REJECTED,
                    &data.to_string(),
                )
                .await?;
                tracing::warn!(job = %live.job, %run, epoch, current_epoch = live.job_epoch, op, "stale write rejected");
                Ok(Err(stale))
            }
        }
    }

    /// Sends an ask to the batch lanes and waits for its answer; signals the change
    /// when it finished or claimed something.
    async fn ask(
        &self,
        finish: Option<batch::FinishAsk>,
        factory: Option<FactoryId>,
        ttl_ms: i64,
    ) -> Result<batch::Answer> {
        let stopped = || StoreError::Backend("the store's batch lanes have stopped".into());
        let (reply, answer) = oneshot::channel();
        self.inner
            .asks
            .send(batch::Ask {
                finish,
                factory: factory.map(|f| f.0),
                ttl_ms,
                reply,
            })
            .await
            .map_err(|_| stopped())?;
        let answer = answer.await.map_err(|_| stopped())??;
        if answer.finished.is_some() || answer.claim.is_some() {
            self.changed();
        }
        Ok(answer)
    }

    /// The finish of `run` in full: begins, locks and checks the fence, records the
    /// report and moves the job on (settling dependents), and commits; a stale finish
    /// commits only its rejection. Lost races run it again.
    async fn finish_full(&self, run: RunId, report: FinishReport) -> Result<Job> {
        let mut tries = 0u32;
        loop {
            tries += 1;
            let mut tx = self.conn().await?;
            let out = match self
                .fenced_begin(&mut tx, run, report.epoch, "finish")
                .await
            {
                Ok(Ok(live)) => {
                    match self.finish_live(&mut tx, &live, &report).await {
                        // Committed already, unless it settled dependents.
                        Ok(raw) if !tx.open => Ok(Ok(raw)),
                        out => tx.end(out.map(Ok)).await,
                    }
                }
                Ok(Err(stale)) => tx.end(Ok(Err(stale))).await,
                Err(e) => tx.end(Err(e)).await,
            };
            match out {
                Err(e) if tries < MAX_TRIES && retryable(&e) => retry_pause(tries).await,
                Err(e) => return Err(e.into()),
                Ok(Ok(raw)) => {
                    self.changed();
                    return raw.into_job();
                }
                Ok(Err(stale)) => {
                    self.changed();
                    return Err(stale);
                }
            }
        }
    }

    /// The finish of a live run: records the report, moves the job on, and commits,
    /// in one statement pipelined with the commit, unless dependents need settling.
    async fn finish_live(&self, tx: &mut Tx, live: &Live, report: &FinishReport) -> R<RawJob> {
        let rep = EncodedReport::new(live.run, report)?;
        let finished = Pending {
            run: Some(live.run),
            kind: ev::RUN_FINISHED,
            data: rep.finished.clone(),
        };
        let plan = plan_end(live, rep.outcome, tx.now, vec![finished])?;
        let stmt = tx.prep(FINISH_SQL).await?;
        let step = StepParams::new(live.job, JobState::Running, &plan, tx.now, live.seq);
        let mut params: Vec<&(dyn ToSql + Sync)> = step.params().to_vec();
        params.push(&live.run.0);
        params.extend(rep.params());
        if let Some(diff) = &report.diff {
            // Before the pipelined finish and commit, inside the fenced transaction: a
            // stale finish rolls the diff back with everything else.
            tx.client()
                .execute(
                    "INSERT INTO run_diffs (run_id, patch) VALUES ($1, $2)",
                    &[&live.run.0, diff],
                )
                .await?;
        }
        let settle = live.has_dependents && plan.to.is_terminal();
        let c = tx.client();
        let row = if settle {
            let row = c.query_opt(&stmt, &params).await?;
            settle_dependents(tx, live.job).await?;
            row
        } else {
            let (row, commit) =
                tokio::join!(c.query_opt(&stmt, &params), c.batch_execute("COMMIT"));
            let row = row?;
            match commit {
                Ok(()) => tx.open = false,
                Err(e) => {
                    return Err(
                        StoreError::Backend(format!("commit failed: {}", describe(&e))).into(),
                    );
                }
            }
            row
        };
        let row = row.ok_or_else(|| {
            corrupt(format!(
                "job {} was not running when ending its attempt",
                live.job
            ))
        })?;
        let mut raw = RawJob::read(&row)?;
        if rep.session.is_some() {
            // Saved by the same statement, whose join cannot see it yet.
            raw.agent.session_id = rep.session.clone();
        }
        Ok(raw)
    }
}

/// A finish report as the finish statements take it.
struct EncodedReport<'a> {
    report: &'a FinishReport,
    outcome: Outcome,
    outcome_str: &'static str,
    files: Option<i64>,
    added: Option<i64>,
    deleted: Option<i64>,
    /// The run's insights as JSON text, when reported.
    insights: Option<String>,
    /// The agent session to keep on the job, when reported.
    session: Option<String>,
    /// The data of the `run.finished` event (JSON text).
    finished: String,
}

impl<'a> EncodedReport<'a> {
    /// Encodes the report of a finish of `run`; a report without an outcome is invalid.
    fn new(run: RunId, report: &'a FinishReport) -> R<EncodedReport<'a>> {
        let outcome = crate::rules::report_outcome(run, report)?;
        let finished = crate::rules::finished_data(outcome, report)?;
        let insights = report
            .insights
            .as_ref()
            .map(serde_json::to_string)
            .transpose()
            .map_err(|e| corrupt(format!("cannot encode insights: {e}")))?;
        Ok(EncodedReport {
            report,
            outcome,
            outcome_str: outcome.as_str(),
            files: report.files_changed.map(i64::from),
            added: report.lines_added.map(i64::from),
            deleted: report.lines_deleted.map(i64::from),
            insights,
            session: report.insights.as_ref().and_then(|i| i.session_id.clone()),
            finished,
        })
    }

    /// Outcome, exit code, error, branch, base, commit, the three diff stats, insights
    /// and session, in the order both finish statements take them.
    fn params(&self) -> [&(dyn ToSql + Sync); 11] {
        [
            &self.outcome_str,
            &self.report.exit_code,
            &self.report.error,
            &self.report.branch,
            &self.report.base_commit,
            &self.report.commit,
            &self.files,
            &self.added,
            &self.deleted,
            &self.insights,
            &self.session,
        ]
    }
}

/// A lease length in ms, as the database takes it.
fn ttl_millis(ttl: Duration) -> i64 {
    i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX / 2)
}

/// The finish of `run` with `report` as a batch ask, when its end needs nothing from
/// the job's row (see [`fixed_plan`]); `None` when the full finish must run (which also
/// refuses a report without an outcome, once it has checked the fence).
fn simple_finish(
    run: RunId,
    report: &FinishReport,
    want_job: bool,
) -> Result<Option<batch::FinishAsk>> {
    let Some(to) = report.outcome.and_then(fixed_plan) else {
        return Ok(None);
    };
    let rep = EncodedReport::new(run, report)?;
    Ok(Some(batch::FinishAsk {
        run: run.0,
        epoch: report.epoch,
        to: to.as_str(),
        reason: None,
        outcome: rep.outcome_str,
        exit_code: report.exit_code,
        error: report.error.clone(),
        branch: report.branch.clone(),
        base_commit: report.base_commit.clone(),
        commit: report.commit.clone(),
        files: rep.files,
        added: rep.added,
        deleted: rep.deleted,
        insights: rep.insights,
        session: rep.session,
        diff: report.diff.clone(),
        finished: rep.finished,
        state: state_data(JobState::Running, to, None),
        want_job,
    }))
}

/// The target state of ending a running attempt with `outcome`, when neither it nor
/// anything else the end writes depends on the job's row (its attempt, retry policy or
/// stop request): only then may a finish be written without reading the row first.
/// That holds for an outcome that is never retried (so no stop request or attempt count
/// changes it) and whose end carries no reason (which would name the attempt): a
/// success. `None` for every other outcome.
fn fixed_plan(outcome: Outcome) -> Option<JobState> {
    if outcome.is_retryable_kind() {
        return None;
    }
    let end = attempt_end(outcome, None, (1, 1), &[], 0, 0);
    if end.retry || end.reason.is_some() || end.not_before.is_some() || end.outcome != outcome {
        return None;
    }
    let input = Input::AttemptEnded {
        outcome,
        retry: false,
    };
    let (to, _) = state::next(JobState::Running, input).ok()?;
    to.is_terminal().then_some(to)
}

impl Inner {
    /// The last event id handed out by any session (0 before the first).
    async fn last_event_id(&self) -> Result<i64> {
        let client = self.pool.get().await.map_err(|e| {
            StoreError::Backend(format!(
                "cannot get a connection to the database {}: {e}",
                self.shown
            ))
        })?;
        let row = client
            .query_one("SELECT last_value, is_called FROM events_id_seq", &[])
            .await?;
        let (last, called): (i64, bool) = (row.try_get(0)?, row.try_get(1)?);
        Ok(if called { last } else { 0 })
    }
}

/// A bounded pool of connections made with `config`.
fn build_pool(config: tokio_postgres::Config, size: usize, shown: &str) -> Result<Pool> {
    let manager = Manager::from_config(
        config,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(size)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(Duration::from_secs(30)))
        .create_timeout(Some(Duration::from_secs(10)))
        .build()
        .map_err(|e| StoreError::Backend(format!("cannot build the pool for {shown}: {e}")))
}

/// `host:port/dbname` of a config, for messages.
fn show_config(config: &tokio_postgres::Config) -> String {
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
        None => "localhost".to_string(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let db = config
        .get_dbname()
        .or(config.get_user())
        .unwrap_or("postgres");
    format!("{host}:{port}/{db}")
}

// ---------------------------------------------------------------------------------------
// Statements
// ---------------------------------------------------------------------------------------

/// The fence: a run's job, locked, with what a fenced write needs. `$1` run.
static FENCE_SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(fence_sql);

fn fence_sql() -> String {
    let job_cols: Vec<String> = JOB_ROW_COLS
        .split(',')
        .map(|c| format!("j.{}", c.trim()))
        .collect();
    format!(
        "SELECT r.job_id, r.epoch, j.current_run, j.retry_on, j.backoff_ms, j.event_seq,
                gantry_now_ms(), {}, j.has_dependents
         FROM runs r JOIN jobs j ON j.id = r.job_id
         WHERE r.id = $1
         FOR NO KEY UPDATE OF j",
        job_cols.join(", ")
    )
}

/// A finish in one statement: [`STEP_SQL`]'s twelve parameters, then the run's report
/// (`$13` run, `$14` outcome, `$15` exit code, `$16` error, `$17` branch, `$18` base,
/// `$19` commit, `$20`..`$22` diff stats, `$23` insights, kept only when reported) and
/// `$24` the agent session to keep on the job, when reported.
const FINISH_SQL: &str = "WITH r AS (
    UPDATE runs SET outcome = $14, exit_code = $15, error = $16, branch = $17,
        base_commit = $18, commit_sha = $19, files_changed = $20, lines_added = $21,
        lines_deleted = $22, finished_at = $6, insights = coalesce($23, insights)
    WHERE id = $13
), a AS (
    INSERT INTO job_agent (job_id, session_id) SELECT $1, $24::text WHERE $24::text IS NOT NULL
    ON CONFLICT (job_id) DO UPDATE SET session_id = excluded.session_id
), e AS (
    INSERT INTO events (job_id, run_id, seq, kind, at, data)
    SELECT $1, x.run, x.seq, x.kind, $6, x.data
    FROM unnest($7::bigint[], $8::bigint[], $9::text[], $10::text[])
        WITH ORDINALITY AS x(run, seq, kind, data, ord)
    ORDER BY x.ord
)
UPDATE jobs SET state = $11, reason = $2, not_before = $3, finished_at = $4,
    stop_requested = CASE WHEN $11 = 'running' THEN stop_requested ELSE NULL END,
    event_seq = $5
FROM job_specs s LEFT JOIN job_agent ag ON ag.job_id = s.job_id
WHERE jobs.id = $1 AND jobs.state = $12 AND s.job_id = jobs.id
RETURNING jobs.id, state, priority, attempt, max_attempts, epoch, lock_key, deps_mode,
    idempotency_key, stop_requested, reason, not_before, created_at, started_at,
    finished_at, s.title, s.deps, s.spec, ag.session_id, ag.wip_branch, ag.wip_base,
    ag.wip_commit";

/// Keeps `$2` as the agent session of job `$1`, which a retry resumes.
const SAVE_SESSION_SQL: &str = "INSERT INTO job_agent (job_id, session_id) VALUES ($1, $2)
     ON CONFLICT (job_id) DO UPDATE SET session_id = excluded.session_id";

/// Moves a job from state `$12` to `$11` and records its events (run, seq, kind and data
/// arrays, in order), returning the job as stored. The events insert runs after the
/// update (an unreferenced data-modifying CTE runs last), which is what takes the job's
/// row lock when the caller does not hold it yet.
const STEP_SQL: &str = "WITH e AS (
    INSERT INTO events (job_id, run_id, seq, kind, at, data)
    SELECT $1, x.run, x.seq, x.kind, $6, x.data
    FROM unnest($7::bigint[], $8::bigint[], $9::text[], $10::text[])
        WITH ORDINALITY AS x(run, seq, kind, data, ord)
    ORDER BY x.ord
)
UPDATE jobs SET state = $11, reason = $2, not_before = $3, finished_at = $4,
    stop_requested = CASE WHEN $11 = 'running' THEN stop_requested ELSE NULL END,
    event_seq = $5
FROM job_specs s LEFT JOIN job_agent a ON a.job_id = s.job_id
WHERE jobs.id = $1 AND jobs.state = $12 AND s.job_id = jobs.id
RETURNING jobs.id, state, priority, attempt, max_attempts, epoch, lock_key, deps_mode,
    idempotency_key, stop_requested, reason, not_before, created_at, started_at,
    finished_at, s.title, s.deps, s.spec, a.session_id, a.wip_branch, a.wip_base,
    a.wip_commit";

// ---------------------------------------------------------------------------------------
// Events and transitions
// ---------------------------------------------------------------------------------------

/// Appends an event whose data is JSON text; a job's event takes the job's next `seq`
/// (and, with it, the job's row lock). Returns (id, seq).
async fn add_event(
    tx: &Tx,
    job: Option<JobId>,
    run: Option<RunId>,
    kind: &str,
    data: &str,
) -> R<(i64, i64)> {
    let run = run.map(|r| r.0);
    let row = match job {
        Some(job) => tx
            .query_opt(
                "WITH s AS (UPDATE jobs SET event_seq = event_seq + 1 WHERE id = $1
                            RETURNING event_seq)
                 INSERT INTO events (job_id, run_id, seq, kind, at, data)
                 SELECT $1, $2, s.event_seq, $3, $4, $5 FROM s
                 RETURNING id, seq",
                &[&job.0, &run, &kind, &tx.now, &data],
            )
            .await?
            .ok_or_else(|| not_found("job", job))?,
        None => {
            // The transaction must have its id before it takes an event id (see
            // `gantry_settled_event_id`); a job-less event may be its first write.
            tx.execute("SELECT pg_current_xact_id()", &[]).await?;
            tx.query_one(
                "INSERT INTO events (job_id, run_id, seq, kind, at, data)
                 VALUES (NULL, $1, 0, $2, $3, $4) RETURNING id, seq",
                &[&run, &kind, &tx.now, &data],
            )
            .await?
        }
    };
    Ok((row.try_get(0)?, row.try_get(1)?))
}

/// An event recorded together with a state change, just before its `job.state`.
struct Pending<'a> {
    run: Option<RunId>,
    kind: &'a str,
    /// JSON text.
    data: String,
}

/// A job after [`step`].
struct Stepped {
    to: JobState,
    effect: Effect,
}

/// How a state change is written: the target, its reason and not_before, and the
/// events before its `job.state`.
struct Plan<'a> {
    to: JobState,
    reason: Option<String>,
    not_before: Option<Millis>,
    from: JobState,
    pending: Vec<Pending<'a>>,
}

/// The parameters of [`STEP_SQL`], owned.
struct StepParams {
    job: i64,
    reason: Option<String>,
    not_before: Option<i64>,
    finished_at: Option<i64>,
    last_seq: i64,
    now: i64,
    runs: Vec<Option<i64>>,
    seqs: Vec<i64>,
    kinds: Vec<String>,
    datas: Vec<String>,
    to: &'static str,
    from: &'static str,
}

impl StepParams {
    /// For a job whose `event_seq` is `seq`.
    fn new(job: JobId, from: JobState, plan: &Plan<'_>, now: Millis, seq: i64) -> StepParams {
        let state = state_data(from, plan.to, plan.reason.as_deref());
        let mut runs = Vec::with_capacity(plan.pending.len() + 1);
        let mut kinds = Vec::with_capacity(plan.pending.len() + 1);
        let mut datas = Vec::with_capacity(plan.pending.len() + 1);
        for p in &plan.pending {
            runs.push(p.run.map(|r| r.0));
            kinds.push(p.kind.to_string());
            datas.push(p.data.clone());
        }
        runs.push(None);
        kinds.push(ev::JOB_STATE.to_string());
        datas.push(state);
        let n = kinds.len() as i64;
        StepParams {
            job: job.0,
            reason: plan.reason.clone(),
            not_before: plan.not_before,
            finished_at: plan.to.is_terminal().then_some(now),
            last_seq: seq + n,
            now,
            runs,
            seqs: (seq + 1..=seq + n).collect(),
            kinds,
            datas,
            to: plan.to.as_str(),
            from: from.as_str(),
        }
    }

    fn params(&self) -> [&(dyn ToSql + Sync); 12] {
        [
            &self.job,
            &self.reason,
            &self.not_before,
            &self.finished_at,
            &self.last_seq,
            &self.now,
            &self.runs,
            &self.seqs,
            &self.kinds,
            &self.datas,
            &self.to,
            &self.from,
        ]
    }
}

/// Moves a job from `from` by `input` through [`state::next`], recording the `pending`
/// events and then `job.state`, and returns the new state and the effect. `seq` is the
/// job's `event_seq` when the caller holds its row lock and has read it. Does not settle
/// dependents: see [`transition`].
#[allow(clippy::too_many_arguments)]
async fn step(
    tx: &Tx,
    job: JobId,
    from: JobState,
    input: Input,
    reason: Option<&str>,
    not_before: Option<Millis>,
    seq: Option<i64>,
    pending: Vec<Pending<'_>>,
) -> R<Stepped> {
    let (to, effect) = state::next(from, input).map_err(|_| StoreError::WrongState {
        job,
        state: from,
        action: action_of(input),
    })?;
    if to == from {
        for p in &pending {
            add_event(tx, Some(job), p.run, p.kind, &p.data).await?;
        }
        return Ok(Stepped { to, effect });
    }
    let seq = match seq {
        Some(seq) => seq,
        None => tx
            .query_opt(
                "SELECT event_seq FROM jobs WHERE id = $1 FOR NO KEY UPDATE",
                &[&job.0],
            )
            .await?
            .ok_or_else(|| not_found("job", job))?
            .try_get(0)?,
    };
    let plan = Plan {
        to,
        reason: reason.map(str::to_string),
        not_before,
        from,
        pending,
    };
    let params = StepParams::new(job, from, &plan, tx.now, seq);
    if tx.query_opt(STEP_SQL, &params.params()).await?.is_none() {
        return Err(corrupt(format!("job {job} was not {from} when moving it to {to}")).into());
    }
    Ok(Stepped { to, effect })
}

/// [`step`], then, when the job reached a terminal state, re-evaluates its blocked
/// dependents (transitively) in the same transaction.
#[allow(clippy::too_many_arguments)]
async fn transition(
    tx: &Tx,
    job: JobId,
    from: JobState,
    input: Input,
    reason: Option<&str>,
    not_before: Option<Millis>,
    seq: Option<i64>,
    pending: Vec<Pending<'_>>,
) -> R<Stepped> {
    let stepped = step(tx, job, from, input, reason, not_before, seq, pending).await?;
    if stepped.to != from && stepped.to.is_terminal() {
        settle_dependents(tx, job).await?;
    }
    Ok(stepped)
}

/// What a job's dependencies say now. Reads their states in a fresh statement, so it
/// sees every commit before it (the caller holds the job's lock).
async fn deps_verdict(tx: &Tx, job: JobId, mode: gantry_core::DepsMode) -> R<DepsVerdict> {
    let rows = tx
        .query(
            "SELECT d.dep_id, j.state FROM job_deps d JOIN jobs j ON j.id = d.dep_id
             WHERE d.job_id = $1",
            &[&job.0],
        )
        .await?;
    let mut deps = Vec::with_capacity(rows.len());
    for r in rows {
        let st: String = r.try_get(1)?;
        deps.push((r.try_get::<_, i64>(0)?, parse_state(&st)?));
    }
    Ok(judge_deps(mode, &deps))
}

/// Re-evaluates a blocked job (locking it first); returns its new state when it moved.
async fn settle_blocked(tx: &Tx, job: JobId) -> R<Option<JobState>> {
    let Some(row) = tx
        .query_opt(
            "SELECT deps_mode, event_seq FROM jobs WHERE id = $1 AND state = 'blocked'
             FOR NO KEY UPDATE",
            &[&job.0],
        )
        .await?
    else {
        return Ok(None);
    };
    let mode: String = row.try_get(0)?;
    let seq: i64 = row.try_get(1)?;
    let (input, reason) = match deps_verdict(tx, job, parse_deps_mode(&mode)?).await? {
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
        Some(seq),
        Vec::new(),
    )
    .await?;
    Ok(Some(stepped.to))
}

/// Re-evaluates the blocked dependents of a job that just reached a terminal state,
/// following cancellations transitively (with a work list).
async fn settle_dependents(tx: &Tx, job: JobId) -> R<()> {
    let mut work = vec![job];
    while let Some(done) = work.pop() {
        let dependents = tx
            .query(
                "SELECT job_id FROM job_deps WHERE dep_id = $1 ORDER BY job_id",
                &[&done.0],
            )
            .await?;
        for r in dependents {
            let dep = JobId(r.try_get(0)?);
            if let Some(to) = settle_blocked(tx, dep).await?
                && to.is_terminal()
            {
                work.push(dep);
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Fencing
// ---------------------------------------------------------------------------------------

/// A running job as a fenced write sees it (read under its row lock).
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
    /// The job's epoch.
    job_epoch: i64,
    /// The database's clock when the fence was read.
    now: Millis,
    /// Whether some job depends on this one (read under its lock).
    has_dependents: bool,
    /// Whether the write may go ahead; else the error for the writer.
    check: std::result::Result<(), StoreError>,
}

/// Reads a [`FENCE_SQL`] row and checks that `run` is the current run of a job running
/// under `epoch`.
fn read_fence(row: &Row, run: RunId, epoch: i64) -> R<Live> {
    let job = JobId(row.try_get(0)?);
    let run_epoch: i64 = row.try_get(1)?;
    let current: Option<i64> = row.try_get(2)?;
    let retry_on: String = row.try_get(3)?;
    let backoff: i64 = row.try_get(4)?;
    let seq: i64 = row.try_get(5)?;
    let now: i64 = row.try_get(6)?;
    let jr = JobRow::read(row, 7)?;
    let has_dependents: bool = row.try_get(22)?;
    let state = parse_state(&jr.state)?;
    let live = state == JobState::Running
        && jr.epoch == epoch
        && run_epoch == epoch
        && current == Some(run.0);
    let check = if live {
        Ok(())
    } else {
        Err(StoreError::StaleLease {
            job,
            run,
            epoch,
            current_epoch: jr.epoch,
            state,
        })
    };
    Ok(Live {
        job,
        run,
        attempt: to_u32("attempt", jr.attempt)?,
        max_attempts: to_u32("max_attempts", jr.max_attempts)?,
        retry_on,
        backoff_ms: u64::try_from(backoff).map_err(|_| corrupt(format!("backoff_ms {backoff}")))?,
        stop: parse_stop(jr.stop_requested.as_deref())?,
        seq,
        job_epoch: jr.epoch,
        now,
        has_dependents,
        check,
    })
}

/// How the running attempt of `live` ends with `outcome`: the retry policy (a stop
/// request wins over it and decides the state), the target state and its reason.
fn plan_end<'a>(
    live: &Live,
    outcome: Outcome,
    now: Millis,
    pending: Vec<Pending<'a>>,
) -> R<Plan<'a>> {
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
    let input = Input::AttemptEnded { outcome, retry };
    let (to, _) = state::next(JobState::Running, input).map_err(|_| StoreError::WrongState {
        job: live.job,
        state: JobState::Running,
        action: action_of(input),
    })?;
    Ok(Plan {
        to,
        reason,
        not_before,
        from: JobState::Running,
        pending,
    })
}

/// Ends the running attempt of `live` with `outcome` and moves the job on (settling its
/// dependents when it ended).
async fn end_attempt(
    tx: &Tx,
    live: &Live,
    outcome: Outcome,
    pending: Vec<Pending<'_>>,
) -> R<JobState> {
    let plan = plan_end(live, outcome, tx.now, pending)?;
    let params = StepParams::new(live.job, plan.from, &plan, tx.now, live.seq);
    if tx.query_opt(STEP_SQL, &params.params()).await?.is_none() {
        return Err(corrupt(format!(
            "job {} was not running when ending its attempt",
            live.job
        ))
        .into());
    }
    if plan.to.is_terminal() {
        settle_dependents(tx, live.job).await?;
    }
    Ok(plan.to)
}

/// Applies what an event uploaded by a run means for the store: a checkpoint moves the
/// job's work-in-progress pointer, an insights snapshot becomes the run's live figures.
async fn apply_run_event(tx: &Tx, live: &Live, kind: &str, data: &str) -> R<()> {
    let invalid = |message: String| {
        StoreError::Invalid(gantry_core::SpecError {
            file: format!("event {kind} of run {}", live.run),
            line: None,
            field: Some("data".into()),
            message,
        })
    };
    match kind {
        ev::RUN_CHECKPOINT => {
            let cp: Checkpoint = serde_json::from_str(data).map_err(|e| {
                invalid(format!(
                    "a checkpoint needs wip_branch, wip_base and wip_commit: {e}"
                ))
            })?;
            tx.execute(
                "INSERT INTO job_agent (job_id, wip_branch, wip_base, wip_commit)
                 VALUES ($1, $2, $3, $4)
                 ON CONFLICT (job_id) DO UPDATE SET wip_branch = excluded.wip_branch,
                     wip_base = excluded.wip_base, wip_commit = excluded.wip_commit",
                &[&live.job.0, &cp.branch, &cp.base, &cp.commit],
            )
            .await?;
        }
        ev::AGENT_INSIGHTS => {
            // Checked to be insights before it is kept as the run's figures.
            let insights: gantry_core::engine::Insights = serde_json::from_str(data)
                .map_err(|e| invalid(format!("not a valid insights snapshot: {e}")))?;
            let text = serde_json::to_string(&insights)
                .map_err(|e| corrupt(format!("cannot encode insights: {e}")))?;
            tx.execute(
                "UPDATE runs SET insights = $2 WHERE id = $1",
                &[&live.run.0, &text],
            )
            .await?;
            if let Some(session) = &insights.session_id {
                tx.execute(SAVE_SESSION_SQL, &[&live.job.0, session])
                    .await?;
            }
        }
        _ => {}
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Operations
// ---------------------------------------------------------------------------------------

/// The job stored under the idempotency key `key` of `owner` (see
/// [`rules::key_owner`]); keys stored before keys were scoped
/// ([`rules::UNSCOPED_KEYS`]) are every owner's, the owner's own first.
async fn lookup_key(tx: &Tx, owner: i64, key: &str) -> R<Option<JobId>> {
    Ok(tx
        .query_opt(
            "SELECT id FROM jobs WHERE idempotency_key = $2 AND submitter IN ($1, $3)
             ORDER BY submitter = $1 DESC LIMIT 1",
            &[&owner, &key, &rules::UNSCOPED_KEYS],
        )
        .await?
        .map(|r| r.try_get(0))
        .transpose()?
        .map(JobId))
}

/// The spec (JSON text) of a stored job.
async fn stored_spec(tx: &Tx, id: JobId) -> R<String> {
    Ok(tx
        .query_opt("SELECT spec FROM job_specs WHERE job_id = $1", &[&id.0])
        .await?
        .ok_or_else(|| corrupt(format!("job {id} has no spec")))?
        .try_get(0)?)
}

async fn job_exists(tx: &Tx, id: JobId) -> R<bool> {
    Ok(tx
        .query_opt("SELECT 1 FROM jobs WHERE id = $1", &[&id.0])
        .await?
        .is_some())
}

async fn submit_tx(tx: &Tx, jobs: &[ParsedJob], submitter: Option<i64>) -> R<Vec<Submitted>> {
    let owner = rules::key_owner(submitter);
    // 1. Idempotency: which entries are new, and which name a job stored earlier (or an
    //    earlier entry of this batch with the same key); a key reused with a different
    //    spec refuses the batch. Two batches racing for one new key: the second
    //    violates the unique index and runs again, finding the first.
    let mut slots = Vec::with_capacity(jobs.len());
    let mut news: Vec<usize> = Vec::new();
    let mut batch_keys: HashMap<&str, usize> = HashMap::new();
    for (i, pj) in jobs.iter().enumerate() {
        if let Some(key) = pj.spec.idempotency_key.as_deref() {
            if let Some(&n) = batch_keys.get(key) {
                rules::check_batch_key_reuse(pj, key, &jobs[news[n]])?;
                slots.push(SlotOf::SameAs(n));
                continue;
            }
            if let Some(id) = lookup_key(tx, owner, key).await? {
                rules::check_key_reuse(pj, key, id, &stored_spec(tx, id).await?)?;
                slots.push(SlotOf::Existing(id));
                continue;
            }
            batch_keys.insert(key, news.len());
        }
        slots.push(SlotOf::New(news.len()));
        news.push(i);
    }

    // 2. Resolve every new job's deps.
    let mut edges: Vec<Vec<(Target, &DepRef)>> = Vec::with_capacity(news.len());
    let mut stored: Vec<i64> = Vec::new();
    for &i in &news {
        let pj = &jobs[i];
        let mut targets: Vec<(Target, &DepRef)> = Vec::new();
        for dep in &pj.spec.deps {
            let target = match dep {
                DepRef::Id(id) => job_exists(tx, *id).await?.then_some(Target::Stored(*id)),
                DepRef::Key(key) => match batch_keys.get(key.as_str()) {
                    Some(&n) => Some(Target::New(n)),
                    None => match lookup_key(tx, owner, key).await? {
                        Some(id) => Some(Target::Stored(id)),
                        // A number written as a string ("12") matching no key is an id.
                        None => match key.trim().parse::<JobId>() {
                            Ok(id) if job_exists(tx, id).await? => Some(Target::Stored(id)),
                            _ => None,
                        },
                    },
                },
            };
            let Some(target) = target else {
                return Err(StoreError::from(pj.error(
                    "deps",
                    format!("unknown dependency {dep}: no job has this id or idempotency key"),
                ))
                .into());
            };
            if let Target::Stored(id) = target {
                stored.push(id.0);
            }
            targets.push((target, dep));
        }
        edges.push(targets);
    }

    // 3. Cycles among the new jobs (stored jobs cannot depend on new ones), and an order
    //    in which every new job comes after its new deps.
    let order = topo_order(jobs, &news, &edges)?;
    if news.is_empty() {
        return Ok(finish_slots(slots, &[]));
    }

    // 4. Mark the stored jobs depended on, which locks them, so none of them ends
    //    unseen between reading its state below and this commit: a finish reads the
    //    mark under the same lock and settles dependents when it is set.
    stored.sort_unstable();
    stored.dedup();
    if !stored.is_empty() {
        tx.execute(
            "WITH t AS (SELECT id FROM jobs WHERE id = ANY($1) ORDER BY id FOR NO KEY UPDATE)
             UPDATE jobs SET has_dependents = true FROM t
             WHERE jobs.id = t.id AND NOT jobs.has_dependents",
            &[&stored],
        )
        .await?;
    }

    // 5. Store the new jobs in batch order, so ids follow submission order.
    let n = news.len();
    // New jobs that other new jobs depend on start marked (see step 4).
    let mut depended = vec![false; n];
    for targets in &edges {
        for (t, _) in targets {
            if let Target::New(m) = *t {
                depended[m] = true;
            }
        }
    }
    let mut states = Vec::with_capacity(n);
    let mut priorities = Vec::with_capacity(n);
    let mut max_attempts = Vec::with_capacity(n);
    let mut locks = Vec::with_capacity(n);
    let mut modes = Vec::with_capacity(n);
    let mut keys = Vec::with_capacity(n);
    let mut owners: Vec<Option<i64>> = Vec::with_capacity(n);
    let mut caps = Vec::with_capacity(n);
    let mut retry_ons = Vec::with_capacity(n);
    let mut backoffs = Vec::with_capacity(n);
    let mut titles = Vec::with_capacity(n);
    let mut specs = Vec::with_capacity(n);
    let mut submitted = Vec::with_capacity(n);
    for &i in &news {
        let spec = &jobs[i].spec;
        let state = if spec.deps.is_empty() {
            JobState::Queued
        } else {
            JobState::Blocked
        };
        states.push(state.as_str());
        priorities.push(i64::from(spec.priority));
        max_attempts.push(i64::from(spec.max_attempts.max(1)));
        locks.push(spec.lock.as_deref());
        modes.push(deps_mode_str(spec.deps_mode));
        keys.push(spec.idempotency_key.as_deref());
        owners.push(spec.idempotency_key.as_ref().map(|_| owner));
        caps.push(
            serde_json::to_string(&spec.capabilities)
                .map_err(|e| corrupt(format!("cannot encode capabilities: {e}")))?,
        );
        let retry_on: Vec<&str> = spec.retry_on.iter().map(|o| o.as_str()).collect();
        retry_ons.push(retry_on.join(","));
        backoffs.push(i64::try_from(spec.backoff_ms).unwrap_or(i64::MAX));
        titles.push(spec.title.as_str());
        specs.push(
            serde_json::to_string(spec)
                .map_err(|e| corrupt(format!("cannot encode job spec: {e}")))?,
        );
        submitted.push(json!({"title": spec.title, "state": state.as_str()}).to_string());
    }
    let rows = tx
        .query(
            "INSERT INTO jobs (state, priority, max_attempts, lock_key, deps_mode,
                 idempotency_key, submitter, capabilities, retry_on, backoff_ms, created_at,
                 event_seq, has_dependents)
             SELECT x.state, x.priority, x.max_attempts, x.lock_key, x.deps_mode, x.key,
                 x.submitter, ARRAY(SELECT json_array_elements_text(x.caps::json)),
                 x.retry_on, x.backoff_ms, $10, 1, x.depended
             FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::text[], $5::text[],
                         $6::text[], $7::text[], $8::text[], $9::bigint[], $11::boolean[],
                         $12::bigint[])
                 WITH ORDINALITY AS x(state, priority, max_attempts, lock_key, deps_mode,
                                      key, caps, retry_on, backoff_ms, depended, submitter,
                                      ord)
             ORDER BY x.ord
             RETURNING id",
            &[
                &states,
                &priorities,
                &max_attempts,
                &locks,
                &modes,
                &keys,
                &caps,
                &retry_ons,
                &backoffs,
                &tx.now,
                &depended,
                &owners,
            ],
        )
        .await?;
    let mut ids: Vec<i64> = rows
        .iter()
        .map(|r| r.try_get(0))
        .collect::<std::result::Result<_, _>>()?;
    // One statement's ids come from the sequence in row order, so sorted they are in
    // batch order.
    ids.sort_unstable();
    if ids.len() != n {
        return Err(corrupt(format!("stored {} of {n} new jobs", ids.len())).into());
    }
    let dep_lists: Vec<String> = edges
        .iter()
        .map(|targets| {
            let mut seen = HashSet::new();
            let list: Vec<i64> = targets
                .iter()
                .map(|(t, _)| match *t {
                    Target::Stored(id) => id.0,
                    Target::New(m) => ids[m],
                })
                .filter(|id| seen.insert(*id))
                .collect();
            serde_json::to_string(&list).unwrap_or_else(|_| "[]".into())
        })
        .collect();
    tx.execute(
        "INSERT INTO job_specs (job_id, title, deps, spec)
         SELECT x.id, x.title, ARRAY(SELECT json_array_elements_text(x.deps::json)::bigint),
             x.spec
         FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[])
             AS x(id, title, deps, spec)",
        &[&ids, &titles, &dep_lists, &specs],
    )
    .await?;
    tx.execute(
        &format!(
            "INSERT INTO events (job_id, run_id, seq, kind, at, data)
             SELECT x.id, NULL, 1, '{}', $2, x.data
             FROM unnest($1::bigint[], $3::text[]) WITH ORDINALITY AS x(id, data, ord)
             ORDER BY x.ord",
            ev::JOB_SUBMITTED
        ),
        &[&ids, &tx.now, &submitted],
    )
    .await?;
    let mut dep_jobs = Vec::new();
    let mut dep_deps = Vec::new();
    for (n, list) in dep_lists.iter().enumerate() {
        let list: Vec<i64> = parse_json("job deps", list)?;
        for d in list {
            dep_jobs.push(ids[n]);
            dep_deps.push(d);
        }
    }
    if !dep_jobs.is_empty() {
        tx.execute(
            "INSERT INTO job_deps (job_id, dep_id) SELECT * FROM unnest($1::bigint[], $2::bigint[])",
            &[&dep_jobs, &dep_deps],
        )
        .await?;
    }

    // 6. Settle the blocked jobs, deps first.
    for n in order {
        if edges[n].is_empty() {
            continue;
        }
        if let Some(to) = settle_blocked(tx, JobId(ids[n])).await?
            && to.is_terminal()
        {
            settle_dependents(tx, JobId(ids[n])).await?;
        }
    }
    let ids: Vec<JobId> = ids.into_iter().map(JobId).collect();
    Ok(finish_slots(slots, &ids))
}

/// How an entry of a submitted batch was resolved.
enum SlotOf {
    Existing(JobId),
    SameAs(usize),
    New(usize),
}

fn finish_slots(slots: Vec<SlotOf>, ids: &[JobId]) -> Vec<Submitted> {
    slots
        .into_iter()
        .map(|s| match s {
            SlotOf::Existing(id) => Submitted { id, existing: true },
            SlotOf::SameAs(n) => Submitted {
                id: ids[n],
                existing: true,
            },
            SlotOf::New(n) => Submitted {
                id: ids[n],
                existing: false,
            },
        })
        .collect()
}

async fn reap_tx(tx: &Tx) -> R<Vec<RunId>> {
    let expired = tx
        .query(
            "SELECT j.id, r.id, j.epoch, j.attempt, j.max_attempts, j.retry_on, j.backoff_ms,
                    j.stop_requested, j.event_seq
             FROM jobs j JOIN runs r ON r.id = j.current_run
             WHERE j.state = 'running' AND r.lease_expires_at < $1
             ORDER BY j.id
             FOR NO KEY UPDATE OF j SKIP LOCKED",
            &[&tx.now],
        )
        .await?;
    let mut reaped = Vec::with_capacity(expired.len());
    for row in expired {
        let (job, run, epoch): (i64, i64, i64) =
            (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?);
        let stop: Option<String> = row.try_get(7)?;
        let live = Live {
            job: JobId(job),
            run: RunId(run),
            attempt: to_u32("attempt", row.try_get(3)?)?,
            max_attempts: to_u32("max_attempts", row.try_get(4)?)?,
            retry_on: row.try_get(5)?,
            backoff_ms: u64::try_from(row.try_get::<_, i64>(6)?).unwrap_or(0),
            stop: parse_stop(stop.as_deref())?,
            seq: row.try_get(8)?,
            job_epoch: epoch,
            now: tx.now,
            has_dependents: true,
            check: Ok(()),
        };
        // A fresh statement under the job's lock: a renewal that committed after the
        // scan's snapshot saved the lease.
        let lost = tx
            .execute(
                "UPDATE runs SET outcome = 'lost', finished_at = $2
                 WHERE id = $1 AND outcome IS NULL AND lease_expires_at < $2",
                &[&run, &tx.now],
            )
            .await?;
        if lost == 0 {
            continue;
        }
        let expired = Pending {
            run: Some(live.run),
            kind: ev::LEASE_EXPIRED,
            data: format!(r#"{{"run":{run},"epoch":{epoch}}}"#),
        };
        let to = end_attempt(tx, &live, Outcome::Lost, vec![expired]).await?;
        tracing::info!(job, run, epoch, %to, "lease expired");
        reaped.push(live.run);
    }
    Ok(reaped)
}

async fn load_job(tx: &Tx, id: JobId) -> R<Job> {
    Ok(tx
        .query_opt(
            &format!("SELECT {JOB_COLS} FROM {JOB_FROM} WHERE id = $1"),
            &[&id.0],
        )
        .await?
        .ok_or_else(|| not_found("job", id))
        .map(|r| RawJob::read(&r))??
        .into_job()?)
}

/// Cancels or kills a job: at once when it is not running, else by recording the stop
/// request that its factory sees on its next renew.
async fn stop_tx(tx: &Tx, id: JobId, kind: StopKind) -> R<Job> {
    let row = tx
        .query_opt(
            "SELECT state, stop_requested, current_run, event_seq FROM jobs WHERE id = $1
             FOR NO KEY UPDATE",
            &[&id.0],
        )
        .await?
        .ok_or_else(|| not_found("job", id))?;
    let st: String = row.try_get(0)?;
    let stop: Option<String> = row.try_get(1)?;
    let current_run: Option<i64> = row.try_get(2)?;
    let seq: i64 = row.try_get(3)?;
    let state = parse_state(&st)?;
    let (input, reason) = match kind {
        StopKind::Cancel => (Input::Cancel, "canceled on request"),
        StopKind::Kill => (Input::Kill, "killed on request"),
    };
    let effect = transition(
        tx,
        id,
        state,
        input,
        Some(reason),
        None,
        Some(seq),
        Vec::new(),
    )
    .await?
    .effect;
    let requested = match effect {
        Effect::None => None,
        Effect::RequestCancel => Some((StopKind::Cancel, ev::JOB_CANCEL_REQUESTED)),
        Effect::RequestKill => Some((StopKind::Kill, ev::JOB_KILL_REQUESTED)),
    };
    if let Some((want, kind)) = requested {
        // A kill already asked for is stronger than a later cancel: keep it.
        let keep_kill = parse_stop(stop.as_deref())? == Some(StopKind::Kill);
        if !keep_kill {
            tx.execute(
                "UPDATE jobs SET stop_requested = $2 WHERE id = $1",
                &[&id.0, &want.as_str()],
            )
            .await?;
        }
        add_event(tx, Some(id), current_run.map(RunId), kind, "{}").await?;
    }
    load_job(tx, id).await
}

async fn retry_tx(tx: &Tx, id: JobId) -> R<Job> {
    tx.execute(
        "SELECT 1 FROM jobs WHERE id = $1 FOR NO KEY UPDATE",
        &[&id.0],
    )
    .await?;
    let job = load_job(tx, id).await?;
    if !matches!(
        job.state,
        JobState::Failed | JobState::Canceled | JobState::Killed
    ) {
        return Err(StoreError::WrongState {
            job: id,
            state: job.state,
            action: "retry",
        }
        .into());
    }
    let deps_met = deps_verdict(tx, id, job.deps_mode).await? == DepsVerdict::Met;
    tx.execute(
        "UPDATE jobs SET max_attempts = greatest(max_attempts, attempt + 1),
             stop_requested = NULL
         WHERE id = $1",
        &[&id.0],
    )
    .await?;
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
        None,
        Vec::new(),
    )
    .await?;
    load_job(tx, id).await
}

/// Returns whether it changed anything.
async fn set_paused_tx(tx: &Tx, paused: bool) -> R<bool> {
    let changed = tx
        .execute(
            "UPDATE queue SET paused = $1 WHERE id = 1 AND paused <> $1",
            &[&paused],
        )
        .await?;
    if changed > 0 {
        let kind = if paused {
            ev::QUEUE_PAUSED
        } else {
            ev::QUEUE_RESUMED
        };
        add_event(tx, None, None, kind, "{}").await?;
    }
    Ok(changed > 0)
}

/// Registers a factory by name (or updates the one of that name) and returns its id.
async fn register_tx(tx: &Tx, reg: &RegisterFactory) -> R<i64> {
    let set = cap_set(&reg.capabilities);
    let seats = i64::from(reg.seats);
    let row = tx
        .query_one(
            "INSERT INTO factories (name, seats, capabilities, cap_set, last_seen)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (name) DO UPDATE SET seats = excluded.seats,
                 capabilities = excluded.capabilities, cap_set = excluded.cap_set,
                 last_seen = excluded.last_seen
             RETURNING id",
            &[&reg.name, &seats, &reg.capabilities, &set, &tx.now],
        )
        .await?;
    Ok(row.try_get(0)?)
}

/// Registers a factory for the token `token` (see [`Store::register_factory_for_token`]
/// and [`rules::registration`], which decides); changes nothing when a binding is in
/// the way.
///
/// The token's row is locked first, so registrations with one token take turns, and
/// an existing factory's row is locked before its holder is read. Two tokens racing for
/// a new name both insert it: the loser violates the name's unique index and runs again,
/// seeing the winner's row; two racing to bind one factory are settled by the unique
/// index `tokens_live_factory` the same way.
async fn register_for_token_tx(tx: &Tx, reg: &RegisterFactory, token: i64) -> R<Binding> {
    let row = tx
        .query_opt(
            "SELECT t.name, t.scope, f.name FROM tokens t
             LEFT JOIN factories f ON f.id = t.factory_id WHERE t.id = $1 FOR UPDATE OF t",
            &[&token],
        )
        .await?
        .ok_or_else(|| not_found("token", token))?;
    let scope: String = row.try_get(1)?;
    let who = rules::Registrant {
        id: token,
        name: row.try_get(0)?,
        scope: scope.parse::<Scope>().map_err(corrupt)?,
        bound_to: row.try_get(2)?,
    };
    let existing = tx
        .query_opt(
            "SELECT f.id, f.token_id, r.name, r.revoked_at IS NULL,
                 (SELECT t.name FROM tokens t WHERE t.factory_id = f.id
                      AND t.revoked_at IS NULL AND t.id <> $2 LIMIT 1)
             FROM factories f LEFT JOIN tokens r ON r.id = f.token_id
             WHERE f.name = $1 FOR UPDATE OF f",
            &[&reg.name, &token],
        )
        .await?;
    let holder = match &existing {
        None => None,
        Some(row) => {
            let registrar: Option<i64> = row.try_get(1)?;
            let registrar_name: Option<String> = row.try_get(2)?;
            let live: bool = row.try_get(3)?;
            Some(rules::NameHolder {
                registrar: registrar.map(|id| (id, registrar_name.unwrap_or_default(), live)),
                bound_live: row.try_get(4)?,
            })
        }
    };
    let (own, bind) = match rules::registration(&reg.name, &who, holder.as_ref()) {
        rules::Registration::Go { own, bind } => (own, bind),
        rules::Registration::Refused(binding) => return Ok(binding),
    };
    let id = match &existing {
        Some(row) => {
            let id: i64 = row.try_get(0)?;
            let set = cap_set(&reg.capabilities);
            let seats = i64::from(reg.seats);
            tx.execute(
                "UPDATE factories SET seats = $2, capabilities = $3, cap_set = $4,
                     last_seen = $5, token_id = CASE WHEN $6 THEN $7 ELSE token_id END
                 WHERE id = $1",
                &[&id, &seats, &reg.capabilities, &set, &tx.now, &own, &token],
            )
            .await?;
            id
        }
        None => {
            let set = cap_set(&reg.capabilities);
            let seats = i64::from(reg.seats);
            // A plain insert: a racing registration of the same new name makes one of
            // the two violate the unique index and run again (see above).
            tx.query_one(
                "INSERT INTO factories (name, seats, capabilities, cap_set, last_seen, token_id)
                 VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
                &[&reg.name, &seats, &reg.capabilities, &set, &tx.now, &token],
            )
            .await?
            .try_get(0)?
        }
    };
    if bind {
        tx.execute(
            "UPDATE tokens SET factory_id = $2 WHERE id = $1",
            &[&token, &id],
        )
        .await?;
    }
    Ok(Binding::Bound(FactoryId(id)))
}

fn is_unique_violation(e: &TxError) -> bool {
    matches!(e, TxError::Db(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION))
}

#[async_trait]
impl Store for PgStore {
    async fn submit_as(
        &self,
        jobs: Vec<ParsedJob>,
        submitter: Option<i64>,
    ) -> Result<Vec<Submitted>> {
        let out = in_tx!(self, |tx| submit_tx(&tx, &jobs, submitter).await)?;
        if out.iter().any(|s| !s.existing) {
            self.changed();
        }
        Ok(out)
    }

    async fn job(&self, id: JobId) -> Result<Job> {
        let tx = self.conn().await?;
        Ok(load_job(&tx, id).await?)
    }

    async fn jobs(&self, filter: &JobFilter) -> Result<Vec<Job>> {
        let limit = filter.limit.map(|l| i64::try_from(l).unwrap_or(i64::MAX));
        let tx = self.conn().await?;
        // With no cursor, every id is below the largest one: one range scan either way.
        let before = filter.before.map_or(i64::MAX, |id| id.0);
        let rows = match filter.state {
            Some(st) => {
                tx.query(
                    &format!(
                        "SELECT {JOB_LIST_COLS} FROM {JOB_FROM}
                         WHERE state = $1 AND jobs.id < $2 ORDER BY jobs.id DESC LIMIT $3"
                    ),
                    &[&st.as_str(), &before, &limit],
                )
                .await?
            }
            None => {
                tx.query(
                    &format!(
                        "SELECT {JOB_LIST_COLS} FROM {JOB_FROM}
                         WHERE jobs.id < $1 ORDER BY jobs.id DESC LIMIT $2"
                    ),
                    &[&before, &limit],
                )
                .await?
            }
        };
        rows.iter().map(|r| RawJob::read(r)?.into_job()).collect()
    }

    async fn run_diff(&self, run: RunId) -> Result<Option<String>> {
        let tx = self.conn().await?;
        let row = tx
            .query_opt(
                "SELECT d.patch, r.id FROM runs r LEFT JOIN run_diffs d ON d.run_id = r.id
                 WHERE r.id = $1",
                &[&run.0],
            )
            .await?;
        match row {
            Some(r) => Ok(r.try_get(0)?),
            None => Err(not_found("run", run)),
        }
    }

    async fn runs(&self, job: JobId) -> Result<Vec<gantry_core::Run>> {
        let tx = self.conn().await?;
        let rows = tx
            .query(
                &format!("SELECT {RUN_COLS} FROM runs WHERE job_id = $1 ORDER BY id"),
                &[&job.0],
            )
            .await?;
        if rows.is_empty() && !job_exists(&tx, job).await? {
            return Err(not_found("job", job));
        }
        rows.iter().map(|r| Ok(read_run(r)?)).collect()
    }

    async fn run(&self, id: RunId) -> Result<gantry_core::Run> {
        let tx = self.conn().await?;
        let row = tx
            .query_opt(
                &format!("SELECT {RUN_COLS} FROM runs WHERE id = $1"),
                &[&id.0],
            )
            .await?
            .ok_or_else(|| not_found("run", id))?;
        Ok(read_run(&row)?)
    }

    async fn register_factory(&self, reg: &RegisterFactory) -> Result<FactoryId> {
        in_tx!(self, |tx| Ok(FactoryId(register_tx(&tx, reg).await?)))
    }

    async fn register_factory_for_token(
        &self,
        reg: &RegisterFactory,
        token: i64,
    ) -> Result<Binding> {
        in_tx!(self, |tx| register_for_token_tx(&tx, reg, token).await)
    }

    async fn heartbeat(&self, factory: FactoryId, hb: &Heartbeat) -> Result<()> {
        let tx = self.conn().await?;
        let n = tx
            .execute(
                "UPDATE factories SET last_seen = gantry_now_ms(), load_1m = $2,
                     free_memory_mb = $3, free_disk_mb = $4, admission = $5
                 WHERE id = $1",
                &[
                    &factory.0,
                    &hb.load_1m,
                    &mb_to_sql(hb.free_memory_mb),
                    &mb_to_sql(hb.free_disk_mb),
                    &hb.admission,
                ],
            )
            .await?;
        if n == 0 {
            return Err(not_found("factory", factory));
        }
        Ok(())
    }

    async fn factories(&self) -> Result<Vec<FactoryInfo>> {
        let tx = self.conn().await?;
        let rows = tx
            .query(
                "SELECT f.id, f.name, f.seats, f.capabilities, f.last_seen, f.load_1m,
                        f.free_memory_mb, f.free_disk_mb, coalesce(c.n, 0),
                        gantry_now_ms() - f.last_seen, f.admission
                 FROM factories f
                 LEFT JOIN (SELECT r.factory_id AS fid, count(*) AS n
                            FROM jobs j JOIN runs r ON r.id = j.current_run
                            WHERE j.state = 'running'
                            GROUP BY r.factory_id) c ON c.fid = f.id
                 ORDER BY f.id",
                &[],
            )
            .await?;
        rows.iter()
            .map(|r| {
                let ago: i64 = r.try_get(9)?;
                Ok(FactoryInfo {
                    id: FactoryId(r.try_get(0)?),
                    name: r.try_get(1)?,
                    seats: to_u32("seats", r.try_get(2)?)?,
                    capabilities: r.try_get(3)?,
                    last_seen: r.try_get(4)?,
                    last_seen_ago_ms: u64::try_from(ago).unwrap_or(0),
                    running: to_u32("running", r.try_get(8)?)?,
                    stats: Heartbeat {
                        load_1m: r.try_get(5)?,
                        free_memory_mb: mb_from_sql("free_memory_mb", r.try_get(6)?)?,
                        free_disk_mb: mb_from_sql("free_disk_mb", r.try_get(7)?)?,
                        admission: r.try_get(10)?,
                    },
                })
            })
            .collect::<R<Vec<_>>>()
            .map_err(StoreError::from)
    }

    async fn claim(&self, factory: FactoryId, ttl: Duration) -> Result<Option<Claim>> {
        let answer = self.ask(None, Some(factory), ttl_millis(ttl)).await?;
        if !answer.factory_found {
            return Err(not_found("factory", factory));
        }
        Ok(answer.claim)
    }

    async fn renew(&self, run: RunId, epoch: i64, ttl: Duration) -> Result<Renewed> {
        let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX / 2);
        fenced!(self, run, epoch, "renew", |tx, live| {
            let expires = tx.now.saturating_add(ttl_ms);
            tx.execute(
                "WITH u AS (UPDATE runs SET lease_expires_at = $2 WHERE id = $1
                            RETURNING factory_id)
                 UPDATE factories SET last_seen = $3 FROM u WHERE factories.id = u.factory_id",
                &[&run.0, &expires, &tx.now],
            )
            .await?;
            Ok(Renewed {
                lease_expires_at: expires,
                stop: live.stop,
            })
        })
    }

    async fn append_events(&self, run: RunId, epoch: i64, events: Vec<NewEvent>) -> Result<()> {
        let n = i64::try_from(events.len()).unwrap_or(i64::MAX);
        if n == 0 {
            // Still fenced: an empty upload from a stale worker is refused too.
            return fenced!(self, run, epoch, "events", |_tx, _live| Ok(()));
        }
        let kinds: Vec<String> = events.iter().map(|e| e.kind.clone()).collect();
        let datas: Vec<String> = events.iter().map(|e| e.data.to_string()).collect();
        fenced!(self, run, epoch, "events", |tx, live| {
            tx.execute(
                "WITH s AS (UPDATE jobs SET event_seq = event_seq + $3 WHERE id = $1
                            RETURNING event_seq)
                 INSERT INTO events (job_id, run_id, seq, kind, at, data)
                 SELECT $1, $2, s.event_seq - $3 + x.ord, x.kind, $4, x.data
                 FROM s, unnest($5::text[], $6::text[]) WITH ORDINALITY AS x(kind, data, ord)
                 ORDER BY x.ord",
                &[&live.job.0, &run.0, &n, &tx.now, &kinds, &datas],
            )
            .await?;
            for (kind, data) in kinds.iter().zip(&datas) {
                apply_run_event(tx, live, kind, data).await?;
            }
            Ok(())
        })?;
        self.changed();
        Ok(())
    }

    async fn finish(&self, run: RunId, report: FinishReport) -> Result<Job> {
        if let Some(finish) = simple_finish(run, &report, true)? {
            let answer = self.ask(Some(finish), None, 0).await?;
            match answer.finished {
                Some(batch::Finished::Job(raw)) => return raw.into_job(),
                Some(batch::Finished::Row(_)) => {
                    return Err(StoreError::Corrupt(format!(
                        "the batch answered the finish of run {run} without its job"
                    )));
                }
                None => {}
            }
        }
        self.finish_full(run, report).await
    }

    async fn finish_and_claim(
        &self,
        run: RunId,
        report: FinishReport,
        factory: FactoryId,
        ttl: Duration,
    ) -> Result<(JobState, Option<Claim>)> {
        if let Some(finish) = simple_finish(run, &report, false)? {
            let answer = self
                .ask(Some(finish), Some(factory), ttl_millis(ttl))
                .await?;
            if let Some(finished) = answer.finished {
                if !answer.factory_found {
                    // The finish is committed; the claim, as on its own, names the factory.
                    return Err(not_found("factory", factory));
                }
                return Ok((parse_state(&finished.row().state)?, answer.claim));
            }
        }
        let job = self.finish_full(run, report).await?;
        let claim = self.claim(factory, ttl).await?;
        Ok((job.state, claim))
    }

    async fn reap(&self) -> Result<Vec<RunId>> {
        let reaped = in_tx!(self, |tx| reap_tx(&tx).await)?;
        if !reaped.is_empty() {
            self.changed();
        }
        Ok(reaped)
    }

    async fn expire_leases_of(&self, factory: FactoryId) -> Result<Vec<RunId>> {
        let mut runs = in_tx!(self, |tx| {
            let rows = tx
                .query(
                    "UPDATE runs SET lease_expires_at = $2
                     WHERE factory_id = $1 AND id IN
                         (SELECT current_run FROM jobs WHERE state = 'running')
                     RETURNING id",
                    &[&factory.0, &(tx.now - 1)],
                )
                .await?;
            rows.iter()
                .map(|r| Ok(RunId(r.try_get(0)?)))
                .collect::<R<Vec<_>>>()
        })?;
        runs.sort();
        if !runs.is_empty() {
            self.changed();
        }
        Ok(runs)
    }

    async fn cancel(&self, id: JobId) -> Result<Job> {
        let job = in_tx!(self, |tx| stop_tx(&tx, id, StopKind::Cancel).await)?;
        self.changed();
        Ok(job)
    }

    async fn kill(&self, id: JobId) -> Result<Job> {
        let job = in_tx!(self, |tx| stop_tx(&tx, id, StopKind::Kill).await)?;
        self.changed();
        Ok(job)
    }

    async fn kill_all(&self) -> Result<Vec<JobId>> {
        let running = in_tx!(self, |tx| {
            set_paused_tx(&tx, true).await?;
            let rows = tx
                .query(
                    "SELECT id FROM jobs WHERE state = 'running' ORDER BY id",
                    &[],
                )
                .await?;
            let mut ids = Vec::with_capacity(rows.len());
            for r in rows {
                let id = JobId(r.try_get(0)?);
                stop_tx(&tx, id, StopKind::Kill).await?;
                ids.push(id);
            }
            Ok(ids)
        })?;
        self.changed();
        Ok(running)
    }

    async fn retry(&self, id: JobId) -> Result<Job> {
        let job = in_tx!(self, |tx| retry_tx(&tx, id).await)?;
        self.changed();
        Ok(job)
    }

    async fn set_paused(&self, paused: bool) -> Result<()> {
        if in_tx!(self, |tx| set_paused_tx(&tx, paused).await)? {
            self.changed();
        }
        Ok(())
    }

    async fn status(&self) -> Result<Status> {
        let tx = self.conn().await?;
        let paused: bool = tx
            .query_one("SELECT paused FROM queue WHERE id = 1", &[])
            .await?
            .try_get(0)
            .map_err(StoreError::from)?;
        let mut jobs: BTreeMap<String, u64> = JobState::ALL
            .iter()
            .map(|s| (s.as_str().to_string(), 0))
            .collect();
        let rows = tx
            .query("SELECT state, count(*) FROM jobs GROUP BY state", &[])
            .await?;
        for r in rows {
            let state: String = r.try_get(0).map_err(StoreError::from)?;
            let n: i64 = r.try_get(1).map_err(StoreError::from)?;
            jobs.insert(state, u64::try_from(n).unwrap_or(0));
        }
        Ok(Status { paused, jobs })
    }

    async fn queue_depth(&self) -> Result<BTreeMap<String, u64>> {
        let tx = self.conn().await?;
        // Grouped by the stored array, so only one row per distinct list leaves the
        // database; lists that are one set in another order are merged afterwards.
        let rows = tx
            .query(
                "SELECT capabilities, count(*) FROM jobs WHERE state = 'queued' \
                 GROUP BY capabilities",
                &[],
            )
            .await?;
        let groups = rows
            .iter()
            .map(|r| -> Result<(Vec<String>, i64)> {
                Ok((
                    r.try_get(0).map_err(StoreError::from)?,
                    r.try_get(1).map_err(StoreError::from)?,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(rules::queue_depth_of(groups))
    }

    async fn record_event(
        &self,
        job: Option<JobId>,
        run: Option<RunId>,
        event: NewEvent,
    ) -> Result<Event> {
        let data = event.data.to_string();
        let (id, seq, at) = in_tx!(self, |tx| {
            if let Some(run) = run {
                let owner: Option<i64> = tx
                    .query_opt("SELECT job_id FROM runs WHERE id = $1", &[&run.0])
                    .await?
                    .map(|r| r.try_get(0))
                    .transpose()?;
                match (owner, job) {
                    (None, _) => return Err(not_found("run", run).into()),
                    (Some(owner), Some(job)) if owner != job.0 => {
                        return Err(not_found("run", format!("{run} of job {job}")).into());
                    }
                    _ => {}
                }
            }
            let (id, seq) = add_event(&tx, job, run, &event.kind, &data).await?;
            Ok((id, seq, tx.now))
        })?;
        self.changed();
        Ok(Event {
            id,
            job_id: job,
            run_id: run,
            seq,
            kind: event.kind,
            at,
            data: event.data,
        })
    }

    async fn events(&self, after: i64, job: Option<JobId>, limit: usize) -> Result<Vec<Event>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let tx = self.conn().await?;
        // Only ids below the settled horizon: above it, an event of a transaction still
        // in progress could appear later with a smaller id than one returned now.
        let settled: Option<i64> = tx
            .query_one("SELECT gantry_settled_event_id()", &[])
            .await?
            .try_get(0)
            .map_err(StoreError::from)?;
        let Some(settled) = settled else {
            tracing::warn!(
                after,
                "a transaction of this database has been writing for over 2 s; \
                 events after it are held back until it ends"
            );
            return Ok(Vec::new());
        };
        let rows = match job {
            Some(job) => {
                tx.query(
                    &format!(
                        "SELECT {EVENT_COLS} FROM events
                         WHERE job_id = $1 AND id > $2 AND id <= $3 ORDER BY id LIMIT $4"
                    ),
                    &[&job.0, &after, &settled, &limit],
                )
                .await?
            }
            None => {
                tx.query(
                    &format!(
                        "SELECT {EVENT_COLS} FROM events
                         WHERE id > $1 AND id <= $2 ORDER BY id LIMIT $3"
                    ),
                    &[&after, &settled, &limit],
                )
                .await?
            }
        };
        rows.iter().map(|r| Ok(read_event(r)?)).collect()
    }

    async fn create_token(&self, name: &str, scope: Scope, hash: &str) -> Result<TokenInfo> {
        in_tx!(self, |tx| {
            let taken = async |col: &str, v: &str| -> R<bool> {
                Ok(tx
                    .query_opt(&format!("SELECT 1 FROM tokens WHERE {col} = $1"), &[&v])
                    .await?
                    .is_some())
            };
            if taken("name", name).await? {
                return Err(StoreError::Exists {
                    what: "token",
                    name: name.to_string(),
                }
                .into());
            }
            if taken("hash", hash).await? {
                return Err(StoreError::Exists {
                    what: "token with the same secret as",
                    name: name.to_string(),
                }
                .into());
            }
            let row = tx
                .query_one(
                    &format!(
                        "INSERT INTO tokens (name, scope, hash, created_at) VALUES ($1, $2, $3, $4)
                         RETURNING {TOKEN_COLS}"
                    ),
                    &[&name, &scope.as_str(), &hash, &tx.now],
                )
                .await?;
            read_token(&row)
        })
    }

    async fn token_by_hash(&self, hash: &str) -> Result<Option<TokenInfo>> {
        let tx = self.conn().await?;
        let row = tx
            .query_opt(
                &format!("SELECT {TOKEN_COLS} FROM tokens WHERE hash = $1 AND revoked_at IS NULL"),
                &[&hash],
            )
            .await?;
        Ok(row.map(|r| read_token(&r)).transpose()?)
    }

    async fn tokens(&self) -> Result<Vec<TokenInfo>> {
        let tx = self.conn().await?;
        let rows = tx
            .query(&format!("SELECT {TOKEN_COLS} FROM tokens ORDER BY id"), &[])
            .await?;
        rows.iter().map(|r| Ok(read_token(r)?)).collect()
    }

    async fn revoke_token(&self, name: &str) -> Result<TokenInfo> {
        in_tx!(self, |tx| {
            let row = tx
                .query_opt(
                    &format!(
                        "UPDATE tokens SET revoked_at = coalesce(revoked_at, $2) WHERE name = $1
                         RETURNING {TOKEN_COLS}"
                    ),
                    &[&name, &tx.now],
                )
                .await?
                .ok_or_else(|| not_found("token", name))?;
            read_token(&row)
        })
    }

    fn changes(&self) -> watch::Receiver<u64> {
        self.inner.changes.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fixed plan is what the full finish would plan for any row: every stop request,
    /// attempt count, retry policy and clock give the same end.
    #[test]
    fn fixed_plans_hold_for_every_row() {
        let mut fixed = Vec::new();
        for outcome in Outcome::ALL {
            let Some(to) = fixed_plan(outcome) else {
                continue;
            };
            fixed.push(outcome);
            for stop in [None, Some(StopKind::Cancel), Some(StopKind::Kill)] {
                for attempts in [(1, 1), (1, 3), (2, 3), (5, 5)] {
                    for retry_on in [&[][..], &Outcome::ALL[..]] {
                        for now in [0, 1_795_000_000_000] {
                            let end = attempt_end(outcome, stop, attempts, retry_on, 5_000, now);
                            assert!(!end.retry && end.reason.is_none() && end.not_before.is_none());
                            let input = Input::AttemptEnded {
                                outcome: end.outcome,
                                retry: end.retry,
                            };
                            let (planned, _) =
                                state::next(JobState::Running, input).expect("a transition");
                            assert_eq!(planned, to, "{outcome} with {stop:?} at {attempts:?}");
                        }
                    }
                }
            }
        }
        assert_eq!(fixed, [Outcome::Succeeded]);
    }
}
