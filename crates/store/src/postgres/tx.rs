//! PostgreSQL's transactions: a pooled connection with its clock, the retry of lost
//! races, and the statements the shared lifecycle ([`WriteTx`]) and submit planning
//! ([`SubmitTx`]) run.

use super::*;
use crate::lifecycle::RunDoc;
use crate::lifecycle::{EventRef, Expired, Live, StateWrite, StopTarget, WriteTx};
use crate::submit::SubmitTx;
use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod, Runtime};
use gantry_core::api::Checkpoint;
use gantry_core::{Job, JobId, RunId, StopKind};
use tokio_postgres::types::ToSql;
use tokio_postgres::{Row, Statement};

/// A database error as text: the server's code, message and detail when it sent one,
/// else the client's error and its causes.
pub(crate) fn describe(e: &PgError) -> String {
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
pub(super) enum TxError {
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
pub(super) type R<T> = std::result::Result<T, TxError>;

/// Whether an operation that failed this way (before its commit was sent) should simply
/// run again: it lost a race that a new snapshot resolves.
pub(super) fn retryable(e: &TxError) -> bool {
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
pub(super) async fn retry_pause(tries: u32) {
    tokio::time::sleep(Duration::from_millis(u64::from(tries.min(10)))).await;
}

/// One pooled connection, possibly inside a transaction. Dropped inside a transaction
/// (a panic, or a caller that went away), its connection is closed rather than
/// returned to the pool, so the server rolls the transaction back and no later user
/// inherits it.
pub(super) struct Tx {
    pub(super) obj: Option<Object>,
    pub(super) open: bool,
    /// The operation's time, by the database's clock.
    pub(super) now: Millis,
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
    pub(super) fn wrapper(&self) -> &deadpool_postgres::ClientWrapper {
        // Invariant: only `drop` takes the object out.
        self.obj.as_ref().expect("connection present until drop")
    }

    pub(super) fn client(&self) -> &tokio_postgres::Client {
        self.wrapper()
    }

    pub(super) async fn prep(&self, sql: &str) -> std::result::Result<Statement, PgError> {
        self.wrapper().prepare_cached(sql).await
    }

    pub(super) async fn query(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> R<Vec<Row>> {
        let stmt = self.prep(sql).await?;
        Ok(self.client().query(&stmt, params).await?)
    }

    pub(super) async fn query_opt(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> R<Option<Row>> {
        let stmt = self.prep(sql).await?;
        Ok(self.client().query_opt(&stmt, params).await?)
    }

    pub(super) async fn query_one(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> R<Row> {
        let stmt = self.prep(sql).await?;
        Ok(self.client().query_one(&stmt, params).await?)
    }

    pub(super) async fn execute(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> R<u64> {
        let stmt = self.prep(sql).await?;
        Ok(self.client().execute(&stmt, params).await?)
    }

    /// Begins a transaction and reads the database's clock, in one round trip.
    pub(super) async fn begin(&mut self) -> R<()> {
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
    pub(super) async fn end<T>(&mut self, out: R<T>) -> R<T> {
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

impl Inner {
    /// The last event id handed out by any session (0 before the first).
    pub(super) async fn last_event_id(&self) -> Result<i64> {
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

/// A bounded pool of connections made with `config`, through `tls` as its `sslmode` says.
pub(super) fn build_pool(
    config: tokio_postgres::Config,
    tls: super::tls::Connector,
    size: usize,
    shown: &str,
) -> Result<Pool> {
    let manager = Manager::from_config(
        config,
        tls,
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
pub(super) fn show_config(config: &tokio_postgres::Config) -> String {
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

/// Keeps `$2` as the agent session of job `$1`, which a retry resumes.
pub(super) const SAVE_SESSION_SQL: &str =
    "INSERT INTO job_agent (job_id, session_id) VALUES ($1, $2)
     ON CONFLICT (job_id) DO UPDATE SET session_id = excluded.session_id";

/// The part of [`STEP_SQL`] that the finish statement repeats after its own CTEs (the
/// events CTE `e` and the update of the job), as a literal for `concat!`.
macro_rules! step_sql_tail {
    () => {
        "e AS (
    INSERT INTO events (job_id, run_id, seq, kind, at, data)
    SELECT $1, x.run, x.seq, x.kind, $6, x.data
    FROM unnest($7::bigint[], $8::bigint[], $9::text[], $10::text[])
        WITH ORDINALITY AS x(run, seq, kind, data, ord)
    ORDER BY x.ord
)
UPDATE jobs SET state = $11, reason = $2, not_before = $3, finished_at = $4,
    stop_requested = CASE WHEN $11 IN ('running', 'checking') THEN stop_requested ELSE NULL END,
    event_seq = $5
FROM job_specs s LEFT JOIN job_agent ag ON ag.job_id = s.job_id
WHERE jobs.id = $1 AND jobs.state = $12 AND s.job_id = jobs.id
RETURNING jobs.id, state, priority, attempt, max_attempts, epoch, lock_key, deps_mode,
    idempotency_key, stop_requested, reason, not_before, created_at, started_at,
    finished_at, s.title, s.deps, s.spec, ag.session_id, ag.wip_branch, ag.wip_base,
    ag.wip_commit"
    };
}

/// Moves a job from state `$12` to `$11` and records its events (`$7`..`$10`: run, seq,
/// kind and data arrays, in order), returning the job as stored. `$1` job, `$2` reason,
/// `$3` not_before, `$4` finished_at, `$5` the job's last event seq, `$6` now. The
/// events insert runs after the update (an unreferenced data-modifying CTE runs last),
/// which is what takes the job's row lock when the caller does not hold it yet.
pub(super) const STEP_SQL: &str = concat!("WITH ", step_sql_tail!());

/// The parameters of [`STEP_SQL`] (the first twelve of the finish statement's).
pub(super) struct StepParams<'w> {
    w: &'w StateWrite,
    to: &'static str,
    from: &'static str,
}

impl<'w> StepParams<'w> {
    pub(super) fn new(w: &'w StateWrite) -> StepParams<'w> {
        StepParams {
            w,
            to: w.to.as_str(),
            from: w.from.as_str(),
        }
    }

    pub(super) fn params(&self) -> [&(dyn ToSql + Sync); 12] {
        let w = self.w;
        [
            &w.job,
            &w.reason,
            &w.not_before,
            &w.finished_at,
            &w.last_seq,
            &w.now,
            &w.runs,
            &w.seqs,
            &w.kinds,
            &w.datas,
            &self.to,
            &self.from,
        ]
    }
}

impl WriteTx for Tx {
    type Error = TxError;

    fn now(&self) -> Millis {
        self.now
    }

    /// A job's event also takes the job's row lock.
    async fn add_event(&self, e: EventRef<'_>) -> R<(i64, i64)> {
        let EventRef {
            job,
            run,
            kind,
            data,
        } = e;
        let run = run.map(|r| r.0);
        let row = match job {
            Some(job) => self
                .query_opt(
                    "WITH s AS (UPDATE jobs SET event_seq = event_seq + 1 WHERE id = $1
                                RETURNING event_seq)
                     INSERT INTO events (job_id, run_id, seq, kind, at, data)
                     SELECT $1, $2, s.event_seq, $3, $4, $5 FROM s
                     RETURNING id, seq",
                    &[&job.0, &run, &kind, &self.now, &data],
                )
                .await?
                .ok_or_else(|| not_found("job", job))?,
            None => {
                // The transaction must have its id before it takes an event id (see
                // `gantry_settled_event_id`); a job-less event may be its first write.
                self.execute("SELECT pg_current_xact_id()", &[]).await?;
                self.query_one(
                    "INSERT INTO events (job_id, run_id, seq, kind, at, data)
                     VALUES (NULL, $1, 0, $2, $3, $4) RETURNING id, seq",
                    &[&run, &kind, &self.now, &data],
                )
                .await?
            }
        };
        Ok((row.try_get(0)?, row.try_get(1)?))
    }

    async fn job_of_run(&self, run: RunId) -> R<Option<i64>> {
        Ok(self
            .query_opt("SELECT job_id FROM runs WHERE id = $1", &[&run.0])
            .await?
            .map(|r| r.try_get(0))
            .transpose()?)
    }

    async fn event_seq(&self, job: JobId) -> R<i64> {
        Ok(self
            .query_opt(
                "SELECT event_seq FROM jobs WHERE id = $1 FOR NO KEY UPDATE",
                &[&job.0],
            )
            .await?
            .ok_or_else(|| not_found("job", job))?
            .try_get(0)?)
    }

    async fn write_state(&self, w: &StateWrite) -> R<bool> {
        let params = StepParams::new(w);
        Ok(self.query_opt(STEP_SQL, &params.params()).await?.is_some())
    }

    /// Reads the deps' states in a fresh statement, so it sees every commit before it
    /// (the caller holds the job's lock).
    async fn dep_states(&self, job: JobId) -> R<Vec<(i64, String)>> {
        let rows = self
            .query(
                "SELECT d.dep_id, j.state FROM job_deps d JOIN jobs j ON j.id = d.dep_id
                 WHERE d.job_id = $1",
                &[&job.0],
            )
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect()
    }

    /// Locks the job first.
    async fn blocked(&self, job: JobId) -> R<Option<(String, Option<i64>)>> {
        let row = self
            .query_opt(
                "SELECT deps_mode, event_seq FROM jobs WHERE id = $1 AND state = 'blocked'
                 FOR NO KEY UPDATE",
                &[&job.0],
            )
            .await?;
        row.map(|r| Ok((r.try_get(0)?, Some(r.try_get(1)?))))
            .transpose()
    }

    async fn dependents(&self, job: JobId) -> R<Vec<JobId>> {
        let rows = self
            .query(
                "SELECT job_id FROM job_deps WHERE dep_id = $1 ORDER BY job_id",
                &[&job.0],
            )
            .await?;
        rows.iter().map(|r| Ok(JobId(r.try_get(0)?))).collect()
    }

    async fn stop_target(&self, job: JobId) -> R<StopTarget> {
        let row = self
            .query_opt(
                "SELECT state, stop_requested, current_run, event_seq FROM jobs WHERE id = $1
                 FOR NO KEY UPDATE",
                &[&job.0],
            )
            .await?
            .ok_or_else(|| not_found("job", job))?;
        Ok(StopTarget {
            state: row.try_get(0)?,
            stop: row.try_get(1)?,
            current_run: row.try_get(2)?,
            seq: Some(row.try_get(3)?),
        })
    }

    async fn request_stop(&self, job: JobId, kind: StopKind) -> R<()> {
        self.execute(
            "UPDATE jobs SET stop_requested = $2 WHERE id = $1",
            &[&job.0, &kind.as_str()],
        )
        .await?;
        Ok(())
    }

    async fn lock_job(&self, job: JobId) -> R<()> {
        self.execute(
            "SELECT 1 FROM jobs WHERE id = $1 FOR NO KEY UPDATE",
            &[&job.0],
        )
        .await?;
        Ok(())
    }

    async fn load_job(&self, job: JobId) -> R<Job> {
        Ok(self
            .query_opt(
                &format!("SELECT {JOB_COLS} FROM {JOB_FROM} WHERE jobs.id = $1"),
                &[&job.0],
            )
            .await?
            .ok_or_else(|| not_found("job", job))
            .map(|r| RawJob::read(&r))??
            .into_job()?)
    }

    async fn allow_attempt(&self, job: JobId) -> R<()> {
        self.execute(
            "UPDATE jobs SET max_attempts = greatest(max_attempts, attempt + 1),
                 stop_requested = NULL
             WHERE id = $1",
            &[&job.0],
        )
        .await?;
        Ok(())
    }

    async fn set_paused_flag(&self, paused: bool) -> R<bool> {
        let changed = self
            .execute(
                "UPDATE queue SET paused = $1 WHERE id = 1 AND paused <> $1",
                &[&paused],
            )
            .await?;
        Ok(changed > 0)
    }

    async fn running_jobs(&self) -> R<Vec<JobId>> {
        let rows = self
            .query(
                "SELECT id FROM jobs WHERE state IN ('running', 'checking') ORDER BY id",
                &[],
            )
            .await?;
        rows.iter().map(|r| Ok(JobId(r.try_get(0)?))).collect()
    }

    /// Skips jobs another reaper (or any writer) has locked.
    async fn expired_leases(&self) -> R<Vec<Expired>> {
        let rows = self
            .query(
                &format!(
                    "SELECT {} FROM jobs j JOIN runs r ON r.id = j.current_run
                     WHERE j.state IN ('running', 'checking') AND r.lease_expires_at < $1
                     ORDER BY j.id
                     FOR NO KEY UPDATE OF j SKIP LOCKED",
                    Expired::COLS
                ),
                &[&self.now],
            )
            .await?;
        rows.iter().map(|r| Ok(Expired::read(r)?)).collect()
    }

    /// A fresh statement under the job's lock: a renewal that committed after the
    /// scan's snapshot saved the lease.
    async fn mark_lost(&self, run: RunId) -> R<bool> {
        let lost = self
            .execute(
                "UPDATE runs SET outcome = 'lost', finished_at = $2
                 WHERE id = $1 AND outcome IS NULL AND lease_expires_at < $2",
                &[&run.0, &self.now],
            )
            .await?;
        Ok(lost > 0)
    }

    async fn save_checkpoint(&self, job: JobId, cp: &Checkpoint) -> R<()> {
        self.execute(
            "INSERT INTO job_agent (job_id, wip_branch, wip_base, wip_commit)
             VALUES ($1, $2, $3, $4)
             ON CONFLICT (job_id) DO UPDATE SET wip_branch = excluded.wip_branch,
                 wip_base = excluded.wip_base, wip_commit = excluded.wip_commit",
            &[&job.0, &cp.branch, &cp.base, &cp.commit],
        )
        .await?;
        Ok(())
    }

    async fn load_doc(&self, run: RunId, doc: RunDoc) -> R<Option<String>> {
        let sql = format!("SELECT {} FROM runs WHERE id = $1", doc.column());
        let row = self
            .query_opt(&sql, &[&run.0])
            .await?
            .ok_or_else(|| not_found("run", run))?;
        Ok(row.try_get(0)?)
    }

    async fn save_doc(&self, run: RunId, doc: RunDoc, text: &str) -> R<()> {
        let sql = format!("UPDATE runs SET {} = $2 WHERE id = $1", doc.column());
        self.execute(&sql, &[&run.0, &text]).await?;
        Ok(())
    }

    async fn save_insights(&self, live: &Live, text: &str, session: Option<&str>) -> R<()> {
        self.execute(
            "UPDATE runs SET insights = $2 WHERE id = $1",
            &[&live.run.0, &text],
        )
        .await?;
        if let Some(session) = session {
            self.execute(SAVE_SESSION_SQL, &[&live.job.0, &session])
                .await?;
        }
        Ok(())
    }
}

impl SubmitTx for Tx {
    async fn lookup_key(&self, owner: i64, key: &str) -> R<Option<JobId>> {
        Ok(self
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

    async fn stored_spec(&self, id: JobId) -> R<String> {
        Ok(self
            .query_opt("SELECT spec FROM job_specs WHERE job_id = $1", &[&id.0])
            .await?
            .ok_or_else(|| corrupt(format!("job {id} has no spec")))?
            .try_get(0)?)
    }

    async fn job_exists(&self, id: JobId) -> R<bool> {
        Ok(self
            .query_opt("SELECT 1 FROM jobs WHERE id = $1", &[&id.0])
            .await?
            .is_some())
    }
}
